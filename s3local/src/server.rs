//! The running endpoint: the listener, one task per connection, and shutdown.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use s3s::{auth::SimpleAuth, service::S3ServiceBuilder};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{front::Front, Error, Options};

/// How long open connections may take to finish their requests once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A running S3-protocol endpoint. It serves until [`S3Local::shutdown`], until the token given
/// to [`S3Local::start_with_shutdown`] is cancelled, or until it is dropped (which stops the
/// accept loop without waiting for it).
#[derive(Debug)]
pub struct S3Local {
    addr: SocketAddr,
    root: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl S3Local {
    /// Creates the data directory and the buckets when missing, binds `options.listen` and
    /// starts serving.
    pub async fn start(options: Options) -> Result<Self, Error> {
        Self::start_with_shutdown(options, CancellationToken::new()).await
    }

    /// Like [`S3Local::start`], and also stops when `shutdown` is cancelled (the process's
    /// shutdown root, in `selvage dev`).
    pub async fn start_with_shutdown(options: Options, shutdown: CancellationToken) -> Result<Self, Error> {
        options.validate()?;
        let root = open_root(&options)?;
        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|e| Error::OpenRoot { path: root.clone(), detail: format!("{e:?}") })?;

        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(options.access_key.clone(), options.secret_key.clone()));
        let front = Front::new(builder.build());

        let listener =
            TcpListener::bind(options.listen).await.map_err(|source| Error::Bind { addr: options.listen, source })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind { addr: options.listen, source })?;

        // A child token: dropping this endpoint must not cancel the caller's root.
        let shutdown = shutdown.child_token();
        let task = tokio::spawn(serve(listener, front, shutdown.clone()));
        tracing::info!(%addr, root = %root.display(), buckets = ?options.buckets, "s3local listening");
        Ok(Self { addr, root, shutdown, task: Some(task) })
    }

    /// The address it listens on, with the real port when started on port 0.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients use as their S3 endpoint (path-style), `http://127.0.0.1:PORT`. An
    /// unspecified listen address (`0.0.0.0`) is reported as loopback.
    pub fn endpoint(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        format!("http://{addr}")
    }

    /// The data directory, absolute.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops accepting, lets open connections finish their requests (for at most 5 s), and
    /// returns once the server has stopped.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "s3local server task failed");
            }
        }
    }
}

impl Drop for S3Local {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Creates the data directory and a directory per bucket (how the file-system backend stores a
/// bucket), and returns the directory's absolute path.
fn open_root(options: &Options) -> Result<PathBuf, Error> {
    let create = |path: &Path| {
        std::fs::create_dir_all(path).map_err(|source| Error::CreateDir { path: path.to_owned(), source })
    };
    create(&options.root)?;
    let root = options
        .root
        .canonicalize()
        .map_err(|e| Error::OpenRoot { path: options.root.clone(), detail: e.to_string() })?;
    for bucket in &options.buckets {
        create(&root.join(bucket))?;
    }
    Ok(root)
}

async fn serve(listener: TcpListener, front: Front, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut next_conn_id = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "s3local accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        next_conn_id += 1;
        let span = tracing::debug_span!("s3local.conn", conn.id = next_conn_id, %peer);
        let conn = http1::Builder::new().timer(TokioTimer::new()).serve_connection(TokioIo::new(stream), front.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!("s3local connections drained"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("s3local connections still open after {DRAIN_TIMEOUT:?}; dropping them"),
    }
    tracing::info!("s3local stopped");
}
