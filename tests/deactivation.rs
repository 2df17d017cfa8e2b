//! Offboarding: a workspace admin deactivates a user. Every token of theirs stops working, every
//! live session on every edge closes at once (WebSocket and QUIC), `@here` no longer reaches
//! them, they cannot be added to channels or DMs, and their history stays. Reactivating them
//! issues a new token; the old ones stay revoked.

mod support;

use std::time::Instant;

use reqwest::{Method, StatusCode};
use selvage_client::{Client, Inbound, Transport};
use selvage_shared::{ClientFrame, ErrorCode, Event, Presence};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_user_is_offboarded_everywhere_at_once() {
    let origin = Origin::start().await;
    let (alice, _, general) = origin.workspace().await;
    let (bob_id, bob) = origin.user(&alice, "bob").await;
    let bob_laptop = origin.new_token(&bob).await;
    let (carol_id, carol) = origin.user(&alice, "carol").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let kept = origin.send(&bob, &general, "bob-before").await;

    // Bob is online on both edges and both transports; carol on one. Alice watches their
    // presence to know when the origin has heard they are active.
    let mut sessions = vec![
        ("ws on a", Client::connect(options(&a, &Transport::WsJson, &bob)).await.unwrap()),
        ("quic on b", Client::connect(options(&b, &quic(&b), &bob_laptop)).await.unwrap()),
    ];
    let _carol_online = Client::connect(options(&b, &Transport::WsMsgpack, &carol)).await.unwrap();
    let mut watcher = Client::connect(options(&a, &Transport::WsJson, &alice)).await.unwrap();
    let watched = vec![bob_id.parse().unwrap(), carol_id.parse().unwrap()];
    watcher.send_frame(&ClientFrame::PresenceSub { users: watched }).await.unwrap();
    let mut active = std::collections::HashSet::new();
    let deadline = Instant::now() + WAIT;
    while active.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "bob and carol never became active: {active:?}");
        if let Ok(Some(Inbound::Event(frame))) = watcher.next_event(left).await {
            if let Event::PresenceChange { user, presence: Presence::Active } = frame.event {
                active.insert(user);
            }
        }
    }

    // Only an admin, never oneself, only in one's own workspace.
    let deactivate = |id: &str| format!("/v1/users/{id}/deactivate");
    let (s, _) = origin.call(Method::POST, &deactivate(&carol_id), &bob, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, admin) = origin.call(Method::GET, "/v1/me", &alice, None).await;
    let alice_id = admin["user"]["id"].as_str().unwrap().to_string();
    let (s2, _) = origin.call(Method::POST, &deactivate(&alice_id), &alice, None).await;
    assert_eq!((s, s2), (StatusCode::OK, StatusCode::BAD_REQUEST));
    let other = origin.new_workspace("Other").await;
    let (s, _) = origin.call(Method::POST, &deactivate(&bob_id), &other.admin_token, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another workspace's user is not found");
    // A malformed id and an unknown one are not found, like any id; a revoked admin token
    // changes nothing.
    let (s, v) = origin.call(Method::POST, &deactivate("not-a-user"), &alice, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{v}");
    let (s, _) = origin.call(Method::POST, &deactivate("UZZZZZZZZZZZZ"), &alice, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let spare = origin.new_token(&alice).await;
    let (s, _) = origin.post("/v1/tokens/revoke", &spare, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = origin.call(Method::POST, &deactivate(&bob_id), &spare, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a revoked token deactivates nobody");
    let (s, _) = origin.call(Method::GET, "/v1/me", &bob, None).await;
    assert_eq!(s, StatusCode::OK, "bob is still active after the refused calls");

    let (s, v) = origin.call(Method::POST, &deactivate(&bob_id), &alice, None).await;
    assert_eq!((s, v["user"]["deactivated"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    // Every live session, on both edges and transports, closes at once.
    for (name, client) in &mut sessions {
        let (code, reason) = closed(client, name).await;
        assert_eq!((code, reason.as_str()), (Some(4001), "user deactivated"), "{name}");
    }
    // Every token is refused, on the origin and on every edge.
    for token in [&bob, &bob_laptop] {
        let (s, _) = origin.call(Method::GET, "/v1/me", token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        for edge in [&a, &b] {
            match Client::connect(options(edge, &Transport::WsJson, token)).await {
                Err(e) => assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}"),
                Ok(_) => panic!("a deactivated user's token connected"),
            }
        }
    }
    // Gone from @here; history kept; no new channels or DMs.
    let (s, v) = origin
        .post(
            &format!("/v1/channels/{general}/messages"),
            &alice,
            json!({ "text": "<!here> standup", "client_msg_id": "here" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["message"]["mentions_here_users"], json!([carol_id]), "{v}");
    let (_, page) = origin.call(Method::GET, &format!("/v1/channels/{general}/messages"), &alice, None).await;
    let texts: Vec<&str> = page["messages"].as_array().unwrap().iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(texts.contains(&"text of bob-before"), "history kept: {texts:?} (seq {kept})");
    let team = origin.channel(&alice, "team", false).await;
    let (s, _) = origin.post(&format!("/v1/channels/{team}/members"), &alice, json!({ "user": bob_id })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = origin.post("/v1/dms", &alice, json!({ "users": [bob_id] })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Twice changes nothing.
    let (s, v) = origin.call(Method::POST, &deactivate(&bob_id), &alice, None).await;
    assert_eq!((s, v["user"]["deactivated"].as_bool()), (StatusCode::OK, Some(true)));

    // Reactivated: a new token works, the old ones stay revoked.
    let (s, v) = origin.call(Method::POST, &format!("/v1/users/{bob_id}/reactivate"), &alice, None).await;
    assert_eq!((s, v["user"]["deactivated"].as_bool()), (StatusCode::OK, Some(false)), "{v}");
    let fresh = v["token"].as_str().expect("a new token").to_string();
    for token in [&bob, &bob_laptop] {
        let (s, _) = origin.call(Method::GET, "/v1/me", token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "an old token came back");
    }
    let client = Client::connect(options(&b, &Transport::WsJson, &fresh)).await.unwrap();
    client.send(&general, "back", "bob-back", None).await.unwrap();
    let (s, _) = origin.post(&format!("/v1/channels/{team}/members"), &alice, json!({ "user": bob_id })).await;
    assert_eq!(s, StatusCode::OK);
    client.close().await;
}

/// A user connects the moment they are created, before the edge's copy of the workspace has
/// heard of them from the feed: the boot waits for the feed rather than refusing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_connects_the_moment_they_are_created() {
    let origin = Origin::start().await;
    let (alice, _, general) = origin.workspace().await;
    let (edge, _shutdown) = start_edge(&origin, "edge-a").await;
    // The workspace is loaded at the edge before the users exist.
    let first = Client::connect(options(&edge, &Transport::WsJson, &alice)).await.unwrap();
    for i in 0..20 {
        let (_, token) = origin.user(&alice, &format!("new{i}")).await;
        let client = Client::connect(options(&edge, &Transport::WsJson, &token))
            .await
            .unwrap_or_else(|e| panic!("user {i} was refused right after being created: {e}"));
        assert!(client.hello().channels.iter().any(|c| c.channel.id == general), "user {i} booted without #general");
        client.close().await;
    }
    first.close().await;
}
