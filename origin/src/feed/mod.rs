//! The feed: the deployment's event log, `(log, versionstamp)` (ARCHITECTURE §2).
//!
//! Every durable change appends one event per affected thing *in the transaction that makes the
//! change*, under a versionstamped key, so the log order is the commit order and no event exists
//! for a change that did not commit. A position in the log is 12 bytes: the commit's 10-byte
//! versionstamp and the event's 2-byte order within that commit; a [`Cursor`] wraps it.
//!
//! The read side serves `GET /v1/events` (and, later, edges): read after a cursor, wait for new
//! entries, and tell a reader whose cursor predates the trim point to `resync`. One
//! [`Feed::run_notifier`] task holds a single storage watch on the log tick and fans the wake-up
//! out to every waiter, so waiting readers cost no storage watches each.
//!
//! The services on the feed (ARCHITECTURE §8) follow it through [`consumer`], each with a
//! durable cursor that the trimmer keeps events for, up to the hold limits.
//!
//! Events that are never logged (typing, presence) reach the edges through the `relay` beside
//! it, on the same feed streams.

pub mod consumer;
pub mod relay;

use std::{sync::Arc, time::Duration};

use selvage_shared::{Cursor, Event, FeedEvent, WorkspaceId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    config::FeedConfig,
    metrics::Metrics,
    store::{keys, Committed, KvTxn, RangeRead, Result, Store},
    transact,
};

/// A position in the log: commit versionstamp (10 bytes) and order within the commit (2).
pub type Position = [u8; 12];

/// The position before every event.
pub const START: Position = [0; 12];

/// The cursor of a position.
pub fn cursor(pos: &Position) -> Cursor {
    Cursor::from_position(pos)
}

/// The position a committed event landed at.
pub fn position(committed: &Committed, order: u16) -> Position {
    let mut pos = [0u8; 12];
    pos[..10].copy_from_slice(&committed.versionstamp.0);
    pos[10..].copy_from_slice(&order.to_be_bytes());
    pos
}

/// Appends events to the log inside a transaction, numbering them in order.
#[derive(Default)]
pub struct Appender {
    next: u16,
}

impl Appender {
    /// Starts numbering at 0.
    pub fn new() -> Self {
        Appender { next: 0 }
    }

    /// Writes `event` to the log as part of `tx`; returns its order within the commit, which
    /// with the commit's versionstamp gives its position ([`position`]).
    pub fn append(&mut self, tx: &mut dyn KvTxn, workspace: &WorkspaceId, ts: i64, event: Event) -> Result<u16> {
        let record = FeedEvent { workspace: workspace.clone(), ts, event };
        self.put(tx, selvage_shared::to_msgpack(&record))
    }

    /// Writes a new message's event to the log, from the message's stored MessagePack record
    /// (`message`): the same bytes [`Appender::append`] would write for
    /// `Event::Message(message)`, without encoding the message a second time.
    pub fn append_message(
        &mut self,
        tx: &mut dyn KvTxn,
        workspace: &WorkspaceId,
        ts: i64,
        message: &[u8],
    ) -> Result<u16> {
        let record = message_event(workspace, ts, message)
            .ok_or_else(|| crate::store::StoreError::Engine("a message record is not a MessagePack map".into()))?;
        self.put(tx, record)
    }

    /// Writes an encoded [`FeedEvent`] under the next order of this commit.
    fn put(&mut self, tx: &mut dyn KvTxn, record: Vec<u8>) -> Result<u16> {
        let order = self.next;
        self.next = self.next.checked_add(1).ok_or(crate::store::StoreError::TransactionTooLarge(usize::MAX))?;
        let (key, offset) = keys::log_entry_placeholder(order);
        tx.set_versionstamped_key_owned(key, offset, record)?;
        Ok(order)
    }

    /// Bumps the log tick (which wakes readers) and the log size; call once before committing
    /// a transaction that appended anything.
    pub fn finish(&self, tx: &mut dyn KvTxn) -> Result<()> {
        if self.next > 0 {
            tx.atomic_add(&keys::meta(TICK), 1)?;
            tx.atomic_add(&keys::meta(COUNT), i64::from(self.next))?;
        }
        Ok(())
    }
}

/// `FeedEvent { workspace, ts, event: Event::Message(m) }` as MessagePack with named fields,
/// built around `m`'s own encoding (a map): the event is that map with `"type": "message"` in
/// front, as serde writes an internally tagged variant. `None` if `message` is not a map.
fn message_event(workspace: &WorkspaceId, ts: i64, message: &[u8]) -> Option<Vec<u8>> {
    let (&marker, rest) = message.split_first()?;
    let (fields, body) = match marker {
        0x80..=0x8f => (u32::from(marker & 0x0f), rest),
        0xde => (u32::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)), rest.get(2..)?),
        0xdf => (u32::from_be_bytes(rest.get(..4)?.try_into().ok()?), rest.get(4..)?),
        _ => return None,
    };
    let mut out = Vec::with_capacity(message.len() + workspace.as_str().len() + 48);
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_map_len(&mut out, 3);
    let _ = rmp::encode::write_str(&mut out, "workspace");
    let _ = rmp::encode::write_str(&mut out, workspace.as_str());
    let _ = rmp::encode::write_str(&mut out, "ts");
    let _ = rmp::encode::write_sint(&mut out, ts);
    let _ = rmp::encode::write_str(&mut out, "event");
    let _ = rmp::encode::write_map_len(&mut out, fields.checked_add(1)?);
    let _ = rmp::encode::write_str(&mut out, "type");
    let _ = rmp::encode::write_str(&mut out, "message");
    out.extend_from_slice(body);
    Some(out)
}

const TICK: &str = "log_tick";
const COUNT: &str = "log_count";
const TRIM_POINT: &str = "log_trim_point";
/// Set by a restore (`selvage admin restore`): the restored log's head and the first position
/// the restored store can give, 12 bytes each. Cursors strictly between them were handed out
/// by the store before the restore, after its backup was taken: the events they follow are
/// gone, so their readers must resync.
pub const RESTORED_GAP: &str = "log_restored_gap";

/// What a read of the log found.
#[derive(Debug)]
pub enum Read {
    /// Events after the cursor (possibly none) and the position to read after next time.
    Events { items: Vec<(Position, FeedEvent)>, next: Position },
    /// The cursor is older than the trim point, or from before a restore and past what its
    /// backup held: events were dropped, the reader must resync and go on after `trim_point`.
    Resync { trim_point: Position },
}

/// The read side of the log, shared by every request handler.
pub struct Feed {
    store: Store,
    config: FeedConfig,
    metrics: Arc<Metrics>,
    tick: watch::Sender<u64>,
    /// Consumers spawned here whose cursors [`consumer::register_spawned`] has yet to make
    /// sure of: name and where each starts.
    spawned: std::sync::Mutex<Vec<(String, consumer::StartFrom)>>,
}

impl Feed {
    /// A feed over `store`; start [`Feed::run_notifier`] and [`Feed::run_trimmer`] beside it.
    pub fn new(store: Store, config: FeedConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let (tick, _) = watch::channel(0);
        Arc::new(Feed { store, config, metrics, tick, spawned: Default::default() })
    }

    /// Reads up to `limit` events after `after`.
    pub async fn read_after(&self, after: &Position, limit: usize) -> Result<Read> {
        let (read, _) = transact!(self.store, |tx| {
            let trim = trim_point(tx).await?;
            let lost = restored_gap(tx).await?.filter(|(head, first)| after > head && after < first);
            if *after < trim {
                Read::Resync { trim_point: trim }
            } else if let Some((head, _)) = lost {
                // A cursor from before a restore, past what the backup held.
                Read::Resync { trim_point: head }
            } else {
                let mut begin = keys::log_entry(after);
                begin.push(0x00);
                let (_, end) = crate::store::prefix_range(&keys::log());
                let rows = tx.get_range(&RangeRead::between(begin, end).limit(limit)).await?;
                let mut items = Vec::with_capacity(rows.len());
                let mut next = *after;
                for (key, value) in rows {
                    let Some(pos) = keys::log_position(&key) else { continue };
                    next = pos;
                    match selvage_shared::from_msgpack::<FeedEvent>(&value) {
                        Ok(event) => items.push((pos, event)),
                        Err(e) => tracing::error!(error = %e, cursor = %cursor(&pos), "undecodable feed event skipped"),
                    }
                }
                Read::Events { items, next }
            }
        })?;
        Ok(read)
    }

    /// The position of the newest event (or the trim point, or [`START`] for an empty log):
    /// where a reader that wants only new events starts.
    pub async fn head(&self) -> Result<Position> {
        let (head, _) = transact!(self.store, |tx| {
            let last = tx.get_range(&RangeRead::prefix(&keys::log()).limit(1).reverse(true)).await?;
            match last.first().and_then(|(k, _)| keys::log_position(k)) {
                Some(pos) => pos,
                None => trim_point(tx).await?,
            }
        })?;
        Ok(head)
    }

    /// A receiver that changes whenever new events may be in the log.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    /// Holds one storage watch on the log tick and wakes [`Feed::subscribe`]rs on every change,
    /// until `shutdown`. A failed watch is retried after a pause; the 1 s re-arm bounds how late
    /// a wake-up can be even if a watch were ever missed.
    pub async fn run_notifier(self: Arc<Self>, shutdown: CancellationToken) {
        let key = keys::meta(TICK);
        let mut last = None;
        while !shutdown.is_cancelled() {
            let armed = async {
                let mut tx = self.store.begin().await?;
                let value = tx.get(&key).await?;
                let watch = tx.watch(&key)?;
                tx.commit().await?;
                Ok::<_, crate::store::StoreError>((value, watch))
            }
            .await;
            match armed {
                Ok((value, watch)) => {
                    let tick = value.as_deref().map(le_i64).unwrap_or(0) as u64;
                    if last != Some(tick) {
                        last = Some(tick);
                        self.tick.send_replace(tick);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::timeout(Duration::from_secs(1), watch) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "feed notifier cannot watch the log; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        }
    }

    /// Trims the log by age and size every `trim_interval_secs`, until `shutdown`.
    pub async fn run_trimmer(self: Arc<Self>, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.config.trim_interval_secs);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.trim(crate::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "feed trimmed"),
                Err(e) => tracing::warn!(error = %e, "feed trim failed; will retry"),
            }
        }
    }

    /// Removes events older than the retention or beyond the size limit, oldest first, in
    /// transactions of at most 1,000 events; returns how many went.
    ///
    /// Events after a registered consumer's cursor are kept while they are within the hold
    /// limits (`consumer_hold_secs`, `consumer_hold_events`); past those they go anyway and the
    /// consumer resyncs (ARCHITECTURE §8). Without consumers this is the plain trim.
    pub async fn trim(&self, now_ms: i64) -> Result<u64> {
        let limits = TrimLimits {
            oldest_kept_ms: now_ms.saturating_sub((self.config.retention_secs * 1000) as i64),
            oldest_held_ms: now_ms.saturating_sub((self.config.consumer_hold_secs * 1000) as i64),
            max_events: self.config.max_events as i64,
            max_held: self.config.consumer_hold_events as i64,
        };
        let mut total = 0u64;
        let mut trimmed_to = None;
        let mut consumers: Vec<(String, Position)>;
        loop {
            // The cursors are read apart from the trim, so that consumers moving them do not
            // make it conflict: a cursor only moves forward, so an old reading holds back more,
            // never less. A consumer registering in between moves the registration counter,
            // which the trim reads again.
            let ((epoch, cursors), _) = transact!(self.store, |tx| { consumer::registered(tx).await? })?;
            let hold = cursors.iter().map(|(_, pos)| *pos).min();
            let Some((dropped, last)) = self.trim_some(&limits, epoch, hold).await? else { continue };
            trimmed_to = last.or(trimmed_to);
            consumers = cursors;
            total += dropped;
            self.metrics.feed_trimmed.inc_by(dropped);
            if dropped < 1000 {
                break;
            }
        }
        if let Some(trim_point) = trimmed_to {
            for (name, at) in consumers.iter().filter(|(_, at)| *at < trim_point) {
                tracing::error!(
                    consumer = %name,
                    cursor = %cursor(at),
                    trim_point = %cursor(&trim_point),
                    "feed trimmed past a consumer's cursor: it lags beyond feed.consumer_hold_secs or \
                     feed.consumer_hold_events and will resync"
                );
            }
        }
        Ok(total)
    }

    /// Trims up to 1,000 of the oldest events in one transaction, keeping those after `hold`
    /// (the slowest consumer's cursor) within the hold limits; answers how many went and the
    /// new trim point, or `None` if a consumer registered since `epoch` was read.
    async fn trim_some(
        &self,
        limits: &TrimLimits,
        epoch: i64,
        hold: Option<Position>,
    ) -> Result<Option<(u64, Option<Position>)>> {
        let (dropped, _) = transact!(self.store, |tx| {
            if consumer::registrations(tx).await? != epoch {
                None
            } else {
                let count = tx.get(&keys::meta(COUNT)).await?.as_deref().map(le_i64).unwrap_or(0);
                let rows = tx.get_range(&RangeRead::prefix(&keys::log()).limit(1000)).await?;
                let mut over = count - limits.max_events;
                let mut over_held = count - limits.max_held;
                let mut last = None;
                let mut n = 0i64;
                for (key, value) in &rows {
                    let ts = selvage_shared::from_msgpack::<FeedEvent>(value).map(|e| e.ts).unwrap_or(i64::MIN);
                    let Some(pos) = keys::log_position(key) else { break };
                    let due = over > 0 || ts < limits.oldest_kept_ms;
                    let needed = hold.is_some_and(|h| pos > h);
                    let past_hold = over_held > 0 || ts < limits.oldest_held_ms;
                    if !due || (needed && !past_hold) {
                        break;
                    }
                    over -= 1;
                    over_held -= 1;
                    n += 1;
                    last = Some((pos, key.clone()));
                }
                if let Some((pos, key)) = &last {
                    let (begin, _) = crate::store::prefix_range(&keys::log());
                    let mut end = key.clone();
                    end.push(0x00);
                    tx.clear_range(&begin, &end)?;
                    tx.set(&keys::meta(TRIM_POINT), pos)?;
                    tx.atomic_add(&keys::meta(COUNT), -n)?;
                }
                Some((n as u64, last.map(|(pos, _)| pos)))
            }
        })?;
        Ok(dropped)
    }
}

/// What one trim keeps: events newer than `oldest_kept_ms` and the newest `max_events`, and
/// for consumers, up to `oldest_held_ms` and `max_held`.
struct TrimLimits {
    oldest_kept_ms: i64,
    oldest_held_ms: i64,
    max_events: i64,
    max_held: i64,
}

/// The position of the newest trimmed event ([`START`] if nothing was ever trimmed).
async fn trim_point(tx: &mut dyn KvTxn) -> Result<Position> {
    Ok(tx.get(&keys::meta(TRIM_POINT)).await?.and_then(|v| v.as_slice().try_into().ok()).unwrap_or(START))
}

/// The gap a restore left in the log's positions ([`RESTORED_GAP`]), if one did.
async fn restored_gap(tx: &mut dyn KvTxn) -> Result<Option<(Position, Position)>> {
    let raw = tx.get(&keys::meta(RESTORED_GAP)).await?;
    Ok(raw.filter(|v| v.len() == 24).map(|v| {
        let (head, first) = v.split_at(12);
        (head.try_into().unwrap_or(START), first.try_into().unwrap_or(START))
    }))
}

/// A little-endian integer as atomic adds keep them (shorter values are zero-extended).
pub fn le_i64(v: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    i64::from_le_bytes(b)
}

/// The position of a cursor a client sent, or `None` if it is not one of ours.
pub fn parse_cursor(s: &str) -> Option<Position> {
    Cursor::parse(s)?.position()
}

#[cfg(test)]
mod tests {
    use selvage_shared::{ChannelId, Message, UserId};

    use super::*;
    use crate::metrics::Metrics;

    fn uid(s: &str) -> UserId {
        UserId::new_unchecked(s)
    }

    #[test]
    fn a_message_event_built_around_the_record_is_the_event_serde_writes() {
        let w = WorkspaceId::new_unchecked("W1");
        let plain = Message::new(ChannelId::new_unchecked("C1"), 7, 1_700_000_000_000, uid("U1"), "hi");
        let mut busy = Message {
            client_msg_id: "c-1".into(),
            thread_root: Some(3),
            mentions: vec![uid("U2"), uid("U3")],
            mentions_channel: true,
            thread_followers: (0..40).map(|i| uid(&format!("U{i}"))).collect(),
            ..Message::new(ChannelId::new_unchecked("C2"), 70_000, 1, uid("U9"), "é".repeat(5000))
        };
        busy.apply_reaction(&uid("U2"), "tada", true);
        busy.reply_count = 2;
        busy.latest_reply = Some(9);
        busy.latest_reply_seq = Some(9);
        busy.reply_users = vec![uid("U4")];
        busy.mentions_here = true;
        busy.mentions_here_users = vec![uid("U5")];
        busy.edited_at = Some(2);
        assert_eq!(selvage_shared::to_msgpack(&busy)[0], 0xde, "more than 15 fields: a map16 header");
        for (m, ts) in [
            (plain, 0i64),
            (busy, -5),
            (Message::new(ChannelId::new_unchecked("C3"), 1, i64::MAX, uid("U1"), ""), i64::MIN),
        ] {
            let record = selvage_shared::to_msgpack(&m);
            let expected =
                selvage_shared::to_msgpack(&FeedEvent { workspace: w.clone(), ts, event: Event::Message(m) });
            assert_eq!(message_event(&w, ts, &record), Some(expected));
        }
        assert_eq!(message_event(&w, 0, &[0x93, 1, 2, 3]), None, "an array is not a message");
        assert_eq!(message_event(&w, 0, &[]), None);
    }

    /// A feed over a fresh embedded store holding `n` events, all older than any retention.
    async fn feed_of(dir: &std::path::Path, n: u16) -> Arc<Feed> {
        let opts = crate::store::embedded::EmbeddedOptions { fsync: false, ..Default::default() };
        let store: Store = crate::store::embedded::EmbeddedStore::open(&dir.join("feed.redb"), opts).unwrap();
        let w = WorkspaceId::new_unchecked("W1");
        transact!(store, |tx| {
            let mut appender = Appender::new();
            for i in 0..n {
                appender.append(
                    tx,
                    &w,
                    0,
                    Event::MessageDeleted { channel: ChannelId::new_unchecked("C1"), seq: u64::from(i) },
                )?;
            }
            appender.finish(tx)?;
        })
        .unwrap();
        Feed::new(store, FeedConfig::default(), Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn a_trim_that_read_the_cursors_before_a_registration_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let feed = feed_of(dir.path(), 10).await;
        let limits = TrimLimits { oldest_kept_ms: 1, oldest_held_ms: 1, max_events: 100, max_held: 100 };
        let ((epoch, cursors), _) = transact!(feed.store, |tx| { consumer::registered(tx).await? }).unwrap();
        assert!(cursors.is_empty());
        // A consumer registers at the start of the log between the trim's two transactions.
        transact!(feed.store, |tx| {
            tx.set(&keys::consumer_cursor("late"), &START)?;
            tx.atomic_add(&keys::consumer_registrations(), 1)?;
        })
        .unwrap();
        assert!(feed.trim_some(&limits, epoch, None).await.unwrap().is_none(), "the stale reading trimmed");
        // Read again, the hold keeps everything while within the hold limits, and the whole
        // trim goes past it only beyond them.
        let ((epoch, cursors), _) = transact!(feed.store, |tx| { consumer::registered(tx).await? }).unwrap();
        assert_eq!(cursors, vec![("late".to_string(), START)]);
        let held = TrimLimits { oldest_held_ms: 0, ..limits };
        assert_eq!(feed.trim_some(&held, epoch, Some(START)).await.unwrap(), Some((0, None)));
        // Events from 1970 are past every hold.
        assert_eq!(feed.trim(crate::now_ms()).await.unwrap(), 10);
    }

    #[tokio::test]
    async fn cursors_from_past_a_restored_backup_resync_to_its_head_and_others_read_on() {
        let dir = tempfile::tempdir().unwrap();
        let feed = feed_of(dir.path(), 4).await;
        let Read::Events { items, .. } = feed.read_after(&START, 10).await.unwrap() else { panic!("events") };
        let positions: Vec<Position> = items.iter().map(|(p, _)| *p).collect();
        let head = positions[3];
        // As a restore leaves it: the backup ended at the fourth event, and the store now gives
        // positions from far past what the store before the restore handed out.
        let mut handed_out = head;
        handed_out[7] = handed_out[7].wrapping_add(9);
        let mut first = head;
        first[0] = first[0].wrapping_add(1);
        transact!(feed.store, |tx| {
            tx.set(&keys::meta(RESTORED_GAP), &[head, first].concat())?;
        })
        .unwrap();
        match feed.read_after(&handed_out, 10).await.unwrap() {
            Read::Resync { trim_point } => assert_eq!(trim_point, head, "resync goes on after the restored head"),
            other => panic!("a cursor from past the backup must resync, got {other:?}"),
        }
        let Read::Events { items, .. } = feed.read_after(&positions[1], 10).await.unwrap() else {
            panic!("a cursor inside the backup reads on")
        };
        assert_eq!(items.iter().map(|(p, _)| *p).collect::<Vec<_>>(), positions[2..]);
        let Read::Events { items, .. } = feed.read_after(&head, 10).await.unwrap() else {
            panic!("the restored head reads on")
        };
        assert!(items.is_empty());
        let Read::Events { .. } = feed.read_after(&first, 10).await.unwrap() else {
            panic!("a cursor the restored store gave reads on")
        };
    }
}
