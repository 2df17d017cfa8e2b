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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut origin = OriginProcess::spawn(dir.path());
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
    let url = format!("{}/v1/channels/{channel}/messages", origin.base);

    // Writers send until the process dies under them, recording every ack.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..16 {
        let (http, url, token, acked, count) = (http.clone(), url.clone(), token.clone(), acked.clone(), count.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{w}-{i}");
                let body = json!({ "text": format!("message {id}"), "client_msg_id": id });
                let Ok(resp) = http.post(&url).bearer_auth(&token).json(&body).send().await else { return };
                if resp.status() != reqwest::StatusCode::CREATED {
                    return;
                }
                let Ok(v) = resp.json::<Value>().await else { return };
                acked.lock().unwrap().insert(id, v["seq"].as_u64().unwrap());
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Kill once a good number of sends have been acknowledged, with writers still running.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < 2_000 {
        assert!(tokio::time::Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.kill_9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 2_000);

    // Restart on the same data and read everything back.
    let origin = OriginProcess::spawn(dir.path());
    let mut history: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{}/v1/channels/{channel}/messages?after={after}&limit=1000", origin.base);
        let (_, page) = call(http.get(url).bearer_auth(&token)).await;
        let messages = page["messages"].as_array().unwrap().clone();
        if let Some(last) = messages.last() {
            after = last["seq"].as_u64().unwrap();
        }
        history.extend(messages);
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seqs are gap-free after the crash");
    let stored: HashMap<String, u64> = history
        .iter()
        .map(|m| (m["client_msg_id"].as_str().unwrap().to_string(), m["seq"].as_u64().unwrap()))
        .collect();
    for (id, seq) in &acked {
        assert_eq!(stored.get(id), Some(seq), "acknowledged message {id} (seq {seq}) must survive with its seq");
    }
    // New sends continue the order.
    let url = format!("{}/v1/channels/{channel}/messages", origin.base);
    let body = json!({ "text": "after", "client_msg_id": "after-crash" });
    let (status, v) = call(http.post(&url).bearer_auth(&token).json(&body)).await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    assert_eq!(v["seq"].as_u64().unwrap(), seqs.len() as u64 + 1);
    // A retry of a message acknowledged before the crash is recognised, not repeated.
    let (id, seq) = acked.iter().next().unwrap();
    let (_, v) = call(http.post(&url).bearer_auth(&token).json(&json!({ "text": "retry", "client_msg_id": id }))).await;
    assert_eq!((v["seq"].as_u64(), v["duplicate"].as_bool()), (Some(*seq), Some(true)));
    eprintln!("sigkill test: {} acknowledged before the kill, {} stored after restart", acked.len(), seqs.len());
}
