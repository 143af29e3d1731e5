//! Standard Webhooks (what Svix sends): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` (or the same with `svix-`), HMAC-SHA256 over `{id}.{timestamp}.{body}`
//! keyed with the base64 after `whsec_`, signatures written `v1,<base64>` and separated by
//! spaces. Only `v1` (symmetric) signatures are checked; `v1a` (asymmetric) ones are skipped.
//! The delivery id is `webhook-id`, which the sender keeps across retries.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use super::{
    Algorithm, DeliveryIdOrigin, Described, HeaderLookup, SignatureError, Verified, described,
    single, window,
};

/// The header names, in the order they are looked for.
const NAMESETS: [[&str; 3]; 2] = [
    ["webhook-id", "webhook-timestamp", "webhook-signature"],
    ["svix-id", "svix-timestamp", "svix-signature"],
];

/// Fewest bytes a signing key may have: the specification's keys are 24 to 64 random bytes.
/// A shorter one can be guessed (`whsec_` alone decodes to an empty key, whose signatures
/// anyone can compute).
pub const MIN_KEY_BYTES: usize = 24;

/// The signing key of a `whsec_...` secret.
///
/// # Errors
/// The part after `whsec_` is not base64, or decodes to fewer than [`MIN_KEY_BYTES`]: a
/// configuration mistake, reported at start (and such a secret never verifies anything).
pub fn key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "a standard_webhooks secret is `whsec_` followed by base64".to_owned())?;
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "a standard_webhooks secret's key (the base64 after `whsec_`) is {} bytes; \
             at least {MIN_KEY_BYTES} are needed (the specification's are 24 to 64)",
            key.len()
        ));
    }
    Ok(key)
}

/// The `v1` signatures of a `webhook-signature` header, decoded; others are skipped.
pub fn parse_signatures(value: &str) -> Vec<Vec<u8>> {
    value
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| base64::engine::general_purpose::STANDARD.decode(sig).ok())
        .collect()
}

/// The names in use: `webhook-*` when its id header is present, else `svix-*`.
fn names(headers: &(impl HeaderLookup + ?Sized)) -> [&'static str; 3] {
    if headers.values(NAMESETS[0][0]).is_empty() && !headers.values(NAMESETS[1][0]).is_empty() {
        NAMESETS[1]
    } else {
        NAMESETS[0]
    }
}

pub(super) fn verify(
    secrets: &[SecretString],
    headers: &(impl HeaderLookup + ?Sized),
    body: &[u8],
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<Verified, SignatureError> {
    let [id_h, ts_h, sig_h] = names(headers);
    let missing = |h: &str| SignatureError::MissingHeader(h.to_owned());
    let id = single(headers, id_h)?.ok_or_else(|| missing(id_h))?;
    let ts = single(headers, ts_h)?.ok_or_else(|| missing(ts_h))?;
    let sig = single(headers, sig_h)?.ok_or_else(|| missing(sig_h))?;
    window::check(ts_h, ts, now, tolerance_secs)?;
    let candidates = parse_signatures(sig);
    if candidates.is_empty() {
        return Err(SignatureError::MalformedHeader(sig_h.to_owned()));
    }
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
    secrets
        .iter()
        .position(|s| {
            key(s.expose_secret()).is_ok_and(|k| {
                candidates
                    .iter()
                    .any(|c| Algorithm::Sha256.verifies(&k, &parts, c))
            })
        })
        .map(|key_index| Verified {
            key_index,
            scheme: "v1",
        })
        .ok_or(SignatureError::Mismatch)
}

pub(super) fn describe(
    headers: &(impl HeaderLookup + ?Sized),
    json: Option<Map<String, Value>>,
    body: &[u8],
) -> Described {
    let [id_h, _, _] = names(headers);
    let id = single(headers, id_h).ok().flatten().map(str::to_owned);
    let event_type = json
        .as_ref()
        .and_then(|m| m.get("type"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    described(event_type, id, DeliveryIdOrigin::Header, body)
}

pub(super) fn sign(
    secret: &str,
    body: &[u8],
    now: DateTime<Utc>,
    id: &str,
) -> Vec<(String, String)> {
    let ts = now.timestamp().to_string();
    let key = key(secret).unwrap_or_default();
    let mac = Algorithm::Sha256.sign(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    vec![
        ("webhook-id".into(), id.to_owned()),
        ("webhook-timestamp".into(), ts),
        (
            "webhook-signature".into(),
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac)
            ),
        ),
    ]
}
