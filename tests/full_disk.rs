//! A full disk under load: the origin's data directory on a small tmpfs fills up while writers
//! send. Sends are refused with `503 unavailable` and a clear message, `/readyz` says why,
//! nothing acknowledged is lost, and sends succeed again once space is freed — without a
//! restart; after a SIGKILL and a restart everything acknowledged is still there.

use std::{path::Path, process::Command, sync::Arc, time::Duration};

use serde_json::{json, Value};

mod common;

use common::{call, OriginProcess, OPERATOR_KEY};
use selvage_origin::store::{
    embedded::{EmbeddedOptions, EmbeddedStore},
    KvStore, StoreError,
};

/// A size-limited tmpfs on a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None`, with the reason printed, where this process may not mount one (it needs root,
    /// as CI has).
    fn mount(mib: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "selvage-test"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { dir }),
            Ok(o) => {
                eprintln!("SKIPPED: cannot mount a {mib} MiB tmpfs: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; answers its size.
    fn fill(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join(name)).unwrap();
        let chunk = vec![0x5a; 64 * 1024];
        let mut n = 0;
        while let Ok(k) = f.write(&chunk) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_says_why_and_recovers_without_a_restart() {
    let Some(disk) = SmallDisk::mount(96) else { return };
    let data = disk.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let ballast = disk.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 24 << 20]).unwrap();
    // Thousands of sends on one token, far past its rate: limits are not what this tests.
    let env = [
        ("SELVAGE_EMBEDDED__MIN_FREE_MIB", "8"),
        ("SELVAGE_EMBEDDED__MEMTABLE_MIB", "1"),
        ("SELVAGE_RATE_LIMITS__ENABLED", "false"),
    ];
    let mut origin = OriginProcess::spawn_with(&data, &env);
    let http = reqwest::Client::new();
    let (_, ws) = call(
        http.post(format!("{}/v1/workspaces", origin.base))
            .bearer_auth(OPERATOR_KEY)
            .json(&json!({ "name": "full", "admin_handle": "admin" })),
    )
    .await;
    let token = ws["token"].as_str().unwrap().to_string();
    let (_, channels) = call(http.get(format!("{}/v1/channels", origin.base)).bearer_auth(&token)).await;
    let channel = channels["channels"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = call(http.get(format!("{}/readyz", origin.base))).await;
    assert_eq!(status, reqwest::StatusCode::OK);

    // Send texts of 30,000 characters until the disk is refused.
    let url = format!("{}/v1/channels/{channel}/messages", origin.base);
    let text = |i: usize| format!("{i} {}", "x".repeat(30_000));
    let mut acked = Vec::new();
    let refused = loop {
        assert!(acked.len() < 5_000, "96 MiB never filled up");
        let i = acked.len();
        let body = json!({ "text": text(i), "client_msg_id": format!("m{i}") });
        let (status, v) = call(http.post(&url).bearer_auth(&token).json(&body)).await;
        if status == reqwest::StatusCode::CREATED {
            acked.push(v["seq"].as_u64().unwrap());
            continue;
        }
        break (status, v);
    };
    assert_eq!(refused.0, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "unavailable", "{}", refused.1);
    let message = refused.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("disk is full"), "a clear message: {message}");
    let (status, ready) = call(http.get(format!("{}/readyz", origin.base))).await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    let why = ready["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("nearly full"), "/readyz says why: {ready}");
    // Reads still answer.
    let (status, _) = call(http.get(format!("{url}?limit=1")).bearer_auth(&token)).await;
    assert_eq!(status, reqwest::StatusCode::OK);

    // Space freed: sends succeed again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let i = acked.len();
        let body = json!({ "text": text(i), "client_msg_id": format!("m{i}") });
        let (status, v) = call(http.post(&url).bearer_auth(&token).json(&body)).await;
        if status == reqwest::StatusCode::CREATED {
            acked.push(v["seq"].as_u64().unwrap());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "sends did not resume: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, ready) = call(http.get(format!("{}/readyz", origin.base))).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{ready}");
    assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>(), "no seq was skipped or reused");

    // Nothing acknowledged is lost, through a SIGKILL too.
    origin.kill_9();
    let origin = OriginProcess::spawn_with(&data, &env);
    let mut after = 0;
    let mut stored: Vec<Value> = Vec::new();
    loop {
        let page_url = format!("{}/v1/channels/{channel}/messages?after={after}&limit=200", origin.base);
        let (_, page) = call(http.get(page_url).bearer_auth(&token)).await;
        let messages = page["messages"].as_array().unwrap().clone();
        if let Some(last) = messages.last() {
            after = last["seq"].as_u64().unwrap();
        }
        stored.extend(messages);
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(stored.len(), acked.len(), "every acknowledged send, and only those");
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m["text"].as_str().unwrap(), text(i), "message {i}");
    }
}

/// With the free-space check off, a log write that meets a full disk is cut off the log: the
/// group is refused with a clear reason, its versions go to the next commit once space is
/// freed, and recovery replays exactly what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_write_on_a_full_disk_is_taken_back() {
    let Some(disk) = SmallDisk::mount(16) else { return };
    let path = disk.path().join("s.redb");
    // Nothing is flushed into redb but at shutdown: the log alone meets the full disk.
    let opts = EmbeddedOptions {
        min_free_bytes: 0,
        flush_interval: Duration::from_secs(3600),
        memtable_bytes: usize::MAX / 8,
        memtable_entries: usize::MAX / 8,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(&path, opts.clone()).unwrap();
    let commit = |store: Arc<EmbeddedStore>, key: &'static [u8], len: usize| async move {
        let mut tx = store.begin().await.unwrap();
        tx.set(key, &vec![7u8; len]).unwrap();
        tx.commit().await.map(|c| c.versionstamp.version())
    };
    let first = commit(store.clone(), b"before", 100).await.unwrap();
    assert!(disk.fill("ballast") > 0);
    match commit(store.clone(), b"refused", 90_000).await {
        Err(StoreError::NoSpace(why)) => assert!(why.contains("disk is full"), "{why}"),
        other => panic!("expected the full disk to refuse the commit, got {other:?}"),
    }
    assert!(store.write_problem().is_some_and(|p| p.contains("disk is full")));
    std::fs::remove_file(disk.path().join("ballast")).unwrap();
    let after = commit(store.clone(), b"after", 90_000).await.unwrap();
    assert_eq!(after, first + 1, "the refused group's version goes to the next commit");
    assert_eq!(store.write_problem(), None);
    // A crash image now: the log holds "before" and "after", nothing of "refused".
    let image = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(disk.path()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, image.path().join(p.file_name().unwrap())).unwrap();
    }
    drop(store);
    let store = EmbeddedStore::open(&image.path().join("s.redb"), opts).unwrap();
    assert_eq!(store.last_version(), after);
    let mut tx = store.begin().await.unwrap();
    assert!(tx.get(b"before").await.unwrap().is_some());
    assert!(tx.get(b"after").await.unwrap().is_some());
    assert!(tx.get(b"refused").await.unwrap().is_none());
}
