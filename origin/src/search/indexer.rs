//! The indexer: the feed consumer `search` that keeps the [`SearchIndex`] current, and the
//! rebuild from the store (ARCHITECTURE §8 "Search").
//!
//! **Following the feed.** In `deliver` (outside the store: at least once) each batch's
//! `message` events are indexed (text and file names), `message_changed` replaces the
//! message's document and `message_deleted` removes it; then the index commits with the
//! batch's end as its payload ([`Writer::commit`]), and only then does the runner move the
//! consumer's cursor in the store. A crash between the two delivers the batch again, which
//! changes nothing: documents are replaced by `(workspace, channel, seq)`, never added twice.
//! The first start begins at the oldest event the feed keeps.
//!
//! **Finding what the index misses.** Before a batch, the index's committed cursor is compared
//! with where the batch starts (the consumer's cursor):
//!
//! - equal, or the index ahead (a crash after the index committed and before the cursor
//!   moved): carry on; replaying is harmless.
//! - the index behind: events the consumer handled are not in this index — its directory was
//!   lost or replaced by an older copy, the layout changed (`index::LAYOUT`), or another node
//!   ran the consumer. The index is rebuilt from the store ([`rebuild`]) before the batch.
//!
//! **Resync.** When the feed was trimmed past the consumer's cursor, [`Consumer::resync`] marks
//! the index for a rebuild (in memory: the mark needs no durability, since after a restart the
//! index's cursor is behind the consumer's and the comparison above rebuilds it anyway), and
//! the next batch rebuilds it before it is indexed.
//!
//! **A rebuild** holds the index's writer for its whole length, so nothing commits in between:
//! it reads the feed's head, clears the index, and indexes every stored message that is not
//! deleted, a page of each channel per store transaction. The messages it reads are at least
//! as new as every event up to that head, so it commits with the head as its cursor. An event
//! after it that is delivered later may set a message back to an older state for a moment
//! (the message was read newer); the events after it bring it forward again, so the index
//! converges to the store by the time the consumer reaches the feed's head. A crash during a
//! rebuild commits nothing: the old index stands, and the rebuild starts again.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use async_trait::async_trait;
use selvage_shared::{ChannelId, Event, Message, Seq, WorkspaceId};

use super::{
    index::{SearchIndex, Writer},
    SearchError,
};
use crate::{
    feed::{
        self,
        consumer::{Batch, Consumer, ConsumerError, StartFrom},
        Feed, Position,
    },
    messages::records,
    store::{decode, keys, prefix_range, tuple, KvTxn, RangeRead, Store},
    transact,
};

/// The consumer's name: the key of its cursor and lease. Never renamed.
pub const NAME: &str = "search";

/// Messages read per store transaction during a rebuild.
const REBUILD_PAGE: usize = 500;

/// One change a batch makes to the index.
enum Change {
    Put(WorkspaceId, Box<Message>),
    Delete(WorkspaceId, ChannelId, Seq),
}

/// The feed consumer `search` (see the module's documentation).
pub struct Indexer {
    index: Arc<SearchIndex>,
    feed: Arc<Feed>,
    store: Store,
    /// Set by a resync: rebuild before the next batch.
    rebuild: AtomicBool,
}

impl Indexer {
    /// An indexer keeping `index` current with `feed`, rebuilding it from `store` when needed.
    pub fn new(index: Arc<SearchIndex>, feed: Arc<Feed>, store: Store) -> Indexer {
        Indexer { index, feed, store, rebuild: AtomicBool::new(false) }
    }

    /// Whether the index must be rebuilt before it takes `batch`, and why.
    fn needs_rebuild(&self, covered: Option<Position>, batch: &Batch) -> Option<&'static str> {
        if self.rebuild.load(Ordering::Acquire) {
            Some("the feed was trimmed past the consumer's cursor")
        } else if covered.unwrap_or(feed::START) < batch.after {
            Some("the index covers less of the feed than the consumer handled")
        } else {
            None
        }
    }

    async fn index_batch(&self, batch: &Batch) -> Result<(), SearchError> {
        let mut writer = self.index.writer().await?;
        let mut covers = batch.next;
        let covered = writer.cursor()?;
        let rebuilt = match self.needs_rebuild(covered, batch) {
            Some(why) => {
                tracing::warn!(
                    reason = why,
                    index.cursor = %feed::cursor(&covered.unwrap_or(feed::START)),
                    consumer.cursor = %feed::cursor(&batch.after),
                    "rebuilding the search index from the store"
                );
                let (rebuilt_writer, head) = rebuild(&self.feed, &self.store, writer).await?;
                writer = rebuilt_writer;
                covers = covers.max(head);
                true
            }
            None => false,
        };
        let changes = changes(batch);
        let count = changes.len();
        writer
            .run(move |w| {
                for change in changes {
                    match change {
                        Change::Put(ws, m) => w.put(&ws, &m)?,
                        Change::Delete(ws, c, seq) => w.delete(&ws, &c, seq),
                    }
                }
                w.commit(&covers)
            })
            .await?;
        if rebuilt {
            self.rebuild.store(false, Ordering::Release);
            tracing::info!(docs = self.index.len(), "search index rebuilt");
        }
        tracing::debug!(changes = count, cursor = %feed::cursor(&covers), "search index committed");
        Ok(())
    }
}

/// What `batch` changes in the index.
fn changes(batch: &Batch) -> Vec<Change> {
    let mut out = Vec::new();
    for item in &batch.items {
        let w = &item.event.workspace;
        match &item.event.event {
            Event::Message(m) => out.push(Change::Put(w.clone(), Box::new(m.clone()))),
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
    let covered = writer.cursor()?.unwrap_or(feed::START);
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
