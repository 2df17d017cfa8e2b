//! The memtable: committed mutations that are in the write-ahead log but not yet (or only just)
//! in the redb file, kept by version so that every transaction reads exactly its snapshot.
//!
//! It is a short series of **tables**, each a few sorted runs of key → versions (a commit's
//! writes arrive sorted and are pushed whole; see [`Table`]) plus a list of versioned cleared
//! ranges, covering consecutive version intervals:
//!
//! - the **active** table receives every commit (the commit thread is its only writer);
//! - the flusher **freezes** it (an O(1) swap for a new active table) and writes the frozen
//!   table into redb while commits go on into the new one;
//! - a flushed table stays, read-only, while a transaction whose redb snapshot predates that
//!   flush may still read it, and at most `max_txn_age` after the flush (such a transaction is
//!   too old by then); then it is dropped whole.
//!
//! A transaction sees the commits in `(flushed, version]` ([`View`]): `flushed` is what its redb
//! snapshot holds, `version` its read version. Within one commit version, cleared ranges come
//! before point writes (a transaction's buffered writes are normalised that way), so a point
//! write hides a range of the same version and a range hides point writes of older versions.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    hash::Hasher,
    iter::Peekable,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::{Duration, Instant},
};

use rustc_hash::{FxHashSet, FxHasher};

use super::wal::Mutation;

/// Bytes an entry costs beyond its key and value: its share of tree nodes and version list.
const ENTRY_OVERHEAD: usize = 64;

/// Which commits a reader sees: versions in `(flushed, version]`, over a redb snapshot holding
/// everything up to `flushed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct View {
    pub(super) flushed: u64,
    pub(super) version: u64,
}

impl View {
    fn sees(&self, version: u64) -> bool {
        version > self.flushed && version <= self.version
    }
}

/// One write of a key: its version and value (`None`: a clear).
type Write = (u64, Option<Vec<u8>>);

/// A key's writes in one table, oldest first. Almost always one, kept inline.
#[derive(Debug)]
enum Versions {
    One(Write),
    Many(Vec<Write>),
}

impl Versions {
    /// Adds the write of a newer (or the same) version; a later write of the same version
    /// (two versionstamped keys of one commit that came out equal) replaces the earlier one.
    fn push(&mut self, version: u64, value: Option<Vec<u8>>) {
        match self {
            Versions::One((v, old)) if *v == version => *old = value,
            Versions::One(first) => {
                let first = std::mem::take(first);
                *self = Versions::Many(vec![first, (version, value)]);
            }
            Versions::Many(list) => match list.last_mut() {
                Some((v, old)) if *v == version => *old = value,
                _ => list.push((version, value)),
            },
        }
    }

    fn as_slice(&self) -> &[Write] {
        match self {
            Versions::One(w) => std::slice::from_ref(w),
            Versions::Many(list) => list,
        }
    }

    /// The newest write that `view` sees, if it sees one.
    fn newest_in(&self, view: View) -> Option<(u64, Option<&[u8]>)> {
        let (v, value) = self.as_slice().iter().rev().find(|(v, _)| *v <= view.version)?;
        (*v > view.flushed).then_some((*v, value.as_deref()))
    }

    /// The newest write.
    fn last(&self) -> Option<&Write> {
        self.as_slice().last()
    }

    fn into_writes(self) -> Vec<Write> {
        match self {
            Versions::One(w) => vec![w],
            Versions::Many(list) => list,
        }
    }

    /// Keeps the writes of versions below `from`; whether any is left.
    fn retain_before(&mut self, from: u64) -> bool {
        match self {
            Versions::One((v, _)) => *v < from,
            Versions::Many(list) => {
                list.retain(|(v, _)| *v < from);
                !list.is_empty()
            }
        }
    }
}

/// The hash the memtable indexes keys by; transactions compute it once per read.
pub(super) fn key_hash(key: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(key);
    h.finish()
}

/// A `clear_range` of one commit.
#[derive(Debug)]
struct ClearedRange {
    version: u64,
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl ClearedRange {
    fn covers(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && key < self.end.as_slice()
    }
}

/// A sorted run of a table: keys ascending and unique, each with its writes in this run.
type Run = Vec<(Vec<u8>, Versions)>;

/// Runs this long are not merged any more when a commit is published. Merging is the largest
/// part of publishing, which every commit waits for, and a table's long runs are merged once
/// more anyway when it is flushed (by the flush's merge thread); reads skip a run through the
/// table's key hashes or a binary search. Below it, the last two runs merge while the newer is
/// as long as the older, so a table is a few runs of this length and a short tail. A busy
/// sequencer's group commits are runs of more than this already (4,000 sends write some 16,000
/// keys), so they are pushed as they come: merging them cost every fourth commit several
/// milliseconds, while the commit's senders waited.
const MAX_MERGED_RUN: usize = 1 << 14;

/// The commits of one version interval `(after, newest]`.
///
/// Its point writes are a few sorted **runs** rather than one tree: a commit's writes arrive
/// sorted (a transaction buffers them by key), so adding a commit is pushing its run, and the
/// last two runs are merged whenever the newer is at least as long as the older (a binary
/// counter: runs stay few, about log₂ of the table's commits, and a write is moved into a
/// longer run only that many times). Readers search every run, newest first.
#[derive(Debug)]
pub(super) struct Table {
    after: u64,
    newest: u64,
    /// Oldest first; a key's writes in a newer run are newer than those in an older one.
    runs: Vec<Run>,
    /// Hashes of the keys in `runs`. Most point reads ask for keys a table does not hold (a
    /// new message's dedup entry, records that live in redb): this answers them without a
    /// search of the runs. A hash match only means "search".
    hashes: FxHashSet<u64>,
    /// In version order.
    ranges: Vec<ClearedRange>,
    bytes: usize,
    entries: usize,
}

/// Merges two runs, `newer`'s writes after `older`'s.
fn merge_runs(older: Run, newer: Run) -> Run {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let (mut a, mut b) = (older.into_iter().peekable(), newer.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some((ka, _)), Some((kb, _))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => {
                    if let (Some((key, mut versions)), Some((_, newer_versions))) = (a.next(), b.next()) {
                        for (version, value) in newer_versions.into_writes() {
                            versions.push(version, value);
                        }
                        out.push((key, versions));
                    }
                    continue;
                }
            },
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
}

impl Table {
    fn new(after: u64) -> Self {
        Table {
            after,
            newest: after,
            runs: Vec::new(),
            hashes: FxHashSet::default(),
            ranges: Vec::new(),
            bytes: 0,
            entries: 0,
        }
    }

    /// The newest version in the table: what redb holds once it is flushed.
    pub(super) fn newest(&self) -> u64 {
        self.newest
    }

    /// Mutations held, for logs and stats.
    pub(super) fn entries(&self) -> usize {
        self.entries
    }

    fn relevant(&self, view: View) -> bool {
        self.newest > view.flushed && self.after < view.version
    }

    /// The newest write of `key` in this table that `view` sees, if any; `held`: whether
    /// the table holds the key's hash (if not, it has no write of the key).
    fn point(&self, key: &[u8], held: bool, view: View) -> Option<(u64, Option<&[u8]>)> {
        if !held {
            return None;
        }
        self.runs.iter().rev().find_map(|run| {
            let i = run.binary_search_by(|(k, _)| k.as_slice().cmp(key)).ok()?;
            run[i].1.newest_in(view)
        })
    }

    /// `key` as `view` sees it in this table: `Some(None)` if removed here, `None` if this
    /// table has nothing on it (older tables or redb decide). `held` as for [`Table::point`].
    fn decide(&self, key: &[u8], held: bool, view: View) -> Option<Option<&[u8]>> {
        match (self.point(key, held, view), self.range_version(key, view)) {
            (Some((pv, _)), Some(rv)) if rv > pv => Some(None),
            (Some((_, value)), _) => Some(value),
            // Older tables only hold older writes, which this range hides.
            (None, Some(_)) => Some(None),
            (None, None) => None,
        }
    }

    /// The newest cleared range covering `key` that `view` sees.
    fn range_version(&self, key: &[u8], view: View) -> Option<u64> {
        self.ranges.iter().filter(|r| view.sees(r.version) && r.covers(key)).map(|r| r.version).max()
    }

    fn apply(&mut self, version: u64, mutation: Mutation) {
        let (key, value) = match mutation {
            Mutation::ClearRange(begin, end) => {
                self.newest = self.newest.max(version);
                self.entries += 1;
                self.bytes += begin.len() + end.len() + ENTRY_OVERHEAD;
                self.ranges.push(ClearedRange { version, begin, end });
                return;
            }
            Mutation::Set(key, value) => (key, Some(value)),
            Mutation::Clear(key) => (key, None),
        };
        self.apply_sorted(version, vec![(key, value)]);
    }

    /// Adds the point writes of the commit at `version`: keys ascending and unique.
    fn apply_sorted(&mut self, version: u64, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        self.newest = self.newest.max(version);
        if writes.is_empty() {
            return;
        }
        self.entries += writes.len();
        let mut run = Vec::with_capacity(writes.len());
        for (key, value) in writes {
            self.bytes += key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD;
            self.hashes.insert(key_hash(&key));
            run.push((key, Versions::One((version, value))));
        }
        self.runs.push(run);
        while let [.., older, newer] = self.runs.as_slice() {
            if newer.len() < older.len() || older.len() >= MAX_MERGED_RUN {
                break;
            }
            let (Some(newer), Some(older)) = (self.runs.pop(), self.runs.pop()) else { break };
            self.runs.push(merge_runs(older, newer));
        }
    }

    /// Removes every write of a version `>= from`: commits whose log write failed.
    fn rollback(&mut self, from: u64) {
        self.ranges.retain(|r| r.version < from);
        for run in &mut self.runs {
            run.retain_mut(|(_, versions)| versions.retain_before(from));
        }
        self.runs.retain(|run| !run.is_empty());
        self.hashes = self.runs.iter().flatten().map(|(k, _)| key_hash(k)).collect();
        self.newest = self.newest.min(from.saturating_sub(1)).max(self.after);
        self.entries = self.ranges.len();
        self.bytes = self.ranges.iter().map(|r| r.begin.len() + r.end.len() + ENTRY_OVERHEAD).sum();
        for (key, versions) in self.runs.iter().flatten() {
            let writes = versions.as_slice();
            self.entries += writes.len();
            self.bytes +=
                writes.iter().map(|(_, v)| key.len() + v.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD).sum::<usize>();
        }
    }

    /// The cleared ranges, for the flusher, which applies them before [`Table::final_writes`].
    pub(super) fn cleared_ranges(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.ranges.iter().map(|r| (r.begin.as_slice(), r.end.as_slice()))
    }

    /// Each key's last write (`None`: removed), in key order, except those a later cleared
    /// range of this table removed: with the ranges applied first, this is the table's effect.
    pub(super) fn final_writes(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        // A k-way merge of the runs by a heap of (next key, run), smallest first; a key's last
        // write is in the newest (highest-numbered) run that has it.
        let mut runs: Vec<_> = self.runs.iter().map(|run| run.iter()).collect();
        let mut heap: BinaryHeap<Reverse<(&[u8], usize)>> = BinaryHeap::with_capacity(runs.len());
        for (i, run) in runs.iter_mut().enumerate() {
            if let Some((k, _)) = run.as_slice().first() {
                heap.push(Reverse((k.as_slice(), i)));
            }
        }
        std::iter::from_fn(move || loop {
            let Reverse((key, _)) = *heap.peek()?;
            let mut last = None;
            while let Some(&Reverse((k, i))) = heap.peek() {
                if k != key {
                    break;
                }
                heap.pop();
                if let Some((_, versions)) = runs[i].next() {
                    last = versions.last();
                }
                if let Some((next, _)) = runs[i].as_slice().first() {
                    heap.push(Reverse((next.as_slice(), i)));
                }
            }
            let Some((v, value)) = last else { continue };
            let cleared_later = self.ranges.iter().any(|r| r.version > *v && r.covers(key));
            if !cleared_later {
                return Some((key, value.as_deref()));
            }
        })
    }
}

/// A frozen table and when it reached redb.
struct Frozen {
    table: Arc<Table>,
    flushed_at: Option<Instant>,
}

struct Tables {
    active: Table,
    /// Oldest first: flushed ones (kept for older readers), then those still to flush.
    frozen: VecDeque<Frozen>,
}

impl Tables {
    /// The tables `view` needs, newest first.
    fn visible(&self, view: View) -> impl Iterator<Item = &Table> {
        std::iter::once(&self.active)
            .chain(self.frozen.iter().rev().map(|f| f.table.as_ref()))
            .filter(move |t| t.relevant(view))
    }
}

/// The versioned memtable; see the module documentation.
pub(super) struct Memtable {
    tables: RwLock<Tables>,
    active_bytes: AtomicUsize,
    active_entries: AtomicUsize,
    /// Active plus frozen tables not yet in redb.
    unflushed_bytes: AtomicUsize,
    unflushed_entries: AtomicUsize,
}

impl Memtable {
    /// An empty memtable over a redb file holding everything up to `version`.
    pub(super) fn new(version: u64) -> Self {
        Memtable {
            tables: RwLock::new(Tables { active: Table::new(version), frozen: VecDeque::new() }),
            active_bytes: AtomicUsize::new(0),
            active_entries: AtomicUsize::new(0),
            unflushed_bytes: AtomicUsize::new(0),
            unflushed_entries: AtomicUsize::new(0),
        }
    }

    // Every critical section below leaves the tables consistent between statements that could
    // panic (allocation failure aborts), so a poisoned lock is still safe to use.
    fn lock_read(&self) -> RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shared access for reads. Holding it keeps every table the reader may need.
    pub(super) fn read(&self) -> MemRead<'_> {
        MemRead { tables: self.lock_read() }
    }

    /// Exclusive access for the commit thread to add commits.
    pub(super) fn write(&self) -> MemWrite<'_> {
        let tables = self.lock_write();
        let (bytes, entries) = (tables.active.bytes, tables.active.entries);
        MemWrite { tables, mem: self, bytes, entries }
    }

    /// Bytes and entries in the active table.
    pub(super) fn active_size(&self) -> (usize, usize) {
        (self.active_bytes.load(Ordering::Relaxed), self.active_entries.load(Ordering::Relaxed))
    }

    /// Bytes and entries not yet in redb.
    pub(super) fn unflushed_size(&self) -> (usize, usize) {
        (self.unflushed_bytes.load(Ordering::Relaxed), self.unflushed_entries.load(Ordering::Relaxed))
    }

    /// Starts a new active table and returns the old one for flushing (`None` if it was empty).
    pub(super) fn freeze(&self) -> Option<Arc<Table>> {
        let mut tables = self.lock_write();
        if tables.active.newest == tables.active.after {
            return None;
        }
        let after = tables.active.newest;
        // Sized like the table it follows, so that filling it does not rehash again and again.
        let next = Table {
            hashes: FxHashSet::with_capacity_and_hasher(tables.active.hashes.len(), Default::default()),
            ..Table::new(after)
        };
        let table = Arc::new(std::mem::replace(&mut tables.active, next));
        tables.frozen.push_back(Frozen { table: table.clone(), flushed_at: None });
        self.active_bytes.store(0, Ordering::Relaxed);
        self.active_entries.store(0, Ordering::Relaxed);
        Some(table)
    }

    /// The oldest frozen table not yet in redb (tables must reach redb in order).
    pub(super) fn next_to_flush(&self) -> Option<Arc<Table>> {
        self.lock_read().frozen.iter().find(|f| f.flushed_at.is_none()).map(|f| f.table.clone())
    }

    /// Records that `table` is durable in redb.
    pub(super) fn mark_flushed(&self, table: &Arc<Table>) {
        let mut tables = self.lock_write();
        if let Some(f) = tables.frozen.iter_mut().find(|f| Arc::ptr_eq(&f.table, table)) {
            if f.flushed_at.is_none() {
                f.flushed_at = Some(Instant::now());
                self.unflushed_bytes.fetch_sub(table.bytes, Ordering::Relaxed);
                self.unflushed_entries.fetch_sub(table.entries, Ordering::Relaxed);
            }
        }
    }

    /// Removes flushed tables no reader can need: no live snapshot predates their flush
    /// (`oldest_pin` is the lowest flushed version a live reader's redb snapshot may hold), or
    /// the flush is `max_age` old. Returns them, to be dropped after the lock is released.
    pub(super) fn retire(&self, oldest_pin: Option<u64>, max_age: Duration) -> Vec<Arc<Table>> {
        let mut tables = self.lock_write();
        let mut gone = Vec::new();
        while let Some(f) = tables.frozen.front() {
            let Some(at) = f.flushed_at else {
                break;
            };
            let unneeded = oldest_pin.is_none_or(|pin| pin >= f.table.newest);
            if !unneeded && at.elapsed() < max_age {
                break;
            }
            if let Some(f) = tables.frozen.pop_front() {
                gone.push(f.table);
            }
        }
        gone
    }

    /// Tables held (active included), for tests.
    #[cfg(test)]
    pub(super) fn table_count(&self) -> usize {
        1 + self.lock_read().frozen.len()
    }
}

/// The commit thread's hold on the memtable while it adds a group.
pub(super) struct MemWrite<'a> {
    tables: RwLockWriteGuard<'a, Tables>,
    mem: &'a Memtable,
    /// Size of the active table when the hold began.
    bytes: usize,
    entries: usize,
}

impl MemWrite<'_> {
    /// Adds one mutation of the commit at `version` (versions never decrease).
    pub(super) fn apply(&mut self, version: u64, mutation: Mutation) {
        self.tables.active.apply(version, mutation);
    }

    /// Adds the point writes of the commit at `version`, keys ascending and unique (after its
    /// cleared ranges, if it has any).
    pub(super) fn apply_sorted(&mut self, version: u64, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        self.tables.active.apply_sorted(version, writes);
    }

    /// Takes back every write of a version `>= from` (its log write failed).
    pub(super) fn rollback(&mut self, from: u64) {
        self.tables.active.rollback(from);
    }

    /// Records that the commit at `version` is in, mutations or not.
    pub(super) fn note_version(&mut self, version: u64) {
        let active = &mut self.tables.active;
        active.newest = active.newest.max(version);
    }
}

impl Drop for MemWrite<'_> {
    fn drop(&mut self) {
        let active = &self.tables.active;
        self.mem.active_bytes.store(active.bytes, Ordering::Relaxed);
        self.mem.active_entries.store(active.entries, Ordering::Relaxed);
        for (counter, now, then) in [
            (&self.mem.unflushed_bytes, active.bytes, self.bytes),
            (&self.mem.unflushed_entries, active.entries, self.entries),
        ] {
            if now >= then {
                counter.fetch_add(now - then, Ordering::Relaxed);
            } else {
                counter.fetch_sub(then - now, Ordering::Relaxed);
            }
        }
    }
}

/// A reader's hold on the memtable.
pub(super) struct MemRead<'a> {
    tables: RwLockReadGuard<'a, Tables>,
}

impl<'a> MemRead<'a> {
    /// `key` as `view` sees it in the memtable: `Some(None)` if removed there, `None` if the
    /// memtable has nothing on it (the redb snapshot decides).
    pub(super) fn get(&self, key: &[u8], view: View) -> Option<Option<&[u8]>> {
        let hash = key_hash(key);
        self.tables.visible(view).find_map(|table| table.decide(key, table.hashes.contains(&hash), view))
    }

    /// [`MemRead::get`] of each of `keys` (with their [`key_hash`]), in their order. Table by
    /// table, every key's hash is looked up before any run is searched, so that the lookups'
    /// cache misses overlap rather than come one after another.
    pub(super) fn get_each(&self, keys: &[(&[u8], u64)], view: View) -> Vec<Option<Option<&[u8]>>> {
        let mut found: Vec<Option<Option<&[u8]>>> = vec![None; keys.len()];
        // Keys no newer table has decided, by index.
        let mut open: Vec<usize> = (0..keys.len()).collect();
        for table in self.tables.visible(view) {
            if open.is_empty() {
                break;
            }
            let held: Vec<bool> = open.iter().map(|&i| table.hashes.contains(&keys[i].1)).collect();
            open = open
                .into_iter()
                .zip(held)
                .filter(|&(i, held)| {
                    found[i] = table.decide(keys[i].0, held, view);
                    found[i].is_none()
                })
                .map(|(i, _)| i)
                .collect();
        }
        found
    }

    /// The memtable's keys in `[begin, end)` as `view` sees them, in order (descending when
    /// `reverse`); see [`MemRange`].
    pub(super) fn range(&self, begin: &[u8], end: &[u8], reverse: bool, view: View) -> MemRange<'_> {
        let mut sources = Vec::new();
        let mut ranges = Vec::new();
        if begin < end {
            for table in self.tables.visible(view) {
                // Newest run first: the walk takes a key's writes from the first source with one.
                for run in table.runs.iter().rev() {
                    let from = run.partition_point(|(k, _)| k.as_slice() < begin);
                    let to = run.partition_point(|(k, _)| k.as_slice() < end);
                    let points = run[from..to].iter().map(|(k, v)| (k, v));
                    let it: PointIter<'_> = if reverse { Box::new(points.rev()) } else { Box::new(points) };
                    sources.push(it.peekable());
                }
                ranges.extend(
                    table
                        .ranges
                        .iter()
                        .filter(|r| view.sees(r.version) && r.begin.as_slice() < end && begin < r.end.as_slice())
                        .map(|r| (r.version, r.begin.as_slice(), r.end.as_slice())),
                );
            }
        }
        MemRange { sources, ranges, view, reverse }
    }
}

type PointIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Versions)> + 'a>;

/// A merged walk over the memtable's tables: yields each key the view has a write for, with
/// its value or `None` where the newest thing the view sees is a clear (which must hide the
/// key in redb). [`MemChunks::covered`] tells which other keys a cleared range hides.
pub(super) struct MemRange<'a> {
    /// Newest table (and within it newest run) first.
    sources: Vec<Peekable<PointIter<'a>>>,
    /// Cleared ranges the view sees that overlap the read: version, begin, end.
    ranges: Vec<(u64, &'a [u8], &'a [u8])>,
    view: View,
    reverse: bool,
}

#[cfg(test)]
impl MemRange<'_> {
    /// Whether a cleared range of the memtable hides `key` (one the walk does not yield).
    pub(super) fn covered(&self, key: &[u8]) -> bool {
        self.ranges.iter().any(|(_, b, e)| *b <= key && key < *e)
    }
}

/// A key of a [`MemChunks`] walk with its value, `None` for a clear.
pub(super) type MemEntry = (Vec<u8>, Option<Vec<u8>>);

/// Entries of a [`MemChunks`] chunk.
type Chunk = VecDeque<MemEntry>;

/// A [`MemRange`] taken a chunk of owned entries at a time, the memtable's read lock held only
/// while one is copied out. A range read walks redb and builds its answer between chunks, so
/// the commit thread, which needs the write lock to add each group, never waits on that; nor
/// on a reader at a lower CPU priority (the services on the feed) that the scheduler puts
/// aside while it holds the lock — with a writer waiting, every other reader would wait too.
///
/// Taking the lock again later sees the same entries: the view is fixed and the tables it needs
/// stay while the transaction is young enough, which `check` (run under the lock) makes sure.
pub(super) struct MemChunks<'a> {
    mem: &'a Memtable,
    check: &'a dyn Fn() -> crate::store::Result<()>,
    /// What is left to read: `[begin, end)`.
    begin: Vec<u8>,
    end: Vec<u8>,
    reverse: bool,
    view: View,
    /// The cleared ranges the view sees over the whole read, taken with the first chunk.
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
    chunk: Chunk,
    /// How many entries the next chunk takes: from what the read asks for, doubling.
    size: usize,
    started: bool,
    exhausted: bool,
}

/// The largest chunk a [`MemChunks`] copies under one hold of the lock.
const MAX_CHUNK: usize = 256;

impl<'a> MemChunks<'a> {
    /// The memtable's keys in `[begin, end)` as `view` sees them (see [`MemRead::range`]),
    /// `first` of them in the first chunk (a read's limit, when it has one).
    pub(super) fn new(
        mem: &'a Memtable,
        check: &'a dyn Fn() -> crate::store::Result<()>,
        (begin, end): (&[u8], &[u8]),
        reverse: bool,
        view: View,
        first: usize,
    ) -> Self {
        MemChunks {
            mem,
            check,
            begin: begin.to_vec(),
            end: end.to_vec(),
            reverse,
            view,
            cleared: Vec::new(),
            chunk: VecDeque::new(),
            size: first.clamp(1, MAX_CHUNK),
            started: false,
            exhausted: begin >= end,
        }
    }

    /// Whether a cleared range of the memtable hides `key` (one the walk does not yield).
    /// Known once the first entry was asked for.
    pub(super) fn covered(&self, key: &[u8]) -> bool {
        self.cleared.iter().any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }

    /// Copies the next chunk under the read lock; narrows what is left past it.
    fn fill(&mut self) -> crate::store::Result<()> {
        let read = self.mem.read();
        (self.check)()?;
        let mut range = read.range(&self.begin, &self.end, self.reverse, self.view);
        if !self.started {
            self.started = true;
            self.cleared = range.ranges.iter().map(|(_, b, e)| (b.to_vec(), e.to_vec())).collect();
        }
        for (k, v) in range.by_ref().take(self.size) {
            self.chunk.push_back((k.to_vec(), v.map(<[u8]>::to_vec)));
        }
        drop(range);
        drop(read);
        match self.chunk.back() {
            Some((last, _)) if self.chunk.len() == self.size => {
                if self.reverse {
                    self.end = last.clone();
                } else {
                    self.begin = last.iter().copied().chain([0]).collect();
                }
            }
            _ => self.exhausted = true,
        }
        self.size = (self.size * 2).min(MAX_CHUNK);
        Ok(())
    }

    /// The next entry, in the read's order.
    pub(super) fn next_entry(&mut self) -> crate::store::Result<Option<MemEntry>> {
        if self.chunk.is_empty() && !self.exhausted {
            self.fill()?;
        }
        Ok(self.chunk.pop_front())
    }

    /// Takes the cleared ranges without reading an entry (so that [`MemChunks::covered`]
    /// answers before the first one).
    pub(super) fn start(&mut self) -> crate::store::Result<()> {
        if !self.started && !self.exhausted {
            self.fill()?;
        }
        Ok(())
    }
}

impl<'a> Iterator for MemRange<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let mut next: Option<&'a Vec<u8>> = None;
            for s in &mut self.sources {
                if let Some(&(k, _)) = s.peek() {
                    let first = match next {
                        None => true,
                        Some(n) if self.reverse => k > n,
                        Some(n) => k < n,
                    };
                    if first {
                        next = Some(k);
                    }
                }
            }
            let key = next?;
            let mut found = None;
            for s in &mut self.sources {
                if let Some((_, versions)) = s.next_if(|(k, _)| *k == key) {
                    if found.is_none() {
                        found = versions.newest_in(self.view);
                    }
                }
            }
            if let Some((pv, value)) = found {
                let key = key.as_slice();
                let cleared = self.ranges.iter().any(|(rv, b, e)| *rv > pv && *b <= key && key < *e);
                return Some((key, if cleared { None } else { value }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> Mutation {
        Mutation::Set(k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn view(flushed: u64, version: u64) -> View {
        View { flushed, version }
    }

    fn get(mem: &Memtable, k: &str, v: View) -> Option<Option<String>> {
        mem.read().get(k.as_bytes(), v).map(|o| o.map(|b| String::from_utf8(b.to_vec()).unwrap()))
    }

    fn scan(mem: &Memtable, reverse: bool, v: View) -> Vec<(String, Option<String>)> {
        let read = mem.read();
        let rows = read
            .range(b"a", b"z", reverse, v)
            .map(|(k, val)| {
                (String::from_utf8(k.to_vec()).unwrap(), val.map(|b| String::from_utf8(b.to_vec()).unwrap()))
            })
            .collect();
        rows
    }

    #[test]
    fn long_runs_stay_apart_and_read_as_one() {
        let key = |i: usize| format!("k{i:06}").into_bytes();
        let mem = Memtable::new(0);
        {
            let mut w = mem.write();
            // Version 1 writes every key, 2 rewrites the even ones, 3 adds as many more.
            w.apply_sorted(1, (0..MAX_MERGED_RUN).map(|i| (key(i), Some(b"1".to_vec()))).collect());
            w.apply_sorted(2, (0..MAX_MERGED_RUN).step_by(2).map(|i| (key(i), Some(b"2".to_vec()))).collect());
            w.apply_sorted(2, Vec::new());
            w.apply_sorted(3, (MAX_MERGED_RUN..2 * MAX_MERGED_RUN).map(|i| (key(i), Some(b"3".to_vec()))).collect());
            // Two short commits still merge into one run behind the long ones.
            w.apply_sorted(4, vec![(key(7), Some(b"4".to_vec()))]);
            w.apply_sorted(5, vec![(key(9), Some(b"5".to_vec()))]);
        }
        let lens: Vec<usize> = mem.tables.read().unwrap().active.runs.iter().map(Vec::len).collect();
        // The half-length run merged with the next (it was short), not with the first.
        assert_eq!(lens, [MAX_MERGED_RUN, MAX_MERGED_RUN / 2 + MAX_MERGED_RUN, 2]);
        let read = |k: usize, version: u64| mem.read().get(&key(k), view(0, version)).map(|v| v.map(<[u8]>::to_vec));
        assert_eq!(read(4, 5), Some(Some(b"2".to_vec())));
        assert_eq!(read(4, 1), Some(Some(b"1".to_vec())));
        assert_eq!(read(5, 5), Some(Some(b"1".to_vec())));
        assert_eq!(read(7, 5), Some(Some(b"4".to_vec())));
        assert_eq!(read(9, 4), Some(Some(b"1".to_vec())));
        assert_eq!(read(MAX_MERGED_RUN + 3, 5), Some(Some(b"3".to_vec())));
        assert_eq!(read(MAX_MERGED_RUN + 3, 2), None);
        let table = mem.freeze().unwrap();
        let writes: Vec<(Vec<u8>, Vec<u8>)> =
            table.final_writes().map(|(k, v)| (k.to_vec(), v.unwrap_or_default().to_vec())).collect();
        assert_eq!(writes.len(), 2 * MAX_MERGED_RUN);
        assert!(writes.windows(2).all(|w| w[0].0 < w[1].0), "in key order, each key once");
        let value_of = |i: usize| writes[i].1.as_slice();
        assert_eq!((value_of(0), value_of(1), value_of(7), value_of(9)), (&b"2"[..], &b"1"[..], &b"4"[..], &b"5"[..]));
        assert_eq!(value_of(MAX_MERGED_RUN), b"3");
    }

    #[test]
    fn views_see_their_versions_across_tables() {
        let mem = Memtable::new(0);
        {
            let mut w = mem.write();
            w.apply(1, set("a", "1"));
            w.apply(1, set("c", "1"));
            w.apply(2, set("a", "2"));
        }
        let first = mem.freeze().unwrap();
        assert_eq!(first.newest(), 2);
        {
            let mut w = mem.write();
            // Version 3 clears [b, d) and then writes c again in the same commit.
            w.apply(3, Mutation::ClearRange(b"b".to_vec(), b"d".to_vec()));
            w.apply(3, set("c", "3"));
            w.apply(4, Mutation::ClearRange(b"a".to_vec(), b"b".to_vec()));
            w.apply(5, Mutation::Clear(b"e".to_vec()));
        }
        assert_eq!(get(&mem, "a", view(0, 1)), Some(Some("1".into())));
        assert_eq!(get(&mem, "a", view(0, 3)), Some(Some("2".into())));
        assert_eq!(get(&mem, "a", view(0, 4)), Some(None));
        assert_eq!(get(&mem, "a", view(2, 3)), None, "flushed: redb decides");
        assert_eq!(get(&mem, "b", view(0, 9)), Some(None), "inside a cleared range");
        assert_eq!(get(&mem, "b", view(0, 2)), None);
        assert_eq!(get(&mem, "c", view(0, 2)), Some(Some("1".into())));
        assert_eq!(get(&mem, "c", view(0, 9)), Some(Some("3".into())), "a write after a range in one commit");
        assert_eq!(get(&mem, "e", view(0, 9)), Some(None));
        assert_eq!(get(&mem, "x", view(0, 9)), None);
        // Keys looked up together answer as one by one, across both tables and every view.
        let keys: Vec<(&[u8], u64)> =
            ["a", "b", "c", "e", "x", "a"].iter().map(|k| (k.as_bytes(), key_hash(k.as_bytes()))).collect();
        for v in [view(0, 1), view(0, 2), view(0, 3), view(0, 4), view(0, 9), view(2, 3), view(2, 9)] {
            let read = mem.read();
            let one_by_one: Vec<_> = keys.iter().map(|(k, _)| read.get(k, v)).collect();
            assert_eq!(read.get_each(&keys, v), one_by_one, "{v:?}");
        }

        let some = |k: &str, v: &str| (k.to_string(), Some(v.to_string()));
        let none = |k: &str| (k.to_string(), None);
        assert_eq!(scan(&mem, false, view(0, 2)), vec![some("a", "2"), some("c", "1")]);
        assert_eq!(scan(&mem, false, view(0, 9)), vec![none("a"), some("c", "3"), none("e")]);
        assert_eq!(scan(&mem, true, view(0, 3)), vec![some("c", "3"), some("a", "2")]);
        assert_eq!(scan(&mem, false, view(2, 9)), vec![some("c", "3"), none("e")]);
        {
            let read = mem.read();
            let r = read.range(b"a", b"z", false, view(2, 9));
            assert!(r.covered(b"bb") && r.covered(b"a") && !r.covered(b"d"));
            let r = read.range(b"a", b"z", false, view(0, 2));
            assert!(!r.covered(b"bb"));
        }

        // The flusher's view of the first table, then retirement.
        let writes: Vec<_> = first.final_writes().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
        assert_eq!(writes, vec![(b"a".to_vec(), Some(b"2".to_vec())), (b"c".to_vec(), Some(b"1".to_vec()))]);
        assert!(mem.retire(None, Duration::ZERO).is_empty(), "not flushed yet");
        mem.mark_flushed(&first);
        assert!(mem.retire(Some(1), Duration::from_secs(60)).is_empty(), "a reader still needs it");
        assert_eq!(mem.retire(Some(2), Duration::from_secs(60)).len(), 1);
        assert_eq!(mem.table_count(), 1);
    }

    #[test]
    fn sorted_commits_merge_into_few_runs_and_read_like_a_model() {
        use std::collections::BTreeMap;
        let mem = Memtable::new(0);
        // key -> [(version, value)], the model of every write.
        let mut model: BTreeMap<Vec<u8>, Vec<Write>> = BTreeMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for version in 1..=300u64 {
            // Commits of very different sizes over an overlapping key space.
            let size = if version % 50 == 0 { 400 } else { 1 + next(12) };
            let mut writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            for _ in 0..size {
                let key = format!("k{:04}", next(600)).into_bytes();
                let value = (next(5) > 0).then(|| format!("v{version}").into_bytes());
                writes.insert(key, value);
            }
            for (k, v) in &writes {
                model.entry(k.clone()).or_default().push((version, v.clone()));
            }
            mem.write().apply_sorted(version, writes.into_iter().collect());
        }
        let runs = mem.read().tables.active.runs.len();
        assert!(runs <= 12, "{runs} runs for 300 commits");
        let sees =
            |writes: &[Write], v: View| writes.iter().rev().find(|(w, _)| v.sees(*w)).map(|(_, value)| value.clone());
        for v in [view(0, 300), view(0, 150), view(100, 250), view(299, 300), view(0, 1)] {
            for (key, writes) in &model {
                let got = mem.read().get(key, v).map(|o| o.map(<[u8]>::to_vec));
                assert_eq!(got, sees(writes, v), "key {:?} at {v:?}", String::from_utf8_lossy(key));
            }
            let expected: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                model.iter().filter_map(|(k, w)| sees(w, v).map(|value| (k.clone(), value))).collect();
            for reverse in [false, true] {
                let read = mem.read();
                let got: Vec<_> =
                    read.range(b"k", b"l", reverse, v).map(|(k, val)| (k.to_vec(), val.map(<[u8]>::to_vec))).collect();
                let mut want = expected.clone();
                if reverse {
                    want.reverse();
                }
                assert_eq!(got, want, "range at {v:?}, reverse {reverse}");
            }
        }
        let table = mem.freeze().unwrap();
        let flushed: Vec<_> = table.final_writes().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
        let last: Vec<_> = model.iter().map(|(k, w)| (k.clone(), w.last().unwrap().1.clone())).collect();
        assert_eq!(flushed, last);
    }

    #[test]
    fn final_writes_respect_ranges_of_the_same_table() {
        let mem = Memtable::new(10);
        {
            let mut w = mem.write();
            w.apply(11, set("b", "old"));
            w.apply(11, set("k", "kept"));
            w.apply(12, Mutation::ClearRange(b"a".to_vec(), b"c".to_vec()));
            w.apply(13, set("a", "new"));
        }
        assert_eq!(mem.unflushed_size().1, 4);
        let t = mem.freeze().unwrap();
        assert_eq!(mem.active_size(), (0, 0));
        let writes: Vec<_> = t.final_writes().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(writes, vec![b"a".to_vec(), b"k".to_vec()]);
        assert_eq!(t.cleared_ranges().count(), 1);
        mem.mark_flushed(&t);
        assert_eq!(mem.unflushed_size(), (0, 0));
        assert!(mem.freeze().is_none(), "nothing new");
    }

    #[test]
    fn rollback_takes_back_failed_commits() {
        let mem = Memtable::new(0);
        {
            let mut w = mem.write();
            w.apply(1, set("a", "1"));
            w.note_version(1);
        }
        let before = mem.unflushed_size();
        {
            let mut w = mem.write();
            w.apply(2, set("a", "2"));
            w.apply(2, set("b", "2"));
            w.apply(3, Mutation::ClearRange(b"a".to_vec(), b"z".to_vec()));
            w.note_version(3);
            w.rollback(2);
        }
        assert_eq!(mem.unflushed_size(), before);
        assert_eq!(get(&mem, "a", view(0, 9)), Some(Some("1".into())));
        assert_eq!(get(&mem, "b", view(0, 9)), None);
        assert_eq!(mem.freeze().map(|t| t.newest()), Some(1));
    }
}
