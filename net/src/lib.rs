//! Networking that the origin, the edge and clients share, kept out of `selvage-shared` so the
//! wire contract stays free of I/O: TLS for QUIC connections ([`tls`]: identities, self-signed
//! certificates, pinning, rustls configurations) and length-prefixed frames on QUIC streams
//! ([`quic`]: reading and batched writing, UDP socket setup).
//!
//! The frames themselves — their prefix and limits — are defined in `selvage_shared::link`; this
//! crate only moves them over quinn streams.

#![warn(missing_docs)]

pub mod quic;
pub mod tls;
