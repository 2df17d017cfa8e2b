//! The search index: a tantivy index on the origin's disk, one document per message, and the
//! one place that turns a [`Query`] into a tantivy query (ARCHITECTURE §8 "Search").
//!
//! **Documents.** One per `(workspace, channel, seq)`, found for replacement by its unique
//! `key` term (`W/C/seq`): an edit deletes the key and adds the message again, so a message
//! is never in the index twice, however often it is indexed. A deleted message is only deleted.
//! Its text and file names (one value each, so that a phrase never runs from one into the
//! next) are indexed twice: stemmed (`body`), which words and phrases search, and unstemmed
//! (`words`), which the word being typed is a prefix of (see `analysis`). Nothing is stored:
//! what a hit needs to be found again (its channel, `seq` and time) is in fast fields, and its
//! snippets are cut from the message as the store holds it ([`Highlighter`]), so they show
//! the text the caller gets, never an older version the index still has.
//!
//! **Commits carry the feed cursor.** Each commit stores, as its payload, the position of the
//! last feed event it covers ([`Writer::commit`]), read back by [`SearchIndex::cursor`]:
//! tantivy writes the payload in the same atomic metadata file as the segments, so after a
//! crash — SIGKILL included — the index and its cursor agree. The indexer (`indexer`) compares
//! it with the consumer's cursor in the store to find out whether the index misses events.
//!
//! **New messages are added, not replaced.** A message's `message` event is the first time
//! the index can see it, so its document is added without first deleting its key
//! ([`Writer::post`]): a delete costs a term lookup in every segment at the next commit, a
//! tenth of the indexing time. The one exception is a rebuild, which reads messages from the
//! store while they are sent: those posted up to the feed's head read after its scan
//! ([`Writer::rebuilt_until`]) may already be in the index when their event arrives, so they
//! are replaced. That position is part of the commit's payload (`CURSOR REBUILT_UNTIL`) until
//! the index covers it, so a restart in between still replaces them.
//!
//! **Permissions are not in the index.** Documents carry their workspace and channel only
//! (as one fast field, [`room`]); a search is given the set of channels the caller may
//! read *now* (computed from the store by the caller, see [`super::ReadableChannels`]), and
//! only documents in one of those channels of the caller's workspace, posted within the
//! query's dates, reach the ranking ([`Permitted`], a filter on fast fields applied to every
//! match), so membership changes take effect at once, with nothing to reindex.
//!
//! **Ranking.** [`Sort::Recent`] orders by the message's timestamp, newest first.
//! [`Sort::Relevance`] multiplies tantivy's BM25 score (summed over the text and file-name
//! fields) by a recency factor, `1 + RECENCY_WEIGHT × 2^(−age / RECENCY_HALF_LIFE)`: a
//! message posted just now scores up to twice an equally relevant old one, one a month old
//! 1.5 times. A query of filters alone has no scores and is ordered newest first.
//!
//! **Pages.** A page cursor is opaque to clients; it holds the offset of the next page, the
//! time the first page was asked at (`as_of`), and the generation of the index the first page
//! was read from: the next pages read the same generation while it is kept ([`PIN_FOR`], the
//! [`PINNED`] latest), so a merge or a commit in between does not reorder them (a merge that
//! purges deleted documents moves every score a little). Every page only sees messages posted up to
//! `as_of` and scores recency against it, so messages posted meanwhile do not shift later
//! pages. A message deleted between two pages shifts the rest by one. Pages go at most
//! [`MAX_OFFSET`] deep.
//!
//! **Memory.** One writer, with a fixed memory budget (`search.writer_memory_mib`) that tantivy
//! flushes to a new segment when it is reached; readers reload after a commit and after a
//! merge in the background.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Range,
    path::Path,
    sync::{Arc, PoisonError},
    time::{Duration, Instant},
};

use selvage_shared::{ChannelId, Message, SearchSort, Seq, WorkspaceId};
use tantivy::{
    collector::{Collector, SegmentCollector, TopDocs},
    columnar::{Column, ColumnIndex, ColumnValues, Dictionary},
    directory::MmapDirectory,
    index::SegmentId,
    query::{
        AllQuery, BooleanQuery, ConstScoreQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query as TantivyQuery,
        TermQuery,
    },
    schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STRING},
    snippet::SnippetGenerator,
    DocAddress, DocId, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Score, Searcher, SegmentReader,
    TantivyDocument, Term,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{
    analysis::{self, TEXT_ANALYZER, WORDS_ANALYZER},
    query::{ChannelRef, Query, Term as QueryTerm, UserRef},
    SearchError,
};
use crate::feed::{self, Position};

/// The layout's version: the index lives in a subdirectory named for it, so a release that
/// changes the schema or the analysis starts an empty index, which the indexer rebuilds from
/// the store (its cursor is then behind the consumer's).
const LAYOUT: &str = "v3";

/// Most hits on one page (the edge checks a `search` query's limit against the same).
pub const MAX_LIMIT: usize = selvage_shared::MAX_SEARCH_LIMIT;
/// Deepest a page may start.
pub const MAX_OFFSET: usize = 5_000;
/// How much recency can multiply a relevance score by, on top of 1.
const RECENCY_WEIGHT: f32 = 1.0;
/// The age at which a message's recency bonus halves, in ms (30 days).
const RECENCY_HALF_LIFE_MS: f32 = 30.0 * 24.0 * 3600.0 * 1000.0;
/// Most index terms the prefix of a word being typed expands to, per field and segment.
const MAX_PREFIX_EXPANSIONS: u32 = 100;
/// How long a generation of the index stays readable for the pages after the first.
pub const PIN_FOR: Duration = Duration::from_secs(120);
/// Most generations kept for pages.
pub const PINNED: usize = 16;
/// Longest snippet, in characters.
const SNIPPET_CHARS: usize = 200;
/// Milliseconds in a day.
const DAY_MS: i64 = 24 * 3600 * 1000;

/// How hits are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// BM25 blended with recency (see the module's documentation).
    #[default]
    Relevance,
    /// Newest first.
    Recent,
}

impl From<SearchSort> for Sort {
    fn from(sort: SearchSort) -> Sort {
        match sort {
            SearchSort::Relevance => Sort::Relevance,
            SearchSort::Recent => Sort::Recent,
        }
    }
}

/// Tuning of the index writer.
#[derive(Clone, Copy, Debug)]
pub struct IndexOptions {
    /// The writer's memory budget in bytes (tantivy wants at least 15 MB per thread).
    pub writer_memory_bytes: usize,
    /// Indexing threads.
    pub writer_threads: usize,
}

/// One page of hits.
pub struct Page {
    /// The hits, best (or newest) first.
    pub hits: Vec<Hit>,
    /// The cursor of the next page, if there may be one.
    pub next: Option<String>,
    /// What to highlight in the hits' text and file names.
    pub highlighter: Highlighter,
}

/// A message that matched.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// Its channel.
    pub channel: ChannelId,
    /// Its `seq`.
    pub seq: Seq,
    /// When it was posted (ms since the epoch).
    pub ts: i64,
    /// Its ranking score (0 when sorted by time).
    pub score: f32,
}

/// An excerpt of a field around the matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snippet {
    /// The excerpt.
    pub fragment: String,
    /// Where it starts in the field, in bytes.
    pub offset: usize,
    /// The matched words, as byte ranges of `fragment`.
    pub highlights: Vec<Range<usize>>,
}

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    /// `W/C`: the workspace and channel, a fast field for the permission filter and the hit.
    room: Field,
    seq: Field,
    author: Field,
    ts: Field,
    thread: Field,
    has_file: Field,
    has_link: Field,
    /// The text and the file names, stemmed: what words and phrases search.
    body: Field,
    /// The same, unstemmed: what the word being typed is a prefix of.
    words: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let analysed = |analyzer: &str| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(analyzer)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
    };
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        room: b.add_text_field("room", FAST),
        seq: b.add_u64_field("seq", FAST),
        author: b.add_text_field("author", STRING),
        ts: b.add_i64_field("ts", FAST),
        thread: b.add_bool_field("thread", INDEXED),
        has_file: b.add_bool_field("has_file", INDEXED),
        has_link: b.add_bool_field("has_link", INDEXED),
        body: b.add_text_field("body", analysed(TEXT_ANALYZER)),
        words: b.add_text_field("words", analysed(WORDS_ANALYZER)),
    };
    (b.build(), fields)
}

/// The unique term of a message's document.
fn key(w: &WorkspaceId, c: &ChannelId, seq: Seq) -> String {
    format!("{w}/{c}/{seq}")
}

/// A channel of a workspace as the index keeps it: `W/C`.
fn room(w: &WorkspaceId, c: &ChannelId) -> String {
    format!("{w}/{c}")
}

/// The writer, and what it holds that no commit covers yet.
struct WriterState {
    writer: IndexWriter,
    /// Set by every change, cleared by [`Writer::covers`], a commit or a rollback: a writer
    /// handed over with a change its holder did not finish (it failed or was cancelled) is
    /// rolled back first, so a later commit never publishes half of someone else's work.
    dirty: bool,
    /// Finished changes not yet committed, and the feed position they bring the index to
    /// ([`Writer::covers`]). A commit makes them durable; a rollback drops them with the rest.
    pending: Option<Position>,
    /// When the index last committed (or was opened).
    committed_at: Instant,
    /// Messages posted up to here may have been indexed by a rebuild (see the module's
    /// documentation): their `message` event replaces their document.
    rebuilt_until: Option<Position>,
}

/// The feed position searches see: that of the last commit once the reader has reloaded it.
/// The commit's payload is on disk a moment before the reader shows the commit, and a search
/// that waits for a cursor (read your writes) must not run in between.
type Searchable = Arc<std::sync::Mutex<Option<Position>>>;

/// The search index (see the module's documentation).
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    writer: Arc<Mutex<WriterState>>,
    searchable: Searchable,
    /// What searches read of each segment.
    segments: Arc<ColumnsBySegment>,
    /// Recent generations of the index, for the pages after a first (see the module's
    /// documentation): generation id, its searcher, when it was first read.
    pinned: std::sync::Mutex<std::collections::VecDeque<(u64, Searcher, Instant)>>,
}

impl SearchIndex {
    /// Opens the index under `dir`, creating it if there is none.
    pub fn open(dir: &Path, options: &IndexOptions) -> Result<SearchIndex, SearchError> {
        let dir = dir.join(LAYOUT);
        std::fs::create_dir_all(&dir).map_err(|e| SearchError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let (schema, fields) = schema();
        let index = Index::open_or_create(MmapDirectory::open(&dir)?, schema)?;
        index.tokenizers().register(TEXT_ANALYZER, analysis::text_analyzer());
        index.tokenizers().register(WORDS_ANALYZER, analysis::words_analyzer());
        let writer = index.writer_with_num_threads(options.writer_threads.max(1), options.writer_memory_bytes)?;
        // Reloaded by every commit (`Writer::commit`), and on its own when a merge in the
        // background replaces segments, so that an index left idle after a burst is searched
        // merged, not in the many small segments the burst wrote.
        let reader = index.reader_builder().reload_policy(ReloadPolicy::OnCommitWithDelay).try_into()?;
        let committed = read_payload(&index)?;
        let writer = Arc::new(Mutex::new(WriterState {
            writer,
            dirty: false,
            pending: None,
            committed_at: Instant::now(),
            rebuilt_until: committed.rebuilt_until,
        }));
        let searchable = Arc::new(std::sync::Mutex::new(committed.cursor));
        Ok(SearchIndex {
            index,
            reader,
            fields,
            writer,
            searchable,
            segments: Arc::default(),
            pinned: std::sync::Mutex::default(),
        })
    }

    /// The feed position the last commit covers, as searches see it; `None` for an index never
    /// committed with one.
    pub fn cursor(&self) -> Result<Option<Position>, SearchError> {
        Ok(*self.searchable.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many messages the index holds, as of the last commit.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// How many segments searches read now.
    pub fn segments(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// Whether the index holds no message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index's one writer, waiting for whoever holds it. Holding it is exclusive: the
    /// indexer holds it for a batch, a rebuild for the whole rebuild.
    pub async fn writer(&self) -> Result<Writer, SearchError> {
        let state = self.writer.clone().lock_owned().await;
        let mut writer = Writer {
            state,
            reader: self.reader.clone(),
            index: self.index.clone(),
            fields: self.fields,
            searchable: self.searchable.clone(),
        };
        if writer.state.dirty {
            writer = writer.run(Writer::rollback).await?.0;
        }
        Ok(writer)
    }

    /// Searches the messages of `workspace` in the channels of `allowed` (those the caller may
    /// read now) for `query`, whose handles and channel names are resolved (any left as names
    /// match nothing). Blocking: call it from `spawn_blocking`.
    pub fn search(
        &self,
        query: &Query,
        workspace: &WorkspaceId,
        allowed: &HashSet<ChannelId>,
        sort: Sort,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, SearchError> {
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(SearchError::BadLimit);
        }
        let page = match cursor {
            Some(c) => PageCursor::parse(c).ok_or(SearchError::BadCursor)?,
            None => PageCursor { offset: 0, as_of: crate::now_ms(), generation: None },
        };
        let empty = || Page { hits: Vec::new(), next: None, highlighter: Highlighter::none() };
        let Some((filters, permit)) = self.filters(query, workspace, allowed, page.as_of) else { return Ok(empty()) };
        let text = self.text_queries(query);
        if !query.terms.is_empty() && text.positive.is_empty() {
            // Every word was punctuation: nothing can match it.
            return Ok(empty());
        }
        let sort = if text.positive.is_empty() { Sort::Recent } else { sort };
        let mut clauses: Vec<(Occur, Box<dyn TantivyQuery>)> = Vec::new();
        clauses.extend(filters.into_iter().map(|f| (Occur::Must, zero_score(f))));
        clauses.extend(text.positive.into_iter().map(|q| (Occur::Must, q)));
        clauses.extend(text.negative.into_iter().map(|q| (Occur::MustNot, q)));
        let tantivy_query: Box<dyn TantivyQuery> =
            if clauses.is_empty() { Box::new(AllQuery) } else { Box::new(BooleanQuery::new(clauses)) };

        let searcher = self.searcher(page.generation);
        self.segments.forget_merged(&searcher);
        let ranked = self.rank(&searcher, tantivy_query.as_ref(), permit, sort, &page, limit)?;
        let more = ranked.len() > limit;
        let highlighter = Highlighter::new(self.fields.body, text.highlight, text.prefixes);
        let mut hits = Vec::with_capacity(limit);
        for (score, address) in ranked.into_iter().take(limit) {
            let segment = self.segments.of(searcher.segment_reader(address.segment_ord))?;
            hits.push(segment.hit(address.doc_id, score)?);
        }
        let generation = Some(searcher.generation().generation_id());
        let next = more.then(|| PageCursor { offset: page.offset + limit, as_of: page.as_of, generation }.encode());
        Ok(Page { hits, next, highlighter })
    }

    /// The generation `generation` of the index if it is still kept, else the latest (which is
    /// then kept for the pages after).
    fn searcher(&self, generation: Option<u64>) -> Searcher {
        let now = Instant::now();
        let mut pinned = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
        pinned.retain(|(_, _, at)| now.duration_since(*at) < PIN_FOR);
        if let Some((_, kept, _)) = generation.and_then(|g| pinned.iter().find(|(id, _, _)| *id == g)) {
            return kept.clone();
        }
        let latest = self.reader.searcher();
        let id = latest.generation().generation_id();
        if !pinned.iter().any(|(kept, _, _)| *kept == id) {
            pinned.push_back((id, latest.clone(), now));
            if pinned.len() > PINNED {
                pinned.pop_front();
            }
        }
        latest
    }

    /// The documents of one page (and one more, to tell whether another page follows), with
    /// their scores.
    fn rank(
        &self,
        searcher: &Searcher,
        query: &dyn TantivyQuery,
        permit: Permit,
        sort: Sort,
        page: &PageCursor,
        limit: usize,
    ) -> Result<Vec<(f32, DocAddress)>, SearchError> {
        let top = TopDocs::with_limit(limit + 1).and_offset(page.offset);
        match sort {
            Sort::Recent => {
                let newest = permit.wrap(&self.segments, top.order_by_fast_field::<i64>("ts", Order::Desc));
                let docs = searcher.search(query, &newest)?;
                Ok(docs.into_iter().map(|(_, address)| (0.0, address)).collect())
            }
            Sort::Relevance => {
                let as_of = page.as_of;
                let segments = self.segments.clone();
                let collector = top.tweak_score(move |segment: &SegmentReader| {
                    let ts = segments.of(segment).ok().map(|columns| columns.ts.clone());
                    move |doc, score| {
                        let posted = ts.as_ref().map_or(as_of, |c| c.get_val(doc));
                        blend(score, as_of.saturating_sub(posted))
                    }
                });
                Ok(searcher.search(query, &permit.wrap(&self.segments, collector))?)
            }
        }
    }

    /// The filters of a search: the queries of its operators, and the channels and times a
    /// hit must be in; `None` when they can match nothing (no channel left to look in, no
    /// author resolved).
    fn filters(
        &self,
        query: &Query,
        w: &WorkspaceId,
        allowed: &HashSet<ChannelId>,
        as_of: i64,
    ) -> Option<(Vec<Box<dyn TantivyQuery>>, Permit)> {
        let f = &self.fields;
        let mut channels: Vec<&ChannelId> = allowed.iter().collect();
        if !query.channels.is_empty() {
            let named: HashSet<&ChannelId> = query
                .channels
                .iter()
                .filter_map(|c| match c {
                    ChannelRef::Id(id) => Some(id),
                    ChannelRef::Name(_) => None,
                })
                .collect();
            channels.retain(|c| named.contains(c));
        }
        if channels.is_empty() {
            return None;
        }
        let mut rooms: Vec<String> = channels.into_iter().map(|c| room(w, c)).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let (from, until) = time_bounds(query, as_of);
        let permit = Permit { rooms: Arc::new(rooms), from, until };
        let mut filters: Vec<Box<dyn TantivyQuery>> = Vec::new();
        if !query.from.is_empty() {
            let authors: Vec<(Occur, Box<dyn TantivyQuery>)> = query
                .from
                .iter()
                .filter_map(|u| match u {
                    UserRef::Id(id) => Some(id),
                    UserRef::Handle(_) => None,
                })
                .map(|u| (Occur::Should, term(Term::from_field_text(f.author, u.as_str()))))
                .collect();
            if authors.is_empty() {
                return None;
            }
            filters.push(Box::new(BooleanQuery::new(authors)));
        }
        for (wanted, field) in [(query.has_file, f.has_file), (query.has_link, f.has_link), (query.is_thread, f.thread)]
        {
            if wanted {
                filters.push(term(Term::from_field_bool(field, true)));
            }
        }
        Some((filters, permit))
    }

    /// The tantivy queries of the query's words and phrases, and what to highlight.
    fn text_queries(&self, query: &Query) -> TextQueries {
        let mut out = TextQueries::default();
        let mut stemmed = analysis::text_analyzer();
        let mut unstemmed = analysis::prefix_analyzer();
        let f = &self.fields;
        for term in &query.terms {
            let terms = analysis::terms(&mut stemmed, term.text());
            let prefix = match term {
                QueryTerm::Prefix(_) => Some(analysis::terms(&mut unstemmed, term.text())),
                // A lone CJK character is indexed only inside bigrams: find those it begins.
                QueryTerm::Word(_) if is_lone_cjk(&terms) => Some(terms.clone()),
                _ => None,
            };
            // The word, or a word it begins.
            let mut either: Vec<Box<dyn TantivyQuery>> = Vec::new();
            either.extend(sequence(f.body, &terms));
            either.extend(prefix.as_ref().and_then(|p| prefix_sequence(f.words, p)));
            let matches: Box<dyn TantivyQuery> = match either.len() {
                0 => continue,
                1 => either.remove(0),
                _ => Box::new(BooleanQuery::new(either.into_iter().map(|q| (Occur::Should, q)).collect())),
            };
            out.highlight.extend(terms.into_iter().map(|(_, t)| t));
            if let Some((_, last)) = prefix.and_then(|mut p| p.pop()) {
                out.prefixes.push(last);
            }
            out.positive.push(matches);
        }
        for term in &query.excluded {
            let terms = analysis::terms(&mut stemmed, term.text());
            out.negative.extend(sequence(f.body, &terms));
        }
        out
    }
}

/// The text part of a search.
#[derive(Default)]
struct TextQueries {
    /// One query per word or phrase that must match.
    positive: Vec<Box<dyn TantivyQuery>>,
    /// One per word or phrase that must not.
    negative: Vec<Box<dyn TantivyQuery>>,
    /// The index terms of the positive words, to highlight.
    highlight: Vec<String>,
    /// The prefixes of words being typed, to highlight the words they begin.
    prefixes: Vec<String>,
}

/// The analysed terms as one term or a phrase, in `field`.
fn sequence(field: Field, terms: &[(usize, String)]) -> Option<Box<dyn TantivyQuery>> {
    match terms {
        [] => None,
        [(_, one)] => Some(Box::new(TermQuery::new(Term::from_field_text(field, one), IndexRecordOption::WithFreqs))),
        many => {
            let first = many[0].0;
            let terms = many.iter().map(|(p, t)| (p - first, Term::from_field_text(field, t))).collect();
            Some(Box::new(PhraseQuery::new_with_offset(terms)))
        }
    }
}

/// The word being typed, in the field of unstemmed `words` (see `analysis`): its parts in
/// order, each earlier part as the term that stands for it there, the last the beginning of a
/// word — one term when beginnings that long are indexed ([`analysis::gram`]), the terms of
/// the index it begins otherwise.
fn prefix_sequence(words: Field, unstemmed: &[(usize, String)]) -> Option<Box<dyn TantivyQuery>> {
    let ((_, last), parts) = unstemmed.split_last()?;
    let first = unstemmed[0].0;
    let mut terms: Vec<(usize, String)> =
        parts.iter().map(|(p, t)| (p - first, analysis::gram(t).unwrap_or_else(|| t.clone()))).collect();
    let last_at = unstemmed[unstemmed.len() - 1].0 - first;
    if let Some(gram) = analysis::gram(last) {
        terms.push((last_at, gram));
        return sequence(words, &terms);
    }
    terms.push((last_at, last.clone()));
    let terms = terms.into_iter().map(|(p, t)| (p, Term::from_field_text(words, &t))).collect();
    let mut query = PhrasePrefixQuery::new_with_offset(terms);
    query.set_max_expansions(MAX_PREFIX_EXPANSIONS);
    Some(Box::new(query))
}

fn is_lone_cjk(terms: &[(usize, String)]) -> bool {
    let [(_, t)] = terms else { return false };
    let mut chars = t.chars();
    matches!((chars.next(), chars.next()), (Some(c), None) if analysis::is_cjk(c))
}

/// A filter: it decides what matches and adds nothing to the score.
fn zero_score(query: Box<dyn TantivyQuery>) -> Box<dyn TantivyQuery> {
    Box::new(ConstScoreQuery::new(query, 0.0))
}

/// A query for one term of a filter field (no frequencies, no positions).
fn term(term: Term) -> Box<dyn TantivyQuery> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

/// Where a hit must be: in one of the channels the caller may read (as [`room`]s, sorted),
/// and posted within `from..=until` (ms).
#[derive(Clone)]
struct Permit {
    rooms: Arc<Vec<String>>,
    from: i64,
    until: i64,
}

impl Permit {
    /// `collector`, seeing only the documents this permits.
    fn wrap<C: Collector>(self, segments: &ColumnsBySegment, collector: C) -> Permitted<'_, C> {
        Permitted { permit: self, segments, inner: collector }
    }
}

/// The permission filter, applied to every document the query matches before it is ranked.
/// Per segment, the allowed rooms become a bit set of their term ordinals in the `room`
/// column ([`SegmentColumns::allowed`]); per document, one read of its ordinal and one bit (and
/// its time, unless the segment lies wholly within the time bounds). It stands in for `room ∈
/// allowed AND ts in range` clauses in the tantivy query, whose cost grew with the number of
/// channels (a term set built per search) and with the index (a range over every document).
struct Permitted<'a, C> {
    permit: Permit,
    segments: &'a ColumnsBySegment,
    inner: C,
}

impl<C: Collector> Collector for Permitted<'_, C> {
    type Fruit = C::Fruit;
    type Child = PermittedSegment<C::Child>;

    fn for_segment(&self, ordinal: u32, segment: &SegmentReader) -> tantivy::Result<Self::Child> {
        let columns = self.segments.of(segment)?;
        let (from, until) = (self.permit.from, self.permit.until);
        let within = columns.ts_range.0 >= from && columns.ts_range.1 <= until;
        Ok(PermittedSegment {
            allowed: columns.allowed(&self.permit.rooms)?,
            rooms: columns.rooms.as_ref().map(|(_, ords)| ords.clone()),
            ts: (!within).then(|| (columns.ts.clone(), from, until)),
            inner: self.inner.for_segment(ordinal, segment)?,
            block: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        self.inner.requires_scoring()
    }

    fn merge_fruits(&self, fruits: Vec<<C::Child as SegmentCollector>::Fruit>) -> tantivy::Result<C::Fruit> {
        self.inner.merge_fruits(fruits)
    }
}

/// Most rooms whose term ordinal a segment remembers (see [`SegmentColumns`]).
const ORDS_REMEMBERED: usize = 100_000;

/// What searches read of one segment — the permission filter, the ranking and the hits —
/// opened once per segment rather than once per search: its columns, and the term ordinals of
/// the rooms searches asked for so far (a lookup in the column's dictionary costs a
/// microsecond or two, times the caller's channels, times the segments). A segment never
/// changes once written, so neither does any of it.
struct SegmentColumns {
    /// The `room` column's dictionary and each document's term ordinal in it; `None` in a
    /// segment without documents.
    rooms: Option<(Arc<Dictionary>, Arc<dyn ColumnValues<u64>>)>,
    /// Each document's time, and the least and greatest.
    ts: Arc<dyn ColumnValues<i64>>,
    ts_range: (i64, i64),
    /// Each document's `seq`.
    seq: Arc<dyn ColumnValues<u64>>,
    /// Room → its term ordinal here (`None`: no document of that room).
    ords: std::sync::Mutex<HashMap<String, Option<u64>>>,
}

impl SegmentColumns {
    fn open(segment: &SegmentReader) -> tantivy::Result<SegmentColumns> {
        let fast = segment.fast_fields();
        let rooms = fast.str("room")?.map(|column| {
            let (dictionary, ords) = column.into_parts();
            (dictionary, dense(ords))
        });
        let ts = fast.i64("ts")?;
        let ts_range = (ts.min_value(), ts.max_value());
        let seq = dense(fast.u64("seq")?);
        Ok(SegmentColumns { rooms, ts: dense(ts), ts_range, seq, ords: std::sync::Mutex::new(HashMap::new()) })
    }

    /// The hit that document `doc` of this segment is.
    fn hit(&self, doc: DocId, score: f32) -> Result<Hit, SearchError> {
        let corrupt = || SearchError::Corrupt("a document without its room".into());
        let (dictionary, ords) = self.rooms.as_ref().ok_or_else(corrupt)?;
        let mut room = Vec::new();
        if !dictionary.ord_to_term(ords.get_val(doc), &mut room)? {
            return Err(corrupt());
        }
        let channel =
            std::str::from_utf8(&room).ok().and_then(|r| r.split_once('/')).and_then(|(_, c)| ChannelId::parse(c));
        let channel = channel.ok_or_else(corrupt)?;
        Ok(Hit { channel, seq: self.seq.get_val(doc), ts: self.ts.get_val(doc), score })
    }

    /// The bit set of the term ordinals of `rooms` in this segment.
    fn allowed(&self, rooms: &[String]) -> tantivy::Result<Vec<u64>> {
        let Some((dictionary, _)) = &self.rooms else { return Ok(Vec::new()) };
        let mut bits = vec![0u64; dictionary.num_terms().div_ceil(64)];
        let mut known = self.ords.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() > ORDS_REMEMBERED {
            known.clear();
        }
        for room in rooms {
            let ord = match known.get(room) {
                Some(ord) => *ord,
                None => {
                    let ord = dictionary.term_ord(room)?;
                    known.insert(room.clone(), ord);
                    ord
                }
            };
            if let Some(ord) = ord {
                bits[(ord / 64) as usize] |= 1 << (ord % 64);
            }
        }
        Ok(bits)
    }
}

/// The [`SegmentColumns`]s of the segments searches see, by segment; those of segments merged
/// away are dropped by the next search that no longer sees them.
#[derive(Default)]
struct ColumnsBySegment {
    by_segment: std::sync::Mutex<HashMap<SegmentId, Arc<SegmentColumns>>>,
}

impl ColumnsBySegment {
    fn of(&self, segment: &SegmentReader) -> tantivy::Result<Arc<SegmentColumns>> {
        let id = segment.segment_id();
        if let Some(columns) = self.by_segment.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(columns.clone());
        }
        let columns = Arc::new(SegmentColumns::open(segment)?);
        self.by_segment.lock().unwrap_or_else(PoisonError::into_inner).insert(id, columns.clone());
        Ok(columns)
    }

    /// Drops what it keeps of segments `searcher` no longer sees (merged away), if any.
    fn forget_merged(&self, searcher: &Searcher) {
        let segments = searcher.segment_readers();
        let mut by_segment = self.by_segment.lock().unwrap_or_else(PoisonError::into_inner);
        // Each segment searched adds its entry: more entries than segments means some are gone.
        if by_segment.len() > segments.len() {
            let live: HashSet<SegmentId> = segments.iter().map(|s| s.segment_id()).collect();
            by_segment.retain(|id, _| live.contains(id));
        }
    }
}

/// A column's values by document: read directly when every document has one (as every
/// document has its room and time), through the column's index otherwise.
fn dense<T: PartialOrd + Copy + std::fmt::Debug + Send + Sync + Default + 'static>(
    column: Column<T>,
) -> Arc<dyn ColumnValues<T>> {
    match column.index {
        ColumnIndex::Full => column.values,
        _ => column.first_or_default_col(T::default()),
    }
}

/// [`Permitted`] in one segment.
struct PermittedSegment<S> {
    /// Bit set of the term ordinals of the allowed rooms in this segment.
    allowed: Vec<u64>,
    /// Each document's room, as its term ordinal; `None` in a segment without documents.
    rooms: Option<Arc<dyn ColumnValues<u64>>>,
    /// Each document's time and the bounds, when some documents of the segment may be outside.
    ts: Option<(Arc<dyn ColumnValues<i64>>, i64, i64)>,
    inner: S,
    block: Vec<DocId>,
}

impl<S> PermittedSegment<S> {
    fn permits(&self, doc: DocId) -> bool {
        let Some(rooms) = &self.rooms else { return false };
        let ord = rooms.get_val(doc);
        let allowed = self.allowed.get((ord / 64) as usize).is_some_and(|word| word & (1 << (ord % 64)) != 0);
        allowed
            && self.ts.as_ref().is_none_or(|(ts, from, until)| {
                let t = ts.get_val(doc);
                t >= *from && t <= *until
            })
    }
}

impl<S: SegmentCollector> SegmentCollector for PermittedSegment<S> {
    type Fruit = S::Fruit;

    fn collect(&mut self, doc: DocId, score: Score) {
        if self.permits(doc) {
            self.inner.collect(doc, score);
        }
    }

    fn collect_block(&mut self, docs: &[DocId]) {
        let mut block = std::mem::take(&mut self.block);
        block.clear();
        block.extend(docs.iter().copied().filter(|&doc| self.permits(doc)));
        if !block.is_empty() {
            self.inner.collect_block(&block);
        }
        self.block = block;
    }

    fn harvest(self) -> S::Fruit {
        self.inner.harvest()
    }
}

/// The first and last ms a message may have been posted at: `before:` (the day's start,
/// exclusive), `after:` (the day's end, exclusive), `on:` (the day), and never after `as_of`.
fn time_bounds(query: &Query, as_of: i64) -> (i64, i64) {
    let day_start = |d: time::Date| d.midnight().assume_utc().unix_timestamp().saturating_mul(1000);
    let mut from = i64::MIN;
    let mut until = as_of;
    if let Some(d) = query.before {
        until = until.min(day_start(d) - 1);
    }
    if let Some(d) = query.after {
        from = from.max(day_start(d) + DAY_MS);
    }
    if let Some(d) = query.on {
        from = from.max(day_start(d));
        until = until.min(day_start(d) + DAY_MS - 1);
    }
    (from, until)
}

/// A BM25 score blended with the message's age (see the module's documentation).
fn blend(score: f32, age_ms: i64) -> f32 {
    let age = age_ms.max(0) as f32;
    score * (1.0 + RECENCY_WEIGHT * (-age / RECENCY_HALF_LIFE_MS).exp2())
}

/// What a page cursor holds (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PageCursor {
    offset: usize,
    as_of: i64,
    /// The generation of the index the first page was read from.
    generation: Option<u64>,
}

impl PageCursor {
    fn encode(&self) -> String {
        match self.generation {
            Some(g) => format!("{:x}.{:x}.{g:x}", self.offset, self.as_of),
            None => format!("{:x}.{:x}", self.offset, self.as_of),
        }
    }

    fn parse(s: &str) -> Option<PageCursor> {
        let mut parts = s.split('.');
        let (offset, as_of, generation) = (parts.next()?, parts.next()?, parts.next());
        let hex = |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.next().is_some() || !hex(offset) || !hex(as_of) || !generation.is_none_or(hex) {
            return None;
        }
        let offset = usize::from_str_radix(offset, 16).ok().filter(|o| *o <= MAX_OFFSET)?;
        let as_of = i64::from_str_radix(as_of, 16).ok().filter(|t| *t > 0)?;
        let generation = match generation {
            Some(g) => Some(u64::from_str_radix(g, 16).ok()?),
            None => None,
        };
        Some(PageCursor { offset, as_of, generation })
    }
}

/// Highlights the words of a search in its hits' text and file names: the terms its words
/// and phrases analyse to, and the words its word being typed begins (found in the text being
/// highlighted, and highlighted through their stem).
pub struct Highlighter {
    terms: BTreeMap<String, f32>,
    prefixes: Vec<String>,
    field: Option<Field>,
}

impl Highlighter {
    fn new(field: Field, terms: Vec<String>, prefixes: Vec<String>) -> Highlighter {
        Highlighter { terms: terms.into_iter().map(|t| (t, 1.0)).collect(), prefixes, field: Some(field) }
    }

    /// Highlights nothing.
    pub fn none() -> Highlighter {
        Highlighter { terms: BTreeMap::new(), prefixes: Vec::new(), field: None }
    }

    /// Where the search's words are in `text`: an excerpt around them, if any is there.
    pub fn snippet(&self, text: &str) -> Option<Snippet> {
        let field = self.field?;
        if text.is_empty() || (self.terms.is_empty() && self.prefixes.is_empty()) {
            return None;
        }
        let mut words = self.terms.clone();
        if !self.prefixes.is_empty() {
            let mut stemmer = analysis::text_analyzer();
            for (_, word) in analysis::terms(&mut analysis::prefix_analyzer(), text) {
                if self.prefixes.iter().any(|p| word.starts_with(p.as_str())) {
                    for (_, stem) in analysis::terms(&mut stemmer, &word) {
                        words.insert(stem, 1.0);
                    }
                }
            }
        }
        let s = SnippetGenerator::new(words, analysis::text_analyzer(), field, SNIPPET_CHARS).snippet(text);
        if s.highlighted().is_empty() {
            return None;
        }
        Some(Snippet {
            fragment: s.fragment().to_string(),
            offset: s.fragment_range().start,
            highlights: s.highlighted().to_vec(),
        })
    }
}

/// What the last commit recorded in its payload.
#[derive(Debug, Default, PartialEq)]
struct Payload {
    /// The position of the last feed event the commit covers.
    cursor: Option<Position>,
    /// See [`WriterState::rebuilt_until`]; only while the cursor is before it.
    rebuilt_until: Option<Position>,
}

impl Payload {
    /// `CURSOR`, or `CURSOR REBUILT_UNTIL` while the cursor is before the end of a rebuild.
    fn encode(cursor: &Position, rebuilt_until: Option<Position>) -> String {
        match rebuilt_until {
            Some(until) if until > *cursor => format!("{} {}", feed::cursor(cursor), feed::cursor(&until)),
            _ => feed::cursor(cursor).to_string(),
        }
    }

    fn parse(payload: &str) -> Option<Payload> {
        let mut parts = payload.split(' ');
        let cursor = feed::parse_cursor(parts.next()?)?;
        let rebuilt_until = match parts.next() {
            None => None,
            Some(until) => Some(feed::parse_cursor(until)?),
        };
        parts.next().is_none().then_some(Payload { cursor: Some(cursor), rebuilt_until })
    }
}

/// The last commit's payload.
fn read_payload(index: &Index) -> Result<Payload, SearchError> {
    match index.load_metas()?.payload {
        None => Ok(Payload::default()),
        Some(payload) => Payload::parse(&payload)
            .ok_or_else(|| SearchError::Corrupt("the index's commit payload is not a feed cursor".into())),
    }
}

/// The cursor in a commit's payload.
fn read_cursor(index: &Index) -> Result<Option<Position>, SearchError> {
    Ok(read_payload(index)?.cursor)
}

/// Exclusive access to the index's writer (see [`SearchIndex::writer`]). Its methods block:
/// call them off the async runtime, e.g. in [`Writer::run`].
pub struct Writer {
    state: OwnedMutexGuard<WriterState>,
    reader: IndexReader,
    index: Index,
    fields: Fields,
    searchable: Searchable,
}

impl Writer {
    /// Runs `work` with this writer on a blocking thread and hands the writer back with what
    /// `work` answered. On an error the writer is dropped: the exclusive section ends, and the
    /// next holder rolls back whatever `work` left uncommitted (see `WriterState::dirty`).
    pub async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce(&mut Writer) -> Result<T, SearchError> + Send + 'static,
    ) -> Result<(Writer, T), SearchError> {
        let joined = tokio::task::spawn_blocking(move || {
            let mut writer = self;
            work(&mut writer).map(|done| (writer, done))
        })
        .await;
        joined.map_err(|e| SearchError::Io(format!("an index task failed: {e}")))?
    }

    /// Indexes `message` of workspace `w`, replacing any earlier version; a deleted message is
    /// removed instead.
    pub fn put(&mut self, w: &WorkspaceId, message: &Message) -> Result<(), SearchError> {
        self.delete(w, &message.channel, message.seq);
        self.add(w, message)
    }

    /// Indexes the new `message` of workspace `w` from its `message` event at `at` in the
    /// feed: added, since the index cannot hold it yet, unless a rebuild may have indexed it
    /// (see the module's documentation).
    pub fn post(&mut self, w: &WorkspaceId, message: &Message, at: &Position) -> Result<(), SearchError> {
        if self.state.rebuilt_until.is_some_and(|until| *at <= until) {
            return self.put(w, message);
        }
        self.state.dirty = true;
        self.add(w, message)
    }

    /// Records that a rebuild read the store up to `until` of the feed (its head after the
    /// rebuild's last read): messages posted up to there are replaced when their event comes.
    pub fn rebuilt_until(&mut self, until: Position) {
        self.state.rebuilt_until = Some(until);
    }

    /// Adds `message`'s document, if it is not deleted.
    fn add(&mut self, w: &WorkspaceId, message: &Message) -> Result<(), SearchError> {
        if message.deleted {
            return Ok(());
        }
        let f = &self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.key, key(w, &message.channel, message.seq));
        doc.add_text(f.room, room(w, &message.channel));
        doc.add_u64(f.seq, message.seq);
        doc.add_text(f.author, message.user.as_str());
        doc.add_i64(f.ts, message.ts);
        doc.add_bool(f.thread, message.thread_root.is_some() || message.reply_count > 0);
        doc.add_bool(f.has_file, !message.files.is_empty());
        doc.add_bool(f.has_link, analysis::has_link(&message.text));
        for value in std::iter::once(&message.text).chain(message.files.iter().map(|file| &file.name)) {
            doc.add_text(f.body, value);
            doc.add_text(f.words, value);
        }
        self.state.writer.add_document(doc)?;
        Ok(())
    }

    /// Removes the message `seq` of channel `c` of workspace `w`, if indexed.
    pub fn delete(&mut self, w: &WorkspaceId, c: &ChannelId, seq: Seq) {
        self.state.dirty = true;
        self.state.writer.delete_term(Term::from_field_text(self.fields.key, &key(w, c, seq)));
    }

    /// Removes every document: the start of a rebuild.
    pub fn clear(&mut self) -> Result<(), SearchError> {
        self.state.dirty = true;
        self.state.writer.delete_all_documents()?;
        Ok(())
    }

    /// The feed position of the last commit.
    pub fn cursor(&self) -> Result<Option<Position>, SearchError> {
        read_cursor(&self.index)
    }

    /// The feed position the index covers with its finished changes, committed or not.
    pub fn covered(&self) -> Result<Option<Position>, SearchError> {
        match self.state.pending {
            Some(p) => Ok(Some(p)),
            None => self.cursor(),
        }
    }

    /// Marks the changes so far as finished, bringing the index up to `position` of the feed;
    /// they stay with the writer, for its next holder, until a commit (or a rollback).
    pub fn covers(&mut self, position: Position) {
        self.state.dirty = false;
        self.state.pending = Some(position);
    }

    /// Whether finished changes wait for a commit.
    pub fn has_pending(&self) -> bool {
        self.state.pending.is_some()
    }

    /// How long ago the index last committed (or was opened).
    pub fn since_commit(&self) -> Duration {
        self.state.committed_at.elapsed()
    }

    /// Makes every change so far durable and visible to searches, recording that the index
    /// now covers the feed up to `covers` (kept in the commit's payload).
    pub fn commit(&mut self, covers: &Position) -> Result<(), SearchError> {
        let payload = Payload::encode(covers, self.state.rebuilt_until);
        let mut prepared = self.state.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.state.dirty = false;
        self.state.pending = None;
        self.state.committed_at = Instant::now();
        self.state.rebuilt_until = self.state.rebuilt_until.filter(|until| until > covers);
        self.reader.reload()?;
        *self.searchable.lock().unwrap_or_else(PoisonError::into_inner) = Some(*covers);
        Ok(())
    }

    /// Commits the finished changes, if any wait.
    pub fn commit_pending(&mut self) -> Result<bool, SearchError> {
        match self.state.pending {
            Some(covers) => self.commit(&covers).map(|()| true),
            None => Ok(false),
        }
    }

    /// Drops every change since the last commit, finished or not.
    pub fn rollback(&mut self) -> Result<(), SearchError> {
        self.state.writer.rollback()?;
        self.state.dirty = false;
        self.state.pending = None;
        self.state.rebuilt_until = read_payload(&self.index)?.rebuilt_until;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_cursors_round_trip_and_refuse_garbage() {
        let c = PageCursor { offset: 40, as_of: 1_700_000_000_000, generation: None };
        assert_eq!(PageCursor::parse(&c.encode()), Some(c));
        let c = PageCursor { offset: 40, as_of: 1_700_000_000_000, generation: Some(7) };
        assert_eq!(PageCursor::parse(&c.encode()), Some(c));
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "x.1",
            "1.-5",
            "1.0",
            &format!("{:x}.1", MAX_OFFSET + 1),
            "1.1.1.1",
            "1.1.",
            "1.1.x",
            "+1.1",
        ] {
            assert_eq!(PageCursor::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn commit_payloads_round_trip_and_refuse_garbage() {
        let at = |n: u8| {
            let mut p = feed::START;
            p[11] = n;
            p
        };
        let plain = Payload::encode(&at(5), None);
        assert_eq!(Payload::parse(&plain), Some(Payload { cursor: Some(at(5)), rebuilt_until: None }));
        let rebuilding = Payload::encode(&at(5), Some(at(9)));
        assert_eq!(Payload::parse(&rebuilding), Some(Payload { cursor: Some(at(5)), rebuilt_until: Some(at(9)) }));
        // Once the cursor reaches the end of the rebuild, it is no longer recorded.
        assert_eq!(Payload::encode(&at(9), Some(at(9))), Payload::encode(&at(9), None));
        for bad in ["", " ", "x", &format!("{plain} "), &format!("{plain} x"), &format!("{rebuilding} {plain}")] {
            assert_eq!(Payload::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn recency_blends_into_relevance() {
        let month = 30 * DAY_MS;
        assert!((blend(1.0, 0) - 2.0).abs() < 1e-6);
        assert!((blend(1.0, month) - 1.5).abs() < 1e-3);
        assert!(blend(1.0, 100 * month) < 1.001);
        // Relevance still wins over age: twice the score beats a year's difference.
        assert!(blend(2.0, 12 * month) > blend(1.0, 0) * 0.99);
    }

    #[test]
    fn dates_bound_the_time_range() {
        let q = crate::search::query::parse("on:2024-01-02").unwrap();
        let start = 1_704_153_600_000; // 2024-01-02T00:00:00Z
        assert_eq!(time_bounds(&q, i64::MAX), (start, start + DAY_MS - 1));
        let q = crate::search::query::parse("after:2024-01-02 before:2024-01-05").unwrap();
        assert_eq!(time_bounds(&q, i64::MAX), (start + DAY_MS, start + 3 * DAY_MS - 1));
        let q = crate::search::query::parse("x").unwrap();
        assert_eq!(time_bounds(&q, 77), (i64::MIN, 77));
    }
}
