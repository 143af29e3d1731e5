//! Reads the request body under a size limit.
//!
//! A declared `Content-Length` over the limit is refused before a byte is read; a chunked
//! body is refused as soon as it crosses the limit. Either way the provider gets 413, not a
//! dropped connection, and memory stays bounded by the limit.

use actix_web::HttpRequest;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::web::{BytesMut, Payload};
use bytes::Bytes;
use futures_util::StreamExt as _;

use crate::error::IngestError;

/// Collects the body, refusing anything over `limit` bytes.
///
/// # Errors
/// [`IngestError::TooLarge`] over the limit; [`IngestError::BodyRead`] when the client sent a
/// malformed or interrupted body.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<Bytes, IngestError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngestError::TooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(IngestError::BodyRead)?;
        if body.len() + chunk.len() > limit {
            return Err(IngestError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
