//! The edge's upstream against a real origin: the origin runs in this process with its link on a
//! port-0 UDP socket and its embedded store in a temporary directory; the upstream talks to it
//! over real QUIC. Every wait polls a condition with a deadline.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use selvage_edge::{
    metrics::Metrics,
    upstream::{FeedUpdate, Upstream, UpstreamConfig},
};
use selvage_net::tls::Trust;
use selvage_origin::{accounts, channels, sequencer::SendRequest, Origin, OriginConfig, Running};
use selvage_shared::{
    link::{Answer, Call},
    ChannelId, ErrorCode, Event, FeedItem, Seq, UserId, WorkspaceId,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const EDGE_KEY: &str = "upstream-test-edge-key-0123456789";
const DEADLINE: Duration = Duration::from_secs(30);

struct TestOrigin {
    running: Option<Running>,
    shutdown: CancellationToken,
    link_addr: SocketAddr,
    fingerprint: String,
}

impl TestOrigin {
    /// Starts an origin over `data_dir` with its link on `link_listen`. Retries while the port or
    /// the store file is still held by a previous run on the same directory.
    async fn start(data_dir: &Path, link_listen: SocketAddr, cert: Option<&(PathBuf, PathBuf)>) -> Self {
        Self::start_with(data_dir, link_listen, cert, None).await
    }

    /// [`TestOrigin::start`], taking `previous_key` beside [`EDGE_KEY`] (a link key rotation).
    async fn start_with(
        data_dir: &Path,
        link_listen: SocketAddr,
        cert: Option<&(PathBuf, PathBuf)>,
        previous_key: Option<&str>,
    ) -> Self {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut config = OriginConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                data_dir: data_dir.to_path_buf(),
                ..OriginConfig::default()
            };
            config.link.listen = link_listen;
            config.link.edge_key = Some(EDGE_KEY.into());
            config.link.previous_edge_key = previous_key.map(String::from);
            if let Some((cert, key)) = cert {
                config.link.cert_file = Some(cert.clone());
                config.link.key_file = Some(key.clone());
            }
            let shutdown = CancellationToken::new();
            match selvage_origin::start(config, shutdown.clone()).await {
                Ok(running) => {
                    let link_addr = running.link_addr.expect("the link runs with an edge key");
                    let fingerprint = running.link_fingerprint.clone().expect("a fingerprint");
                    return TestOrigin { running: Some(running), shutdown, link_addr, fingerprint };
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("origin not startable yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("origin does not start: {e}"),
            }
        }
    }

    fn origin(&self) -> Arc<Origin> {
        self.running.as_ref().unwrap().origin.clone()
    }

    fn metric(&self, line_start: &str) -> u64 {
        metric(&self.origin().metrics.render(), line_start)
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
    }
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

/// A workspace with an admin, bob, `#general` (both in it) and a private `#secret` (admin only).
struct Acme {
    ws: WorkspaceId,
    admin: UserId,
    admin_token: String,
    bob: UserId,
    general: ChannelId,
    secret: ChannelId,
}

async fn acme(origin: &Origin) -> Acme {
    let (workspace, admin) = accounts::create_workspace(&origin.store, "acme", "admin", "Admin", 0).await.unwrap();
    let caller = accounts::authenticate(&origin.store, &admin.token).await.unwrap();
    let bob = accounts::create_user(&origin.store, &caller, "bob", "Bob", false, 0).await.unwrap();
    let general = channels::list(&origin.store, &caller).await.unwrap()[0].channel.id.clone();
    let secret = channels::create(&origin.store, &caller, "secret", true, "", "").await.unwrap().channel.id;
    Acme { ws: workspace.id, admin: admin.user.id, admin_token: admin.token, bob: bob.user.id, general, secret }
}

struct Edge {
    upstream: Arc<Upstream>,
    feed: mpsc::Receiver<FeedUpdate>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn edge(link_addr: SocketAddr, edge_key: &str, trust: Trust) -> Edge {
    let config = UpstreamConfig {
        origin: link_addr.to_string(),
        server_name: "localhost".into(),
        trust,
        edge_key: edge_key.into(),
        edge_id: "test-edge".into(),
        call_timeout: Duration::from_secs(10),
        start_cursor: None,
    };
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let (upstream, feed) = Upstream::start(config, metrics.clone(), shutdown.clone());
    Edge { upstream, feed, metrics, shutdown }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next_update(feed: &mut mpsc::Receiver<FeedUpdate>) -> FeedUpdate {
    tokio::time::timeout(DEADLINE, feed.recv()).await.expect("a feed update in time").expect("the feed is open")
}

/// Every update until a message with `client_msg_id` arrives; returns the feed items seen and
/// the link transitions (`true` up, `false` down) in order.
async fn collect_until(feed: &mut mpsc::Receiver<FeedUpdate>, client_msg_id: &str) -> (Vec<FeedItem>, Vec<bool>) {
    let mut items = Vec::new();
    let mut transitions = Vec::new();
    loop {
        match next_update(feed).await {
            FeedUpdate::Events(batch) => {
                let done =
                    batch.iter().any(|i| matches!(&i.event, Event::Message(m) if m.client_msg_id == client_msg_id));
                items.extend(batch);
                if done {
                    return (items, transitions);
                }
            }
            FeedUpdate::LinkUp => transitions.push(true),
            FeedUpdate::LinkDown => transitions.push(false),
            FeedUpdate::Heartbeat(_) | FeedUpdate::Ephemeral { .. } => {}
            FeedUpdate::Resync { reason, .. } => panic!("unexpected resync: {reason}"),
        }
    }
}

fn message_seqs(items: &[FeedItem], channel: &ChannelId) -> Vec<Seq> {
    items
        .iter()
        .filter_map(|i| match &i.event {
            Event::Message(m) if m.channel == *channel => Some(m.seq),
            _ => None,
        })
        .collect()
}

fn send_call(a: &Acme, text: &str, client_msg_id: &str) -> Call {
    Call::Send {
        workspace: a.ws.clone(),
        user: a.admin.clone(),
        channel: a.general.clone(),
        text: text.into(),
        client_msg_id: client_msg_id.into(),
        thread_root: None,
    }
}

async fn send_direct(origin: &Origin, a: &Acme, n: u64) -> Seq {
    let request = SendRequest {
        workspace: a.ws.clone(),
        channel: a.general.clone(),
        user: a.admin.clone(),
        text: format!("direct {n}"),
        client_msg_id: format!("d-{n}"),
        thread_root: None,
        files: Vec::new(),
    };
    origin.sequencer.send(request).await.unwrap().message.seq
}

fn token_hash(token: &str) -> String {
    hex::encode(selvage_origin::ids::token_hash(token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_answer_and_the_feed_carries_what_follows_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let o = TestOrigin::start(dir.path(), "127.0.0.1:0".parse().unwrap(), None).await;
    let a = acme(&o.origin()).await;
    let mut e = edge(o.link_addr, EDGE_KEY, Trust::Pinned(o.fingerprint.clone()));
    let up = e.upstream.clone();
    wait_until("the link is up", || up.is_up()).await;
    assert_eq!(next_update(&mut e.feed).await, FeedUpdate::LinkUp);
    assert!(up.last_error().is_none());

    // Authenticate: a real token's hash resolves; anything else is unauthorized.
    match up.call(Call::Authenticate { token_hash: token_hash(&a.admin_token) }).await {
        Ok(Answer::Principal { workspace, user, expires_at, .. }) => {
            assert_eq!((workspace, user, expires_at), (a.ws.clone(), a.admin.clone(), None));
        }
        other => panic!("unexpected {other:?}"),
    }
    let bad = up.call(Call::Authenticate { token_hash: token_hash("not-a-token") }).await.unwrap_err();
    assert_eq!(bad.code, ErrorCode::Unauthorized);

    // Snapshot: users, channels with members and heads, and a cursor.
    let snapshot = match up.call(Call::Snapshot { workspace: a.ws.clone() }).await {
        Ok(Answer::Snapshot(s)) => s,
        other => panic!("unexpected {other:?}"),
    };
    let mut users: Vec<_> = snapshot.users.iter().map(|u| u.id.clone()).collect();
    users.sort();
    let mut expected = vec![a.admin.clone(), a.bob.clone()];
    expected.sort();
    assert_eq!(users, expected);
    let general = snapshot.channels.iter().find(|c| c.channel.id == a.general).expect("#general");
    let mut members = general.members.clone();
    members.sort();
    assert_eq!(members, expected);
    assert_eq!(general.last_seq, 0);
    let secret = snapshot.channels.iter().find(|c| c.channel.id == a.secret).expect("#secret");
    assert_eq!(secret.members, vec![a.admin.clone()]);
    let missing = up.call(Call::Snapshot { workspace: WorkspaceId::new_unchecked("Wmissing") }).await.unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);

    // Send: a seq and a cursor after the snapshot's; the message comes down the feed once.
    let (message, cursor) = match up.call(send_call(&a, "hello", "m-1")).await {
        Ok(Answer::Sent { message, cursor, duplicate: false }) => {
            (*message, cursor.expect("a new message has a cursor"))
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(message.seq, 1);
    assert!(cursor > snapshot.cursor, "{cursor} must sort after the snapshot's {}", snapshot.cursor);
    let (items, _) = collect_until(&mut e.feed, "m-1").await;
    let m1: Vec<_> =
        items.iter().filter(|i| matches!(&i.event, Event::Message(m) if m.client_msg_id == "m-1")).collect();
    assert_eq!(m1.len(), 1);
    assert_eq!(m1[0].cursor, cursor);
    assert!(items.iter().all(|i| i.cursor > snapshot.cursor), "nothing the snapshot already reflects");

    // A retry is answered with the original, and does not reach the feed again.
    match up.call(send_call(&a, "hello", "m-1")).await {
        Ok(Answer::Sent { message, cursor: None, duplicate: true }) => assert_eq!(message.seq, 1),
        other => panic!("unexpected {other:?}"),
    }
    let sent2 = up.call(send_call(&a, "again", "m-2")).await.unwrap();
    let (items, _) = collect_until(&mut e.feed, "m-2").await;
    assert_eq!(message_seqs(&items, &a.general), vec![2], "m-1 is not repeated: {items:?}");
    let Answer::Sent { cursor: Some(cursor2), .. } = sent2 else { panic!("unexpected {sent2:?}") };
    assert!(up.cursor().is_some_and(|c| c >= cursor2), "the upstream's cursor follows the feed");

    // History with the HTTP API's visibility rules.
    let history = |user: &UserId, channel: &ChannelId| Call::History {
        workspace: a.ws.clone(),
        user: user.clone(),
        channel: channel.clone(),
        before: None,
        after: None,
        limit: 10,
    };
    match up.call(history(&a.bob, &a.general)).await {
        Ok(Answer::Messages { messages, has_more: false }) => {
            assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(up.call(history(&a.bob, &a.secret)).await.unwrap_err().code, ErrorCode::NotFound);
    assert!(matches!(up.call(history(&a.admin, &a.secret)).await, Ok(Answer::Messages { .. })));

    // Events after the snapshot: both messages, in order.
    match up.call(Call::Events { workspace: a.ws.clone(), after: snapshot.cursor.clone(), limit: 100 }).await {
        Ok(Answer::Events { items, next, more: false, resync: false }) => {
            assert_eq!(message_seqs(&items, &a.general), vec![1, 2]);
            assert_eq!(next, cursor2);
        }
        other => panic!("unexpected {other:?}"),
    }

    // Both ends counted the calls.
    assert_eq!(o.metric("selvage_link_calls_total{call=\"send\"}"), 3);
    assert_eq!(o.metric("selvage_link_calls_total{call=\"authenticate\"}"), 2);
    let edge_metrics = e.metrics.render();
    assert_eq!(metric(&edge_metrics, "selvage_edge_origin_calls_total{call=\"authenticate\",outcome=\"ok\"}"), 1);
    assert_eq!(metric(&edge_metrics, "selvage_edge_origin_calls_total{call=\"authenticate\",outcome=\"error\"}"), 1);
    assert_eq!(metric(&edge_metrics, "selvage_edge_link_up"), 1);
    assert!(metric(&edge_metrics, "selvage_edge_feed_events_total") >= 2);
    drop(e);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_exactly_once_and_in_order_across_bounces() {
    const N: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let o = TestOrigin::start(dir.path(), "127.0.0.1:0".parse().unwrap(), None).await;
    let a = Arc::new(acme(&o.origin()).await);
    let mut e = edge(o.link_addr, EDGE_KEY, Trust::Pinned(o.fingerprint.clone()));
    let up = e.upstream.clone();
    wait_until("the link is up", || up.is_up()).await;

    // The writer sends through the upstream and retries what the link loses, with the same
    // client_msg_id: each message must get exactly the next seq.
    let writer = {
        let (up, a) = (up.clone(), a.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + DEADLINE;
            for i in 1..=N {
                loop {
                    match up.call(send_call(&a, &format!("w{i}"), &format!("w-{i}"))).await {
                        Ok(Answer::Sent { message, .. }) => {
                            assert_eq!(message.seq, i, "a retried send keeps its seq");
                            break;
                        }
                        Err(e) if e.code == ErrorCode::Unavailable && Instant::now() < deadline => {
                            // Backoff between retries, not synchronisation.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        other => panic!("send {i} failed: {other:?}"),
                    }
                }
            }
        })
    };

    let mut seqs = Vec::new();
    let mut downs = 0;
    let mut bounces = [50usize, 120, 200].into_iter().peekable();
    let deadline = Instant::now() + DEADLINE;
    while (seqs.len() as u64) < N {
        assert!(Instant::now() < deadline, "only {} of {N} messages arrived", seqs.len());
        match next_update(&mut e.feed).await {
            FeedUpdate::Events(items) => seqs.extend(message_seqs(&items, &a.general)),
            FeedUpdate::LinkDown => downs += 1,
            FeedUpdate::LinkUp | FeedUpdate::Heartbeat(_) | FeedUpdate::Ephemeral { .. } => {}
            FeedUpdate::Resync { reason, .. } => panic!("unexpected resync: {reason}"),
        }
        if bounces.peek().is_some_and(|at| seqs.len() >= *at) && up.is_up() {
            bounces.next();
            up.bounce();
        }
    }
    writer.await.unwrap();
    assert!(bounces.peek().is_none(), "every bounce happened");
    // Anything repeated would arrive before an event sent now.
    up.call(send_call(&a, "last", "sentinel")).await.unwrap();
    let (items, transitions) = collect_until(&mut e.feed, "sentinel").await;
    seqs.extend(message_seqs(&items, &a.general));
    downs += transitions.iter().filter(|up| !**up).count();
    assert_eq!(seqs, (1..=N + 1).collect::<Vec<_>>(), "every message exactly once, in order");
    assert!(downs >= 3, "the consumer saw each link loss ({downs})");
    assert!(metric(&e.metrics.render(), "selvage_edge_link_connects_total") >= 4);
    drop(e);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_edge_key_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let o = TestOrigin::start(dir.path(), "127.0.0.1:0".parse().unwrap(), None).await;
    let mut e = edge(o.link_addr, "not-the-edge-key-at-all", Trust::Pinned(o.fingerprint.clone()));
    let up = e.upstream.clone();
    wait_until("the origin refuses the key", || up.last_error().is_some()).await;
    let refusal = up.last_error().unwrap();
    assert_eq!(refusal.code, ErrorCode::Unauthorized, "{refusal:?}");
    assert!(refusal.message.contains("edge key"), "{}", refusal.message);
    assert!(!up.is_up());
    let err = up.call(Call::Snapshot { workspace: WorkspaceId::new_unchecked("W1") }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(err.message.contains("edge key"), "the caller learns why: {}", err.message);
    assert!(e.feed.try_recv().is_err(), "no LinkUp was ever handed over");
    assert_eq!(metric(&e.metrics.render(), "selvage_edge_link_connects_total"), 0);
    assert!(o.metric("selvage_link_refused_total") >= 1);
    drop(e);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_link_key_and_certificate_are_rotated_edges_with_either_link_and_others_are_refused() {
    const OLD_KEY: &str = "the-link-key-being-replaced-0123";
    let dir = tempfile::tempdir().unwrap();
    let o = TestOrigin::start_with(dir.path(), "127.0.0.1:0".parse().unwrap(), None, Some(OLD_KEY)).await;
    // An edge not yet given the new key, and one already given it that trusts the origin's
    // certificate beside a new one (the next certificate's fingerprint).
    let old = edge(o.link_addr, OLD_KEY, Trust::Pinned(o.fingerprint.clone()));
    let new = edge(o.link_addr, EDGE_KEY, Trust::PinnedAny(vec!["cd".repeat(32), o.fingerprint.clone()]));
    let (old_up, new_up) = (old.upstream.clone(), new.upstream.clone());
    wait_until("both edges link", || old_up.is_up() && new_up.is_up()).await;
    let answer = old_up.call(Call::Snapshot { workspace: WorkspaceId::new_unchecked("W1") }).await;
    assert!(
        !matches!(&answer, Err(e) if e.code == ErrorCode::Unauthorized),
        "calls of the edge with the previous key are served: {answer:?}"
    );
    let wrong = edge(o.link_addr, "neither-the-old-nor-the-new-key", Trust::Pinned(o.fingerprint.clone()));
    let wrong_up = wrong.upstream.clone();
    wait_until("the origin refuses a third key", || wrong_up.last_error().is_some()).await;
    assert_eq!(wrong_up.last_error().unwrap().code, ErrorCode::Unauthorized);
    assert!(!wrong_up.is_up());
    // Neither pinned fingerprint is the origin's: refused.
    let unpinned = edge(o.link_addr, EDGE_KEY, Trust::PinnedAny(vec!["cd".repeat(32), "ef".repeat(32)]));
    let unpinned_up = unpinned.upstream.clone();
    wait_until("the handshake fails", || unpinned_up.last_error().is_some()).await;
    assert!(unpinned_up.last_error().unwrap().message.contains("pinned"));
    drop((old, new, wrong, unpinned));
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_is_not_the_pinned_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = TestOrigin::start(dir.path(), "127.0.0.1:0".parse().unwrap(), None).await;
    let e = edge(o.link_addr, EDGE_KEY, Trust::Pinned("ab".repeat(32)));
    let up = e.upstream.clone();
    wait_until("the handshake fails", || up.last_error().is_some()).await;
    let err = up.last_error().unwrap();
    assert_eq!(err.code, ErrorCode::Unauthorized, "{err:?}");
    assert!(err.message.contains("pinned"), "{}", err.message);
    assert!(!up.is_up());
    assert_eq!(metric(&e.metrics.render(), "selvage_edge_link_connects_total"), 0);
    assert_eq!(o.metric("selvage_link_streams{kind=\"feed\"}"), 0, "no stream got through");
    drop(e);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_origin_restart_the_feed_resumes_after_its_cursor() {
    let data = tempfile::tempdir().unwrap();
    // A certificate on disk, so the restarted origin has the same one and the pin still holds.
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert = (certs.path().join("link.pem"), certs.path().join("link.key"));
    std::fs::write(&cert.0, made.cert.pem()).unwrap();
    std::fs::write(&cert.1, made.key_pair.serialize_pem()).unwrap();

    let o = TestOrigin::start(data.path(), "127.0.0.1:0".parse().unwrap(), Some(&cert)).await;
    let (link_addr, fingerprint) = (o.link_addr, o.fingerprint.clone());
    let a = acme(&o.origin()).await;
    let mut e = edge(link_addr, EDGE_KEY, Trust::Pinned(fingerprint.clone()));
    let up = e.upstream.clone();
    wait_until("the link is up", || up.is_up()).await;
    for n in 1..=3 {
        send_direct(&o.origin(), &a, n).await;
    }
    let (items, _) = collect_until(&mut e.feed, "d-3").await;
    assert_eq!(message_seqs(&items, &a.general), vec![1, 2, 3]);

    o.stop().await;
    wait_until("the upstream notices the origin is gone", || !up.is_up()).await;
    let started = Instant::now();
    let err = up.call(Call::Snapshot { workspace: a.ws.clone() }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast, took {:?}", started.elapsed());

    // Same data, same link address, same certificate; some messages land before the edge is back.
    let o = TestOrigin::start(data.path(), link_addr, Some(&cert)).await;
    assert_eq!((o.link_addr, o.fingerprint.as_str()), (link_addr, fingerprint.as_str()));
    for n in 4..=5 {
        send_direct(&o.origin(), &a, n).await;
    }
    wait_until("the upstream reconnects by itself", || up.is_up()).await;
    send_direct(&o.origin(), &a, 6).await;
    let (items, transitions) = collect_until(&mut e.feed, "d-6").await;
    assert_eq!(message_seqs(&items, &a.general), vec![4, 5, 6], "resumed after the cursor, nothing repeated");
    assert_eq!(transitions, vec![false, true], "the consumer saw the link go down and come back");
    match up.call(Call::Snapshot { workspace: a.ws.clone() }).await {
        Ok(Answer::Snapshot(s)) => {
            assert_eq!(s.channels.iter().find(|c| c.channel.id == a.general).map(|c| c.last_seq), Some(6));
        }
        other => panic!("unexpected {other:?}"),
    }
    drop(e);
    o.stop().await;
}
