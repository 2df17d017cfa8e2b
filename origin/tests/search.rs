//! Search end to end (ARCHITECTURE §8 "Search"): a real origin on port 0 over a real embedded
//! store, its real tantivy index kept by the indexer (a feed consumer), searched over HTTP as a
//! client would. Every search that must see what was just written passes `after=<cursor>`
//! (read your writes), so no test sleeps for the indexer. One test runs the origin as a child
//! process (this test binary, re-run on [`child_origin`]) to kill it with SIGKILL mid-stream.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

mod support;

use support::{Api, Child, TestOrigin, OPERATOR_KEY};

impl Api {
    /// Posts `text`; answers the feed cursor of its ack.
    async fn say(&self, token: &str, channel: &str, text: &str) -> String {
        let id = format!("m-{}", rand_id());
        let (s, v) = self
            .post(&format!("/v1/channels/{channel}/messages"), token, json!({ "text": text, "client_msg_id": id }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["cursor"].as_str().unwrap().to_string()
    }

    /// Posts `text`; answers its seq.
    async fn say_seq(&self, token: &str, channel: &str, text: &str, thread_root: Option<u64>) -> u64 {
        let id = format!("m-{}", rand_id());
        let body = json!({ "text": text, "client_msg_id": id, "thread_root": thread_root });
        let (s, v) = self.post(&format!("/v1/channels/{channel}/messages"), token, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["seq"].as_u64().unwrap()
    }

    /// The feed's head.
    async fn head(&self, token: &str) -> String {
        self.get("/v1/events", token).await.1["cursor"].as_str().unwrap().to_string()
    }

    /// Searches `q` once the index covers the feed's head; answers the whole page.
    async fn search_page(&self, token: &str, q: &str, extra: &str) -> Value {
        let head = self.head(token).await;
        let path = format!("/v1/search?q={}&after={head}{extra}", urlencode(q));
        let (s, v) = self.get(&path, token).await;
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        assert_eq!(v["caught_up"], true, "{q}: {v}");
        v
    }

    /// The texts a search finds, in the order found.
    async fn found(&self, token: &str, q: &str) -> Vec<String> {
        texts(&self.search_page(token, q, "").await)
    }

    /// How many messages a search finds right now, without waiting for the index.
    async fn count_now(&self, token: &str, q: &str) -> usize {
        let (mut count, mut cursor) = (0, String::new());
        loop {
            let (s, v) = self.get(&format!("/v1/search?q={}&limit=100{cursor}", urlencode(q)), token).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            count += v["results"].as_array().unwrap().len();
            let Some(next) = v["next_cursor"].as_str() else { return count };
            cursor = format!("&cursor={next}");
        }
    }

    /// Every message a search finds, over all its pages: `(channel, seq, text)`.
    async fn found_all(&self, token: &str, q: &str) -> BTreeSet<(String, u64, String)> {
        let mut out = BTreeSet::new();
        let mut page = self.search_page(token, q, "&limit=100").await;
        loop {
            for r in page["results"].as_array().unwrap() {
                let m = &r["message"];
                let row = (m["channel"].as_str().unwrap().into(), m["seq"].as_u64().unwrap(), text(m));
                assert!(out.insert(row.clone()), "{row:?} found twice");
            }
            let Some(next) = page["next_cursor"].as_str() else { return out };
            let path = format!("/v1/search?q={}&limit=100&cursor={next}", urlencode(q));
            let (s, v) = self.get(&path, token).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            page = v;
        }
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn text(m: &Value) -> String {
    m["text"].as_str().unwrap_or_default().to_string()
}

fn texts(page: &Value) -> Vec<String> {
    page["results"].as_array().unwrap().iter().map(|r| text(&r["message"])).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_finds_only_what_they_may_read_now() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (bob_id, bob) = o.user(&admin, "bob").await;
    let (carol_id, carol) = o.user(&admin, "carol").await;
    let (_, dave) = o.user(&admin, "dave").await;
    let (globex, globex_general) = o.workspace("globex").await;
    let secret = o.channel(&admin, "secret", true).await;
    let (s, v) = o.post(&format!("/v1/channels/{secret}/members"), &admin, json!({ "user": bob_id })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, dm) = o.post("/v1/dms", &admin, json!({ "users": [carol_id] })).await;
    assert_eq!(s, StatusCode::OK, "{dm}");
    let dm = dm["channel"]["id"].as_str().unwrap().to_string();
    o.say(&admin, &general, "deploy the rocket on friday").await;
    o.say(&admin, &secret, "deploy the secret plans").await;
    o.say(&admin, &dm, "deploy note for carol").await;
    o.say(&globex, &globex_general, "deploy at globex").await;

    let public = "deploy the rocket on friday".to_string();
    let private = "deploy the secret plans".to_string();
    let direct = "deploy note for carol".to_string();
    assert_eq!(sorted(o.found(&admin, "deploy").await), sorted(vec![public.clone(), private.clone(), direct.clone()]));
    assert_eq!(sorted(o.found(&bob, "deploy").await), sorted(vec![public.clone(), private.clone()]), "member");
    assert_eq!(sorted(o.found(&carol, "deploy").await), sorted(vec![public.clone(), direct.clone()]), "DM member");
    assert_eq!(o.found(&dave, "deploy").await, vec![public.clone()], "neither member nor in the DM");
    assert_eq!(o.found(&globex, "deploy").await, vec!["deploy at globex".to_string()], "another workspace");
    // Naming the private channel reveals nothing to an outsider.
    assert!(o.found(&dave, "deploy in:#secret").await.is_empty());
    assert!(o.found(&dave, "secret plans").await.is_empty());

    // Removed from the private channel: at once, nothing of it is found any more.
    let path = format!("/v1/channels/{secret}/members/{bob_id}");
    assert_eq!(o.call(Method::DELETE, &path, &admin, None).await.0, StatusCode::OK);
    assert_eq!(o.found(&bob, "deploy").await, vec![public.clone()], "removed member");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_are_found_as_they_are_now() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    let seq = o.say_seq(&admin, &general, "alpha release notes", None).await;
    assert_eq!(o.found(&admin, "alpha").await, vec!["alpha release notes".to_string()]);
    let path = format!("/v1/channels/{general}/messages/{seq}");
    let (s, v) = o.call(Method::PATCH, &path, &admin, Some(json!({ "text": "gamma release notes" }))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(o.found(&admin, "alpha").await.is_empty(), "the old text is gone from the index");
    assert_eq!(o.found(&admin, "gamma").await, vec!["gamma release notes".to_string()]);
    assert_eq!(o.found(&admin, "release").await.len(), 1, "one document per message");
    assert_eq!(o.call(Method::DELETE, &path, &admin, None).await.0, StatusCode::OK);
    assert!(o.found(&admin, "gamma").await.is_empty(), "a deleted message is never found");
    assert!(o.found(&admin, "release").await.is_empty());
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_language_works_over_http() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (_, bob) = o.user(&admin, "bob").await;
    let random = o.channel(&admin, "random", false).await;
    let (s, v) = o.post(&format!("/v1/channels/{random}/members"), &bob, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let root = o.say_seq(&admin, &general, "the deploying of staging went fine", None).await;
    o.say_seq(&bob, &general, "bob thinks the cafe on main street is best", Some(root)).await;
    o.say_seq(&bob, &random, "see https://example.com/docs/rate_limit for the config.rs change", None).await;
    o.say_seq(&admin, &random, "我们明天在東京开会", None).await;
    o.say_seq(&admin, &random, "Café meeting moved; deploy later", None).await;

    let one = |v: Vec<String>| v.len();
    assert_eq!(o.found(&admin, "deploy").await.len(), 2, "stemming: deploying and deploy");
    assert_eq!(o.found(&admin, "\"deploying of staging\"").await.len(), 1, "an exact phrase");
    assert_eq!(one(o.found(&admin, "\"staging of deploying\"").await), 0, "words out of order are no phrase");
    assert_eq!(o.found(&admin, "deploy -cafe").await, vec!["the deploying of staging went fine".to_string()]);
    assert_eq!(o.found(&admin, "cafe").await.len(), 2, "folding: Café finds cafe and cafe finds Café");
    assert_eq!(o.found(&admin, "from:@bob cafe").await.len(), 1);
    assert_eq!(o.found(&admin, "in:#random deploy").await, vec!["Café meeting moved; deploy later".to_string()]);
    assert_eq!(o.found(&admin, "is:thread cafe").await.len(), 1, "the reply is in a thread");
    assert_eq!(o.found(&admin, "has:link").await.len(), 1);
    assert_eq!(o.found(&admin, "rate_limit").await.len(), 1, "identifiers by their whole");
    assert_eq!(o.found(&admin, "limit config").await.len(), 1, "identifiers and file names by their parts");
    assert_eq!(o.found(&admin, "東京").await, vec!["我们明天在東京开会".to_string()], "CJK without spaces");
    assert_eq!(o.found(&admin, "stagi").await.len(), 1, "the last word as a prefix, as typed");
    assert_eq!(o.found(&admin, "before:2000-01-01 deploy").await.len(), 0);
    assert_eq!(o.found(&admin, "after:2000-01-01 deploy").await.len(), 2);
    let today = today();
    assert_eq!(o.found(&admin, &format!("on:{today} deploy")).await.len(), 2);

    // Newest first; highlights point at the matched words.
    let page = o.search_page(&admin, "deploy", "&sort=recent").await;
    let seqs: Vec<u64> =
        page["results"].as_array().unwrap().iter().map(|r| r["message"]["ts"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] >= w[1]), "newest first: {page}");
    for r in page["results"].as_array().unwrap() {
        let snippet = r["snippets"].as_array().unwrap().iter().find(|s| s["field"] == "text").unwrap();
        let fragment = snippet["fragment"].as_str().unwrap();
        let [start, end] = [&snippet["highlights"][0][0], &snippet["highlights"][0][1]].map(|n| n.as_u64().unwrap());
        assert!(fragment[start as usize..end as usize].to_lowercase().starts_with("deploy"), "{snippet}");
        assert!(r["channel"]["id"].is_string(), "{r}");
    }
    // Pages: two of two, then one, each message once.
    let first = o.search_page(&admin, "after:2000-01-01", "&limit=2").await;
    assert_eq!(first["results"].as_array().unwrap().len(), 2);
    let mut seen = BTreeSet::new();
    for r in first["results"].as_array().unwrap() {
        seen.insert(text(&r["message"]));
    }
    let mut next = first["next_cursor"].as_str().map(str::to_string);
    while let Some(cursor) = next {
        let (s, v) = o.get(&format!("/v1/search?q=after:2000-01-01&limit=2&cursor={cursor}"), &admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for r in v["results"].as_array().unwrap() {
            assert!(seen.insert(text(&r["message"])), "paged twice: {r}");
        }
        next = v["next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(seen.len(), 5);
    o.stop().await;
}

/// Today's date, UTC, as `YYYY-MM-DD`.
fn today() -> String {
    let d = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_searches_get_a_400_that_says_what_is_wrong() {
    let o = TestOrigin::start().await;
    let (admin, _) = o.workspace("acme").await;
    for (path, says) in [
        ("/v1/search?q=%22open", "quote"),
        ("/v1/search?q=-alone", "exclu"),
        ("/v1/search?q=before:2024-13-45", "date"),
        ("/v1/search?q=", "empty"),
        ("/v1/search?q=x&limit=0", "limit"),
        ("/v1/search?q=x&limit=1000", "limit"),
        ("/v1/search?q=x&cursor=garbage", "cursor"),
        ("/v1/search?q=x&sort=loudest", "sort"),
        ("/v1/search?q=x&after=nope", "after"),
        ("/v1/search", "q"),
    ] {
        let (s, v) = o.get(path, &admin).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{path}: {v}");
        let message = v["error"]["message"].as_str().unwrap().to_lowercase();
        assert!(message.contains(says), "{path}: {message}");
    }
    let long = "word ".repeat(400);
    let (s, v) = o.get(&format!("/v1/search?q={}", urlencode(&long)), &admin).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(o.get("/v1/search?q=x", "wrong-token").await.0, StatusCode::UNAUTHORIZED);
    let (_, bob) = o.user(&admin, "bob").await;
    assert_eq!(o.get("/v1/search?q=x", &bob).await.0, StatusCode::OK);
    assert_eq!(o.post("/v1/tokens/revoke", &bob, json!({})).await.0, StatusCode::OK);
    assert_eq!(o.get("/v1/search?q=x", &bob).await.0, StatusCode::UNAUTHORIZED, "a revoked token");
    // Counted, those the search service saw (not those the query string's parser refused).
    assert_eq!(o.metric("selvage_search_queries_total{outcome=\"bad_request\"}").await, 9.0);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rebuilds_the_same_index_and_needs_the_operator_key() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    for i in 0..30 {
        o.say(&admin, &general, &format!("note {i} about the launch")).await;
    }
    let before = o.found_all(&admin, "launch").await;
    assert_eq!(before.len(), 30);
    let path = "/v1/admin/search/reindex";
    assert_eq!(o.post(path, &admin, json!({})).await.0, StatusCode::UNAUTHORIZED, "a user's token");
    assert_eq!(o.post(path, "", json!({})).await.0, StatusCode::UNAUTHORIZED);
    let (s, v) = o.post(path, OPERATOR_KEY, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["documents"], 30, "{v}");
    assert_eq!(o.found_all(&admin, "launch").await, before);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_off_answers_404() {
    let o = TestOrigin::start_with(|c| c.search.enabled = false).await;
    let (admin, _) = o.workspace("acme").await;
    let (s, v) = o.get("/v1/search?q=x", &admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["message"], "search is not enabled on this origin");
    assert_eq!(o.post("/v1/admin/search/reindex", OPERATOR_KEY, json!({})).await.0, StatusCode::NOT_FOUND);
    o.stop().await;
}

/// Not a test on its own: the origin that
/// [`the_indexer_killed_mid_stream_resumes_to_the_index_a_reindex_makes`] runs as a child process
/// and kills (see [`support::child_origin`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_origin() {
    support::child_origin().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_killed_mid_stream_resumes_to_the_index_a_reindex_makes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = support::config(dir.path());
    // A killed runner's lease runs out soon; small batches, so the kill lands between commits.
    c.consumers.lease_ms = 1_000;
    c.consumers.batch_size = 16;
    let child = Child::spawn(&c).await;
    let api = child.api.clone();
    let (admin, general) = api.workspace("acme").await;
    let random = api.channel(&admin, "random", false).await;
    // Two writers post, edit and delete as fast as they are acked; SIGKILL lands in the middle
    // of their writing and of the indexer's work. What counts is what the store holds after.
    let acked = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for channel in [general.clone(), random.clone()] {
        let (api, admin, acked) = (api.clone(), admin.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let body = json!({ "text": format!("entry {i} of the ledger"), "client_msg_id": format!("w{i}") });
                let Ok(sent) = api
                    .http
                    .post(api.url(&format!("/v1/channels/{channel}/messages")))
                    .bearer_auth(&admin)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(sent) = sent.json::<Value>().await else { return };
                let Some(seq) = sent["seq"].as_u64() else { return };
                acked.fetch_add(1, Ordering::Relaxed);
                let path = api.url(&format!("/v1/channels/{channel}/messages/{seq}"));
                let amend = json!({ "text": format!("entry {i} of the ledger, amended") });
                if i % 7 == 0 && api.http.patch(&path).bearer_auth(&admin).json(&amend).send().await.is_err() {
                    return;
                }
                if i % 11 == 0 && api.http.delete(&path).bearer_auth(&admin).send().await.is_err() {
                    return;
                }
            }
        }));
    }
    while acked.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (sent, indexed) = (acked.load(Ordering::Relaxed), api.count_now(&admin, "ledger").await);
    println!("killing the origin after {sent} acked sends, {indexed} of them found by then");
    child.kill().await;
    for w in writers {
        w.await.unwrap();
    }

    let child = Child::spawn(&c).await;
    let api = child.api.clone();
    // What the store holds: every message not deleted, as it reads now.
    let mut stored = BTreeSet::new();
    for channel in [&general, &random] {
        let (s, v) = api.get(&format!("/v1/channels/{channel}/messages?limit=1000"), &admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for m in v["messages"].as_array().unwrap().iter().filter(|m| m["deleted"] != true) {
            stored.insert((channel.to_string(), m["seq"].as_u64().unwrap(), text(m)));
        }
    }
    assert!(stored.len() >= 250, "{} messages stored", stored.len());
    assert!(stored.iter().any(|(_, _, t)| t.ends_with("amended")));
    let resumed = api.found_all(&admin, "ledger").await;
    assert_eq!(resumed, stored, "the resumed index holds what the store holds, each message once");
    let (s, v) = api.post("/v1/admin/search/reindex", OPERATOR_KEY, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["documents"], stored.len() as u64, "{v}");
    assert_eq!(api.found_all(&admin, "ledger").await, resumed, "the resumed index is the rebuilt one");
    child.kill().await;
}
