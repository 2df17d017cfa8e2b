//! The WebSocket transport: `GET /v1/connect` (ARCHITECTURE §4).
//!
//! Token in `Authorization: Bearer …` or `?token=`; `?format=json|msgpack`; `?resume=<cursor>`.
//! JSON travels in text frames, MessagePack in binary ones. Messages over the client frame
//! limit close the connection with 1009.
//!
//! The edge speaks the WebSocket framing itself ([`codec`]) over the upgraded HTTP connection,
//! in the session's own task, so that an idle session costs little (ARCHITECTURE §6: ≤ 4 KiB each):
//! it reads into a buffer on the stack and keeps only the bytes of a frame still in flight, and
//! what it writes is held only until the socket takes it. Between frames a session holds no
//! buffer at all. Pings from the client are answered with pongs.
//!
//! Closing follows RFC 6455 (§5.5.1, §7.1.7, §7.4): a client's close is answered with its code
//! (without one if it gave none); a close with a code no endpoint may send (1005, 1006, 1015,
//! reserved or unassigned ones) is a protocol error. A protocol error is answered with 1002,
//! text or a close reason that is not UTF-8 with 1007, a message over the limit with 1009 —
//! always with a close frame before the connection ends, never a bare drop. The edge's own
//! close (4008 for a client that does not keep up, …) goes out ahead of the frames still queued
//! and is given [`CLOSE_TIMEOUT`] to reach a client that reads slowly ([`WsTransport`]).

pub mod codec;

use std::{
    collections::HashMap,
    future::poll_fn,
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{FromRequestParts, Query, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use selvage_shared::{Cursor, Format, MAX_CLIENT_FRAME_BYTES};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use self::codec::{DecodeError, Decoder, Message, Opcode};
use crate::{
    auth,
    limits::{FrameBudget, FrameShare, FREE_FRAME_BYTES},
    node::Edge,
    session::{self, Inbound, Opening, Transport},
    wire::Wire,
};

/// Bytes read from the socket at once, into a buffer on the stack (never kept by a session).
const READ_CHUNK: usize = 8 * 1024;

/// While this much is waiting to be written (pongs to a client that sends pings but does not
/// read), the client is not read from either.
const MAX_UNWRITTEN: usize = 16 * 1024;

/// How long a closing connection waits for the client to read up to the close frame (a client
/// that reads slowly is still told why it was closed; one that reads nothing sees the
/// connection end without it).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closed connection waits for the client's side of the close handshake.
pub const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// `GET /v1/connect`.
pub async fn connect(
    State(edge): State<Arc<Edge>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    if edge.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "this edge is draining; connect to another one\n").into_response();
    }
    let format = match params.get("format").map(String::as_str) {
        None => Format::Json,
        Some(f) => match Format::parse(f) {
            Some(f) => f,
            None => return (StatusCode::BAD_REQUEST, "format must be json or msgpack\n").into_response(),
        },
    };
    let resume = match params.get("resume") {
        None => None,
        Some(c) => match c.parse::<Cursor>() {
            Ok(c) => Some(c),
            Err(_) => {
                return (StatusCode::BAD_REQUEST, "resume must be a cursor from an earlier session\n").into_response()
            }
        },
    };
    // A missing token still upgrades: the session then answers with an `unauthorized` error
    // frame, which a browser can read (it cannot read a refused upgrade's body).
    let token = auth::bearer(&headers).map(str::to_owned).or_else(|| params.get("token").cloned());
    let token = token.unwrap_or_default();
    let opening = Opening { token, format, resume, transport: "ws" };
    let budget = edge.frame_budget.clone();
    upgrade.on_upgrade(move |socket| session::run(edge, opening, socket.with_budget(budget)))
}

/// A WebSocket upgrade request (RFC 6455 §4.2.1), refused with the status a client can act on.
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The largest client message the connection takes.
    max_message: usize,
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Upgrade, Response> {
        if parts.method != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket upgrade must be a GET\n"));
        }
        let connection_upgrade =
            parts.headers.get_all(header::CONNECTION).iter().any(|v| {
                v.to_str().is_ok_and(|v| v.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")))
            });
        if !connection_upgrade {
            return Err(refuse(StatusCode::BAD_REQUEST, "Connection header did not include 'upgrade'\n"));
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refuse(StatusCode::BAD_REQUEST, "Upgrade header did not include 'websocket'\n"));
        }
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version header did not include '13'\n"));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key header missing\n"));
        };
        let accept = accept_key(key.as_bytes());
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded\n"));
        };
        Ok(Upgrade { accept, on_upgrade, max_message: MAX_CLIENT_FRAME_BYTES })
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    // Base64 is always a valid header value.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl Upgrade {
    /// Takes client messages up to `bytes` rather than the client frame limit.
    pub fn max_message(self, bytes: usize) -> Upgrade {
        Upgrade { max_message: bytes, ..self }
    }

    /// Answers `101 Switching Protocols` and runs `serve` on the connection once upgraded, in
    /// a task of its own.
    pub fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(WsTransport) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Upgrade { accept, on_upgrade, max_message } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve(WsTransport::with_limit(TokioIo::new(upgraded), max_message)).await,
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}

/// What the client sent next, as the WebSocket sees it: a session takes it as an [`Inbound`],
/// which does not tell text from binary; an echo does.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A text message (UTF-8, checked).
    Text(Vec<u8>),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping (answered already) or a pong.
    Alive,
    /// A message over the size limit: close with 1009.
    TooLarge,
    /// The connection is over: the client closed it (its close is answered), broke the
    /// protocol (the close frame saying so is queued), or went away.
    Closed,
}

impl From<Received> for Inbound {
    fn from(received: Received) -> Inbound {
        match received {
            Received::Text(bytes) | Received::Binary(bytes) => Inbound::Frame(bytes),
            Received::Alive => Inbound::Alive,
            Received::TooLarge => Inbound::TooLarge,
            Received::Closed => Inbound::Closed,
        }
    }
}

/// Frames written and not yet taken by the socket.
#[derive(Debug, Default)]
struct Outgoing {
    /// Whole frames, one after another; released once the socket took them all.
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    written: usize,
}

impl Outgoing {
    /// Writes `buf` until the socket has taken all of it, then releases it.
    fn poll_write<Io: AsyncWrite + Unpin>(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf = Vec::new();
        self.written = 0;
        Pin::new(io).poll_flush(cx)
    }

    /// Drops the frames the socket has not started on. The one it is partway through stays,
    /// so that what the client reads is still a stream of whole frames.
    fn drop_unstarted(&mut self) {
        let mut end = 0;
        while end < self.written {
            match codec::encoded_len(&self.buf[end..]) {
                Some(len) => end += len,
                // Cannot be: `buf` holds only whole frames the codec encoded. Keep them all.
                None => return,
            }
        }
        self.buf.truncate(end);
    }
}

/// One upgraded WebSocket connection, as the session uses it.
///
/// How it ends: once a close frame is queued — the edge's own ([`Transport::close`]), the
/// answer to the client's close, or the 1002 / 1007 a broken stream gets — nothing more is
/// written, and when the session lets go of the connection a task of its own (holding only the
/// socket and what is left to write) finishes the handshake: it writes the close frame, waiting
/// up to [`CLOSE_TIMEOUT`] for a client that reads slowly, then shuts the socket and reads what
/// the client still sends for [`CLOSE_LINGER`], so that the close frame is not lost to a reset.
/// The session's memory is released at once.
pub struct WsTransport<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static = TokioIo<Upgraded>> {
    /// The connection; taken by the closing task when the session lets go of it.
    io: Option<Io>,
    decoder: Decoder,
    out: Outgoing,
    /// A close frame is in `out` (or was written): it is the last frame.
    close_queued: bool,
    /// The message last returned was held under `share`, which is given back when the
    /// session asks for the next one.
    delivered: bool,
    /// Where frames over [`FREE_FRAME_BYTES`] take their room from; none, no limit.
    budget: Option<Arc<FrameBudget>>,
    /// What the frame in flight (or the message last returned) holds of the budget.
    share: Option<Box<FrameShare>>,
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> WsTransport<Io> {
    /// The server's side of a connection already upgraded to WebSocket, taking client messages
    /// up to the client frame limit.
    pub fn new(io: Io) -> WsTransport<Io> {
        WsTransport::with_limit(io, MAX_CLIENT_FRAME_BYTES)
    }

    /// The same, taking client messages up to `max_message` bytes.
    pub fn with_limit(io: Io, max_message: usize) -> WsTransport<Io> {
        WsTransport {
            io: Some(io),
            decoder: Decoder::new(max_message),
            out: Outgoing::default(),
            close_queued: false,
            delivered: false,
            budget: None,
            share: None,
        }
    }

    /// The same, taking room for frames over [`FREE_FRAME_BYTES`] from `budget`.
    pub fn with_budget(mut self, budget: Arc<FrameBudget>) -> WsTransport<Io> {
        self.decoder.allow(FREE_FRAME_BYTES);
        self.budget = Some(budget);
        self
    }

    /// Whether the connection holds no buffer (nothing in flight either way).
    pub fn is_idle(&self) -> bool {
        self.decoder.is_idle() && self.out.buf.capacity() == 0
    }

    /// What the client sent next. Cancel safe, as [`Transport::recv`].
    pub async fn receive(&mut self) -> Received {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn push(&mut self, wire: &Wire) {
        if self.close_queued {
            return;
        }
        match wire {
            Wire::Text(t) => codec::encode(&mut self.out.buf, Opcode::Text, t.as_bytes()),
            Wire::Binary(b) => codec::encode(&mut self.out.buf, Opcode::Binary, b),
        }
    }

    /// Queues the close frame, unless one is queued already.
    fn queue_close(&mut self, code: u16, reason: &str) {
        if self.close_queued {
            return;
        }
        debug_assert!(codec::valid_close_code(code), "the edge never sends close code {code}");
        codec::encode_close(&mut self.out.buf, code, reason);
        self.close_queued = true;
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => self.out.poll_write(io, cx),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Received> {
        if std::mem::take(&mut self.delivered) {
            // The session is done with the large message it was given.
            self.share = None;
            self.decoder.allow(FREE_FRAME_BYTES);
        }
        loop {
            if self.close_queued {
                return Poll::Ready(Received::Closed);
            }
            // Pongs go out while waiting for the client.
            if !self.out.buf.is_empty() {
                match self.poll_write_out(cx) {
                    Poll::Ready(Err(_)) => return Poll::Ready(Received::Closed),
                    Poll::Ready(Ok(())) => {}
                    Poll::Pending if self.out.buf.len() >= MAX_UNWRITTEN => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            match self.decoder.decode() {
                Ok(Some(Message::Text(bytes))) => {
                    self.delivered = self.share.is_some();
                    return Poll::Ready(Received::Text(bytes));
                }
                Ok(Some(Message::Binary(bytes))) => {
                    self.delivered = self.share.is_some();
                    return Poll::Ready(Received::Binary(bytes));
                }
                Ok(Some(Message::Ping(payload))) => {
                    codec::encode(&mut self.out.buf, Opcode::Pong, &payload);
                    return Poll::Ready(Received::Alive);
                }
                Ok(Some(Message::Pong)) => return Poll::Ready(Received::Alive),
                Ok(Some(Message::Close(code))) => {
                    // Answer with the client's code (RFC 6455 §5.5.1), which the decoder has
                    // checked is one an endpoint may send; a close without a code is answered
                    // without one. Then the session ends.
                    match code {
                        Some(code) => codec::encode_close(&mut self.out.buf, code, ""),
                        None => codec::encode(&mut self.out.buf, Opcode::Close, &[]),
                    }
                    self.close_queued = true;
                    return Poll::Ready(Received::Closed);
                }
                Ok(None) => {}
                Err(DecodeError::TooLarge(_)) => return Poll::Ready(Received::TooLarge),
                Err(e) => {
                    // The client broke the protocol: it is told how (1002, or 1007 for text
                    // that is not UTF-8) and nothing more of what it sent is read.
                    tracing::debug!(error = %e, "websocket protocol error");
                    self.queue_close(e.close_code(), &e.to_string());
                    return Poll::Ready(Received::Closed);
                }
            }
            // A frame larger than a connection may hold for free is read only once the budget
            // has room for all of it; until then the client is not read from.
            if let Some(budget) = &self.budget {
                let wants = self.decoder.wants();
                if wants > FREE_FRAME_BYTES {
                    match budget.poll_cover(&mut self.share, wants, cx) {
                        Poll::Ready(Ok(())) => self.decoder.allow(wants),
                        Poll::Ready(Err(refused)) => {
                            let (code, reason) = refused.close();
                            tracing::debug!(code, reason, wants, "large frame refused");
                            self.queue_close(code, reason);
                            return Poll::Ready(Received::Closed);
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            let Some(io) = self.io.as_mut() else { return Poll::Ready(Received::Closed) };
            // Not zeroed: the session polls here on every wake-up, most of them with nothing
            // to read. No more than the frame in flight still needs, so that its buffer stays
            // the size made for it.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let limit = self.decoder.read_limit().min(READ_CHUNK);
            let mut buf = ReadBuf::uninit(&mut chunk[..limit]);
            match ready!(Pin::new(io).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Received::Closed),
                Ok(()) => self.decoder.extend(buf.filled()),
                Err(e) => {
                    tracing::debug!(error = %e, "websocket read failed");
                    return Poll::Ready(Received::Closed);
                }
            }
        }
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for WsTransport<Io> {
    fn drop(&mut self) {
        // Without a close frame queued the client went away, or its socket broke: nothing to
        // finish.
        if !self.close_queued {
            return;
        }
        let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current()) else { return };
        runtime.spawn(finish_close(io, std::mem::take(&mut self.out)));
    }
}

/// Writes what is left (the close frame last), then shuts the socket and lingers.
async fn finish_close<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io, mut out: Outgoing) {
    let written = tokio::time::timeout(CLOSE_TIMEOUT, poll_fn(|cx| out.poll_write(&mut io, cx))).await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!("the close frame could not be written in time; dropping the connection");
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        if poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await.is_ok() {
            linger(&mut io).await;
        }
    })
    .await;
}

/// Reads and drops what the client still sends until it closes its side, so the close frame
/// is not lost to a reset (the caller bounds it in time).
async fn linger<Io: AsyncRead + Unpin>(io: &mut Io) {
    poll_fn(|cx| loop {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
            Ok(()) if !buf.filled().is_empty() => continue,
            _ => return Poll::Ready(()),
        }
    })
    .await
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsTransport<Io> {
    async fn recv(&mut self) -> Inbound {
        self.receive().await.into()
    }

    async fn write(&mut self, wire: Wire) -> std::io::Result<()> {
        self.push(&wire);
        self.flush().await
    }

    async fn feed(&mut self, wire: Wire) -> std::io::Result<()> {
        self.push(&wire);
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    async fn ping(&mut self) -> std::io::Result<()> {
        if !self.close_queued {
            codec::encode(&mut self.out.buf, Opcode::Ping, &[]);
        }
        self.flush().await
    }

    fn pings(&self) -> bool {
        true
    }

    /// Queues the close frame ahead of the frames the socket has not started on — the session
    /// closes once it has given up on them (a client that stopped reading) — and hands the
    /// connection to the closing task. Returns at once.
    async fn close(mut self, code: u16, reason: &str) {
        if !self.close_queued {
            self.out.drop_unstarted();
            self.queue_close(code, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::{
        tungstenite::{
            protocol::{frame::coding::CloseCode, Role},
            Message as Client,
        },
        WebSocketStream,
    };

    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        // The example of RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    async fn pair() -> (WsTransport<tokio::io::DuplexStream>, WebSocketStream<tokio::io::DuplexStream>) {
        let (server, client) = tokio::io::duplex(1 << 20);
        (WsTransport::new(server), WebSocketStream::from_raw_socket(client, Role::Client, None).await)
    }

    /// Between frames a session holds no buffer: what it read and what it wrote are released as
    /// soon as the frame is through, however large the frame was.
    #[tokio::test]
    async fn buffers_are_released_after_every_frame() {
        let (mut server, mut client) = pair().await;
        assert!(server.is_idle());
        let big = "x".repeat(100_000);
        client.send(Client::text(big.clone())).await.unwrap();
        assert_eq!(server.recv().await, Inbound::Frame(big.into_bytes()));
        assert!(server.is_idle(), "the read buffer is released after a frame");
        client.send(Client::binary(vec![7u8; 10])).await.unwrap();
        client.send(Client::Ping(b"are you there".to_vec().into())).await.unwrap();
        assert_eq!(server.recv().await, Inbound::Frame(vec![7u8; 10]));
        assert_eq!(server.recv().await, Inbound::Alive);
        for i in 0..3 {
            server.feed(Wire::Binary(vec![i; 70_000].into())).await.unwrap();
        }
        server.flush().await.unwrap();
        assert!(server.is_idle(), "the write buffer is released once the socket took it");
        assert_eq!(client.next().await.unwrap().unwrap(), Client::Pong(b"are you there".to_vec().into()));
        for i in 0..3 {
            assert_eq!(client.next().await.unwrap().unwrap(), Client::binary(vec![i; 70_000]));
        }
        server.write(Wire::Text("{}".into())).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Client::text("{}"));
        assert!(server.is_idle());
    }

    /// Frames and a close as a client reads them: whole frames' opcodes and payload lengths,
    /// the close's code, and whether anything was left over (a frame cut short).
    fn frames_of(mut bytes: &[u8]) -> (Vec<(u8, usize)>, Option<u16>, bool) {
        let mut frames = Vec::new();
        while let Some(len) = codec::encoded_len(bytes) {
            if bytes[0] == 0x88 {
                let code = u16::from_be_bytes([bytes[2], bytes[3]]);
                return (frames, Some(code), len < bytes.len());
            }
            frames.push((bytes[0] & 0x0F, len));
            bytes = &bytes[len..];
        }
        (frames, None, !bytes.is_empty())
    }

    /// A client that stops reading: the socket holds the first frame and part of the second
    /// when the session gives up and closes with 4008.
    async fn stalled() -> (WsTransport<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(4096);
        let mut server = WsTransport::new(server);
        for i in 0..3u8 {
            server.feed(Wire::Binary(vec![i; 3000].into())).await.unwrap();
        }
        assert!(tokio::time::timeout(Duration::from_secs(60), server.flush()).await.is_err(), "the socket is full");
        (server, client)
    }

    /// The close goes out right after the frame the socket was partway through, ahead of the
    /// frame not started, as soon as the client reads again — the session is long gone by then.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_that_reads_again_gets_the_close() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = stalled().await;
        server.close(4008, "slow consumer: reconnect with resume").await;
        tokio::time::sleep(CLOSE_TIMEOUT / 2).await;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let (frames, close, left) = frames_of(&got);
        assert_eq!(frames, vec![(0x2, 3004), (0x2, 3004)], "the two frames begun, whole; the third dropped");
        assert_eq!(close, Some(4008));
        assert!(!left, "nothing after the close");
    }

    /// A client that reads nothing for [`CLOSE_TIMEOUT`] after the close sees the connection end
    /// without it (docs/API.md: such an end means resume).
    #[tokio::test(start_paused = true)]
    async fn a_client_stalled_past_the_close_timeout_sees_the_end() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = stalled().await;
        server.close(4008, "slow consumer: reconnect with resume").await;
        tokio::time::sleep(CLOSE_TIMEOUT + Duration::from_secs(1)).await;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 4096, "what the socket held, then the end");
        let (frames, close, cut) = frames_of(&got);
        assert_eq!((frames, close, cut), (vec![(0x2, 3004)], None, true));
    }

    #[tokio::test]
    async fn the_server_closes_with_a_code_and_a_reason() {
        let (server, mut client) = pair().await;
        let closing = tokio::spawn(server.close(4008, "slow consumer: reconnect with resume"));
        match client.next().await.unwrap().unwrap() {
            Client::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::from(4008));
                assert_eq!(frame.reason.as_str(), "slow consumer: reconnect with resume");
            }
            other => panic!("expected a close, got {other:?}"),
        }
        drop(client);
        closing.await.unwrap();
    }

    /// The edge's close goes out right after the frame the socket is partway through: the
    /// frames not started are dropped, and the client's stream stays whole frames.
    #[test]
    fn a_close_goes_ahead_of_the_frames_not_started() {
        let mut out = Outgoing::default();
        for len in [10usize, 300, 70_000, 5] {
            codec::encode(&mut out.buf, Opcode::Binary, &vec![1; len]);
        }
        let first_two = 12 + 304;
        out.written = 12 + 100;
        out.drop_unstarted();
        assert_eq!(out.buf.len(), first_two);
        out.written = first_two;
        out.drop_unstarted();
        assert_eq!(out.buf.len(), first_two, "nothing is started past a frame boundary");
        out.written = 0;
        out.drop_unstarted();
        assert!(out.buf.is_empty());
    }

    /// Every code a session or the frame budget closes with is one an endpoint may send.
    #[test]
    fn the_session_s_close_codes_may_be_sent() {
        use crate::error::close::*;
        let codes = [
            NORMAL,
            POLICY,
            TOO_LARGE,
            DRAINING,
            TRY_AGAIN_LATER,
            UNAUTHORIZED,
            UNAVAILABLE,
            IDLE,
            SLOW_CONSUMER,
            RESYNC,
            TOO_MANY_CONNECTIONS,
        ];
        let refusals = [crate::limits::FrameRefusal::Busy, crate::limits::FrameRefusal::TooSlow];
        for code in codes.into_iter().chain(refusals.map(|r| r.close().0)) {
            assert!(codec::valid_close_code(code), "{code}");
        }
    }

    #[tokio::test]
    async fn a_client_s_close_is_answered_and_ends_the_session() {
        let (mut server, mut client) = pair().await;
        client.close(None).await.unwrap();
        assert_eq!(server.recv().await, Inbound::Closed);
        // The session lets go; the answer still goes out.
        drop(server);
        assert!(matches!(client.next().await, Some(Ok(Client::Close(None)))));
    }

    #[tokio::test]
    async fn oversized_and_broken_frames_end_the_session() {
        use tokio::io::AsyncWriteExt;
        let (server, mut raw) = tokio::io::duplex(1024);
        let mut server = WsTransport::new(server);
        // A binary frame announcing one byte over the limit: refused before its payload comes.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(MAX_CLIENT_FRAME_BYTES as u64 + 1).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        raw.write_all(&header).await.unwrap();
        assert_eq!(server.recv().await, Inbound::TooLarge);
        let (server, mut raw) = tokio::io::duplex(1024);
        let mut server = WsTransport::new(server);
        // Unmasked: no client may send that. The client is told so (1002), then the connection
        // ends.
        raw.write_all(&[0x81, 0x01, b'x']).await.unwrap();
        assert_eq!(server.recv().await, Inbound::Closed);
        drop(server);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut got).await.unwrap();
        assert_eq!(&got[..4], &[0x88, got[1], 0x03, 0xEA], "a close frame with 1002: {got:?}");
        assert_eq!(got.len(), 2 + usize::from(got[1]), "and nothing after it");
        // The client went away.
        let (server, raw) = tokio::io::duplex(1024);
        let mut server = WsTransport::new(server);
        drop(raw);
        assert_eq!(server.recv().await, Inbound::Closed);
    }
}
