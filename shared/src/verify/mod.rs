//! Provider signature verification and the metadata each provider carries.
//!
//! Every provider kind has the same two steps, each in its own file:
//! - `verify`: checks the signature over the raw body against every configured secret (any
//!   match passes, so secrets can be rotated), in constant time, with the replay window
//!   measured against the time the request was received (`now`, passed in so tests control
//!   it). Only this step constructs [`Verified`].
//! - `describe`: reads the event type and the provider's delivery id, and a URL-verification
//!   challenge where the provider sends one. It runs only after `verify` succeeded.
//!
//! Headers are read through [`HeaderLookup`] so that this crate does not depend on a web
//! framework; a header sent twice is an error, never "take the first".

mod algorithm;
mod flexport;
mod github;
pub mod scheme;
mod shared_secret;
mod shopify;
mod slack;
pub mod standard_webhooks;
pub mod stripe;
mod window;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

pub use algorithm::{Algorithm, Encoding};
pub use scheme::{HmacScheme, Preset, Template, Timestamped};

/// Read access to request headers, case-insensitively, with every value of a repeated header.
pub trait HeaderLookup {
    /// All values sent for `name`, in order; empty when the header is absent.
    fn values(&self, name: &str) -> Vec<&[u8]>;
}

impl HeaderLookup for [(&str, &str)] {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
            .collect()
    }
}

impl<const N: usize> HeaderLookup for [(&str, &str); N] {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.as_slice().values(name)
    }
}

/// Why a request was rejected. Each variant maps to a stable error code in the response;
/// none carries a secret or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("required header `{0}` is missing")]
    MissingHeader(String),
    #[error("header `{0}` was sent more than once")]
    DuplicateHeader(String),
    #[error("header `{0}` is malformed")]
    MalformedHeader(String),
    #[error("timestamp is {age_secs}s old, outside the {tolerance_secs}s window")]
    StaleTimestamp { age_secs: i64, tolerance_secs: i64 },
    #[error("timestamp is {ahead_secs}s in the future, outside the {tolerance_secs}s window")]
    FutureTimestamp {
        ahead_secs: i64,
        tolerance_secs: i64,
    },
    #[error("no configured secret matches the signature")]
    Mismatch,
}

impl SignatureError {
    /// The stable code used in error responses and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_signature",
            Self::DuplicateHeader(_) => "duplicate_header",
            Self::MalformedHeader(_) => "malformed_signature",
            Self::StaleTimestamp { .. } | Self::FutureTimestamp { .. } => "timestamp_out_of_window",
            Self::Mismatch => "bad_signature",
        }
    }
}

/// Proof that a request's signature was checked. Only [`Provider::verify`] creates one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    key_index: usize,
    scheme: &'static str,
}

impl Verified {
    /// Which configured secret matched (its position in the source's list), for the log.
    pub fn key_index(&self) -> usize {
        self.key_index
    }
    /// Which signature scheme matched, e.g. `sha256` or the legacy `sha1`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }
}

/// Where a delivery id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryIdOrigin {
    Header,
    Body,
    /// No id was sent: a SHA-256 of the raw body stands in, so identical retries collapse.
    BodyHash,
}

/// What a verified request says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub event_type: Option<String>,
    pub delivery_id: String,
    pub delivery_id_origin: DeliveryIdOrigin,
    /// A URL-verification challenge to echo instead of enqueueing (Slack `url_verification`).
    pub challenge: Option<String>,
}

/// A provider id or event name we refuse: not a header a real provider sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` must be 1 to 200 visible ASCII characters")]
pub struct InvalidIdentifier(pub &'static str);

/// The provider kinds a source can be configured with, and their settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// `X-Hub-Signature-256`, falling back to the legacy `X-Hub-Signature` when it is absent.
    Github,
    /// `X-Hub-Signature`: HMAC-SHA1, hex, with or without the `sha1=` prefix.
    Flexport,
    /// `X-Shopify-Hmac-Sha256`: base64 HMAC-SHA256 of the body.
    Shopify,
    /// Slack's v0 signing over `v0:{timestamp}:{body}`, within `tolerance_secs` both ways.
    Slack { tolerance_secs: i64 },
    /// `Stripe-Signature: t=...,v1=...`, HMAC-SHA256 over `{t}.{body}`.
    Stripe { tolerance_secs: i64 },
    /// Standard Webhooks / Svix: HMAC-SHA256 over `{id}.{timestamp}.{body}`.
    StandardWebhooks { tolerance_secs: i64 },
    /// A secret sent verbatim in a header, compared in constant time (the pattern of
    /// Google's Cloud Run webhook guide).
    SharedSecret {
        header: String,
        delivery_id_header: Option<String>,
        event_type_header: Option<String>,
    },
    /// Any HMAC scheme: header, digest, encoding, prefix, optional signed timestamp.
    Hmac {
        scheme: HmacScheme,
        delivery_id_header: Option<String>,
        event_type_header: Option<String>,
    },
}

impl Provider {
    /// The provider kind's name as written in configuration and in message attributes.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Flexport => "flexport",
            Self::Shopify => "shopify",
            Self::Slack { .. } => "slack",
            Self::Stripe { .. } => "stripe",
            Self::StandardWebhooks { .. } => "standard_webhooks",
            Self::SharedSecret { .. } => "shared_secret",
            Self::Hmac { .. } => "hmac",
        }
    }

    /// Checks the request's signature against every secret. `now` is when the request was
    /// received: replay windows are measured from it.
    ///
    /// # Errors
    /// A [`SignatureError`] naming what is wrong; the request must be refused with 401.
    pub fn verify(
        &self,
        secrets: &[SecretString],
        headers: &(impl HeaderLookup + ?Sized),
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Verified, SignatureError> {
        match self {
            Self::Github => github::verify(secrets, headers, body, now),
            Self::Flexport => flexport::SCHEME.verify(secrets, headers, body, now),
            Self::Shopify => shopify::SCHEME.verify(secrets, headers, body, now),
            Self::Slack { tolerance_secs } => Preset::Slack {
                tolerance_secs: *tolerance_secs,
            }
            .scheme()
            .verify(secrets, headers, body, now),
            Self::Stripe { tolerance_secs } => {
                stripe::verify(secrets, headers, body, now, *tolerance_secs)
            }
            Self::StandardWebhooks { tolerance_secs } => {
                standard_webhooks::verify(secrets, headers, body, now, *tolerance_secs)
            }
            Self::SharedSecret { header, .. } => shared_secret::verify(secrets, headers, header),
            Self::Hmac { scheme, .. } => scheme.verify(secrets, headers, body, now),
        }
    }

    /// Reads the event type, delivery id and any challenge. Call only after [`Self::verify`].
    ///
    /// # Errors
    /// The provider sent an id or event type that no real provider sends (over 200 characters
    /// or not visible ASCII): such a value would end up in object names and log lines.
    pub fn describe(
        &self,
        _proof: &Verified,
        headers: &(impl HeaderLookup + ?Sized),
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<Described, InvalidIdentifier> {
        let json = || parse_json_object(body, content_type);
        let described = match self {
            Self::Github => github::describe(headers, body),
            Self::Flexport | Self::Stripe { .. } => body_type_and_id(json(), body),
            Self::Shopify => shopify::describe(headers, body),
            Self::Slack { .. } => slack::describe(json(), body),
            Self::StandardWebhooks { .. } => standard_webhooks::describe(headers, json(), body),
            Self::SharedSecret {
                delivery_id_header,
                event_type_header,
                ..
            }
            | Self::Hmac {
                delivery_id_header,
                event_type_header,
                ..
            } => described(
                event_type_header
                    .as_deref()
                    .and_then(|h| header_text(headers, h)),
                delivery_id_header
                    .as_deref()
                    .and_then(|h| header_text(headers, h)),
                DeliveryIdOrigin::Header,
                body,
            ),
        };
        check_identifier(&described.delivery_id, "delivery_id")?;
        if let Some(event_type) = &described.event_type {
            check_identifier(event_type, "event_type")?;
        }
        Ok(described)
    }

    /// The headers this provider would send for `body`, signed with `secret`, including
    /// the headers that carry the delivery id and event type where the provider has them.
    /// What the `send` subcommand and the tests use to act as a provider.
    pub fn sign(
        &self,
        secret: &str,
        body: &[u8],
        now: DateTime<Utc>,
        delivery_id: &str,
        event: &str,
    ) -> Vec<(String, String)> {
        let optional = |h: &Option<String>, v: &str| h.as_ref().map(|h| (h.clone(), v.to_owned()));
        match self {
            Self::Github => {
                let mut h = github::sign(secret, body, now);
                h.push((github::EVENT.into(), event.into()));
                h.push((github::DELIVERY.into(), delivery_id.into()));
                h
            }
            Self::Flexport => flexport::SCHEME.sign(secret, body, now),
            Self::Shopify => {
                let mut h = shopify::SCHEME.sign(secret, body, now);
                h.push((shopify::TOPIC.into(), event.into()));
                h.push((shopify::WEBHOOK_ID.into(), delivery_id.into()));
                h
            }
            Self::Slack { tolerance_secs } => Preset::Slack {
                tolerance_secs: *tolerance_secs,
            }
            .scheme()
            .sign(secret, body, now),
            Self::Stripe { .. } => stripe::sign(secret, body, now),
            Self::StandardWebhooks { .. } => {
                standard_webhooks::sign(secret, body, now, delivery_id)
            }
            Self::SharedSecret {
                header,
                delivery_id_header,
                event_type_header,
            } => [Some((header.clone(), secret.to_owned()))]
                .into_iter()
                .chain([
                    optional(delivery_id_header, delivery_id),
                    optional(event_type_header, event),
                ])
                .flatten()
                .collect(),
            Self::Hmac {
                scheme,
                delivery_id_header,
                event_type_header,
            } => {
                let mut h = scheme.sign(secret, body, now);
                h.extend(optional(delivery_id_header, delivery_id));
                h.extend(optional(event_type_header, event));
                h
            }
        }
    }
}

/// The one value of a header that must not repeat; `None` when absent.
fn single<'h>(
    headers: &'h (impl HeaderLookup + ?Sized),
    name: &str,
) -> Result<Option<&'h str>, SignatureError> {
    match headers.values(name).as_slice() {
        [] => Ok(None),
        [one] => std::str::from_utf8(one)
            .map(|s| Some(s.trim()))
            .map_err(|_| SignatureError::MalformedHeader(name.to_owned())),
        _ => Err(SignatureError::DuplicateHeader(name.to_owned())),
    }
}

/// A header's text for metadata (event type, delivery id): absent, empty, repeated or
/// non-UTF-8 values count as not sent.
fn header_text(headers: &(impl HeaderLookup + ?Sized), name: &str) -> Option<String> {
    single(headers, name)
        .ok()
        .flatten()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Parses the body as a JSON object when it claims to be (or looks like) JSON.
fn parse_json_object(
    body: &[u8],
    content_type: Option<&str>,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let looks_json = content_type.is_some_and(|ct| ct.contains("json"))
        || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !looks_json {
        return None;
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// A JSON value used as an id: strings as they are, numbers in their JSON text.
fn json_id(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Event type and delivery id from a JSON body's `type` and `id` (Flexport, Stripe).
fn body_type_and_id(
    json: Option<serde_json::Map<String, serde_json::Value>>,
    body: &[u8],
) -> Described {
    let event_type = json
        .as_ref()
        .and_then(|m| m.get("type"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let id = json.as_ref().and_then(|m| json_id(m.get("id")));
    described(event_type, id, DeliveryIdOrigin::Body, body)
}

/// The delivery id used when a provider sends none: identical bodies get identical ids, so a
/// provider's retry of the same payload is recognised as the same delivery.
pub fn body_hash_id(body: &[u8]) -> String {
    format!("sha256-{}", hex::encode(Sha256::digest(body)))
}

fn described(
    event_type: Option<String>,
    id: Option<String>,
    origin: DeliveryIdOrigin,
    body: &[u8],
) -> Described {
    let (delivery_id, delivery_id_origin) = match id {
        Some(id) => (id, origin),
        None => (body_hash_id(body), DeliveryIdOrigin::BodyHash),
    };
    Described {
        event_type,
        delivery_id,
        delivery_id_origin,
        challenge: None,
    }
}

fn check_identifier(value: &str, what: &'static str) -> Result<(), InvalidIdentifier> {
    let ok = !value.is_empty() && value.len() <= 200 && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(InvalidIdentifier(what))
    }
}

#[cfg(test)]
mod tests;
