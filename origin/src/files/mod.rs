//! Files: uploads and downloads through presigned URLs, access following the conversation
//! a file was shared in (ARCHITECTURE §8 "Files").
//!
//! File bytes never pass through the origin. A client declares a file (`create`): the origin
//! writes a pending record, counts its size against the workspace's quota and hands out a URL
//! that uploads exactly that many bytes of that type to one fresh object key
//! (`ws/{W}/{random}/{name}`, module `objects`). Once uploaded, the uploader `complete`s it
//! into a channel: the origin checks the object (`HEAD`: there, with the declared length and
//! type; otherwise it is deleted and the file fails), marks the file ready and shared there,
//! and posts a message carrying it through the sequencer — so it gets a `seq`, is acknowledged
//! after its commit, and a retry with the same `client_msg_id` answers the same message. From
//! then on who may read the file is who may see that message: the channel's visibility rule
//! (`channels`), and nobody once the message or the file is deleted. Everyone else gets `404`,
//! exactly like an id that does not exist.
//!
//! Records: `(ws, W, file, F)` (module `records`), `(ws, W, chfile, C, seq, F)` listing a
//! channel's files, and `(ws, W, filebytes)`, the quota's counter, moved by atomic adds and
//! read only when a new file is declared.
//!
//! **Thumbnails** of raster images are made in the background by a feed consumer (module
//! `thumbs`) and reach clients as a `message_changed` that fills in the message's
//! `files[i].thumbs`; their download URLs are signed for whoever may read the file.
//!
//! **Removing objects.** Every object that must go — a deleted, failed or expired file's bytes
//! and thumbnails — is first written to the store as a due `(files, gc, …)` entry, in the
//! transaction that takes the file away, so it is never forgotten. Deleting a file or its
//! message still deletes the objects before answering, as the only way to end the presigned
//! URLs already handed out at once; what fails there, or must wait until an upload URL has
//! expired, is left to the sweeper (module `sweeper`), which also expires uploads never
//! completed (indexed by `(files, pending, …)`) after `files.pending_ttl_secs`.

mod objects;
pub(crate) mod records;
mod sweeper;
mod thumbs;

use std::{sync::Arc, time::Duration};

use selvage_shared::{ChannelId, Message, Seq, Thumb, WorkspaceId};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::objects::{ObjectError, Objects, Presigned};
pub use self::thumbs::NAME as THUMBS_CONSUMER;
use self::{
    objects::Download,
    records::{FileRecord, FileState},
};
use crate::{
    caller::Caller,
    channels,
    config::{ConsumersConfig, FilesConfig},
    error::{OriginError, Result},
    feed::{
        consumer::{ConsumerError, ConsumerOptions, ConsumerRunner},
        le_i64, Feed,
    },
    ids,
    messages::{
        records as messages,
        sequencer::{SendRequest, Sent, Sequencer},
    },
    metrics::Metrics,
    store::{keys, KvTxn, RangeRead, Store, StoreError},
    transact,
};

/// Longest a request waits for the objects of a file it took away to be deleted; the sweeper
/// finishes what is left.
const PURGE_WAIT: Duration = Duration::from_secs(5);

/// Largest page of a channel's files.
pub const MAX_PAGE: usize = 1000;

/// What a client is told when files are off.
pub const DISABLED: &str = "files are not enabled on this origin";

/// The files service of one origin: its configuration and its object store.
pub struct Files {
    config: FilesConfig,
    objects: Objects,
    metrics: Arc<Metrics>,
}

/// Why the files service could not start.
#[derive(Debug, thiserror::Error)]
#[error("files.bucket {bucket:?} is not reachable at {endpoint}: {source}")]
pub struct StartError {
    bucket: String,
    endpoint: String,
    source: ObjectError,
}

/// A new file and where to upload it.
pub struct Created {
    /// The pending file.
    pub file: Value,
    /// Its upload URL.
    pub upload: Presigned,
}

/// A completed file and the message that shares it.
pub struct Completed {
    /// The file, now ready.
    pub file: Value,
    /// The message, as the sequencer answered it.
    pub sent: Sent,
}

/// What `complete` asks for besides the file.
pub struct Share {
    /// The channel to share the file in.
    pub channel: ChannelId,
    /// The uploader's idempotency key for the message.
    pub client_msg_id: String,
    /// The message's text (may be empty).
    pub text: String,
    /// The thread to reply in, if any.
    pub thread_root: Option<Seq>,
}

/// A file a caller may read, with its download URLs.
pub struct Readable {
    /// The file.
    pub file: Value,
    /// Its download URL.
    pub download: Presigned,
    /// Each of its thumbnails, smallest first, with its download URL.
    pub thumbs: Vec<(Thumb, Presigned)>,
}

/// A page of a channel's files.
pub struct Page {
    /// Newest first.
    pub files: Vec<Value>,
    /// Whether older ones remain.
    pub has_more: bool,
}

/// The 404 of a file: missing, deleted, or not the caller's to see — the same answer.
fn no_file(id: &str) -> OriginError {
    OriginError::NotFound(format!("file {id} not found"))
}

/// How the object store's failures reach a client: retry later; the detail goes to the log.
fn unavailable(e: ObjectError) -> OriginError {
    OriginError::Unavailable(e.to_string())
}

impl Files {
    /// Connects to the object store and checks that the bucket answers; an origin with files
    /// enabled does not start without it.
    pub async fn start(config: &FilesConfig, metrics: Arc<Metrics>) -> Result<Files, StartError> {
        let objects = Objects::connect(config, metrics.clone()).await;
        objects.check_bucket().await.map_err(|source| StartError {
            bucket: config.bucket.clone(),
            endpoint: config.endpoint.clone().unwrap_or_else(|| format!("AWS S3 ({})", config.region)),
            source,
        })?;
        tracing::info!(bucket = config.bucket, endpoint = ?config.endpoint, "files: object store reachable");
        Ok(Files { config: config.clone(), objects, metrics })
    }

    /// Whether the bucket answers now, for `/readyz`.
    pub async fn ready(&self) -> Result<(), ObjectError> {
        self.objects.check_bucket().await
    }

    /// Declares a file: a pending record counted against the workspace's quota, and a URL
    /// that uploads exactly `size` bytes of `content_type`.
    pub async fn create(
        &self,
        store: &Store,
        caller: &Caller,
        name: &str,
        size: u64,
        content_type: &str,
    ) -> Result<Created> {
        if size > self.config.max_bytes {
            return Err(OriginError::TooLarge(format!(
                "size is over this origin's limit of {} bytes per file",
                self.config.max_bytes
            )));
        }
        records::validate_content_type(content_type)?;
        let w = &caller.workspace;
        let name = records::sanitise_name(name);
        let id = ids::new_id('F');
        // 128 random bits: the key cannot be guessed from the file id or anything else.
        let object_key = format!("ws/{w}/{}/{name}", hex::encode(rand::random::<[u8; 16]>()));
        // Signing is local; done first, so a record is only written for a URL handed out.
        let upload = self.objects.presign_put(&object_key, size, content_type).await.map_err(unavailable)?;
        let file = FileRecord {
            id,
            name,
            size,
            content_type: content_type.to_string(),
            object_key,
            uploader: caller.user.id.clone(),
            created_at: crate::now_ms(),
            state: FileState::Pending,
            channel: None,
            client_msg_id: None,
            seq: None,
            thumbs: Vec::new(),
            no_thumbs: None,
        };
        let quota = self.config.workspace_quota_bytes;
        let (within, _) = transact!(store, |tx| {
            // Read, so concurrent declarations conflict and the sum never passes the quota;
            // moved by an atomic add, so completes and deletes never conflict with it.
            let used = tx.get(&keys::file_bytes(w)).await?.as_deref().map_or(0, le_i64).max(0) as u64;
            if used.saturating_add(size) > quota {
                false
            } else {
                tx.atomic_add(&keys::file_bytes(w), size as i64)?;
                records::write(tx, w, &file)?;
                // Until it leaves `pending`, the sweeper's to expire.
                tx.set(&keys::file_pending(file.created_at, w, &file.id), &[])?;
                true
            }
        })?;
        if !within {
            return Err(OriginError::Forbidden(format!(
                "the workspace's file storage quota ({quota} bytes) would be exceeded; delete files first"
            )));
        }
        self.metrics.files.with_label_values(&["declared"]).inc();
        tracing::debug!(file.id = file.id, ws.id = %w, size, "file declared");
        Ok(Created { file: file.view(), upload })
    }

    /// Checks an uploaded file and shares it in a channel with a message (see the module's
    /// documentation). Completing again with the same channel and `client_msg_id` is a retry:
    /// it answers the same message.
    pub async fn complete(
        &self,
        store: &Store,
        sequencer: &Sequencer,
        caller: &Caller,
        id: &str,
        share: Share,
    ) -> Result<Completed> {
        let w = &caller.workspace;
        let c = &share.channel;
        if share.client_msg_id.is_empty() || share.client_msg_id.len() > selvage_shared::MAX_CLIENT_MSG_ID_BYTES {
            return Err(OriginError::BadRequest(format!(
                "client_msg_id must be 1 to {} bytes",
                selvage_shared::MAX_CLIENT_MSG_ID_BYTES
            )));
        }
        if !share.text.is_empty() {
            messages::validate_text(&share.text)?;
        }
        let file = self.load_own(store, caller, id).await?;
        // Same checks as posting, before the object store is asked anything (the sequencer
        // checks again in its commit).
        let (gate, _) = transact!(store, |tx| {
            match channels::records::visible_channel(tx, caller, c).await? {
                None => Err(OriginError::no_channel(c.as_str())),
                Some((_, false)) => Err(OriginError::NotMember(format!("join {c} before posting in it"))),
                Some((channel, true)) if channel.archived => {
                    Err(OriginError::Archived(format!("channel {c} is archived")))
                }
                Some(_) => Ok(()),
            }
        })?;
        gate?;
        match file.state {
            FileState::Pending => self.check_upload(store, w, &file).await?,
            FileState::Ready => {}
            FileState::Failed => {
                return Err(OriginError::BadRequest(format!(
                    "file {id} failed its upload check and was removed; declare it again"
                )))
            }
            FileState::Deleted | FileState::Expired => return Err(no_file(id)),
        }
        // Claim the file for this channel and message, or find it claimed by this very retry.
        let (claim, _) = transact!(store, |tx| {
            match records::load(tx, w, id).await? {
                Some(f) if f.state == FileState::Ready => match (&f.channel, &f.client_msg_id) {
                    (None, _) => {
                        let claimed = FileRecord {
                            channel: Some(c.clone()),
                            client_msg_id: Some(share.client_msg_id.clone()),
                            ..f
                        };
                        records::write(tx, w, &claimed)?;
                        Ok(claimed)
                    }
                    (Some(held), Some(msg)) if held == c && *msg == share.client_msg_id => Ok(f),
                    _ => Err(OriginError::Conflict(format!(
                        "file {id} is already shared with another message; upload it again to share it twice"
                    ))),
                },
                _ => Err(no_file(id)),
            }
        })?;
        let file = claim?;
        let request = SendRequest {
            workspace: w.clone(),
            channel: c.clone(),
            user: caller.user.id.clone(),
            text: share.text,
            client_msg_id: share.client_msg_id,
            thread_root: share.thread_root,
            files: vec![file.to_ref()],
        };
        let sent = match sequencer.send(request).await {
            Ok(sent) if sent.message.files.iter().any(|f| f.id == file.id) => sent,
            Ok(sent) => {
                // The client_msg_id was already this sender's for another message of the channel.
                self.unclaim(store, w, id).await?;
                return Err(OriginError::Conflict(format!(
                    "client_msg_id {:?} was already used for a different message in this channel (id reused with \
                     different content)",
                    sent.message.client_msg_id
                )));
            }
            Err(e) => {
                // A refusal wrote nothing: the file may be shared elsewhere. After `unavailable`
                // or `overloaded` the message may yet commit, so the claim stays for the retry.
                if !matches!(e, OriginError::Unavailable(_) | OriginError::Overloaded(_) | OriginError::Store(_)) {
                    self.unclaim(store, w, id).await?;
                }
                return Err(e);
            }
        };
        // The sequencer recorded the share in the message's own transaction; a message
        // committed before it did (an older version, answered again as a duplicate) is
        // recorded here.
        let seq = sent.message.seq;
        let (file, _) = transact!(store, |tx| {
            match records::load(tx, w, id).await? {
                Some(f) if f.state == FileState::Ready && f.seq.is_none() => {
                    let shared = FileRecord { seq: Some(seq), ..f };
                    records::write(tx, w, &shared)?;
                    tx.set(&keys::channel_file(w, c, seq, id), id.as_bytes())?;
                    Some(shared)
                }
                other => other,
            }
        })?;
        let file = file.ok_or_else(|| no_file(id))?;
        tracing::debug!(file.id = id, ws.id = %w, channel.id = %c, seq, "file shared");
        Ok(Completed { file: file.view(), sent })
    }

    /// Takes back a claim whose message was refused, so the file can be shared again.
    async fn unclaim(&self, store: &Store, w: &WorkspaceId, id: &str) -> Result<()> {
        transact!(store, |tx| {
            if let Some(f) = records::load(tx, w, id).await?.filter(|f| f.state == FileState::Ready && f.seq.is_none())
            {
                records::write(tx, w, &FileRecord { channel: None, client_msg_id: None, ..f })?;
            }
        })?;
        Ok(())
    }

    /// The caller's own file, for completing: anyone else's answers 404 — or 403 when they can
    /// see it (it is shared where they can read it).
    async fn load_own(&self, store: &Store, caller: &Caller, id: &str) -> Result<FileRecord> {
        let file = load(store, caller, id).await?;
        match file {
            Some(f) if f.uploader == caller.user.id => Ok(f),
            Some(f) => match self.visible(store, caller, f).await? {
                Some(_) => Err(OriginError::Forbidden("only the file's uploader may share it".into())),
                None => Err(no_file(id)),
            },
            None => Err(no_file(id)),
        }
    }

    /// Checks a pending file's object against its declaration and marks the file ready; an
    /// object that differs is deleted and the file fails (its bytes leave the quota).
    async fn check_upload(&self, store: &Store, w: &WorkspaceId, file: &FileRecord) -> Result<()> {
        let head = self.objects.head(&file.object_key).await.map_err(unavailable)?;
        let Some(head) = head else {
            // Nothing yet: the upload may still be under way, so the file stays pending.
            return Err(OriginError::BadRequest(format!(
                "nothing has been uploaded for file {} yet; upload it with the URL from POST /v1/files first",
                file.id
            )));
        };
        let type_ok = head.content_type.as_deref() == Some(file.content_type.as_str());
        if head.size == file.size && type_ok {
            let (readied, _) = transact!(store, |tx| {
                match records::load(tx, w, &file.id).await?.filter(|f| f.state == FileState::Pending) {
                    Some(f) => {
                        tx.clear(&keys::file_pending(f.created_at, w, &f.id))?;
                        records::write(tx, w, &FileRecord { state: FileState::Ready, ..f })?;
                        true
                    }
                    None => false,
                }
            })?;
            if readied {
                self.metrics.files.with_label_values(&["completed"]).inc();
                self.metrics.file_bytes_completed.inc_by(file.size);
            }
            return Ok(());
        }
        if let Some(released) = self.release(store, w, &file.id, FileState::Failed).await? {
            self.purge(store, w, &released).await;
        }
        Err(OriginError::BadRequest(format!(
            "the uploaded object ({} bytes, type {}) is not what was declared ({} bytes, type {}); it was removed: \
             declare the file again",
            head.size,
            head.content_type.as_deref().unwrap_or("none"),
            file.size,
            file.content_type
        )))
    }

    /// Moves a live file to `state` (failed or deleted) and queues its objects for deletion
    /// (see [`release_in`]). `None` when it was not live.
    async fn release(&self, store: &Store, w: &WorkspaceId, id: &str, state: FileState) -> Result<Option<Released>> {
        let upload_url_ms = self.config.upload_url_secs.saturating_mul(1000) as i64;
        let (released, _) = transact!(store, |tx| {
            match records::load(tx, w, id).await? {
                Some(f) => release_in(tx, w, f, state, crate::now_ms(), upload_url_ms)?,
                None => None,
            }
        })?;
        if released.is_some() {
            self.metrics.files.with_label_values(&[state.label()]).inc();
        }
        Ok(released)
    }

    /// Deletes the objects a release queued, now, so that the download URLs already handed
    /// out stop working; clears the entries of those deleted. What fails, or what an upload URL
    /// could still write, stays queued for the sweeper.
    async fn purge(&self, store: &Store, w: &WorkspaceId, released: &Released) {
        let attempts = released.gc.iter().map(|(due, key)| async move { (due, key, self.objects.delete(key).await) });
        let Ok(results) = tokio::time::timeout(PURGE_WAIT, futures::future::join_all(attempts)).await else {
            tracing::warn!(file.id = released.file.id, ws.id = %w, "deleting a file's objects is slow; the sweeper finishes it");
            return;
        };
        let now = crate::now_ms();
        let mut done = Vec::new();
        for (due, key, result) in results {
            match result {
                Ok(()) if *due <= now => done.push(keys::file_gc(*due, w, &released.file.id, key)),
                Ok(()) => {}
                Err(e) => tracing::warn!(
                    file.id = released.file.id, ws.id = %w, object = key, error = %e,
                    "cannot delete a removed file's object yet; the sweeper retries"
                ),
            }
        }
        if done.is_empty() {
            return;
        }
        let cleared = transact!(store, |tx| {
            for key in &done {
                tx.clear(key)?;
            }
        });
        if let Err(e) = cleared {
            tracing::warn!(file.id = released.file.id, error = %e, "cannot clear deleted objects' entries; the sweeper does");
        }
    }

    /// Starts the files service's background work beside the origin: the thumbnail worker (a
    /// feed consumer, when `files.thumbs`) and the sweeper. Each stops on `shutdown`.
    pub fn start_background(
        &self,
        store: &Store,
        feed: &Arc<Feed>,
        consumers: &ConsumersConfig,
        shutdown: &CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, ConsumerError> {
        let mut tasks = Vec::new();
        if self.config.thumbs {
            let worker = thumbs::Thumbnailer::new(store.clone(), self.objects.clone(), &self.config, &self.metrics);
            let runner = ConsumerRunner::new(feed.clone(), Arc::new(worker), ConsumerOptions::from_config(consumers))?;
            tasks.push(runner.spawn(shutdown.clone()));
        }
        let sweeper = sweeper::Sweeper::new(store.clone(), self.objects.clone(), &self.config, &self.metrics);
        tasks.push(tokio::spawn(sweeper.run(shutdown.clone())));
        Ok(tasks)
    }

    /// The file if the caller may read it: the uploader while it is not yet shared; once shared,
    /// whoever may see the message carrying it, while that message and the file stand.
    async fn visible(&self, store: &Store, caller: &Caller, file: FileRecord) -> Result<Option<FileRecord>> {
        let w = &caller.workspace;
        let (visible, _) = transact!(store, |tx| {
            match (&file.state, &file.channel, file.seq) {
                (FileState::Pending | FileState::Ready, _, None) => file.uploader == caller.user.id,
                (FileState::Ready, Some(c), Some(seq)) => {
                    channels::records::visible_channel(tx, caller, c).await?.is_some()
                        && carries(messages::load(tx, w, c, seq).await?.as_ref(), &file.id)
                }
                _ => false,
            }
        })?;
        Ok(visible.then_some(file))
    }

    /// A file the caller may read, or 404.
    async fn readable(&self, store: &Store, caller: &Caller, id: &str) -> Result<FileRecord> {
        let file = load(store, caller, id).await?;
        let Some(file) = file else { return Err(no_file(id)) };
        self.visible(store, caller, file).await?.ok_or_else(|| no_file(id))
    }

    /// A file's metadata and short-lived download URLs — of the file and of each thumbnail —
    /// for whoever may read it. Raster images may be shown inline; everything else downloads
    /// as an attachment.
    pub async fn get(&self, store: &Store, caller: &Caller, id: &str) -> Result<Readable> {
        let file = self.readable(store, caller, id).await?;
        let inline = records::is_inline_image(&file.content_type);
        let disposition = records::content_disposition(inline, &file.name);
        let download = Download { content_type: &file.content_type, disposition: &disposition };
        let url = self.objects.presign_get(&file.object_key, download).await.map_err(unavailable)?;
        let mut thumbs = Vec::with_capacity(file.thumbs.len());
        for (thumb, record) in file.thumb_refs().into_iter().zip(&file.thumbs) {
            thumbs.push((thumb, self.presign_thumb(&file, record).await?));
        }
        Ok(Readable { file: file.view(), download: url, thumbs })
    }

    /// A short-lived download URL of the file's thumbnail of `size`, for whoever may read the
    /// file; `404` when it has none of that size.
    pub async fn thumb(&self, store: &Store, caller: &Caller, id: &str, size: u32) -> Result<Presigned> {
        let file = self.readable(store, caller, id).await?;
        let Some(record) = file.thumbs.iter().find(|t| t.size == size) else {
            return Err(OriginError::NotFound(format!("file {id} has no thumbnail of size {size}")));
        };
        self.presign_thumb(&file, record).await
    }

    async fn presign_thumb(&self, file: &FileRecord, thumb: &records::ThumbRecord) -> Result<Presigned> {
        let extension = if thumb.content_type == "image/png" { "png" } else { "jpg" };
        let stem = file.name.rsplit_once('.').map_or(file.name.as_str(), |(stem, _)| stem);
        let disposition = records::content_disposition(true, &format!("{stem}-{}.{extension}", thumb.size));
        let answer = Download { content_type: &thumb.content_type, disposition: &disposition };
        let key = records::thumb_key(&file.object_key, thumb.size);
        self.objects.presign_get(&key, answer).await.map_err(unavailable)
    }

    /// A page of the files shared in a channel the caller may see, newest first; `before` a
    /// `seq` pages back.
    pub async fn list(
        &self,
        store: &Store,
        caller: &Caller,
        c: &ChannelId,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<Page> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(OriginError::BadRequest(format!("limit must be between 1 and {MAX_PAGE}")));
        }
        let w = &caller.workspace;
        let prefix = keys::channel_files(w, c);
        let (begin, all_end) = crate::store::prefix_range(&prefix);
        let end = match before {
            Some(seq) => keys::channel_files_at(w, c, seq),
            None => all_end,
        };
        let (page, _) = transact!(store, |tx| {
            if channels::records::visible_channel(tx, caller, c).await?.is_none() {
                None
            } else {
                let rows = if begin < end {
                    tx.get_range(&RangeRead::between(begin.clone(), end.clone()).limit(limit + 1).reverse(true)).await?
                } else {
                    Vec::new()
                };
                let has_more = rows.len() > limit;
                let mut files = Vec::with_capacity(rows.len().min(limit));
                for (_, id) in rows.iter().take(limit) {
                    let id = String::from_utf8_lossy(id);
                    let Some(file) = records::load(tx, w, &id).await? else { continue };
                    let Some(seq) = file.seq else { continue };
                    // A deleted message takes its files out of sight at once.
                    if file.state == FileState::Ready
                        && carries(messages::load(tx, w, c, seq).await?.as_ref(), &file.id)
                    {
                        files.push(file.view());
                    }
                }
                Some(Page { files, has_more })
            }
        })?;
        page.ok_or_else(|| OriginError::no_channel(c.as_str()))
    }

    /// Deletes a file: its uploader or a workspace admin, among those who may read it. Access
    /// ends with the commit; its objects are then deleted before answering (those that cannot
    /// be yet stay queued for the sweeper).
    pub async fn delete(&self, store: &Store, caller: &Caller, id: &str) -> Result<Value> {
        let file = self.readable(store, caller, id).await?;
        if file.uploader != caller.user.id && !caller.user.admin {
            return Err(OriginError::Forbidden("only the file's uploader or a workspace admin may delete it".into()));
        }
        let w = &caller.workspace;
        let Some(released) = self.release(store, w, id, FileState::Deleted).await? else { return Err(no_file(id)) };
        self.purge(store, w, &released).await;
        Ok(FileRecord { state: FileState::Deleted, ..released.file }.view())
    }
}

impl Files {
    /// After message `seq` of `c` was deleted: its files are deleted with it — marked deleted,
    /// out of the quota and of the channel's list, their objects removed (queued, then deleted
    /// as [`Files::delete`] does). Access already ended with the message's tombstone; running
    /// this again finds nothing left to do.
    pub async fn message_deleted(&self, store: &Store, w: &WorkspaceId, c: &ChannelId, seq: Seq) -> Result<()> {
        let prefix = keys::channel_files_at(w, c, seq);
        let (ids, _) = transact!(store, |tx| {
            let rows = tx.get_range(&RangeRead::prefix(&prefix)).await?;
            rows.into_iter().map(|(_, id)| String::from_utf8_lossy(&id).into_owned()).collect::<Vec<_>>()
        })?;
        for id in ids {
            if let Some(released) = self.release(store, w, &id, FileState::Deleted).await? {
                self.purge(store, w, &released).await;
            }
        }
        Ok(())
    }
}

/// A file taken away, and its objects queued for deletion: `(due, object key)`.
struct Released {
    /// The record as it was.
    file: FileRecord,
    /// The `(files, gc, …)` entries written.
    gc: Vec<(i64, String)>,
}

/// Moves `file`, if live (pending or ready), to `state` (failed, deleted or expired) in `tx`:
/// its bytes leave the quota, it leaves its channel's list and the sweeper's pending index, and
/// its objects — its bytes and the thumbnails recorded — are queued for deletion, due now, or
/// for a pending file once its upload URL has expired (an upload through it would otherwise
/// write the object again after it was deleted). `None`, writing nothing, when not live.
fn release_in(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    file: FileRecord,
    state: FileState,
    now: i64,
    upload_url_ms: i64,
) -> Result<Option<Released>, StoreError> {
    if !matches!(file.state, FileState::Pending | FileState::Ready) {
        return Ok(None);
    }
    let id = &file.id;
    tx.atomic_add(&keys::file_bytes(w), -(file.size as i64))?;
    if let (Some(c), Some(seq)) = (&file.channel, file.seq) {
        tx.clear(&keys::channel_file(w, c, seq, id))?;
    }
    let due = match file.state {
        FileState::Pending => {
            tx.clear(&keys::file_pending(file.created_at, w, id))?;
            // A second past the URL's end, for the object store's clock.
            now.max(file.created_at.saturating_add(upload_url_ms).saturating_add(1000))
        }
        _ => now,
    };
    let mut gc = Vec::new();
    for key in file.object_keys(file.thumbs.iter().map(|t| t.size)) {
        tx.set(&keys::file_gc(due, w, id, &key), &[])?;
        gc.push((due, key));
    }
    records::write(tx, w, &FileRecord { state, ..file.clone() })?;
    Ok(Some(Released { file, gc }))
}

/// Whether `message` stands and carries file `id`.
fn carries(message: Option<&Message>, id: &str) -> bool {
    message.is_some_and(|m| !m.deleted && m.files.iter().any(|f| f.id == id))
}

/// The file `id` of the caller's workspace, if the id is well formed and the file exists.
async fn load(store: &Store, caller: &Caller, id: &str) -> Result<Option<FileRecord>> {
    if !records::is_file_id(id) {
        return Ok(None);
    }
    let (file, _) = transact!(store, |tx| { records::load(tx, &caller.workspace, id).await? })?;
    Ok(file)
}
