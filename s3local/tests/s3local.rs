//! s3local against the real `aws-sdk-s3` client and plain HTTP (presigned URLs), as the origin
//! and browsers will use it. Each test starts its own endpoint on port 0 in a temp directory.

use std::time::Duration;

use aws_sdk_s3::{
    config::{BehaviorVersion, Credentials, Region},
    error::{ProvideErrorMetadata, SdkError},
    presigning::{PresignedRequest, PresigningConfig},
    primitives::ByteStream,
    Client,
};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use selvage_s3local::{Options, S3Local, DEFAULT_ACCESS_KEY, DEFAULT_BUCKET, DEFAULT_REGION, DEFAULT_SECRET_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUCKET: &str = DEFAULT_BUCKET;

async fn start(root: &std::path::Path) -> S3Local {
    S3Local::start(Options::new(root)).await.expect("s3local starts")
}

/// The SDK client as the origin builds it: static credentials, path-style, our endpoint.
fn client_with_secret(s3: &S3Local, secret_key: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(DEFAULT_REGION))
        .endpoint_url(s3.endpoint())
        .force_path_style(true)
        .credentials_provider(Credentials::new(DEFAULT_ACCESS_KEY, secret_key, None, None, "s3local-test"))
        .http_client(http)
        .build();
    Client::from_conf(config)
}

fn client(s3: &S3Local) -> Client {
    client_with_secret(s3, DEFAULT_SECRET_KEY)
}

fn presigning(secs: u64) -> PresigningConfig {
    PresigningConfig::expires_in(Duration::from_secs(secs)).expect("valid presigning duration")
}

/// Sends a presigned request with the headers it was signed with, plus `extra` ones.
fn send(presigned: &PresignedRequest, extra: &[(&str, &str)], body: Vec<u8>) -> reqwest::RequestBuilder {
    send_replacing(presigned, &[], extra, body)
}

/// Like [`send`], but leaves out the signed headers named in `drop` (`content-length` left out
/// means reqwest sends the body's real length).
fn send_replacing(
    presigned: &PresignedRequest,
    drop: &[&str],
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let method = reqwest::Method::from_bytes(presigned.method().as_bytes()).expect("method");
    let mut request = reqwest::Client::new().request(method, presigned.uri());
    let kept = presigned.headers().filter(|(name, _)| !drop.iter().any(|d| d.eq_ignore_ascii_case(name)));
    for (name, value) in kept.chain(extra.iter().copied()) {
        request = request.header(name, value);
    }
    request.body(body)
}

async fn presign_put(client: &Client, key: &str, len: usize, content_type: &str, secs: u64) -> PresignedRequest {
    client
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .content_length(len as i64)
        .content_type(content_type)
        .presigned(presigning(secs))
        .await
        .expect("presign put")
}

async fn object(client: &Client, key: &str) -> Option<Vec<u8>> {
    match client.get_object().bucket(BUCKET).key(key).send().await {
        Ok(out) => Some(out.body.collect().await.expect("body").to_vec()),
        Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => None,
        Err(e) => panic!("get {key}: {e:?}"),
    }
}

/// The HTTP status of a failed SDK call, when the server answered.
fn status<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn put_get_head_list_delete_through_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let c = client(&s3);

    let body = b"hello, selvage".to_vec();
    c.put_object()
        .bucket(BUCKET)
        .key("ws/1/a.txt")
        .content_type("text/plain")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put");
    c.put_object().bucket(BUCKET).key("ws/1/b.bin").body(ByteStream::from(vec![7u8; 70_000])).send().await.unwrap();

    let got = c.get_object().bucket(BUCKET).key("ws/1/a.txt").send().await.expect("get");
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(got.body.collect().await.unwrap().to_vec(), body);

    let head = c.head_object().bucket(BUCKET).key("ws/1/b.bin").send().await.expect("head");
    assert_eq!(head.content_length(), Some(70_000));

    let listed = c.list_objects_v2().bucket(BUCKET).prefix("ws/1/").send().await.expect("list");
    let mut keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ws/1/a.txt", "ws/1/b.bin"]);

    c.delete_object().bucket(BUCKET).key("ws/1/a.txt").send().await.expect("delete");
    assert_eq!(object(&c, "ws/1/a.txt").await, None);
    let err = c.head_object().bucket(BUCKET).key("ws/1/a.txt").send().await.expect_err("deleted");
    assert_eq!(status(&err), Some(404));
    assert_eq!(object(&c, "ws/1/b.bin").await, Some(vec![7u8; 70_000]));

    s3.shutdown().await;
}

#[tokio::test]
async fn presigned_put_then_sdk_get() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let c = client(&s3);
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();

    let put = presign_put(&c, "up/photo.png", body.len(), "image/png", 60).await;
    // The length and type are bound into the signature: that is what lets the origin cap uploads.
    let signed = put.uri().split("X-Amz-SignedHeaders=").nth(1).unwrap().split('&').next().unwrap();
    assert_eq!(signed, "content-length%3Bcontent-type%3Bhost", "{}", put.uri());
    let resp = send(&put, &[], body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);

    let got = c.get_object().bucket(BUCKET).key("up/photo.png").send().await.expect("get");
    assert_eq!(got.content_type(), Some("image/png"));
    assert_eq!(got.body.collect().await.unwrap().to_vec(), body);
    s3.shutdown().await;
}

#[tokio::test]
async fn presigned_get_with_response_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let c = client(&s3);
    c.put_object()
        .bucket(BUCKET)
        .key("f/report")
        .content_type("application/octet-stream")
        .body(ByteStream::from_static(b"%PDF-1.7"))
        .send()
        .await
        .unwrap();

    let get = c
        .get_object()
        .bucket(BUCKET)
        .key("f/report")
        .response_content_type("application/pdf")
        .response_content_disposition("attachment; filename=\"report.pdf\"")
        .presigned(presigning(60))
        .await
        .unwrap();
    let resp = send(&get, &[], Vec::new()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/pdf");
    assert_eq!(resp.headers()["content-disposition"], "attachment; filename=\"report.pdf\"");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"%PDF-1.7");
    s3.shutdown().await;
}

#[tokio::test]
async fn presigned_put_with_other_length_or_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let c = client(&s3);

    // The wire carries the body's real length, not the signed one.
    let put = presign_put(&c, "up/long", 5, "image/png", 60).await;
    let resp = send_replacing(&put, &["content-length"], &[], b"123456".to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert_eq!(object(&c, "up/long").await, None);

    let put = presign_put(&c, "up/short", 5, "image/png", 60).await;
    let resp = send_replacing(&put, &["content-length"], &[], b"1234".to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(object(&c, "up/short").await, None);

    let put = presign_put(&c, "up/typed", 5, "image/png", 60).await;
    let resp = send_replacing(&put, &["content-type"], &[("content-type", "text/html")], b"12345".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert_eq!(object(&c, "up/typed").await, None);

    // The same URL with what was signed goes through: the refusals above were for the mismatch.
    let resp = send(&put, &[], b"12345".to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(object(&c, "up/typed").await, Some(b"12345".to_vec()));
    s3.shutdown().await;
}

/// The HTTP/1.1 head of a presigned request: its signed headers, then `extra` (whole lines).
fn raw_head(s3: &S3Local, presigned: &PresignedRequest, extra: &str) -> String {
    let path_and_query = presigned.uri().strip_prefix(&s3.endpoint()).expect("uri on the endpoint");
    let mut head = format!("{} {path_and_query} HTTP/1.1\r\nhost: {}\r\n", presigned.method(), s3.addr());
    for (name, value) in presigned.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    head
}

/// Sends a presigned request over a raw socket with exactly `body` after the signed headers
/// (whatever Content-Length they say), hangs up its sending side when `hang_up`, and returns
/// the answer.
async fn raw_send(s3: &S3Local, presigned: &PresignedRequest, body: &[u8], hang_up: bool) -> String {
    let head = raw_head(s3, presigned, "connection: close\r\n");
    let mut stream = tokio::net::TcpStream::connect(s3.addr()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    if hang_up {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("server answers")
        .expect("read answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that sends the signed Content-Length but fewer bytes, then hangs up: nothing stored.
#[tokio::test]
async fn presigned_put_cut_short_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let c = client(&s3);

    let put = presign_put(&c, "up/cut", 10, "image/png", 60).await;
    let answer = raw_send(&s3, &put, b"12345", true).await;
    // s3s answers 500 InternalError here (S3 says 400 IncompleteBody); the client has hung up.
    assert!(answer.starts_with("HTTP/1.1 5") || answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert_eq!(object(&c, "up/cut").await, None);
    let leftovers: Vec<_> = std::fs::read_dir(s3.root())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "partial upload left behind: {leftovers:?}");

    // The same raw request with every byte is stored: the refusal was for the missing bytes.
    let answer = raw_send(&s3, &put, b"1234567890", false).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(object(&c, "up/cut").await, Some(b"1234567890".to_vec()));
    s3.shutdown().await;
}

#[tokio::test]
async fn presigned_url_refused_once_expired() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let c = client(&s3);
    let put = presign_put(&c, "up/late", 5, "image/png", 1).await;
    // Expiry is checked against the wall clock (X-Amz-Date has 1 s resolution): no paused clock.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resp = send(&put, &[], b"12345".to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("expired"), "{text}");
    assert_eq!(object(&c, "up/late").await, None);
    s3.shutdown().await;
}

#[tokio::test]
async fn wrong_secret_and_unsigned_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let good = client(&s3);
    good.put_object().bucket(BUCKET).key("k").body(ByteStream::from_static(b"v")).send().await.unwrap();

    let bad = client_with_secret(&s3, "not-the-secret");
    let err = bad.get_object().bucket(BUCKET).key("k").send().await.expect_err("wrong secret");
    assert_eq!(status(&err), Some(403));
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"));
    let err =
        bad.put_object().bucket(BUCKET).key("k").body(ByteStream::from_static(b"w")).send().await.expect_err("put");
    assert_eq!(status(&err), Some(403));

    let resp = reqwest::get(format!("{}/{BUCKET}/k", s3.endpoint())).await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = reqwest::Client::new().put(format!("{}/{BUCKET}/k", s3.endpoint())).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 403);

    assert_eq!(object(&good, "k").await, Some(b"v".to_vec()));
    s3.shutdown().await;
}

#[tokio::test]
async fn presigned_url_for_another_key_or_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let c = client(&s3);

    // Signed for one key, used for another: the path is part of the signature.
    let put = presign_put(&c, "up/mine", 3, "text/plain", 60).await;
    assert!(put.uri().contains("/up/mine?"), "{}", put.uri());
    let mut request = reqwest::Client::new().put(put.uri().replacen("/up/mine?", "/up/theirs?", 1));
    for (name, value) in put.headers() {
        request = request.header(name, value);
    }
    let resp = request.body(b"abc".to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(object(&c, "up/theirs").await, None);

    // Signed with a secret the server does not hold.
    let forged = presign_put(&client_with_secret(&s3, "not-the-secret"), "up/mine", 3, "text/plain", 60).await;
    let resp = send(&forged, &[], b"abc".to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert_eq!(object(&c, "up/mine").await, None);
    s3.shutdown().await;
}

/// Shutdown stops accepting at once but lets an upload already under way finish.
#[tokio::test]
async fn shutdown_drains_an_upload_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let addr = s3.addr();
    let put = presign_put(&client(&s3), "up/slow", 10, "image/png", 60).await;

    let head = raw_head(&s3, &put, "");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"12345").await.unwrap();

    let stopping = tokio::spawn(s3.shutdown());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting after shutdown began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stopping.is_finished(), "shutdown finished with an upload in flight");

    stream.write_all(b"67890").await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("shutdown finishes once drained").unwrap();

    let s3 = start(dir.path()).await;
    assert_eq!(object(&client(&s3), "up/slow").await, Some(b"1234567890".to_vec()));
    s3.shutdown().await;
}

#[tokio::test]
async fn dropping_the_endpoint_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let addr = s3.addr();
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(s3);
    // The accept loop stops on its own task: wait for the port to close, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting 10 s after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cors_preflight_and_cross_origin_put() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    let c = client(&s3);
    let put = presign_put(&c, "up/web", 3, "text/plain", 60).await;
    let origin = "http://localhost:5173";

    let resp = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, put.uri())
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(resp.headers()["access-control-allow-origin"], origin);
    assert!(resp.headers()["access-control-allow-methods"].to_str().unwrap().contains("PUT"));
    assert_eq!(resp.headers()["access-control-allow-headers"], "content-type");

    let resp = send(&put, &[("origin", origin)], b"hi!".to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], origin);
    assert!(resp.headers()["access-control-expose-headers"].to_str().unwrap().contains("ETag"));
    assert_eq!(object(&c, "up/web").await, Some(b"hi!".to_vec()));
    s3.shutdown().await;
}

#[tokio::test]
async fn restart_on_the_same_root_keeps_objects() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start(dir.path()).await;
    client(&s3)
        .put_object()
        .bucket(BUCKET)
        .key("keep/me")
        .body(ByteStream::from_static(b"still here"))
        .send()
        .await
        .unwrap();
    let first = s3.addr();
    s3.shutdown().await;

    let s3 = start(dir.path()).await;
    let c = client(&s3);
    assert_eq!(object(&c, "keep/me").await, Some(b"still here".to_vec()));
    // shutdown() returned after the listener closed.
    if first != s3.addr() {
        assert!(tokio::net::TcpStream::connect(first).await.is_err());
    }
    s3.shutdown().await;
}

#[tokio::test]
async fn configured_buckets_are_created_and_bad_options_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::new(dir.path().join("nested/root"));
    options.buckets = vec!["avatars".into(), "files".into()];
    options.access_key = "ak".into();
    options.secret_key = "sk".into();
    let s3 = S3Local::start(options.clone()).await.unwrap();
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));

    let c = {
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(DEFAULT_REGION))
                .endpoint_url(s3.endpoint())
                .force_path_style(true)
                .credentials_provider(Credentials::new("ak", "sk", None, None, "test"))
                .http_client(http)
                .build(),
        )
    };
    let buckets = c.list_buckets().send().await.expect("list buckets");
    let mut names: Vec<_> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    names.sort_unstable();
    assert_eq!(names, ["avatars", "files"]);
    s3.shutdown().await;

    options.buckets = vec!["../escape".into()];
    assert!(matches!(S3Local::start(options).await, Err(selvage_s3local::Error::Options(_))));
}

/// Health checks cannot sign: an unsigned `GET /healthz` answers 200, any other unsigned
/// request is still refused, and a signed request to that path still reaches S3 (a bucket
/// named `healthz`).
#[tokio::test]
async fn unsigned_healthz_answers_for_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::new(dir.path());
    options.buckets = vec![BUCKET.into(), "healthz".into()];
    let s3 = S3Local::start(options).await.unwrap();
    let http = reqwest::Client::new();
    let health = http.get(format!("{}/healthz", s3.endpoint())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    let head = http.head(format!("{}/healthz", s3.endpoint())).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let unsigned = http.get(format!("{}/{BUCKET}", s3.endpoint())).send().await.unwrap();
    assert_eq!(unsigned.status(), 403, "other unsigned requests are refused as before");
    let put = http.put(format!("{}/healthz", s3.endpoint())).send().await.unwrap();
    assert_eq!(put.status(), 403, "only GET and HEAD are health checks");

    let c = client(&s3);
    c.put_object().bucket("healthz").key("k").body(ByteStream::from_static(b"v")).send().await.unwrap();
    let listed = c.list_objects_v2().bucket("healthz").send().await.expect("a signed request reaches S3");
    assert_eq!(listed.contents().iter().filter_map(|o| o.key()).collect::<Vec<_>>(), ["k"]);
    s3.shutdown().await;
}
