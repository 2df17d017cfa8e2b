//! Files end to end through the edge tier (ARCHITECTURE §8 "Files"): a real origin with the
//! files service on, against an s3local endpoint on port 0, and two real edges. The bytes go
//! to and from the object store through the presigned URLs the origin hands out, with plain
//! HTTP; the message that shares a file reaches the other members through their edges like any
//! other message.

mod support;

use std::time::Instant;

use reqwest::{Method, StatusCode};
use selvage_client::{Client, Inbound, Transport};
use selvage_shared::{ChannelId, Event, FileRef, Message};
use serde_json::{json, Value};
use support::*;

/// Declares `bytes` as `name` (`content_type`) for the holder of `token`, sends them through
/// the upload URL, and shares the file in `channel`; returns the file's id and its message's seq.
async fn share(
    origin: &Origin,
    token: &str,
    channel: &ChannelId,
    name: &str,
    content_type: &str,
    bytes: &[u8],
) -> (String, u64) {
    let (s, declared) = origin
        .post("/v1/files", token, json!({ "name": name, "size": bytes.len(), "content_type": content_type }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{declared}");
    let id = declared["file"]["id"].as_str().unwrap().to_string();
    let upload = &declared["upload"];
    assert_eq!(upload["method"], "PUT", "{declared}");
    let mut put = reqwest::Client::new().put(upload["url"].as_str().unwrap());
    for (header, value) in upload["headers"].as_object().unwrap() {
        // reqwest sends the body's own length.
        if header != "content-length" {
            put = put.header(header, value.as_str().unwrap());
        }
    }
    let put = put.body(bytes.to_vec()).send().await.unwrap();
    assert!(put.status().is_success(), "upload refused: {}", put.status());
    let path = format!("/v1/files/{id}/complete");
    let (s, done) =
        origin.post(&path, token, json!({ "channel": channel, "client_msg_id": format!("share-{id}") })).await;
    assert_eq!(s, StatusCode::CREATED, "{done}");
    assert_eq!(done["file"]["state"], "ready", "{done}");
    (id, done["seq"].as_u64().unwrap())
}

/// The first message carrying files in `channel` that `client` receives, skipping other events.
async fn next_file_message(client: &mut Client, channel: &ChannelId, who: &str) -> Message {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{who} never got a message with files in {channel}");
        match client.next_event(left).await.unwrap() {
            Some(Inbound::Event(frame)) => match frame.event {
                Event::Message(m) if m.channel == *channel && !m.files.is_empty() => return m,
                _ => {}
            },
            Some(other) => panic!("{who}: unexpected {other:?}"),
            None => {}
        }
    }
}

/// What `GET /v1/files/{id}` answers the holder of `token`.
async fn file(origin: &Origin, token: &str, id: &str) -> (StatusCode, Value) {
    origin.call(Method::GET, &format!("/v1/files/{id}"), token, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shared_on_one_edge_reaches_a_member_on_another() {
    let (s3, _s3_dir) = start_s3local().await;
    let origin = Origin::start_with(|c| files_on(c, &s3)).await;
    let acme = origin.new_workspace("Acme").await;
    let alice_token = acme.admin_token.clone();
    let (bob_id, bob_token) = origin.user(&alice_token, "bob").await;
    let (_, carol_token) = origin.user(&alice_token, "carol").await;
    let secret = origin.channel(&alice_token, "secret", true).await;
    let (s, v) = origin.post(&format!("/v1/channels/{secret}/members"), &alice_token, json!({ "user": bob_id })).await;
    assert!(s.is_success(), "{v}");
    let other = origin.new_workspace("Other").await;

    let (edge_1, _stop_1) = start_edge(&origin, "edge-1").await;
    let (edge_2, _stop_2) = start_edge(&origin, "edge-2").await;
    let mut alice = Client::connect(options(&edge_1, &Transport::WsJson, &alice_token)).await.unwrap();
    let mut bob = Client::connect(options(&edge_2, &Transport::WsJson, &bob_token)).await.unwrap();

    // Alice shares a file in #general: her upload, her HTTP call.
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let (id, seq) = share(&origin, &alice_token, &acme.general, "q3-report.pdf", "application/pdf", &bytes).await;
    let shared = FileRef {
        id: id.clone(),
        name: "q3-report.pdf".into(),
        size: bytes.len() as u64,
        content_type: "application/pdf".into(),
        // Not an image: no thumbnails, ever.
        thumbs: Vec::new(),
    };

    // Bob, on the other edge, gets the message with the file on his WebSocket; so does Alice.
    let seen_by_bob = next_file_message(&mut bob, &acme.general, "bob").await;
    assert_eq!((seen_by_bob.seq, &seen_by_bob.files), (seq, &vec![shared]), "{seen_by_bob:?}");
    let seen_by_alice = next_file_message(&mut alice, &acme.general, "alice").await;
    assert_eq!((seen_by_alice.seq, &seen_by_alice.files), (seen_by_bob.seq, &seen_by_bob.files));

    // He fetches it through the download URL: the same bytes.
    let (s, got) = file(&origin, &bob_token, &id).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["file"]["size"], bytes.len(), "{got}");
    let download = reqwest::get(got["download"]["url"].as_str().unwrap()).await.unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.bytes().await.unwrap().as_ref(), bytes.as_slice(), "bob downloads what alice uploaded");

    // A file in a private channel: its members have it, through the edge too; nobody else.
    let (hidden, seq) = share(&origin, &alice_token, &secret, "plan.txt", "text/plain", b"members only").await;
    let in_secret = next_file_message(&mut bob, &secret, "bob").await;
    assert_eq!((in_secret.seq, in_secret.files.iter().map(|f| &f.id).collect::<Vec<_>>()), (seq, vec![&hidden]));
    assert_eq!(file(&origin, &bob_token, &hidden).await.0, StatusCode::OK, "a member sees it");
    let (s, v) = file(&origin, &carol_token, &hidden).await;
    assert_eq!((s, &v["error"]["code"]), (StatusCode::NOT_FOUND, &json!("not_found")), "a non-member: {v}");
    assert_eq!(file(&origin, &carol_token, &id).await.0, StatusCode::OK, "#general's file is hers to see");
    for (what, file_id) in [("#general's file", &id), ("the private channel's file", &hidden)] {
        let (s, v) = file(&origin, &other.admin_token, file_id).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "another workspace's user, {what}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
    }

    alice.close().await;
    bob.close().await;
    s3.shutdown().await;
}
