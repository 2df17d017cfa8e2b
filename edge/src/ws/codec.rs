//! WebSocket framing (RFC 6455) as the edge speaks it: it decodes what a client sends and
//! encodes what the edge writes. No I/O, so it can be tested alone.
//!
//! Idle sessions are most of an edge's sessions, so the decoder holds memory only while a frame
//! is in flight: bytes that do not make a whole frame yet are kept, and released as soon as the
//! frame is complete ([`Decoder::is_idle`]). No extension is negotiated (no compression), so
//! the reserved bits must be clear; client frames must be masked, server frames are not.

/// The largest header a frame can have: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// The longest close reason that fits a control frame (125 bytes less the code's 2).
pub const MAX_CLOSE_REASON: usize = 123;

/// Frame opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// The rest of a fragmented message.
    Continuation,
    /// A UTF-8 message.
    Text,
    /// A binary message.
    Binary,
    /// The close handshake.
    Close,
    /// A ping (to be answered with a pong carrying the same payload).
    Ping,
    /// A pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(Vec<u8>),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping, with its payload (the pong echoes it).
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The client starts (or answers) the close handshake, with its code if it gave one.
    Close(Option<u16>),
}

/// Why the client's bytes are not a WebSocket stream the edge accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A frame or message over the size limit (close code 1009).
    #[error("message over {0} bytes")]
    TooLarge(usize),
    /// A text message or a close reason that is not UTF-8 (close code 1007).
    #[error("text is not UTF-8")]
    NotUtf8,
    /// Anything else against RFC 6455 (close code 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl DecodeError {
    /// The close code that tells the client why (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::TooLarge(_) => 1009,
            DecodeError::NotUtf8 => 1007,
            DecodeError::Protocol(_) => 1002,
        }
    }
}

/// Whether an endpoint may put `code` in a close frame (RFC 6455 §7.4): 1000–1003 and
/// 1007–1014 are defined for that (1012–1014 by the IANA registry after the RFC), 3000–4999 are
/// for libraries and applications. 1004 is reserved; 1005, 1006 and 1015 only report what
/// happened and are never sent; the rest below 3000 is unassigned, and nothing above 4999 is a
/// code. A client's close with any of those is a protocol error.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Partial {
    text: bool,
    payload: Vec<u8>,
}

/// A frame's header, once it is all there.
#[derive(Clone, Copy, Debug)]
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    /// Bytes of header before the payload.
    len: usize,
    /// Bytes of payload.
    payload: usize,
}

/// UTF-8 checked as it arrives, so that a client sending text that is not UTF-8 is told at
/// once rather than when its message is complete: a character may be split across frames of
/// a message or across reads of one frame, and its first bytes (at most 3) wait in `tail` for
/// the rest. Four bytes: every idle session carries one.
#[derive(Debug, Default)]
struct Utf8 {
    tail: [u8; 3],
    tail_len: u8,
}

impl Utf8 {
    /// Checks the next bytes of a text message.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), DecodeError> {
        if self.tail_len > 0 {
            // The tail starts with a lead byte the last check accepted as the start of a
            // character; complete it (or as much as came).
            let have = usize::from(self.tail_len);
            let mut char = [0u8; 4];
            char[..have].copy_from_slice(&self.tail[..have]);
            let width: usize = match char[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = width.saturating_sub(have).min(bytes.len());
            char[have..have + take].copy_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let now = have + take;
            match std::str::from_utf8(&char[..now]) {
                Ok(_) => self.tail_len = 0,
                // Still short of a whole character: every byte given went into it.
                Err(e) if e.error_len().is_none() => return self.keep(&char[..now]),
                Err(_) => return Err(DecodeError::NotUtf8),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            // A character cut short at the end: the rest may follow.
            Err(e) if e.error_len().is_none() => self.keep(&bytes[e.valid_up_to()..]),
            Err(_) => Err(DecodeError::NotUtf8),
        }
    }

    /// Keeps the start of a character (never more than 3 bytes, or it would be whole).
    fn keep(&mut self, start: &[u8]) -> Result<(), DecodeError> {
        let (Some(tail), Ok(len)) = (self.tail.get_mut(..start.len()), u8::try_from(start.len())) else {
            return Err(DecodeError::NotUtf8);
        };
        tail.copy_from_slice(start);
        self.tail_len = len;
        Ok(())
    }

    /// The message ended: a character still cut short is not UTF-8.
    fn finish(&mut self) -> Result<(), DecodeError> {
        let whole = self.tail_len == 0;
        *self = Utf8::default();
        if whole {
            Ok(())
        } else {
            Err(DecodeError::NotUtf8)
        }
    }
}

/// Client frames in, whole messages out.
///
/// What breaks the protocol is refused as soon as the bytes that break it arrive: a frame's
/// header is checked before its payload comes (its size, its place in a fragmented message),
/// and a text frame's payload is unmasked and checked for UTF-8 read by read.
#[derive(Debug)]
pub struct Decoder {
    /// Bytes received and not yet decoded; no allocation between frames.
    pending: Vec<u8>,
    /// How much of the payload of the frame at the front of `pending` is already unmasked (and,
    /// for text, checked). 32 bits, as messages are (see [`Decoder::new`]), to keep the
    /// decoder small.
    unmasked: u32,
    /// A fragmented message whose last frame has not come yet.
    partial: Option<Partial>,
    /// The text message in flight, checked so far.
    utf8: Utf8,
    /// The largest message (and frame) accepted.
    max_message: usize,
    /// The most the decoder makes room for to finish a frame (see [`Decoder::wants`]); the
    /// connection raises it once its frame budget allows.
    room: usize,
    /// Why the stream was refused, once it was: nothing after that is decoded. Boxed: every
    /// idle session carries its decoder, and a refusal is rare.
    refused: Option<Box<DecodeError>>,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes (at most 4 GiB less a byte).
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            pending: Vec::new(),
            unmasked: 0,
            partial: None,
            utf8: Utf8::default(),
            max_message: max_message.min(u32::MAX as usize),
            room: usize::MAX,
            refused: None,
        }
    }

    /// What the decoder will hold once the frame in flight has all come: the whole frame, and
    /// the message it continues (or, before a header has come, what it holds now).
    pub fn wants(&self) -> usize {
        let partial = self.partial.as_ref().map_or(0, |p| p.payload.capacity());
        match self.header() {
            Ok(Some(h)) => {
                let grows = if h.opcode == Opcode::Continuation { h.payload } else { 0 };
                (h.len + h.payload).max(self.pending.len()) + partial + grows
            }
            _ => self.pending.capacity() + partial,
        }
    }

    /// Lets the decoder make room for frames whose [`wants`](Decoder::wants) are up to `room`
    /// bytes; a larger one waits, unread, until it is allowed.
    pub fn allow(&mut self, room: usize) {
        self.room = room;
        if let Ok(Some(h)) = self.header() {
            let total = h.len + h.payload;
            if self.pending.len() < total && self.wants() <= room {
                self.pending.reserve_exact(total - self.pending.len());
            }
        }
    }

    /// The most to read from the client next: the rest of the frame in flight, so that its
    /// buffer never grows past the room made for it; anything while no header has come.
    pub fn read_limit(&self) -> usize {
        match self.header() {
            Ok(Some(h)) if self.pending.len() < h.len + h.payload => h.len + h.payload - self.pending.len(),
            _ => usize::MAX,
        }
    }

    /// Whether the decoder holds no memory: no frame or message is in flight.
    pub fn is_idle(&self) -> bool {
        self.pending.capacity() == 0 && self.partial.is_none()
    }

    /// Hands the decoder bytes read from the client.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole message, if the bytes received so far hold one. After an error the
    /// stream is broken — every later call returns the same error, and what was held is
    /// released — and the connection is to be closed with [`DecodeError::close_code`].
    pub fn decode(&mut self) -> Result<Option<Message>, DecodeError> {
        if let Some(e) = &self.refused {
            return Err((**e).clone());
        }
        let decoded = self.next_message();
        if let Err(e) = &decoded {
            self.refused = Some(Box::new(e.clone()));
            self.pending = Vec::new();
            self.partial = None;
        }
        decoded
    }

    fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        loop {
            let Some((header, payload)) = self.frame()? else { return Ok(None) };
            match header.opcode {
                Opcode::Ping => return Ok(Some(Message::Ping(payload))),
                Opcode::Pong => return Ok(Some(Message::Pong)),
                Opcode::Close => return close(&payload).map(|code| Some(Message::Close(code))),
                Opcode::Text | Opcode::Binary => {
                    let text = header.opcode == Opcode::Text;
                    if header.fin {
                        return self.whole(text, payload).map(Some);
                    }
                    self.partial = Some(Partial { text, payload });
                }
                Opcode::Continuation => {
                    // The header check let a continuation through only inside a message.
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(DecodeError::Protocol("a continuation frame outside a message"));
                    };
                    // Exactly: a doubling would hold up to twice what the frame budget counts.
                    partial.payload.reserve_exact(payload.len());
                    partial.payload.extend_from_slice(&payload);
                    if header.fin {
                        if let Some(Partial { text, payload }) = self.partial.take() {
                            return self.whole(text, payload).map(Some);
                        }
                    }
                }
            }
        }
    }

    fn whole(&mut self, text: bool, payload: Vec<u8>) -> Result<Message, DecodeError> {
        if !text {
            return Ok(Message::Binary(payload));
        }
        // Every byte was checked as it came; only a character cut short at the end is left.
        self.utf8.finish()?;
        Ok(Message::Text(payload))
    }

    /// The next whole frame and its unmasked payload. What has come of a frame still in flight
    /// is unmasked and, for text, checked.
    fn frame(&mut self) -> Result<Option<(Header, Vec<u8>)>, DecodeError> {
        let Some(header) = self.header()? else { return Ok(None) };
        let arrived = (self.pending.len() - header.len).min(header.payload);
        let from = self.unmasked as usize;
        if arrived > from {
            let bytes = &mut self.pending[header.len + from..header.len + arrived];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b ^= header.mask[(from + i) % 4];
            }
            // A payload is at most `max_message`, which fits.
            self.unmasked = u32::try_from(arrived).unwrap_or(u32::MAX);
            let text = match header.opcode {
                Opcode::Text => true,
                Opcode::Continuation => self.partial.as_ref().is_some_and(|p| p.text),
                _ => false,
            };
            if text {
                self.utf8.feed(bytes)?;
            }
        }
        let total = header.len + header.payload;
        if self.pending.len() < total {
            // Room for the whole frame once, however many reads it takes to come — if it is
            // allowed that much.
            if self.wants() <= self.room {
                self.pending.reserve_exact(total - self.pending.len());
            }
            return Ok(None);
        }
        self.unmasked = 0;
        let payload = if self.pending.len() == total {
            // The buffer becomes the payload, not copied: an idle session holds none, and a
            // large frame is never held twice.
            let mut payload = std::mem::take(&mut self.pending);
            payload.drain(..header.len);
            payload
        } else {
            let payload = self.pending[header.len..total].to_vec();
            self.pending.drain(..total);
            payload
        };
        Ok(Some((header, payload)))
    }

    /// The header at the front of `pending`, once it is all there, checked against what may
    /// come next.
    fn header(&self) -> Result<Option<Header>, DecodeError> {
        let b = &self.pending;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(DecodeError::Protocol("reserved bits set without an extension"));
        }
        let opcode = Opcode::from_bits(b[0] & 0x0F).ok_or(DecodeError::Protocol("unknown opcode"))?;
        if b[1] & 0x80 == 0 {
            return Err(DecodeError::Protocol("client frames must be masked"));
        }
        let (len, at) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(bytes), 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() && (!fin || len > 125) {
            return Err(DecodeError::Protocol("control frames are short and whole"));
        }
        let in_message = self.partial.as_ref().map(|p| p.payload.len());
        match (opcode, in_message) {
            (Opcode::Continuation, None) => {
                return Err(DecodeError::Protocol("a continuation frame outside a message"))
            }
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                return Err(DecodeError::Protocol("a new message inside a fragmented one"))
            }
            _ => {}
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let so_far = if opcode == Opcode::Continuation { in_message.unwrap_or(0) } else { 0 };
        if len > self.max_message || so_far + len > self.max_message {
            return Err(DecodeError::TooLarge(self.max_message));
        }
        if b.len() < at + 4 {
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        Ok(Some(Header { fin, opcode, mask, len: at + 4, payload: len }))
    }
}

fn close(payload: &[u8]) -> Result<Option<u16>, DecodeError> {
    match payload {
        [] => Ok(None),
        [_] => Err(DecodeError::Protocol("a close frame with half a code")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(code) {
                return Err(DecodeError::Protocol("a close code no endpoint may send"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(DecodeError::NotUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// The length of the frame at the front of `bytes`, a stream of frames this module encoded
/// (unmasked); `None` if it is not all there.
pub fn encoded_len(bytes: &[u8]) -> Option<usize> {
    let (len, at): (usize, usize) = match *bytes.get(1)? & 0x7F {
        126 => (usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])), 4),
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(bytes.get(2..10)?);
            (usize::try_from(u64::from_be_bytes(len)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let total = at.checked_add(len)?;
    (total <= bytes.len()).then_some(total)
}

/// Appends one whole, unmasked frame (what a server sends) to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    let mut header = [0u8; MAX_HEADER];
    header[0] = 0x80 | opcode.bits();
    let len = payload.len();
    let header_len = if len < 126 {
        header[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    out.reserve(header_len + len);
    out.extend_from_slice(&header[..header_len]);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and as much of `reason` as fits (cut at a character).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; 2 + MAX_CLOSE_REASON];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode(out, Opcode::Close, &payload[..2 + end]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame: masked with `mask`.
    fn client(fin: bool, opcode: Opcode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(if fin { 0x80 } else { 0 } | opcode.bits());
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn all(decoder: &mut Decoder) -> Result<Vec<Message>, DecodeError> {
        let mut out = Vec::new();
        while let Some(m) = decoder.decode()? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn decodes_messages_and_holds_nothing_between_them() {
        let mut d = Decoder::new(1 << 20);
        assert!(d.is_idle());
        let mut bytes = client(true, Opcode::Text, br#"{"type":"ping","id":"1"}"#, [1, 2, 3, 4]);
        bytes.extend(client(true, Opcode::Ping, b"hi", [9, 9, 9, 9]));
        bytes.extend(client(true, Opcode::Binary, &[0u8; 300], [7, 0, 7, 0]));
        bytes.extend(client(true, Opcode::Binary, &vec![5u8; 70_000], [7, 0, 7, 0]));
        d.extend(&bytes);
        let got = all(&mut d).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], Message::Text(br#"{"type":"ping","id":"1"}"#.to_vec()));
        assert_eq!(got[1], Message::Ping(b"hi".to_vec()));
        assert_eq!(got[2], Message::Binary(vec![0u8; 300]));
        assert_eq!(got[3], Message::Binary(vec![5u8; 70_000]));
        assert!(d.is_idle(), "the buffer is released once the frames are decoded");
    }

    #[test]
    fn a_frame_in_flight_is_held_then_released() {
        let mut d = Decoder::new(1 << 20);
        let bytes = client(true, Opcode::Binary, &[3u8; 5000], [1, 1, 1, 1]);
        d.extend(&bytes[..1000]);
        assert_eq!(d.decode().unwrap(), None);
        assert!(!d.is_idle());
        d.extend(&bytes[1000..]);
        assert_eq!(d.decode().unwrap(), Some(Message::Binary(vec![3u8; 5000])));
        assert!(d.is_idle());
    }

    #[test]
    fn fragments_join_around_control_frames() {
        let mut d = Decoder::new(1 << 20);
        let mut bytes = client(false, Opcode::Text, b"hel", [1, 2, 3, 4]);
        bytes.extend(client(true, Opcode::Ping, b"", [0; 4]));
        bytes.extend(client(false, Opcode::Continuation, b"lo ", [4, 3, 2, 1]));
        bytes.extend(client(true, Opcode::Continuation, b"there", [4, 4, 2, 1]));
        d.extend(&bytes);
        assert_eq!(all(&mut d).unwrap(), vec![Message::Ping(vec![]), Message::Text(b"hello there".to_vec())]);
        assert!(d.is_idle());
    }

    #[test]
    fn refuses_what_rfc_6455_refuses() {
        let refused = |bytes: Vec<u8>| {
            let mut d = Decoder::new(1000);
            d.extend(&bytes);
            all(&mut d).unwrap_err()
        };
        assert_eq!(refused(client(true, Opcode::Binary, &[0; 1001], [0; 4])), DecodeError::TooLarge(1000));
        let mut two = client(false, Opcode::Binary, &[0; 600], [0; 4]);
        two.extend(client(true, Opcode::Continuation, &[0; 600], [0; 4]));
        assert_eq!(refused(two), DecodeError::TooLarge(1000));
        assert_eq!(refused(client(true, Opcode::Text, &[0xff, 0xfe], [0; 4])), DecodeError::NotUtf8);
        assert!(matches!(refused(client(true, Opcode::Continuation, b"x", [0; 4])), DecodeError::Protocol(_)));
        assert!(matches!(refused(client(false, Opcode::Ping, b"x", [0; 4])), DecodeError::Protocol(_)));
        assert!(matches!(refused(client(true, Opcode::Ping, &[0; 126], [0; 4])), DecodeError::Protocol(_)));
        let mut unmasked = client(true, Opcode::Text, b"x", [0; 4]);
        unmasked[1] &= 0x7F;
        assert!(matches!(refused(unmasked), DecodeError::Protocol(_)));
        let mut reserved = client(true, Opcode::Text, b"x", [0; 4]);
        reserved[0] |= 0x40;
        assert!(matches!(refused(reserved), DecodeError::Protocol(_)));
        let mut nested = client(false, Opcode::Text, b"x", [0; 4]);
        nested.extend(client(true, Opcode::Text, b"y", [0; 4]));
        assert!(matches!(refused(nested), DecodeError::Protocol(_)));
    }

    #[test]
    fn close_frames() {
        let mut d = Decoder::new(1000);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        d.extend(&client(true, Opcode::Close, &payload, [3, 1, 4, 1]));
        d.extend(&client(true, Opcode::Close, b"", [3, 1, 4, 1]));
        assert_eq!(all(&mut d).unwrap(), vec![Message::Close(Some(1000)), Message::Close(None)]);
        let mut out = Vec::new();
        encode_close(&mut out, 4008, &"é".repeat(100));
        assert_eq!(out[0], 0x88);
        let len = out[1] as usize;
        assert!(len <= 125);
        assert_eq!(&out[2..4], &4008u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok(), "the reason is cut at a character");
    }

    #[test]
    fn close_codes_an_endpoint_may_not_send_are_protocol_errors() {
        for code in [1000u16, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999] {
            assert!(valid_close_code(code), "{code}");
            let mut d = Decoder::new(1000);
            d.extend(&client(true, Opcode::Close, &code.to_be_bytes(), [1, 2, 3, 4]));
            assert_eq!(all(&mut d).unwrap(), vec![Message::Close(Some(code))]);
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!valid_close_code(code), "{code}");
            let mut d = Decoder::new(1000);
            d.extend(&client(true, Opcode::Close, &code.to_be_bytes(), [1, 2, 3, 4]));
            let e = all(&mut d).unwrap_err();
            assert!(matches!(e, DecodeError::Protocol(_)), "{code}: {e:?}");
            assert_eq!(e.close_code(), 1002);
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(b"\xce\xba\xe1\xbd");
        let mut d = Decoder::new(1000);
        d.extend(&client(true, Opcode::Close, &bad_reason, [1, 2, 3, 4]));
        assert_eq!(all(&mut d).unwrap_err().close_code(), 1007);
    }

    /// Text that is not UTF-8 is refused as soon as the byte that breaks it has come: in an
    /// early fragment of a message, or early in a frame whose rest has not.
    #[test]
    fn text_that_is_not_utf8_is_refused_at_once() {
        let mut d = Decoder::new(1 << 20);
        d.extend(&client(false, Opcode::Text, b"fine so far \xf4\x90", [5, 6, 7, 8]));
        assert_eq!(d.decode(), Err(DecodeError::NotUtf8), "U+110000 and up is not UTF-8");
        let mut d = Decoder::new(1 << 20);
        let mut payload = b"\xed\xa0\x80".to_vec();
        payload.extend_from_slice(&[b'a'; 10_000]);
        let bytes = client(true, Opcode::Text, &payload, [5, 6, 7, 8]);
        d.extend(&bytes[..100]);
        assert_eq!(d.decode(), Err(DecodeError::NotUtf8), "a surrogate is refused before the frame is whole");
        // A character cut short at the end of a message.
        let mut d = Decoder::new(1 << 20);
        d.extend(&client(false, Opcode::Text, b"ok \xe2\x82", [5, 6, 7, 8]));
        d.extend(&client(true, Opcode::Continuation, b"", [5, 6, 7, 8]));
        assert_eq!(all(&mut d), Err(DecodeError::NotUtf8));
        // Once refused, always refused: the rest of the frame is not let through later.
        let mut d = Decoder::new(1 << 20);
        d.extend(&client(true, Opcode::Text, b"\xff whole", [5, 6, 7, 8]));
        d.extend(&client(true, Opcode::Text, b"fine", [5, 6, 7, 8]));
        assert_eq!(d.decode(), Err(DecodeError::NotUtf8));
        assert_eq!(d.decode(), Err(DecodeError::NotUtf8));
        d.extend(&client(true, Opcode::Text, b"fine", [5, 6, 7, 8]));
        assert_eq!(d.decode(), Err(DecodeError::NotUtf8));
        // Nor may a close reason be.
        let mut d = Decoder::new(1 << 20);
        d.extend(&client(true, Opcode::Close, b"\x03\xe8\xff", [5, 6, 7, 8]));
        assert_eq!(all(&mut d), Err(DecodeError::NotUtf8));
    }

    #[test]
    fn encoded_len_reads_the_codec_s_frames() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let mut out = Vec::new();
            encode(&mut out, Opcode::Text, &vec![b'a'; len]);
            encode(&mut out, Opcode::Ping, b"x");
            let first = encoded_len(&out).unwrap();
            assert_eq!(encoded_len(&out[first..]), Some(3));
            assert_eq!(encoded_len(&out[..first - 1]), None, "a frame not all there");
        }
        assert_eq!(encoded_len(&[0x81]), None);
    }

    #[test]
    fn encodes_every_length_form() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'a'; len];
            let mut out = Vec::new();
            encode(&mut out, Opcode::Binary, &payload);
            // Decode it as a client would see it: mask it first, then run it through the decoder.
            let header_len = out.len() - len;
            assert_eq!(out[0], 0x82);
            let mut masked = out[..header_len].to_vec();
            masked[1] |= 0x80;
            masked.extend_from_slice(&[0; 4]);
            masked.extend_from_slice(&payload);
            let mut d = Decoder::new(1 << 20);
            d.extend(&masked);
            assert_eq!(d.decode().unwrap(), Some(Message::Binary(payload)));
        }
    }

    proptest! {
        /// However the bytes are split into reads, the same messages come out, and nothing is
        /// held once they have.
        #[test]
        fn any_split_decodes_the_same(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 1..8),
            cuts in prop::collection::vec(1usize..300, 1..40),
            mask in any::<[u8; 4]>(),
        ) {
            let mut bytes = Vec::new();
            for m in &messages {
                bytes.extend(client(true, Opcode::Binary, m, mask));
            }
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(1).min(rest.len());
                d.extend(&rest[..n]);
                rest = &rest[n..];
                got.extend(all(&mut d).unwrap());
            }
            let want: Vec<Message> = messages.into_iter().map(Message::Binary).collect();
            prop_assert_eq!(got, want);
            prop_assert!(d.is_idle());
        }

        /// Text split anywhere — across fragments of a message and across reads — decodes to
        /// the same message when it is UTF-8 and is refused when it is not, as a check of the
        /// whole message would say.
        #[test]
        fn text_split_anywhere_is_checked_as_a_whole(
            text in prop_oneof![
                any::<String>().prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..64),
                // Pieces of multi-byte characters, surrogates and values past U+10FFFF.
                prop::collection::vec(
                    prop::sample::select(vec![
                        0xc3u8, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, b'a', 0xed, 0xa0, 0xbf, 0xf4, 0x90,
                    ]),
                    0..64,
                ),
            ],
            fragments in prop::collection::vec(0usize..64, 0..6),
            cuts in prop::collection::vec(1usize..40, 1..20),
        ) {
            let mut bounds: Vec<usize> = fragments.iter().map(|&f| f.min(text.len())).collect();
            bounds.sort_unstable();
            bounds.push(text.len());
            let mut bytes = Vec::new();
            let mut at = 0;
            for (i, &end) in bounds.iter().enumerate() {
                let opcode = if i == 0 { Opcode::Text } else { Opcode::Continuation };
                bytes.extend(client(i + 1 == bounds.len(), opcode, &text[at..end], [9, 8, 7, 6]));
                at = end;
            }
            let mut d = Decoder::new(1 << 20);
            let mut got = Ok(Vec::new());
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter().cycle();
            while let (false, Ok(messages)) = (rest.is_empty(), &mut got) {
                let n = cuts.next().unwrap_or(1).min(rest.len());
                d.extend(&rest[..n]);
                rest = &rest[n..];
                match all(&mut d) {
                    Ok(more) => messages.extend(more),
                    Err(e) => got = Err(e),
                }
            }
            let want = match std::str::from_utf8(&text) {
                Ok(_) => Ok(vec![Message::Text(text.clone())]),
                Err(_) => Err(DecodeError::NotUtf8),
            };
            prop_assert_eq!(got, want);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut d = Decoder::new(1000);
            d.extend(&bytes);
            let _ = all(&mut d);
        }

        /// Frames of any header — any FIN, reserved bits and opcode, masked or not, payloads
        /// of any bytes, split into reads anywhere — never panic the decoder, and once it has
        /// refused the stream it stays refused.
        #[test]
        fn arbitrary_frames_never_panic(
            frames in prop::collection::vec(
                (any::<u8>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..200)),
                1..12,
            ),
            cuts in prop::collection::vec(1usize..64, 1..20),
        ) {
            let mut bytes = Vec::new();
            for (first, masked, payload) in &frames {
                let mut frame = client(true, Opcode::Binary, payload, [3, 1, 4, 1]);
                frame[0] = *first;
                if !masked {
                    frame[1] &= 0x7F;
                }
                bytes.extend(frame);
            }
            let mut d = Decoder::new(300);
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter().cycle();
            let mut refused = None;
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(1).min(rest.len());
                d.extend(&rest[..n]);
                rest = &rest[n..];
                match (&refused, all(&mut d)) {
                    (None, Err(e)) => refused = Some(e),
                    (Some(_), Ok(m)) => prop_assert!(m.is_empty(), "decoded after refusing: {m:?}"),
                    _ => {}
                }
            }
        }
    }
}
