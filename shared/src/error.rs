//! Stable protocol error codes, the `code` of an `error` frame (and of origin HTTP errors).
//!
//! Clients switch on these strings, so a code never changes meaning once released; new
//! situations get new codes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a request failed, as a stable snake_case string on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be parsed or is structurally invalid (unknown type, bad field, bad id).
    BadFrame,
    /// The frame or a field in it exceeds a size limit.
    TooLarge,
    /// The frame parsed but the request makes no sense (e.g. editing another user's message).
    BadRequest,
    /// Missing, invalid, expired or revoked token.
    Unauthorized,
    /// Authenticated but not allowed to do this.
    Forbidden,
    /// The channel, user, message or workspace does not exist (or is invisible to the caller).
    NotFound,
    /// The caller is not a member of the channel.
    NotMember,
    /// The channel is archived and read-only.
    Archived,
    /// The caller is sending too fast; retry after backing off.
    RateLimited,
    /// The server is shedding load; retry after backing off.
    Overloaded,
    /// A dependency (origin, storage) is unreachable; retry after backing off.
    Unavailable,
    /// The request conflicts with the current state (e.g. a channel name already taken).
    Conflict,
    /// The text starts with a slash command nobody registered in the workspace.
    UnknownCommand,
    /// The app behind a slash command did not answer in time, or answered with a failure.
    CommandFailed,
    /// A bug or unexpected failure on the server side.
    Internal,
}

impl ErrorCode {
    /// The code's wire string, e.g. `"not_member"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Archived => "archived",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Conflict => "conflict",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::CommandFailed => "command_failed",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether the same request may succeed if retried later with backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Overloaded | ErrorCode::Unavailable)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde() {
        let all = [
            ErrorCode::BadFrame,
            ErrorCode::TooLarge,
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::NotMember,
            ErrorCode::Archived,
            ErrorCode::RateLimited,
            ErrorCode::Overloaded,
            ErrorCode::Unavailable,
            ErrorCode::Conflict,
            ErrorCode::UnknownCommand,
            ErrorCode::CommandFailed,
            ErrorCode::Internal,
        ];
        for code in all {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        let retryable: Vec<_> = all.iter().filter(|c| c.is_retryable()).collect();
        assert_eq!(retryable, [&ErrorCode::RateLimited, &ErrorCode::Overloaded, &ErrorCode::Unavailable]);
    }
}
