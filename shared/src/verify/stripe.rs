//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...][,v0=...]`, each `v1` an
//! HMAC-SHA256 over `{t}.{body}` keyed with the whole `whsec_...` secret's bytes (Stripe does
//! not base64-decode it). Several `v1` values appear while Stripe rolls a secret; any match
//! passes. Other schemes (`v0`, test-mode leftovers) are ignored. The event's `id` and `type`
//! are in the JSON body.

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{Algorithm, HeaderLookup, SignatureError, Verified, single, window};

pub(super) const SIG: &str = "Stripe-Signature";

/// The parts of a `Stripe-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeHeader<'a> {
    pub timestamp: &'a str,
    pub v1: Vec<Vec<u8>>,
}

/// Parses the header: exactly one `t`, any number of `v1` (hex). Unknown keys are skipped;
/// a `v1` that is not hex cannot match and is dropped.
///
/// # Errors
/// No `t`, more than one `t`, a pair without `=`, or no `v1` at all.
pub fn parse_header(value: &str) -> Result<StripeHeader<'_>, SignatureError> {
    let malformed = || SignatureError::MalformedHeader(SIG.to_owned());
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for pair in value.split(',') {
        let (key, val) = pair.trim().split_once('=').ok_or_else(malformed)?;
        match key {
            "t" if timestamp.is_none() => timestamp = Some(val),
            "t" => return Err(malformed()),
            "v1" => v1.extend(hex::decode(val).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(malformed)?;
    if v1.is_empty() {
        return Err(malformed());
    }
    Ok(StripeHeader { timestamp, v1 })
}

pub(super) fn verify(
    secrets: &[SecretString],
    headers: &(impl HeaderLookup + ?Sized),
    body: &[u8],
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<Verified, SignatureError> {
    let value =
        single(headers, SIG)?.ok_or_else(|| SignatureError::MissingHeader(SIG.to_owned()))?;
    let header = parse_header(value)?;
    window::check(SIG, header.timestamp, now, tolerance_secs)?;
    let parts: [&[u8]; 3] = [header.timestamp.as_bytes(), b".", body];
    Algorithm::Sha256
        .matching_secret(secrets, &parts, &header.v1)
        .map(|key_index| Verified {
            key_index,
            scheme: "v1",
        })
        .ok_or(SignatureError::Mismatch)
}

pub(super) fn sign(secret: &str, body: &[u8], now: DateTime<Utc>) -> Vec<(String, String)> {
    let t = now.timestamp().to_string();
    let sig = Algorithm::Sha256.hex(secret, &[t.as_bytes(), b".", body]);
    vec![(SIG.into(), format!("t={t},v1={sig}"))]
}
