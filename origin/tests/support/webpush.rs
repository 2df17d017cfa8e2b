//! The user agent's side of Web Push, for tests: a browser's subscription keys, the decryption of
//! an `aes128gcm` push message (RFC 8291 §3.4, RFC 8188 §2) and the check of a VAPID
//! `Authorization` header (RFC 8292 §2–§3), as a push receiver in a test does them.
//!
//! It is written with the RustCrypto crates (`p256`, `aes-gcm`, `hkdf`), not with `ring` as
//! `selvage_origin::notify::webpush` is, so that a mistake in the sender is caught here rather
//! than repeated. The module's unit tests include this file (`#[path]`), and so can integration
//! tests: `#[path = "support/webpush.rs"] mod webpush_support;`.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use aes_gcm::{
    aead::{Aead, KeyInit},
    Aes128Gcm, Nonce,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hkdf::Hkdf;
use p256::{
    ecdh::diffie_hellman,
    ecdsa::{signature::Verifier, Signature, VerifyingKey},
    elliptic_curve::sec1::ToEncodedPoint,
    PublicKey, SecretKey,
};
use sha2::Sha256;

/// A new subscription's keys, as `PushManager.subscribe()` makes them: the user agent's private
/// key, its public key `p256dh` (65 bytes, uncompressed) and the 16-byte `auth` secret.
pub fn new_subscription_keys() -> (SecretKey, Vec<u8>, Vec<u8>) {
    // All but about 2^-32 of 32-byte strings are valid scalars; the loop takes one try in practice.
    let secret = loop {
        if let Ok(key) = SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            break key;
        }
    };
    let p256dh = secret.public_key().to_encoded_point(false).as_bytes().to_vec();
    (secret, p256dh, rand::random::<[u8; 16]>().to_vec())
}

/// Decrypts a push message's body with the subscription's private key and `auth` secret, as the
/// user agent does: one `aes128gcm` record whose key id is the sender's public key. Any
/// departure from RFC 8291 §4's profile is an error, not just a failed decryption.
pub fn decrypt(ua_private: &SecretKey, auth: &[u8], body: &[u8]) -> Result<Vec<u8>, String> {
    if auth.len() != 16 {
        return Err(format!("auth secret of {} bytes, not 16", auth.len()));
    }
    // RFC 8188 §2.1: salt (16) || rs (u32, big endian) || idlen (1) || keyid (idlen).
    let (salt, rest) = body.split_at_checked(16).ok_or("body shorter than a salt")?;
    let (rs, rest) = rest.split_at_checked(4).ok_or("body ends in the record size")?;
    let rs = u32::from_be_bytes([rs[0], rs[1], rs[2], rs[3]]) as usize;
    let (&idlen, rest) = rest.split_first().ok_or("body ends before idlen")?;
    if idlen != 65 {
        return Err(format!("idlen {idlen}: RFC 8291 §4 puts the 65-byte as_public in keyid"));
    }
    let (as_public, record) = rest.split_at_checked(65).ok_or("body ends in the key id")?;
    if rs < 18 {
        return Err(format!("record size {rs} below RFC 8188's minimum of 18"));
    }
    if record.len() > rs {
        return Err(format!("{} bytes of records with rs {rs}: RFC 8291 §4 allows one", record.len()));
    }
    let as_key = PublicKey::from_sec1_bytes(as_public).map_err(|_| "key id is not a P-256 point")?;

    // RFC 8291 §3.3–§3.4, from the user agent's side.
    let ecdh = diffie_hellman(ua_private.to_nonzero_scalar(), as_key.as_affine());
    let ua_public = ua_private.public_key().to_encoded_point(false);
    let key_info = [b"WebPush: info\0".as_slice(), ua_public.as_bytes(), as_public].concat();
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), ecdh.raw_secret_bytes()).expand(&key_info, &mut ikm).map_err(|e| e.to_string())?;
    // RFC 8188 §2.2–§2.3; with one record, the sequence number XORed into the nonce is 0.
    let content = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    content.expand(b"Content-Encoding: aes128gcm\0", &mut cek).map_err(|e| e.to_string())?;
    let mut nonce = [0u8; 12];
    content.expand(b"Content-Encoding: nonce\0", &mut nonce).map_err(|e| e.to_string())?;

    let mut padded = Aes128Gcm::new_from_slice(&cek)
        .map_err(|e| e.to_string())?
        .decrypt(Nonce::from_slice(&nonce), record)
        .map_err(|_| "record does not authenticate")?;
    // RFC 8188 §2: the plaintext, then a delimiter (2 in the last record), then zeros.
    let delimiter = padded.iter().rposition(|&b| b != 0).ok_or("record has no delimiter")?;
    if padded[delimiter] != 2 {
        return Err(format!("delimiter {}, not 2 (the last record)", padded[delimiter]));
    }
    padded.truncate(delimiter);
    Ok(padded)
}

/// What a checked VAPID header carries.
#[derive(Debug)]
pub struct VapidClaims {
    /// The JWT's claims (`aud`, `exp`, `sub`).
    pub claims: serde_json::Value,
    /// The `k` parameter: the application server's public key, base64url.
    pub k: String,
}

/// Checks an `Authorization: vapid t=<JWT>, k=<key>` value as a push service does (RFC 8292
/// §3): the JWT is ES256, signed by the key in `k`. Checking the claims is the caller's part.
pub fn verify_vapid(authorization: &str) -> Result<VapidClaims, String> {
    let params = authorization.strip_prefix("vapid ").ok_or("not the vapid scheme")?;
    let (mut t, mut k) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("k", value)) => k = Some(value),
            _ => return Err(format!("unexpected parameter {param:?}")),
        }
    }
    let (t, k) = (t.ok_or("no t=")?, k.ok_or("no k=")?);
    let public = URL_SAFE_NO_PAD.decode(k).map_err(|e| format!("k: {e}"))?;
    let key = VerifyingKey::from_sec1_bytes(&public).map_err(|_| "k is not a P-256 point")?;

    let (signing_input, signature) = t.rsplit_once('.').ok_or("JWT without a signature")?;
    let (header, claims) = signing_input.split_once('.').ok_or("JWT without claims")?;
    let header = json_part(header)?;
    if header["alg"] != "ES256" {
        return Err(format!("JWT header {header}: alg is not ES256"));
    }
    // JWS ES256 (RFC 7518 §3.4): r || s, 32 bytes each, not DER.
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|e| format!("signature: {e}"))?;
    let signature = Signature::from_slice(&signature).map_err(|_| "signature is not 64 bytes of r || s")?;
    key.verify(signing_input.as_bytes(), &signature).map_err(|_| "signature does not verify")?;
    Ok(VapidClaims { claims: json_part(claims)?, k: k.to_owned() })
}

fn json_part(part: &str) -> Result<serde_json::Value, String> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|e| format!("JWT part: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("JWT part: {e}"))
}
