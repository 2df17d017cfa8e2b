//! The Selvage load tester: drives a deployment, measures it, and checks what it promised.
//!
//! So far it has one scenario, [`sends`]: durable sends per second and ack latency against an
//! origin, over HTTP or (to measure the sequencer and storage without HTTP) in process.
//!
//! [`client`] is the client SDK of the edge protocol (WebSocket and QUIC) that scenarios and the
//! end-to-end tests of the other crates connect with.

pub mod client;
pub mod report;
pub mod sends;

use anyhow::Result;
use clap::{Args, Subcommand};

/// `selvage loadtest` arguments.
#[derive(Args)]
pub struct LoadtestArgs {
    #[command(subcommand)]
    command: LoadtestCommand,
}

#[derive(Subcommand)]
enum LoadtestCommand {
    /// Durable sends: throughput (closed loop) or ack latency at a fixed rate (open loop).
    Sends(sends::SendsArgs),
}

/// Runs the chosen load test and prints its report.
pub async fn run(args: LoadtestArgs) -> Result<()> {
    match args.command {
        LoadtestCommand::Sends(a) => sends::run(a).await,
    }
}
