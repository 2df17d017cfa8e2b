//! The Selvage edge: the Flannel tier (ARCHITECTURE §3).
//!
//! Regional edge nodes terminate client WebSocket and QUIC connections, answer `hello` from
//! warm caches fed by the origin's feed, fan events out to local connections, resume clients
//! after reconnects and drain gracefully.
//!
//! - [`upstream`]: the QUIC link to the origin — the feed subscription and calls.
//! - [`workspace`]: a workspace's state as the edge holds it, kept current by feed events.
//! - [`fanout`]: loaded workspaces and their sessions, the feed applied to them, delivery to
//!   sessions through bounded outboxes.
//! - [`wire`]: frames encoded for a client.
//! - [`auth`]: tokens → users, remembered.
//! - [`limits`]: what one client may take of the edge (connections per user, frame memory).
//! - [`session`]: one client session, whatever the transport; [`ws`] and [`quic`] carry it.
//! - [`server`]: starting a node, health, metrics and drain; [`config`], [`metrics`].

pub mod auth;

pub mod config;
pub mod fanout;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod quic;
pub mod server;
pub mod session;
pub mod upstream;
pub mod wire;
pub mod workspace;
pub mod ws;

pub use config::EdgeConfig;
pub use selvage_shared::PROTOCOL_VERSION;
pub use server::{start, Edge, Running, StartError};
