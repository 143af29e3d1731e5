//! `hookline replay`: move dead-lettered messages back to the main topic (see
//! [`hookline::replay`]).

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use hookline::engines::{open_dead_letters, open_publisher};
use hookline::replay::{Filter, Options};
use hookline_shared::config::Settings;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Only this source.
    #[arg(long)]
    source: Option<String>,
    /// Only this event type.
    #[arg(long)]
    event_type: Option<String>,
    /// Only deliveries received at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only deliveries received before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Only failures whose reason or sink contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Replay at most this many.
    #[arg(long)]
    limit: Option<u64>,
    /// List what would be replayed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seconds without new dead letters after which the run ends.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
}

pub async fn run(settings: &Settings, args: ReplayArgs) -> anyhow::Result<()> {
    let dead_letters = open_dead_letters(settings).await?;
    let main = open_publisher(settings).await?;
    let options = Options {
        filter: Filter {
            source: args.source,
            event_type: args.event_type,
            since: args.since,
            until: args.until,
            reason: args.reason,
        },
        limit: args.limit,
        dry_run: args.dry_run,
        idle: Duration::from_secs(args.idle_secs),
    };
    let report = hookline::replay::run(dead_letters.as_ref(), main.as_ref(), &options)
        .await
        .context("reading the dead-letter queue")?;
    println!("{report}");
    anyhow::ensure!(
        report.failed == 0,
        "{} republishes failed; run replay again",
        report.failed
    );
    Ok(())
}
