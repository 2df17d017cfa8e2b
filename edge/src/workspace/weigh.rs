//! What a workspace's state weighs: a running estimate of the bytes it holds, kept by every
//! change, which bounds the cache of workspaces (`cache.max_bytes`, ARCHITECTURE §3).

use std::collections::{BTreeSet, HashMap};
use std::mem::size_of;

use selvage_shared::{Channel, ChannelId, Cursor, Event, Message, Seq, User, UserId, Workspace, POSITION_LEN};

use super::{buffers::EventBuffer, ChannelEntry, Orphan, WorkspaceState};

/// Bytes added and removed by one change, for the weight estimate.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Delta {
    pub(super) added: usize,
    pub(super) removed: usize,
}

impl Delta {
    pub(super) fn add(&mut self, n: usize) {
        self.added += n;
    }

    pub(super) fn sub(&mut self, n: usize) {
        self.removed += n;
    }

    pub(super) fn apply_to(self, bytes: &mut usize) {
        *bytes = bytes.saturating_add(self.added).saturating_sub(self.removed);
    }
}

impl WorkspaceState {
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
    pub(super) fn recompute_bytes(&self) -> usize {
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

// Size estimates for `weight`. Approximate by design: heap bytes of strings plus the inline size
// of each value and a guessed per-slot overhead for maps and sets.

/// Guessed overhead of one map or set slot (hashing, tree nodes, spare capacity).
const SLOT_OVERHEAD: usize = 32;

/// Heap bytes of a cursor's string.
const CURSOR_HEAP: usize = 2 * POSITION_LEN;

pub(super) fn id_bytes(id: &str) -> usize {
    size_of::<String>() + id.len()
}

pub(super) fn set_slot_bytes(id: &str) -> usize {
    SLOT_OVERHEAD + id_bytes(id)
}

pub(super) fn base_bytes(workspace: &Workspace) -> usize {
    size_of::<WorkspaceState>() + workspace.id.as_str().len() + workspace.name.len() + 3 * CURSOR_HEAP
}

pub(super) fn user_heap(user: &User) -> usize {
    user.id.as_str().len() + user.handle.len() + user.name.len()
}

pub(super) fn user_entry_bytes(user: &User) -> usize {
    SLOT_OVERHEAD + id_bytes(user.id.as_str()) + size_of::<User>() + user_heap(user)
}

pub(super) fn channel_heap(channel: &Channel) -> usize {
    channel.id.as_str().len()
        + channel.name.len()
        + channel.topic.len()
        + channel.purpose.len()
        + channel.created_by.as_str().len()
}

pub(super) fn channel_entry_bytes(channel: &Channel) -> usize {
    SLOT_OVERHEAD + id_bytes(channel.id.as_str()) + size_of::<ChannelEntry>() + channel_heap(channel) + CURSOR_HEAP
}

pub(super) fn joined_entry_bytes(user: &UserId) -> usize {
    SLOT_OVERHEAD + id_bytes(user.as_str()) + size_of::<BTreeSet<ChannelId>>()
}

pub(super) fn markers_entry_bytes(user: &UserId) -> usize {
    SLOT_OVERHEAD + id_bytes(user.as_str()) + size_of::<HashMap<ChannelId, Seq>>()
}

pub(super) fn marker_bytes(channel: &ChannelId) -> usize {
    SLOT_OVERHEAD + id_bytes(channel.as_str()) + size_of::<Seq>()
}

pub(super) fn personal_entry_bytes(user: &UserId) -> usize {
    SLOT_OVERHEAD + id_bytes(user.as_str()) + size_of::<EventBuffer>() + CURSOR_HEAP
}

pub(super) fn orphan_entry_bytes(channel: &ChannelId) -> usize {
    SLOT_OVERHEAD + id_bytes(channel.as_str()) + size_of::<Orphan>() + CURSOR_HEAP
}

pub(super) fn message_heap(message: &Message) -> usize {
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

pub(super) fn message_entry_bytes(message: &Message) -> usize {
    size_of::<Message>() + message_heap(message)
}

pub(super) fn event_heap(event: &Event) -> usize {
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
        Event::EphemeralMessage { channel, user, from, text, .. } => {
            channel.as_str().len() + user.as_str().len() + from.as_str().len() + text.len()
        }
    }
}

pub(super) fn event_entry_bytes(event: &Event) -> usize {
    size_of::<(Cursor, Event)>() + CURSOR_HEAP + event_heap(event)
}

#[cfg(test)]
mod tests {
    use selvage_shared::Event;

    use super::super::fixtures::*;
    use super::super::CacheLimits;

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
}
