//! Starting the services from settings: each picks its engines from configuration.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hookline_ingest::AppState;
use hookline_shared::config::{QueueBackend, Settings};
use hookline_shared::queue::embedded::EmbeddedQueue;
use hookline_shared::queue::pubsub::{Connection, PubSubPublisher, PubSubSubscription};
use hookline_shared::queue::{Publisher, Subscriber};
use hookline_worker::Pipeline;
use hookline_worker::pipeline::archive_from_settings;
use secrecy::SecretString;

/// What the worker may spend finishing in-flight messages after SIGTERM (Cloud Run: 10 s).
const WORKER_DRAIN: Duration = Duration::from_secs(8);

fn open_embedded(settings: &Settings) -> anyhow::Result<EmbeddedQueue> {
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

pub async fn ingest(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let sources = settings
        .resolve_sources(|var| std::env::var(var).ok())
        .context("resolving sources")?;
    anyhow::ensure!(
        !sources.is_empty(),
        "no sources configured: add a [sources.NAME] table (see hookline.toml and the README)"
    );
    let publisher = open_publisher(&settings).await?;
    let addr = (settings.server.host.as_str(), settings.server.port);
    let listener =
        TcpListener::bind(addr).with_context(|| format!("binding {}:{}", addr.0, addr.1))?;
    let state = AppState::new(sources, publisher, settings.server.clone());
    tracing::info!(
        addr = %listener.local_addr()?,
        sources = ?state.sources.keys().collect::<Vec<_>>(),
        queue = ?settings.queue.backend,
        ready_ms = started.elapsed().as_millis() as u64,
        "ingest listening"
    );
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    hookline_ingest::run(listener, state, workers, shutdown)
        .await
        .context("ingest server failed")
}

pub async fn worker(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let slack_url = std::env::var(&settings.slack.webhook_url_env)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from);
    if slack_url.is_none() {
        tracing::info!(var = %settings.slack.webhook_url_env, "no Slack webhook URL set; Slack messages will be logged");
    }
    let pipeline = Pipeline::from_settings(&settings, slack_url)
        .await
        .context("building the sinks")?;
    let subscriber = open_subscriber(&settings).await?;
    tracing::info!(
        queue = ?settings.queue.backend,
        archive = ?settings.archive.backend,
        warehouse = ?settings.warehouse.backend,
        "worker running"
    );
    hookline_worker::runner::run(
        subscriber,
        Arc::new(pipeline),
        settings.worker.concurrency,
        WORKER_DRAIN,
        shutdown,
    )
    .await;
    Ok(())
}

/// Both services in one process; one signal stops both.
pub async fn dev(settings: Settings) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        let _ = tx.send(true);
    });
    let (ingest, worker) = tokio::join!(
        ingest(settings.clone(), stopped(rx.clone())),
        worker(settings.clone(), stopped(rx)),
    );
    ingest.and(worker)
}
