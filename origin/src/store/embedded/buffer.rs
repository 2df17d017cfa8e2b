//! A transaction's buffered point mutations: one per key, found by the key's hash while the
//! transaction runs, sorted once when it commits (or when a range read needs them in order).
//!
//! A group of sends writes ten to twenty thousand keys and reads almost none of them back, so
//! keeping them in key order as they arrive (a B-tree) costs more than one sort at the end: the
//! tree compares each new key with a dozen others and moves nodes about, where the sort's
//! comparisons are fewer and its moves are of a flat array.

use rustc_hash::FxHashMap;

use super::{memtable::key_hash, txn::Op};

/// No earlier mutation with the same hash.
const END: u32 = u32::MAX;

/// The buffered mutations of single keys; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct WriteBuffer {
    /// One entry per key; in key order when `sorted`.
    ops: Vec<(Vec<u8>, Op)>,
    /// Each key's [`key_hash`] → the index of the last entry added with that hash; the others
    /// with the same hash (distinct keys that collide) chain through `chain`.
    index: FxHashMap<u64, u32>,
    /// Per entry, the index of the entry added before it with the same hash, or [`END`].
    chain: Vec<u32>,
    /// Whether `ops` is in key order.
    sorted: bool,
}

impl WriteBuffer {
    pub(super) fn new() -> Self {
        WriteBuffer { sorted: true, ..WriteBuffer::default() }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether some buffered mutation's key has this [`key_hash`].
    #[cfg(test)]
    pub(super) fn may_have(&self, hash: u64) -> bool {
        self.index.contains_key(&hash)
    }

    fn position(&self, key: &[u8], hash: u64) -> Option<usize> {
        let mut i = *self.index.get(&hash)?;
        while i != END {
            let at = i as usize;
            if self.ops[at].0 == key {
                return Some(at);
            }
            i = self.chain[at];
        }
        None
    }

    /// The buffered mutation of `key` (whose [`key_hash`] is `hash`).
    pub(super) fn get(&self, key: &[u8], hash: u64) -> Option<&Op> {
        self.position(key, hash).map(|i| &self.ops[i].1)
    }

    /// Buffers `op` for `key`, replacing what was buffered for it; an owned key is kept as it
    /// is, a borrowed one copied.
    pub(super) fn put(&mut self, key: impl AsRef<[u8]> + Into<Vec<u8>>, op: Op) {
        let k = key.as_ref();
        let hash = key_hash(k);
        if let Some(i) = self.position(k, hash) {
            self.ops[i].1 = op;
            return;
        }
        let i = self.ops.len() as u32;
        if self.sorted {
            self.sorted = self.ops.last().is_none_or(|(last, _)| last.as_slice() < k);
        }
        self.ops.push((key.into(), op));
        self.chain.push(self.index.insert(hash, i).unwrap_or(END));
    }

    /// Drops the mutations of keys in `[begin, end)` (a cleared range supersedes them).
    pub(super) fn remove_range(&mut self, begin: &[u8], end: &[u8]) {
        let before = self.ops.len();
        self.ops.retain(|(k, _)| !(begin <= k.as_slice() && k.as_slice() < end));
        if self.ops.len() != before {
            self.reindex();
        }
    }

    /// Puts the mutations in key order (a no-op when they are).
    pub(super) fn sort(&mut self) {
        if !self.sorted {
            self.ops.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            self.sorted = true;
            self.reindex();
        }
    }

    /// The mutations of keys in `[begin, end)`, in key order; `None` unless [`WriteBuffer::sort`]
    /// ran since the last [`WriteBuffer::put`] of a key out of order.
    pub(super) fn range(&self, begin: &[u8], end: &[u8]) -> Option<&[(Vec<u8>, Op)]> {
        if !self.sorted {
            return None;
        }
        let from = self.ops.partition_point(|(k, _)| k.as_slice() < begin);
        let to = self.ops.partition_point(|(k, _)| k.as_slice() < end);
        Some(&self.ops[from..to.max(from)])
    }

    /// The mutations in key order, each key once.
    pub(super) fn into_sorted(mut self) -> Vec<(Vec<u8>, Op)> {
        if !self.sorted {
            self.ops.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        self.ops
    }

    fn reindex(&mut self) {
        self.index.clear();
        self.chain.clear();
        for (i, (key, _)) in self.ops.iter().enumerate() {
            let previous = self.index.insert(key_hash(key), i as u32);
            self.chain.push(previous.unwrap_or(END));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &str) -> Op {
        Op::Set(v.as_bytes().to_vec())
    }

    fn keys(ops: &[(Vec<u8>, Op)]) -> Vec<&str> {
        ops.iter().map(|(k, _)| std::str::from_utf8(k).unwrap()).collect()
    }

    #[test]
    fn keeps_the_last_mutation_of_each_key_and_sorts_once() {
        let mut b = WriteBuffer::new();
        for (k, v) in [("m", "1"), ("c", "1"), ("x", "1"), ("c", "2"), ("a", "1"), ("m", "3")] {
            b.put(k.as_bytes(), set(v));
        }
        assert_eq!(b.get(b"c", key_hash(b"c")), Some(&set("2")));
        assert_eq!(b.get(b"m", key_hash(b"m")), Some(&set("3")));
        assert_eq!(b.get(b"q", key_hash(b"q")), None);
        assert!(b.range(b"a", b"z").is_none(), "out of order until sorted");
        b.sort();
        assert_eq!(keys(b.range(b"b", b"n").unwrap()), ["c", "m"]);
        assert_eq!(keys(b.range(b"n", b"b").unwrap()), Vec::<&str>::new());
        // Found by hash after the sort moved them.
        assert_eq!(b.get(b"x", key_hash(b"x")), Some(&set("1")));
        b.put(b"b", Op::Clear);
        let ops = b.into_sorted();
        assert_eq!(keys(&ops), ["a", "b", "c", "m", "x"]);
        assert_eq!(ops[1].1, Op::Clear);
    }

    #[test]
    fn keys_in_order_need_no_sort() {
        let mut b = WriteBuffer::new();
        for k in ["a", "b", "c"] {
            b.put(k.as_bytes(), set(k));
        }
        assert_eq!(keys(b.range(b"a", b"c").unwrap()), ["a", "b"]);
    }

    #[test]
    fn a_cleared_range_drops_its_keys_and_the_rest_stay_findable() {
        let mut b = WriteBuffer::new();
        for k in ["d", "a", "f", "b", "e"] {
            b.put(k.as_bytes(), set(k));
        }
        b.remove_range(b"b", b"e");
        for (k, there) in [("a", true), ("b", false), ("d", false), ("e", true), ("f", true)] {
            assert_eq!(b.get(k.as_bytes(), key_hash(k.as_bytes())).is_some(), there, "{k}");
        }
        assert!(b.may_have(key_hash(b"a")));
        assert!(!b.may_have(key_hash(b"b")));
        assert_eq!(keys(&b.into_sorted()), ["a", "e", "f"]);
    }

    #[test]
    fn keys_whose_hashes_collide_stay_apart() {
        // The chain is what keeps colliding keys apart; exercise it directly with one hash.
        let mut b = WriteBuffer::new();
        b.ops = vec![(b"k1".to_vec(), set("1")), (b"k2".to_vec(), set("2"))];
        b.index.insert(7, 1);
        b.chain = vec![END, 0];
        b.sorted = true;
        assert_eq!(b.get(b"k1", 7), Some(&set("1")));
        assert_eq!(b.get(b"k2", 7), Some(&set("2")));
        assert_eq!(b.get(b"k3", 7), None);
    }
}
