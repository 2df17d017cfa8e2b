// What the client knows: the user, the people it has met, its conversations with their unread
// state, the messages loaded so far and the sends still on their way. No DOM and no I/O here —
// the views subscribe to changes (`store.on`) and the app feeds it frames.
//
// Two rules keep it right across reconnects, replays and overlapping pages:
// - Every update is idempotent: a message is kept by (channel, seq), read markers and heads only
//   move forward, reactions are sets. An event replayed after a resume, or a history page that
//   overlaps what live events brought, changes nothing the second time.
// - Gaps are detected, not assumed away: `seq`s are gap-free per channel (ARCHITECTURE §2
//   "Ordering"), so each loaded channel keeps `high`, the top of the run of seqs it holds without
//   a hole. A message above `high + 1` means something is missing, and the app reads history
//   after `high`. Replies to threads the user does not follow never arrive live; the root's
//   `latest_reply_seq` (in its `message_changed`) names them, so they do not count as holes.

/** What a channel's unread and mention counts are made of; see `unread` and `mentions`. */
function channelState(id, info) {
  return {
    id,
    info, // the Channel record: name, kind, private, archived, topic…
    member: false,
    lastSeq: 0,
    readSeq: 0,
    // `hello` counts the mentions at or below its `last_seq` (`baseTop`); newer ones are kept
    // by seq, so a replayed event is never counted twice.
    baseMentions: 0,
    baseTop: 0,
    liveMentions: new Set(),
    msgs: new Map(), // seq → Message (top-level messages and replies alike)
    replySeqs: new Set(), // seqs known to be replies the client does not hold
    loaded: false, // a page of history has been read
    low: 1, // the oldest seq of the loaded run
    high: 0, // the newest seq of the loaded run: every seq from `low` to here is known
    hasOlder: false,
    ephemeral: [], // `ephemeral_message`s shown to this user alone, until reload
  };
}

export class Store {
  constructor() {
    this.self = null;
    this.users = new Map();
    this.presence = new Map();
    this.channels = new Map();
    this.pending = new Map(); // client_msg_id → {cmid, channel, text, threadRoot, state, error}
    this.listeners = new Map();
  }

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }

  emit(type, detail) {
    for (const fn of this.listeners.get(type) ?? []) fn(detail);
  }

  // ---- reading ----

  unread(c) {
    return c.member ? Math.max(0, c.lastSeq - c.readSeq) : 0;
  }

  mentions(c) {
    if (!c.member) return 0;
    const base = c.readSeq < c.baseTop ? c.baseMentions : 0;
    let live = 0;
    for (const seq of c.liveMentions) if (seq > c.readSeq) live++;
    return base + live;
  }

  userName(id) {
    const u = this.users.get(id);
    return u ? u.name || u.handle : id;
  }

  /** The members of a DM or group DM other than the user, from its name (their handles). */
  partners(c) {
    if (c.info.kind === 'channel') return [];
    const handles = c.info.name.split(',');
    const byHandle = new Map([...this.users.values()].map((u) => [u.handle, u]));
    const others = handles.map((h) => byHandle.get(h)).filter((u) => u && u.id !== this.self.id);
    return others.length || handles.length > 1 ? others : [this.self];
  }

  displayName(c) {
    if (c.info.kind === 'channel') return c.info.name;
    const partners = this.partners(c);
    if (!partners.length) return c.info.name.split(',').filter((h) => h !== this.self.handle).join(', ');
    return partners.map((u) => u.name || u.handle).join(', ');
  }

  /** The top-level messages of a channel, oldest first. */
  topLevel(c) {
    return [...c.msgs.values()].filter((m) => m.thread_root == null).sort((a, b) => a.seq - b.seq);
  }

  replies(c, root) {
    return [...c.msgs.values()].filter((m) => m.thread_root === root).sort((a, b) => a.seq - b.seq);
  }

  /** Whether a loaded channel holds messages above its gap-free run: history must fill it. */
  hasGap(c) {
    if (!c.loaded) return false;
    for (const seq of c.msgs.keys()) if (seq > c.high) return true;
    return false;
  }

  mentionsSelf(m) {
    const me = this.self.id;
    return m.user !== me && !m.deleted
      && (m.mentions_channel || (m.mentions ?? []).includes(me) || (m.mentions_here_users ?? []).includes(me));
  }

  // ---- booting ----

  /**
   * Takes a `hello`: its channel list and counts are the truth as of its cursor. After a fresh
   * boot that follows an earlier session (a `resync`), events were missed for good, so loaded
   * messages are dropped and read again when shown.
   */
  boot(hello, { fresh, reconnect }) {
    this.self = hello.self;
    this.users.set(hello.self.id, hello.self);
    for (const u of hello.users ?? []) this.users.set(u.id, u);
    const listed = new Set();
    for (const b of hello.channels ?? []) {
      listed.add(b.channel.id);
      const c = this.channel(b.channel.id, b.channel);
      c.info = b.channel;
      c.member = true;
      c.lastSeq = Math.max(c.lastSeq, b.last_seq);
      c.readSeq = Math.max(c.readSeq, b.read_seq);
      c.baseMentions = b.mentions;
      c.baseTop = b.last_seq;
      for (const seq of c.liveMentions) if (seq <= c.baseTop) c.liveMentions.delete(seq);
      if (fresh && reconnect) this.forget(c);
    }
    for (const c of this.channels.values()) {
      if (!listed.has(c.id)) c.member = false;
      if (!listed.has(c.id) && fresh && reconnect) this.forget(c);
    }
    this.emit('channels');
  }

  channel(id, info) {
    let c = this.channels.get(id);
    if (!c) {
      c = channelState(id, info);
      this.channels.set(id, c);
    }
    return c;
  }

  /** Takes a channel as the HTTP API shows it (`ChannelView`: the record plus `is_member`…). */
  putView(view) {
    const { is_member, last_seq, read_seq, unread, mentions, ...info } = view;
    const c = this.channel(info.id, info);
    c.info = info;
    if (is_member) {
      c.member = true;
      c.lastSeq = Math.max(c.lastSeq, last_seq);
      c.readSeq = Math.max(c.readSeq, read_seq);
      c.baseMentions = mentions;
      c.baseTop = last_seq;
      for (const seq of c.liveMentions) if (seq <= c.baseTop) c.liveMentions.delete(seq);
    }
    this.emit('channels');
    return c;
  }

  forget(c) {
    c.msgs.clear();
    c.replySeqs.clear();
    c.loaded = false;
    c.low = 1;
    c.high = 0;
    c.hasOlder = false;
    c.window = false;
  }

  // ---- messages ----

  /** Keeps a message (new, or a newer state of one held), moving the channel's head. */
  put(c, m) {
    c.msgs.set(m.seq, m);
    c.replySeqs.delete(m.seq);
    this.note(c, m);
    this.advance(c);
  }

  /** What a message says about its channel without being kept: its head, replies, mentions. */
  note(c, m) {
    c.lastSeq = Math.max(c.lastSeq, m.seq);
    if (m.latest_reply_seq) {
      c.lastSeq = Math.max(c.lastSeq, m.latest_reply_seq);
      if (!c.msgs.has(m.latest_reply_seq)) c.replySeqs.add(m.latest_reply_seq);
    }
    if (m.seq > c.baseTop) {
      if (this.mentionsSelf(m)) c.liveMentions.add(m.seq);
      else c.liveMentions.delete(m.seq);
    }
  }

  advance(c) {
    if (!c.loaded) return;
    while (c.msgs.has(c.high + 1) || c.replySeqs.has(c.high + 1)) c.high++;
  }

  /**
   * Takes a page of history (oldest first). `where`: `newest` (the first page of a channel),
   * `older` (scrolling back), `newer` (filling after `high`), `window` (around a message a search
   * found: what was held is dropped, as it may not join up with it).
   */
  putPage(c, messages, where, hasMore) {
    if (where === 'window') this.forget(c);
    const first = messages[0]?.seq;
    const last = messages.at(-1)?.seq;
    if (where === 'newest' || where === 'window') {
      c.loaded = true;
      if (messages.length) {
        c.low = first;
        c.high = last;
      } else {
        c.low = 1;
        c.high = where === 'newest' ? c.lastSeq : 0;
      }
      c.hasOlder = where === 'newest' ? hasMore : c.low > 1;
      // A window around a search hit need not reach the newest message.
      c.window = where === 'window';
    } else if (where === 'older') {
      if (messages.length) c.low = Math.min(c.low, first);
      c.hasOlder = hasMore && c.low > 1;
    }
    for (const m of messages) this.put(c, m);
    this.emit('messages', c.id);
    this.emit('channel', c.id);
  }

  /** Live `message`: returns whether the channel now has a hole to fill from history. */
  onMessage(m) {
    let c = this.channels.get(m.channel);
    if (!c) {
      // A conversation just joined whose record is still on its way (`joined`): the message
      // counts already; the sidebar shows the channel once its record arrives.
      c = this.channel(m.channel);
      c.member = true;
    }
    this.put(c, m);
    // Posting reads the channel (API.md "Read markers"), on every device of the author.
    if (m.user === this.self.id) c.readSeq = Math.max(c.readSeq, m.seq);
    const p = this.pending.get(m.client_msg_id);
    if (p && m.user === this.self.id && p.channel === m.channel) this.settle(p);
    this.emit('message', m);
    this.emit('channel', c.id);
    return this.hasGap(c);
  }

  /** A send was acknowledged: it is a message now, shown as sent even before its event. */
  acked(p, ack) {
    const c = this.channels.get(p.channel);
    if (c && !c.msgs.has(ack.seq)) {
      this.landed(p, {
        channel: p.channel, seq: ack.seq, ts: ack.ts, user: this.self.id, text: p.text,
        client_msg_id: p.cmid, ...(p.threadRoot ? { thread_root: p.threadRoot } : {}),
      });
    } else {
      this.settle(p);
    }
  }

  /** A send (or a file shared) became message `m`, as its answer says. */
  landed(p, m) {
    const c = this.channels.get(m.channel);
    this.settle(p);
    if (!c) return;
    this.put(c, m);
    c.readSeq = Math.max(c.readSeq, m.seq);
    this.emit('message', c.msgs.get(m.seq));
    this.emit('channel', c.id);
  }

  settle(p) {
    this.pending.delete(p.cmid);
    this.emit('pending', { ...p, state: 'settled' });
  }

  /** Applies an event frame other than `message`; returns the channel id it touched, if any. */
  apply(e) {
    const c = e.channel && typeof e.channel === 'string' ? this.channels.get(e.channel) : null;
    switch (e.type) {
      case 'message_changed': {
        if (!c) return;
        const m = { ...e.message, channel: e.channel, seq: e.seq };
        // A message not held and older than what is loaded (a reply to an old thread changed
        // its root) would show up out of place: only what it says about the channel counts.
        if (c.msgs.has(e.seq) || (c.loaded && e.seq > c.high)) {
          this.put(c, m);
          this.emit('message', m);
        } else {
          this.note(c, m);
          this.advance(c);
        }
        this.emit('channel', c.id);
        return;
      }
      case 'message_deleted': {
        const m = c?.msgs.get(e.seq);
        if (c) c.liveMentions.delete(e.seq);
        if (!m) return;
        const tomb = { ...m, deleted: true, text: '', reactions: [], files: [], mentions: [] };
        c.msgs.set(e.seq, tomb);
        this.emit('message', tomb);
        this.emit('channel', c.id);
        return;
      }
      case 'reaction_added':
      case 'reaction_removed': {
        const m = c?.msgs.get(e.seq);
        if (!m) return;
        const next = { ...m, reactions: applyReaction(m.reactions ?? [], e.user, e.emoji, e.type === 'reaction_added') };
        c.msgs.set(e.seq, next);
        this.emit('message', next);
        return;
      }
      case 'read_marker':
        if (!c || e.user !== this.self.id) return;
        c.readSeq = Math.max(c.readSeq, e.seq);
        this.emit('channel', c.id);
        return;
      case 'member_joined':
        if (e.user !== this.self.id) return;
        if (c?.info) {
          c.member = true;
          this.emit('channels');
        } else {
          this.emit('joined', e.channel); // the app reads its record
        }
        return;
      case 'member_left':
        if (e.user !== this.self.id || !c) return;
        c.member = false;
        this.emit('channels');
        this.emit('left', c.id);
        return;
      case 'channel_created':
      case 'channel_updated': {
        const known = this.channels.get(e.channel.id);
        if (known) {
          known.info = e.channel;
          this.emit('channels');
        }
        this.emit('directory');
        return;
      }
      case 'user_updated':
        this.users.set(e.user.id, e.user);
        if (e.user.id === this.self.id) this.self = e.user;
        this.emit('users');
        return;
      case 'typing':
        if (e.user !== this.self.id) this.emit('typing', e);
        return;
      case 'presence_change':
        this.presence.set(e.user, e.presence);
        this.emit('presence', e.user);
        return;
      case 'ephemeral_message':
        if (!c) return;
        c.ephemeral.push(e);
        this.emit('ephemeral', e);
        return;
      default:
        console.debug('selvage: event not shown', e.type);
    }
  }
}

/** The reactions of a message after `user` adds or takes back `emoji` (as `Message::apply_reaction`). */
export function applyReaction(reactions, user, emoji, add) {
  const out = reactions.map((r) => ({ ...r, users: [...r.users] }));
  const r = out.find((x) => x.emoji === emoji);
  if (add && r && !r.users.includes(user)) r.users.push(user);
  if (add && !r) out.push({ emoji, count: 1, users: [user] });
  if (!add && r) r.users = r.users.filter((u) => u !== user);
  for (const x of out) x.count = x.users.length;
  return out.filter((x) => x.count > 0);
}
