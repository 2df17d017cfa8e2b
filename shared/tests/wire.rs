//! The exact wire shapes of ARCHITECTURE §4 and the limits and errors of the client decoder.

use selvage_shared::*;
use serde_json::{json, Value};

fn cursor() -> Cursor {
    Cursor::from_position(&[0, 0, 0, 0, 0, 0, 0, 7, 0, 1, 0, 3])
}

fn user(id: &str) -> User {
    User {
        id: UserId::new_unchecked(id),
        handle: "ada".into(),
        name: "Ada".into(),
        admin: false,
        deactivated: false,
        tokens_valid_from: 0,
        bot: None,
        created_at: 1_700_000_000_000,
    }
}

fn to_json(frame: &ServerFrame) -> Value {
    serde_json::from_slice(&encode_server(frame, Format::Json)).unwrap()
}

fn decode_json(s: &str) -> Result<ClientFrame, DecodeError> {
    decode_client(s.as_bytes(), Format::Json)
}

fn msgpack_of(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap()
}

#[test]
fn message_event_frame_is_flat() {
    let frame = ServerFrame::event(
        cursor(),
        Event::Message(Message {
            client_msg_id: "m-1".into(),
            thread_root: Some(40),
            ..Message::new(ChannelId::new_unchecked("C1"), 42, 1_700_000_000_123, UserId::new_unchecked("U1"), "hello")
        }),
    );
    let expected = json!({
        "type": "message",
        "cursor": "000000000000000700010003",
        "channel": "C1",
        "seq": 42,
        "ts": 1_700_000_000_123_i64,
        "user": "U1",
        "text": "hello",
        "client_msg_id": "m-1",
        "thread_root": 40,
        "deleted": false,
    });
    assert_eq!(to_json(&frame), expected);
    // The "type" comes first, so a reader can dispatch before parsing the rest.
    let text = String::from_utf8(encode_server(&frame, Format::Json)).unwrap();
    assert!(text.starts_with(r#"{"type":"message","#), "{text}");
    // MessagePack carries the same map.
    let mp = encode_server(&frame, Format::MsgPack);
    assert_eq!(rmp_serde::from_slice::<Value>(&mp).unwrap(), expected);
    assert_eq!(decode_server(&mp, Format::MsgPack), Ok(frame.clone()));
    assert_eq!(decode_server(expected.to_string().as_bytes(), Format::Json), Ok(frame));
}

#[test]
fn other_event_frames() {
    let frame = ServerFrame::event(
        cursor(),
        Event::ReactionAdded {
            channel: ChannelId::new_unchecked("C1"),
            seq: 3,
            user: UserId::new_unchecked("U2"),
            emoji: "tada".into(),
        },
    );
    assert_eq!(
        to_json(&frame),
        json!({"type": "reaction_added", "cursor": "000000000000000700010003",
               "channel": "C1", "seq": 3, "user": "U2", "emoji": "tada"})
    );
    let frame = ServerFrame::event(
        cursor(),
        Event::PresenceChange { user: UserId::new_unchecked("U2"), presence: Presence::Away },
    );
    assert_eq!(
        to_json(&frame),
        json!({"type": "presence_change", "cursor": "000000000000000700010003",
               "user": "U2", "presence": "away"})
    );
    assert_eq!(frame.kind(), "presence_change");
}

#[test]
fn ack_shape() {
    let frame = ServerFrame::Ack {
        reply_to: "r1".into(),
        channel: ChannelId::new_unchecked("C1"),
        seq: 9,
        ts: 5,
        cursor: None,
    };
    assert_eq!(to_json(&frame), json!({"type": "ack", "reply_to": "r1", "channel": "C1", "seq": 9, "ts": 5}));
    let frame = ServerFrame::Ack {
        reply_to: "r1".into(),
        channel: ChannelId::new_unchecked("C1"),
        seq: 9,
        ts: 5,
        cursor: Some(cursor()),
    };
    let v = to_json(&frame);
    assert_eq!(v["cursor"], "000000000000000700010003");
    assert_eq!(decode_server(v.to_string().as_bytes(), Format::Json), Ok(frame));
}

#[test]
fn error_shape() {
    let frame = ServerFrame::error(Some("r1".into()), ErrorCode::NotMember, "not a member");
    assert_eq!(
        to_json(&frame),
        json!({"type": "error", "reply_to": "r1", "code": "not_member", "message": "not a member"})
    );
    let frame = ServerFrame::error(None, ErrorCode::RateLimited, "slow down");
    assert_eq!(to_json(&frame), json!({"type": "error", "code": "rate_limited", "message": "slow down"}));
}

#[test]
fn hello_shape() {
    let channel = Channel {
        id: ChannelId::new_unchecked("C1"),
        name: "general".into(),
        kind: ChannelKind::Channel,
        private: false,
        archived: false,
        topic: String::new(),
        purpose: String::new(),
        created_by: UserId::new_unchecked("U1"),
        created_at: 1,
    };
    let frame = ServerFrame::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        session_id: "s1".into(),
        cursor: cursor(),
        self_user: user("U1"),
        channels: vec![ChannelBoot { channel, last_seq: 10, read_seq: 8, unread: 2, mentions: 1 }],
        users: vec![],
        heartbeat_ms: 30_000,
        resumed: false,
    });
    let v = to_json(&frame);
    assert_eq!(v["type"], "hello");
    assert_eq!(v["protocol"], 1);
    assert_eq!(v["cursor"], "000000000000000700010003");
    assert_eq!(v["self"]["id"], "U1");
    assert!(v.get("self_user").is_none());
    assert_eq!(v["channels"][0]["channel"]["kind"], "channel");
    assert_eq!(v["channels"][0]["last_seq"], 10);
    assert_eq!(v["users"], json!([]));
    assert_eq!(v["heartbeat_ms"], 30_000);
    assert_eq!(v["resumed"], false);
    for format in [Format::Json, Format::MsgPack] {
        let bytes = encode_server(&frame, format);
        assert_eq!(decode_server(&bytes, format), Ok(frame.clone()));
    }
}

#[test]
fn result_skips_empty_lists() {
    let frame = ServerFrame::Result(QueryResult {
        reply_to: "q1".into(),
        members: vec![UserId::new_unchecked("U1")],
        ..QueryResult::default()
    });
    assert_eq!(to_json(&frame), json!({"type": "result", "reply_to": "q1", "members": ["U1"]}));
}

#[test]
fn client_frames_parse() {
    assert_eq!(
        decode_json(r#"{"type":"send","id":"1","channel":"C1","text":"hi","client_msg_id":"m1"}"#),
        Ok(ClientFrame::Send {
            id: "1".into(),
            channel: ChannelId::new_unchecked("C1"),
            text: "hi".into(),
            client_msg_id: "m1".into(),
            thread_root: None,
        })
    );
    assert_eq!(
        decode_json(r#"{"type":"query","id":"2","q":"history","channel":"C1","limit":50}"#),
        Ok(ClientFrame::Query(Query {
            id: "2".into(),
            q: QueryKind::History,
            channel: Some(ChannelId::new_unchecked("C1")),
            users: vec![],
            before: None,
            after: None,
            root: None,
            limit: Some(50),
            page: None,
            text: None,
            sort: None,
            wait_for: None,
        }))
    );
    assert_eq!(
        decode_json(r#"{"channel":"C1","type":"mark_read","seq":4}"#),
        Ok(ClientFrame::MarkRead { channel: ChannelId::new_unchecked("C1"), seq: 4 })
    );
    let set = decode_json(r#"{"type":"set_notify_prefs","id":"3","prefs":{"keywords":["deploy"],"email":false}}"#);
    let prefs = NotifyPrefs { keywords: vec!["deploy".into()], email: false, ..NotifyPrefs::default() };
    assert_eq!(set, Ok(ClientFrame::SetNotifyPrefs { id: "3".into(), prefs: Box::new(prefs) }));
    assert_eq!(
        decode_json(r#"{"type":"query","id":"4","q":"notify_prefs"}"#),
        Ok(ClientFrame::Query(Query::new("4", QueryKind::NotifyPrefs)))
    );
    // A notify_prefs query takes nothing else; a document with an unknown field is refused.
    assert_invalid(decode_json(r#"{"type":"query","id":"5","q":"notify_prefs","limit":5}"#));
    assert_malformed(decode_json(r#"{"type":"set_notify_prefs","id":"6","prefs":{"sound":"ding"}}"#));
    assert_invalid(decode_json(r#"{"type":"set_notify_prefs","id":"","prefs":{}}"#));
    let mp = msgpack_of(&json!({"type": "presence_sub", "users": ["U1", "U2"]}));
    assert_eq!(
        decode_client(&mp, Format::MsgPack),
        Ok(ClientFrame::PresenceSub { users: vec![UserId::new_unchecked("U1"), UserId::new_unchecked("U2")] })
    );
}

fn assert_malformed(result: Result<ClientFrame, DecodeError>) -> String {
    match result {
        Err(e @ DecodeError::Malformed(_)) => {
            assert_eq!(e.code(), ErrorCode::BadFrame);
            e.to_string()
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn assert_invalid(result: Result<ClientFrame, DecodeError>) {
    match result {
        Err(e @ DecodeError::Invalid(_)) => assert_eq!(e.code(), ErrorCode::BadFrame),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn unknown_types_and_fields_are_rejected() {
    assert_malformed(decode_json(r#"{"type":"launch_missiles","id":"1"}"#));
    assert_malformed(decode_json(r#"{"id":"1"}"#));
    assert_malformed(decode_json(r#"{"type":"ping","id":"1","extra":true}"#));
    assert_malformed(decode_json(r#"{"type":"typing","channel":"C1","user":"U1"}"#));
    assert_malformed(decode_json(r#"{"type":"query","id":"1","q":"users","sql":"drop"}"#));
    assert_malformed(decode_json(r#"{"type":"query","id":"1","q":"everything"}"#));
    assert_malformed(decode_json(r#"{"type":"ping","type":"ping","id":"1"}"#));
    assert_malformed(decode_json(r#"[1,2,3]"#));
    assert_malformed(decode_json(r#"{"type":"ping","id":"1"} trailing"#));
    let mp = msgpack_of(&json!({"type": "hello", "id": "1"}));
    assert_malformed(decode_client(&mp, Format::MsgPack));
    // A server decoder rejects unknown types too.
    assert!(decode_server(br#"{"type":"nope"}"#, Format::Json).is_err());
    assert!(decode_server(br#"{"type":"message","channel":"C1"}"#, Format::Json).is_err());
}

#[test]
fn error_details_do_not_echo_large_input() {
    let huge = "x".repeat(100_000);
    let frame = format!(r#"{{"type":"{huge}","id":"1"}}"#);
    let msg = assert_malformed(decode_json(&frame));
    assert!(msg.len() < 300, "{} bytes", msg.len());
}

#[test]
fn invalid_ids_are_rejected() {
    for channel in [r#""""#, r#""has space""#, r#""a/b""#, r#""ünï""#, r#"7"#, r#"null"#] {
        let frame = format!(r#"{{"type":"typing","channel":{channel}}}"#);
        assert_malformed(decode_json(&frame));
    }
    let long = "C".repeat(33);
    assert_malformed(decode_json(&format!(r#"{{"type":"typing","channel":"{long}"}}"#)));
    assert_malformed(decode_json(r#"{"type":"presence_sub","users":["U1","bad id"]}"#));
    let mp = msgpack_of(&json!({"type": "mark_read", "channel": "", "seq": 1}));
    assert_malformed(decode_client(&mp, Format::MsgPack));
    assert!(decode_server(br#"{"type":"typing","cursor":"not-a-cursor","channel":"C1","user":"U1"}"#, Format::Json)
        .is_err());
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    // Not even valid JSON or MessagePack: the size check must come first.
    let bytes = vec![0xffu8; MAX_CLIENT_FRAME_BYTES + 1];
    for format in [Format::Json, Format::MsgPack] {
        let err = decode_client(&bytes, format).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { len: MAX_CLIENT_FRAME_BYTES + 1, max: MAX_CLIENT_FRAME_BYTES });
        assert_eq!(err.code(), ErrorCode::TooLarge);
    }
    assert!(matches!(decode_feed_frame(&vec![0u8; MAX_FEED_FRAME_BYTES + 1]), Err(DecodeError::TooLarge { .. })));
}

fn send_with(text: &str, client_msg_id: &str) -> Value {
    json!({"type": "send", "id": "1", "channel": "C1", "text": text, "client_msg_id": client_msg_id})
}

#[test]
fn text_limits() {
    // 40,000 multi-byte chars is fine (120,000 bytes, inside the frame limit); one more is not.
    let max = "€".repeat(MAX_TEXT_CHARS);
    let ok = send_with(&max, "m1").to_string();
    assert!(decode_json(&ok).is_ok());
    let over = format!("{max}a");
    assert_invalid(decode_json(&send_with(&over, "m1").to_string()));
    assert_invalid(decode_client(&msgpack_of(&send_with(&over, "m1")), Format::MsgPack));
    let ascii_over = "a".repeat(MAX_TEXT_CHARS + 1);
    assert_invalid(decode_json(&send_with(&ascii_over, "m1").to_string()));
    assert_invalid(decode_json(&send_with("", "m1").to_string()));
    // U+0000 anywhere in a text is refused, in both formats.
    let nul = format!("m {}", "\u{0}".repeat(600));
    assert_invalid(decode_json(&send_with(&nul, "m1").to_string()));
    assert_invalid(decode_client(&msgpack_of(&send_with("a\u{0}b", "m1")), Format::MsgPack));
}

#[test]
fn client_msg_id_limits() {
    assert_invalid(decode_json(&send_with("hi", "").to_string()));
    let max = "k".repeat(MAX_CLIENT_MSG_ID_BYTES);
    assert!(decode_json(&send_with("hi", &max).to_string()).is_ok());
    let over = "k".repeat(MAX_CLIENT_MSG_ID_BYTES + 1);
    assert_invalid(decode_json(&send_with("hi", &over).to_string()));
}

#[test]
fn other_limits() {
    assert_invalid(decode_json(r#"{"type":"ping","id":""}"#));
    let long_id = "i".repeat(MAX_REQUEST_ID_BYTES + 1);
    assert_invalid(decode_json(&format!(r#"{{"type":"ping","id":"{long_id}"}}"#)));
    let users: Vec<String> = (0..=MAX_PRESENCE_SUB_USERS).map(|i| format!("U{i}")).collect();
    assert_invalid(decode_json(&json!({"type": "presence_sub", "users": users}).to_string()));
    assert!(decode_json(&json!({"type": "presence_sub", "users": users[..MAX_PRESENCE_SUB_USERS]}).to_string()).is_ok());
    let q = |extra: Value| {
        let mut v = json!({"type": "query", "id": "q", "q": "history", "channel": "C1"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        decode_json(&v.to_string())
    };
    assert!(q(json!({"limit": MAX_QUERY_LIMIT})).is_ok());
    assert_invalid(q(json!({"limit": MAX_QUERY_LIMIT + 1})));
    assert_invalid(q(json!({"limit": 0})));
    assert_malformed(q(json!({"limit": -1})));
    assert_invalid(q(json!({"q": "members", "channel": null})));
    assert_invalid(q(json!({"q": "thread"})));
    assert!(q(json!({"q": "thread", "root": 5})).is_ok());
    assert!(q(json!({"q": "channels", "channel": null})).is_ok());
    assert_invalid(decode_json(
        r#"{"type":"send","id":"1","channel":"C1","text":"x","client_msg_id":"m","thread_root":0}"#,
    ));
}

fn search(extra: Value) -> Result<ClientFrame, DecodeError> {
    let mut v = json!({"type": "query", "id": "s1", "q": "search", "text": "deploy"});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    decode_json(&v.to_string())
}

#[test]
fn search_queries_parse_and_round_trip() {
    let frame = search(json!({"sort": "recent", "limit": 20, "page": "p2", "wait_for": "000000000000000700010003"}));
    let expected = ClientFrame::Query(Query {
        text: Some("deploy".into()),
        sort: Some(SearchSort::Recent),
        limit: Some(20),
        page: Some("p2".into()),
        wait_for: Some(cursor()),
        ..Query::new("s1", QueryKind::Search)
    });
    assert_eq!(frame, Ok(expected.clone()));
    for format in [Format::Json, Format::MsgPack] {
        assert_eq!(decode_client(&encode_client(&expected, format), format), Ok(expected.clone()));
    }
    // The fields a search does not use stay off the wire of other queries.
    let history = encode_client(&ClientFrame::Query(Query::new("h", QueryKind::Channels)), Format::Json);
    assert_eq!(
        serde_json::from_slice::<Value>(&history).unwrap(),
        json!({"type": "query", "id": "h", "q": "channels"})
    );
}

#[test]
fn search_queries_are_validated() {
    assert!(search(json!({})).is_ok());
    assert!(search(json!({"text": "a".repeat(MAX_SEARCH_CHARS), "limit": MAX_SEARCH_LIMIT})).is_ok());
    for bad in [
        json!({"text": null}),
        json!({"text": ""}),
        json!({"text": " \t\n"}),
        json!({"text": "a".repeat(MAX_SEARCH_CHARS + 1)}),
        json!({"text": "é".repeat(MAX_SEARCH_CHARS + 1)}),
        json!({"text": "a\u{0}b"}),
        json!({"limit": 0}),
        json!({"limit": MAX_SEARCH_LIMIT + 1}),
        json!({"channel": "C1"}),
        json!({"users": ["U1"]}),
        json!({"before": 3}),
        json!({"after": 3}),
        json!({"root": 3}),
    ] {
        let result = search(bad.clone());
        assert!(matches!(result, Err(DecodeError::Invalid(_))), "{bad} gave {result:?}");
    }
    let message = search(json!({"limit": 500})).unwrap_err().to_string();
    assert!(message.contains("1 to 100"), "{message}");
    // Sorts and cursors are typed: anything else does not decode.
    assert_malformed(search(json!({"sort": "oldest"})));
    assert_malformed(search(json!({"wait_for": "not-a-cursor"})));
    // Other kinds do not take the search fields.
    let history = |extra: Value| {
        let mut v = json!({"type": "query", "id": "q", "q": "history", "channel": "C1"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        decode_json(&v.to_string())
    };
    for extra in [json!({"text": "x"}), json!({"sort": "recent"}), json!({"wait_for": "000000000000000700010003"})] {
        assert_invalid(history(extra));
    }
}

#[test]
fn refused_requests_keep_their_id() {
    let id_of = |s: &str| decode_client_request(s.as_bytes(), Format::Json).unwrap_err().1;
    assert_eq!(id_of(r#"{"type":"query","id":"s1","q":"search","text":" "}"#), Some("s1".into()));
    assert_eq!(id_of(r#"{"type":"send","id":"r2","channel":"C1","text":"","client_msg_id":"m"}"#), Some("r2".into()));
    assert_eq!(id_of(r#"{"type":"query","id":"s1","q":"search","sort":"oldest"}"#), None, "does not parse");
    let long_id = "i".repeat(MAX_REQUEST_ID_BYTES + 1);
    assert_eq!(id_of(&format!(r#"{{"type":"ping","id":"{long_id}"}}"#)), None, "an id too long to echo");
    assert_eq!(id_of(&json!({"type": "presence_sub", "users": vec!["U1"; 501]}).to_string()), None, "no id");
}

#[test]
fn search_results_shape() {
    let result = SearchResult {
        channel: Channel {
            id: ChannelId::new_unchecked("C1"),
            name: "general".into(),
            kind: ChannelKind::Channel,
            private: false,
            archived: false,
            topic: String::new(),
            purpose: String::new(),
            created_by: UserId::new_unchecked("U1"),
            created_at: 1,
        },
        message: Message::new(ChannelId::new_unchecked("C1"), 4, 9, UserId::new_unchecked("U1"), "we deploy"),
        snippets: vec![SearchSnippet {
            field: "text".into(),
            fragment: "we deploy".into(),
            offset: 0,
            highlights: vec![[3, 9]],
        }],
    };
    let frame = ServerFrame::Result(QueryResult {
        reply_to: "s1".into(),
        results: vec![result],
        caught_up: Some(true),
        next: Some("n".into()),
        ..QueryResult::default()
    });
    let v = to_json(&frame);
    assert_eq!(v["results"][0]["message"]["seq"], 4);
    assert_eq!(v["results"][0]["channel"]["id"], "C1");
    assert_eq!(v["results"][0]["snippets"][0]["highlights"], json!([[3, 9]]));
    assert_eq!((v["caught_up"].as_bool(), v["next"].as_str()), (Some(true), Some("n")));
    assert!(v.get("messages").is_none());
    for format in [Format::Json, Format::MsgPack] {
        assert_eq!(decode_server(&encode_server(&frame, format), format), Ok(frame.clone()));
    }
}

#[test]
fn garbage_msgpack_is_malformed() {
    for bytes in [
        &b""[..],
        &[0xc1],                               // never-used marker
        &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map claiming 4 billion entries
        &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'], // string claiming 4 GiB
        &[0x81, 0xa4, b't', b'y', b'p', b'e'], // map missing its value
        &[0x92, 0x01, 0x02],
        b"{\"type\":\"ping\",\"id\":\"1\"}",
    ] {
        assert_malformed(decode_client(bytes, Format::MsgPack));
        assert!(decode_server(bytes, Format::MsgPack).is_err());
        assert!(from_msgpack::<FeedEvent>(bytes).is_err());
    }
}

#[test]
fn deeply_nested_msgpack_is_refused_without_overflowing_the_stack() {
    // A map {"x": [[[[...]]]]} nested as deep as the frame limit allows: buffering it (to find
    // the "type" tag) would recurse once per level without the depth cap.
    let mut bytes = vec![0x81, 0xa1, b'x'];
    bytes.resize(MAX_CLIENT_FRAME_BYTES - 1, 0x91);
    bytes.push(0xc0);
    // Run on a thread with a small stack, like an async worker's.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let msg = assert_malformed(decode_client(&bytes, Format::MsgPack));
            assert!(msg.contains("depth limit"), "{msg}");
            let json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
            assert_malformed(decode_json(&json));
        })
        .unwrap();
    handle.join().unwrap();
}

#[test]
fn msgpack_trailing_bytes_are_rejected() {
    let mut bytes = encode_client(&ClientFrame::Ping { id: "1".into() }, Format::MsgPack);
    assert!(decode_client(&bytes, Format::MsgPack).is_ok());
    bytes.push(0xc0);
    assert_malformed(decode_client(&bytes, Format::MsgPack));
}

#[test]
fn formats_parse() {
    assert_eq!(Format::parse("json"), Some(Format::Json));
    assert_eq!(Format::parse("msgpack"), Some(Format::MsgPack));
    assert_eq!(Format::parse("xml"), None);
    assert_eq!(Format::default(), Format::Json);
    assert!(Format::MsgPack.is_binary() && !Format::Json.is_binary());
}

#[test]
fn feed_event_is_stored_with_named_fields() {
    let entry = FeedEvent {
        workspace: WorkspaceId::new_unchecked("W1"),
        ts: 7,
        event: Event::MemberJoined { channel: ChannelId::new_unchecked("C1"), user: UserId::new_unchecked("U1") },
    };
    let v: Value = rmp_serde::from_slice(&to_msgpack(&entry)).unwrap();
    assert_eq!(
        v,
        json!({"workspace": "W1", "ts": 7,
               "event": {"type": "member_joined", "channel": "C1", "user": "U1"}})
    );
    // A stored entry may gain fields later; older readers ignore them.
    let newer = json!({"workspace": "W1", "ts": 7, "origin": "o2",
                       "event": {"type": "member_joined", "channel": "C1", "user": "U1", "by": "U9"}});
    assert_eq!(from_msgpack::<FeedEvent>(&msgpack_of(&newer)), Ok(entry));
}

#[test]
fn feed_frames_shape() {
    let frame = FeedFrame::Heartbeat { cursor: cursor() };
    assert_eq!(
        serde_json::to_value(&frame).unwrap(),
        json!({"type": "heartbeat", "cursor": "000000000000000700010003"})
    );
    let req = FeedRequest::Subscribe { cursor: None };
    assert_eq!(serde_json::to_value(&req).unwrap(), json!({"type": "subscribe"}));
}
