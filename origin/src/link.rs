//! The origin's end of the origin ↔ edge link (ARCHITECTURE §2 "The feed", §3), on QUIC.
//!
//! Edges keep their warm caches current by tailing the feed, and answer what their caches do not
//! hold with calls; both go over one QUIC connection per edge, so a slow snapshot never holds up
//! the feed (each stream has its own flow control) and one handshake serves everything. The wire
//! protocol lives in [`selvage_shared::link`]; this module is its server:
//!
//! - every stream an edge opens starts with a `link_open` frame
//!   ([`selvage_shared::link::LinkOpen`]); a wrong edge key or protocol gets one
//!   `unauthorized` [`LinkReply`] with id 0 and the stream is finished. Keys are compared in
//!   constant time (as SHA-256 digests, so their length does not leak either);
//! - a **feed** stream streams the log after the edge's cursor (one [`Feed::read_after`] batch
//!   per frame), then new events as they commit (woken by [`Feed::subscribe`]), with a
//!   heartbeat every second of quiet so the edge can tell a quiet feed from a dead one. The
//!   first frame is sent at once (a heartbeat at the start position, or a `resync`), which also
//!   tells the edge its key was accepted;
//! - a **calls** stream runs every [`LinkCall`] as its own task — at most
//!   [`CALLS_IN_FLIGHT`] at once per stream, the reader waits for a slot rather than dropping
//!   anything — and funnels the replies through one writer task over a bounded queue.
//!
//! Nothing an edge sends can panic the origin or make it allocate without bound: frame lengths
//! are checked before anything is allocated ([`MAX_OPEN_FRAME_BYTES`], [`MAX_CALL_FRAME_BYTES`]),
//! a frame that does not decode is answered with `bad_frame`, every write and call has a timeout,
//! and connections and streams per connection are capped.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::crypto::rustls::QuicServerConfig;
use selvage_shared::{
    link::{
        encode_frame, Answer, Call, LinkCall, LinkError, LinkReply, FRAME_PREFIX_BYTES, LINK_ALPN, MAX_LINK_FRAME_BYTES,
    },
    quic::{read_frame, write_frames, FrameReadError, FrameReader},
    tls::{self, Identity},
    Cursor, ErrorCode, FeedFrame, FeedItem, WorkspaceId, MAX_FEED_FRAME_BYTES, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::{
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    accounts,
    channels::read_markers,
    config::LinkConfig,
    error::OriginError,
    feed::{self, relay::Relayed, Feed, Position, Read},
    messages::{history, sequencer::SendRequest},
    presence, snapshot, Origin, StartError,
};

/// Largest first frame of a stream (`link_open` is a few hundred bytes).
pub const MAX_OPEN_FRAME_BYTES: usize = 64 * 1024;
/// Largest call frame (a `send` carries at most 64 KiB of text).
pub const MAX_CALL_FRAME_BYTES: usize = 1024 * 1024;
/// Calls one calls stream may have running at once; the stream's reader waits for a free slot.
pub const CALLS_IN_FLIGHT: usize = 1024;
/// Encoded replies waiting for a calls stream's writer.
const REPLY_QUEUE: usize = 1024;
/// Log entries per feed read (and at most per feed frame).
const FEED_BATCH: usize = 1024;
/// A feed stream with nothing new sends a heartbeat this often.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long an edge has to send its `link_open` on a new stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a frame may take to write: an edge that reads nothing for this long has its stream
/// closed (it reconnects and resumes from its cursor).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one call may take before the edge is told to retry.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Log entries one `events` call scans at most, looking for the workspace's events.
const EVENTS_SCAN_BUDGET: usize = 10_000;
/// Edge connections at once; more are refused.
const MAX_CONNECTIONS: usize = 1024;
/// Bidirectional streams one connection may have open at once (an edge uses two).
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// How long a connection may be silent before it is dropped (edges send keep-alives).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections and calls to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The link's QUIC endpoint, bound but not yet serving: binding comes first so a taken port
/// fails the start before storage is opened.
pub struct Bound {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: String,
    key_digest: [u8; 32],
}

/// A serving link endpoint.
pub struct Link {
    /// The UDP address the link listens on (the real port when configured with port 0).
    pub addr: SocketAddr,
    /// Lower-case hex SHA-256 of the link's certificate, for edges to pin.
    pub fingerprint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Waits until the endpoint has closed (after the shutdown token is cancelled).
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "link task failed");
        }
    }
}

/// Binds the link's endpoint if `config.edge_key` is set; `None` (and one log line saying how
/// to turn it on) otherwise.
pub fn bind(config: &LinkConfig, data_dir: &std::path::Path) -> Result<Option<Bound>, StartError> {
    let Some(edge_key) = config.edge_key.as_deref() else {
        tracing::info!("the edge link is off: set link.edge_key (SELVAGE_LINK__EDGE_KEY) to let edges connect");
        return Ok(None);
    };
    let identity = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => Identity::from_pem_files(cert, key),
        // Kept in the data directory, so the fingerprint edges pin survives restarts.
        _ => Identity::self_signed_in(data_dir, "link", &config.names),
    }
    .map_err(|e| StartError::Link(e.to_string()))?;
    let fingerprint = identity.fingerprint();
    let endpoint_config = endpoint_config(&identity);
    let tls = tls::server_config(identity, &[LINK_ALPN]).map_err(|e| StartError::Link(e.to_string()))?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| StartError::Link(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|e| StartError::Link(e.to_string()))?,
        ));
    server.transport_config(Arc::new(transport));
    let bind_err = |source| StartError::Bind { addr: config.listen, source };
    let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
    let endpoint =
        quinn::Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime)).map_err(bind_err)?;
    let addr = endpoint.local_addr().map_err(bind_err)?;
    Ok(Some(Bound { endpoint, addr, fingerprint, key_digest: digest(edge_key) }))
}

/// The link endpoint's connection ids and stateless resets, keyed by secrets derived from the
/// link's private key so that they survive restarts: an origin started again on the same data
/// recognises the connection ids of its previous life and answers their packets with a reset
/// the edges accept (QUIC, RFC 9000 §10.3), so they reconnect at once instead of waiting out
/// the idle timeout.
fn endpoint_config(identity: &tls::Identity) -> quinn::EndpointConfig {
    let (reset, cid_key) = link_secrets(identity);
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset)));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

/// The stateless-reset key and the connection-id key of [`endpoint_config`].
fn link_secrets(identity: &tls::Identity) -> ([u8; 32], u64) {
    let derive = |label: &[u8]| -> [u8; 32] {
        let mut secret = Sha256::new();
        secret.update(label);
        secret.update(identity.key.secret_der());
        secret.finalize().into()
    };
    let cid = derive(b"selvage link connection id key\0");
    let cid_key = u64::from_le_bytes([cid[0], cid[1], cid[2], cid[3], cid[4], cid[5], cid[6], cid[7]]);
    (derive(b"selvage link stateless reset key\0"), cid_key)
}

impl Bound {
    /// The address the endpoint is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts accepting edges; runs until `shutdown`, then closes every connection.
    pub fn serve(self, origin: Arc<Origin>, shutdown: CancellationToken) -> Link {
        let Bound { endpoint, addr, fingerprint, key_digest } = self;
        tracing::info!(%addr, %fingerprint, "edge link listening");
        let ctx = Arc::new(Ctx { origin, shutdown, tracker: TaskTracker::new(), key_digest });
        let task = tokio::spawn(accept_loop(ctx, endpoint));
        Link { addr, fingerprint, task }
    }
}

/// What every connection and stream task shares.
struct Ctx {
    origin: Arc<Origin>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    key_digest: [u8; 32],
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

async fn accept_loop(ctx: Arc<Ctx>, endpoint: quinn::Endpoint) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let incoming = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let remote = incoming.remote_address();
            tracing::warn!(%remote, max = MAX_CONNECTIONS, "edge link full; connection refused");
            incoming.refuse();
            continue;
        };
        let span = tracing::info_span!("link_conn", remote = %incoming.remote_address());
        ctx.tracker.spawn(serve_connection(ctx.clone(), incoming, slot).instrument(span));
    }
    endpoint.close(0u32.into(), b"origin shutting down");
    ctx.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, ctx.tracker.wait()).await.is_err() {
        tracing::warn!("edge link tasks still running after the shutdown grace period");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    tracing::info!("edge link closed");
}

async fn serve_connection(ctx: Arc<Ctx>, incoming: quinn::Incoming, _slot: OwnedSemaphorePermit) {
    let conn = match tokio::time::timeout(OPEN_TIMEOUT, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "edge link handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!("edge link handshake timed out");
            return;
        }
    };
    let metrics = &ctx.origin.metrics;
    metrics.link_connections.inc();
    tracing::debug!("edge connected");
    loop {
        let (send, recv) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "edge connection ended");
                    break;
                }
            },
        };
        let span = tracing::debug_span!("link_stream", stream.id = %send.id());
        ctx.tracker.spawn(serve_stream(ctx.clone(), send, recv).instrument(span));
    }
    metrics.link_connections.dec();
}

/// Writes one encoded frame, giving up after [`WRITE_TIMEOUT`].
async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, send.write_all(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the edge read nothing for {} s", WRITE_TIMEOUT.as_secs())),
    }
}

fn link_error(code: ErrorCode, message: impl Into<String>) -> LinkError {
    LinkError { code, message: message.into() }
}

/// Encodes a reply; an answer too large for one frame becomes a `too_large` error.
fn encode_reply(id: u64, reply: Result<Answer, LinkError>) -> Vec<u8> {
    match encode_frame(&LinkReply { id, reply }) {
        Ok(frame) => frame,
        Err(e) => {
            let error = link_error(
                ErrorCode::TooLarge,
                format!("the answer is over the {MAX_LINK_FRAME_BYTES}-byte frame limit ({e}); ask for less"),
            );
            // A reply holding only a short error message is far below the frame limit.
            encode_frame(&LinkReply { id, reply: Err(error) }).unwrap_or_default()
        }
    }
}

/// Answers a stream that may not go on with one error reply (id 0), then finishes it and stops
/// reading from it.
async fn refuse(ctx: &Ctx, mut send: quinn::SendStream, mut recv: quinn::RecvStream, error: LinkError) {
    ctx.origin.metrics.link_refused.inc();
    tracing::info!(code = %error.code, reason = %error.message, "edge link stream refused");
    let _ = write_frame(&mut send, &encode_reply(0, Err(error))).await;
    let _ = send.finish();
    let _ = recv.stop(0u32.into());
}

async fn serve_stream(ctx: Arc<Ctx>, send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let open = match tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut recv, MAX_OPEN_FRAME_BYTES)).await {
        Err(_) => {
            let e = link_error(ErrorCode::BadFrame, "no link_open frame within 10 s of opening the stream");
            return refuse(&ctx, send, recv, e).await;
        }
        Ok(Ok(None)) | Ok(Err(FrameReadError::Read(_))) => return,
        Ok(Err(FrameReadError::Truncated { .. })) => {
            let e = link_error(ErrorCode::BadFrame, "the stream ended inside its first frame");
            return refuse(&ctx, send, recv, e).await;
        }
        Ok(Err(FrameReadError::TooLarge(e))) => {
            let e = link_error(ErrorCode::TooLarge, format!("the first frame (link_open) is too large: {e}"));
            return refuse(&ctx, send, recv, e).await;
        }
        Ok(Ok(Some(bytes))) => match selvage_shared::from_msgpack::<LenientOpen>(&bytes) {
            Ok(open) => open,
            Err(e) => {
                let e =
                    link_error(ErrorCode::BadFrame, format!("the first frame of a link stream must be link_open: {e}"));
                return refuse(&ctx, send, recv, e).await;
            }
        },
    };
    // Compare digests in constant time: neither the key nor its length leaks through timing.
    let key_ok: bool = digest(&open.edge_key).ct_eq(&ctx.key_digest).into();
    if !key_ok {
        let e =
            link_error(ErrorCode::Unauthorized, "wrong edge key: the edge's key must equal the origin's link.edge_key");
        return refuse(&ctx, send, recv, e).await;
    }
    if open.protocol != PROTOCOL_VERSION {
        let e = link_error(
            ErrorCode::Unauthorized,
            format!("the edge speaks protocol {} but this origin speaks {PROTOCOL_VERSION}", open.protocol),
        );
        return refuse(&ctx, send, recv, e).await;
    }
    let edge_id: Arc<str> = open.edge_id.chars().take(64).collect::<String>().into();
    match open.stream {
        LenientStream::Feed { cursor } => {
            // Edges write nothing after link_open on a feed stream.
            let _ = recv.stop(0u32.into());
            let requested = match cursor {
                None => Requested::Head,
                Some(s) => match Cursor::parse(&s).and_then(|c| c.position()) {
                    Some(pos) => Requested::After(pos),
                    None => Requested::Unparsable(s.chars().take(40).collect()),
                },
            };
            let from = match &requested {
                Requested::Head => "head".to_owned(),
                Requested::After(pos) => feed::cursor(pos).to_string(),
                Requested::Unparsable(s) => format!("unparsable {s:?}"),
            };
            tracing::info!(edge.id = %edge_id, from = %from, "edge tails the feed");
            let _open = StreamGauge::new(&ctx, "feed");
            match feed_stream(&ctx, send, requested, &edge_id).await {
                Ok(()) => tracing::debug!(edge.id = %edge_id, "feed stream ended"),
                Err(e) => tracing::info!(edge.id = %edge_id, error = %e, "feed stream ended"),
            }
        }
        LenientStream::Calls => {
            tracing::info!(edge.id = %edge_id, "edge opened a calls stream");
            let _open = StreamGauge::new(&ctx, "calls");
            calls_stream(&ctx, send, recv, &edge_id).await;
            tracing::debug!(edge.id = %edge_id, "calls stream ended");
        }
    }
}

/// Keeps `selvage_link_streams{kind}` right however a stream ends.
struct StreamGauge {
    gauge: prometheus::IntGauge,
}

impl StreamGauge {
    fn new(ctx: &Ctx, kind: &str) -> Self {
        let gauge = ctx.origin.metrics.link_streams.with_label_values(&[kind]);
        gauge.inc();
        StreamGauge { gauge }
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

// ---------------------------------------------------------------------------------------------
// Feed streams.

/// [`selvage_shared::link::LinkOpen`] with the feed cursor as a plain string: an edge whose
/// cursor does not parse still gets a feed stream, one that starts with a `resync` from the head
/// saying why, instead of a refusal it could not act on. Decodes every `LinkOpen` (checked by a
/// test).
#[derive(Debug, Deserialize)]
struct LenientOpen {
    protocol: u32,
    edge_key: String,
    edge_id: String,
    stream: LenientStream,
}

/// [`selvage_shared::link::LinkStream`] with the cursor as a plain string.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum LenientStream {
    Feed {
        #[serde(default)]
        cursor: Option<String>,
    },
    Calls,
}

/// Where a feed stream starts.
#[derive(Debug)]
enum Requested {
    /// At the newest event.
    Head,
    /// After this position.
    After(Position),
    /// The edge's cursor did not parse (the first 40 characters of it).
    Unparsable(String),
}

/// [`FeedFrame::Events`] with borrowed items, so a batch too large for one frame can be split
/// without copying. Serializes exactly like the owned variant (checked by a test).
#[derive(Serialize)]
#[serde(tag = "type", rename = "events")]
struct EventsFrame<'a> {
    items: &'a [FeedItem],
    cursor: &'a Cursor,
}

/// Encodes a batch of events as one or more frames within [`MAX_FEED_FRAME_BYTES`], splitting
/// it in halves as needed. Each frame's cursor is its last item's, the last frame's `next`.
fn encode_events(items: &[FeedItem], next: &Cursor, out: &mut Vec<Vec<u8>>) {
    match encode_frame(&EventsFrame { items, cursor: next }) {
        Ok(frame) if frame.len() - FRAME_PREFIX_BYTES <= MAX_FEED_FRAME_BYTES => out.push(frame),
        _ if items.len() > 1 => {
            let (first, second) = items.split_at(items.len() / 2);
            // `first` is not empty: items.len() >= 2.
            let first_next = first.last().map(|i| i.cursor.clone()).unwrap_or_else(|| next.clone());
            encode_events(first, &first_next, out);
            encode_events(second, next, out);
        }
        _ => {
            // One stored event is at most 100 KB, far below the frame limit; should one ever not
            // fit, skip it loudly rather than wedge every edge on it.
            let cursor = items.first().map(|i| i.cursor.as_str().to_owned()).unwrap_or_default();
            tracing::error!(%cursor, "feed event too large for a frame; skipped");
            if let Ok(frame) = encode_frame(&EventsFrame { items: &[], cursor: next }) {
                out.push(frame);
            }
        }
    }
}

fn encode_feed(frame: &FeedFrame) -> Result<Vec<u8>, String> {
    encode_frame(frame).map_err(|e| e.to_string())
}

/// Streams the feed after `cursor` until the edge goes away or the origin shuts down.
async fn feed_stream(
    ctx: &Ctx,
    mut send: quinn::SendStream,
    requested: Requested,
    edge_id: &Arc<str>,
) -> Result<(), String> {
    let feed: &Feed = &ctx.origin.feed;
    let metrics = &ctx.origin.metrics;
    let head = feed.head().await.map_err(|e| format!("cannot read the feed head: {e}"))?;
    let resync_at_head = |reason: String| (head, FeedFrame::Resync { reason, cursor: feed::cursor(&head) });
    let (mut pos, first) = match requested {
        Requested::Head => (head, FeedFrame::Heartbeat { cursor: feed::cursor(&head) }),
        Requested::Unparsable(s) => resync_at_head(format!(
            "{s:?} is not a feed cursor (24 lower-case hex digits); rebuild caches from snapshots and continue \
             from this cursor"
        )),
        Requested::After(p) if p > head => resync_at_head(
            "the cursor is ahead of this origin's feed (restored or different data?); rebuild caches from \
             snapshots and continue from this cursor"
                .into(),
        ),
        Requested::After(p) => (p, FeedFrame::Heartbeat { cursor: feed::cursor(&p) }),
    };
    // The first frame goes out at once: it tells the edge its key was accepted.
    write_frame(&mut send, &encode_feed(&first)?).await?;
    let mut last_write = Instant::now();
    let mut wake = feed.subscribe();
    let mut relayed = ctx.origin.relay.subscribe();
    let mut frames = Vec::new();
    loop {
        wake.borrow_and_update();
        let read = match feed.read_after(&pos, FEED_BATCH).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "feed read failed; retrying");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                }
            }
        };
        match read {
            Read::Resync { trim_point } => {
                let frame = FeedFrame::Resync {
                    reason: format!(
                        "cursor {} is older than the feed's trim point: the events after it were trimmed; rebuild \
                         caches from snapshots and continue from this cursor",
                        feed::cursor(&pos)
                    ),
                    cursor: feed::cursor(&trim_point),
                };
                write_frame(&mut send, &encode_feed(&frame)?).await?;
                last_write = Instant::now();
                pos = trim_point;
                continue;
            }
            Read::Events { items, next } => {
                if next != pos {
                    let full = items.len() >= FEED_BATCH;
                    let n = items.len() as u64;
                    let items: Vec<FeedItem> = items
                        .into_iter()
                        .map(|(p, e)| FeedItem {
                            cursor: feed::cursor(&p),
                            workspace: e.workspace,
                            ts: e.ts,
                            event: e.event,
                        })
                        .collect();
                    frames.clear();
                    encode_events(&items, &feed::cursor(&next), &mut frames);
                    for frame in &frames {
                        write_frame(&mut send, frame).await?;
                    }
                    metrics.link_feed_events.inc_by(n);
                    last_write = Instant::now();
                    pos = next;
                    if full {
                        continue;
                    }
                }
            }
        }
        // Caught up: wait for new events, sending a heartbeat after a second of quiet, and pass
        // on ephemeral events from other edges (and the origin's own) meanwhile.
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                let _ = send.finish();
                return Ok(());
            }
            relay = relayed.recv() => match relay {
                Ok(r) if r.from_edge.as_ref() != Some(edge_id) => {
                    let frame = FeedFrame::Ephemeral { workspace: r.workspace, event: Box::new(r.event) };
                    write_frame(&mut send, &encode_feed(&frame)?).await?;
                    last_write = Instant::now();
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    metrics.link_relay_dropped.inc_by(n);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err("the relay stopped".into()),
            },
            changed = tokio::time::timeout_at(last_write + HEARTBEAT_EVERY, wake.changed()) => match changed {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the feed notifier stopped".into()),
                Err(_) => {
                    write_frame(&mut send, &encode_feed(&FeedFrame::Heartbeat { cursor: feed::cursor(&pos) })?).await?;
                    last_write = Instant::now();
                }
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calls streams.

/// Just the id of a call that does not decode as a whole, so its error can still be matched to
/// it by the edge.
#[derive(Deserialize)]
struct CallId {
    id: u64,
}

/// Reads calls until the edge finishes the stream, runs each as its own task, and writes the
/// replies through one writer task.
async fn calls_stream(ctx: &Arc<Ctx>, send: quinn::SendStream, recv: quinn::RecvStream, edge_id: &Arc<str>) {
    let (replies, queue) = mpsc::channel::<Vec<u8>>(REPLY_QUEUE);
    let writer = tokio::spawn(write_replies(send, queue));
    let slots = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let metrics = &ctx.origin.metrics;
    let mut calls = FrameReader::new(recv);
    loop {
        let frame = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            frame = calls.read_frame(MAX_CALL_FRAME_BYTES) => frame,
        };
        let bytes = match frame {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break,
            Err(FrameReadError::Read(e)) => {
                tracing::debug!(error = %e, "calls stream read failed");
                break;
            }
            Err(FrameReadError::Truncated { .. }) => break,
            Err(FrameReadError::TooLarge(e)) => {
                // The stream cannot be resynchronised past a frame that is not read: answer and end.
                metrics.link_calls.with_label_values(&["invalid"]).inc();
                let error = link_error(ErrorCode::TooLarge, format!("call frame refused: {e}"));
                let _ = replies.send(encode_reply(0, Err(error))).await;
                let _ = calls.stream().stop(0u32.into());
                break;
            }
        };
        let call = match selvage_shared::from_msgpack::<LinkCall>(&bytes) {
            Ok(call) if call.id != 0 => call,
            Ok(_) => {
                metrics.link_calls.with_label_values(&["invalid"]).inc();
                let error = link_error(ErrorCode::BadFrame, "call id 0 is reserved; number calls from 1");
                if replies.send(encode_reply(0, Err(error))).await.is_err() {
                    break;
                }
                continue;
            }
            Err(e) => {
                metrics.link_calls.with_label_values(&["invalid"]).inc();
                let id = selvage_shared::from_msgpack::<CallId>(&bytes).map(|c| c.id).unwrap_or(0);
                let error = link_error(ErrorCode::BadFrame, format!("call does not decode: {e}"));
                if replies.send(encode_reply(id, Err(error))).await.is_err() {
                    break;
                }
                continue;
            }
        };
        // Ephemeral calls are answered here, in order and without a task: each is a hand-over
        // to memory, and a user's presence reports must be taken in the order the edge sent them.
        if let Some(reply) = ephemeral(&ctx.origin, edge_id, &call.call) {
            metrics.link_calls.with_label_values(&[call.call.name()]).inc();
            if replies.send(encode_reply(call.id, reply)).await.is_err() {
                break;
            }
            continue;
        }
        let slot = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let name = call.call.name();
        metrics.link_calls.with_label_values(&[name]).inc();
        let (ctx, replies) = (ctx.clone(), replies.clone());
        let span = tracing::debug_span!("link_call", call.id = call.id, call = name);
        ctx.tracker.clone().spawn(
            async move {
                let reply = run_call(&ctx.origin, call.call).await;
                let _ = replies.send(encode_reply(call.id, reply)).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
    // The writer ends once every running call has sent its reply.
    drop(replies);
    if let Err(e) = writer.await {
        tracing::error!(error = %e, "calls writer failed");
    }
}

/// Answers the calls about ephemeral state (relays, presence) at once; `None` for the rest.
fn ephemeral(origin: &Origin, edge_id: &Arc<str>, call: &Call) -> Option<Result<Answer, LinkError>> {
    let now = tokio::time::Instant::now();
    let reply = match call {
        Call::Relay { workspace, event } if event.is_ephemeral() => {
            let relayed =
                Relayed { from_edge: Some(edge_id.clone()), workspace: workspace.clone(), event: (**event).clone() };
            origin.relay.publish(relayed);
            Ok(Answer::Done)
        }
        Call::Relay { .. } => {
            Err(link_error(ErrorCode::BadRequest, "only ephemeral events (typing, presence) are relayed"))
        }
        Call::Presence { workspace, reports } => {
            presence::announce(&origin.relay, origin.presence.report(edge_id, workspace, reports, now));
            Ok(Answer::Done)
        }
        Call::SetDnd { workspace, user, dnd } => {
            presence::announce(&origin.relay, origin.presence.set_dnd(workspace, user, *dnd, now));
            Ok(Answer::Done)
        }
        Call::PresenceSnapshot { workspace } => Ok(Answer::Presences { users: origin.presence.online(workspace, now) }),
        _ => return None,
    };
    Some(reply)
}

async fn write_replies(mut send: quinn::SendStream, mut queue: mpsc::Receiver<Vec<u8>>) {
    match write_frames(&mut send, &mut queue, WRITE_TIMEOUT).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => {
            tracing::debug!(error = %e, "calls stream write failed");
            // Callers still sending get an error from the closed queue.
            queue.close();
        }
    }
}

/// Runs one call under [`CALL_TIMEOUT`], mapping failures through [`OriginError::code`].
async fn run_call(origin: &Origin, call: Call) -> Result<Answer, LinkError> {
    match tokio::time::timeout(CALL_TIMEOUT, answer(origin, call)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => {
            if matches!(e.code(), ErrorCode::Internal | ErrorCode::Unavailable) {
                tracing::warn!(error = %e, "link call failed");
            }
            // As over HTTP: a server error's detail is logged here, never sent on to clients.
            Err(link_error(e.code(), e.client_message()))
        }
        Err(_) => Err(link_error(
            ErrorCode::Unavailable,
            format!("the origin did not answer within {} s; retry with backoff", CALL_TIMEOUT.as_secs()),
        )),
    }
}

async fn answer(origin: &Origin, call: Call) -> Result<Answer, OriginError> {
    match call {
        Call::Authenticate { token_hash } => {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&token_hash, &mut hash).map_err(|_| {
                OriginError::Unauthorized("token_hash must be the 64-hex-digit SHA-256 of the token".into())
            })?;
            let (caller, expires_at) = accounts::authenticate_hash(&origin.store, &hash).await?;
            Ok(Answer::Principal { workspace: caller.workspace, user: caller.user.id, expires_at })
        }
        Call::Snapshot { workspace } => {
            Ok(Answer::Snapshot(Box::new(snapshot::read(&origin.store, &workspace).await?)))
        }
        Call::Send { workspace, user, channel, text, client_msg_id, thread_root } => {
            let request = SendRequest { workspace, channel, user, text, client_msg_id, thread_root };
            let sent = origin.sequencer.send(request).await?;
            Ok(Answer::Sent { message: Box::new(sent.message), cursor: sent.cursor, duplicate: sent.duplicate })
        }
        Call::History { workspace, user, channel, before, after, limit } => {
            let caller = accounts::caller_for(&origin.store, &workspace, &user).await?;
            let bounds = history::Bounds { before, after, limit: limit as usize };
            let page = history::page(&origin.store, &caller, &channel, bounds).await?;
            Ok(Answer::Messages { messages: page.messages, has_more: page.has_more })
        }
        Call::Thread { workspace, user, channel, root, before, after, limit } => {
            let caller = accounts::caller_for(&origin.store, &workspace, &user).await?;
            let bounds = history::Bounds { before, after, limit: limit as usize };
            let page = history::thread(&origin.store, &caller, &channel, root, bounds).await?;
            Ok(Answer::Messages { messages: page.messages, has_more: page.has_more })
        }
        Call::Events { workspace, after, limit } => events(&origin.feed, &workspace, &after, limit).await,
        Call::MarkRead { workspace, user, channel, seq } => {
            let caller = accounts::caller_for(&origin.store, &workspace, &user).await?;
            let seq = read_markers::mark(&origin.store, &caller, &channel, seq).await?;
            Ok(Answer::ReadMarker { seq })
        }
        Call::Relay { .. } | Call::Presence { .. } | Call::SetDnd { .. } | Call::PresenceSnapshot { .. } => {
            Err(OriginError::BadRequest("ephemeral calls are answered by the calls stream".into()))
        }
    }
}

/// A workspace's events after `after`: scans the log (at most [`EVENTS_SCAN_BUDGET`] entries)
/// until `limit` of them are found or the log ends.
async fn events(feed: &Feed, workspace: &WorkspaceId, after: &Cursor, limit: u32) -> Result<Answer, OriginError> {
    let limit = limit as usize;
    if !(1..=history::MAX_PAGE).contains(&limit) {
        return Err(OriginError::BadRequest(format!("limit must be between 1 and {}", history::MAX_PAGE)));
    }
    let mut pos: Position =
        after.position().ok_or_else(|| OriginError::BadRequest(format!("{after} is not a feed cursor")))?;
    // Read in chunks of at least a few hundred entries: other workspaces' events are skipped,
    // and a small limit must not turn the scan into thousands of tiny reads.
    let chunk = limit.clamp(256, FEED_BATCH);
    let mut items = Vec::new();
    let mut scanned = 0usize;
    loop {
        match feed.read_after(&pos, chunk).await? {
            Read::Resync { trim_point } => {
                return Ok(Answer::Events { items, next: feed::cursor(&trim_point), more: true, resync: true });
            }
            Read::Events { items: batch, next } => {
                let batch_len = batch.len();
                for (p, e) in batch {
                    if e.workspace != *workspace {
                        continue;
                    }
                    items.push(FeedItem { cursor: feed::cursor(&p), workspace: e.workspace, ts: e.ts, event: e.event });
                    if items.len() == limit {
                        return Ok(Answer::Events { items, next: feed::cursor(&p), more: true, resync: false });
                    }
                }
                pos = next;
                scanned += batch_len;
                if batch_len < chunk {
                    return Ok(Answer::Events { items, next: feed::cursor(&pos), more: false, resync: false });
                }
                if scanned >= EVENTS_SCAN_BUDGET {
                    return Ok(Answer::Events { items, next: feed::cursor(&pos), more: true, resync: false });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use selvage_shared::{
        link::{LinkOpen, LinkStream},
        ChannelId, Event, UserId,
    };

    use super::*;

    fn item(n: u8, text_len: usize) -> FeedItem {
        FeedItem {
            cursor: Cursor::from_position(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, n]),
            workspace: WorkspaceId::new_unchecked("W1"),
            ts: 5,
            event: Event::Message(selvage_shared::Message {
                client_msg_id: format!("m{n}"),
                ..selvage_shared::Message::new(
                    ChannelId::new_unchecked("C1"),
                    u64::from(n),
                    5,
                    UserId::new_unchecked("U1"),
                    "x".repeat(text_len),
                )
            }),
        }
    }

    #[test]
    fn borrowed_events_frames_decode_as_feed_frames() {
        let items = vec![item(1, 3), item(2, 4)];
        let next = Cursor::from_position(&[9; 12]);
        let mut out = Vec::new();
        encode_events(&items, &next, &mut out);
        assert_eq!(out.len(), 1);
        let owned = encode_frame(&FeedFrame::Events { items: items.clone(), cursor: next.clone() }).unwrap();
        assert_eq!(out[0], owned, "same bytes as the owned variant");
        let back = selvage_shared::decode_feed_frame(&out[0][FRAME_PREFIX_BYTES..]).unwrap();
        assert_eq!(back, FeedFrame::Events { items, cursor: next });
    }

    #[test]
    fn oversized_batches_split_in_order_with_cursors() {
        // 300 events of 64 KiB: ~19 MiB, over the 16 MiB feed frame limit.
        let items: Vec<FeedItem> = (0..=255u8).chain(0..44).map(|n| item(n, 64 * 1024)).collect();
        let next = Cursor::from_position(&[9; 12]);
        let mut out = Vec::new();
        encode_events(&items, &next, &mut out);
        assert!(out.len() >= 2, "split into {} frames", out.len());
        let mut seen = Vec::new();
        for (i, frame) in out.iter().enumerate() {
            assert!(frame.len() - FRAME_PREFIX_BYTES <= MAX_FEED_FRAME_BYTES);
            match selvage_shared::decode_feed_frame(&frame[FRAME_PREFIX_BYTES..]).unwrap() {
                FeedFrame::Events { items, cursor } => {
                    if i + 1 == out.len() {
                        assert_eq!(cursor, next, "the last frame ends at the batch's cursor");
                    } else {
                        assert_eq!(Some(&cursor), items.last().map(|i| &i.cursor), "a frame ends at its last item");
                    }
                    seen.extend(items);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn every_link_open_decodes_leniently() {
        let cursor = Cursor::from_position(&[7; 12]);
        for stream in
            [LinkStream::Feed { cursor: Some(cursor.clone()) }, LinkStream::Feed { cursor: None }, LinkStream::Calls]
        {
            let open = LinkOpen { protocol: 1, edge_key: "k".into(), edge_id: "e".into(), stream: stream.clone() };
            let lenient: LenientOpen = selvage_shared::from_msgpack(&selvage_shared::to_msgpack(&open)).unwrap();
            assert_eq!((lenient.protocol, lenient.edge_key.as_str(), lenient.edge_id.as_str()), (1, "k", "e"));
            match (stream, lenient.stream) {
                (LinkStream::Feed { cursor: a }, LenientStream::Feed { cursor: b }) => {
                    assert_eq!(a.map(|c| c.as_str().to_owned()), b)
                }
                (LinkStream::Calls, LenientStream::Calls) => {}
                (a, b) => panic!("{a:?} decoded as {b:?}"),
            }
        }
    }

    #[test]
    fn replies_too_large_become_errors() {
        let messages = (0..65u8)
            .map(|n| match item(n, 1024 * 1024).event {
                Event::Message(m) => m,
                _ => unreachable!(),
            })
            .collect();
        let frame = encode_reply(1, Ok(Answer::Messages { messages, has_more: false }));
        let back: LinkReply = selvage_shared::from_msgpack(&frame[FRAME_PREFIX_BYTES..]).unwrap();
        assert_eq!(back.id, 1);
        assert_eq!(back.reply.unwrap_err().code, ErrorCode::TooLarge);
        let frame = encode_reply(3, Err(link_error(ErrorCode::NotFound, "nope")));
        let back: LinkReply = selvage_shared::from_msgpack(&frame[FRAME_PREFIX_BYTES..]).unwrap();
        assert_eq!(back.id, 3);
        assert_eq!(back.reply.unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn a_restarted_origin_knows_its_connection_ids_and_resets() {
        use quinn_proto::{ConnectionIdGenerator, HashedConnectionIdGenerator};
        let dir = tempfile::tempdir().unwrap();
        let names = ["localhost".to_string()];
        let first = tls::Identity::self_signed_in(dir.path(), "link", &names).unwrap();
        let again = tls::Identity::self_signed_in(dir.path(), "link", &names).unwrap();
        let other = tls::Identity::self_signed(&names).unwrap();
        let (reset, cid_key) = link_secrets(&first);
        assert_eq!(link_secrets(&again), (reset, cid_key), "the same data gives the same secrets");
        let (other_reset, other_cid_key) = link_secrets(&other);
        assert_ne!(reset, other_reset);

        // A connection id made before the restart is recognised after it, and not by another origin.
        let cid = HashedConnectionIdGenerator::from_key(cid_key).generate_cid();
        assert!(HashedConnectionIdGenerator::from_key(link_secrets(&again).1).validate(&cid).is_ok());
        assert!(HashedConnectionIdGenerator::from_key(other_cid_key).validate(&cid).is_err());

        // And the reset token for it is the one the edge was given.
        let token = |key: [u8; 32]| ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), &cid);
        assert_eq!(token(reset).as_ref(), token(link_secrets(&again).0).as_ref());
    }
}
