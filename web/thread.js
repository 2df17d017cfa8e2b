// The thread panel: a root message, its replies (`query thread`), a reply composer and
// follow/unfollow. Replies arrive live only for a thread's followers (API.md "Threads"); for
// everyone else the root's `message_changed` says a newer reply exists, and the panel reads
// the replies after the last it shows.

import { h, icon, $, toast } from './dom.js';
import { renderMessage, renderPending, place, keyboardNavigation, messageToolbars } from './message.js';
import { makeComposer } from './composer.js';
import { dropTarget } from './conversation.js';
import { follow } from './api.js';

const PAGE = 100;

let ctx;
let panel;
let rootBox;
let list;
let followButton;
let composer;
let open = null; // {cid, root}
let opening = 0;
let previousFocus = null;

export function initThread(context) {
  ctx = context;
  panel = $('#thread');
  rootBox = h('div', { class: 'thread-root' });
  list = h('div', {
    class: 'messages thread-replies', role: 'log', 'aria-live': 'polite', 'aria-label': 'Replies',
    tabindex: '0', 'aria-describedby': 'keys-help',
  });
  keyboardNavigation(list);
  messageToolbars(list);
  messageToolbars(rootBox);
  followButton = h('button', { type: 'button', class: 'follow', 'data-testid': 'follow-toggle', 'aria-pressed': 'false', onclick: toggleFollow }, 'Follow');
  composer = makeComposer({
    label: 'Reply', testid: 'thread-composer', sendTestid: 'thread-send-button',
    send: (text) => open && ctx.send(open.cid, text, open.root),
    typing: () => open && ctx.session.fire({ type: 'typing', channel: open.cid }),
    files: (files) => open && ctx.upload(files, open.cid, open.root),
  });
  panel.append(
    h('header', { class: 'panel-header' },
      h('h2', { id: 'thread-title' }, 'Thread'),
      followButton,
      h('button', { type: 'button', class: 'close', 'aria-label': 'Close thread', onclick: closeThread }, icon('close'))),
    rootBox, list, h('footer', { class: 'conversation-footer' }, composer.form));
  dropTarget(panel, (files) => open && ctx.upload(files, open.cid, open.root));

  const { store } = ctx;
  store.on('message', (m) => {
    if (!open || m.channel !== open.cid) return;
    if (m.seq === open.root) drawRoot(m);
    else if (m.thread_root === open.root) drawReply(m);
  });
  store.on('pending', (p) => open && p.channel === open.cid && p.threadRoot === open.root && drawPending(p));
  store.on('users', () => open && drawAll());
  store.on('channels', writable); // archived meanwhile, or left
}

/** Shows the reply composer only where the user may write: a member, in no archived channel. */
function writable() {
  const c = open && ctx.store.channels.get(open.cid);
  if (c) composer.form.hidden = !c.member || Boolean(c.info?.archived);
}

export function isThreadOpen() {
  return open !== null;
}

/** Opens the thread of `root` in channel `cid`; `highlight`: a reply to show. */
export async function openThread(cid, root, { highlight } = {}) {
  const { store, session } = ctx;
  const token = ++opening;
  if (!open) previousFocus = document.activeElement;
  open = { cid, root };
  panel.hidden = false;
  document.body.classList.add('thread-open');
  rootBox.replaceChildren();
  list.replaceChildren(h('p', { class: 'notice' }, 'Loading…'));
  const c = store.channels.get(cid) ?? store.channel(cid);
  writable();
  try {
    if (!c.msgs.has(root)) {
      const r = await session.query({ q: 'history', channel: cid, after: root - 1, before: root + 1, limit: 1 });
      for (const m of r.messages ?? []) store.put(c, m);
    }
    await loadReplies(c, 0, token);
  } catch (e) {
    if (token === opening) list.replaceChildren(h('p', { class: 'notice' }, `Could not load the thread: ${e.message}`));
    return;
  }
  if (token !== opening) return;
  drawAll();
  const target = highlight && list.querySelector(`[data-seq="${highlight}"]`);
  if (target) {
    target.classList.add('highlight');
    target.scrollIntoView({ block: 'center' });
  } else {
    list.scrollTop = list.scrollHeight;
    composer.focus();
  }
}

/** Reads the replies after `after`, page by page; `show` draws each (the panel is up already). */
async function loadReplies(c, after, token, show = false) {
  for (let round = 0; round < 20; round++) {
    const q = { q: 'thread', channel: c.id, root: open.root, limit: PAGE };
    if (after) q.after = after;
    const r = await ctx.session.query(q);
    if (token !== opening) return;
    for (const m of r.messages ?? []) {
      ctx.store.put(c, m);
      if (show) drawReply(m);
    }
    const last = r.messages?.at(-1)?.seq;
    if (!r.next || !last) return;
    after = last;
  }
}

export function closeThread() {
  if (!open) return;
  open = null;
  opening++;
  panel.hidden = true;
  document.body.classList.remove('thread-open');
  if (previousFocus?.isConnected) previousFocus.focus();
}

function drawAll() {
  const c = ctx.store.channels.get(open.cid);
  const rootMsg = c?.msgs.get(open.root);
  if (rootMsg) drawRoot(rootMsg);
  list.replaceChildren();
  for (const m of ctx.store.replies(c, open.root)) drawReply(m, false);
  for (const p of ctx.store.pending.values()) {
    if (p.channel === open.cid && p.threadRoot === open.root) drawPending(p);
  }
  if (!list.children.length) list.append(h('p', { class: 'notice' }, 'No replies yet.'));
}

function drawRoot(m) {
  rootBox.replaceChildren(renderMessage(m, 'root'));
  const following = (m.thread_followers ?? []).includes(ctx.store.self.id);
  followButton.textContent = following ? 'Unfollow' : 'Follow';
  followButton.setAttribute('aria-pressed', String(following));
  // A newer reply than the panel holds, which was not sent to this user: read it.
  const c = ctx.store.channels.get(open.cid);
  const shown = ctx.store.replies(c, open.root).at(-1)?.seq ?? 0;
  if (m.latest_reply_seq && m.latest_reply_seq > shown) {
    loadReplies(c, shown, opening, true).catch((e) => console.warn('selvage: thread refresh failed', e));
  }
}

function drawReply(m, scroll = true) {
  const bottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  list.querySelector(':scope > .notice')?.remove();
  place(list, renderMessage(m, 'thread'), m.seq);
  if (scroll && (bottom || m.user === ctx.store.self.id)) list.scrollTop = list.scrollHeight;
}

function drawPending(p) {
  const old = list.querySelector(`:scope > [data-client-msg-id="${CSS.escape(p.cmid)}"]:not([data-seq])`);
  if (p.state === 'settled') return old?.remove();
  const el = renderPending({ ...p, where: 'thread' });
  if (old) old.replaceWith(el);
  else {
    list.querySelector(':scope > .notice')?.remove();
    list.append(el);
    list.scrollTop = list.scrollHeight;
  }
}

async function toggleFollow() {
  if (!open) return;
  const { cid, root } = open;
  const c = ctx.store.channels.get(cid);
  const m = c?.msgs.get(root);
  if (!m) return;
  const on = !(m.thread_followers ?? []).includes(ctx.store.self.id);
  try {
    await follow(cid, root, on);
    const followers = new Set(m.thread_followers ?? []);
    if (on) followers.add(ctx.store.self.id);
    else followers.delete(ctx.store.self.id);
    const next = { ...c.msgs.get(root), thread_followers: [...followers] };
    c.msgs.set(root, next);
    ctx.store.emit('message', next);
  } catch (e) {
    toast(`Could not ${on ? 'follow' : 'unfollow'} the thread: ${e.message}`);
  }
}
