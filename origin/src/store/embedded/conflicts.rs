//! What recent commits wrote, for the conflict check and for watches.
//!
//! The commit thread keeps the write set of every commit for as long as a transaction that
//! predates it may still commit (bounded by age and by a key count): a transaction fails with
//! [`StoreError::Conflict`](crate::store::StoreError::Conflict) if a commit after its read
//! version wrote into its read conflict set, and with `TooOld` if its read version predates
//! what is retained. Watches live under the same lock, because the same write sets fire them.

use std::{
    collections::{BTreeMap, VecDeque},
    ops::Bound,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

/// How many watch registrations between sweeps of watchers whose futures were dropped.
const WATCH_SWEEP_EVERY: usize = 1024;

/// A set of key ranges `[begin, end)`, sorted and disjoint.
pub(super) type RangeSet = Vec<(Vec<u8>, Vec<u8>)>;

/// Sorts and merges ranges into a [`RangeSet`], dropping empty ones.
pub(super) fn merge_ranges(mut ranges: Vec<(Vec<u8>, Vec<u8>)>) -> RangeSet {
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

pub(super) fn range_set_contains(set: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> bool {
    let i = set.partition_point(|(b, _)| b.as_slice() <= key);
    i > 0 && key < set[i - 1].1.as_slice()
}

fn range_set_overlaps(set: &[(Vec<u8>, Vec<u8>)], begin: &[u8], end: &[u8]) -> bool {
    let i = set.partition_point(|(_, e)| e.as_slice() <= begin);
    i < set.len() && set[i].0.as_slice() < end
}

/// What one committed transaction wrote: its write conflict set.
#[derive(Debug)]
pub(super) struct WriteSet {
    pub(super) version: u64,
    /// When it was committed, for age-based eviction.
    pub(super) at: Instant,
    /// Keys set, cleared or added to, sorted and unique.
    pub(super) keys: KeyList,
    /// Cleared ranges, sorted and disjoint.
    pub(super) ranges: RangeSet,
}

impl WriteSet {
    fn weight(&self) -> usize {
        self.keys.len() + self.ranges.len()
    }

    /// Whether this wrote anything in `reads`.
    pub(super) fn intersects(&self, reads: &[(Vec<u8>, Vec<u8>)]) -> bool {
        if reads.is_empty() {
            return false;
        }
        let keys_hit = if self.keys.len() <= reads.len() {
            self.keys.iter().any(|k| range_set_contains(reads, k))
        } else {
            reads.iter().any(|(b, e)| {
                let i = self.keys.partition_point(|k| k < b.as_slice());
                i < self.keys.len() && self.keys.get(i) < e.as_slice()
            })
        };
        keys_hit || self.ranges.iter().any(|(b, e)| range_set_overlaps(reads, b, e))
    }

    /// Whether this wrote any of `reads` (sorted, unique).
    pub(super) fn intersects_keys(&self, reads: &KeyList) -> bool {
        if reads.len() == 0 {
            return false;
        }
        let hit = if self.keys.len() <= reads.len() {
            self.keys.iter().any(|k| reads.contains(k))
        } else {
            reads.iter().any(|k| self.keys.contains(k))
        };
        hit || (!self.ranges.is_empty() && reads.iter().any(|k| range_set_contains(&self.ranges, k)))
    }

    /// Whether this wrote `key`.
    fn touches(&self, key: &[u8]) -> bool {
        self.keys.contains(key) || range_set_contains(&self.ranges, key)
    }
}

/// Sorted, unique keys in one buffer rather than an allocation each: a write set holds every
/// key its commit wrote for as long as later commits are checked against it.
#[derive(Debug, Default)]
pub(super) struct KeyList {
    bytes: Vec<u8>,
    /// Where each key ends in `bytes`.
    ends: Vec<usize>,
}

impl KeyList {
    /// The list of `keys`, which must come sorted and unique.
    pub(super) fn from_sorted<'k>(keys: impl IntoIterator<Item = &'k [u8]>) -> Self {
        let mut list = KeyList::default();
        for key in keys {
            list.bytes.extend_from_slice(key);
            list.ends.push(list.bytes.len());
        }
        list
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Appends `key`, which leaves the list unsorted until [`KeyList::into_sorted`].
    pub(super) fn push(&mut self, key: &[u8]) {
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len());
    }

    /// The keys sorted, without repeats.
    pub(super) fn into_sorted(self) -> KeyList {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_unstable_by(|&a, &b| self.get(a).cmp(self.get(b)));
        order.dedup_by(|a, b| self.get(*a) == self.get(*b));
        KeyList::from_sorted(order.into_iter().map(|i| self.get(i)))
    }

    fn get(&self, i: usize) -> &[u8] {
        let begin = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[begin..self.ends[i]]
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The index of the first key for which `pred` is false (`pred` true for a prefix).
    fn partition_point(&self, pred: impl Fn(&[u8]) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.get(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn contains(&self, key: &[u8]) -> bool {
        let i = self.partition_point(|k| k < key);
        i < self.len() && self.get(i) == key
    }
}

/// Recent commits' write sets and registered watches, under one lock.
pub(super) struct Tracker {
    /// Write sets of commits, oldest first, versions increasing.
    history: VecDeque<WriteSet>,
    /// Sum of the weights in `history`.
    retained: usize,
    /// Every commit with a version above this is in `history`.
    pub(super) complete_after: u64,
    /// Pending watches by key. Usually empty; firing checks that first.
    watchers: BTreeMap<Vec<u8>, Vec<oneshot::Sender<()>>>,
    /// Registrations since the last sweep.
    registrations: usize,
}

impl Tracker {
    pub(super) fn new(version: u64) -> Self {
        Tracker {
            history: VecDeque::new(),
            retained: 0,
            complete_after: version,
            watchers: BTreeMap::new(),
            registrations: 0,
        }
    }

    /// Write sets of commits after `version`.
    pub(super) fn newer_than(&self, version: u64) -> impl Iterator<Item = &WriteSet> {
        let i = self.history.partition_point(|w| w.version <= version);
        self.history.range(i..)
    }

    /// Registers a watch on `key` for commits after `since` (other than `own`, the watching
    /// transaction's own commit), firing it at once if a retained commit already wrote it, or if
    /// commits after `since` are no longer retained (a spurious wake-up, which FoundationDB's
    /// watches allow too, rather than a missed one).
    pub(super) fn register_watch(&mut self, key: Vec<u8>, tx: oneshot::Sender<()>, since: u64, own: Option<u64>) {
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
    pub(super) fn fire(&mut self, ws: &WriteSet) {
        if self.watchers.is_empty() {
            return;
        }
        let mut hit: Vec<Vec<u8>> =
            ws.keys.iter().filter(|k| self.watchers.contains_key(*k)).map(<[u8]>::to_vec).collect();
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

    pub(super) fn push(&mut self, ws: WriteSet) {
        self.retained += ws.weight();
        self.history.push_back(ws);
    }

    /// Forgets write sets older than `max_age` or beyond `max_weight` retained keys.
    pub(super) fn evict(&mut self, max_age: Duration, max_weight: usize) {
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
            keys: KeyList::from_sorted(keys.iter().map(|k| k.as_bytes())),
            ranges,
        };
        assert!(ws(&["b"], vec![]).intersects(&set));
        assert!(!ws(&["c", "cc", "h"], vec![]).intersects(&set));
        assert!(ws(&["c", "cc", "h"], vec![]).intersects(&[r("h", "i")]));
        assert!(ws(&[], vec![r("c", "e")]).intersects(&set));
        assert!(!ws(&[], vec![r("c", "d")]).intersects(&set));
        assert!(ws(&[], vec![r("c", "d")]).touches(b"c1"));
        assert!(!ws(&["a"], vec![]).intersects(&[]));
        // Keys read one by one, pushed in reading order with a repeat.
        let mut read = KeyList::default();
        for k in ["m", "c", "x", "c"] {
            read.push(k.as_bytes());
        }
        let read = read.into_sorted();
        assert_eq!(read.iter().collect::<Vec<_>>(), vec![&b"c"[..], b"m", b"x"]);
        assert!(ws(&["m"], vec![]).intersects_keys(&read));
        assert!(ws(&["a", "b", "d", "e", "x"], vec![]).intersects_keys(&read));
        assert!(!ws(&["a", "b", "d", "e", "y"], vec![]).intersects_keys(&read));
        assert!(!ws(&["ca", "mm"], vec![]).intersects_keys(&read));
        assert!(ws(&[], vec![r("l", "n")]).intersects_keys(&read));
        assert!(!ws(&[], vec![r("d", "m")]).intersects_keys(&read));
        assert!(!ws(&["c"], vec![]).intersects_keys(&KeyList::default()));
    }
}
