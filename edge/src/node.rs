//! The parts of a running edge node that every session shares (ARCHITECTURE §3): its
//! configuration, the link to the origin, the loaded workspaces, remembered tokens, the limits
//! per client, metrics and the drain signal. [`crate::server`] makes one per process; sessions
//! and transports take it from there.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Tokens,
    config::EdgeConfig,
    fanout::Workspaces,
    limits::{FrameBudget, OneWayCalls, UserSlots},
    metrics::Metrics,
    upstream::Upstream,
};

/// Everything a session needs: one per edge process.
pub struct Edge {
    /// The configuration the node started with.
    pub config: EdgeConfig,
    /// This edge process's name on the link and in session ids: `edge_id`, `~` and a random
    /// suffix. Two edges with one `edge_id` (every edge started from the example keeps
    /// `edge-1`) would otherwise be one edge to the origin, which does not relay an edge's
    /// typing back to it and keeps one presence report per user and edge.
    pub instance: String,
    /// The link to the origin.
    pub upstream: Arc<Upstream>,
    /// Loaded workspaces and their sessions.
    pub workspaces: Arc<Workspaces>,
    /// Remembered tokens.
    pub tokens: Arc<Tokens>,
    /// Open connections per user, capped at `sessions.max_connections_per_user`.
    pub slots: Arc<UserSlots>,
    /// What large client frames still arriving may hold, all connections together.
    pub frame_budget: Arc<FrameBudget>,
    /// Origin calls started by client frames that nobody waits for, bounded.
    pub one_way: OneWayCalls,
    /// Rate limits per token on client frames.
    pub rates: Arc<crate::limits::FrameRates>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the edge starts draining.
    pub drain: CancellationToken,
    /// The web client and the API passage, unless `web.enabled` is off.
    pub web: Option<crate::web::Api>,
}

impl Edge {
    /// Starts draining (once): stop accepting, tell sessions goodbye.
    pub fn start_drain(&self) {
        if !self.drain.is_cancelled() {
            tracing::info!(
                grace_ms = self.config.sessions.drain_grace_ms,
                "draining: sending goodbye to every session"
            );
            self.drain.cancel();
        }
    }

    /// Whether the edge is draining.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Ready: linked to the origin and not draining.
    pub fn is_ready(&self) -> bool {
        self.upstream.is_up() && !self.is_draining()
    }
}
