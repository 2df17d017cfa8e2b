//! `selvage s3` as the two-region demo runs it: the S3 endpoint as a process of its own, a
//! `selvage origin` process whose files service stores in it, and a client moving a file's
//! bytes through the presigned URLs the origin hands out. SIGTERM stops it cleanly and a
//! restart on the same data directory serves the same objects.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{call, OriginProcess, OPERATOR_KEY};
use reqwest::StatusCode;
use serde_json::json;

const ACCESS_KEY: &str = "demo-access-key";
const SECRET_KEY: &str = "demo-secret-key-of-this-test";

/// A `selvage s3` process and the address it printed.
struct S3Process {
    child: Child,
    url: String,
}

impl S3Process {
    fn spawn(data_dir: &Path, listen: &str) -> S3Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_selvage"))
            .args(["s3", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env("SELVAGE_S3_ACCESS_KEY", ACCESS_KEY)
            .env("SELVAGE_S3_SECRET_KEY", SECRET_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("selvage runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("s3 prints its address");
        let url = line.split_whitespace().nth(4).expect("an address").to_string();
        assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "unexpected first line {line:?}");
        assert!(line.contains("buckets selvage-files"), "{line:?}");
        S3Process { child, url }
    }

    /// SIGTERM, and the exit status once it has stopped.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill only sends a signal to the child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "selvage s3 did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for S3Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_stores_files_in_a_standalone_s3_endpoint() {
    let s3_dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Process::spawn(s3_dir.path(), "127.0.0.1:0");
    let http = reqwest::Client::new();

    // Health checks need no signature; everything else does.
    let health = http.get(format!("{}/healthz", s3.url)).send().await.unwrap();
    assert_eq!((health.status(), health.text().await.unwrap().as_str()), (StatusCode::OK, "ok\n"));
    let unsigned = http.get(format!("{}/selvage-files", s3.url)).send().await.unwrap();
    assert_eq!(unsigned.status(), StatusCode::FORBIDDEN);

    // The origin checks the bucket at start, with the endpoint's credential.
    let origin_dir = tempfile::tempdir().unwrap();
    let files = [
        ("SELVAGE_FILES__ENABLED", "true"),
        ("SELVAGE_FILES__ENDPOINT", s3.url.as_str()),
        ("SELVAGE_FILES__PATH_STYLE", "true"),
        ("SELVAGE_FILES__ACCESS_KEY_ID", ACCESS_KEY),
        ("SELVAGE_FILES__SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    let origin = OriginProcess::spawn_with(origin_dir.path(), &files);
    let base = origin.base.as_str();
    let (s, ws) = call(
        http.post(format!("{base}/v1/workspaces"))
            .bearer_auth(OPERATOR_KEY)
            .json(&json!({ "name": "Files", "admin_handle": "alice" })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    let token = ws["token"].as_str().unwrap().to_string();
    let (_, channels) = call(http.get(format!("{base}/v1/channels")).bearer_auth(&token)).await;
    let general = channels["channels"][0]["id"].as_str().unwrap().to_string();

    // Declared at the origin, uploaded straight to the endpoint, shared in #general.
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let declare = json!({ "name": "demo.bin", "size": bytes.len(), "content_type": "application/octet-stream" });
    let (s, declared) = call(http.post(format!("{base}/v1/files")).bearer_auth(&token).json(&declare)).await;
    assert_eq!(s, StatusCode::CREATED, "{declared}");
    let id = declared["file"]["id"].as_str().unwrap().to_string();
    let upload = &declared["upload"];
    assert!(upload["url"].as_str().unwrap().starts_with(&s3.url), "{declared}");
    let mut put = http.put(upload["url"].as_str().unwrap());
    for (header, value) in upload["headers"].as_object().unwrap() {
        if header != "content-length" {
            put = put.header(header, value.as_str().unwrap());
        }
    }
    let put = put.body(bytes.clone()).send().await.unwrap();
    assert!(put.status().is_success(), "upload refused: {}", put.status());
    let complete = json!({ "channel": general, "client_msg_id": "share-1" });
    let (s, done) = call(http.post(format!("{base}/v1/files/{id}/complete")).bearer_auth(&token).json(&complete)).await;
    assert_eq!((s, &done["file"]["state"]), (StatusCode::CREATED, &json!("ready")), "{done}");
    let download = |http: reqwest::Client, token: String| {
        let url = format!("{base}/v1/files/{id}");
        async move {
            let (s, file) = call(http.get(url).bearer_auth(token)).await;
            assert_eq!(s, StatusCode::OK, "{file}");
            let got = http.get(file["download"]["url"].as_str().unwrap()).send().await.unwrap();
            assert_eq!(got.status(), StatusCode::OK);
            got.bytes().await.unwrap().to_vec()
        }
    };
    assert_eq!(download(http.clone(), token.clone()).await, bytes, "the same bytes come back");

    // SIGTERM stops it cleanly; started again on its address and directory, it serves the
    // same objects.
    let status = s3.terminate();
    assert!(status.success(), "selvage s3 exited with {status}");
    let listen = s3.url.trim_start_matches("http://").to_string();
    let s3 = S3Process::spawn(s3_dir.path(), &listen);
    assert_eq!(download(http.clone(), token.clone()).await, bytes, "kept across a restart");
    drop(s3);
}
