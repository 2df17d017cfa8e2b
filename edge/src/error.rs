//! The edge's errors: why a node could not start.

use std::net::SocketAddr;

/// Why an edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration failed validation.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The client QUIC certificate could not be loaded or made.
    #[error("client QUIC TLS: {0}")]
    Tls(#[from] selvage_shared::tls::TlsError),
}
