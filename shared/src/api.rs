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
