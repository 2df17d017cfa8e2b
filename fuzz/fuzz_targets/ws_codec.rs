//! The edge's WebSocket decoder (`edge/src/ws/codec.rs`) fed what a client sends, read the way
//! a session reads it: in chunks of sizes the input picks, never more than the decoder's
//! `read_limit`, each followed by decoding until no whole message is left.
//!
//! Checks that it never panics; that what it holds stays bounded by the message limit however
//! the bytes are split; that any chunking decodes to the same messages and the same error as the
//! whole input at once; and that what it decodes keeps the RFC's rules (text is UTF-8, close
//! codes are ones an endpoint may send, pings fit a control frame) and re-encodes.
//!
//! Input: byte 0 picks the message limit, byte 1 the room the decoder is allowed, bytes 2..4
//! seed the chunk sizes; the rest is the client's stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selvage_edge::ws::codec::{self, DecodeError, Decoder, Message, Opcode};

/// The largest frame header (2 bytes, 8 of length, 4 of mask).
const MAX_HEADER: usize = 14;
/// Largest chunk read at once (the session reads up to 8 KiB; small chunks split more).
const MAX_CHUNK: usize = 64;

/// What decoding a stream gave: its messages, and the error that ended it, if any.
type Outcome = (Vec<Message>, Option<DecodeError>);

fn drain(decoder: &mut Decoder, messages: &mut Vec<Message>) -> Result<(), DecodeError> {
    while let Some(m) = decoder.decode()? {
        messages.push(m);
    }
    Ok(())
}

fn whole(stream: &[u8], max: usize) -> Outcome {
    let mut decoder = Decoder::new(max);
    let mut messages = Vec::new();
    decoder.extend(stream);
    let err = drain(&mut decoder, &mut messages).err();
    (messages, err)
}

fn chunked(stream: &[u8], max: usize, room: usize, mut seed: u32) -> Outcome {
    let mut decoder = Decoder::new(max);
    decoder.allow(room);
    let mut messages = Vec::new();
    let bound = 4 * (MAX_HEADER + max + MAX_CHUNK);
    let mut rest = stream;
    while !rest.is_empty() {
        // xorshift: chunk sizes from 1 to MAX_CHUNK, as the input's seed says.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let want = (seed as usize % MAX_CHUNK) + 1;
        let limit = decoder.read_limit();
        assert!(limit > 0, "the decoder asks for nothing more while a frame is in flight");
        let n = want.min(limit).min(rest.len());
        decoder.extend(&rest[..n]);
        rest = &rest[n..];
        if let Err(e) = drain(&mut decoder, &mut messages) {
            return (messages, Some(e));
        }
        let wants = decoder.wants();
        assert!(wants <= bound, "the decoder holds {wants} bytes for messages of at most {max}");
        if wants > room {
            // As a session does once its frame budget lets it.
            decoder.allow(wants);
        }
    }
    (messages, None)
}

fn check(message: &Message, max: usize) {
    let mut out = Vec::new();
    match message {
        Message::Text(t) => {
            assert!(t.len() <= max);
            assert!(std::str::from_utf8(t).is_ok(), "text that is not UTF-8 was decoded");
            codec::encode(&mut out, Opcode::Text, t);
        }
        Message::Binary(b) => {
            assert!(b.len() <= max);
            codec::encode(&mut out, Opcode::Binary, b);
        }
        Message::Ping(p) => {
            assert!(p.len() <= 125, "a ping of {} bytes", p.len());
            codec::encode(&mut out, Opcode::Pong, p);
        }
        Message::Pong => codec::encode(&mut out, Opcode::Pong, &[]),
        Message::Close(code) => {
            if let Some(code) = *code {
                assert!(codec::valid_close_code(code), "close code {code} was accepted");
                codec::encode_close(&mut out, code, "");
            }
        }
    }
    if !out.is_empty() {
        assert_eq!(codec::encoded_len(&out), Some(out.len()), "a frame the codec encoded does not read back");
    }
}

fuzz_target!(|data: &[u8]| {
    let [max, room, s0, s1, stream @ ..] = data else { return };
    // Message limits from 0 to 1020 bytes: small enough that the input reaches them.
    let max = usize::from(*max) * 4;
    // Either no limit on the room made for a frame, or a small one (the frame budget).
    let room = if *room == 0xff { usize::MAX } else { usize::from(*room) * 2 };
    let seed = u32::from_le_bytes([*s0, *s1, 0x5e, 0x1a]) | 1;
    let at_once = whole(stream, max);
    let split = chunked(stream, max, room, seed);
    assert_eq!(at_once, split, "chunking changed what the stream decodes to");
    for m in &split.0 {
        check(m, max);
    }
    if let Some(e) = &split.1 {
        assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
    }
});
