//! Size limits of the wire contract.
//!
//! Every peer that reads frames caps what it accepts (ARCHITECTURE §7: "every loop that reads from a
//! peer caps sizes"). These constants are the single source of those caps, so the edge, the
//! origin, the load tester and client SDKs all agree on them. [`crate::decode_client`] enforces
//! the client-facing ones.

/// Longest message text accepted, in Unicode scalar values (`char`s), not bytes.
pub const MAX_TEXT_CHARS: usize = 40_000;

/// Largest client → edge frame, in bytes. Larger frames are refused before parsing and close the
/// connection.
pub const MAX_CLIENT_FRAME_BYTES: usize = 256 * 1024;

/// Longest `client_msg_id` (the sender's idempotency key), in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;

/// Longest name (workspace, channel, user display name), in `char`s.
pub const MAX_NAME_CHARS: usize = 80;

/// Largest `limit` a client `query` may ask for, and the most users one `query` may name.
pub const MAX_QUERY_LIMIT: usize = 1000;

/// Longest search text a `search` query (or `GET /v1/search`) takes, in `char`s.
pub const MAX_SEARCH_CHARS: usize = 1_000;

/// Largest `limit` of a `search` query: search pages are ranked, so they stay small.
pub const MAX_SEARCH_LIMIT: usize = 100;

/// Largest origin ↔ edge feed frame, in bytes.
pub const MAX_FEED_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Longest request `id` a client may put on `send`, `ping` and `query` frames, in bytes. The edge
/// echoes it back as `reply_to`, so it is kept short.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Most users one `presence_sub` frame may subscribe to.
pub const MAX_PRESENCE_SUB_USERS: usize = 500;

/// Deepest nesting a MessagePack client frame may have. Real frames nest three levels at most;
/// the cap keeps hostile input (e.g. 256 KiB of nested one-element arrays) from exhausting the
/// stack of a small async worker thread.
pub const MAX_CLIENT_FRAME_DEPTH: usize = 32;
