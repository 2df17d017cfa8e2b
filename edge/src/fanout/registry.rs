//! The loaded workspaces and the sessions of each (ARCHITECTURE §3).
//!
//! Workspaces sit in a moka cache weighed by their estimated size: concurrent first
//! connections of one workspace make one snapshot request, and idle workspaces are dropped
//! beyond `cache.max_bytes`. A workspace evicted while sessions still use it stays live (and
//! current) in the registry until its last session leaves. Within a workspace, sessions are
//! kept by id and by user, which fan-out reads.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use selvage_shared::{
    link::{Answer, Call, LinkError, WorkspaceSnapshot},
    ErrorCode, Event, FeedItem, WorkspaceId,
};
use tokio::time::Instant;

use super::{CloseReason, Live, LiveInner, Outbox};
use crate::{
    metrics::Metrics,
    presence::PresenceState,
    upstream::Upstream,
    workspace::{CacheLimits, WorkspaceState},
};

impl LiveInner {
    /// A workspace's state with no session yet.
    pub(super) fn new(state: WorkspaceState, presence_broadcast: bool) -> LiveInner {
        LiveInner {
            state,
            sessions: HashMap::new(),
            by_user: HashMap::new(),
            audiences: HashMap::new(),
            audience_refs: 0,
            retired: false,
            typing: HashMap::new(),
            presence: PresenceState::new(presence_broadcast),
        }
    }

    /// Registers a session for fan-out; events applied from now on reach it.
    pub fn register(&mut self, outbox: Arc<Outbox>) {
        self.presence.open(outbox.id, &outbox.user, Instant::now());
        self.by_user.entry(outbox.user.clone()).or_default().push(outbox.id);
        self.sessions.insert(outbox.id, outbox);
        self.forget_audiences();
    }

    pub(super) fn forget_audiences(&mut self) {
        self.audiences.clear();
        self.audience_refs = 0;
    }
    /// Whether the feed no longer reaches this copy of the workspace (see
    /// [`Workspaces::get`]: get it again).
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// Connected sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub(super) fn unregister(&mut self, id: u64) {
        self.presence.close(id);
        if let Some(outbox) = self.sessions.remove(&id) {
            self.forget_audiences();
            if let Some(ids) = self.by_user.get_mut(&outbox.user) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_user.remove(&outbox.user);
                }
            }
        }
    }
}

enum Slot {
    /// A snapshot is on its way; the feed's events for the workspace wait here.
    Loading(Vec<FeedItem>),
    Ready(Arc<Live>),
}

/// Why a workspace could not be loaded.
pub type LoadError = Arc<LinkError>;

/// Every workspace this edge serves.
pub struct Workspaces {
    registry: Mutex<HashMap<WorkspaceId, Slot>>,
    cache: moka::future::Cache<WorkspaceId, Arc<Live>>,
    pub(super) upstream: Arc<Upstream>,
    limits: CacheLimits,
    pub(super) metrics: Arc<Metrics>,
    next_session: AtomicU64,
    presence_broadcast: bool,
}

impl Workspaces {
    /// An empty set, loading through `upstream`, holding up to `max_bytes` of state.
    /// `presence_broadcast`: every presence change to every session (`sessions.presence_broadcast`).
    pub fn new(
        upstream: Arc<Upstream>,
        limits: CacheLimits,
        max_bytes: u64,
        metrics: Arc<Metrics>,
        presence_broadcast: bool,
    ) -> Arc<Self> {
        // Least recently used goes first, as `cache.max_bytes` promises (moka's default would
        // rather refuse a newcomer than drop an old workspace).
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_, live: &Arc<Live>| live.weigh())
            .build();
        Arc::new(Workspaces {
            registry: Mutex::new(HashMap::new()),
            cache,
            upstream,
            limits,
            metrics,
            next_session: AtomicU64::new(1),
            presence_broadcast,
        })
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<WorkspaceId, Slot>> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh session id.
    pub fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The loaded workspace, loading it (once, however many ask at the same time) if needed.
    pub async fn get(&self, id: &WorkspaceId) -> Result<Arc<Live>, LoadError> {
        if let Some(live) = self.cache.get(id).await {
            self.metrics.cache_requests.with_label_values(&["workspace", "hit"]).inc();
            return Ok(live);
        }
        self.metrics.cache_requests.with_label_values(&["workspace", "miss"]).inc();
        self.cache.try_get_with(id.clone(), self.load(id)).await
    }

    /// The workspace if it is loaded; never asks the origin.
    pub fn get_loaded(&self, id: &WorkspaceId) -> Option<Arc<Live>> {
        match self.registry().get(id) {
            Some(Slot::Ready(live)) => Some(live.clone()),
            _ => None,
        }
    }

    async fn load(&self, id: &WorkspaceId) -> Result<Arc<Live>, LinkError> {
        {
            let mut registry = self.registry();
            match registry.get(id) {
                // Evicted from the cache but still live for its sessions: take it back.
                Some(Slot::Ready(live)) => return Ok(live.clone()),
                _ => {
                    registry.insert(id.clone(), Slot::Loading(Vec::new()));
                }
            }
        }
        let answer = self.upstream.call(Call::Snapshot { workspace: id.clone() }).await;
        let snapshot = match answer {
            Ok(Answer::Snapshot(snapshot)) => *snapshot,
            Ok(other) => {
                self.registry().remove(id);
                return Err(LinkError {
                    code: ErrorCode::Internal,
                    message: format!("the origin answered a snapshot call with {other:?}"),
                });
            }
            Err(e) => {
                self.registry().remove(id);
                return Err(e);
            }
        };
        let live = self.install(id, snapshot);
        // Who is online already: announcements from now on are newer and win over it.
        let (upstream, weak, workspace) = (self.upstream.clone(), Arc::downgrade(&live), id.clone());
        tokio::spawn(async move {
            if let Ok(Answer::Presences { users }) = upstream.call(Call::PresenceSnapshot { workspace }).await {
                if let Some(live) = weak.upgrade() {
                    live.lock().presence.fill(users);
                }
            }
        });
        Ok(live)
    }

    fn install(&self, id: &WorkspaceId, snapshot: WorkspaceSnapshot) -> Arc<Live> {
        let mut registry = self.registry();
        let waiting = match registry.remove(id) {
            Some(Slot::Loading(items)) => items,
            _ => Vec::new(),
        };
        let mut inner =
            LiveInner::new(WorkspaceState::from_snapshot(snapshot, self.limits.clone()), self.presence_broadcast);
        for item in &waiting {
            inner.apply(item, &self.metrics);
        }
        tracing::info!(ws.id = %id, cursor = %inner.state.cursor(), caught_up = waiting.len(), "workspace loaded");
        let live = Arc::new(Live { inner: Mutex::new(inner), weighed: AtomicU32::new(0) });
        registry.insert(id.clone(), Slot::Ready(live.clone()));
        live
    }

    /// Applies feed events in order.
    pub(super) fn apply(&self, items: &[FeedItem]) {
        let mut registry = self.registry();
        for item in items {
            match registry.get_mut(&item.workspace) {
                Some(Slot::Loading(waiting)) => waiting.push(item.clone()),
                Some(Slot::Ready(live)) => live.lock().apply(item, &self.metrics),
                None => {}
            }
        }
    }

    /// Hands an ephemeral event from another edge to this edge's sessions of its workspace.
    pub(super) fn relay(&self, workspace: &WorkspaceId, event: Event) {
        if let Some(Slot::Ready(live)) = self.registry().get(workspace) {
            live.lock().relay(event, None, &self.metrics);
        }
    }

    /// Forgets every workspace (after the edge lost events): sessions are told to boot again.
    pub(super) fn reset(&self) {
        let slots: Vec<Slot> = self.registry().drain().map(|(_, slot)| slot).collect();
        for slot in slots {
            if let Slot::Ready(live) = slot {
                let mut inner = live.lock();
                inner.retired = true;
                for outbox in inner.sessions.values() {
                    outbox.close(CloseReason::Resync);
                }
            }
        }
        self.cache.invalidate_all();
    }

    /// Re-weighs cached workspaces whose state changed since the cache weighed them (so
    /// `max_bytes` bounds what is held now, not what was loaded), then drops workspaces that
    /// are neither cached nor used by a session.
    pub(super) async fn sweep(&self) {
        let changed: Vec<Arc<WorkspaceId>> = self
            .cache
            .iter()
            .filter(|(_, live)| live.weight() != live.weighed.load(Ordering::Relaxed))
            .map(|(id, _)| id)
            .collect();
        for id in changed {
            // Put back only what is still cached: an update is weighed again, and evicts beyond
            // the capacity like an insert.
            let put_back = |entry: Option<moka::Entry<WorkspaceId, Arc<Live>>>| {
                std::future::ready(match entry {
                    Some(entry) => moka::ops::compute::Op::Put(entry.into_value()),
                    None => moka::ops::compute::Op::Nop,
                })
            };
            self.cache.entry_by_ref(id.as_ref()).and_compute_with(put_back).await;
        }
        self.cache.run_pending_tasks().await;
        let mut registry = self.registry();
        registry.retain(|id, slot| match slot {
            Slot::Loading(_) => true,
            Slot::Ready(live) => {
                let mut inner = live.lock();
                let keep = self.cache.contains_key(id) || inner.session_count() > 0;
                inner.retired = !keep;
                keep
            }
        });
    }

    /// Every loaded workspace.
    pub(super) fn all_live(&self) -> Vec<(WorkspaceId, Arc<Live>)> {
        let registry = self.registry();
        registry
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Ready(live) => Some((id.clone(), live.clone())),
                Slot::Loading(_) => None,
            })
            .collect()
    }

    /// Loaded workspaces (for metrics and tests).
    pub fn loaded(&self) -> usize {
        self.registry().values().filter(|s| matches!(s, Slot::Ready(_))).count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::super::fixtures::*;
    use super::*;
    use crate::{upstream::UpstreamConfig, EdgeConfig};

    #[test]
    fn sessions_are_kept_by_id_and_by_user_until_unregistered() {
        let mut inner = live();
        let (a, b) = (session(&mut inner, 1, "U1", 8), session(&mut inner, 2, "U1", 8));
        let c = session(&mut inner, 3, "U2", 8);
        assert_eq!(inner.session_count(), 3);
        assert_eq!(inner.by_user.get(&uid("U1")), Some(&vec![a.id, b.id]));
        inner.unregister(a.id);
        assert_eq!(inner.session_count(), 2);
        assert_eq!(inner.by_user.get(&uid("U1")), Some(&vec![b.id]));
        inner.unregister(b.id);
        assert!(!inner.by_user.contains_key(&uid("U1")), "a user with no session left is forgotten");
        // Unregistering twice, or an id never registered, changes nothing.
        inner.unregister(b.id);
        inner.unregister(99);
        assert_eq!(inner.session_count(), 1);
        assert!(inner.sessions.contains_key(&c.id));
    }

    /// A registry with no origin behind it: workspaces are installed from snapshots directly.
    fn workspaces(shutdown: &CancellationToken) -> Arc<Workspaces> {
        let config = EdgeConfig::default();
        let metrics = Arc::new(Metrics::new());
        let link = UpstreamConfig {
            // Nothing listens there; these tests never call the origin.
            origin: "127.0.0.1:9".into(),
            server_name: config.origin.server_name.clone(),
            trust: config.origin_trust(),
            edge_key: "0123456789abcdef".into(),
            edge_id: "edge-test".into(),
            call_timeout: Duration::from_millis(100),
            start_cursor: None,
        };
        let (upstream, _feed) = Upstream::start(link, metrics.clone(), shutdown.clone());
        Workspaces::new(upstream, CacheLimits::default(), 1 << 20, metrics, false)
    }

    #[tokio::test]
    async fn the_feed_reaches_the_sessions_of_its_own_workspace_only() {
        let shutdown = CancellationToken::new();
        let workspaces = workspaces(&shutdown);
        let w1 = workspaces.install(&wid("W1"), snapshot("W1"));
        let w2 = workspaces.install(&wid("W2"), snapshot("W2"));
        assert_eq!(workspaces.loaded(), 2);
        let in_w1 = session(&mut w1.lock(), 1, "U1", 8);
        let in_w2 = session(&mut w2.lock(), 2, "U1", 8);
        let in_w3 = FeedItem { workspace: wid("W3"), ..post(103, "C1", 1, "U2") };
        let in_w2_item = FeedItem { workspace: wid("W2"), ..post(102, "C1", 1, "U2") };
        workspaces.apply(&[post(101, "C1", 1, "U2"), in_w2_item, in_w3]);
        assert_eq!(queued(&in_w1), [cur(101)]);
        assert_eq!(queued(&in_w2), [cur(102)]);
        assert!(workspaces.get_loaded(&wid("W3")).is_none(), "the feed loads nothing");
        // Forgetting every workspace tells their sessions to boot again.
        workspaces.reset();
        assert_eq!(in_w1.close_reason(), Some(CloseReason::Resync));
        assert_eq!(in_w2.close_reason(), Some(CloseReason::Resync));
        assert!(w1.lock().is_retired() && w2.lock().is_retired());
        assert_eq!(workspaces.loaded(), 0);
        shutdown.cancel();
    }
}
