//! The indexer: the feed consumer `search` that keeps the [`SearchIndex`] current, and the
//! rebuild from the store (ARCHITECTURE §8 "Search").
//!
//! **Following the feed.** In `deliver` (outside the store: at least once) each batch's
//! `message` events are indexed (text and file names; added, see [`Writer::post`]),
//! `message_changed` replaces the message's document and `message_deleted` removes it; the writer then records that its
//! changes bring the index up to the batch's end ([`Writer::covers`]). It **commits** — with
//! that position as the commit's payload, see [`Writer::commit`] — when the runner has caught
//! up with the feed ([`Consumer::caught_up`]), and at least every [`COMMIT_EVERY`] while it is
//! behind, not per batch: a tantivy commit writes and syncs a segment and reopens the readers,
//! which a batch of a few hundred events cannot pay for. Documents are replaced by
//! `(workspace, channel, seq)`, never added twice, so indexing an event again changes nothing.
//!
//! **The index's cursor is the truth.** The consumer's cursor in the store moves after every
//! batch; the index's commit may be up to [`COMMIT_EVERY`] behind it, and a crash loses what
//! was not committed. So before a batch the indexer compares the position its index covers
//! (committed, or finished and waiting for a commit) with where the batch starts:
//!
//! - equal, or the index ahead (it committed, then the process died before the cursor moved):
//!   the events the index already covers are skipped.
//! - the index behind (a crash lost uncommitted work; the directory was lost or replaced by an
//!   older copy; the layout changed, `index::LAYOUT`; another node ran the consumer): the
//!   events in between are read from the feed again and indexed ([`Indexer::replay`],
//!   counted in `selvage_search_index_replayed_events_total`). If the feed no longer holds
//!   them (trimmed), the index is rebuilt from the store instead.
//!
//! **Resync.** When the feed was trimmed past the consumer's cursor, [`Consumer::resync`] marks
//! the index for a rebuild (in memory: the mark needs no durability, since after a restart the
//! index's cursor is behind the trim point and the replay above finds the events gone), and the
//! next batch rebuilds it before it is indexed.
//!
//! **A rebuild** holds the index's writer for its whole length, so nothing commits in between:
//! it reads the feed's head, clears the index, and indexes every stored message that is not
//! deleted, a page of each channel per store transaction. The messages it reads are at least
//! as new as every event up to that head, so it commits with the head as its cursor, and with
//! the head read after its last read ([`Writer::rebuilt_until`]): the new messages up to there
//! may be indexed already, so their `message` events replace their documents. An event
//! after it that is delivered later may set a message back to an older state for a moment
//! (the message was read newer); the events after it bring it forward again, so the index
//! converges to the store by the time the consumer reaches the feed's head. A crash during a
//! rebuild commits nothing: the old index stands, and the rebuild starts again.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use selvage_shared::{ChannelId, Event, FeedEvent, Message, Seq, WorkspaceId};

use super::{
    index::{SearchIndex, Writer},
    SearchError,
};
use crate::{
    feed::{
        self,
        consumer::{Batch, Consumer, ConsumerError, StartFrom},
        Feed, Position, Read,
    },
    messages::records,
    metrics::Metrics,
    store::{decode, keys, prefix_range, tuple, KvTxn, RangeRead, Store},
    transact,
};

/// The consumer's name: the key of its cursor and lease. Never renamed.
pub const NAME: &str = "search";

/// Most time between two commits while the indexer is behind the feed; it commits at once
/// when it catches up.
pub const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Messages read per store transaction during a rebuild.
const REBUILD_PAGE: usize = 500;

/// Events read per store transaction when the index replays what it lost.
const REPLAY_PAGE: usize = 1_000;

/// One change a batch makes to the index.
enum Change {
    /// A new message, from its `message` event at this position.
    Post(WorkspaceId, Box<Message>, Position),
    Put(WorkspaceId, Box<Message>),
    Delete(WorkspaceId, ChannelId, Seq),
}

/// The feed consumer `search` (see the module's documentation).
pub struct Indexer {
    index: Arc<SearchIndex>,
    feed: Arc<Feed>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Set by a resync: rebuild before the next batch.
    rebuild: AtomicBool,
}

impl Indexer {
    /// An indexer keeping `index` current with `feed`, rebuilding it from `store` when needed.
    pub fn new(index: Arc<SearchIndex>, feed: Arc<Feed>, store: Store, metrics: Arc<Metrics>) -> Indexer {
        Indexer { index, feed, store, metrics, rebuild: AtomicBool::new(false) }
    }

    async fn index_batch(&self, batch: &Batch) -> Result<(), SearchError> {
        let mut writer = self.index.writer().await?;
        let mut covered = writer.covered()?.unwrap_or(feed::START);
        if self.rebuild.load(Ordering::Acquire) {
            (writer, covered) =
                self.rebuild(writer, covered, "the feed was trimmed past the consumer's cursor").await?;
            self.rebuild.store(false, Ordering::Release);
        }
        if covered < batch.after {
            (writer, covered) = self.replay(writer, covered, &batch.after).await?;
        }
        let events =
            batch.items.iter().filter(|item| item.position > covered).map(|item| (&item.position, &item.event));
        writer = apply(writer, changes(events), covered.max(batch.next)).await?;
        self.commit_if_due(writer).await?;
        Ok(())
    }

    /// Indexes again the events after `covered` up to `until` that the index lost (work it
    /// did not commit before a crash, or an older index directory), reading them from the
    /// feed; rebuilds from the store instead if the feed no longer holds them. Answers the
    /// writer and the position the index then covers (`until` or past it).
    async fn replay(
        &self,
        mut writer: Writer,
        mut covered: Position,
        until: &Position,
    ) -> Result<(Writer, Position), SearchError> {
        tracing::warn!(
            index.cursor = %feed::cursor(&covered),
            consumer.cursor = %feed::cursor(until),
            "the search index covers less of the feed than the consumer handled; indexing the difference again"
        );
        let mut replayed = 0u64;
        while covered < *until {
            match self.feed.read_after(&covered, REPLAY_PAGE).await? {
                Read::Resync { .. } => {
                    return self.rebuild(writer, covered, "the feed no longer holds the events the index misses").await;
                }
                Read::Events { items, next } => {
                    if next <= covered {
                        return Err(SearchError::Corrupt(format!(
                            "the feed holds no event after {} though the consumer handled up to {}",
                            feed::cursor(&covered),
                            feed::cursor(until)
                        )));
                    }
                    replayed += items.len() as u64;
                    writer =
                        apply(writer, changes(items.iter().map(|(position, event)| (position, event))), next).await?;
                    covered = next;
                    writer = self.commit_if_due(writer).await?;
                }
            }
        }
        self.metrics.search_index_replayed_events.inc_by(replayed);
        tracing::info!(events = replayed, cursor = %feed::cursor(&covered), "search index caught up with the consumer");
        Ok((writer, covered))
    }

    /// Rebuilds the index from the store and commits it; answers the writer and the position
    /// it covers.
    async fn rebuild(
        &self,
        writer: Writer,
        covered: Position,
        why: &'static str,
    ) -> Result<(Writer, Position), SearchError> {
        tracing::warn!(reason = why, index.cursor = %feed::cursor(&covered), "rebuilding the search index from the store");
        self.metrics.search_index_rebuilds.with_label_values(&["trimmed"]).inc();
        let (writer, head) = rebuild(&self.feed, &self.store, writer).await?;
        let covers = covered.max(head);
        let (writer, ()) = writer.run(move |w| w.commit(&covers)).await?;
        self.metrics.search_index_commits.inc();
        tracing::info!(docs = self.index.len(), "search index rebuilt");
        Ok((writer, covers))
    }

    /// Commits what the writer holds finished if the last commit is [`COMMIT_EVERY`] old.
    async fn commit_if_due(&self, writer: Writer) -> Result<Writer, SearchError> {
        if writer.since_commit() >= COMMIT_EVERY {
            return self.commit(writer).await;
        }
        Ok(writer)
    }

    /// Commits what the writer holds finished.
    async fn commit(&self, writer: Writer) -> Result<Writer, SearchError> {
        let (writer, committed) = writer.run(Writer::commit_pending).await?;
        if committed {
            self.metrics.search_index_commits.inc();
            self.metrics.search_index_documents.set(self.index.len() as i64);
            tracing::debug!(cursor = ?writer.cursor().ok().flatten().map(|c| feed::cursor(&c)), "search index committed");
        }
        Ok(writer)
    }
}

/// Applies `changes` and marks the index as covering the feed up to `covers`.
async fn apply(writer: Writer, changes: Vec<Change>, covers: Position) -> Result<Writer, SearchError> {
    let (writer, ()) = writer
        .run(move |w| {
            for change in changes {
                match change {
                    Change::Post(ws, m, at) => w.post(&ws, &m, &at)?,
                    Change::Put(ws, m) => w.put(&ws, &m)?,
                    Change::Delete(ws, c, seq) => w.delete(&ws, &c, seq),
                }
            }
            w.covers(covers);
            Ok(())
        })
        .await?;
    Ok(writer)
}

/// What `events` change in the index.
fn changes<'a>(events: impl IntoIterator<Item = (&'a Position, &'a FeedEvent)>) -> Vec<Change> {
    let mut out = Vec::new();
    for (position, event) in events {
        let w = &event.workspace;
        match &event.event {
            Event::Message(m) => out.push(Change::Post(w.clone(), Box::new(m.clone()), *position)),
            Event::MessageChanged { message, .. } => out.push(Change::Put(w.clone(), Box::new(message.clone()))),
            Event::MessageDeleted { channel, seq } => out.push(Change::Delete(w.clone(), channel.clone(), *seq)),
            _ => {}
        }
    }
    out
}

#[async_trait]
impl Consumer for Indexer {
    fn name(&self) -> &str {
        NAME
    }

    fn start_from(&self) -> StartFrom {
        StartFrom::Oldest
    }

    async fn deliver(&self, batch: &Batch) -> Result<(), ConsumerError> {
        self.index_batch(batch).await.map_err(ConsumerError::handler)
    }

    async fn caught_up(&self) -> Result<(), ConsumerError> {
        let writer = self.index.writer().await.map_err(ConsumerError::handler)?;
        if writer.has_pending() {
            self.commit(writer).await.map_err(ConsumerError::handler)?;
        }
        Ok(())
    }

    async fn resync(&self, _tx: &mut dyn KvTxn, from: Position, trim_point: Position) -> Result<(), ConsumerError> {
        tracing::error!(
            from = %feed::cursor(&from),
            trim_point = %feed::cursor(&trim_point),
            "search index missed trimmed events; it is rebuilt from the store before the next batch"
        );
        self.rebuild.store(true, Ordering::Release);
        Ok(())
    }
}

/// Rebuilds `index` from the messages in the store and commits it, for `selvage admin
/// reindex`; answers how many messages it holds. Waits for the indexer's batch in progress,
/// and holds the indexer back until it is done (see the module's documentation).
pub async fn reindex(feed: &Feed, store: &Store, index: &SearchIndex) -> Result<u64, SearchError> {
    let writer = index.writer().await?;
    let covered = writer.covered()?.unwrap_or(feed::START);
    let (writer, head) = rebuild(feed, store, writer).await?;
    let covers = covered.max(head);
    writer.run(move |w| w.commit(&covers)).await?;
    Ok(index.len())
}

/// Clears the index and indexes every stored message into it, uncommitted; answers the writer
/// and the feed's head read before the first message.
async fn rebuild(feed: &Feed, store: &Store, writer: Writer) -> Result<(Writer, Position), SearchError> {
    let head = feed.head().await?;
    let (mut writer, ()) = writer.run(Writer::clear).await?;
    let mut after_workspace = prefix_range(&keys::workspaces()).0;
    while let Some(w) = next_workspace(store, &after_workspace).await? {
        for c in channels_of(store, &w).await? {
            writer = index_channel(store, &w, &c, writer).await?;
        }
        after_workspace = prefix_range(&keys::workspace(&w)).1;
    }
    let settled = feed.head().await?;
    writer.rebuilt_until(settled);
    Ok((writer, head))
}

/// The first workspace whose record is at or after `from`.
async fn next_workspace(store: &Store, from: &[u8]) -> Result<Option<WorkspaceId>, SearchError> {
    let end = prefix_range(&keys::workspaces()).1;
    let range = RangeRead::between(from.to_vec(), end).limit(1);
    let (first, _) = transact!(store, |tx| { tx.get_range(&range).await? })?;
    let Some((key, _)) = first.into_iter().next() else { return Ok(None) };
    let id = tuple::unpack(&key).ok().and_then(|elements| elements.get(1)?.as_str().map(str::to_string));
    match id.as_deref().and_then(WorkspaceId::parse) {
        Some(w) => Ok(Some(w)),
        None => Err(SearchError::Corrupt("a workspace key without a workspace id".into())),
    }
}

/// Every channel, DM and group DM of `w`.
async fn channels_of(store: &Store, w: &WorkspaceId) -> Result<Vec<ChannelId>, SearchError> {
    let prefix = keys::channels(w);
    let (rows, _) = transact!(store, |tx| { tx.get_range(&RangeRead::prefix(&prefix)).await? })?;
    Ok(rows.into_iter().filter_map(|(k, _)| tuple::last_str(&k).and_then(|s| ChannelId::parse(&s))).collect())
}

/// Indexes every message of one channel, a page per transaction.
async fn index_channel(
    store: &Store,
    w: &WorkspaceId,
    c: &ChannelId,
    mut writer: Writer,
) -> Result<Writer, SearchError> {
    let prefix = keys::messages(w, c);
    let (mut begin, end) = prefix_range(&prefix);
    loop {
        let range = RangeRead::between(begin.clone(), end.clone()).limit(REBUILD_PAGE);
        let (page, _) = transact!(store, |tx| {
            let mut page = Vec::new();
            for (_, raw) in tx.get_range(&range).await? {
                page.push(decode::<Message>("message", &raw)?);
            }
            records::decorate(tx, w, c, &mut page).await?;
            page
        })?;
        let Some(last) = page.last().map(|m| m.seq) else { return Ok(writer) };
        let full = page.len() == REBUILD_PAGE;
        let ws = w.clone();
        writer = writer
            .run(move |writer| {
                for m in page.iter().filter(|m| !m.deleted) {
                    writer.put(&ws, m)?;
                }
                Ok(())
            })
            .await?
            .0;
        if !full {
            return Ok(writer);
        }
        begin = keys::message_in(&prefix, last);
        begin.push(0x00);
    }
}
