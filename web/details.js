// The open conversation's details (the people button in its header): who is in it, read with
// `query members` only when the dialog opens, each with a presence dot kept live while it is
// open (the session follows their presence meanwhile); and what the user may do to it: leave a
// channel, archive it (its creator and workspace admins). DMs and group DMs have fixed members
// and are never archived (API.md "Channels").

import { h, $, toast, dialog } from './dom.js';
import { api, leaveChannel } from './api.js';

const MAX_SHOWN = 1000; // one page; a query asks for at most 1,000 items

let ctx; // {store, session, ensureUsers, followPresence}
let listEl = null; // the member list while the dialog shows one

export function initDetails(context) {
  ctx = context;
  ctx.store.on('presence', (user) => {
    const li = listEl?.querySelector(`[data-user-id="${CSS.escape(user)}"]`);
    li?.replaceWith(member(user));
  });
  $('#dialog').addEventListener('close', () => {
    if (!listEl) return;
    listEl = null;
    ctx.followPresence([]);
  });
}

/** Opens the details of conversation `c`, reading its members. */
export async function showDetails(c) {
  const { store } = ctx;
  const channel = c.info.kind === 'channel';
  const manager = store.self.admin || c.info.created_by === store.self.id;
  const list = h('ul', { class: 'pick-list', 'aria-label': 'Members', 'aria-busy': 'true' }, h('li', { class: 'notice' }, 'Loading…'));
  dialog(channel ? `# ${c.info.name}` : store.displayName(c), 'details', list,
    h('div', { class: 'buttons dialog-actions' },
      channel && c.member ? h('button', { type: 'button', 'data-testid': 'leave-channel', onclick: () => leave(c) }, 'Leave channel') : null,
      channel && manager && !c.info.archived
        ? h('button', { type: 'button', 'data-testid': 'archive-channel', onclick: () => archive(c) }, 'Archive channel') : null));
  listEl = list;
  let r;
  try {
    r = await ctx.session.query({ q: 'members', channel: c.id, limit: MAX_SHOWN });
    await ctx.ensureUsers(r.members ?? []);
  } catch (e) {
    list.replaceChildren(h('li', { class: 'notice' }, `Could not read the members: ${e.message}`));
    return;
  }
  if (listEl !== list) return;
  const ids = (r.members ?? []).sort((a, b) => store.userName(a).localeCompare(store.userName(b)));
  ctx.followPresence(ids.slice(0, 400));
  list.removeAttribute('aria-busy');
  list.replaceChildren(...ids.map(member));
  if (r.next) list.append(h('li', { class: 'notice' }, `Only the first ${MAX_SHOWN} are shown.`));
}

function member(id) {
  const { store } = ctx;
  const presence = store.presence.get(id) ?? 'offline';
  const u = store.users.get(id);
  return h('li', { 'data-testid': 'member', 'data-user-id': id, 'data-presence': presence },
    h('span', { class: 'presence', 'data-presence': presence, title: presence, 'aria-hidden': 'true' }),
    h('span', { class: 'name' }, store.userName(id), id === store.self.id ? ' (you)' : ''),
    u ? h('span', { class: 'handle' }, `@${u.handle}`) : null,
    h('span', { class: 'visually-hidden' }, `, ${presence}`));
}

async function leave(c) {
  if (c.info.private && !window.confirm(`Leave #${c.info.name}? Only an invitation brings you back.`)) return;
  try {
    // The `member_left` event that follows takes it out of the sidebar, on every device.
    await leaveChannel(c.id, ctx.store.self.id);
    $('#dialog').close();
  } catch (e) {
    toast(`Could not leave: ${e.message}`);
  }
}

async function archive(c) {
  if (!window.confirm(`Archive #${c.info.name}? Nobody can write in it until it is unarchived.`)) return;
  try {
    const { channel } = await api('PATCH', `/v1/channels/${encodeURIComponent(c.id)}`, { archived: true });
    ctx.store.putView(channel);
    $('#dialog').close();
  } catch (e) {
    toast(`Could not archive: ${e.message}`);
  }
}
