//! Presence: who is online, combined from every edge's view, held with leases, never logged.
//!
//! Each edge reports, per user with sessions on it, whether one of them was used lately
//! (`active`) or all are idle (`away`), and `offline` when the last one closes; it repeats every
//! report well within the lease ([`PresenceConfig::lease_ms`]) while the sessions last. The
//! origin keeps each edge's report until it is replaced or its lease runs out, so the users of
//! an edge that crashed — which reports nothing more — go offline by themselves. A user's
//! presence is the best any edge reports (`active` over `away` over `offline`), shown as `dnd`
//! while their do-not-disturb is on and they are not offline. Every change goes to every edge as
//! an ephemeral `presence_change` through the [`crate::feed::relay`]; the edges pass it on to the
//! sessions that follow that user.
//!
//! [`Tracker`] is the whole state machine and takes the time as an argument, so its timing is
//! tested with tokio's paused clock; [`run_sweeper`] expires leases once a second.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use selvage_shared::{link::PresenceReport, Event, Presence, UserId, WorkspaceId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::feed::relay::{Relay, Relayed};

/// One user's presence as the edges report it.
#[derive(Debug, Default)]
struct Entry {
    /// Per edge: what it reported and when that report expires.
    edges: HashMap<Arc<str>, (Presence, Instant)>,
    /// Do not disturb.
    dnd: bool,
    /// What was last announced.
    shown: Presence,
}

impl Entry {
    /// The presence the reports add up to at `now`.
    fn combined(&self, now: Instant) -> Presence {
        let rank = |p: &Presence| match p {
            Presence::Active => 2,
            Presence::Away => 1,
            _ => 0,
        };
        let best = self.edges.values().filter(|(_, until)| *until > now).map(|(p, _)| *p).max_by_key(rank);
        match best {
            Some(Presence::Active | Presence::Away | Presence::Dnd) if self.dnd => Presence::Dnd,
            Some(p @ (Presence::Active | Presence::Away)) => p,
            _ => Presence::Offline,
        }
    }
}

/// A presence change to announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Whose presence.
    pub user: UserId,
    /// The new presence.
    pub presence: Presence,
}

/// Every user's presence on this origin.
pub struct Tracker {
    users: Mutex<HashMap<(WorkspaceId, UserId), Entry>>,
    /// Deactivated users: offline, whatever an edge still reports before it closes their
    /// sessions, so that `@here` never reaches them.
    deactivated: Mutex<std::collections::HashSet<(WorkspaceId, UserId)>>,
    lease: Duration,
}

impl Tracker {
    /// A tracker whose edge reports last `lease` unless renewed.
    pub fn new(lease: Duration) -> Self {
        Tracker { users: Mutex::new(HashMap::new()), deactivated: Mutex::default(), lease }
    }

    fn users(&self) -> MutexGuard<'_, HashMap<(WorkspaceId, UserId), Entry>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an edge's reports at `now`; returns the presence changes they make.
    pub fn report(
        &self,
        edge: &Arc<str>,
        workspace: &WorkspaceId,
        reports: &[PresenceReport],
        now: Instant,
    ) -> Vec<Change> {
        let deactivated = self.deactivated.lock().unwrap_or_else(PoisonError::into_inner);
        let mut users = self.users();
        let mut changes = Vec::new();
        for r in reports {
            let key = (workspace.clone(), r.user.clone());
            if deactivated.contains(&key) {
                continue;
            }
            let entry = users.entry(key).or_default();
            match r.presence {
                Presence::Active | Presence::Away => {
                    entry.edges.insert(edge.clone(), (r.presence, now + self.lease));
                }
                // An edge reports only what it sees; dnd is set with `set_dnd`.
                Presence::Offline | Presence::Dnd => {
                    entry.edges.remove(edge);
                }
            }
            changes.extend(Self::settle(workspace, &r.user, entry, now));
        }
        users.retain(|_, e| !e.edges.is_empty() || e.dnd);
        changes
    }

    /// Marks a user deactivated (offline from now on, whatever edges report) or active again;
    /// returns the change to announce.
    pub fn set_deactivated(&self, workspace: &WorkspaceId, user: &UserId, deactivated: bool) -> Option<Change> {
        let key = (workspace.clone(), user.clone());
        let mut blocked = self.deactivated.lock().unwrap_or_else(PoisonError::into_inner);
        if !deactivated {
            blocked.remove(&key);
            return None;
        }
        blocked.insert(key.clone());
        let entry = self.users().remove(&key)?;
        (entry.shown != Presence::Offline).then(|| Change {
            workspace: workspace.clone(),
            user: user.clone(),
            presence: Presence::Offline,
        })
    }

    /// Turns a user's do-not-disturb on or off at `now`.
    pub fn set_dnd(&self, workspace: &WorkspaceId, user: &UserId, dnd: bool, now: Instant) -> Option<Change> {
        let mut users = self.users();
        let entry = users.entry((workspace.clone(), user.clone())).or_default();
        entry.dnd = dnd;
        let change = Self::settle(workspace, user, entry, now);
        users.retain(|_, e| !e.edges.is_empty() || e.dnd);
        change
    }

    /// Drops the reports whose lease ran out by `now`; returns the changes that makes.
    pub fn expire(&self, now: Instant) -> Vec<Change> {
        let mut users = self.users();
        let mut changes = Vec::new();
        for ((workspace, user), entry) in users.iter_mut() {
            let before = entry.edges.len();
            entry.edges.retain(|_, (_, until)| *until > now);
            if entry.edges.len() != before {
                changes.extend(Self::settle(workspace, user, entry, now));
            }
        }
        users.retain(|_, e| !e.edges.is_empty() || e.dnd);
        changes
    }

    /// A user's presence at `now`.
    pub fn presence_of(&self, workspace: &WorkspaceId, user: &UserId, now: Instant) -> Presence {
        self.users().get(&(workspace.clone(), user.clone())).map_or(Presence::Offline, |e| e.combined(now))
    }

    /// Every user of `workspace` who is not offline at `now`.
    pub fn online(&self, workspace: &WorkspaceId, now: Instant) -> Vec<(UserId, Presence)> {
        let users = self.users();
        let mut online: Vec<(UserId, Presence)> = users
            .iter()
            .filter(|((w, _), _)| w == workspace)
            .map(|((_, u), e)| (u.clone(), e.combined(now)))
            .filter(|(_, p)| *p != Presence::Offline)
            .collect();
        online.sort_by(|a, b| a.0.cmp(&b.0));
        online
    }

    /// The users of `workspace` with a session in use at `now` (`active`, or `dnd` over an
    /// active session): whom `@here` reaches.
    pub fn active(&self, workspace: &WorkspaceId, now: Instant) -> Vec<UserId> {
        let users = self.users();
        let mut active: Vec<UserId> = users
            .iter()
            .filter(|((w, _), e)| {
                w == workspace && e.edges.values().any(|(p, until)| *p == Presence::Active && *until > now)
            })
            .map(|((_, u), _)| u.clone())
            .collect();
        active.sort();
        active
    }

    /// The change, if what the entry adds up to now differs from what was last announced.
    fn settle(workspace: &WorkspaceId, user: &UserId, entry: &mut Entry, now: Instant) -> Option<Change> {
        let presence = entry.combined(now);
        (presence != entry.shown).then(|| {
            entry.shown = presence;
            Change { workspace: workspace.clone(), user: user.clone(), presence }
        })
    }
}

/// Announces changes to every edge.
pub fn announce(relay: &Relay, changes: impl IntoIterator<Item = Change>) {
    for c in changes {
        tracing::debug!(ws.id = %c.workspace, user.id = %c.user, presence = ?c.presence, "presence changed");
        let event = Event::PresenceChange { user: c.user, presence: c.presence };
        relay.publish(Relayed { from_edge: None, workspace: c.workspace, event });
    }
}

/// Expires leases once a second until `shutdown`, announcing who went offline.
pub async fn run_sweeper(tracker: Arc<Tracker>, relay: Arc<Relay>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => announce(&relay, tracker.expire(Instant::now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> WorkspaceId {
        WorkspaceId::new_unchecked("W1")
    }

    fn uid(s: &str) -> UserId {
        UserId::new_unchecked(s)
    }

    fn report(user: &str, presence: Presence) -> Vec<PresenceReport> {
        vec![PresenceReport { user: uid(user), presence }]
    }

    fn shown(changes: &[Change]) -> Vec<(&str, Presence)> {
        changes.iter().map(|c| (c.user.as_str(), c.presence)).collect()
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn online_away_offline_on_time() {
        let t = Tracker::new(LEASE);
        let a: Arc<str> = "edge-a".into();
        let start = Instant::now();
        assert_eq!(shown(&t.report(&a, &ws(), &report("U1", Presence::Active), start)), [("U1", Presence::Active)]);
        // Renewing the same report announces nothing.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(t.report(&a, &ws(), &report("U1", Presence::Active), Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            shown(&t.report(&a, &ws(), &report("U1", Presence::Away), Instant::now())),
            [("U1", Presence::Away)]
        );
        assert_eq!(t.online(&ws(), Instant::now()), [(uid("U1"), Presence::Away)]);
        // The last session closes: offline at once.
        assert_eq!(
            shown(&t.report(&a, &ws(), &report("U1", Presence::Offline), Instant::now())),
            [("U1", Presence::Offline)]
        );
        assert!(t.online(&ws(), Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_edges_users_go_offline_when_the_lease_runs_out() {
        let t = Tracker::new(LEASE);
        let (a, b): (Arc<str>, Arc<str>) = ("edge-a".into(), "edge-b".into());
        t.report(&a, &ws(), &report("U1", Presence::Active), Instant::now());
        t.report(&b, &ws(), &report("U1", Presence::Away), Instant::now());
        t.report(&a, &ws(), &report("U2", Presence::Active), Instant::now());
        // Edge a goes silent; edge b keeps renewing U1.
        tokio::time::advance(LEASE - Duration::from_secs(1)).await;
        t.report(&b, &ws(), &report("U1", Presence::Away), Instant::now());
        assert!(t.expire(Instant::now()).is_empty(), "nothing expires before the lease");
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut changes = t.expire(Instant::now());
        changes.sort_by(|x, y| x.user.cmp(&y.user));
        assert_eq!(shown(&changes), [("U1", Presence::Away), ("U2", Presence::Offline)]);
        assert_eq!(t.presence_of(&ws(), &uid("U1"), Instant::now()), Presence::Away, "edge b still sees U1");
        assert_eq!(t.presence_of(&ws(), &uid("U2"), Instant::now()), Presence::Offline);
    }

    #[tokio::test(start_paused = true)]
    async fn dnd_shows_while_online_and_survives_reconnects() {
        let t = Tracker::new(LEASE);
        let a: Arc<str> = "edge-a".into();
        assert!(t.set_dnd(&ws(), &uid("U1"), true, Instant::now()).is_none(), "offline stays offline");
        assert_eq!(
            shown(&t.report(&a, &ws(), &report("U1", Presence::Active), Instant::now())),
            [("U1", Presence::Dnd)]
        );
        assert!(t.report(&a, &ws(), &report("U1", Presence::Away), Instant::now()).is_empty(), "still dnd");
        assert_eq!(t.set_dnd(&ws(), &uid("U1"), false, Instant::now()).map(|c| c.presence), Some(Presence::Away));
        // Other workspaces are not mixed in.
        assert!(t.online(&WorkspaceId::new_unchecked("W2"), Instant::now()).is_empty());
    }
}
