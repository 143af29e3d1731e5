//! Routes, listener and lifecycle. The server takes a bound listener (tests bind port 0)
//! and a shutdown future (SIGTERM in production), mini-redis style.

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpServer, web};

use crate::handler;
use crate::state::AppState;

/// How long in-flight requests may take to finish after shutdown starts. Cloud Run allows
/// 10 s between SIGTERM and SIGKILL; publishes time out well before this.
const DRAIN: Duration = Duration::from_secs(8);

/// Registers the routes on an actix `App`.
pub fn routes(cfg: &mut web::ServiceConfig, metrics: bool) {
    cfg.service(
        web::resource("/hooks/{source}")
            .route(web::post().to(handler::receive))
            .default_service(web::to(handler::method_not_allowed)),
    )
    .route("/healthz", web::get().to(handler::healthz))
    .route("/readyz", web::get().to(handler::readyz));
    if metrics {
        cfg.route("/metrics", web::get().to(handler::metrics_text));
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish.
///
/// # Errors
/// The listener cannot be served.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    workers: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = Duration::from_millis(state.server.header_read_timeout_ms);
    let metrics = state.server.metrics;
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(|cfg| routes(cfg, metrics))
            .default_service(web::to(handler::not_found))
    })
    .workers(workers.max(1))
    .disable_signals()
    .client_request_timeout(header_timeout)
    .shutdown_timeout(DRAIN.as_secs())
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("ingest draining");
        handle.stop(true).await;
    });
    server.await
}
