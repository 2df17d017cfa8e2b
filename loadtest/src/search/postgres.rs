//! The peer of the `search` scenario: PostgreSQL's full-text search over the same messages,
//! with the same queries and the same permission filter, measured in the same run.
//!
//! **Loading.** One table, `messages (workspace, channel, seq, author, ts, text, tsv)`, with
//! `tsv` a stored generated column `to_tsvector(CONFIG, text)`; the rows go in with `COPY`
//! (PostgreSQL's fastest load), then the GIN index on `tsv` and a B-tree on `channel` are built
//! and the table analysed — building an index after a bulk load is faster than keeping it
//! current row by row, so this is PostgreSQL's best case. Measured: from the first row sent
//! to the end of `ANALYZE` (rows per second), and the table's and its indexes' size.
//!
//! **Queries.** Each [`QuerySpec`] becomes one statement (prepared once per connection):
//!
//! ```sql
//! SELECT channel, seq, ts_rank(tsv, q) AS rank
//! FROM messages, (SELECT websearch_to_tsquery(CONFIG, $3) && to_tsquery(CONFIG, $4) AS q) AS query
//! WHERE tsv @@ q AND workspace = $1 AND channel = ANY($2) [AND author = $5] [AND channel = $6]
//! ORDER BY rank DESC LIMIT 20
//! ```
//!
//! The words and the phrase go to `websearch_to_tsquery` (all required, the phrase in order);
//! the last word, as Selvage matches it, also as a prefix (`word:*`); `from:` and `in:` become
//! the author's and the channel's ids (no name lookup: less work than Selvage does), and
//! `channel = ANY($2)` is the searcher's readable channels, the same set Selvage's search is
//! given. PostgreSQL returns no snippets (Selvage does). Its parser keeps a run of CJK
//! characters as one word, so a CJK word is found only at the start of such a run (built-in
//! PostgreSQL has no CJK segmentation; extensions such as pg_bigm are not installed).

use std::{collections::HashMap, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use bytes::{BufMut, BytesMut};
use futures::SinkExt;
use serde::Serialize;
use tokio_postgres::{types::ToSql, Client, NoTls, Statement};

use super::{closed_loop, Acked, QueriesReport, SearchArgs, Seeded, PAGE};
use crate::corpus::{Corpus, QuerySpec};

/// Bytes of `COPY` data sent at once.
const COPY_CHUNK: usize = 1 << 20;

/// What the peer measured.
#[derive(Debug, Serialize)]
pub struct PeerReport {
    /// `SHOW server_version`.
    pub version: String,
    /// The text search configuration of `to_tsvector` and the queries.
    pub text_search_config: String,
    /// Rows loaded.
    pub rows: u64,
    /// From the first row sent to the end of the index builds and `ANALYZE`.
    pub load_seconds: f64,
    /// Rows loaded and indexed per second.
    pub load_per_sec: f64,
    /// Of which `COPY` (the tsvector computed on the way in).
    pub copy_seconds: f64,
    /// The table with its TOAST, bytes.
    pub table_bytes: u64,
    /// The GIN index, bytes.
    pub gin_bytes: u64,
    /// Table and all its indexes, bytes.
    pub total_bytes: u64,
    /// The searchers against PostgreSQL.
    pub queries: QueriesReport,
}

/// Loads the corpus into the server at `conninfo` and runs the queries against it.
pub async fn run(
    conninfo: &str,
    args: &SearchArgs,
    corpus: &Arc<Corpus>,
    seeded: &Arc<Seeded>,
    acked: &[Acked],
    queries: &[QuerySpec],
) -> Result<PeerReport> {
    let config = args.postgres_config.clone();
    if !config.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        anyhow::bail!("--postgres-config must be the name of a text search configuration, like english or simple");
    }
    let client = connect(conninfo).await?;
    let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    eprintln!("PostgreSQL {version}: loading {} rows with COPY, then the GIN index", acked.len());
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS messages;
             CREATE TABLE messages (
               workspace text NOT NULL, channel text NOT NULL, seq bigint NOT NULL, author text NOT NULL,
               ts bigint NOT NULL, text text NOT NULL,
               tsv tsvector GENERATED ALWAYS AS (to_tsvector('{config}', text)) STORED,
               PRIMARY KEY (channel, seq));"
        ))
        .await?;
    let started = Instant::now();
    let sink = client
        .copy_in("COPY messages (workspace, channel, seq, author, ts, text) FROM STDIN")
        .await
        .context("COPY into the peer")?;
    futures::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK * 2);
    for (i, a) in acked.iter().enumerate() {
        let m = corpus.message(i as u64);
        buf.put_slice(seeded.workspace.as_bytes());
        buf.put_u8(b'\t');
        buf.put_slice(seeded.channels[m.channel].as_str().as_bytes());
        buf.put_slice(format!("\t{}\t{}\t{}\t", a.seq, seeded.users[m.author].user().id, a.ts).as_bytes());
        copy_escape(&m.text, &mut buf);
        buf.put_u8(b'\n');
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze()).await?;
        }
    }
    sink.send(buf.split().freeze()).await?;
    let rows = sink.finish().await?;
    let copy_seconds = started.elapsed().as_secs_f64();
    eprintln!("  COPY of {rows} rows: {copy_seconds:.1} s; building the indexes");
    client
        .batch_execute(
            "SET maintenance_work_mem = '1GB';
             CREATE INDEX messages_tsv ON messages USING gin (tsv);
             CREATE INDEX messages_channel ON messages (channel);
             ANALYZE messages;",
        )
        .await?;
    let load_seconds = started.elapsed().as_secs_f64();
    let sizes = client
        .query_one(
            "SELECT pg_table_size('messages'), pg_relation_size('messages_tsv'), pg_total_relation_size('messages')",
            &[],
        )
        .await?;
    let (table_bytes, gin_bytes, total_bytes): (i64, i64, i64) = (sizes.get(0), sizes.get(1), sizes.get(2));

    let statements: Arc<Vec<PeerQuery>> = Arc::new(queries.iter().map(|q| PeerQuery::of(q, &config, seeded)).collect());
    let specs = Arc::new(queries.iter().map(|q| (q.kind, q.selvage())).collect::<Vec<_>>());
    let mut connections = Vec::with_capacity(args.searchers);
    for _ in 0..args.searchers {
        connections.push(Arc::new(Connection::open(conninfo).await?));
    }
    let connections = Arc::new(connections);
    let allowed: Arc<Vec<String>> = Arc::new(seeded.readable.iter().cloned().collect());
    let workspace = Arc::new(seeded.workspace.clone());
    eprintln!("queries: {} connections against PostgreSQL for {:.0} s", args.searchers, args.duration.as_secs_f64());
    // Searcher `s` has connection `s` to itself: a connection runs one query at a time.
    let queries_report = closed_loop(args, &specs, &seeded.readable, move |s, k| {
        let (statements, connections, allowed, workspace) =
            (statements.clone(), connections.clone(), allowed.clone(), workspace.clone());
        async move { connections[s].search(&statements[k], &workspace, &allowed).await }
    })
    .await;
    Ok(PeerReport {
        version,
        text_search_config: config,
        rows,
        load_seconds,
        load_per_sec: rows as f64 / load_seconds,
        copy_seconds,
        table_bytes: table_bytes as u64,
        gin_bytes: gin_bytes as u64,
        total_bytes: total_bytes as u64,
        queries: queries_report,
    })
}

async fn connect(conninfo: &str) -> Result<Client> {
    let (client, connection) =
        tokio_postgres::connect(conninfo, NoTls).await.with_context(|| format!("cannot connect to {conninfo:?}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection failed");
        }
    });
    Ok(client)
}

/// Appends `text` in `COPY`'s text format (backslash escapes).
fn copy_escape(text: &str, buf: &mut BytesMut) {
    for b in text.bytes() {
        match b {
            b'\\' => buf.put_slice(b"\\\\"),
            b'\n' => buf.put_slice(b"\\n"),
            b'\r' => buf.put_slice(b"\\r"),
            b'\t' => buf.put_slice(b"\\t"),
            _ => buf.put_u8(b),
        }
    }
}

/// A query as SQL and its parameters after `workspace` and the readable channels.
struct PeerQuery {
    sql: String,
    params: Vec<String>,
}

impl PeerQuery {
    fn of(q: &QuerySpec, config: &str, seeded: &Seeded) -> PeerQuery {
        let mut params = Vec::new();
        let mut tsquery = Vec::new();
        let (prefix, words) = match q.words.split_last() {
            Some((last, rest)) => (Some(last), rest),
            None => (None, &q.words[..]),
        };
        let mut web: Vec<String> = words.to_vec();
        if !q.phrase.is_empty() {
            web.push(format!("\"{}\"", q.phrase.join(" ")));
        }
        if !web.is_empty() {
            params.push(web.join(" "));
            tsquery.push(format!("websearch_to_tsquery('{config}', ${})", params.len() + 2));
        }
        if let Some(p) = prefix {
            params.push(format!("{p}:*"));
            tsquery.push(format!("to_tsquery('{config}', ${})", params.len() + 2));
        }
        let mut filters = String::new();
        if let Some(u) = q.from {
            params.push(seeded.users[u].user().id.to_string());
            filters.push_str(&format!(" AND author = ${}", params.len() + 2));
        }
        if let Some(c) = q.channel {
            params.push(seeded.channels[c].to_string());
            filters.push_str(&format!(" AND channel = ${}", params.len() + 2));
        }
        let sql = format!(
            "SELECT channel, seq, ts_rank(tsv, q) AS rank \
             FROM messages, (SELECT {} AS q) AS query \
             WHERE tsv @@ q AND workspace = $1 AND channel = ANY($2){filters} \
             ORDER BY rank DESC LIMIT {PAGE}",
            tsquery.join(" && ")
        );
        PeerQuery { sql, params }
    }
}

/// One connection of a searcher, with its prepared statements.
struct Connection {
    client: Client,
    prepared: tokio::sync::Mutex<HashMap<String, Statement>>,
}

impl Connection {
    async fn open(conninfo: &str) -> Result<Connection> {
        let client = connect(conninfo).await?;
        // A plan for each query's own words (a generic plan cannot know how selective they are).
        client.batch_execute("SET plan_cache_mode = force_custom_plan").await?;
        Ok(Connection { client, prepared: tokio::sync::Mutex::new(HashMap::new()) })
    }

    async fn search(&self, q: &PeerQuery, workspace: &str, allowed: &[String]) -> Result<Vec<String>, String> {
        let statement = {
            let mut prepared = self.prepared.lock().await;
            match prepared.get(&q.sql) {
                Some(s) => s.clone(),
                None => {
                    let s = self.client.prepare(&q.sql).await.map_err(|e| e.to_string())?;
                    prepared.insert(q.sql.clone(), s.clone());
                    s
                }
            }
        };
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&workspace, &allowed];
        params.extend(q.params.iter().map(|p| p as &(dyn ToSql + Sync)));
        let rows = self.client.query(&statement, &params).await.map_err(|e| format!("{}: {e}", q.sql))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }
}
