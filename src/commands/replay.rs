//! `hookline replay`: move dead-lettered messages back to the main topic (see
//! [`hookline::replay`]), or publish processed deliveries again from the archive (see
//! [`hookline::replay_archive`]).

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use hookline::engines::{open_dead_letters, open_publisher};
use hookline::replay::{Filter, Options, Report};
use hookline::replay_archive::ArchiveOptions;
use hookline_shared::config::Settings;
use hookline_worker::pipeline::{archive_from_settings, warehouse_from_settings};

/// Where replayed messages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum From {
    /// The dead-letter side: failed messages, removed from it once republished.
    DeadLetters,
    /// The archive, indexed by the warehouse: processed deliveries of one source and time
    /// range (needs --source and --since); steps already done are skipped by the worker.
    Archive,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Where to replay from.
    #[arg(long, value_enum, default_value = "dead-letters")]
    from: From,
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
    if args.from == From::Archive {
        return from_archive(settings, args).await;
    }
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
    finish(&report)
}

async fn from_archive(settings: &Settings, args: ReplayArgs) -> anyhow::Result<()> {
    let (Some(source), Some(since)) = (args.source, args.since) else {
        anyhow::bail!("--from archive needs --source and --since (and takes --until, default now)");
    };
    anyhow::ensure!(
        args.reason.is_none(),
        "--reason filters dead letters; archived deliveries have no failure reason"
    );
    anyhow::ensure!(
        settings.sources.contains_key(&source),
        "no source named {source:?} is configured"
    );
    let until = args.until.unwrap_or_else(Utc::now);
    anyhow::ensure!(since < until, "--since must be before --until");
    let warehouse = warehouse_from_settings(settings)
        .await
        .context("opening the warehouse (the replay index)")?;
    let archive = archive_from_settings(settings)
        .await
        .context("opening the archive")?;
    let main = open_publisher(settings).await?;
    let options = ArchiveOptions {
        source,
        event_type: args.event_type,
        since,
        until,
        limit: args.limit,
        dry_run: args.dry_run,
        page: ArchiveOptions::PAGE,
    };
    let report = hookline::replay_archive::run(
        warehouse.as_ref(),
        archive.as_ref(),
        main.as_ref(),
        &options,
    )
    .await
    .context("reading the warehouse index")?;
    finish(&report)
}

fn finish(report: &Report) -> anyhow::Result<()> {
    println!("{report}");
    anyhow::ensure!(
        report.failed == 0,
        "{} deliveries were not replayed; run replay again (replaying twice is harmless)",
        report.failed
    );
    Ok(())
}
