//! The webhook request path. Nothing here waits on anything but the body and the queue:
//! verify, describe, publish, answer.

use std::sync::Arc;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};
use hookline_shared::config::ServerSettings;
use hookline_shared::envelope::{Envelope, Metadata};
use hookline_shared::metrics;
use tracing::Instrument as _;

use crate::body::read_limited;
use crate::error::IngestError;
use crate::headers::RequestHeaders;
use crate::state::AppState;

/// Header carrying a caller-chosen request id (Cloud Run's front end and most proxies set one).
const REQUEST_ID: &str = "x-request-id";

/// `POST /hooks/{source}`.
///
/// # Errors
/// Every refusal is an [`IngestError`]; see its status mapping.
pub async fn receive(
    req: HttpRequest,
    source: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, IngestError> {
    let received_at = (state.clock)();
    let request_id = request_id(&req);
    // At error level so `RUST_LOG=warn` keeps it: every warning carries the delivery id.
    let span = tracing::error_span!(
        "webhook",
        request_id = %request_id,
        source = %source,
        delivery_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(trace) = trace_id(&req) {
        span.record("trace_id", trace.as_str());
    }
    // Only configured names become label values: paths are attacker-controlled.
    let label = if state.sources.contains_key(source.as_str()) {
        source.as_str().to_owned()
    } else {
        "unknown".to_owned()
    };
    let result = async move {
        let source = state
            .sources
            .get(source.as_str())
            .ok_or(IngestError::UnknownSource)?;
        check_headers(&req, &state.server)?;
        let _permit = Arc::clone(&state.permits)
            .try_acquire_owned()
            .map_err(|_| IngestError::Overloaded {
                retry_after_secs: state.server.retry_after_secs,
            })?;
        let read_timeout = state.server.body_read_timeout();
        let body = tokio::time::timeout(
            read_timeout,
            read_limited(&req, payload, state.server.max_body_bytes),
        )
        .await
        .map_err(|_| IngestError::BodyTimeout(read_timeout))??;
        let headers = RequestHeaders(req.headers());
        let proof = source
            .provider
            .verify(&source.secrets, &headers, &body, received_at)?;
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            // Travels as a queue attribute (Pub/Sub: 1024 bytes at most); no real
            // content type is longer than this.
            .map(|ct| ct.chars().take(256).collect::<String>());
        let described =
            source
                .provider
                .describe(&proof, &headers, &body, content_type.as_deref())?;
        let span = tracing::Span::current();
        span.record("delivery_id", described.delivery_id.as_str());
        if let Some(event_type) = &described.event_type {
            span.record("event_type", event_type.as_str());
        }
        tracing::debug!(
            key_index = proof.key_index(),
            scheme = proof.scheme(),
            "signature verified"
        );

        if let Some(challenge) = described.challenge {
            tracing::info!("answered URL verification challenge");
            return Ok(HttpResponse::Ok().json(serde_json::json!({ "challenge": challenge })));
        }

        let envelope = Envelope {
            body,
            meta: Metadata {
                source: source.name.clone(),
                provider: source.provider.kind().to_owned(),
                event_type: described.event_type,
                delivery_id: described.delivery_id,
                received_at,
                content_type,
                request_id,
                replay_count: 0,
                extra: Default::default(),
            },
        };
        let queue_error = |source| IngestError::Queue {
            source,
            retry_after_secs: state.server.retry_after_secs,
        };
        let timeout = state.server.publish_timeout();
        let started = std::time::Instant::now();
        let message_id = tokio::time::timeout(timeout, state.publisher.publish(&envelope))
            .await
            .map_err(|_| queue_error(hookline_shared::queue::QueueError::Timeout(timeout)))?
            .map_err(queue_error)?;
        metrics::observe("hookline_publish_seconds", &[], started.elapsed());
        tracing::info!(
            %message_id,
            bytes = envelope.body.len(),
            key_index = proof.key_index(),
            scheme = proof.scheme(),
            "accepted"
        );
        Ok(HttpResponse::Ok().json(serde_json::json!({
            "status": "accepted",
            "delivery_id": envelope.meta.delivery_id,
            "message_id": message_id,
        })))
    }
    .instrument(span)
    .await;
    let status = match &result {
        Ok(r) => r.status(),
        Err(e) => actix_web::ResponseError::status_code(e),
    };
    metrics::inc(
        "hookline_ingest_requests_total",
        &[("source", &label), ("status", status.as_str())],
    );
    result
}

/// Refuses requests whose headers are beyond what any provider sends.
fn check_headers(req: &HttpRequest, limits: &ServerSettings) -> Result<(), IngestError> {
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > limits.max_headers || bytes > limits.max_header_bytes {
        return Err(IngestError::HeadersTooLarge {
            max_headers: limits.max_headers,
            max_bytes: limits.max_header_bytes,
        });
    }
    Ok(())
}

/// The trace id from W3C `traceparent` (`00-<trace>-<span>-<flags>`) or Google's
/// `X-Cloud-Trace-Context` (`<trace>/<span>;o=1`), for Cloud Logging's trace field.
pub fn trace_id(req: &HttpRequest) -> Option<String> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let trace = if let Some(tp) = header("traceparent") {
        tp.split('-').nth(1)?
    } else {
        header("x-cloud-trace-context")?.split('/').next()?
    };
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace.to_owned())
}

/// The caller's request id when it is a sane token, otherwise a new one.
fn request_id(req: &HttpRequest) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics::render())
}

/// `GET /readyz`: the queue answers within two seconds.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let check =
        tokio::time::timeout(std::time::Duration::from_secs(2), state.publisher.ready()).await;
    match check {
        Ok(Ok(())) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: queue unreachable");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "error": "queue_unavailable" }))
        }
        Err(_) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": "queue_timeout" }))
        }
    }
}

pub async fn method_not_allowed() -> Result<HttpResponse, IngestError> {
    Err(IngestError::MethodNotAllowed)
}

pub async fn not_found() -> Result<HttpResponse, IngestError> {
    Err(IngestError::NotFound)
}
