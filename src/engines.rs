//! Engine selection: which queue the configuration names, opened for ingest (publisher)
//! or for the worker (subscriber). Shared by the binary and the tests, so both wire the
//! services the same way.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hookline_shared::config::{QueueBackend, Settings};
use hookline_shared::queue::embedded::EmbeddedQueue;
use hookline_shared::queue::pubsub::{Connection, PubSubPublisher, PubSubSubscription};
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

/// The subscription the worker pulls from.
pub async fn open_subscriber(settings: &Settings) -> anyhow::Result<Arc<dyn Subscriber>> {
    Ok(match settings.queue.backend {
        QueueBackend::Embedded => Arc::new(open_embedded(settings)?.subscriber()),
        QueueBackend::Pubsub => {
            let p = &settings.queue.pubsub;
            let connection = Connection::from_settings(settings)?;
            Arc::new(
                PubSubSubscription::open(
                    &connection,
                    &p.subscription,
                    settings.worker.concurrency,
                    Duration::from_secs(u64::from(p.ack_deadline_secs)),
                    Some(&p.dead_letter_topic),
                )
                .await
                .context("opening the Pub/Sub subscription")?,
            )
        }
    })
}

/// The dead-letter side, for operators: the embedded queue's dead-letter topic, or the
/// Pub/Sub operators' subscription on the dead-letter topic.
pub async fn open_dead_letters(settings: &Settings) -> anyhow::Result<Arc<dyn Subscriber>> {
    Ok(match settings.queue.backend {
        QueueBackend::Embedded => Arc::new(open_embedded(settings)?.dead_letter_subscriber()),
        QueueBackend::Pubsub => {
            let p = &settings.queue.pubsub;
            let connection = Connection::from_settings(settings)?;
            Arc::new(
                PubSubSubscription::open(
                    &connection,
                    &p.dead_letter_subscription,
                    32,
                    Duration::from_secs(60),
                    None,
                )
                .await
                .context("opening the dead-letter subscription")?,
            )
        }
    })
}
