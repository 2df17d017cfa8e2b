//! Event webhooks end to end: a real origin on port 0 and a real HTTP receiver in the test that
//! checks every request's Standard Webhooks signature with its own HMAC implementation (the
//! `hmac` and `sha2` crates, not the origin's `ring`), and answers as each test tells it to.

mod support;

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post, Router};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use selvage_origin::{
    store::{keys, RangeRead},
    transact,
};
use serde_json::{json, Value};
use sha2::Sha256;
use support::{Api, TestOrigin};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    id: String,
    timestamp: String,
    signatures: Vec<String>,
    body: Vec<u8>,
    answered: u16,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> String {
        self.json()["data"]["event"]["text"].as_str().unwrap_or_default().to_string()
    }

    /// Whether one of its signatures is that of `secret` (`whsec_…`).
    fn signed_by(&self, secret: &str) -> bool {
        let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.", self.id, self.timestamp).as_bytes());
        mac.update(&self.body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        self.signatures.contains(&expected)
    }
}

/// A receiver: records every request and answers `fail_first` of them `500`, the rest `200`
/// (while `failing`, all of them `500`), after `stall_ms`.
#[derive(Clone, Default)]
struct Receiver {
    inner: Arc<Mutex<(Vec<Got>, usize, bool)>>,
    stall_ms: Arc<AtomicU64>,
}

impl Receiver {
    async fn start(fail_first: usize) -> (Receiver, String) {
        let receiver = Receiver::default();
        receiver.inner.lock().unwrap().1 = fail_first;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Router::new().route("/hook", post(receive)).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    fn got(&self) -> Vec<Got> {
        self.inner.lock().unwrap().0.clone()
    }

    fn delivered(&self) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.answered == 200).collect()
    }

    fn set_failing(&self, failing: bool) {
        self.inner.lock().unwrap().2 = failing;
    }

    /// Waits until `n` requests were answered `200` (at most 20 s); answers them.
    async fn wait_delivered(&self, n: usize) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.delivered().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "only {} of {n} delivered", self.delivered().len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.delivered()
    }
}

/// Waits until the delivery log at `path` lists `n` deliveries, all `delivered` (at most
/// 20 s). A receiver has a request before the dispatcher writes its result to the log.
async fn wait_logged(api: &Api, admin: &str, path: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = api.get(&format!("{path}?limit=100"), admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let log = v["deliveries"].as_array().unwrap();
        if log.len() >= n && log.iter().all(|d| d["status"] == "delivered") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the log has {log:?}, waiting for {n} delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let answered = {
        let mut inner = r.inner.lock().unwrap();
        let answered = if inner.2 || inner.1 > 0 {
            inner.1 = inner.1.saturating_sub(1);
            500
        } else {
            200
        };
        inner.0.push(Got {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signatures: header("webhook-signature").split(' ').map(String::from).collect(),
            body: body.to_vec(),
            answered,
        });
        answered
    };
    tokio::time::sleep(Duration::from_millis(r.stall_ms.load(Ordering::Relaxed))).await;
    StatusCode::from_u16(answered).unwrap()
}

/// The test's app settings: webhooks may reach 127.0.0.1 only, fast ticks and retries.
fn tweak(c: &mut selvage_origin::OriginConfig) {
    c.apps.allow_networks = vec!["127.0.0.1/32".into()];
    c.apps.tick_ms = 20;
    c.apps.webhook_retry_min_ms = 50;
    c.apps.webhook_retry_max_ms = 200;
}

/// An app with `events`, its bot in `channel`, and an endpoint at `url` for `events`; answers
/// (app id, webhook id, secret).
async fn app_with_hook(api: &Api, admin: &str, channel: &str, url: &str, events: Value) -> (String, String, String) {
    let (s, v) =
        api.post("/v1/apps", admin, json!({ "name": "Listener", "handle": "listener", "scopes": ["events"] })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let app = v["app"]["id"].as_str().unwrap().to_string();
    let bot = v["bot_user"]["id"].as_str().unwrap().to_string();
    let (s, v) = api.post(&format!("/v1/channels/{channel}/members"), admin, json!({ "user": bot })).await;
    assert!(s.is_success(), "{v}");
    let (s, v) = api.post(&format!("/v1/apps/{app}/webhooks"), admin, json!({ "url": url, "events": events })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{v}");
    (app, v["webhook"]["id"].as_str().unwrap().to_string(), secret)
}

#[tokio::test]
async fn events_arrive_signed_in_feed_order_through_failures_each_with_one_id() {
    let o = TestOrigin::start_with(tweak).await;
    let (admin, general) = o.workspace("acme").await;
    let ops = o.channel(&admin, "ops", false).await;
    let secret_channel = o.channel(&admin, "secret", true).await;
    let (receiver, url) = Receiver::start(3).await;
    let (app, hook, secret) = app_with_hook(&o, &admin, &ops, &url, json!(["message"])).await;

    let head = o.get("/v1/events", &admin).await.1["cursor"].as_str().unwrap().to_string();
    for i in 0..5 {
        o.send_text(&admin, &ops, &format!("ops {i}")).await;
        // Channels its bot is not in: never sent.
        o.send_text(&admin, &secret_channel, &format!("secret {i}")).await;
        o.send_text(&admin, &general, &format!("general {i}")).await;
    }
    let delivered = receiver.wait_delivered(5).await;
    let texts: Vec<String> = delivered.iter().map(Got::text).collect();
    assert_eq!(texts, ["ops 0", "ops 1", "ops 2", "ops 3", "ops 4"], "in feed order");
    let all = receiver.got();
    assert_eq!(
        all.len(),
        8,
        "three failures, then each once: {:?}",
        all.iter().map(|g| g.answered).collect::<Vec<_>>()
    );
    // The three failures were tries of the first event, with its id.
    assert!(all[..3].iter().all(|g| g.answered == 500 && g.id == delivered[0].id), "{all:?}");
    let ids: BTreeSet<&str> = delivered.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids.len(), 5, "one id per event");
    for g in &all {
        assert!(g.signed_by(&secret), "a valid signature on {}", g.id);
        let body = g.json();
        assert_eq!(body["type"], "message");
        assert_eq!(body["data"]["app"], app.as_str());
        assert_eq!(format!("evt_{}", body["data"]["cursor"].as_str().unwrap()), g.id);
    }

    // The log, newest first.
    wait_logged(&o, &admin, &format!("/v1/apps/{app}/webhooks/{hook}/deliveries"), 5).await;
    let (s, v) = o.get(&format!("/v1/apps/{app}/webhooks/{hook}/deliveries?limit=3"), &admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let log = v["deliveries"].as_array().unwrap();
    assert_eq!(log.len(), 3, "{v}");
    assert!(log.iter().all(|d| d["status"] == "delivered" && d["response_status"] == 200), "{v}");
    assert_eq!(log[0]["id"], delivered[4].id.as_str());
    let (_, v) = o
        .get(&format!("/v1/apps/{app}/webhooks/{hook}/deliveries?before={}", v["next"].as_str().unwrap()), &admin)
        .await;
    let older: Vec<&Value> = v["deliveries"].as_array().unwrap().iter().collect();
    assert_eq!(older.len(), 2, "{v}");
    assert_eq!(older[1]["attempts"], 4, "the first took four tries: {v}");

    // A rotated secret: both sign for a while, so a receiver can switch without a gap.
    let (s, v) = o.post(&format!("/v1/apps/{app}/webhooks/{hook}/rotate"), &admin, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rotated = v["secret"].as_str().unwrap().to_string();
    o.send_text(&admin, &ops, "after the rotation").await;
    let delivered = receiver.wait_delivered(6).await;
    assert!(delivered[5].signed_by(&secret) && delivered[5].signed_by(&rotated), "{:?}", delivered[5]);

    // Replay from a cursor: the same events again, with the same ids.
    let (s, v) = o.post(&format!("/v1/apps/{app}/webhooks/{hook}/replay"), &admin, json!({ "cursor": head })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["queued"], 6, "{v}");
    let again = receiver.wait_delivered(12).await;
    let first: Vec<&str> = again[..6].iter().map(|g| g.id.as_str()).collect();
    let replayed: Vec<&str> = again[6..].iter().map(|g| g.id.as_str()).collect();
    assert_eq!(first, replayed);
    o.stop().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_disabled_with_its_reason_and_resumes_when_enabled() {
    let o = TestOrigin::start_with(|c| {
        tweak(c);
        c.apps.webhook_disable_after_secs = 1;
    })
    .await;
    let (admin, general) = o.workspace("acme").await;
    let (receiver, url) = Receiver::start(0).await;
    receiver.set_failing(true);
    let (app, hook, _) = app_with_hook(&o, &admin, &general, &url, json!(["*"])).await;
    o.send_text(&admin, &general, "first").await;
    o.send_text(&admin, &general, "second").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let (_, v) = o.get(&format!("/v1/apps/{app}/webhooks/{hook}"), &admin).await;
        if v["enabled"] == false {
            break v["disabled_reason"].as_str().unwrap().to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "never disabled: {v}, {} tries", receiver.got().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("500"), "says what failed: {reason}");
    let tries = receiver.got().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.got().len(), tries, "no more tries once disabled");
    assert!(receiver.got().iter().all(|g| g.text() == "first"), "the second waited behind the first");

    receiver.set_failing(false);
    let (s, v) = o
        .call(Method::PATCH, &format!("/v1/apps/{app}/webhooks/{hook}"), &admin, Some(json!({ "enabled": true })))
        .await;
    assert_eq!((s, &v["enabled"]), (StatusCode::OK, &json!(true)), "{v}");
    let delivered = receiver.wait_delivered(2).await;
    let texts: Vec<String> = delivered.iter().map(Got::text).collect();
    assert_eq!(texts, ["first", "second"], "kept while disabled, in order");
    o.stop().await;
}

#[tokio::test]
async fn endpoints_on_internal_addresses_are_refused_unless_allowed_and_only_admins_manage_them() {
    let o = TestOrigin::start().await;
    let (admin, _) = o.workspace("acme").await;
    let (s, v) = o.post("/v1/apps", &admin, json!({ "name": "L", "handle": "l", "scopes": ["events"] })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let app = v["app"]["id"].as_str().unwrap().to_string();
    for url in [
        "https://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:9/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://10.0.0.8/hook",
        "https://localhost/hook",
        "http://hooks.example.com/plain-http",
        "ftp://hooks.example.com/",
    ] {
        let (s, v) =
            o.post(&format!("/v1/apps/{app}/webhooks"), &admin, json!({ "url": url, "events": ["message"] })).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {v}");
    }
    let (s, v) = o
        .post(
            &format!("/v1/apps/{app}/webhooks"),
            &admin,
            json!({ "url": "https://hooks.example.com/x", "events": ["nope"] }),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = o
        .post(
            &format!("/v1/apps/{app}/webhooks"),
            &admin,
            json!({ "url": "https://hooks.example.com/x", "events": ["message"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "a public URL: {v}");
    let hook = v["webhook"]["id"].as_str().unwrap().to_string();
    let (_, alice) = o.user(&admin, "alice").await;
    assert_eq!(o.get(&format!("/v1/apps/{app}/webhooks"), &alice).await.0, StatusCode::FORBIDDEN);
    let (other, _) = o.workspace("globex").await;
    assert_eq!(o.get(&format!("/v1/apps/{app}/webhooks/{hook}"), &other).await.0, StatusCode::NOT_FOUND);
    // An app without `events` gets no webhook.
    let (_, v) = o.post("/v1/apps", &admin, json!({ "name": "P", "handle": "p", "scopes": ["chat:write"] })).await;
    let poster = v["app"]["id"].as_str().unwrap().to_string();
    let (s, v) = o
        .post(
            &format!("/v1/apps/{poster}/webhooks"),
            &admin,
            json!({ "url": "https://hooks.example.com/x", "events": ["*"] }),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = o.call(Method::DELETE, &format!("/v1/apps/{app}/webhooks/{hook}"), &admin, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(o.get(&format!("/v1/apps/{app}/webhooks/{hook}"), &admin).await.0, StatusCode::NOT_FOUND);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_origin() {
    support::child_origin().await
}

/// The origin killed with SIGKILL while events are being queued and delivered: after a restart
/// every event arrives, in order; one in flight at the kill may arrive twice, with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_delivery_every_event_arrives_after_the_restart() {
    let (receiver, url) = Receiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = support::config(dir.path());
    tweak(&mut c);
    c.consumers.lease_ms = 1_000;
    c.consumers.batch_size = 4;
    // A lease on an endpoint outlives a dead node by at most a timeout per event sent.
    c.apps.webhook_timeout_ms = 100;
    let child = support::Child::spawn(&c).await;
    let api = child.api.clone();
    let (admin, general) = api.workspace("acme").await;
    app_with_hook(&api, &admin, &general, &url, json!(["message"])).await;
    let total = 40;
    for i in 0..total {
        api.send_text(&admin, &general, &format!("event {i}")).await;
        if i == total / 2 {
            child.kill().await;
            break;
        }
    }
    let sent_before = total / 2 + 1;
    let child = support::Child::spawn(&c).await;
    for i in sent_before..total {
        child.api.send_text(&admin, &general, &format!("event {i}")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let texts: BTreeSet<String> = receiver.delivered().iter().map(Got::text).collect();
        if texts.len() == total {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {total} events arrived", texts.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = receiver.delivered();
    let mut firsts: Vec<String> = Vec::new();
    for g in &delivered {
        if !firsts.contains(&g.text()) {
            firsts.push(g.text());
        }
    }
    let expected: Vec<String> = (0..total).map(|i| format!("event {i}")).collect();
    assert_eq!(firsts, expected, "every event, first arrivals in feed order");
    let repeated = delivered.len() - total;
    println!("{repeated} event(s) repeated with the same id (delivered just before the kill)");
    assert!(repeated <= 64, "only a batch in flight at the kill can repeat");
    child.kill().await;
}

#[tokio::test]
async fn an_apps_delivery_log_merges_its_endpoints_newest_first_page_by_whole_events() {
    let o = TestOrigin::start_with(tweak).await;
    let (admin, general) = o.workspace("acme").await;
    let (first, url) = Receiver::start(0).await;
    let (app, hook, _) = app_with_hook(&o, &admin, &general, &url, json!(["message"])).await;
    let (second, url) = Receiver::start(0).await;
    let (s, v) = o.post(&format!("/v1/apps/{app}/webhooks"), &admin, json!({ "url": url, "events": ["*"] })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let other = v["webhook"]["id"].as_str().unwrap().to_string();
    for i in 0..3 {
        o.send_text(&admin, &general, &format!("m{i}")).await;
    }
    first.wait_delivered(3).await;
    second.wait_delivered(3).await;

    let path = format!("/v1/apps/{app}/deliveries");
    wait_logged(&o, &admin, &path, 6).await;
    let (s, v) = o.get(&format!("{path}?limit=3"), &admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let page = v["deliveries"].as_array().unwrap();
    // The page ends after the whole second-newest event: its entry on each endpoint.
    assert_eq!(page.len(), 4, "{v}");
    assert_eq!(page[0]["cursor"], page[1]["cursor"]);
    assert_eq!(page[2]["cursor"], page[3]["cursor"]);
    assert!(page[0]["cursor"].as_str() > page[2]["cursor"].as_str(), "newest first: {v}");
    let mut hooks: Vec<&str> = page[..2].iter().map(|d| d["webhook"].as_str().unwrap()).collect();
    hooks.sort();
    let mut want = vec![hook.as_str(), other.as_str()];
    want.sort();
    assert_eq!(hooks, want, "{v}");
    assert!(page.iter().all(|d| d["status"] == "delivered"), "{v}");
    let (_, v) = o.get(&format!("{path}?limit=3&before={}", v["next"].as_str().unwrap()), &admin).await;
    assert_eq!(v["deliveries"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["next"], Value::Null, "{v}");

    // Admins of this workspace only.
    let (other_admin, _) = o.workspace("globex").await;
    assert_eq!(o.get(&path, &other_admin).await.0, StatusCode::NOT_FOUND);
    let (_, alice) = o.user(&admin, "alice").await;
    assert_eq!(o.get(&path, &alice).await.0, StatusCode::FORBIDDEN);
    assert_eq!(o.get(&format!("{path}?before=nope"), &admin).await.0, StatusCode::BAD_REQUEST);
    o.stop().await;
}

#[tokio::test]
async fn a_stopped_origin_lets_its_endpoints_go_so_the_next_delivers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = support::config(dir.path());
    tweak(&mut c);
    // The longest leases there are (4 × 60 s): an endpoint still leased by the stopped origin
    // would wait four minutes.
    c.apps.webhook_timeout_ms = 60_000;
    // Two origins over one store in one process: the search index's writer lock is the
    // process's until the first has let it go, which this test does not wait for.
    c.search.enabled = false;
    let o = support::Origin::start(c.clone()).await;
    let (admin, general) = o.workspace("acme").await;
    let (receiver, url) = Receiver::start(0).await;
    receiver.stall_ms.store(120_000, Ordering::Relaxed);
    app_with_hook(&o, &admin, &general, &url, json!(["message"])).await;
    for i in 0..3 {
        o.send_text(&admin, &general, &format!("m{i}")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.got().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the first delivery never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped while the receiver holds the first request.
    o.stop().await;
    let before = receiver.got().len();
    receiver.stall_ms.store(0, Ordering::Relaxed);

    let o = support::Origin::start(c).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let after: BTreeSet<String> = receiver.got()[before..].iter().map(Got::text).collect();
        if after.len() == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the next origin delivered {after:?} in 30 s: the endpoint is still leased"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let firsts: Vec<String> = receiver.got()[before..].iter().map(Got::text).collect();
    assert_eq!(firsts[..3], ["m0", "m1", "m2"], "in order, starting with the one in flight at the stop");
    o.stop().await;
}

/// How many entries the workspace of `admin` has in its webhook queue.
async fn queue_len(o: &TestOrigin, admin: &str) -> usize {
    let (_, me) = o.get("/v1/me", admin).await;
    let w = selvage_shared::WorkspaceId::parse(me["workspace"].as_str().unwrap()).unwrap();
    let store = o.running().origin.store.clone();
    let (rows, _) = transact!(store, |tx| { tx.get_range(&RangeRead::prefix(&keys::hook_events(&w))).await? }).unwrap();
    rows.len()
}

/// Waits until `check` holds, for at most 20 s.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not in 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The queue holds one entry per event, however many endpoints get it; it is cleared once every
/// endpoint is past it — one that asked for other event types holds nothing back.
#[tokio::test]
async fn one_queue_entry_serves_every_endpoint_and_goes_once_all_are_past_it() {
    let o = TestOrigin::start_with(tweak).await;
    let (admin, general) = o.workspace("acme").await;
    let (first, url) = Receiver::start(0).await;
    first.set_failing(true);
    let (app, _, _) = app_with_hook(&o, &admin, &general, &url, json!(["message"])).await;
    let (second, url) = Receiver::start(0).await;
    let (s, v) =
        o.post(&format!("/v1/apps/{app}/webhooks"), &admin, json!({ "url": url, "events": ["message"] })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Another app's endpoint that never gets any of these.
    let (s, v) =
        o.post("/v1/apps", &admin, json!({ "name": "Reacts", "handle": "reacts", "scopes": ["events"] })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (other_app, bot) = (v["app"]["id"].as_str().unwrap().to_string(), v["bot_user"]["id"].clone());
    let (s, v) = o.post(&format!("/v1/channels/{general}/members"), &admin, json!({ "user": bot })).await;
    assert!(s.is_success(), "{v}");
    let (third, url) = Receiver::start(0).await;
    let (s, v) = o
        .post(&format!("/v1/apps/{other_app}/webhooks"), &admin, json!({ "url": url, "events": ["reaction_added"] }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    for i in 0..5 {
        o.send_text(&admin, &general, &format!("m{i}")).await;
    }
    second.wait_delivered(5).await;
    // The first endpoint fails: the five events wait in the queue for it, once each.
    until("five entries queued", || async { queue_len(&o, &admin).await == 5 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(queue_len(&o, &admin).await, 5, "one entry per event, kept while an endpoint needs it");

    first.set_failing(false);
    let texts: Vec<String> = first.wait_delivered(5).await.iter().map(Got::text).collect();
    assert_eq!(texts, ["m0", "m1", "m2", "m3", "m4"]);
    until("the queue cleared", || async { queue_len(&o, &admin).await == 0 }).await;
    assert!(third.got().is_empty(), "{:?}", third.got());
    o.stop().await;
}

/// A disabled endpoint the queue no longer keeps events for (`webhook_keep_disabled_secs` 0):
/// enabled again, it gets everything it missed — before and while it was disabled — from the
/// feed, in order, then what follows.
#[tokio::test]
async fn enabled_after_the_queue_let_it_go_an_endpoint_gets_what_it_missed_from_the_feed() {
    let o = TestOrigin::start_with(|c| {
        tweak(c);
        c.apps.webhook_disable_after_secs = 1;
        c.apps.webhook_keep_disabled_secs = 0;
    })
    .await;
    let (admin, general) = o.workspace("acme").await;
    let (receiver, url) = Receiver::start(0).await;
    receiver.set_failing(true);
    let (app, hook, _) = app_with_hook(&o, &admin, &general, &url, json!(["message"])).await;
    o.send_text(&admin, &general, "first").await;
    o.send_text(&admin, &general, "second").await;
    until("disabled", || async {
        o.get(&format!("/v1/apps/{app}/webhooks/{hook}"), &admin).await.1["enabled"] == false
    })
    .await;
    o.send_text(&admin, &general, "while disabled").await;
    until("the queue let go", || async { queue_len(&o, &admin).await == 0 }).await;

    receiver.set_failing(false);
    let (s, v) = o
        .call(Method::PATCH, &format!("/v1/apps/{app}/webhooks/{hook}"), &admin, Some(json!({ "enabled": true })))
        .await;
    assert_eq!((s, &v["enabled"]), (StatusCode::OK, &json!(true)), "{v}");
    o.send_text(&admin, &general, "after").await;
    let texts: Vec<String> = receiver.wait_delivered(4).await.iter().map(Got::text).collect();
    assert_eq!(texts, ["first", "second", "while disabled", "after"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.delivered().len(), 4, "each once");
    o.stop().await;
}

/// Delivery log entries older than `apps.delivery_log_secs` are cleared.
#[tokio::test]
async fn the_delivery_log_keeps_its_retention() {
    let o = TestOrigin::start_with(|c| {
        tweak(c);
        c.apps.delivery_log_secs = 1;
    })
    .await;
    let (admin, general) = o.workspace("acme").await;
    let (receiver, url) = Receiver::start(0).await;
    let (app, hook, _) = app_with_hook(&o, &admin, &general, &url, json!(["message"])).await;
    for i in 0..3 {
        o.send_text(&admin, &general, &format!("m{i}")).await;
    }
    receiver.wait_delivered(3).await;
    let path = format!("/v1/apps/{app}/webhooks/{hook}/deliveries");
    let logged = o.get(&path, &admin).await.1["deliveries"].as_array().unwrap().len();
    assert!(logged > 0, "logged at first");
    until("the log cleared", || async { o.get(&path, &admin).await.1["deliveries"].as_array().unwrap().is_empty() })
        .await;
    o.stop().await;
}
