//! Engine selection: which queue the configuration names, opened for ingest (publisher)
//! or for the worker (subscriber). Shared by the binary and the tests, so both wire the
//! services the same way.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hookline_shared::config::{QueueBackend, Settings};
use hookline_shared::queue::discard::DiscardPublisher;
use hookline_shared::queue::embedded::EmbeddedQueue;
use hookline_shared::queue::pubsub::{
    Connection, FlowControl, NackBackoff, PubSubPublisher, PubSubSubscription,
};
use hookline_shared::queue::{Publisher, Subscriber};
use hookline_worker::pipeline::archive_from_settings;

/// The embedded queue file, opened (and created) from settings.
pub fn open_embedded(settings: &Settings) -> anyhow::Result<EmbeddedQueue> {
    let q = &settings.queue.embedded;
    EmbeddedQueue::open(q, Duration::from_millis(settings.worker.poll_interval_ms))
        .with_context(|| format!("opening the embedded queue at {}", q.path.display()))
}

/// The queue ingest publishes to.
pub async fn open_publisher(settings: &Settings) -> anyhow::Result<Arc<dyn Publisher>> {
    Ok(match settings.queue.backend {
        QueueBackend::Embedded => Arc::new(open_embedded(settings)?),
        QueueBackend::BenchDiscard => {
            tracing::warn!(
                "queue.backend = \"bench_discard\": every message is thrown away after the 200; benchmarks only"
            );
            Arc::new(DiscardPublisher)
        }
        QueueBackend::Pubsub => {
            let archive = archive_from_settings(settings)
                .await
                .context("setting up the archive for claim checks")?;
            let connection = Connection::from_settings(settings)?;
            Arc::new(
                PubSubPublisher::connect(
                    connection,
                    &settings.queue.pubsub,
                    settings.server.publish_timeout(),
                    archive,
                )
                .await
                .context("connecting to Pub/Sub")?,
            )
        }
    })
}

/// Which subscription to open: the worker's, or the operators' on the dead-letter side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Main,
    DeadLetters,
}

async fn open_side(settings: &Settings, side: Side) -> anyhow::Result<Arc<dyn Subscriber>> {
    if settings.queue.backend == QueueBackend::BenchDiscard {
        anyhow::bail!(
            "queue.backend = \"bench_discard\" keeps nothing to pull: it is for benchmarking ingest alone"
        );
    }
    if settings.queue.backend == QueueBackend::Embedded {
        let queue = open_embedded(settings)?;
        return Ok(match side {
            Side::Main => Arc::new(queue.subscriber()),
            Side::DeadLetters => Arc::new(queue.dead_letter_subscriber()),
        });
    }
    let p = &settings.queue.pubsub;
    let connection = Connection::from_settings(settings)?;
    // The worker forwards permanent failures to the dead-letter topic; the operators'
    // subscription is the end of the line.
    let (name, outstanding, dead_letter_topic) = match side {
        Side::Main => (
            &p.subscription,
            settings.worker.concurrency,
            Some(p.dead_letter_topic.as_str()),
        ),
        Side::DeadLetters => (&p.dead_letter_subscription, 32, None),
    };
    let deadline = Duration::from_secs(u64::from(p.ack_deadline_secs));
    let flow = FlowControl {
        messages: outstanding,
        bytes: settings.worker.max_in_flight_bytes,
    };
    // Without a retry policy Pub/Sub redelivers a nack at once: the worker waits instead.
    let nack_backoff = (!p.retry_policy && side == Side::Main).then(|| NackBackoff {
        min: Duration::from_secs(u64::from(p.min_backoff_secs)),
        max: Duration::from_secs(u64::from(p.max_backoff_secs)),
    });
    let subscription = PubSubSubscription::open(
        &connection,
        name,
        flow,
        deadline,
        dead_letter_topic,
        nack_backoff,
    )
    .await
    .with_context(|| format!("opening the Pub/Sub subscription {name}"))?;
    Ok(Arc::new(subscription))
}

/// The subscription the worker pulls from.
pub async fn open_subscriber(settings: &Settings) -> anyhow::Result<Arc<dyn Subscriber>> {
    open_side(settings, Side::Main).await
}

/// The dead-letter side, for operators: the embedded queue's dead-letter topic, or the
/// Pub/Sub operators' subscription on the dead-letter topic.
pub async fn open_dead_letters(settings: &Settings) -> anyhow::Result<Arc<dyn Subscriber>> {
    open_side(settings, Side::DeadLetters).await
}
