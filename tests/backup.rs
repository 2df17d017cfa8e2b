//! Online backup and restore of the embedded store, as an operator runs them
//! (docs/STORAGE.md, "Backup and restore"): `selvage admin backup` against a running
//! `selvage origin` process while clients keep sending, `selvage admin restore` into a fresh
//! data directory, a second origin on it — and every channel's history, page by page, the same
//! on both up to the backup's snapshot. Also: a cut backup file is refused, and a wrong
//! operator key gets 401 and no file.

mod common;

use std::{
    collections::HashMap,
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{OriginProcess, OPERATOR_KEY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// An origin's HTTP API.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("the origin answers");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A call that must succeed; its body.
    async fn ok(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method.clone(), path, token, body).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        self.ok(Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        self.ok(Method::POST, path, token, Some(body)).await
    }

    /// Posts `text` in `channel` (a reply when `root` is given); answers its seq.
    async fn send(&self, token: &str, channel: &str, id: &str, root: Option<u64>) -> u64 {
        let body =
            json!({ "text": format!("{id}: hello <@U0> and some words"), "client_msg_id": id, "thread_root": root });
        self.post(&format!("/v1/channels/{channel}/messages"), token, body).await["seq"].as_u64().unwrap()
    }

    /// `channel`'s whole history in pages of `limit`, oldest first, as `after=` paging reads it.
    async fn history_pages(&self, token: &str, channel: &str, limit: usize) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get(&format!("/v1/channels/{channel}/messages?after={after}&limit={limit}"), token).await;
            let messages = page["messages"].as_array().unwrap().clone();
            if let Some(last) = messages.last() {
                after = last["seq"].as_u64().unwrap();
            }
            let more = page["has_more"].as_bool().unwrap();
            if !messages.is_empty() {
                pages.push(messages);
            }
            if !more {
                return pages;
            }
        }
    }
}

/// Runs `selvage` with no `SELVAGE_*` variable but those of `env`.
fn selvage(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selvage"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SELVAGE_")) {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied()).output().expect("selvage runs")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("admin prints JSON")
}

/// Declares, uploads and shares a file in `channel`; answers its id.
async fn share_file(api: &Api, token: &str, channel: &str, bytes: &[u8]) -> String {
    let declare = json!({ "name": "notes.txt", "size": bytes.len(), "content_type": "text/plain" });
    let declared = api.post("/v1/files", token, declare).await;
    let id = declared["file"]["id"].as_str().unwrap().to_string();
    let upload = &declared["upload"];
    let mut put = api.http.put(upload["url"].as_str().unwrap());
    for (header, value) in upload["headers"].as_object().unwrap() {
        if header != "content-length" {
            put = put.header(header, value.as_str().unwrap());
        }
    }
    assert!(put.body(bytes.to_vec()).send().await.unwrap().status().is_success());
    let complete = json!({ "channel": channel, "client_msg_id": "file-1" });
    let done = api.post(&format!("/v1/files/{id}/complete"), token, complete).await;
    assert_eq!(done["file"]["state"], "ready", "{done}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_channel_up_to_its_snapshot() {
    let s3_dir = tempfile::tempdir().unwrap();
    let s3 = selvage_s3local::S3Local::start(selvage_s3local::Options::new(s3_dir.path())).await.unwrap();
    let endpoint = s3.endpoint();
    let env = [
        ("SELVAGE_RATE_LIMITS__ENABLED", "false"),
        ("SELVAGE_FILES__ENABLED", "true"),
        ("SELVAGE_FILES__ENDPOINT", endpoint.as_str()),
        ("SELVAGE_FILES__PATH_STYLE", "true"),
        ("SELVAGE_FILES__ACCESS_KEY_ID", selvage_s3local::DEFAULT_ACCESS_KEY),
        ("SELVAGE_FILES__SECRET_ACCESS_KEY", selvage_s3local::DEFAULT_SECRET_KEY),
    ];
    let dir_a = tempfile::tempdir().unwrap();
    let origin_a = OriginProcess::spawn_with(dir_a.path(), &env);
    let a = Api { http: reqwest::Client::new(), base: origin_a.base.clone() };

    // A workspace with a channel of each kind.
    let ws = a.post("/v1/workspaces", OPERATOR_KEY, json!({ "name": "Backed up", "admin_handle": "alice" })).await;
    let alice = ws["token"].as_str().unwrap().to_string();
    let chans = a.get("/v1/channels", &alice).await;
    let general = chans["channels"][0]["id"].as_str().unwrap().to_string();
    let bob_user = a.post("/v1/users", &alice, json!({ "handle": "bob" })).await;
    let (bob_id, bob) = (bob_user["user"]["id"].as_str().unwrap(), bob_user["token"].as_str().unwrap().to_string());
    let carol_user = a.post("/v1/users", &alice, json!({ "handle": "carol" })).await;
    let carol_id = carol_user["user"]["id"].as_str().unwrap();
    let channel = |name: &str, private: bool| {
        let (a, alice) = (a.clone(), alice.clone());
        let name = name.to_string();
        async move {
            let v = a.post("/v1/channels", &alice, json!({ "name": name, "private": private })).await;
            v["channel"]["id"].as_str().unwrap().to_string()
        }
    };
    let eng = channel("eng", false).await;
    let secret = channel("secret", true).await;
    for channel in [&eng, &secret] {
        a.post(&format!("/v1/channels/{channel}/members"), &alice, json!({ "user": bob_id })).await;
    }
    let dm =
        a.post("/v1/dms", &alice, json!({ "users": [bob_id] })).await["channel"]["id"].as_str().unwrap().to_string();
    let group = a.post("/v1/dms", &alice, json!({ "users": [bob_id, carol_id] })).await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let channels = [general.clone(), eng.clone(), secret.clone(), dm.clone(), group.clone()];

    // A few hundred messages, a thread, edits, a deletion, reactions and a file.
    let mut sends = Vec::new();
    for (c, channel) in channels.iter().enumerate() {
        let (a, alice, channel) = (a.clone(), alice.clone(), channel.clone());
        sends.push(tokio::spawn(async move {
            for i in 0..70 {
                a.send(&alice, &channel, &format!("c{c}-m{i}"), None).await;
            }
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    for i in 0..12 {
        a.send(&bob, &eng, &format!("reply-{i}"), Some(3)).await;
    }
    for seq in [1, 5, 9] {
        let path = format!("/v1/channels/{eng}/messages/{seq}");
        a.ok(Method::PATCH, &path, &alice, Some(json!({ "text": format!("edited {seq}") }))).await;
    }
    a.ok(Method::DELETE, &format!("/v1/channels/{secret}/messages/4"), &alice, None).await;
    for (channel, seq, emoji, token) in
        [(&general, 2, "tada", &alice), (&general, 2, "tada", &bob), (&eng, 3, "eyes", &bob), (&dm, 1, "wave", &bob)]
    {
        let path = format!("/v1/channels/{channel}/messages/{seq}/reactions/{emoji}");
        a.ok(Method::PUT, &path, token, None).await;
    }
    let file = share_file(&a, &alice, &general, b"the notes of the meeting").await;

    // Sends go on in two channels while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let mut writers = Vec::new();
    for channel in [general.clone(), eng.clone()] {
        let (a, alice, stop, acked) = (a.clone(), alice.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let seq = a.send(&alice, &channel, &format!("live-{channel}-{i}"), None).await;
                acked.lock().unwrap().entry(channel.clone()).or_default().push(seq);
                i += 1;
            }
        }));
    }
    let acked_count = || acked.lock().unwrap().values().map(Vec::len).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_count() < 30 {
        assert!(Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Everything acknowledged before the backup is asked for must be in it.
    let before: HashMap<String, u64> =
        acked.lock().unwrap().iter().map(|(c, seqs)| (c.clone(), *seqs.iter().max().unwrap())).collect();
    let count_before = acked_count();
    let cursor_before = a.get("/v1/events", &alice).await["cursor"].as_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let file_path = work.path().join("origin.backup");
    let out = file_path.to_str().unwrap().to_string();
    let url = origin_a.base.clone();
    let backup = tokio::task::spawn_blocking(move || {
        selvage(&["admin", "backup", "--origin", &url, "--out", &out], &[("SELVAGE_OPERATOR_KEY", OPERATOR_KEY)])
    })
    .await
    .unwrap();
    let backup = json_of(&backup);
    while acked_count() < count_before + 20 {
        assert!(Instant::now() < deadline, "the writers stopped during the backup");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(backup["records"].as_u64().unwrap() > 500, "{backup}");
    assert!(!work.path().join("origin.backup.partial").exists());

    // A wrong operator key: 401, and no file.
    let wrong = work.path().join("wrong.backup");
    let url = origin_a.base.as_str();
    let out = selvage(
        &["admin", "backup", "--origin", url, "--out", wrong.to_str().unwrap()],
        &[("SELVAGE_OPERATOR_KEY", "not-the-operator-key-at-all")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("401") && stderr.contains("wrong operator key"), "{stderr}");
    assert!(!wrong.exists() && !work.path().join("wrong.backup.partial").exists(), "no file for a refused backup");
    let (s, v) = a.call(Method::GET, "/v1/admin/backup", "not-the-operator-key-at-all", None).await;
    assert_eq!((s, &v["error"]["code"]), (StatusCode::UNAUTHORIZED, &json!("unauthorized")), "{v}");

    // A cut file is refused, and leaves nothing behind; so is a directory in use.
    let bytes = std::fs::read(&file_path).unwrap();
    let cut = work.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let cut_dir = work.path().join("from-cut");
    let out =
        selvage(&["admin", "restore", "--file", cut.to_str().unwrap(), "--data-dir", cut_dir.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("truncated"), "{stderr}");
    assert!(!cut_dir.exists(), "a refused restore leaves no data directory");
    let out = selvage(
        &["admin", "restore", "--file", file_path.to_str().unwrap(), "--data-dir", dir_a.path().to_str().unwrap()],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"), "{out:?}");

    // Restored into a fresh directory, a second origin serves it.
    let dir_b = work.path().join("restored");
    let restored = json_of(&selvage(
        &["admin", "restore", "--file", file_path.to_str().unwrap(), "--data-dir", dir_b.to_str().unwrap()],
        &[],
    ));
    assert_eq!(
        (restored["version"].clone(), restored["records"].clone()),
        (backup["version"].clone(), backup["records"].clone())
    );
    let origin_b = OriginProcess::spawn_with(&dir_b, &env);
    let b = Api { http: reqwest::Client::new(), base: origin_b.base.clone() };

    // Every channel's history, page by page: the restored one is the original up to the
    // backup's snapshot — every message acknowledged before it, none missing in between.
    let member = |c: &str| if c == group { bob.clone() } else { alice.clone() };
    for channel in &channels {
        let token = member(channel);
        let pages_a = a.history_pages(&token, channel, 25).await;
        let pages_b = b.history_pages(&token, channel, 25).await;
        let seqs_b: Vec<u64> = pages_b.iter().flatten().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs_b, (1..=seqs_b.len() as u64).collect::<Vec<_>>(), "{channel}: a prefix with no gap");
        let last_b = seqs_b.last().copied().unwrap_or(0);
        if let Some(&acked_before) = before.get(channel) {
            assert!(last_b >= acked_before, "{channel}: seq {acked_before} was acknowledged before the backup");
        }
        assert!(pages_b.len() <= pages_a.len(), "{channel}");
        let total_a = pages_a.iter().map(Vec::len).sum::<usize>();
        eprintln!(
            "{channel}: {} messages restored of {total_a}, {:?} acknowledged before the backup",
            seqs_b.len(),
            before.get(channel)
        );
        for (i, page_b) in pages_b.iter().enumerate() {
            let page_a = &pages_a[i];
            if i + 1 < pages_b.len() {
                assert_eq!(page_b, page_a, "{channel}: page {i}");
            } else {
                assert_eq!(page_b.as_slice(), &page_a[..page_b.len()], "{channel}: last page {i}");
            }
        }
        let info = |v: Value| v["channel"].clone();
        let (info_a, info_b) = (
            info(a.get(&format!("/v1/channels/{channel}"), &token).await),
            info(b.get(&format!("/v1/channels/{channel}"), &token).await),
        );
        assert_eq!(info_a["name"], info_b["name"], "{channel}");
        assert_eq!(info_a["kind"], info_b["kind"], "{channel}");
        let members = format!("/v1/channels/{channel}/members");
        assert_eq!(a.get(&members, &token).await, b.get(&members, &token).await, "{channel}: members");
    }
    let quiet = [&secret, &dm];
    for channel in quiet {
        let path = format!("/v1/channels/{channel}");
        assert_eq!(a.get(&path, &alice).await, b.get(&path, &alice).await, "{channel} untouched since the backup");
    }
    let thread = format!("/v1/channels/{eng}/messages/3/thread?limit=100");
    let replies = b.get(&thread, &alice).await;
    assert_eq!(replies["messages"].as_array().unwrap().len(), 12);
    assert_eq!(a.get(&thread, &alice).await, replies, "the thread");
    let file_of = |v: Value| v["file"].clone();
    let path = format!("/v1/files/{file}");
    assert_eq!(file_of(a.get(&path, &bob).await), file_of(b.get(&path, &bob).await), "the file's record");

    // The feed: a cursor from before the backup reads on; one the first origin gave after it
    // follows events the restore discarded, and is told to resync.
    let cursor_after = a.get("/v1/events", &alice).await["cursor"].as_str().unwrap().to_string();
    let read_on = b.get(&format!("/v1/events?cursor={cursor_before}&wait_ms=0"), &alice).await;
    assert!(read_on["resync"].is_null() && !read_on["events"].as_array().unwrap().is_empty(), "{read_on}");
    let resync = b.get(&format!("/v1/events?cursor={cursor_after}&wait_ms=0"), &alice).await;
    assert!(resync["resync"].is_string(), "a cursor from past the backup resyncs: {resync}");

    // The restored origin goes on from there: the next send takes the next seq.
    let head = b.history_pages(&alice, &general, 1000).await.iter().flatten().count() as u64;
    assert_eq!(b.send(&alice, &general, "after-restore", None).await, head + 1);
    drop(origin_b);
    drop(origin_a);
    s3.shutdown().await;
}

/// `admin backup` never writes over a file, and says so before it asks the origin for anything.
#[test]
fn backup_refuses_to_overwrite_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("taken.backup");
    std::fs::write(&existing, b"keep me").unwrap();
    let out = selvage(
        &["admin", "backup", "--origin", "http://127.0.0.1:9", "--out", existing.to_str().unwrap()],
        &[("SELVAGE_OPERATOR_KEY", OPERATOR_KEY)],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"), "{out:?}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
}
