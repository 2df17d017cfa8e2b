//! The origin's HTTP API end to end: a real origin on port 0 over a real embedded store in a
//! temporary directory, driven over real sockets as a client would.

use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;
use serde_json::{json, Value};

mod support;

use support::TestOrigin;

impl TestOrigin {
    async fn send(&self, token: &str, channel: &str, text: &str, id: &str) -> (StatusCode, Value) {
        self.post(&format!("/v1/channels/{channel}/messages"), token, json!({ "text": text, "client_msg_id": id }))
            .await
    }

    /// Every message of a channel, paging forward with `after`.
    async fn history(&self, token: &str, channel: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let (s, v) = self.get(&format!("/v1/channels/{channel}/messages?after={after}&limit=1000"), token).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let page = v["messages"].as_array().unwrap().clone();
            if let Some(last) = page.last() {
                after = last["seq"].as_u64().unwrap();
            }
            out.extend(page);
            if !v["has_more"].as_bool().unwrap() {
                return out;
            }
        }
    }
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_writers_get_one_gap_free_order() {
    // Fifty writers share one token: far over a token's rate, which is not what this measures.
    let o = TestOrigin::start_with(|c| c.rate_limits.enabled = false).await;
    let (admin, general) = o.workspace("acme").await;
    let base = o.base.clone();
    let mut writers = Vec::new();
    for w in 0..50 {
        let http = o.http.clone();
        let url = format!("{base}/v1/channels/{general}/messages");
        let token = admin.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::with_capacity(200);
            for i in 0..200 {
                let body = json!({ "text": format!("w{w} m{i}"), "client_msg_id": format!("w{w}-{i}") });
                let resp = http.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
                let v: Value = resp.json().await.unwrap();
                acked.push(v["seq"].as_u64().unwrap());
            }
            acked
        }));
    }
    let mut all = HashSet::new();
    for w in writers {
        let acked = w.await.unwrap();
        assert!(acked.windows(2).all(|p| p[0] < p[1]), "a writer's acks must increase: {acked:?}");
        all.extend(acked);
    }
    assert_eq!(all.len(), 10_000, "every ack has its own seq");
    let history = o.history(&admin, &general).await;
    assert_eq!(seqs(&history), (1..=10_000).collect::<Vec<_>>(), "history is exactly 1..=10000");
    let texts: HashSet<_> = history.iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts.len(), 10_000, "no message twice");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_committers_keep_every_channel_gap_free() {
    // Four committers; eight channels spread over them; every writer posts to every channel.
    let o = TestOrigin::start_with(|c| {
        c.sequencer.shards = 4;
        c.rate_limits.enabled = false;
    })
    .await;
    let (admin, _) = o.workspace("acme").await;
    let mut channels = Vec::new();
    for i in 0..8 {
        channels.push(o.channel(&admin, &format!("room-{i}"), false).await);
    }
    let mut writers = Vec::new();
    for w in 0..16 {
        let http = o.http.clone();
        let base = o.base.clone();
        let token = admin.clone();
        let channels = channels.clone();
        writers.push(tokio::spawn(async move {
            let mut acked: Vec<Vec<u64>> = vec![Vec::new(); channels.len()];
            for i in 0..40 {
                let k = (w + i) % channels.len();
                let url = format!("{base}/v1/channels/{}/messages", channels[k]);
                let body = json!({ "text": format!("w{w} m{i}"), "client_msg_id": format!("w{w}-{i}") });
                let resp = http.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
                let v: Value = resp.json().await.unwrap();
                acked[k].push(v["seq"].as_u64().unwrap());
            }
            acked
        }));
    }
    let mut per_channel = vec![0u64; channels.len()];
    for w in writers {
        for (k, acked) in w.await.unwrap().into_iter().enumerate() {
            assert!(acked.windows(2).all(|p| p[0] < p[1]), "a writer's acks in a channel must increase: {acked:?}");
            per_channel[k] += acked.len() as u64;
        }
    }
    for (k, channel) in channels.iter().enumerate() {
        let history = o.history(&admin, channel).await;
        assert_eq!(seqs(&history), (1..=per_channel[k]).collect::<Vec<_>>(), "channel {channel} is exactly 1..=n");
    }
    assert_eq!(per_channel.iter().sum::<u64>(), 16 * 40);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_sends_make_one_message() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    // Sequential retries.
    let (s1, first) = o.send(&admin, &general, "hello", "retry-1").await;
    let (s2, second) = o.send(&admin, &general, "hello", "retry-1").await;
    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(second["duplicate"], true);
    // Concurrent retries of one id: they may land in one group commit or several.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = o.http.clone();
        let url = o.url(&format!("/v1/channels/{general}/messages"));
        let token = admin.clone();
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "text": "again", "client_msg_id": "retry-2" }))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let v: Value = resp.json().await.unwrap();
            (status, v["seq"].as_u64().unwrap())
        }));
    }
    let mut created = 0;
    let mut seen = HashSet::new();
    for t in tasks {
        let (status, seq) = t.await.unwrap();
        created += usize::from(status == StatusCode::CREATED);
        seen.insert(seq);
    }
    assert_eq!(created, 1, "exactly one of the concurrent retries creates the message");
    assert_eq!(seen.len(), 1, "all retries get the same seq");
    assert_eq!(seqs(&o.history(&admin, &general).await), vec![1, 2]);
    o.stop().await;
}

#[tokio::test]
async fn private_channels_and_dms_are_invisible_to_non_members() {
    let o = TestOrigin::start().await;
    let (alice, _) = o.workspace("acme").await;
    let (bob_id, bob) = o.user(&alice, "bob").await;
    let (carol_id, carol) = o.user(&alice, "carol").await;
    let secret = o.channel(&alice, "secret", true).await;
    let (s, _) = o.send(&alice, &secret, "for members only", "s1").await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, dm) = o.post("/v1/dms", &alice, json!({ "users": [carol_id] })).await;
    assert_eq!(s, StatusCode::OK, "{dm}");
    let dm = dm["channel"]["id"].as_str().unwrap().to_string();
    o.send(&alice, &dm, "hi carol", "d1").await;

    for c in [&secret, &dm] {
        let (s, v) = o.get(&format!("/v1/channels/{c}"), &bob).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        assert_eq!(v["error"]["code"], "not_found");
        let (s, _) = o.get(&format!("/v1/channels/{c}/messages"), &bob).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = o.send(&bob, c, "let me in", "b1").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = o.post(&format!("/v1/channels/{c}/members"), &bob, json!({})).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "bob cannot join a private channel by id");
    }
    let (_, listed) = o.get("/v1/channels", &bob).await;
    let names: Vec<_> =
        listed["channels"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
    assert!(!names.contains(&secret) && !names.contains(&dm), "{names:?}");
    // Carol sees the DM, not the private channel.
    let (s, _) = o.get(&format!("/v1/channels/{dm}/messages"), &carol).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = o.get(&format!("/v1/channels/{secret}/messages"), &carol).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Invited, bob can read and post; removed, he cannot.
    let (s, v) = o.post(&format!("/v1/channels/{secret}/members"), &alice, json!({ "user": bob_id })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(o.history(&bob, &secret).await.len(), 1);
    let (s, _) = o.send(&bob, &secret, "thanks", "b2").await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) =
        o.call(reqwest::Method::DELETE, &format!("/v1/channels/{secret}/members/{bob_id}"), &alice, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = o.send(&bob, &secret, "still here?", "b3").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(o.history(&alice, &secret).await.len(), 2, "nothing changed by the refused send");
    // A public channel: readable by everyone, postable only after joining.
    let lounge = o.channel(&alice, "lounge", false).await;
    let (s, v) = o.send(&bob, &lounge, "hello?", "b4").await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_member")));
    let (s, _) = o.post(&format!("/v1/channels/{lounge}/members"), &bob, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = o.send(&bob, &lounge, "hello!", "b5").await;
    assert_eq!(s, StatusCode::CREATED);
    o.stop().await;
}

#[tokio::test]
async fn other_workspaces_ids_change_nothing() {
    let o = TestOrigin::start().await;
    let (acme, acme_general) = o.workspace("acme").await;
    let (globex, globex_general) = o.workspace("globex").await;
    o.send(&acme, &acme_general, "acme only", "a1").await;
    let (_, acme_me) = o.get("/v1/me", &acme).await;
    let acme_admin = acme_me["user"]["id"].as_str().unwrap().to_string();
    for (status, what) in [
        (o.get(&format!("/v1/channels/{acme_general}"), &globex).await.0, "read channel"),
        (o.get(&format!("/v1/channels/{acme_general}/messages"), &globex).await.0, "read history"),
        (o.send(&globex, &acme_general, "intruder", "g1").await.0, "post"),
        (o.post(&format!("/v1/channels/{acme_general}/members"), &globex, json!({})).await.0, "join"),
        (
            o.post(&format!("/v1/channels/{globex_general}/members"), &globex, json!({ "user": acme_admin })).await.0,
            "invite a foreign user",
        ),
        (o.post("/v1/dms", &globex, json!({ "users": [acme_admin] })).await.0, "DM a foreign user"),
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
    }
    let history = o.history(&acme, &acme_general).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["text"], "acme only");
    let (_, members) = o.get(&format!("/v1/channels/{globex_general}/members"), &globex).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    o.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_errors() {
    let o = TestOrigin::start_with(|c| c.max_body_bytes = 4096).await;
    let (admin, general) = o.workspace("acme").await;
    let url = o.url(&format!("/v1/channels/{general}/messages"));
    let raw = |body: &'static str| {
        o.http.post(&url).bearer_auth(&admin).header("content-type", "application/json").body(body).send()
    };
    let check = |resp: reqwest::Response, status: StatusCode, code: &'static str, needle: &'static str| async move {
        assert_eq!(resp.status(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message:?} should mention {needle:?}");
    };
    check(raw("{\"text\": \"hi\", ").await.unwrap(), StatusCode::BAD_REQUEST, "bad_request", "JSON").await;
    check(
        raw("{\"text\":\"hi\",\"client_msg_id\":\"x\",\"colour\":\"red\"}").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "bad_request",
        "colour",
    )
    .await;
    check(raw("{\"text\":\"hi\"}").await.unwrap(), StatusCode::BAD_REQUEST, "bad_request", "client_msg_id").await;
    check(
        raw("{\"text\":\"\",\"client_msg_id\":\"x\"}").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "bad_request",
        "empty",
    )
    .await;
    let big = json!({ "text": "x".repeat(10_000), "client_msg_id": "big" });
    let resp = o.http.post(&url).bearer_auth(&admin).json(&big).send().await.unwrap();
    check(resp, StatusCode::PAYLOAD_TOO_LARGE, "too_large", "size limit").await;
    let resp = o.http.post(&url).json(&json!({ "text": "hi", "client_msg_id": "y" })).send().await.unwrap();
    check(resp, StatusCode::UNAUTHORIZED, "unauthorized", "Authorization").await;
    let resp = o
        .http
        .post(&url)
        .bearer_auth("svt_wrong")
        .json(&json!({ "text": "hi", "client_msg_id": "y" }))
        .send()
        .await
        .unwrap();
    check(resp, StatusCode::UNAUTHORIZED, "unauthorized", "token").await;
    let resp = o.http.get(o.url("/v1/nowhere")).send().await.unwrap();
    check(resp, StatusCode::NOT_FOUND, "not_found", "route").await;
    let resp = o
        .http
        .get(o.url(&format!("/v1/channels/{general}/messages?limit=many")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    check(resp, StatusCode::BAD_REQUEST, "bad_request", "limit").await;
    let (s, v) = o.post("/v1/workspaces", "not-the-operator-key", json!({ "name": "x", "admin_handle": "x" })).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (s, v) = o.post("/v1/users", &admin, json!({ "handle": "Not Valid" })).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    // Nothing above created a message.
    assert!(o.history(&admin, &general).await.is_empty());
    o.stop().await;
}

#[tokio::test]
async fn tokens_are_revocable_and_admin_only_for_users() {
    let o = TestOrigin::start().await;
    let (admin, _) = o.workspace("acme").await;
    let (_, bob) = o.user(&admin, "bob").await;
    let (s, _) = o.post("/v1/users", &bob, json!({ "handle": "mallory" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "non-admins cannot create users");
    let (s, _) = o.post("/v1/users", &admin, json!({ "handle": "bob" })).await;
    assert_eq!(s, StatusCode::CONFLICT, "handles are unique");
    let (s, v) = o.post("/v1/tokens", &bob, json!({})).await;
    assert_eq!(s, StatusCode::CREATED);
    let second = v["token"].as_str().unwrap().to_string();
    let (s, _) = o.post("/v1/tokens/revoke", &bob, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(o.get("/v1/me", &bob).await.0, StatusCode::UNAUTHORIZED, "revoked token");
    assert_eq!(o.get("/v1/me", &second).await.0, StatusCode::OK, "the other token still works");
    let (s, _) = o.post("/v1/tokens/revoke", &admin, json!({ "token": second })).await;
    assert_eq!(s, StatusCode::OK, "admins revoke others' tokens");
    assert_eq!(o.get("/v1/me", &second).await.0, StatusCode::UNAUTHORIZED);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_events_in_cursor_order_and_resumes_exactly() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (_, head) = o.get("/v1/events", &admin).await;
    let start = head["cursor"].as_str().unwrap().to_string();
    for i in 1..=5 {
        o.send(&admin, &general, &format!("m{i}"), &format!("m{i}")).await;
    }
    let (s, page) = o.get(&format!("/v1/events?cursor={start}"), &admin).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 5, "{page}");
    let cursors: Vec<&str> = events.iter().map(|e| e["cursor"].as_str().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "cursor order: {cursors:?}");
    assert_eq!(events.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert!(events.iter().all(|e| e["type"] == "message"));
    // Resuming after the second event yields exactly the last three.
    let (_, rest) = o.get(&format!("/v1/events?cursor={}", cursors[1]), &admin).await;
    let rest: Vec<u64> = rest["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(rest, vec![3, 4, 5]);
    // A long-poll at the end waits for the next event and returns it.
    let end = page["cursor"].as_str().unwrap().to_string();
    let url = o.url(&format!("/v1/events?cursor={end}&wait_ms=20000"));
    let http = o.http.clone();
    let token = admin.clone();
    let waiting =
        tokio::spawn(
            async move { http.get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap() },
        );
    // The poller must be parked before the send for this to test the wake-up; the gauge says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = o.http.get(o.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.contains("selvage_feed_waiters 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the long-poll never started waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    o.send(&admin, &general, "m6", "m6").await;
    let woke = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("long-poll woke").unwrap();
    let seqs: Vec<u64> = woke["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![6]);
    // A bad cursor is a clear 400.
    let (s, v) = o.get("/v1/events?cursor=nonsense", &admin).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    o.stop().await;
}

#[tokio::test]
async fn events_of_private_channels_reach_members_only() {
    let o = TestOrigin::start().await;
    let (alice, _) = o.workspace("acme").await;
    let (_, bob) = o.user(&alice, "bob").await;
    let (_, head) = o.get("/v1/events", &bob).await;
    let start = head["cursor"].as_str().unwrap().to_string();
    let secret = o.channel(&alice, "secret", true).await;
    o.send(&alice, &secret, "psst", "p1").await;
    let open = o.channel(&alice, "open", false).await;
    o.send(&alice, &open, "hello all", "o1").await;
    let (_, page) = o.get(&format!("/v1/events?cursor={start}"), &bob).await;
    let events = page["events"].as_array().unwrap();
    assert!(events.iter().all(|e| e["channel"] != secret.as_str() && e["channel"]["id"] != secret.as_str()), "{page}");
    assert!(events.iter().any(|e| e["type"] == "message" && e["text"] == "hello all"), "{page}");
    let (_, page) = o.get(&format!("/v1/events?cursor={start}"), &alice).await;
    assert!(page["events"].as_array().unwrap().iter().any(|e| e["text"] == "psst"));
    o.stop().await;
}

#[tokio::test]
async fn trimmed_cursors_get_resync() {
    // No search indexer, notifier or webhooks: as feed consumers they would hold the events
    // they have not handled yet back from the trimmer (ARCHITECTURE §8), which tests of their
    // own cover.
    let o = TestOrigin::start_with(|c| {
        c.feed.max_events = 3;
        c.search.enabled = false;
        c.notify.enabled = false;
        c.apps.webhooks = false;
    })
    .await;
    let (admin, general) = o.workspace("acme").await;
    let (_, head) = o.get("/v1/events", &admin).await;
    let old = head["cursor"].as_str().unwrap().to_string();
    for i in 0..10 {
        o.send(&admin, &general, "x", &format!("t{i}")).await;
    }
    let origin = o.running().origin.clone();
    let trimmed = origin.feed.trim(selvage_origin::now_ms()).await.unwrap();
    assert!(trimmed >= 7, "trimmed {trimmed}");
    let (s, page) = o.get(&format!("/v1/events?cursor={old}"), &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page["resync"].is_string(), "{page}");
    // The cursor handed back with the resync works.
    let fresh = page["cursor"].as_str().unwrap();
    let (s, page) = o.get(&format!("/v1/events?cursor={fresh}"), &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page["resync"].is_null(), "{page}");
    o.stop().await;
}

#[tokio::test]
async fn history_pages_in_both_directions() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    for i in 1..=25 {
        o.send(&admin, &general, &format!("m{i}"), &format!("h{i}")).await;
    }
    let (_, newest) = o.get(&format!("/v1/channels/{general}/messages?limit=10"), &admin).await;
    assert_eq!(seqs(newest["messages"].as_array().unwrap()), (16..=25).collect::<Vec<_>>());
    assert_eq!(newest["has_more"], true);
    let (_, older) = o.get(&format!("/v1/channels/{general}/messages?before=16&limit=10"), &admin).await;
    assert_eq!(seqs(older["messages"].as_array().unwrap()), (6..=15).collect::<Vec<_>>());
    let (_, oldest) = o.get(&format!("/v1/channels/{general}/messages?before=6&limit=10"), &admin).await;
    assert_eq!(seqs(oldest["messages"].as_array().unwrap()), (1..=5).collect::<Vec<_>>());
    assert_eq!(oldest["has_more"], false);
    let (_, forward) = o.get(&format!("/v1/channels/{general}/messages?after=20&limit=3"), &admin).await;
    assert_eq!(seqs(forward["messages"].as_array().unwrap()), vec![21, 22, 23]);
    assert_eq!(forward["has_more"], true);
    let (_, window) = o.get(&format!("/v1/channels/{general}/messages?after=10&before=13"), &admin).await;
    assert_eq!(seqs(window["messages"].as_array().unwrap()), vec![11, 12]);
    o.stop().await;
}

#[tokio::test]
async fn threads_page_their_replies_and_guard_their_roots() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (other_ws_admin, _) = o.workspace("globex").await;
    let (_, outsider) = o.user(&admin, "olga").await;
    let secret = o.channel(&admin, "secret", true).await;
    let reply = |root: u64, i: u32| json!({ "text": format!("reply {i}"), "client_msg_id": format!("r{root}-{i}"), "thread_root": root });
    // Seq 1 and 2 are roots; replies to 1 interleave with other messages of the channel.
    o.send(&admin, &general, "root one", "root-1").await;
    o.send(&admin, &general, "root two", "root-2").await;
    let mut replies = Vec::new();
    for i in 0..12 {
        let root = if i % 3 == 2 { 2 } else { 1 };
        let (s, v) = o.post(&format!("/v1/channels/{general}/messages"), &admin, reply(root, i)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        if root == 1 {
            replies.push(v["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(replies.len(), 8);
    let thread = |q: &str| format!("/v1/channels/{general}/messages/1/thread{q}");

    // The newest page, then back with `before`, then forward with `after`.
    let (s, newest) = o.get(&thread("?limit=5"), &admin).await;
    assert_eq!(s, StatusCode::OK, "{newest}");
    assert_eq!(seqs(newest["messages"].as_array().unwrap()), replies[3..].to_vec());
    assert_eq!(newest["has_more"], true);
    assert!(newest["messages"].as_array().unwrap().iter().all(|m| m["thread_root"] == 1));
    let (_, older) = o.get(&thread(&format!("?before={}&limit=5", replies[3])), &admin).await;
    assert_eq!(seqs(older["messages"].as_array().unwrap()), replies[..3].to_vec());
    assert_eq!(older["has_more"], false);
    let (_, forward) = o.get(&thread(&format!("?after={}&limit=2", replies[1])), &admin).await;
    assert_eq!(seqs(forward["messages"].as_array().unwrap()), replies[2..4].to_vec());
    assert_eq!(forward["has_more"], true);
    // A root without replies has an empty thread.
    o.send(&admin, &general, "lonely root", "root-3").await;
    let (s, empty) = o.get(&format!("/v1/channels/{general}/messages/15/thread"), &admin).await;
    assert_eq!(s, StatusCode::OK, "{empty}");
    assert_eq!(empty["messages"], json!([]));

    // A reply is not a root; a missing seq is not found; bad limits are refused.
    let (s, v) = o.get(&format!("/v1/channels/{general}/messages/{}/thread", replies[0]), &admin).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = o.get(&format!("/v1/channels/{general}/messages/999/thread"), &admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = o.get(&thread("?limit=0"), &admin).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A private channel's thread looks missing to a non-member; another workspace cannot see it.
    o.send(&admin, &secret, "hidden root", "hidden-1").await;
    let (s, v) = o.get(&format!("/v1/channels/{secret}/messages/1/thread"), &outsider).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = o.get(&thread(""), &other_ws_admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = o.get(&format!("/v1/channels/{secret}/messages/1/thread"), &admin).await;
    assert_eq!(s, StatusCode::OK);
    o.stop().await;
}

#[tokio::test]
async fn dms_are_one_per_set_of_people() {
    let o = TestOrigin::start().await;
    let (alice, _) = o.workspace("acme").await;
    let (bob_id, bob) = o.user(&alice, "bob").await;
    let (carol_id, _) = o.user(&alice, "carol").await;
    let (_, me) = o.get("/v1/me", &alice).await;
    let alice_id = me["user"]["id"].as_str().unwrap().to_string();
    let (_, a) = o.post("/v1/dms", &alice, json!({ "users": [bob_id] })).await;
    let (_, b) = o.post("/v1/dms", &bob, json!({ "users": [alice_id] })).await;
    assert_eq!(a["channel"]["id"], b["channel"]["id"], "the same DM from both sides");
    assert_eq!(a["channel"]["kind"], "dm");
    let (_, g) = o.post("/v1/dms", &alice, json!({ "users": [bob_id, carol_id] })).await;
    assert_eq!(g["channel"]["kind"], "group_dm");
    assert_ne!(g["channel"]["id"], a["channel"]["id"]);
    let dm = a["channel"]["id"].as_str().unwrap();
    let (s, _) = o.post(&format!("/v1/channels/{dm}/members"), &alice, json!({ "user": carol_id })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "DM membership is fixed");
    o.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi_are_served() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    o.send(&admin, &general, "count me", "c1").await;
    assert_eq!(o.http.get(o.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    let ready = o.http.get(o.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let metrics = o.http.get(o.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "selvage_sequencer_batch_messages_bucket",
        "selvage_sequencer_commit_seconds_bucket",
        "selvage_sequencer_queue_depth",
        "selvage_http_requests_total{method=\"POST\",route=\"/v1/channels/{id}/messages\",status=\"201\"} 1",
        "selvage_sequencer_messages_total 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let doc: Value = o.http.get(o.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/v1/workspaces", "post"),
        ("/v1/users", "post"),
        ("/v1/channels/{id}", "patch"),
        ("/v1/channels/{id}/messages", "post"),
        ("/v1/channels/{id}/messages/{seq}", "patch"),
        ("/v1/channels/{id}/messages/{seq}", "delete"),
        ("/v1/channels/{id}/messages/{seq}/reactions/{emoji}", "put"),
        ("/v1/channels/{id}/messages/{seq}/reactions/{emoji}", "delete"),
        ("/v1/channels/{id}/messages/{seq}/follow", "put"),
        ("/v1/channels/{id}/read", "put"),
        ("/v1/events", "get"),
        ("/v1/dms", "post"),
        ("/v1/tokens/revoke", "post"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from the OpenAPI document");
    }
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sequencer_queue_answers_overloaded_and_stores_nothing_extra() {
    let o = TestOrigin::start_with(|c| {
        c.sequencer.queue_capacity = 1;
        c.sequencer.max_batch_messages = 1;
    })
    .await;
    let (admin, general) = o.workspace("acme").await;
    let mut created = HashSet::new();
    let mut overloaded = 0;
    // Bursts of concurrent sends against a one-slot queue; within a few rounds some must be
    // refused. Every answer is either a commit or a clear, retryable 429.
    for round in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..64 {
            let http = o.http.clone();
            let url = o.url(&format!("/v1/channels/{general}/messages"));
            let token = admin.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("r{round}-{i}");
                let resp = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({ "text": "burst", "client_msg_id": id }))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                (id, status, resp.json::<Value>().await.unwrap())
            }));
        }
        for t in tasks {
            let (id, status, body) = t.await.unwrap();
            match status {
                StatusCode::CREATED => assert!(created.insert(id)),
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(body["error"]["code"], "overloaded", "{body}");
                    overloaded += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        if overloaded > 0 {
            break;
        }
    }
    assert!(overloaded > 0, "a one-slot queue under bursts of 64 never refused a send");
    let stored: HashSet<String> =
        o.history(&admin, &general).await.iter().map(|m| m["client_msg_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(stored, created, "exactly the acknowledged sends are stored");
    o.stop().await;
}

/// Asserts the documented error shape: JSON, `{"error": {"code", "message"}}`, the given status
/// and code, and a request id header. Returns the body.
async fn error_shape(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status, "{:?}", resp.headers());
    let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(content_type.as_deref(), Some("application/json"), "{status}");
    assert!(resp.headers().get("x-request-id").is_some(), "{status}: no x-request-id header");
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

#[tokio::test]
async fn every_rejection_has_the_json_error_shape() {
    let o = TestOrigin::start_with(|c| c.max_body_bytes = 4096).await;
    let (admin, general) = o.workspace("acme").await;
    o.send(&admin, &general, "root", "r1").await;
    let http = &o.http;
    let messages = o.url(&format!("/v1/channels/{general}/messages"));
    // Path parameters that do not parse.
    for path in ["abc/thread", "-1/follow", "99999999999999999999999/reactions/tada", "1.5/follow"] {
        let url = format!("{messages}/{path}");
        let method = if path.ends_with("thread") { reqwest::Method::GET } else { reqwest::Method::PUT };
        let resp = http.request(method, &url).bearer_auth(&admin).send().await.unwrap();
        let v = error_shape(resp, StatusCode::BAD_REQUEST, "bad_request").await;
        assert!(v["error"]["message"].as_str().unwrap().contains("seq"), "{path}: {v}");
    }
    // Query strings that do not parse, or are out of range.
    for query in ["limit=-1", "limit=0", "limit=1001", "before=x", "colour=red"] {
        let resp = http.get(format!("{messages}?{query}")).bearer_auth(&admin).send().await.unwrap();
        error_shape(resp, StatusCode::BAD_REQUEST, "bad_request").await;
    }
    // Bodies: malformed, the wrong type, no content type, too large.
    let post = |body: &'static str, content_type: Option<&'static str>| {
        let mut req = http.post(&messages).bearer_auth(&admin).body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        req.send()
    };
    let json = Some("application/json");
    error_shape(post("{\"text\": ", json).await.unwrap(), StatusCode::BAD_REQUEST, "bad_request").await;
    error_shape(post("[1, 2]", json).await.unwrap(), StatusCode::BAD_REQUEST, "bad_request").await;
    let text = "{\"text\": \"hi\", \"client_msg_id\": \"ct\"}";
    error_shape(post(text, None).await.unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request").await;
    error_shape(post(text, Some("text/plain")).await.unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request").await;
    let big = json!({ "text": "x".repeat(10_000), "client_msg_id": "big" });
    let resp = http.post(&messages).bearer_auth(&admin).json(&big).send().await.unwrap();
    error_shape(resp, StatusCode::PAYLOAD_TOO_LARGE, "too_large").await;
    // Routes and methods.
    error_shape(http.get(o.url("/v1/nowhere")).send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    let resp = http.delete(o.url("/v1/channels")).bearer_auth(&admin).send().await.unwrap();
    error_shape(resp, StatusCode::METHOD_NOT_ALLOWED, "bad_request").await;
    // Authentication.
    let resp = http.get(o.url("/v1/me")).send().await.unwrap();
    error_shape(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Successes carry a request id too.
    let resp = http.get(o.url("/v1/me")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("x-request-id").is_some());
    assert_eq!(o.history(&admin, &general).await.len(), 1, "nothing above wrote a message");
    o.stop().await;
}

#[tokio::test]
async fn integral_numbers_are_integers_in_json_bodies() {
    // JSON has one number type: 2.0 is the integer 2, as the schema says.
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    o.send(&admin, &general, "root", "r1").await;
    let (s, v) = o
        .post(
            &format!("/v1/channels/{general}/messages"),
            &admin,
            json!({ "text": "re", "client_msg_id": "r2", "thread_root": 1.0 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["message"]["thread_root"], 1);
    let (s, v) = o
        .call(reqwest::Method::PUT, &format!("/v1/channels/{general}/read"), &admin, Some(json!({ "seq": 2.0 })))
        .await;
    assert_eq!((s, v["read_seq"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    for bad in [json!({ "seq": 1.5 }), json!({ "seq": -1 }), json!({ "seq": "1" })] {
        let (s, v) = o.call(reqwest::Method::PUT, &format!("/v1/channels/{general}/read"), &admin, Some(bad)).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")), "{v}");
    }
    o.stop().await;
}

#[tokio::test]
async fn a_server_error_names_a_code_and_request_id_and_nothing_internal() {
    let o = TestOrigin::start().await;
    let (admin, _) = o.workspace("acme").await;
    let broken = o.channel(&admin, "broken", false).await;
    // A channel record that no longer decodes (corruption, or a bug that wrote it): the origin
    // cannot serve it, and says so without showing what it found.
    let (_, me) = o.get("/v1/me", &admin).await;
    let w = selvage_shared::WorkspaceId::parse(me["workspace"].as_str().unwrap()).unwrap();
    let c = selvage_shared::ChannelId::parse(&broken).unwrap();
    let origin = o.running().origin.clone();
    let mut tx = origin.store.begin().await.unwrap();
    tx.set(&selvage_origin::store::keys::channel(&w, &c), b"\xc1 not msgpack").unwrap();
    tx.commit().await.unwrap();

    let resp = o.http.get(o.url(&format!("/v1/channels/{broken}"))).bearer_auth(&admin).send().await.unwrap();
    let header = resp.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
    let v = error_shape(resp, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
    let id = v["error"]["request_id"].as_str().unwrap_or_else(|| panic!("no request_id in {v}"));
    assert_eq!(Some(id), header.as_deref(), "the body and the header name the same request");
    let message = v["error"]["message"].as_str().unwrap();
    assert_eq!(message, "internal error; the origin logged it with this request_id");
    for detail in ["decode", "record", "msgpack", "storage", "engine"] {
        assert!(!message.to_lowercase().contains(detail), "{message:?} shows internal detail ({detail})");
    }
    // Two failures, two ids.
    let resp = o.http.get(o.url(&format!("/v1/channels/{broken}"))).bearer_auth(&admin).send().await.unwrap();
    let again = error_shape(resp, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
    assert_ne!(again["error"]["request_id"], v["error"]["request_id"]);
    o.stop().await;
}

#[tokio::test]
async fn channel_names_are_unique_across_visibility_and_nothing_else_leaks() {
    // docs/API.md "Channel names": a workspace's channel names are one namespace, so the name of
    // a private channel you cannot see is taken for you too (409), exactly as a public one's
    // would be; the answer says nothing else about it.
    let o = TestOrigin::start().await;
    let (alice, _) = o.workspace("acme").await;
    let (_, bob) = o.user(&alice, "bob").await;
    let secret = o.channel(&alice, "secret", true).await;
    let public = o.channel(&alice, "open", false).await;
    let mine = o.channel(&bob, "bobs", false).await;

    let (s_private, v_private) = o.post("/v1/channels", &bob, json!({ "name": "secret", "private": true })).await;
    let (s_public, v_public) = o.post("/v1/channels", &bob, json!({ "name": "open" })).await;
    assert_eq!((s_private, v_private["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    assert_eq!(s_public, StatusCode::CONFLICT);
    let text = v_private.to_string();
    assert!(!text.contains(&secret) && !text.contains("private"), "the 409 names nothing but the name: {text}");
    let message = |v: &Value| v["error"]["message"].as_str().unwrap().replace("secret", "NAME").replace("open", "NAME");
    assert_eq!(message(&v_private), message(&v_public), "a hidden channel's name is refused like a visible one's");
    // Renaming onto it: the same.
    let (s, v) =
        o.call(reqwest::Method::PATCH, &format!("/v1/channels/{mine}"), &bob, Some(json!({ "name": "secret" }))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{v}");
    // What stays hidden: the channel itself, by id and in listings.
    let (s, _) = o.get(&format!("/v1/channels/{secret}"), &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, listed) = o.get("/v1/channels", &bob).await;
    assert!(!listed.to_string().contains("secret"), "{listed}");
    // Once renamed away, the name is free again.
    let (s, _) = o
        .call(reqwest::Method::PATCH, &format!("/v1/channels/{secret}"), &alice, Some(json!({ "name": "hush" })))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = o.post("/v1/channels", &bob, json!({ "name": "secret" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let _ = public;
    o.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_what_the_server_answers() {
    let o = TestOrigin::start().await;
    let doc: Value = o.http.get(o.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut operations = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                assert!(status.parse::<u16>().is_ok(), "{method} {path}: {status} is not one status");
                assert!(response["headers"]["x-request-id"].is_object(), "{method} {path} {status}: no x-request-id");
                if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/Error", "{method} {path} {status}");
                }
            }
            // Routes that take a token list what a token can be refused with; the few that take
            // none (`"security": []`: an email's unsubscribe link) do not.
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                for status in ["401", "500", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} does not list {status}");
                }
            }
            // The route is served as documented: not an unknown route, not a wrong method.
            let concrete =
                path.replace("{id}", "C0").replace("{seq}", "1").replace("{user}", "U0").replace("{emoji}", "tada");
            let resp = o.http.request(method.to_uppercase().parse().unwrap(), o.url(&concrete)).send().await.unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no such route"),
                "{method} {path}: {body}"
            );
        }
    }
    assert!(operations >= 27, "{operations} operations");
    let send = &doc["paths"]["/v1/channels/{id}/messages"]["post"];
    for status in ["200", "201", "400", "403", "404", "409", "413", "415", "429"] {
        assert!(send["responses"][status].is_object(), "a send can answer {status}");
    }
    assert_eq!(send["requestBody"]["content"]["application/json"]["schema"]["properties"]["text"]["minLength"], 1);
    assert_eq!(doc["paths"]["/v1/tokens/revoke"]["post"]["requestBody"]["required"], false, "revoke takes no body");
    assert_eq!(doc["paths"]["/v1/channels/{id}/members"]["post"]["requestBody"]["required"], false, "join: no body");
    let dms = &doc["paths"]["/v1/dms"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(dms["properties"]["users"]["minItems"], 1);
    for (path, param) in [("/v1/channels/{id}/messages", 3), ("/v1/events", 2), ("/v1/channels/{id}/members", 2)] {
        let limit = &doc["paths"][path]["get"]["parameters"][param];
        assert_eq!(
            (&limit["name"], &limit["schema"]["minimum"], &limit["schema"]["maximum"]),
            (&json!("limit"), &json!(1), &json!(1000)),
            "{path}"
        );
    }
    o.stop().await;
}
