//! The Selvage edge: the Flannel tier (DESIGN §3).
//!
//! Regional edge nodes terminate client WebSocket and QUIC connections, answer `hello` from
//! warm caches fed by the origin's feed, fan events out to local connections, resume clients
//! after reconnects and drain gracefully. This crate is filled in by the edge work; today it
//! only fixes the crate's place in the workspace and its dependency on the wire contract.

pub use selvage_shared::PROTOCOL_VERSION;
