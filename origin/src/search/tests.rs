//! Search end to end: real tantivy indexes in temporary directories; for the indexer, a real
//! origin on the embedded store, messages posted through the sequencer, edited and deleted
//! through the domain functions, and the consumer run by a real `ConsumerRunner`.

use std::{collections::HashSet, future::Future, path::Path, sync::Arc, time::Duration};

use selvage_shared::{ChannelId, FileRef, Message, Seq, UserId, WorkspaceId};
use tokio_util::sync::CancellationToken;

use super::{
    indexer::{self, Indexer},
    query, resolve, IndexOptions, Page, SearchError, SearchIndex, Sort, StoreResolver,
};
use crate::{
    feed::{
        self,
        consumer::{ConsumerOptions, ConsumerRunner},
        Position,
    },
    OriginConfig, Running,
};

const DEADLINE: Duration = Duration::from_secs(30);
const DAY: i64 = 24 * 3600 * 1000;
/// 2024-03-10T12:00:00Z.
const NOON_MARCH_10: i64 = 1_710_072_000_000;

fn options() -> IndexOptions {
    IndexOptions { writer_memory_bytes: 15_000_000, writer_threads: 1 }
}

fn ws(s: &str) -> WorkspaceId {
    WorkspaceId::parse(s).unwrap()
}

fn ch(s: &str) -> ChannelId {
    ChannelId::parse(s).unwrap()
}

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn msg(c: &str, seq: Seq, ts: i64, author: &str, text: &str) -> Message {
    Message::new(ch(c), seq, ts, user(author), text)
}

fn allowed(channels: &[&str]) -> HashSet<ChannelId> {
    channels.iter().map(|c| ch(c)).collect()
}

/// A position that sorts after `n - 1`.
fn position(n: u8) -> Position {
    let mut p = [0u8; 12];
    p[9] = n;
    p
}

async fn put_all(index: &SearchIndex, w: &WorkspaceId, messages: Vec<Message>, covers: Position) {
    let w = w.clone();
    index
        .writer()
        .await
        .unwrap()
        .run(move |writer| {
            for m in &messages {
                writer.put(&w, m)?;
            }
            writer.commit(&covers)
        })
        .await
        .unwrap();
}

/// The `(channel, seq)` of every hit of `q` in W1 over channels `chans`, best first.
fn find(index: &SearchIndex, q: &str, chans: &[&str]) -> Vec<(String, Seq)> {
    find_in(index, "W1", q, chans, Sort::Relevance)
}

fn find_in(index: &SearchIndex, w: &str, q: &str, chans: &[&str], sort: Sort) -> Vec<(String, Seq)> {
    let query = query::parse(q).unwrap();
    let page = index.search(&query, &ws(w), &allowed(chans), sort, 100, None).unwrap();
    page.hits.into_iter().map(|h| (h.channel.to_string(), h.seq)).collect()
}

fn seqs(hits: &[(String, Seq)]) -> Vec<Seq> {
    let mut s: Vec<Seq> = hits.iter().map(|(_, seq)| *seq).collect();
    s.sort_unstable();
    s
}

/// A small corpus in W1 (channels C1, C2, C3) and one message in W2.
async fn corpus(dir: &Path) -> SearchIndex {
    let index = SearchIndex::open(dir, &options()).unwrap();
    let t = NOON_MARCH_10;
    let mut with_file = msg("C1", 5, t, "U2", "here is the build log");
    with_file.files = vec![FileRef {
        id: "F1".into(),
        name: "config.rs".into(),
        size: 10,
        content_type: "text/plain".into(),
        thumbs: Vec::new(),
    }];
    let mut reply = msg("C1", 7, t + 2 * DAY, "U2", "the rollback finished");
    reply.thread_root = Some(6);
    let mut root = msg("C1", 6, t + 2 * DAY, "U1", "should we roll back the release?");
    root.reply_count = 1;
    let w1 = vec![
        msg("C1", 1, t - 2 * DAY, "U1", "We are deploying the café service today"),
        msg("C1", 2, t, "U2", "the rate_limit in getUserName is too low"),
        msg("C1", 3, t, "U1", "東京都に行きます and 검색엔진 works"),
        msg("C1", 4, t + DAY, "U3", "see https://docs.example.com/setup for the steps"),
        with_file,
        root,
        reply,
        msg("C2", 1, t, "U1", "deploy failed on staging, known issue"),
        msg("C2", 2, t, "U2", "deploy succeeded on production"),
        msg("C3", 1, t, "U1", "private plans about the deploy"),
    ];
    put_all(&index, &ws("W1"), w1, position(1)).await;
    put_all(&index, &ws("W2"), vec![msg("C1", 99, t, "U1", "deploy in another workspace")], position(2)).await;
    index
}

#[tokio::test]
async fn words_stemming_folding_cjk_and_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let index = corpus(dir.path()).await;
    let all = ["C1", "C2", "C3"];
    // Stemming both ways, and all words must match.
    assert_eq!(seqs(&find(&index, "deploy service", &all)), [1]);
    assert_eq!(find(&index, "deployed café today", &all), [("C1".to_string(), 1)]);
    // Folding: typed without the accent, and with.
    assert_eq!(find(&index, "cafe today", &all), [("C1".to_string(), 1)]);
    assert_eq!(find(&index, "CAFÉ today", &all), [("C1".to_string(), 1)]);
    // CJK without spaces, by a word inside the run.
    assert_eq!(find(&index, "東京 and", &all), [("C1".to_string(), 3)]);
    assert_eq!(find(&index, "京都 and", &all), [("C1".to_string(), 3)]);
    assert_eq!(find(&index, "검색 and", &all), [("C1".to_string(), 3)]);
    assert!(find(&index, "大阪 and", &all).is_empty());
    // Identifiers and URLs, by their parts and whole.
    assert_eq!(find(&index, "rate_limit low", &all), [("C1".to_string(), 2)]);
    assert_eq!(find(&index, "limit low", &all), [("C1".to_string(), 2)]);
    assert_eq!(find(&index, "getUserName low", &all), [("C1".to_string(), 2)]);
    assert_eq!(find(&index, "user low", &all), [("C1".to_string(), 2)]);
    assert_eq!(find(&index, "docs.example.com steps", &all), [("C1".to_string(), 4)]);
    // File names are searched too.
    assert_eq!(find(&index, "config.rs log", &all), [("C1".to_string(), 5)]);
    assert_eq!(find(&index, "config log", &all), [("C1".to_string(), 5)]);
    // Punctuation alone matches nothing, and fails nothing.
    assert!(find(&index, "!!! ???", &all).is_empty());
}

#[tokio::test]
async fn phrases_exclusions_and_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let index = corpus(dir.path()).await;
    let all = ["C1", "C2", "C3"];
    assert_eq!(seqs(&find(&index, "\"known issue\"", &all)), [1]);
    assert!(find(&index, "\"issue known\"", &all).is_empty(), "a phrase keeps its order");
    assert_eq!(find_in(&index, "W1", "deploy -staging -private", &all, Sort::Recent).len(), 2);
    assert_eq!(seqs(&find(&index, "deploy -\"known issue\" -service -private", &all)), [2]);
    // The last word is a prefix too: "deplo" finds every deploy; "stagi" the one on staging.
    assert_eq!(find(&index, "deplo", &all).len(), 4);
    assert_eq!(find(&index, "deploy stagi", &all), [("C2".to_string(), 1)]);
    // Only the last word: "deplo" in the middle is a word, which nothing has.
    assert!(find(&index, "deplo staging", &all).is_empty());
    // A phrase being typed: "config.r" finds config.rs.
    assert_eq!(find(&index, "log config.r", &all), [("C1".to_string(), 5)]);
    // A lone CJK character finds the runs it begins.
    assert_eq!(find(&index, "東", &all), [("C1".to_string(), 3)]);
}

#[tokio::test]
async fn operators_filter() {
    let dir = tempfile::tempdir().unwrap();
    let index = corpus(dir.path()).await;
    let all = ["C1", "C2", "C3"];
    assert_eq!(seqs(&find(&index, "deploy from:<@U2>", &all)), [2]);
    assert_eq!(find(&index, "from:<@U3>", &all), [("C1".to_string(), 4)]);
    assert_eq!(find(&index, "deploy from:<@U1> from:<@U2>", &all).len(), 4);
    // An unresolved handle matches nobody.
    assert!(find(&index, "deploy from:@nobody", &all).is_empty());
    assert_eq!(find(&index, "deploy in:<#C2>", &all).len(), 2);
    assert!(find(&index, "deploy in:#unresolved", &all).is_empty());
    // Dates, in UTC: C1 1 is two days before March 10, C1 4 a day after, 6 and 7 two days.
    assert_eq!(find(&index, "before:2024-03-09", &all), [("C1".to_string(), 1)]);
    assert_eq!(seqs(&find(&index, "after:2024-03-10 in:<#C1>", &all)), [4, 6, 7]);
    assert_eq!(find(&index, "on:2024-03-11", &all), [("C1".to_string(), 4)]);
    assert_eq!(seqs(&find(&index, "after:2024-03-10 before:2024-03-12", &all)), [4]);
    assert_eq!(find(&index, "has:file", &all), [("C1".to_string(), 5)]);
    assert_eq!(find(&index, "has:link", &all), [("C1".to_string(), 4)]);
    assert_eq!(seqs(&find(&index, "is:thread", &all)), [6, 7]);
    assert_eq!(find(&index, "is:thread roll back", &all), [("C1".to_string(), 6)]);
}

#[tokio::test]
async fn only_allowed_channels_of_the_workspace_are_searched() {
    let dir = tempfile::tempdir().unwrap();
    let index = corpus(dir.path()).await;
    // C3 is not readable: its message is not found, by any route.
    let hits = find(&index, "deploy", &["C1", "C2"]);
    assert!(hits.iter().all(|(c, _)| c != "C3"), "{hits:?}");
    assert!(find(&index, "private plans", &["C1", "C2"]).is_empty());
    assert!(find(&index, "private in:<#C3>", &["C1", "C2"]).is_empty());
    assert_eq!(find(&index, "private plans", &["C3"]), [("C3".to_string(), 1)]);
    // Nothing readable, nothing found.
    assert!(find(&index, "deploy", &[]).is_empty());
    // Another workspace's message, in a channel of the same id, is never found from W1 …
    assert!(find(&index, "another workspace", &["C1", "C2", "C3"]).is_empty());
    // … and W1's are not found from W2.
    assert_eq!(find_in(&index, "W2", "deploy", &["C1", "C2", "C3"], Sort::Recent), [("C1".to_string(), 99)]);
}

#[tokio::test]
async fn edits_replace_and_deletes_remove() {
    let dir = tempfile::tempdir().unwrap();
    let index = corpus(dir.path()).await;
    let all = ["C1", "C2", "C3"];
    let before = index.len();
    let edited = msg("C2", 1, NOON_MARCH_10, "U1", "deploy fixed on staging");
    put_all(&index, &ws("W1"), vec![edited.clone(), edited], position(3)).await;
    assert_eq!(index.len(), before, "an edit replaces, twice is still once");
    assert!(find(&index, "\"known issue\"", &all).is_empty());
    assert_eq!(find(&index, "fixed", &all), [("C2".to_string(), 1)]);

    let w = ws("W1");
    let writer = index.writer().await.unwrap();
    writer
        .run(move |wr| {
            wr.delete(&w, &ch("C2"), 1);
            wr.commit(&position(4))
        })
        .await
        .unwrap();
    assert!(find(&index, "fixed", &all).is_empty());
    assert_eq!(index.len(), before - 1);
    // A message marked deleted is removed, not indexed.
    let mut gone = msg("C2", 2, NOON_MARCH_10, "U2", "deploy succeeded on production");
    gone.deleted = true;
    put_all(&index, &ws("W1"), vec![gone], position(5)).await;
    assert!(find(&index, "production", &all).is_empty());
}

#[tokio::test]
async fn pages_follow_their_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path(), &options()).unwrap();
    let messages =
        (1..=25).map(|i| msg("C1", i, NOON_MARCH_10 + i as i64, "U1", &format!("release note {i}"))).collect();
    put_all(&index, &ws("W1"), messages, position(1)).await;
    let query = query::parse("release").unwrap();
    let (w, chans) = (ws("W1"), allowed(&["C1"]));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page: Page = index.search(&query, &w, &chans, Sort::Recent, 10, cursor.as_deref()).unwrap();
        seen.extend(page.hits.iter().map(|h| h.seq));
        pages += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=25).rev().collect::<Vec<Seq>>(), "newest first, each once");
    // Messages posted after the first page do not shift the next ones.
    let first = index.search(&query, &w, &chans, Sort::Recent, 10, None).unwrap();
    let late = msg("C1", 26, crate::now_ms() + 60_000, "U1", "release late");
    put_all(&index, &ws("W1"), vec![late], position(2)).await;
    let second = index.search(&query, &w, &chans, Sort::Recent, 10, first.next.as_deref()).unwrap();
    assert_eq!(second.hits.first().map(|h| h.seq), Some(15));
    // Nor does a change to the index between pages: the next pages read the generation the
    // first was read from (here, 15 is deleted after the first page and still on the second).
    let first = index.search(&query, &w, &chans, Sort::Relevance, 10, None).unwrap();
    let w1 = ws("W1");
    let delete = move |wr: &mut super::index::Writer| {
        wr.delete(&w1, &ch("C1"), 15);
        Ok(())
    };
    let (writer, ()) = index.writer().await.unwrap().run(delete).await.unwrap();
    writer.run(|wr| wr.commit(&position(3))).await.unwrap();
    let mut all: Vec<Seq> = first.hits.iter().map(|h| h.seq).collect();
    let mut cursor = first.next;
    while let Some(c) = cursor {
        let page = index.search(&query, &w, &chans, Sort::Relevance, 10, Some(&c)).unwrap();
        all.extend(page.hits.iter().map(|h| h.seq));
        cursor = page.next;
    }
    all.sort_unstable();
    assert_eq!(all, (1..=25).collect::<Vec<Seq>>(), "each once, as of the first page (26 is later)");
    let fresh = index.search(&query, &w, &chans, Sort::Relevance, 100, None).unwrap();
    assert!(fresh.hits.iter().all(|h| h.seq != 15), "a new search sees the delete");

    for bad in ["zz", "1", "ffffffff.1"] {
        let Err(err) = index.search(&query, &w, &chans, Sort::Recent, 10, Some(bad)) else {
            panic!("{bad:?} accepted")
        };
        assert!(matches!(err, SearchError::BadCursor) && err.is_bad_request(), "{bad}: {err}");
    }
    for limit in [0, 101] {
        assert!(matches!(index.search(&query, &w, &chans, Sort::Recent, limit, None), Err(SearchError::BadLimit)));
    }
}

#[tokio::test]
async fn relevance_ranks_matches_and_highlights_them() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path(), &options()).unwrap();
    let now = crate::now_ms();
    let messages = vec![
        msg("C1", 1, now - 1000, "U1", "the outage: outage after outage, a real outage day"),
        msg("C1", 2, now - 1000, "U1", "lunch is at noon, then a short outage window"),
        // Equally relevant as 3 but a year older: ranks below it.
        msg("C1", 3, now - 365 * DAY, "U1", "quarterly outage review"),
        msg("C1", 4, now - 2000, "U1", "quarterly outage review"),
    ];
    put_all(&index, &ws("W1"), messages, position(1)).await;
    let query = query::parse("outage").unwrap();
    let page = index.search(&query, &ws("W1"), &allowed(&["C1"]), Sort::Relevance, 10, None).unwrap();
    let order: Vec<Seq> = page.hits.iter().map(|h| h.seq).collect();
    assert_eq!(order[0], 1, "{order:?}");
    let pos = |s: Seq| order.iter().position(|&x| x == s).unwrap();
    assert!(pos(4) < pos(3), "recency breaks the tie: {order:?}");
    assert!(page.hits.windows(2).all(|w| w[0].score >= w[1].score));

    // Highlights are byte ranges of the fragment, on the words that matched.
    let snippet = page.highlighter.snippet("lunch is at noon, then a short outage window").unwrap();
    let marked: Vec<&str> = snippet.highlights.iter().map(|r| &snippet.fragment[r.clone()]).collect();
    assert_eq!(marked, ["outage"]);
    assert!(page.highlighter.snippet("config.rs").is_none());
    // A prefix highlights the words it begins (those in the index), through their stem.
    let typed = query::parse("outa").unwrap();
    let page = index.search(&typed, &ws("W1"), &allowed(&["C1"]), Sort::Recent, 10, None).unwrap();
    assert_eq!(page.hits.len(), 4);
    let snippet = page.highlighter.snippet("two outages in a row").unwrap();
    assert_eq!(&snippet.fragment[snippet.highlights[0].clone()], "outages");
    assert!(page.highlighter.snippet("an outing").is_none(), "not a word of the index");
}

/// Indexes new messages as their `message` events at `at` would, and commits `covers`.
async fn post_all(index: &SearchIndex, messages: Vec<(Message, Position)>, covers: Position) {
    index
        .writer()
        .await
        .unwrap()
        .run(move |writer| {
            for (m, at) in &messages {
                writer.post(&ws("W1"), m, at)?;
            }
            writer.commit(&covers)
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn messages_a_rebuild_indexed_are_replaced_by_their_events_also_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let early = msg("C1", 1, NOON_MARCH_10, "U1", "rebuilt early");
    let late = msg("C1", 2, NOON_MARCH_10, "U1", "rebuilt late");
    {
        let index = SearchIndex::open(dir.path(), &options()).unwrap();
        // A rebuild read its head at 5, then indexed both messages (the second was sent while
        // it read) and found the head at 9 after its last read.
        let (e, l) = (early.clone(), late.clone());
        index
            .writer()
            .await
            .unwrap()
            .run(move |writer| {
                writer.put(&ws("W1"), &e)?;
                writer.put(&ws("W1"), &l)?;
                writer.rebuilt_until(position(9));
                writer.commit(&position(5))
            })
            .await
            .unwrap();
        assert_eq!(index.len(), 2);
        // The first of the events after the rebuild's cursor: its message is not added twice.
        post_all(&index, vec![(early.clone(), position(6))], position(6)).await;
        assert_eq!(index.len(), 2);
    }
    // The process restarts before the index covers the end of the rebuild: the payload kept it.
    let index = SearchIndex::open(dir.path(), &options()).unwrap();
    assert_eq!(index.cursor().unwrap(), Some(position(6)));
    let new = msg("C1", 3, NOON_MARCH_10, "U1", "posted after");
    post_all(&index, vec![(late.clone(), position(8)), (new.clone(), position(10))], position(10)).await;
    assert_eq!(index.len(), 3);
    assert_eq!(find(&index, "rebuilt", &["C1"]).len(), 2);
    // Past the rebuild, new messages are added; the payload no longer names it.
    let dir2 = dir.path().to_path_buf();
    drop(index);
    let index = SearchIndex::open(&dir2, &options()).unwrap();
    post_all(&index, vec![(msg("C1", 4, NOON_MARCH_10, "U1", "fresh"), position(11))], position(11)).await;
    assert_eq!(index.len(), 4);
    assert_eq!(find(&index, "posted", &["C1"]), [("C1".to_string(), 3)]);
}

#[tokio::test]
async fn the_committed_cursor_survives_a_reopen_and_uncommitted_work_does_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = SearchIndex::open(dir.path(), &options()).unwrap();
        assert_eq!(index.cursor().unwrap(), None);
        put_all(&index, &ws("W1"), vec![msg("C1", 1, NOON_MARCH_10, "U1", "kept")], position(7)).await;
        // Changes never committed: gone with the process.
        let w = ws("W1");
        index
            .writer()
            .await
            .unwrap()
            .run(move |wr| wr.put(&w, &msg("C1", 2, NOON_MARCH_10, "U1", "lost")))
            .await
            .unwrap();
    }
    let index = SearchIndex::open(dir.path(), &options()).unwrap();
    assert_eq!(index.cursor().unwrap(), Some(position(7)));
    assert_eq!(find(&index, "kept", &["C1"]).len(), 1);
    assert!(find(&index, "lost", &["C1"]).is_empty());
}

#[tokio::test]
async fn a_writer_left_with_pending_changes_is_rolled_back_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path(), &options()).unwrap();
    let w = ws("W1");
    // A holder that fails after a change: its change must not ride along with the next commit.
    let failed = index
        .writer()
        .await
        .unwrap()
        .run(move |wr| {
            wr.put(&w, &msg("C1", 1, NOON_MARCH_10, "U1", "half done"))?;
            Err::<(), _>(SearchError::Io("disk on fire".into()))
        })
        .await;
    assert!(failed.is_err());
    put_all(&index, &ws("W1"), vec![msg("C1", 2, NOON_MARCH_10, "U1", "whole")], position(1)).await;
    assert!(find(&index, "half", &["C1"]).is_empty());
    assert_eq!(find(&index, "whole", &["C1"]).len(), 1);
}

// ---- The indexer on a real origin ----

struct Node {
    running: Option<Running>,
    shutdown: CancellationToken,
}

impl Node {
    async fn start(dir: &Path) -> Node {
        let mut config = OriginConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.to_path_buf(),
            fsync: false,
            ..OriginConfig::default()
        };
        // These tests run the consumer `search` themselves, over an index of their own: the
        // origin's would hold its lease.
        config.search.enabled = false;
        let shutdown = CancellationToken::new();
        let running = crate::start(config, shutdown.clone()).await.unwrap();
        Node { running: Some(running), shutdown }
    }

    fn origin(&self) -> Arc<crate::Origin> {
        self.running.as_ref().unwrap().origin.clone()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await;
        }
    }
}

async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the indexer over `index` until the returned token is cancelled.
fn run_indexer(origin: &crate::Origin, index: &Arc<SearchIndex>) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    let indexer = Indexer::new(index.clone(), origin.feed.clone(), origin.store.clone(), origin.metrics.clone());
    let options = ConsumerOptions { batch_size: 5, ..ConsumerOptions::default() };
    let runner = ConsumerRunner::new(origin.feed.clone(), Arc::new(indexer), options).unwrap();
    let stop = CancellationToken::new();
    (runner.spawn(stop.clone()), stop)
}

/// Waits until the index covers the feed's head.
async fn caught_up(origin: &crate::Origin, index: &SearchIndex) {
    let head = origin.feed.head().await.unwrap();
    wait_for("the index to cover the feed's head", || async { index.cursor().unwrap().is_some_and(|c| c >= head) })
        .await;
}

/// A search as the HTTP route will run it, as `actor`.
async fn search_as(origin: &crate::Origin, index: &SearchIndex, actor: &crate::Actor, q: &str) -> Vec<(String, Seq)> {
    let caller = actor.caller();
    let mut query = query::parse(q).unwrap();
    resolve(&mut query, &StoreResolver::new(&origin.store, &caller.workspace)).await.unwrap();
    let readable = super::readable_channels(&origin.store, caller).await.unwrap();
    let page = index.search(&query, &caller.workspace, &readable, Sort::Recent, 100, None).unwrap();
    let mut hits: Vec<(String, Seq)> = page.hits.into_iter().map(|h| (h.channel.to_string(), h.seq)).collect();
    hits.sort();
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_follows_the_feed_and_the_permissions_hold() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("origin")).await;
    let origin = node.origin();
    let (_, admin) = origin.create_workspace("acme", "admin", "Admin").await.unwrap();
    let ana = origin.create_user(&admin, "ana", "Ana").await.unwrap();
    let bob = origin.create_user(&admin, "bob", "Bob").await.unwrap();
    let public = origin.create_channel(&admin, "ops", false).await.unwrap().id;
    let secret = origin.create_channel(&admin, "secret", true).await.unwrap().id;
    crate::channels::add_member(&origin.store, admin.caller(), &secret, &ana.user().id).await.unwrap();
    let (_, outsider) = origin.create_workspace("other", "mallory", "Mallory").await.unwrap();
    let elsewhere = origin.create_channel(&outsider, "ops", false).await.unwrap().id;

    let s1 = origin.send(&admin, &public, "the deploy of the search service", "m1").await.unwrap().message.seq;
    let s2 = origin.send(&ana, &secret, "secret deploy plans", "m2").await.unwrap().message.seq;
    origin.send(&outsider, &elsewhere, "deploy from another workspace", "m3").await.unwrap();

    let index = Arc::new(SearchIndex::open(&dir.path().join("search"), &options()).unwrap());
    let (task, stop) = run_indexer(&origin, &index);
    caught_up(&origin, &index).await;

    let public_hit = (public.to_string(), s1);
    let secret_hit = (secret.to_string(), s2);
    let mut both = vec![secret_hit.clone(), public_hit.clone()];
    both.sort();
    assert_eq!(search_as(&origin, &index, &ana, "deploy").await, both);
    assert_eq!(search_as(&origin, &index, &bob, "deploy").await, vec![public_hit.clone()], "bob is not in #secret");
    assert_eq!(search_as(&origin, &index, &bob, "deploy in:#secret").await, Vec::new());
    assert_eq!(search_as(&origin, &index, &outsider, "deploy").await.len(), 1, "its own workspace only");
    assert_eq!(search_as(&origin, &index, &bob, "from:@admin").await, vec![public_hit.clone()]);
    assert_eq!(search_as(&origin, &index, &ana, "deploy in:#ops").await, vec![public_hit.clone()]);
    assert_eq!(search_as(&origin, &index, &ana, "deploy from:@mallory").await, Vec::new());

    // Bob joins #secret and finds it; removed, he stops finding it at once.
    crate::channels::add_member(&origin.store, admin.caller(), &secret, &bob.user().id).await.unwrap();
    assert_eq!(search_as(&origin, &index, &bob, "secret").await, vec![secret_hit.clone()]);
    crate::channels::remove_member(&origin.store, admin.caller(), &secret, &bob.user().id).await.unwrap();
    assert_eq!(search_as(&origin, &index, &bob, "secret").await, Vec::new());

    // An edit replaces, a delete removes.
    let presence = &origin.presence;
    crate::messages::edits::edit(
        &origin.store,
        admin.caller(),
        &public,
        s1,
        "the rollout of the search service",
        presence,
    )
    .await
    .unwrap();
    crate::messages::edits::delete(&origin.store, ana.caller(), &secret, s2).await.unwrap();
    caught_up(&origin, &index).await;
    assert_eq!(search_as(&origin, &index, &ana, "deploy").await, Vec::new());
    assert_eq!(search_as(&origin, &index, &ana, "rollout").await, vec![public_hit.clone()]);

    // A rebuild from the store finds the same, and covers at least as much of the feed.
    stop.cancel();
    task.await.unwrap();
    let rebuilt = SearchIndex::open(&dir.path().join("rebuilt"), &options()).unwrap();
    let n = indexer::reindex(&origin.feed, &origin.store, &rebuilt).await.unwrap();
    assert_eq!(n, index.len(), "the same documents");
    assert_eq!(n, 2, "the edited message and the other workspace's");
    assert!(rebuilt.cursor().unwrap() >= index.cursor().unwrap());
    for q in ["rollout", "deploy", "search service", "from:@mallory"] {
        assert_eq!(search_as(&origin, &rebuilt, &outsider, q).await, search_as(&origin, &index, &outsider, q).await);
        assert_eq!(search_as(&origin, &rebuilt, &ana, q).await, search_as(&origin, &index, &ana, q).await);
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_index_is_indexed_again_from_the_feed() {
    lose_the_index(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_index_is_rebuilt_from_the_store_when_the_feed_was_trimmed() {
    lose_the_index(true).await;
}

/// Loses the index's directory after the consumer handled the feed, trims the feed first if
/// `trim`, and checks that the indexer restores what it lost: from the feed, or from the store.
async fn lose_the_index(trim: bool) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("origin")).await;
    let origin = node.origin();
    let (_, admin) = origin.create_workspace("acme", "admin", "Admin").await.unwrap();
    let general = origin.channels(&admin).await.unwrap().remove(0).id;
    origin.send(&admin, &general, "before the disk died", "m1").await.unwrap();

    let index = Arc::new(SearchIndex::open(&dir.path().join("search"), &options()).unwrap());
    let (task, stop) = run_indexer(&origin, &index);
    caught_up(&origin, &index).await;
    let head = origin.feed.head().await.unwrap();
    let feed = origin.feed.clone();
    wait_for("the consumer's cursor to reach the head", || {
        let feed = feed.clone();
        async move { feed::consumer::stored_cursor(&feed, indexer::NAME).await.unwrap().is_some_and(|c| c >= head) }
    })
    .await;
    stop.cancel();
    task.await.unwrap();

    // The index's directory is lost; the consumer's cursor in the store says it was handled.
    drop(index);
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    let index = Arc::new(SearchIndex::open(&dir.path().join("search"), &options()).unwrap());
    assert_eq!(index.cursor().unwrap(), None);
    let handled = feed::consumer::stored_cursor(&origin.feed, indexer::NAME).await.unwrap().unwrap();
    assert!(handled > feed::START);
    if trim {
        // Every event is past the retention and the consumers' hold.
        assert!(origin.feed.trim(i64::MAX / 2).await.unwrap() > 0);
    }

    // The next event makes the indexer see the gap and fill it before indexing the event.
    let (task, stop) = run_indexer(&origin, &index);
    origin.send(&admin, &general, "after the new disk", "m2").await.unwrap();
    caught_up(&origin, &index).await;
    assert_eq!(search_as(&origin, &index, &admin, "disk").await.len(), 2);
    let rebuilds = origin.metrics.search_index_rebuilds.with_label_values(&["trimmed"]).get();
    let replayed = origin.metrics.search_index_replayed_events.get();
    if trim {
        assert_eq!(rebuilds, 1, "the feed no longer holds the first message: rebuilt from the store");
    } else {
        assert_eq!(rebuilds, 0, "the feed still holds every event: no rebuild");
        assert!(replayed >= 2, "the workspace's and the message's events indexed again, {replayed}");
    }
    stop.cancel();
    task.await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_behind_the_consumer_indexes_the_difference_again() {
    let dir = tempfile::tempdir().unwrap();
    let (live, old) = (dir.path().join("search"), dir.path().join("search-old"));
    let node = Node::start(&dir.path().join("origin")).await;
    let origin = node.origin();
    let (_, admin) = origin.create_workspace("acme", "admin", "Admin").await.unwrap();
    let general = origin.channels(&admin).await.unwrap().remove(0).id;
    origin.send(&admin, &general, "indexed before the crash", "m1").await.unwrap();
    let index = Arc::new(SearchIndex::open(&live, &options()).unwrap());
    let (task, stop) = run_indexer(&origin, &index);
    caught_up(&origin, &index).await;
    stop.cancel();
    task.await.unwrap();
    let committed = index.cursor().unwrap().unwrap();
    copy_dir(&live, &old);

    // The consumer handles two more messages, then the index loses them: the state a crash
    // leaves when the consumer's cursor moved and the index had not committed yet.
    let edited = origin.send(&admin, &general, "lost in the crash", "m2").await.unwrap().message.seq;
    origin.send(&admin, &general, "also lost in the crash", "m3").await.unwrap();
    let (task, stop) = run_indexer(&origin, &index);
    caught_up(&origin, &index).await;
    stop.cancel();
    task.await.unwrap();
    let handled = feed::consumer::stored_cursor(&origin.feed, indexer::NAME).await.unwrap().unwrap();
    drop(index);
    std::fs::remove_dir_all(&live).unwrap();
    std::fs::rename(&old, &live).unwrap();
    let index = Arc::new(SearchIndex::open(&live, &options()).unwrap());
    assert_eq!(index.cursor().unwrap(), Some(committed));
    assert!(committed < handled);
    assert_eq!(search_as(&origin, &index, &admin, "crash").await.len(), 1);

    // An edit after the crash: the indexer indexes what the index lost, then the edit.
    crate::messages::edits::edit(&origin.store, admin.caller(), &general, edited, "found again", &origin.presence)
        .await
        .unwrap();
    let (task, stop) = run_indexer(&origin, &index);
    caught_up(&origin, &index).await;
    assert_eq!(search_as(&origin, &index, &admin, "crash").await.len(), 2, "m1 and m3; m2 was edited");
    assert_eq!(search_as(&origin, &index, &admin, "found").await, vec![(general.to_string(), edited)]);
    assert_eq!(index.len(), 3, "one document per message");
    assert_eq!(origin.metrics.search_index_rebuilds.with_label_values(&["trimmed"]).get(), 0);
    assert!(origin.metrics.search_index_replayed_events.get() >= 2);
    stop.cancel();
    task.await.unwrap();
    node.stop().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
