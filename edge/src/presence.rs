//! Presence at the edge: what this edge sees of its users' sessions (reported to the origin),
//! what the origin says everyone's presence is, and who follows whom (`presence_sub`).
//!
//! - **Seen here.** A user is `active` on this edge while a session of theirs has sent a frame
//!   other than `ping` within `sessions.away_after_ms`, `away` while they have sessions but all
//!   are idle, `offline` once the last one closes. The edge reports changes to the origin
//!   within one presence tick, and renews every report each `sessions.presence_renew_ms` so the
//!   origin's lease does not run out; the origin combines all edges' reports (see the origin's
//!   `presence` module) and announces each change to every edge.
//! - **Known.** The presence the origin announced for each user of the workspace (offline when
//!   unknown): filled from a snapshot when the workspace loads, then from every announcement.
//! - **Followers.** `presence_sub` replaces a session's list (at most
//!   [`selvage_shared::MAX_PRESENCE_SUB_USERS`] users, rate limited per session); the session
//!   gets the current presence of each at once, then `presence_change` for those users only —
//!   queued and handed out together on the next presence tick (batched), and first to be shed
//!   when the session is slow. Slack's subscription model, which cut its presence events 5×.
//!
//! Pure logic: time is an argument, so the timing is tested with tokio's paused clock; the
//! edge's presence task ([`crate::fanout::run_presence`]) drives it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use selvage_shared::{link::PresenceReport, Presence, UserId};
use tokio::time::Instant;

/// The window `presence_sub` is rate limited over.
pub const SUB_WINDOW: Duration = Duration::from_secs(10);

/// One workspace's presence bookkeeping on this edge.
#[derive(Debug, Default)]
pub struct PresenceState {
    /// Per session: its user and when it last did something.
    activity: HashMap<u64, (UserId, Instant)>,
    /// What this edge last reported to the origin per user.
    reported: HashMap<UserId, Presence>,
    /// The origin's view: users not offline.
    known: HashMap<UserId, Presence>,
    /// Per session: the users it follows.
    subs: HashMap<u64, Vec<UserId>>,
    /// Per user: the sessions following them.
    watchers: HashMap<UserId, Vec<u64>>,
    /// Per session: when its recent `presence_sub` frames came.
    sub_times: HashMap<u64, VecDeque<Instant>>,
    /// Announcements waiting for the next tick, with the sessions to hand them to.
    pending: Vec<(UserId, Presence)>,
    /// Every change to every session (see `sessions.presence_broadcast`).
    broadcast: bool,
}

/// A `presence_sub` over the rate limit.
#[derive(Debug, PartialEq, Eq)]
pub struct RateLimited;

impl PresenceState {
    /// Bookkeeping that hands changes to followers only, or with `broadcast` to every session.
    pub fn new(broadcast: bool) -> Self {
        PresenceState { broadcast, ..PresenceState::default() }
    }

    /// A session opened (counts as activity).
    pub fn open(&mut self, session: u64, user: &UserId, now: Instant) {
        self.activity.insert(session, (user.clone(), now));
    }

    /// A session did something other than ping.
    pub fn touch(&mut self, session: u64, now: Instant) {
        if let Some((_, at)) = self.activity.get_mut(&session) {
            *at = now;
        }
    }

    /// A session closed: it stops counting and following.
    pub fn close(&mut self, session: u64) {
        self.activity.remove(&session);
        self.sub_times.remove(&session);
        self.unfollow(session);
    }

    fn unfollow(&mut self, session: u64) {
        for user in self.subs.remove(&session).unwrap_or_default() {
            if let Some(list) = self.watchers.get_mut(&user) {
                list.retain(|s| *s != session);
                if list.is_empty() {
                    self.watchers.remove(&user);
                }
            }
        }
    }

    /// What this edge sees of each user with a session at `now`: `active` if any of their
    /// sessions was used within `away_after`, else `away`.
    fn seen_all(&self, now: Instant, away_after: Duration) -> HashMap<&UserId, Presence> {
        let mut seen: HashMap<&UserId, Presence> = HashMap::new();
        for (user, at) in self.activity.values() {
            let p = if now.duration_since(*at) < away_after { Presence::Active } else { Presence::Away };
            let slot = seen.entry(user).or_insert(p);
            if p == Presence::Active {
                *slot = p;
            }
        }
        seen
    }

    /// What this edge sees of `user` at `now` (`offline` without a session).
    #[cfg(test)]
    fn seen(&self, user: &UserId, now: Instant, away_after: Duration) -> Presence {
        self.seen_all(now, away_after).get(user).copied().unwrap_or(Presence::Offline)
    }

    /// The reports to send the origin at `now`: every user whose presence seen here changed
    /// since the last report, or, when `renew`, every user seen here at all (to renew the
    /// lease) and the changes.
    pub fn reports(&mut self, now: Instant, away_after: Duration, renew: bool) -> Vec<PresenceReport> {
        let seen = self.seen_all(now, away_after);
        let mut out = Vec::new();
        for (user, presence) in &seen {
            let changed = self.reported.get(*user) != Some(presence);
            if changed || renew {
                out.push(PresenceReport { user: (*user).clone(), presence: *presence });
            }
        }
        // Users reported before and gone now.
        for user in self.reported.keys() {
            if !seen.contains_key(user) {
                out.push(PresenceReport { user: user.clone(), presence: Presence::Offline });
            }
        }
        for r in &out {
            if r.presence == Presence::Offline {
                self.reported.remove(&r.user);
            } else {
                self.reported.insert(r.user.clone(), r.presence);
            }
        }
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// What this edge last reported to the origin for `user`; `None` when it reported them
    /// offline or never reported them.
    pub fn reported(&self, user: &UserId) -> Option<Presence> {
        self.reported.get(user).copied()
    }

    /// Forgets what was reported, so the next [`reports`](Self::reports) sends everything
    /// again (after the link to the origin came back: the origin may have restarted).
    pub fn forget_reported(&mut self) {
        self.reported.clear();
    }

    /// Takes an announcement from the origin; followers get it on the next tick.
    pub fn announce(&mut self, user: UserId, presence: Presence) {
        let before = if presence == Presence::Offline {
            self.known.remove(&user)
        } else {
            self.known.insert(user.clone(), presence)
        };
        if before.unwrap_or(Presence::Offline) != presence && (self.broadcast || self.watchers.contains_key(&user)) {
            self.pending.push((user, presence));
        }
    }

    /// Fills in users the snapshot names and no announcement has told of since (those are newer).
    pub fn fill(&mut self, snapshot: Vec<(UserId, Presence)>) {
        for (user, presence) in snapshot {
            if presence != Presence::Offline {
                self.known.entry(user).or_insert(presence);
            }
        }
    }

    /// The presence the origin announced for `user`.
    pub fn presence_of(&self, user: &UserId) -> Presence {
        self.known.get(user).copied().unwrap_or(Presence::Offline)
    }

    /// Replaces what `session` follows with `users` at `now`; answers their presence now, to
    /// hand to the session at once. More than `per_window` calls within [`SUB_WINDOW`] are
    /// refused and change nothing.
    pub fn subscribe(
        &mut self,
        session: u64,
        users: Vec<UserId>,
        now: Instant,
        per_window: u32,
    ) -> Result<Vec<(UserId, Presence)>, RateLimited> {
        let times = self.sub_times.entry(session).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= SUB_WINDOW) {
            times.pop_front();
        }
        if times.len() >= per_window as usize {
            return Err(RateLimited);
        }
        times.push_back(now);
        self.unfollow(session);
        let mut users = users;
        users.sort();
        users.dedup();
        for user in &users {
            self.watchers.entry(user.clone()).or_default().push(session);
        }
        let current = users.iter().map(|u| (u.clone(), self.presence_of(u))).collect();
        self.subs.insert(session, users);
        Ok(current)
    }

    /// The announcements queued since the last tick, each with the sessions following that
    /// user (a user's latest announcement only).
    pub fn take_pending(&mut self) -> Vec<(UserId, Presence, Vec<u64>)> {
        let mut latest: HashMap<UserId, Presence> = HashMap::new();
        let mut order = Vec::new();
        for (user, presence) in self.pending.drain(..) {
            if latest.insert(user.clone(), presence).is_none() {
                order.push(user);
            }
        }
        order
            .into_iter()
            .filter_map(|user| {
                let presence = latest.remove(&user)?;
                let sessions = if self.broadcast {
                    self.activity.keys().copied().collect()
                } else {
                    self.watchers.get(&user)?.clone()
                };
                Some((user, presence, sessions))
            })
            .collect()
    }

    /// Users with a session on this edge.
    #[cfg(test)]
    fn connected_users(&self) -> usize {
        self.seen_all(Instant::now(), Duration::ZERO).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new_unchecked(s)
    }

    const AWAY: Duration = Duration::from_secs(600);

    fn report(user: &str, presence: Presence) -> PresenceReport {
        PresenceReport { user: uid(user), presence }
    }

    #[tokio::test(start_paused = true)]
    async fn active_then_away_on_time_then_offline() {
        let mut p = PresenceState::default();
        p.open(1, &uid("U1"), Instant::now());
        assert_eq!(p.reports(Instant::now(), AWAY, false), [report("U1", Presence::Active)]);
        assert!(p.reports(Instant::now(), AWAY, false).is_empty(), "no change, nothing to say");
        tokio::time::advance(AWAY - Duration::from_millis(1)).await;
        assert!(p.reports(Instant::now(), AWAY, false).is_empty(), "still active just before");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(p.reports(Instant::now(), AWAY, false), [report("U1", Presence::Away)]);
        assert_eq!(p.reports(Instant::now(), AWAY, true), [report("U1", Presence::Away)], "renewals repeat it");
        // Doing something makes the user active again; closing the last session, offline.
        p.touch(1, Instant::now());
        assert_eq!(p.reports(Instant::now(), AWAY, false), [report("U1", Presence::Active)]);
        p.close(1);
        assert_eq!(p.reports(Instant::now(), AWAY, false), [report("U1", Presence::Offline)]);
        assert!(p.reports(Instant::now(), AWAY, true).is_empty(), "offline users are not renewed");
    }

    #[tokio::test(start_paused = true)]
    async fn one_active_session_is_enough() {
        let mut p = PresenceState::default();
        p.open(1, &uid("U1"), Instant::now());
        tokio::time::advance(AWAY).await;
        p.open(2, &uid("U1"), Instant::now());
        assert_eq!(p.seen(&uid("U1"), Instant::now(), AWAY), Presence::Active);
        p.close(2);
        assert_eq!(p.seen(&uid("U1"), Instant::now(), AWAY), Presence::Away);
        assert_eq!(p.connected_users(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn followers_get_current_state_then_batched_changes_of_their_users_only() {
        let mut p = PresenceState::default();
        p.fill(vec![(uid("U2"), Presence::Away)]);
        let now = Instant::now();
        let current = p.subscribe(7, vec![uid("U2"), uid("U3"), uid("U2")], now, 10).unwrap();
        assert_eq!(current, [(uid("U2"), Presence::Away), (uid("U3"), Presence::Offline)]);
        p.announce(uid("U3"), Presence::Active);
        p.announce(uid("U3"), Presence::Dnd);
        p.announce(uid("U4"), Presence::Active);
        p.announce(uid("U2"), Presence::Away);
        assert_eq!(p.take_pending(), [(uid("U3"), Presence::Dnd, vec![7])], "latest only, followed users only");
        // A later snapshot does not overwrite what announcements said.
        p.fill(vec![(uid("U3"), Presence::Away)]);
        assert_eq!(p.presence_of(&uid("U3")), Presence::Dnd);
        // Replacing the list stops the old ones.
        p.subscribe(7, vec![uid("U4")], now, 10).unwrap();
        p.announce(uid("U3"), Presence::Offline);
        assert!(p.take_pending().is_empty());
        p.close(7);
        p.announce(uid("U4"), Presence::Offline);
        assert!(p.take_pending().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn broadcast_hands_every_change_to_every_session() {
        let mut p = PresenceState::new(true);
        p.open(1, &uid("U1"), Instant::now());
        p.open(2, &uid("U2"), Instant::now());
        p.announce(uid("U9"), Presence::Active);
        let mut pending = p.take_pending();
        pending[0].2.sort();
        assert_eq!(pending, [(uid("U9"), Presence::Active, vec![1, 2])]);
    }

    #[tokio::test(start_paused = true)]
    async fn presence_sub_is_rate_limited_per_window() {
        let mut p = PresenceState::default();
        for _ in 0..3 {
            assert!(p.subscribe(1, vec![uid("U1")], Instant::now(), 3).is_ok());
        }
        assert_eq!(p.subscribe(1, vec![], Instant::now(), 3), Err(RateLimited));
        assert!(p.subscribe(2, vec![], Instant::now(), 3).is_ok(), "per session");
        tokio::time::advance(SUB_WINDOW).await;
        assert!(p.subscribe(1, vec![], Instant::now(), 3).is_ok());
    }
}
