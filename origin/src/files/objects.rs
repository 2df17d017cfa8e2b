//! The object store the files service keeps bytes in: an S3-compatible bucket reached with
//! `aws-sdk-s3` (ARCHITECTURE §8 "Files").
//!
//! The request path never moves file bytes. It signs short-lived URLs — a `PUT` of exactly one
//! key, with its length and type bound into the signature, and `GET`s — and otherwise only asks
//! the store about objects (`HEAD`), deletes them, and checks the bucket at start. Only the
//! thumbnail worker (module `thumbs`), in the background, reads images and writes their
//! thumbnails. Every call has a deadline; every failure becomes an [`ObjectError`] whose detail
//! is for the log only.
//!
//! Calls that reach the store wait for one of `files.store_concurrency` slots: however many
//! clients complete uploads at the same moment, the origin holds that many connections to the
//! store at most, and their buffers. Each call is counted and timed
//! (`selvage_object_store_calls_total`, `selvage_object_store_seconds`).

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use aws_sdk_s3::{
    config::{timeout::TimeoutConfig, BehaviorVersion, Credentials, Region},
    presigning::{PresignedRequest, PresigningConfig},
    Client,
};
use prometheus::IntGauge;
use tokio::sync::Semaphore;

use crate::{config::FilesConfig, metrics::Metrics};

/// Longest an object-store call may take, retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a whole read of an object may take, its bytes included.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an object-store call failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The store did not answer, refused the credentials, or answered with an error.
    #[error("object store: {0}")]
    Store(String),
    /// A URL could not be signed (a lifetime SigV4 does not allow, missing credentials).
    #[error("cannot presign: {0}")]
    Presign(String),
}

/// A presigned request: what a client sends, to where, until when.
#[derive(Clone, Debug)]
pub struct Presigned {
    /// The URL, its signature in the query.
    pub url: String,
    /// The HTTP method it is signed for.
    pub method: String,
    /// Headers the client must send with exactly these values (they are signed).
    pub headers: Vec<(String, String)>,
    /// When the URL stops working, ms since the epoch.
    pub expires_at: i64,
}

/// What the store holds under a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHead {
    /// Its length in bytes.
    pub size: u64,
    /// Its `Content-Type`, as uploaded.
    pub content_type: Option<String>,
}

/// What [`Objects::get`] found.
#[derive(Debug)]
pub enum Fetched {
    /// Nothing under the key.
    Missing,
    /// More bytes than asked for at most (how many it saw): nothing more was read.
    TooLarge(u64),
    /// The object's bytes.
    Bytes(Vec<u8>),
}

/// How a download URL has the store answer.
#[derive(Clone, Debug)]
pub struct Download<'a> {
    /// `response-content-type`.
    pub content_type: &'a str,
    /// `response-content-disposition`.
    pub disposition: &'a str,
}

/// The bucket, and a client for it.
#[derive(Clone)]
pub struct Objects {
    client: Client,
    bucket: String,
    upload_for: Duration,
    download_for: Duration,
    /// One permit per call to the store that may run now (`files.store_concurrency`).
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// Counts one in a gauge while it lives.
struct Counted(IntGauge);

impl Counted {
    fn new(gauge: IntGauge) -> Counted {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Objects {
    /// A client for the configured store. Credentials come from the configuration when it has
    /// them, else from AWS's standard chain (read lazily, on the first call). Nothing is
    /// contacted yet: [`Objects::check_bucket`] does that.
    pub async fn connect(config: &FilesConfig, metrics: Arc<Metrics>) -> Objects {
        // hyper 1 and rustls on ring, which the origin builds for QUIC anyway.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts =
            TimeoutConfig::builder().connect_timeout(Duration::from_secs(3)).operation_timeout(CALL_TIMEOUT).build();
        let region = Region::new(config.region.clone());
        let mut s3 = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => aws_sdk_s3::config::Builder::new()
                .behavior_version(BehaviorVersion::latest())
                .http_client(http)
                .credentials_provider(Credentials::new(id, secret, None, None, "selvage-config"))
                .region(region),
            _ => {
                let shared =
                    aws_config::defaults(BehaviorVersion::latest()).http_client(http).region(region).load().await;
                aws_sdk_s3::config::Builder::from(&shared)
            }
        };
        s3 = s3.timeout_config(timeouts).force_path_style(config.path_style);
        if let Some(endpoint) = &config.endpoint {
            s3 = s3.endpoint_url(endpoint.trim_end_matches('/'));
        }
        Objects {
            client: Client::from_conf(s3.build()),
            bucket: config.bucket.clone(),
            upload_for: Duration::from_secs(config.upload_url_secs),
            download_for: Duration::from_secs(config.download_url_secs),
            slots: Arc::new(Semaphore::new(config.store_concurrency)),
            metrics,
        }
    }

    /// Runs one call to the store (`op` names it in the metrics) once a slot is free.
    ///
    /// The call is made only then, and on the heap: an SDK call's future takes kilobytes, and a
    /// request waiting for a slot should hold a pointer, not that.
    async fn call<T, F>(&self, op: &str, call: impl FnOnce() -> F) -> Result<T, ObjectError>
    where
        F: Future<Output = Result<T, ObjectError>>,
    {
        let in_flight = &self.metrics.object_store_in_flight;
        let waiting = Counted::new(in_flight.with_label_values(&["waiting"]));
        // The semaphore is never closed.
        let _slot = self.slots.acquire().await.map_err(|e| ObjectError::Store(e.to_string()))?;
        drop(waiting);
        let _running = Counted::new(in_flight.with_label_values(&["running"]));
        let started = Instant::now();
        let result = Box::pin(call()).await;
        self.counted(op, started, result.is_ok());
        result
    }

    /// Counts and times one call of `op` that took since `started`.
    fn counted(&self, op: &str, started: Instant, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.metrics.object_store_calls.with_label_values(&[op, outcome]).inc();
        self.metrics.object_store_latency.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Whether the bucket exists and the credentials may use it (`HEAD` of the bucket).
    pub async fn check_bucket(&self) -> Result<(), ObjectError> {
        let head = || self.client.head_bucket().bucket(&self.bucket).send();
        self.call("head_bucket", || async { head().await.map(|_| ()).map_err(|e| store_error(&e)) }).await
    }

    /// A URL that uploads exactly `size` bytes of type `content_type` to `key`, and nothing
    /// else: length and type are signed, so any other upload is refused by the store.
    pub async fn presign_put(&self, key: &str, size: u64, content_type: &str) -> Result<Presigned, ObjectError> {
        let started = Instant::now();
        let (config, expires_at) = presigning(self.upload_for)?;
        let length = i64::try_from(size).map_err(|_| ObjectError::Presign("size over i64".into()))?;
        let put = self.client.put_object().bucket(&self.bucket).key(key).content_length(length);
        let request = put.content_type(content_type).presigned(config).await;
        self.counted("presign_put", started, request.is_ok());
        // Every signed header but `host` (the URL names it) must be sent as it is.
        presigned(request, expires_at, true)
    }

    /// A URL that downloads `key`, answered with the given type and disposition.
    pub async fn presign_get(&self, key: &str, answer: Download<'_>) -> Result<Presigned, ObjectError> {
        let started = Instant::now();
        let (config, expires_at) = presigning(self.download_for)?;
        let get = self.client.get_object().bucket(&self.bucket).key(key);
        let get = get.response_content_type(answer.content_type).response_content_disposition(answer.disposition);
        let request = get.presigned(config).await;
        self.counted("presign_get", started, request.is_ok());
        // A plain GET of the URL: a browser's `<img src>` or `<a href>` sends no headers.
        presigned(request, expires_at, false)
    }

    /// What the store holds under `key`; `None` when nothing.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectHead>, ObjectError> {
        let head = || self.client.head_object().bucket(&self.bucket).key(key).send();
        self.call("head", || async {
            match head().await {
                Ok(head) => Ok(Some(ObjectHead {
                    size: head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    content_type: head.content_type().map(str::to_string),
                })),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                // Some stores answer a missing key's HEAD with a bare 404 the SDK cannot model.
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
                Err(e) => Err(store_error(&e)),
            }
        })
        .await
    }

    /// The bytes under `key`, at most `max_bytes` of them (the length the store announces is
    /// checked before anything is read, and the count again while reading).
    pub async fn get(&self, key: &str, max_bytes: u64) -> Result<Fetched, ObjectError> {
        let fetch = || async {
            let mut object = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
                Ok(object) => object,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(Fetched::Missing),
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => return Ok(Fetched::Missing),
                Err(e) => return Err(store_error(&e)),
            };
            let announced = object.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            if announced > max_bytes {
                return Ok(Fetched::TooLarge(announced));
            }
            let mut bytes = Vec::with_capacity(announced as usize);
            while let Some(chunk) = object.body.next().await {
                let chunk = chunk.map_err(|e| store_error(&e))?;
                if (bytes.len() + chunk.len()) as u64 > max_bytes {
                    return Ok(Fetched::TooLarge((bytes.len() + chunk.len()) as u64));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(Fetched::Bytes(bytes))
        };
        self.call("get", || async {
            let read = tokio::time::timeout(READ_TIMEOUT, fetch());
            read.await.unwrap_or_else(|_| Err(ObjectError::Store(format!("reading {key} took over {READ_TIMEOUT:?}"))))
        })
        .await
    }

    /// Writes `body` under `key` with the given type, replacing what was there.
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), ObjectError> {
        let put = self.client.put_object().bucket(&self.bucket).key(key).content_type(content_type);
        self.call("put", || async { put.body(body.into()).send().await.map(|_| ()).map_err(|e| store_error(&e)) }).await
    }

    /// Deletes `key`; deleting what is not there succeeds, as in S3.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let delete = || self.client.delete_object().bucket(&self.bucket).key(key).send();
        self.call("delete", || async { delete().await.map(|_| ()).map_err(|e| store_error(&e)) }).await
    }
}

/// The presigning settings for a URL valid `lifetime` from now, and when it ends (ms).
fn presigning(lifetime: Duration) -> Result<(PresigningConfig, i64), ObjectError> {
    let start = SystemTime::now();
    let config = PresigningConfig::builder()
        .start_time(start)
        .expires_in(lifetime)
        .build()
        .map_err(|e| ObjectError::Presign(e.to_string()))?;
    let end = start + lifetime;
    let expires_at = end.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Ok((config, expires_at))
}

/// A signed request as a client is told to send it; with its headers when `headers`.
fn presigned<E>(request: Result<PresignedRequest, E>, expires_at: i64, headers: bool) -> Result<Presigned, ObjectError>
where
    E: std::error::Error + 'static,
{
    let request = request.map_err(|e| ObjectError::Presign(aws_sdk_s3::error::DisplayErrorContext(&e).to_string()))?;
    let headers = match headers {
        true => request
            .headers()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
            .collect(),
        false => Vec::new(),
    };
    Ok(Presigned { url: request.uri().to_string(), method: request.method().to_string(), headers, expires_at })
}

/// An SDK error with its whole chain of causes, for the log.
fn store_error<E: std::error::Error + 'static>(e: &E) -> ObjectError {
    ObjectError::Store(aws_sdk_s3::error::DisplayErrorContext(e).to_string())
}
