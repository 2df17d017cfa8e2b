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

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, ReadError, VarInt, WriteError};
use selvage_net::quic::{read_frame, FrameReadError};
use selvage_net::tls::{self, Trust};
use selvage_shared::link::{encode_frame, CLIENT_ALPN, FRAME_PREFIX_BYTES};
use selvage_shared::{
    decode_server, encode_client, ChannelId, ClientFrame, ClientOpen, Cursor, ErrorCode, EventFrame, Format, Hello,
    Query, QueryResult, Seq, ServerFrame, MAX_FEED_FRAME_BYTES, PROTOCOL_VERSION,
};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::Instrument;

/// How long connecting (and waiting for `hello`) may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request (`send`, `query`, `ping`) waits for its reply, and a frame for its turn on
/// the wire, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default capacity of the event queue that [`Client::next_event`] reads.
pub const DEFAULT_EVENT_QUEUE: usize = 65_536;

/// Largest server frame the client accepts, in bytes: a bigger one is a protocol error.
pub const MAX_SERVER_FRAME_BYTES: usize = MAX_FEED_FRAME_BYTES;

/// TLS server name a QUIC client dials by default (what development edges' self-signed
/// certificates are made for).
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// Frames waiting for the writer task. Callers wait (under their timeout) when it is full.
const OUTBOUND_QUEUE: usize = 1024;

/// How long closing waits for each step of the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// QUIC keep-alive, well inside quinn's default 30 s idle timeout.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Shortest automatic heartbeat period, whatever `hello.heartbeat_ms` says.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// Close code of a normal close (WebSocket 1000; the same number on QUIC).
const CLOSE_NORMAL: u16 = 1000;

/// Close code when the edge broke the protocol (WebSocket 1002; the same number on QUIC).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// Longest reason a WebSocket close frame can carry, in bytes.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// How the client reaches the edge.
#[derive(Clone, Debug)]
pub enum Transport {
    /// WebSocket with JSON in text frames (`?format=json`).
    WsJson,
    /// WebSocket with named-field MessagePack in binary frames (`?format=msgpack`).
    WsMsgpack,
    /// QUIC (ALPN `selvage/1`): one bidirectional stream of length-prefixed MessagePack frames.
    /// Each client binds its own UDP socket (one quinn endpoint per connection).
    Quic {
        /// Which server certificate to trust.
        trust: Trust,
        /// The TLS server name to dial (checked against the certificate when trusting a CA).
        server_name: String,
    },
}

impl Transport {
    /// QUIC trusting exactly the certificate with this fingerprint (lower-case hex SHA-256, as the
    /// edge prints it), dialling [`DEFAULT_SERVER_NAME`].
    pub fn quic_pinned(fingerprint: impl Into<String>) -> Transport {
        Transport::Quic { trust: Trust::Pinned(fingerprint.into()), server_name: DEFAULT_SERVER_NAME.to_owned() }
    }

    /// The wire format of frames on this transport.
    pub fn format(&self) -> Format {
        match self {
            Transport::WsJson => Format::Json,
            Transport::WsMsgpack | Transport::Quic { .. } => Format::MsgPack,
        }
    }

    /// A short name for reports and logs: `ws+json`, `ws+msgpack` or `quic`.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::WsJson => "ws+json",
            Transport::WsMsgpack => "ws+msgpack",
            Transport::Quic { .. } => "quic",
        }
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    /// The transport.
    pub transport: Transport,
    /// `host:port` of the edge's HTTP listener (WebSocket) or of its QUIC listener.
    pub addr: String,
    /// The bearer token. An empty token is not sent (to test the edge's refusal).
    pub token: String,
    /// The cursor to resume after, when reconnecting.
    pub resume: Option<Cursor>,
    /// How long connecting and waiting for `hello` may take, together.
    pub timeout: Duration,
}

impl ConnectOptions {
    /// Options for a fresh session (no resume) with [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(transport: Transport, addr: impl Into<String>, token: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            transport,
            addr: addr.into(),
            token: token.into(),
            resume: None,
            timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

// By hand, to keep the token out of logs and panic messages.
impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("transport", &self.transport)
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .field("resume", &self.resume)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// When the client sends heartbeat `ping`s by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Heartbeat {
    /// Every half of `hello.heartbeat_ms` (none when the edge says 0).
    #[default]
    Auto,
    /// At this period, whatever `hello` says.
    Every(Duration),
    /// Never: only the application's own [`Client::ping`]s (to test that the edge closes silent
    /// connections).
    Off,
}

/// Tuning of a client beyond where to connect; the defaults suit the load tester and tests.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// How long a request waits for its reply (and a frame for its turn on the wire).
    pub request_timeout: Duration,
    /// Automatic heartbeats.
    pub heartbeat: Heartbeat,
    /// Send the token as `?token=` (WebSocket) instead of in `Authorization: Bearer`.
    pub token_in_query: bool,
    /// Capacity of the event queue (see the module docs on slow consumers); at least 1.
    pub event_queue: usize,
}

impl Default for ClientSettings {
    fn default() -> ClientSettings {
        ClientSettings {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            heartbeat: Heartbeat::Auto,
            token_in_query: false,
            event_queue: DEFAULT_EVENT_QUEUE,
        }
    }
}

/// A `send` is durable: the message's place in its channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The channel posted to.
    pub channel: ChannelId,
    /// The message's `seq`.
    pub seq: Seq,
    /// Commit time, ms since the epoch.
    pub ts: i64,
}

/// What [`Client::next_event`] yields, in the order the edge sent it.
// Events are nearly everything a session receives; boxing them to shrink the rare other
// variants would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// An event with its cursor.
    Event(EventFrame),
    /// The edge is draining: reconnect (resuming) after this delay.
    Goodbye {
        /// Jittered delay before reconnecting, in ms.
        reconnect_in_ms: u64,
    },
    /// The session cannot be resumed: boot afresh.
    Resync {
        /// Why.
        reason: String,
    },
    /// An `error` that answers no waiting request (no `reply_to`, or one this client is not
    /// waiting for, e.g. the id of a frame sent with [`Client::send_frame`]).
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// The connection is closed; nothing follows.
    Closed {
        /// WebSocket close code, or QUIC application error code when it fits in 16 bits.
        code: Option<u16>,
        /// The close reason, or what ended the connection.
        reason: String,
    },
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be set up: address, TCP or QUIC handshake, TLS, WebSocket upgrade.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection is closed: by the edge, by the network or by this client.
    #[error("connection closed: {}", describe_close(*.code, .reason))]
    Closed {
        /// WebSocket close code, or QUIC application error code when it fits in 16 bits.
        code: Option<u16>,
        /// The close reason, or what ended the connection.
        reason: String,
    },
    /// The edge answered with an `error` (to a request, or instead of `hello`), or refused the
    /// WebSocket upgrade with an HTTP error.
    #[error("refused by the edge: {code}: {message}")]
    Refused {
        /// Stable code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// The edge cannot resume from the cursor given: connect again without `resume`.
    #[error("the edge cannot resume this session: {0}")]
    Resync(String),
    /// No answer in time; names what was awaited.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The edge broke the protocol (undecodable or unexpected frame, wrong protocol version).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local I/O failure (e.g. binding the UDP socket).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The protocol error code, for [`ClientError::Refused`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn describe_close(code: Option<u16>, reason: &str) -> String {
    match code {
        Some(code) => format!("code {code}, {reason:?}"),
        None => reason.to_owned(),
    }
}

/// The URL a WebSocket client dials: `ws://{addr}/v1/connect?format=…[&resume=…][&token=…]`,
/// with the token only when `token_in_query`.
pub fn ws_url(opts: &ConnectOptions, token_in_query: bool) -> String {
    let mut url = format!("ws://{}/v1/connect?format={}", opts.addr, opts.transport.format());
    if let Some(cursor) = &opts.resume {
        url.push_str("&resume=");
        url.push_str(cursor.as_str());
    }
    if token_in_query && !opts.token.is_empty() {
        url.push_str("&token=");
        url.push_str(&percent_encode(&opts.token));
    }
    url
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// A connection to an edge. See the module docs.
///
/// Dropping it aborts the connection; [`Client::close`] closes it politely.
pub struct Client {
    handle: Handle,
    events: mpsc::Receiver<Inbound>,
    hello: Hello,
    opts: ConnectOptions,
    settings: ClientSettings,
    last_cursor: Option<Cursor>,
    resync: bool,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// A cloneable handle on a [`Client`]'s connection for sending from other tasks while the owner
/// reads events. Its calls fail with [`ClientError::Closed`] once the connection (or the client)
/// is gone.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    outbound: mpsc::Sender<Outgoing>,
    wire: Wire,
    request_timeout: Duration,
}

// Load generators move clients and handles into tasks.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client>();
    assert_send_sync::<Handle>();
};

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.opts.transport.name())
            .field("addr", &self.opts.addr)
            .field("session_id", &self.hello.session_id)
            .field("last_cursor", &self.last_cursor())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("wire", &self.wire).field("closed", &self.is_closed()).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with default [`ClientSettings`]; returns once `hello` has arrived.
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ClientError> {
        Client::connect_with(opts, ClientSettings::default()).await
    }

    /// Connects; returns once `hello` has arrived.
    ///
    /// Fails with [`ClientError::Refused`] when the edge answers `error` (or an HTTP error)
    /// instead of `hello`, [`ClientError::Resync`] when it cannot resume from `opts.resume`,
    /// [`ClientError::Closed`] when it closes the connection, [`ClientError::Timeout`] after
    /// `opts.timeout`, and [`ClientError::Connect`] when the connection cannot be made.
    pub async fn connect_with(opts: ConnectOptions, settings: ClientSettings) -> Result<Client, ClientError> {
        let deadline = Instant::now() + opts.timeout;
        let (sink, mut source) = match timeout_at(deadline, dial(&opts, &settings)).await {
            Err(_) => return Err(ClientError::Timeout("connect")),
            Ok(dialled) => dialled?,
        };
        let first = match timeout_at(deadline, source.next_frame()).await {
            Err(_) => return Err(ClientError::Timeout("hello")),
            Ok(first) => first,
        };
        let hello = match first {
            Next::Frame(ServerFrame::Hello(hello)) => hello,
            Next::Frame(ServerFrame::Error { code, message, .. }) => {
                return Err(ClientError::Refused { code, message })
            }
            Next::Frame(ServerFrame::Resync { reason }) => return Err(ClientError::Resync(reason)),
            Next::Frame(other) => {
                return Err(ClientError::Protocol(format!("expected `hello` first, got `{}`", other.kind())))
            }
            Next::Closed(info) => return Err(info.error()),
            Next::Invalid(what) => return Err(ClientError::Protocol(what)),
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "the edge speaks protocol {}, this client {PROTOCOL_VERSION}",
                hello.protocol
            )));
        }

        let heartbeat = match settings.heartbeat {
            Heartbeat::Off => None,
            Heartbeat::Every(period) => Some(period.max(MIN_HEARTBEAT)),
            Heartbeat::Auto => {
                (hello.heartbeat_ms > 0).then(|| Duration::from_millis(hello.heartbeat_ms / 2).max(MIN_HEARTBEAT))
            }
        };
        let wire = match opts.transport {
            Transport::WsJson => Wire::WsJson,
            Transport::WsMsgpack => Wire::WsMsgPack,
            Transport::Quic { .. } => Wire::Quic,
        };
        let shared = Arc::new(Shared::default());
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (events_tx, events) = mpsc::channel(settings.event_queue.max(1));
        let span = tracing::debug_span!(
            "client",
            transport = opts.transport.name(),
            addr = %opts.addr,
            session = %hello.session_id
        );
        let writer =
            tokio::spawn(write_loop(sink, outbound_rx, shared.clone(), wire, heartbeat).instrument(span.clone()));
        let reader = tokio::spawn(read_loop(source, shared.clone(), events_tx, outbound.clone()).instrument(span));

        // Until an event arrives, resume from where this session started: the cursor resumed
        // from (its missed events are still to come), or the boot payload's.
        let last_cursor = match (&opts.resume, hello.resumed) {
            (Some(resumed_from), true) => Some(resumed_from.clone()),
            _ => Some(hello.cursor.clone()),
        };
        Ok(Client {
            handle: Handle { shared, outbound, wire, request_timeout: settings.request_timeout },
            events,
            hello,
            opts,
            settings,
            last_cursor,
            resync: false,
            reader,
            writer,
        })
    }

    /// The edge's `hello`: the session's boot payload.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The options this client connected with.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// A cloneable handle for sending from other tasks.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Posts a message and waits until it is durable. See [`Handle::send`].
    pub async fn send(
        &self,
        channel: &ChannelId,
        text: &str,
        client_msg_id: &str,
        thread_root: Option<Seq>,
    ) -> Result<Ack, ClientError> {
        self.handle.send(channel, text, client_msg_id, thread_root).await
    }

    /// Asks a query. See [`Handle::query`].
    pub async fn query(&self, q: Query) -> Result<QueryResult, ClientError> {
        self.handle.query(q).await
    }

    /// Round trip of a `ping`. See [`Handle::ping`].
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.handle.ping().await
    }

    /// Writes a frame without waiting for any answer. See [`Handle::send_frame`].
    pub async fn send_frame(&self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.handle.send_frame(frame).await
    }

    /// Writes arbitrary bytes as one frame. See [`Handle::send_raw`].
    pub async fn send_raw(&self, bytes: Vec<u8>, binary: bool) -> Result<(), ClientError> {
        self.handle.send_raw(bytes, binary).await
    }

    /// The next event, `goodbye`, `resync`, unsolicited error or close, waiting at most `timeout`
    /// (`Ok(None)` then). After [`Inbound::Closed`] has been returned, fails with
    /// [`ClientError::Closed`].
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<Inbound>, ClientError> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(self.handle.shared.closed_error()),
            Ok(Some(inbound)) => {
                match &inbound {
                    // Max, not last: a cursor never moves backwards, whatever an edge puts on an
                    // ephemeral event.
                    Inbound::Event(frame) if self.last_cursor.as_ref().is_none_or(|c| frame.cursor > *c) => {
                        self.last_cursor = Some(frame.cursor.clone());
                    }
                    Inbound::Resync { .. } => self.resync = true,
                    _ => {}
                }
                Ok(Some(inbound))
            }
        }
    }

    /// The cursor to resume from: that of the newest event [`Client::next_event`] returned, or
    /// where the session started (the cursor resumed from, or `hello.cursor`) before any. `None`
    /// after a `resync`: there is nothing valid to resume from.
    pub fn last_cursor(&self) -> Option<Cursor> {
        if self.resync {
            return None;
        }
        self.last_cursor.clone()
    }

    /// This client's options with `resume` set to [`Client::last_cursor`]: what to reconnect with.
    pub fn connect_options_with_resume(&self) -> ConnectOptions {
        ConnectOptions { resume: self.last_cursor(), ..self.opts.clone() }
    }

    /// Closes this client, waits `delay` (e.g. a `goodbye`'s `reconnect_in_ms`) and connects again
    /// with the same options and settings, resuming from [`Client::last_cursor`]. Events not yet
    /// returned by `next_event` are replayed by the new session.
    pub async fn reconnect(self, delay: Duration) -> Result<Client, ClientError> {
        let opts = self.connect_options_with_resume();
        let settings = self.settings.clone();
        self.close().await;
        tokio::time::sleep(delay).await;
        Client::connect_with(opts, settings).await
    }

    /// Closes the connection politely (WebSocket close 1000; QUIC: finishes the stream, then
    /// closes with code 1000), waiting a bounded time for the edge's side of the handshake.
    pub async fn close(mut self) {
        // The reader discards events from now on instead of waiting for room.
        self.events.close();
        let close = Outgoing::Close { code: CLOSE_NORMAL, reason: "client closed".to_owned() };
        if let Ok(Ok(())) = timeout(CLOSE_GRACE, self.handle.outbound.send(close)).await {
            let _ = timeout(CLOSE_GRACE, &mut self.writer).await;
            let _ = timeout(CLOSE_GRACE, &mut self.reader).await;
        }
        // Drop aborts whatever is left.
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.handle.shared.close(CloseInfo::new(None, "closed by this client"), false);
        self.reader.abort();
        self.writer.abort();
    }
}

impl Handle {
    /// Posts `text` to `channel` (a reply in the thread of `thread_root` if set) and waits for
    /// the `ack`, which the edge sends once the message is durable. An `error` reply is
    /// [`ClientError::Refused`]. Retrying with the same `client_msg_id` gets the original `seq`.
    pub async fn send(
        &self,
        channel: &ChannelId,
        text: &str,
        client_msg_id: &str,
        thread_root: Option<Seq>,
    ) -> Result<Ack, ClientError> {
        let id = self.shared.next_id("r");
        let frame = ClientFrame::Send {
            id: id.clone(),
            channel: channel.clone(),
            text: text.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            thread_root,
        };
        match self.request(&id, &frame, "ack").await? {
            Reply::Ack(ack) if ack.channel == *channel => Ok(ack),
            Reply::Ack(ack) => {
                Err(ClientError::Protocol(format!("the ack of a send to {channel} names channel {}", ack.channel)))
            }
            Reply::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(unexpected_reply(&id, "ack", &other)),
        }
    }

    /// Asks `q` and waits for its `result`; `q.id` is replaced by a fresh request id. An `error`
    /// reply is [`ClientError::Refused`].
    pub async fn query(&self, mut q: Query) -> Result<QueryResult, ClientError> {
        let id = self.shared.next_id("r");
        q.id = id.clone();
        match self.request(&id, &ClientFrame::Query(q), "result").await? {
            Reply::Result(result) => Ok(result),
            Reply::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(unexpected_reply(&id, "result", &other)),
        }
    }

    /// Sends a `ping` and returns the time until its `pong`.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let id = self.shared.next_id("r");
        let start = Instant::now();
        match self.request(&id, &ClientFrame::Ping { id: id.clone() }, "pong").await? {
            Reply::Pong => Ok(start.elapsed()),
            Reply::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(unexpected_reply(&id, "pong", &other)),
        }
    }

    /// Writes `frame` as it is (`typing`, `mark_read`, `presence_sub`, or a request with an id of
    /// the caller's choosing) and returns once it is on the wire, without waiting for any
    /// answer. Replies to its id are not awaited: an `error` shows up as [`Inbound::Error`],
    /// anything else is dropped.
    pub async fn send_frame(&self, frame: &ClientFrame) -> Result<(), ClientError> {
        let (bytes, binary) = self.wire.encode(frame)?;
        self.write(bytes, binary).await
    }

    /// Writes arbitrary bytes as one frame, for bad-input tests, and returns once they are on the
    /// wire. WebSocket: one binary message when `binary`, else one text message (sent as a raw
    /// frame if the bytes are not UTF-8). QUIC: `binary` is ignored; the bytes are written as the
    /// body of one length-prefixed frame.
    pub async fn send_raw(&self, bytes: Vec<u8>, binary: bool) -> Result<(), ClientError> {
        let (bytes, binary) = self.wire.raw(bytes, binary)?;
        self.write(bytes, binary).await
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Hands a frame to the writer and waits until it is written.
    async fn write(&self, bytes: Vec<u8>, binary: bool) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(self.shared.closed_error());
        }
        let deadline = Instant::now() + self.request_timeout;
        let (written, done) = oneshot::channel();
        self.enqueue(Outgoing::Data { bytes, binary, written: Some(written) }, deadline).await?;
        match timeout_at(deadline, done).await {
            Err(_) => Err(ClientError::Timeout("the frame to be written")),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(result)) => result,
        }
    }

    /// Sends a request frame whose id is `id` and waits for the reply naming it.
    async fn request(&self, id: &str, frame: &ClientFrame, awaited: &'static str) -> Result<Reply, ClientError> {
        let (bytes, binary) = self.wire.encode(frame)?;
        let deadline = Instant::now() + self.request_timeout;
        // Registered before the frame leaves, so even an instant reply finds its waiter.
        let reply = self.shared.register(id)?;
        let _waiting = Waiting { shared: &self.shared, id };
        self.enqueue(Outgoing::Data { bytes, binary, written: None }, deadline).await?;
        match timeout_at(deadline, reply).await {
            Err(_) => Err(ClientError::Timeout(awaited)),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    async fn enqueue(&self, item: Outgoing, deadline: Instant) -> Result<(), ClientError> {
        match timeout_at(deadline, self.outbound.send(item)).await {
            Err(_) => Err(ClientError::Timeout("room in the outbound queue")),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(())) => Ok(()),
        }
    }
}

fn unexpected_reply(id: &str, expected: &str, got: &Reply) -> ClientError {
    ClientError::Protocol(format!("request {id} expected `{expected}`, got `{}`", got.kind()))
}

/// How a connection ended.
#[derive(Clone, Debug)]
struct CloseInfo {
    code: Option<u16>,
    reason: String,
}

impl CloseInfo {
    fn new(code: Option<u16>, reason: impl Into<String>) -> CloseInfo {
        CloseInfo { code, reason: reason.into() }
    }

    fn error(&self) -> ClientError {
        ClientError::Closed { code: self.code, reason: self.reason.clone() }
    }

    fn inbound(&self) -> Inbound {
        Inbound::Closed { code: self.code, reason: self.reason.clone() }
    }
}

/// A reply to a request, routed by its `reply_to`.
enum Reply {
    Ack(Ack),
    Result(QueryResult),
    Pong,
    Error { code: ErrorCode, message: String },
}

impl Reply {
    fn kind(&self) -> &'static str {
        match self {
            Reply::Ack(_) => "ack",
            Reply::Result(_) => "result",
            Reply::Pong => "pong",
            Reply::Error { .. } => "error",
        }
    }
}

/// State the caller side and the reader and writer tasks share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Requests waiting for their reply, by request id.
    pending: HashMap<String, oneshot::Sender<Reply>>,
    /// Set once the connection is gone; no request is registered after that.
    closed: Option<CloseInfo>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections cannot leave the state inconsistent, so a poisoned lock is fine
        // to keep using.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request id unique within this client.
    fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn register(&self, id: &str) -> Result<oneshot::Receiver<Reply>, ClientError> {
        let mut state = self.lock();
        if let Some(info) = &state.closed {
            return Err(info.error());
        }
        let (tx, rx) = oneshot::channel();
        state.pending.insert(id.to_owned(), tx);
        Ok(rx)
    }

    /// Hands `reply` to the request waiting for `id`; gives it back when none is.
    fn complete(&self, id: &str, reply: Reply) -> Option<Reply> {
        let waiter = self.lock().pending.remove(id);
        match waiter {
            Some(waiter) => waiter.send(reply).err(),
            None => Some(reply),
        }
    }

    fn forget(&self, id: &str) {
        self.lock().pending.remove(id);
    }

    /// Marks the connection closed and fails every waiting request. What the reader saw
    /// (`authoritative`) replaces an earlier guess; otherwise the first reason stays.
    fn close(&self, info: CloseInfo, authoritative: bool) {
        let mut state = self.lock();
        if authoritative || state.closed.is_none() {
            state.closed = Some(info);
        }
        // Dropping the senders wakes the waiters, which then read `closed`.
        state.pending.clear();
    }

    fn closed_error(&self) -> ClientError {
        match &self.lock().closed {
            Some(info) => info.error(),
            None => ClientError::Closed { code: None, reason: "connection closed".to_owned() },
        }
    }
}

/// Unregisters a request when its call returns or is cancelled.
struct Waiting<'a> {
    shared: &'a Shared,
    id: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

/// How frames are put on the wire.
#[derive(Clone, Copy, Debug)]
enum Wire {
    WsJson,
    WsMsgPack,
    Quic,
}

impl Wire {
    /// The bytes of a frame and whether they travel as a binary WebSocket message.
    fn encode(self, frame: &ClientFrame) -> Result<(Vec<u8>, bool), ClientError> {
        match self {
            Wire::WsJson => Ok((encode_client(frame, Format::Json), false)),
            Wire::WsMsgPack => Ok((encode_client(frame, Format::MsgPack), true)),
            Wire::Quic => {
                let bytes = encode_frame(frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
                Ok((bytes, true))
            }
        }
    }

    fn raw(self, bytes: Vec<u8>, binary: bool) -> Result<(Vec<u8>, bool), ClientError> {
        match self {
            Wire::WsJson | Wire::WsMsgPack => Ok((bytes, binary)),
            Wire::Quic => {
                let len = u32::try_from(bytes.len())
                    .map_err(|_| ClientError::Protocol(format!("{} bytes do not fit one frame", bytes.len())))?;
                let mut framed = Vec::with_capacity(FRAME_PREFIX_BYTES + bytes.len());
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(&bytes);
                Ok((framed, true))
            }
        }
    }
}

/// What the writer task is asked to do.
enum Outgoing {
    /// Write one frame; report on `written` when asked to.
    Data { bytes: Vec<u8>, binary: bool, written: Option<oneshot::Sender<Result<(), ClientError>>> },
    /// Close the connection and stop.
    Close { code: u16, reason: String },
}

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The send half of a connection.
enum FrameSink {
    Ws(SplitSink<WsStream, Message>),
    Quic { send: quinn::SendStream, conn: quinn::Connection, endpoint: quinn::Endpoint },
}

impl FrameSink {
    async fn write(&mut self, bytes: Vec<u8>, binary: bool) -> Result<(), String> {
        match self {
            FrameSink::Ws(sink) => sink.send(ws_message(bytes, binary)).await.map_err(|e| e.to_string()),
            FrameSink::Quic { send, .. } => send.write_all(&bytes).await.map_err(|e| e.to_string()),
        }
    }

    /// Closes, waiting a bounded time for each step.
    async fn close(&mut self, code: u16, reason: &str) {
        match self {
            FrameSink::Ws(sink) => {
                let frame = CloseFrame { code: CloseCode::from(code), reason: truncate(reason).into() };
                let _ = timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
            }
            FrameSink::Quic { send, conn, endpoint } => {
                // Let the edge read everything written before closing the connection, which would
                // discard data still in flight.
                if send.finish().is_ok() {
                    let _ = timeout(CLOSE_GRACE, send.stopped()).await;
                }
                conn.close(VarInt::from_u32(code.into()), truncate(reason).as_bytes());
                let _ = timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
            }
        }
    }
}

/// A close reason cut to what a WebSocket close frame can carry.
fn truncate(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn ws_message(bytes: Vec<u8>, binary: bool) -> Message {
    if binary {
        return Message::Binary(bytes.into());
    }
    match String::from_utf8(bytes) {
        Ok(text) => Message::Text(text.into()),
        // A text message that is not UTF-8 can only be sent as a raw frame (bad-input tests).
        Err(e) => Message::Frame(Frame::message(e.into_bytes(), OpCode::Data(Data::Text), true)),
    }
}

/// The receive half of a connection.
enum FrameSource {
    Ws(SplitStream<WsStream>),
    Quic { recv: quinn::RecvStream, conn: quinn::Connection },
}

/// What reading the next frame gave (mostly frames; see [`Inbound`] on boxing).
#[allow(clippy::large_enum_variant)]
enum Next {
    Frame(ServerFrame),
    Closed(CloseInfo),
    /// The edge broke the protocol; what it did.
    Invalid(String),
}

impl FrameSource {
    async fn next_frame(&mut self) -> Next {
        match self {
            FrameSource::Ws(stream) => loop {
                let message = match stream.next().await {
                    None => return Next::Closed(CloseInfo::new(None, "the connection ended")),
                    Some(Err(e)) => return Next::Closed(ws_error_close(e)),
                    Some(Ok(message)) => message,
                };
                let decoded = match message {
                    Message::Text(text) => decode_server(text.as_bytes(), Format::Json),
                    Message::Binary(bytes) => decode_server(&bytes, Format::MsgPack),
                    Message::Close(frame) => {
                        let info = match frame {
                            Some(frame) => CloseInfo::new(Some(u16::from(frame.code)), frame.reason.as_str()),
                            None => CloseInfo::new(None, "closed by the edge without a reason"),
                        };
                        // Reading on sends tungstenite's reply to the close and sees the edge hang up.
                        let _ = timeout(CLOSE_GRACE, async { while stream.next().await.is_some() {} }).await;
                        return Next::Closed(info);
                    }
                    // tungstenite answers pings itself while reading.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                };
                return match decoded {
                    Ok(frame) => Next::Frame(frame),
                    Err(e) => Next::Invalid(format!("undecodable server frame: {e}")),
                };
            },
            FrameSource::Quic { recv, conn } => read_quic_frame(recv, conn).await,
        }
    }
}

async fn read_quic_frame(recv: &mut quinn::RecvStream, conn: &quinn::Connection) -> Next {
    let body = match read_frame(recv, MAX_SERVER_FRAME_BYTES).await {
        Ok(Some(body)) => body,
        // The edge finished its stream; the connection's close, with its reason, follows.
        Ok(None) => {
            return Next::Closed(match timeout(CLOSE_GRACE, conn.closed()).await {
                Ok(e) => quic_close_info(e),
                Err(_) => CloseInfo::new(None, "the edge finished the stream"),
            })
        }
        Err(FrameReadError::Read(e)) => return Next::Closed(quic_read_close(e)),
        Err(FrameReadError::TooLarge(e)) => return Next::Invalid(format!("server frame refused: {e}")),
        Err(e @ FrameReadError::Truncated { .. }) => return Next::Invalid(e.to_string()),
    };
    match decode_server(&body, Format::MsgPack) {
        Ok(frame) => Next::Frame(frame),
        Err(e) => Next::Invalid(format!("undecodable server frame: {e}")),
    }
}

fn ws_error_close(e: tungstenite::Error) -> CloseInfo {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            CloseInfo::new(None, "the connection ended")
        }
        other => CloseInfo::new(None, format!("connection lost: {other}")),
    }
}

fn quic_code(code: VarInt) -> Option<u16> {
    u16::try_from(code.into_inner()).ok()
}

fn quic_close_info(e: ConnectionError) -> CloseInfo {
    match e {
        ConnectionError::ApplicationClosed(close) => {
            CloseInfo::new(quic_code(close.error_code), String::from_utf8_lossy(&close.reason).into_owned())
        }
        ConnectionError::LocallyClosed => CloseInfo::new(None, "closed by this client"),
        other => CloseInfo::new(None, format!("connection lost: {other}")),
    }
}

fn quic_read_close(e: ReadError) -> CloseInfo {
    match e {
        ReadError::ConnectionLost(e) => quic_close_info(e),
        ReadError::Reset(code) => CloseInfo::new(quic_code(code), "the edge reset the stream"),
        other => CloseInfo::new(None, format!("stream failed: {other}")),
    }
}

/// Writes frames in the order they are handed over, plus heartbeats, until asked to close or the
/// connection fails.
async fn write_loop(
    mut sink: FrameSink,
    mut outbound: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
    wire: Wire,
    heartbeat: Option<Duration>,
) {
    let mut ticker = heartbeat.map(|period| {
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    loop {
        let item = tokio::select! {
            item = outbound.recv() => item,
            () = tick(&mut ticker) => {
                // A heartbeat's pong matches no waiter and is dropped by the reader.
                match wire.encode(&ClientFrame::Ping { id: shared.next_id("hb-") }) {
                    Ok((bytes, binary)) => Some(Outgoing::Data { bytes, binary, written: None }),
                    Err(_) => continue,
                }
            }
        };
        match item {
            Some(Outgoing::Data { bytes, binary, written }) => {
                let result = sink.write(bytes, binary).await;
                let failure = result.as_ref().err().map(|e| format!("write failed: {e}"));
                if let Some(written) = written {
                    let _ = written.send(result.map_err(|e| ClientError::Closed { code: None, reason: e }));
                }
                if let Some(reason) = failure {
                    tracing::debug!(%reason, "writer stops");
                    shared.close(CloseInfo::new(None, reason), false);
                    return;
                }
            }
            Some(Outgoing::Close { code, reason }) => return sink.close(code, &reason).await,
            // Unreachable while the reader holds a sender; close anyway.
            None => return sink.close(CLOSE_NORMAL, "client closed").await,
        }
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Reads server frames until the connection ends: replies go to their waiters, the rest to the
/// event queue (waiting for room: see the module docs), then the close.
async fn read_loop(
    mut source: FrameSource,
    shared: Arc<Shared>,
    events: mpsc::Sender<Inbound>,
    outbound: mpsc::Sender<Outgoing>,
) {
    let info = loop {
        let problem = match source.next_frame().await {
            Next::Frame(frame) => match dispatch(&shared, frame) {
                Ok(None) => continue,
                Ok(Some(inbound)) => {
                    // Fails only once the client stopped reading events (closing); the event is
                    // then of no use.
                    let _ = events.send(inbound).await;
                    continue;
                }
                Err(problem) => problem,
            },
            Next::Closed(info) => break info,
            Next::Invalid(problem) => problem,
        };
        let reason = format!("protocol error: {problem}");
        tracing::warn!(%reason, "closing the connection");
        let close = Outgoing::Close { code: CLOSE_PROTOCOL_ERROR, reason: reason.clone() };
        let _ = timeout(CLOSE_GRACE, outbound.send(close)).await;
        break CloseInfo::new(None, reason);
    };
    tracing::debug!(code = ?info.code, reason = %info.reason, "connection closed");
    shared.close(info.clone(), true);
    let _ = events.send(info.inbound()).await;
}

/// Routes one server frame: `Ok(Some(_))` for the event queue, `Ok(None)` when handled, `Err` for
/// a protocol violation.
fn dispatch(shared: &Shared, frame: ServerFrame) -> Result<Option<Inbound>, String> {
    let (id, reply) = match frame {
        ServerFrame::Event(event) => return Ok(Some(Inbound::Event(event))),
        ServerFrame::Goodbye { reconnect_in_ms } => return Ok(Some(Inbound::Goodbye { reconnect_in_ms })),
        ServerFrame::Resync { reason } => return Ok(Some(Inbound::Resync { reason })),
        ServerFrame::Error { reply_to: None, code, message } => return Ok(Some(Inbound::Error { code, message })),
        ServerFrame::Hello(_) => return Err("a second `hello`".to_owned()),
        ServerFrame::Error { reply_to: Some(id), code, message } => (id, Reply::Error { code, message }),
        ServerFrame::Ack { reply_to, channel, seq, ts } => (reply_to, Reply::Ack(Ack { channel, seq, ts })),
        ServerFrame::Pong { reply_to } => (reply_to, Reply::Pong),
        ServerFrame::Result(result) => (result.reply_to.clone(), Reply::Result(result)),
    };
    match shared.complete(&id, reply) {
        None => Ok(None),
        Some(Reply::Error { code, message }) => Ok(Some(Inbound::Error { code, message })),
        // A heartbeat's pong, or a reply that came after its request timed out.
        Some(other) => {
            tracing::trace!(reply_to = %id, kind = other.kind(), "reply nobody waits for");
            Ok(None)
        }
    }
}

/// Opens the connection (and, for QUIC, sends `ClientOpen`).
async fn dial(opts: &ConnectOptions, settings: &ClientSettings) -> Result<(FrameSink, FrameSource), ClientError> {
    match &opts.transport {
        Transport::WsJson | Transport::WsMsgpack => dial_ws(opts, settings).await,
        Transport::Quic { trust, server_name } => dial_quic(opts, trust, server_name).await,
    }
}

async fn dial_ws(opts: &ConnectOptions, settings: &ClientSettings) -> Result<(FrameSink, FrameSource), ClientError> {
    let shown = ws_url(opts, false);
    let mut request = ws_url(opts, settings.token_in_query)
        .into_client_request()
        .map_err(|e| ClientError::Connect(format!("bad address {:?}: {e}", opts.addr)))?;
    if !settings.token_in_query && !opts.token.is_empty() {
        let value = HeaderValue::from_str(&format!("Bearer {}", opts.token))
            .map_err(|_| ClientError::Connect("the token is not a valid HTTP header value".to_owned()))?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_SERVER_FRAME_BYTES))
        .max_frame_size(Some(MAX_SERVER_FRAME_BYTES));
    let (ws, _response) = match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
        Ok(connected) => connected,
        Err(tungstenite::Error::Http(response)) => {
            return Err(http_refusal(response.status(), response.body().as_deref().unwrap_or_default()))
        }
        Err(e) => return Err(ClientError::Connect(format!("WebSocket connection to {shown} failed: {e}"))),
    };
    let (sink, stream) = ws.split();
    Ok((FrameSink::Ws(sink), FrameSource::Ws(stream)))
}

/// The error for an upgrade answered with an HTTP error: the edge's `{"error": {code, message}}`
/// body when it sent one, else a code that fits the status.
fn http_refusal(status: StatusCode, body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct Body {
        error: ErrorBody,
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        code: ErrorCode,
        message: String,
    }
    if let Ok(Body { error }) = serde_json::from_slice::<Body>(body) {
        return ClientError::Refused { code: error.code, message: error.message };
    }
    let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
    let message = format!("HTTP {status} instead of a WebSocket upgrade: {text}");
    let code = match status {
        StatusCode::BAD_REQUEST => ErrorCode::BadRequest,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        _ => return ClientError::Connect(message),
    };
    ClientError::Refused { code, message }
}

async fn dial_quic(
    opts: &ConnectOptions,
    trust: &Trust,
    server_name: &str,
) -> Result<(FrameSink, FrameSource), ClientError> {
    let addr = tokio::net::lookup_host(opts.addr.as_str())
        .await
        .map_err(|e| ClientError::Connect(format!("cannot resolve {:?}: {e}", opts.addr)))?
        .next()
        .ok_or_else(|| ClientError::Connect(format!("{:?} resolves to no address", opts.addr)))?;
    let config = quic_client_config(trust)?;
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = quinn::Endpoint::client(bind)?;
    let open = ClientOpen { token: opts.token.clone(), resume: opts.resume.clone() };
    let (conn, send, recv) = open_quic_session(&endpoint, config, addr, server_name, &open).await?;
    Ok((FrameSink::Quic { send, conn: conn.clone(), endpoint }, FrameSource::Quic { recv, conn }))
}

/// The QUIC client configuration of a session: TLS 1.3 trusting `trust`, ALPN `selvage/1`, and
/// a keep-alive.
pub(crate) fn quic_client_config(trust: &Trust) -> Result<quinn::ClientConfig, ClientError> {
    let tls_config =
        tls::client_config(trust, &[CLIENT_ALPN]).map_err(|e| ClientError::Connect(format!("TLS settings: {e}")))?;
    let crypto = QuicClientConfig::try_from(tls_config)
        .map_err(|e| ClientError::Connect(format!("TLS settings unusable for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(QUIC_KEEP_ALIVE));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Opens a session's QUIC connection to `addr` through `endpoint`, its stream, and writes
/// `open` on it; the edge's `hello` comes next on the returned stream.
pub(crate) async fn open_quic_session(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    open: &ClientOpen,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), ClientError> {
    let conn = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|e| ClientError::Connect(format!("QUIC connection to {addr}: {e}")))?
        .await
        .map_err(|e| ClientError::Connect(format!("QUIC handshake with {addr} failed: {e}")))?;
    let (mut send, recv) = conn.open_bi().await.map_err(quic_open_error)?;
    let open = encode_frame(open).map_err(|e| ClientError::Protocol(e.to_string()))?;
    send.write_all(&open).await.map_err(|e| match e {
        WriteError::ConnectionLost(e) => quic_open_error(e),
        other => ClientError::Connect(format!("cannot write the open frame: {other}")),
    })?;
    Ok((conn, send, recv))
}

/// An edge that closes the connection with a reason while it is being opened refused it.
fn quic_open_error(e: ConnectionError) -> ClientError {
    match e {
        ConnectionError::ApplicationClosed(_) => quic_close_info(e).error(),
        other => ClientError::Connect(format!("cannot open the QUIC stream: {other}")),
    }
}

#[cfg(test)]
mod tests {
    //! The client against tiny in-test edges (a tokio-tungstenite server and a quinn server on
    //! port 0) that script the protocol: `send` texts steer what the edge does.

    use futures::future::join_all;
    use quinn::crypto::rustls::QuicServerConfig;
    use selvage_net::tls::Identity;
    use selvage_shared::{
        decode_client, encode_server, from_msgpack, DecodeError, Event, Message as ChatMessage, User, UserId,
        MAX_CLIENT_FRAME_BYTES,
    };
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    use super::*;

    const TOKEN: &str = "tok-1";
    const WAIT: Duration = Duration::from_secs(5);
    const TEST_DEADLINE: Duration = Duration::from_secs(30);
    /// Heartbeat the fake edges announce unless a test asks otherwise: long enough to stay out
    /// of the way.
    const QUIET_HEARTBEAT_MS: u64 = 60_000;

    async fn within<T>(test: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(TEST_DEADLINE, test).await.expect("test deadline passed")
    }

    fn cursor(n: u64) -> Cursor {
        let mut position = [0u8; 12];
        position[2..10].copy_from_slice(&n.to_be_bytes());
        Cursor::from_position(&position)
    }

    fn chan() -> ChannelId {
        ChannelId::new_unchecked("C1")
    }

    fn user(id: &str) -> UserId {
        UserId::new_unchecked(id)
    }

    fn hello(resume: Option<Cursor>, heartbeat_ms: u64, session: &str) -> ServerFrame {
        ServerFrame::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            session_id: session.to_owned(),
            resumed: resume.is_some(),
            cursor: resume.unwrap_or_else(|| cursor(0)),
            self_user: User {
                id: user("U1"),
                handle: "ada".into(),
                name: "Ada".into(),
                admin: false,
                deactivated: false,
                tokens_valid_from: 0,
                created_at: 1,
            },
            channels: Vec::new(),
            users: Vec::new(),
            heartbeat_ms,
        })
    }

    /// The server side of one client connection.
    enum ServerConn {
        Ws { ws: Box<WebSocketStream<TcpStream>>, format: Format },
        Quic { conn: quinn::Connection, send: quinn::SendStream, recv: quinn::RecvStream },
    }

    impl ServerConn {
        async fn send(&mut self, frame: &ServerFrame) {
            match self {
                ServerConn::Ws { ws, format } => {
                    let bytes = encode_server(frame, *format);
                    let message = match format {
                        Format::Json => Message::Text(String::from_utf8(bytes).unwrap().into()),
                        Format::MsgPack => Message::Binary(bytes.into()),
                    };
                    let _ = ws.send(message).await;
                }
                ServerConn::Quic { send, .. } => {
                    let _ = send.write_all(&encode_frame(frame).unwrap()).await;
                }
            }
        }

        /// The next client frame; `None` once the client is gone.
        async fn recv(&mut self) -> Option<Result<ClientFrame, DecodeError>> {
            match self {
                ServerConn::Ws { ws, .. } => loop {
                    match ws.next().await? {
                        Ok(Message::Text(text)) => return Some(decode_client(text.as_bytes(), Format::Json)),
                        Ok(Message::Binary(bytes)) => return Some(decode_client(&bytes, Format::MsgPack)),
                        Ok(Message::Close(_)) | Err(_) => return None,
                        Ok(_) => continue,
                    }
                },
                ServerConn::Quic { recv, .. } => match read_frame(recv, MAX_CLIENT_FRAME_BYTES).await {
                    Ok(body) => Some(decode_client(&body?, Format::MsgPack)),
                    Err(FrameReadError::TooLarge(e)) => Some(Err(e)),
                    Err(_) => None,
                },
            }
        }

        async fn close(&mut self, code: u16, reason: &str) {
            match self {
                ServerConn::Ws { ws, .. } => {
                    let _ = (**ws).close(Some(CloseFrame { code: code.into(), reason: reason.into() })).await;
                    // Wait for the client's side of the close handshake.
                    let _ = timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
                }
                ServerConn::Quic { conn, .. } => conn.close(VarInt::from_u32(code.into()), reason.as_bytes()),
            }
        }

        /// The client closed: complete the WebSocket close handshake.
        async fn finish(&mut self) {
            if let ServerConn::Ws { ws, .. } = self {
                let _ = (**ws).close(None).await;
            }
        }
    }

    /// The scripted edge behind every fake listener. `send` texts: `close` closes the connection
    /// (4000, "test over"); `refuse` is answered with `not_member`; `ignore` is not answered;
    /// `c:{i}:{n}` is held until n of them arrived, then all are acked in reverse order with seq
    /// 1000 + i; anything else is acked with the next seq and pushed back as a `message` event.
    /// `ping` → `pong`; `query` → members U1, U2; `typing` → `goodbye`; `mark_read` → an error
    /// without reply_to; `presence_sub` → `resync`; undecodable input → `error` from the decoder.
    async fn session(mut conn: ServerConn, hello: ServerFrame, seen: mpsc::Sender<String>) {
        conn.send(&hello).await;
        let mut seq = 0;
        let mut held: Vec<(String, ChannelId, u64)> = Vec::new();
        while let Some(frame) = conn.recv().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    conn.send(&ServerFrame::error(None, e.code(), e.to_string())).await;
                    continue;
                }
            };
            match frame {
                ClientFrame::Send { id, channel, text, client_msg_id, .. } => match text.as_str() {
                    "close" => return conn.close(4000, "test over").await,
                    "refuse" => conn.send(&ServerFrame::error(Some(id), ErrorCode::NotMember, "join first")).await,
                    "ignore" => {}
                    batch if batch.starts_with("c:") => {
                        let mut parts = batch[2..].split(':').map(|n| n.parse::<usize>().unwrap());
                        let (i, n) = (parts.next().unwrap(), parts.next().unwrap());
                        held.push((id, channel, 1000 + i as u64));
                        if held.len() == n {
                            for (reply_to, channel, seq) in held.drain(..).rev() {
                                conn.send(&ServerFrame::Ack { reply_to, channel, seq, ts: 7 }).await;
                            }
                        }
                    }
                    _ => {
                        seq += 1;
                        let ts = 1_000 + seq as i64;
                        conn.send(&ServerFrame::Ack { reply_to: id, channel: channel.clone(), seq, ts }).await;
                        let message =
                            ChatMessage { client_msg_id, ..ChatMessage::new(channel, seq, ts, user("U1"), text) };
                        conn.send(&ServerFrame::event(cursor(seq), Event::Message(message))).await;
                    }
                },
                ClientFrame::Ping { id } => {
                    if id.starts_with("hb-") {
                        let _ = seen.try_send("heartbeat".to_owned());
                    }
                    conn.send(&ServerFrame::Pong { reply_to: id }).await;
                }
                ClientFrame::Query(q) => {
                    let result =
                        QueryResult { reply_to: q.id, members: vec![user("U1"), user("U2")], ..Default::default() };
                    conn.send(&ServerFrame::Result(result)).await;
                }
                ClientFrame::Typing { .. } => conn.send(&ServerFrame::Goodbye { reconnect_in_ms: 5 }).await,
                ClientFrame::MarkRead { .. } => {
                    conn.send(&ServerFrame::error(None, ErrorCode::RateLimited, "slow down")).await
                }
                ClientFrame::PresenceSub { .. } => {
                    conn.send(&ServerFrame::Resync { reason: "cursor too old".into() }).await
                }
                ClientFrame::SetPresence { .. } => {}
            }
        }
        conn.finish().await;
        let _ = seen.try_send("session over".to_owned());
    }

    /// A fake edge listening on 127.0.0.1:0; `seen` reports what it observed.
    struct FakeEdge {
        addr: String,
        /// The QUIC certificate's fingerprint (empty for WebSocket).
        fingerprint: String,
        seen: mpsc::Receiver<String>,
        task: JoinHandle<()>,
    }

    impl Drop for FakeEdge {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeEdge {
        /// Waits for a report starting with `prefix`, skipping others.
        async fn saw(&mut self, prefix: &str) -> String {
            self.saw_each(&[prefix]).await.remove(0)
        }

        /// Waits for one report starting with each prefix, in any order (reports of different
        /// connections race), skipping others; returns them in the order of `prefixes`.
        async fn saw_each(&mut self, prefixes: &[&str]) -> Vec<String> {
            let deadline = Instant::now() + WAIT;
            let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
            while found.iter().any(Option::is_none) {
                match timeout_at(deadline, self.seen.recv()).await {
                    Ok(Some(report)) => {
                        let slot = prefixes.iter().zip(&found).position(|(p, f)| f.is_none() && report.starts_with(p));
                        if let Some(i) = slot {
                            found[i] = Some(report);
                        }
                    }
                    other => panic!("the edge never reported all of {prefixes:?} (got {found:?}): {other:?}"),
                }
            }
            found.into_iter().flatten().collect()
        }

        fn transport(&self, kind: &str) -> Transport {
            match kind {
                "json" => Transport::WsJson,
                "msgpack" => Transport::WsMsgpack,
                _ => Transport::quic_pinned(self.fingerprint.clone()),
            }
        }

        fn options(&self, kind: &str) -> ConnectOptions {
            ConnectOptions::new(self.transport(kind), self.addr.clone(), TOKEN)
        }
    }

    fn refuse(status: u16, body: &str) -> ErrorResponse {
        let mut response = ErrorResponse::new(Some(body.to_owned()));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
    }

    async fn ws_edge(heartbeat_ms: u64) -> FakeEdge {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (seen_tx, seen) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen_tx.clone();
                tokio::spawn(async move {
                    let mut accepted = None;
                    // The callback's type is tungstenite's.
                    #[allow(clippy::result_large_err)]
                    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
                        if request.uri().path() != "/v1/connect" {
                            return Err(refuse(404, "no such path"));
                        }
                        let (mut format, mut resume, mut token) = (Format::Json, None, None);
                        for pair in request.uri().query().unwrap_or_default().split('&') {
                            match pair.split_once('=') {
                                Some(("format", f)) => format = Format::parse(f).unwrap(),
                                Some(("resume", c)) => resume = Some(Cursor::parse(c).unwrap()),
                                Some(("token", t)) => token = Some(t.to_owned()),
                                _ => {}
                            }
                        }
                        let header = request.headers().get("authorization").and_then(|v| v.to_str().ok());
                        let via = match (header, token.as_deref()) {
                            (Some(header), None) if header == format!("Bearer {TOKEN}") => "header",
                            (None, Some(TOKEN)) => "query",
                            _ => return Err(refuse(401, r#"{"error":{"code":"unauthorized","message":"bad token"}}"#)),
                        };
                        accepted = Some((format, resume, via));
                        Ok(response)
                    };
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else { return };
                    let Some((format, resume, via)) = accepted else { return };
                    let resumed = resume.as_ref().map(Cursor::to_string).unwrap_or_default();
                    let _ = seen.try_send(format!("connected format={format} via={via} resume={resumed}"));
                    session(ServerConn::Ws { ws: Box::new(ws), format }, hello(resume, heartbeat_ms, "S-ws"), seen)
                        .await;
                });
            }
        });
        FakeEdge { addr, fingerprint: String::new(), seen, task }
    }

    async fn quic_edge(heartbeat_ms: u64) -> FakeEdge {
        let identity = Identity::self_signed(&["localhost".into()]).unwrap();
        let fingerprint = identity.fingerprint();
        let tls = tls::server_config(identity, &[CLIENT_ALPN]).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap().to_string();
        let (seen_tx, seen) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let seen = seen_tx.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
                    let body = read_frame(&mut recv, MAX_CLIENT_FRAME_BYTES).await.unwrap().unwrap();
                    let open: ClientOpen = from_msgpack(&body).unwrap();
                    if open.token != TOKEN {
                        let refusal = ServerFrame::error(None, ErrorCode::Unauthorized, "bad token");
                        let _ = send.write_all(&encode_frame(&refusal).unwrap()).await;
                        let _ = send.finish();
                        let _ = timeout(WAIT, send.stopped()).await;
                        conn.close(VarInt::from_u32(4001), b"unauthorized");
                        return;
                    }
                    let resumed = open.resume.as_ref().map(Cursor::to_string).unwrap_or_default();
                    let _ = seen.try_send(format!("connected format=msgpack via=open resume={resumed}"));
                    let hello = hello(open.resume, heartbeat_ms, "S-quic");
                    session(ServerConn::Quic { conn, send, recv }, hello, seen).await;
                });
            }
        });
        FakeEdge { addr, fingerprint, seen, task }
    }

    async fn edge(kind: &str, heartbeat_ms: u64) -> FakeEdge {
        match kind {
            "quic" => quic_edge(heartbeat_ms).await,
            _ => ws_edge(heartbeat_ms).await,
        }
    }

    async fn next(client: &mut Client) -> Inbound {
        client.next_event(WAIT).await.unwrap().expect("an event before the deadline")
    }

    /// The whole protocol over one transport: hello, acks, events and cursors, ping, query,
    /// concurrent sends, refusals, unsolicited frames, bad input, and a close by the edge.
    async fn speaks_the_protocol(kind: &str) {
        let mut edge = edge(kind, QUIET_HEARTBEAT_MS).await;
        let mut client = Client::connect(edge.options(kind)).await.unwrap();
        let connected = edge.saw("connected").await;
        let expected_via = if kind == "quic" { "open" } else { "header" };
        assert!(connected.contains(&format!("via={expected_via} resume=")), "{connected}");
        assert!(connected.contains(if kind == "json" { "format=json" } else { "format=msgpack" }), "{connected}");

        let hello = client.hello();
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        assert_eq!(hello.session_id, if kind == "quic" { "S-quic" } else { "S-ws" });
        assert_eq!((hello.self_user.id.as_str(), hello.self_user.handle.as_str()), ("U1", "ada"));
        assert_eq!((hello.heartbeat_ms, hello.resumed), (QUIET_HEARTBEAT_MS, false));
        assert_eq!(client.last_cursor(), Some(cursor(0)), "before any event: the boot cursor");

        let ack = client.send(&chan(), "hello", "m1", None).await.unwrap();
        assert_eq!(ack, Ack { channel: chan(), seq: 1, ts: 1_001 });
        assert_eq!(client.send(&chan(), "again", "m2", None).await.unwrap().seq, 2);
        for (seq, text) in [(1, "hello"), (2, "again")] {
            match next(&mut client).await {
                Inbound::Event(EventFrame { event: Event::Message(m), cursor: c }) => {
                    assert_eq!((m.seq, m.text.as_str(), m.client_msg_id.as_str()), (seq, text, &*format!("m{seq}")));
                    assert_eq!(c, cursor(seq));
                    assert_eq!(client.last_cursor(), Some(cursor(seq)));
                }
                other => panic!("expected message {seq}, got {other:?}"),
            }
        }
        assert_eq!(client.connect_options_with_resume().resume, Some(cursor(2)));

        client.ping().await.unwrap();
        let members = client
            .query(Query { channel: Some(chan()), ..Query::new("", selvage_shared::QueryKind::Members) })
            .await
            .unwrap();
        assert_eq!(members.members, [user("U1"), user("U2")]);

        // Acks come back in reverse order; each call still gets its own.
        let n = 16;
        let texts: Vec<String> = (0..n).map(|i| format!("c:{i}:{n}")).collect();
        let msg_ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let channel = chan();
        let acks = join_all((0..n).map(|i| client.send(&channel, &texts[i], &msg_ids[i], None))).await;
        for (i, ack) in acks.into_iter().enumerate() {
            assert_eq!(ack.unwrap().seq, 1000 + i as u64, "send {i}");
        }

        match client.send(&chan(), "refuse", "m3", None).await {
            Err(ClientError::Refused { code: ErrorCode::NotMember, message }) => assert_eq!(message, "join first"),
            other => panic!("expected not_member, got {other:?}"),
        }

        client.send_frame(&ClientFrame::MarkRead { channel: chan(), seq: 2 }).await.unwrap();
        assert_eq!(
            next(&mut client).await,
            Inbound::Error { code: ErrorCode::RateLimited, message: "slow down".into() }
        );
        client.send_frame(&ClientFrame::Typing { channel: chan() }).await.unwrap();
        assert_eq!(next(&mut client).await, Inbound::Goodbye { reconnect_in_ms: 5 });

        let garbage = if kind == "json" { b"{not json".to_vec() } else { vec![0xc1] };
        client.send_raw(garbage, kind != "json").await.unwrap();
        match next(&mut client).await {
            Inbound::Error { code: ErrorCode::BadFrame, .. } => {}
            other => panic!("expected bad_frame, got {other:?}"),
        }
        client.ping().await.expect("the connection survives bad input");

        client.send_frame(&ClientFrame::PresenceSub { users: Vec::new() }).await.unwrap();
        assert_eq!(next(&mut client).await, Inbound::Resync { reason: "cursor too old".into() });
        assert_eq!(client.last_cursor(), None, "nothing to resume from after a resync");
        assert_eq!(client.connect_options_with_resume().resume, None);

        // The edge closes instead of acking: the waiting send and the event stream both learn why.
        match client.send(&chan(), "close", "m4", None).await {
            Err(ClientError::Closed { code: Some(4000), reason }) => assert_eq!(reason, "test over"),
            other => panic!("expected the close, got {other:?}"),
        }
        assert_eq!(next(&mut client).await, Inbound::Closed { code: Some(4000), reason: "test over".into() });
        assert!(matches!(client.next_event(WAIT).await, Err(ClientError::Closed { code: Some(4000), .. })));
        assert!(matches!(client.ping().await, Err(ClientError::Closed { .. })));
        assert!(client.is_closed());
        client.close().await;
    }

    #[tokio::test]
    async fn ws_json_client_speaks_the_protocol() {
        within(speaks_the_protocol("json")).await;
    }

    #[tokio::test]
    async fn ws_msgpack_client_speaks_the_protocol() {
        within(speaks_the_protocol("msgpack")).await;
    }

    #[tokio::test]
    async fn quic_client_speaks_the_protocol() {
        within(speaks_the_protocol("quic")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_from_many_tasks_get_their_own_replies() {
        within(async {
            for kind in ["msgpack", "quic"] {
                let edge = edge(kind, QUIET_HEARTBEAT_MS).await;
                let client = Client::connect(edge.options(kind)).await.unwrap();
                let n = 64;
                let tasks: Vec<_> = (0..n)
                    .map(|i| {
                        let handle = client.handle();
                        tokio::spawn(async move {
                            let ack = handle.send(&chan(), &format!("c:{i}:{n}"), &format!("c{i}"), None).await?;
                            handle.ping().await?;
                            Ok::<_, ClientError>(ack.seq)
                        })
                    })
                    .collect();
                for (i, task) in tasks.into_iter().enumerate() {
                    assert_eq!(task.await.unwrap().unwrap(), 1000 + i as u64, "{kind}: task {i}");
                }
                client.close().await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused() {
        within(async {
            for kind in ["json", "msgpack", "quic"] {
                let edge = edge(kind, QUIET_HEARTBEAT_MS).await;
                let opts = ConnectOptions { token: "wrong".into(), ..edge.options(kind) };
                match Client::connect(opts).await {
                    Err(ClientError::Refused { code: ErrorCode::Unauthorized, message }) => {
                        assert_eq!(message, "bad token", "{kind}")
                    }
                    Err(other) => panic!("{kind}: expected unauthorized, got {other}"),
                    Ok(_) => panic!("{kind}: connected with a wrong token"),
                }
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_wrong_pinned_fingerprint_fails_to_connect() {
        within(async {
            let edge = quic_edge(QUIET_HEARTBEAT_MS).await;
            let other = Identity::self_signed(&["localhost".into()]).unwrap().fingerprint();
            let opts = ConnectOptions::new(Transport::quic_pinned(other), edge.addr.clone(), TOKEN);
            match Client::connect(opts).await {
                Err(ClientError::Connect(message)) => {
                    assert!(message.contains("handshake") && message.contains("pinned"), "{message}")
                }
                Err(other) => panic!("expected a connect error, got {other}"),
                Ok(_) => panic!("connected to a certificate that is not the pinned one"),
            }
        })
        .await;
    }

    #[tokio::test]
    async fn reconnect_after_goodbye_resumes_from_the_last_event() {
        within(async {
            for kind in ["json", "quic"] {
                let mut edge = edge(kind, QUIET_HEARTBEAT_MS).await;
                let mut client = Client::connect(edge.options(kind)).await.unwrap();
                edge.saw("connected").await;
                client.send(&chan(), "one", "m1", None).await.unwrap();
                assert!(matches!(next(&mut client).await, Inbound::Event(_)));
                client.send_frame(&ClientFrame::Typing { channel: chan() }).await.unwrap();
                let Inbound::Goodbye { reconnect_in_ms } = next(&mut client).await else { panic!("expected goodbye") };

                let client = client.reconnect(Duration::from_millis(reconnect_in_ms)).await.unwrap();
                let reports = edge.saw_each(&["session over", "connected"]).await;
                let connected = &reports[1];
                assert!(connected.ends_with(&format!("resume={}", cursor(1))), "{kind}: {connected}");
                assert!(client.hello().resumed, "{kind}");
                assert_eq!(client.last_cursor(), Some(cursor(1)), "{kind}");
                client.close().await;
                edge.saw("session over").await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn token_in_query_reaches_the_edge() {
        within(async {
            let mut edge = ws_edge(QUIET_HEARTBEAT_MS).await;
            let settings = ClientSettings { token_in_query: true, ..ClientSettings::default() };
            let opts = ConnectOptions { resume: Some(cursor(9)), ..edge.options("json") };
            assert_eq!(
                ws_url(&opts, true),
                format!("ws://{}/v1/connect?format=json&resume={}&token=tok-1", edge.addr, cursor(9))
            );
            let client = Client::connect_with(opts, settings).await.unwrap();
            let connected = edge.saw("connected").await;
            assert_eq!(connected, format!("connected format=json via=query resume={}", cursor(9)));
            assert!(client.hello().resumed);
            assert_eq!(client.last_cursor(), Some(cursor(9)));
        })
        .await;
    }

    #[tokio::test]
    async fn heartbeats_follow_hello() {
        within(async {
            for kind in ["msgpack", "quic"] {
                let mut edge = edge(kind, 40).await;
                let client = Client::connect(edge.options(kind)).await.unwrap();
                edge.saw("heartbeat").await;
                client.ping().await.expect("heartbeat pongs do not confuse real pings");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_request_without_reply_times_out_and_the_connection_lives_on() {
        within(async {
            let edge = ws_edge(QUIET_HEARTBEAT_MS).await;
            let settings = ClientSettings { request_timeout: Duration::from_millis(200), ..ClientSettings::default() };
            let client = Client::connect_with(edge.options("json"), settings).await.unwrap();
            assert!(matches!(client.send(&chan(), "ignore", "m1", None).await, Err(ClientError::Timeout("ack"))));
            assert!(client.handle.shared.lock().pending.is_empty(), "the timed-out request is forgotten");
            assert_eq!(client.send(&chan(), "next", "m2", None).await.unwrap().seq, 1);
        })
        .await;
    }

    #[tokio::test]
    async fn an_edge_that_never_says_hello_times_out() {
        within(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let (stop, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let _ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                let _ = stopped.await;
            });
            let opts = ConnectOptions {
                timeout: Duration::from_millis(300),
                ..ConnectOptions::new(Transport::WsJson, addr, TOKEN)
            };
            assert!(matches!(Client::connect(opts).await, Err(ClientError::Timeout("hello"))));
            let _ = stop.send(());
            server.await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        within(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            drop(listener);
            match Client::connect(ConnectOptions::new(Transport::WsJson, addr, TOKEN)).await {
                Err(ClientError::Connect(message)) => assert!(message.contains("/v1/connect"), "{message}"),
                Err(other) => panic!("expected a connect error, got {other}"),
                Ok(_) => panic!("connected to nothing"),
            }
        })
        .await;
    }

    #[tokio::test]
    async fn handles_fail_once_the_client_is_dropped() {
        within(async {
            let edge = quic_edge(QUIET_HEARTBEAT_MS).await;
            let client = Client::connect(edge.options("quic")).await.unwrap();
            let handle = client.handle();
            handle.ping().await.unwrap();
            drop(client);
            assert!(handle.is_closed());
            assert!(matches!(handle.ping().await, Err(ClientError::Closed { .. })));
        })
        .await;
    }

    #[test]
    fn tokens_are_percent_encoded_and_kept_out_of_debug_output() {
        let opts = ConnectOptions::new(Transport::WsMsgpack, "edge:80", "a b/c+d");
        assert_eq!(ws_url(&opts, true), "ws://edge:80/v1/connect?format=msgpack&token=a%20b%2Fc%2Bd");
        assert_eq!(ws_url(&opts, false), "ws://edge:80/v1/connect?format=msgpack");
        assert!(!format!("{opts:?}").contains("a b/c+d"));
    }

    #[test]
    fn upgrade_refusals_map_to_codes() {
        let body = br#"{"error":{"code":"rate_limited","message":"later"}}"#;
        assert!(matches!(
            http_refusal(StatusCode::TOO_MANY_REQUESTS, body),
            ClientError::Refused { code: ErrorCode::RateLimited, ref message } if message == "later"
        ));
        assert_eq!(http_refusal(StatusCode::UNAUTHORIZED, b"no").code(), Some(ErrorCode::Unauthorized));
        assert_eq!(http_refusal(StatusCode::BAD_REQUEST, b"format must be json").code(), Some(ErrorCode::BadRequest));
        assert!(matches!(http_refusal(StatusCode::NOT_FOUND, b""), ClientError::Connect(_)));
    }
}
