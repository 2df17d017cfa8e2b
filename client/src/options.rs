//! Where and how a client connects: the transport, the edge's address and token, and tuning.

use std::fmt;
use std::time::Duration;

use selvage_net::tls::Trust;
use selvage_shared::{Cursor, Format, MAX_FEED_FRAME_BYTES};

/// How long connecting (and waiting for `hello`) may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request (`send`, `query`, `ping`) waits for its reply, and a frame for its turn on
/// the wire, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default capacity of the event queue that [`Client::next_event`](crate::Client::next_event) reads.
pub const DEFAULT_EVENT_QUEUE: usize = 65_536;

/// Largest server frame the client accepts, in bytes: a bigger one is a protocol error.
pub const MAX_SERVER_FRAME_BYTES: usize = MAX_FEED_FRAME_BYTES;

/// TLS server name a QUIC client dials by default (what development edges' self-signed
/// certificates are made for).
pub const DEFAULT_SERVER_NAME: &str = "localhost";

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
    /// Never: only the application's own [`Client::ping`](crate::Client::ping)s (to test that the edge closes silent
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
    /// Capacity of the event queue (see the crate docs on slow consumers); at least 1.
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

/// Percent-encodes everything but RFC 3986 unreserved characters (tokens in a URL; emoji names,
/// which carry `:` and `+`, in a path).
pub(crate) fn percent_encode(s: &str) -> String {
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
