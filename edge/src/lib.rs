//! The Selvage edge: the Flannel tier (DESIGN §3).
//!
//! Regional edge nodes terminate client WebSocket and QUIC connections, answer `hello` from
//! warm caches fed by the origin's feed, fan events out to local connections, resume clients
//! after reconnects and drain gracefully.
//!
//! - [`upstream`]: the QUIC link to the origin — the feed subscription and calls.
//! - [`cache`]: a workspace's state as the edge holds it, kept current by feed events.
//! - [`metrics`]: Prometheus metrics of the edge.

pub mod cache;
pub mod metrics;
pub mod upstream;

pub use selvage_shared::PROTOCOL_VERSION;
