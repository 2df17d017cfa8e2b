//! Starting an edge node: the link to the origin, the caches, the feed task, the WebSocket and
//! QUIC listeners, health and metrics, and drain.
//!
//! Drain (SIGTERM in the binary, or `POST /admin/drain`): the edge stops accepting connections
//! and reports not-ready, every session sends `goodbye` with a random `reconnect_in_ms` inside
//! the grace period and closes at its end, so clients spread their reconnects over it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Router,
};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{self, Tokens},
    config::EdgeConfig,
    error::StartError,
    fanout::{self, Workspaces},
    limits::{FrameBudget, OneWayCalls, UserSlots, ONE_WAY_IN_FLIGHT},
    metrics::Metrics,
    node::Edge,
    quic,
    upstream::{Upstream, UpstreamConfig},
    web,
    workspace::CacheLimits,
    ws,
};

/// A started edge.
pub struct Running {
    /// The HTTP address (`/v1/connect`, metrics, health).
    pub addr: SocketAddr,
    /// The client QUIC address, if QUIC is on.
    pub quic_addr: Option<SocketAddr>,
    /// Fingerprint of the client QUIC certificate, for clients to pin.
    pub quic_fingerprint: Option<String>,
    /// The shared state, for in-process callers.
    pub edge: Arc<Edge>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the node has shut down (after its shutdown token is cancelled).
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "edge task failed");
        }
    }
}

/// Starts an edge node; it runs until `shutdown` is cancelled. Drain first (see
/// [`Edge::start_drain`]) for a graceful stop.
pub async fn start(config: EdgeConfig, shutdown: CancellationToken) -> Result<Running, StartError> {
    config.validate().map_err(StartError::Config)?;
    // 55 + 1 + 8 characters: within the 64 of an edge's name on the link.
    let name: String = config.edge_id.chars().take(55).collect();
    let instance = format!("{name}~{:08x}", rand::random::<u32>());
    let metrics = Arc::new(Metrics::new());
    let upstream_config = UpstreamConfig {
        origin: config.origin.link.clone(),
        server_name: config.origin.server_name.clone(),
        trust: config.origin_trust(),
        edge_key: config.origin.edge_key.clone(),
        edge_id: instance.clone(),
        call_timeout: Duration::from_millis(config.origin.call_timeout_ms),
        start_cursor: None,
    };
    let (upstream, feed) = Upstream::start(upstream_config, metrics.clone(), shutdown.clone());
    let limits = CacheLimits {
        recent_events_per_channel: config.cache.recent_events_per_channel,
        recent_workspace_events: config.cache.recent_workspace_events,
        ..CacheLimits::default()
    };
    let workspaces = Workspaces::new(
        upstream.clone(),
        limits,
        config.cache.max_bytes,
        metrics.clone(),
        config.sessions.presence_broadcast,
    );
    let tokens = Tokens::new(
        upstream.clone(),
        config.cache.max_tokens,
        Duration::from_secs(config.cache.token_ttl_secs),
        metrics.clone(),
    );
    let listener = bind(config.listen, config.listen_backlog)
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let slots = UserSlots::new(config.sessions.max_connections_per_user);
    let frame_budget = FrameBudget::new(config.sessions.frame_budget_bytes, &metrics);
    let one_way = OneWayCalls::new(ONE_WAY_IN_FLIGHT, &metrics);
    let rates = crate::limits::FrameRates::new(&config.rate_limits);
    let web = match config.web.enabled {
        true => Some(web::Api::new(&config.web).map_err(StartError::Config)?),
        false => None,
    };
    let edge = Arc::new(Edge {
        config,
        instance,
        upstream,
        workspaces: workspaces.clone(),
        tokens: tokens.clone(),
        slots,
        frame_budget,
        one_way,
        rates,
        metrics,
        drain: CancellationToken::new(),
        web,
    });
    let quic = match edge.config.quic_listen {
        Some(quic_addr) => Some(quic::listen(edge.clone(), quic_addr, shutdown.clone())?),
        None => None,
    };
    let (quic_addr, quic_fingerprint, quic_task) = match quic {
        Some(q) => (Some(q.addr), Some(q.fingerprint), Some(q.task)),
        None => (None, None, None),
    };
    tracing::info!(%addr, ?quic_addr, origin = %edge.config.origin.link, "edge listening");
    let sessions = &edge.config.sessions;
    tokio::spawn(fanout::run_presence(
        workspaces.clone(),
        Duration::from_millis(sessions.away_after_ms),
        Duration::from_millis(sessions.presence_renew_ms),
        shutdown.clone(),
    ));
    let feed_task = tokio::spawn(fanout::run_feed(workspaces, tokens, feed, shutdown.clone()));
    tokio::spawn(sweep_rates(edge.rates.clone(), shutdown.clone()));
    if !edge.config.cache.preload.is_empty() {
        tokio::spawn(preload(edge.clone(), shutdown.clone()));
    }
    let app = router(edge.clone());
    let task = tokio::spawn(async move {
        let stop = shutdown.clone();
        // Frames go out as soon as they are written: without TCP_NODELAY an ack written right
        // after event frames waits for the client's delayed ACK (~40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
            }
        });
        // Routes are resolved once here, not for every connection (serving the router itself
        // rebuilds its route table per connection).
        let served = axum::serve(listener, app.into_make_service())
            .with_graceful_shutdown(async move { stop.cancelled().await });
        // Sessions end on drain; after shutdown they get a short grace to say goodbye.
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        tokio::select! {
            r = served => if let Err(e) = r { tracing::error!(error = %e, "HTTP server failed") },
            _ = grace => {}
        }
        let _ = feed_task.await;
        if let Some(t) = quic_task {
            let _ = t.await;
        }
        tracing::info!("edge stopped");
    });
    Ok(Running { addr, quic_addr, quic_fingerprint, edge, task })
}

/// Loads the configured workspaces, retrying while the origin is unreachable.
async fn preload(edge: Arc<Edge>, shutdown: CancellationToken) {
    for id in edge.config.cache.preload.clone() {
        let mut delay = Duration::from_millis(200);
        loop {
            match edge.workspaces.get(&id).await {
                Ok(_) => break,
                Err(e) if e.code == selvage_shared::ErrorCode::NotFound => {
                    tracing::warn!(ws.id = %id, "preload: no such workspace");
                    break;
                }
                Err(e) => tracing::debug!(ws.id = %id, error = %e.message, "preload: retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/v1/connect", get(ws::connect))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/drain", post(drain))
        .route("/", get(web::index))
        .route("/{name}", get(web::file))
        .route("/v1/{*rest}", any(web::api))
        .with_state(edge)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(edge): State<Arc<Edge>>) -> Response {
    if edge.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !edge.upstream.is_up() {
        (StatusCode::SERVICE_UNAVAILABLE, "origin unreachable\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    edge.metrics.ready.set(i64::from(edge.is_ready()));
    edge.metrics.draining.set(i64::from(edge.is_draining()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], edge.metrics.render()).into_response()
}

async fn drain(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    let Some(key) = edge.config.operator_key.as_deref() else {
        return (StatusCode::FORBIDDEN, "set operator_key in the edge's configuration to drain over HTTP\n")
            .into_response();
    };
    let presented = auth::bearer(&headers).unwrap_or_default();
    if !bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
        return (StatusCode::UNAUTHORIZED, "wrong operator key\n").into_response();
    }
    edge.start_drain();
    (StatusCode::ACCEPTED, "draining\n").into_response()
}

/// A TCP listener on `addr` whose accept queue holds `backlog` connections (the kernel caps it
/// at `net.core.somaxconn`).
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As std's and tokio's listeners do: a restarted edge can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Sweeps idle tokens' rate buckets every minute until `shutdown`.
async fn sweep_rates(rates: Arc<crate::limits::FrameRates>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => rates.sweep(),
            _ = shutdown.cancelled() => return,
        }
    }
}
