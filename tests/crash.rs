//! Acknowledged means durable: kill the `selvage origin` process with SIGKILL while writers
//! are sending, restart it on the same data directory, and check that every acknowledged
//! message is there with the seq it was acknowledged with, that seqs have no gaps, and that
//! new sends continue the order.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::{json, Value};

mod common;

use common::{call, OriginProcess, OPERATOR_KEY};

/// A text for writer `w`'s `i`th send: lengths that vary from a few bytes to kilobytes, and
/// runs of control characters, spaces, and multi-byte characters, so that the log's records
/// end at every kind of offset and hold every kind of byte a client may send.
fn adversarial_text(id: &str, w: usize, i: usize) -> String {
    let n = (i * 7919 + w * 104_729) % 2_500;
    let run = match i % 5 {
        0 => "\u{1}".repeat(n),
        1 => " ".repeat(n),
        2 => "\u{7f}\u{1b}[0m".repeat(n / 6),
        3 => "é中🙂".repeat(n / 9),
        _ => String::new(),
    };
    format!("message {id}{run}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    // Sixteen writers share one token, far past its rate: limits are not what this tests.
    let unlimited = [("SELVAGE_RATE_LIMITS__ENABLED", "false")];
    let mut origin = OriginProcess::spawn_with(dir.path(), &unlimited);
    let http = reqwest::Client::new();
    let (_, ws) = call(
        http.post(format!("{}/v1/workspaces", origin.base))
            .bearer_auth(OPERATOR_KEY)
            .json(&json!({ "name": "crash", "admin_handle": "admin" })),
    )
    .await;
    let token = ws["token"].as_str().unwrap().to_string();
    let (_, channels) = call(http.get(format!("{}/v1/channels", origin.base)).bearer_auth(&token)).await;
    let channel = channels["channels"][0]["id"].as_str().unwrap().to_string();

    // A text with U+0000 is refused at the door and stores nothing.
    let url = format!("{}/v1/channels/{channel}/messages", origin.base);
    let body = json!({ "text": format!("m {}", "\u{0}".repeat(600)), "client_msg_id": "nul" });
    let (status, v) = call(http.post(&url).bearer_auth(&token).json(&body)).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{v}");

    // Round after round, writers send until the process dies under them, recording every ack;
    // the origin restarts on the same data each time.
    let acked: Arc<Mutex<HashMap<String, (u64, String)>>> = Arc::default();
    for round in 0..3 {
        let url = format!("{}/v1/channels/{channel}/messages", origin.base);
        let count = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for w in 0..16 {
            let (http, url, token, acked, count) =
                (http.clone(), url.clone(), token.clone(), acked.clone(), count.clone());
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("r{round}-w{w}-{i}");
                    let text = adversarial_text(&id, w, i);
                    let body = json!({ "text": text, "client_msg_id": id });
                    let Ok(resp) = http.post(&url).bearer_auth(&token).json(&body).send().await else { return };
                    if resp.status() != reqwest::StatusCode::CREATED {
                        return;
                    }
                    let Ok(v) = resp.json::<Value>().await else { return };
                    acked.lock().unwrap().insert(id, (v["seq"].as_u64().unwrap(), text));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Kill once a good number of sends have been acknowledged, with writers still running.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while count.load(Ordering::Relaxed) < 2_000 {
            assert!(tokio::time::Instant::now() < deadline, "round {round}: writers made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        origin.kill_9();
        for w in writers {
            w.await.unwrap();
        }
        origin = OriginProcess::spawn_with(dir.path(), &unlimited);
        let (seqs, stored) = read_history(&http, &origin.base, &channel, &token).await;
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "round {round}: seqs are gap-free after the crash"
        );
        for (id, (seq, text)) in acked.lock().unwrap().iter() {
            let found = stored.get(id);
            assert_eq!(
                found.map(|f| f.0),
                Some(*seq),
                "round {round}: acknowledged message {id} must survive with its seq"
            );
            assert_eq!(found.map(|f| f.1.as_str()), Some(text.as_str()), "round {round}: message {id} changed");
        }
        eprintln!(
            "sigkill round {round}: {} acknowledged so far, {} stored after restart",
            acked.lock().unwrap().len(),
            seqs.len()
        );
    }

    // New sends continue the order.
    let (seqs, _) = read_history(&http, &origin.base, &channel, &token).await;
    let url = format!("{}/v1/channels/{channel}/messages", origin.base);
    let body = json!({ "text": "after", "client_msg_id": "after-crash" });
    let (status, v) = call(http.post(&url).bearer_auth(&token).json(&body)).await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    assert_eq!(v["seq"].as_u64().unwrap(), seqs.len() as u64 + 1);
    // A retry of a message acknowledged before a crash is recognised, not repeated.
    let (id, (seq, text)) = acked.lock().unwrap().iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap();
    let (_, v) = call(http.post(&url).bearer_auth(&token).json(&json!({ "text": text, "client_msg_id": id }))).await;
    assert_eq!((v["seq"].as_u64(), v["duplicate"].as_bool()), (Some(seq), Some(true)));
}

/// A channel's whole history: its seqs in order, and each message's seq and text by
/// `client_msg_id`.
async fn read_history(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
    token: &str,
) -> (Vec<u64>, HashMap<String, (u64, String)>) {
    let mut history: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{base}/v1/channels/{channel}/messages?after={after}&limit=1000");
        let (_, page) = call(http.get(url).bearer_auth(token)).await;
        let messages = page["messages"].as_array().unwrap().clone();
        if let Some(last) = messages.last() {
            after = last["seq"].as_u64().unwrap();
        }
        history.extend(messages);
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    let seqs = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let stored = history
        .iter()
        .map(|m| {
            let id = m["client_msg_id"].as_str().unwrap().to_string();
            (id, (m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap().to_string()))
        })
        .collect();
    (seqs, stored)
}
