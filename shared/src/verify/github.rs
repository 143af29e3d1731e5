//! GitHub: `X-Hub-Signature-256` (the SHA-256 preset), falling back to the legacy
//! `X-Hub-Signature` (SHA-1) only when the SHA-256 header is absent — a present but wrong
//! SHA-256 signature is never rescued by the weaker one. Event in `X-GitHub-Event`, delivery
//! id in `X-GitHub-Delivery` (kept by GitHub's redeliveries).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::scheme::{HmacScheme, Preset};
use super::{DeliveryIdOrigin, Described, HeaderLookup, SignatureError, Verified, header_text};

static SHA256: LazyLock<HmacScheme> = LazyLock::new(|| Preset::GithubSha256.scheme());
static SHA1: LazyLock<HmacScheme> = LazyLock::new(|| Preset::GithubSha1.scheme());
pub(super) const EVENT: &str = "X-GitHub-Event";
pub(super) const DELIVERY: &str = "X-GitHub-Delivery";

pub(super) fn verify(
    secrets: &[SecretString],
    headers: &(impl HeaderLookup + ?Sized),
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Verified, SignatureError> {
    if !SHA256.present(headers) && SHA1.present(headers) {
        return SHA1.verify(secrets, headers, body, now);
    }
    SHA256.verify(secrets, headers, body, now)
}

pub(super) fn describe(headers: &(impl HeaderLookup + ?Sized), body: &[u8]) -> Described {
    super::described(
        header_text(headers, EVENT),
        header_text(headers, DELIVERY),
        DeliveryIdOrigin::Header,
        body,
    )
}

pub(super) fn sign(secret: &str, body: &[u8], now: DateTime<Utc>) -> Vec<(String, String)> {
    let mut h = SHA256.sign(secret, body, now);
    h.extend(SHA1.sign(secret, body, now));
    h
}
