//! The origin's error type and its one mapping to HTTP statuses and protocol error codes.
//!
//! Every failure a request can meet ends up as an [`OriginError`]; [`OriginError::code`] is the
//! only place that decides what a client sees for it (the HTTP status follows from the code), rendered as
//! ARCHITECTURE §5's `{"error": {"code", "message"}}`.
//!
//! A server error (5xx) shows the client only its stable code and a fixed message
//! ([`OriginError::client_message`]), over HTTP with the request's id (rendered by
//! `http::error`) and over the edge link alike; what went wrong is logged, never sent:
//! storage errors and broken records can name keys, files and internals.

use std::{fmt, future::Future};

use axum::http::StatusCode;
use rand::RngCore;
use selvage_shared::ErrorCode;

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The request is malformed or breaks a rule (bad JSON, unknown field, empty text, …).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The route exists but not with this method (405; code `bad_request`).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A JSON body sent without `Content-Type: application/json` (415; code `bad_request`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No token, an unknown, expired or revoked token, or a deactivated user.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed (not an admin, not the operator, …).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing — or a thing the caller may not know exists (private channels, other
    /// workspaces' ids): both answer the same, so existence does not leak.
    #[error("{0}")]
    NotFound(String),
    /// The caller must be a member of the channel for this.
    #[error("{0}")]
    NotMember(String),
    /// The channel is archived and read-only.
    #[error("{0}")]
    Archived(String),
    /// A uniqueness rule was broken (a taken handle or channel name).
    #[error("{0}")]
    Conflict(String),
    /// The text starts with a slash command the workspace does not have.
    #[error("{0}")]
    UnknownCommand(String),
    /// A slash command's app did not answer in time, or failed (424; nothing was posted).
    #[error("{0}")]
    CommandFailed(String),
    /// The token (or incoming webhook) is over its rate: retry after the seconds given (429,
    /// with `Retry-After`).
    #[error("{0}")]
    RateLimited(String, u64),
    /// A bounded queue is full; retry with backoff.
    #[error("{0}")]
    Overloaded(String),
    /// A dependency (storage) is unreachable or shutting down; retry with backoff.
    #[error("{0}")]
    Unavailable(String),
    /// A storage failure that retrying did not cure.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A stored record that does not decode: a bug or corruption, never the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl OriginError {
    /// The stable error code for this error, shared with the client protocol.
    pub fn code(&self) -> ErrorCode {
        match self {
            OriginError::BadRequest(_) | OriginError::MethodNotAllowed(_) | OriginError::UnsupportedMediaType(_) => {
                ErrorCode::BadRequest
            }
            OriginError::TooLarge(_) => ErrorCode::TooLarge,
            OriginError::Unauthorized(_) => ErrorCode::Unauthorized,
            OriginError::Forbidden(_) => ErrorCode::Forbidden,
            OriginError::NotFound(_) => ErrorCode::NotFound,
            OriginError::NotMember(_) => ErrorCode::NotMember,
            OriginError::Archived(_) => ErrorCode::Archived,
            OriginError::Conflict(_) => ErrorCode::Conflict,
            OriginError::UnknownCommand(_) => ErrorCode::UnknownCommand,
            OriginError::CommandFailed(_) => ErrorCode::CommandFailed,
            OriginError::RateLimited(..) => ErrorCode::RateLimited,
            OriginError::Overloaded(_) => ErrorCode::Overloaded,
            OriginError::Unavailable(_) => ErrorCode::Unavailable,
            OriginError::Store(e) if e.is_retryable() => ErrorCode::Unavailable,
            OriginError::Store(StoreError::Unavailable(_) | StoreError::NoSpace(_)) => ErrorCode::Unavailable,
            OriginError::Store(
                StoreError::KeyTooLarge(_) | StoreError::ValueTooLarge(_) | StoreError::TransactionTooLarge(_),
            ) => ErrorCode::TooLarge,
            OriginError::Store(_) | OriginError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The HTTP status for this error: follows from its code, so the two never disagree — but
    /// for the two refusals HTTP has its own status for, which keep the code `bad_request`.
    pub fn status(&self) -> StatusCode {
        match self {
            OriginError::MethodNotAllowed(_) => return StatusCode::METHOD_NOT_ALLOWED,
            OriginError::UnsupportedMediaType(_) => return StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => {}
        }
        match self.code() {
            ErrorCode::BadFrame | ErrorCode::BadRequest | ErrorCode::UnknownCommand => StatusCode::BAD_REQUEST,
            ErrorCode::CommandFailed => StatusCode::FAILED_DEPENDENCY,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::NotMember | ErrorCode::Archived => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::RateLimited | ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Shorthand for a [`OriginError::NotFound`] about a channel, used wherever a channel is
    /// missing *or* invisible to the caller.
    pub fn no_channel(id: &str) -> Self {
        OriginError::NotFound(format!("channel {id} not found"))
    }
}

impl From<selvage_shared::DecodeError> for OriginError {
    fn from(e: selvage_shared::DecodeError) -> Self {
        OriginError::Internal(format!("stored record does not decode: {e}"))
    }
}

impl OriginError {
    /// What the client is told. A 4xx explains the refusal, which only ever concerns what the
    /// client sent or may do; a 5xx gets a fixed text per code, as its detail is internal.
    pub fn client_message(&self) -> String {
        match self.code() {
            ErrorCode::Internal => "internal error; the origin logged it with this request_id".into(),
            // A full disk is the one cause worth naming: it lasts until an operator acts.
            ErrorCode::Unavailable => match self {
                OriginError::Store(StoreError::NoSpace(why)) => {
                    format!("{why}; retry later (a send with the same client_msg_id)")
                }
                _ => "temporarily unavailable; retry with backoff (a send with the same client_msg_id)".into(),
            },
            _ => self.to_string(),
        }
    }
}

tokio::task_local! {
    static REQUEST_ID: RequestId;
}

/// The id of one request: 16 hex digits, random. The HTTP API's middleware gives every request
/// one, answers it in the `x-request-id` header, logs it with the request, and puts it in every
/// 5xx body; a link call that fails with a server error gets one in its message. Either way a
/// client's report leads to the server's log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh id.
    pub fn new() -> Self {
        RequestId(format!("{:016x}", rand::rng().next_u64()))
    }

    /// The id of the request this task is serving, if any.
    pub fn current() -> Option<Self> {
        REQUEST_ID.try_with(Clone::clone).ok()
    }

    /// Runs `f` as the request with this id: errors rendered inside it carry the id.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        REQUEST_ID.scope(self, f).await
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shorthand for origin results.
pub type Result<T, E = OriginError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sixteen_hex_digits_and_differ() {
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_eq!(a.0.len(), 16);
        assert!(a.0.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
