//! How an [`OriginError`] leaves as an HTTP response: ARCHITECTURE §5's
//! `{"error": {"code", "message"}}`, with the request's id in the body of a 5xx.
//!
//! A server error (5xx) shows the client only its stable code, a fixed message and the request's
//! id ([`RequestId`], also in the `x-request-id` header); what went wrong is logged with that id,
//! never sent: storage errors and broken records can name keys, files and internals.

use crate::error::{OriginError, RequestId};
use axum::{
    response::{IntoResponse, Response},
    Json,
};

impl OriginError {
    /// The response for this error to the request `id`; a 5xx is logged with the id and the
    /// full detail.
    pub fn response_for(&self, id: &RequestId) -> Response {
        let status = self.status();
        let code = self.code().as_str();
        let mut error = serde_json::json!({ "code": code, "message": self.client_message() });
        if status.is_server_error() {
            tracing::error!(request.id = %id, status = status.as_u16(), code, error = %self, "request failed");
            error["request_id"] = id.0.clone().into();
        }
        if let OriginError::RateLimited(_, secs) = self {
            error["retry_after_ms"] = (secs * 1000).into();
        }
        let mut response = (status, Json(serde_json::json!({ "error": error }))).into_response();
        if let OriginError::RateLimited(_, secs) = self {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(*secs));
        }
        response.extensions_mut().insert(ErrorShape);
        response
    }
}

/// Marks a response whose body is already ARCHITECTURE §5's error shape, so the API's middleware
/// leaves it alone (it re-renders error responses without the mark).
#[derive(Clone, Copy, Debug)]
pub struct ErrorShape;

impl IntoResponse for OriginError {
    /// Rendered for the request being served ([`RequestId::current`]); outside of one (never in
    /// the API, whose middleware scopes every request) a fresh id still ties body and log.
    fn into_response(self) -> Response {
        let id = RequestId::current().unwrap_or_default();
        self.response_for(&id)
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::to_bytes, http::StatusCode};

    use super::*;
    use crate::store::StoreError;

    async fn render(e: OriginError) -> (StatusCode, serde_json::Value) {
        let response = RequestId("00000000000000ab".into()).scope(async { e.into_response() }).await;
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn server_errors_show_a_code_and_the_request_id_but_no_detail() {
        let cases = [
            (OriginError::Internal("record C1 at /var/lib/selvage is garbage".into()), 500, "internal"),
            (OriginError::Store(StoreError::Engine("redb: page 7 torn".into())), 500, "internal"),
            (OriginError::Unavailable("commit failed (wal segment 3: EIO)".into()), 503, "unavailable"),
        ];
        for (error, status, code) in cases {
            let (s, v) = render(error).await;
            assert_eq!(s.as_u16(), status, "{v}");
            assert_eq!(v["error"]["code"], code, "{v}");
            assert_eq!(v["error"]["request_id"], "00000000000000ab", "{v}");
            let message = v["error"]["message"].as_str().unwrap();
            for detail in ["C1", "/var", "redb", "page", "wal", "EIO", "garbage"] {
                assert!(!message.contains(detail), "{message:?} shows {detail:?}");
            }
        }
    }

    #[tokio::test]
    async fn client_errors_explain_themselves_without_a_request_id() {
        let (s, v) = render(OriginError::BadRequest("limit must be between 1 and 1000".into())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(
            v,
            serde_json::json!({ "error": { "code": "bad_request", "message": "limit must be between 1 and 1000" } })
        );
        let (s, v) = render(OriginError::MethodNotAllowed("no".into())).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("bad_request")));
        let (s, v) = render(OriginError::UnsupportedMediaType("no".into())).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("bad_request")));
    }
}
