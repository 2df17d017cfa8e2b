//! The WAN emulation proxy over real loopback sockets, as an edge or a client would use it:
//! delays are lower bounds on round trips, loss is drawn and counted, TCP arrives intact and
//! in order and passes closes on, and QUIC gets through a delayed, lossy path.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use selvage_loadtest::wan::{self, Protocol, WanConfig, WanProxy, WanStats};
use selvage_net::tls::{self, Identity, Trust};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};
use tokio_util::sync::CancellationToken;

/// A bug fails the test instead of hanging it.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// The one-way delay of the round-trip tests.
const D: Duration = Duration::from_millis(50);

async fn within<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, test).await.expect("test deadline passed")
}

/// Waits until `condition` holds; panics with `what` if it does not within the deadline.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A proxy that is shut down when the test ends, however it ends.
struct Running {
    proxy: Option<WanProxy>,
    shutdown: CancellationToken,
}

impl Running {
    async fn start(config: WanConfig) -> Running {
        let shutdown = CancellationToken::new();
        let proxy = wan::start(config, shutdown.clone()).await.expect("the proxy starts");
        Running { proxy: Some(proxy), shutdown }
    }

    fn proxy(&self) -> &WanProxy {
        self.proxy.as_ref().expect("running")
    }

    fn tcp(&self) -> SocketAddr {
        self.proxy().tcp_addr().expect("the proxy forwards TCP")
    }

    fn udp(&self) -> SocketAddr {
        self.proxy().udp_addr().expect("the proxy forwards UDP")
    }

    fn stats(&self) -> WanStats {
        self.proxy().stats()
    }

    /// Cancels the token and waits for every task of the proxy to stop.
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(proxy) = self.proxy.take() {
            tokio::time::timeout(Duration::from_secs(5), proxy.wait()).await.expect("the proxy stops when cancelled");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn to(addr: SocketAddr) -> WanConfig {
    WanConfig::new("127.0.0.1:0".parse().unwrap(), addr)
}

/// A TCP echo server: every connection gets its bytes back, and its half-close passed on.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP echo server, and how many datagrams it has echoed.
async fn udp_echo() -> (SocketAddr, Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let echoed = Arc::new(AtomicU64::new(0));
    let count = echoed.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if socket.send_to(&buf[..n], from).await.is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (addr, echoed)
}

/// Bytes that differ from one position to the next, so a lost, doubled or moved chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8).collect()
}

#[tokio::test]
async fn a_tcp_round_trip_takes_at_least_twice_the_delay() {
    within(async {
        let echo = tcp_echo().await;
        let proxy = Running::start(WanConfig { delay: D, ..to(echo) }).await;
        let mut conn = TcpStream::connect(proxy.tcp()).await.unwrap();
        conn.set_nodelay(true).unwrap();
        for i in 0..3u8 {
            let started = Instant::now();
            conn.write_all(&[i; 100]).await.unwrap();
            let mut back = [0u8; 100];
            conn.read_exact(&mut back).await.unwrap();
            let round_trip = started.elapsed();
            assert_eq!(back, [i; 100]);
            assert!(round_trip >= 2 * D, "round trip {i} took {round_trip:?}, less than 2 × {D:?}");
        }
        until("the counters to catch up", || proxy.stats().bytes_down == 300).await;
        let stats = proxy.stats();
        assert_eq!((stats.tcp_connections, stats.bytes_up, stats.bytes_down), (1, 300, 300), "{stats:?}");
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_tcp_transfer_arrives_intact_and_in_order_under_jitter_and_loss() {
    within(async {
        let echo = tcp_echo().await;
        let config =
            WanConfig { delay: Duration::from_millis(20), jitter: Duration::from_millis(15), loss: 0.05, ..to(echo) };
        let proxy = Running::start(config).await;
        let data = pattern(6 << 20);
        let conn = TcpStream::connect(proxy.tcp()).await.unwrap();
        let (mut read, mut write) = conn.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            write.write_all(&sent).await.unwrap();
            // The echo server closes its side only once this half-close reaches it.
            write.shutdown().await.unwrap();
        });
        let mut back = Vec::with_capacity(data.len());
        read.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "the echoed bytes differ from those sent");
        let stats = proxy.stats();
        assert_eq!((stats.bytes_up, stats.bytes_down), (data.len() as u64, data.len() as u64), "{stats:?}");
        // Hundreds of chunks each way at 5 %: retransmissions were modelled, and order held.
        assert!(stats.tcp_held > 0, "{stats:?}");
        proxy.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_half_close_and_then_a_close_pass_through_the_proxy() {
    within(async {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (mut stream, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            // Ends only when the client's half-close arrives.
            stream.read_to_end(&mut got).await.unwrap();
            stream.write_all(b"bye").await.unwrap();
            got
            // Dropping the stream closes it.
        });
        let proxy = Running::start(WanConfig { delay: Duration::from_millis(10), ..to(server_addr) }).await;
        let mut conn = TcpStream::connect(proxy.tcp()).await.unwrap();
        conn.write_all(b"hello").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut back = Vec::new();
        // Ends only when the server's close arrives.
        conn.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
        assert_eq!(server_task.await.unwrap(), b"hello");
        until("the proxied connection to be closed", || proxy.stats().tcp_open == 0).await;
        proxy.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_server_closing_first_closes_the_client() {
    within(async {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = server.accept().await.unwrap();
            stream.write_all(b"go away").await.unwrap();
        });
        let proxy = Running::start(WanConfig { delay: Duration::from_millis(10), ..to(server_addr) }).await;
        let mut conn = TcpStream::connect(proxy.tcp()).await.unwrap();
        let mut back = Vec::new();
        conn.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"go away");
        // The client answers the close with its own; then the proxy forgets the connection.
        drop(conn);
        until("the proxied connection to be closed", || proxy.stats().tcp_open == 0).await;
        proxy.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_upstream_closes_the_client() {
    within(async {
        let nothing = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let proxy = Running::start(to(nothing)).await;
        let mut conn = TcpStream::connect(proxy.tcp()).await.unwrap();
        let mut back = Vec::new();
        // A close or a reset: either way the client learns there is no one there.
        let read = conn.read_to_end(&mut back).await;
        assert!(read.is_err() || back.is_empty(), "{read:?} {back:?}");
        until("the failed connection to be forgotten", || proxy.stats().tcp_open == 0).await;
        assert_eq!(proxy.stats().tcp_connections, 1);
        proxy.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tcp_and_udp_share_one_port_and_each_can_be_turned_off() {
    within(async {
        let (echo, _) = udp_echo().await;
        let both = Running::start(to(echo)).await;
        assert_eq!(both.tcp().port(), both.udp().port());
        assert_ne!(both.tcp().port(), 0);
        let tcp_only = Running::start(WanConfig { protocol: Protocol::Tcp, ..to(echo) }).await;
        assert!(tcp_only.proxy().tcp_addr().is_some() && tcp_only.proxy().udp_addr().is_none());
        let udp_only = Running::start(WanConfig { protocol: Protocol::Udp, ..to(echo) }).await;
        assert!(udp_only.proxy().tcp_addr().is_none() && udp_only.proxy().udp_addr().is_some());
        let tcp_addr = both.tcp();
        both.stop().await;
        assert!(TcpStream::connect(tcp_addr).await.is_err(), "a stopped proxy still accepts connections");
        tcp_only.stop().await;
        udp_only.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let shutdown = CancellationToken::new();
    assert!(wan::start(WanConfig { loss: 1.5, ..to(addr) }, shutdown.clone()).await.is_err());
    assert!(wan::start(WanConfig { udp_idle: Duration::ZERO, ..to(addr) }, shutdown).await.is_err());
}

/// Size of the test datagrams: an 8-byte sequence number, then filler.
const DATAGRAM: usize = 64;
/// Where a client records a datagram that came back changed.
const MANGLED: u64 = u64::MAX;

/// A client of the UDP echo server behind the proxy: sends numbered datagrams and records
/// when each was sent, and how often and when first each came back.
struct UdpClient {
    socket: Arc<UdpSocket>,
    sent: Mutex<HashMap<u64, Instant>>,
    received: Arc<Mutex<HashMap<u64, Arrival>>>,
}

/// How a numbered datagram came back.
#[derive(Clone, Copy, Debug)]
struct Arrival {
    /// How many times.
    times: u32,
    /// When first.
    at: Instant,
    /// How many distinct datagrams had come back before it.
    rank: usize,
}

impl UdpClient {
    async fn connect(proxy: SocketAddr) -> UdpClient {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(proxy).await.unwrap();
        let socket = Arc::new(socket);
        let received: Arc<Mutex<HashMap<u64, Arrival>>> = Arc::default();
        let (reader, record) = (socket.clone(), received.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok(n) = reader.recv(&mut buf).await {
                let intact = n == DATAGRAM && buf[8..n].iter().all(|b| *b == 0xa5);
                let seq = if intact { u64::from_be_bytes(buf[..8].try_into().unwrap()) } else { MANGLED };
                let mut received = record.lock().unwrap();
                let rank = received.len();
                received.entry(seq).or_insert(Arrival { times: 0, at: Instant::now(), rank }).times += 1;
            }
        });
        UdpClient { socket, sent: Mutex::default(), received }
    }

    /// Sends datagrams `range`, paced so loopback socket buffers never overflow: a drop must
    /// be the proxy's.
    async fn send(&self, range: std::ops::Range<u64>) {
        for seq in range {
            let mut datagram = [0xa5u8; DATAGRAM];
            datagram[..8].copy_from_slice(&seq.to_be_bytes());
            self.sent.lock().unwrap().insert(seq, Instant::now());
            self.socket.send(&datagram).await.unwrap();
            if seq % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn received(&self) -> HashMap<u64, Arrival> {
        self.received.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn udp_without_loss_delivers_every_datagram_once() {
    within(async {
        const N: u64 = 1000;
        let (echo, echoed) = udp_echo().await;
        let config = WanConfig { delay: Duration::from_millis(5), jitter: Duration::from_millis(3), ..to(echo) };
        let proxy = Running::start(config).await;
        let client = UdpClient::connect(proxy.udp()).await;
        client.send(0..N).await;
        until("every datagram to come back", || client.count() >= N as usize).await;
        let received = client.received();
        assert_eq!(received.len() as u64, N);
        assert!((0..N).all(|seq| received.get(&seq).is_some_and(|a| a.times == 1)), "lost or doubled");
        until("the counters to catch up", || proxy.stats().datagrams_down == N).await;
        let stats = proxy.stats();
        assert_eq!(echoed.load(Ordering::Relaxed), N);
        assert_eq!((stats.datagrams_up, stats.datagrams_down), (N, N), "{stats:?}");
        assert_eq!((stats.dropped_up, stats.dropped_down, stats.overflowed), (0, 0, 0), "{stats:?}");
        let bytes = (DATAGRAM as u64) * N;
        assert_eq!((stats.bytes_up, stats.bytes_down), (bytes, bytes), "{stats:?}");
        assert_eq!((stats.udp_sessions, stats.udp_active), (1, 1), "{stats:?}");
        proxy.stop().await;
    })
    .await;
}

#[tokio::test]
async fn udp_with_total_loss_delivers_nothing_and_counts_every_drop() {
    within(async {
        const N: u64 = 200;
        let (echo, echoed) = udp_echo().await;
        let proxy = Running::start(WanConfig { loss: 1.0, ..to(echo) }).await;
        let client = UdpClient::connect(proxy.udp()).await;
        client.send(0..N).await;
        until("every datagram to be dropped", || proxy.stats().dropped_up == N).await;
        let stats = proxy.stats();
        assert_eq!((stats.datagrams_up, stats.bytes_up), (0, 0), "{stats:?}");
        // Every datagram is accounted for as dropped, so none can reach the server or come back.
        assert_eq!(echoed.load(Ordering::Relaxed), 0);
        let mut buf = [0u8; DATAGRAM];
        let reply = tokio::time::timeout(Duration::from_millis(200), client.socket.peek(&mut buf)).await;
        assert!(reply.is_err(), "a datagram came back through a 100 % loss proxy");
        assert_eq!(client.count(), 0);
        proxy.stop().await;
    })
    .await;
}

#[tokio::test]
async fn udp_with_partial_loss_drops_some_in_each_direction() {
    within(async {
        const N: u64 = 2000;
        let (echo, echoed) = udp_echo().await;
        let proxy = Running::start(WanConfig { loss: 0.3, delay: Duration::from_millis(2), ..to(echo) }).await;
        let client = UdpClient::connect(proxy.udp()).await;
        client.send(0..N).await;
        until("every datagram to be forwarded or dropped", || {
            let s = proxy.stats();
            s.datagrams_up + s.dropped_up == N
        })
        .await;
        let forwarded = proxy.stats().datagrams_up;
        until("the server to echo what reached it", || echoed.load(Ordering::Relaxed) == forwarded).await;
        until("every echo to be delivered or dropped", || {
            let s = proxy.stats();
            s.datagrams_down + s.dropped_down == forwarded
        })
        .await;
        let delivered = proxy.stats().datagrams_down;
        until("the client to receive what was delivered", || client.count() as u64 == delivered).await;

        let stats = proxy.stats();
        let back = client.count() as u64;
        assert!(0 < back && back < N, "{back} of {N} came back through a 30 % loss proxy");
        // Each direction draws its own losses at 30 %: ±15 points is far beyond chance.
        let up_loss = stats.dropped_up as f64 / N as f64;
        let down_loss = stats.dropped_down as f64 / forwarded as f64;
        assert!((0.15..0.45).contains(&up_loss), "upstream loss {up_loss} ({stats:?})");
        assert!((0.15..0.45).contains(&down_loss), "downstream loss {down_loss} ({stats:?})");
        assert_eq!(stats.overflowed, 0);
        proxy.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_udp_round_trip_takes_at_least_twice_the_delay_less_the_jitter() {
    within(async {
        const N: u64 = 20;
        let jitter = Duration::from_millis(10);
        let (echo, _) = udp_echo().await;
        let proxy = Running::start(WanConfig { delay: D, jitter, ..to(echo) }).await;
        let client = UdpClient::connect(proxy.udp()).await;
        client.send(0..N).await;
        until("every datagram to come back", || client.count() == N as usize).await;
        let floor = 2 * (D - jitter);
        let sent = client.sent.lock().unwrap().clone();
        for (seq, arrival) in client.received() {
            let round_trip = arrival.at - sent[&seq];
            assert!(round_trip >= floor, "datagram {seq} came back after {round_trip:?}, less than {floor:?}");
        }
        proxy.stop().await;
    })
    .await;
}

#[tokio::test]
async fn udp_jitter_reorders_datagrams() {
    within(async {
        const N: u64 = 200;
        let (echo, _) = udp_echo().await;
        let config = WanConfig { delay: Duration::from_millis(30), jitter: Duration::from_millis(20), ..to(echo) };
        let proxy = Running::start(config).await;
        let client = UdpClient::connect(proxy.udp()).await;
        client.send(0..N).await;
        until("every datagram to come back", || client.count() == N as usize).await;
        let mut by_arrival: Vec<(usize, u64)> = client.received().iter().map(|(seq, a)| (a.rank, *seq)).collect();
        by_arrival.sort_unstable();
        let overtaken = by_arrival.windows(2).filter(|w| w[1].1 < w[0].1).count();
        // 200 datagrams sent within about 10 ms, each delayed 10–50 ms each way independently:
        // staying in order would be a miracle.
        assert!(overtaken > 0, "{N} datagrams came back in order through ±20 ms of jitter");
        proxy.stop().await;
    })
    .await;
}

#[tokio::test]
async fn udp_sessions_are_per_client_and_expire_when_idle() {
    within(async {
        let (echo, _) = udp_echo().await;
        let proxy = Running::start(WanConfig { udp_idle: Duration::from_millis(200), ..to(echo) }).await;
        let first = UdpClient::connect(proxy.udp()).await;
        let second = UdpClient::connect(proxy.udp()).await;
        first.send(0..1).await;
        second.send(0..1).await;
        until("both replies", || first.count() == 1 && second.count() == 1).await;
        assert_eq!(proxy.stats().udp_sessions, 2);
        until("both sessions to expire", || proxy.stats().udp_active == 0).await;
        first.send(1..2).await;
        until("a reply through a new session", || first.count() == 2).await;
        let stats = proxy.stats();
        assert_eq!((stats.udp_sessions, stats.udp_active), (3, 1), "{stats:?}");
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_transfers_intact_through_a_delayed_lossy_path() {
    within(async {
        const ALPN: &[u8] = b"selvage-wan-test";
        let identity = Identity::self_signed(&["localhost".into()]).unwrap();
        let fingerprint = identity.fingerprint();
        let server_tls = tls::server_config(identity, &[ALPN]).unwrap();
        let server_crypto = QuicServerConfig::try_from(server_tls).unwrap();
        let server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let server_addr = server.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let conn = server.accept().await.expect("a connection").await.expect("a handshake");
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let data = recv.read_to_end(16 << 20).await.unwrap();
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
            // Keep the connection until the client has everything and closes it.
            conn.closed().await;
            data.len()
        });

        let config =
            WanConfig { delay: Duration::from_millis(20), loss: 0.01, protocol: Protocol::Udp, ..to(server_addr) };
        let proxy = Running::start(config).await;
        let client_tls = tls::client_config(&Trust::Pinned(fingerprint), &[ALPN]).unwrap();
        let client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls).unwrap()));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint.connect_with(client_config, proxy.udp(), "localhost").unwrap().await.unwrap();
        let data = pattern(1 << 20);
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let back = recv.read_to_end(16 << 20).await.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "the echoed bytes differ from those sent");
        conn.close(0u32.into(), b"done");
        assert_eq!(server_task.await.unwrap(), data.len());

        let stats = proxy.stats();
        // Over 2 000 datagrams at 1 %: some were lost, and QUIC made up for them.
        assert!(stats.dropped_up + stats.dropped_down > 0, "{stats:?}");
        assert_eq!(stats.udp_sessions, 1, "{stats:?}");
        endpoint.wait_idle().await;
        proxy.stop().await;
    })
    .await;
}
