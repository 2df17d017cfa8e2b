//! `selvage`: the one binary. Parses the command line and configuration, sets up tracing, and
//! hands over to the libraries (`selvage-origin`, `selvage-loadtest`, …).

mod admin;
mod config;
mod dev;
mod mailbox;
mod s3;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Selvage: a real-time team-messaging backend.
///
/// An origin tier gives every channel one total order and stores messages durably before
/// acknowledging them; regional edges serve clients from warm caches and fan events out.
#[derive(Parser)]
#[command(name = "selvage", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine for development: an origin on the embedded store, with a
    /// demo workspace, and print where to connect and the demo users' tokens.
    Dev(dev::DevArgs),
    /// Run an origin node (HTTP API, sequencer, feed).
    ///
    /// Configuration is layered: built-in defaults, then the TOML file given with --config,
    /// then SELVAGE_* environment variables (nested fields with `__`, e.g.
    /// SELVAGE_SEQUENCER__QUEUE_CAPACITY), then the flags below.
    Origin(config::OriginArgs),
    /// Run an edge node: client WebSocket and QUIC connections served from warm caches, fed
    /// by the origin's feed over the QUIC link.
    ///
    /// Configuration is layered like the origin's (TOML file, SELVAGE_* environment with `__`
    /// for nested fields, e.g. SELVAGE_ORIGIN__EDGE_KEY, then flags). SIGTERM drains: clients
    /// get `goodbye` and are spread over the grace period before the edge exits.
    Edge(config::EdgeArgs),
    /// Administer a running origin over its HTTP API: workspaces, users, tokens, the search
    /// index, online backups — and restore a backup into a new data directory (offline).
    Admin(admin::AdminArgs),
    /// Run the S3-compatible endpoint of `selvage dev` on its own, for the origin's files
    /// service where no object store is at hand (a one-machine deployment, the compose demo).
    ///
    /// One credential, no TLS, objects as plain files: not for production. `GET /healthz`
    /// (unsigned) answers 200 for health checks. SIGTERM stops it once requests in flight end.
    S3(s3::S3Args),
    /// Load-test a deployment: durable sends, warm boots, fan-out through an edge, memory per
    /// session, the files service; and a WAN emulation proxy for trying a far-away edge on one machine.
    Loadtest(selvage_loadtest::LoadtestArgs),
}

/// jemalloc instead of the system allocator: the origin allocates many small, short-lived
/// buffers from several threads, where glibc's malloc spent a fifth of the CPU under load.
/// (mimalloc was as fast but lengthened the ack-latency tail several times over.)
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_tracing() {
    init_tracing_at("info");
}

/// Logging at `default` unless `RUST_LOG` says otherwise.
fn init_tracing_at(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Raises the soft limit on open files to the hard limit: an edge holds one descriptor per
/// client connection, and the load tester one per simulated client, so the usual soft limit of
/// 1,024 would cap them long before memory does. Never fails: without it the process runs
/// with the limit it was given.
fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit only writes the struct passed by pointer, which outlives the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
            return;
        }
        if limit.rlim_cur >= limit.rlim_max {
            tracing::debug!(open_files = limit.rlim_cur, "open-file limit already at its hard limit");
            return;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct passed by pointer, which outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(open_files = raised.rlim_cur, "raised the open-file limit to its hard limit");
        } else {
            let error = std::io::Error::last_os_error();
            tracing::debug!(%error, open_files = limit.rlim_cur, "cannot raise the open-file limit");
        }
    }
}

/// A token cancelled on Ctrl-C or SIGTERM: the one shutdown root of the process.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C still works");
                    let _ = ctrl_c.await;
                    cancel.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

/// Exit status of `--check-config` for a configuration that would not start.
const INVALID_CONFIG: i32 = 2;

/// Prints the outcome of `--check-config` — `ok: <summary>` on stdout, or every problem on
/// stderr — and exits 0 or [`INVALID_CONFIG`].
fn report_check(role: &str, outcome: Result<String, Vec<String>>) -> Result<()> {
    match outcome {
        Ok(summary) => {
            println!("ok: {summary}");
            Ok(())
        }
        Err(problems) => {
            eprintln!("invalid {role} configuration ({} problem{}):", problems.len(), plural(problems.len()));
            for problem in &problems {
                // A TOML parse error spans lines (the line and a caret under the column).
                eprintln!("  - {}", problem.replace('\n', "\n    "));
            }
            std::process::exit(INVALID_CONFIG)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Origin(args) if args.check_config => {
            init_tracing_at("warn");
            report_check("origin", config::check_origin(args.config.as_deref(), &args.flags))
        }
        Command::Edge(args) if args.check_config => {
            init_tracing_at("warn");
            report_check("edge", config::check_edge(args.config.as_deref(), &args.flags))
        }
        Command::Origin(args) => {
            init_tracing();
            raise_fd_limit();
            let config = config::load_origin(args.config.as_deref(), &args.flags)?;
            let shutdown = shutdown_on_signals();
            let running = selvage_origin::start(config, shutdown).await?;
            println!("selvage origin listening on http://{}", running.addr);
            if let (Some(addr), Some(fingerprint)) = (running.link_addr, running.link_fingerprint.as_deref()) {
                // A reader that stopped after the first line (a script waiting for the address)
                // must not take the origin down with a broken pipe, so write errors are ignored.
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "selvage origin link on quic://{addr} fingerprint {fingerprint}");
                let _ = out.flush();
            }
            running.wait().await;
            // FoundationDB's network thread must be stopped before the process exits.
            #[cfg(feature = "fdb")]
            selvage_origin::store::fdb::stop_network();
            Ok(())
        }
        Command::Edge(args) => {
            init_tracing();
            raise_fd_limit();
            let config = config::load_edge(args.config.as_deref(), &args.flags)?;
            let grace = std::time::Duration::from_millis(config.sessions.drain_grace_ms);
            let signals = shutdown_on_signals();
            let shutdown = CancellationToken::new();
            let running = selvage_edge::start(config, shutdown.clone()).await?;
            println!("selvage edge listening on ws://{}/v1/connect", running.addr);
            if let (Some(addr), Some(fp)) = (running.quic_addr, running.quic_fingerprint.as_deref()) {
                println!("selvage edge quic on {addr} fingerprint {fp}");
            }
            let edge = running.edge.clone();
            tokio::spawn(async move {
                signals.cancelled().await;
                edge.start_drain();
                tokio::time::sleep(grace).await;
                shutdown.cancel();
            });
            running.wait().await;
            Ok(())
        }
        Command::Dev(args) => {
            init_tracing();
            raise_fd_limit();
            dev::run(args, shutdown_on_signals()).await
        }
        Command::Admin(args) => admin::run(args).await,
        Command::S3(args) => {
            init_tracing();
            s3::run(args, shutdown_on_signals()).await
        }
        Command::Loadtest(args) => {
            // An in-process origin and edge would drown the progress line in their info logs.
            init_tracing_at("warn");
            raise_fd_limit();
            selvage_loadtest::run(args).await
        }
    }
}
