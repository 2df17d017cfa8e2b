//! An echo server on the edge's own WebSocket transport, for conformance testing
//! (`edge/tests/autobahn/run.sh` points the Autobahn testsuite's fuzzing client at it).
//!
//! It is the transport a client session uses — the same upgrade, codec, ping, close and
//! validation code — with an echo in place of the session: every text or binary message comes
//! back as it came. Only the message limit differs: 32 MiB rather than the client frame limit
//! (256 KiB), because the testsuite's large-message cases (9.*) send up to 16 MiB to exercise
//! framing, fragmentation and UTF-8 checking at size. The limit itself is product policy, and
//! the edge's tests cover the 1009 close it leads to.
//!
//! `cargo run -p selvage-edge --example ws_echo -- 127.0.0.1:0` prints `listening on ADDR`.

use std::net::SocketAddr;

use axum::{response::Response, routing::get, Router};
use selvage_edge::{
    error::close,
    session::Transport,
    wire::Wire,
    ws::{Received, Upgrade, WsTransport},
};

/// The largest message echoed; Autobahn's largest is 16 MiB.
const MAX_MESSAGE: usize = 32 << 20;

async fn upgrade(upgrade: Upgrade) -> Response {
    upgrade.max_message(MAX_MESSAGE).on_upgrade(echo)
}

/// Sends every message back until the connection ends, as a session would end it.
async fn echo(mut ws: WsTransport) {
    loop {
        let echoed = match ws.receive().await {
            Received::Text(bytes) => match String::from_utf8(bytes) {
                Ok(text) => ws.write(Wire::Text(text.into())).await,
                // Cannot be: the decoder let only UTF-8 through as text.
                Err(_) => return ws.close(1011, "not UTF-8").await,
            },
            Received::Binary(bytes) => ws.write(Wire::Binary(bytes.into())).await,
            Received::Alive => Ok(()),
            Received::TooLarge => return ws.close(close::TOO_LARGE, "message too big").await,
            Received::Closed => return,
        };
        if echoed.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        None => SocketAddr::from(([127, 0, 0, 1], 9001)),
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = Router::new().route("/", get(upgrade)).fallback(get(upgrade));
    axum::serve(listener, app).await
}
