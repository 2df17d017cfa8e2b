//! A session with an edge: [`Client`] and its cloneable [`Handle`], the reader and writer tasks
//! behind them, and requests matched to their replies by id (ARCHITECTURE §4).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use selvage_shared::link::{encode_frame, FRAME_PREFIX_BYTES};
use selvage_shared::{
    encode_client, ChannelId, ClientFrame, Cursor, ErrorCode, EventFrame, Format, Hello, NotifyPrefs, Query, QueryKind,
    QueryResult, SearchPage, SearchSort, Seq, ServerFrame, PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant, Interval, MissedTickBehavior};
use tracing::Instrument;

use crate::error::{ClientError, CloseInfo};
use crate::options::{ClientSettings, ConnectOptions, Heartbeat, Transport};
use crate::transport::{dial, FrameSink, FrameSource, Next, CLOSE_GRACE};

/// Frames waiting for the writer task. Callers wait (under their timeout) when it is full.
pub(crate) const OUTBOUND_QUEUE: usize = 1024;

/// Shortest automatic heartbeat period, whatever `hello.heartbeat_ms` says.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// Close code of a normal close (WebSocket 1000; the same number on QUIC).
pub(crate) const CLOSE_NORMAL: u16 = 1000;

/// Close code when the edge broke the protocol (WebSocket 1002; the same number on QUIC).
pub(crate) const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// A `send` is durable: the message's place in its channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The channel posted to.
    pub channel: ChannelId,
    /// The message's `seq`.
    pub seq: Seq,
    /// Commit time, ms since the epoch.
    pub ts: i64,
    /// The message's feed cursor, for [`SearchOptions::wait_for`]; `None` when the send was a
    /// retry of one already durable.
    pub cursor: Option<Cursor>,
}

/// A `send` ran a slash command instead of posting: the command and what its app did. The
/// app's answer follows as events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRan {
    /// The command, with its slash.
    pub command: String,
    /// What the app did with it.
    pub answer: selvage_shared::CommandAnswer,
}

/// How a [`Handle::search`] orders, pages and waits. The default: best matches first, the
/// origin's page size, the first page, no waiting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchOptions {
    /// Best match (`relevance`) or newest (`recent`) first.
    pub sort: SearchSort,
    /// Results per page (1 to 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before, for the next one.
    pub page: Option<String>,
    /// Read your writes: a feed cursor ([`Ack::cursor`], an event's) the index should cover
    /// before the search runs; the page's `caught_up` says whether it did in time.
    pub wait_for: Option<Cursor>,
}

/// What [`Client::next_event`] yields, in the order the edge sent it.
// Events are nearly everything a session receives; boxing them to shrink the rare other
// variants would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// An event with its cursor.
    Event(EventFrame),
    /// The edge is draining: reconnect (resuming) after this delay.
    Goodbye {
        /// Jittered delay before reconnecting, in ms.
        reconnect_in_ms: u64,
    },
    /// The session cannot be resumed: boot afresh.
    Resync {
        /// Why.
        reason: String,
    },
    /// An `error` that answers no waiting request (no `reply_to`, or one this client is not
    /// waiting for, e.g. the id of a frame sent with [`Client::send_frame`]).
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// The connection is closed; nothing follows.
    Closed {
        /// WebSocket close code, or QUIC application error code when it fits in 16 bits.
        code: Option<u16>,
        /// The close reason, or what ended the connection.
        reason: String,
    },
}

/// A connection to an edge. See the crate docs.
///
/// Dropping it aborts the connection; [`Client::close`] closes it politely.
pub struct Client {
    handle: Handle,
    events: mpsc::Receiver<Inbound>,
    hello: Hello,
    opts: ConnectOptions,
    settings: ClientSettings,
    last_cursor: Option<Cursor>,
    resync: bool,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// A cloneable handle on a [`Client`]'s connection for sending from other tasks while the owner
/// reads events. Its calls fail with [`ClientError::Closed`] once the connection (or the client)
/// is gone.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    outbound: mpsc::Sender<Outgoing>,
    wire: Wire,
    request_timeout: Duration,
}

// Load generators move clients and handles into tasks.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client>();
    assert_send_sync::<Handle>();
};

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.opts.transport.name())
            .field("addr", &self.opts.addr)
            .field("session_id", &self.hello.session_id)
            .field("last_cursor", &self.last_cursor())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("wire", &self.wire).field("closed", &self.is_closed()).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with default [`ClientSettings`]; returns once `hello` has arrived.
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ClientError> {
        Client::connect_with(opts, ClientSettings::default()).await
    }

    /// Connects; returns once `hello` has arrived.
    ///
    /// Fails with [`ClientError::Refused`] when the edge answers `error` (or an HTTP error)
    /// instead of `hello`, [`ClientError::Resync`] when it cannot resume from `opts.resume`,
    /// [`ClientError::Closed`] when it closes the connection, [`ClientError::Timeout`] after
    /// `opts.timeout`, and [`ClientError::Connect`] when the connection cannot be made.
    pub async fn connect_with(opts: ConnectOptions, settings: ClientSettings) -> Result<Client, ClientError> {
        let deadline = Instant::now() + opts.timeout;
        let (sink, mut source) = match timeout_at(deadline, dial(&opts, &settings)).await {
            Err(_) => return Err(ClientError::Timeout("connect")),
            Ok(dialled) => dialled?,
        };
        let first = match timeout_at(deadline, source.next_frame()).await {
            Err(_) => return Err(ClientError::Timeout("hello")),
            Ok(first) => first,
        };
        let hello = match first {
            Next::Frame(ServerFrame::Hello(hello)) => hello,
            Next::Frame(ServerFrame::Error { code, message, .. }) => {
                return Err(ClientError::Refused { code, message })
            }
            Next::Frame(ServerFrame::Resync { reason }) => return Err(ClientError::Resync(reason)),
            Next::Frame(other) => {
                return Err(ClientError::Protocol(format!("expected `hello` first, got `{}`", other.kind())))
            }
            Next::Closed(info) => return Err(info.error()),
            Next::Invalid(what) => return Err(ClientError::Protocol(what)),
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "the edge speaks protocol {}, this client {PROTOCOL_VERSION}",
                hello.protocol
            )));
        }

        let heartbeat = match settings.heartbeat {
            Heartbeat::Off => None,
            Heartbeat::Every(period) => Some(period.max(MIN_HEARTBEAT)),
            Heartbeat::Auto => {
                (hello.heartbeat_ms > 0).then(|| Duration::from_millis(hello.heartbeat_ms / 2).max(MIN_HEARTBEAT))
            }
        };
        let wire = match opts.transport {
            Transport::WsJson => Wire::WsJson,
            Transport::WsMsgpack => Wire::WsMsgPack,
            Transport::Quic { .. } => Wire::Quic,
        };
        let shared = Arc::new(Shared::default());
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (events_tx, events) = mpsc::channel(settings.event_queue.max(1));
        let span = tracing::debug_span!(
            "client",
            transport = opts.transport.name(),
            addr = %opts.addr,
            session = %hello.session_id
        );
        let writer =
            tokio::spawn(write_loop(sink, outbound_rx, shared.clone(), wire, heartbeat).instrument(span.clone()));
        let reader = tokio::spawn(read_loop(source, shared.clone(), events_tx, outbound.clone()).instrument(span));

        // Until an event arrives, resume from where this session started: the cursor resumed
        // from (its missed events are still to come), or the boot payload's.
        let last_cursor = match (&opts.resume, hello.resumed) {
            (Some(resumed_from), true) => Some(resumed_from.clone()),
            _ => Some(hello.cursor.clone()),
        };
        Ok(Client {
            handle: Handle { shared, outbound, wire, request_timeout: settings.request_timeout },
            events,
            hello,
            opts,
            settings,
            last_cursor,
            resync: false,
            reader,
            writer,
        })
    }

    /// The edge's `hello`: the session's boot payload.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The options this client connected with.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// A cloneable handle for sending from other tasks.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Posts a message and waits until it is durable. See [`Handle::send`].
    pub async fn send(
        &self,
        channel: &ChannelId,
        text: &str,
        client_msg_id: &str,
        thread_root: Option<Seq>,
    ) -> Result<Ack, ClientError> {
        self.handle.send(channel, text, client_msg_id, thread_root).await
    }

    /// Runs a slash command. See [`Handle::command`].
    pub async fn command(
        &self,
        channel: &ChannelId,
        text: &str,
        thread_root: Option<Seq>,
    ) -> Result<CommandRan, ClientError> {
        self.handle.command(channel, text, thread_root).await
    }

    /// Asks a query. See [`Handle::query`].
    pub async fn query(&self, q: Query) -> Result<QueryResult, ClientError> {
        self.handle.query(q).await
    }

    /// Searches the messages the user may read. See [`Handle::search`].
    pub async fn search(&self, text: &str, opts: SearchOptions) -> Result<SearchPage, ClientError> {
        self.handle.search(text, opts).await
    }

    /// Round trip of a `ping`. See [`Handle::ping`].
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.handle.ping().await
    }

    /// The user's notification preferences. See [`Handle::notify_prefs`].
    pub async fn notify_prefs(&self) -> Result<NotifyPrefs, ClientError> {
        self.handle.notify_prefs().await
    }

    /// Replaces the user's notification preferences. See [`Handle::set_notify_prefs`].
    pub async fn set_notify_prefs(&self, prefs: NotifyPrefs) -> Result<NotifyPrefs, ClientError> {
        self.handle.set_notify_prefs(prefs).await
    }

    /// Writes a frame without waiting for any answer. See [`Handle::send_frame`].
    pub async fn send_frame(&self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.handle.send_frame(frame).await
    }

    /// Writes arbitrary bytes as one frame. See [`Handle::send_raw`].
    pub async fn send_raw(&self, bytes: Vec<u8>, binary: bool) -> Result<(), ClientError> {
        self.handle.send_raw(bytes, binary).await
    }

    /// The next event, `goodbye`, `resync`, unsolicited error or close, waiting at most `timeout`
    /// (`Ok(None)` then). After [`Inbound::Closed`] has been returned, fails with
    /// [`ClientError::Closed`].
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<Inbound>, ClientError> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(self.handle.shared.closed_error()),
            Ok(Some(inbound)) => {
                match &inbound {
                    // Max, not last: a cursor never moves backwards, whatever an edge puts on an
                    // ephemeral event.
                    Inbound::Event(frame) if self.last_cursor.as_ref().is_none_or(|c| frame.cursor > *c) => {
                        self.last_cursor = Some(frame.cursor.clone());
                    }
                    Inbound::Resync { .. } => self.resync = true,
                    _ => {}
                }
                Ok(Some(inbound))
            }
        }
    }

    /// The cursor to resume from: that of the newest event [`Client::next_event`] returned, or
    /// where the session started (the cursor resumed from, or `hello.cursor`) before any. `None`
    /// after a `resync`: there is nothing valid to resume from.
    pub fn last_cursor(&self) -> Option<Cursor> {
        if self.resync {
            return None;
        }
        self.last_cursor.clone()
    }

    /// This client's options with `resume` set to [`Client::last_cursor`]: what to reconnect with.
    pub fn connect_options_with_resume(&self) -> ConnectOptions {
        ConnectOptions { resume: self.last_cursor(), ..self.opts.clone() }
    }

    /// Closes this client, waits `delay` (e.g. a `goodbye`'s `reconnect_in_ms`) and connects again
    /// with the same options and settings, resuming from [`Client::last_cursor`]. Events not yet
    /// returned by `next_event` are replayed by the new session.
    pub async fn reconnect(self, delay: Duration) -> Result<Client, ClientError> {
        let opts = self.connect_options_with_resume();
        let settings = self.settings.clone();
        self.close().await;
        tokio::time::sleep(delay).await;
        Client::connect_with(opts, settings).await
    }

    /// Closes the connection politely (WebSocket close 1000; QUIC: finishes the stream, then
    /// closes with code 1000), waiting a bounded time for the edge's side of the handshake.
    pub async fn close(mut self) {
        // The reader discards events from now on instead of waiting for room.
        self.events.close();
        let close = Outgoing::Close { code: CLOSE_NORMAL, reason: "client closed".to_owned() };
        if let Ok(Ok(())) = timeout(CLOSE_GRACE, self.handle.outbound.send(close)).await {
            let _ = timeout(CLOSE_GRACE, &mut self.writer).await;
            let _ = timeout(CLOSE_GRACE, &mut self.reader).await;
        }
        // Drop aborts whatever is left.
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.handle.shared.close(CloseInfo::new(None, "closed by this client"), false);
        self.reader.abort();
        self.writer.abort();
    }
}

impl Handle {
    /// Posts `text` to `channel` (a reply in the thread of `thread_root` if set) and waits for
    /// the `ack`, which the edge sends once the message is durable. An `error` reply is
    /// [`ClientError::Refused`]. Retrying with the same `client_msg_id` gets the original `seq`.
    pub async fn send(
        &self,
        channel: &ChannelId,
        text: &str,
        client_msg_id: &str,
        thread_root: Option<Seq>,
    ) -> Result<Ack, ClientError> {
        let id = self.shared.next_id("r");
        let frame = ClientFrame::Send {
            id: id.clone(),
            channel: channel.clone(),
            text: text.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            thread_root,
        };
        match self.request(&id, &frame, "ack").await? {
            Reply::Ack(ack) if ack.channel == *channel => Ok(ack),
            Reply::Ack(ack) => {
                Err(ClientError::Protocol(format!("the ack of a send to {channel} names channel {}", ack.channel)))
            }
            Reply::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(unexpected_reply(&id, "ack", &other)),
        }
    }

    /// Sends `text`, a slash command (`/deploy prod`), in `channel` and waits for the app to
    /// take it. An unknown command, or an app that failed or did not answer in time, is
    /// [`ClientError::Refused`] (`unknown_command`, `command_failed`); text that is not a
    /// command is posted, and answered as a protocol error here (use [`Handle::send`]).
    pub async fn command(
        &self,
        channel: &ChannelId,
        text: &str,
        thread_root: Option<Seq>,
    ) -> Result<CommandRan, ClientError> {
        let id = self.shared.next_id("r");
        // Unique enough across sessions: an answer in the channel posts the command under it.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let client_msg_id = self.shared.next_id(&format!("cmd{nanos:x}-"));
        let frame = ClientFrame::Send {
            id: id.clone(),
            channel: channel.clone(),
            text: text.to_owned(),
            client_msg_id,
            thread_root,
        };
        match self.request(&id, &frame, "command").await? {
            Reply::Command(ran) => Ok(ran),
            Reply::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(unexpected_reply(&id, "command", &other)),
        }
    }

    /// Asks `q` and waits for its `result`; `q.id` is replaced by a fresh request id. An `error`
    /// reply is [`ClientError::Refused`].
    pub async fn query(&self, mut q: Query) -> Result<QueryResult, ClientError> {
        let id = self.shared.next_id("r");
        q.id = id.clone();
        match self.request(&id, &ClientFrame::Query(q), "result").await? {
            Reply::Result(result) => Ok(result),
            Reply::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(unexpected_reply(&id, "result", &other)),
        }
    }

    /// Searches the messages the user may read for `text` (the search query language: words,
    /// `"phrases"`, `-excluded`, `from:@handle`, `in:#channel`, …) with a `search` query, and
    /// returns the page the edge relays from the origin. A refusal (a malformed query, search
    /// turned off) is [`ClientError::Refused`] with the origin's code and message.
    pub async fn search(&self, text: &str, opts: SearchOptions) -> Result<SearchPage, ClientError> {
        let q = Query {
            text: Some(text.to_owned()),
            sort: Some(opts.sort),
            limit: opts.limit,
            page: opts.page,
            wait_for: opts.wait_for,
            ..Query::new(String::new(), QueryKind::Search)
        };
        let result = self.query(q).await?;
        let Some(caught_up) = result.caught_up else {
            return Err(ClientError::Protocol(format!("the result of search {} lacks caught_up", result.reply_to)));
        };
        Ok(SearchPage { results: result.results, next_cursor: result.next, caught_up })
    }

    /// The user's notification preferences, with a `notify_prefs` query.
    pub async fn notify_prefs(&self) -> Result<NotifyPrefs, ClientError> {
        let result = self.query(Query::new(String::new(), QueryKind::NotifyPrefs)).await?;
        result.notify_prefs.map(|p| *p).ok_or_else(|| {
            ClientError::Protocol(format!("the result of notify_prefs {} lacks notify_prefs", result.reply_to))
        })
    }

    /// Replaces the user's notification preferences with a `set_notify_prefs` frame; returns
    /// them as the origin stored them. A refusal (an unknown channel, a bad time zone) is
    /// [`ClientError::Refused`].
    pub async fn set_notify_prefs(&self, prefs: NotifyPrefs) -> Result<NotifyPrefs, ClientError> {
        let id = self.shared.next_id("r");
        let frame = ClientFrame::SetNotifyPrefs { id: id.clone(), prefs: Box::new(prefs) };
        match self.request(&id, &frame, "result").await? {
            Reply::Result(QueryResult { notify_prefs: Some(prefs), .. }) => Ok(*prefs),
            Reply::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(unexpected_reply(&id, "result", &other)),
        }
    }

    /// Sends a `ping` and returns the time until its `pong`.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let id = self.shared.next_id("r");
        let start = Instant::now();
        match self.request(&id, &ClientFrame::Ping { id: id.clone() }, "pong").await? {
            Reply::Pong => Ok(start.elapsed()),
            Reply::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(unexpected_reply(&id, "pong", &other)),
        }
    }

    /// Writes `frame` as it is (`typing`, `mark_read`, `presence_sub`, or a request with an id of
    /// the caller's choosing) and returns once it is on the wire, without waiting for any
    /// answer. Replies to its id are not awaited: an `error` shows up as [`Inbound::Error`],
    /// anything else is dropped.
    pub async fn send_frame(&self, frame: &ClientFrame) -> Result<(), ClientError> {
        let (bytes, binary) = self.wire.encode(frame)?;
        self.write(bytes, binary).await
    }

    /// Writes arbitrary bytes as one frame, for bad-input tests, and returns once they are on the
    /// wire. WebSocket: one binary message when `binary`, else one text message (sent as a raw
    /// frame if the bytes are not UTF-8). QUIC: `binary` is ignored; the bytes are written as the
    /// body of one length-prefixed frame.
    pub async fn send_raw(&self, bytes: Vec<u8>, binary: bool) -> Result<(), ClientError> {
        let (bytes, binary) = self.wire.raw(bytes, binary)?;
        self.write(bytes, binary).await
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Hands a frame to the writer and waits until it is written.
    async fn write(&self, bytes: Vec<u8>, binary: bool) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(self.shared.closed_error());
        }
        let deadline = Instant::now() + self.request_timeout;
        let (written, done) = oneshot::channel();
        self.enqueue(Outgoing::Data { bytes, binary, written: Some(written) }, deadline).await?;
        match timeout_at(deadline, done).await {
            Err(_) => Err(ClientError::Timeout("the frame to be written")),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(result)) => result,
        }
    }

    /// Sends a request frame whose id is `id` and waits for the reply naming it.
    async fn request(&self, id: &str, frame: &ClientFrame, awaited: &'static str) -> Result<Reply, ClientError> {
        let (bytes, binary) = self.wire.encode(frame)?;
        let deadline = Instant::now() + self.request_timeout;
        // Registered before the frame leaves, so even an instant reply finds its waiter.
        let reply = self.shared.register(id)?;
        let _waiting = Waiting { shared: &self.shared, id };
        self.enqueue(Outgoing::Data { bytes, binary, written: None }, deadline).await?;
        match timeout_at(deadline, reply).await {
            Err(_) => Err(ClientError::Timeout(awaited)),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    async fn enqueue(&self, item: Outgoing, deadline: Instant) -> Result<(), ClientError> {
        match timeout_at(deadline, self.outbound.send(item)).await {
            Err(_) => Err(ClientError::Timeout("room in the outbound queue")),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(())) => Ok(()),
        }
    }
}

fn unexpected_reply(id: &str, expected: &str, got: &Reply) -> ClientError {
    ClientError::Protocol(format!("request {id} expected `{expected}`, got `{}`", got.kind()))
}

/// A reply to a request, routed by its `reply_to`.
pub(crate) enum Reply {
    Ack(Ack),
    /// A `send` that ran a slash command: the command and what its app did.
    Command(CommandRan),
    Result(QueryResult),
    Pong,
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Reply {
    fn kind(&self) -> &'static str {
        match self {
            Reply::Ack(_) => "ack",
            Reply::Command(..) => "command",
            Reply::Result(_) => "result",
            Reply::Pong => "pong",
            Reply::Error { .. } => "error",
        }
    }
}

/// State the caller side and the reader and writer tasks share.
#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    next_id: AtomicU64,
}

#[derive(Default)]
pub(crate) struct State {
    /// Requests waiting for their reply, by request id.
    pending: HashMap<String, oneshot::Sender<Reply>>,
    /// Set once the connection is gone; no request is registered after that.
    closed: Option<CloseInfo>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections cannot leave the state inconsistent, so a poisoned lock is fine
        // to keep using.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request id unique within this client.
    fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn register(&self, id: &str) -> Result<oneshot::Receiver<Reply>, ClientError> {
        let mut state = self.lock();
        if let Some(info) = &state.closed {
            return Err(info.error());
        }
        let (tx, rx) = oneshot::channel();
        state.pending.insert(id.to_owned(), tx);
        Ok(rx)
    }

    /// Hands `reply` to the request waiting for `id`; gives it back when none is.
    fn complete(&self, id: &str, reply: Reply) -> Option<Reply> {
        let waiter = self.lock().pending.remove(id);
        match waiter {
            Some(waiter) => waiter.send(reply).err(),
            None => Some(reply),
        }
    }

    fn forget(&self, id: &str) {
        self.lock().pending.remove(id);
    }

    /// Marks the connection closed and fails every waiting request. What the reader saw
    /// (`authoritative`) replaces an earlier guess; otherwise the first reason stays.
    fn close(&self, info: CloseInfo, authoritative: bool) {
        let mut state = self.lock();
        if authoritative || state.closed.is_none() {
            state.closed = Some(info);
        }
        // Dropping the senders wakes the waiters, which then read `closed`.
        state.pending.clear();
    }

    fn closed_error(&self) -> ClientError {
        match &self.lock().closed {
            Some(info) => info.error(),
            None => ClientError::Closed { code: None, reason: "connection closed".to_owned() },
        }
    }
}

/// Unregisters a request when its call returns or is cancelled.
pub(crate) struct Waiting<'a> {
    shared: &'a Shared,
    id: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

/// How frames are put on the wire.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wire {
    WsJson,
    WsMsgPack,
    Quic,
}

impl Wire {
    /// The bytes of a frame and whether they travel as a binary WebSocket message.
    fn encode(self, frame: &ClientFrame) -> Result<(Vec<u8>, bool), ClientError> {
        match self {
            Wire::WsJson => Ok((encode_client(frame, Format::Json), false)),
            Wire::WsMsgPack => Ok((encode_client(frame, Format::MsgPack), true)),
            Wire::Quic => {
                let bytes = encode_frame(frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
                Ok((bytes, true))
            }
        }
    }

    fn raw(self, bytes: Vec<u8>, binary: bool) -> Result<(Vec<u8>, bool), ClientError> {
        match self {
            Wire::WsJson | Wire::WsMsgPack => Ok((bytes, binary)),
            Wire::Quic => {
                let len = u32::try_from(bytes.len())
                    .map_err(|_| ClientError::Protocol(format!("{} bytes do not fit one frame", bytes.len())))?;
                let mut framed = Vec::with_capacity(FRAME_PREFIX_BYTES + bytes.len());
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(&bytes);
                Ok((framed, true))
            }
        }
    }
}

/// What the writer task is asked to do.
pub(crate) enum Outgoing {
    /// Write one frame; report on `written` when asked to.
    Data { bytes: Vec<u8>, binary: bool, written: Option<oneshot::Sender<Result<(), ClientError>>> },
    /// Close the connection and stop.
    Close { code: u16, reason: String },
}

/// Writes frames in the order they are handed over, plus heartbeats, until asked to close or the
/// connection fails.
pub(crate) async fn write_loop(
    mut sink: FrameSink,
    mut outbound: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
    wire: Wire,
    heartbeat: Option<Duration>,
) {
    let mut ticker = heartbeat.map(|period| {
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    loop {
        let item = tokio::select! {
            item = outbound.recv() => item,
            () = tick(&mut ticker) => {
                // A heartbeat's pong matches no waiter and is dropped by the reader.
                match wire.encode(&ClientFrame::Ping { id: shared.next_id("hb-") }) {
                    Ok((bytes, binary)) => Some(Outgoing::Data { bytes, binary, written: None }),
                    Err(_) => continue,
                }
            }
        };
        match item {
            Some(Outgoing::Data { bytes, binary, written }) => {
                let result = sink.write(bytes, binary).await;
                let failure = result.as_ref().err().map(|e| format!("write failed: {e}"));
                if let Some(written) = written {
                    let _ = written.send(result.map_err(|e| ClientError::Closed { code: None, reason: e }));
                }
                if let Some(reason) = failure {
                    tracing::debug!(%reason, "writer stops");
                    shared.close(CloseInfo::new(None, reason), false);
                    return;
                }
            }
            Some(Outgoing::Close { code, reason }) => return sink.close(code, &reason).await,
            // Unreachable while the reader holds a sender; close anyway.
            None => return sink.close(CLOSE_NORMAL, "client closed").await,
        }
    }
}

pub(crate) async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Reads server frames until the connection ends: replies go to their waiters, the rest to the
/// event queue (waiting for room: see the crate docs), then the close.
pub(crate) async fn read_loop(
    mut source: FrameSource,
    shared: Arc<Shared>,
    events: mpsc::Sender<Inbound>,
    outbound: mpsc::Sender<Outgoing>,
) {
    let info = loop {
        let problem = match source.next_frame().await {
            Next::Frame(frame) => match dispatch(&shared, frame) {
                Ok(None) => continue,
                Ok(Some(inbound)) => {
                    // Fails only once the client stopped reading events (closing); the event is
                    // then of no use.
                    let _ = events.send(inbound).await;
                    continue;
                }
                Err(problem) => problem,
            },
            Next::Closed(info) => break info,
            Next::Invalid(problem) => problem,
        };
        let reason = format!("protocol error: {problem}");
        tracing::warn!(%reason, "closing the connection");
        let close = Outgoing::Close { code: CLOSE_PROTOCOL_ERROR, reason: reason.clone() };
        let _ = timeout(CLOSE_GRACE, outbound.send(close)).await;
        break CloseInfo::new(None, reason);
    };
    tracing::debug!(code = ?info.code, reason = %info.reason, "connection closed");
    shared.close(info.clone(), true);
    let _ = events.send(info.inbound()).await;
}

/// Routes one server frame: `Ok(Some(_))` for the event queue, `Ok(None)` when handled, `Err` for
/// a protocol violation.
pub(crate) fn dispatch(shared: &Shared, frame: ServerFrame) -> Result<Option<Inbound>, String> {
    let (id, reply) = match frame {
        ServerFrame::Event(event) => return Ok(Some(Inbound::Event(event))),
        ServerFrame::Goodbye { reconnect_in_ms } => return Ok(Some(Inbound::Goodbye { reconnect_in_ms })),
        ServerFrame::Resync { reason } => return Ok(Some(Inbound::Resync { reason })),
        ServerFrame::Error { reply_to: None, code, message, .. } => return Ok(Some(Inbound::Error { code, message })),
        ServerFrame::Hello(_) => return Err("a second `hello`".to_owned()),
        ServerFrame::Error { reply_to: Some(id), code, message, .. } => (id, Reply::Error { code, message }),
        ServerFrame::Ack { reply_to, channel, seq, ts, cursor } => {
            (reply_to, Reply::Ack(Ack { channel, seq, ts, cursor }))
        }
        ServerFrame::Pong { reply_to } => (reply_to, Reply::Pong),
        ServerFrame::Result(result) => (result.reply_to.clone(), Reply::Result(result)),
        ServerFrame::Command { reply_to, command, answer } => {
            (reply_to, Reply::Command(CommandRan { command, answer }))
        }
    };
    match shared.complete(&id, reply) {
        None => Ok(None),
        Some(Reply::Error { code, message }) => Ok(Some(Inbound::Error { code, message })),
        // A heartbeat's pong, or a reply that came after its request timed out.
        Some(other) => {
            tracing::trace!(reply_to = %id, kind = other.kind(), "reply nobody waits for");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests;
