//! Slack: `X-Slack-Signature: v0=<hex>` over `v0:{timestamp}:{body}` with
//! `X-Slack-Request-Timestamp` inside the window (the Slack preset of the generic scheme).
//! The Events API's `event_id` is the delivery id (Slack's retries keep it and add
//! `X-Slack-Retry-Num`), and a signed `url_verification` is answered with its `challenge`.

use serde_json::{Map, Value};

use super::{DeliveryIdOrigin, Described, described, json_id};

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
