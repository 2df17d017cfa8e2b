//! The WebSocket transport: `GET /v1/connect` (DESIGN §4).
//!
//! Token in `Authorization: Bearer …` or `?token=`; `?format=json|msgpack`; `?resume=<cursor>`.
//! JSON travels in text frames, MessagePack in binary ones. Messages over the client frame
//! limit are refused by the WebSocket layer and close the connection with 1009. The reader
//! runs in its own task; the session writes.

pub mod codec;

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{
        ws::{CloseFrame, Message, WebSocket},
        Query, State, WebSocketUpgrade,
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use futures::{
    stream::{SplitSink, SplitStream},
    SinkExt, StreamExt,
};
use selvage_shared::{Cursor, Format, MAX_CLIENT_FRAME_BYTES};
use tokio::sync::mpsc;

use crate::{
    fanout::Wire,
    server::Edge,
    session::{self, FrameWriter, Inbound, Opening},
};

/// The WebSocket read buffer of a session.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// `GET /v1/connect`.
pub async fn connect(
    State(edge): State<Arc<Edge>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
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
    let token = crate::server::bearer(&headers).map(str::to_owned).or_else(|| params.get("token").cloned());
    let token = token.unwrap_or_default();
    let opening = Opening { token, format, resume, transport: "ws" };
    // Tungstenite's default read buffer is 128 KiB per connection, zero-filled before reads:
    // most of an idle session's memory. Client frames are small; larger ones grow the buffer.
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
        .on_upgrade(move |socket| serve(edge, opening, socket))
}

async fn serve(edge: Arc<Edge>, opening: Opening, socket: WebSocket) {
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(64);
    let reader = tokio::spawn(read(stream, tx));
    session::run(edge, opening, rx, WsWriter { sink }).await;
    reader.abort();
}

async fn read(mut stream: SplitStream<WebSocket>, tx: mpsc::Sender<Inbound>) {
    loop {
        let inbound = match stream.next().await {
            Some(Ok(Message::Text(text))) => Inbound::Frame(text.as_bytes().to_vec()),
            Some(Ok(Message::Binary(bytes))) => Inbound::Frame(bytes.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Alive,
            Some(Ok(Message::Close(_))) | None => Inbound::Closed,
            Some(Err(e)) => {
                let message = e.to_string();
                if message.contains("too long") || message.contains("too big") || message.contains("Space limit") {
                    Inbound::TooLarge
                } else {
                    tracing::debug!(error = %message, "websocket read failed");
                    Inbound::Closed
                }
            }
        };
        let last = matches!(inbound, Inbound::Closed | Inbound::TooLarge);
        if tx.send(inbound).await.is_err() || last {
            return;
        }
    }
}

struct WsWriter {
    sink: SplitSink<WebSocket, Message>,
}

fn message(wire: Wire) -> Message {
    match wire {
        Wire::Text(t) => Message::Text(t),
        Wire::Binary(b) => Message::Binary(b),
    }
}

impl FrameWriter for WsWriter {
    async fn write(&mut self, wire: Wire) -> std::io::Result<()> {
        self.sink.send(message(wire)).await.map_err(std::io::Error::other)
    }

    async fn feed(&mut self, wire: Wire) -> std::io::Result<()> {
        self.sink.feed(message(wire)).await.map_err(std::io::Error::other)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush().await.map_err(std::io::Error::other)
    }

    async fn ping(&mut self) -> std::io::Result<()> {
        self.sink.send(Message::Ping(Default::default())).await.map_err(std::io::Error::other)
    }

    fn pings(&self) -> bool {
        true
    }

    async fn close(mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code, reason: reason.into() };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }
}
