//! The worker's HTTP side. Cloud Run requires every service to listen on `PORT`, so the
//! worker always serves `/healthz`, `/readyz` and `/metrics`; in push mode also
//! `POST /pubsub/push`.

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};

use crate::push::{self, PushState};

/// Push bodies are Pub/Sub messages (10 MB) in base64 inside JSON.
const MAX_PUSH_BYTES: usize = 16 * 1024 * 1024;

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(hookline_shared::metrics::render())
}

/// Serves until `shutdown` resolves; in-flight push requests get up to 8 s to finish.
///
/// # Errors
/// The listener cannot be served.
pub async fn run(
    listener: TcpListener,
    push: Option<PushState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(healthz))
            .route("/metrics", web::get().to(metrics_text));
        if let Some(state) = &push {
            app = app
                .app_data(web::Data::new(state.clone()))
                .app_data(web::PayloadConfig::new(MAX_PUSH_BYTES))
                .route("/pubsub/push", web::post().to(push::receive));
        }
        app
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(Duration::from_secs(8).as_secs())
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.await;
        handle.stop(true).await;
    });
    server.await
}
