//! The Selvage client SDK: a Rust client of the edge's client protocol (ARCHITECTURE §4) over WebSocket
//! (JSON or MessagePack frames) or QUIC.
//!
//! The load tester drives edges with it, and the end-to-end tests of the other crates talk to real
//! edges through it. It is therefore strict: it speaks exactly the frames of `selvage-shared`,
//! treats a server frame it cannot decode as a protocol error (and closes the connection), caps
//! what it reads at [`MAX_SERVER_FRAME_BYTES`], and bounds every queue and every wait. It does not
//! validate what it sends: the edge is the judge, so tests can provoke its errors.
//!
//! # Shape
//!
//! [`Client::connect`] dials, authenticates and returns once the edge's `hello` has arrived. Then
//! one reader task decodes server frames: replies (`ack`, `result`, `pong`, and `error`s whose
//! `reply_to` names a waiting request) complete the call waiting for them, matched by request id;
//! everything else (events, `goodbye`, `resync`, other errors and finally the close) goes, in
//! arrival order, to a bounded queue that [`Client::next_event`] reads. One writer task owns the
//! send half of the connection and serialises outgoing frames, so `send`, `query` and `ping` may
//! run concurrently (they take `&self`; [`Client::handle`] gives a cloneable [`Handle`] for other
//! tasks), and a cancelled call never leaves half a frame on the wire. The writer also sends the
//! heartbeat `ping`s that `hello.heartbeat_ms` asks for.
//!
//! # Slow consumers
//!
//! The event queue holds [`ClientSettings::event_queue`] entries (65,536 by default). When it is
//! full the reader stops reading the connection until `next_event` makes room: the edge then sees
//! this client as the slow consumer it is (ARCHITECTURE §3, backpressure) instead of the client
//! buffering without bound. Replies wait behind the stalled reader too, so a client that sends
//! must also drain its events, e.g. sending from other tasks through a [`Handle`].
//!
//! # Reconnecting
//!
//! [`Client::last_cursor`] is the cursor of the newest event `next_event` returned: what to resume
//! from. On `goodbye`, [`Client::reconnect`] closes the client, waits the delay and connects again
//! with `resume` set ([`Client::connect_options_with_resume`] gives the options to do it by hand).
//! Events still queued when a client closes are not lost: the resumed session replays everything
//! after the last cursor returned. After a `resync` there is nothing to resume from and the next
//! connection boots afresh.

#![warn(missing_docs)]

mod error;
pub mod http;
mod options;
mod session;
mod transport;

pub use error::ClientError;
pub use options::{
    ws_url, ClientSettings, ConnectOptions, Heartbeat, Transport, DEFAULT_CONNECT_TIMEOUT, DEFAULT_EVENT_QUEUE,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_SERVER_NAME, MAX_SERVER_FRAME_BYTES,
};
pub use session::{Ack, Client, Handle, Inbound};
pub use transport::{open_quic_session, quic_client_config};
