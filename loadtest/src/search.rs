//! The `search` scenario: full-text search (ARCHITECTURE §8 "Search") over a realistic corpus
//! ([`crate::corpus`]), against PostgreSQL's full-text search on the same corpus, in one run.
//!
//! 1. **Load.** An origin starts in this process (embedded store, fsync on, in a temporary
//!    directory) with search off; a workspace gets `--users` users, `--channels` private
//!    channels (the searcher created `--member-of` of them and is a member of those only) and
//!    each channel its authors as members. Then `--messages` messages are sent through the
//!    sequencer, as their authors, `--send-concurrency` at once: they are durable in the store
//!    and in the feed, with their seq and timestamp, as any message. The origin stops.
//! 2. **Indexing.** The origin starts again on the same data with search on, as deployed
//!    (`--writer-memory-mib`, `--writer-threads`, `--batch-size` set its `[search]` and
//!    `[consumers]` options): its feed consumer `search` starts at the oldest event and indexes
//!    the whole feed. Measured: from the origin's start to the commit that makes the last
//!    message searchable (messages per second), and the index's size on disk then.
//! 3. **Queries.** `--searchers` searchers, all the same user, each sending
//!    `GET /v1/search?q=…&limit=20` to that origin over loopback HTTP (keep-alive connections),
//!    waiting for the answer and searching again, for `--duration` (closed loop), cycling
//!    through `--queries` fixed queries of every kind ([`crate::corpus::QueryKind`]). The origin
//!    does all a search does: authenticate the token, parse, resolve `from:`/`in:` names, the
//!    channels the user may read, the tantivy search (relevance, snippets), every hit re-read
//!    and re-checked in the store, JSON. Every hit's channel is checked against the user's
//!    readable channels; a hit outside them fails the run.
//! 4. **The peer**, with `--postgres CONNINFO`: the same messages (same ids, seqs and
//!    timestamps) loaded into PostgreSQL with a `tsvector` column and a GIN index, and the same
//!    queries with the same permission filter, from `--searchers` connections, closed loop
//!    ([`postgres`]).
//!
//! The messages carry the timestamps the sequencer gave them (the minutes of the load, not
//! months): the real path cannot backdate a message. Ranking costs the same either way (the
//! recency blend is computed for every hit whatever its age).

pub mod postgres;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use clap::Args;
use futures::{stream, StreamExt};
use hdrhistogram::Histogram;
use selvage_origin::{accounts, search, Actor, Origin, OriginConfig};
use selvage_shared::{ChannelId, SearchPage};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    corpus::{self, Corpus, QueryKind},
    report::{latency_histogram, Latency},
    sends::parse_duration,
};

/// Hits asked for per search, as a search box's first page.
pub const PAGE: usize = 20;

/// Store transactions in flight at once while the workspace is seeded.
const SEED_CONCURRENCY: usize = 32;

/// `selvage loadtest search` arguments.
#[derive(Args, Clone, Debug)]
pub struct SearchArgs {
    /// Messages in the corpus, all indexed.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Private channels the messages are spread over (Zipf: a few busy, many quiet).
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Channels the searcher is a member of, and so may find messages in (plus `#general`).
    #[arg(long, default_value_t = 50)]
    pub member_of: usize,
    /// Users who write the messages (each channel has 8 of them as members).
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// The corpus's and the queries' seed: the same seed, the same messages and queries.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Sends in flight at once while the corpus is loaded.
    #[arg(long, default_value_t = 4096)]
    pub send_concurrency: usize,
    /// Events per batch of the `search` consumer [default: the origin's
    /// `consumers.batch_size`].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// The index writer's memory budget, MiB (the origin's `search.writer_memory_mib`).
    #[arg(long, default_value_t = 64)]
    pub writer_memory_mib: usize,
    /// The index writer's threads (the origin's `search.writer_threads`).
    #[arg(long, default_value_t = 1)]
    pub writer_threads: usize,
    /// Searches the origin lets read its index at once; the rest wait in line (the origin's
    /// `search.max_concurrent`; 0: one per CPU core).
    #[arg(long, default_value_t = 0)]
    pub search_concurrency: usize,
    /// Searchers at once, all the same user, each waiting for its answer (closed loop).
    #[arg(long, default_value_t = 16)]
    pub searchers: usize,
    /// How long the searchers search, on each system (`30s`, `1m`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Distinct queries, cycling through the kinds (words, phrase, from:, in:, prefix, CJK).
    #[arg(long, default_value_t = 400)]
    pub queries: usize,
    /// The peer: a PostgreSQL server's connection string (`host=127.0.0.1 port=5432
    /// user=postgres dbname=postgres`), whose database gets a `messages` table (dropped first
    /// if there). Without it, the peer is skipped.
    #[arg(long, env = "SELVAGE_SEARCH_PEER")]
    pub postgres: Option<String>,
    /// The peer's text search configuration: `english` (stemming and stop words, like
    /// Selvage's analysis) or `simple`.
    #[arg(long, default_value = "english")]
    pub postgres_config: String,
    /// Data directory of the origin and its index [default: a temporary directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct SearchReport {
    /// Messages generated.
    pub messages: u64,
    /// Channels they are spread over.
    pub channels: usize,
    /// Channels the searcher may read (its private channels and `#general`).
    pub readable_channels: usize,
    /// The corpus's seed.
    pub seed: u64,
    /// How messages reached the index and how queries reached it.
    pub path: String,
    /// The corpus sent through the sequencer.
    pub load: LoadReport,
    /// The `search` consumer indexing the feed.
    pub indexing: IndexingReport,
    /// The searchers against Selvage.
    pub queries: QueriesReport,
    /// The PostgreSQL peer; absent when skipped.
    pub postgres: Option<postgres::PeerReport>,
    /// Why the peer was skipped.
    pub postgres_skipped: Option<String>,
    /// Selvage ÷ PostgreSQL; absent without the peer.
    pub ratios: Option<Ratios>,
}

/// Sending the corpus.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    /// Messages acknowledged by the sequencer.
    pub sent: u64,
    /// Failed sends (must be 0).
    pub failed: u64,
    /// Seconds of sending.
    pub seconds: f64,
    /// Acknowledged sends per second.
    pub per_sec: f64,
}

/// The index built by the consumer.
#[derive(Debug, Serialize)]
pub struct IndexingReport {
    /// Messages in the index at the end (must equal the messages sent).
    pub indexed: u64,
    /// From the indexing origin's start to the commit covering the last message.
    pub seconds: f64,
    /// Messages indexed per second.
    pub per_sec: f64,
    /// The index's files, bytes.
    pub index_bytes: u64,
    /// Events per consumer batch.
    pub batch_size: usize,
    /// The writer's memory budget, MiB.
    pub writer_memory_mib: usize,
    /// The writer's threads.
    pub writer_threads: usize,
    /// Commits of the index while it was built.
    pub commits: u64,
    /// Segments searched once merges settled.
    pub segments: usize,
    /// How long after the last commit the merges took to settle (see [`settle`]).
    pub settle_seconds: f64,
}

/// A closed loop of searchers.
#[derive(Debug, Serialize)]
pub struct QueriesReport {
    /// Searchers at once.
    pub searchers: usize,
    /// Distinct queries cycled through.
    pub distinct: usize,
    /// Seconds of searching.
    pub seconds: f64,
    /// Searches answered.
    pub answered: u64,
    /// Searches answered per second.
    pub per_sec: f64,
    /// Searches that failed, and the first failure.
    pub failed: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Hits returned, over all searches.
    pub hits: u64,
    /// Searches with no hit.
    pub empty: u64,
    /// Hits in a channel the searcher may not read (must be 0).
    pub forbidden_hits: u64,
    /// Search → answer.
    pub latency: Latency,
    /// The same by kind of query.
    pub by_kind: BTreeMap<String, KindReport>,
}

/// One kind of query.
#[derive(Debug, Serialize)]
pub struct KindReport {
    /// Searches answered.
    pub answered: u64,
    /// Mean hits per search (at most [`PAGE`]).
    pub mean_hits: f64,
    /// Search → answer.
    pub latency: Latency,
}

/// Selvage ÷ PostgreSQL (above 1: Selvage is better, for times the inverse is taken).
#[derive(Debug, Serialize)]
pub struct Ratios {
    /// Messages indexed per second ÷ the peer's rows loaded and indexed per second.
    pub indexing: f64,
    /// Searches per second ÷ the peer's.
    pub query_throughput: f64,
    /// The peer's p50 ÷ Selvage's.
    pub p50: f64,
    /// The peer's p99 ÷ Selvage's.
    pub p99: f64,
    /// Selvage's index bytes ÷ the peer's table and indexes.
    pub size: f64,
}

/// Runs the scenario and prints the report.
pub async fn run(args: SearchArgs) -> Result<()> {
    let report = measure(&args).await?;
    crate::report::emit(&report, args.json, print_report)?;
    if report.indexing.indexed != report.load.sent {
        bail!("{} messages sent but {} indexed", report.load.sent, report.indexing.indexed);
    }
    let forbidden = report.queries.forbidden_hits + report.postgres.as_ref().map_or(0, |p| p.queries.forbidden_hits);
    if forbidden > 0 {
        bail!("{forbidden} hits in channels the searcher may not read");
    }
    Ok(())
}

fn print_report(r: &SearchReport) {
    println!(
        "selvage loadtest search — {} messages in {} private channels, a searcher in {} of them; seed {}",
        r.messages, r.channels, r.readable_channels, r.seed
    );
    println!("  path             {}", r.path);
    let l = &r.load;
    println!("  corpus sent      {} in {:.1} s = {:.0} messages/s ({} failed)", l.sent, l.seconds, l.per_sec, l.failed);
    let i = &r.indexing;
    println!(
        "  indexed          {} in {:.1} s = {:.0} messages/s; index {:.1} MiB in {} segments, merged {:.0} s later ({} commits, batches of {}, writer {} MiB × {} thread)",
        i.indexed,
        i.seconds,
        i.per_sec,
        mib(i.index_bytes),
        i.segments,
        i.settle_seconds,
        i.commits,
        i.batch_size,
        i.writer_memory_mib,
        i.writer_threads
    );
    print_queries("Selvage", &r.queries);
    match (&r.postgres, &r.postgres_skipped) {
        (Some(p), _) => {
            println!(
                "  PostgreSQL       {} ({}): loaded and indexed {} rows in {:.1} s = {:.0} rows/s; table {:.1} MiB, \
                 GIN index {:.1} MiB, total {:.1} MiB",
                p.version,
                p.text_search_config,
                p.rows,
                p.load_seconds,
                p.load_per_sec,
                mib(p.table_bytes),
                mib(p.gin_bytes),
                mib(p.total_bytes)
            );
            print_queries("PostgreSQL", &p.queries);
        }
        (None, Some(why)) => println!("  PostgreSQL       skipped: {why}"),
        (None, None) => {}
    }
    if let Some(x) = &r.ratios {
        println!(
            "  Selvage ÷ PostgreSQL: indexing {:.2}×, query throughput {:.2}×, p50 {:.2}× faster, p99 {:.2}× faster; \
             size {:.2}× of PostgreSQL's table and indexes",
            x.indexing, x.query_throughput, x.p50, x.p99, x.size
        );
    }
}

fn print_queries(who: &str, q: &QueriesReport) {
    println!(
        "  {who:<16} {} searchers, {} queries, {:.1} s: {} answered = {:.0}/s; {} failed; {} hits ({} searches empty); \
         {} forbidden hits",
        q.searchers, q.distinct, q.seconds, q.answered, q.per_sec, q.failed, q.hits, q.empty, q.forbidden_hits
    );
    println!("    latency        {}", q.latency);
    for (kind, k) in &q.by_kind {
        println!(
            "    {kind:<14} p50 {:>7.2} ms  p99 {:>7.2} ms  {:>7} answered, {:>5.1} hits each",
            k.latency.p50_ms, k.latency.p99_ms, k.answered, k.mean_hits
        );
    }
    if let Some(e) = &q.first_error {
        println!("    first error    {e}");
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The ids the origin gave the corpus's users and channels, and the searcher.
pub struct Seeded {
    /// The workspace.
    pub workspace: String,
    /// User index → the user's actor.
    pub users: Vec<Actor>,
    /// Channel index → the channel's id.
    pub channels: Vec<ChannelId>,
    /// The searcher (a member of the first `--member-of` channels).
    pub searcher: Actor,
    /// The channels the searcher may read: their ids, and the indexes of those in the corpus.
    pub readable: HashSet<String>,
    /// The corpus's channels among them.
    pub readable_indexes: Vec<usize>,
}

/// A message as the sequencer acknowledged it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acked {
    /// Its seq in its channel.
    pub seq: u64,
    /// Its timestamp, ms.
    pub ts: i64,
}

/// Runs the phases and summarises.
pub async fn measure(args: &SearchArgs) -> Result<SearchReport> {
    if args.messages == 0 || args.channels == 0 || args.searchers == 0 || args.queries == 0 {
        bail!("--messages, --channels, --searchers and --queries must be at least 1");
    }
    if args.member_of == 0 || args.member_of > args.channels {
        bail!("--member-of must be between 1 and --channels");
    }
    let (dir, _tempdir) = crate::report::data_dir(&args.data_dir)?;
    let corpus = Arc::new(Corpus::new(args.seed, args.channels, args.users));
    let mut config =
        OriginConfig { listen: "127.0.0.1:0".parse()?, data_dir: dir.join("origin"), ..OriginConfig::default() };
    config.rate_limits.enabled = false;
    if let Some(b) = args.batch_size {
        config.consumers.batch_size = b;
    }
    config.search.writer_memory_mib = args.writer_memory_mib;
    config.search.writer_threads = args.writer_threads;
    config.search.max_concurrent = args.search_concurrency;
    // Search alone: the notification service would follow the same feed.
    config.notify.enabled = false;
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;

    // Loading, with search off: the corpus is in the store and the feed before any indexer
    // runs, so that indexing is timed alone.
    let mut loading = config.clone();
    loading.search.enabled = false;
    let shutdown = CancellationToken::new();
    let running = selvage_origin::start(loading, shutdown.clone()).await?;
    let loaded = load(args, &running.origin, &corpus).await;
    shutdown.cancel();
    running.wait().await;
    let (seeded, load, acked) = loaded?;

    // The origin again on the same data, as deployed: its indexer starts at the oldest event.
    eprintln!("indexing: the origin restarted with search on; its consumer `search` from the oldest event");
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = selvage_origin::start(config, shutdown.clone()).await?;
    let result = search_phases(args, &running, &corpus, Loaded { seeded, load, acked, started }).await;
    shutdown.cancel();
    running.wait().await;
    result
}

/// What the loading phase left.
struct Loaded {
    seeded: Arc<Seeded>,
    load: LoadReport,
    acked: Vec<Acked>,
    /// When the origin that indexes was started.
    started: Instant,
}

/// Seeds the workspace and sends the corpus.
async fn load(
    args: &SearchArgs,
    origin: &Arc<Origin>,
    corpus: &Arc<Corpus>,
) -> Result<(Arc<Seeded>, LoadReport, Vec<Acked>)> {
    eprintln!("seeding: {} users, {} private channels and their members", args.users, args.channels);
    let seeded = Arc::new(seed(origin, corpus, args).await?);
    eprintln!("loading: {} messages through the sequencer, {} at once", args.messages, args.send_concurrency);
    let (load, acked) = send_corpus(origin, corpus, &seeded, args).await?;
    Ok((seeded, load, acked))
}

async fn search_phases(
    args: &SearchArgs,
    running: &selvage_origin::Running,
    corpus: &Arc<Corpus>,
    loaded: Loaded,
) -> Result<SearchReport> {
    let Loaded { seeded, load, acked, started } = loaded;
    let origin = &running.origin;
    let Some(search) = origin.search.as_ref() else { bail!("the origin started without search") };
    let index = search.index().clone();
    let progress = count_progress("messages indexed", load.sent, {
        let index = index.clone();
        move || index.len()
    });
    // An indexer that fails keeps retrying its batch: give up when nothing moves for a while.
    let (mut seen, mut moved) = (index.len(), Instant::now());
    while index.len() < load.sent {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if index.len() != seen {
            (seen, moved) = (index.len(), Instant::now());
        } else if moved.elapsed() > STALLED {
            bail!(
                "indexing stalled at {seen} of {} messages for {} s (see the origin's log)",
                load.sent,
                STALLED.as_secs()
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    let commits = origin.metrics.search_index_commits.get();
    let (segments, settle_seconds) = settle(&index).await;
    let indexing = IndexingReport {
        indexed: index.len(),
        seconds,
        per_sec: index.len() as f64 / seconds,
        index_bytes: dir_bytes(&origin.config.data_dir.join("search")),
        segments,
        settle_seconds,
        batch_size: origin.config.consumers.batch_size,
        writer_memory_mib: args.writer_memory_mib,
        writer_threads: args.writer_threads,
        commits,
    };

    let queries = corpus.queries(args.queries, &seeded.readable_indexes, args.messages);
    let specs: Arc<Vec<(QueryKind, String)>> = Arc::new(queries.iter().map(|q| (q.kind, q.selvage())).collect());
    let searcher = Arc::new(SelvageSearcher::new(running.addr, seeded.searcher.token(), args.searchers)?);
    eprintln!("queries: {} searchers against Selvage for {:.0} s", args.searchers, args.duration.as_secs_f64());
    let texts = specs.clone();
    let selvage = closed_loop(args, &specs, &seeded.readable, move |_, k| {
        let (searcher, texts) = (searcher.clone(), texts.clone());
        async move { searcher.search(&texts[k].1).await }
    })
    .await;

    let (peer, skipped) = match &args.postgres {
        None => (None, Some("no --postgres connection string given".to_string())),
        Some(conninfo) => {
            let peer = postgres::run(conninfo, args, corpus, &seeded, &acked, &queries).await?;
            (Some(peer), None)
        }
    };
    let ratios = peer.as_ref().map(|p| Ratios {
        indexing: indexing.per_sec / p.load_per_sec,
        query_throughput: selvage.per_sec / p.queries.per_sec,
        p50: p.queries.latency.p50_ms / selvage.latency.p50_ms,
        p99: p.queries.latency.p99_ms / selvage.latency.p99_ms,
        size: indexing.index_bytes as f64 / p.total_bytes as f64,
    });
    Ok(SearchReport {
        messages: args.messages,
        channels: args.channels,
        readable_channels: seeded.readable.len(),
        seed: args.seed,
        path: format!(
            "messages: sequencer → store and feed; the origin restarted with search on → its consumer `search` \
             → tantivy; queries: GET /v1/search over loopback HTTP/1.1 (keep-alive), as a client sends them, \
             {} at once reading the index",
            match args.search_concurrency {
                0 => "one per core".to_string(),
                n => n.to_string(),
            }
        ),
        load,
        indexing,
        queries: selvage,
        postgres: peer,
        postgres_skipped: skipped,
        ratios,
    })
}

/// Creates the workspace, its users, the private channels and their members.
async fn seed(origin: &Arc<Origin>, corpus: &Corpus, args: &SearchArgs) -> Result<Seeded> {
    let (workspace, admin) = origin.create_workspace("search loadtest", "admin", "Admin").await?;
    let searcher = origin.create_user(&admin, "searcher", "Searcher").await?;
    let users: Vec<Actor> = stream::iter(0..args.users.max(corpus::AUTHORS_PER_CHANNEL))
        .map(|u| {
            let (origin, admin) = (origin.clone(), admin.clone());
            async move { origin.create_user(&admin, &corpus::handle(u), &format!("User {u}")).await }
        })
        .buffered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let admin_caller = accounts::authenticate(&origin.store, admin.token()).await?;
    let searcher_caller = accounts::authenticate(&origin.store, searcher.token()).await?;
    let channels: Vec<ChannelId> = stream::iter(0..args.channels)
        .map(|c| {
            let origin = origin.clone();
            let (creator, caller) = if c < args.member_of {
                (searcher.clone(), searcher_caller.clone())
            } else {
                (admin.clone(), admin_caller.clone())
            };
            let authors: Vec<_> = corpus.authors(c).into_iter().map(|u| users[u].user().id.clone()).collect();
            async move {
                let channel = origin.create_channel(&creator, &corpus::channel_name(c), true).await?;
                for author in &authors {
                    selvage_origin::channels::add_member(&origin.store, &caller, &channel.id, author).await?;
                }
                anyhow::Ok(channel.id)
            }
        })
        .buffered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let readable: HashSet<String> =
        search::readable_channels(&origin.store, &searcher_caller).await?.into_iter().map(|c| c.to_string()).collect();
    let readable_indexes = (0..args.channels).filter(|&c| readable.contains(channels[c].as_str())).collect();
    Ok(Seeded { workspace: workspace.id.to_string(), users, channels, searcher, readable, readable_indexes })
}

/// Sends every message of the corpus as its author; answers the report and each message's
/// seq and timestamp, by index.
async fn send_corpus(
    origin: &Arc<Origin>,
    corpus: &Arc<Corpus>,
    seeded: &Arc<Seeded>,
    args: &SearchArgs,
) -> Result<(LoadReport, Vec<Acked>)> {
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let progress = count_progress("messages sent", args.messages, {
        let sent = sent.clone();
        move || sent.load(Ordering::Relaxed)
    });
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.send_concurrency);
    for _ in 0..args.send_concurrency.max(1) {
        let (origin, corpus, seeded, next, sent, first_error) =
            (origin.clone(), corpus.clone(), seeded.clone(), next.clone(), sent.clone(), first_error.clone());
        let total = args.messages;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let m = corpus.message(i);
                let channel = &seeded.channels[m.channel];
                match origin.send(&seeded.users[m.author], channel, &m.text, format!("corpus-{i}")).await {
                    Ok(s) => {
                        acked.push((i, Acked { seq: s.message.seq, ts: s.message.ts }));
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert_with(|| format!("message {i}: {e}"));
                        }
                    }
                }
            }
            acked
        }));
    }
    let mut acked = vec![Acked::default(); args.messages as usize];
    for t in tasks {
        for (i, a) in t.await? {
            acked[i as usize] = a;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    let sent = sent.load(Ordering::Relaxed);
    if sent < args.messages {
        let why = first_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
        bail!("{} of {} sends failed; the first: {why}", args.messages - sent, args.messages);
    }
    Ok((LoadReport { sent, failed: 0, seconds, per_sec: sent as f64 / seconds }, acked))
}

/// Waits until the index's merges in the background have settled — the segments searched
/// unchanged for [`SETTLE`], at most [`SETTLE_MAX`] — so that queries are measured on the
/// index as it stays, not while merges compete with them for the CPU (PostgreSQL's queries,
/// likewise, run after its index is built and analysed). Answers the segments and the wait.
async fn settle(index: &selvage_origin::search::SearchIndex) -> (usize, f64) {
    let started = Instant::now();
    let mut segments = index.segments();
    let mut since = Instant::now();
    while since.elapsed() < SETTLE && started.elapsed() < SETTLE_MAX {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = index.segments();
        if now != segments {
            (segments, since) = (now, Instant::now());
        }
    }
    eprintln!("merges settled: {segments} segments after {:.1} s", started.elapsed().as_secs_f64());
    (segments, started.elapsed().as_secs_f64())
}

/// How long indexing may make no progress before the run fails.
const STALLED: Duration = Duration::from_secs(120);
/// How long the segments must stay the same to count as settled.
const SETTLE: Duration = Duration::from_secs(5);
/// Longest wait for merges to settle.
const SETTLE_MAX: Duration = Duration::from_secs(180);

/// Searches Selvage as one user, over HTTP.
struct SelvageSearcher {
    http: reqwest::Client,
    url: String,
    authorization: String,
}

impl SelvageSearcher {
    fn new(addr: std::net::SocketAddr, token: &str, connections: usize) -> Result<SelvageSearcher> {
        let http = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
        Ok(SelvageSearcher { http, url: format!("http://{addr}/v1/search"), authorization: format!("Bearer {token}") })
    }

    /// `GET /v1/search?q=…&limit=20` (relevance, the default); answers the channel of each hit.
    async fn search(&self, q: &str) -> Result<Vec<String>, String> {
        let limit = PAGE.to_string();
        let response = self
            .http
            .get(&self.url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .query(&[("q", q), ("limit", limit.as_str())])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!("{q:?}: {status} {body}"));
        }
        let page: SearchPage = response.json().await.map_err(|e| format!("{q:?}: {e}"))?;
        Ok(page.results.into_iter().map(|r| r.channel.id.to_string()).collect())
    }
}

/// Per-kind and overall histograms of one searcher, and its counts.
#[derive(Default)]
struct Tally {
    by_kind: HashMap<QueryKind, (Histogram<u64>, u64)>,
    total: Option<Histogram<u64>>,
    answered: u64,
    failed: u64,
    first_error: Option<String>,
    hits: u64,
    empty: u64,
    forbidden: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (kind, (h, hits)) in other.by_kind {
            let (mine, my_hits) = self.by_kind.entry(kind).or_insert_with(|| (latency_histogram(), 0));
            let _ = mine.add(&h);
            *my_hits += hits;
        }
        if let Some(h) = other.total {
            let _ = self.total.get_or_insert_with(latency_histogram).add(&h);
        }
        self.answered += other.answered;
        self.failed += other.failed;
        self.first_error = self.first_error.take().or(other.first_error);
        self.hits += other.hits;
        self.empty += other.empty;
        self.forbidden += other.forbidden;
    }
}

/// `args.searchers` searchers, searcher `s` running `search(s, k)` for query `k` of `specs` in turn
/// (each from its own place in the list), for `args.duration`; every hit's channel is checked
/// against `readable`.
pub(crate) async fn closed_loop<F, Fut>(
    args: &SearchArgs,
    specs: &Arc<Vec<(QueryKind, String)>>,
    readable: &HashSet<String>,
    search: F,
) -> QueriesReport
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Vec<String>, String>> + Send,
{
    let answered = Arc::new(AtomicU64::new(0));
    let progress = {
        let answered = answered.clone();
        crate::report::progress(args.duration, "searches", move || answered.load(Ordering::Relaxed))
    };
    let readable = Arc::new(readable.clone());
    let started = Instant::now();
    let deadline = started + args.duration;
    let searchers = args.searchers;
    let mut tasks = Vec::with_capacity(searchers);
    for s in 0..searchers {
        let (search, specs, readable, answered) = (search.clone(), specs.clone(), readable.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally { total: Some(latency_histogram()), ..Tally::default() };
            let mut k = s * specs.len() / searchers;
            while Instant::now() < deadline {
                let q = k % specs.len();
                k += 1;
                let t = Instant::now();
                match search(s, q).await {
                    Ok(channels) => {
                        let us = t.elapsed().as_micros().max(1) as u64;
                        let (h, hits) = tally.by_kind.entry(specs[q].0).or_insert_with(|| (latency_histogram(), 0));
                        let _ = h.record(us);
                        *hits += channels.len() as u64;
                        if let Some(total) = &mut tally.total {
                            let _ = total.record(us);
                        }
                        tally.answered += 1;
                        tally.hits += channels.len() as u64;
                        tally.empty += u64::from(channels.is_empty());
                        tally.forbidden += channels.iter().filter(|c| !readable.contains(*c)).count() as u64;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tally.failed += 1;
                        tally.first_error.get_or_insert(e);
                    }
                }
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            tally.merge(t);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    eprintln!();
    let by_kind = tally
        .by_kind
        .iter()
        .map(|(kind, (h, hits))| {
            let name = serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let report = KindReport {
                answered: h.len(),
                mean_hits: *hits as f64 / h.len().max(1) as f64,
                latency: Latency::of(h),
            };
            (name, report)
        })
        .collect();
    QueriesReport {
        searchers: args.searchers,
        distinct: specs.len(),
        seconds,
        answered: tally.answered,
        per_sec: tally.answered as f64 / seconds,
        failed: tally.failed,
        first_error: tally.first_error,
        hits: tally.hits,
        empty: tally.empty,
        forbidden_hits: tally.forbidden,
        latency: Latency::of(&tally.total.unwrap_or_else(latency_histogram)),
        by_kind,
    }
}

/// Prints, once a second on stderr until aborted, `count()` of `total`.
fn count_progress(
    what: &'static str,
    total: u64,
    count: impl Fn() -> u64 + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
        loop {
            tick.tick().await;
            eprintln!("  {:>6.1} s: {:>9} of {total} {what}", start.elapsed().as_secs_f64(), count());
        }
    })
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
