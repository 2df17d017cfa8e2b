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
    /// Deactivated users cannot connect or post; their history remains. Clients leave them out
    /// of mention autocomplete; `@here` never reaches them.
    #[serde(default)]
    pub deactivated: bool,
    /// Tokens issued before this instant (ms since the epoch) no longer work: set when the user
    /// is deactivated, so that reactivating them revives none of their old tokens. 0: none.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub tokens_valid_from: i64,
    /// Creation time, ms since the epoch.
    #[serde(default)]
    pub created_at: i64,
    /// The app this user is the bot user of; `None` for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<crate::ids::AppId>,
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
    /// Users mentioned with `<@U…>`, each once, in the order they first appear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// The text mentions `@channel` (`<!channel>`): every member.
    #[serde(default, skip_serializing_if = "is_false")]
    pub mentions_channel: bool,
    /// The text mentions `@here` (`<!here>`): every member with an active session when it was
    /// posted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub mentions_here: bool,
    /// Who `@here` reached: the members other than the author with an active session when
    /// the message was posted (at most [`crate::mentions::MAX_HERE`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions_here_users: Vec<UserId>,
    /// Reactions, by the time each emoji was first used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// For a thread's root: how many replies it has (deleted ones not counted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reply_count: u32,
    /// For a thread's root: when the newest reply was posted, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_reply: Option<i64>,
    /// For a thread's root: the `seq` of the newest reply. Reply events go only to the thread's
    /// followers, so this is how everyone else in the channel learns which `seq`s are replies
    /// rather than gaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_reply_seq: Option<Seq>,
    /// For a thread's root: who replied, in the order of their first reply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_users: Vec<UserId>,
    /// For a thread's root: who gets its replies — the root's author and everyone who replied,
    /// unless they unfollowed, and everyone who chose to follow it. For a reply: those it went
    /// to (the thread's followers when it was posted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thread_followers: Vec<UserId>,
    /// Files shared with the message (ARCHITECTURE §8 "Files"): what a client shows; the bytes
    /// are fetched from the origin's `GET /v1/files/{id}`. Absent when there are none, so the
    /// wire stays as it was for messages without files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRef>,
}

/// A file as a message carries it: its identity and what a client shows before downloading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The file's id (`F…`).
    pub id: String,
    /// Its name, as sanitised by the origin.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type, as declared by the uploader.
    pub content_type: String,
    /// Thumbnails of an image, smallest first, once the origin's thumbnail worker has made them
    /// (a `message_changed` event fills them in); fetched from `GET /v1/files/{id}` or
    /// `GET /v1/files/{id}/thumbs/{size}`. Absent for other files, for images it could not
    /// read, and until they are made, so the wire stays as it was for messages without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thumbs: Vec<Thumb>,
}

/// One thumbnail of an image file: the box it was made for and its real dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thumb {
    /// The longest side it was made to fit, in pixels (one of the origin's `files.thumb_sizes`).
    pub size: u32,
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels. The longer of width and height is `size`, or less for an image
    /// smaller than that: an image is never enlarged.
    pub height: u32,
}

impl Message {
    /// A new top-level message with nothing but its identity, author and text set; fill in the
    /// rest with struct update syntax.
    pub fn new(channel: ChannelId, seq: Seq, ts: i64, user: UserId, text: impl Into<String>) -> Message {
        Message {
            channel,
            seq,
            ts,
            user,
            text: text.into(),
            client_msg_id: String::new(),
            thread_root: None,
            edited_at: None,
            deleted: false,
            mentions: Vec::new(),
            mentions_channel: false,
            mentions_here: false,
            mentions_here_users: Vec::new(),
            reactions: Vec::new(),
            reply_count: 0,
            latest_reply: None,
            latest_reply_seq: None,
            reply_users: Vec::new(),
            thread_followers: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Whether the message mentions `user` — by name, through `@channel`, or through `@here`
    /// while they were active — and is not theirs (nobody is notified of their own message).
    pub fn mentions_user(&self, user: &UserId) -> bool {
        self.user != *user
            && !self.deleted
            && (self.mentions_channel || self.mentions.contains(user) || self.mentions_here_users.contains(user))
    }

    /// Adds (`add`) or takes back `user`'s reaction `emoji`, as a fresh read would show it
    /// afterwards: a new emoji goes last, users in the order they reacted, an emoji nobody uses
    /// any more goes away. Idempotent both ways. The origin and edge caches share this rule.
    pub fn apply_reaction(&mut self, user: &UserId, emoji: &str, add: bool) {
        let slot = self.reactions.iter_mut().position(|r| r.emoji == emoji);
        match (slot, add) {
            (Some(i), true) => {
                let r = &mut self.reactions[i];
                if !r.users.contains(user) {
                    r.users.push(user.clone());
                    r.count = r.users.len() as u32;
                }
            }
            (None, true) => {
                self.reactions.push(Reaction { emoji: emoji.to_string(), count: 1, users: vec![user.clone()] })
            }
            (Some(i), false) => {
                let r = &mut self.reactions[i];
                r.users.retain(|u| u != user);
                r.count = r.users.len() as u32;
                if r.users.is_empty() {
                    self.reactions.remove(i);
                }
            }
            (None, false) => {}
        }
    }

    /// Turns the message into the tombstone a delete leaves: same `seq`, no text, mentions or
    /// reactions.
    pub fn make_tombstone(&mut self) {
        self.text = String::new();
        self.deleted = true;
        self.mentions.clear();
        self.mentions_channel = false;
        self.mentions_here = false;
        self.mentions_here_users.clear();
        self.reactions.clear();
        self.files.clear();
    }
}

/// One emoji's reactions to a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The emoji's name, e.g. `thumbsup`.
    pub emoji: String,
    /// How many users reacted with it (`users.len()`).
    pub count: u32,
    /// Who reacted, in the order they did.
    pub users: Vec<UserId>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
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

    #[test]
    fn files_are_on_the_wire_only_when_there_are_some() {
        let plain = Message::new(ChannelId::new_unchecked("C1"), 1, 5, UserId::new_unchecked("U1"), "hi");
        assert!(!serde_json::to_string(&plain).unwrap().contains("files"));
        let file = FileRef {
            id: "F1".into(),
            name: "a.png".into(),
            size: 3,
            content_type: "image/png".into(),
            thumbs: Vec::new(),
        };
        let mut shared = Message { files: vec![file.clone()], ..plain };
        let json = serde_json::to_string(&shared).unwrap();
        assert!(json.contains(r#""files":[{"id":"F1","name":"a.png","size":3,"content_type":"image/png"}]"#), "{json}");
        let back: Message = crate::from_msgpack(&crate::to_msgpack(&shared)).unwrap();
        assert_eq!(back.files, vec![file]);
        shared.make_tombstone();
        assert!(shared.files.is_empty(), "a tombstone carries no files");
    }

    #[test]
    fn thumbs_are_on_the_wire_only_once_made() {
        let file = FileRef {
            id: "F1".into(),
            name: "a.png".into(),
            size: 3,
            content_type: "image/png".into(),
            thumbs: Vec::new(),
        };
        assert!(!serde_json::to_string(&file).unwrap().contains("thumbs"));
        let older: FileRef =
            serde_json::from_str(r#"{"id":"F1","name":"a.png","size":3,"content_type":"image/png"}"#).unwrap();
        assert_eq!(older, file, "a file reference written before thumbnails decodes");
        let made = FileRef { thumbs: vec![Thumb { size: 360, width: 360, height: 240 }], ..file };
        let json = serde_json::to_string(&made).unwrap();
        assert!(json.ends_with(r#""thumbs":[{"size":360,"width":360,"height":240}]}"#), "{json}");
        let back: FileRef = crate::from_msgpack(&crate::to_msgpack(&made)).unwrap();
        assert_eq!(back, made);
    }
}
