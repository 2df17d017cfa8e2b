//! Feed consumers (ARCHITECTURE §8) end to end: real origins on port 0 over the real embedded
//! store in temporary directories, messages posted through the in-process entry point, runners
//! following the feed with durable cursors.

use std::{
    collections::BTreeSet,
    future::Future,
    path::Path,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use selvage_origin::{
    feed::{
        self,
        consumer::{self, Batch, Consumer, ConsumerError, ConsumerOptions, ConsumerRunner, StartFrom},
        Position, Read,
    },
    store::{tuple::Key, KvTxn},
    transact, Actor, Origin, OriginConfig, Running,
};
use selvage_shared::{ChannelId, Event};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a condition may take before a test fails.
const DEADLINE: Duration = Duration::from_secs(20);

struct Node {
    running: Option<Running>,
    shutdown: CancellationToken,
}

impl Node {
    async fn start(dir: &Path, tweak: impl FnOnce(&mut OriginConfig)) -> Self {
        let mut config = OriginConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.to_path_buf(),
            fsync: false,
            ..OriginConfig::default()
        };
        // The tests count what the feed keeps for the consumers they register: no search
        // indexer beside them.
        config.search.enabled = false;
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let running = selvage_origin::start(config, shutdown.clone()).await.unwrap();
        Node { running: Some(running), shutdown }
    }

    fn origin(&self) -> Arc<Origin> {
        self.running.as_ref().unwrap().origin.clone()
    }

    /// Stops the node and waits until its store is closed.
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await;
        }
    }
}

/// A workspace with a channel to post in.
async fn channel(origin: &Origin) -> (Actor, ChannelId) {
    let (_, admin) = origin.create_workspace("acme", "admin", "Admin").await.unwrap();
    let channel = origin.create_channel(&admin, "consumers", false).await.unwrap();
    (admin, channel.id)
}

/// Posts `n` messages numbered from `from`; answers their cursors.
async fn post(origin: &Origin, admin: &Actor, channel: &ChannelId, from: usize, n: usize) -> Vec<String> {
    let mut cursors = Vec::with_capacity(n);
    for i in from..from + n {
        let sent = origin.send(admin, channel, &format!("m{i}"), format!("m{i}")).await.unwrap();
        cursors.push(sent.cursor.unwrap().to_string());
    }
    cursors
}

fn options(lease_ms: u64) -> ConsumerOptions {
    ConsumerOptions {
        batch_size: 7,
        lease: Duration::from_millis(lease_ms),
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(100),
    }
}

fn spawn(origin: &Origin, consumer: Arc<dyn Consumer>, lease_ms: u64) -> (JoinHandle<()>, CancellationToken) {
    let stop = CancellationToken::new();
    let runner = ConsumerRunner::new(origin.feed.clone(), consumer, options(lease_ms)).unwrap();
    (runner.spawn(stop.clone()), stop)
}

/// Waits until `cond` holds, failing the test after [`DEADLINE`].
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn test_key(consumer: &str, what: &str) -> Vec<u8> {
    Key::new().str("test").str(consumer).str(what).finish()
}

async fn read_i64(origin: &Origin, key: &[u8]) -> i64 {
    let (v, _) = transact!(origin.store, |tx| { tx.get(key).await? }).unwrap();
    v.as_deref().map(feed::le_i64).unwrap_or(0)
}

async fn cursor_of(origin: &Origin, name: &str) -> Option<Position> {
    consumer::stored_cursor(&origin.feed, name).await.unwrap()
}

/// Waits until the consumer `name` has handled everything in the log.
async fn wait_caught_up(origin: &Origin, name: &str) {
    wait_for(&format!("{name} to reach the head"), || async {
        cursor_of(origin, name).await == Some(origin.feed.head().await.unwrap())
    })
    .await;
}

/// A metric's value for one consumer, 0 when absent.
fn metric(origin: &Origin, name: &str, consumer: &str) -> f64 {
    let prefix = format!("{name}{{consumer=\"{consumer}\"}} ");
    origin.metrics.render().lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0.0)
}

/// Counts messages into `(test, name, count)`, in the transaction that moves its cursor; a
/// message it sees twice is counted in `(test, name, repeats)` too.
struct Counter {
    name: &'static str,
    start: StartFrom,
}

impl Counter {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Counter { name, start: StartFrom::Head })
    }
}

#[async_trait]
impl Consumer for Counter {
    fn name(&self) -> &str {
        self.name
    }

    fn start_from(&self) -> StartFrom {
        self.start
    }

    async fn apply(&self, tx: &mut dyn KvTxn, batch: &Batch) -> Result<(), ConsumerError> {
        for item in &batch.items {
            if let Event::Message(m) = &item.event.event {
                let seen = test_key(self.name, &format!("seen-{}", m.seq));
                if tx.get(&seen).await?.is_some() {
                    tx.atomic_add(&test_key(self.name, "repeats"), 1)?;
                }
                tx.set(&seen, b"")?;
                tx.atomic_add(&test_key(self.name, "count"), 1)?;
            }
        }
        Ok(())
    }

    async fn resync(&self, tx: &mut dyn KvTxn, _from: Position, _trim_point: Position) -> Result<(), ConsumerError> {
        tx.atomic_add(&test_key(self.name, "resyncs"), 1)?;
        Ok(())
    }
}

/// An effect outside the store: logs each message's idempotency key, tagged with which
/// instance delivered it.
struct Recorder {
    name: &'static str,
    tag: &'static str,
    log: Arc<Mutex<Vec<(&'static str, String)>>>,
}

#[async_trait]
impl Consumer for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    async fn deliver(&self, batch: &Batch) -> Result<(), ConsumerError> {
        for item in &batch.items {
            if matches!(item.event.event, Event::Message(_)) {
                self.log.lock().unwrap().push((self.tag, item.key().to_string()));
                // A slow effect, so that a cancellation lands in the middle of a batch.
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }
}

fn keys_of(log: &Mutex<Vec<(&'static str, String)>>) -> Vec<String> {
    log.lock().unwrap().iter().map(|(_, k)| k.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_effect_counts_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |_| {}).await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    let (task, stop) = spawn(&origin, Counter::new("count"), 2_000);
    wait_for("registration", || async { cursor_of(&origin, "count").await.is_some() }).await;
    post(&origin, &admin, &chan, 0, 50).await;
    wait_caught_up(&origin, "count").await;
    assert_eq!(read_i64(&origin, &test_key("count", "count")).await, 50);
    assert_eq!(read_i64(&origin, &test_key("count", "repeats")).await, 0);
    // The metrics move just after the commit that the cursor shows.
    wait_for("the events metric", || async { metric(&origin, "selvage_consumer_events_total", "count") >= 50.0 }).await;
    assert_eq!(metric(&origin, "selvage_consumer_events_total", "count"), 50.0);
    wait_for("no lag", || async { metric(&origin, "selvage_consumer_lag_seconds", "count") == 0.0 }).await;
    stop.cancel();
    task.await.unwrap();
    drop(origin);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_runner_resumes_after_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |_| {}).await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let recorder = || Arc::new(Recorder { name: "record", tag: "one", log: log.clone() });
    let (counting, stop_counting) = spawn(&origin, Counter::new("count"), 2_000);
    let (recording, stop_recording) = spawn(&origin, recorder(), 2_000);
    wait_for("registration", || async {
        cursor_of(&origin, "count").await.is_some() && cursor_of(&origin, "record").await.is_some()
    })
    .await;
    let poster = {
        let (origin, admin, chan) = (origin.clone(), admin.clone(), chan.clone());
        tokio::spawn(async move { post(&origin, &admin, &chan, 0, 60).await })
    };
    // Cancel both runners while messages are still coming in.
    wait_for("some progress", || async {
        read_i64(&origin, &test_key("count", "count")).await >= 10 && log.lock().unwrap().len() >= 10
    })
    .await;
    stop_counting.cancel();
    stop_recording.cancel();
    counting.await.unwrap();
    recording.await.unwrap();
    let mut posted = poster.await.unwrap();
    posted.extend(post(&origin, &admin, &chan, 60, 20).await);
    let counted = read_i64(&origin, &test_key("count", "count")).await;
    assert!(counted < 80, "the counter was stopped before the last posts, yet counted {counted}");

    let (counting, stop_counting) = spawn(&origin, Counter::new("count"), 2_000);
    let (recording, stop_recording) = spawn(&origin, recorder(), 2_000);
    wait_caught_up(&origin, "count").await;
    wait_caught_up(&origin, "record").await;
    assert_eq!(read_i64(&origin, &test_key("count", "count")).await, 80);
    assert_eq!(read_i64(&origin, &test_key("count", "repeats")).await, 0);
    let delivered = keys_of(&log);
    let distinct: BTreeSet<String> = delivered.iter().cloned().collect();
    assert!(delivered.len() >= 80);
    assert_eq!(distinct, posted.iter().cloned().collect::<BTreeSet<_>>(), "every posted event, none other");
    stop_counting.cancel();
    stop_recording.cancel();
    counting.await.unwrap();
    recording.await.unwrap();
    drop(origin);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_origin_resumes_after_the_durable_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let recorder = || Arc::new(Recorder { name: "record", tag: "one", log: log.clone() });
    let node = Node::start(dir.path(), |_| {}).await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    let (counting, _) = spawn(&origin, Counter::new("count"), 500);
    let (recording, _) = spawn(&origin, recorder(), 500);
    wait_for("registration", || async {
        cursor_of(&origin, "count").await.is_some() && cursor_of(&origin, "record").await.is_some()
    })
    .await;
    let mut posted = post(&origin, &admin, &chan, 0, 30).await;
    wait_for("some progress", || async { read_i64(&origin, &test_key("count", "count")).await >= 10 }).await;
    // A crash: the runners die without giving up their leases, then the node stops and its
    // store is closed.
    counting.abort();
    recording.abort();
    let _ = counting.await;
    let _ = recording.await;
    drop(origin);
    node.stop().await;

    let node = Node::start(dir.path(), |_| {}).await;
    let origin = node.origin();
    let counted = read_i64(&origin, &test_key("count", "count")).await;
    assert!((10..=30).contains(&counted), "{counted} counted before the crash");
    posted.extend(post(&origin, &admin, &chan, 30, 20).await);
    // The new runners wait out the dead ones' leases, then resume.
    let (counting, stop_counting) = spawn(&origin, Counter::new("count"), 500);
    let (recording, stop_recording) = spawn(&origin, recorder(), 500);
    wait_caught_up(&origin, "count").await;
    wait_caught_up(&origin, "record").await;
    assert_eq!(read_i64(&origin, &test_key("count", "count")).await, 50);
    assert_eq!(read_i64(&origin, &test_key("count", "repeats")).await, 0);
    let distinct: BTreeSet<String> = keys_of(&log).into_iter().collect();
    assert_eq!(distinct, posted.into_iter().collect::<BTreeSet<_>>());
    stop_counting.cancel();
    stop_recording.cancel();
    counting.await.unwrap();
    recording.await.unwrap();
    drop(origin);
    node.stop().await;
}

/// Counts messages but fails its first `failures` batches after writing: with an error, and
/// the last time with a panic.
struct Flaky {
    failures: AtomicU32,
}

#[async_trait]
impl Consumer for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    async fn apply(&self, tx: &mut dyn KvTxn, batch: &Batch) -> Result<(), ConsumerError> {
        let messages = batch.items.iter().filter(|i| matches!(i.event.event, Event::Message(_))).count();
        tx.atomic_add(&test_key("flaky", "count"), messages as i64)?;
        if messages > 0 && self.failures.load(Ordering::SeqCst) > 0 {
            if self.failures.fetch_sub(1, Ordering::SeqCst) == 1 {
                panic!("a handler bug");
            }
            return Err(ConsumerError::handler("the index is not ready"));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_is_retried_and_nothing_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |_| {}).await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    let flaky = Arc::new(Flaky { failures: AtomicU32::new(2) });
    let (task, stop) = spawn(&origin, flaky.clone(), 2_000);
    wait_for("registration", || async { cursor_of(&origin, "flaky").await.is_some() }).await;
    post(&origin, &admin, &chan, 0, 20).await;
    wait_caught_up(&origin, "flaky").await;
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 0);
    // The failed attempts' writes were dropped with their transactions.
    assert_eq!(read_i64(&origin, &test_key("flaky", "count")).await, 20);
    assert_eq!(metric(&origin, "selvage_consumer_batches_failed_total", "flaky"), 2.0);
    stop.cancel();
    task.await.unwrap();
    drop(origin);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_with_different_names_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |_| {}).await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    let (alpha, stop_alpha) = spawn(&origin, Counter::new("alpha"), 2_000);
    let (beta, stop_beta) = spawn(&origin, Counter::new("beta"), 2_000);
    wait_for("registration", || async {
        cursor_of(&origin, "alpha").await.is_some() && cursor_of(&origin, "beta").await.is_some()
    })
    .await;
    post(&origin, &admin, &chan, 0, 10).await;
    wait_caught_up(&origin, "alpha").await;
    wait_caught_up(&origin, "beta").await;
    stop_beta.cancel();
    beta.await.unwrap();
    let beta_at = cursor_of(&origin, "beta").await;

    post(&origin, &admin, &chan, 10, 10).await;
    wait_caught_up(&origin, "alpha").await;
    assert_eq!(read_i64(&origin, &test_key("alpha", "count")).await, 20);
    assert_eq!(read_i64(&origin, &test_key("beta", "count")).await, 10);
    assert_eq!(cursor_of(&origin, "beta").await, beta_at, "beta's cursor stays where beta left it");

    let (beta, stop_beta) = spawn(&origin, Counter::new("beta"), 2_000);
    wait_caught_up(&origin, "beta").await;
    assert_eq!(read_i64(&origin, &test_key("beta", "count")).await, 20);
    assert_eq!(read_i64(&origin, &test_key("alpha", "count")).await, 20);
    stop_alpha.cancel();
    stop_beta.cancel();
    alpha.await.unwrap();
    beta.await.unwrap();
    drop(origin);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_at_a_time_holds_a_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |_| {}).await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let instance = |tag| Arc::new(Recorder { name: "shared", tag, log: log.clone() });
    let by = |tag: &str| -> BTreeSet<String> {
        log.lock().unwrap().iter().filter(|(t, _)| *t == tag).map(|(_, k)| k.clone()).collect()
    };
    let (first, stop_first) = spawn(&origin, instance("first"), 1_000);
    wait_for("registration", || async { cursor_of(&origin, "shared").await.is_some() }).await;
    let (second, stop_second) = spawn(&origin, instance("second"), 1_000);
    let batch1: BTreeSet<String> = post(&origin, &admin, &chan, 0, 10).await.into_iter().collect();
    wait_caught_up(&origin, "shared").await;
    assert_eq!(by("first"), batch1);
    assert!(by("second").is_empty(), "the second runner ran while the first held the lease");

    // A clean stop gives the lease up; the second runner takes over.
    stop_first.cancel();
    first.await.unwrap();
    let batch2: BTreeSet<String> = post(&origin, &admin, &chan, 10, 10).await.into_iter().collect();
    wait_caught_up(&origin, "shared").await;
    assert_eq!(by("second"), batch2);
    assert_eq!(by("first"), batch1);

    // A crash keeps the lease until it expires; then a third runner takes over.
    second.abort();
    let _ = second.await;
    let (third, stop_third) = spawn(&origin, instance("third"), 1_000);
    let batch3: BTreeSet<String> = post(&origin, &admin, &chan, 20, 10).await.into_iter().collect();
    wait_caught_up(&origin, "shared").await;
    assert_eq!(by("third"), batch3);
    stop_second.cancel();
    stop_third.cancel();
    third.await.unwrap();
    drop(origin);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trimmer_keeps_what_a_consumer_needs_up_to_the_hold_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |c| {
        c.feed.max_events = 5;
        c.feed.consumer_hold_events = 40;
    })
    .await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    // Down to feed.max_events before any consumer registers.
    origin.feed.trim(selvage_origin::now_ms()).await.unwrap();
    let (task, stop) = spawn(&origin, Counter::new("slow"), 2_000);
    wait_for("registration", || async { cursor_of(&origin, "slow").await.is_some() }).await;
    stop.cancel();
    task.await.unwrap();
    let registered = cursor_of(&origin, "slow").await.unwrap();

    // Over feed.max_events, within the hold: everything after the cursor stays.
    post(&origin, &admin, &chan, 0, 30).await;
    origin.feed.trim(selvage_origin::now_ms()).await.unwrap();
    match origin.feed.read_after(&registered, 1000).await.unwrap() {
        Read::Events { items, .. } => assert_eq!(items.len(), 30, "the trimmer dropped events the consumer needs"),
        Read::Resync { .. } => panic!("the trimmer went past a registered cursor within the hold"),
    }
    // Past the hold: trimmed anyway, down to the hold limit.
    post(&origin, &admin, &chan, 30, 30).await;
    let trimmed = origin.feed.trim(selvage_origin::now_ms()).await.unwrap();
    assert_eq!(trimmed, 20, "60 events after the cursor, 40 held");
    assert!(matches!(origin.feed.read_after(&registered, 1).await.unwrap(), Read::Resync { .. }));

    let (task, stop) = spawn(&origin, Counter::new("slow"), 2_000);
    wait_caught_up(&origin, "slow").await;
    wait_for("the resync metric", || async { metric(&origin, "selvage_consumer_resyncs_total", "slow") >= 1.0 }).await;
    assert_eq!(metric(&origin, "selvage_consumer_resyncs_total", "slow"), 1.0);
    assert_eq!(read_i64(&origin, &test_key("slow", "resyncs")).await, 1, "the consumer's resync hook ran once");
    assert_eq!(read_i64(&origin, &test_key("slow", "count")).await, 40, "the 40 messages the log still held");
    stop.cancel();
    task.await.unwrap();
    drop(origin);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trimmer_keeps_old_events_for_a_consumer_up_to_the_hold_age() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |c| {
        c.feed.retention_secs = 3600;
        c.feed.consumer_hold_secs = 2 * 3600;
    })
    .await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    // Starting from the oldest event, the consumer handles the workspace's own events too.
    let oldest = Arc::new(Counter { name: "oldest", start: StartFrom::Oldest });
    let (task, stop) = spawn(&origin, oldest.clone(), 2_000);
    wait_for("registration", || async { cursor_of(&origin, "oldest").await.is_some() }).await;
    wait_caught_up(&origin, "oldest").await;
    stop.cancel();
    task.await.unwrap();
    assert!(metric(&origin, "selvage_consumer_events_total", "oldest") >= 3.0, "it started before the workspace");
    let registered = cursor_of(&origin, "oldest").await.unwrap();
    post(&origin, &admin, &chan, 0, 5).await;

    // Past the retention, within the hold: only what the consumer has handled goes.
    let hour_and_a_half = selvage_origin::now_ms() + 90 * 60 * 1000;
    assert!(origin.feed.trim(hour_and_a_half).await.unwrap() >= 3);
    match origin.feed.read_after(&registered, 1000).await.unwrap() {
        Read::Events { items, .. } => assert_eq!(items.len(), 5, "the trimmer dropped events the consumer needs"),
        Read::Resync { .. } => panic!("the trimmer went past a registered cursor within the hold"),
    }
    let three_hours = selvage_origin::now_ms() + 3 * 3600 * 1000;
    assert!(origin.feed.trim(three_hours).await.unwrap() >= 5);
    assert!(matches!(origin.feed.read_after(&registered, 1).await.unwrap(), Read::Resync { .. }));
    consumer::forget(&origin.feed, "oldest").await.unwrap();
    assert_eq!(cursor_of(&origin, "oldest").await, None);
    drop(origin);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_consumers_the_trimmer_trims_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |c| {
        c.feed.retention_secs = 3600;
        // None of the services' consumers either: each registers its cursor at the start.
        c.notify.enabled = false;
        c.apps.webhooks = false;
    })
    .await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    post(&origin, &admin, &chan, 0, 5).await;
    let hour_and_a_half = selvage_origin::now_ms() + 90 * 60 * 1000;
    assert!(origin.feed.trim(hour_and_a_half).await.unwrap() >= 5);
    assert!(matches!(origin.feed.read_after(&feed::START, 10).await.unwrap(), Read::Resync { .. }));
    drop(origin);
    node.stop().await;
}

/// Counts messages in the store, after a delivery that waits for the test to open its gate.
struct Gated {
    entered: AtomicU32,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl Consumer for Gated {
    fn name(&self) -> &str {
        "gated"
    }

    async fn deliver(&self, _batch: &Batch) -> Result<(), ConsumerError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.map_err(ConsumerError::handler)?.forget();
        Ok(())
    }

    async fn apply(&self, tx: &mut dyn KvTxn, batch: &Batch) -> Result<(), ConsumerError> {
        let messages = batch.items.iter().filter(|i| matches!(i.event.event, Event::Message(_))).count();
        tx.atomic_add(&test_key("gated", "count"), messages as i64)?;
        Ok(())
    }
}

/// The lease record as the runner stores it.
#[derive(serde::Serialize)]
struct LeaseRecord<'a> {
    owner: &'a str,
    expires_ms: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_lost_its_lease_cannot_move_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |_| {}).await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    let gated = Arc::new(Gated { entered: AtomicU32::new(0), gate: tokio::sync::Semaphore::new(0) });
    let (task, stop) = spawn(&origin, gated.clone(), 2_000);
    wait_for("registration", || async { cursor_of(&origin, "gated").await.is_some() }).await;
    let registered = cursor_of(&origin, "gated").await;
    post(&origin, &admin, &chan, 0, 5).await;
    wait_for("a delivery", || async { gated.entered.load(Ordering::SeqCst) >= 1 }).await;

    // Another node takes the lease while the delivery is under way (as after a long pause).
    let lease = selvage_origin::store::keys::consumer_lease("gated");
    let intruder = |expires_ms| selvage_shared::to_msgpack(&LeaseRecord { owner: "intruder", expires_ms });
    let record = intruder(selvage_origin::now_ms() + 60_000);
    transact!(origin.store, |tx| { tx.set(&lease, &record)? }).unwrap();
    gated.gate.add_permits(1000);
    wait_for("the runner to notice", || async { metric(&origin, "selvage_consumer_lease_held", "gated") == 0.0 }).await;
    assert_eq!(cursor_of(&origin, "gated").await, registered, "a fenced runner moved the cursor");
    assert_eq!(read_i64(&origin, &test_key("gated", "count")).await, 0, "a fenced runner wrote its effects");

    // Once the other node's lease has expired, the runner takes it back and finishes the work.
    let record = intruder(selvage_origin::now_ms() - 1);
    transact!(origin.store, |tx| { tx.set(&lease, &record)? }).unwrap();
    wait_caught_up(&origin, "gated").await;
    assert_eq!(read_i64(&origin, &test_key("gated", "count")).await, 5);
    assert!(gated.entered.load(Ordering::SeqCst) >= 2, "the fenced batch was delivered again");
    stop.cancel();
    task.await.unwrap();
    drop(origin);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_registered_at_the_head_gets_what_came_before_its_runner_started() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |_| {}).await;
    let origin = node.origin();
    let (admin, chan) = channel(&origin).await;
    post(&origin, &admin, &chan, 0, 3).await;
    // Registered as a node does at its start; its runner comes later, as a busy runtime's would.
    let at = consumer::register(&origin.feed, "late", StartFrom::Head).await.unwrap();
    assert_eq!(at, origin.feed.head().await.unwrap(), "registered at the head");
    post(&origin, &admin, &chan, 3, 5).await;
    // Registering again keeps the cursor where it is.
    assert_eq!(consumer::register(&origin.feed, "late", StartFrom::Head).await.unwrap(), at);
    let (task, stop) = spawn(&origin, Counter::new("late"), 2_000);
    wait_caught_up(&origin, "late").await;
    assert_eq!(read_i64(&origin, &test_key("late", "count")).await, 5, "the five sent after the registration");
    assert!(consumer::register(&origin.feed, "Not a name", StartFrom::Head).await.is_err());
    stop.cancel();
    task.await.unwrap();
    drop(origin);
    node.stop().await;
}
