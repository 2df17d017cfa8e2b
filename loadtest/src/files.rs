//! The `files` scenario: the files service (ARCHITECTURE §8 "Files") under load, in three
//! phases, each against the same workspace:
//!
//! 1. **issue** — upload URLs handed out: `--issue-concurrency` callers each declare a small
//!    file (`POST /v1/files`), wait for the presigned URL, and declare again, for
//!    `--issue-duration` (closed loop); rate and latency.
//! 2. **events** — `complete` → `message` event: `--event-concurrency` uploaders each declare a
//!    small file, PUT it through its URL, then complete it in `#general`; a member connected to
//!    the edge over WebSocket (the client SDK) waits for the `message` event carrying the file.
//!    Latency runs from sending `complete` to the event's arrival.
//! 3. **uploads** — `--uploads` uploads of `--upload-bytes` each, `--upload-concurrency` at once
//!    (all of them by default): declare, PUT the bytes to the object store through the presigned
//!    URL, complete; end-to-end latency of each, throughput, and the origin's resident memory
//!    sampled before, during and after. File bytes never pass through the origin, so its memory
//!    should stay flat while they move.
//!
//! Every completed file must arrive as exactly one `message` event carrying it; the report counts
//! those that did not (`missing`), and the run fails when any are missing or any call failed.
//!
//! Targets: `--in-process` starts an s3local (own temporary directory), an origin with files on
//! and an edge inside this process; the origin's memory is then the whole process's, load
//! generator included. `--target EDGE --origin ORIGIN --operator-key KEY` runs against a
//! deployment (e.g. `selvage dev`); `--origin-pid` reads the origin's memory from
//! `/proc/PID/status`, else it is read from the origin's `/metrics`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use selvage_client::{Client, ConnectOptions, Inbound, Transport};
use selvage_shared::Event;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::{
    deployment::{Deployment, DeploymentArgs},
    report::{latency_histogram, Latency},
    sends::parse_duration,
};

/// Bytes of each file declared in the issue phase and uploaded in the events phase: small, so
/// the workspace quota (pending uploads count) is no limit and the phases time the origin, not
/// the byte transfer.
const SMALL_FILE_BYTES: u64 = 1024;

/// The media type every file is declared with.
const CONTENT_TYPE: &str = "application/octet-stream";

/// How long to wait after a phase for `message` events still on their way.
const EVENT_GRACE: Duration = Duration::from_secs(10);

/// How often the origin's memory is read during the uploads phase.
const RSS_INTERVAL: Duration = Duration::from_millis(200);

/// `selvage loadtest files` arguments.
#[derive(Args, Clone, Debug)]
pub struct FilesArgs {
    /// Start an S3 endpoint (s3local), an origin with files enabled and an edge inside this
    /// process, each in a temporary directory.
    #[arg(long, conflicts_with_all = ["target", "origin"])]
    pub in_process: bool,
    /// A running edge linked to the origin, e.g. http://127.0.0.1:7800 (`selvage dev` prints
    /// it): the watching member connects there.
    #[arg(long, requires = "origin")]
    pub target: Option<String>,
    /// The origin's HTTP API, e.g. http://127.0.0.1:7700; it must run with files enabled.
    #[arg(long, requires = "target")]
    pub origin: Option<String>,
    /// The origin's operator key, to create the test workspace (`selvage dev` prints one).
    #[arg(long, env = "SELVAGE_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<String>,
    /// The origin's process id, to read its resident memory from /proc/PID/status [default:
    /// `process_resident_memory_bytes` of the origin's /metrics].
    #[arg(long)]
    pub origin_pid: Option<u32>,
    /// Declarations in flight at once in the issue phase (closed loop).
    #[arg(long, default_value_t = 64)]
    pub issue_concurrency: usize,
    /// How long the issue phase runs (`10s`, `500ms`, `1m`; 0 skips it).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub issue_duration: Duration,
    /// Uploaders in the events phase, each waiting for its file's event before the next.
    #[arg(long, default_value_t = 4)]
    pub event_concurrency: usize,
    /// How long the events phase runs (0 skips it).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub event_duration: Duration,
    /// Uploads in the uploads phase (0 skips it).
    #[arg(long, default_value_t = 1000)]
    pub uploads: usize,
    /// Bytes of each upload in the uploads phase.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub upload_bytes: u64,
    /// Uploads in flight at once [default: all of them].
    #[arg(long)]
    pub upload_concurrency: Option<usize>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct FilesReport {
    /// `in-process` or `remote`.
    pub target: String,
    /// Upload URLs handed out (phase 1); absent when skipped.
    pub issue: Option<IssueReport>,
    /// `complete` → `message` event (phase 2); absent when skipped.
    pub events: Option<EventsReport>,
    /// Uploads end to end (phase 3); absent when skipped.
    pub uploads: Option<UploadsReport>,
}

/// Phase 1: `POST /v1/files`, closed loop.
#[derive(Debug, Serialize)]
pub struct IssueReport {
    /// Declarations in flight at once.
    pub concurrency: usize,
    /// Seconds of declaring.
    pub seconds: f64,
    /// Upload URLs received.
    pub issued: u64,
    /// Upload URLs per second.
    pub issued_per_sec: f64,
    /// Declaration → upload URL.
    pub latency: Latency,
    /// Failed calls by `stage:status` (or `stage:connect`).
    pub errors: HashMap<String, u64>,
    /// The first failure's answer (or cause) for each key of `errors`.
    pub error_examples: HashMap<String, String>,
}

/// Phase 2: declare, upload, then `complete` → the member's `message` event.
#[derive(Debug, Serialize)]
pub struct EventsReport {
    /// Uploaders at once.
    pub concurrency: usize,
    /// Seconds of uploading.
    pub seconds: f64,
    /// Files completed (a message posted).
    pub completed: u64,
    /// Of those, files whose `message` event reached the member.
    pub events: u64,
    /// Completed files whose event never came (must be 0).
    pub missing: u64,
    /// `complete` sent → its answer.
    pub complete_latency: Latency,
    /// `complete` sent → the `message` event at the member.
    pub event_latency: Latency,
    /// Failed calls by `stage:status`.
    pub errors: HashMap<String, u64>,
    /// The first failure's answer (or cause) for each key of `errors`.
    pub error_examples: HashMap<String, String>,
}

/// Phase 3: many uploads at once, end to end.
#[derive(Debug, Serialize)]
pub struct UploadsReport {
    /// Uploads attempted.
    pub uploads: usize,
    /// Bytes of each.
    pub bytes_each: u64,
    /// In flight at once.
    pub concurrency: usize,
    /// From the first declaration to the last completion.
    pub seconds: f64,
    /// Uploads declared, stored and completed.
    pub completed: u64,
    /// MiB of completed uploads per second.
    pub mib_per_sec: f64,
    /// Declare → PUT → complete, each upload.
    pub latency: Latency,
    /// Completed uploads whose `message` event reached the member.
    pub events: u64,
    /// Completed uploads whose event never came (must be 0).
    pub missing: u64,
    /// Failed calls by `stage:status`.
    pub errors: HashMap<String, u64>,
    /// The first failure's answer (or cause) for each key of `errors`.
    pub error_examples: HashMap<String, String>,
    /// The origin's resident memory around the phase.
    pub origin_rss: Rss,
}

/// Resident memory of the origin, read every [`RSS_INTERVAL`].
#[derive(Debug, Serialize)]
pub struct Rss {
    /// Where it was read: `/proc/PID/status`, or the origin's `/metrics` (in process: the whole
    /// process, load generator, edge and s3local included).
    pub source: String,
    /// Before the first upload, bytes.
    pub before_bytes: u64,
    /// Largest reading while uploads ran, bytes.
    pub max_during_bytes: u64,
    /// After the last upload completed, bytes.
    pub after_bytes: u64,
    /// Readings taken while uploads ran.
    pub samples: u64,
}

/// The origin's API as the uploader uses it, and the file events the member has seen.
struct Uploader {
    http: reqwest::Client,
    base: String,
    token: String,
    channel: String,
    /// `client_msg_id` → when its `complete` was sent.
    sent: Mutex<HashMap<String, Instant>>,
    /// `client_msg_id` → when the member got its `message` event carrying a file.
    arrived: Mutex<HashMap<String, Instant>>,
    errors: Mutex<HashMap<String, u64>>,
    /// The first failure's detail of each error key.
    error_examples: Mutex<HashMap<String, String>>,
    next: AtomicU64,
    run_id: String,
}

/// A file declared: its id and where to PUT it.
struct Declared {
    id: String,
    url: String,
    headers: Vec<(String, String)>,
}

/// A failed call: `stage:status` or `stage:connect`, for the error counts, and the detail.
struct Failed {
    key: String,
    detail: String,
}

impl Uploader {
    fn fail(&self, f: Failed) {
        tracing::debug!(error = %f.detail, "files call failed");
        if let Ok(mut examples) = self.error_examples.lock() {
            examples.entry(f.key.clone()).or_insert(f.detail);
        }
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(f.key).or_default() += 1;
        }
    }

    /// The phase's error counts and an example of each, reset for the next phase.
    fn take_errors(&self) -> (HashMap<String, u64>, HashMap<String, String>) {
        let counts = self.errors.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default();
        let examples = self.error_examples.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default();
        (counts, examples)
    }

    async fn post(&self, stage: &str, path: &str, body: Value) -> Result<Value, Failed> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| Failed { key: format!("{stage}:connect"), detail: format!("cannot reach {url}: {e}") })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(Failed { key: format!("{stage}:{}", status.as_u16()), detail: text });
        }
        serde_json::from_str(&text).map_err(|e| Failed { key: format!("{stage}:decode"), detail: e.to_string() })
    }

    /// `POST /v1/files`.
    async fn declare(&self, size: u64) -> Result<Declared, Failed> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let body = json!({ "name": format!("loadtest-{n}.bin"), "size": size, "content_type": CONTENT_TYPE });
        let v = self.post("declare", "/v1/files", body).await?;
        let bad = |what: &str| Failed { key: "declare:decode".into(), detail: format!("no {what} in {v}") };
        let id = v["file"]["id"].as_str().ok_or_else(|| bad("file.id"))?.to_string();
        let url = v["upload"]["url"].as_str().ok_or_else(|| bad("upload.url"))?.to_string();
        let headers = v["upload"]["headers"]
            .as_object()
            .ok_or_else(|| bad("upload.headers"))?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        Ok(Declared { id, url, headers })
    }

    /// PUTs `body` to the presigned URL with every header it was signed with (reqwest sets
    /// `content-length` from the body itself).
    async fn put(&self, declared: &Declared, body: bytes::Bytes) -> Result<(), Failed> {
        let mut request = self.http.put(&declared.url);
        for (name, value) in &declared.headers {
            if !name.eq_ignore_ascii_case("content-length") {
                request = request.header(name, value);
            }
        }
        let response = request.body(body).send().await.map_err(|e| Failed {
            key: "put:connect".into(),
            detail: format!("cannot reach the object store at {}: {e}", declared.url),
        })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(Failed { key: format!("put:{}", status.as_u16()), detail: text });
        }
        Ok(())
    }

    /// `POST /v1/files/{id}/complete` in the channel; notes when it was sent. Returns the
    /// `client_msg_id`.
    async fn complete(&self, declared: &Declared) -> Result<String, Failed> {
        let client_msg_id = format!("{}-{}", self.run_id, declared.id);
        let body = json!({ "channel": self.channel, "client_msg_id": client_msg_id });
        if let Ok(mut sent) = self.sent.lock() {
            sent.insert(client_msg_id.clone(), Instant::now());
        }
        match self.post("complete", &format!("/v1/files/{}/complete", declared.id), body).await {
            Ok(_) => Ok(client_msg_id),
            Err(f) => {
                if let Ok(mut sent) = self.sent.lock() {
                    sent.remove(&client_msg_id);
                }
                Err(f)
            }
        }
    }

    /// Declare, upload, complete: the `client_msg_id` of the message posted.
    async fn share(&self, body: bytes::Bytes) -> Result<String, Failed> {
        let declared = self.declare(body.len() as u64).await?;
        self.put(&declared, body).await?;
        self.complete(&declared).await
    }

    /// Waits (up to [`EVENT_GRACE`]) for the events of `ids`; returns each one's `complete` →
    /// event latency in µs, and how many never came.
    async fn await_events(&self, ids: &[String]) -> (Vec<u64>, u64) {
        let deadline = Instant::now() + EVENT_GRACE;
        loop {
            let arrived = self.arrived.lock().map(|a| ids.iter().filter(|id| a.contains_key(*id)).count());
            if arrived.unwrap_or(0) == ids.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (Ok(sent), Ok(arrived)) = (self.sent.lock(), self.arrived.lock()) else {
            return (Vec::new(), ids.len() as u64);
        };
        let mut latencies = Vec::with_capacity(ids.len());
        let mut missing = 0;
        for id in ids {
            match (sent.get(id), arrived.get(id)) {
                (Some(s), Some(a)) => latencies.push(a.saturating_duration_since(*s).as_micros().max(1) as u64),
                _ => missing += 1,
            }
        }
        (latencies, missing)
    }
}

/// Runs the scenario and prints the report.
pub async fn run(args: FilesArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, print_report)?;
    let missing = report.events.as_ref().map_or(0, |e| e.missing) + report.uploads.as_ref().map_or(0, |u| u.missing);
    if missing > 0 {
        bail!("{missing} completed files never reached the member as a message event");
    }
    let failed = report.issue.as_ref().map_or(0, |r| r.errors.values().sum::<u64>())
        + report.events.as_ref().map_or(0, |r| r.errors.values().sum::<u64>())
        + report.uploads.as_ref().map_or(0, |r| r.errors.values().sum::<u64>());
    if failed > 0 {
        bail!("{failed} calls failed (see errors above)");
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_report(r: &FilesReport) {
    println!("selvage loadtest files — {}", r.target);
    if let Some(i) = &r.issue {
        println!("  upload URLs (POST /v1/files), closed loop, concurrency {}", i.concurrency);
        println!("    issued         {} in {:.1} s = {:.0}/s", i.issued, i.seconds, i.issued_per_sec);
        println!("    latency        {}", i.latency);
        print_errors(&i.errors, &i.error_examples);
    }
    if let Some(e) = &r.events {
        println!("  complete → message event at a member on the edge, concurrency {}", e.concurrency);
        println!(
            "    completed      {} in {:.1} s; events {} (missing {})",
            e.completed, e.seconds, e.events, e.missing
        );
        println!("    complete       {}", e.complete_latency);
        println!("    event          {}", e.event_latency);
        print_errors(&e.errors, &e.error_examples);
    }
    if let Some(u) = &r.uploads {
        println!(
            "  uploads end to end: {} × {:.2} MiB, {} at once, through the presigned URLs",
            u.uploads,
            mib(u.bytes_each),
            u.concurrency
        );
        println!(
            "    completed      {} in {:.2} s = {:.1} MiB/s; events {} (missing {})",
            u.completed, u.seconds, u.mib_per_sec, u.events, u.missing
        );
        println!("    each upload    {}", u.latency);
        let m = &u.origin_rss;
        println!(
            "    origin RSS     before {:.1} MiB, max during {:.1} MiB ({} readings), after {:.1} MiB  [{}]",
            mib(m.before_bytes),
            mib(m.max_during_bytes),
            m.samples,
            mib(m.after_bytes),
            m.source
        );
        print_errors(&u.errors, &u.error_examples);
    }
}

fn print_errors(errors: &HashMap<String, u64>, examples: &HashMap<String, String>) {
    for (key, n) in errors {
        println!("    errors         {n} × {key}, e.g. {}", examples.get(key).map_or("", String::as_str));
    }
}

/// Where the scenario runs: the deployment and, in process, the S3 endpoint behind it.
struct System {
    deployment: Deployment,
    s3: Option<(selvage_s3local::S3Local, tempfile::TempDir)>,
}

async fn start(args: &FilesArgs) -> Result<System> {
    if args.in_process {
        let dir = tempfile::tempdir()?;
        let s3 = selvage_s3local::S3Local::start(selvage_s3local::Options::new(dir.path().join("s3")))
            .await
            .context("cannot start the in-process S3 endpoint")?;
        let endpoint = s3.endpoint();
        let http = reqwest::Client::builder().pool_max_idle_per_host(4096).build()?;
        let deployment = Deployment::in_process_configured(
            http,
            16,
            |config| {
                let files = &mut config.files;
                files.enabled = true;
                files.endpoint = Some(endpoint);
                files.region = selvage_s3local::DEFAULT_REGION.into();
                files.bucket = selvage_s3local::DEFAULT_BUCKET.into();
                files.path_style = true;
                files.access_key_id = Some(selvage_s3local::DEFAULT_ACCESS_KEY.into());
                files.secret_access_key = Some(selvage_s3local::DEFAULT_SECRET_KEY.into());
            },
            |_| {},
        )
        .await?;
        return Ok(System { deployment, s3: Some((s3, dir)) });
    }
    let (Some(edge), Some(origin)) = (&args.target, &args.origin) else {
        bail!("give --in-process, or --target EDGE_URL and --origin ORIGIN_URL of a running deployment");
    };
    let deployment = Deployment::start(&DeploymentArgs {
        in_process: false,
        origin: Some(origin.clone()),
        edge: Some(edge.clone()),
        operator_key: args.operator_key.clone(),
        seed_concurrency: 16,
    })
    .await?;
    Ok(System { deployment, s3: None })
}

/// Starts or finds the system, runs the phases, and summarises.
pub async fn measure(args: &FilesArgs) -> Result<FilesReport> {
    if args.issue_concurrency == 0 || args.event_concurrency == 0 || args.upload_concurrency == Some(0) {
        bail!("--issue-concurrency, --event-concurrency and --upload-concurrency must be at least 1");
    }
    if args.upload_bytes == 0 {
        bail!("--upload-bytes must be at least 1");
    }
    let system = start(args).await?;
    let result = phases(args, &system.deployment).await;
    let target = system.deployment.target_name().to_string();
    system.deployment.stop().await;
    if let Some((s3, _dir)) = system.s3 {
        s3.shutdown().await;
    }
    let (issue, events, uploads) = result?;
    Ok(FilesReport { target, issue, events, uploads })
}

type Phases = (Option<IssueReport>, Option<EventsReport>, Option<UploadsReport>);

async fn phases(args: &FilesArgs, deployment: &Deployment) -> Result<Phases> {
    let ws = deployment
        .api
        .create_workspace(deployment.operator_key(), &format!("files loadtest {}", std::process::id()), "uploader")
        .await?;
    let watcher = deployment
        .api
        .create_users(&ws.admin, vec![("watcher".into(), "Watcher".into())])
        .await?
        .pop()
        .context("no watcher user created")?;
    let uploader = Arc::new(Uploader {
        http: reqwest::Client::builder().pool_max_idle_per_host(4096).build()?,
        base: deployment.origin_url().to_string(),
        token: ws.admin.token.clone(),
        channel: ws.general.id.to_string(),
        sent: Mutex::new(HashMap::new()),
        arrived: Mutex::new(HashMap::new()),
        errors: Mutex::new(HashMap::new()),
        error_examples: Mutex::new(HashMap::new()),
        next: AtomicU64::new(0),
        run_id: format!("{:x}", (std::process::id() as u64) << 20 ^ (selvage_origin::now_ms() as u64 & 0xfffff)),
    });
    // Before anything else: an origin without files says so on every files route.
    if let Err(f) = uploader.declare(SMALL_FILE_BYTES).await {
        if f.key == "declare:404" {
            bail!(
                "files are not enabled on the origin at {} (run it with files.enabled and an S3 endpoint, as \
                 `selvage dev` does): {}",
                uploader.base,
                f.detail
            );
        }
        bail!("declaring a file failed ({}): {}", f.key, f.detail);
    }

    // The member watching #general on the edge.
    let opts = ConnectOptions::new(Transport::WsMsgpack, deployment.edge_addr.clone(), watcher.token.clone());
    let mut client = Client::connect(opts).await.context("connecting the watching member to the edge")?;
    let stop = CancellationToken::new();
    let reader = {
        let (uploader, stop) = (uploader.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    next = client.next_event(Duration::from_secs(1)) => match next {
                        Ok(Some(Inbound::Event(frame))) => {
                            if let Event::Message(m) = &frame.event {
                                if !m.files.is_empty() {
                                    if let Ok(mut arrived) = uploader.arrived.lock() {
                                        arrived.insert(m.client_msg_id.clone(), Instant::now());
                                    }
                                }
                            }
                        }
                        Ok(Some(Inbound::Closed { code, reason })) => {
                            tracing::warn!(?code, %reason, "the watching member's connection closed");
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    },
                }
            }
            client.close().await;
        })
    };

    let result = async {
        let issue = if args.issue_duration.is_zero() { None } else { Some(issue_phase(args, &uploader).await) };
        let events = if args.event_duration.is_zero() { None } else { Some(events_phase(args, &uploader).await) };
        let uploads = if args.uploads == 0 { None } else { Some(uploads_phase(args, &uploader, deployment).await?) };
        Ok((issue, events, uploads))
    }
    .await;
    stop.cancel();
    let _ = reader.await;
    result
}

async fn issue_phase(args: &FilesArgs, uploader: &Arc<Uploader>) -> IssueReport {
    eprintln!("issue: {} declarations at once for {:.1} s", args.issue_concurrency, args.issue_duration.as_secs_f64());
    let issued = Arc::new(AtomicU64::new(0));
    let progress = {
        let issued = issued.clone();
        crate::report::progress(args.issue_duration, "upload URLs", move || issued.load(Ordering::Relaxed))
    };
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let started = Instant::now();
    let deadline = started + args.issue_duration;
    let mut tasks = Vec::with_capacity(args.issue_concurrency);
    for _ in 0..args.issue_concurrency {
        let (uploader, issued, histogram) = (uploader.clone(), issued.clone(), histogram.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = latency_histogram();
            while Instant::now() < deadline {
                let t = Instant::now();
                match uploader.declare(SMALL_FILE_BYTES).await {
                    Ok(_) => {
                        let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                        issued.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(f) => uploader.fail(f),
                }
            }
            if let Ok(mut h) = histogram.lock() {
                let _ = h.add(&local);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    let issued = issued.load(Ordering::Relaxed);
    let latency = Latency::of(&histogram.lock().map(|h| h.clone()).unwrap_or_else(|_| latency_histogram()));
    let (errors, error_examples) = uploader.take_errors();
    IssueReport {
        concurrency: args.issue_concurrency,
        seconds,
        issued,
        issued_per_sec: issued as f64 / seconds,
        latency,
        errors,
        error_examples,
    }
}

async fn events_phase(args: &FilesArgs, uploader: &Arc<Uploader>) -> EventsReport {
    eprintln!(
        "events: {} uploaders for {:.1} s, each waiting for its file's message event",
        args.event_concurrency,
        args.event_duration.as_secs_f64()
    );
    let body = bytes::Bytes::from(vec![b'e'; SMALL_FILE_BYTES as usize]);
    let completed = Arc::new(AtomicU64::new(0));
    let progress = {
        let completed = completed.clone();
        crate::report::progress(args.event_duration, "files shared", move || completed.load(Ordering::Relaxed))
    };
    let complete_histogram = Arc::new(Mutex::new(latency_histogram()));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let deadline = started + args.event_duration;
    let mut tasks = Vec::with_capacity(args.event_concurrency);
    for _ in 0..args.event_concurrency {
        let (uploader, completed, histogram, ids, body) =
            (uploader.clone(), completed.clone(), complete_histogram.clone(), ids.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let declared = match uploader.declare(body.len() as u64).await {
                    Ok(d) => d,
                    Err(f) => {
                        uploader.fail(f);
                        continue;
                    }
                };
                if let Err(f) = uploader.put(&declared, body.clone()).await {
                    uploader.fail(f);
                    continue;
                }
                let t = Instant::now();
                let id = match uploader.complete(&declared).await {
                    Ok(id) => id,
                    Err(f) => {
                        uploader.fail(f);
                        continue;
                    }
                };
                if let Ok(mut h) = histogram.lock() {
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                }
                completed.fetch_add(1, Ordering::Relaxed);
                // Closed loop on the event too: the next file waits for this one's event.
                let wait_until = Instant::now() + EVENT_GRACE;
                while Instant::now() < wait_until {
                    if uploader.arrived.lock().map(|a| a.contains_key(&id)).unwrap_or(true) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if let Ok(mut ids) = ids.lock() {
                    ids.push(id);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    let ids = ids.lock().map(|i| i.clone()).unwrap_or_default();
    let (latencies, missing) = uploader.await_events(&ids).await;
    let (errors, error_examples) = uploader.take_errors();
    EventsReport {
        concurrency: args.event_concurrency,
        seconds,
        completed: completed.load(Ordering::Relaxed),
        events: latencies.len() as u64,
        missing,
        complete_latency: Latency::of(
            &complete_histogram.lock().map(|h| h.clone()).unwrap_or_else(|_| latency_histogram()),
        ),
        event_latency: Latency::of(&histogram_of(&latencies)),
        errors,
        error_examples,
    }
}

fn histogram_of(micros: &[u64]) -> Histogram<u64> {
    let mut h = latency_histogram();
    for us in micros {
        let _ = h.record(*us);
    }
    h
}

/// Reads the origin's resident memory.
struct RssReader {
    source: String,
    /// Read `/proc/PID/status`; `None`: the origin's `/metrics`.
    pid: Option<u32>,
}

impl RssReader {
    fn new(args: &FilesArgs, deployment: &Deployment) -> RssReader {
        match args.origin_pid {
            Some(pid) => RssReader { source: format!("/proc/{pid}/status"), pid: Some(pid) },
            None if deployment.is_in_process() => RssReader {
                source: "origin /metrics: the whole load-test process (origin, edge, s3local and load generator)"
                    .into(),
                pid: None,
            },
            None => RssReader {
                source: "origin /metrics: the origin's process (under `selvage dev`, its edge and S3 endpoint too)"
                    .into(),
                pid: None,
            },
        }
    }

    async fn read(&self, deployment: &Deployment) -> Result<u64> {
        if let Some(pid) = self.pid {
            let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
                .await
                .with_context(|| format!("cannot read /proc/{pid}/status (is --origin-pid right?)"))?;
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .context("no VmRSS in /proc/PID/status")?;
            return Ok(kib * 1024);
        }
        let scrape = deployment.origin_metrics().await?;
        let bytes = scrape
            .sum("process_resident_memory_bytes")
            .context("the origin's /metrics has no process_resident_memory_bytes")?;
        Ok(bytes as u64)
    }
}

async fn uploads_phase(args: &FilesArgs, uploader: &Arc<Uploader>, deployment: &Deployment) -> Result<UploadsReport> {
    let concurrency = args.upload_concurrency.unwrap_or(args.uploads).min(args.uploads);
    eprintln!(
        "uploads: {} × {:.2} MiB, {} at once, declare → PUT → complete",
        args.uploads,
        mib(args.upload_bytes),
        concurrency
    );
    // One buffer of generated bytes shared by every upload (cloning `Bytes` shares it), so the
    // load generator's own memory does not grow with the uploads in flight.
    let body = bytes::Bytes::from((0..args.upload_bytes).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let rss = RssReader::new(args, deployment);
    let before = rss.read(deployment).await?;

    let completed = Arc::new(AtomicU64::new(0));
    let done = CancellationToken::new();
    let sampler = {
        let done = done.clone();
        let mut tick = tokio::time::interval(RSS_INTERVAL);
        async move {
            let (mut max, mut samples) = (0u64, 0u64);
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = tick.tick() => {
                        if let Ok(bytes) = rss.read(deployment).await {
                            max = max.max(bytes);
                            samples += 1;
                        }
                    }
                }
            }
            (rss, max, samples)
        }
    };
    let work = {
        let (completed, done) = (completed.clone(), done.clone());
        async move {
            let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let histogram = Arc::new(Mutex::new(latency_histogram()));
            let ids = Arc::new(Mutex::new(Vec::with_capacity(args.uploads)));
            let progress = upload_progress(completed.clone(), args.uploads);
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..args.uploads {
                let Ok(permit) = semaphore.clone().acquire_owned().await else { break };
                let (uploader, histogram, ids, completed, body) =
                    (uploader.clone(), histogram.clone(), ids.clone(), completed.clone(), body.clone());
                tasks.spawn(async move {
                    let t = Instant::now();
                    match uploader.share(body).await {
                        Ok(id) => {
                            if let Ok(mut h) = histogram.lock() {
                                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                            }
                            if let Ok(mut ids) = ids.lock() {
                                ids.push(id);
                            }
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(f) => uploader.fail(f),
                    }
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
            let seconds = started.elapsed().as_secs_f64();
            progress.abort();
            done.cancel();
            let h = histogram.lock().map(|h| h.clone()).unwrap_or_else(|_| latency_histogram());
            let ids = ids.lock().map(|i| i.clone()).unwrap_or_default();
            (seconds, h, ids)
        }
    };
    let ((rss, max_during, samples), (seconds, histogram, ids)) = tokio::join!(sampler, work);
    let completed = completed.load(Ordering::Relaxed);
    let (latencies, missing) = uploader.await_events(&ids).await;
    let after = rss.read(deployment).await?;
    let (errors, error_examples) = uploader.take_errors();
    Ok(UploadsReport {
        uploads: args.uploads,
        bytes_each: args.upload_bytes,
        concurrency,
        seconds,
        completed,
        mib_per_sec: mib(completed * args.upload_bytes) / seconds,
        latency: Latency::of(&histogram),
        events: latencies.len() as u64,
        missing,
        errors,
        error_examples,
        origin_rss: Rss {
            source: rss.source,
            before_bytes: before,
            max_during_bytes: max_during,
            after_bytes: after,
            samples,
        },
    })
}

/// Prints, once a second on stderr, how many of the `total` uploads have completed.
fn upload_progress(completed: Arc<AtomicU64>, total: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
        loop {
            tick.tick().await;
            let n = completed.load(Ordering::Relaxed);
            eprintln!("  {:>5.1} s: {n:>6} of {total} uploads completed", start.elapsed().as_secs_f64());
        }
    })
}
