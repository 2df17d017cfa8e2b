//! The embedded storage engine: FoundationDB's transaction model on one redb file, with a
//! write-ahead log and a versioned memtable in front of it.
//!
//! This is the default engine and the one every test runs on. It keeps FoundationDB's semantics
//! and limits (see [`super`]) so that code which would fail on FoundationDB fails here too. Its
//! write path is the one FoundationDB's storage servers use: a commit is durable once it is in
//! a log; the B-tree catches up later, in bulk.
//!
//! - **Group commit** (module `commit`). One dedicated commit thread (not a tokio worker: it blocks
//!   on fsync) takes every pending commit request, checks each for conflicts in arrival order,
//!   resolves the accepted ones (atomic adds against the newest committed value, versionstamps
//!   filled in) and appends them as **one record** to the write-ahead log (module `wal`). While a
//!   helper thread syncs the record (with `fsync` on, the only fsync on the acknowledgement path),
//!   the commit thread adds the group to the memtable, where no reader sees it yet; once the sync
//!   is done it makes the group visible by advancing the last committed version, and only then
//!   answers: acknowledged means in the log and synced. If the log cannot be written, the group is
//!   taken out of the memtable, answered [`StoreError::CommitUnknown`], and the store refuses
//!   further commits until it is reopened (the log's tail is unknown; recovery sorts it out).
//! - **Memtable** (module `memtable`). Committed mutations not yet in redb, by version, shared by
//!   readers. Writing a group costs an append and an fsync instead of a copy-on-write of every
//!   B-tree page it touches, which is what a group of writes scattered over many channels costs
//!   in redb.
//! - **Flusher** (module `flush`). A background thread freezes the memtable's active table and
//!   writes it into redb in key order, cleared ranges first, in durable write transactions of a few
//!   thousand writes each, through a cursor that splices each run of new keys falling between two
//!   existing ones (a channel's new messages, the feed's new events) into the tree as whole leaves;
//!   the last one also records the new **flushed version** in the meta table. A helper thread
//!   merges the table's runs and puts their keys in the key filter a couple of chunks ahead of the
//!   redb writes. Then it deletes the log segments that made obsolete. Writing many groups at once
//!   touches each B-tree page once per flush rather than once per group. It runs every
//!   [`EmbeddedOptions::flush_interval`], when the memtable passes
//!   [`EmbeddedOptions::memtable_bytes`] or [`EmbeddedOptions::memtable_entries`], on
//!   [`EmbeddedStore::flush`] and at shutdown. Past four times those sizes the commit thread waits
//!   for it (backpressure) rather than letting the memtable grow without bound.
//! - **Snapshot reads** (module `snapshot`; the transaction in module `txn`). A transaction takes a
//!   redb read transaction, reads the flushed version `F` it holds, then takes the last committed
//!   version `V` as its read version: it sees the memtable's commits in `(F, V]` over that redb
//!   snapshot, plus its own buffered writes (read-your-writes; module `buffer`: found by key hash,
//!   sorted once at commit). Range reads merge the three, with the memtable's cleared ranges hiding
//!   redb keys. A flushed memtable table is kept while a live transaction's snapshot predates the
//!   flush, and at most `max_txn_age` (transactions older than that fail with
//!   [`StoreError::TooOld`]). A point read the memtable cannot answer asks the **key filter**
//!   (module `filter`: a Bloom filter of redb's keys, filled on open and kept by the flusher)
//!   before walking the B-tree, so a key redb does not hold — every new message's dedup entry —
//!   costs no B-tree walk.
//! - **Optimistic serializability** (module `conflicts`). Reads record read conflict ranges,
//!   mutations record write conflicts. At commit, a transaction fails with [`StoreError::Conflict`]
//!   if a transaction committed after its read version wrote into its read conflict set. The write
//!   sets of recent commits are kept in memory for this check (bounded by age and by a key count);
//!   a transaction older than what is retained fails with [`StoreError::TooOld`].
//! - **Versions.** Each accepted transaction gets its own `u64` commit version and the
//!   versionstamp `Versionstamp::new(version, 0)`; versions are in every log record and the
//!   flushed one is in redb, so versionstamps are unique and increasing across restarts.
//! - **Recovery** (module `recovery`). Opening reads the flushed version from redb and replays the
//!   log records after it, stopping at the first torn or corrupt record (a commit that was never
//!   acknowledged). The replayed commits are written into redb in one durable transaction, the old
//!   segments deleted, and versions continue after the last replayed one.
//! - **Watches** resolve once a commit after the watching transaction's read version writes the
//!   key.
//! - **Backups** (module `backup`). [`KvStore::backup`] flushes and opens a redb read
//!   transaction between two flushes, where redb holds exactly the flushed version: a view of
//!   one version that lasts as long as the backup streams (up to
//!   [`EmbeddedOptions::max_backup_age`]), free of the memtable's 5 s. [`restore`] writes a new
//!   redb file from a backup, its versions continuing past the backup's.
//! - **Health** (module `health`). A failed write to the log or to redb, or a disk short of
//!   [`EmbeddedOptions::min_free_bytes`], shows in [`KvStore::write_problem`] until writes succeed
//!   again; while the disk is short, commits are refused.
//!
//! With `fsync` off the log is synced at most every second on the commit path, and the flusher
//! makes everything durable in redb every `flush_interval`; a crash may lose about a second.
//! Dropping the last handle flushes the memtable, so a clean reopen replays nothing.
//!
//! Reads run inline on the calling task: a memtable lookup and a redb B-tree walk over pages
//! that are almost always in its page cache cost about what a hand-off to a blocking thread
//! would. Everything that waits on the disk runs on the commit and flush threads.

mod backup;
mod buffer;
mod commit;
mod conflicts;
mod filter;
mod flush;
mod health;
pub(crate) use health::disk_space;
mod memtable;
mod recovery;
mod snapshot;
mod txn;
mod wal;

use std::{
    collections::BTreeMap,
    fmt,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError, Weak,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use self::{
    commit::{CommitRequest, CommitWorker, Syncer, COMMIT_QUEUE},
    conflicts::Tracker,
    filter::KeyFilter,
    flush::{background_priority, FlushControl},
    health::{Health, SpaceCheck},
    memtable::Memtable,
    recovery::OnDisk,
    wal::Wal,
};
use super::{BackupStart, KvStore, KvTxn, Result, StoreError, MAX_TXN_AGE};

pub use self::backup::{restore, RestoreError, Restored, RESTORE_VERSION_GAP};
#[doc(hidden)]
pub use self::recovery::replay_log_for_fuzzing;

/// The user data: FoundationDB's flat, ordered keyspace.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Engine bookkeeping, outside the user keyspace.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The flushed version in [`META`]: every commit up to it is in [`KV`] (later ones are in the
/// write-ahead log).
const VERSION_KEY: &str = "version";
/// The name of the store's file in the origin's `data_dir` (the log's segments are named after
/// it).
pub const DATA_FILE: &str = "selvage.redb";

/// Settings of an [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Sync the write-ahead log before a commit is acknowledged. Off, commits are acknowledged
    /// from memory; the log is synced at most a second later and the memtable is flushed into
    /// redb every `flush_interval` and at shutdown, so a crash may lose the last second.
    pub fsync: bool,
    /// Bytes of redb page cache.
    pub cache_bytes: usize,
    /// The longest a transaction may live, FoundationDB's 5 s by default. Tests shorten it.
    pub max_txn_age: Duration,
    /// How many written keys (and cleared ranges) of recent commits are kept for conflict
    /// checks; a transaction whose read version predates the oldest retained commit fails with
    /// [`StoreError::TooOld`].
    pub max_retained_writes: usize,
    /// How often the memtable is flushed into redb (when it holds anything).
    pub flush_interval: Duration,
    /// Bytes of memtable (keys, values and bookkeeping) that trigger a flush before
    /// `flush_interval`. Past four times this not yet in redb, commits wait for the flusher.
    pub memtable_bytes: usize,
    /// Mutations in the memtable that trigger a flush before `flush_interval`. Past four times
    /// this not yet in redb, commits wait for the flusher.
    pub memtable_entries: usize,
    /// Free bytes kept on the data directory's disk, beyond twice what waits to be flushed:
    /// with less, commits are refused (`Unavailable`) until space is freed, so that the flush
    /// and the log never meet a full disk (redb refuses all further work after a failed write,
    /// until it is reopened). 0 turns the check off.
    pub min_free_bytes: u64,
    /// The longest a backup may read its view ([`KvStore::backup`]); one still reading then
    /// fails and its file is incomplete. While a view lives, redb cannot reuse the pages later
    /// flushes free, so the file grows by what is rewritten meanwhile.
    pub max_backup_age: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            fsync: true,
            cache_bytes: 256 * 1024 * 1024,
            max_txn_age: MAX_TXN_AGE,
            max_retained_writes: 2_000_000,
            // Since the flusher splices runs of keys in through a cursor, a flush costs little
            // beyond its keys, and smaller ones keep the active memtable small (cheaper to insert
            // into on the commit path) and their disk writes short beside the log's syncs: 150 ms
            // gave both more throughput and a lower ack tail than 500 ms (docs/BENCHMARKS.md).
            flush_interval: Duration::from_millis(150),
            memtable_bytes: 64 * 1024 * 1024,
            memtable_entries: 200_000,
            min_free_bytes: 64 * 1024 * 1024,
            max_backup_age: Duration::from_secs(3600),
        }
    }
}

/// Commit and flush counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Transactions committed with writes.
    pub commits: u64,
    /// Write-ahead log records, each carrying one group of commits.
    pub commit_groups: u64,
    /// Commits refused with [`StoreError::Conflict`].
    pub conflicts: u64,
    /// Commits refused with [`StoreError::TooOld`].
    pub too_old: u64,
    /// Memtable flushes into redb (redb write transactions).
    pub flushes: u64,
    /// Point reads the memtable could not answer that the key filter answered (the key is not
    /// in redb) without reading redb.
    pub filtered_reads: u64,
    /// Whether the key filter holds every redb key yet (it is filled in the background on
    /// open).
    pub filter_ready: bool,
}

/// The embedded engine. Open it with [`EmbeddedStore::open`]; dropping the last handle (every
/// transaction holds one) stops the commit thread, flushes the memtable and closes the file.
pub struct EmbeddedStore {
    /// Lets `begin(&self)` hand transactions a strong handle on the store.
    me: Weak<EmbeddedStore>,
    shared: Arc<Shared>,
    /// `None` only while dropping.
    commits: Option<mpsc::Sender<CommitRequest>>,
    /// `None` only while dropping.
    worker: Option<JoinHandle<()>>,
    /// `None` only while dropping.
    flusher: Option<JoinHandle<()>>,
    /// Fills the key filter on open; `None` once joined.
    filler: Option<JoinHandle<()>>,
}

/// State shared by transactions, the commit thread and the flusher.
struct Shared {
    opts: EmbeddedOptions,
    db: Database,
    wal: Wal,
    mem: Memtable,
    tracker: Mutex<Tracker>,
    /// The last commit version published in the memtable (stored under its write lock).
    last_version: AtomicU64,
    /// The flushed version of the last flush (set once it is durable in redb).
    flushed_version: AtomicU64,
    /// Live redb snapshots, by a flushed version at or below theirs: memtable tables newer
    /// than the lowest must stay.
    pins: Mutex<BTreeMap<u64, usize>>,
    /// Held by the commit thread from publishing a group in the memtable until it is synced
    /// and visible, and by a freeze: a frozen table never holds a commit not yet in the log.
    publish_gate: Mutex<()>,
    /// Held by the flusher while it writes a table into redb (in several redb transactions,
    /// so redb holds part of it meanwhile): a backup's view begins outside it, where redb
    /// holds exactly the flushed version.
    flushing: Mutex<()>,
    /// Whether a backup's view is open (one at a time).
    backup_running: AtomicBool,
    flush: FlushControl,
    /// Every key in redb, and some that are not (see module `filter`).
    filter: KeyFilter,
    /// Set when the store is dropped: stops the filter's initial fill.
    closing: AtomicBool,
    commits: AtomicU64,
    commit_groups: AtomicU64,
    conflicts: AtomicU64,
    too_old: AtomicU64,
    flushes: AtomicU64,
    filtered_reads: AtomicU64,
    /// Whether writes are failing, for readiness.
    health: Health,
}

// Every critical section on these locks leaves its state consistent between statements that
// could panic, so a poisoned lock is still safe to use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        lock(&self.tracker)
    }

    /// Puts every key of the redb file into the key filter, then lets reads trust it. Keys the
    /// flusher writes meanwhile, it adds itself (before committing them), so nothing is missed
    /// between this snapshot and the end of the fill.
    fn fill_filter(&self) -> std::result::Result<(), redb::Error> {
        let started = Instant::now();
        let rtx = self.db.begin_read()?;
        let kv = rtx.open_table(KV)?;
        let mut keys = 0u64;
        // The writer is taken per batch, so that the flusher waits at most a batch for it.
        let mut filter = self.filter.writer();
        for entry in kv.iter()? {
            let (key, _) = entry?;
            filter.insert(filter::hash(key.value()));
            keys += 1;
            if keys.is_multiple_of(4096) {
                if self.closing.load(Ordering::Relaxed) {
                    return Ok(());
                }
                drop(filter);
                filter = self.filter.writer();
            }
        }
        drop(filter);
        self.filter.set_ready();
        tracing::debug!(
            keys,
            bytes = self.filter.bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "key filter filled"
        );
        Ok(())
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("last_version", &self.last_version())
            .field("flushed_version", &self.flushed_version())
            .field("stats", &self.stats())
            .finish()
    }
}

fn engine_err(e: impl fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, replays its write-ahead log (files
    /// `<stem>.wal.<version>` next to it) and starts its commit and flush threads.
    pub fn open(path: &Path, opts: EmbeddedOptions) -> Result<Arc<Self>> {
        let OnDisk { db, flushed, keys, naming, mem, log: recovered } = recovery::read(path, opts.cache_bytes)?;
        let version = recovered.last_version;
        let shared = Arc::new(Shared {
            db,
            wal: Wal::new(naming.clone(), opts.fsync),
            mem,
            tracker: Mutex::new(Tracker::new(version)),
            last_version: AtomicU64::new(version),
            flushed_version: AtomicU64::new(flushed),
            pins: Mutex::new(BTreeMap::new()),
            publish_gate: Mutex::new(()),
            flushing: Mutex::new(()),
            backup_running: AtomicBool::new(false),
            flush: FlushControl::default(),
            filter: KeyFilter::new(usize::try_from(keys).unwrap_or(usize::MAX)),
            closing: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            commit_groups: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            too_old: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            filtered_reads: AtomicU64::new(0),
            health: Health::default(),
            opts,
        });
        shared.settle_recovery(&naming, &recovered)?;

        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        let syncer = Syncer::start(shared.clone()).map_err(engine_err)?;
        let mut worker = CommitWorker {
            shared: shared.clone(),
            version,
            record: Vec::new(),
            failed: None,
            syncer,
            space: SpaceCheck::new(),
        };
        let worker = std::thread::Builder::new()
            .name("selvage-commit".into())
            .spawn(move || worker.run(rx))
            .map_err(engine_err)?;
        let flusher_shared = shared.clone();
        let flusher = match std::thread::Builder::new().name("selvage-flush".into()).spawn(move || {
            background_priority();
            flusher_shared.run_flusher()
        }) {
            Ok(handle) => handle,
            Err(e) => {
                // Stop the commit thread again: closing its queue is enough.
                drop(tx);
                let _ = worker.join();
                return Err(engine_err(e));
            }
        };
        let filler_shared = shared.clone();
        let filler = std::thread::Builder::new()
            .name("selvage-filter".into())
            .spawn(move || {
                background_priority();
                if let Err(e) = filler_shared.fill_filter() {
                    tracing::warn!(error = %e, "cannot fill the key filter; point reads go to redb");
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "cannot start filling the key filter; point reads go to redb"))
            .ok();
        tracing::debug!(path = %path.display(), version, flushed, "embedded store open");
        Ok(Arc::new_cyclic(|me| EmbeddedStore {
            me: me.clone(),
            shared,
            commits: Some(tx),
            worker: Some(worker),
            flusher: Some(flusher),
            filler,
        }))
    }

    /// The version of the last commit (0 for a new store).
    pub fn last_version(&self) -> u64 {
        self.shared.last_version.load(Ordering::Acquire)
    }

    /// The version up to which every commit is in the redb file (the rest is in the
    /// write-ahead log and the memtable).
    pub fn flushed_version(&self) -> u64 {
        self.shared.flushed_version.load(Ordering::Acquire)
    }

    /// Counters since the store was opened.
    pub fn stats(&self) -> EmbeddedStats {
        let s = &self.shared;
        EmbeddedStats {
            commits: s.commits.load(Ordering::Relaxed),
            commit_groups: s.commit_groups.load(Ordering::Relaxed),
            conflicts: s.conflicts.load(Ordering::Relaxed),
            too_old: s.too_old.load(Ordering::Relaxed),
            flushes: s.flushes.load(Ordering::Relaxed),
            filtered_reads: s.filtered_reads.load(Ordering::Relaxed),
            filter_ready: s.filter.is_ready(),
        }
    }

    /// Writes every commit acknowledged so far into the redb file (and drops the log segments
    /// that held them); returns once that is durable.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.flush_state();
            if state.shutdown {
                return Err(StoreError::Unavailable("the store is closing".into()));
            }
            state.waiters.push(tx);
        }
        self.shared.flush.wake.notify_one();
        rx.await.map_err(|_| StoreError::Unavailable("the flush thread has stopped".into()))?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the commit thread finish its current group and exit; then the
        // flusher writes the memtable into redb and exits. Joining them (and the filter's
        // fill, told to stop) means the file is closed (and may be reopened) once the last
        // handle is gone.
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Some(filler) = self.filler.take() {
            if filler.join().is_err() {
                tracing::error!("embedded store filter thread panicked");
            }
        }
        drop(self.commits.take());
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("embedded store commit thread panicked");
            }
        }
        self.shared.flush_state().shutdown = true;
        self.shared.flush.wake.notify_all();
        if let Some(flusher) = self.flusher.take() {
            if flusher.join().is_err() {
                tracing::error!("embedded store flush thread panicked");
            }
        }
        // A clean shutdown leaves no log behind, spare segments included.
        self.shared.wal.discard_spares();
    }
}

#[async_trait]
impl KvStore for EmbeddedStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        Ok(Box::new(self.begin_txn()?))
    }

    async fn backup(&self) -> Result<BackupStart> {
        self.start_backup().await
    }

    fn engine(&self) -> &'static str {
        "embedded"
    }

    fn write_problem(&self) -> Option<String> {
        self.shared.health.problem()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::store::Store;

    pub(super) fn wal_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".wal.")))
            .collect();
        files.sort();
        files
    }

    /// Options under which only [`EmbeddedStore::flush`] and shutdown flush the memtable.
    pub(super) fn manual_flush() -> EmbeddedOptions {
        EmbeddedOptions {
            flush_interval: Duration::from_secs(3600),
            memtable_bytes: usize::MAX / 8,
            memtable_entries: usize::MAX / 8,
            ..EmbeddedOptions::default()
        }
    }

    /// Options under which the flusher runs all the time, underneath everything.
    pub(super) fn constant_flush() -> EmbeddedOptions {
        EmbeddedOptions {
            flush_interval: Duration::from_millis(1),
            memtable_bytes: 256,
            memtable_entries: 2,
            ..EmbeddedOptions::default()
        }
    }

    pub(super) async fn write_key(store: &Store, key: &[u8], value: &[u8]) {
        let mut tx = store.begin().await.unwrap();
        tx.set(key, value).unwrap();
        tx.commit().await.unwrap();
    }

    /// Waits for the key filter's initial fill.
    async fn filter_filled(store: &EmbeddedStore) {
        // The fill runs at background priority: give a loaded machine time.
        for _ in 0..3000 {
            if store.stats().filter_ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the key filter was not filled in 30 s");
    }

    /// Point reads of keys redb does not hold are answered by the key filter, and no key redb
    /// holds is ever hidden by it: after a flush, after a removal, and after a reopen, which
    /// fills the filter again from the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_key_filter_answers_absent_keys_and_never_hides_stored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let present = |i: u32| format!("present/{i:05}").into_bytes();
        let absent = |i: u32| format!("absent/{i:05}").into_bytes();
        for round in 0..2 {
            let embedded = EmbeddedStore::open(&path, manual_flush()).unwrap();
            let store: Store = embedded.clone();
            filter_filled(&embedded).await;
            if round == 0 {
                for batch in 0..20 {
                    let mut tx = store.begin().await.unwrap();
                    for i in batch * 250..(batch + 1) * 250 {
                        tx.set(&present(i), &i.to_le_bytes()).unwrap();
                    }
                    tx.commit().await.unwrap();
                }
                let mut tx = store.begin().await.unwrap();
                tx.clear(&present(7)).unwrap();
                tx.commit().await.unwrap();
                embedded.flush().await.unwrap();
            }
            let before = embedded.stats().filtered_reads;
            let mut tx = store.begin().await.unwrap();
            for i in 0..5_000u32 {
                let expected = (i != 7).then(|| i.to_le_bytes().to_vec());
                assert_eq!(tx.get(&present(i)).await.unwrap(), expected, "round {round}: key {i}");
            }
            let after_present = embedded.stats().filtered_reads;
            for i in 0..5_000 {
                assert_eq!(tx.get(&absent(i)).await.unwrap(), None);
            }
            let filtered = embedded.stats().filtered_reads - after_present;
            // Stored keys always reach redb (only the removed one may be filtered, and isn't).
            assert!(after_present - before <= 1, "round {round}: a stored key was filtered");
            assert!(filtered >= 4_900, "round {round}: only {filtered} of 5,000 absent keys skipped redb");
            drop(tx);
            drop(store);
            drop(embedded);
        }
    }
}
