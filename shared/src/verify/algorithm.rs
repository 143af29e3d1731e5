//! HMAC over several byte slices with constant-time comparison against every secret.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;
use sha2::Sha256;

/// The HMAC digests providers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
}

impl Algorithm {
    /// Returns the index of the first secret whose HMAC over `parts` equals `expected`.
    ///
    /// The comparison is `Mac::verify_slice`, which is constant time; a wrong-length
    /// `expected` simply fails it. Every part is fed in order, so `{t}.{body}`-style signed
    /// content is never copied into a new buffer.
    pub fn matching_secret(
        self,
        secrets: &[SecretString],
        parts: &[&[u8]],
        expected: &[u8],
    ) -> Option<usize> {
        secrets.iter().position(|secret| {
            let key = secret.expose_secret().as_bytes();
            match self {
                Self::Sha1 => check::<Hmac<Sha1>>(key, parts, expected),
                Self::Sha256 => check::<Hmac<Sha256>>(key, parts, expected),
            }
        })
    }

    /// Hex HMAC of `parts` under `key`: for signing test requests and the `send` tool.
    pub fn hex(self, key: &str, parts: &[&[u8]]) -> String {
        match self {
            Self::Sha1 => hex::encode(compute::<Hmac<Sha1>>(key.as_bytes(), parts)),
            Self::Sha256 => hex::encode(compute::<Hmac<Sha256>>(key.as_bytes(), parts)),
        }
    }
}

fn keyed<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> M {
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    keyed::<M>(key, parts).verify_slice(expected).is_ok()
}

fn compute<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    keyed::<M>(key, parts).finalize().into_bytes().to_vec()
}
