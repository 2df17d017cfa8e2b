//! Why a client call fails, and how a connection ended.

use selvage_shared::ErrorCode;

use crate::session::Inbound;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be set up: address, TCP or QUIC handshake, TLS, WebSocket upgrade.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection is closed: by the edge, by the network or by this client.
    #[error("connection closed: {}", describe_close(*.code, .reason))]
    Closed {
        /// WebSocket close code, or QUIC application error code when it fits in 16 bits.
        code: Option<u16>,
        /// The close reason, or what ended the connection.
        reason: String,
    },
    /// The edge answered with an `error` (to a request, or instead of `hello`), or refused the
    /// WebSocket upgrade with an HTTP error.
    #[error("refused by the edge: {code}: {message}")]
    Refused {
        /// Stable code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// The edge cannot resume from the cursor given: connect again without `resume`.
    #[error("the edge cannot resume this session: {0}")]
    Resync(String),
    /// No answer in time; names what was awaited.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The edge broke the protocol (undecodable or unexpected frame, wrong protocol version).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local I/O failure (e.g. binding the UDP socket).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The protocol error code, for [`ClientError::Refused`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn describe_close(code: Option<u16>, reason: &str) -> String {
    match code {
        Some(code) => format!("code {code}, {reason:?}"),
        None => reason.to_owned(),
    }
}

/// How a connection ended.
#[derive(Clone, Debug)]
pub(crate) struct CloseInfo {
    pub(crate) code: Option<u16>,
    pub(crate) reason: String,
}

impl CloseInfo {
    pub(crate) fn new(code: Option<u16>, reason: impl Into<String>) -> CloseInfo {
        CloseInfo { code, reason: reason.into() }
    }

    pub(crate) fn error(&self) -> ClientError {
        ClientError::Closed { code: self.code, reason: self.reason.clone() }
    }

    pub(crate) fn inbound(&self) -> Inbound {
        Inbound::Closed { code: self.code, reason: self.reason.clone() }
    }
}
