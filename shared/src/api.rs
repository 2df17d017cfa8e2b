//! Answers of the origin's HTTP API (ARCHITECTURE §5) that a client reads back: the origin
//! writes them, `selvage-client` reads them, so both use these types.

use serde::{Deserialize, Serialize};

use crate::{Channel, Message, Seq};

/// A channel as the API shows it to one caller: the record, and the caller's place in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelView {
    /// The channel record.
    #[serde(flatten)]
    pub channel: Channel,
    /// Whether the caller is a member.
    pub is_member: bool,
    /// The newest message's seq (0 when empty).
    pub last_seq: Seq,
    /// The caller's read marker (members only; 0 otherwise).
    pub read_seq: Seq,
    /// Messages after the read marker (members only).
    pub unread: u64,
    /// Unread messages that mention the caller by name, `@channel` or `@here` (members only).
    pub mentions: u64,
}

/// One page of a channel's history or of a thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Messages, oldest first.
    pub messages: Vec<Message>,
    /// Whether more messages lie beyond this page in the direction it was read.
    pub has_more: bool,
}

/// A page of search results (`GET /v1/search`, and the edge's `search` query).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchPage {
    /// The messages found, best (or newest) first.
    pub results: Vec<SearchResult>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Whether the index covered the feed cursor the search was asked to wait for (`after`)
    /// when it answered; always true for a search that asked for none.
    pub caught_up: bool,
}

/// How a search orders what it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchSort {
    /// Best match first: relevance blended with recency.
    #[default]
    Relevance,
    /// Newest first.
    Recent,
}

/// One message a search found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// The message's channel.
    pub channel: Channel,
    /// The message as history shows it.
    pub message: Message,
    /// Where the query matched: in the text, in the file names, or both; none when only
    /// filters (`from:`, `has:file`, …) matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snippets: Vec<SearchSnippet>,
}

/// An excerpt of a message around the words a search matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchSnippet {
    /// The part of the message: `text`, or `files` (its file names, one per line).
    pub field: String,
    /// The excerpt.
    pub fragment: String,
    /// Where the excerpt starts in the field, in bytes of UTF-8.
    pub offset: u64,
    /// The matched words, as `[start, end)` byte ranges of `fragment`.
    pub highlights: Vec<[u64; 2]>,
}
