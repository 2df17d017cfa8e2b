//! What an idle session holds (ARCHITECTURE §6: ≤ 4 KiB of edge memory each).

use selvage_edge::{
    config::OriginLink,
    session::{self, Opening},
    ws::WsTransport,
    EdgeConfig,
};
use selvage_shared::Format;
use tokio_util::sync::CancellationToken;

/// The most an idle WebSocket session's task may hold in its future (ARCHITECTURE §6 gives a
/// session 4 KiB of edge memory in all; the rest goes to its socket, outbox and registry).
const IDLE_FUTURE_BYTES: usize = 1024;

/// An idle session is one task whose future is small: the work done on a frame (boot,
/// requests, writing a batch, closing) is boxed for its while, not laid out in the future
/// every idle session carries.
#[tokio::test]
async fn an_idle_session_s_future_is_small() {
    let config = EdgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        quic_listen: None,
        origin: OriginLink {
            // Nothing listens there: the edge never links, which this test does not need.
            link: "127.0.0.1:9".into(),
            edge_key: "0123456789abcdef".into(),
            fingerprint: Some("00".repeat(32)),
            ..OriginLink::default()
        },
        ..EdgeConfig::default()
    };
    let shutdown = CancellationToken::new();
    let running = selvage_edge::start(config, shutdown.clone()).await.unwrap();
    let (io, _client) = tokio::io::duplex(64);
    let opening = Opening { token: String::new(), format: Format::MsgPack, resume: None, transport: "ws" };
    let session = session::run(running.edge.clone(), opening, WsTransport::new(io));
    let size = std::mem::size_of_val(&session);
    assert!(size <= IDLE_FUTURE_BYTES, "a session's future is {size} bytes");
    drop(session);
    shutdown.cancel();
}
