//! Conversations end to end: edits, deletes, reactions, read markers across devices, channel
//! lifecycle, threads and typing — changed through the origin's HTTP API or a client frame, seen
//! live by a client on another edge and again after a fresh boot. A real origin (embedded store
//! in a temporary directory) and real edges on port 0, driven by the client SDK.
//!
//! Absence is checked without sleeping: every session receives events in feed order, so once
//! a client holds a later *sentinel* event it would already hold anything it was sent before.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use selvage_client::{Client, Inbound, Transport};
use selvage_shared::{ChannelId, ClientFrame, ErrorCode, Event, Message, Query, QueryKind};
use serde_json::{json, Value};
use support::*;

/// Events `client` receives until one matches `done` (returned last), failing after [`WAIT`].
async fn events_until(client: &mut Client, what: &str, done: impl Fn(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}; got {seen:?}");
        match client.next_event(left).await.unwrap() {
            Some(Inbound::Event(frame)) => {
                let hit = done(&frame.event);
                seen.push(frame.event);
                if hit {
                    return seen;
                }
            }
            Some(other) => panic!("unexpected {other:?} while waiting for {what}"),
            None => {}
        }
    }
}

/// Posts a message over HTTP; returns its seq.
async fn post(origin: &Origin, token: &str, channel: &ChannelId, text: &str, root: Option<u64>) -> u64 {
    let body = json!({ "text": text, "client_msg_id": format!("{text}-{}", rand_suffix()), "thread_root": root });
    let (s, v) = origin.post(&format!("/v1/channels/{channel}/messages"), token, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["seq"].as_u64().unwrap()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One page of history through the origin's HTTP API.
async fn history(origin: &Origin, token: &str, channel: &ChannelId) -> Vec<Value> {
    let (s, v) = origin.call(Method::GET, &format!("/v1/channels/{channel}/messages"), token, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["messages"].as_array().unwrap().clone()
}

/// The message with `seq` as a fresh session's `history` query answers it (from the edge's
/// cache or the origin), once it is as `expected` says: the edge applies the feed on its own
/// time, so it is asked again until then (within [`WAIT`]).
async fn message_via_edge(
    edge: &selvage_edge::Running,
    token: &str,
    channel: &ChannelId,
    seq: u64,
    expected: impl Fn(&Message) -> bool,
) -> Message {
    let deadline = Instant::now() + WAIT;
    loop {
        let client = Client::connect(options(edge, &Transport::WsJson, token)).await.unwrap();
        let q = Query { channel: Some(channel.clone()), limit: Some(100), ..Query::new("h", QueryKind::History) };
        let page = client.query(q).await.unwrap();
        client.close().await;
        let message = page.messages.into_iter().find(|m| m.seq == seq).expect("the message is in the page");
        if expected(&message) {
            return message;
        }
        assert!(Instant::now() < deadline, "the edge never showed the expected state: {message:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh session on `edge` whose `hello` shows `channel` as `expected` says, booting again
/// until it does (the edge applies the feed on its own time), within [`WAIT`].
async fn boot_until(
    edge: &selvage_edge::Running,
    token: &str,
    channel: &ChannelId,
    expected: impl Fn(&selvage_shared::ChannelBoot) -> bool,
) -> selvage_shared::ChannelBoot {
    let deadline = Instant::now() + WAIT;
    loop {
        let client = Client::connect(options(edge, &Transport::WsJson, token)).await.unwrap();
        let boot = client.hello().channels.iter().find(|c| c.channel.id == *channel).cloned();
        client.close().await;
        let boot = boot.expect("the channel is in hello");
        if expected(&boot) {
            return boot;
        }
        assert!(Instant::now() < deadline, "the edge never booted the expected state: {boot:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_message(channel: &ChannelId, seq: u64) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::Message(m) if m.channel == *channel && m.seq == seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_reach_other_edges_and_fresh_boots() {
    let origin = Origin::start().await;
    let (alice, _, general) = origin.workspace().await;
    let (_, bob) = origin.user(&alice, "bob").await;
    let (_, carol) = origin.user(&alice, "carol").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let mut watcher = Client::connect(options(&b, &Transport::WsMsgpack, &carol)).await.unwrap();

    let seq = post(&origin, &bob, &general, "helo <@UNOBODY>", None).await;
    events_until(&mut watcher, "the message", is_message(&general, seq)).await;

    // Only the author (or an admin) may edit; a refusal changes nothing.
    let path = format!("/v1/channels/{general}/messages/{seq}");
    let (s, v) = origin.call(Method::PATCH, &path, &carol, Some(json!({ "text": "vandalised" }))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{v}");
    let (s, v) = origin.call(Method::PATCH, &path, &bob, Some(json!({ "text": "" }))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = origin.call(Method::PATCH, &path, &bob, Some(json!({ "text": "hello", "extra": 1 }))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown fields are refused: {v}");

    let (s, v) = origin.call(Method::PATCH, &path, &bob, Some(json!({ "text": "hello @channel" }))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["message"]["text"], "hello @channel");
    assert!(v["message"]["edited_at"].as_i64().is_some(), "{v}");
    assert_eq!(v["message"]["mentions_channel"], true, "mentions are parsed again on edit: {v}");
    let events = events_until(&mut watcher, "the edit", |e| matches!(e, Event::MessageChanged { .. })).await;
    let Some(Event::MessageChanged { seq: changed, message, .. }) = events.last() else { unreachable!() };
    assert_eq!((*changed, message.seq, message.text.as_str()), (seq, seq, "hello @channel"));
    assert!(events[..events.len() - 1].is_empty(), "nothing came out of the refused edits: {events:?}");

    let fresh = message_via_edge(&a, &alice, &general, seq, |m| m.edited_at.is_some()).await;
    assert_eq!(fresh.text.as_str(), "hello @channel");

    // An admin may delete; the seq stays as a tombstone; a second delete changes nothing.
    let (s, v) = origin.call(Method::DELETE, &path, &carol, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = origin.call(Method::DELETE, &path, &alice, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["message"]["deleted"].as_bool(), v["message"]["text"].as_str()), (Some(true), Some("")));
    events_until(&mut watcher, "the delete", |e| matches!(e, Event::MessageDeleted { seq: s, .. } if *s == seq)).await;
    let (s, _) = origin.call(Method::DELETE, &path, &bob, None).await;
    assert_eq!(s, StatusCode::OK, "deleting a tombstone is a no-op");
    let (s, v) = origin.call(Method::PATCH, &path, &bob, Some(json!({ "text": "back" }))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a deleted message cannot be edited: {v}");
    let sentinel = post(&origin, &alice, &general, "sentinel", None).await;
    let events = events_until(&mut watcher, "the sentinel", is_message(&general, sentinel)).await;
    assert_eq!(events.len(), 1, "the no-op delete and refused edit logged nothing: {events:?}");

    let listed = history(&origin, &bob, &general).await;
    let tomb = listed.iter().find(|m| m["seq"] == seq).unwrap();
    assert_eq!((tomb["deleted"].as_bool(), tomb["text"].as_str()), (Some(true), Some("")));
    let seqs: Vec<u64> = listed.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=sentinel).collect::<Vec<_>>(), "history keeps every seq");
    let fresh = message_via_edge(&b, &bob, &general, seq, |m| m.deleted).await;
    assert!(fresh.text.is_empty(), "{fresh:?}");

    // Another workspace's caller cannot touch it, and gets not-found.
    let (other_admin, _, _) = origin.workspace().await;
    let (s, _) =
        origin.call(Method::DELETE, &format!("/v1/channels/{general}/messages/{sentinel}"), &other_admin, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_are_idempotent_counted_and_cached() {
    let origin = Origin::start().await;
    let (alice, _, general) = origin.workspace().await;
    let (bob_id, bob) = origin.user(&alice, "bob").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let mut watcher = Client::connect(options(&b, &Transport::WsJson, &alice)).await.unwrap();
    let seq = post(&origin, &alice, &general, "ship it", None).await;
    events_until(&mut watcher, "the message", is_message(&general, seq)).await;

    let react = |token: &str, emoji: &str, method: Method| {
        let path = format!("/v1/channels/{general}/messages/{seq}/reactions/{emoji}");
        let token = token.to_string();
        let origin = &origin;
        async move { origin.call(method, &path, &token, None).await }
    };
    for _ in 0..2 {
        let (s, v) = react(&bob, "tada", Method::PUT).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = react(&alice, "tada", Method::PUT).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["message"]["reactions"],
        json!([{ "emoji": "tada", "count": 2, "users": [bob_id, v["message"]["user"]] }])
    );
    let (s, _) = react(&alice, "eyes", Method::PUT).await;
    assert_eq!(s, StatusCode::OK);
    for _ in 0..2 {
        let (s, _) = react(&alice, "eyes", Method::DELETE).await;
        assert_eq!(s, StatusCode::OK, "removing is idempotent too");
    }
    let (s, v) = react(&bob, "Not An Emoji", Method::PUT).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // A user who left the channel may not react.
    let (s, _) = origin.call(Method::DELETE, &format!("/v1/channels/{general}/members/{bob_id}"), &bob, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = react(&bob, "thumbsup", Method::PUT).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_member")), "{v}");

    let sentinel = post(&origin, &alice, &general, "sentinel", None).await;
    let events = events_until(&mut watcher, "the sentinel", is_message(&general, sentinel)).await;
    let reactions: Vec<(&str, bool)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ReactionAdded { emoji, .. } => Some((emoji.as_str(), true)),
            Event::ReactionRemoved { emoji, .. } => Some((emoji.as_str(), false)),
            _ => None,
        })
        .collect();
    assert_eq!(reactions, [("tada", true), ("tada", true), ("eyes", true), ("eyes", false)], "one event per change");

    let listed = history(&origin, &alice, &general).await;
    let m = listed.iter().find(|m| m["seq"] == seq).unwrap();
    assert_eq!(m["reactions"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m["reactions"][0]["count"], 2);
    // The edges' caches applied the same events: a fresh history query agrees with the origin.
    for edge in [&a, &b] {
        let want = m["reactions"].clone();
        message_via_edge(edge, &alice, &general, seq, |cached| {
            serde_json::to_value(&cached.reactions).unwrap() == want
        })
        .await;
    }
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_marker_moves_forward_and_reaches_the_users_other_devices() {
    let origin = Origin::start().await;
    let (alice, _, general) = origin.workspace().await;
    let (bob_id, bob) = origin.user(&alice, "bob").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    for i in 0..5 {
        post(&origin, &alice, &general, &format!("m{i}"), None).await;
    }
    let phone = Client::connect(options(&a, &Transport::WsJson, &bob)).await.unwrap();
    let mut laptop = Client::connect(options(&b, &Transport::WsMsgpack, &bob)).await.unwrap();
    let mut other = Client::connect(options(&b, &Transport::WsJson, &alice)).await.unwrap();
    let boot = laptop.hello().channels.iter().find(|c| c.channel.id == general).unwrap().clone();
    assert_eq!((boot.last_seq, boot.read_seq, boot.unread), (5, 0, 5));

    phone.send_frame(&ClientFrame::MarkRead { channel: general.clone(), seq: 3 }).await.unwrap();
    let events = events_until(&mut laptop, "the read marker", |e| matches!(e, Event::ReadMarker { .. })).await;
    assert_eq!(
        events.last(),
        Some(&Event::ReadMarker { channel: general.clone(), user: bob_id.parse().unwrap(), seq: 3 }),
        "the laptop clears its badge live"
    );
    // Backwards and past-the-head marks: the first changes nothing, the second stops at the head.
    phone.send_frame(&ClientFrame::MarkRead { channel: general.clone(), seq: 1 }).await.unwrap();
    let path = format!("/v1/channels/{general}/read");
    let (s, v) = origin.call(Method::PUT, &path, &bob, Some(json!({ "seq": 2 }))).await;
    assert_eq!((s, v["read_seq"].as_u64()), (StatusCode::OK, Some(3)), "a marker never moves back: {v}");
    let (s, v) = origin.call(Method::PUT, &path, &bob, Some(json!({ "seq": 99 }))).await;
    assert_eq!((s, v["read_seq"].as_u64()), (StatusCode::OK, Some(5)), "{v}");
    let events = events_until(&mut laptop, "the second marker", |e| matches!(e, Event::ReadMarker { .. })).await;
    assert!(matches!(events.last(), Some(Event::ReadMarker { seq: 5, .. })), "{events:?}");

    // Nobody else hears of bob's markers.
    let sentinel = post(&origin, &bob, &general, "sentinel", None).await;
    let seen = events_until(&mut other, "the sentinel", is_message(&general, sentinel)).await;
    assert!(!seen.iter().any(|e| matches!(e, Event::ReadMarker { .. })), "{seen:?}");

    // A fresh boot on either edge shows the marker, moved by bob's own sentinel to it: what
    // one posts is never unread.
    for edge in [&a, &b] {
        let c = boot_until(edge, &bob, &general, |c| c.last_seq == 6).await;
        assert_eq!((c.last_seq, c.read_seq, c.unread), (6, 6, 0), "{c:?}");
    }
    // mark_read in a channel the user is not in fails with an error frame.
    let secret = origin.channel(&alice, "secret", true).await;
    laptop.send_frame(&ClientFrame::MarkRead { channel: secret, seq: 1 }).await.unwrap();
    loop {
        match laptop.next_event(WAIT).await.unwrap() {
            Some(Inbound::Error { code, .. }) => break assert_eq!(code, ErrorCode::NotFound),
            Some(Inbound::Event(_)) => continue,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
    phone.close().await;
    laptop.close().await;
    other.close().await;
}

/// `general` as `token`'s user sees it in a fresh `hello` on `edge` and in the origin's channel
/// list, which must agree: (read_seq, unread, mentions).
async fn unread_of(origin: &Origin, edge: &selvage_edge::Running, token: &str, general: &ChannelId) -> (u64, u64, u64) {
    let client = Client::connect(options(edge, &Transport::WsJson, token)).await.unwrap();
    let c = client.hello().channels.iter().find(|c| c.channel.id == *general).unwrap().clone();
    client.close().await;
    let (_, list) = origin.call(Method::GET, "/v1/channels", token, None).await;
    let listed = list["channels"].as_array().unwrap().iter().find(|c| c["id"] == general.as_str()).unwrap().clone();
    let listed = (
        listed["read_seq"].as_u64().unwrap(),
        listed["unread"].as_u64().unwrap(),
        listed["mentions"].as_u64().unwrap(),
    );
    assert_eq!((c.read_seq, c.unread, c.mentions), listed, "hello and the channel list agree");
    listed
}

/// Posting moves the author's read marker to their message: their own messages never count as
/// unread or as mentions, on the origin and on every edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_messages_are_never_unread() {
    let origin = Origin::start().await;
    let (alice, _, general) = origin.workspace().await;
    let (_, bob) = origin.user(&alice, "bob").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    post(&origin, &bob, &general, "first", None).await;
    for i in 0..6 {
        post(&origin, &alice, &general, &format!("m{i}"), None).await;
    }
    let last = post(&origin, &alice, &general, "@channel my own", None).await;
    assert_eq!(last, 8);
    for edge in [&a, &b] {
        boot_until(edge, &alice, &general, |c| c.last_seq == 8).await;
        assert_eq!(unread_of(&origin, edge, &alice, &general).await, (8, 0, 0), "alice wrote 7 of 8");
        assert_eq!(unread_of(&origin, edge, &bob, &general).await, (1, 7, 1), "bob has 7 of alice's to read");
    }
    // Someone else's message after them is unread again; a reply of one's own reads up to it.
    post(&origin, &bob, &general, "your turn", None).await;
    for edge in [&a, &b] {
        boot_until(edge, &alice, &general, |c| c.last_seq == 9).await;
        assert_eq!(unread_of(&origin, edge, &alice, &general).await, (8, 1, 0));
    }
    post(&origin, &alice, &general, "a reply", Some(1)).await;
    for edge in [&a, &b] {
        boot_until(edge, &alice, &general, |c| c.last_seq == 10).await;
        assert_eq!(unread_of(&origin, edge, &alice, &general).await, (10, 0, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_renamed_topiced_and_archived_read_only() {
    let origin = Origin::start().await;
    let (alice, _, _) = origin.workspace().await;
    let (bob_id, bob) = origin.user(&alice, "bob").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let plans = origin.channel(&bob, "plans", false).await;
    let (s, _) = origin.post(&format!("/v1/channels/{plans}/members"), &alice, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let mut watcher = Client::connect(options(&b, &Transport::WsJson, &alice)).await.unwrap();
    let path = format!("/v1/channels/{plans}");

    let (s, v) = origin.call(Method::PATCH, &path, &bob, Some(json!({ "name": "roadmap", "topic": "Q1" }))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["channel"]["name"].as_str(), v["channel"]["topic"].as_str()), (Some("roadmap"), Some("Q1")));
    let events = events_until(&mut watcher, "the update", |e| matches!(e, Event::ChannelUpdated { .. })).await;
    let Some(Event::ChannelUpdated { channel }) = events.last() else { unreachable!() };
    assert_eq!((channel.name.as_str(), channel.topic.as_str()), ("roadmap", "Q1"));

    // A member who did not create it may set the topic, not rename it; names stay unique.
    let (s, v) = origin.call(Method::PATCH, &path, &alice, Some(json!({ "purpose": "what we ship" }))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, carol) = origin.user(&alice, "carol").await;
    let (s, _) = origin.call(Method::PATCH, &path, &carol, Some(json!({ "name": "mine" }))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = origin.call(Method::PATCH, &path, &carol, Some(json!({ "topic": "mine" }))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "non-members may not set the topic");
    let (s, _) = origin.call(Method::PATCH, &path, &bob, Some(json!({ "name": "general" }))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = origin.call(Method::PATCH, &path, &bob, Some(json!({ "name": "Bad Name" }))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let seq = post(&origin, &bob, &plans, "last words", None).await;
    let (s, v) = origin.call(Method::PATCH, &path, &bob, Some(json!({ "archived": true }))).await;
    assert_eq!((s, v["channel"]["archived"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    events_until(&mut watcher, "the archive", |e| matches!(e, Event::ChannelUpdated { channel } if channel.archived))
        .await;

    // Read-only: sends (over the edge too), edits, reactions and topic changes are refused.
    let poster = Client::connect(options(&a, &Transport::WsJson, &bob)).await.unwrap();
    match poster.send(&plans, "anyone?", "after-archive", None).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Archived), "{e}"),
        Ok(ack) => panic!("an archived channel took a message: {ack:?}"),
    }
    let msg = format!("/v1/channels/{plans}/messages/{seq}");
    let (s, _) = origin.call(Method::PATCH, &msg, &bob, Some(json!({ "text": "edit" }))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = origin.call(Method::PUT, &format!("{msg}/reactions/tada"), &bob, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = origin.call(Method::PATCH, &path, &bob, Some(json!({ "topic": "still here" }))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("archived")), "{v}");
    // History stays readable; a fresh boot on the other edge shows the final record.
    assert_eq!(history(&origin, &alice, &plans).await.len(), 1);
    let c = boot_until(&a, &alice, &plans, |c| c.channel.archived).await.channel;
    assert_eq!((c.name.as_str(), c.purpose.as_str(), c.archived), ("roadmap", "what we ship", true));
    // Unarchiving is the creator's (or an admin's) call, and makes it writable again.
    let (s, _) = origin.call(Method::PATCH, &path, &alice, Some(json!({ "archived": false }))).await;
    assert_eq!(s, StatusCode::OK, "an admin may unarchive");
    post(&origin, &bob, &plans, "we're back", None).await;

    // DMs keep their names and cannot be archived.
    let (_, dm) = origin.post("/v1/dms", &alice, json!({ "users": [bob_id] })).await;
    let dm_path = format!("/v1/channels/{}", dm["channel"]["id"].as_str().unwrap());
    let (s, _) = origin.call(Method::PATCH, &dm_path, &alice, Some(json!({ "name": "ours" }))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = origin.call(Method::PATCH, &dm_path, &alice, Some(json!({ "archived": true }))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for c in [poster, watcher] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_replies_reach_followers_and_the_summary_reaches_the_channel() {
    let origin = Origin::start().await;
    let (alice, _, general) = origin.workspace().await;
    let (bob_id, bob) = origin.user(&alice, "bob").await;
    let (_, carol) = origin.user(&alice, "carol").await;
    let (dave_id, dave) = origin.user(&alice, "dave").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let mut alice_c = Client::connect(options(&a, &Transport::WsJson, &alice)).await.unwrap();
    let mut carol_c = Client::connect(options(&b, &Transport::WsMsgpack, &carol)).await.unwrap();
    let mut dave_c = Client::connect(options(&b, &Transport::WsJson, &dave)).await.unwrap();

    let root = post(&origin, &alice, &general, "lunch?", None).await;
    let reply = post(&origin, &bob, &general, &format!("yes, and <@{dave_id}> too"), Some(root)).await;
    assert_eq!(reply, root + 1, "replies take the channel's next seq");

    // The root's author follows the thread and gets the reply after the root's new summary.
    let got = events_until(&mut alice_c, "the reply", is_message(&general, reply)).await;
    let summary = got.iter().rev().find_map(|e| match e {
        Event::MessageChanged { seq, message, .. } if *seq == root => Some(message.clone()),
        _ => None,
    });
    let summary = summary.expect("the root's summary came before the reply");
    assert_eq!((summary.reply_count, summary.latest_reply_seq), (1, Some(reply)));
    assert_eq!(summary.reply_users, [bob_id.parse().unwrap()]);
    // Dave is mentioned in the reply, so it reaches him.
    events_until(&mut dave_c, "the reply that mentions dave", is_message(&general, reply)).await;
    // Carol is in the channel but not in the thread: the summary, not the reply.
    let sentinel = post(&origin, &alice, &general, "sentinel", None).await;
    let seen = events_until(&mut carol_c, "the sentinel", is_message(&general, sentinel)).await;
    assert!(!seen.iter().any(is_message(&general, reply)), "carol got the reply: {seen:?}");
    assert!(
        seen.iter().any(|e| matches!(e, Event::MessageChanged { seq, message, .. } if *seq == root && message.latest_reply_seq == Some(reply))),
        "carol learns the root's new summary (and that {reply} is a reply): {seen:?}"
    );

    // Carol follows the thread and gets the next reply; bob unfollows and does not, until he
    // replies again.
    let follow = format!("/v1/channels/{general}/messages/{root}/follow");
    let (s, v) = origin.call(Method::PUT, &follow, &carol, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = origin.call(Method::DELETE, &follow, &bob, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(!v["message"]["thread_followers"].as_array().unwrap().iter().any(|u| u == bob_id.as_str()), "{v}");
    let (s, _) =
        origin.call(Method::PUT, &format!("/v1/channels/{general}/messages/{reply}/follow"), &carol, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a reply is not a thread");
    let mut bob_c = Client::connect(options(&a, &Transport::WsJson, &bob)).await.unwrap();
    let second = post(&origin, &alice, &general, "second reply", Some(root)).await;
    events_until(&mut carol_c, "the second reply", is_message(&general, second)).await;
    let sentinel = post(&origin, &alice, &general, "sentinel 2", None).await;
    let seen = events_until(&mut bob_c, "the second sentinel", is_message(&general, sentinel)).await;
    assert!(!seen.iter().any(is_message(&general, second)), "bob unfollowed: {seen:?}");
    let third = post(&origin, &bob, &general, "back in", Some(root)).await;
    let fourth = post(&origin, &alice, &general, "welcome back", Some(root)).await;
    events_until(&mut bob_c, "the fourth reply", is_message(&general, fourth)).await;
    bob_c.close().await;

    // The thread reads back through the edge and the origin alike; the root carries the summary.
    let page = alice_c
        .query(Query { channel: Some(general.clone()), root: Some(root), ..Query::new("t", QueryKind::Thread) })
        .await
        .unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [reply, second, third, fourth]);
    let listed = history(&origin, &carol, &general).await;
    let r = listed.iter().find(|m| m["seq"] == root).unwrap();
    assert_eq!((r["reply_count"].as_u64(), r["reply_users"].as_array().map(Vec::len)), (Some(4), Some(2)), "{r}");
    // Deleting the reply leaves a tombstone in the thread and takes it out of the count.
    let (s, _) = origin.call(Method::DELETE, &format!("/v1/channels/{general}/messages/{reply}"), &bob, None).await;
    assert_eq!(s, StatusCode::OK);
    let listed = history(&origin, &carol, &general).await;
    let r = listed.iter().find(|m| m["seq"] == root).unwrap();
    assert_eq!(r["reply_count"].as_u64(), Some(3), "the deleted reply is not counted: {r}");
    let (_, thread) =
        origin.call(Method::GET, &format!("/v1/channels/{general}/messages/{root}/thread"), &carol, None).await;
    assert_eq!(thread["messages"][0]["deleted"], true, "{thread}");
    for c in [alice_c, carol_c, dave_c] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_edges_once_per_three_seconds_and_is_never_stored() {
    let origin = Origin::start().await;
    let (alice, alice_id, general) = origin.workspace().await;
    let (_, bob) = origin.user(&alice, "bob").await;
    let (_, outsider) = origin.user(&alice, "eve").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let typist = Client::connect(options(&a, &Transport::WsJson, &alice)).await.unwrap();
    let mut near = Client::connect(options(&a, &Transport::WsJson, &bob)).await.unwrap();
    let mut far = Client::connect(options(&b, &Transport::WsMsgpack, &bob)).await.unwrap();
    let quiet = origin.channel(&alice, "quiet", true).await;
    let eve = Client::connect(options(&b, &Transport::WsJson, &outsider)).await.unwrap();

    // A storm of typing frames: each watcher gets it once (the throttle), on both edges.
    let started = Instant::now();
    for _ in 0..50 {
        typist.send_frame(&ClientFrame::Typing { channel: general.clone() }).await.unwrap();
    }
    // Typing in a channel eve is not in is ignored.
    eve.send_frame(&ClientFrame::Typing { channel: quiet.clone() }).await.unwrap();
    for watcher in [&mut near, &mut far] {
        let got = events_until(watcher, "typing", |e| matches!(e, Event::Typing { .. })).await;
        assert_eq!(got, [Event::Typing { channel: general.clone(), user: alice_id.parse().unwrap() }]);
    }
    let sentinel = post(&origin, &alice, &general, "sentinel", None).await;
    for watcher in [&mut near, &mut far] {
        let seen = events_until(watcher, "the sentinel", is_message(&general, sentinel)).await;
        let extra = seen.iter().filter(|e| matches!(e, Event::Typing { .. })).count();
        // Only if the storm took longer than the throttle window may a second one pass.
        if started.elapsed() < Duration::from_secs(3) {
            assert_eq!(extra, 0, "the storm was throttled: {seen:?}");
        }
    }
    // Never stored: the long-poll log holds the sentinel but no typing.
    let (_, page) =
        origin.call(Method::GET, "/v1/events?cursor=000000000000000000000000&limit=1000", &alice, None).await;
    let types: Vec<&str> = page["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"message") && !types.contains(&"typing"), "{types:?}");
    for c in [typist, near, far, eve] {
        c.close().await;
    }
}

/// `general`'s unread mention count in a fresh `hello` on `edge` and in the origin's channel
/// list, which must agree.
async fn mention_counts(origin: &Origin, edge: &selvage_edge::Running, token: &str, general: &ChannelId) -> u64 {
    unread_of(origin, edge, token, general).await.2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_are_counted_per_user_with_here_for_active_members_only() {
    let origin = Origin::start().await;
    let (alice, _, general) = origin.workspace().await;
    let (bob_id, bob) = origin.user(&alice, "bob").await;
    let (_, carol) = origin.user(&alice, "carol").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    // Bob is online (on edge B); carol is not. Alice follows bob's presence to know when the
    // origin has heard he is active.
    let mut bob_online = Client::connect(options(&b, &Transport::WsJson, &bob)).await.unwrap();
    let mut alice_c = Client::connect(options(&a, &Transport::WsJson, &alice)).await.unwrap();
    alice_c.send_frame(&ClientFrame::PresenceSub { users: vec![bob_id.parse().unwrap()] }).await.unwrap();
    events_until(&mut alice_c, "bob active", |e| {
        matches!(e, Event::PresenceChange { presence: selvage_shared::Presence::Active, .. })
    })
    .await;

    // Bob's own @channel first: what one posts never mentions oneself.
    post(&origin, &bob, &general, "@channel my own", None).await;
    let by_name = post(&origin, &alice, &general, &format!("<@{bob_id}> look"), None).await;
    let everyone = post(&origin, &alice, &general, "@channel lunch", None).await;
    let here = post(&origin, &alice, &general, "<!here> standup", None).await;
    let last = here;
    // Both edges have applied everything before they are asked.
    events_until(&mut alice_c, "the last post", is_message(&general, last)).await;
    events_until(&mut bob_online, "the last post", is_message(&general, last)).await;
    let listed = history(&origin, &alice, &general).await;
    let here_msg = listed.iter().find(|m| m["seq"] == here).unwrap();
    assert_eq!(here_msg["mentions_here_users"], json!([bob_id]), "@here reached the active member only: {here_msg}");

    // Both edges (one cold, one warm) and the origin count the same.
    for edge in [&a, &b] {
        assert_eq!(mention_counts(&origin, edge, &bob, &general).await, 3, "by name, @channel, @here");
        assert_eq!(mention_counts(&origin, edge, &carol, &general).await, 2, "@channel twice, not @here");
        assert_eq!(mention_counts(&origin, edge, &alice, &general).await, 0, "her own posts read bob's @channel");
    }
    // An edit that drops the mention, and a delete, take them out of the counts.
    let path = format!("/v1/channels/{general}/messages/{by_name}");
    let (s, _) = origin.call(Method::PATCH, &path, &alice, Some(json!({ "text": "look" }))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) =
        origin.call(Method::DELETE, &format!("/v1/channels/{general}/messages/{everyone}"), &alice, None).await;
    assert_eq!(s, StatusCode::OK);
    let sentinel = post(&origin, &alice, &general, "sentinel", None).await;
    events_until(&mut alice_c, "the sentinel", is_message(&general, sentinel)).await;
    events_until(&mut bob_online, "the sentinel", is_message(&general, sentinel)).await;
    assert_eq!(mention_counts(&origin, &a, &bob, &general).await, 1);
    assert_eq!(mention_counts(&origin, &b, &carol, &general).await, 1);
    // Reading past them clears them.
    let (s, _) =
        origin.call(Method::PUT, &format!("/v1/channels/{general}/read"), &bob, Some(json!({ "seq": here }))).await;
    assert_eq!(s, StatusCode::OK);
    let sentinel = post(&origin, &alice, &general, "sentinel 2", None).await;
    events_until(&mut alice_c, "the second sentinel", is_message(&general, sentinel)).await;
    events_until(&mut bob_online, "the second sentinel", is_message(&general, sentinel)).await;
    for edge in [&a, &b] {
        assert_eq!(mention_counts(&origin, edge, &bob, &general).await, 0);
    }
    bob_online.close().await;
    alice_c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_client_catches_up_on_edits_deletes_and_reactions_on_another_edge() {
    let origin = Origin::start().await;
    let (alice, alice_id, general) = origin.workspace().await;
    let (_, bob) = origin.user(&alice, "bob").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let mut client = Client::connect(options(&a, &Transport::WsMsgpack, &bob)).await.unwrap();
    let seqs = [post(&origin, &alice, &general, "one", None).await, post(&origin, &alice, &general, "two", None).await];
    events_until(&mut client, "both messages", is_message(&general, seqs[1])).await;
    // Bob goes away; while he is gone the messages change.
    let resume_from = client.connect_options_with_resume();
    client.close().await;
    let base = format!("/v1/channels/{general}/messages");
    let (s, _) =
        origin.call(Method::PATCH, &format!("{base}/{}", seqs[0]), &alice, Some(json!({ "text": "uno" }))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = origin.call(Method::PUT, &format!("{base}/{}/reactions/wave", seqs[0]), &alice, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = origin.call(Method::DELETE, &format!("{base}/{}", seqs[1]), &alice, None).await;
    assert_eq!(s, StatusCode::OK);
    let sentinel = post(&origin, &alice, &general, "sentinel", None).await;
    // He comes back on the other edge, resuming: the changes arrive in order, then the sentinel.
    let mut opts = options(&b, &Transport::WsJson, &bob);
    opts.resume = resume_from.resume;
    let mut back = Client::connect(opts).await.unwrap();
    assert!(back.hello().resumed);
    let got = events_until(&mut back, "the sentinel", is_message(&general, sentinel)).await;
    let kinds: Vec<&str> = got.iter().map(Event::kind).collect();
    assert_eq!(kinds, ["message_changed", "reaction_added", "message_deleted", "message"], "{got:?}");
    // Folding them over what he had gives the origin's final state.
    let mut first = Message::new(general.clone(), seqs[0], 0, alice_id.parse().unwrap(), "one");
    for event in &got {
        match event {
            Event::MessageChanged { seq, message, .. } if *seq == seqs[0] => first = message.clone(),
            Event::ReactionAdded { seq, user, emoji, .. } if *seq == seqs[0] => first.apply_reaction(user, emoji, true),
            _ => {}
        }
    }
    let listed = history(&origin, &bob, &general).await;
    let stored = listed.iter().find(|m| m["seq"] == seqs[0]).unwrap();
    assert_eq!((first.text.as_str(), first.reactions.len()), ("uno", 1));
    assert_eq!(serde_json::to_value(&first.reactions).unwrap(), stored["reactions"]);
    back.close().await;
}
