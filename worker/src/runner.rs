//! The pull loop: lease up to `concurrency` messages, run each through the pipeline in its
//! own task, settle it with the queue, repeat until shutdown.
//!
//! Memory is bounded by bytes as well as by count ([`Limits`]): a high concurrency is what
//! keeps a worker busy while its sinks wait on disks and networks, and the byte budget keeps
//! that safe when large messages arrive together.
//!
//! On shutdown the loop stops pulling and gives in-flight messages until the drain deadline
//! to finish; anything still running then is stopped where it is and nacked, so the queue
//! delivers it again after its retry backoff rather than after its lease (effects are
//! idempotent and the ledger remembers finished steps, so nothing is lost or doubled). A
//! nack that cannot be sent in time is dropped: the lease runs out and the message comes
//! back all the same. A pull under way is dropped too; what its lease takes after that is
//! handed back by the queue (the embedded one, uncounted; Pub/Sub's client nacks it).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hookline_shared::config::WorkerSettings;
use hookline_shared::metrics;
use hookline_shared::queue::{DeadLetter, Delivery, QueueError, Subscriber};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::pipeline::{Disposition, Pipeline};

/// How long one pull waits for messages before looking at the shutdown signal again.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// While a message is processed, a queue that leaves it to the consumer (the embedded one)
/// has its lease pushed out by a whole ack deadline every third of one, so two extensions
/// can be late before the message is delivered to a second worker; a killed worker's
/// messages still come back one deadline later. The fault suite, with a 5 s deadline and
/// sinks slowed to seconds per delivery, found the old fixed 10 s cadence too slow: leases
/// ran out mid-work, the message went to a second worker beside the first, and Slack was
/// posted two to six times. Queues that give no lease get the old cadence.
const LEASE_EXTEND_EVERY: Duration = Duration::from_secs(10);
const LEASE_EXTEND_BY: Duration = Duration::from_secs(60);

/// How often to extend a lease, and by how much.
fn lease_cadence(lease: Option<Duration>) -> (Duration, Duration) {
    match lease {
        Some(lease) => ((lease / 3).max(Duration::from_millis(100)), lease),
        None => (LEASE_EXTEND_EVERY, LEASE_EXTEND_BY),
    }
}

/// After the drain deadline, how long the abandoned messages get to send their nacks.
const NACK_GRACE: Duration = Duration::from_secs(1);

/// Tells in-flight work to stop and hand its message back to the queue.
#[derive(Debug, Clone)]
pub struct Abandon(Option<tokio::sync::watch::Receiver<bool>>);

impl Abandon {
    /// For work that is never abandoned (push requests: Pub/Sub retries them by itself).
    pub fn never() -> Self {
        Self(None)
    }

    async fn requested(&mut self) {
        if let Some(rx) = &mut self.0
            && rx.wait_for(|abandon| *abandon).await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }
}

/// How much the pull loop holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages in flight.
    pub concurrency: usize,
    /// Bytes of message bodies in flight. No new message is pulled while they reach it, and
    /// a pull asks for no more than what is left (the queue still hands over one message of
    /// any size, so the bound is this plus one message).
    pub max_bytes: usize,
}

impl From<&WorkerSettings> for Limits {
    fn from(w: &WorkerSettings) -> Self {
        Self {
            concurrency: w.concurrency,
            max_bytes: w.max_in_flight_bytes,
        }
    }
}

/// Counts a message's body in the bytes in flight until dropped (when its task ends, or is
/// aborted).
struct InFlightBytes {
    total: Arc<AtomicUsize>,
    size: usize,
}

impl InFlightBytes {
    fn add(total: &Arc<AtomicUsize>, size: usize) -> Self {
        total.fetch_add(size, Ordering::SeqCst);
        Self {
            total: Arc::clone(total),
            size,
        }
    }
}

impl Drop for InFlightBytes {
    fn drop(&mut self) {
        self.total.fetch_sub(self.size, Ordering::SeqCst);
    }
}

/// Runs until `shutdown` resolves, then drains for at most `drain`.
pub async fn run(
    subscriber: Arc<dyn Subscriber>,
    pipeline: Arc<Pipeline>,
    limits: Limits,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let (abandon_tx, abandon_rx) = tokio::sync::watch::channel(false);
    let mut in_flight = JoinSet::new();
    let bytes = Arc::new(AtomicUsize::new(0));
    loop {
        while in_flight.try_join_next().is_some() {}
        let free = limits.concurrency.saturating_sub(in_flight.len());
        let room = limits
            .max_bytes
            .saturating_sub(bytes.load(Ordering::SeqCst));
        if free == 0 || room == 0 {
            tokio::select! {
                () = &mut shutdown => break,
                _ = in_flight.join_next() => continue,
            }
        }
        let pulled = tokio::select! {
            () = &mut shutdown => break,
            pulled = subscriber.pull_within(free, room, PULL_WAIT) => pulled,
        };
        match pulled {
            Ok(deliveries) => {
                for delivery in deliveries {
                    let counted = InFlightBytes::add(&bytes, delivery.body.len());
                    let work = process(
                        Arc::clone(&pipeline),
                        delivery,
                        Abandon(Some(abandon_rx.clone())),
                    );
                    in_flight.spawn(async move {
                        let _counted = counted;
                        work.await;
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "pull failed; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::info!(in_flight = in_flight.len(), "worker draining");
    let drained = tokio::time::timeout(drain, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            abandoned = in_flight.len(),
            "drain deadline passed; nacking what is still in flight"
        );
        let _ = abandon_tx.send(true);
        let nacked = tokio::time::timeout(NACK_GRACE, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if nacked.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "nacks not confirmed in time; those leases will expire and redeliver"
            );
            in_flight.abort_all();
        }
    }
    subscriber.close().await;
}

/// Runs one delivery through the pipeline and settles it.
pub async fn process(pipeline: Arc<Pipeline>, delivery: Delivery, mut abandon: Abandon) {
    // At error level so the span is never filtered out: with `RUST_LOG=warn` an info span
    // is disabled, and its warnings would lose the delivery id.
    let span = tracing::error_span!(
        "message",
        message_id = %delivery.message_id,
        attempt = delivery.attempt,
        delivery_id = tracing::field::Empty,
        source = tracing::field::Empty,
    );
    async move {
        let envelope = match delivery.envelope() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "undecodable message; dead-lettering");
                metrics::inc("hookline_messages_total", &[("outcome", "dead_letter")]);
                metrics::inc("hookline_dead_lettered_total", &[("sink", "decode")]);
                let reason = DeadLetter {
                    sink: "decode".into(),
                    reason: e.to_string(),
                    attempts: delivery.attempt,
                };
                if let Err(e) = delivery.acker.dead_letter(reason).await {
                    tracing::error!(error = %e, "could not dead-letter; it will be redelivered");
                }
                return;
            }
        };
        let lag = chrono::Utc::now() - envelope.meta.received_at;
        metrics::observe("hookline_queue_lag_seconds", &[], lag.to_std().unwrap_or_default());
        let span = tracing::Span::current();
        span.record("delivery_id", envelope.meta.delivery_id.as_str());
        span.record("source", envelope.meta.source.as_str());
        let disposition = {
            let work = pipeline.handle(&envelope, &delivery.message_id, delivery.attempt);
            tokio::pin!(work);
            // Keep the lease while sinks are slow, so a second worker never starts on a
            // message this one is still processing (Pub/Sub's client does this by itself).
            let (every, by) = lease_cadence(delivery.acker.lease());
            let mut keepalive = tokio::time::interval(every);
            keepalive.tick().await;
            loop {
                tokio::select! {
                    d = &mut work => break d,
                    () = abandon.requested() => {
                        // The work stopped here, outside the pipeline: say so in the ledger
                        // before the nack (nothing else holds the message yet), so a replay
                        // of it need not wait out the lease.
                        pipeline.release_if_owner(&envelope, &delivery.message_id).await;
                        break Disposition::Nack {
                            sink: "shutdown",
                            reason: "the worker is shutting down".into(),
                            retry_after: None,
                        };
                    }
                    _ = keepalive.tick() => match delivery.acker.extend(by).await {
                        Ok(()) => {}
                        // Another worker holds it now and does the work: stop here, before
                        // a step the ledger cannot share (a Slack post) runs twice at once.
                        Err(QueueError::LeaseLost) => break Disposition::Nack {
                            sink: "lease",
                            reason: "the lease was lost to another worker; stopped".into(),
                            retry_after: None,
                        },
                        Err(e) => tracing::warn!(error = %e, "could not extend the lease"),
                    },
                }
            }
        };
        let settled = match disposition {
            Disposition::Ack => {
                metrics::inc("hookline_messages_total", &[("outcome", "ack")]);
                tracing::info!("processed");
                delivery.acker.ack().await
            }
            Disposition::Duplicate { owner } => {
                metrics::inc("hookline_messages_total", &[("outcome", "duplicate")]);
                tracing::info!(owner, "another copy of this delivery owns it; acking this one");
                delivery.acker.ack().await
            }
            Disposition::Nack {
                sink,
                reason,
                retry_after,
            } => {
                metrics::inc("hookline_messages_total", &[("outcome", "nack")]);
                tracing::warn!(
                    sink,
                    reason,
                    retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
                    "sink failed; message goes back to the queue"
                );
                match retry_after {
                    Some(wait) => delivery.acker.nack_after(wait).await,
                    None => delivery.acker.nack().await,
                }
            }
            Disposition::DeadLetter(reason) => {
                metrics::inc("hookline_messages_total", &[("outcome", "dead_letter")]);
                metrics::inc("hookline_dead_lettered_total", &[("sink", sink_label(&reason.sink))]);
                tracing::error!(sink = %reason.sink, reason = %reason.reason, "permanent failure; dead-lettering");
                delivery.acker.dead_letter(reason).await
            }
        };
        if let Err(e) = settled {
            tracing::error!(error = %e, "could not settle; the message will be redelivered");
        }
    }
    .instrument(span)
    .await;
}

/// The fixed vocabulary of sink labels.
fn sink_label(sink: &str) -> &'static str {
    match sink {
        "archive" => "archive",
        "warehouse" => "warehouse",
        "slack" => "slack",
        "claim_check" => "claim_check",
        "ledger" => "ledger",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use hookline_shared::queue::{Acker, QueueError};

    use super::*;
    use crate::sinks::warehouse_sqlite::SqliteWarehouse;

    /// Hands out one undecodable message of the next size per pull, recording what each
    /// pull asked for; their dead-lettering waits until `release`, so they stay in flight.
    #[derive(Debug)]
    struct Sized {
        sizes: Mutex<VecDeque<usize>>,
        pulls: Mutex<Vec<(usize, usize)>>,
        release: tokio::sync::watch::Receiver<bool>,
    }

    #[derive(Debug)]
    struct HeldAcker(tokio::sync::watch::Receiver<bool>);

    #[async_trait]
    impl Acker for HeldAcker {
        async fn ack(self: Box<Self>) -> Result<(), QueueError> {
            Ok(())
        }
        async fn nack(self: Box<Self>) -> Result<(), QueueError> {
            Ok(())
        }
        async fn dead_letter(mut self: Box<Self>, _: DeadLetter) -> Result<(), QueueError> {
            let _ = self.0.wait_for(|released| *released).await;
            Ok(())
        }
        async fn extend(&self, _: Duration) -> Result<(), QueueError> {
            Ok(())
        }
    }

    #[async_trait]
    impl Subscriber for Sized {
        async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
            self.pull_within(max, usize::MAX, wait).await
        }

        async fn pull_within(
            &self,
            max: usize,
            max_bytes: usize,
            wait: Duration,
        ) -> Result<Vec<Delivery>, QueueError> {
            let next = self.sizes.lock().unwrap().pop_front();
            let Some(size) = next else {
                tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
                return Ok(Vec::new());
            };
            self.pulls.lock().unwrap().push((max, max_bytes));
            Ok(vec![Delivery {
                message_id: format!("m{size}"),
                body: bytes::Bytes::from(vec![b'x'; size]),
                attributes: std::collections::BTreeMap::new(),
                attempt: 1,
                acker: Box::new(HeldAcker(self.release.clone())),
            }])
        }
    }

    /// What a delivery was settled with. With `lease_lost`, every extension answers that
    /// another consumer holds the message now.
    #[derive(Debug)]
    struct Recording(Arc<Mutex<Vec<String>>>, bool);

    #[async_trait]
    impl Acker for Recording {
        async fn ack(self: Box<Self>) -> Result<(), QueueError> {
            self.0.lock().unwrap().push("ack".into());
            Ok(())
        }
        async fn nack(self: Box<Self>) -> Result<(), QueueError> {
            self.0.lock().unwrap().push("nack".into());
            Ok(())
        }
        async fn nack_after(self: Box<Self>, wait: Duration) -> Result<(), QueueError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("nack_after {}", wait.as_secs()));
            Ok(())
        }
        async fn dead_letter(self: Box<Self>, _: DeadLetter) -> Result<(), QueueError> {
            self.0.lock().unwrap().push("dead_letter".into());
            Ok(())
        }
        async fn extend(&self, _: Duration) -> Result<(), QueueError> {
            if self.1 {
                return Err(QueueError::LeaseLost);
            }
            Ok(())
        }
        fn lease(&self) -> Option<Duration> {
            Some(Duration::from_millis(300))
        }
    }

    /// Runs an opened-issue delivery per `(delivery id, lease lost)` through `pipeline`, one
    /// after another; how each was settled.
    async fn settle_in_turn(
        pipeline: crate::pipeline::Pipeline,
        deliveries: &[(&str, bool)],
    ) -> Vec<String> {
        let pipeline = Arc::new(pipeline);
        let settled = Arc::new(Mutex::new(Vec::new()));
        for &(id, lease_lost) in deliveries {
            let e = crate::pipeline::tests::opened_issue(id);
            let delivery = Delivery {
                message_id: format!("m-{id}"),
                body: e.body.clone(),
                attributes: e.meta.to_attributes(),
                attempt: 1,
                acker: Box::new(Recording(Arc::clone(&settled), lease_lost)),
            };
            process(Arc::clone(&pipeline), delivery, Abandon::never()).await;
        }
        settled.lock().unwrap().clone()
    }

    /// A message whose Slack post is paced out goes back to the queue with the wait for
    /// its slot, not after the short backoff of an ordinary nack.
    #[tokio::test]
    async fn a_nack_with_a_wait_is_settled_with_that_wait() {
        use crate::pipeline::tests::{paced_slack_pipeline, slack_mock};
        let dir = tempfile::tempdir().unwrap();
        let slack = slack_mock(None).await;
        let p = paced_slack_pipeline(dir.path(), &slack, 90_000, 1_000);
        let settled = settle_in_turn(p, &[("first", false), ("second", false)]).await;
        assert_eq!(settled.len(), 2, "{settled:?}");
        assert_eq!(settled[0], "ack");
        let wait: u64 = settled[1]
            .strip_prefix("nack_after ")
            .unwrap_or_else(|| panic!("{settled:?}"))
            .parse()
            .unwrap();
        assert!((85..=90).contains(&wait), "{settled:?}");
    }

    /// A lease found lost while the work waits (here for its Slack slot) stops the work
    /// before it posts: the message's new holder posts it.
    #[tokio::test]
    async fn a_lost_lease_stops_the_work_before_slack() {
        use crate::pipeline::tests::{paced_slack_pipeline, slack_mock};
        let dir = tempfile::tempdir().unwrap();
        let slack = slack_mock(Some(1)).await;
        let p = paced_slack_pipeline(dir.path(), &slack, 1_500, 10_000);
        // The second waited for its slot 1.5 s away; its lease was found lost within 0.1 s.
        assert_eq!(
            settle_in_turn(p, &[("kept", false), ("lost", true)]).await,
            ["ack", "nack"]
        );
        slack.verify().await; // one post: the first message's
    }

    /// Work stopped by a shutdown releases the delivery before its nack (a replay need not
    /// wait out the lease); work stopped by a lost lease does not (the message's new holder
    /// may hold a newer lease of the same message id).
    #[tokio::test]
    async fn a_shutdown_releases_the_delivery_and_a_lost_lease_does_not() {
        use crate::pipeline::tests::{opened_issue, paced_slack_pipeline, slack_mock};
        let dir = tempfile::tempdir().unwrap();
        let slack = slack_mock(Some(1)).await;
        let pipeline = Arc::new(paced_slack_pipeline(dir.path(), &slack, 5_000, 10_000));
        let settled = Arc::new(Mutex::new(Vec::new()));
        let delivery = |id: &str, lease_lost: bool| {
            let e = opened_issue(id);
            Delivery {
                message_id: format!("m-{id}"),
                body: e.body.clone(),
                attributes: e.meta.to_attributes(),
                attempt: 1,
                acker: Box::new(Recording(Arc::clone(&settled), lease_lost)),
            }
        };
        // The first posts; the next two wait for their Slack slot, 5 s away.
        process(
            Arc::clone(&pipeline),
            delivery("first", false),
            Abandon::never(),
        )
        .await;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = tokio::spawn(process(
            Arc::clone(&pipeline),
            delivery("stopped", false),
            Abandon(Some(stop_rx)),
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(true).unwrap();
        stopped.await.unwrap();
        process(
            Arc::clone(&pipeline),
            delivery("lost", true),
            Abandon::never(),
        )
        .await;
        assert_eq!(*settled.lock().unwrap(), ["ack", "nack", "nack"]);
        let done = |id: &'static str| {
            let ledger = Arc::clone(&pipeline.ledger);
            async move { ledger.done("gh", id).await.unwrap() }
        };
        let stopped = done("stopped").await;
        assert!(stopped.contains_key("lease.1.released"), "{stopped:?}");
        let lost = done("lost").await;
        assert!(
            lost.contains_key("lease.1") && !lost.contains_key("lease.1.released"),
            "{lost:?}"
        );
        slack.verify().await;
    }

    #[tokio::test]
    async fn no_pull_beyond_the_byte_budget_until_bodies_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = Arc::new(SqliteWarehouse::open(&dir.path().join("w.sqlite3")).unwrap());
        let pipeline = Arc::new(crate::pipeline::tests::pipeline(dir.path(), warehouse));
        let (release, held) = tokio::sync::watch::channel(false);
        let subscriber = Arc::new(Sized {
            sizes: Mutex::new(VecDeque::from([100, 100, 100, 100])),
            pulls: Mutex::new(Vec::new()),
            release: held,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = Limits {
            concurrency: 10,
            max_bytes: 250,
        };
        let running = tokio::spawn(run(
            Arc::clone(&subscriber) as Arc<dyn Subscriber>,
            pipeline,
            limits,
            Duration::from_secs(5),
            async {
                let _ = stopped.await;
            },
        ));
        let pulls = || subscriber.pulls.lock().unwrap().clone();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // 250 bytes of room, then 150, then 50 (a message comes whatever its size); with
        // 300 bytes in flight the loop waits instead of pulling.
        assert_eq!(pulls(), [(10, 250), (9, 150), (8, 50)]);
        release.send(true).unwrap();
        for _ in 0..100 {
            if pulls().len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            pulls()[3],
            (10, 250),
            "all room back once the bodies are done"
        );
        stop.send(()).unwrap();
        running.await.unwrap();
    }
}
