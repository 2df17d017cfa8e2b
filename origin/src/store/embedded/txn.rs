//! A transaction of the embedded engine and its read path.
//!
//! A transaction reads its snapshot (module `snapshot`: redb and the memtable as of its read
//! version) under its own buffered writes (read-your-writes; module `buffer`: found by key
//! hash, sorted once at commit), records read conflict ranges as it reads, and counts its size
//! against FoundationDB's limits with the store's budget. Commit hands the whole transaction to
//! the commit thread (module `commit`); a read-only transaction never reaches it.

use std::{
    cmp::Ordering as CmpOrdering,
    collections::BTreeMap,
    ops::Bound,
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{
    buffer::WriteBuffer,
    commit::{CommitRequest, VersionstampedSet},
    conflicts::{merge_ranges, KeyList},
    engine_err, filter,
    memtable::{self, View},
    snapshot::{owned_entry, Merged, SnapIter, Snapshot},
    EmbeddedOptions, EmbeddedStore,
};
use crate::store::{
    backoff_pause, budget::TxnBudget, Committed, KeyValue, KvStore, KvTxn, RangeRead, Result, StoreError, Versionstamp,
    Watch,
};

impl EmbeddedStore {
    /// Starts a transaction on a pinned snapshot, with the last committed version as its read
    /// version.
    pub(super) fn begin_txn(&self) -> Result<EmbeddedTxn> {
        let store = self.me.upgrade().ok_or_else(|| StoreError::Unavailable("the store is closing".into()))?;
        let started = Instant::now();
        let snapshot = self.shared.snapshot()?;
        // Taken after the snapshot, so it is at least the snapshot's flushed version.
        let read_version = self.shared.last_version.load(Ordering::Acquire).max(snapshot.flushed);
        Ok(EmbeddedTxn {
            snapshot,
            store,
            read_version,
            started,
            writes: WriteBuffer::new(),
            cleared: BTreeMap::new(),
            versionstamped: Vec::new(),
            reads: Vec::new(),
            read_keys: KeyList::default(),
            watches: Vec::new(),
            budget: TxnBudget::default(),
        })
    }
}

/// A buffered mutation of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Set(Vec<u8>),
    Clear,
    /// An atomic add whose base value is only known at commit.
    Add(i64),
}

impl Op {
    /// The value a read sees, given the snapshot's value underneath.
    pub(super) fn resolve(&self, base: Option<&[u8]>) -> Option<Vec<u8>> {
        match self {
            Op::Set(v) => Some(v.clone()),
            Op::Clear => None,
            Op::Add(d) => Some(add_le(base, *d)),
        }
    }
}

/// FoundationDB's `ADD` with an 8-byte parameter: the existing value, zero-extended or truncated
/// to 8 bytes, plus `delta`, little endian, wrapping.
pub(super) fn add_le(base: Option<&[u8]>, delta: i64) -> Vec<u8> {
    let mut b = [0u8; 8];
    if let Some(v) = base {
        let n = v.len().min(8);
        b[..n].copy_from_slice(&v[..n]);
    }
    i64::from_le_bytes(b).wrapping_add(delta).to_le_bytes().to_vec()
}

/// The smallest key after `key`.
fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// An embedded transaction: a redb snapshot and the memtable as of its read version, plus
/// buffered writes.
pub(super) struct EmbeddedTxn {
    /// Declared first so the redb read transaction ends before the store handle goes.
    snapshot: Snapshot,
    store: Arc<EmbeddedStore>,
    read_version: u64,
    started: Instant,
    /// Buffered mutations of single keys; they override the snapshot and `cleared`.
    writes: WriteBuffer,
    /// Ranges cleared by this transaction, begin → end, disjoint.
    cleared: BTreeMap<Vec<u8>, Vec<u8>>,
    versionstamped: Vec<VersionstampedSet>,
    /// Read conflict ranges, unmerged.
    reads: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys read one by one (read conflicts of one key each), in reading order, in one buffer:
    /// a group commit reads thousands.
    read_keys: KeyList,
    watches: Vec<(Vec<u8>, oneshot::Sender<()>)>,
    /// What the transaction has spent of FoundationDB's size limits.
    budget: TxnBudget,
}

impl EmbeddedTxn {
    fn opts(&self) -> &EmbeddedOptions {
        &self.store.shared.opts
    }

    /// The commits this transaction sees in the memtable.
    fn view(&self) -> View {
        View { flushed: self.snapshot.flushed, version: self.read_version }
    }

    fn check_age(&self) -> Result<()> {
        if self.started.elapsed() > self.opts().max_txn_age {
            return Err(StoreError::TooOld);
        }
        Ok(())
    }

    /// The read conflict of one key (the range from it to the key after it).
    fn add_read_key(&mut self, key: &[u8]) {
        self.budget.read_key(key);
        self.read_keys.push(key);
    }

    fn add_read_conflict(&mut self, begin: Vec<u8>, end: Vec<u8>) {
        self.budget.read_range(begin.len(), end.len());
        self.reads.push((begin, end));
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        let upto = (Bound::Unbounded, Bound::Included(key));
        self.cleared.range::<[u8], _>(upto).next_back().is_some_and(|(_, end)| key < end.as_slice())
    }

    fn is_read_only(&self) -> bool {
        self.writes.is_empty() && self.cleared.is_empty() && self.versionstamped.is_empty()
    }

    /// `keys` (with their hashes) as of the read version, in their order: the memtable, else
    /// the redb snapshot, unless the key filter says redb does not hold the key.
    fn snapshot_get_each(&self, keys: &[(&[u8], u64)]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        // Keys the memtable has nothing on, by index: redb decides.
        let mut open = Vec::new();
        {
            let mem = self.store.shared.mem.read();
            // Checked under the memtable lock: a flushed table this snapshot needs is only
            // dropped (under the write lock) once a transaction this old is too old.
            self.check_age()?;
            for (i, found) in mem.get_each(keys, self.view()).into_iter().enumerate() {
                match found {
                    Some(value) => values[i] = value.map(<[u8]>::to_vec),
                    None => open.push(i),
                }
            }
        }
        let shared = &self.store.shared;
        let maybe = shared.filter.may_contain_each(open.iter().map(|&i| filter::mix(keys[i].1)));
        for (i, maybe) in open.into_iter().zip(maybe) {
            if !maybe {
                shared.filtered_reads.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            values[i] = self.snapshot.kv.get(keys[i].0).map_err(engine_err)?.map(|g| g.value().to_vec());
        }
        Ok(values)
    }

    /// The merged range read; also whether `limit` cut it short.
    fn read_range(&self, r: &RangeRead) -> Result<(Vec<KeyValue>, bool)> {
        type OwnIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Op)> + 'a>;

        let (begin, end) = (r.begin.as_slice(), r.end.as_slice());
        // The memtable a chunk at a time, each checked for age under its lock as in
        // `snapshot_get_each`; redb is walked with no lock held.
        let check = || self.check_age();
        let first = if r.limit > 0 { r.limit + 1 } else { 64 };
        let mem = memtable::MemChunks::new(&self.store.shared.mem, &check, (begin, end), r.reverse, self.view(), first);
        let range = self.snapshot.kv.range::<&[u8]>(begin..end).map_err(engine_err)?;
        let own = self
            .writes
            .range(begin, end)
            .ok_or_else(|| StoreError::Engine("a range read of a write buffer not in key order".into()))?
            .iter()
            .map(|(k, op)| (k, op));
        let (redb, mut own): (SnapIter<'_>, OwnIter<'_>) = if r.reverse {
            (Box::new(range.rev().map(owned_entry)), Box::new(own.rev()))
        } else {
            (Box::new(range.map(owned_entry)), Box::new(own))
        };
        let mut snap = Merged::new(redb, mem, r.reverse);
        // The next snapshot entry not hidden by a range this transaction cleared.
        let next_snap = |snap: &mut Merged<'_>| -> Result<Option<KeyValue>> {
            while let Some((k, v)) = snap.next_entry()? {
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
        Ok(self.get_many(&[key]).await?.pop().flatten())
    }

    async fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        // Keys the snapshot answers: their index, hash, and an atomic add of this transaction
        // to apply on top. Values this transaction decided itself need no snapshot read and no
        // read conflict, and (as in FoundationDB, where they never reach a storage server)
        // cannot be too old.
        let mut asked: Vec<(usize, u64, Option<i64>)> = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            TxnBudget::check_key(key)?;
            let hash = memtable::key_hash(key);
            match self.writes.get(key, hash) {
                Some(Op::Set(v)) => values[i] = Some(v.clone()),
                Some(Op::Clear) => {}
                Some(Op::Add(d)) => asked.push((i, hash, Some(*d))),
                None if self.is_cleared(key) => {}
                None => asked.push((i, hash, None)),
            }
        }
        let lookups: Vec<(&[u8], u64)> = asked.iter().map(|&(i, hash, _)| (keys[i], hash)).collect();
        let bases = self.snapshot_get_each(&lookups)?;
        for ((i, _, pending), base) in asked.into_iter().zip(bases) {
            self.add_read_key(keys[i]);
            values[i] = match pending {
                Some(d) => Some(add_le(base.as_deref(), d)),
                None => base,
            };
        }
        Ok(values)
    }

    async fn get_range(&mut self, range: &RangeRead) -> Result<Vec<KeyValue>> {
        self.check_age()?;
        if range.end < range.begin {
            return Err(StoreError::InvertedRange);
        }
        if range.end == range.begin {
            return Ok(Vec::new());
        }
        self.writes.sort();
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
        self.set_owned(key.to_vec(), value.to_vec())
    }

    fn set_owned(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.budget.set(&key, &value)?;
        self.writes.put(key, Op::Set(value));
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<()> {
        self.budget.clear(key)?;
        self.writes.put(key, Op::Clear);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        self.budget.clear_range(begin, end)?;
        if begin == end {
            return Ok(());
        }
        // Drop buffered writes in the range: the clear supersedes them.
        self.writes.remove_range(begin, end);
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
        self.budget.atomic_add(key)?;
        let cleared = self.is_cleared(key);
        let op = match self.writes.get(key, memtable::key_hash(key)) {
            Some(Op::Set(v)) => Op::Set(add_le(Some(v.as_slice()), delta)),
            Some(Op::Clear) => Op::Set(add_le(None, delta)),
            Some(Op::Add(d)) => Op::Add(d.wrapping_add(delta)),
            None if cleared => Op::Set(add_le(None, delta)),
            None => Op::Add(delta),
        };
        self.writes.put(key, op);
        Ok(())
    }

    fn set_versionstamped_key(&mut self, key: &[u8], offset: usize, value: &[u8]) -> Result<()> {
        self.set_versionstamped_key_owned(key.to_vec(), offset, value.to_vec())
    }

    fn set_versionstamped_key_owned(&mut self, key: Vec<u8>, offset: usize, value: Vec<u8>) -> Result<()> {
        self.budget.set_versionstamped_key(&key, offset, &value)?;
        self.versionstamped.push(VersionstampedSet { key, offset, value });
        Ok(())
    }

    fn watch(&mut self, key: &[u8]) -> Result<Watch> {
        TxnBudget::check_key(key)?;
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
        txn.budget.refusal()?;
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
        txn.budget.check_total()?;
        txn.check_age()?;
        let EmbeddedTxn {
            snapshot,
            store,
            read_version,
            writes,
            cleared,
            versionstamped,
            reads,
            read_keys,
            watches,
            budget,
            ..
        } = txn;
        // The snapshot pins redb pages and memtable tables; let it go before waiting for the
        // commit thread.
        drop(snapshot);
        let (reply, answer) = oneshot::channel();
        let req = CommitRequest {
            read_version,
            reads: merge_ranges(reads),
            read_keys: read_keys.into_sorted(),
            cleared: cleared.into_iter().collect(),
            ops: writes.into_sorted(),
            versionstamped,
            watches,
            size: budget.bytes(),
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

    #[test]
    fn atomic_add_follows_foundationdb() {
        assert_eq!(add_le(None, 5), 5i64.to_le_bytes());
        assert_eq!(add_le(Some(&[1]), 1), 2i64.to_le_bytes());
        assert_eq!(add_le(Some(&[0xff; 10]), 1), 0i64.to_le_bytes());
        assert_eq!(add_le(Some(&i64::MAX.to_le_bytes()), 1), i64::MIN.to_le_bytes());
    }
}
