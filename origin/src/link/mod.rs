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
//! This module accepts connections and checks each stream's first frame; the streams themselves
//! are served by `feed_stream` and by `calls`, where each call is handled as an HTTP request is
//! by [`crate::http`].
//!
//! Nothing an edge sends can panic the origin or make it allocate without bound: frame lengths
//! are checked before anything is allocated ([`MAX_OPEN_FRAME_BYTES`], [`MAX_CALL_FRAME_BYTES`]),
//! a frame that does not decode is answered with `bad_frame`, every write and call has a timeout,
//! and connections and streams per connection are capped.

mod calls;
mod feed_stream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::crypto::rustls::QuicServerConfig;
use selvage_net::{
    quic::{read_frame, FrameReadError},
    tls::{self, Identity},
};
use selvage_shared::{
    link::{encode_frame, Answer, LinkError, LinkReply, LINK_ALPN, MAX_LINK_FRAME_BYTES},
    Cursor, ErrorCode, PROTOCOL_VERSION,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use self::{
    calls::calls_stream,
    feed_stream::{feed_stream, Requested},
};
use crate::{config::LinkConfig, feed, Origin, StartError};

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
    keys: Keys,
}

/// Digests of the link keys edges may present: `link.edge_key`, and during a rotation
/// `link.previous_edge_key`.
#[derive(Clone, Copy)]
struct Keys {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
}

/// Which of the link keys an edge presented.
#[derive(PartialEq)]
enum KeyMatch {
    Current,
    Previous,
    Wrong,
}

impl Keys {
    /// Compares `presented` with each key's digest in constant time: neither a key nor its
    /// length leaks through timing.
    fn check(&self, presented: &str) -> KeyMatch {
        let presented = digest(presented);
        let current: bool = presented.ct_eq(&self.current).into();
        // Both comparisons always run, so timing does not tell which key matched.
        let previous: bool = self.previous.map(|p| presented.ct_eq(&p).into()).unwrap_or(false);
        match (current, previous) {
            (true, _) => KeyMatch::Current,
            (false, true) => KeyMatch::Previous,
            (false, false) => KeyMatch::Wrong,
        }
    }
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
    let keys = Keys { current: digest(edge_key), previous: config.previous_edge_key.as_deref().map(digest) };
    if keys.previous.is_some() {
        tracing::info!("the link takes link.previous_edge_key beside link.edge_key while the key is rotated");
    }
    Ok(Some(Bound { endpoint, addr, fingerprint, keys }))
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
    /// Starts accepting edges; runs until `shutdown`, then closes every connection.
    pub fn serve(self, origin: Arc<Origin>, shutdown: CancellationToken) -> Link {
        let Bound { endpoint, addr, fingerprint, keys } = self;
        tracing::info!(%addr, %fingerprint, "edge link listening");
        let ctx = Arc::new(Ctx { origin, shutdown, tracker: TaskTracker::new(), keys });
        let task = tokio::spawn(accept_loop(ctx, endpoint));
        Link { addr, fingerprint, task }
    }
}

/// What every connection and stream task shares.
struct Ctx {
    origin: Arc<Origin>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    keys: Keys,
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
    let key = ctx.keys.check(&open.edge_key);
    if key == KeyMatch::Wrong {
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
    if key == KeyMatch::Previous && matches!(open.stream, LenientStream::Feed { .. }) {
        tracing::warn!(edge.id = %edge_id, "edge linked with the previous link key: give it link.edge_key's new value");
    }
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
// The first frame of every stream.

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

#[cfg(test)]
mod tests {
    use selvage_shared::{
        link::{LinkOpen, LinkStream, FRAME_PREFIX_BYTES},
        ChannelId, Event, FeedItem, UserId, WorkspaceId,
    };

    use super::*;

    /// A feed item holding a message of `text_len` bytes (the feed streams' tests use it too).
    pub(super) fn item(n: u8, text_len: usize) -> FeedItem {
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
