//! The edge's errors and their one mapping to what a client sees (ARCHITECTURE §4): the
//! protocol's error codes ([`ErrorCode`]) in `error` frames, and close codes ([`close`]).
//!
//! Whatever goes wrong for a client — a session that cannot start, a request that fails — is an
//! [`EdgeError`]. [`EdgeError::code`] and [`EdgeError::client_message`] are the only places that
//! decide what the client is told, and [`EdgeError::close_code`] how a session that cannot
//! start is closed. A failure of the link to the origin, or of the edge itself, shows the client
//! only its stable code and a fixed message; what went wrong is logged ([`EdgeError::frame`]),
//! with the request's id where the frame has one. What the origin refuses keeps the origin's own
//! message, which the origin writes for clients.
//!
//! [`StartError`] is why a node could not start at all; it goes to the operator, not a client.

use std::net::SocketAddr;

use selvage_shared::{link::LinkError, DecodeError, ErrorCode, ServerFrame};

/// Close codes (WebSocket close codes; QUIC application error codes).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// A frame the edge will not take: one that arrived too slowly (WebSocket "policy
    /// violation").
    pub const POLICY: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_LARGE: u16 = 1009;
    /// The edge is draining (WebSocket "service restart").
    pub const DRAINING: u16 = 1012;
    /// The edge is too busy to take a large frame now (WebSocket "try again later").
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Authentication failed, the token was revoked or expired, or it is an app's token
    /// without the `events` scope.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The session could not be booted (origin unreachable and nothing cached, …); retry.
    pub const UNAVAILABLE: u16 = 4003;
    /// Nothing received for 2.5 heartbeats.
    pub const IDLE: u16 = 4004;
    /// The client did not keep up; reconnect with `resume`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client must boot again (no resume).
    pub const RESYNC: u16 = 4009;
    /// The user has `sessions.max_connections_per_user` connections to this edge already.
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
}

/// What a client is told when the origin cannot be reached (the link is down, a call timed
/// out or was cut): the link's own detail is for the log.
const ORIGIN_UNAVAILABLE: &str = "the origin is unreachable; retry with backoff (a send with the same client_msg_id)";

/// What a client is told of a failure inside the edge (or an origin answer it did not expect).
const INTERNAL: &str = "internal error; the edge logged it";

/// Why a client's session or request failed.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A client frame that does not decode, or is too large to.
    #[error("{0}")]
    BadFrame(#[from] DecodeError),
    /// The token is unknown, expired or revoked, or its user unknown or deactivated.
    #[error("{0}")]
    Unauthorized(String),
    /// The user has as many connections to this edge as `sessions.max_connections_per_user`.
    #[error("this user has {max} connections to this edge already; close one")]
    TooManyConnections {
        /// The cap.
        max: usize,
    },
    /// The client sends a kind of frame more often than it may.
    #[error("{0}")]
    RateLimited(String),
    /// A query the workspace's state refuses (a malformed query, a channel the user may not
    /// see, …), with the state's code.
    #[error("{message}")]
    Refused {
        /// The code the state gave.
        code: ErrorCode,
        /// Why, for the client.
        message: String,
    },
    /// The edge cannot do it now (a boot that took too long, a workspace being reloaded, missed
    /// events it could not fetch); retry.
    #[error("{0}")]
    Unavailable(String),
    /// A call to the origin failed: the origin refused it, or the link failed.
    #[error("origin call failed: {}: {}", .0.code, .0.message)]
    Origin(LinkError),
    /// A bug, or an origin answer the edge did not expect.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<LinkError> for EdgeError {
    fn from(e: LinkError) -> Self {
        EdgeError::Origin(e)
    }
}

impl EdgeError {
    /// The stable error code for this error, shared with the client protocol.
    pub fn code(&self) -> ErrorCode {
        match self {
            EdgeError::BadFrame(e) => e.code(),
            EdgeError::Unauthorized(_) => ErrorCode::Unauthorized,
            // A boot is rate limited only by the cap on a user's connections.
            EdgeError::TooManyConnections { .. } | EdgeError::RateLimited(_) => ErrorCode::RateLimited,
            EdgeError::Refused { code, .. } => *code,
            EdgeError::Unavailable(_) => ErrorCode::Unavailable,
            EdgeError::Origin(e) => e.code,
            EdgeError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// What the client is told. A refusal explains itself (it concerns only what the client
    /// sent or may do); an unreachable origin or an internal failure gets a fixed text per
    /// code, as its detail is the edge's.
    pub fn client_message(&self) -> String {
        match self.code() {
            ErrorCode::Internal => INTERNAL.into(),
            ErrorCode::Unavailable if matches!(self, EdgeError::Origin(_)) => ORIGIN_UNAVAILABLE.into(),
            _ => match self {
                EdgeError::Origin(e) => e.message.clone(),
                other => other.to_string(),
            },
        }
    }

    /// How a session that could not start for this error is closed (after its `error` frame).
    pub fn close_code(&self) -> u16 {
        match self.code() {
            // An app token without `events`: trying again will not help either.
            ErrorCode::Unauthorized | ErrorCode::Forbidden => close::UNAUTHORIZED,
            ErrorCode::RateLimited => close::TOO_MANY_CONNECTIONS,
            _ => close::UNAVAILABLE,
        }
    }

    /// The `error` frame for this error, answering request `reply_to` if it has an id; what
    /// the client is not told is logged with that id.
    pub fn frame(&self, reply_to: Option<String>) -> ServerFrame {
        let request = reply_to.as_deref().unwrap_or_default();
        match self.code() {
            ErrorCode::Internal => tracing::error!(request.id = request, error = %self, "request failed"),
            // The link's outages are logged once each by the link itself.
            _ => tracing::debug!(request.id = request, error = %self, "request refused"),
        }
        ServerFrame::error(reply_to, self.code(), self.client_message())
    }
}

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
    Tls(#[from] selvage_net::tls::TlsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(code: ErrorCode, message: &str) -> EdgeError {
        EdgeError::Origin(LinkError { code, message: message.into() })
    }

    #[test]
    fn a_failed_link_or_the_edge_itself_shows_the_client_only_a_fixed_text() {
        let down = link(ErrorCode::Unavailable, "the link to the origin is down (TLS handshake with 10.0.0.5:7443)");
        assert_eq!((down.code(), down.client_message().as_str()), (ErrorCode::Unavailable, ORIGIN_UNAVAILABLE));
        assert_eq!(down.close_code(), close::UNAVAILABLE);
        let odd = link(ErrorCode::Internal, "the origin answered a snapshot call with Pong");
        assert_eq!((odd.code(), odd.client_message().as_str()), (ErrorCode::Internal, INTERNAL));
        let bug = EdgeError::Internal("query is not a request".into());
        assert_eq!((bug.code(), bug.client_message().as_str()), (ErrorCode::Internal, INTERNAL));
        match bug.frame(Some("q1".into())) {
            ServerFrame::Error { reply_to, code, message, .. } => {
                assert_eq!((reply_to.as_deref(), code, message.as_str()), (Some("q1"), ErrorCode::Internal, INTERNAL))
            }
            other => panic!("not an error frame: {other:?}"),
        }
    }

    #[test]
    fn refusals_explain_themselves_with_their_code_and_close() {
        let not_member = link(ErrorCode::NotMember, "you are not a member of C1");
        assert_eq!(
            (not_member.code(), not_member.client_message()),
            (ErrorCode::NotMember, "you are not a member of C1".into())
        );
        let cap = EdgeError::TooManyConnections { max: 20 };
        assert_eq!((cap.code(), cap.close_code()), (ErrorCode::RateLimited, close::TOO_MANY_CONNECTIONS));
        assert!(cap.client_message().contains("20 connections"), "{}", cap.client_message());
        let token = EdgeError::Unauthorized("the token expired".into());
        assert_eq!((token.code(), token.close_code()), (ErrorCode::Unauthorized, close::UNAUTHORIZED));
        assert_eq!(token.client_message(), "the token expired");
        let slow = EdgeError::Unavailable("boot took too long; retry".into());
        assert_eq!(
            (slow.close_code(), slow.client_message()),
            (close::UNAVAILABLE, "boot took too long; retry".into())
        );
        let refused = EdgeError::Refused { code: ErrorCode::NotFound, message: "channel C2 not found".into() };
        assert_eq!((refused.code(), refused.client_message()), (ErrorCode::NotFound, "channel C2 not found".into()));
    }
}
