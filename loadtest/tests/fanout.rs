//! A tiny end-to-end run of `selvage loadtest fanout --in-process`: a real origin and edge in
//! this process, five subscribers over WebSocket, and the scenario's own correctness check.

use std::time::Duration;

use selvage_loadtest::deployment::DeploymentArgs;
use selvage_loadtest::fanout::{self, ClientKind, FanoutArgs};
use selvage_loadtest::lean::WireFormat;

fn args(client: ClientKind, format: WireFormat, rate: Option<u64>) -> FanoutArgs {
    FanoutArgs {
        deployment: DeploymentArgs {
            in_process: true,
            origin: None,
            edge: None,
            operator_key: None,
            seed_concurrency: 8,
        },
        subscribers: 5,
        format,
        client,
        publishers: 2,
        senders: 4,
        rate,
        max_in_flight: 64,
        duration: Duration::from_secs(1),
        text_bytes: 32,
        drain_timeout: Duration::from_secs(10),
        json: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_acked_message_once_in_order() {
    for (client, format, rate) in [
        (ClientKind::Lean, WireFormat::Msgpack, None),
        (ClientKind::Lean, WireFormat::Json, Some(200)),
        (ClientKind::Sdk, WireFormat::Msgpack, None),
    ] {
        let report = fanout::measure(&args(client, format, rate)).await.unwrap();
        let what = format!("{client:?} {format:?} {rate:?}");
        assert!(report.acked > 0, "{what}: {report:?}");
        assert!(!report.violations.any(), "{what}: {:?}", report.violations);
        assert!(report.errors.is_empty(), "{what}: {:?}", report.errors);
        assert!(report.deliveries > 0, "{what}: {report:?}");
        assert!(report.deliveries <= report.acked * 5 + 5 * 2, "{what}: no more deliveries than sends × subscribers");
        assert!(report.delivery_latency.count > 0, "{what}");
        // Every delivery's latency reached the report (the drain may add more after the window).
        assert!(report.delivery_latency.count >= report.deliveries, "{what}: {report:?}");
    }
}
