// Search: a `query search` over the session (answered by the origin's index, every hit checked
// against what the user may read now). `wait_for` is the session's cursor, so whatever this
// client has already seen — its own sends included — is in the index before the search runs.

import { h, icon, $, renderSnippet, formatTime } from './dom.js';

let ctx; // {store, session, openAt, ensureUsers}
let box;
let panel;
let results;
let searching = 0;

export function initSearch(context) {
  ctx = context;
  box = $('#search-box');
  panel = $('#search');
  results = h('ul', { class: 'search-results', 'aria-label': 'Search results' });
  panel.append(
    h('header', { class: 'panel-header' },
      h('h2', { id: 'search-title' }, 'Search'),
      h('button', { type: 'button', class: 'close', 'aria-label': 'Close search', onclick: closeSearch }, icon('close'))),
    results);
  $('#search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    run(box.value.trim());
  });
}

export function isSearchOpen() {
  return !panel.hidden;
}

export function focusSearch() {
  box.focus();
  box.select();
}

export function closeSearch() {
  panel.hidden = true;
  document.body.classList.remove('search-open');
}

async function run(text) {
  if (!text) return;
  const token = ++searching;
  panel.hidden = false;
  document.body.classList.add('search-open');
  results.replaceChildren(h('li', { class: 'notice' }, 'Searching…'));
  let r;
  try {
    r = await ctx.session.query({ q: 'search', text, limit: 30, wait_for: ctx.session.cursor ?? undefined });
  } catch (e) {
    if (token === searching) results.replaceChildren(h('li', { class: 'notice' }, e.message || 'Search failed'));
    return;
  }
  if (token !== searching) return;
  const found = r.results ?? [];
  $('#search-title').textContent = `${found.length}${r.next ? '+' : ''} result${found.length === 1 ? '' : 's'} for “${text}”`;
  if (!found.length) {
    results.replaceChildren(h('li', { class: 'notice' }, 'Nothing found.'));
    return;
  }
  await ctx.ensureUsers(found.map((f) => f.message.user)).catch(() => {});
  if (token !== searching) return;
  results.replaceChildren(...found.map(item));
}

function item({ channel, message, snippets }) {
  const { store } = ctx;
  const known = store.channels.get(channel.id);
  const where = channel.kind === 'channel' ? `#${channel.name}` : known?.info ? store.displayName(known) : 'Direct message';
  const snippet = snippets?.find((s) => s.field === 'text') ?? snippets?.[0];
  const text = snippet ? renderSnippet(snippet.fragment, snippet.highlights) : message.text;
  return h('li', {},
    h('button', {
      type: 'button', class: 'search-result', 'data-testid': 'search-result',
      'data-channel-id': channel.id, 'data-seq': message.seq,
      onclick: () => {
        if (!known) store.channel(channel.id, channel);
        ctx.openAt(channel.id, message.seq, message.thread_root);
      },
    },
    h('span', { class: 'meta' }, h('strong', {}, where), ' · ', store.userName(message.user), ' · ', formatTime(message.ts)),
    h('span', { class: 'text' }, text)));
}
