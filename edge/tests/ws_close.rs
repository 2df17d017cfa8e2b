//! How the edge's WebSocket sessions end, seen from the wire: the close handshake of RFC 6455
//! (§5.5.1, §7.1.5, §7.4) and the close a slow client gets. A real origin and a real edge run
//! in this process on port 0; the client is raw TCP bytes, so that what the edge sends — or
//! does not — is what the test sees. Every wait has a deadline; none is a sleep.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use selvage_edge::{config::OriginLink, EdgeConfig};
use selvage_origin::{accounts, channels, sequencer::SendRequest, OriginConfig};
use selvage_shared::{ChannelId, UserId, WorkspaceId};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

const EDGE_KEY: &str = "ws-close-test-edge-key-0123456789";
const DEADLINE: Duration = Duration::from_secs(30);

/// An origin and an edge linked to it, with a workspace whose admin can connect.
struct Rig {
    origin: std::sync::Arc<selvage_origin::Origin>,
    edge: selvage_edge::Running,
    _origin: selvage_origin::Running,
    ws: WorkspaceId,
    admin: UserId,
    token: String,
    general: ChannelId,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn rig(adjust: impl FnOnce(&mut EdgeConfig)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut config = OriginConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..OriginConfig::default()
    };
    config.link.listen = "127.0.0.1:0".parse().unwrap();
    config.link.edge_key = Some(EDGE_KEY.into());
    let running = selvage_origin::start(config, shutdown.clone()).await.unwrap();
    let origin = running.origin.clone();
    let (workspace, admin) = accounts::create_workspace(&origin.store, "acme", "admin", "Admin", 0).await.unwrap();
    let caller = accounts::authenticate(&origin.store, &admin.token).await.unwrap();
    let general = channels::list(&origin.store, &caller).await.unwrap()[0].channel.id.clone();
    let mut edge_config = EdgeConfig {
        edge_id: "ws-close".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        quic_listen: None,
        origin: OriginLink {
            link: running.link_addr.unwrap().to_string(),
            fingerprint: running.link_fingerprint.clone(),
            edge_key: EDGE_KEY.into(),
            ..OriginLink::default()
        },
        ..EdgeConfig::default()
    };
    adjust(&mut edge_config);
    let edge = selvage_edge::start(edge_config, shutdown.clone()).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !edge.edge.is_ready() {
        assert!(Instant::now() < deadline, "the edge never linked to the origin");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Rig {
        origin,
        edge,
        _origin: running,
        ws: workspace.id,
        admin: admin.user.id,
        token: admin.token,
        general,
        shutdown,
        _dir: dir,
    }
}

/// What the client read from the edge.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// A data frame (text or binary; whole, as the edge sends them).
    Data(u8, Vec<u8>),
    /// A ping or pong.
    Control(u8),
    /// A close frame's payload.
    Close(Vec<u8>),
    /// The connection ended (EOF or reset) without a close frame.
    End,
}

impl Got {
    /// The code of a close frame and its reason.
    fn close_code(&self) -> Option<(u16, String)> {
        match self {
            Got::Close(p) if p.len() >= 2 => {
                Some((u16::from_be_bytes([p[0], p[1]]), String::from_utf8_lossy(&p[2..]).into_owned()))
            }
            _ => None,
        }
    }
}

/// A WebSocket client made of raw bytes: it sends exactly the frames a test builds.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and upgrades with `token`; the edge's `hello` is read and checked.
    async fn connect(addr: SocketAddr, token: &str) -> Raw {
        Raw::connect_with(addr, token, "").await.0
    }

    /// The same with `query` added to the URL; returns the `hello` too.
    async fn connect_with(addr: SocketAddr, token: &str, query: &str) -> (Raw, serde_json::Value) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /v1/connect?format=json{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Raw { tcp, buf: Vec::new() };
        let head_end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "the edge closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        raw.buf.drain(..head_end);
        let hello = match raw.next().await {
            Got::Data(0x1, hello) => serde_json::from_slice::<serde_json::Value>(&hello).unwrap(),
            other => panic!("expected the hello, got {other:?}"),
        };
        assert_eq!(hello["type"], "hello", "the first frame is the hello");
        (raw, hello)
    }

    /// Reads more bytes; false at EOF or a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout(DEADLINE, self.tcp.read(&mut chunk)).await.expect("the edge answers in time") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next frame from the edge, or [`Got::End`].
    async fn next(&mut self) -> Got {
        loop {
            if let Some(got) = self.parse() {
                return got;
            }
            if !self.fill().await {
                return Got::End;
            }
        }
    }

    /// The next frame that is not a data frame or a ping (events the edge had queued come first).
    async fn next_control(&mut self) -> Got {
        loop {
            match self.next().await {
                Got::Data(..) | Got::Control(_) => {}
                other => return other,
            }
        }
    }

    fn parse(&mut self) -> Option<Got> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[0] & 0x70, 0, "no reserved bits from the edge");
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let opcode = b[0] & 0x0F;
        assert!(b[0] & 0x80 != 0, "the edge sends whole frames");
        let payload = b[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some(match opcode {
            0x1 | 0x2 => Got::Data(opcode, payload),
            0x8 => Got::Close(payload),
            0x9 | 0xA => Got::Control(opcode),
            other => panic!("unexpected opcode {other:#x}"),
        })
    }

    /// Sends one frame, masked as a client must unless `unmasked`.
    async fn send(&mut self, first: u8, payload: &[u8]) {
        self.send_with(first, payload, true).await;
    }

    async fn send_with(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        let bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(bit | n as u8),
            n if n <= 0xFFFF => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        // The edge may have closed already; what it sent is what the test reads next.
        let _ = self.tcp.write_all(&out).await;
    }
}

/// A frame a test sends: its first byte (FIN, reserved bits, opcode), its payload, and whether
/// it is masked.
type Sent = (u8, Vec<u8>, bool);

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A client's close is echoed (RFC 6455 §5.5.1): its code when it is one an endpoint may send,
/// an empty close for an empty one, and 1002 for a code no endpoint may send (§7.4.1: 1005,
/// 1006 and 1015 are for reporting only; 0–999, 1004 and unassigned codes below 3000 are not
/// codes at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_a_code_an_endpoint_may_send() {
    let rig = rig(|_| {}).await;
    for code in [1000u16, 1001, 1003, 1008, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
        let mut c = Raw::connect(rig.edge.addr, &rig.token).await;
        c.send(FIN | CLOSE, &close_payload(code, b"bye")).await;
        let got = c.next_control().await;
        assert_eq!(got.close_code().map(|(c, _)| c), Some(code), "a close with {code} is echoed: {got:?}");
        assert_eq!(c.next().await, Got::End, "the edge ends the connection after the handshake");
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let mut c = Raw::connect(rig.edge.addr, &rig.token).await;
        c.send(FIN | CLOSE, &close_payload(code, b"")).await;
        let got = c.next_control().await;
        assert_eq!(got.close_code().map(|(c, _)| c), Some(1002), "a close with {code} is a protocol error: {got:?}");
        assert_eq!(c.next().await, Got::End);
    }
    let mut c = Raw::connect(rig.edge.addr, &rig.token).await;
    c.send(FIN | CLOSE, b"").await;
    assert_eq!(c.next_control().await, Got::Close(Vec::new()), "a close without a code is answered without one");
    assert_eq!(c.next().await, Got::End);
}

/// What breaks the protocol gets a close frame saying so before the connection ends (§7.1.7,
/// §7.4.1): 1007 for text or a close reason that is not UTF-8, 1002 for the rest, 1009 for a
/// message over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_is_closed_with_the_code_that_says_why() {
    let rig = rig(|_| {}).await;
    let bad_utf8: &[u8] = b"caf\xc3 \xff";
    let cases: Vec<(&str, Vec<Sent>, u16)> = vec![
        ("text that is not UTF-8", vec![(FIN | TEXT, bad_utf8.to_vec(), true)], 1007),
        (
            "fragmented text that is not UTF-8",
            vec![(TEXT, b"ok ".to_vec(), true), (FIN, b"\xed\xa0\x80".to_vec(), true)],
            1007,
        ),
        ("a close reason that is not UTF-8", vec![(FIN | CLOSE, close_payload(1000, bad_utf8), true)], 1007),
        ("a close with half a code", vec![(FIN | CLOSE, vec![0x03], true)], 1002),
        ("an unmasked frame", vec![(FIN | TEXT, b"{}".to_vec(), false)], 1002),
        ("a reserved bit", vec![(FIN | 0x40 | TEXT, b"{}".to_vec(), true)], 1002),
        ("an unknown opcode", vec![(FIN | 0x3, b"".to_vec(), true)], 1002),
        ("an unknown control opcode", vec![(FIN | 0xB, b"".to_vec(), true)], 1002),
        ("a fragmented ping", vec![(PING, b"".to_vec(), true)], 1002),
        ("a ping over 125 bytes", vec![(FIN | PING, vec![0; 126], true)], 1002),
        ("a continuation outside a message", vec![(FIN, b"x".to_vec(), true)], 1002),
        ("a message inside a message", vec![(BINARY, b"x".to_vec(), true), (FIN | BINARY, b"y".to_vec(), true)], 1002),
        (
            "a message over the limit",
            vec![(FIN | BINARY, vec![0; selvage_shared::MAX_CLIENT_FRAME_BYTES + 1], true)],
            1009,
        ),
    ];
    for (what, frames, code) in cases {
        let mut c = Raw::connect(rig.edge.addr, &rig.token).await;
        for (first, payload, masked) in frames {
            c.send_with(first, &payload, masked).await;
        }
        let got = c.next_control().await;
        assert_eq!(got.close_code().map(|(c, _)| c), Some(code), "{what}: {got:?}");
        // The client's side of the handshake; then the edge ends the connection.
        c.send(FIN | CLOSE, &close_payload(code, b"")).await;
        assert_eq!(c.next().await, Got::End, "{what}: the connection ends");
    }
}

/// A message event's seq and cursor, from a JSON data frame.
fn message(got: &Got) -> Option<(u64, String)> {
    let Got::Data(0x1, bytes) = got else { return None };
    let event: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    (event["type"] == "message").then(|| (event["seq"].as_u64().unwrap(), event["cursor"].as_str().unwrap().to_owned()))
}

/// A client that stops reading is shed with 4008 (its outbound queue overflowed), and the
/// close frame reaches it: it goes out ahead of the frames still queued, and the edge keeps the
/// socket, not the session, until the client has read up to it. Here the client reads nothing
/// until the edge has ended the session — longer than the edge once waited for the close. It
/// then resumes, and gets every message it missed, the ones dropped for the close included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_reads_why_it_was_closed() {
    let rig = rig(|c| c.sessions.outbound_queue = 16).await;
    let connections = rig.edge.edge.metrics.connections.with_label_values(&["ws"]);
    let (mut slow, hello) = Raw::connect_with(rig.edge.addr, &rig.token, "").await;
    assert_eq!(connections.get(), 1);
    // Big messages, until the session is shed: its socket fills, then its queue.
    let text = "z".repeat(30_000);
    let mut sent = 0u64;
    let deadline = Instant::now() + DEADLINE;
    while connections.get() > 0 {
        assert!(Instant::now() < deadline, "the slow session was never shed ({sent} messages sent)");
        let request = SendRequest {
            workspace: rig.ws.clone(),
            channel: rig.general.clone(),
            user: rig.admin.clone(),
            text: text.clone(),
            client_msg_id: format!("m-{sent}"),
            thread_root: None,
        };
        rig.origin.sequencer.send(request).await.unwrap();
        sent += 1;
        if sent % 16 == 0 {
            // Let the feed catch up before sending more.
            tokio::task::yield_now().await;
        }
    }
    // The session is over; only now does the client read.
    let mut seqs = Vec::new();
    let mut cursor = hello["cursor"].as_str().unwrap().to_owned();
    let last = loop {
        match slow.next().await {
            Got::Control(_) => {}
            data @ Got::Data(..) => {
                if let Some((seq, at)) = message(&data) {
                    seqs.push(seq);
                    cursor = at;
                }
            }
            other => break other,
        }
    };
    let (code, reason) =
        last.close_code().unwrap_or_else(|| panic!("no close frame after {} messages: {last:?}", seqs.len()));
    assert_eq!(code, 4008, "{reason}");
    assert!(reason.contains("resume"), "the reason tells the client what to do: {reason}");
    assert!(!seqs.is_empty() && (seqs.len() as u64) < sent, "{} of {sent} messages came before the close", seqs.len());
    slow.send(FIN | CLOSE, &close_payload(4008, b"")).await;
    assert_eq!(slow.next().await, Got::End);

    // Resume: what the close went ahead of comes now, without a gap.
    let (mut resumed, hello) = Raw::connect_with(rig.edge.addr, &rig.token, &format!("&resume={cursor}")).await;
    assert_eq!(hello["resumed"], true);
    while seqs.len() < sent as usize {
        let got = resumed.next().await;
        match message(&got) {
            Some((seq, _)) => seqs.push(seq),
            None => assert!(matches!(got, Got::Data(..) | Got::Control(_)), "the resumed session ended: {got:?}"),
        }
    }
    assert_eq!(seqs, (1..=sent).collect::<Vec<_>>(), "every message once, in order");
}
