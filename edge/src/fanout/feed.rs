//! The tasks that move the loaded workspaces: the origin's feed applied in order (revoked
//! tokens forgotten on the way), and the presence tick.

use std::{sync::Arc, time::Duration};

use selvage_shared::{link::Call, Event};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::Workspaces;
use crate::{auth::Tokens, upstream::FeedUpdate};

/// How often presence is settled: changes reported to the origin, announcements handed out.
pub const PRESENCE_TICK: Duration = Duration::from_millis(200);

/// Reports of one call, at most (a renewal of a big edge is split).
const PRESENCE_REPORTS_PER_CALL: usize = 1000;

/// The presence loop: every [`PRESENCE_TICK`], hands each workspace's queued presence changes
/// to their followers and reports to the origin whose presence seen here changed (everyone's,
/// every `renew`, to keep the origin's lease; everyone's again after the link came back).
pub async fn run_presence(
    workspaces: Arc<Workspaces>,
    away_after: Duration,
    renew: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRESENCE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_renewal = Instant::now();
    let mut was_up = workspaces.upstream.is_up();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let up = workspaces.upstream.is_up();
        let renewing = now.duration_since(last_renewal) >= renew;
        if renewing {
            last_renewal = now;
        }
        let mut calls = Vec::new();
        for (id, live) in workspaces.all_live() {
            let mut inner = live.lock();
            inner.flush_presence(&workspaces.metrics);
            if up && !was_up {
                inner.presence.forget_reported();
            }
            if !up {
                continue;
            }
            let reports = inner.presence.reports(now, away_after, renewing);
            drop(inner);
            for chunk in reports.chunks(PRESENCE_REPORTS_PER_CALL) {
                calls.push(Call::Presence { workspace: id.clone(), reports: chunk.to_vec() });
            }
        }
        was_up = up;
        for call in calls {
            if let Err(e) = workspaces.upstream.call(call).await {
                // The next renewal repeats everything; a lost change is late, not lost.
                tracing::debug!(error = %e.message, "presence report failed");
            }
        }
    }
}

/// Applies the feed to the loaded workspaces until the feed ends; forgets revoked tokens.
pub async fn run_feed(
    workspaces: Arc<Workspaces>,
    tokens: Arc<Tokens>,
    mut feed: mpsc::Receiver<FeedUpdate>,
    shutdown: CancellationToken,
) {
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            update = feed.recv() => match update {
                Some(FeedUpdate::Events(items)) => {
                    for item in &items {
                        match &item.event {
                            Event::TokenRevoked { token_hash } => tokens.forget(token_hash).await,
                            Event::UserUpdated { user } if user.deactivated => {
                                tokens.forget_user(&item.workspace, &user.id)
                            }
                            _ => {}
                        }
                    }
                    workspaces.apply(&items);
                }
                Some(FeedUpdate::Resync { cursor, reason }) => {
                    tracing::warn!(%cursor, %reason, "the edge missed feed events; dropping every cached workspace");
                    tokens.forget_all();
                    workspaces.reset();
                }
                Some(FeedUpdate::Ephemeral { workspace, event }) => workspaces.relay(&workspace, *event),
                Some(FeedUpdate::Heartbeat(_) | FeedUpdate::LinkUp | FeedUpdate::LinkDown) => {}
                None => return,
            },
            _ = sweep.tick() => workspaces.sweep().await,
            _ = shutdown.cancelled() => return,
        }
    }
}
