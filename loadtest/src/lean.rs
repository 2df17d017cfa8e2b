//! A lean WebSocket client of the edge for the scenarios that hold many sessions (`hello`,
//! `fanout`, `idle`), where the SDK's per-connection reader and writer tasks, queues and full
//! decoding of every frame would cost more CPU and memory than the edge being measured.
//!
//! A lean session is one `tokio-tungstenite` stream over a plain TCP socket, optionally bound
//! to a chosen local address first (so one machine can open more than the ~28,000 connections
//! one source address allows to one destination). Its owner reads frames itself and decodes
//! only what it needs; tungstenite answers the edge's WebSocket pings while it reads.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use futures::{SinkExt, StreamExt};
use selvage_shared::{decode_server, Format, Hello, ServerFrame};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A lean session's stream.
pub type Ws = WebSocketStream<TcpStream>;

/// How long closing politely may take before the connection is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The wire format of a session, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WireFormat {
    /// JSON text frames.
    Json,
    /// MessagePack binary frames.
    Msgpack,
}

impl WireFormat {
    /// The codec's format.
    pub fn format(self) -> Format {
        match self {
            WireFormat::Json => Format::Json,
            WireFormat::Msgpack => Format::MsgPack,
        }
    }
}

/// Buffer sizes of a lean session. tungstenite zero-fills its whole read buffer before every
/// read, so its 128 KiB default would make each idle connection cost 128 KiB of memory.
pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(read_buffer).write_buffer_size(0)
}

/// Opens a session on the edge at `addr`: TCP (from `source` when given), then the WebSocket
/// upgrade of `/v1/connect` with the token in `Authorization`. Returns before `hello`.
pub async fn dial(
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: &str,
    format: Format,
    config: WebSocketConfig,
) -> Result<Ws> {
    dial_resuming(addr, source, token, format, config, None).await
}

/// [`dial`], resuming from `resume` (a cursor of an earlier session) when given.
pub async fn dial_resuming(
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: &str,
    format: Format,
    config: WebSocketConfig,
    resume: Option<&str>,
) -> Result<Ws> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        defer_port_choice(&socket);
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("cannot bind a socket to {ip}"))?;
    }
    let stream = socket.connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut url = format!("ws://{addr}/v1/connect?format={format}");
    if let Some(cursor) = resume {
        url.push_str("&resume=");
        url.push_str(cursor);
    }
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}"))?);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .with_context(|| format!("the WebSocket upgrade at {addr} failed"))?;
    Ok(ws)
}

/// Asks Linux to pick the local port of a socket bound to an address at `connect`, for the
/// whole address pair (`IP_BIND_ADDRESS_NO_PORT`), rather than at `bind`, where a port is
/// reserved for every destination and those still in TIME_WAIT from an earlier run are
/// refused: with it one source address serves ~28,000 connections per destination, run after
/// run. Best effort: elsewhere the bind just picks its port as usual.
fn defer_port_choice(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads an int from a pointer that is valid for the call, on a
        // descriptor this socket owns.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// The next data frame's bytes (text or binary), skipping control frames; an error when the
/// connection closes first.
pub async fn next_data(ws: &mut Ws) -> Result<Vec<u8>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(Vec::from(text.as_bytes())),
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes.to_vec()),
            Some(Ok(Message::Close(frame))) => bail!("the edge closed the session: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("reading from the edge failed: {e}"),
            None => bail!("the edge closed the connection"),
        }
    }
}

/// Decodes the first frame of a session as `hello`, or says what came instead.
pub fn expect_hello(bytes: &[u8], format: Format) -> Result<Hello> {
    match decode_server(bytes, format).context("the edge's first frame does not decode")? {
        ServerFrame::Hello(hello) => Ok(hello),
        ServerFrame::Error { code, message, .. } => bail!("the edge refused the session: {code}: {message}"),
        other => bail!("expected hello first, got {}", other.kind()),
    }
}

/// Closes politely (close frame, then waits for the edge's), within a bounded time.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if ws.close(None).await.is_ok() {
            while ws.next().await.is_some() {}
        }
    })
    .await;
}

/// Sends a close frame without waiting for the answer.
pub async fn start_close(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.send(Message::Close(None))).await;
}
