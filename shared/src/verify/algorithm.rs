//! HMAC digests and signature encodings, with constant-time comparison against every secret.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Sha256, Sha512};

/// The HMAC digests providers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// How a signature is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    /// Decodes a signature; `None` when it is not valid in this encoding.
    pub fn decode(self, text: &str) -> Option<Vec<u8>> {
        match self {
            Self::Hex => hex::decode(text).ok(),
            Self::Base64 => base64::engine::general_purpose::STANDARD.decode(text).ok(),
        }
    }

    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Self::Hex => hex::encode(bytes),
            Self::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

impl Algorithm {
    /// Whether the HMAC of `parts` under `key` equals `expected`.
    ///
    /// The comparison is `Mac::verify_slice`, which is constant time; a wrong-length
    /// `expected` simply fails it. Parts are fed in order, so `{t}.{body}`-style signed
    /// content is never copied into a new buffer.
    pub fn verifies(self, key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
        match self {
            Self::Sha1 => keyed::<Hmac<Sha1>>(key, parts)
                .verify_slice(expected)
                .is_ok(),
            Self::Sha256 => keyed::<Hmac<Sha256>>(key, parts)
                .verify_slice(expected)
                .is_ok(),
            Self::Sha512 => keyed::<Hmac<Sha512>>(key, parts)
                .verify_slice(expected)
                .is_ok(),
        }
    }

    /// The index of the first secret (its UTF-8 bytes are the key) that signed `parts` with
    /// any of `candidates`.
    pub fn matching_secret(
        self,
        secrets: &[SecretString],
        parts: &[&[u8]],
        candidates: &[Vec<u8>],
    ) -> Option<usize> {
        secrets.iter().position(|secret| {
            let key = secret.expose_secret().as_bytes();
            candidates.iter().any(|c| self.verifies(key, parts, c))
        })
    }

    /// The raw HMAC of `parts` under `key`: for signing test requests and the `send` tool.
    pub fn sign(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Self::Sha1 => keyed::<Hmac<Sha1>>(key, parts)
                .finalize()
                .into_bytes()
                .to_vec(),
            Self::Sha256 => keyed::<Hmac<Sha256>>(key, parts)
                .finalize()
                .into_bytes()
                .to_vec(),
            Self::Sha512 => keyed::<Hmac<Sha512>>(key, parts)
                .finalize()
                .into_bytes()
                .to_vec(),
        }
    }

    /// Hex HMAC of `parts` under a text key.
    pub fn hex(self, key: &str, parts: &[&[u8]]) -> String {
        hex::encode(self.sign(key.as_bytes(), parts))
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
