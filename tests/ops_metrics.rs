//! The deploy kit's monitoring against the real thing: every metric that an alert rule
//! (`infra/prometheus/alerts.yml`) or a dashboard panel (`infra/grafana/selvage.json`) uses must
//! be on the `/metrics` of a running `selvage dev` (origin and edge); the rules must pass
//! `promtool check rules` and their unit tests `promtool test rules`; every panel's query must
//! parse; and every alert must link to its section of docs/OPERATIONS.md.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn alerts_path() -> PathBuf {
    repo().join("infra/prometheus/alerts.yml")
}

fn dashboard_path() -> PathBuf {
    repo().join("infra/grafana/selvage.json")
}

/// `(alert name, expression, annotations)` of every rule in alerts.yml.
fn alert_rules() -> Vec<(String, String, serde_yaml::Mapping)> {
    let text = std::fs::read_to_string(alerts_path()).expect("infra/prometheus/alerts.yml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    let mut rules = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert").to_string();
            let expr = rule["expr"].as_str().expect("expr").to_string();
            let annotations = rule["annotations"].as_mapping().cloned().unwrap_or_default();
            rules.push((name, expr, annotations));
        }
    }
    rules
}

/// Every query of the dashboard: each panel's targets (rows' nested panels too) and the
/// template variables' queries, as `(panel title, expression)`.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dashboard_path()).expect("infra/grafana/selvage.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("selvage.json is JSON");
    let mut out = Vec::new();
    fn walk(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            if let Some(nested) = p["panels"].as_array() {
                walk(nested, out);
            }
        }
    }
    walk(doc["panels"].as_array().expect("panels"), &mut out);
    for v in doc["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// The metric names a PromQL expression mentions, roughly: identifiers `selvage_…` and
/// `process_…`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("selvage_") || rest.starts_with("process_")) {
            let len = rest.bytes().take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_').count();
            names.insert(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// The names an exposition shows: every sample's name (`…_bucket`, `…_sum`, `…_count` of
/// histograms included) and every family named by a `# TYPE` line.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// A `selvage dev` child on free ports in a temporary directory, and where it listens.
struct Dev {
    child: Child,
    edge: String,
    origin: String,
    _dir: tempfile::TempDir,
}

impl Dev {
    fn spawn() -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_selvage"))
            .args(["dev", "--listen", "127.0.0.1:0", "--link-listen", "127.0.0.1:0"])
            .args(["--edge-listen", "127.0.0.1:0", "--edge-quic-listen", "127.0.0.1:0", "--s3-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("dev"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("selvage binary runs");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let word_after = |line: &str, marker: &str| {
            line.split_once(marker).and_then(|(_, rest)| rest.split_whitespace().next()).map(str::to_owned)
        };
        let (mut edge, mut origin) = (None, None);
        while edge.is_none() || origin.is_none() {
            let line = lines.next().expect("selvage dev prints where to connect").expect("readable stdout");
            if line.contains("web client") {
                edge = word_after(&line, "web client").map(|u| u.trim_end_matches('/').to_owned());
            } else if line.contains("origin HTTP API") {
                origin = word_after(&line, "origin HTTP API");
            }
        }
        // Keep reading so that the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Dev { child, edge: edge.unwrap(), origin: origin.unwrap(), _dir: dir }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(response.status().is_success(), "GET {url}: {}", response.status());
    response.text().await.unwrap()
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported_by_selvage_dev() {
    let mut used: Vec<(String, String)> = Vec::new(); // (metric, where)
    for (alert, expr, _) in alert_rules() {
        used.extend(metric_names(&expr).into_iter().map(|m| (m, format!("alert {alert}"))));
    }
    for (panel, expr) in dashboard_queries() {
        used.extend(metric_names(&expr).into_iter().map(|m| (m, format!("panel {panel:?}"))));
    }
    assert!(used.len() > 40, "the rules and the dashboard use metrics: {used:?}");

    let dev = Dev::spawn();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    // A request like any other, so the HTTP metrics (labelled by route and status) exist; in
    // production Prometheus's own scrapes are such requests.
    assert_eq!(get(&http, &format!("{}/healthz", dev.origin)).await.trim(), "ok");
    // The feed consumers (search, notify, hooks, files-thumbs) start with the origin; wait
    // for their series, and for the edge's link.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (origin, edge) = loop {
        let origin = get(&http, &format!("{}/metrics", dev.origin)).await;
        let edge = get(&http, &format!("{}/metrics", dev.edge)).await;
        let ready = origin.contains("selvage_consumer_lag_seconds{")
            && origin.contains("selvage_http_requests_total{")
            && edge.contains("selvage_edge_link_up 1");
        if ready || Instant::now() > deadline {
            break (origin, edge);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut exposed = exposed_names(&origin);
    exposed.extend(exposed_names(&edge));

    let missing: BTreeSet<String> =
        used.iter().filter(|(m, _)| !exposed.contains(m)).map(|(m, at)| format!("{m} (used by {at})")).collect();
    assert!(
        missing.is_empty(),
        "metrics used by infra/prometheus/alerts.yml or infra/grafana/selvage.json that neither the origin's nor \
         the edge's /metrics shows:\n  {}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
    // The gauges the alerts read carry the values they mean.
    assert!(edge.contains("selvage_edge_ready 1"), "a linked edge that is not draining is ready:\n{edge}");
    assert!(edge.contains("selvage_edge_draining 0"));
    let free = origin.lines().find_map(|l| l.strip_prefix("selvage_data_dir_free_bytes ")).expect("free bytes");
    assert!(free.trim().parse::<f64>().unwrap() > 0.0, "the data directory's disk has room: {free}");
}

#[test]
fn the_metric_name_extraction_reads_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(selvage_sequencer_commit_seconds_bucket{x="selvage_no"}[5m])))
           / process_max_fds and on(instance) my_selvage_thing"#,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Label values are not names, but matching them too errs on the strict side.
    assert_eq!(names, ["process_max_fds", "selvage_no", "selvage_sequencer_commit_seconds_bucket"]);
    let exposed = exposed_names("# HELP a_seconds x\n# TYPE a_seconds histogram\na_seconds_bucket{le=\"1\"} 0\nb 1\n");
    assert_eq!(exposed.into_iter().collect::<Vec<_>>(), ["a_seconds", "a_seconds_bucket", "b"]);
}

/// Where promtool is, or why the test is skipped.
fn promtool() -> Option<PathBuf> {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: promtool is not installed (Debian: apt-get install prometheus)");
        return None;
    }
    Some(PathBuf::from("promtool"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("promtool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let checked = run(Command::new(&promtool).args(["check", "rules"]).arg(alerts_path()));
    let rules = alert_rules().len();
    assert!(checked.contains(&format!("{rules} rules found")), "{checked}");
    let tested =
        run(Command::new(&promtool).args(["test", "rules"]).arg(repo().join("infra/prometheus/alerts.test.yml")));
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert is tested both firing and not firing.
    let tests: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("infra/prometheus/alerts.test.yml")).expect("alerts.test.yml"),
    )
    .unwrap();
    for (alert, _, _) in alert_rules() {
        let evals: Vec<&serde_yaml::Value> = tests["tests"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
            .filter(|e| e["alertname"].as_str() == Some(alert.as_str()))
            .collect();
        let fires = |e: &&serde_yaml::Value| e["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty());
        assert!(evals.iter().any(fires), "{alert}: no test where it fires");
        assert!(evals.iter().any(|e| !fires(e)), "{alert}: no test where it does not fire");
    }
}

#[test]
fn every_dashboard_query_parses() {
    let Some(promtool) = promtool() else { return };
    // Grafana's variables as Prometheus would see them once Grafana has put them in; each
    // query becomes a recording rule, which `promtool check rules` parses.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries().iter().enumerate() {
        if expr.starts_with("label_values(") {
            continue; // Grafana's own function, not PromQL.
        }
        let expr = expr.replace("$__rate_interval", "5m").replace("$origin", ".*").replace("$edge", ".*");
        rules.push_str(&format!("      - record: panel:query_{i}\n        expr: {}\n", serde_json::json!(expr)));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    run(Command::new(&promtool).args(["check", "rules"]).arg(&file));
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_section() {
    let runbook = std::fs::read_to_string(repo().join("docs/OPERATIONS.md")).expect("docs/OPERATIONS.md");
    let alerts_section = runbook.split("\n## Alerts\n").nth(1).expect("docs/OPERATIONS.md has a section ## Alerts");
    let alerts_section = alerts_section.split("\n## ").next().unwrap_or_default();
    let headings: BTreeSet<&str> =
        alerts_section.lines().filter_map(|l| l.strip_prefix("### ")).map(str::trim).collect();
    for (alert, _, annotations) in alert_rules() {
        let text = |key: &str| annotations.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        assert!(!text("summary").is_empty(), "{alert}: no summary");
        assert!(!text("description").is_empty(), "{alert}: no description");
        let url = text("runbook_url");
        assert_eq!(url, format!("docs/OPERATIONS.md#{}", alert.to_lowercase()), "{alert}: runbook_url");
        assert!(headings.contains(alert.as_str()), "{alert}: no `### {alert}` under ## Alerts in docs/OPERATIONS.md");
    }
}
