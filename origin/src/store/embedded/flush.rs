//! The flusher: moves the memtable's committed tables into redb in bulk, in the background.
//!
//! A background thread freezes the memtable's active table and writes it into redb in key
//! order, cleared ranges first, in durable write transactions of a few thousand writes each;
//! the last one also records the new flushed version. A helper thread merges the table's runs
//! and puts their keys in the key filter a couple of chunks ahead of the redb writes. Then the
//! log segments the flush made obsolete are deleted, and memtable tables no live snapshot
//! needs are retired. It runs every `flush_interval`, when the memtable passes its size
//! thresholds, on [`EmbeddedStore::flush`](super::EmbeddedStore::flush) and at shutdown
//! (see [`EmbeddedOptions`](super::EmbeddedOptions)); past [`BACKPRESSURE_FACTOR`] times the
//! thresholds, commits wait for it.

use std::{
    fmt,
    ops::Bound,
    sync::{atomic::Ordering, Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use redb::Durability;
use tokio::sync::oneshot;

use super::{filter, health::Writer, lock, memtable::Table, Shared, KV, META, VERSION_KEY};
use crate::store::{Result, StoreError};

/// Most writes per redb transaction when the flusher writes a memtable table.
pub(super) const FLUSH_CHUNK: usize = 32768;
/// Fewest writes per redb transaction (unless the table is smaller).
const MIN_FLUSH_CHUNK: usize = 256;
/// A table is written in about this many durable chunks (within the bounds above). Each chunk
/// rewrites every page it touches, so with many channels fewer chunks write fewer bytes (a
/// channel's last page once per chunk), while more chunks spread the writes out.
const FLUSH_PIECES: usize = 16;
/// Share of the flush interval a flush may spread its chunks over.
const FLUSH_SPREAD: f64 = 0.8;

/// The memtable may hold this many times its flush threshold before commits wait for the
/// flusher.
pub(super) const BACKPRESSURE_FACTOR: usize = 4;

/// How the commit thread and [`EmbeddedStore::flush`](super::EmbeddedStore::flush) wake the flusher, and wait for it.
#[derive(Default)]
pub(super) struct FlushControl {
    pub(super) state: Mutex<FlushState>,
    /// Wakes the flusher.
    pub(super) wake: Condvar,
    /// Signalled after every flush attempt.
    pub(super) done: Condvar,
}

#[derive(Default)]
pub(super) struct FlushState {
    /// The memtable passed its threshold.
    pub(super) full: bool,
    /// Callers waiting for everything committed so far to be flushed.
    pub(super) waiters: Vec<oneshot::Sender<Result<()>>>,
    /// Flush everything and stop (the commit thread has stopped).
    pub(super) shutdown: bool,
    /// Why the last flush attempt failed; `None` after a success.
    pub(super) error: Option<String>,
}

impl Shared {
    pub(super) fn flush_state(&self) -> MutexGuard<'_, FlushState> {
        lock(&self.flush.state)
    }

    /// Freezes the active memtable table and writes every frozen one still unflushed into
    /// redb, oldest first, deleting the log segments each made obsolete.
    pub(super) fn flush_all(&self, paced: bool) -> Result<(), String> {
        {
            let _gate = lock(&self.publish_gate);
            self.mem.freeze();
        }
        while let Some(table) = self.mem.next_to_flush() {
            let started = Instant::now();
            let flushed = table.newest();
            {
                // A backup's view waits for the whole table (see `Shared::flushing`).
                let _writing = lock(&self.flushing);
                self.write_table(&table, paced)?;
                self.flushed_version.store(flushed, Ordering::Release);
            }
            self.mem.mark_flushed(&table);
            self.flushes.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                version = flushed,
                entries = table.entries(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "memtable flushed"
            );
            if let Err(e) = self.wal.truncate_through(flushed) {
                // Harmless: recovery skips what redb already holds; the next flush retries.
                tracing::warn!(error = %e, "cannot delete flushed write-ahead log segments");
            }
        }
        Ok(())
    }

    /// Writes one frozen table into redb, durably, in key-ordered chunks of about a
    /// [`FLUSH_PIECES`]th of the table ([`MIN_FLUSH_CHUNK`] to [`FLUSH_CHUNK`] writes) per
    /// redb transaction; the last one also records the new flushed version.
    ///
    /// Every chunk is synced, and (`paced`: a flush nobody waits for) the chunks are paced
    /// over part of the flush interval: each sync makes the log's next sync wait for the pages
    /// written before it (the disk flushes everything written so far), so one big burst of
    /// pages holds acknowledgements back for tens of milliseconds, while a steady trickle costs
    /// each log sync a little. The pause after a chunk is as long as the chunk took, while the
    /// rest still fits in [`FLUSH_SPREAD`] of the interval and the memtable is not halfway to
    /// the size where commits wait for room. A reader whose
    /// redb snapshot holds only some chunks still reads correctly: the table was frozen before
    /// its snapshot, so its read version covers the whole table, and the memtable answers for
    /// every key the table wrote or cleared. After a crash between chunks, the flushed version
    /// is still the old one, and replaying the log rewrites every key the chunks touched.
    fn write_table(&self, table: &Table, paced: bool) -> Result<(), String> {
        let chunk = (table.entries() / FLUSH_PIECES).clamp(MIN_FLUSH_CHUNK, FLUSH_CHUNK);
        let chunks = table.entries().div_ceil(chunk).max(1);
        // The table's runs are merged, and the keys put in the filter, by a helper thread a
        // couple of chunks ahead of this one, which writes redb: the flush is the stage that
        // limits a saturated store, and the merge is a quarter of its work.
        std::thread::scope(|scope| {
            let (ready, chunks_in) = std::sync::mpsc::sync_channel::<Vec<FlushWrite<'_>>>(2);
            let merger = std::thread::Builder::new().name("selvage-merge".into()).spawn_scoped(scope, move || {
                let mut writes = table.final_writes().peekable();
                while writes.peek().is_some() {
                    let next: Vec<FlushWrite<'_>> = writes.by_ref().take(chunk).collect();
                    // Into the filter before redb has them: no snapshot holds a key the filter
                    // lacks (this chunk reaches redb only after it is sent).
                    let mut filter = self.filter.writer();
                    for &(key, value) in &next {
                        if value.is_some() {
                            filter.insert(filter::hash(key));
                        }
                    }
                    drop(filter);
                    if ready.send(next).is_err() {
                        return;
                    }
                }
            });
            match merger {
                Ok(_) => self.write_chunks(table, chunks_in, chunks, paced),
                Err(e) => Err(format!("cannot start the flush's merge thread: {e}")),
            }
        })
    }

    /// Writes a frozen table's chunks, as [`Shared::write_table`]'s merge thread hands them
    /// over, one durable redb transaction each; the last one also records the new flushed
    /// version. A table with nothing to write still records it.
    fn write_chunks(
        &self,
        table: &Table,
        chunks_in: std::sync::mpsc::Receiver<Vec<FlushWrite<'_>>>,
        chunks: usize,
        paced: bool,
    ) -> Result<(), String> {
        let s = |e: &dyn fmt::Display| e.to_string();
        let mut chunks_left = chunks;
        let started = Instant::now();
        let budget = self.opts.flush_interval.mul_f64(FLUSH_SPREAD);
        let mut next = chunks_in.recv().ok();
        let mut first = true;
        loop {
            let chunk_started = Instant::now();
            let this = next.take().unwrap_or_default();
            let mut wtx = self.db.begin_write().map_err(|e| s(&e))?;
            wtx.set_durability(Durability::Immediate).map_err(|e| s(&e))?;
            {
                let mut kv = wtx.open_table(KV).map_err(|e| s(&e))?;
                if first {
                    for (begin, end) in table.cleared_ranges() {
                        kv.retain_in(begin..end, |_, _| false).map_err(|e| s(&e))?;
                    }
                }
                write_in_order(&mut kv, this.into_iter()).map_err(|e| s(&e))?;
                next = chunks_in.recv().ok();
                if next.is_none() {
                    let mut meta = wtx.open_table(META).map_err(|e| s(&e))?;
                    meta.insert(VERSION_KEY, table.newest()).map_err(|e| s(&e))?;
                }
            }
            wtx.commit().map_err(|e| s(&e))?;
            first = false;
            if next.is_none() {
                return Ok(());
            }
            chunks_left = chunks_left.saturating_sub(1).max(1);
            let took = chunk_started.elapsed();
            let left_after_pause = started.elapsed() + took + took * chunks_left as u32;
            if paced && left_after_pause < budget && !self.unflushed_past(BACKPRESSURE_FACTOR / 2) {
                std::thread::sleep(took);
            }
        }
    }

    /// Whether the memtable holds more than `factor` times its flush threshold not yet in redb
    /// (commits wait for the flusher past [`BACKPRESSURE_FACTOR`]).
    pub(super) fn unflushed_past(&self, factor: usize) -> bool {
        let (bytes, entries) = self.mem.unflushed_size();
        bytes > self.opts.memtable_bytes.saturating_mul(factor)
            || entries > self.opts.memtable_entries.saturating_mul(factor)
    }

    /// Drops the flushed memtable tables no live transaction can need.
    pub(super) fn retire(&self) {
        let oldest_pin = lock(&self.pins).keys().next().copied();
        // Dropped here, outside the memtable lock.
        drop(self.mem.retire(oldest_pin, self.opts.max_txn_age));
    }
}

/// Writes `writes` (keys ascending; `None` removes the key) into `kv` through a cursor. The
/// keys that fall into one gap between existing keys (a channel's new messages after its last
/// one, the feed's new events at the end of the log) are buffered and spliced into the tree as
/// full leaves with one update of their parents, where an insert per key would walk down from
/// the root and rebuild the leaf every time. The cursor seeks again at the first key past the
/// gap; a key that already exists is replaced (or removed) through the table.
fn write_in_order<'w>(
    kv: &mut redb::Table<&'static [u8], &'static [u8]>,
    writes: impl Iterator<Item = (&'w [u8], Option<&'w [u8]>)>,
) -> std::result::Result<(), redb::Error> {
    let mut writes = writes.peekable();
    while let Some(&(first, _)) = writes.peek() {
        let through_table = {
            let mut cursor = kv.lower_bound_mut(Bound::Included(first))?;
            // Cheap here: no insert is pending, so the cursor reads its own leaf.
            let existing = matches!(cursor.peek_next()?, Some((k, _)) if k.value() == first);
            let mut written = 0usize;
            if !existing {
                while let Some(&(key, value)) = writes.peek() {
                    match value {
                        // Removing a key that is not there.
                        None if key == first => {}
                        // Past the gap, where it may exist: seek to it.
                        None => break,
                        Some(v) => match cursor.insert_before(key, v) {
                            Ok(()) => {}
                            Err(redb::CursorError::UnorderedKey) => break,
                            Err(e) => return Err(e.into()),
                        },
                    }
                    writes.next();
                    written += 1;
                }
            }
            cursor.close()?;
            // `first` always fits its own gap; should the cursor refuse it anyway, the table
            // takes it, so the loop always moves on.
            existing || written == 0
        };
        if through_table {
            if let Some((key, value)) = writes.next() {
                match value {
                    Some(v) => drop(kv.insert(key, v)?),
                    None => drop(kv.remove(key)?),
                }
            }
        }
    }
    Ok(())
}

/// A write of a frozen table on its way to redb: the key and its value (`None`: removed).
type FlushWrite<'a> = (&'a [u8], Option<&'a [u8]>);

/// Lowers the calling thread's scheduling priority (nice 19): the flusher is throughput work
/// that nothing waits for (commits are durable in the log already), and at normal priority its
/// bursts of B-tree writing take a core from request handling and show up in the ack-latency
/// tail. Not `SCHED_IDLE`: a thread that gets no CPU at all while holding a lock that readers
/// need (redb's, the memtable's) stalls everyone behind it.
pub(super) fn background_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority on our own thread id changes only
        // this thread's nice value.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the flusher's priority");
        }
    }
}

impl Shared {
    /// The flush thread: flushes on a timer, on demand and at shutdown, and retires memtable
    /// tables nobody needs any more.
    pub(super) fn run_flusher(self: Arc<Self>) {
        let interval = self.opts.flush_interval.max(Duration::from_millis(1));
        let mut due = Instant::now() + interval;
        loop {
            let (shutdown, waiters) = {
                let mut state = self.flush_state();
                loop {
                    let now = Instant::now();
                    if state.full || state.shutdown || !state.waiters.is_empty() || now >= due {
                        break;
                    }
                    state = match self.flush.wake.wait_timeout(state, due - now) {
                        Ok((guard, _)) => guard,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
                state.full = false;
                (state.shutdown, std::mem::take(&mut state.waiters))
            };
            due = Instant::now() + interval;
            // Paced unless someone waits for this flush (a caller of `flush`, or shutdown).
            let result = self.flush_all(!shutdown && waiters.is_empty());
            match &result {
                Err(e) => {
                    tracing::error!(error = %e, "memtable flush failed; retrying at the next interval");
                    self.health.failed(Writer::Flush, "the origin cannot write its store file".into());
                }
                Ok(()) => self.health.wrote(Writer::Flush),
            }
            self.retire();
            self.flush_state().error = result.as_ref().err().cloned();
            self.flush.done.notify_all();
            for waiter in waiters {
                let _ = waiter.send(result.clone().map_err(StoreError::Engine));
            }
            if shutdown {
                break;
            }
        }
        tracing::debug!(version = self.flushed_version.load(Ordering::Relaxed), "embedded store flush thread stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use redb::{Database, ReadableDatabase, ReadableTable};

    use super::*;
    use crate::store::{
        embedded::{
            tests::{constant_flush, manual_flush, wal_files, write_key},
            EmbeddedOptions, EmbeddedStore,
        },
        RangeRead, Store,
    };

    /// `write_in_order` leaves redb exactly as a per-key insert or remove would: new keys in
    /// gaps of every size, runs long enough to be spliced in several pieces, replacements and
    /// removals of existing keys, removals of absent ones, keys before the first and after the
    /// last, over several rounds on the same table.
    #[test]
    fn writes_in_order_match_a_model() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..12 {
            let mut writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            // A dense run (like a channel's new messages), then scattered keys, then a few of
            // the existing keys replaced or removed.
            let base = rng.random_range(0..2_000u32);
            for i in 0..rng.random_range(0..3_000u32) {
                let len = if round % 3 == 0 { 700 } else { 16 };
                writes.insert(format!("k{:06}", base * 10 + i).into_bytes(), Some(vec![round as u8; len]));
            }
            for _ in 0..500 {
                let key = format!("k{:06}", rng.random_range(0..60_000u32)).into_bytes();
                let value = rng.random_bool(0.8).then(|| vec![rng.random(); rng.random_range(0..40)]);
                writes.insert(key, value);
            }
            let existing: Vec<Vec<u8>> = model.keys().cloned().collect();
            for _ in 0..existing.len().min(200) {
                let key = existing[rng.random_range(0..existing.len())].clone();
                let value = rng.random_bool(0.5).then(|| b"replaced".to_vec());
                writes.insert(key, value);
            }
            writes.insert(b"a-before-all".to_vec(), Some(b"first".to_vec()));
            writes.insert(b"z-after-all".to_vec(), (round % 2 == 0).then(|| b"last".to_vec()));
            let wtx = db.begin_write().unwrap();
            {
                let mut kv = wtx.open_table(KV).unwrap();
                write_in_order(&mut kv, writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))).unwrap();
            }
            wtx.commit().unwrap();
            for (k, v) in writes {
                match v {
                    Some(v) => model.insert(k, v),
                    None => model.remove(&k),
                };
            }
            let rtx = db.begin_read().unwrap();
            let kv = rtx.open_table(KV).unwrap();
            let stored: Vec<(Vec<u8>, Vec<u8>)> = kv
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value().to_vec(), v.value().to_vec())
                })
                .collect();
            let expected: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
            assert_eq!(stored.len(), expected.len(), "round {round}");
            assert!(stored == expected, "round {round}: redb differs from the model");
        }
    }

    /// A table larger than [`FLUSH_CHUNK`] reaches redb in several transactions; readers
    /// running meanwhile, whose snapshots hold only some of them, still read the whole table.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_in_chunks_is_invisible_to_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let key = |i: u32| [b"c/".as_slice(), &i.to_be_bytes()].concat();
        let n = 3 * FLUSH_CHUNK as u32;
        let expected = (n - n / 2 + 100) as usize;
        {
            let embedded = EmbeddedStore::open(&path, manual_flush()).unwrap();
            let store: Store = embedded.clone();
            let mut tx = store.begin().await.unwrap();
            for i in 0..n {
                tx.set(&key(i), b"a").unwrap();
            }
            tx.commit().await.unwrap();
            let mut tx = store.begin().await.unwrap();
            tx.clear_range(&key(n / 4), &key(3 * n / 4)).unwrap();
            tx.commit().await.unwrap();
            let mut tx = store.begin().await.unwrap();
            for i in n / 2..n / 2 + 100 {
                tx.set(&key(i), b"b").unwrap();
            }
            tx.commit().await.unwrap();

            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reader = {
                let (store, done) = (store.clone(), done.clone());
                tokio::spawn(async move {
                    let mut reads = 0;
                    while !done.load(Ordering::Acquire) || reads == 0 {
                        let mut tx = store.begin().await.unwrap();
                        let rows = tx.get_range(&RangeRead::prefix(b"c")).await.unwrap();
                        assert_eq!(rows.len(), expected, "read {reads}");
                        assert_eq!(tx.get(&key(n / 2)).await.unwrap(), Some(b"b".to_vec()));
                        assert_eq!(tx.get(&key(n / 2 - 1)).await.unwrap(), None);
                        reads += 1;
                    }
                })
            };
            embedded.flush().await.unwrap();
            done.store(true, Ordering::Release);
            reader.await.unwrap();
            assert_eq!(embedded.flushed_version(), 3);
        }
        let store: Store = EmbeddedStore::open(&path, manual_flush()).unwrap();
        let rows = store.begin().await.unwrap().get_range(&RangeRead::prefix(b"c")).await.unwrap();
        assert_eq!(rows.len(), expected);
    }

    /// A clean shutdown flushes everything: no log is left, and nothing is replayed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_flushes_the_memtable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let embedded = EmbeddedStore::open(&path, manual_flush()).unwrap();
        let store: Store = embedded.clone();
        for i in 0..20u8 {
            write_key(&store, &[i], b"v").await;
        }
        assert!(!wal_files(dir.path()).is_empty());
        assert_eq!(embedded.flushed_version(), 0);
        drop(store);
        drop(embedded);
        assert!(wal_files(dir.path()).is_empty(), "the log outlived a clean shutdown");
        let embedded = EmbeddedStore::open(&path, manual_flush()).unwrap();
        assert_eq!(embedded.flushed_version(), 20);
        assert_eq!(embedded.last_version(), 20);
    }

    /// The memtable thresholds trigger flushes before the interval, and past four times them
    /// commits wait for the flusher instead of growing the memtable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thresholds_trigger_flushes_and_bound_the_memtable() {
        let dir = tempfile::tempdir().unwrap();
        let opts = EmbeddedOptions { memtable_entries: 8, ..manual_flush() };
        let embedded = EmbeddedStore::open(&dir.path().join("s.redb"), opts).unwrap();
        let store: Store = embedded.clone();
        // One group holds at most one commit per writer beyond the cap.
        let bound = 8 * BACKPRESSURE_FACTOR + 8;
        let tasks: Vec<_> = (0..8u8)
            .map(|t| {
                let (store, embedded) = (store.clone(), embedded.clone());
                tokio::spawn(async move {
                    for i in 0..25u8 {
                        write_key(&store, &[t, i], b"v").await;
                        let (_, entries) = embedded.shared.mem.unflushed_size();
                        assert!(entries <= bound, "{entries} unflushed entries");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(embedded.stats().flushes >= 5, "{:?}", embedded.stats());
        let rows = store.begin().await.unwrap().get_range(&RangeRead::between(vec![0], vec![8])).await.unwrap();
        assert_eq!(rows.len(), 200);
    }

    /// Every contract check again, with the flusher running all the time underneath.
    mod contract_while_flushing {
        use super::constant_flush;
        use crate::store::{contract, embedded::EmbeddedStore, tuple::Key, Store};

        macro_rules! checks {
            ($($check:ident),* $(,)?) => {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        let dir = tempfile::tempdir().unwrap();
                        let store: Store = EmbeddedStore::open(&dir.path().join("s.redb"), constant_flush()).unwrap();
                        contract::$check(&store, &Key::new().str("flushing").finish()).await;
                    }
                )*
            };
        }

        checks!(
            get_set_clear,
            range_reads,
            clear_range,
            read_your_writes,
            read_your_writes_model,
            atomic_add,
            serializable,
            transact_retries,
            versionstamps,
            read_only_commit,
            limits,
            watches,
        );
    }
}
