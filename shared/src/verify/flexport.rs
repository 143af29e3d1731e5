//! Flexport: `X-Hub-Signature`, hex HMAC-SHA1 of the raw body with or without `sha1=` (a
//! preset of the generic scheme). The event's `id` and `type` are in the JSON body.

use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::scheme::{HmacScheme, Preset};
use super::{DeliveryIdOrigin, Described, described, json_id};

pub(super) static SCHEME: LazyLock<HmacScheme> = LazyLock::new(|| Preset::Flexport.scheme());

pub(super) fn describe(json: Option<Map<String, Value>>, body: &[u8]) -> Described {
    let event_type = json
        .as_ref()
        .and_then(|m| m.get("type"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let id = json.as_ref().and_then(|m| json_id(m.get("id")));
    described(event_type, id, DeliveryIdOrigin::Body, body)
}
