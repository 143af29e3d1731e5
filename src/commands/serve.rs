//! Starting the services from settings: each picks its engines from configuration.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hookline::engines::{open_publisher, open_subscriber};
use hookline_ingest::AppState;
use hookline_shared::config::{Settings, WorkerMode};
use hookline_shared::queue::pubsub::{Connection, DeadLetterTopic};
use hookline_worker::Pipeline;
use hookline_worker::push::PushState;
use hookline_worker::push::oidc::OidcVerifier;
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
    let state = AppState::new(sources, Arc::clone(&publisher), settings.server.clone());
    tracing::info!(
        addr = %listener.local_addr()?,
        sources = ?state.sources.keys().collect::<Vec<_>>(),
        queue = ?settings.queue.backend,
        ready_ms = started.elapsed().as_millis() as u64,
        "ingest listening"
    );
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let served = hookline_ingest::run(listener, state, workers, shutdown)
        .await
        .context("ingest server failed");
    publisher.close().await;
    served
}

/// The worker: the pull loop (pull mode) or the push endpoint (push mode), and in both
/// modes `/healthz` on `PORT`, which Cloud Run requires. `serve_http` is off in `dev`,
/// where ingest already holds the port.
pub async fn worker(
    settings: Settings,
    serve_http: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let slack_url = std::env::var(&settings.slack.webhook_url_env)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from);
    if slack_url.is_none() {
        tracing::info!(var = %settings.slack.webhook_url_env, "no Slack webhook URL set; Slack messages will be logged");
    }
    let pipeline = Arc::new(
        Pipeline::from_settings(&settings, slack_url)
            .await
            .context("building the sinks")?,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let listener = if serve_http {
        let addr = (settings.server.host.as_str(), settings.server.port);
        Some(TcpListener::bind(addr).with_context(|| format!("binding {}:{}", addr.0, addr.1))?)
    } else {
        None
    };
    tracing::info!(
        mode = ?settings.worker.mode,
        queue = ?settings.queue.backend,
        archive = ?settings.archive.backend,
        warehouse = ?settings.warehouse.backend,
        http = ?listener.as_ref().and_then(|l| l.local_addr().ok()),
        "worker running"
    );
    match settings.worker.mode {
        WorkerMode::Pull => {
            let subscriber = open_subscriber(&settings).await?;
            let pulling = hookline_worker::runner::run(
                subscriber,
                pipeline,
                hookline_worker::runner::Limits::from(&settings.worker),
                WORKER_DRAIN,
                stopped(stop_rx.clone()),
            );
            match listener {
                Some(l) => {
                    let (http, ()) = tokio::join!(
                        hookline_worker::http::run(l, None, stopped(stop_rx)),
                        pulling
                    );
                    http.context("worker HTTP server failed")
                }
                None => {
                    pulling.await;
                    Ok(())
                }
            }
        }
        WorkerMode::Push => {
            let listener = listener.context("push mode needs the HTTP listener")?;
            let connection = Connection::from_settings(&settings)?;
            let dead_letter =
                DeadLetterTopic::open(&connection, &settings.queue.pubsub.dead_letter_topic)
                    .await
                    .context("opening the dead-letter topic")?;
            let push = &settings.worker.push;
            let verifier = if push.verify_token {
                Some(Arc::new(OidcVerifier::new(push.clone())))
            } else {
                tracing::warn!(
                    "push tokens are NOT verified (worker.push.verify_token = false): emulator use only"
                );
                None
            };
            let state = PushState {
                pipeline,
                dead_letter,
                verifier,
            };
            hookline_worker::http::run(listener, Some(state), stopped(stop_rx))
                .await
                .context("worker HTTP server failed")
        }
    }
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
        worker(settings.clone(), false, stopped(rx)),
    );
    ingest.and(worker)
}
