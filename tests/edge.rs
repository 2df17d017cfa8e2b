//! End to end through the edge tier: a real origin (embedded store in a temporary directory,
//! QUIC link) and real edges on port 0, driven by the client SDK over WebSocket (JSON and
//! MessagePack) and QUIC.

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use selvage_client::{Client, Inbound, Transport};
use selvage_shared::{ClientFrame, Cursor, ErrorCode, Event, Query, QueryKind};
use serde_json::json;
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_deliver_one_order_over_every_transport() {
    let origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let (_, bob_token) = origin.user(&alice_token, "bob").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let mut next_seq = 1;
    for (name, ta, tb) in [
        ("ws json", Transport::WsJson, Transport::WsJson),
        ("ws msgpack", Transport::WsMsgpack, Transport::WsMsgpack),
        ("quic", quic(&a), quic(&b)),
    ] {
        let mut alice = Client::connect(options(&a, &ta, &alice_token)).await.unwrap();
        let mut bob = Client::connect(options(&b, &tb, &bob_token)).await.unwrap();
        assert!(alice.hello().channels.iter().any(|c| c.channel.id == general), "{name}: alice boots with #general");
        assert_eq!(bob.hello().self_user.handle, "bob", "{name}");
        let handle = alice.handle();
        let per = 15;
        let mut sends = Vec::new();
        for i in 0..per {
            let (alice, general) = (handle.clone(), general.clone());
            sends.push(tokio::spawn(async move {
                alice.send(&general, "hi", &format!("{name}-a{i}"), None).await.unwrap().seq
            }));
        }
        let mut acked = Vec::new();
        for i in 0..per {
            acked.push(bob.send(&general, "hey", &format!("{name}-b{i}"), None).await.unwrap().seq);
        }
        for s in sends {
            acked.push(s.await.unwrap());
        }
        acked.sort_unstable();
        let last = next_seq + 2 * per as u64 - 1;
        assert_eq!(acked, (next_seq..=last).collect::<Vec<_>>(), "{name}: acks are the seqs, once each");
        let seen_by_alice = collect(&mut alice, &general, 2 * per).await;
        let seen_by_bob = collect(&mut bob, &general, 2 * per).await;
        assert_gap_free(&seen_by_alice, next_seq, last);
        assert_eq!(seen_by_alice, seen_by_bob, "{name}: both edges deliver the same messages in the same order");
        next_seq = last + 1;
        alice.close().await;
        bob.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_boot_asks_the_origin_nothing() {
    let origin = Origin::start().await;
    let (alice_token, _, _) = origin.workspace().await;
    let (edge, _s) = start_edge(&origin, "edge-a").await;
    let first = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    first.close().await;
    // The cold boot also asks, in the background, who is online; wait for that call so that it
    // is counted before the warm boots.
    let deadline = tokio::time::Instant::now() + WAIT;
    while origin.link_calls_of("presence_snapshot").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the cold boot never asked who is online");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = origin.link_calls().await;
    assert!(before >= 3.0, "the cold boot asked the origin (token, snapshot, who is online): {before}");
    for transport in [Transport::WsJson, Transport::WsMsgpack, quic(&edge)] {
        let again = Client::connect(options(&edge, &transport, &alice_token)).await.unwrap();
        assert!(!again.hello().channels.is_empty());
        again.close().await;
    }
    assert_eq!(origin.link_calls().await, before, "warm boots are answered by the edge alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_channels_stay_private_and_removed_members_stop_receiving() {
    let origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let (bob_id, bob_token) = origin.user(&alice_token, "bob").await;
    let (_, carol_token) = origin.user(&alice_token, "carol").await;
    let secret = origin.channel(&alice_token, "secret", true).await;
    let (s, v) = origin.post(&format!("/v1/channels/{secret}/members"), &alice_token, json!({ "user": bob_id })).await;
    assert!(s.is_success(), "{v}");
    let (edge, _s) = start_edge(&origin, "edge-a").await;
    let mut bob = Client::connect(options(&edge, &Transport::WsJson, &bob_token)).await.unwrap();
    let mut carol = Client::connect(options(&edge, &Transport::WsMsgpack, &carol_token)).await.unwrap();
    assert!(bob.hello().channels.iter().any(|c| c.channel.id == secret));
    assert!(!carol.hello().channels.iter().any(|c| c.channel.id == secret), "not in carol's boot");
    let history = Query { channel: Some(secret.clone()), limit: Some(10), ..Query::new("h1", QueryKind::History) };
    match carol.query(history).await {
        Err(selvage_client::ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("carol read a private channel: {other:?}"),
    }
    match carol.send(&secret, "let me in", "c1", None).await {
        Err(selvage_client::ClientError::Refused { code, .. }) => {
            assert!(matches!(code, ErrorCode::NotFound | ErrorCode::NotMember), "{code:?}")
        }
        other => panic!("carol posted in a private channel: {other:?}"),
    }
    origin.send(&alice_token, &secret, "s1").await;
    assert_eq!(collect(&mut bob, &secret, 1).await.len(), 1);
    // Bob is removed; everything after that in #secret must not reach him.
    let (s, v) = origin
        .call(reqwest::Method::DELETE, &format!("/v1/channels/{secret}/members/{bob_id}"), &alice_token, None)
        .await;
    assert!(s.is_success(), "{v}");
    origin.send(&alice_token, &secret, "s2").await;
    origin.send(&alice_token, &general, "g-marker").await;
    // The marker in #general comes after s2 in the feed: once bob has it, s2 would have come.
    let mut saw_left = false;
    let deadline = Instant::now() + WAIT;
    loop {
        let event = bob.next_event(deadline.saturating_duration_since(Instant::now())).await.unwrap();
        match event {
            Some(Inbound::Event(f)) => match f.event {
                Event::MemberLeft { channel, .. } if channel == secret => saw_left = true,
                Event::Message(m) if m.channel == secret => panic!("a removed member got {m:?}"),
                Event::Message(m) if m.client_msg_id == "g-marker" => break,
                _ => {}
            },
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("bob never got the marker"),
        }
    }
    assert!(saw_left, "bob is told he left");
    // Carol saw nothing of #secret at all.
    while let Some(event) = carol.next_event(Duration::from_millis(300)).await.unwrap() {
        if let Inbound::Event(f) = event {
            assert_ne!(f.event.channel(), Some(&secret), "carol got {f:?}");
        }
    }
}

/// The edge works out who gets a channel's events once and reuses it: sessions that connect
/// and members who join after a channel had traffic must still get what follows, and a closed
/// session must not hold the others up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_members_arriving_after_traffic_get_what_follows() {
    let origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let (bob_id, bob_token) = origin.user(&alice_token, "bob").await;
    let (_, carol_token) = origin.user(&alice_token, "carol").await;
    let later = origin.channel(&alice_token, "later", false).await;
    let (edge, _s) = start_edge(&origin, "edge-a").await;
    let mut bob = Client::connect(options(&edge, &Transport::WsJson, &bob_token)).await.unwrap();
    let mut alice = Client::connect(options(&edge, &Transport::WsMsgpack, &alice_token)).await.unwrap();
    origin.send(&alice_token, &general, "g1").await;
    origin.send(&alice_token, &later, "l1").await;
    assert_eq!(collect(&mut bob, &general, 1).await[0].1, "g1");
    assert_eq!(collect(&mut alice, &later, 1).await[0].1, "l1");

    // New sessions, after #general's audience was worked out.
    let mut bob2 = Client::connect(options(&edge, &Transport::WsMsgpack, &bob_token)).await.unwrap();
    let mut carol = Client::connect(options(&edge, &quic(&edge), &carol_token)).await.unwrap();
    origin.send(&alice_token, &general, "g2").await;
    for client in [&mut bob, &mut bob2, &mut carol, &mut alice] {
        assert_eq!(collect(client, &general, 1).await, vec![(2, "g2".to_string())]);
    }

    // A member who joins after #later had traffic gets the next message, on both sessions.
    let (s, v) = origin.post(&format!("/v1/channels/{later}/members"), &alice_token, json!({ "user": bob_id })).await;
    assert!(s.is_success(), "{v}");
    origin.send(&alice_token, &later, "l2").await;
    assert_eq!(collect(&mut bob, &later, 1).await, vec![(2, "l2".to_string())]);
    assert_eq!(collect(&mut bob2, &later, 1).await, vec![(2, "l2".to_string())]);

    // One of bob's sessions goes; the other and everyone else keep getting events.
    bob2.close().await;
    origin.send(&alice_token, &general, "g3").await;
    assert_eq!(collect(&mut bob, &general, 1).await, vec![(3, "g3".to_string())]);
    assert_eq!(collect(&mut carol, &general, 1).await, vec![(3, "g3".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_edge_keeps_serving() {
    let origin = Origin::start().await;
    let (alice_token, _, _) = origin.workspace().await;
    let (_, bob_token) = origin.user(&alice_token, "bob").await;
    let (edge, _s) = start_edge(&origin, "edge-a").await;
    let mut alice = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    let bob = Client::connect(options(&edge, &Transport::WsMsgpack, &bob_token)).await.unwrap();
    for (bytes, binary) in [
        (b"{not json".to_vec(), false),
        (br#"{"type":"explode","id":"x"}"#.to_vec(), false),
        (br#"{"type":"send","id":"1","channel":"C1","text":"","client_msg_id":"m"}"#.to_vec(), false),
        (vec![0xc1, 0xff, 0x00], true),
    ] {
        alice.send_raw(bytes, binary).await.unwrap();
        match alice.next_event(WAIT).await.unwrap() {
            Some(Inbound::Error { code, message }) => {
                assert_eq!(code, ErrorCode::BadFrame, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
    alice.ping().await.expect("the connection survives bad frames");
    // Over the frame limit: the connection is closed with a reason, others carry on.
    let huge = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(selvage_shared::MAX_CLIENT_FRAME_BYTES + 10));
    alice.send_raw(huge.into_bytes(), false).await.ok();
    match alice.next_event(WAIT).await {
        Ok(Some(Inbound::Closed { code, .. })) => assert_eq!(code, Some(1009)),
        Err(_) => {}
        other => panic!("expected a close, got {other:?}"),
    }
    bob.ping().await.expect("other connections are unaffected");
    let unauthorized = Client::connect(options(&edge, &Transport::WsJson, "not-a-token")).await;
    assert!(unauthorized.is_err(), "a wrong token gets no session");
    bob.ping().await.expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edge_s_clients_resume_on_another_without_gaps() {
    let origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let (_, bob_token) = origin.user(&alice_token, "bob").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    // Edge A runs on its own runtime, so killing it is a crash: every task and socket gone at
    // once, nothing said to the clients.
    let edge_a = KillableEdge::start(origin.edge_config("edge-a")).await;
    let mut bob = edge_a.connect(Transport::WsMsgpack, &bob_token).await;
    let writer = tokio::spawn({
        let origin_base = origin.base.clone();
        let (token, general) = (alice_token.clone(), general.clone());
        async move {
            let http = reqwest::Client::new();
            let mut acked = Vec::new();
            for i in 0..300 {
                let resp = http
                    .post(format!("{origin_base}/v1/channels/{general}/messages"))
                    .bearer_auth(&token)
                    .json(&json!({ "text": "x", "client_msg_id": format!("w{i}") }))
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success());
                acked.push(i);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            acked.len()
        }
    });
    let mut got: BTreeMap<u64, usize> = BTreeMap::new();
    // Read a while on edge A, then kill it.
    let mut order = Vec::new();
    while got.len() < 60 {
        if let Some(Inbound::Event(f)) = bob.next_event(WAIT).await.unwrap() {
            if let Event::Message(m) = f.event {
                *got.entry(m.seq).or_default() += 1;
                order.push(m.seq);
            }
        }
    }
    edge_a.kill();
    let cursor: Cursor = loop {
        match bob.next_event(WAIT).await {
            Ok(Some(Inbound::Event(f))) => {
                if let Event::Message(m) = f.event {
                    *got.entry(m.seq).or_default() += 1;
                    order.push(m.seq);
                }
            }
            Ok(Some(Inbound::Closed { .. })) | Err(_) => break bob.last_cursor().unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    let mut opts = options(&b, &Transport::WsMsgpack, &bob_token);
    opts.resume = Some(cursor);
    let mut bob = Client::connect(opts).await.unwrap();
    assert!(bob.hello().resumed);
    let total = writer.await.unwrap() as u64;
    while (got.len() as u64) < total {
        match bob.next_event(WAIT).await.unwrap() {
            Some(Inbound::Event(f)) => {
                if let Event::Message(m) = f.event {
                    *got.entry(m.seq).or_default() += 1;
                    order.push(m.seq);
                }
            }
            other => panic!("missing {} messages, got {other:?}", total - got.len() as u64),
        }
    }
    assert!(got.values().all(|n| *n == 1), "no duplicates across the resume");
    assert_eq!(order, (1..=total).collect::<Vec<_>>(), "gap-free, in order, across the resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_says_goodbye_and_refuses_new_connections() {
    let origin = Origin::start().await;
    let (alice_token, _, _) = origin.workspace().await;
    let (edge, _s) = start_edge(&origin, "edge-a").await;
    let mut alice = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/admin/drain", edge.addr);
    assert_eq!(http.post(&url).bearer_auth("wrong-key-wrong-key").send().await.unwrap().status(), 401);
    assert_eq!(http.post(&url).bearer_auth(OPERATOR_KEY).send().await.unwrap().status(), 202);
    match alice.next_event(WAIT).await.unwrap() {
        Some(Inbound::Goodbye { reconnect_in_ms }) => assert!(reconnect_in_ms < 1500, "{reconnect_in_ms}"),
        other => panic!("expected goodbye, got {other:?}"),
    }
    let ready = http.get(format!("http://{}/readyz", edge.addr)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "a draining edge is not ready");
    assert!(Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.is_err(), "no new sessions");
    match alice.next_event(WAIT).await {
        Ok(Some(Inbound::Closed { code, .. })) => assert_eq!(code, Some(1012)),
        other => panic!("expected the close after the grace period, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selvage_admin_drain_drains_an_edge_as_the_kubernetes_pre_stop_hook_does() {
    let origin = Origin::start().await;
    let (alice_token, _, _) = origin.workspace().await;
    let (edge, _s) = start_edge(&origin, "edge-a").await;
    let mut alice = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    let url = format!("http://{}", edge.addr);
    let drain = |key: &'static str| {
        let url = url.clone();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_selvage"))
            .args(["admin", "--url", &url, "drain", "--after-ms", "100"])
            .env("SELVAGE_OPERATOR_KEY", key)
            .env("RUST_LOG", "warn")
            .output()
    };
    let refused = drain("wrong-key-wrong-key").await.unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refused the operator key"), "{refused:?}");
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "a wrong key changes nothing");
    let drained = drain(OPERATOR_KEY).await.unwrap();
    assert!(drained.status.success(), "{drained:?}");
    match alice.next_event(WAIT).await.unwrap() {
        Some(Inbound::Goodbye { .. }) => {}
        other => panic!("expected goodbye, got {other:?}"),
    }
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "a draining edge is not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_origin_the_edge_serves_boots_and_catches_up_after() {
    let mut origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let (edge, _s) = start_edge(&origin, "edge-a").await;
    let warm = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    warm.close().await;
    origin.stop().await;
    wait_until("the edge notices", || !edge.edge.is_ready()).await;
    let mut alice = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    assert!(!alice.hello().channels.is_empty(), "boot from the cache");
    match alice.send(&general, "anyone?", "down-1", None).await {
        Err(selvage_client::ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::Unavailable),
        other => panic!("expected unavailable, got {other:?}"),
    }
    origin.restart().await;
    wait_until("the edge relinks", || edge.edge.is_ready()).await;
    let ack = alice.send(&general, "back", "up-1", None).await.unwrap();
    let got = collect(&mut alice, &general, 1).await;
    assert_eq!(got, vec![(ack.seq, "up-1".to_string())]);
    let _ = ClientFrame::Ping { id: "unused".into() };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_and_repeats_nothing() {
    let origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let (_, bob_token) = origin.user(&alice_token, "bob").await;
    let relay = Relay::start(origin.link).await;
    let mut config = origin.edge_config("edge-a");
    config.origin.link = relay.addr.to_string();
    let (edge, _s) = start_edge_with(config).await;
    let mut bob = Client::connect(options(&edge, &Transport::WsJson, &bob_token)).await.unwrap();
    let stop = CancellationToken::new();
    let writer = spawn_writer(&origin, &alice_token, &general, "x".into(), Duration::from_millis(5), stop.clone());
    let mut got = collect(&mut bob, &general, 20).await;
    relay.set_cut(true);
    wait_until("the edge notices the cut link", || !edge.edge.is_ready()).await;
    relay.set_cut(false);
    wait_until("the edge relinks", || edge.edge.is_ready()).await;
    // Traffic after the link came back too.
    let relinked_at = origin.send(&alice_token, &general, "after-relink").await;
    stop.cancel();
    let total = writer.await.unwrap() + 1;
    assert!(relinked_at <= total);
    let seen: HashSet<u64> = got.iter().map(|(s, _)| *s).collect();
    got.extend(collect(&mut bob, &general, total as usize - seen.len()).await);
    assert_gap_free(&got, 1, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_shed_and_others_keep_up() {
    let origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let (_, bob_token) = origin.user(&alice_token, "bob").await;
    let mut config = origin.edge_config("edge-a");
    config.sessions.outbound_queue = 16;
    let (edge, _s) = start_edge_with(config).await;
    let mut alice = Client::connect(options(&edge, &Transport::WsMsgpack, &alice_token)).await.unwrap();
    // Bob's client reads one event and then nothing: its queue fills, then the socket.
    let settings = selvage_client::ClientSettings {
        event_queue: 1,
        heartbeat: selvage_client::Heartbeat::Off,
        ..Default::default()
    };
    let slow = Client::connect_with(options(&edge, &Transport::WsJson, &bob_token), settings).await.unwrap();
    let big = "y".repeat(30_000);
    let count = 400u64;
    let stop = CancellationToken::new();
    let writer = spawn_writer(&origin, &alice_token, &general, big, Duration::ZERO, stop.clone());
    let metrics_url = format!("http://{}/metrics", edge.addr);
    let shed = async {
        loop {
            let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
            if metric_sum(&text, "selvage_edge_queue_drops_total{outcome=\"connection_closed\"}") > 0.0 {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // 12 MB through one edge: a busy machine (a debug build, other tests beside it) takes a
    // while, so the deadline is longer than the others'.
    let got = collect_within(&mut alice, &general, count as usize, WAIT * 3);
    let (text, got) = tokio::time::timeout(WAIT * 3, async { tokio::join!(shed, got) }).await.expect("shed in time");
    stop.cancel();
    let sent = writer.await.unwrap();
    assert!(sent >= count);
    assert_gap_free(&got, 1, count);
    assert!(text.contains("selvage_edge_queue_drops_total"), "the shedding is counted");
    // The shed session is unregistered and its queue freed: only alice's stays open.
    let deadline = Instant::now() + WAIT;
    loop {
        let after = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        let open = metric_sum(&after, "selvage_edge_connections{transport=\"ws\"}");
        if open == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the slow session is still open ({open} ws connections)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.ping().await.expect("alice is unaffected");
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_and_old_history_queries_are_answered_by_the_origin_through_the_edge() {
    let origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let (_, carol_token) = origin.user(&alice_token, "carol").await;
    let secret = origin.channel(&alice_token, "secret", true).await;
    let mut config = origin.edge_config("edge-a");
    // A small buffer, so that the oldest history pages must come from the origin.
    config.cache.recent_events_per_channel = 4;
    let (edge, _s) = start_edge_with(config).await;
    let alice = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    let carol = Client::connect(options(&edge, &Transport::WsMsgpack, &carol_token)).await.unwrap();
    let root = alice.send(&general, "root", "root", None).await.unwrap().seq;
    let mut replies = Vec::new();
    for i in 0..6 {
        replies.push(alice.send(&general, &format!("reply {i}"), &format!("reply-{i}"), Some(root)).await.unwrap().seq);
        alice.send(&general, &format!("chatter {i}"), &format!("chatter-{i}"), None).await.unwrap();
    }
    let thread = |root, limit, before| Query {
        channel: Some(general.clone()),
        root: Some(root),
        limit: Some(limit),
        before,
        ..Query::new("t", QueryKind::Thread)
    };
    let seqs = |r: &selvage_shared::QueryResult| r.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let thread_calls = origin.link_calls_of("thread").await;

    // The newest replies, then back from the page's first seq; chatter is not in the thread.
    let newest = alice.query(thread(root, 4, None)).await.unwrap();
    assert_eq!(seqs(&newest), replies[2..]);
    assert!(newest.messages.iter().all(|m| m.thread_root == Some(root)));
    let next: u64 = newest.next.as_deref().expect("more replies").parse().unwrap();
    let older = carol.query(thread(root, 4, Some(next))).await.unwrap();
    assert_eq!(seqs(&older), replies[..2]);
    assert_eq!(older.next, None);
    assert_eq!(origin.link_calls_of("thread").await, thread_calls + 2, "the edge keeps no thread index");

    // A reply is not a root; a missing root is not found; a private channel's thread is
    // invisible to a non-member, refused by the edge without asking the origin.
    let refused = |r: Result<_, selvage_client::ClientError>| match r {
        Err(selvage_client::ClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused(alice.query(thread(replies[0], 10, None)).await), ErrorCode::BadRequest);
    assert_eq!(refused(alice.query(thread(999, 10, None)).await), ErrorCode::NotFound);
    let calls = origin.link_calls_of("thread").await;
    let hidden = Query { channel: Some(secret.clone()), ..thread(1, 10, None) };
    assert_eq!(refused(carol.query(hidden).await), ErrorCode::NotFound);
    assert_eq!(origin.link_calls_of("thread").await, calls);

    // History older than the edge's buffer pages forward through the origin with the same
    // `next` rule as the cache: the seq to continue after.
    let history_calls = origin.link_calls_of("history").await;
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page = Query {
            channel: Some(general.clone()),
            after: Some(after),
            limit: Some(5),
            ..Query::new("h", QueryKind::History)
        };
        let page = carol.query(page).await.unwrap();
        all.extend(seqs(&page));
        match page.next {
            Some(next) => after = next.parse().unwrap(),
            None => break,
        }
    }
    assert_eq!(all, (1..=13).collect::<Vec<u64>>());
    assert!(origin.link_calls_of("history").await > history_calls, "old pages came from the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_boots_ask_the_origin_every_time() {
    // `cache.cold_boots` exists to measure what warm caches save: every boot asks the origin
    // for the token and the snapshot, every resume for the missed events.
    let origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let mut config = origin.edge_config("edge-cold");
    config.cache.cold_boots = true;
    let (edge, _s) = start_edge_with(config).await;
    let first = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    let resume = first.connect_options_with_resume();
    first.close().await;
    let before = (origin.link_calls_of("authenticate").await, origin.link_calls_of("snapshot").await);
    let again = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    again.close().await;
    let after = (origin.link_calls_of("authenticate").await, origin.link_calls_of("snapshot").await);
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1), "a second boot asked the origin again");
    // A resume reads the missed events from the origin, not the edge's buffers.
    let seq = origin.send(&alice_token, &general, "missed").await;
    let events_before = origin.link_calls_of("events").await;
    let mut opts = options(&edge, &Transport::WsJson, &alice_token);
    opts.resume = resume.resume;
    let mut back = Client::connect(opts).await.unwrap();
    let got = collect(&mut back, &general, 1).await;
    assert_eq!(got[0].0, seq);
    assert!(origin.link_calls_of("events").await > events_before, "the resume asked the origin");
    back.close().await;
}
