// The sidebar: the user's channels, DMs and group DMs with unread and mention badges and
// presence dots, and the dialogs to create or join a channel and to start a conversation.
// Items are links (`#c=<id>`), so Tab, Enter and "open in new tab" work as on any page.

import { h, icon, $, toast, dialog } from './dom.js';
import { createChannel, joinChannel, getChannel, openDm } from './api.js';

let ctx; // {store, session, openChannel, loadAllUsers}
let channelList;
let dmList;
let openId = null;
const items = new Map(); // channel id → <a>

export function initSidebar(context) {
  ctx = context;
  const nav = $('#sidebar');
  channelList = h('ul', { class: 'items', 'aria-labelledby': 'channels-heading' });
  dmList = h('ul', { class: 'items', 'aria-labelledby': 'dms-heading' });
  nav.append(
    h('section', {},
      h('div', { class: 'section-header' },
        h('h2', { id: 'channels-heading' }, 'Channels'),
        h('button', { type: 'button', class: 'icon', 'aria-label': 'Browse and join channels', title: 'Browse channels', 'data-testid': 'browse-channels', onclick: browseChannels }, icon('list')),
        h('button', { type: 'button', class: 'icon', 'aria-label': 'Create a channel', title: 'Create a channel', 'data-testid': 'create-channel', onclick: createDialog }, icon('plus'))),
      channelList),
    h('section', {},
      h('div', { class: 'section-header' },
        h('h2', { id: 'dms-heading' }, 'Direct messages'),
        h('button', { type: 'button', class: 'icon', 'aria-label': 'Start a direct message', title: 'New message', 'data-testid': 'new-dm', onclick: dmDialog }, icon('plus'))),
      dmList));

  const { store } = ctx;
  store.on('channels', render);
  store.on('users', render);
  store.on('channel', update);
  // A channel created while the list of channels to join is open: list it too.
  store.on('directory', () => {
    if ($('#dialog').open && $('#dialog').dataset.view === 'browse') browseChannels();
  });
  store.on('presence', (user) => {
    for (const c of store.channels.values()) {
      if (c.member && c.info?.kind === 'dm' && store.partners(c).some((u) => u.id === user)) update(c.id);
    }
  });
  store.on('open', (cid) => {
    openId = cid;
    for (const [id, a] of items) {
      if (id === cid) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  });
}

/** Lays the items out again: called when the set of conversations or their names change. */
function render() {
  const { store } = ctx;
  const mine = [...store.channels.values()].filter((c) => c.member && c.info);
  const byName = (a, b) => store.displayName(a).localeCompare(store.displayName(b));
  const channels = mine.filter((c) => c.info.kind === 'channel').sort(byName);
  const dms = mine.filter((c) => c.info.kind !== 'channel').sort(byName);
  for (const id of items.keys()) if (!mine.some((c) => c.id === id)) items.delete(id);
  layout(channelList, channels);
  layout(dmList, dms);
  for (const c of mine) update(c.id);
}

function layout(ul, channels) {
  const wanted = channels.map((c) => item(c).parentElement);
  const same = wanted.length === ul.children.length && wanted.every((li, i) => ul.children[i] === li);
  if (!same) ul.replaceChildren(...wanted);
}

function item(c) {
  let a = items.get(c.id);
  if (!a) {
    a = h('a', {
      class: 'item', href: `#c=${encodeURIComponent(c.id)}`, 'data-testid': 'channel-item', 'data-channel-id': c.id,
    },
    h('span', { class: 'presence', 'aria-hidden': 'true' }),
    h('span', { class: 'hash', 'aria-hidden': 'true' }, '#'),
    icon('lock'),
    h('span', { class: 'name' }),
    h('span', { class: 'badge', 'data-testid': 'badge' }));
    // The open one again (after a jump to an old message, say): no hashchange, so open it here.
    a.addEventListener('click', (e) => {
      if (c.id !== openId) return;
      e.preventDefault();
      ctx.openChannel(c.id);
    });
    h('li', {}, a); // its list item, reached as a.parentElement
    items.set(c.id, a);
  }
  return a;
}

/** Refreshes one item's name, badge, presence and attributes in place (keeps focus). */
function update(cid) {
  const { store } = ctx;
  const a = items.get(cid);
  const c = store.channels.get(cid);
  if (!a || !c?.info) return;
  const unread = store.unread(c);
  const mentions = store.mentions(c);
  const name = store.displayName(c);
  const isDm = c.info.kind !== 'channel';
  a.querySelector('.name').textContent = name;
  a.querySelector('.hash').hidden = isDm || c.info.private;
  a.querySelector('.icon-lock').classList.toggle('shown', !isDm && c.info.private);
  a.dataset.unread = unread;
  a.dataset.mentions = mentions;
  a.classList.toggle('unread', unread > 0);
  const badge = a.querySelector('.badge');
  badge.textContent = mentions > 0 ? mentions : unread > 0 ? unread : '';
  badge.hidden = mentions === 0 && unread === 0;
  badge.classList.toggle('mention', mentions > 0);
  const dot = a.querySelector('.presence');
  const partner = c.info.kind === 'dm' ? store.partners(c)[0] : null;
  dot.hidden = !partner;
  const presence = partner ? store.presence.get(partner.id) ?? 'offline' : '';
  dot.dataset.presence = presence;
  const counts = [unread && `${unread} unread`, mentions && `${mentions} mention${mentions === 1 ? '' : 's'}`].filter(Boolean);
  a.setAttribute('aria-label', [isDm ? name : `${c.info.private ? 'private channel' : 'channel'} ${name}`, partner && presence, ...counts].filter(Boolean).join(', '));
  if (cid === openId) a.setAttribute('aria-current', 'page');
}

// ---- dialogs ----

function createDialog() {
  const name = h('input', { id: 'new-channel-name', required: true, maxlength: 80, pattern: '[a-z0-9_\\-]+', autocomplete: 'off', 'data-testid': 'new-channel-name' });
  const priv = h('input', { type: 'checkbox', id: 'new-channel-private' });
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'stack' },
    h('label', { for: 'new-channel-name' }, 'Name (a–z, 0–9, - and _)'), name,
    h('label', { class: 'check' }, priv, ' Private: only people invited can see it'),
    error,
    h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary' }, 'Create')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const { channel } = await createChannel(name.value.trim(), priv.checked);
      ctx.store.putView(channel);
      $('#dialog').close();
      ctx.openChannel(channel.id);
    } catch (err) {
      error.textContent = err.message;
    }
  });
  dialog('Create a channel', 'create', form);
  name.focus();
}

/** Every channel the user may see and is not in, from `query channels`, page by page. */
async function browseChannels() {
  const listEl = h('ul', { class: 'pick-list' }, h('li', { class: 'notice' }, 'Loading…'));
  dialog('Browse channels', 'browse', listEl);
  const found = [];
  let page;
  try {
    for (let round = 0; round < 20; round++) {
      const r = await ctx.session.query({ q: 'channels', limit: 1000, ...(page ? { page } : {}) });
      found.push(...(r.channels ?? []));
      if (!r.next) break;
      page = r.next;
    }
  } catch (e) {
    listEl.replaceChildren(h('li', { class: 'notice' }, e.message));
    return;
  }
  const others = found.filter((b) => b.channel.kind === 'channel' && !ctx.store.channels.get(b.channel.id)?.member)
    .sort((a, b) => a.channel.name.localeCompare(b.channel.name));
  if (!others.length) {
    listEl.replaceChildren(h('li', { class: 'notice' }, 'You are in every channel there is.'));
    return;
  }
  listEl.replaceChildren(...others.map(({ channel }) => h('li', {},
    h('span', { class: 'name' }, `# ${channel.name}`, channel.archived ? ' (archived)' : ''),
    channel.topic ? h('span', { class: 'topic' }, channel.topic) : null,
    h('button', { type: 'button', onclick: () => { $('#dialog').close(); ctx.openChannel(channel.id); } }, 'View'),
    channel.archived ? null : h('button', { type: 'button', class: 'primary', 'data-testid': 'join-channel', onclick: () => join(channel.id) }, 'Join'))));
}

async function join(cid) {
  try {
    await joinChannel(cid);
    const { channel } = await getChannel(cid);
    ctx.store.putView(channel);
    $('#dialog').close();
    ctx.openChannel(cid);
  } catch (e) {
    toast(`Could not join: ${e.message}`);
  }
}

async function dmDialog() {
  const filter = h('input', { type: 'search', placeholder: 'Find people', 'aria-label': 'Find people', autocomplete: 'off' });
  const listEl = h('ul', { class: 'pick-list', role: 'group', 'aria-label': 'People' }, h('li', { class: 'notice' }, 'Loading…'));
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'stack' }, filter, listEl, error,
    h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary', 'data-testid': 'start-dm' }, 'Start conversation')));
  dialog('New message', 'dm', form);
  filter.focus();
  try {
    await ctx.loadAllUsers();
  } catch (e) {
    listEl.replaceChildren(h('li', { class: 'notice' }, e.message));
    return;
  }
  const people = [...ctx.store.users.values()]
    .filter((u) => u.id !== ctx.store.self.id && !u.deactivated)
    .sort((a, b) => (a.name || a.handle).localeCompare(b.name || b.handle));
  listEl.replaceChildren(...people.map((u) => h('li', { 'data-search': `${u.handle} ${u.name ?? ''}`.toLowerCase() },
    h('label', { class: 'check' }, h('input', { type: 'checkbox', value: u.id, 'data-testid': 'dm-user', 'data-handle': u.handle }),
      ` ${u.name || u.handle} `, h('span', { class: 'handle' }, `@${u.handle}`)))));
  filter.addEventListener('input', () => {
    const q = filter.value.toLowerCase();
    for (const li of listEl.children) li.hidden = !li.dataset.search?.includes(q);
  });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const users = [...listEl.querySelectorAll('input:checked')].map((i) => i.value);
    if (!users.length) {
      error.textContent = 'Pick one person, or up to eight for a group.';
      return;
    }
    try {
      const { channel } = await openDm(users);
      ctx.store.putView(channel);
      ctx.updatePresenceSub();
      $('#dialog').close();
      ctx.openChannel(channel.id);
    } catch (err) {
      error.textContent = err.message;
    }
  });
}
