//! What bounds a client session on an edge, tried over real WebSocket and QUIC connections to a
//! real origin and edge: a session ends when its token expires, as when it is revoked; the
//! origin calls that frames start without waiting run under a bound, not a task each.

mod support;

use std::time::{Duration, Instant};

use selvage_client::{Client, Inbound, Transport};
use selvage_shared::{ClientFrame, ErrorCode, Event};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_token_expires_on_every_transport() {
    const TTL_SECS: u64 = 5;
    let origin = Origin::start_with(|c| c.token_ttl_secs = TTL_SECS).await;
    let (edge, _shutdown) = start_edge(&origin, "edge-a").await;
    // The workspace's admin token is made now and expires TTL_SECS from now.
    let made = Instant::now();
    let (token, _, general) = origin.workspace().await;
    let transports = [("ws json", Transport::WsJson), ("ws msgpack", Transport::WsMsgpack), ("quic", quic(&edge))];
    let mut clients = Vec::new();
    for (name, transport) in transports {
        let client = Client::connect(options(&edge, &transport, &token)).await.unwrap();
        let ack = client.send(&general, "before expiry", &format!("{name}-before"), None).await;
        assert!(ack.is_ok(), "{name}: a send before expiry is acked: {ack:?}");
        clients.push((name, client));
    }
    assert!(made.elapsed() < Duration::from_secs(TTL_SECS), "the test set up too slowly to try expiry");
    for (name, client) in &mut clients {
        let (code, reason) = closed(client, name).await;
        assert_eq!(code, Some(4001), "{name}: closed as a revoked token is ({reason})");
        assert_eq!(reason, "token expired", "{name}");
        assert!(made.elapsed() >= Duration::from_secs(TTL_SECS) - Duration::from_millis(100), "{name}: not early");
        let after = client.send(&general, "after expiry", &format!("{name}-after"), None).await;
        assert!(after.is_err(), "{name}: nothing is acked after expiry: {after:?}");
    }
    // A new connection with the expired token is refused the same way.
    match Client::connect(options(&edge, &Transport::WsJson, &token)).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}"),
        Ok(_) => panic!("an expired token connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_set_presence_and_typing_runs_under_a_bound() {
    const FLOOD: usize = 3000;
    const BOUND: usize = selvage_edge::limits::ONE_WAY_IN_FLIGHT;
    let origin = Origin::start().await;
    let (alice_token, _, general) = origin.workspace().await;
    let (_, bob_token) = origin.user(&alice_token, "bob").await;
    let relay = Relay::start(origin.link).await;
    let mut config = origin.edge_config("edge-a");
    config.origin.link = relay.addr.to_string();
    let (edge, _shutdown) = start_edge_with(config).await;
    let flooder = Client::connect(options(&edge, &Transport::WsMsgpack, &alice_token)).await.unwrap();
    let alice = Client::connect(options(&edge, &Transport::WsJson, &alice_token)).await.unwrap();
    let mut bob = Client::connect(options(&edge, &quic(&edge), &bob_token)).await.unwrap();
    let in_flight = || async { metric_sum(&edge_metrics(&edge).await, "selvage_edge_one_way_calls_in_flight") };
    // The origin stops answering: every call the edge starts stays in flight.
    relay.hold();
    let tasks_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let handle = flooder.handle();
    let flood = tokio::spawn(async move {
        for i in 0..FLOOD {
            let _ = handle.send_frame(&ClientFrame::SetPresence { dnd: i % 2 == 0 }).await;
        }
    });
    wait_for("the calls in flight reach the bound", || async { in_flight().await >= BOUND as f64 }).await;
    // Wait for the flooder's frames to have been read as far as the edge will read them: the
    // count of set_presence frames stops moving.
    let read_so_far =
        || async { metric_sum(&edge_metrics(&edge).await, "selvage_edge_client_frames_total{type=\"set_presence\"}") };
    let deadline = Instant::now() + WAIT;
    let mut read = read_so_far().await;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = read_so_far().await;
        if now == read {
            break;
        }
        assert!(Instant::now() < deadline, "the edge kept reading the flood");
        read = now;
    }
    assert!(read < FLOOD as f64, "the edge read {read} of {FLOOD} frames while the origin was held");
    assert_eq!(in_flight().await, BOUND as f64, "never more calls than the bound");
    let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    assert!(tasks <= tasks_before + BOUND + 64, "{tasks} tasks alive, {tasks_before} before the flood");
    // A typing relay finds no slot: this edge's sessions still get it, other edges do not.
    alice.send_frame(&ClientFrame::Typing { channel: general.clone() }).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "bob never saw alice typing");
        match bob.next_event(left).await.unwrap() {
            Some(Inbound::Event(frame)) if matches!(frame.event, Event::Typing { .. }) => break,
            _ => {}
        }
    }
    wait_for("the relay is dropped", || async {
        metric_sum(&edge_metrics(&edge).await, "selvage_edge_one_way_calls_dropped_total{call=\"typing\"}") == 1.0
    })
    .await;
    // The edge stays responsive to everyone else.
    bob.ping().await.expect("bob is answered while the flood waits");
    // Once the origin answers again the flood is worked through, no set_presence lost.
    relay.release();
    flood.await.unwrap();
    wait_for("every set_presence is read", || async {
        metric_sum(&edge_metrics(&edge).await, "selvage_edge_client_frames_total{type=\"set_presence\"}")
            == FLOOD as f64
    })
    .await;
    wait_for("the calls are done", || async { in_flight().await == 0.0 }).await;
    flooder.ping().await.expect("the flooder is served again");
}
