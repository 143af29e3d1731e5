//! The envelope: what ingest hands to the queue and the worker takes from it.
//!
//! It is shaped like a Pub/Sub message on purpose: `body` is the raw request body, byte for
//! byte (it is what the provider signed, so it is never re-serialised), and every piece of
//! metadata is a string attribute. The embedded queue stores exactly the same two parts, so
//! switching engines changes nothing a consumer sees.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

/// Attribute names, stable across engines and releases: operators filter on them and replay
/// tools read them back. Pub/Sub forbids names starting with `goog`; none of these do.
pub mod attr {
    pub const SOURCE: &str = "source";
    pub const PROVIDER: &str = "provider";
    pub const EVENT_TYPE: &str = "event_type";
    pub const DELIVERY_ID: &str = "delivery_id";
    pub const RECEIVED_AT: &str = "received_at";
    pub const CONTENT_TYPE: &str = "content_type";
    pub const REQUEST_ID: &str = "request_id";
    pub const REPLAY_COUNT: &str = "replay_count";
    /// Set when the body was too large for a queue message and was stored in the archive
    /// first; the value is the object name that holds it (a claim check).
    pub const CLAIM_CHECK: &str = "claim_check";
    /// Set on dead-lettered messages: why, by which sink, after how many attempts, when.
    pub const DEAD_LETTER_REASON: &str = "dead_letter_reason";
    pub const DEAD_LETTER_SINK: &str = "dead_letter_sink";
    pub const DEAD_LETTER_ATTEMPTS: &str = "dead_letter_attempts";
    pub const DEAD_LETTER_AT: &str = "dead_letter_at";
    /// Set by `hookline replay --from archive`: where the replayed body was read from.
    pub const REPLAYED_FROM: &str = "replayed_from";
}

/// Metadata that travels beside the raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The configured source name (the `{source}` path segment).
    pub source: String,
    /// The provider kind that verified the request, e.g. `github`.
    pub provider: String,
    /// The provider's event type (e.g. `X-GitHub-Event`), when the provider names one.
    pub event_type: Option<String>,
    /// The provider's delivery id, or a hash of the body when the provider has none. It is the
    /// key every idempotent side effect derives from.
    pub delivery_id: String,
    /// When ingest received the request (not when a consumer saw it).
    pub received_at: DateTime<Utc>,
    pub content_type: Option<String>,
    /// The ingest request id, for correlating logs across services.
    pub request_id: String,
    /// How many times an operator replayed this message; 0 for an original delivery.
    pub replay_count: u32,
    /// Attributes this version does not interpret (dead-letter reasons, claim checks, engine
    /// extras); kept so that a message survives a round trip untouched.
    pub extra: BTreeMap<String, String>,
}

/// A message body plus its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub body: Bytes,
    pub meta: Metadata,
}

/// Why a set of attributes cannot be read back as [`Metadata`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("attribute `{0}` is missing")]
    Missing(&'static str),
    #[error("attribute `{name}` is malformed: {value:?}")]
    Malformed { name: &'static str, value: String },
}

impl Metadata {
    /// Renders the metadata as queue message attributes.
    pub fn to_attributes(&self) -> BTreeMap<String, String> {
        let mut out = self.extra.clone();
        out.insert(attr::SOURCE.into(), self.source.clone());
        out.insert(attr::PROVIDER.into(), self.provider.clone());
        if let Some(event_type) = &self.event_type {
            out.insert(attr::EVENT_TYPE.into(), event_type.clone());
        }
        out.insert(attr::DELIVERY_ID.into(), self.delivery_id.clone());
        out.insert(attr::RECEIVED_AT.into(), format_time(self.received_at));
        if let Some(content_type) = &self.content_type {
            out.insert(attr::CONTENT_TYPE.into(), content_type.clone());
        }
        out.insert(attr::REQUEST_ID.into(), self.request_id.clone());
        if self.replay_count > 0 {
            out.insert(attr::REPLAY_COUNT.into(), self.replay_count.to_string());
        }
        out
    }

    /// Reads metadata back from queue message attributes.
    ///
    /// # Errors
    /// A required attribute is missing or unparsable: the message was not written by hookline
    /// (or was edited by hand), and the worker dead-letters it instead of guessing.
    pub fn from_attributes(attributes: &BTreeMap<String, String>) -> Result<Self, EnvelopeError> {
        let mut extra = attributes.clone();
        let mut take = |name: &'static str| extra.remove(name);
        let required = |value: Option<String>, name: &'static str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or(EnvelopeError::Missing(name))
        };
        let source = required(take(attr::SOURCE), attr::SOURCE)?;
        let provider = required(take(attr::PROVIDER), attr::PROVIDER)?;
        let delivery_id = required(take(attr::DELIVERY_ID), attr::DELIVERY_ID)?;
        let received_raw = required(take(attr::RECEIVED_AT), attr::RECEIVED_AT)?;
        let received_at = DateTime::parse_from_rfc3339(&received_raw)
            .map_err(|_| EnvelopeError::Malformed {
                name: attr::RECEIVED_AT,
                value: received_raw.clone(),
            })?
            .with_timezone(&Utc);
        let event_type = take(attr::EVENT_TYPE);
        let content_type = take(attr::CONTENT_TYPE);
        let request_id = take(attr::REQUEST_ID).unwrap_or_default();
        let replay_count = match take(attr::REPLAY_COUNT) {
            None => 0,
            Some(raw) => raw.parse().map_err(|_| EnvelopeError::Malformed {
                name: attr::REPLAY_COUNT,
                value: raw,
            })?,
        };
        Ok(Self {
            source,
            provider,
            event_type,
            delivery_id,
            received_at,
            content_type,
            request_id,
            replay_count,
            extra,
        })
    }
}

/// The current time at the precision attributes keep (milliseconds), so that an envelope
/// read back from the queue equals the one published.
pub fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// RFC 3339 in UTC with millisecond precision: sortable as text, and what BigQuery's
/// TIMESTAMP and SQLite's date functions both parse.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> Metadata {
        Metadata {
            source: "gh".into(),
            provider: "github".into(),
            event_type: Some("issues".into()),
            delivery_id: "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
            received_at: Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 1).unwrap(),
            content_type: Some("application/json".into()),
            request_id: "req-1".into(),
            replay_count: 2,
            extra: BTreeMap::from([("claim_check".to_string(), "obj".to_string())]),
        }
    }

    #[test]
    fn attributes_round_trip_including_unknown_ones() {
        let meta = sample();
        let attrs = meta.to_attributes();
        assert_eq!(attrs["received_at"], "2026-11-22T10:00:01.000Z");
        assert_eq!(attrs["replay_count"], "2");
        assert_eq!(Metadata::from_attributes(&attrs).unwrap(), meta);
    }

    #[test]
    fn missing_or_malformed_attributes_are_named() {
        let mut attrs = sample().to_attributes();
        attrs.remove("delivery_id");
        assert_eq!(
            Metadata::from_attributes(&attrs),
            Err(EnvelopeError::Missing("delivery_id"))
        );
        let mut attrs = sample().to_attributes();
        attrs.insert("received_at".into(), "yesterday".into());
        assert!(matches!(
            Metadata::from_attributes(&attrs),
            Err(EnvelopeError::Malformed {
                name: "received_at",
                ..
            })
        ));
    }
}
