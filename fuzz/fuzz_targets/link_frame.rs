//! Length-prefixed MessagePack frames as they come off a QUIC stream (`shared/src/link.rs`):
//! the link both ways (what the origin reads from an edge: `LinkOpen`, `LinkCall`, feed
//! requests; what an edge reads from the origin: `LinkReply`, feed frames) and the first frame of
//! a client's QUIC stream (`ClientOpen`).
//!
//! The input is a stream of frames: each 4-byte prefix goes through `frame_len` with a limit
//! the input picks, and its body (or what is left of the stream) through every decoder. Checks
//! that nothing panics, that `frame_len` answers exactly the prefix's length when within the
//! limit, and that whatever decodes re-encodes (`encode_frame`) to a frame that reads back the
//! same.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use selvage_shared::link::{
    encode_frame, frame_len, LinkCall, LinkOpen, LinkReply, FRAME_PREFIX_BYTES, MAX_LINK_FRAME_BYTES,
};
use selvage_shared::{decode_feed_frame, decode_feed_request, from_msgpack, ClientOpen, DecodeError};
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T>(decoded: Result<T, DecodeError>)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(value) = decoded else { return };
    let frame = encode_frame(&value).expect("a decoded value fits a link frame again");
    let prefix: [u8; FRAME_PREFIX_BYTES] = frame[..FRAME_PREFIX_BYTES].try_into().expect("a prefix");
    let len = frame_len(prefix, MAX_LINK_FRAME_BYTES).expect("its own length is within the limit");
    assert_eq!(len, frame.len() - FRAME_PREFIX_BYTES);
    let back: T = from_msgpack(&frame[FRAME_PREFIX_BYTES..]).expect("an encoded value decodes");
    assert_eq!(back, value, "re-encoding changed the value");
}

fn body(bytes: &[u8]) {
    round_trip(from_msgpack::<LinkOpen>(bytes));
    round_trip(from_msgpack::<LinkCall>(bytes));
    round_trip(from_msgpack::<LinkReply>(bytes));
    round_trip(from_msgpack::<ClientOpen>(bytes));
    round_trip(decode_feed_request(bytes));
    round_trip(decode_feed_frame(bytes));
}

fuzz_target!(|data: &[u8]| {
    let [limit, rest @ ..] = data else { return };
    let mut stream = rest;
    // Limits from tiny to the link's own, as the origin, the edge and client QUIC set them.
    let max = match limit % 4 {
        0 => usize::from(*limit),
        1 => 1 << 16,
        2 => selvage_shared::MAX_CLIENT_FRAME_BYTES,
        _ => MAX_LINK_FRAME_BYTES,
    };
    while stream.len() >= FRAME_PREFIX_BYTES {
        let (prefix, rest) = stream.split_at(FRAME_PREFIX_BYTES);
        let prefix: [u8; FRAME_PREFIX_BYTES] = prefix.try_into().expect("split at the prefix's length");
        let announced = u32::from_be_bytes(prefix) as usize;
        match frame_len(prefix, max) {
            Ok(len) => {
                assert_eq!(len, announced);
                assert!(len <= max);
                // A stream that ends early gives what it has: the readers refuse it as
                // truncated, but the decoders must take any bytes.
                let (frame, next) = rest.split_at(len.min(rest.len()));
                body(frame);
                stream = next;
            }
            Err(DecodeError::TooLarge { len, max: m }) => {
                assert_eq!((len, m), (announced, max));
                assert!(len > max);
                // The reader stops here; the decoders still get the rest.
                body(rest);
                return;
            }
            Err(e) => panic!("frame_len answered {e}"),
        }
    }
    body(stream);
});
