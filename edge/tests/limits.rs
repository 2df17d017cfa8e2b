//! What one client may take of an edge, seen from the wire: connections per user, the memory of
//! frames still arriving, and the work its frames spawn. A real origin and a real edge run in
//! this process on port 0; the clients are raw WebSocket bytes over TCP and raw QUIC streams,
//! so a test can send half a frame and read exactly how the edge closes. Every wait has a
//! deadline; none is a sleep.

mod support;

use std::{net::SocketAddr, sync::Arc};

use selvage_edge::EdgeConfig;
use selvage_net::tls::Trust;
use selvage_shared::{link::CLIENT_ALPN, ClientOpen, ErrorCode, Format, ServerFrame};
use support::{wait_until, Raw, Rig, DEADLINE};
use tokio::io::AsyncWriteExt;

/// A rig whose edge serves QUIC clients too.
async fn rig(adjust: impl FnOnce(&mut EdgeConfig)) -> Rig {
    support::rig("limits", true, adjust).await
}

/// What a client read from the edge: a server frame, or the close (code and reason).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Got {
    Frame(ServerFrame),
    Closed(Option<u16>, String),
}

/// A client session on either transport, read as the edge's frames and its close.
trait Client {
    /// The next frame the edge sent, or how the connection ended.
    async fn next(&mut self) -> Got;

    /// Reads until the edge closes; returns the close and the error frames seen before it.
    async fn closed(&mut self) -> (Option<u16>, String, Vec<ErrorCode>) {
        let mut errors = Vec::new();
        loop {
            match self.next().await {
                Got::Closed(code, reason) => return (code, reason, errors),
                Got::Frame(ServerFrame::Error { code, .. }) => errors.push(code),
                Got::Frame(_) => {}
            }
        }
    }
}

/// A WebSocket session over the raw client, with the token in the URL (JSON frames).
struct Ws(Raw);

impl Ws {
    /// Upgrades a connection to `/v1/connect` with `token`.
    async fn open(addr: SocketAddr, token: &str) -> Ws {
        Ws(Raw::upgrade(addr, &format!("&token={token}"), None).await)
    }

    /// Opens a session and reads its `hello`.
    async fn session(addr: SocketAddr, token: &str) -> Ws {
        let mut ws = Ws::open(addr, token).await;
        match ws.next().await {
            Got::Frame(ServerFrame::Hello(_)) => ws,
            other => panic!("expected hello, got {other:?}"),
        }
    }

    /// The header of a masked client frame (zero mask) of `len` payload bytes.
    fn header(opcode: u8, len: usize) -> Vec<u8> {
        support::header(0x80 | opcode, len, Some([0, 0, 0, 0]))
    }

    async fn send_text(&mut self, text: &str) {
        let mut frame = Ws::header(0x1, text.len());
        frame.extend_from_slice(text.as_bytes());
        self.0.write(&frame).await;
    }

    /// Sends the start of a text frame of `len` bytes: its header and `sent` bytes of it.
    async fn send_part(&mut self, len: usize, sent: usize) {
        let mut frame = Ws::header(0x1, len);
        frame.extend(std::iter::repeat_n(b' ', sent));
        self.0.write(&frame).await;
    }

    /// Sends the rest of a frame begun with [`Ws::send_part`]: spaces, then `tail`.
    async fn send_rest(&mut self, spaces: usize, tail: &str) {
        let mut rest = vec![b' '; spaces];
        rest.extend_from_slice(tail.as_bytes());
        self.0.write(&rest).await;
    }
}

impl Client for Ws {
    async fn next(&mut self) -> Got {
        loop {
            match self.0.next().await {
                support::Got::Data(_, payload) => {
                    return Got::Frame(selvage_shared::decode_server(&payload, Format::Json).unwrap())
                }
                close @ support::Got::Close(_) => {
                    return match close.close_code() {
                        Some((code, reason)) => Got::Closed(Some(code), reason),
                        None => Got::Closed(None, String::new()),
                    }
                }
                support::Got::Control(_) => continue,
                support::Got::End => return Got::Closed(None, "connection ended".into()),
            }
        }
    }
}

/// A QUIC client session: the connection and its one stream.
struct Quic {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Quic {
    /// Connects and writes the `ClientOpen` frame.
    async fn open(rig: &Rig, token: &str) -> Quic {
        let trust = Trust::Pinned(rig.edge.quic_fingerprint.clone().unwrap());
        let tls = selvage_net::tls::client_config(&trust, &[CLIENT_ALPN]).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint.connect_with(config, rig.edge.quic_addr.unwrap(), "localhost").unwrap().await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let open = ClientOpen { token: token.into(), resume: None };
        send.write_all(&selvage_shared::link::encode_frame(&open).unwrap()).await.unwrap();
        Quic { _endpoint: endpoint, conn, send, recv }
    }

    /// Opens a session and reads its `hello`.
    async fn session(rig: &Rig, token: &str) -> Quic {
        let mut quic = Quic::open(rig, token).await;
        match quic.next().await {
            Got::Frame(ServerFrame::Hello(_)) => quic,
            other => panic!("expected hello, got {other:?}"),
        }
    }

    /// Sends the start of a frame of `len` bytes: its length prefix and `sent` bytes of it.
    async fn send_part(&mut self, len: usize, sent: usize) {
        let mut frame = (len as u32).to_be_bytes().to_vec();
        frame.extend(std::iter::repeat_n(0xc0, sent));
        self.send.write_all(&frame).await.unwrap();
    }

    /// Sends `rest` more bytes of a frame begun with [`Quic::send_part`].
    async fn send_rest(&mut self, rest: usize) {
        self.send.write_all(&vec![0xc0; rest]).await.unwrap();
    }
}

impl Client for Quic {
    async fn next(&mut self) -> Got {
        let read = tokio::time::timeout(DEADLINE, selvage_net::quic::read_frame(&mut self.recv, 1 << 20));
        match read.await.expect("the edge sent nothing in time") {
            Ok(Some(body)) => Got::Frame(selvage_shared::decode_server(&body, Format::MsgPack).unwrap()),
            _ => match tokio::time::timeout(DEADLINE, self.conn.closed()).await.unwrap() {
                quinn::ConnectionError::ApplicationClosed(close) => Got::Closed(
                    u16::try_from(close.error_code.into_inner()).ok(),
                    String::from_utf8_lossy(&close.reason).into_owned(),
                ),
                other => Got::Closed(None, other.to_string()),
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_s_connections_are_capped_and_a_closed_one_frees_its_slot() {
    let rig = rig(|_| {}).await;
    let cap = rig.edge.edge.config.sessions.max_connections_per_user;
    assert_eq!(cap, 20, "the default cap");
    // The cap is the user's, over every token and transport.
    let second = rig.another_token().await;
    let mut ws = Vec::new();
    let mut quic = Vec::new();
    for i in 0..cap {
        let token = if i % 2 == 0 { &rig.token } else { &second };
        if i % 4 < 2 {
            ws.push(Ws::session(rig.edge.addr, token).await);
        } else {
            quic.push(Quic::session(&rig, token).await);
        }
    }
    assert_eq!(rig.admin_connections(), cap);
    // One more is refused on either transport, with a reason, and costs nothing.
    let mut refused = Ws::open(rig.edge.addr, &second).await;
    let (code, reason, errors) = refused.closed().await;
    assert_eq!((code, errors), (Some(4029), vec![ErrorCode::RateLimited]), "{reason}");
    assert!(reason.contains("20 connections"), "{reason}");
    let mut refused = Quic::open(&rig, &rig.token).await;
    let (code, reason, errors) = refused.closed().await;
    assert_eq!((code, errors), (Some(4029), vec![ErrorCode::RateLimited]), "{reason}");
    assert_eq!(rig.metric("selvage_edge_connections_refused_total{reason=\"user_cap\"}"), 2.0);
    assert_eq!(rig.admin_connections(), cap);
    // Another user is not held back by the admin's connections.
    let bob = rig.user("bob").await;
    let _bob = Ws::session(rig.edge.addr, &bob).await;
    // A closed connection frees its slot at once, whichever transport it used.
    drop(ws.pop());
    wait_until("the closed WebSocket's slot is free", || rig.admin_connections() == cap - 1).await;
    let _again = Quic::session(&rig, &rig.token).await;
    quic.pop().unwrap().conn.close(0u32.into(), b"bye");
    wait_until("the closed QUIC connection's slot is free", || rig.admin_connections() == cap - 1).await;
    let mut last = Ws::session(rig.edge.addr, &second).await;
    let mut over = Ws::open(rig.edge.addr, &second).await;
    assert_eq!(over.closed().await.0, Some(4029), "full again");
    // The edge still serves the ones it holds.
    last.send_text(r#"{"type":"ping","id":"p1"}"#).await;
    assert!(matches!(last.next().await, Got::Frame(ServerFrame::Pong { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_frames_hold_no_more_than_the_frame_budget() {
    const BUDGET: usize = 1 << 20;
    const FRAME: usize = 200 * 1024;
    const HALF: usize = FRAME / 2;
    let rig = rig(|c| c.sessions.frame_budget_bytes = BUDGET).await;
    let budget = rig.edge.edge.frame_budget.clone();
    let ping = r#"{"type":"ping","id":"big"}"#;
    // Twelve connections of one token each send half of a 200 KiB frame and stop: five such
    // frames fit in the budget, the other connections wait, unread.
    let mut ws = Vec::new();
    for _ in 0..8 {
        let mut client = Ws::session(rig.edge.addr, &rig.token).await;
        client.send_part(FRAME, HALF).await;
        ws.push(client);
    }
    let mut quic = Vec::new();
    for _ in 0..4 {
        let mut client = Quic::session(&rig, &rig.token).await;
        client.send_part(FRAME, HALF).await;
        quic.push(client);
    }
    let covered = BUDGET / (FRAME + 14);
    wait_until("the budget is taken by half-sent frames", || budget.held() > (covered - 1) * FRAME).await;
    let held = budget.held();
    assert!(held <= BUDGET, "{held} bytes held over a budget of {BUDGET}");
    assert_eq!(rig.metric("selvage_edge_frame_bytes_held") as usize, held, "the gauge is the budget's count");
    // Still serving: small frames need nothing from the budget.
    let mut small = Ws::session(rig.edge.addr, &rig.token).await;
    small.send_text(r#"{"type":"ping","id":"small"}"#).await;
    assert!(matches!(small.next().await, Got::Frame(ServerFrame::Pong { .. })));
    // Every frame is finished; those that waited are read as the budget frees up, and each
    // session answers its frame (a pong on WebSocket, an error for the padding on QUIC).
    for client in &mut ws {
        client.send_rest(FRAME - HALF - ping.len(), ping).await;
    }
    for client in &mut quic {
        client.send_rest(FRAME - HALF).await;
    }
    for client in &mut ws {
        assert!(matches!(client.next().await, Got::Frame(ServerFrame::Pong { .. })));
    }
    for client in &mut quic {
        assert!(matches!(client.next().await, Got::Frame(ServerFrame::Error { .. })));
    }
    // What the frames held is given back once their sessions have handled them.
    wait_until("the budget is given back", || budget.held() == 0).await;
    assert_eq!(rig.metric("selvage_edge_frame_bytes_held"), 0.0);
    assert_eq!(rig.metric("selvage_edge_connections_refused_total{reason=\"frame_budget\"}"), 0.0);
}

/// One WebSocket connection over an in-memory socket, seen step by step: a frame over the free
/// size is not read while the budget has no room for it, is read once it has, and holds its
/// share until the session asks for the next frame.
#[tokio::test]
async fn a_large_frame_holds_its_share_from_its_header_until_it_is_handled() {
    use selvage_edge::{
        limits::FrameBudget,
        metrics::Metrics,
        session::{Inbound, Transport},
        ws::WsTransport,
    };
    use std::{future::Future, task::Poll};

    const FRAME: usize = 200 * 1024;
    let metrics = Metrics::new();
    let budget = FrameBudget::new(1 << 20, &metrics);
    let hog = budget.cover((1 << 20) - 100 * 1024).await.unwrap();
    let (server, mut client) = tokio::io::duplex(1 << 20);
    let mut server = WsTransport::new(server).with_budget(budget.clone());
    let mut frame = Ws::header(0x2, FRAME);
    let header = frame.len();
    frame.extend(std::iter::repeat_n(7u8, FRAME));
    client.write_all(&frame[..header + FRAME / 2]).await.unwrap();
    // The bytes are there, but there is no room: nothing is taken and nothing comes out.
    {
        let recv = server.recv();
        tokio::pin!(recv);
        let polled = std::future::poll_fn(|cx| Poll::Ready(recv.as_mut().poll(cx).is_pending())).await;
        assert!(polled, "a frame with no room in the budget is not received");
    }
    assert_eq!(budget.held(), (1 << 20) - 100 * 1024, "only the other frame's share");
    // Room comes; the rest of the frame too.
    drop(hog);
    client.write_all(&frame[header + FRAME / 2..]).await.unwrap();
    assert_eq!(server.recv().await, Inbound::Frame(vec![7u8; FRAME]));
    assert_eq!(budget.held(), header + FRAME, "held while the session handles it");
    assert_eq!(metrics.frame_bytes_held.get() as usize, header + FRAME);
    // The session asks for the next frame: the share is given back, and nothing is held.
    client.write_all(&Ws::header(0xA, 0)).await.unwrap();
    assert_eq!(server.recv().await, Inbound::Alive);
    assert_eq!(budget.held(), 0);
    assert!(server.is_idle(), "no buffer kept after the large frame");
}

/// The next frame that answers a request (skipping events).
async fn reply(ws: &mut Ws) -> ServerFrame {
    loop {
        match ws.next().await {
            Got::Frame(ServerFrame::Event(_)) => {}
            Got::Frame(frame) => return frame,
            Got::Closed(code, reason) => panic!("closed: {code:?} {reason}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_their_token_s_rate_are_refused_with_a_retry_hint_and_the_session_goes_on() {
    use selvage_shared::rate::Rate;
    let rig = rig(|c| {
        c.rate_limits.write = Rate { per_second: 1, burst: 2 };
        c.rate_limits.read = Rate { per_second: 1, burst: 3 };
    })
    .await;
    let general = rig.general.as_str();
    let send = |n: usize| {
        format!(r#"{{"type":"send","id":"s{n}","channel":"{general}","text":"m{n}","client_msg_id":"c{n}"}}"#)
    };
    let mut ws = Ws::session(rig.edge.addr, &rig.token).await;
    // Two sessions of one token share its buckets.
    let mut other = Ws::session(rig.edge.addr, &rig.token).await;
    ws.send_text(&send(1)).await;
    assert!(matches!(reply(&mut ws).await, ServerFrame::Ack { .. }));
    other.send_text(&send(2)).await;
    assert!(matches!(reply(&mut other).await, ServerFrame::Ack { .. }));
    ws.send_text(&send(3)).await;
    let wait = match reply(&mut ws).await {
        ServerFrame::Error { reply_to, code, message, retry_after_ms } => {
            assert_eq!((reply_to.as_deref(), code), (Some("s3"), ErrorCode::RateLimited), "{message}");
            assert!(message.contains("write rate"), "{message}");
            retry_after_ms.expect("a retry hint")
        }
        other => panic!("{other:?}"),
    };
    assert!((1..=1000).contains(&wait), "{wait}");

    // Queries have a bucket of their own; ping none.
    let query = |n: usize| format!(r#"{{"type":"query","id":"q{n}","q":"channels"}}"#);
    for n in 0..3 {
        ws.send_text(&query(n)).await;
        assert!(matches!(reply(&mut ws).await, ServerFrame::Result(_)), "query {n}");
    }
    ws.send_text(&query(3)).await;
    assert!(matches!(reply(&mut ws).await, ServerFrame::Error { code: ErrorCode::RateLimited, .. }));
    for n in 0..5 {
        ws.send_text(&format!(r#"{{"type":"ping","id":"p{n}"}}"#)).await;
        assert!(matches!(reply(&mut ws).await, ServerFrame::Pong { .. }));
    }

    // Once the hint has passed, the send goes through.
    tokio::time::sleep(std::time::Duration::from_millis(wait + 20)).await;
    ws.send_text(&send(3)).await;
    assert!(matches!(reply(&mut ws).await, ServerFrame::Ack { .. }), "recovered");
    assert!(rig.metric("selvage_edge_rate_limited_total{class=\"write\"}") >= 1.0);
}
