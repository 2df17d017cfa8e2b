//! The origin's end of the edge link, driven by a raw QUIC client as a misbehaving (or
//! well-behaved) edge would: real origin on port 0, real embedded store in a temporary
//! directory, real sockets. Whatever a stream sends, the origin answers or closes that stream
//! and keeps serving the others.

use std::{sync::Arc, time::Duration};

use selvage_net::tls::{self, Trust};
use selvage_origin::{OriginConfig, Running};
use selvage_shared::{
    link::{
        encode_frame, frame_len, Answer, Call, LinkCall, LinkOpen, LinkReply, LinkStream, FRAME_PREFIX_BYTES, LINK_ALPN,
    },
    ChannelId, Cursor, ErrorCode, Event, FeedFrame, UserId, WorkspaceId, PROTOCOL_VERSION,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

const EDGE_KEY: &str = "link-test-edge-key-0123456789";
const WAIT: Duration = Duration::from_secs(10);

struct TestOrigin {
    running: Option<Running>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestOrigin {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = OriginConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ..OriginConfig::default()
        };
        config.link.listen = "127.0.0.1:0".parse().unwrap();
        config.link.edge_key = Some(EDGE_KEY.into());
        let shutdown = CancellationToken::new();
        let running = selvage_origin::start(config, shutdown.clone()).await.unwrap();
        TestOrigin { running: Some(running), shutdown, _dir: dir }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn metric(&self, line_start: &str) -> u64 {
        let text = self.running().origin.metrics.render();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .unwrap_or(0)
    }

    async fn connect(&self) -> quinn::Connection {
        let running = self.running();
        let trust = Trust::Pinned(running.link_fingerprint.clone().unwrap());
        let tls = tls::client_config(&trust, &[LINK_ALPN]).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        endpoint.connect_with(config, running.link_addr.unwrap(), "localhost").unwrap().await.unwrap()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
    }
}

fn open(stream: LinkStream) -> Vec<u8> {
    let open = LinkOpen { protocol: PROTOCOL_VERSION, edge_key: EDGE_KEY.into(), edge_id: "test".into(), stream };
    encode_frame(&open).unwrap()
}

fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

async fn read(recv: &mut quinn::RecvStream) -> Option<Vec<u8>> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    match tokio::time::timeout(WAIT, recv.read_exact(&mut prefix)).await.expect("the origin answers in time") {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return None,
        Err(e) => panic!("stream failed: {e}"),
    }
    let len = frame_len(prefix, 64 * 1024 * 1024).unwrap();
    let mut body = vec![0; len];
    recv.read_exact(&mut body).await.unwrap();
    Some(body)
}

async fn read_reply(recv: &mut quinn::RecvStream) -> LinkReply {
    selvage_shared::from_msgpack(&read(recv).await.expect("a reply")).unwrap()
}

async fn read_feed(recv: &mut quinn::RecvStream) -> FeedFrame {
    selvage_shared::decode_feed_frame(&read(recv).await.expect("a feed frame")).unwrap()
}

/// The stream ends after its error reply: the origin finished it (or reset it).
async fn ends(recv: &mut quinn::RecvStream) {
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(WAIT, recv.read(&mut buf)).await.expect("the stream ends in time");
    assert!(matches!(ended, Ok(None) | Err(_)), "the stream should end, got {ended:?}");
}

async fn call(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, id: u64, call: Call) -> LinkReply {
    send.write_all(&encode_frame(&LinkCall { id, call }).unwrap()).await.unwrap();
    let reply = read_reply(recv).await;
    assert_eq!(reply.id, id);
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_first_frames_are_refused_and_other_streams_keep_working() {
    let o = TestOrigin::start().await;
    let (workspace, admin) = o.running().origin.create_workspace("acme", "admin", "Admin").await.unwrap();
    let conn = o.connect().await;

    // Garbage where link_open belongs.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&raw_frame(b"\xc1\xc1 not msgpack")).await.unwrap();
    let reply = read_reply(&mut recv).await;
    assert_eq!(reply.id, 0);
    assert_eq!(reply.reply.unwrap_err().code, ErrorCode::BadFrame);
    ends(&mut recv).await;

    // A length prefix far over the limit: refused before anything is allocated.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let err = read_reply(&mut recv).await.reply.unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
    ends(&mut recv).await;

    // The wrong key.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let wrong = LinkOpen {
        protocol: PROTOCOL_VERSION,
        edge_key: "wrong".into(),
        edge_id: "x".into(),
        stream: LinkStream::Calls,
    };
    send.write_all(&encode_frame(&wrong).unwrap()).await.unwrap();
    let reply = read_reply(&mut recv).await;
    assert_eq!(reply.id, 0);
    let err = reply.reply.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized);
    assert!(err.message.contains("edge key"), "{}", err.message);
    ends(&mut recv).await;

    // The wrong protocol.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let old = LinkOpen { protocol: 99, edge_key: EDGE_KEY.into(), edge_id: "x".into(), stream: LinkStream::Calls };
    send.write_all(&encode_frame(&old).unwrap()).await.unwrap();
    let err = read_reply(&mut recv).await.reply.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized);
    assert!(err.message.contains("protocol"), "{}", err.message);
    assert!(o.metric("selvage_link_refused_total") >= 4);

    // A well-behaved calls stream on the same connection still works.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&open(LinkStream::Calls)).await.unwrap();
    let hash = hex::encode(selvage_origin::ids::token_hash(admin.token()));
    let reply = call(&mut send, &mut recv, 1, Call::Authenticate { token_hash: hash }).await;
    match reply.reply.unwrap() {
        Answer::Principal { workspace: w, user, .. } => {
            assert_eq!(w, workspace.id);
            assert_eq!(user, admin.user().id);
        }
        other => panic!("unexpected {other:?}"),
    }
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_errors_and_calls_are_counted() {
    let o = TestOrigin::start().await;
    let origin = o.running().origin.clone();
    let (workspace, admin) = origin.create_workspace("acme", "admin", "Admin").await.unwrap();
    let conn = o.connect().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&open(LinkStream::Calls)).await.unwrap();

    // A call the origin does not know: answered by id with bad_frame.
    #[derive(Serialize)]
    #[serde(tag = "call", rename_all = "snake_case")]
    enum Unknown {
        Fly { to: String },
    }
    #[derive(Serialize)]
    struct Strange {
        id: u64,
        call: Unknown,
    }
    let strange = Strange { id: 7, call: Unknown::Fly { to: "moon".into() } };
    send.write_all(&raw_frame(&selvage_shared::to_msgpack(&strange))).await.unwrap();
    let reply = read_reply(&mut recv).await;
    assert_eq!(reply.id, 7, "the error is matched to the call");
    assert_eq!(reply.reply.unwrap_err().code, ErrorCode::BadFrame);

    // Bad arguments are the caller's errors, by code.
    let err = call(&mut send, &mut recv, 8, Call::Authenticate { token_hash: "xyz".into() }).await.reply.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized);
    let err =
        call(&mut send, &mut recv, 9, Call::Authenticate { token_hash: "00".repeat(32) }).await.reply.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized);
    let err = call(&mut send, &mut recv, 10, Call::Snapshot { workspace: WorkspaceId::new_unchecked("Wnope") })
        .await
        .reply
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let history = Call::History {
        workspace: workspace.id.clone(),
        user: UserId::new_unchecked("Unobody"),
        channel: ChannelId::new_unchecked("Cnone"),
        before: None,
        after: None,
        limit: 10,
    };
    assert_eq!(call(&mut send, &mut recv, 11, history).await.reply.unwrap_err().code, ErrorCode::NotFound);
    let events = Call::Events { workspace: workspace.id.clone(), after: Cursor::zero(), limit: 0 };
    assert_eq!(call(&mut send, &mut recv, 12, events).await.reply.unwrap_err().code, ErrorCode::BadRequest);

    // Good calls.
    let snapshot = match call(&mut send, &mut recv, 13, Call::Snapshot { workspace: workspace.id.clone() }).await.reply
    {
        Ok(Answer::Snapshot(s)) => s,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(snapshot.users.len(), 1);
    let general = snapshot.channels[0].channel.id.clone();
    assert_eq!(snapshot.channels[0].members, vec![admin.user().id.clone()]);
    let send_call = Call::Send {
        workspace: workspace.id.clone(),
        user: admin.user().id.clone(),
        channel: general.clone(),
        text: "hi".into(),
        client_msg_id: "c1".into(),
        thread_root: None,
    };
    let sent_cursor = match call(&mut send, &mut recv, 14, send_call).await.reply {
        Ok(Answer::Sent { message, cursor, duplicate }) => {
            assert_eq!((message.seq, duplicate), (1, false));
            cursor.unwrap()
        }
        other => panic!("unexpected {other:?}"),
    };
    assert!(sent_cursor > snapshot.cursor, "a send after the snapshot sorts after its cursor");
    let events = Call::Events { workspace: workspace.id.clone(), after: snapshot.cursor.clone(), limit: 100 };
    match call(&mut send, &mut recv, 15, events).await.reply {
        Ok(Answer::Events { items, next, more, resync }) => {
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].cursor, sent_cursor);
            assert_eq!(next, sent_cursor);
            assert!(!more && !resync);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Another workspace's events are not included.
    let other_events =
        Call::Events { workspace: WorkspaceId::new_unchecked("Wother"), after: Cursor::zero(), limit: 100 };
    match call(&mut send, &mut recv, 16, other_events).await.reply {
        Ok(Answer::Events { items, .. }) => assert!(items.is_empty()),
        other => panic!("unexpected {other:?}"),
    }

    assert_eq!(o.metric("selvage_link_calls_total{call=\"authenticate\"}"), 2);
    assert_eq!(o.metric("selvage_link_calls_total{call=\"snapshot\"}"), 2);
    assert_eq!(o.metric("selvage_link_calls_total{call=\"send\"}"), 1);
    assert_eq!(o.metric("selvage_link_calls_total{call=\"events\"}"), 3);
    assert_eq!(o.metric("selvage_link_calls_total{call=\"invalid\"}"), 1);
    assert_eq!(o.metric("selvage_link_streams{kind=\"calls\"}"), 1);

    // A frame over the call limit ends the stream with too_large...
    send.write_all(&(2 * 1024 * 1024u32).to_be_bytes()).await.unwrap();
    let reply = read_reply(&mut recv).await;
    assert_eq!(reply.reply.unwrap_err().code, ErrorCode::TooLarge);
    ends(&mut recv).await;
    // ...and a fresh stream on the same connection is served.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&open(LinkStream::Calls)).await.unwrap();
    let reply = call(&mut send, &mut recv, 1, Call::Snapshot { workspace: workspace.id.clone() }).await;
    assert!(matches!(reply.reply, Ok(Answer::Snapshot(_))));
    o.stop().await;
}

/// A call that meets a server error is answered with its code and the fixed message, naming the
/// request id the detail was logged under (as a 5xx body over HTTP does), never the detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_names_a_request_id_and_nothing_internal() {
    let o = TestOrigin::start().await;
    let origin = o.running().origin.clone();
    let (workspace, admin) = origin.create_workspace("acme", "admin", "Admin").await.unwrap();
    let broken = origin.create_channel(&admin, "broken", false).await.unwrap().id;
    // A channel record that no longer decodes (corruption, or a bug that wrote it).
    let mut tx = origin.store.begin().await.unwrap();
    tx.set(&selvage_origin::store::keys::channel(&workspace.id, &broken), b"\xc1 not msgpack").unwrap();
    tx.commit().await.unwrap();

    let conn = o.connect().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&open(LinkStream::Calls)).await.unwrap();
    let mut ids = Vec::new();
    for n in 1..=2 {
        let history = Call::History {
            workspace: workspace.id.clone(),
            user: admin.user().id.clone(),
            channel: broken.clone(),
            before: None,
            after: None,
            limit: 10,
        };
        let error = call(&mut send, &mut recv, n, history).await.reply.unwrap_err();
        assert_eq!(error.code, ErrorCode::Internal, "{error:?}");
        let message = error.message.as_str();
        let id = message
            .strip_prefix("internal error; the origin logged it with this request_id (request_id ")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not the fixed message with a request id: {message:?}"));
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{message:?}");
        for detail in ["decode", "record", "msgpack", "storage", "engine"] {
            assert!(!message.to_lowercase().contains(detail), "{message:?} shows internal detail ({detail})");
        }
        ids.push(id.to_string());
    }
    assert_ne!(ids[0], ids[1], "two failures, two ids");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_streams_events_after_the_cursor_with_heartbeats() {
    let o = TestOrigin::start().await;
    let origin = o.running().origin.clone();
    let (_, admin) = origin.create_workspace("acme", "admin", "Admin").await.unwrap();
    let conn = o.connect().await;
    let general = origin.channels(&admin).await.unwrap()[0].id.clone();
    let send = |n: u32| {
        let (origin, admin, c) = (origin.clone(), admin.clone(), general.clone());
        async move { origin.send(&admin, &c, &format!("m{n}"), format!("m{n}")).await.unwrap() }
    };

    // From the head: the first frame comes at once, a heartbeat at the head.
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    tx.write_all(&open(LinkStream::Feed { cursor: None })).await.unwrap();
    let head = match read_feed(&mut rx).await {
        FeedFrame::Heartbeat { cursor } => cursor,
        other => panic!("unexpected {other:?}"),
    };
    let sent = send(1).await;
    let mut got = Vec::new();
    while got.is_empty() {
        match read_feed(&mut rx).await {
            FeedFrame::Events { items, cursor } => {
                assert_eq!(Some(&cursor), items.last().map(|i| &i.cursor));
                got.extend(items);
            }
            FeedFrame::Heartbeat { cursor } => assert_eq!(cursor, head, "nothing new yet"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(Some(&got[0].cursor), sent.cursor.as_ref());
    assert!(matches!(&got[0].event, Event::Message(m) if m.text == "m1"));
    // Quiet: heartbeats at the same cursor.
    match read_feed(&mut rx).await {
        FeedFrame::Heartbeat { cursor } => assert_eq!(Some(cursor), sent.cursor),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(o.metric("selvage_link_feed_events_total"), 1);

    // From an old cursor: everything after it, the workspace's creation included, in order.
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    tx.write_all(&open(LinkStream::Feed { cursor: Some(Cursor::zero()) })).await.unwrap();
    assert!(matches!(read_feed(&mut rx).await, FeedFrame::Heartbeat { cursor } if cursor == Cursor::zero()));
    let mut all = Vec::new();
    while all.last().map(|i: &selvage_shared::FeedItem| &i.cursor) != sent.cursor.as_ref() {
        if let FeedFrame::Events { items, .. } = read_feed(&mut rx).await {
            all.extend(items);
        }
    }
    assert!(all.windows(2).all(|p| p[0].cursor < p[1].cursor), "in log order");
    assert!(all.iter().any(|i| matches!(i.event, Event::ChannelCreated { .. })));

    // A cursor ahead of the log: resync at the head.
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    let ahead = Cursor::from_position(&[0xff; 12]);
    tx.write_all(&open(LinkStream::Feed { cursor: Some(ahead) })).await.unwrap();
    match read_feed(&mut rx).await {
        FeedFrame::Resync { cursor, reason } => {
            assert_eq!(Some(cursor), sent.cursor);
            assert!(reason.contains("ahead"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }

    // A cursor that does not parse: a resync at the head that says why, not a refusal.
    #[derive(Serialize)]
    struct RawOpen<'a> {
        protocol: u32,
        edge_key: &'a str,
        edge_id: &'a str,
        stream: RawFeed<'a>,
    }
    #[derive(Serialize)]
    #[serde(tag = "kind", rename = "feed")]
    struct RawFeed<'a> {
        cursor: &'a str,
    }
    let raw = RawOpen {
        protocol: PROTOCOL_VERSION,
        edge_key: EDGE_KEY,
        edge_id: "x",
        stream: RawFeed { cursor: "yesterday" },
    };
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    tx.write_all(&raw_frame(&selvage_shared::to_msgpack(&raw))).await.unwrap();
    match read_feed(&mut rx).await {
        FeedFrame::Resync { cursor, reason } => {
            assert_eq!(Some(cursor), sent.cursor);
            assert!(reason.contains("\"yesterday\" is not a feed cursor"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(o.metric("selvage_link_streams{kind=\"feed\"}"), 4);
    o.stop().await;
}

#[tokio::test]
async fn without_an_edge_key_the_link_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = OriginConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..OriginConfig::default()
    };
    let shutdown = CancellationToken::new();
    let running = selvage_origin::start(config, shutdown.clone()).await.unwrap();
    assert!(running.link_addr.is_none() && running.link_fingerprint.is_none());
    shutdown.cancel();
    running.wait().await;
}
