//! One client session, the same for WebSocket and QUIC (DESIGN §4).
//!
//! A transport hands the session what the client sent ([`Inbound`], read by its own task) and a
//! [`FrameWriter`]; the session does the rest:
//!
//! 1. **Boot**: the token is resolved (cache, else the origin once), the workspace loaded (cache,
//!    else one snapshot), and under the workspace's lock the `hello` is built from the cache and
//!    the session registered for fan-out — so it gets exactly the events after `hello.cursor`.
//! 2. **Resume**: with `?resume=<cursor>` the missed events follow the `hello`: from the edge's
//!    recent buffers when they reach back that far, else from the origin's log, else `resync`.
//!    Events at or before the resume cursor are never sent again.
//! 3. **Serve**: requests (send, query, ping) run concurrently up to `sessions.max_in_flight`;
//!    their replies and the fanned-out events share one bounded outbox, written in order.
//! 4. **End**: on client close, idle timeout (no frame for 2.5 heartbeats), a slow consumer
//!    (outbox full), a revoked token, or drain (`goodbye` with a random `reconnect_in_ms`, then
//!    close after the grace period).

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::Rng;
use selvage_shared::{
    link::{Answer, Call, LinkError},
    ClientFrame, Cursor, ErrorCode, Event, EventFrame, FeedItem, Format, Hello, Query, QueryKind, QueryResult,
    ServerFrame, MAX_QUERY_LIMIT, PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, Semaphore};

use crate::{
    auth::Principal,
    cache::{QueryAnswer, DEFAULT_HISTORY_LIMIT},
    fanout::{event_wire, CloseReason, Live, Out, Outbox, Wire},
    server::Edge,
};

/// What a transport's reader task reports.
#[derive(Debug)]
pub enum Inbound {
    /// One client frame's bytes (not yet decoded).
    Frame(Vec<u8>),
    /// A transport-level sign of life (WebSocket ping or pong).
    Alive,
    /// A frame over the size limit: the connection is closed.
    TooLarge,
    /// The client closed the connection, or it broke.
    Closed,
}

/// The most frames written with one flush.
const MAX_BATCH: usize = 64;

/// The most events a resume fetches from the origin; a client further behind boots afresh.
const MAX_ORIGIN_REPLAY: usize = 20_000;

/// Close codes (WebSocket close codes; QUIC application error codes).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The edge is draining (WebSocket "service restart").
    pub const DRAINING: u16 = 1012;
    /// A frame over the size limit.
    pub const TOO_LARGE: u16 = 1009;
    /// Authentication failed or the token was revoked.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The session could not be booted (origin unreachable and nothing cached, …); retry.
    pub const UNAVAILABLE: u16 = 4003;
    /// Nothing received for 2.5 heartbeats.
    pub const IDLE: u16 = 4004;
    /// The client did not keep up; reconnect with `resume`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client must boot again (no resume).
    pub const RESYNC: u16 = 4009;
}

/// The writing half of a transport.
pub trait FrameWriter: Send + 'static {
    /// Writes one frame and flushes it.
    fn write(&mut self, wire: Wire) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Queues one frame of a batch; it may stay buffered until [`flush`](Self::flush).
    fn feed(&mut self, wire: Wire) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Sends everything fed so far.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Sends a transport-level ping, if the transport has one.
    fn ping(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Whether the session should ping and time out idle clients itself (WebSocket); QUIC
    /// keeps its own keep-alive and idle timeout.
    fn pings(&self) -> bool;
    /// Closes the connection with a code and a reason.
    fn close(self, code: u16, reason: &str) -> impl Future<Output = ()> + Send;
}

/// How a client asked to connect.
#[derive(Clone, Debug)]
pub struct Opening {
    /// The bearer token.
    pub token: String,
    /// The wire format.
    pub format: Format,
    /// The cursor to resume after.
    pub resume: Option<Cursor>,
    /// `ws` or `quic`, for metrics and logs.
    pub transport: &'static str,
}

fn encode(frame: &ServerFrame, format: Format) -> Wire {
    Wire::from_encoded(selvage_shared::encode_server(frame, format), format)
}

fn error_frame(reply_to: Option<String>, e: &LinkError) -> ServerFrame {
    ServerFrame::error(reply_to, e.code, e.message.clone())
}

/// Runs one session to its end.
pub async fn run<W: FrameWriter>(edge: Arc<Edge>, opening: Opening, inbound: mpsc::Receiver<Inbound>, mut writer: W) {
    let metrics = edge.metrics.clone();
    let gauge = metrics.connections.with_label_values(&[opening.transport]);
    gauge.inc();
    let started = Instant::now();
    let boot_timeout = Duration::from_millis(edge.config.sessions.boot_timeout_ms);
    let booted = tokio::time::timeout(boot_timeout, boot(&edge, &opening)).await.unwrap_or_else(|_| {
        Err(LinkError { code: ErrorCode::Unavailable, message: "boot took too long; retry".into() })
    });
    let booted = match booted {
        Ok(booted) => booted,
        Err(e) => {
            let code = if e.code == ErrorCode::Unauthorized { close::UNAUTHORIZED } else { close::UNAVAILABLE };
            let _ = writer.write(encode(&error_frame(None, &e), opening.format)).await;
            writer.close(code, &e.message).await;
            gauge.dec();
            return;
        }
    };
    metrics.boot_latency.observe(started.elapsed().as_secs_f64());
    let Booted { principal, live, outbox, outbox_rx, hello, replay } = booted;
    let span = tracing::debug_span!("session", conn.id = outbox.id, ws.id = %principal.workspace, user.id = %principal.user, transport = opening.transport);
    let _enter = span.enter();
    tracing::debug!(resumed = hello.resumed, "session booted");
    let session = Session {
        edge: edge.clone(),
        principal,
        live: live.clone(),
        outbox: outbox.clone(),
        opening,
        started: tokio::time::Instant::now(),
        touched_ms: std::sync::atomic::AtomicU64::new(0),
    };
    session.serve(writer, inbound, outbox_rx, hello, replay).await;
    live.unregister(outbox.id);
    gauge.dec();
}

struct Booted {
    principal: Principal,
    live: Arc<Live>,
    outbox: Arc<Outbox>,
    outbox_rx: mpsc::Receiver<Out>,
    hello: Hello,
    /// For a resume: the missed events from the edge's buffers, or `None` when the origin
    /// must be asked.
    replay: Option<Vec<EventFrame>>,
}

async fn boot(edge: &Edge, opening: &Opening) -> Result<Booted, LinkError> {
    let principal = edge.tokens.authenticate(&opening.token).await?;
    if edge.config.cache.cold_boots {
        cold_boot(edge, &principal).await?;
    }
    // The copy fetched can be retired (dropped by the cache sweep, or by a reset) before the
    // session registers under its lock; then the session boots from a fresh one.
    for _ in 0..5 {
        let live = edge.workspaces.get(&principal.workspace).await.map_err(|e| (*e).clone())?;
        if let Some(booted) = boot_on(edge, opening, &principal, live)? {
            return Ok(booted);
        }
        tokio::task::yield_now().await;
    }
    Err(LinkError { code: ErrorCode::Unavailable, message: "the workspace is being reloaded; retry".into() })
}

/// What a boot costs without warm caches (`cache.cold_boots`): the token and the workspace
/// snapshot from the origin, each time. The session is then served from the live copy as usual,
/// so only the cost differs, not what the client gets.
async fn cold_boot(edge: &Edge, principal: &Principal) -> Result<(), LinkError> {
    let token_hash = principal.token_hash.clone();
    edge.upstream.call(Call::Authenticate { token_hash }).await?;
    edge.upstream.call(Call::Snapshot { workspace: principal.workspace.clone() }).await?;
    Ok(())
}

/// Boots on one copy of the workspace; `None` when that copy is retired.
fn boot_on(
    edge: &Edge,
    opening: &Opening,
    principal: &Principal,
    live: Arc<Live>,
) -> Result<Option<Booted>, LinkError> {
    let principal = principal.clone();
    let id = edge.workspaces.session_id();
    let (outbox, outbox_rx) = crate::fanout::Outbox::new(
        id,
        principal.user.clone(),
        principal.token_hash.clone(),
        opening.format,
        edge.config.sessions.outbound_queue,
    );
    let mut inner = live.lock();
    if inner.is_retired() {
        return Ok(None);
    }
    let Some(boot) = inner.state.boot(&principal.user) else {
        return Err(LinkError { code: ErrorCode::Unauthorized, message: "the user is deactivated or unknown".into() });
    };
    let cursor = inner.state.cursor().clone();
    let replay = match &opening.resume {
        // Cold boots resume from the origin's log, never the edge's buffers.
        Some(_) if edge.config.cache.cold_boots => None,
        Some(after) => inner.state.replay_after(&principal.user, after),
        None => Some(Vec::new()),
    };
    inner.register(outbox.clone());
    drop(inner);
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        session_id: format!("{}-{id}", edge.config.edge_id),
        cursor,
        self_user: boot.self_user,
        channels: boot.channels,
        users: boot.users,
        heartbeat_ms: edge.config.sessions.heartbeat_ms,
        resumed: opening.resume.is_some(),
    };
    Ok(Some(Booted { principal, live, outbox, outbox_rx, hello, replay }))
}

struct Session {
    edge: Arc<Edge>,
    principal: Principal,
    live: Arc<Live>,
    outbox: Arc<Outbox>,
    opening: Opening,
    /// When the session started; [`Session::touched_ms`] counts from it.
    started: tokio::time::Instant,
    /// Milliseconds after `started` of the last activity passed to presence.
    touched_ms: std::sync::atomic::AtomicU64,
}

/// Activity is passed to presence at most this often per session (presence has a tick of
/// 200 ms and an away time of minutes; taking the workspace lock on every frame would not
/// make it any more exact).
const TOUCH_EVERY_MS: u64 = 1000;

/// How the serve loop ended.
enum End {
    Client,
    Close(u16, String),
}

impl Session {
    async fn serve<W: FrameWriter>(
        self,
        mut writer: W,
        mut inbound: mpsc::Receiver<Inbound>,
        mut outbox_rx: mpsc::Receiver<Out>,
        hello: Hello,
        replay: Option<Vec<EventFrame>>,
    ) {
        let format = self.opening.format;
        let heartbeat = Duration::from_millis(self.edge.config.sessions.heartbeat_ms);
        let write_timeout = heartbeat * 2;
        let hello_cursor = hello.cursor.clone();
        // Events at or before `floor` are already with the client.
        let mut floor = hello_cursor.clone();
        if writer.write(encode(&ServerFrame::Hello(hello), format)).await.is_err() {
            return;
        }
        if let Some(after) = self.opening.resume.clone() {
            match self.replay(&mut writer, &after, &hello_cursor, replay).await {
                Ok(()) => {}
                Err(end) => return self.finish(writer, end).await,
            }
            floor = floor.max(after);
        }
        let permits = Arc::new(Semaphore::new(self.edge.config.sessions.max_in_flight));
        let mut last_heard = Instant::now();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut batch: Vec<Wire> = Vec::with_capacity(MAX_BATCH);
        let end = loop {
            let drain_at = drain_deadline;
            tokio::select! {
                biased;
                _ = self.outbox.closed().cancelled() => {
                    break match self.outbox.close_reason() {
                        Some(CloseReason::TokenRevoked) => {
                            let e = ServerFrame::error(None, ErrorCode::Unauthorized, "the token was revoked");
                            let _ = writer.write(encode(&e, format)).await;
                            End::Close(close::UNAUTHORIZED, "token revoked".into())
                        }
                        Some(CloseReason::Resync) => {
                            self.resync(&mut writer, "the edge lost its place in the feed; boot again").await
                        }
                        _ => End::Close(close::SLOW_CONSUMER, "slow consumer: reconnect with resume".into()),
                    };
                }
                out = outbox_rx.recv() => {
                    let Some(out) = out else { break End::Close(close::NORMAL, "session closed".into()) };
                    // Everything queued by now goes out as one batch with one flush: under
                    // fan-out load that is one system call for many frames.
                    batch.clear();
                    let mut next = Some(out);
                    while let Some(out) = next.take() {
                        match out {
                            // Ephemeral events carry the newest cursor applied, not a place
                            // in the feed: never take them for something already sent.
                            Out::Event(e) if e.cursor <= floor && !e.is_ephemeral() => {}
                            Out::Event(e) => batch.push(e.wire(format)),
                            Out::Reply(w) => batch.push(w),
                        }
                        if batch.len() < MAX_BATCH {
                            next = outbox_rx.try_recv().ok();
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let write = async {
                        for wire in batch.drain(..) {
                            writer.feed(wire).await?;
                        }
                        writer.flush().await
                    };
                    // A client that stops reading blocks this write; fan-out then finds its
                    // outbox full and asks it to close, which must not wait for the write.
                    tokio::select! {
                        written = tokio::time::timeout(write_timeout, write) => match written {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break End::Client,
                            Err(_) => break End::Close(close::SLOW_CONSUMER, "slow consumer: reconnect with resume".into()),
                        },
                        _ = self.outbox.closed().cancelled() => {
                            break End::Close(close::SLOW_CONSUMER, "slow consumer: reconnect with resume".into());
                        }
                    }
                }
                got = inbound.recv() => {
                    last_heard = Instant::now();
                    match got {
                        Some(Inbound::Frame(bytes)) => self.handle(&bytes, &permits).await,
                        Some(Inbound::Alive) => {}
                        Some(Inbound::TooLarge) => break End::Close(
                            close::TOO_LARGE,
                            format!("frame over {} bytes", selvage_shared::MAX_CLIENT_FRAME_BYTES),
                        ),
                        Some(Inbound::Closed) | None => break End::Client,
                    }
                }
                _ = ticker.tick(), if writer.pings() => {
                    if last_heard.elapsed() > heartbeat * 5 / 2 {
                        break End::Close(close::IDLE, "idle timeout".into());
                    }
                    if writer.ping().await.is_err() {
                        break End::Client;
                    }
                }
                _ = self.edge.drain.cancelled(), if drain_at.is_none() => {
                    let grace = self.edge.config.sessions.drain_grace_ms;
                    let reconnect_in_ms = rand::rng().random_range(0..grace.max(1));
                    let _ = writer.write(encode(&ServerFrame::Goodbye { reconnect_in_ms }, format)).await;
                    drain_deadline = Some(tokio::time::Instant::now() + Duration::from_millis(grace));
                }
                _ = sleep_until(drain_at) => break End::Close(close::DRAINING, "edge draining".into()),
            }
        };
        self.finish(writer, end).await;
    }

    async fn finish<W: FrameWriter>(&self, writer: W, end: End) {
        match end {
            End::Client => tracing::debug!("client went away"),
            End::Close(code, reason) => {
                tracing::debug!(code, %reason, "closing session");
                // A client that does not read cannot take a close frame either: give it a moment.
                let _ = tokio::time::timeout(Duration::from_secs(1), writer.close(code, &reason)).await;
            }
        }
    }

    /// Sends the events a resuming client missed: `(after, upto]`.
    async fn replay<W: FrameWriter>(
        &self,
        writer: &mut W,
        after: &Cursor,
        upto: &Cursor,
        buffered: Option<Vec<EventFrame>>,
    ) -> Result<(), End> {
        let format = self.opening.format;
        if let Some(frames) = buffered {
            self.edge.metrics.cache_requests.with_label_values(&["replay", "hit"]).inc();
            for frame in frames.into_iter().filter(|f| f.cursor > *after && f.cursor <= *upto) {
                let wire =
                    Wire::from_encoded(selvage_shared::encode_event(&frame.cursor, &frame.event, format), format);
                writer.write(wire).await.map_err(|_| End::Client)?;
            }
            return Ok(());
        }
        self.edge.metrics.cache_requests.with_label_values(&["replay", "miss"]).inc();
        // Who got what depends on membership *after* each event, so the whole gap is read
        // before any of it is filtered; a client further behind than that boots afresh.
        let mut missed: Vec<FeedItem> = Vec::new();
        let mut pos = after.clone();
        loop {
            let call = Call::Events { workspace: self.principal.workspace.clone(), after: pos.clone(), limit: 1000 };
            let (items, next, more) = match self.edge.upstream.call(call).await {
                Ok(Answer::Events { resync: true, .. }) => {
                    return Err(self.resync(writer, "the resume cursor is older than the feed keeps").await);
                }
                Ok(Answer::Events { items, next, more, .. }) => (items, next, more),
                Ok(_) | Err(_) => {
                    let e = ServerFrame::error(
                        None,
                        ErrorCode::Unavailable,
                        "cannot fetch the missed events; resume again",
                    );
                    let _ = writer.write(encode(&e, format)).await;
                    return Err(End::Close(close::UNAVAILABLE, "resume failed".into()));
                }
            };
            missed.extend(items.into_iter().filter(|i| i.cursor > *after && i.cursor <= *upto));
            if missed.len() > MAX_ORIGIN_REPLAY {
                return Err(self.resync(writer, "too many events were missed to replay; boot again").await);
            }
            if !more || next >= *upto || next <= pos {
                break;
            }
            pos = next;
        }
        let keep = {
            let events: Vec<&Event> = missed.iter().map(|i| &i.event).collect();
            self.live.lock().state.delivered_to(&self.principal.user, &events, upto)
        };
        for (item, _) in missed.iter().zip(keep).filter(|(_, keep)| *keep) {
            writer.write(event_wire(&item.cursor, &item.event, format)).await.map_err(|_| End::Client)?;
        }
        Ok(())
    }

    /// Tells the client to boot again and ends the session.
    async fn resync<W: FrameWriter>(&self, writer: &mut W, reason: &str) -> End {
        let r = ServerFrame::Resync { reason: reason.into() };
        let _ = writer.write(encode(&r, self.opening.format)).await;
        End::Close(close::RESYNC, "resync".into())
    }

    /// The client did something (any frame but a ping): it counts as active for presence.
    fn touch(&self) {
        use std::sync::atomic::Ordering;
        let now = self.started.elapsed().as_millis() as u64;
        if now.saturating_sub(self.touched_ms.load(Ordering::Relaxed)) >= TOUCH_EVERY_MS {
            self.touched_ms.store(now, Ordering::Relaxed);
            self.live.lock().presence.touch(self.outbox.id, tokio::time::Instant::now());
        }
    }

    /// Handles one client frame; requests run in their own tasks, bounded by `permits`.
    async fn handle(&self, bytes: &[u8], permits: &Arc<Semaphore>) {
        let format = self.opening.format;
        let metrics = &self.edge.metrics;
        let frame = match selvage_shared::decode_client(bytes, format) {
            Ok(frame) => frame,
            Err(e) => {
                metrics.client_frames.with_label_values(&["bad"]).inc();
                let reply = ServerFrame::error(None, e.code(), e.to_string());
                self.outbox.reply(encode(&reply, format)).await;
                return;
            }
        };
        metrics.client_frames.with_label_values(&[frame.kind()]).inc();
        if !matches!(frame, ClientFrame::Ping { .. }) {
            self.touch();
        }
        match frame {
            ClientFrame::Ping { id } => {
                self.outbox.reply(encode(&ServerFrame::Pong { reply_to: id }, format)).await;
            }
            ClientFrame::Typing { channel } => {
                let user = &self.principal.user;
                let relayed = {
                    let mut inner = self.live.lock();
                    let allowed = inner.state.is_member(&channel, user)
                        && inner.typing_allowed(user, &channel, tokio::time::Instant::now());
                    allowed.then(|| {
                        let event = Event::Typing { channel, user: user.clone() };
                        inner.relay(event.clone(), Some(self.outbox.id), metrics);
                        event
                    })
                };
                // Other edges hear of it through the origin; nobody waits for the answer.
                if let Some(event) = relayed {
                    let upstream = self.edge.upstream.clone();
                    let workspace = self.principal.workspace.clone();
                    tokio::spawn(async move { upstream.call(Call::Relay { workspace, event: Box::new(event) }).await });
                }
            }
            ClientFrame::PresenceSub { users } => {
                let per_window = self.edge.config.sessions.presence_subs_per_10s;
                let refused = self.live.lock().presence_sub(self.outbox.id, users, per_window, metrics).is_err();
                if refused {
                    let message = format!("at most {per_window} presence_sub frames per 10 s; keep the last list");
                    let reply = ServerFrame::error(None, ErrorCode::RateLimited, message);
                    self.outbox.reply(encode(&reply, format)).await;
                }
            }
            ClientFrame::SetPresence { dnd } => {
                let upstream = self.edge.upstream.clone();
                let call = Call::SetDnd {
                    workspace: self.principal.workspace.clone(),
                    user: self.principal.user.clone(),
                    dnd,
                };
                tokio::spawn(async move { upstream.call(call).await });
            }
            ClientFrame::Send { .. } | ClientFrame::Query(_) | ClientFrame::MarkRead { .. } => {
                // Waiting here stops reading from the client: its requests in flight are capped.
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let task = Request {
                    edge: self.edge.clone(),
                    principal: self.principal.clone(),
                    live: self.live.clone(),
                    outbox: self.outbox.clone(),
                };
                tokio::spawn(async move {
                    if let Some(reply) = task.answer(frame).await {
                        task.outbox.reply(encode(&reply, format)).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One request of a session, answered in its own task.
struct Request {
    edge: Arc<Edge>,
    principal: Principal,
    live: Arc<Live>,
    outbox: Arc<Outbox>,
}

impl Request {
    /// The answer to a request, if it has one (`mark_read` is answered only when it fails: its
    /// success is the `read_marker` event every session of the user gets).
    async fn answer(&self, frame: ClientFrame) -> Option<ServerFrame> {
        let reply = match frame {
            ClientFrame::MarkRead { channel, seq } => {
                let workspace = self.principal.workspace.clone();
                let call = Call::MarkRead { workspace, user: self.principal.user.clone(), channel, seq };
                return match self.edge.upstream.call(call).await {
                    Ok(Answer::ReadMarker { .. }) => None,
                    Ok(other) => Some(unexpected(String::new(), &other)),
                    Err(e) => Some(error_frame(None, &e)),
                };
            }
            ClientFrame::Send { id, channel, text, client_msg_id, thread_root } => {
                let call = Call::Send {
                    workspace: self.principal.workspace.clone(),
                    user: self.principal.user.clone(),
                    channel,
                    text,
                    client_msg_id,
                    thread_root,
                };
                match self.edge.upstream.call(call).await {
                    Ok(Answer::Sent { message, .. }) => {
                        ServerFrame::Ack { reply_to: id, channel: message.channel, seq: message.seq, ts: message.ts }
                    }
                    Ok(other) => unexpected(id, &other),
                    Err(e) => error_frame(Some(id), &e),
                }
            }
            ClientFrame::Query(query) => self.query(query).await,
            other => ServerFrame::error(None, ErrorCode::Internal, format!("{} is not a request", other.kind())),
        };
        Some(reply)
    }

    async fn query(&self, query: Query) -> ServerFrame {
        let id = query.id.clone();
        let answer = self.live.lock().state.query(&self.principal.user, &query);
        match answer {
            QueryAnswer::Answer(mut result) => {
                self.edge.metrics.cache_requests.with_label_values(&["query", "hit"]).inc();
                result.reply_to = id;
                ServerFrame::Result(result)
            }
            QueryAnswer::Refused { code, message } => ServerFrame::error(Some(id), code, message),
            QueryAnswer::NeedsOrigin => {
                self.edge.metrics.cache_requests.with_label_values(&["query", "miss"]).inc();
                self.ask_origin(query).await
            }
        }
    }

    /// `history` and `thread` pages the cache cannot answer. `next` follows the cache's rule:
    /// the seq to continue from, as `before` when reading back and as `after` when reading on.
    async fn ask_origin(&self, query: Query) -> ServerFrame {
        let id = query.id.clone();
        let workspace = self.principal.workspace.clone();
        let user = self.principal.user.clone();
        let limit = query.limit.map_or(DEFAULT_HISTORY_LIMIT as u32, |l| l.min(MAX_QUERY_LIMIT as u32));
        let (before, after) = (query.before, query.after);
        let call = match (query.q, query.channel, query.root) {
            (QueryKind::History, Some(channel), _) => Call::History { workspace, user, channel, before, after, limit },
            (QueryKind::Thread, Some(channel), Some(root)) => {
                Call::Thread { workspace, user, channel, root, before, after, limit }
            }
            _ => return ServerFrame::error(Some(id), ErrorCode::Internal, "this query cannot be asked of the origin"),
        };
        match self.edge.upstream.call(call).await {
            Ok(Answer::Messages { messages, has_more }) => {
                let next = if has_more {
                    let edge = if after.is_some() { messages.last() } else { messages.first() };
                    edge.map(|m| m.seq.to_string())
                } else {
                    None
                };
                ServerFrame::Result(QueryResult { reply_to: id, messages, next, ..Default::default() })
            }
            Ok(other) => unexpected(id, &other),
            Err(e) => error_frame(Some(id), &e),
        }
    }
}

fn unexpected(id: String, answer: &Answer) -> ServerFrame {
    tracing::error!(?answer, "unexpected answer from the origin");
    ServerFrame::error(Some(id), ErrorCode::Internal, "the origin gave an unexpected answer")
}
