//! Every shipped scenario file, run tiny (`--scale`) against an origin and an edge in this
//! process: each must pass the checker and write a report.json of the documented schema.

use std::path::Path;

use selvage_loadtest::scenario::{self, RunArgs};

/// Scale that turns each shipped scenario into a few clients for a second or two.
fn scale_for(name: &str) -> f64 {
    match name {
        "soak" => 0.0008,           // 50,000 clients, 30 min → 40 clients, 1.4 s
        "reconnect-storm" => 0.001, // 50,000 → 50 clients, 40 s → 0.5 s
        _ => 0.003,
    }
}

fn args(name: &str, out: &Path) -> RunArgs {
    RunArgs {
        scenario: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join(format!("{name}.toml"))
            .display()
            .to_string(),
        target: Vec::new(),
        origin: None,
        operator_key: None,
        in_process: true,
        out: out.to_path_buf(),
        scale: scale_for(name),
        seed_concurrency: 16,
        quiet: true,
        check_stored: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_scenario_passes_at_a_tiny_scale() {
    let dir = tempfile::tempdir().unwrap();
    for (name, _) in scenario::BUILTIN {
        let out = dir.path().join(name);
        let started = std::time::Instant::now();
        let report = scenario::execute(&args(name, &out)).await.unwrap_or_else(|e| panic!("{name}: {e:#}"));
        eprintln!("{name}: {:.1} s, {:?}", started.elapsed().as_secs_f64(), report.totals);
        assert!(report.passed, "{name}: {:#?}", report.checker);
        assert!(report.totals.acks > 0, "{name}: nothing acked: {:?} {:?}", report.totals, report.errors);
        assert!(report.totals.deliveries > 0, "{name}");
        assert!(report.latency.send_delivered.count > 0, "{name}");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(json["schema"], "selvage-loadtest-report/1", "{name}");
        let html = std::fs::read_to_string(out.join("report.html")).unwrap();
        assert!(html.contains(&report.scenario.name), "{name}: report.html does not name the scenario");
        for field in [
            "scenario",
            "target",
            "started_at",
            "duration_s",
            "passed",
            "latency",
            "timeline",
            "totals",
            "errors",
            "checker",
        ] {
            assert!(!json[field].is_null(), "{name}: report.json lacks {field}");
        }
        for l in ["send_ack", "send_delivered", "change_ack", "boot", "reconnect"] {
            assert_eq!(json["latency"][l]["percentiles"].as_array().map(Vec::len), Some(5), "{name} {l}");
        }
        assert_eq!(json["checker"]["violation_count"], 0, "{name}");
        // Scenarios that change messages hold every client's view against the final history.
        let changes = scenario::resolve(name).unwrap().0.load.changes > 0.0;
        assert_eq!(json["checker"]["states_checked"], changes, "{name}");
        // Every acknowledged send was found in the origin's history afterwards.
        assert_eq!(json["checker"]["stored_checked"], true, "{name}");
        assert!(report.totals.changes_acked <= report.totals.changes, "{name}");
        match *name {
            "reconnect-storm" | "mixed" => {
                assert!(report.totals.reconnects > 0, "{name}: no resumes: {:?}", report.totals)
            }
            "boot-storm" => assert!(report.latency.boot.count as usize >= report.scenario.clients, "{name}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_target_without_an_origin_is_refused_clearly() {
    let mut a = args("steady", Path::new("unused"));
    a.in_process = false;
    a.target = vec!["ws://127.0.0.1:1".into()];
    let err = format!("{:#}", scenario::execute(&a).await.unwrap_err());
    assert!(err.contains("--origin"), "{err}");
    a.scenario = "no-such-scenario".into();
    let err = format!("{:#}", scenario::execute(&a).await.unwrap_err());
    assert!(err.contains("shipped"), "{err}");
}
