//! Writes the seed corpora in `fuzz/corpus/<target>/` with the project's own encoders: client
//! frames of every type in JSON and MessagePack, client WebSocket streams, link frames both
//! ways, write-ahead log segments written by the embedded store, and tuples.
//!
//! Run from `fuzz/` as `cargo run --example seeds` after a change to a wire format, and commit
//! what changed. The seeds are small on purpose: the fuzzer grows its corpus from them.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use selvage_origin::store::embedded::{EmbeddedOptions, EmbeddedStore};
use selvage_origin::store::{keys, tuple::Key, KvStore, Versionstamp};
use selvage_shared::link::{encode_frame, LinkOpen, LinkStream, FRAME_PREFIX_BYTES};
use selvage_shared::{decode_client, encode_client, ChannelId, Cursor, Format, UserId, WorkspaceId};
use serde_json::json;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(name), bytes).expect("seed written");
}

/// One of every client frame, as a client would write it in JSON.
const CLIENT_FRAMES: &[(&str, &str)] = &[
    ("send", r#"{"type":"send","id":"r1","channel":"C1","text":"hello <@U2> and <!here>","client_msg_id":"m-1"}"#),
    (
        "send_thread",
        r#"{"type":"send","id":"r2","channel":"C1","text":"in a thread ✓","client_msg_id":"m-2","thread_root":7}"#,
    ),
    ("ping", r#"{"type":"ping","id":"p1"}"#),
    ("typing", r#"{"type":"typing","channel":"C1"}"#),
    ("presence_sub", r#"{"type":"presence_sub","users":["U1","U2"]}"#),
    ("set_presence", r#"{"type":"set_presence","dnd":true}"#),
    ("query_users", r#"{"type":"query","id":"q1","q":"users","users":["U1"]}"#),
    ("query_members", r#"{"type":"query","id":"q2","q":"members","channel":"C1","limit":50,"page":"x"}"#),
    ("query_history", r#"{"type":"query","id":"q3","q":"history","channel":"C1","before":100,"after":1,"limit":20}"#),
    ("query_channels", r#"{"type":"query","id":"q4","q":"channels"}"#),
    ("query_thread", r#"{"type":"query","id":"q5","q":"thread","channel":"C1","root":7}"#),
    ("mark_read", r#"{"type":"mark_read","channel":"C1","seq":42}"#),
];

fn client_frames() {
    for (name, json) in CLIENT_FRAMES {
        let frame = decode_client(json.as_bytes(), Format::Json).expect("a valid client frame");
        write("client_frame_json", &format!("{name}.json"), json.as_bytes());
        write("client_frame_msgpack", &format!("{name}.msgpack"), &encode_client(&frame, Format::MsgPack));
    }
}

/// A client frame (masked, as clients must send them) with its first header byte as given.
fn ws_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn ws_codec() {
    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    // Bytes 0..4 of a ws_codec input: message limit (×4), room (0xff: none), chunk seed.
    let with = |limit: u8, room: u8, frames: &[Vec<u8>]| {
        let mut input = vec![limit, room, 0x11, 0x07];
        input.extend(frames.concat());
        input
    };
    let text = ws_frame(0x81, "hello ✓".as_bytes(), M);
    let binary = ws_frame(0x82, &[0x81, 0xa4, b't', b'y', b'p', b'e'], M);
    let ping = ws_frame(0x89, b"are you there", M);
    let pong = ws_frame(0x8a, b"", M);
    let close = ws_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], M);
    let close_empty = ws_frame(0x88, b"", M);
    let start = ws_frame(0x01, "frag".as_bytes(), M);
    let middle = ws_frame(0x00, "men".as_bytes(), M);
    let end = ws_frame(0x80, "ted ✓".as_bytes(), M);
    // "✓" (e2 9c 93) cut between two fragments.
    let cut_a = ws_frame(0x01, &[b'a', 0xe2, 0x9c], M);
    let cut_b = ws_frame(0x80, &[0x93], M);
    let medium = ws_frame(0x82, &[7u8; 300], M);
    let zero_mask = ws_frame(0x81, b"unmasked bytes, zero mask", [0; 4]);
    let mut unmasked = ws_frame(0x81, b"hi", M);
    unmasked[1] &= 0x7f;
    unmasked.drain(2..6);
    write("ws_codec", "text", &with(64, 0xff, &[text.clone()]));
    write("ws_codec", "binary", &with(64, 0xff, &[binary]));
    write("ws_codec", "control", &with(64, 0xff, &[ping.clone(), pong, close]));
    write("ws_codec", "close_empty", &with(64, 0xff, &[close_empty]));
    write("ws_codec", "fragmented", &with(64, 0xff, &[start, ping, middle, end]));
    write("ws_codec", "utf8_across_fragments", &with(64, 0xff, &[cut_a, cut_b]));
    write("ws_codec", "len16_small_room", &with(255, 16, &[medium.clone(), text]));
    write("ws_codec", "too_large", &with(16, 0xff, &[medium]));
    write("ws_codec", "zero_mask", &with(64, 0xff, &[zero_mask]));
    write("ws_codec", "unmasked", &with(64, 0xff, &[unmasked]));
}

fn link_frames() {
    let w = WorkspaceId::new_unchecked("W1");
    let cursor = Cursor::from_position(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1]);
    let open = |stream| LinkOpen { protocol: 1, edge_key: "key".into(), edge_id: "edge-1".into(), stream };
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("open_feed", encode_frame(&open(LinkStream::Feed { cursor: Some(cursor.clone()) }))),
        ("open_calls", encode_frame(&open(LinkStream::Calls))),
        ("client_open", encode_frame(&selvage_shared::ClientOpen { token: "t0k".into(), resume: Some(cursor.clone()) })),
        ("subscribe", encode_frame(&selvage_shared::FeedRequest::Subscribe { cursor: None })),
        ("call_authenticate", encode_frame(&json!({"id": 1, "call": {"call": "authenticate", "token_hash": "ab"}}))),
        ("call_snapshot", encode_frame(&json!({"id": 2, "call": {"call": "snapshot", "workspace": w}}))),
        (
            "call_send",
            encode_frame(&json!({"id": 3, "call": {"call": "send", "workspace": "W1", "user": "U1", "channel": "C1",
                "text": "hi", "client_msg_id": "m1", "thread_root": 4}})),
        ),
        ("reply_principal", encode_frame(&json!({"id": 1, "reply": {"Ok": {"answer": "principal", "workspace": "W1", "user": "U1"}}}))),
        ("reply_error", encode_frame(&json!({"id": 0, "reply": {"Err": {"code": "unauthorized", "message": "wrong key"}}}))),
        ("feed_heartbeat", encode_frame(&json!({"type": "heartbeat", "cursor": cursor}))),
        (
            "feed_events",
            encode_frame(&json!({"type": "events", "cursor": cursor, "items": [
                {"cursor": cursor, "workspace": "W1", "ts": 1, "event": {"type": "message", "channel": "C1", "seq": 1,
                    "ts": 1, "user": "U1", "text": "hi <@U2>", "client_msg_id": "m1", "mentions": ["U2"]}},
                {"cursor": cursor, "workspace": "W1", "ts": 2, "event": {"type": "typing", "channel": "C1", "user": "U2"}}
            ]})),
        ),
        ("feed_resync", encode_frame(&json!({"type": "resync", "reason": "trimmed", "cursor": cursor}))),
    ]
    .into_iter()
    .map(|(name, frame)| (name, frame.expect("a link frame encodes")))
    .collect();
    // Every seed must decode as what it stands for: the JSON ones are checked by the decoders.
    for (name, frame) in &frames {
        let body = &frame[FRAME_PREFIX_BYTES..];
        let ok = match *name {
            n if n.starts_with("call") => selvage_shared::from_msgpack::<selvage_shared::link::LinkCall>(body).is_ok(),
            n if n.starts_with("reply") => {
                selvage_shared::from_msgpack::<selvage_shared::link::LinkReply>(body).is_ok()
            }
            n if n.starts_with("feed") => selvage_shared::decode_feed_frame(body).is_ok(),
            _ => true,
        };
        assert!(ok, "seed {name} does not decode");
        // Byte 0 of a link_frame input picks the limit: 3 is the link's own.
        write("link_frame", name, &[&[3u8][..], frame].concat());
    }
    let stream: Vec<u8> = frames.iter().take(4).flat_map(|(_, f)| f.clone()).collect();
    write("link_frame", "stream", &[&[3u8][..], &stream].concat());
}

fn tuples() {
    let w = WorkspaceId::new_unchecked("W1");
    let c = ChannelId::new_unchecked("C1");
    let u = UserId::new_unchecked("U1");
    let vs = Versionstamp::new(0x0102_0304, 7);
    let keys: Vec<(&str, Vec<u8>)> = vec![
        ("message", keys::message(&w, &c, 42)),
        ("member", keys::member(&w, &c, &u)),
        ("nonce", keys::nonce(&w, &c, &u, "m\0-1")),
        ("reaction", keys::reaction(&w, &c, 5, "thumbsup", &u)),
        ("token", keys::token(&[0xab; 32])),
        ("log_entry", keys::log_entry(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1])),
        ("ints", Key::new().int(0).int(-1).int(255).int(-256).int(i64::MIN).uint(u64::MAX).null().finish()),
        ("versionstamp", Key::new().bytes(b"\x00\xff").versionstamp_with_order(&vs, 3).finish()),
    ];
    for (name, key) in keys {
        // Byte 0 of a tuple_decode input is where to split the rest in two.
        let split = (key.len() / 2) as u8;
        write("tuple_decode", name, &[&[split][..], &key].concat());
    }
}

/// The `.wal.` files next to the store, in version order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("store directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".wal.")))
        .collect();
    files.sort();
    files
}

async fn commit(store: &Arc<EmbeddedStore>, i: u64) {
    let mut tx = store.begin().await.expect("begin");
    tx.set(&keys::message(&WorkspaceId::new_unchecked("W1"), &ChannelId::new_unchecked("C1"), i), b"\x81\xa1t\xa2hi")
        .expect("set");
    tx.atomic_add(b"count", 1).expect("add");
    let (key, offset) = keys::log_entry_placeholder(0);
    tx.set_versionstamped_key(&key, offset, &i.to_le_bytes()).expect("versionstamped");
    if i % 2 == 0 {
        tx.clear(b"gone").expect("clear");
    } else {
        tx.clear_range(b"tmp/", b"tmp0").expect("clear range");
    }
    tx.commit().await.expect("commit");
}

/// A wal_recovery input: `flushed`, flags, then `(first: u16, len: u16, bytes)` per segment.
fn wal_input(flushed: u8, flags: u8, segments: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = vec![flushed, flags];
    for (first, bytes) in segments {
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

async fn wal() {
    let dir = std::env::temp_dir().join(format!("selvage-fuzz-seeds-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temporary directory");
    let opts = EmbeddedOptions { fsync: true, flush_interval: Duration::from_secs(3600), ..EmbeddedOptions::default() };
    let store = EmbeddedStore::open(&dir.join("seed.redb"), opts).expect("store opens");
    // Versions 1..=3 one by one, then 4..=6 committed together (one record may hold several).
    for i in 1..=3 {
        commit(&store, i).await;
    }
    let read = || {
        let files = segments(&dir);
        assert_eq!(files.len(), 1, "one segment: {files:?}");
        fs::read(&files[0]).expect("segment read")
    };
    let three = read();
    tokio::join!(commit(&store, 4), commit(&store, 5), commit(&store, 6));
    let six = read();
    drop(store);
    let _ = fs::remove_dir_all(&dir);

    write("wal_recovery", "one_segment", &wal_input(0, 0, &[(1, &six)]));
    write("wal_recovery", "after_flushed", &wal_input(2, 0, &[(1, &six)]));
    // Torn: the last record cut short.
    write("wal_recovery", "torn", &wal_input(0, 0, &[(1, &six[..six.len() - 5])]));
    // Two segments: 1..=3, and 4..=6 in a second one whose header the harness stamps (flag 1).
    let second: Vec<u8> = [&six[..32], &six[three.len()..]].concat();
    write("wal_recovery", "two_segments", &wal_input(0, 1, &[(1, &three), (4, &second)]));
    // A recycled segment's leftover zeros after its records, then a later segment.
    let zeros = [&three[..], &[0u8; 16]].concat();
    write("wal_recovery", "zeros_then_segment", &wal_input(0, 1, &[(1, &zeros), (4, &second)]));
    // A gap: the second segment starts past what the first holds.
    write("wal_recovery", "gap", &wal_input(0, 1, &[(1, &three), (6, &second)]));
    // A record whose checksum is stamped but whose payload does not decode.
    let mut bad = six.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x5a;
    write("wal_recovery", "undecodable", &wal_input(0, 1, &[(1, &bad)]));
    write("wal_recovery", "empty_and_header_only", &wal_input(0, 0, &[(1, &[]), (2, &six[..32])]));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    client_frames();
    ws_codec();
    link_frames();
    tuples();
    wal().await;
}
