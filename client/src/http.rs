//! The origin's HTTP API, version 1 (ARCHITECTURE §5, docs/API.md), for bots and scripts: a
//! typed client over reqwest that calls it with a user's token.
//!
//! A bot that only posts and reads needs no edge session: [`HttpClient::post_message`] answers
//! once the message is durable, [`HttpClient::history`] pages through a channel, and
//! [`HttpClient::events`] long-polls the feed. Every failure the origin reports arrives as
//! [`HttpError::Api`] with the API's `{"error": {"code", "message"}}` and the request id the
//! origin logged it under (the `x-request-id` header), so a bot's operator can quote it.
//!
//! # Retries
//!
//! A send is safe to repeat: the origin deduplicates by `client_msg_id` per channel and sender
//! and answers a repeat with the original `seq` (`duplicate: true`). So
//! [`HttpClient::post_message`] retries, with the same `client_msg_id`, whatever may not have
//! been applied or may have been applied without the answer arriving — `429 overloaded`,
//! `503 unavailable`, a connection that failed or a request that timed out — up to
//! [`Retry::attempts`] times with doubling backoff. Reads (`GET`) retry the same way. Edits,
//! deletions and reactions are sent once: their errors go back to the caller as they are.
//!
//! ```no_run
//! # async fn bot() -> Result<(), selvage_client::http::HttpError> {
//! use selvage_client::http::{HttpClient, Page};
//! use selvage_shared::ChannelId;
//!
//! let api = HttpClient::new("http://127.0.0.1:8080", "svt_…")?;
//! let general = ChannelId::parse("C0123").expect("a channel id");
//! let posted = api.post_message(&general, "build 812 is green", "build-812", None).await?;
//! api.react(&general, posted.seq, "white_check_mark").await?;
//! for message in api.history(&general, Page::newest(20)).await?.messages {
//!     println!("{} {}: {}", message.seq, message.user, message.text);
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use selvage_shared::{ChannelId, Cursor, ErrorCode, EventFrame, Message, Seq, User, WorkspaceId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::options::percent_encode;

pub use selvage_shared::{ChannelView, HistoryPage};

/// The header naming a request in the origin's log (ARCHITECTURE §5).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How long a request may take by default, answer included (a long poll adds its `wait`).
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call of the HTTP API failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The origin answered with an error: its status, the API's error code and message, and the
    /// request id it logged the request under.
    #[error("{status} {code}: {message}{}", request_suffix(.request_id))]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The API's stable error code.
        code: ErrorCode,
        /// The API's explanation (a fixed text for server errors: the detail is in the log).
        message: String,
        /// The `x-request-id` of the request (or the body's `request_id`), when one came back.
        request_id: Option<String>,
    },
    /// No answer: the connection failed or the request timed out (after the retries, if any).
    #[error("no answer from the origin: {0}")]
    Transport(#[source] reqwest::Error),
    /// An answer this client does not understand (not the API's JSON, or not the documented shape).
    #[error("unexpected answer ({status}): {reason}{}", request_suffix(.request_id))]
    Decode {
        /// The HTTP status.
        status: StatusCode,
        /// What did not match.
        reason: String,
        /// The `x-request-id` of the request, when one came back.
        request_id: Option<String>,
    },
    /// The client could not be set up (e.g. a base URL that is not `http://` or `https://`).
    #[error("bad HTTP client settings: {0}")]
    Settings(String),
}

fn request_suffix(id: &Option<String>) -> String {
    match id {
        Some(id) => format!(" (request {id})"),
        None => String::new(),
    }
}

impl HttpError {
    /// The API's error code, for [`HttpError::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            HttpError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The request id the origin logged the request under, when it answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            HttpError::Api { request_id, .. } | HttpError::Decode { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Whether the same request may succeed if sent again later: the origin was overloaded or
    /// unavailable, or no answer came.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Api { status, .. } => {
                matches!(*status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
            }
            HttpError::Transport(e) => e.is_connect() || e.is_timeout() || e.is_request(),
            HttpError::Decode { .. } | HttpError::Settings(_) => false,
        }
    }
}

/// How retryable calls are repeated (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all, the first included; 1 sends once.
    pub attempts: u32,
    /// Wait before the second try; each later wait doubles, up to [`Retry::max_backoff`].
    pub backoff: Duration,
    /// Longest wait between two tries.
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { attempts: 5, backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5) }
    }
}

/// Who the token belongs to: `GET /v1/me`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Me {
    /// The token's workspace.
    pub workspace: WorkspaceId,
    /// The token's user.
    pub user: User,
}

/// A durable message: the answer to `POST /v1/channels/{id}/messages`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Posted {
    /// The channel posted to.
    pub channel: ChannelId,
    /// The message's place in the channel.
    pub seq: Seq,
    /// Commit time, ms since the epoch.
    pub ts: i64,
    /// The feed cursor of the message's event, when the origin has one.
    pub cursor: Option<Cursor>,
    /// Whether the `client_msg_id` had been sent before: nothing new was written, and `seq` is the
    /// original's.
    pub duplicate: bool,
    /// The message as stored.
    pub message: Message,
}

/// Which page of a channel's history (or of a thread's replies) to read; oldest first in the
/// answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Page {
    /// Only messages below this `seq` (scrolling back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Seq>,
    /// Only messages above this `seq` (catching up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Seq>,
    /// At most this many (the origin's default is 100, its most 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Page {
    /// The newest `limit` messages.
    pub fn newest(limit: usize) -> Page {
        Page { limit: Some(limit), ..Page::default() }
    }

    /// The oldest `limit` messages after `seq`: to catch up, or to read a whole channel forward.
    pub fn after(seq: Seq, limit: usize) -> Page {
        Page { after: Some(seq), limit: Some(limit), ..Page::default() }
    }

    /// The newest `limit` messages before `seq`: to scroll back.
    pub fn before(seq: Seq, limit: usize) -> Page {
        Page { before: Some(seq), limit: Some(limit), ..Page::default() }
    }
}

/// An answer of the long-poll feed, `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Events {
    /// Events after the cursor asked with, that the caller may see, oldest first.
    pub events: Vec<EventFrame>,
    /// Where to continue from.
    pub cursor: Cursor,
    /// Set when the cursor asked with was too old: reload state, then continue from `cursor`.
    #[serde(default)]
    pub resync: Option<String>,
}

/// A client of the origin's HTTP API acting as the user of one token. Cheap to clone: clones share
/// a connection pool.
#[derive(Clone)]
pub struct HttpClient {
    http: reqwest::Client,
    base: String,
    token: String,
    retry: Retry,
    timeout: Duration,
}

// By hand, to keep the token out of logs and panic messages.
impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpClient {
    /// A client of the origin at `base` (`http://host:port`, no path) with `token`, retrying as
    /// [`Retry::default`] says and giving each request [`DEFAULT_HTTP_TIMEOUT`].
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Result<HttpClient, HttpError> {
        let base = base.into().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(HttpError::Settings(format!("{base:?} is not an http:// or https:// URL")));
        }
        let http = reqwest::Client::builder().build().map_err(|e| HttpError::Settings(e.to_string()))?;
        Ok(HttpClient { http, base, token: token.into(), retry: Retry::default(), timeout: DEFAULT_HTTP_TIMEOUT })
    }

    /// This client with another retry policy.
    pub fn with_retry(mut self, retry: Retry) -> HttpClient {
        self.retry = retry;
        self
    }

    /// This client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    /// The origin's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Who the token belongs to.
    pub async fn me(&self) -> Result<Me, HttpError> {
        self.get("/v1/me", &()).await
    }

    /// Every channel the caller may see: public channels, and private channels, DMs and group
    /// DMs they are in.
    pub async fn channels(&self) -> Result<Vec<ChannelView>, HttpError> {
        #[derive(Deserialize)]
        struct Body {
            channels: Vec<ChannelView>,
        }
        Ok(self.get::<Body>("/v1/channels", &()).await?.channels)
    }

    /// One channel.
    pub async fn channel(&self, channel: &ChannelId) -> Result<ChannelView, HttpError> {
        #[derive(Deserialize)]
        struct Body {
            channel: ChannelView,
        }
        Ok(self.get::<Body>(&format!("/v1/channels/{channel}"), &()).await?.channel)
    }

    /// Joins a public channel (posting needs membership). Joining again changes nothing.
    pub async fn join(&self, channel: &ChannelId) -> Result<(), HttpError> {
        let path = format!("/v1/channels/{channel}/members");
        let _: serde_json::Value = self.once(Method::POST, &path, Some(&serde_json::json!({}))).await?;
        Ok(())
    }

    /// Posts `text` to `channel` (a reply in the thread of `thread_root` if set) and returns once
    /// it is durable. Retried with the same `client_msg_id` (see the module docs): however many
    /// times it is sent, the message is written once, and a repeat answers with the original.
    pub async fn post_message(
        &self,
        channel: &ChannelId,
        text: &str,
        client_msg_id: &str,
        thread_root: Option<Seq>,
    ) -> Result<Posted, HttpError> {
        #[derive(Serialize)]
        struct Body<'a> {
            text: &'a str,
            client_msg_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            thread_root: Option<Seq>,
        }
        let path = format!("/v1/channels/{channel}/messages");
        let body = Body { text, client_msg_id, thread_root };
        self.retried(|| self.request(Method::POST, &path).json(&body)).await
    }

    /// A page of `channel`'s history.
    pub async fn history(&self, channel: &ChannelId, page: Page) -> Result<HistoryPage, HttpError> {
        self.get(&format!("/v1/channels/{channel}/messages"), &page).await
    }

    /// A page of the replies in the thread of `root`.
    pub async fn thread(&self, channel: &ChannelId, root: Seq, page: Page) -> Result<HistoryPage, HttpError> {
        self.get(&format!("/v1/channels/{channel}/messages/{root}/thread"), &page).await
    }

    /// Replaces the text of message `seq` (the author's or, for an admin, anyone's); returns the
    /// message as it now reads.
    pub async fn edit_message(&self, channel: &ChannelId, seq: Seq, text: &str) -> Result<Message, HttpError> {
        let path = format!("/v1/channels/{channel}/messages/{seq}");
        Ok(self.once::<MessageBody>(Method::PATCH, &path, Some(&serde_json::json!({ "text": text }))).await?.message)
    }

    /// Deletes message `seq`, leaving a tombstone; returns it.
    pub async fn delete_message(&self, channel: &ChannelId, seq: Seq) -> Result<Message, HttpError> {
        let path = format!("/v1/channels/{channel}/messages/{seq}");
        Ok(self.once::<MessageBody>(Method::DELETE, &path, None).await?.message)
    }

    /// Adds the caller's `emoji` reaction to message `seq` (again: no change); returns the message.
    pub async fn react(&self, channel: &ChannelId, seq: Seq, emoji: &str) -> Result<Message, HttpError> {
        let path = format!("/v1/channels/{channel}/messages/{seq}/reactions/{}", percent_encode(emoji));
        Ok(self.once::<MessageBody>(Method::PUT, &path, None).await?.message)
    }

    /// Takes back the caller's `emoji` reaction to message `seq`; returns the message.
    pub async fn unreact(&self, channel: &ChannelId, seq: Seq, emoji: &str) -> Result<Message, HttpError> {
        let path = format!("/v1/channels/{channel}/messages/{seq}/reactions/{}", percent_encode(emoji));
        Ok(self.once::<MessageBody>(Method::DELETE, &path, None).await?.message)
    }

    /// Moves the caller's read marker in `channel` forward to `seq`; returns where it now stands.
    pub async fn mark_read(&self, channel: &ChannelId, seq: Seq) -> Result<Seq, HttpError> {
        #[derive(Deserialize)]
        struct Body {
            read_seq: Seq,
        }
        let path = format!("/v1/channels/{channel}/read");
        Ok(self.once::<Body>(Method::PUT, &path, Some(&serde_json::json!({ "seq": seq }))).await?.read_seq)
    }

    /// The long-poll feed: without a cursor, the current head at once; with one, the events after
    /// it, waiting up to `wait` for some to arrive (the origin caps the wait).
    pub async fn events(&self, cursor: Option<&Cursor>, wait: Duration) -> Result<Events, HttpError> {
        #[derive(Serialize)]
        struct Query<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            cursor: Option<&'a str>,
            wait_ms: u64,
        }
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let query = Query { cursor: cursor.map(Cursor::as_str), wait_ms };
        self.retried(|| self.request(Method::GET, "/v1/events").query(&query).timeout(self.timeout + wait)).await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token).timeout(self.timeout)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &impl Serialize) -> Result<T, HttpError> {
        self.retried(|| self.request(Method::GET, path).query(query)).await
    }

    /// Sends a request once: for calls that are not safe to repeat blindly.
    async fn once<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, HttpError> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        answer(request.send().await.map_err(HttpError::Transport)?).await
    }

    /// Sends the request `build` makes, again after a backoff while the failure is retryable.
    async fn retried<T: DeserializeOwned>(&self, build: impl Fn() -> RequestBuilder) -> Result<T, HttpError> {
        let mut backoff = self.retry.backoff;
        let mut attempt = 1;
        loop {
            let result = match build().send().await {
                Ok(response) => answer(response).await,
                Err(e) => Err(HttpError::Transport(e)),
            };
            match result {
                Err(e) if e.is_retryable() && attempt < self.retry.attempts => {
                    tracing::debug!(attempt, error = %e, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[derive(Deserialize)]
struct MessageBody {
    message: Message,
}

/// The body of a success, or the API's error.
async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, HttpError> {
    let status = response.status();
    let header_id = response.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.bytes().await.map_err(HttpError::Transport)?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| HttpError::Decode {
            status,
            reason: format!("{e} in {}", snippet(&body)),
            request_id: header_id,
        });
    }
    Err(api_error(status, &body, header_id))
}

/// The error for a failed request: the API's `{"error": {code, message, request_id?}}` when the
/// body is one, else a code that fits the status.
fn api_error(status: StatusCode, body: &[u8], header_id: Option<String>) -> HttpError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: ErrorCode,
        message: String,
        #[serde(default)]
        request_id: Option<String>,
    }
    if let Ok(Body { error }) = serde_json::from_slice::<Body>(body) {
        let request_id = header_id.or(error.request_id);
        return HttpError::Api { status, code: error.code, message: error.message, request_id };
    }
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ErrorCode::BadRequest
        }
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::CONFLICT => ErrorCode::Conflict,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::Overloaded,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => {
            let reason = format!("HTTP {status} without an API error: {}", snippet(body));
            return HttpError::Decode { status, reason, request_id: header_id };
        }
    };
    HttpError::Api { status, code, message: snippet(body), request_id: header_id }
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_carry_code_message_and_request_id() {
        let body = br#"{"error":{"code":"not_member","message":"join C1 before posting in it"}}"#;
        let e = api_error(StatusCode::FORBIDDEN, body, Some("00000000000000ab".into()));
        assert_eq!(e.code(), Some(ErrorCode::NotMember));
        assert_eq!(e.request_id(), Some("00000000000000ab"));
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "403 Forbidden not_member: join C1 before posting in it (request 00000000000000ab)");

        let body = br#"{"error":{"code":"internal","message":"internal error","request_id":"0123456789abcdef"}}"#;
        assert_eq!(api_error(StatusCode::INTERNAL_SERVER_ERROR, body, None).request_id(), Some("0123456789abcdef"));

        let e = api_error(StatusCode::SERVICE_UNAVAILABLE, b"<html>busy</html>", None);
        assert_eq!(e.code(), Some(ErrorCode::Unavailable));
        assert!(e.is_retryable());
        assert!(matches!(api_error(StatusCode::IM_A_TEAPOT, b"", None), HttpError::Decode { .. }));
    }

    #[test]
    fn pages_become_query_strings_without_unset_bounds() {
        let query = |p: Page| serde_json::to_value(p).unwrap();
        assert_eq!(query(Page::newest(20)), serde_json::json!({ "limit": 20 }));
        assert_eq!(query(Page::after(7, 100)), serde_json::json!({ "after": 7, "limit": 100 }));
        assert_eq!(query(Page::default()), serde_json::json!({}));
    }

    #[test]
    fn settings_and_debug_output() {
        assert!(matches!(HttpClient::new("127.0.0.1:80", "t"), Err(HttpError::Settings(_))));
        let api = HttpClient::new("http://127.0.0.1:80/", "svt_secret").unwrap();
        assert_eq!(api.base(), "http://127.0.0.1:80");
        assert!(!format!("{api:?}").contains("svt_secret"));
        assert_eq!(percent_encode("thumbsup::skin-tone-2"), "thumbsup%3A%3Askin-tone-2");
    }
}
