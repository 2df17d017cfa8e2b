//! A filter of the keys in the redb file, so that a point read the memtable cannot answer skips
//! the B-tree walk when redb does not hold the key either. Every new message asks for one such
//! key (its dedup entry, to find out it is not a retry), and that walk through a large, cold
//! part of the tree was the single largest cost of sequencing a message.
//!
//! It is a split-block Bloom filter: a key sets one bit in each of the eight 32-bit words of one
//! 256-bit block, so a lookup reads one cache line. It only grows: the flusher adds every key it
//! writes *before* committing it to redb, so any redb snapshot a reader holds has all of its
//! keys in the filter; removed keys stay in it and cost a false positive. When a segment holds
//! as many keys as it was sized for, a new one twice as large takes the new keys, and lookups ask
//! every segment. Opening a store fills it from the redb file in a background thread; until that
//! is done, reads do not trust it. Keys are added by one [`Writer`] at a time (the flusher, or
//! the fill between batches), so setting bits takes plain stores rather than atomic ors.

use std::sync::{
    atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard, PoisonError, RwLock,
};

/// Filter bits per key a segment is sized for: about 0.5 % false positives when full.
const BITS_PER_KEY: usize = 12;

/// Keys the first segment is sized for, at least.
const MIN_KEYS: usize = 1 << 20;

/// The eight odd constants that pick a bit in each word of a block (those of Parquet's
/// split-block Bloom filter).
const SALT: [u32; 8] =
    [0x47b6_137b, 0x4497_4d91, 0x8824_ad5b, 0xa2b7_289d, 0x7054_95c7, 0x2df1_424b, 0x9efc_4947, 0x5c6b_fb31];

/// A key's 64-bit hash: the high half picks the block, the low half the bits.
pub(super) fn hash(key: &[u8]) -> u64 {
    mix(super::memtable::key_hash(key))
}

/// A key's filter hash from its memtable hash (FxHash), which a read has computed already:
/// mixed once more (murmur3's finaliser), since the block index takes the top bits.
pub(super) fn mix(fx: u64) -> u64 {
    let mut x = fx;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

struct Segment {
    blocks: Box<[[AtomicU32; 8]]>,
    capacity: usize,
    keys: AtomicUsize,
}

impl Segment {
    fn new(capacity: usize) -> Self {
        let blocks = capacity.saturating_mul(BITS_PER_KEY).div_ceil(256).max(1);
        Segment { blocks: (0..blocks).map(|_| Default::default()).collect(), capacity, keys: AtomicUsize::new(0) }
    }

    fn block(&self, hash: u64) -> &[AtomicU32; 8] {
        let i = ((hash >> 32) * self.blocks.len() as u64) >> 32;
        &self.blocks[i as usize]
    }

    fn bit(hash: u64, word: usize) -> u32 {
        1 << ((hash as u32).wrapping_mul(SALT[word]) >> 27)
    }

    fn contains(&self, hash: u64) -> bool {
        let block = self.block(hash);
        (0..8).all(|w| block[w].load(Ordering::Acquire) & Self::bit(hash, w) != 0)
    }

    /// Sets the key's bits; counts it only if one was not set yet (a key written again, or a
    /// false positive, takes no room). Only the holder of the filter's [`Writer`] calls it, so
    /// a word is set with a plain load and store, not a locked read-modify-write.
    fn insert(&self, hash: u64) {
        let block = self.block(hash);
        let mut new = false;
        for (w, word) in block.iter().enumerate() {
            let bit = Self::bit(hash, w);
            let old = word.load(Ordering::Relaxed);
            if old & bit == 0 {
                word.store(old | bit, Ordering::Release);
                new = true;
            }
        }
        if new {
            self.keys.store(self.keys.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    fn full(&self) -> bool {
        self.keys.load(Ordering::Relaxed) >= self.capacity
    }
}

/// The filter of one store's redb keys.
pub(super) struct KeyFilter {
    /// Oldest first; new keys go into the last.
    segments: RwLock<Vec<Arc<Segment>>>,
    /// Whether every key of the redb file is in the filter (the initial fill is done).
    ready: AtomicBool,
    /// Held by whoever adds keys (the flusher, the initial fill): one writer at a time.
    writer: Mutex<()>,
}

impl KeyFilter {
    /// An empty filter sized for `keys` keys (the redb file's count at open) and room to grow.
    pub(super) fn new(keys: usize) -> Self {
        let capacity = keys.saturating_mul(2).max(MIN_KEYS);
        KeyFilter {
            segments: RwLock::new(vec![Arc::new(Segment::new(capacity))]),
            ready: AtomicBool::new(false),
            writer: Mutex::new(()),
        }
    }

    /// Marks the initial fill done: from now on a key not in the filter is not in redb.
    pub(super) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the initial fill is done.
    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether redb may hold each key of `hashes` (by [`hash`]), in their order: `false` means
    /// it surely does not. Everything may be there until the fill is done.
    pub(super) fn may_contain_each(&self, hashes: impl Iterator<Item = u64>) -> Vec<bool> {
        if !self.ready.load(Ordering::Acquire) {
            return hashes.map(|_| true).collect();
        }
        let segments = self.segments.read().unwrap_or_else(PoisonError::into_inner);
        hashes.map(|hash| segments.iter().rev().any(|s| s.contains(hash))).collect()
    }

    /// [`KeyFilter::may_contain_each`] of one key.
    #[cfg(test)]
    pub(super) fn may_contain(&self, hash: u64) -> bool {
        self.may_contain_each(std::iter::once(hash)).first().copied().unwrap_or(true)
    }

    /// Adds a key (by [`hash`]) that redb is about to hold.
    #[cfg(test)]
    pub(super) fn insert(&self, hash: u64) {
        self.writer().insert(hash);
    }

    /// The right to add keys, until dropped; hold it over a batch.
    pub(super) fn writer(&self) -> Writer<'_> {
        let guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let last = self.segments.read().unwrap_or_else(PoisonError::into_inner).last().cloned();
        Writer { filter: self, last: last.expect("a filter has a segment"), _guard: guard }
    }

    /// Bytes of filter held.
    pub(super) fn bytes(&self) -> usize {
        let segments = self.segments.read().unwrap_or_else(PoisonError::into_inner);
        segments.iter().map(|s| s.blocks.len() * 32).sum()
    }
}

/// The one adder of keys to a [`KeyFilter`] at a time.
pub(super) struct Writer<'a> {
    filter: &'a KeyFilter,
    /// The segment new keys go into.
    last: Arc<Segment>,
    _guard: MutexGuard<'a, ()>,
}

impl Writer<'_> {
    /// Adds a key (by [`hash`]) that redb is about to hold.
    pub(super) fn insert(&mut self, hash: u64) {
        if self.last.full() {
            let grown = Arc::new(Segment::new(self.last.capacity.saturating_mul(2)));
            self.filter.segments.write().unwrap_or_else(PoisonError::into_inner).push(grown.clone());
            self.last = grown;
        }
        self.last.insert(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Vec<u8> {
        format!("ws/W1/nonce/C{}/{:x}-{i}", i % 1000, i * 7919).into_bytes()
    }

    #[test]
    fn holds_every_key_it_was_given_and_few_others_across_growth() {
        let filter = KeyFilter {
            segments: RwLock::new(vec![Arc::new(Segment::new(10_000))]),
            ready: AtomicBool::new(false),
            writer: Mutex::new(()),
        };
        assert!(filter.may_contain(hash(b"anything")), "not trusted before the fill is done");
        filter.set_ready();
        // Four times the first segment's size: two more segments (twice as large, then four).
        for i in 0..40_000 {
            filter.insert(hash(&key(i)));
        }
        assert_eq!(filter.segments.read().unwrap().len(), 3);
        for i in 0..40_000 {
            assert!(filter.may_contain(hash(&key(i))), "key {i} was added and must be found");
        }
        let false_positives = (40_000..140_000).filter(|&i| filter.may_contain(hash(&key(i)))).count();
        // Three segments asked, each under 1 % when full.
        assert!(false_positives < 3_000, "{false_positives} false positives in 100,000");
    }
}
