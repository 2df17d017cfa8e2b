//! `selvage loadtest notify` at a small scale: every phase runs against the real origin and the
//! report adds up — a pending entry per (member, `@channel` message), a push per subscriber,
//! each with its encryption and VAPID headers, and every timed mention pushed.

use std::time::Duration;

use selvage_loadtest::notify::{measure, NotifyArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_scenario_reports_every_phase() {
    let args = NotifyArgs {
        members: 40,
        broadcasts: 3,
        senders: 4,
        duration: Duration::from_millis(600),
        broadcast_every: Duration::from_millis(200),
        rounds: 1,
        samples: 5,
        sample_every: Duration::from_millis(20),
        peer_python: None,
        peer_threads: 4,
        data_dir: None,
        json: true,
    };
    let r = measure(&args).await.unwrap();
    assert_eq!(r.decision.messages, 3);
    assert_eq!(r.decision.pending, 3 * 39, "one pending entry per member but the author, per message");
    assert_eq!(r.sequencer.on.len(), 1);
    assert_eq!(r.sequencer.off.len(), 1);
    assert!(r.sequencer.on[0] > 0.0 && r.sequencer.off[0] > 0.0);
    assert_eq!(r.webpush.received, 39, "every subscriber reached");
    assert_eq!(r.webpush.malformed, 0);
    assert_eq!(r.latency.count, 5, "every timed mention pushed");
    assert!(r.peer.is_none() && r.peer_skipped.is_some(), "no peer without --peer-python");
}
