//! Slack notifications through an incoming-webhook URL.
//!
//! Which deliveries notify is configuration ([`NotifyRule`]s; default: GitHub `issues`
//! `opened`). With no URL configured the message is logged instead, so the embedded default
//! runs with nothing set up. Classification: 429 (with `Retry-After`, clamped) and 5xx,
//! timeouts and connection errors are transient; any other 4xx is permanent (a revoked or
//! mistyped URL will not fix itself by retrying).

mod message;

use std::time::Duration;

use hookline_shared::config::{NotifyRule, SlackSettings};
use hookline_shared::envelope::Envelope;
use hookline_shared::sink::{Outcome, SinkError};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use secrecy::{ExposeSecret, SecretString};

pub use message::SlackMessage;

/// The longest `Retry-After` we honour in-process; longer waits go back to the queue.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Slack {
    url: Option<SecretString>,
    rules: Vec<NotifyRule>,
    client: reqwest::Client,
}

impl Slack {
    /// # Errors
    /// The HTTP client cannot be built (no TLS roots).
    pub fn new(
        settings: &SlackSettings,
        url: Option<SecretString>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()?;
        Ok(Self {
            url,
            rules: settings.notify.clone(),
            client,
        })
    }

    /// The message this delivery should produce, if a rule matches.
    ///
    /// # Errors
    /// A rule matched but the payload lacks what the message needs: permanent.
    pub fn message_for(&self, envelope: &Envelope) -> Result<Option<SlackMessage>, SinkError> {
        let meta = &envelope.meta;
        let Some(event_type) = meta.event_type.as_deref() else {
            return Ok(None);
        };
        let json: Option<serde_json::Value> = serde_json::from_slice(&envelope.body).ok();
        let action = json
            .as_ref()
            .and_then(|j| j.get("action"))
            .and_then(|a| a.as_str());
        let matched = self.rules.iter().any(|r| {
            r.event == event_type
                && r.provider.as_deref().is_none_or(|p| p == meta.provider)
                && r.source.as_deref().is_none_or(|s| s == meta.source)
                && (r.actions.is_empty()
                    || action.is_some_and(|a| r.actions.iter().any(|x| x == a)))
        });
        if !matched {
            return Ok(None);
        }
        message::build(meta, json.as_ref()).map(Some)
    }

    /// Posts (or logs) one message.
    ///
    /// # Errors
    /// Classified as described in the module docs.
    pub async fn post(&self, msg: &SlackMessage) -> Result<Outcome, SinkError> {
        let Some(url) = &self.url else {
            tracing::info!(slack_text = %msg.text, "slack message (no webhook URL configured, logged instead)");
            return Ok(Outcome::Written);
        };
        let response = self
            .client
            .post(url.expose_secret())
            .json(&msg.payload())
            .send()
            .await
            .map_err(|e| SinkError::transient("slack unreachable", e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Outcome::Written);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let body = response.text().await.unwrap_or_default();
        let detail = format!(
            "slack answered {status}: {}",
            body.chars().take(200).collect::<String>()
        );
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(SinkError::Transient {
                message: detail,
                retry_after,
                source: None,
            })
        } else {
            Err(SinkError::permanent(detail, None))
        }
    }
}
