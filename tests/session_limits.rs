//! What bounds a client session on an edge, tried over real WebSocket and QUIC connections to a
//! real origin and edge: a session ends when its token expires, as when it is revoked.

mod support;

use std::time::{Duration, Instant};

use selvage_loadtest::client::{Client, Inbound, Transport};
use selvage_shared::ErrorCode;
use support::*;

/// Reads what `client` gets until its connection closes; returns the close code and reason.
/// Events and an `unauthorized` error frame may come first; anything else fails the test.
async fn closed(client: &mut Client, what: &str) -> (Option<u16>, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: the session was never closed");
        match client.next_event(left).await {
            Ok(Some(Inbound::Closed { code, reason })) => return (code, reason),
            Ok(Some(Inbound::Event(_))) | Ok(None) => {}
            Ok(Some(Inbound::Error { code, .. })) => assert_eq!(code, ErrorCode::Unauthorized, "{what}"),
            Ok(Some(other)) => panic!("{what}: unexpected {other:?}"),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_token_expires_on_every_transport() {
    const TTL_SECS: u64 = 4;
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
