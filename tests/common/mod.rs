//! Helpers shared by the tests that run the real `selvage` binary.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

/// The operator key the spawned origins are started with.
pub const OPERATOR_KEY: &str = "binary-test-operator-key-42";

/// A `selvage origin` child process and the base URL it printed.
pub struct OriginProcess {
    pub child: Child,
    pub base: String,
}

impl OriginProcess {
    /// Starts `selvage origin` on port 0 over `data_dir` and waits for its address.
    pub fn spawn(data_dir: &Path) -> Self {
        Self::spawn_with(data_dir, &[])
    }

    /// [`OriginProcess::spawn`] with more `SELVAGE_*` settings in its environment.
    pub fn spawn_with(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_selvage"))
            .args(["origin", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .envs(env.iter().copied())
            .env("SELVAGE_OPERATOR_KEY", OPERATOR_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("selvage binary runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("origin prints its address");
        let base = line.trim().rsplit(' ').next().expect("an address").to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "unexpected first line {line:?}");
        OriginProcess { child, base }
    }

    /// SIGKILL: no shutdown hook, no flush, nothing graceful.
    pub fn kill_9(&mut self) {
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 failed");
        self.child.wait().expect("reaped");
    }
}

impl Drop for OriginProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request's status and JSON body, as these tests read every answer.
pub async fn call(req: reqwest::RequestBuilder) -> (reqwest::StatusCode, serde_json::Value) {
    let resp = req.send().await.expect("the origin answers");
    let status = resp.status();
    (status, resp.json().await.expect("a JSON body"))
}
