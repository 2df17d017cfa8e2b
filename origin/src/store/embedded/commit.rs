//! The commit thread: group commit, the conflict check, the write-ahead log and publishing.
//!
//! One dedicated thread (not a tokio worker: it blocks on fsync) takes every pending commit
//! request, checks each for conflicts in arrival order against the retained write sets
//! (module `conflicts`), resolves the accepted ones (atomic adds against the newest committed
//! value, versionstamps filled in) and appends them as one record to the write-ahead log.
//! While a helper thread ([`Syncer`]) syncs the record, the commit thread adds the group to the
//! memtable, where no reader sees it yet; once the sync is done it makes the group visible by
//! advancing the last committed version, and only then answers: acknowledged means in the log
//! and synced (docs/STORAGE.md, "Invariants"). A group the log refuses is taken out of the
//! memtable again and never acknowledged.

use std::{
    sync::{atomic::Ordering, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use super::{
    conflicts::{range_set_contains, KeyList, RangeSet, WriteSet},
    engine_err,
    flush::BACKPRESSURE_FACTOR,
    health::{refusal, SpaceCheck, Writer},
    lock,
    memtable::{self, View},
    txn::{add_le, Op},
    wal::{self, Mutation, RecordBuilder},
    Shared,
};
use crate::store::{Committed, Result, StoreError, Versionstamp};

/// Commit requests waiting for the commit thread; senders wait when it is full.
pub(super) const COMMIT_QUEUE: usize = 1024;
/// A commit group stops taking requests past this many bytes of transactions (one more may
/// take it over), which bounds a log record.
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;
/// With `fsync` off, how often the commit thread syncs the log anyway.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often a commit thread waiting for the flusher looks again.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(100);

/// A transaction handed to the commit thread.
pub(super) struct CommitRequest {
    pub(super) read_version: u64,
    pub(super) reads: RangeSet,
    /// Keys read one by one, sorted and unique.
    pub(super) read_keys: KeyList,
    pub(super) cleared: RangeSet,
    /// Sorted by key.
    pub(super) ops: Vec<(Vec<u8>, Op)>,
    pub(super) versionstamped: Vec<VersionstampedSet>,
    pub(super) watches: Vec<(Vec<u8>, oneshot::Sender<()>)>,
    /// Bytes of mutations and conflict ranges, for sizing groups.
    pub(super) size: usize,
    pub(super) reply: oneshot::Sender<Result<Committed>>,
}

/// A `set_versionstamped_key` waiting for its commit's versionstamp.
pub(super) struct VersionstampedSet {
    pub(super) key: Vec<u8>,
    pub(super) offset: usize,
    pub(super) value: Vec<u8>,
}

/// Merges `a` and `b`, each sorted by `key` without repeats, into one such list; where both
/// hold a key, `b`'s item is kept.
fn merge_sorted<T>(
    a: impl IntoIterator<Item = T>,
    b: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> &[u8],
) -> Vec<T> {
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    let mut out = Vec::with_capacity(a.size_hint().0 + b.size_hint().0);
    loop {
        let order = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => key(x).cmp(key(y)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return out,
        };
        if order.is_eq() {
            a.next();
        }
        out.extend(if order.is_lt() { a.next() } else { b.next() });
    }
}

/// The sorted, unique keys a transaction writes: its point ops (sorted) and its versionstamped
/// keys, which a transaction almost always appends in order (the feed's events of one commit
/// differ only in the order after the versionstamp), so the two lists are merged, not sorted.
fn write_keys(ops: &[(Vec<u8>, Op)], stamped: &[(Vec<u8>, Vec<u8>)]) -> KeyList {
    if !stamped.is_sorted_by(|(a, _), (b, _)| a < b) {
        let mut keys: Vec<&[u8]> =
            ops.iter().map(|(k, _)| k.as_slice()).chain(stamped.iter().map(|(k, _)| k.as_slice())).collect();
        keys.sort_unstable();
        keys.dedup();
        return KeyList::from_sorted(keys);
    }
    let keys = merge_sorted(ops.iter().map(|(k, _)| k.as_slice()), stamped.iter().map(|(k, _)| k.as_slice()), |k| k);
    KeyList::from_sorted(keys)
}

/// A transaction's point writes (sorted, unique) and its versionstamped keys as one sorted list
/// without repeats, a versionstamped key winning over a point write of the same key (it is
/// applied after them, as it is logged).
fn with_stamped(
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    mut stamped: Vec<(Vec<u8>, Vec<u8>)>,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    if stamped.is_empty() {
        return writes;
    }
    if !stamped.is_sorted_by(|(a, _), (b, _)| a < b) {
        // Stable, so that of two equal keys the later one is kept.
        stamped.sort_by(|(a, _), (b, _)| a.cmp(b));
        stamped.reverse();
        stamped.dedup_by(|(a, _), (b, _)| a == b);
        stamped.reverse();
    }
    merge_sorted(writes, stamped.into_iter().map(|(k, v)| (k, Some(v))), |(k, _)| k.as_slice())
}

/// A request that passed the conflict check, with its place in the group and its mutations
/// as they are logged and applied: cleared ranges, then point writes, then versionstamped keys.
struct Accepted {
    reply: oneshot::Sender<Result<Committed>>,
    watches: Vec<(Vec<u8>, oneshot::Sender<()>)>,
    read_version: u64,
    version: u64,
    cleared: RangeSet,
    /// Buffered point mutations, sorted by key, until [`Accepted::resolve`] turns them into
    /// `writes`.
    ops: Vec<(Vec<u8>, Op)>,
    /// Point writes (`None`: clear) with atomic adds summed, sorted by key.
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Versionstamped keys with the versionstamp filled in, and their values.
    stamped: Vec<(Vec<u8>, Vec<u8>)>,
    write_set: WriteSet,
}

impl Accepted {
    fn new(req: CommitRequest, version: u64) -> Self {
        let stamp = Versionstamp::new(version, 0);
        let stamped: Vec<(Vec<u8>, Vec<u8>)> = req
            .versionstamped
            .into_iter()
            .map(|set| {
                let mut key = set.key;
                // The offset was checked against the key length when the mutation was buffered.
                key[set.offset..set.offset + 10].copy_from_slice(&stamp.0);
                (key, set.value)
            })
            .collect();
        let keys = write_keys(&req.ops, &stamped);
        let write_set = WriteSet { version, at: Instant::now(), keys, ranges: req.cleared.clone() };
        Accepted {
            reply: req.reply,
            watches: req.watches,
            read_version: req.read_version,
            version,
            cleared: req.cleared,
            ops: req.ops,
            writes: Vec::new(),
            stamped,
            write_set,
        }
    }

    fn has_adds(&self) -> bool {
        self.ops.iter().any(|(_, op)| matches!(op, Op::Add(_)))
    }

    /// What this (resolved) transaction leaves at `key`: `Some(None)` if it removed it, `None`
    /// if it did not touch it.
    fn leaves(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        if let Some((_, v)) = self.stamped.iter().rev().find(|(k, _)| k.as_slice() == key) {
            return Some(Some(v));
        }
        if let Ok(i) = self.writes.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
            return Some(self.writes[i].1.as_deref());
        }
        range_set_contains(&self.cleared, key).then_some(None)
    }

    /// Turns the buffered ops into writes, summing atomic adds against what the earlier
    /// transactions of the group leave (`earlier`, resolved) or else the newest committed
    /// value (`committed`).
    fn resolve(
        &mut self,
        earlier: &[Accepted],
        committed: &mut impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
    ) -> Result<()> {
        let ops = std::mem::take(&mut self.ops);
        let mut writes = Vec::with_capacity(ops.len());
        for (key, op) in ops {
            let value = match op {
                Op::Set(v) => Some(v),
                Op::Clear => None,
                // An add never sits under a range its own transaction cleared: clearing drops
                // the buffered add, and an add after the clear is buffered as a set.
                Op::Add(delta) => Some(match earlier.iter().rev().find_map(|a| a.leaves(&key)) {
                    Some(base) => add_le(base, delta),
                    None => add_le(committed(&key)?.as_deref(), delta),
                }),
            };
            writes.push((key, value));
        }
        self.writes = writes;
        Ok(())
    }

    /// Appends this transaction to a log record.
    fn encode(&self, record: &mut RecordBuilder<'_>) {
        record.txn(self.version);
        for (b, e) in &self.cleared {
            record.clear_range(b, e);
        }
        for (key, value) in &self.writes {
            match value {
                Some(v) => record.set(key, v),
                None => record.clear(key),
            }
        }
        for (key, value) in &self.stamped {
            record.set(key, value);
        }
    }

    /// Moves this transaction's mutations into the memtable, in the order they were logged.
    fn publish(&mut self, mem: &mut memtable::MemWrite<'_>) {
        let version = self.version;
        for (b, e) in std::mem::take(&mut self.cleared) {
            mem.apply(version, Mutation::ClearRange(b, e));
        }
        let writes = std::mem::take(&mut self.writes);
        let stamped = std::mem::take(&mut self.stamped);
        mem.apply_sorted(version, with_stamped(writes, stamped));
        mem.note_version(version);
    }
}

/// The commit thread's state.
pub(super) struct CommitWorker {
    pub(super) shared: Arc<Shared>,
    /// The last commit version.
    pub(super) version: u64,
    /// The log record being built, reused between groups.
    pub(super) record: Vec<u8>,
    /// Set when the log could not be written: the log's tail is then unknown, so nothing
    /// more may be appended to it (reopening the store recovers).
    pub(super) failed: Option<String>,
    pub(super) space: SpaceCheck,
    pub(super) syncer: Syncer,
}

/// A thread that syncs the log, so that the commit thread fills the memtable meanwhile.
pub(super) struct Syncer {
    /// `None` only once the commit thread is done.
    requests: Option<std::sync::mpsc::Sender<()>>,
    results: std::sync::mpsc::Receiver<std::io::Result<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Syncer {
    pub(super) fn start(shared: Arc<Shared>) -> std::io::Result<Self> {
        let (requests, inbox) = std::sync::mpsc::channel::<()>();
        let (outbox, results) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new().name("selvage-wal-sync".into()).spawn(move || {
            while inbox.recv().is_ok() {
                if outbox.send(shared.wal.sync()).is_err() {
                    break;
                }
            }
        })?;
        Ok(Syncer { requests: Some(requests), results, handle: Some(handle) })
    }

    /// Starts syncing what was appended.
    fn begin(&self) -> bool {
        self.requests.as_ref().is_some_and(|r| r.send(()).is_ok())
    }

    /// Waits for the sync [`Syncer::begin`] started.
    fn finish(&self) -> std::io::Result<()> {
        self.results.recv().map_err(|_| std::io::Error::other("the log sync thread stopped"))?
    }

    fn stop(&mut self) {
        drop(self.requests.take());
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("embedded store log sync thread panicked");
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl CommitWorker {
    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<CommitRequest>) {
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.size;
            let mut group = vec![first];
            while bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(req) => {
                        bytes += req.size;
                        group.push(req);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        self.syncer.stop();
        if let Err(e) = self.shared.wal.sync() {
            tracing::error!(error = %e, "cannot sync the write-ahead log at shutdown");
        }
        tracing::debug!(version = self.version, "embedded store commit thread stopped");
    }

    fn commit_group(&mut self, group: Vec<CommitRequest>) {
        let shared = self.shared.clone();
        let opts = &shared.opts;
        if let Some(e) = self.failed.clone().or_else(|| self.wait_for_room().err()) {
            for req in group {
                let _ = req.reply.send(Err(StoreError::Engine(e.clone())));
            }
            return;
        }
        if let Err(why) = self.space.check(&self.shared) {
            for req in group {
                let _ = req.reply.send(Err(StoreError::NoSpace(why.into())));
            }
            return;
        }
        let mut accepted: Vec<Accepted> = Vec::with_capacity(group.len());
        {
            let tracker = shared.tracker();
            for req in group {
                if req.read_version < tracker.complete_after {
                    shared.too_old.fetch_add(1, Ordering::Relaxed);
                    let _ = req.reply.send(Err(StoreError::TooOld));
                    continue;
                }
                let conflicted = tracker
                    .newer_than(req.read_version)
                    .chain(accepted.iter().map(|a| &a.write_set))
                    .any(|w| w.intersects(&req.reads) || w.intersects_keys(&req.read_keys));
                if conflicted {
                    shared.conflicts.fetch_add(1, Ordering::Relaxed);
                    let _ = req.reply.send(Err(StoreError::Conflict));
                    continue;
                }
                let version = self.version + accepted.len() as u64 + 1;
                accepted.push(Accepted::new(req, version));
            }
        }
        if accepted.is_empty() {
            return;
        }
        if let Err(e) = self.resolve_adds(&mut accepted) {
            tracing::error!(error = %e, "cannot resolve atomic adds");
            for a in accepted {
                let _ = a.reply.send(Err(e.clone()));
            }
            return;
        }
        let started = Instant::now();
        let first = self.version + 1;
        let new_version = self.version + accepted.len() as u64;
        let mut record = RecordBuilder::new(&mut self.record);
        for a in &accepted {
            a.encode(&mut record);
        }
        record.finish();
        let sync = opts.fsync || shared.wal.last_sync().elapsed() >= CHECKPOINT_INTERVAL;
        let appended = shared.wal.append(&mut self.record, first, new_version);
        let gate = lock(&shared.publish_gate);
        let logged = appended.and_then(|appended| {
            // The memtable is filled while the log syncs: the group stays invisible to readers
            // (whose views end at `last_version`) and to freezes (the gate) until it is durable.
            let syncing = sync && self.syncer.begin();
            {
                let mut mem = shared.mem.write();
                for a in &mut accepted {
                    a.publish(&mut mem);
                }
            }
            let synced = match (sync, syncing) {
                (false, _) => Ok(()),
                (true, true) => self.syncer.finish(),
                (true, false) => shared.wal.sync(),
            };
            synced.map_err(|error| match opts.fsync {
                // With fsync on, the unsynced bytes are this record alone: cut it off the log.
                true => match shared.wal.undo(appended) {
                    Ok(()) => wal::LogFailure { error, undone: true },
                    Err(failure) => failure,
                },
                // With it off, they hold groups already acknowledged; there is no taking back.
                false => wal::LogFailure { error, undone: false },
            })
        });
        let logged_at = Instant::now();
        if let Err(wal::LogFailure { error, undone }) = logged {
            shared.mem.write().rollback(first);
            drop(gate);
            let why = refusal(&error);
            if undone {
                // Nothing of the group is in the log: refuse it, keep its versions for the next
                // group, and take commits again as soon as a write succeeds.
                tracing::error!(error = %error, "cannot write the write-ahead log; the commit group was refused and nothing of it kept");
                shared.health.failed(Writer::Log, why.clone());
                let err = match error.kind() {
                    std::io::ErrorKind::StorageFull => StoreError::NoSpace(why.clone()),
                    _ => StoreError::Unavailable(why.clone()),
                };
                for a in accepted {
                    let _ = a.reply.send(Err(err.clone()));
                }
                return;
            }
            tracing::error!(error = %error, "write-ahead log write failed and cannot be taken back; the store refuses commits until reopened");
            let why = format!("{why}; the log's tail is unknown, so the store refuses commits until it is reopened");
            shared.health.failed(Writer::Log, why.clone());
            self.failed = Some(why);
            // Part of the record may be on disk: the outcome is unknown.
            for a in accepted {
                let _ = a.reply.send(Err(StoreError::CommitUnknown));
            }
            return;
        }
        shared.health.wrote(Writer::Log);
        shared.last_version.store(new_version, Ordering::Release);
        drop(gate);
        self.version = new_version;
        shared.commit_groups.fetch_add(1, Ordering::Relaxed);
        shared.commits.fetch_add(accepted.len() as u64, Ordering::Relaxed);
        tracing::trace!(
            group = accepted.len(),
            version = new_version,
            record_bytes = self.record.len(),
            log_us = logged_at.duration_since(started).as_micros() as u64,
            "group committed"
        );
        if self.record.capacity() > 2 * MAX_GROUP_BYTES {
            // One huge group should not pin its buffer for ever.
            self.record = Vec::new();
        }
        let (bytes, entries) = shared.mem.active_size();
        if bytes >= opts.memtable_bytes || entries >= opts.memtable_entries {
            let mut state = shared.flush_state();
            if !state.full {
                state.full = true;
                shared.flush.wake.notify_one();
            }
        }

        let now = Instant::now();
        let mut replies = Vec::with_capacity(accepted.len());
        {
            let mut tracker = shared.tracker();
            // Fire existing watches first, so that a transaction's own writes never fire the
            // watches it registers.
            for a in &accepted {
                tracker.fire(&a.write_set);
            }
            let mut registrations = Vec::new();
            for a in accepted {
                let Accepted { reply, watches, read_version, version, mut write_set, .. } = a;
                write_set.at = now;
                tracker.push(write_set);
                registrations.push((watches, read_version, version));
                replies.push((reply, version));
            }
            for (watches, since, own) in registrations {
                for (key, tx) in watches {
                    tracker.register_watch(key, tx, since, Some(own));
                }
            }
            tracker.evict(opts.max_txn_age, opts.max_retained_writes);
        }
        for (reply, version) in replies {
            let _ = reply.send(Ok(Committed { versionstamp: Versionstamp::new(version, 0) }));
        }
    }

    /// Resolves the transactions of a group in order, each atomic add against what precedes
    /// it.
    fn resolve_adds(&self, accepted: &mut [Accepted]) -> Result<()> {
        // The newest committed state: the memtable up to the last version over a fresh redb
        // snapshot, taken once for the group, and only if some transaction adds.
        let snapshot = match accepted.iter().any(Accepted::has_adds) {
            true => Some(self.shared.snapshot()?),
            false => None,
        };
        let mut committed = |key: &[u8]| -> Result<Option<Vec<u8>>> {
            let Some(snapshot) = &snapshot else {
                return Err(StoreError::Engine("an atomic add without a snapshot to resolve it".into()));
            };
            let view = View { flushed: snapshot.flushed, version: self.version };
            if let Some(v) = self.shared.mem.read().get(key, view) {
                return Ok(v.map(<[u8]>::to_vec));
            }
            let v = snapshot.kv.get(key).map_err(engine_err)?;
            Ok(v.map(|g| g.value().to_vec()))
        };
        for i in 0..accepted.len() {
            let (earlier, rest) = accepted.split_at_mut(i);
            if let Some(current) = rest.first_mut() {
                current.resolve(earlier, &mut committed)?;
            }
        }
        Ok(())
    }

    /// With the memtable past its hard cap, waits until the flusher has made room. Fails when
    /// flushing fails, rather than waiting for ever.
    fn wait_for_room(&self) -> Result<(), String> {
        let over = || self.shared.unflushed_past(BACKPRESSURE_FACTOR);
        if !over() {
            return Ok(());
        }
        let started = Instant::now();
        let mut state = self.shared.flush_state();
        while over() {
            if let Some(e) = &state.error {
                return Err(format!("the memtable is full and flushing it fails: {e}"));
            }
            state.full = true;
            self.shared.flush.wake.notify_one();
            state = match self.shared.flush.done.wait_timeout(state, BACKPRESSURE_POLL) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        tracing::debug!(waited_ms = started.elapsed().as_millis() as u64, "commits waited for the flusher");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::{
        embedded::{
            tests::{constant_flush, manual_flush},
            EmbeddedOptions, EmbeddedStore,
        },
        KvStore, Store,
    };

    #[test]
    fn write_keys_are_sorted_and_unique_in_or_out_of_order() {
        let op = |k: &str| (k.as_bytes().to_vec(), Op::Clear);
        let st = |k: &str| (k.as_bytes().to_vec(), Vec::new());
        let ops = [op("a"), op("c"), op("e"), op("g")];
        let keys = |ops: &[(Vec<u8>, Op)], stamped: &[(Vec<u8>, Vec<u8>)]| {
            write_keys(ops, stamped).iter().map(|k| String::from_utf8(k.to_vec()).unwrap()).collect::<Vec<_>>()
        };
        // In order, interleaved, one key in both lists, one stamped key twice.
        assert_eq!(keys(&ops, &[st("b"), st("c"), st("f"), st("f"), st("z")]), ["a", "b", "c", "e", "f", "g", "z"]);
        // Out of order: sorted all the same.
        assert_eq!(keys(&ops, &[st("z"), st("b"), st("a")]), ["a", "b", "c", "e", "g", "z"]);
        assert_eq!(keys(&[], &[st("y"), st("x")]), ["x", "y"]);
        assert_eq!(keys(&ops, &[]), ["a", "c", "e", "g"]);
    }

    #[test]
    fn stamped_keys_join_the_writes_in_order_and_win_ties() {
        let w = |k: &str, v: Option<&str>| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()));
        let st = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let writes = vec![w("a", Some("1")), w("c", None), w("e", Some("1"))];
        assert_eq!(
            with_stamped(writes.clone(), vec![st("b", "s"), st("c", "s"), st("z", "s")]),
            vec![w("a", Some("1")), w("b", Some("s")), w("c", Some("s")), w("e", Some("1")), w("z", Some("s"))]
        );
        // Out of order, and one key stamped twice: the later stays.
        assert_eq!(
            with_stamped(writes.clone(), vec![st("d", "first"), st("b", "s"), st("d", "second")]),
            vec![w("a", Some("1")), w("b", Some("s")), w("c", None), w("d", Some("second")), w("e", Some("1"))]
        );
        assert_eq!(with_stamped(writes.clone(), Vec::new()), writes);
    }

    /// Atomic adds resolve against earlier transactions of the same commit group, including
    /// their sets and cleared ranges, exactly as if applied one by one in version order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn atomic_adds_resolve_within_a_group() {
        // Key, kind of operation, operand.
        type Op3 = (Vec<u8>, i64, i64);
        let dir = tempfile::tempdir().unwrap();
        let embedded = EmbeddedStore::open(&dir.path().join("s.redb"), constant_flush()).unwrap();
        let store: Store = embedded.clone();
        let keys = [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for round in 0..10i64 {
            let mut txns = Vec::new();
            let mut ops = Vec::new();
            for j in 0..12i64 {
                let mut tx = store.begin().await.unwrap();
                let k = &keys[(j % 3) as usize];
                let op = (round + j) % 4;
                match op {
                    0 => tx.set(k, &(j * 100).to_le_bytes()).unwrap(),
                    1 => tx.clear_range(b"a", b"c").unwrap(),
                    _ => tx.atomic_add(k, j + 1).unwrap(),
                }
                ops.push((k.clone(), op, j));
                txns.push(tx);
            }
            let committed = futures::future::join_all(txns.into_iter().map(|tx| tx.commit())).await;
            let mut order: Vec<(Versionstamp, Op3)> =
                committed.into_iter().map(|c| c.unwrap().versionstamp).zip(ops).collect();
            order.sort();
            for (_, (k, op, j)) in order {
                match op {
                    0 => {
                        model.insert(k, (j * 100).to_le_bytes().to_vec());
                    }
                    1 => model.retain(|key, _| key.as_slice() < b"a".as_slice() || key.as_slice() >= b"c".as_slice()),
                    _ => {
                        let sum = add_le(model.get(&k).map(Vec::as_slice), j + 1);
                        model.insert(k, sum);
                    }
                }
            }
            let mut tx = store.begin().await.unwrap();
            for k in &keys {
                assert_eq!(tx.get(k).await.unwrap(), model.get(k).cloned(), "round {round}");
            }
        }
        assert!(embedded.stats().commit_groups < embedded.stats().commits, "no group held two commits");
    }

    /// Commit throughput with and without fsync; prints its numbers.
    /// `cargo test -p selvage-origin --release store::embedded::commit::tests::commit_throughput -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement, not a check"]
    async fn commit_throughput() {
        for fsync in [true, false] {
            for writers in [1usize, 64] {
                let dir = tempfile::tempdir().unwrap();
                let opts = EmbeddedOptions { fsync, ..EmbeddedOptions::default() };
                let store = EmbeddedStore::open(&dir.path().join("t.redb"), opts).unwrap();
                let per_writer = if writers == 1 { 300 } else { 5_000 / writers };
                let started = Instant::now();
                let tasks: Vec<_> = (0..writers)
                    .map(|w| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            for i in 0..per_writer {
                                let mut tx = store.begin().await.unwrap();
                                let key = format!("w{w}/{i}");
                                tx.set(key.as_bytes(), &[0u8; 200]).unwrap();
                                tx.commit().await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                let elapsed = started.elapsed();
                let n = writers * per_writer;
                let stats = store.stats();
                println!(
                    "fsync={fsync} writers={writers}: {n} commits in {elapsed:?} = {:.0}/s, \
                     {} groups (avg {:.1} per group)",
                    n as f64 / elapsed.as_secs_f64(),
                    stats.commit_groups,
                    stats.commits as f64 / stats.commit_groups as f64
                );
            }
        }
    }

    /// A failed fdatasync is never acknowledged: the record is cut off the log, the group is
    /// refused, the next commit takes its version, and recovery never replays it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_is_never_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = EmbeddedStore::open(&path, manual_flush()).unwrap();
        let commit = |key: &'static [u8]| {
            let store = store.clone();
            async move {
                let mut tx = store.begin().await.unwrap();
                tx.set(key, b"v").unwrap();
                tx.commit().await.map(|c| c.versionstamp.version())
            }
        };
        let first = commit(b"before").await.unwrap();
        store.shared.wal.fail_syncs(1);
        match commit(b"failed").await {
            Err(StoreError::Unavailable(why)) => assert!(why.contains("cannot write to its disk"), "{why}"),
            other => panic!("a failed sync must refuse the commit, got {other:?}"),
        }
        assert!(store.write_problem().is_some());
        let mut tx = store.begin().await.unwrap();
        assert_eq!(tx.get(b"failed").await.unwrap(), None, "a refused group is not visible");
        drop(tx);
        assert_eq!(commit(b"after").await.unwrap(), first + 1);
        assert_eq!(store.write_problem(), None);
        let image = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, image.path().join(p.file_name().unwrap())).unwrap();
        }
        drop(store);
        let store = EmbeddedStore::open(&image.path().join("s.redb"), manual_flush()).unwrap();
        let mut tx = store.begin().await.unwrap();
        assert_eq!(
            (
                tx.get(b"before").await.unwrap().is_some(),
                tx.get(b"failed").await.unwrap(),
                tx.get(b"after").await.unwrap().is_some()
            ),
            (true, None, true)
        );
    }
}
