//! The two transports under a session: WebSocket (JSON or MessagePack messages) and QUIC (one
//! bidirectional stream of length-prefixed MessagePack frames), each split into a send half the
//! writer task owns and a receive half the reader task owns (ARCHITECTURE §4).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, ReadError, VarInt, WriteError};
use selvage_net::quic::{read_frame, FrameReadError};
use selvage_net::tls::{self, Trust};
use selvage_shared::link::{encode_frame, CLIENT_ALPN};
use selvage_shared::{decode_server, ClientOpen, ErrorCode, Format, ServerFrame};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{ClientError, CloseInfo};
use crate::options::{ws_url, ClientSettings, ConnectOptions, Transport, MAX_SERVER_FRAME_BYTES};

/// How long closing waits for each step of the close handshake.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// QUIC keep-alive, well inside quinn's default 30 s idle timeout.
pub(crate) const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Longest reason a WebSocket close frame can carry, in bytes.
pub(crate) const MAX_CLOSE_REASON_BYTES: usize = 123;

pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The send half of a connection.
pub(crate) enum FrameSink {
    Ws(SplitSink<WsStream, Message>),
    Quic { send: quinn::SendStream, conn: quinn::Connection, endpoint: quinn::Endpoint },
}

impl FrameSink {
    pub(crate) async fn write(&mut self, bytes: Vec<u8>, binary: bool) -> Result<(), String> {
        match self {
            FrameSink::Ws(sink) => sink.send(ws_message(bytes, binary)).await.map_err(|e| e.to_string()),
            FrameSink::Quic { send, .. } => send.write_all(&bytes).await.map_err(|e| e.to_string()),
        }
    }

    /// Closes, waiting a bounded time for each step.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
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
pub(crate) fn truncate(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

pub(crate) fn ws_message(bytes: Vec<u8>, binary: bool) -> Message {
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
pub(crate) enum FrameSource {
    Ws(SplitStream<WsStream>),
    Quic { recv: quinn::RecvStream, conn: quinn::Connection },
}

/// What reading the next frame gave (mostly frames; see [`Inbound`] on boxing).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next {
    Frame(ServerFrame),
    Closed(CloseInfo),
    /// The edge broke the protocol; what it did.
    Invalid(String),
}

impl FrameSource {
    pub(crate) async fn next_frame(&mut self) -> Next {
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

pub(crate) async fn read_quic_frame(recv: &mut quinn::RecvStream, conn: &quinn::Connection) -> Next {
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

pub(crate) fn ws_error_close(e: tungstenite::Error) -> CloseInfo {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            CloseInfo::new(None, "the connection ended")
        }
        other => CloseInfo::new(None, format!("connection lost: {other}")),
    }
}

pub(crate) fn quic_code(code: VarInt) -> Option<u16> {
    u16::try_from(code.into_inner()).ok()
}

pub(crate) fn quic_close_info(e: ConnectionError) -> CloseInfo {
    match e {
        ConnectionError::ApplicationClosed(close) => {
            CloseInfo::new(quic_code(close.error_code), String::from_utf8_lossy(&close.reason).into_owned())
        }
        ConnectionError::LocallyClosed => CloseInfo::new(None, "closed by this client"),
        other => CloseInfo::new(None, format!("connection lost: {other}")),
    }
}

pub(crate) fn quic_read_close(e: ReadError) -> CloseInfo {
    match e {
        ReadError::ConnectionLost(e) => quic_close_info(e),
        ReadError::Reset(code) => CloseInfo::new(quic_code(code), "the edge reset the stream"),
        other => CloseInfo::new(None, format!("stream failed: {other}")),
    }
}

/// Opens the connection (and, for QUIC, sends `ClientOpen`).
pub(crate) async fn dial(
    opts: &ConnectOptions,
    settings: &ClientSettings,
) -> Result<(FrameSink, FrameSource), ClientError> {
    match &opts.transport {
        Transport::WsJson | Transport::WsMsgpack => dial_ws(opts, settings).await,
        Transport::Quic { trust, server_name } => dial_quic(opts, trust, server_name).await,
    }
}

pub(crate) async fn dial_ws(
    opts: &ConnectOptions,
    settings: &ClientSettings,
) -> Result<(FrameSink, FrameSource), ClientError> {
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
pub(crate) fn http_refusal(status: StatusCode, body: &[u8]) -> ClientError {
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

pub(crate) async fn dial_quic(
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
pub fn quic_client_config(trust: &Trust) -> Result<quinn::ClientConfig, ClientError> {
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
pub async fn open_quic_session(
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
pub(crate) fn quic_open_error(e: ConnectionError) -> ClientError {
    match e {
        ConnectionError::ApplicationClosed(_) => quic_close_info(e).error(),
        other => ClientError::Connect(format!("cannot open the QUIC stream: {other}")),
    }
}
