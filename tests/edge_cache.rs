//! The edge's warm caches, end to end: a real origin and real edges on port 0 (see
//! `support`), watched through the origin's link-call counters. Preloading, one snapshot and one
//! authentication however many clients boot at once, eviction by weight with live sessions
//! kept current, and resuming from the edge's buffers or, when they and the origin's log no
//! longer reach back, `resync`.

mod support;

use std::time::Instant;

use selvage_client::{Client, ClientError, Inbound, Transport};
use selvage_shared::{ChannelId, Cursor, Event, WorkspaceId};
use support::*;

/// How many `#general` messages `hello` says there are.
fn general_last_seq(client: &Client, general: &ChannelId) -> u64 {
    let boot = client.hello().channels.iter().find(|c| c.channel.id == *general);
    boot.expect("#general is in the boot").last_seq
}

/// Whether the edge holds `ws` with #general at `seq`.
fn applied(edge: &selvage_edge::Running, ws: &Workspace, seq: u64) -> bool {
    let live = edge.edge.workspaces.get_loaded(&ws.id);
    live.is_some_and(|live| live.lock().state.last_seq(&ws.general) == Some(seq))
}

/// One labelled sample of an edge counter (0 when absent).
async fn edge_counter(edge: &selvage_edge::Running, name: &str, labels: &[(&str, &str)]) -> u64 {
    let text = edge_metrics(edge).await;
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let line = text.lines().find(|l| {
        l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')) && wanted.iter().all(|w| l.contains(w.as_str()))
    });
    line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// Reads events until the message `until` arrives; returns every message event read, in order,
/// as (seq, client_msg_id). Anything but an event fails the test.
async fn messages_until(client: &mut Client, until: &str) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out before {until:?}; got {got:?}");
        match client.next_event(left).await.unwrap() {
            Some(Inbound::Event(frame)) => {
                if let Event::Message(m) = frame.event {
                    let done = m.client_msg_id == until;
                    got.push((m.seq, m.client_msg_id));
                    if done {
                        return got;
                    }
                }
            }
            Some(other) => panic!("unexpected {other:?} before {until:?}"),
            None => {}
        }
    }
}

/// Expects a `resync` and then the close with code 4009, nothing else.
async fn expect_resync_and_close(client: &mut Client, what: &str) {
    match client.next_event(WAIT).await.unwrap() {
        Some(Inbound::Resync { reason }) => assert!(!reason.is_empty(), "{what}"),
        other => panic!("{what}: expected resync, got {other:?}"),
    }
    match client.next_event(WAIT).await {
        Ok(Some(Inbound::Closed { code, .. })) => assert_eq!(code, Some(4009), "{what}: closed as resync"),
        other => panic!("{what}: expected the close after resync, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_workspace_is_loaded_before_its_first_client() {
    let origin = Origin::start().await;
    let ws = origin.new_workspace("Preloaded").await;
    let other = origin.new_workspace("Other").await;
    assert_eq!(origin.link_calls_of("snapshot").await, 0);
    let mut config = origin.edge_config("edge-preload");
    config.cache.preload = vec![ws.id.clone()];
    let (edge, _s) = start_edge_with(config).await;
    wait_for("the preload asks for its snapshot", || async { origin.link_calls_of("snapshot").await == 1 }).await;
    wait_until("the preloaded workspace is loaded", || edge.edge.workspaces.get_loaded(&ws.id).is_some()).await;
    assert!(edge.edge.workspaces.get_loaded(&other.id).is_none(), "only what was asked for is preloaded");
    // The preloaded state follows the feed: a message posted now is in the first boot.
    let seq = origin.send(&ws.admin_token, &ws.general, "before-boot").await;
    wait_until("the preloaded workspace applies the message", || applied(&edge, &ws, seq)).await;
    let authentications = origin.link_calls_of("authenticate").await;
    let mut alice = Client::connect(options(&edge, &Transport::WsJson, &ws.admin_token)).await.unwrap();
    assert_eq!(alice.hello().self_user.handle, "alice");
    assert_eq!(general_last_seq(&alice, &ws.general), seq, "the boot reflects the message posted after the preload");
    assert_eq!(origin.link_calls_of("snapshot").await, 1, "the first boot costs no snapshot");
    assert_eq!(origin.link_calls_of("authenticate").await, authentications + 1, "only the token is asked about");
    assert_eq!(
        edge_counter(&edge, "selvage_edge_cache_requests_total", &[("cache", "workspace"), ("outcome", "hit")]).await,
        1
    );
    let ack = alice.send(&ws.general, "after boot", "after-boot", None).await.unwrap();
    assert_eq!(collect(&mut alice, &ws.general, 1).await, vec![(ack.seq, "after-boot".to_string())]);
    // A workspace not preloaded still boots, cold.
    let carol = Client::connect(options(&edge, &Transport::WsMsgpack, &other.admin_token)).await.unwrap();
    assert!(!carol.hello().channels.is_empty());
    assert_eq!(origin.link_calls_of("snapshot").await, 2, "a workspace not preloaded is loaded on first use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_preloaded_workspace_is_skipped_and_the_edge_serves() {
    let origin = Origin::start().await;
    let ws = origin.new_workspace("Known").await;
    let other = origin.new_workspace("Other").await;
    let unknown: WorkspaceId = "WNOSUCHSPACE0".parse().unwrap();
    let mut config = origin.edge_config("edge-preload");
    // The unknown one first: it must not hold up the one after it.
    config.cache.preload = vec![unknown.clone(), ws.id.clone()];
    let (edge, _s) = start_edge_with(config).await;
    wait_until("the known workspace is preloaded", || edge.edge.workspaces.get_loaded(&ws.id).is_some()).await;
    assert!(edge.edge.workspaces.get_loaded(&unknown).is_none());
    assert_eq!(origin.link_calls_of("snapshot").await, 2, "one snapshot call each; the unknown one is not retried");
    assert!(edge.edge.is_ready(), "the edge is ready");
    let alice = Client::connect(options(&edge, &Transport::WsJson, &ws.admin_token)).await.unwrap();
    assert_eq!(alice.hello().self_user.handle, "alice");
    let carol = Client::connect(options(&edge, &quic(&edge), &other.admin_token)).await.unwrap();
    assert!(!carol.hello().channels.is_empty());
    assert_eq!(origin.link_calls_of("snapshot").await, 3, "only the workspace not preloaded cost a snapshot");
    alice.ping().await.expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_boots_make_one_snapshot_and_one_authentication_per_token() {
    const CLIENTS: usize = 50;
    let origin = Origin::start().await;
    let ws = origin.new_workspace("Crowd").await;
    // Six tokens: alice's two, and one each for four others; each is used by several connections.
    let mut tokens = vec![("alice", ws.admin_token.clone()), ("alice", origin.new_token(&ws.admin_token).await)];
    for handle in ["bob", "carol", "dave", "erin"] {
        let (_, token) = origin.user(&ws.admin_token, handle).await;
        tokens.push((handle, token));
    }
    let relay = Relay::start(origin.link).await;
    let mut config = origin.edge_config("edge-cold");
    config.origin.link = relay.addr.to_string();
    let (edge, _s) = start_edge_with(config).await;
    let (snapshots, authentications) =
        (origin.link_calls_of("snapshot").await, origin.link_calls_of("authenticate").await);
    // Nothing reaches the origin until every connection has asked the edge's token cache: all
    // of them are then inside their boots at the same time.
    relay.hold();
    let transports = [Transport::WsJson, Transport::WsMsgpack, quic(&edge)];
    let mut connects = Vec::new();
    for i in 0..CLIENTS {
        let (handle, token) = tokens[i % tokens.len()].clone();
        let opts = options(&edge, &transports[i % transports.len()], &token);
        connects.push(tokio::spawn(async move { (handle, Client::connect(opts).await) }));
    }
    wait_for("every connection waits for its token", || async {
        edge_counter(&edge, "selvage_edge_cache_requests_total", &[("cache", "token"), ("outcome", "miss")]).await
            == CLIENTS as u64
    })
    .await;
    relay.release();
    let mut clients = Vec::new();
    for connect in connects {
        let (handle, client) = connect.await.unwrap();
        let client = client.unwrap_or_else(|e| panic!("{handle} did not boot: {e}"));
        assert_eq!(client.hello().self_user.handle, handle, "each token boots its own user");
        assert!(client.hello().channels.iter().any(|c| c.channel.id == ws.general));
        clients.push(client);
    }
    assert_eq!(origin.link_calls_of("snapshot").await, snapshots + 1, "one snapshot for {CLIENTS} cold boots");
    assert_eq!(
        origin.link_calls_of("authenticate").await,
        authentications + tokens.len() as u64,
        "one authentication per distinct token, not per connection"
    );
    // They all share the one loaded workspace, and it is live.
    let seq = origin.send(&ws.admin_token, &ws.general, "to-everyone").await;
    for client in &mut clients {
        assert_eq!(collect(client, &ws.general, 1).await, vec![(seq, "to-everyone".to_string())]);
    }
}

/// What one workspace made by [`Origin::new_workspace`] weighs in an edge's cache when loaded.
async fn workspace_weight(origin: &Origin, ws: &Workspace) -> u64 {
    let (probe, stop) = start_edge(origin, "edge-probe").await;
    let client = Client::connect(options(&probe, &Transport::WsJson, &ws.admin_token)).await.unwrap();
    let weight = probe.edge.workspaces.get_loaded(&ws.id).expect("loaded").lock().state.weight();
    client.close().await;
    stop.cancel();
    probe.wait().await;
    u64::from(weight)
}

/// What the workspaces an edge holds weigh now, together.
fn held_weight(edge: &selvage_edge::Running, spaces: &[Workspace]) -> u64 {
    let loaded = spaces.iter().filter_map(|s| edge.edge.workspaces.get_loaded(&s.id));
    loaded.map(|live| u64::from(live.lock().state.weight())).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_beyond_max_bytes_are_evicted_and_their_live_sessions_stay_current() {
    let origin = Origin::start().await;
    let mut spaces = Vec::new();
    for i in 0..5 {
        spaces.push(origin.new_workspace(&format!("Space {i}")).await);
    }
    // Room for two of these identically shaped workspaces, not three.
    let max_bytes = workspace_weight(&origin, &spaces[0]).await * 5 / 2;
    let base = origin.link_calls_of("snapshot").await;
    let mut config = origin.edge_config("edge-small");
    config.cache.max_bytes = max_bytes;
    let (edge, _s) = start_edge_with(config).await;
    // A session on each, opened one after another: at most two fit in the cache, the others
    // are held only for their sessions.
    let mut sessions = Vec::new();
    for (i, space) in spaces.iter().enumerate() {
        let transport = [Transport::WsJson, Transport::WsMsgpack, quic(&edge)][i % 3].clone();
        sessions.push(Client::connect(options(&edge, &transport, &space.admin_token)).await.unwrap());
        assert_eq!(origin.link_calls_of("snapshot").await, base + 1 + i as u64, "workspace {i} loads cold");
    }
    // Every one of them stays live: each session gets its workspace's messages, and a second
    // session of a workspace in use joins it as it is, without a snapshot.
    for (i, (space, session)) in spaces.iter().zip(&mut sessions).enumerate() {
        let id = format!("live-{i}");
        let seq = origin.send(&space.admin_token, &space.general, &id).await;
        assert_eq!(collect(session, &space.general, 1).await, vec![(seq, id)], "workspace {i} is live");
        let mut second = Client::connect(options(&edge, &Transport::WsJson, &space.admin_token)).await.unwrap();
        assert_eq!(general_last_seq(&second, &space.general), seq, "workspace {i} is current");
        let id = format!("both-{i}");
        let seq = origin.send(&space.admin_token, &space.general, &id).await;
        assert_eq!(collect(session, &space.general, 1).await, vec![(seq, id.clone())]);
        assert_eq!(collect(&mut second, &space.general, 1).await, vec![(seq, id)]);
        second.close().await;
    }
    assert_eq!(origin.link_calls_of("snapshot").await, base + 5, "a workspace in use is never loaded twice");
    // Once the sessions are gone the edge keeps what fits in its budget and drops the rest.
    for session in sessions {
        session.close().await;
    }
    wait_until("the edge holds at most two workspaces", || edge.edge.workspaces.loaded() <= 2).await;
    assert!(held_weight(&edge, &spaces) <= max_bytes, "what is held fits the budget");
    let kept: Vec<bool> = spaces.iter().map(|s| edge.edge.workspaces.get_loaded(&s.id).is_some()).collect();
    assert!(kept.iter().filter(|k| !**k).count() >= 3, "three of five were dropped: {kept:?}");
    // A dropped workspace costs a snapshot to boot again; every one comes back whole and live.
    for (i, space) in spaces.iter().enumerate() {
        let dropped = edge.edge.workspaces.get_loaded(&space.id).is_none();
        let snapshots = origin.link_calls_of("snapshot").await;
        let mut back = Client::connect(options(&edge, &Transport::WsJson, &space.admin_token)).await.unwrap();
        if dropped {
            assert_eq!(origin.link_calls_of("snapshot").await, snapshots + 1, "dropped workspace {i} loads again");
        }
        assert_eq!(general_last_seq(&back, &space.general), 2, "workspace {i} has both messages");
        let ack = back.send(&space.general, "back again", "back", None).await.unwrap();
        assert_eq!(ack.seq, 3);
        assert_eq!(collect(&mut back, &space.general, 1).await, vec![(3, "back".to_string())]);
        back.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_budget_counts_what_workspaces_grow_to_after_loading() {
    let origin = Origin::start().await;
    let spaces = vec![origin.new_workspace("Grows").await, origin.new_workspace("Stays").await];
    // Room for both as they load, with some to spare.
    let max_bytes = workspace_weight(&origin, &spaces[0]).await * 3;
    let mut config = origin.edge_config("edge-small");
    config.cache.max_bytes = max_bytes;
    let (edge, _s) = start_edge_with(config).await;
    for space in &spaces {
        let client = Client::connect(options(&edge, &Transport::WsJson, &space.admin_token)).await.unwrap();
        client.close().await;
    }
    assert_eq!(edge.edge.workspaces.loaded(), 2);
    // Nobody is connected; the first workspace's recent messages (it keeps the last 256 of
    // #general) grow it to twice the whole budget.
    let grows = &spaces[0];
    let text = "x".repeat(2_000);
    let count = 2 * max_bytes / 2_000 + 1;
    for i in 0..count {
        let path = format!("/v1/channels/{}/messages", grows.general);
        let body = serde_json::json!({ "text": text, "client_msg_id": format!("big-{i}") });
        let (status, v) = origin.post(&path, &grows.admin_token, body).await;
        assert!(status.is_success(), "{v}");
    }
    wait_until("the workspace over the budget is dropped", || edge.edge.workspaces.get_loaded(&grows.id).is_none())
        .await;
    assert!(held_weight(&edge, &spaces) <= max_bytes, "what is held fits the budget");
    // It boots again from a snapshot, with every message.
    let snapshots = origin.link_calls_of("snapshot").await;
    let back = Client::connect(options(&edge, &Transport::WsJson, &grows.admin_token)).await.unwrap();
    assert_eq!(general_last_seq(&back, &grows.general), count);
    assert_eq!(origin.link_calls_of("snapshot").await, snapshots + 1);
}

/// An origin that keeps its feed log for two seconds, trimming every second.
async fn forgetful_origin() -> Origin {
    Origin::start_with(|c| {
        c.feed.retention_secs = 2;
        c.feed.trim_interval_secs = 1;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_retention_and_the_edge_s_buffers_gets_resync() {
    let origin = forgetful_origin().await;
    let ws = origin.new_workspace("Forgetful").await;
    let mut config = origin.edge_config("edge-a");
    config.cache.recent_events_per_channel = 4;
    let (a, _sa) = start_edge_with(config).await;
    let alice = Client::connect(options(&a, &Transport::WsJson, &ws.admin_token)).await.unwrap();
    let old: Cursor = alice.last_cursor().expect("a cursor to resume from");
    alice.close().await;
    for i in 0..10 {
        origin.send(&ws.admin_token, &ws.general, &format!("m{i}")).await;
    }
    wait_for("the origin trims its log past the old cursor", || origin.has_trimmed_past(&ws.admin_token, &old)).await;
    let events_calls = origin.link_calls_of("events").await;
    // Edge A keeps 4 events of #general, not 10: it asks the origin, which no longer has them.
    let mut opts = options(&a, &Transport::WsJson, &ws.admin_token);
    opts.resume = Some(old.clone());
    let mut resumed = Client::connect(opts).await.unwrap();
    expect_resync_and_close(&mut resumed, "edge a").await;
    assert_eq!(origin.link_calls_of("events").await, events_calls + 1, "edge a asked the origin's log");
    // A fresh edge has no buffer from before its own snapshot at all.
    let (b, _sb) = start_edge(&origin, "edge-b").await;
    let mut opts = options(&b, &Transport::WsMsgpack, &ws.admin_token);
    opts.resume = Some(old);
    let mut resumed = Client::connect(opts).await.unwrap();
    expect_resync_and_close(&mut resumed, "edge b").await;
    // Booting afresh works on both, and both are live.
    wait_until("edge a has applied the ten messages", || applied(&a, &ws, 10)).await;
    let mut on_a = Client::connect(options(&a, &Transport::WsJson, &ws.admin_token)).await.unwrap();
    let mut on_b = Client::connect(options(&b, &Transport::WsMsgpack, &ws.admin_token)).await.unwrap();
    assert!(!on_a.hello().resumed && !on_b.hello().resumed);
    assert_eq!(general_last_seq(&on_a, &ws.general), 10);
    assert_eq!(general_last_seq(&on_b, &ws.general), 10);
    let seq = origin.send(&ws.admin_token, &ws.general, "fresh").await;
    assert_eq!(collect(&mut on_a, &ws.general, 1).await, vec![(seq, "fresh".to_string())]);
    assert_eq!(collect(&mut on_b, &ws.general, 1).await, vec![(seq, "fresh".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_edge_still_buffers_resumes_after_the_origin_trimmed_it() {
    let origin = forgetful_origin().await;
    let ws = origin.new_workspace("Forgetful").await;
    let (edge, _s) = start_edge(&origin, "edge-a").await;
    let mut alice = Client::connect(options(&edge, &Transport::WsMsgpack, &ws.admin_token)).await.unwrap();
    for i in 0..2 {
        origin.send(&ws.admin_token, &ws.general, &format!("seen{i}")).await;
    }
    assert_eq!(collect(&mut alice, &ws.general, 2).await.len(), 2);
    let old = alice.last_cursor().expect("a cursor to resume from");
    alice.close().await;
    let missed = 20u64;
    for i in 0..missed {
        origin.send(&ws.admin_token, &ws.general, &format!("missed{i}")).await;
    }
    wait_for("the origin trims its log past the old cursor", || origin.has_trimmed_past(&ws.admin_token, &old)).await;
    let events_calls = origin.link_calls_of("events").await;
    let mut opts = options(&edge, &Transport::WsMsgpack, &ws.admin_token);
    opts.resume = Some(old);
    let mut alice = match Client::connect(opts).await {
        Ok(client) => client,
        Err(ClientError::Resync(reason)) => panic!("the edge's buffer covers the cursor, yet: {reason}"),
        Err(e) => panic!("{e}"),
    };
    assert!(alice.hello().resumed, "hello says resumed");
    origin.send(&ws.admin_token, &ws.general, "marker").await;
    let got = messages_until(&mut alice, "marker").await;
    let mut expected: Vec<(u64, String)> = (0..missed).map(|i| (3 + i, format!("missed{i}"))).collect();
    expected.push((3 + missed, "marker".to_string()));
    assert_eq!(got, expected, "exactly the missed messages, once each, in order, then the live ones");
    assert_eq!(origin.link_calls_of("events").await, events_calls, "the replay came from the edge alone");
    assert_eq!(
        edge_counter(&edge, "selvage_edge_cache_requests_total", &[("cache", "replay"), ("outcome", "hit")]).await,
        1
    );
}
