//! Flexport: `X-Hub-Signature` carrying a hex HMAC-SHA1 of the raw body, with or without a
//! `sha1=` prefix. The event's `id` and `type` are in the JSON body.

use secrecy::SecretString;
use serde_json::{Map, Value};

use super::{
    Algorithm, DeliveryIdOrigin, Described, HeaderLookup, SignatureError, Verified, described,
    json_id, single,
};

pub(super) const SIG: &str = "X-Hub-Signature";

pub(super) fn verify(
    secrets: &[SecretString],
    headers: &(impl HeaderLookup + ?Sized),
    body: &[u8],
) -> Result<Verified, SignatureError> {
    let header = single(headers, SIG)?.ok_or(SignatureError::MissingHeader(SIG))?;
    let hex_sig = header.strip_prefix("sha1=").unwrap_or(header);
    let expected = hex::decode(hex_sig).map_err(|_| SignatureError::MalformedHeader(SIG))?;
    Algorithm::Sha1
        .matching_secret(secrets, &[body], &expected)
        .map(|key_index| Verified {
            key_index,
            scheme: "sha1",
        })
        .ok_or(SignatureError::Mismatch)
}

pub(super) fn describe(json: Option<Map<String, Value>>, body: &[u8]) -> Described {
    let event_type = json
        .as_ref()
        .and_then(|m| m.get("type"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let id = json.as_ref().and_then(|m| json_id(m.get("id")));
    described(event_type, id, DeliveryIdOrigin::Body, body)
}
