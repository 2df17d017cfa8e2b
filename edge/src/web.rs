//! The web client and the API behind it: every edge serves the browser client (`web/` in the
//! repository) at `/`, and passes the origin's HTTP API through at `/v1/…`, so a browser needs
//! one address — the edge it holds its session on — and the page keeps a strict
//! Content-Security-Policy (`connect-src 'self'`).
//!
//! - **Assets.** The files of `web/` are built into the binary (rust-embed); a debug build reads
//!   them from the checkout instead, so the client is edited without rebuilding. `GET /` is
//!   `index.html`; `GET /{name}` a file at the top of `web/`. Every answer carries the security
//!   headers of [`security_headers`] and an ETag; `no-cache` makes browsers revalidate, which
//!   costs a `304` and keeps a new edge's client in use at once.
//! - **The API.** Every `/v1/…` request but `/v1/connect` goes to `web.api_url` as it came
//!   (method, path, query, body up to `web.max_body_bytes`, end-to-end headers) and its answer
//!   comes back as it went. The origin checks the token and everything else; the edge adds
//!   nothing and keeps nothing. An unreachable origin is a `503 unavailable` that says no
//!   more.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use selvage_shared::ErrorCode;

use crate::{config::WebConfig, node::Edge};

/// The files of `web/`.
#[derive(rust_embed::Embed)]
#[folder = "../web/"]
#[exclude = "tests/*"]
#[exclude = "node_modules/*"]
struct Assets;

/// The passage to the origin's HTTP API.
pub struct Api {
    client: Client<HttpConnector, Body>,
    /// `web.api_url` without a trailing `/`; `None` when it is not set.
    base: Option<String>,
    max_body_bytes: usize,
    timeout: Duration,
    /// The Content-Security-Policy of every page.
    csp: HeaderValue,
}

impl Api {
    /// The passage `config` describes.
    pub fn new(config: &WebConfig) -> Result<Api, String> {
        let base = match config.api_url.trim_end_matches('/') {
            "" => None,
            url => {
                let uri: Uri = url.parse().map_err(|e| format!("web.api_url {url:?} is not a URL: {e}"))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err(format!("web.api_url {url:?} must be http://host:port (the origin's API)"));
                }
                Some(url.to_string())
            }
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Api {
            client,
            base,
            max_body_bytes: config.max_body_bytes,
            timeout: Duration::from_millis(config.api_timeout_ms),
            csp: content_security_policy(&config.connect_origins)?,
        })
    }
}

/// The page's policy: its own scripts, styles and connections only, plus images and uploads
/// of the object store (`extra`, the origins its presigned URLs point at).
fn content_security_policy(extra: &[String]) -> Result<HeaderValue, String> {
    let mut others = String::new();
    for origin in extra {
        let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
            && origin.bytes().all(|b| b.is_ascii_alphanumeric() || b".:/-_[]".contains(&b));
        if !ok {
            return Err(format!("web.connect_origins: {origin:?} is not an origin like https://files.example.com"));
        }
        others.push(' ');
        others.push_str(origin.trim_end_matches('/'));
    }
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:{others}; \
         connect-src 'self'{others}; worker-src 'self'; manifest-src 'self'; font-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).map_err(|e| format!("web.connect_origins: {e}"))
}

/// The headers every page and asset carries.
fn security_headers(api: &Api, headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, api.csp.clone());
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
    headers.insert(
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
}

/// `GET /`: the client's page.
pub async fn index(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    asset(&edge, "index.html", &headers)
}

/// `GET /{name}`: a file at the top of `web/`.
pub async fn file(State(edge): State<Arc<Edge>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    asset(&edge, &name, &headers)
}

fn asset(edge: &Edge, name: &str, request: &HeaderMap) -> Response {
    let Some(api) = edge.web.as_ref() else {
        return (StatusCode::NOT_FOUND, "the web client is off on this edge (web.enabled)\n").into_response();
    };
    let Some(kind) = content_type(name) else {
        return not_found(api);
    };
    let Some(found) = Assets::get(name) else {
        return not_found(api);
    };
    let etag = format!("\"{}\"", hex::encode(&found.metadata.sha256_hash()[..16]));
    let mut response = match request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        Some(seen) if seen.split(',').any(|t| t.trim() == etag) => StatusCode::NOT_MODIFIED.into_response(),
        _ => ([(header::CONTENT_TYPE, kind)], found.data).into_response(),
    };
    let headers = response.headers_mut();
    security_headers(api, headers);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}

fn not_found(api: &Api) -> Response {
    let mut response = (StatusCode::NOT_FOUND, "not found\n").into_response();
    security_headers(api, response.headers_mut());
    response
}

/// The content type of a file the client may have, by name: a flat name of a known kind
/// (nothing else under `web/` is served).
fn content_type(name: &str) -> Option<&'static str> {
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return None;
    }
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        _ => return None,
    })
}

/// Headers that belong to one connection, not to the request or answer (RFC 9110 §7.6.1),
/// and `host`, which the client sets for the origin.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// `headers` without those of [`HOP_BY_HOP`].
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers
}

fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// `/v1/…` (but `/v1/connect`): the request passed to the origin's API, its answer passed back.
pub async fn api(State(edge): State<Arc<Edge>>, request: Request) -> Response {
    let Some(api) = edge.web.as_ref() else {
        return api_error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route on an edge");
    };
    let Some(base) = api.base.as_deref() else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "this edge does not pass the HTTP API through (web.api_url is not set)",
        );
    };
    if !allowed(request.method()) {
        return api_error(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadRequest, "method not allowed");
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let Ok(uri) = format!("{base}{path}").parse::<Uri>() else {
        return api_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "malformed request target");
    };
    // The API's bodies are small JSON; files go to the object store directly.
    let bytes = match http_body_util::Limited::new(body, api.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let message = format!("request bodies are limited to {} bytes", api.max_body_bytes);
            return api_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, &message);
        }
        Err(_) => return api_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "the request body broke off"),
    };
    let mut outgoing = hyper::Request::new(Body::from(bytes));
    *outgoing.method_mut() = parts.method.clone();
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = end_to_end(parts.headers);
    let answer = match tokio::time::timeout(api.timeout, api.client.request(outgoing)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, method = %parts.method, path = parts.uri.path(), "the origin's API did not answer");
            edge.metrics.api_passed.with_label_values(&["unavailable"]).inc();
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "the API is unavailable; try again",
            );
        }
        Err(_) => {
            tracing::warn!(method = %parts.method, path = parts.uri.path(), "the origin's API timed out");
            edge.metrics.api_passed.with_label_values(&["timeout"]).inc();
            return api_error(StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable, "the API did not answer in time");
        }
    };
    edge.metrics.api_passed.with_label_values(&["answered"]).inc();
    let (mut parts, body) = answer.into_parts();
    parts.headers = end_to_end(std::mem::take(&mut parts.headers));
    Response::from_parts(parts, Body::new(body))
}

/// Methods the passage takes: the API's (a `CONNECT` or `TRACE` has no business there).
fn allowed(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::OPTIONS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flat_names_of_known_kinds_are_served() {
        assert_eq!(content_type("app.js"), Some("text/javascript; charset=utf-8"));
        assert_eq!(content_type("index.html"), Some("text/html; charset=utf-8"));
        assert_eq!(content_type("../Cargo.toml"), None);
        assert_eq!(content_type("tests/e2e.mjs"), None);
        assert_eq!(content_type(".js"), None);
        assert_eq!(content_type("app.rs"), None);
        assert_eq!(content_type("noext"), None);
    }

    #[test]
    fn the_policy_names_only_what_it_is_given() {
        let csp = content_security_policy(&["http://127.0.0.1:9000/".into()]).unwrap();
        let csp = csp.to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("connect-src 'self' http://127.0.0.1:9000;"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(content_security_policy(&["javascript:alert(1)".into()]).is_err());
        assert!(content_security_policy(&["https://x.example; script-src *".into()]).is_err());
    }
}
