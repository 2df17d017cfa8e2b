//! Messages: posting them in one order per channel, reading them back, and changing them.
//!
//! - [`sequencer`] posts: it gives every channel one gap-free order and makes each message
//!   durable before its sender is told (ARCHITECTURE §2 "Ordering");
//! - [`history`] reads pages of a channel or a thread back;
//! - [`edits`] changes posted messages: edits, deletes, reactions, following threads;
//! - [`records`] holds what they all read and write — the message record, its reactions,
//!   mentions and thread summary — and the rule a text must follow. It depends on nothing above
//!   it in this folder.

pub(crate) mod edits;
pub(crate) mod history;
pub(crate) mod records;
pub mod sequencer;
