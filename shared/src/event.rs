//! The event model: everything that happens in a workspace, as the origin logs it, streams it to
//! edges and the edges push it to clients.
//!
//! An [`Event`] is an object tagged by `"type"`. The origin appends durable events to the feed log
//! as [`FeedEvent`]s (keyed by versionstamp) and streams them to edges as [`FeedItem`]s; edges wrap
//! them with their cursor in a [`crate::EventFrame`] for clients. Ephemeral events (typing,
//! presence) travel the same paths but are never logged; internal events never reach clients.

use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, Cursor, Seq, UserId, WorkspaceId};
use crate::model::{Channel, Message, Presence, User};

/// Something that happened in a workspace.
///
/// On the wire: `{"type": "<kind>", ...fields}`; for [`Event::Message`] the message's own fields
/// sit next to `"type"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A new message was posted.
    Message(Message),
    /// A message was edited; `message` is its new state.
    MessageChanged {
        /// The message's channel.
        channel: ChannelId,
        /// The message's `seq`.
        seq: Seq,
        /// The message after the change.
        message: Message,
    },
    /// A message was deleted (its `seq` stays taken).
    MessageDeleted {
        /// The message's channel.
        channel: ChannelId,
        /// The message's `seq`.
        seq: Seq,
    },
    /// A user reacted to a message.
    ReactionAdded {
        /// The message's channel.
        channel: ChannelId,
        /// The message's `seq`.
        seq: Seq,
        /// Who reacted.
        user: UserId,
        /// The emoji name, e.g. `thumbsup`.
        emoji: String,
    },
    /// A user took back a reaction.
    ReactionRemoved {
        /// The message's channel.
        channel: ChannelId,
        /// The message's `seq`.
        seq: Seq,
        /// Who had reacted.
        user: UserId,
        /// The emoji name.
        emoji: String,
    },
    /// A user joined (or was added to) a channel.
    MemberJoined {
        /// The channel.
        channel: ChannelId,
        /// The new member.
        user: UserId,
    },
    /// A user left (or was removed from) a channel.
    MemberLeft {
        /// The channel.
        channel: ChannelId,
        /// The former member.
        user: UserId,
    },
    /// A channel, DM or group DM was created.
    ChannelCreated {
        /// The new channel.
        channel: Channel,
    },
    /// A channel's name, topic, purpose, privacy or archival changed.
    ChannelUpdated {
        /// The channel after the change.
        channel: Channel,
    },
    /// A user's profile, role or activation changed.
    UserUpdated {
        /// The user after the change.
        user: User,
    },
    /// A user's read marker moved (sent to that user's other sessions).
    ReadMarker {
        /// The channel.
        channel: ChannelId,
        /// Whose marker.
        user: UserId,
        /// The last `seq` read.
        seq: Seq,
    },
    /// A user is typing in a channel. Ephemeral.
    Typing {
        /// The channel.
        channel: ChannelId,
        /// Who is typing.
        user: UserId,
    },
    /// A user's presence changed. Ephemeral.
    PresenceChange {
        /// Whose presence.
        user: UserId,
        /// The new presence.
        presence: Presence,
    },
    /// A message only `user` sees, in `channel`: an app's private answer to a slash command.
    /// Ephemeral: never logged, never in history, gone when the client reloads.
    EphemeralMessage {
        /// The channel it is shown in.
        channel: ChannelId,
        /// The one user who sees it.
        user: UserId,
        /// Who says it (the app's bot user).
        from: UserId,
        /// The text.
        text: String,
        /// When it was made, ms since the epoch.
        ts: i64,
    },
    /// A token was revoked: edges drop it from their token caches and close its sessions.
    /// Internal: never sent to clients.
    TokenRevoked {
        /// Lowercase hex SHA-256 of the token (tokens are never stored or sent in clear).
        token_hash: String,
    },
}

impl Event {
    /// The channel the event belongs to, if any: decides who may see it (members only for private
    /// channels and DMs).
    pub fn channel(&self) -> Option<&ChannelId> {
        match self {
            Event::Message(m) => Some(&m.channel),
            Event::MessageChanged { channel, .. }
            | Event::MessageDeleted { channel, .. }
            | Event::ReactionAdded { channel, .. }
            | Event::ReactionRemoved { channel, .. }
            | Event::MemberJoined { channel, .. }
            | Event::MemberLeft { channel, .. }
            | Event::ReadMarker { channel, .. }
            | Event::Typing { channel, .. }
            | Event::EphemeralMessage { channel, .. } => Some(channel),
            Event::ChannelCreated { channel } | Event::ChannelUpdated { channel } => Some(&channel.id),
            Event::UserUpdated { .. } | Event::PresenceChange { .. } | Event::TokenRevoked { .. } => None,
        }
    }

    /// Whether the event is ephemeral (typing, presence, ephemeral messages): never logged, first
    /// to be dropped for a slow consumer.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self, Event::Typing { .. } | Event::PresenceChange { .. } | Event::EphemeralMessage { .. })
    }

    /// Whether the event is internal to Selvage (token revocation) and must never reach a client.
    pub fn is_internal(&self) -> bool {
        matches!(self, Event::TokenRevoked { .. })
    }

    /// The event's `"type"` string on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Message(_) => "message",
            Event::MessageChanged { .. } => "message_changed",
            Event::MessageDeleted { .. } => "message_deleted",
            Event::ReactionAdded { .. } => "reaction_added",
            Event::ReactionRemoved { .. } => "reaction_removed",
            Event::MemberJoined { .. } => "member_joined",
            Event::MemberLeft { .. } => "member_left",
            Event::ChannelCreated { .. } => "channel_created",
            Event::ChannelUpdated { .. } => "channel_updated",
            Event::UserUpdated { .. } => "user_updated",
            Event::ReadMarker { .. } => "read_marker",
            Event::Typing { .. } => "typing",
            Event::PresenceChange { .. } => "presence_change",
            Event::EphemeralMessage { .. } => "ephemeral_message",
            Event::TokenRevoked { .. } => "token_revoked",
        }
    }
}

/// One entry of the origin's feed log, stored under `(log, versionstamp)` as MessagePack with
/// named fields. The versionstamp (hence the cursor) is the key, not part of the value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// The workspace the event happened in.
    pub workspace: WorkspaceId,
    /// When the origin committed it, ms since the epoch.
    pub ts: i64,
    /// What happened.
    pub event: Event,
}

/// A feed log entry as the origin streams it to edges: the event with its cursor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedItem {
    /// The entry's position in the feed.
    pub cursor: Cursor,
    /// The workspace the event happened in.
    pub workspace: WorkspaceId,
    /// When the event was committed (ms since the epoch); edges measure feed lag with it.
    #[serde(default)]
    pub ts: i64,
    /// What happened.
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_matches_serde_tag() {
        let events = [
            Event::Typing { channel: ChannelId::new_unchecked("C1"), user: UserId::new_unchecked("U1") },
            Event::PresenceChange { user: UserId::new_unchecked("U1"), presence: Presence::Away },
            Event::TokenRevoked { token_hash: "ab".into() },
            Event::MemberLeft { channel: ChannelId::new_unchecked("C1"), user: UserId::new_unchecked("U1") },
        ];
        for e in &events {
            let v = serde_json::to_value(e).unwrap();
            assert_eq!(v["type"], e.kind());
        }
        assert!(events[0].is_ephemeral() && events[1].is_ephemeral());
        assert!(!events[3].is_ephemeral() && events[2].is_internal());
        assert_eq!(events[0].channel().map(|c| c.as_str()), Some("C1"));
        assert_eq!(events[1].channel(), None);
    }
}
