//! A shared secret sent verbatim in a configured header, as in Google's Cloud Run webhook
//! guide. Both sides are hashed before the constant-time comparison, so neither the secret's
//! length nor a common prefix shows in the timing.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{HeaderLookup, SignatureError, Verified, single};

pub(super) fn verify(
    secrets: &[SecretString],
    headers: &(impl HeaderLookup + ?Sized),
    header: &str,
) -> Result<Verified, SignatureError> {
    let presented =
        single(headers, header)?.ok_or_else(|| SignatureError::MissingHeader(header.to_owned()))?;
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
