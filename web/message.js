// One message as an element, for the conversation and the thread panel alike. A message is
// re-rendered whole when it changes (an edit, a reaction, a new reply count): messages are small,
// and one code path for "draw this message" is easier to keep right than patches. Its action
// buttons are not part of it: one toolbar is made for the message under the pointer or the
// focus (`messageToolbars`), which keeps drawing a page of history cheap.

import { h, icon, renderText, formatTime, fullTime, formatBytes, emojiGlyph, EMOJI, toast } from './dom.js';
import { previewUrl, downloadUrl } from './files.js';

let store;
let actions; // {react, edit(m, element), remove, openThread, retry, discard}

export function configureMessages(theStore, theActions) {
  store = theStore;
  actions = theActions;
}

/**
 * A confirmed message. `where`: `channel` (the main list: thread summary shown), `root` (the
 * root at the top of the thread panel) or `thread` (a reply in the panel).
 */
export function renderMessage(m, where = 'channel') {
  const testid = { channel: 'message', thread: 'thread-reply', root: 'thread-root' }[where];
  const el = h('article', {
    class: `msg${m.user === store.self.id ? ' mine' : ''}${m.deleted ? ' deleted' : ''}${store.mentionsSelf(m) ? ' mentions-me' : ''}`,
    'data-testid': testid,
    'data-seq': m.seq,
    'data-channel': m.channel,
    'data-client-msg-id': m.client_msg_id || false,
    'data-state': 'sent',
    'data-user': m.user,
    'data-ts': m.ts,
    tabindex: '-1',
    'aria-label': `${store.userName(m.user)} at ${formatTime(m.ts)}`,
  },
  header(m),
  m.deleted
    ? h('div', { class: 'text tombstone', 'data-testid': 'message-text' }, 'This message was deleted.')
    : h('div', { class: 'text', 'data-testid': 'message-text' }, renderText(m.text ?? '', (id) => store.userName(id), store.self.id)),
  m.deleted ? null : files(m),
  m.deleted ? null : reactions(m),
  where === 'channel' && m.reply_count ? replySummary(m) : null);
  el.dataset.where = where;
  return el;
}

function header(m) {
  return h('div', { class: 'meta' },
    h('span', { class: 'author', 'data-user': m.user }, store.userName(m.user)),
    h('time', { datetime: new Date(m.ts).toISOString(), title: fullTime(m.ts) }, formatTime(m.ts)),
    m.edited_at && !m.deleted ? h('span', { class: 'edited' }, '(edited)') : null);
}

/** A send not yet acknowledged, or refused: shown where it will land, with a Retry when failed. */
export function renderPending(p) {
  const failed = p.state === 'failed';
  return h('article', {
    class: `msg mine pending${failed ? ' failed' : ''}`,
    'data-testid': p.threadRoot && p.where === 'thread' ? 'thread-reply' : 'message',
    'data-client-msg-id': p.cmid,
    'data-state': p.state,
    'aria-label': failed ? 'Message not sent' : 'Sending message',
  },
  h('div', { class: 'meta' },
    h('span', { class: 'author' }, store.userName(store.self.id)),
    h('span', { class: 'status' }, failed ? `Not sent: ${p.error ?? 'error'}` : p.upload ? 'Uploading…' : 'Sending…')),
  h('div', { class: 'text', 'data-testid': 'message-text' }, p.upload ? p.upload : renderText(p.text, (id) => store.userName(id), store.self.id)),
  failed ? h('div', { class: 'buttons-inline' },
    h('button', { class: 'retry', type: 'button', onclick: () => actions.retry(p) }, 'Retry'),
    h('button', { class: 'discard', type: 'button', onclick: () => actions.discard(p) }, 'Discard')) : null);
}

function files(m) {
  if (!m.files?.length) return null;
  return h('div', { class: 'files' }, m.files.map((f) => fileView(m, f)));
}

function fileView(m, f) {
  const isImage = /^image\/(png|jpeg|gif|webp)$/.test(f.content_type);
  if (!isImage) {
    return h('button', {
      class: 'file', type: 'button',
      onclick: () => downloadUrl(f.id).then((url) => window.open(url, '_blank', 'noopener')).catch((e) => toast(e.message)),
    }, icon('file'), ` ${f.name} (${formatBytes(f.size)})`);
  }
  const thumb = f.thumbs?.[0];
  const img = h('img', {
    class: 'preview', 'data-testid': 'file-preview', alt: f.name, loading: 'lazy',
    width: thumb?.width ?? false, height: thumb?.height ?? false,
  });
  // The URL is presigned and short-lived: asked for when the image is drawn.
  previewUrl(f).then((url) => { img.src = url; }).catch(() => { img.alt = `${f.name} (unavailable)`; });
  return h('button', {
    class: 'file image', type: 'button', 'aria-label': `Open ${f.name}`,
    onclick: () => downloadUrl(f.id).then((url) => window.open(url, '_blank', 'noopener')).catch((e) => toast(e.message)),
  }, img);
}

function reactions(m) {
  if (!m.reactions?.length) return null;
  return h('div', { class: 'reactions' }, m.reactions.map((r) => {
    const mine = r.users.includes(store.self.id);
    const who = r.users.map((u) => store.userName(u)).join(', ');
    return h('button', {
      type: 'button', class: 'reaction', 'data-testid': 'reaction', 'data-emoji': r.emoji,
      'data-count': r.count, 'aria-pressed': mine ? 'true' : 'false',
      'aria-label': `${r.emoji} by ${who}`, title: who,
      onclick: () => actions.react(m, r.emoji, !mine),
    }, emojiGlyph(r.emoji), ' ', h('span', { class: 'count' }, r.count));
  }));
}

function replySummary(m) {
  const n = m.reply_count;
  return h('button', {
    type: 'button', class: 'replies', 'data-testid': 'reply-count', 'data-count': n,
    onclick: () => actions.openThread(m.channel, m.seq),
  }, `${n} ${n === 1 ? 'reply' : 'replies'}`, m.latest_reply ? h('span', { class: 'when' }, ` · last ${formatTime(m.latest_reply)}`) : null);
}

/** The message an element shows, as the store holds it now. */
function messageOf(article) {
  return store.channels.get(article.dataset.channel)?.msgs.get(Number(article.dataset.seq));
}

/**
 * Gives the message under the pointer, or with the focus inside it, the toolbar of its actions
 * (shown by CSS on hover and focus). Only one exists at a time.
 */
export function messageToolbars(list) {
  const mount = (e) => {
    const article = e.target.closest?.('article[data-seq]');
    if (article && list.contains(article) && !article.querySelector(':scope > .actions')) mountToolbar(article);
  };
  list.addEventListener('mouseover', mount);
  list.addEventListener('focusin', mount);
}

function mountToolbar(article) {
  const m = messageOf(article);
  document.querySelectorAll('.msg > .actions').forEach((bar) => bar.remove());
  if (m && !m.deleted) article.append(toolbar(m, m.user === store.self.id, article.dataset.where));
}

/**
 * The actions shown on hover or focus. Their buttons stay out of the Tab order (a long list
 * would be hundreds of stops); from the keyboard a focused message takes keys instead — see
 * `keyboardNavigation`.
 */
function toolbar(m, mine, where) {
  const picker = h('div', {
    class: 'picker', role: 'menu', hidden: true, 'aria-label': 'Reactions',
    onkeydown: (e) => {
      if (e.key !== 'Escape') return;
      e.stopPropagation();
      picker.hidden = true;
      picker.closest('article')?.focus();
    },
  },
    Object.keys(EMOJI).map((name) => h('button', {
      type: 'button', role: 'menuitem', 'aria-label': name, 'data-emoji': name,
      onclick: (e) => {
        e.currentTarget.parentElement.hidden = true;
        const has = m.reactions?.find((r) => r.emoji === name)?.users.includes(store.self.id);
        actions.react(m, name, !has);
      },
    }, EMOJI[name])));
  return h('div', { class: 'actions', role: 'toolbar', 'aria-label': 'Message actions' },
    h('button', {
      type: 'button', 'aria-label': 'Add reaction', 'data-action': 'react', 'aria-haspopup': 'menu', tabindex: '-1',
      onclick: () => {
        picker.hidden = !picker.hidden;
        if (!picker.hidden) picker.querySelector('button').focus();
      },
    }, icon('smile')),
    picker,
    where === 'channel' ? h('button', {
      type: 'button', 'aria-label': 'Reply in thread', 'data-action': 'reply', tabindex: '-1',
      onclick: () => actions.openThread(m.channel, m.seq),
    }, icon('reply')) : null,
    mine ? h('button', {
      type: 'button', 'aria-label': 'Edit message', 'data-action': 'edit', tabindex: '-1',
      onclick: (e) => actions.edit(m, e.currentTarget.closest('article')),
    }, icon('pencil')) : null,
    mine ? h('button', {
      type: 'button', 'aria-label': 'Delete message', 'data-action': 'delete', tabindex: '-1',
      onclick: () => actions.remove(m),
    }, icon('trash')) : null);
}

/** How to use a message list from the keyboard; lists point at it with aria-describedby. */
export const KEYS_HELP = 'Up and Down move between messages. On a message: R or Enter replies in its thread, '
  + 'A adds a reaction, E edits and Delete deletes your own.';

/**
 * Makes a message list usable from the keyboard: it is one Tab stop; Up and Down move between
 * its messages, and a focused message takes R/Enter (thread), A (reaction), E (edit), Delete.
 */
export function keyboardNavigation(list) {
  list.addEventListener('keydown', (e) => {
    const article = e.target.closest?.('[data-seq]');
    if (e.target !== list && e.target !== article) return; // keys typed into a form or button
    if (e.key === 'ArrowUp' || e.key === 'ArrowDown') {
      const all = [...list.querySelectorAll(':scope > [data-seq]')];
      const at = article ? all.indexOf(article) : all.length;
      const next = all[at + (e.key === 'ArrowUp' ? -1 : 1)];
      if (next) {
        e.preventDefault();
        next.focus();
      }
      return;
    }
    if (!article) return;
    const m = messageOf(article);
    if (!m || m.deleted || e.ctrlKey || e.metaKey || e.altKey) return;
    if (!article.querySelector(':scope > .actions')) mountToolbar(article);
    const mine = m.user === store.self.id;
    const key = e.key.toLowerCase();
    if ((key === 'r' || key === 'enter') && m.thread_root == null) actions.openThread(m.channel, m.seq);
    else if (key === 'a') article.querySelector('[data-action="react"]')?.click();
    else if (key === 'e' && mine) actions.edit(m, article);
    else if (key === 'delete' && mine) actions.remove(m);
    else return;
    e.preventDefault();
  });
}

/**
 * Keeps a list element in `seq` order with pending sends at its end: puts `el` (for the message
 * with `seq`) where it belongs, replacing the element it supersedes.
 */
export function place(list, el, seq) {
  const old = list.querySelector(`:scope > [data-seq="${seq}"]`);
  if (old) {
    if (old.dataset.editing) return old; // an edit in progress keeps its form
    // Keyboard users keep their place when the message they are on changes, and the pointer
    // its toolbar.
    const focused = old.contains(document.activeElement);
    const tools = old.querySelector(':scope > .actions');
    old.replaceWith(el);
    if (tools) mountToolbar(el);
    if (focused) el.focus({ preventScroll: true });
    group(el);
    return el;
  }
  // Usually the newest: walk back from the end past pending sends and newer messages.
  let before = null;
  for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
    if (!node.dataset.seq) {
      if (node.dataset.state) before = node; // a pending send
      continue;
    }
    if (Number(node.dataset.seq) > seq) before = node;
    else break;
  }
  list.insertBefore(el, before);
  group(el);
  group(el.nextElementSibling);
  return el;
}

/** Puts the elements of messages in `seq` order into an empty list at once (a first page). */
export function placeAll(list, elements) {
  const fragment = document.createDocumentFragment();
  fragment.append(...elements);
  list.insertBefore(fragment, list.querySelector(':scope > [data-state]:not([data-seq])'));
  elements.forEach(group);
}

const GROUP_MS = 5 * 60 * 1000;

/** Marks a message that follows one of the same author within minutes: drawn without a header. */
function group(el) {
  if (!el?.dataset.seq) return;
  const prev = el.previousElementSibling;
  const follows = Boolean(prev?.dataset.seq) && prev.dataset.user === el.dataset.user && !prev.classList.contains('deleted')
    && Number(el.dataset.ts) - Number(prev.dataset.ts) < GROUP_MS && !prev.querySelector('[data-testid="reply-count"]');
  el.classList.toggle('cont', follows);
}
