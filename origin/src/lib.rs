//! The Selvage origin: the system of record (ARCHITECTURE §1–§2, §5).
//!
//! An origin node serves the HTTP API for every write and admin action, gives each channel one
//! total order ([`sequencer`]), keeps the deployment's event log ([`feed`]) and stores it all in
//! a FoundationDB-shaped transactional store ([`store`]). It holds no state of its own beyond
//! caches and batching, so any number of nodes can share one FoundationDB cluster.
//!
//! [`start`] opens storage, starts the sequencer, the feed's notifier and trimmer, the files
//! service's background work (its thumbnail worker, a feed consumer, and its sweeper), binds the
//! HTTP listener and, when `link.edge_key` is set, the QUIC `link` edges connect to; the
//! returned [`Running`] reports the bound addresses and finishes once the shutdown token is
//! cancelled and in-flight work has drained. Inside the same process, the returned [`Origin`]
//! handle is the one entry point for driving it directly (see [`Actor`]).
//!
//! # Layers
//!
//! Each module uses only modules of the layers below it, so imports go one way:
//!
//! 1. Infrastructure: `config`, `error`, `ids`, `metrics`, [`store`] (the storage engines) and
//!    [`feed`] (the event log, with `feed::relay` for the ephemeral events that are never
//!    logged).
//! 2. [`caller`] (who a request acts for) and `presence` (who is online, from the edges'
//!    reports).
//! 3. [`channels`]: channels, membership and read markers, built on `channels::records`, the
//!    channel and membership records that every layer above reads and writes.
//! 4. [`accounts`]: workspaces, users and tokens (a new workspace gets `#general` and a new user
//!    joins it, through `channels::records`).
//! 5. `messages`: `messages::records` (a message and what lives beside it) under the
//!    [`sequencer`] (posting), `messages::history` (reading back) and `messages::edits`
//!    (changing); and `snapshot`, a workspace's state for an edge's cache.
//! 6. [`files`]: uploads and downloads through presigned URLs of an S3-compatible store, shared
//!    through messages posted by the sequencer, readable by whoever may see such a message.
//! 7. The ways in: `http` (the API's router, middleware, error rendering and one handler module
//!    per service), `link` (the QUIC link edges connect to) and the in-process entry point. They
//!    parse, authenticate and render; the rules and the storage access live in the layers below.

pub mod accounts;
pub mod apps;
pub mod background;
pub mod caller;
pub mod channels;
pub mod config;
pub mod error;
pub mod feed;
pub mod files;
mod http;
pub mod ids;
mod in_process;
mod link;
mod messages;
mod metrics;
pub mod notify;
pub mod outbound;
mod presence;
pub mod rate;
pub mod search;
mod snapshot;
pub mod store;

/// The sequencer's request and answer types, for in-process callers that post directly.
pub use messages::sequencer;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

pub use config::OriginConfig;
pub use error::OriginError;
pub use in_process::Actor;

use crate::{config::StoreKind, feed::Feed, messages::sequencer::Sequencer, metrics::Metrics, store::Store};

/// Milliseconds since the Unix epoch, the timestamp of every record.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Everything a request handler needs: one per origin process.
pub struct Origin {
    /// The configuration the node started with.
    pub config: OriginConfig,
    /// The storage engine.
    pub store: Store,
    /// The group-commit sequencer.
    pub sequencer: Sequencer,
    /// The event log's read side.
    pub feed: Arc<Feed>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Ephemeral events on their way to the edges.
    pub relay: Arc<feed::relay::Relay>,
    /// Who is online, from the edges' reports.
    pub presence: Arc<presence::Tracker>,
    /// The files service, when `files.enabled`.
    pub files: Option<files::Files>,
    /// The search service, when `search.enabled`.
    pub search: Option<search::Search>,
    /// The notification service, when `notify.enabled`.
    pub notify: Option<notify::Notify>,
    /// Apps' event webhook endpoints (their API; delivery runs when `apps.webhooks`).
    pub webhooks: apps::webhooks::Webhooks,
    /// Apps' slash commands.
    pub commands: apps::commands::Commands,
    /// Rate limits per token.
    pub rate: Arc<rate::RateLimits>,
    /// Cancelled when the node is shutting down.
    pub shutdown: CancellationToken,
}

/// Why an origin could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration failed validation.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The storage engine could not be opened.
    #[error("cannot open the {engine} store: {source}")]
    Store {
        /// Which engine.
        engine: &'static str,
        /// The failure.
        source: store::StoreError,
    },
    /// The edge link's certificate or TLS configuration could not be set up.
    #[error("cannot start the edge link: {0}")]
    Link(String),
    /// Files are enabled but their bucket does not answer.
    #[error("cannot start the files service: {0}")]
    Files(#[from] files::StartError),
    /// Search is enabled but its index cannot be opened.
    #[error("cannot open the search index: {0}")]
    Search(#[from] search::SearchError),
    /// Notifications are enabled but cannot start (their key, their HTTP client, the proxy).
    #[error("cannot start notifications: {0}")]
    Notify(String),
    /// A service on the feed could not be set up.
    #[error("cannot start a feed consumer: {0}")]
    Consumer(#[from] feed::consumer::ConsumerError),
    /// The HTTP listener (TCP) or the edge link (UDP) could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
}

/// A started origin.
pub struct Running {
    /// The address the HTTP API listens on (the real port when configured with port 0).
    pub addr: SocketAddr,
    /// The UDP address of the edge link, when it runs (`link.edge_key` set).
    pub link_addr: Option<SocketAddr>,
    /// SHA-256 fingerprint (lower-case hex) of the edge link's certificate, when it runs.
    pub link_fingerprint: Option<String>,
    /// The shared state, for in-process callers (`selvage dev`, tests).
    pub origin: Arc<Origin>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the node has shut down (after its shutdown token is cancelled).
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "origin task failed");
        }
    }
}

/// Opens the configured storage engine.
pub fn open_store(config: &OriginConfig) -> Result<Store, StartError> {
    match config.store {
        StoreKind::Embedded => {
            let dir = &config.data_dir;
            std::fs::create_dir_all(dir).map_err(|e| StartError::Store {
                engine: "embedded",
                source: store::StoreError::Engine(format!("cannot create {}: {e}", dir.display())),
            })?;
            let opts = config.embedded.options(config.fsync);
            let store = store::embedded::EmbeddedStore::open(&dir.join(store::embedded::DATA_FILE), opts)
                .map_err(|source| StartError::Store { engine: "embedded", source })?;
            Ok(store)
        }
        #[cfg(feature = "fdb")]
        StoreKind::Fdb => {
            let store = store::fdb::FdbStore::open(config.fdb_cluster_file.as_deref())
                .map_err(|source| StartError::Store { engine: "fdb", source })?;
            Ok(store)
        }
        #[cfg(not(feature = "fdb"))]
        StoreKind::Fdb => Err(StartError::Config("store = \"fdb\" needs a selvage built with `--features fdb`".into())),
    }
}

/// Starts an origin node; it runs until `shutdown` is cancelled.
pub async fn start(config: OriginConfig, shutdown: CancellationToken) -> Result<Running, StartError> {
    config.validate().map_err(StartError::Config)?;
    // The link binds first: a taken UDP port then fails the start before storage is opened.
    let link = link::bind(&config.link, &config.data_dir)?;
    let metrics = Arc::new(Metrics::new());
    metrics.configured(&config);
    // The object store is checked before storage is opened: a missing bucket fails the start.
    let files = match config.files.enabled {
        true => Some(files::Files::start(&config.files, metrics.clone()).await?),
        false => None,
    };
    let store = open_store(&config)?;
    let search = match config.search.enabled {
        true => Some(search::Search::open(&config.search, &config.data_dir, metrics.clone())?),
        false => None,
    };
    let presence = Arc::new(presence::Tracker::new(Duration::from_millis(config.link.presence_lease_ms)));
    let (sequencer, committer) =
        Sequencer::start(store.clone(), config.sequencer.clone(), metrics.clone(), presence.clone(), shutdown.clone());
    let feed = Feed::new(store.clone(), config.feed.clone(), metrics.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    // Emails link back to the API: the configured public URL, else the address just bound.
    let notify = match config.notify.enabled {
        true => Some(
            notify::Notify::open(&config.notify, &store, &format!("http://{addr}"), metrics.clone())
                .await
                .map_err(StartError::Notify)?,
        ),
        false => None,
    };
    let webhooks = apps::webhooks::Webhooks::new(&store, &config.apps).map_err(StartError::Config)?;
    // A command's `response_url`: the apps' public URL, else the notifications', else the
    // address just bound.
    let base = match config.notify.public_url.is_empty() {
        true => format!("http://{addr}"),
        false => config.notify.public_url.clone(),
    };
    let commands = apps::commands::Commands::new(&store, &config.apps, &base).map_err(StartError::Config)?;
    let rate = Arc::new(rate::RateLimits::new(&config.rate_limits, metrics.clone()));
    tracing::info!(%addr, engine = store.engine(), "origin listening");
    let origin = Arc::new(Origin {
        config,
        store,
        sequencer,
        feed: feed.clone(),
        metrics,
        relay: Arc::new(feed::relay::Relay::new()),
        presence,
        files,
        search,
        notify,
        webhooks,
        commands,
        rate,
        shutdown: shutdown.clone(),
    });
    let notifier = tokio::spawn(feed.clone().run_notifier(shutdown.clone()));
    let trimmer = tokio::spawn(feed.run_trimmer(shutdown.clone()));
    let sweeper = tokio::spawn(presence::run_sweeper(origin.presence.clone(), origin.relay.clone(), shutdown.clone()));
    let rate_sweeper = tokio::spawn(origin.rate.clone().run_sweeper(shutdown.clone()));
    // The services on the feed: the files service's thumbnail worker and sweeper, the search
    // indexer, the notifier, the webhook dispatcher — on a runtime of their own, at a lower
    // CPU priority than the sequencer's.
    let consumers = &origin.config.consumers;
    let runtime = background::Background::new(consumers.threads, consumers.nice)
        .map_err(|e| StartError::Config(format!("cannot start the consumers' runtime: {e}")))?;
    let entered = runtime.handle().enter();
    let mut background = match &origin.files {
        Some(files) => files.start_background(&origin.store, &origin.feed, &origin.config.consumers, &shutdown)?,
        None => Vec::new(),
    };
    if let Some(search) = &origin.search {
        background.extend(search.start_background(&origin.store, &origin.feed, &origin.config.consumers, &shutdown)?);
    }
    if let Some(notify) = &origin.notify {
        let (store, feed, presence) = (&origin.store, &origin.feed, &origin.presence);
        background.extend(notify.start_background(store, feed, presence, &origin.config.consumers, &shutdown)?);
    }
    if origin.config.apps.webhooks {
        let (store, feed, config) = (&origin.store, &origin.feed, &origin.config);
        background.extend(
            apps::webhooks::start(store, feed, &config.apps, &config.consumers, &origin.metrics, &shutdown)
                .map_err(StartError::Config)?,
        );
    }
    drop(entered);
    // The consumers' cursors exist before this node serves anything: what is sent from the
    // first request on reaches every one of them.
    feed::consumer::register_spawned(&origin.feed).await?;
    let link = link.map(|bound| bound.serve(origin.clone(), shutdown.clone()));
    let (link_addr, link_fingerprint) = link.as_ref().map(|l| (l.addr, l.fingerprint.clone())).unzip();
    let app = http::router(origin.clone());
    let task = tokio::spawn(async move {
        let stop = shutdown.clone();
        // Routes are resolved once here, not for every connection (serving the router itself
        // rebuilds its route table per connection: ~18 KiB each, measured with heaptrack).
        let served = axum::serve(listener, app.into_make_service())
            .with_graceful_shutdown(async move { stop.cancelled().await });
        // In-flight requests get a grace period; long-polls end at their own deadline.
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        tokio::select! {
            r = served => if let Err(e) = r { tracing::error!(error = %e, "HTTP server failed") },
            _ = grace => tracing::warn!("shutdown grace period over; dropping open requests"),
        }
        if let Some(link) = link {
            link.wait().await;
        }
        let _ = committer.await;
        let _ = notifier.await;
        let _ = trimmer.await;
        let _ = sweeper.await;
        let _ = rate_sweeper.await;
        // A consumer gives up its lease on the way out, so it stops before the store closes.
        for task in background {
            let _ = task.await;
        }
        drop(runtime);
        tracing::info!("origin stopped");
    });
    Ok(Running { addr, link_addr, link_fingerprint, origin, task })
}
