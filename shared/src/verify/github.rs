//! GitHub: `X-Hub-Signature-256: sha256=<hex>` over the raw body, falling back to the legacy
//! `X-Hub-Signature: sha1=<hex>` only when the SHA-256 header is absent (a present but wrong
//! SHA-256 signature is never rescued by the weaker one).

use secrecy::SecretString;

use super::{
    Algorithm, DeliveryIdOrigin, Described, HeaderLookup, SignatureError, Verified, described,
    single,
};

pub(super) const SIG256: &str = "X-Hub-Signature-256";
pub(super) const SIG1: &str = "X-Hub-Signature";
const EVENT: &str = "X-GitHub-Event";
const DELIVERY: &str = "X-GitHub-Delivery";

pub(super) fn verify(
    secrets: &[SecretString],
    headers: &(impl HeaderLookup + ?Sized),
    body: &[u8],
) -> Result<Verified, SignatureError> {
    let (header, prefix, algorithm, scheme) = match single(headers, SIG256)? {
        Some(value) => (value, "sha256=", Algorithm::Sha256, "sha256"),
        None => match single(headers, SIG1)? {
            Some(value) => (value, "sha1=", Algorithm::Sha1, "sha1"),
            None => return Err(SignatureError::MissingHeader(SIG256)),
        },
    };
    let name = if scheme == "sha256" { SIG256 } else { SIG1 };
    let hex_sig = header
        .strip_prefix(prefix)
        .ok_or(SignatureError::MalformedHeader(name))?;
    let expected = hex::decode(hex_sig).map_err(|_| SignatureError::MalformedHeader(name))?;
    algorithm
        .matching_secret(secrets, &[body], &expected)
        .map(|key_index| Verified { key_index, scheme })
        .ok_or(SignatureError::Mismatch)
}

pub(super) fn describe(headers: &(impl HeaderLookup + ?Sized), body: &[u8]) -> Described {
    let text = |name| {
        single(headers, name)
            .ok()
            .flatten()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    described(text(EVENT), text(DELIVERY), DeliveryIdOrigin::Header, body)
}
