// The open conversation: its header, the message list (history read lazily with `query
// history`, older pages as the user scrolls back), the typing line and the composer. It opens
// at the first unread message, under a "New" divider, and moves the read marker as the user
// reads: when the list is scrolled to the bottom of a visible tab.

import { h, icon, $, toast, localiseTimes } from './dom.js';
import { renderMessage, renderPending, place, placeAll, keyboardNavigation, messageToolbars, KEYS_HELP } from './message.js';
import { makeComposer } from './composer.js';
import { getChannel, joinChannel, ApiError } from './api.js';
import { showDetails } from './details.js';

const PAGE = 50;
const FILL_PAGE = 100;
/** Further behind than this, the list waits for the user to scroll down rather than read it all. */
const AUTO_FILL_LIMIT = 500;
const TYPING_SHOWN_MS = 6000;
const MARK_READ_DELAY_MS = 150;

let ctx; // {store, session, send, upload, openThread, editMessage}
let current = null; // the open channel's id
let opening = 0; // bumped by every open, so a slow answer for an earlier one is dropped
const els = new Map(); // seq → element, for the open channel
const drawn = new WeakMap(); // element → the message object it shows
const typists = new Map(); // user id → timer
const marks = new Map(); // channel id → seq to send in mark_read
let markTimer = 0;
let firstMessagesMarked = false;
let loadingOlder = false;
let newSeq = null; // the first message that was unread when the conversation opened

let root;
let titleEl;
let topicEl;
let list;
let typingEl;
let footer;
let composer;
let divider;

export function currentChannel() {
  return current;
}

export function initConversation(context) {
  ctx = context;
  root = $('#conversation');
  titleEl = h('h1', { id: 'channel-title' }, '');
  topicEl = h('p', { class: 'topic' });
  divider = h('div', { class: 'new-divider', role: 'separator', 'data-testid': 'new-divider' }, h('span', {}, 'New'));
  list = h('div', {
    class: 'messages', 'data-testid': 'message-list', role: 'log', 'aria-live': 'polite',
    'aria-relevant': 'additions', 'aria-labelledby': 'channel-title', tabindex: '0',
    'aria-describedby': 'keys-help',
  });
  keyboardNavigation(list);
  messageToolbars(list);
  typingEl = h('div', { class: 'typing', 'data-testid': 'typing', 'aria-live': 'polite' });
  composer = makeComposer({
    label: 'Message', testid: 'composer', sendTestid: 'send-button',
    send: (text) => ctx.send(current, text),
    typing: () => ctx.session.fire({ type: 'typing', channel: current }),
    files: (files) => ctx.upload(files, current),
    editLast,
  });
  footer = h('footer', { class: 'conversation-footer' }, typingEl, composer.form);
  const details = h('button', {
    type: 'button', class: 'details', 'aria-label': 'Members and details', title: 'Members', 'data-testid': 'channel-details',
    onclick: () => ctx.store.channels.get(current)?.info && showDetails(ctx.store.channels.get(current)),
  }, icon('people'));
  root.append(h('header', { class: 'conversation-header' }, titleEl, topicEl, details), list, footer,
    h('p', { id: 'keys-help', hidden: true }, KEYS_HELP));

  list.addEventListener('scroll', onScroll, { passive: true });
  // An image drawn after its message grows the list: keep the newest message in view.
  list.addEventListener('load', () => stuck && scrollToBottom(), true);
  document.addEventListener('visibilitychange', maybeMarkRead);
  window.addEventListener('focus', maybeMarkRead);
  dropTarget(root, (files) => current && ctx.upload(files, current));

  const { store } = ctx;
  store.on('messages', (cid) => cid === current && draw());
  store.on('message', (m) => m.channel === current && m.thread_root == null && drawOne(m));
  // Replies and roots' new heads count as unread too (the edge counts every seq): read them.
  store.on('channel', (cid) => cid === current && maybeMarkRead());
  store.on('pending', (p) => p.channel === current && !p.threadRoot && drawPending(p));
  store.on('users', () => draw(true));
  store.on('typing', onTyping);
  store.on('ephemeral', (e) => e.channel === current && drawEphemeral(e));
  store.on('channels', () => current && header(store.channels.get(current)));
}

/**
 * Opens a conversation: from the cache when its messages are loaded, else with one history
 * query. `at`: a seq to show and highlight (a search hit), read as a window around it; without
 * it, the conversation opens at its first unread message, if any, else at its newest.
 */
export async function openChannel(cid, { at, focus = true } = {}) {
  const { store } = ctx;
  const token = ++opening;
  current = cid;
  history.replaceState(null, '', `#c=${encodeURIComponent(cid)}`);
  els.clear();
  newSeq = null;
  typists.forEach(clearTimeout);
  typists.clear();
  drawTyping();
  list.replaceChildren(h('p', { class: 'notice' }, 'Loading…'));
  list.setAttribute('aria-busy', 'true');
  store.emit('open', cid);

  let c = store.channels.get(cid);
  if (!c || !c.info) {
    c = await lookUp(cid);
    if (token !== opening) return;
    if (!c) return missing();
  }
  header(c);
  // Opened again after a jump to an old message: start from the newest again.
  if (!at && c.window) store.forget(c);
  // What the user had read, if not everything: the first unread is shown first, and it has to
  // be read around when the newest page would not reach it.
  const since = c.member && c.lastSeq > c.readSeq ? c.readSeq : null;
  stuck = !at && since === null;
  try {
    if (at) await loadWindow(c, at);
    else if (since !== null && (c.loaded ? since + 1 < c.low : c.lastSeq - since > PAGE)) await loadWindow(c, since + 1);
    else if (!c.loaded) await loadNewest(c);
  } catch (e) {
    if (token !== opening) return;
    return e.code === 'not_found' ? missing() : failed(e);
  }
  if (token !== opening) return;
  if (c.member) localStorage.setItem('selvage.last', cid);
  list.removeAttribute('aria-busy');
  if (since !== null) newSeq = store.topLevel(c).find((m) => m.seq > since && m.user !== store.self.id)?.seq ?? null;
  draw();
  if (at) highlight(at);
  else if (newSeq) {
    list.scrollTop += divider.getBoundingClientRect().top - list.getBoundingClientRect().top - 8;
    stuck = isAtBottom();
  } else scrollToBottom();
  markFirstMessages();
  if (store.hasGap(c) || (c.lastSeq > c.high && c.lastSeq - c.high <= AUTO_FILL_LIMIT)) fill(c);
  maybeMarkRead();
  if (focus && !at) composer.focus();
}

/** A conversation not in the sidebar: a public channel to look into, or nothing to show. */
async function lookUp(cid) {
  try {
    const { channel } = await getChannel(cid);
    return ctx.store.putView(channel);
  } catch (e) {
    if (!(e instanceof ApiError) || e.code !== 'not_found') toast(`Could not open the conversation: ${e.message}`);
    return null;
  }
}

function missing() {
  titleEl.textContent = 'Not found';
  topicEl.textContent = '';
  list.removeAttribute('aria-busy');
  list.replaceChildren(h('p', { class: 'notice', 'data-testid': 'not-found' },
    'This conversation does not exist, or you do not have access to it.'));
  footer.hidden = true;
}

function failed(e) {
  list.removeAttribute('aria-busy');
  list.replaceChildren(h('p', { class: 'notice' }, `Could not load messages: ${e.message}`));
}

function header(c) {
  if (!c || !c.info) return;
  const { store } = ctx;
  const name = store.displayName(c);
  const label = c.info.kind === 'channel' ? `${c.info.private ? '' : '# '}${name}` : name;
  titleEl.replaceChildren(c.info.private && c.info.kind === 'channel' ? icon('lock') : '', label);
  topicEl.textContent = c.info.topic || c.info.purpose || '';
  document.title = `${name} · Selvage`;
  footer.hidden = false;
  footer.querySelector('.join')?.remove();
  composer.form.hidden = !c.member || c.info.archived;
  if (c.info.archived) {
    footer.append(h('p', { class: 'join notice', 'data-testid': 'archived-note' }, 'This channel is archived: it is read-only.'));
  } else if (!c.member) {
    footer.append(h('p', { class: 'join' },
      h('button', { type: 'button', class: 'primary', onclick: () => join(c) }, `Join #${c.info.name}`)));
  }
  composer.input.setAttribute('aria-label', `Message ${label}`);
  composer.input.placeholder = `Message ${label}`;
}

async function join(c) {
  try {
    await joinChannel(c.id);
    const { channel } = await getChannel(c.id);
    ctx.store.putView(channel);
    header(c);
    composer.focus();
  } catch (e) {
    toast(`Could not join: ${e.message}`);
  }
}

// ---- history ----

/**
 * A history query. A conversation the user just made or joined over HTTP can be news to the
 * edge for a moment (its cache follows the origin's feed): `not_found` then means "not yet".
 */
async function readHistory(c, q) {
  for (let wait = 100; ; wait *= 2) {
    try {
      return await ctx.session.query({ q: 'history', channel: c.id, ...q });
    } catch (e) {
      if (e.code !== 'not_found' || !c.member || wait > 1600) throw e;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

async function loadNewest(c) {
  // The first conversation's page was asked for by boot.js, before this code was loaded.
  const early = ctx.session.takeEarlyHistory(c.id);
  const r = await (early ?? readHistory(c, { limit: PAGE }));
  ctx.store.putPage(c, r.messages ?? [], 'newest', Boolean(r.next));
}

async function loadWindow(c, seq) {
  const r = await readHistory(c, { after: Math.max(0, seq - PAGE / 2), before: seq + PAGE / 2, limit: PAGE });
  ctx.store.putPage(c, r.messages ?? [], 'window', Boolean(r.next));
}

async function loadOlder() {
  const c = ctx.store.channels.get(current);
  if (!c?.loaded || !c.hasOlder || loadingOlder) return;
  loadingOlder = true;
  const token = opening;
  try {
    const r = await ctx.session.query({ q: 'history', channel: c.id, before: c.low, limit: PAGE });
    if (token !== opening) return;
    const height = list.scrollHeight;
    const top = list.scrollTop;
    ctx.store.putPage(c, r.messages ?? [], 'older', Boolean(r.next));
    // Keep what the user was looking at where it was.
    list.scrollTop = top + (list.scrollHeight - height);
  } catch (e) {
    toast(`Could not load older messages: ${e.message}`);
  } finally {
    loadingOlder = false;
  }
}

/**
 * Reads history after the channel's gap-free run until the hole is closed: after a live
 * message skipped a seq, or for what happened while it was not being watched.
 */
export async function fill(c) {
  if (c.filling) {
    c.fillAgain = true;
    return;
  }
  c.filling = true;
  try {
    for (let round = 0; round < 50; round++) {
      c.fillAgain = false;
      const from = c.high;
      const r = await ctx.session.query({ q: 'history', channel: c.id, after: from, limit: FILL_PAGE });
      ctx.store.putPage(c, r.messages ?? [], 'newer', Boolean(r.next));
      const more = r.next || c.fillAgain || ctx.store.hasGap(c);
      if (!more || c.high === from) break;
    }
  } catch (e) {
    console.warn('selvage: could not fill history', e);
  } finally {
    c.filling = false;
  }
}

// ---- drawing ----

function isAtBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 60;
}

/**
 * Whether the list should follow its bottom: true until the user scrolls up. Kept apart from
 * the scroll position because content grows under it (an image loads, a reaction wraps) without
 * any scroll event, and the list should keep showing the newest message then.
 */
let stuck = true;

function scrollToBottom() {
  list.scrollTop = list.scrollHeight;
  stuck = true;
}

/** Brings the list in line with the store: every top-level message, then pending sends. */
function draw(force = false) {
  const c = ctx.store.channels.get(current);
  if (!c?.loaded) return;
  const bottom = stuck;
  list.querySelector(':scope > .notice')?.remove();
  const keep = new Set();
  const messages = ctx.store.topLevel(c);
  const first = !els.size;
  if (first) {
    // A first page: drawn off the document and put in at once.
    const elements = messages.map((m) => {
      const el = renderMessage(m, 'channel');
      drawn.set(el, m);
      els.set(m.seq, el);
      return el;
    });
    placeAll(list, elements);
  }
  for (const m of messages) {
    keep.add(m.seq);
    const el = els.get(m.seq);
    if (!el || (force && !first) || drawn.get(el) !== m) put(m);
  }
  for (const [seq, el] of els) {
    if (!keep.has(seq)) {
      el.remove();
      els.delete(seq);
    }
  }
  for (const p of ctx.store.pending.values()) if (p.channel === current && !p.threadRoot) drawPending(p);
  if (!messages.length && !list.querySelector('[data-state]')) {
    list.append(h('p', { class: 'notice' }, 'No messages yet. Say hello!'));
  }
  markNew();
  if (bottom) scrollToBottom();
}

/** Keeps the "New" divider right above the first message that was unread at opening. */
function markNew() {
  const el = newSeq && els.get(newSeq);
  if (!el) return divider.remove();
  if (el.previousElementSibling !== divider) el.before(divider);
  el.classList.remove('cont'); // under the divider, a message shows who wrote it
}

function put(m) {
  const el = renderMessage(m, 'channel');
  drawn.set(el, m);
  els.set(m.seq, place(list, el, m.seq));
  markNew();
}

function drawOne(m) {
  const c = ctx.store.channels.get(current);
  if (!c?.loaded) return;
  const bottom = stuck || m.user === ctx.store.self.id;
  list.querySelector(':scope > .notice')?.remove();
  put(m);
  if (typists.has(m.user)) {
    clearTimeout(typists.get(m.user));
    typists.delete(m.user);
    drawTyping();
  }
  if (bottom) scrollToBottom();
  maybeMarkRead();
}

function drawPending(p) {
  const old = list.querySelector(`:scope > [data-client-msg-id="${CSS.escape(p.cmid)}"]:not([data-seq])`);
  if (p.state === 'settled') {
    old?.remove();
    return;
  }
  const el = renderPending(p);
  if (old) old.replaceWith(el);
  else {
    list.querySelector(':scope > .notice')?.remove();
    list.append(el);
    scrollToBottom();
  }
}

function drawEphemeral(e) {
  const bottom = stuck;
  list.append(h('article', { class: 'msg ephemeral', 'data-testid': 'ephemeral-message' },
    h('div', { class: 'meta' }, h('span', { class: 'author' }, ctx.store.userName(e.from)), h('span', { class: 'status' }, 'Only visible to you')),
    h('div', { class: 'text' }, e.text)));
  if (bottom) scrollToBottom();
}

function highlight(seq) {
  const el = els.get(seq);
  if (!el) return;
  list.querySelectorAll('.highlight').forEach((x) => x.classList.remove('highlight'));
  el.classList.add('highlight');
  el.scrollIntoView({ block: 'center' });
  el.focus({ preventScroll: true });
}

/** Shows (and highlights) a message of the open channel; false when it is not loaded. */
export function reveal(seq) {
  if (!els.has(seq)) return false;
  highlight(seq);
  return true;
}

/** The measure of a fast start: navigation to the first message list on screen. */
function markFirstMessages() {
  if (firstMessagesMarked) return;
  firstMessagesMarked = true;
  performance.mark('selvage-first-messages');
  // After that paint, not before it.
  requestAnimationFrame(() => setTimeout(localiseTimes));
}

// ---- reading ----

function onScroll() {
  stuck = isAtBottom();
  if (list.scrollTop < 300) loadOlder();
  const c = ctx.store.channels.get(current);
  if (c?.loaded && isAtBottom() && c.lastSeq > c.high) fill(c);
  maybeMarkRead();
}

/**
 * Moves the read marker to the newest message when the user can see it: the tab is visible and
 * the list is at its bottom. The badge clears at once; the edge tells the user's other sessions.
 */
export function maybeMarkRead() {
  const c = ctx.store.channels.get(current);
  if (!c?.member || !c.loaded || document.visibilityState !== 'visible' || !(stuck || isAtBottom())) return;
  const seq = c.lastSeq;
  if (seq <= c.readSeq) return;
  c.readSeq = seq;
  ctx.store.emit('channel', c.id);
  marks.set(c.id, seq);
  clearTimeout(markTimer);
  markTimer = setTimeout(() => {
    for (const [channel, s] of marks) ctx.session.fire({ type: 'mark_read', channel, seq: s });
    marks.clear();
  }, MARK_READ_DELAY_MS);
}

// ---- typing ----

function onTyping(e) {
  if (e.channel !== current) return;
  clearTimeout(typists.get(e.user));
  typists.set(e.user, setTimeout(() => {
    typists.delete(e.user);
    drawTyping();
  }, TYPING_SHOWN_MS));
  drawTyping();
}

function drawTyping() {
  const names = [...typists.keys()].map((u) => ctx.store.userName(u));
  typingEl.textContent = names.length === 0 ? ''
    : names.length === 1 ? `${names[0]} is typing…`
      : names.length === 2 ? `${names[0]} and ${names[1]} are typing…`
        : 'Several people are typing…';
}

// ---- editing ----

function editLast() {
  const c = ctx.store.channels.get(current);
  if (!c) return false;
  const mine = ctx.store.topLevel(c).filter((m) => m.user === ctx.store.self.id && !m.deleted).at(-1);
  if (!mine) return false;
  ctx.editMessage(mine);
  return true;
}

/** The element of a message in the open channel, for editing in place. */
export function messageElement(seq) {
  return els.get(seq);
}

/** Makes `el` accept dropped files (highlighted while something is dragged over it). */
export function dropTarget(el, onFiles) {
  el.addEventListener('dragover', (e) => {
    if (![...e.dataTransfer.types].includes('Files')) return;
    e.preventDefault();
    el.classList.add('dragging');
  });
  el.addEventListener('dragleave', (e) => {
    if (!el.contains(e.relatedTarget)) el.classList.remove('dragging');
  });
  el.addEventListener('drop', (e) => {
    el.classList.remove('dragging');
    const files = [...(e.dataTransfer?.files ?? [])];
    if (!files.length) return;
    e.preventDefault();
    e.stopPropagation();
    onFiles(files);
  });
}
