//! The `wan-proxy` tool: a WAN emulator in user space, so a regional edge far from its origin
//! (or clients far from an edge) can be tried on one machine without netem or root.
//!
//! `selvage loadtest wan-proxy --listen 127.0.0.1:17701 --to 127.0.0.1:7701 --delay 80ms
//! --jitter 5ms --loss 0.5%` listens on one port for both TCP and UDP and forwards to `--to`;
//! point the edge's origin link (QUIC) or the clients (WebSocket or QUIC) at the proxy instead
//! of the real address. The path it emulates:
//!
//! - **UDP** (QUIC: the edge ↔ origin link and client QUIC). Each client source address gets a
//!   session with its own upstream socket connected to `--to`, so the upstream sees one peer per
//!   client, as behind a NAT. Every datagram in either direction is dropped with probability
//!   `loss`, or else delivered `delay ± jitter` after it was received, drawn per datagram, so
//!   jitter can reorder datagrams (see the limits below). A session with no datagram either
//!   way for `--udp-idle` is forgotten; the client's next datagram starts a new one from a new
//!   port (QUIC sees the client move to a new address).
//! - **TCP** (WebSocket clients). Each accepted connection gets its own connection to `--to`.
//!   Each chunk read is delivered `delay ± jitter` after it was read, but never before the
//!   chunk before it: TCP keeps order, so on TCP jitter only adds delay. TCP does not lose
//!   data, it retransmits, so loss is modelled as what a retransmission costs: with probability
//!   `loss` a chunk, and so everything behind it, is held an extra 3 × `delay` (a retransmission
//!   timeout of about one round trip, plus the resent segment's one-way trip). A half-close is
//!   passed on once the data before it is delivered; so is a close.
//!
//! Limits to keep in mind when reading results:
//! - no bandwidth limit and no congestion. Queues are bounded only to cap memory: a UDP
//!   direction holds at most 64 MiB of datagrams (more are dropped and counted as overflow);
//!   a TCP direction stops reading at 1024 queued chunks, which TCP turns into back-pressure;
//! - loss is independent per datagram (no bursts), and the same in both directions;
//! - jitter is independent per datagram too, as netem's is by default, while on real paths it
//!   is mostly queueing and changes slowly. Jitter wider than the gap between packets
//!   therefore reorders heavily, and QUIC takes a packet overtaken by three others as lost:
//!   on loopback (debug build), 1 MiB over QUIC at 20 ms and 1 % loss took about 2 s with no
//!   jitter and 12 s with ±1 ms, the sender declaring 4 % of its packets lost and cutting its
//!   window 30 times instead of 4. Leave jitter at 0 when measuring throughput;
//! - TCP loss applies per chunk the proxy reads, not per segment, and TCP never reorders;
//! - the TCP handshake is not delayed (the kernel completes it before the proxy sees the
//!   connection), so a connection's first round trip is one round trip shorter than on a real
//!   path; a reset reaches the other side as an orderly close;
//! - delays have the tokio timer's millisecond resolution: late by up to a millisecond, never
//!   early.

use std::{
    cmp::Reverse,
    collections::{hash_map::Entry, BinaryHeap, HashMap},
    fmt, io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream, UdpSocket,
    },
    sync::mpsc,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::sends::parse_duration;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Bytes read from a TCP stream at a time: the largest chunk.
const TCP_CHUNK: usize = 16 * 1024;
/// Chunks queued per TCP direction before the proxy stops reading that side.
const TCP_QUEUE_CHUNKS: usize = 1024;
/// Datagrams waiting to enter a UDP delay line. When it is full the receive loops wait, and the
/// kernel drops what no longer fits in the socket buffer, as a congested router would.
const UDP_HANDOFF: usize = 4096;
/// Bytes of datagrams one UDP direction holds at most; more are dropped as overflow.
const UDP_QUEUE_BYTES: usize = 64 << 20;
/// Datagrams taken from the handoff queue in one go.
const UDP_BATCH: usize = 256;
/// How often `run` prints the counters.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Tries at putting TCP and UDP on one system-chosen port.
const SAME_PORT_TRIES: usize = 8;

/// `selvage loadtest wan-proxy` arguments.
#[derive(Args, Clone, Debug)]
pub struct WanArgs {
    /// Address to listen on, e.g. 127.0.0.1:17701 (with --protocol both, the same port for TCP
    /// and UDP).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Address to forward to, e.g. 127.0.0.1:7701 or origin.internal:7701.
    #[arg(long, value_name = "ADDR")]
    pub to: String,
    /// One-way delay added in each direction, e.g. 80ms (the round trip grows by twice this).
    #[arg(long, default_value = "0ms", value_name = "DURATION", value_parser = parse_duration)]
    pub delay: Duration,
    /// Each delay is drawn uniformly from delay ± jitter, e.g. 5ms. It is drawn per datagram,
    /// so UDP datagrams are reordered, which QUIC partly reads as loss: leave it at 0 to
    /// measure throughput. TCP keeps its order, so there jitter only adds delay.
    #[arg(long, default_value = "0ms", value_name = "DURATION", value_parser = parse_duration)]
    pub jitter: Duration,
    /// Loss in percent, e.g. 0.5% (or 0.5). UDP: each datagram, either way, is dropped with this
    /// probability. TCP retransmits instead of losing data, so a "lost" chunk and everything
    /// behind it is held an extra 3 × delay, about what a retransmission costs.
    #[arg(long, default_value = "0", value_name = "PERCENT", value_parser = parse_loss)]
    pub loss: f64,
    /// Which protocols to forward.
    #[arg(long, value_enum, default_value_t = Protocol::Both)]
    pub protocol: Protocol,
    /// Forget a UDP client (and close its upstream socket) after this long with no datagram
    /// either way, e.g. 60s.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub udp_idle: Duration,
}

/// Parses a loss percentage, `0.5%` or `0.5`, into a probability (here 0.005).
pub fn parse_loss(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let number = t.strip_suffix('%').unwrap_or(t).trim();
    let percent: f64 = number.parse().map_err(|_| format!("{s:?} is not a loss like 0.5% or 2"))?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("loss {s:?} is not between 0% and 100%"));
    }
    Ok(percent / 100.0)
}

/// Which protocols the proxy forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// TCP only (WebSocket clients).
    Tcp,
    /// UDP only (QUIC).
    Udp,
    /// TCP and UDP, on the same port.
    Both,
}

/// What path a proxy emulates, and between which addresses.
#[derive(Clone, Debug)]
pub struct WanConfig {
    /// Address to listen on; port 0 lets the system choose (the same port for TCP and UDP
    /// whenever it can be had).
    pub listen: SocketAddr,
    /// Address to forward to.
    pub to: SocketAddr,
    /// One-way delay added in each direction.
    pub delay: Duration,
    /// Each delay is drawn uniformly from `delay - jitter ..= delay + jitter`, never below zero.
    pub jitter: Duration,
    /// Loss probability, `0.0..=1.0`: UDP datagrams dropped, TCP chunks held (see the module
    /// docs).
    pub loss: f64,
    /// Which protocols to forward.
    pub protocol: Protocol,
    /// UDP sessions with no datagram either way for this long are forgotten.
    pub udp_idle: Duration,
}

impl WanConfig {
    /// A proxy from `listen` to `to` for TCP and UDP, with no delay, jitter or loss and a 60 s
    /// UDP idle timeout.
    pub fn new(listen: SocketAddr, to: SocketAddr) -> WanConfig {
        WanConfig {
            listen,
            to,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            protocol: Protocol::Both,
            udp_idle: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.loss) {
            bail!("loss must be a probability between 0 and 1, not {}", self.loss);
        }
        if self.udp_idle.is_zero() {
            bail!("the UDP idle timeout must be longer than 0");
        }
        Ok(())
    }
}

/// A snapshot of a proxy's counters. "Up" is client → `to`, "down" is `to` → client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WanStats {
    /// TCP connections accepted.
    pub tcp_connections: u64,
    /// TCP connections open now.
    pub tcp_open: u64,
    /// UDP sessions (client source addresses) started.
    pub udp_sessions: u64,
    /// UDP sessions live now.
    pub udp_active: u64,
    /// Bytes delivered upstream, TCP and UDP.
    pub bytes_up: u64,
    /// Bytes delivered back to clients, TCP and UDP.
    pub bytes_down: u64,
    /// Datagrams delivered upstream.
    pub datagrams_up: u64,
    /// Datagrams delivered back to clients.
    pub datagrams_down: u64,
    /// Datagrams from clients dropped by the emulated loss.
    pub dropped_up: u64,
    /// Datagrams to clients dropped by the emulated loss.
    pub dropped_down: u64,
    /// Datagrams dropped because a direction already held 64 MiB (not emulated loss: the
    /// proxy could not keep up).
    pub overflowed: u64,
    /// TCP chunks held back 3 × delay by the emulated loss.
    pub tcp_held: u64,
}

impl fmt::Display for WanStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp {} connections ({} open, {} chunks held), udp {} sessions ({} live); \
             up {} B, {} datagrams ({} dropped); down {} B, {} datagrams ({} dropped)",
            self.tcp_connections,
            self.tcp_open,
            self.tcp_held,
            self.udp_sessions,
            self.udp_active,
            self.bytes_up,
            self.datagrams_up,
            self.dropped_up,
            self.bytes_down,
            self.datagrams_down,
            self.dropped_down,
        )?;
        if self.overflowed > 0 {
            write!(f, "; {} datagrams OVERFLOWED the proxy's queues", self.overflowed)?;
        }
        Ok(())
    }
}

/// A running proxy. It stops when the token given to [`start`] is cancelled.
pub struct WanProxy {
    tcp_addr: Option<SocketAddr>,
    udp_addr: Option<SocketAddr>,
    counters: Arc<Counters>,
    tracker: TaskTracker,
}

impl WanProxy {
    /// Where it accepts TCP connections, if it forwards TCP.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Where it receives UDP datagrams, if it forwards UDP.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The counters so far.
    pub fn stats(&self) -> WanStats {
        self.counters.snapshot()
    }

    /// Waits until every task of the proxy has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        self.tracker.wait().await;
    }
}

/// Runs the proxy until Ctrl-C, printing where it listens and, every 5 s on stderr, its
/// counters.
pub async fn run(args: WanArgs) -> Result<()> {
    let to = tokio::net::lookup_host(args.to.as_str())
        .await
        .with_context(|| format!("cannot resolve --to {}", args.to))?
        .next()
        .with_context(|| format!("--to {} resolves to no address", args.to))?;
    let config = WanConfig {
        listen: args.listen,
        to,
        delay: args.delay,
        jitter: args.jitter,
        loss: args.loss,
        protocol: args.protocol,
        udp_idle: args.udp_idle,
    };
    let shutdown = CancellationToken::new();
    let proxy = start(config, shutdown.clone()).await?;
    println!(
        "selvage loadtest wan-proxy → {to}: delay {:?} ± {:?} each way, loss {}%",
        args.delay,
        args.jitter,
        args.loss * 100.0
    );
    if let Some(addr) = proxy.tcp_addr() {
        println!("  tcp  listening on {addr}");
    }
    if let Some(addr) = proxy.udp_addr() {
        println!("  udp  listening on {addr}");
    }

    let mut report = tokio::time::interval_at(Instant::now() + REPORT_EVERY, REPORT_EVERY);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let stopped = loop {
        tokio::select! {
            signal = &mut ctrl_c => break signal.context("cannot listen for Ctrl-C"),
            _ = report.tick() => eprintln!("wan-proxy  {}", proxy.stats()),
        }
    };
    shutdown.cancel();
    let stats = proxy.stats();
    proxy.wait().await;
    eprintln!("wan-proxy stopped: {stats}");
    stopped
}

/// Binds the listening sockets and starts forwarding; stops when `shutdown` is cancelled.
pub async fn start(config: WanConfig, shutdown: CancellationToken) -> Result<WanProxy> {
    config.validate()?;
    let (tcp, udp) = bind(&config).await?;
    let tcp_addr = tcp.as_ref().map(TcpListener::local_addr).transpose()?;
    let udp_addr = udp.as_ref().map(UdpSocket::local_addr).transpose()?;
    let ctx = Arc::new(Ctx {
        config,
        counters: Arc::new(Counters::default()),
        shutdown,
        tracker: TaskTracker::new(),
        epoch: Instant::now(),
    });
    if let Some(listener) = tcp {
        let span = tracing::info_span!("wan_tcp", listen = ?tcp_addr, to = %ctx.config.to);
        ctx.tracker.spawn(accept_loop(listener, ctx.clone()).instrument(span));
    }
    if let Some(socket) = udp {
        let span = tracing::info_span!("wan_udp", listen = ?udp_addr, to = %ctx.config.to);
        start_udp(socket, &ctx, span);
    }
    // Closing only lets `wait` finish once the tracker is empty; tasks may still be spawned.
    ctx.tracker.close();
    Ok(WanProxy { tcp_addr, udp_addr, counters: ctx.counters.clone(), tracker: ctx.tracker.clone() })
}

/// Binds what `config.protocol` asks for. With port 0 and both protocols, TCP takes a port
/// first and UDP the same one; if some other socket already has that UDP port, it tries again.
async fn bind(config: &WanConfig) -> Result<(Option<TcpListener>, Option<UdpSocket>)> {
    let listen = config.listen;
    let tcp = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.with_context(|| format!("cannot listen on tcp {addr}"))
    };
    let udp = |addr: SocketAddr| async move { UdpSocket::bind(addr).await };
    let udp_err = |addr: SocketAddr| move || format!("cannot listen on udp {addr}");
    match config.protocol {
        Protocol::Tcp => return Ok((Some(tcp(listen).await?), None)),
        Protocol::Udp => return Ok((None, Some(udp(listen).await.with_context(udp_err(listen))?))),
        Protocol::Both if listen.port() != 0 => {
            let listener = tcp(listen).await?;
            return Ok((Some(listener), Some(udp(listen).await.with_context(udp_err(listen))?)));
        }
        Protocol::Both => {}
    }
    for _ in 0..SAME_PORT_TRIES {
        let listener = tcp(listen).await?;
        let same = SocketAddr::new(listen.ip(), listener.local_addr()?.port());
        match udp(same).await {
            Ok(socket) => return Ok((Some(listener), Some(socket))),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(udp_err(same)),
        }
    }
    tracing::warn!(tries = SAME_PORT_TRIES, "no free port for both TCP and UDP; UDP gets a port of its own");
    let listener = tcp(listen).await?;
    Ok((Some(listener), Some(udp(listen).await.with_context(udp_err(listen))?)))
}

/// What every task of one proxy shares.
struct Ctx {
    config: WanConfig,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Zero of the UDP sessions' last-seen clocks.
    epoch: Instant,
}

impl Ctx {
    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Which way data goes.
#[derive(Clone, Copy, Debug)]
enum Direction {
    /// Client → `to`.
    Up,
    /// `to` → client.
    Down,
}

#[derive(Default)]
struct Counters {
    tcp_connections: AtomicU64,
    tcp_open: AtomicU64,
    udp_sessions: AtomicU64,
    udp_active: AtomicU64,
    /// Indexed by `Direction as usize`, here and below.
    bytes: [AtomicU64; 2],
    datagrams: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    overflowed: AtomicU64,
    tcp_held: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> WanStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WanStats {
            tcp_connections: get(&self.tcp_connections),
            tcp_open: get(&self.tcp_open),
            udp_sessions: get(&self.udp_sessions),
            udp_active: get(&self.udp_active),
            bytes_up: get(&self.bytes[Direction::Up as usize]),
            bytes_down: get(&self.bytes[Direction::Down as usize]),
            datagrams_up: get(&self.datagrams[Direction::Up as usize]),
            datagrams_down: get(&self.datagrams[Direction::Down as usize]),
            dropped_up: get(&self.dropped[Direction::Up as usize]),
            dropped_down: get(&self.dropped[Direction::Down as usize]),
            overflowed: get(&self.overflowed),
            tcp_held: get(&self.tcp_held),
        }
    }
}

/// One direction's impairments: whether a packet is lost, and how long it takes.
struct Impairment {
    delay: Duration,
    jitter: Duration,
    loss: f64,
    rng: SmallRng,
}

impl Impairment {
    fn new(config: &WanConfig) -> Impairment {
        Impairment { delay: config.delay, jitter: config.jitter, loss: config.loss, rng: SmallRng::from_os_rng() }
    }

    fn lost(&mut self) -> bool {
        // `loss` was checked to be within 0..=1 at start.
        self.rng.random_bool(self.loss)
    }

    /// `delay ± jitter`, uniform, never below zero.
    fn latency(&mut self) -> Duration {
        if self.jitter.is_zero() {
            return self.delay;
        }
        let jitter = self.jitter.as_secs_f64();
        let offset = self.rng.random_range(-jitter..=jitter);
        Duration::from_secs_f64((self.delay.as_secs_f64() + offset).max(0.0))
    }

    /// When a datagram received at `now` is to be delivered; `None` if it is lost.
    fn datagram(&mut self, now: Instant) -> Option<Instant> {
        if self.lost() {
            None
        } else {
            Some(now + self.latency())
        }
    }
}

/// One TCP direction's schedule: delayed like datagrams, but in order and never lost.
struct InOrder {
    impairment: Impairment,
    last: Instant,
}

impl InOrder {
    fn new(config: &WanConfig) -> InOrder {
        InOrder { impairment: Impairment::new(config), last: Instant::now() }
    }

    /// When a chunk read at `now` is to be delivered, and whether it was held for a modelled
    /// retransmission.
    fn chunk(&mut self, now: Instant) -> (Instant, bool) {
        let held = self.impairment.lost();
        let mut at = now + self.impairment.latency();
        if held {
            at += self.impairment.delay * 3;
        }
        self.last = self.last.max(at);
        (self.last, held)
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    let mut next_id = 0u64;
    loop {
        let (client, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually: wait rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        Counters::add(&ctx.counters.tcp_connections, 1);
        let span = tracing::debug_span!("wan_conn", conn.id = next_id, %peer);
        ctx.tracker.spawn(tcp_connection(client, ctx.clone()).instrument(span));
    }
}

/// One proxied connection: dials `to`, then forwards both ways until both are closed.
async fn tcp_connection(client: TcpStream, ctx: Arc<Ctx>) {
    Counters::add(&ctx.counters.tcp_open, 1);
    let upstream = tokio::select! {
        _ = ctx.shutdown.cancelled() => None,
        dialled = TcpStream::connect(ctx.config.to) => dialled
            .inspect_err(|error| tracing::debug!(%error, "upstream refused; closing the client"))
            .ok(),
    };
    if let Some(upstream) = upstream {
        // Chunks leave when their delay is up; Nagle would hold small ones back further.
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = upstream.into_split();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => {}
            _ = async {
                tokio::join!(
                    pipe(client_read, upstream_write, Direction::Up, &ctx),
                    pipe(upstream_read, client_write, Direction::Down, &ctx),
                )
            } => {}
        }
    }
    ctx.counters.tcp_open.fetch_sub(1, Ordering::Relaxed);
}

/// Forwards one direction of a TCP connection through its delay, then passes on the
/// half-close. If the far side stops taking data, reading stops too.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, direction: Direction, ctx: &Ctx) {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(TCP_QUEUE_CHUNKS);
    let mut schedule = InOrder::new(&ctx.config);
    let read = async move {
        let mut buf = vec![0u8; TCP_CHUNK];
        loop {
            let n = tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(error) => {
                        tracing::debug!(%error, ?direction, "read failed; closing this direction");
                        break;
                    }
                },
                _ = queue.closed() => break,
            };
            let (at, held) = schedule.chunk(Instant::now());
            if held {
                Counters::add(&ctx.counters.tcp_held, 1);
            }
            if queue.send((at, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = queued.recv().await {
            tokio::time::sleep_until(at).await;
            if let Err(error) = to.write_all(&chunk).await {
                tracing::debug!(%error, ?direction, "write failed; closing this direction");
                return;
            }
            Counters::add(&ctx.counters.bytes[direction as usize], chunk.len() as u64);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// A datagram waiting in a delay line.
struct Datagram {
    at: Instant,
    /// Arrival order in its delay line: datagrams due at the same instant leave in it.
    seq: u64,
    payload: Vec<u8>,
    via: Arc<UdpSocket>,
    /// `None` when `via` is connected to its destination.
    to: Option<SocketAddr>,
}

impl Datagram {
    fn key(&self) -> (Instant, u64) {
        (self.at, self.seq)
    }
}

impl PartialEq for Datagram {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Datagram {}

impl PartialOrd for Datagram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Datagram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// One client's UDP session.
struct Session {
    upstream: Arc<UdpSocket>,
    /// `Ctx::millis` of its last datagram, either way.
    last_seen: Arc<AtomicU64>,
    /// Cancelled to end the session; its reply task cancels it too if it fails.
    stop: CancellationToken,
}

fn start_udp(socket: UdpSocket, ctx: &Arc<Ctx>, span: tracing::Span) {
    let listen = Arc::new(socket);
    let (up, up_queue) = mpsc::channel(UDP_HANDOFF);
    let (down, down_queue) = mpsc::channel(UDP_HANDOFF);
    ctx.tracker.spawn(delay_line(up_queue, Direction::Up, ctx.clone()).instrument(span.clone()));
    ctx.tracker.spawn(delay_line(down_queue, Direction::Down, ctx.clone()).instrument(span.clone()));
    ctx.tracker.spawn(udp_loop(listen, up, down, ctx.clone()).instrument(span));
}

/// Receives from clients, starts and expires their sessions, and queues what survives the
/// loss draw for the upstream delay line.
async fn udp_loop(listen: Arc<UdpSocket>, up: mpsc::Sender<Datagram>, down: mpsc::Sender<Datagram>, ctx: Arc<Ctx>) {
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut impairment = Impairment::new(&ctx.config);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let idle_ms = ctx.config.udp_idle.as_millis() as u64;
    let mut sweep =
        tokio::time::interval((ctx.config.udp_idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (n, client) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = sweep.tick() => {
                let now = ctx.millis();
                sessions.retain(|client, session| {
                    let idle = now.saturating_sub(session.last_seen.load(Ordering::Relaxed)) >= idle_ms;
                    if idle {
                        tracing::debug!(%client, "UDP session idle; forgotten");
                        session.stop.cancel();
                    }
                    !idle && !session.stop.is_cancelled()
                });
                continue;
            }
            received = listen.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "UDP receive failed");
                    continue;
                }
            },
        };
        if sessions.get(&client).is_some_and(|s| s.stop.is_cancelled()) {
            sessions.remove(&client);
        }
        let session = match sessions.entry(client) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => match open_session(client, &listen, &down, &ctx).await {
                Ok(session) => entry.insert(session),
                Err(error) => {
                    tracing::warn!(%error, %client, "cannot open an upstream UDP socket; datagram dropped");
                    continue;
                }
            },
        };
        session.last_seen.store(ctx.millis(), Ordering::Relaxed);
        let Some(at) = impairment.datagram(Instant::now()) else {
            Counters::add(&ctx.counters.dropped[Direction::Up as usize], 1);
            continue;
        };
        let datagram = Datagram { at, seq: 0, payload: buf[..n].to_vec(), via: session.upstream.clone(), to: None };
        if up.send(datagram).await.is_err() {
            break;
        }
    }
    for session in sessions.values() {
        session.stop.cancel();
    }
}

/// Opens the upstream socket of a new client and starts the task that relays its replies.
async fn open_session(
    client: SocketAddr,
    listen: &Arc<UdpSocket>,
    down: &mpsc::Sender<Datagram>,
    ctx: &Arc<Ctx>,
) -> io::Result<Session> {
    let to = ctx.config.to;
    let local: SocketAddr = match (to.is_ipv4(), to.ip().is_loopback()) {
        (true, true) => (Ipv4Addr::LOCALHOST, 0).into(),
        (true, false) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        (false, true) => (Ipv6Addr::LOCALHOST, 0).into(),
        (false, false) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let upstream = UdpSocket::bind(local).await?;
    upstream.connect(to).await?;
    let upstream = Arc::new(upstream);
    let session =
        Session { upstream, last_seen: Arc::new(AtomicU64::new(ctx.millis())), stop: ctx.shutdown.child_token() };
    Counters::add(&ctx.counters.udp_sessions, 1);
    Counters::add(&ctx.counters.udp_active, 1);
    let span = tracing::debug_span!("wan_session", %client, upstream = ?session.upstream.local_addr().ok());
    let replies = session_replies(
        client,
        session.upstream.clone(),
        listen.clone(),
        down.clone(),
        session.last_seen.clone(),
        session.stop.clone(),
        ctx.clone(),
    );
    ctx.tracker.spawn(replies.instrument(span));
    Ok(session)
}

/// Receives one session's replies from upstream and queues what survives the loss draw for
/// the downstream delay line.
async fn session_replies(
    client: SocketAddr,
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    down: mpsc::Sender<Datagram>,
    last_seen: Arc<AtomicU64>,
    stop: CancellationToken,
    ctx: Arc<Ctx>,
) {
    let mut impairment = Impairment::new(&ctx.config);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => break,
            received = upstream.recv(&mut buf) => match received {
                Ok(n) => n,
                // An ICMP error for an earlier datagram (nothing listening upstream yet): the
                // upstream may still start, so the session lives on.
                Err(error) if matches!(error.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => {
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "upstream UDP receive failed; session closed");
                    break;
                }
            },
        };
        last_seen.store(ctx.millis(), Ordering::Relaxed);
        let Some(at) = impairment.datagram(Instant::now()) else {
            Counters::add(&ctx.counters.dropped[Direction::Down as usize], 1);
            continue;
        };
        let datagram = Datagram { at, seq: 0, payload: buf[..n].to_vec(), via: listen.clone(), to: Some(client) };
        if down.send(datagram).await.is_err() {
            break;
        }
    }
    stop.cancel();
    ctx.counters.udp_active.fetch_sub(1, Ordering::Relaxed);
}

/// Holds one direction's datagrams until they are due, in a heap ordered by due time, and
/// sends them then.
async fn delay_line(mut handoff: mpsc::Receiver<Datagram>, direction: Direction, ctx: Arc<Ctx>) {
    let mut line: BinaryHeap<Reverse<Datagram>> = BinaryHeap::new();
    let mut line_bytes = 0usize;
    let mut seq = 0u64;
    let mut open = true;
    let mut batch = Vec::with_capacity(UDP_BATCH);
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    loop {
        let head = line.peek().map(|Reverse(d)| d.at);
        match head {
            Some(at) if timer.deadline() != at => timer.as_mut().reset(at),
            Some(_) => {}
            None if !open => break,
            None => {}
        }
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break,
            () = &mut timer, if head.is_some() => {
                let now = Instant::now();
                while line.peek().is_some_and(|Reverse(d)| d.at <= now) {
                    if let Some(Reverse(datagram)) = line.pop() {
                        line_bytes -= datagram.payload.len();
                        deliver(datagram, direction, &ctx.counters).await;
                    }
                }
            }
            received = handoff.recv_many(&mut batch, UDP_BATCH), if open => {
                if received == 0 {
                    open = false;
                }
                for mut datagram in batch.drain(..) {
                    if line_bytes + datagram.payload.len() > UDP_QUEUE_BYTES {
                        Counters::add(&ctx.counters.overflowed, 1);
                        continue;
                    }
                    seq += 1;
                    datagram.seq = seq;
                    line_bytes += datagram.payload.len();
                    line.push(Reverse(datagram));
                }
            }
        }
    }
}

async fn deliver(datagram: Datagram, direction: Direction, counters: &Counters) {
    let sent = match datagram.to {
        Some(to) => datagram.via.send_to(&datagram.payload, to).await,
        None => datagram.via.send(&datagram.payload).await,
    };
    match sent {
        Ok(n) => {
            Counters::add(&counters.bytes[direction as usize], n as u64);
            Counters::add(&counters.datagrams[direction as usize], 1);
        }
        Err(error) => tracing::trace!(%error, ?direction, "datagram not sent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(delay_ms: u64, jitter_ms: u64, loss: f64) -> WanConfig {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        WanConfig {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            ..WanConfig::new(addr, addr)
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        wan: WanArgs,
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["wan-proxy", "--listen", "127.0.0.1:17701", "--to", "127.0.0.1:7701"]).unwrap();
        let w = cli.wan;
        assert_eq!((w.delay, w.jitter, w.loss, w.protocol), (Duration::ZERO, Duration::ZERO, 0.0, Protocol::Both));
        assert_eq!(w.udp_idle, Duration::from_secs(60));
        let cli = Cli::try_parse_from([
            "wan-proxy",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "localhost:7701",
            "--delay",
            "80ms",
            "--jitter",
            "5ms",
            "--loss",
            "0.5%",
            "--protocol",
            "udp",
            "--udp-idle",
            "2m",
        ])
        .unwrap();
        let w = cli.wan;
        assert_eq!((w.delay, w.jitter, w.loss), (Duration::from_millis(80), Duration::from_millis(5), 0.005));
        assert_eq!(
            (w.protocol, w.udp_idle, w.to.as_str()),
            (Protocol::Udp, Duration::from_secs(120), "localhost:7701")
        );
        assert!(Cli::try_parse_from(["wan-proxy", "--listen", "127.0.0.1:0", "--to", "x:1", "--loss", "200%"]).is_err());
    }

    #[test]
    fn losses_parse_as_percentages() {
        assert_eq!(parse_loss("0.5%").unwrap(), 0.005);
        assert_eq!(parse_loss("0.5").unwrap(), 0.005);
        assert_eq!(parse_loss(" 100 % ").unwrap(), 1.0);
        assert_eq!(parse_loss("0").unwrap(), 0.0);
        assert!(parse_loss("101%").is_err());
        assert!(parse_loss("-1").is_err());
        assert!(parse_loss("some").is_err());
    }

    #[test]
    fn configs_are_validated() {
        assert!(config(0, 0, 0.5).validate().is_ok());
        assert!(config(0, 0, 1.5).validate().is_err());
        assert!(config(0, 0, f64::NAN).validate().is_err());
        assert!(WanConfig { udp_idle: Duration::ZERO, ..config(0, 0, 0.0) }.validate().is_err());
    }

    #[test]
    fn datagram_latency_stays_within_the_jitter() {
        let mut impairment = Impairment::new(&config(50, 10, 0.0));
        let now = Instant::now();
        let (mut earliest, mut latest) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let at = impairment.datagram(now).expect("no loss configured");
            earliest = earliest.min(at - now);
            latest = latest.max(at - now);
        }
        assert!(earliest >= Duration::from_millis(40), "{earliest:?}");
        assert!(latest <= Duration::from_millis(60), "{latest:?}");
        // 10 000 uniform draws cover the range: jitter is really applied.
        assert!(earliest < Duration::from_millis(41) && latest > Duration::from_millis(59));
    }

    #[test]
    fn latency_never_goes_below_zero() {
        let mut impairment = Impairment::new(&config(1, 50, 0.0));
        let draws: Vec<Duration> = (0..1000).map(|_| impairment.latency()).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(51)));
        // About half the draws fall below zero and are clamped to it.
        assert!(draws.iter().filter(|d| d.is_zero()).count() > 300);
    }

    #[test]
    fn loss_is_drawn_with_its_probability() {
        let now = Instant::now();
        let mut none = Impairment::new(&config(0, 0, 0.0));
        assert!((0..10_000).all(|_| none.datagram(now).is_some()));
        let mut all = Impairment::new(&config(0, 0, 1.0));
        assert!((0..10_000).all(|_| all.datagram(now).is_none()));
        let mut some = Impairment::new(&config(0, 0, 0.25));
        let lost = (0..100_000).filter(|_| some.datagram(now).is_none()).count();
        // Standard deviation ≈ 137: ±2000 is far beyond chance.
        assert!((23_000..27_000).contains(&lost), "{lost}");
    }

    #[test]
    fn tcp_chunks_keep_their_order_under_jitter() {
        let mut schedule = InOrder::new(&config(20, 19, 0.05));
        let start = Instant::now();
        let mut previous = start;
        let mut held = 0;
        for i in 0..10_000u64 {
            let now = start + Duration::from_micros(i * 100);
            let (at, was_held) = schedule.chunk(now);
            held += u32::from(was_held);
            assert!(at >= previous, "chunk {i} would overtake the one before it");
            assert!(at >= now + Duration::from_millis(1), "chunk {i} is early");
            previous = at;
        }
        assert!(held > 0);
    }

    #[test]
    fn a_lost_tcp_chunk_is_held_three_more_delays() {
        let mut schedule = InOrder::new(&config(20, 0, 1.0));
        let now = Instant::now();
        let (at, held) = schedule.chunk(now);
        assert!(held);
        assert_eq!(at - now, Duration::from_millis(80));
    }
}
