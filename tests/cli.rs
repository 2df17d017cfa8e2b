//! The `selvage` command line as an operator uses it: `selvage admin` against a running
//! `selvage origin` process, and configuration errors reported before anything starts.

mod common;

use std::process::{Command, Output};

use common::{OriginProcess, OPERATOR_KEY};
use serde_json::Value;

fn selvage(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selvage"));
    cmd.args(args).env_remove("SELVAGE_TOKEN").env_remove("SELVAGE_OPERATOR_KEY").env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("selvage runs")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("admin prints JSON")
}

#[test]
fn admin_creates_workspaces_users_and_tokens_through_a_running_origin() {
    let dir = tempfile::tempdir().unwrap();
    let origin = OriginProcess::spawn(dir.path());
    let url = origin.base.as_str();

    let ws = json_of(&selvage(
        &["admin", "--url", url, "create-workspace", "--name", "Acme", "--admin", "root"],
        &[("SELVAGE_OPERATOR_KEY", OPERATOR_KEY)],
    ));
    let admin_token = ws["token"].as_str().unwrap().to_string();
    assert_eq!(ws["user"]["handle"], "root");
    assert_eq!(ws["user"]["admin"], true);

    let bob = json_of(&selvage(
        &["admin", "--url", url, "create-user", "--handle", "bob"],
        &[("SELVAGE_TOKEN", &admin_token)],
    ));
    let bob_token = bob["token"].as_str().unwrap().to_string();
    assert_eq!(bob["user"]["handle"], "bob");
    assert_eq!(bob["user"]["admin"], false);

    let second = json_of(&selvage(&["admin", "--url", url, "create-token"], &[("SELVAGE_TOKEN", &bob_token)]));
    let second = second["token"].as_str().unwrap().to_string();
    assert_ne!(second, bob_token);

    // Bob revokes his first token; it stops working, the second does not.
    json_of(&selvage(&["admin", "--url", url, "revoke-token"], &[("SELVAGE_TOKEN", &bob_token)]));
    let refused = selvage(&["admin", "--url", url, "create-token"], &[("SELVAGE_TOKEN", &bob_token)]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unauthorized"), "{refused:?}");
    json_of(&selvage(&["admin", "--url", url, "create-token"], &[("SELVAGE_TOKEN", &second)]));

    // The admin deactivates bob (his tokens stop working) and reactivates him with a new token.
    let bob_id = bob["user"]["id"].as_str().unwrap();
    let off = json_of(&selvage(
        &["admin", "--url", url, "deactivate-user", "--user", bob_id],
        &[("SELVAGE_TOKEN", &admin_token)],
    ));
    assert_eq!(off["user"]["deactivated"], true);
    let refused = selvage(&["admin", "--url", url, "create-token"], &[("SELVAGE_TOKEN", &second)]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unauthorized"), "{refused:?}");
    let on = json_of(&selvage(
        &["admin", "--url", url, "reactivate-user", "--user", bob_id],
        &[("SELVAGE_TOKEN", &admin_token)],
    ));
    assert_eq!(on["user"]["deactivated"], false);
    let second = on["token"].as_str().unwrap().to_string();
    json_of(&selvage(&["admin", "--url", url, "create-token"], &[("SELVAGE_TOKEN", &second)]));

    // Non-admins cannot create users; a wrong operator key cannot create workspaces.
    let denied =
        selvage(&["admin", "--url", url, "create-user", "--handle", "eve"], &[("SELVAGE_TOKEN", second.as_str())]);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("forbidden"), "{denied:?}");
    let wrong = selvage(
        &["admin", "--url", url, "create-workspace", "--name", "X", "--admin", "x"],
        &[("SELVAGE_OPERATOR_KEY", "not-the-operator-key")],
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong operator key"), "{wrong:?}");

    // The operator rebuilds the search index; the workspace's messages are in it (none yet).
    let rebuilt = json_of(&selvage(&["admin", "--url", url, "reindex"], &[("SELVAGE_OPERATOR_KEY", OPERATOR_KEY)]));
    assert_eq!(rebuilt["documents"], 0, "{rebuilt}");
    let wrong = selvage(&["admin", "--url", url, "reindex"], &[("SELVAGE_OPERATOR_KEY", "not-the-operator-key")]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong operator key"), "{wrong:?}");
}

#[test]
fn admin_health_answers_for_a_running_origin_and_fails_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let origin = OriginProcess::spawn(dir.path());
    let healthy = selvage(&["admin", "health"], &[("SELVAGE_URL", origin.base.as_str())]);
    assert!(healthy.status.success(), "{healthy:?}");
    assert!(healthy.stdout.is_empty(), "silent on success: {healthy:?}");
    // Something that answers, but not 200: the origin's API has no /v1/healthz.
    let wrong = selvage(&["admin", "--url", &format!("{}/v1", origin.base), "health"], &[]);
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("answered 404"), "{wrong:?}");
    drop(origin);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = selvage(&["admin", "--url", &format!("http://127.0.0.1:{port}"), "health"], &[]);
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"), "{down:?}");
}

#[test]
fn admin_explains_an_unreachable_origin() {
    // Bind and drop a listener to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = selvage(
        &["admin", "--url", &format!("http://127.0.0.1:{port}"), "create-token"],
        &[("SELVAGE_TOKEN", "svt_x")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the origin"), "{out:?}");
}

#[test]
fn origin_refuses_bad_configuration_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("origin.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\n[sequencer]\nqueue_capacty = 10\n").unwrap();
    let out = selvage(&["origin", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queue_capacty"), "the unknown field is named: {err}");

    let out = selvage(&["origin", "--config", "/nonexistent/origin.toml"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{out:?}");

    let out = selvage(&["origin", "--store", "postgres"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use embedded or fdb"), "{out:?}");
}

#[test]
fn help_explains_every_command() {
    let out = selvage(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["dev", "origin", "admin", "loadtest"] {
        assert!(help.contains(command), "{command} missing from --help:\n{help}");
    }
    let out = selvage(&["origin", "--help"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SELVAGE_"), "origin --help names the environment layer");
}
