//! The edge's end of the origin ↔ edge link (ARCHITECTURE §2 "The feed", §3): one QUIC connection to
//! the origin carrying the feed the edge's caches are kept current by, and the calls it makes
//! for whatever its caches do not hold. The protocol is [`selvage_shared::link`].
//!
//! [`Upstream::start`] returns at once and connects in the background, forever: a link that
//! drops (origin restart, network cut, [`Upstream::bounce`]) is re-established with exponential
//! backoff (100 ms doubling to 5 s, jittered so a fleet of edges does not reconnect in step),
//! warning once per outage and saying so when it recovers. QUIC keep-alives every second and a
//! 5 s idle timeout notice a cut link within seconds even when nothing is being sent.
//!
//! **The feed is delivered exactly once and in order across reconnects.** The consumer gets
//! [`FeedUpdate`]s through a bounded queue; [`Upstream::cursor`] is the cursor of the last one
//! it was handed, updated in the same step as the hand-over (a hand-over interrupted by a link
//! loss never happened), and every new connection asks the origin for the feed *after* that
//! cursor. The origin never repeats an event after a cursor, and items at or before the cursor
//! are dropped here too, so nothing is skipped and nothing is repeated. When the consumer is
//! slow, the queue fills, reading from the origin stops, and QUIC flow control pushes back to
//! the origin: nothing is buffered without bound.
//!
//! **Calls** share one stream per connection: each gets an id, a waiting slot in a pending map,
//! and its frame goes through one writer task; one reader task matches replies to slots. While
//! the link is down, calls fail at once with `unavailable`; when it drops mid-call, every
//! waiting call fails with `unavailable` too. The caller retries later — a `send`'s outcome is
//! then unknown, and retrying with the same `client_msg_id` gets the original `seq`, never a
//! second message.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

use quinn::crypto::rustls::QuicClientConfig;
use selvage_net::{
    quic::{read_frame, write_frames, FrameReader},
    tls::{self, Trust},
};
use selvage_shared::{
    link::{
        encode_frame, Answer, Call, LinkCall, LinkError, LinkOpen, LinkReply, LinkStream, LINK_ALPN,
        MAX_LINK_FRAME_BYTES,
    },
    Cursor, ErrorCode, Event, FeedFrame, FeedItem, WorkspaceId, MAX_FEED_FRAME_BYTES, PROTOCOL_VERSION,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Feed updates waiting for the consumer; when full, reading the feed waits.
pub const FEED_QUEUE: usize = 1024;
/// Call frames waiting for the writer.
const CALL_QUEUE: usize = 1024;
/// First reconnect delay (before jitter).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// QUIC keep-alive: keeps the link warm and lets a cut be noticed while idle.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// QUIC idle timeout: a link silent this long (keep-alives included) is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Resolving the origin's name and the QUIC handshake, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// The origin answers a new feed stream at once (a heartbeat, a resync or a refusal).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// The origin heartbeats every second; this much silence on the feed means it is stuck.
const FEED_SILENCE: Duration = Duration::from_secs(10);
/// Longest a call frame may take to write before the link is considered stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach and authenticate to the origin.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// The origin's link address, `host:port` (resolved at every connection attempt).
    pub origin: String,
    /// The name the origin's certificate is checked against (with [`Trust::CaFile`]).
    pub server_name: String,
    /// Which certificate the origin must present.
    pub trust: Trust,
    /// The shared secret the origin expects (its `link.edge_key`).
    pub edge_key: String,
    /// This edge's name on the link, unique per edge process (see
    /// [`Edge::instance`](crate::node::Edge::instance)): the origin keys the edge's typing
    /// relays and presence reports by it.
    pub edge_id: String,
    /// Longest a call waits for its answer before failing with `unavailable`.
    pub call_timeout: Duration,
    /// Where the feed starts: after this cursor, or at the origin's newest event when `None`.
    pub start_cursor: Option<Cursor>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("origin", &self.origin)
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .field("edge_key", &"<redacted>")
            .field("edge_id", &self.edge_id)
            .field("call_timeout", &self.call_timeout)
            .field("start_cursor", &self.start_cursor)
            .finish()
    }
}

/// What the feed consumer receives, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedUpdate {
    /// Log entries after the previous update's cursor, in log order (internal events included).
    Events(Vec<FeedItem>),
    /// Nothing new up to this cursor.
    Heartbeat(Cursor),
    /// Events were lost to the origin's log trimming (or the cursor was not the origin's):
    /// rebuild every cache from snapshots; the feed continues after `cursor`.
    Resync {
        /// Where the feed continues from.
        cursor: Cursor,
        /// Why, for logs.
        reason: String,
    },
    /// The link came up (the feed continues where it left off).
    LinkUp,
    /// The link went down; it reconnects by itself.
    LinkDown,
    /// An ephemeral event (typing, presence) relayed from another edge or made by the origin;
    /// not part of the log, so no cursor moves.
    Ephemeral {
        /// The workspace.
        workspace: WorkspaceId,
        /// The event.
        event: Box<Event>,
    },
}

/// The edge's client of the origin: the link's state, its calls and its feed cursor.
pub struct Upstream {
    config: UpstreamConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    up: AtomicBool,
    next_id: AtomicU64,
    consumer_gone: AtomicBool,
    /// Set by [`Upstream::bounce`], so the reconnect it causes is not logged as an outage.
    bounced: AtomicBool,
    /// The calls side of the current connection, while up.
    link: Mutex<Option<Arc<CallLink>>>,
    /// The current connection, for [`Upstream::bounce`].
    conn: Mutex<Option<quinn::Connection>>,
    cursor: Mutex<Option<Cursor>>,
    last_error: Mutex<Option<LinkError>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a single assignment or map operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error(code: ErrorCode, message: impl Into<String>) -> LinkError {
    LinkError { code, message: message.into() }
}

fn unavailable(message: impl Into<String>) -> LinkError {
    error(ErrorCode::Unavailable, message)
}

fn internal(message: impl Into<String>) -> LinkError {
    error(ErrorCode::Internal, message)
}

const RETRY_HINT: &str = "retry with backoff (a send's outcome is unknown: retry it with the same client_msg_id)";

impl Upstream {
    /// Starts connecting in the background; returns at once. Must be called inside a tokio
    /// runtime; the background task runs until `shutdown` is cancelled. The receiver gets the
    /// feed (at most [`FEED_QUEUE`] updates wait in it).
    pub fn start(
        config: UpstreamConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Arc<Upstream>, mpsc::Receiver<FeedUpdate>) {
        let (updates, feed) = mpsc::channel(FEED_QUEUE);
        let cursor = config.start_cursor.clone();
        let upstream = Arc::new(Upstream {
            config,
            metrics,
            shutdown,
            up: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            consumer_gone: AtomicBool::new(false),
            bounced: AtomicBool::new(false),
            link: Mutex::new(None),
            conn: Mutex::new(None),
            cursor: Mutex::new(cursor),
            last_error: Mutex::new(None),
        });
        tokio::spawn(upstream.clone().run(updates));
        (upstream, feed)
    }

    /// One call; fails fast with code `unavailable` while the link is down, `unavailable` on
    /// timeout or link loss mid-call.
    pub async fn call(&self, call: Call) -> Result<Answer, LinkError> {
        let name = call.name();
        let outcome = self.call_inner(call).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(e) if e.code == ErrorCode::Unavailable => "unavailable",
            Err(_) => "error",
        };
        self.metrics.origin_calls.with_label_values(&[name, label]).inc();
        outcome
    }

    async fn call_inner(&self, call: Call) -> Result<Answer, LinkError> {
        let deadline = Instant::now() + self.config.call_timeout;
        let link = lock(&self.link).clone().ok_or_else(|| self.down_error())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&LinkCall { id, call })
            .map_err(|e| error(ErrorCode::TooLarge, format!("the call is too large for the link: {e}")))?;
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = lock(&link.pending);
            if pending.closed {
                return Err(self.down_error());
            }
            pending.calls.insert(id, reply);
        }
        let _slot = PendingSlot { link: &link, id };
        let timed_out = || {
            unavailable(format!(
                "the origin did not answer within {} ms; {RETRY_HINT}",
                self.config.call_timeout.as_millis()
            ))
        };
        match tokio::time::timeout_at(deadline, link.frames.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(unavailable(format!("the link to the origin was lost; {RETRY_HINT}"))),
            Err(_) => return Err(timed_out()),
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(unavailable(format!("the link to the origin was lost mid-call; {RETRY_HINT}"))),
            Err(_) => Err(timed_out()),
        }
    }

    fn down_error(&self) -> LinkError {
        if self.shutdown.is_cancelled() {
            return unavailable("the edge is shutting down");
        }
        match lock(&self.last_error).as_ref() {
            Some(e) => {
                unavailable(format!("the link to the origin is down ({}: {}); retry with backoff", e.code, e.message))
            }
            None => unavailable("the link to the origin is not up yet; retry with backoff"),
        }
    }

    /// Whether the link is up (connected, key accepted, feed flowing).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The cursor of the last feed event or heartbeat handed to the consumer.
    pub fn cursor(&self) -> Option<Cursor> {
        lock(&self.cursor).clone()
    }

    /// Why the link last failed (could not connect, was refused, was lost); `None` while up.
    /// An origin that refused the edge key answers `unauthorized`; a TLS failure (such as a
    /// certificate that is not the pinned one) is `unauthorized` too, with rustls's reason.
    pub fn last_error(&self) -> Option<LinkError> {
        lock(&self.last_error).clone()
    }

    /// Closes the current connection (it reconnects by itself) — for drills and tests.
    pub fn bounce(&self) {
        if let Some(conn) = lock(&self.conn).as_ref() {
            tracing::info!("closing the link to the origin on request; it reconnects by itself");
            self.bounced.store(true, Ordering::Relaxed);
            conn.close(0u32.into(), b"bounce");
        }
    }

    /// Connects, serves and reconnects until shutdown.
    async fn run(self: Arc<Self>, updates: mpsc::Sender<FeedUpdate>) {
        let mut backoff = BACKOFF_MIN;
        let mut endpoint: Option<quinn::Endpoint> = None;
        let mut client: Option<quinn::ClientConfig> = None;
        // Set while the link is down after having been up or having failed: one warning each.
        let mut outage: Option<(Instant, u32)> = None;
        while !self.shutdown.is_cancelled() {
            let attempt = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                attempt = self.connect(&mut endpoint, &mut client) => attempt,
            };
            match attempt {
                Ok(session) => {
                    match outage.take() {
                        Some((since, attempts)) => tracing::info!(
                            origin = %self.config.origin,
                            down_ms = since.elapsed().as_millis() as u64,
                            attempts,
                            "link to the origin recovered"
                        ),
                        None => tracing::info!(origin = %self.config.origin, "link to the origin up"),
                    }
                    backoff = BACKOFF_MIN;
                    let reason = self.serve(session, &updates).await;
                    if self.shutdown.is_cancelled() {
                        break;
                    }
                    if self.bounced.swap(false, Ordering::Relaxed) {
                        tracing::info!(reason = %reason.message, "link to the origin bounced; reconnecting");
                    } else {
                        tracing::warn!(
                            origin = %self.config.origin,
                            code = %reason.code,
                            reason = %reason.message,
                            "link to the origin lost; reconnecting"
                        );
                        outage = Some((Instant::now(), 0));
                    }
                    *lock(&self.last_error) = Some(reason);
                }
                Err(e) => {
                    match &mut outage {
                        None => {
                            tracing::warn!(
                                origin = %self.config.origin,
                                code = %e.code,
                                reason = %e.message,
                                "cannot connect to the origin; retrying with backoff"
                            );
                            outage = Some((Instant::now(), 1));
                        }
                        Some((_, attempts)) => {
                            *attempts += 1;
                            let attempts = *attempts;
                            tracing::debug!(code = %e.code, reason = %e.message, attempts, "origin still unreachable");
                        }
                    }
                    *lock(&self.last_error) = Some(e);
                }
            }
            let delay = jittered(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        if let Some(endpoint) = endpoint {
            endpoint.close(0u32.into(), b"edge shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        tracing::debug!("upstream stopped");
    }

    /// One connection attempt: resolve, handshake, open both streams and wait for the feed's
    /// first frame, which says the origin accepted the key.
    async fn connect(
        &self,
        endpoint: &mut Option<quinn::Endpoint>,
        client: &mut Option<quinn::ClientConfig>,
    ) -> Result<Session, LinkError> {
        let addr = resolve(&self.config.origin).await?;
        let client_config = match client {
            Some(c) => c.clone(),
            None => {
                let made = client_config(&self.config.trust)?;
                *client = Some(made.clone());
                made
            }
        };
        let ep = match endpoint {
            Some(ep) if ep.local_addr().is_ok_and(|a| a.is_ipv6() == addr.is_ipv6()) => ep.clone(),
            _ => {
                let bind: SocketAddr = if addr.is_ipv6() {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let ep = quinn::Endpoint::client(bind)
                    .map_err(|e| unavailable(format!("cannot open a UDP socket on {bind}: {e}")))?;
                *endpoint = Some(ep.clone());
                ep
            }
        };
        let connecting = ep
            .connect_with(client_config, addr, &self.config.server_name)
            .map_err(|e| unavailable(format!("cannot connect to the origin at {addr}: {e}")))?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connection_error(addr, &e)),
            Err(_) => {
                return Err(unavailable(format!(
                    "no QUIC handshake with the origin at {addr} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        match self.open_streams(&conn).await {
            Ok(session) => Ok(session),
            Err(e) => {
                conn.close(0u32.into(), b"link setup failed");
                Err(e)
            }
        }
    }

    async fn open_streams(&self, conn: &quinn::Connection) -> Result<Session, LinkError> {
        let lost = |e: &dyn std::fmt::Display| unavailable(format!("the link to the origin failed during setup: {e}"));
        let open = |stream: LinkStream| LinkOpen {
            protocol: PROTOCOL_VERSION,
            edge_key: self.config.edge_key.clone(),
            edge_id: self.config.edge_id.clone(),
            stream,
        };
        let encode = |open: &LinkOpen| {
            encode_frame(open).map_err(|e| error(ErrorCode::TooLarge, format!("link_open does not fit a frame: {e}")))
        };
        let (mut feed_send, mut feed_recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        let feed_open = encode(&open(LinkStream::Feed { cursor: self.cursor() }))?;
        write_frame(&mut feed_send, &feed_open).await.map_err(|e| lost(&e))?;
        // Nothing more goes this way on a feed stream.
        let _ = feed_send.finish();
        let (mut calls_send, calls_recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        write_frame(&mut calls_send, &encode(&open(LinkStream::Calls))?).await.map_err(|e| lost(&e))?;
        let first = match tokio::time::timeout(
            FIRST_FRAME_TIMEOUT,
            read_frame_text(&mut feed_recv, MAX_FEED_FRAME_BYTES),
        )
        .await
        {
            Err(_) => {
                return Err(unavailable(format!(
                    "the origin did not answer the feed stream within {} s",
                    FIRST_FRAME_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(lost(&e)),
            Ok(Ok(None)) => return Err(unavailable("the origin closed the feed stream at once")),
            Ok(Ok(Some(bytes))) => match selvage_shared::decode_feed_frame(&bytes) {
                Ok(frame) => frame,
                // A refused stream gets one error reply instead of a feed frame.
                Err(e) => match selvage_shared::from_msgpack::<LinkReply>(&bytes) {
                    Ok(LinkReply { reply: Err(refusal), .. }) => {
                        return Err(error(refusal.code, format!("the origin refused the link: {}", refusal.message)))
                    }
                    _ => return Err(unavailable(format!("the origin's first feed frame does not decode: {e}"))),
                },
            },
        };
        Ok(Session { conn: conn.clone(), first, feed_recv, calls_send, calls_recv })
    }

    /// Runs one established connection until it is lost; returns why.
    async fn serve(&self, session: Session, updates: &mpsc::Sender<FeedUpdate>) -> LinkError {
        let Session { conn, first, feed_recv, calls_send, calls_recv } = session;
        let (frames, queue) = mpsc::channel(CALL_QUEUE);
        let link = Arc::new(CallLink { frames, pending: Mutex::new(Pending::default()) });
        let mut writer = tokio::spawn(write_calls(calls_send, queue));
        let mut reader = tokio::spawn(read_replies(calls_recv, link.clone()));
        *lock(&self.conn) = Some(conn.clone());
        *lock(&self.link) = Some(link.clone());
        *lock(&self.last_error) = None;
        self.up.store(true, Ordering::Release);
        self.metrics.link_up.set(1);
        self.metrics.link_connects.inc();

        let reason = tokio::select! {
            reason = async {
                self.hand(updates, FeedUpdate::LinkUp, None).await;
                self.pump_feed(first, feed_recv, updates).await
            } => reason,
            joined = &mut reader => joined.unwrap_or_else(|e| internal(format!("the reply reader failed: {e}"))),
            joined = &mut writer => joined.unwrap_or_else(|e| internal(format!("the call writer failed: {e}"))),
            closed = conn.closed() => match closed {
                quinn::ConnectionError::LocallyClosed => unavailable("the link was closed on request (bounce)"),
                e => unavailable(format!("the connection to the origin ended: {e}")),
            },
            _ = self.shutdown.cancelled() => unavailable("the edge is shutting down"),
        };

        self.up.store(false, Ordering::Release);
        self.metrics.link_up.set(0);
        lock(&self.link).take();
        lock(&self.conn).take();
        conn.close(0u32.into(), b"link reset");
        reader.abort();
        writer.abort();
        link.fail_all(&unavailable(format!("the link to the origin was lost mid-call; {RETRY_HINT}")));
        if !self.shutdown.is_cancelled() {
            tokio::select! {
                _ = self.hand(updates, FeedUpdate::LinkDown, None) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
        reason
    }

    /// Hands feed frames to the consumer until the feed stream fails; returns why.
    async fn pump_feed(
        &self,
        first: FeedFrame,
        recv: quinn::RecvStream,
        updates: &mpsc::Sender<FeedUpdate>,
    ) -> LinkError {
        let mut feed = FrameReader::new(recv);
        let mut frame = first;
        loop {
            self.deliver(frame, updates).await;
            frame = match tokio::time::timeout(FEED_SILENCE, feed.read_frame(MAX_FEED_FRAME_BYTES)).await {
                Err(_) => {
                    return unavailable(format!(
                        "no feed frame or heartbeat from the origin for {} s",
                        FEED_SILENCE.as_secs()
                    ))
                }
                Ok(Err(e)) => return unavailable(format!("the feed stream failed: {e}")),
                Ok(Ok(None)) => return unavailable("the origin ended the feed stream"),
                Ok(Ok(Some(bytes))) => match selvage_shared::decode_feed_frame(&bytes) {
                    Ok(frame) => frame,
                    Err(e) => return unavailable(format!("a feed frame from the origin does not decode: {e}")),
                },
            };
        }
    }

    async fn deliver(&self, frame: FeedFrame, updates: &mpsc::Sender<FeedUpdate>) {
        match frame {
            FeedFrame::Events { items, cursor } => {
                // The origin never repeats an event after the cursor asked for; dropping anything
                // at or before ours makes that a guarantee here too.
                let current = self.cursor();
                let items: Vec<FeedItem> =
                    items.into_iter().filter(|i| current.as_ref().is_none_or(|c| i.cursor > *c)).collect();
                match items.last() {
                    None => self.hand(updates, FeedUpdate::Heartbeat(cursor.clone()), Some(cursor)).await,
                    Some(last) => {
                        let lag_ms = (now_ms() - last.ts).max(0);
                        self.metrics.feed_lag_seconds.set(lag_ms as f64 / 1000.0);
                        self.metrics.feed_events.inc_by(items.len() as u64);
                        self.hand(updates, FeedUpdate::Events(items), Some(cursor)).await;
                    }
                }
            }
            FeedFrame::Heartbeat { cursor } => {
                // Caught up with the origin: nothing is waiting to be applied.
                self.metrics.feed_lag_seconds.set(0.0);
                self.hand(updates, FeedUpdate::Heartbeat(cursor.clone()), Some(cursor)).await;
            }
            FeedFrame::Ephemeral { workspace, event } => {
                self.hand(updates, FeedUpdate::Ephemeral { workspace, event }, None).await;
            }
            FeedFrame::Resync { reason, cursor } => {
                tracing::warn!(%cursor, %reason, "the origin says the edge missed feed events: resync");
                let update = FeedUpdate::Resync { cursor: cursor.clone(), reason };
                // A resync moves the cursor wherever the origin says, even backwards.
                let Ok(slot) = updates.reserve().await else {
                    *lock(&self.cursor) = Some(cursor);
                    return;
                };
                *lock(&self.cursor) = Some(cursor);
                slot.send(update);
            }
        }
    }

    /// Hands one update to the consumer (waiting while its queue is full) and moves the cursor
    /// forward to `cursor` in the same step: a queue slot is reserved first, then the cursor is
    /// set and the update queued with no await in between. Cancelled while waiting, nothing was
    /// handed and the cursor stays, so the next connection asks for the same events again; and
    /// a consumer that has the update already sees the new cursor.
    async fn hand(&self, updates: &mpsc::Sender<FeedUpdate>, update: FeedUpdate, cursor: Option<Cursor>) {
        let slot = updates.reserve().await;
        if let Some(cursor) = cursor {
            let mut current = lock(&self.cursor);
            if current.as_ref().is_none_or(|c| cursor > *c) {
                *current = Some(cursor);
            }
        }
        match slot {
            Ok(slot) => slot.send(update),
            Err(_) => {
                if !self.consumer_gone.swap(true, Ordering::Relaxed) {
                    tracing::warn!("the feed consumer is gone; feed updates are discarded");
                }
            }
        }
    }
}

/// An established connection with both streams open and the feed's first frame read.
struct Session {
    conn: quinn::Connection,
    first: FeedFrame,
    feed_recv: quinn::RecvStream,
    calls_send: quinn::SendStream,
    calls_recv: quinn::RecvStream,
}

/// The calls side of one connection.
struct CallLink {
    /// Encoded call frames for the writer.
    frames: mpsc::Sender<Vec<u8>>,
    pending: Mutex<Pending>,
}

/// Calls waiting for their reply, by id.
#[derive(Default)]
struct Pending {
    /// Set once the connection is gone: no new call may wait here.
    closed: bool,
    calls: HashMap<u64, oneshot::Sender<Result<Answer, LinkError>>>,
}

impl CallLink {
    fn complete(&self, id: u64, reply: Result<Answer, LinkError>) {
        match lock(&self.pending).calls.remove(&id) {
            Some(waiter) => {
                let _ = waiter.send(reply);
            }
            None => tracing::debug!(call.id = id, "reply to a call nobody waits for (timed out)"),
        }
    }

    fn fail_all(&self, why: &LinkError) {
        let waiting = {
            let mut pending = lock(&self.pending);
            pending.closed = true;
            std::mem::take(&mut pending.calls)
        };
        for (_, waiter) in waiting {
            let _ = waiter.send(Err(why.clone()));
        }
    }
}

/// Removes a call's slot however the call ends (answered, timed out, or its caller gave up).
struct PendingSlot<'a> {
    link: &'a CallLink,
    id: u64,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        lock(&self.link.pending).calls.remove(&self.id);
    }
}

async fn write_calls(mut send: quinn::SendStream, mut queue: mpsc::Receiver<Vec<u8>>) -> LinkError {
    match write_frames(&mut send, &mut queue, WRITE_TIMEOUT).await {
        Ok(()) => unavailable("the call queue closed"),
        Err(e) => unavailable(format!("sending a call to the origin failed: {e}")),
    }
}

async fn read_replies(recv: quinn::RecvStream, link: Arc<CallLink>) -> LinkError {
    let mut replies = FrameReader::new(recv);
    loop {
        match replies.read_frame(MAX_LINK_FRAME_BYTES).await {
            Ok(Some(bytes)) => match selvage_shared::from_msgpack::<LinkReply>(&bytes) {
                // Id 0 answers the stream rather than a call: the origin refused it.
                Ok(LinkReply { id: 0, reply }) => {
                    return match reply {
                        Err(e) => error(e.code, format!("the origin refused the calls stream: {}", e.message)),
                        Ok(_) => unavailable("the origin answered call id 0, which is never used"),
                    };
                }
                Ok(reply) => link.complete(reply.id, reply.reply),
                Err(e) => return unavailable(format!("a reply from the origin does not decode: {e}")),
            },
            Ok(None) => return unavailable("the origin closed the calls stream"),
            Err(e) => return unavailable(format!("the calls stream failed: {e}")),
        }
    }
}

/// A frame, with the reason it could not be read as text (how this module reports link failures).
async fn read_frame_text(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>, String> {
    read_frame(recv, max).await.map_err(|e| e.to_string())
}

async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, send.write_all(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the origin read nothing for {} s", WRITE_TIMEOUT.as_secs())),
    }
}

/// The first address `host:port` resolves to.
async fn resolve(origin: &str) -> Result<SocketAddr, LinkError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(origin)).await {
        Ok(Ok(mut addrs)) => {
            addrs.next().ok_or_else(|| unavailable(format!("the origin address {origin:?} resolves to nothing")))
        }
        Ok(Err(e)) => Err(unavailable(format!("cannot resolve the origin address {origin:?} (host:port): {e}"))),
        Err(_) => Err(unavailable(format!("resolving {origin:?} took over {} s", CONNECT_TIMEOUT.as_secs()))),
    }
}

/// The QUIC client configuration: TLS per `trust`, keep-alives and the idle timeout.
fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, LinkError> {
    let bad =
        |e: &dyn std::fmt::Display| error(ErrorCode::Internal, format!("the link's TLS settings are unusable: {e}"));
    let tls = tls::client_config(trust, &[LINK_ALPN]).map_err(|e| bad(&e))?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| bad(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|e| bad(&e))?))
        // Snapshots can be megabytes: a larger window keeps them quick at WAN round trips.
        .stream_receive_window((4u32 * 1024 * 1024).into())
        .max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Describes a failed handshake; TLS failures (such as an unpinned certificate) are
/// `unauthorized`: retrying will not help until the configuration changes.
fn connection_error(addr: SocketAddr, e: &quinn::ConnectionError) -> LinkError {
    match e {
        quinn::ConnectionError::TransportError(t) if (0x100..0x200).contains(&u64::from(t.code)) => {
            error(ErrorCode::Unauthorized, format!("TLS handshake with the origin at {addr} failed: {}", t.reason))
        }
        quinn::ConnectionError::ConnectionClosed(c) if (0x100..0x200).contains(&u64::from(c.error_code)) => {
            error(ErrorCode::Unauthorized, format!("the origin at {addr} refused the TLS handshake: {c}"))
        }
        e => unavailable(format!("cannot connect to the origin at {addr}: {e}")),
    }
}

/// `base` scaled by a random factor in [0.5, 1], so edges that lost the origin together do not
/// come back in step.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.5..=1.0))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000), "{d:?}");
        }
    }

    #[test]
    fn config_debug_hides_the_key() {
        let config = UpstreamConfig {
            origin: "127.0.0.1:7701".into(),
            server_name: "localhost".into(),
            trust: Trust::Pinned("00".repeat(32)),
            edge_key: "super-secret-edge-key".into(),
            edge_id: "e1".into(),
            call_timeout: Duration::from_secs(1),
            start_cursor: None,
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(shown.contains("127.0.0.1:7701"));
    }

    #[test]
    fn pending_calls_fail_when_the_link_goes() {
        let (frames, _queue) = mpsc::channel(1);
        let link = CallLink { frames, pending: Mutex::new(Pending::default()) };
        let (tx, mut rx) = oneshot::channel();
        lock(&link.pending).calls.insert(1, tx);
        link.fail_all(&unavailable("gone"));
        assert_eq!(rx.try_recv().unwrap().unwrap_err().code, ErrorCode::Unavailable);
        assert!(lock(&link.pending).closed, "no call may wait on a dead link");
    }
}
