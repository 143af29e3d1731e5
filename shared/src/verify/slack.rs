//! Slack: `X-Slack-Signature: v0=<hex>` = HMAC-SHA256 over `v0:{timestamp}:{body}`, with
//! `X-Slack-Request-Timestamp` inside a window both ways. The Events API's `event_id` is the
//! delivery id (Slack's retries keep it and add `X-Slack-Retry-Num`), and a signed
//! `url_verification` request is answered by echoing its `challenge`.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{Map, Value};

use super::{
    Algorithm, DeliveryIdOrigin, Described, HeaderLookup, SignatureError, Verified, described,
    json_id, single,
};

pub(super) const SIG: &str = "X-Slack-Signature";
pub(super) const TIMESTAMP: &str = "X-Slack-Request-Timestamp";

pub(super) fn verify(
    secrets: &[SecretString],
    headers: &(impl HeaderLookup + ?Sized),
    body: &[u8],
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<Verified, SignatureError> {
    let signature = single(headers, SIG)?.ok_or(SignatureError::MissingHeader(SIG))?;
    let timestamp = single(headers, TIMESTAMP)?.ok_or(SignatureError::MissingHeader(TIMESTAMP))?;
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::MalformedHeader(TIMESTAMP))?;
    check_window(ts, now, tolerance_secs)?;
    let hex_sig = signature
        .strip_prefix("v0=")
        .ok_or(SignatureError::MalformedHeader(SIG))?;
    let expected = hex::decode(hex_sig).map_err(|_| SignatureError::MalformedHeader(SIG))?;
    let parts: [&[u8]; 4] = [b"v0:", timestamp.as_bytes(), b":", body];
    Algorithm::Sha256
        .matching_secret(secrets, &parts, &expected)
        .map(|key_index| Verified {
            key_index,
            scheme: "v0",
        })
        .ok_or(SignatureError::Mismatch)
}

/// Rejects timestamps further than `tolerance_secs` from `now`, in either direction.
pub(super) fn check_window(
    ts: i64,
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let age_secs = now.timestamp().saturating_sub(ts);
    if age_secs > tolerance_secs {
        Err(SignatureError::StaleTimestamp {
            age_secs,
            tolerance_secs,
        })
    } else if -age_secs > tolerance_secs {
        Err(SignatureError::FutureTimestamp {
            ahead_secs: -age_secs,
            tolerance_secs,
        })
    } else {
        Ok(())
    }
}

pub(super) fn describe(json: Option<Map<String, Value>>, body: &[u8]) -> Described {
    let Some(map) = json else {
        // Slash commands and interactivity are form-encoded and carry no event id.
        return described(None, None, DeliveryIdOrigin::Body, body);
    };
    let kind = map.get("type").and_then(Value::as_str);
    if kind == Some("url_verification") {
        let mut d = described(
            Some("url_verification".into()),
            None,
            DeliveryIdOrigin::Body,
            body,
        );
        d.challenge = map
            .get("challenge")
            .and_then(Value::as_str)
            .map(str::to_owned);
        return d;
    }
    // For `event_callback` the interesting type is the inner event's (`message`, ...).
    let event_type = map
        .get("event")
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .or(kind)
        .map(str::to_owned);
    described(
        event_type,
        json_id(map.get("event_id")),
        DeliveryIdOrigin::Body,
        body,
    )
}
