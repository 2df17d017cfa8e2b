//! The harness of the edge tests: a real origin (embedded store in a temporary directory, QUIC
//! link) and real edges on port 0, in this process, with the client SDK to talk to them.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::{
    collections::HashSet,
    future::Future,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use selvage_client::{Client, ConnectOptions, Inbound, Transport};
use selvage_edge::EdgeConfig;
use selvage_net::tls::Trust;
use selvage_origin::OriginConfig;
use selvage_shared::{ChannelId, Cursor, Event, WorkspaceId};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const OPERATOR_KEY: &str = "edge-test-operator-key-0042";
pub const EDGE_KEY: &str = "edge-test-link-key-00000042";
/// How long any one thing a test waits for may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// An origin with its link.
pub struct Origin {
    running: Option<selvage_origin::Running>,
    pub shutdown: CancellationToken,
    /// The configuration it started with (port 0 until it ran).
    config: OriginConfig,
    dir: tempfile::TempDir,
    pub base: String,
    pub link: std::net::SocketAddr,
    pub fingerprint: String,
    pub http: reqwest::Client,
}

/// A workspace made through the origin's API, with its admin (handle `alice`).
pub struct Workspace {
    pub id: WorkspaceId,
    pub admin_token: String,
    pub admin_id: String,
    pub general: ChannelId,
}

fn origin_config(dir: &std::path::Path) -> OriginConfig {
    let mut config = OriginConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        operator_key: Some(OPERATOR_KEY.into()),
        ..OriginConfig::default()
    };
    config.link.listen = "127.0.0.1:0".parse().unwrap();
    config.link.edge_key = Some(EDGE_KEY.into());
    config
}

impl Origin {
    pub async fn start() -> Origin {
        Origin::start_with(|_| {}).await
    }

    /// Starts an origin whose configuration `adjust` changed (a restart keeps the change).
    pub async fn start_with(adjust: impl FnOnce(&mut OriginConfig)) -> Origin {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let mut config = origin_config(dir.path());
        adjust(&mut config);
        let running = selvage_origin::start(config.clone(), shutdown.clone()).await.unwrap();
        let link = running.link_addr.expect("the link runs");
        let fingerprint = running.link_fingerprint.clone().expect("a link certificate");
        Origin {
            base: format!("http://{}", running.addr),
            running: Some(running),
            shutdown,
            config,
            dir,
            link,
            fingerprint,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the origin (the edge sees its link go).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
    }

    /// Starts it again on the same data, addresses and certificate.
    pub async fn restart(&mut self) {
        self.shutdown = CancellationToken::new();
        let mut config = self.config.clone();
        config.listen = self.base.trim_start_matches("http://").parse().unwrap();
        config.link.listen = self.link;
        let running = selvage_origin::start(config, self.shutdown.clone()).await.unwrap();
        assert_eq!(running.link_fingerprint.as_deref(), Some(self.fingerprint.as_str()), "the link keeps its cert");
        self.running = Some(running);
    }

    pub fn edge_config(&self, name: &str) -> EdgeConfig {
        let mut c = EdgeConfig { edge_id: name.into(), listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
        c.quic_listen = Some("127.0.0.1:0".parse().unwrap());
        c.origin.link = self.link.to_string();
        c.origin.fingerprint = Some(self.fingerprint.clone());
        c.origin.edge_key = EDGE_KEY.into();
        c.operator_key = Some(OPERATOR_KEY.into());
        c.sessions.drain_grace_ms = 1500;
        c.web.api_url = self.base.clone();
        c
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body)).await
    }

    /// A workspace: (admin token, admin id, #general id).
    pub async fn workspace(&self) -> (String, String, ChannelId) {
        let w = self.new_workspace("Edge").await;
        (w.admin_token, w.admin_id, w.general)
    }

    /// A workspace named `name`, with its id.
    pub async fn new_workspace(&self, name: &str) -> Workspace {
        let (s, v) = self.post("/v1/workspaces", OPERATOR_KEY, json!({ "name": name, "admin_handle": "alice" })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let admin_token = v["token"].as_str().unwrap().to_string();
        let admin_id = v["user"]["id"].as_str().unwrap().to_string();
        let id = v["workspace"]["id"].as_str().unwrap().parse().unwrap();
        let (_, chans) = self.call(reqwest::Method::GET, "/v1/channels", &admin_token, None).await;
        let general = chans["channels"][0]["id"].as_str().unwrap().parse().unwrap();
        Workspace { id, admin_token, admin_id, general }
    }

    /// Creates a channel (public or private) as `token`'s user and returns its id.
    pub async fn channel(&self, token: &str, name: &str, private: bool) -> ChannelId {
        let (s, v) = self.post("/v1/channels", token, json!({ "name": name, "private": private })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["channel"]["id"].as_str().unwrap().parse().unwrap()
    }

    /// A user: (id, token).
    pub async fn user(&self, admin: &str, handle: &str) -> (String, String) {
        let (s, v) = self.post("/v1/users", admin, json!({ "handle": handle })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (v["user"]["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
    }

    /// Another token for the holder of `token`.
    pub async fn new_token(&self, token: &str) -> String {
        let (s, v) = self.call(reqwest::Method::POST, "/v1/tokens", token, None).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Posts a message with `client_msg_id` `id`; returns its seq.
    pub async fn send(&self, token: &str, channel: &ChannelId, id: &str) -> u64 {
        let path = format!("/v1/channels/{channel}/messages");
        let (s, v) = self.post(&path, token, json!({ "text": format!("text of {id}"), "client_msg_id": id })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["seq"].as_u64().or_else(|| v["message"]["seq"].as_u64()).unwrap()
    }

    /// The origin's `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }

    /// The sum of the origin's link calls so far.
    pub async fn link_calls(&self) -> f64 {
        metric_sum(&self.metrics().await, "selvage_link_calls_total")
    }

    /// Link calls of one kind (`snapshot`, `authenticate`, `events`, …) so far.
    pub async fn link_calls_of(&self, call: &str) -> u64 {
        metric_sum(&self.metrics().await, &format!("selvage_link_calls_total{{call=\"{call}\"}}")) as u64
    }

    /// Whether the origin's log no longer holds the events right after `cursor` (its long-poll
    /// answers `resync`), as seen by the holder of `token`.
    pub async fn has_trimmed_past(&self, token: &str, cursor: &Cursor) -> bool {
        let path = format!("/v1/events?cursor={cursor}&limit=1");
        let (s, v) = self.call(reqwest::Method::GET, &path, token, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.get("resync").is_some_and(|r| !r.is_null())
    }
}

/// An s3local endpoint on port 0 for an origin's files (ARCHITECTURE §8 "Files"), storing in
/// the directory returned with it; keep both until the test ends.
pub async fn start_s3local() -> (selvage_s3local::S3Local, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s3 = selvage_s3local::S3Local::start(selvage_s3local::Options::new(dir.path())).await.unwrap();
    (s3, dir)
}

/// Turns the files service on in `config`, against `s3` and its default bucket; for
/// [`Origin::start_with`].
pub fn files_on(config: &mut OriginConfig, s3: &selvage_s3local::S3Local) {
    config.files.enabled = true;
    config.files.endpoint = Some(s3.endpoint());
    config.files.region = selvage_s3local::DEFAULT_REGION.into();
    config.files.bucket = selvage_s3local::DEFAULT_BUCKET.into();
    config.files.path_style = true;
    config.files.access_key_id = Some(selvage_s3local::DEFAULT_ACCESS_KEY.into());
    config.files.secret_access_key = Some(selvage_s3local::DEFAULT_SECRET_KEY.into());
}

/// The sum of the Prometheus samples whose line starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// An edge's `/metrics`.
pub async fn edge_metrics(edge: &selvage_edge::Running) -> String {
    reqwest::get(format!("http://{}/metrics", edge.addr)).await.unwrap().text().await.unwrap()
}

pub async fn start_edge(origin: &Origin, name: &str) -> (selvage_edge::Running, CancellationToken) {
    start_edge_with(origin.edge_config(name)).await
}

pub async fn start_edge_with(config: EdgeConfig) -> (selvage_edge::Running, CancellationToken) {
    let shutdown = CancellationToken::new();
    let running = selvage_edge::start(config, shutdown.clone()).await.unwrap();
    wait_until("the edge links to the origin", || running.edge.is_ready()).await;
    (running, shutdown)
}

/// An edge on its own runtime in its own thread: [`KillableEdge::kill`] shuts that runtime down,
/// every task and socket gone at once with nothing said to anyone — a crash.
pub struct KillableEdge {
    /// Its HTTP/WebSocket address.
    pub addr: std::net::SocketAddr,
    kill: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl KillableEdge {
    pub async fn start(config: EdgeConfig) -> KillableEdge {
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (kill, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            runtime.block_on(async move {
                let running = selvage_edge::start(config, CancellationToken::new()).await.unwrap();
                let _ = addr_tx.send(running.addr);
                let _ = kill_rx.await;
            });
            runtime.shutdown_background();
        });
        KillableEdge { addr: addr_rx.await.unwrap(), kill, thread }
    }

    /// Connects a client once the edge serves (its link to the origin is up).
    pub async fn connect(&self, transport: Transport, token: &str) -> Client {
        let opts =
            ConnectOptions { transport, addr: self.addr.to_string(), token: token.into(), resume: None, timeout: WAIT };
        let deadline = Instant::now() + WAIT;
        loop {
            match Client::connect(opts.clone()).await {
                Ok(c) => return c,
                Err(e) => assert!(Instant::now() < deadline, "the edge never served: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(self) {
        self.kill.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_until`] for a condition that takes a request to check.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn options(edge: &selvage_edge::Running, transport: &Transport, token: &str) -> ConnectOptions {
    let addr = match transport {
        Transport::Quic { .. } => edge.quic_addr.unwrap().to_string(),
        _ => edge.addr.to_string(),
    };
    ConnectOptions { transport: transport.clone(), addr, token: token.into(), resume: None, timeout: WAIT }
}

pub fn quic(edge: &selvage_edge::Running) -> Transport {
    Transport::Quic { trust: Trust::Pinned(edge.quic_fingerprint.clone().unwrap()), server_name: "localhost".into() }
}

/// Message events of `channel` a client receives until it holds `count` distinct seqs.
pub async fn collect(client: &mut Client, channel: &ChannelId, count: usize) -> Vec<(u64, String)> {
    collect_within(client, channel, count, WAIT).await
}

/// [`collect`], failing after `wait` rather than [`WAIT`].
pub async fn collect_within(
    client: &mut Client,
    channel: &ChannelId,
    count: usize,
    wait: Duration,
) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    let mut seqs = HashSet::new();
    let deadline = Instant::now() + wait;
    while seqs.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out with {} of {count} messages: {got:?}", seqs.len());
        match client.next_event(left).await.unwrap() {
            Some(Inbound::Event(frame)) => {
                if let Event::Message(m) = frame.event {
                    if m.channel == *channel {
                        seqs.insert(m.seq);
                        got.push((m.seq, m.client_msg_id));
                    }
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    got
}

pub fn assert_gap_free(got: &[(u64, String)], from: u64, to: u64) {
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(seqs, expected, "every message once, in seq order");
}

/// Posts messages to `channel` over the origin's HTTP API until `stop`; returns how many.
pub fn spawn_writer(
    origin: &Origin,
    token: &str,
    channel: &ChannelId,
    text: String,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let (base, token, channel) = (origin.base.clone(), token.to_string(), channel.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut sent = 0u64;
        while !stop.is_cancelled() {
            let resp = http
                .post(format!("{base}/v1/channels/{channel}/messages"))
                .bearer_auth(&token)
                .json(&json!({ "text": text, "client_msg_id": format!("w{sent}") }))
                .send()
                .await
                .unwrap();
            if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                // Over the token's write rate (a run slower than usual outlasts the burst): the
                // same message again once the origin says, as a client does.
                let secs = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(secs)).await;
                continue;
            }
            assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
            sent += 1;
            tokio::time::sleep(every).await;
        }
        sent
    })
}

/// What a [`Relay`] does with the datagrams it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RelayMode {
    /// Forwards them.
    Pass,
    /// Drops them: the link is cut.
    Cut,
    /// Keeps them, in order, until the relay passes again: the link stalls without loss.
    Hold,
}

/// A UDP relay between an edge and its origin's link that can be cut, held and restored.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    mode: tokio::sync::watch::Sender<RelayMode>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(to: std::net::SocketAddr) -> Relay {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(to).await.unwrap();
        let addr = front.local_addr().unwrap();
        let (mode, mut mode_rx) = tokio::sync::watch::channel(RelayMode::Pass);
        let task = tokio::spawn(async move {
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut peer = None;
            // Held datagrams: (towards the origin, bytes).
            let mut held: Vec<(bool, Vec<u8>)> = Vec::new();
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut a) => {
                        peer = Some(from);
                        let now = *mode_rx.borrow();
                        match now {
                            RelayMode::Pass => { let _ = back.send(&a[..n]).await; }
                            RelayMode::Cut => {}
                            RelayMode::Hold => held.push((true, a[..n].to_vec())),
                        }
                    }
                    Ok(n) = back.recv(&mut b) => {
                        let now = *mode_rx.borrow();
                        match (peer, now) {
                            (Some(p), RelayMode::Pass) => { let _ = front.send_to(&b[..n], p).await; }
                            (Some(_), RelayMode::Hold) => held.push((false, b[..n].to_vec())),
                            _ => {}
                        }
                    }
                    changed = mode_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let now = *mode_rx.borrow_and_update();
                        match now {
                            RelayMode::Pass => {
                                for (up, bytes) in held.drain(..) {
                                    if up {
                                        let _ = back.send(&bytes).await;
                                    } else if let Some(p) = peer {
                                        let _ = front.send_to(&bytes, p).await;
                                    }
                                }
                            }
                            RelayMode::Cut => held.clear(),
                            RelayMode::Hold => {}
                        }
                    }
                }
            }
        });
        Relay { addr, mode, task }
    }

    /// Cuts the link (datagrams are dropped) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.mode.send_replace(if cut { RelayMode::Cut } else { RelayMode::Pass });
    }

    /// Stalls the link: nothing passes, nothing is lost, until [`Relay::release`].
    pub fn hold(&self) {
        self.mode.send_replace(RelayMode::Hold);
    }

    /// Passes everything held, in order, and then passes again.
    pub fn release(&self) {
        self.mode.send_replace(RelayMode::Pass);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads what `client` gets until its connection closes; returns the close code and reason.
/// Events and an `unauthorized` error frame may come first (a session ended by its token);
/// anything else fails the test.
pub async fn closed(client: &mut Client, what: &str) -> (Option<u16>, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: the session was never closed");
        match client.next_event(left).await {
            Ok(Some(Inbound::Closed { code, reason })) => return (code, reason),
            Ok(Some(Inbound::Event(_))) | Ok(None) => {}
            Ok(Some(Inbound::Error { code, .. })) => {
                assert_eq!(code, selvage_shared::ErrorCode::Unauthorized, "{what}")
            }
            Ok(Some(other)) => panic!("{what}: unexpected {other:?}"),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}
