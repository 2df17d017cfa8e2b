//! Feed consumers: the services that follow the feed with a durable cursor of their own
//! (ARCHITECTURE §8) — file post-processing, search indexing, notifications, webhooks.
//!
//! A consumer is a name and a handler. A [`ConsumerRunner`] reads the events after the
//! consumer's cursor (`(consumer, cursor, name)` in the store) in batches, hands each batch to
//! the handler, moves the cursor, and sleeps on the feed's notifier when it has caught up. A
//! crash or a restart resumes after the durable cursor, so a consumer never misses an event.
//!
//! # Writing a consumer
//!
//! Implement [`Consumer`] and start a runner beside the origin:
//!
//! ```ignore
//! /// Posts every new message to a webhook, and counts them per channel in the store.
//! struct Hooks { http: reqwest::Client, url: String }
//!
//! #[async_trait]
//! impl Consumer for Hooks {
//!     // Never renamed: it is the key of the cursor (a new name starts afresh).
//!     fn name(&self) -> &str { "hooks" }
//!
//!     // Outside the store, at least once: the event's cursor is the idempotency key.
//!     async fn deliver(&self, batch: &Batch) -> Result<(), ConsumerError> {
//!         for item in &batch.items {
//!             if let Event::Message(m) = &item.event.event {
//!                 let sent = self.http.post(&self.url).header("webhook-id", item.key().to_string());
//!                 sent.json(m).send().await.and_then(|r| r.error_for_status()).map_err(ConsumerError::handler)?;
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     // In the store, exactly once: written with the cursor, in one transaction. (Its keys,
//!     // like every key of the origin, are built in `store::keys`.)
//!     async fn apply(&self, tx: &mut dyn KvTxn, batch: &Batch) -> Result<(), ConsumerError> {
//!         for item in &batch.items {
//!             if let Event::Message(m) = &item.event.event {
//!                 tx.atomic_add(&keys::hook_count(&item.event.workspace, &m.channel), 1)?;
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! // Beside the origin (in `start`), one runner per consumer on every node:
//! let options = ConsumerOptions::from_config(&origin.config.consumers);
//! let runner = ConsumerRunner::new(origin.feed.clone(), Arc::new(hooks), options)?;
//! let task = runner.spawn(origin.shutdown.clone());
//! ```
//!
//! Two kinds of effects, two methods:
//!
//! - **In the store** ([`Consumer::apply`]): written into the transaction that also moves the
//!   cursor, so they happen **exactly once**. `apply` may run several times for one batch (the
//!   transaction is retried on conflicts), so it must do nothing but read and write `tx`.
//! - **Outside the store** ([`Consumer::deliver`]: S3 objects, e-mail, HTTP webhooks): the
//!   runner calls `deliver`, and only once it returns `Ok` moves the cursor, in a later
//!   transaction. A crash in between delivers the batch again: **at least once**. Each event
//!   carries a stable idempotency key, [`Item::key`] (its cursor), to make the effect safe to
//!   repeat (an S3 key, an `Idempotency-Key` or webhook-id header).
//!
//! A handler that fails (`Err`) gets the same batch again after a capped exponential backoff;
//! a batch is never skipped. Each failure is logged with the consumer's name and cursor and
//! counted in `selvage_consumer_batches_failed_total`.
//!
//! **First start.** With no cursor stored yet the runner registers one: at the log's head
//! ([`StartFrom::Head`], the default: only what happens from now on) or at the oldest event
//! still kept ([`StartFrom::Oldest`]).
//!
//! **Trimming.** The trimmer keeps the events a registered consumer has not handled, up to the
//! feed's hold limits (`feed.consumer_hold_secs`, `feed.consumer_hold_events`). Past them it
//! trims anyway: the runner then logs an error, counts it in `selvage_consumer_resyncs_total`,
//! calls [`Consumer::resync`] (in the transaction that moves the cursor to the trim point) so the
//! service can rebuild what it keeps (search: a full reindex), and carries on from there. A
//! consumer that is retired for good should be [`forget`]-ed, or it holds the log back up to
//! those limits.
//!
//! **One runner at a time.** Every origin node may start the same consumer; a lease
//! (`(consumer, lease, name)`: owner and expiry) taken and renewed in transactions lets one
//! run and the others wait. The transaction that moves the cursor checks the lease and the
//! cursor, so a runner that lost its lease can move neither; what it delivered meanwhile is
//! repeated by the new holder, which at-least-once allows.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::FutureExt;
use selvage_shared::{Cursor, FeedEvent};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{cursor, le_i64, trim_point, Feed, Position, Read};
use crate::{
    config::ConsumersConfig,
    store::{self, keys, KvTxn, RangeRead, StoreError},
};

/// Longest consumer name: it is part of two keys and of every metric line.
const MAX_NAME_CHARS: usize = 64;

/// One event handed to a consumer.
#[derive(Clone, Debug)]
pub struct Item {
    /// Where the event is in the log.
    pub position: Position,
    /// The event.
    pub event: FeedEvent,
}

impl Item {
    /// The event's cursor: unique in the deployment and the same every time the event is
    /// delivered, so it is the idempotency key of an effect outside the store.
    pub fn key(&self) -> Cursor {
        cursor(&self.position)
    }
}

/// Events after a consumer's cursor, in log order.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The events. May be empty when the log only held events that do not decode.
    pub items: Vec<Item>,
    /// The cursor the batch was read after.
    pub after: Position,
    /// Where the cursor moves once the batch is handled.
    pub next: Position,
}

/// Why a consumer's handler or runner failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The store failed (a retryable failure inside [`Consumer::apply`] retries the
    /// transaction; any other retries the batch after a backoff).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The handler's own failure (S3 answered 503, a webhook timed out): the batch is retried
    /// after a backoff.
    #[error("{0}")]
    Handler(String),
    /// The consumer's name is empty, too long, or has characters other than `a-z 0-9 _ - .`.
    #[error("invalid consumer name {0:?}: 1 to 64 of a-z, 0-9, '_', '-', '.'")]
    Name(String),
}

impl ConsumerError {
    /// A handler failure from anything printable.
    pub fn handler(e: impl std::fmt::Display) -> Self {
        ConsumerError::Handler(e.to_string())
    }
}

/// Where a consumer with no stored cursor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// After the newest event: only what happens from now on.
    Head,
    /// At the oldest event the log still keeps.
    Oldest,
}

/// A service on the feed (see the module's documentation).
#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// The consumer's stable name: the key of its cursor and lease and its metrics' label.
    /// Renaming a consumer starts it afresh.
    fn name(&self) -> &str;

    /// Where to start the first time, when no cursor is stored.
    fn start_from(&self) -> StartFrom {
        StartFrom::Head
    }

    /// Performs the batch's effects outside the store, before the cursor moves: at least once.
    async fn deliver(&self, _batch: &Batch) -> Result<(), ConsumerError> {
        Ok(())
    }

    /// Writes the batch's effects in the store into `tx`, the transaction that moves the
    /// cursor: exactly once. Runs after [`Consumer::deliver`] succeeded, and again if the
    /// transaction is retried, so it must touch nothing but `tx`. An error writes nothing.
    async fn apply(&self, _tx: &mut dyn KvTxn, _batch: &Batch) -> Result<(), ConsumerError> {
        Ok(())
    }

    /// The runner read everything the feed holds and waits for more: the place to finish work
    /// held back to batch it (search commits its index here). Called each time the runner finds
    /// nothing new, so cheap when nothing is held; a failure is logged and counted like a
    /// failed batch, and the call is repeated after a backoff.
    async fn caught_up(&self) -> Result<(), ConsumerError> {
        Ok(())
    }

    /// The events after `from` up to `trim_point` were trimmed before this consumer handled
    /// them. Runs in the transaction that moves the cursor to `trim_point`; the place to mark
    /// what the service keeps for a rebuild.
    async fn resync(&self, _tx: &mut dyn KvTxn, _from: Position, _trim_point: Position) -> Result<(), ConsumerError> {
        Ok(())
    }
}

/// How a runner runs its consumer.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// Most events per batch.
    pub batch_size: usize,
    /// How long the lease lasts unless renewed; renewed every third of it.
    pub lease: Duration,
    /// First pause before a failed batch is retried; doubles on each failure.
    pub retry_min: Duration,
    /// Longest pause between retries.
    pub retry_max: Duration,
}

impl ConsumerOptions {
    /// The options of the origin's `[consumers]` configuration.
    pub fn from_config(c: &ConsumersConfig) -> Self {
        ConsumerOptions {
            batch_size: c.batch_size.max(1),
            lease: Duration::from_millis(c.lease_ms),
            retry_min: Duration::from_millis(c.retry_min_ms.max(1)),
            retry_max: Duration::from_millis(c.retry_max_ms.max(c.retry_min_ms).max(1)),
        }
    }
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self::from_config(&ConsumersConfig::default())
    }
}

/// `(consumer, lease, name)`: who runs the consumer, until when.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    owner: String,
    expires_ms: i64,
}

/// Why one step of a runner did not move the cursor.
enum StepError {
    /// Another runner holds the lease (or moved the cursor): stop and wait for it.
    Fenced(&'static str),
    /// The handler or the store failed: retry the batch after a backoff.
    Failed(ConsumerError),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Failed(ConsumerError::Store(e))
    }
}

impl From<ConsumerError> for StepError {
    fn from(e: ConsumerError) -> Self {
        StepError::Failed(e)
    }
}

/// What one step of a runner did.
enum Step {
    /// Handled a batch (or resynced); there may be more.
    Moved,
    /// Nothing after the cursor.
    CaughtUp,
    /// Shut down before the batch was delivered; the cursor did not move.
    Stopped,
}

/// What the cursor-moving transaction writes besides the cursor.
enum Effect<'a> {
    Apply(&'a Batch),
    Resync,
}

/// Runs one consumer: lease, cursor, batches, retries (see the module's documentation).
pub struct ConsumerRunner {
    feed: Arc<Feed>,
    consumer: Arc<dyn Consumer>,
    options: ConsumerOptions,
    name: String,
    owner: String,
}

impl ConsumerRunner {
    /// A runner of `consumer` over `feed`, with a fresh owner id for its lease. Options below
    /// their floors (a batch of 1, a lease of 100 ms, a retry after 1 ms) are raised to them,
    /// so that no setting turns a wait into a busy loop.
    pub fn new(feed: Arc<Feed>, consumer: Arc<dyn Consumer>, options: ConsumerOptions) -> Result<Self, ConsumerError> {
        let name = consumer.name().to_string();
        check_name(&name)?;
        let retry_min = options.retry_min.max(Duration::from_millis(1));
        let options = ConsumerOptions {
            batch_size: options.batch_size.max(1),
            lease: options.lease.max(Duration::from_millis(100)),
            retry_min,
            retry_max: options.retry_max.max(retry_min),
        };
        let owner = hex::encode(rand::random::<[u8; 8]>());
        Ok(ConsumerRunner { feed, consumer, options, name, owner })
    }

    /// The id this runner's lease carries.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs the consumer on a task of its own until `shutdown`; [`register_spawned`] makes
    /// sure of its cursor before the node serves anything.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        let spawned = (self.name.clone(), self.consumer.start_from());
        self.feed.spawned.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(spawned);
        tokio::spawn(self.run(shutdown))
    }

    /// Runs the consumer until `shutdown`, then gives up its lease.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("consumer", consumer.name = %self.name, consumer.owner = %self.owner);
        self.feed.metrics.consumer_started(&self.name);
        async {
            self.follow(&shutdown).await;
            self.lease_held(false);
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "consumer could not give up its lease; it expires by itself");
            }
            tracing::info!("consumer stopped");
        }
        .instrument(span)
        .await
    }

    /// The loop: wait for the lease, open the cursor, handle batches; back to the lease when
    /// it is lost. Returns on shutdown.
    async fn follow(&self, shutdown: &CancellationToken) {
        let mut ticks = self.feed.subscribe();
        let mut retry = Backoff::new(self.options.retry_min, self.options.retry_max);
        let renew_every = self.options.lease / 3;
        'lease: while !shutdown.is_cancelled() {
            if !self.wait_for_lease(shutdown, &mut retry).await {
                return;
            }
            let mut renewed = tokio::time::Instant::now();
            let mut cursor = loop {
                let opened = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    opened = self.open_cursor() => opened,
                };
                match opened {
                    Ok(Some(pos)) => break pos,
                    Ok(None) => {
                        self.lease_held(false);
                        continue 'lease;
                    }
                    Err(e) => {
                        self.failed(&super::START, &e);
                        if !pause(shutdown, retry.next()).await {
                            return;
                        }
                    }
                }
            };
            retry.reset();
            let mut limit = self.options.batch_size;
            while !shutdown.is_cancelled() {
                if renewed.elapsed() >= renew_every {
                    match self.renew().await {
                        Ok(true) => renewed = tokio::time::Instant::now(),
                        Ok(false) => {
                            tracing::warn!(cursor = %super::cursor(&cursor), "consumer lost its lease; waiting");
                            self.lease_held(false);
                            continue 'lease;
                        }
                        Err(e) => tracing::warn!(error = %e, "consumer could not renew its lease; will retry"),
                    }
                }
                ticks.borrow_and_update();
                match self.step(&mut cursor, limit, shutdown).await {
                    Ok(Step::Stopped) => return,
                    Ok(Step::Moved) => {
                        // Moving the cursor extends the lease.
                        renewed = tokio::time::Instant::now();
                        retry.reset();
                        // Back up to full batches gradually: after a batch too large for one
                        // transaction, the next few would be too.
                        limit = limit.saturating_mul(2).min(self.options.batch_size);
                    }
                    Ok(Step::CaughtUp) => {
                        let finished = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            finished = unpanicked("caught_up", self.consumer.caught_up()) => finished,
                        };
                        if let Err(e) = finished {
                            self.failed(&cursor, &e);
                            if !pause(shutdown, retry.next()).await {
                                return;
                            }
                            continue;
                        }
                        retry.reset();
                        let until_renewal = renew_every.saturating_sub(renewed.elapsed());
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = ticks.changed() => {}
                            _ = tokio::time::sleep(until_renewal) => {}
                        }
                    }
                    Err(StepError::Fenced(why)) => {
                        tracing::warn!(cursor = %super::cursor(&cursor), why, "consumer lost its lease; waiting");
                        self.lease_held(false);
                        continue 'lease;
                    }
                    Err(StepError::Failed(e)) => {
                        self.failed(&cursor, &e);
                        if matches!(e, ConsumerError::Store(StoreError::TransactionTooLarge(_))) {
                            limit = (limit / 2).max(1);
                        }
                        if !pause(shutdown, retry.next()).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn lease_held(&self, held: bool) {
        self.feed.metrics.consumer_lease_held.with_label_values(&[self.name.as_str()]).set(i64::from(held));
    }

    /// Logs and counts a failed batch; it will be retried.
    fn failed(&self, cursor: &Position, e: &ConsumerError) {
        self.feed.metrics.consumer_batches_failed.with_label_values(&[self.name.as_str()]).inc();
        tracing::error!(
            consumer = %self.name,
            cursor = %super::cursor(cursor),
            error = %e,
            "consumer batch failed; retrying it"
        );
    }

    /// Takes the lease, waiting while another runner holds it; `false` on shutdown.
    async fn wait_for_lease(&self, shutdown: &CancellationToken, retry: &mut Backoff) -> bool {
        let mut told = false;
        loop {
            let wait = match self.try_lease().await {
                Ok(Ok(())) => {
                    tracing::info!("consumer took its lease");
                    self.lease_held(true);
                    retry.reset();
                    return true;
                }
                Ok(Err(holder)) => {
                    if !told {
                        tracing::info!(holder = %holder.owner, "another runner holds the consumer's lease; waiting");
                        told = true;
                    }
                    // Until the holder's lease would expire, rechecking at least every half lease.
                    let left = u64::try_from(holder.expires_ms - crate::now_ms()).unwrap_or(0);
                    Duration::from_millis(left + 10).min(self.options.lease / 2)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer cannot read its lease; will retry");
                    retry.next()
                }
            };
            if !pause(shutdown, wait).await {
                return false;
            }
        }
    }

    /// Takes the lease if it is free, expired or ours; else answers who holds it.
    async fn try_lease(&self) -> store::Result<Result<(), Lease>> {
        let key = keys::consumer_lease(&self.name);
        let (taken, _) = crate::transact!(self.feed.store, |tx| {
            let now = crate::now_ms();
            match read_lease(tx, &key).await? {
                Some(held) if held.owner != self.owner && held.expires_ms > now => Err(held),
                _ => {
                    self.write_lease(tx, &key, now)?;
                    Ok(())
                }
            }
        })?;
        Ok(taken)
    }

    /// Extends the lease if it is still ours; `false` if another runner took it.
    async fn renew(&self) -> store::Result<bool> {
        let key = keys::consumer_lease(&self.name);
        let (ours, _) = crate::transact!(self.feed.store, |tx| {
            let ours = self.holds_lease(tx).await?;
            if ours {
                self.write_lease(tx, &key, crate::now_ms())?;
            }
            ours
        })?;
        Ok(ours)
    }

    /// Gives up the lease, if still ours, so that a waiting runner takes over at once.
    async fn release(&self) -> store::Result<()> {
        let key = keys::consumer_lease(&self.name);
        crate::transact!(self.feed.store, |tx| {
            if self.holds_lease(tx).await? {
                tx.clear(&key)?;
            }
        })?;
        Ok(())
    }

    /// Whether the stored lease is this runner's (expired or not: nobody else took it).
    async fn holds_lease(&self, tx: &mut dyn KvTxn) -> store::Result<bool> {
        Ok(read_lease(tx, &keys::consumer_lease(&self.name)).await?.is_some_and(|l| l.owner == self.owner))
    }

    fn write_lease(&self, tx: &mut dyn KvTxn, key: &[u8], now: i64) -> store::Result<()> {
        let expires_ms = now.saturating_add(i64::try_from(self.options.lease.as_millis()).unwrap_or(i64::MAX));
        let lease = Lease { owner: self.owner.clone(), expires_ms };
        tx.set(key, &selvage_shared::to_msgpack(&lease))
    }

    /// The stored cursor, registering one (where [`Consumer::start_from`] says) the first time;
    /// `None` if the lease was lost meanwhile.
    async fn open_cursor(&self) -> Result<Option<Position>, ConsumerError> {
        cursor_or_register(&self.feed, &self.name, self.consumer.start_from(), Some(self)).await
    }

    /// Reads one batch after `cursor` and handles it (or resyncs), moving `cursor`. A shutdown
    /// interrupts the delivery of a batch (it is delivered again on the next start) but not
    /// the transaction that moves the cursor, which the store bounds to a few seconds.
    async fn step(&self, cursor: &mut Position, limit: usize, shutdown: &CancellationToken) -> Result<Step, StepError> {
        let lag = self.feed.metrics.consumer_lag_seconds.with_label_values(&[self.name.as_str()]);
        match self.feed.read_after(cursor, limit).await? {
            Read::Resync { trim_point } => {
                tracing::error!(
                    cursor = %super::cursor(cursor),
                    trim_point = %super::cursor(&trim_point),
                    "the feed was trimmed past the consumer's cursor: the events in between are lost to it; \
                     resyncing from the trim point"
                );
                self.advance(cursor, &trim_point, Effect::Resync).await?;
                self.feed.metrics.consumer_resyncs.with_label_values(&[self.name.as_str()]).inc();
                *cursor = trim_point;
                Ok(Step::Moved)
            }
            Read::Events { items, next } => {
                if next == *cursor {
                    lag.set(0.0);
                    return Ok(Step::CaughtUp);
                }
                if let Some((_, first)) = items.first() {
                    lag.set((crate::now_ms() - first.ts).max(0) as f64 / 1000.0);
                }
                let items: Vec<Item> = items.into_iter().map(|(position, event)| Item { position, event }).collect();
                let batch = Batch { items, after: *cursor, next };
                if !batch.items.is_empty() {
                    let delivered = tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Step::Stopped),
                        delivered = unpanicked("deliver", self.consumer.deliver(&batch)) => delivered,
                    };
                    delivered?;
                }
                self.advance(cursor, &next, Effect::Apply(&batch)).await?;
                self.feed
                    .metrics
                    .consumer_events
                    .with_label_values(&[self.name.as_str()])
                    .inc_by(batch.items.len() as u64);
                *cursor = next;
                Ok(Step::Moved)
            }
        }
    }

    /// Moves the cursor from `from` to `to` in one transaction with the effect's writes, if the
    /// lease is still ours and the cursor still at `from`; extends the lease.
    async fn advance(&self, from: &Position, to: &Position, effect: Effect<'_>) -> Result<(), StepError> {
        let store = &self.feed.store;
        let mut tx = store.begin().await?;
        loop {
            let err = match self.advance_in(&mut *tx, from, to, &effect).await {
                Ok(false) => return Ok(()),
                Ok(true) => match tx.commit().await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_retryable() => {
                        // A commit whose outcome is unknown is found out on the next attempt:
                        // the cursor is then already at `to`.
                        store::backoff_pause().await;
                        tx = store.begin().await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
                Err(StepError::Failed(ConsumerError::Store(e))) => e,
                // The transaction is dropped uncommitted: the handler's writes go with it.
                Err(other) => return Err(other),
            };
            tx = tx.on_error(err).await?;
        }
    }

    /// The body of [`ConsumerRunner::advance`]'s transaction; `false` when there is nothing to
    /// write because an earlier attempt already committed.
    async fn advance_in(
        &self,
        tx: &mut dyn KvTxn,
        from: &Position,
        to: &Position,
        effect: &Effect<'_>,
    ) -> Result<bool, StepError> {
        if !self.holds_lease(tx).await? {
            return Err(StepError::Fenced("another runner holds the lease"));
        }
        let key = keys::consumer_cursor(&self.name);
        match read_position(tx, &key).await? {
            Some(stored) if stored == *from => {}
            Some(stored) if stored == *to && from != to => return Ok(false),
            _ => return Err(StepError::Fenced("the cursor was moved by another runner")),
        }
        match effect {
            Effect::Apply(batch) => unpanicked("apply", self.consumer.apply(tx, batch)).await?,
            Effect::Resync => unpanicked("resync", self.consumer.resync(tx, *from, *to)).await?,
        }
        tx.set(&key, to)?;
        self.write_lease(tx, &keys::consumer_lease(&self.name), crate::now_ms())?;
        Ok(true)
    }
}

/// Runs a handler, turning a panic into a failure of the batch (retried like any other)
/// rather than the end of the runner.
async fn unpanicked(
    what: &'static str,
    handler: impl std::future::Future<Output = Result<(), ConsumerError>>,
) -> Result<(), ConsumerError> {
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(done) => done,
        Err(_) => Err(ConsumerError::Handler(format!("the consumer's {what} panicked"))),
    }
}

/// Sleeps `d` unless `shutdown` comes first; `false` on shutdown.
async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Capped exponential backoff with jitter: each pause is between half and all of the current
/// step, which doubles up to the cap.
struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, step: min }
    }

    fn next(&mut self) -> Duration {
        let d = self.step;
        self.step = (self.step * 2).min(self.max);
        d / 2 + d.mul_f64(rand::random::<f64>() / 2.0)
    }

    fn reset(&mut self) {
        self.step = self.min;
    }
}

fn check_name(name: &str) -> Result<(), ConsumerError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConsumerError::Name(name.to_string()))
    }
}

async fn read_lease(tx: &mut dyn KvTxn, key: &[u8]) -> store::Result<Option<Lease>> {
    match tx.get(key).await? {
        Some(raw) => Ok(Some(store::decode("consumer lease", &raw)?)),
        None => Ok(None),
    }
}

async fn read_position(tx: &mut dyn KvTxn, key: &[u8]) -> store::Result<Option<Position>> {
    match tx.get(key).await? {
        Some(raw) => {
            let pos: Position = raw
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Engine(format!("a consumer cursor of {} bytes, not 12", raw.len())))?;
            Ok(Some(pos))
        }
        None => Ok(None),
    }
}

/// The stored cursor of the consumer `name`, `None` if it never registered.
pub async fn stored_cursor(feed: &Feed, name: &str) -> store::Result<Option<Position>> {
    let key = keys::consumer_cursor(name);
    let (pos, _) = crate::transact!(feed.store, |tx| { read_position(tx, &key).await? })?;
    Ok(pos)
}

/// Removes a retired consumer's cursor and lease, so that the trimmer stops keeping events for
/// it. A runner of it still running would register it again.
pub async fn forget(feed: &Feed, name: &str) -> store::Result<()> {
    let (cursor, lease) = (keys::consumer_cursor(name), keys::consumer_lease(name));
    crate::transact!(feed.store, |tx| {
        tx.clear(&cursor)?;
        tx.clear(&lease)?;
    })?;
    Ok(())
}

/// Every registered consumer's name and cursor, and the registration counter they were read
/// with (for the trimmer).
pub(super) async fn registered(tx: &mut dyn KvTxn) -> store::Result<(i64, Vec<(String, Position)>)> {
    let epoch = registrations(tx).await?;
    let rows = tx.get_range(&RangeRead::prefix(&keys::consumer_cursors())).await?;
    let cursors = rows
        .into_iter()
        .filter_map(|(k, v)| Some((store::tuple::last_str(&k)?, v.as_slice().try_into().ok()?)))
        .collect();
    Ok((epoch, cursors))
}

/// The registration counter: moves whenever a consumer registers a new cursor.
pub(super) async fn registrations(tx: &mut dyn KvTxn) -> store::Result<i64> {
    Ok(tx.get(&keys::consumer_registrations()).await?.as_deref().map(le_i64).unwrap_or(0))
}

/// Registers the cursor of every consumer spawned on this node since the last call
/// ([`ConsumerRunner::spawn`]), where its [`Consumer::start_from`] says, unless it has one. A
/// node calls it once its services are started and before it serves anything. Left to each
/// consumer's own task, which a busy runtime may get to late, a cursor at the head would start
/// after events that came in meanwhile, and those would never be handled.
pub async fn register_spawned(feed: &Feed) -> Result<(), ConsumerError> {
    let spawned = std::mem::take(&mut *feed.spawned.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for (name, from) in spawned {
        register(feed, &name, from).await?;
    }
    Ok(())
}

/// Registers consumer `name`'s cursor where `from` says, unless it has one; answers the cursor.
pub async fn register(feed: &Feed, name: &str, from: StartFrom) -> Result<Position, ConsumerError> {
    check_name(name)?;
    let registered = cursor_or_register(feed, name, from, None).await?;
    // Without a runner no lease is asked for, so there is always a cursor.
    registered.ok_or_else(|| ConsumerError::Handler("no cursor registered".into()))
}

/// The stored cursor of consumer `name`, registering one where `from` says the first time;
/// with `runner`, only while it holds the lease (`None` once it was lost).
async fn cursor_or_register(
    feed: &Feed,
    name: &str,
    from: StartFrom,
    runner: Option<&ConsumerRunner>,
) -> Result<Option<Position>, ConsumerError> {
    let key = keys::consumer_cursor(name);
    // The head is read apart: read inside, it would make the registration conflict with
    // every append. What is appended in between comes after it, so it is not missed.
    let head = match from {
        StartFrom::Head => feed.head().await?,
        StartFrom::Oldest => super::START,
    };
    let (opened, _) = crate::transact!(feed.store, |tx| {
        let leased = match runner {
            Some(runner) => runner.holds_lease(tx).await?,
            None => true,
        };
        if !leased {
            None
        } else if let Some(pos) = read_position(tx, &key).await? {
            Some((pos, false))
        } else {
            // Never before the trim point, which this transaction reads and so conflicts
            // with a trim that moves it.
            let pos = head.max(trim_point(tx).await?);
            tx.set(&key, &pos)?;
            tx.atomic_add(&keys::consumer_registrations(), 1)?;
            Some((pos, true))
        }
    })?;
    if let Some((pos, true)) = opened {
        tracing::info!(consumer.name = %name, cursor = %super::cursor(&pos), from = ?from, "consumer registered");
    }
    Ok(opened.map(|(pos, _)| pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["thumbnails", "search.v2", "webhook-7_a"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Thumbnails", "a b", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let pauses: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        for (pause, step) in pauses.iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
            let step = Duration::from_millis(step);
            assert!(*pause >= step / 2 && *pause <= step, "{pause:?} for a step of {step:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
