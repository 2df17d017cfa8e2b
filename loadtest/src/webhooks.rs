//! The `webhooks` scenario: what event webhooks cost (ARCHITECTURE §8 "Apps"), on an origin in
//! this process (embedded store, fsync on, in a temporary directory) with a receiver in this
//! process too (an HTTP server on loopback with one path per endpoint, which counts each
//! request and checks that it carries its Standard Webhooks headers).
//!
//! 1. **Seed.** A workspace, `#hooks`, and `--endpoints` endpoints: apps of 20 endpoints each
//!    (an app's most), every app's bot user in `#hooks`, every endpoint asking for `message`.
//! 2. **Deliveries per second.** `--events` messages posted to `#hooks` with the dispatcher
//!    held back (`apps.tick_ms` an hour), then an origin restarted with it on: from its start
//!    to the last of `--events` × `--endpoints` deliveries received. Each delivery is a lease
//!    on its endpoint in the store, an HMAC-SHA256 signature, the request, and a transaction
//!    that removes it from the queue and logs it.
//! 3. **Event → delivered.** `--rate` messages a second to `#hooks` for `--latency-duration`,
//!    each delivered to every endpoint: from the message's timestamp to each arrival.
//! 4. **Signing.** The signature of one delivery (a typical body), timed over many.
//! 5. **The sequencer while deliveries run.** `--senders` closed-loop senders post plain
//!    messages in `#chatter` (no bot there) for `--duration` while `--background-rate`
//!    messages a second go to `#hooks`, once with webhooks on and once off on the same data, in
//!    turns, `--rounds` times.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use clap::Args;
use selvage_origin::{accounts, apps, Actor, Origin, OriginConfig};
use selvage_shared::{ChannelId, Scope};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    in_process::{median, start, stop, wait_for, KeptUp},
    report::{latency_histogram, Latency},
    sends::parse_duration,
};

/// Endpoints per app (an app's most).
const PER_APP: usize = 20;
/// The dispatcher's tick: the default (`apps.tick_ms`).
const TICK_MS: u64 = 200;

/// `selvage loadtest webhooks` arguments.
#[derive(Args, Clone, Debug)]
pub struct WebhooksArgs {
    /// Endpoints, each getting every message of `#hooks`.
    #[arg(long, default_value_t = 100)]
    pub endpoints: usize,
    /// Messages queued for the deliveries-per-second phase (each to every endpoint).
    #[arg(long, default_value_t = 500)]
    pub events: usize,
    /// Messages a second to `#hooks` in the latency phase.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
    /// How long the latency phase lasts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub latency_duration: Duration,
    /// Closed-loop senders in `#chatter` while the sequencer's rate is measured.
    #[arg(long, default_value_t = 64)]
    pub senders: usize,
    /// How long each sequencer run lasts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Messages a second to `#hooks` (so deliveries to every endpoint) during each sequencer run.
    #[arg(long, default_value_t = 50)]
    pub background_rate: u64,
    /// Sequencer runs with webhooks on and off, in turns, each.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// How much lower than the origin's the CPU priority of the services on the feed and of
    /// the receiver is (the origin's `consumers.nice`, 0–19).
    #[arg(long, default_value_t = selvage_origin::config::ConsumersConfig::default().nice)]
    pub nice: i32,
    /// Data directory of the origin [default: a temporary directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct WebhooksReport {
    pub endpoints: usize,
    pub throughput: Throughput,
    pub latency: Latency,
    /// Deliveries received in the latency phase (messages × endpoints expected).
    pub latency_deliveries: u64,
    pub signing: Signing,
    pub sequencer: SequencerReport,
}

/// Deliveries per second.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub deliveries: u64,
    pub seconds: f64,
    pub per_sec: f64,
    /// Requests without their Standard Webhooks headers.
    pub malformed: u64,
}

/// The cost of a signature.
#[derive(Clone, Debug, Serialize)]
pub struct Signing {
    pub body_bytes: usize,
    pub ns_per_signature: f64,
}

/// The sequencer's rate with deliveries running and with webhooks off.
#[derive(Clone, Debug, Serialize)]
pub struct SequencerReport {
    pub on: Vec<f64>,
    pub off: Vec<f64>,
    pub ratio: f64,
    /// Deliveries made for the runs with webhooks on (during them and after).
    pub deliveries: u64,
    /// Per run with webhooks on: deliveries its `#hooks` messages asked for, how many of them
    /// arrived before it ended, and how long after its end the last one arrived.
    #[serde(flatten)]
    pub kept_up: KeptUp,
}

/// What the receiver saw.
#[derive(Default)]
struct Receiver {
    received: AtomicU64,
    malformed: AtomicU64,
    /// Microseconds from each message's timestamp to its arrival, while `timing`.
    latencies: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    Path(_n): Path<usize>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let ok = ["webhook-id", "webhook-timestamp", "webhook-signature"].iter().all(|h| headers.contains_key(*h));
    if !ok {
        rx.malformed.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(h) = rx.latencies.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let ts =
            serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["data"]["event"]["ts"].as_i64());
        if let Some(ts) = ts {
            let us = (now_ms() - ts).max(0) as u64 * 1000;
            let _ = h.record(us.max(1));
        }
    }
    rx.received.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

struct Seeded {
    admin: Actor,
    hooks: ChannelId,
    chatter: ChannelId,
}

fn config(dir: &std::path::Path, webhooks: bool, tick_ms: u64, nice: i32) -> Result<OriginConfig> {
    let mut c =
        OriginConfig { listen: "127.0.0.1:0".parse()?, data_dir: dir.join("origin"), ..OriginConfig::default() };
    c.search.enabled = false;
    c.notify.enabled = false;
    c.rate_limits.enabled = false;
    c.apps.webhooks = webhooks;
    c.consumers.nice = nice;
    c.apps.tick_ms = tick_ms;
    c.apps.allow_networks = vec!["127.0.0.1/32".into()];
    c.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(c)
}

async fn seed(origin: &Arc<Origin>, endpoints: usize, base: &str) -> Result<Seeded> {
    let (_, admin) = origin.create_workspace("webhooks loadtest", "admin", "Admin").await?;
    let caller = accounts::authenticate(&origin.store, admin.token()).await?;
    let hooks = origin.create_channel(&admin, "hooks", false).await?.id;
    let chatter = origin.create_channel(&admin, "chatter", false).await?.id;
    for a in 0..endpoints.div_ceil(PER_APP) {
        let app = apps::create(
            &origin.store,
            &caller,
            &format!("Listener {a}"),
            &format!("listener{a}"),
            &[Scope::Events],
            0,
        )
        .await?;
        selvage_origin::channels::add_member(&origin.store, &caller, &hooks, &app.bot_user.id).await?;
        for e in (a * PER_APP)..((a + 1) * PER_APP).min(endpoints) {
            let url = format!("{base}/hook/{e}");
            origin.webhooks.create(&caller, &origin.feed, &app.app.id, &url, &["message".to_string()]).await?;
        }
    }
    Ok(Seeded { admin, hooks, chatter })
}

/// Runs the phases and summarises.
pub async fn measure(args: &WebhooksArgs) -> Result<WebhooksReport> {
    if args.endpoints == 0 || args.events == 0 || args.senders == 0 || args.rounds == 0 || args.rate == 0 {
        bail!("--endpoints, --events, --rate, --senders and --rounds must be at least 1");
    }
    let (dir, _tempdir) = crate::report::data_dir(&args.data_dir)?;
    let rx = Arc::new(Receiver::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Router::new().route("/hook/{n}", post(receive)).with_state(rx.clone());
    // The receiver stands for the apps' servers, which run on machines of their own: here it
    // has a runtime of its own at the consumers' priority, so that it takes from the sequencer
    // no more than the deliveries it answers do.
    let elsewhere = selvage_origin::background::Background::new(1, args.nice)?;
    let server =
        elsewhere.handle().spawn(async move { axum::serve(tokio::net::TcpListener::from_std(listener)?, app).await });
    let hour = 3_600_000;

    // Seed, and queue the throughput phase's events with the dispatcher held back.
    let (running, shutdown) = start(config(&dir, true, hour, args.nice)?).await?;
    eprintln!(
        "seeding: {} endpoints on {} apps, every bot in #hooks",
        args.endpoints,
        args.endpoints.div_ceil(PER_APP)
    );
    let seeded = seed(&running.origin, args.endpoints, &base).await;
    let queued = match &seeded {
        Ok(s) => queue(&running.origin, s, args).await,
        Err(_) => Ok(()),
    };
    stop(running, shutdown).await;
    let seeded = seeded?;
    queued?;

    let expected = (args.events * args.endpoints) as u64;
    eprintln!("deliveries: {expected} queued ({} events × {} endpoints)", args.events, args.endpoints);
    let (running, shutdown) = start(config(&dir, true, TICK_MS, args.nice)?).await?;
    let started = Instant::now();
    let waited = wait_for("deliveries", expected, || rx.received.load(Ordering::Relaxed)).await;
    let seconds = started.elapsed().as_secs_f64();
    waited?;
    let throughput = Throughput {
        deliveries: expected,
        seconds,
        per_sec: expected as f64 / seconds,
        malformed: rx.malformed.load(Ordering::Relaxed),
    };

    eprintln!("event → delivered: {} messages/s for {:?}", args.rate, args.latency_duration);
    *rx.latencies.lock().unwrap_or_else(|e| e.into_inner()) = Some(latency_histogram());
    let before = rx.received.load(Ordering::Relaxed);
    let sent = paced(&running.origin, &seeded.admin, &seeded.hooks, args.rate, args.latency_duration, "lat").await?;
    let target = before + sent * args.endpoints as u64;
    wait_for("timed deliveries", target, || rx.received.load(Ordering::Relaxed)).await?;
    let histogram = rx.latencies.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(latency_histogram);
    let latency = Latency::of(&histogram);
    stop(running, shutdown).await;

    let signing = signing();

    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut deliveries = 0;
    let mut kept_up = KeptUp::default();
    for round in 0..args.rounds {
        for webhooks in [false, true] {
            let (running, shutdown) = start(config(&dir, webhooks, TICK_MS, args.nice)?).await?;
            if webhooks {
                // The consumer first catches up with the run with webhooks off, and delivers what
                // it queued then, before this run starts.
                settle(&running.origin, &rx).await;
            }
            let before = rx.received.load(Ordering::Relaxed);
            eprintln!("  sequencer run, webhooks {}, for {:?}", if webhooks { "on" } else { "off" }, args.duration);
            let result = sequencer_run(&running.origin, &seeded, args, round, webhooks).await;
            if webhooks {
                let sent = result.as_ref().map(|r| r.1).unwrap_or(0);
                // What the run queued is delivered before the next one starts.
                let target = before + sent * args.endpoints as u64;
                let received = || rx.received.load(Ordering::Relaxed);
                kept_up.wait("deliveries of the run", before, target, received).await?;
                deliveries += rx.received.load(Ordering::Relaxed) - before;
            }
            stop(running, shutdown).await;
            let (rate, _) = result?;
            eprintln!("  webhooks {}: {rate:.0} sends/s", if webhooks { "on" } else { "off" });
            if webhooks {
                on.push(rate);
            } else {
                off.push(rate);
            }
        }
    }
    let ratio = median(&on) / median(&off);
    server.abort();
    Ok(WebhooksReport {
        endpoints: args.endpoints,
        throughput,
        latency,
        latency_deliveries: histogram.len(),
        signing,
        sequencer: SequencerReport { on, off, ratio, deliveries, kept_up },
    })
}

/// Waits until the consumer `hooks` has caught up with the feed and the deliveries it queued
/// have arrived: neither moves for a second (at most a minute).
async fn settle(origin: &Origin, rx: &Receiver) {
    let seen = || {
        let handled = origin.metrics.consumer_events.with_label_values(&[apps::webhooks::NAME]).get();
        (handled, rx.received.load(Ordering::Relaxed))
    };
    let started = Instant::now();
    let (mut last, mut since) = (seen(), Instant::now());
    while since.elapsed() < Duration::from_secs(1) && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = seen();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// Posts the throughput phase's messages to `#hooks` and waits until the consumer has queued
/// them for every endpoint.
async fn queue(origin: &Arc<Origin>, s: &Seeded, args: &WebhooksArgs) -> Result<()> {
    let before = origin.metrics.webhook_queued.get();
    for i in 0..args.events {
        origin.send(&s.admin, &s.hooks, &format!("event {i}: the build is green"), format!("q{i}")).await?;
    }
    let expected = before + (args.events * args.endpoints) as u64;
    wait_for("queued deliveries", expected, || origin.metrics.webhook_queued.get()).await
}

/// Posts `rate` messages a second to `channel` for `duration`; answers how many.
async fn paced(
    origin: &Arc<Origin>,
    author: &Actor,
    channel: &ChannelId,
    rate: u64,
    duration: Duration,
    tag: &str,
) -> Result<u64> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let started = Instant::now();
    let mut n = 0u64;
    let tag = format!("{tag}-{}", rand::random::<u32>());
    while started.elapsed() < duration {
        tick.tick().await;
        origin.send(author, channel, &format!("paced {n}: deploy finished"), format!("{tag}-{n}")).await?;
        n += 1;
    }
    Ok(n)
}

/// One sequencer run; answers its sends per second and the messages sent to `#hooks`.
async fn sequencer_run(
    origin: &Arc<Origin>,
    s: &Seeded,
    args: &WebhooksArgs,
    round: usize,
    on: bool,
) -> Result<(f64, u64)> {
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tag = format!("r{round}{on}-{}", rand::random::<u32>());
    let mut tasks = Vec::new();
    for i in 0..args.senders {
        let (origin, stop, sent, failed, admin, chatter, tag) = (
            origin.clone(),
            stop.clone(),
            sent.clone(),
            failed.clone(),
            s.admin.clone(),
            s.chatter.clone(),
            tag.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                match origin.send(&admin, &chatter, "a plain message", format!("{tag}-{i}-{n}")).await {
                    Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let background = {
        let (origin, admin, hooks, rate, duration, tag) =
            (origin.clone(), s.admin.clone(), s.hooks.clone(), args.background_rate, args.duration, tag.clone());
        tokio::spawn(async move { paced(&origin, &admin, &hooks, rate, duration, &format!("{tag}-bg")).await })
    };
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    stop.cancel();
    let seconds = started.elapsed().as_secs_f64();
    let total = sent.load(Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let hooks_sent = background.await??;
    if failed.load(Ordering::Relaxed) > 0 {
        bail!("{} sends failed", failed.load(Ordering::Relaxed));
    }
    Ok((total as f64 / seconds, hooks_sent))
}

/// The time of one signature of a typical delivery (a message event of ~400 bytes).
fn signing() -> Signing {
    let body = serde_json::to_vec(&serde_json::json!({
        "type": "message",
        "timestamp": "2026-12-07T07:19:12.345Z",
        "data": {
            "workspace": "W0123456789AB", "app": "A0123456789AB", "cursor": "0000000000000001c0de0000",
            "event": { "type": "message", "channel": "C0123456789AB", "seq": 123456, "user": "U0123456789AB",
                "ts": 1_796_626_480_895i64, "client_msg_id": "m14225155260226356369", "deleted": false,
                "text": "deploy of selvage 1.4.2 to eu-west finished in 3m12s: all checks green" },
        },
    }))
    .unwrap_or_default();
    let secrets = [apps::webhooks::Secret { key: vec![7; 24], until: None }];
    let n = 200_000;
    let started = Instant::now();
    let mut len = 0;
    for i in 0..n {
        len += apps::webhooks::sign(&secrets, 0, "evt_0000000000000001c0de0000", &i.to_string(), &body).len();
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    std::hint::black_box(len);
    Signing { body_bytes: body.len(), ns_per_signature: ns }
}

/// Runs the scenario and prints its report.
pub async fn run(args: WebhooksArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, print_report)?;
    if report.throughput.malformed > 0 {
        bail!("{} deliveries lacked their Standard Webhooks headers", report.throughput.malformed);
    }
    Ok(())
}

fn print_report(r: &WebhooksReport) {
    println!("selvage loadtest webhooks — {} endpoints", r.endpoints);
    let t = &r.throughput;
    println!("  deliveries       {} in {:.2} s: {:.0}/s", t.deliveries, t.seconds, t.per_sec);
    println!("  event → delivered {} ({} deliveries)", r.latency, r.latency_deliveries);
    println!(
        "  signing          {:.0} ns per signature of a {}-byte body",
        r.signing.ns_per_signature, r.signing.body_bytes
    );
    let s = &r.sequencer;
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "  sequencer        sends/s with {} deliveries running: {}; webhooks off: {}; median ratio {:.3}",
        s.deliveries,
        list(&s.on),
        list(&s.off),
        s.ratio
    );
    s.kept_up.print("deliveries", "arrived");
}
