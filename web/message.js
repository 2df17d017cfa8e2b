// One message as an element, for the conversation and the thread panel alike. A message is
// re-rendered whole when it changes (an edit, a reaction, a new reply count): messages are small,
// and one code path for "draw this message" is easier to keep right than patches.

import { h, renderText, formatTime, formatBytes, emojiGlyph, EMOJI, toast } from './dom.js';
import { previewUrl, downloadUrl } from './files.js';

let store;
let actions; // {react, edit(m, element), remove, openThread, retry}

export function configureMessages(theStore, theActions) {
  store = theStore;
  actions = theActions;
}

/**
 * A confirmed message. `where`: `channel` (the main list: thread summary shown), `root` (the
 * root at the top of the thread panel) or `thread` (a reply in the panel).
 */
export function renderMessage(m, where = 'channel') {
  const mine = m.user === store.self.id;
  const testid = { channel: 'message', thread: 'thread-reply', root: 'thread-root' }[where];
  const el = h('article', {
    class: `msg${mine ? ' mine' : ''}${m.deleted ? ' deleted' : ''}${store.mentionsSelf(m) ? ' mentions-me' : ''}`,
    'data-testid': testid,
    'data-seq': m.seq,
    'data-channel': m.channel,
    'data-client-msg-id': m.client_msg_id || false,
    'data-state': 'sent',
    tabindex: '-1',
    'aria-label': `${store.userName(m.user)} at ${formatTime(m.ts)}`,
  },
  header(m),
  m.deleted
    ? h('div', { class: 'text tombstone', 'data-testid': 'message-text' }, 'This message was deleted.')
    : h('div', { class: 'text', 'data-testid': 'message-text' }, renderText(m.text ?? '', (id) => store.userName(id), store.self.id)),
  m.deleted ? null : files(m),
  m.deleted ? null : reactions(m),
  where === 'channel' && m.reply_count ? replySummary(m) : null,
  m.deleted ? null : toolbar(m, mine, where));
  return el;
}

function header(m) {
  return h('div', { class: 'meta' },
    h('span', { class: 'author', 'data-user': m.user }, store.userName(m.user)),
    h('time', { datetime: new Date(m.ts).toISOString() }, formatTime(m.ts)),
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
  failed && !p.upload ? h('button', { class: 'retry', type: 'button', onclick: () => actions.retry(p) }, 'Retry') : null);
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
    }, `📎 ${f.name} (${formatBytes(f.size)})`);
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

function toolbar(m, mine, where) {
  const picker = h('div', { class: 'picker', role: 'menu', hidden: true },
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
      type: 'button', 'aria-label': 'Add reaction', 'data-action': 'react', 'aria-haspopup': 'menu',
      onclick: () => {
        picker.hidden = !picker.hidden;
        if (!picker.hidden) picker.querySelector('button').focus();
      },
    }, '☺'),
    picker,
    where === 'channel' ? h('button', {
      type: 'button', 'aria-label': 'Reply in thread', 'data-action': 'reply',
      onclick: () => actions.openThread(m.channel, m.seq),
    }, '💬') : null,
    mine ? h('button', {
      type: 'button', 'aria-label': 'Edit message', 'data-action': 'edit',
      onclick: (e) => actions.edit(m, e.currentTarget.closest('article')),
    }, '✎') : null,
    mine ? h('button', { type: 'button', 'aria-label': 'Delete message', 'data-action': 'delete', onclick: () => actions.remove(m) }, '🗑') : null);
}

/**
 * Keeps a list element in `seq` order with pending sends at its end: puts `el` (for the message
 * with `seq`) where it belongs, replacing the element it supersedes.
 */
export function place(list, el, seq) {
  const old = list.querySelector(`:scope > [data-seq="${seq}"]`);
  if (old) {
    if (old.dataset.editing) return old; // an edit in progress keeps its form
    old.replaceWith(el);
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
  return el;
}
