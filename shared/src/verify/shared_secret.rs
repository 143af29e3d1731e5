//! A shared secret sent verbatim in a configured header, as in Google's Cloud Run webhook
//! guide. Both sides are hashed before the constant-time comparison, so neither the secret's
//! length nor a common prefix shows in the timing.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    DeliveryIdOrigin, Described, HeaderLookup, SignatureError, Verified, described, single_dynamic,
};

pub(super) fn verify(
    secrets: &[SecretString],
    headers: &(impl HeaderLookup + ?Sized),
    header: &str,
) -> Result<Verified, SignatureError> {
    let presented = single_dynamic(headers, header)?
        .ok_or(SignatureError::MissingHeader("configured header"))?;
    let presented = Sha256::digest(presented.as_bytes());
    secrets
        .iter()
        .position(|s| {
            let expected = Sha256::digest(s.expose_secret().as_bytes());
            bool::from(presented.as_slice().ct_eq(expected.as_slice()))
        })
        .map(|key_index| Verified {
            key_index,
            scheme: "shared_secret",
        })
        .ok_or(SignatureError::Mismatch)
}

pub(super) fn describe(
    headers: &(impl HeaderLookup + ?Sized),
    body: &[u8],
    delivery_id_header: Option<&str>,
    event_type_header: Option<&str>,
) -> Described {
    let text = |name: Option<&str>| {
        name.and_then(|n| single_dynamic(headers, n).ok().flatten())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    described(
        text(event_type_header),
        text(delivery_id_header),
        DeliveryIdOrigin::Header,
        body,
    )
}
