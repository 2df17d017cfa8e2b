//! The origin ↔ edge link (ARCHITECTURE §2 "The feed", §3).
//!
//! An edge holds one QUIC connection to its origin (ALPN [`LINK_ALPN`]). Every bidirectional
//! stream the edge opens starts with a [`LinkOpen`] naming what the stream is for and carrying
//! the edge key; every frame on it, both ways, is a 4-byte big-endian length followed by that
//! many bytes of MessagePack (named fields), at most [`MAX_LINK_FRAME_BYTES`].
//!
//! - A **feed** stream ([`LinkStream::Feed`]): the origin streams [`crate::FeedFrame`]s — every
//!   event after the edge's cursor, in log order, then new ones as they commit, with heartbeats
//!   while the log is quiet, or one `resync` when the cursor is older than the trim point.
//! - A **call** stream ([`LinkStream::Calls`]): the edge writes [`LinkCall`]s, the origin answers
//!   each with a [`LinkReply`] carrying the same `id`. Calls are answered concurrently, so
//!   replies may come back in any order; one stream carries many calls at once.
//!
//! The origin refuses a stream whose key is wrong by answering one [`LinkReply`] with id 0 and
//! an `unauthorized` error, then finishing the stream.

use serde::{Deserialize, Serialize};

use crate::api::{SearchPage, SearchSort};
use crate::codec::DecodeError;
use crate::error::ErrorCode;
use crate::event::{Event, FeedItem};
use crate::ids::{ChannelId, Cursor, Seq, UserId, WorkspaceId};
use crate::model::{Channel, Message, Presence, User, Workspace};
use crate::notify::NotifyPrefs;

/// ALPN of the origin ↔ edge link.
pub const LINK_ALPN: &[u8] = b"selvage-link/1";

/// ALPN of client QUIC connections to an edge (ARCHITECTURE §4).
pub const CLIENT_ALPN: &[u8] = b"selvage/1";

/// Largest frame on the link (a workspace snapshot can be large).
pub const MAX_LINK_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The first frame of every stream an edge opens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkOpen {
    /// [`crate::PROTOCOL_VERSION`] of the edge.
    pub protocol: u32,
    /// The shared secret that lets an edge use the link (origin config `link.edge_key`).
    pub edge_key: String,
    /// The edge's name, for logs and metrics.
    pub edge_id: String,
    /// What the stream carries.
    pub stream: LinkStream,
}

/// What a link stream carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LinkStream {
    /// The feed after `cursor` (or from the newest event when `None`).
    Feed {
        /// Where the edge left off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
    },
    /// Calls and their replies.
    Calls,
}

/// One request of the edge to the origin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkCall {
    /// Chosen by the edge, unique among its calls in flight on the stream; never 0.
    pub id: u64,
    /// What is asked.
    pub call: Call,
}

/// What an edge can ask its origin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// Who a token is: the hex SHA-256 of the bearer token (the token itself never crosses).
    Authenticate {
        /// Lower-case hex of SHA-256(token).
        token_hash: String,
    },
    /// A workspace's state and the cursor it is consistent with, read in one transaction.
    Snapshot {
        /// The workspace.
        workspace: WorkspaceId,
    },
    /// Sequence a message on behalf of `user` (checked for membership inside the commit).
    Send {
        /// The sender's workspace.
        workspace: WorkspaceId,
        /// The sender.
        user: UserId,
        /// The channel.
        channel: ChannelId,
        /// The text.
        text: String,
        /// The client's id for the message, for dedup.
        client_msg_id: String,
        /// The thread's root, for a reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_root: Option<Seq>,
    },
    /// A page of a channel's history as `user` may see it (oldest first).
    History {
        /// The workspace.
        workspace: WorkspaceId,
        /// Whose view.
        user: UserId,
        /// The channel.
        channel: ChannelId,
        /// Only seqs below this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<Seq>,
        /// Only seqs above this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Seq>,
        /// At most this many (1..=1000).
        limit: u32,
    },
    /// A page of the replies to a thread's root as `user` may see it (oldest first; paged
    /// like [`Call::History`], the root itself not included).
    Thread {
        /// The workspace.
        workspace: WorkspaceId,
        /// Whose view.
        user: UserId,
        /// The channel.
        channel: ChannelId,
        /// The root message's seq.
        root: Seq,
        /// Only reply seqs below this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<Seq>,
        /// Only reply seqs above this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Seq>,
        /// At most this many (1..=1000).
        limit: u32,
    },
    /// A page of the messages `user` may read that match `text` (a client's `search` query):
    /// the origin holds the index and checks every hit against the store.
    Search {
        /// The workspace.
        workspace: WorkspaceId,
        /// Whose view.
        user: UserId,
        /// What to search for, in the search query language.
        text: String,
        /// Best match or newest first.
        #[serde(default)]
        sort: SearchSort,
        /// At most this many (1..=100; the origin's default when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// The `next_cursor` of the page before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page: Option<String>,
        /// A feed cursor the index should cover first (read your writes; bounded wait).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_for: Option<Cursor>,
    },
    /// Move `user`'s read marker in `channel` forward to `seq` (a client's `mark_read`).
    MarkRead {
        /// The workspace.
        workspace: WorkspaceId,
        /// Whose marker.
        user: UserId,
        /// The channel.
        channel: ChannelId,
        /// The last seq read.
        seq: Seq,
    },
    /// What this edge sees of some users' sessions (changes, and every few seconds all of them
    /// again to renew the origin's lease): the origin combines every edge's view into each
    /// user's presence and tells every edge when it changes. A user the edge stops reporting
    /// goes offline once the lease runs out, so a crashed edge's users go offline by themselves.
    Presence {
        /// The workspace.
        workspace: WorkspaceId,
        /// One entry per user reported.
        reports: Vec<PresenceReport>,
    },
    /// Read `user`'s notification preferences, or replace them with `prefs` (a client's
    /// `notify_prefs` query and `set_notify_prefs` frame).
    NotifyPrefs {
        /// The workspace.
        workspace: WorkspaceId,
        /// Whose: the session's user, never another.
        user: UserId,
        /// The new preferences; `None` reads them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefs: Option<Box<NotifyPrefs>>,
    },
    /// Turn `user`'s do-not-disturb on or off.
    SetDnd {
        /// The workspace.
        workspace: WorkspaceId,
        /// Whose.
        user: UserId,
        /// On or off.
        dnd: bool,
    },
    /// The presence of every user of the workspace who is not offline.
    PresenceSnapshot {
        /// The workspace.
        workspace: WorkspaceId,
    },
    /// Relay an ephemeral event (typing) to every other edge; nothing is logged.
    Relay {
        /// The workspace.
        workspace: WorkspaceId,
        /// The event.
        event: Box<Event>,
    },
    /// Events of one workspace after a cursor, for resuming a client whose cursor is older than
    /// the edge's own buffers. Internal events are included (the edge filters per user).
    Events {
        /// The workspace.
        workspace: WorkspaceId,
        /// Events after this cursor.
        after: Cursor,
        /// At most this many events in the answer.
        limit: u32,
    },
}

impl Call {
    /// The call's name, for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Authenticate { .. } => "authenticate",
            Call::Snapshot { .. } => "snapshot",
            Call::Send { .. } => "send",
            Call::History { .. } => "history",
            Call::Thread { .. } => "thread",
            Call::Search { .. } => "search",
            Call::Events { .. } => "events",
            Call::MarkRead { .. } => "mark_read",
            Call::Relay { .. } => "relay",
            Call::Presence { .. } => "presence",
            Call::SetDnd { .. } => "set_dnd",
            Call::NotifyPrefs { prefs: None, .. } => "notify_prefs",
            Call::NotifyPrefs { prefs: Some(_), .. } => "set_notify_prefs",
            Call::PresenceSnapshot { .. } => "presence_snapshot",
        }
    }
}

/// The origin's answer to one [`LinkCall`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkReply {
    /// The call's id (0 for a refused stream).
    pub id: u64,
    /// The outcome.
    pub reply: Result<Answer, LinkError>,
}

/// A failed call, with the code clients see too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkError {
    /// Stable code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// For [`Call::Authenticate`].
    Principal {
        /// The token's workspace.
        workspace: WorkspaceId,
        /// The token's user.
        user: UserId,
        /// When the token stops working (ms since the epoch), if ever.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
        /// An app's token: only these scopes, which the edge checks for every frame (the calls
        /// it makes on the token's behalf carry only the user). `None`: a user's token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scopes: Option<Vec<crate::apps::Scope>>,
    },
    /// For [`Call::Snapshot`].
    Snapshot(Box<WorkspaceSnapshot>),
    /// For [`Call::Send`].
    Sent {
        /// The message as stored (the original one for a retry).
        message: Box<Message>,
        /// Its feed cursor; `None` when the send was a retry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
        /// Whether this was a retry of an earlier send.
        duplicate: bool,
    },
    /// For a [`Call::Send`] whose text was a slash command: it ran instead of being posted.
    Command {
        /// The command, with its slash.
        command: String,
        /// What the app did with it.
        outcome: crate::CommandAnswer,
    },
    /// For [`Call::History`] and [`Call::Thread`].
    Messages {
        /// Oldest first.
        messages: Vec<Message>,
        /// Whether more lie beyond the page in the direction read.
        has_more: bool,
    },
    /// For [`Call::Search`].
    Found(SearchPage),
    /// For [`Call::NotifyPrefs`]: the preferences as stored.
    NotifyPrefs(Box<NotifyPrefs>),
    /// For [`Call::MarkRead`]: the marker as it now stands.
    ReadMarker {
        /// The last seq read.
        seq: Seq,
    },
    /// For calls that only need to say they were done ([`Call::Relay`], [`Call::Presence`],
    /// [`Call::SetDnd`]).
    Done,
    /// For [`Call::PresenceSnapshot`]: users who are not offline.
    Presences {
        /// Each user with their presence.
        users: Vec<(UserId, Presence)>,
    },
    /// For [`Call::Events`].
    Events {
        /// The workspace's events after the cursor, in log order.
        items: Vec<FeedItem>,
        /// Where to continue reading from (past events of other workspaces too).
        next: Cursor,
        /// Whether the log holds more after `next`.
        more: bool,
        /// Set when the cursor is older than the trim point: the events are gone.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resync: bool,
    },
}

/// What one edge sees of one user's sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceReport {
    /// The user.
    pub user: UserId,
    /// `active` (a session was used lately), `away` (connected, all sessions idle) or
    /// `offline` (no session left on this edge).
    pub presence: Presence,
}

/// A workspace's state consistent with one cursor: every event at or before `cursor` is
/// reflected in it and no event after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceSnapshot {
    /// The workspace.
    pub workspace: Workspace,
    /// The position of the newest log event the state includes.
    pub cursor: Cursor,
    /// Every user.
    pub users: Vec<User>,
    /// Every channel, DM and group DM with its head and members.
    pub channels: Vec<ChannelState>,
    /// Every read marker.
    pub read_markers: Vec<ReadMarker>,
    /// Unread messages that mention a user by name or through `@here`, per user and channel
    /// (after their read marker).
    #[serde(default)]
    pub mentions: Vec<UnreadMentions>,
    /// Every `@channel` message: `(channel, seq, author)`; each mentions every member but its
    /// author.
    #[serde(default)]
    pub channel_mentions: Vec<(ChannelId, Seq, UserId)>,
}

/// A user's unread mentions in one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadMentions {
    /// Who is mentioned.
    pub user: UserId,
    /// Where.
    pub channel: ChannelId,
    /// The messages, ascending.
    pub seqs: Vec<Seq>,
}

/// One channel in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelState {
    /// The channel record.
    pub channel: Channel,
    /// The last assigned seq (0 for none).
    pub last_seq: Seq,
    /// Its members.
    pub members: Vec<UserId>,
}

/// How far a user has read a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMarker {
    /// The reader.
    pub user: UserId,
    /// The channel.
    pub channel: ChannelId,
    /// The last seq read.
    pub seq: Seq,
}

/// Length of a frame's prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// One frame ready to write: the length prefix and the MessagePack body.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, DecodeError> {
    let body = crate::to_msgpack(value);
    if body.len() > MAX_LINK_FRAME_BYTES {
        return Err(DecodeError::TooLarge { len: body.len(), max: MAX_LINK_FRAME_BYTES });
    }
    let mut buf = Vec::with_capacity(FRAME_PREFIX_BYTES + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// The body length a prefix announces, refused when over `max`: read the prefix, check it
/// here, then read exactly that many bytes and decode them with [`crate::from_msgpack`].
pub fn frame_len(prefix: [u8; FRAME_PREFIX_BYTES], max: usize) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let call = LinkCall { id: 7, call: Call::Snapshot { workspace: WorkspaceId::new_unchecked("W1") } };
        let buf = encode_frame(&call).unwrap();
        let prefix: [u8; 4] = buf[..4].try_into().unwrap();
        let len = frame_len(prefix, 1024).unwrap();
        assert_eq!(len, buf.len() - 4);
        let back: LinkCall = crate::from_msgpack(&buf[4..]).unwrap();
        assert_eq!(back, call);
        assert!(frame_len(prefix, len - 1).is_err(), "over the limit");
    }

    #[test]
    fn searches_and_their_pages_round_trip() {
        let call = LinkCall {
            id: 9,
            call: Call::Search {
                workspace: WorkspaceId::new_unchecked("W1"),
                user: UserId::new_unchecked("U1"),
                text: "deploy from:@ada".into(),
                sort: SearchSort::Recent,
                limit: Some(5),
                page: None,
                wait_for: Some(Cursor::zero()),
            },
        };
        let back: LinkCall = crate::from_msgpack(&crate::to_msgpack(&call)).unwrap();
        assert_eq!(back, call);
        assert_eq!(call.call.name(), "search");
        let page = SearchPage { results: Vec::new(), next_cursor: Some("p2".into()), caught_up: false };
        let reply = LinkReply { id: 9, reply: Ok(Answer::Found(page)) };
        let back: LinkReply = crate::from_msgpack(&crate::to_msgpack(&reply)).unwrap();
        assert_eq!(back, reply);
    }

    #[test]
    fn replies_carry_errors() {
        let reply =
            LinkReply { id: 3, reply: Err(LinkError { code: ErrorCode::NotMember, message: "join first".into() }) };
        let back: LinkReply = crate::from_msgpack(&crate::to_msgpack(&reply)).unwrap();
        assert_eq!(back, reply);
    }
}
