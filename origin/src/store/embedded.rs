//! The embedded storage engine: FoundationDB's transaction model on one redb file, with a
//! write-ahead log and a versioned memtable in front of it.
//!
//! This is the default engine and the one every test runs on. It keeps FoundationDB's semantics
//! and limits (see [`super`]) so that code which would fail on FoundationDB fails here too. Its
//! write path is the one FoundationDB's storage servers use: a commit is durable once it is in
//! a log; the B-tree catches up later, in bulk.
//!
//! - **Group commit.** One dedicated commit thread (not a tokio worker: it blocks on fsync) takes
//!   every pending commit request, checks each for conflicts in arrival order, resolves the
//!   accepted ones (atomic adds against the newest committed value, versionstamps filled in)
//!   and appends them as **one record** to the write-ahead log (module `wal`). While a helper thread
//!   syncs the record (with `fsync` on, the only fsync on the acknowledgement path), the commit
//!   thread adds the group to the memtable, where no reader sees it yet; once the sync is done
//!   it makes the group visible by advancing the last committed version, and only then answers:
//!   acknowledged means in the log and synced. If the log cannot be written, the group is taken
//!   out of the memtable, answered [`StoreError::CommitUnknown`], and the store refuses further
//!   commits until it is reopened (the log's tail is unknown; recovery sorts it out).
//! - **Memtable** (module `memtable`). Committed mutations not yet in redb, by version, shared by
//!   readers. Writing a group costs an append and an fsync instead of a copy-on-write of every
//!   B-tree page it touches, which is what a group of writes scattered over many channels costs
//!   in redb.
//! - **Flusher.** A background thread freezes the memtable's active table and writes it into
//!   redb in key order, cleared ranges first, in durable write transactions of a few thousand
//!   writes each, through a cursor that splices each run of new keys falling between two
//!   existing ones (a channel's new messages, the feed's new events) into the tree as whole
//!   leaves; the last one also records the new **flushed version** in the meta table. A
//!   helper thread merges the table's runs and puts their keys in the key filter a couple of
//!   chunks ahead of the redb writes. Then it deletes the log segments that made obsolete.
//!   Writing many groups at once touches each B-tree page once per flush rather than once
//!   per group. It runs every
//!   [`EmbeddedOptions::flush_interval`], when the memtable passes
//!   [`EmbeddedOptions::memtable_bytes`] or [`EmbeddedOptions::memtable_entries`], on
//!   [`EmbeddedStore::flush`] and at shutdown. Past four times those sizes the commit thread
//!   waits for it (backpressure) rather than letting the memtable grow without bound.
//! - **Snapshot reads.** A transaction takes a redb read transaction, reads the flushed version
//!   `F` it holds, then takes the last committed version `V` as its read version: it sees the
//!   memtable's commits in `(F, V]` over that redb snapshot, plus its own buffered writes
//!   (read-your-writes; module `buffer`: found by key hash, sorted once at commit). Range
//!   reads merge the three, with the memtable's cleared ranges hiding redb keys. A flushed memtable table is kept while a live transaction's snapshot predates
//!   the flush, and at most `max_txn_age` (transactions older than that fail with
//!   [`StoreError::TooOld`]). A point read the memtable cannot answer asks the **key filter**
//!   (module `filter`: a Bloom filter of redb's keys, filled on open and kept by the flusher)
//!   before walking the B-tree, so a key redb does not hold — every new message's dedup
//!   entry — costs no B-tree walk.
//! - **Optimistic serializability.** Reads record read conflict ranges, mutations record write
//!   conflicts. At commit, a transaction fails with [`StoreError::Conflict`] if a transaction
//!   committed after its read version wrote into its read conflict set. The write sets of recent
//!   commits are kept in memory for this check (bounded by age and by a key count); a
//!   transaction older than what is retained fails with [`StoreError::TooOld`].
//! - **Versions.** Each accepted transaction gets its own `u64` commit version and the
//!   versionstamp `Versionstamp::new(version, 0)`; versions are in every log record and the
//!   flushed one is in redb, so versionstamps are unique and increasing across restarts.
//! - **Recovery.** Opening reads the flushed version from redb and replays the log records after
//!   it, stopping at the first torn or corrupt record (a commit that was never acknowledged).
//!   The replayed commits are written into redb in one durable transaction, the old segments
//!   deleted, and versions continue after the last replayed one.
//! - **Watches** resolve once a commit after the watching transaction's read version writes the
//!   key.
//!
//! With `fsync` off the log is synced at most every second on the commit path, and the flusher
//! makes everything durable in redb every `flush_interval`; a crash may lose about a second.
//! Dropping the last handle flushes the memtable, so a clean reopen replays nothing.
//!
//! Reads run inline on the calling task: a memtable lookup and a redb B-tree walk over pages
//! that are almost always in its page cache cost about what a hand-off to a blocking thread
//! would. Everything that waits on the disk runs on the commit and flush threads.

mod buffer;
mod commit;
mod conflicts;
mod filter;
mod flush;
mod health;
mod memtable;
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
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use self::{
    commit::{CommitRequest, CommitWorker, Syncer, COMMIT_QUEUE},
    conflicts::Tracker,
    filter::KeyFilter,
    flush::{background_priority, FlushControl},
    health::{Health, SpaceCheck},
    memtable::Memtable,
    wal::Wal,
};
use super::{KvStore, KvTxn, Result, StoreError, MAX_TXN_AGE};

/// The user data: FoundationDB's flat, ordered keyspace.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Engine bookkeeping, outside the user keyspace.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The flushed version in [`META`]: every commit up to it is in [`KV`] (later ones are in the
/// write-ahead log).
const VERSION_KEY: &str = "version";

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
            if keys % 4096 == 0 {
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

/// Replays segments given as `(first version, bytes)` after `flushed`, as opening a store
/// would, and answers the versions applied, or why the log was refused. For the fuzz target
/// of the log's recovery; not part of the store's interface.
#[doc(hidden)]
pub fn replay_log_for_fuzzing(segments: &[(u64, Vec<u8>)], flushed: u64) -> std::io::Result<Vec<u64>> {
    let files: Vec<(u64, &Path, Vec<u8>)> =
        segments.iter().map(|(first, bytes)| (*first, Path::new("fuzz"), bytes.clone())).collect();
    let mut versions = Vec::new();
    wal::replay(&files, flushed, |v, _| versions.push(v))?;
    Ok(versions)
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, replays its write-ahead log (files
    /// `<stem>.wal.<version>` next to it) and starts its commit and flush threads.
    pub fn open(path: &Path, opts: EmbeddedOptions) -> Result<Arc<Self>> {
        let db = redb::Builder::new().set_cache_size(opts.cache_bytes).create(path).map_err(engine_err)?;
        let (flushed, keys) = {
            let wtx = db.begin_write().map_err(engine_err)?;
            let found = {
                let kv = wtx.open_table(KV).map_err(engine_err)?;
                let meta = wtx.open_table(META).map_err(engine_err)?;
                let v = meta.get(VERSION_KEY).map_err(engine_err)?.map(|g| g.value());
                (v.unwrap_or(0), kv.len().map_err(engine_err)?)
            };
            wtx.commit().map_err(engine_err)?;
            found
        };
        let naming = wal::Naming::new(path);
        let mem = Memtable::new(flushed);
        let recovered = {
            let mut w = mem.write();
            wal::recover(&naming, flushed, |version, mutations| {
                for m in mutations {
                    w.apply(version, m);
                }
                w.note_version(version);
            })
            .map_err(|e| StoreError::Engine(format!("cannot read the write-ahead log: {e}")))?
        };
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
        if recovered.replayed > 0 {
            shared.flush_all(false).map_err(|e| StoreError::Engine(format!("cannot flush the replayed log: {e}")))?;
            shared.retire();
            tracing::info!(transactions = recovered.replayed, version, "write-ahead log replayed");
        }
        // Every commit the old segments hold is in redb now.
        wal::remove_segments(&naming, &recovered.segments, shared.opts.fsync)
            .map_err(|e| StoreError::Engine(format!("cannot delete replayed log segments: {e}")))?;

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
    use crate::store::{RangeRead, Store};

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

    fn num(v: Option<Vec<u8>>) -> Option<u64> {
        v.map(|v| u64::from_be_bytes(v.try_into().unwrap()))
    }

    /// A value whose bytes are mostly zeros, of a length that varies with `i`: records full of
    /// them leave zeros wherever a recycled segment's new records end.
    fn zeroish(i: u64) -> Vec<u8> {
        let mut v = vec![0u8; ((i * 7919) % 3001) as usize];
        if i % 3 == 0 {
            // Bytes shaped like a record header of a made-up salt.
            v.extend_from_slice(&(i as u32).to_le_bytes());
            v.extend_from_slice(&[0; 4]);
            v.extend_from_slice(&i.to_le_bytes());
        }
        v
    }

    /// Child half of [`committed_data_survives_kill_9`] and
    /// [`acknowledged_commits_survive_kills_amid_recycled_segments`]: commits transactions of
    /// every kind of mutation and reports each acknowledged one on stdout until killed. With
    /// `SELVAGE_CRASH_CHILD_MODE=unflushed` nothing is ever flushed into redb, so everything
    /// survives in the write-ahead log only; with `recycled` the flusher runs every few
    /// milliseconds, so segments are retired and written over all the time, and the values are
    /// runs of zeros. The child goes on from the counter it finds.
    #[tokio::test]
    #[ignore = "run as a child process by committed_data_survives_kill_9"]
    async fn crash_child() {
        let Ok(path) = std::env::var("SELVAGE_CRASH_CHILD_DB") else {
            return;
        };
        let mode = std::env::var("SELVAGE_CRASH_CHILD_MODE").unwrap_or_default();
        let opts = match mode.as_str() {
            "unflushed" => manual_flush(),
            "recycled" => EmbeddedOptions { flush_interval: Duration::from_millis(5), ..EmbeddedOptions::default() },
            _ => EmbeddedOptions::default(),
        };
        let store = EmbeddedStore::open(Path::new(&path), opts).unwrap();
        let start = {
            let mut tx = store.begin().await.unwrap();
            num(tx.get(b"counter").await.unwrap()).unwrap_or(0) + 1
        };
        for i in start.. {
            let mut tx = store.begin().await.unwrap();
            tx.set(b"counter", &i.to_be_bytes()).unwrap();
            let value = if mode == "recycled" { zeroish(i) } else { b"x".to_vec() };
            tx.set(&[b"k/".as_slice(), &i.to_be_bytes()].concat(), &value).unwrap();
            tx.atomic_add(b"sum", 1).unwrap();
            tx.set_versionstamped_key(&[b"log/".as_slice(), &[0; 10]].concat(), 4, &i.to_be_bytes()).unwrap();
            if i % 5 == 0 {
                tx.clear_range(b"tmp/", b"tmp0").unwrap();
            } else {
                tx.set(&[b"tmp/".as_slice(), &i.to_be_bytes()].concat(), b"t").unwrap();
            }
            let c = tx.commit().await.unwrap();
            println!("acked {i} {}", c.versionstamp.version());
        }
    }

    /// Runs [`crash_child`] until it has acknowledged `acks` commits, then kills it with
    /// SIGKILL; returns the last acknowledged commit and its version.
    async fn run_and_kill_child(path: &Path, mode: &str, acks: u64) -> (u64, u64) {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::embedded::tests::crash_child", "--ignored", "--nocapture"])
            .env("SELVAGE_CRASH_CHILD_DB", path)
            .env("SELVAGE_CRASH_CHILD_MODE", mode)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let last = tokio::task::spawn_blocking(move || {
            let mut last = (0u64, 0u64);
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let mut parts = line.strip_prefix("acked ").map(|l| l.split(' ')).into_iter().flatten();
                if let (Some(i), Some(v)) = (parts.next(), parts.next()) {
                    last = (i.parse().unwrap(), v.parse().unwrap());
                    if last.0 >= acks {
                        break;
                    }
                }
            }
            last
        })
        .await
        .unwrap();
        assert!(last.0 >= acks, "the child stopped early");
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        last
    }

    /// Every acknowledged commit survives kill -9, whether it had reached redb or only the
    /// write-ahead log, and versions go on after the highest one recovered.
    #[tokio::test]
    async fn committed_data_survives_kill_9() {
        for (mode, acks) in [("default", 300), ("unflushed", 100)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("crash.redb");
            let (last_i, last_version) = run_and_kill_child(&path, mode, acks).await;
            if mode == "unflushed" {
                assert!(!wal_files(dir.path()).is_empty(), "nothing in the log to replay");
            }

            let store = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
            assert!(store.last_version() >= last_version, "{mode}");
            assert_eq!(store.flushed_version(), store.last_version(), "{mode}: the replay was not flushed");
            assert!(wal_files(dir.path()).is_empty(), "{mode}: replayed segments were kept");
            let mut tx = store.begin().await.unwrap();
            let counter = num(tx.get(b"counter").await.unwrap()).unwrap();
            assert!(counter >= last_i, "{mode}: acknowledged commit {last_i} lost (found {counter})");
            for i in 1..=counter {
                let key = [b"k/".as_slice(), &i.to_be_bytes()].concat();
                assert!(tx.get(&key).await.unwrap().is_some(), "{mode}: commit {i} lost");
            }
            assert_eq!(tx.get(b"sum").await.unwrap(), Some((counter as i64).to_le_bytes().to_vec()), "{mode}");
            let log = tx.get_range(&RangeRead::prefix(b"log")).await.unwrap();
            let logged: Vec<u64> = log.iter().map(|(_, v)| num(Some(v.clone())).unwrap()).collect();
            assert_eq!(logged, (1..=counter).collect::<Vec<_>>(), "{mode}: the log is out of order");
            let tmp = tx.get_range(&RangeRead::between(b"tmp/".to_vec(), b"tmp0".to_vec())).await.unwrap();
            assert_eq!(tmp.len() as u64, counter % 5, "{mode}: a clear_range was not replayed");
            let mut w = store.begin().await.unwrap();
            w.set(b"after", b"crash").unwrap();
            let c = w.commit().await.unwrap();
            assert!(c.versionstamp.version() > store.flushed_version(), "{mode}");
            assert!(c.versionstamp.version() > last_version, "{mode}");
        }
    }

    /// Kill after kill, with segments recycled every few milliseconds and values made of
    /// zeros, every acknowledged commit survives with its value, and versions never go back.
    #[tokio::test]
    async fn acknowledged_commits_survive_kills_amid_recycled_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.redb");
        let mut acked = 0;
        let mut version = 0;
        for round in 0..4 {
            let (last_i, last_version) = run_and_kill_child(&path, "recycled", acked + 400).await;
            assert!(last_version > version, "round {round}: versions went back");
            (acked, version) = (last_i, last_version);
            let store = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
            assert!(store.last_version() >= last_version, "round {round}");
            let mut tx = store.begin().await.unwrap();
            let counter = num(tx.get(b"counter").await.unwrap()).unwrap();
            assert!(counter >= last_i, "round {round}: acknowledged commit {last_i} lost (found {counter})");
            for i in 1..=counter {
                let key = [b"k/".as_slice(), &i.to_be_bytes()].concat();
                assert_eq!(tx.get(&key).await.unwrap(), Some(zeroish(i)), "round {round}: commit {i}");
            }
            assert_eq!(tx.get(b"sum").await.unwrap(), Some((counter as i64).to_le_bytes().to_vec()));
            let log = tx.get_range(&RangeRead::prefix(b"log")).await.unwrap();
            assert_eq!(log.len() as u64, counter, "round {round}: feed-like log entries");
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

    /// A record torn by a crash, garbage after the last record, or a record whose checksum
    /// fails ends the log there: the commits before it are recovered, nothing after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_log_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb"), manual_flush()).unwrap();
        let store_dyn: Store = store.clone();
        for i in 1..=10u64 {
            let mut tx = store_dyn.begin().await.unwrap();
            tx.set(&i.to_be_bytes(), b"v").unwrap();
            tx.atomic_add(b"n", 1).unwrap();
            tx.commit().await.unwrap();
        }
        // A crash image: the files as a kill -9 would leave them (nothing flushed yet).
        let image = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, image.path().join(path.file_name().unwrap())).unwrap();
        }
        drop(store_dyn);
        drop(store);

        let damage = |how: &str| {
            let copy = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(image.path()).unwrap() {
                let path = entry.unwrap().path();
                std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
            }
            let segments = wal_files(copy.path());
            assert_eq!(segments.len(), 1);
            let mut bytes = std::fs::read(&segments[0]).unwrap();
            match how {
                "torn" => bytes.truncate(bytes.len() - 3),
                "garbage" => bytes.extend_from_slice(&[0xa5; 11]),
                "bad checksum" => {
                    let at = bytes.len() - 2;
                    bytes[at] ^= 0x01;
                }
                _ => unreachable!(),
            }
            std::fs::write(&segments[0], bytes).unwrap();
            copy
        };
        for (how, survivors) in [("torn", 9u64), ("garbage", 10), ("bad checksum", 9)] {
            let copy = damage(how);
            let path = copy.path().join("s.redb");
            {
                let reopened = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
                assert_eq!(reopened.last_version(), survivors, "{how}");
                let store: Store = reopened.clone();
                let mut tx = store.begin().await.unwrap();
                for i in 1..=10u64 {
                    assert_eq!(tx.get(&i.to_be_bytes()).await.unwrap().is_some(), i <= survivors, "{how}: {i}");
                }
                assert_eq!(tx.get(b"n").await.unwrap(), Some((survivors as i64).to_le_bytes().to_vec()));
                let mut w = store.begin().await.unwrap();
                w.set(b"after", b"recovery").unwrap();
                let c = w.commit().await.unwrap();
                assert_eq!(c.versionstamp.version(), survivors + 1, "{how}: versions must continue");
            }
            // And the recovered store reopens cleanly, with the write after recovery.
            let again = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
            assert_eq!(again.last_version(), survivors + 1, "{how}");
            let store: Store = again;
            let mut tx = store.begin().await.unwrap();
            assert_eq!(tx.get(b"after").await.unwrap(), Some(b"recovery".to_vec()), "{how}");
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
