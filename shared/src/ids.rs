//! Identifiers: workspace, user and channel ids, per-channel sequence numbers and feed cursors.
//!
//! Ids are opaque strings on the wire (ARCHITECTURE §4). Each kind has its own newtype so a user id can
//! never be passed where a channel id is expected, and each validates itself when parsed or
//! deserialised: a valid id is 1 to 32 characters of `A-Z a-z 0-9 _ -`. That keeps hostile input
//! (huge or binary ids) out of caches, keys and logs before any handler sees it.
//!
//! A [`Cursor`] is the opaque position of an event in the global feed: the 12-byte position of
//! its log entry (the 10-byte FoundationDB commit versionstamp and the 2-byte order of the event
//! within that commit: one group commit holds many events), written as 24 lowercase hex
//! characters. Lowercase hex sorts like the bytes it encodes, so cursors compare (as strings too)
//! in feed order.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Per-channel message sequence number: 1, 2, 3, … with no gaps, assigned by the origin at
/// commit time. `0` means "nothing yet" (e.g. a read marker before anything was read).
pub type Seq = u64;

/// Longest valid id, in bytes (ids are ASCII, so also in characters).
pub const MAX_ID_LEN: usize = 32;

/// Whether `s` is a valid workspace, user or channel id: 1 to [`MAX_ID_LEN`] characters of
/// `A-Z a-z 0-9 _ -`.
pub fn is_valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A string that is not a valid id of the named kind.
///
/// The message never repeats the offending string: it may be large or hostile, and the edge
/// sends decode errors back to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: expected 1 to 32 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct InvalidId {
    /// What kind of id was expected, e.g. `"channel id"`.
    pub kind: &'static str,
}

/// Generates an id newtype with validation, conversions and string-shaped serde impls.
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Parses a ", $kind, ", returning `None` unless it is valid (see [`is_valid_id`]).")]
            pub fn parse(s: &str) -> Option<Self> {
                is_valid_id(s).then(|| Self(s.to_owned()))
            }

            #[doc = concat!("Wraps a ", $kind, " without validating it. For ids this process made or read from its")]
            /// own store; never for client input.
            pub fn new_unchecked(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Sound because the derived `Hash`, `Eq` and `Ord` are those of the inner `String`; lets
        // maps keyed by this id be queried with a `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s).ok_or(InvalidId { kind: $kind })
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;

            fn try_from(s: String) -> Result<Self, InvalidId> {
                if is_valid_id(&s) {
                    Ok(Self(s))
                } else {
                    Err(InvalidId { kind: $kind })
                }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_string(ValidatedStr {
                    expecting: $kind,
                    make: |s: String| Self::try_from(s),
                })
            }
        }
    };
}

id_type!(
    /// Identifies a workspace (a tenant: its users, channels and messages).
    WorkspaceId,
    "workspace id"
);
id_type!(
    /// Identifies a user within a workspace.
    UserId,
    "user id"
);
id_type!(
    /// Identifies a channel, DM or group DM within a workspace.
    ChannelId,
    "channel id"
);
id_type!(
    /// Identifies an app (an integration with a bot user and scoped tokens) within a workspace.
    AppId,
    "app id"
);

/// Deserialises a string and validates it with `make`, taking ownership when the format hands
/// over an owned string.
struct ValidatedStr<F> {
    expecting: &'static str,
    make: F,
}

impl<'de, T, E, F> Visitor<'de> for ValidatedStr<F>
where
    F: FnOnce(String) -> Result<T, E>,
    E: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} string", self.expecting)
    }

    fn visit_str<Er: de::Error>(self, v: &str) -> Result<T, Er> {
        self.visit_string(v.to_owned())
    }

    fn visit_string<Er: de::Error>(self, v: String) -> Result<T, Er> {
        (self.make)(v).map_err(Er::custom)
    }
}

/// Length of a commit versionstamp, the first part of a feed position.
pub const VERSIONSTAMP_LEN: usize = 10;

/// Length of a feed position: a 10-byte commit versionstamp and a 2-byte order within it.
pub const POSITION_LEN: usize = 12;

/// Position in the global feed: 12 bytes (10-byte commit versionstamp, 2-byte big-endian order of
/// the event within the commit) as 24 lowercase hex characters.
///
/// Clients treat it as opaque; they keep the last one they saw and hand it back to resume.
/// Cursors order all events of a deployment, and their strings sort the same way.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cursor(String);

/// A string that is not a valid [`Cursor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor: expected 24 lowercase hex characters")]
pub struct InvalidCursor;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Cursor {
    /// The cursor of a feed position.
    pub fn from_position(vs: &[u8; POSITION_LEN]) -> Cursor {
        let mut s = String::with_capacity(2 * POSITION_LEN);
        for b in vs {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        Cursor(s)
    }

    /// The cursor of the first event (order 0) of the commit with this versionstamp.
    pub fn from_versionstamp(vs: &[u8; VERSIONSTAMP_LEN]) -> Cursor {
        let mut pos = [0u8; POSITION_LEN];
        pos[..VERSIONSTAMP_LEN].copy_from_slice(vs);
        Cursor::from_position(&pos)
    }

    /// The cursor before every event: all-zero position.
    pub fn zero() -> Cursor {
        Cursor::from_position(&[0; POSITION_LEN])
    }

    /// The feed position this cursor wraps. Always `Some` for a cursor built by this crate, whose
    /// constructors validate.
    pub fn position(&self) -> Option<[u8; POSITION_LEN]> {
        let bytes = self.0.as_bytes();
        if bytes.len() != 2 * POSITION_LEN {
            return None;
        }
        let mut vs = [0u8; POSITION_LEN];
        for (out, pair) in vs.iter_mut().zip(bytes.chunks_exact(2)) {
            *out = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(vs)
    }

    /// The commit versionstamp of this cursor's position (its first 10 bytes).
    pub fn versionstamp(&self) -> Option<[u8; VERSIONSTAMP_LEN]> {
        let pos = self.position()?;
        let mut vs = [0u8; VERSIONSTAMP_LEN];
        vs.copy_from_slice(&pos[..VERSIONSTAMP_LEN]);
        Some(vs)
    }

    /// The order of this cursor's event within its commit (the last 2 bytes, big-endian).
    pub fn order(&self) -> Option<u16> {
        let pos = self.position()?;
        Some(u16::from_be_bytes([pos[VERSIONSTAMP_LEN], pos[VERSIONSTAMP_LEN + 1]]))
    }

    /// Parses a cursor, returning `None` unless `s` is exactly 24 lowercase hex characters.
    pub fn parse(s: &str) -> Option<Cursor> {
        let valid = s.len() == 2 * POSITION_LEN && s.bytes().all(|c| hex_value(c).is_some());
        valid.then(|| Cursor(s.to_owned()))
    }

    /// The cursor as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Cursor {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Cursor, InvalidCursor> {
        Cursor::parse(s).ok_or(InvalidCursor)
    }
}

impl TryFrom<String> for Cursor {
    type Error = InvalidCursor;

    fn try_from(s: String) -> Result<Cursor, InvalidCursor> {
        if Cursor::parse(&s).is_some() {
            Ok(Cursor(s))
        } else {
            Err(InvalidCursor)
        }
    }
}

impl From<Cursor> for String {
    fn from(c: Cursor) -> String {
        c.0
    }
}

impl Serialize for Cursor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(ValidatedStr { expecting: "cursor", make: Cursor::try_from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_validation() {
        assert!(ChannelId::parse("C1").is_some());
        assert!(UserId::parse("U_x-9").is_some());
        assert!(UserId::parse(&"a".repeat(32)).is_some());
        assert!(UserId::parse(&"a".repeat(33)).is_none());
        assert!(UserId::parse("").is_none());
        assert!(UserId::parse("a b").is_none());
        assert!(UserId::parse("é").is_none());
        assert!(WorkspaceId::parse("W/1").is_none());
        assert_eq!("C1".parse::<ChannelId>().map(|c| c.to_string()), Ok("C1".into()));
        assert_eq!("".parse::<ChannelId>(), Err(InvalidId { kind: "channel id" }));
    }

    #[test]
    fn id_serde_is_a_plain_string_and_validates() {
        let c = ChannelId::new_unchecked("C42");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"C42\"");
        assert_eq!(serde_json::from_str::<ChannelId>("\"C42\"").unwrap(), c);
        let err = serde_json::from_str::<ChannelId>("\"bad id\"").unwrap_err();
        assert!(err.to_string().contains("invalid channel id"), "{err}");
        assert!(serde_json::from_str::<ChannelId>("\"\"").is_err());
        assert!(serde_json::from_str::<ChannelId>("7").is_err());
        let mp = rmp_serde::to_vec_named(&c).unwrap();
        assert_eq!(rmp_serde::from_slice::<ChannelId>(&mp).unwrap(), c);
    }

    #[test]
    fn id_borrow_lookup() {
        let mut m = std::collections::HashMap::new();
        m.insert(UserId::new_unchecked("U1"), 1);
        assert_eq!(m.get("U1"), Some(&1));
    }

    #[test]
    fn cursor_round_trip_and_order() {
        let a = Cursor::from_versionstamp(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        let b = Cursor::from_position(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]);
        let c = Cursor::from_position(&[0, 0, 0, 0, 0, 0, 0, 1, 0xab, 0, 0, 0]);
        assert_eq!(a.as_str(), "000000000000000100000000");
        assert_eq!(b.as_str(), "000000000000000100000002");
        assert_eq!(c.as_str(), "0000000000000001ab000000");
        assert!(Cursor::zero() < a && a < b && b < c);
        assert_eq!(b.position(), Some([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]));
        assert_eq!(b.versionstamp(), Some([0, 0, 0, 0, 0, 0, 0, 1, 0, 0]));
        assert_eq!(b.order(), Some(2));
        assert_eq!(Cursor::parse(c.as_str()), Some(c.clone()));
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"0000000000000001ab000000\"");
        assert_eq!(serde_json::from_str::<Cursor>("\"0000000000000001ab000000\"").unwrap(), c);
    }

    #[test]
    fn cursor_rejects_invalid() {
        assert!(Cursor::parse("").is_none());
        assert!(Cursor::parse("0000000000000001AB000000").is_none());
        assert!(Cursor::parse("0000000000000001ab00000").is_none());
        assert!(Cursor::parse("0000000000000001ab0000000").is_none());
        assert!(Cursor::parse("000000000000000xab000000").is_none());
        // The 20-character (versionstamp-only) form is not a cursor.
        assert!(Cursor::parse("0000000000000001ab00").is_none());
        assert!(serde_json::from_str::<Cursor>("\"zz\"").is_err());
    }

    #[test]
    fn cursor_matches_byte_order() {
        let vs: [[u8; 12]; 5] = [
            [0; 12],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
            [0xff; 12],
        ];
        for x in &vs {
            for y in &vs {
                let (cx, cy) = (Cursor::from_position(x), Cursor::from_position(y));
                assert_eq!(x.cmp(y), cx.cmp(&cy));
                assert_eq!(cx.position().as_ref(), Some(x));
            }
        }
    }
}
