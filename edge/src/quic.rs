//! The client QUIC transport: ALPN `selvage/1` (ARCHITECTURE §4).
//!
//! A client opens one bidirectional stream and writes a `ClientOpen {token, resume}` frame,
//! then client frames; the edge writes server frames. Every frame is a 4-byte big-endian
//! length and MessagePack. QUIC's keep-alive and idle timeout (2.5 heartbeats) find dead
//! clients, so the session does not ping them itself. The stream is read by a task of its own
//! (quinn's reads are not cancel safe) that hands the session what it read.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use quinn::crypto::rustls::QuicServerConfig;
use selvage_net::{
    quic::read_frame,
    tls::{self, Identity},
};
use selvage_shared::{
    link::CLIENT_ALPN,
    link::{frame_len, FRAME_PREFIX_BYTES},
    ClientOpen, Format, MAX_CLIENT_FRAME_BYTES,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    error::{close, StartError},
    limits::{FrameBudget, FrameRefusal, FrameShare, FREE_FRAME_BYTES},
    node::Edge,
    session::{self, Inbound, Opening, Transport},
    wire::Wire,
};

/// A running QUIC listener.
pub struct Listener {
    /// The bound address.
    pub addr: SocketAddr,
    /// Fingerprint of the certificate (for clients to pin).
    pub fingerprint: String,
    /// Ends after shutdown.
    pub task: tokio::task::JoinHandle<()>,
}

/// Largest `ClientOpen` frame.
const MAX_OPEN_BYTES: usize = 4096;

/// Frames the stream's reader may have read ahead of its session; with the one the session
/// handles, that is what a connection holds (a large one under its frame budget share).
const READ_AHEAD: usize = 4;

/// A frame read, with its share of the frame budget (given back once the session is done
/// with it).
type Read = (Inbound, Option<Box<FrameShare>>);

/// Binds the QUIC listener and starts accepting.
pub fn listen(edge: Arc<Edge>, addr: SocketAddr, shutdown: CancellationToken) -> Result<Listener, StartError> {
    let identity = match (&edge.config.cert_file, &edge.config.key_file) {
        (Some(cert), Some(key)) => Identity::from_pem_files(cert, key)?,
        _ => Identity::self_signed(&edge.config.cert_names)?,
    };
    let fingerprint = identity.fingerprint();
    let tls = tls::server_config(identity, &[CLIENT_ALPN])?;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| StartError::Tls(tls::TlsError::Generate(format!("QUIC refused the TLS configuration: {e}"))))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let heartbeat = Duration::from_millis(edge.config.sessions.heartbeat_ms);
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(heartbeat / 2));
    if let Ok(idle) = quinn::IdleTimeout::try_from(heartbeat * 5 / 2) {
        transport.max_idle_timeout(Some(idle));
    }
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // Sessions speak on their one stream; datagrams are not part of the protocol.
    transport.datagram_receive_buffer_size(None);
    transport.datagram_send_buffer_size(0);
    server.transport_config(Arc::new(transport));
    let wanted = edge.config.quic_socket_buffer;
    let (socket, granted) =
        selvage_net::quic::udp_socket(addr, wanted).map_err(|source| StartError::Bind { addr, source })?;
    if granted < wanted {
        // Informational: a stock kernel grants 208 KiB, fine for a development edge.
        tracing::info!(
            wanted,
            granted,
            "the kernel gave the QUIC socket less receive buffer than quic_socket_buffer asks; \
             handshake storms may drop datagrams: raise net.core.rmem_max and net.core.wmem_max"
        );
    }
    let runtime = Arc::new(quinn::TokioRuntime);
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = endpoint.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    let task = tokio::spawn(accept(edge, endpoint, shutdown));
    Ok(Listener { addr: bound, fingerprint, task })
}

async fn accept(edge: Arc<Edge>, endpoint: quinn::Endpoint, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.cancelled() => break,
        };
        if edge.is_draining() {
            incoming.refuse();
            continue;
        }
        let edge = edge.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve(edge, connection).await,
                Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
            }
        });
    }
    endpoint.close(close::DRAINING.into(), b"edge stopping");
    endpoint.wait_idle().await;
}

async fn serve(edge: Arc<Edge>, connection: quinn::Connection) {
    let timeout = Duration::from_millis(edge.config.sessions.boot_timeout_ms);
    let opened = tokio::time::timeout(timeout, async {
        let (send, mut recv) = connection.accept_bi().await.ok()?;
        let open = read_frame(&mut recv, MAX_OPEN_BYTES).await.ok()??;
        let open: ClientOpen = selvage_shared::from_msgpack(&open).ok()?;
        Some((send, recv, open))
    })
    .await;
    let Ok(Some((send, recv, open))) = opened else {
        connection.close(close::UNAUTHORIZED.into(), b"expected a ClientOpen frame on the first stream");
        return;
    };
    let opening = Opening { token: open.token, format: Format::MsgPack, resume: open.resume, transport: "quic" };
    let (tx, inbound) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(read(recv, tx, edge.frame_budget.clone())).abort_handle();
    let transport = QuicTransport { send, connection, pending: Vec::new(), inbound, share: None, reader };
    session::run(edge, opening, transport).await;
}

async fn read(mut recv: quinn::RecvStream, tx: mpsc::Sender<Read>, budget: Arc<FrameBudget>) {
    loop {
        let (inbound, share) = read_one(&mut recv, &budget).await;
        let last = !matches!(inbound, Inbound::Frame(_));
        if tx.send((inbound, share)).await.is_err() || last {
            return;
        }
    }
}

/// The next frame. One larger than a connection holds for free is read only once the budget
/// has room for all of it, and must then arrive in time.
async fn read_one(recv: &mut quinn::RecvStream, budget: &Arc<FrameBudget>) -> Read {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    if recv.read_exact(&mut prefix).await.is_err() {
        // The stream ended (between frames or not) or broke.
        return (Inbound::Closed, None);
    }
    let Ok(len) = frame_len(prefix, MAX_CLIENT_FRAME_BYTES) else { return (Inbound::TooLarge, None) };
    let share = if len > FREE_FRAME_BYTES {
        match budget.cover(len).await {
            Ok(share) => Some(share),
            Err(refused) => return (Inbound::Refused(refused), None),
        }
    } else {
        None
    };
    let mut body = vec![0u8; len];
    let read = match &share {
        Some(share) => match tokio::time::timeout_at(share.deadline(), recv.read_exact(&mut body)).await {
            Ok(read) => read,
            Err(_) => return (Inbound::Refused(budget.refuse(FrameRefusal::TooSlow)), None),
        },
        None => recv.read_exact(&mut body).await,
    };
    match read {
        Ok(()) => (Inbound::Frame(body), share),
        Err(_) => (Inbound::Closed, None),
    }
}

/// A client's QUIC connection: its stream is read by a task of its own, which ends with it.
struct QuicTransport {
    send: quinn::SendStream,
    connection: quinn::Connection,
    /// Length prefixes and bodies fed but not yet written.
    pending: Vec<Bytes>,
    inbound: mpsc::Receiver<Read>,
    /// What the frame last received holds of the frame budget.
    share: Option<Box<FrameShare>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl QuicTransport {
    fn push(&mut self, wire: Wire) {
        let body = match wire {
            Wire::Binary(b) => b,
            Wire::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
        };
        self.pending.push(Bytes::copy_from_slice(&(body.len() as u32).to_be_bytes()));
        self.pending.push(body);
    }
}

impl Transport for QuicTransport {
    async fn recv(&mut self) -> Inbound {
        // The session is done with the frame it was given last.
        self.share = None;
        let (inbound, share) = self.inbound.recv().await.unwrap_or((Inbound::Closed, None));
        self.share = share;
        inbound
    }

    async fn write(&mut self, wire: Wire) -> std::io::Result<()> {
        self.push(wire);
        self.flush().await
    }

    async fn feed(&mut self, wire: Wire) -> std::io::Result<()> {
        self.push(wire);
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let result = self.send.write_all_chunks(&mut self.pending).await.map_err(std::io::Error::other);
        self.pending.clear();
        result
    }

    async fn ping(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn pings(&self) -> bool {
        false
    }

    async fn close(mut self, code: u16, reason: &str) {
        let _ = self.send.finish();
        // Give the peer a moment to read what was written before the connection goes.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.send.stopped()).await;
        self.connection.close(u32::from(code).into(), reason.as_bytes());
    }
}
