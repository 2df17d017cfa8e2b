//! Why an s3local endpoint could not start.

use std::{io, net::SocketAddr, path::PathBuf};

/// Why [`S3Local::start`](crate::S3Local::start) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options failed validation (empty key, bad bucket name).
    #[error("invalid s3local options: {0}")]
    Options(String),
    /// The data directory, or a bucket's directory in it, could not be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The file-system backend refused the data directory (it could not be resolved, or its
    /// leftover partial uploads could not be cleaned).
    #[error("cannot open the data directory {path}: {detail}")]
    OpenRoot {
        /// The directory.
        path: PathBuf,
        /// The backend's description of the failure (its error type is not a `std` error).
        detail: String,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The failure.
        source: io::Error,
    },
}
