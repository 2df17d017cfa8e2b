//! `selvage loadtest run SCENARIO`: scenarios described in TOML files (shipped ones in
//! `loadtest/scenarios/`, built into the binary), run against an edge (or several, sharing the
//! clients) with many simulated clients, measured (HDR histograms, a per-second timeline,
//! errors by code) and *checked*: from what every client received, the [`checker`] decides
//! whether every member of every channel saw one order, without gaps or duplicates, and got
//! every acknowledged message; and, when the scenario changes messages (`load.changes`: edits,
//! deletes, reactions), whether every member ended up seeing each message of its window as the
//! origin's final history shows it.
//!
//! - [`config`]: the scenario file and its validation;
//! - [`runner`]: seeding, the simulated clients, the open-loop scheduler, storms;
//! - [`changes`]: which message changes the senders make, and making them over HTTP;
//! - [`checker`]: the pure correctness check;
//! - [`report`]: `report.json` and the terminal summary (`report.html` is rendered from the
//!   JSON by [`crate::html`]).

pub mod changes;
pub mod checker;
pub mod config;
pub mod report;
pub mod runner;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use self::config::Scenario;
use self::report::{CheckerReport, Latencies, LatencyJson, Report, ScenarioInfo, Second, Target, Totals};
use self::runner::Counters;
use crate::deployment::{Deployment, DeploymentArgs};
use crate::report::latency_histogram;

/// Violations kept in detail in a report (all are counted).
pub const VIOLATIONS_KEPT: usize = 100;

/// The scenarios shipped in `loadtest/scenarios/`, by name, built into the binary.
pub const BUILTIN: &[(&str, &str)] = &[
    ("steady", include_str!("../../scenarios/steady.toml")),
    ("hot-channel", include_str!("../../scenarios/hot-channel.toml")),
    ("soak", include_str!("../../scenarios/soak.toml")),
    ("boot-storm", include_str!("../../scenarios/boot-storm.toml")),
    ("reconnect-storm", include_str!("../../scenarios/reconnect-storm.toml")),
    ("slow-consumers", include_str!("../../scenarios/slow-consumers.toml")),
    ("mixed", include_str!("../../scenarios/mixed.toml")),
];

/// `selvage loadtest run` arguments.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// A scenario file, or the name of a shipped one: steady, hot-channel, soak, boot-storm,
    /// reconnect-storm, slow-consumers, mixed.
    pub scenario: String,
    /// The edge the clients connect to, e.g. ws://127.0.0.1:7800 or http://127.0.0.1:7800.
    /// Several edges (repeat the flag, or separate them with commas) share the clients: client
    /// i starts at edge i mod n, and a client whose edge says `goodbye` (drains) or refuses it
    /// resumes at the next one.
    #[arg(long, value_delimiter = ',', conflicts_with = "in_process")]
    pub target: Vec<String>,
    /// The origin's HTTP API (needed with --target): the workspace is seeded through it, and a
    /// scenario's message changes (load.changes) are made and checked through it.
    #[arg(long, conflicts_with = "in_process")]
    pub origin: Option<String>,
    /// The origin's operator key, to create the test workspace (`selvage dev` prints one).
    #[arg(long, env = "SELVAGE_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<String>,
    /// Start an origin and an edge inside this process instead (embedded store, temporary
    /// directory); the load generator then shares the CPU with them.
    #[arg(long)]
    pub in_process: bool,
    /// Where `report.json` and `report.html` go.
    #[arg(long, default_value = "loadtest-report")]
    pub out: PathBuf,
    /// Multiplies client counts, channel counts, rates and durations (0.01 makes a CI run).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// HTTP requests in flight at once while seeding.
    #[arg(long, default_value_t = 64)]
    pub seed_concurrency: usize,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// After the run, read every channel's history from the origin and check that it holds
    /// every acknowledged send at the seq its ack carried — for runs during which the origin
    /// is killed and restarted (docs/bench/origin-kill.sh).
    #[arg(long)]
    pub check_stored: bool,
}

/// Finds a scenario by file path or shipped name; returns it with where it came from.
pub fn resolve(name: &str) -> Result<(Scenario, String)> {
    let path = Path::new(name);
    if path.exists() {
        return Ok((Scenario::load(path)?, path.display().to_string()));
    }
    let stem = name.trim_end_matches(".toml");
    let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == stem) else {
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        bail!("no scenario file {name:?} and no shipped scenario of that name (shipped: {})", names.join(", "));
    };
    let scenario = Scenario::parse(text).with_context(|| format!("the shipped scenario {stem} is invalid"))?;
    Ok((scenario, format!("loadtest/scenarios/{stem}.toml")))
}

/// Runs the scenario, prints the summary, writes the reports; fails when the check failed.
pub async fn run(args: RunArgs) -> Result<()> {
    // Ctrl-C ends the load early; the run still drains, checks and reports what it saw.
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    let listener = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: draining, checking and reporting what was recorded (Ctrl-C again waits)");
            on_signal.cancel();
        }
    });
    let report = execute_with(&args, interrupt).await;
    listener.abort();
    let report = report?;
    report::print(&report);
    println!("  reports           {}", args.out.display());
    if !report.passed {
        bail!("the run failed: {} (see {})", report.failures.join("; "), args.out.join("report.json").display());
    }
    Ok(())
}

/// Runs the scenario and writes `report.json` (and `report.html`) into `--out`; returns the
/// report whether or not it passed.
pub async fn execute(args: &RunArgs) -> Result<Report> {
    execute_with(args, CancellationToken::new()).await
}

/// [`execute`], ending the load early when `interrupt` is cancelled.
pub async fn execute_with(args: &RunArgs, interrupt: CancellationToken) -> Result<Report> {
    let (scenario, file) = resolve(&args.scenario)?;
    let scenario = if args.scale == 1.0 { scenario } else { scenario.scaled(args.scale)? };
    let targets: Vec<String> = args.target.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    if !args.in_process {
        match (targets.is_empty(), &args.origin) {
            (true, _) => bail!("give --target EDGE_URL (with --origin URL and --operator-key), or --in-process"),
            (false, None) => bail!(
                "--target names the edge; the workspace is seeded through the origin, so --origin URL (and \
                 --operator-key or SELVAGE_OPERATOR_KEY) is needed too"
            ),
            _ => {}
        }
    }
    let deployment_args = DeploymentArgs {
        in_process: args.in_process,
        origin: args.origin.clone(),
        edge: targets.first().cloned(),
        operator_key: args.operator_key.clone(),
        seed_concurrency: args.seed_concurrency,
    };
    let mut deployment = Deployment::start(&deployment_args).await?;
    if !args.in_process {
        if let Err(e) = deployment.set_edges(&targets) {
            deployment.stop().await;
            return Err(e);
        }
    }
    let result = run_on(&scenario, &file, args, &deployment, interrupt).await;
    deployment.stop().await;
    let report = result?;
    write_reports(&report, &args.out)?;
    Ok(report)
}

/// Writes `report.json` and `report.html` into `dir`.
pub fn write_reports(report: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_value(report)?;
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join("report.html");
    std::fs::write(&path, crate::html::render(&json)).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

async fn run_on(
    scenario: &Scenario,
    file: &str,
    args: &RunArgs,
    deployment: &Deployment,
    interrupt: CancellationToken,
) -> Result<Report> {
    let quiet = args.quiet;
    if !quiet {
        eprintln!(
            "seeding {} clients, {} channels ...",
            scenario.clients.count,
            scenario.workspace.channels + scenario.workspace.big_channels + scenario.workspace.dms
        );
    }
    let seeded = runner::seed(scenario, deployment).await?;
    let counters = Arc::new(Counters::default());
    let started_at_ms = selvage_origin::now_ms();
    let epoch = Instant::now();
    let phases = (scenario.clients.ramp_up, scenario.clients.ramp_up + scenario.load.duration);
    let sampler = sample(counters.clone(), epoch, phases, quiet);
    let recorded = runner::drive(scenario, deployment, &seeded, counters.clone(), epoch, interrupt.clone()).await;
    sampler.stop.cancel();
    let timeline = sampler.task.await.unwrap_or_default();
    let recorded = recorded?;
    let duration_s = epoch.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    // What every message finally looks like, once every change has been answered.
    let finals = if scenario.load.changes > 0.0 {
        match runner::final_states(deployment, &seeded, args.seed_concurrency).await {
            Ok(finals) => Some(finals),
            Err(e) => {
                failures.push(format!("changed messages were not checked: cannot read the origin's history: {e:#}"));
                None
            }
        }
    } else {
        None
    };

    let mut send_ack = latency_histogram();
    let mut send_delivered = latency_histogram();
    let mut change_ack = latency_histogram();
    let mut boot = latency_histogram();
    let mut reconnect = latency_histogram();
    let mut errors: BTreeMap<String, u64> = recorded.skipped.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let mut totals = Totals::default();
    let mut logs = Vec::with_capacity(recorded.clients.len());
    let mut acks = Vec::new();
    for c in recorded.clients {
        send_ack.add(&c.send_ack)?;
        send_delivered.add(&c.send_delivered)?;
        change_ack.add(&c.change_ack)?;
        boot.add(&c.boot)?;
        reconnect.add(&c.reconnect)?;
        for (code, n) in c.errors {
            *errors.entry(code).or_default() += n;
        }
        totals.acks += c.acks.len() as u64;
        totals.deliveries += c.log.deliveries.len() as u64;
        totals.connections_opened += c.opened;
        totals.reconnects += c.reconnects;
        totals.moved += c.moved;
        totals.sessions_shed += c.shed;
        totals.changes += c.changes;
        totals.changes_acked += c.changes_acked;
        totals.change_deliveries += c.change_events;
        acks.extend(c.acks);
        logs.push(c.log);
    }
    totals.sends = counters.sends.load(Ordering::Relaxed);
    let mut verdict = checker::check(&logs, &acks, finals.as_ref(), VIOLATIONS_KEPT);
    if args.check_stored {
        match runner::stored(deployment, &seeded, args.seed_concurrency).await {
            Ok(stored) => verdict.check_stored(&acks, &stored, VIOLATIONS_KEPT),
            Err(e) => failures
                .push(format!("acknowledged sends were not looked for: cannot read the origin's history: {e:#}")),
        }
    }
    let name = |names: &[String], ix: &str| {
        ix.parse::<usize>().ok().and_then(|i| names.get(i)).cloned().unwrap_or_else(|| ix.to_string())
    };
    let violations = verdict
        .violations
        .iter()
        .map(|v| {
            let mut v = v.clone();
            v.channel = name(&recorded.channel_names, &v.channel);
            v.client = name(&recorded.client_names, &v.client);
            v
        })
        .collect();
    let target = Target {
        edge: deployment.edge_addrs.join(", "),
        origin: if deployment.is_in_process() {
            format!("{} (in process)", deployment.api.base())
        } else {
            deployment.api.base().to_string()
        },
    };
    if !verdict.passed() {
        failures.push(format!("the delivery promise was broken: {} violations", verdict.violation_count));
    }
    if totals.acks == 0 {
        failures.push("no send was acknowledged, so nothing was checked".to_string());
    }
    if interrupt.is_cancelled() {
        failures.push("interrupted before the end of the load".to_string());
    }
    let passed = failures.is_empty();
    Ok(Report {
        schema: report::SCHEMA,
        failures,
        interrupted: interrupt.is_cancelled(),
        scenario: ScenarioInfo {
            name: scenario.name.clone(),
            file: file.to_string(),
            scale: args.scale,
            description: scenario.description.trim().to_string(),
            clients: scenario.clients.count,
            rate: scenario.load.rate,
        },
        target,
        started_at: report::rfc3339(started_at_ms),
        started_at_ms,
        duration_s,
        passed,
        latency: Latencies {
            send_ack: LatencyJson::of(&send_ack),
            send_delivered: LatencyJson::of(&send_delivered),
            change_ack: LatencyJson::of(&change_ack),
            boot: LatencyJson::of(&boot),
            reconnect: LatencyJson::of(&reconnect),
        },
        timeline,
        totals,
        errors,
        checker: CheckerReport {
            channels_checked: verdict.channels_checked,
            clients_checked: verdict.clients_checked,
            violation_count: verdict.violation_count,
            states_checked: verdict.states_checked,
            changed_messages: verdict.changed_messages,
            stored_checked: verdict.stored_checked,
            violations,
        },
    })
}

/// The per-second sampler: builds the timeline and prints the progress line.
struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Second>>,
}

/// `phases`: when the ramp-up ends and when the load ends, after `epoch`.
fn sample(counters: Arc<Counters>, epoch: Instant, phases: (Duration, Duration), quiet: bool) -> Sampler {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let mut timeline = Vec::new();
        let mut last = Second::default();
        let mut tick = tokio::time::interval_at(epoch.into(), Duration::from_secs(1));
        // A late tick (the runtime was busy) is not made up for with a burst of empty seconds.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut finish = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.cancelled() => finish = true,
            }
            let now = Second {
                t_s: (epoch.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                sends: counters.sends.load(Ordering::Relaxed),
                acks: counters.acks.load(Ordering::Relaxed),
                deliveries: counters.deliveries.load(Ordering::Relaxed),
                connections: counters.connected.load(Ordering::Relaxed),
                errors: counters.errors.load(Ordering::Relaxed),
                changes: counters.changes.load(Ordering::Relaxed),
            };
            let delta = Second {
                t_s: now.t_s,
                sends: now.sends - last.sends,
                acks: now.acks - last.acks,
                deliveries: now.deliveries - last.deliveries,
                connections: now.connections,
                errors: now.errors - last.errors,
                changes: now.changes - last.changes,
            };
            let moved = delta.sends + delta.acks + delta.deliveries + delta.errors + delta.changes;
            if !(finish && moved == 0 && !timeline.is_empty()) {
                timeline.push(delta.clone());
            }
            if !quiet {
                let elapsed = epoch.elapsed();
                let phase = if elapsed < phases.0 {
                    "ramp-up"
                } else if elapsed < phases.1 {
                    "load"
                } else {
                    "drain"
                };
                let line = format!(
                    "  {:>6.1}/{:.1} s {phase:<7} {:>7} conns {:>7} sends/s {:>7} acks/s {:>9} deliveries/s \
                     {:>6} in flight {:>6} errors",
                    delta.t_s,
                    phases.1.as_secs_f64(),
                    delta.connections,
                    delta.sends,
                    delta.acks,
                    delta.deliveries,
                    counters.in_flight.load(Ordering::Relaxed),
                    now.errors
                );
                if tty {
                    eprint!("\r{line}  ");
                } else {
                    eprintln!("{line}");
                }
            }
            last = now;
            if finish {
                if tty && !quiet {
                    eprintln!();
                }
                return timeline;
            }
        }
    });
    Sampler { stop, task }
}
