//! The Selvage wire contract, shared by the origin, the edge, the load tester and client SDKs:
//! ids ([`ids`]), the data model ([`model`]), the event model ([`event`]), client and feed frames
//! ([`frame`]), mention parsing ([`mentions`]), protocol error codes ([`error`]), size limits ([`limits`]) and the JSON and
//! MessagePack codecs ([`codec`]).
//!
//! Pure data and pure functions: no I/O, no async runtime, so every decoder of untrusted bytes
//! can be tested and fuzzed alone. Everything is re-exported at the crate root.

#![warn(missing_docs)]

pub mod api;
pub mod apps;
pub mod codec;
pub mod error;
pub mod event;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod link;
pub mod mentions;
pub mod model;
pub mod notify;
pub mod rate;

pub use api::*;
pub use apps::*;
pub use codec::*;
pub use error::*;
pub use event::*;
pub use frame::*;
pub use ids::*;
pub use limits::*;
pub use model::*;
pub use notify::*;

/// Version of the client protocol (ARCHITECTURE §4), sent in `hello` as `protocol`. Bumped only for
/// changes old clients cannot ignore.
pub const PROTOCOL_VERSION: u32 = 1;
