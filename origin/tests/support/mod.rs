//! The harness of the origin's HTTP tests: a real origin on port 0 over a real embedded store in
//! a directory of the test's, and a client of its HTTP API that calls it as an application
//! would, over real sockets.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::{ops::Deref, path::Path, process::Stdio, time::Duration};

use reqwest::{Method, StatusCode};
use selvage_origin::{OriginConfig, Running};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// The operator key every test origin is configured with.
pub const OPERATOR_KEY: &str = "test-operator-key-0123456789";

/// An origin's configuration for a test: port 0 on loopback, data under `data_dir`, the
/// operator key set.
pub fn config(data_dir: &Path) -> OriginConfig {
    OriginConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        operator_key: Some(OPERATOR_KEY.into()),
        ..OriginConfig::default()
    }
}

/// A client of an origin's HTTP API. Every call answers the status and the body as JSON (or,
/// when it is not JSON, as a string).
#[derive(Clone)]
pub struct Api {
    /// `http://addr`.
    pub base: String,
    /// The HTTP client, for requests the helpers below do not make.
    pub http: reqwest::Client,
}

impl Api {
    /// A client of the origin listening on `addr`.
    pub fn new(addr: impl std::fmt::Display) -> Api {
        Api { base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Calls `path` with `token` as the bearer, with `body` as JSON when given.
    pub async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// A workspace; returns (admin token, general channel id).
    pub async fn workspace(&self, name: &str) -> (String, String) {
        let (s, v) = self.post("/v1/workspaces", OPERATOR_KEY, json!({ "name": name, "admin_handle": "admin" })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let token = v["token"].as_str().unwrap().to_string();
        let (_, chans) = self.get("/v1/channels", &token).await;
        let general = chans["channels"][0]["id"].as_str().unwrap().to_string();
        (token, general)
    }

    /// A user; returns (user id, token).
    pub async fn user(&self, admin: &str, handle: &str) -> (String, String) {
        let (s, v) = self.post("/v1/users", admin, json!({ "handle": handle })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (v["user"]["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
    }

    /// A channel made by `token`'s user; returns its id.
    pub async fn channel(&self, token: &str, name: &str, private: bool) -> String {
        let (s, v) = self.post("/v1/channels", token, json!({ "name": name, "private": private })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["channel"]["id"].as_str().unwrap().to_string()
    }

    /// Posts `text` in `channel` as the holder of `token` (a fresh `client_msg_id`); answers
    /// its seq.
    pub async fn send_text(&self, token: &str, channel: &str, text: &str) -> u64 {
        let id = format!("m{}", rand::random::<u64>());
        let body = json!({ "text": text, "client_msg_id": id });
        let (s, v) = self.post(&format!("/v1/channels/{channel}/messages"), token, body).await;
        assert!(s.is_success(), "{s} {v}");
        v["seq"].as_u64().or_else(|| v["message"]["seq"].as_u64()).unwrap()
    }

    /// Opens the DM of the holder of `token` with `with`; answers its channel id.
    pub async fn open_dm(&self, token: &str, with: &str) -> String {
        let (s, v) = self.post("/v1/dms", token, json!({ "users": [with] })).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["channel"]["id"].as_str().unwrap().to_string()
    }

    /// The value of one series of `/metrics` (its name and labels as rendered, e.g.
    /// `selvage_files_total{event="declared"}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let prefix = format!("{series} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0.0)
    }

    /// Declares a file; answers the declaration (asserting 201).
    pub async fn declare(&self, token: &str, name: &str, size: usize, content_type: &str) -> Value {
        let body = json!({ "name": name, "size": size, "content_type": content_type });
        let (s, v) = self.post("/v1/files", token, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }
}

/// An origin running in this process, and a client of it (its methods are the client's).
pub struct Origin {
    /// The client of its HTTP API.
    pub api: Api,
    running: Option<Running>,
    shutdown: CancellationToken,
}

impl Origin {
    /// Starts an origin with `config`.
    pub async fn start(config: OriginConfig) -> Origin {
        let shutdown = CancellationToken::new();
        let running = selvage_origin::start(config, shutdown.clone()).await.unwrap();
        Origin { api: Api::new(running.addr), running: Some(running), shutdown }
    }

    /// The running node, for what the API does not show.
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running until stopped")
    }

    /// Shuts it down and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await;
        }
    }
}

impl Deref for Origin {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// An origin over a store in a temporary directory of its own (its methods are the client's).
pub struct TestOrigin {
    origin: Origin,
    _dir: tempfile::TempDir,
}

impl TestOrigin {
    /// An origin with the test configuration ([`config`]).
    pub async fn start() -> TestOrigin {
        TestOrigin::start_with(|_| {}).await
    }

    /// An origin with the test configuration as `tweak` changes it.
    pub async fn start_with(tweak: impl FnOnce(&mut OriginConfig)) -> TestOrigin {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        tweak(&mut config);
        TestOrigin { origin: Origin::start(config).await, _dir: dir }
    }

    /// Shuts it down and waits until it has.
    pub async fn stop(self) {
        self.origin.stop().await;
    }

    /// Tells the origin, as an edge would, that `user` of `workspace` is `presence`.
    pub fn set_presence(
        &self,
        workspace: &selvage_shared::WorkspaceId,
        user: &str,
        presence: selvage_shared::Presence,
    ) {
        let report =
            selvage_shared::link::PresenceReport { user: selvage_shared::UserId::parse(user).unwrap(), presence };
        let edge: std::sync::Arc<str> = std::sync::Arc::from("test-edge");
        self.running().origin.presence.report(&edge, workspace, &[report], tokio::time::Instant::now());
    }
}

impl Deref for TestOrigin {
    type Target = Origin;

    fn deref(&self) -> &Origin {
        &self.origin
    }
}

/// Sends `body` through an `upload` answer of `POST /v1/files`: its URL, method and every
/// header it names, except those `replace` gives other values.
pub async fn upload_with(upload: &Value, body: Vec<u8>, replace: &[(&str, &str)]) -> StatusCode {
    assert_eq!(upload["method"], "PUT");
    let mut req = reqwest::Client::new().put(upload["url"].as_str().unwrap());
    for (name, value) in upload["headers"].as_object().unwrap() {
        if name == "content-length" || replace.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            // reqwest sends the body's own length.
            continue;
        }
        req = req.header(name, value.as_str().unwrap());
    }
    for (name, value) in replace {
        req = req.header(*name, *value);
    }
    req.body(body).send().await.unwrap().status()
}

/// [`upload_with`] as declared.
pub async fn upload(upload: &Value, body: Vec<u8>) -> StatusCode {
    upload_with(upload, body, &[]).await
}

/// The environment variable that turns a test binary's `child_origin` test into an origin: its
/// configuration, as JSON.
const CHILD_CONFIG: &str = "SELVAGE_TEST_CHILD_ORIGIN_CONFIG";

/// What the child prints once it listens, before its HTTP address.
const CHILD_READY: &str = "child-origin-listening ";

/// Longest a child origin may take to start listening.
const CHILD_START: Duration = Duration::from_secs(90);

/// The body of the test named `child_origin` that a test binary using [`Child`] must have:
///
/// ```ignore
/// #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// async fn child_origin() {
///     support::child_origin().await
/// }
/// ```
///
/// Not a test on its own: without [`CHILD_CONFIG`] it returns at once; with it, it runs an
/// origin until the process is killed.
pub async fn child_origin() {
    let Ok(config) = std::env::var(CHILD_CONFIG) else { return };
    let config: OriginConfig = serde_json::from_str(&config).unwrap();
    let running = selvage_origin::start(config, CancellationToken::new()).await.unwrap();
    println!("{CHILD_READY}{}", running.addr);
    // Until killed.
    std::future::pending::<()>().await;
}

/// An origin in a child process (this test binary, running its `child_origin` test), to kill
/// with SIGKILL in the middle of its work.
pub struct Child {
    /// The client of its HTTP API.
    pub api: Api,
    process: tokio::process::Child,
}

impl Child {
    /// Starts a child origin with `config` and waits until it listens.
    pub async fn spawn(config: &OriginConfig) -> Child {
        let mut process = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["child_origin", "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_CONFIG, serde_json::to_string(config).unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(CHILD_START, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // After libtest's "test child_origin ... ", on the same line.
                if let Some((_, addr)) = line.split_once(CHILD_READY) {
                    return addr.trim().to_string();
                }
            }
            panic!("the child origin exited before listening");
        })
        .await
        .expect("the child origin started in time");
        // Whatever else it prints is read, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Child { api: Api::new(addr), process }
    }

    /// SIGKILL: no shutdown, no lease given up, nothing flushed but what was committed.
    pub async fn kill(mut self) {
        self.process.kill().await.unwrap();
    }
}
