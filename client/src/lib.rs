//! The Selvage client SDK, for applications, bots and the project's own load tester and tests:
//!
//! - sessions with an edge over its client protocol (ARCHITECTURE §4): [`Client`], over WebSocket
//!   (JSON or MessagePack frames) or QUIC — boot with `hello`, sends acknowledged once durable and
//!   safe to retry by `client_msg_id`, queries, live events, and resuming after a `goodbye`;
//! - the origin's HTTP API, version 1 (ARCHITECTURE §5), for bots that post and read without
//!   holding a session: [`http::HttpClient`].
//!
//! It depends on the wire contract (`selvage-shared`), the TLS and QUIC framing helpers
//! (`selvage-net`) and its transports, never on the origin's or the edge's code.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use selvage_client::{Client, ConnectOptions, Inbound, Transport};
//! use selvage_shared::ChannelId;
//!
//! # async fn run() -> Result<(), selvage_client::ClientError> {
//! let opts = ConnectOptions::new(Transport::WsJson, "127.0.0.1:7800", "svt_…");
//! let mut client = Client::connect(opts).await?;
//! println!("signed in as @{}", client.hello().self_user.handle);
//!
//! let general = ChannelId::parse("C0123").expect("a channel id");
//! let ack = client.send(&general, "hello", "my-msg-1", None).await?;
//! println!("durable as seq {}", ack.seq);
//!
//! while let Some(inbound) = client.next_event(Duration::from_secs(30)).await? {
//!     match inbound {
//!         Inbound::Event(frame) => println!("{:?}", frame.event),
//!         Inbound::Goodbye { reconnect_in_ms } => {
//!             client = client.reconnect(Duration::from_millis(reconnect_in_ms)).await?;
//!         }
//!         Inbound::Closed { .. } => break,
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `client/examples/hello.rs` is the same as a program:
//! `cargo run -p selvage-client --example hello -- ws://127.0.0.1:7800 TOKEN [CHANNEL]`.
//!
//! The session client is strict, since the load tester and the end-to-end tests of the other
//! crates judge edges with it: it speaks exactly the frames of `selvage-shared`, treats a server
//! frame it cannot decode as a protocol error (and closes the connection), caps what it reads at
//! [`MAX_SERVER_FRAME_BYTES`], and bounds every queue and every wait. It does not validate what it
//! sends: the edge is the judge, so tests can provoke its errors.
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
pub use session::{Ack, Client, CommandRan, Handle, Inbound, SearchOptions};
pub use transport::{open_quic_session, quic_client_config};
