//! The CI smoke run of the load tester: every scenario shipped in `loadtest/scenarios/`, at a
//! tiny scale, by the real `selvage loadtest run` against a real `selvage dev` (origin and edge
//! in their own process), must pass its checker and write its reports.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

/// A `selvage dev` child and where it said to connect.
struct Dev {
    child: Child,
    edge: String,
    origin: String,
    operator_key: String,
}

impl Dev {
    fn spawn(data_dir: &Path) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_selvage"))
            .args(["dev", "--listen", "127.0.0.1:0", "--link-listen", "127.0.0.1:0"])
            // As README says for load tests: the simulated clients share a few tokens.
            .args(["--edge-listen", "127.0.0.1:0", "--edge-quic-listen", "127.0.0.1:0", "--no-rate-limits"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("selvage binary runs");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (mut edge, mut origin, mut operator_key) = (None, None, None);
        let word_after = |line: &str, marker: &str| {
            line.split_once(marker).and_then(|(_, rest)| rest.split_whitespace().next()).map(str::to_owned)
        };
        while operator_key.is_none() {
            let line = lines.next().expect("selvage dev prints where to connect").expect("readable stdout");
            if line.contains("edge WebSocket") {
                // ws://HOST:PORT/v1/connect?token=TOKEN → ws://HOST:PORT
                let url = word_after(&line, "edge WebSocket").expect("a URL");
                edge = url.split("/v1/").next().map(str::to_owned);
            } else if line.contains("origin HTTP API") {
                origin = word_after(&line, "origin HTTP API");
            } else if line.contains("operator key") {
                operator_key = word_after(&line, "operator key");
            }
        }
        // Keep reading so that the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Dev {
            child,
            edge: edge.expect("the edge's URL"),
            origin: origin.expect("the origin's URL"),
            operator_key: operator_key.expect("the operator key"),
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scale that turns each shipped scenario into a few clients for a second or two.
fn scale_for(name: &str) -> &'static str {
    match name {
        "soak" => "0.0008",           // 50,000 clients, 30 min → 40 clients, 1.4 s
        "reconnect-storm" => "0.001", // 50,000 → 50 clients
        _ => "0.003",
    }
}

#[test]
fn every_shipped_scenario_passes_against_selvage_dev() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::spawn(&dir.path().join("dev"));
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&scenarios)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "the shipped scenarios: {files:?}");
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let out = dir.path().join(&name);
        let status = Command::new(env!("CARGO_BIN_EXE_selvage"))
            .args(["loadtest", "run"])
            .arg(&file)
            .args(["--target", &dev.edge, "--origin", &dev.origin, "--scale", scale_for(&name), "--quiet"])
            .arg("--out")
            .arg(&out)
            .env("SELVAGE_OPERATOR_KEY", &dev.operator_key)
            .env("RUST_LOG", "warn")
            .status()
            .expect("selvage loadtest runs");
        assert!(status.success(), "{name}: selvage loadtest run failed ({status})");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json")).unwrap();
        assert_eq!(report["passed"], true, "{name}: {report:#}");
        assert_eq!(report["checker"]["violation_count"], 0, "{name}");
        assert!(report["totals"]["acks"].as_u64().unwrap_or(0) > 0, "{name}: nothing acked");
        assert!(report["target"]["edge"].as_str().is_some_and(|e| e.contains("127.0.0.1")), "{name}");
        assert!(out.join("report.html").exists(), "{name}: no report.html");
    }
}
