// The message composer: a textarea where Enter sends and Shift+Enter starts a new line, `@`
// opens a list of people to mention, pasted or dropped files are uploaded, and typing is
// announced (the edge relays it at most once per 3 s per user and channel, so we send no more).
//
// Mentions: people type `@handle`; the wire form is `<@U…>` (API.md "Mentions"). `toWire`
// turns every `@handle` of a known user into it when sending, and `fromWire` back when editing.

import { h, icon } from './dom.js';

const TYPING_EVERY_MS = 3000;
const MAX_SUGGESTIONS = 8;

let store;
let loadAllUsers; // () => Promise: every user of the workspace in store.users

export function configureComposer(theStore, usersLoader) {
  store = theStore;
  loadAllUsers = usersLoader;
}

function usersByHandle() {
  return new Map([...store.users.values()].map((u) => [u.handle.toLowerCase(), u]));
}

/** `@alice` → `<@U…>` for every known handle; `@channel` and `@here` stay as they are. */
export function toWire(text) {
  const byHandle = usersByHandle();
  return text.replace(/(^|[\s(])@([A-Za-z0-9._-]+)/g, (whole, lead, handle) => {
    const u = byHandle.get(handle.toLowerCase());
    return u ? `${lead}<@${u.id}>` : whole;
  });
}

export function fromWire(text) {
  return text.replace(/<@([A-Za-z0-9_-]+)(?:\|[^>]*)?>/g, (whole, id) => {
    const u = store.users.get(id);
    return u ? `@${u.handle}` : whole;
  });
}

/**
 * Builds a composer. `opts`: `label`, `testid`, `sendTestid`, `send(text)` (returns whether it
 * was taken), `typing()`, `files(list)`, `editLast()` (Up arrow in an empty composer; returns
 * whether there was a message to edit).
 */
export function makeComposer(opts) {
  const listId = `${opts.testid}-mentions`;
  const input = h('textarea', {
    class: 'composer-input', rows: 1, 'data-testid': opts.testid, 'aria-label': opts.label,
    placeholder: opts.label, 'aria-autocomplete': 'list', 'aria-controls': listId, 'aria-expanded': 'false',
  });
  const list = h('ul', { class: 'mention-list', id: listId, role: 'listbox', hidden: true, 'aria-label': 'People to mention' });
  const sendButton = h('button', { type: 'submit', class: 'send', 'data-testid': opts.sendTestid, 'aria-label': 'Send message' }, 'Send');
  const attach = h('input', { type: 'file', multiple: true, class: 'visually-hidden', id: `${opts.testid}-file`, tabindex: '-1' });
  const attachLabel = h('label', { for: `${opts.testid}-file`, class: 'attach', title: 'Attach files', role: 'button', tabindex: '0', 'aria-label': 'Attach files' }, icon('clip'));
  const form = h('form', { class: 'composer', 'aria-label': opts.label }, list, attach, attachLabel, input, sendButton);

  let lastTyping = 0;
  let suggestions = [];
  let active = 0;

  function submit() {
    const text = input.value.trim();
    if (!text) return;
    if (opts.send(toWire(text)) !== false) {
      input.value = '';
      fit();
      closeList();
    }
  }

  function fit() {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  // --- mention autocomplete ---

  function query() {
    const before = input.value.slice(0, input.selectionStart);
    const match = /(^|\s)@([A-Za-z0-9._-]*)$/.exec(before);
    return match ? match[2].toLowerCase() : null;
  }

  async function suggest() {
    const q = query();
    if (q === null) return closeList();
    await loadAllUsers();
    if (query() !== q) return; // typed on meanwhile
    suggestions = [...store.users.values()]
      .filter((u) => !u.deactivated && (u.handle.toLowerCase().startsWith(q) || (u.name ?? '').toLowerCase().startsWith(q)))
      .sort((a, b) => a.handle.localeCompare(b.handle))
      .slice(0, MAX_SUGGESTIONS);
    if (!suggestions.length) return closeList();
    active = 0;
    drawList();
  }

  function drawList() {
    list.replaceChildren(...suggestions.map((u, i) => h('li', {
      role: 'option', id: `${listId}-${i}`, 'aria-selected': i === active ? 'true' : 'false', 'data-user': u.id,
      onmousedown: (e) => { e.preventDefault(); choose(i); },
    }, h('strong', {}, `@${u.handle}`), u.name ? ` ${u.name}` : '')));
    list.hidden = false;
    input.setAttribute('aria-expanded', 'true');
    input.setAttribute('aria-activedescendant', `${listId}-${active}`);
  }

  function closeList() {
    suggestions = [];
    list.hidden = true;
    input.setAttribute('aria-expanded', 'false');
    input.removeAttribute('aria-activedescendant');
  }

  function choose(i) {
    const u = suggestions[i];
    const caret = input.selectionStart;
    const before = input.value.slice(0, caret).replace(/@([A-Za-z0-9._-]*)$/, `@${u.handle} `);
    input.value = before + input.value.slice(caret);
    input.selectionStart = input.selectionEnd = before.length;
    closeList();
    input.focus();
  }

  // --- events ---

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    submit();
  });
  input.addEventListener('keydown', (e) => {
    if (!list.hidden && suggestions.length) {
      if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
        e.preventDefault();
        active = (active + (e.key === 'ArrowDown' ? 1 : suggestions.length - 1)) % suggestions.length;
        drawList();
        return;
      }
      if (e.key === 'Enter' || e.key === 'Tab') {
        e.preventDefault();
        choose(active);
        return;
      }
      if (e.key === 'Escape') {
        e.preventDefault();
        e.stopPropagation();
        closeList();
        return;
      }
    }
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    } else if (e.key === 'ArrowUp' && input.value === '' && opts.editLast?.()) {
      e.preventDefault();
    }
  });
  input.addEventListener('input', () => {
    fit();
    suggest();
    const now = Date.now();
    if (input.value && now - lastTyping > TYPING_EVERY_MS) {
      lastTyping = now;
      opts.typing?.();
    }
  });
  input.addEventListener('blur', () => setTimeout(closeList, 150));
  input.addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files ?? [])];
    if (files.length) {
      e.preventDefault();
      opts.files(files);
    }
  });
  attach.addEventListener('change', () => {
    if (attach.files.length) opts.files([...attach.files]);
    attach.value = '';
  });
  attachLabel.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      attach.click();
    }
  });

  return { form, input, focus: () => input.focus() };
}
