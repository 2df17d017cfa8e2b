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
//! Workspaces sit in a moka cache weighed by their estimated size: concurrent first
//! connections of one workspace make one snapshot request, and idle workspaces are dropped
//! beyond `cache.max_bytes`. A workspace evicted while sessions still use it stays live (and
//! current) in the registry until its last session leaves.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use selvage_shared::{
    link::{Answer, Call, LinkError, WorkspaceSnapshot},
    ChannelId, Cursor, ErrorCode, Event, FeedItem, Format, UserId, WorkspaceId,
};
use tokio::{
    sync::{mpsc, Notify},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    presence::{PresenceState, RateLimited},
    upstream::{FeedUpdate, Upstream},
    workspace::{CacheLimits, Recipients, WorkspaceState},
};

/// One frame on its way to a client, already encoded for the session's format.
#[derive(Clone, Debug)]
pub enum Wire {
    /// A JSON frame (WebSocket text).
    Text(Utf8Bytes),
    /// A MessagePack frame (WebSocket binary, or the body of a QUIC frame).
    Binary(Bytes),
}

impl Wire {
    /// Encodes `bytes` made by the codec for `format`.
    pub fn from_encoded(bytes: Vec<u8>, format: Format) -> Wire {
        match format {
            // The codec's JSON output is UTF-8; a failure here would be a codec bug, and
            // sending it as binary then is still a faithful copy.
            Format::Json => match String::from_utf8(bytes) {
                Ok(s) => Wire::Text(Utf8Bytes::from(s)),
                Err(e) => Wire::Binary(Bytes::from(e.into_bytes())),
            },
            Format::MsgPack => Wire::Binary(Bytes::from(bytes)),
        }
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        match self {
            Wire::Text(t) => t.len(),
            Wire::Binary(b) => b.len(),
        }
    }

    /// Whether the frame is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An event frame encoded for `format`.
pub fn event_wire(cursor: &Cursor, event: &Event, format: Format) -> Wire {
    Wire::from_encoded(selvage_shared::encode_event(cursor, event, format), format)
}

/// What a session's outbox carries.
pub enum Out {
    /// An event, shared by every session that gets it.
    Event(Arc<Encoded>),
    /// A reply to the session's own request, already encoded.
    Reply(Wire),
}

/// An event encoded at most once per format, however many sessions get it.
pub struct Encoded {
    /// The event's cursor.
    pub cursor: Cursor,
    event: Event,
    json: OnceLock<Wire>,
    msgpack: OnceLock<Wire>,
}

impl Encoded {
    /// Wraps an event for fan-out.
    pub fn new(cursor: Cursor, event: Event) -> Self {
        Encoded { cursor, event, json: OnceLock::new(), msgpack: OnceLock::new() }
    }

    /// Whether the event is ephemeral (typing, presence): not a feed entry, so its cursor is
    /// only the newest one applied and says nothing about what the client already has.
    pub fn is_ephemeral(&self) -> bool {
        self.event.is_ephemeral()
    }

    /// The frame in `format`, encoded on first use.
    pub fn wire(&self, format: Format) -> Wire {
        let cell = match format {
            Format::Json => &self.json,
            Format::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| event_wire(&self.cursor, &self.event, format)).clone()
    }
}

/// Why the edge closed a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its outbound queue was full when a durable event had to go in: resume to catch up.
    SlowConsumer,
    /// The token it authenticated with was revoked.
    TokenRevoked,
    /// Its user was deactivated.
    Deactivated,
    /// The edge lost events (its cursor fell behind the origin's trim point): boot again.
    Resync,
}

/// The sending half of one session, as fan-out sees it: a bounded queue of frames for the
/// client, which its session takes from.
///
/// The queue holds no memory while it is empty (most sessions, most of the time): its storage
/// is allocated when a frame comes and released when the session has taken them all.
pub struct Outbox {
    /// The session's id (unique on this edge).
    pub id: u64,
    /// The session's user.
    pub user: UserId,
    /// Hash of the token the session authenticated with.
    pub token_hash: String,
    /// The session's wire format.
    pub format: Format,
    capacity: usize,
    queue: Mutex<Queue>,
    /// Woken when a frame is queued or the session is asked to close (a permit is kept for a
    /// session not waiting yet).
    ready: Notify,
    /// Woken when the session took frames (replies wait for room) or ended.
    room: Notify,
    /// Woken when fan-out asks the session to close.
    closing: Notify,
    reason: OnceLock<CloseReason>,
    dead: AtomicBool,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Out>,
    /// The session has ended: nothing more is taken.
    ended: bool,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames.
    pub fn new(id: u64, user: UserId, token_hash: String, format: Format, capacity: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            id,
            user,
            token_hash,
            format,
            capacity,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            room: Notify::new(),
            closing: Notify::new(),
            reason: OnceLock::new(),
            dead: AtomicBool::new(false),
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding it; the queue is consistent after any push or take.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame for the client; the queue is bounded. An ephemeral frame that does not
    /// fit is dropped; a durable one that does not fit closes the session (the client resumes
    /// from its last cursor and gets it then). Returns false once the session is closing.
    pub fn push(&self, event: Arc<Encoded>, ephemeral: bool, metrics: &Metrics) -> bool {
        if self.dead.load(Ordering::Relaxed) {
            return false;
        }
        let mut queue = self.queue();
        if queue.ended {
            drop(queue);
            self.dead.store(true, Ordering::Relaxed);
            return false;
        }
        if queue.items.len() >= self.capacity {
            drop(queue);
            if ephemeral {
                metrics.queue_drops.with_label_values(&["ephemeral_dropped"]).inc();
                return true;
            }
            metrics.queue_drops.with_label_values(&["connection_closed"]).inc();
            self.close(CloseReason::SlowConsumer);
            return false;
        }
        queue.items.push_back(Out::Event(event));
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// Queues a reply to the client's own request, waiting for room (the session limits its
    /// requests in flight, so this waits for the client to read, not forever). False once the
    /// session has ended.
    pub async fn reply(&self, wire: Wire) -> bool {
        let mut wire = Some(wire);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut queue = self.queue();
                if queue.ended {
                    return false;
                }
                if queue.items.len() < self.capacity {
                    if let Some(wire) = wire.take() {
                        queue.items.push_back(Out::Reply(wire));
                    }
                    drop(queue);
                    self.ready.notify_one();
                    return true;
                }
            }
            room.await;
        }
    }

    /// Waits until a frame is queued or the session is asked to close (maybe already so).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Takes up to `max` queued frames, oldest first; the queue's storage is released once it
    /// is empty.
    pub fn take(&self, max: usize) -> Vec<Out> {
        let mut queue = self.queue();
        let n = queue.items.len().min(max);
        let taken: Vec<Out> = queue.items.drain(..n).collect();
        let more = !queue.items.is_empty();
        if !more {
            queue.items = VecDeque::new();
        }
        drop(queue);
        if more {
            self.ready.notify_one();
        }
        if n > 0 {
            self.room.notify_waiters();
        }
        taken
    }

    /// Frames queued and not yet taken.
    pub fn len(&self) -> usize {
        self.queue().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queue holds no memory.
    pub fn is_idle(&self) -> bool {
        self.queue().items.capacity() == 0
    }

    /// The session has ended: what is queued is dropped, and nothing more goes in.
    pub fn end(&self) {
        let mut queue = self.queue();
        queue.ended = true;
        queue.items = VecDeque::new();
        drop(queue);
        self.dead.store(true, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// Asks the session to close for `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.dead.store(true, Ordering::Relaxed);
        self.closing.notify_waiters();
        self.ready.notify_one();
    }

    /// Returns once fan-out has asked the session to close.
    pub async fn closed(&self) {
        loop {
            let closing = self.closing.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            if self.reason.get().is_some() {
                return;
            }
            closing.await;
        }
    }

    /// Why fan-out closed the session, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason.get().cloned()
    }
}

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
    /// Registers a session for fan-out; events applied from now on reach it.
    pub fn register(&mut self, outbox: Arc<Outbox>) {
        self.presence.open(outbox.id, &outbox.user, Instant::now());
        self.by_user.entry(outbox.user.clone()).or_default().push(outbox.id);
        self.sessions.insert(outbox.id, outbox);
        self.forget_audiences();
    }

    fn forget_audiences(&mut self) {
        self.audiences.clear();
        self.audience_refs = 0;
    }

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

    /// Whether the feed no longer reaches this copy of the workspace (see
    /// [`Workspaces::get`]: get it again).
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// Connected sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn unregister(&mut self, id: u64) {
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

    /// Hands an ephemeral event (typing) of `channel` to its members' sessions, except `from`'s.
    /// It carries the cursor of the newest event applied: every durable event at or before it
    /// is already ahead of it in each outbox, so a client may resume from it.
    pub fn relay(&mut self, event: Event, from: Option<u64>, metrics: &Metrics) {
        if let Event::PresenceChange { user, presence } = event {
            // Handed to followers on the next presence tick, batched.
            self.presence.announce(user, presence);
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
    upstream: Arc<Upstream>,
    limits: CacheLimits,
    metrics: Arc<Metrics>,
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
        let mut inner = LiveInner {
            state: WorkspaceState::from_snapshot(snapshot, self.limits.clone()),
            sessions: HashMap::new(),
            by_user: HashMap::new(),
            audiences: HashMap::new(),
            audience_refs: 0,
            retired: false,
            typing: HashMap::new(),
            presence: PresenceState::new(self.presence_broadcast),
        };
        for item in &waiting {
            inner.apply(item, &self.metrics);
        }
        tracing::info!(ws.id = %id, cursor = %inner.state.cursor(), caught_up = waiting.len(), "workspace loaded");
        let live = Arc::new(Live { inner: Mutex::new(inner), weighed: AtomicU32::new(0) });
        registry.insert(id.clone(), Slot::Ready(live.clone()));
        live
    }

    /// Applies feed events in order.
    fn apply(&self, items: &[FeedItem]) {
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
    fn relay(&self, workspace: &WorkspaceId, event: Event) {
        if let Some(Slot::Ready(live)) = self.registry().get(workspace) {
            live.lock().relay(event, None, &self.metrics);
        }
    }

    /// Forgets every workspace (after the edge lost events): sessions are told to boot again.
    fn reset(&self) {
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
    async fn sweep(&self) {
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
    fn all_live(&self) -> Vec<(WorkspaceId, Arc<Live>)> {
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
    tokens: Arc<crate::auth::Tokens>,
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
