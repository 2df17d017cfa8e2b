//! Length-prefixed frames on QUIC streams: the one reader the origin–edge link and client QUIC
//! sessions share.
//!
//! A frame is a 4-byte big-endian length and that many bytes ([`selvage_shared::link::encode_frame`]);
//! the length is checked against the caller's limit before anything is allocated.
//!
//! [`read_frame`] reads exactly one frame and nothing after it (for a stream's first frame,
//! and for client sessions, which hold no buffer between frames). Streams that carry many
//! small frames — the link's calls and replies — go through a [`FrameReader`], which takes
//! whatever the stream has at once and cuts frames out of it, and are written by
//! [`write_frames`], which hands a queue's worth of frames to the stream in one write.
//!
//! [`udp_socket`] binds the UDP socket of a QUIC endpoint with room for bursts.

use bytes::{Bytes, BytesMut};

use selvage_shared::{
    codec::DecodeError,
    link::{frame_len, FRAME_PREFIX_BYTES},
};

/// A UDP socket bound to `addr` for a QUIC endpoint, asking the kernel for `buffer` bytes of
/// receive and send buffer. Returns the socket and the receive buffer the kernel granted: Linux
/// caps the request at `net.core.rmem_max` (`wmem_max` for sending), and a smaller buffer than
/// asked for drops datagrams under bursts — a storm of QUIC handshakes, say — which the peers
/// then wait out as timeouts.
pub fn udp_socket(addr: std::net::SocketAddr, buffer: usize) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps both, and the granted size is reported.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    // Linux reports twice the usable size (it counts its own bookkeeping).
    let granted = socket.recv_buffer_size()? / 2;
    Ok((socket.into(), granted))
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The length prefix announced more than allowed; nothing was allocated.
    #[error("{0}")]
    TooLarge(DecodeError),
    /// The stream ended inside a frame (after `got` of `expected` bytes of the prefix or body).
    #[error("the stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes that arrived.
        got: usize,
        /// Bytes the prefix or body needed.
        expected: usize,
    },
    /// The stream or its connection failed.
    #[error("{0}")]
    Read(#[from] quinn::ReadError),
}

async fn fill(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), FrameReadError> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(got)) => Err(FrameReadError::Truncated { got, expected: buf.len() }),
        Err(quinn::ReadExactError::ReadError(e)) => Err(FrameReadError::Read(e)),
    }
}

/// Reads one frame's body of at most `max` bytes; `Ok(None)` when the stream ended cleanly
/// between frames.
pub async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    match fill(recv, &mut prefix).await {
        Ok(()) => {}
        Err(FrameReadError::Truncated { got: 0, .. }) => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(prefix, max).map_err(FrameReadError::TooLarge)?;
    let mut body = vec![0u8; len];
    fill(recv, &mut body).await?;
    Ok(Some(body))
}

/// The most a [`FrameReader`] takes from its stream in one read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads frames from a stream through a buffer: a read takes every byte the stream holds, so
/// a burst of small frames costs one read of the stream rather than two per frame.
///
/// Cancel safe: bytes taken from the stream stay in the reader until a frame is complete, so a
/// `read_frame` dropped mid-way (in a `select!`) loses nothing.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl FrameReader {
    /// Reads `recv` from where it stands (after any frame already read from it directly).
    pub fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader { recv, buf: BytesMut::new() }
    }

    /// The stream, e.g. to `stop` it.
    pub fn stream(&mut self) -> &mut quinn::RecvStream {
        &mut self.recv
    }

    /// The next frame's body of at most `max` bytes; `Ok(None)` when the stream ended cleanly
    /// between frames. A frame over `max` is refused from its prefix alone.
    pub async fn read_frame(&mut self, max: usize) -> Result<Option<Bytes>, FrameReadError> {
        loop {
            let mut wanted = FRAME_PREFIX_BYTES;
            if self.buf.len() >= FRAME_PREFIX_BYTES {
                let mut prefix = [0u8; FRAME_PREFIX_BYTES];
                prefix.copy_from_slice(&self.buf[..FRAME_PREFIX_BYTES]);
                wanted += frame_len(prefix, max).map_err(FrameReadError::TooLarge)?;
                if self.buf.len() >= wanted {
                    let mut frame = self.buf.split_to(wanted);
                    return Ok(Some(frame.split_off(FRAME_PREFIX_BYTES).freeze()));
                }
                self.buf.reserve(wanted - self.buf.len());
            }
            match self.recv.read_chunk(READ_CHUNK_BYTES, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(FrameReadError::Truncated { got: self.buf.len(), expected: wanted }),
            }
        }
    }
}

/// Frames handed to a stream in one write at most (and [`WRITE_BATCH_BYTES`]).
const WRITE_BATCH_FRAMES: usize = 256;

/// Bytes of frames handed to a stream in one write at most, beyond the first frame.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Writes the encoded frames that arrive on `queue` to `send` until the queue closes, each
/// time taking every frame already waiting (up to a bound) and handing them to the stream in
/// one write, so that the stream packs them into as few packets as they fit. A write the peer
/// does not take within `timeout` fails. Returns why it stopped: `Ok` once the queue closed.
pub async fn write_frames(
    send: &mut quinn::SendStream,
    queue: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
    timeout: std::time::Duration,
) -> Result<(), WriteFramesError> {
    let mut batch: Vec<Bytes> = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut bytes = first.len();
        batch.push(Bytes::from(first));
        while batch.len() < WRITE_BATCH_FRAMES && bytes < WRITE_BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => {
                    bytes += frame.len();
                    batch.push(Bytes::from(frame));
                }
                Err(_) => break,
            }
        }
        match tokio::time::timeout(timeout, send.write_all_chunks(&mut batch)).await {
            Ok(Ok(())) => batch.clear(),
            Ok(Err(e)) => return Err(WriteFramesError::Write(e)),
            Err(_) => return Err(WriteFramesError::TimedOut(timeout)),
        }
    }
    Ok(())
}

/// Why [`write_frames`] stopped writing.
#[derive(Debug, thiserror::Error)]
pub enum WriteFramesError {
    /// The stream or its connection failed.
    #[error("{0}")]
    Write(#[from] quinn::WriteError),
    /// The peer took nothing for this long.
    #[error("the peer read nothing for {} s", .0.as_secs())]
    TimedOut(std::time::Duration),
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

    use super::*;
    use crate::tls::{self, Identity, Trust};

    #[test]
    fn a_udp_socket_gets_at_least_the_default_buffer_and_carries_datagrams() {
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = socket2::SockRef::from(&plain).recv_buffer_size().unwrap() / 2;
        let (socket, granted) = udp_socket("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        assert!(granted >= default.min(4 << 20), "asked 4 MiB, granted {granted}, default {default}");
        assert!(granted <= 4 << 20);
        plain.send_to(b"ping", socket.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], plain.local_addr().unwrap()));
    }

    const ALPN: &[u8] = b"selvage-test/1";

    /// Endpoints and connections kept open for as long as a test uses their stream.
    type Held = (quinn::Endpoint, quinn::Endpoint, quinn::Connection, quinn::Connection);

    /// A real QUIC connection on loopback: the client's bidirectional stream and the server's
    /// end of it.
    async fn stream_pair() -> (Held, quinn::SendStream, quinn::RecvStream) {
        let identity = Identity::self_signed(&["localhost".into()]).unwrap();
        let fingerprint = identity.fingerprint();
        let server_tls = tls::server_config(identity, &[ALPN]).unwrap();
        let server_config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls).unwrap()));
        let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let client_tls = tls::client_config(&Trust::Pinned(fingerprint), &[ALPN]).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client_tls).unwrap(),
        )));
        let addr = server.local_addr().unwrap();
        let (conn, accepted) =
            tokio::join!(async { client.connect(addr, "localhost").unwrap().await.unwrap() }, async {
                server.accept().await.unwrap().await.unwrap()
            });
        let (mut send, _) = conn.open_bi().await.unwrap();
        // A stream is announced to the peer with its first bytes.
        send.write_all(&selvage_shared::link::encode_frame(&"open").unwrap()).await.unwrap();
        let (_, mut recv) = accepted.accept_bi().await.unwrap();
        let open = read_frame(&mut recv, 64).await.unwrap().unwrap();
        assert_eq!(selvage_shared::from_msgpack::<String>(&open).unwrap(), "open");
        ((client, server, conn, accepted), send, recv)
    }

    fn frame(i: usize) -> Vec<u8> {
        // Sizes from empty to past one packet and past the reader's chunk, each byte telling
        // which frame it belongs to.
        let len = (i * 37) % 3000 + if i.is_multiple_of(101) { 70_000 } else { 0 };
        let mut buf = (len as u32).to_be_bytes().to_vec();
        buf.extend((0..len).map(|k| (i + k) as u8));
        buf
    }

    #[tokio::test]
    async fn batched_writes_and_buffered_reads_carry_every_frame_whole_and_in_order() {
        let (_held, mut send, recv) = stream_pair().await;
        let (frames, mut queue) = tokio::sync::mpsc::channel(4096);
        let writer = tokio::spawn(async move {
            let result = write_frames(&mut send, &mut queue, Duration::from_secs(10)).await;
            send.finish().unwrap();
            result
        });
        const N: usize = 3000;
        let producer = tokio::spawn(async move {
            for i in 0..N {
                frames.send(frame(i)).await.unwrap();
                if i % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut reader = FrameReader::new(recv);
        for i in 0..N {
            let body = reader.read_frame(128 * 1024).await.unwrap().expect("a frame before the end");
            assert_eq!(&body[..], &frame(i)[FRAME_PREFIX_BYTES..], "frame {i}");
        }
        assert!(reader.read_frame(128 * 1024).await.unwrap().is_none(), "the stream ends between frames");
        producer.await.unwrap();
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_reader_refuses_oversized_frames_from_the_prefix_and_reports_truncation() {
        let (_held, mut send, recv) = stream_pair().await;
        send.write_all(&frame(3)).await.unwrap();
        send.write_all(&(1_000_000u32).to_be_bytes()).await.unwrap();
        let mut reader = FrameReader::new(recv);
        assert_eq!(&reader.read_frame(1024).await.unwrap().unwrap()[..], &frame(3)[FRAME_PREFIX_BYTES..]);
        assert!(matches!(reader.read_frame(1024).await, Err(FrameReadError::TooLarge(_))));

        let (_held, mut send, recv) = stream_pair().await;
        let whole = frame(5);
        send.write_all(&whole[..whole.len() - 3]).await.unwrap();
        send.finish().unwrap();
        let mut reader = FrameReader::new(recv);
        match reader.read_frame(1024).await {
            Err(FrameReadError::Truncated { got, expected }) => {
                assert_eq!((got, expected), (whole.len() - 3, whole.len()));
            }
            other => panic!("expected a truncated frame, got {other:?}"),
        }
    }
}
