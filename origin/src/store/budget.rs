//! FoundationDB's limits on a transaction, stated once for both engines.
//!
//! Each engine's transaction carries a [`TxnBudget`] and passes every read, mutation and
//! commit through it, so the embedded engine and the FoundationDB engine refuse the same calls
//! with the same [`StoreError`] and the same sizes. The byte count is FoundationDB's rough one:
//! a mutation costs its key and value, and every conflict range the bytes of its two ends. A
//! refused mutation also fails the commit, as it does in FoundationDB.

use std::time::Duration;

use super::{Result, StoreError};

/// FoundationDB's largest key.
pub const MAX_KEY_BYTES: usize = 10_000;
/// FoundationDB's largest value.
pub const MAX_VALUE_BYTES: usize = 100_000;
/// FoundationDB's largest transaction: mutations plus conflict ranges.
pub const MAX_TXN_BYTES: usize = 10_000_000;
/// FoundationDB's longest transaction (its MVCC window).
pub const MAX_TXN_AGE: Duration = Duration::from_secs(5);

/// Bytes of a versionstamp, the placeholder a versionstamped key holds at its offset.
pub const VERSIONSTAMP_BYTES: usize = 10;

/// Bytes of an atomic add's operand: a little-endian 64-bit integer.
const ADD_OPERAND_BYTES: usize = 8;

/// What one transaction has spent of FoundationDB's limits.
#[derive(Debug, Default)]
pub struct TxnBudget {
    /// Bytes of mutations and conflict ranges, as FoundationDB roughly counts them.
    bytes: usize,
    /// An error from a refused mutation, reported again at commit (as FoundationDB does).
    refused: Option<StoreError>,
}

/// Bytes a point mutation costs: the mutation and its write conflict range `[k, k\0)`.
fn point_cost(key: &[u8], value_len: usize) -> usize {
    key.len() + value_len + 2 * key.len() + 1
}

impl TxnBudget {
    /// Bytes of mutations and conflict ranges counted so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Refuses a key to read or watch that is longer than any key can be. Only this call
    /// fails: a read does not fail the commit.
    pub fn check_key(key: &[u8]) -> Result<()> {
        if key.len() > MAX_KEY_BYTES {
            return Err(StoreError::KeyTooLarge(key.len()));
        }
        Ok(())
    }

    /// Counts the read conflict of one key (the range from it to the key after it).
    pub fn read_key(&mut self, key: &[u8]) {
        self.bytes += 2 * key.len() + 1;
    }

    /// Counts a read conflict range whose ends are `begin` and `end` bytes long.
    pub fn read_range(&mut self, begin: usize, end: usize) {
        self.bytes += begin + end;
    }

    /// Admits a set of `key` to `value`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.admit(key, Some(value), point_cost(key, value.len()))
    }

    /// Admits a clear of `key`.
    pub fn clear(&mut self, key: &[u8]) -> Result<()> {
        self.admit(key, None, point_cost(key, 0))
    }

    /// Admits an atomic add to `key`.
    pub fn atomic_add(&mut self, key: &[u8]) -> Result<()> {
        self.admit(key, None, point_cost(key, ADD_OPERAND_BYTES))
    }

    /// Admits a clear of `[begin, end)`. An inverted range fails this call only.
    pub fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        if end < begin {
            return Err(StoreError::InvertedRange);
        }
        // A range end may be one byte longer than a key (`key + \0`).
        if end.len() > MAX_KEY_BYTES + 1 {
            return self.refuse(StoreError::KeyTooLarge(end.len()));
        }
        self.admit(begin, None, 2 * (begin.len() + end.len()))
    }

    /// Admits a set of `value` at `key` with a versionstamp at `offset`, which must leave room
    /// for the whole versionstamp inside the key.
    pub fn set_versionstamped_key(&mut self, key: &[u8], offset: usize, value: &[u8]) -> Result<()> {
        if offset.checked_add(VERSIONSTAMP_BYTES).is_none_or(|end| end > key.len()) {
            return self.refuse(StoreError::BadVersionstampOffset { offset, len: key.len() });
        }
        self.set(key, value)
    }

    /// At commit: the error of the first refused mutation, if any.
    pub fn refusal(&mut self) -> Result<()> {
        match self.refused.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// At commit: refuses a transaction whose mutations and conflict ranges are over
    /// [`MAX_TXN_BYTES`] (reads alone may take it there).
    pub fn check_total(&self) -> Result<()> {
        if self.bytes > MAX_TXN_BYTES {
            return Err(StoreError::TransactionTooLarge(self.bytes));
        }
        Ok(())
    }

    /// Remembers `err` for the commit and returns it.
    pub fn refuse<T>(&mut self, err: StoreError) -> Result<T> {
        if self.refused.is_none() {
            self.refused = Some(err.clone());
        }
        Err(err)
    }

    /// Checks a mutation against the key, value and transaction limits and counts it; a
    /// refused mutation fails the commit too.
    fn admit(&mut self, key: &[u8], value: Option<&[u8]>, cost: usize) -> Result<()> {
        if key.len() > MAX_KEY_BYTES {
            return self.refuse(StoreError::KeyTooLarge(key.len()));
        }
        let value_len = value.map_or(0, <[u8]>::len);
        if value_len > MAX_VALUE_BYTES {
            return self.refuse(StoreError::ValueTooLarge(value_len));
        }
        self.bytes += cost;
        if self.bytes > MAX_TXN_BYTES {
            return self.refuse(StoreError::TransactionTooLarge(self.bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every breach is refused with its error; a refused mutation fails the commit too, a
    /// refused read or an inverted range only the call.
    #[test]
    fn breaches_are_refused_and_mutations_remembered() {
        let long_key = vec![0u8; MAX_KEY_BYTES + 1];
        let long_value = vec![0u8; MAX_VALUE_BYTES + 1];

        let mut budget = TxnBudget::default();
        assert!(matches!(TxnBudget::check_key(&long_key), Err(StoreError::KeyTooLarge(n)) if n == MAX_KEY_BYTES + 1));
        assert!(matches!(budget.clear_range(b"b", b"a"), Err(StoreError::InvertedRange)));
        budget.read_key(b"k");
        budget.read_range(1, 2);
        assert_eq!(budget.bytes(), 3 + 3);
        assert!(budget.refusal().is_ok());

        assert!(matches!(budget.set(b"k", &long_value), Err(StoreError::ValueTooLarge(n)) if n == MAX_VALUE_BYTES + 1));
        assert!(matches!(budget.clear(&long_key), Err(StoreError::KeyTooLarge(_))));
        // The first refusal is the one the commit reports, once.
        assert!(matches!(budget.refusal(), Err(StoreError::ValueTooLarge(_))));
        assert!(budget.refusal().is_ok());

        let mut budget = TxnBudget::default();
        // A range end may be one byte longer than a key, not two.
        assert!(budget.clear_range(b"", &long_key).is_ok());
        assert!(matches!(budget.clear_range(b"", &[0u8; MAX_KEY_BYTES + 2]), Err(StoreError::KeyTooLarge(_))));
        assert!(budget.refusal().is_err());

        let mut budget = TxnBudget::default();
        for offset in [1, usize::MAX] {
            assert!(matches!(
                budget.set_versionstamped_key(&[0; 10], offset, b"v"),
                Err(StoreError::BadVersionstampOffset { len: 10, .. })
            ));
        }
        assert!(budget.set_versionstamped_key(&[0; 10], 0, b"v").is_ok());
        assert!(budget.refusal().is_err());
    }

    /// Mutations count key, value and write conflict range; the transaction limit holds at
    /// the mutation that passes it, and at commit for reads that pass it.
    #[test]
    fn bytes_add_up_to_the_transaction_limit() {
        let mut budget = TxnBudget::default();
        budget.set(b"key", b"value").unwrap();
        assert_eq!(budget.bytes(), 3 + 5 + 2 * 3 + 1);
        budget.atomic_add(b"n").unwrap();
        assert_eq!(budget.bytes(), 15 + 1 + 8 + 2 + 1);
        budget.clear_range(b"a", b"bb").unwrap();
        assert_eq!(budget.bytes(), 27 + 2 * 3);
        assert!(budget.check_total().is_ok());

        let value = vec![0u8; MAX_VALUE_BYTES];
        let mut budget = TxnBudget::default();
        let refused = (0..MAX_TXN_BYTES / MAX_VALUE_BYTES + 1)
            .map(|i| budget.set(&(i as u32).to_be_bytes(), &value))
            .find_map(Result::err);
        assert!(matches!(refused, Some(StoreError::TransactionTooLarge(n)) if n > MAX_TXN_BYTES));
        assert!(budget.refusal().is_err());

        let mut budget = TxnBudget::default();
        budget.read_range(MAX_TXN_BYTES, 1);
        assert!(budget.refusal().is_ok());
        assert!(matches!(budget.check_total(), Err(StoreError::TransactionTooLarge(n)) if n == MAX_TXN_BYTES + 1));
    }
}
