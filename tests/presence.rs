//! Presence end to end: a user's sessions on one edge, seen by a follower on another, through a
//! real origin — online, away after inactivity, do-not-disturb, offline when the last session
//! closes, and offline by itself when the user's edge crashes (the origin's lease runs out).
//! Short timings are configured so the test takes seconds; the exact timing of each step is
//! covered with tokio's paused clock by the unit tests of `presence` in the origin and the edge.

mod support;

use std::time::{Duration, Instant};

use selvage_client::{Client, Inbound, Transport};
use selvage_shared::{ClientFrame, ErrorCode, Event, Presence, Query, QueryKind, UserId};
use support::*;

const LEASE_MS: u64 = 1500;
const AWAY_MS: u64 = 1000;

async fn next_presence(client: &mut Client, who: &UserId) -> (Presence, Duration) {
    let started = Instant::now();
    let deadline = started + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no presence_change for {who}");
        match client.next_event(left).await.unwrap() {
            Some(Inbound::Event(frame)) => {
                if let Event::PresenceChange { user, presence } = frame.event {
                    assert_eq!(&user, who, "only followed users' presence arrives");
                    return (presence, started.elapsed());
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_edges_online_away_dnd_offline_and_after_a_crash() {
    let origin = Origin::start_with(|c| c.link.presence_lease_ms = LEASE_MS).await;
    let (alice, alice_id, _) = origin.workspace().await;
    let alice_id: UserId = alice_id.parse().unwrap();
    let (_, bob) = origin.user(&alice, "bob").await;
    let edge_config = |name: &str| {
        let mut c = origin.edge_config(name);
        c.sessions.away_after_ms = AWAY_MS;
        c.sessions.presence_renew_ms = 300;
        c.sessions.presence_subs_per_10s = 3;
        c
    };
    let (a, _sa) = start_edge_with(edge_config("edge-a")).await;
    let (b, _sb) = start_edge_with(edge_config("edge-b")).await;

    let mut watcher = Client::connect(options(&b, &Transport::WsJson, &bob)).await.unwrap();
    watcher.send_frame(&ClientFrame::PresenceSub { users: vec![alice_id.clone()] }).await.unwrap();
    assert_eq!(next_presence(&mut watcher, &alice_id).await.0, Presence::Offline, "the current state first");

    // Online on edge A, seen on edge B.
    let session = Client::connect(options(&a, &Transport::WsMsgpack, &alice)).await.unwrap();
    assert_eq!(next_presence(&mut watcher, &alice_id).await.0, Presence::Active);
    // Idle (pings do not count): away after `away_after_ms`, not before.
    let (presence, after) = next_presence(&mut watcher, &alice_id).await;
    assert_eq!(presence, Presence::Away);
    assert!(after >= Duration::from_millis(AWAY_MS / 2), "away came too early: {after:?}");
    // Doing something makes her active again; do-not-disturb shows while she is online.
    session.query(Query::new("q", QueryKind::Channels)).await.unwrap();
    assert_eq!(next_presence(&mut watcher, &alice_id).await.0, Presence::Active);
    session.send_frame(&ClientFrame::SetPresence { dnd: true }).await.unwrap();
    assert_eq!(next_presence(&mut watcher, &alice_id).await.0, Presence::Dnd);
    session.send_frame(&ClientFrame::SetPresence { dnd: false }).await.unwrap();
    assert_ne!(next_presence(&mut watcher, &alice_id).await.0, Presence::Dnd);
    // The last session closes: offline.
    session.close().await;
    assert_eq!(next_presence(&mut watcher, &alice_id).await.0, Presence::Offline);

    // Edge C crashes with nothing said to anyone; alice's presence must still end by itself.
    let edge_c = KillableEdge::start(edge_config("edge-c")).await;
    let on_c = edge_c.connect(Transport::WsJson, &alice).await;
    assert_eq!(next_presence(&mut watcher, &alice_id).await.0, Presence::Active);
    edge_c.kill();
    let (presence, after) = next_presence(&mut watcher, &alice_id).await;
    assert_eq!(presence, Presence::Offline, "a crashed edge's user goes offline by herself");
    assert!(after >= Duration::from_millis(LEASE_MS / 2), "offline before the lease could run out: {after:?}");
    drop(on_c);

    // presence_sub is rate limited (3 per 10 s here: one used above).
    for _ in 0..2 {
        watcher.send_frame(&ClientFrame::PresenceSub { users: vec![alice_id.clone()] }).await.unwrap();
        assert_eq!(next_presence(&mut watcher, &alice_id).await.0, Presence::Offline);
    }
    watcher.send_frame(&ClientFrame::PresenceSub { users: vec![] }).await.unwrap();
    match watcher.next_event(WAIT).await.unwrap() {
        Some(Inbound::Error { code, .. }) => assert_eq!(code, ErrorCode::RateLimited),
        other => panic!("expected rate_limited, got {other:?}"),
    }
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reaches_only_followers() {
    let origin = Origin::start().await;
    let (alice, alice_id, general) = origin.workspace().await;
    let alice_id: UserId = alice_id.parse().unwrap();
    let (_, bob) = origin.user(&alice, "bob").await;
    let (_, carol) = origin.user(&alice, "carol").await;
    let (a, _sa) = start_edge(&origin, "edge-a").await;
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let mut follower = Client::connect(options(&b, &Transport::WsJson, &bob)).await.unwrap();
    let mut bystander = Client::connect(options(&b, &Transport::WsJson, &carol)).await.unwrap();
    follower.send_frame(&ClientFrame::PresenceSub { users: vec![alice_id.clone()] }).await.unwrap();
    assert_eq!(next_presence(&mut follower, &alice_id).await.0, Presence::Offline);
    let session = Client::connect(options(&a, &Transport::WsJson, &alice)).await.unwrap();
    assert_eq!(next_presence(&mut follower, &alice_id).await.0, Presence::Active);
    // The bystander follows nobody: by the time a later message reaches it, nothing else has.
    let seq = origin.send(&alice, &general, "sentinel").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match bystander.next_event(left).await.unwrap() {
            Some(Inbound::Event(frame)) => match frame.event {
                Event::Message(m) if m.seq == seq => break,
                Event::PresenceChange { .. } => panic!("a presence_change reached a session that follows nobody"),
                _ => {}
            },
            other => panic!("unexpected {other:?}"),
        }
    }
    for c in [session, follower, bystander] {
        c.close().await;
    }
}
