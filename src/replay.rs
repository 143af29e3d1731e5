//! Operator replay: move dead-lettered messages back to the main topic.
//!
//! Written against the queue contract, so the same code replays from the embedded queue's
//! dead-letter topic and from the Pub/Sub operators' subscription. A message is
//! acknowledged on the dead-letter side only after the main topic confirmed its republish,
//! so an interrupted replay loses nothing (at worst a message is replayed twice, which the
//! worker's idempotent sinks absorb). Replayed messages carry `replay_count` + 1 and lose
//! their `dead_letter_*` attributes; their delivery id, and so every effect key, is kept.

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hookline_shared::envelope::{Envelope, attr};
use hookline_shared::queue::{Delivery, Publisher, Subscriber};

/// Which dead-lettered messages to replay. Every given filter must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub source: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// A substring of `dead_letter_reason` (or the sink's name).
    pub reason: Option<String>,
}

impl Filter {
    fn matches(&self, envelope: &Envelope) -> bool {
        let m = &envelope.meta;
        let reason = [attr::DEAD_LETTER_REASON, attr::DEAD_LETTER_SINK]
            .iter()
            .filter_map(|k| m.extra.get(*k))
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        self.source.as_ref().is_none_or(|s| *s == m.source)
            && self
                .event_type
                .as_ref()
                .is_none_or(|e| m.event_type.as_ref() == Some(e))
            && self.since.is_none_or(|t| m.received_at >= t)
            && self.until.is_none_or(|t| m.received_at < t)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| reason.contains(r.as_str()))
    }
}

/// What a replay run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub replayed: u64,
    /// Matching messages listed by `--dry-run` (left on the dead-letter side).
    pub would_replay: u64,
    /// Not matching the filter (left on the dead-letter side).
    pub skipped: u64,
    /// Not decodable as hookline messages (left on the dead-letter side).
    pub undecodable: u64,
    /// Republish failed (left on the dead-letter side, to try again).
    pub failed: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed={} would_replay={} skipped={} undecodable={} failed={}",
            self.replayed, self.would_replay, self.skipped, self.undecodable, self.failed
        )
    }
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    pub filter: Filter,
    pub limit: Option<u64>,
    pub dry_run: bool,
    /// How long to wait for more messages before concluding the dead-letter side is drained.
    pub idle: Duration,
}

/// The envelope as it goes back to the main topic.
fn for_replay(mut envelope: Envelope) -> Envelope {
    envelope.meta.replay_count += 1;
    envelope
        .meta
        .extra
        .retain(|k, _| !k.starts_with("dead_letter_") && !k.starts_with("CloudPubSubDeadLetter"));
    envelope
}

/// Replays what `options` selects; prints one line per message in a dry run and a
/// progress line on a terminal.
///
/// # Errors
/// Only a failure to pull from the dead-letter side ends the run early; a failed republish
/// is counted and the message left where it was.
pub async fn run(
    dead_letters: &dyn Subscriber,
    main: &dyn Publisher,
    options: &Options,
) -> Result<Report, hookline_shared::queue::QueueError> {
    let mut report = Report::default();
    // Messages left on the dead-letter side come back; seeing one again means we are done.
    let mut seen = BTreeSet::new();
    let progress = std::io::stderr().is_terminal();
    loop {
        if options
            .limit
            .is_some_and(|l| report.replayed + report.would_replay >= l)
        {
            break;
        }
        let batch = dead_letters.pull(32, options.idle).await?;
        if batch.is_empty() {
            break;
        }
        let mut fresh = false;
        for delivery in batch {
            // By delivery id: a delivery that fails again at once comes back to the
            // dead-letter side as a new message, and must not be replayed in a loop.
            let key = delivery
                .attributes
                .get(attr::DELIVERY_ID)
                .cloned()
                .unwrap_or_else(|| delivery.message_id.clone());
            if !seen.insert(key) {
                // Left in place earlier in this run (filtered out, listed, or failed), or
                // replayed already and dead-lettered again.
                release(delivery).await;
                continue;
            }
            fresh = true;
            settle(delivery, main, options, &mut report).await;
            if progress {
                eprint!("\r{report}");
            }
        }
        if !fresh {
            break;
        }
    }
    dead_letters.close().await;
    if progress {
        eprintln!();
    }
    Ok(report)
}

/// Leaves a dead letter where it is.
async fn release(delivery: Delivery) {
    if let Err(e) = delivery.acker.nack().await {
        tracing::warn!(error = %e, "could not release a dead letter; it returns after its deadline");
    }
}

async fn settle(delivery: Delivery, main: &dyn Publisher, options: &Options, report: &mut Report) {
    let leave = release;
    let envelope = match delivery.envelope() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(message_id = %delivery.message_id, error = %e, "not a hookline message; left in place");
            report.undecodable += 1;
            return leave(delivery).await;
        }
    };
    let over_limit = options
        .limit
        .is_some_and(|l| report.replayed + report.would_replay >= l);
    if over_limit || !options.filter.matches(&envelope) {
        report.skipped += u64::from(!over_limit);
        return leave(delivery).await;
    }
    if options.dry_run {
        let m = &envelope.meta;
        println!(
            "would replay delivery={} source={} event={} received_at={} sink={} reason={:?}",
            m.delivery_id,
            m.source,
            m.event_type.as_deref().unwrap_or("-"),
            hookline_shared::envelope::format_time(m.received_at),
            m.extra
                .get(attr::DEAD_LETTER_SINK)
                .map_or("-", String::as_str),
            m.extra
                .get(attr::DEAD_LETTER_REASON)
                .map_or("-", String::as_str),
        );
        report.would_replay += 1;
        return leave(delivery).await;
    }
    match main.publish(&for_replay(envelope)).await {
        Ok(_) => match delivery.acker.ack().await {
            Ok(()) => report.replayed += 1,
            Err(e) => {
                // Republished but still dead-lettered: a later run replays it again, and
                // the idempotent sinks make that harmless.
                tracing::warn!(error = %e, "republished, but the dead letter could not be acknowledged");
                report.replayed += 1;
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "republish failed; the dead letter stays");
            report.failed += 1;
            leave(delivery).await;
        }
    }
}
