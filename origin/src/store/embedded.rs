//! The embedded storage engine: FoundationDB's transaction model on one redb file.
//!
//! This is the default engine and the one every test runs on. It keeps FoundationDB's semantics
//! and limits (see [`super`]) so that code which would fail on FoundationDB fails here too:
//!
//! - **Snapshot reads.** A transaction reads from a redb read transaction taken at
//!   [`KvStore::begin`], overlaid with its own buffered writes (read-your-writes).
//! - **Optimistic serializability.** Reads record read conflict ranges, mutations record write
//!   conflicts. At commit, a transaction fails with [`StoreError::Conflict`] if a transaction
//!   committed after its read version wrote into its read conflict set. The write sets of recent
//!   commits are kept in memory for this check (bounded by age and by a key count); a
//!   transaction older than what is retained fails with [`StoreError::TooOld`].
//! - **Group commit.** One dedicated commit thread (not a tokio worker: it blocks on fsync) takes
//!   every pending commit request, checks each for conflicts in arrival order, applies the
//!   accepted ones in one redb write transaction, makes it durable, then answers them all.
//! - **Versions.** A `u64` commit version is persisted with the data in the same redb write
//!   transaction. Each accepted transaction of a group gets its own version and the
//!   versionstamp `Versionstamp::new(version, 0)`, so versionstamps are unique and increasing,
//!   also across restarts. A transaction's read version is the version its snapshot saw.
//! - **Watches** resolve once a commit after the watching transaction's read version writes the
//!   key.
//!
//! Reads run inline on the calling task: a redb read is a B-tree walk over pages that are
//! almost always in its page cache, as cheap as the bookkeeping a hand-off to a blocking thread
//! would cost. Everything that can wait on the disk (write transactions, fsync) runs on the
//! commit thread.

use std::{
    cmp::Ordering as CmpOrdering,
    collections::{BTreeMap, VecDeque},
    fmt,
    ops::Bound,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError, Weak,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{
    backoff_pause, Committed, KeyValue, KvStore, KvTxn, RangeRead, Result, StoreError, Versionstamp, Watch,
    MAX_KEY_BYTES, MAX_TXN_AGE, MAX_TXN_BYTES, MAX_VALUE_BYTES,
};

/// The user data: FoundationDB's flat, ordered keyspace.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Engine bookkeeping, outside the user keyspace.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The last commit version, in [`META`].
const VERSION_KEY: &str = "version";

/// Commit requests waiting for the commit thread; senders wait when it is full.
const COMMIT_QUEUE: usize = 1024;
/// With `fsync` off, how often a commit is made durable anyway, so that a crash loses at most
/// this much and redb can reclaim the pages of non-durable commits.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How many watch registrations between sweeps of watchers whose futures were dropped.
const WATCH_SWEEP_EVERY: usize = 1024;

/// Settings of an [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Make every commit durable (fsync) before it is acknowledged. Off, commits are
    /// acknowledged from memory and made durable at least every second and at shutdown, so a
    /// crash may lose the last second.
    pub fsync: bool,
    /// Bytes of redb page cache.
    pub cache_bytes: usize,
    /// The longest a transaction may live, FoundationDB's 5 s by default. Tests shorten it.
    pub max_txn_age: Duration,
    /// How many written keys (and cleared ranges) of recent commits are kept for conflict
    /// checks; a transaction whose read version predates the oldest retained commit fails with
    /// [`StoreError::TooOld`].
    pub max_retained_writes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            fsync: true,
            cache_bytes: 256 * 1024 * 1024,
            max_txn_age: MAX_TXN_AGE,
            max_retained_writes: 2_000_000,
        }
    }
}

/// Commit counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Transactions committed with writes.
    pub commits: u64,
    /// redb write transactions, each carrying one group of commits.
    pub commit_groups: u64,
    /// Commits refused with [`StoreError::Conflict`].
    pub conflicts: u64,
    /// Commits refused with [`StoreError::TooOld`].
    pub too_old: u64,
}

/// The embedded engine. Open it with [`EmbeddedStore::open`]; dropping the last handle (every
/// transaction holds one) stops the commit thread and closes the file.
pub struct EmbeddedStore {
    /// Lets `begin(&self)` hand transactions a strong handle on the store.
    me: Weak<EmbeddedStore>,
    db: Arc<Database>,
    shared: Arc<Shared>,
    /// `None` only while dropping.
    commits: Option<mpsc::Sender<CommitRequest>>,
    /// `None` only while dropping.
    worker: Option<JoinHandle<()>>,
}

/// State shared by transactions and the commit thread.
struct Shared {
    opts: EmbeddedOptions,
    tracker: Mutex<Tracker>,
    last_version: AtomicU64,
    commits: AtomicU64,
    commit_groups: AtomicU64,
    conflicts: AtomicU64,
    too_old: AtomicU64,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        // Every critical section leaves the tracker consistent between statements that could
        // panic, so a poisoned lock is still safe to use.
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("last_version", &self.last_version())
            .field("stats", &self.stats())
            .finish()
    }
}

fn engine_err(e: impl fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path` and starts its commit thread.
    pub fn open(path: &Path, opts: EmbeddedOptions) -> Result<Arc<Self>> {
        let db = redb::Builder::new().set_cache_size(opts.cache_bytes).create(path).map_err(engine_err)?;
        let version = {
            let wtx = db.begin_write().map_err(engine_err)?;
            let version = {
                wtx.open_table(KV).map_err(engine_err)?;
                let meta = wtx.open_table(META).map_err(engine_err)?;
                let v = meta.get(VERSION_KEY).map_err(engine_err)?.map(|g| g.value());
                v.unwrap_or(0)
            };
            wtx.commit().map_err(engine_err)?;
            version
        };
        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::new(version)),
            last_version: AtomicU64::new(version),
            commits: AtomicU64::new(0),
            commit_groups: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            too_old: AtomicU64::new(0),
            opts,
        });
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        let mut worker = CommitWorker { db: db.clone(), shared: shared.clone(), version, last_durable: Instant::now() };
        let handle = std::thread::Builder::new()
            .name("selvage-commit".into())
            .spawn(move || worker.run(rx))
            .map_err(engine_err)?;
        tracing::debug!(path = %path.display(), version, "embedded store open");
        Ok(Arc::new_cyclic(|me| EmbeddedStore { me: me.clone(), db, shared, commits: Some(tx), worker: Some(handle) }))
    }

    /// The version of the last commit (0 for a new store).
    pub fn last_version(&self) -> u64 {
        self.shared.last_version.load(Ordering::Acquire)
    }

    /// Commit counters since the store was opened.
    pub fn stats(&self) -> EmbeddedStats {
        EmbeddedStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            commit_groups: self.shared.commit_groups.load(Ordering::Relaxed),
            conflicts: self.shared.conflicts.load(Ordering::Relaxed),
            too_old: self.shared.too_old.load(Ordering::Relaxed),
        }
    }

    fn begin_txn(&self) -> Result<EmbeddedTxn> {
        let store = self.me.upgrade().ok_or_else(|| StoreError::Unavailable("the store is closing".into()))?;
        let started = Instant::now();
        let rtx = self.db.begin_read().map_err(engine_err)?;
        let meta = rtx.open_table(META).map_err(engine_err)?;
        let read_version = meta.get(VERSION_KEY).map_err(engine_err)?.map(|g| g.value());
        let snapshot = rtx.open_table(KV).map_err(engine_err)?;
        Ok(EmbeddedTxn {
            snapshot,
            store,
            read_version: read_version.unwrap_or(0),
            started,
            writes: BTreeMap::new(),
            cleared: BTreeMap::new(),
            versionstamped: Vec::new(),
            reads: Vec::new(),
            watches: Vec::new(),
            size: 0,
            deferred: None,
        })
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the commit thread finish its current group and exit; joining
        // it means the file is closed (and may be reopened) once the last handle is gone.
        drop(self.commits.take());
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("embedded store commit thread panicked");
            }
        }
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
}

/// A buffered mutation of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Set(Vec<u8>),
    Clear,
    /// An atomic add whose base value is only known at commit.
    Add(i64),
}

impl Op {
    /// The value a read sees, given the snapshot's value underneath.
    fn resolve(&self, base: Option<&[u8]>) -> Option<Vec<u8>> {
        match self {
            Op::Set(v) => Some(v.clone()),
            Op::Clear => None,
            Op::Add(d) => Some(add_le(base, *d)),
        }
    }
}

/// FoundationDB's `ADD` with an 8-byte parameter: the existing value, zero-extended or truncated
/// to 8 bytes, plus `delta`, little endian, wrapping.
fn add_le(base: Option<&[u8]>, delta: i64) -> Vec<u8> {
    let mut b = [0u8; 8];
    if let Some(v) = base {
        let n = v.len().min(8);
        b[..n].copy_from_slice(&v[..n]);
    }
    i64::from_le_bytes(b).wrapping_add(delta).to_le_bytes().to_vec()
}

/// A snapshot range entry, copied out of redb's pages.
type SnapEntry = (redb::AccessGuard<'static, &'static [u8]>, redb::AccessGuard<'static, &'static [u8]>);

fn owned_entry(item: Result<SnapEntry, redb::StorageError>) -> Result<KeyValue, redb::StorageError> {
    item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
}

/// The smallest key after `key`.
fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// A set of key ranges `[begin, end)`, sorted and disjoint.
type RangeSet = Vec<(Vec<u8>, Vec<u8>)>;

/// Sorts and merges ranges into a [`RangeSet`], dropping empty ones.
fn merge_ranges(mut ranges: Vec<(Vec<u8>, Vec<u8>)>) -> RangeSet {
    ranges.retain(|(b, e)| b < e);
    ranges.sort_unstable();
    let mut out: RangeSet = Vec::with_capacity(ranges.len());
    for (b, e) in ranges {
        match out.last_mut() {
            Some(last) if b <= last.1 => {
                if e > last.1 {
                    last.1 = e;
                }
            }
            _ => out.push((b, e)),
        }
    }
    out
}

fn range_set_contains(set: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> bool {
    let i = set.partition_point(|(b, _)| b.as_slice() <= key);
    i > 0 && key < set[i - 1].1.as_slice()
}

fn range_set_overlaps(set: &[(Vec<u8>, Vec<u8>)], begin: &[u8], end: &[u8]) -> bool {
    let i = set.partition_point(|(_, e)| e.as_slice() <= begin);
    i < set.len() && set[i].0.as_slice() < end
}

/// What one committed transaction wrote: its write conflict set.
#[derive(Debug)]
struct WriteSet {
    version: u64,
    /// When it was committed, for age-based eviction.
    at: Instant,
    /// Keys set, cleared or added to, sorted and unique.
    keys: Vec<Vec<u8>>,
    /// Cleared ranges, sorted and disjoint.
    ranges: RangeSet,
}

impl WriteSet {
    fn weight(&self) -> usize {
        self.keys.len() + self.ranges.len()
    }

    /// Whether this wrote anything in `reads`.
    fn intersects(&self, reads: &[(Vec<u8>, Vec<u8>)]) -> bool {
        if reads.is_empty() {
            return false;
        }
        let keys_hit = if self.keys.len() <= reads.len() {
            self.keys.iter().any(|k| range_set_contains(reads, k))
        } else {
            reads.iter().any(|(b, e)| {
                let i = self.keys.partition_point(|k| k < b);
                i < self.keys.len() && self.keys[i] < *e
            })
        };
        keys_hit || self.ranges.iter().any(|(b, e)| range_set_overlaps(reads, b, e))
    }

    /// Whether this wrote `key`.
    fn touches(&self, key: &[u8]) -> bool {
        self.keys.binary_search_by(|k| k.as_slice().cmp(key)).is_ok() || range_set_contains(&self.ranges, key)
    }
}

/// Recent commits' write sets and registered watches, under one lock.
struct Tracker {
    /// Write sets of commits, oldest first, versions increasing.
    history: VecDeque<WriteSet>,
    /// Sum of the weights in `history`.
    retained: usize,
    /// Every commit with a version above this is in `history`.
    complete_after: u64,
    /// Pending watches by key. Usually empty; firing checks that first.
    watchers: BTreeMap<Vec<u8>, Vec<oneshot::Sender<()>>>,
    /// Registrations since the last sweep.
    registrations: usize,
}

impl Tracker {
    fn new(version: u64) -> Self {
        Tracker {
            history: VecDeque::new(),
            retained: 0,
            complete_after: version,
            watchers: BTreeMap::new(),
            registrations: 0,
        }
    }

    /// Write sets of commits after `version`.
    fn newer_than(&self, version: u64) -> impl Iterator<Item = &WriteSet> {
        let i = self.history.partition_point(|w| w.version <= version);
        self.history.range(i..)
    }

    /// Registers a watch on `key` for commits after `since` (other than `own`, the watching
    /// transaction's own commit), firing it at once if a retained commit already wrote it, or if
    /// commits after `since` are no longer retained (a spurious wake-up, which FoundationDB's
    /// watches allow too, rather than a missed one).
    fn register_watch(&mut self, key: Vec<u8>, tx: oneshot::Sender<()>, since: u64, own: Option<u64>) {
        let already =
            since < self.complete_after || self.newer_than(since).any(|w| Some(w.version) != own && w.touches(&key));
        if already {
            let _ = tx.send(());
            return;
        }
        let list = self.watchers.entry(key).or_default();
        list.retain(|s| !s.is_closed());
        list.push(tx);
        self.registrations += 1;
        if self.registrations >= WATCH_SWEEP_EVERY {
            self.registrations = 0;
            self.watchers.retain(|_, list| {
                list.retain(|s| !s.is_closed());
                !list.is_empty()
            });
        }
    }

    /// Fires every watch on something `ws` wrote.
    fn fire(&mut self, ws: &WriteSet) {
        if self.watchers.is_empty() {
            return;
        }
        let mut hit: Vec<Vec<u8>> =
            ws.keys.iter().filter(|k| self.watchers.contains_key(k.as_slice())).cloned().collect();
        for (b, e) in &ws.ranges {
            let bounds = (Bound::Included(b.as_slice()), Bound::Excluded(e.as_slice()));
            hit.extend(self.watchers.range::<[u8], _>(bounds).map(|(k, _)| k.clone()));
        }
        for k in hit {
            for tx in self.watchers.remove(&k).into_iter().flatten() {
                let _ = tx.send(());
            }
        }
    }

    fn push(&mut self, ws: WriteSet) {
        self.retained += ws.weight();
        self.history.push_back(ws);
    }

    /// Forgets write sets older than `max_age` or beyond `max_weight` retained keys.
    fn evict(&mut self, max_age: Duration, max_weight: usize) {
        while let Some(front) = self.history.front() {
            if front.at.elapsed() <= max_age && self.retained <= max_weight {
                break;
            }
            self.retained -= front.weight();
            self.complete_after = front.version;
            self.history.pop_front();
        }
    }
}

/// A transaction handed to the commit thread.
struct CommitRequest {
    read_version: u64,
    reads: RangeSet,
    cleared: RangeSet,
    /// Sorted by key.
    ops: Vec<(Vec<u8>, Op)>,
    versionstamped: Vec<VersionstampedSet>,
    watches: Vec<(Vec<u8>, oneshot::Sender<()>)>,
    reply: oneshot::Sender<Result<Committed>>,
}

/// A `set_versionstamped_key` waiting for its commit's versionstamp.
struct VersionstampedSet {
    key: Vec<u8>,
    offset: usize,
    value: Vec<u8>,
}

/// A request that passed the conflict check, with its place in the group.
struct Accepted {
    req: CommitRequest,
    version: u64,
    /// The versionstamped keys with the versionstamp filled in.
    stamped_keys: Vec<Vec<u8>>,
    write_set: WriteSet,
}

/// The commit thread's state.
struct CommitWorker {
    db: Arc<Database>,
    shared: Arc<Shared>,
    /// The last persisted commit version.
    version: u64,
    last_durable: Instant,
}

impl CommitWorker {
    fn run(&mut self, mut rx: mpsc::Receiver<CommitRequest>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while let Ok(req) = rx.try_recv() {
                group.push(req);
            }
            self.commit_group(group);
        }
        tracing::debug!(version = self.version, "embedded store commit thread stopped");
    }

    fn commit_group(&mut self, group: Vec<CommitRequest>) {
        let shared = self.shared.clone();
        let opts = &shared.opts;
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
                    .any(|w| w.intersects(&req.reads));
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
        let durable = opts.fsync || self.last_durable.elapsed() >= CHECKPOINT_INTERVAL;
        let new_version = self.version + accepted.len() as u64;
        if let Err(e) = self.apply(&accepted, new_version, durable) {
            tracing::error!(error = %e, "embedded store commit failed");
            for a in accepted {
                let _ = a.req.reply.send(Err(StoreError::Engine(e.clone())));
            }
            return;
        }
        if durable {
            self.last_durable = Instant::now();
        }
        self.version = new_version;
        shared.last_version.store(new_version, Ordering::Release);
        shared.commit_groups.fetch_add(1, Ordering::Relaxed);
        shared.commits.fetch_add(accepted.len() as u64, Ordering::Relaxed);
        tracing::trace!(group = accepted.len(), version = new_version, "group committed");

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
                let Accepted { req, version, mut write_set, .. } = a;
                write_set.at = now;
                tracker.push(write_set);
                registrations.push((req.watches, req.read_version, version));
                replies.push((req.reply, version));
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

    /// Writes a group in one redb write transaction.
    fn apply(&self, accepted: &[Accepted], new_version: u64, durable: bool) -> std::result::Result<(), String> {
        let s = |e: &dyn fmt::Display| e.to_string();
        let mut wtx = self.db.begin_write().map_err(|e| s(&e))?;
        let durability = if durable { Durability::Immediate } else { Durability::None };
        wtx.set_durability(durability).map_err(|e| s(&e))?;
        {
            let mut kv = wtx.open_table(KV).map_err(|e| s(&e))?;
            for a in accepted {
                let req = &a.req;
                for (b, e) in &req.cleared {
                    kv.retain_in(b.as_slice()..e.as_slice(), |_, _| false).map_err(|e| s(&e))?;
                }
                for (key, op) in &req.ops {
                    match op {
                        Op::Set(v) => {
                            kv.insert(key.as_slice(), v.as_slice()).map_err(|e| s(&e))?;
                        }
                        Op::Clear => {
                            kv.remove(key.as_slice()).map_err(|e| s(&e))?;
                        }
                        Op::Add(d) => {
                            let current = kv.get(key.as_slice()).map_err(|e| s(&e))?;
                            let sum = add_le(current.as_ref().map(|g| g.value()), *d);
                            drop(current);
                            kv.insert(key.as_slice(), sum.as_slice()).map_err(|e| s(&e))?;
                        }
                    }
                }
                // Versionstamped keys go last rather than in issue order: their keys hold a
                // versionstamp nothing else could have named, except a `clear_range` issued
                // after them over a range that happens to cover the stamp, which they survive.
                for (set, key) in req.versionstamped.iter().zip(&a.stamped_keys) {
                    kv.insert(key.as_slice(), set.value.as_slice()).map_err(|e| s(&e))?;
                }
            }
            let mut meta = wtx.open_table(META).map_err(|e| s(&e))?;
            meta.insert(VERSION_KEY, new_version).map_err(|e| s(&e))?;
        }
        wtx.commit().map_err(|e| s(&e))
    }
}

impl Accepted {
    fn new(req: CommitRequest, version: u64) -> Self {
        let stamp = Versionstamp::new(version, 0);
        let stamped_keys: Vec<Vec<u8>> = req
            .versionstamped
            .iter()
            .map(|set| {
                let mut key = set.key.clone();
                // The offset was checked against the key length when the mutation was buffered.
                key[set.offset..set.offset + 10].copy_from_slice(&stamp.0);
                key
            })
            .collect();
        let mut keys: Vec<Vec<u8>> = req.ops.iter().map(|(k, _)| k.clone()).collect();
        if !stamped_keys.is_empty() {
            keys.extend(stamped_keys.iter().cloned());
            keys.sort_unstable();
            keys.dedup();
        }
        let write_set = WriteSet { version, at: Instant::now(), keys, ranges: req.cleared.clone() };
        Accepted { req, version, stamped_keys, write_set }
    }
}

/// An embedded transaction: a redb snapshot plus buffered writes.
struct EmbeddedTxn {
    /// Declared first so the redb read transaction ends before the store handle goes.
    snapshot: ReadOnlyTable<&'static [u8], &'static [u8]>,
    store: Arc<EmbeddedStore>,
    read_version: u64,
    started: Instant,
    /// Buffered mutations of single keys; they override the snapshot and `cleared`.
    writes: BTreeMap<Vec<u8>, Op>,
    /// Ranges cleared by this transaction, begin → end, disjoint.
    cleared: BTreeMap<Vec<u8>, Vec<u8>>,
    versionstamped: Vec<VersionstampedSet>,
    /// Read conflict ranges, unmerged.
    reads: Vec<(Vec<u8>, Vec<u8>)>,
    watches: Vec<(Vec<u8>, oneshot::Sender<()>)>,
    /// Bytes of mutations and conflict ranges, as FoundationDB roughly counts them.
    size: usize,
    /// An error from a refused mutation, reported again at commit (as FoundationDB does).
    deferred: Option<StoreError>,
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::KeyTooLarge(key.len()));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge(value.len()));
    }
    Ok(())
}

/// Bytes a point mutation costs: the mutation and its write conflict range `[k, k\0)`.
fn point_cost(key: &[u8], value_len: usize) -> usize {
    key.len() + value_len + 2 * key.len() + 1
}

impl EmbeddedTxn {
    fn opts(&self) -> &EmbeddedOptions {
        &self.store.shared.opts
    }

    /// Remembers `err` for the commit and returns it.
    fn refuse<T>(&mut self, err: StoreError) -> Result<T> {
        if self.deferred.is_none() {
            self.deferred = Some(err.clone());
        }
        Err(err)
    }

    /// Checks a mutation against the key, value and transaction limits; a refused mutation
    /// fails the commit too.
    fn admit(&mut self, key: &[u8], value: Option<&[u8]>, cost: usize) -> Result<()> {
        if let Err(e) = check_key(key).and_then(|()| value.map_or(Ok(()), check_value)) {
            return self.refuse(e);
        }
        self.size += cost;
        if self.size > MAX_TXN_BYTES {
            return self.refuse(StoreError::TransactionTooLarge(self.size));
        }
        Ok(())
    }

    fn check_age(&self) -> Result<()> {
        if self.started.elapsed() > self.opts().max_txn_age {
            return Err(StoreError::TooOld);
        }
        Ok(())
    }

    fn add_read_conflict(&mut self, begin: Vec<u8>, end: Vec<u8>) {
        self.size += begin.len() + end.len();
        self.reads.push((begin, end));
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        let upto = (Bound::Unbounded, Bound::Included(key));
        self.cleared.range::<[u8], _>(upto).next_back().is_some_and(|(_, end)| key < end.as_slice())
    }

    fn is_read_only(&self) -> bool {
        self.writes.is_empty() && self.cleared.is_empty() && self.versionstamped.is_empty()
    }

    fn snapshot_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self.snapshot.get(key).map_err(engine_err)?;
        Ok(value.map(|g| g.value().to_vec()))
    }

    /// The merged range read; also whether `limit` cut it short.
    fn read_range(&self, r: &RangeRead) -> Result<(Vec<KeyValue>, bool)> {
        type SnapIter<'a> = Box<dyn Iterator<Item = Result<KeyValue, redb::StorageError>> + 'a>;
        type OwnIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Op)> + 'a>;

        let (begin, end) = (r.begin.as_slice(), r.end.as_slice());
        let range = self.snapshot.range::<&[u8]>(begin..end).map_err(engine_err)?;
        let bounds = (Bound::Included(begin), Bound::Excluded(end));
        let own = self.writes.range::<[u8], _>(bounds);
        let (mut snap, mut own): (SnapIter<'_>, OwnIter<'_>) = if r.reverse {
            (Box::new(range.rev().map(owned_entry)), Box::new(own.rev()))
        } else {
            (Box::new(range.map(owned_entry)), Box::new(own))
        };
        // The next snapshot entry not hidden by a range this transaction cleared.
        let next_snap = |snap: &mut SnapIter<'_>| -> Result<Option<KeyValue>> {
            for item in snap.by_ref() {
                let (k, v) = item.map_err(engine_err)?;
                if !self.is_cleared(&k) {
                    return Ok(Some((k, v)));
                }
            }
            Ok(None)
        };

        let mut out = Vec::new();
        let mut s = next_snap(&mut snap)?;
        let mut w = own.next();
        loop {
            if r.limit > 0 && out.len() >= r.limit {
                return Ok((out, true));
            }
            let order = match (&s, &w) {
                (None, None) => break,
                (Some(_), None) => CmpOrdering::Less,
                (None, Some(_)) => CmpOrdering::Greater,
                (Some((sk, _)), Some((wk, _))) => {
                    let o = sk.as_slice().cmp(wk.as_slice());
                    if r.reverse {
                        o.reverse()
                    } else {
                        o
                    }
                }
            };
            match order {
                CmpOrdering::Less => {
                    out.extend(s.take());
                    s = next_snap(&mut snap)?;
                }
                CmpOrdering::Greater => {
                    if let Some((k, op)) = w {
                        if let Some(v) = op.resolve(None) {
                            out.push((k.clone(), v));
                        }
                    }
                    w = own.next();
                }
                CmpOrdering::Equal => {
                    if let (Some((_, base)), Some((k, op))) = (&s, w) {
                        if let Some(v) = op.resolve(Some(base.as_slice())) {
                            out.push((k.clone(), v));
                        }
                    }
                    s = next_snap(&mut snap)?;
                    w = own.next();
                }
            }
        }
        Ok((out, false))
    }
}

#[async_trait]
impl KvTxn for EmbeddedTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_age()?;
        check_key(key)?;
        // Values this transaction decided need no snapshot read and no read conflict.
        let pending = match self.writes.get(key) {
            Some(Op::Set(v)) => return Ok(Some(v.clone())),
            Some(Op::Clear) => return Ok(None),
            Some(Op::Add(d)) => Some(*d),
            None if self.is_cleared(key) => return Ok(None),
            None => None,
        };
        let base = self.snapshot_get(key)?;
        self.add_read_conflict(key.to_vec(), key_after(key));
        Ok(match pending {
            Some(d) => Some(add_le(base.as_deref(), d)),
            None => base,
        })
    }

    async fn get_range(&mut self, range: &RangeRead) -> Result<Vec<KeyValue>> {
        self.check_age()?;
        if range.end < range.begin {
            return Err(StoreError::InvertedRange);
        }
        if range.end == range.begin {
            return Ok(Vec::new());
        }
        let (rows, cut) = self.read_range(range)?;
        let (begin, end) = match rows.last() {
            Some((last, _)) if cut && range.reverse => (last.clone(), range.end.clone()),
            Some((last, _)) if cut => (range.begin.clone(), key_after(last)),
            _ => (range.begin.clone(), range.end.clone()),
        };
        self.add_read_conflict(begin, end);
        Ok(rows)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.admit(key, Some(value), point_cost(key, value.len()))?;
        self.writes.insert(key.to_vec(), Op::Set(value.to_vec()));
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<()> {
        self.admit(key, None, point_cost(key, 0))?;
        self.writes.insert(key.to_vec(), Op::Clear);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        if end < begin {
            return Err(StoreError::InvertedRange);
        }
        // A range end may be one byte longer than a key (`key + \0`).
        if end.len() > MAX_KEY_BYTES + 1 {
            return self.refuse(StoreError::KeyTooLarge(end.len()));
        }
        self.admit(begin, None, 2 * (begin.len() + end.len()))?;
        if begin == end {
            return Ok(());
        }
        // Drop buffered writes in the range: the clear supersedes them.
        let mut inside = self.writes.split_off(begin);
        let mut after = inside.split_off(end);
        self.writes.append(&mut after);
        // Merge into the disjoint cleared ranges.
        let (mut b, mut e) = (begin.to_vec(), end.to_vec());
        let upto = (Bound::Unbounded, Bound::Included(begin));
        if let Some((pb, pe)) = self.cleared.range::<[u8], _>(upto).next_back() {
            if pe.as_slice() >= begin {
                b = pb.clone();
                e = e.max(pe.clone());
            }
        }
        let overlapping: Vec<Vec<u8>> = self
            .cleared
            .range::<[u8], _>((Bound::Included(b.as_slice()), Bound::Included(e.as_slice())))
            .map(|(k, _)| k.clone())
            .collect();
        for k in overlapping {
            if let Some(old_end) = self.cleared.remove(&k) {
                e = e.max(old_end);
            }
        }
        self.cleared.insert(b, e);
        Ok(())
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<()> {
        self.admit(key, None, point_cost(key, 8))?;
        let cleared = self.is_cleared(key);
        let op = match self.writes.get(key) {
            Some(Op::Set(v)) => Op::Set(add_le(Some(v.as_slice()), delta)),
            Some(Op::Clear) => Op::Set(add_le(None, delta)),
            Some(Op::Add(d)) => Op::Add(d.wrapping_add(delta)),
            None if cleared => Op::Set(add_le(None, delta)),
            None => Op::Add(delta),
        };
        self.writes.insert(key.to_vec(), op);
        Ok(())
    }

    fn set_versionstamped_key(&mut self, key: &[u8], offset: usize, value: &[u8]) -> Result<()> {
        if offset.checked_add(10).is_none_or(|end| end > key.len()) {
            return self.refuse(StoreError::BadVersionstampOffset { offset, len: key.len() });
        }
        self.admit(key, Some(value), point_cost(key, value.len()))?;
        self.versionstamped.push(VersionstampedSet { key: key.to_vec(), offset, value: value.to_vec() });
        Ok(())
    }

    fn watch(&mut self, key: &[u8]) -> Result<Watch> {
        check_key(key)?;
        let (tx, rx) = oneshot::channel();
        self.watches.push((key.to_vec(), tx));
        Ok(Box::pin(async move {
            rx.await.map_err(|_| {
                StoreError::Unavailable(
                    "watch cancelled: its transaction did not commit or the store was closed".into(),
                )
            })
        }))
    }

    async fn commit(self: Box<Self>) -> Result<Committed> {
        let mut txn = *self;
        if let Some(err) = txn.deferred.take() {
            return Err(err);
        }
        if txn.is_read_only() {
            // Nothing to commit (as in FoundationDB, whose read-only commits never reach the
            // cluster): no conflict check, no size or age limit, no disk write.
            if !txn.watches.is_empty() {
                let mut tracker = txn.store.shared.tracker();
                for (key, tx) in txn.watches.drain(..) {
                    tracker.register_watch(key, tx, txn.read_version, None);
                }
            }
            return Ok(Committed { versionstamp: Versionstamp::ZERO });
        }
        if txn.size > MAX_TXN_BYTES {
            return Err(StoreError::TransactionTooLarge(txn.size));
        }
        txn.check_age()?;
        let EmbeddedTxn { snapshot, store, read_version, writes, cleared, versionstamped, reads, watches, .. } = txn;
        // The snapshot pins redb pages; let it go before waiting for the commit thread.
        drop(snapshot);
        let (reply, answer) = oneshot::channel();
        let req = CommitRequest {
            read_version,
            reads: merge_ranges(reads),
            cleared: cleared.into_iter().collect(),
            ops: writes.into_iter().collect(),
            versionstamped,
            watches,
            reply,
        };
        let queue = store.commits.as_ref().ok_or_else(|| StoreError::Unavailable("the store is closing".into()))?;
        queue.send(req).await.map_err(|_| StoreError::Unavailable("the commit thread has stopped".into()))?;
        // Without an answer the commit thread died mid-group: the commit may have happened.
        answer.await.map_err(|_| StoreError::CommitUnknown)?
    }

    async fn on_error(self: Box<Self>, err: StoreError) -> Result<Box<dyn KvTxn>> {
        if !err.is_retryable() {
            return Err(err);
        }
        let store = self.store.clone();
        drop(self);
        backoff_pause().await;
        store.begin().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(b: &str, e: &str) -> (Vec<u8>, Vec<u8>) {
        (b.as_bytes().to_vec(), e.as_bytes().to_vec())
    }

    #[test]
    fn ranges_merge_and_intersect() {
        let set = merge_ranges(vec![r("d", "f"), r("a", "b"), r("b", "c"), r("e", "g"), r("x", "x")]);
        assert_eq!(set, vec![r("a", "c"), r("d", "g")]);
        assert!(range_set_contains(&set, b"a"));
        assert!(range_set_contains(&set, b"bz"));
        assert!(!range_set_contains(&set, b"c"));
        assert!(!range_set_contains(&set, b"0"));
        assert!(range_set_contains(&set, b"f"));
        assert!(!range_set_contains(&set, b"g"));
        assert!(range_set_overlaps(&set, b"c", b"d1"));
        assert!(!range_set_overlaps(&set, b"c", b"d"));
        assert!(!range_set_overlaps(&set, b"g", b"z"));
        let ws = |keys: &[&str], ranges: Vec<(Vec<u8>, Vec<u8>)>| WriteSet {
            version: 1,
            at: Instant::now(),
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            ranges,
        };
        assert!(ws(&["b"], vec![]).intersects(&set));
        assert!(!ws(&["c", "cc", "h"], vec![]).intersects(&set));
        assert!(ws(&["c", "cc", "h"], vec![]).intersects(&[r("h", "i")]));
        assert!(ws(&[], vec![r("c", "e")]).intersects(&set));
        assert!(!ws(&[], vec![r("c", "d")]).intersects(&set));
        assert!(ws(&[], vec![r("c", "d")]).touches(b"c1"));
        assert!(!ws(&["a"], vec![]).intersects(&[]));
    }

    #[test]
    fn atomic_add_follows_foundationdb() {
        assert_eq!(add_le(None, 5), 5i64.to_le_bytes());
        assert_eq!(add_le(Some(&[1]), 1), 2i64.to_le_bytes());
        assert_eq!(add_le(Some(&[0xff; 10]), 1), 0i64.to_le_bytes());
        assert_eq!(add_le(Some(&i64::MAX.to_le_bytes()), 1), i64::MIN.to_le_bytes());
    }

    /// Child half of [`committed_data_survives_kill_9`]: commits increments and reports each
    /// acknowledged one on stdout until killed.
    #[tokio::test]
    #[ignore = "run as a child process by committed_data_survives_kill_9"]
    async fn crash_child() {
        let Ok(path) = std::env::var("SELVAGE_CRASH_CHILD_DB") else {
            return;
        };
        let store = EmbeddedStore::open(Path::new(&path), EmbeddedOptions::default()).unwrap();
        for i in 1u64.. {
            let mut tx = store.begin().await.unwrap();
            tx.set(b"counter", &i.to_be_bytes()).unwrap();
            tx.set(&i.to_be_bytes(), b"x").unwrap();
            let c = tx.commit().await.unwrap();
            println!("acked {i} {}", c.versionstamp.version());
        }
    }

    #[tokio::test]
    async fn committed_data_survives_kill_9() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.redb");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::embedded::tests::crash_child", "--ignored", "--nocapture"])
            .env("SELVAGE_CRASH_CHILD_DB", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (last_i, last_version) = tokio::task::spawn_blocking(move || {
            let mut last = (0u64, 0u64);
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let mut parts = line.strip_prefix("acked ").map(|l| l.split(' ')).into_iter().flatten();
                if let (Some(i), Some(v)) = (parts.next(), parts.next()) {
                    last = (i.parse().unwrap(), v.parse().unwrap());
                    if last.0 >= 40 {
                        break;
                    }
                }
            }
            last
        })
        .await
        .unwrap();
        assert!(last_i >= 40, "the child stopped early");
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();

        let store = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
        assert!(store.last_version() >= last_version);
        let mut tx = store.begin().await.unwrap();
        let counter = tx.get(b"counter").await.unwrap().unwrap();
        let counter = u64::from_be_bytes(counter.try_into().unwrap());
        assert!(counter >= last_i, "acknowledged commit {last_i} lost (found {counter})");
        for i in 1..=counter {
            assert!(tx.get(&i.to_be_bytes()).await.unwrap().is_some(), "commit {i} lost");
        }
        let mut w = store.begin().await.unwrap();
        w.set(b"after", b"crash").unwrap();
        let c = w.commit().await.unwrap();
        assert!(c.versionstamp.version() > last_version);
    }

    /// Commit throughput with and without fsync; prints its numbers.
    /// `cargo test -p selvage-origin --release store::embedded::tests::commit_throughput -- --ignored --nocapture`
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
}
