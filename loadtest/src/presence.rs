//! The `presence` scenario: what presence fan-out costs with subscriptions (each session gets
//! the changes of the users it follows, `presence_sub`) against without (every change to every
//! session of the workspace, the model Slack had before subscriptions — which cut its presence
//! events 5×). Same workload, both ways, one after the other in this process.
//!
//! For each mode it starts an origin (embedded store, in a temporary directory) and an edge
//! (with `sessions.presence_broadcast` off, then on) in this process ([`Deployment`]), seeds a workspace of
//! `--users` users through the HTTP API, connects one WebSocket session per user, and has every
//! session follow `--follows` other users (its people: a window of the user list around it).
//! Then for `--duration` it changes presence at `--rate` changes per second, open loop: a random
//! user turns do-not-disturb on or off (one `set_presence`, one presence change each). It counts
//! the `presence_change` frames the sessions receive, the edge's deliveries
//! (`selvage_edge_fanout_deliveries_total`) and the CPU time this process used (origin, edge
//! and the clients together, so read it as a ratio between the two modes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{rngs::StdRng, Rng, SeedableRng};
use selvage_client::{Client, ConnectOptions, Inbound, Transport};
use selvage_shared::{ClientFrame, Event};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::deployment::{Deployment, Scrape};
use crate::seed::person_name;
use crate::sends::parse_duration;

/// `selvage loadtest presence` arguments.
#[derive(Args, Clone, Debug)]
pub struct PresenceArgs {
    /// Users of the workspace; each holds one session.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Users each session follows (`presence_sub`).
    #[arg(long, default_value_t = 20)]
    pub follows: usize,
    /// Presence changes per second (do-not-disturb toggles of random users), open loop.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to change presence for, per mode.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One mode's figures.
#[derive(Debug, Serialize)]
pub struct ModeReport {
    /// `subscriptions` or `broadcast`.
    pub mode: &'static str,
    /// Presence changes made.
    pub changes: u64,
    /// `presence_change` frames the sessions received during the run.
    pub frames_received: u64,
    /// Frames received per change.
    pub frames_per_change: f64,
    /// Edge deliveries (all events) during the run.
    pub edge_deliveries: f64,
    /// CPU seconds this process used during the run (origin, edge and clients).
    pub cpu_seconds: f64,
    /// Seconds of the run.
    pub seconds: f64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct PresenceReport {
    /// Users (and sessions).
    pub users: usize,
    /// Users each session follows.
    pub follows: usize,
    /// With subscriptions.
    pub subscriptions: ModeReport,
    /// Without: every change to every session.
    pub broadcast: ModeReport,
    /// broadcast ÷ subscriptions, frames.
    pub frames_ratio: f64,
    /// broadcast ÷ subscriptions, CPU.
    pub cpu_ratio: f64,
}

/// Runs both modes and returns the comparison.
pub async fn measure(args: &PresenceArgs) -> Result<PresenceReport> {
    if args.users < 2 || args.follows == 0 || args.follows >= args.users || args.rate <= 0.0 {
        bail!("need --users ≥ 2, 0 < --follows < --users and --rate > 0");
    }
    let subscriptions = one_mode(args, false).await?;
    let broadcast = one_mode(args, true).await?;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Ok(PresenceReport {
        users: args.users,
        follows: args.follows,
        frames_ratio: ratio(broadcast.frames_received as f64, subscriptions.frames_received as f64),
        cpu_ratio: ratio(broadcast.cpu_seconds, subscriptions.cpu_seconds),
        subscriptions,
        broadcast,
    })
}

/// Runs both modes and prints the comparison.
pub async fn run(args: PresenceArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, |r| {
        println!("presence fan-out: {} users, each following {}", r.users, r.follows);
        for m in [&r.subscriptions, &r.broadcast] {
            println!(
                "  {:<13} {:>6} changes  {:>9} frames received ({:.1} per change)  {:>9.0} edge deliveries  {:.2} s CPU",
                m.mode, m.changes, m.frames_received, m.frames_per_change, m.edge_deliveries, m.cpu_seconds
            );
        }
        println!("  broadcast ÷ subscriptions: {:.1}× the frames, {:.1}× the CPU", r.frames_ratio, r.cpu_ratio);
    })
}

/// CPU seconds used by this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

async fn one_mode(args: &PresenceArgs, broadcast: bool) -> Result<ModeReport> {
    let mode = if broadcast { "broadcast" } else { "subscriptions" };
    let http = reqwest::Client::new();
    let deployment =
        Deployment::in_process_with(http.clone(), 64, |edge| edge.sessions.presence_broadcast = broadcast).await?;
    let api = &deployment.api;
    let ws = api.create_workspace(&deployment.operator_key, "Presence bench", "admin").await?;
    let people = (1..args.users).map(|i| (format!("user{i}"), person_name(i))).collect();
    let mut members = vec![ws.admin.clone()];
    members.extend(api.create_users(&ws.admin, people).await.context("seeding users")?);

    // One session per user; each follows the `follows` users after it in the list.
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut handles = Vec::with_capacity(members.len());
    let mut readers = Vec::with_capacity(members.len());
    for (i, member) in members.iter().enumerate() {
        let opts = ConnectOptions::new(Transport::WsMsgpack, deployment.edge_addr.clone(), member.token.clone());
        let mut client = Client::connect(opts).await.with_context(|| format!("connecting session {i}"))?;
        let follows = (1..=args.follows).map(|k| members[(i + k) % members.len()].user.id.clone()).collect();
        client.send_frame(&ClientFrame::PresenceSub { users: follows }).await?;
        handles.push(client.handle());
        let (received, stop) = (received.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    next = client.next_event(Duration::from_secs(1)) => match next {
                        Ok(Some(Inbound::Event(frame))) if matches!(frame.event, Event::PresenceChange { .. }) => {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    },
                }
            }
            client.close().await;
        }));
    }
    // Let the sessions' own arrivals (everyone coming online) settle before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deliveries = |s: &Scrape| s.sum("selvage_edge_fanout_deliveries_total").unwrap_or(0.0);
    let deliveries_before = deliveries(&deployment.edge_metrics().await?);
    let received_before = received.load(Ordering::Relaxed);
    let cpu_before = cpu_seconds();
    let started = Instant::now();

    let mut rng = StdRng::seed_from_u64(7);
    let mut dnd = vec![false; handles.len()];
    let mut at = started;
    let mut changes = 0u64;
    loop {
        at += Duration::from_secs_f64(-(1.0 - rng.random::<f64>()).ln() / args.rate);
        if at >= started + args.duration {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let who = rng.random_range(0..handles.len());
        dnd[who] = !dnd[who];
        if handles[who].send_frame(&ClientFrame::SetPresence { dnd: dnd[who] }).await.is_ok() {
            changes += 1;
        }
    }
    // Changes in flight reach their followers within a presence tick or two.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let frames = received.load(Ordering::Relaxed) - received_before;
    let edge_deliveries = deliveries(&deployment.edge_metrics().await?) - deliveries_before;
    stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    deployment.stop().await;
    Ok(ModeReport {
        mode,
        changes,
        frames_received: frames,
        frames_per_change: if changes > 0 { frames as f64 / changes as f64 } else { 0.0 },
        edge_deliveries,
        cpu_seconds: cpu,
        seconds,
    })
}
