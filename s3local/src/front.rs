//! The HTTP front of the endpoint: what sits between hyper and s3s.
//!
//! s3s answers the S3 protocol, signatures included, but not CORS: a browser uploading to a
//! presigned URL from a web page first sends a preflight `OPTIONS`, which S3 itself answers from
//! the bucket's CORS rules and s3s would refuse as an unsigned request. This endpoint is for dev
//! and tests, so its rule is the most permissive one: any origin may `GET`, `PUT` and `HEAD`
//! with any header it asks for. Only signed requests get past s3s, so CORS grants no access a
//! URL's holder does not already have.
//!
//! It also answers `GET` (and `HEAD`) `/healthz` with `200 ok` when the request is unsigned,
//! for health checks of a container or a load balancer, which cannot sign; a signed request to
//! that path still goes to s3s (a bucket named `healthz`).

use std::{future::Future, pin::Pin};

use hyper::{
    body::Incoming,
    header::{
        ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
        ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, CONTENT_TYPE, ORIGIN, VARY,
    },
    http::HeaderValue,
    Method, Request, Response, StatusCode,
};
use s3s::{service::S3Service, Body, HttpError, HttpResponse};

/// Methods a browser may use on presigned URLs.
const ALLOWED_METHODS: &str = "GET, PUT, HEAD";
/// Headers a page's script may read from responses (an upload's ETag, a download's metadata).
const EXPOSED_HEADERS: &str = "ETag, Content-Length, Content-Type, Content-Disposition, Last-Modified";
/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// Answers CORS preflights itself and hands every other request to s3s, adding CORS headers to
/// the answers to cross-origin ones.
#[derive(Clone)]
pub(crate) struct Front {
    s3: S3Service,
}

impl Front {
    pub(crate) fn new(s3: S3Service) -> Self {
        Self { s3 }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = HttpResponse;
    type Error = HttpError;
    type Future = BoxFuture<Result<HttpResponse, HttpError>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let origin = req.headers().get(ORIGIN).cloned();
        let method = req.method().clone();
        // The path only: the query of a presigned URL carries its signature.
        let path = req.uri().path().to_owned();

        if is_health_check(&req) {
            let mut response = Response::new(Body::from(HEALTHY.to_owned()));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return Box::pin(std::future::ready(Ok(response)));
        }

        if let Some(origin) = &origin {
            if method == Method::OPTIONS && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
                let response = preflight(origin, req.headers().get(ACCESS_CONTROL_REQUEST_HEADERS));
                tracing::debug!(%method, path, status = 204, "cors preflight");
                return Box::pin(std::future::ready(Ok(response)));
            }
        }

        let answer = hyper::service::Service::call(&self.s3, req);
        Box::pin(async move {
            let mut response = answer.await?;
            if let Some(origin) = origin {
                allow_origin(&mut response, origin);
            }
            tracing::debug!(%method, path, status = response.status().as_u16(), "request");
            Ok(response)
        })
    }
}

/// What `/healthz` answers.
const HEALTHY: &str = "ok\n";

/// An unsigned `GET` or `HEAD` of `/healthz`: signed in neither the `Authorization` header nor
/// a presigned URL's query.
fn is_health_check(req: &Request<Incoming>) -> bool {
    let signed_query = req.uri().query().is_some_and(|q| q.contains("X-Amz-Signature="));
    matches!(*req.method(), Method::GET | Method::HEAD)
        && req.uri().path() == "/healthz"
        && !req.headers().contains_key(AUTHORIZATION)
        && !signed_query
}

/// The answer to a preflight: the origin may go ahead with any of [`ALLOWED_METHODS`] and the
/// headers it asked for.
fn preflight(origin: &HeaderValue, requested_headers: Option<&HeaderValue>) -> HttpResponse {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        requested_headers.cloned().unwrap_or_else(|| HeaderValue::from_static("Content-Type")),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
    allow_origin(&mut response, origin.clone());
    response
}

fn allow_origin(response: &mut HttpResponse, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    // The answer depends on the Origin header, so caches must key on it.
    headers.append(VARY, HeaderValue::from_static("Origin"));
}
