//! Web Push, the sending side: what an application server needs to hand a notification to a
//! browser's push service — the encrypted body, the VAPID `Authorization` header and the other
//! headers of the request. No I/O: the caller POSTs the result to the subscription's endpoint.
//!
//! **Encryption (RFC 8291, RFC 8188 `aes128gcm`).** A browser's subscription carries an
//! endpoint and two keys: `p256dh`, the user agent's P-256 public key, and `auth`, a 16-byte
//! secret. Every message gets a fresh ECDH key pair and a fresh 16-byte salt. The shared
//! secret and `auth` are combined into the input keying material (RFC 8291 §3.3–§3.4, with
//! `key_info = "WebPush: info\0" || ua_public || as_public`, so the keys of both sides are
//! bound in), from which the salt derives the content key and nonce (RFC 8188 §2.2–§2.3). The
//! message is one record (RFC 8291 §4 allows no other): the plaintext, the last-record
//! delimiter `0x02`, no further padding, sealed with AES-128-GCM. The body is the RFC 8188
//! §2.1 header — salt, record size 4096, and the ephemeral public key as key id — then the
//! record. A push service must accept 4096 bytes of body (RFC 8030 §7.2) and need not accept
//! more, so the plaintext is held to [`MAX_PLAINTEXT`] bytes (RFC 8291 §4).
//!
//! **Identification (RFC 8292, VAPID).** Each request carries
//! `Authorization: vapid t=<JWT>, k=<public key>`: a JWT signed with ES256 by the deployment's
//! long-lived key, naming the push service's origin (`aud`), an expiry within 24 hours (`exp`)
//! and a contact (`sub`). Browsers subscribe with that public key as `applicationServerKey`,
//! and push services then refuse messages for the subscription signed by any other key.
//!
//! **Other headers (RFC 8030 §5).** `TTL`, `Urgency`, optionally `Topic`, and the body's
//! `Content-Encoding` and `Content-Type`: [`request_headers`].
//!
//! Everything is `ring`, which the origin already builds for TLS; the crate `web-push` would
//! bring OpenSSL in through `ece`. The pure steps (`derive`, `seal`, `header`) are tested
//! against RFC 8291 Appendix A's example, and the whole against a receiver written with other
//! crates (`tests/support/webpush.rs`).

use base64::{
    alphabet::URL_SAFE,
    engine::{general_purpose::URL_SAFE_NO_PAD, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use ring::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM},
    agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256},
    hmac,
    rand::{SecureRandom, SystemRandom},
    signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};

/// Length of an uncompressed P-256 point: `0x04 || x || y`.
const POINT_LEN: usize = 65;
/// Length of the `auth` secret (RFC 8291 §3.2).
const AUTH_LEN: usize = 16;
/// Length of the salt (RFC 8188 §2.1).
const SALT_LEN: usize = 16;
/// The record size written in the header. With one record it only has to be larger than the
/// record; 4096 is what RFC 8291 §4 suggests and what browsers' own senders write.
const RECORD_SIZE: u32 = 4096;
/// The header: salt, record size (4), key id length (1), key id (the sender's public key).
const HEADER_LEN: usize = SALT_LEN + 4 + 1 + POINT_LEN;
/// AES-128-GCM's tag.
const TAG_LEN: usize = 16;
/// The body a push service must accept at the least (RFC 8030 §7.2).
const MAX_BODY: usize = 4096;

/// The largest plaintext [`encrypt`] takes: 4096 − 86 (header) − 1 (delimiter) − 16 (tag) =
/// 3993 bytes, the figure of RFC 8291 §4, so that the body fits every push service.
pub const MAX_PLAINTEXT: usize = MAX_BODY - HEADER_LEN - 1 - TAG_LEN;

/// How long a VAPID JWT is valid: RFC 8292 §2 allows at most 24 hours; half leaves room for
/// clocks that disagree, and a token is signed per request anyway.
const VAPID_VALIDITY_SECS: u64 = 12 * 60 * 60;

/// The JWT header of every VAPID token, base64url of `{"typ":"JWT","alg":"ES256"}`.
const JWT_HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9";

const KEY_INFO_PREFIX: &[u8] = b"WebPush: info\0";
const CEK_INFO: &[u8] = b"Content-Encoding: aes128gcm\0";
const NONCE_INFO: &[u8] = b"Content-Encoding: nonce\0";

/// Browsers give subscription keys in base64url, some with padding and some without.
const SUBSCRIPTION_BASE64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a push message or its headers could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebPushError {
    /// `p256dh` is not 65 bytes starting with `0x04` (an uncompressed point).
    #[error(
        "p256dh must be a 65-byte uncompressed P-256 point (0x04 || x || y), got {len} bytes starting {first:#04x}"
    )]
    P256dhFormat {
        /// Its length.
        len: usize,
        /// Its first byte (0 when empty).
        first: u8,
    },
    /// `p256dh` has the right shape but is not a point on P-256.
    #[error("p256dh is not a point on the P-256 curve")]
    P256dhPoint,
    /// The `auth` secret is not 16 bytes.
    #[error("auth secret must be 16 bytes, got {0}")]
    AuthLength(usize),
    /// A subscription key is not base64url.
    #[error("subscription key {0} is not base64url")]
    Base64(&'static str),
    /// The plaintext does not fit one push message.
    #[error("plaintext of {0} bytes exceeds the {MAX_PLAINTEXT} bytes a push message can carry")]
    TooLarge(usize),
    /// The endpoint is not an http(s) URL whose origin can be named.
    #[error("push endpoint {0}")]
    Endpoint(&'static str),
    /// The VAPID key is not a PKCS#8 document of an ECDSA P-256 key.
    #[error("VAPID key is not a PKCS#8 ECDSA P-256 key: {0}")]
    VapidKey(String),
    /// The VAPID subject is not a `mailto:` or `https:` URI (RFC 8292 §2.1).
    #[error("VAPID subject must be a mailto: or https: URI, got {0:?}")]
    Subject(String),
    /// The `Topic` is not 1 to 32 characters of the base64url alphabet (RFC 8030 §5.4).
    #[error("Topic must be 1 to 32 characters of the base64url alphabet, got {0:?}")]
    Topic(String),
    /// The system's random number generator or a primitive of `ring` failed; nothing the
    /// caller sent can cause it.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

/// A browser's push subscription (`PushSubscription` of the Push API): where to send, and the
/// keys to encrypt to.
#[derive(Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The push resource's URL, on the browser's push service.
    pub endpoint: String,
    /// The user agent's public key: a 65-byte uncompressed P-256 point.
    pub p256dh: Vec<u8>,
    /// The user agent's authentication secret: 16 bytes.
    pub auth: Vec<u8>,
}

impl Subscription {
    /// A subscription from the fields of `PushSubscription.toJSON()`: `endpoint`,
    /// `keys.p256dh` and `keys.auth`, the keys base64url with or without padding. Checks what
    /// a message will need: an http(s) endpoint, a valid point and a 16-byte secret.
    pub fn from_base64url(endpoint: &str, p256dh: &str, auth: &str) -> Result<Self, WebPushError> {
        audience(endpoint)?;
        let p256dh = SUBSCRIPTION_BASE64.decode(p256dh).map_err(|_| WebPushError::Base64("p256dh"))?;
        let auth = SUBSCRIPTION_BASE64.decode(auth).map_err(|_| WebPushError::Base64("auth"))?;
        check_keys(&p256dh, &auth)?;
        // A point off the curve would only be found at the first message.
        let rng = SystemRandom::new();
        let probe = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| WebPushError::Crypto("random"))?;
        agreement::agree_ephemeral(probe, &UnparsedPublicKey::new(&ECDH_P256, &p256dh), |_| ())
            .map_err(|_| WebPushError::P256dhPoint)?;
        Ok(Subscription { endpoint: endpoint.to_owned(), p256dh, auth })
    }

    /// [`encrypt`] to this subscription's keys.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, WebPushError> {
        encrypt(&self.p256dh, &self.auth, plaintext)
    }
}

// The keys are secrets of the subscriber's, and the endpoint lets anyone holding it wake the
// browser, so neither is printed in full.
impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = audience(&self.endpoint).unwrap_or_default();
        f.debug_struct("Subscription").field("endpoint_origin", &origin).finish_non_exhaustive()
    }
}

/// Encrypts `plaintext` for a subscription's keys: the body of a push request, sent with
/// `Content-Encoding: aes128gcm`. Each call uses a new ephemeral key and salt, so equal
/// plaintexts give unrelated bodies. The body is 103 bytes longer than the plaintext.
///
/// Fails on a `p256dh` that is not an uncompressed point on P-256, an `auth` that is not 16
/// bytes, or a plaintext longer than [`MAX_PLAINTEXT`].
pub fn encrypt(p256dh: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, WebPushError> {
    check_keys(p256dh, auth)?;
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(WebPushError::TooLarge(plaintext.len()));
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    rng.fill(&mut salt).map_err(|_| WebPushError::Crypto("random"))?;
    let private = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| WebPushError::Crypto("random"))?;
    let public = private.compute_public_key().map_err(|_| WebPushError::Crypto("ECDH public key"))?;
    let as_public: &[u8; POINT_LEN] =
        public.as_ref().try_into().map_err(|_| WebPushError::Crypto("ECDH public key length"))?;
    // ring checks that the peer's point is on the curve before agreeing.
    let (cek, nonce) =
        agreement::agree_ephemeral(private, &UnparsedPublicKey::new(&ECDH_P256, p256dh), |ecdh_secret| {
            derive(ecdh_secret, auth, p256dh, as_public, &salt)
        })
        .map_err(|_| WebPushError::P256dhPoint)?;
    let mut body = header(&salt, as_public);
    body.extend_from_slice(&seal(&cek, &nonce, plaintext)?);
    Ok(body)
}

fn check_keys(p256dh: &[u8], auth: &[u8]) -> Result<(), WebPushError> {
    if p256dh.len() != POINT_LEN || p256dh[0] != 0x04 {
        return Err(WebPushError::P256dhFormat { len: p256dh.len(), first: p256dh.first().copied().unwrap_or(0) });
    }
    if auth.len() != AUTH_LEN {
        return Err(WebPushError::AuthLength(auth.len()));
    }
    Ok(())
}

/// The content encryption key and nonce of the message's one record, from the ECDH secret:
/// RFC 8291 §3.3–§3.4, then RFC 8188 §2.2–§2.3 (the record's sequence number is 0, so the
/// nonce is used as derived).
fn derive(
    ecdh_secret: &[u8],
    auth: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8; SALT_LEN],
) -> ([u8; 16], [u8; 12]) {
    let prk = hkdf_extract(salt, &ikm(ecdh_secret, auth, ua_public, as_public));
    (hkdf_expand(&prk, CEK_INFO), hkdf_expand(&prk, NONCE_INFO))
}

/// RFC 8291 §3.4's IKM: `HKDF(salt = auth, IKM = ecdh_secret, info = key_info, L = 32)`.
fn ikm(ecdh_secret: &[u8], auth: &[u8], ua_public: &[u8], as_public: &[u8]) -> [u8; 32] {
    hkdf_expand(&hkdf_extract(auth, ecdh_secret), &key_info(ua_public, as_public))
}

/// `"WebPush: info" || 0x00 || ua_public || as_public` (RFC 8291 §3.4).
fn key_info(ua_public: &[u8], as_public: &[u8]) -> Vec<u8> {
    [KEY_INFO_PREFIX, ua_public, as_public].concat()
}

/// HKDF-Extract with SHA-256 (RFC 5869 §2.2). Written on HMAC rather than `ring::hkdf` so that
/// the pseudorandom keys can be compared with RFC 8291's example.
fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> [u8; 32] {
    let mut prk = [0u8; 32];
    prk.copy_from_slice(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm).as_ref());
    prk
}

/// HKDF-Expand with SHA-256 (RFC 5869 §2.3) for at most one block, all that Web Push needs:
/// the first `N` bytes of `HMAC(prk, info || 0x01)`.
fn hkdf_expand<const N: usize>(prk: &[u8; 32], info: &[u8]) -> [u8; N] {
    const { assert!(N <= 32, "one HMAC-SHA-256 block") };
    let mut context = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, prk));
    context.update(info);
    context.update(&[1]);
    let mut okm = [0u8; N];
    okm.copy_from_slice(&context.sign().as_ref()[..N]);
    okm
}

/// The one record, sealed: `plaintext || 0x02` (the delimiter of the last record, RFC 8188
/// §2, and no padding after it) under AES-128-GCM, the 16-byte tag appended.
fn seal(cek: &[u8; 16], nonce: &[u8; 12], plaintext: &[u8]) -> Result<Vec<u8>, WebPushError> {
    let key = UnboundKey::new(&AES_128_GCM, cek).map_err(|_| WebPushError::Crypto("AES-128-GCM key"))?;
    let mut record = Vec::with_capacity(plaintext.len() + 1 + TAG_LEN);
    record.extend_from_slice(plaintext);
    record.push(0x02);
    LessSafeKey::new(key)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::empty(), &mut record)
        .map_err(|_| WebPushError::Crypto("AES-128-GCM seal"))?;
    Ok(record)
}

/// RFC 8188 §2.1's header: `salt || rs || idlen || keyid`, the key id being the sender's
/// public key (RFC 8291 §4).
fn header(salt: &[u8; SALT_LEN], as_public: &[u8; POINT_LEN]) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(salt);
    header.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    header.push(POINT_LEN as u8);
    header.extend_from_slice(as_public);
    header
}

/// The deployment's VAPID identity (RFC 8292): an ECDSA P-256 key and a contact, which sign
/// the `Authorization` header of every push request.
#[derive(Debug)]
pub struct Vapid {
    key: EcdsaKeyPair,
    subject: String,
    rng: SystemRandom,
}

impl Vapid {
    /// A new VAPID key, as a PKCS#8 document to keep in the deployment's secrets and load with
    /// [`Vapid::from_pkcs8`]. Changing it strands every existing subscription: browsers bind a
    /// subscription to the key it was made with.
    pub fn generate() -> Result<Vec<u8>, WebPushError> {
        let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| WebPushError::Crypto("VAPID key generation"))?;
        Ok(document.as_ref().to_vec())
    }

    /// The identity of a PKCS#8 key from [`Vapid::generate`] and a contact for the push
    /// services' operators: a `mailto:` or `https:` URI (RFC 8292 §2.1).
    pub fn from_pkcs8(pkcs8: &[u8], subject: &str) -> Result<Vapid, WebPushError> {
        let contact = [("mailto:", subject.get(..7)), ("https://", subject.get(..8))]
            .into_iter()
            .find(|(scheme, prefix)| prefix.is_some_and(|p| p.eq_ignore_ascii_case(scheme)));
        match contact {
            Some((scheme, _)) if subject.len() > scheme.len() && !subject.contains(char::is_whitespace) => {}
            _ => return Err(WebPushError::Subject(subject.to_owned())),
        }
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| WebPushError::VapidKey(e.to_string()))?;
        Ok(Vapid { key, subject: subject.to_owned(), rng })
    }

    /// The public key, base64url without padding, of its uncompressed point: the
    /// `applicationServerKey` a page passes to `pushManager.subscribe()`, and the `k` of
    /// [`Vapid::authorization`].
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.public_key().as_ref())
    }

    /// The `Authorization` header's value for a push request to `endpoint` made at `now_secs`
    /// (seconds since the Unix epoch): `vapid t=<JWT>, k=<public key>` (RFC 8292 §3). The
    /// JWT's `aud` is the endpoint's origin, its `exp` 12 hours on, its `sub` the subject.
    /// Push services may cache a valid token, but a new one per request is cheap enough.
    pub fn authorization(&self, endpoint: &str, now_secs: u64) -> Result<String, WebPushError> {
        let claims = serde_json::json!({
            "aud": audience(endpoint)?,
            "exp": now_secs.saturating_add(VAPID_VALIDITY_SECS),
            "sub": self.subject,
        });
        let signing_input = format!("{JWT_HEADER}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        // The FIXED encoding is r || s, 32 bytes each: JWS's ES256 (RFC 7518 §3.4), not DER.
        let signature =
            self.key.sign(&self.rng, signing_input.as_bytes()).map_err(|_| WebPushError::Crypto("ES256 signature"))?;
        Ok(format!("vapid t={signing_input}.{}, k={}", URL_SAFE_NO_PAD.encode(signature.as_ref()), self.public_key()))
    }
}

/// The origin of an endpoint, `scheme://host[:port]` (RFC 6454 §6.1): lower case, the default
/// port left out, as RFC 8292 §2 wants for `aud`. Only http(s) URLs with a plain host or an
/// IP address are taken; push services' endpoints are nothing else.
fn audience(endpoint: &str) -> Result<String, WebPushError> {
    let (scheme, rest) = endpoint.split_once("://").ok_or(WebPushError::Endpoint("is not an absolute URL"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return Err(WebPushError::Endpoint("is not an http(s) URL")),
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Err(WebPushError::Endpoint("carries credentials"));
    }
    // An IPv6 literal has colons of its own, so the port follows its closing bracket.
    let (host, port) = if let Some(literal) = authority.strip_prefix('[') {
        let (address, after) = literal.split_once(']').ok_or(WebPushError::Endpoint("has an unclosed IPv6 literal"))?;
        if address.is_empty() || !address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return Err(WebPushError::Endpoint("has an invalid IPv6 literal"));
        }
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(WebPushError::Endpoint("has junk after its IPv6 literal"))?),
        };
        (format!("[{}]", address.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        // Push services' hosts are DNS names or addresses; a non-ASCII name would need IDNA.
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
            return Err(WebPushError::Endpoint("has an empty or invalid host"));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        // An empty port means the default one (as in the WHATWG URL parser).
        None | Some("") => default_port,
        Some(port) if port.bytes().all(|b| b.is_ascii_digit()) => {
            port.parse::<u16>().map_err(|_| WebPushError::Endpoint("has a port above 65535"))?
        }
        Some(_) => return Err(WebPushError::Endpoint("has an invalid port")),
    };
    Ok(if port == default_port { format!("{scheme}://{host}") } else { format!("{scheme}://{host}:{port}") })
}

/// How soon a message should be delivered (RFC 8030 §5.3); push services may hold back lower
/// urgencies to save a device's battery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Urgency {
    /// Deliver on power and Wi-Fi only.
    VeryLow,
    /// Deliver on power or Wi-Fi.
    Low,
    /// Deliver unless the battery is low (what a push service assumes with no header).
    #[default]
    Normal,
    /// Deliver at once, even on low battery (a message a person is waiting for).
    High,
}

impl Urgency {
    /// The header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

/// The headers of a push request other than `Authorization` (from [`Vapid::authorization`])
/// and `Content-Length`: `Content-Encoding: aes128gcm` and
/// `Content-Type: application/octet-stream` for the body of [`encrypt`]; `TTL`, how many
/// seconds the push service keeps the message for an offline browser (RFC 8030 §5.2; 0: deliver
/// now or never); `Urgency` (§5.3); and, when given, `Topic` (§5.4), under which a newer
/// message replaces one not yet delivered. Names are lower case, as HTTP/2 sends them.
///
/// Fails on a topic that is not 1 to 32 characters of the base64url alphabet.
pub fn request_headers(
    ttl_secs: u32,
    urgency: Urgency,
    topic: Option<&str>,
) -> Result<Vec<(&'static str, String)>, WebPushError> {
    let mut headers = vec![
        ("content-encoding", "aes128gcm".to_owned()),
        ("content-type", "application/octet-stream".to_owned()),
        ("ttl", ttl_secs.to_string()),
        ("urgency", urgency.as_str().to_owned()),
    ];
    if let Some(topic) = topic {
        let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if topic.is_empty() || topic.len() > 32 || !topic.bytes().all(base64url) {
            return Err(WebPushError::Topic(topic.to_owned()));
        }
        headers.push(("topic", topic.to_owned()));
    }
    Ok(headers)
}

#[cfg(test)]
#[path = "../../tests/support/webpush.rs"]
mod receiver;

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    /// RFC 8291 Appendix A ("Intermediate Values for Encryption"), every value as printed
    /// there, its line breaks removed.
    mod rfc8291 {
        pub const PLAINTEXT: &[u8] = b"When I grow up, I want to be a watermelon";
        pub const AS_PUBLIC: &str =
            "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
        pub const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
        pub const UA_PUBLIC: &str =
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        pub const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
        pub const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
        pub const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
        pub const ECDH_SECRET: &str = "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs";
        pub const PRK_KEY: &str = "Snr3JMxaHVDXHWJn5wdC52WjpCtd2EIEGBykDcZW32k";
        pub const KEY_INFO: &str =
            "V2ViUHVzaDogaW5mbwAEJXGyvs3942BVGq8e0PTNNmwRzr5VX4m8t7GGpTM5FzFo7OLr4BhZe9MEebhuPI-OztV3\
            ylkYfpJGmQ22ggCLDgT-M_SrDepxkU21WCP3O1SUj0EwbZIHMtu5pZpTKGSCIA5Zent7wmC6HCJ5mFgJkuk5cwAvMBKiiujwa7t45ewP";
        pub const IKM: &str = "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg";
        pub const PRK: &str = "09_eUZGrsvxChDCGRCdkLiDXrReGOEVeSCdCcPBSJSc";
        pub const CEK_INFO: &str = "Q29udGVudC1FbmNvZGluZzogYWVzMTI4Z2NtAA";
        pub const CEK: &str = "oIhVW04MRdy2XN9CiKLxTg";
        pub const NONCE_INFO: &str = "Q29udGVudC1FbmNvZGluZzogbm9uY2UA";
        pub const NONCE: &str = "4h_95klXJ5E_qnoN";
        pub const HEADER: &str =
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
        pub const CIPHERTEXT: &str = "8pfeW0KbunFT06SuDKoJH9Ql87S1QUrdirN6GcG7sFz1y1sqLgVi1VhjVkHsUoEsbI_0LpXMuGvnzQ";
        pub const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";
    }

    fn array<const N: usize>(text: &str) -> [u8; N] {
        b64(text).try_into().unwrap()
    }

    #[test]
    fn key_schedule_matches_rfc8291_appendix_a() {
        use rfc8291::*;
        let (ecdh, auth, ua, r#as) = (b64(ECDH_SECRET), b64(AUTH), b64(UA_PUBLIC), b64(AS_PUBLIC));
        assert_eq!(hkdf_extract(&auth, &ecdh), array(PRK_KEY), "PRK_key");
        assert_eq!(key_info(&ua, &r#as), b64(KEY_INFO), "key_info");
        assert_eq!(ikm(&ecdh, &auth, &ua, &r#as), array(IKM), "IKM");
        assert_eq!(hkdf_extract(&b64(SALT), &b64(IKM)), array(PRK), "PRK");
        assert_eq!(super::CEK_INFO, b64(CEK_INFO), "cek_info");
        assert_eq!(super::NONCE_INFO, b64(NONCE_INFO), "nonce_info");
        assert_eq!(derive(&ecdh, &auth, &ua, &r#as, &array(SALT)), (array(CEK), array(NONCE)), "CEK, NONCE");
    }

    #[test]
    fn body_matches_rfc8291_appendix_a() {
        use rfc8291::*;
        let header = header(&array(SALT), &array(AS_PUBLIC));
        assert_eq!(header, b64(HEADER));
        let record = seal(&array(CEK), &array(NONCE), PLAINTEXT).unwrap();
        assert_eq!(record, b64(CIPHERTEXT));
        assert_eq!(URL_SAFE_NO_PAD.encode([header, record].concat()), BODY);
    }

    /// The receiver the round trips rely on opens the RFC's message, and its ECDH agrees with
    /// the RFC's secret: it is right independently of the sender.
    #[test]
    fn receiver_opens_rfc8291_appendix_a() {
        use p256::{ecdh::diffie_hellman, PublicKey, SecretKey};
        use rfc8291::*;
        let as_private = SecretKey::from_slice(&b64(AS_PRIVATE)).unwrap();
        let ua_private = SecretKey::from_slice(&b64(UA_PRIVATE)).unwrap();
        let ua_public = PublicKey::from_sec1_bytes(&b64(UA_PUBLIC)).unwrap();
        let secret = diffie_hellman(as_private.to_nonzero_scalar(), ua_public.as_affine());
        assert_eq!(secret.raw_secret_bytes().as_slice(), b64(ECDH_SECRET));
        assert_eq!(receiver::decrypt(&ua_private, &b64(AUTH), &b64(BODY)).unwrap(), PLAINTEXT);
    }

    #[test]
    fn encrypt_round_trips_through_an_independent_receiver() {
        let (ua_private, p256dh, auth) = receiver::new_subscription_keys();
        for len in [0, 1, 41, 1000, MAX_PLAINTEXT] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let body = encrypt(&p256dh, &auth, &plaintext).unwrap();
            assert_eq!(body.len(), HEADER_LEN + len + 1 + TAG_LEN);
            assert_eq!(body[16..21], [0, 0, 0x10, 0, 65], "rs 4096, idlen 65");
            assert_eq!(receiver::decrypt(&ua_private, &auth, &body).unwrap(), plaintext, "{len} bytes");
        }
        assert_eq!(MAX_PLAINTEXT, 3993);
        assert_eq!(encrypt(&p256dh, &auth, &[0; MAX_PLAINTEXT]).unwrap().len(), 4096);

        // A fresh salt and key each time: the same message never looks the same twice.
        let (one, two) = (encrypt(&p256dh, &auth, b"hi").unwrap(), encrypt(&p256dh, &auth, b"hi").unwrap());
        assert_ne!(one[..16], two[..16], "salt");
        assert_ne!(one[21..86], two[21..86], "ephemeral key");

        // Another subscription's keys cannot open it.
        let (other_private, _, other_auth) = receiver::new_subscription_keys();
        assert!(receiver::decrypt(&other_private, &auth, &one).is_err());
        assert!(receiver::decrypt(&ua_private, &other_auth, &one).is_err());
    }

    #[test]
    fn encrypt_rejects_bad_keys_and_large_plaintexts() {
        let (_, p256dh, auth) = receiver::new_subscription_keys();
        let compressed = [&[0x02][..], &p256dh[1..33]].concat();
        assert_eq!(encrypt(&compressed, &auth, b"x"), Err(WebPushError::P256dhFormat { len: 33, first: 2 }));
        assert_eq!(encrypt(&[], &auth, b"x"), Err(WebPushError::P256dhFormat { len: 0, first: 0 }));
        let mut off_curve = p256dh.clone();
        off_curve[64] ^= 1;
        assert_eq!(encrypt(&off_curve, &auth, b"x"), Err(WebPushError::P256dhPoint));
        assert_eq!(encrypt(&p256dh, &auth[..15], b"x"), Err(WebPushError::AuthLength(15)));
        assert_eq!(encrypt(&p256dh, &auth, &[0; MAX_PLAINTEXT + 1]), Err(WebPushError::TooLarge(3994)));
    }

    #[test]
    fn subscription_from_base64url() {
        let (_, p256dh, auth) = receiver::new_subscription_keys();
        let endpoint = "https://push.example.net/wpush/v2/abc";
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&auth);
        let subscription = Subscription::from_base64url(endpoint, &URL_SAFE_NO_PAD.encode(&p256dh), &padded).unwrap();
        assert_eq!(
            subscription,
            Subscription { endpoint: endpoint.into(), p256dh: p256dh.clone(), auth: auth.clone() }
        );
        assert!(!format!("{subscription:?}").contains("abc"), "Debug hides the endpoint's path");

        let mut off_curve = p256dh.clone();
        off_curve[64] ^= 1;
        let from = |endpoint, p256dh: &[u8], auth: &str| {
            Subscription::from_base64url(endpoint, &URL_SAFE_NO_PAD.encode(p256dh), auth)
        };
        assert_eq!(from(endpoint, &off_curve, &padded), Err(WebPushError::P256dhPoint));
        assert_eq!(from(endpoint, &p256dh, "not base64!"), Err(WebPushError::Base64("auth")));
        assert_eq!(from(endpoint, &p256dh, "AAAA"), Err(WebPushError::AuthLength(3)));
        assert!(matches!(from("ftp://push.example.net/x", &p256dh, &padded), Err(WebPushError::Endpoint(_))));
    }

    #[test]
    fn vapid_authorization_verifies_with_an_independent_verifier() {
        let vapid = Vapid::from_pkcs8(&Vapid::generate().unwrap(), "mailto:ops@example.com").unwrap();
        let now = 1_700_000_000;
        // ring's signatures are randomized, half of them with a high s: check several.
        for _ in 0..8 {
            let authorization = vapid.authorization("https://Push.Example.net:8443/wpush/v2/abc?x=1", now).unwrap();
            let (jwt_header, _) = authorization["vapid t=".len()..].split_once('.').unwrap();
            let jwt_header: serde_json::Value = serde_json::from_slice(&b64(jwt_header)).unwrap();
            assert_eq!(jwt_header, serde_json::json!({"typ": "JWT", "alg": "ES256"}));

            let checked = receiver::verify_vapid(&authorization).unwrap();
            assert_eq!(checked.k, vapid.public_key());
            assert_eq!(checked.claims["aud"], "https://push.example.net:8443");
            assert_eq!(checked.claims["sub"], "mailto:ops@example.com");
            let exp = checked.claims["exp"].as_u64().unwrap();
            assert!(exp > now && exp <= now + 24 * 60 * 60, "exp {exp} within RFC 8292's 24 hours");
            assert_eq!(exp, now + 12 * 60 * 60);
        }
        let public = b64(&vapid.public_key());
        assert_eq!((public.len(), public[0]), (65, 0x04), "an uncompressed point for applicationServerKey");
        assert!(vapid.authorization("mailto:push@example.net", now).is_err());

        // Another key's header does not pass as this key's.
        let other = Vapid::from_pkcs8(&Vapid::generate().unwrap(), "https://example.com/contact").unwrap();
        let forged = other.authorization("https://push.example.net/x", now).unwrap();
        let (token, _) = forged.split_once(", k=").unwrap();
        assert!(receiver::verify_vapid(&format!("{token}, k={}", vapid.public_key())).is_err());
    }

    #[test]
    fn vapid_key_survives_pkcs8_and_bad_input_is_refused() {
        let pkcs8 = Vapid::generate().unwrap();
        let one = Vapid::from_pkcs8(&pkcs8, "https://selvage.example/contact").unwrap();
        let two = Vapid::from_pkcs8(&pkcs8, "MAILTO:ops@example.com").unwrap();
        assert_eq!(one.public_key(), two.public_key());
        assert_ne!(
            one.public_key(),
            Vapid::from_pkcs8(&Vapid::generate().unwrap(), "mailto:a@b").unwrap().public_key()
        );

        assert!(matches!(Vapid::from_pkcs8(b"not a key", "mailto:a@b"), Err(WebPushError::VapidKey(_))));
        for subject in ["", "mailto:", "https://", "http://example.com", "ops@example.com", "mailto:a b@c", "ñ"] {
            assert_eq!(Vapid::from_pkcs8(&pkcs8, subject).unwrap_err(), WebPushError::Subject(subject.into()));
        }
    }

    #[test]
    fn audience_is_the_endpoint_origin() {
        for (endpoint, origin) in [
            ("https://fcm.googleapis.com/fcm/send/abc:def", "https://fcm.googleapis.com"),
            ("https://updates.push.services.mozilla.com/wpush/v2/gAAA", "https://updates.push.services.mozilla.com"),
            ("HTTPS://Web.Push.Apple.com:443/QGx?x=1#f", "https://web.push.apple.com"),
            ("https://push.example.net:8443", "https://push.example.net:8443"),
            ("https://push.example.net:?q", "https://push.example.net"),
            ("http://127.0.0.1:80/push", "http://127.0.0.1"),
            ("http://127.0.0.1:0443/push", "http://127.0.0.1:443"),
            ("http://[::1]:8080/push/1", "http://[::1]:8080"),
            ("https://[2001:DB8::1]/p", "https://[2001:db8::1]"),
        ] {
            assert_eq!(audience(endpoint).as_deref(), Ok(origin), "{endpoint}");
        }
        for endpoint in [
            "",
            "push.example.net/x",
            "ftp://push.example.net/x",
            "https:///x",
            "https://user:pw@push.example.net/x",
            "https://push.example.net:65536/x",
            "https://push.example.net:+1/x",
            "https://push.example.net:1:2/x",
            "https://push example.net/x",
            "https://пуш.example/x",
            "https://[::1/x",
            "https://[::1]x/x",
            "https://[fe80::1%25eth0]/x",
        ] {
            assert!(matches!(audience(endpoint), Err(WebPushError::Endpoint(_))), "{endpoint}");
        }
    }

    #[test]
    fn request_headers_follow_rfc8030() {
        assert_eq!(
            request_headers(3600, Urgency::High, Some("channel-42_x")).unwrap(),
            [
                ("content-encoding", "aes128gcm".to_owned()),
                ("content-type", "application/octet-stream".to_owned()),
                ("ttl", "3600".to_owned()),
                ("urgency", "high".to_owned()),
                ("topic", "channel-42_x".to_owned()),
            ]
        );
        let headers = request_headers(0, Urgency::default(), None).unwrap();
        assert_eq!(headers[2..], [("ttl", "0".to_owned()), ("urgency", "normal".to_owned())]);
        assert_eq!(Urgency::VeryLow.as_str(), "very-low");
        assert_eq!(Urgency::Low.as_str(), "low");

        assert!(request_headers(60, Urgency::Normal, Some(&"a".repeat(32))).is_ok());
        for topic in ["", "a+b", "a/b", "a=", "ä", &"a".repeat(33)] {
            assert_eq!(request_headers(60, Urgency::Normal, Some(topic)), Err(WebPushError::Topic(topic.into())));
        }
    }
}
