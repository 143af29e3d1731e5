//! Starting the services from settings: each picks its engines from configuration.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hookline::engines::{open_publisher, open_subscriber};
use hookline_ingest::AppState;
use hookline_shared::config::Settings;
use hookline_worker::Pipeline;
use secrecy::SecretString;

/// What the worker may spend finishing in-flight messages after SIGTERM (Cloud Run: 10 s).
const WORKER_DRAIN: Duration = Duration::from_secs(8);

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
