//! FoundationDB's tuple layer: the key encoding every origin key uses.
//!
//! A key is a tuple of typed elements packed so that byte order equals tuple order, which is
//! what lets one range read walk, say, a channel's messages by sequence number. The encoding is
//! byte-compatible with FoundationDB's tuple specification for the subset the origin needs:
//!
//! | type | code | encoding |
//! |---|---|---|
//! | null | `0x00` | the code alone |
//! | byte string | `0x01` | bytes with `0x00` escaped as `0x00 0xff`, then `0x00` |
//! | unicode string | `0x02` | UTF-8, escaped and terminated like byte strings |
//! | integer zero | `0x14` | the code alone |
//! | positive integer | `0x15..=0x1c` | `0x14 + n`, then the value in `n` big-endian bytes |
//! | negative integer | `0x0c..=0x13` | `0x14 - n`, then the one's complement of `|v|` in `n` bytes |
//! | versionstamp | `0x33` | 10 bytes of commit versionstamp, 2 of user version, big endian |
//!
//! Keys are built with [`Key`] and decoded with [`unpack`]. A key whose versionstamp is only
//! known at commit is built with [`Key::incomplete_versionstamp`] and written with
//! [`KvTxn::set_versionstamped_key`](super::KvTxn::set_versionstamped_key).

use super::Versionstamp;

const NULL: u8 = 0x00;
const BYTES: u8 = 0x01;
const STRING: u8 = 0x02;
const INT_ZERO: u8 = 0x14;
const VERSIONSTAMP: u8 = 0x33;
/// Escape byte that follows a `0x00` inside byte and unicode strings.
const ESCAPE: u8 = 0xff;

/// A packed tuple under construction.
///
/// ```ignore
/// let key = Key::new().str("ws").str("W1").str("msg").uint(42).finish();
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Key {
    bytes: Vec<u8>,
    /// Offset of the 10 placeholder bytes of an incomplete versionstamp, if one was appended.
    placeholder: Option<usize>,
    /// More than one incomplete versionstamp was appended: such a key cannot be completed.
    placeholders_ambiguous: bool,
}

impl Key {
    /// The empty tuple. The buffer starts with room for a typical key, so building one does
    /// not reallocate element by element.
    pub fn new() -> Self {
        Key { bytes: Vec::with_capacity(64), ..Key::default() }
    }

    /// Extends an already packed tuple (a subspace prefix) with more elements.
    pub fn from_prefix(prefix: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(prefix.len() + 32);
        bytes.extend_from_slice(prefix);
        Key { bytes, ..Key::default() }
    }

    /// Appends a null element.
    pub fn null(mut self) -> Self {
        self.bytes.push(NULL);
        self
    }

    /// Appends a unicode string.
    pub fn str(mut self, s: &str) -> Self {
        self.bytes.push(STRING);
        push_escaped(&mut self.bytes, s.as_bytes());
        self
    }

    /// Appends a byte string.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.bytes.push(BYTES);
        push_escaped(&mut self.bytes, b);
        self
    }

    /// Appends a signed integer.
    pub fn int(mut self, v: i64) -> Self {
        if v >= 0 {
            push_uint(&mut self.bytes, v.unsigned_abs());
        } else {
            push_negative(&mut self.bytes, v.unsigned_abs());
        }
        self
    }

    /// Appends an unsigned integer; values up to `i64::MAX` encode exactly like [`Key::int`].
    pub fn uint(mut self, v: u64) -> Self {
        push_uint(&mut self.bytes, v);
        self
    }

    /// Appends a complete versionstamp with user version 0.
    pub fn versionstamp(self, vs: &Versionstamp) -> Self {
        self.versionstamp_with_order(vs, 0)
    }

    /// Appends a complete versionstamp with the given user version (its order within one
    /// transaction).
    pub fn versionstamp_with_order(mut self, vs: &Versionstamp, order: u16) -> Self {
        self.bytes.push(VERSIONSTAMP);
        self.bytes.extend_from_slice(&vs.0);
        self.bytes.extend_from_slice(&order.to_be_bytes());
        self
    }

    /// Appends a versionstamp to be filled in at commit (user version 0); see
    /// [`Key::finish_versionstamped`].
    pub fn incomplete_versionstamp(self) -> Self {
        self.incomplete_versionstamp_with_order(0)
    }

    /// Appends a versionstamp to be filled in at commit with the given user version, so that
    /// several keys written by one transaction stay distinct and ordered.
    pub fn incomplete_versionstamp_with_order(mut self, order: u16) -> Self {
        self.bytes.push(VERSIONSTAMP);
        if self.placeholder.is_some() {
            self.placeholders_ambiguous = true;
        }
        self.placeholder = Some(self.bytes.len());
        self.bytes.extend_from_slice(&[0xff; 10]);
        self.bytes.extend_from_slice(&order.to_be_bytes());
        self
    }

    /// Appends one decoded element.
    pub fn element(self, e: &Element) -> Self {
        match e {
            Element::Null => self.null(),
            Element::Bytes(b) => self.bytes(b),
            Element::Str(s) => self.str(s),
            Element::Int(v) => self.int(*v),
            Element::UInt(v) => self.uint(*v),
            Element::Versionstamp(b) => {
                let mut k = self;
                k.bytes.push(VERSIONSTAMP);
                k.bytes.extend_from_slice(b);
                k
            }
        }
    }

    /// The bytes packed so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The packed key. An incomplete versionstamp, if any, stays as its `0xff` placeholder.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }

    /// The packed key and the offset of its incomplete versionstamp's 10 placeholder bytes,
    /// ready for `set_versionstamped_key`. `None` unless exactly one incomplete versionstamp
    /// was appended.
    pub fn finish_versionstamped(self) -> Option<(Vec<u8>, usize)> {
        if self.placeholders_ambiguous {
            return None;
        }
        let offset = self.placeholder?;
        Some((self.bytes, offset))
    }
}

impl From<Key> for Vec<u8> {
    fn from(k: Key) -> Vec<u8> {
        k.bytes
    }
}

fn push_escaped(out: &mut Vec<u8>, b: &[u8]) {
    for &byte in b {
        out.push(byte);
        if byte == 0x00 {
            out.push(ESCAPE);
        }
    }
    out.push(0x00);
}

/// Number of significant big-endian bytes of `v` (0 for zero).
fn byte_len(v: u64) -> usize {
    8 - (v.leading_zeros() as usize) / 8
}

fn push_uint(out: &mut Vec<u8>, v: u64) {
    let n = byte_len(v);
    // n <= 8, so the code stays within 0x14..=0x1c.
    out.push(INT_ZERO + n as u8);
    out.extend_from_slice(&v.to_be_bytes()[8 - n..]);
}

/// Appends `-magnitude` (magnitude > 0): the one's complement of the magnitude in `n` bytes.
fn push_negative(out: &mut Vec<u8>, magnitude: u64) {
    let n = byte_len(magnitude);
    out.push(INT_ZERO - n as u8);
    out.extend_from_slice(&(!magnitude).to_be_bytes()[8 - n..]);
}

/// One decoded tuple element.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Element {
    /// `null`.
    Null,
    /// A byte string.
    Bytes(Vec<u8>),
    /// A unicode string.
    Str(String),
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX` (only those; smaller ones decode as [`Element::Int`]).
    UInt(u64),
    /// A versionstamp: 10 bytes of commit versionstamp and 2 of user version.
    Versionstamp([u8; 12]),
}

impl Element {
    /// The string, if this is a unicode string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Element::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Element::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The integer, if this is one that fits `i64`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Element::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The integer, if this is a non-negative one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Element::Int(v) => u64::try_from(*v).ok(),
            Element::UInt(v) => Some(*v),
            _ => None,
        }
    }

    /// The commit versionstamp part, if this is a versionstamp.
    pub fn as_versionstamp(&self) -> Option<Versionstamp> {
        match self {
            Element::Versionstamp(b) => {
                let mut vs = [0u8; 10];
                vs.copy_from_slice(&b[..10]);
                Some(Versionstamp(vs))
            }
            _ => None,
        }
    }

    /// The user version (order within its transaction), if this is a versionstamp.
    pub fn versionstamp_order(&self) -> Option<u16> {
        match self {
            Element::Versionstamp(b) => Some(u16::from_be_bytes([b[10], b[11]])),
            _ => None,
        }
    }
}

/// Why bytes are not a tuple this module can decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TupleError {
    /// A type code this subset does not know (or a nested tuple, float, UUID, …).
    #[error("unsupported tuple type code 0x{code:02x} at byte {offset}")]
    UnknownType { code: u8, offset: usize },
    /// The bytes end in the middle of an element.
    #[error("tuple truncated: element at byte {offset} needs more bytes")]
    Truncated { offset: usize },
    /// A byte or unicode string without its `0x00` terminator.
    #[error("unterminated string starting at byte {offset}")]
    Unterminated { offset: usize },
    /// A unicode string that is not UTF-8.
    #[error("invalid UTF-8 in the string starting at byte {offset}")]
    InvalidUtf8 { offset: usize },
    /// A negative integer below `i64::MIN`.
    #[error("integer at byte {offset} is below the 64-bit range")]
    IntegerOutOfRange { offset: usize },
}

/// The last element of a packed key as a string (a key's trailing id), if it is one.
pub fn last_str(key: &[u8]) -> Option<String> {
    unpack(key).ok()?.pop()?.as_str().map(str::to_string)
}

/// The last element of a packed key as an unsigned integer (a key's trailing seq), if it is one.
pub fn last_u64(key: &[u8]) -> Option<u64> {
    unpack(key).ok()?.pop()?.as_u64()
}

/// Decodes a packed tuple. Never panics, whatever the bytes.
pub fn unpack(bytes: &[u8]) -> Result<Vec<Element>, TupleError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let code = bytes[pos];
        pos += 1;
        let element = match code {
            NULL => Element::Null,
            BYTES | STRING => {
                let (raw, next) = read_escaped(bytes, pos).ok_or(TupleError::Unterminated { offset: start })?;
                pos = next;
                if code == BYTES {
                    Element::Bytes(raw)
                } else {
                    let s = String::from_utf8(raw).map_err(|_| TupleError::InvalidUtf8 { offset: start })?;
                    Element::Str(s)
                }
            }
            0x0c..=0x1c => {
                let n = usize::from(code.abs_diff(INT_ZERO));
                let raw = bytes.get(pos..pos + n).ok_or(TupleError::Truncated { offset: start })?;
                pos += n;
                let mut be = [0u8; 8];
                be[8 - n..].copy_from_slice(raw);
                let v = u64::from_be_bytes(be);
                if code >= INT_ZERO {
                    match i64::try_from(v) {
                        Ok(i) => Element::Int(i),
                        Err(_) => Element::UInt(v),
                    }
                } else {
                    // One's complement in n bytes: magnitude = (2^(8n) - 1) - v.
                    let all_ones = if n == 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 };
                    let magnitude = all_ones - v;
                    if magnitude > i64::MIN.unsigned_abs() {
                        return Err(TupleError::IntegerOutOfRange { offset: start });
                    }
                    // magnitude <= 2^63, so the negation fits i64 (i64::MIN at the edge).
                    Element::Int(0i64.wrapping_sub_unsigned(magnitude))
                }
            }
            VERSIONSTAMP => {
                let raw = bytes.get(pos..pos + 12).ok_or(TupleError::Truncated { offset: start })?;
                pos += 12;
                let mut b = [0u8; 12];
                b.copy_from_slice(raw);
                Element::Versionstamp(b)
            }
            _ => return Err(TupleError::UnknownType { code, offset: start }),
        };
        out.push(element);
    }
    Ok(out)
}

/// Reads an escaped string body starting at `pos`; returns it and the position after its
/// terminator, or `None` if the terminator is missing.
fn read_escaped(bytes: &[u8], mut pos: usize) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    loop {
        let b = *bytes.get(pos)?;
        pos += 1;
        if b == 0x00 {
            if bytes.get(pos) == Some(&ESCAPE) {
                out.push(0x00);
                pos += 1;
            } else {
                return Some((out, pos));
            }
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_foundationdb_reference_encodings() {
        // Vectors from FoundationDB's tuple layer documentation and bindings tests.
        assert_eq!(Key::new().bytes(b"foo\x00bar").finish(), b"\x01foo\x00\xffbar\x00");
        assert_eq!(Key::new().str("F\u{d4}O\x00bar").finish(), b"\x02F\xc3\x94O\x00\xffbar\x00");
        assert_eq!(Key::new().int(0).finish(), b"\x14");
        assert_eq!(Key::new().int(1).finish(), b"\x15\x01");
        assert_eq!(Key::new().int(-1).finish(), b"\x13\xfe");
        assert_eq!(Key::new().int(255).finish(), b"\x15\xff");
        assert_eq!(Key::new().int(256).finish(), b"\x16\x01\x00");
        assert_eq!(Key::new().int(-255).finish(), b"\x13\x00");
        assert_eq!(Key::new().int(-256).finish(), b"\x12\xfe\xff");
        assert_eq!(Key::new().int(5_551_212).finish(), b"\x17\x54\xb4\x6c");
        assert_eq!(Key::new().int(i64::MAX).finish(), b"\x1c\x7f\xff\xff\xff\xff\xff\xff\xff");
        assert_eq!(Key::new().int(i64::MIN).finish(), b"\x0c\x7f\xff\xff\xff\xff\xff\xff\xff");
        assert_eq!(Key::new().uint(u64::MAX).finish(), b"\x1c\xff\xff\xff\xff\xff\xff\xff\xff");
        assert_eq!(Key::new().null().finish(), b"\x00");
        let vs = Versionstamp::new(0x0102_0304_0506_0708, 0x090a);
        assert_eq!(Key::new().versionstamp(&vs).finish(), b"\x33\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x00\x00");
    }

    #[test]
    fn incomplete_versionstamp_reports_its_offset() {
        let (key, offset) = Key::new().str("log").incomplete_versionstamp().finish_versionstamped().unwrap();
        assert_eq!(offset, 6);
        assert_eq!(&key[offset..offset + 10], &[0xff; 10]);
        assert_eq!(&key[offset + 10..], &[0, 0]);
        assert_eq!(Key::new().str("x").finish_versionstamped(), None);
        let two = Key::new().incomplete_versionstamp().incomplete_versionstamp();
        assert_eq!(two.finish_versionstamped(), None);
        let prefix = Key::new().str("a").finish();
        let (k2, off2) = Key::from_prefix(&prefix).incomplete_versionstamp().finish_versionstamped().unwrap();
        assert!(k2.starts_with(&prefix));
        assert_eq!(off2, prefix.len() + 1);
    }

    #[test]
    fn element_accessors() {
        let key = Key::new()
            .str("s")
            .bytes(b"b")
            .int(-7)
            .uint(u64::MAX)
            .versionstamp(&Versionstamp::new(9, 0))
            .null()
            .finish();
        let e = unpack(&key).unwrap();
        assert_eq!(e[0].as_str(), Some("s"));
        assert_eq!(e[1].as_bytes(), Some(&b"b"[..]));
        assert_eq!(e[2].as_int(), Some(-7));
        assert_eq!(e[2].as_u64(), None);
        assert_eq!(e[3], Element::UInt(u64::MAX));
        assert_eq!(e[3].as_int(), None);
        assert_eq!(e[3].as_u64(), Some(u64::MAX));
        assert_eq!(e[4].as_versionstamp(), Some(Versionstamp::new(9, 0)));
        assert_eq!(e[4].versionstamp_order(), Some(0));
        assert_eq!(e[5], Element::Null);
        assert_eq!(Key::new().uint(5).finish(), Key::new().int(5).finish());
        assert_eq!(unpack(&Key::new().uint(5).finish()).unwrap(), vec![Element::Int(5)]);
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert_eq!(unpack(b"\x02abc"), Err(TupleError::Unterminated { offset: 0 }));
        assert_eq!(unpack(b"\x16\x01"), Err(TupleError::Truncated { offset: 0 }));
        assert_eq!(unpack(b"\x14\x05"), Err(TupleError::UnknownType { code: 5, offset: 1 }));
        assert_eq!(unpack(b"\x02\xff\x00"), Err(TupleError::InvalidUtf8 { offset: 0 }));
        // -(2^64 - 1) is a valid FoundationDB integer but not an i64.
        assert_eq!(unpack(b"\x0c\x00\x00\x00\x00\x00\x00\x00\x00"), Err(TupleError::IntegerOutOfRange { offset: 0 }));
        assert_eq!(unpack(b"\x33\x00"), Err(TupleError::Truncated { offset: 0 }));
    }

    fn element() -> impl Strategy<Value = Element> {
        prop_oneof![
            Just(Element::Null),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Element::Bytes),
            any::<String>().prop_map(Element::Str),
            any::<i64>().prop_map(Element::Int),
            ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Element::UInt),
            any::<[u8; 12]>().prop_map(Element::Versionstamp),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(elements in proptest::collection::vec(element(), 0..8)) {
            let key = elements.iter().fold(Key::new(), |k, e| k.element(e)).finish();
            prop_assert_eq!(unpack(&key).unwrap(), elements);
        }

        #[test]
        fn i64_order_is_byte_order(a in any::<i64>(), b in any::<i64>()) {
            let (ka, kb) = (Key::new().int(a).finish(), Key::new().int(b).finish());
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }

        #[test]
        fn u64_order_is_byte_order(a in any::<u64>(), b in any::<u64>()) {
            let (ka, kb) = (Key::new().uint(a).finish(), Key::new().uint(b).finish());
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }

        #[test]
        fn small_int_order_is_byte_order(a in -70_000i64..70_000, b in -70_000i64..70_000) {
            let (ka, kb) = (Key::new().int(a).finish(), Key::new().int(b).finish());
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }

        #[test]
        fn string_order_is_byte_order(a in any::<String>(), b in any::<String>()) {
            let (ka, kb) = (Key::new().str(&a).finish(), Key::new().str(&b).finish());
            prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), ka.cmp(&kb));
        }

        #[test]
        fn bytes_order_is_byte_order(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(0xffu8), any::<u8>()], 0..12),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(0xffu8), any::<u8>()], 0..12),
        ) {
            let (ka, kb) = (Key::new().bytes(&a).finish(), Key::new().bytes(&b).finish());
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }

        #[test]
        fn tuple_order_is_byte_order(a in (any::<String>(), any::<i64>()), b in (any::<String>(), any::<i64>())) {
            let ka = Key::new().str(&a.0).int(a.1).finish();
            let kb = Key::new().str(&b.0).int(b.1).finish();
            let ord = a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(&b.1));
            prop_assert_eq!(ord, ka.cmp(&kb));
        }

        #[test]
        fn unpack_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unpack(&bytes);
        }

        #[test]
        fn unpack_never_panics_on_plausible_bytes(
            bytes in proptest::collection::vec(
                prop_oneof![Just(0x00u8), Just(0x01), Just(0x02), Just(0x0c), Just(0x1c),
                            Just(0x33), Just(0xff), any::<u8>()], 0..64)
        ) {
            if let Ok(elements) = unpack(&bytes) {
                // Whatever decodes re-encodes to something that decodes the same.
                let again = elements.iter().fold(Key::new(), |k, e| k.element(e)).finish();
                prop_assert_eq!(unpack(&again).unwrap(), elements);
            }
        }
    }
}
