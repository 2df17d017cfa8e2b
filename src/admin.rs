//! `selvage admin`: workspaces, users, tokens and the search index from the command line, through a running
//! origin's HTTP API (the embedded store is locked by the origin that has it open).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// `selvage admin` arguments.
#[derive(Args)]
pub struct AdminArgs {
    /// The origin's base URL.
    #[arg(long, env = "SELVAGE_URL", default_value = "http://127.0.0.1:7700")]
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
        let message = value["error"]["message"].as_str().unwrap_or("no message");
        let code = value["error"]["code"].as_str().unwrap_or("unknown");
        bail!("{url} answered {status}: {code}: {message}");
    }
    Ok(value)
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
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
