//! The storage interface: a transactional, ordered key-value store shaped like FoundationDB.
//!
//! Everything the origin keeps goes through [`KvStore`] and [`KvTxn`]. Two engines implement
//! them: [`embedded`] (redb, one file, the default and the engine of every test here) and `fdb`
//! (FoundationDB, cargo feature `fdb`, the production engine). The embedded engine keeps
//! FoundationDB's semantics *and* its limits, so code that would fail on FoundationDB fails here
//! too:
//!
//! - transactions are serializable (optimistic: reads record conflict ranges, a commit that read
//!   something a later-committed transaction wrote fails with [`StoreError::Conflict`]);
//! - every commit gets a versionstamp, unique and increasing across the store;
//! - keys are at most [`MAX_KEY_BYTES`], values at most [`MAX_VALUE_BYTES`], a transaction at most
//!   [`MAX_TXN_BYTES`] and [`MAX_TXN_AGE`] old; both engines count the sizes with one budget
//!   (module `budget`).
//!
//! Callers retry with [`KvTxn::on_error`], FoundationDB's retry loop, usually via [`transact`](crate::transact).
//! Keys are built with the tuple layer in [`tuple`](mod@tuple) under the subspaces of [`keys`].

pub mod backup;
mod budget;
pub mod embedded;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod keys;
pub mod tuple;

#[cfg(test)]
mod contract;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::future::BoxFuture;

pub use self::budget::{MAX_KEY_BYTES, MAX_TXN_AGE, MAX_TXN_BYTES, MAX_VALUE_BYTES};

/// A commit versionstamp: 8 bytes of commit version and 2 of order within that version, big
/// endian, so byte order is commit order. FoundationDB's "transaction versionstamp".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Versionstamp(pub [u8; 10]);

impl Versionstamp {
    /// The smallest versionstamp; every committed one is greater.
    pub const ZERO: Versionstamp = Versionstamp([0; 10]);

    /// Builds one from a commit version and the order within it.
    pub fn new(version: u64, order: u16) -> Self {
        let mut b = [0u8; 10];
        b[..8].copy_from_slice(&version.to_be_bytes());
        b[8..].copy_from_slice(&order.to_be_bytes());
        Versionstamp(b)
    }

    /// The commit version part.
    pub fn version(&self) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(v)
    }

    /// Lowercase hex, 20 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`Versionstamp::to_hex`] output.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut b = [0u8; 10];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(Versionstamp(b))
    }
}

impl fmt::Debug for Versionstamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Versionstamp({})", self.to_hex())
    }
}

/// What a successful commit reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The versionstamp of this commit: the value substituted into every versionstamped key it
    /// wrote. For a read-only transaction (nothing to commit) this is [`Versionstamp::ZERO`].
    pub versionstamp: Versionstamp,
}

/// A storage failure. [`StoreError::is_retryable`] tells the retry loop what to do.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Another transaction committed a write to something this one read (FDB 1020).
    #[error("transaction conflict: a concurrent commit changed what this transaction read")]
    Conflict,
    /// The transaction outlived the MVCC window of [`MAX_TXN_AGE`] (FDB 1007).
    #[error("transaction is older than the {}s limit", MAX_TXN_AGE.as_secs())]
    TooOld,
    /// The commit may or may not have happened (FDB 1021); retry only idempotent work.
    #[error("commit result unknown: the transaction may or may not have been committed")]
    CommitUnknown,
    /// A key longer than [`MAX_KEY_BYTES`] (FDB 2102).
    #[error("key of {0} bytes is over the {MAX_KEY_BYTES}-byte limit")]
    KeyTooLarge(usize),
    /// A value longer than [`MAX_VALUE_BYTES`] (FDB 2103).
    #[error("value of {0} bytes is over the {MAX_VALUE_BYTES}-byte limit")]
    ValueTooLarge(usize),
    /// The transaction's mutations and conflict ranges exceed [`MAX_TXN_BYTES`] (FDB 2101).
    #[error("transaction of {0} bytes is over the {MAX_TXN_BYTES}-byte limit")]
    TransactionTooLarge(usize),
    /// A versionstamped key whose placeholder offset is outside the key.
    #[error("versionstamp offset {offset} does not fit a key of {len} bytes")]
    BadVersionstampOffset { offset: usize, len: usize },
    /// A range whose end is before its begin.
    #[error("inverted range: end key sorts before begin key")]
    InvertedRange,
    /// A passing failure inside the engine that a fresh attempt may not meet (FoundationDB's
    /// retryable errors such as 1009 `future_version` or 1037 `process_behind`).
    #[error("transient storage error: {0}")]
    Transient(String),
    /// The engine is shutting down or its commit worker is gone.
    #[error("storage engine is unavailable: {0}")]
    Unavailable(String),
    /// The engine's disk is (nearly) full: writes are refused until space is freed, and then
    /// succeed again by themselves. The text is written for clients and operators alike.
    #[error("{0}")]
    NoSpace(String),
    /// A failure inside the engine (I/O, corruption, client library error).
    #[error("storage engine error: {0}")]
    Engine(String),
}

impl StoreError {
    /// Whether a fresh attempt of the same transaction may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Conflict | StoreError::TooOld | StoreError::CommitUnknown | StoreError::Transient(_))
    }
}

/// Shorthand for storage results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One key and its value, as range reads return them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A range read: keys in `[begin, end)`, at most `limit` of them (0 means no limit), in
/// descending order when `reverse`.
#[derive(Clone, Debug, Default)]
pub struct RangeRead {
    pub begin: Vec<u8>,
    pub end: Vec<u8>,
    pub limit: usize,
    pub reverse: bool,
}

impl RangeRead {
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let (begin, end) = prefix_range(prefix);
        RangeRead { begin, end, limit: 0, reverse: false }
    }

    /// Keys in `[begin, end)`.
    pub fn between(begin: Vec<u8>, end: Vec<u8>) -> Self {
        RangeRead { begin, end, limit: 0, reverse: false }
    }

    /// At most `limit` keys.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Highest keys first.
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }
}

/// `[prefix, strinc(prefix))`: the keys that start with `prefix`. For a tuple-encoded prefix
/// (never all `0xff`) this is `prefix + 0x00 .. prefix + 0xff`, which is what FoundationDB's
/// tuple layer uses for a subspace's range.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut begin = prefix.to_vec();
    begin.push(0x00);
    let mut end = prefix.to_vec();
    end.push(0xff);
    (begin, end)
}

/// Decodes a stored MessagePack record; a record that does not decode is an engine error naming
/// `what` it was.
pub fn decode<T: serde::de::DeserializeOwned>(what: &str, raw: &[u8]) -> Result<T> {
    selvage_shared::from_msgpack(raw).map_err(|e| StoreError::Engine(format!("{what} record does not decode: {e}")))
}

/// A future that resolves when a watched key changes. Errors if the engine goes away.
pub type Watch = BoxFuture<'static, Result<()>>;

/// A consistent view of every key at one version, for a backup (docs/STORAGE.md, "Backup and
/// restore"): unlike a transaction, readable for longer than [`MAX_TXN_AGE`], up to a bound of
/// the engine's.
pub trait BackupSource: Send {
    /// The version the view holds: every commit up to it, none after.
    fn version(&self) -> u64;

    /// Calls `each` with every key and its value, in ascending key order, until it answers
    /// [`ControlFlow::Break`](std::ops::ControlFlow::Break). Blocking: run it off the async
    /// runtime. Fails once the view is older than the engine keeps one.
    fn scan(&mut self, each: &mut ScanFn<'_>) -> Result<()>;
}

/// What [`BackupSource::scan`] calls with each key and value: whether to go on.
pub type ScanFn<'a> = dyn FnMut(&[u8], &[u8]) -> std::ops::ControlFlow<()> + 'a;

/// What [`KvStore::backup`] answers.
pub enum BackupStart {
    /// The view to back up.
    Source(Box<dyn BackupSource>),
    /// Another backup of this store is still being read: one at a time.
    Busy,
    /// The engine is backed up with tools of its own (FoundationDB's `fdbbackup`).
    Unsupported,
}

/// A storage engine: a factory of transactions.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Starts a transaction. Its reads see one consistent snapshot, taken now.
    async fn begin(&self) -> Result<Box<dyn KvTxn>>;

    /// A view of everything committed before the call, for an online backup; by default
    /// [`BackupStart::Unsupported`].
    async fn backup(&self) -> Result<BackupStart> {
        Ok(BackupStart::Unsupported)
    }

    /// The engine's name, for logs and metrics ("embedded", "fdb").
    fn engine(&self) -> &'static str;

    /// Why the engine cannot take writes at the moment (a full disk, a failing device), for
    /// `/readyz`; `None` while writes succeed.
    fn write_problem(&self) -> Option<String> {
        None
    }
}

/// One transaction. Reads see the snapshot taken at [`KvStore::begin`] plus this transaction's
/// own writes. Writes are buffered and applied atomically by [`KvTxn::commit`].
#[async_trait]
pub trait KvTxn: Send {
    /// Reads one key, adding it to the read conflict set.
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Reads many keys, as [`KvTxn::get`] of each would, answers in the order of `keys`. An
    /// engine may look them up together; a group commit reads thousands.
    async fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }

    /// Reads a range, adding what it covered to the read conflict set (only up to the last key
    /// returned when `limit` cut it short).
    async fn get_range(&mut self, range: &RangeRead) -> Result<Vec<KeyValue>>;

    /// Writes a key.
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()>;

    /// [`KvTxn::set`] with a key and value built for this write: an engine that buffers
    /// writes keeps them rather than copying them.
    fn set_owned(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.set(&key, &value)
    }

    /// Removes a key.
    fn clear(&mut self, key: &[u8]) -> Result<()>;

    /// Removes every key in `[begin, end)`.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()>;

    /// Adds `delta` to the little-endian 64-bit integer at `key` (absent counts as 0) without
    /// reading it, so concurrent adders never conflict. FoundationDB's `ADD` mutation.
    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<()>;

    /// Writes `value` at `key` with the 10 bytes at `offset` replaced by this transaction's
    /// commit versionstamp. FoundationDB's `SET_VERSIONSTAMPED_KEY`. Such keys are not visible
    /// to this transaction's own reads.
    fn set_versionstamped_key(&mut self, key: &[u8], offset: usize, value: &[u8]) -> Result<()>;

    /// [`KvTxn::set_versionstamped_key`] with a key and value built for this write, kept
    /// rather than copied where the engine can.
    fn set_versionstamped_key_owned(&mut self, key: Vec<u8>, offset: usize, value: Vec<u8>) -> Result<()> {
        self.set_versionstamped_key(&key, offset, &value)
    }

    /// A future that resolves once `key` is written by a transaction committed after this
    /// one's snapshot. Takes effect when this transaction commits (as in FoundationDB);
    /// a read-only transaction's commit is enough.
    fn watch(&mut self, key: &[u8]) -> Result<Watch>;

    /// Commits every buffered write atomically and durably, or fails without writing anything.
    async fn commit(self: Box<Self>) -> Result<Committed>;

    /// FoundationDB's `on_error`: for a retryable error, waits a short backoff and returns a
    /// fresh transaction to try again with; otherwise returns the error.
    async fn on_error(self: Box<Self>, err: StoreError) -> Result<Box<dyn KvTxn>>;
}

/// A shared handle on a storage engine.
pub type Store = Arc<dyn KvStore>;

/// Runs `body` in a transaction and commits it, retrying while the failure is retryable.
/// Evaluates to `Result<(T, Committed), StoreError>` where `T` is the body's value.
///
/// `body` runs again on every retry, so it must have no side effects outside the transaction.
/// It uses `?` on storage errors only; a domain failure (say, "no such channel") is returned as
/// part of the value, decided before anything is written, and the caller acts on it.
///
/// ```ignore
/// let (len, _) = transact!(store, |tx| { tx.get(b"k").await?.map(|v| v.len()) })?;
/// ```
#[macro_export]
macro_rules! transact {
    ($store:expr, |$tx:ident| $body:block) => {
        async {
            let mut __txn = $store.begin().await?;
            loop {
                let __attempt: $crate::store::Result<_> = async {
                    let $tx: &mut dyn $crate::store::KvTxn = &mut *__txn;
                    Ok($body)
                }
                .await;
                let __err = match __attempt {
                    Ok(__value) => match __txn.commit().await {
                        Ok(__committed) => return Ok((__value, __committed)),
                        Err(__e) if __e.is_retryable() => {
                            $crate::store::backoff_pause().await;
                            __txn = $store.begin().await?;
                            continue;
                        }
                        Err(__e) => return Err(__e),
                    },
                    Err(__e) => __e,
                };
                __txn = __txn.on_error(__err).await?;
            }
        }
        .await
    };
}

/// The pause between attempts of a retried transaction: short and jittered so that
/// conflicting writers spread out.
pub async fn backoff_pause() {
    let ms = rand::random_range(1..=10u64);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
