//! The edge's configuration: one typed struct with defaults that work on one machine.
//!
//! The binary layers it like the origin's: defaults, then a TOML file, then `SELVAGE_*`
//! environment variables (`SELVAGE_LISTEN`, `SELVAGE_ORIGIN__EDGE_KEY`, …), then flags;
//! [`EdgeConfig::validate`] runs before anything starts.

use std::{net::SocketAddr, path::PathBuf};

use selvage_shared::WorkspaceId;
use serde::{Deserialize, Serialize};

/// Everything an edge node needs to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Name of this edge in logs and in the origin's metrics. It need not be unique: on the
    /// link each edge process is `edge_id` and a random suffix made at start (see
    /// [`Edge::instance`](crate::node::Edge::instance)), so edges started from one
    /// configuration never take each other's place at the origin.
    pub edge_id: String,
    /// Address of the WebSocket endpoint `/v1/connect`, `/metrics`, `/healthz`, `/readyz`
    /// and `/admin/drain`. Port 0 picks a free one.
    pub listen: SocketAddr,
    /// Connections the kernel may hold for `listen` before the edge accepts them. A reconnect
    /// storm opens tens of thousands at once; past this many the kernel drops connection
    /// attempts and clients wait for their SYN to be retried (1 s, then 3 s, 7 s, 15 s). The
    /// kernel caps it at `net.core.somaxconn` (4,096 by default): raise that too.
    pub listen_backlog: u32,
    /// UDP address of the client QUIC endpoint (ALPN `selvage/1`); unset turns QUIC off.
    pub quic_listen: Option<SocketAddr>,
    /// Bytes of kernel receive (and send) buffer asked for the QUIC socket. Every QUIC client
    /// shares that one socket, so a storm of handshakes arrives there at once; datagrams that
    /// do not fit are dropped and their clients wait for retransmissions, or time out. The
    /// kernel caps the request at `net.core.rmem_max` (`wmem_max`): raise those too.
    pub quic_socket_buffer: usize,
    /// PEM certificate chain for client QUIC; unset makes a self-signed one at start and
    /// prints its fingerprint for clients to pin.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Names the self-signed certificate is made for.
    pub cert_names: Vec<String>,
    /// Key that authorizes `POST /admin/drain`. Unset disables the endpoint (SIGTERM still
    /// drains).
    pub operator_key: Option<String>,
    /// The link to the origin.
    pub origin: OriginLink,
    /// The warm caches.
    pub cache: CacheConfig,
    /// Client sessions.
    pub sessions: SessionConfig,
    /// Rate limits per token on client frames.
    pub rate_limits: RateLimitsConfig,
    /// The web client at `/` and the API passage at `/v1/…`.
    pub web: WebConfig,
}

/// The web client every edge serves, and the origin's HTTP API passed through beside it
/// (ARCHITECTURE §3 "The web client"): a browser's one address is its edge.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Whether `/` serves the web client and `/v1/…` the API.
    pub enabled: bool,
    /// The origin's HTTP API, where requests to `/v1/…` (all but `/v1/connect`) go, as
    /// `http://host:port`. Empty: they answer `503`.
    pub api_url: String,
    /// Origins besides the edge's own the client may connect to and show images from: the
    /// object store's, whose presigned URLs uploads go to and previews come from
    /// (`https://files.example.com`). They join the page's Content-Security-Policy.
    pub connect_origins: Vec<String>,
    /// Largest request body passed to the API (its bodies are JSON; files go to the object
    /// store).
    pub max_body_bytes: usize,
    /// How long the API may take to answer, in ms (a long-poll of `/v1/events` waits up to
    /// its `wait_ms`).
    pub api_timeout_ms: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            api_url: "http://127.0.0.1:7700".into(),
            connect_origins: Vec::new(),
            max_body_bytes: 1 << 20,
            api_timeout_ms: 60_000,
        }
    }
}

/// Rate limits per token on client frames (ARCHITECTURE §7): a token bucket per token and
/// class. A frame over its rate is answered with a `rate_limited` error carrying
/// `retry_after_ms`, and the session goes on. `typing` and `presence_sub` have limits of their
/// own (`sessions`); `ping` has none.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Whether frames are limited at all. The in-process load tests turn it off: their
    /// simulated clients share a few tokens.
    pub enabled: bool,
    /// `query` frames (history, members, search…) of one token, over all its sessions.
    pub read: selvage_shared::rate::Rate,
    /// `send`, `mark_read`, `set_presence` and `set_notify_prefs` frames of one token.
    pub write: selvage_shared::rate::Rate,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        use selvage_shared::rate::Rate;
        RateLimitsConfig { enabled: true, read: Rate::READS, write: Rate::WRITES }
    }
}

/// Where the origin is and how to trust it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginLink {
    /// `host:port` of the origin's QUIC link (its `link.listen`).
    pub link: String,
    /// TLS name to expect (with `ca_file`).
    pub server_name: String,
    /// SHA-256 fingerprint of the origin's link certificate, as `selvage origin` prints it.
    pub fingerprint: Option<String>,
    /// While the origin's link certificate is being replaced: the new certificate's
    /// fingerprint, trusted beside `fingerprint` (docs/OPERATIONS.md, "Rotating the link key
    /// and certificates").
    pub next_fingerprint: Option<String>,
    /// PEM bundle of CAs to verify the origin's certificate with, instead of a fingerprint.
    pub ca_file: Option<PathBuf>,
    /// The shared secret of the link (the origin's `link.edge_key`).
    pub edge_key: String,
    /// How long one call to the origin may take, in milliseconds.
    pub call_timeout_ms: u64,
}

/// Sizes of the warm caches.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory the workspace caches may hold, in bytes (estimated); least recently used
    /// workspaces without connections are dropped beyond it.
    pub max_bytes: u64,
    /// Tokens remembered (token hash → user); revocations arrive through the feed.
    pub max_tokens: u64,
    /// How long a remembered token is trusted without asking the origin again, in seconds.
    pub token_ttl_secs: u64,
    /// Recent events kept per channel, to resume clients and answer recent history.
    pub recent_events_per_channel: usize,
    /// Recent events kept per workspace that belong to no channel (user updates…).
    pub recent_workspace_events: usize,
    /// Workspaces to load at start, so their first clients boot warm.
    pub preload: Vec<WorkspaceId>,
    /// Boot every session as an edge without warm caches must: ask the origin for the token,
    /// the workspace snapshot and, on resume, the missed events, every time. Only to measure
    /// what the caches save (docs/BENCHMARKS.md); off in production.
    pub cold_boots: bool,
}

/// Limits of each client connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Interval of server pings, in milliseconds (also sent to clients in `hello`); a client
    /// silent for 2.5 intervals is disconnected.
    pub heartbeat_ms: u64,
    /// Frames queued for one connection before it counts as slow: ephemeral events are then
    /// dropped, and the connection is closed (resumably) when a durable one does not fit.
    pub outbound_queue: usize,
    /// Requests (sends, queries) of one connection in flight at once; more wait.
    pub max_in_flight: usize,
    /// Connections one user may have open on this edge at once, over every token and
    /// transport; one more is refused (a `rate_limited` error, then close code 4029) until one
    /// of them closes. Several devices and tabs each hold one.
    pub max_connections_per_user: usize,
    /// Bytes that client frames still arriving may hold on this edge, all connections
    /// together, beyond 8 KiB each: a connection receiving a larger frame takes its size from
    /// here first, and waits (reading nothing more) while there is no room. At least 1 MiB.
    pub frame_budget_bytes: usize,
    /// How long a client may take to authenticate and boot, in milliseconds.
    pub boot_timeout_ms: u64,
    /// How long draining connections get between `goodbye` and being closed, in milliseconds;
    /// each client is told to reconnect at a random point inside it.
    pub drain_grace_ms: u64,
    /// A user whose sessions have all been idle this long (no frame but pings), in
    /// milliseconds, shows as `away`.
    pub away_after_ms: u64,
    /// How often the edge renews its reports of who is connected to the origin, in
    /// milliseconds; keep it well under the origin's `link.presence_lease_ms`.
    pub presence_renew_ms: u64,
    /// Most `presence_sub` frames one connection may send per 10 seconds; more are refused
    /// with `rate_limited`.
    pub presence_subs_per_10s: u32,
    /// Send every presence change to every session of the workspace, followed or not — the
    /// model before presence subscriptions, kept to measure what subscriptions save
    /// (`selvage loadtest presence`). Off in production.
    pub presence_broadcast: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            edge_id: "edge-1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7800)),
            listen_backlog: 65_535,
            quic_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7801))),
            quic_socket_buffer: 4 << 20,
            cert_file: None,
            key_file: None,
            cert_names: vec!["localhost".into(), "127.0.0.1".into()],
            operator_key: None,
            origin: OriginLink::default(),
            cache: CacheConfig::default(),
            sessions: SessionConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            web: WebConfig::default(),
        }
    }
}

impl Default for OriginLink {
    fn default() -> Self {
        OriginLink {
            link: "127.0.0.1:7701".into(),
            server_name: "localhost".into(),
            fingerprint: None,
            next_fingerprint: None,
            ca_file: None,
            edge_key: String::new(),
            call_timeout_ms: 10_000,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 512 * 1024 * 1024,
            max_tokens: 100_000,
            token_ttl_secs: 600,
            recent_events_per_channel: 256,
            recent_workspace_events: 1024,
            preload: Vec::new(),
            cold_boots: false,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            heartbeat_ms: 30_000,
            outbound_queue: 1024,
            max_in_flight: 256,
            max_connections_per_user: 20,
            frame_budget_bytes: 64 << 20,
            boot_timeout_ms: 10_000,
            drain_grace_ms: 30_000,
            away_after_ms: 10 * 60_000,
            presence_renew_ms: 10_000,
            presence_subs_per_10s: 10,
            presence_broadcast: false,
        }
    }
}

impl EdgeConfig {
    /// Checks what serde cannot: the first problem found, in words an operator can act on (the
    /// first of [`EdgeConfig::problems`]).
    pub fn validate(&self) -> Result<(), String> {
        match self.problems().into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every problem [`EdgeConfig::validate`] finds, for `selvage edge --check-config`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = Vec::new();
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_string());
            }
        };
        check(!self.edge_id.is_empty() && self.edge_id.len() <= 64, "edge_id must be 1 to 64 characters");
        check(
            self.web.max_body_bytes > 0 && self.web.api_timeout_ms > 0,
            "web.max_body_bytes and web.api_timeout_ms must be more than 0",
        );
        check(
            self.cert_file.is_some() == self.key_file.is_some(),
            "cert_file and key_file go together: set both or neither",
        );
        check(
            self.origin.edge_key.len() >= 16,
            "origin.edge_key must be set to the origin's link.edge_key (16 characters or more)",
        );
        check(
            self.origin.fingerprint.is_some() || self.origin.ca_file.is_some(),
            "set origin.fingerprint (printed by `selvage origin`) or origin.ca_file to trust the origin",
        );
        if let Some(Err(e)) = self.origin.fingerprint.as_ref().map(|fp| selvage_net::tls::parse_fingerprint(fp)) {
            check(false, &format!("origin.fingerprint: {e}"));
        }
        if let Some(next) = &self.origin.next_fingerprint {
            check(
                self.origin.fingerprint.is_some(),
                "origin.next_fingerprint is for rotating a pinned certificate: set origin.fingerprint too",
            );
            if let Err(e) = selvage_net::tls::parse_fingerprint(next) {
                check(false, &format!("origin.next_fingerprint: {e}"));
            }
        }
        check((64..=1 << 20).contains(&self.listen_backlog), "listen_backlog must be between 64 and 1048576");
        check(
            (64 << 10..=1 << 30).contains(&self.quic_socket_buffer),
            "quic_socket_buffer must be between 65536 and 1073741824 bytes",
        );
        check(self.origin.call_timeout_ms > 0, "origin.call_timeout_ms must be above 0");
        check(
            self.operator_key.as_ref().is_none_or(|key| key.len() >= 16),
            "operator_key must be 16 characters or more",
        );
        for (rate, name) in
            [(&self.rate_limits.read, "rate_limits.read"), (&self.rate_limits.write, "rate_limits.write")]
        {
            if let Err(e) = rate.validate(name) {
                check(false, &e);
            }
        }
        let s = &self.sessions;
        check(s.heartbeat_ms >= 100, "sessions.heartbeat_ms must be 100 or more");
        check(s.outbound_queue >= 16, "sessions.outbound_queue must be 16 or more");
        check(s.max_in_flight > 0, "sessions.max_in_flight must be above 0");
        check(s.max_connections_per_user > 0, "sessions.max_connections_per_user must be above 0");
        // A fragmented message at the frame limit may need twice the limit at once.
        check(s.frame_budget_bytes >= 1 << 20, "sessions.frame_budget_bytes must be 1048576 or more");
        check(
            s.away_after_ms >= 100 && s.presence_renew_ms >= 100 && s.presence_subs_per_10s > 0,
            "sessions.away_after_ms and sessions.presence_renew_ms must be 100 or more, sessions.presence_subs_per_10s \
             above 0",
        );
        check(
            self.cache.recent_events_per_channel > 0 && self.cache.recent_workspace_events > 0,
            "cache.recent_events_per_channel and cache.recent_workspace_events must be above 0",
        );
        problems
    }

    /// What [`crate::start`] would refuse beyond [`EdgeConfig::problems`], found without binding
    /// a port or reaching the origin: the QUIC certificate and key files, the origin's CA file,
    /// `origin.link` that is not `host:port`, the web client's API URL and connect origins. Not
    /// checked: whether the ports are free, whether the origin answers and trusts this edge's
    /// key.
    pub fn start_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            if let Err(e) = selvage_net::tls::Identity::from_pem_files(cert, key) {
                problems.push(format!("cert_file and key_file: {e}"));
            }
        }
        if let Some(ca) = &self.origin.ca_file {
            let trust = selvage_net::tls::Trust::CaFile(ca.clone());
            if let Err(e) = selvage_net::tls::client_config(&trust, &[]) {
                problems.push(format!("origin.ca_file: {e}"));
            }
        }
        let port = self.origin.link.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p > 0) {
            problems.push(format!("origin.link {:?} must be host:port (the origin's link.listen)", self.origin.link));
        }
        if self.web.enabled {
            if let Err(e) = crate::web::Api::new(&self.web) {
                problems.push(e);
            }
        }
        problems
    }

    /// How the edge trusts the origin's certificate.
    pub fn origin_trust(&self) -> selvage_net::tls::Trust {
        match (&self.origin.fingerprint, &self.origin.ca_file) {
            (Some(fp), _) => match &self.origin.next_fingerprint {
                Some(next) => selvage_net::tls::Trust::PinnedAny(vec![fp.clone(), next.clone()]),
                None => selvage_net::tls::Trust::Pinned(fp.clone()),
            },
            (None, Some(ca)) => selvage_net::tls::Trust::CaFile(ca.clone()),
            // validate() refuses this; pin nothing that could match.
            (None, None) => selvage_net::tls::Trust::Pinned(String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> EdgeConfig {
        let mut c = EdgeConfig::default();
        c.origin.edge_key = "0123456789abcdef".into();
        c.origin.fingerprint = Some("ab".repeat(32));
        c
    }

    #[test]
    fn defaults_need_only_the_link_secrets() {
        assert!(EdgeConfig::default().validate().unwrap_err().contains("edge_key"));
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = valid();
        c.origin.fingerprint = Some("xyz".into());
        assert!(c.validate().unwrap_err().contains("origin.fingerprint"));
        let mut c = valid();
        c.cert_file = Some("c.pem".into());
        assert!(c.validate().unwrap_err().contains("key_file"));
        let mut c = valid();
        c.sessions.outbound_queue = 1;
        assert!(c.validate().unwrap_err().contains("outbound_queue"));
        let mut c = valid();
        c.sessions.max_connections_per_user = 0;
        assert!(c.validate().unwrap_err().contains("max_connections_per_user"));
        let mut c = valid();
        c.sessions.frame_budget_bytes = 1000;
        assert!(c.validate().unwrap_err().contains("frame_budget_bytes"));
        let mut c = valid();
        c.listen_backlog = 0;
        assert!(c.validate().unwrap_err().contains("listen_backlog"));
        c.listen_backlog = 1024;
        c.quic_socket_buffer = 1024;
        assert!(c.validate().unwrap_err().contains("quic_socket_buffer"));
    }

    #[test]
    fn a_second_pinned_fingerprint_is_trusted_while_a_certificate_is_rotated() {
        let mut c = valid();
        c.origin.next_fingerprint = Some("nope".into());
        assert!(c.validate().unwrap_err().contains("origin.next_fingerprint"));
        c.origin.next_fingerprint = Some("cd".repeat(32));
        assert_eq!(c.validate(), Ok(()));
        match c.origin_trust() {
            selvage_net::tls::Trust::PinnedAny(fps) => assert_eq!(fps, vec!["ab".repeat(32), "cd".repeat(32)]),
            other => panic!("expected both fingerprints pinned, got {other:?}"),
        }
        c.origin.fingerprint = None;
        c.origin.ca_file = Some("ca.pem".into());
        assert!(c.validate().unwrap_err().contains("set origin.fingerprint too"));
    }
}
