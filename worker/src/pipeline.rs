//! One message through every sink, in order: archive, warehouse, Slack.
//!
//! Every effect is keyed by the delivery id (object name, unique row), so a redelivered
//! message redoes nothing that is done. The result is a [`Disposition`]; the runner settles
//! the message with the queue accordingly. The order matters: the archive first (the raw
//! body is safe before anything else), Slack last (the one effect that cannot be undone).

use std::sync::Arc;

use hookline_shared::archive_name;
use hookline_shared::config::{ArchiveBackend, Settings, WarehouseBackend};
use hookline_shared::envelope::{Envelope, attr};
use hookline_shared::queue::DeadLetter;
use hookline_shared::sink::{Archive, Ledger, SinkError, Warehouse};

use secrecy::SecretString;

use crate::ownership::{self, Claimant, Ownership};
use crate::retry::RetryPolicy;
use crate::sinks::archive_gcs::{GcsArchive, GcsSetupError};
use crate::sinks::archive_local::LocalArchive;
use crate::sinks::ledger_sqlite::SqliteLedger;
use crate::sinks::slack::Slack;
use crate::sinks::warehouse_bigquery::BigQueryWarehouse;
use crate::sinks::warehouse_sqlite::SqliteWarehouse;

/// What to do with a message once the pipeline has run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Every sink succeeded (or had already).
    Ack,
    /// A sink failed transiently after in-process retries: deliver again later, not before
    /// `retry_after` when the sink said how long (Slack's pacing, a `Retry-After`).
    Nack {
        sink: &'static str,
        reason: String,
        retry_after: Option<std::time::Duration>,
    },
    /// A sink failed permanently: move to the dead-letter topic with the reason.
    DeadLetter(DeadLetter),
    /// Another copy of the delivery (this message id) owns it: ack this one, which did
    /// nothing. See [`crate::ownership`].
    Duplicate { owner: String },
}

/// The sinks and the retry policy, shared by every message.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub archive: Arc<dyn Archive>,
    pub warehouse: Arc<dyn Warehouse>,
    pub ledger: Arc<dyn Ledger>,
    pub slack: Slack,
    pub retry: RetryPolicy,
}

/// Why the worker's sinks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: hookline_shared::group_commit::CommitError,
    },
    #[error("cannot start the local archive's writer")]
    Archive(#[source] std::io::Error),
    #[error("cannot set up the Cloud Storage archive")]
    Gcs(#[from] GcsSetupError),
    #[error("cannot set up the BigQuery warehouse")]
    BigQuery(#[from] gcp_bigquery_client::error::BQError),
    #[error("cannot build the Slack HTTP client")]
    Slack(#[source] reqwest::Error),
}

/// The archive the settings select; ingest uses it too, for claim checks.
///
/// # Errors
/// The archive cannot be set up.
pub async fn archive_from_settings(settings: &Settings) -> Result<Arc<dyn Archive>, BuildError> {
    Ok(match settings.archive.backend {
        ArchiveBackend::Local => {
            Arc::new(LocalArchive::new(&settings.archive.local.root).map_err(BuildError::Archive)?)
        }
        ArchiveBackend::Gcs => Arc::new(GcsArchive::connect(&settings.archive.gcs).await?),
    })
}

/// The warehouse the settings select.
///
/// # Errors
/// The warehouse cannot be set up.
pub async fn warehouse_from_settings(
    settings: &Settings,
) -> Result<Arc<dyn Warehouse>, BuildError> {
    Ok(match settings.warehouse.backend {
        WarehouseBackend::Sqlite => {
            let path = &settings.warehouse.sqlite.path;
            Arc::new(
                SqliteWarehouse::open(path).map_err(|source| BuildError::Open {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        WarehouseBackend::Bigquery => Arc::new(
            BigQueryWarehouse::connect(&settings.gcp.project, &settings.warehouse.bigquery).await?,
        ),
    })
}

impl Pipeline {
    /// Builds the sinks the settings select. `slack_url` is the resolved incoming-webhook
    /// URL (read from the variable `slack.webhook_url_env` names), `None` to log messages.
    ///
    /// # Errors
    /// A sink cannot be set up.
    pub async fn from_settings(
        settings: &Settings,
        slack_url: Option<SecretString>,
    ) -> Result<Self, BuildError> {
        let (archive, ledger): (Arc<dyn Archive>, Arc<dyn Ledger>) = match settings.archive.backend
        {
            ArchiveBackend::Local => {
                let path = &settings.worker.ledger_path;
                let ledger = SqliteLedger::open(path).map_err(|source| BuildError::Open {
                    path: path.clone(),
                    source,
                })?;
                (
                    Arc::new(
                        LocalArchive::new(&settings.archive.local.root)
                            .map_err(BuildError::Archive)?,
                    ),
                    Arc::new(ledger),
                )
            }
            ArchiveBackend::Gcs => {
                let gcs = GcsArchive::connect(&settings.archive.gcs).await?;
                (Arc::new(gcs.clone()), Arc::new(gcs))
            }
        };
        Ok(Self {
            archive,
            ledger,
            warehouse: warehouse_from_settings(settings).await?,
            slack: Slack::new(&settings.slack, slack_url).map_err(BuildError::Slack)?,
            retry: RetryPolicy::from(&settings.worker),
        })
    }

    /// The envelope with its body, reading a claim-checked body back from the archive.
    async fn resolve(&self, envelope: &Envelope) -> Result<Option<Envelope>, SinkError> {
        let Some(object) = envelope.meta.extra.get(attr::CLAIM_CHECK) else {
            return Ok(None);
        };
        let body = self
            .retry
            .run("claim_check", || self.archive.get(object))
            .await?;
        let mut resolved = envelope.clone();
        resolved.body = body;
        resolved.meta.extra.remove(attr::CLAIM_CHECK);
        Ok(Some(resolved))
    }

    /// Runs every sink for `envelope`, carried by queue message `message_id` on its
    /// delivery `attempt` (1-based).
    pub async fn handle(&self, envelope: &Envelope, message_id: &str, attempt: u32) -> Disposition {
        let settle = |sink: &'static str, e: SinkError| match e {
            SinkError::Transient {
                message,
                retry_after,
                ..
            } => Disposition::Nack {
                sink,
                reason: message,
                retry_after,
            },
            SinkError::Permanent { message, .. } => Disposition::DeadLetter(DeadLetter {
                sink: sink.into(),
                reason: message,
                attempts: attempt,
            }),
        };
        let resolved = match self.resolve(envelope).await {
            Ok(r) => r,
            Err(e) => return settle("claim_check", e),
        };
        let envelope = resolved.as_ref().unwrap_or(envelope);
        let (source, id) = (
            envelope.meta.source.as_str(),
            envelope.meta.delivery_id.as_str(),
        );
        // Steps done but not yet recorded; recorded in one call before the next effect that
        // must not run twice (the Slack post) and at the end. A failure in between leaves
        // them unrecorded: the next attempt redoes them, which the archive (create-only)
        // and the warehouse (unique key, or asked first) absorb.
        let mut unrecorded: Vec<(&'static str, String)> = Vec::new();
        let record = |steps: Vec<(&'static str, String)>| async move {
            if steps.is_empty() {
                return Ok(());
            }
            let steps: Vec<(&str, &str)> = steps.iter().map(|(s, n)| (*s, n.as_str())).collect();
            self.retry
                .run("ledger", || self.ledger.record_all(source, id, &steps))
                .await
        };
        let done = match self
            .retry
            .run("ledger", || self.ledger.done(source, id))
            .await
        {
            Ok(done) => done,
            Err(e) => return settle("ledger", e),
        };
        let claimant = Claimant {
            message_id,
            attempt,
            replay_count: envelope.meta.replay_count,
        };
        // A provider's resend arrives with a new receive time: the first copy's claimed
        // name wins, so every copy writes the same object. A first attempt claims it along
        // with its lease.
        let proposed = archive_name::object_name(&envelope.meta);
        let claimed = done.get("archive.name");
        let along = claimed
            .is_none()
            .then_some(("archive.name", proposed.as_str()));
        let (earlier_attempt, object, lease) = match ownership::acquire(
            self.ledger.as_ref(),
            &self.retry,
            (source, id),
            &done,
            claimant,
            along,
        )
        .await
        {
            Ok((
                Ownership::Owner {
                    earlier_attempt,
                    lease,
                },
                won,
            )) => {
                let object = won.or_else(|| claimed.cloned()).unwrap_or(proposed);
                (earlier_attempt, object, lease)
            }
            Ok((Ownership::DuplicateOf(owner), _)) => return Disposition::Duplicate { owner },
            Ok((Ownership::Contended(owner), _)) => {
                return Disposition::Nack {
                    sink: "ledger",
                    reason: format!("message {owner} claimed this delivery at the same moment"),
                    retry_after: None,
                };
            }
            Ok((Ownership::Live { owner, wait }, _)) => {
                return Disposition::Nack {
                    sink: "ledger",
                    reason: format!(
                        "message {owner} owns this delivery and may still be at work; \
                         this replay comes back when that lease runs out"
                    ),
                    retry_after: Some(wait),
                };
            }
            Err(e) => return settle("ledger", e),
        };
        // The owner says when it stops working on the message (acked, nacked or
        // dead-lettered), for a replay waiting on it. The effects run in an async block:
        // each `return` in it ends the block, not `handle`, so the release after it runs
        // whatever the outcome.
        let released = ownership::released(&lease);
        let disposition = async {
            if !done.contains_key("archive") {
                if let Err(e) = timed(
                    "archive",
                    self.retry
                        .run("archive", || self.archive.put(&object, envelope)),
                )
                .await
                {
                    return settle("archive", e);
                }
                unrecorded.push(("archive", object.clone()));
            }
            if !done.contains_key("warehouse") {
                // A warehouse without a unique key (BigQuery) would take a second row if a crash
                // fell between its insert and the ledger record: when an earlier attempt ran,
                // ask the warehouse before inserting again.
                let inserted = if self.warehouse.deduplicates() || !earlier_attempt {
                    false
                } else {
                    let received_at = envelope.meta.received_at;
                    match self
                        .retry
                        .run("warehouse", || {
                            self.warehouse.contains(source, id, received_at)
                        })
                        .await
                    {
                        Ok(found) => found,
                        Err(e) => return settle("warehouse", e),
                    }
                };
                // A failed insert may still have landed (the answer was lost): before retrying
                // into a warehouse without a unique key, ask it.
                let tried = std::sync::atomic::AtomicBool::new(false);
                let insert = || async {
                    if tried.swap(true, std::sync::atomic::Ordering::SeqCst)
                        && !self.warehouse.deduplicates()
                        && self
                            .warehouse
                            .contains(source, id, envelope.meta.received_at)
                            .await?
                    {
                        return Ok(hookline_shared::sink::Outcome::AlreadyDone);
                    }
                    self.warehouse.insert(envelope, &object).await
                };
                if !inserted
                    && let Err(e) = timed("warehouse", self.retry.run("warehouse", insert)).await
                {
                    return settle("warehouse", e);
                }
                unrecorded.push(("warehouse", String::new()));
            }
            let message = match self.slack.message_for(envelope) {
                Ok(m) => m,
                Err(e) => return settle("slack", e),
            };
            if let Some(message) = message.filter(|_| !done.contains_key("slack")) {
                if let Err(e) = self.slack.paced_out() {
                    return settle("slack", e);
                }
                // Slack cannot de-duplicate: intent before the post, done after. An intent
                // without done means an earlier attempt may have posted (the crash window
                // between Slack's answer and the done record); post again rather than risk
                // a missed notification, and count it.
                if done.contains_key("slack.intent") {
                    tracing::warn!("an earlier attempt may have posted to Slack; posting again");
                    hookline_shared::metrics::inc("hookline_slack_possible_duplicates_total", &[]);
                } else {
                    unrecorded.push(("slack.intent", String::new()));
                }
                if let Err(e) = record(std::mem::take(&mut unrecorded)).await {
                    return settle("ledger", e);
                }
                if let Err(e) = timed(
                    "slack",
                    self.retry.run("slack", || self.slack.post(&message)),
                )
                .await
                {
                    return settle("slack", e);
                }
                unrecorded.push(("slack", String::new()));
            }
            let mut last: Vec<(&str, &str)> =
                unrecorded.iter().map(|(s, n)| (*s, n.as_str())).collect();
            last.push((released.as_str(), ""));
            if let Err(e) = self
                .retry
                .run("ledger", || self.ledger.record_all(source, id, &last))
                .await
            {
                return settle("ledger", e);
            }
            Disposition::Ack
        }
        .await;
        if disposition != Disposition::Ack {
            // Best effort (an ack records it with its last steps): left unreleased, a replay
            // waits until the lease runs out; this message's own redelivery does not.
            if let Err(e) = self
                .retry
                .run("ledger", || self.ledger.record(source, id, &released, ""))
                .await
            {
                tracing::warn!(error = %e, "could not release the delivery; a replay of it waits until its lease runs out");
            }
        }
        disposition
    }
}

impl Pipeline {
    /// Records that `message_id` stopped working on `envelope`'s delivery, when it holds
    /// the delivery's newest lease: for work stopped from outside [`Pipeline::handle`] (a
    /// worker shutting down), so a replay need not wait out the lease. Not for a lease lost
    /// to another worker: that one may hold the same message's newer lease by now. Best
    /// effort, no retries (a shutdown has little time): unreleased, a replay waits.
    pub async fn release_if_owner(&self, envelope: &Envelope, message_id: &str) {
        let (source, id) = (
            envelope.meta.source.as_str(),
            envelope.meta.delivery_id.as_str(),
        );
        let released = match self.ledger.done(source, id).await {
            Ok(done) => ownership::held_by(&done, message_id).map(ownership::released),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the ledger to release the delivery");
                return;
            }
        };
        if let Some(step) = released
            && let Err(e) = self.ledger.record(source, id, &step, "").await
        {
            tracing::warn!(error = %e, "could not release the delivery; a replay of it waits until its lease runs out");
        }
    }
}

/// Runs one sink call, recording its duration and outcome.
async fn timed<T>(
    sink: &'static str,
    call: impl std::future::Future<Output = Result<T, SinkError>>,
) -> Result<T, SinkError> {
    let started = std::time::Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.is_transient() => "transient",
        Err(_) => "permanent",
    };
    hookline_shared::metrics::observe(
        "hookline_sink_seconds",
        &[("sink", sink), ("outcome", outcome)],
        started.elapsed(),
    );
    result
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use hookline_shared::envelope::{Metadata, now_millis};

    use super::*;

    use async_trait::async_trait;
    use hookline_shared::config::SlackSettings;
    use hookline_shared::sink::Outcome;

    use crate::sinks::archive_local::LocalArchive;
    use crate::sinks::ledger_sqlite::SqliteLedger;
    use crate::sinks::warehouse_sqlite::SqliteWarehouse;

    /// A warehouse that fails the way it is told to, counting calls.
    #[derive(Debug, Default)]
    struct FlakyWarehouse {
        transient: bool,
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Warehouse for FlakyWarehouse {
        async fn insert(&self, _: &Envelope, _: &str) -> Result<Outcome, SinkError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.transient {
                Err(SinkError::transient(
                    "locked",
                    std::io::Error::other("database is locked"),
                ))
            } else {
                Err(SinkError::permanent("row rejected", None))
            }
        }

        async fn deliveries(
            &self,
            _: &hookline_shared::sink::IndexQuery,
        ) -> Result<Vec<hookline_shared::sink::StoredDelivery>, SinkError> {
            Err(SinkError::permanent("not an index", None))
        }

        async fn contains(
            &self,
            _: &str,
            _: &str,
            _: chrono::DateTime<chrono::Utc>,
        ) -> Result<bool, SinkError> {
            Ok(false)
        }
    }

    /// A warehouse without a unique key, like BigQuery: it keeps every insert.
    #[derive(Debug, Default)]
    struct KeylessWarehouse {
        rows: std::sync::Mutex<Vec<String>>,
        /// Store the next row but answer with a transient error (the answer was lost).
        lose_answer: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Warehouse for KeylessWarehouse {
        async fn insert(&self, e: &Envelope, _: &str) -> Result<Outcome, SinkError> {
            self.rows.lock().unwrap().push(e.meta.delivery_id.clone());
            if self
                .lose_answer
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(SinkError::transient(
                    "connection reset",
                    std::io::Error::other("reset"),
                ));
            }
            Ok(Outcome::Written)
        }

        async fn deliveries(
            &self,
            _: &hookline_shared::sink::IndexQuery,
        ) -> Result<Vec<hookline_shared::sink::StoredDelivery>, SinkError> {
            Ok(Vec::new())
        }

        async fn contains(
            &self,
            _: &str,
            id: &str,
            _: chrono::DateTime<chrono::Utc>,
        ) -> Result<bool, SinkError> {
            Ok(self.rows.lock().unwrap().iter().any(|r| r == id))
        }
    }

    #[tokio::test]
    async fn a_keyless_warehouse_is_asked_before_a_second_insert() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = Arc::new(KeylessWarehouse::default());
        let p = pipeline(dir.path(), warehouse.clone());
        let e = envelope("k1", "push");
        assert_eq!(p.handle(&e, "m1", 1).await, Disposition::Ack);
        let done = p.ledger.done("gh", "k1").await.unwrap();
        assert!(done.contains_key("lease.1") && done.contains_key("warehouse"));
        // The crash window: the row went in, the ledger's `warehouse` record did not.
        let ledger = rusqlite::Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
        ledger
            .execute("DELETE FROM ledger WHERE step = 'warehouse'", [])
            .unwrap();
        assert_eq!(p.handle(&e, "m1", 2).await, Disposition::Ack);
        assert_eq!(*warehouse.rows.lock().unwrap(), ["k1"], "no second row");
        assert!(
            p.ledger
                .done("gh", "k1")
                .await
                .unwrap()
                .contains_key("warehouse")
        );
        // An earlier attempt that died before its insert: the row is written once.
        let e2 = envelope("k2", "push");
        p.ledger
            .record("gh", "k2", "lease.1", "m2 attempt=1 nonce=0")
            .await
            .unwrap();
        assert_eq!(p.handle(&e2, "m2", 2).await, Disposition::Ack);
        assert_eq!(*warehouse.rows.lock().unwrap(), ["k1", "k2"]);
        // An insert that landed but answered with an error is not retried into a second row.
        warehouse
            .lose_answer
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            p.handle(&envelope("k3", "push"), "m3", 1).await,
            Disposition::Ack
        );
        assert_eq!(*warehouse.rows.lock().unwrap(), ["k1", "k2", "k3"]);
        // Two copies of one delivery (a provider's resend) at the same moment: one row.
        let copy = envelope("k4", "push");
        let (a, b) = tokio::join!(p.handle(&copy, "m4", 1), p.handle(&copy, "m5", 1));
        assert!(
            [&a, &b].contains(&&Disposition::Ack)
                && [a, b]
                    .iter()
                    .any(|d| matches!(d, Disposition::Duplicate { .. })),
        );
        assert_eq!(*warehouse.rows.lock().unwrap(), ["k1", "k2", "k3", "k4"]);
    }

    pub(crate) fn pipeline(dir: &std::path::Path, warehouse: Arc<dyn Warehouse>) -> Pipeline {
        Pipeline {
            archive: Arc::new(LocalArchive::new(dir.join("archive")).unwrap()),
            ledger: Arc::new(SqliteLedger::open(&dir.join("ledger.sqlite3")).unwrap()),
            warehouse,
            slack: Slack::new(&SlackSettings::default(), None).unwrap(),
            retry: RetryPolicy {
                retries: 2,
                min: std::time::Duration::from_millis(1),
                max: std::time::Duration::from_millis(2),
            },
        }
    }

    #[tokio::test]
    async fn transient_sink_failure_nacks_after_in_process_retries() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = transient_warehouse();
        let e = envelope("d1", "push");
        nacked_for_the_warehouse(dir.path(), &e, warehouse.clone()).await;
        assert_eq!(warehouse.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_sink_failure_dead_letters_with_sink_reason_and_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), Arc::new(FlakyWarehouse::default()));
        let got = p.handle(&envelope("d1", "push"), "m1", 3).await;
        assert_eq!(
            got,
            Disposition::DeadLetter(DeadLetter {
                sink: "warehouse".into(),
                reason: "row rejected".into(),
                attempts: 3
            })
        );
    }

    #[tokio::test]
    async fn poison_payload_for_slack_dead_letters_after_archive_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = Arc::new(SqliteWarehouse::open(&dir.path().join("w.sqlite3")).unwrap());
        let p = pipeline(dir.path(), warehouse.clone());
        let mut e = envelope("poison", "issues");
        e.body = Bytes::from_static(br#"{"action":"opened","issue":{"title":"no url"}}"#);
        let row = |w: Arc<SqliteWarehouse>, e: Envelope| async move {
            w.contains(&e.meta.source, &e.meta.delivery_id, e.meta.received_at)
                .await
                .unwrap()
        };
        assert!(!row(warehouse.clone(), e.clone()).await);
        match p.handle(&e, "m1", 1).await {
            Disposition::DeadLetter(d) => assert_eq!(d.sink, "slack"),
            other => panic!("expected dead letter, got {other:?}"),
        }
        // The raw body is archived, and its row written, before anything can fail on it.
        let object = archive_name::object_name(&e.meta);
        assert_eq!(&p.archive.get(&object).await.unwrap()[..], &e.body[..]);
        assert!(
            row(warehouse, e).await,
            "the row is written before Slack fails"
        );
    }

    pub(crate) fn opened_issue(delivery_id: &str) -> Envelope {
        let mut e = envelope(delivery_id, "issues");
        e.body = Bytes::from_static(
            br#"{"action":"opened","issue":{"number":1,"title":"t","html_url":"https://gh/i/1","user":{"login":"u","html_url":"https://gh/u"}},"repository":{"full_name":"o/r","html_url":"https://gh/o/r"}}"#,
        );
        e
    }

    /// A pipeline posting to `slack` (a mock server), paced as the two settings say.
    pub(crate) fn paced_slack_pipeline(
        dir: &std::path::Path,
        slack: &wiremock::MockServer,
        min_interval_ms: u64,
        max_pacing_wait_ms: u64,
    ) -> Pipeline {
        let warehouse = SqliteWarehouse::open(&dir.join("w.sqlite3")).unwrap();
        let mut p = pipeline(dir, Arc::new(warehouse));
        p.slack = Slack::new(
            &SlackSettings {
                min_interval_ms,
                max_pacing_wait_ms,
                ..SlackSettings::default()
            },
            Some(format!("{}/hook", slack.uri()).into()),
        )
        .unwrap();
        p
    }

    fn slack_pipeline(dir: &std::path::Path, slack: &wiremock::MockServer) -> Pipeline {
        let d = SlackSettings::default();
        paced_slack_pipeline(dir, slack, d.min_interval_ms, d.max_pacing_wait_ms)
    }

    /// A Slack answering 200 to every post, expecting `posts` of them when given.
    pub(crate) async fn slack_mock(posts: Option<u64>) -> wiremock::MockServer {
        use wiremock::matchers::method;
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let slack = MockServer::start().await;
        let mock = Mock::given(method("POST")).respond_with(ResponseTemplate::new(200));
        match posts {
            Some(n) => mock.expect(n).mount(&slack).await,
            None => mock.mount(&slack).await,
        }
        slack
    }

    /// A post Slack's pacing cannot fit in (the next free slot further away than
    /// `max_pacing_wait_ms`) goes back to the queue saying how long until that slot, so the
    /// redelivery does not come back (and spend an attempt) before it.
    #[tokio::test]
    async fn a_paced_out_slack_post_nacks_with_the_wait_for_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let slack = slack_mock(Some(1)).await;
        let p = paced_slack_pipeline(dir.path(), &slack, 60_000, 1_000);
        assert_eq!(
            p.handle(&opened_issue("first"), "m1", 1).await,
            Disposition::Ack
        );
        let second = opened_issue("second");
        match p.handle(&second, "m2", 1).await {
            Disposition::Nack {
                sink: "slack",
                retry_after: Some(wait),
                ..
            } => assert!(
                wait > std::time::Duration::from_secs(55)
                    && wait <= std::time::Duration::from_secs(60),
                "{wait:?}"
            ),
            other => panic!("expected a nack with the wait, got {other:?}"),
        }
        // Nothing was posted, and nothing says it may have been: its redelivery is not
        // counted as a possible duplicate.
        let done = p.ledger.done("gh", &second.meta.delivery_id).await.unwrap();
        assert!(!done.contains_key("slack.intent"), "{done:?}");
        slack.verify().await;
    }

    /// The tests that move `hookline_slack_possible_duplicates_total` (one registry per
    /// process) take turns, so that each sees only its own change.
    pub(crate) static POSSIBLE_DUPLICATES: tokio::sync::Mutex<()> =
        tokio::sync::Mutex::const_new(());

    /// `hookline_slack_possible_duplicates_total` now.
    pub(crate) fn possible_duplicates() -> u64 {
        hookline_shared::metrics::render()
            .lines()
            .find_map(|l| l.strip_prefix("hookline_slack_possible_duplicates_total "))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    #[tokio::test]
    async fn slack_is_posted_again_only_in_the_documented_crash_window() {
        let _turn = POSSIBLE_DUPLICATES.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let slack = slack_mock(Some(2)).await;
        let p = slack_pipeline(dir.path(), &slack);

        // Done: a redelivery posts nothing.
        let e = opened_issue("window-1");
        assert_eq!(p.handle(&e, "m1", 1).await, Disposition::Ack);
        assert_eq!(p.handle(&e, "m1", 2).await, Disposition::Ack);
        // Intent without done (a crash right after Slack answered): posted again, counted.
        let crashed = opened_issue("window-2");
        p.ledger
            .record("gh", "window-2", "slack.intent", "")
            .await
            .unwrap();
        for step in ["archive.name", "archive", "warehouse"] {
            let note = if step.starts_with("archive") {
                archive_name::object_name(&crashed.meta)
            } else {
                String::new()
            };
            p.ledger
                .record("gh", "window-2", step, &note)
                .await
                .unwrap();
        }
        let before = possible_duplicates();
        assert_eq!(p.handle(&crashed, "m2", 2).await, Disposition::Ack);
        assert_eq!(possible_duplicates(), before + 1);
        slack.verify().await; // window-1 once, window-2 once
    }

    /// A ledger that logs every call into a shared log before passing it on.
    #[derive(Debug)]
    struct LoggedLedger {
        inner: SqliteLedger,
        log: Arc<std::sync::Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl Ledger for LoggedLedger {
        async fn done(
            &self,
            source: &str,
            id: &str,
        ) -> Result<BTreeMap<String, String>, SinkError> {
            self.log.lock().unwrap().push("done".into());
            self.inner.done(source, id).await
        }

        async fn record(
            &self,
            source: &str,
            id: &str,
            step: &str,
            note: &str,
        ) -> Result<(), SinkError> {
            self.log.lock().unwrap().push(format!("record {step}"));
            self.inner.record(source, id, step, note).await
        }

        async fn record_all(
            &self,
            source: &str,
            id: &str,
            steps: &[(&str, &str)],
        ) -> Result<(), SinkError> {
            let names: Vec<&str> = steps.iter().map(|(step, _)| *step).collect();
            self.log
                .lock()
                .unwrap()
                .push(format!("record {}", names.join(",")));
            self.inner.record_all(source, id, steps).await
        }

        async fn claim(
            &self,
            source: &str,
            id: &str,
            step: &str,
            proposed: &str,
        ) -> Result<String, SinkError> {
            self.log.lock().unwrap().push(format!("claim {step}"));
            self.inner.claim(source, id, step, proposed).await
        }

        async fn claim_all(
            &self,
            source: &str,
            id: &str,
            claims: &[(&str, &str)],
        ) -> Result<Vec<String>, SinkError> {
            // Leases are numbered; the log names their kind.
            let names: Vec<&str> = claims
                .iter()
                .map(|(step, _)| {
                    if step.starts_with("lease.") {
                        "lease"
                    } else {
                        step
                    }
                })
                .collect();
            self.log
                .lock()
                .unwrap()
                .push(format!("claim {}", names.join(",")));
            self.inner.claim_all(source, id, claims).await
        }
    }

    /// Slack's answer, logged into the same log as the ledger's calls.
    struct LoggedPost(Arc<std::sync::Mutex<Vec<String>>>);

    impl wiremock::Respond for LoggedPost {
        fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
            self.0.lock().unwrap().push("slack post".into());
            wiremock::ResponseTemplate::new(200)
        }
    }

    #[tokio::test]
    async fn a_message_records_its_steps_together_and_the_intent_before_the_post() {
        use wiremock::matchers::method;
        use wiremock::{Mock, MockServer};
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let slack = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(LoggedPost(Arc::clone(&log)))
            .expect(1)
            .mount(&slack)
            .await;
        let mut p = slack_pipeline(dir.path(), &slack);
        p.ledger = Arc::new(LoggedLedger {
            inner: SqliteLedger::open(&dir.path().join("ledger.sqlite3")).unwrap(),
            log: Arc::clone(&log),
        });
        let e = opened_issue("together");
        assert_eq!(p.handle(&e, "m1", 1).await, Disposition::Ack);
        assert_eq!(
            *log.lock().unwrap(),
            [
                "done",
                "claim lease,archive.name",
                "record archive,warehouse,slack.intent",
                "slack post",
                "record slack,lease.1.released",
            ]
        );
        let done = p.ledger.done("gh", "together").await.unwrap();
        for step in ["archive", "warehouse", "slack.intent", "slack"] {
            assert!(done.contains_key(step), "{step} missing: {done:?}");
        }
        assert_eq!(done["archive"], archive_name::object_name(&e.meta));

        // Without a Slack message, archive and warehouse are one record at the end.
        log.lock().unwrap().clear();
        assert_eq!(
            p.handle(&envelope("quiet", "push"), "m2", 1).await,
            Disposition::Ack
        );
        assert_eq!(
            log.lock().unwrap().last().map(String::as_str),
            Some("record archive,warehouse,lease.1.released")
        );
        slack.verify().await;
    }

    fn transient_warehouse() -> Arc<FlakyWarehouse> {
        Arc::new(FlakyWarehouse {
            transient: true,
            ..Default::default()
        })
    }

    /// Runs `e` as message m1's first attempt through a pipeline in `dir` with `warehouse`,
    /// checks it was nacked for the warehouse, and returns the ledger.
    async fn nacked_for_the_warehouse(
        dir: &std::path::Path,
        e: &Envelope,
        warehouse: Arc<FlakyWarehouse>,
    ) -> BTreeMap<String, String> {
        let failing = pipeline(dir, warehouse);
        let got = failing.handle(e, "m1", 1).await;
        assert!(
            matches!(
                got,
                Disposition::Nack {
                    sink: "warehouse",
                    ..
                }
            ),
            "{got:?}"
        );
        let (source, id) = (&e.meta.source, &e.meta.delivery_id);
        failing.ledger.done(source, id).await.unwrap()
    }

    #[tokio::test]
    async fn a_failure_after_the_archive_leaves_it_unrecorded_and_the_next_attempt_writes_it_once()
    {
        let dir = tempfile::tempdir().unwrap();
        let e = envelope("redo", "push");
        let done = nacked_for_the_warehouse(dir.path(), &e, transient_warehouse()).await;
        assert!(!done.contains_key("archive"), "{done:?}");

        let warehouse = SqliteWarehouse::open(&dir.path().join("w.sqlite3")).unwrap();
        let p = pipeline(dir.path(), Arc::new(warehouse));
        assert_eq!(p.handle(&e, "m1", 2).await, Disposition::Ack);
        let done = p.ledger.done("gh", "redo").await.unwrap();
        assert!(done.contains_key("archive") && done.contains_key("warehouse"));
        let object = archive_name::object_name(&e.meta);
        assert_eq!(&p.archive.get(&object).await.unwrap()[..], &e.body[..]);
        let day = dir.path().join("archive").join(&object);
        let objects = std::fs::read_dir(day.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect::<Vec<_>>();
        assert_eq!(objects.len(), 1, "{objects:?}");
    }

    /// A replay waits for an owner that has not said it is finished (acked or dead-lettered
    /// the message): running beside it could post to Slack twice.
    #[tokio::test]
    async fn a_replay_runs_only_once_the_owner_is_finished_with_the_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let slack = slack_mock(Some(2)).await;
        let p = slack_pipeline(dir.path(), &slack);
        let replay_of = |e: &Envelope| {
            let mut r = e.clone();
            r.meta.replay_count = 1;
            r
        };
        // m1 claimed the delivery (it is at work, or died mid-way): the replay goes back to
        // the queue for as long as that lease may still be live, and posts nothing.
        let e = opened_issue("live");
        p.ledger
            .record(
                "gh",
                "live",
                "lease.1",
                &format!(
                    "m1 attempt=1 nonce=0 at={}",
                    chrono::Utc::now().timestamp_millis()
                ),
            )
            .await
            .unwrap();
        match p.handle(&replay_of(&e), "r1", 1).await {
            Disposition::Nack {
                sink: "ledger",
                retry_after: Some(wait),
                ..
            } => assert!(wait > ownership::LIVE_FOR / 2, "{wait:?}"),
            other => panic!("expected a nack until the lease runs out, got {other:?}"),
        }
        // m1 comes back and finishes: acked, released; the replay then runs and posts
        // nothing again (the ledger has it all).
        assert_eq!(p.handle(&e, "m1", 2).await, Disposition::Ack);
        assert_eq!(p.handle(&replay_of(&e), "r1", 2).await, Disposition::Ack);
        let done = p.ledger.done("gh", "live").await.unwrap();
        assert!(done.contains_key("lease.3.released"), "{done:?}");

        // A dead-lettered owner releases the delivery too: its replay runs at once.
        let mut poison = opened_issue("dead");
        poison.body = Bytes::from_static(br#"{"action":"opened","issue":{"title":"no url"}}"#);
        assert!(matches!(
            p.handle(&poison, "m2", 1).await,
            Disposition::DeadLetter(_)
        ));
        let fixed = replay_of(&opened_issue("dead"));
        assert_eq!(p.handle(&fixed, "r2", 1).await, Disposition::Ack);
        slack.verify().await;
    }

    /// A nacked owner released the delivery: a replay runs at once, and the owner's
    /// redelivery is then the replay's duplicate.
    #[tokio::test]
    async fn a_replay_after_the_owner_nacked_runs_at_once_and_the_redelivery_is_its_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let e = envelope("nacked", "push");
        let done = nacked_for_the_warehouse(dir.path(), &e, transient_warehouse()).await;
        assert!(done.contains_key("lease.1.released"), "{done:?}");

        let warehouse = SqliteWarehouse::open(&dir.path().join("w.sqlite3")).unwrap();
        let p = pipeline(dir.path(), Arc::new(warehouse));
        let mut replay = e.clone();
        replay.meta.replay_count = 1;
        assert_eq!(p.handle(&replay, "r1", 1).await, Disposition::Ack);
        assert_eq!(
            p.handle(&e, "m1", 2).await,
            Disposition::Duplicate { owner: "r1".into() }
        );
    }

    #[tokio::test]
    async fn copies_of_one_delivery_processed_at_once_write_one_object() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = SqliteWarehouse::open(&dir.path().join("w.sqlite3")).unwrap();
        let p = pipeline(dir.path(), Arc::new(warehouse));
        // A provider's resend: same delivery id, received a second later.
        let first = envelope("twin", "push");
        let mut second = first.clone();
        second.meta.received_at += chrono::Duration::seconds(1);
        assert_ne!(
            archive_name::object_name(&first.meta),
            archive_name::object_name(&second.meta)
        );
        let (a, b) = tokio::join!(p.handle(&first, "m1", 1), p.handle(&second, "m2", 1));
        // One owns it, the other is acked as its duplicate.
        assert!(
            matches!(
                (&a, &b),
                (Disposition::Ack, Disposition::Duplicate { owner }) if owner == "m1"
            ) || matches!(
                (&a, &b),
                (Disposition::Duplicate { owner }, Disposition::Ack) if owner == "m2"
            ),
            "{a:?} {b:?}"
        );
        let mut objects = Vec::new();
        for day in std::fs::read_dir(dir.path().join("archive/gh")).unwrap() {
            objects.extend(
                std::fs::read_dir(day.unwrap().path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name()),
            );
        }
        assert_eq!(objects.len(), 1, "{objects:?}");
        let conn = rusqlite::Connection::open(dir.path().join("w.sqlite3")).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    pub(crate) fn envelope(delivery_id: &str, event_type: &str) -> Envelope {
        Envelope {
            body: Bytes::from_static(br#"{"action":"edited"}"#),
            meta: Metadata {
                source: "gh".into(),
                provider: "github".into(),
                event_type: Some(event_type.into()),
                delivery_id: delivery_id.into(),
                received_at: now_millis(),
                content_type: Some("application/json".into()),
                request_id: "r1".into(),
                replay_count: 0,
                extra: BTreeMap::new(),
            },
        }
    }
}
