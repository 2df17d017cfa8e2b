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
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A frame or message over the size limit (close code 1009).
    #[error("message over {0} bytes")]
    TooLarge(usize),
    /// A text message that is not UTF-8 (close code 1007).
    #[error("text message is not UTF-8")]
    NotUtf8,
    /// Anything else against RFC 6455 (close code 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Partial {
    text: bool,
    payload: Vec<u8>,
}

/// Client frames in, whole messages out.
#[derive(Debug)]
pub struct Decoder {
    /// Bytes received and not yet decoded; no allocation between frames.
    pending: Vec<u8>,
    /// A fragmented message whose last frame has not come yet.
    partial: Option<Partial>,
    /// The largest message (and frame) accepted.
    max_message: usize,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder { pending: Vec::new(), partial: None, max_message }
    }

    /// Whether the decoder holds no memory: no frame or message is in flight.
    pub fn is_idle(&self) -> bool {
        self.pending.capacity() == 0 && self.partial.is_none()
    }

    /// Hands the decoder bytes read from the client.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole message, if the bytes received so far hold one.
    pub fn decode(&mut self) -> Result<Option<Message>, DecodeError> {
        loop {
            let Some(frame) = self.frame()? else { return Ok(None) };
            let (fin, opcode, payload) = frame;
            match opcode {
                Opcode::Ping => return Ok(Some(Message::Ping(payload))),
                Opcode::Pong => return Ok(Some(Message::Pong)),
                Opcode::Close => return close(&payload).map(|code| Some(Message::Close(code))),
                Opcode::Text | Opcode::Binary => {
                    if self.partial.is_some() {
                        return Err(DecodeError::Protocol("a new message inside a fragmented one"));
                    }
                    let text = opcode == Opcode::Text;
                    if fin {
                        return whole(text, payload).map(Some);
                    }
                    self.partial = Some(Partial { text, payload });
                }
                Opcode::Continuation => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(DecodeError::Protocol("a continuation frame outside a message"));
                    };
                    if partial.payload.len() + payload.len() > self.max_message {
                        return Err(DecodeError::TooLarge(self.max_message));
                    }
                    partial.payload.extend_from_slice(&payload);
                    if fin {
                        let Partial { text, payload } = self.partial.take().expect("checked just above");
                        return whole(text, payload).map(Some);
                    }
                }
            }
        }
    }

    /// The next whole frame: FIN, opcode and unmasked payload.
    fn frame(&mut self) -> Result<Option<(bool, Opcode, Vec<u8>)>, DecodeError> {
        let Some((fin, opcode, mask, header_len, len)) = self.header()? else { return Ok(None) };
        let total = header_len + len;
        if self.pending.len() < total {
            // Room for the whole frame once, however many reads it takes to come.
            self.pending.reserve_exact(total - self.pending.len());
            return Ok(None);
        }
        let mut payload = self.pending[header_len..total].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        if self.pending.len() == total {
            // Release the buffer: an idle session holds none.
            self.pending = Vec::new();
        } else {
            self.pending.drain(..total);
        }
        Ok(Some((fin, opcode, payload)))
    }

    /// The header at the front of `pending`, once it is all there: FIN, opcode, mask, the
    /// header's length and the payload's.
    #[allow(clippy::type_complexity)]
    fn header(&self) -> Result<Option<(bool, Opcode, [u8; 4], usize, usize)>, DecodeError> {
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
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max_message {
            return Err(DecodeError::TooLarge(self.max_message));
        }
        if b.len() < at + 4 {
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        Ok(Some((fin, opcode, mask, at + 4, len)))
    }
}

fn whole(text: bool, payload: Vec<u8>) -> Result<Message, DecodeError> {
    if !text {
        return Ok(Message::Binary(payload));
    }
    if std::str::from_utf8(&payload).is_err() {
        return Err(DecodeError::NotUtf8);
    }
    Ok(Message::Text(payload))
}

fn close(payload: &[u8]) -> Result<Option<u16>, DecodeError> {
    match payload {
        [] => Ok(None),
        [_] => Err(DecodeError::Protocol("a close frame with half a code")),
        [a, b, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(DecodeError::NotUtf8);
            }
            Ok(Some(u16::from_be_bytes([*a, *b])))
        }
    }
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

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut d = Decoder::new(1000);
            d.extend(&bytes);
            let _ = all(&mut d);
        }
    }
}
