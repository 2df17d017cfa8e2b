//! The data model: workspaces, users, channels, messages and presence, as they travel in events,
//! frames and API responses and as the origin stores them (MessagePack with named fields).
//!
//! Field names are the wire names. Fields that are optional, or that a later version may add,
//! carry `#[serde(default)]` so older data still decodes; `None` options are left out when
//! encoding. Timestamps are milliseconds since the Unix epoch everywhere.

use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, Seq, UserId, WorkspaceId};

/// A workspace: one tenant with its own users and channels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    /// The workspace's id.
    pub id: WorkspaceId,
    /// Display name.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
}

/// A user of one workspace (people and bots alike).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// Unique handle within the workspace (what `@mentions` use).
    pub handle: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Workspace administrator.
    #[serde(default)]
    pub admin: bool,
    /// Deactivated users cannot connect or post; their history remains.
    #[serde(default)]
    pub deactivated: bool,
    /// Creation time, ms since the epoch.
    #[serde(default)]
    pub created_at: i64,
}

/// What sort of conversation a [`Channel`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A named channel, public or private.
    #[default]
    Channel,
    /// A direct message between two users (or a user and themself).
    Dm,
    /// A direct conversation among three or more users.
    GroupDm,
}

/// A channel, DM or group DM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    /// The channel's id.
    pub id: ChannelId,
    /// Name, unique within the workspace for named channels; empty or generated for DMs.
    #[serde(default)]
    pub name: String,
    /// Channel, DM or group DM.
    #[serde(default)]
    pub kind: ChannelKind,
    /// Private channels (and all DMs) are invisible to non-members everywhere.
    #[serde(default)]
    pub private: bool,
    /// Archived channels are read-only.
    #[serde(default)]
    pub archived: bool,
    /// Short topic shown in the channel header.
    #[serde(default)]
    pub topic: String,
    /// Longer description of what the channel is for.
    #[serde(default)]
    pub purpose: String,
    /// The user who created the channel.
    pub created_by: UserId,
    /// Creation time, ms since the epoch.
    #[serde(default)]
    pub created_at: i64,
}

impl Channel {
    /// Whether this is a direct conversation (DM or group DM) rather than a named channel.
    pub fn is_conversation(&self) -> bool {
        matches!(self.kind, ChannelKind::Dm | ChannelKind::GroupDm)
    }
}

/// A message in a channel, identified by `(channel, seq)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The channel the message was posted in.
    pub channel: ChannelId,
    /// Position in the channel's total order, assigned by the origin at commit.
    pub seq: Seq,
    /// Commit time, ms since the epoch (informational; order by `seq`).
    pub ts: i64,
    /// The author.
    pub user: UserId,
    /// The text; empty once deleted.
    #[serde(default)]
    pub text: String,
    /// The sender's idempotency key: a retried send with the same key gets the same `seq`.
    #[serde(default)]
    pub client_msg_id: String,
    /// The `seq` of the thread's first message when this is a thread reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_root: Option<Seq>,
    /// Time of the last edit, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    /// Deleted messages keep their `seq` (so clients see no gap) but lose their text.
    #[serde(default)]
    pub deleted: bool,
}

/// A user's presence as other users see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Connected and recently active.
    Active,
    /// Connected but idle.
    Away,
    /// Do not disturb.
    Dnd,
    /// Not connected.
    #[default]
    Offline,
}

/// A channel as `hello` (and a `channels` query) lists it: the channel plus the caller's position
/// in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelBoot {
    /// The channel.
    pub channel: Channel,
    /// The channel's latest `seq` (0 when empty).
    #[serde(default)]
    pub last_seq: Seq,
    /// The caller's read marker: the last `seq` they have read.
    #[serde(default)]
    pub read_seq: Seq,
    /// Messages after `read_seq`.
    #[serde(default)]
    pub unread: u64,
    /// Unread messages that mention the caller.
    #[serde(default)]
    pub mentions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_snake_case() {
        assert_eq!(serde_json::to_string(&ChannelKind::GroupDm).unwrap(), "\"group_dm\"");
        assert_eq!(serde_json::to_string(&Presence::Dnd).unwrap(), "\"dnd\"");
    }

    #[test]
    fn older_records_decode_with_defaults() {
        let c: Channel = serde_json::from_str(r#"{"id":"C1","created_by":"U1"}"#).unwrap();
        assert_eq!(c.kind, ChannelKind::Channel);
        assert!(!c.is_conversation());
        let m: Message = serde_json::from_str(r#"{"channel":"C1","seq":3,"ts":5,"user":"U1","extra":1}"#).unwrap();
        assert_eq!((m.thread_root, m.edited_at, m.deleted), (None, None, false));
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("thread_root") && !json.contains("edited_at"), "{json}");
    }
}
