//! Property tests: every frame and stored value round-trips through JSON and MessagePack, both
//! formats carry the same object shape, and no decoder panics on arbitrary bytes.

mod common;

use common::*;
use proptest::prelude::*;
use selvage_shared::*;

const FORMATS: [Format; 2] = [Format::Json, Format::MsgPack];

/// The object a MessagePack encoding carries, as JSON, to compare shapes across formats.
fn msgpack_as_json(bytes: &[u8]) -> serde_json::Value {
    rmp_serde::from_slice(bytes).expect("msgpack decodes as a generic value")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        for format in FORMATS {
            let bytes = encode_client(&frame, format);
            prop_assert_eq!(decode_client(&bytes, format), Ok(frame.clone()), "{}", format);
        }
        let json: serde_json::Value = serde_json::from_slice(&encode_client(&frame, Format::Json)).unwrap();
        prop_assert_eq!(msgpack_as_json(&encode_client(&frame, Format::MsgPack)), json);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        for format in FORMATS {
            let bytes = encode_server(&frame, format);
            prop_assert_eq!(decode_server(&bytes, format), Ok(frame.clone()), "{}", format);
        }
        let json: serde_json::Value = serde_json::from_slice(&encode_server(&frame, Format::Json)).unwrap();
        prop_assert_eq!(&json["type"], frame.kind());
        prop_assert_eq!(msgpack_as_json(&encode_server(&frame, Format::MsgPack)), json);
    }

    #[test]
    fn encode_event_matches_encode_server(cursor in cursor(), event in event()) {
        let frame = ServerFrame::event(cursor.clone(), event.clone());
        for format in FORMATS {
            prop_assert_eq!(encode_event(&cursor, &event, format), encode_server(&frame, format));
        }
    }

    #[test]
    fn feed_events_round_trip(entry in feed_event()) {
        prop_assert_eq!(from_msgpack::<FeedEvent>(&to_msgpack(&entry)), Ok(entry.clone()));
        let json = serde_json::to_vec(&entry).unwrap();
        prop_assert_eq!(serde_json::from_slice::<FeedEvent>(&json).unwrap(), entry);
    }

    #[test]
    fn feed_frames_round_trip(frame in feed_frame()) {
        prop_assert_eq!(decode_feed_frame(&to_msgpack(&frame)), Ok(frame.clone()));
        let json = serde_json::to_vec(&frame).unwrap();
        prop_assert_eq!(serde_json::from_slice::<FeedFrame>(&json).unwrap(), frame);
    }

    #[test]
    fn feed_requests_round_trip(req in feed_request()) {
        prop_assert_eq!(decode_feed_request(&to_msgpack(&req)), Ok(req.clone()));
        let json = serde_json::to_vec(&req).unwrap();
        prop_assert_eq!(serde_json::from_slice::<FeedRequest>(&json).unwrap(), req);
    }

    #[test]
    fn decode_client_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for format in FORMATS {
            let _ = decode_client(&bytes, format);
        }
        let _ = decode_server(&bytes, Format::MsgPack);
        let _ = decode_feed_frame(&bytes);
        let _ = from_msgpack::<FeedEvent>(&bytes);
    }

    /// Valid frames with bytes flipped, truncated or appended: closer to real attacks than
    /// uniform noise, which rarely gets past the first byte.
    #[test]
    fn decode_client_never_panics_on_mutated_frames(
        frame in client_frame(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        for format in FORMATS {
            let mut bytes = encode_client(&frame, format);
            for (at, b) in &flips {
                let i = at.index(bytes.len());
                bytes[i] = *b;
            }
            let _ = decode_client(&bytes, format);
            bytes.extend_from_slice(&tail);
            let _ = decode_client(&bytes, format);
            let _ = decode_client(&bytes[..cut.index(bytes.len())], format);
        }
    }
}
