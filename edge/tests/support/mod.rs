//! What the edge's wire tests share: a rig (a real origin and a real edge started in this process
//! on port 0, with a workspace whose admin can connect) and a WebSocket client made of raw bytes
//! over TCP, so that a test sends exactly the frames it builds and sees exactly what the edge
//! sends back. Every wait has a deadline; none is a sleep.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use selvage_edge::{config::OriginLink, EdgeConfig};
use selvage_origin::{accounts, channels, OriginConfig};
use selvage_shared::{ChannelId, UserId, WorkspaceId};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// An origin and an edge linked to it, with a workspace whose admin can connect.
pub struct Rig {
    pub origin: Arc<selvage_origin::Origin>,
    pub edge: selvage_edge::Running,
    pub(crate) _origin: selvage_origin::Running,
    pub ws: WorkspaceId,
    pub admin: UserId,
    pub token: String,
    /// The workspace's first channel.
    pub general: ChannelId,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a rig whose edge is `edge_id` (its link key is named for it too), listening for QUIC
/// clients as well when `quic`; `adjust` changes the edge's config before it starts.
pub async fn rig(edge_id: &str, quic: bool, adjust: impl FnOnce(&mut EdgeConfig)) -> Rig {
    rig_with_origin(edge_id, quic, adjust, |_| {}).await
}

/// [`rig`], with `adjust_origin` changing the origin's config before it starts.
pub async fn rig_with_origin(
    edge_id: &str,
    quic: bool,
    adjust: impl FnOnce(&mut EdgeConfig),
    adjust_origin: impl FnOnce(&mut OriginConfig),
) -> Rig {
    let edge_key = format!("{edge_id}-test-edge-key-0123456789");
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut config = OriginConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..OriginConfig::default()
    };
    config.link.listen = "127.0.0.1:0".parse().unwrap();
    config.link.edge_key = Some(edge_key.clone());
    adjust_origin(&mut config);
    let running = selvage_origin::start(config, shutdown.clone()).await.unwrap();
    let origin = running.origin.clone();
    let (workspace, admin) = accounts::create_workspace(&origin.store, "acme", "admin", "Admin", 0).await.unwrap();
    let caller = accounts::authenticate(&origin.store, &admin.token).await.unwrap();
    let general = channels::list(&origin.store, &caller).await.unwrap()[0].channel.id.clone();
    let mut edge_config = EdgeConfig {
        edge_id: edge_id.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        quic_listen: quic.then(|| "127.0.0.1:0".parse().unwrap()),
        origin: OriginLink {
            link: running.link_addr.unwrap().to_string(),
            fingerprint: running.link_fingerprint.clone(),
            edge_key,
            ..OriginLink::default()
        },
        ..EdgeConfig::default()
    };
    edge_config.web.api_url = format!("http://{}", running.addr);
    adjust(&mut edge_config);
    let edge = selvage_edge::start(edge_config, shutdown.clone()).await.unwrap();
    wait_until("the edge links to the origin", || edge.edge.is_ready()).await;
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

impl Rig {
    /// Another token of the workspace's admin.
    pub async fn another_token(&self) -> String {
        let caller = accounts::authenticate(&self.origin.store, &self.token).await.unwrap();
        accounts::new_token_for(&self.origin.store, &caller, 0).await.unwrap()
    }

    /// A new user of the workspace and their token.
    pub async fn user(&self, handle: &str) -> String {
        let caller = accounts::authenticate(&self.origin.store, &self.token).await.unwrap();
        accounts::create_user(&self.origin.store, &caller, handle, handle, false, 0).await.unwrap().token
    }

    /// Connections the admin holds on the edge, as the edge counts them.
    pub fn admin_connections(&self) -> usize {
        self.edge.edge.slots.count(&self.ws, &self.admin)
    }

    /// The value of one sample of the edge's `/metrics` (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.edge.edge.metrics.render();
        text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
    }
}

/// Polls `check` until it holds; fails the test after [`DEADLINE`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the client read from the edge.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
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
    pub fn close_code(&self) -> Option<(u16, String)> {
        match self {
            Got::Close(p) if p.len() >= 2 => {
                Some((u16::from_be_bytes([p[0], p[1]]), String::from_utf8_lossy(&p[2..]).into_owned()))
            }
            _ => None,
        }
    }
}

/// The header of a client frame whose first byte (FIN, reserved bits, opcode) is `first`, of
/// `len` payload bytes, masked with `mask` when there is one.
pub fn header(first: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
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
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
    out
}

/// A WebSocket client made of raw bytes: it sends exactly the frames a test builds.
pub struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and upgrades with `token`; the edge's `hello` is read and checked.
    pub async fn connect(addr: SocketAddr, token: &str) -> Raw {
        Raw::connect_with(addr, token, "").await.0
    }

    /// The same with `query` added to the URL; returns the `hello` too.
    pub async fn connect_with(addr: SocketAddr, token: &str, query: &str) -> (Raw, serde_json::Value) {
        let mut raw = Raw::upgrade(addr, query, Some(token)).await;
        let hello = match raw.next().await {
            Got::Data(0x1, hello) => serde_json::from_slice::<serde_json::Value>(&hello).unwrap(),
            other => panic!("expected the hello, got {other:?}"),
        };
        assert_eq!(hello["type"], "hello", "the first frame is the hello");
        (raw, hello)
    }

    /// Upgrades a connection to `/v1/connect?format=json` with `query` added to the URL, and
    /// `bearer` as the `Authorization` header when there is one; reads nothing after the upgrade.
    pub async fn upgrade(addr: SocketAddr, query: &str, bearer: Option<&str>) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let authorization = bearer.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /v1/connect?format=json{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             {authorization}\r\n"
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
        raw
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
    pub async fn next(&mut self) -> Got {
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
    pub async fn next_control(&mut self) -> Got {
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
    pub async fn send(&mut self, first: u8, payload: &[u8]) {
        self.send_with(first, payload, true).await;
    }

    pub async fn send_with(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = header(first, payload.len(), masked.then_some(mask));
        if masked {
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        // The edge may have closed already; what it sent is what the test reads next.
        let _ = self.tcp.write_all(&out).await;
    }

    /// Writes `bytes` as they are: a frame, or part of one, that the test has built.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }
}
