//! Thumbnails and the files sweeper end to end (ARCHITECTURE §8 "Files"): real origins on port 0
//! over real embedded stores in temporary directories, a real S3 endpoint (s3local) on port 0,
//! and real images made here with the `image` crate, uploaded through presigned URLs as a
//! client would. One test runs the origin as a child process (this very test binary, re-run on
//! [`child_origin`]) so that it can be killed with SIGKILL in the middle of the worker's work.

use std::{io::Cursor, path::PathBuf, time::Duration};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use image::{codecs::gif::GifEncoder, DynamicImage, ExtendedColorType, ImageBuffer, ImageFormat, Rgb, Rgba};
use reqwest::{Method, StatusCode};
use selvage_origin::OriginConfig;
use selvage_s3local::{Options, S3Local, DEFAULT_ACCESS_KEY, DEFAULT_BUCKET, DEFAULT_REGION, DEFAULT_SECRET_KEY};
use serde_json::{json, Value};

mod support;

use support::{config, upload, Api, Child, Origin};

/// How long the worker may take for what a test waits on (decoding is slow in debug builds).
const DEADLINE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// The rig: an S3 endpoint, an origin's HTTP API, images.

/// The S3 endpoint, and an SDK client of it to look at the bucket behind the origin's back.
struct Bucket {
    server: S3Local,
    client: aws_sdk_s3::Client,
    root: PathBuf,
}

impl Bucket {
    async fn start(root: PathBuf) -> Bucket {
        let server = S3Local::start(Options::new(&root)).await.unwrap();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(DEFAULT_REGION))
            .endpoint_url(server.endpoint())
            .force_path_style(true)
            .credentials_provider(Credentials::new(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, None, None, "test"))
            .http_client(http)
            .build();
        Bucket { server, client: aws_sdk_s3::Client::from_conf(config), root }
    }

    /// Whether the bucket holds `key` (a `HEAD` through the SDK).
    async fn exists(&self, key: &str) -> bool {
        match self.client.head_object().bucket(DEFAULT_BUCKET).key(key).send().await {
            Ok(_) => true,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => false,
            Err(e) => panic!("HEAD {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
        }
    }

    async fn put(&self, key: &str, bytes: &[u8]) {
        let body = bytes.to_vec().into();
        self.client.put_object().bucket(DEFAULT_BUCKET).key(key).body(body).send().await.unwrap();
    }

    /// Where the endpoint keeps `key` on disk.
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(DEFAULT_BUCKET).join(key)
    }

    /// Points an origin's configuration at this endpoint, files on.
    fn configure(&self, config: &mut OriginConfig) {
        config.files.enabled = true;
        config.files.endpoint = Some(self.server.endpoint());
        config.files.region = DEFAULT_REGION.into();
        config.files.bucket = DEFAULT_BUCKET.into();
        config.files.path_style = true;
        config.files.access_key_id = Some(DEFAULT_ACCESS_KEY.into());
        config.files.secret_access_key = Some(DEFAULT_SECRET_KEY.into());
    }
}

/// A file shared in a message.
#[derive(Clone, Debug)]
struct Shared {
    id: String,
    channel: String,
    seq: u64,
    /// The object's key in the bucket.
    key: String,
}

impl Shared {
    /// The key of its thumbnail of `size`, as the origin derives it.
    fn thumb_key(&self, size: u32) -> String {
        let folder = self.key.rsplit_once('/').unwrap().0;
        format!("{folder}.thumb-{size}")
    }
}

impl Api {
    /// The feed's head, to read the events after it later.
    async fn head(&self, token: &str) -> String {
        self.get("/v1/events", token).await.1["cursor"].as_str().unwrap().to_string()
    }

    async fn complete(&self, token: &str, file: &str, channel: &str) -> (StatusCode, Value) {
        let body = json!({ "channel": channel, "client_msg_id": format!("share-{file}") });
        self.post(&format!("/v1/files/{file}/complete"), token, body).await
    }

    /// Declares, uploads and completes a file in `channel`.
    async fn share(&self, token: &str, channel: &str, name: &str, content_type: &str, bytes: &[u8]) -> Shared {
        let declared = self.declare(token, name, bytes.len(), content_type).await;
        let id = declared["file"]["id"].as_str().unwrap().to_string();
        assert!(upload(&declared["upload"], bytes.to_vec()).await.is_success());
        self.complete_shared(token, channel, &id, &declared).await
    }

    /// Completes a declared (and uploaded) file.
    async fn complete_shared(&self, token: &str, channel: &str, id: &str, declared: &Value) -> Shared {
        let (s, v) = self.complete(token, id, channel).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        Shared {
            id: id.to_string(),
            channel: channel.to_string(),
            seq: v["seq"].as_u64().unwrap(),
            key: object_key(&declared["upload"]),
        }
    }

    /// The message carrying `file`, as history shows it.
    async fn message(&self, token: &str, file: &Shared) -> Value {
        let path = format!("/v1/channels/{}/messages?after={}&limit=1", file.channel, file.seq - 1);
        let (s, v) = self.get(&path, token).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let message = v["messages"][0].clone();
        assert_eq!(message["seq"].as_u64(), Some(file.seq), "{v}");
        message
    }

    /// The thumbnails history shows for `file`, `(size, width, height)`.
    async fn history_thumbs(&self, token: &str, file: &Shared) -> Vec<(u32, u32, u32)> {
        let message = self.message(token, file).await;
        let files = message["files"].as_array().unwrap_or_else(|| panic!("no files: {message}"));
        let shown = files.iter().find(|f| f["id"] == file.id.as_str()).unwrap();
        dims(&shown["thumbs"])
    }

    /// Waits until history shows thumbnails for `file`; answers them.
    async fn wait_for_thumbs(&self, token: &str, file: &Shared) -> Vec<(u32, u32, u32)> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let thumbs = self.history_thumbs(token, file).await;
            if !thumbs.is_empty() {
                return thumbs;
            }
            assert!(tokio::time::Instant::now() < deadline, "no thumbnails for {} in time", file.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every event after `cursor` the caller may see.
    async fn events_after(&self, token: &str, cursor: &str) -> Vec<Value> {
        let mut cursor = cursor.to_string();
        let mut events = Vec::new();
        loop {
            let (s, v) = self.get(&format!("/v1/events?cursor={cursor}"), token).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert!(v.get("resync").is_none(), "{v}");
            events.extend(v["events"].as_array().unwrap().iter().cloned());
            let next = v["cursor"].as_str().unwrap();
            if next == cursor {
                return events;
            }
            cursor = next.to_string();
        }
    }

    /// A metric's value for the thumbnail worker, 0 when absent.
    async fn worker_metric(&self, name: &str) -> f64 {
        self.metric(&format!("{name}{{consumer=\"files-thumbs\"}}")).await
    }
}

/// `(size, width, height)` of a JSON list of thumbnails.
fn dims(thumbs: &Value) -> Vec<(u32, u32, u32)> {
    let Some(list) = thumbs.as_array() else { return Vec::new() };
    let n = |t: &Value, k: &str| t[k].as_u64().unwrap() as u32;
    list.iter().map(|t| (n(t, "size"), n(t, "width"), n(t, "height"))).collect()
}

/// The object key an upload URL writes (path-style: `/{bucket}/{key}`; the names used here
/// need no percent-decoding).
fn object_key(upload: &Value) -> String {
    let url = reqwest::Url::parse(upload["url"].as_str().unwrap()).unwrap();
    url.path().strip_prefix(&format!("/{DEFAULT_BUCKET}/")).unwrap().to_string()
}

/// Downloads a presigned URL: the answer's type and the image it decodes to.
async fn fetch_image(url: &str) -> (String, DynamicImage) {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{url}");
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let bytes = resp.bytes().await.unwrap();
    (content_type, image::load_from_memory(&bytes).unwrap())
}

/// A PNG with transparent pixels (its left quarter).
fn png_with_alpha(width: u32, height: u32) -> Vec<u8> {
    let image = ImageBuffer::from_fn(width, height, |x, y| {
        Rgba([(x % 251) as u8, (y % 241) as u8, 120, if x < width / 4 { 0 } else { 255 }])
    });
    encode(DynamicImage::ImageRgba8(image), ImageFormat::Png)
}

fn opaque(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(width, height, |x, y| Rgb([(x % 253) as u8, (y % 239) as u8, 60])))
}

fn png(width: u32, height: u32) -> Vec<u8> {
    encode(opaque(width, height), ImageFormat::Png)
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(opaque(width, height), ImageFormat::Jpeg)
}

/// A lossless WebP.
fn webp(width: u32, height: u32) -> Vec<u8> {
    encode(opaque(width, height), ImageFormat::WebP)
}

fn gif(width: u32, height: u32) -> Vec<u8> {
    let rgba = opaque(width, height).to_rgba8();
    let mut out = Vec::new();
    GifEncoder::new_with_speed(&mut out, 30).encode(rgba.as_raw(), width, height, ExtendedColorType::Rgba8).unwrap();
    out
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A decompression bomb: a valid PNG whose header claims `width` × `height` RGBA pixels (for
/// 100,000 × 100,000, 40 GB), with a few bytes of image data.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &header);
    // A zlib stream of one empty stored block.
    chunk(&mut out, b"IDAT", &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Waits until `cond` holds, failing after [`DEADLINE`].
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks what `GET /v1/files/{id}` hands out for a file with thumbnails: a URL for each, whose
/// image has the dimensions recorded and the type expected.
async fn check_downloads(api: &Api, token: &str, file: &Shared, want: &[(u32, u32, u32)], content_type: &str) {
    let (s, v) = api.get(&format!("/v1/files/{}", file.id), token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["file"]["thumbnail"], "ready", "{v}");
    assert_eq!(dims(&v["file"]["thumbs"]), want, "{v}");
    assert_eq!(dims(&v["thumbs"]), want, "{v}");
    for thumb in v["thumbs"].as_array().unwrap() {
        let (got_type, image) = fetch_image(thumb["download"]["url"].as_str().unwrap()).await;
        assert_eq!(got_type, content_type, "{thumb}");
        let (w, h) = (thumb["width"].as_u64().unwrap() as u32, thumb["height"].as_u64().unwrap() as u32);
        assert_eq!((image.width(), image.height()), (w, h), "{thumb}");
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_get_thumbnails_that_history_events_and_downloads_show() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Bucket::start(dir.path().join("s3")).await;
    let mut c = config(&dir.path().join("origin"));
    bucket.configure(&mut c);
    let node = Origin::start(c).await;
    let api = &node.api;
    let (admin, _) = api.workspace("acme").await;
    let (_, carol) = api.user(&admin, "carol").await;
    let (s, v) = api.post("/v1/channels", &admin, json!({ "name": "design", "private": true })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let design = v["channel"]["id"].as_str().unwrap().to_string();
    let head = api.head(&admin).await;

    let wide = api.share(&admin, &design, "wide.png", "image/png", &png_with_alpha(1600, 900)).await;
    let tall = api.share(&admin, &design, "tall.jpg", "image/jpeg", &jpeg(900, 1200)).await;
    let small = api.share(&admin, &design, "small.png", "image/png", &png(200, 120)).await;
    let anim = api.share(&admin, &design, "anim.gif", "image/gif", &gif(500, 300)).await;
    let web = api.share(&admin, &design, "web.webp", "image/webp", &webp(500, 1000)).await;
    let doc = api.share(&admin, &design, "notes.txt", "text/plain", b"not an image").await;

    // The longer side is the size, the aspect kept; a small image is not enlarged, and gets one
    // thumbnail as it is; sizes past the first that holds an image whole are skipped.
    let expect = [
        (&wide, vec![(360, 360, 203), (1024, 1024, 576)], "image/png"),
        (&tall, vec![(360, 270, 360), (1024, 768, 1024)], "image/jpeg"),
        (&small, vec![(360, 200, 120)], "image/jpeg"),
        (&anim, vec![(360, 360, 216), (1024, 500, 300)], "image/jpeg"),
        (&web, vec![(360, 180, 360), (1024, 500, 1000)], "image/jpeg"),
    ];
    for (file, want, content_type) in &expect {
        assert_eq!(&api.wait_for_thumbs(&admin, file).await, want, "{}", file.id);
        check_downloads(api, &admin, file, want, content_type).await;
        for (size, _, _) in want {
            assert!(bucket.exists(&file.thumb_key(*size)).await, "{} {size}", file.id);
        }
    }
    // A file that is no image gets none, and no `thumbnail` state.
    let (_, v) = api.get(&format!("/v1/files/{}", doc.id), &admin).await;
    assert!(v["file"].get("thumbnail").is_none() && v["thumbs"] == json!([]), "{v}");
    assert!(api.history_thumbs(&admin, &doc).await.is_empty());

    // Each image's message changed once, to show its thumbnails; the event carries them.
    let events = api.events_after(&admin, &head).await;
    for (file, want, _) in &expect {
        let changes: Vec<&Value> =
            events.iter().filter(|e| e["type"] == "message_changed" && e["seq"] == file.seq).collect();
        assert_eq!(changes.len(), 1, "{}: {changes:?}", file.id);
        assert_eq!(&dims(&changes[0]["message"]["files"][0]["thumbs"]), want);
        assert!(changes[0]["message"].get("edited_at").is_none(), "thumbnails are not an edit");
    }

    // `…/thumbs/{size}` redirects to the same image; other sizes, and other people, get 404.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/v1/files/{}/thumbs/1024", api.base, tall.id))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let (_, image) = fetch_image(resp.headers()["location"].to_str().unwrap()).await;
    assert_eq!((image.width(), image.height()), (768, 1024));
    for size in ["1024", "720", "big"] {
        let (s, _) = api.get(&format!("/v1/files/{}/thumbs/{size}", small.id), &admin).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "a size it has no thumbnail of: {size}");
    }
    assert_eq!(api.get(&format!("/v1/files/{}/thumbs/360", wide.id), &carol).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.get(&format!("/v1/files/{}", wide.id), &carol).await.0, StatusCode::NOT_FOUND);
    // (reqwest follows the redirect.)
    let (s, _) = api.get(&format!("/v1/files/{}/thumbs/360", wide.id), &admin).await;
    assert_eq!(s, StatusCode::OK);

    // Counted: one image's thumbnails made per image, each timed.
    let made = api.metric("selvage_file_thumbnails_total{outcome=\"made\"}").await;
    assert_eq!(made, expect.len() as f64);
    assert_eq!(api.metric("selvage_file_thumbnail_seconds_count").await, made);

    // The channel's list shows them too.
    let (_, list) = api.get(&format!("/v1/channels/{design}/files"), &admin).await;
    let listed = list["files"].as_array().unwrap().iter().find(|f| f["id"] == tall.id.as_str()).unwrap().clone();
    assert_eq!(dims(&listed["thumbs"]), expect[1].1);

    // Deleting an image deletes its thumbnails with it, before answering; so does deleting the
    // message that carries one.
    let (s, v) = api.call(Method::DELETE, &format!("/v1/files/{}", wide.id), &admin, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(api.get(&format!("/v1/files/{}/thumbs/360", wide.id), &admin).await.0, StatusCode::NOT_FOUND);
    for key in [wide.key.clone(), wide.thumb_key(360), wide.thumb_key(1024)] {
        assert!(!bucket.exists(&key).await, "{key} outlived its file");
    }
    let path = format!("/v1/channels/{design}/messages/{}", tall.seq);
    let (s, v) = api.call(Method::DELETE, &path, &admin, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for key in [tall.key.clone(), tall.thumb_key(360), tall.thumb_key(1024)] {
        assert!(!bucket.exists(&key).await, "{key} outlived its message");
    }
    node.stop().await;
    bucket.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_gets_no_thumbnail_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Bucket::start(dir.path().join("s3")).await;
    let mut c = config(&dir.path().join("origin"));
    bucket.configure(&mut c);
    // One event per batch: the bomb is a batch of its own, and the image after it another.
    c.consumers.batch_size = 1;
    let node = Origin::start(c).await;
    let api = &node.api;
    let (admin, general) = api.workspace("acme").await;

    let bomb_bytes = png_bomb(100_000, 100_000);
    assert!(bomb_bytes.len() < 100, "a tiny file");
    let bomb = api.share(&admin, &general, "bomb.png", "image/png", &bomb_bytes).await;
    let liar = api.share(&admin, &general, "liar.jpg", "image/jpeg", b"%PDF-1.7 this is no JPEG").await;
    let after = api.share(&admin, &general, "after.jpg", "image/jpeg", &jpeg(400, 300)).await;

    assert_eq!(api.wait_for_thumbs(&admin, &after).await, [(360, 360, 270), (1024, 400, 300)]);
    for refused in [&bomb, &liar] {
        let (s, v) = api.get(&format!("/v1/files/{}", refused.id), &admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["file"]["thumbnail"], "none", "{v}");
        assert_eq!(v["thumbs"], json!([]), "{v}");
        assert!(api.history_thumbs(&admin, refused).await.is_empty());
        assert!(!bucket.exists(&refused.thumb_key(360)).await);
        assert_eq!(api.get(&format!("/v1/files/{}/thumbs/360", refused.id), &admin).await.0, StatusCode::NOT_FOUND);
    }
    // Refused, not failed: no batch was retried; the worker counted both.
    assert_eq!(api.worker_metric("selvage_consumer_batches_failed_total").await, 0.0);
    assert_eq!(api.metric("selvage_file_thumbnails_total{outcome=\"refused\"}").await, 2.0);
    node.stop().await;
    bucket.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_never_completed_expire_and_give_their_quota_back() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Bucket::start(dir.path().join("s3")).await;
    let mut c = config(&dir.path().join("origin"));
    bucket.configure(&mut c);
    c.files.pending_ttl_secs = 1;
    // An upload URL outlives the TTL: the sweeper waits for it to expire.
    c.files.upload_url_secs = 2;
    c.files.sweep_interval_secs = 1;
    c.files.workspace_quota_bytes = 1_000;
    let node = Origin::start(c).await;
    let api = &node.api;
    let (admin, general) = api.workspace("acme").await;

    // A completed file stays, whatever its age.
    let kept = api.share(&admin, &general, "kept.txt", "text/plain", b"kept").await;
    let declared = api.declare(&admin, "draft.bin", 600, "application/octet-stream").await;
    let id = declared["file"]["id"].as_str().unwrap().to_string();
    let key = object_key(&declared["upload"]);
    assert!(upload(&declared["upload"], vec![7; 600]).await.is_success());
    assert!(bucket.exists(&key).await);
    let (s, v) =
        api.post("/v1/files", &admin, json!({ "name": "more", "size": 600, "content_type": "text/plain" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "over the quota while the draft holds it: {v}");

    wait_until("the draft's object to be deleted", || async { !bucket.exists(&key).await }).await;
    assert_eq!(api.get(&format!("/v1/files/{id}"), &admin).await.0, StatusCode::NOT_FOUND);
    let (s, v) = api.complete(&admin, &id, &general).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "an expired upload cannot be completed: {v}");
    let again = api.declare(&admin, "more", 600, "text/plain").await;
    assert_eq!(again["file"]["state"], "pending", "the quota came back");

    assert!(bucket.exists(&kept.key).await, "a completed file is never swept");
    assert_eq!(api.get(&format!("/v1/files/{}", kept.id), &admin).await.0, StatusCode::OK);
    node.stop().await;
    bucket.server.shutdown().await;
}

/// Not a test on its own: the origin that [`the_worker_resumes_after_the_origin_is_killed`]
/// runs as a child process and kills (see [`support::child_origin`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_origin() {
    support::child_origin().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_resumes_after_the_origin_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Bucket::start(dir.path().join("s3")).await;
    let mut c = config(&dir.path().join("origin"));
    bucket.configure(&mut c);
    // A dead runner's lease runs out soon; a failing batch is retried soon.
    c.consumers.lease_ms = 1_000;
    c.consumers.retry_min_ms = 20;
    c.consumers.retry_max_ms = 200;
    let child = Child::spawn(&c).await;
    let api = child.api.clone();
    let (admin, general) = api.workspace("acme").await;
    let head = api.head(&admin).await;

    // Two images the worker finishes before the crash: their cursor is durable.
    let a = api.share(&admin, &general, "a.png", "image/png", &png_with_alpha(1600, 900)).await;
    let b = api.share(&admin, &general, "b.jpg", "image/jpeg", &jpeg(900, 1200)).await;
    api.wait_for_thumbs(&admin, &a).await;
    api.wait_for_thumbs(&admin, &b).await;

    // C's large thumbnail cannot be written (a folder holds its place in the endpoint's
    // directory), so the worker makes C's small one, fails on the large one and retries, and
    // neither C nor D after it gets further.
    let c_bytes = jpeg(2000, 1500);
    let declared = api.declare(&admin, "c.jpg", c_bytes.len(), "image/jpeg").await;
    let c_id = declared["file"]["id"].as_str().unwrap().to_string();
    let c_key = object_key(&declared["upload"]);
    let folder = c_key.rsplit_once('/').unwrap().0;
    let blocker = bucket.path(&format!("{folder}.thumb-1024"));
    std::fs::create_dir_all(&blocker).unwrap();
    assert!(upload(&declared["upload"], c_bytes).await.is_success());
    let c_file = api.complete_shared(&admin, &general, &c_id, &declared).await;
    let d = api.share(&admin, &general, "d.png", "image/png", &png(1200, 400)).await;
    wait_until("the worker to fail on C twice", || async {
        api.worker_metric("selvage_consumer_batches_failed_total").await >= 2.0
    })
    .await;
    assert!(bucket.exists(&c_file.thumb_key(360)).await, "C's first thumbnail was delivered");
    assert!(api.history_thumbs(&admin, &c_file).await.is_empty());
    assert!(api.history_thumbs(&admin, &d).await.is_empty());

    child.kill().await;
    // What the dead worker left is spoiled, and the way is clear: the next delivery must write
    // C's thumbnails again, whole.
    bucket.put(&c_file.thumb_key(360), b"not a thumbnail").await;
    std::fs::remove_dir(&blocker).unwrap();

    let child = Child::spawn(&c).await;
    let api = child.api.clone();
    assert_eq!(api.wait_for_thumbs(&admin, &c_file).await, [(360, 360, 270), (1024, 1024, 768)]);
    assert_eq!(api.wait_for_thumbs(&admin, &d).await, [(360, 360, 120), (1024, 1024, 341)]);

    // Every image has exactly its thumbnails, each recorded once, each object a real image.
    let expect = [
        (&a, vec![(360, 360, 203), (1024, 1024, 576)], "image/png"),
        (&b, vec![(360, 270, 360), (1024, 768, 1024)], "image/jpeg"),
        (&c_file, vec![(360, 360, 270), (1024, 1024, 768)], "image/jpeg"),
        (&d, vec![(360, 360, 120), (1024, 1024, 341)], "image/jpeg"),
    ];
    let events = api.events_after(&admin, &head).await;
    for (file, want, content_type) in &expect {
        assert_eq!(&api.history_thumbs(&admin, file).await, want, "{}", file.id);
        check_downloads(&api, &admin, file, want, content_type).await;
        let changes = events.iter().filter(|e| e["type"] == "message_changed" && e["seq"] == file.seq).count();
        assert_eq!(changes, 1, "{}'s thumbnails were recorded {changes} times", file.id);
    }
    child.kill().await;
    bucket.server.shutdown().await;
}
