//! Loaded workspaces, the feed applied to them, and fan-out to local connections.
//!
//! Every workspace the edge serves is a [`Live`]: its [`WorkspaceState`] and the outboxes of
//! the sessions connected to it, under one lock. The feed task applies each origin event to
//! the state and, under the same lock, hands one encoded copy to every session that should see
//! it — so a session registered under that lock gets exactly the events after the cursor its
//! `hello` carried, in feed order, and a member removed by an event gets nothing after it.
//!
//! Loading a workspace is consistent with the feed without stopping it: a loading workspace
//! collects the feed's events for it while its snapshot is fetched; the snapshot is consistent
//! with a cursor, so the collected events after that cursor are applied and those at or
//! before it dropped. The origin read the snapshot after every event the edge had already
//! received was committed, so nothing falls between the two.
//!
//! - `registry`: the loaded workspaces (the moka cache and what sessions still use) and the
//!   sessions of each.
//! - `outbox`: each session's bounded queue, and what happens when it is full.
//! - `feed`: the tasks that move loaded workspaces: the origin's feed, the presence tick.
//! - here: handing an event to the sessions that should see it.

mod feed;
#[cfg(test)]
mod fixtures;
mod outbox;
mod registry;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use selvage_shared::{ChannelId, Event, FeedItem, UserId};
use tokio::time::Instant;

pub use self::feed::{run_feed, run_presence, PRESENCE_TICK};
pub use self::outbox::{CloseReason, Encoded, Out, Outbox};
pub use self::registry::{LoadError, Workspaces};
use crate::{
    metrics::Metrics,
    presence::{PresenceState, RateLimited},
    workspace::{Recipients, WorkspaceState},
};

/// A loaded workspace and its connected sessions.
pub struct Live {
    inner: Mutex<LiveInner>,
    /// What the cache counts the workspace at: moka weighs an entry only when it goes in, and
    /// the feed grows and shrinks the state after that (see [`Workspaces::sweep`]).
    weighed: AtomicU32,
}

/// What [`Live`]'s lock guards.
pub struct LiveInner {
    /// The workspace's state.
    pub state: WorkspaceState,
    sessions: HashMap<u64, Arc<Outbox>>,
    by_user: HashMap<UserId, Vec<u64>>,
    /// Each channel's audience: the sessions of its members here, worked out on the first event
    /// after members or sessions changed rather than on every event. Forgotten whenever a
    /// session comes or goes; stale once the state's members version moves.
    audiences: HashMap<ChannelId, Audience>,
    /// Sessions listed in `audiences`, all entries together (bounded by [`MAX_AUDIENCE_REFS`]).
    audience_refs: usize,
    /// Set when the edge stops feeding this copy (dropped from the registry, or reset): a
    /// session must not register on it, and boots again from a fresh one.
    retired: bool,
    /// When each user last had a `typing` relayed per channel (see [`TYPING_EVERY`]).
    typing: HashMap<(UserId, ChannelId), Instant>,
    /// Who is online, what this edge reports, and who follows whom.
    pub presence: PresenceState,
}

/// The sessions of a channel's members, as they were at one members version.
struct Audience {
    members_version: u64,
    outboxes: Arc<[Arc<Outbox>]>,
}

/// Sessions the audiences of one workspace may list in all (8 bytes each); past it they are
/// forgotten and worked out again as events come.
const MAX_AUDIENCE_REFS: usize = 1 << 20;

/// A user's `typing` in one channel is relayed at most this often; the rest are dropped (a
/// client repeats it every few seconds while its user types, so nothing is lost).
pub const TYPING_EVERY: Duration = Duration::from_secs(3);
impl LiveInner {
    /// Whether a `typing` of `user` in `channel` at `now` may be relayed (and, if so, counts as
    /// the last one): one per user and channel every [`TYPING_EVERY`].
    pub fn typing_allowed(&mut self, user: &UserId, channel: &ChannelId, now: Instant) -> bool {
        if self.typing.len() >= 4096 {
            self.typing.retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
        }
        let key = (user.clone(), channel.clone());
        match self.typing.get(&key) {
            Some(at) if now.duration_since(*at) < TYPING_EVERY => false,
            _ => {
                self.typing.insert(key, now);
                true
            }
        }
    }

    /// Applies one feed event and hands it to the sessions that should see it.
    fn apply(&mut self, item: &FeedItem, metrics: &Metrics) {
        let Some(applied) = self.state.apply(item) else { return };
        if let Event::TokenRevoked { token_hash } = &item.event {
            for outbox in self.sessions.values().filter(|o| o.token_hash == *token_hash) {
                outbox.close(CloseReason::TokenRevoked);
            }
            return;
        }
        if let Event::UserUpdated { user } = &item.event {
            if user.deactivated {
                for outbox in self.sessions.values().filter(|o| o.user == user.id) {
                    outbox.close(CloseReason::Deactivated);
                }
            }
        }
        // A channel's members are its cached audience; anyone else (a user not or no longer a
        // member who must still hear of it, or other kinds of recipients) is looked up.
        let (audience, others) = match &applied.recipients {
            Recipients::Members(channel) => (self.audience(channel), Vec::new()),
            Recipients::MembersAnd(channel, extra) => {
                let extra = if self.state.is_member(channel, extra) {
                    Vec::new()
                } else {
                    self.by_user.get(extra).cloned().unwrap_or_default()
                };
                (self.audience(channel), extra)
            }
            recipients => (Arc::from([]), self.sessions_of(recipients, None)),
        };
        if audience.is_empty() && others.is_empty() {
            return;
        }
        let ephemeral = item.event.is_ephemeral();
        let encoded = Arc::new(Encoded::new(item.cursor.clone(), item.event.clone()));
        self.deliver_to(&encoded, &audience, None, ephemeral, metrics);
        self.deliver(&encoded, others, ephemeral, metrics);
    }

    /// The sessions of `channel`'s members here: worked out from members and sessions once,
    /// then reused until either changes.
    fn audience(&mut self, channel: &ChannelId) -> Arc<[Arc<Outbox>]> {
        let version = self.state.members_version();
        if let Some(audience) = self.audiences.get(channel) {
            if audience.members_version == version {
                return audience.outboxes.clone();
            }
        }
        let ids = self.sessions_of(&Recipients::Members(channel.clone()), None);
        let outboxes: Arc<[Arc<Outbox>]> = ids.iter().filter_map(|id| self.sessions.get(id).cloned()).collect();
        if let Some(stale) = self.audiences.remove(channel) {
            self.audience_refs -= stale.outboxes.len();
        }
        if self.audience_refs + outboxes.len() > MAX_AUDIENCE_REFS {
            self.forget_audiences();
        }
        self.audience_refs += outboxes.len();
        self.audiences.insert(channel.clone(), Audience { members_version: version, outboxes: outboxes.clone() });
        outboxes
    }

    /// Hands an ephemeral event (typing) of `channel` to its members' sessions, except `from`'s;
    /// an ephemeral message to its one user's sessions.
    /// It carries the cursor of the newest event applied: every durable event at or before it
    /// is already ahead of it in each outbox, so a client may resume from it.
    pub fn relay(&mut self, event: Event, from: Option<u64>, metrics: &Metrics) {
        if let Event::PresenceChange { user, presence } = event {
            // Handed to followers on the next presence tick, batched.
            self.presence.announce(user, presence);
            return;
        }
        if let Event::EphemeralMessage { user, .. } = &event {
            // To the one user's sessions, all of them.
            let ids = self.sessions_of(&Recipients::User(user.clone()), None);
            let encoded = Arc::new(Encoded::new(self.state.cursor().clone(), event));
            self.deliver(&encoded, ids, true, metrics);
            return;
        }
        let Some(channel) = event.channel() else { return };
        let audience = self.audience(channel);
        let encoded = Arc::new(Encoded::new(self.state.cursor().clone(), event));
        self.deliver_to(&encoded, &audience, from, true, metrics);
    }

    /// Replaces what session `id` follows (`presence_sub`) and hands it their presence now.
    pub fn presence_sub(
        &mut self,
        id: u64,
        users: Vec<UserId>,
        per_window: u32,
        metrics: &Metrics,
    ) -> Result<(), RateLimited> {
        let current = self.presence.subscribe(id, users, Instant::now(), per_window)?;
        let cursor = self.state.cursor().clone();
        for (user, presence) in current {
            let encoded = Arc::new(Encoded::new(cursor.clone(), Event::PresenceChange { user, presence }));
            self.deliver(&encoded, vec![id], true, metrics);
        }
        Ok(())
    }

    /// Hands the presence changes announced since the last tick to their followers.
    pub fn flush_presence(&mut self, metrics: &Metrics) {
        let pending = self.presence.take_pending();
        if pending.is_empty() {
            return;
        }
        let cursor = self.state.cursor().clone();
        for (user, presence, sessions) in pending {
            let encoded = Arc::new(Encoded::new(cursor.clone(), Event::PresenceChange { user, presence }));
            self.deliver(&encoded, sessions, true, metrics);
        }
    }

    /// The sessions of `recipients`, except `except`. A channel's members are matched against
    /// the connected users from whichever side is smaller: a huge channel with few people online
    /// costs the people online, a small one its members.
    fn sessions_of(&self, recipients: &Recipients, except: Option<u64>) -> Vec<u64> {
        let mut ids: Vec<u64> = Vec::new();
        let mut add = |user_ids: &Vec<u64>| ids.extend(user_ids.iter().filter(|id| Some(**id) != except));
        match recipients {
            Recipients::Nobody => {}
            Recipients::Everyone => self.by_user.values().for_each(&mut add),
            Recipients::User(user) => self.by_user.get(user).into_iter().for_each(&mut add),
            Recipients::Followers(channel, followers) => followers
                .iter()
                .filter(|u| self.state.is_member(channel, u))
                .filter_map(|u| self.by_user.get(u))
                .for_each(&mut add),
            Recipients::Members(channel) | Recipients::MembersAnd(channel, _) => {
                let members = self.state.members(channel);
                let members_len = members.map_or(0, |m| m.len());
                if members_len <= self.by_user.len() {
                    members.into_iter().flatten().filter_map(|u| self.by_user.get(u)).for_each(&mut add);
                } else if let Some(members) = members {
                    self.by_user.iter().filter(|(u, _)| members.contains(*u)).for_each(|(_, user_ids)| add(user_ids));
                }
                if let Recipients::MembersAnd(channel, extra) = recipients {
                    if !self.state.is_member(channel, extra) {
                        self.by_user.get(extra).into_iter().for_each(&mut add);
                    }
                }
            }
        }
        ids
    }

    fn deliver(&mut self, encoded: &Arc<Encoded>, ids: Vec<u64>, ephemeral: bool, metrics: &Metrics) {
        let outboxes: Vec<Arc<Outbox>> = ids.iter().filter_map(|id| self.sessions.get(id).cloned()).collect();
        self.deliver_to(encoded, &outboxes, None, ephemeral, metrics);
    }

    /// Hands `encoded` to each of `outboxes` except session `except`'s; sessions that are gone
    /// are unregistered.
    fn deliver_to(
        &mut self,
        encoded: &Arc<Encoded>,
        outboxes: &[Arc<Outbox>],
        except: Option<u64>,
        ephemeral: bool,
        metrics: &Metrics,
    ) {
        let mut gone = Vec::new();
        let mut delivered = 0;
        for outbox in outboxes.iter().filter(|o| Some(o.id) != except) {
            if outbox.push(encoded.clone(), ephemeral, metrics) {
                delivered += 1;
            } else {
                gone.push(outbox.id);
            }
        }
        metrics.fanout_deliveries.inc_by(delivered);
        for id in gone {
            self.unregister(id);
        }
    }
}

impl Live {
    /// Locks the workspace: state and sessions together.
    pub fn lock(&self) -> MutexGuard<'_, LiveInner> {
        // A panic while holding the lock would leave the state half-applied; the data is still
        // memory-safe to read, and the next resync or reload replaces it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes a session (when it ends).
    pub fn unregister(&self, id: u64) {
        self.lock().unregister(id);
    }

    fn weight(&self) -> u32 {
        self.lock().state.weight().max(1)
    }

    /// The weight, remembered as what the cache counts.
    fn weigh(&self) -> u32 {
        let weight = self.weight();
        self.weighed.store(weight, Ordering::Relaxed);
        weight
    }
}

#[cfg(test)]
mod tests {
    use selvage_shared::FeedItem;

    use super::fixtures::*;
    use super::*;

    #[test]
    fn an_event_reaches_every_session_of_the_channel_s_members_and_no_one_else() {
        let metrics = Metrics::new();
        let mut inner = live();
        let (u1_a, u1_b) = (session(&mut inner, 1, "U1", 8), session(&mut inner, 2, "U1", 8));
        let u2 = session(&mut inner, 3, "U2", 8);
        let u3 = session(&mut inner, 4, "U3", 8);
        inner.apply(&post(101, "C1", 1, "U2"), &metrics);
        assert_eq!(queued(&u1_a), [cur(101)]);
        assert_eq!(queued(&u1_b), [cur(101)], "every session of a member");
        assert_eq!(queued(&u2), [cur(101)], "the author's own sessions too");
        assert_eq!(queued(&u3), [], "not a member of C1");
        assert_eq!(metrics.fanout_deliveries.get(), 3);
    }

    #[test]
    fn a_private_channel_s_events_reach_its_members_only() {
        let metrics = Metrics::new();
        let mut inner = live();
        let u1 = session(&mut inner, 1, "U1", 8);
        let u2 = session(&mut inner, 2, "U2", 8);
        let u3 = session(&mut inner, 3, "U3", 8);
        inner.apply(&post(101, "C2", 1, "U1"), &metrics);
        assert_eq!((queued(&u1), queued(&u2), queued(&u3)), (vec![cur(101)], vec![], vec![]));
        // A member from the join on: the join itself and what follows, nothing before.
        inner.apply(&item(102, Event::MemberJoined { channel: cid("C2"), user: uid("U2") }), &metrics);
        inner.apply(&post(103, "C2", 2, "U1"), &metrics);
        assert_eq!(queued(&u2), [cur(102), cur(103)]);
        assert_eq!(queued(&u1), [cur(102), cur(103)]);
        assert_eq!(queued(&u3), [], "still not a member");
    }

    #[test]
    fn a_member_who_leaves_gets_the_departure_and_nothing_after() {
        let metrics = Metrics::new();
        let mut inner = live();
        let u1 = session(&mut inner, 1, "U1", 8);
        let u2 = session(&mut inner, 2, "U2", 8);
        inner.apply(&item(101, Event::MemberLeft { channel: cid("C1"), user: uid("U2") }), &metrics);
        inner.apply(&post(102, "C1", 1, "U1"), &metrics);
        assert_eq!(queued(&u2), [cur(101)]);
        assert_eq!(queued(&u1), [cur(101), cur(102)]);
    }

    #[test]
    fn events_of_another_workspace_reach_nobody() {
        let metrics = Metrics::new();
        let mut inner = live();
        let u1 = session(&mut inner, 1, "U1", 8);
        let foreign = FeedItem { workspace: wid("W2"), ..post(101, "C1", 1, "U2") };
        inner.apply(&foreign, &metrics);
        assert_eq!(queued(&u1), []);
        assert_eq!(inner.state.cursor(), &cur(100), "nothing applied");
        inner.apply(&post(102, "C1", 1, "U2"), &metrics);
        assert_eq!(queued(&u1), [cur(102)]);
    }

    #[test]
    fn each_session_gets_its_events_in_feed_order() {
        let metrics = Metrics::new();
        let mut inner = live();
        let u1 = session(&mut inner, 1, "U1", 64);
        let u2 = session(&mut inner, 2, "U2", 64);
        let (mut c1_seq, mut c2_seq) = (0, 0);
        for n in 101..=120 {
            if n % 3 == 0 {
                c2_seq += 1;
                inner.apply(&post(n, "C2", c2_seq, "U1"), &metrics);
            } else {
                c1_seq += 1;
                inner.apply(&post(n, "C1", c1_seq, "U2"), &metrics);
            }
            // A session that comes and goes in between changes no one else's order.
            if n == 110 {
                let passing = session(&mut inner, 9, "U2", 64);
                inner.unregister(passing.id);
            }
        }
        assert_eq!(queued(&u1), (101..=120).map(cur).collect::<Vec<_>>());
        assert_eq!(queued(&u2), (101..=120).filter(|n| n % 3 != 0).map(cur).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_outbox_closes_its_session_as_a_slow_consumer() {
        let metrics = Metrics::new();
        let mut inner = live();
        let slow = session(&mut inner, 1, "U1", 2);
        let fast = session(&mut inner, 2, "U2", 64);
        for (n, seq) in [(101, 1), (102, 2), (103, 3)] {
            inner.apply(&post(n, "C1", seq, "U2"), &metrics);
        }
        assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(metrics.queue_drops.with_label_values(&["connection_closed"]).get(), 1);
        assert_eq!(queued(&fast), [cur(101), cur(102), cur(103)], "others are not held back");
        // What fitted stays for the session to write before it closes; nothing more goes in,
        // and fan-out forgets the session.
        inner.apply(&post(104, "C1", 4, "U2"), &metrics);
        assert_eq!(queued(&slow), [cur(101), cur(102)]);
        assert_eq!(inner.session_count(), 1);
        assert!(!inner.sessions.contains_key(&slow.id));
        assert_eq!(queued(&fast), [cur(104)]);
    }

    #[test]
    fn an_ephemeral_event_that_does_not_fit_is_dropped_and_the_session_stays() {
        let metrics = Metrics::new();
        let mut inner = live();
        let full = session(&mut inner, 1, "U1", 1);
        let other = session(&mut inner, 2, "U2", 8);
        inner.apply(&post(101, "C1", 1, "U2"), &metrics);
        inner.relay(Event::Typing { channel: cid("C1"), user: uid("U2") }, Some(other.id), &metrics);
        assert_eq!(full.close_reason(), None);
        assert_eq!(metrics.queue_drops.with_label_values(&["ephemeral_dropped"]).get(), 1);
        assert_eq!(queued(&full), [cur(101)]);
        assert_eq!(queued(&other), [cur(101)], "typing is not sent back to its sender");
        assert_eq!(inner.session_count(), 2);
    }

    #[test]
    fn an_unregistered_session_gets_nothing_more() {
        let metrics = Metrics::new();
        let mut inner = live();
        let leaving = session(&mut inner, 1, "U1", 8);
        let staying = session(&mut inner, 2, "U1", 8);
        inner.apply(&post(101, "C1", 1, "U2"), &metrics);
        inner.unregister(leaving.id);
        inner.apply(&post(102, "C1", 2, "U2"), &metrics);
        assert_eq!(queued(&leaving), [cur(101)]);
        assert_eq!(queued(&staying), [cur(101), cur(102)]);
        inner.unregister(staying.id);
        inner.apply(&post(103, "C1", 3, "U2"), &metrics);
        assert_eq!(queued(&staying), []);
        assert_eq!(metrics.fanout_deliveries.get(), 3);
    }

    #[test]
    fn a_revoked_token_or_a_deactivated_user_closes_their_sessions_only() {
        let metrics = Metrics::new();
        let mut inner = live();
        let revoked = session(&mut inner, 1, "U1", 8);
        let same_user = session(&mut inner, 2, "U1", 8);
        let u2 = session(&mut inner, 3, "U2", 8);
        let token_hash = revoked.token_hash.clone();
        inner.apply(&item(101, Event::TokenRevoked { token_hash }), &metrics);
        assert_eq!(revoked.close_reason(), Some(CloseReason::TokenRevoked));
        assert_eq!((same_user.close_reason(), u2.close_reason()), (None, None), "other tokens stay");
        let mut deactivated = inner.state.user(&uid("U2")).cloned().expect("U2 exists");
        deactivated.deactivated = true;
        inner.apply(&item(102, Event::UserUpdated { user: deactivated }), &metrics);
        assert_eq!(u2.close_reason(), Some(CloseReason::Deactivated));
        assert_eq!(same_user.close_reason(), None);
    }
}
