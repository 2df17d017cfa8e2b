//! The `nats-fanout` scenario: the workload of [`crate::fanout`] run against nats-server over
//! WebSocket instead of a Selvage edge, so the two can be compared on one machine in one run
//! (`docs/bench/nats-fanout.sh`, docs/BENCHMARKS.md "Edge → d").
//!
//! `--subscribers` WebSocket connections each speak the NATS text protocol: after the server's
//! `INFO`, `CONNECT {"verbose":false,"pedantic":false,"protocol":1}`, `SUB room 1`, then a
//! `PING` whose `PONG` says the subscription is in place. `--publishers` more connections
//! `PUB room <len>` messages of `--payload-bytes`, each starting with its send time (open loop:
//! its *scheduled* time) in µs since the run began and the publisher's own sequence number:
//! - **closed loop** (no `--rate`): NATS has no per-message ack, so the closest equivalent of
//!   fanout's "send, await the ack" is a `PING` after every `--flush-every` messages, whose
//!   `PONG` says the server has processed all before it: each publisher keeps at most
//!   `--in-flight` messages not yet flushed that way (4 × 64 = fanout's 256 sends in flight);
//! - **open loop** (`--rate R`): R messages per second on a fixed schedule, spread over the
//!   publishers, each frame followed by a `PING`; sends beyond `--max-in-flight` unflushed ones
//!   are skipped and reported.
//!
//! Messages due together go in one WebSocket frame, as a NATS client's buffered writer would
//! send them. Subscribers parse a byte stream ([`Parser`]), since a WebSocket frame may hold
//! several protocol lines or part of one, and record send → delivered latency and, per
//! publisher, that every sequence number arrived exactly once and in order. Core NATS is
//! at-most-once (a subscriber that falls behind is disconnected as a slow consumer, and nothing
//! is redelivered), so losses are reported, not treated as a failed run.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::stream::{SplitSink, SplitStream};
use futures::{stream, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::deployment::own_cpu_seconds;
use crate::fanout::{SeqChecker, Violations};
use crate::lean::{self, Ws};
use crate::report::{latency_histogram, Latency};
use crate::sends::parse_duration;

/// The subject every message is published on and every subscriber subscribes to.
const SUBJECT: &str = "room";

/// Read buffer of a subscriber's WebSocket (as fanout's lean subscribers).
const SUBSCRIBER_READ_BUFFER: usize = 4 * 1024;

/// Connections being opened at once.
const CONNECT_CONCURRENCY: usize = 64;

/// Longest control line accepted before a protocol error (nats-server's `max_control_line`
/// default is 4 KiB; an `INFO` can be longer, so allow more).
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// How long the end-of-run flush of a publisher may take.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// `selvage loadtest nats-fanout` arguments.
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// nats-server's WebSocket listener (`websocket { no_tls: true }`), e.g. ws://127.0.0.1:8080.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub nats: String,
    /// Connections subscribed to the subject, each receiving every message.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishing connections; sends are spread over them.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Closed loop: most messages a publisher has sent and not yet seen flushed by a
    /// `PING`/`PONG` round trip (NATS's closest equivalent of awaiting an ack).
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// A `PING` after this many messages (closed loop); also how many go in one frame.
    #[arg(long, default_value_t = 16)]
    pub flush_every: usize,
    /// Open loop: this many messages per second on a fixed schedule (deliveries/s = rate ×
    /// subscribers).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Open loop: most unflushed messages at once, over all publishers; scheduled sends
    /// beyond it are skipped (and reported).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// How long to send for, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bytes of payload per message (at least what the send time and sequence number take).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// How long to wait after sending for every subscriber to receive every message.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// nats-server's process id, to report the CPU it used (from /proc/PID/stat).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// nats-server's monitoring address (`-m PORT`), e.g. http://127.0.0.1:8222, to report its
    /// slow-consumer count from `/varz`.
    #[arg(long)]
    pub monitor: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

// ---------------------------------------------------------------------------------------------
// The protocol, without I/O.

/// A server operation, borrowing from the bytes it was parsed from.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// `INFO {json}`.
    Info(&'a [u8]),
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload.
    Msg {
        /// Subject published to.
        subject: &'a [u8],
        /// Subscription id.
        sid: &'a [u8],
        /// Reply subject, if any.
        reply: Option<&'a [u8]>,
        /// The payload (may contain `\r\n`: its length comes first).
        payload: &'a [u8],
    },
    /// `PING`: answer `PONG`.
    Ping,
    /// `PONG`: the server processed everything sent before the matching `PING`.
    Pong,
    /// `+OK` (verbose mode only).
    Ok,
    /// `-ERR '<message>'`.
    Err(&'a [u8]),
}

/// Why a server's bytes are not the NATS protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// An operation this client does not know (`HMSG` included: it never asks for headers).
    #[error("unknown operation {0:?}")]
    UnknownOp(String),
    /// A `MSG` line whose arguments do not parse.
    #[error("malformed MSG line {0:?}")]
    BadMsg(String),
    /// A payload not followed by `\r\n`.
    #[error("payload not terminated by CRLF")]
    BadPayloadEnd,
    /// A control line longer than [`MAX_CONTROL_LINE`] without its `\r\n`.
    #[error("control line longer than {MAX_CONTROL_LINE} bytes")]
    LineTooLong,
}

/// Turns a byte stream cut anywhere (WebSocket frames split and join protocol lines) into
/// operations. Bytes of an incomplete operation are kept for the next [`Parser::push`].
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<u8>,
}

impl Parser {
    /// Parses `bytes` after whatever was pending, calling `on_op` for each complete operation.
    pub fn push(&mut self, bytes: &[u8], mut on_op: impl FnMut(Op<'_>)) -> Result<(), ProtocolError> {
        if self.pending.is_empty() {
            // The common case: parse the frame in place and keep only an incomplete tail.
            let used = parse_all(bytes, &mut on_op)?;
            self.pending.extend_from_slice(&bytes[used..]);
        } else {
            self.pending.extend_from_slice(bytes);
            let used = parse_all(&self.pending, &mut on_op)?;
            self.pending.drain(..used);
        }
        Ok(())
    }
}

/// Parses every complete operation at the start of `bytes`; returns how many bytes they took.
fn parse_all(bytes: &[u8], on_op: &mut impl FnMut(Op<'_>)) -> Result<usize, ProtocolError> {
    let mut used = 0;
    while let Some((op, len)) = parse_one(&bytes[used..])? {
        on_op(op);
        used += len;
    }
    Ok(used)
}

/// The first operation of `bytes` and its length, or `None` when it is not complete yet.
fn parse_one(bytes: &[u8]) -> Result<Option<(Op<'_>, usize)>, ProtocolError> {
    let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() > MAX_CONTROL_LINE { Err(ProtocolError::LineTooLong) } else { Ok(None) };
    };
    let line = &bytes[..eol];
    let after_line = eol + 2;
    let (name, rest) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (line, &line[line.len()..]),
    };
    let op = if name.eq_ignore_ascii_case(b"MSG") {
        let args: Vec<&[u8]> = rest.split(|b| *b == b' ' || *b == b'\t').filter(|a| !a.is_empty()).collect();
        let bad = || ProtocolError::BadMsg(String::from_utf8_lossy(line).into_owned());
        let (subject, sid, reply, len) = match args[..] {
            [subject, sid, len] => (subject, sid, None, len),
            [subject, sid, reply, len] => (subject, sid, Some(reply), len),
            _ => return Err(bad()),
        };
        let len = decimal(len).ok_or_else(bad)?;
        let end = after_line.checked_add(len).ok_or_else(bad)?;
        if bytes.len() < end + 2 {
            return Ok(None);
        }
        if &bytes[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::BadPayloadEnd);
        }
        return Ok(Some((Op::Msg { subject, sid, reply, payload: &bytes[after_line..end] }, end + 2)));
    } else if name.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if name.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if name.eq_ignore_ascii_case(b"INFO") {
        Op::Info(rest)
    } else if name.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if name.eq_ignore_ascii_case(b"-ERR") {
        Op::Err(rest)
    } else {
        return Err(ProtocolError::UnknownOp(String::from_utf8_lossy(name).into_owned()));
    };
    Ok(Some((op, after_line)))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// A non-empty run of ASCII digits as a number, if it fits.
fn decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |acc, &d| acc * 10 + usize::from(d - b'0')))
}

/// A message payload: send time (µs since the run began), publisher, its sequence number, and
/// padding to `bytes`.
pub fn payload(sent_at_us: u64, publisher: usize, seq: u64, bytes: usize) -> String {
    let mut text = format!("{sent_at_us} p{publisher}/{seq} ");
    while text.len() < bytes {
        text.push('x');
    }
    text
}

/// The send time, publisher and sequence number a [`payload`] starts with.
pub fn parse_payload(payload: &[u8]) -> Option<(u64, usize, u64)> {
    let mut parts = payload.splitn(3, |b| *b == b' ');
    let sent = decimal(parts.next()?)? as u64;
    let who = parts.next()?.strip_prefix(b"p")?;
    let slash = who.iter().position(|b| *b == b'/')?;
    Some((sent, decimal(&who[..slash])?, decimal(&who[slash + 1..])? as u64))
}

/// One `PUB` of `payload` appended to `out`.
fn push_pub(out: &mut Vec<u8>, payload: &str) {
    out.extend_from_slice(format!("PUB {SUBJECT} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b"\r\n");
}

// ---------------------------------------------------------------------------------------------
// Connections.

/// Opens a WebSocket to nats-server at `url` and says `CONNECT` after its `INFO`.
async fn dial(url: &str, addr: SocketAddr, parser: &mut Parser) -> Result<Ws> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let request = url.into_client_request()?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(lean::ws_config(SUBSCRIBER_READ_BUFFER)))
            .await
            .with_context(|| format!("the WebSocket upgrade at {url} failed"))?;
    let mut info = false;
    while !info {
        let bytes = next_bytes(&mut ws).await?;
        parser.push(&bytes, |op| info |= matches!(op, Op::Info(_)))?;
    }
    let connect = r#"CONNECT {"verbose":false,"pedantic":false,"protocol":1}"#;
    ws.send(Message::binary(format!("{connect}\r\n").into_bytes())).await?;
    Ok(ws)
}

/// Sends `PING` and reads until its `PONG`, failing on `-ERR` or a message.
async fn round_trip(ws: &mut Ws, parser: &mut Parser) -> Result<()> {
    ws.send(Message::binary(b"PING\r\n".to_vec())).await?;
    loop {
        let bytes = next_bytes(ws).await?;
        let (mut pong, mut err) = (false, None);
        parser.push(&bytes, |op| match op {
            Op::Pong => pong = true,
            Op::Err(e) => err = Some(String::from_utf8_lossy(e).into_owned()),
            _ => {}
        })?;
        if let Some(e) = err {
            bail!("nats-server refused: {e}");
        }
        if pong {
            return Ok(());
        }
    }
}

/// The next data frame's bytes, skipping control frames.
async fn next_bytes(ws: &mut Ws) -> Result<Vec<u8>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Text(t))) => return Ok(Vec::from(t.as_bytes())),
            Some(Ok(Message::Close(frame))) => bail!("nats-server closed the connection: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("reading from nats-server failed: {e}"),
            None => bail!("nats-server closed the connection"),
        }
    }
}

/// The socket address of a `ws://host:port` URL.
async fn resolve(url: &str) -> Result<SocketAddr> {
    let rest = url.strip_prefix("ws://").with_context(|| format!("{url}: only ws:// URLs are supported"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    tokio::net::lookup_host(host).await?.next().with_context(|| format!("{host} does not resolve"))
}

// ---------------------------------------------------------------------------------------------
// Subscribers.

/// What a subscriber shares while it runs.
#[derive(Default)]
struct Live {
    delivered: AtomicU64,
}

/// What a subscriber saw.
struct Received {
    latency: Histogram<u64>,
    /// One checker per publisher.
    checkers: Vec<SeqChecker>,
    /// Payloads that did not parse.
    malformed: u64,
    /// Why the connection ended before the run did, if it did.
    lost: Option<String>,
}

/// A subscriber's histogram, at two significant digits, as fanout's (see its comment).
fn delivery_histogram() -> Histogram<u64> {
    // The bounds and precision are constants within hdrhistogram's supported range.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// Connects, subscribes and waits until the subscription is in place.
async fn connect_subscriber(url: &str, addr: SocketAddr) -> Result<(Ws, Parser)> {
    let mut parser = Parser::default();
    let mut ws = dial(url, addr, &mut parser).await?;
    ws.send(Message::binary(format!("SUB {SUBJECT} 1\r\n").into_bytes())).await?;
    round_trip(&mut ws, &mut parser).await?;
    Ok((ws, parser))
}

async fn subscribe(
    mut ws: Ws,
    mut parser: Parser,
    publishers: usize,
    epoch: Instant,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Received {
    let mut received = Received {
        latency: delivery_histogram(),
        checkers: vec![SeqChecker::default(); publishers],
        malformed: 0,
        lost: None,
    };
    let mut last_err = None;
    let stopped = stop.cancelled_owned();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            biased;
            next = ws.next() => next,
            _ = &mut stopped => break,
        };
        let bytes = match &next {
            Some(Ok(Message::Binary(b))) => &b[..],
            Some(Ok(Message::Text(t))) => t.as_bytes(),
            Some(Ok(Message::Close(frame))) => {
                received.lost = Some(format!("closed by nats-server: {frame:?} {}", last_err.unwrap_or_default()));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                received.lost = Some(format!("read failed: {e} {}", last_err.unwrap_or_default()));
                break;
            }
            None => {
                received.lost = Some(format!("the connection ended {}", last_err.unwrap_or_default()));
                break;
            }
        };
        let mut pings = 0;
        let now = epoch.elapsed().as_micros() as u64;
        let parsed = parser.push(bytes, |op| match op {
            Op::Msg { payload, .. } => {
                match parse_payload(payload) {
                    Some((sent, p, seq)) if p < publishers => {
                        let _ = received.latency.record(now.saturating_sub(sent).max(1));
                        received.checkers[p].observe(seq);
                    }
                    _ => received.malformed += 1,
                }
                live.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Op::Ping => pings += 1,
            Op::Err(e) => last_err = Some(String::from_utf8_lossy(e).into_owned()),
            _ => {}
        });
        if let Err(e) = parsed {
            received.lost = Some(format!("protocol error: {e}"));
            break;
        }
        for _ in 0..pings {
            if ws.send(Message::binary(b"PONG\r\n".to_vec())).await.is_err() {
                break;
            }
        }
    }
    lean::start_close(&mut ws).await;
    received
}

// ---------------------------------------------------------------------------------------------
// Publishers.

/// A publisher's flush state, shared by its writer and its reader.
#[derive(Default)]
struct Flushes {
    /// Messages the server has processed (acknowledged by a `PONG`).
    flushed: AtomicU64,
    /// `PONG`s the server asked for (by `PING`) and the writer owes.
    pongs_due: AtomicU32,
    /// Per `PING` sent and not yet answered: the (scheduled) send time of its oldest message in
    /// µs since the epoch, and the message count it flushes through.
    pending: Mutex<VecDeque<(u64, u64)>>,
    /// Woken at every `PONG`.
    notify: Notify,
    /// Why the reader stopped, if it did before the end.
    failed: Mutex<Option<String>>,
}

/// What a publisher did.
struct Published {
    /// Messages sent, numbered 1..=sent.
    sent: u64,
    /// Oldest message of a flush → its `PONG`.
    flush_latency: Histogram<u64>,
    /// Open loop: scheduled sends skipped because too many were unflushed.
    skipped: u64,
    /// Why it stopped early, if it did.
    error: Option<String>,
}

/// How a publisher schedules its sends.
#[derive(Clone, Copy)]
enum Schedule {
    /// At most `in_flight` unflushed, a `PING` every `flush_every`.
    Closed { in_flight: usize, flush_every: usize },
    /// Its share of `rate` per second: message `i` (over all publishers) is due at `i / rate`
    /// s, and publisher `p` sends those with `i % publishers == p`; at most `cap` unflushed.
    Open { rate: u64, publishers: usize, cap: usize },
}

async fn connect_publisher(url: &str, addr: SocketAddr) -> Result<Ws> {
    let mut parser = Parser::default();
    let mut ws = dial(url, addr, &mut parser).await?;
    round_trip(&mut ws, &mut parser).await?;
    Ok(ws)
}

/// Reads a publisher's connection: `PONG`s advance the flushes, `PING`s are owed answers.
async fn read_publisher(mut stream: SplitStream<Ws>, flushes: Arc<Flushes>, epoch: Instant) -> Histogram<u64> {
    let mut latency = latency_histogram();
    let mut parser = Parser::default();
    let why = loop {
        let bytes = match stream.next().await {
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            Some(Ok(Message::Text(t))) => Vec::from(t.as_bytes()),
            Some(Ok(Message::Close(frame))) => break format!("closed by nats-server: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break format!("read failed: {e}"),
            None => break "the connection ended".to_string(),
        };
        let now = epoch.elapsed().as_micros() as u64;
        let mut err = None;
        let parsed = parser.push(&bytes, |op| match op {
            Op::Pong => {
                let popped = flushes.pending.lock().ok().and_then(|mut p| p.pop_front());
                if let Some((oldest, through)) = popped {
                    let _ = latency.record(now.saturating_sub(oldest).max(1));
                    flushes.flushed.store(through, Ordering::Release);
                }
                flushes.notify.notify_one();
            }
            Op::Ping => {
                flushes.pongs_due.fetch_add(1, Ordering::Relaxed);
            }
            Op::Err(e) => err = Some(String::from_utf8_lossy(e).into_owned()),
            _ => {}
        });
        if let Err(e) = parsed {
            break format!("protocol error: {e}");
        }
        if let Some(e) = err {
            break format!("-ERR {e}");
        }
    };
    if let Ok(mut failed) = flushes.failed.lock() {
        *failed = Some(why);
    }
    flushes.notify.notify_one();
    latency
}

/// Sends `frame` (after any `PONG`s owed) and records its `PING`, if it ends with one.
async fn write_frame(
    sink: &mut SplitSink<Ws, Message>,
    flushes: &Flushes,
    mut frame: Vec<u8>,
    ping: Option<(u64, u64)>,
) -> Result<()> {
    let owed = flushes.pongs_due.swap(0, Ordering::Relaxed);
    if owed > 0 {
        let mut with_pongs = b"PONG\r\n".repeat(owed as usize);
        with_pongs.append(&mut frame);
        frame = with_pongs;
    }
    if let Some(flush) = ping {
        frame.extend_from_slice(b"PING\r\n");
        // Recorded before the write, so its PONG cannot come first.
        if let Ok(mut pending) = flushes.pending.lock() {
            pending.push_back(flush);
        }
    }
    sink.send(Message::binary(frame)).await?;
    Ok(())
}

/// Waits until fewer than `room` messages of `sent` are unflushed, or the reader stopped.
async fn wait_for_room(flushes: &Flushes, sent: u64, room: u64) -> Result<()> {
    loop {
        if sent - flushes.flushed.load(Ordering::Acquire) < room {
            return Ok(());
        }
        if let Some(why) = flushes.failed.lock().ok().and_then(|f| f.clone()) {
            bail!(why);
        }
        flushes.notify.notified().await;
    }
}

async fn publish(
    ws: Ws,
    p: usize,
    schedule: Schedule,
    epoch: Instant,
    deadline: Instant,
    payload_bytes: usize,
) -> Published {
    let (mut sink, stream) = ws.split();
    let flushes = Arc::new(Flushes::default());
    let reader = tokio::spawn(read_publisher(stream, flushes.clone(), epoch));
    let mut sent = 0u64;
    let mut skipped = 0u64;
    let outcome: Result<()> = async {
        match schedule {
            Schedule::Closed { in_flight, flush_every } => {
                // Room for a whole chunk: at most `in_flight` unflushed after it is sent.
                let room = (in_flight.saturating_sub(flush_every) + 1) as u64;
                while Instant::now() < deadline {
                    wait_for_room(&flushes, sent, room).await?;
                    let now = epoch.elapsed().as_micros() as u64;
                    let mut frame = Vec::with_capacity(flush_every * (payload_bytes + 20) + 8);
                    for _ in 0..flush_every {
                        sent += 1;
                        push_pub(&mut frame, &payload(now, p, sent, payload_bytes));
                    }
                    write_frame(&mut sink, &flushes, frame, Some((now, sent))).await?;
                }
            }
            Schedule::Open { rate, publishers, cap } => {
                let interval = Duration::from_secs_f64(1.0 / rate as f64);
                let start = tokio::time::Instant::now();
                let mut i = p as u64;
                loop {
                    let scheduled = start + interval.mul_f64(i as f64);
                    if scheduled.into_std() >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(scheduled).await;
                    // Everything due by now goes in one frame.
                    let mut frame = Vec::new();
                    let mut oldest = None;
                    loop {
                        let due = start + interval.mul_f64(i as f64);
                        if due > tokio::time::Instant::now() || due.into_std() >= deadline {
                            break;
                        }
                        let at = due.into_std().saturating_duration_since(epoch).as_micros() as u64;
                        if sent - flushes.flushed.load(Ordering::Acquire) >= cap as u64 {
                            skipped += 1;
                        } else {
                            sent += 1;
                            oldest.get_or_insert(at);
                            push_pub(&mut frame, &payload(at, p, sent, payload_bytes));
                        }
                        i += publishers as u64;
                    }
                    if let Some(oldest) = oldest {
                        write_frame(&mut sink, &flushes, frame, Some((oldest, sent))).await?;
                    }
                    if let Some(why) = flushes.failed.lock().ok().and_then(|f| f.clone()) {
                        bail!(why);
                    }
                }
            }
        }
        // The final flush: every message sent has reached the server.
        let now = epoch.elapsed().as_micros() as u64;
        write_frame(&mut sink, &flushes, Vec::new(), Some((now, sent))).await?;
        tokio::time::timeout(FINAL_FLUSH_TIMEOUT, wait_for_room(&flushes, sent, 1))
            .await
            .context("the final flush timed out")?
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(None))).await;
    let flush_latency = match tokio::time::timeout(Duration::from_secs(2), reader).await {
        Ok(Ok(h)) => h,
        _ => latency_histogram(),
    };
    Published { sent, flush_latency, skipped, error: outcome.err().map(|e| format!("{e:#}")) }
}

// ---------------------------------------------------------------------------------------------
// The run.

/// CPU seconds per second of the window (1.0 = one core busy).
#[derive(Debug, Serialize)]
pub struct CpuUse {
    /// This process (the load generator).
    pub this_process: f64,
    /// nats-server, when `--server-pid` was given.
    pub server: Option<f64>,
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct NatsFanoutReport {
    /// nats-server's WebSocket URL.
    pub server: String,
    /// `closed-loop` or `open-loop`.
    pub mode: String,
    /// Subscribers.
    pub subscribers: usize,
    /// Publishing connections.
    pub publishers: usize,
    /// Closed loop: most unflushed messages per publisher.
    pub in_flight: Option<usize>,
    /// Closed loop: messages per `PING`.
    pub flush_every: Option<usize>,
    /// Scheduled sends per second (open loop).
    pub rate: Option<u64>,
    /// Payload bytes per message.
    pub payload_bytes: usize,
    /// Seconds of sending.
    pub seconds: f64,
    /// Messages published (and flushed, unless a publisher failed).
    pub published: u64,
    /// `published` ÷ `seconds`.
    pub published_per_sec: f64,
    /// Messages received by all subscribers during the sending window.
    pub deliveries: u64,
    /// `deliveries` ÷ `seconds`.
    pub deliveries_per_sec: f64,
    /// Send (open loop: scheduled send) → received by a subscriber.
    pub delivery_latency: Latency,
    /// Oldest message of a flush → its `PONG`, at the publisher (fanout's "ack latency").
    pub flush_latency: Latency,
    /// Open loop: scheduled sends skipped because `--max-in-flight` were unflushed.
    pub skipped: u64,
    /// Publishers that stopped early, and why.
    pub publisher_errors: Vec<String>,
    /// Payloads that did not parse as this run's.
    pub malformed: u64,
    /// Seconds after the window until every subscriber had every message (or the timeout).
    pub drain_seconds: f64,
    /// Slow consumers nats-server counted during the run (`/varz`, with `--monitor`).
    pub slow_consumers: Option<u64>,
    /// CPU used during the window.
    pub cpu: CpuUse,
    /// Losses and disorder (core NATS is at-most-once, so reported, not failed).
    pub violations: Violations,
}

/// Runs the scenario and prints the report. Losses do not fail it (core NATS promises none);
/// they are in the report.
pub async fn run(args: NatsArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, print_report)
}

/// Connects, subscribes, publishes for the configured duration, drains, checks and summarises.
pub async fn measure(args: &NatsArgs) -> Result<NatsFanoutReport> {
    if args.subscribers == 0 || args.publishers == 0 || args.in_flight == 0 || args.max_in_flight == 0 {
        bail!("--subscribers, --publishers, --in-flight and --max-in-flight must be at least 1");
    }
    if args.flush_every == 0 || args.flush_every > args.in_flight {
        bail!("--flush-every must be between 1 and --in-flight");
    }
    if args.rate == Some(0) {
        bail!("--rate must be at least 1");
    }
    let url = args.nats.as_str();
    let addr = resolve(url).await?;
    let epoch = Instant::now();
    let stop = CancellationToken::new();
    eprintln!("connecting {} subscribers to {url} ...", args.subscribers);
    let connected = stream::iter((0..args.subscribers).map(|_| connect_subscriber(url, addr)))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut lives = Vec::with_capacity(connected.len());
    let mut tasks = Vec::with_capacity(connected.len());
    for c in connected {
        let (ws, parser) = c.context("a subscriber could not connect")?;
        let live = Arc::new(Live::default());
        lives.push(live.clone());
        tasks.push(tokio::spawn(subscribe(ws, parser, args.publishers, epoch, live, stop.clone())));
    }
    let mut publishers = Vec::with_capacity(args.publishers);
    for _ in 0..args.publishers {
        publishers.push(connect_publisher(url, addr).await.context("a publisher could not connect")?);
    }
    let slow_before = slow_consumers(args.monitor.as_deref()).await;

    eprintln!(
        "publishing for {:.1} s ({}) ...",
        args.duration.as_secs_f64(),
        args.rate.map_or("closed loop".to_string(), |r| format!("{r}/s"))
    );
    let cpu_before = (own_cpu_seconds(), args.server_pid.and_then(process_cpu_seconds));
    let progress = progress(lives.clone(), args.duration);
    let started = Instant::now();
    let deadline = started + args.duration;
    let schedule = match args.rate {
        None => Schedule::Closed { in_flight: args.in_flight, flush_every: args.flush_every },
        Some(rate) => Schedule::Open {
            rate,
            publishers: args.publishers,
            cap: args.max_in_flight.div_ceil(args.publishers).max(1),
        },
    };
    let publishing: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, ws)| tokio::spawn(publish(ws, p, schedule, epoch, deadline, args.payload_bytes)))
        .collect();
    tokio::time::sleep_until(deadline.into()).await;
    let seconds = started.elapsed().as_secs_f64();
    let deliveries: u64 = lives.iter().map(|l| l.delivered.load(Ordering::Relaxed)).sum();
    let cpu_after = (own_cpu_seconds(), args.server_pid.and_then(process_cpu_seconds));
    progress.abort();
    let mut sent = Vec::with_capacity(publishing.len());
    let mut flush_latency = latency_histogram();
    let (mut skipped, mut publisher_errors) = (0, Vec::new());
    for task in publishing {
        let published = task.await?;
        sent.push(published.sent);
        flush_latency.add(&published.flush_latency)?;
        skipped += published.skipped;
        publisher_errors.extend(published.error);
    }
    let total: u64 = sent.iter().sum();

    // Drain: every live subscriber has received as many messages as were published, or the
    // timeout passes (a subscriber that lost some never gets there).
    let drain_started = Instant::now();
    while drain_started.elapsed() < args.drain_timeout {
        let behind =
            lives.iter().zip(&tasks).filter(|(l, t)| !t.is_finished() && l.delivered.load(Ordering::Relaxed) < total);
        if behind.count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    stop.cancel();
    let slow_after = slow_consumers(args.monitor.as_deref()).await;
    let mut latency = latency_histogram();
    let mut violations = Violations::default();
    let mut malformed = 0;
    for task in tasks {
        let received = task.await?;
        latency.add(&received.latency)?;
        malformed += received.malformed;
        for (checker, &sent) in received.checkers.iter().zip(&sent) {
            // Sequence numbers run 1..=sent, so what is not there is missing.
            violations.missing += sent.saturating_sub(checker.distinct());
            violations.duplicates += checker.duplicates;
            violations.out_of_order += checker.out_of_order;
        }
        if let Some(why) = received.lost {
            violations.lost_sessions += 1;
            if violations.lost_reasons.len() < 5 {
                violations.lost_reasons.push(why);
            }
        }
    }
    let per_sec = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / seconds);
    Ok(NatsFanoutReport {
        server: url.to_string(),
        mode: if args.rate.is_some() { "open-loop" } else { "closed-loop" }.into(),
        subscribers: args.subscribers,
        publishers: args.publishers,
        in_flight: args.rate.is_none().then_some(args.in_flight),
        flush_every: args.rate.is_none().then_some(args.flush_every),
        rate: args.rate,
        payload_bytes: args.payload_bytes,
        seconds,
        published: total,
        published_per_sec: total as f64 / seconds,
        deliveries,
        deliveries_per_sec: deliveries as f64 / seconds,
        delivery_latency: Latency::of(&latency),
        flush_latency: Latency::of(&flush_latency),
        skipped,
        publisher_errors,
        malformed,
        drain_seconds,
        slow_consumers: slow_after.zip(slow_before).map(|(a, b)| a.saturating_sub(b)),
        cpu: CpuUse {
            this_process: (cpu_after.0 - cpu_before.0) / seconds,
            server: per_sec(cpu_before.1, cpu_after.1),
        },
        violations,
    })
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat` (Linux).
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// nats-server's slow-consumer count from `/varz`, if a monitoring address was given.
async fn slow_consumers(monitor: Option<&str>) -> Option<u64> {
    let url = format!("{}/varz", monitor?.trim_end_matches('/'));
    let varz: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    varz.get("slow_consumers")?.as_u64()
}

/// Prints deliveries/s of the last second on stderr until aborted.
fn progress(lives: Vec<Arc<Live>>, duration: Duration) -> tokio::task::JoinHandle<()> {
    crate::report::progress(duration, "deliveries/s", move || {
        lives.iter().map(|l| l.delivered.load(Ordering::Relaxed)).sum()
    })
}

fn print_report(r: &NatsFanoutReport) {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    println!(
        "selvage loadtest nats-fanout — {} {}, {} subscribers, {} publishers{}",
        r.server,
        r.mode,
        r.subscribers,
        r.publishers,
        r.in_flight.map_or(String::new(), |k| format!(
            " with ≤ {k} unflushed each (PING every {})",
            r.flush_every.unwrap_or(0)
        ))
    );
    if let Some(rate) = r.rate {
        println!("  scheduled rate    {rate} sends/s = {} deliveries/s", rate * r.subscribers as u64);
    }
    println!(
        "  published         {} in {:.1} s = {:.0} sends/s ({} bytes each)",
        r.published, r.seconds, r.published_per_sec, r.payload_bytes
    );
    println!("  deliveries        {} = {:.0} deliveries/s", r.deliveries, r.deliveries_per_sec);
    println!("  delivery latency  {}", r.delivery_latency);
    println!("  flush latency     {}", r.flush_latency);
    if r.skipped > 0 {
        println!("  skipped           {} (in-flight cap reached: the server fell behind the schedule)", r.skipped);
    }
    if !r.publisher_errors.is_empty() {
        println!("  publisher errors  {:?}", r.publisher_errors);
    }
    println!("  drained in        {:.2} s after the window", r.drain_seconds);
    let cores = |c: Option<f64>| c.map_or("—".to_string(), |c| format!("{c:.2}"));
    println!("  CPU (cores)       this process {:.2}, nats-server {}", r.cpu.this_process, cores(r.cpu.server));
    if let Some(n) = r.slow_consumers {
        println!("  slow consumers    {n} (nats-server /varz)");
    }
    let v = &r.violations;
    if v.any() || r.malformed > 0 {
        println!(
            "  check             LOSSES (core NATS is at-most-once): {} missing, {} duplicated, {} out of order, \
             {} malformed, {} connections lost {:?}",
            v.missing, v.duplicates, v.out_of_order, r.malformed, v.lost_sessions, v.lost_reasons
        );
    } else {
        println!("  check             ok: every subscriber got every message once, in order per publisher");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything `bytes` parses to, fed in pieces cut at `cuts`, as owned values.
    fn parse_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut parser = Parser::default();
        let mut ops = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([bytes.len()].iter()) {
            parser.push(&bytes[from..cut], |op| ops.push(describe(&op))).unwrap();
            from = cut;
        }
        assert!(parser.pending.is_empty(), "nothing left over");
        ops
    }

    fn describe(op: &Op<'_>) -> String {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match op {
            Op::Info(j) => format!("INFO {}", s(j)),
            Op::Msg { subject, sid, reply, payload } => {
                format!("MSG {} {} {:?} [{}]", s(subject), s(sid), reply.map(s), s(payload))
            }
            Op::Ping => "PING".into(),
            Op::Pong => "PONG".into(),
            Op::Ok => "+OK".into(),
            Op::Err(e) => format!("-ERR {}", s(e)),
        }
    }

    const STREAM: &[u8] = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\nPING\r\n\
        MSG room 1 12\r\nhello\r\nworld\r\nMSG room 1 _INBOX.r 3\r\nabc\r\n+OK\r\npong\r\n\
        -ERR 'Slow Consumer'\r\nMSG room 1 0\r\n\r\n";

    fn expected() -> Vec<String> {
        vec![
            "INFO {\"server_id\":\"x\",\"max_payload\":1048576}".to_string(),
            "PING".into(),
            "MSG room 1 None [hello\r\nworld]".into(),
            "MSG room 1 Some(\"_INBOX.r\") [abc]".into(),
            "+OK".into(),
            "PONG".into(),
            "-ERR 'Slow Consumer'".into(),
            "MSG room 1 None []".into(),
        ]
    }

    #[test]
    fn joined_operations_in_one_frame_all_parse() {
        assert_eq!(parse_in_pieces(STREAM, &[]), expected());
    }

    #[test]
    fn operations_split_anywhere_parse_the_same() {
        for cut in 1..STREAM.len() {
            assert_eq!(parse_in_pieces(STREAM, &[cut]), expected(), "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..STREAM.len()).collect();
        assert_eq!(parse_in_pieces(STREAM, &every_byte), expected(), "one byte per frame");
    }

    #[test]
    fn a_payload_with_crlf_is_taken_by_its_length() {
        let ops = parse_in_pieces(b"MSG room 1 6\r\n\r\nPING\r\nPONG\r\n", &[]);
        assert_eq!(ops, vec!["MSG room 1 None [\r\nPING]".to_string(), "PONG".into()]);
    }

    #[test]
    fn an_incomplete_message_waits_for_the_rest() {
        let mut parser = Parser::default();
        let mut ops = Vec::new();
        parser.push(b"MSG room 1 5\r\nab", |op| ops.push(describe(&op))).unwrap();
        assert!(ops.is_empty());
        parser.push(b"cde\r", |op| ops.push(describe(&op))).unwrap();
        assert!(ops.is_empty(), "the payload's CRLF is not complete");
        parser.push(b"\nPI", |op| ops.push(describe(&op))).unwrap();
        assert_eq!(ops, vec!["MSG room 1 None [abcde]".to_string()]);
        parser.push(b"NG\r\n", |op| ops.push(describe(&op))).unwrap();
        assert_eq!(ops.last().map(String::as_str), Some("PING"));
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut parser = Parser::default();
        assert!(matches!(parser.push(b"HMSG room 1 4 8\r\n", |_| {}), Err(ProtocolError::UnknownOp(_))));
        let mut parser = Parser::default();
        assert!(matches!(parser.push(b"MSG room 1 x\r\n", |_| {}), Err(ProtocolError::BadMsg(_))));
        let mut parser = Parser::default();
        assert_eq!(parser.push(b"MSG room 1 2\r\nabcd\r\n", |_| {}), Err(ProtocolError::BadPayloadEnd));
        let mut parser = Parser::default();
        assert_eq!(parser.push(&vec![b'x'; MAX_CONTROL_LINE + 1], |_| {}), Err(ProtocolError::LineTooLong));
    }

    #[test]
    fn payloads_carry_time_publisher_and_seq() {
        let p = payload(123_456, 3, 42, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(parse_payload(p.as_bytes()), Some((123_456, 3, 42)));
        assert_eq!(parse_payload(b"123 q3/4 "), None);
        assert_eq!(parse_payload(b"garbage"), None);
        let mut frame = Vec::new();
        push_pub(&mut frame, "ab\r\ncd");
        assert_eq!(frame, b"PUB room 6\r\nab\r\ncd\r\n");
    }

    /// A tiny fan-out against a real nats-server, if one is installed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_fan_out_through_nats_server() {
        let Some(server) = NatsServer::start().await else { return };
        let args = NatsArgs {
            nats: server.url.clone(),
            subscribers: 5,
            publishers: 2,
            in_flight: 64,
            flush_every: 16,
            rate: None,
            max_in_flight: 4096,
            duration: Duration::from_secs(1),
            payload_bytes: 100,
            drain_timeout: Duration::from_secs(5),
            server_pid: Some(server.child.id().unwrap_or(0)),
            monitor: None,
            json: false,
        };
        let report = measure(&args).await.unwrap();
        assert!(report.published > 0);
        assert_eq!(report.violations.missing + report.violations.duplicates + report.violations.out_of_order, 0);
        assert_eq!(report.violations.lost_sessions, 0);
        assert!(report.deliveries > 0 && report.deliveries <= report.published * 5);
        let open = measure(&NatsArgs { rate: Some(200), ..args }).await.unwrap();
        assert!(open.published > 150, "{} published", open.published);
        assert!(!open.violations.any(), "{:?}", open.violations);
    }

    /// nats-server on random ports, stopped when dropped.
    struct NatsServer {
        child: tokio::process::Child,
        url: String,
        _dir: tempfile::TempDir,
    }

    impl NatsServer {
        async fn start() -> Option<NatsServer> {
            if std::process::Command::new("nats-server").arg("--version").output().is_err() {
                eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("nats.conf");
            std::fs::write(&config, "port: -1\nwebsocket { listen: \"127.0.0.1:-1\"; no_tls: true }\n").unwrap();
            let log = dir.path().join("nats.log");
            let child = tokio::process::Command::new("nats-server")
                .arg("-c")
                .arg(&config)
                .arg("-a")
                .arg("127.0.0.1")
                .arg("-l")
                .arg(&log)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(url) = text
                    .lines()
                    .find(|l| l.contains("Listening for websocket clients on"))
                    .and_then(|l| l.split_whitespace().last())
                {
                    return Some(NatsServer { child, url: url.to_string(), _dir: dir });
                }
                assert!(Instant::now() < deadline, "nats-server did not start: {text}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
