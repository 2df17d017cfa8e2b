//! Prometheus metrics of an edge node, rendered on `/metrics`.
//!
//! One registry per edge (not the global default), so several edges in one test process keep
//! separate counts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The edge's metrics.
pub struct Metrics {
    registry: Registry,
    /// Open client connections by transport (`ws`, `quic`).
    pub connections: IntGaugeVec,
    /// Time from an authenticated connection to its `hello`, seconds.
    pub boot_latency: Histogram,
    /// Cache lookups by cache (`workspace`, `token`, `history`) and outcome (`hit`, `miss`).
    pub cache_requests: IntCounterVec,
    /// Event frames handed to client connections.
    pub fanout_deliveries: IntCounter,
    /// Frames not delivered to a slow connection, by what happened (`ephemeral_dropped`,
    /// `connection_closed`).
    pub queue_drops: IntCounterVec,
    /// Age of the newest feed event applied: now minus its commit time, seconds.
    pub feed_lag_seconds: prometheus::Gauge,
    /// Feed events received from the origin.
    pub feed_events: IntCounter,
    /// 1 while the link to the origin is up.
    pub link_up: IntGauge,
    /// Times the link to the origin was (re)established.
    pub link_connects: IntCounter,
    /// Calls to the origin by call and outcome (`ok`, `error`, `unavailable`).
    pub origin_calls: IntCounterVec,
    /// Client frames by type, and `bad` for frames that did not decode.
    pub client_frames: IntCounterVec,
    /// Connections refused or closed to protect the edge, by reason (`user_cap`: the user
    /// holds `sessions.max_connections_per_user` already; `frame_budget`: no room in the frame
    /// budget in time; `frame_too_slow`: a large frame did not arrive in time).
    pub connections_refused: IntCounterVec,
    /// Bytes of large client frames being received (or not yet handled) on every connection,
    /// held from `sessions.frame_budget_bytes`.
    pub frame_bytes_held: IntGauge,
    /// Origin calls started by client frames (typing relays, `set_presence`) running now; at
    /// most 256.
    pub one_way_in_flight: IntGauge,
    /// Such calls dropped because as many were running already, by call (`typing`).
    pub one_way_dropped: IntCounterVec,
    /// Client frames refused for going over their token's rate, by class (`read`, `write`).
    pub rate_limited: IntCounterVec,
    /// Requests passed to the origin's HTTP API, by outcome (`answered`, `unavailable`,
    /// `timeout`).
    pub api_passed: IntCounterVec,
    /// 1 while `/readyz` says ready (linked to the origin and not draining), as of the scrape.
    pub ready: IntGauge,
    /// 1 once the edge is draining (SIGTERM or `POST /admin/drain`), as of the scrape.
    pub draining: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Every metric below is created from constant, valid options and registered once in a
        // fresh registry, so none of these calls can fail.
        #[allow(clippy::expect_used)]
        let m = Metrics {
            connections: IntGaugeVec::new(
                Opts::new("selvage_edge_connections", "Open client connections by transport"),
                &["transport"],
            )
            .expect("valid gauge"),
            boot_latency: Histogram::with_opts(
                HistogramOpts::new("selvage_edge_boot_seconds", "Time from an authenticated connection to its hello")
                    .buckets(vec![0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            )
            .expect("valid histogram"),
            cache_requests: IntCounterVec::new(
                Opts::new("selvage_edge_cache_requests_total", "Cache lookups by cache and outcome"),
                &["cache", "outcome"],
            )
            .expect("valid counter"),
            fanout_deliveries: IntCounter::new(
                "selvage_edge_fanout_deliveries_total",
                "Event frames handed to client connections",
            )
            .expect("valid counter"),
            queue_drops: IntCounterVec::new(
                Opts::new("selvage_edge_queue_drops_total", "Frames not delivered to slow connections, by outcome"),
                &["outcome"],
            )
            .expect("valid counter"),
            feed_lag_seconds: prometheus::Gauge::new(
                "selvage_edge_feed_lag_seconds",
                "Age of the newest feed event applied (now minus its commit time)",
            )
            .expect("valid gauge"),
            feed_events: IntCounter::new("selvage_edge_feed_events_total", "Feed events received from the origin")
                .expect("valid counter"),
            link_up: IntGauge::new("selvage_edge_link_up", "1 while the link to the origin is up")
                .expect("valid gauge"),
            link_connects: IntCounter::new(
                "selvage_edge_link_connects_total",
                "Times the link to the origin was established",
            )
            .expect("valid counter"),
            origin_calls: IntCounterVec::new(
                Opts::new("selvage_edge_origin_calls_total", "Calls to the origin by call and outcome"),
                &["call", "outcome"],
            )
            .expect("valid counter"),
            client_frames: IntCounterVec::new(
                Opts::new("selvage_edge_client_frames_total", "Client frames by type (bad: did not decode)"),
                &["type"],
            )
            .expect("valid counter"),
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "selvage_edge_connections_refused_total",
                    "Connections refused or closed to protect the edge, by reason",
                ),
                &["reason"],
            )
            .expect("valid counter"),
            frame_bytes_held: IntGauge::new(
                "selvage_edge_frame_bytes_held",
                "Bytes of large client frames being received, held from the frame budget",
            )
            .expect("valid gauge"),
            one_way_in_flight: IntGauge::new(
                "selvage_edge_one_way_calls_in_flight",
                "Origin calls started by client frames (typing relays, set_presence) running now",
            )
            .expect("valid gauge"),
            one_way_dropped: IntCounterVec::new(
                Opts::new(
                    "selvage_edge_one_way_calls_dropped_total",
                    "Origin calls started by client frames dropped because the edge ran as many already",
                ),
                &["call"],
            )
            .expect("valid counter"),
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "selvage_edge_rate_limited_total",
                    "Client frames refused for going over their token's rate, by class",
                ),
                &["class"],
            )
            .expect("valid counter"),
            api_passed: IntCounterVec::new(
                Opts::new("selvage_edge_api_requests_total", "Requests passed to the origin's HTTP API, by outcome"),
                &["outcome"],
            )
            .expect("valid counter"),
            ready: IntGauge::new(
                "selvage_edge_ready",
                "1 while /readyz says ready: linked to the origin, not draining",
            )
            .expect("valid gauge"),
            draining: IntGauge::new("selvage_edge_draining", "1 once the edge is draining").expect("valid gauge"),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 19] = [
            Box::new(m.connections.clone()),
            Box::new(m.boot_latency.clone()),
            Box::new(m.cache_requests.clone()),
            Box::new(m.fanout_deliveries.clone()),
            Box::new(m.queue_drops.clone()),
            Box::new(m.feed_lag_seconds.clone()),
            Box::new(m.feed_events.clone()),
            Box::new(m.link_up.clone()),
            Box::new(m.link_connects.clone()),
            Box::new(m.origin_calls.clone()),
            Box::new(m.client_frames.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.frame_bytes_held.clone()),
            Box::new(m.one_way_in_flight.clone()),
            Box::new(m.one_way_dropped.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.api_passed.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.draining.clone()),
        ];
        for c in collectors {
            // Names are distinct constants, so registration cannot collide.
            #[allow(clippy::expect_used)]
            m.registry.register(c).expect("metric names are unique");
        }
        // The process's own resident memory, CPU time and open descriptors (the benchmarks in
        // docs/BENCHMARKS.md read them). Several nodes in one process each report the same
        // process, which is right: it is the process they share.
        #[cfg(target_os = "linux")]
        if let Err(e) = m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())) {
            tracing::warn!(error = %e, "cannot register the process metrics");
        }
        // Show every series the dashboards and alerts (infra/) ask for from the start, at 0:
        // "no slow consumer closed" is then a line that reads 0, not a missing series.
        for transport in ["ws", "quic"] {
            m.connections.with_label_values(&[transport]);
        }
        for outcome in ["ephemeral_dropped", "connection_closed"] {
            m.queue_drops.with_label_values(&[outcome]);
        }
        for reason in ["user_cap", "frame_budget", "frame_too_slow"] {
            m.connections_refused.with_label_values(&[reason]);
        }
        for cache in ["workspace", "token", "replay"] {
            for outcome in ["hit", "miss"] {
                m.cache_requests.with_label_values(&[cache, outcome]);
            }
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
