//! The Kubernetes manifests (`infra/k8s/`), rendered by `kubectl kustomize` for every overlay,
//! hold what docs/OPERATIONS.md and infra/k8s/README.md promise: edges that drain and spread,
//! the origin on a volume (or on FoundationDB), the link open to edges only, monitoring, and
//! configuration files that `selvage … --check-config` accepts. Skipped, saying why, where no
//! kustomize v5 is installed (`kubectl kustomize`, or `kustomize build`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;
use serde_yaml::Value;

const OVERLAYS: [&str; 3] = ["eu", "us", "fdb"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What renders an overlay: `kubectl kustomize` or `kustomize build`, whichever holds kustomize
/// v5 (components, `labels`); `None`, saying why, when neither does (Debian's own
/// kubernetes-client is kubectl 1.20, with kustomize v2).
fn renderer() -> Option<[&'static str; 2]> {
    let version = |cmd: &[&str]| -> Option<String> {
        let out = Command::new(cmd[0]).args(&cmd[1..]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success().then_some(text)
    };
    let v5 = |text: &str, marker: &str| {
        text.lines().filter_map(|l| l.split_once(marker)).any(|(_, v)| {
            let major =
                v.trim().trim_start_matches("kustomize/").trim_start_matches('v').split('.').next().unwrap_or("");
            major.parse::<u32>().is_ok_and(|m| m >= 5)
        })
    };
    if version(&["kubectl", "version", "--client"]).is_some_and(|t| v5(&t, "Kustomize Version:")) {
        return Some(["kubectl", "kustomize"]);
    }
    if version(&["kustomize", "version"]).is_some_and(|t| v5(&format!("v: {t}"), "v:")) {
        return Some(["kustomize", "build"]);
    }
    eprintln!("SKIPPED: neither kubectl nor kustomize with kustomize v5 is installed (infra/k8s needs v5)");
    None
}

/// Whether the manifests can be rendered here; says why not.
fn can_render() -> bool {
    renderer().is_some()
}

/// The objects kustomize renders for an overlay.
fn render(overlay: &str) -> Vec<Value> {
    let dir = repo().join("infra/k8s/overlays").join(overlay);
    let [tool, verb] = renderer().expect("a kustomize");
    let out = Command::new(tool).arg(verb).arg(&dir).output().expect("kustomize runs");
    assert!(out.status.success(), "{tool} {verb} {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect();
    assert!(!docs.is_empty(), "{overlay} renders nothing");
    docs
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

fn named<'a>(docs: &'a [Value], k: &str, name: &str) -> Option<&'a Value> {
    kind(docs, k).into_iter().find(|d| d["metadata"]["name"].as_str() == Some(name))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// Whether every `matchLabels` pair is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(wanted) = selector.as_mapping() else { return false };
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The container of a workload's pod template, by name.
fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    seq(&workload["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name} in {:?}", workload["metadata"]["name"]))
}

/// The volume of `workload` whose mount in `container` holds `path`, and the path inside it;
/// checks that a volume projecting chosen keys (`items`) projects that one.
fn volume_for<'a>(workload: &'a Value, container: &Value, path: &str) -> (&'a Value, String) {
    let mount = seq(&container["volumeMounts"])
        .iter()
        .filter(|m| path.starts_with(str_of(&m["mountPath"])))
        .max_by_key(|m| str_of(&m["mountPath"]).len())
        .unwrap_or_else(|| panic!("{path} is on no volume mount of {:?}", container["name"]));
    let inside = path[str_of(&mount["mountPath"]).len()..].trim_start_matches('/').to_string();
    let volume = seq(&workload["spec"]["template"]["spec"]["volumes"])
        .iter()
        .chain(seq(&workload["spec"]["volumeClaimTemplates"]).iter().map(|t| &t["metadata"]))
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {:?} for {path}", mount["name"]));
    for source in ["secret", "configMap"] {
        if let Some(items) = volume[source]["items"].as_sequence() {
            assert!(
                items.iter().any(|i| str_of(&i["path"]) == inside),
                "{path}: volume {:?} projects only {items:?}",
                volume["name"]
            );
        }
    }
    (volume, inside)
}

/// The TOML a workload reads: the file named by `--config` in its args, from the ConfigMap
/// mounted there.
fn config_of(docs: &[Value], workload: &Value, container_name: &str) -> (String, toml::Table) {
    let c = container(workload, container_name);
    let args: Vec<&str> = seq(&c["args"]).iter().map(str_of).collect();
    let at = args.iter().position(|a| *a == "--config").expect("--config in the args");
    let path = args[at + 1];
    let (volume, key) = volume_for(workload, c, path);
    let map = str_of(&volume["configMap"]["name"]);
    let cm = named(docs, "ConfigMap", map).unwrap_or_else(|| panic!("no ConfigMap {map}"));
    let text = str_of(&cm["data"][key.as_str()]).to_string();
    assert!(!text.is_empty(), "ConfigMap {map} has no {key}");
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{map}/{key} is not TOML: {e}"));
    (text, table)
}

fn toml_str<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a str> {
    let mut v = t.get(path[0])?;
    for p in &path[1..] {
        v = v.get(p)?;
    }
    v.as_str()
}

fn edges(docs: &[Value]) -> &Value {
    named(docs, "Deployment", "selvage-edge").expect("Deployment selvage-edge")
}

#[test]
fn every_region_runs_edges_that_drain_spread_scale_and_are_scraped() {
    if !can_render() {
        return;
    }
    let alerts: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("infra/prometheus/alerts.yml")).unwrap()).unwrap();
    let mut edge_ids = Vec::new();
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let ctx = |what: &str| format!("overlay {overlay}: {what}");
        let edge = edges(&docs);
        let pod = &edge["spec"]["template"];
        let c = container(edge, "edge");
        assert_eq!(str_of(&c["image"]), "selvage:latest", "{}", ctx("image"));

        // Readiness on /readyz (503 while unlinked or draining), liveness on /healthz.
        assert_eq!(str_of(&c["readinessProbe"]["httpGet"]["path"]), "/readyz", "{}", ctx("readiness"));
        assert_eq!(str_of(&c["livenessProbe"]["httpGet"]["path"]), "/healthz", "{}", ctx("liveness"));

        // WebSocket on TCP, QUIC on UDP, as the edge's configuration listens.
        let (_, config) = config_of(&docs, edge, "edge");
        let port_of = |field: &str| -> u64 {
            let addr = toml_str(&config, &[field]).unwrap_or_else(|| panic!("{}", ctx(field)));
            addr.rsplit_once(':').unwrap().1.parse().unwrap()
        };
        let (ws_port, quic_port) = (port_of("listen"), port_of("quic_listen"));
        assert!(toml_str(&config, &["listen"]).unwrap().starts_with("0.0.0.0:"), "{}", ctx("listen on every address"));
        let container_port = |proto: &str, port: u64| {
            seq(&c["ports"])
                .iter()
                .find(|p| str_of(&p["protocol"]) == proto && p["containerPort"].as_u64() == Some(port))
        };
        let ws = container_port("TCP", ws_port).unwrap_or_else(|| panic!("{}", ctx("TCP container port")));
        let quic = container_port("UDP", quic_port).unwrap_or_else(|| panic!("{}", ctx("UDP container port")));

        // Drain: the preStop hook pauses, then POSTs /admin/drain (`selvage admin drain`, with
        // the binary the container runs and the edge's own port); the grace period outlasts
        // the pause plus the drain grace.
        let pre_stop: Vec<&str> = seq(&c["lifecycle"]["preStop"]["exec"]["command"]).iter().map(str_of).collect();
        let program = seq(&c["command"]).first().map(str_of).unwrap_or_default();
        assert!(
            pre_stop.first() == Some(&program) && pre_stop.windows(2).any(|w| w == ["admin", "--url"]),
            "{}",
            ctx(&format!("a preStop hook running `{program} admin --url … drain`, not {pre_stop:?}"))
        );
        let url = pre_stop.iter().skip_while(|a| **a != "--url").nth(1).copied().unwrap_or_default();
        assert_eq!(url, format!("http://127.0.0.1:{ws_port}"), "{}", ctx("preStop drains this edge"));
        let after = pre_stop.iter().skip_while(|a| **a != "--after-ms").nth(1).copied();
        assert!(pre_stop.contains(&"drain"), "{}", ctx("preStop drains"));
        let pause = after.and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(0) / 1000;
        assert!(pause >= 1, "{}", ctx("preStop pauses before draining, for the Service's endpoints to update"));
        let drain_ms = config.get("sessions").and_then(|s| s.get("drain_grace_ms")).and_then(|v| v.as_integer());
        let drain_secs = drain_ms.unwrap_or(30_000) as u64 / 1000;
        let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
        assert!(
            grace > pause + drain_secs,
            "{}",
            ctx(&format!("terminationGracePeriodSeconds {grace} <= preStop {pause} s + drain grace {drain_secs} s"))
        );

        // Spread across nodes.
        assert!(
            seq(&pod["spec"]["topologySpreadConstraints"]).iter().any(|t| {
                str_of(&t["topologyKey"]) == "kubernetes.io/hostname"
                    && selects(&t["labelSelector"]["matchLabels"], &pod["metadata"]["labels"])
            }),
            "{}",
            ctx("topologySpreadConstraints across nodes")
        );

        // Keys from the Secret, never in the ConfigMap.
        let env_secret = |var: &str| {
            seq(&c["env"]).iter().find(|e| str_of(&e["name"]) == var).map(|e| &e["valueFrom"]["secretKeyRef"])
        };
        for (var, key) in [("SELVAGE_ORIGIN__EDGE_KEY", "link-key"), ("SELVAGE_OPERATOR_KEY", "operator-key")] {
            let r = env_secret(var).unwrap_or_else(|| panic!("{}", ctx(var)));
            assert_eq!((str_of(&r["name"]), str_of(&r["key"])), ("selvage-keys", key), "{}", ctx(var));
        }
        let keys = named(&docs, "Secret", "selvage-keys").expect("Secret selvage-keys");
        for key in ["link-key", "operator-key"] {
            assert!(!keys["stringData"][key].is_null() || !keys["data"][key].is_null(), "{}", ctx(key));
        }
        assert!(!config.contains_key("operator_key"), "{}", ctx("operator_key in the ConfigMap"));
        assert!(toml_str(&config, &["origin", "edge_key"]).is_none(), "{}", ctx("edge_key in the ConfigMap"));

        // The trust file is mounted where the configuration reads it, from a Secret this
        // overlay makes (or cert-manager issues, in the home region).
        let ca = toml_str(&config, &["origin", "ca_file"]).unwrap_or_else(|| panic!("{}", ctx("origin.ca_file")));
        let (volume, _) = volume_for(edge, c, ca);
        let secret = str_of(&volume["secret"]["secretName"]);
        assert!(
            named(&docs, "Secret", secret).is_some()
                || kind(&docs, "Certificate").iter().any(|cert| str_of(&cert["spec"]["secretName"]) == secret),
            "{}",
            ctx(&format!("nothing makes Secret {secret}"))
        );
        edge_ids.push(toml_str(&config, &["edge_id"]).unwrap().to_string());

        // One edge at a time may go.
        let pdb = kind(&docs, "PodDisruptionBudget")
            .into_iter()
            .find(|p| selects(&p["spec"]["selector"]["matchLabels"], &pod["metadata"]["labels"]))
            .unwrap_or_else(|| panic!("{}", ctx("a PodDisruptionBudget for the edges")));
        assert!(!pdb["spec"]["maxUnavailable"].is_null() || !pdb["spec"]["minAvailable"].is_null());

        // A load balancer with TCP to the WebSocket port and UDP to the QUIC port.
        let service = kind(&docs, "Service")
            .into_iter()
            .find(|s| selects(&s["spec"]["selector"], &pod["metadata"]["labels"]))
            .unwrap_or_else(|| panic!("{}", ctx("a Service for the edges")));
        assert_eq!(str_of(&service["spec"]["type"]), "LoadBalancer", "{}", ctx("edge Service type"));
        let targets = |proto: &str, named_port: &Value, number: u64| {
            seq(&service["spec"]["ports"]).iter().any(|p| {
                str_of(&p["protocol"]) == proto
                    && (p["targetPort"] == *named_port || p["targetPort"].as_u64() == Some(number))
            })
        };
        assert!(targets("TCP", &ws["name"], ws_port), "{}", ctx("TCP port to the WebSocket listener"));
        assert!(targets("UDP", &quic["name"], quic_port), "{}", ctx("UDP port to the QUIC listener"));

        // Autoscaling on connections, a Pods metric.
        let hpa = kind(&docs, "HorizontalPodAutoscaler")
            .into_iter()
            .find(|h| h["spec"]["scaleTargetRef"]["name"] == edge["metadata"]["name"])
            .unwrap_or_else(|| panic!("{}", ctx("a HorizontalPodAutoscaler for the edges")));
        assert!(
            seq(&hpa["spec"]["metrics"])
                .iter()
                .any(|m| str_of(&m["type"]) == "Pods"
                    && str_of(&m["pods"]["metric"]["name"]) == "selvage_edge_connections"),
            "{}",
            ctx("the autoscaler's metric")
        );

        // Scraped, with the alert rules loaded.
        let monitors = kind(&docs, "ServiceMonitor");
        assert!(
            monitors.iter().any(|m| selects(&m["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"])
                && seq(&m["spec"]["endpoints"]).iter().any(|e| str_of(&e["path"]) == "/metrics")),
            "{}",
            ctx("a ServiceMonitor for the edges' Service")
        );
        let rule = named(&docs, "PrometheusRule", "selvage").expect("PrometheusRule selvage");
        assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(rule["spec"]["groups"], alerts["groups"], "{}", ctx("the PrometheusRule holds alerts.yml's groups"));
    }
    // Every region names its edges apart.
    assert_eq!(edge_ids, ["edge-eu", "edge-us", "edge-eu"]);
}

/// The origin's workload in a rendered overlay, with its kind.
fn origin(docs: &[Value]) -> Option<&Value> {
    named(docs, "StatefulSet", "selvage-origin").or_else(|| named(docs, "Deployment", "selvage-origin"))
}

/// Only edge pods (and, by address, other regions' edges) reach the origin's link port.
fn assert_link_open_to_edges_only(docs: &[Value], overlay: &str) {
    let origin = origin(docs).unwrap();
    let labels = &origin["spec"]["template"]["metadata"]["labels"];
    let (_, config) = config_of(docs, origin, "origin");
    let link_port: u64 = toml_str(&config, &["link", "listen"]).unwrap().rsplit_once(':').unwrap().1.parse().unwrap();
    let edge_labels = &edges(docs)["spec"]["template"]["metadata"]["labels"];
    let policies: Vec<&Value> = kind(docs, "NetworkPolicy")
        .into_iter()
        .filter(|p| selects(&p["spec"]["podSelector"]["matchLabels"], labels))
        .collect();
    assert!(!policies.is_empty(), "{overlay}: no NetworkPolicy on the origin's pods");
    let mut admits_edges = false;
    for policy in policies {
        assert!(seq(&policy["spec"]["policyTypes"]).iter().any(|t| t == "Ingress"), "{overlay}: an Ingress policy");
        for rule in seq(&policy["spec"]["ingress"]) {
            let ports = seq(&rule["ports"]);
            let opens_link = ports.is_empty()
                || ports.iter().any(|p| str_of(&p["protocol"]) == "UDP" && p["port"].as_u64() == Some(link_port));
            if !opens_link {
                continue;
            }
            let from = seq(&rule["from"]);
            assert!(!from.is_empty(), "{overlay}: a rule opens the link port to everyone: {rule:?}");
            for peer in from {
                let edge_pods = selects(&peer["podSelector"]["matchLabels"], edge_labels)
                    && peer["podSelector"]["matchLabels"]
                        .as_mapping()
                        .is_some_and(|m| m.iter().any(|(k, v)| k == "app.kubernetes.io/component" && v == "edge"));
                let by_address = !peer["ipBlock"]["cidr"].is_null() && str_of(&peer["ipBlock"]["cidr"]) != "0.0.0.0/0";
                assert!(edge_pods || by_address, "{overlay}: the link port is open to {peer:?}");
                admits_edges |= edge_pods;
            }
        }
    }
    assert!(admits_edges, "{overlay}: the edge pods cannot reach the link");
}

#[test]
fn the_home_region_runs_the_origin_on_a_volume_with_its_link_open_to_edges_only() {
    if !can_render() {
        return;
    }
    let docs = render("eu");
    let set = named(&docs, "StatefulSet", "selvage-origin").expect("the origin is a StatefulSet");
    assert_eq!(set["spec"]["replicas"].as_u64(), Some(1), "the embedded store is one machine's");
    let claims = seq(&set["spec"]["volumeClaimTemplates"]);
    assert!(!claims.is_empty(), "a PersistentVolumeClaim template for the store");
    let c = container(set, "origin");
    assert_eq!(str_of(&c["readinessProbe"]["httpGet"]["path"]), "/readyz");
    let (_, config) = config_of(&docs, set, "origin");
    assert_eq!(toml_str(&config, &["store"]).unwrap_or("embedded"), "embedded");
    let data_dir = toml_str(&config, &["data_dir"]).expect("data_dir");
    let (volume, _) = volume_for(set, c, data_dir);
    assert!(
        claims.iter().any(|t| t["metadata"]["name"] == volume["name"]),
        "data_dir {data_dir} must be on the claim, not on {:?}",
        volume["name"]
    );
    for field in ["cert_file", "key_file"] {
        volume_for(set, c, toml_str(&config, &["link", field]).unwrap());
    }
    assert_link_open_to_edges_only(&docs, "eu");
    assert!(named(&docs, "ServiceMonitor", "selvage-origin").is_some(), "the origin is scraped");
}

#[test]
fn another_region_runs_edges_only() {
    if !can_render() {
        return;
    }
    let docs = render("us");
    assert!(origin(&docs).is_none(), "us links to the home region's origin");
    assert!(kind(&docs, "StatefulSet").is_empty() && kind(&docs, "NetworkPolicy").is_empty());
    let (_, config) = config_of(&docs, edges(&docs), "edge");
    let link = toml_str(&config, &["origin", "link"]).unwrap();
    assert!(!link.contains(".svc"), "us reaches the origin from another cluster, not by a Service name: {link}");
}

#[test]
fn the_fdb_overlay_runs_several_origins_beside_a_foundationdb_cluster() {
    if !can_render() {
        return;
    }
    let docs = render("fdb");
    assert!(named(&docs, "StatefulSet", "selvage-origin").is_none(), "no StatefulSet with FoundationDB");
    let deployment = named(&docs, "Deployment", "selvage-origin").expect("the origins are a Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap_or(1) > 1, "several origins");
    let clusters = kind(&docs, "FoundationDBCluster");
    assert_eq!(clusters.len(), 1, "one FoundationDBCluster");
    assert_eq!(clusters[0]["apiVersion"], "apps.foundationdb.org/v1beta2");
    let cluster = str_of(&clusters[0]["metadata"]["name"]);
    let c = container(deployment, "origin");
    let (_, config) = config_of(&docs, deployment, "origin");
    assert_eq!(toml_str(&config, &["store"]), Some("fdb"));
    // The cluster file the operator publishes: ConfigMap <cluster>-config, key cluster-file.
    let file = toml_str(&config, &["fdb_cluster_file"]).expect("fdb_cluster_file");
    let (volume, inside) = volume_for(deployment, c, file);
    assert_eq!(str_of(&volume["configMap"]["name"]), format!("{cluster}-config"));
    let item = seq(&volume["configMap"]["items"]).iter().find(|i| str_of(&i["path"]) == inside).expect("item");
    assert_eq!(str_of(&item["key"]), "cluster-file");
    assert!(
        kind(&docs, "PodDisruptionBudget").iter().any(|p| selects(
            &p["spec"]["selector"]["matchLabels"],
            &deployment["spec"]["template"]["metadata"]["labels"]
        )),
        "a PodDisruptionBudget for the origins"
    );
    assert_link_open_to_edges_only(&docs, "fdb");
}

/// Runs `selvage ROLE --config FILE --check-config` with the secrets the pods get from the
/// environment and, for the files the pods mount (certificates, the data directory, the
/// cluster file), stand-ins at paths of this machine.
fn check_config(role: &str, toml: &str, scratch: &Path) -> std::process::Output {
    let file = scratch.join(format!("{role}.toml"));
    std::fs::write(&file, toml).unwrap();
    let id = selvage_net::tls::Identity::self_signed_in(scratch, "link", &["selvage-origin.selvage.svc".into()]);
    id.expect("a certificate for the stand-ins");
    let (cert, key) = (scratch.join("link-cert.pem"), scratch.join("link-key.pem"));
    let cluster_file = scratch.join("fdb.cluster");
    std::fs::write(&cluster_file, "selvage:test@127.0.0.1:4500\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selvage"));
    cmd.args([role, "--config"]).arg(&file).arg("--check-config");
    cmd.env("SELVAGE_OPERATOR_KEY", "placeholder-operator-key-0001");
    match role {
        "edge" => {
            cmd.env("SELVAGE_ORIGIN__EDGE_KEY", "placeholder-link-key-000001").env("SELVAGE_ORIGIN__CA_FILE", &cert);
        }
        _ => {
            cmd.env("SELVAGE_LINK__EDGE_KEY", "placeholder-link-key-000001")
                .env("SELVAGE_DATA_DIR", scratch.join("data"))
                .env("SELVAGE_LINK__CERT_FILE", &cert)
                .env("SELVAGE_LINK__KEY_FILE", &key)
                .env("SELVAGE_FDB_CLUSTER_FILE", &cluster_file);
        }
    }
    cmd.output().expect("selvage runs")
}

#[test]
fn every_configuration_in_the_configmaps_passes_check_config() {
    if !can_render() {
        return;
    }
    let help = Command::new(env!("CARGO_BIN_EXE_selvage")).args(["edge", "--help"]).output().unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("--check-config") {
        eprintln!("SKIPPED: this selvage has no --check-config yet");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for overlay in OVERLAYS {
        let docs = render(overlay);
        for workload in kind(&docs, "Deployment").into_iter().chain(kind(&docs, "StatefulSet")) {
            let role = match str_of(&workload["metadata"]["name"]) {
                "selvage-edge" => "edge",
                "selvage-origin" => "origin",
                other => panic!("{overlay}: unexpected workload {other}"),
            };
            let (text, _) = config_of(&docs, workload, role);
            let out = check_config(role, &text, scratch.path());
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let fdb_only = said.contains("--features fdb") && said.matches("\n  - ").count() == 1;
            if !out.status.success() && fdb_only && !cfg!(feature = "fdb") {
                eprintln!(
                    "SKIPPED: {overlay}'s {role} configuration needs a selvage built with --features fdb: {said}"
                );
                continue;
            }
            assert!(
                out.status.success(),
                "{overlay}: selvage {role} --check-config refuses the ConfigMap's TOML:\n{said}"
            );
            assert!(said.starts_with("ok: "), "{said}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "checked {checked} configurations");
}
