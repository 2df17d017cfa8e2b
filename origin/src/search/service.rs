//! The search service of one origin: its index, the indexer that keeps it current, and a
//! search as a client asks for it — `GET /v1/search` and the edge's `search` query run
//! [`Search::ask`] (ARCHITECTURE §8 "Search").
//!
//! A search is checked twice. The index query itself requires the caller's workspace and the
//! channels they may read now (read from the store for every search, so a membership change
//! counts at once); then every hit is read back from the store, in one transaction, and kept
//! only if its channel is still visible to the caller and the message is still there and not
//! deleted — so an index that lags the store, or holds what it should not, never shows a
//! message the caller may not read (ARCHITECTURE §7). The answer carries the message as history
//! shows it now, not as it was indexed.

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use selvage_shared::{Channel, ChannelId, SearchPage, SearchResult, SearchSnippet};
use tokio::{sync::Semaphore, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    index::Highlighter,
    indexer::{self, Indexer},
    query, resolve, IndexOptions, ReadableChannels, SearchError, SearchIndex, Snippet, Sort, StoreResolver,
};
use crate::{
    caller::Caller,
    channels,
    config::{ConsumersConfig, SearchConfig},
    error::{OriginError, Result},
    feed::{
        self,
        consumer::{ConsumerError, ConsumerOptions, ConsumerRunner},
        Feed, Position, Read,
    },
    messages::records as messages,
    metrics::Metrics,
    store::Store,
    transact,
};

/// Hits on a page unless the caller asks for another number.
pub const DEFAULT_LIMIT: usize = 20;

/// How often a search waiting for the index (`after`) looks whether it has caught up.
const WAIT_STEP: Duration = Duration::from_millis(20);

/// How often the index's lag behind the feed is measured for the metrics.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// The most events of lag measured: past it, the lag metric reads this many.
const LAG_CAP: usize = 10_000;

/// Users whose readable channels are cached (see [`ReadableChannels`]).
const READABLE_CACHED: u64 = 10_000;

/// What is told to a client when search is off.
pub const DISABLED: &str = "search is not enabled on this origin";

/// A search as a client asks for it.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    /// What was typed, in the query language (module `query`).
    pub q: String,
    /// Relevance (the default) or newest first.
    pub sort: Sort,
    /// Hits per page (1 to 100; [`DEFAULT_LIMIT`] when absent).
    pub limit: Option<usize>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
    /// A feed cursor the index should cover before answering (read your writes): the search
    /// waits for it up to `search.max_wait_ms`.
    pub after: Option<String>,
}

impl Ask {
    /// Reads `relevance` or `recent`.
    pub fn sort_from(name: Option<&str>) -> Result<Sort> {
        match name {
            None | Some("relevance") => Ok(Sort::Relevance),
            Some("recent") => Ok(Sort::Recent),
            Some(_) => Err(OriginError::BadRequest("sort must be relevance or recent".into())),
        }
    }
}

/// The search service (see the module's documentation).
pub struct Search {
    index: Arc<SearchIndex>,
    /// One permit per search allowed to read the index at once (`search.max_concurrent`).
    turns: Arc<Semaphore>,
    readable: ReadableChannels,
    config: SearchConfig,
    metrics: Arc<Metrics>,
}

impl Search {
    /// Opens (or creates) the index under `data_dir/search`.
    pub fn open(config: &SearchConfig, data_dir: &Path, metrics: Arc<Metrics>) -> Result<Search, SearchError> {
        let options = IndexOptions {
            writer_memory_bytes: config.writer_memory_mib * 1024 * 1024,
            writer_threads: config.writer_threads,
        };
        let index = Arc::new(SearchIndex::open(&data_dir.join("search"), &options)?);
        metrics.search_index_documents.set(index.len() as i64);
        let turns = match config.max_concurrent {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        Ok(Search {
            index,
            turns: Arc::new(Semaphore::new(turns)),
            readable: ReadableChannels::new(READABLE_CACHED),
            config: config.clone(),
            metrics,
        })
    }

    /// The index.
    pub fn index(&self) -> &Arc<SearchIndex> {
        &self.index
    }

    /// Starts the indexer (a feed consumer) and the lag gauge beside the origin; both stop on
    /// `shutdown`.
    pub fn start_background(
        &self,
        store: &Store,
        feed: &Arc<Feed>,
        consumers: &ConsumersConfig,
        shutdown: &CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, ConsumerError> {
        let indexer = Indexer::new(self.index.clone(), feed.clone(), store.clone(), self.metrics.clone());
        let runner = ConsumerRunner::new(feed.clone(), Arc::new(indexer), ConsumerOptions::from_config(consumers))?;
        let lag = tokio::spawn(measure_lag(self.index.clone(), feed.clone(), self.metrics.clone(), shutdown.clone()));
        Ok(vec![runner.spawn(shutdown.clone()), lag])
    }

    /// Rebuilds the index from the store (`selvage admin reindex`); answers how many messages
    /// it holds.
    pub async fn reindex(&self, feed: &Feed, store: &Store) -> Result<u64> {
        let started = Instant::now();
        let docs = indexer::reindex(feed, store, &self.index).await.map_err(internal)?;
        self.metrics.search_index_rebuilds.with_label_values(&["requested"]).inc();
        self.metrics.search_index_documents.set(docs as i64);
        tracing::info!(docs, ms = started.elapsed().as_millis() as u64, "search index rebuilt on request");
        Ok(docs)
    }

    /// Runs a search for `caller` (see the module's documentation).
    pub async fn ask(&self, store: &Store, caller: &Caller, ask: Ask) -> Result<SearchPage> {
        let started = Instant::now();
        let answer = self.answer(store, caller, ask).await;
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(OriginError::BadRequest(_)) => "bad_request",
            Err(_) => "error",
        };
        self.metrics.search_queries.with_label_values(&[outcome]).inc();
        self.metrics.search_query_seconds.observe(started.elapsed().as_secs_f64());
        answer
    }

    async fn answer(&self, store: &Store, caller: &Caller, ask: Ask) -> Result<SearchPage> {
        let mut query = query::parse(&ask.q).map_err(|e| OriginError::BadRequest(e.to_string()))?;
        let limit = ask.limit.unwrap_or(DEFAULT_LIMIT);
        let after = match ask.after.as_deref() {
            Some(c) => Some(feed::parse_cursor(c).ok_or_else(|| {
                OriginError::BadRequest("after must be a feed cursor (from an event or a send's ack)".into())
            })?),
            None => None,
        };
        let caught_up = match after {
            Some(after) => self.wait_for(after).await?,
            None => true,
        };
        resolve(&mut query, &StoreResolver::new(store, &caller.workspace)).await.map_err(failed)?;
        let allowed = self.readable.of(store, caller).await.map_err(failed)?;
        let index = self.index.clone();
        let w = caller.workspace.clone();
        let (sort, cursor) = (ask.sort, ask.cursor);
        // In line for the index: searches run to completion a few at a time (one per core)
        // rather than all at once sharing the cores, so a search waits for those before it
        // and is not slowed down by every one that arrives after it.
        let turn = self
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OriginError::Internal("the search queue is closed".into()))?;
        let page = tokio::task::spawn_blocking(move || {
            let page = index.search(&query, &w, &allowed, sort, limit, cursor.as_deref());
            drop(turn);
            page
        })
        .await
        .map_err(|e| OriginError::Internal(format!("search task: {e}")))?
        .map_err(failed)?;
        let results = recheck(store, caller, page.hits, &page.highlighter).await?;
        Ok(SearchPage { results, next_cursor: page.next, caught_up })
    }

    /// Waits until the index covers `after`, at most `search.max_wait_ms`; answers whether it
    /// does.
    async fn wait_for(&self, after: Position) -> Result<bool> {
        let deadline = Instant::now() + Duration::from_millis(self.config.max_wait_ms);
        loop {
            let covered = self.index.cursor().map_err(internal)?.unwrap_or(feed::START);
            if covered >= after {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
    }
}

/// The hits the caller may read now, as the API shows them (see the module's documentation).
async fn recheck(
    store: &Store,
    caller: &Caller,
    hits: Vec<super::Hit>,
    highlighter: &Highlighter,
) -> Result<Vec<SearchResult>> {
    let w = &caller.workspace;
    let (results, _) = transact!(store, |tx| {
        let mut visible: HashMap<ChannelId, Option<Channel>> = HashMap::new();
        let mut results = Vec::with_capacity(hits.len());
        for hit in &hits {
            if !visible.contains_key(&hit.channel) {
                let channel = channels::records::visible_channel(tx, caller, &hit.channel).await?.map(|(c, _)| c);
                visible.insert(hit.channel.clone(), channel);
            }
            let Some(Some(channel)) = visible.get(&hit.channel) else { continue };
            let Some(mut message) = messages::load(tx, w, &hit.channel, hit.seq).await?.filter(|m| !m.deleted) else {
                continue;
            };
            messages::decorate(tx, w, &hit.channel, std::slice::from_mut(&mut message)).await?;
            let names = message.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join("\n");
            let snippets = [("text", highlighter.snippet(&message.text)), ("files", highlighter.snippet(&names))]
                .into_iter()
                .filter_map(|(field, s)| s.as_ref().map(|s| snippet(field, s)))
                .collect();
            results.push(SearchResult { channel: channel.clone(), message, snippets });
        }
        results
    })?;
    Ok(results)
}

fn snippet(field: &str, s: &Snippet) -> SearchSnippet {
    SearchSnippet {
        field: field.to_string(),
        fragment: s.fragment.clone(),
        offset: s.offset as u64,
        highlights: s.highlights.iter().map(|r| [r.start as u64, r.end as u64]).collect(),
    }
}

/// A search failure as a client sees it: what it did wrong, or that the server failed.
fn failed(e: SearchError) -> OriginError {
    match e {
        SearchError::Store(e) => OriginError::Store(e),
        e if e.is_bad_request() => OriginError::BadRequest(e.to_string()),
        e => internal(e),
    }
}

fn internal(e: SearchError) -> OriginError {
    OriginError::Internal(e.to_string())
}

/// Measures, every [`LAG_INTERVAL`], how far the index is behind the feed: events (up to
/// [`LAG_CAP`]) and the age of the oldest one not indexed; and how many messages it holds.
async fn measure_lag(index: Arc<SearchIndex>, feed: Arc<Feed>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LAG_INTERVAL) => {}
        }
        let covered = match index.cursor() {
            Ok(covered) => covered.unwrap_or(feed::START),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the search index's cursor");
                continue;
            }
        };
        let (events, seconds) = match feed.read_after(&covered, LAG_CAP).await {
            Ok(Read::Events { items, .. }) => {
                let oldest = items.first().map_or(0, |(_, e)| (crate::now_ms() - e.ts).max(0));
                (items.len(), oldest as f64 / 1000.0)
            }
            // Behind the trim point: the indexer resyncs (rebuilds) on its next batch.
            Ok(Read::Resync { .. }) => (LAG_CAP, 0.0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the feed to measure the search index's lag");
                continue;
            }
        };
        metrics.search_index_lag_events.set(events as i64);
        metrics.search_index_lag_seconds.set(seconds);
        metrics.search_index_documents.set(index.len() as i64);
    }
}
