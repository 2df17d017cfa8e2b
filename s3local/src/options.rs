//! What an s3local endpoint listens on, where it stores, and whom it lets in.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use crate::Error;

/// Access key of the one credential, unless configured otherwise.
pub const DEFAULT_ACCESS_KEY: &str = "selvage-dev";
/// Secret key of the one credential, unless configured otherwise. Public on purpose: the
/// endpoint is for dev and tests on loopback.
pub const DEFAULT_SECRET_KEY: &str = "selvage-dev-secret";
/// Region clients should sign for. The server takes the region from each request's credential
/// scope, so any region verifies; this one is what dev configs and tests use.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Bucket created at start, unless configured otherwise.
pub const DEFAULT_BUCKET: &str = "selvage-files";

/// Options of an s3local endpoint.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on; port 0 picks a free port (read it back with
    /// [`S3Local::addr`](crate::S3Local::addr)). Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Directory holding the buckets (one sub-directory each) and the objects' metadata files.
    /// Created at start when missing.
    pub root: PathBuf,
    /// Access key of the one credential requests must be signed with.
    pub access_key: String,
    /// Secret key of that credential.
    pub secret_key: String,
    /// Buckets created at start when missing. Default: [`DEFAULT_BUCKET`].
    pub buckets: Vec<String>,
}

impl Options {
    /// Options with every default, storing under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            root: root.into(),
            access_key: DEFAULT_ACCESS_KEY.to_owned(),
            secret_key: DEFAULT_SECRET_KEY.to_owned(),
            buckets: vec![DEFAULT_BUCKET.to_owned()],
        }
    }

    /// Checks what the server would otherwise trip over later.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.access_key.is_empty() || self.secret_key.is_empty() {
            return Err(Error::Options("access_key and secret_key must not be empty".into()));
        }
        for bucket in &self.buckets {
            if !is_valid_bucket_name(bucket) {
                return Err(Error::Options(format!(
                    "bucket name {bucket:?} is not a valid S3 bucket name (3 to 63 of a-z, 0-9, '-', '.'; \
                     starting and ending with a letter or digit)"
                )));
            }
        }
        Ok(())
    }
}

/// S3's bucket naming rules, minus the IP-address and reserved-prefix ones. Also what keeps a
/// bucket's directory inside the root: no '/', and no name made only of dots.
fn is_valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| edge_ok(b) || *b == b'-' || *b == b'.')
        && bytes.first().is_some_and(edge_ok)
        && bytes.last().is_some_and(edge_ok)
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "selvage-files", "a.b-c", "0bucket9"] {
            assert!(is_valid_bucket_name(ok), "{ok}");
        }
        for bad in ["ab", "Abc", "-abc", "abc-", "a..b", "a/b", "..", ".abc", "", &"a".repeat(64)] {
            assert!(!is_valid_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn empty_secret_refused() {
        let mut options = Options::new("/tmp/x");
        options.secret_key.clear();
        assert!(matches!(options.validate(), Err(Error::Options(_))));
    }
}
