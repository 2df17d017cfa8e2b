//! The state machine: a workspace's state built from a snapshot, then moved only by applying
//! feed events in log order, each saying who among the connected users should get it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use selvage_shared::link::{ChannelState, WorkspaceSnapshot};
use selvage_shared::{Channel, ChannelId, Cursor, Event, FeedItem, Message, Seq, User, UserId, Workspace, WorkspaceId};

use super::buffers::{EventBuffer, MessageBuffer};
use super::weigh::*;
use super::{Applied, CacheLimits, ChannelEntry, Orphan, Recipients, WorkspaceState};

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
pub(super) fn reply_audience(message: &Message) -> Option<Vec<UserId>> {
    if message.thread_root.is_none() || message.thread_followers.is_empty() {
        return None;
    }
    let mut audience = message.thread_followers.clone();
    audience.extend(message.mentions.iter().filter(|u| !message.thread_followers.contains(u)).cloned());
    Some(audience)
}

/// Whether only members may see the channel: private channels and every DM and group DM.
/// (The origin creates DMs private; treating them as private regardless is the safe reading.)
pub(super) fn restricted(channel: &Channel) -> bool {
    channel.private || channel.is_conversation()
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
                Event::EphemeralMessage { user, .. } => Recipients::User(user.clone()),
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
            Event::Typing { .. } | Event::PresenceChange { .. } | Event::EphemeralMessage { .. } => Recipients::Nobody,
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
}

#[cfg(test)]
mod tests {
    use selvage_shared::{Channel, ChannelKind, Presence};

    use super::super::fixtures::*;
    use super::*;

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
}
