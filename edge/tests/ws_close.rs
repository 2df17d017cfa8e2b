//! How the edge's WebSocket sessions end, seen from the wire: the close handshake of RFC 6455
//! (§5.5.1, §7.1.5, §7.4) and the close a slow client gets. A real origin and a real edge run
//! in this process on port 0; the client is raw TCP bytes, so that what the edge sends — or
//! does not — is what the test sees. Every wait has a deadline; none is a sleep.

mod support;

use std::time::Instant;

use selvage_edge::EdgeConfig;
use selvage_origin::sequencer::SendRequest;
use support::{Got, Raw, Rig, DEADLINE};

/// A rig whose edge serves WebSocket only.
async fn rig(adjust: impl FnOnce(&mut EdgeConfig)) -> Rig {
    support::rig("ws-close", false, adjust).await
}

/// A frame a test sends: its first byte (FIN, reserved bits, opcode), its payload, and whether
/// it is masked.
type Sent = (u8, Vec<u8>, bool);

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A client's close is echoed (RFC 6455 §5.5.1): its code when it is one an endpoint may send,
/// an empty close for an empty one, and 1002 for a code no endpoint may send (§7.4.1: 1005,
/// 1006 and 1015 are for reporting only; 0–999, 1004 and unassigned codes below 3000 are not
/// codes at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_a_code_an_endpoint_may_send() {
    let rig = rig(|_| {}).await;
    for code in [1000u16, 1001, 1003, 1008, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
        let mut c = Raw::connect(rig.edge.addr, &rig.token).await;
        c.send(FIN | CLOSE, &close_payload(code, b"bye")).await;
        let got = c.next_control().await;
        assert_eq!(got.close_code().map(|(c, _)| c), Some(code), "a close with {code} is echoed: {got:?}");
        assert_eq!(c.next().await, Got::End, "the edge ends the connection after the handshake");
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let mut c = Raw::connect(rig.edge.addr, &rig.token).await;
        c.send(FIN | CLOSE, &close_payload(code, b"")).await;
        let got = c.next_control().await;
        assert_eq!(got.close_code().map(|(c, _)| c), Some(1002), "a close with {code} is a protocol error: {got:?}");
        assert_eq!(c.next().await, Got::End);
    }
    let mut c = Raw::connect(rig.edge.addr, &rig.token).await;
    c.send(FIN | CLOSE, b"").await;
    assert_eq!(c.next_control().await, Got::Close(Vec::new()), "a close without a code is answered without one");
    assert_eq!(c.next().await, Got::End);
}

/// What breaks the protocol gets a close frame saying so before the connection ends (§7.1.7,
/// §7.4.1): 1007 for text or a close reason that is not UTF-8, 1002 for the rest, 1009 for a
/// message over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_is_closed_with_the_code_that_says_why() {
    let rig = rig(|_| {}).await;
    let bad_utf8: &[u8] = b"caf\xc3 \xff";
    let cases: Vec<(&str, Vec<Sent>, u16)> = vec![
        ("text that is not UTF-8", vec![(FIN | TEXT, bad_utf8.to_vec(), true)], 1007),
        (
            "fragmented text that is not UTF-8",
            vec![(TEXT, b"ok ".to_vec(), true), (FIN, b"\xed\xa0\x80".to_vec(), true)],
            1007,
        ),
        ("a close reason that is not UTF-8", vec![(FIN | CLOSE, close_payload(1000, bad_utf8), true)], 1007),
        ("a close with half a code", vec![(FIN | CLOSE, vec![0x03], true)], 1002),
        ("an unmasked frame", vec![(FIN | TEXT, b"{}".to_vec(), false)], 1002),
        ("a reserved bit", vec![(FIN | 0x40 | TEXT, b"{}".to_vec(), true)], 1002),
        ("an unknown opcode", vec![(FIN | 0x3, b"".to_vec(), true)], 1002),
        ("an unknown control opcode", vec![(FIN | 0xB, b"".to_vec(), true)], 1002),
        ("a fragmented ping", vec![(PING, b"".to_vec(), true)], 1002),
        ("a ping over 125 bytes", vec![(FIN | PING, vec![0; 126], true)], 1002),
        ("a continuation outside a message", vec![(FIN, b"x".to_vec(), true)], 1002),
        ("a message inside a message", vec![(BINARY, b"x".to_vec(), true), (FIN | BINARY, b"y".to_vec(), true)], 1002),
        (
            "a message over the limit",
            vec![(FIN | BINARY, vec![0; selvage_shared::MAX_CLIENT_FRAME_BYTES + 1], true)],
            1009,
        ),
    ];
    for (what, frames, code) in cases {
        let mut c = Raw::connect(rig.edge.addr, &rig.token).await;
        for (first, payload, masked) in frames {
            c.send_with(first, &payload, masked).await;
        }
        let got = c.next_control().await;
        assert_eq!(got.close_code().map(|(c, _)| c), Some(code), "{what}: {got:?}");
        // The client's side of the handshake; then the edge ends the connection.
        c.send(FIN | CLOSE, &close_payload(code, b"")).await;
        assert_eq!(c.next().await, Got::End, "{what}: the connection ends");
    }
}

/// A message event's seq and cursor, from a JSON data frame.
fn message(got: &Got) -> Option<(u64, String)> {
    let Got::Data(0x1, bytes) = got else { return None };
    let event: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    (event["type"] == "message").then(|| (event["seq"].as_u64().unwrap(), event["cursor"].as_str().unwrap().to_owned()))
}

/// A client that stops reading is shed with 4008 (its outbound queue overflowed), and the
/// close frame reaches it: it goes out ahead of the frames still queued, and the edge keeps the
/// socket, not the session, until the client has read up to it. Here the client reads nothing
/// until the edge has ended the session — longer than the edge once waited for the close. It
/// then resumes, and gets every message it missed, the ones dropped for the close included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_reads_why_it_was_closed() {
    let rig = rig(|c| c.sessions.outbound_queue = 16).await;
    let connections = rig.edge.edge.metrics.connections.with_label_values(&["ws"]);
    let (mut slow, hello) = Raw::connect_with(rig.edge.addr, &rig.token, "").await;
    assert_eq!(connections.get(), 1);
    // Big messages, until the session is shed: its socket fills, then its queue.
    let text = "z".repeat(30_000);
    let mut sent = 0u64;
    let deadline = Instant::now() + DEADLINE;
    while connections.get() > 0 {
        assert!(Instant::now() < deadline, "the slow session was never shed ({sent} messages sent)");
        let request = SendRequest {
            workspace: rig.ws.clone(),
            channel: rig.general.clone(),
            user: rig.admin.clone(),
            text: text.clone(),
            client_msg_id: format!("m-{sent}"),
            thread_root: None,
            files: Vec::new(),
        };
        rig.origin.sequencer.send(request).await.unwrap();
        sent += 1;
        if sent.is_multiple_of(16) {
            // Let the feed catch up before sending more.
            tokio::task::yield_now().await;
        }
    }
    // The session is over; only now does the client read.
    let mut seqs = Vec::new();
    let mut cursor = hello["cursor"].as_str().unwrap().to_owned();
    let last = loop {
        match slow.next().await {
            Got::Control(_) => {}
            data @ Got::Data(..) => {
                if let Some((seq, at)) = message(&data) {
                    seqs.push(seq);
                    cursor = at;
                }
            }
            other => break other,
        }
    };
    let (code, reason) =
        last.close_code().unwrap_or_else(|| panic!("no close frame after {} messages: {last:?}", seqs.len()));
    assert_eq!(code, 4008, "{reason}");
    assert!(reason.contains("resume"), "the reason tells the client what to do: {reason}");
    assert!(!seqs.is_empty() && (seqs.len() as u64) < sent, "{} of {sent} messages came before the close", seqs.len());
    slow.send(FIN | CLOSE, &close_payload(4008, b"")).await;
    assert_eq!(slow.next().await, Got::End);

    // Resume: what the close went ahead of comes now, without a gap.
    let (mut resumed, hello) = Raw::connect_with(rig.edge.addr, &rig.token, &format!("&resume={cursor}")).await;
    assert_eq!(hello["resumed"], true);
    while seqs.len() < sent as usize {
        let got = resumed.next().await;
        match message(&got) {
            Some((seq, _)) => seqs.push(seq),
            None => assert!(matches!(got, Got::Data(..) | Got::Control(_)), "the resumed session ended: {got:?}"),
        }
    }
    assert_eq!(seqs, (1..=sent).collect::<Vec<_>>(), "every message once, in order");
}
