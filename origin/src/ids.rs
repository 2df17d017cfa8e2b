//! Minting identifiers and tokens, and hashing tokens for storage.
//!
//! Ids are opaque on the wire; here they are a one-letter kind (`W`, `U`, `C`, `D`, `G`) and 12
//! characters of random Crockford base32 — 60 bits, so collisions are checked for but never
//! expected. Tokens carry 256 random bits and are stored only as their SHA-256.

use rand::RngCore;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A fresh id: `kind` then 12 random base32 characters.
pub fn new_id(kind: char) -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let mut n = u64::from_le_bytes(bytes);
    let mut id = String::with_capacity(13);
    id.push(kind);
    for _ in 0..12 {
        id.push(ALPHABET[(n & 31) as usize] as char);
        n >>= 5;
    }
    id
}

/// Prefix of every token Selvage issues, so leaked tokens are recognisable by scanners.
pub const TOKEN_PREFIX: &str = "svt_";

/// A fresh bearer token: the prefix and 64 hex characters (256 random bits).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// What is stored for a token: its SHA-256. The token itself is never written anywhere.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_valid() {
        let a = new_id('C');
        let b = new_id('C');
        assert_ne!(a, b);
        assert_eq!(a.len(), 13);
        assert!(selvage_shared::ChannelId::parse(&a).is_some());
    }

    #[test]
    fn tokens_hash_stably() {
        let t = new_token();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(token_hash(&t), token_hash(&t));
        assert_ne!(token_hash(&t), token_hash(&new_token()));
    }
}
