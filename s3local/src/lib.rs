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
//!   query); unsigned requests and wrong signatures get `403`.
//! - A presigned URL is refused (`403 AccessDenied`, "Request has expired") once
//!   `X-Amz-Date + X-Amz-Expires` has passed. Header-signed requests must be within 15 minutes
//!   of the server's clock.
//! - Headers named in the signature (`X-Amz-SignedHeaders`) must arrive with the signed values:
//!   a presigned `PUT` whose URL was made with a `Content-Length` and a `Content-Type` is
//!   refused (`403 SignatureDoesNotMatch`) when the upload's length or type differs, and
//!   nothing is stored. An upload cut short of its `Content-Length` is refused too, and its
//!   partial file is discarded.
//! - A presigned `GET` may override the answer's `Content-Type` and `Content-Disposition` with
//!   `response-content-type` and `response-content-disposition`, as S3 does.
//!
//! # Where it stores
//! Under [`Options::root`], created at start: one directory per bucket holding each object as a
//! file at its key's path, and dot-files beside them for metadata (content type, ETag).
//! Uploads are written to a temporary file and renamed into place, so a reader sees the old
//! object or the new one. A restart on the same root serves the same objects.
//!
//! # Use
//! ```no_run
//! # async fn demo() -> Result<(), selvage_s3local::Error> {
//! use selvage_s3local::{Options, S3Local};
//!
//! let s3 = S3Local::start(Options::new("data/s3")).await?;
//! // Point an S3 client at s3.endpoint() with force_path_style(true), region
//! // DEFAULT_REGION and the credential DEFAULT_ACCESS_KEY / DEFAULT_SECRET_KEY.
//! println!("{}", s3.endpoint());
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
