//! Operator replay from the archive: publish processed deliveries again, e.g. after a sink
//! was added (a new Slack rule) or a sink's data was lost.
//!
//! The warehouse is the index: its rows carry every attribute of the original message
//! (source, provider, event type, delivery id, receive time, content type, request id) and
//! the archive object holding the raw body, and it answers "one source, a time range" with
//! one query on either engine. An archive listing could not rebuild the attributes (objects
//! hold only the body). Each delivery goes back to the main topic with its own delivery id
//! and receive time, `replay_count` + 1 and `replayed_from=archive`, so the worker's ledger
//! skips every step already done and runs only the missing ones: replaying twice, or
//! re-running an interrupted replay, does nothing more than replaying once.

use std::collections::HashSet;
use std::io::IsTerminal as _;

use chrono::{DateTime, Utc};
use hookline_shared::envelope::{Envelope, attr, format_time};
use hookline_shared::queue::Publisher;
use hookline_shared::sink::{Archive, IndexQuery, SinkError, StoredDelivery, Warehouse};

use crate::replay::Report;

/// What to replay from the archive.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    pub source: String,
    pub event_type: Option<String>,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub limit: Option<u64>,
    pub dry_run: bool,
    /// Rows read from the warehouse per query.
    pub page: usize,
}

impl ArchiveOptions {
    /// The page size the command uses.
    pub const PAGE: usize = 500;
}

/// Replays what `options` selects, in receive order.
///
/// # Errors
/// Only a failure to read the index ends the run early; a body that cannot be read or a
/// republish that fails is counted in `failed` (and logged) and the run goes on.
pub async fn run(
    warehouse: &dyn Warehouse,
    archive: &dyn Archive,
    main: &dyn Publisher,
    options: &ArchiveOptions,
) -> Result<Report, SinkError> {
    let mut report = Report::default();
    let mut seen = HashSet::new();
    let mut after = None;
    let progress = std::io::stderr().is_terminal();
    let done = |r: &Report| {
        options
            .limit
            .is_some_and(|l| r.replayed + r.would_replay >= l)
    };
    'pages: loop {
        let page = warehouse
            .deliveries(&IndexQuery {
                source: options.source.clone(),
                event_type: options.event_type.clone(),
                since: options.since,
                until: options.until,
                after: after.clone(),
                page: options.page.max(1),
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.meta.received_at, last.meta.delivery_id.clone()));
        for stored in page {
            if done(&report) {
                break 'pages;
            }
            // BigQuery may hold a delivery twice (insertId is best-effort): once is enough.
            if !seen.insert(stored.meta.delivery_id.clone()) {
                continue;
            }
            replay_one(stored, archive, main, options.dry_run, &mut report).await;
            if progress {
                eprint!("\r{report}");
            }
        }
    }
    if progress {
        eprintln!();
    }
    Ok(report)
}

async fn replay_one(
    stored: StoredDelivery,
    archive: &dyn Archive,
    main: &dyn Publisher,
    dry_run: bool,
    report: &mut Report,
) {
    let StoredDelivery {
        mut meta,
        archive_object,
    } = stored;
    if dry_run {
        println!(
            "would replay delivery={} source={} event={} received_at={} object={}",
            meta.delivery_id,
            meta.source,
            meta.event_type.as_deref().unwrap_or("-"),
            format_time(meta.received_at),
            archive_object,
        );
        report.would_replay += 1;
        return;
    }
    let body = match archive.get(&archive_object).await {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(delivery_id = %meta.delivery_id, object = %archive_object, error = %e, "archived body unreadable; not replayed");
            report.failed += 1;
            return;
        }
    };
    meta.replay_count += 1;
    meta.extra
        .insert(attr::REPLAYED_FROM.into(), "archive".into());
    match main.publish(&Envelope { body, meta }).await {
        Ok(_) => report.replayed += 1,
        Err(e) => {
            tracing::error!(error = %e, "republish failed");
            report.failed += 1;
        }
    }
}
