//! Two edges started from the same example configuration — both named `edge-1` — linked to one
//! origin: each keeps its own place there, so typing crosses between them, a user's session on
//! one keeps them online when their session on the other closes, and session ids differ.

mod support;

use std::time::Instant;

use selvage_client::{Client, Inbound, Transport};
use selvage_edge::EdgeConfig;
use selvage_shared::{ClientFrame, Event, Presence, UserId};
use support::*;
use tokio_util::sync::CancellationToken;

/// An edge from `infra/edge.example.toml` as it is, with what an operator must set per host:
/// its addresses and the link's secrets.
async fn example_edge(
    origin: &Origin,
    adjust: impl FnOnce(&mut EdgeConfig),
) -> (selvage_edge::Running, CancellationToken) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/edge.example.toml");
    let mut config: EdgeConfig = figment::Figment::new()
        .merge(figment::providers::Serialized::defaults(EdgeConfig::default()))
        .merge(<figment::providers::Toml as figment::providers::Format>::file(path))
        .extract()
        .unwrap();
    assert_eq!(config.edge_id, "edge-1", "the example's name");
    let secrets = origin.edge_config("unused");
    config.listen = secrets.listen;
    config.quic_listen = secrets.quic_listen;
    config.origin = secrets.origin;
    adjust(&mut config);
    start_edge_with(config).await
}

/// The next event of `client` that `pick` takes, within the test's deadline.
async fn next_of<T>(client: &mut Client, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "never got {what}");
        match client.next_event(left).await.unwrap() {
            Some(Inbound::Event(frame)) => {
                if let Some(got) = pick(frame.event) {
                    return got;
                }
            }
            Some(other) => panic!("waiting for {what}, got {other:?}"),
            None => {}
        }
    }
}

async fn next_presence(client: &mut Client, who: &UserId) -> Presence {
    next_of(client, "a presence change", |e| match e {
        Event::PresenceChange { user, presence } if user == *who => Some(presence),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_from_one_example_config_keep_their_own_place_at_the_origin() {
    let origin = Origin::start().await;
    let ws = origin.new_workspace("Edge").await;
    let (alice, general) = (ws.admin_token.clone(), ws.general.clone());
    let (_, bob) = origin.user(&alice, "bob").await;
    let (carol_id, carol) = origin.user(&alice, "carol").await;
    let carol_id: UserId = carol_id.parse().unwrap();
    let (a, _sa) = example_edge(&origin, |_| {}).await;
    // B renews its presence reports every 300 ms (the example: 10 s), which the test waits on
    // below; A keeps the example's, so nothing from A comes between B's report and carol's next
    // change.
    let (b, _sb) = example_edge(&origin, |c| c.sessions.presence_renew_ms = 300).await;

    // Typing on A reaches B (the origin does not send an edge's relays back to it).
    let alice_on_a = Client::connect(options(&a, &Transport::WsJson, &alice)).await.unwrap();
    let mut bob_on_b = Client::connect(options(&b, &Transport::WsJson, &bob)).await.unwrap();
    assert_ne!(alice_on_a.hello().session_id, bob_on_b.hello().session_id, "session ids are the edge's own");
    alice_on_a.send_frame(&ClientFrame::Typing { channel: general.clone() }).await.unwrap();
    next_of(&mut bob_on_b, "alice typing", |e| matches!(e, Event::Typing { .. }).then_some(())).await;

    // Carol is online on both; her session on B closes; she stays online through A.
    bob_on_b.send_frame(&ClientFrame::PresenceSub { users: vec![carol_id.clone()] }).await.unwrap();
    assert_eq!(next_presence(&mut bob_on_b, &carol_id).await, Presence::Offline, "the current state first");
    let carol_on_a = Client::connect(options(&a, &Transport::WsMsgpack, &carol)).await.unwrap();
    assert_eq!(next_presence(&mut bob_on_b, &carol_id).await, Presence::Active);
    // What edge B has told the origin of carol, and how many reports it has sent.
    let b_reported = || {
        let live = b.edge.workspaces.get_loaded(&ws.id).expect("the workspace is loaded on B");
        let reported = live.lock().presence.reported(&carol_id);
        reported
    };
    let b_reports =
        || async { metric_sum(&edge_metrics(&b).await, "selvage_edge_origin_calls_total{call=\"presence\",") };
    let carol_on_b = Client::connect(options(&b, &quic(&b), &carol)).await.unwrap();
    wait_until("edge B reports carol", || b_reported() == Some(Presence::Active)).await;
    carol_on_b.close().await;
    wait_until("edge B reports carol's session on it gone", || b_reported().is_none()).await;
    // B's reports go one after another, and B renews every 300 ms: once one more has been
    // answered, the origin has had the one about carol.
    let reports = b_reports().await;
    wait_for("the origin has edge B's report", || async { b_reports().await > reports }).await;
    // What carol does next on A is the next thing bob hears of her: nothing came in between.
    carol_on_a.send_frame(&ClientFrame::SetPresence { dnd: true }).await.unwrap();
    assert_eq!(next_presence(&mut bob_on_b, &carol_id).await, Presence::Dnd, "carol never went offline");
}
