//! Where the edge scenarios (`hello`, `fanout`) find the system under test: an origin and an
//! edge started inside this process, or a running deployment given by URLs. Also reads what
//! those processes say about themselves on `/metrics`.
//!
//! In process, the origin runs on the embedded store in a temporary directory with its QUIC link
//! on, and the edge links to it exactly as `selvage dev` wires them (shared edge key, the link
//! certificate pinned by fingerprint). Client QUIC is off: the scenarios speak WebSocket.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use selvage_edge::EdgeConfig;
use selvage_origin::OriginConfig;
use tokio_util::sync::CancellationToken;

use crate::seed::Api;

/// The in-process edge's `sessions.max_connections_per_user`: the load tester opens many
/// sessions per seeded user.
pub const LOADTEST_CONNECTIONS_PER_USER: usize = 1 << 20;

/// How long the in-process edge may take to link to the in-process origin.
const LINK_TIMEOUT: Duration = Duration::from_secs(20);

/// Where to run a scenario.
#[derive(Args, Clone, Debug)]
pub struct DeploymentArgs {
    /// Start an origin (embedded store, fsync on, in a temporary directory) and an edge linked
    /// to it inside this process. Simple, but the load generator then shares the process (and
    /// its CPU figures) with both.
    #[arg(long, conflicts_with_all = ["origin", "edge"])]
    pub in_process: bool,
    /// Base URL of a running origin's HTTP API, e.g. http://127.0.0.1:7700 (seeding goes there).
    #[arg(long, requires = "edge")]
    pub origin: Option<String>,
    /// A running edge linked to that origin: its HTTP/WebSocket address, e.g.
    /// http://127.0.0.1:7800 or ws://127.0.0.1:7800 (clients connect to /v1/connect there).
    #[arg(long, requires = "origin")]
    pub edge: Option<String>,
    /// The origin's operator key, to create the test workspace (`selvage dev` prints one).
    #[arg(long, env = "SELVAGE_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<String>,
    /// HTTP requests in flight at once while seeding the workspace.
    #[arg(long, default_value_t = 64)]
    pub seed_concurrency: usize,
}

/// An origin and an edge (or more, [`Deployment::add_in_process_edge`]) running inside this
/// process.
struct InProcess {
    origin: selvage_origin::Running,
    edge: selvage_edge::Running,
    /// Edges added after the first.
    more_edges: Vec<selvage_edge::Running>,
    /// The first edge's configuration before its adjustment: what further edges start from.
    edge_base: EdgeConfig,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

/// The system under test.
pub struct Deployment {
    /// The origin's HTTP API, for seeding.
    pub api: Api,
    /// The key that creates workspaces.
    pub operator_key: String,
    /// `host:port` of the edge's HTTP listener (`/v1/connect`, `/metrics`): the first of
    /// `edge_addrs`.
    pub edge_addr: String,
    /// `host:port` of every edge clients may use (`selvage loadtest run --target A --target B`),
    /// the first being `edge_addr`.
    pub edge_addrs: Vec<String>,
    in_process: Option<InProcess>,
    http: reqwest::Client,
}

impl Deployment {
    /// Starts the in-process pair, or checks that the given URLs are complete.
    pub async fn start(args: &DeploymentArgs) -> Result<Deployment> {
        let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
        if args.seed_concurrency == 0 {
            bail!("--seed-concurrency must be at least 1");
        }
        if args.in_process {
            return Deployment::in_process(http, args.seed_concurrency).await;
        }
        let (Some(origin), Some(edge)) = (&args.origin, &args.edge) else {
            bail!("give --in-process, or --origin URL and --edge URL of a running deployment");
        };
        let operator_key = args
            .operator_key
            .clone()
            .context("--operator-key (or SELVAGE_OPERATOR_KEY) is needed to create the test workspace")?;
        let api = Api::new(http.clone(), origin, args.seed_concurrency);
        let edge_addr = host_port(edge)?;
        Ok(Deployment { api, operator_key, edge_addrs: vec![edge_addr.clone()], edge_addr, in_process: None, http })
    }

    async fn in_process(http: reqwest::Client, seed_concurrency: usize) -> Result<Deployment> {
        Deployment::in_process_with(http, seed_concurrency, |_| {}).await
    }

    /// Starts an origin and an edge in this process, the edge's configuration changed by
    /// `adjust` (for scenarios that compare edge settings).
    pub async fn in_process_with(
        http: reqwest::Client,
        seed_concurrency: usize,
        adjust: impl FnOnce(&mut EdgeConfig),
    ) -> Result<Deployment> {
        Deployment::in_process_configured(http, seed_concurrency, |_| {}, adjust).await
    }

    /// Starts an origin and an edge in this process, the origin's configuration changed by
    /// `adjust_origin` (e.g. files enabled) and the edge's by `adjust_edge`.
    pub async fn in_process_configured(
        http: reqwest::Client,
        seed_concurrency: usize,
        adjust_origin: impl FnOnce(&mut OriginConfig),
        adjust_edge: impl FnOnce(&mut EdgeConfig),
    ) -> Result<Deployment> {
        let dir = tempfile::tempdir()?;
        let shutdown = CancellationToken::new();
        let operator_key = selvage_origin::ids::new_token();
        let edge_key = selvage_origin::ids::new_token();
        let mut config = OriginConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().to_path_buf(),
            operator_key: Some(operator_key.clone()),
            ..OriginConfig::default()
        };
        config.link.listen = "127.0.0.1:0".parse()?;
        config.link.edge_key = Some(edge_key.clone());
        // The benchmarks here measure the core (sends, fan-out, boot); search indexing has a
        // benchmark of its own (`loadtest search`), and the checker's scenarios do not search.
        // Notifications are off for the same reason.
        config.search.enabled = false;
        config.notify.enabled = false;
        // Simulated clients share a few tokens: rate limits per token would measure themselves.
        config.rate_limits.enabled = false;
        adjust_origin(&mut config);
        let origin = selvage_origin::start(config, shutdown.clone()).await?;
        let (Some(link), Some(fingerprint)) = (origin.link_addr, origin.link_fingerprint.clone()) else {
            bail!("the in-process origin's link did not start");
        };
        let mut edge_config = EdgeConfig {
            edge_id: "loadtest-edge".into(),
            listen: "127.0.0.1:0".parse()?,
            quic_listen: None,
            ..EdgeConfig::default()
        };
        // Simulated clients share a few users' tokens, far past a person's devices: an edge
        // under load test needs its per-user cap raised (see docs/BENCHMARKS.md).
        edge_config.sessions.max_connections_per_user = LOADTEST_CONNECTIONS_PER_USER;
        edge_config.rate_limits.enabled = false;
        edge_config.origin.link = link.to_string();
        edge_config.origin.fingerprint = Some(fingerprint);
        edge_config.origin.edge_key = edge_key;
        let edge_base = edge_config.clone();
        adjust_edge(&mut edge_config);
        let edge = match start_linked_edge(edge_config, &shutdown).await {
            Ok(edge) => edge,
            Err(e) => {
                shutdown.cancel();
                return Err(e);
            }
        };
        let api = Api::new(http.clone(), &format!("http://{}", origin.addr), seed_concurrency);
        let edge_addr = edge.addr.to_string();
        Ok(Deployment {
            api,
            operator_key,
            edge_addrs: vec![edge_addr.clone()],
            edge_addr,
            in_process: Some(InProcess { origin, edge, more_edges: Vec::new(), edge_base, shutdown, _dir: dir }),
            http,
        })
    }

    /// Starts one more edge in this process, linked to the in-process origin like the first
    /// (its configuration before that one's adjustment, then `adjust`), and adds it to
    /// `edge_addrs`; returns its `host:port`. Only for an in-process deployment.
    pub async fn add_in_process_edge(&mut self, edge_id: &str, adjust: impl FnOnce(&mut EdgeConfig)) -> Result<String> {
        let Some(p) = self.in_process.as_mut() else {
            bail!("edges are added only to an in-process deployment");
        };
        let mut config = p.edge_base.clone();
        config.edge_id = edge_id.into();
        adjust(&mut config);
        let edge = start_linked_edge(config, &p.shutdown).await?;
        let addr = edge.addr.to_string();
        p.more_edges.push(edge);
        self.edge_addrs.push(addr.clone());
        Ok(addr)
    }

    /// Points the clients at these edges (URLs like `http://h:p`, `ws://h:p` or `h:p`), the
    /// first becoming `edge_addr`.
    pub fn set_edges(&mut self, urls: &[String]) -> Result<()> {
        let addrs = urls.iter().map(|u| host_port(u)).collect::<Result<Vec<_>>>()?;
        let Some(first) = addrs.first() else {
            bail!("no edge given");
        };
        self.edge_addr = first.clone();
        self.edge_addrs = addrs;
        Ok(())
    }

    /// `in-process` or `remote`, for reports.
    pub fn target_name(&self) -> &'static str {
        if self.in_process.is_some() {
            "in-process"
        } else {
            "remote"
        }
    }

    /// Whether the origin and edge run inside this process.
    pub fn is_in_process(&self) -> bool {
        self.in_process.is_some()
    }

    /// The in-process origin, to read what only the origin can say (its workspace snapshot).
    pub fn local_origin(&self) -> Option<&std::sync::Arc<selvage_origin::Origin>> {
        self.in_process.as_ref().map(|p| &p.origin.origin)
    }

    /// The in-process edge's QUIC address and certificate fingerprint, when it listens for QUIC.
    pub fn local_edge_quic(&self) -> Option<(std::net::SocketAddr, String)> {
        let edge = &self.in_process.as_ref()?.edge;
        Some((edge.quic_addr?, edge.quic_fingerprint.clone()?))
    }

    /// The origin's HTTP base URL.
    pub fn origin_url(&self) -> &str {
        self.api.base()
    }

    /// The operator key the deployment was given or generated.
    pub fn operator_key(&self) -> &str {
        &self.operator_key
    }

    /// The edge's `/metrics`.
    pub async fn edge_metrics(&self) -> Result<Scrape> {
        scrape(&self.http, &format!("http://{}/metrics", self.edge_addr)).await
    }

    /// The origin's `/metrics`.
    pub async fn origin_metrics(&self) -> Result<Scrape> {
        scrape(&self.http, &format!("{}/metrics", self.api.base())).await
    }

    /// Stops the in-process pair (nothing to do for a remote deployment).
    pub async fn stop(self) {
        if let Some(p) = self.in_process {
            p.shutdown.cancel();
            p.edge.wait().await;
            for edge in p.more_edges {
                edge.wait().await;
            }
            p.origin.wait().await;
        }
    }
}

/// Starts an in-process edge and waits until it has linked to its origin.
async fn start_linked_edge(config: EdgeConfig, shutdown: &CancellationToken) -> Result<selvage_edge::Running> {
    let edge = selvage_edge::start(config, shutdown.clone()).await?;
    let deadline = Instant::now() + LINK_TIMEOUT;
    while !edge.edge.is_ready() {
        if Instant::now() > deadline {
            bail!("the in-process edge did not link to the in-process origin within {LINK_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(edge)
}

/// `host:port` of a URL like `http://h:p`, `ws://h:p/…` or a bare `h:p`.
pub fn host_port(url: &str) -> Result<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.split('/').next().unwrap_or_default();
    if host_port.is_empty() || !host_port.contains(':') {
        bail!("{url:?} does not name a host and port, e.g. http://127.0.0.1:7800");
    }
    Ok(host_port.to_string())
}

/// Fetches a Prometheus text exposition.
pub async fn scrape(http: &reqwest::Client, url: &str) -> Result<Scrape> {
    let response = http.get(url).send().await.with_context(|| format!("cannot reach {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(Scrape(response.text().await?))
}

/// One reading of a `/metrics` page.
#[derive(Clone, Debug, Default)]
pub struct Scrape(pub String);

impl Scrape {
    /// The samples of metric `name` (any labels) as (labels, value); labels are the text
    /// between the braces, empty when there are none.
    fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0.lines().filter(|l| !l.starts_with('#')).filter_map(move |line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(after) = rest.strip_prefix('{') {
                let (labels, value) = after.split_once('}')?;
                (labels, value)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None; // a longer name with this prefix
            };
            Some((labels, value.trim().split(' ').next()?.parse().ok()?))
        })
    }

    /// The sum of every sample of metric `name`, or `None` when it has none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut samples = self.samples(name).peekable();
        samples.peek()?;
        Some(samples.map(|(_, v)| v).sum())
    }

    /// A histogram's cumulative buckets as (upper bound in its unit, count), in order.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut out: Vec<(f64, f64)> = self
            .samples(&bucket)
            .filter_map(|(labels, count)| {
                let le = labels.split(',').find_map(|l| l.trim().strip_prefix("le="))?.trim_matches('"');
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// The upper bound of the histogram bucket holding quantile `q` of the observations made
/// between two scrapes (`None` when there were none): a histogram only knows its buckets, so
/// this is "at most" the value.
pub fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let old = before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, n)| *n);
            (*le, n - old)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| *le)
}

/// CPU seconds (user + system) this process has used so far.
pub fn own_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given, which lives for the call; a zeroed rusage
    // is a valid value of the type whatever happens.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP selvage_edge_connections Open client connections by transport
# TYPE selvage_edge_connections gauge
selvage_edge_connections{transport=\"quic\"} 2
selvage_edge_connections{transport=\"ws\"} 40
selvage_edge_connections_total 7
process_resident_memory_bytes 1.2345e7
selvage_edge_boot_seconds_bucket{le=\"0.001\"} 3
selvage_edge_boot_seconds_bucket{le=\"0.002\"} 9
selvage_edge_boot_seconds_bucket{le=\"+Inf\"} 10
selvage_edge_boot_seconds_sum 0.01
selvage_edge_boot_seconds_count 10
";

    #[test]
    fn samples_are_summed_by_exact_name() {
        let s = Scrape(PAGE.into());
        assert_eq!(s.sum("selvage_edge_connections"), Some(42.0));
        assert_eq!(s.sum("process_resident_memory_bytes"), Some(12_345_000.0));
        assert_eq!(s.sum("selvage_edge_boot_seconds_count"), Some(10.0));
        assert_eq!(s.sum("missing"), None);
    }

    #[test]
    fn bucket_quantiles_use_the_difference_of_two_scrapes() {
        let after = Scrape(PAGE.into()).buckets("selvage_edge_boot_seconds");
        assert_eq!(after, vec![(0.001, 3.0), (0.002, 9.0), (f64::INFINITY, 10.0)]);
        let before = vec![(0.001, 3.0), (0.002, 3.0), (f64::INFINITY, 3.0)];
        // 7 new observations: none under 1 ms, 6 under 2 ms, 1 above.
        assert_eq!(bucket_quantile(&before, &after, 0.5), Some(0.002));
        assert_eq!(bucket_quantile(&before, &after, 0.99), Some(f64::INFINITY));
        assert_eq!(bucket_quantile(&after, &after, 0.5), None);
    }

    #[test]
    fn host_ports_come_out_of_urls() {
        assert_eq!(host_port("http://127.0.0.1:7800").unwrap(), "127.0.0.1:7800");
        assert_eq!(host_port("ws://edge:80/v1/connect?x").unwrap(), "edge:80");
        assert_eq!(host_port("127.0.0.1:1").unwrap(), "127.0.0.1:1");
        assert!(host_port("http://nohost").is_err());
    }

    #[test]
    fn own_cpu_time_moves_forward() {
        let before = own_cpu_seconds();
        let mut x = 0u64;
        for i in 0..10_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(own_cpu_seconds() >= before);
    }
}
