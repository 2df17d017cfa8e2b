//! Codecs: frames to and from JSON or MessagePack bytes, with the size, depth and validity checks
//! that untrusted input needs.
//!
//! Clients pick a [`Format`] when they connect (`?format=json|msgpack`). JSON frames are UTF-8
//! text; MessagePack frames use named fields (maps, never positional arrays) so either side can
//! add fields. [`decode_client`] is the only door for client bytes: it refuses oversized frames
//! before parsing, caps nesting depth, rejects trailing bytes and validates the parsed frame, and
//! it never panics. [`to_msgpack`] and [`from_msgpack`] serve the origin's stored values and the
//! feed.

use std::fmt;
use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ErrorCode;
use crate::event::Event;
use crate::frame::{ClientFrame, FeedFrame, FeedRequest, ServerFrame};
use crate::ids::Cursor;
use crate::limits::{MAX_CLIENT_FRAME_BYTES, MAX_CLIENT_FRAME_DEPTH, MAX_FEED_FRAME_BYTES, MAX_REQUEST_ID_BYTES};

/// Deepest nesting accepted when decoding anything other than a client frame (the same limit
/// serde_json applies).
const MAX_DEPTH: usize = 128;

/// Longest error detail kept from a parser. Parser messages may quote input (e.g. an unknown
/// `"type"`), and decode errors go back to clients, so they are cut short.
const MAX_DETAIL_CHARS: usize = 200;

/// A wire format of the client protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON in WebSocket text frames (the default).
    #[default]
    Json,
    /// MessagePack with named fields in WebSocket binary frames (and on QUIC streams).
    MsgPack,
}

impl Format {
    /// Parses the `?format=` value: `"json"` or `"msgpack"`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "msgpack" => Some(Format::MsgPack),
            _ => None,
        }
    }

    /// The `?format=` value of this format.
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::MsgPack => "msgpack",
        }
    }

    /// Whether frames of this format travel as binary (rather than text) WebSocket messages.
    pub fn is_binary(&self) -> bool {
        matches!(self, Format::MsgPack)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes could not be decoded into a frame or value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input exceeds the size limit; it was refused without being parsed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the input, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The input is not a well-formed frame: bad syntax, unknown type or field, wrong field type,
    /// invalid id, trailing bytes.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame parsed but breaks a protocol rule (empty text, text too long, limit too high…).
    #[error("invalid frame: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// The protocol error code to report: `too_large` for oversized input, `bad_frame` otherwise.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
            DecodeError::Malformed(_) | DecodeError::Invalid(_) => ErrorCode::BadFrame,
        }
    }

    fn malformed(err: impl fmt::Display) -> DecodeError {
        let mut detail = err.to_string();
        if let Some((cut, _)) = detail.char_indices().nth(MAX_DETAIL_CHARS) {
            detail.truncate(cut);
            detail.push('…');
        }
        DecodeError::Malformed(detail)
    }
}

/// A value could not be encoded: only possible for a type whose `Serialize` impl fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode value: {0}")]
pub struct EncodeError(String);

fn check_size(bytes: &[u8], max: usize) -> Result<(), DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge { len: bytes.len(), max });
    }
    Ok(())
}

fn json_decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(DecodeError::malformed)
}

/// Decodes exactly one MessagePack value spanning all of `bytes`, nesting at most `depth` deep.
fn msgpack_decode<T: DeserializeOwned>(bytes: &[u8], depth: usize) -> Result<T, DecodeError> {
    let mut de = rmp_serde::Deserializer::new(io::Cursor::new(bytes));
    de.set_max_depth(depth);
    let value = T::deserialize(&mut de).map_err(DecodeError::malformed)?;
    if de.position() != bytes.len() as u64 {
        return Err(DecodeError::Malformed("trailing bytes after the value".into()));
    }
    Ok(value)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], format: Format, depth: usize) -> Result<T, DecodeError> {
    match format {
        Format::Json => json_decode(bytes),
        Format::MsgPack => msgpack_decode(bytes, depth),
    }
}

/// Encodes a frame of this crate. Cannot fail: every type involved has derived `Serialize` impls
/// (or ones that only call `serialize_str`) with no maps, so neither serde_json (which fails only
/// on non-string map keys or failing impls) nor rmp-serde (which fails only on failing impls,
/// misused extension types or nesting beyond 1024, and buffers unknown-length maps) can fail, and
/// writing to a `Vec` cannot fail either. The round-trip property tests exercise every variant.
fn encode_infallible<T: Serialize + ?Sized>(value: &T, format: Format) -> Vec<u8> {
    let result = match format {
        Format::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        Format::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
    };
    #[allow(clippy::expect_used)]
    result.expect("encoding a selvage-shared frame cannot fail (see encode_infallible)")
}

/// Encodes a frame for a client: JSON text bytes or named-field MessagePack.
pub fn encode_server(frame: &ServerFrame, format: Format) -> Vec<u8> {
    encode_infallible(frame, format)
}

/// Encodes an event frame from borrowed parts, byte-for-byte the same as
/// `encode_server(&ServerFrame::event(cursor, event), format)` without cloning the event: fan-out
/// encodes each event once per format.
pub fn encode_event(cursor: &Cursor, event: &Event, format: Format) -> Vec<u8> {
    #[derive(Serialize)]
    struct EventFrameRef<'a> {
        #[serde(flatten)]
        event: &'a Event,
        cursor: &'a Cursor,
    }
    encode_infallible(&EventFrameRef { event, cursor }, format)
}

/// Decodes and validates a frame from a client.
///
/// Refuses input over [`MAX_CLIENT_FRAME_BYTES`] without parsing it ([`DecodeError::TooLarge`]);
/// then parses, rejecting unknown types and fields, invalid ids and (MessagePack) trailing bytes
/// or nesting deeper than [`MAX_CLIENT_FRAME_DEPTH`] ([`DecodeError::Malformed`]); then applies
/// [`ClientFrame::validate`] ([`DecodeError::Invalid`]). Never panics, whatever the bytes.
pub fn decode_client(bytes: &[u8], format: Format) -> Result<ClientFrame, DecodeError> {
    decode_client_request(bytes, format).map_err(|(e, _)| e)
}

/// [`decode_client`], answering with a refusal the request id of a frame that parsed but
/// failed [`ClientFrame::validate`] (a request whose sender waits for its `reply_to`); `None`
/// for frames that do not parse, have no id or one over [`MAX_REQUEST_ID_BYTES`].
pub fn decode_client_request(bytes: &[u8], format: Format) -> Result<ClientFrame, (DecodeError, Option<String>)> {
    check_size(bytes, MAX_CLIENT_FRAME_BYTES).map_err(|e| (e, None))?;
    let frame: ClientFrame = decode(bytes, format, MAX_CLIENT_FRAME_DEPTH).map_err(|e| (e, None))?;
    match frame.validate() {
        Ok(()) => Ok(frame),
        Err(e) => {
            let id = frame.request_id().filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES);
            Err((e, id.map(str::to_owned)))
        }
    }
}

/// Encodes a client frame (for SDKs, the load tester and tests). Does not validate it.
pub fn encode_client(frame: &ClientFrame, format: Format) -> Vec<u8> {
    encode_infallible(frame, format)
}

/// Decodes a frame from an edge (for SDKs, the load tester and tests). Applies no size limit:
/// the transport must cap message sizes.
pub fn decode_server(bytes: &[u8], format: Format) -> Result<ServerFrame, DecodeError> {
    decode(bytes, format, MAX_DEPTH)
}

/// Encodes a value as MessagePack with named fields, the format of stored values and feed frames
/// (named fields let the schema evolve).
///
/// # Panics
///
/// Only if `T`'s `Serialize` impl reports an error, which derived impls of plain data never do;
/// use [`try_to_msgpack`] for types whose impls can fail.
pub fn to_msgpack<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    to_msgpack_sized(v, 0)
}

/// [`to_msgpack`] into a buffer that starts with room for `capacity` bytes, for callers that
/// know about how large the encoding will be (it grows as needed).
pub fn to_msgpack_sized<T: Serialize + ?Sized>(v: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    #[allow(clippy::expect_used)]
    rmp_serde::encode::write_named(&mut out, v).expect("Serialize impl of a stored or feed value failed");
    out
}

/// Encodes a value as MessagePack with named fields, reporting a failing `Serialize` impl.
pub fn try_to_msgpack<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, EncodeError> {
    rmp_serde::to_vec_named(v).map_err(|e| EncodeError(e.to_string()))
}

/// Decodes a MessagePack value (stored value or feed payload). The value must span all of `b`.
pub fn from_msgpack<T: DeserializeOwned>(b: &[u8]) -> Result<T, DecodeError> {
    msgpack_decode(b, MAX_DEPTH)
}

/// Decodes a feed frame from the origin, refusing input over [`MAX_FEED_FRAME_BYTES`].
pub fn decode_feed_frame(bytes: &[u8]) -> Result<FeedFrame, DecodeError> {
    check_size(bytes, MAX_FEED_FRAME_BYTES)?;
    msgpack_decode(bytes, MAX_DEPTH)
}

/// Decodes a feed request from an edge, refusing input over [`MAX_CLIENT_FRAME_BYTES`] (requests
/// are tiny).
pub fn decode_feed_request(bytes: &[u8]) -> Result<FeedRequest, DecodeError> {
    check_size(bytes, MAX_CLIENT_FRAME_BYTES)?;
    msgpack_decode(bytes, MAX_DEPTH)
}
