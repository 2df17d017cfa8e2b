//! Email digests end to end: a real origin on port 0 over the embedded store sends through a
//! real SMTP server, Python's aiosmtpd, started by the test (`support/smtp_sink.py`), which
//! parses every mail it accepts with Python's email package. The test needs a Python with
//! aiosmtpd: `SELVAGE_TEST_SMTP_PYTHON`, else `python3`; without one it is skipped, saying so.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use reqwest::{Method, StatusCode};
use selvage_shared::{Presence, WorkspaceId};
use serde_json::{json, Value};
use support::TestOrigin;
use tokio::io::AsyncBufReadExt;

/// How long a mention stays unread before it is emailed, in these tests.
const AFTER_MS: u64 = 700;

/// The Python that has aiosmtpd, if any.
fn python() -> Option<String> {
    let candidates: Vec<String> = match std::env::var("SELVAGE_TEST_SMTP_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".into()],
    };
    candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A running aiosmtpd and the directory it writes mails to.
struct Sink {
    port: u16,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl Sink {
    async fn start(python: &str, tempfails: u32) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = tokio::process::Command::new(python)
            .arg(&script)
            .arg(dir.path())
            .arg(tempfails.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
        Sink { port: line.trim().parse().unwrap(), dir, _child: child }
    }

    /// Every mail accepted so far, in order.
    fn mails(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json") && !p.file_name().unwrap().to_string_lossy().starts_with('.')
            })
            .collect();
        files.sort();
        files.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
    }

    fn tempfails(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("tempfails")).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Waits until `n` mails have arrived (at most 15 s), then a little longer to see that no
    /// more do; answers them all.
    async fn wait(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.mails().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tokio::time::sleep(Duration::from_millis(AFTER_MS + 500)).await;
        self.mails()
    }
}

struct World {
    o: TestOrigin,
    workspace: WorkspaceId,
    admin: String,
    general: String,
}

impl World {
    async fn start(sink: &Sink) -> World {
        let port = sink.port;
        let o = TestOrigin::start_with(|c| {
            c.notify.delay_ms = 200;
            c.notify.tick_ms = 50;
            c.notify.retry_min_ms = 100;
            c.notify.smtp_url = format!("smtp://127.0.0.1:{port}");
            c.notify.email_after_ms = AFTER_MS;
            c.notify.email_from = "Selvage <notify@chat.example.com>".into();
            c.notify.public_url = "https://chat.example.com".into();
        })
        .await;
        let (admin, general) = o.workspace("acme").await;
        let (_, me) = o.get("/v1/me", &admin).await;
        let workspace = WorkspaceId::parse(me["workspace"].as_str().unwrap()).unwrap();
        World { o, workspace, admin, general }
    }

    /// A user who is away, with `prefs` (answers id and token).
    async fn user(&self, handle: &str, prefs: Value) -> (String, String) {
        let (id, token) = self.o.user(&self.admin, handle).await;
        let (s, v) = self.o.call(Method::PUT, "/v1/notifications/prefs", &token, Some(prefs)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        self.presence(&id, Presence::Away);
        (id, token)
    }

    async fn send(&self, token: &str, channel: &str, text: &str) -> u64 {
        self.o.send_text(token, channel, text).await
    }

    async fn dm(&self, token: &str, with: &str) -> String {
        self.o.open_dm(token, with).await
    }

    fn presence(&self, user: &str, presence: Presence) {
        self.o.set_presence(&self.workspace, user, presence)
    }

    async fn digests(&self, outcome: &str) -> f64 {
        self.o.metric(&format!("selvage_notify_digests_total{{outcome=\"{outcome}\"}}")).await
    }
}

/// The mails sent to `address`.
fn to(mails: &[Value], address: &str) -> Vec<Value> {
    mails.iter().filter(|m| m["rcpt_tos"].as_array().unwrap().iter().any(|a| a == address)).cloned().collect()
}

macro_rules! need_python {
    () => {
        match python() {
            Some(p) => p,
            None => {
                eprintln!(
                    "SKIPPED: no Python with aiosmtpd (set SELVAGE_TEST_SMTP_PYTHON, or pip install aiosmtpd); \
                     .ci/run installs one"
                );
                return;
            }
        }
    };
}

#[tokio::test]
async fn unread_mentions_and_dms_arrive_in_one_digest_each_message_once() {
    let python = need_python!();
    let sink = Sink::start(&python, 0).await;
    let w = World::start(&sink).await;
    let (bob, bob_token) =
        w.user("bob", json!({ "email_address": "bob@example.com", "timezone": "Europe/Berlin" })).await;
    let (carol, _) = w.user("carol", json!({ "email_address": "carol@example.com", "email": false })).await;
    let (dave, dave_token) = w.user("dave", json!({})).await;
    for bad in ["dave", "dave@localhost", "dave@example.com\nBcc: x@y.co", "<dave@example.com>", "a@b@example.com"] {
        let prefs = json!({ "email_address": bad });
        let (s, v) = w.o.call(Method::PUT, "/v1/notifications/prefs", &dave_token, Some(prefs)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad:?} refused: {v}");
    }
    let random = w.o.channel(&w.admin, "random", false).await;
    for u in [&bob, &carol, &dave] {
        for c in [&w.general, &random] {
            let (s, v) = w.o.post(&format!("/v1/channels/{c}/members"), &w.admin, json!({ "user": u })).await;
            assert!(s.is_success() || s == StatusCode::CONFLICT, "{s} {v}");
        }
    }

    // Read in time: not emailed. Not a mention: not emailed. The rest: one digest.
    let read = w.send(&w.admin, &w.general, &format!("<@{bob}> read-in-time-7f3a")).await;
    w.send(&w.admin, &w.general, "nobody-in-particular-2c1d").await;
    w.send(&w.admin, &random, &format!("<@{bob}> <@{carol}> <@{dave}> unread-mention-9b2e <b>&</b>")).await;
    let dm = w.dm(&w.admin, &bob).await;
    w.send(&w.admin, &dm, "first-dm-41aa").await;
    w.send(&w.admin, &dm, "second-dm-5c7e").await;
    let (s, v) =
        w.o.call(Method::PUT, &format!("/v1/channels/{}/read", w.general), &bob_token, Some(json!({ "seq": read })))
            .await;
    assert!(s.is_success(), "{s} {v}");

    let mails = sink.wait(1).await;
    assert_eq!(mails.len(), 1, "one digest for bob, none for carol (email off) or dave (no address): {mails:?}");
    let m = &mails[0];
    assert_eq!(m["rcpt_tos"], json!(["bob@example.com"]));
    assert_eq!(m["mail_from"], "notify@chat.example.com");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["headers"]["subject"], "3 unread messages in 2 conversations");
    let text = m["text"].as_str().unwrap();
    let html = m["html"].as_str().unwrap();
    for part in
        ["unread-mention-9b2e <b>&</b>", "first-dm-41aa", "second-dm-5c7e", "#random", "Direct messages with admin"]
    {
        assert!(text.contains(part), "{part} in the text: {text}");
    }
    assert!(html.contains("unread-mention-9b2e &lt;b&gt;&amp;&lt;/b&gt;"), "escaped in the HTML: {html}");
    for absent in ["read-in-time-7f3a", "nobody-in-particular-2c1d"] {
        assert!(!text.contains(absent) && !html.contains(absent), "{absent} must not be in the digest: {text}");
    }
    let unsubscribe = m["headers"]["list-unsubscribe"].as_str().unwrap();
    assert!(unsubscribe.starts_with("<https://chat.example.com/v1/notifications/unsubscribe?token="), "{unsubscribe}");
    assert_eq!(m["headers"]["list-unsubscribe-post"], "List-Unsubscribe=One-Click");
    assert!(text.contains(unsubscribe.trim_matches(['<', '>'])), "the link is in the body too");
    assert!(m["headers"]["message-id"].as_str().unwrap().ends_with("@chat.example.com>"));
    assert_eq!(w.digests("sent").await, 1.0);

    // A later mention is in the next digest, alone: nothing of the first is sent again.
    w.send(&w.admin, &random, &format!("<@{bob}> later-mention-0d9c")).await;
    let mails = sink.wait(2).await;
    assert_eq!(mails.len(), 2, "{mails:?}");
    let later = &mails[1];
    assert_eq!(later["headers"]["subject"], "admin mentioned you in #random");
    let later_text = later["text"].as_str().unwrap();
    assert!(later_text.contains("later-mention-0d9c"), "{later_text}");
    assert!(!later_text.contains("first-dm-41aa") && !later_text.contains("unread-mention-9b2e"), "{later_text}");
    assert_ne!(later["headers"]["message-id"], m["headers"]["message-id"]);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for mail in &mails {
        for marker in ["unread-mention-9b2e", "first-dm-41aa", "second-dm-5c7e", "later-mention-0d9c"] {
            if mail["text"].as_str().unwrap().contains(marker) {
                *seen.entry(marker).or_default() += 1;
            }
        }
    }
    assert!(seen.values().all(|&n| n == 1) && seen.len() == 4, "each message in exactly one digest: {seen:?}");
    w.o.stop().await;
}

#[tokio::test]
async fn the_unsubscribe_link_turns_email_off_and_only_for_its_user() {
    let python = need_python!();
    let sink = Sink::start(&python, 0).await;
    let w = World::start(&sink).await;
    let (bob, bob_token) = w.user("bob", json!({ "email_address": "bob@example.com" })).await;
    w.send(&w.admin, &w.general, &format!("<@{bob}> first-3e1f")).await;
    let mails = sink.wait(1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    let link = mails[0]["headers"]["list-unsubscribe"].as_str().unwrap().trim_matches(['<', '>']).to_string();
    let path = link.strip_prefix("https://chat.example.com").unwrap();
    let http = reqwest::Client::new();

    // The page changes nothing (mail scanners open links); its form posts back.
    let page = http.get(w.o.api.url(path)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let body = page.text().await.unwrap();
    assert!(body.contains("@bob") && body.contains("<form method=\"post\">"), "{body}");
    let (_, prefs) = w.o.get("/v1/notifications/prefs", &bob_token).await;
    assert!(prefs.get("email").is_none(), "still on after the GET: {prefs}");

    // A forged token (another user's id on bob's signature, or garbage) is refused, changes nothing.
    let (admin_id, _) = {
        let (_, me) = w.o.get("/v1/me", &w.admin).await;
        (me["user"]["id"].as_str().unwrap().to_string(), ())
    };
    let forged = path.replacen(&bob, &admin_id, 1);
    for bad in [forged.as_str(), "/v1/notifications/unsubscribe?token=nonsense", "/v1/notifications/unsubscribe"] {
        let r = http.post(w.o.api.url(bad)).send().await.unwrap();
        assert!(matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST), "{bad}: {}", r.status());
    }

    // One click (RFC 8058's POST) turns it off.
    let r = http
        .post(w.o.api.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, prefs) = w.o.get("/v1/notifications/prefs", &bob_token).await;
    assert_eq!(prefs["email"], false, "{prefs}");
    assert_eq!(prefs["email_address"], "bob@example.com", "the address is kept: {prefs}");
    let (_, admin_prefs) = w.o.get("/v1/notifications/prefs", &w.admin).await;
    assert!(admin_prefs.get("email").is_none(), "nobody else's changed: {admin_prefs}");

    w.send(&w.admin, &w.general, &format!("<@{bob}> after-unsubscribe-6a2b")).await;
    tokio::time::sleep(Duration::from_millis(AFTER_MS * 3)).await;
    assert_eq!(sink.mails().len(), 1, "no mail after unsubscribing");
    w.o.stop().await;
}

#[tokio::test]
async fn a_user_in_active_use_or_dnd_gets_the_digest_only_once_away_and_a_temporary_failure_is_retried() {
    let python = need_python!();
    // The SMTP server answers 451 to the first mail: it is sent again, once.
    let sink = Sink::start(&python, 1).await;
    let w = World::start(&sink).await;
    let (bob, _) = w.user("bob", json!({ "email_address": "bob@example.com" })).await;
    let dnd_ends = selvage_origin::now_ms() + 4_000;
    let (erin, _) = w.user("erin", json!({ "email_address": "erin@example.com", "dnd_until": dnd_ends })).await;
    w.presence(&bob, Presence::Active);
    w.send(&w.admin, &w.general, &format!("<@{bob}> <@{erin}> while-active-8c4d")).await;
    tokio::time::sleep(Duration::from_millis(AFTER_MS * 3)).await;
    assert!(selvage_origin::now_ms() < dnd_ends, "the machine was too slow to check do-not-disturb");
    assert!(sink.mails().is_empty(), "bob is looking, erin is in do-not-disturb: {:?}", sink.mails());
    assert_eq!(sink.tempfails(), 0);

    // bob goes away and erin's do-not-disturb ends: each digest is sent, once, one of them after
    // a 451.
    w.presence(&bob, Presence::Away);
    let mails = sink.wait(2).await;
    assert_eq!(to(&mails, "bob@example.com").len(), 1, "{mails:?}");
    assert_eq!(to(&mails, "erin@example.com").len(), 1, "{mails:?}");
    assert!(selvage_origin::now_ms() >= dnd_ends);
    assert_eq!(sink.tempfails(), 1, "the first try was refused for now");
    assert!(w.o.metric("selvage_notify_deliveries_total{result=\"retry\",target=\"email\"}").await >= 1.0);
    assert_eq!(w.digests("sent").await, 2.0);
    w.o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_origin() {
    support::child_origin().await
}

/// The origin killed with SIGKILL while digests are being collected, claimed and sent: after a
/// restart every user gets their DM by email, and no message is in two different digests. (The
/// one repeat the design allows — the SMTP server accepted a mail and the origin died before
/// recording that — carries the same `Message-ID`; it is counted and printed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_way_every_digest_is_sent_after_the_restart() {
    let python = need_python!();
    let sink = Sink::start(&python, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = support::config(dir.path());
    c.consumers.lease_ms = 1_000;
    c.consumers.batch_size = 4;
    c.notify.delay_ms = 300;
    c.notify.tick_ms = 50;
    c.notify.claim_ms = 1_000;
    c.notify.smtp_url = format!("smtp://127.0.0.1:{}", sink.port);
    c.notify.email_after_ms = 800;
    let child = support::Child::spawn(&c).await;
    let api = child.api.clone();
    let (admin, _) = api.workspace("acme").await;
    let users = 24;
    let mut dms = Vec::new();
    for i in 0..users {
        let (id, token) = api.user(&admin, &format!("u{i}")).await;
        let prefs = json!({ "email_address": format!("u{i}@example.com") });
        let (s, v) = api.call(Method::PUT, "/v1/notifications/prefs", &token, Some(prefs)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = api.post("/v1/dms", &admin, json!({ "users": [id] })).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        dms.push(v["channel"]["id"].as_str().unwrap().to_string());
    }
    // One DM every 60 ms: by the kill some are mailed, some due, some not yet decided.
    for (i, dm) in dms.iter().enumerate() {
        let body = json!({ "text": format!("note-{i}-end"), "client_msg_id": format!("k{i}") });
        let (s, v) = api.post(&format!("/v1/channels/{dm}/messages"), &admin, body).await;
        assert!(s.is_success(), "{s} {v}");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let before = sink.mails().len();
    child.kill().await;
    println!("killed after {before} of {users} digests were received");

    let child = support::Child::spawn(&c).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (0..users).any(|i| to(&sink.mails(), &format!("u{i}@example.com")).is_empty()) {
        assert!(tokio::time::Instant::now() < deadline, "not every digest arrived after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let mails = sink.mails();
    let mut repeated = 0;
    for i in 0..users {
        let got = to(&mails, &format!("u{i}@example.com"));
        let ids: std::collections::BTreeSet<&str> =
            got.iter().map(|m| m["headers"]["message-id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 1, "u{i} got different digests: {got:?}");
        assert!(got[0]["text"].as_str().unwrap().contains(&format!("note-{i}-end")), "{got:?}");
        repeated += got.len() - 1;
    }
    println!("{repeated} digest(s) repeated with the same Message-ID (accepted just before the kill)");
    assert!(repeated <= 16, "at most those in flight at the kill can repeat");
    child.kill().await;
}
