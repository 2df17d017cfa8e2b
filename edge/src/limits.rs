//! What one client may take of an edge, whatever its token: connection slots per user
//! ([`UserSlots`]) and a share of the memory held by client frames still arriving
//! ([`FrameBudget`]).
//!
//! Both are edge-wide and fixed at start (`sessions.max_connections_per_user`,
//! `sessions.frame_budget_bytes`), so that one token — or many connections of anyone — cannot
//! grow an edge's memory past what its operator planned for.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use selvage_shared::{UserId, WorkspaceId};

/// Open connections per user on this edge, capped.
///
/// A user's count is taken when a session has authenticated and given back when the session
/// ends (its [`Slot`] is dropped), so a closed connection frees its slot at once.
pub struct UserSlots {
    max: usize,
    held: Mutex<HashMap<(WorkspaceId, UserId), usize>>,
}

/// One connection's place in its user's count; the place is freed when it is dropped.
pub struct Slot {
    slots: Arc<UserSlots>,
    /// Boxed: every idle session carries its slot, and two pointers are all it needs there.
    key: Box<(WorkspaceId, UserId)>,
}

impl UserSlots {
    /// At most `max` connections per user.
    pub fn new(max: usize) -> Arc<UserSlots> {
        Arc::new(UserSlots { max, held: Mutex::new(HashMap::new()) })
    }

    fn held(&self) -> MutexGuard<'_, HashMap<(WorkspaceId, UserId), usize>> {
        // Nothing panics while holding it; each change is one map operation.
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for one more connection of `user`, or `None` when they hold every one.
    pub fn take(self: &Arc<Self>, workspace: &WorkspaceId, user: &UserId) -> Option<Slot> {
        let key = (workspace.clone(), user.clone());
        let mut held = self.held();
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot { slots: self.clone(), key: Box::new(key) })
    }

    /// Connections `user` holds on this edge.
    pub fn count(&self, workspace: &WorkspaceId, user: &UserId) -> usize {
        self.held().get(&(workspace.clone(), user.clone())).copied().unwrap_or(0)
    }

    /// The most one user may hold.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held();
        if let Some(count) = held.get_mut(&*self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&*self.key);
            }
        }
    }
}
