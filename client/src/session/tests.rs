//! The client against tiny in-test edges (a tokio-tungstenite server and a quinn server on
//! port 0) that script the protocol: `send` texts steer what the edge does.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::VarInt;
use selvage_net::quic::{read_frame, FrameReadError};
use selvage_net::tls::{self, Identity};
use selvage_shared::link::{encode_frame, CLIENT_ALPN};
use selvage_shared::{
    decode_client, encode_server, from_msgpack, ChannelId, ClientFrame, ClientOpen, Cursor, DecodeError, ErrorCode,
    Event, EventFrame, Format, Hello, Message as ChatMessage, Query, QueryResult, ServerFrame, User, UserId,
    MAX_CLIENT_FRAME_BYTES, PROTOCOL_VERSION,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::error::*;
use crate::options::*;
use crate::transport::*;

const TOKEN: &str = "tok-1";
const WAIT: Duration = Duration::from_secs(5);
const TEST_DEADLINE: Duration = Duration::from_secs(30);
/// Heartbeat the fake edges announce unless a test asks otherwise: long enough to stay out
/// of the way.
const QUIET_HEARTBEAT_MS: u64 = 60_000;

async fn within<T>(test: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, test).await.expect("test deadline passed")
}

fn cursor(n: u64) -> Cursor {
    let mut position = [0u8; 12];
    position[2..10].copy_from_slice(&n.to_be_bytes());
    Cursor::from_position(&position)
}

fn chan() -> ChannelId {
    ChannelId::new_unchecked("C1")
}

fn user(id: &str) -> UserId {
    UserId::new_unchecked(id)
}

fn hello(resume: Option<Cursor>, heartbeat_ms: u64, session: &str) -> ServerFrame {
    ServerFrame::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        session_id: session.to_owned(),
        resumed: resume.is_some(),
        cursor: resume.unwrap_or_else(|| cursor(0)),
        self_user: User {
            id: user("U1"),
            handle: "ada".into(),
            name: "Ada".into(),
            admin: false,
            deactivated: false,
            tokens_valid_from: 0,
            bot: None,
            created_at: 1,
        },
        channels: Vec::new(),
        users: Vec::new(),
        heartbeat_ms,
    })
}

/// The server side of one client connection.
enum ServerConn {
    Ws { ws: Box<WebSocketStream<TcpStream>>, format: Format },
    Quic { conn: quinn::Connection, send: quinn::SendStream, recv: quinn::RecvStream },
}

impl ServerConn {
    async fn send(&mut self, frame: &ServerFrame) {
        match self {
            ServerConn::Ws { ws, format } => {
                let bytes = encode_server(frame, *format);
                let message = match format {
                    Format::Json => Message::Text(String::from_utf8(bytes).unwrap().into()),
                    Format::MsgPack => Message::Binary(bytes.into()),
                };
                let _ = ws.send(message).await;
            }
            ServerConn::Quic { send, .. } => {
                let _ = send.write_all(&encode_frame(frame).unwrap()).await;
            }
        }
    }

    /// The next client frame; `None` once the client is gone.
    async fn recv(&mut self) -> Option<Result<ClientFrame, DecodeError>> {
        match self {
            ServerConn::Ws { ws, .. } => loop {
                match ws.next().await? {
                    Ok(Message::Text(text)) => return Some(decode_client(text.as_bytes(), Format::Json)),
                    Ok(Message::Binary(bytes)) => return Some(decode_client(&bytes, Format::MsgPack)),
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            },
            ServerConn::Quic { recv, .. } => match read_frame(recv, MAX_CLIENT_FRAME_BYTES).await {
                Ok(body) => Some(decode_client(&body?, Format::MsgPack)),
                Err(FrameReadError::TooLarge(e)) => Some(Err(e)),
                Err(_) => None,
            },
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        match self {
            ServerConn::Ws { ws, .. } => {
                let _ = (**ws).close(Some(CloseFrame { code: code.into(), reason: reason.into() })).await;
                // Wait for the client's side of the close handshake.
                let _ = timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
            }
            ServerConn::Quic { conn, .. } => conn.close(VarInt::from_u32(code.into()), reason.as_bytes()),
        }
    }

    /// The client closed: complete the WebSocket close handshake.
    async fn finish(&mut self) {
        if let ServerConn::Ws { ws, .. } = self {
            let _ = (**ws).close(None).await;
        }
    }
}

/// The scripted edge behind every fake listener. `send` texts: `close` closes the connection
/// (4000, "test over"); `refuse` is answered with `not_member`; `ignore` is not answered;
/// `c:{i}:{n}` is held until n of them arrived, then all are acked in reverse order with seq
/// 1000 + i; anything else is acked with the next seq and pushed back as a `message` event.
/// `ping` → `pong`; `query` → members U1, U2; `typing` → `goodbye`; `mark_read` → an error
/// without reply_to; `presence_sub` → `resync`; undecodable input → `error` from the decoder.
async fn session(mut conn: ServerConn, hello: ServerFrame, seen: mpsc::Sender<String>) {
    conn.send(&hello).await;
    let mut seq = 0;
    let mut held: Vec<(String, ChannelId, u64)> = Vec::new();
    while let Some(frame) = conn.recv().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                conn.send(&ServerFrame::error(None, e.code(), e.to_string())).await;
                continue;
            }
        };
        match frame {
            ClientFrame::Send { id, channel, text, client_msg_id, .. } => match text.as_str() {
                "close" => return conn.close(4000, "test over").await,
                "refuse" => conn.send(&ServerFrame::error(Some(id), ErrorCode::NotMember, "join first")).await,
                "ignore" => {}
                batch if batch.starts_with("c:") => {
                    let mut parts = batch[2..].split(':').map(|n| n.parse::<usize>().unwrap());
                    let (i, n) = (parts.next().unwrap(), parts.next().unwrap());
                    held.push((id, channel, 1000 + i as u64));
                    if held.len() == n {
                        for (reply_to, channel, seq) in held.drain(..).rev() {
                            conn.send(&ServerFrame::Ack { reply_to, channel, seq, ts: 7, cursor: None }).await;
                        }
                    }
                }
                _ => {
                    seq += 1;
                    let ts = 1_000 + seq as i64;
                    let ack =
                        ServerFrame::Ack { reply_to: id, channel: channel.clone(), seq, ts, cursor: Some(cursor(seq)) };
                    conn.send(&ack).await;
                    let message = ChatMessage { client_msg_id, ..ChatMessage::new(channel, seq, ts, user("U1"), text) };
                    conn.send(&ServerFrame::event(cursor(seq), Event::Message(message))).await;
                }
            },
            ClientFrame::Ping { id } => {
                if id.starts_with("hb-") {
                    let _ = seen.try_send("heartbeat".to_owned());
                }
                conn.send(&ServerFrame::Pong { reply_to: id }).await;
            }
            ClientFrame::Query(q) => {
                let result =
                    QueryResult { reply_to: q.id, members: vec![user("U1"), user("U2")], ..Default::default() };
                conn.send(&ServerFrame::Result(result)).await;
            }
            ClientFrame::Typing { .. } => conn.send(&ServerFrame::Goodbye { reconnect_in_ms: 5 }).await,
            ClientFrame::MarkRead { .. } => {
                conn.send(&ServerFrame::error(None, ErrorCode::RateLimited, "slow down")).await
            }
            ClientFrame::PresenceSub { .. } => {
                conn.send(&ServerFrame::Resync { reason: "cursor too old".into() }).await
            }
            ClientFrame::SetPresence { .. } => {}
            ClientFrame::SetNotifyPrefs { id, prefs } => {
                let result = QueryResult { reply_to: id, notify_prefs: Some(prefs), ..Default::default() };
                conn.send(&ServerFrame::Result(result)).await;
            }
        }
    }
    conn.finish().await;
    let _ = seen.try_send("session over".to_owned());
}

/// A fake edge listening on 127.0.0.1:0; `seen` reports what it observed.
struct FakeEdge {
    addr: String,
    /// The QUIC certificate's fingerprint (empty for WebSocket).
    fingerprint: String,
    seen: mpsc::Receiver<String>,
    task: JoinHandle<()>,
}

impl Drop for FakeEdge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeEdge {
    /// Waits for a report starting with `prefix`, skipping others.
    async fn saw(&mut self, prefix: &str) -> String {
        self.saw_each(&[prefix]).await.remove(0)
    }

    /// Waits for one report starting with each prefix, in any order (reports of different
    /// connections race), skipping others; returns them in the order of `prefixes`.
    async fn saw_each(&mut self, prefixes: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
        while found.iter().any(Option::is_none) {
            match timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(report)) => {
                    let slot = prefixes.iter().zip(&found).position(|(p, f)| f.is_none() && report.starts_with(p));
                    if let Some(i) = slot {
                        found[i] = Some(report);
                    }
                }
                other => panic!("the edge never reported all of {prefixes:?} (got {found:?}): {other:?}"),
            }
        }
        found.into_iter().flatten().collect()
    }

    fn transport(&self, kind: &str) -> Transport {
        match kind {
            "json" => Transport::WsJson,
            "msgpack" => Transport::WsMsgpack,
            _ => Transport::quic_pinned(self.fingerprint.clone()),
        }
    }

    fn options(&self, kind: &str) -> ConnectOptions {
        ConnectOptions::new(self.transport(kind), self.addr.clone(), TOKEN)
    }
}

fn refuse(status: u16, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body.to_owned()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

async fn ws_edge(heartbeat_ms: u64) -> FakeEdge {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (seen_tx, seen) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let mut accepted = None;
                // The callback's type is tungstenite's.
                #[allow(clippy::result_large_err)]
                let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
                    if request.uri().path() != "/v1/connect" {
                        return Err(refuse(404, "no such path"));
                    }
                    let (mut format, mut resume, mut token) = (Format::Json, None, None);
                    for pair in request.uri().query().unwrap_or_default().split('&') {
                        match pair.split_once('=') {
                            Some(("format", f)) => format = Format::parse(f).unwrap(),
                            Some(("resume", c)) => resume = Some(Cursor::parse(c).unwrap()),
                            Some(("token", t)) => token = Some(t.to_owned()),
                            _ => {}
                        }
                    }
                    let header = request.headers().get("authorization").and_then(|v| v.to_str().ok());
                    let via = match (header, token.as_deref()) {
                        (Some(header), None) if header == format!("Bearer {TOKEN}") => "header",
                        (None, Some(TOKEN)) => "query",
                        _ => return Err(refuse(401, r#"{"error":{"code":"unauthorized","message":"bad token"}}"#)),
                    };
                    accepted = Some((format, resume, via));
                    Ok(response)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else { return };
                let Some((format, resume, via)) = accepted else { return };
                let resumed = resume.as_ref().map(Cursor::to_string).unwrap_or_default();
                let _ = seen.try_send(format!("connected format={format} via={via} resume={resumed}"));
                session(ServerConn::Ws { ws: Box::new(ws), format }, hello(resume, heartbeat_ms, "S-ws"), seen).await;
            });
        }
    });
    FakeEdge { addr, fingerprint: String::new(), seen, task }
}

async fn quic_edge(heartbeat_ms: u64) -> FakeEdge {
    let identity = Identity::self_signed(&["localhost".into()]).unwrap();
    let fingerprint = identity.fingerprint();
    let tls = tls::server_config(identity, &[CLIENT_ALPN]).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    let (seen_tx, seen) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
                let body = read_frame(&mut recv, MAX_CLIENT_FRAME_BYTES).await.unwrap().unwrap();
                let open: ClientOpen = from_msgpack(&body).unwrap();
                if open.token != TOKEN {
                    let refusal = ServerFrame::error(None, ErrorCode::Unauthorized, "bad token");
                    let _ = send.write_all(&encode_frame(&refusal).unwrap()).await;
                    let _ = send.finish();
                    let _ = timeout(WAIT, send.stopped()).await;
                    conn.close(VarInt::from_u32(4001), b"unauthorized");
                    return;
                }
                let resumed = open.resume.as_ref().map(Cursor::to_string).unwrap_or_default();
                let _ = seen.try_send(format!("connected format=msgpack via=open resume={resumed}"));
                let hello = hello(open.resume, heartbeat_ms, "S-quic");
                session(ServerConn::Quic { conn, send, recv }, hello, seen).await;
            });
        }
    });
    FakeEdge { addr, fingerprint, seen, task }
}

async fn edge(kind: &str, heartbeat_ms: u64) -> FakeEdge {
    match kind {
        "quic" => quic_edge(heartbeat_ms).await,
        _ => ws_edge(heartbeat_ms).await,
    }
}

async fn next(client: &mut Client) -> Inbound {
    client.next_event(WAIT).await.unwrap().expect("an event before the deadline")
}

/// The whole protocol over one transport: hello, acks, events and cursors, ping, query,
/// concurrent sends, refusals, unsolicited frames, bad input, and a close by the edge.
async fn speaks_the_protocol(kind: &str) {
    let mut edge = edge(kind, QUIET_HEARTBEAT_MS).await;
    let mut client = Client::connect(edge.options(kind)).await.unwrap();
    let connected = edge.saw("connected").await;
    let expected_via = if kind == "quic" { "open" } else { "header" };
    assert!(connected.contains(&format!("via={expected_via} resume=")), "{connected}");
    assert!(connected.contains(if kind == "json" { "format=json" } else { "format=msgpack" }), "{connected}");

    let hello = client.hello();
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert_eq!(hello.session_id, if kind == "quic" { "S-quic" } else { "S-ws" });
    assert_eq!((hello.self_user.id.as_str(), hello.self_user.handle.as_str()), ("U1", "ada"));
    assert_eq!((hello.heartbeat_ms, hello.resumed), (QUIET_HEARTBEAT_MS, false));
    assert_eq!(client.last_cursor(), Some(cursor(0)), "before any event: the boot cursor");

    let ack = client.send(&chan(), "hello", "m1", None).await.unwrap();
    assert_eq!(ack, Ack { channel: chan(), seq: 1, ts: 1_001, cursor: Some(cursor(1)) });
    assert_eq!(client.send(&chan(), "again", "m2", None).await.unwrap().seq, 2);
    for (seq, text) in [(1, "hello"), (2, "again")] {
        match next(&mut client).await {
            Inbound::Event(EventFrame { event: Event::Message(m), cursor: c }) => {
                assert_eq!((m.seq, m.text.as_str(), m.client_msg_id.as_str()), (seq, text, &*format!("m{seq}")));
                assert_eq!(c, cursor(seq));
                assert_eq!(client.last_cursor(), Some(cursor(seq)));
            }
            other => panic!("expected message {seq}, got {other:?}"),
        }
    }
    assert_eq!(client.connect_options_with_resume().resume, Some(cursor(2)));

    client.ping().await.unwrap();
    let members = client
        .query(Query { channel: Some(chan()), ..Query::new("", selvage_shared::QueryKind::Members) })
        .await
        .unwrap();
    assert_eq!(members.members, [user("U1"), user("U2")]);

    // Acks come back in reverse order; each call still gets its own.
    let n = 16;
    let texts: Vec<String> = (0..n).map(|i| format!("c:{i}:{n}")).collect();
    let msg_ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let channel = chan();
    let acks = join_all((0..n).map(|i| client.send(&channel, &texts[i], &msg_ids[i], None))).await;
    for (i, ack) in acks.into_iter().enumerate() {
        assert_eq!(ack.unwrap().seq, 1000 + i as u64, "send {i}");
    }

    match client.send(&chan(), "refuse", "m3", None).await {
        Err(ClientError::Refused { code: ErrorCode::NotMember, message }) => assert_eq!(message, "join first"),
        other => panic!("expected not_member, got {other:?}"),
    }

    client.send_frame(&ClientFrame::MarkRead { channel: chan(), seq: 2 }).await.unwrap();
    assert_eq!(next(&mut client).await, Inbound::Error { code: ErrorCode::RateLimited, message: "slow down".into() });
    client.send_frame(&ClientFrame::Typing { channel: chan() }).await.unwrap();
    assert_eq!(next(&mut client).await, Inbound::Goodbye { reconnect_in_ms: 5 });

    let garbage = if kind == "json" { b"{not json".to_vec() } else { vec![0xc1] };
    client.send_raw(garbage, kind != "json").await.unwrap();
    match next(&mut client).await {
        Inbound::Error { code: ErrorCode::BadFrame, .. } => {}
        other => panic!("expected bad_frame, got {other:?}"),
    }
    client.ping().await.expect("the connection survives bad input");

    client.send_frame(&ClientFrame::PresenceSub { users: Vec::new() }).await.unwrap();
    assert_eq!(next(&mut client).await, Inbound::Resync { reason: "cursor too old".into() });
    assert_eq!(client.last_cursor(), None, "nothing to resume from after a resync");
    assert_eq!(client.connect_options_with_resume().resume, None);

    // The edge closes instead of acking: the waiting send and the event stream both learn why.
    match client.send(&chan(), "close", "m4", None).await {
        Err(ClientError::Closed { code: Some(4000), reason }) => assert_eq!(reason, "test over"),
        other => panic!("expected the close, got {other:?}"),
    }
    assert_eq!(next(&mut client).await, Inbound::Closed { code: Some(4000), reason: "test over".into() });
    assert!(matches!(client.next_event(WAIT).await, Err(ClientError::Closed { code: Some(4000), .. })));
    assert!(matches!(client.ping().await, Err(ClientError::Closed { .. })));
    assert!(client.is_closed());
    client.close().await;
}

#[tokio::test]
async fn ws_json_client_speaks_the_protocol() {
    within(speaks_the_protocol("json")).await;
}

#[tokio::test]
async fn ws_msgpack_client_speaks_the_protocol() {
    within(speaks_the_protocol("msgpack")).await;
}

#[tokio::test]
async fn quic_client_speaks_the_protocol() {
    within(speaks_the_protocol("quic")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_from_many_tasks_get_their_own_replies() {
    within(async {
        for kind in ["msgpack", "quic"] {
            let edge = edge(kind, QUIET_HEARTBEAT_MS).await;
            let client = Client::connect(edge.options(kind)).await.unwrap();
            let n = 64;
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let handle = client.handle();
                    tokio::spawn(async move {
                        let ack = handle.send(&chan(), &format!("c:{i}:{n}"), &format!("c{i}"), None).await?;
                        handle.ping().await?;
                        Ok::<_, ClientError>(ack.seq)
                    })
                })
                .collect();
            for (i, task) in tasks.into_iter().enumerate() {
                assert_eq!(task.await.unwrap().unwrap(), 1000 + i as u64, "{kind}: task {i}");
            }
            client.close().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_wrong_token_is_refused() {
    within(async {
        for kind in ["json", "msgpack", "quic"] {
            let edge = edge(kind, QUIET_HEARTBEAT_MS).await;
            let opts = ConnectOptions { token: "wrong".into(), ..edge.options(kind) };
            match Client::connect(opts).await {
                Err(ClientError::Refused { code: ErrorCode::Unauthorized, message }) => {
                    assert_eq!(message, "bad token", "{kind}")
                }
                Err(other) => panic!("{kind}: expected unauthorized, got {other}"),
                Ok(_) => panic!("{kind}: connected with a wrong token"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_wrong_pinned_fingerprint_fails_to_connect() {
    within(async {
        let edge = quic_edge(QUIET_HEARTBEAT_MS).await;
        let other = Identity::self_signed(&["localhost".into()]).unwrap().fingerprint();
        let opts = ConnectOptions::new(Transport::quic_pinned(other), edge.addr.clone(), TOKEN);
        match Client::connect(opts).await {
            Err(ClientError::Connect(message)) => {
                assert!(message.contains("handshake") && message.contains("pinned"), "{message}")
            }
            Err(other) => panic!("expected a connect error, got {other}"),
            Ok(_) => panic!("connected to a certificate that is not the pinned one"),
        }
    })
    .await;
}

#[tokio::test]
async fn reconnect_after_goodbye_resumes_from_the_last_event() {
    within(async {
        for kind in ["json", "quic"] {
            let mut edge = edge(kind, QUIET_HEARTBEAT_MS).await;
            let mut client = Client::connect(edge.options(kind)).await.unwrap();
            edge.saw("connected").await;
            client.send(&chan(), "one", "m1", None).await.unwrap();
            assert!(matches!(next(&mut client).await, Inbound::Event(_)));
            client.send_frame(&ClientFrame::Typing { channel: chan() }).await.unwrap();
            let Inbound::Goodbye { reconnect_in_ms } = next(&mut client).await else { panic!("expected goodbye") };

            let client = client.reconnect(Duration::from_millis(reconnect_in_ms)).await.unwrap();
            let reports = edge.saw_each(&["session over", "connected"]).await;
            let connected = &reports[1];
            assert!(connected.ends_with(&format!("resume={}", cursor(1))), "{kind}: {connected}");
            assert!(client.hello().resumed, "{kind}");
            assert_eq!(client.last_cursor(), Some(cursor(1)), "{kind}");
            client.close().await;
            edge.saw("session over").await;
        }
    })
    .await;
}

#[tokio::test]
async fn token_in_query_reaches_the_edge() {
    within(async {
        let mut edge = ws_edge(QUIET_HEARTBEAT_MS).await;
        let settings = ClientSettings { token_in_query: true, ..ClientSettings::default() };
        let opts = ConnectOptions { resume: Some(cursor(9)), ..edge.options("json") };
        assert_eq!(
            ws_url(&opts, true),
            format!("ws://{}/v1/connect?format=json&resume={}&token=tok-1", edge.addr, cursor(9))
        );
        let client = Client::connect_with(opts, settings).await.unwrap();
        let connected = edge.saw("connected").await;
        assert_eq!(connected, format!("connected format=json via=query resume={}", cursor(9)));
        assert!(client.hello().resumed);
        assert_eq!(client.last_cursor(), Some(cursor(9)));
    })
    .await;
}

#[tokio::test]
async fn heartbeats_follow_hello() {
    within(async {
        for kind in ["msgpack", "quic"] {
            let mut edge = edge(kind, 40).await;
            let client = Client::connect(edge.options(kind)).await.unwrap();
            edge.saw("heartbeat").await;
            client.ping().await.expect("heartbeat pongs do not confuse real pings");
        }
    })
    .await;
}

#[tokio::test]
async fn a_request_without_reply_times_out_and_the_connection_lives_on() {
    within(async {
        let edge = ws_edge(QUIET_HEARTBEAT_MS).await;
        let settings = ClientSettings { request_timeout: Duration::from_millis(200), ..ClientSettings::default() };
        let client = Client::connect_with(edge.options("json"), settings).await.unwrap();
        assert!(matches!(client.send(&chan(), "ignore", "m1", None).await, Err(ClientError::Timeout("ack"))));
        assert!(client.handle.shared.lock().pending.is_empty(), "the timed-out request is forgotten");
        assert_eq!(client.send(&chan(), "next", "m2", None).await.unwrap().seq, 1);
    })
    .await;
}

#[tokio::test]
async fn an_edge_that_never_says_hello_times_out() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let _ = stopped.await;
        });
        let opts = ConnectOptions {
            timeout: Duration::from_millis(300),
            ..ConnectOptions::new(Transport::WsJson, addr, TOKEN)
        };
        assert!(matches!(Client::connect(opts).await, Err(ClientError::Timeout("hello"))));
        let _ = stop.send(());
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        match Client::connect(ConnectOptions::new(Transport::WsJson, addr, TOKEN)).await {
            Err(ClientError::Connect(message)) => assert!(message.contains("/v1/connect"), "{message}"),
            Err(other) => panic!("expected a connect error, got {other}"),
            Ok(_) => panic!("connected to nothing"),
        }
    })
    .await;
}

#[tokio::test]
async fn handles_fail_once_the_client_is_dropped() {
    within(async {
        let edge = quic_edge(QUIET_HEARTBEAT_MS).await;
        let client = Client::connect(edge.options("quic")).await.unwrap();
        let handle = client.handle();
        handle.ping().await.unwrap();
        drop(client);
        assert!(handle.is_closed());
        assert!(matches!(handle.ping().await, Err(ClientError::Closed { .. })));
    })
    .await;
}

#[test]
fn tokens_are_percent_encoded_and_kept_out_of_debug_output() {
    let opts = ConnectOptions::new(Transport::WsMsgpack, "edge:80", "a b/c+d");
    assert_eq!(ws_url(&opts, true), "ws://edge:80/v1/connect?format=msgpack&token=a%20b%2Fc%2Bd");
    assert_eq!(ws_url(&opts, false), "ws://edge:80/v1/connect?format=msgpack");
    assert!(!format!("{opts:?}").contains("a b/c+d"));
}

#[test]
fn upgrade_refusals_map_to_codes() {
    let body = br#"{"error":{"code":"rate_limited","message":"later"}}"#;
    assert!(matches!(
        http_refusal(StatusCode::TOO_MANY_REQUESTS, body),
        ClientError::Refused { code: ErrorCode::RateLimited, ref message } if message == "later"
    ));
    assert_eq!(http_refusal(StatusCode::UNAUTHORIZED, b"no").code(), Some(ErrorCode::Unauthorized));
    assert_eq!(http_refusal(StatusCode::BAD_REQUEST, b"format must be json").code(), Some(ErrorCode::BadRequest));
    assert!(matches!(http_refusal(StatusCode::NOT_FOUND, b""), ClientError::Connect(_)));
}
