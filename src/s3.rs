//! `selvage s3`: the S3-compatible endpoint of `selvage dev` (crate `selvage-s3local`) on its
//! own, for a deployment on one machine or the two-region compose demo, where the origin's
//! files service and the clients' presigned URLs need an object store and there is none to
//! hand. One credential, no TLS, objects as plain files under `--data-dir`: not a production
//! object store (use S3, MinIO, Ceph or Garage there).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

/// `selvage s3` arguments.
#[derive(Args)]
pub struct S3Args {
    /// Address to listen on; port 0 picks a free one (the real address is printed). A container
    /// gives 0.0.0.0:7900 to be reachable from outside it.
    #[arg(long, env = "SELVAGE_S3_LISTEN", default_value = "127.0.0.1:7900")]
    listen: SocketAddr,
    /// Directory holding the buckets and objects (created when missing); kept between runs.
    #[arg(long, env = "SELVAGE_S3_DATA_DIR", default_value = "selvage-s3")]
    data_dir: PathBuf,
    /// Access key of the one credential every request must be signed with (the origin's
    /// files.access_key_id).
    #[arg(long, env = "SELVAGE_S3_ACCESS_KEY", default_value = selvage_s3local::DEFAULT_ACCESS_KEY)]
    access_key: String,
    /// Secret key of that credential (the origin's files.secret_access_key). The default is
    /// public: set one of your own anywhere but on loopback.
    #[arg(long, env = "SELVAGE_S3_SECRET_KEY", hide_env_values = true, default_value = selvage_s3local::DEFAULT_SECRET_KEY)]
    secret_key: String,
    /// Bucket created at start when missing (repeat for several). Any region signs: requests
    /// are checked against the region they were signed for.
    #[arg(long = "bucket", env = "SELVAGE_S3_BUCKETS", value_delimiter = ',', default_value = selvage_s3local::DEFAULT_BUCKET)]
    buckets: Vec<String>,
}

/// Serves until `shutdown` (SIGTERM, Ctrl-C), then lets requests in flight finish (at most 5 s).
pub async fn run(args: S3Args, shutdown: CancellationToken) -> Result<()> {
    let options = selvage_s3local::Options {
        listen: args.listen,
        root: args.data_dir.clone(),
        access_key: args.access_key,
        secret_key: args.secret_key,
        buckets: args.buckets.clone(),
    };
    let s3 = selvage_s3local::S3Local::start_with_shutdown(options, shutdown.clone())
        .await
        .with_context(|| format!("cannot start the S3 endpoint on {}", args.listen))?;
    {
        // A reader that stopped after the first line (a script waiting for the address) must
        // not take the endpoint down with a broken pipe, so write errors are ignored.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "selvage s3 listening on http://{} buckets {} data {}",
            s3.addr(),
            args.buckets.join(","),
            s3.root().display()
        );
        let _ = out.flush();
    }
    shutdown.cancelled().await;
    s3.shutdown().await;
    Ok(())
}
