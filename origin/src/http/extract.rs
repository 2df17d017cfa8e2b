//! Request extractors with ARCHITECTURE §5's error shape, and the small parsers every handler
//! shares: every rejection axum would produce (bad JSON, unknown fields, oversized bodies, a
//! missing content type, bad query strings or path parameters, no or a bad token) becomes an
//! [`OriginError`] here.

use std::sync::Arc;

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        FromRequest, FromRequestParts, MatchedPath, Request,
    },
    http::{header, request::Parts, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use selvage_shared::{ChannelId, Seq, UserId};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    accounts,
    caller::Caller,
    error::{OriginError, Result},
    Origin,
};

/// `axum::Json` with our error shape for every rejection.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = OriginError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A JSON body that may be absent (an empty body means `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = OriginError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| body_rejection(r.status(), "cannot read body", r.body_text()))?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        // Every optional body is an object; serde would also take a struct from an array.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(OriginError::BadRequest("the body must be a JSON object (or empty)".into()));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalJson)
            .map_err(|e| OriginError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

fn json_rejection(r: JsonRejection) -> OriginError {
    body_rejection(r.status(), "invalid JSON body", r.body_text())
}

/// A body axum could not take: over the size limit, without the JSON content type, or
/// unreadable / malformed.
fn body_rejection(status: StatusCode, what: &str, detail: String) -> OriginError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => OriginError::TooLarge("request body is over the size limit".into()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            OriginError::UnsupportedMediaType("send the body as `Content-Type: application/json`".into())
        }
        _ => OriginError::BadRequest(format!("{what}: {detail}")),
    }
}

/// `axum::extract::Path` with our error shape (a path segment that is not valid UTF-8 once
/// percent-decoded, or does not parse).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = OriginError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r: PathRejection| OriginError::BadRequest(format!("invalid path: {}", r.body_text())))
    }
}

/// A message seq from a path: a whole number from 1.
pub(super) fn path_seq(raw: &str) -> Result<Seq> {
    match raw.parse::<Seq>() {
        Ok(seq) if seq >= 1 => Ok(seq),
        _ => Err(OriginError::BadRequest(format!("seq {raw:?} is not a message seq (a whole number from 1)"))),
    }
}

/// A seq in a JSON body. JSON has one number type, and JSON Schema counts `2.0` as the integer
/// 2, so a whole number is taken in either spelling; a fraction, a negative number or one past
/// the largest seq is refused.
pub(super) fn body_seq<'de, D: Deserializer<'de>>(d: D) -> Result<Seq, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    match n.as_f64() {
        // 2^64 as f64: every whole f64 below it converts exactly.
        Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => Ok(f as Seq),
        _ => Err(serde::de::Error::custom(format!("{n} is not a whole number from 0"))),
    }
}

/// [`body_seq`] for an optional field.
pub(super) fn body_seq_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Seq>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "body_seq")] Seq);
    Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(seq)| seq))
}

/// A page size from the query string: `default` when absent, else 1 to 1000.
pub(super) fn page_limit(given: Option<usize>, default: usize) -> Result<usize> {
    let limit = given.unwrap_or(default);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(OriginError::BadRequest("limit must be between 1 and 1000".into()))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with our error shape.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = OriginError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r: QueryRejection| OriginError::BadRequest(format!("invalid query string: {}", r.body_text())))
    }
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks that the request carries the operator key (`operator_key`) as its bearer token;
/// `action` says in the refusal what needs it.
pub(super) fn require_operator(origin: &Origin, headers: &HeaderMap, action: &str) -> Result<()> {
    let Some(expected) = origin.config.operator_key.as_deref() else {
        return Err(OriginError::Forbidden(format!("{action} is disabled: no operator_key is configured")));
    };
    let given = bearer(headers).ok_or_else(|| OriginError::Unauthorized("the operator key is required".into()))?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes())) {
        return Err(OriginError::Unauthorized("wrong operator key".into()));
    }
    Ok(())
}

impl FromRequestParts<Arc<Origin>> for Caller {
    type Rejection = OriginError;

    async fn from_request_parts(parts: &mut Parts, origin: &Arc<Origin>) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)
            .ok_or_else(|| OriginError::Unauthorized("missing `Authorization: Bearer <token>` header".into()))?;
        let caller = accounts::authenticate(&origin.store, token).await?;
        let path = parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or_default();
        caller.require(super::scopes::need(&parts.method, path))?;
        origin.rate.check(crate::rate::Class::of(&parts.method), &caller.token_hash)?;
        Ok(caller)
    }
}

pub(super) fn channel_id(raw: &str) -> Result<ChannelId> {
    ChannelId::parse(raw).ok_or_else(|| OriginError::no_channel(raw))
}

pub(super) fn user_id(raw: &str) -> Result<UserId> {
    UserId::parse(raw).ok_or_else(|| OriginError::NotFound(format!("user {raw} not found")))
}

pub(super) fn created<T: Serialize>(body: T) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}
