//! Frames: the messages of the client protocol (ARCHITECTURE §4) and of the edge ↔ origin feed.
//!
//! Every frame is an object tagged by `"type"`. [`ClientFrame`]s come from untrusted clients, so
//! they reject unknown types and unknown fields, and [`ClientFrame::validate`] checks the limits
//! that serde cannot express. [`ServerFrame`]s go from the edge to clients; an event frame is the
//! event's own object plus its `"cursor"`. [`FeedRequest`] and [`FeedFrame`] are what an edge and
//! the origin say to each other on a feed stream.

use serde::{Deserialize, Serialize};

use crate::api::{SearchResult, SearchSort};
use crate::apps::{Need, Scope};
use crate::codec::DecodeError;
use crate::error::ErrorCode;
use crate::event::{Event, FeedItem};
use crate::ids::{ChannelId, Cursor, Seq, UserId, WorkspaceId};
use crate::limits::{
    MAX_CLIENT_MSG_ID_BYTES, MAX_PRESENCE_SUB_USERS, MAX_QUERY_LIMIT, MAX_REQUEST_ID_BYTES, MAX_SEARCH_CHARS,
    MAX_SEARCH_LIMIT, MAX_TEXT_CHARS,
};
use crate::model::{ChannelBoot, Message, User};
use crate::notify::NotifyPrefs;

/// A frame a client sends to an edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Post a message; answered by `ack` once durable, or `error`.
    Send {
        /// Request id, echoed as `reply_to`.
        id: String,
        /// Where to post.
        channel: ChannelId,
        /// The text (1 to [`MAX_TEXT_CHARS`] characters).
        text: String,
        /// Idempotency key (1 to [`MAX_CLIENT_MSG_ID_BYTES`] bytes): a retry with the same key
        /// gets the original `seq`.
        client_msg_id: String,
        /// Post as a reply in the thread rooted at this `seq`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_root: Option<Seq>,
    },
    /// Liveness check; answered by `pong`.
    Ping {
        /// Request id, echoed as `reply_to`.
        id: String,
    },
    /// The user is typing in a channel (ephemeral, not answered).
    Typing {
        /// The channel.
        channel: ChannelId,
    },
    /// Replace the set of users whose presence this connection follows.
    PresenceSub {
        /// Users to follow (at most [`MAX_PRESENCE_SUB_USERS`]); empty unsubscribes from all.
        users: Vec<UserId>,
    },
    /// Turn the user's do-not-disturb on or off (on every device): while on, others see the
    /// user as `dnd` whenever they would otherwise be `active` or `away`. Not answered; the
    /// change arrives as `presence_change` to whoever follows the user.
    SetPresence {
        /// Do not disturb.
        dnd: bool,
    },
    /// Fetch data lazily; answered by `result`.
    Query(Query),
    /// Move the user's read marker in a channel.
    MarkRead {
        /// The channel.
        channel: ChannelId,
        /// The last `seq` read.
        seq: Seq,
    },
    /// Replace the user's notification preferences (as `PUT /v1/notifications/prefs`);
    /// answered by `result` with `notify_prefs` as stored, or `error`.
    SetNotifyPrefs {
        /// Request id, echoed as `reply_to`.
        id: String,
        /// The whole document: fields left out take their defaults.
        prefs: Box<NotifyPrefs>,
    },
}

/// What a `query` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    /// Users by id (`users`), or a page of the workspace's users.
    Users,
    /// Members of `channel`.
    Members,
    /// Messages of `channel`, newest first, bounded by `before`/`after`.
    History,
    /// The caller's channels (and their unread state).
    Channels,
    /// Replies in the thread of `channel` rooted at `root`.
    Thread,
    /// Messages the caller may read that match `text`, in the search query language; always
    /// answered by the origin, which holds the index (ARCHITECTURE §8 "Search").
    Search,
    /// The caller's notification preferences (`notify_prefs` in the result); takes nothing
    /// else.
    NotifyPrefs,
}

/// A client `query` frame (its `"type"` is `query`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Request id, echoed as `reply_to`.
    pub id: String,
    /// What is asked for.
    pub q: QueryKind,
    /// The channel, for `members`, `history` and `thread`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelId>,
    /// The users, for `users` (at most [`MAX_QUERY_LIMIT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserId>,
    /// Only messages with `seq` below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Seq>,
    /// Only messages with `seq` above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Seq>,
    /// The thread root `seq`, for `thread`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Seq>,
    /// Most items to return (1 to [`MAX_QUERY_LIMIT`]; the server picks when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Continuation token from a previous result's `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// What to search for, for `search` (1 to [`MAX_SEARCH_CHARS`] characters): words,
    /// `"phrases"`, `-excluded`, `from:@handle`, `in:#channel`, dates and `has:`/`is:` filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The order of a `search`'s results: `relevance` (the default) or `recent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<SearchSort>,
    /// For `search`, read your writes: a feed cursor (a send's `ack.cursor`, an event's
    /// `cursor`) the index should cover before the search runs. The origin waits for it, a
    /// bounded time; the result's `caught_up` says whether it got there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<Cursor>,
}

fn check_request_id(id: &str) -> Result<(), DecodeError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES {
        return Err(DecodeError::Invalid(format!("id must be 1 to {MAX_REQUEST_ID_BYTES} bytes")));
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> Result<(), DecodeError> {
    Err(DecodeError::Invalid(msg.into()))
}

/// Why a text with U+0000 is refused: it is no character a person types or reads, stores and
/// searches badly everywhere downstream (C strings, search indexes, databases that refuse it),
/// and clients that meant it as an end of string would show something else than was sent.
pub const TEXT_NUL: &str = "text must not contain U+0000 (NUL)";

impl ClientFrame {
    /// Checks the limits serde does not: text length, `client_msg_id` and request id sizes, list
    /// lengths, query limits and the fields each query kind needs. Ids validated themselves when
    /// deserialised. [`crate::decode_client`] calls this; call it yourself on frames built in code.
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            ClientFrame::Send { id, text, client_msg_id, thread_root, .. } => {
                check_request_id(id)?;
                // A text of at most MAX_TEXT_CHARS bytes has at most that many chars; only
                // longer ones need counting.
                if text.is_empty() || (text.len() > MAX_TEXT_CHARS && text.chars().count() > MAX_TEXT_CHARS) {
                    return invalid(format!("text must be 1 to {MAX_TEXT_CHARS} characters"));
                }
                if text.contains('\0') {
                    return invalid(TEXT_NUL);
                }
                if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID_BYTES {
                    return invalid(format!("client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_BYTES} bytes"));
                }
                if *thread_root == Some(0) {
                    return invalid("thread_root must be a seq (1 or more)");
                }
                Ok(())
            }
            ClientFrame::Ping { id } => check_request_id(id),
            ClientFrame::Typing { .. } | ClientFrame::MarkRead { .. } | ClientFrame::SetPresence { .. } => Ok(()),
            ClientFrame::PresenceSub { users } => {
                if users.len() > MAX_PRESENCE_SUB_USERS {
                    return invalid(format!("presence_sub takes at most {MAX_PRESENCE_SUB_USERS} users"));
                }
                Ok(())
            }
            ClientFrame::Query(query) => query.validate(),
            ClientFrame::SetNotifyPrefs { id, .. } => check_request_id(id),
        }
    }

    /// The request id the client will expect as `reply_to`, for frames that have one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ClientFrame::Send { id, .. } | ClientFrame::Ping { id } => Some(id),
            ClientFrame::Query(q) => Some(&q.id),
            ClientFrame::SetNotifyPrefs { id, .. } => Some(id),
            ClientFrame::Typing { .. }
            | ClientFrame::PresenceSub { .. }
            | ClientFrame::MarkRead { .. }
            | ClientFrame::SetPresence { .. } => None,
        }
    }

    /// What the frame needs of the session's token (an app's token only what its scopes
    /// allow; see [`crate::apps`]).
    pub fn need(&self) -> Need {
        match self {
            ClientFrame::Ping { .. } => Need::Any,
            ClientFrame::Send { .. } | ClientFrame::Typing { .. } | ClientFrame::MarkRead { .. } => {
                Need::Scope(Scope::ChatWrite)
            }
            ClientFrame::PresenceSub { .. } => Need::Scope(Scope::ChannelsRead),
            ClientFrame::SetPresence { .. } | ClientFrame::SetNotifyPrefs { .. } => Need::User,
            ClientFrame::Query(q) => match q.q {
                QueryKind::Users | QueryKind::Members | QueryKind::Channels => Need::Scope(Scope::ChannelsRead),
                QueryKind::History | QueryKind::Thread => Need::Scope(Scope::ChannelsHistory),
                QueryKind::Search => Need::Scope(Scope::SearchRead),
                QueryKind::NotifyPrefs => Need::User,
            },
        }
    }

    /// The frame's `"type"` string on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Send { .. } => "send",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::PresenceSub { .. } => "presence_sub",
            ClientFrame::SetPresence { .. } => "set_presence",
            ClientFrame::Query(_) => "query",
            ClientFrame::MarkRead { .. } => "mark_read",
            ClientFrame::SetNotifyPrefs { .. } => "set_notify_prefs",
        }
    }
}

impl Query {
    /// A query of `kind` with nothing else set, to fill in with struct update syntax:
    /// `Query { channel: Some(c), limit: Some(50), ..Query::new("q1", QueryKind::History) }`.
    pub fn new(id: impl Into<String>, kind: QueryKind) -> Query {
        Query {
            id: id.into(),
            q: kind,
            channel: None,
            users: Vec::new(),
            before: None,
            after: None,
            root: None,
            limit: None,
            page: None,
            text: None,
            sort: None,
            wait_for: None,
        }
    }

    /// Checks sizes and that the query kind has the fields it needs, and only fields it uses:
    /// `search` takes `text`, `sort`, `wait_for`, `limit` and `page`, and the other kinds take
    /// none of the first three (see [`ClientFrame::validate`]).
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_request_id(&self.id)?;
        if self.q == QueryKind::Search {
            return self.validate_search();
        }
        if self.q == QueryKind::NotifyPrefs && *self != Query::new(self.id.clone(), QueryKind::NotifyPrefs) {
            return invalid("a notify_prefs query takes nothing but its id");
        }
        if self.text.is_some() || self.sort.is_some() || self.wait_for.is_some() {
            return invalid("text, sort and wait_for are for search queries only");
        }
        if let Some(limit) = self.limit {
            if limit == 0 || limit as usize > MAX_QUERY_LIMIT {
                return invalid(format!("limit must be 1 to {MAX_QUERY_LIMIT}"));
            }
        }
        if self.users.len() > MAX_QUERY_LIMIT {
            return invalid(format!("a query takes at most {MAX_QUERY_LIMIT} users"));
        }
        let needs_channel = matches!(self.q, QueryKind::Members | QueryKind::History | QueryKind::Thread);
        if needs_channel && self.channel.is_none() {
            return invalid("this query needs a channel");
        }
        if self.q == QueryKind::Thread && self.root.is_none() {
            return invalid("a thread query needs a root");
        }
        Ok(())
    }

    fn validate_search(&self) -> Result<(), DecodeError> {
        let Some(text) = &self.text else {
            return invalid("a search query needs a text");
        };
        // As for `send`: only a text longer in bytes than the limit in chars needs counting.
        if text.trim().is_empty() || (text.len() > MAX_SEARCH_CHARS && text.chars().count() > MAX_SEARCH_CHARS) {
            return invalid(format!("a search text must be 1 to {MAX_SEARCH_CHARS} characters, not all spaces"));
        }
        if text.contains('\0') {
            return invalid(TEXT_NUL);
        }
        if self.limit.is_some_and(|l| l == 0 || l as usize > MAX_SEARCH_LIMIT) {
            return invalid(format!("a search limit must be 1 to {MAX_SEARCH_LIMIT}"));
        }
        if self.channel.is_some()
            || !self.users.is_empty()
            || self.before.is_some()
            || self.after.is_some()
            || self.root.is_some()
        {
            return invalid("a search query takes no channel, users, before, after or root: use in:#channel, from:@handle, before: and after: in its text");
        }
        Ok(())
    }
}

/// A frame an edge sends to a client.
///
/// Event frames are the event's object plus `"cursor"`:
/// `{"type":"message","channel":"C1","seq":7,…,"cursor":"…"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    expecting = "a server frame: an object with a known \"type\" and its fields"
)]
pub enum ServerFrame {
    /// The first frame of every connection: the session's boot payload.
    Hello(Hello),
    /// A `send` is durable: its `seq` and commit time.
    Ack {
        /// The `send`'s request id.
        reply_to: String,
        /// The channel posted to.
        channel: ChannelId,
        /// The message's `seq`.
        seq: Seq,
        /// Commit time, ms since the epoch.
        ts: i64,
        /// The message's feed cursor: a `search` with it as `wait_for` finds the message
        /// (read your writes). Absent when the send was a retry of one already durable.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
    },
    /// A `send` whose text was a slash command ran it instead of posting it: the app's answer
    /// follows as events (a `message` in the channel, or an `ephemeral_message` to the sender).
    Command {
        /// The `send`'s request id.
        reply_to: String,
        /// The command, with its slash: `/deploy`.
        command: String,
        /// What the app did with it.
        answer: CommandAnswer,
    },
    /// A request, or the frame itself, failed.
    Error {
        /// The failed request's id, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// For `rate_limited`: how long to wait before the next such request (ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Answer to `ping`.
    Pong {
        /// The `ping`'s request id.
        reply_to: String,
    },
    /// Answer to `query`.
    Result(QueryResult),
    /// The edge is going away; reconnect (to any edge) after this delay, resuming from the last
    /// cursor.
    Goodbye {
        /// Jittered delay before reconnecting.
        reconnect_in_ms: u64,
    },
    /// The client's state cannot be resumed (cursor too old, fell too far behind): boot afresh.
    Resync {
        /// Why.
        reason: String,
    },
    /// An event with its cursor. Untagged here because the event carries its own `"type"`.
    #[serde(untagged)]
    Event(EventFrame),
}

/// What an app did with a slash command it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandAnswer {
    /// It answered in the channel, for everyone: the command and its answer were posted.
    InChannel,
    /// It answered the sender alone, with an `ephemeral_message`.
    Ephemeral,
    /// It took the command and will answer later, through its `response_url`, if at all.
    Deferred,
}

/// An event as a client receives it: the event's fields plus the feed cursor to resume from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// The event (its `"type"` and fields appear at the top level of the frame).
    #[serde(flatten)]
    pub event: Event,
    /// The event's position in the feed; a client resumes from the last one it processed.
    pub cursor: Cursor,
}

/// The first frame a QUIC client writes on its stream (WebSocket clients put the same in the
/// upgrade request: `Authorization`/`?token=` and `?resume=`). Every frame on a client QUIC
/// stream, both ways, is a 4-byte big-endian length and that many bytes of MessagePack
/// ([`crate::link::encode_frame`], [`crate::link::frame_len`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientOpen {
    /// The bearer token.
    pub token: String,
    /// The cursor to resume after, if reconnecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Cursor>,
}

/// The boot payload of a session (ARCHITECTURE §3, lazy boot): the user, their channels and only the
/// users those need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version, [`crate::PROTOCOL_VERSION`].
    pub protocol: u32,
    /// This connection's session id.
    pub session_id: String,
    /// Feed position the payload is consistent with; events follow from here.
    pub cursor: Cursor,
    /// The connected user (`"self"` on the wire).
    #[serde(rename = "self")]
    pub self_user: User,
    /// The user's channels with unread state.
    #[serde(default)]
    pub channels: Vec<ChannelBoot>,
    /// The users those channels need (DM partners, recent authors), not the whole workspace.
    #[serde(default)]
    pub users: Vec<User>,
    /// The client sends a `ping` at least this often; the edge closes silent connections.
    pub heartbeat_ms: u64,
    /// Whether this connection resumed a previous session from its cursor (missed events follow)
    /// rather than booting afresh.
    #[serde(default)]
    pub resumed: bool,
}

/// Answer to a `query` (its `"type"` is `result`); only the lists the query asked for are present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    /// The query's request id.
    pub reply_to: String,
    /// Users (for `users`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    /// Channels (for `channels`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelBoot>,
    /// Member ids (for `members`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<UserId>,
    /// Messages (for `history` and `thread`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    /// What a `search` found, best (or, sorted by `recent`, newest) first: each message with
    /// its channel and where it matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<SearchResult>,
    /// For `search` only: whether the index covered the query's `wait_for` when it answered
    /// (true when it asked for none). False means a message sent up to that cursor may be
    /// missing: ask again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_up: Option<bool>,
    /// Continuation token to pass as `page` for more; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The caller's notification preferences (for `notify_prefs` and `set_notify_prefs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_prefs: Option<Box<NotifyPrefs>>,
}

impl ServerFrame {
    /// An event frame.
    pub fn event(cursor: Cursor, event: Event) -> ServerFrame {
        ServerFrame::Event(EventFrame { event, cursor })
    }

    /// An `error` frame.
    pub fn error(reply_to: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error { reply_to, code, message: message.into(), retry_after_ms: None }
    }

    /// The frame's `"type"` string on the wire (an event frame's is its event's).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Hello(_) => "hello",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Command { .. } => "command",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Result(_) => "result",
            ServerFrame::Goodbye { .. } => "goodbye",
            ServerFrame::Resync { .. } => "resync",
            ServerFrame::Event(frame) => frame.event.kind(),
        }
    }
}

/// What an edge sends the origin on a feed stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedRequest {
    /// Start streaming after `cursor` (from now when absent).
    Subscribe {
        /// Last cursor the edge has applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
    },
    /// The edge has applied everything up to `cursor` (flow control and lag metrics).
    Ack {
        /// Last cursor applied.
        cursor: Cursor,
    },
}

/// What the origin sends an edge on a feed stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedFrame {
    /// A batch of log entries, in cursor order.
    Events {
        /// The entries.
        items: Vec<FeedItem>,
        /// Cursor after the batch (the last item's, or later if entries were filtered out).
        cursor: Cursor,
    },
    /// Nothing new; the feed has reached `cursor`.
    Heartbeat {
        /// Current head of the feed.
        cursor: Cursor,
    },
    /// An ephemeral event (typing, presence) of a workspace, relayed between edges and never
    /// logged: it has no cursor and does not move the edge's place in the feed.
    Ephemeral {
        /// The workspace it happened in.
        workspace: WorkspaceId,
        /// What happened.
        event: Box<Event>,
    },
    /// The requested cursor is older than the log's trim point: rebuild caches from a snapshot
    /// and continue from `cursor`.
    Resync {
        /// Why.
        reason: String,
        /// Where to continue from after rebuilding.
        cursor: Cursor,
    },
}
