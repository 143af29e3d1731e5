//! The pull loop: lease up to `concurrency` messages, run each through the pipeline in its
//! own task, settle it with the queue, repeat until shutdown.
//!
//! On shutdown the loop stops pulling and gives in-flight messages until the drain deadline
//! to finish; anything still running then is stopped where it is and nacked, so the queue
//! delivers it again at once rather than after its lease (effects are idempotent and the
//! ledger remembers finished steps, so nothing is lost or doubled). A nack that cannot be
//! sent in time is dropped: the lease runs out and the message comes back all the same.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hookline_shared::metrics;
use hookline_shared::queue::{DeadLetter, Delivery, Subscriber};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::pipeline::{Disposition, Pipeline};

/// How long one pull waits for messages before looking at the shutdown signal again.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// While a message is processed its lease is pushed out every 10 s by 60 s: well inside the
/// smallest ack deadline (10 s is Pub/Sub's minimum), whatever the configured one.
const LEASE_EXTEND_EVERY: Duration = Duration::from_secs(10);
const LEASE_EXTEND_BY: Duration = Duration::from_secs(60);
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

/// Runs until `shutdown` resolves, then drains for at most `drain`.
pub async fn run(
    subscriber: Arc<dyn Subscriber>,
    pipeline: Arc<Pipeline>,
    concurrency: usize,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let (abandon_tx, abandon_rx) = tokio::sync::watch::channel(false);
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        let free = concurrency.saturating_sub(in_flight.len());
        if free == 0 {
            tokio::select! {
                () = &mut shutdown => break,
                _ = in_flight.join_next() => continue,
            }
        }
        let pulled = tokio::select! {
            () = &mut shutdown => break,
            pulled = subscriber.pull(free, PULL_WAIT) => pulled,
        };
        match pulled {
            Ok(deliveries) => {
                for delivery in deliveries {
                    in_flight.spawn(process(
                        Arc::clone(&pipeline),
                        delivery,
                        Abandon(Some(abandon_rx.clone())),
                    ));
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
            let mut keepalive = tokio::time::interval(LEASE_EXTEND_EVERY);
            keepalive.tick().await;
            loop {
                tokio::select! {
                    d = &mut work => break d,
                    () = abandon.requested() => break Disposition::Nack {
                        sink: "shutdown",
                        reason: "the worker is shutting down".into(),
                    },
                    _ = keepalive.tick() => {
                        if let Err(e) = delivery.acker.extend(LEASE_EXTEND_BY).await {
                            tracing::warn!(error = %e, "could not extend the lease");
                        }
                    }
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
            Disposition::Nack { sink, reason } => {
                metrics::inc("hookline_messages_total", &[("outcome", "nack")]);
                tracing::warn!(sink, reason, "sink failed; message goes back to the queue");
                delivery.acker.nack().await
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
