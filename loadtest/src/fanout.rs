//! The `fanout` scenario: how many events one edge delivers per second, how late, and whether
//! every subscriber got every message exactly once and in order (ARCHITECTURE §3 fan-out, §6 target:
//! ≥ 1,500,000 deliveries/s saturated, p99 ≤ 50 ms at 1,000,000/s).
//!
//! One channel has `--subscribers` members, each holding a session on one edge; `--publishers`
//! more members hold sessions on the same edge and send into it (`send` frames, each awaiting
//! its `ack`, many in flight per session):
//! - **closed loop** (no `--rate`): `--senders` senders, spread over the publishers' sessions,
//!   each sends, waits for the ack, and sends again — the most the system takes;
//! - **open loop** (`--rate R`): R sends per second on a fixed schedule, spread over the
//!   publishers, whether or not earlier ones were acknowledged.
//!
//! Publishers are members, so they receive every message too (read and dropped, not counted);
//! a few sessions with many sends in flight keep that cost small.
//!
//! Every message's text starts with the time it was sent (open loop: *scheduled*), in µs since
//! the run began, so each subscriber records send → delivered latency, stalls included (no
//! coordinated omission). Deliveries per second count the message events all subscribers
//! received during the sending window. At the end the run waits (up to `--drain-timeout`) for
//! every subscriber to catch up and then checks, per subscriber, that every acknowledged
//! message arrived exactly once and in `seq` order; any gap, duplicate, reordering or lost
//! session is reported and fails the run.
//!
//! Subscribers use the lean client ([`crate::lean`]: one WebSocket stream per session, decoding
//! only `type`, `channel`, `seq` and `text`) by default, or the SDK (`--client sdk`), to compare
//! what receiving costs the load generator, which shares the machine with the edge.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use futures::{stream, StreamExt};
use hdrhistogram::Histogram;
use selvage_client::{Client, ConnectOptions, Handle, Inbound, Transport};
use selvage_shared::{ChannelId, Event, Format};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::deployment::{own_cpu_seconds, Deployment, DeploymentArgs, Scrape};
use crate::lean::{self, WireFormat, Ws};
use crate::report::{latency_histogram, Latency};
use crate::seed::{person_name, Member};
use crate::sends::parse_duration;

/// Deliveries per second the design asks of one edge, saturated (ARCHITECTURE §6).
pub const TARGET_SATURATED: f64 = 1_500_000.0;
/// Delivery p99 the design allows at 1,000,000 deliveries/s, in ms (ARCHITECTURE §6).
pub const TARGET_P99_MS: f64 = 50.0;

/// Read buffer of a lean subscriber: tungstenite zero-fills it before every read, and a read
/// finds a few frames of a few hundred bytes waiting, so it is far below the 128 KiB default.
const SUBSCRIBER_READ_BUFFER: usize = 4 * 1024;

/// Sessions being opened at once.
const CONNECT_CONCURRENCY: usize = 64;

/// Which client the subscribers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClientKind {
    /// One WebSocket stream per session, decoding only what the check needs.
    Lean,
    /// The client SDK (`selvage_client`): reader and writer tasks, full decoding.
    Sdk,
}

/// `selvage loadtest fanout` arguments.
#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Members of the channel holding a session on the edge and receiving every message.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Wire format of the subscribers' sessions.
    #[arg(long, value_enum, default_value = "msgpack")]
    pub format: WireFormat,
    /// Client the subscribers use.
    #[arg(long, value_enum, default_value = "lean")]
    pub client: ClientKind,
    /// Publishing sessions (SDK, MessagePack); sends are spread over them.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Closed loop: sends in flight at once, spread over the publishers (the edge allows 256
    /// requests in flight per session by default, so keep this ≤ 256 × publishers). 256
    /// saturate one edge on two shared cores.
    #[arg(long, default_value_t = 256)]
    pub senders: usize,
    /// Open loop: this many sends per second on a fixed schedule (deliveries/s = rate ×
    /// subscribers).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Open loop: most sends awaiting their ack at once; scheduled sends beyond it are skipped
    /// (and reported).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// How long to send for, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bytes of text per message (at least what the send timestamp takes).
    #[arg(long, default_value_t = 64)]
    pub text_bytes: usize,
    /// How long to wait after sending for every subscriber to receive every acked message.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Checks one subscriber's deliveries: each `seq` exactly once, in increasing order, and (at
/// the end) every acknowledged one present. Keeps runs of consecutive seqs, so a gap-free
/// stream costs one range whatever its length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqChecker {
    /// Received seqs as sorted, disjoint, non-adjacent inclusive ranges.
    ranges: Vec<(u64, u64)>,
    /// Highest seq received.
    last: u64,
    /// Seqs received again.
    pub duplicates: u64,
    /// Seqs received after a higher one (first time).
    pub out_of_order: u64,
}

impl SeqChecker {
    /// Records one delivery.
    pub fn observe(&mut self, seq: u64) {
        if seq > self.last {
            self.last = seq;
            match self.ranges.last_mut() {
                Some(run) if run.1 + 1 == seq => run.1 = seq,
                _ => self.ranges.push((seq, seq)),
            }
        } else if self.contains(seq) {
            self.duplicates += 1;
        } else {
            self.out_of_order += 1;
            self.insert(seq);
        }
    }

    /// Whether `seq` was received.
    pub fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < seq);
        self.ranges.get(i).is_some_and(|r| r.0 <= seq)
    }

    /// Highest seq received (0 for none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Seqs received, each counted once.
    pub fn distinct(&self) -> u64 {
        self.ranges.iter().map(|r| r.1 - r.0 + 1).sum()
    }

    /// How many of `acked` (sorted ascending) were not received.
    pub fn missing(&self, acked: &[u64]) -> u64 {
        acked.iter().filter(|&&s| !self.contains(s)).count() as u64
    }

    fn insert(&mut self, seq: u64) {
        let i = self.ranges.partition_point(|r| r.1 < seq);
        let joins_prev = i > 0 && self.ranges[i - 1].1 + 1 == seq;
        let joins_next = i < self.ranges.len() && self.ranges[i].0 == seq + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = seq,
            (false, true) => self.ranges[i].0 = seq,
            (false, false) => self.ranges.insert(i, (seq, seq)),
        }
    }
}

/// The fields of a JSON server frame a subscriber needs; everything else is skipped.
#[derive(Deserialize)]
struct Delivery<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

/// A message event's `seq` and send time (from its text) if `bytes` is one in `channel`.
fn message_in(bytes: &[u8], format: Format, channel: &str) -> Option<(u64, Option<u64>)> {
    match format {
        Format::Json => {
            let d: Delivery = serde_json::from_slice(bytes).ok()?;
            if d.kind != "message" || d.channel.as_deref() != Some(channel) {
                return None;
            }
            Some((d.seq?, sent_at(d.text?.as_bytes())))
        }
        Format::MsgPack => msgpack_message_in(bytes, channel.as_bytes()),
    }
}

/// [`message_in`] for MessagePack, reading the frame's top-level map just far enough: keys and
/// the four values needed are compared as bytes, everything else is stepped over unread. (A
/// serde decoder would validate every string of every frame as UTF-8, which was a fifth of the
/// load generator's CPU at a million deliveries a second.) Anything unexpected is `None`.
fn msgpack_message_in(bytes: &[u8], channel: &[u8]) -> Option<(u64, Option<u64>)> {
    let mut scan = Scan { bytes, pos: 0 };
    let (mut message, mut in_channel, mut seq, mut sent) = (false, false, None, None);
    for _ in 0..scan.map_len()? {
        match scan.str()? {
            b"type" => message = scan.str()? == b"message",
            b"channel" => in_channel = scan.str()? == channel,
            b"seq" => seq = Some(scan.uint()?),
            b"text" => sent = sent_at(scan.str()?),
            _ => scan.skip(0)?,
        }
    }
    if !(message && in_channel) {
        return None;
    }
    Some((seq?, sent))
}

/// A read position in MessagePack bytes; every read checks bounds and fails with `None`.
struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let taken = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    /// A big-endian unsigned integer of `n` bytes.
    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0, |acc, &b| acc << 8 | u64::from(b)))
    }

    fn len(&mut self, n: usize) -> Option<usize> {
        usize::try_from(self.be(n)?).ok()
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            m @ 0x80..=0x8f => Some(usize::from(m & 0x0f)),
            0xde => self.len(2),
            0xdf => self.len(4),
            _ => None,
        }
    }

    fn str(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => self.len(1)?,
            0xda => self.len(2)?,
            0xdb => self.len(4)?,
            _ => return None,
        };
        self.take(len)
    }

    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            m @ 0x00..=0x7f => Some(u64::from(m)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    /// Steps over one value of any type, nested at most 32 deep.
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > 32 {
            return None;
        }
        let (bytes, values) = match self.byte()? {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            m @ 0x80..=0x8f => (0, 2 * usize::from(m & 0x0f)),
            m @ 0x90..=0x9f => (0, usize::from(m & 0x0f)),
            m @ 0xa0..=0xbf => (usize::from(m & 0x1f), 0),
            0xc4 | 0xd9 => (self.len(1)?, 0),
            0xc5 | 0xda => (self.len(2)?, 0),
            0xc6 | 0xdb => (self.len(4)?, 0),
            0xc7 => (self.len(1)? + 1, 0),
            0xc8 => (self.len(2)? + 1, 0),
            0xc9 => (self.len(4)? + 1, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 | 0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xd6 => (5, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, self.len(2)?),
            0xdd => (0, self.len(4)?),
            0xde => (0, 2 * self.len(2)?),
            0xdf => (0, 2 * self.len(4)?),
            0xc1 => return None,
        };
        self.take(bytes)?;
        for _ in 0..values {
            self.skip(depth + 1)?;
        }
        Some(())
    }
}

/// The send time (µs since the run began) a message text starts with: its leading digits.
fn sent_at(text: &[u8]) -> Option<u64> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    Some(text[..digits].iter().fold(0, |acc, &d| acc * 10 + u64::from(d - b'0')))
}

/// A message text: the send time, who sent it, and padding to `bytes`.
fn message_text(sent_at_us: u64, publisher: usize, n: u64, bytes: usize) -> String {
    let mut text = format!("{sent_at_us} p{publisher}/{n} ");
    while text.len() < bytes {
        text.push('x');
    }
    text
}

/// A subscriber's latency histogram, at two significant digits (1 % resolution): a
/// three-digit one per subscriber would spread every delivery's counter over more memory than
/// the CPU caches hold, with a thousand subscribers recording a million deliveries a second.
fn delivery_histogram() -> Histogram<u64> {
    // The bounds and precision are constants within hdrhistogram's supported range.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// What a subscriber shares while it runs.
#[derive(Default)]
struct Live {
    delivered: AtomicU64,
    last_seq: AtomicU64,
}

/// Latencies the subscribers share: a thousand subscribers each with a histogram of its own
/// spread every recording over ~20 MB and cost the load generator cache misses on every
/// delivery. A subscriber collects a few latencies and adds them to one of these at a time.
struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

/// Shared latency histograms (see [`Latencies`]).
const LATENCY_SHARDS: usize = 16;

/// Latencies a subscriber collects before adding them to its shared histogram.
const LATENCY_BATCH: usize = 64;

impl Latencies {
    fn new() -> Arc<Latencies> {
        Arc::new(Latencies { shards: (0..LATENCY_SHARDS).map(|_| Mutex::new(delivery_histogram())).collect() })
    }

    /// Adds `batch` to shard `shard` and empties it.
    fn add(&self, shard: usize, batch: &mut Vec<u64>) {
        if batch.is_empty() {
            return;
        }
        let mut h = self.shards[shard % self.shards.len()].lock().unwrap_or_else(|p| p.into_inner());
        for &us in batch.iter() {
            let _ = h.record(us);
        }
        batch.clear();
    }

    /// Everything recorded, merged.
    fn merged(&self) -> Result<Histogram<u64>> {
        let mut all = latency_histogram();
        for shard in &self.shards {
            all.add(&*shard.lock().unwrap_or_else(|p| p.into_inner()))?;
        }
        Ok(all)
    }
}

/// What a subscriber saw.
struct Received {
    /// Latencies not yet added to the shared histograms.
    pending: Vec<u64>,
    checker: SeqChecker,
    /// Why the session ended before the run did, if it did.
    lost: Option<String>,
}

/// Everything a subscriber task needs.
#[derive(Clone)]
struct Subscription {
    channel: Arc<str>,
    format: Format,
    epoch: Instant,
    /// Where its latencies go, and which of the shards.
    latencies: Arc<Latencies>,
    shard: usize,
    live: Arc<Live>,
    stop: CancellationToken,
}

impl Subscription {
    /// Records delivery `seq`, sent at `sent` (µs since the epoch), received at `now`.
    fn record(&self, seq: u64, sent: Option<u64>, now: u64, received: &mut Received) {
        if let Some(sent) = sent {
            received.pending.push(now.saturating_sub(sent).max(1));
            if received.pending.len() >= LATENCY_BATCH {
                self.latencies.add(self.shard, &mut received.pending);
            }
        }
        received.checker.observe(seq);
        self.live.delivered.fetch_add(1, Ordering::Relaxed);
        self.live.last_seq.store(received.checker.last(), Ordering::Relaxed);
    }

    /// Microseconds since the run's epoch.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn received(&self) -> Received {
        Received { pending: Vec::with_capacity(LATENCY_BATCH), checker: SeqChecker::default(), lost: None }
    }

    /// Adds what is left of `received`'s latencies to the shared histograms.
    fn finish(&self, mut received: Received) -> Received {
        self.latencies.add(self.shard, &mut received.pending);
        received
    }

    async fn lean(self, mut ws: Ws) -> Received {
        let mut received = self.received();
        // One wait for the stop for the whole session, not one made and dropped per frame.
        let stopped = self.stop.clone().cancelled_owned();
        tokio::pin!(stopped);
        'session: loop {
            // Frames first: the stop is only looked at when none is waiting, which is cheaper per
            // frame, and it comes after the last frame anyway.
            let mut next = tokio::select! {
                biased;
                next = ws.next() => next,
                _ = &mut stopped => break,
            };
            // Every frame already read when this task woke arrived by now: one clock reading
            // for all of them.
            let now = self.now();
            loop {
                let bytes = match &next {
                    Some(Ok(Message::Binary(b))) => &b[..],
                    Some(Ok(Message::Text(t))) => t.as_bytes(),
                    Some(Ok(Message::Close(frame))) => {
                        received.lost = Some(format!("closed by the edge: {frame:?}"));
                        break 'session;
                    }
                    Some(Ok(_)) => &[][..],
                    Some(Err(e)) => {
                        received.lost = Some(format!("read failed: {e}"));
                        break 'session;
                    }
                    None => {
                        received.lost = Some("the connection ended".into());
                        break 'session;
                    }
                };
                if let Some((seq, sent)) = message_in(bytes, self.format, &self.channel) {
                    self.record(seq, sent, now, &mut received);
                }
                // The next frame if it is already here (in the buffer or the socket), else
                // back to waiting.
                match futures::FutureExt::now_or_never(ws.next()) {
                    Some(more) => next = more,
                    None => break,
                }
            }
        }
        lean::start_close(&mut ws).await;
        self.finish(received)
    }

    async fn sdk(self, mut client: Client) -> Received {
        let mut received = self.received();
        let stopped = self.stop.clone().cancelled_owned();
        tokio::pin!(stopped);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut stopped => break,
                next = client.next_event(Duration::from_secs(3600)) => next,
            };
            match next {
                Ok(Some(Inbound::Event(frame))) => {
                    if let Event::Message(m) = frame.event {
                        if m.channel.as_str() == &*self.channel {
                            self.record(m.seq, sent_at(m.text.as_bytes()), self.now(), &mut received);
                        }
                    }
                }
                Ok(Some(Inbound::Closed { code, reason })) => {
                    received.lost = Some(format!("closed by the edge: {code:?} {reason}"));
                    break;
                }
                Ok(Some(other)) => {
                    received.lost = Some(format!("unexpected {other:?}"));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    received.lost = Some(e.to_string());
                    break;
                }
            }
        }
        client.close().await;
        self.finish(received)
    }
}

/// What the publishers did.
#[derive(Default)]
struct Published {
    acked: Vec<u64>,
    ack_latency: Option<Histogram<u64>>,
    errors: HashMap<String, u64>,
    skipped: u64,
}

/// Correctness over all subscribers.
#[derive(Debug, Default, Serialize)]
pub struct Violations {
    /// Acknowledged messages a subscriber never received (summed over subscribers).
    pub missing: u64,
    /// Messages a subscriber received more than once.
    pub duplicates: u64,
    /// Messages a subscriber received after a higher seq.
    pub out_of_order: u64,
    /// Subscribers whose session ended before the run did.
    pub lost_sessions: u64,
    /// Why, for the first few.
    pub lost_reasons: Vec<String>,
}

impl Violations {
    /// Whether anything went wrong.
    pub fn any(&self) -> bool {
        self.missing + self.duplicates + self.out_of_order + self.lost_sessions > 0
    }
}

/// CPU seconds per second of the window (1.0 = one core busy).
#[derive(Debug, Serialize)]
pub struct CpuUse {
    /// This process (the load generator; in process also the origin and the edge).
    pub this_process: f64,
    /// The edge process, when it is another one.
    pub edge: Option<f64>,
    /// The origin process, when it is another one.
    pub origin: Option<f64>,
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    /// `in-process` or `remote`.
    pub target: String,
    /// `closed-loop` or `open-loop`.
    pub mode: String,
    /// `lean` or `sdk`.
    pub client: String,
    /// Subscribers' wire format.
    pub format: String,
    /// Subscribers.
    pub subscribers: usize,
    /// Publishing sessions.
    pub publishers: usize,
    /// Closed loop: sends in flight.
    pub senders: Option<usize>,
    /// Scheduled sends per second (open loop).
    pub rate: Option<u64>,
    /// Seconds of sending.
    pub seconds: f64,
    /// Sends acknowledged.
    pub acked: u64,
    /// Acknowledged sends per second.
    pub acked_per_sec: f64,
    /// Message events received by all subscribers during the sending window.
    pub deliveries: u64,
    /// `deliveries` ÷ `seconds`.
    pub deliveries_per_sec: f64,
    /// Send (open loop: scheduled send) → received by a subscriber.
    pub delivery_latency: Latency,
    /// Send → ack, at the publisher.
    pub ack_latency: Latency,
    /// Open loop: scheduled sends not started because `--max-in-flight` were awaiting acks.
    pub skipped: u64,
    /// Failed sends by error.
    pub errors: HashMap<String, u64>,
    /// Seconds after the window until every subscriber had every acked message.
    pub drain_seconds: f64,
    /// CPU used during the window.
    pub cpu: CpuUse,
    /// Correctness (all zero, or the run fails).
    pub violations: Violations,
}

/// Runs the scenario and prints the report; fails when a check failed.
pub async fn run(args: FanoutArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, print_report)?;
    let v = &report.violations;
    if v.any() {
        bail!(
            "fan-out check failed: {} missing, {} duplicated, {} out of order, {} sessions lost",
            v.missing,
            v.duplicates,
            v.out_of_order,
            v.lost_sessions
        );
    }
    Ok(())
}

/// Seeds, connects, sends for the configured duration, drains, checks and summarises.
pub async fn measure(args: &FanoutArgs) -> Result<FanoutReport> {
    if args.subscribers == 0 || args.publishers == 0 || args.senders == 0 || args.max_in_flight == 0 {
        bail!("--subscribers, --publishers, --senders and --max-in-flight must be at least 1");
    }
    if args.rate == Some(0) {
        bail!("--rate must be at least 1");
    }
    let deployment = Deployment::start(&args.deployment).await?;
    let result = measure_on(args, &deployment).await;
    deployment.stop().await;
    result
}

async fn measure_on(args: &FanoutArgs, deployment: &Deployment) -> Result<FanoutReport> {
    let api = &deployment.api;
    eprintln!("seeding {} subscribers and {} publishers ...", args.subscribers, args.publishers);
    let ws = api
        .create_workspace(&deployment.operator_key, &format!("loadtest fanout {}", std::process::id()), "admin")
        .await?;
    let people = (0..args.subscribers + args.publishers)
        .map(|i| {
            let handle =
                if i < args.subscribers { format!("s{i:06}") } else { format!("p{:04}", i - args.subscribers) };
            (handle, person_name(i))
        })
        .collect();
    let mut members = api.create_users(&ws.admin, people).await?;
    let publishers: Vec<Member> = members.split_off(args.subscribers);
    let subscribers = members;
    let channel =
        api.create_channels(&ws.admin, vec![("fanout".into(), false)]).await?.pop().context("no channel created")?;
    let pairs = subscribers.iter().chain(&publishers).map(|m| (channel.id.clone(), m.user.id.clone())).collect();
    api.add_members(&ws.admin, pairs).await?;

    let addr: SocketAddr = tokio::net::lookup_host(&deployment.edge_addr)
        .await?
        .next()
        .with_context(|| format!("{} does not resolve", deployment.edge_addr))?;
    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let format = args.format.format();
    let latencies = Latencies::new();
    eprintln!("connecting {} subscribers ({:?}, {format}) ...", args.subscribers, args.client);
    let connected = stream::iter(subscribers.iter().enumerate().map(|(i, m)| {
        let subscription = Subscription {
            channel: Arc::from(channel.id.as_str()),
            format,
            epoch,
            latencies: latencies.clone(),
            shard: i,
            live: Arc::new(Live::default()),
            stop: stop.clone(),
        };
        connect_subscriber(addr, m.token.clone(), args.client, subscription)
    }))
    .buffer_unordered(CONNECT_CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    let mut lives = Vec::with_capacity(connected.len());
    let mut tasks = Vec::with_capacity(connected.len());
    for c in connected {
        let (live, task) = c?;
        lives.push(live);
        tasks.push(task);
    }
    let mut handles = Vec::with_capacity(publishers.len());
    let mut publisher_clients = Vec::with_capacity(publishers.len());
    for p in &publishers {
        let client = Client::connect(ConnectOptions::new(Transport::WsMsgpack, addr.to_string(), p.token.clone()))
            .await
            .context("a publisher could not connect")?;
        handles.push(client.handle());
        // Publishers are members too: their own events must be read, or the edge would count
        // them as slow consumers and close them.
        publisher_clients.push(tokio::spawn(drain_events(client)));
    }

    eprintln!(
        "sending for {:.1} s ({}) ...",
        args.duration.as_secs_f64(),
        args.rate.map_or("closed loop".to_string(), |r| format!("{r}/s"))
    );
    let cpu_before = (own_cpu_seconds(), edge_cpu(deployment).await, origin_cpu(deployment).await);
    let progress = progress(lives.clone(), args.duration);
    let started = Instant::now();
    let deadline = started + args.duration;
    let publishing = {
        let channel = channel.id.clone();
        let text_bytes = args.text_bytes;
        let (rate, cap, senders) = (args.rate, args.max_in_flight, args.senders);
        tokio::spawn(async move {
            match rate {
                None => closed_loop(handles, senders, channel, epoch, deadline, text_bytes).await,
                Some(rate) => open_loop(handles, channel, epoch, deadline, text_bytes, rate, cap).await,
            }
        })
    };
    tokio::time::sleep_until(deadline.into()).await;
    let seconds = started.elapsed().as_secs_f64();
    let deliveries: u64 = lives.iter().map(|l| l.delivered.load(Ordering::Relaxed)).sum();
    let cpu_after = (own_cpu_seconds(), edge_cpu(deployment).await, origin_cpu(deployment).await);
    progress.abort();
    let mut published = publishing.await?;
    published.acked.sort_unstable();

    // Drain: every live subscriber holds the highest acked seq, or the timeout passes.
    let drain_started = Instant::now();
    let highest = published.acked.last().copied().unwrap_or(0);
    while drain_started.elapsed() < args.drain_timeout {
        let behind = lives
            .iter()
            .zip(&tasks)
            .filter(|(l, t)| !t.is_finished() && l.last_seq.load(Ordering::Relaxed) < highest)
            .count();
        if behind == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    stop.cancel();
    let mut violations = Violations::default();
    for task in tasks {
        let received = task.await?;
        violations.missing += received.checker.missing(&published.acked);
        violations.duplicates += received.checker.duplicates;
        violations.out_of_order += received.checker.out_of_order;
        if let Some(why) = received.lost {
            violations.lost_sessions += 1;
            if violations.lost_reasons.len() < 5 {
                violations.lost_reasons.push(why);
            }
        }
    }
    let latency = latencies.merged()?;
    for p in publisher_clients {
        p.abort();
    }
    let acked = published.acked.len() as u64;
    let per_sec = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / seconds);
    let remote = !deployment.is_in_process();
    Ok(FanoutReport {
        target: deployment.target_name().into(),
        mode: if args.rate.is_some() { "open-loop" } else { "closed-loop" }.into(),
        client: format!("{:?}", args.client).to_lowercase(),
        format: format.to_string(),
        subscribers: args.subscribers,
        publishers: args.publishers,
        senders: args.rate.is_none().then_some(args.senders),
        rate: args.rate,
        seconds,
        acked,
        acked_per_sec: acked as f64 / seconds,
        deliveries,
        deliveries_per_sec: deliveries as f64 / seconds,
        delivery_latency: Latency::of(&latency),
        ack_latency: Latency::of(&published.ack_latency.unwrap_or_else(latency_histogram)),
        skipped: published.skipped,
        errors: published.errors,
        drain_seconds,
        cpu: CpuUse {
            this_process: (cpu_after.0 - cpu_before.0) / seconds,
            edge: per_sec(cpu_before.1, cpu_after.1).filter(|_| remote),
            origin: per_sec(cpu_before.2, cpu_after.2).filter(|_| remote),
        },
        violations,
    })
}

async fn edge_cpu(deployment: &Deployment) -> Option<f64> {
    deployment.edge_metrics().await.ok().as_ref().and_then(|s: &Scrape| s.sum("process_cpu_seconds_total"))
}

async fn origin_cpu(deployment: &Deployment) -> Option<f64> {
    deployment.origin_metrics().await.ok().as_ref().and_then(|s: &Scrape| s.sum("process_cpu_seconds_total"))
}

type SubscriberTask = tokio::task::JoinHandle<Received>;

/// Opens one subscriber's session, checks its `hello`, and starts reading.
async fn connect_subscriber(
    addr: SocketAddr,
    token: String,
    client: ClientKind,
    subscription: Subscription,
) -> Result<(Arc<Live>, SubscriberTask)> {
    let live = subscription.live.clone();
    let format = subscription.format;
    let task = match client {
        ClientKind::Lean => {
            let mut ws = lean::dial(addr, None, &token, format, lean::ws_config(SUBSCRIBER_READ_BUFFER)).await?;
            lean::expect_hello(&lean::next_data(&mut ws).await?, format)?;
            tokio::spawn(subscription.lean(ws))
        }
        ClientKind::Sdk => {
            let transport = if format == Format::Json { Transport::WsJson } else { Transport::WsMsgpack };
            let client = Client::connect(ConnectOptions::new(transport, addr.to_string(), token))
                .await
                .context("a subscriber could not connect")?;
            tokio::spawn(subscription.sdk(client))
        }
    };
    Ok((live, task))
}

/// Reads and drops a publisher's events until its connection ends.
async fn drain_events(mut client: Client) {
    while client.next_event(Duration::from_secs(3600)).await.is_ok() {}
}

/// One send and its outcome, recorded in `published`.
async fn publish(handle: &Handle, channel: &ChannelId, text: &str, id: &str) -> Result<u64, String> {
    handle.send(channel, text, id, None).await.map(|ack| ack.seq).map_err(|e| match e.code() {
        Some(code) => code.to_string(),
        None => e.to_string().split(':').next().unwrap_or("error").to_string(),
    })
}

async fn closed_loop(
    handles: Vec<Handle>,
    senders: usize,
    channel: ChannelId,
    epoch: Instant,
    deadline: Instant,
    text_bytes: usize,
) -> Published {
    let run = run_id();
    let tasks: Vec<_> = (0..senders)
        .map(|p| {
            let handle = handles[p % handles.len()].clone();
            let channel = channel.clone();
            let run = run.clone();
            tokio::spawn(async move {
                let mut out = Published { ack_latency: Some(latency_histogram()), ..Published::default() };
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let start = Instant::now();
                    let text = message_text(start.duration_since(epoch).as_micros() as u64, p, n, text_bytes);
                    match publish(&handle, &channel, &text, &format!("{run}-{p}-{n}")).await {
                        Ok(seq) => {
                            out.acked.push(seq);
                            if let Some(h) = out.ack_latency.as_mut() {
                                let _ = h.record(start.elapsed().as_micros().max(1) as u64);
                            }
                        }
                        Err(code) => *out.errors.entry(code).or_default() += 1,
                    }
                    if handle.is_closed() {
                        // The edge closed this publisher (e.g. as a slow consumer of its own
                        // events); its senders stop rather than fail a million times.
                        *out.errors.entry("publisher closed by the edge".into()).or_default() += 1;
                        break;
                    }
                }
                out
            })
        })
        .collect();
    let mut total = Published { ack_latency: Some(latency_histogram()), ..Published::default() };
    for task in tasks {
        if let Ok(p) = task.await {
            merge(&mut total, p);
        }
    }
    total
}

async fn open_loop(
    handles: Vec<Handle>,
    channel: ChannelId,
    epoch: Instant,
    deadline: Instant,
    text_bytes: usize,
    rate: u64,
    cap: usize,
) -> Published {
    let run = run_id();
    let shared = Arc::new(Mutex::new(Published { ack_latency: Some(latency_histogram()), ..Published::default() }));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(cap));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut skipped = 0;
    for i in 0u64.. {
        let scheduled = start + interval.mul_f64(i as f64);
        if scheduled.into_std() >= deadline {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let p = (i % handles.len() as u64) as usize;
        let handle = handles[p].clone();
        let channel = channel.clone();
        let shared = shared.clone();
        let run = run.clone();
        let sent_at = scheduled.into_std().saturating_duration_since(epoch).as_micros() as u64;
        tasks.spawn(async move {
            let text = message_text(sent_at, p, i, text_bytes);
            let outcome = publish(&handle, &channel, &text, &format!("{run}-{i}")).await;
            drop(permit);
            let Ok(mut out) = shared.lock() else { return };
            match outcome {
                Ok(seq) => {
                    out.acked.push(seq);
                    if let Some(h) = out.ack_latency.as_mut() {
                        let _ = h.record(scheduled.elapsed().as_micros().max(1) as u64);
                    }
                }
                Err(code) => *out.errors.entry(code).or_default() += 1,
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut out = shared.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
    out.skipped = skipped;
    out
}

fn merge(total: &mut Published, p: Published) {
    total.acked.extend(p.acked);
    if let (Some(t), Some(h)) = (total.ack_latency.as_mut(), p.ack_latency.as_ref()) {
        let _ = t.add(h);
    }
    for (code, n) in p.errors {
        *total.errors.entry(code).or_default() += n;
    }
    total.skipped += p.skipped;
}

/// Distinguishes this run's `client_msg_id`s from earlier runs' in the same channel.
fn run_id() -> Arc<str> {
    Arc::from(format!("{:x}{:x}", std::process::id(), selvage_origin::now_ms()))
}

/// Prints deliveries/s of the last second on stderr until aborted.
fn progress(lives: Vec<Arc<Live>>, duration: Duration) -> tokio::task::JoinHandle<()> {
    crate::report::progress(duration, "deliveries/s", move || {
        lives.iter().map(|l| l.delivered.load(Ordering::Relaxed)).sum()
    })
}

fn print_report(r: &FanoutReport) {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    println!(
        "selvage loadtest fanout — {} {}, {} subscribers ({} client, {}), {} publishers{}",
        r.target,
        r.mode,
        r.subscribers,
        r.client,
        r.format,
        r.publishers,
        r.senders.map_or(String::new(), |s| format!(" with {s} sends in flight"))
    );
    if let Some(rate) = r.rate {
        println!("  scheduled rate    {rate} sends/s = {} deliveries/s", rate * r.subscribers as u64);
    }
    println!("  acked             {} in {:.1} s = {:.0} sends/s", r.acked, r.seconds, r.acked_per_sec);
    println!("  deliveries        {} = {:.0} deliveries/s", r.deliveries, r.deliveries_per_sec);
    println!("  delivery latency  {}", r.delivery_latency);
    println!("  ack latency       {}", r.ack_latency);
    if r.skipped > 0 {
        println!("  skipped           {} (in-flight cap reached: the system fell behind the schedule)", r.skipped);
    }
    if !r.errors.is_empty() {
        println!("  errors            {:?}", r.errors);
    }
    println!("  drained in        {:.2} s after the window", r.drain_seconds);
    let cores = |c: Option<f64>| c.map_or("—".to_string(), |c| format!("{c:.2}"));
    println!(
        "  CPU (cores)       this process {:.2}, edge {}, origin {}",
        r.cpu.this_process,
        cores(r.cpu.edge),
        cores(r.cpu.origin)
    );
    let v = &r.violations;
    if v.any() {
        println!(
            "  check             FAILED: {} missing, {} duplicated, {} out of order, {} sessions lost {:?}",
            v.missing, v.duplicates, v.out_of_order, v.lost_sessions, v.lost_reasons
        );
    } else {
        println!("  check             ok: every subscriber got every acked message once, in seq order");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(seqs: &[u64]) -> SeqChecker {
        let mut c = SeqChecker::default();
        for &s in seqs {
            c.observe(s);
        }
        c
    }

    #[test]
    fn an_in_order_stream_is_one_run() {
        let c = check(&[1, 2, 3, 4, 5]);
        assert_eq!(c.ranges, vec![(1, 5)]);
        assert_eq!((c.duplicates, c.out_of_order, c.missing(&[1, 2, 3, 4, 5])), (0, 0, 0));
        assert_eq!(c.distinct(), 5);
    }

    #[test]
    fn gaps_are_missing_only_when_acked() {
        let c = check(&[1, 2, 5, 6, 9]);
        assert_eq!(c.ranges, vec![(1, 2), (5, 6), (9, 9)]);
        assert_eq!(c.missing(&[1, 2, 3, 5, 6, 9]), 1, "3 was acked and never came");
        assert_eq!(c.missing(&[1, 2, 5, 6]), 0, "4, 7, 8 were never acked");
        assert_eq!(c.missing(&[10]), 1, "nothing after 9 arrived");
        assert_eq!((c.duplicates, c.out_of_order), (0, 0));
    }

    #[test]
    fn duplicates_are_counted_wherever_they_fall() {
        let c = check(&[1, 2, 2, 3, 1, 3]);
        assert_eq!(c.duplicates, 3);
        assert_eq!(c.out_of_order, 0);
        assert_eq!(c.missing(&[1, 2, 3]), 0);
    }

    #[test]
    fn late_seqs_are_out_of_order_and_fill_their_gap() {
        let c = check(&[1, 3, 2, 6, 4, 5]);
        assert_eq!(c.out_of_order, 3, "2, 4 and 5 came after a higher seq");
        assert_eq!(c.duplicates, 0);
        assert_eq!(c.ranges, vec![(1, 6)], "runs merge as the gaps fill");
        assert_eq!(c.missing(&[1, 2, 3, 4, 5, 6]), 0);
        let again = check(&[1, 3, 2, 2]);
        assert_eq!((again.out_of_order, again.duplicates), (1, 1), "a late seq seen twice is a duplicate");
        let mid = check(&[1, 10, 5, 7, 6]);
        assert_eq!(mid.ranges, vec![(1, 1), (5, 7), (10, 10)]);
        assert_eq!(mid.out_of_order, 3);
        assert_eq!(mid.missing(&(1..=10).collect::<Vec<_>>()), 5);
    }

    #[test]
    fn nothing_received_misses_everything() {
        let c = SeqChecker::default();
        assert_eq!(c.missing(&[1, 2, 3]), 3);
        assert!(!c.contains(0));
    }

    #[test]
    fn message_events_are_found_in_both_formats() {
        use selvage_shared::{encode_event, Cursor, Message};
        let channel = ChannelId::new_unchecked("C1");
        let text = message_text(123_456, 3, 9, 40);
        assert_eq!(text.len(), 40);
        assert_eq!(sent_at(text.as_bytes()), Some(123_456));
        assert_eq!(sent_at(b"p1/2 no time"), None);
        let user = selvage_shared::UserId::new_unchecked("U1");
        let event = Event::Message(Message {
            client_msg_id: "m".into(),
            ..Message::new(channel.clone(), 7, 1, user, text.clone())
        });
        for format in [Format::Json, Format::MsgPack] {
            let bytes = encode_event(&Cursor::zero(), &event, format);
            assert_eq!(message_in(&bytes, format, "C1"), Some((7, Some(123_456))), "{format}");
            assert!(message_in(&bytes, format, "C2").is_none(), "another channel");
            let typing = Event::Typing { channel: channel.clone(), user: selvage_shared::UserId::new_unchecked("U1") };
            assert!(message_in(&encode_event(&Cursor::zero(), &typing, format), format, "C1").is_none());
        }
    }

    #[test]
    fn the_msgpack_scanner_steps_over_every_kind_of_value() {
        #[derive(Serialize)]
        struct Frame<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            nested: BTreeMap<&'a str, Vec<Option<f64>>>,
            #[serde(with = "serde_bytes_like")]
            blob: Vec<u8>,
            negative: i64,
            big: u64,
            flag: bool,
            long: String,
            channel: &'a str,
            seq: u64,
            text: &'a str,
        }
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b)
            }
        }
        use std::collections::BTreeMap;
        let frame = Frame {
            kind: "message",
            nested: BTreeMap::from([("a", vec![Some(1.5), None]), ("b", vec![])]),
            blob: vec![0xc1; 300],
            negative: -70_000,
            big: u64::MAX,
            flag: true,
            long: "é".repeat(200),
            channel: "C1",
            seq: 70_000,
            text: "42 hello",
        };
        let bytes = rmp_serde::to_vec_named(&frame).unwrap();
        assert_eq!(msgpack_message_in(&bytes, b"C1"), Some((70_000, Some(42))));
        for cut in 0..bytes.len() {
            assert_eq!(msgpack_message_in(&bytes[..cut], b"C1"), None, "truncated at {cut}");
        }
        assert_eq!(msgpack_message_in(&[0xc1], b"C1"), None);
        assert_eq!(msgpack_message_in(&[0xdf, 0xff, 0xff, 0xff, 0xff], b"C1"), None, "a huge map runs out of bytes");
    }
}
