//! What more than one fuzz target checks (docs/FUZZING.md): the properties of the client
//! frame decoder, shared by the JSON and MessagePack targets.

use selvage_shared::{decode_client, encode_client, DecodeError, Format, MAX_CLIENT_FRAME_BYTES};

/// The longest detail of a `Malformed` error: the codec cuts parser messages to 200
/// characters and marks the cut with `…`, because they go back to the client.
const MAX_DETAIL_CHARS: usize = 201;

/// Decodes `bytes` as a client would send them in `format` and checks what the codec
/// promises: it never panics; input over the limit is refused as too large and nothing else
/// is; an error's detail is short; JSON it accepts is UTF-8; and a frame it accepts is valid,
/// and encodes, in either format, to bytes that decode to the same frame.
pub fn client_frame(bytes: &[u8], format: Format) {
    match decode_client(bytes, format) {
        Err(DecodeError::TooLarge { len, max }) => {
            assert_eq!((len, max), (bytes.len(), MAX_CLIENT_FRAME_BYTES));
            assert!(len > max, "refused as too large at {len} bytes, within the limit");
        }
        Err(DecodeError::Malformed(detail)) => {
            assert!(bytes.len() <= MAX_CLIENT_FRAME_BYTES);
            assert!(detail.chars().count() <= MAX_DETAIL_CHARS, "detail not cut: {detail:?}");
        }
        Err(DecodeError::Invalid(_)) => assert!(bytes.len() <= MAX_CLIENT_FRAME_BYTES),
        Ok(frame) => {
            if format == Format::Json {
                assert!(std::str::from_utf8(bytes).is_ok(), "a JSON frame that is not UTF-8 was accepted");
            }
            frame.validate().expect("a decoded frame is valid");
            for again in [Format::Json, Format::MsgPack] {
                let encoded = encode_client(&frame, again);
                match decode_client(&encoded, again) {
                    Ok(back) => assert_eq!(back, frame, "{again} round trip changed the frame"),
                    // A frame near the limit may grow past it in the other format.
                    Err(DecodeError::TooLarge { .. }) if again != format => {}
                    Err(e) => panic!("{frame:?} encoded as {again} does not decode: {e}"),
                }
            }
        }
    }
}
