//! The web client in a real browser (issue "Web client"): Debian's Chromium, driven by
//! Playwright's `playwright-core` from `web/tests/e2e.mjs`, against a real origin (files on a
//! real S3 endpoint) and two real edges, alice on one and bob on the other.
//!
//! This test builds the system and hands the script a rig (`RIG.json`: edges, users, channels);
//! the script drives the browsers and reports `ok - …` per scenario. Edge B runs on a runtime
//! of its own so the script can have it killed — every socket gone at once, as in a crash —
//! and started again on the same port: it prints `KILL_EDGE_B` and waits for `EDGE_B_KILLED`,
//! then `RESTART_EDGE_B` and waits for `EDGE_B_RESTARTED`. `DRAIN_EDGE_B` (answered
//! `EDGE_B_DRAINED`) drains it through its operator API, as an operator replacing it would.
//!
//! Headless Chromium has no Web Push service, so the script runs one on 127.0.0.1: the origin
//! here may push to internal addresses (`notify.allow_internal_endpoints`), after half a second
//! rather than ten, and the script hands what it receives to the page's service worker.
//!
//! It needs `node`, Chromium (`SELVAGE_CHROMIUM`, else `/usr/bin/chromium`) and playwright-core
//! (`PLAYWRIGHT_CORE`, else `web/tests/node_modules/playwright-core`; `.ci/run` installs all
//! three). Without them it says so and is skipped.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Scenarios `e2e.mjs` runs; each reports `ok - NAME` or `skip - NAME: why`.
const SCENARIOS: usize = 18;

/// Where the browser and its driver are, or why the test cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return Err("node is not on PATH".into()),
    }
    let chromium =
        std::env::var_os("SELVAGE_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set SELVAGE_CHROMIUM)",
            chromium.display()
        ));
    }
    let driver = std::env::var_os("PLAYWRIGHT_CORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("web/tests/node_modules/playwright-core"));
    if !driver.join("package.json").exists() {
        return Err(format!("no playwright-core at {} (npm ci --prefix web/tests)", driver.display()));
    }
    Ok((chromium, driver))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_works_in_chromium_across_two_edges() {
    let (chromium, driver) = match browser() {
        Ok(found) => found,
        Err(why) => {
            eprintln!("skipped: the web client's browser test needs a browser: {why}");
            return;
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (s3, _s3_dir) = start_s3local().await;
    let origin = Origin::start_with(|c| {
        files_on(c, &s3);
        // The push service e2e.mjs runs is on 127.0.0.1; its scenario waits for each push.
        c.notify.allow_internal_endpoints = true;
        c.notify.delay_ms = 500;
        c.notify.tick_ms = 100;
    })
    .await;
    let (alice, alice_id, general) = origin.workspace().await;
    let (bob_id, bob) = origin.user(&alice, "bob").await;
    let (carol_id, carol) = origin.user(&alice, "carol").await;
    let secret = origin.channel(&alice, "secret", true).await;
    let (s, _) = origin.post(&format!("/v1/channels/{secret}/members"), &alice, json!({ "user": bob_id })).await;
    assert!(s.is_success(), "bob joins #secret: {s}");
    origin.send(&alice, &secret, "only for alice and bob").await;
    for i in 1..=3 {
        origin.send(&alice, &general, &format!("good morning {i}")).await;
    }

    let mut config_a = origin.edge_config("web-a");
    config_a.web.connect_origins = vec![s3.endpoint()];
    let (edge_a, _stop_a) = start_edge_with(config_a).await;
    let mut config_b = origin.edge_config("web-b");
    config_b.web.connect_origins = vec![s3.endpoint()];
    config_b.quic_listen = None;
    let mut edge_b = Some(KillableEdge::start(config_b.clone()).await);
    let addr_b = edge_b.as_ref().map(|e| e.addr).unwrap();
    config_b.listen = addr_b;
    wait_for_page(addr_b).await;

    let dir = tempfile::tempdir().unwrap();
    let screenshot = root.join("docs/web-client.png");
    let rig = json!({
        "edges": [format!("http://{}", edge_a.addr), format!("http://{addr_b}")],
        "users": {
            "alice": { "id": alice_id, "token": alice },
            "bob": { "id": bob_id, "token": bob },
            "carol": { "id": carol_id, "token": carol },
        },
        "channels": { "general": general.to_string(), "secret": secret.to_string() },
        "chromium": chromium,
        "screenshot": screenshot,
    });
    let rig_file = dir.path().join("rig.json");
    std::fs::write(&rig_file, serde_json::to_vec_pretty(&rig).unwrap()).unwrap();

    let mut script = tokio::process::Command::new("node")
        .arg(root.join("web/tests/e2e.mjs"))
        .arg(&rig_file)
        .env("PLAYWRIGHT_CORE", &driver)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = script.stdin.take().unwrap();
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let (mut passed, mut skipped) = (Vec::new(), Vec::new());
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("e2e: {line}");
            match line.trim() {
                "KILL_EDGE_B" => {
                    if let Some(edge) = edge_b.take() {
                        edge.kill();
                    }
                    stdin.write_all(b"EDGE_B_KILLED\n").await.unwrap();
                }
                "DRAIN_EDGE_B" => {
                    let drain = reqwest::Client::new()
                        .post(format!("http://{addr_b}/admin/drain"))
                        .bearer_auth(OPERATOR_KEY)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(drain.status(), 202, "the drain is accepted");
                    stdin.write_all(b"EDGE_B_DRAINED\n").await.unwrap();
                }
                "RESTART_EDGE_B" => {
                    edge_b = Some(KillableEdge::start(config_b.clone()).await);
                    wait_for_page(addr_b).await;
                    stdin.write_all(b"EDGE_B_RESTARTED\n").await.unwrap();
                }
                other if other.starts_with("ok - ") => passed.push(other.to_string()),
                other if other.starts_with("skip - ") => skipped.push(other.to_string()),
                _ => {}
            }
        }
        script.wait().await.unwrap()
    };
    let status =
        tokio::time::timeout(Duration::from_secs(600), run).await.expect("the browser test ended within 10 minutes");
    assert!(status.success(), "e2e.mjs failed ({status}); passed so far: {passed:?}");
    assert_eq!(passed.len() + skipped.len(), SCENARIOS, "every scenario reported: {passed:?} {skipped:?}");
    assert!(skipped.is_empty(), "no scenario may be skipped here, where everything runs: {skipped:?}");
}

/// Waits until the edge at `addr` serves the page and its link to the origin is up.
async fn wait_for_page(addr: std::net::SocketAddr) {
    let http = reqwest::Client::new();
    wait_for("the edge serves the web client and is ready", || {
        let http = http.clone();
        async move {
            let page = http.get(format!("http://{addr}/")).send().await.is_ok_and(|r| r.status().is_success());
            let ready = http.get(format!("http://{addr}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
            page && ready
        }
    })
    .await;
}
