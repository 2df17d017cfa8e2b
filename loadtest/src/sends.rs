//! The `sends` scenario: how many durable, acknowledged sends an origin takes, and how fast it
//! acknowledges them.
//!
//! It seeds a workspace with `--channels` channels, then either
//! - **closed loop** (no `--rate`): `--concurrency` senders each send, wait for the ack, and send
//!   again — the maximum throughput; or
//! - **open loop** (`--rate N`): sends start on a fixed schedule of N per second whether or not
//!   earlier ones were acknowledged, and latency is measured from the *scheduled* start, so a
//!   stall shows up in the percentiles instead of hiding (no coordinated omission).
//!
//! Every ack's seq is kept and checked at the end: within each channel the seqs acknowledged
//! must be distinct (the sequencer's promise), or the run fails.
//!
//! Targets: `--target URL` sends over HTTP to a running origin (seeding needs its operator
//! key); `--in-process` starts an origin inside this process on a temporary embedded store and
//! calls its sequencer directly, measuring sequencer and storage without HTTP.

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
use clap::Args;
use hdrhistogram::Histogram;
use selvage_origin::{Actor, Origin, OriginConfig};
use selvage_shared::ChannelId;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::report::{latency_histogram, Latency};

/// `selvage loadtest sends` arguments.
#[derive(Args, Clone)]
pub struct SendsArgs {
    /// Origin base URL to send to over HTTP, e.g. http://127.0.0.1:7700.
    #[arg(long, conflicts_with = "in_process")]
    pub target: Option<String>,
    /// The origin's operator key, to create the test workspace.
    #[arg(long, env = "SELVAGE_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<String>,
    /// Start an origin in this process (embedded store, fsync on) and send through its
    /// in-process entry point, straight to the sequencer: measures sequencing and storage
    /// without HTTP.
    #[arg(long)]
    pub in_process: bool,
    /// Data directory for --in-process [default: a temporary directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// For --in-process: the embedded engine's memtable flush interval in ms (the origin's
    /// `embedded.flush_interval_ms`), with a memtable large enough to wait for it [default: the
    /// origin's default].
    #[arg(long, requires = "in_process")]
    pub flush_interval_ms: Option<u64>,
    /// For --in-process: the sequencer's committer shards (the origin's `sequencer.shards`)
    /// [default: the origin's default].
    #[arg(long, requires = "in_process")]
    pub shards: Option<usize>,
    /// Channels to spread the sends over (1 = one hot channel).
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Senders in flight at once (closed loop), or the cap on sends in flight (open loop).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// How long to send for, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Open loop: start this many sends per second on a fixed schedule.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    pub text_bytes: usize,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct SendsReport {
    /// `http` or `in-process`.
    pub target: String,
    /// `closed-loop` or `open-loop`.
    pub mode: String,
    /// Channels used.
    pub channels: usize,
    /// Concurrency (closed loop) or in-flight cap (open loop).
    pub concurrency: usize,
    /// Scheduled rate (open loop).
    pub rate: Option<u64>,
    /// Seconds of sending.
    pub seconds: f64,
    /// Sends acknowledged.
    pub acked: u64,
    /// Acknowledged sends per second.
    pub acked_per_sec: f64,
    /// Open loop: scheduled sends not started because the in-flight cap was reached.
    pub skipped: u64,
    /// Failed sends by error code.
    pub errors: HashMap<String, u64>,
    /// Send → ack latency.
    pub ack_latency: Latency,
    /// Channels whose acknowledged seqs were not all distinct (must be 0).
    pub seq_violations: u64,
}

enum Target {
    Http { client: reqwest::Client, base: String, token: String },
    InProcess { origin: Arc<Origin>, actor: Actor },
}

impl Target {
    async fn send(&self, channel: &ChannelId, client_msg_id: String, text: &str) -> Result<u64, String> {
        match self {
            Target::Http { client, base, token } => {
                let url = format!("{base}/v1/channels/{channel}/messages");
                let body = json!({ "text": text, "client_msg_id": client_msg_id });
                let response =
                    client.post(url).bearer_auth(token).json(&body).send().await.map_err(|_| "connect".to_string())?;
                let status = response.status();
                let value: serde_json::Value =
                    response.json().await.map_err(|_| format!("http_{}", status.as_u16()))?;
                if status.is_success() {
                    value["seq"].as_u64().ok_or_else(|| "no_seq".into())
                } else {
                    Err(value["error"]["code"].as_str().unwrap_or("unknown").to_string())
                }
            }
            Target::InProcess { origin, actor } => origin
                .send(actor, channel, text, client_msg_id)
                .await
                .map(|s| s.message.seq)
                .map_err(|e| e.code().as_str().to_string()),
        }
    }
}

async fn seed_http(base: &str, operator_key: &str, n: usize) -> Result<(reqwest::Client, String, Vec<ChannelId>)> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(4096).build()?;
    let run = std::process::id();
    let response = client
        .post(format!("{base}/v1/workspaces"))
        .bearer_auth(operator_key)
        .json(&json!({ "name": format!("loadtest {run}"), "admin_handle": "loadtest" }))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let value: serde_json::Value = response.json().await?;
    if !status.is_success() {
        bail!("creating the test workspace failed ({status}): {value}");
    }
    let token = value["token"].as_str().context("no token in the workspace response")?.to_string();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let response = client
            .post(format!("{base}/v1/channels"))
            .bearer_auth(&token)
            .json(&json!({ "name": format!("lt-{i}") }))
            .send()
            .await?;
        let value: serde_json::Value = response.json().await?;
        let id = value["channel"]["id"].as_str().with_context(|| format!("creating a channel failed: {value}"))?;
        ids.push(ChannelId::new_unchecked(id));
    }
    Ok((client, token, ids))
}

async fn seed_in_process(origin: &Arc<Origin>, n: usize) -> Result<(Actor, Vec<ChannelId>)> {
    let (_, admin) = origin.create_workspace("loadtest", "loadtest", "Load test").await?;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(origin.create_channel(&admin, &format!("lt-{i}"), false).await?.id);
    }
    Ok((admin, ids))
}

struct Shared {
    target: Target,
    channels: Vec<ChannelId>,
    text: String,
    next: AtomicU64,
    acked: AtomicU64,
    errors: Mutex<HashMap<String, u64>>,
    seqs: Mutex<Vec<Vec<u64>>>,
    run_id: u64,
}

impl Shared {
    /// One send: picks the next channel round-robin and records the outcome.
    async fn one(&self) -> bool {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let ci = (n % self.channels.len() as u64) as usize;
        let id = format!("{:x}-{n}", self.run_id);
        match self.target.send(&self.channels[ci], id, &self.text).await {
            Ok(seq) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut seqs) = self.seqs.lock() {
                    seqs[ci].push(seq);
                }
                true
            }
            Err(code) => {
                if let Ok(mut errors) = self.errors.lock() {
                    *errors.entry(code).or_default() += 1;
                }
                false
            }
        }
    }
}

/// Runs the scenario and prints the report.
pub async fn run(args: SendsArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, print_report)?;
    if report.seq_violations > 0 {
        bail!("{} channels acknowledged the same seq twice", report.seq_violations);
    }
    Ok(())
}

fn print_report(r: &SendsReport) {
    println!(
        "selvage loadtest sends — {} {}, {} channels, concurrency {}",
        r.target, r.mode, r.channels, r.concurrency
    );
    if let Some(rate) = r.rate {
        println!("  scheduled rate   {rate}/s");
    }
    println!("  acked            {} in {:.1} s = {:.0} sends/s", r.acked, r.seconds, r.acked_per_sec);
    println!("  ack latency      {}", r.ack_latency);
    if r.skipped > 0 {
        println!("  skipped          {} (in-flight cap reached: the target fell behind the schedule)", r.skipped);
    }
    if !r.errors.is_empty() {
        println!("  errors           {:?}", r.errors);
    }
    println!(
        "  seq check        {}",
        if r.seq_violations == 0 {
            "ok: every ack got a distinct seq in its channel".to_string()
        } else {
            format!("{} channels FAILED", r.seq_violations)
        }
    );
}

/// Seeds, sends for the configured duration, and summarises.
pub async fn measure(args: &SendsArgs) -> Result<SendsReport> {
    if args.channels == 0 || args.concurrency == 0 {
        bail!("--channels and --concurrency must be at least 1");
    }
    let shutdown = CancellationToken::new();
    let mut _tempdir = None;
    let mut running = None;
    let (target, channel_ids, target_name) = if args.in_process {
        let dir = match &args.data_dir {
            Some(d) => d.clone(),
            None => {
                let t = tempfile::tempdir()?;
                let p = t.path().to_path_buf();
                _tempdir = Some(t);
                p
            }
        };
        let mut config = OriginConfig { listen: "127.0.0.1:0".parse()?, data_dir: dir, ..OriginConfig::default() };
        // The core's durable sends, without the search indexer (measured by `loadtest search`).
        config.search.enabled = false;
        config.notify.enabled = false;
        config.rate_limits.enabled = false;
        if let Some(ms) = args.flush_interval_ms {
            config.embedded.flush_interval_ms = ms;
            // Scaled with it, so that the interval, not the memtable's size, decides.
            config.embedded.memtable_entries = config.embedded.memtable_entries.max(ms as usize * 400);
            config.embedded.memtable_mib = config.embedded.memtable_mib.max(ms as usize / 4);
        }
        if let Some(shards) = args.shards {
            config.sequencer.shards = shards;
        }
        config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let r = selvage_origin::start(config, shutdown.clone()).await?;
        let origin = r.origin.clone();
        running = Some(r);
        let (actor, ids) = seed_in_process(&origin, args.channels).await?;
        (Target::InProcess { origin, actor }, ids, "in-process")
    } else {
        let base = args.target.clone().context("give --target URL or --in-process")?;
        let base = base.trim_end_matches('/').to_string();
        let key = args
            .operator_key
            .clone()
            .context("--operator-key (or SELVAGE_OPERATOR_KEY) is needed to seed a workspace")?;
        let (client, token, ids) = seed_http(&base, &key, args.channels).await?;
        (Target::Http { client, base, token }, ids, "http")
    };
    let shared = Arc::new(Shared {
        target,
        text: "x".repeat(args.text_bytes.max(1)),
        seqs: Mutex::new(vec![Vec::new(); channel_ids.len()]),
        channels: channel_ids,
        next: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: Mutex::new(HashMap::new()),
        run_id: (std::process::id() as u64) << 20 ^ (selvage_origin::now_ms() as u64 & 0xfffff),
    });

    let started = Instant::now();
    let deadline = started + args.duration;
    let (histogram, skipped) = match args.rate {
        None => closed_loop(&shared, args.concurrency, deadline).await,
        Some(rate) => open_loop(&shared, rate, args.concurrency, deadline).await?,
    };
    let seconds = started.elapsed().as_secs_f64();

    let acked = shared.acked.load(Ordering::Relaxed);
    let seq_violations = shared
        .seqs
        .lock()
        .map(|seqs| {
            seqs.iter()
                .filter(|s| {
                    let mut v = (*s).clone();
                    v.sort_unstable();
                    v.windows(2).any(|w| w[0] == w[1])
                })
                .count() as u64
        })
        .unwrap_or(0);
    let errors = shared.errors.lock().map(|e| e.clone()).unwrap_or_default();
    shutdown.cancel();
    if let Some(r) = running {
        r.wait().await;
    }
    Ok(SendsReport {
        target: target_name.into(),
        mode: if args.rate.is_some() { "open-loop" } else { "closed-loop" }.into(),
        channels: args.channels,
        concurrency: args.concurrency,
        rate: args.rate,
        seconds,
        acked,
        acked_per_sec: acked as f64 / seconds,
        skipped,
        errors,
        ack_latency: Latency::of(&histogram),
        seq_violations,
    })
}

/// Histograms the closed loop's senders share.
const HISTOGRAM_SHARDS: usize = 16;

async fn closed_loop(shared: &Arc<Shared>, concurrency: usize, deadline: Instant) -> (Histogram<u64>, u64) {
    // A few shared histograms rather than one per sender: each is ~400 KB of counts, and
    // thousands of them (zeroed, then merged) cost the machine more than the sends they time.
    let shards: Arc<Vec<Mutex<Histogram<u64>>>> =
        Arc::new((0..HISTOGRAM_SHARDS.min(concurrency)).map(|_| Mutex::new(latency_histogram())).collect());
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let shared = shared.clone();
        let shards = shards.clone();
        tasks.push(tokio::spawn(async move {
            let shard = &shards[i % shards.len()];
            while Instant::now() < deadline {
                let t = Instant::now();
                if shared.one().await {
                    if let Ok(mut h) = shard.lock() {
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut total = latency_histogram();
    for shard in shards.iter() {
        if let Ok(h) = shard.lock() {
            let _ = total.add(&*h);
        }
    }
    (total, 0)
}

async fn open_loop(shared: &Arc<Shared>, rate: u64, cap: usize, deadline: Instant) -> Result<(Histogram<u64>, u64)> {
    if rate == 0 {
        bail!("--rate must be at least 1");
    }
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(cap));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut skipped = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u32 = 0;
    loop {
        let scheduled = start + interval * i;
        if scheduled.into_std() >= deadline {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        i += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let shared = shared.clone();
        let histogram = histogram.clone();
        tasks.spawn(async move {
            let ok = shared.one().await;
            drop(permit);
            if ok {
                let us = scheduled.elapsed().as_micros().max(1) as u64;
                if let Ok(mut h) = histogram.lock() {
                    let _ = h.record(us);
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let h = histogram.lock().map(|h| h.clone()).unwrap_or_else(|_| latency_histogram());
    Ok((h, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[tokio::test]
    async fn in_process_run_acks_distinct_seqs() {
        let args = SendsArgs {
            target: None,
            operator_key: None,
            in_process: true,
            data_dir: None,
            flush_interval_ms: None,
            shards: Some(2),
            channels: 3,
            concurrency: 8,
            duration: Duration::from_millis(500),
            rate: None,
            text_bytes: 10,
            json: true,
        };
        let report = measure(&args).await.unwrap();
        assert!(report.acked > 0, "{report:?}");
        assert_eq!(report.seq_violations, 0);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
}
