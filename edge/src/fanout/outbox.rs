//! A session's outbox: the bounded queue of frames fan-out hands it, and the slow-consumer rule
//! (ARCHITECTURE §7): an ephemeral event that does not fit is dropped, a durable one closes the
//! session, which resumes from its last cursor.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
};

use selvage_shared::{Cursor, Event, Format, UserId};
use tokio::sync::Notify;

use crate::{
    metrics::Metrics,
    wire::{event_wire, Wire},
};

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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{cur, outbox, queued};
    use super::*;

    fn event(n: u64) -> Arc<Encoded> {
        Arc::new(Encoded::new(cur(n), Event::TokenRevoked { token_hash: format!("t{n}") }))
    }

    #[test]
    fn frames_are_taken_oldest_first_and_an_empty_queue_holds_no_memory() {
        let metrics = Metrics::new();
        let outbox = outbox(1, "U1", 8);
        assert!(outbox.is_idle());
        for n in 1..=3 {
            assert!(outbox.push(event(n), false, &metrics));
        }
        let first: Vec<Cursor> = outbox
            .take(2)
            .into_iter()
            .map(|out| match out {
                Out::Event(e) => e.cursor.clone(),
                Out::Reply(_) => panic!("a reply"),
            })
            .collect();
        assert_eq!(first, [cur(1), cur(2)]);
        assert_eq!(outbox.len(), 1);
        assert_eq!(queued(&outbox), [cur(3)]);
        assert!(outbox.is_empty() && outbox.is_idle());
    }

    #[test]
    fn a_durable_event_that_does_not_fit_closes_the_session() {
        let metrics = Metrics::new();
        let outbox = outbox(1, "U1", 2);
        assert!(outbox.push(event(1), false, &metrics));
        assert!(outbox.push(event(2), false, &metrics));
        assert_eq!(outbox.close_reason(), None);
        assert!(!outbox.push(event(3), false, &metrics), "full: the session is closing");
        assert_eq!(outbox.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(metrics.queue_drops.with_label_values(&["connection_closed"]).get(), 1);
        // Once closing, nothing more goes in, even with room again.
        assert_eq!(queued(&outbox), [cur(1), cur(2)]);
        assert!(!outbox.push(event(4), false, &metrics));
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn an_ephemeral_event_that_does_not_fit_is_dropped() {
        let metrics = Metrics::new();
        let outbox = outbox(1, "U1", 1);
        assert!(outbox.push(event(1), false, &metrics));
        assert!(outbox.push(event(2), true, &metrics), "the session stays");
        assert_eq!(outbox.close_reason(), None);
        assert_eq!(metrics.queue_drops.with_label_values(&["ephemeral_dropped"]).get(), 1);
        assert_eq!(queued(&outbox), [cur(1)]);
    }

    #[tokio::test]
    async fn a_reply_waits_for_room_and_an_ended_outbox_takes_nothing() {
        let metrics = Metrics::new();
        let outbox = outbox(1, "U1", 1);
        assert!(outbox.push(event(1), false, &metrics));
        let reply = Wire::from_encoded(b"{}".to_vec(), Format::Json);
        let waiting = outbox.reply(reply.clone());
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending(), "no room yet");
        assert_eq!(outbox.take(1).len(), 1);
        assert!(waiting.await, "room was made");
        assert!(matches!(outbox.take(1).as_slice(), [Out::Reply(_)]));
        outbox.end();
        assert!(!outbox.push(event(2), false, &metrics));
        assert!(!outbox.reply(reply).await);
        assert!(outbox.is_empty());
    }
}
