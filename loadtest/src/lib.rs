//! The Selvage load tester: drives a deployment, measures it, and checks what it promised.
//!
//! Scenarios:
//! - [`sends`]: durable sends per second and ack latency against an origin, over HTTP or (to
//!   measure the sequencer and storage without HTTP) in process;
//! - [`hello`]: warm boot latency and `hello` size at an edge, against a full-snapshot boot;
//! - [`fanout`]: deliveries per second through one edge, their latency, and a check that every
//!   subscriber got every message once and in order;
//! - [`idle`]: edge memory per idle session;
//! - [`files`]: the files service — upload URLs issued per second, `complete` → `message` event
//!   latency at a member on the edge, and many uploads at once through presigned URLs while the
//!   origin's memory is watched;
//! - [`search`]: full-text search — a realistic corpus ([`corpus`]) sent through the sequencer
//!   and indexed by the feed consumer `search`, then searchers in a closed loop, against
//!   PostgreSQL's full-text search on the same corpus and queries;
//! - [`presence`]: presence fan-out with subscriptions against every change to every session;
//! - [`scenario`]: `run SCENARIO`, the scenario files of `loadtest/scenarios/` (steady chat,
//!   hot channel, soak, boot and reconnect storms, slow consumers, mixed) with a checker of
//!   every client's history and report.json / report.html;
//! - [`wan`]: not a scenario but a proxy adding delay, jitter and loss, for trying a far edge.
//!
//! Scenarios connect with the client SDK, `selvage_client` (WebSocket and QUIC); [`lean`] is the
//! bare WebSocket client the edge scenarios hold many sessions with. [`deployment`] starts or
//! finds the system under test, [`seed`] fills it through the origin's HTTP API, [`report`]
//! summarises, [`html`] renders a run's report.json as a page.

pub mod corpus;
pub mod deployment;
pub mod fanout;
pub mod files;
pub mod hello;
pub mod html;
pub mod idle;
pub mod in_process;
pub mod lean;
pub mod nats;
pub mod notify;
pub mod presence;
pub mod report;
pub mod scenario;
pub mod search;
pub mod seed;
pub mod sends;
pub mod wan;
pub mod webhooks;

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
    /// Warm `hello` latency and payload size at an edge for a user in many channels of a large
    /// workspace, against a full-snapshot boot of the same workspace.
    Hello(hello::HelloArgs),
    /// Fan-out through one edge: deliveries per second and their latency, closed loop or at a
    /// fixed rate, checking every subscriber got every message once and in order.
    Fanout(fanout::FanoutArgs),
    /// The files service: upload URLs issued per second, `complete` → `message` event latency
    /// at a member on the edge, and many uploads at once end to end through the object store
    /// while the origin's memory is watched.
    Files(files::FilesArgs),
    /// Full-text search: a realistic corpus (1,000,000 messages by default, 10% CJK) indexed
    /// by the feed consumer `search` (messages/s, index size), then searchers as a user in 50
    /// of 1,000 private channels (p50/p99, searches/s), against PostgreSQL's full-text search
    /// on the same corpus and queries with `--postgres`.
    Search(search::SearchArgs),
    /// Notifications: the cost of deciding an `@channel` for 10,000 members (time and CPU per
    /// message), the sequencer's rate with the notifier busy against with it off, Web Push
    /// deliveries per second to a local receiver (against pywebpush with `--peer-python`) and
    /// mention → push latency.
    Notify(notify::NotifyArgs),
    /// Event webhooks: deliveries per second to 100 local endpoints, event → delivered latency,
    /// the cost of a signature, and the sequencer's rate with deliveries running against with
    /// webhooks off.
    Webhooks(webhooks::WebhooksArgs),
    /// Edge memory per idle WebSocket session (against an edge in its own process).
    Idle(idle::IdleArgs),
    /// Presence fan-out with subscriptions (`presence_sub`) against without (every change to
    /// every session), on the same workload, in process.
    Presence(presence::PresenceArgs),
    /// The fan-out workload against nats-server over WebSocket (NATS text protocol), to compare
    /// with `fanout` on the same machine.
    NatsFanout(nats::NatsArgs),
    /// WAN emulation: a proxy adding delay, jitter and loss between two addresses, for TCP and
    /// UDP (QUIC), so an edge far from its origin can be tried on one machine.
    WanProxy(wan::WanArgs),
    /// Runs a scenario file (steady, hot-channel, soak, boot-storm, reconnect-storm,
    /// slow-consumers, mixed, or a path) against an edge with many clients, checks every
    /// client's history, and writes report.json and report.html.
    Run(scenario::RunArgs),
}

/// Runs the chosen load test and prints its report.
pub async fn run(args: LoadtestArgs) -> Result<()> {
    match args.command {
        LoadtestCommand::Sends(a) => sends::run(a).await,
        LoadtestCommand::Hello(a) => hello::run(a).await,
        LoadtestCommand::Fanout(a) => fanout::run(a).await,
        LoadtestCommand::Files(a) => files::run(a).await,
        LoadtestCommand::Search(a) => search::run(a).await,
        LoadtestCommand::Notify(a) => notify::run(a).await,
        LoadtestCommand::Webhooks(a) => webhooks::run(a).await,
        LoadtestCommand::NatsFanout(a) => nats::run(a).await,
        LoadtestCommand::Idle(a) => idle::run(a).await,
        LoadtestCommand::Presence(a) => presence::run(a).await,
        LoadtestCommand::WanProxy(a) => wan::run(a).await,
        LoadtestCommand::Run(a) => scenario::run(a).await,
    }
}
