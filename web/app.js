// Selvage's web client: what every edge serves at `/` (issue 25).
//
// Plain hand-written ES modules — no framework, no build step, no npm dependency. Why: the edge
// serves these files as they are (from disk in debug builds, embedded in release builds), so
// `cargo run -- dev` from a fresh clone must work with no front-end toolchain at all; and the
// budget is small — all JavaScript and CSS under 150 KB uncompressed — which a framework alone
// would spend. The Content-Security-Policy the edge sends (script-src 'self', style-src 'self',
// no inline anything) is also why no code here writes HTML strings or inline handlers.
//
// How it works (the Flannel model, ARCHITECTURE §3-§4): one WebSocket session to the edge
// (session.js) boots from `hello` — the user, their channels with unread counts, the people
// their DMs need — and everything else is asked for lazily with `query` frames: history pages,
// threads, users, search. Writes the session does not carry (edits, reactions, channels,
// files, push) go to the origin's HTTP API, which the edge proxies at the same origin (api.js).
// The token comes in the URL fragment (`#token=…`, never sent to a server), is kept in
// sessionStorage (`selvage.token`) and removed from the address bar at once.
//
// Modules: boot.js (first to run: the token, and the socket opened before the rest has loaded),
// session.js (connection, resume, requests), store.js (state, unread counts, gaps),
// conversation.js, thread.js, sidebar.js, search.js, composer.js, message.js, details.js
// (members, leave, archive) (views), files.js (uploads, previews), notify.js (do-not-disturb,
// Web Push; sw.js), dom.js, api.js.
//
// Stable hooks for browser tests (web/tests/e2e.mjs) — `data-testid` values:
//   conn-state (text: connecting | connected | reconnecting | resumed), sidebar,
//   channel-item (data-channel-id, data-unread, data-mentions; child badge), message-list,
//   message (data-seq, data-client-msg-id, data-state = pending | sent | failed), message-text,
//   composer, send-button, thread-panel, thread-reply, reply-count (data-count), reaction
//   (data-emoji, data-count), search-box, search-result (data-channel-id, data-seq), typing,
//   file-preview, dnd-toggle;
//   and beyond those: thread-root (the root in the thread panel), thread-composer,
//   thread-send-button, follow-toggle, not-found (a conversation that cannot be shown),
//   ephemeral-message, browse-channels, create-channel, new-channel-name, join-channel, new-dm,
//   dm-user, start-dm, signin-token, push-toggle, toast, new-divider (above the first message
//   unread when the conversation opened), archived-note, channel-details (the header's button
//   to the members dialog), member (data-user-id, data-presence), leave-channel,
//   archive-channel. Messages also carry data-channel; `.highlight` marks the message a search
//   result opened; a message's <time> has its full date and time as its title.
//   performance.mark('selvage-first-messages') is set when the first message list is on screen.

import { token, early, takeToken, fragmentParams, startParams, TOKEN_KEY } from './boot.js';
import { Session } from './session.js';
import { Store } from './store.js';
import { $, toast } from './dom.js';
import { setToken, editMessage as patchMessage, deleteMessage, react as putReaction, getChannel } from './api.js';
import { configureMessages } from './message.js';
import { configureComposer, toWire, fromWire } from './composer.js';
import { initConversation, openChannel, currentChannel, fill, reveal, messageElement, maybeMarkRead } from './conversation.js';
import { initThread, openThread, closeThread, isThreadOpen } from './thread.js';
import { initSidebar } from './sidebar.js';
import { initSearch, closeSearch, isSearchOpen, focusSearch } from './search.js';
import { initNotify } from './notify.js';
import { initDetails } from './details.js';
import { uploadFile } from './files.js';

const SEND_RETRIES = 3;
/** Errors after which the same send may simply go again (API.md, the error table). */
const RETRYABLE = new Set(['rate_limited', 'overloaded', 'unavailable']);

const store = new Store();
let session = null;
let booted = false;
let presenceKey = '';

// ---- signing in ----

function showSignIn(message = '') {
  $('#app').hidden = true;
  $('#signin').hidden = false;
  $('#signin-error').textContent = message;
  $('#signin-token').focus();
}

$('#signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const entered = $('#signin-token').value.trim();
  if (!entered) return;
  sessionStorage.setItem(TOKEN_KEY, entered);
  $('#signin').hidden = true;
  start(entered);
});

$('#me').addEventListener('click', () => {
  session?.stop();
  sessionStorage.removeItem(TOKEN_KEY);
  location.replace('/');
});

// ---- the session ----

function start(token, early = null) {
  setToken(token);
  $('#app').hidden = false;
  session = new Session(token, { hello: onHello, event: onEvent, state: showState, fatal: onFatal });
  const ctx = {
    store, session, send, upload, openChannel, openThread, openAt, ensureUsers, loadAllUsers,
    updatePresenceSub, editMessage: startEdit, followPresence: (ids) => updatePresenceSub(ids),
  };
  configureMessages(store, {
    react, edit: startEdit, remove, retry, discard: (p) => store.settle(p), openThread: (cid, root) => openThread(cid, root),
  });
  configureComposer(store, loadAllUsers);
  initSidebar(ctx);
  initConversation(ctx);
  initThread(ctx);
  initSearch(ctx);
  initNotify(ctx);
  initDetails(ctx);
  watchUsers();
  // Last: taking over boot.js's socket may deliver `hello` (and more) at once, to the views.
  session.start(early);
}

function showState(state) {
  const el = $('#conn-state');
  el.textContent = state;
  el.dataset.state = state;
}

function onFatal(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn(message);
}

function onHello(hello, { fresh, reconnect }) {
  store.boot(hello, { fresh, reconnect });
  presenceKey = ''; // a new connection follows nobody yet
  updatePresenceSub();
  if (!booted) {
    booted = true;
    const first = firstChannel();
    if (first) openChannel(first.cid, { at: first.at });
    return;
  }
  const cid = currentChannel();
  const c = cid && store.channels.get(cid);
  if (!c) return;
  if (fresh) {
    // Booted afresh after a resync: what was loaded may have missed events; read it again.
    openChannel(cid, { focus: false });
  } else {
    // Resumed: the missed events follow `hello`. Whatever they do not bring (a page the edge
    // could not replay) shows up as a head above the loaded run; read history for it then.
    setTimeout(() => {
      if (c.loaded && (store.hasGap(c) || c.lastSeq > c.high)) fill(c);
    }, 1000);
  }
}

/** The conversation to open first: the one in the URL, the last one open, #general, any. */
function firstChannel() {
  const fromUrl = startParams.get('c');
  if (fromUrl) return { cid: fromUrl, at: Number(startParams.get('m')) || undefined };
  const mine = [...store.channels.values()].filter((c) => c.member);
  const last = localStorage.getItem('selvage.last');
  const pick = mine.find((c) => c.id === last)
    ?? mine.find((c) => c.info.kind === 'channel' && c.info.name === 'general')
    ?? mine.sort((a, b) => a.info.name.localeCompare(b.info.name))[0];
  return pick ? { cid: pick.id } : null;
}

function onEvent(e) {
  if (e.type !== 'message') {
    store.apply(e);
    return;
  }
  const gap = store.onMessage(e);
  const c = store.channels.get(e.channel);
  if (gap && c && c.id === currentChannel()) fill(c);
}

store.on('joined', async (cid) => {
  try {
    const { channel } = await getChannel(cid);
    // A DM someone else started: its people may be new to this client.
    if (channel.kind !== 'channel') await loadAllUsers();
    store.putView(channel);
    updatePresenceSub();
  } catch (e) {
    console.warn('selvage: a joined conversation could not be read', e);
  }
});

store.on('left', (cid) => {
  if (cid !== currentChannel()) return;
  toast('You left this conversation.');
  const next = firstChannel();
  if (next && next.cid !== cid) openChannel(next.cid);
});

let followed = []; // people whose presence a view shows for now (a members list)

/**
 * Follows the presence of the user's DM partners, their own (it carries do-not-disturb) and
 * of `extra`, who a view shows for now (a members list), until it says otherwise.
 */
function updatePresenceSub(extra) {
  if (extra) followed = extra;
  if (!store.self) return;
  const ids = new Set([store.self.id, ...followed]);
  for (const c of store.channels.values()) {
    if (c.member && c.info?.kind !== 'channel') for (const u of store.partners(c)) ids.add(u.id);
  }
  const users = [...ids].sort().slice(0, 500);
  const key = users.join();
  if (key === presenceKey) return;
  presenceKey = key;
  session.fire({ type: 'presence_sub', users });
}

// ---- people ----

const askedUsers = new Set();
let userBatch = null;

/** Reads users the client has not met yet (authors, mentions), batched into one query. */
function ensureUsers(ids) {
  const missing = ids.filter((id) => id && !store.users.has(id) && !askedUsers.has(id));
  if (!missing.length) return userBatch?.done ?? Promise.resolve();
  if (!userBatch) {
    const batch = { ids: new Set() };
    batch.done = new Promise((resolve) => setTimeout(resolve, 10)).then(async () => {
      userBatch = null;
      const r = await session.query({ q: 'users', users: [...batch.ids] });
      for (const u of r.users ?? []) store.users.set(u.id, u);
      store.emit('users');
    });
    batch.done.catch((e) => {
      for (const id of batch.ids) askedUsers.delete(id);
      console.warn('selvage: users query failed', e);
    });
    userBatch = batch;
  }
  for (const id of missing) {
    askedUsers.add(id);
    userBatch.ids.add(id);
  }
  return userBatch.done;
}

function peopleIn(m) {
  return [m.user, ...(m.mentions ?? []), ...(m.reactions ?? []).flatMap((r) => r.users)];
}

function watchUsers() {
  store.on('message', (m) => m && ensureUsers(peopleIn(m)));
  store.on('messages', (cid) => {
    const c = store.channels.get(cid);
    if (c) ensureUsers([...c.msgs.values()].flatMap(peopleIn));
  });
  store.on('typing', (e) => ensureUsers([e.user]));
}

let allUsers = null;

/** Every user of the workspace (for mentions and new DMs), read once, page by page. */
function loadAllUsers() {
  allUsers ??= (async () => {
    let page;
    for (let round = 0; round < 50; round++) {
      const r = await session.query({ q: 'users', limit: 1000, ...(page ? { page } : {}) });
      for (const u of r.users ?? []) store.users.set(u.id, u);
      if (!r.next) break;
      page = r.next;
    }
    store.emit('users');
  })();
  allUsers.catch(() => { allUsers = null; });
  return allUsers;
}

// ---- sending ----

/** A `client_msg_id`: random, and the same for every retry of one message. */
function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** Posts a message, shown at once as pending (optimistic); returns true when taken. */
function send(channel, text, threadRoot) {
  if (!channel) return false;
  const p = { cmid: newId(), channel, text, threadRoot, state: 'pending', tries: 0 };
  store.pending.set(p.cmid, p);
  store.emit('pending', p);
  transmit(p);
  return true;
}

function transmit(p) {
  p.tries++;
  const frame = { type: 'send', channel: p.channel, text: p.text, client_msg_id: p.cmid };
  if (p.threadRoot) frame.thread_root = p.threadRoot;
  session.request(frame).then((answer) => {
    if (answer.type === 'ack') store.acked(p, answer);
    else store.settle(p); // a slash command ran instead; its answer arrives as events
  }, (error) => {
    if (!store.pending.has(p.cmid)) return;
    if (RETRYABLE.has(error.code) && p.tries < SEND_RETRIES) {
      setTimeout(() => transmit(p), error.retry_after_ms ?? 1000 * p.tries);
      return;
    }
    p.state = 'failed';
    p.error = error.message || error.code;
    store.emit('pending', p);
  });
}

/** Sends a failed message again with the same `client_msg_id`: it lands at most once. */
function retry(p) {
  if (p.file) {
    store.settle(p);
    upload([p.file], p.channel, p.threadRoot);
    return;
  }
  p.state = 'pending';
  p.tries = 0;
  store.emit('pending', p);
  transmit(p);
}

/** Uploads files into a conversation (drag and drop, paste, the 📎 button), each as a message. */
async function upload(files, channel, threadRoot) {
  for (const file of files) {
    const p = { cmid: newId(), channel, threadRoot, text: '', state: 'pending', upload: `Uploading ${file.name || 'a pasted file'}…`, file };
    store.pending.set(p.cmid, p);
    store.emit('pending', p);
    try {
      const done = await uploadFile(file, { channel, clientMsgId: p.cmid, threadRoot });
      store.landed(p, done.message);
    } catch (e) {
      if (e.code === 'not_found' && e.message.includes('not enabled')) {
        store.settle(p);
        toast('Files are not enabled on this server.');
        return;
      }
      p.state = 'failed';
      p.error = e.message;
      p.upload = `${file.name}: ${e.message}`;
      store.emit('pending', p);
    }
  }
}

// ---- changing messages ----

async function react(m, emoji, add) {
  const event = { type: add ? 'reaction_added' : 'reaction_removed', channel: m.channel, seq: m.seq, user: store.self.id, emoji };
  store.apply(event); // shown at once; the event from the edge changes nothing more
  try {
    await putReaction(m.channel, m.seq, emoji, add);
  } catch (e) {
    store.apply({ ...event, type: add ? 'reaction_removed' : 'reaction_added' });
    toast(`Could not react: ${e.message}`);
  }
}

/** Turns a message's text into an editing form in place: Enter saves, Escape cancels. */
function startEdit(m, element = messageElement(m.seq)) {
  if (!element || element.dataset.editing) return;
  element.dataset.editing = '1';
  // Where the user was (the composer, after Up; the message itself): back there afterwards.
  const before = document.activeElement;
  const list = element.parentElement;
  const textEl = element.querySelector('[data-testid="message-text"]');
  const input = document.createElement('textarea');
  input.className = 'edit-input';
  input.value = fromWire(m.text);
  input.setAttribute('aria-label', 'Edit message (Enter saves, Escape cancels)');
  textEl.replaceWith(input);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
  const finish = (next) => {
    delete element.dataset.editing;
    const c = store.channels.get(m.channel);
    if (next) c?.msgs.set(next.seq, next);
    store.emit('message', c?.msgs.get(m.seq) ?? m); // draws it again, form gone
    const back = before?.isConnected && before !== document.body ? before : list?.querySelector(`:scope > [data-seq="${m.seq}"]`);
    back?.focus();
  };
  input.addEventListener('keydown', async (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      finish();
    } else if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      const text = input.value.trim();
      if (!text || toWire(text) === m.text) return finish();
      input.disabled = true;
      try {
        const { message } = await patchMessage(m.channel, m.seq, toWire(text));
        finish(message);
      } catch (err) {
        input.disabled = false;
        toast(`Could not save: ${err.message}`);
      }
    }
  });
}

async function remove(m) {
  if (!window.confirm('Delete this message? This cannot be undone.')) return;
  try {
    await deleteMessage(m.channel, m.seq);
    store.apply({ type: 'message_deleted', channel: m.channel, seq: m.seq });
  } catch (e) {
    toast(`Could not delete: ${e.message}`);
  }
}

// ---- navigation ----

/** Opens a conversation at a message (a search result), in its thread when it is a reply. */
async function openAt(cid, seq, threadRoot) {
  closeSearch();
  if (threadRoot) {
    if (currentChannel() !== cid || !reveal(threadRoot)) await openChannel(cid, { at: threadRoot });
    openThread(cid, threadRoot, { highlight: seq });
    return;
  }
  if (currentChannel() === cid && reveal(seq)) return;
  await openChannel(cid, { at: seq });
}

window.addEventListener('hashchange', () => {
  const params = fragmentParams();
  if (params.get('token')) {
    // A sign-in link opened in this tab: start over as that user.
    takeToken();
    location.reload();
    return;
  }
  const cid = params.get('c');
  if (cid && booted && cid !== currentChannel()) openChannel(cid, { at: Number(params.get('m')) || undefined });
});

document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && !e.defaultPrevented && !$('#dialog').open) {
    if (isSearchOpen()) closeSearch();
    else if (isThreadOpen()) closeThread();
    else return;
    e.preventDefault();
  } else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'k') {
    e.preventDefault();
    focusSearch();
  } else if (e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
    // Alt+Up/Down: the previous or next conversation in the sidebar.
    const links = [...document.querySelectorAll('[data-testid="channel-item"]')];
    const at = links.findIndex((a) => a.dataset.channelId === currentChannel());
    const next = links[at + (e.key === 'ArrowUp' ? -1 : 1)];
    if (next) {
      e.preventDefault();
      next.click();
      next.focus();
    }
  }
});

window.addEventListener('online', () => session?.nudge());
document.addEventListener('visibilitychange', () => document.visibilityState === 'visible' && maybeMarkRead());
navigator.serviceWorker?.addEventListener('message', (e) => {
  if (e.data?.type === 'open' && e.data.channel) openChannel(e.data.channel);
});

// ---- go ----

if (token) start(token, early);
else showSignIn();
