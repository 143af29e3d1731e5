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
//! - A replayed message (replay counter above 0) takes over once the owner has stopped
//!   working on it: the owner records `lease.N.released` when it settles the message, with
//!   its last steps when it acks, on its own when it nacks or dead-letters, and the runner
//!   records it when a shutdown stops the work (a nack's redelivery then finds the replay's
//!   lease and is acked as its duplicate). An operator replays what was dead-lettered or
//!   already done, so that is the usual case; but a replay from the archive can catch a
//!   delivery still being processed, and a second replay run can catch the first one's copy
//!   still posting. A replay that finds a lease neither released nor older than
//!   [`LIVE_FOR`] goes back to the queue until that lease runs out ([`Ownership::Live`]),
//!   rather than running beside a live owner. A lease from before leases were released (its
//!   note has no `at=`) counts as run out.
//! - A claim lost to the same message (Pub/Sub delivered it twice at once) or to a replay
//!   that took over at the same moment goes back to the queue instead of running alongside.
//!
//! The overlaps left: a message whose lease extensions fail is redelivered while its first
//! worker still runs, and the redelivery takes over beside it (the runner extends a lease
//! every third of its ack deadline, by a whole one, to keep that from happening); and an
//! owner still at work [`LIVE_FOR`] after it claimed the lease can have a replay beside it.

use std::collections::BTreeMap;
use std::time::Duration;

use hookline_shared::sink::{Ledger, SinkError};

use crate::retry::RetryPolicy;

/// Ledger steps that hold a lease start with this; the rest is the lease's number.
pub const LEASE_PREFIX: &str = "lease.";

/// After a lease's step, names the step its owner records when it stops working on the
/// message (`lease.3.released`): a replay may take over at once.
const RELEASED: &str = ".released";

/// How long a lease its owner never released counts as live: a replay that finds one
/// younger waits. With the default settings a message's work stays well below this (three
/// in-process retries per sink at most 2 s apart, each call bounded by its timeout: Slack's
/// 10 s, BigQuery's 30 s query; at most 20 s of Slack pacing). An owner that died comes back
/// itself one ack deadline later and releases when done, so this only decides for owners
/// gone for good without releasing: killed on their message's last attempt (the queue then
/// dead-letters it without running it again), a lost ledger write, a deleted message.
pub const LIVE_FOR: Duration = Duration::from_secs(600);

/// Whether `step` is a lease's release.
pub fn is_release(step: &str) -> bool {
    step.strip_suffix(RELEASED)
        .is_some_and(|lease| lease_number(lease).is_some())
}

/// How far ahead of this worker's clock another worker's may be for its lease times to
/// count (Cloud Run's clocks are kept by Google's NTP, well within this).
const CLOCK_SKEW_MS: i64 = 60_000;

/// The step that says the owner of `lease` (a lease step) stopped working on its message.
pub fn released(lease: &str) -> String {
    format!("{lease}{RELEASED}")
}

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
    /// This message does the work, holding `lease` (its step). `earlier_attempt`: the
    /// ledger already held records when it arrived, so an earlier attempt may have written
    /// effects it never recorded; a sink without a unique key must be asked before it is
    /// written again.
    Owner {
        earlier_attempt: bool,
        lease: String,
    },
    /// Another message (its id here) owns the delivery: ack this copy.
    DuplicateOf(String),
    /// The same message, or a replay, claimed the delivery at this very moment (its id
    /// here): go back to the queue.
    Contended(String),
    /// A replay found the delivery owned by another message (`owner`) that has not
    /// released it and may still be at work: go back to the queue until its lease runs
    /// out (`wait`).
    Live { owner: String, wait: Duration },
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
    let now_ms = chrono::Utc::now().timestamp_millis();
    let next = match newest_lease(done) {
        None => 1,
        Some(lease) if !may_take_over(lease.owner) => {
            return Ok((Ownership::DuplicateOf(lease.owner.to_owned()), None));
        }
        Some(lease) if lease.owner == me.message_id => lease.number + 1,
        Some(lease) => match lease.live_for(done, now_ms) {
            Some(wait) => {
                let owner = lease.owner.to_owned();
                return Ok((Ownership::Live { owner, wait }, None));
            }
            None => lease.number + 1,
        },
    };
    let step = format!("{LEASE_PREFIX}{next}");
    // A nonce tells two deliveries of one message attempt apart; `at` is when the lease
    // was claimed, for a replay to tell a live owner from a gone one.
    let note = format!(
        "{} attempt={} nonce={:016x} at={now_ms}",
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
        let owner = Ownership::Owner {
            earlier_attempt,
            lease: step,
        };
        return Ok((owner, along_winner));
    }
    let owner = owner_of(&winner).to_owned();
    let answer = if may_take_over(&owner) {
        Ownership::Contended(owner)
    } else {
        Ownership::DuplicateOf(owner)
    };
    Ok((answer, along_winner))
}

/// A lease as the ledger holds it.
struct Lease<'a> {
    step: &'a str,
    number: u32,
    /// The message that holds it.
    owner: &'a str,
    /// When it was claimed (unix ms); `None` in leases from before that was recorded.
    at_ms: Option<i64>,
}

impl Lease<'_> {
    /// Whether its owner recorded that it stopped working on the message.
    fn is_released(&self, done: &BTreeMap<String, String>) -> bool {
        done.contains_key(&released(self.step))
    }

    /// How much longer this lease counts as live, `None` when it does not: its owner
    /// released it, or it is older than [`LIVE_FOR`] (or too old to say when it was taken).
    fn live_for(&self, done: &BTreeMap<String, String>, now_ms: i64) -> Option<Duration> {
        if self.is_released(done) {
            return None;
        }
        let live_ms = i64::try_from(LIVE_FOR.as_millis()).unwrap_or(i64::MAX);
        let at_ms = self.at_ms?;
        // Claimed "in the future": the claiming worker's clock is ahead of ours. Up to
        // CLOCK_SKEW_MS it is taken as now; beyond, the time tells nothing and is not waited
        // on (a replay waiting on it would find it live at every attempt).
        if at_ms > now_ms.saturating_add(CLOCK_SKEW_MS) {
            return None;
        }
        let left_ms = at_ms
            .min(now_ms)
            .saturating_add(live_ms)
            .saturating_sub(now_ms);
        (left_ms > 0).then(|| Duration::from_millis(left_ms.unsigned_abs()))
    }
}

/// The newest lease's step when `message_id` holds it and has not released it.
pub fn held_by<'a>(done: &'a BTreeMap<String, String>, message_id: &str) -> Option<&'a str> {
    newest_lease(done)
        .filter(|lease| lease.owner == message_id && !lease.is_released(done))
        .map(|lease| lease.step)
}

/// The highest-numbered lease.
fn newest_lease(done: &BTreeMap<String, String>) -> Option<Lease<'_>> {
    done.iter()
        .filter_map(|(step, note)| {
            Some(Lease {
                step,
                number: lease_number(step)?,
                owner: owner_of(note),
                at_ms: note
                    .split(' ')
                    .find_map(|word| word.strip_prefix("at=")?.parse().ok()),
            })
        })
        .max_by_key(|lease| lease.number)
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
        let owner = |earlier_attempt, n: u32| Ownership::Owner {
            earlier_attempt,
            lease: format!("lease.{n}"),
        };
        let duplicate_of = |m: &str| Ownership::DuplicateOf(m.into());
        // (message, replay counter, expected answer, leases recorded after it)
        let steps = [
            ("m1", 0, owner(false, 1), 1),
            ("m2", 0, duplicate_of("m1"), 1),
            // m1 redelivered (nacked, or its worker died): it takes over, knowing an earlier
            // attempt ran.
            ("m1", 0, owner(true, 2), 2),
            ("m2", 0, duplicate_of("m1"), 2),
            // Released by its owner (acked or dead-lettered), a delivery is still m1's for
            // copies that are not replays.
            ("release", 0, duplicate_of("m1"), 2),
            ("m2", 0, duplicate_of("m1"), 2),
            // An operator's replay takes over from an owner that released it.
            ("r1", 1, owner(true, 3), 3),
            ("m1", 0, duplicate_of("r1"), 3),
        ];
        for (message_id, replay_count, expected, leases) in steps {
            if message_id == "release" {
                let lease = format!("lease.{leases}");
                ledger
                    .record("gh", "d", &released(&lease), "")
                    .await
                    .unwrap();
                continue;
            }
            let got = ask(&ledger, message(message_id, replay_count)).await;
            assert_eq!(got, expected, "{message_id}");
            let done = ledger.done("gh", "d").await.unwrap();
            let held = done.keys().filter(|k| lease_number(k).is_some()).count();
            assert_eq!(held, leases, "{done:?}");
        }
    }

    #[tokio::test]
    async fn a_replay_waits_for_an_owner_that_may_still_be_at_work() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("l.sqlite3")).unwrap();
        let held_by = |got: Ownership, m: &str| match got {
            Ownership::Live { owner, wait } => {
                assert_eq!(owner, m);
                wait
            }
            other => panic!("expected a live lease of {m}, got {other:?}"),
        };
        // m1 is at work (claimed, not released): a replay goes back until its lease runs out.
        assert!(matches!(
            ask(&ledger, message("m1", 0)).await,
            Ownership::Owner { .. }
        ));
        let wait = held_by(ask(&ledger, message("r1", 1)).await, "m1");
        assert!(
            wait > LIVE_FOR - Duration::from_secs(60) && wait <= LIVE_FOR,
            "{wait:?}"
        );
        // Nothing was claimed for the replay, and m1 itself still takes over.
        let done = ledger.done("gh", "d").await.unwrap();
        assert!(!done.contains_key("lease.2"), "{done:?}");
        assert!(matches!(
            ask(&ledger, message("m1", 0)).await,
            Ownership::Owner { ref lease, .. } if lease == "lease.2"
        ));
        // Released: the replay takes over; a second replay run's copy then waits for it.
        ledger
            .record("gh", "d", &released("lease.2"), "")
            .await
            .unwrap();
        assert!(matches!(
            ask(&ledger, message("r1", 1)).await,
            Ownership::Owner { ref lease, .. } if lease == "lease.3"
        ));
        held_by(ask(&ledger, message("r2", 1)).await, "r1");
        // The replay redelivered (its own lease) takes over as any owner does.
        assert!(matches!(
            ask(&ledger, message("r1", 1)).await,
            Ownership::Owner { ref lease, .. } if lease == "lease.4"
        ));
    }

    #[tokio::test]
    async fn a_lease_older_than_live_for_or_without_a_time_is_taken_over_by_a_replay() {
        let now = chrono::Utc::now().timestamp_millis();
        let live_ms = i64::try_from(LIVE_FOR.as_millis()).unwrap();
        // (the newest lease's note, whether a replay waits)
        let cases = [
            (
                format!("m1 attempt=1 nonce=0 at={}", now - live_ms - 1_000),
                false,
            ),
            ("m1 attempt=1 nonce=0".to_owned(), false),
            (
                format!("m1 attempt=1 nonce=0 at={}", now - live_ms + 60_000),
                true,
            ),
            // Another worker's clock a little ahead: live, for no longer than LIVE_FOR.
            (format!("m1 attempt=1 nonce=0 at={}", now + 30_000), true),
            // Far ahead: its time tells nothing, and a replay waiting on it would wait at
            // every attempt.
            (
                format!("m1 attempt=1 nonce=0 at={}", now + 3_600_000),
                false,
            ),
        ];
        for (note, waits) in cases {
            let dir = tempfile::tempdir().unwrap();
            let ledger = SqliteLedger::open(&dir.path().join("l.sqlite3")).unwrap();
            ledger.record("gh", "d", "lease.1", &note).await.unwrap();
            match ask(&ledger, message("r1", 1)).await {
                Ownership::Live { wait, .. } => {
                    assert!(waits && wait <= LIVE_FOR, "{note}: waits {wait:?}")
                }
                Ownership::Owner { lease, .. } => {
                    assert!(!waits && lease == "lease.2", "{note}: took over as {lease}")
                }
                other => panic!("{note}: {other:?}"),
            }
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
                earlier_attempt: true,
                lease: "lease.1".into()
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
            "lease.9.released",
            "lease.11.released",
            "slack",
        ];
        // A release is not a lease, whatever its number.
        assert_eq!(notes_to_read(steps), ["archive.name", "lease.10"]);
        assert_eq!(notes_to_read(["warehouse", "lease.x"]), Vec::<&str>::new());
        assert!(is_release("lease.11.released") && is_release(&released("lease.2")));
        assert!(!is_release("lease.11") && !is_release("lease.x.released"));
        assert!(!is_release("slack.released"));
    }
}
