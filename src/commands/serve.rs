//! Starting the services from settings.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hookline_ingest::AppState;
use hookline_shared::config::{QueueBackend, Settings};
use hookline_shared::queue::embedded::EmbeddedQueue;
use hookline_worker::Pipeline;
use secrecy::SecretString;

/// What the worker may spend finishing in-flight messages after SIGTERM (Cloud Run: 10 s).
const WORKER_DRAIN: Duration = Duration::from_secs(8);

fn open_queue(settings: &Settings) -> anyhow::Result<EmbeddedQueue> {
    match settings.queue.backend {
        QueueBackend::Embedded => {
            let q = &settings.queue.embedded;
            EmbeddedQueue::open(q, Duration::from_millis(settings.worker.poll_interval_ms))
                .with_context(|| format!("opening the embedded queue at {}", q.path.display()))
        }
    }
}

async fn run_ingest(
    settings: &Settings,
    queue: EmbeddedQueue,
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
    let addr = (settings.server.host.as_str(), settings.server.port);
    let listener =
        TcpListener::bind(addr).with_context(|| format!("binding {}:{}", addr.0, addr.1))?;
    let state = AppState::new(sources, Arc::new(queue), settings.server.clone());
    tracing::info!(
        addr = %listener.local_addr()?,
        sources = ?state.sources.keys().collect::<Vec<_>>(),
        ready_ms = started.elapsed().as_millis() as u64,
        "ingest listening"
    );
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    hookline_ingest::run(listener, state, workers, shutdown)
        .await
        .context("ingest server failed")
}

async fn run_worker(
    settings: &Settings,
    queue: EmbeddedQueue,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let slack_url = std::env::var(&settings.slack.webhook_url_env)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from);
    if slack_url.is_none() {
        tracing::info!(var = %settings.slack.webhook_url_env, "no Slack webhook URL set; Slack messages will be logged");
    }
    let pipeline = Pipeline::from_settings(settings, slack_url).context("building the sinks")?;
    tracing::info!(
        archive = %settings.archive.local.root.display(),
        warehouse = %settings.warehouse.sqlite.path.display(),
        "worker running"
    );
    hookline_worker::runner::run(
        Arc::new(queue.subscriber()),
        Arc::new(pipeline),
        settings.worker.concurrency,
        WORKER_DRAIN,
        shutdown,
    )
    .await;
    Ok(())
}

pub async fn ingest(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let queue = open_queue(&settings)?;
    run_ingest(&settings, queue, shutdown).await
}

pub async fn worker(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let queue = open_queue(&settings)?;
    run_worker(&settings, queue, shutdown).await
}

/// Both services in one process, sharing one queue handle; one signal stops both.
pub async fn dev(settings: Settings) -> anyhow::Result<()> {
    let queue = open_queue(&settings)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        let _ = tx.send(true);
    });
    let (ingest, worker) = tokio::join!(
        run_ingest(&settings, queue.clone(), stopped(rx.clone())),
        run_worker(&settings, queue, stopped(rx)),
    );
    ingest.and(worker)
}
