//! Which copy of a delivery does the work.
//!
//! One delivery can sit in the queue more than once: a provider resends it (GitHub's
//! "Redeliver", Slack's retries), or ingest published it and died before answering. Each
//! copy is its own queue message. Two copies processed at the same moment would each find
//! nothing done in the ledger, and each insert a row into a warehouse without a unique key
//! (BigQuery) and each post to Slack. The fault suite found exactly that: after a BigQuery
//! outage both copies of a resent delivery came back from the queue together and the table
//! got two rows a millisecond apart.
//!
//! So a delivery has one owner message at a time, recorded in the ledger as a create-only
//! lease (`lease.1`, `lease.2`, …) whose note names the message:
//! - The first copy to arrive claims `lease.1`. Another copy that finds the lease held by a
//!   different message is acked as a duplicate. Nothing is lost: the owner message stays in
//!   the queue until it is done or dead-lettered.
//! - The owner message delivered again (it was nacked, its lease ran out, its worker was
//!   killed) takes over with the next lease.
//! - A replayed message (replay counter above 0) always takes over: the operator replays
//!   what was dead-lettered or already done, so no earlier owner is still running.
//! - A claim lost to the same message (Pub/Sub delivered it twice at once) or to a replay
//!   that took over at the same moment goes back to the queue instead of running alongside.
//!
//! The one overlap left: a message whose lease extensions fail is redelivered while its
//! first worker still runs, and the redelivery takes over beside it. The runner extends a
//! lease every third of its ack deadline, by a whole one, to keep that from happening.

use std::collections::BTreeMap;

use hookline_shared::sink::{Ledger, SinkError};

use crate::retry::RetryPolicy;

/// Ledger steps that hold a lease start with this; the rest is the lease's number.
pub const LEASE_PREFIX: &str = "lease.";

/// The message asking to own a delivery.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    /// The queue's message id: the same across redeliveries of one message.
    pub message_id: &'a str,
    /// 1-based delivery attempt of that message.
    pub attempt: u32,
    /// The envelope's replay counter: above 0 when an operator replayed the delivery.
    pub replay_count: u32,
}

/// The answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// This message does the work. `earlier_attempt`: the ledger already held records
    /// when it arrived, so an earlier attempt may have written effects it never recorded;
    /// a sink without a unique key must be asked before it is written again.
    Owner { earlier_attempt: bool },
    /// Another message (its id here) owns the delivery: ack this copy.
    DuplicateOf(String),
    /// The same message, or a replay, claimed the delivery at this very moment (its id
    /// here): go back to the queue.
    Contended(String),
}

/// Decides who owns the delivery, claiming the next lease when this message may.
///
/// `done` is the ledger as read at the start of this attempt. `along` is another claim
/// (step, proposed note) made in the same call to the ledger as the lease's, so that a
/// first attempt pays one round trip for its lease and its archive name; its winning note
/// is returned beside the answer, `None` when no lease was claimed. It is claimed even when
/// the lease is lost, which is harmless for a claim every copy of a delivery agrees on.
///
/// # Errors
/// The ledger failed (after in-process retries).
pub async fn acquire(
    ledger: &dyn Ledger,
    retry: &RetryPolicy,
    (source, delivery_id): (&str, &str),
    done: &BTreeMap<String, String>,
    me: Claimant<'_>,
    along: Option<(&str, &str)>,
) -> Result<(Ownership, Option<String>), SinkError> {
    let may_take_over = |owner: &str| owner == me.message_id || me.replay_count > 0;
    let next = match newest_lease(done) {
        None => 1,
        Some((_, owner)) if !may_take_over(owner) => {
            return Ok((Ownership::DuplicateOf(owner.to_owned()), None));
        }
        Some((number, _)) => number + 1,
    };
    let step = format!("{LEASE_PREFIX}{next}");
    // A nonce tells two deliveries of one message attempt apart.
    let note = format!(
        "{} attempt={} nonce={:016x}",
        me.message_id,
        me.attempt,
        rand::random::<u64>()
    );
    let claims: Vec<(&str, &str)> = std::iter::once((step.as_str(), note.as_str()))
        .chain(along)
        .collect();
    let mut winners = retry
        .run("ledger", || ledger.claim_all(source, delivery_id, &claims))
        .await?
        .into_iter();
    // A ledger that answered no claim must not read as a lost one (that acks the message).
    let Some(winner) = winners.next() else {
        return Err(SinkError::transient(
            "ledger unavailable",
            "the ledger answered no claim for the lease",
        ));
    };
    let along_winner = winners.next();
    if winner == note {
        let earlier_attempt = !done.is_empty();
        return Ok((Ownership::Owner { earlier_attempt }, along_winner));
    }
    let owner = owner_of(&winner).to_owned();
    let answer = if may_take_over(&owner) {
        Ownership::Contended(owner)
    } else {
        Ownership::DuplicateOf(owner)
    };
    Ok((answer, along_winner))
}

/// The highest-numbered lease and the message that holds it.
fn newest_lease(done: &BTreeMap<String, String>) -> Option<(u32, &str)> {
    done.iter()
        .filter_map(|(step, note)| Some((lease_number(step)?, owner_of(note))))
        .max_by_key(|(number, _)| *number)
}

/// The number of a lease step (`lease.3` is 3); `None` for every other step.
fn lease_number(step: &str) -> Option<u32> {
    step.strip_prefix(LEASE_PREFIX)?.parse().ok()
}

/// The message id in a lease's note (its first word).
fn owner_of(note: &str) -> &str {
    note.split(' ').next().unwrap_or_default()
}

/// The ledger steps whose notes decide anything: the archive name and the newest lease (who
/// owns the delivery now; older leases are history). The Cloud Storage ledger reads only
/// these, one request each, so a delivery redelivered many times costs no more to look up.
pub fn notes_to_read<'a>(steps: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let steps: Vec<&str> = steps.into_iter().collect();
    let newest = steps
        .iter()
        .filter_map(|step| Some((lease_number(step)?, *step)))
        .max_by_key(|(number, _)| *number)
        .map(|(_, step)| step);
    steps
        .iter()
        .copied()
        .filter(|step| *step == "archive.name")
        .chain(newest)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sinks::ledger_sqlite::SqliteLedger;

    const RETRY: RetryPolicy = RetryPolicy {
        retries: 0,
        min: Duration::from_millis(1),
        max: Duration::from_millis(1),
    };

    fn message(message_id: &str, replay_count: u32) -> Claimant<'_> {
        Claimant {
            message_id,
            attempt: 1,
            replay_count,
        }
    }

    async fn ask(ledger: &SqliteLedger, me: Claimant<'_>) -> Ownership {
        let done = ledger.done("gh", "d").await.unwrap();
        acquire(ledger, &RETRY, ("gh", "d"), &done, me, None)
            .await
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn the_first_copy_owns_later_copies_are_duplicates_and_the_owner_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("l.sqlite3")).unwrap();
        let owner = |earlier_attempt| Ownership::Owner { earlier_attempt };
        let duplicate_of = |m: &str| Ownership::DuplicateOf(m.into());
        // (message, replay counter, expected answer, leases recorded after it)
        let steps = [
            ("m1", 0, owner(false), 1),
            ("m2", 0, duplicate_of("m1"), 1),
            // m1 redelivered (nacked, or its worker died): it takes over, knowing an earlier
            // attempt ran.
            ("m1", 0, owner(true), 2),
            ("m2", 0, duplicate_of("m1"), 2),
            // An operator's replay takes over from whoever held it.
            ("r1", 1, owner(true), 3),
            ("m1", 0, duplicate_of("r1"), 3),
        ];
        for (message_id, replay_count, expected, leases) in steps {
            let got = ask(&ledger, message(message_id, replay_count)).await;
            assert_eq!(got, expected, "{message_id}");
            let done = ledger.done("gh", "d").await.unwrap();
            let held = done.keys().filter(|k| k.starts_with(LEASE_PREFIX)).count();
            assert_eq!(held, leases, "{done:?}");
        }
    }

    /// A ledger that answers every claim with nothing.
    #[derive(Debug)]
    struct NoAnswers;

    #[async_trait::async_trait]
    impl Ledger for NoAnswers {
        async fn done(&self, _: &str, _: &str) -> Result<BTreeMap<String, String>, SinkError> {
            Ok(BTreeMap::new())
        }
        async fn record(&self, _: &str, _: &str, _: &str, _: &str) -> Result<(), SinkError> {
            Ok(())
        }
        async fn claim_all(
            &self,
            _: &str,
            _: &str,
            _: &[(&str, &str)],
        ) -> Result<Vec<String>, SinkError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_claim_the_ledger_did_not_answer_is_an_error_not_a_lost_claim() {
        let got = acquire(
            &NoAnswers,
            &RETRY,
            ("gh", "d"),
            &BTreeMap::new(),
            message("m1", 0),
            None,
        )
        .await;
        assert!(got.as_ref().is_err_and(SinkError::is_transient), "{got:?}");
    }

    #[tokio::test]
    async fn a_lost_claim_race_never_runs_beside_the_winner() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("l.sqlite3")).unwrap();
        // Both read an empty ledger, then both claim `lease.1`.
        // Each proposes its own archive name along: both learn the same winner.
        let empty = BTreeMap::new();
        let claim = |me, name| {
            acquire(
                &ledger,
                &RETRY,
                ("gh", "d"),
                &empty,
                me,
                Some(("archive.name", name)),
            )
        };
        let (a, b) = tokio::join!(
            claim(message("m1", 0), "name-1"),
            claim(message("m2", 0), "name-2")
        );
        let ((a, a_name), (b, b_name)) = (a.unwrap(), b.unwrap());
        assert!(
            a_name.is_some() && a_name == b_name,
            "{a_name:?} {b_name:?}"
        );
        let stored = ledger.done("gh", "d").await.unwrap();
        assert_eq!(Some(&stored["archive.name"]), a_name.as_ref());
        let mut got = [a, b];
        got.sort_by_key(|o| format!("{o:?}"));
        assert!(
            matches!(
                &got[..],
                [Ownership::DuplicateOf(_), Ownership::Owner { .. }]
            ),
            "{got:?}"
        );
        // The same message delivered twice at once: one runs, the other goes back.
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("l.sqlite3")).unwrap();
        let claim = |me| acquire(&ledger, &RETRY, ("gh", "d"), &empty, me, None);
        let (a, b) = tokio::join!(claim(message("m1", 0)), claim(message("m1", 0)));
        let mut got = [a.unwrap().0, b.unwrap().0];
        got.sort_by_key(|o| format!("{o:?}"));
        assert!(
            matches!(&got[..], [Ownership::Contended(m), Ownership::Owner { .. }] if m == "m1"),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_ledger_from_before_leases_counts_as_an_earlier_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("l.sqlite3")).unwrap();
        ledger
            .record("gh", "d", "warehouse.intent", "")
            .await
            .unwrap();
        assert_eq!(
            ask(&ledger, message("m1", 0)).await,
            Ownership::Owner {
                earlier_attempt: true
            }
        );
    }

    #[test]
    fn only_the_archive_name_and_the_newest_lease_are_worth_reading() {
        let steps = [
            "archive",
            "archive.name",
            "lease.1",
            "lease.10",
            "lease.9",
            "slack",
        ];
        assert_eq!(notes_to_read(steps), ["archive.name", "lease.10"]);
        assert_eq!(notes_to_read(["warehouse", "lease.x"]), Vec::<&str>::new());
    }
}
