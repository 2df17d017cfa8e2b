//! The thumbnail worker: the feed consumer `files-thumbs` (ARCHITECTURE §8 "Files").
//!
//! On each `message` event that carries raster images (PNG, JPEG, GIF, WebP), for each image:
//!
//! 1. **deliver** (outside the store, at least once): reads the file's record; fetches its
//!    object, refusing one over `files.thumb_max_source_bytes` before reading it; decodes it
//!    within the limits and makes the thumbnails (module `render`, on `spawn_blocking`, at most
//!    `files.thumb_concurrency` images at once, so memory stays bounded); uploads
//!    each under its deterministic key ([`records::thumb_key`]). Delivered again after a crash,
//!    it makes the same bytes under the same keys: the repeat overwrites, nothing piles up.
//! 2. **apply** (in the transaction that moves the cursor, exactly once): records the
//!    thumbnails on the file, fills in `files[i].thumbs` of the message and logs a
//!    `message_changed` with the message as it now reads — so edges, long-polls and history
//!    show them like any other change to a message, to exactly those who may see it.
//!
//! An image that cannot get thumbnails — over a limit, a decompression bomb, broken, not an
//! image at all — is logged and marked on its record (`thumbnail: "none"`), and the worker goes
//! on: such a refusal is final, never retried. What may pass (the object store or the store
//! failing) fails the batch, which the runner retries after a backoff; what was made before the
//! failure is kept in memory for the retry rather than made again.
//!
//! A file deleted meanwhile gets no thumbnails; whatever an earlier delivery uploaded for it is
//! handed to the sweeper (module `sweeper`) to delete. The first start of the consumer begins at
//! the oldest event the feed still keeps, so images shared before it ran get thumbnails too.

mod render;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use selvage_shared::{Event, WorkspaceId};

use self::render::{Limits, Refusal};
use super::{
    objects::{Fetched, Objects},
    records::{self, FileRecord, FileState, ThumbRecord},
};
use crate::{
    config::FilesConfig,
    feed::{
        consumer::{Batch, Consumer, ConsumerError, StartFrom},
        Appender,
    },
    messages::records as messages,
    metrics::Metrics,
    store::{keys, KvTxn, Store},
    transact,
};

/// The consumer's name: the key of its cursor and lease. Never renamed.
pub const NAME: &str = "files-thumbs";

/// What became of one image.
#[derive(Clone, Debug)]
enum Outcome {
    /// Thumbnails uploaded.
    Made(Vec<ThumbRecord>),
    /// None will ever be made, and why.
    Refused(String),
    /// The file is no longer there to have thumbnails (deleted, or its object gone).
    Gone,
}

/// One image to make thumbnails of.
struct Job {
    workspace: WorkspaceId,
    file: String,
}

/// The thumbnail worker (see the module's documentation).
pub struct Thumbnailer {
    store: Store,
    objects: Objects,
    metrics: Arc<Metrics>,
    sizes: Vec<u32>,
    limits: Limits,
    max_source_bytes: u64,
    /// Images fetched and decoded at once (one runner per node delivers at a time).
    concurrency: usize,
    /// What the current batch's delivery made, by file id, for its `apply` (and for a retry of
    /// the batch, which then skips what is done).
    outcomes: Mutex<HashMap<String, Outcome>>,
}

impl Thumbnailer {
    /// A worker writing to `objects`, configured by `[files]`.
    pub fn new(store: Store, objects: Objects, config: &FilesConfig, metrics: &Arc<Metrics>) -> Thumbnailer {
        let concurrency = config.thumb_concurrency.max(1);
        Thumbnailer {
            store,
            objects,
            metrics: metrics.clone(),
            sizes: config.thumb_sizes.clone(),
            limits: Limits {
                max_side: config.thumb_max_side_px,
                max_pixels: config.thumb_max_pixels,
                max_alloc: config.thumb_max_alloc_bytes,
            },
            max_source_bytes: config.thumb_max_source_bytes,
            concurrency,
            outcomes: Mutex::new(HashMap::new()),
        }
    }

    /// The images of a batch that still need thumbnails.
    fn jobs(batch: &Batch) -> Vec<Job> {
        let mut jobs = Vec::new();
        for item in &batch.items {
            if let Event::Message(m) = &item.event.event {
                for f in m.files.iter().filter(|f| f.thumbs.is_empty() && records::is_inline_image(&f.content_type)) {
                    jobs.push(Job { workspace: item.event.workspace.clone(), file: f.id.clone() });
                }
            }
        }
        jobs
    }

    /// [`Thumbnailer::make`], answering the file's id with the outcome.
    async fn make_one(&self, job: Job) -> Result<(String, Outcome), ConsumerError> {
        let outcome = self.make(&job).await?;
        Ok((job.file, outcome))
    }

    /// Makes and uploads one image's thumbnails. `Err` only for what may pass (the stores).
    async fn make(&self, job: &Job) -> Result<Outcome, ConsumerError> {
        let (w, id) = (&job.workspace, job.file.as_str());
        let (file, _) = transact!(self.store, |tx| { records::load(tx, w, id).await? })?;
        let Some(file) = file.filter(|f| f.state == FileState::Ready) else { return Ok(self.gone()) };
        if !file.thumbs.is_empty() {
            return Ok(Outcome::Made(file.thumbs));
        }
        if let Some(why) = file.no_thumbs {
            return Ok(Outcome::Refused(why));
        }
        if file.size > self.max_source_bytes {
            return Ok(self.refused(&file, w, format!("{} bytes, over files.thumb_max_source_bytes", file.size)));
        }
        let started = Instant::now();
        let bytes = match self.objects.get(&file.object_key, self.max_source_bytes).await {
            Ok(Fetched::Bytes(bytes)) => bytes,
            Ok(Fetched::Missing) => return Ok(self.gone()),
            Ok(Fetched::TooLarge(n)) => {
                return Ok(self.refused(&file, w, format!("{n} bytes, over files.thumb_max_source_bytes")))
            }
            Err(e) => return Err(ConsumerError::handler(format!("reading file {id}: {e}"))),
        };
        let (sizes, limits) = (self.sizes.clone(), self.limits);
        let rendered = tokio::task::spawn_blocking(move || render::render(&bytes, &sizes, &limits)).await;
        let renditions = match rendered {
            Ok(Ok(renditions)) => renditions,
            Ok(Err(refusal)) => return Ok(self.refused(&file, w, refusal.to_string())),
            // A decoder that panics on these bytes would panic again: as final as a refusal.
            Err(e) if e.is_panic() => {
                return Ok(self.refused(&file, w, Refusal::Decode("the decoder panicked".into()).to_string()))
            }
            Err(e) => return Err(ConsumerError::handler(e)),
        };
        let mut thumbs = Vec::with_capacity(renditions.len());
        for r in renditions {
            let key = records::thumb_key(&file.object_key, r.size);
            self.objects
                .put(&key, r.bytes, r.content_type)
                .await
                .map_err(|e| ConsumerError::handler(format!("writing a thumbnail of file {id}: {e}")))?;
            thumbs.push(ThumbRecord {
                size: r.size,
                width: r.width,
                height: r.height,
                content_type: r.content_type.into(),
            });
        }
        self.metrics.thumbnails.with_label_values(&["made"]).inc();
        self.metrics.thumbnail_seconds.observe(started.elapsed().as_secs_f64());
        tracing::info!(
            file.id = id,
            ws.id = %w,
            thumbs = ?thumbs.iter().map(|t| (t.size, t.width, t.height)).collect::<Vec<_>>(),
            ms = started.elapsed().as_millis() as u64,
            "thumbnails made"
        );
        Ok(Outcome::Made(thumbs))
    }

    /// The file is gone: nothing to make.
    fn gone(&self) -> Outcome {
        self.metrics.thumbnails.with_label_values(&["gone"]).inc();
        Outcome::Gone
    }

    fn refused(&self, file: &FileRecord, w: &WorkspaceId, why: String) -> Outcome {
        self.metrics.thumbnails.with_label_values(&["refused"]).inc();
        tracing::warn!(file.id = file.id, ws.id = %w, size = file.size, reason = why, "no thumbnails for this image");
        Outcome::Refused(why)
    }
}

#[async_trait]
impl Consumer for Thumbnailer {
    fn name(&self) -> &str {
        NAME
    }

    fn start_from(&self) -> StartFrom {
        StartFrom::Oldest
    }

    async fn deliver(&self, batch: &Batch) -> Result<(), ConsumerError> {
        let jobs = Self::jobs(batch);
        let todo: Vec<Job> = {
            let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
            // Outcomes of an earlier batch are done with; this batch's (from a failed attempt)
            // are kept.
            outcomes.retain(|id, _| jobs.iter().any(|j| j.file == *id));
            jobs.into_iter().filter(|j| !outcomes.contains_key(&j.file)).collect()
        };
        // Collected first: a stream's closure borrowing `self` is not `Send` for every lifetime.
        let makes: Vec<_> = todo.into_iter().map(|job| self.make_one(job)).collect();
        let mut made = futures::stream::iter(makes).buffer_unordered(self.concurrency);
        while let Some((file, outcome)) = made.try_next().await? {
            self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).insert(file, outcome);
        }
        Ok(())
    }

    async fn apply(&self, tx: &mut dyn KvTxn, batch: &Batch) -> Result<(), ConsumerError> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = crate::now_ms();
        let mut log = Appender::new();
        for item in &batch.items {
            let Event::Message(m) = &item.event.event else { continue };
            let w = &item.event.workspace;
            // Loaded when the first of its files gets thumbnails; `None` inside once deleted.
            let mut message = None;
            let mut changed = false;
            for f in m.files.iter().filter(|f| f.thumbs.is_empty() && records::is_inline_image(&f.content_type)) {
                let Some(outcome) = outcomes.get(&f.id) else {
                    return Err(ConsumerError::handler(format!("file {} was not delivered; delivering again", f.id)));
                };
                let Some(mut file) = records::load(tx, w, &f.id).await? else { continue };
                match outcome {
                    Outcome::Made(thumbs) if file.state == FileState::Ready => {
                        if !file.thumbs.is_empty() {
                            continue;
                        }
                        file.thumbs = thumbs.clone();
                        records::write(tx, w, &file)?;
                        if message.is_none() {
                            message = Some(messages::load(tx, w, &m.channel, m.seq).await?.filter(|m| !m.deleted));
                        }
                        let slot = message
                            .as_mut()
                            .and_then(Option::as_mut)
                            .and_then(|m| m.files.iter_mut().find(|x| x.id == f.id));
                        if let Some(slot) = slot {
                            slot.thumbs = file.thumb_refs();
                            changed = true;
                        }
                    }
                    Outcome::Refused(why)
                        if file.state == FileState::Ready && file.thumbs.is_empty() && file.no_thumbs.is_none() =>
                    {
                        file.no_thumbs = Some(why.clone());
                        records::write(tx, w, &file)?;
                    }
                    // Deleted (or expired) while its thumbnails were being made: the sweeper
                    // deletes whatever a delivery uploaded, and the record stays as it is.
                    Outcome::Made(_) | Outcome::Gone if file.state != FileState::Ready => {
                        for size in &self.sizes {
                            let key = records::thumb_key(&file.object_key, *size);
                            tx.set(&keys::file_gc(now, w, &file.id, &key), &[])?;
                        }
                    }
                    _ => {}
                }
            }
            let Some(Some(mut message)) = message.filter(|_| changed) else { continue };
            tx.set(&keys::message(w, &m.channel, m.seq), &selvage_shared::to_msgpack(&message))?;
            messages::decorate(tx, w, &m.channel, std::slice::from_mut(&mut message)).await?;
            let event = Event::MessageChanged { channel: m.channel.clone(), seq: m.seq, message };
            log.append(tx, w, now, event)?;
        }
        log.finish(tx)?;
        Ok(())
    }
}
