//! The `notify` scenario: what notifications cost (ARCHITECTURE §8 "Notifications"), on an
//! origin in this process (embedded store, fsync on, in a temporary directory), with a Web Push
//! receiver in this process too (an HTTP server on loopback that checks each request's headers
//! and counts it).
//!
//! 1. **Seed.** A workspace with `--members` users, all members of two public channels
//!    (`#all-hands` and `#announce`) and each with a Web Push subscription (an endpoint on the
//!    receiver, real P-256 keys), and `#chatter` with two of them. Then mention → push (5.)
//!    runs first, on a store not yet busy flushing the other phases' bulk writes.
//! 2. **Decision.** `--broadcasts` `@channel` messages in `#all-hands`, each concerning every
//!    member but its author. Measured: from the first send until the consumer `notify` has
//!    written a pending entry for every (member, message) — wall time per message and per
//!    recipient, and the process's CPU time per message (getrusage: the consumer's work, plus
//!    the sends', which are small beside it). `notify.delay_ms` is an hour here, so nothing is
//!    delivered meanwhile.
//! 3. **The sequencer with the notifier busy.** `--senders` closed-loop senders post plain
//!    messages in `#chatter` for `--duration` while one `@channel` message goes to `#all-hands`
//!    every `--broadcast-every`, once with notifications on (the consumer deciding each for
//!    every member) and once off (the same origin and data, `notify.enabled = false`), in turns,
//!    `--rounds` times. The sends per second of each, and the ratio of their medians.
//! 4. **Web Push deliveries.** One `@channel` in `#announce` notifies every subscriber, with
//!    `notify.delay_ms` at 1 s. Measured at the receiver: from the first push to the last,
//!    pushes per second — each encrypted (RFC 8291) and signed (VAPID) for its subscription,
//!    after the dispatcher's claim and checks in the store. With `--peer-python`, the same
//!    number of pushes to the same receiver by pywebpush (`docs/bench/webpush_peer.py`), the
//!    library Python servers send Web Push with, `--peer-threads` at once.
//! 5. **Mention → push.** With `notify.delay_ms = 0` (the default `tick_ms`), `--samples`
//!    mentions of subscribed members, `--sample-every` apart: from the message's timestamp to
//!    its push arriving at the receiver. What a user waits beyond the configured delay.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use base64::Engine as _;
use clap::Args;
use futures::{stream, StreamExt};
use selvage_origin::{accounts, Actor, Origin, OriginConfig};
use selvage_shared::{ChannelId, PushKeys, PushSubscriptionJson};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    in_process::{median, start, stop, wait_for, KeptUp, STALLED},
    report::{latency_histogram, Latency},
    sends::parse_duration,
};

/// Store transactions in flight at once while the workspace is seeded.
const SEED_CONCURRENCY: usize = 32;

/// `selvage loadtest notify` arguments.
#[derive(Args, Clone, Debug)]
pub struct NotifyArgs {
    /// Members of `#all-hands` and `#announce`, which the `@channel` messages concern.
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// `@channel` messages decided in the decision phase.
    #[arg(long, default_value_t = 20)]
    pub broadcasts: usize,
    /// Closed-loop senders in `#chatter` while the sequencer's rate is measured.
    #[arg(long, default_value_t = 64)]
    pub senders: usize,
    /// How long each sequencer run lasts (`10s`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// One `@channel` message to `#all-hands` this often during each sequencer run.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub broadcast_every: Duration,
    /// Sequencer runs with notifications on and off, in turns, each.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Mentions timed from message to push.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Time between two timed mentions.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// The peer: a Python with pywebpush (`pip install pywebpush`), which sends as many pushes
    /// to the same receiver with `docs/bench/webpush_peer.py`. Without it, the peer is skipped.
    #[arg(long, env = "SELVAGE_WEBPUSH_PEER_PYTHON")]
    pub peer_python: Option<PathBuf>,
    /// The peer's threads (requests in flight at once; the dispatcher has 16).
    #[arg(long, default_value_t = 16)]
    pub peer_threads: usize,
    /// Data directory of the origin [default: a temporary directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct NotifyReport {
    /// Members of the channels the `@channel` messages go to.
    pub members: usize,
    /// The decision phase.
    pub decision: DecisionReport,
    /// The sequencer's rate with the notifier busy and without it.
    pub sequencer: SequencerReport,
    /// Web Push deliveries.
    pub webpush: PushReport,
    /// The peer's Web Push deliveries, when run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PushReport>,
    /// Why the peer was not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_skipped: Option<String>,
    /// Mention → push.
    pub latency: Latency,
    /// `notify.tick_ms` during the latency phase.
    pub tick_ms: u64,
}

/// What deciding the `@channel` messages cost.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionReport {
    /// `@channel` messages.
    pub messages: usize,
    /// Pending entries written ((member, message) pairs).
    pub pending: u64,
    /// From the first send to the last pending entry, s.
    pub seconds: f64,
    /// Wall time per message, ms.
    pub ms_per_message: f64,
    /// Wall time per recipient, µs.
    pub us_per_recipient: f64,
    /// The process's CPU time per message (user + system), ms.
    pub cpu_ms_per_message: f64,
}

/// The sequencer's sends per second with the notifier on and off.
#[derive(Clone, Debug, Serialize)]
pub struct SequencerReport {
    /// Each run with notifications on, sends/s.
    pub on: Vec<f64>,
    /// Each run with notifications off, sends/s.
    pub off: Vec<f64>,
    /// Median on ÷ median off.
    pub ratio: f64,
    /// `@channel` messages decided for the runs with notifications on (during them and after).
    pub broadcasts_decided: u64,
    /// Per run with notifications on: the pending notifications its `@channel` messages asked
    /// for, how many were decided before it ended, and how long after its end the last was.
    #[serde(flatten)]
    pub kept_up: KeptUp,
}

/// Pushes received.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// Who sent them.
    pub sender: String,
    /// Subscribers reached (each counted once, at its first push).
    pub received: u64,
    /// Requests that lacked the encryption or VAPID headers.
    pub malformed: u64,
    /// From the first to the last, s.
    pub seconds: f64,
    /// Pushes per second.
    pub per_sec: f64,
}

/// What the receiver saw: per path kind, arrival times and the subscriber's index.
#[derive(Default)]
struct Received {
    /// `(kind, index)` → when it arrived.
    got: HashMap<(String, usize), Vec<Instant>>,
    malformed: u64,
}

#[derive(Clone, Default)]
struct Receiver {
    inner: Arc<Mutex<Received>>,
}

impl Receiver {
    /// Forgets what was received.
    fn clear(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).got.clear();
    }

    /// Subscribers that got at least one push.
    fn count(&self, kind: &str) -> u64 {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.got.keys().filter(|(k, _)| k == kind).count() as u64
    }

    /// When each subscriber's first push arrived, in order.
    fn arrivals(&self, kind: &str) -> Vec<Instant> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Instant> =
            r.got.iter().filter(|((k, _), _)| k == kind).filter_map(|(_, v)| v.first().copied()).collect();
        all.sort();
        all
    }
}

async fn receive(
    State(rx): State<Receiver>,
    Path((kind, index)): Path<(String, usize)>,
    headers: HeaderMap,
) -> StatusCode {
    let now = Instant::now();
    let encrypted = headers.get("content-encoding").is_some_and(|v| v == "aes128gcm");
    let signed = headers.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|a| a.starts_with("vapid t="));
    let mut r = rx.inner.lock().unwrap_or_else(|e| e.into_inner());
    if !(encrypted && signed) {
        r.malformed += 1;
        return StatusCode::BAD_REQUEST;
    }
    r.got.entry((kind, index)).or_default().push(now);
    StatusCode::CREATED
}

/// The seeded workspace.
struct Seeded {
    admin: Actor,
    members: Vec<Actor>,
    all_hands: ChannelId,
    announce: ChannelId,
    chatter: ChannelId,
}

/// Runs the scenario and prints the report.
pub async fn run(args: NotifyArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, print_report)?;
    if report.webpush.malformed > 0 {
        bail!("{} pushes lacked their encryption or VAPID headers", report.webpush.malformed);
    }
    Ok(())
}

fn print_report(r: &NotifyReport) {
    println!("selvage loadtest notify — {} members in each broadcast channel", r.members);
    let d = &r.decision;
    println!(
        "  decision         {} @channel messages → {} pending in {:.2} s: {:.1} ms per message, {:.2} µs per recipient; \
         CPU {:.1} ms per message",
        d.messages, d.pending, d.seconds, d.ms_per_message, d.us_per_recipient, d.cpu_ms_per_message
    );
    let s = &r.sequencer;
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "  sequencer        sends/s with the notifier deciding {} @channel messages: {}; notifications off: {}; \
         median ratio {:.3}",
        s.broadcasts_decided,
        list(&s.on),
        list(&s.off),
        s.ratio
    );
    s.kept_up.print("notifications", "decided");
    let print_push = |p: &PushReport| {
        println!(
            "  web push         {:<12} {} received in {:.2} s = {:.0}/s ({} malformed)",
            p.sender, p.received, p.seconds, p.per_sec, p.malformed
        )
    };
    print_push(&r.webpush);
    match (&r.peer, &r.peer_skipped) {
        (Some(p), _) => {
            print_push(p);
            println!("  Selvage ÷ pywebpush: {:.2}×", r.webpush.per_sec / p.per_sec);
        }
        (None, Some(why)) => println!("  web push peer    skipped: {why}"),
        (None, None) => {}
    }
    println!("  mention → push   {} (delay_ms 0, tick_ms {})", r.latency, r.tick_ms);
}

/// The process's CPU time so far (user + system), s.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given, which is valid for it.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0.0;
        }
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn config(dir: &std::path::Path, notify: bool, delay_ms: u64) -> Result<OriginConfig> {
    let mut c =
        OriginConfig { listen: "127.0.0.1:0".parse()?, data_dir: dir.join("origin"), ..OriginConfig::default() };
    c.search.enabled = false;
    c.rate_limits.enabled = false;
    c.notify.enabled = notify;
    c.notify.delay_ms = delay_ms;
    c.notify.allow_internal_endpoints = true;
    c.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(c)
}

/// Runs the phases and summarises.
pub async fn measure(args: &NotifyArgs) -> Result<NotifyReport> {
    if args.members < 3 || args.broadcasts == 0 || args.senders == 0 || args.rounds == 0 {
        bail!("--members must be at least 3, --broadcasts, --senders and --rounds at least 1");
    }
    let (dir, _tempdir) = crate::report::data_dir(&args.data_dir)?;
    let hour = 3_600_000;
    let (running, shutdown) = start(config(&dir, true, hour)?).await?;
    eprintln!(
        "seeding: {} users, all members of #all-hands and #announce, each with a push subscription",
        args.members
    );
    let rx = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Router::new().route("/{kind}/{index}", post(receive)).with_state(rx.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let keys = subscription_keys()?;
    let seeded = match seed(&running.origin, args.members).await {
        Ok(seeded) => subscribe_all(&running.origin, &seeded, &base, &keys).await.map(|()| seeded),
        Err(e) => Err(e),
    };
    stop(running, shutdown).await;
    let seeded = seeded?;

    // Mention → push first, on a store not yet busy with the phases' bulk writes.
    let c = config(&dir, true, 0)?;
    let tick_ms = c.notify.tick_ms;
    let (running, shutdown) = start(c).await?;
    settle(&running.origin).await;
    let latency = latency(&running.origin, &seeded, args, &rx).await;
    stop(running, shutdown).await;
    let latency = latency?;
    rx.clear();

    let (running, shutdown) = start(config(&dir, true, hour)?).await?;
    let decision = decide(&running.origin, &seeded, args.broadcasts).await;
    stop(running, shutdown).await;
    let decision = decision?;

    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut decided = 0;
    let mut kept_up = KeptUp::default();
    for round in 0..args.rounds {
        // Off first: the last run is one with notifications on, which decides everything before
        // it ends, so the push phase starts with nothing left to decide.
        for notify in [false, true] {
            let (running, shutdown) = start(config(&dir, notify, hour)?).await?;
            if notify {
                // The messages of the run with notifications off are decided first, not during
                // this run.
                settle(&running.origin).await;
            }
            let pending_before = running.origin.metrics.notify_pending.get();
            let result = sequencer_run(&running.origin, &seeded, args, round).await;
            // Wait for the consumer to decide what was sent, so the next run starts idle.
            let broadcasts = result.as_ref().map(|r| r.1).unwrap_or(0);
            if notify {
                let expected = pending_before + broadcasts * (args.members as u64 - 1);
                let pending = || running.origin.metrics.notify_pending.get();
                kept_up.wait("pending entries", pending_before, expected, pending).await?;
                decided += broadcasts;
            }
            stop(running, shutdown).await;
            let (rate, _) = result?;
            eprintln!("  notifications {}: {rate:.0} sends/s", if notify { "on" } else { "off" });
            if notify {
                on.push(rate);
            } else {
                off.push(rate);
            }
        }
    }
    let ratio = median(&on) / median(&off);
    let sequencer = SequencerReport { on, off, ratio, broadcasts_decided: decided, kept_up };

    let (running, shutdown) = start(config(&dir, true, 1_000)?).await?;
    settle(&running.origin).await;
    rx.clear();
    let webpush = pushes(&running.origin, &seeded, &rx).await;
    stop(running, shutdown).await;
    let webpush = webpush?;

    let (peer, peer_skipped) = match &args.peer_python {
        None => (None, Some("no --peer-python given (a Python with pywebpush)".to_string())),
        Some(python) => {
            let n = (args.members - 1) as u64;
            (Some(peer(python, args.peer_threads, n, &base, &keys, &rx).await?), None)
        }
    };
    server.abort();
    Ok(NotifyReport { members: args.members, decision, sequencer, webpush, peer, peer_skipped, latency, tick_ms })
}

/// Waits until the consumer `notify` has caught up with the feed: no new pending entries for a
/// second (at most a minute).
async fn settle(origin: &Origin) {
    let started = Instant::now();
    let (mut seen, mut since) = (origin.metrics.notify_pending.get(), Instant::now());
    while since.elapsed() < Duration::from_secs(1) && started.elapsed() < STALLED {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = origin.metrics.notify_pending.get();
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
    }
}

async fn seed(origin: &Arc<Origin>, members: usize) -> Result<Seeded> {
    let (_, admin) = origin.create_workspace("notify loadtest", "admin", "Admin").await?;
    let users: Vec<Actor> = stream::iter(1..members)
        .map(|u| {
            let (origin, admin) = (origin.clone(), admin.clone());
            async move { origin.create_user(&admin, &format!("member{u}"), &format!("Member {u}")).await }
        })
        .buffered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let caller = accounts::authenticate(&origin.store, admin.token()).await?;
    let all_hands = origin.create_channel(&admin, "all-hands", false).await?.id;
    let announce = origin.create_channel(&admin, "announce", false).await?.id;
    let chatter = origin.create_channel(&admin, "chatter", false).await?.id;
    let joins = users.iter().flat_map(|u| [(all_hands.clone(), u), (announce.clone(), u)]);
    stream::iter(joins)
        .map(|(c, u)| {
            let (origin, caller) = (origin.clone(), caller.clone());
            async move { selvage_origin::channels::add_member(&origin.store, &caller, &c, &u.user().id).await }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    selvage_origin::channels::add_member(&origin.store, &caller, &chatter, &users[0].user().id).await?;
    Ok(Seeded { admin, members: users, all_hands, announce, chatter })
}

async fn decide(origin: &Arc<Origin>, seeded: &Seeded, broadcasts: usize) -> Result<DecisionReport> {
    eprintln!("decision: {broadcasts} @channel messages to {} members", seeded.members.len() + 1);
    let before = origin.metrics.notify_pending.get();
    let expected = before + (broadcasts * seeded.members.len()) as u64;
    let (cpu, started) = (cpu_seconds(), Instant::now());
    for i in 0..broadcasts {
        let text = format!("@channel all hands at {i} o'clock");
        origin.send(&seeded.admin, &seeded.all_hands, &text, format!("broadcast-{i}")).await?;
    }
    wait_for("pending entries", expected, || origin.metrics.notify_pending.get()).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let pending = origin.metrics.notify_pending.get() - before;
    Ok(DecisionReport {
        messages: broadcasts,
        pending,
        seconds,
        ms_per_message: seconds * 1000.0 / broadcasts as f64,
        us_per_recipient: seconds * 1e6 / pending as f64,
        cpu_ms_per_message: cpu * 1000.0 / broadcasts as f64,
    })
}

/// One sequencer run; answers its sends per second and the `@channel` messages sent meanwhile.
async fn sequencer_run(origin: &Arc<Origin>, seeded: &Seeded, args: &NotifyArgs, round: usize) -> Result<(f64, u64)> {
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let author = seeded.members[0].clone();
    let mut tasks = Vec::new();
    let tag = format!("r{round}-{}", rand::random::<u32>());
    for s in 0..args.senders {
        let (origin, stop, sent, failed, author, chatter, tag) = (
            origin.clone(),
            stop.clone(),
            sent.clone(),
            failed.clone(),
            author.clone(),
            seeded.chatter.clone(),
            tag.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.is_cancelled() {
                i += 1;
                match origin.send(&author, &chatter, "a plain message", format!("{tag}-{s}-{i}")).await {
                    Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let broadcaster = {
        let (origin, stop, admin, channel, every, tag) = (
            origin.clone(),
            stop.clone(),
            seeded.admin.clone(),
            seeded.all_hands.clone(),
            args.broadcast_every,
            tag.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return n,
                    _ = tick.tick() => {}
                }
                let text = format!("@channel update {n}");
                if origin.send(&admin, &channel, &text, format!("{tag}-b{n}")).await.is_ok() {
                    n += 1;
                }
            }
        })
    };
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    stop.cancel();
    let seconds = started.elapsed().as_secs_f64();
    let total = sent.load(Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let broadcasts = broadcaster.await?;
    if failed.load(Ordering::Relaxed) > 0 {
        bail!("{} sends failed", failed.load(Ordering::Relaxed));
    }
    Ok((total as f64 / seconds, broadcasts))
}

/// A browser's subscription keys: a P-256 public key (uncompressed) and an auth secret, both
/// base64url; every subscriber uses the same (their endpoints differ).
struct Keys {
    p256dh: String,
    auth: String,
}

fn subscription_keys() -> Result<Keys> {
    let rng = ring::rand::SystemRandom::new();
    let private = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng)
        .map_err(|_| anyhow::anyhow!("cannot make a P-256 key"))?;
    let public = private.compute_public_key().map_err(|_| anyhow::anyhow!("cannot compute a public key"))?;
    let mut auth = [0u8; 16];
    ring::rand::SecureRandom::fill(&rng, &mut auth).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(Keys { p256dh: b64.encode(public.as_ref()), auth: b64.encode(auth) })
}

async fn subscribe_all(origin: &Arc<Origin>, seeded: &Seeded, base: &str, keys: &Keys) -> Result<()> {
    let notify = origin.notify.as_ref().context("the origin started without notifications")?;
    stream::iter(seeded.members.iter().enumerate())
        .map(|(i, m)| {
            let sub = PushSubscriptionJson {
                endpoint: format!("{base}/push/{i}"),
                keys: PushKeys { p256dh: keys.p256dh.clone(), auth: keys.auth.clone() },
            };
            async move {
                let caller = accounts::authenticate(&origin.store, m.token()).await?;
                notify.subscribe(&origin.store, &caller, &sub).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(())
}

async fn pushes(origin: &Arc<Origin>, seeded: &Seeded, rx: &Receiver) -> Result<PushReport> {
    eprintln!("web push: one @channel to {} subscribed members", seeded.members.len());
    origin.send(&seeded.admin, &seeded.announce, "@channel the office is closed tomorrow", "announce-1").await?;
    let n = seeded.members.len() as u64;
    wait_for("pushes received", n, || rx.count("push")).await?;
    let arrivals = rx.arrivals("push");
    let malformed = rx.inner.lock().unwrap_or_else(|e| e.into_inner()).malformed;
    Ok(summarise("Selvage", &arrivals, malformed))
}

fn summarise(sender: &str, arrivals: &[Instant], malformed: u64) -> PushReport {
    let seconds = match (arrivals.first(), arrivals.last()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    let received = arrivals.len() as u64;
    PushReport {
        sender: sender.into(),
        received,
        malformed,
        seconds,
        per_sec: if seconds > 0.0 { (received.saturating_sub(1)) as f64 / seconds } else { 0.0 },
    }
}

async fn peer(
    python: &std::path::Path,
    threads: usize,
    n: u64,
    base: &str,
    keys: &Keys,
    rx: &Receiver,
) -> Result<PushReport> {
    let script = std::env::var("SELVAGE_WEBPUSH_PEER_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/webpush_peer.py"));
    eprintln!("web push peer: pywebpush sends {n} pushes, {threads} at once");
    let status = tokio::process::Command::new(python)
        .arg(&script)
        .args(["--base", &format!("{base}/peer"), "--count", &n.to_string(), "--threads", &threads.to_string()])
        .args(["--p256dh", &keys.p256dh, "--auth", &keys.auth])
        .status()
        .await
        .with_context(|| format!("cannot run {} {}", python.display(), script.display()))?;
    if !status.success() {
        bail!("the pywebpush peer failed: {status}");
    }
    wait_for("peer pushes received", n, || rx.count("peer")).await?;
    let arrivals = rx.arrivals("peer");
    let malformed = rx.inner.lock().unwrap_or_else(|e| e.into_inner()).malformed;
    Ok(summarise("pywebpush", &arrivals, malformed))
}

async fn latency(origin: &Arc<Origin>, seeded: &Seeded, args: &NotifyArgs, rx: &Receiver) -> Result<Latency> {
    eprintln!("mention → push: {} mentions, {:?} apart, notify.delay_ms = 0", args.samples, args.sample_every);
    let mut histogram = latency_histogram();
    let mut sent = Vec::new();
    for k in 0..args.samples {
        let i = k % seeded.members.len();
        let member = &seeded.members[i];
        let before =
            rx.inner.lock().unwrap_or_else(|e| e.into_inner()).got.get(&("push".to_string(), i)).map_or(0, Vec::len);
        let text = format!("<@{}> a question for you ({k})", member.user().id);
        let s = origin.send(&seeded.admin, &seeded.announce, &text, format!("mention-{k}")).await?;
        let wall = std::time::SystemTime::now();
        sent.push((i, before, s.message.ts, wall, Instant::now()));
        tokio::time::sleep(args.sample_every).await;
    }
    for (i, before, ts, wall, at) in sent {
        let deadline = Instant::now() + Duration::from_secs(30);
        let arrived = loop {
            let got = rx.inner.lock().unwrap_or_else(|e| e.into_inner()).got.get(&("push".to_string(), i)).cloned();
            if let Some(t) = got.and_then(|v| v.get(before).copied()) {
                break t;
            }
            if Instant::now() > deadline {
                bail!("a mention of member {i} was not pushed within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // From the message's timestamp: the send's own time back to `ts`, plus after it.
        let sent_ms = wall.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(ts);
        let lead_us = (sent_ms - ts).max(0) as u64 * 1000;
        let after_us = arrived.saturating_duration_since(at).as_micros() as u64;
        histogram.record((lead_us + after_us).max(1))?;
    }
    Ok(Latency::of(&histogram))
}
