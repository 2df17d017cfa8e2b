//! The files service end to end (ARCHITECTURE §8 "Files"): a real origin on port 0 over a
//! real embedded store, and a real S3 endpoint (s3local) on port 0, both in temporary
//! directories. Bytes go to and from the object store through the presigned URLs the origin
//! hands out, with plain HTTP, as a client would send them.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use selvage_origin::{OriginConfig, Running};
use selvage_s3local::{Options, S3Local, DEFAULT_ACCESS_KEY, DEFAULT_BUCKET, DEFAULT_REGION, DEFAULT_SECRET_KEY};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const OPERATOR_KEY: &str = "test-operator-key-0123456789";

struct Rig {
    base: String,
    http: reqwest::Client,
    running: Option<Running>,
    shutdown: CancellationToken,
    s3: Option<S3Local>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// An origin with files on, against a fresh s3local.
    async fn start() -> Rig {
        Rig::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut OriginConfig)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let s3 = S3Local::start(Options::new(dir.path().join("s3"))).await.unwrap();
        let mut config = config(&dir);
        config.files.enabled = true;
        config.files.endpoint = Some(s3.endpoint());
        config.files.region = DEFAULT_REGION.into();
        config.files.bucket = DEFAULT_BUCKET.into();
        config.files.path_style = true;
        config.files.access_key_id = Some(DEFAULT_ACCESS_KEY.into());
        config.files.secret_access_key = Some(DEFAULT_SECRET_KEY.into());
        tweak(&mut config);
        Rig::run(config, Some(s3), dir).await
    }

    async fn run(config: OriginConfig, s3: Option<S3Local>, dir: tempfile::TempDir) -> Rig {
        let shutdown = CancellationToken::new();
        let running = selvage_origin::start(config, shutdown.clone()).await.unwrap();
        Rig {
            base: format!("http://{}", running.addr),
            http: reqwest::Client::new(),
            running: Some(running),
            shutdown,
            s3,
            _dir: dir,
        }
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// A workspace; returns (admin token, general channel id).
    async fn workspace(&self, name: &str) -> (String, String) {
        let (s, v) = self.post("/v1/workspaces", OPERATOR_KEY, json!({ "name": name, "admin_handle": "admin" })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let token = v["token"].as_str().unwrap().to_string();
        let (_, chans) = self.get("/v1/channels", &token).await;
        let general = chans["channels"][0]["id"].as_str().unwrap().to_string();
        (token, general)
    }

    /// A user; returns (user id, token).
    async fn user(&self, admin: &str, handle: &str) -> (String, String) {
        let (s, v) = self.post("/v1/users", admin, json!({ "handle": handle })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (v["user"]["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
    }

    async fn channel(&self, token: &str, name: &str, private: bool) -> String {
        let (s, v) = self.post("/v1/channels", token, json!({ "name": name, "private": private })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["channel"]["id"].as_str().unwrap().to_string()
    }

    /// Declares a file; returns the answer (asserting 201).
    async fn declare(&self, token: &str, name: &str, size: usize, content_type: &str) -> Value {
        let (s, v) =
            self.post("/v1/files", token, json!({ "name": name, "size": size, "content_type": content_type })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    async fn complete(&self, token: &str, file: &str, channel: &str, id: &str) -> (StatusCode, Value) {
        self.post(&format!("/v1/files/{file}/complete"), token, json!({ "channel": channel, "client_msg_id": id }))
            .await
    }

    /// Declares, uploads and completes a file in `channel`; returns (file id, complete answer).
    async fn share(&self, token: &str, channel: &str, bytes: &[u8], name: &str) -> (String, Value) {
        let declared = self.declare(token, name, bytes.len(), "application/pdf").await;
        let id = declared["file"]["id"].as_str().unwrap().to_string();
        let put = upload(&declared["upload"], bytes.to_vec()).await;
        assert!(put.is_success(), "upload refused: {put}");
        let (s, v) = self.complete(token, &id, channel, &format!("share-{id}")).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (id, v)
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
        if let Some(s3) = self.s3.take() {
            s3.shutdown().await;
        }
    }
}

fn config(dir: &tempfile::TempDir) -> OriginConfig {
    OriginConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("origin"),
        operator_key: Some(OPERATOR_KEY.into()),
        ..OriginConfig::default()
    }
}

/// Sends `body` through an `upload` answer: its URL, method and every header it names.
async fn upload(upload: &Value, body: Vec<u8>) -> StatusCode {
    upload_with(upload, body, &[]).await
}

/// [`upload`] with some signed headers replaced.
async fn upload_with(upload: &Value, body: Vec<u8>, replace: &[(&str, &str)]) -> StatusCode {
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

/// GETs a presigned download URL.
async fn download(url: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_goes_up_is_shared_in_a_message_and_comes_back_down() {
    let o = Rig::start().await;
    let (admin, general) = o.workspace("acme").await;
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let declared = o.declare(&admin, "../quarterly\u{7}/report.pdf", bytes.len(), "application/pdf").await;
    let file = &declared["file"];
    assert_eq!(file["state"], "pending");
    assert_eq!(file["name"], ".._quarterly_report.pdf", "the name is sanitised");
    assert_eq!(file["size"], bytes.len());
    let up = &declared["upload"];
    assert_eq!(up["headers"]["content-type"], "application/pdf");
    assert_eq!(up["headers"]["content-length"], bytes.len().to_string());
    assert!(up["expires_at"].as_i64().unwrap() > selvage_origin::now_ms());
    let url = up["url"].as_str().unwrap();
    assert!(url.contains("/ws/") && url.contains("X-Amz-Signature"), "{url}");
    let id = file["id"].as_str().unwrap().to_string();

    // Completing before the upload: refused, and the file is still pending.
    let (s, v) = o.complete(&admin, &id, &general, "m1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nothing has been uploaded"), "{v}");

    assert!(upload(up, bytes.clone()).await.is_success());
    let head = o.get("/v1/events", &admin).await.1["cursor"].as_str().unwrap().to_string();
    let (s, done) = o.complete(&admin, &id, &general, "m1").await;
    assert_eq!(s, StatusCode::CREATED, "{done}");
    assert_eq!(done["file"]["state"], "ready");
    let seq = done["seq"].as_u64().unwrap();
    assert_eq!(done["message"]["files"][0]["id"], id.as_str());
    assert!(done["message"].get("text").is_none_or(|t| t == ""), "{done}");

    // A retry answers the same message.
    let (s, again) = o.complete(&admin, &id, &general, "m1").await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["seq"].as_u64(), Some(seq));
    assert_eq!(again["duplicate"], true);
    // Another id for the same file is a second share: refused.
    let (s, v) = o.complete(&admin, &id, &general, "m2").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // So does the message event.
    let (_, events) = o.get(&format!("/v1/events?cursor={head}&wait_ms=0"), &admin).await;
    let event = events["events"].as_array().unwrap().iter().find(|e| e["type"] == "message").cloned();
    assert_eq!(event.map(|e| e["files"][0]["id"].clone()), Some(json!(id)), "{events}");

    // History carries the file, once.
    let (_, h) = o.get(&format!("/v1/channels/{general}/messages"), &admin).await;
    let carrying: Vec<&Value> = h["messages"].as_array().unwrap().iter().filter(|m| m["files"].is_array()).collect();
    assert_eq!(carrying.len(), 1, "{h}");
    assert_eq!(carrying[0]["seq"].as_u64(), Some(seq));
    assert_eq!(
        carrying[0]["files"][0],
        json!({ "id": id, "name": ".._quarterly_report.pdf", "size": bytes.len(), "content_type": "application/pdf" })
    );

    // Another member downloads it: same bytes, as an attachment.
    let (_, bob) = o.user(&admin, "bob").await;
    let (s, got) = o.get(&format!("/v1/files/{id}"), &bob).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["file"]["channel"], general.as_str());
    let resp = download(got["download"]["url"].as_str().unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let disposition = resp.headers()["content-disposition"].to_str().unwrap().to_string();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // /content redirects to such a URL.
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = no_redirects.get(format!("{}/v1/files/{id}/content", o.base)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(download(&location).await.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // The channel's files list it.
    let (s, list) = o.get(&format!("/v1/channels/{general}/files"), &bob).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["files"][0]["id"], id.as_str());
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_share_leaves_the_file_to_share_again() {
    let o = Rig::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (_, bob) = o.user(&admin, "bob").await;
    let elsewhere = o.channel(&admin, "elsewhere", false).await;
    let declared = o.declare(&bob, "x.pdf", 3, "application/pdf").await;
    let id = declared["file"]["id"].as_str().unwrap().to_string();
    assert!(upload(&declared["upload"], b"xyz".to_vec()).await.is_success());
    // Posting needs membership, as for any message.
    let (s, v) = o.complete(&bob, &id, &elsewhere, "m1").await;
    assert_eq!((s, &v["error"]["code"]), (StatusCode::FORBIDDEN, &json!("not_member")), "{v}");
    // Refused by the sequencer itself: no such thread root.
    let path = format!("/v1/files/{id}/complete");
    let body = json!({ "channel": general, "client_msg_id": "m2", "thread_root": 99 });
    let (s, v) = o.post(&path, &bob, body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Neither left the file claimed.
    let (s, v) = o.complete(&bob, &id, &general, "m3").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["message"]["files"][0]["id"], id.as_str());
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_those_who_see_the_conversation_see_the_file() {
    let o = Rig::start().await;
    let (admin, _) = o.workspace("acme").await;
    let (bob_id, bob) = o.user(&admin, "bob").await;
    let (_, carol) = o.user(&admin, "carol").await;
    let secret = o.channel(&admin, "secret", true).await;
    let (s, v) = o.post(&format!("/v1/channels/{secret}/members"), &admin, json!({ "user": bob_id })).await;
    assert!(s.is_success(), "{v}");
    let (id, _) = o.share(&admin, &secret, b"for members only", "plan.pdf").await;
    let (other_admin, _) = o.workspace("other").await;

    let (s, v) = o.get(&format!("/v1/files/{id}"), &bob).await;
    assert_eq!(s, StatusCode::OK, "a member sees it: {v}");
    for (who, token) in [("a non-member", &carol), ("another workspace", &other_admin)] {
        for path in [format!("/v1/files/{id}"), format!("/v1/files/{id}/content")] {
            let (s, v) = o.get(&path, token).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{who} on {path}: {v}");
            assert_eq!(v["error"]["code"], "not_found");
        }
        let (s, _) = o.call(Method::DELETE, &format!("/v1/files/{id}"), token, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{who} cannot delete it");
    }
    let (s, _) = o.get(&format!("/v1/channels/{secret}/files"), &carol).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a private channel's files are as invisible as the channel");

    // Removed from the channel, bob loses the file at once.
    let (s, v) = o.call(Method::DELETE, &format!("/v1/channels/{secret}/members/{bob_id}"), &admin, None).await;
    assert!(s.is_success(), "{v}");
    let (s, _) = o.get(&format!("/v1/files/{id}"), &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A pending file is its uploader's alone.
    let declared = o.declare(&admin, "draft.txt", 3, "text/plain").await;
    let pending = declared["file"]["id"].as_str().unwrap();
    assert_eq!(o.get(&format!("/v1/files/{pending}"), &admin).await.0, StatusCode::OK);
    assert_eq!(o.get(&format!("/v1/files/{pending}"), &carol).await.0, StatusCode::NOT_FOUND);
    let general_of_carol = o.get("/v1/channels", &carol).await.1["channels"][0]["id"].as_str().unwrap().to_string();
    let (s, _) = o.complete(&carol, pending, &general_of_carol, "steal").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "only the uploader may complete");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_file_or_its_message_ends_access() {
    let o = Rig::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (_, bob) = o.user(&admin, "bob").await;
    let (first, _) = o.share(&bob, &general, b"one", "one.pdf").await;
    let (second, done) = o.share(&bob, &general, b"two", "two.pdf").await;
    let seq = done["seq"].as_u64().unwrap();
    let second_url =
        o.get(&format!("/v1/files/{second}"), &admin).await.1["download"]["url"].as_str().unwrap().to_string();
    let url = o.get(&format!("/v1/files/{first}"), &admin).await.1["download"]["url"].as_str().unwrap().to_string();

    // The file: its uploader deletes it; nobody reads it any more, and the object is gone.
    let (s, v) = o.call(Method::DELETE, &format!("/v1/files/{first}"), &bob, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["file"]["state"], "deleted");
    assert_eq!(o.get(&format!("/v1/files/{first}"), &admin).await.0, StatusCode::NOT_FOUND);
    assert_eq!(o.get(&format!("/v1/files/{first}"), &bob).await.0, StatusCode::NOT_FOUND);
    assert_eq!(download(&url).await.status(), StatusCode::NOT_FOUND, "the object was deleted");

    // The message: deleting it hides its file at once.
    let (s, v) = o.call(Method::DELETE, &format!("/v1/channels/{general}/messages/{seq}"), &bob, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["message"].get("files").is_none(), "a tombstone carries no files: {v}");
    assert_eq!(o.get(&format!("/v1/files/{second}"), &admin).await.0, StatusCode::NOT_FOUND);
    assert_eq!(o.get(&format!("/v1/files/{second}"), &bob).await.0, StatusCode::NOT_FOUND);
    assert_eq!(download(&second_url).await.status(), StatusCode::NOT_FOUND, "its object went with it");
    let (_, list) = o.get(&format!("/v1/channels/{general}/files"), &admin).await;
    assert_eq!(list["files"], json!([]), "{list}");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_uploader_or_an_admin_deletes() {
    let o = Rig::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (_, bob) = o.user(&admin, "bob").await;
    let (_, carol) = o.user(&admin, "carol").await;
    let (id, _) = o.share(&bob, &general, b"bob's", "b.pdf").await;
    let (s, v) = o.call(Method::DELETE, &format!("/v1/files/{id}"), &carol, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(o.get(&format!("/v1/files/{id}"), &carol).await.0, StatusCode::OK, "still there");
    let (s, v) = o.call(Method::DELETE, &format!("/v1/files/{id}"), &admin, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(o.get(&format!("/v1/files/{id}"), &carol).await.0, StatusCode::NOT_FOUND);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_other_than_declared_are_refused() {
    let o = Rig::start().await;
    let (admin, general) = o.workspace("acme").await;
    let declared = o.declare(&admin, "a.pdf", 10, "application/pdf").await;
    let up = &declared["upload"];
    // More bytes, or another type, than the URL was signed for: S3 refuses.
    assert!(!upload(up, vec![1; 11]).await.is_success(), "a longer upload is refused");
    assert!(!upload_with(up, vec![1; 10], &[("content-type", "text/html")]).await.is_success());

    // An object that is there but not as declared (written past the URL, e.g. by another
    // client of the bucket): complete fails, the object is removed, the file failed.
    let id = declared["file"]["id"].as_str().unwrap().to_string();
    let key = up["url"]
        .as_str()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .split(&format!("/{DEFAULT_BUCKET}/"))
        .nth(1)
        .unwrap()
        .to_string();
    let object = o._dir.path().join("s3").join(DEFAULT_BUCKET).join(&key);
    let wrong = o.declare(&admin, "b.pdf", 4, "application/pdf").await;
    assert!(upload(&wrong["upload"], b"four".to_vec()).await.is_success());
    // Move the 4-byte object under the 10-byte file's key, the way a stray writer would.
    let wrong_key = wrong["upload"]["url"]
        .as_str()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .split(&format!("/{DEFAULT_BUCKET}/"))
        .nth(1)
        .unwrap()
        .to_string();
    let wrong_object = o._dir.path().join("s3").join(DEFAULT_BUCKET).join(&wrong_key);
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::copy(&wrong_object, &object).unwrap();
    let (s, v) = o.complete(&admin, &id, &general, "m1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not what was declared"), "{v}");
    assert!(!object.exists(), "the mismatched object was deleted");
    let (s, v) = o.complete(&admin, &id, &general, "m1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a failed file stays failed: {v}");
    let (_, h) = o.get(&format!("/v1/channels/{general}/messages"), &admin).await;
    assert!(h["messages"].as_array().unwrap().iter().all(|m| m.get("files").is_none()), "no message: {h}");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_expire() {
    let o = Rig::start_with(|c| {
        c.files.upload_url_secs = 1;
        c.files.download_url_secs = 1;
    })
    .await;
    let (admin, general) = o.workspace("acme").await;
    let declared = o.declare(&admin, "late.pdf", 4, "application/pdf").await;
    let (id, _) = o.share(&admin, &general, b"fast", "fast.pdf").await;
    let url = o.get(&format!("/v1/files/{id}"), &admin).await.1["download"]["url"].as_str().unwrap().to_string();
    assert_eq!(download(&url).await.status(), StatusCode::OK, "valid at first");
    // Past their one-second lifetime (SigV4 counts whole seconds).
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(upload(&declared["upload"], b"late".to_vec()).await, StatusCode::FORBIDDEN);
    assert_eq!(download(&url).await.status(), StatusCode::FORBIDDEN);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_and_workspace_quota() {
    let o = Rig::start_with(|c| {
        c.files.max_bytes = 1_000;
        c.files.workspace_quota_bytes = 2_500;
    })
    .await;
    let (admin, _) = o.workspace("acme").await;
    let (s, v) =
        o.post("/v1/files", &admin, json!({ "name": "big", "size": 1_001, "content_type": "text/plain" })).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "too_large");
    let a = o.declare(&admin, "a", 1_000, "text/plain").await;
    o.declare(&admin, "b", 1_000, "text/plain").await;
    let (s, v) = o.post("/v1/files", &admin, json!({ "name": "c", "size": 600, "content_type": "text/plain" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "pending uploads count against the quota: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("quota"), "{v}");
    // Another workspace has its own quota.
    let (other, _) = o.workspace("other").await;
    o.declare(&other, "c", 1_000, "text/plain").await;
    // Deleting a file gives its bytes back.
    let a_id = a["file"]["id"].as_str().unwrap();
    assert_eq!(o.call(Method::DELETE, &format!("/v1/files/{a_id}"), &admin, None).await.0, StatusCode::OK);
    o.declare(&admin, "c", 600, "text/plain").await;
    // Declarations that do not parse or break a rule change nothing.
    for bad in [
        json!({ "name": "x", "size": -1, "content_type": "text/plain" }),
        json!({ "name": "x", "size": 1, "content_type": "not a type" }),
        json!({ "name": "x", "size": 1 }),
    ] {
        assert_eq!(o.post("/v1/files", &admin, bad.clone()).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_off_answer_404() {
    let dir = tempfile::tempdir().unwrap();
    let o = Rig::run(config(&dir), None, dir).await;
    let (admin, general) = o.workspace("acme").await;
    for (method, path) in [
        (Method::POST, "/v1/files".to_string()),
        (Method::GET, "/v1/files/F0123456789AB".to_string()),
        (Method::GET, "/v1/files/F0123456789AB/content".to_string()),
        (Method::POST, "/v1/files/F0123456789AB/complete".to_string()),
        (Method::DELETE, "/v1/files/F0123456789AB".to_string()),
        (Method::GET, format!("/v1/channels/{general}/files")),
    ] {
        for token in [admin.as_str(), "no-token"] {
            let (s, v) = o.call(method.clone(), &path, token, Some(json!({}))).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
            assert_eq!(v["error"]["message"], "files are not enabled on this origin");
        }
    }
    let (s, v) = o.get("/readyz", &admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.get("files").is_none(), "{v}");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bucket_stops_the_start_and_readyz_tells() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Local::start(Options::new(dir.path().join("s3"))).await.unwrap();
    let mut c = config(&dir);
    c.files.enabled = true;
    c.files.endpoint = Some(s3.endpoint());
    c.files.path_style = true;
    c.files.access_key_id = Some(DEFAULT_ACCESS_KEY.into());
    c.files.secret_access_key = Some(DEFAULT_SECRET_KEY.into());
    c.files.bucket = "no-such-bucket".into();
    let err = selvage_origin::start(c.clone(), CancellationToken::new()).await.err().expect("no start");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");

    c.files.bucket = DEFAULT_BUCKET.into();
    let o = Rig::run(c, Some(s3), dir).await;
    let (s, v) = o.get("/readyz", "").await;
    assert_eq!((s, &v["files"]), (StatusCode::OK, &json!(true)), "{v}");
    // The endpoint goes away: not ready, and says why.
    let mut o = o;
    o.s3.take().unwrap().shutdown().await;
    let (s, v) = o.get("/readyz", "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["files"], false);
    assert!(v["error"]["message"].as_str().unwrap().contains("files bucket"), "{v}");
    o.stop().await;
}
