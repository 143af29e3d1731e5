//! Push mode: Pub/Sub POSTs each message to `/pubsub/push`; a 2xx answer acknowledges it,
//! anything else makes Pub/Sub deliver it again (with the subscription's retry policy and
//! dead-letter policy).
//!
//! A push request becomes a [`Delivery`] whose acker reports the outcome back to the HTTP
//! answer, and goes through the same [`runner::process`] as a pulled message: one
//! pipeline, two ways in.

pub mod oidc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use hookline_shared::queue::pubsub::DeadLetterTopic;
use hookline_shared::queue::{Acker, DeadLetter, Delivery, QueueError};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::pipeline::Pipeline;
use crate::runner;
use oidc::OidcVerifier;

/// What push requests share.
#[derive(Debug, Clone)]
pub struct PushState {
    pub pipeline: Arc<Pipeline>,
    pub dead_letter: DeadLetterTopic,
    /// `None` only for the emulator (`worker.push.verify_token = false`).
    pub verifier: Option<Arc<OidcVerifier>>,
}

/// Pub/Sub's push request body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushRequest {
    message: PushMessage,
    #[serde(default)]
    delivery_attempt: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushMessage {
    #[serde(default)]
    data: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    message_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ack,
    Nack,
}

/// Settles a pushed message by telling the waiting HTTP handler what to answer.
#[derive(Debug)]
struct PushAcker {
    reply: oneshot::Sender<Outcome>,
    dead_letter: DeadLetterTopic,
    body: Bytes,
    attributes: BTreeMap<String, String>,
}

#[async_trait]
impl Acker for PushAcker {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        let _ = self.reply.send(Outcome::Ack);
        Ok(())
    }
    async fn nack(self: Box<Self>) -> Result<(), QueueError> {
        let _ = self.reply.send(Outcome::Nack);
        Ok(())
    }
    async fn dead_letter(self: Box<Self>, reason: DeadLetter) -> Result<(), QueueError> {
        match self
            .dead_letter
            .publish(self.body.clone(), &self.attributes, &reason)
            .await
        {
            Ok(_) => {
                let _ = self.reply.send(Outcome::Ack);
                Ok(())
            }
            Err(e) => {
                let _ = self.reply.send(Outcome::Nack);
                Err(e)
            }
        }
    }
    async fn extend(&self, _by: Duration) -> Result<(), QueueError> {
        // Pub/Sub waits for the HTTP answer up to the subscription's ack deadline.
        Ok(())
    }
}

fn refuse(status: actix_web::http::StatusCode, code: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": code }))
}

/// `POST /pubsub/push`.
pub async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<PushState>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    if let Some(verifier) = &state.verifier {
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(e) = verifier.verify(auth).await {
            tracing::warn!(error = %e, "push request refused");
            return refuse(StatusCode::UNAUTHORIZED, "unauthenticated");
        }
    }
    let push: PushRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "push request is not a Pub/Sub push message");
            return refuse(StatusCode::BAD_REQUEST, "malformed_push");
        }
    };
    let data = match base64::engine::general_purpose::STANDARD.decode(&push.message.data) {
        Ok(d) => Bytes::from(d),
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "malformed_push"),
    };
    let (reply, outcome) = oneshot::channel();
    let delivery = Delivery {
        message_id: push.message.message_id,
        body: data.clone(),
        attributes: push.message.attributes.clone(),
        attempt: push.delivery_attempt.filter(|a| *a > 0).unwrap_or(1),
        acker: Box::new(PushAcker {
            reply,
            dead_letter: state.dead_letter.clone(),
            body: data,
            attributes: push.message.attributes,
        }),
    };
    runner::process(
        Arc::clone(&state.pipeline),
        delivery,
        runner::Abandon::never(),
    )
    .await;
    match outcome.await {
        Ok(Outcome::Ack) => HttpResponse::NoContent().finish(),
        _ => refuse(StatusCode::SERVICE_UNAVAILABLE, "retry"),
    }
}
