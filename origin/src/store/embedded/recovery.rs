//! Recovery: what opening a store finds on disk, and how the log's commits reach redb.
//!
//! Opening reads the flushed version from redb and replays the log records after it (module
//! `wal` reads and checks the log) into a fresh memtable, stopping at the first torn or
//! corrupt record: a commit that was never acknowledged. Once the store is built on that, the
//! replayed commits are written into redb, the old segments deleted, and versions continue
//! after the last replayed one. docs/STORAGE.md, "What recovery guarantees", states what this
//! promises.

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata};

use super::{engine_err, memtable::Memtable, wal, Shared, KV, META, VERSION_KEY};
use crate::store::{Result, StoreError};

/// What opening found on disk.
pub(super) struct OnDisk {
    /// The redb file.
    pub(super) db: Database,
    /// Its flushed version: every commit up to it is in redb.
    pub(super) flushed: u64,
    /// How many keys redb holds, to size the key filter.
    pub(super) keys: u64,
    /// The names of the log's segments.
    pub(super) naming: wal::Naming,
    /// The commits the log holds after `flushed`.
    pub(super) mem: Memtable,
    /// What replaying the log found.
    pub(super) log: wal::Recovered,
}

/// Opens (or creates) the redb file at `path`, with `cache_bytes` of page cache, and replays
/// the write-ahead log after its flushed version into a new memtable.
pub(super) fn read(path: &Path, cache_bytes: usize) -> Result<OnDisk> {
    let db = redb::Builder::new().set_cache_size(cache_bytes).create(path).map_err(engine_err)?;
    let (flushed, keys) = {
        let wtx = db.begin_write().map_err(engine_err)?;
        let found = {
            let kv = wtx.open_table(KV).map_err(engine_err)?;
            let meta = wtx.open_table(META).map_err(engine_err)?;
            let v = meta.get(VERSION_KEY).map_err(engine_err)?.map(|g| g.value());
            (v.unwrap_or(0), kv.len().map_err(engine_err)?)
        };
        wtx.commit().map_err(engine_err)?;
        found
    };
    let naming = wal::Naming::new(path);
    let mem = Memtable::new(flushed);
    let recovered = {
        let mut w = mem.write();
        wal::recover(&naming, flushed, |version, mutations| {
            for m in mutations {
                w.apply(version, m);
            }
            w.note_version(version);
        })
        .map_err(|e| StoreError::Engine(format!("cannot read the write-ahead log: {e}")))?
    };
    Ok(OnDisk { db, flushed, keys, naming, mem, log: recovered })
}

impl Shared {
    /// Writes the commits replayed from the log into redb and deletes the segments that held
    /// them.
    pub(super) fn settle_recovery(&self, naming: &wal::Naming, log: &wal::Recovered) -> Result<()> {
        if log.replayed > 0 {
            self.flush_all(false).map_err(|e| StoreError::Engine(format!("cannot flush the replayed log: {e}")))?;
            self.retire();
            tracing::info!(transactions = log.replayed, version = log.last_version, "write-ahead log replayed");
        }
        // Every commit the old segments hold is in redb now.
        wal::remove_segments(naming, &log.segments, self.opts.fsync)
            .map_err(|e| StoreError::Engine(format!("cannot delete replayed log segments: {e}")))?;
        Ok(())
    }
}

/// Replays segments given as `(first version, bytes)` after `flushed`, as opening a store
/// would, and answers the versions applied, or why the log was refused. For the fuzz target
/// of the log's recovery; not part of the store's interface.
#[doc(hidden)]
pub fn replay_log_for_fuzzing(segments: &[(u64, Vec<u8>)], flushed: u64) -> std::io::Result<Vec<u64>> {
    let files: Vec<(u64, &Path, Vec<u8>)> =
        segments.iter().map(|(first, bytes)| (*first, Path::new("fuzz"), bytes.clone())).collect();
    let mut versions = Vec::new();
    wal::replay(&files, flushed, |v, _| versions.push(v))?;
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{
        embedded::{
            tests::{manual_flush, wal_files},
            EmbeddedOptions, EmbeddedStore,
        },
        KvStore, RangeRead, Store,
    };

    fn num(v: Option<Vec<u8>>) -> Option<u64> {
        v.map(|v| u64::from_be_bytes(v.try_into().unwrap()))
    }

    /// A value whose bytes are mostly zeros, of a length that varies with `i`: records full of
    /// them leave zeros wherever a recycled segment's new records end.
    fn zeroish(i: u64) -> Vec<u8> {
        let mut v = vec![0u8; ((i * 7919) % 3001) as usize];
        if i.is_multiple_of(3) {
            // Bytes shaped like a record header of a made-up salt.
            v.extend_from_slice(&(i as u32).to_le_bytes());
            v.extend_from_slice(&[0; 4]);
            v.extend_from_slice(&i.to_le_bytes());
        }
        v
    }

    /// Child half of [`committed_data_survives_kill_9`] and
    /// [`acknowledged_commits_survive_kills_amid_recycled_segments`]: commits transactions of
    /// every kind of mutation and reports each acknowledged one on stdout until killed. With
    /// `SELVAGE_CRASH_CHILD_MODE=unflushed` nothing is ever flushed into redb, so everything
    /// survives in the write-ahead log only; with `recycled` the flusher runs every few
    /// milliseconds, so segments are retired and written over all the time, and the values are
    /// runs of zeros. The child goes on from the counter it finds.
    #[tokio::test]
    #[ignore = "run as a child process by committed_data_survives_kill_9"]
    async fn crash_child() {
        let Ok(path) = std::env::var("SELVAGE_CRASH_CHILD_DB") else {
            return;
        };
        let mode = std::env::var("SELVAGE_CRASH_CHILD_MODE").unwrap_or_default();
        let opts = match mode.as_str() {
            "unflushed" => manual_flush(),
            "recycled" => EmbeddedOptions { flush_interval: Duration::from_millis(5), ..EmbeddedOptions::default() },
            _ => EmbeddedOptions::default(),
        };
        let store = EmbeddedStore::open(Path::new(&path), opts).unwrap();
        let start = {
            let mut tx = store.begin().await.unwrap();
            num(tx.get(b"counter").await.unwrap()).unwrap_or(0) + 1
        };
        for i in start.. {
            let mut tx = store.begin().await.unwrap();
            tx.set(b"counter", &i.to_be_bytes()).unwrap();
            let value = if mode == "recycled" { zeroish(i) } else { b"x".to_vec() };
            tx.set(&[b"k/".as_slice(), &i.to_be_bytes()].concat(), &value).unwrap();
            tx.atomic_add(b"sum", 1).unwrap();
            tx.set_versionstamped_key(&[b"log/".as_slice(), &[0; 10]].concat(), 4, &i.to_be_bytes()).unwrap();
            if i % 5 == 0 {
                tx.clear_range(b"tmp/", b"tmp0").unwrap();
            } else {
                tx.set(&[b"tmp/".as_slice(), &i.to_be_bytes()].concat(), b"t").unwrap();
            }
            let c = tx.commit().await.unwrap();
            println!("acked {i} {}", c.versionstamp.version());
        }
    }

    /// Runs [`crash_child`] until it has acknowledged `acks` commits, then kills it with
    /// SIGKILL; returns the last acknowledged commit and its version.
    async fn run_and_kill_child(path: &Path, mode: &str, acks: u64) -> (u64, u64) {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::embedded::recovery::tests::crash_child", "--ignored", "--nocapture"])
            .env("SELVAGE_CRASH_CHILD_DB", path)
            .env("SELVAGE_CRASH_CHILD_MODE", mode)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let last = tokio::task::spawn_blocking(move || {
            let mut last = (0u64, 0u64);
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let mut parts = line.strip_prefix("acked ").map(|l| l.split(' ')).into_iter().flatten();
                if let (Some(i), Some(v)) = (parts.next(), parts.next()) {
                    last = (i.parse().unwrap(), v.parse().unwrap());
                    if last.0 >= acks {
                        break;
                    }
                }
            }
            last
        })
        .await
        .unwrap();
        assert!(last.0 >= acks, "the child stopped early");
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        last
    }

    /// Every acknowledged commit survives kill -9, whether it had reached redb or only the
    /// write-ahead log, and versions go on after the highest one recovered.
    #[tokio::test]
    async fn committed_data_survives_kill_9() {
        for (mode, acks) in [("default", 300), ("unflushed", 100)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("crash.redb");
            let (last_i, last_version) = run_and_kill_child(&path, mode, acks).await;
            if mode == "unflushed" {
                assert!(!wal_files(dir.path()).is_empty(), "nothing in the log to replay");
            }

            let store = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
            assert!(store.last_version() >= last_version, "{mode}");
            assert_eq!(store.flushed_version(), store.last_version(), "{mode}: the replay was not flushed");
            assert!(wal_files(dir.path()).is_empty(), "{mode}: replayed segments were kept");
            let mut tx = store.begin().await.unwrap();
            let counter = num(tx.get(b"counter").await.unwrap()).unwrap();
            assert!(counter >= last_i, "{mode}: acknowledged commit {last_i} lost (found {counter})");
            for i in 1..=counter {
                let key = [b"k/".as_slice(), &i.to_be_bytes()].concat();
                assert!(tx.get(&key).await.unwrap().is_some(), "{mode}: commit {i} lost");
            }
            assert_eq!(tx.get(b"sum").await.unwrap(), Some((counter as i64).to_le_bytes().to_vec()), "{mode}");
            let log = tx.get_range(&RangeRead::prefix(b"log")).await.unwrap();
            let logged: Vec<u64> = log.iter().map(|(_, v)| num(Some(v.clone())).unwrap()).collect();
            assert_eq!(logged, (1..=counter).collect::<Vec<_>>(), "{mode}: the log is out of order");
            let tmp = tx.get_range(&RangeRead::between(b"tmp/".to_vec(), b"tmp0".to_vec())).await.unwrap();
            assert_eq!(tmp.len() as u64, counter % 5, "{mode}: a clear_range was not replayed");
            let mut w = store.begin().await.unwrap();
            w.set(b"after", b"crash").unwrap();
            let c = w.commit().await.unwrap();
            assert!(c.versionstamp.version() > store.flushed_version(), "{mode}");
            assert!(c.versionstamp.version() > last_version, "{mode}");
        }
    }

    /// Kill after kill, with segments recycled every few milliseconds and values made of
    /// zeros, every acknowledged commit survives with its value, and versions never go back.
    #[tokio::test]
    async fn acknowledged_commits_survive_kills_amid_recycled_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.redb");
        let mut acked = 0;
        let mut version = 0;
        for round in 0..4 {
            let (last_i, last_version) = run_and_kill_child(&path, "recycled", acked + 400).await;
            assert!(last_version > version, "round {round}: versions went back");
            (acked, version) = (last_i, last_version);
            let store = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
            assert!(store.last_version() >= last_version, "round {round}");
            let mut tx = store.begin().await.unwrap();
            let counter = num(tx.get(b"counter").await.unwrap()).unwrap();
            assert!(counter >= last_i, "round {round}: acknowledged commit {last_i} lost (found {counter})");
            for i in 1..=counter {
                let key = [b"k/".as_slice(), &i.to_be_bytes()].concat();
                assert_eq!(tx.get(&key).await.unwrap(), Some(zeroish(i)), "round {round}: commit {i}");
            }
            assert_eq!(tx.get(b"sum").await.unwrap(), Some((counter as i64).to_le_bytes().to_vec()));
            let log = tx.get_range(&RangeRead::prefix(b"log")).await.unwrap();
            assert_eq!(log.len() as u64, counter, "round {round}: feed-like log entries");
        }
    }

    /// A record torn by a crash, garbage after the last record, or a record whose checksum
    /// fails ends the log there: the commits before it are recovered, nothing after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_log_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb"), manual_flush()).unwrap();
        let store_dyn: Store = store.clone();
        for i in 1..=10u64 {
            let mut tx = store_dyn.begin().await.unwrap();
            tx.set(&i.to_be_bytes(), b"v").unwrap();
            tx.atomic_add(b"n", 1).unwrap();
            tx.commit().await.unwrap();
        }
        // A crash image: the files as a kill -9 would leave them (nothing flushed yet).
        let image = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, image.path().join(path.file_name().unwrap())).unwrap();
        }
        drop(store_dyn);
        drop(store);

        let damage = |how: &str| {
            let copy = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(image.path()).unwrap() {
                let path = entry.unwrap().path();
                std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
            }
            let segments = wal_files(copy.path());
            assert_eq!(segments.len(), 1);
            let mut bytes = std::fs::read(&segments[0]).unwrap();
            match how {
                "torn" => bytes.truncate(bytes.len() - 3),
                "garbage" => bytes.extend_from_slice(&[0xa5; 11]),
                "bad checksum" => {
                    let at = bytes.len() - 2;
                    bytes[at] ^= 0x01;
                }
                _ => unreachable!(),
            }
            std::fs::write(&segments[0], bytes).unwrap();
            copy
        };
        for (how, survivors) in [("torn", 9u64), ("garbage", 10), ("bad checksum", 9)] {
            let copy = damage(how);
            let path = copy.path().join("s.redb");
            {
                let reopened = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
                assert_eq!(reopened.last_version(), survivors, "{how}");
                let store: Store = reopened.clone();
                let mut tx = store.begin().await.unwrap();
                for i in 1..=10u64 {
                    assert_eq!(tx.get(&i.to_be_bytes()).await.unwrap().is_some(), i <= survivors, "{how}: {i}");
                }
                assert_eq!(tx.get(b"n").await.unwrap(), Some((survivors as i64).to_le_bytes().to_vec()));
                let mut w = store.begin().await.unwrap();
                w.set(b"after", b"recovery").unwrap();
                let c = w.commit().await.unwrap();
                assert_eq!(c.versionstamp.version(), survivors + 1, "{how}: versions must continue");
            }
            // And the recovered store reopens cleanly, with the write after recovery.
            let again = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
            assert_eq!(again.last_version(), survivors + 1, "{how}");
            let store: Store = again;
            let mut tx = store.begin().await.unwrap();
            assert_eq!(tx.get(b"after").await.unwrap(), Some(b"recovery".to_vec()), "{how}");
        }
    }
}
