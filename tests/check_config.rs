//! `selvage origin --check-config` and `selvage edge --check-config`, as an ops team's CI runs
//! them: the real binary, the shipped example files, the environment and flags layered on top;
//! `ok: …` and exit 0, or every problem on stderr and exit 2.

use std::{
    path::Path,
    process::{Command, Output},
};

/// `--check-config`'s exit status for a configuration that would not start.
const INVALID: i32 = 2;
/// A fingerprint in the shape `selvage origin` prints.
const FINGERPRINT: &str = "3f0c5a2b3f0c5a2b3f0c5a2b3f0c5a2b3f0c5a2b3f0c5a2b3f0c5a2b3f0c5a2b";

/// Runs `selvage` in `dir` with no `SELVAGE_*` variable but those of `env`.
fn selvage(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selvage"));
    cmd.current_dir(dir).args(args).env("RUST_LOG", "warn");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SELVAGE_")) {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("selvage runs")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("infra").join(name).display().to_string()
}

/// The run passed: exit 0 and an `ok:` line; answers that line.
fn passed(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "refused: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("ok: "), "{stdout}");
    stdout.trim().to_string()
}

/// The run was refused with exit 2; answers what it printed on stderr.
fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(INVALID), "stdout {:?}, stderr {stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", String::from_utf8_lossy(&out.stdout));
    stderr
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn the_shipped_examples_pass() {
    let dir = tempfile::tempdir().unwrap();
    let origin = example("origin.example.toml");
    let summary = passed(&selvage(dir.path(), &["origin", "--check-config", "--config", &origin], &[]));
    assert!(summary.contains("127.0.0.1:7700") && summary.contains("embedded"), "{summary}");
    // Checked, not started: nothing was made on disk and no port was taken.
    assert!(!dir.path().join("selvage-data").exists(), "the check created the data directory");

    // With its secrets from the environment, as a deployment gives them, and the link on.
    let env =
        [("SELVAGE_OPERATOR_KEY", "an-operator-key-long-enough"), ("SELVAGE_LINK__EDGE_KEY", "a-link-key-long-enough")];
    let summary = passed(&selvage(dir.path(), &["origin", "--check-config", "--config", &origin], &env));
    assert!(summary.contains("edge link on 127.0.0.1:7701") && summary.contains("operator key set"), "{summary}");

    let edge = example("edge.example.toml");
    let env = [("SELVAGE_ORIGIN__EDGE_KEY", "a-link-key-long-enough"), ("SELVAGE_ORIGIN__FINGERPRINT", FINGERPRINT)];
    let summary = passed(&selvage(dir.path(), &["edge", "--check-config", "--config", &edge], &env));
    assert!(summary.contains("edge edge-1 on 127.0.0.1:7800") && summary.contains("fingerprint"), "{summary}");
}

#[test]
fn an_edge_without_its_link_secrets_is_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let edge = example("edge.example.toml");
    let err = refused(&selvage(dir.path(), &["edge", "--check-config", "--config", &edge], &[]));
    assert!(err.contains("invalid edge configuration (2 problems)"), "{err}");
    assert!(err.contains("origin.edge_key") && err.contains("origin.fingerprint"), "{err}");
    // A key too short counts as missing.
    let env = [("SELVAGE_ORIGIN__EDGE_KEY", "short"), ("SELVAGE_ORIGIN__FINGERPRINT", FINGERPRINT)];
    let err = refused(&selvage(dir.path(), &["edge", "--check-config", "--config", &edge], &env));
    assert!(err.contains("origin.edge_key must be set"), "{err}");
    // A fingerprint that is not one.
    let env = [("SELVAGE_ORIGIN__EDGE_KEY", "a-link-key-long-enough"), ("SELVAGE_ORIGIN__FINGERPRINT", "abc")];
    let err = refused(&selvage(dir.path(), &["edge", "--check-config", "--config", &edge], &env));
    assert!(err.contains("origin.fingerprint"), "{err}");
}

#[test]
fn broken_toml_unknown_fields_and_bad_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let check =
        |role: &str, file: &str| refused(&selvage(dir.path(), &[role, "--check-config", "--config", file], &[]));

    let broken = write(dir.path(), "broken.toml", "listen = \"127.0.0.1:7700\n[sequencer]\n");
    let err = check("origin", &broken);
    assert!(err.contains("TOML parse error at line 1") && err.contains("broken.toml"), "{err}");

    let unknown = write(dir.path(), "unknown.toml", "[sequencer]\nqueue_capacty = 10\n");
    let err = check("origin", &unknown);
    assert!(err.contains("queue_capacty") && err.contains("sequencer"), "{err}");
    let unknown = write(dir.path(), "unknown-edge.toml", "[sessions]\nheartbeat = 10\n");
    let err = check("edge", &unknown);
    assert!(err.contains("heartbeat") && err.contains("sessions"), "{err}");

    let wrong_type = write(dir.path(), "type.toml", "listen = \"not an address\"\n");
    let err = check("origin", &wrong_type);
    assert!(err.contains("invalid socket address") && err.contains("listen"), "{err}");

    // Every rule broken is reported at once, each naming its field.
    let bad = write(
        dir.path(),
        "bad.toml",
        "operator_key = \"short\"\n[sequencer]\nshards = 100\n[link]\nedge_key = \"short\"\n[consumers]\nnice = 40\n",
    );
    let err = check("origin", &bad);
    assert!(err.contains("(4 problems)"), "{err}");
    for field in ["operator_key", "sequencer.shards", "link.edge_key", "consumers.nice"] {
        assert!(err.contains(field), "{field} is not named: {err}");
    }

    let out = selvage(dir.path(), &["origin", "--check-config", "--config", "/nonexistent/origin.toml"], &[]);
    assert!(refused(&out).contains("does not exist"));
}

#[test]
fn the_environment_and_flags_are_layered_as_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let origin = example("origin.example.toml");
    let env = [("SELVAGE_SEQUENCER__SHARDS", "100")];
    let err = refused(&selvage(dir.path(), &["origin", "--check-config", "--config", &origin], &env));
    assert!(err.contains("sequencer.shards"), "the environment beats the file: {err}");
    let args = ["origin", "--check-config", "--config", &origin, "--operator-key", "short"];
    let err = refused(&selvage(dir.path(), &args, &[("SELVAGE_OPERATOR_KEY", "an-operator-key-long-enough")]));
    assert!(err.contains("operator_key must be at least 16"), "the flag beats the environment: {err}");
    let args = ["origin", "--check-config", "--listen", "127.0.0.1:9123", "--data-dir", "elsewhere"];
    let summary = passed(&selvage(dir.path(), &args, &[]));
    assert!(summary.contains("127.0.0.1:9123") && summary.contains("elsewhere"), "{summary}");
}

#[test]
fn files_a_start_would_read_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");

    // The origin's link certificate (read only when the link is on) and its data directory.
    let link =
        format!("[link]\nedge_key = \"a-link-key-long-enough\"\ncert_file = \"{missing}\"\nkey_file = \"{garbage}\"\n");
    let file = write(dir.path(), "link.toml", &link);
    let err = refused(&selvage(dir.path(), &["origin", "--check-config", "--config", &file], &[]));
    assert!(err.contains("link.cert_file and link.key_file") && err.contains("missing.pem"), "{err}");
    let not_a_dir = write(dir.path(), "a-file", "");
    let args = ["origin", "--check-config", "--data-dir", &not_a_dir];
    let err = refused(&selvage(dir.path(), &args, &[]));
    assert!(err.contains("data_dir") && err.contains("is not a directory"), "{err}");

    // The edge's QUIC certificate, the origin's CA bundle, the API the web client passes to.
    let edge = format!(
        "cert_file = \"{garbage}\"\nkey_file = \"{garbage}\"\n[origin]\nedge_key = \"a-link-key-long-enough\"\n\
         ca_file = \"{missing}\"\nlink = \"origin.internal\"\n[web]\napi_url = \"ftp://origin\"\n"
    );
    let file = write(dir.path(), "edge.toml", &edge);
    let err = refused(&selvage(dir.path(), &["edge", "--check-config", "--config", &file], &[]));
    assert!(err.contains("(4 problems)"), "{err}");
    for field in ["cert_file and key_file", "origin.ca_file", "origin.link", "web.api_url"] {
        assert!(err.contains(field), "{field} is not named: {err}");
    }
}
