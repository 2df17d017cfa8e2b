//! The files sweeper: a periodic task on every origin node (ARCHITECTURE §8 "Files").
//!
//! Every `files.sweep_interval_secs` it
//!
//! 1. **expires uploads never completed**: each file still pending
//!    `max(files.pending_ttl_secs, files.upload_url_secs)` after it was declared — so never
//!    while its upload URL works — becomes `expired`, in one transaction that checks it is still
//!    pending: its bytes go back to the quota and its object is queued for deletion. A file
//!    completed meanwhile is left alone, whichever transaction commits first.
//! 2. **deletes the objects queued** under `(files, gc, due, …)` whose time has come — by
//!    deleted, failed and expired files, and by the thumbnail worker for a file deleted while it
//!    worked — and clears each entry once its object is gone. One that fails stays queued for
//!    the next round.
//!
//! Why a periodic task and not a feed consumer: nothing is logged when an upload's time runs
//! out, and a file's deletion is not a feed event either; both are conditions on the store,
//! which two small indexes ordered by time answer in one range read each. Several nodes may
//! sweep at once: expiring is a checked transaction, so it happens once, and deleting an object
//! twice is harmless.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use selvage_shared::WorkspaceId;
use tokio_util::sync::CancellationToken;

use super::{
    objects::Objects,
    records::{self, FileState},
};
use crate::{
    config::FilesConfig,
    metrics::Metrics,
    store::{self, keys, tuple, RangeRead, Store},
    transact,
};

/// Entries handled per transaction (and per range read).
const PAGE: usize = 100;

/// Pages handled per round at most, of each kind: a backlog is worked off over several rounds
/// rather than in one long one.
const PAGES_PER_ROUND: usize = 20;

/// Objects deleted at once.
const DELETES_AT_ONCE: usize = 8;

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Uploads expired.
    pub expired: usize,
    /// Objects deleted (or found already gone).
    pub deleted: usize,
    /// Objects whose deletion failed; still queued.
    pub failed: usize,
}

/// The sweeper of one node.
pub struct Sweeper {
    store: Store,
    objects: Objects,
    metrics: Arc<Metrics>,
    /// How long after its declaration a pending upload expires, in ms.
    expire_after_ms: i64,
    upload_url_ms: i64,
    interval: Duration,
}

impl Sweeper {
    /// A sweeper configured by `[files]`.
    pub fn new(store: Store, objects: Objects, config: &FilesConfig, metrics: &Arc<Metrics>) -> Sweeper {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Sweeper {
            store,
            objects,
            metrics: metrics.clone(),
            expire_after_ms: ms(config.pending_ttl_secs.max(config.upload_url_secs)),
            upload_url_ms: ms(config.upload_url_secs),
            interval: Duration::from_secs(config.sweep_interval_secs.max(1)),
        }
    }

    /// Sweeps every interval until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
            let round = tokio::select! {
                _ = shutdown.cancelled() => break,
                round = self.sweep(crate::now_ms()) => round,
            };
            match round {
                Ok(swept) if swept != Swept::default() => tracing::info!(
                    expired = swept.expired,
                    deleted = swept.deleted,
                    failed = swept.failed,
                    "files swept"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the files sweeper could not read or write the store; retrying next round")
                }
            }
        }
        tracing::debug!("files sweeper stopped");
    }

    /// One round, as of `now` (ms).
    pub async fn sweep(&self, now: i64) -> store::Result<Swept> {
        let mut swept = Swept { expired: self.expire(now).await?, ..Swept::default() };
        self.collect(now, &mut swept).await?;
        Ok(swept)
    }

    /// Expires the uploads declared before `now - expire_after`.
    async fn expire(&self, now: i64) -> store::Result<usize> {
        let begin = keys::files_pending();
        let end = keys::files_pending_at(now.saturating_sub(self.expire_after_ms));
        let mut expired = 0;
        for _ in 0..PAGES_PER_ROUND {
            let range = RangeRead::between(begin.clone(), end.clone()).limit(PAGE);
            let ((count, seen), _) = transact!(self.store, |tx| {
                let rows = tx.get_range(&range).await?;
                let mut done = 0;
                for (key, _) in &rows {
                    tx.clear(key)?;
                    let Some((w, id)) = pending_parts(key) else { continue };
                    let Some(file) = records::load(tx, &w, &id).await? else { continue };
                    if file.state != FileState::Pending {
                        continue;
                    }
                    let (size, created_at) = (file.size, file.created_at);
                    if super::release_in(tx, &w, file, FileState::Expired, now, self.upload_url_ms)?.is_some() {
                        tracing::info!(file.id = id, ws.id = %w, size, created_at, "upload never completed: expired");
                        done += 1;
                    }
                }
                (done, rows.len())
            })?;
            expired += count;
            self.metrics.files.with_label_values(&["expired"]).inc_by(count as u64);
            if seen < PAGE {
                break;
            }
        }
        Ok(expired)
    }

    /// Deletes the queued objects due by `now`.
    async fn collect(&self, now: i64, swept: &mut Swept) -> store::Result<()> {
        let mut begin = keys::files_gc();
        let end = keys::files_gc_at(now.saturating_add(1));
        for _ in 0..PAGES_PER_ROUND {
            let range = RangeRead::between(begin.clone(), end.clone()).limit(PAGE);
            let (rows, _) = transact!(self.store, |tx| { tx.get_range(&range).await? })?;
            let Some((last, _)) = rows.last() else { break };
            // The next page starts after this one, whatever becomes of its entries.
            begin = last.clone();
            begin.push(0x00);
            // Collected first: a stream's closure borrowing `self` is not `Send` for every lifetime.
            let attempts: Vec<_> = rows.into_iter().map(|(key, _)| self.delete_entry(key)).collect();
            let seen = attempts.len();
            let deletions: Vec<_> = futures::stream::iter(attempts).buffer_unordered(DELETES_AT_ONCE).collect().await;
            let mut gone = Vec::new();
            for (key, result) in deletions {
                match result {
                    Ok(()) => gone.push(key),
                    Err((object, e)) => {
                        swept.failed += 1;
                        tracing::warn!(object, error = e, "cannot delete a removed file's object; will retry");
                    }
                }
            }
            swept.deleted += gone.len();
            if !gone.is_empty() {
                transact!(self.store, |tx| {
                    for key in &gone {
                        tx.clear(key)?;
                    }
                })?;
            }
            if seen < PAGE || gone.is_empty() {
                // The end, or the object store is failing: no use hammering it this round.
                break;
            }
        }
        Ok(())
    }
}

impl Sweeper {
    /// Deletes the object of a `(files, gc, due, W, F, object_key)` entry; answers the entry.
    async fn delete_entry(&self, entry: Vec<u8>) -> (Vec<u8>, Result<(), (String, String)>) {
        match tuple::unpack(&entry).ok().and_then(|parts| parts.get(5)?.as_str().map(str::to_string)) {
            Some(object) => {
                let deleted = self.objects.delete(&object).await.map_err(|e| (object, e.to_string()));
                (entry, deleted)
            }
            // Not an entry this version writes: cleared, so that it does not stay forever.
            None => (entry, Ok(())),
        }
    }
}

/// The workspace and file of a `(files, pending, created_at, W, F)` key.
fn pending_parts(key: &[u8]) -> Option<(WorkspaceId, String)> {
    let parts = tuple::unpack(key).ok()?;
    let w = WorkspaceId::parse(parts.get(3)?.as_str()?)?;
    Some((w, parts.get(4)?.as_str()?.to_string()))
}
