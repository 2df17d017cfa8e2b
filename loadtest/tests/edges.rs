//! `selvage loadtest run` across two edges (`--target A --target B`): one edge is drained in the
//! middle of the load (`POST /admin/drain`, as an operator or a Kubernetes `preStop` would), its
//! clients move to the other after its `goodbye`, and the checker still finds every acknowledged
//! message once, in order, at every member, and in the origin's history.

use std::time::{Duration, Instant};

use selvage_loadtest::deployment::{scrape, Deployment};
use selvage_loadtest::scenario::{self, RunArgs};

const OPERATOR_KEY: &str = "loadtest-drain-operator-key";
const CLIENTS: usize = 40;

const SCENARIO: &str = r#"
name = "two-edges"
description = "Steady chat over two edges, one drained mid-run."
[workspace]
channels = 8
channel_members = 10
[clients]
count = 40
format = "msgpack"
ramp_up = "1s"
[load]
duration = "8s"
rate = 120.0
changes = 0.2
drain_timeout = "20s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_drained_edge_move_to_the_other_and_the_checker_passes() {
    let http = reqwest::Client::new();
    let with_drain = |e: &mut selvage_edge::EdgeConfig| {
        e.operator_key = Some(OPERATOR_KEY.into());
        e.sessions.drain_grace_ms = 2_000;
    };
    let mut deployment = Deployment::in_process_configured(http.clone(), 16, |_| {}, with_drain).await.unwrap();
    let first = deployment.edge_addr.clone();
    let second = deployment.add_in_process_edge("loadtest-edge-2", with_drain).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("two-edges.toml");
    std::fs::write(&file, SCENARIO).unwrap();
    let args = RunArgs {
        scenario: file.display().to_string(),
        // Both spellings at once: a repeated flag and a comma-separated list.
        target: vec![format!("ws://{first}"), format!("http://{second}")],
        origin: Some(deployment.origin_url().to_string()),
        operator_key: Some(deployment.operator_key().to_string()),
        in_process: false,
        out: dir.path().join("report"),
        scale: 1.0,
        seed_concurrency: 16,
        quiet: true,
        check_stored: true,
    };

    // The drain: once the first edge holds its half of the clients and the load has run a
    // while, as an operator would.
    let drainer = {
        let http = http.clone();
        let first = first.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let page = scrape(&http, &format!("http://{first}/metrics")).await.unwrap();
                if page.sum("selvage_edge_connections").unwrap_or(0.0) >= (CLIENTS / 2) as f64 {
                    break;
                }
                assert!(Instant::now() < deadline, "the first edge never held its half of the clients");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let status = http
                .post(format!("http://{first}/admin/drain"))
                .bearer_auth(OPERATOR_KEY)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 202, "drain refused");
            Instant::now()
        })
    };

    let report = scenario::execute(&args).await.unwrap();
    let drained_at = drainer.await.unwrap();
    let left = scrape(&http, &format!("http://{first}/metrics")).await.unwrap();
    let on_second = scrape(&http, &format!("http://{second}/metrics")).await.unwrap();
    deployment.stop().await;

    eprintln!("totals {:?}, errors {:?}, drained {:?} ago", report.totals, report.errors, drained_at.elapsed());
    assert!(report.passed, "{:?}: {:#?}", report.failures, report.checker);
    assert_eq!(report.checker.violation_count, 0);
    assert!(report.checker.stored_checked, "every acknowledged send was looked for in the origin's history");
    assert!(report.totals.acks > 0);
    assert!(report.totals.moved >= (CLIENTS / 2) as u64, "the drained edge's clients moved: {:?}", report.totals);
    assert_eq!(report.target.edge, format!("{first}, {second}"));
    assert_eq!(left.sum("selvage_edge_connections"), Some(0.0), "nobody is left on the drained edge");
    let sessions = on_second.sum("selvage_edge_boot_seconds_count").unwrap_or(0.0);
    assert!(sessions >= CLIENTS as f64, "every client had a session on the second edge: {sessions}");
    let errors: u64 = report.errors.iter().filter(|(code, _)| code.starts_with("closed_")).map(|(_, n)| n).sum();
    assert_eq!(errors, 0, "every client left after its goodbye, none was cut off: {:?}", report.errors);
}

#[tokio::test]
async fn targets_split_on_commas() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }
    let cli = Cli::try_parse_from([
        "x",
        "steady",
        "--target",
        "ws://127.0.0.1:1,ws://127.0.0.1:2",
        "--target",
        "ws://127.0.0.1:3",
    ])
    .unwrap();
    assert_eq!(cli.run.target, ["ws://127.0.0.1:1", "ws://127.0.0.1:2", "ws://127.0.0.1:3"]);
}
