//! The FoundationDB engine: [`KvStore`] and [`KvTxn`] on a FoundationDB cluster, the production
//! storage (cargo feature `fdb`).
//!
//! The storage interface was drawn after FoundationDB, so this engine is mostly a thin adapter:
//! one [`KvTxn`] is one FoundationDB transaction, with FoundationDB's own conflict detection,
//! read-your-writes, limits, versionstamps, watches and retry backoff.
//!
//! # Boot
//!
//! FoundationDB's client runs one network thread per process, and its API version may be selected
//! and its network started only once per process (a second attempt panics in the `foundationdb`
//! crate, and a stopped network cannot be restarted). [`FdbStore::open`] therefore starts it on
//! first use behind a `OnceLock` and keeps the result, success or failure, for the life of the
//! process; every later `open` (another cluster file, a test, a reconnect) reuses it. The network
//! stays up until [`stop_network`] or the process ends; see [`stop_network`] for exit.
//!
//! # Semantics
//!
//! - [`KvStore::begin`] creates a transaction and fetches its read version right away, so the
//!   snapshot is taken at `begin` as the interface promises (FoundationDB would otherwise take it
//!   at the first read), and FoundationDB's five-second window ([`super::MAX_TXN_AGE`]) counts
//!   from there.
//! - Range reads are fetched in batches ([`StreamingMode::WantAll`]) until the limit or the end
//!   of the range; the read conflict range covers what was read, as FoundationDB records it.
//! - [`KvTxn::commit`] asks for the transaction's versionstamp before committing and reads it
//!   after, for transactions that wrote something; read-only ones report
//!   [`Versionstamp::ZERO`].
//! - [`KvTxn::set_versionstamped_key`] is `SET_VERSIONSTAMPED_KEY` with the placeholder offset
//!   appended to the key as 4 little-endian bytes (API version 520 and later). Until commit,
//!   FoundationDB marks the range such a key may land in as unreadable: a read of this
//!   transaction that overlaps it fails (FDB 1036, `accessed_unreadable`, an
//!   [`StoreError::Engine`] error) rather than skipping it.
//! - Limits are checked here, before anything reaches FoundationDB, by the budget the embedded
//!   engine checks them with (module `budget`): keys, values, and a running count of mutation and
//!   conflict-range bytes, so both engines refuse the same calls with the same sizes. A refused mutation also fails the commit,
//!   as it does in FoundationDB. Where FoundationDB is more lenient (reading or clearing a key
//!   too long to exist, reading an inverted range) the interface's error wins. FoundationDB's
//!   own checks stay as the backstop at commit.
//! - A watch whose transaction is dropped without committing fails with
//!   [`StoreError::Unavailable`], as in the embedded engine.
//!
//! # Errors
//!
//! FoundationDB error codes map to [`StoreError`] in one place (`map_error_sized`): 1020
//! `not_committed` is [`StoreError::Conflict`], 1007 `transaction_too_old` is [`StoreError::TooOld`], 1021
//! `commit_unknown_result` is [`StoreError::CommitUnknown`], 2101/2102/2103 are the size errors,
//! 2005 is [`StoreError::InvertedRange`], any other "maybe committed" code is
//! [`StoreError::CommitUnknown`], any other code FoundationDB calls retryable (1009
//! `future_version`, 1037 `process_behind`, …) is [`StoreError::Transient`], and the rest are
//! [`StoreError::Engine`] with the code and FoundationDB's message. [`KvTxn::on_error`] hands the
//! FoundationDB code back to FoundationDB's `on_error`, which backs off and resets the
//! transaction; a retryable error raised by the commit is retried by `transact!`.

use std::{
    path::Path,
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use async_trait::async_trait;
use foundationdb::{
    api::{FdbApiBuilder, NetworkAutoStop},
    options::{MutationType, StreamingMode},
    Database, FdbError, KeySelector, RangeOption, Transaction,
};
use futures::TryFutureExt;

use super::{
    budget::{TxnBudget, VERSIONSTAMP_BYTES},
    Committed, KeyValue, KvStore, KvTxn, RangeRead, Result, StoreError, Versionstamp, Watch, MAX_KEY_BYTES,
    MAX_TXN_BYTES, MAX_VALUE_BYTES,
};

/// The FoundationDB error codes this engine treats specially.
mod code {
    /// `transaction_too_old`: older than the MVCC window.
    pub const TRANSACTION_TOO_OLD: i32 = 1007;
    /// `not_committed`: a conflict.
    pub const NOT_COMMITTED: i32 = 1020;
    /// `commit_unknown_result`: the commit may or may not have happened.
    pub const COMMIT_UNKNOWN_RESULT: i32 = 1021;
    /// `transaction_cancelled`: the transaction was destroyed or reset before committing.
    pub const TRANSACTION_CANCELLED: i32 = 1025;
    /// `operation_cancelled`: the operation's future was cancelled.
    pub const OPERATION_CANCELLED: i32 = 1101;
    /// `inverted_range`: a range whose end is before its begin.
    pub const INVERTED_RANGE: i32 = 2005;
    /// `no_commit_version`: a read-only transaction has no versionstamp.
    pub const NO_COMMIT_VERSION: i32 = 2021;
    /// `transaction_too_large`.
    pub const TRANSACTION_TOO_LARGE: i32 = 2101;
    /// `key_too_large`.
    pub const KEY_TOO_LARGE: i32 = 2102;
    /// `value_too_large`.
    pub const VALUE_TOO_LARGE: i32 = 2103;
}

/// Bytes of the placeholder offset FoundationDB expects after a versionstamped key.
const OFFSET_SUFFIX_BYTES: usize = 4;

/// The process's FoundationDB network: started once, then kept (see the module docs).
///
/// It holds the outcome of the one attempt: the handle that stops the network thread when
/// dropped (`None` once [`stop_network`] took it), or why starting failed (the API version can
/// be selected only once, so a failure is final for the process).
static NETWORK: OnceLock<Result<Mutex<Option<NetworkAutoStop>>, String>> = OnceLock::new();

/// Starts FoundationDB's network thread unless it is already running.
fn ensure_network() -> Result<()> {
    let network = NETWORK.get_or_init(|| {
        let builder = FdbApiBuilder::default()
            .build()
            .map_err(|e| format!("cannot select FoundationDB API version: {}", engine_message(e)))?;
        // SAFETY: `boot` is unsafe because the returned `NetworkAutoStop` must be dropped (which
        // stops the network and joins its thread) before the program exits. It lives in this
        // static for the rest of the process on purpose: the network can be started only once
        // per process, stores may be opened at any time, and the futures of every store depend
        // on the thread. `stop_network` drops it for a clean exit; a process that exits without
        // calling it skips FoundationDB's orderly client shutdown, which risks no data (a commit
        // is acknowledged only once it is durable on the cluster). No other code in this process
        // boots the FoundationDB network: this module is the only user of the crate.
        let stop = unsafe { builder.boot() }
            .map_err(|e| format!("cannot start the FoundationDB network: {}", engine_message(e)))?;
        Ok(Mutex::new(Some(stop)))
    });
    match network {
        Ok(stop) => {
            let running = stop.lock().unwrap_or_else(PoisonError::into_inner).is_some();
            if running {
                Ok(())
            } else {
                Err(StoreError::Unavailable("the FoundationDB network was stopped".to_owned()))
            }
        }
        Err(why) => Err(StoreError::Unavailable(why.clone())),
    }
}

/// Stops FoundationDB's network thread and waits for it to finish, as FoundationDB asks of a
/// process before it exits. Call it once, at the very end, after every [`FdbStore`] and
/// transaction is gone: the network cannot be restarted, so later opens fail with
/// [`StoreError::Unavailable`] and pending FoundationDB operations never complete. Does nothing
/// if the network was never started. Blocks while the thread winds down.
pub fn stop_network() {
    if let Some(Ok(stop)) = NETWORK.get() {
        let handle = stop.lock().unwrap_or_else(PoisonError::into_inner).take();
        // Dropping the handle stops the network and joins its thread.
        drop(handle);
    }
}

/// The FoundationDB storage engine: a handle on one cluster's database.
pub struct FdbStore {
    db: Database,
}

impl FdbStore {
    /// Opens the database of the cluster described by `cluster_file` (`None`: FoundationDB's
    /// default, `FDB_CLUSTER_FILE` or the platform's default path), starting the process's
    /// FoundationDB network on first use. Connecting is lazy: an unreachable cluster shows as
    /// transactions that wait, not as an error here.
    ///
    /// Fails with [`StoreError::Unavailable`] when FoundationDB's client library cannot start
    /// (or its network was stopped), and with [`StoreError::Engine`] for an unusable cluster
    /// file.
    pub fn open(cluster_file: Option<&Path>) -> Result<Arc<FdbStore>, StoreError> {
        let path = match cluster_file {
            None => None,
            Some(p) => {
                let s = p.to_str().ok_or_else(|| {
                    StoreError::Engine(format!("FoundationDB cluster file path {} is not valid UTF-8", p.display()))
                })?;
                // The crate turns the path into a C string and panics on an interior NUL.
                if s.contains('\0') {
                    return Err(StoreError::Engine(format!(
                        "FoundationDB cluster file path {s:?} contains a NUL byte"
                    )));
                }
                Some(s)
            }
        };
        ensure_network()?;
        let db = Database::new(path).map_err(|e| {
            StoreError::Engine(format!(
                "cannot open FoundationDB cluster file {}: {}",
                path.unwrap_or("(default)"),
                engine_message(e)
            ))
        })?;
        Ok(Arc::new(FdbStore { db }))
    }
}

#[async_trait]
impl KvStore for FdbStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        let trx = self.db.create_trx().map_err(map_error)?;
        Ok(Box::new(FdbTxn::start(trx).await?))
    }

    fn engine(&self) -> &'static str {
        "fdb"
    }
}

/// One FoundationDB transaction.
struct FdbTxn {
    trx: Transaction,
    /// Whether anything was written, so that the commit has a versionstamp.
    wrote: bool,
    /// Bytes of mutations and conflict ranges, counted as the embedded engine counts them, so
    /// both engines refuse the same transactions; FoundationDB's own count (a little larger)
    /// is the backstop at commit. A mutation it refuses never reaches FoundationDB, so the
    /// budget fails the commit in FoundationDB's place.
    budget: TxnBudget,
    /// The longest key handed to FoundationDB for writing (offset suffix included), to report
    /// with a `key_too_large` FoundationDB raises itself.
    longest_key: usize,
    /// The longest value written, likewise for `value_too_large`.
    longest_value: usize,
    /// The last FoundationDB error this transaction returned, for [`KvTxn::on_error`].
    last_error: Option<FdbError>,
}

impl FdbTxn {
    /// Wraps a new (or reset) transaction and fixes its snapshot by fetching the read version
    /// now, retrying through FoundationDB's `on_error` for as long as it says to.
    async fn start(mut trx: Transaction) -> Result<FdbTxn> {
        loop {
            match trx.get_read_version().await {
                Ok(_) => {
                    return Ok(FdbTxn {
                        trx,
                        wrote: false,
                        budget: TxnBudget::default(),
                        longest_key: 0,
                        longest_value: 0,
                        last_error: None,
                    })
                }
                Err(e) => trx = trx.on_error(e).await.map_err(map_error)?,
            }
        }
    }

    /// Remembers `e` for `on_error` and converts it.
    fn fail(&mut self, e: FdbError) -> StoreError {
        self.last_error = Some(e);
        map_error_sized(e, self.sizes())
    }

    fn sizes(&self) -> Sizes {
        Sizes { key: self.longest_key, value: self.longest_value, txn: self.budget.bytes().max(MAX_TXN_BYTES + 1) }
    }

    /// Remembers the sizes of a mutation the budget admitted, for FoundationDB's own size
    /// errors.
    fn admitted(&mut self, key: &[u8], value_len: usize) {
        self.longest_key = self.longest_key.max(key.len());
        self.longest_value = self.longest_value.max(value_len);
    }
}

#[async_trait]
impl KvTxn for FdbTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // FoundationDB answers "absent" for a key too long to exist; the interface refuses it.
        TxnBudget::check_key(key)?;
        match self.trx.get(key, false).await {
            Ok(value) => {
                self.budget.read_key(key);
                Ok(value.map(|v| v.to_vec()))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        for key in keys {
            TxnBudget::check_key(key)?;
        }
        // Every read in flight at once: the storage servers answer them together rather than
        // one round trip after another.
        let reads = futures::future::join_all(keys.iter().map(|key| self.trx.get(key, false))).await;
        let mut values = Vec::with_capacity(keys.len());
        for (key, read) in keys.iter().zip(reads) {
            match read {
                Ok(value) => {
                    self.budget.read_key(key);
                    values.push(value.map(|v| v.to_vec()));
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(values)
    }

    async fn get_range(&mut self, range: &RangeRead) -> Result<Vec<KeyValue>> {
        // FoundationDB answers an empty range; the interface calls it an error.
        if range.end < range.begin {
            return Err(StoreError::InvertedRange);
        }
        let mut out: Vec<KeyValue> = Vec::new();
        let mut next = Some(RangeOption {
            begin: KeySelector::first_greater_or_equal(range.begin.as_slice()),
            end: KeySelector::first_greater_or_equal(range.end.as_slice()),
            limit: (range.limit > 0).then_some(range.limit),
            mode: StreamingMode::WantAll,
            reverse: range.reverse,
            ..RangeOption::default()
        });
        // FoundationDB's batch counter for the streaming mode: 1, 2, … within one read.
        let mut iteration = 1;
        while let Some(opt) = next {
            let batch = match self.trx.get_range(&opt, iteration, false).await {
                Ok(batch) => batch,
                Err(e) => return Err(self.fail(e)),
            };
            out.extend(batch.iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())));
            // `None` once the range is exhausted or the limit is reached.
            next = opt.next_range(&batch);
            iteration += 1;
        }
        if range.limit > 0 {
            out.truncate(range.limit);
        }
        // The read conflict range FoundationDB recorded: up to the last key when the limit cut
        // the read short.
        let (begin, end) = match out.last() {
            Some((last, _)) if range.limit > 0 && out.len() == range.limit => {
                if range.reverse {
                    (last.len(), range.end.len())
                } else {
                    (range.begin.len(), last.len() + 1)
                }
            }
            _ => (range.begin.len(), range.end.len()),
        };
        self.budget.read_range(begin, end);
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.budget.set(key, value)?;
        self.admitted(key, value.len());
        self.trx.set(key, value);
        self.wrote = true;
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<()> {
        // FoundationDB ignores the clear of a key too long to exist; the interface refuses it.
        self.budget.clear(key)?;
        self.admitted(key, 0);
        self.trx.clear(key);
        self.wrote = true;
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        // FoundationDB would fail the whole transaction at commit (2005) for an inverted range;
        // the budget fails this call instead.
        self.budget.clear_range(begin, end)?;
        self.admitted(begin, 0);
        if begin == end {
            // An empty range is no mutation at all.
            return Ok(());
        }
        self.trx.clear_range(begin, end);
        self.wrote = true;
        Ok(())
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<()> {
        let operand = delta.to_le_bytes();
        self.budget.atomic_add(key)?;
        self.admitted(key, 0);
        // ADD adds little-endian two's-complement integers, so a negative delta subtracts.
        self.trx.atomic_op(key, &operand, MutationType::Add);
        self.wrote = true;
        Ok(())
    }

    fn set_versionstamped_key(&mut self, key: &[u8], offset: usize, value: &[u8]) -> Result<()> {
        // FoundationDB takes the offset as 4 bytes; one that does not fit them is outside any
        // key the budget admits too.
        let Ok(offset_le) = u32::try_from(offset).map(u32::to_le_bytes) else {
            return self.budget.refuse(StoreError::BadVersionstampOffset { offset, len: key.len() });
        };
        self.budget.set_versionstamped_key(key, offset, value)?;
        self.admitted(key, value.len());
        let mut param = Vec::with_capacity(key.len() + OFFSET_SUFFIX_BYTES);
        param.extend_from_slice(key);
        param.extend_from_slice(&offset_le);
        // FoundationDB counts the suffix against its key limit, so a key within 4 bytes of the
        // limit fails at commit; remember the length it saw.
        self.longest_key = self.longest_key.max(param.len());
        self.trx.atomic_op(&param, value, MutationType::SetVersionstampedKey);
        self.wrote = true;
        Ok(())
    }

    fn watch(&mut self, key: &[u8]) -> Result<Watch> {
        TxnBudget::check_key(key)?;
        let sizes = Sizes { key: key.len(), ..self.sizes() };
        // The future is independent of the transaction: once committed, a watch outlives it.
        let watch = self.trx.watch(key).map_err(move |e| match e.code() {
            // The transaction was dropped or reset without committing.
            code::TRANSACTION_CANCELLED | code::OPERATION_CANCELLED => StoreError::Unavailable(format!(
                "watch cancelled: its transaction did not commit ({})",
                engine_message(e)
            )),
            _ => map_error_sized(e, sizes),
        });
        Ok(Box::pin(watch))
    }

    async fn commit(self: Box<Self>) -> Result<Committed> {
        let mut this = *self;
        this.budget.refusal()?;
        this.budget.check_total()?;
        let sizes = this.sizes();
        let FdbTxn { trx, wrote, .. } = this;
        // Both futures must be taken before the commit: the versionstamp is only known once it
        // is done, and the size is wanted as it was before it.
        let stamp = wrote.then(|| trx.get_versionstamp());
        let size = wrote.then(|| trx.get_approximate_size());
        let committed = match trx.commit().await {
            Ok(committed) => committed,
            Err(failed) => {
                let e = *failed;
                if e.code() == code::TRANSACTION_TOO_LARGE {
                    let bytes = match size {
                        Some(size) => size.await.ok().and_then(|n| usize::try_from(n).ok()),
                        None => None,
                    };
                    let txn = bytes.unwrap_or(sizes.txn);
                    return Err(map_error_sized(e, Sizes { txn, ..sizes }));
                }
                return Err(map_error_sized(e, sizes));
            }
        };
        let versionstamp = match stamp {
            None => Versionstamp::ZERO,
            Some(stamp) => match stamp.await {
                Ok(bytes) => {
                    let bytes: [u8; VERSIONSTAMP_BYTES] = bytes.as_ref().try_into().map_err(|_| {
                        StoreError::Engine(format!("FoundationDB returned a versionstamp of {} bytes", bytes.len()))
                    })?;
                    Versionstamp(bytes)
                }
                // Every write turned out to be a no-op to FoundationDB, so the commit was
                // read-only after all.
                Err(e) if e.code() == code::NO_COMMIT_VERSION => Versionstamp::ZERO,
                Err(e) => return Err(map_error(e)),
            },
        };
        // Kept until the versionstamp is read, so the transaction is not destroyed under it.
        drop(committed);
        Ok(Committed { versionstamp })
    }

    async fn on_error(self: Box<Self>, err: StoreError) -> Result<Box<dyn KvTxn>> {
        let code = match &err {
            StoreError::Conflict => code::NOT_COMMITTED,
            StoreError::TooOld => code::TRANSACTION_TOO_OLD,
            StoreError::CommitUnknown => code::COMMIT_UNKNOWN_RESULT,
            // Other FoundationDB errors (future_version, process_behind, throttling, …): FoundationDB
            // knows how to back off for them, given the code this transaction raised.
            StoreError::Engine(message) | StoreError::Transient(message) => match self.last_error {
                Some(e) if *message == engine_message(e) => e.code(),
                _ => return Err(err),
            },
            _ => return Err(err),
        };
        // Backs off, then resets the transaction; fails with the code itself when it is not
        // retryable.
        match self.trx.on_error(FdbError::from_code(code)).await {
            Ok(trx) => Ok(Box::new(FdbTxn::start(trx).await?)),
            Err(e) if e.code() == code => Err(err),
            Err(e) => Err(map_error(e)),
        }
    }
}

/// What to report as the size in a FoundationDB size error, which carries none.
#[derive(Clone, Copy)]
struct Sizes {
    key: usize,
    value: usize,
    txn: usize,
}

/// Converts a FoundationDB error that is not about sizes.
fn map_error(e: FdbError) -> StoreError {
    map_error_sized(e, Sizes { key: MAX_KEY_BYTES + 1, value: MAX_VALUE_BYTES + 1, txn: MAX_TXN_BYTES + 1 })
}

/// Converts a FoundationDB error, reporting `sizes` for the size errors.
fn map_error_sized(e: FdbError, sizes: Sizes) -> StoreError {
    match e.code() {
        code::NOT_COMMITTED => StoreError::Conflict,
        code::TRANSACTION_TOO_OLD => StoreError::TooOld,
        code::COMMIT_UNKNOWN_RESULT => StoreError::CommitUnknown,
        code::TRANSACTION_TOO_LARGE => StoreError::TransactionTooLarge(sizes.txn),
        code::KEY_TOO_LARGE => StoreError::KeyTooLarge(sizes.key),
        code::VALUE_TOO_LARGE => StoreError::ValueTooLarge(sizes.value),
        code::INVERTED_RANGE => StoreError::InvertedRange,
        _ if e.is_maybe_committed() => StoreError::CommitUnknown,
        _ if e.is_retryable() => StoreError::Transient(engine_message(e)),
        _ => StoreError::Engine(engine_message(e)),
    }
}

/// The text of [`StoreError::Engine`] for a FoundationDB error: its code and message.
fn engine_message(e: FdbError) -> String {
    format!("FoundationDB error {}: {}", e.code(), e.message())
}
