//! `selvage admin`: workspaces, users, tokens, the search index and backups from the command
//! line, through a running origin's HTTP API (the embedded store is locked by the origin that
//! has it open) — and the one offline command, `restore`, which makes a new data directory
//! from a backup (docs/STORAGE.md, "Backup and restore").

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// `selvage admin` arguments.
#[derive(Args)]
pub struct AdminArgs {
    /// The origin's base URL (before or after the command).
    #[arg(long, visible_alias = "origin", global = true, env = "SELVAGE_URL", default_value = "http://127.0.0.1:7700")]
    url: String,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a workspace with its first admin; prints the admin's token (shown only once).
    CreateWorkspace {
        /// Workspace name.
        #[arg(long)]
        name: String,
        /// Handle of the first admin (a-z, 0-9, '.', '_', '-').
        #[arg(long)]
        admin: String,
        /// Display name of the first admin [default: the handle].
        #[arg(long)]
        admin_name: Option<String>,
        /// The origin's operator key.
        #[arg(long, env = "SELVAGE_OPERATOR_KEY", hide_env_values = true)]
        operator_key: String,
    },
    /// Create a user in the token's workspace (needs an admin token); prints their token.
    CreateUser {
        /// Handle of the new user.
        #[arg(long)]
        handle: String,
        /// Display name [default: the handle].
        #[arg(long)]
        name: Option<String>,
        /// Make the user a workspace admin.
        #[arg(long)]
        admin: bool,
        /// An admin's token.
        #[arg(long, env = "SELVAGE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Issue another token for the token's user.
    CreateToken {
        /// An existing token of the user.
        #[arg(long, env = "SELVAGE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Revoke a token: the given one, or with --revoke another (admins only).
    RevokeToken {
        /// The token to authenticate with.
        #[arg(long, env = "SELVAGE_TOKEN", hide_env_values = true)]
        token: String,
        /// The token to revoke [default: the one authenticating].
        #[arg(long)]
        revoke: Option<String>,
    },
    /// Deactivate a user (needs an admin token): every token of theirs is revoked and every
    /// live session closed at once; their history stays.
    DeactivateUser {
        /// The user's id (U…).
        #[arg(long)]
        user: String,
        /// An admin's token.
        #[arg(long, env = "SELVAGE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Reactivate a deactivated user (needs an admin token); prints a new token for them.
    ReactivateUser {
        /// The user's id (U…).
        #[arg(long)]
        user: String,
        /// An admin's token.
        #[arg(long, env = "SELVAGE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Rebuild the search index from the store, e.g. after restoring the store from a backup;
    /// prints how many messages it holds. Searches go on meanwhile, from the old index; the
    /// indexer waits, and catches up after.
    Reindex {
        /// The origin's operator key.
        #[arg(long, env = "SELVAGE_OPERATOR_KEY", hide_env_values = true)]
        operator_key: String,
    },
    /// Take an online, consistent backup of a running origin's embedded store into a file:
    /// every key at one version, while the origin goes on serving. The file is checked whole
    /// before it is given its name; prints its version and size.
    Backup {
        /// The origin's operator key.
        #[arg(long, env = "SELVAGE_OPERATOR_KEY", hide_env_values = true)]
        operator_key: String,
        /// The file to write (refused if it exists; written as FILE.partial until complete).
        #[arg(long)]
        out: PathBuf,
    },
    /// Drain an edge (--url is the edge's address here): POST URL/admin/drain, after waiting
    /// --after-ms. The edge reports not ready, refuses new connections and sends every session
    /// `goodbye`, spread over its drain grace. For Kubernetes' preStop hook (infra/k8s/), where
    /// the pause lets the pod's removal from the Service reach the load balancers first.
    Drain {
        /// The edge's operator key (its `operator_key`).
        #[arg(long, env = "SELVAGE_OPERATOR_KEY", hide_env_values = true)]
        operator_key: String,
        /// How long to wait before asking, ms.
        #[arg(long, default_value_t = 0)]
        after_ms: u64,
    },
    /// Check that a Selvage process answers: GET URL/healthz (--url, SELVAGE_URL: an origin, an
    /// edge or `selvage s3`) must answer 200 within --timeout-ms. Exits 0 if so, 1 otherwise;
    /// prints nothing on success. For container health checks, where the image has no curl.
    Health {
        /// Longest wait for the answer, ms.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Make a new origin data directory from a backup (offline: no origin needed, none may run
    /// on DIR). Refuses a directory that is not empty and a backup that is not whole.
    Restore {
        /// The backup file (from `selvage admin backup`).
        #[arg(long)]
        file: PathBuf,
        /// The new data directory (created if missing; `data_dir` of the origin to start on it).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

async fn call(client: &reqwest::Client, url: String, bearer: &str, body: Value) -> Result<Value> {
    let response = client
        .post(&url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the origin at {url}"))?;
    let status = response.status();
    let value: Value = response.json().await.with_context(|| format!("{url} answered {status} without JSON"))?;
    if !status.is_success() {
        return Err(refusal(&url, status, &value));
    }
    Ok(value)
}

/// The error for an origin's non-2xx answer `value` (`{"error": {code, message}}`).
fn refusal(url: &str, status: reqwest::StatusCode, value: &Value) -> anyhow::Error {
    let message = value["error"]["message"].as_str().unwrap_or("no message");
    let code = value["error"]["code"].as_str().unwrap_or("unknown");
    anyhow::anyhow!("{url} answered {status}: {code}: {message}")
}

/// Runs one admin command and prints its JSON result.
pub async fn run(args: AdminArgs) -> Result<()> {
    let client = reqwest::Client::new();
    let base = args.url.trim_end_matches('/');
    let result = match args.command {
        AdminCommand::CreateWorkspace { name, admin, admin_name, operator_key } => {
            let body = json!({ "name": name, "admin_handle": admin, "admin_name": admin_name });
            call(&client, format!("{base}/v1/workspaces"), &operator_key, body).await?
        }
        AdminCommand::CreateUser { handle, name, admin, token } => {
            let body = json!({ "handle": handle, "name": name, "admin": admin });
            call(&client, format!("{base}/v1/users"), &token, body).await?
        }
        AdminCommand::CreateToken { token } => call(&client, format!("{base}/v1/tokens"), &token, json!({})).await?,
        AdminCommand::RevokeToken { token, revoke } => {
            call(&client, format!("{base}/v1/tokens/revoke"), &token, json!({ "token": revoke })).await?
        }
        AdminCommand::DeactivateUser { user, token } => {
            call(&client, format!("{base}/v1/users/{user}/deactivate"), &token, json!({})).await?
        }
        AdminCommand::ReactivateUser { user, token } => {
            call(&client, format!("{base}/v1/users/{user}/reactivate"), &token, json!({})).await?
        }
        AdminCommand::Reindex { operator_key } => {
            call(&client, format!("{base}/v1/admin/search/reindex"), &operator_key, json!({})).await?
        }
        AdminCommand::Backup { operator_key, out } => backup(&client, base, &operator_key, &out).await?,
        AdminCommand::Restore { file, data_dir } => {
            tokio::task::spawn_blocking(move || restore(&file, &data_dir)).await.context("the restore stopped")??
        }
        AdminCommand::Drain { operator_key, after_ms } => {
            tokio::time::sleep(std::time::Duration::from_millis(after_ms)).await;
            drain(&client, base, &operator_key).await?
        }
        // Silent on success: a health check's output goes to the container runtime's log.
        AdminCommand::Health { timeout_ms } => {
            return health(&client, base, std::time::Duration::from_millis(timeout_ms)).await;
        }
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

/// `POST {base}/admin/drain` with the operator key; the edge answers 202.
async fn drain(client: &reqwest::Client, base: &str, operator_key: &str) -> Result<Value> {
    let url = format!("{base}/admin/drain");
    let response = client
        .post(&url)
        .bearer_auth(operator_key)
        .send()
        .await
        .with_context(|| format!("cannot reach the edge at {url}"))?;
    match response.status() {
        reqwest::StatusCode::ACCEPTED => Ok(json!({ "draining": true })),
        reqwest::StatusCode::UNAUTHORIZED => {
            bail!("{url} refused the operator key (401): give the edge's operator_key")
        }
        reqwest::StatusCode::NOT_FOUND => {
            bail!("{url} answered 404: the edge has no operator_key set, so its drain endpoint is off (SIGTERM drains)")
        }
        status => bail!("{url} answered {status}"),
    }
}

/// `GET {base}/healthz` must answer 200 within `timeout`.
async fn health(client: &reqwest::Client, base: &str, timeout: std::time::Duration) -> Result<()> {
    let url = format!("{base}/healthz");
    let response = client
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .with_context(|| format!("unhealthy: {url} did not answer within {} ms", timeout.as_millis()))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        bail!("unhealthy: {url} answered {status}");
    }
    Ok(())
}

/// Streams `GET /v1/admin/backup` into `out.partial`, syncs it, reads it back whole (header,
/// records, checksum), and only then renames it `out`. Nothing is left behind on failure.
async fn backup(client: &reqwest::Client, base: &str, operator_key: &str, out: &Path) -> Result<Value> {
    if out.exists() {
        bail!("{} exists: choose a new file for the backup", out.display());
    }
    let url = format!("{base}/v1/admin/backup");
    let mut response = client
        .get(&url)
        .bearer_auth(operator_key)
        .send()
        .await
        .with_context(|| format!("cannot reach the origin at {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let value: Value = response.json().await.unwrap_or_default();
        return Err(refusal(&url, status, &value));
    }
    let mut partial_name = out.as_os_str().to_owned();
    partial_name.push(".partial");
    let partial = PathBuf::from(partial_name);
    let written = async {
        let mut file =
            std::fs::File::create_new(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        let mut bytes = 0u64;
        while let Some(piece) = response.chunk().await.context("the backup stream broke off (see the origin's log)")? {
            file.write_all(&piece).with_context(|| format!("cannot write {}", partial.display()))?;
            bytes += piece.len() as u64;
        }
        file.sync_all().with_context(|| format!("cannot sync {}", partial.display()))?;
        let reader = std::io::BufReader::new(std::fs::File::open(&partial)?);
        let decoder = selvage_origin::store::backup::Decoder::open(reader)?;
        let (header, records) = decoder.verify().context("the backup received is not whole")?;
        std::fs::rename(&partial, out)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), out.display()))?;
        anyhow::Ok(json!({
            "file": out.display().to_string(),
            "version": header.version,
            "created_ms": header.created_ms,
            "records": records,
            "bytes": bytes,
        }))
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// Writes a new embedded store in `data_dir` (missing or empty but for `lost+found`, as a
/// freshly formatted volume has) from the backup `file`.
fn restore(file: &Path, data_dir: &Path) -> Result<Value> {
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(data_dir).with_context(|| format!("cannot read {}", data_dir.display()))?;
        if entries.any(|e| e.map_or(true, |e| e.file_name() != "lost+found")) {
            bail!("{} is not empty: restore into a new data directory", data_dir.display());
        }
    }
    let input = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let made = !data_dir.exists();
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let target = data_dir.join(selvage_origin::store::embedded::DATA_FILE);
    let restored = selvage_origin::store::embedded::restore(&target, std::io::BufReader::new(input));
    if restored.is_err() && made {
        // The restore removed what it wrote; the directory it was to go in goes too.
        let _ = std::fs::remove_dir(data_dir);
    }
    let restored = restored.with_context(|| format!("cannot restore {}", file.display()))?;
    Ok(json!({
        "data_dir": data_dir.display().to_string(),
        "version": restored.version,
        "continues_at": restored.continues_at,
        "records": restored.records,
    }))
}
