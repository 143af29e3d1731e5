//! Every way ingest refuses a request, in one place: status, stable `error` code, and the
//! log line. Bodies are short JSON (`{"error": "bad_signature"}`) and never echo a secret,
//! a signature or the request body; the cause chain is logged once, here.

use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};
use hookline_shared::queue::QueueError;
use hookline_shared::verify::{InvalidIdentifier, SignatureError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no source is configured under this name")]
    UnknownSource,
    #[error("body exceeds the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("the request body could not be read")]
    BodyRead(#[source] actix_web::error::PayloadError),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("request headers exceed {max_headers} headers or {max_bytes} bytes")]
    HeadersTooLarge {
        max_headers: usize,
        max_bytes: usize,
    },
    #[error("too many requests in progress")]
    Overloaded { retry_after_secs: u32 },
    #[error("signature verification failed")]
    Signature(#[from] SignatureError),
    #[error("the request carries an unusable identifier")]
    Identifier(#[from] InvalidIdentifier),
    #[error("the queue did not accept the message")]
    Queue {
        #[source]
        source: QueueError,
        retry_after_secs: u32,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
}

impl IngestError {
    /// The stable code in the response body; operators and tests match on it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::TooLarge { .. } => "payload_too_large",
            Self::BodyRead(_) => "body_unreadable",
            Self::BodyTimeout(_) => "body_timeout",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::Overloaded { .. } => "overloaded",
            Self::Signature(e) => e.code(),
            Self::Identifier(_) => "invalid_identifier",
            Self::Queue { .. } => "queue_unavailable",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotFound => "not_found",
        }
    }
}

/// The error and its causes as one line, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        cur = cause.source();
    }
    out
}

impl ResponseError for IngestError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::UnknownSource | Self::NotFound => StatusCode::NOT_FOUND,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead(_) | Self::Identifier(_) => StatusCode::BAD_REQUEST,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Queue { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %chain(self), code = self.code(), "request refused");
        } else {
            tracing::warn!(error = %chain(self), code = self.code(), "request refused");
        }
        let mut response = HttpResponse::build(status);
        match self {
            Self::Queue {
                retry_after_secs, ..
            }
            | Self::Overloaded { retry_after_secs } => {
                response.insert_header((RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::MethodNotAllowed => {
                response.insert_header((ALLOW, "POST"));
            }
            _ => {}
        }
        response.json(serde_json::json!({ "error": self.code() }))
    }
}
