//! A full disk under load: the origin's data directory on a small tmpfs fills up while writers
//! send. Sends are refused with `503 unavailable` and a clear message, `/readyz` says why,
//! nothing acknowledged is lost, and sends succeed again once space is freed — without a
//! restart; after a SIGKILL and a restart everything acknowledged is still there.

use std::{path::Path, process::Command, time::Duration};

use serde_json::{json, Value};

mod common;

use common::{call, OriginProcess, OPERATOR_KEY};

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
    let env = [("SELVAGE_EMBEDDED__MIN_FREE_MIB", "8"), ("SELVAGE_EMBEDDED__MEMTABLE_MIB", "1")];
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
