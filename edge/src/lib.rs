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
//! - [`node`]: what every session of a running node shares ([`Edge`]).
//! - [`error`]: what a client is told when something fails (error codes, close codes), in one
//!   place.
//! - [`server`]: starting a node, health, metrics and drain; [`config`], [`metrics`].
//!
//! # Layering
//!
//! A module uses only modules of the layers below its own (see the `use crate::` lines), so
//! the crate has no import cycles:
//!
//! 1. [`config`], [`metrics`], [`error`], [`wire`], [`workspace`], [`presence`]: no other
//!    module of the crate.
//! 2. [`upstream`], [`limits`], then [`auth`] (which asks the origin through [`upstream`]).
//! 3. [`fanout`]: loaded workspaces and their sessions.
//! 4. [`node`]: the shared parts of a running node.
//! 5. [`session`]: one client session, whatever carries it.
//! 6. [`ws`] and [`quic`]: the transports, which run sessions.
//! 7. [`server`]: starts a node and wires the rest together.

pub mod auth;
pub mod config;
pub mod error;
pub mod fanout;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod quic;
pub mod server;
pub mod session;
pub mod upstream;
pub mod web;
pub mod wire;
pub mod workspace;
pub mod ws;

pub use config::EdgeConfig;
pub use error::StartError;
pub use node::Edge;
pub use selvage_shared::PROTOCOL_VERSION;
pub use server::{start, Running};
