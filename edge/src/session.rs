//! One client session, the same for WebSocket and QUIC (ARCHITECTURE §4).
//!
//! A transport ([`Transport`]) reads what the client sent ([`Inbound`]) and writes frames; the
//! session does the rest, in one task per connection:
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
//!    (outbox full), a revoked or expired token (at its expiry, not at the next request), or
//!    drain (`goodbye` with a random `reconnect_in_ms`, then close after the grace period).
//!
//! Most sessions are idle most of the time, so an idle session is kept small (ARCHITECTURE §6: ≤ 4 KiB
//! of edge memory each): while it waits it holds only small futures — the outbox's wake-up, the
//! transport's read, one timer and the drain signal — and everything that runs on a frame
//! (booting, handling a request, writing a batch, closing) runs in a future boxed for that
//! while. Its outbox, its transport's buffers and its request limit hold memory only while there
//! is something in them.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use rand::Rng;
use selvage_shared::{
    link::{Answer, Call},
    ClientFrame, Cursor, ErrorCode, Event, EventFrame, FeedItem, Format, Hello, Need, Query, QueryKind, QueryResult,
    Scope, ServerFrame, MAX_QUERY_LIMIT, PROTOCOL_VERSION,
};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::{
    auth::Principal,
    error::{close, EdgeError},
    fanout::{CloseReason, Live, Out, Outbox},
    limits::{FrameRefusal, Slot},
    node::Edge,
    wire::{event_wire, Wire},
    workspace::{QueryAnswer, DEFAULT_HISTORY_LIMIT},
};

/// What a transport read from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// One client frame's bytes (not yet decoded).
    Frame(Vec<u8>),
    /// A transport-level sign of life (WebSocket ping or pong).
    Alive,
    /// A frame over the size limit: the connection is closed.
    TooLarge,
    /// A large frame that the edge's frame budget could not take in time, or that did not
    /// arrive in time: the connection is closed.
    Refused(FrameRefusal),
    /// The client closed the connection, or it broke.
    Closed,
}

/// How long the frame that explains a close (an error, a resync) may wait for a client that
/// does not read before the session closes without it.
const PARTING_WRITE: Duration = Duration::from_secs(1);

/// The most frames written with one flush.
const MAX_BATCH: usize = 64;

/// The most events a resume fetches from the origin; a client further behind boots afresh.
const MAX_ORIGIN_REPLAY: usize = 20_000;

/// A connection to a client, as a session uses it.
pub trait Transport: Send + 'static {
    /// What the client sent next. Cancel safe: dropping the future loses nothing.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;
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

/// Runs one session to its end.
pub fn run<T: Transport>(edge: Arc<Edge>, opening: Opening, transport: T) -> impl Future<Output = ()> + Send {
    // Booting and greeting take far more room than waiting for the client: they run boxed, so
    // the future every idle session carries holds only what serving needs.
    let starting = Box::pin(start(edge, opening, transport));
    async move {
        let Some(Started { session, mut transport, floor, gauge, span }) = starting.await else { return };
        let end = session.serve(&mut transport, &floor).instrument(span.clone()).await;
        Box::pin(session.finish(transport, end).instrument(span)).await;
        session.leave(gauge);
    }
}

/// A session booted and greeted, ready to serve.
struct Started<T> {
    session: Session,
    transport: T,
    /// Events at or before it are already with the client.
    floor: Cursor,
    gauge: prometheus::IntGauge,
    span: tracing::Span,
}

/// Boots the session and greets the client (`hello`, and what it missed when resuming); `None`
/// when the session ended there.
async fn start<T: Transport>(edge: Arc<Edge>, opening: Opening, mut transport: T) -> Option<Started<T>> {
    let gauge = edge.metrics.connections.with_label_values(&[opening.transport]);
    gauge.inc();
    let started = Instant::now();
    let booted = match boot_within_timeout(&edge, &opening).await {
        Ok(booted) => booted,
        Err(e) => {
            refuse(transport, opening.format, e).await;
            gauge.dec();
            return None;
        }
    };
    edge.metrics.boot_latency.observe(started.elapsed().as_secs_f64());
    let (Booted { principal, live, outbox, hello, replay }, slot) = booted;
    let span = tracing::debug_span!("session", conn.id = outbox.id, ws.id = %principal.workspace, user.id = %principal.user, transport = opening.transport);
    let Opening { format, resume, .. } = opening;
    let session = Session {
        edge,
        principal,
        live,
        outbox,
        format,
        started: tokio::time::Instant::now(),
        touched_ms: std::sync::atomic::AtomicU64::new(0),
        permits: OnceLock::new(),
        _slot: slot,
    };
    span.in_scope(|| tracing::debug!(resumed = hello.resumed, "session booted"));
    match session.greet(&mut transport, hello, resume, replay).instrument(span.clone()).await {
        Ok(floor) => Some(Started { session, transport, floor, gauge, span }),
        Err(end) => {
            session.finish(transport, end).instrument(span).await;
            session.leave(gauge);
            None
        }
    }
}

async fn boot_within_timeout(edge: &Edge, opening: &Opening) -> Result<(Booted, Slot), EdgeError> {
    let boot_timeout = Duration::from_millis(edge.config.sessions.boot_timeout_ms);
    tokio::time::timeout(boot_timeout, boot(edge, opening))
        .await
        .unwrap_or_else(|_| Err(EdgeError::Unavailable("boot took too long; retry".into())))
}

/// Tells a client its session could not start, and closes.
async fn refuse<T: Transport>(mut transport: T, format: Format, e: EdgeError) {
    let _ = transport.write(encode(&e.frame(None), format)).await;
    transport.close(e.close_code(), &e.client_message()).await;
}

struct Booted {
    principal: Principal,
    live: Arc<Live>,
    outbox: Arc<Outbox>,
    hello: Hello,
    /// For a resume: the missed events from the edge's buffers, or `None` when the origin
    /// must be asked.
    replay: Option<Vec<EventFrame>>,
}

/// Boots a session, with its place in its user's count of connections.
async fn boot(edge: &Edge, opening: &Opening) -> Result<(Booted, Slot), EdgeError> {
    let principal = edge.tokens.authenticate(&opening.token).await?;
    // A session delivers every event its user may see: an app's token needs `events`.
    if let Err(message) = principal.grant.allows(Need::Scope(Scope::Events)) {
        return Err(EdgeError::Refused { code: ErrorCode::Forbidden, message });
    }
    let Some(slot) = edge.slots.take(&principal.workspace, &principal.user) else {
        edge.metrics.connections_refused.with_label_values(&["user_cap"]).inc();
        return Err(EdgeError::TooManyConnections { max: edge.slots.max() });
    };
    if edge.config.cache.cold_boots {
        cold_boot(edge, &principal).await?;
    }
    // The copy fetched can be retired (dropped by the cache sweep, or by a reset) before the
    // session registers under its lock; then the session boots from a fresh one. A user the
    // origin just authenticated but the copy does not know yet was created a moment ago, and
    // one the copy still has as deactivated was reactivated a moment ago: the feed brings the
    // change shortly.
    let mut retired = 0;
    let unknown_until = tokio::time::Instant::now() + NEW_USER_PATIENCE;
    loop {
        let live = edge.workspaces.get(&principal.workspace).await.map_err(|e| EdgeError::Origin((*e).clone()))?;
        match boot_on(edge, opening, &principal, live)? {
            BootOn::Booted(booted) => return Ok((*booted, slot)),
            BootOn::Retired if retired < 5 => {
                retired += 1;
                tokio::task::yield_now().await;
            }
            BootOn::Retired => {
                return Err(EdgeError::Unavailable("the workspace is being reloaded; retry".into()));
            }
            BootOn::UnknownUser | BootOn::Deactivated if tokio::time::Instant::now() < unknown_until => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            BootOn::UnknownUser => {
                return Err(EdgeError::Unauthorized("the user is deactivated or unknown".into()));
            }
            BootOn::Deactivated => return Err(EdgeError::Unauthorized("the user is deactivated".into())),
        }
    }
}

/// How long a boot waits for the feed to bring a user whose token the origin has just
/// accepted (a user created, or reactivated, a moment ago) before it refuses them as unknown
/// or deactivated.
const NEW_USER_PATIENCE: Duration = Duration::from_secs(3);

/// What booting on one copy of a workspace came to.
enum BootOn {
    Booted(Box<Booted>),
    /// That copy is retired: boot on a fresh one.
    Retired,
    /// That copy does not know the user (yet).
    UnknownUser,
    /// That copy has the user as deactivated (still, if they were just reactivated).
    Deactivated,
}

/// What a boot costs without warm caches (`cache.cold_boots`): the token and the workspace
/// snapshot from the origin, each time. The session is then served from the live copy as usual,
/// so only the cost differs, not what the client gets.
async fn cold_boot(edge: &Edge, principal: &Principal) -> Result<(), EdgeError> {
    let token_hash = principal.token_hash.clone();
    edge.upstream.call(Call::Authenticate { token_hash }).await?;
    edge.upstream.call(Call::Snapshot { workspace: principal.workspace.clone() }).await?;
    Ok(())
}

/// Boots on one copy of the workspace; `None` when that copy is retired.
fn boot_on(edge: &Edge, opening: &Opening, principal: &Principal, live: Arc<Live>) -> Result<BootOn, EdgeError> {
    let principal = principal.clone();
    let id = edge.workspaces.session_id();
    let outbox = crate::fanout::Outbox::new(
        id,
        principal.user.clone(),
        principal.token_hash.clone(),
        opening.format,
        edge.config.sessions.outbound_queue,
    );
    let mut inner = live.lock();
    if inner.is_retired() {
        return Ok(BootOn::Retired);
    }
    let Some(boot) = inner.state.boot(&principal.user) else {
        if inner.state.user(&principal.user).is_none() {
            return Ok(BootOn::UnknownUser);
        }
        return Ok(BootOn::Deactivated);
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
        session_id: format!("{}-{id}", edge.instance),
        cursor,
        self_user: boot.self_user,
        channels: boot.channels,
        users: boot.users,
        heartbeat_ms: edge.config.sessions.heartbeat_ms,
        resumed: opening.resume.is_some(),
    };
    Ok(BootOn::Booted(Box::new(Booted { principal, live, outbox, hello, replay })))
}

struct Session {
    edge: Arc<Edge>,
    principal: Principal,
    live: Arc<Live>,
    outbox: Arc<Outbox>,
    format: Format,
    /// When the session started; [`Session::touched_ms`] counts from it.
    started: tokio::time::Instant,
    /// Milliseconds after `started` of the last activity passed to presence.
    touched_ms: std::sync::atomic::AtomicU64,
    /// Caps the session's requests in flight; made with its first request.
    permits: OnceLock<Arc<Semaphore>>,
    /// The session's place in its user's connections, given back when it ends.
    _slot: Slot,
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

/// What woke an idle session.
enum Wake {
    Outbox,
    Inbound(Inbound),
    Timer,
    Drain,
}

fn slow_consumer() -> End {
    End::Close(close::SLOW_CONSUMER, "slow consumer: reconnect with resume".into())
}

impl Session {
    /// The session is over: fan-out forgets it.
    fn leave(&self, gauge: prometheus::IntGauge) {
        self.outbox.end();
        self.live.unregister(self.outbox.id);
        gauge.dec();
    }

    /// Sends `hello` and, for a resume, what the client missed. Returns the cursor at or
    /// before which events are already with the client.
    async fn greet<T: Transport>(
        &self,
        transport: &mut T,
        hello: Hello,
        resume: Option<Cursor>,
        replay: Option<Vec<EventFrame>>,
    ) -> Result<Cursor, End> {
        let hello_cursor = hello.cursor.clone();
        if transport.write(encode(&ServerFrame::Hello(hello), self.format)).await.is_err() {
            return Err(End::Client);
        }
        let mut floor = hello_cursor.clone();
        if let Some(after) = resume {
            self.replay(transport, &after, &hello_cursor, replay).await?;
            floor = floor.max(after);
        }
        Ok(floor)
    }

    /// Serves the client until the session ends. Events at or before `floor` are already with
    /// the client.
    ///
    /// This is where an idle session waits, so what it holds while waiting is kept small:
    /// every branch's work is boxed.
    async fn serve<T: Transport>(&self, transport: &mut T, floor: &Cursor) -> End {
        let heartbeat = Duration::from_millis(self.edge.config.sessions.heartbeat_ms);
        let pings = transport.pings();
        let mut last_heard = Instant::now();
        let mut next_ping = tokio::time::Instant::now() + heartbeat;
        let mut drain_at: Option<tokio::time::Instant> = None;
        // A session ends when its token does, on the same timer as pings and drain: an idle
        // session carries one timer, not one per reason to wake.
        let expires = self.principal.expires_in().map(|left| tokio::time::Instant::now() + left);
        let expired = |now: tokio::time::Instant| expires.is_some_and(|at| now >= at);
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);
        loop {
            let timed = pings || drain_at.is_some() || expires.is_some();
            let wake = tokio::select! {
                biased;
                () = self.outbox.ready() => Wake::Outbox,
                inbound = transport.recv() => Wake::Inbound(inbound),
                () = &mut timer, if timed => Wake::Timer,
                () = self.edge.drain.cancelled(), if drain_at.is_none() => Wake::Drain,
            };
            match wake {
                Wake::Outbox => {
                    if let Some(reason) = self.outbox.close_reason() {
                        return Box::pin(self.closed_by_fanout(transport, reason)).await;
                    }
                    if let Err(end) = Box::pin(self.write_queued(transport, floor, heartbeat * 2)).await {
                        return end;
                    }
                }
                Wake::Inbound(inbound) => {
                    last_heard = Instant::now();
                    // A client that never stops sending keeps the timer from being polled.
                    if matches!(inbound, Inbound::Frame(_)) && expired(tokio::time::Instant::now()) {
                        return Box::pin(self.token_ended(transport, "the token expired", "token expired")).await;
                    }
                    match inbound {
                        Inbound::Frame(bytes) => Box::pin(self.handle(&bytes)).await,
                        Inbound::Alive => {}
                        Inbound::TooLarge => {
                            return End::Close(
                                close::TOO_LARGE,
                                format!("frame over {} bytes", selvage_shared::MAX_CLIENT_FRAME_BYTES),
                            )
                        }
                        Inbound::Refused(refused) => {
                            let (code, reason) = refused.close();
                            return End::Close(code, reason.into());
                        }
                        Inbound::Closed => return End::Client,
                    }
                }
                Wake::Timer => {
                    let now = tokio::time::Instant::now();
                    if drain_at.is_some_and(|at| now >= at) {
                        return End::Close(close::DRAINING, "edge draining".into());
                    }
                    if expired(now) {
                        return Box::pin(self.token_ended(transport, "the token expired", "token expired")).await;
                    }
                    if pings && now >= next_ping {
                        if last_heard.elapsed() > heartbeat * 5 / 2 {
                            return End::Close(close::IDLE, "idle timeout".into());
                        }
                        // A client that stops reading blocks the ping as it would a batch.
                        match Box::pin(tokio::time::timeout(heartbeat * 2, transport.ping())).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return End::Client,
                            Err(_) => return slow_consumer(),
                        }
                        next_ping = now + heartbeat;
                    }
                }
                Wake::Drain => {
                    let grace = self.edge.config.sessions.drain_grace_ms;
                    let reconnect_in_ms = rand::rng().random_range(0..grace.max(1));
                    let goodbye = encode(&ServerFrame::Goodbye { reconnect_in_ms }, self.format);
                    let _ = Box::pin(transport.write(goodbye)).await;
                    drain_at = Some(tokio::time::Instant::now() + Duration::from_millis(grace));
                }
            }
            let deadline =
                [pings.then_some(next_ping), drain_at, expires].into_iter().flatten().min().unwrap_or(next_ping);
            if deadline != timer.deadline() {
                timer.as_mut().reset(deadline);
            }
        }
    }

    /// Writes what the outbox holds (up to a batch) with one flush: under fan-out load that is
    /// one system call for many frames.
    async fn write_queued<T: Transport>(
        &self,
        transport: &mut T,
        floor: &Cursor,
        timeout: Duration,
    ) -> Result<(), End> {
        let taken = self.outbox.take(MAX_BATCH);
        let mut batch = Vec::with_capacity(taken.len());
        for out in taken {
            match out {
                // Ephemeral events carry the newest cursor applied, not a place in the feed:
                // never take them for something already sent.
                Out::Event(e) if e.cursor <= *floor && !e.is_ephemeral() => {}
                Out::Event(e) => batch.push(e.wire(self.format)),
                Out::Reply(w) => batch.push(w),
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let write = async {
            for wire in batch {
                transport.feed(wire).await?;
            }
            transport.flush().await
        };
        // A client that stops reading blocks this write; fan-out then finds its outbox full
        // and asks it to close, which must not wait for the write.
        tokio::select! {
            written = tokio::time::timeout(timeout, write) => match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::Client),
                Err(_) => Err(slow_consumer()),
            },
            () = self.outbox.closed() => Err(slow_consumer()),
        }
    }

    /// Fan-out asked the session to close.
    async fn closed_by_fanout<T: Transport>(&self, transport: &mut T, reason: CloseReason) -> End {
        match reason {
            CloseReason::TokenRevoked => self.token_ended(transport, "the token was revoked", "token revoked").await,
            CloseReason::Deactivated => {
                self.token_ended(transport, "the user was deactivated", "user deactivated").await
            }
            CloseReason::Resync => self.resync(transport, "the edge lost its place in the feed; boot again").await,
            CloseReason::SlowConsumer => slow_consumer(),
        }
    }

    /// The session's token stopped working (revoked or expired): an `unauthorized` error, then
    /// close code 4001, as a new connection with that token gets.
    async fn token_ended<T: Transport>(&self, transport: &mut T, message: &str, reason: &str) -> End {
        let e = EdgeError::Unauthorized(message.into()).frame(None);
        // A client that reads nothing must not hold the session open: the close follows anyway.
        let _ = tokio::time::timeout(PARTING_WRITE, transport.write(encode(&e, self.format))).await;
        End::Close(close::UNAUTHORIZED, reason.into())
    }

    async fn finish<T: Transport>(&self, transport: T, end: End) {
        match end {
            End::Client => tracing::debug!("client went away"),
            End::Close(code, reason) => {
                tracing::debug!(code, %reason, "closing session");
                // A WebSocket queues its close and finishes the handshake in a task of its own,
                // so that a client that reads slowly still gets the close frame; QUIC lets the
                // peer read what was written first. Neither holds the session past a moment.
                let _ = tokio::time::timeout(Duration::from_secs(1), transport.close(code, &reason)).await;
            }
        }
    }

    /// Sends the events a resuming client missed: `(after, upto]`.
    async fn replay<T: Transport>(
        &self,
        writer: &mut T,
        after: &Cursor,
        upto: &Cursor,
        buffered: Option<Vec<EventFrame>>,
    ) -> Result<(), End> {
        let format = self.format;
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
                    let e = EdgeError::Unavailable("cannot fetch the missed events; resume again".into()).frame(None);
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
    async fn resync<T: Transport>(&self, writer: &mut T, reason: &str) -> End {
        let r = ServerFrame::Resync { reason: reason.into() };
        let _ = tokio::time::timeout(PARTING_WRITE, writer.write(encode(&r, self.format))).await;
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
    async fn handle(&self, bytes: &[u8]) {
        let format = self.format;
        let metrics = &self.edge.metrics;
        let frame = match selvage_shared::decode_client_request(bytes, format) {
            Ok(frame) => frame,
            Err((e, request_id)) => {
                metrics.client_frames.with_label_values(&["bad"]).inc();
                // A request that parsed is answered by its id: its sender is waiting for it.
                let reply = EdgeError::BadFrame(e).frame(request_id);
                self.outbox.reply(encode(&reply, format)).await;
                return;
            }
        };
        metrics.client_frames.with_label_values(&[frame.kind()]).inc();
        if let Err(message) = self.principal.grant.allows(frame.need()) {
            let reply =
                EdgeError::Refused { code: ErrorCode::Forbidden, message }.frame(frame.request_id().map(String::from));
            self.outbox.reply(encode(&reply, format)).await;
            return;
        }
        let class = match &frame {
            ClientFrame::Query(_) => Some("read"),
            ClientFrame::Send { .. }
            | ClientFrame::MarkRead { .. }
            | ClientFrame::SetPresence { .. }
            | ClientFrame::SetNotifyPrefs { .. } => Some("write"),
            ClientFrame::Ping { .. } | ClientFrame::Typing { .. } | ClientFrame::PresenceSub { .. } => None,
        };
        if let Some(class) = class {
            if let Err((message, wait)) = self.edge.rates.check(class, &self.principal.token_hash, metrics) {
                let reply = ServerFrame::Error {
                    reply_to: frame.request_id().map(String::from),
                    code: ErrorCode::RateLimited,
                    message,
                    retry_after_ms: Some(wait.as_millis().max(1) as u64),
                };
                self.outbox.reply(encode(&reply, format)).await;
                return;
            }
        }
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
                // Other edges hear of it through the origin; nobody waits for the answer, and when
                // the edge has as many such calls running it is dropped (see `OneWayCalls`).
                if let Some(event) = relayed {
                    let upstream = self.edge.upstream.clone();
                    let workspace = self.principal.workspace.clone();
                    self.edge.one_way.run_or_drop("typing", async move {
                        upstream.call(Call::Relay { workspace, event: Box::new(event) }).await
                    });
                }
            }
            ClientFrame::PresenceSub { users } => {
                let per_window = self.edge.config.sessions.presence_subs_per_10s;
                let refused = self.live.lock().presence_sub(self.outbox.id, users, per_window, metrics).is_err();
                if refused {
                    let message = format!("at most {per_window} presence_sub frames per 10 s; keep the last list");
                    let reply = EdgeError::RateLimited(message).frame(None);
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
                // Never dropped: waits for a slot, and the client is not read meanwhile.
                self.edge.one_way.run(async move { upstream.call(call).await }).await;
            }
            ClientFrame::Send { .. }
            | ClientFrame::Query(_)
            | ClientFrame::MarkRead { .. }
            | ClientFrame::SetNotifyPrefs { .. } => {
                // Waiting here stops reading from the client: its requests in flight are capped.
                let permits =
                    self.permits.get_or_init(|| Arc::new(Semaphore::new(self.edge.config.sessions.max_in_flight)));
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
                    Ok(other) => Some(unexpected(Some(String::new()), &other)),
                    Err(e) => Some(EdgeError::Origin(e).frame(None)),
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
                    Ok(Answer::Sent { message, cursor, .. }) => ServerFrame::Ack {
                        reply_to: id,
                        channel: message.channel,
                        seq: message.seq,
                        ts: message.ts,
                        cursor,
                    },
                    Ok(Answer::Command { command, outcome }) => {
                        ServerFrame::Command { reply_to: id, command, answer: outcome }
                    }
                    Ok(other) => unexpected(Some(id), &other),
                    Err(e) => EdgeError::Origin(e).frame(Some(id)),
                }
            }
            ClientFrame::Query(query) => self.query(query).await,
            ClientFrame::SetNotifyPrefs { id, prefs } => self.notify_prefs(id, Some(prefs)).await,
            other => EdgeError::Internal(format!("{} is not a request", other.kind())).frame(None),
        };
        Some(reply)
    }

    async fn query(&self, query: Query) -> ServerFrame {
        if query.q == QueryKind::Search {
            return self.search(query).await;
        }
        if query.q == QueryKind::NotifyPrefs {
            return self.notify_prefs(query.id, None).await;
        }
        let id = query.id.clone();
        let answer = self.live.lock().state.query(&self.principal.user, &query);
        match answer {
            QueryAnswer::Answer(mut result) => {
                self.edge.metrics.cache_requests.with_label_values(&["query", "hit"]).inc();
                result.reply_to = id;
                ServerFrame::Result(result)
            }
            QueryAnswer::Refused { code, message } => EdgeError::Refused { code, message }.frame(Some(id)),
            QueryAnswer::NeedsOrigin => {
                self.edge.metrics.cache_requests.with_label_values(&["query", "miss"]).inc();
                self.ask_origin(query).await
            }
        }
    }

    /// The user's notification preferences, read or replaced (`prefs`): kept by the origin
    /// only, which checks them as it does over HTTP.
    async fn notify_prefs(&self, id: String, prefs: Option<Box<selvage_shared::NotifyPrefs>>) -> ServerFrame {
        let call =
            Call::NotifyPrefs { workspace: self.principal.workspace.clone(), user: self.principal.user.clone(), prefs };
        match self.edge.upstream.call(call).await {
            Ok(Answer::NotifyPrefs(prefs)) => {
                ServerFrame::Result(QueryResult { reply_to: id, notify_prefs: Some(prefs), ..Default::default() })
            }
            Ok(other) => unexpected(Some(id), &other),
            Err(e) => EdgeError::Origin(e).frame(Some(id)),
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
            _ => return EdgeError::Internal("this query cannot be asked of the origin".into()).frame(Some(id)),
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
            Ok(other) => unexpected(Some(id), &other),
            Err(e) => EdgeError::Origin(e).frame(Some(id)),
        }
    }

    /// A `search`, always asked of the origin: the index is there, and so is the check of every
    /// hit against the store (ARCHITECTURE §8 "Search"). What the origin refuses (a malformed
    /// query, search turned off) reaches the client with the origin's code and message.
    async fn search(&self, query: Query) -> ServerFrame {
        let Query { id, text, sort, limit, page, wait_for, .. } = query;
        let call = Call::Search {
            workspace: self.principal.workspace.clone(),
            user: self.principal.user.clone(),
            // Validation guarantees a text (`Query::validate`).
            text: text.unwrap_or_default(),
            sort: sort.unwrap_or_default(),
            limit,
            page,
            wait_for,
        };
        match self.edge.upstream.call(call).await {
            Ok(Answer::Found(found)) => ServerFrame::Result(QueryResult {
                reply_to: id,
                results: found.results,
                caught_up: Some(found.caught_up),
                next: found.next_cursor,
                ..Default::default()
            }),
            Ok(other) => unexpected(Some(id), &other),
            Err(e) => EdgeError::Origin(e).frame(Some(id)),
        }
    }
}

/// The reply to a request the origin answered with something else than it asks for.
fn unexpected(id: Option<String>, answer: &Answer) -> ServerFrame {
    EdgeError::Internal(format!("unexpected answer from the origin: {answer:?}")).frame(id)
}
