//! A workspace as an edge holds it: users, channels, memberships, read markers and the recent
//! events and messages of each channel, kept current by the origin's feed (ARCHITECTURE §3).
//!
//! [`WorkspaceState`] is pure, synchronous logic with no I/O: the edge wraps it in its caches,
//! locks and sessions elsewhere, and everything here can be tested alone.
//!
//! # Consistency with the cursor
//!
//! A state is built from a [`WorkspaceSnapshot`], which the origin reads in one transaction
//! together with the cursor of the newest feed event it reflects. From then on the state moves
//! only by [`WorkspaceState::apply`]ing feed items in log order; [`WorkspaceState::cursor`] is
//! the newest event reflected. Everything answered from the state — `hello`, queries, replays —
//! is therefore exactly "the workspace as of that cursor", and a session that starts from a boot
//! built here and then receives every event after its cursor never misses or doubles one. Items
//! at or before the cursor are ignored, so re-delivery after a feed reconnect is harmless.
//! Ephemeral events (typing, presence) are not log entries: they are routed but never move the
//! cursor, so they cannot make a later real event look stale.
//!
//! # Why buffers carry coverage markers
//!
//! The edge keeps only a bounded tail of events and messages. A bounded tail alone cannot tell
//! "nothing happened" from "it happened and was evicted", and answering a resume or a history
//! page from an incomplete tail would silently lose data. So every buffer states what it is
//! complete for:
//!
//! - an event buffer holds *every* event of its kind with a cursor after `covered_after`
//!   (initially the snapshot cursor; on eviction, the evicted entry's cursor);
//! - a message buffer holds *every* message with a `seq` after `covered_from_seq` (initially
//!   the channel's `last_seq` at snapshot time; on eviction, the evicted message's `seq`).
//!
//! [`WorkspaceState::replay_after`] answers only when every buffer that could hold an event the
//! user may see covers the client's cursor, and a `history` query is answered only when the
//! requested range is covered; otherwise the caller is told to go to the origin (or `resync`).
//!
//! Events are buffered by who may see them: channel events in their channel's buffer; events
//! without a channel (`user_updated`) in the workspace buffer; and the events a user sees
//! whatever the channel's visibility — their own read markers and their own `member_joined` /
//! `member_left` — in that user's personal buffer. The last kind matters because the origin
//! shows a user their own departure from a private channel they can no longer see; without a
//! personal buffer a replay would have to either miss it or consult every channel.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::mem::size_of;
use std::ops::Bound;

use selvage_shared::link::{ChannelState, WorkspaceSnapshot};
use selvage_shared::{
    Channel, ChannelBoot, ChannelId, Cursor, ErrorCode, Event, EventFrame, FeedItem, Message, Query, QueryKind,
    QueryResult, Seq, User, UserId, Workspace, WorkspaceId, MAX_QUERY_LIMIT, POSITION_LEN,
};

/// Default page size of `members`, `channels` and `users` queries.
pub const DEFAULT_PAGE_LIMIT: usize = 100;

/// Default page size of `history` queries.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// How much recent data a [`WorkspaceState`] keeps for replays and history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Events kept per channel for replays, and messages kept per channel for `history`.
    pub recent_events_per_channel: usize,
    /// Events without a channel (`user_updated`) kept for replays.
    pub recent_workspace_events: usize,
    /// A user's own read markers and membership changes kept for replays.
    pub recent_events_per_user: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { recent_events_per_channel: 256, recent_workspace_events: 1024, recent_events_per_user: 16 }
    }
}

/// Who among the workspace's connected users should get an event, read against the state
/// right after the event was applied. Naming the channel instead of listing its members keeps
/// the cost of an event in a large channel in the sessions it reaches, not in its membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipients {
    /// No client gets it (internal events, channels nobody is in).
    Nobody,
    /// One user (their own joins and departures in channels the edge does not know, their read
    /// markers).
    User(UserId),
    /// The channel's members.
    Members(ChannelId),
    /// The channel's members and one more user: the one who just left it.
    MembersAnd(ChannelId, UserId),
    /// Those of the channel's members who follow a thread: a reply goes to the root's author,
    /// everyone who replied, and whoever the reply mentions.
    Followers(ChannelId, Vec<UserId>),
    /// Every connected user of the workspace.
    Everyone,
}

/// What applying one feed item did, for fan-out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Who should get the event.
    pub recipients: Recipients,
}

/// How a query can be answered from the cache.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryAnswer {
    /// The answer, from the cache.
    Answer(QueryResult),
    /// The cache cannot answer completely (history older than the buffer, threads): ask the
    /// origin. Any visibility check has already passed.
    NeedsOrigin,
    /// The query is refused; send an `error` frame with this code.
    Refused {
        /// Stable error code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

/// The cache's part of a `hello`: the user, their channels and only the users those need.
#[derive(Clone, Debug, PartialEq)]
pub struct Boot {
    /// The connecting user.
    pub self_user: User,
    /// Every channel, DM and group DM the user is a member of, by channel id.
    pub channels: Vec<ChannelBoot>,
    /// The other members of the user's DMs and group DMs, by user id, each once.
    pub users: Vec<User>,
}

/// A workspace's state as an edge holds it, consistent with [`WorkspaceState::cursor`].
#[derive(Clone, Debug)]
pub struct WorkspaceState {
    workspace: Workspace,
    limits: CacheLimits,
    /// The cursor of the snapshot the state was built from.
    snapshot_cursor: Cursor,
    /// The newest event reflected.
    cursor: Cursor,
    /// Every user, by id (ordered: `users` queries page through it).
    users: BTreeMap<UserId, User>,
    channels: HashMap<ChannelId, ChannelEntry>,
    /// Channels visible to everyone (not private, not DMs), ordered for `channels` pages.
    public: BTreeSet<ChannelId>,
    /// Channels per user: the other direction of each channel's `members`.
    joined: HashMap<UserId, BTreeSet<ChannelId>>,
    /// Read markers: user → channel → last seq read.
    read_markers: HashMap<UserId, HashMap<ChannelId, Seq>>,
    /// Recent events without a channel.
    workspace_events: EventBuffer,
    /// Recent events each user sees whatever the channel: own read markers and memberships.
    personal: HashMap<UserId, EventBuffer>,
    /// Channels the feed mentioned before (or without) creating them; see [`Orphan`].
    orphans: HashMap<ChannelId, Orphan>,
    /// Unread mentions by name or `@here`: channel → user → seqs after the user's marker.
    mentions: HashMap<ChannelId, HashMap<UserId, BTreeSet<Seq>>>,
    /// `@channel` messages: channel → seq → author (each mentions every other member).
    channel_mentions: HashMap<ChannelId, BTreeMap<Seq, UserId>>,
    /// Approximate bytes held, maintained on every change.
    bytes: usize,
    /// Moves whenever any channel's members change (or a channel appears), so that what was
    /// worked out from members can tell it is stale.
    members_version: u64,
}

/// One channel: its record, head, members and recent events and messages.
#[derive(Clone, Debug)]
struct ChannelEntry {
    channel: Channel,
    last_seq: Seq,
    /// Ordered: `members` queries page through it by user id.
    members: BTreeSet<UserId>,
    events: EventBuffer,
    messages: MessageBuffer,
}

/// Events of a channel the state did not know when they arrived (never in log order, but the
/// state must stay exact even then): a later creation of that channel must not claim coverage
/// of what was dropped.
#[derive(Clone, Debug)]
struct Orphan {
    /// The newest dropped event.
    cursor: Cursor,
    /// The highest message seq dropped.
    max_seq: Seq,
}

/// A bounded tail of events in cursor order, complete after `covered_after`.
#[derive(Clone, Debug)]
struct EventBuffer {
    entries: VecDeque<(Cursor, Event)>,
    /// Every event of this buffer's kind with a cursor after this one is in `entries`.
    covered_after: Cursor,
}

/// A bounded tail of a channel's messages in seq order, complete after `covered_from_seq`:
/// `messages[i].seq == covered_from_seq + 1 + i`.
#[derive(Clone, Debug)]
struct MessageBuffer {
    messages: VecDeque<Message>,
    covered_from_seq: Seq,
}

/// Bytes added and removed by one change, for the weight estimate.
#[derive(Clone, Copy, Debug, Default)]
struct Delta {
    added: usize,
    removed: usize,
}

impl Delta {
    fn add(&mut self, n: usize) {
        self.added += n;
    }

    fn sub(&mut self, n: usize) {
        self.removed += n;
    }

    fn apply_to(self, bytes: &mut usize) {
        *bytes = bytes.saturating_add(self.added).saturating_sub(self.removed);
    }
}

impl EventBuffer {
    fn new(covered_after: Cursor) -> Self {
        EventBuffer { entries: VecDeque::new(), covered_after }
    }

    /// Appends an event (cursors only grow: `apply` checks) and evicts beyond `cap`.
    fn push(&mut self, cursor: Cursor, event: Event, cap: usize) -> Delta {
        let mut delta = Delta::default();
        delta.add(event_entry_bytes(&event));
        self.entries.push_back((cursor, event));
        while self.entries.len() > cap {
            match self.entries.pop_front() {
                Some((cursor, event)) => {
                    delta.sub(event_entry_bytes(&event));
                    self.covered_after = cursor;
                }
                None => break,
            }
        }
        delta
    }

    /// Whether the buffer holds every event of its kind after `after`.
    fn covers(&self, after: &Cursor) -> bool {
        self.covered_after <= *after
    }

    /// The buffered events after `after`, oldest first.
    fn after<'a>(&'a self, after: &Cursor) -> impl Iterator<Item = &'a (Cursor, Event)> + 'a {
        let start = self.entries.partition_point(|(c, _)| c <= after);
        self.entries.range(start..)
    }
}

impl MessageBuffer {
    fn new(covered_from_seq: Seq) -> Self {
        MessageBuffer { messages: VecDeque::new(), covered_from_seq }
    }

    /// The seq the next message must have to extend the buffer.
    fn next_seq(&self) -> Seq {
        self.covered_from_seq.saturating_add(self.messages.len() as u64).saturating_add(1)
    }

    fn index(&self, seq: Seq) -> Option<usize> {
        let offset = seq.checked_sub(self.covered_from_seq)?.checked_sub(1)?;
        usize::try_from(offset).ok().filter(|&i| i < self.messages.len())
    }

    fn get_mut(&mut self, seq: Seq) -> Option<&mut Message> {
        let i = self.index(seq)?;
        self.messages.get_mut(i)
    }

    /// Adds a new message, or replaces a buffered copy of the same seq.
    fn insert(&mut self, message: Message, cap: usize) -> Delta {
        let mut delta = Delta::default();
        let next = self.next_seq();
        if message.seq < next {
            if let Some(slot) = self.get_mut(message.seq) {
                delta.sub(message_entry_bytes(slot));
                delta.add(message_entry_bytes(&message));
                *slot = message;
            }
            return delta;
        }
        if message.seq > next {
            // A gap (never in log order): what the buffer holds no longer reaches the newest
            // message, so it restarts just below this one.
            for old in self.messages.drain(..) {
                delta.sub(message_entry_bytes(&old));
            }
            self.covered_from_seq = message.seq - 1;
        }
        delta.add(message_entry_bytes(&message));
        self.messages.push_back(message);
        while self.messages.len() > cap {
            match self.messages.pop_front() {
                Some(old) => {
                    delta.sub(message_entry_bytes(&old));
                    self.covered_from_seq = old.seq;
                }
                None => break,
            }
        }
        delta
    }

    /// Messages `first..=last`, if all of them are buffered.
    fn range(&self, first: Seq, last: Seq) -> Option<Vec<Message>> {
        let (i, j) = (self.index(first)?, self.index(last)?);
        Some(self.messages.range(i..=j).cloned().collect())
    }
}

impl ChannelEntry {
    fn new(channel: Channel, last_seq: Seq, covered_after: Cursor) -> Self {
        ChannelEntry {
            channel,
            last_seq,
            members: BTreeSet::new(),
            events: EventBuffer::new(covered_after),
            messages: MessageBuffer::new(last_seq),
        }
    }

    /// Who gets a message event: everyone in the channel, or for a reply the followers its
    /// thread had when it was posted (and whoever it mentions).
    fn message_recipients(&self, message: &Message) -> Recipients {
        match reply_audience(message) {
            Some(audience) => Recipients::Followers(self.channel.id.clone(), audience),
            None => self.recipients(),
        }
    }

    fn recipients(&self) -> Recipients {
        if self.members.is_empty() {
            Recipients::Nobody
        } else {
            Recipients::Members(self.channel.id.clone())
        }
    }
}

/// Who a thread reply reaches — the followers it names (the origin writes the thread's
/// followers at the time into each reply) and whoever it mentions — or `None` for a message
/// that goes to the whole channel (not a reply, or a reply written before followers were kept).
/// The reply alone decides, so live fan-out and resume agree whatever happened since.
fn reply_audience(message: &Message) -> Option<Vec<UserId>> {
    if message.thread_root.is_none() || message.thread_followers.is_empty() {
        return None;
    }
    let mut audience = message.thread_followers.clone();
    audience.extend(message.mentions.iter().filter(|u| !message.thread_followers.contains(u)).cloned());
    Some(audience)
}

/// Whether only members may see the channel: private channels and every DM and group DM.
/// (The origin creates DMs private; treating them as private regardless is the safe reading.)
fn restricted(channel: &Channel) -> bool {
    channel.private || channel.is_conversation()
}

/// Walking the feed backwards: before `user`'s own join they were not a member, before their
/// departure they were.
fn roll_back_membership<'a>(member: &mut HashMap<&'a ChannelId, bool>, user: &UserId, event: &'a Event) {
    match event {
        Event::MemberJoined { channel, user: subject } if subject == user => {
            member.insert(channel, false);
        }
        Event::MemberLeft { channel, user: subject } if subject == user => {
            member.insert(channel, true);
        }
        _ => {}
    }
}

/// An empty channel set, for users who joined nothing.
static NO_CHANNELS: BTreeSet<ChannelId> = BTreeSet::new();

impl WorkspaceState {
    /// Builds the state from a consistent snapshot; it reflects every event up to the
    /// snapshot's cursor.
    pub fn from_snapshot(snapshot: WorkspaceSnapshot, limits: CacheLimits) -> Self {
        let WorkspaceSnapshot { workspace, cursor, users, channels, read_markers, mentions, channel_mentions } =
            snapshot;
        let mut state = WorkspaceState {
            workspace,
            limits,
            snapshot_cursor: cursor.clone(),
            cursor: cursor.clone(),
            users: BTreeMap::new(),
            channels: HashMap::with_capacity(channels.len()),
            public: BTreeSet::new(),
            joined: HashMap::new(),
            read_markers: HashMap::new(),
            workspace_events: EventBuffer::new(cursor),
            personal: HashMap::new(),
            orphans: HashMap::new(),
            mentions: HashMap::new(),
            channel_mentions: HashMap::new(),
            bytes: 0,
            members_version: 0,
        };
        state.bytes = base_bytes(&state.workspace);
        for m in mentions {
            state.mentions.entry(m.channel).or_default().entry(m.user).or_default().extend(m.seqs);
        }
        for (channel, seq, author) in channel_mentions {
            state.channel_mentions.entry(channel).or_default().insert(seq, author);
        }
        for user in users {
            state.put_user(user);
        }
        // Memberships are the bulk of a large snapshot: build each set in one go (sorted bulk
        // construction) rather than pair by pair.
        let mut joined: HashMap<UserId, Vec<ChannelId>> = HashMap::new();
        for ChannelState { channel, last_seq, members } in channels {
            let id = channel.id.clone();
            state.put_channel(channel, last_seq);
            let Some(entry) = state.channels.get_mut(&id) else { continue };
            let mut members: BTreeSet<UserId> = members.into_iter().collect();
            for member in &members {
                match joined.get_mut(member) {
                    Some(channels) => channels.push(id.clone()),
                    None => {
                        joined.insert(member.clone(), vec![id.clone()]);
                    }
                }
            }
            entry.members.append(&mut members);
        }
        let mut delta = Delta::default();
        for entry in state.channels.values() {
            let channel = set_slot_bytes(entry.channel.id.as_str());
            delta.add(entry.members.iter().map(|m| set_slot_bytes(m.as_str()) + channel).sum());
        }
        for (user, channels) in joined {
            delta.add(joined_entry_bytes(&user));
            state.joined.insert(user, channels.into_iter().collect());
        }
        delta.apply_to(&mut state.bytes);
        for marker in read_markers {
            state.move_read_marker(marker.user, marker.channel, marker.seq);
        }
        state
    }

    /// The workspace's id.
    pub fn id(&self) -> &WorkspaceId {
        &self.workspace.id
    }

    /// The workspace record.
    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    /// The newest event the state reflects: the snapshot's cursor, then each applied event's.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// The cursor of the snapshot the state was built from; replays cannot start before it.
    pub fn snapshot_cursor(&self) -> &Cursor {
        &self.snapshot_cursor
    }

    /// The limits the state was built with.
    pub fn limits(&self) -> &CacheLimits {
        &self.limits
    }

    /// Applies one feed item and says who should get its event.
    ///
    /// Recipients: events of a channel go to its members — for `member_joined` those after the
    /// join (the joiner included), for `member_left` those before it (the leaver included);
    /// `channel_created`/`channel_updated` of a public channel to everyone, of a private channel
    /// or DM to its members (a new channel has none yet: they follow as `member_joined`);
    /// `user_updated` to everyone; `read_marker` to its user; internal events to nobody.
    /// Events of a channel the state does not know go to nobody (their own joins and departures
    /// to that user).
    ///
    /// `None`, with nothing changed, when the item is for another workspace or at or before
    /// [`cursor`](Self::cursor) (already reflected). Ephemeral events (typing, presence) are
    /// never logged: they are routed (typing to the channel's members, presence to nobody here —
    /// presence subscriptions live with the sessions) but neither buffered nor checked against
    /// nor advancing the cursor.
    pub fn apply(&mut self, item: &FeedItem) -> Option<Applied> {
        if item.workspace != self.workspace.id {
            return None;
        }
        if item.event.is_ephemeral() {
            let recipients = match &item.event {
                Event::Typing { channel, .. } => {
                    self.channels.get(channel).map_or(Recipients::Nobody, ChannelEntry::recipients)
                }
                _ => Recipients::Nobody,
            };
            return Some(Applied { recipients });
        }
        if item.cursor <= self.cursor {
            return None;
        }
        let recipients = self.apply_event(&item.cursor, &item.event);
        self.cursor = item.cursor.clone();
        Some(Applied { recipients })
    }

    fn apply_event(&mut self, cursor: &Cursor, event: &Event) -> Recipients {
        let per_channel = self.limits.recent_events_per_channel;
        match event {
            Event::Message(message) => {
                let Some(entry) = self.channels.get_mut(&message.channel) else {
                    self.orphan(&message.channel, cursor, message.seq);
                    return Recipients::Nobody;
                };
                entry.last_seq = entry.last_seq.max(message.seq);
                entry.messages.insert(message.clone(), per_channel).apply_to(&mut self.bytes);
                entry.events.push(cursor.clone(), event.clone(), per_channel).apply_to(&mut self.bytes);
                let recipients = entry.message_recipients(message);
                self.note_mentions(message);
                // Posting reads the channel up to one's own message, as the origin records it.
                self.move_read_marker(message.user.clone(), message.channel.clone(), message.seq);
                recipients
            }
            Event::MessageChanged { channel, seq, .. }
            | Event::MessageDeleted { channel, seq }
            | Event::ReactionAdded { channel, seq, .. }
            | Event::ReactionRemoved { channel, seq, .. } => {
                let Some(entry) = self.channels.get_mut(channel) else {
                    self.orphan(channel, cursor, 0);
                    return Recipients::Nobody;
                };
                let mut delta = Delta::default();
                match event {
                    Event::MessageChanged { message, .. } => {
                        if let Some(slot) = entry.messages.get_mut(*seq) {
                            delta.sub(message_entry_bytes(slot));
                            // The event's message is the new state; keep the buffer's seq
                            // authoritative so its indexing cannot drift.
                            *slot = Message { seq: *seq, channel: channel.clone(), ..message.clone() };
                            delta.add(message_entry_bytes(slot));
                        }
                    }
                    Event::MessageDeleted { .. } => {
                        if let Some(slot) = entry.messages.get_mut(*seq) {
                            delta.sub(message_entry_bytes(slot));
                            slot.make_tombstone();
                            delta.add(message_entry_bytes(slot));
                        }
                    }
                    Event::ReactionAdded { user, emoji, .. } | Event::ReactionRemoved { user, emoji, .. } => {
                        if let Some(slot) = entry.messages.get_mut(*seq) {
                            delta.sub(message_entry_bytes(slot));
                            slot.apply_reaction(user, emoji, matches!(event, Event::ReactionAdded { .. }));
                            delta.add(message_entry_bytes(slot));
                        }
                    }
                    _ => {}
                }
                delta.apply_to(&mut self.bytes);
                entry.events.push(cursor.clone(), event.clone(), per_channel).apply_to(&mut self.bytes);
                let recipients = entry.recipients();
                match event {
                    Event::MessageChanged { message, .. } => {
                        self.forget_mentions(channel, *seq);
                        self.note_mentions(message);
                    }
                    Event::MessageDeleted { .. } => self.forget_mentions(channel, *seq),
                    _ => {}
                }
                recipients
            }
            Event::MemberJoined { channel, user } => {
                self.push_personal(user, cursor, event);
                if !self.channels.contains_key(channel) {
                    self.orphan(channel, cursor, 0);
                    return Recipients::User(user.clone());
                }
                self.add_member(channel, user.clone());
                let Some(entry) = self.channels.get_mut(channel) else { return Recipients::Nobody };
                entry.events.push(cursor.clone(), event.clone(), per_channel).apply_to(&mut self.bytes);
                entry.recipients()
            }
            Event::MemberLeft { channel, user } => {
                self.push_personal(user, cursor, event);
                let Some(entry) = self.channels.get_mut(channel) else {
                    self.orphan(channel, cursor, 0);
                    return Recipients::User(user.clone());
                };
                entry.events.push(cursor.clone(), event.clone(), per_channel).apply_to(&mut self.bytes);
                self.remove_member(channel, user);
                Recipients::MembersAnd(channel.clone(), user.clone())
            }
            Event::ChannelCreated { channel } | Event::ChannelUpdated { channel } => {
                self.put_channel(channel.clone(), 0);
                let Some(entry) = self.channels.get_mut(&channel.id) else { return Recipients::Nobody };
                entry.events.push(cursor.clone(), event.clone(), per_channel).apply_to(&mut self.bytes);
                if restricted(channel) {
                    entry.recipients()
                } else {
                    // For everyone: kept where every replay looks.
                    let cap = self.limits.recent_workspace_events;
                    self.workspace_events.push(cursor.clone(), event.clone(), cap).apply_to(&mut self.bytes);
                    Recipients::Everyone
                }
            }
            Event::UserUpdated { user } => {
                self.put_user(user.clone());
                let cap = self.limits.recent_workspace_events;
                self.workspace_events.push(cursor.clone(), event.clone(), cap).apply_to(&mut self.bytes);
                Recipients::Everyone
            }
            Event::ReadMarker { channel, user, seq } => {
                self.move_read_marker(user.clone(), channel.clone(), *seq);
                self.push_personal(user, cursor, event);
                Recipients::User(user.clone())
            }
            // Internal: the edge's token cache handles revocations; nothing to keep here.
            Event::TokenRevoked { .. } => Recipients::Nobody,
            // Ephemeral events are routed by `apply` before this point.
            Event::Typing { .. } | Event::PresenceChange { .. } => Recipients::Nobody,
        }
    }

    /// Inserts or replaces a user.
    fn put_user(&mut self, user: User) {
        let mut delta = Delta::default();
        delta.add(user_entry_bytes(&user));
        if let Some(old) = self.users.insert(user.id.clone(), user) {
            delta.sub(user_entry_bytes(&old));
        }
        delta.apply_to(&mut self.bytes);
    }

    /// Inserts a channel (with `last_seq`) or replaces an existing channel's record.
    fn put_channel(&mut self, channel: Channel, last_seq: Seq) {
        let mut delta = Delta::default();
        let id = channel.id.clone();
        let public = !restricted(&channel);
        match self.channels.get_mut(&id) {
            Some(entry) => {
                delta.sub(channel_heap(&entry.channel));
                delta.add(channel_heap(&channel));
                entry.channel = channel;
            }
            None => {
                // A channel the snapshot did not have was created after it, so all its events
                // come after the snapshot cursor and have been buffered — unless the feed
                // mentioned it before creating it, and those events were dropped.
                let mut covered_after = self.snapshot_cursor.clone();
                let mut last_seq = last_seq;
                if let Some(orphan) = self.orphans.remove(&id) {
                    delta.sub(orphan_entry_bytes(&id));
                    covered_after = covered_after.max(orphan.cursor);
                    last_seq = last_seq.max(orphan.max_seq);
                }
                delta.add(channel_entry_bytes(&channel));
                self.channels.insert(id.clone(), ChannelEntry::new(channel, last_seq, covered_after));
                self.members_version += 1;
            }
        }
        if public {
            let slot = set_slot_bytes(id.as_str());
            if self.public.insert(id) {
                delta.add(slot);
            }
        } else if let Some(removed) = self.public.take(&id) {
            delta.sub(set_slot_bytes(removed.as_str()));
        }
        delta.apply_to(&mut self.bytes);
    }

    /// Records that an event of an unknown channel was dropped.
    fn orphan(&mut self, channel: &ChannelId, cursor: &Cursor, seq: Seq) {
        match self.orphans.get_mut(channel) {
            Some(orphan) => {
                orphan.cursor = cursor.clone();
                orphan.max_seq = orphan.max_seq.max(seq);
            }
            None => {
                self.bytes = self.bytes.saturating_add(orphan_entry_bytes(channel));
                self.orphans.insert(channel.clone(), Orphan { cursor: cursor.clone(), max_seq: seq });
            }
        }
    }

    /// Adds a member to a known channel, in both indexes.
    fn add_member(&mut self, channel: &ChannelId, user: UserId) {
        let Some(entry) = self.channels.get_mut(channel) else { return };
        if entry.members.contains(&user) {
            return;
        }
        let mut delta = Delta::default();
        delta.add(set_slot_bytes(user.as_str()) + set_slot_bytes(channel.as_str()));
        let joined = match self.joined.get_mut(&user) {
            Some(joined) => joined,
            None => {
                delta.add(joined_entry_bytes(&user));
                self.joined.entry(user.clone()).or_default()
            }
        };
        joined.insert(channel.clone());
        entry.members.insert(user);
        self.members_version += 1;
        delta.apply_to(&mut self.bytes);
    }

    /// Removes a member from a channel, in both indexes.
    fn remove_member(&mut self, channel: &ChannelId, user: &UserId) {
        let Some(entry) = self.channels.get_mut(channel) else { return };
        if entry.members.remove(user) {
            self.bytes = self.bytes.saturating_sub(set_slot_bytes(user.as_str()) + set_slot_bytes(channel.as_str()));
            self.members_version += 1;
        }
        if let Some(joined) = self.joined.get_mut(user) {
            joined.remove(channel);
        }
    }

    /// Moves a read marker forward (never back).
    fn move_read_marker(&mut self, user: UserId, channel: ChannelId, seq: Seq) {
        if let Some(seqs) = self.mentions.get_mut(&channel).and_then(|users| users.get_mut(&user)) {
            seqs.retain(|s| *s > seq);
        }
        let mut delta = Delta::default();
        let markers = match self.read_markers.get_mut(&user) {
            Some(markers) => markers,
            None => {
                delta.add(markers_entry_bytes(&user));
                self.read_markers.entry(user).or_default()
            }
        };
        match markers.get_mut(&channel) {
            Some(current) => *current = (*current).max(seq),
            None => {
                delta.add(marker_bytes(&channel));
                markers.insert(channel, seq);
            }
        }
        delta.apply_to(&mut self.bytes);
    }

    /// Records whom a message mentions (by name or `@here`: those users, after their read
    /// marker; `@channel`: the channel).
    fn note_mentions(&mut self, message: &Message) {
        if message.deleted {
            return;
        }
        let c = &message.channel;
        for u in message.mentions.iter().chain(&message.mentions_here_users) {
            if *u != message.user && message.seq > self.read_seq(u, c) {
                self.mentions.entry(c.clone()).or_default().entry(u.clone()).or_default().insert(message.seq);
            }
        }
        if message.mentions_channel {
            self.channel_mentions.entry(c.clone()).or_default().insert(message.seq, message.user.clone());
        }
    }

    /// Forgets the mentions of message `seq` (deleted, or about to be re-noted after an edit).
    fn forget_mentions(&mut self, channel: &ChannelId, seq: Seq) {
        if let Some(users) = self.mentions.get_mut(channel) {
            for seqs in users.values_mut() {
                seqs.remove(&seq);
            }
        }
        if let Some(seqs) = self.channel_mentions.get_mut(channel) {
            seqs.remove(&seq);
        }
    }

    /// Unread messages of `channel` that mention `user` (by name, `@here` or `@channel`).
    pub fn mention_count(&self, user: &UserId, channel: &ChannelId) -> u64 {
        let read = self.read_seq(user, channel);
        let direct = self.mentions.get(channel).and_then(|users| users.get(user));
        let mut count = direct.map_or(0, |seqs| seqs.range(read + 1..).count()) as u64;
        if let Some(wide) = self.channel_mentions.get(channel) {
            count += wide
                .range(read + 1..)
                .filter(|(seq, author)| *author != user && direct.is_none_or(|d| !d.contains(seq)))
                .count() as u64;
        }
        count
    }

    /// Buffers an event in `user`'s personal buffer.
    fn push_personal(&mut self, user: &UserId, cursor: &Cursor, event: &Event) {
        let cap = self.limits.recent_events_per_user;
        let mut delta = Delta::default();
        let buffer = match self.personal.get_mut(user) {
            Some(buffer) => buffer,
            None => {
                delta.add(personal_entry_bytes(user));
                // Every personal event after the snapshot has been applied, and this is the
                // user's first: the new buffer is complete from the snapshot on.
                let snapshot = self.snapshot_cursor.clone();
                self.personal.entry(user.clone()).or_insert_with(|| EventBuffer::new(snapshot))
            }
        };
        let pushed = buffer.push(cursor.clone(), event.clone(), cap);
        delta.add(pushed.added);
        delta.sub(pushed.removed);
        delta.apply_to(&mut self.bytes);
    }

    /// A user, deactivated or not.
    pub fn user(&self, id: &UserId) -> Option<&User> {
        self.users.get(id)
    }

    /// Whether `user` is a member of `channel`.
    pub fn is_member(&self, channel: &ChannelId, user: &UserId) -> bool {
        self.channels.get(channel).is_some_and(|entry| entry.members.contains(user))
    }

    /// A channel's record, whoever may see it.
    pub fn channel(&self, id: &ChannelId) -> Option<&Channel> {
        self.channels.get(id).map(|entry| &entry.channel)
    }

    /// A channel's last assigned seq.
    pub fn last_seq(&self, id: &ChannelId) -> Option<Seq> {
        self.channels.get(id).map(|entry| entry.last_seq)
    }

    /// A channel's members, ordered by user id.
    pub fn members(&self, channel: &ChannelId) -> Option<&BTreeSet<UserId>> {
        self.channels.get(channel).map(|entry| &entry.members)
    }

    /// A number that changes whenever any channel's members change: what was worked out from
    /// [`WorkspaceState::members`] under one value still holds while it stays the same.
    pub fn members_version(&self) -> u64 {
        self.members_version
    }

    /// The channels a user is a member of, ordered by channel id.
    pub fn channels_of(&self, user: &UserId) -> &BTreeSet<ChannelId> {
        self.joined.get(user).unwrap_or(&NO_CHANNELS)
    }

    /// A user's read marker in a channel (0 when they have read nothing).
    pub fn read_seq(&self, user: &UserId, channel: &ChannelId) -> Seq {
        self.read_markers.get(user).and_then(|markers| markers.get(channel)).copied().unwrap_or(0)
    }

    /// Whether `user` may see `channel`: it exists and is public, or they are a member.
    /// Anything else must look exactly like a channel that does not exist.
    pub fn can_see_channel(&self, user: &UserId, channel: &ChannelId) -> bool {
        self.channels.get(channel).is_some_and(|entry| !restricted(&entry.channel) || entry.members.contains(user))
    }

    /// Which of `events` — consecutive feed events in cursor order, the last at or before
    /// `upto` — live fan-out sent (or would have sent) to `user`: the rule of
    /// [`apply`](Self::apply), with each channel's membership *as it was* at each event.
    ///
    /// Membership at an event is found by walking back from `upto`: the user's membership now,
    /// rolled back to `upto` through their own joins and departures since (from their personal
    /// buffer), then, going back through `events`, the opposite of what each of their own joins
    /// and departures made it (the origin never logs a join of a member or a departure of a
    /// non-member). Resume thus replays exactly what a session that never left would have got.
    pub fn delivered_to(&self, user: &UserId, events: &[&Event], upto: &Cursor) -> Vec<bool> {
        let mut member: HashMap<&ChannelId, bool> = HashMap::new();
        if *upto < self.cursor {
            if let Some(buffer) = self.personal.get(user).filter(|buffer| buffer.covers(upto)) {
                let since: Vec<&(Cursor, Event)> = buffer.after(upto).collect();
                for (_, event) in since.into_iter().rev() {
                    roll_back_membership(&mut member, user, event);
                }
            }
        }
        let mut out = vec![false; events.len()];
        for (i, event) in events.iter().enumerate().rev() {
            out[i] = match event {
                event if event.is_internal() || event.is_ephemeral() => false,
                Event::ReadMarker { user: owner, .. } => owner == user,
                Event::MemberJoined { user: subject, .. } | Event::MemberLeft { user: subject, .. }
                    if subject == user =>
                {
                    true
                }
                Event::UserUpdated { .. } => true,
                Event::ChannelCreated { channel } | Event::ChannelUpdated { channel } if !restricted(channel) => true,
                Event::Message(message) => {
                    let is_member =
                        *member.entry(&message.channel).or_insert_with(|| self.is_member(&message.channel, user));
                    is_member && reply_audience(message).is_none_or(|audience| audience.contains(user))
                }
                event => match event.channel() {
                    None => true,
                    Some(channel) => *member.entry(channel).or_insert_with(|| self.is_member(channel, user)),
                },
            };
            roll_back_membership(&mut member, user, event);
        }
        out
    }

    /// Whether `user` is among `recipients` (of the event applied last).
    pub fn receives(&self, recipients: &Recipients, user: &UserId) -> bool {
        match recipients {
            Recipients::Nobody => false,
            Recipients::User(u) => u == user,
            Recipients::Members(channel) => self.is_member(channel, user),
            Recipients::MembersAnd(channel, extra) => extra == user || self.is_member(channel, user),
            Recipients::Followers(channel, followers) => followers.contains(user) && self.is_member(channel, user),
            Recipients::Everyone => true,
        }
    }

    /// The boot payload for `user`, or `None` if they are unknown or deactivated.
    pub fn boot(&self, user: &UserId) -> Option<Boot> {
        let self_user = self.users.get(user).filter(|u| !u.deactivated)?;
        let joined = self.channels_of(user);
        let mut channels = Vec::with_capacity(joined.len());
        let mut needed: Vec<&UserId> = Vec::new();
        for id in joined {
            let Some(entry) = self.channels.get(id) else { continue };
            channels.push(self.channel_boot(user, entry, true));
            if entry.channel.is_conversation() {
                needed.extend(entry.members.iter().filter(|m| *m != user));
            }
        }
        needed.sort_unstable();
        needed.dedup();
        let users = needed.into_iter().filter_map(|id| self.users.get(id).cloned()).collect();
        Some(Boot { self_user: self_user.clone(), channels, users })
    }

    /// A channel as `user` sees it in `hello` or a `channels` page. Unread counts only mean
    /// something in channels the user follows, so a public channel they are not in shows none.
    fn channel_boot(&self, user: &UserId, entry: &ChannelEntry, member: bool) -> ChannelBoot {
        let read_seq = self.read_seq(user, &entry.channel.id);
        let unread = if member { entry.last_seq.saturating_sub(read_seq) } else { 0 };
        let mentions = if member { self.mention_count(user, &entry.channel.id) } else { 0 };
        ChannelBoot { channel: entry.channel.clone(), last_seq: entry.last_seq, read_seq, unread, mentions }
    }

    /// The channels `user` may see with an id after `after`, in id order: their own channels
    /// merged with the public ones.
    fn visible_channel_ids<'a>(
        &'a self,
        user: &UserId,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = &'a ChannelId> + 'a {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mine = self.channels_of(user).range::<str, _>((from, Bound::Unbounded));
        let public = self.public.range::<str, _>((from, Bound::Unbounded));
        merge_sorted(mine, public)
    }

    /// Answers a client `query` for `user` from the cache, or says it cannot.
    pub fn query(&self, user: &UserId, q: &Query) -> QueryAnswer {
        let answer = if self.users.get(user).is_none_or(|u| u.deactivated) {
            Err(Refusal::new(ErrorCode::Unauthorized, "the user is unknown or deactivated"))
        } else {
            match q.q {
                QueryKind::Users => self.query_users(q),
                QueryKind::Members => self.query_members(user, q),
                QueryKind::Channels => self.query_channels(user, q),
                QueryKind::History => self.query_history(user, q),
                QueryKind::Thread => self.query_thread(user, q),
            }
        };
        answer.unwrap_or_else(|Refusal { code, message }| QueryAnswer::Refused { code, message })
    }

    /// The query's channel, if it names one the user may see.
    fn visible_entry(&self, user: &UserId, q: &Query) -> Result<&ChannelEntry, Refusal> {
        let Some(id) = &q.channel else {
            return Err(Refusal::new(ErrorCode::BadRequest, "this query needs a channel"));
        };
        match self.channels.get(id) {
            Some(entry) if self.can_see_channel(user, id) => Ok(entry),
            // Private channels answer exactly like missing ones.
            _ => Err(Refusal::new(ErrorCode::NotFound, format!("channel {id} not found"))),
        }
    }

    /// `users`: the named users that exist, in the order asked (each once); without names, a
    /// page of the workspace's users by id.
    fn query_users(&self, q: &Query) -> Result<QueryAnswer, Refusal> {
        let mut result = empty_result(q);
        if q.users.is_empty() {
            let limit = page_limit(q.limit, DEFAULT_PAGE_LIMIT)?;
            let after = page_after(q, UserId::parse)?;
            let from = after.as_ref().map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_str()));
            let (page, next) = paginate(self.users.range::<str, _>((from, Bound::Unbounded)).map(|(_, u)| u), limit);
            result.next = next.map(|u| u.id.to_string());
            result.users = page.into_iter().cloned().collect();
        } else {
            let mut seen = BTreeSet::new();
            result.users = q
                .users
                .iter()
                .take(MAX_QUERY_LIMIT)
                .filter(|id| seen.insert(*id))
                .filter_map(|id| self.users.get(id).cloned())
                .collect();
        }
        Ok(QueryAnswer::Answer(result))
    }

    /// `members`: a page of a visible channel's members by user id.
    fn query_members(&self, user: &UserId, q: &Query) -> Result<QueryAnswer, Refusal> {
        let entry = self.visible_entry(user, q)?;
        let limit = page_limit(q.limit, DEFAULT_PAGE_LIMIT)?;
        let after = page_after(q, UserId::parse)?;
        let from = after.as_ref().map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_str()));
        let (page, next) = paginate(entry.members.range::<str, _>((from, Bound::Unbounded)), limit);
        let mut result = empty_result(q);
        result.next = next.map(UserId::to_string);
        result.members = page.into_iter().cloned().collect();
        Ok(QueryAnswer::Answer(result))
    }

    /// `channels`: a page, by channel id, of every channel the user may see — their own
    /// channels and every public one (archived included).
    fn query_channels(&self, user: &UserId, q: &Query) -> Result<QueryAnswer, Refusal> {
        let limit = page_limit(q.limit, DEFAULT_PAGE_LIMIT)?;
        let after = page_after(q, ChannelId::parse)?;
        let ids = self.visible_channel_ids(user, after.as_ref().map(ChannelId::as_str));
        let (page, next) = paginate(ids.filter_map(|id| self.channels.get(id)), limit);
        let mut result = empty_result(q);
        result.next = next.map(|entry| entry.channel.id.to_string());
        result.channels =
            page.into_iter().map(|entry| self.channel_boot(user, entry, entry.members.contains(user))).collect();
        Ok(QueryAnswer::Answer(result))
    }

    /// `history`, with the origin's paging: seqs in (`after`, `before`); with `after`, the
    /// oldest `limit` of them, otherwise the newest; oldest first. Answered only when the
    /// message buffer holds the whole page. `next` is set when more messages lie beyond the page
    /// in the direction read, to the seq to continue from (the page's first seq as `before`
    /// when reading back, its last seq as `after` when reading forward).
    fn query_history(&self, user: &UserId, q: &Query) -> Result<QueryAnswer, Refusal> {
        let entry = self.visible_entry(user, q)?;
        let limit = page_limit(q.limit, DEFAULT_HISTORY_LIMIT)? as u64;
        let mut result = empty_result(q);
        // Seqs are 1..=last_seq with no gaps (deleted messages keep theirs).
        let below = q.after.unwrap_or(0);
        let top = q.before.map_or(entry.last_seq, |before| before.saturating_sub(1).min(entry.last_seq));
        if top <= below {
            return Ok(QueryAnswer::Answer(result));
        }
        let (first, last, more, forward) = if q.after.is_some() {
            let last = top.min(below.saturating_add(limit));
            (below + 1, last, last < top, true)
        } else {
            let first = (below + 1).max(top.saturating_sub(limit - 1));
            (first, top, first > below + 1, false)
        };
        if first <= entry.messages.covered_from_seq {
            return Ok(QueryAnswer::NeedsOrigin);
        }
        let Some(messages) = entry.messages.range(first, last) else { return Ok(QueryAnswer::NeedsOrigin) };
        result.messages = messages;
        if more {
            result.next = Some(if forward { last } else { first }.to_string());
        }
        Ok(QueryAnswer::Answer(result))
    }

    /// `thread`: the cache keeps no thread index, so the origin answers once the channel is
    /// known to be visible and the query is well formed.
    fn query_thread(&self, user: &UserId, q: &Query) -> Result<QueryAnswer, Refusal> {
        self.visible_entry(user, q)?;
        page_limit(q.limit, DEFAULT_HISTORY_LIMIT)?;
        match q.root {
            None | Some(0) => Err(Refusal::new(ErrorCode::BadRequest, "a thread query needs a root seq (1 or more)")),
            Some(_) => Ok(QueryAnswer::NeedsOrigin),
        }
    }

    /// The events after `after` that live fan-out sent `user` (see
    /// [`delivered_to`](Self::delivered_to)), in cursor order, if the buffers hold them all;
    /// `None` when they do not (older than the snapshot, or evicted): the caller asks the origin
    /// or tells the client to `resync`. Empty when `after` is at or past
    /// [`cursor`](Self::cursor).
    ///
    /// The buffers consulted are the workspace's (events for everyone), the user's own, and those
    /// of every channel the user is in now or joined or left since `after`.
    pub fn replay_after(&self, user: &UserId, after: &Cursor) -> Option<Vec<EventFrame>> {
        if *after >= self.cursor {
            return Some(Vec::new());
        }
        if !self.workspace_events.covers(after) {
            return None;
        }
        let personal = self.personal.get(user);
        if personal.is_some_and(|buffer| !buffer.covers(after)) {
            return None;
        }
        let mut channels: BTreeSet<&ChannelId> = self.channels_of(user).iter().collect();
        let mut picked: Vec<&(Cursor, Event)> = Vec::new();
        if let Some(buffer) = personal {
            for pair in buffer.after(after) {
                if let Event::MemberJoined { channel, .. } | Event::MemberLeft { channel, .. } = &pair.1 {
                    channels.insert(channel);
                }
                picked.push(pair);
            }
        }
        for id in channels {
            // A channel the state does not know has only the user's own joins and departures,
            // which their personal buffer holds.
            let Some(entry) = self.channels.get(id) else { continue };
            if !entry.events.covers(after) {
                return None;
            }
            picked.extend(entry.events.after(after));
        }
        picked.extend(self.workspace_events.after(after));
        // An event can sit in several buffers (a user's own join in theirs and the channel's).
        picked.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        picked.dedup_by(|a, b| a.0 == b.0);
        let events: Vec<&Event> = picked.iter().map(|(_, event)| event).collect();
        let keep = self.delivered_to(user, &events, &self.cursor);
        Some(
            picked
                .into_iter()
                .zip(keep)
                .filter(|(_, keep)| *keep)
                .map(|((cursor, event), _)| EventFrame { event: event.clone(), cursor: cursor.clone() })
                .collect(),
        )
    }

    /// Approximate bytes held, for a cache weigher (saturates at `u32::MAX`): the running
    /// estimate plus the mention maps, counted when weighed (they hold unread mentions and
    /// `@channel` messages only, so walking them costs little next to a weighing's rarity).
    pub fn weight(&self) -> u32 {
        u32::try_from(self.bytes.saturating_add(self.mention_bytes())).unwrap_or(u32::MAX)
    }

    /// Bytes the mention maps hold.
    fn mention_bytes(&self) -> usize {
        let seq_slot = size_of::<Seq>() + 2 * size_of::<usize>();
        let direct: usize = self
            .mentions
            .iter()
            .map(|(c, users)| {
                id_bytes(c.as_str())
                    + users.iter().map(|(u, seqs)| id_bytes(u.as_str()) + seqs.len() * seq_slot).sum::<usize>()
            })
            .sum();
        let wide: usize = self
            .channel_mentions
            .iter()
            .map(|(c, seqs)| {
                id_bytes(c.as_str()) + seqs.values().map(|author| seq_slot + id_bytes(author.as_str())).sum::<usize>()
            })
            .sum();
        direct + wide
    }

    /// The weight recomputed from scratch; tests check the running estimate against it.
    #[cfg(test)]
    fn recompute_bytes(&self) -> usize {
        let mut bytes = base_bytes(&self.workspace);
        bytes += self.users.values().map(user_entry_bytes).sum::<usize>();
        for entry in self.channels.values() {
            bytes += channel_entry_bytes(&entry.channel);
            bytes += entry.members.iter().map(|u| set_slot_bytes(u.as_str())).sum::<usize>();
            bytes += entry.members.len() * set_slot_bytes(entry.channel.id.as_str());
            bytes += entry.events.entries.iter().map(|(_, e)| event_entry_bytes(e)).sum::<usize>();
            bytes += entry.messages.messages.iter().map(message_entry_bytes).sum::<usize>();
        }
        bytes += self.public.iter().map(|c| set_slot_bytes(c.as_str())).sum::<usize>();
        bytes += self.joined.keys().map(joined_entry_bytes).sum::<usize>();
        for (user, markers) in &self.read_markers {
            bytes += markers_entry_bytes(user) + markers.keys().map(marker_bytes).sum::<usize>();
        }
        bytes += self.workspace_events.entries.iter().map(|(_, e)| event_entry_bytes(e)).sum::<usize>();
        for (user, buffer) in &self.personal {
            bytes += personal_entry_bytes(user);
            bytes += buffer.entries.iter().map(|(_, e)| event_entry_bytes(e)).sum::<usize>();
        }
        bytes += self.orphans.keys().map(orphan_entry_bytes).sum::<usize>();
        bytes
    }
}

/// A refused query, before it becomes a [`QueryAnswer::Refused`].
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }
}

fn empty_result(q: &Query) -> QueryResult {
    QueryResult { reply_to: q.id.clone(), ..QueryResult::default() }
}

/// A page size: the default when absent, at most [`MAX_QUERY_LIMIT`], never 0.
fn page_limit(limit: Option<u32>, default: usize) -> Result<usize, Refusal> {
    match limit {
        None => Ok(default),
        Some(0) => Err(Refusal::new(ErrorCode::BadRequest, format!("limit must be 1 to {MAX_QUERY_LIMIT}"))),
        Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_QUERY_LIMIT).min(MAX_QUERY_LIMIT)),
    }
}

/// The id a page starts after: the `page` token, which is the previous page's last id.
fn page_after<T>(q: &Query, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>, Refusal> {
    match &q.page {
        None => Ok(None),
        Some(token) => parse(token).map(Some).ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "invalid page token")),
    }
}

/// Up to `limit` items, and the last of them when more remain (the next page's token).
fn paginate<T: Copy>(items: impl Iterator<Item = T>, limit: usize) -> (Vec<T>, Option<T>) {
    let mut items = items.peekable();
    let page: Vec<T> = items.by_ref().take(limit).collect();
    let next = if items.peek().is_some() { page.last().copied() } else { None };
    (page, next)
}

/// Two ascending iterators merged into one, each item once.
fn merge_sorted<'a, T: Ord + 'a>(
    a: impl Iterator<Item = &'a T> + 'a,
    b: impl Iterator<Item = &'a T> + 'a,
) -> impl Iterator<Item = &'a T> + 'a {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) => match x.cmp(y) {
            Ordering::Less => a.next(),
            Ordering::Greater => b.next(),
            Ordering::Equal => {
                b.next();
                a.next()
            }
        },
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

// Size estimates for `weight`. Approximate by design: heap bytes of strings plus the inline size
// of each value and a guessed per-slot overhead for maps and sets.

/// Guessed overhead of one map or set slot (hashing, tree nodes, spare capacity).
const SLOT_OVERHEAD: usize = 32;

/// Heap bytes of a cursor's string.
const CURSOR_HEAP: usize = 2 * POSITION_LEN;

fn id_bytes(id: &str) -> usize {
    size_of::<String>() + id.len()
}

fn set_slot_bytes(id: &str) -> usize {
    SLOT_OVERHEAD + id_bytes(id)
}

fn base_bytes(workspace: &Workspace) -> usize {
    size_of::<WorkspaceState>() + workspace.id.as_str().len() + workspace.name.len() + 3 * CURSOR_HEAP
}

fn user_heap(user: &User) -> usize {
    user.id.as_str().len() + user.handle.len() + user.name.len()
}

fn user_entry_bytes(user: &User) -> usize {
    SLOT_OVERHEAD + id_bytes(user.id.as_str()) + size_of::<User>() + user_heap(user)
}

fn channel_heap(channel: &Channel) -> usize {
    channel.id.as_str().len()
        + channel.name.len()
        + channel.topic.len()
        + channel.purpose.len()
        + channel.created_by.as_str().len()
}

fn channel_entry_bytes(channel: &Channel) -> usize {
    SLOT_OVERHEAD + id_bytes(channel.id.as_str()) + size_of::<ChannelEntry>() + channel_heap(channel) + CURSOR_HEAP
}

fn joined_entry_bytes(user: &UserId) -> usize {
    SLOT_OVERHEAD + id_bytes(user.as_str()) + size_of::<BTreeSet<ChannelId>>()
}

fn markers_entry_bytes(user: &UserId) -> usize {
    SLOT_OVERHEAD + id_bytes(user.as_str()) + size_of::<HashMap<ChannelId, Seq>>()
}

fn marker_bytes(channel: &ChannelId) -> usize {
    SLOT_OVERHEAD + id_bytes(channel.as_str()) + size_of::<Seq>()
}

fn personal_entry_bytes(user: &UserId) -> usize {
    SLOT_OVERHEAD + id_bytes(user.as_str()) + size_of::<EventBuffer>() + CURSOR_HEAP
}

fn orphan_entry_bytes(channel: &ChannelId) -> usize {
    SLOT_OVERHEAD + id_bytes(channel.as_str()) + size_of::<Orphan>() + CURSOR_HEAP
}

fn message_heap(message: &Message) -> usize {
    let ids = |users: &[UserId]| users.iter().map(|u| size_of::<UserId>() + u.as_str().len()).sum::<usize>();
    let reactions: usize =
        message.reactions.iter().map(|r| size_of::<selvage_shared::Reaction>() + r.emoji.len() + ids(&r.users)).sum();
    message.channel.as_str().len()
        + message.user.as_str().len()
        + message.text.len()
        + message.client_msg_id.len()
        + ids(&message.mentions)
        + ids(&message.reply_users)
        + reactions
}

fn message_entry_bytes(message: &Message) -> usize {
    size_of::<Message>() + message_heap(message)
}

fn event_heap(event: &Event) -> usize {
    match event {
        Event::Message(message) => message_heap(message),
        Event::MessageChanged { channel, message, .. } => channel.as_str().len() + message_heap(message),
        Event::MessageDeleted { channel, .. } => channel.as_str().len(),
        Event::ReactionAdded { channel, user, emoji, .. } | Event::ReactionRemoved { channel, user, emoji, .. } => {
            channel.as_str().len() + user.as_str().len() + emoji.len()
        }
        Event::MemberJoined { channel, user }
        | Event::MemberLeft { channel, user }
        | Event::ReadMarker { channel, user, .. }
        | Event::Typing { channel, user } => channel.as_str().len() + user.as_str().len(),
        Event::ChannelCreated { channel } | Event::ChannelUpdated { channel } => channel_heap(channel),
        Event::UserUpdated { user } => user_heap(user),
        Event::PresenceChange { user, .. } => user.as_str().len(),
        Event::TokenRevoked { token_hash } => token_hash.len(),
    }
}

fn event_entry_bytes(event: &Event) -> usize {
    size_of::<(Cursor, Event)>() + CURSOR_HEAP + event_heap(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use selvage_shared::link::ReadMarker;
    use selvage_shared::{ChannelKind, Presence};

    fn cur(n: u64) -> Cursor {
        let mut pos = [0u8; POSITION_LEN];
        pos[2..10].copy_from_slice(&n.to_be_bytes());
        Cursor::from_position(&pos)
    }

    fn uid(s: &str) -> UserId {
        UserId::new_unchecked(s)
    }

    fn cid(s: &str) -> ChannelId {
        ChannelId::new_unchecked(s)
    }

    fn uids(ids: &[&str]) -> Vec<UserId> {
        ids.iter().map(|s| uid(s)).collect()
    }

    fn ws_id() -> WorkspaceId {
        WorkspaceId::new_unchecked("W1")
    }

    fn user(id: &str) -> User {
        User {
            id: uid(id),
            handle: id.to_lowercase(),
            name: format!("User {id}"),
            admin: false,
            deactivated: false,
            tokens_valid_from: 0,
            created_at: 1,
        }
    }

    fn chan(id: &str, kind: ChannelKind, private: bool) -> Channel {
        Channel {
            id: cid(id),
            name: id.to_lowercase(),
            kind,
            private,
            archived: false,
            topic: String::new(),
            purpose: String::new(),
            created_by: uid("U1"),
            created_at: 1,
        }
    }

    fn msg(channel: &str, seq: Seq, author: &str) -> Message {
        Message {
            client_msg_id: format!("m{seq}"),
            ..Message::new(cid(channel), seq, 1000 + seq as i64, uid(author), format!("message {seq} in {channel}"))
        }
    }

    fn item(n: u64, event: Event) -> FeedItem {
        FeedItem { cursor: cur(n), workspace: ws_id(), ts: 0, event }
    }

    fn channel_state(channel: Channel, last_seq: Seq, members: &[&str]) -> ChannelState {
        ChannelState { channel, last_seq, members: uids(members) }
    }

    /// U1..U5 (U5 deactivated); C1 public, C2 private, C3 public, D1 = U1+U4, G1 = U1+U2+U5,
    /// D2 = U2+U3; consistent with cursor 100.
    fn snapshot() -> WorkspaceSnapshot {
        let mut u5 = user("U5");
        u5.deactivated = true;
        WorkspaceSnapshot {
            workspace: Workspace { id: ws_id(), name: "Acme".into(), created_at: 1 },
            cursor: cur(100),
            users: vec![user("U1"), user("U2"), user("U3"), user("U4"), u5],
            channels: vec![
                channel_state(chan("C1", ChannelKind::Channel, false), 10, &["U1", "U2", "U3"]),
                channel_state(chan("C2", ChannelKind::Channel, true), 3, &["U1", "U2"]),
                channel_state(chan("C3", ChannelKind::Channel, false), 0, &["U2"]),
                channel_state(chan("D1", ChannelKind::Dm, true), 2, &["U1", "U4"]),
                channel_state(chan("G1", ChannelKind::GroupDm, true), 0, &["U1", "U2", "U5"]),
                channel_state(chan("D2", ChannelKind::Dm, true), 0, &["U2", "U3"]),
            ],
            read_markers: vec![
                ReadMarker { user: uid("U1"), channel: cid("C1"), seq: 7 },
                ReadMarker { user: uid("U1"), channel: cid("D1"), seq: 2 },
            ],
            mentions: Vec::new(),
            channel_mentions: Vec::new(),
        }
    }

    fn state() -> WorkspaceState {
        WorkspaceState::from_snapshot(snapshot(), CacheLimits::default())
    }

    fn state_with(limits: CacheLimits) -> WorkspaceState {
        WorkspaceState::from_snapshot(snapshot(), limits)
    }

    fn query(kind: QueryKind) -> Query {
        Query::new("q1", kind)
    }

    fn in_channel(kind: QueryKind, channel: &str) -> Query {
        Query { channel: Some(cid(channel)), ..query(kind) }
    }

    fn answer(a: QueryAnswer) -> QueryResult {
        match a {
            QueryAnswer::Answer(result) => result,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn refusal_code(a: QueryAnswer) -> ErrorCode {
        match a {
            QueryAnswer::Refused { code, .. } => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Recipients spelled out, for comparing.
    #[derive(Debug, PartialEq)]
    enum Got {
        Nobody,
        Users(Vec<UserId>),
        Everyone,
    }

    fn recipients(s: &mut WorkspaceState, n: u64, event: Event) -> Got {
        let recipients = s.apply(&item(n, event)).map(|a| a.recipients).expect("applied");
        let mut users: Vec<UserId> = match recipients {
            Recipients::Nobody => return Got::Nobody,
            Recipients::Everyone => return Got::Everyone,
            Recipients::User(user) => vec![user],
            Recipients::Members(c) => s.members(&c).into_iter().flatten().cloned().collect(),
            Recipients::MembersAnd(c, user) => s.members(&c).into_iter().flatten().cloned().chain([user]).collect(),
            Recipients::Followers(c, followers) => followers.into_iter().filter(|u| s.is_member(&c, u)).collect(),
        };
        users.sort();
        users.dedup();
        if users.is_empty() {
            Got::Nobody
        } else {
            Got::Users(users)
        }
    }

    fn ids<T: AsRef<str>>(items: &[T]) -> Vec<&str> {
        items.iter().map(AsRef::as_ref).collect()
    }

    fn channel_ids(boots: &[ChannelBoot]) -> Vec<&str> {
        boots.iter().map(|b| b.channel.id.as_str()).collect()
    }

    fn frame_cursors(frames: &[EventFrame]) -> Vec<Cursor> {
        frames.iter().map(|f| f.cursor.clone()).collect()
    }

    /// Both membership indexes agree, and the running weight matches a recount.
    fn check_invariants(s: &WorkspaceState) {
        for (id, entry) in &s.channels {
            for member in &entry.members {
                assert!(s.channels_of(member).contains(id), "{member} in {id} but not in joined");
            }
            assert_eq!(s.public.contains(id), !restricted(&entry.channel), "public index of {id}");
        }
        for (user, joined) in &s.joined {
            for c in joined {
                assert!(s.is_member(c, user), "{user} joined {c} but is not a member");
            }
        }
        assert_eq!(s.bytes, s.recompute_bytes(), "running weight drifted");
    }

    #[test]
    fn snapshot_boot_lists_member_channels_and_only_needed_users() {
        let s = state();
        check_invariants(&s);
        assert_eq!(s.id(), &ws_id());
        assert_eq!(s.cursor(), &cur(100));
        let boot = s.boot(&uid("U1")).expect("U1 boots");
        assert_eq!(boot.self_user, user("U1"));
        assert_eq!(channel_ids(&boot.channels), ["C1", "C2", "D1", "G1"]);
        let c1 = &boot.channels[0];
        assert_eq!((c1.last_seq, c1.read_seq, c1.unread, c1.mentions), (10, 7, 3, 0));
        let c2 = &boot.channels[1];
        assert_eq!((c2.last_seq, c2.read_seq, c2.unread), (3, 0, 3));
        let d1 = &boot.channels[2];
        assert_eq!((d1.last_seq, d1.read_seq, d1.unread), (2, 2, 0));
        // DM and group DM partners only (the deactivated one too), not C1's other members.
        let users: Vec<&str> = boot.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(users, ["U2", "U4", "U5"]);
        assert!(boot.users[2].deactivated);

        let boot = s.boot(&uid("U4")).expect("U4 boots");
        assert_eq!(channel_ids(&boot.channels), ["D1"]);
        assert_eq!(boot.users, [user("U1")]);

        assert_eq!(s.boot(&uid("U5")), None, "deactivated");
        assert_eq!(s.boot(&uid("U9")), None, "unknown");
    }

    #[test]
    fn apply_ignores_stale_cursors_and_other_workspaces() {
        let mut s = state();
        let weight = s.weight();
        assert_eq!(s.apply(&item(100, Event::Message(msg("C1", 11, "U1")))), None, "at the snapshot cursor");
        assert_eq!(s.apply(&item(50, Event::Message(msg("C1", 11, "U1")))), None, "before it");
        let foreign =
            FeedItem { workspace: WorkspaceId::new_unchecked("W2"), ..item(101, Event::Message(msg("C1", 11, "U1"))) };
        assert_eq!(s.apply(&foreign), None, "another workspace");
        assert_eq!((s.cursor(), s.last_seq(&cid("C1")), s.weight()), (&cur(100), Some(10), weight));
        assert_eq!(s.replay_after(&uid("U1"), &cur(100)), Some(Vec::new()));

        assert!(s.apply(&item(101, Event::Message(msg("C1", 11, "U1")))).is_some());
        assert_eq!((s.cursor(), s.last_seq(&cid("C1"))), (&cur(101), Some(11)));
        assert_eq!(s.apply(&item(101, Event::Message(msg("C1", 12, "U1")))), None, "same cursor again");
        assert_eq!(s.last_seq(&cid("C1")), Some(11));
        check_invariants(&s);
    }

    #[test]
    fn recipients_for_each_event_type() {
        let mut s = state();
        let c1 = Got::Users(uids(&["U1", "U2", "U3"]));
        let c2 = Got::Users(uids(&["U1", "U2"]));
        assert_eq!(recipients(&mut s, 101, Event::Message(msg("C1", 11, "U1"))), c1);
        let changed = Event::MessageChanged { channel: cid("C2"), seq: 1, message: msg("C2", 1, "U1") };
        assert_eq!(recipients(&mut s, 102, changed), c2);
        assert_eq!(recipients(&mut s, 103, Event::MessageDeleted { channel: cid("C2"), seq: 1 }), c2);
        let reaction = Event::ReactionAdded { channel: cid("C2"), seq: 2, user: uid("U2"), emoji: "tada".into() };
        assert_eq!(recipients(&mut s, 104, reaction), c2);
        let unreaction = Event::ReactionRemoved { channel: cid("C2"), seq: 2, user: uid("U2"), emoji: "tada".into() };
        assert_eq!(recipients(&mut s, 105, unreaction), c2);
        // Joins go to the members after the join (the joiner included), departures to those
        // before it (the leaver included).
        let joined = Event::MemberJoined { channel: cid("C3"), user: uid("U1") };
        assert_eq!(recipients(&mut s, 106, joined), Got::Users(uids(&["U1", "U2"])));
        let left = Event::MemberLeft { channel: cid("C1"), user: uid("U3") };
        assert_eq!(recipients(&mut s, 107, left), c1);
        // Channel records: public to everyone, private to members (none yet for a new one).
        let public = Event::ChannelCreated { channel: chan("C9", ChannelKind::Channel, false) };
        assert_eq!(recipients(&mut s, 108, public), Got::Everyone);
        let private = Event::ChannelCreated { channel: chan("C8", ChannelKind::Channel, true) };
        assert_eq!(recipients(&mut s, 109, private), Got::Nobody);
        assert!(!s.is_member(&cid("C8"), &uid("U1")), "the creator is not implicitly a member");
        let mut topic = chan("C2", ChannelKind::Channel, true);
        topic.topic = "plans".into();
        assert_eq!(recipients(&mut s, 110, Event::ChannelUpdated { channel: topic.clone() }), c2);
        assert_eq!(s.channel(&cid("C2")).map(|c| c.topic.as_str()), Some("plans"));
        let opened = Channel { private: false, ..topic };
        assert_eq!(recipients(&mut s, 111, Event::ChannelUpdated { channel: opened }), Got::Everyone);
        let dm = Event::ChannelUpdated { channel: chan("D1", ChannelKind::Dm, false) };
        assert_eq!(recipients(&mut s, 112, dm), Got::Users(uids(&["U1", "U4"])), "DMs are never public");
        let mut renamed = user("U3");
        renamed.name = "Three".into();
        assert_eq!(recipients(&mut s, 113, Event::UserUpdated { user: renamed.clone() }), Got::Everyone);
        assert_eq!(s.user(&uid("U3")), Some(&renamed));
        let marker = Event::ReadMarker { channel: cid("C1"), user: uid("U2"), seq: 11 };
        assert_eq!(recipients(&mut s, 114, marker), Got::Users(uids(&["U2"])));
        assert_eq!(recipients(&mut s, 115, Event::TokenRevoked { token_hash: "ab".into() }), Got::Nobody);
        assert_eq!(s.cursor(), &cur(115), "a revocation advances the cursor");
        assert_eq!(recipients(&mut s, 116, Event::Message(msg("C404", 1, "U1"))), Got::Nobody);
        let created = Event::ChannelCreated { channel: chan("C7", ChannelKind::Channel, false) };
        assert_eq!(recipients(&mut s, 117, created), Got::Everyone);

        // Ephemeral: routed whatever their cursor, never moving it, never buffered.
        let typing = Event::Typing { channel: cid("D1"), user: uid("U1") };
        assert_eq!(recipients(&mut s, 1, typing.clone()), Got::Users(uids(&["U1", "U4"])));
        assert_eq!(recipients(&mut s, 500, typing), Got::Users(uids(&["U1", "U4"])));
        let presence = Event::PresenceChange { user: uid("U1"), presence: Presence::Away };
        assert_eq!(recipients(&mut s, 501, presence), Got::Nobody);
        assert_eq!(s.cursor(), &cur(117));
        let replay = s.replay_after(&uid("U4"), &cur(100)).expect("covered");
        assert!(replay.iter().all(|f| !f.event.is_ephemeral() && !f.event.is_internal()), "{replay:?}");
        check_invariants(&s);
    }

    #[test]
    fn removed_member_stops_being_a_recipient() {
        let mut s = state();
        let left = Event::MemberLeft { channel: cid("C2"), user: uid("U2") };
        assert_eq!(recipients(&mut s, 101, left), Got::Users(uids(&["U1", "U2"])));
        assert_eq!(recipients(&mut s, 102, Event::Message(msg("C2", 4, "U1"))), Got::Users(uids(&["U1"])));
        assert!(!s.is_member(&cid("C2"), &uid("U2")));
        assert!(!s.can_see_channel(&uid("U2"), &cid("C2")));
        assert!(!s.channels_of(&uid("U2")).contains(&cid("C2")));
        let boot = s.boot(&uid("U2")).expect("boots");
        assert!(!channel_ids(&boot.channels).contains(&"C2"));
        // Leaving twice still tells the leaver; the last member leaving leaves nobody.
        let again = Event::MemberLeft { channel: cid("C2"), user: uid("U2") };
        assert_eq!(recipients(&mut s, 103, again), Got::Users(uids(&["U1", "U2"])));
        let last = Event::MemberLeft { channel: cid("C2"), user: uid("U1") };
        assert_eq!(recipients(&mut s, 104, last), Got::Users(uids(&["U1"])));
        assert_eq!(recipients(&mut s, 105, Event::Message(msg("C2", 5, "U1"))), Got::Nobody);
        check_invariants(&s);
    }

    #[test]
    fn private_channel_is_invisible_to_non_members() {
        let mut s = state();
        let outsider = uid("U3");
        let boot = s.boot(&outsider).expect("boots");
        assert_eq!(channel_ids(&boot.channels), ["C1", "D2"]);

        // Refused exactly like a channel that does not exist.
        for kind in [QueryKind::Members, QueryKind::History, QueryKind::Thread] {
            let q = Query { root: Some(1), ..in_channel(kind, "C2") };
            assert_eq!(refusal_code(s.query(&outsider, &q)), ErrorCode::NotFound, "{kind:?}");
            let missing = Query { root: Some(1), ..in_channel(kind, "C404") };
            assert_eq!(refusal_code(s.query(&outsider, &missing)), ErrorCode::NotFound, "{kind:?}");
            let dm = Query { root: Some(1), ..in_channel(kind, "D1") };
            assert_eq!(refusal_code(s.query(&outsider, &dm)), ErrorCode::NotFound, "{kind:?}");
        }
        let members = answer(s.query(&uid("U1"), &in_channel(QueryKind::Members, "C2")));
        assert_eq!(ids(&members.members), ["U1", "U2"]);
        let thread = Query { root: Some(1), ..in_channel(QueryKind::Thread, "C2") };
        assert_eq!(s.query(&uid("U1"), &thread), QueryAnswer::NeedsOrigin);
        // A public channel is readable by non-members.
        let c3 = answer(s.query(&outsider, &in_channel(QueryKind::Members, "C3")));
        assert_eq!(ids(&c3.members), ["U2"]);

        let channels = answer(s.query(&outsider, &query(QueryKind::Channels)));
        assert_eq!(channel_ids(&channels.channels), ["C1", "C3", "D2"]);
        // Not a member of C3: no unread count there.
        assert_eq!(channels.channels[1].unread, 0);
        let channels = answer(s.query(&uid("U1"), &query(QueryKind::Channels)));
        assert_eq!(channel_ids(&channels.channels), ["C1", "C2", "C3", "D1", "G1"]);

        let secret = Event::Message(msg("C2", 4, "U1"));
        let open = Event::Message(msg("C1", 11, "U1"));
        assert_eq!(s.delivered_to(&outsider, &[&secret, &open], &cur(100)), [false, true]);
        assert_eq!(s.delivered_to(&uid("U2"), &[&secret, &open], &cur(100)), [true, true]);
        s.apply(&item(101, secret)).expect("applied");
        s.apply(&item(102, open.clone())).expect("applied");
        let replay = s.replay_after(&outsider, &cur(100)).expect("covered");
        assert_eq!(replay, [EventFrame { event: open, cursor: cur(102) }]);
        assert_eq!(s.replay_after(&uid("U2"), &cur(100)).map(|r| r.len()), Some(2));
    }

    #[test]
    fn internal_events_and_other_users_markers_are_never_delivered() {
        let s = state();
        let revoked = Event::TokenRevoked { token_hash: "ab".into() };
        let marker = Event::ReadMarker { channel: cid("C1"), user: uid("U2"), seq: 1 };
        // Someone else joining a private channel is as invisible as the channel.
        let joined = Event::MemberJoined { channel: cid("C2"), user: uid("U4") };
        let renamed = Event::UserUpdated { user: user("U1") };
        let public = Event::ChannelUpdated { channel: chan("C3", ChannelKind::Channel, false) };
        let in_public = Event::Message(msg("C3", 1, "U2"));
        let events = [&revoked, &marker, &joined, &renamed, &public, &in_public];
        let upto = s.cursor().clone();
        assert_eq!(s.delivered_to(&uid("U1"), &events, &upto), [false, false, true, true, true, false]);
        assert_eq!(s.delivered_to(&uid("U2"), &events, &upto), [false, true, true, true, true, true]);
        assert_eq!(s.delivered_to(&uid("U3"), &events, &upto), [false, false, false, true, true, false]);
        assert_eq!(s.delivered_to(&uid("U4"), &events, &upto), [false, false, true, true, true, false]);
    }

    #[test]
    fn replay_follows_membership_as_it_was_at_each_event() {
        let mut s = state();
        let u3 = uid("U3");
        let in_c2 = |seq| Event::Message(msg("C2", seq, "U1"));
        s.apply(&item(101, in_c2(4))).expect("applied");
        s.apply(&item(102, Event::MemberJoined { channel: cid("C2"), user: u3.clone() })).expect("applied");
        s.apply(&item(103, in_c2(5))).expect("applied");
        s.apply(&item(104, Event::MemberLeft { channel: cid("C2"), user: u3.clone() })).expect("applied");
        s.apply(&item(105, in_c2(6))).expect("applied");
        let replayed = |after| s.replay_after(&u3, &cur(after)).map(|frames| frame_cursors(&frames));
        assert_eq!(replayed(100), Some(vec![cur(102), cur(103), cur(104)]));
        assert_eq!(replayed(102), Some(vec![cur(103), cur(104)]));
        assert_eq!(replayed(104), Some(vec![]));
        // Events read from the origin up to an earlier point: membership is rolled back to it.
        let five = in_c2(5);
        assert_eq!(s.delivered_to(&u3, &[&five], &cur(103)), [true]);
        assert_eq!(s.delivered_to(&u3, &[&five], &cur(105)), [false], "past their departure");
    }

    #[test]
    fn pagination_covers_every_member_and_channel_exactly_once() {
        let mut s = state();
        let mut n = 100;
        let mut expected: BTreeSet<UserId> = uids(&["U1", "U2", "U3"]).into_iter().collect();
        for i in 0..250 {
            n += 1;
            let u = uid(&format!("M{i:03}"));
            expected.insert(u.clone());
            s.apply(&item(n, Event::MemberJoined { channel: cid("C1"), user: u })).expect("applied");
        }
        for limit in [1, 7, 100, 1000] {
            let mut seen = Vec::new();
            let mut page = None;
            for round in 0.. {
                assert!(round <= 300, "pagination does not end");
                let q = Query { limit: Some(limit), page: page.take(), ..in_channel(QueryKind::Members, "C1") };
                let result = answer(s.query(&uid("U3"), &q));
                assert!(result.members.len() <= limit as usize);
                seen.extend(result.members);
                match result.next {
                    Some(next) => page = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, expected.iter().cloned().collect::<Vec<_>>(), "limit {limit}");
        }
        let first = answer(s.query(&uid("U3"), &in_channel(QueryKind::Members, "C1")));
        assert_eq!(first.members.len(), DEFAULT_PAGE_LIMIT);
        assert_eq!(first.next.as_deref(), first.members.last().map(UserId::as_str));

        // Channels: U1's own (public and private) merged with every public one, once each.
        for i in 0..30 {
            n += 1;
            let private = i % 3 == 0;
            let c = chan(&format!("K{i:02}"), ChannelKind::Channel, private);
            s.apply(&item(n, Event::ChannelCreated { channel: c })).expect("applied");
            if i % 2 == 0 {
                n += 1;
                let joined = Event::MemberJoined { channel: cid(&format!("K{i:02}")), user: uid("U1") };
                s.apply(&item(n, joined)).expect("applied");
            }
        }
        let mut archived = chan("K01", ChannelKind::Channel, false);
        archived.archived = true;
        n += 1;
        s.apply(&item(n, Event::ChannelUpdated { channel: archived })).expect("applied");
        let visible: Vec<String> = s
            .channels
            .keys()
            .filter(|c| s.can_see_channel(&uid("U1"), c))
            .map(|c| c.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(visible.contains(&"K01".to_string()), "archived public channels are listed");
        assert!(!visible.contains(&"K03".to_string()), "private channels U1 is not in are not");
        for limit in [1, 4, 1000] {
            let mut seen = Vec::new();
            let mut page = None;
            loop {
                let q = Query { limit: Some(limit), page: page.take(), ..query(QueryKind::Channels) };
                let result = answer(s.query(&uid("U1"), &q));
                seen.extend(result.channels.iter().map(|b| b.channel.id.to_string()));
                match result.next {
                    Some(next) => page = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, visible, "limit {limit}");
        }
        check_invariants(&s);
    }

    #[test]
    fn bad_page_tokens_and_limits_are_refused() {
        let s = state();
        let bad_page = Query { page: Some("not an id!".into()), ..in_channel(QueryKind::Members, "C1") };
        assert_eq!(refusal_code(s.query(&uid("U1"), &bad_page)), ErrorCode::BadRequest);
        let bad_page = Query { page: Some(String::new()), ..query(QueryKind::Channels) };
        assert_eq!(refusal_code(s.query(&uid("U1"), &bad_page)), ErrorCode::BadRequest);
        let zero = Query { limit: Some(0), ..in_channel(QueryKind::History, "C1") };
        assert_eq!(refusal_code(s.query(&uid("U1"), &zero)), ErrorCode::BadRequest);
        let no_channel = query(QueryKind::Members);
        assert_eq!(refusal_code(s.query(&uid("U1"), &no_channel)), ErrorCode::BadRequest);
        let no_root = in_channel(QueryKind::Thread, "C1");
        assert_eq!(refusal_code(s.query(&uid("U1"), &no_root)), ErrorCode::BadRequest);
        assert_eq!(refusal_code(s.query(&uid("U5"), &query(QueryKind::Channels))), ErrorCode::Unauthorized);
        assert_eq!(refusal_code(s.query(&uid("U9"), &query(QueryKind::Channels))), ErrorCode::Unauthorized);
        let huge = Query { limit: Some(1_000_000), ..in_channel(QueryKind::Members, "C1") };
        assert_eq!(answer(s.query(&uid("U1"), &huge)).members.len(), 3, "limits above the maximum are capped");
    }

    #[test]
    fn users_query_returns_existing_users_or_pages() {
        let s = state();
        let q = Query { users: uids(&["U4", "U9", "U5", "U4"]), ..query(QueryKind::Users) };
        let result = answer(s.query(&uid("U1"), &q));
        assert_eq!(result.reply_to, "q1");
        let got: Vec<&str> = result.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(got, ["U4", "U5"], "unknown ids omitted, duplicates once, deactivated included");
        let page = Query { limit: Some(2), ..query(QueryKind::Users) };
        let result = answer(s.query(&uid("U1"), &page));
        let got: Vec<&str> = result.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!((got, result.next.as_deref()), (vec!["U1", "U2"], Some("U2")));
        let page = Query { limit: Some(2), page: Some("U4".into()), ..query(QueryKind::Users) };
        let result = answer(s.query(&uid("U1"), &page));
        assert_eq!((result.users.len(), result.next), (1, None));
    }

    fn history(s: &WorkspaceState, channel: &str, after: Option<Seq>, before: Option<Seq>, limit: u32) -> QueryAnswer {
        let q = Query { after, before, limit: Some(limit), ..in_channel(QueryKind::History, channel) };
        s.query(&uid("U1"), &q)
    }

    fn seqs(a: QueryAnswer) -> (Vec<Seq>, Option<String>) {
        let result = answer(a);
        (result.messages.iter().map(|m| m.seq).collect(), result.next)
    }

    #[test]
    fn history_is_answered_from_the_buffer_only_where_it_is_covered() {
        let limits = CacheLimits { recent_events_per_channel: 5, ..CacheLimits::default() };
        let mut s = state_with(limits);
        // C1 had 10 messages at the snapshot; none of them are cached.
        let newest = Query { limit: None, ..in_channel(QueryKind::History, "C1") };
        assert_eq!(s.query(&uid("U1"), &newest), QueryAnswer::NeedsOrigin);
        assert_eq!(
            history(&s, "C1", Some(10), None, 5),
            QueryAnswer::Answer(QueryResult { reply_to: "q1".into(), ..QueryResult::default() })
        );
        for (n, seq) in (101..).zip(11..=14) {
            s.apply(&item(n, Event::Message(msg("C1", seq, "U2")))).expect("applied");
        }
        assert_eq!(seqs(history(&s, "C1", None, None, 4)), (vec![11, 12, 13, 14], Some("11".into())));
        assert_eq!(history(&s, "C1", None, None, 5), QueryAnswer::NeedsOrigin, "seq 10 is not cached");
        assert_eq!(seqs(history(&s, "C1", Some(10), None, 50)), (vec![11, 12, 13, 14], None));
        assert_eq!(seqs(history(&s, "C1", Some(12), None, 1)), (vec![13], Some("13".into())));
        assert_eq!(seqs(history(&s, "C1", None, Some(13), 2)), (vec![11, 12], Some("11".into())));
        assert_eq!(history(&s, "C1", None, Some(12), 2), QueryAnswer::NeedsOrigin);
        assert_eq!(seqs(history(&s, "C1", Some(11), Some(14), 50)), (vec![12, 13], None));
        assert_eq!(seqs(history(&s, "C1", Some(11), Some(14), 1)), (vec![12], Some("12".into())));
        // Three more evict 11 and 12.
        for (n, seq) in (105..).zip(15..=17) {
            s.apply(&item(n, Event::Message(msg("C1", seq, "U2")))).expect("applied");
        }
        assert_eq!(seqs(history(&s, "C1", Some(12), None, 50)), (vec![13, 14, 15, 16, 17], None));
        assert_eq!(history(&s, "C1", Some(11), None, 50), QueryAnswer::NeedsOrigin);
        assert_eq!(seqs(history(&s, "C1", None, None, 5)).0, vec![13, 14, 15, 16, 17]);
        assert_eq!(history(&s, "C1", None, None, 6), QueryAnswer::NeedsOrigin);
        // Ranges with nothing in them need nothing cached.
        assert_eq!(seqs(history(&s, "C1", Some(17), None, 5)), (vec![], None));
        assert_eq!(seqs(history(&s, "C1", None, Some(1), 5)), (vec![], None));
        assert_eq!(seqs(history(&s, "C3", None, None, 5)), (vec![], None), "an empty channel");
        // A channel created after the snapshot is cached from its first message.
        s.apply(&item(200, Event::ChannelCreated { channel: chan("C9", ChannelKind::Channel, false) }))
            .expect("applied");
        s.apply(&item(201, Event::Message(msg("C9", 1, "U1")))).expect("applied");
        assert_eq!(seqs(history(&s, "C9", None, None, 50)), (vec![1], None));
        check_invariants(&s);
    }

    #[test]
    fn edits_and_deletes_update_buffered_messages() {
        let mut s = state();
        s.apply(&item(101, Event::Message(msg("C1", 11, "U1")))).expect("applied");
        s.apply(&item(102, Event::Message(msg("C1", 12, "U1")))).expect("applied");
        let edited = Message { text: "fixed".into(), edited_at: Some(5), ..msg("C1", 11, "U1") };
        let changed = Event::MessageChanged { channel: cid("C1"), seq: 11, message: edited.clone() };
        s.apply(&item(103, changed)).expect("applied");
        s.apply(&item(104, Event::MessageDeleted { channel: cid("C1"), seq: 12 })).expect("applied");
        // Edits to messages older than the buffer change nothing cached.
        s.apply(&item(105, Event::MessageDeleted { channel: cid("C1"), seq: 3 })).expect("applied");
        let page = answer(history(&s, "C1", Some(10), None, 50));
        assert_eq!(page.messages[0], edited);
        let tombstone = &page.messages[1];
        assert!(tombstone.deleted && tombstone.text.is_empty() && tombstone.seq == 12);
        // The replay still carries the original events, in order.
        let replay = s.replay_after(&uid("U1"), &cur(100)).expect("covered");
        let kinds: Vec<&str> = replay.iter().map(|f| f.event.kind()).collect();
        assert_eq!(kinds, ["message", "message", "message_changed", "message_deleted", "message_deleted"]);
        check_invariants(&s);
    }

    #[test]
    fn replay_is_exact_while_covered_and_none_once_evicted() {
        let limits =
            CacheLimits { recent_events_per_channel: 3, recent_workspace_events: 2, recent_events_per_user: 16 };
        let mut s = state_with(limits);
        let events = [
            Event::Message(msg("C1", 11, "U1")),
            Event::Message(msg("C2", 4, "U2")),
            Event::UserUpdated { user: user("U4") },
            Event::Message(msg("C1", 12, "U1")),
            Event::Message(msg("D2", 1, "U2")),
            Event::Message(msg("C1", 13, "U1")),
        ];
        for (n, e) in (101..).zip(events.iter()) {
            s.apply(&item(n, e.clone())).expect("applied");
        }
        let frames = |ns: &[u64]| -> Vec<EventFrame> {
            ns.iter().map(|&n| EventFrame { event: events[(n - 101) as usize].clone(), cursor: cur(n) }).collect()
        };
        assert_eq!(s.replay_after(&uid("U1"), &cur(100)), Some(frames(&[101, 102, 103, 104, 106])));
        assert_eq!(s.replay_after(&uid("U1"), &cur(103)), Some(frames(&[104, 106])));
        assert_eq!(s.replay_after(&uid("U3"), &cur(100)), Some(frames(&[101, 103, 104, 105, 106])));
        assert_eq!(s.replay_after(&uid("U1"), &cur(106)), Some(Vec::new()));
        assert_eq!(s.replay_after(&uid("U1"), &cur(900)), Some(Vec::new()));
        assert_eq!(s.replay_after(&uid("U1"), &cur(99)), None, "before the snapshot");
        // C1 now evicts 101: whoever can see C1 cannot replay from before 101 any more.
        s.apply(&item(107, Event::Message(msg("C1", 14, "U1")))).expect("applied");
        assert_eq!(s.replay_after(&uid("U1"), &cur(100)), None);
        // U4 is not in C1, so its eviction does not matter to them.
        assert_eq!(s.replay_after(&uid("U4"), &cur(100)), Some(frames(&[103])));
        assert_eq!(
            s.replay_after(&uid("U1"), &cur(101)).map(|r| frame_cursors(&r)),
            Some(vec![cur(102), cur(103), cur(104), cur(106), cur(107)])
        );
        // A busy private channel does not hurt those who cannot see it.
        for (n, seq) in (108..).zip(5..=9) {
            s.apply(&item(n, Event::Message(msg("C2", seq, "U1")))).expect("applied");
        }
        assert_eq!(s.replay_after(&uid("U1"), &cur(101)), None);
        assert_eq!(
            s.replay_after(&uid("U3"), &cur(104)).map(|r| frame_cursors(&r)),
            Some(vec![cur(105), cur(106), cur(107)])
        );
        // The workspace buffer (2 events) evicts too: 103 goes.
        assert!(s.replay_after(&uid("U3"), &cur(102)).is_some());
        s.apply(&item(113, Event::UserUpdated { user: user("U1") })).expect("applied");
        s.apply(&item(114, Event::UserUpdated { user: user("U2") })).expect("applied");
        assert_eq!(s.replay_after(&uid("U3"), &cur(102)), None);
        let tail = s.replay_after(&uid("U3"), &cur(103)).map(|r| frame_cursors(&r));
        assert_eq!(tail, Some(vec![cur(104), cur(105), cur(106), cur(107), cur(113), cur(114)]));
        check_invariants(&s);
    }

    #[test]
    fn replay_includes_own_departure_from_a_private_channel() {
        let limits = CacheLimits { recent_events_per_user: 2, ..CacheLimits::default() };
        let mut s = state_with(limits);
        s.apply(&item(101, Event::Message(msg("C2", 4, "U1")))).expect("applied");
        s.apply(&item(102, Event::ReadMarker { channel: cid("C2"), user: uid("U2"), seq: 4 })).expect("applied");
        s.apply(&item(103, Event::MemberLeft { channel: cid("C2"), user: uid("U2") })).expect("applied");
        s.apply(&item(104, Event::Message(msg("C2", 5, "U1")))).expect("applied");
        let replay = s.replay_after(&uid("U2"), &cur(100)).expect("covered");
        // The message came while U2 was still a member; the one after their departure did not.
        let kinds: Vec<&str> = replay.iter().map(|f| f.event.kind()).collect();
        assert_eq!(kinds, ["message", "read_marker", "member_left"]);
        assert_eq!(frame_cursors(&replay), [cur(101), cur(102), cur(103)]);
        // U1 sees the departure once, though it sits in two buffers.
        let replay = s.replay_after(&uid("U1"), &cur(100)).expect("covered");
        assert_eq!(frame_cursors(&replay), [cur(101), cur(103), cur(104)]);
        // U2's own buffer holds 2 events: a third evicts 102.
        s.apply(&item(105, Event::ReadMarker { channel: cid("C1"), user: uid("U2"), seq: 1 })).expect("applied");
        assert_eq!(s.replay_after(&uid("U2"), &cur(101)), None);
        assert_eq!(s.replay_after(&uid("U2"), &cur(102)).map(|r| frame_cursors(&r)), Some(vec![cur(103), cur(105)]));
        check_invariants(&s);
    }

    #[test]
    fn read_markers_only_move_forward() {
        let mut s = state();
        let marker = |seq| Event::ReadMarker { channel: cid("C1"), user: uid("U1"), seq };
        assert_eq!(recipients(&mut s, 101, marker(5)), Got::Users(uids(&["U1"])));
        assert_eq!(s.read_seq(&uid("U1"), &cid("C1")), 7, "moving back is ignored");
        recipients(&mut s, 102, marker(9));
        assert_eq!(s.read_seq(&uid("U1"), &cid("C1")), 9);
        recipients(&mut s, 103, marker(8));
        assert_eq!(s.read_seq(&uid("U1"), &cid("C1")), 9);
        let boot = s.boot(&uid("U1")).expect("boots");
        assert_eq!((boot.channels[0].read_seq, boot.channels[0].unread), (9, 1));
        recipients(&mut s, 104, Event::ReadMarker { channel: cid("C3"), user: uid("U1"), seq: 4 });
        assert_eq!(s.read_seq(&uid("U1"), &cid("C3")), 4);
        assert_eq!(s.read_seq(&uid("U2"), &cid("C1")), 0);
        check_invariants(&s);
    }

    #[test]
    fn unread_mentions_are_counted_weighed_and_cleared_by_reading() {
        let mut s = state_with(CacheLimits::default());
        let before = s.weight();
        let named = Message { mentions: uids(&["U1"]), ..msg("C1", 11, "U2") };
        let everyone = Message { mentions_channel: true, ..msg("C1", 12, "U2") };
        s.apply(&item(101, Event::Message(named))).expect("applied");
        s.apply(&item(102, Event::Message(everyone))).expect("applied");
        assert_eq!((s.mention_count(&uid("U1"), &cid("C1")), s.mention_count(&uid("U3"), &cid("C1"))), (2, 1));
        assert_eq!(s.mention_count(&uid("U2"), &cid("C1")), 0, "nobody is mentioned by their own message");
        assert!(s.weight() > before, "the mention maps count in the weight");
        let read = Event::ReadMarker { channel: cid("C1"), user: uid("U1"), seq: 11 };
        s.apply(&item(103, read)).expect("applied");
        assert_eq!(s.mention_count(&uid("U1"), &cid("C1")), 1);
        s.apply(&item(104, Event::MessageDeleted { channel: cid("C1"), seq: 12 })).expect("applied");
        assert_eq!((s.mention_count(&uid("U1"), &cid("C1")), s.mention_count(&uid("U3"), &cid("C1"))), (0, 0));
    }

    #[test]
    fn weight_follows_what_is_held() {
        let limits = CacheLimits { recent_events_per_channel: 4, ..CacheLimits::default() };
        let mut s = state_with(limits);
        let empty = s.weight();
        assert!(empty > 0);
        for (n, seq) in (101..).zip(11..=14) {
            s.apply(&item(n, Event::Message(msg("C1", seq, "U2")))).expect("applied");
        }
        let full = s.weight();
        assert!(full > empty);
        for (n, seq) in (105..).zip(15..=30) {
            s.apply(&item(n, Event::Message(msg("C1", seq, "U2")))).expect("applied");
        }
        assert_eq!(s.weight(), full, "bounded buffers keep the weight bounded");
        check_invariants(&s);
    }

    #[test]
    fn unknown_channels_created_late_do_not_claim_coverage() {
        let mut s = state();
        s.apply(&item(101, Event::Message(msg("C9", 1, "U1")))).expect("applied");
        s.apply(&item(102, Event::ChannelCreated { channel: chan("C9", ChannelKind::Channel, false) }))
            .expect("applied");
        s.apply(&item(103, Event::Message(msg("C9", 2, "U1")))).expect("applied");
        assert_eq!(s.last_seq(&cid("C9")), Some(2));
        // Nobody is in C9, so nobody missed its first message: the creation is all there is.
        let replayed = |after| s.replay_after(&uid("U1"), &cur(after)).map(|r| frame_cursors(&r));
        assert_eq!(replayed(100), Some(vec![cur(102)]));
        assert_eq!(seqs(history(&s, "C9", None, None, 1)), (vec![2], Some("2".into())));
        assert_eq!(history(&s, "C9", None, None, 2), QueryAnswer::NeedsOrigin);
        s.apply(&item(104, Event::MemberJoined { channel: cid("C9"), user: uid("U1") })).expect("applied");
        s.apply(&item(105, Event::Message(msg("C9", 3, "U1")))).expect("applied");
        let replayed = |after| s.replay_after(&uid("U1"), &cur(after)).map(|r| frame_cursors(&r));
        assert_eq!(replayed(100), None, "a member's replay cannot vouch for the dropped message");
        // 103 came before U1 joined.
        assert_eq!(replayed(101), Some(vec![cur(102), cur(104), cur(105)]));
        check_invariants(&s);
    }

    /// Interprets generated numbers as feed events against the current state, so every event
    /// is meaningful (posts in order, joins of existing users...).
    fn event_for(
        s: &WorkspaceState,
        op: (u8, usize, usize, u64),
        channels: &[ChannelId],
        seq_of: &mut HashMap<ChannelId, Seq>,
        fresh: &mut usize,
    ) -> Event {
        let (kind, a, b, n) = op;
        let users = ["U1", "U2", "U3", "U4"];
        let u = uid(users[b % users.len()]);
        let c = channels[a % channels.len()].clone();
        match kind % 10 {
            // Like the origin: a join only of a non-member, a departure only of a member.
            0..=2 if s.is_member(&c, &u) => Event::MemberLeft { channel: c, user: u },
            0..=2 => Event::MemberJoined { channel: c, user: u },
            3 | 4 => {
                let seq = seq_of.entry(c.clone()).or_insert(0);
                *seq += 1;
                Event::Message(Message { channel: c.clone(), ..msg(c.as_str(), *seq, u.as_str()) })
            }
            5 => Event::ReadMarker { channel: c, user: u, seq: n % 8 },
            6 => Event::UserUpdated { user: User { name: format!("renamed {n}"), ..user(u.as_str()) } },
            7 => {
                let mut channel =
                    s.channel(&c).cloned().unwrap_or_else(|| chan(c.as_str(), ChannelKind::Channel, false));
                if channel.kind == ChannelKind::Channel {
                    channel.private = n % 2 == 0;
                }
                Event::ChannelUpdated { channel }
            }
            8 => {
                let seq = seq_of.get(&c).copied().unwrap_or(0);
                if n % 2 == 0 {
                    Event::MessageDeleted { channel: c, seq: seq.saturating_sub(n % 3) }
                } else {
                    Event::ReactionAdded { channel: c, seq, user: u, emoji: "ok".into() }
                }
            }
            _ => {
                *fresh += 1;
                Event::ChannelCreated { channel: chan(&format!("N{fresh}"), ChannelKind::Channel, n % 2 == 0) }
            }
        }
    }

    fn limits_strategy() -> impl Strategy<Value = CacheLimits> {
        prop_oneof![
            Just(CacheLimits {
                recent_events_per_channel: 10_000,
                recent_workspace_events: 10_000,
                recent_events_per_user: 10_000
            }),
            (0usize..5, 0usize..5, 0usize..5).prop_map(|(c, w, u)| CacheLimits {
                recent_events_per_channel: c,
                recent_workspace_events: w,
                recent_events_per_user: u,
            }),
        ]
    }

    /// The users the property test follows (U9 is in no snapshot).
    const WHO: [&str; 5] = ["U1", "U2", "U3", "U4", "U9"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// After any sequence of membership, message and other events, a replay from any earlier
        /// cursor is either refused or exactly the events live fan-out sent the user after it,
        /// in order; with buffers large enough it is never refused. History pages answered from the cache
        /// equal the messages as applied.
        #[test]
        fn replay_equals_what_live_fan_out_sent(
            limits in limits_strategy(),
            ops in prop::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<u64>()), 0..60),
        ) {
            let unbounded = limits.recent_events_per_channel == 10_000;
            let mut base = snapshot();
            // All channels start empty, so the message buffers can hold all of history.
            for cs in &mut base.channels {
                cs.last_seq = 0;
            }
            let mut s = WorkspaceState::from_snapshot(base, limits);
            let mut channels: Vec<ChannelId> = ["C1", "C2", "C3", "D1", "G1", "D2"].into_iter().map(cid).collect();
            let mut seq_of = HashMap::new();
            let mut fresh = 0;
            let mut applied: Vec<(Cursor, Event, Vec<UserId>)> = Vec::new();
            let mut history: HashMap<ChannelId, Vec<Message>> = HashMap::new();
            for (i, op) in ops.into_iter().enumerate() {
                let mut events = vec![event_for(&s, op, &channels, &mut seq_of, &mut fresh)];
                // Some messages are thread replies to their channel's first message: the origin
                // logs the root's new summary, naming the thread's followers, right before each.
                if let Event::Message(m) = &mut events[0] {
                    if m.seq > 1 && op.3 % 3 == 0 {
                        m.thread_root = Some(1);
                        let followers: Vec<UserId> =
                            WHO.iter().enumerate().filter(|(k, _)| op.3 >> (k + 2) & 1 == 1).map(|(_, w)| uid(w)).collect();
                        m.thread_followers = followers.clone();
                        let root = Message {
                            latest_reply_seq: Some(m.seq),
                            reply_count: 1,
                            thread_followers: followers,
                            ..msg(m.channel.as_str(), 1, "U1")
                        };
                        let changed = Event::MessageChanged { channel: m.channel.clone(), seq: 1, message: root };
                        events.insert(0, changed);
                    }
                }
                for event in events {
                let cursor = cur(101 + applied.len() as u64);
                if let Event::ChannelCreated { channel } = &event {
                    channels.push(channel.id.clone());
                }
                match &event {
                    Event::Message(m) => history.entry(m.channel.clone()).or_default().push(m.clone()),
                    Event::MessageChanged { channel, seq, message } => {
                        if let Some(m) = history.get_mut(channel).and_then(|h| h.iter_mut().find(|m| m.seq == *seq)) {
                            *m = Message { seq: *seq, channel: channel.clone(), ..message.clone() };
                        }
                    }
                    Event::MessageDeleted { channel, seq } => {
                        if let Some(m) = history.get_mut(channel).and_then(|h| h.iter_mut().find(|m| m.seq == *seq)) {
                            m.deleted = true;
                            m.text.clear();
                            m.reactions.clear();
                        }
                    }
                    Event::ReactionAdded { channel, seq, user, emoji } => {
                        if let Some(m) = history.get_mut(channel).and_then(|h| h.iter_mut().find(|m| m.seq == *seq)) {
                            if !m.reactions.iter().any(|r| r.emoji == *emoji && r.users.contains(user)) {
                                match m.reactions.iter_mut().find(|r| r.emoji == *emoji) {
                                    Some(r) => r.users.push(user.clone()),
                                    None => m.reactions.push(selvage_shared::Reaction { emoji: emoji.clone(), count: 0, users: vec![user.clone()] }),
                                }
                                for r in &mut m.reactions {
                                    r.count = r.users.len() as u32;
                                }
                            }
                        }
                    }
                    _ => {}
                }
                let applied_now = s.apply(&FeedItem { cursor: cursor.clone(), workspace: ws_id(), ts: 0, event: event.clone() });
                let Some(applied_now) = applied_now else { return Err(TestCaseError::fail("not applied")) };
                // Ephemeral noise in between changes nothing.
                let typing = Event::Typing { channel: channels[i % channels.len()].clone(), user: uid("U1") };
                let typing = FeedItem { cursor: cur(1), workspace: ws_id(), ts: 0, event: typing };
                prop_assert!(s.apply(&typing).is_some());
                let got: Vec<UserId> = WHO.iter().map(|w| uid(w)).filter(|w| s.receives(&applied_now.recipients, w)).collect();
                applied.push((cursor, event, got));
                }
            }
            check_invariants(&s);
            let newest = applied.last().map_or(cur(100), |(c, _, _)| c.clone());
            prop_assert_eq!(s.cursor(), &newest);

            for who in WHO {
                let who = uid(who);
                for k in 0..=applied.len() {
                    let after = cur(100 + k as u64);
                    let expected: Vec<EventFrame> = applied[k..]
                        .iter()
                        .filter(|(_, _, got)| got.contains(&who))
                        .map(|(c, e, _)| EventFrame { event: e.clone(), cursor: c.clone() })
                        .collect();
                    match s.replay_after(&who, &after) {
                        Some(frames) => prop_assert_eq!(frames, expected, "user {} after {}", who, k),
                        None => prop_assert!(!unbounded, "unbounded buffers refused a replay"),
                    }
                }
                prop_assert_eq!(s.replay_after(&who, &cur(99)), None);
            }

            for c in &channels {
                let all = history.get(c).cloned().unwrap_or_default();
                let last = all.len() as u64;
                let pages = [(None, None, 50), (Some(0), None, 3), (None, Some(last), 2), (Some(last / 2), Some(last), 1000)];
                for (after, before, limit) in pages {
                    let q = Query { after, before, limit: Some(limit), ..query(QueryKind::History) };
                    let q = Query { channel: Some(c.clone()), ..q };
                    match s.query(&uid("U1"), &q) {
                        QueryAnswer::Answer(result) => {
                            let lo = after.unwrap_or(0);
                            let hi = before.map_or(last, |b| b.saturating_sub(1).min(last));
                            let range: Vec<&Message> = all.iter().filter(|m| m.seq > lo && m.seq <= hi).collect();
                            let want: Vec<Message> = if after.is_some() {
                                range.iter().take(limit as usize).map(|m| (*m).clone()).collect()
                            } else {
                                range.iter().skip(range.len().saturating_sub(limit as usize)).map(|m| (*m).clone()).collect()
                            };
                            prop_assert_eq!(result.messages, want);
                        }
                        QueryAnswer::NeedsOrigin => prop_assert!(!unbounded, "unbounded buffers sent history to the origin"),
                        QueryAnswer::Refused { code, .. } => {
                            prop_assert_eq!(code, ErrorCode::NotFound);
                            prop_assert!(!s.can_see_channel(&uid("U1"), c));
                        }
                    }
                }
            }
        }
    }
}
