//! Snapshots: what a transaction reads as of its read version.
//!
//! A transaction takes a redb read transaction holding every commit up to a flushed version
//! `F`, pinned so that the memtable keeps its tables newer than `F` alongside, and sees the
//! memtable's commits in `(F, V]` over it, `V` being its read version. [`Merged`] reads a range
//! of that view: the memtable's writes replace redb's values, and its clears and cleared ranges
//! hide redb's keys. docs/STORAGE.md states the invariant ("Pinned snapshots").

use std::{cmp::Ordering as CmpOrdering, collections::btree_map, sync::atomic::Ordering, sync::Arc};

use redb::{ReadOnlyTable, ReadableDatabase};

use super::{
    engine_err, lock,
    memtable::{MemChunks, MemEntry},
    Shared, KV, META, VERSION_KEY,
};
use crate::store::{KeyValue, Result};

impl Shared {
    /// A redb snapshot, pinned so that the memtable keeps what it needs alongside.
    pub(super) fn snapshot(self: &Arc<Self>) -> Result<Snapshot> {
        // Pin before the read transaction begins, at a flushed version its snapshot cannot be
        // below: a flush that the snapshot misses then sees the pin before it retires tables.
        let pin = {
            let mut pins = lock(&self.pins);
            let at = self.flushed_version.load(Ordering::Acquire);
            *pins.entry(at).or_default() += 1;
            Pin { shared: self.clone(), at }
        };
        let rtx = self.db.begin_read().map_err(engine_err)?;
        let meta = rtx.open_table(META).map_err(engine_err)?;
        let flushed = meta.get(VERSION_KEY).map_err(engine_err)?.map_or(0, |g| g.value());
        let kv = rtx.open_table(KV).map_err(engine_err)?;
        Ok(Snapshot { kv, flushed, _pin: pin })
    }
}

/// A pinned redb snapshot: its `kv` table holds every commit up to `flushed`.
pub(super) struct Snapshot {
    /// Declared first so the read transaction ends before the pin goes.
    pub(super) kv: ReadOnlyTable<&'static [u8], &'static [u8]>,
    pub(super) flushed: u64,
    _pin: Pin,
}

/// A registration in [`Shared::pins`], removed on drop.
struct Pin {
    shared: Arc<Shared>,
    at: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = lock(&self.shared.pins);
        if let btree_map::Entry::Occupied(mut e) = pins.entry(self.at) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// A snapshot range entry, copied out of redb's pages.
type SnapEntry = (redb::AccessGuard<'static, &'static [u8]>, redb::AccessGuard<'static, &'static [u8]>);

pub(super) fn owned_entry(item: Result<SnapEntry, redb::StorageError>) -> Result<KeyValue, redb::StorageError> {
    item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
}

pub(super) type SnapIter<'a> = Box<dyn Iterator<Item = Result<KeyValue, redb::StorageError>> + 'a>;

/// A range of the snapshot as of a read version: the redb snapshot overlaid with the memtable,
/// whose writes replace redb's values and whose clears and cleared ranges hide redb's keys.
pub(super) struct Merged<'a> {
    redb: SnapIter<'a>,
    mem: MemChunks<'a>,
    redb_head: Option<KeyValue>,
    mem_head: Option<MemEntry>,
    started: bool,
    reverse: bool,
}

impl<'a> Merged<'a> {
    pub(super) fn new(redb: SnapIter<'a>, mem: MemChunks<'a>, reverse: bool) -> Self {
        Merged { redb, mem, redb_head: None, mem_head: None, started: false, reverse }
    }

    /// Moves to the next redb entry no memtable cleared range hides.
    fn advance_redb(&mut self) -> Result<()> {
        self.redb_head = None;
        for item in self.redb.by_ref() {
            let (k, v) = item.map_err(engine_err)?;
            if !self.mem.covered(&k) {
                self.redb_head = Some((k, v));
                break;
            }
        }
        Ok(())
    }

    pub(super) fn next_entry(&mut self) -> Result<Option<KeyValue>> {
        if !self.started {
            self.started = true;
            self.mem.start()?;
            self.advance_redb()?;
            self.mem_head = self.mem.next_entry()?;
        }
        loop {
            let order = match (&self.redb_head, &self.mem_head) {
                (None, None) => return Ok(None),
                (Some(_), None) => CmpOrdering::Less,
                (None, Some(_)) => CmpOrdering::Greater,
                (Some((rk, _)), Some((mk, _))) => {
                    let o = rk.cmp(mk);
                    if self.reverse {
                        o.reverse()
                    } else {
                        o
                    }
                }
            };
            if order == CmpOrdering::Less {
                let out = self.redb_head.take();
                self.advance_redb()?;
                return Ok(out);
            }
            if order == CmpOrdering::Equal {
                // The memtable's newer write (or clear) replaces redb's entry.
                self.advance_redb()?;
            }
            let head = self.mem_head.take();
            self.mem_head = self.mem.next_entry()?;
            if let Some((k, Some(v))) = head {
                return Ok(Some((k, v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, VecDeque},
        time::Duration,
    };

    use crate::store::{
        embedded::{
            tests::{constant_flush, manual_flush, write_key},
            EmbeddedOptions, EmbeddedStore,
        },
        KeyValue, KvTxn, RangeRead, Store, StoreError,
    };

    /// Point reads of `k0..k9` and two range reads, as one transaction sees them.
    async fn state_of(tx: &mut dyn KvTxn) -> (Vec<Option<Vec<u8>>>, Vec<KeyValue>, Vec<KeyValue>) {
        let mut points = Vec::new();
        for i in 0..10 {
            points.push(tx.get(&[b'k', i]).await.unwrap());
        }
        let rows = tx.get_range(&RangeRead::prefix(b"k")).await.unwrap();
        let rev = tx.get_range(&RangeRead::prefix(b"k").reverse(true).limit(3)).await.unwrap();
        (points, rows, rev)
    }

    /// A transaction keeps reading exactly its snapshot while flushes move what it sees from
    /// the memtable into redb underneath; once it is too old, it fails rather than read a
    /// dropped table.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_read_versions_survive_flushes() {
        let dir = tempfile::tempdir().unwrap();
        // Long enough that a busy machine's flushes and commits below never age the snapshots
        // out before the end, where the test waits it out on purpose.
        let age = Duration::from_secs(3);
        let embedded =
            EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions { max_txn_age: age, ..manual_flush() })
                .unwrap();
        let store: Store = embedded.clone();
        let key = |i: u8| vec![b'k', i];
        let mut tx = store.begin().await.unwrap();
        for i in 0..10 {
            tx.set(&key(i), b"v1").unwrap();
        }
        tx.commit().await.unwrap();
        embedded.flush().await.unwrap();

        let mut v1 = store.begin().await.unwrap();
        let seen_v1 = state_of(&mut *v1).await;
        let mut tx = store.begin().await.unwrap();
        tx.set(&key(0), b"v2").unwrap();
        tx.clear(&key(1)).unwrap();
        tx.clear_range(&key(3), &key(6)).unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        tx.set(&key(4), b"v2").unwrap();
        tx.set(&key(12), b"v2").unwrap();
        tx.commit().await.unwrap();
        // v2 begins with these commits in the memtable only.
        let mut v2 = store.begin().await.unwrap();
        let seen_v2 = state_of(&mut *v2).await;
        assert_eq!(seen_v2.1.len(), 8, "{:?}", seen_v2.1);
        assert_ne!(seen_v1, seen_v2);

        // Flush: v2's commits are now in redb, where v2's snapshot does not see them.
        embedded.flush().await.unwrap();
        assert_eq!(state_of(&mut *v1).await, seen_v1);
        assert_eq!(state_of(&mut *v2).await, seen_v2);
        let mut fresh = store.begin().await.unwrap();
        assert_eq!(state_of(&mut *fresh).await, seen_v2);

        // More commits and flushes: none of them shows in the older snapshots.
        for round in 0..3u8 {
            let mut tx = store.begin().await.unwrap();
            tx.clear_range(&key(0), &key(2)).unwrap();
            tx.set(&key(7), &[round]).unwrap();
            tx.commit().await.unwrap();
            embedded.flush().await.unwrap();
        }
        assert_eq!(state_of(&mut *v1).await, seen_v1);
        assert_eq!(state_of(&mut *v2).await, seen_v2);
        assert_eq!(state_of(&mut *fresh).await, seen_v2);
        assert!(embedded.shared.mem.table_count() > 1, "tables the snapshots need were dropped");

        // Once nobody needs them, flushed tables go.
        drop((v1, v2, fresh));
        embedded.flush().await.unwrap();
        assert_eq!(embedded.shared.mem.table_count(), 1);

        // A snapshot older than max_txn_age fails instead of reading a table dropped for age.
        let mut old = store.begin().await.unwrap();
        write_key(&store, &key(9), b"v3").await;
        embedded.flush().await.unwrap();
        tokio::time::sleep(age + Duration::from_millis(100)).await;
        embedded.flush().await.unwrap(); // retires by age
        let r = old.get(&key(9)).await;
        assert!(matches!(r, Err(StoreError::TooOld)), "{r:?}");
    }

    /// Cleared ranges (and clears) in the memtable hide what redb holds, in point and range
    /// reads of every shape, before and after the flush and across a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memtable_clears_hide_flushed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let key = |i: u8| vec![b'k', i];
        let ids = |rows: Vec<KeyValue>| rows.into_iter().map(|(k, _)| k[1]).collect::<Vec<u8>>();
        let check = |store: Store, when: &'static str| async move {
            let all = RangeRead::prefix(b"k");
            let mut tx = store.begin().await.unwrap();
            assert_eq!(ids(tx.get_range(&all).await.unwrap()), vec![1, 2, 5, 7, 8], "{when}");
            assert_eq!(ids(tx.get_range(&all.clone().reverse(true)).await.unwrap()), vec![8, 7, 5, 2, 1], "{when}");
            assert_eq!(ids(tx.get_range(&all.clone().limit(3)).await.unwrap()), vec![1, 2, 5], "{when}");
            assert_eq!(ids(tx.get_range(&all.clone().reverse(true).limit(2)).await.unwrap()), vec![8, 7], "{when}");
            let inside = RangeRead::between(key(3), key(7));
            assert_eq!(ids(tx.get_range(&inside).await.unwrap()), vec![5], "{when}");
            for (i, present) in [(0, false), (1, true), (3, false), (4, false), (5, true), (6, false), (9, false)] {
                assert_eq!(tx.get(&key(i)).await.unwrap().is_some(), present, "{when}: key {i}");
            }
            assert_eq!(tx.get(&key(5)).await.unwrap(), Some(b"new".to_vec()), "{when}");
        };
        {
            let embedded = EmbeddedStore::open(&path, manual_flush()).unwrap();
            let store: Store = embedded.clone();
            let mut tx = store.begin().await.unwrap();
            for i in 0..10 {
                tx.set(&key(i), b"flushed").unwrap();
            }
            tx.commit().await.unwrap();
            embedded.flush().await.unwrap();
            assert_eq!(embedded.flushed_version(), embedded.last_version());

            let mut before = store.begin().await.unwrap();
            // In the memtable only: ranges over flushed keys, a point clear, a set after a
            // range in a later commit, and a range and set in one commit.
            let mut tx = store.begin().await.unwrap();
            tx.clear_range(&key(3), &key(7)).unwrap();
            tx.clear(&key(9)).unwrap();
            tx.commit().await.unwrap();
            write_key(&store, &key(5), b"new").await;
            let mut tx = store.begin().await.unwrap();
            tx.clear_range(&key(0), &key(2)).unwrap();
            tx.set(&key(1), b"same commit").unwrap();
            tx.clear_range(&key(6), &[b'k', 6, 0]).unwrap();
            tx.commit().await.unwrap();
            assert!(embedded.flushed_version() < embedded.last_version());
            check(store.clone(), "in the memtable").await;
            assert_eq!(before.get_range(&RangeRead::prefix(b"k")).await.unwrap().len(), 10);

            embedded.flush().await.unwrap();
            check(store.clone(), "flushed").await;
            assert_eq!(before.get_range(&RangeRead::prefix(b"k")).await.unwrap().len(), 10);
        }
        let reopened: Store = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
        check(reopened, "reopened").await;
    }

    /// What range read `r` answers over `model`.
    fn model_range(model: &BTreeMap<Vec<u8>, Vec<u8>>, r: &RangeRead) -> Vec<KeyValue> {
        let rows = model.range(r.begin.clone()..r.end.clone()).map(|(k, v)| (k.clone(), v.clone()));
        let mut want: Vec<KeyValue> = if r.reverse { rows.rev().collect() } else { rows.collect() };
        if r.limit > 0 {
            want.truncate(r.limit);
        }
        want
    }

    /// Random transactions against a model, with flushes running all the time: every
    /// transaction, however old, reads exactly the state of its read version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_match_a_model_under_constant_flushing() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let embedded = EmbeddedStore::open(&dir.path().join("s.redb"), constant_flush()).unwrap();
        let store: Store = embedded.clone();
        let key = |i: u8| vec![b'm', i];
        let mut rng = StdRng::seed_from_u64(0xf1a5);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        // Open transactions and the state each must see.
        type Model = BTreeMap<Vec<u8>, Vec<u8>>;
        let mut readers: VecDeque<(Box<dyn KvTxn>, Model)> = VecDeque::new();
        for step in 0..400 {
            let mut tx = store.begin().await.unwrap();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..40);
                match rng.random_range(0..10) {
                    0..=4 => {
                        let v = vec![rng.random::<u8>(); rng.random_range(0..6)];
                        tx.set(&key(i), &v).unwrap();
                        model.insert(key(i), v);
                    }
                    5 | 6 => {
                        tx.clear(&key(i)).unwrap();
                        model.remove(&key(i));
                    }
                    7 => {
                        let j = rng.random_range(i..=i.saturating_add(8).min(40));
                        tx.clear_range(&key(i), &key(j)).unwrap();
                        model.retain(|k, _| k < &key(i) || k >= &key(j));
                    }
                    _ => {
                        let d = rng.random_range(-50..50);
                        tx.atomic_add(&key(i), d).unwrap();
                        let mut b = [0u8; 8];
                        if let Some(v) = model.get(&key(i)) {
                            let n = v.len().min(8);
                            b[..n].copy_from_slice(&v[..n]);
                        }
                        model.insert(key(i), i64::from_le_bytes(b).wrapping_add(d).to_le_bytes().to_vec());
                    }
                }
            }
            tx.commit().await.unwrap();
            if step % 7 == 0 {
                readers.push_back((store.begin().await.unwrap(), model.clone()));
                if readers.len() > 12 {
                    readers.pop_front();
                }
            }
            for (reader, seen) in readers.iter_mut() {
                let i = rng.random_range(0..40);
                assert_eq!(reader.get(&key(i)).await.unwrap(), seen.get(&key(i)).cloned(), "step {step}: get {i}");
                let (lo, hi) = (rng.random_range(0..40u8), rng.random_range(0..41u8));
                let r = RangeRead::between(key(lo.min(hi)), key(lo.max(hi)))
                    .limit(rng.random_range(0..5))
                    .reverse(rng.random_bool(0.5));
                assert_eq!(reader.get_range(&r).await.unwrap(), model_range(seen, &r), "step {step}: {r:?}");
            }
        }
        assert!(embedded.stats().flushes > 10, "{:?}", embedded.stats());
    }

    /// Long range reads, which take the memtable a chunk at a time (doubling up to 256 entries)
    /// while commits and flushes go on between chunks: forward and reverse, with and without a
    /// limit, over clears and cleared ranges, with the reader's own writes merged in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_range_reads_across_chunks_match_a_model() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let store: Store = EmbeddedStore::open(&dir.path().join("s.redb"), constant_flush()).unwrap();
        let key = |i: u16| [b"c".as_slice(), &i.to_be_bytes()].concat();
        let mut rng = StdRng::seed_from_u64(0xc4u64);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for step in 0..60 {
            let mut tx = store.begin().await.unwrap();
            for _ in 0..rng.random_range(50..400) {
                let i = rng.random_range(0..1500);
                if rng.random_bool(0.8) {
                    let v = vec![rng.random::<u8>(); rng.random_range(1..4)];
                    tx.set(&key(i), &v).unwrap();
                    model.insert(key(i), v);
                } else {
                    tx.clear(&key(i)).unwrap();
                    model.remove(&key(i));
                }
            }
            if step % 5 == 0 {
                let i = rng.random_range(0..1400);
                let j = i + rng.random_range(1..100);
                tx.clear_range(&key(i), &key(j)).unwrap();
                model.retain(|k, _| k < &key(i) || k >= &key(j));
            }
            tx.commit().await.unwrap();
            // A reader with writes of its own, reading while the next commits land.
            let mut reader = store.begin().await.unwrap();
            let mut seen = model.clone();
            for _ in 0..20 {
                let i = rng.random_range(0..1500);
                reader.set(&key(i), b"own").unwrap();
                seen.insert(key(i), b"own".to_vec());
            }
            let writer = {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0..20u16 {
                        let mut tx = store.begin().await.unwrap();
                        tx.set(&key(1500 + n), b"later").unwrap();
                        tx.clear(&key(n * 7)).unwrap();
                        tx.commit().await.unwrap();
                    }
                })
            };
            for _ in 0..4 {
                let (lo, hi) = (rng.random_range(0..1500u16), rng.random_range(0..1600u16));
                let limit = [0, 1, 3, 100, 300, 700][rng.random_range(0..6)];
                let r = RangeRead::between(key(lo.min(hi)), key(lo.max(hi))).limit(limit).reverse(rng.random_bool(0.5));
                assert_eq!(reader.get_range(&r).await.unwrap(), model_range(&seen, &r), "step {step}: {r:?}");
            }
            writer.await.unwrap();
            // What the writer did is part of the model from now on.
            for n in 0..20u16 {
                model.insert(key(1500 + n), b"later".to_vec());
                model.remove(&key(n * 7));
            }
        }
    }
}
