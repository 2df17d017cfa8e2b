//! The origin's configuration: one typed struct with defaults that work on one machine.
//!
//! The binary layers it (ARCHITECTURE §9): defaults, then a TOML file, then `SELVAGE_*`
//! environment variables (`SELVAGE_LISTEN`, `SELVAGE_SEQUENCER__QUEUE_CAPACITY`, …), then
//! command-line flags; [`OriginConfig::validate`] runs before anything starts.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Everything an origin node needs to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Address of the HTTP API, `/metrics`, `/healthz` and `/readyz`. Port 0 picks a free one.
    pub listen: SocketAddr,
    /// Which storage engine to use: `embedded` (one file, one machine) or `fdb`.
    pub store: StoreKind,
    /// Directory of the embedded engine's data file.
    pub data_dir: PathBuf,
    /// Whether the embedded engine fsyncs every commit. Only turn off for throwaway data: an
    /// acknowledged message may then be lost in a power failure (not in a process crash).
    pub fsync: bool,
    /// FoundationDB cluster file for `store = "fdb"`; unset means FoundationDB's default.
    pub fdb_cluster_file: Option<PathBuf>,
    /// Key that authorizes `POST /v1/workspaces`. Unset disables workspace creation over HTTP.
    pub operator_key: Option<String>,
    /// Largest accepted HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// Lifetime of tokens issued by the API, in seconds; 0 means they do not expire.
    pub token_ttl_secs: u64,
    /// Tuning of the embedded engine's memtable and page cache.
    pub embedded: EmbeddedConfig,
    /// The per-channel sequencer and its group commit.
    pub sequencer: SequencerConfig,
    /// The feed log and its trimming.
    pub feed: FeedConfig,
    /// The QUIC link edges connect to (feed and calls). Off until `link.edge_key` is set.
    pub link: LinkConfig,
    /// How the services on the feed (its consumers) run by default.
    pub consumers: ConsumersConfig,
    /// The files service and its S3-compatible object store. Off unless `files.enabled`.
    pub files: FilesConfig,
    /// Full-text search: its index, kept by the feed consumer `search`. On by default.
    pub search: SearchConfig,
    /// Notifications: push (Web Push and a push proxy) for what concerns users who are away.
    /// On by default; nothing is sent until a user registers a push subscription or a push
    /// proxy is configured.
    pub notify: NotifyConfig,
    /// Apps: their event webhooks and the outgoing requests they cause.
    pub apps: AppsConfig,
    /// Rate limits per token on the HTTP API.
    pub rate_limits: RateLimitsConfig,
}

/// Rate limits per token on the HTTP API (ARCHITECTURE §7): a token bucket per token and
/// class. Reads are looser than writes; an incoming webhook has a bucket of its own, by its
/// secret. A request over its rate answers `429 rate_limited` with `Retry-After`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Whether requests are limited at all. The in-process load tests turn it off: their
    /// simulated clients share a few tokens.
    pub enabled: bool,
    /// `GET` requests of one token.
    pub read: selvage_shared::rate::Rate,
    /// Every other request of one token: posts, edits, reactions, uploads, admin changes.
    pub write: selvage_shared::rate::Rate,
    /// Posts to one incoming webhook (`POST /v1/hooks/{secret}`) and to one slash command's
    /// `response_url`: Slack allows about one a second, with bursts.
    pub incoming: selvage_shared::rate::Rate,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        use selvage_shared::rate::Rate;
        RateLimitsConfig {
            enabled: true,
            read: Rate::READS,
            write: Rate::WRITES,
            incoming: Rate { per_second: 1, burst: 30 },
        }
    }
}

impl RateLimitsConfig {
    /// Checks the section's fields (see [`OriginConfig::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        self.read.validate("rate_limits.read")?;
        self.write.validate("rate_limits.write")?;
        self.incoming.validate("rate_limits.incoming")
    }
}

/// Apps' outgoing requests: event webhooks (ARCHITECTURE §8 "Apps").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppsConfig {
    /// Whether this origin runs the consumer `hooks` and delivers event webhooks.
    pub webhooks: bool,
    /// Internal networks that webhooks may reach besides the public internet, e.g.
    /// `["10.1.0.0/16"]` (and `http://` to them). None by default: loopback, private and
    /// link-local addresses are refused.
    pub allow_networks: Vec<String>,
    /// How long an endpoint has to answer a delivery (ms); more counts as a failure.
    pub webhook_timeout_ms: u64,
    /// The pause after an endpoint's first failed try (ms); each next one is 4× longer, up to
    /// `webhook_retry_max_ms`.
    pub webhook_retry_min_ms: u64,
    /// The longest pause between tries (ms).
    pub webhook_retry_max_ms: u64,
    /// How long an endpoint may keep failing before it is disabled (s).
    pub webhook_disable_after_secs: u64,
    /// How long a disabled endpoint's undelivered events are kept for it (s): enabled again
    /// within this, it gets them in order; later, what is past it is queued again from the feed
    /// (which keeps `feed.retention_secs`) as a replay would.
    pub webhook_keep_disabled_secs: u64,
    /// How long entries of the delivery log are kept (s).
    pub delivery_log_secs: u64,
    /// How long a secret rotated out still signs deliveries beside the new one (s).
    pub secret_overlap_secs: u64,
    /// How often the dispatcher looks for deliveries to make (ms).
    pub tick_ms: u64,
    /// How long an app has to answer a slash command (ms); Slack's 3 s by default.
    pub command_timeout_ms: u64,
    /// The URL apps reach this origin's HTTP API at, for the `response_url` of a slash command.
    /// Empty: `notify.public_url`, else `http://` and the address the API listens on.
    pub public_url: String,
}

impl Default for AppsConfig {
    fn default() -> Self {
        AppsConfig {
            webhooks: true,
            allow_networks: Vec::new(),
            webhook_timeout_ms: 10_000,
            webhook_retry_min_ms: 5_000,
            webhook_retry_max_ms: 10 * 3_600_000,
            webhook_disable_after_secs: 86_400,
            webhook_keep_disabled_secs: 3 * 86_400,
            delivery_log_secs: 7 * 86_400,
            secret_overlap_secs: 86_400,
            tick_ms: 200,
            command_timeout_ms: 3_000,
            public_url: String::new(),
        }
    }
}

impl AppsConfig {
    /// Checks the section's fields (see [`OriginConfig::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        crate::outbound::Allow::parse(false, &self.allow_networks).map_err(|e| format!("apps.allow_networks: {e}"))?;
        if !(100..=60_000).contains(&self.webhook_timeout_ms) {
            return Err("apps.webhook_timeout_ms must be between 100 and 60000".into());
        }
        if self.webhook_retry_min_ms == 0 || self.webhook_retry_min_ms > self.webhook_retry_max_ms {
            return Err("apps.webhook_retry_min_ms must be at least 1 and at most apps.webhook_retry_max_ms".into());
        }
        if self.delivery_log_secs == 0 {
            return Err("apps.delivery_log_secs must be at least 1".into());
        }
        if !(10..=3_600_000).contains(&self.tick_ms) {
            return Err("apps.tick_ms must be between 10 and 3600000 (an hour)".into());
        }
        if !(100..=30_000).contains(&self.command_timeout_ms) {
            return Err("apps.command_timeout_ms must be between 100 and 30000".into());
        }
        if !self.public_url.is_empty() && url::Url::parse(&self.public_url).is_err() {
            return Err("apps.public_url must be a URL such as https://chat.example.com".into());
        }
        Ok(())
    }
}

/// The notification service (ARCHITECTURE §8 "Notifications").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Whether this origin decides and sends notifications; off, their routes answer `404`.
    pub enabled: bool,
    /// How long after a message it is notified, if still unread and its reader away (ms).
    pub delay_ms: u64,
    /// Who runs this deployment, for push services (VAPID's `sub`): `mailto:` or `https:`.
    pub vapid_subject: String,
    /// How long a node may take to deliver a notification it claimed before another node
    /// takes it over (ms).
    pub claim_ms: u64,
    /// Tries per notification before it is recorded as failed.
    pub max_attempts: u32,
    /// First pause before a failed delivery is tried again; doubles each time (ms).
    pub retry_min_ms: u64,
    /// Longest pause between tries (ms).
    pub retry_max_ms: u64,
    /// Longest wait for a push service or the push proxy to answer (ms).
    pub request_timeout_ms: u64,
    /// How long a push service keeps a notification for a browser that is offline (s).
    pub ttl_secs: u64,
    /// The push proxy: an HTTPS endpoint that gets each notification as signed JSON (for
    /// mobile apps, as Mattermost's push proxy fronts APNs and FCM). Empty: none.
    pub push_proxy_url: String,
    /// The key of the proxy's HMAC-SHA256 signature (`X-Selvage-Signature`).
    pub push_proxy_secret: String,
    /// Let push endpoints and the proxy be internal addresses (loopback, private networks).
    /// Off: a subscription to one is refused, a request to a name resolving to one fails.
    pub allow_internal_endpoints: bool,
    /// How often the dispatcher looks for due notifications (ms).
    pub tick_ms: u64,
    /// The SMTP server email digests go through, as a URL: `smtps://host:465` (TLS),
    /// `smtp://host:587?tls=required` (STARTTLS, refused without it), `smtp://host:25` (plain:
    /// only for a relay on the same host or network), with `user:password@` for
    /// authentication. Empty: no email.
    pub smtp_url: String,
    /// The digests' sender (`From`), as `Name <address>` or an address.
    pub email_from: String,
    /// How long a mention or DM stays unread, its reader not active, before it is emailed
    /// (ms). Everything of the user's pending by then goes into the same digest.
    pub email_after_ms: u64,
    /// The URL people reach this origin's HTTP API at, for the links in emails (unsubscribe).
    /// Empty: `http://` and the address the API listens on.
    pub public_url: String,
    /// Members beyond which an `@channel` message is decided by the dispatcher, a chunk of
    /// members per transaction, instead of by the consumer in one: keeps its transactions small
    /// in channels of any size.
    pub inline_members: usize,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            enabled: true,
            delay_ms: 10_000,
            vapid_subject: "mailto:notifications@selvage.invalid".into(),
            claim_ms: 60_000,
            max_attempts: 6,
            retry_min_ms: 1_000,
            retry_max_ms: 300_000,
            request_timeout_ms: 10_000,
            ttl_secs: 86_400,
            push_proxy_url: String::new(),
            push_proxy_secret: String::new(),
            allow_internal_endpoints: false,
            tick_ms: 500,
            smtp_url: String::new(),
            email_from: "Selvage <notifications@selvage.invalid>".into(),
            email_after_ms: 15 * 60_000,
            public_url: String::new(),
            inline_members: crate::notify::decide::INLINE_MEMBERS,
        }
    }
}

impl NotifyConfig {
    /// Checks the section's fields (see [`OriginConfig::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.delay_ms > 24 * 3_600_000 {
            return Err("notify.delay_ms must be at most a day (86400000)".into());
        }
        if !(self.vapid_subject.starts_with("mailto:") || self.vapid_subject.starts_with("https://")) {
            return Err("notify.vapid_subject must be a mailto: or https:// URL".into());
        }
        if self.claim_ms < 100 || self.tick_ms < 10 || self.request_timeout_ms < 100 {
            return Err("notify.claim_ms and notify.request_timeout_ms must be at least 100, notify.tick_ms 10".into());
        }
        if self.max_attempts == 0 || self.retry_min_ms == 0 || self.retry_max_ms < self.retry_min_ms {
            return Err("notify.max_attempts and notify.retry_min_ms must be > 0, retry_max_ms ≥ retry_min_ms".into());
        }
        if !self.push_proxy_url.is_empty() {
            // The address rules are checked when the service starts (`notify::outbound`).
            if !(self.push_proxy_url.starts_with("https://") || self.push_proxy_url.starts_with("http://")) {
                return Err("notify.push_proxy_url must be an https:// URL".into());
            }
            if self.push_proxy_secret.len() < 16 {
                return Err("notify.push_proxy_secret must have at least 16 characters when a proxy is set".into());
            }
        }
        if !self.smtp_url.is_empty() {
            if !(self.smtp_url.starts_with("smtp://") || self.smtp_url.starts_with("smtps://")) {
                return Err("notify.smtp_url must be an smtp:// or smtps:// URL".into());
            }
            if self.email_from.parse::<lettre::message::Mailbox>().is_err() {
                return Err("notify.email_from must be an address or `Name <address>`".into());
            }
            if self.email_after_ms > 7 * 24 * 3_600_000 {
                return Err("notify.email_after_ms must be at most a week (604800000)".into());
            }
        }
        if !self.public_url.is_empty() && url::Url::parse(&self.public_url).is_err() {
            return Err("notify.public_url must be a URL such as https://chat.example.com".into());
        }
        Ok(())
    }
}

/// Full-text search (ARCHITECTURE §8 "Search"): a tantivy index under `data_dir/search`, kept
/// current by the feed consumer `search`, queried by `GET /v1/search` and the edge's `search`
/// query.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Whether this origin indexes and answers searches; off, `/v1/search` answers `404`.
    pub enabled: bool,
    /// The index writer's memory budget, in MiB: what it buffers before it writes a segment.
    pub writer_memory_mib: usize,
    /// Threads the index writer uses.
    pub writer_threads: usize,
    /// Longest a search with `after` waits for the index to cover that cursor, in ms (at most
    /// 8,000: under an edge's deadline for a call); past it the search answers with what is
    /// indexed, saying so (`caught_up: false`).
    pub max_wait_ms: u64,
    /// Searches that read the index at once; more wait their turn, first come first served.
    /// 0 (the default) is one per CPU core.
    pub max_concurrent: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig { enabled: true, writer_memory_mib: 64, writer_threads: 1, max_wait_ms: 5_000, max_concurrent: 0 }
    }
}

impl SearchConfig {
    /// Checks the section's fields (see [`OriginConfig::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=4096).contains(&self.writer_memory_mib) {
            return Err("search.writer_memory_mib must be between 16 and 4096".into());
        }
        if !(1..=16).contains(&self.writer_threads) {
            return Err("search.writer_threads must be between 1 and 16".into());
        }
        if self.writer_memory_mib < 16 * self.writer_threads {
            return Err("search.writer_memory_mib must be at least 16 per writer thread".into());
        }
        // Under the edge's 10 s deadline for a call over the link, so that a search waiting
        // through an edge answers rather than times out.
        if self.max_wait_ms > 8_000 {
            return Err("search.max_wait_ms must be at most 8000".into());
        }
        if self.max_concurrent > 1024 {
            return Err("search.max_concurrent must be at most 1024 (0: one per CPU core)".into());
        }
        Ok(())
    }
}

/// The files service (ARCHITECTURE §8 "Files"): clients move file bytes straight to and from an
/// S3-compatible object store through short-lived presigned URLs the origin hands out; the
/// origin keeps each file's metadata and decides who may have a URL.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Whether the files routes are served. Off, they answer `404` ("files are not enabled on
    /// this origin") and no object store is contacted. `selvage dev` turns it on.
    pub enabled: bool,
    /// The object store's endpoint URL (`http://127.0.0.1:7900` for s3local, a MinIO or
    /// Ceph URL, …). Unset: AWS S3's own endpoint for `region`. Clients must reach it too: it
    /// is the host of every presigned URL.
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
    /// The bucket holding every workspace's objects (under `ws/{W}/…`). It must exist: the
    /// origin checks it at start and refuses to start without it.
    pub bucket: String,
    /// Path-style URLs (`endpoint/bucket/key`) instead of virtual-hosted ones
    /// (`bucket.endpoint/key`); s3local and most self-hosted stores need it.
    pub path_style: bool,
    /// An explicit access key (dev and tests); set together with `secret_access_key`. Unset:
    /// AWS's standard credential chain (environment, profile, web identity, ECS, instance
    /// metadata).
    pub access_key_id: Option<String>,
    /// The secret of `access_key_id`.
    pub secret_access_key: Option<String>,
    /// How long an upload URL is valid, in seconds.
    pub upload_url_secs: u64,
    /// How long a download URL is valid, in seconds.
    pub download_url_secs: u64,
    /// Largest file, in bytes (a single PUT: S3 takes at most 5 GiB).
    pub max_bytes: u64,
    /// Bytes of files one workspace may hold, pending uploads included.
    pub workspace_quota_bytes: u64,
    /// Whether this node runs the thumbnail worker (the feed consumer `files-thumbs`; one node
    /// at a time holds it). Off, images get no new thumbnails; those made stay.
    pub thumbs: bool,
    /// The boxes thumbnails are made to fit, in pixels of the longer side, smallest first (1 to
    /// 4 sizes, each 16 to 4096). An image is never enlarged: sizes above its own longer side
    /// after the first that holds it whole are skipped.
    pub thumb_sizes: Vec<u32>,
    /// Largest image the worker fetches, in bytes; a larger one gets no thumbnail.
    pub thumb_max_source_bytes: u64,
    /// Widest and tallest image the worker decodes, in pixels; a larger one (a decompression
    /// bomb, or just too big) gets no thumbnail. Checked from the header, before decoding.
    pub thumb_max_side_px: u32,
    /// Most pixels (width × height) of an image the worker decodes.
    pub thumb_max_pixels: u64,
    /// Most memory a decoder may allocate for one image, in bytes (its pixels included).
    pub thumb_max_alloc_bytes: u64,
    /// Calls to the object store one node makes at once; more wait for a slot. Bounds the
    /// connections to the store and the memory they hold.
    pub store_concurrency: usize,
    /// Images one node decodes at once. Memory for thumbnails stays under about this many
    /// times `thumb_max_source_bytes + thumb_max_alloc_bytes`.
    pub thumb_concurrency: usize,
    /// An upload declared and never completed is removed this long after it was declared (its
    /// object deleted, its bytes back in the quota, the file `expired`) — never while its
    /// upload URL still works.
    pub pending_ttl_secs: u64,
    /// How often each node's sweeper looks for expired uploads and for deleted files' objects
    /// still in the bucket.
    pub sweep_interval_secs: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            enabled: false,
            endpoint: None,
            region: "us-east-1".into(),
            bucket: "selvage-files".into(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            upload_url_secs: 300,
            download_url_secs: 300,
            max_bytes: 100 * 1024 * 1024,
            workspace_quota_bytes: 10 * 1024 * 1024 * 1024,
            thumbs: true,
            thumb_sizes: vec![360, 1024],
            thumb_max_source_bytes: 50 * 1024 * 1024,
            thumb_max_side_px: 12_000,
            thumb_max_pixels: 50_000_000,
            thumb_max_alloc_bytes: 256 * 1024 * 1024,
            store_concurrency: 64,
            thumb_concurrency: 1,
            pending_ttl_secs: 24 * 3600,
            sweep_interval_secs: 60,
        }
    }
}

/// The secret stays out of logs and panics.
impl std::fmt::Debug for FilesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesConfig")
            .field("enabled", &self.enabled)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("upload_url_secs", &self.upload_url_secs)
            .field("download_url_secs", &self.download_url_secs)
            .field("max_bytes", &self.max_bytes)
            .field("workspace_quota_bytes", &self.workspace_quota_bytes)
            .field("thumbs", &self.thumbs)
            .field("thumb_sizes", &self.thumb_sizes)
            .field("thumb_max_source_bytes", &self.thumb_max_source_bytes)
            .field("thumb_max_side_px", &self.thumb_max_side_px)
            .field("thumb_max_pixels", &self.thumb_max_pixels)
            .field("thumb_max_alloc_bytes", &self.thumb_max_alloc_bytes)
            .field("store_concurrency", &self.store_concurrency)
            .field("thumb_concurrency", &self.thumb_concurrency)
            .field("pending_ttl_secs", &self.pending_ttl_secs)
            .field("sweep_interval_secs", &self.sweep_interval_secs)
            .finish()
    }
}

impl FilesConfig {
    /// Longest lifetime of a presigned URL SigV4 allows (7 days).
    pub const MAX_URL_SECS: u64 = 7 * 24 * 3600;
    /// Largest object one PUT may write to S3.
    pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
    /// Most thumbnail sizes.
    pub const MAX_THUMB_SIZES: usize = 4;

    /// Checks the files fields (see [`OriginConfig::validate`]); only when files are enabled.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(endpoint) = &self.endpoint {
            let rest = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
                return Err(format!("files.endpoint must be an http:// or https:// URL, not {endpoint:?}"));
            }
        }
        if self.region.trim().is_empty() {
            return Err("files.region must be set".into());
        }
        let b = self.bucket.as_bytes();
        if !(3..=63).contains(&b.len())
            || !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        {
            return Err("files.bucket must be an S3 bucket name (3 to 63 of a-z, 0-9, '-', '.')".into());
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err("files.access_key_id and files.secret_access_key must be set together (or neither, for \
                        AWS's credential chain)"
                .into());
        }
        for (name, secs) in [("upload_url_secs", self.upload_url_secs), ("download_url_secs", self.download_url_secs)] {
            if !(1..=Self::MAX_URL_SECS).contains(&secs) {
                return Err(format!("files.{name} must be between 1 and {}", Self::MAX_URL_SECS));
            }
        }
        if !(1..=Self::MAX_OBJECT_BYTES).contains(&self.max_bytes) {
            return Err(format!("files.max_bytes must be between 1 and {}", Self::MAX_OBJECT_BYTES));
        }
        if self.workspace_quota_bytes == 0 || self.workspace_quota_bytes > i64::MAX as u64 {
            return Err("files.workspace_quota_bytes must be > 0".into());
        }
        let sizes = &self.thumb_sizes;
        if sizes.is_empty()
            || sizes.len() > Self::MAX_THUMB_SIZES
            || sizes.iter().any(|s| !(16..=4096).contains(s))
            || sizes.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(format!(
                "files.thumb_sizes must be 1 to {} sizes between 16 and 4096, smallest first, each once",
                Self::MAX_THUMB_SIZES
            ));
        }
        if self.thumb_max_source_bytes == 0 || self.thumb_max_source_bytes > Self::MAX_OBJECT_BYTES {
            return Err(format!("files.thumb_max_source_bytes must be between 1 and {}", Self::MAX_OBJECT_BYTES));
        }
        if self.thumb_max_side_px == 0 || self.thumb_max_pixels == 0 {
            return Err("files.thumb_max_side_px and files.thumb_max_pixels must be > 0".into());
        }
        if self.thumb_max_alloc_bytes < 1024 * 1024 {
            return Err("files.thumb_max_alloc_bytes must be at least 1048576 (1 MiB)".into());
        }
        if !(1..=4096).contains(&self.store_concurrency) {
            return Err("files.store_concurrency must be between 1 and 4096".into());
        }
        if !(1..=16).contains(&self.thumb_concurrency) {
            return Err("files.thumb_concurrency must be between 1 and 16".into());
        }
        if self.pending_ttl_secs == 0 || self.pending_ttl_secs > i64::MAX as u64 / 1000 {
            return Err("files.pending_ttl_secs must be > 0".into());
        }
        if !(1..=86_400).contains(&self.sweep_interval_secs) {
            return Err("files.sweep_interval_secs must be between 1 and 86400".into());
        }
        Ok(())
    }
}

/// Storage engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// redb, one file under `data_dir`.
    Embedded,
    /// FoundationDB (needs a build with the `fdb` feature).
    Fdb,
}

/// Tuning of the embedded engine (ARCHITECTURE §2): commits go to the write-ahead log and an
/// in-memory memtable, which a background thread flushes into the redb file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// How often the memtable is flushed into the data file, in ms. Rarer flushes cost less per
    /// message across many channels; each one then runs longer beside request handling.
    pub flush_interval_ms: u64,
    /// MiB of memtable that start a flush before the interval is up (past four times this,
    /// commits wait for the flusher).
    pub memtable_mib: usize,
    /// Mutations in the memtable that start a flush before the interval is up.
    pub memtable_entries: usize,
    /// MiB of the data file's page cache.
    pub cache_mib: usize,
    /// MiB kept free on the data directory's disk (beyond twice what waits to be flushed):
    /// with less, sends are refused with `503 unavailable` and `/readyz` says why, until space
    /// is freed; they resume by themselves. 0 turns the check off.
    pub min_free_mib: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        let opts = crate::store::embedded::EmbeddedOptions::default();
        EmbeddedConfig {
            flush_interval_ms: opts.flush_interval.as_millis() as u64,
            memtable_mib: opts.memtable_bytes / (1024 * 1024),
            memtable_entries: opts.memtable_entries,
            cache_mib: opts.cache_bytes / (1024 * 1024),
            min_free_mib: opts.min_free_bytes / (1024 * 1024),
        }
    }
}

impl EmbeddedConfig {
    /// The engine's options with these settings.
    pub fn options(&self, fsync: bool) -> crate::store::embedded::EmbeddedOptions {
        crate::store::embedded::EmbeddedOptions {
            fsync,
            flush_interval: std::time::Duration::from_millis(self.flush_interval_ms),
            memtable_bytes: self.memtable_mib * 1024 * 1024,
            memtable_entries: self.memtable_entries,
            cache_bytes: self.cache_mib * 1024 * 1024,
            min_free_bytes: self.min_free_mib * 1024 * 1024,
            ..Default::default()
        }
    }
}

/// Tuning of the sequencer's group commit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequencerConfig {
    /// Independent committers on this node; every channel belongs to one of them (by a hash
    /// of its id), so a channel's order is one committer's, while committers for different
    /// channels build their groups in parallel. Their commits never conflict. 0 (the default)
    /// means one per two cores of this machine, at least one.
    pub shards: usize,
    /// Sends waiting for a commit (over all shards) before new ones are refused with
    /// `overloaded`.
    pub queue_capacity: usize,
    /// Most messages in one commit.
    pub max_batch_messages: usize,
    /// Most bytes of transaction in one commit, as the sequencer estimates each send (its text
    /// twice plus about 770 bytes, more per user it may mention): kept well under
    /// FoundationDB's 10 MB transaction. A group that still comes out over the limit is
    /// committed in halves.
    pub max_batch_bytes: usize,
    /// How long a send may wait in the queue, and then how long its group's commit may take,
    /// before the sender is told to retry, in milliseconds (so at most twice this in all).
    pub ack_timeout_ms: u64,
}

/// Retention of the feed log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// Events older than this are trimmed, in seconds.
    pub retention_secs: u64,
    /// The log is trimmed down to at most this many events.
    pub max_events: u64,
    /// How often the trimmer runs, in seconds.
    pub trim_interval_secs: u64,
    /// Longest `wait_ms` a long-poll of `/v1/events` may ask for.
    pub max_wait_ms: u64,
    /// While a registered consumer has not handled them, events are kept past `retention_secs`
    /// up to this age, in seconds; older ones are trimmed anyway and the consumer resyncs
    /// (ARCHITECTURE §8). At least `retention_secs`.
    pub consumer_hold_secs: u64,
    /// While a registered consumer has not handled them, the log keeps more than `max_events`,
    /// up to this many; beyond it the oldest are trimmed anyway and the consumer resyncs. At
    /// least `max_events`.
    pub consumer_hold_events: u64,
}

/// How feed consumers (ARCHITECTURE §8) run unless a service chooses otherwise.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumersConfig {
    /// Most events handed to a consumer's handler at once.
    pub batch_size: usize,
    /// How long a runner's lease on a consumer lasts unless renewed, in ms (it renews every
    /// third of it). A runner on another node takes a consumer over at most this long after
    /// its runner died; clocks of the nodes must agree to well within it.
    pub lease_ms: u64,
    /// First pause before a failed batch is retried, in ms; it doubles on each failure.
    pub retry_min_ms: u64,
    /// Longest pause between retries of a failing batch, in ms.
    pub retry_max_ms: u64,
    /// Worker threads of the runtime the services on the feed run on, apart from the one that
    /// serves the API and the sequencer; 0 runs them on that one.
    pub threads: usize,
    /// How much lower than the origin's the CPU priority of those threads is, as a nice
    /// increment (0–19; Linux): a busy machine serves the sequencer first and the consumers,
    /// which catch up from their cursors, with what is left.
    pub nice: i32,
}

impl Default for ConsumersConfig {
    fn default() -> Self {
        ConsumersConfig {
            batch_size: 256,
            lease_ms: 15_000,
            retry_min_ms: 100,
            retry_max_ms: 30_000,
            threads: 2,
            nice: 10,
        }
    }
}

impl ConsumersConfig {
    /// Checks the section's fields (see [`OriginConfig::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err("consumers.batch_size must be between 1 and 10000".into());
        }
        if self.lease_ms < 300 {
            return Err("consumers.lease_ms must be 300 or more".into());
        }
        if self.retry_min_ms == 0 || self.retry_max_ms < self.retry_min_ms {
            return Err("consumers.retry_min_ms must be > 0 and consumers.retry_max_ms at least as long".into());
        }
        if self.threads > 256 {
            return Err("consumers.threads must be 256 or fewer".into());
        }
        if !(0..=19).contains(&self.nice) {
            return Err("consumers.nice must be between 0 and 19".into());
        }
        Ok(())
    }
}

/// The origin ↔ edge link: a QUIC endpoint that edges tail the feed from and send calls to.
///
/// It runs only when [`LinkConfig::edge_key`] is set, since that key is what keeps strangers
/// off it. Without `cert_file`/`key_file` the origin makes a self-signed certificate at start
/// and prints its SHA-256 fingerprint for edges to pin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// UDP address of the QUIC link. Port 0 picks a free one (the origin prints it).
    pub listen: SocketAddr,
    /// The shared secret every edge presents (at least 16 characters). Unset leaves the link off.
    pub edge_key: Option<String>,
    /// While the link key is being rotated: the key being replaced, which edges may still
    /// present beside `edge_key` (docs/OPERATIONS.md, "Rotating the link key"). Each edge that
    /// links with it is logged, so an operator knows when every edge has the new one.
    pub previous_edge_key: Option<String>,
    /// PEM certificate chain for the link; set together with `key_file`, or neither for a
    /// self-signed certificate.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// DNS names and IP addresses the self-signed certificate is made for.
    pub names: Vec<String>,
    /// How long an edge's report of a user's sessions counts, in milliseconds, unless the edge
    /// renews it (edges renew every `sessions.presence_renew_ms`, which must be well below
    /// this). The users of an edge that stops reporting (a crash) go offline this long after
    /// its last report.
    pub presence_lease_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7701)),
            edge_key: None,
            previous_edge_key: None,
            cert_file: None,
            key_file: None,
            names: vec!["localhost".into(), "127.0.0.1".into()],
            presence_lease_ms: 30_000,
        }
    }
}

impl LinkConfig {
    /// Shortest accepted `edge_key`: long enough that guessing it over the network is hopeless.
    pub const MIN_EDGE_KEY_CHARS: usize = 16;

    /// Checks the link's fields (see [`OriginConfig::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(key) = &self.edge_key {
            if key.chars().count() < Self::MIN_EDGE_KEY_CHARS {
                return Err(format!("link.edge_key must be at least {} characters", Self::MIN_EDGE_KEY_CHARS));
            }
        }
        match (&self.edge_key, &self.previous_edge_key) {
            (None, Some(_)) => {
                return Err(
                    "link.previous_edge_key is set without link.edge_key: set the new key in link.edge_key".into()
                );
            }
            (Some(key), Some(previous)) if key == previous => {
                return Err("link.previous_edge_key equals link.edge_key: set the new key in link.edge_key".into());
            }
            (_, Some(previous)) if previous.chars().count() < Self::MIN_EDGE_KEY_CHARS => {
                return Err(format!("link.previous_edge_key must be at least {} characters", Self::MIN_EDGE_KEY_CHARS));
            }
            _ => {}
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "link.cert_file and link.key_file must be set together (or neither, for a self-signed certificate)"
                        .into(),
                );
            }
            (None, None) if self.names.is_empty() || self.names.iter().any(|n| n.trim().is_empty()) => {
                return Err("link.names must list at least one non-empty DNS name or IP address for the self-signed \
                            certificate"
                    .into());
            }
            _ => {}
        }
        if self.presence_lease_ms < 1000 {
            return Err("link.presence_lease_ms must be 1000 or more".into());
        }
        Ok(())
    }
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            store: StoreKind::Embedded,
            data_dir: PathBuf::from("selvage-data"),
            fsync: true,
            fdb_cluster_file: None,
            operator_key: None,
            max_body_bytes: 256 * 1024,
            token_ttl_secs: 0,
            embedded: EmbeddedConfig::default(),
            sequencer: SequencerConfig::default(),
            feed: FeedConfig::default(),
            link: LinkConfig::default(),
            consumers: ConsumersConfig::default(),
            files: FilesConfig::default(),
            search: SearchConfig::default(),
            notify: NotifyConfig::default(),
            apps: AppsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
        }
    }
}

impl SequencerConfig {
    /// The committers to run: `shards`, or for 0 one per two cores of this machine (at least
    /// one). On two cores one committer builds groups as fast as four and spends less CPU
    /// (docs/BENCHMARKS.md); more pay where there are cores to build groups in parallel.
    pub fn committers(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() / 2).clamp(1, 16),
            n => n,
        }
    }
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            shards: 0,
            queue_capacity: 100_000,
            max_batch_messages: 8_192,
            max_batch_bytes: 6 * 1024 * 1024,
            ack_timeout_ms: 10_000,
        }
    }
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            retention_secs: 7 * 24 * 3600,
            max_events: 50_000_000,
            trim_interval_secs: 60,
            max_wait_ms: 30_000,
            consumer_hold_secs: 30 * 24 * 3600,
            consumer_hold_events: 100_000_000,
        }
    }
}

impl OriginConfig {
    /// Checks the values that defaults and types cannot; the message says which field and why
    /// (the first of [`OriginConfig::problems`]).
    pub fn validate(&self) -> Result<(), String> {
        match self.problems().into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every problem [`OriginConfig::validate`] finds, for `selvage origin --check-config`:
    /// each top-level rule broken, and the first problem of each section.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = Vec::new();
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_string());
            }
        };
        check(
            self.store != StoreKind::Fdb || cfg!(feature = "fdb"),
            "store = \"fdb\" needs a selvage built with `--features fdb`",
        );
        check(
            self.store != StoreKind::Embedded || !self.data_dir.as_os_str().is_empty(),
            "data_dir must be set for the embedded store",
        );
        check(
            self.operator_key.as_ref().is_none_or(|key| key.len() >= 16),
            "operator_key must be at least 16 characters",
        );
        check(
            (1024..=64 * 1024 * 1024).contains(&self.max_body_bytes),
            "max_body_bytes must be between 1024 and 67108864",
        );
        let e = &self.embedded;
        check((10..=60_000).contains(&e.flush_interval_ms), "embedded.flush_interval_ms must be between 10 and 60000");
        check(
            (1..=16 * 1024).contains(&e.memtable_mib) && (1..=1024 * 1024).contains(&e.cache_mib),
            "embedded.memtable_mib must be 1 to 16384 and embedded.cache_mib 1 to 1048576",
        );
        check(
            (1000..=100_000_000).contains(&e.memtable_entries),
            "embedded.memtable_entries must be between 1000 and 100000000",
        );
        let s = &self.sequencer;
        check(
            s.queue_capacity > 0 && s.max_batch_messages > 0,
            "sequencer.queue_capacity and sequencer.max_batch_messages must be > 0",
        );
        check(s.shards <= 64, "sequencer.shards must be between 0 (one per two cores) and 64");
        check(
            s.max_batch_messages <= u16::MAX as usize,
            &format!("sequencer.max_batch_messages must be at most {}", u16::MAX),
        );
        check(
            (64 * 1024..=8 * 1024 * 1024).contains(&s.max_batch_bytes),
            "sequencer.max_batch_bytes must be between 65536 and 8388608 (FoundationDB allows 10 MB per transaction)",
        );
        check(s.ack_timeout_ms > 0, "sequencer.ack_timeout_ms must be > 0");
        let f = &self.feed;
        check(
            f.retention_secs > 0 && f.max_events > 0 && f.trim_interval_secs > 0,
            "feed.retention_secs, feed.max_events and feed.trim_interval_secs must be > 0",
        );
        check(
            f.consumer_hold_secs >= f.retention_secs && f.consumer_hold_events >= f.max_events,
            "feed.consumer_hold_secs must be at least feed.retention_secs and feed.consumer_hold_events at least \
             feed.max_events",
        );
        let sections = [
            self.consumers.validate(),
            self.link.validate(),
            self.search.validate(),
            self.notify.validate(),
            self.apps.validate(),
            self.rate_limits.validate(),
            self.files.validate(),
        ];
        problems.extend(sections.into_iter().filter_map(Result::err));
        problems
    }

    /// What [`crate::start`] would refuse beyond [`OriginConfig::problems`], found without
    /// binding a port, opening the store or calling anything on the network: the data
    /// directory cannot be made or written, the link's certificate and key files (given, or
    /// kept in `data_dir`) do not load, the FoundationDB cluster file cannot be read, the
    /// push proxy's URL or the SMTP server's URL or sender is refused. Not checked: whether
    /// the ports are free, whether another origin holds the store, whether the files bucket
    /// exists and the push proxy and SMTP server answer.
    pub fn start_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.store {
            StoreKind::Embedded if !self.data_dir.as_os_str().is_empty() => {
                if let Err(e) = check_writable_dir(&self.data_dir) {
                    problems.push(format!("data_dir {}: {e}", self.data_dir.display()));
                }
            }
            StoreKind::Fdb => {
                if let Some(file) = &self.fdb_cluster_file {
                    if let Err(e) = std::fs::read(file) {
                        problems.push(format!("fdb_cluster_file {}: cannot read it: {e}", file.display()));
                    }
                }
            }
            StoreKind::Embedded => {}
        }
        if self.link.edge_key.is_some() {
            let kept = (self.data_dir.join("link-cert.pem"), self.data_dir.join("link-key.pem"));
            let (cert, key, what) = match (&self.link.cert_file, &self.link.key_file) {
                (Some(cert), Some(key)) => (cert.clone(), key.clone(), "link.cert_file and link.key_file"),
                _ => (kept.0, kept.1, "the link certificate kept in data_dir"),
            };
            // The self-signed certificate is made at the first start: only one already kept is read.
            let given = self.link.cert_file.is_some() && self.link.key_file.is_some();
            if given || (cert.exists() && key.exists()) {
                if let Err(e) = selvage_net::tls::Identity::from_pem_files(&cert, &key) {
                    problems.push(format!("{what}: {e}"));
                }
            }
        }
        if self.notify.enabled {
            let n = &self.notify;
            if !n.push_proxy_url.is_empty() {
                if let Err(e) = crate::outbound::check_url(&n.push_proxy_url, &n.allow_internal_endpoints.into()) {
                    problems.push(format!("notify.push_proxy_url: {e}"));
                }
            }
            if !n.smtp_url.is_empty() {
                if let Err(e) = crate::notify::email::transport(n) {
                    problems.push(e);
                }
                if let Err(e) = crate::notify::email::parse_from(&n.email_from) {
                    problems.push(e);
                }
            }
        }
        problems
    }
}

/// Whether the origin could make `dir` (as `create_dir_all` would) and write in it: `dir`, or
/// the nearest of its parents that exists, is a directory this process may write to.
fn check_writable_dir(dir: &std::path::Path) -> Result<(), String> {
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) if !meta.is_dir() => return Err(format!("{} is not a directory", at.display())),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                // A relative path with no parent left: the working directory decides.
                Some(_) if at != std::path::Path::new(".") => at = std::path::Path::new("."),
                _ => return Err(format!("cannot read {}: {e}", at.display())),
            },
            Err(e) => return Err(format!("cannot read {}: {e}", at.display())),
        }
    }
    writable(at).map_err(|e| format!("cannot write in {}: {e}", at.display()))
}

/// Whether this process may create files in the directory `dir` (access(2) with `W_OK`).
#[cfg(unix)]
fn writable(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: access only reads the NUL-terminated path, which outlives the call.
    match unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(unix))]
fn writable(_dir: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        OriginConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn bad_values_are_named() {
        let c = OriginConfig { operator_key: Some("short".into()), ..Default::default() };
        assert!(c.validate().unwrap_err().contains("operator_key"));
        let mut c = OriginConfig::default();
        c.sequencer.max_batch_bytes = 100 * 1024 * 1024;
        assert!(c.validate().unwrap_err().contains("max_batch_bytes"));
    }

    #[test]
    fn consumer_settings_are_checked() {
        let mut c = OriginConfig::default();
        c.feed.consumer_hold_events = c.feed.max_events - 1;
        assert!(c.validate().unwrap_err().contains("feed.consumer_hold_events"));
        let mut c = OriginConfig::default();
        c.feed.consumer_hold_secs = c.feed.retention_secs - 1;
        assert!(c.validate().unwrap_err().contains("feed.consumer_hold_secs"));
        let mut c = OriginConfig::default();
        c.consumers.batch_size = 0;
        assert!(c.validate().unwrap_err().contains("consumers.batch_size"));
        let mut c = OriginConfig::default();
        c.consumers.retry_max_ms = c.consumers.retry_min_ms - 1;
        assert!(c.validate().unwrap_err().contains("consumers.retry_max_ms"));
    }

    #[test]
    fn files_settings_are_checked_when_enabled() {
        let mut c = OriginConfig::default();
        c.files.bucket = "No_Such Bucket".into();
        c.validate().expect("disabled files are not checked");
        c.files.enabled = true;
        assert!(c.validate().unwrap_err().contains("files.bucket"));
        c.files.bucket = "selvage-files".into();
        c.validate().expect("the defaults validate once enabled");
        c.files.access_key_id = Some("key".into());
        assert!(c.validate().unwrap_err().contains("files.secret_access_key"));
        c.files.secret_access_key = Some("secret".into());
        c.files.endpoint = Some("ftp://x".into());
        assert!(c.validate().unwrap_err().contains("files.endpoint"));
        c.files.endpoint = Some("http://127.0.0.1:7900".into());
        c.files.upload_url_secs = 0;
        assert!(c.validate().unwrap_err().contains("files.upload_url_secs"));
        c.files.upload_url_secs = 300;
        c.validate().expect("valid again");
        assert!(!format!("{c:?}").contains("secret\""), "the secret is not in Debug output");
        for sizes in [vec![], vec![1024, 360], vec![360, 360], vec![8], vec![16, 32, 64, 128, 256]] {
            c.files.thumb_sizes = sizes.clone();
            assert!(c.validate().unwrap_err().contains("files.thumb_sizes"), "{sizes:?}");
        }
        c.files.thumb_sizes = vec![64];
        c.files.store_concurrency = 0;
        assert!(c.validate().unwrap_err().contains("files.store_concurrency"));
        c.files.store_concurrency = 64;
        c.files.thumb_concurrency = 0;
        assert!(c.validate().unwrap_err().contains("files.thumb_concurrency"));
        c.files.thumb_concurrency = 2;
        c.files.pending_ttl_secs = 0;
        assert!(c.validate().unwrap_err().contains("files.pending_ttl_secs"));
        c.files.pending_ttl_secs = 1;
        c.files.thumb_max_alloc_bytes = 1000;
        assert!(c.validate().unwrap_err().contains("files.thumb_max_alloc_bytes"));
        c.files.thumb_max_alloc_bytes = 64 * 1024 * 1024;
        c.validate().expect("valid again");
    }

    #[test]
    fn link_settings_are_checked() {
        let mut c = OriginConfig::default();
        c.link.edge_key = Some("short".into());
        assert!(c.validate().unwrap_err().contains("link.edge_key"));
        c.link.edge_key = Some("a-long-enough-edge-key".into());
        c.link.previous_edge_key = Some("a-long-enough-edge-key".into());
        assert!(c.validate().unwrap_err().contains("link.previous_edge_key equals"));
        c.link.previous_edge_key = Some("short".into());
        assert!(c.validate().unwrap_err().contains("link.previous_edge_key must be at least"));
        c.link.previous_edge_key = Some("the-key-being-replaced".into());
        assert!(c.validate().is_ok());
        c.link.edge_key = None;
        assert!(c.validate().unwrap_err().contains("without link.edge_key"));
        c.link.edge_key = Some("a-long-enough-edge-key".into());
        c.link.previous_edge_key = None;
        c.validate().expect("a long key validates");
        c.link.cert_file = Some("cert.pem".into());
        assert!(c.validate().unwrap_err().contains("link.key_file"));
        c.link.key_file = Some("key.pem".into());
        c.validate().expect("both files validate");
        c.link.cert_file = None;
        c.link.key_file = None;
        c.link.names.clear();
        assert!(c.validate().unwrap_err().contains("link.names"));
    }
}
