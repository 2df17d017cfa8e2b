//! s3local: an S3-protocol object store inside the process, for `selvage dev` and the tests.
//!
//! Files never pass through the origin: clients get short-lived presigned URLs from it and move
//! the bytes straight to S3-compatible object storage. So that dev and tests need nothing
//! installed, this crate runs a real S3 endpoint on a local port: HTTP, path-style addressing
//! (`http://127.0.0.1:PORT/bucket/key`), SigV4 signatures checked against one configured
//! credential. The real `aws-sdk-s3` client, and a browser or any plain HTTP client holding a
//! presigned URL, talk to it exactly as they would to S3. **It is not for production**: one
//! credential, no TLS, no quotas, permissive CORS, objects as plain files.
//!
//! # What it checks
//! - Every request must be signed (SigV4 in the `Authorization` header, or a presigned URL's
//!   query) with the configured credential; unsigned requests and wrong signatures get `403`.
//!   The path (bucket and key) is part of the signature. The one exception: an unsigned `GET`
//!   or `HEAD` of `/healthz` answers `200 ok`, for health checks (module `front`).
//! - A presigned URL is refused (`403 AccessDenied`, "Request has expired") once
//!   `X-Amz-Date + X-Amz-Expires` has passed, by the wall clock. Header-signed requests must be
//!   within 15 minutes of the server's clock (s3s's default).
//! - Headers named in the signature (`X-Amz-SignedHeaders`) must arrive with the signed values.
//!   `aws-sdk-s3` signs the `Content-Length` and `Content-Type` given to a presigned `PutObject`,
//!   so an upload whose length or type differs is refused (`403 SignatureDoesNotMatch`) and
//!   nothing is stored. An upload that stops short of its `Content-Length` is refused too (s3s
//!   answers `500`, where S3 says `400 IncompleteBody`) and its partial file is discarded.
//! - A presigned `GET` may override the answer's `Content-Type` and `Content-Disposition` with
//!   `response-content-type` and `response-content-disposition`, as S3 does.
//!
//! Not checked, unlike S3: `X-Amz-Expires` above 7 days (`aws-sdk-s3` refuses to presign those
//! anyway); object size limits other than a signed `Content-Length`.
//!
//! # Browsers
//! A page may upload to and download from presigned URLs across origins: preflights are
//! answered for any origin (methods `GET`, `PUT`, `HEAD`, the headers asked for), and answers to
//! cross-origin requests carry `Access-Control-Allow-Origin` and expose `ETag`.
//!
//! # Where it stores
//! Under [`Options::root`], created at start: one directory per bucket holding each object as a
//! file at its key's path, and metadata files (content type, checksums) at the root's top
//! level, named `.bucket-….object-….metadata.json` and `….internal.json`. Uploads are written to a temporary file at the top
//! level and renamed into place, so a reader sees the old object or the new one. A restart on the
//! same root serves the same objects; leftover temporary files are deleted at start, so run one
//! endpoint per root at a time.
//!
//! # Use
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
//! use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
//! use selvage_s3local::{Options, S3Local, DEFAULT_ACCESS_KEY, DEFAULT_REGION, DEFAULT_SECRET_KEY};
//!
//! let s3 = S3Local::start(Options::new("data/s3")).await?;
//!
//! let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
//! let config = aws_sdk_s3::Config::builder()
//!     .behavior_version(BehaviorVersion::latest())
//!     .region(Region::new(DEFAULT_REGION))
//!     .endpoint_url(s3.endpoint())
//!     .force_path_style(true)
//!     .credentials_provider(Credentials::new(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, None, None, "s3local"))
//!     .http_client(http)
//!     .build();
//! let client = aws_sdk_s3::Client::from_conf(config);
//! // ... client.put_object(), .presigned(), ...
//! # drop(client);
//!
//! s3.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Why these crates
//! The S3 protocol (its XML, its errors and above all SigV4 with its canonical requests,
//! presigned URLs and chunked uploads) is a solved problem: [`s3s`] is a maintained library
//! that implements the server side of it and hands each operation to a trait, and `s3s-fs`
//! implements that trait on a directory. Writing S3's auth ourselves would be hand-written code
//! for a solved problem, with the security bugs that come with it. Both are pinned to 0.14, the
//! last line that builds with our Rust. This crate adds the listener, graceful shutdown, bucket
//! creation and CORS for browsers (module `front`).

mod error;
mod front;
mod options;
mod server;

pub use error::Error;
pub use options::{Options, DEFAULT_ACCESS_KEY, DEFAULT_BUCKET, DEFAULT_REGION, DEFAULT_SECRET_KEY};
pub use server::S3Local;
