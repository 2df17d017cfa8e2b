//! A tiny run of `selvage loadtest files` in this process: an s3local, an origin with files on
//! and an edge. Every upload must be stored and completed, every completed file must reach the
//! watching member as exactly the `message` event carrying it, and no call may fail.

use std::time::Duration;

use selvage_loadtest::files::{measure, FilesArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upload_completes_and_reaches_the_member() {
    let args = FilesArgs {
        in_process: true,
        target: None,
        origin: None,
        operator_key: None,
        origin_pid: None,
        issue_concurrency: 4,
        issue_duration: Duration::from_secs(1),
        event_concurrency: 2,
        event_duration: Duration::from_secs(1),
        uploads: 20,
        upload_bytes: 64 * 1024,
        upload_concurrency: None,
        json: true,
    };
    let r = measure(&args).await.unwrap();

    let issue = r.issue.as_ref().unwrap();
    assert!(issue.issued > 0, "{issue:?}");
    assert_eq!(issue.latency.count, issue.issued, "one latency per URL issued");
    assert!(issue.errors.is_empty(), "{:?}", issue.errors);

    let events = r.events.as_ref().unwrap();
    assert!(events.completed > 0, "{events:?}");
    assert_eq!(events.events, events.completed, "every completed file's event arrived: {events:?}");
    assert_eq!(events.missing, 0);
    assert_eq!(events.event_latency.count, events.completed);
    assert!(events.errors.is_empty(), "{:?}", events.errors);

    let uploads = r.uploads.as_ref().unwrap();
    assert_eq!(uploads.uploads, 20);
    assert_eq!(uploads.concurrency, 20, "all at once by default");
    assert_eq!(uploads.completed, 20, "{uploads:?}");
    assert_eq!(uploads.events, 20, "{uploads:?}");
    assert_eq!(uploads.missing, 0);
    assert_eq!(uploads.latency.count, 20);
    assert!(uploads.errors.is_empty(), "{:?}", uploads.errors);
    assert!(uploads.origin_rss.before_bytes > 0 && uploads.origin_rss.after_bytes > 0, "{:?}", uploads.origin_rss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_without_files_is_named_as_the_cause() {
    // A deployment whose origin has files off: the in-process pair of the other scenarios.
    let http = reqwest::Client::new();
    let deployment = selvage_loadtest::deployment::Deployment::in_process_with(http, 4, |_| {}).await.unwrap();
    let args = FilesArgs {
        in_process: false,
        target: Some(format!("http://{}", deployment.edge_addr)),
        origin: Some(deployment.origin_url().to_string()),
        operator_key: Some(deployment.operator_key().to_string()),
        origin_pid: None,
        issue_concurrency: 1,
        issue_duration: Duration::from_millis(100),
        event_concurrency: 1,
        event_duration: Duration::from_millis(100),
        uploads: 1,
        upload_bytes: 1,
        upload_concurrency: None,
        json: true,
    };
    let error = measure(&args).await.unwrap_err().to_string();
    deployment.stop().await;
    assert!(error.contains("files are not enabled"), "{error}");
}
