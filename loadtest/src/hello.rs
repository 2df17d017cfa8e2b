//! The `hello` scenario: how fast a warm edge boots a session, and how big the boot payload is,
//! for a user in `--channels` conversations of a `--users` workspace (ARCHITECTURE §3 lazy boot, §6
//! target: p99 ≤ 2 ms at the edge, payload ≤ 20 KB, for 50 channels of 10,000 users).
//!
//! It seeds the workspace through the origin's HTTP API with a realistic membership mix for the
//! measured user — `#general` (everyone), a few big channels with thousands of members, some
//! medium and many small ones (a third of those private), DMs and group DMs — plus
//! `--other-channels` the user is not in. Then, against one edge, it boots the measured user
//! once cold (the edge loads the workspace and the token from the origin) and `--boots` times
//! warm per format, each timed from the start of the TCP connect to the `hello` frame received,
//! with the frame's exact size on the wire.
//!
//! The baseline is a full-snapshot boot, what Slack's `rtm.start` used to send: every user and
//! every channel with its complete member list — the link's `WorkspaceSnapshot` of the same
//! workspace (read from the origin in process; rebuilt from the seeded records otherwise),
//! encoded as one frame. `cargo bench -p selvage-edge --bench boot` times building both.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use selvage_shared::link::{ChannelState, WorkspaceSnapshot};
use selvage_shared::{Channel, ChannelId, Format, Hello, UserId};
use serde::Serialize;

use crate::deployment::{bucket_quantile, Deployment, DeploymentArgs};
use crate::lean::{self, WireFormat};
use crate::report::{latency_histogram, Latency};
use crate::seed::{person_name, Member};

/// Largest `hello` the design allows, in bytes (ARCHITECTURE §6: 20 KB).
pub const TARGET_HELLO_BYTES: usize = 20_000;

/// Slowest warm `hello` p99 the design allows, in ms (ARCHITECTURE §6: 2 ms at the edge).
pub const TARGET_P99_MS: f64 = 2.0;

/// Read buffer of a booting session: a hello is one frame of tens of KB.
const BOOT_READ_BUFFER: usize = 64 * 1024;

/// `selvage loadtest hello` arguments.
#[derive(Args, Clone, Debug)]
pub struct HelloArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Users in the workspace, the measured user and the admin included.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Conversations the measured user is in: #general (everyone), three big channels (1/2, 1/4
    /// and 1/10 of the workspace), 12 % medium (100–500 members) and the rest small (3–50), a
    /// third of those private, 20 % DMs and 10 % group DMs (3–8 people).
    #[arg(long, default_value_t = 50)]
    pub channels: usize,
    /// Channels of the workspace the measured user is not in (in the full snapshot, not in hello).
    #[arg(long, default_value_t = 450)]
    pub other_channels: usize,
    /// Warm boots to time, per format.
    #[arg(long, default_value_t = 2000)]
    pub boots: usize,
    /// Warm boots in flight at once (1 measures an unloaded edge).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Wire formats to boot with, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "json,msgpack")]
    pub formats: Vec<WireFormat>,
    /// Seed of the membership generator (the same seed makes the same workspace).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What kind of conversation a planned one is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `#general`: everyone, joined on creation.
    General,
    /// A public channel.
    Public,
    /// A private channel.
    Private,
    /// A DM of the measured user.
    Dm,
    /// A group DM of the measured user.
    GroupDm,
}

/// One conversation to create.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Its kind.
    pub kind: Kind,
    /// Its name (channels only).
    pub name: String,
    /// Members as user numbers ([`ME`], [`ADMIN`], others from 2), sorted, without duplicates.
    /// Empty for `#general`, which holds everyone.
    pub members: Vec<usize>,
}

/// User number of the measured user.
pub const ME: usize = 0;
/// User number of the admin, who creates every channel (and so is in each).
pub const ADMIN: usize = 1;

/// The workspace to seed: `users` users and these conversations.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Users, [`ME`] and [`ADMIN`] included.
    pub users: usize,
    /// The measured user's conversations.
    pub mine: Vec<Planned>,
    /// Channels the measured user is not in.
    pub others: Vec<Planned>,
}

impl Plan {
    /// A workspace of `users` users in which [`ME`] is in exactly `channels` conversations:
    /// `#general`; up to three big channels (half, a quarter and a tenth of the workspace);
    /// 12 % medium (100–500 members) and the rest small (3–50), every third of those private;
    /// 20 % DMs and 10 % group DMs (3–8 people). Plus `others` channels without [`ME`]: mostly
    /// small, one in twenty with 200–2,000 members. Deterministic for a given `seed`.
    pub fn generate(users: usize, channels: usize, others: usize, seed: u64) -> Result<Plan> {
        if users < 10 {
            bail!("--users must be at least 10");
        }
        if channels == 0 {
            bail!("--channels must be at least 1 (#general)");
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let rest = channels - 1;
        let dms = rest * 20 / 100;
        let group_dms = rest * 10 / 100;
        let big = rest.saturating_sub(dms + group_dms).min(3);
        let medium = rest * 12 / 100;
        let small = rest - dms - group_dms - big - medium;
        if dms > users - 2 {
            bail!("--users {users} is too few for {dms} DMs with different people: raise --users");
        }
        let cap = |n: usize| n.clamp(2, users - 2);
        let mut mine = vec![Planned { kind: Kind::General, name: "general".into(), members: Vec::new() }];
        for (i, share) in [2, 4, 10].into_iter().take(big).enumerate() {
            mine.push(channel(&mut rng, users, format!("big-{i}"), Kind::Public, cap(users / share), true));
        }
        for i in 0..medium {
            let size = cap(rng.random_range(100..=500));
            let kind = if i % 3 == 2 { Kind::Private } else { Kind::Public };
            mine.push(channel(&mut rng, users, format!("team-{i:03}"), kind, size, true));
        }
        for i in 0..small {
            let size = cap(rng.random_range(3..=50));
            let kind = if i % 3 == 2 { Kind::Private } else { Kind::Public };
            mine.push(channel(&mut rng, users, format!("project-{i:03}"), kind, size, true));
        }
        // Each DM with a different person, and no group DM with the same set twice.
        let partners = sample(&mut rng, users - 2, dms).into_iter().map(|u| u + 2);
        for partner in partners {
            mine.push(Planned { kind: Kind::Dm, name: String::new(), members: sorted(vec![ME, partner]) });
        }
        for _ in 0..group_dms {
            let others = rng.random_range(2..=7);
            let mut members: Vec<usize> = sample(&mut rng, users - 2, others).into_iter().map(|u| u + 2).collect();
            members.push(ME);
            mine.push(Planned { kind: Kind::GroupDm, name: String::new(), members: sorted(members) });
        }
        let mut other = Vec::with_capacity(others);
        for i in 0..others {
            let size = if i % 20 == 19 { rng.random_range(200..=2000) } else { rng.random_range(3..=60) };
            let kind = if i % 4 == 3 { Kind::Private } else { Kind::Public };
            other.push(channel(&mut rng, users, format!("other-{i:04}"), kind, cap(size), false));
        }
        Ok(Plan { users, mine, others: other })
    }

    /// Memberships in the workspace, `#general` included.
    pub fn memberships(&self) -> usize {
        self.mine
            .iter()
            .chain(&self.others)
            .map(|c| if c.kind == Kind::General { self.users } else { c.members.len() })
            .sum()
    }
}

/// A channel of `size` members: the admin (its creator), [`ME`] when `with_me`, and random others.
fn channel(rng: &mut StdRng, users: usize, name: String, kind: Kind, size: usize, with_me: bool) -> Planned {
    let fixed = if with_me { 2 } else { 1 };
    let picked = size.saturating_sub(fixed).min(users - 2);
    let mut members: Vec<usize> = sample(rng, users - 2, picked).into_iter().map(|u| u + 2).collect();
    members.push(ADMIN);
    if with_me {
        members.push(ME);
    }
    Planned { kind, name, members: sorted(members) }
}

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v.dedup();
    v
}

/// The workspace as seeded: records the origin returned, by plan position.
struct Seeded {
    workspace: selvage_shared::Workspace,
    /// Every user by number.
    users: Vec<Member>,
    /// Every conversation with its members (user numbers), `#general` with everyone.
    channels: Vec<(Channel, Vec<usize>)>,
}

impl Seeded {
    /// The link snapshot of this workspace, rebuilt from the records the origin returned while
    /// seeding (for a remote origin, whose snapshot this process cannot read).
    fn snapshot(&self, cursor: selvage_shared::Cursor) -> WorkspaceSnapshot {
        let ids: Vec<UserId> = self.users.iter().map(|m| m.user.id.clone()).collect();
        let channels = self
            .channels
            .iter()
            .map(|(channel, members)| {
                let mut members: Vec<UserId> = members.iter().map(|&u| ids[u].clone()).collect();
                members.sort();
                ChannelState { channel: channel.clone(), last_seq: 0, members }
            })
            .collect();
        WorkspaceSnapshot {
            workspace: self.workspace.clone(),
            cursor,
            users: self.users.iter().map(|m| m.user.clone()).collect(),
            channels,
            read_markers: Vec::new(),
            mentions: Vec::new(),
            channel_mentions: Vec::new(),
        }
    }
}

async fn seed(deployment: &Deployment, plan: &Plan) -> Result<Seeded> {
    let api = &deployment.api;
    let ws = api
        .create_workspace(&deployment.operator_key, &format!("loadtest hello {}", std::process::id()), "admin")
        .await?;
    let mut people = vec![("me".to_string(), "Measured User".to_string())];
    people.extend((2..plan.users).map(|i| (format!("u{i:05}"), person_name(i))));
    let mut created = api.create_users(&ws.admin, people).await?.into_iter();
    let me = created.next().context("the measured user was not created")?;
    let mut users = vec![me, ws.admin.clone()];
    users.extend(created);

    let channel_plans: Vec<&Planned> =
        plan.mine.iter().chain(&plan.others).filter(|c| matches!(c.kind, Kind::Public | Kind::Private)).collect();
    let specs = channel_plans.iter().map(|c| (c.name.clone(), c.kind == Kind::Private)).collect();
    let created = api.create_channels(&ws.admin, specs).await?;
    let mut pairs = Vec::new();
    for (channel, planned) in created.iter().zip(&channel_plans) {
        for &u in planned.members.iter().filter(|&&u| u != ADMIN) {
            pairs.push((channel.id.clone(), users[u].user.id.clone()));
        }
    }
    api.add_members(&ws.admin, pairs).await?;

    let conversations: Vec<&Planned> =
        plan.mine.iter().filter(|c| matches!(c.kind, Kind::Dm | Kind::GroupDm)).collect();
    let others = conversations
        .iter()
        .map(|c| c.members.iter().filter(|&&u| u != ME).map(|&u| users[u].user.id.clone()).collect())
        .collect();
    let opened = api.open_conversations(&users[ME], others).await?;

    let mut channels = vec![(ws.general.clone(), (0..plan.users).collect())];
    channels.extend(created.into_iter().zip(channel_plans).map(|(c, p)| (c, p.members.clone())));
    channels.extend(opened.into_iter().zip(conversations).map(|(c, p)| (c, p.members.clone())));
    Ok(Seeded { workspace: ws.workspace, users, channels })
}

/// One timed boot: connect-start → `hello` received.
struct Boot {
    elapsed: Duration,
    bytes: Vec<u8>,
}

async fn boot_once(addr: SocketAddr, token: &str, format: Format) -> Result<Boot> {
    let start = Instant::now();
    let mut ws = lean::dial(addr, None, token, format, lean::ws_config(BOOT_READ_BUFFER)).await?;
    let bytes = lean::next_data(&mut ws).await?;
    let elapsed = start.elapsed();
    lean::close(ws).await;
    Ok(Boot { elapsed, bytes })
}

/// Warm boots of one format.
#[derive(Debug, Serialize)]
pub struct FormatReport {
    /// `json` or `msgpack`.
    pub format: String,
    /// Size of the `hello` frame on the wire (WebSocket payload), bytes; the largest seen.
    pub hello_bytes: usize,
    /// Connect-start → `hello` received, at the client, over `boots` warm boots.
    pub latency: Latency,
    /// The edge's own boot time (`selvage_edge_boot_seconds`, authenticated connection →
    /// `hello` built) for these boots: upper bound of the histogram bucket holding the median, ms.
    pub edge_p50_at_most_ms: Option<f64>,
    /// The same for the 99th percentile.
    pub edge_p99_at_most_ms: Option<f64>,
    /// Full snapshot ÷ hello, in bytes.
    pub full_snapshot_ratio: f64,
}

/// The full-snapshot baseline.
#[derive(Debug, Serialize)]
pub struct FullSnapshot {
    /// Where it came from: the origin's snapshot, or rebuilt from the seeded records.
    pub source: String,
    /// Users in it.
    pub users: usize,
    /// Channels, DMs and group DMs in it.
    pub channels: usize,
    /// Memberships in it.
    pub memberships: usize,
    /// Encoded as one JSON frame, bytes.
    pub json_bytes: usize,
    /// Encoded as one MessagePack frame, bytes.
    pub msgpack_bytes: usize,
}

impl FullSnapshot {
    /// Counts and encodes `snapshot`.
    fn of(snapshot: &WorkspaceSnapshot, source: &str) -> Result<FullSnapshot> {
        Ok(FullSnapshot {
            source: source.into(),
            users: snapshot.users.len(),
            channels: snapshot.channels.len(),
            memberships: snapshot.channels.iter().map(|c| c.members.len()).sum(),
            json_bytes: serde_json::to_vec(snapshot)?.len(),
            msgpack_bytes: selvage_shared::try_to_msgpack(snapshot)?.len(),
        })
    }
}

/// What a full-snapshot boot (Slack's old `rtm.start`) would send `user`: every user, every
/// public channel, and the private channels, DMs and group DMs `user` is in.
fn visible_to(mut snapshot: WorkspaceSnapshot, user: &UserId) -> WorkspaceSnapshot {
    snapshot.channels.retain(|c| !c.channel.private || c.members.contains(user));
    snapshot.read_markers.retain(|m| m.user == *user);
    snapshot
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct HelloReport {
    /// `in-process` or `remote`.
    pub target: String,
    /// Users in the workspace.
    pub users: usize,
    /// Conversations of the measured user.
    pub channels: usize,
    /// Conversations in the workspace.
    pub workspace_channels: usize,
    /// Memberships in the workspace.
    pub memberships: usize,
    /// Seconds the seeding took.
    pub seed_seconds: f64,
    /// Channels in the measured user's `hello`.
    pub hello_channels: usize,
    /// Users in the measured user's `hello` (DM and group DM partners).
    pub hello_users: usize,
    /// The first boot, with the workspace and token not yet cached at the edge, ms.
    pub cold_boot_ms: f64,
    /// Warm boots timed per format.
    pub boots: usize,
    /// Warm boots in flight at once.
    pub concurrency: usize,
    /// Per format.
    pub formats: Vec<FormatReport>,
    /// The baseline: every user, and every channel the measured user may see (public ones,
    /// and the private ones, DMs and group DMs they are in) with its full member list.
    pub full_snapshot: FullSnapshot,
    /// The whole workspace (other people's private channels too), as the edge caches it.
    pub whole_workspace: FullSnapshot,
}

/// Runs the scenario and prints the report.
pub async fn run(args: HelloArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, print_report)?;
    Ok(())
}

/// Seeds, boots, and summarises.
pub async fn measure(args: &HelloArgs) -> Result<HelloReport> {
    if args.boots == 0 || args.concurrency == 0 || args.formats.is_empty() {
        bail!("--boots, --concurrency and --formats must not be zero or empty");
    }
    let plan = Plan::generate(args.users, args.channels, args.other_channels, args.seed)?;
    let deployment = Deployment::start(&args.deployment).await?;
    let result = measure_on(args, &plan, &deployment).await;
    deployment.stop().await;
    result
}

async fn measure_on(args: &HelloArgs, plan: &Plan, deployment: &Deployment) -> Result<HelloReport> {
    eprintln!(
        "seeding {} users, {} conversations, {} memberships through {} ...",
        plan.users,
        plan.mine.len() + plan.others.len(),
        plan.memberships(),
        deployment.api.base()
    );
    let started = Instant::now();
    let seeded = seed(deployment, plan).await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    eprintln!("seeded in {seed_seconds:.1} s");
    let addr: SocketAddr = tokio::net::lookup_host(&deployment.edge_addr)
        .await?
        .next()
        .with_context(|| format!("{} does not resolve", deployment.edge_addr))?;
    let token = seeded.users[ME].token.clone();

    let first_format = args.formats[0].format();
    let cold = boot_once(addr, &token, first_format).await.context("the first (cold) boot failed")?;
    let hello = lean::expect_hello(&cold.bytes, first_format)?;
    check_hello(&hello, plan, &seeded)?;

    let (source, snapshot) = match deployment.local_origin() {
        Some(origin) => {
            ("the origin's workspace snapshot, as the edge loads it", origin.snapshot(&seeded.workspace.id).await?)
        }
        None => ("rebuilt from the records the origin returned while seeding", seeded.snapshot(hello.cursor.clone())),
    };
    let whole = FullSnapshot::of(&snapshot, source)?;
    let full = FullSnapshot::of(&visible_to(snapshot, &seeded.users[ME].user.id), source)?;
    let (full_json, full_msgpack) = (full.json_bytes, full.msgpack_bytes);

    let mut formats = Vec::new();
    for wire in &args.formats {
        let format = wire.format();
        let before = deployment.edge_metrics().await?.buckets("selvage_edge_boot_seconds");
        let (histogram, hello_bytes) = warm_boots(addr, &token, format, args.boots, args.concurrency).await?;
        let after = deployment.edge_metrics().await?.buckets("selvage_edge_boot_seconds");
        let full_bytes = if format == Format::Json { full_json } else { full_msgpack };
        formats.push(FormatReport {
            format: format.to_string(),
            hello_bytes,
            latency: Latency::of(&histogram),
            edge_p50_at_most_ms: bucket_quantile(&before, &after, 0.50).map(|s| s * 1000.0),
            edge_p99_at_most_ms: bucket_quantile(&before, &after, 0.99).map(|s| s * 1000.0),
            full_snapshot_ratio: full_bytes as f64 / hello_bytes as f64,
        });
    }
    Ok(HelloReport {
        target: deployment.target_name().into(),
        users: plan.users,
        channels: plan.mine.len(),
        workspace_channels: seeded.channels.len(),
        memberships: plan.memberships(),
        seed_seconds,
        hello_channels: hello.channels.len(),
        hello_users: hello.users.len(),
        cold_boot_ms: cold.elapsed.as_secs_f64() * 1000.0,
        boots: args.boots,
        concurrency: args.concurrency,
        formats,
        full_snapshot: full,
        whole_workspace: whole,
    })
}

/// The hello must be the measured user's: every planned conversation, and its DM partners.
fn check_hello(hello: &Hello, plan: &Plan, seeded: &Seeded) -> Result<()> {
    if hello.self_user.id != seeded.users[ME].user.id {
        bail!("hello is for {}, not the measured user", hello.self_user.id);
    }
    let mine: BTreeSet<&ChannelId> =
        seeded.channels.iter().filter(|(_, members)| members.contains(&ME)).map(|(c, _)| &c.id).collect();
    let got: BTreeSet<&ChannelId> = hello.channels.iter().map(|c| &c.channel.id).collect();
    if hello.channels.len() != plan.mine.len() || got != mine {
        bail!("hello carries {} channels; the measured user is in {}", hello.channels.len(), plan.mine.len());
    }
    Ok(())
}

/// `boots` warm boots, `concurrency` at a time: the latency histogram (µs) and the largest
/// hello frame seen.
async fn warm_boots(
    addr: SocketAddr,
    token: &str,
    format: Format,
    boots: usize,
    concurrency: usize,
) -> Result<(Histogram<u64>, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    let progress = Progress::start(boots);
    for _ in 0..concurrency {
        let next = next.clone();
        let token = token.to_string();
        let done = progress.done.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = latency_histogram();
            let mut largest = 0;
            while next.fetch_add(1, Ordering::Relaxed) < boots {
                let boot = boot_once(addr, &token, format).await?;
                lean::expect_hello(&boot.bytes, format)?;
                let _ = h.record(boot.elapsed.as_micros().max(1) as u64);
                largest = largest.max(boot.bytes.len());
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((h, largest))
        }));
    }
    let mut total = latency_histogram();
    let mut largest = 0;
    for task in tasks {
        let (h, l) = task.await??;
        total.add(&h)?;
        largest = largest.max(l);
    }
    progress.stop();
    Ok((total, largest))
}

/// A once-a-second progress line on stderr.
struct Progress {
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(total: usize) -> Progress {
        let done = Arc::new(AtomicUsize::new(0));
        let seen = done.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = seen.load(Ordering::Relaxed);
                eprintln!("  {n} of {total} warm boots, {:.0}/s", n as f64 / start.elapsed().as_secs_f64());
            }
        });
        Progress { done, task }
    }

    fn stop(self) {
        self.task.abort();
    }
}

fn print_report(r: &HelloReport) {
    println!(
        "selvage loadtest hello — {}, a user in {} of {} conversations of a {}-user workspace ({} memberships)",
        r.target, r.channels, r.workspace_channels, r.users, r.memberships
    );
    println!("  seeded in        {:.1} s", r.seed_seconds);
    println!("  hello carries    {} channels, {} users", r.hello_channels, r.hello_users);
    println!("  cold boot        {:.2} ms (edge loads the workspace and the token from the origin)", r.cold_boot_ms);
    println!("  warm boots       {} per format, {} at a time; connect-start → hello received", r.boots, r.concurrency);
    for f in &r.formats {
        let edge = match (f.edge_p50_at_most_ms, f.edge_p99_at_most_ms) {
            (Some(p50), Some(p99)) => format!("edge-side boot p50 ≤ {p50} ms, p99 ≤ {p99} ms (histogram buckets)"),
            _ => "edge-side boot histogram unavailable".into(),
        };
        println!("  {:<8} hello {} bytes; {}", f.format, f.hello_bytes, f.latency);
        println!("           {edge}");
    }
    let s = &r.full_snapshot;
    println!(
        "  full snapshot    every user and every channel the user may see, with members: {} users, {} channels, \
         {} memberships",
        s.users, s.channels, s.memberships
    );
    println!("                   json {} bytes, msgpack {} bytes ({})", s.json_bytes, s.msgpack_bytes, s.source);
    let w = &r.whole_workspace;
    println!(
        "  whole workspace  {} channels, {} memberships: json {} bytes, msgpack {} bytes",
        w.channels, w.memberships, w.json_bytes, w.msgpack_bytes
    );
    for f in &r.formats {
        println!("  {:<8} full snapshot ÷ hello = {:.1}×", f.format, f.full_snapshot_ratio);
    }
    for f in &r.formats {
        let size = if f.hello_bytes <= TARGET_HELLO_BYTES { "met" } else { "NOT met" };
        let p99 = if f.latency.p99_ms <= TARGET_P99_MS { "met" } else { "NOT met" };
        println!(
            "  target ({:<7}) payload ≤ {TARGET_HELLO_BYTES} bytes: {size}; warm p99 ≤ {TARGET_P99_MS} ms: {p99}",
            f.format
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_puts_the_measured_user_in_exactly_the_asked_conversations() {
        let plan = Plan::generate(10_000, 50, 450, 1).unwrap();
        assert_eq!(plan.mine.len(), 50);
        assert_eq!(plan.others.len(), 450);
        let count = |k: Kind| plan.mine.iter().filter(|c| c.kind == k).count();
        assert_eq!(count(Kind::General), 1);
        assert_eq!(count(Kind::Dm), 9);
        assert_eq!(count(Kind::GroupDm), 4);
        assert!(count(Kind::Private) >= 8, "a third of the small and medium channels are private");
        for c in &plan.mine {
            assert!(c.kind == Kind::General || c.members.contains(&ME), "{c:?}");
            assert!(c.members.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
            assert!(c.members.iter().all(|&u| u < 10_000));
            match c.kind {
                Kind::Dm => assert_eq!(c.members.len(), 2),
                Kind::GroupDm => assert!((3..=8).contains(&c.members.len())),
                Kind::Public | Kind::Private => assert!(c.members.contains(&ADMIN)),
                Kind::General => assert!(c.members.is_empty()),
            }
        }
        let big: Vec<usize> = plan.mine[1..4].iter().map(|c| c.members.len()).collect();
        assert_eq!(big, vec![5000, 2500, 1000]);
        assert!(plan.others.iter().all(|c| !c.members.contains(&ME) && c.members.contains(&ADMIN)));
        let dms: Vec<_> = plan.mine.iter().filter(|c| c.kind != Kind::General && c.kind == Kind::Dm).collect();
        let partners: std::collections::BTreeSet<_> = dms.iter().map(|c| c.members[1]).collect();
        assert_eq!(partners.len(), dms.len(), "one DM per partner");
        assert!(plan.memberships() > 20_000);
    }

    #[test]
    fn small_plans_still_add_up() {
        for channels in 1..30 {
            let plan = Plan::generate(10, channels, 3, 7).unwrap();
            assert_eq!(plan.mine.len(), channels);
            assert!(plan.mine.iter().all(|c| c.members.iter().all(|&u| u < 10)));
        }
        assert!(Plan::generate(5, 50, 0, 1).is_err());
        assert!(Plan::generate(100, 0, 0, 1).is_err());
    }

    #[test]
    fn the_same_seed_makes_the_same_workspace() {
        let a = Plan::generate(1000, 50, 20, 9).unwrap();
        let b = Plan::generate(1000, 50, 20, 9).unwrap();
        let members = |p: &Plan| p.mine.iter().chain(&p.others).map(|c| c.members.clone()).collect::<Vec<_>>();
        assert_eq!(members(&a), members(&b));
    }
}
