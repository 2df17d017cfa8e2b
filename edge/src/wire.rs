//! Frames on their way to a client, encoded once for the session's wire format: what fan-out
//! queues, what a session writes and what a transport carries (ARCHITECTURE §4).

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use selvage_shared::{Cursor, Event, Format};

/// One frame on its way to a client, already encoded for the session's format.
#[derive(Clone, Debug)]
pub enum Wire {
    /// A JSON frame (WebSocket text).
    Text(Utf8Bytes),
    /// A MessagePack frame (WebSocket binary, or the body of a QUIC frame).
    Binary(Bytes),
}

impl Wire {
    /// Encodes `bytes` made by the codec for `format`.
    pub fn from_encoded(bytes: Vec<u8>, format: Format) -> Wire {
        match format {
            // The codec's JSON output is UTF-8; a failure here would be a codec bug, and
            // sending it as binary then is still a faithful copy.
            Format::Json => match String::from_utf8(bytes) {
                Ok(s) => Wire::Text(Utf8Bytes::from(s)),
                Err(e) => Wire::Binary(Bytes::from(e.into_bytes())),
            },
            Format::MsgPack => Wire::Binary(Bytes::from(bytes)),
        }
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        match self {
            Wire::Text(t) => t.len(),
            Wire::Binary(b) => b.len(),
        }
    }

    /// Whether the frame is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An event frame encoded for `format`.
pub fn event_wire(cursor: &Cursor, event: &Event, format: Format) -> Wire {
    Wire::from_encoded(selvage_shared::encode_event(cursor, event, format), format)
}
