//! The files service end to end (ARCHITECTURE §8 "Files"): a real origin on port 0 over a
//! real embedded store in a temporary directory, and a real S3 endpoint. Bytes go to and from
//! the object store through the presigned URLs the origin hands out, with plain HTTP, as a
//! client would send them.
//!
//! The endpoint is an s3local of each test's own on port 0, unless `SELVAGE_TEST_S3_ENDPOINT`
//! names another S3 implementation (CI runs these tests against moto's server too, so the
//! origin does not lean on one server's leniency). Such an endpoint is shared: each test makes
//! its own bucket there, signing with `SELVAGE_TEST_S3_ACCESS_KEY`, `_SECRET_KEY` and
//! `_REGION` (defaults any credential-blind server such as moto takes), path-style. The few
//! checks an implementation does not make are skipped for it with a line saying so.

use std::{
    ops::Deref,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, SystemTime},
};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use reqwest::{Method, StatusCode};
use selvage_origin::OriginConfig;
use selvage_s3local::{Options, S3Local, DEFAULT_ACCESS_KEY, DEFAULT_REGION, DEFAULT_SECRET_KEY};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

mod support;

use support::{upload, upload_with, Origin};

/// The S3 endpoint of one test, and a bucket of its own there.
struct Store {
    endpoint: String,
    region: String,
    access_key: String,
    secret_key: String,
    bucket: String,
    /// An SDK client of the endpoint, for what the tests do behind the origin's back.
    client: aws_sdk_s3::Client,
    /// The s3local serving `endpoint`, unless it came from the environment.
    local: Option<S3Local>,
}

impl Store {
    /// `SELVAGE_TEST_S3_ENDPOINT`'s store, else a fresh s3local under `dir`; with a new bucket.
    async fn start(dir: &std::path::Path) -> Store {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        let (endpoint, region, access_key, secret_key, local) = match std::env::var("SELVAGE_TEST_S3_ENDPOINT") {
            Ok(endpoint) => (
                endpoint.trim_end_matches('/').to_string(),
                var("SELVAGE_TEST_S3_REGION", "us-east-1"),
                var("SELVAGE_TEST_S3_ACCESS_KEY", "selvage-test"),
                var("SELVAGE_TEST_S3_SECRET_KEY", "selvage-test-secret"),
                None,
            ),
            Err(_) => {
                let s3 = S3Local::start(Options::new(dir.join("s3"))).await.unwrap();
                let endpoint = s3.endpoint();
                (endpoint, DEFAULT_REGION.into(), DEFAULT_ACCESS_KEY.into(), DEFAULT_SECRET_KEY.into(), Some(s3))
            }
        };
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(&access_key, &secret_key, None, None, "selvage-tests"))
            .http_client(http)
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        // Unique on a shared endpoint: this process, this test, this moment.
        static BUCKETS: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
        let bucket = format!("selvage-t{}-{}-{nanos}", std::process::id(), BUCKETS.fetch_add(1, Ordering::Relaxed));
        let store = Store { endpoint, region, access_key, secret_key, bucket, client, local };
        store.create_bucket().await;
        store
    }

    /// Whether this is the in-process s3local (else the endpoint named by the environment).
    fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The name the printed skip lines give the endpoint.
    fn name(&self) -> String {
        match self.local {
            Some(_) => "s3local".into(),
            None => format!("the S3 endpoint at {}", self.endpoint),
        }
    }

    /// Turns files on in `config`, against this store and bucket.
    fn configure(&self, config: &mut OriginConfig) {
        config.files.enabled = true;
        config.files.endpoint = Some(self.endpoint.clone());
        config.files.region = self.region.clone();
        config.files.bucket = self.bucket.clone();
        config.files.path_style = true;
        config.files.access_key_id = Some(self.access_key.clone());
        config.files.secret_access_key = Some(self.secret_key.clone());
    }

    async fn create_bucket(&self) {
        let made = self.client.create_bucket().bucket(&self.bucket).send().await;
        made.map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string()).expect("create the test's bucket");
    }

    async fn delete_bucket(&self) {
        let gone = self.client.delete_bucket().bucket(&self.bucket).send().await;
        gone.map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string()).expect("delete the test's bucket");
    }

    /// Writes `bytes` under `key` with the SDK, not through any URL the origin signed.
    async fn put(&self, key: &str, bytes: &[u8]) {
        let put = self.client.put_object().bucket(&self.bucket).key(key).body(bytes.to_vec().into()).send().await;
        put.map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string()).expect("put an object");
    }

    /// The length of the object under `key`, `None` when there is none.
    async fn size(&self, key: &str) -> Option<i64> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(head) => head.content_length(),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => None,
            Err(e) => panic!("HEAD {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)),
        }
    }

    /// Asserts `holds` (`what`) on s3local. Another endpoint may not enforce it, for the reason
    /// `moto` gives for moto (CI's other implementation): then says so and what it answered.
    fn enforces(&self, holds: bool, what: &str, moto: &str, answered: impl std::fmt::Display) {
        if self.is_local() {
            assert!(holds, "{what}: answered {answered}");
        } else if !holds {
            println!("not enforced by {}: {what} ({moto}); it answered {answered}", self.name());
        }
    }

    /// Checks the answer to a presigned GET of a deleted object: s3local says `404`, as S3
    /// does when the signer may list the bucket. Without that right S3 says `403`, and so does
    /// moto for another reason: a signed GET of a missing key must carry every `response-*`
    /// override it names as a request header too, or moto answers `403 SignatureDoesNotMatch`.
    fn gone_answer(&self, status: StatusCode, what: &str) {
        if self.is_local() {
            assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
        } else {
            assert!([StatusCode::NOT_FOUND, StatusCode::FORBIDDEN].contains(&status), "{what}: {status}");
            if status != StatusCode::NOT_FOUND {
                println!("{} answers {status} where s3local answers 404: {what}", self.name());
            }
        }
    }

    /// The key a presigned URL of this store's bucket names.
    fn key_of(&self, url: &str) -> String {
        let path = url.split('?').next().unwrap();
        let key = path.split(&format!("/{}/", self.bucket)).nth(1).unwrap_or_else(|| panic!("no key in {url}"));
        key.to_string()
    }

    async fn stop(mut self) {
        if let Some(s3) = self.local.take() {
            s3.shutdown().await;
        }
    }
}

struct Rig {
    origin: Origin,
    store: Option<Store>,
    _dir: tempfile::TempDir,
}

impl Deref for Rig {
    type Target = Origin;

    fn deref(&self) -> &Origin {
        &self.origin
    }
}

impl Rig {
    /// An origin with files on, against a bucket of its own (see [`Store::start`]).
    async fn start() -> Rig {
        Rig::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut OriginConfig)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::start(dir.path()).await;
        let mut config = config(&dir);
        store.configure(&mut config);
        tweak(&mut config);
        Rig::run(config, Some(store), dir).await
    }

    async fn run(config: OriginConfig, store: Option<Store>, dir: tempfile::TempDir) -> Rig {
        Rig { origin: Origin::start(config).await, store, _dir: dir }
    }

    /// Whether `/readyz` says ready, checking that it says so with the files probe and, when
    /// not, says why.
    async fn files_ready(&self, what: &str) -> bool {
        let (s, v) = self.get("/readyz", "").await;
        if s == StatusCode::OK {
            assert_eq!(v["files"], true, "{what}: {v}");
        } else {
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{what}: {v}");
            assert_eq!(v["files"], false, "{what}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().contains("files bucket"), "{what}: {v}");
        }
        s == StatusCode::OK
    }

    /// The rig's object store (files are on).
    fn store(&self) -> &Store {
        self.store.as_ref().expect("files are on")
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
        let store = self.store.take();
        self.origin.stop().await;
        if let Some(store) = store {
            store.stop().await;
        }
    }
}

fn config(dir: &tempfile::TempDir) -> OriginConfig {
    support::config(&dir.path().join("origin"))
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

#[tokio::test]
async fn a_shared_file_is_readable_as_soon_as_its_message_can_be_seen() {
    let o = Rig::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (_, bob) = o.user(&admin, "bob").await;
    let declared = o.declare(&admin, "chart.png", 3, "image/png").await;
    let id = declared["file"]["id"].as_str().unwrap().to_string();
    assert!(upload(&declared["upload"], vec![1, 2, 3]).await.is_success());
    let head = o.get("/v1/events", &bob).await.1["cursor"].as_str().unwrap().to_string();
    // Bob waits for the message; the moment it reaches him, he asks for its file. The share is
    // recorded in the message's own transaction, so there is no moment between the two.
    let watch = async {
        let mut cursor = head;
        loop {
            let (_, page) = o.get(&format!("/v1/events?cursor={cursor}&wait_ms=10000"), &bob).await;
            if page["events"].as_array().unwrap().iter().any(|e| e["type"] == "message" && e["files"].is_array()) {
                return o.get(&format!("/v1/files/{id}"), &bob).await;
            }
            cursor = page["cursor"].as_str().unwrap().to_string();
        }
    };
    let ((s, got), (done, _)) = tokio::join!(watch, o.complete(&admin, &id, &general, "m1"));
    assert_eq!(done, StatusCode::CREATED);
    assert_eq!(s, StatusCode::OK, "bob saw the message but not its file: {got}");
    assert_eq!(got["file"]["id"], id.as_str());
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
    assert_eq!(o.store().size(&o.store().key_of(&url)).await, None, "the object was deleted");
    o.store().gone_answer(download(&url).await.status(), "the deleted file's URL");

    // The message: deleting it hides its file at once.
    let (s, v) = o.call(Method::DELETE, &format!("/v1/channels/{general}/messages/{seq}"), &bob, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["message"].get("files").is_none(), "a tombstone carries no files: {v}");
    assert_eq!(o.get(&format!("/v1/files/{second}"), &admin).await.0, StatusCode::NOT_FOUND);
    assert_eq!(o.get(&format!("/v1/files/{second}"), &bob).await.0, StatusCode::NOT_FOUND);
    assert_eq!(o.store().size(&o.store().key_of(&second_url)).await, None, "its object went with it");
    o.store().gone_answer(download(&second_url).await.status(), "the deleted message's file's URL");
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
    // More bytes, or another type, than the URL was signed for: S3 refuses, and keeps nothing.
    let why = "moto checks no presigned URL's signature, so not the length and type signed into it";
    let longer = upload(up, vec![1; 11]).await;
    o.store().enforces(!longer.is_success(), "a longer upload is refused", why, longer);
    let retyped = upload_with(up, vec![1; 10], &[("content-type", "text/html")]).await;
    o.store().enforces(!retyped.is_success(), "an upload of another type is refused", why, retyped);

    // An object that is there but not as declared (written past the URL, e.g. by another
    // client of the bucket): complete fails, the object is removed, the file failed.
    let id = declared["file"]["id"].as_str().unwrap().to_string();
    let key = o.store().key_of(up["url"].as_str().unwrap());
    let kept = o.store().size(&key).await;
    o.store().enforces(kept.is_none(), "the refused uploads stored nothing", why, format!("{kept:?} bytes"));
    o.store().put(&key, b"four").await;
    assert_eq!(o.store().size(&key).await, Some(4));
    let (s, v) = o.complete(&admin, &id, &general, "m1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not what was declared"), "{v}");
    assert_eq!(o.store().size(&key).await, None, "the mismatched object was deleted");
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
    let why = "moto never reads a presigned URL's X-Amz-Expires";
    let late = upload(&declared["upload"], b"late".to_vec()).await;
    o.store().enforces(late == StatusCode::FORBIDDEN, "an expired upload URL is refused with 403", why, late);
    let late = download(&url).await.status();
    o.store().enforces(late == StatusCode::FORBIDDEN, "an expired download URL is refused with 403", why, late);
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
        let (s, v) = o.call(method.clone(), &path, &admin, Some(json!({}))).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert_eq!(v["error"]["message"], "files are not enabled on this origin");
        // The token is checked first, as on every route: a wrong one is told so, not 404.
        let (s, v) = o.call(method.clone(), &path, "no-token", Some(json!({}))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
    }
    let (s, v) = o.get("/readyz", &admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.get("files").is_none(), "{v}");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bucket_stops_the_start_and_readyz_tells() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path()).await;
    let mut c = config(&dir);
    store.configure(&mut c);
    let missing = format!("{}-none", store.bucket);
    c.files.bucket = missing.clone();
    let err = selvage_origin::start(c.clone(), CancellationToken::new()).await.err().expect("no start");
    assert!(err.to_string().contains(&missing), "{err}");

    c.files.bucket = store.bucket.clone();
    let mut o = Rig::run(c, Some(store), dir).await;
    assert!(o.files_ready("started").await);
    // The bucket goes away: not ready, and says why; it comes back: ready again.
    o.store().delete_bucket().await;
    assert!(!o.files_ready("bucket deleted").await);
    o.store().create_bucket().await;
    assert!(o.files_ready("bucket made again").await);
    // The endpoint goes away (only an s3local of the test's own can be stopped).
    match o.store.as_mut().unwrap().local.take() {
        Some(s3) => {
            s3.shutdown().await;
            assert!(!o.files_ready("endpoint stopped").await);
        }
        None => println!("skipped: a stopped endpoint, since {} is not the test's to stop", o.store().name()),
    }
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_object_store_calls_are_counted() {
    let o = Rig::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (id, _) = o.share(&admin, &general, b"twelve bytes", "notes.pdf").await;
    // An upload other than declared: rejected at complete.
    let declared = o.declare(&admin, "short.pdf", 10, "application/pdf").await;
    let short = declared["file"]["id"].as_str().unwrap();
    o.store().put(&o.store().key_of(declared["upload"]["url"].as_str().unwrap()), b"012").await;
    assert_eq!(o.complete(&admin, short, &general, "short").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(o.call(Method::DELETE, &format!("/v1/files/{id}"), &admin, None).await.0, StatusCode::OK);

    let files = |event: &str| format!("selvage_files_total{{event=\"{event}\"}}");
    assert_eq!(o.metric(&files("declared")).await, 2.0);
    assert_eq!(o.metric(&files("completed")).await, 1.0);
    assert_eq!(o.metric(&files("failed")).await, 1.0);
    assert_eq!(o.metric(&files("deleted")).await, 1.0);
    assert_eq!(o.metric("selvage_files_completed_bytes_total").await, 12.0);
    // Two HEADs (one per complete), the objects' deletes, and the bucket check at start; none
    // failed, and none is running or waiting now.
    assert_eq!(o.metric("selvage_object_store_calls_total{op=\"head\",outcome=\"ok\"}").await, 2.0);
    assert!(o.metric("selvage_object_store_calls_total{op=\"delete\",outcome=\"ok\"}").await >= 2.0);
    assert_eq!(o.metric("selvage_object_store_calls_total{op=\"head_bucket\",outcome=\"ok\"}").await, 1.0);
    assert_eq!(o.metric("selvage_object_store_calls_total{op=\"presign_put\",outcome=\"ok\"}").await, 2.0);
    assert_eq!(o.metric("selvage_object_store_seconds_count{op=\"head\"}").await, 2.0);
    for state in ["running", "waiting"] {
        assert_eq!(o.metric(&format!("selvage_object_store_calls{{state=\"{state}\"}}")).await, 0.0, "{state}");
    }
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_reaches_no_file() {
    let o = Rig::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (_, bob) = o.user(&admin, "bob").await;
    let (id, _) = o.share(&bob, &general, b"bob's file", "bob.pdf").await;
    let declared = o.declare(&bob, "later.pdf", 5, "application/pdf").await;
    let later = declared["file"]["id"].as_str().unwrap().to_string();
    assert!(upload(&declared["upload"], b"later".to_vec()).await.is_success());
    let (s, _) = o.post("/v1/tokens/revoke", &bob, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let requests = [
        (
            Method::POST,
            "/v1/files".to_string(),
            Some(json!({ "name": "x.pdf", "size": 1, "content_type": "application/pdf" })),
        ),
        (
            Method::POST,
            format!("/v1/files/{later}/complete"),
            Some(json!({ "channel": general, "client_msg_id": "x" })),
        ),
        (Method::GET, format!("/v1/files/{id}"), None),
        (Method::GET, format!("/v1/files/{id}/content"), None),
        (Method::GET, format!("/v1/files/{id}/thumbs/360"), None),
        (Method::GET, format!("/v1/channels/{general}/files"), None),
        (Method::DELETE, format!("/v1/files/{id}"), None),
    ];
    for (method, path, body) in requests {
        let (s, v) = o.call(method.clone(), &path, &bob, body).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
    }
    // Nothing changed: the file is still there for the admin, the later upload still pending.
    assert_eq!(o.get(&format!("/v1/files/{id}"), &admin).await.0, StatusCode::OK);
    let (_, list) = o.get(&format!("/v1/channels/{general}/files"), &admin).await;
    assert_eq!(list["files"].as_array().unwrap().len(), 1, "{list}");
    o.stop().await;
}
