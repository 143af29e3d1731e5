//! `hookline`: one binary, one subcommand per service, so one image serves both Cloud Run
//! services and the embedded default runs with a single command.
//!
//! - `dev`: ingest and worker in one process on the embedded engines.
//! - `ingest` / `worker`: the two services, as deployed (they share the queue).
//! - `send`: sign a payload file as a configured source's provider would, and post it.
//! - `provision`: create the queue, archive and warehouse resources, idempotently.
//! - `replay`: move dead-lettered messages back to the main topic.
#![forbid(unsafe_code)]

mod commands;
mod shutdown;
mod telemetry;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hookline_shared::config::Settings;

#[derive(Debug, Parser)]
#[command(name = "hookline", version, about = "Webhook ingestion pipeline")]
struct Cli {
    /// Configuration file (TOML). Default: $HOOKLINE_CONFIG, else ./hookline.toml if present.
    #[arg(long, global = true, env = "HOOKLINE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: `pretty` for terminals, `json` for log collectors, `gcp` for Cloud Logging.
    #[arg(
        long,
        global = true,
        env = "HOOKLINE_LOG_FORMAT",
        default_value = "pretty"
    )]
    log_format: telemetry::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run ingest and worker together on the embedded engines (local development).
    Dev,
    /// Run the ingest service: receive, verify, enqueue.
    Ingest,
    /// Run the worker service: archive, warehouse, Slack.
    Worker,
    /// Sign a payload file for a configured source and POST it to a running ingest.
    Send(commands::send::SendArgs),
    /// Create the queue, archive and warehouse resources the configuration names (idempotent).
    Provision,
    /// Move dead-lettered messages back to the main topic (filters, --limit, --dry-run).
    Replay(commands::replay::ReplayArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Both rustls crypto providers are linked (the Google crates bring aws-lc-rs, others
    // ring); name the process default so no TLS client has to guess.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref());
    let project = settings
        .as_ref()
        .ok()
        .map(|s| s.gcp.project.clone())
        .filter(|p| !p.is_empty());
    telemetry::init(cli.log_format, project);
    let settings = settings?;
    match cli.command {
        Command::Dev => commands::serve::dev(settings).await,
        Command::Ingest => commands::serve::ingest(settings, shutdown::signal()).await,
        Command::Worker => commands::serve::worker(settings, true, shutdown::signal()).await,
        Command::Send(args) => commands::send::run(&settings, args).await,
        Command::Provision => commands::provision::run(&settings).await,
        Command::Replay(args) => commands::replay::run(&settings, args).await,
    }
}
