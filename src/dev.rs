//! `selvage dev`: Selvage on one machine for development — an origin on the embedded store with
//! a demo workspace (alice, an admin, and bob, both in #general), one edge linked to it, an S3
//! endpoint (s3local) under the data directory for the origin's files service, and a mailbox
//! (an SMTP sink) that keeps the notifier's email digests as files, printing where to connect.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use selvage_origin::{accounts, OriginConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `selvage dev` arguments.
#[derive(Args)]
pub struct DevArgs {
    /// Address of the origin's HTTP API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: std::net::SocketAddr,
    /// UDP address of the origin's link to the edge.
    #[arg(long, default_value = "127.0.0.1:7701")]
    link_listen: std::net::SocketAddr,
    /// Address of the edge's WebSocket endpoint.
    #[arg(long, default_value = "127.0.0.1:7800")]
    edge_listen: std::net::SocketAddr,
    /// UDP address of the edge's client QUIC endpoint.
    #[arg(long, default_value = "127.0.0.1:7801")]
    edge_quic_listen: std::net::SocketAddr,
    /// Address of the S3 endpoint the files service stores in (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7900")]
    s3_listen: std::net::SocketAddr,
    /// Where the dev data lives (kept between runs).
    #[arg(long, default_value = "selvage-dev")]
    data_dir: PathBuf,
    /// Delete the data directory first and start from nothing.
    #[arg(long)]
    fresh: bool,
    /// Turn off the rate limits per token (on by default, as in production): for
    /// `selvage loadtest run --target` at scale, whose simulated clients share a few tokens.
    #[arg(long)]
    no_rate_limits: bool,
}

/// What `selvage dev` remembers about its demo workspace between runs (ids only, no tokens:
/// fresh tokens are minted at every start).
#[derive(Serialize, Deserialize)]
struct Demo {
    workspace: selvage_shared::WorkspaceId,
    /// (user id, handle) of the demo users.
    users: Vec<(selvage_shared::UserId, String)>,
}

/// Starts the dev origin, ensures the demo workspace, prints how to use it, and runs until
/// Ctrl-C.
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> Result<()> {
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("cannot remove {}", args.data_dir.display()))?;
    }
    let operator_key = selvage_origin::ids::new_token().replacen(selvage_origin::ids::TOKEN_PREFIX, "op_", 1);
    let edge_key = selvage_origin::ids::new_token();
    let mut config = OriginConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        operator_key: Some(operator_key.clone()),
        ..OriginConfig::default()
    };
    config.link.listen = args.link_listen;
    config.rate_limits.enabled = !args.no_rate_limits;
    config.link.edge_key = Some(edge_key.clone());
    // Files: an S3 endpoint in this process, its objects under the data directory
    // (ARCHITECTURE §8 "Files"). Clients upload to and download from it directly.
    let s3_options =
        selvage_s3local::Options { listen: args.s3_listen, ..selvage_s3local::Options::new(args.data_dir.join("s3")) };
    let s3 = selvage_s3local::S3Local::start_with_shutdown(s3_options, shutdown.clone())
        .await
        .with_context(|| format!("cannot start the dev S3 endpoint on {}", args.s3_listen))?;
    config.files.enabled = true;
    config.files.endpoint = Some(s3.endpoint());
    config.files.region = selvage_s3local::DEFAULT_REGION.into();
    config.files.bucket = selvage_s3local::DEFAULT_BUCKET.into();
    config.files.path_style = true;
    config.files.access_key_id = Some(selvage_s3local::DEFAULT_ACCESS_KEY.into());
    config.files.secret_access_key = Some(selvage_s3local::DEFAULT_SECRET_KEY.into());
    // Email: digests go to a mailbox in this process that keeps each as a file; the demo users
    // have addresses, and a digest goes out after a minute away rather than fifteen.
    let mailbox = crate::mailbox::start(&args.data_dir.join("mail"), shutdown.clone())
        .await
        .context("cannot start the dev mailbox")?;
    config.notify.smtp_url = format!("smtp://{}", mailbox.addr);
    config.notify.email_after_ms = 60_000;
    let running = selvage_origin::start(config, shutdown.clone()).await?;
    let (Some(link_addr), Some(link_fingerprint)) = (running.link_addr, running.link_fingerprint.clone()) else {
        anyhow::bail!("the origin's edge link did not start");
    };
    let mut edge_config = selvage_edge::EdgeConfig {
        listen: args.edge_listen,
        quic_listen: Some(args.edge_quic_listen),
        operator_key: Some(operator_key.clone()),
        ..Default::default()
    };
    // `selvage loadtest run --target` against this edge shares a few users' tokens among
    // many simulated clients, far past a person's devices.
    edge_config.sessions.max_connections_per_user = selvage_loadtest::deployment::LOADTEST_CONNECTIONS_PER_USER;
    edge_config.rate_limits.enabled = !args.no_rate_limits;
    edge_config.origin.link = link_addr.to_string();
    edge_config.origin.fingerprint = Some(link_fingerprint);
    edge_config.origin.edge_key = edge_key;
    // The web client on the edge passes the API through to this origin, and shows files from
    // the S3 endpoint.
    edge_config.web.api_url = format!("http://{}", running.addr);
    edge_config.web.connect_origins = vec![s3.endpoint()];
    let edge = selvage_edge::start(edge_config, shutdown).await?;
    let origin = running.origin.clone();
    let demo_file = args.data_dir.join("demo.json");
    let demo: Demo = match std::fs::read(&demo_file).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(demo) => demo,
        None => {
            let (workspace, alice) = origin.create_workspace("Demo", "alice", "Alice").await?;
            let bob = origin.create_user(&alice, "bob", "Bob").await?;
            for actor in [&alice, &bob] {
                let caller = accounts::authenticate(&origin.store, actor.token()).await?;
                let prefs = selvage_shared::NotifyPrefs {
                    email_address: Some(format!("{}@demo.invalid", actor.user().handle)),
                    ..selvage_shared::NotifyPrefs::default()
                };
                selvage_origin::notify::put_prefs(&origin.store, &caller, prefs).await?;
            }
            seed_conversation(&origin, &alice, &bob).await?;
            let users = [&alice, &bob].iter().map(|a| (a.user().id.clone(), a.user().handle.clone())).collect();
            let demo = Demo { workspace: workspace.id, users };
            std::fs::write(&demo_file, serde_json::to_vec_pretty(&demo)?)?;
            demo
        }
    };
    let base = format!("http://{}", running.addr);
    println!("\nSelvage dev is running.\n");
    println!("  web client        http://{}/   (sign-in links below)", edge.addr);
    println!("  edge WebSocket    ws://{}/v1/connect?token=TOKEN   (metrics: http://{}/metrics)", edge.addr, edge.addr);
    if let (Some(addr), Some(fp)) = (edge.quic_addr, edge.quic_fingerprint.as_deref()) {
        println!("  edge QUIC         {addr}   (ALPN selvage/1; pin certificate sha256 {fp})");
    }
    println!("  origin HTTP API   {base}   (OpenAPI: {base}/v1/openapi.json, metrics: {base}/metrics)");
    println!(
        "  files (S3)        {}   (bucket {}, path-style; objects under {})",
        s3.endpoint(),
        selvage_s3local::DEFAULT_BUCKET,
        s3.root().display()
    );
    println!(
        "  email (SMTP)      smtp://{}   (digests of what stays unread a minute, kept as files in {})",
        mailbox.addr,
        mailbox.dir.display()
    );
    println!("  data directory    {}", args.data_dir.display());
    println!("  operator key      {operator_key}   (valid for this run)");
    println!("\nDemo workspace {}; fresh tokens for this run:", demo.workspace);
    let mut first_token = None;
    let mut links = Vec::new();
    for (user, handle) in &demo.users {
        let token = accounts::mint_token(&origin.store, &demo.workspace, user, 0).await?;
        println!("  {handle:<6} {user}  {token}");
        // The token rides in the fragment, which a browser never sends to a server.
        links.push(format!("  {handle:<6} http://{}/#token={token}", edge.addr));
        first_token.get_or_insert(token);
    }
    println!("\nOpen the web client, signed in (one link per demo user; try two windows):");
    for link in links {
        println!("{link}");
    }
    if let Some(token) = first_token {
        let caller = accounts::authenticate(&origin.store, &token).await?;
        let general = selvage_origin::channels::list(&origin.store, &caller)
            .await?
            .into_iter()
            .find(|c| c.channel.name == "general")
            .map(|c| c.channel.id.to_string())
            .unwrap_or_else(|| "<channel id>".into());
        let head = selvage_origin::feed::cursor(&origin.feed.head().await?);
        println!("\nTry (as alice; #general is {general}):");
        println!("  curl -s -H 'Authorization: Bearer {token}' {base}/v1/channels");
        println!(
            "  curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n       -d '{{\"text\":\"hello\",\"client_msg_id\":\"m1\"}}' {base}/v1/channels/{general}/messages"
        );
        println!("  curl -s -H 'Authorization: Bearer {token}' '{base}/v1/events?cursor={head}&wait_ms=25000'");
        println!(
            "  curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n       -d '{{\"name\":\"notes.txt\",\"size\":5,\"content_type\":\"text/plain\"}}' {base}/v1/files   (then PUT to upload.url, POST /v1/files/ID/complete)"
        );
        println!("\nOr hold a session on the edge (any WebSocket client, e.g. websocat):");
        println!("  websocat 'ws://{}/v1/connect?token={token}'", edge.addr);
        println!(
            "  {{\"type\":\"send\",\"id\":\"1\",\"channel\":\"{general}\",\"text\":\"hi\",\"client_msg_id\":\"m2\"}}"
        );
    }
    println!("\nCtrl-C stops it.\n");
    edge.wait().await;
    running.wait().await;
    // Last, so that the origin's work in flight could still reach it.
    s3.shutdown().await;
    Ok(())
}

/// A first conversation in the demo workspace, so the web client opens on something to read:
/// a few messages in `#general`, a thread, and `#random`.
async fn seed_conversation(
    origin: &selvage_origin::Origin,
    alice: &selvage_origin::Actor,
    bob: &selvage_origin::Actor,
) -> Result<()> {
    let channels = origin.channels(alice).await?;
    let Some(general) = channels.iter().find(|c| c.name == "general") else {
        return Ok(());
    };
    let welcome = origin
        .send(alice, &general.id, "Welcome to Selvage! Everyone in the workspace is in #general.", "demo-welcome")
        .await?;
    origin
        .send(bob, &general.id, "Hi Alice. Threads, reactions, mentions, files and search all work here.", "demo-hi")
        .await?;
    origin
        .reply(bob, &general.id, welcome.message.seq, "A reply in the welcome message's thread.", "demo-reply")
        .await?;
    origin.create_channel(alice, "random", false).await?;
    Ok(())
}
