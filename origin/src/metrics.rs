//! Prometheus metrics of an origin node, rendered on `/metrics`.
//!
//! One registry per [`crate::Origin`] (not the global default), so several origins in one test
//! process keep separate counts.

use std::{path::PathBuf, sync::OnceLock};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The origin's metrics.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route template, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by route template.
    pub http_latency: HistogramVec,
    /// Sends waiting in the sequencer's queue.
    pub queue_depth: IntGauge,
    /// Messages per group commit.
    pub batch_size: Histogram,
    /// Time to commit one group, seconds.
    pub commit_latency: Histogram,
    /// Messages durably committed.
    pub messages_committed: IntCounter,
    /// Retried sends answered from the dedup index.
    pub duplicates: IntCounter,
    /// Sends refused because the queue was full.
    pub overloaded: IntCounter,
    /// Sends told to retry because their commit did not come in `sequencer.ack_timeout_ms`.
    pub ack_timeouts: IntCounter,
    /// Group commits that failed and were retried, by reason.
    pub commit_retries: IntCounterVec,
    /// Feed events removed by the trimmer.
    pub feed_trimmed: IntCounter,
    /// Long-polls of `/v1/events` waiting right now.
    pub feed_waiters: IntGauge,
    /// Calls edges made over the link, by call (`authenticate`, `snapshot`, `send`, `history`,
    /// `events`, `invalid`).
    pub link_calls: IntCounterVec,
    /// Link streams open now, by kind (`feed`, `calls`).
    pub link_streams: IntGaugeVec,
    /// Feed events streamed to edges over the link.
    pub link_feed_events: IntCounter,
    /// Edge connections to the link open now.
    pub link_connections: IntGauge,
    /// Link streams refused (wrong edge key or protocol, unreadable first frame).
    pub link_refused: IntCounter,
    /// Ephemeral events (typing, presence) a lagging feed stream skipped.
    pub link_relay_dropped: IntCounter,
    /// Feed events handled by each consumer (ARCHITECTURE §8), by consumer name.
    pub consumer_events: IntCounterVec,
    /// Batches a consumer failed to handle (and retried), by consumer name.
    pub consumer_batches_failed: IntCounterVec,
    /// How far behind the log each consumer is, in seconds: the age of the oldest event it has
    /// read but not handled yet, 0 when caught up. By consumer name.
    pub consumer_lag_seconds: GaugeVec,
    /// Times a consumer's cursor was trimmed past and it jumped to the trim point, by consumer.
    pub consumer_resyncs: IntCounterVec,
    /// 1 while a runner on this node holds the consumer's lease (and so runs it), by consumer.
    pub consumer_lease_held: IntGaugeVec,
    /// Calls to the files service's object store, by operation and outcome (`ok`, `error`).
    pub object_store_calls: IntCounterVec,
    /// Object-store call latency by operation, seconds.
    pub object_store_latency: HistogramVec,
    /// Object-store calls in flight now, and those waiting for a slot (`files.store_concurrency`).
    pub object_store_in_flight: IntGaugeVec,
    /// Files by what happened to them: `declared`, `completed`, `rejected` (the upload was not
    /// what was declared), `deleted`, `expired` (never completed).
    pub files: IntCounterVec,
    /// Bytes of the files completed.
    pub file_bytes_completed: IntCounter,
    /// Images the thumbnail worker handled, by outcome (`made`, `refused`, `gone`).
    pub thumbnails: IntCounterVec,
    /// Time to make one image's thumbnails (read, decode, scale, encode, upload), seconds.
    pub thumbnail_seconds: Histogram,
    /// Searches by outcome (`ok`, `bad_request`, `error`).
    pub search_queries: IntCounterVec,
    /// Time to answer a search, seconds (a wait for `after` included).
    pub search_query_seconds: Histogram,
    /// Messages in the search index, as of its last commit.
    pub search_index_documents: IntGauge,
    /// Feed events the search index has not taken in yet (measured up to 10,000).
    pub search_index_lag_events: IntGauge,
    /// Age of the oldest feed event the search index has not taken in, seconds; 0 when caught
    /// up.
    pub search_index_lag_seconds: Gauge,
    /// Rebuilds of the search index from the store, by reason (`trimmed`: the feed no longer
    /// holds events the index misses; `requested`: `selvage admin reindex`).
    pub search_index_rebuilds: IntCounterVec,
    /// Feed events indexed again because the index had lost them (uncommitted work lost in a
    /// crash, or an index directory older than the consumer's cursor).
    pub search_index_replayed_events: IntCounter,
    /// Commits of the search index.
    pub search_index_commits: IntCounter,
    /// (user, message) pairs the consumer `notify` found may notify, written as pending.
    pub notify_pending: IntCounter,
    /// Notifications by outcome: `delivered`, `read` (read before it was due), `active` (the
    /// user was using a session), `muted` (preferences changed), `gone` (message deleted or
    /// membership lost), `no_target` (no subscription, no proxy), `failed` (gave up).
    pub notify_outcomes: IntCounterVec,
    /// Deliveries to one target (`webpush`, `proxy`) by result: `ok`, `retry` (to be tried
    /// again), `rejected` (refused for good), `expired` (a subscription the push service no
    /// longer knows: removed).
    pub notify_deliveries: IntCounterVec,
    /// From a message being posted to its notification accepted by a push service (s).
    pub notify_latency_seconds: Histogram,
    /// Email digests by outcome: `sent`, `read` (everything in it read before it was due),
    /// `gone` (user deactivated, messages deleted, memberships lost), `email_off` (turned off
    /// or no address), `failed` (the SMTP server refused it for good, or tries ran out).
    pub notify_digests: IntCounterVec,
    /// Event webhook delivery tries by outcome: `delivered` (a `2xx`), `retry` (a failed try;
    /// the endpoint waits, and is disabled once it has failed for a day).
    pub webhook_deliveries: IntCounterVec,
    /// From an event committed to its webhook delivered (s).
    pub webhook_latency_seconds: Histogram,
    /// Events written for delivery to webhook endpoints by the consumer `hooks`.
    pub webhook_queued: IntCounter,
    /// Slash commands run, by outcome: `in_channel`, `ephemeral`, `deferred` (the app's
    /// answer), `failed` (no answer in time, or a failure), `unknown` (no such command).
    pub commands: IntCounterVec,
    /// Requests and frames refused for going over their token's rate, by class (`read`,
    /// `write`, `typing`, `webhook`…).
    pub rate_limited: IntCounterVec,
    /// `sequencer.queue_capacity`: sends past it are refused (`overloaded`).
    pub queue_capacity: IntGauge,
    /// Bytes an unprivileged process may still write on the data directory's disk, read at
    /// every scrape.
    pub data_dir_free_bytes: IntGauge,
    /// Size of the data directory's filesystem, bytes.
    pub data_dir_size_bytes: IntGauge,
    /// `embedded.min_free_mib` in bytes: below it (plus twice what waits to be flushed) the
    /// embedded store refuses commits. 0 with the check off or another engine.
    pub data_dir_min_free_bytes: IntGauge,
    /// The data directory whose disk [`Metrics::render`] reports, set by
    /// [`Metrics::configured`].
    data_dir: OnceLock<PathBuf>,
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    // Names and help strings are constants of this module, so the options are always valid.
    #[allow(clippy::expect_used)]
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram options")
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency_buckets =
            vec![0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        // Calls that leave the process (the object store) and image work take longer.
        let search_buckets = latency_buckets.clone();
        let slow_buckets = vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        // Every metric below is created from constant, valid options and registered once in a
        // fresh registry, so none of these calls can fail.
        #[allow(clippy::expect_used)]
        let m = Metrics {
            http_requests: IntCounterVec::new(
                Opts::new("selvage_http_requests_total", "HTTP requests by route, method and status"),
                &["route", "method", "status"],
            )
            .expect("valid counter"),
            http_latency: HistogramVec::new(
                HistogramOpts::new("selvage_http_request_seconds", "HTTP request latency by route")
                    .buckets(latency_buckets.clone()),
                &["route"],
            )
            .expect("valid histogram"),
            queue_depth: IntGauge::new("selvage_sequencer_queue_depth", "Sends waiting for a group commit")
                .expect("valid gauge"),
            batch_size: histogram(
                "selvage_sequencer_batch_messages",
                "Messages per group commit",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0],
            ),
            commit_latency: histogram(
                "selvage_sequencer_commit_seconds",
                "Time to commit one group of messages",
                latency_buckets,
            ),
            messages_committed: IntCounter::new("selvage_sequencer_messages_total", "Messages durably committed")
                .expect("valid counter"),
            duplicates: IntCounter::new(
                "selvage_sequencer_duplicates_total",
                "Retried sends answered with the seq they already had",
            )
            .expect("valid counter"),
            overloaded: IntCounter::new(
                "selvage_sequencer_overloaded_total",
                "Sends refused because the sequencer queue was full",
            )
            .expect("valid counter"),
            ack_timeouts: IntCounter::new(
                "selvage_sequencer_ack_timeouts_total",
                "Sends told to retry because their commit did not come within sequencer.ack_timeout_ms",
            )
            .expect("valid counter"),
            commit_retries: IntCounterVec::new(
                Opts::new("selvage_sequencer_commit_retries_total", "Group commits retried, by reason"),
                &["reason"],
            )
            .expect("valid counter"),
            feed_trimmed: IntCounter::new("selvage_feed_trimmed_total", "Feed events removed by the trimmer")
                .expect("valid counter"),
            feed_waiters: IntGauge::new("selvage_feed_waiters", "Long-polls of /v1/events waiting now")
                .expect("valid gauge"),
            link_calls: IntCounterVec::new(
                Opts::new("selvage_link_calls_total", "Calls edges made over the link"),
                &["call"],
            )
            .expect("valid counter"),
            link_streams: IntGaugeVec::new(
                Opts::new("selvage_link_streams", "Link streams open now, by kind"),
                &["kind"],
            )
            .expect("valid gauge"),
            link_feed_events: IntCounter::new("selvage_link_feed_events_total", "Feed events streamed to edges")
                .expect("valid counter"),
            link_connections: IntGauge::new("selvage_link_connections", "Edge connections to the link open now")
                .expect("valid gauge"),
            link_refused: IntCounter::new(
                "selvage_link_refused_total",
                "Link streams refused (wrong edge key or protocol, unreadable first frame)",
            )
            .expect("valid counter"),
            link_relay_dropped: IntCounter::new(
                "selvage_link_relay_dropped_total",
                "Ephemeral events (typing, presence) a lagging edge feed stream skipped",
            )
            .expect("valid counter"),
            consumer_events: IntCounterVec::new(
                Opts::new("selvage_consumer_events_total", "Feed events handled by a consumer"),
                &["consumer"],
            )
            .expect("valid counter"),
            consumer_batches_failed: IntCounterVec::new(
                Opts::new("selvage_consumer_batches_failed_total", "Batches a consumer failed to handle and retried"),
                &["consumer"],
            )
            .expect("valid counter"),
            consumer_lag_seconds: GaugeVec::new(
                Opts::new(
                    "selvage_consumer_lag_seconds",
                    "Age of the oldest event a consumer has read and not handled yet, 0 when caught up",
                ),
                &["consumer"],
            )
            .expect("valid gauge"),
            consumer_resyncs: IntCounterVec::new(
                Opts::new(
                    "selvage_consumer_resyncs_total",
                    "Times a consumer's cursor was trimmed past and it jumped to the trim point",
                ),
                &["consumer"],
            )
            .expect("valid counter"),
            consumer_lease_held: IntGaugeVec::new(
                Opts::new("selvage_consumer_lease_held", "1 while a runner on this node holds the consumer's lease"),
                &["consumer"],
            )
            .expect("valid gauge"),
            object_store_calls: IntCounterVec::new(
                Opts::new(
                    "selvage_object_store_calls_total",
                    "Calls to the files object store, by operation and outcome",
                ),
                &["op", "outcome"],
            )
            .expect("valid counter"),
            object_store_latency: HistogramVec::new(
                HistogramOpts::new("selvage_object_store_seconds", "Object-store call latency by operation")
                    .buckets(slow_buckets.clone()),
                &["op"],
            )
            .expect("valid histogram"),
            object_store_in_flight: IntGaugeVec::new(
                Opts::new(
                    "selvage_object_store_calls",
                    "Object-store calls now: running, or waiting for one of files.store_concurrency slots",
                ),
                &["state"],
            )
            .expect("valid gauge"),
            files: IntCounterVec::new(
                Opts::new(
                    "selvage_files_total",
                    "Files declared, completed, rejected (not the upload declared), deleted and expired",
                ),
                &["event"],
            )
            .expect("valid counter"),
            file_bytes_completed: IntCounter::new(
                "selvage_files_completed_bytes_total",
                "Bytes of the files completed",
            )
            .expect("valid counter"),
            thumbnails: IntCounterVec::new(
                Opts::new("selvage_file_thumbnails_total", "Images the thumbnail worker handled, by outcome"),
                &["outcome"],
            )
            .expect("valid counter"),
            thumbnail_seconds: histogram(
                "selvage_file_thumbnail_seconds",
                "Time to make one image's thumbnails: read, decode, scale, encode, upload",
                slow_buckets,
            ),
            search_queries: IntCounterVec::new(
                Opts::new("selvage_search_queries_total", "Searches by outcome (ok, bad_request, error)"),
                &["outcome"],
            )
            .expect("valid counter"),
            search_query_seconds: histogram(
                "selvage_search_query_seconds",
                "Time to answer a search, a wait for `after` included",
                search_buckets,
            ),
            search_index_documents: IntGauge::new(
                "selvage_search_index_documents",
                "Messages in the search index as of its last commit",
            )
            .expect("valid gauge"),
            search_index_lag_events: IntGauge::new(
                "selvage_search_index_lag_events",
                "Feed events the search index has not taken in yet (measured up to 10000)",
            )
            .expect("valid gauge"),
            search_index_lag_seconds: Gauge::new(
                "selvage_search_index_lag_seconds",
                "Age of the oldest feed event the search index has not taken in; 0 when caught up",
            )
            .expect("valid gauge"),
            search_index_rebuilds: IntCounterVec::new(
                Opts::new(
                    "selvage_search_index_rebuilds_total",
                    "Rebuilds of the search index from the store by reason (trimmed, requested)",
                ),
                &["reason"],
            )
            .expect("valid counter"),
            search_index_replayed_events: IntCounter::new(
                "selvage_search_index_replayed_events_total",
                "Feed events indexed again because the index had lost them (e.g. uncommitted work lost in a crash)",
            )
            .expect("valid counter"),
            search_index_commits: IntCounter::new("selvage_search_index_commits_total", "Commits of the search index")
                .expect("valid counter"),
            notify_pending: IntCounter::new(
                "selvage_notify_pending_total",
                "(user, message) pairs that may notify, written as pending by the consumer notify",
            )
            .expect("valid counter"),
            notify_outcomes: IntCounterVec::new(
                Opts::new("selvage_notify_outcomes_total", "Notifications by outcome"),
                &["outcome"],
            )
            .expect("valid counter"),
            notify_deliveries: IntCounterVec::new(
                Opts::new("selvage_notify_deliveries_total", "Deliveries to one target by result"),
                &["target", "result"],
            )
            .expect("valid counter"),
            notify_latency_seconds: histogram(
                "selvage_notify_latency_seconds",
                "From a message posted to its notification accepted by a push service",
                vec![1.0, 2.0, 5.0, 10.0, 11.0, 12.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0],
            ),
            notify_digests: IntCounterVec::new(
                Opts::new("selvage_notify_digests_total", "Email digests by outcome"),
                &["outcome"],
            )
            .expect("valid counter"),
            webhook_deliveries: IntCounterVec::new(
                Opts::new("selvage_webhook_deliveries_total", "Event webhook delivery tries by outcome"),
                &["outcome"],
            )
            .expect("valid counter"),
            webhook_latency_seconds: histogram(
                "selvage_webhook_latency_seconds",
                "From an event committed to its webhook delivered",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3600.0],
            ),
            webhook_queued: IntCounter::new(
                "selvage_webhook_queued_total",
                "Events written for delivery to webhook endpoints by the consumer hooks",
            )
            .expect("valid counter"),
            commands: IntCounterVec::new(
                Opts::new("selvage_commands_total", "Slash commands run, by outcome"),
                &["outcome"],
            )
            .expect("valid counter"),
            rate_limited: IntCounterVec::new(
                Opts::new("selvage_rate_limited_total", "Requests refused for going over their token's rate, by class"),
                &["class"],
            )
            .expect("valid counter"),
            queue_capacity: IntGauge::new(
                "selvage_sequencer_queue_capacity",
                "Sends the sequencer's queue holds before new ones are refused (sequencer.queue_capacity)",
            )
            .expect("valid gauge"),
            data_dir_free_bytes: IntGauge::new(
                "selvage_data_dir_free_bytes",
                "Bytes the origin may still write on its data directory's disk",
            )
            .expect("valid gauge"),
            data_dir_size_bytes: IntGauge::new("selvage_data_dir_size_bytes", "Size of the data directory's disk")
                .expect("valid gauge"),
            data_dir_min_free_bytes: IntGauge::new(
                "selvage_data_dir_min_free_bytes",
                "Free space the embedded store keeps on its disk (embedded.min_free_mib): commits are refused below it",
            )
            .expect("valid gauge"),
            data_dir: OnceLock::new(),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 52] = [
            Box::new(m.http_requests.clone()),
            Box::new(m.http_latency.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.commit_latency.clone()),
            Box::new(m.messages_committed.clone()),
            Box::new(m.duplicates.clone()),
            Box::new(m.overloaded.clone()),
            Box::new(m.ack_timeouts.clone()),
            Box::new(m.commit_retries.clone()),
            Box::new(m.feed_trimmed.clone()),
            Box::new(m.feed_waiters.clone()),
            Box::new(m.link_calls.clone()),
            Box::new(m.link_streams.clone()),
            Box::new(m.link_feed_events.clone()),
            Box::new(m.link_connections.clone()),
            Box::new(m.link_refused.clone()),
            Box::new(m.link_relay_dropped.clone()),
            Box::new(m.consumer_events.clone()),
            Box::new(m.consumer_batches_failed.clone()),
            Box::new(m.consumer_lag_seconds.clone()),
            Box::new(m.consumer_resyncs.clone()),
            Box::new(m.consumer_lease_held.clone()),
            Box::new(m.object_store_calls.clone()),
            Box::new(m.object_store_latency.clone()),
            Box::new(m.object_store_in_flight.clone()),
            Box::new(m.files.clone()),
            Box::new(m.file_bytes_completed.clone()),
            Box::new(m.thumbnails.clone()),
            Box::new(m.thumbnail_seconds.clone()),
            Box::new(m.search_queries.clone()),
            Box::new(m.search_query_seconds.clone()),
            Box::new(m.search_index_documents.clone()),
            Box::new(m.search_index_lag_events.clone()),
            Box::new(m.search_index_lag_seconds.clone()),
            Box::new(m.search_index_rebuilds.clone()),
            Box::new(m.search_index_replayed_events.clone()),
            Box::new(m.search_index_commits.clone()),
            Box::new(m.notify_pending.clone()),
            Box::new(m.notify_outcomes.clone()),
            Box::new(m.notify_deliveries.clone()),
            Box::new(m.notify_latency_seconds.clone()),
            Box::new(m.notify_digests.clone()),
            Box::new(m.webhook_deliveries.clone()),
            Box::new(m.webhook_latency_seconds.clone()),
            Box::new(m.webhook_queued.clone()),
            Box::new(m.commands.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.queue_capacity.clone()),
            Box::new(m.data_dir_free_bytes.clone()),
            Box::new(m.data_dir_size_bytes.clone()),
            Box::new(m.data_dir_min_free_bytes.clone()),
        ];
        for c in collectors {
            // Names are distinct constants, so registration cannot collide.
            #[allow(clippy::expect_used)]
            m.registry.register(c).expect("metric names are unique");
        }
        // The process's own resident memory, CPU time and open descriptors (the benchmarks in
        // docs/BENCHMARKS.md read them). Several nodes in one process each report the same
        // process, which is right: it is the process they share.
        #[cfg(target_os = "linux")]
        if let Err(e) = m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())) {
            tracing::warn!(error = %e, "cannot register the process metrics");
        }
        // Show every link call and stream kind from the start, at 0: "no calls" is then a line
        // that reads 0, not a missing series.
        for call in ["authenticate", "snapshot", "send", "history", "search", "events", "invalid"] {
            m.link_calls.with_label_values(&[call]);
        }
        for kind in ["feed", "calls"] {
            m.link_streams.with_label_values(&[kind]);
        }
        for state in ["running", "waiting"] {
            m.object_store_in_flight.with_label_values(&[state]);
        }
        // Likewise every outcome the dashboards and alerts (infra/) ask for.
        for event in ["declared", "completed", "rejected", "deleted", "expired"] {
            m.files.with_label_values(&[event]);
        }
        for outcome in ["made", "refused", "gone"] {
            m.thumbnails.with_label_values(&[outcome]);
        }
        for outcome in ["ok", "bad_request", "error"] {
            m.search_queries.with_label_values(&[outcome]);
        }
        for outcome in ["delivered", "read", "active", "muted", "gone", "no_target", "failed"] {
            m.notify_outcomes.with_label_values(&[outcome]);
        }
        for target in ["webpush", "proxy", "email"] {
            for result in ["ok", "retry", "rejected"] {
                m.notify_deliveries.with_label_values(&[target, result]);
            }
        }
        for outcome in ["delivered", "retry"] {
            m.webhook_deliveries.with_label_values(&[outcome]);
        }
        for outcome in ["in_channel", "ephemeral", "deferred", "failed", "unknown"] {
            m.commands.with_label_values(&[outcome]);
        }
        m.commit_retries.with_label_values(&["conflict_or_unknown"]);
        m
    }

    /// Notes what the node's configuration says the metrics are measured against: the
    /// sequencer's queue capacity, and the data directory whose disk every scrape reports.
    pub fn configured(&self, config: &crate::config::OriginConfig) {
        self.queue_capacity.set(i64::try_from(config.sequencer.queue_capacity).unwrap_or(i64::MAX));
        let min_free = match config.store {
            crate::config::StoreKind::Embedded => config.embedded.min_free_mib.saturating_mul(1 << 20),
            crate::config::StoreKind::Fdb => 0,
        };
        self.data_dir_min_free_bytes.set(i64::try_from(min_free).unwrap_or(i64::MAX));
        let _ = self.data_dir.set(config.data_dir.clone());
    }

    /// Shows a feed consumer's series at 0 from its start: "no failures" is then a line that
    /// reads 0, not a missing series.
    pub fn consumer_started(&self, name: &str) {
        self.consumer_events.with_label_values(&[name]);
        self.consumer_batches_failed.with_label_values(&[name]);
        self.consumer_lag_seconds.with_label_values(&[name]);
        self.consumer_resyncs.with_label_values(&[name]);
        self.consumer_lease_held.with_label_values(&[name]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some((free, size)) = self.data_dir.get().and_then(|dir| crate::store::embedded::disk_space(dir).ok()) {
            self.data_dir_free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
            self.data_dir_size_bytes.set(i64::try_from(size).unwrap_or(i64::MAX));
        }
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
