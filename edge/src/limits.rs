//! What one client may take of an edge, whatever its token: connection slots per user
//! ([`UserSlots`]), a share of the memory held by client frames still arriving
//! ([`FrameBudget`]), the origin calls its frames start without waiting for them
//! ([`OneWayCalls`]), and its token's rate of requests ([`FrameRates`]).
//!
//! Both are edge-wide and fixed at start (`sessions.max_connections_per_user`,
//! `sessions.frame_budget_bytes`), so that one token — or many connections of anyone — cannot
//! grow an edge's memory past what its operator planned for.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll},
    time::Duration,
};

use prometheus::{IntCounterVec, IntGauge};
use selvage_shared::{UserId, WorkspaceId};
use tokio::{
    sync::{AcquireError, OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};

use crate::{error::close, metrics::Metrics};

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

/// A client frame up to this size (with the message it continues) is received without asking
/// the [`FrameBudget`]: every connection may hold that much. Nearly every frame is smaller.
pub const FREE_FRAME_BYTES: usize = 8 * 1024;

/// How long a frame over [`FREE_FRAME_BYTES`] may take, from its header to its last byte —
/// waiting for the budget included. A client that takes longer is closed: a half-sent frame
/// must not hold its share of the budget for as long as its sender likes.
pub const FRAME_PATIENCE: Duration = Duration::from_secs(30);

/// The memory every connection's frames still arriving may hold together, beyond
/// [`FREE_FRAME_BYTES`] each: a semaphore of bytes (`sessions.frame_budget_bytes`).
///
/// A connection receiving a larger frame takes the frame's whole size from the budget before
/// it makes room for it, and gives it back once its session has handled the frame. When the
/// budget is spent, the connection stops reading (its client is held back by flow control)
/// until there is room; after [`FRAME_PATIENCE`] it is closed with 1013 ("try again later"),
/// and one whose frame does not arrive in that time with 1008.
pub struct FrameBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    /// Bytes granted to connections. Not the semaphore's count: that also drops by what a
    /// connection still waiting has been set aside so far.
    granted: AtomicUsize,
    held: IntGauge,
    refused: IntCounterVec,
}

/// Why a connection's frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameRefusal {
    /// The budget had no room for it within [`FRAME_PATIENCE`].
    Busy,
    /// It was granted room but did not arrive within [`FRAME_PATIENCE`].
    TooSlow,
}

impl FrameRefusal {
    /// The close code (WebSocket; QUIC application error code) and reason the client gets.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            FrameRefusal::Busy => {
                (close::TRY_AGAIN_LATER, "edge busy: too many large frames arriving; try again later")
            }
            FrameRefusal::TooSlow => (close::POLICY, "frame not received in time"),
        }
    }
}

/// Bytes being taken from the budget.
type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// What one connection holds of the [`FrameBudget`] for the frame it is receiving; given back
/// when dropped. Made when a frame needs the budget, so that a connection between frames
/// holds none of it.
pub struct FrameShare {
    budget: Arc<FrameBudget>,
    granted: Option<OwnedSemaphorePermit>,
    /// The budget asked for the rest of what the frame needs.
    waiting: Option<Acquiring>,
    deadline: Pin<Box<Sleep>>,
}

impl FrameBudget {
    /// A budget of `total` bytes, reported in `metrics`.
    pub fn new(total: usize, metrics: &Metrics) -> Arc<FrameBudget> {
        Arc::new(FrameBudget {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
            granted: AtomicUsize::new(0),
            held: metrics.frame_bytes_held.clone(),
            refused: metrics.connections_refused.clone(),
        })
    }

    /// Bytes held now by frames still arriving (or not yet handled by their sessions).
    pub fn held(&self) -> usize {
        self.granted.load(Ordering::Relaxed)
    }

    fn count(&self, bytes: usize, granted: bool) {
        if granted {
            self.granted.fetch_add(bytes, Ordering::Relaxed);
            self.held.add(bytes as i64);
        } else {
            self.granted.fetch_sub(bytes, Ordering::Relaxed);
            self.held.sub(bytes as i64);
        }
    }

    /// Makes sure `share` covers `wants` bytes (a frame's whole size), starting the share and
    /// its deadline if need be. Ready once it does; an error when the frame took too long.
    pub fn poll_cover(
        self: &Arc<Self>,
        share: &mut Option<Box<FrameShare>>,
        wants: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), FrameRefusal>> {
        let share = share.get_or_insert_with(|| {
            Box::new(FrameShare {
                budget: self.clone(),
                granted: None,
                waiting: None,
                deadline: Box::pin(tokio::time::sleep(FRAME_PATIENCE)),
            })
        });
        loop {
            let granted = share.granted();
            if granted >= wants {
                // Still on the clock: a frame granted room must arrive in time.
                if share.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(self.refuse(FrameRefusal::TooSlow)));
                }
                return Poll::Ready(Ok(()));
            }
            let more = wants - granted;
            if more > self.total || u32::try_from(more).is_err() {
                return Poll::Ready(Err(self.refuse(FrameRefusal::Busy)));
            }
            let waiting = share.waiting.get_or_insert_with(|| {
                // `more` fits in u32: checked just above.
                Box::pin(self.bytes.clone().acquire_many_owned(more as u32))
            });
            match waiting.as_mut().poll(cx) {
                Poll::Ready(Ok(permit)) => {
                    share.waiting = None;
                    self.count(permit.num_permits(), true);
                    match share.granted.as_mut() {
                        Some(granted) => granted.merge(permit),
                        None => share.granted = Some(permit),
                    }
                }
                // The semaphore is never closed.
                Poll::Ready(Err(_)) => return Poll::Ready(Err(self.refuse(FrameRefusal::Busy))),
                Poll::Pending => {
                    if share.deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(self.refuse(FrameRefusal::Busy)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// [`FrameBudget::poll_cover`] as a future, for a share of its own.
    pub async fn cover(self: &Arc<Self>, wants: usize) -> Result<Box<FrameShare>, FrameRefusal> {
        let mut share = None;
        std::future::poll_fn(|cx| self.poll_cover(&mut share, wants, cx)).await?;
        // poll_cover made the share before it could be ready.
        share.ok_or(FrameRefusal::Busy)
    }

    /// Counts a refusal (by the transport, or here) and returns it.
    pub fn refuse(&self, refusal: FrameRefusal) -> FrameRefusal {
        let reason = match refusal {
            FrameRefusal::Busy => "frame_budget",
            FrameRefusal::TooSlow => "frame_too_slow",
        };
        self.refused.with_label_values(&[reason]).inc();
        refusal
    }
}

impl FrameShare {
    /// Bytes granted so far.
    pub fn granted(&self) -> usize {
        self.granted.as_ref().map_or(0, |p| p.num_permits())
    }

    /// When the frame must have arrived.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline.deadline()
    }
}

impl Drop for FrameShare {
    fn drop(&mut self) {
        self.budget.count(self.granted(), false);
    }
}

/// Origin calls that frames start and nobody waits for — a `typing` relayed to other edges, a
/// `set_presence` — run as tasks of their own, at most [`ONE_WAY_IN_FLIGHT`] at once on an
/// edge, so that a flood of such frames cannot make a task each.
///
/// The two kinds meet a full edge differently. A `typing` relay is dropped (and counted): it
/// is ephemeral, already thinned to one per user and channel every 3 s, repeated by the
/// client while its user types, and this edge's own sessions have had it; waiting would only
/// deliver a stale signal late. A `set_presence` changes what others see until the next one,
/// so it is never dropped: its session waits for a slot, reading nothing more from its client
/// meanwhile, the same backpressure as requests over `sessions.max_in_flight`.
pub struct OneWayCalls {
    max: usize,
    slots: Arc<Semaphore>,
    in_flight: IntGauge,
    dropped: IntCounterVec,
}

/// Origin calls started by client frames and running at once, edge-wide (see [`OneWayCalls`]).
pub const ONE_WAY_IN_FLIGHT: usize = 256;

impl OneWayCalls {
    /// At most `max` calls at once, reported in `metrics`.
    pub fn new(max: usize, metrics: &Metrics) -> OneWayCalls {
        OneWayCalls {
            max,
            slots: Arc::new(Semaphore::new(max)),
            in_flight: metrics.one_way_in_flight.clone(),
            dropped: metrics.one_way_dropped.clone(),
        }
    }

    /// Runs `call` if a slot is free now; otherwise drops it, counted under `kind`.
    pub fn run_or_drop<F>(&self, kind: &str, call: F)
    where
        F: Future + Send + 'static,
    {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => self.spawn(slot, call),
            Err(_) => self.dropped.with_label_values(&[kind]).inc(),
        }
    }

    /// Runs `call` once a slot is free, waiting for one.
    pub async fn run<F>(&self, call: F)
    where
        F: Future + Send + 'static,
    {
        // The semaphore is never closed.
        if let Ok(slot) = self.slots.clone().acquire_owned().await {
            self.spawn(slot, call);
        }
    }

    fn spawn<F>(&self, slot: OwnedSemaphorePermit, call: F)
    where
        F: Future + Send + 'static,
    {
        let in_flight = self.in_flight.clone();
        in_flight.inc();
        tokio::spawn(async move {
            call.await;
            in_flight.dec();
            drop(slot);
        });
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }
}

/// Rate limits per token on client frames (`[rate_limits]`): a token bucket per token for
/// queries (`read`) and one for writes, shared by every session of the token on this edge.
pub struct FrameRates {
    config: crate::config::RateLimitsConfig,
    read: selvage_shared::rate::Bucket<String>,
    write: selvage_shared::rate::Bucket<String>,
}

impl FrameRates {
    /// Buckets as `config` sets them.
    pub fn new(config: &crate::config::RateLimitsConfig) -> Arc<FrameRates> {
        use selvage_shared::rate::Bucket;
        Arc::new(FrameRates {
            config: config.clone(),
            read: Bucket::new(config.read),
            write: Bucket::new(config.write),
        })
    }

    /// Takes one frame of `class` (`read` or `write`) from the bucket of the token whose hash
    /// is `token_hash`; when it is empty, answers why and how long to wait.
    pub fn check(&self, class: &'static str, token_hash: &String, metrics: &Metrics) -> Result<(), (String, Duration)> {
        if !self.config.enabled {
            return Ok(());
        }
        let (bucket, rate) = match class {
            "read" => (&self.read, self.config.read),
            _ => (&self.write, self.config.write),
        };
        bucket.check(token_hash).map_err(|wait| {
            metrics.rate_limited.with_label_values(&[class]).inc();
            let message = format!(
                "over this token's {class} rate of {} frames a second (bursts of {}); retry in {} ms",
                rate.per_second,
                rate.burst,
                wait.as_millis().max(1)
            );
            (message, wait)
        })
    }

    /// Drops the buckets of tokens idle long enough to be full again.
    pub fn sweep(&self) {
        self.read.sweep();
        self.write.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_s_slots_are_given_back_when_dropped() {
        let slots = UserSlots::new(2);
        let (ws, alice, bob) =
            (WorkspaceId::new_unchecked("W1"), UserId::new_unchecked("U1"), UserId::new_unchecked("U2"));
        let first = slots.take(&ws, &alice).unwrap();
        let _second = slots.take(&ws, &alice).unwrap();
        assert!(slots.take(&ws, &alice).is_none(), "the third is refused");
        assert!(slots.take(&ws, &bob).is_some(), "another user's count is their own");
        drop(first);
        assert_eq!(slots.count(&ws, &alice), 1);
        assert!(slots.take(&ws, &alice).is_some());
    }

    /// On the paused clock: a frame with no room waits, gets room when another frame gives its
    /// share back, and is refused when none comes within the patience; a frame with room that
    /// does not arrive in time is refused too.
    #[tokio::test(start_paused = true)]
    async fn frames_wait_for_room_and_not_forever() {
        let metrics = Metrics::new();
        let budget = FrameBudget::new(1 << 20, &metrics);
        let first = budget.cover(800 << 10).await.unwrap();
        assert_eq!((budget.held(), metrics.frame_bytes_held.get()), (800 << 10, 800 << 10));
        let started = tokio::time::Instant::now();
        assert_eq!(budget.cover(400 << 10).await.err(), Some(FrameRefusal::Busy));
        assert_eq!(started.elapsed(), FRAME_PATIENCE, "it waited the patience out");
        assert_eq!(budget.held(), 800 << 10, "a refused frame holds nothing");
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.cover(400 << 10).await.map(|share| share.granted()) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(400 << 10));
        assert_eq!(budget.held(), 0, "dropped with its task's future");
        let share = budget.cover(300 << 10).await.unwrap();
        tokio::time::sleep_until(share.deadline()).await;
        let mut share = Some(share);
        let late = std::future::poll_fn(|cx| budget.poll_cover(&mut share, 300 << 10, cx)).await;
        assert_eq!(late, Err(FrameRefusal::TooSlow));
        drop(share);
        assert_eq!((budget.held(), metrics.frame_bytes_held.get()), (0, 0));
        let refused = |reason: &str| metrics.connections_refused.with_label_values(&[reason]).get();
        assert_eq!((refused("frame_budget"), refused("frame_too_slow")), (1, 1));
    }
}
