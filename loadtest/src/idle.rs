//! The `idle` scenario: how much edge memory an idle WebSocket session costs, and how many one
//! edge holds (ARCHITECTURE §6 target: ≥ 100,000 sessions, ≤ 4 KiB of edge memory each).
//!
//! Against a running edge in its own process (in process, the clients' memory would be counted
//! too), it seeds a workspace with `--users` users, opens one session per user to load the
//! workspace and their tokens into the edge, and reads the edge's `process_resident_memory_bytes`
//! and `selvage_edge_connections` from its `/metrics`. Then it opens `--sessions` more sessions
//! (lean clients: boot, then only answer the edge's pings), their TCP sockets bound to source
//! addresses 127.0.0.1 … 127.0.0.K (`--source-ips K`) so that more than one address's ~28,000
//! ephemeral ports are available, waits `--settle`, and reads the metrics again:
//! bytes per session = ΔRSS ÷ sessions.
//!
//! Both processes need more open files than the usual 1,024: `selvage` raises its soft limit to
//! the hard limit at start, so raise the hard limit (`ulimit -Hn`) before starting the edge and
//! this test when asking for many sessions.
//!
//! With `--quic ADDR --fingerprint FP` the sessions are QUIC ones (ALPN `selvage/1`) instead,
//! opened through a few shared client endpoints: a QUIC session costs neither side a file
//! descriptor (the edge serves every one through its one UDP socket), so this holds as many
//! sessions as memory allows where the open-file limit caps WebSocket ones.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::{stream, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use selvage_client::{open_quic_session, quic_client_config, DEFAULT_SERVER_NAME, MAX_SERVER_FRAME_BYTES};
use selvage_net::quic::read_frame;
use selvage_net::tls::Trust;
use selvage_shared::{ClientOpen, Format};

use crate::deployment::{host_port, scrape, Scrape};
use crate::lean::{self, WireFormat, Ws};
use crate::seed::{person_name, Api};
use crate::sends::parse_duration;

/// Edge memory one idle session may cost (ARCHITECTURE §6: 4 KiB).
pub const TARGET_BYTES_PER_SESSION: f64 = 4096.0;

/// Read buffer of an idle session: it only ever reads its `hello` and pings.
const IDLE_READ_BUFFER: usize = 4096;

/// Sessions one source address is given, well inside Linux's default ephemeral port range
/// (32768–60999).
const SESSIONS_PER_SOURCE_IP: usize = 25_000;

/// QUIC sessions sharing one client endpoint (one UDP socket and the task driving it).
const SESSIONS_PER_QUIC_ENDPOINT: usize = 10_000;

/// Kernel buffer asked for each client endpoint's UDP socket.
const QUIC_SOCKET_BUFFER: usize = 4 << 20;

/// `selvage loadtest idle` arguments.
#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    /// Base URL of the origin's HTTP API, e.g. http://127.0.0.1:7700 (seeding goes there).
    #[arg(long)]
    pub origin: String,
    /// The edge to measure, in its own process: its HTTP/WebSocket address, e.g.
    /// http://127.0.0.1:7800 (`/v1/connect` and `/metrics` there).
    #[arg(long)]
    pub edge: String,
    /// The origin's operator key, to create the test workspace.
    #[arg(long, env = "SELVAGE_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: String,
    /// Idle sessions to open (and hold while measuring).
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Users of the test workspace; sessions are spread over them.
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Source addresses 127.0.0.1 … 127.0.0.K the sessions' sockets are bound to
    /// [default: one per 25,000 sessions].
    #[arg(long)]
    pub source_ips: Option<u8>,
    /// Sessions being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Wire format of the sessions.
    #[arg(long, value_enum, default_value = "msgpack")]
    pub format: WireFormat,
    /// Open QUIC sessions instead of WebSocket ones, to the edge's QUIC address (it prints
    /// `quic on ADDR fingerprint FP` at start), e.g. 127.0.0.1:7801.
    #[arg(long, requires = "fingerprint")]
    pub quic: Option<String>,
    /// The edge's QUIC certificate fingerprint (SHA-256, hex), pinned.
    #[arg(long, requires = "quic")]
    pub fingerprint: Option<String>,
    /// How long to wait after the last session is open before reading the edge's memory.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
    /// How long to keep the sessions open after measuring (to look at the edge by hand).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One reading of the edge.
#[derive(Debug, Serialize)]
pub struct EdgeReading {
    /// `process_resident_memory_bytes`.
    pub resident_bytes: f64,
    /// `selvage_edge_connections`, all transports.
    pub connections: f64,
    /// `process_open_fds`.
    pub open_fds: Option<f64>,
}

impl EdgeReading {
    fn of(scrape: &Scrape) -> Result<EdgeReading> {
        Ok(EdgeReading {
            resident_bytes: scrape
                .sum("process_resident_memory_bytes")
                .context("the edge's /metrics has no process_resident_memory_bytes (an older selvage?)")?,
            connections: scrape.sum("selvage_edge_connections").unwrap_or(0.0),
            open_fds: scrape.sum("process_open_fds"),
        })
    }
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    /// `websocket` or `quic`.
    pub transport: &'static str,
    /// Sessions opened and held.
    pub sessions: usize,
    /// Source addresses used.
    pub source_ips: u8,
    /// Seconds opening them took.
    pub connect_seconds: f64,
    /// The edge before (after the warm-up sessions).
    pub before: EdgeReading,
    /// The edge with every session open, after settling.
    pub after: EdgeReading,
    /// (after − before resident memory) ÷ sessions.
    pub bytes_per_session: f64,
}

/// Runs the scenario and prints the report.
pub async fn run(args: IdleArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, print_report)?;
    Ok(())
}

/// Seeds, warms up, opens the sessions, measures, and closes them.
pub async fn measure(args: &IdleArgs) -> Result<IdleReport> {
    if args.sessions == 0 || args.users == 0 || args.connect_concurrency == 0 {
        bail!("--sessions, --users and --connect-concurrency must be at least 1");
    }
    let source_ips = match args.source_ips {
        Some(0) => bail!("--source-ips must be at least 1"),
        Some(k) => k,
        None => u8::try_from(args.sessions.div_ceil(SESSIONS_PER_SOURCE_IP)).unwrap_or(u8::MAX),
    };
    if args.sessions > source_ips as usize * SESSIONS_PER_SOURCE_IP {
        eprintln!(
            "warning: {} sessions from {source_ips} source addresses may run out of ephemeral ports; raise --source-ips",
            args.sessions
        );
    }
    let http = reqwest::Client::new();
    let api = Api::new(http.clone(), &args.origin, 32);
    let edge = host_port(&args.edge)?;
    let metrics_url = format!("http://{edge}/metrics");
    let addr: SocketAddr =
        tokio::net::lookup_host(&edge).await?.next().with_context(|| format!("{edge} does not resolve"))?;
    let format = args.format.format();
    let dialer = match (&args.quic, &args.fingerprint) {
        (Some(quic), Some(fingerprint)) => {
            let quic: SocketAddr =
                tokio::net::lookup_host(quic).await?.next().with_context(|| format!("{quic} does not resolve"))?;
            Dialer::quic(quic, fingerprint, args.sessions + args.users)?
        }
        _ => Dialer::Ws { addr, format },
    };

    let ws =
        api.create_workspace(&args.operator_key, &format!("loadtest idle {}", std::process::id()), "admin").await?;
    let people = (0..args.users).map(|i| (format!("u{i:05}"), person_name(i))).collect();
    let users = api.create_users(&ws.admin, people).await?;
    let tokens: Vec<String> = users.into_iter().map(|m| m.token).collect();

    // Warm-up: the workspace and every token are cached at the edge before the first reading.
    let stop = CancellationToken::new();
    let mut warm = Vec::new();
    for token in &tokens {
        let session = dialer.open(0, None, token).await.context("a warm-up session failed")?;
        warm.push(tokio::spawn(hold(session, stop.clone())));
    }
    tokio::time::sleep(args.settle).await;
    let before = EdgeReading::of(&scrape(&http, &metrics_url).await?)?;

    match &dialer {
        Dialer::Ws { .. } => {
            eprintln!("opening {} idle WebSocket sessions from {source_ips} source addresses ...", args.sessions)
        }
        Dialer::Quic { endpoints, .. } => {
            eprintln!("opening {} idle QUIC sessions through {} client endpoints ...", args.sessions, endpoints.len())
        }
    }
    let started = Instant::now();
    let opened = Arc::new(AtomicU64::new(0));
    let progress = progress(opened.clone(), args.sessions);
    let results = stream::iter(0..args.sessions)
        .map(|i| {
            let token = &tokens[i % tokens.len()];
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % source_ips as usize) as u8));
            let (opened, stop, dialer) = (opened.clone(), stop.clone(), &dialer);
            async move {
                let session = dialer.open(i, Some(source), token).await?;
                opened.fetch_add(1, Ordering::Relaxed);
                anyhow::Ok(tokio::spawn(hold(session, stop)))
            }
        })
        .buffer_unordered(args.connect_concurrency)
        .collect::<Vec<_>>()
        .await;
    progress.abort();
    let connect_seconds = started.elapsed().as_secs_f64();
    let mut held = Vec::with_capacity(results.len());
    let mut failures = 0;
    let mut first_failure = None;
    for r in results {
        match r {
            Ok(task) => held.push(task),
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert(format!("{e:#}"));
            }
        }
    }
    if let Some(e) = first_failure {
        stop.cancel();
        bail!("{failures} of {} sessions failed to open; the first: {e}", args.sessions);
    }
    eprintln!(
        "{} sessions open in {connect_seconds:.1} s; settling for {:.0} s ...",
        held.len(),
        args.settle.as_secs_f64()
    );
    tokio::time::sleep(args.settle).await;
    let after = EdgeReading::of(&scrape(&http, &metrics_url).await?)?;
    let lost = held.iter().filter(|t| t.is_finished()).count();
    if lost > 0 {
        stop.cancel();
        bail!("{lost} sessions were closed by the edge while idle");
    }
    if !args.hold.is_zero() {
        eprintln!("holding the sessions for {:.0} s ...", args.hold.as_secs_f64());
        tokio::time::sleep(args.hold).await;
    }
    stop.cancel();
    for task in held.into_iter().chain(warm) {
        let _ = task.await;
    }
    Ok(IdleReport {
        transport: dialer.transport(),
        sessions: args.sessions,
        source_ips,
        connect_seconds,
        bytes_per_session: (after.resident_bytes - before.resident_bytes) / args.sessions as f64,
        before,
        after,
    })
}

/// Opens sessions of one transport.
enum Dialer {
    Ws { addr: SocketAddr, format: Format },
    Quic { addr: SocketAddr, config: quinn::ClientConfig, endpoints: Vec<quinn::Endpoint> },
}

/// An open idle session.
enum Idle {
    Ws(Box<Ws>),
    Quic { conn: quinn::Connection, _stream: (quinn::SendStream, quinn::RecvStream) },
}

impl Dialer {
    /// The transport's name in the report: `websocket` or `quic`.
    fn transport(&self) -> &'static str {
        match self {
            Dialer::Ws { .. } => "websocket",
            Dialer::Quic { .. } => "quic",
        }
    }

    /// Client endpoints for `sessions` QUIC sessions to `addr`, trusting the certificate
    /// `fingerprint`.
    fn quic(addr: SocketAddr, fingerprint: &str, sessions: usize) -> Result<Dialer> {
        let config = quic_client_config(&Trust::Pinned(fingerprint.to_owned()))?;
        let bind: SocketAddr = if addr.is_ipv4() { (Ipv4Addr::LOCALHOST, 0).into() } else { "[::1]:0".parse()? };
        let endpoints = (0..sessions.div_ceil(SESSIONS_PER_QUIC_ENDPOINT).max(1))
            .map(|_| {
                // Room for the edge's answers to a burst of handshakes (the kernel may grant less).
                let (socket, _) = selvage_net::quic::udp_socket(bind, QUIC_SOCKET_BUFFER)?;
                let runtime = Arc::new(quinn::TokioRuntime);
                quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            })
            .collect::<std::io::Result<_>>()
            .context("cannot bind a QUIC client endpoint")?;
        Ok(Dialer::Quic { addr, config, endpoints })
    }

    /// Opens session number `i` and reads its `hello`; WebSocket sessions bind to `source`.
    async fn open(&self, i: usize, source: Option<IpAddr>, token: &str) -> Result<Idle> {
        match self {
            Dialer::Ws { addr, format } => {
                let mut ws = lean::dial(*addr, source, token, *format, lean::ws_config(IDLE_READ_BUFFER)).await?;
                lean::expect_hello(&lean::next_data(&mut ws).await?, *format)?;
                Ok(Idle::Ws(Box::new(ws)))
            }
            Dialer::Quic { addr, config, endpoints } => {
                let endpoint = &endpoints[i % endpoints.len()];
                let open = ClientOpen { token: token.to_owned(), resume: None };
                let (conn, send, mut recv) =
                    open_quic_session(endpoint, config.clone(), *addr, DEFAULT_SERVER_NAME, &open).await?;
                let hello = read_frame(&mut recv, MAX_SERVER_FRAME_BYTES)
                    .await
                    .map_err(|e| anyhow::anyhow!("reading the hello: {e}"))?
                    .context("the edge ended the stream before its hello")?;
                lean::expect_hello(&hello, Format::MsgPack)?;
                Ok(Idle::Quic { conn, _stream: (send, recv) })
            }
        }
    }
}

/// Keeps a session open until `stop` (a WebSocket one reading, which answers the edge's pings;
/// QUIC keeps itself alive); ends early if the edge closes it.
async fn hold(session: Idle, stop: CancellationToken) {
    match session {
        Idle::Ws(mut ws) => loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                next = ws.next() => if !matches!(next, Some(Ok(_))) { return },
            }
        },
        Idle::Quic { conn, _stream } => {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn.closed() => {}
            }
        }
    }
    // Dropped rather than closed politely: a close handshake per session would take as long as
    // opening them did.
}

fn progress(opened: Arc<AtomicU64>, total: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n = opened.load(Ordering::Relaxed);
            eprintln!("  {n} of {total} open, {:.0}/s", n as f64 / start.elapsed().as_secs_f64());
        }
    })
}

fn print_report(r: &IdleReport) {
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "selvage loadtest idle — {} idle {} sessions on one edge ({} source addresses)",
        r.sessions,
        if r.transport == "quic" { "QUIC" } else { "WebSocket" },
        r.source_ips
    );
    println!("  opened in          {:.1} s ({:.0}/s)", r.connect_seconds, r.sessions as f64 / r.connect_seconds);
    println!(
        "  edge connections   {:.0} before, {:.0} after (open fds {} → {})",
        r.before.connections,
        r.after.connections,
        r.before.open_fds.map_or("?".into(), |f| format!("{f:.0}")),
        r.after.open_fds.map_or("?".into(), |f| format!("{f:.0}"))
    );
    println!(
        "  edge resident      {:.1} MiB before, {:.1} MiB after (+{:.1} MiB)",
        mib(r.before.resident_bytes),
        mib(r.after.resident_bytes),
        mib(r.after.resident_bytes - r.before.resident_bytes)
    );
    println!(
        "  per session        {:.0} bytes ({:.2} KiB); target ≤ {:.0} KiB: {}",
        r.bytes_per_session,
        r.bytes_per_session / 1024.0,
        TARGET_BYTES_PER_SESSION / 1024.0,
        if r.bytes_per_session <= TARGET_BYTES_PER_SESSION { "met" } else { "NOT met" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::Deployment;

    fn args(d: &Deployment, sessions: usize) -> IdleArgs {
        IdleArgs {
            origin: d.origin_url().to_owned(),
            edge: format!("http://{}", d.edge_addr),
            operator_key: d.operator_key().to_owned(),
            sessions,
            users: 3,
            source_ips: Some(1),
            connect_concurrency: 16,
            format: WireFormat::Msgpack,
            quic: None,
            fingerprint: None,
            settle: Duration::from_millis(200),
            hold: Duration::ZERO,
            json: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_websocket_and_quic_sessions_and_counts_them_at_the_edge() {
        let d = Deployment::in_process_with(reqwest::Client::new(), 8, |edge| {
            edge.quic_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await
        .unwrap();
        let ws = measure(&args(&d, 40)).await.unwrap();
        assert_eq!(ws.transport, "websocket");
        assert_eq!(ws.after.connections - ws.before.connections, 40.0, "{ws:?}");

        let (quic, fingerprint) = d.local_edge_quic().expect("the edge listens for QUIC");
        let mut a = args(&d, 60);
        a.quic = Some(quic.to_string());
        a.fingerprint = Some(fingerprint);
        let q = measure(&a).await.unwrap();
        assert_eq!(q.transport, "quic");
        assert_eq!(q.after.connections - q.before.connections, 60.0, "{q:?}");

        // A wrong fingerprint is refused, not trusted.
        a.fingerprint = Some("00".repeat(32));
        assert!(measure(&a).await.is_err());
        d.stop().await;
    }
}
