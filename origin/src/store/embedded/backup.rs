//! Online backups of the embedded engine, and restoring one into a new store
//! (docs/STORAGE.md, "Backup and restore").
//!
//! A backup reads redb alone, never the memtable: it first flushes everything committed so far,
//! then begins a redb read transaction between two flushes — the flusher holds
//! `Shared::flushing` while it writes a table, whose chunks reach redb in several transactions
//! — so redb holds exactly the commits up to its flushed version, and the read transaction
//! keeps that state for as long as it lives. Nothing of the memtable's bookkeeping (pins, the
//! 5 s age of flushed tables) is involved, so the view outlives [`MAX_TXN_AGE`](crate::store::MAX_TXN_AGE): what bounds
//! it is [`EmbeddedOptions::max_backup_age`](super::EmbeddedOptions::max_backup_age), because
//! while it lives redb cannot reuse the pages that later flushes free, and the file grows by
//! them. One backup at a time.
//!
//! A restore writes a new redb file from a backup: its `kv` table, and as flushed version the
//! backup's plus [`RESTORE_VERSION_GAP`], so the store opened on it gives versions — and feed
//! positions — past any the store backed up may have given after its backup. It records that
//! gap for the feed ([`crate::feed::RESTORED_GAP`]: the restored log's last position and the
//! first the new store can give): a reader whose cursor falls inside it followed events the
//! restore discarded, and is told to resync rather than read on as if nothing were missing. It
//! writes no log: opening the store replays nothing.

use std::{
    io::Read,
    path::Path,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use redb::{Durability, ReadOnlyTable, ReadableDatabase, ReadableTable};

use super::{engine_err, lock, EmbeddedStore, Shared, KV, META, VERSION_KEY};
use crate::{
    feed::RESTORED_GAP,
    store::{
        backup::{BackupError, Decoder},
        keys, BackupSource, BackupStart, Result, ScanFn, StoreError, Versionstamp,
    },
};

/// redb's user table, as a read transaction holds it.
type KvTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Records between two checks of a backup's age.
const AGE_CHECK_EVERY: u64 = 4096;
/// Bytes of records a restore writes per redb transaction.
const RESTORE_CHUNK_BYTES: usize = 64 << 20;
/// How far past the backup's version a restored store's versions begin: more commits than the
/// store backed up can have made between its backup and the restore (2^48: 89 years at 100,000
/// commits a second), and few enough for 65,536 restores in a row to fit a `u64`.
pub const RESTORE_VERSION_GAP: u64 = 1 << 48;

impl EmbeddedStore {
    /// Flushes everything committed so far and opens a view of redb at its flushed version,
    /// unless another backup still holds one.
    pub(super) async fn start_backup(&self) -> Result<BackupStart> {
        if self.shared.backup_running.swap(true, Ordering::AcqRel) {
            return Ok(BackupStart::Busy);
        }
        let running = Running(self.shared.clone());
        self.flush().await?;
        let shared = self.shared.clone();
        let (kv, version) = tokio::task::spawn_blocking(move || shared.backup_view())
            .await
            .map_err(|e| StoreError::Engine(format!("the backup's snapshot task failed: {e}")))??;
        tracing::info!(version, "backup started");
        Ok(BackupStart::Source(Box::new(EmbeddedBackup {
            kv,
            version,
            started: Instant::now(),
            max_age: self.shared.opts.max_backup_age,
            _running: running,
        })))
    }
}

impl Shared {
    /// A redb read transaction begun between two flushes, and the flushed version it holds.
    fn backup_view(&self) -> Result<(KvTable, u64)> {
        // While a table is written, redb holds part of it beyond the flushed version.
        let _between_flushes = lock(&self.flushing);
        let rtx = self.db.begin_read().map_err(engine_err)?;
        let meta = rtx.open_table(META).map_err(engine_err)?;
        let version = meta.get(VERSION_KEY).map_err(engine_err)?.map_or(0, |g| g.value());
        let kv = rtx.open_table(KV).map_err(engine_err)?;
        Ok((kv, version))
    }
}

/// Marks a backup as running until dropped.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.backup_running.store(false, Ordering::Release);
    }
}

/// A backup's view: redb's `kv` table as of `version`.
struct EmbeddedBackup {
    kv: KvTable,
    version: u64,
    started: Instant,
    max_age: Duration,
    _running: Running,
}

impl BackupSource for EmbeddedBackup {
    fn version(&self) -> u64 {
        self.version
    }

    fn scan(&mut self, each: &mut ScanFn<'_>) -> Result<()> {
        let mut seen = 0u64;
        for entry in self.kv.iter().map_err(engine_err)? {
            if seen.is_multiple_of(AGE_CHECK_EVERY) && self.started.elapsed() > self.max_age {
                tracing::warn!(version = self.version, records = seen, "backup cut off: older than max_backup_age");
                return Err(StoreError::TooOld);
            }
            let (key, value) = entry.map_err(engine_err)?;
            if each(key.value(), value.value()).is_break() {
                return Ok(());
            }
            seen += 1;
        }
        tracing::info!(version = self.version, records = seen, secs = self.started.elapsed().as_secs(), "backup read");
        Ok(())
    }
}

/// What [`restore`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The backup's version: the restored store holds every commit up to it.
    pub version: u64,
    /// The first version the restored store gives a commit ([`RESTORE_VERSION_GAP`] past the
    /// backup's).
    pub continues_at: u64,
    /// Keys of the backup written (the feed's record of the gap besides).
    pub records: u64,
}

/// Why [`restore`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup file was refused (not a backup, truncated, corrupt).
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The store file already exists: a restore only makes a new one.
    #[error("{0} already exists: restore into an empty data directory")]
    Exists(String),
    /// The new store could not be written.
    #[error("cannot write the restored store: {0}")]
    Write(String),
}

/// Writes a new store file at `path` (which must not exist) holding exactly what the backup
/// read from `input` holds, at its version. Every record is checked as it is read and the whole
/// file's checksum at its end; whatever fails, the file written so far is removed.
pub fn restore(path: &Path, input: impl Read) -> std::result::Result<Restored, RestoreError> {
    if path.exists() {
        return Err(RestoreError::Exists(path.display().to_string()));
    }
    let outcome = write_restored(path, input);
    if outcome.is_err() {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the unfinished restore");
            }
        }
    }
    outcome
}

fn write_restored(path: &Path, input: impl Read) -> std::result::Result<Restored, RestoreError> {
    let write = |e: &dyn std::fmt::Display| RestoreError::Write(e.to_string());
    let mut decoder = Decoder::open(input)?;
    let backed_up = decoder.header().version;
    let flushed = backed_up
        .checked_add(RESTORE_VERSION_GAP)
        .ok_or_else(|| RestoreError::Write("the store's versions would overflow; it was restored too often".into()))?;
    let db = redb::Database::create(path).map_err(|e| write(&e))?;
    // The restored log's newest event: where readers of the feed who are not past it read on.
    let mut log_head: Option<[u8; 12]> = None;
    loop {
        // Transactions that are not the last need not reach the disk on their own: the last
        // one's sync makes them durable with it.
        let mut wtx = db.begin_write().map_err(|e| write(&e))?;
        wtx.set_durability(Durability::None).map_err(|e| write(&e))?;
        let mut bytes = 0usize;
        let mut ended = false;
        {
            let mut kv = wtx.open_table(KV).map_err(|e| write(&e))?;
            while bytes < RESTORE_CHUNK_BYTES {
                match decoder.next_record()? {
                    Some((key, value)) => {
                        bytes += key.len() + value.len();
                        if let Some(position) = keys::log_position(&key) {
                            log_head = Some(position);
                        }
                        kv.insert(key.as_slice(), value.as_slice()).map_err(|e| write(&e))?;
                    }
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
        }
        if ended {
            // The whole backup has been read and its checksum matched: only now is the version
            // recorded, in the one durable transaction.
            wtx.set_durability(Durability::Immediate).map_err(|e| write(&e))?;
            {
                let continues_at = Versionstamp::new(flushed + 1, 0).0;
                let mut gap = Vec::with_capacity(24);
                gap.extend_from_slice(&log_head.unwrap_or_default());
                gap.extend_from_slice(&continues_at);
                gap.extend_from_slice(&[0, 0]);
                let mut kv = wtx.open_table(KV).map_err(|e| write(&e))?;
                kv.insert(keys::meta(RESTORED_GAP).as_slice(), gap.as_slice()).map_err(|e| write(&e))?;
                let mut meta = wtx.open_table(META).map_err(|e| write(&e))?;
                meta.insert(VERSION_KEY, flushed).map_err(|e| write(&e))?;
            }
            wtx.commit().map_err(|e| write(&e))?;
            return Ok(Restored { version: backed_up, continues_at: flushed + 1, records: decoder.records() });
        }
        wtx.commit().map_err(|e| write(&e))?;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        ops::ControlFlow,
        sync::atomic::{AtomicBool, AtomicU64},
    };

    use super::*;
    use crate::store::{
        backup::{self, Written},
        embedded::{
            tests::{constant_flush, manual_flush},
            EmbeddedOptions,
        },
        RangeRead, Store,
    };

    /// Every key and value of `store`, read in one transaction.
    async fn contents(store: &Store) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut tx = store.begin().await.unwrap();
        tx.get_range(&RangeRead::between(vec![0], vec![0xff])).await.unwrap().into_iter().collect()
    }

    /// Takes a backup of `store` into a buffer.
    async fn backup_of(store: &Store) -> Vec<u8> {
        let BackupStart::Source(mut source) = store.backup().await.unwrap() else { panic!("no backup") };
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let written = backup::write(&mut *source, 0, 1000, &mut |piece| {
                out.extend(piece);
                true
            })
            .unwrap();
            assert!(matches!(written, Written::Whole(_)), "{written:?}");
            out
        })
        .await
        .unwrap()
    }

    /// Writers keep committing pairs of keys that always hold the same number, with the flusher
    /// running all the time, while a backup is taken: the backup holds every pair as one commit
    /// left it, everything committed before it began, and — restored — a store whose contents
    /// are those and whose versions continue after the backup's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_under_writes_and_flushes_is_one_version_and_restores_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = EmbeddedStore::open(&dir.path().join("s.redb"), constant_flush()).unwrap();
        let store: Store = embedded.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let writer = {
            let (store, stop, committed) = (store.clone(), stop.clone(), committed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut tx = store.begin().await.unwrap();
                    for pair in 0..8u8 {
                        tx.set(&[b'a', pair], &n.to_be_bytes()).unwrap();
                        tx.set(&[b'b', pair], &n.to_be_bytes()).unwrap();
                    }
                    tx.set(format!("n/{n:08}").as_bytes(), b"").unwrap();
                    tx.commit().await.unwrap();
                    committed.store(n, Ordering::Release);
                }
            })
        };
        while committed.load(Ordering::Acquire) < 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = committed.load(Ordering::Acquire);
        let bytes = backup_of(&store).await;
        assert!(matches!(store.backup().await.unwrap(), BackupStart::Source(_)), "the first backup is over");
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.store(true, Ordering::Relaxed);
        writer.await.unwrap();

        let restored_path = dir.path().join("restored.redb");
        let restored = restore(&restored_path, bytes.as_slice()).unwrap();
        assert!(restored.version <= embedded.last_version());
        let reopened: Store = EmbeddedStore::open(&restored_path, EmbeddedOptions::default()).unwrap();
        let got = contents(&reopened).await;
        let n = u64::from_be_bytes(got[&vec![b'a', 0]].clone().try_into().unwrap());
        assert!(n >= before, "commit {before} was acknowledged before the backup began, the backup holds {n}");
        for pair in 0..8u8 {
            assert_eq!(got[&vec![b'a', pair]], n.to_be_bytes(), "pair {pair}");
            assert_eq!(got[&vec![b'b', pair]], n.to_be_bytes(), "pair {pair}");
        }
        let markers = got.keys().filter(|k| k.starts_with(b"n/")).count() as u64;
        assert_eq!(markers, n, "every commit up to the backup's, none after");
        let gap = keys::meta(RESTORED_GAP);
        assert_eq!(restored.records + 1, got.len() as u64, "the backup's keys and the feed's gap");
        assert_eq!(got[&gap][..12], [0; 12], "no feed events in this store");
        assert_eq!(got[&gap][12..], [Versionstamp::new(restored.continues_at, 0).0.as_slice(), &[0, 0]].concat());

        // The restored store continues past the backup's version, and past the gap.
        assert_eq!(restored.continues_at, restored.version + RESTORE_VERSION_GAP + 1);
        let mut tx = reopened.begin().await.unwrap();
        tx.set(b"after", b"restore").unwrap();
        let committed = tx.commit().await.unwrap();
        assert_eq!(committed.versionstamp.version(), restored.continues_at);
    }

    /// The view outlives the 5 s of a transaction (here shortened to 100 ms) while flushes
    /// free what it reads, until its own bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_outlives_the_transaction_age_until_its_own_bound() {
        let dir = tempfile::tempdir().unwrap();
        let max_backup_age = Duration::from_secs(2);
        let opts = EmbeddedOptions { max_txn_age: Duration::from_millis(100), max_backup_age, ..manual_flush() };
        let embedded = EmbeddedStore::open(&dir.path().join("s.redb"), opts).unwrap();
        let store: Store = embedded.clone();
        let write_all = |value: &'static [u8]| {
            let store = store.clone();
            async move {
                let mut tx = store.begin().await.unwrap();
                for i in 0..1000u32 {
                    tx.set(&i.to_be_bytes(), value).unwrap();
                }
                tx.commit().await.unwrap();
            }
        };
        write_all(b"before").await;
        let BackupStart::Source(mut source) = store.backup().await.unwrap() else { panic!("no backup") };
        let started = Instant::now();
        assert!(matches!(store.backup().await.unwrap(), BackupStart::Busy), "one at a time");
        for value in [b"after1", b"after2", b"after3"] {
            write_all(value).await;
            embedded.flush().await.unwrap();
        }
        // Older than any transaction may be, and flushed over three times.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut values = Vec::new();
        source
            .scan(&mut |_, v| {
                values.push(v.to_vec());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(started.elapsed() < max_backup_age, "the machine was too slow for this test's bound");
        assert_eq!(values.len(), 1000);
        assert!(values.iter().all(|v| v == b"before"), "the view kept its version through the flushes");
        tokio::time::sleep(max_backup_age.saturating_sub(started.elapsed()) + Duration::from_millis(100)).await;
        let late = source.scan(&mut |_, _| ControlFlow::Continue(()));
        assert!(matches!(late, Err(StoreError::TooOld)), "{late:?}");
        drop(source);
        assert!(matches!(store.backup().await.unwrap(), BackupStart::Source(_)), "free again once dropped");
    }

    /// A truncated backup writes nothing, and a restore never writes over a store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_backup_or_an_existing_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default()).unwrap();
        let mut tx = store.begin().await.unwrap();
        for i in 0..100u32 {
            tx.set(&i.to_be_bytes(), &[7; 100]).unwrap();
        }
        tx.commit().await.unwrap();
        let bytes = backup_of(&store).await;
        let target = dir.path().join("r.redb");
        let err = restore(&target, &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(!target.exists(), "nothing is left of a refused restore");
        restore(&target, bytes.as_slice()).unwrap();
        let err = restore(&target, bytes.as_slice()).unwrap_err();
        assert!(matches!(err, RestoreError::Exists(_)), "{err}");
    }
}
