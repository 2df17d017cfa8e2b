//! The operator's `GET /v1/admin/backup`: streams an online, consistent backup of the store
//! (docs/STORAGE.md, "Backup and restore"; the file format in [`crate::store::backup`]).
//!
//! The store's view is read on a blocking thread, which encodes it in pieces into a bounded
//! queue the response body drains: a slow reader slows the read, it never buffers the store in
//! memory; a reader that goes away ends it. A failure after the answer has begun (the view
//! outlived its bound, a read failed) cuts the body short without its end record, so the file
//! is refused on restore — and logged here.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
};

use super::extract::require_operator;
use crate::{
    error::{OriginError, RequestId, Result},
    store::{
        backup::{self, Written},
        BackupStart,
    },
    Origin,
};

/// Bytes of backup per piece handed to the response.
const PIECE_BYTES: usize = 256 * 1024;
/// Pieces waiting for the reader: at most about 1 MiB of backup in memory.
const QUEUED_PIECES: usize = 4;
/// The response header carrying the backup's version (also in the file's header).
const VERSION_HEADER: &str = "x-selvage-backup-version";

/// `GET /v1/admin/backup` (operator key): the backup file, streamed.
pub(super) async fn backup(State(origin): State<Arc<Origin>>, headers: HeaderMap) -> Result<Response> {
    require_operator(&origin, &headers, "backing up")?;
    let mut source = match origin.store.backup().await? {
        BackupStart::Source(source) => source,
        BackupStart::Busy => {
            return Err(OriginError::Conflict("a backup of this origin is already running; retry once it ends".into()))
        }
        BackupStart::Unsupported => {
            return Err(OriginError::NotFound(format!(
                "online backup is for the embedded store; this origin uses {}: back it up with FoundationDB's own \
                 `fdbbackup` (see docs/STORAGE.md, \"Backup and restore\")",
                origin.store.engine()
            )))
        }
    };
    let version = source.version();
    let (pieces, queue) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(QUEUED_PIECES);
    let created_ms = u64::try_from(crate::now_ms()).unwrap_or_default();
    // The request's span ends with the handler; its id goes along for the log lines.
    let id = RequestId::current().unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        let mut send = |piece: Vec<u8>| pieces.blocking_send(Ok(Bytes::from(piece))).is_ok();
        match backup::write(&mut *source, created_ms, PIECE_BYTES, &mut send) {
            Ok(Written::Whole(records)) => tracing::info!(request.id = %id, version, records, "backup sent"),
            Ok(Written::Abandoned) => tracing::warn!(request.id = %id, version, "backup abandoned by its reader"),
            Err(e) => {
                tracing::error!(request.id = %id, version, error = %e, "backup failed; its file is cut short");
                // The reader sees the body fail, not a clean end.
                let _ = pieces.blocking_send(Err(std::io::Error::other("the backup failed; see the origin's log")));
            }
        }
    });
    let body = futures::stream::unfold(queue, |mut queue| async move { queue.recv().await.map(|p| (p, queue)) });
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(VERSION_HEADER, HeaderValue::from(version));
    if let Ok(name) = HeaderValue::from_str(&format!("attachment; filename=\"selvage-{version}.backup\"")) {
        h.insert(header::CONTENT_DISPOSITION, name);
    }
    Ok(response)
}
