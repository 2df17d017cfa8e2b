//! A tiny run of `selvage loadtest presence`: both modes, a real origin and edge each, in this
//! process. Subscriptions must hand each change to at most the user's followers; broadcast to
//! every session.

use std::time::Duration;

use selvage_loadtest::presence::{measure, PresenceArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_reach_followers_and_broadcast_reaches_everyone() {
    let args = PresenceArgs { users: 30, follows: 3, rate: 20.0, duration: Duration::from_secs(1), json: true };
    let r = measure(&args).await.unwrap();
    for m in [&r.subscriptions, &r.broadcast] {
        assert!(m.changes > 0 && m.frames_received > 0, "{m:?}");
    }
    // Two changes of one user within a presence tick reach followers as one (the latest).
    assert!(r.subscriptions.frames_per_change <= args.follows as f64, "{:?}", r.subscriptions);
    assert!(r.broadcast.frames_per_change <= args.users as f64, "{:?}", r.broadcast);
    assert!(r.broadcast.frames_per_change > 5.0 * r.subscriptions.frames_per_change, "{r:?}");
}
