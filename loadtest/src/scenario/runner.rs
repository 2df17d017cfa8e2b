//! Runs a scenario against a deployment: seeds the workspace, opens one lean WebSocket session
//! per simulated client (over the ramp-up, or all at once in a boot storm), offers open-loop
//! Poisson load for the configured time, disturbs it as configured (reconnect storm, slow
//! readers), waits for every client to catch up, and hands everything each client recorded to
//! the checker and the report.
//!
//! Every simulated client is one task owning its WebSocket stream: it writes the sends the
//! scheduler gives it, reads and records every frame, pings at the heartbeat, and after a
//! close (its own in a storm, or the edge shedding it as a slow consumer) resumes from the
//! last cursor it processed. Given several edges, client i starts at edge i mod n; when its
//! edge says `goodbye` (it drains) the client resumes at the next edge after the delay the
//! goodbye asks for, and when an edge refuses it, it tries the next one. Sends carry their
//! *scheduled* time in their text and id, so both send → ack and send → delivered latencies
//! include any time the send waited (no coordinated omission).
//!
//! With `load.changes`, some operations go to the sender of a recent send in the channel as a
//! change instead (see [`super::changes`]): the client makes it over HTTP in a task of its own,
//! so its WebSocket loop keeps reading, and counts it in flight until the origin answers. Every
//! client folds the change events of its channels into a state per message; the drain also
//! waits until each client shows the state the origin answered for every message it changed,
//! and afterwards [`final_states`] reads the origin's final history for the checker.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use selvage_shared::{decode_server, encode_client, ChannelId, ClientFrame, Event, Format, ServerFrame};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::changes::{self, Authored, Planned};
use super::checker::{changed_message, Ack, ChannelIx, ClientLog, Delivery, Finals, MessageState, Stored};
use super::config::{ChannelPick, Scenario, StormKind};
use crate::deployment::Deployment;
use crate::lean::{self, Ws};
use crate::report::latency_histogram;
use crate::seed::{person_name, Api, Member};

/// Read buffer of a simulated client's session.
const READ_BUFFER: usize = 8 * 1024;
/// Sends a client may have queued but not yet written; the scheduler counts more as skipped.
const SEND_QUEUE: usize = 256;
/// Attempts to resume a session before the client counts as lost.
const RESUME_ATTEMPTS: u32 = 8;
/// How long a client waits for `hello` after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest drain after an interrupted load (Ctrl-C).
const INTERRUPTED_DRAIN: Duration = Duration::from_secs(3);
/// The edge's close code for a slow consumer (edge `error::close::SLOW_CONSUMER`).
const SLOW_CONSUMER: u16 = 4008;
/// The edge's close code at the end of a drain (edge `error::close::DRAINING`, "service
/// restart").
const DRAINING: u16 = 1012;
/// Recent sends (channel, sender) the scheduler picks a change's channel and sender from.
const RECENT_SENDS: usize = 1024;
/// How long a change may wait for the origin's answer before it counts as failed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters every client and the scheduler add to while the run goes, read by the per-second
/// timeline and the progress line.
#[derive(Default)]
pub struct Counters {
    /// Sends written.
    pub sends: AtomicU64,
    /// Acks received.
    pub acks: AtomicU64,
    /// Message events received.
    pub deliveries: AtomicU64,
    /// Sessions open now.
    pub connected: AtomicI64,
    /// Sessions opened (boots and resumes).
    pub opened: AtomicU64,
    /// Errors of any kind.
    pub errors: AtomicU64,
    /// Sends written and changes requested, neither acked nor failed yet.
    pub in_flight: AtomicI64,
    /// Changes requested from the origin.
    pub changes: AtomicU64,
    /// Changes the origin answered as made.
    pub change_acks: AtomicU64,
    /// Change events (`message_changed`, `message_deleted`, `reaction_*`) received.
    pub change_events: AtomicU64,
}

/// A channel of the seeded workspace.
#[derive(Clone, Debug)]
pub struct ChannelInfo {
    /// Its id.
    pub id: ChannelId,
    /// Its name (for reports).
    pub name: String,
    /// Simulated clients that are members (indexes).
    pub members: Vec<usize>,
}

/// The seeded workspace.
pub struct Seeded {
    /// Channels the load sends to, then `#general` last (nobody sends there).
    pub channels: Vec<ChannelInfo>,
    /// The clients' users, in client order.
    pub members: Vec<Member>,
    /// How many of `channels` take sends (all but `#general`).
    pub sendable: usize,
    /// Index of the hot channel, when there is one.
    pub hot: Option<usize>,
}

/// Creates the workspace, users, channels, memberships and DMs the scenario asks for.
pub async fn seed(scenario: &Scenario, deployment: &Deployment) -> Result<Seeded> {
    let api = &deployment.api;
    let (w, n) = (&scenario.workspace, scenario.clients.count);
    let name = format!("loadtest {} {}", scenario.name, std::process::id());
    let ws = api.create_workspace(&deployment.operator_key, &name, "admin").await?;
    let members = api.create_users(&ws.admin, (0..n).map(|i| (format!("u{i:06}"), person_name(i))).collect()).await?;
    let mut channels = Vec::new();
    let specs: Vec<(String, bool)> = (0..w.big_channels)
        .map(|k| (format!("big{k:03}"), false))
        .chain((0..w.channels).map(|k| (format!("c{k:05}"), false)))
        .collect();
    let created = api.create_channels(&ws.admin, specs).await?;
    let mut pairs = Vec::new();
    for (k, channel) in created.into_iter().enumerate() {
        let members_of: Vec<usize> = if k < w.big_channels {
            (0..n).collect()
        } else {
            let j = k - w.big_channels;
            (0..w.channel_members).map(|m| (j * w.channel_members + m) % n).collect()
        };
        pairs.extend(members_of.iter().map(|&i| (channel.id.clone(), members[i].user.id.clone())));
        channels.push(ChannelInfo { id: channel.id.clone(), name: channel.name.clone(), members: members_of });
    }
    api.add_members(&ws.admin, pairs).await?;
    let dms = futures::stream::iter((0..w.dms).map(|k| {
        let (a, b) = (2 * k, 2 * k + 1);
        let (opener, other) = (&members[a], members[b].user.id.clone());
        async move { api.open_conversations(opener, vec![vec![other]]).await.map(|mut c| (c.pop(), a, b)) }
    }))
    .buffered(16)
    .collect::<Vec<_>>()
    .await;
    for dm in dms {
        let (channel, a, b) = dm?;
        let channel = channel.context("the origin opened no DM")?;
        channels.push(ChannelInfo { id: channel.id, name: format!("dm u{a:06}+u{b:06}"), members: vec![a, b] });
    }
    let sendable = channels.len();
    channels.push(ChannelInfo { id: ws.general.id.clone(), name: "general".into(), members: (0..n).collect() });
    let hot = (scenario.load.channel_pick == ChannelPick::Hot).then_some(0);
    Ok(Seeded { channels, members, sendable, hot })
}

/// What the scheduler asks of a client.
enum Command {
    /// Send message number `n`, scheduled at `at`, into channel `channel`.
    Send { channel: ChannelIx, n: u64, at: Instant },
    /// Operation number `n`, scheduled at `at`: change one of its own messages in `channel`
    /// (which and how picked with `roll`), or send a new one if it has none free there.
    Change { channel: ChannelIx, n: u64, at: Instant, roll: u64 },
}

/// What a client shares with the scheduler and the drain while it runs.
struct Shared {
    /// Reads slowly (`[slow]`).
    slow: bool,
    connected: AtomicBool,
    /// Highest seq received per channel.
    highest: Mutex<HashMap<ChannelIx, u64>>,
    /// Channels it is a member of, with their `last_seq` in its first hello.
    channels: Mutex<Vec<(ChannelIx, u64)>>,
    /// The state change events left on each message of its channels they reached it for.
    states: Mutex<HashMap<(ChannelIx, u64), MessageState>>,
    /// Finished for good (stopped or lost).
    done: AtomicBool,
}

/// Everything a client recorded, returned when its task ends.
pub struct ClientResult {
    /// For the checker.
    pub log: ClientLog,
    /// Its acknowledged sends.
    pub acks: Vec<Ack>,
    /// Scheduled send → ack, µs.
    pub send_ack: Histogram<u64>,
    /// Scheduled send → delivered here, µs.
    pub send_delivered: Histogram<u64>,
    /// Scheduled change → the origin's answer, µs, for the changes it made.
    pub change_ack: Histogram<u64>,
    /// Changes it requested.
    pub changes: u64,
    /// Changes the origin answered as made.
    pub changes_acked: u64,
    /// Change events it received for its channels.
    pub change_events: u64,
    /// Connect → hello of its first session, µs.
    pub boot: Histogram<u64>,
    /// Close → hello of each resumed session, µs.
    pub reconnect: Histogram<u64>,
    /// Errors by code.
    pub errors: HashMap<String, u64>,
    /// Sessions resumed.
    pub reconnects: u64,
    /// Times it moved to the next edge (its edge said goodbye or refused it).
    pub moved: u64,
    /// Times the edge closed it as a slow consumer.
    pub shed: u64,
    /// Sessions opened.
    pub opened: u64,
}

/// The run's fixed facts every client task reads.
struct RunContext {
    /// The edges; each client starts at one (`Plan::first_edge`) and moves on along them.
    addrs: Vec<SocketAddr>,
    /// The origin's API, for changes.
    api: Api,
    /// The scenario changes messages (`load.changes` > 0).
    changes: bool,
    format: Format,
    epoch: Instant,
    run: String,
    text_bytes: usize,
    channel_ix: HashMap<String, ChannelIx>,
    channel_ids: Vec<ChannelId>,
    counters: Arc<Counters>,
    highest_acked: Mutex<HashMap<ChannelIx, u64>>,
    /// Per channel and seq, the state the origin answered the latest change with. Only the
    /// author changes a message, one change at a time, so this is its state now.
    expected: Mutex<HashMap<ChannelIx, HashMap<u64, MessageState>>>,
    stop: CancellationToken,
}

/// One client's own plan.
struct Plan {
    token: String,
    /// Index into `RunContext::addrs` of the edge it boots at.
    first_edge: usize,
    source: Option<IpAddr>,
    connect_at: Instant,
    reconnect_at: Option<Instant>,
    read_delay: Option<Duration>,
    /// When the load ends: a slow client reads at full speed from then on, so the drain can
    /// tell "slow" from "lost".
    slow_until: Instant,
}

/// What a run recorded, for the checker and the report.
pub struct Recorded {
    /// Per client, in client order.
    pub clients: Vec<ClientResult>,
    /// Client handles, in client order.
    pub client_names: Vec<String>,
    /// Channel names, by index.
    pub channel_names: Vec<String>,
    /// Sends the scheduler could not hand to a connected member in time, by reason.
    pub skipped: HashMap<String, u64>,
    /// Seconds from the start of the load to the end of the drain.
    pub load_seconds: f64,
    /// Seconds the drain took.
    pub drain_seconds: f64,
}

/// Runs the clients, the scheduler and the storm against the seeded workspace. `sample` is
/// called once a second (from the start of the ramp-up) with the counters until the end.
pub async fn drive(
    scenario: &Scenario,
    deployment: &Deployment,
    seeded: &Seeded,
    counters: Arc<Counters>,
    epoch: Instant,
    interrupt: CancellationToken,
) -> Result<Recorded> {
    let mut addrs = Vec::with_capacity(deployment.edge_addrs.len());
    for edge in &deployment.edge_addrs {
        let addr: SocketAddr = tokio::net::lookup_host(edge)
            .await
            .with_context(|| format!("cannot resolve {edge}"))?
            .next()
            .with_context(|| format!("{edge} does not resolve"))?;
        addrs.push(addr);
    }
    if addrs.is_empty() {
        bail!("no edge to connect to");
    }
    let c = &scenario.clients;
    let not_loopback = addrs.iter().find(|a| !(a.ip().is_loopback() && a.is_ipv4()));
    if let (true, Some(addr)) = (c.source_ips > 1, not_loopback) {
        bail!("clients.source_ips > 1 needs edges on IPv4 loopback addresses, not {addr}");
    }
    let n = c.count;
    let channel_ix: HashMap<String, ChannelIx> =
        seeded.channels.iter().enumerate().map(|(i, ch)| (ch.id.as_str().to_string(), i as ChannelIx)).collect();
    let edges = addrs.len();
    let ctx = Arc::new(RunContext {
        addrs,
        api: deployment.api.clone(),
        changes: scenario.load.changes > 0.0,
        format: c.format.format(),
        epoch,
        run: format!("{:x}{:x}", std::process::id(), selvage_origin::now_ms()),
        text_bytes: scenario.load.text_bytes,
        channel_ix,
        channel_ids: seeded.channels.iter().map(|ch| ch.id.clone()).collect(),
        counters: counters.clone(),
        highest_acked: Mutex::new(HashMap::new()),
        expected: Mutex::new(HashMap::new()),
        stop: CancellationToken::new(),
    });

    let load_start = epoch + c.ramp_up;
    let load_end = load_start + scenario.load.duration;
    let mut rng = StdRng::seed_from_u64(selvage_origin::now_ms() as u64);
    let in_storm = |ix: usize, fraction: f64| (ix as f64) < (n as f64 * fraction).ceil();
    let mut shareds = Vec::with_capacity(n);
    let mut senders = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for (ix, member) in seeded.members.iter().enumerate() {
        let ramp = c.ramp_up.mul_f64(ix as f64 / n as f64);
        let mut connect_at = epoch + ramp;
        let mut reconnect_at = None;
        if let Some(storm) = &scenario.storm {
            if in_storm(ix, storm.fraction) {
                let at = load_start + storm.at + storm.jitter.mul_f64(rng.random::<f64>());
                match storm.kind {
                    StormKind::Boot => connect_at = at,
                    StormKind::Reconnect => reconnect_at = Some(at),
                }
            }
        }
        let read_delay = scenario
            .slow
            .as_ref()
            .filter(|s| (ix as f64) >= n as f64 * (1.0 - s.fraction) && s.fraction > 0.0)
            .map(|s| s.read_delay);
        let source = (c.source_ips > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (ix % c.source_ips) as u8)));
        let plan = Plan {
            token: member.token.clone(),
            first_edge: ix % edges,
            source,
            connect_at,
            reconnect_at,
            read_delay,
            slow_until: load_end,
        };
        let shared = Arc::new(Shared {
            slow: read_delay.is_some(),
            connected: AtomicBool::new(false),
            highest: Mutex::new(HashMap::new()),
            channels: Mutex::new(Vec::new()),
            states: Mutex::new(HashMap::new()),
            done: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        tasks.push(tokio::spawn(client(ctx.clone(), plan, shared.clone(), rx)));
        shareds.push(shared);
        senders.push(tx);
    }

    // The open-loop scheduler: Poisson arrivals at `rate`, each handed to a random connected
    // member of its channel, or (a `changes` share of them) to the sender of a recent send as a
    // change.
    let skipped = {
        let rate = scenario.load.rate;
        let changes = scenario.load.changes;
        let (pick, hot_share) = (scenario.load.channel_pick, scenario.load.hot_share);
        let channels: Vec<Vec<usize>> = seeded.channels[..seeded.sendable].iter().map(|c| c.members.clone()).collect();
        let interrupt = interrupt.clone();
        let hot = seeded.hot;
        let shareds = shareds.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut skipped: HashMap<String, u64> = HashMap::new();
            let mut rng = StdRng::seed_from_u64(selvage_origin::now_ms() as u64 ^ 0x5eed);
            let mut recent: VecDeque<(usize, usize)> = VecDeque::with_capacity(RECENT_SENDS);
            let mut at = load_start;
            for n in 0u64.. {
                let u: f64 = rng.random::<f64>();
                at += Duration::from_secs_f64(-(1.0 - u).ln() / rate);
                if at >= load_end {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = interrupt.cancelled() => break,
                }
                if changes > 0.0 && !recent.is_empty() && rng.random::<f64>() < changes {
                    let (channel, sender) = recent[rng.random_range(0..recent.len())];
                    // A sender that went away meanwhile: a new message from someone else instead.
                    if shareds[sender].connected.load(Ordering::Relaxed) {
                        let command = Command::Change { channel: channel as ChannelIx, n, at, roll: rng.random() };
                        if senders[sender].try_send(command).is_err() {
                            *skipped.entry("sender_queue_full".into()).or_default() += 1;
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                }
                let channel = match (pick, hot) {
                    (ChannelPick::Hot, Some(h)) if rng.random::<f64>() < hot_share || channels.len() == 1 => h,
                    (ChannelPick::Hot, Some(h)) => {
                        let other = rng.random_range(0..channels.len() - 1);
                        if other >= h {
                            other + 1
                        } else {
                            other
                        }
                    }
                    _ => rng.random_range(0..channels.len()),
                };
                let members = &channels[channel];
                let start = rng.random_range(0..members.len());
                // A slow reader sees its acks late too, so it sends only when no fast member
                // can: send → ack then measures the system, not the slow reader.
                let connected = |m: &usize| shareds[*m].connected.load(Ordering::Relaxed);
                let rotated = (0..members.len()).map(|k| members[(start + k) % members.len()]);
                let sender = rotated
                    .clone()
                    .filter(connected)
                    .find(|&m| !shareds[m].slow)
                    .or_else(|| rotated.clone().find(connected));
                let Some(sender) = sender else {
                    *skipped.entry("no_member_connected".into()).or_default() += 1;
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let command = Command::Send { channel: channel as ChannelIx, n, at };
                if senders[sender].try_send(command).is_err() {
                    *skipped.entry("sender_queue_full".into()).or_default() += 1;
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                } else if changes > 0.0 {
                    if recent.len() == RECENT_SENDS {
                        recent.pop_front();
                    }
                    recent.push_back((channel, sender));
                }
            }
            skipped
        })
    };

    tokio::select! {
        _ = tokio::time::sleep_until(load_end.into()) => {}
        _ = interrupt.cancelled() => {}
    }
    let skipped = skipped.await?;
    let drain_started = Instant::now();
    let drain_timeout = if interrupt.is_cancelled() {
        scenario.load.drain_timeout.min(INTERRUPTED_DRAIN)
    } else {
        scenario.load.drain_timeout
    };
    let deadline = drain_started + drain_timeout;
    while Instant::now() < deadline {
        if counters.in_flight.load(Ordering::Relaxed) <= 0 && caught_up(&ctx, &shareds) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    let load_seconds = load_start.elapsed().as_secs_f64();
    ctx.stop.cancel();
    let mut clients = Vec::with_capacity(n);
    for task in tasks {
        clients.push(task.await?);
    }
    Ok(Recorded {
        clients,
        client_names: seeded.members.iter().map(|m| m.user.handle.clone()).collect(),
        channel_names: seeded.channels.iter().map(|c| c.name.clone()).collect(),
        skipped,
        load_seconds,
        drain_seconds,
    })
}

/// Whether every client still running has the highest acknowledged seq of its channels and,
/// for every message after its boot point that was changed, the state the origin answered the
/// latest change with.
fn caught_up(ctx: &RunContext, shareds: &[Arc<Shared>]) -> bool {
    let (Ok(acked), Ok(expected)) = (ctx.highest_acked.lock(), ctx.expected.lock()) else { return true };
    let posted = MessageState::POSTED;
    shareds.iter().filter(|s| !s.done.load(Ordering::Relaxed)).all(|s| {
        let (Ok(channels), Ok(highest), Ok(states)) = (s.channels.lock(), s.highest.lock(), s.states.lock()) else {
            return true;
        };
        channels.iter().all(|&(c, boot)| {
            let messages = acked.get(&c).is_none_or(|&h| highest.get(&c).is_some_and(|&got| got >= h));
            messages
                && expected.get(&c).is_none_or(|changed| {
                    changed
                        .iter()
                        .filter(|(&seq, _)| seq > boot)
                        .all(|(&seq, want)| states.get(&(c, seq)).unwrap_or(&posted) == want)
                })
        })
    })
}

/// Reads the final history of every channel that took sends and keeps the state of each
/// message it shows changed.
pub async fn final_states(deployment: &Deployment, seeded: &Seeded, concurrency: usize) -> Result<Finals> {
    let changed = each_history(deployment, seeded, concurrency, |ix, history| {
        history.iter().map(|m| ((ix, m.seq), MessageState::of(m))).filter(|(_, state)| !state.is_posted()).collect()
    });
    Ok(changed.await?.into_iter().collect())
}

/// Reads the whole history of every channel that took sends: what the origin holds at each seq.
pub async fn stored(deployment: &Deployment, seeded: &Seeded, concurrency: usize) -> Result<Stored> {
    let held = each_history(deployment, seeded, concurrency, |ix, history| {
        history.iter().map(|m| ((ix, m.seq), msg_key(&m.client_msg_id))).collect()
    });
    Ok(held.await?.into_iter().collect())
}

/// Reads the whole history of every channel that took sends (as one of its members),
/// `concurrency` channels at a time, and keeps what `keep` takes from each.
async fn each_history<T>(
    deployment: &Deployment,
    seeded: &Seeded,
    concurrency: usize,
    keep: impl Fn(ChannelIx, &[selvage_shared::Message]) -> Vec<T>,
) -> Result<Vec<T>> {
    let api = &deployment.api;
    let keep = &keep;
    let reads = seeded.channels[..seeded.sendable].iter().enumerate().map(|(ix, channel)| async move {
        let member = channel
            .members
            .first()
            .and_then(|&m| seeded.members.get(m))
            .with_context(|| format!("{} has no member to read it as", channel.name))?;
        let history = api
            .history(&member.token, &channel.id)
            .await
            .with_context(|| format!("reading the history of {}", channel.name))?;
        anyhow::Ok(keep(ix as ChannelIx, &history))
    });
    let kept: Vec<Vec<T>> = futures::stream::iter(reads).buffer_unordered(concurrency.max(1)).try_collect().await?;
    Ok(kept.into_iter().flatten().collect())
}

/// A stable hash of a `client_msg_id`, the same in every client.
fn msg_key(client_msg_id: &str) -> u32 {
    let mut h = std::hash::DefaultHasher::new();
    client_msg_id.hash(&mut h);
    h.finish() as u32
}

/// The send time (µs since the epoch of the run) a message text starts with.
fn sent_at(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    text[..digits].parse().ok()
}

fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, 60_000_000));
}

/// How a session's read loop ended.
enum Ended {
    Stopped,
    Closed(String, Option<u16>),
    Reconnect,
    /// Its edge said goodbye: on to the next edge.
    Leave,
}

/// A client's changes, shared between its task and the change tasks it spawns.
struct ChangeBook {
    /// Its messages and what it did to them.
    authored: Authored,
    /// Scheduled change → the origin's answer, µs.
    latency: Histogram<u64>,
    /// Failed changes by code.
    errors: HashMap<String, u64>,
    /// Changes the origin answered as made.
    acked: u64,
}

/// What a client keeps across its sessions.
struct State {
    result: ClientResult,
    book: Arc<Mutex<ChangeBook>>,
    /// Its changes in flight.
    change_tasks: JoinSet<()>,
    cursor: Option<String>,
    pending: HashMap<String, (Instant, ChannelIx, u32)>,
    booted: bool,
    heartbeat: Duration,
    /// The scheduler has finished and dropped its end of the command queue.
    commands_done: bool,
    /// Index into `RunContext::addrs` of the edge it connects to.
    edge: usize,
    /// Its edge said goodbye: when to leave for the next edge (with several edges).
    leave_at: Option<Instant>,
}

impl State {
    /// Moves on to the next edge, when there are several.
    fn next_edge(&mut self, ctx: &RunContext) {
        if ctx.addrs.len() > 1 {
            self.edge = (self.edge + 1) % ctx.addrs.len();
            self.result.moved += 1;
        }
    }
}

/// One simulated client for the whole run.
async fn client(
    ctx: Arc<RunContext>,
    plan: Plan,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
) -> ClientResult {
    let mut st = State {
        result: ClientResult {
            log: ClientLog::default(),
            acks: Vec::new(),
            send_ack: latency_histogram(),
            send_delivered: latency_histogram(),
            change_ack: latency_histogram(),
            changes: 0,
            changes_acked: 0,
            change_events: 0,
            boot: latency_histogram(),
            reconnect: latency_histogram(),
            errors: HashMap::new(),
            reconnects: 0,
            moved: 0,
            shed: 0,
            opened: 0,
        },
        book: Arc::new(Mutex::new(ChangeBook {
            authored: Authored::default(),
            latency: latency_histogram(),
            errors: HashMap::new(),
            acked: 0,
        })),
        change_tasks: JoinSet::new(),
        cursor: None,
        pending: HashMap::new(),
        booted: false,
        heartbeat: Duration::from_secs(30),
        commands_done: false,
        edge: plan.first_edge,
        leave_at: None,
    };
    tokio::select! {
        _ = ctx.stop.cancelled() => {}
        _ = tokio::time::sleep_until(plan.connect_at.into()) => {}
    }
    let mut reconnect_at = plan.reconnect_at;
    let mut closed_at: Option<Instant> = None;
    let mut failures = 0;
    while !ctx.stop.is_cancelled() {
        let started = Instant::now();
        let was_booted = st.booted;
        let attempt = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => None,
            attempt = connect(&ctx, &plan, &mut st, &shared) => Some(attempt),
        };
        let Some(attempt) = attempt else {
            // Still (re)connecting after the load and the drain: it never got back in time.
            let what = if was_booted { "resuming" } else { "booting" };
            st.result.log.lost = Some(format!("still {what} when the run ended"));
            break;
        };
        let mut ws = match attempt {
            Ok(ws) => ws,
            Err(e) => {
                failures += 1;
                let code = if st.booted { "resume_failed" } else { "connect_failed" };
                error(&ctx, &mut st, code);
                if failures >= RESUME_ATTEMPTS {
                    st.result.log.lost = Some(format!("{code} {failures} times: {e:#}"));
                    break;
                }
                // Refused (a draining or stopped edge): the next edge, if there are several.
                st.next_edge(&ctx);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
                continue;
            }
        };
        failures = 0;
        let since = closed_at.take().unwrap_or(started);
        if was_booted {
            record(&mut st.result.reconnect, since.elapsed().as_micros() as u64);
            st.result.reconnects += 1;
        } else {
            record(&mut st.result.boot, since.elapsed().as_micros() as u64);
        }
        shared.connected.store(true, Ordering::Relaxed);
        ctx.counters.connected.fetch_add(1, Ordering::Relaxed);
        let ended = session(&ctx, &plan, &mut st, &shared, &mut ws, &mut commands, &mut reconnect_at).await;
        shared.connected.store(false, Ordering::Relaxed);
        ctx.counters.connected.fetch_sub(1, Ordering::Relaxed);
        closed_at = Some(Instant::now());
        // Sends awaiting an ack on a closed session will never get one: they stay unacked.
        ctx.counters.in_flight.fetch_sub(st.pending.len() as i64, Ordering::Relaxed);
        st.pending.clear();
        match ended {
            Ended::Stopped => {
                lean::start_close(&mut ws).await;
                break;
            }
            Ended::Reconnect => lean::start_close(&mut ws).await,
            Ended::Leave => {
                lean::start_close(&mut ws).await;
                st.next_edge(&ctx);
            }
            Ended::Closed(why, code) => {
                if code == Some(SLOW_CONSUMER) {
                    st.result.shed += 1;
                } else if code == Some(DRAINING) && st.leave_at.is_some() {
                    // Closed at the end of the drain before its own time to leave came: no error.
                    st.next_edge(&ctx);
                } else {
                    error(&ctx, &mut st, &why);
                }
            }
        }
        st.leave_at = None;
    }
    // Changes still in flight end (answered or timed out) before the client reports.
    let _ = tokio::time::timeout(CHANGE_TIMEOUT, async { while st.change_tasks.join_next().await.is_some() {} }).await;
    st.change_tasks.abort_all();
    if let Ok(mut book) = st.book.lock() {
        st.result.change_ack = std::mem::replace(&mut book.latency, latency_histogram());
        st.result.changes_acked = book.acked;
        for (code, n) in book.errors.drain() {
            *st.result.errors.entry(code).or_default() += n;
        }
    }
    if let Ok(mut states) = shared.states.lock() {
        st.result.log.changes = std::mem::take(&mut *states);
    }
    shared.done.store(true, Ordering::Relaxed);
    st.result
}

fn error(ctx: &RunContext, st: &mut State, code: &str) {
    *st.result.errors.entry(code.to_string()).or_default() += 1;
    ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
}

/// Opens a session (resuming from the last cursor after the first) and reads its `hello`.
async fn connect(ctx: &RunContext, plan: &Plan, st: &mut State, shared: &Shared) -> Result<Ws> {
    let config = lean::ws_config(READ_BUFFER);
    let addr = ctx.addrs[st.edge];
    let mut ws = lean::dial_resuming(addr, plan.source, &plan.token, ctx.format, config, st.cursor.as_deref()).await?;
    st.result.opened += 1;
    ctx.counters.opened.fetch_add(1, Ordering::Relaxed);
    let first = tokio::time::timeout(HELLO_TIMEOUT, lean::next_data(&mut ws)).await.context("no hello in time")??;
    let hello = lean::expect_hello(&first, ctx.format)?;
    st.heartbeat = Duration::from_millis(hello.heartbeat_ms.max(100));
    if !st.booted {
        st.booted = true;
        st.cursor = Some(hello.cursor.as_str().to_string());
        let channels: Vec<(ChannelIx, u64)> = hello
            .channels
            .iter()
            .filter_map(|b| ctx.channel_ix.get(b.channel.id.as_str()).map(|&ix| (ix, b.last_seq)))
            .collect();
        if let Ok(mut mine) = shared.channels.lock() {
            mine.clone_from(&channels);
        }
        if let Ok(mut highest) = shared.highest.lock() {
            highest.extend(channels.iter().copied());
        }
        st.result.log.channels = channels;
    }
    Ok(ws)
}

/// What woke a session's loop.
enum Wake {
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Command(Option<Command>),
    Ping,
    Reconnect,
    Leave,
    Stop,
}

/// Reads, records, sends, changes and pings until the session ends.
async fn session(
    ctx: &Arc<RunContext>,
    plan: &Plan,
    st: &mut State,
    shared: &Shared,
    ws: &mut Ws,
    commands: &mut mpsc::Receiver<Command>,
    reconnect_at: &mut Option<Instant>,
) -> Ended {
    let mut ping = tokio::time::interval(st.heartbeat / 2);
    ping.tick().await;
    let mut pings = 0u64;
    loop {
        let storm = async {
            match *reconnect_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let leave_at = st.leave_at;
        let leave = async move {
            match leave_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => Wake::Stop,
            _ = storm => Wake::Reconnect,
            _ = leave => Wake::Leave,
            frame = ws.next() => Wake::Frame(frame),
            command = commands.recv(), if !st.commands_done => Wake::Command(command),
            _ = ping.tick() => Wake::Ping,
        };
        match wake {
            Wake::Stop => return Ended::Stopped,
            Wake::Reconnect => {
                *reconnect_at = None;
                return Ended::Reconnect;
            }
            Wake::Leave => return Ended::Leave,
            Wake::Ping => {
                pings += 1;
                let frame = ClientFrame::Ping { id: format!("ping{pings}") };
                if let Err(e) = write(ws, &frame, ctx.format).await {
                    return Ended::Closed(format!("write_failed: {e}"), None);
                }
            }
            // The scheduler is done: stop asking, or the loop would spin on the closed queue.
            Wake::Command(None) => st.commands_done = true,
            Wake::Command(Some(Command::Send { channel, n, at })) => {
                if let Err(e) = send(ctx, st, ws, channel, n, at).await {
                    return Ended::Closed(format!("write_failed: {e}"), None);
                }
            }
            Wake::Command(Some(Command::Change { channel, n, at, roll })) => {
                let planned = st.book.lock().ok().and_then(|mut b| b.authored.pick(channel, n, roll, ctx.text_bytes));
                match planned {
                    Some(planned) => change(ctx, plan, st, planned, at),
                    // Nothing of its own there free to change: a new message instead.
                    None => {
                        if let Err(e) = send(ctx, st, ws, channel, n, at).await {
                            return Ended::Closed(format!("write_failed: {e}"), None);
                        }
                    }
                }
            }
            Wake::Frame(None) => return Ended::Closed("connection_ended".into(), None),
            Wake::Frame(Some(Err(e))) => return Ended::Closed(format!("read_failed: {e}"), None),
            Wake::Frame(Some(Ok(message))) => {
                let bytes = match &message {
                    Message::Binary(b) => &b[..],
                    Message::Text(t) => t.as_bytes(),
                    Message::Close(frame) => {
                        let code = frame.as_ref().map(|f| u16::from(f.code));
                        let why = match code {
                            Some(c) if c == u16::from(CloseCode::Normal) => "closed_normal".to_string(),
                            Some(c) => format!("closed_{c}"),
                            None => "closed".to_string(),
                        };
                        return Ended::Closed(why, code);
                    }
                    _ => continue,
                };
                if let Some(end) = handle(ctx, st, shared, bytes) {
                    return end;
                }
                if let Some(delay) = plan.read_delay.filter(|_| Instant::now() < plan.slow_until) {
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Writes send number `n`, scheduled at `at`, into `channel`, and counts it in flight.
async fn send(ctx: &RunContext, st: &mut State, ws: &mut Ws, channel: ChannelIx, n: u64, at: Instant) -> Result<()> {
    let id = format!("{}-{n}", ctx.run);
    let sent_us = at.saturating_duration_since(ctx.epoch).as_micros() as u64;
    let mut text = format!("{sent_us} n{n} ");
    while text.len() < ctx.text_bytes {
        text.push('x');
    }
    let frame = ClientFrame::Send {
        id: id.clone(),
        channel: ctx.channel_ids[channel as usize].clone(),
        text,
        client_msg_id: id.clone(),
        thread_root: None,
    };
    st.pending.insert(id.clone(), (at, channel, msg_key(&id)));
    ctx.counters.sends.fetch_add(1, Ordering::Relaxed);
    ctx.counters.in_flight.fetch_add(1, Ordering::Relaxed);
    write(ws, &frame, ctx.format).await
}

/// Makes a change, scheduled at `at`, in a task of its own so the session keeps reading
/// meanwhile; it counts in flight until the origin answers.
fn change(ctx: &Arc<RunContext>, plan: &Plan, st: &mut State, planned: Planned, at: Instant) {
    st.result.changes += 1;
    ctx.counters.changes.fetch_add(1, Ordering::Relaxed);
    ctx.counters.in_flight.fetch_add(1, Ordering::Relaxed);
    // The set keeps finished tasks until they are joined: reap them.
    while st.change_tasks.try_join_next().is_some() {}
    let (ctx, token, book) = (ctx.clone(), plan.token.clone(), st.book.clone());
    st.change_tasks.spawn(async move {
        let channel = &ctx.channel_ids[planned.channel as usize];
        let answer = tokio::time::timeout(CHANGE_TIMEOUT, changes::perform(&ctx.api, &token, channel, &planned)).await;
        let took = at.elapsed().as_micros() as u64;
        let failed = match answer {
            Ok(Ok(message)) => {
                // Noted before the message is free to change again, so the latest answer is
                // its state now.
                if let Ok(mut expected) = ctx.expected.lock() {
                    expected.entry(planned.channel).or_default().insert(planned.seq, MessageState::of(&message));
                }
                ctx.counters.change_acks.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(Err(e)) => Some(changes::error_code(&e)),
            Err(_) => Some("change_timeout".to_string()),
        };
        if let Ok(mut book) = book.lock() {
            match &failed {
                None => {
                    record(&mut book.latency, took);
                    book.acked += 1;
                }
                Some(code) => *book.errors.entry(code.clone()).or_default() += 1,
            }
            book.authored.finished(&planned, failed.is_none());
        }
        if failed.is_some() {
            ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        ctx.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    });
}

async fn write(ws: &mut Ws, frame: &ClientFrame, format: Format) -> Result<()> {
    let bytes = encode_client(frame, format);
    let message = match format {
        Format::Json => Message::Text(String::from_utf8(bytes)?.into()),
        Format::MsgPack => Message::Binary(bytes.into()),
    };
    ws.send(message).await?;
    Ok(())
}

/// Records one server frame.
fn handle(ctx: &RunContext, st: &mut State, shared: &Shared, bytes: &[u8]) -> Option<Ended> {
    let frame = match decode_server(bytes, ctx.format) {
        Ok(frame) => frame,
        Err(_) => {
            error(ctx, st, "undecodable_frame");
            return None;
        }
    };
    match frame {
        ServerFrame::Event(e) => {
            st.cursor = Some(e.cursor.as_str().to_string());
            if let Some((id, seq)) = changed_message(&e.event) {
                let &channel = ctx.channel_ix.get(id.as_str())?;
                // Only its own channels' messages are its business.
                if !st.result.log.channels.iter().any(|&(c, _)| c == channel) {
                    return None;
                }
                if let Ok(mut states) = shared.states.lock() {
                    states.entry((channel, seq)).or_default().fold(&e.event);
                }
                st.result.change_events += 1;
                ctx.counters.change_events.fetch_add(1, Ordering::Relaxed);
            } else if let Event::Message(m) = e.event {
                let &channel = ctx.channel_ix.get(m.channel.as_str())?;
                let now = ctx.epoch.elapsed().as_micros() as u64;
                if let Some(sent) = sent_at(&m.text) {
                    record(&mut st.result.send_delivered, now.saturating_sub(sent));
                }
                st.result.log.deliveries.push(Delivery { channel, seq: m.seq, msg: msg_key(&m.client_msg_id) });
                ctx.counters.deliveries.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut highest) = shared.highest.lock() {
                    let h = highest.entry(channel).or_default();
                    *h = (*h).max(m.seq);
                }
            }
        }
        ServerFrame::Ack { reply_to, seq, .. } => {
            if let Some((at, channel, msg)) = st.pending.remove(&reply_to) {
                record(&mut st.result.send_ack, at.elapsed().as_micros() as u64);
                st.result.acks.push(Ack { channel, seq, msg });
                if ctx.changes {
                    if let Ok(mut book) = st.book.lock() {
                        book.authored.acked(channel, seq);
                    }
                }
                ctx.counters.acks.fetch_add(1, Ordering::Relaxed);
                ctx.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                if let Ok(mut acked) = ctx.highest_acked.lock() {
                    let h = acked.entry(channel).or_default();
                    *h = (*h).max(seq);
                }
            }
        }
        ServerFrame::Error { reply_to, code, .. } => {
            if reply_to.as_ref().is_some_and(|r| st.pending.remove(r).is_some()) {
                ctx.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            error(ctx, st, code.as_str());
        }
        ServerFrame::Resync { .. } => {
            error(ctx, st, "resync");
            st.result.log.lost = Some("the edge asked for a resync".into());
            return Some(Ended::Stopped);
        }
        // With several edges, leave for the next one when the goodbye says (the session goes on
        // until then); with one, wait for the close and resume at the same edge as before.
        ServerFrame::Goodbye { reconnect_in_ms } if ctx.addrs.len() > 1 && st.leave_at.is_none() => {
            st.leave_at = Some(Instant::now() + Duration::from_millis(reconnect_in_ms));
        }
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_and_send_times_round_trip() {
        assert_eq!(msg_key("abc-1"), msg_key("abc-1"));
        assert_ne!(msg_key("abc-1"), msg_key("abc-2"));
        assert_eq!(sent_at("123456 n7 xxx"), Some(123_456));
        assert_eq!(sent_at("n7"), None);
    }
}
