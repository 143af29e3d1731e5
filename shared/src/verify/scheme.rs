//! The generic HMAC scheme: a signature header, an algorithm, an encoding, an optional
//! prefix, and optionally a timestamp header whose value is signed together with the body
//! through a template such as `{timestamp}.{body}`.
//!
//! The `hmac` provider kind is this scheme as configured; GitHub, Flexport, Shopify and
//! Slack are presets of it (see [`Preset`]): each is exactly "this header, this digest,
//! this encoding, this prefix, this template". Stripe and Standard Webhooks are not: their
//! headers carry a list of signatures, so they have parsers of their own.

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{Algorithm, Encoding, HeaderLookup, SignatureError, Verified, single, window};

/// Signed content: literal text, the timestamp header's value, and the body, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Timestamp,
    Body,
}

/// A template that cannot describe signed content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "signed content template {0:?}: needs `{{body}}` exactly once; only `{{timestamp}}` and `{{body}}` are known"
)]
pub struct TemplateError(pub String);

impl Template {
    /// Parses `v0:{timestamp}:{body}`-style text.
    ///
    /// # Errors
    /// `{body}` missing or repeated, or an unknown `{placeholder}`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let err = || TemplateError(text.to_owned());
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or_else(err)? + open;
            pieces.push(match &rest[open + 1..close] {
                "timestamp" => Piece::Timestamp,
                "body" => Piece::Body,
                _ => return Err(err()),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if pieces.iter().filter(|p| **p == Piece::Body).count() != 1 {
            return Err(err());
        }
        Ok(Self(pieces))
    }

    fn uses_timestamp(&self) -> bool {
        self.0.contains(&Piece::Timestamp)
    }

    fn parts<'a>(&'a self, timestamp: &'a str, body: &'a [u8]) -> Vec<&'a [u8]> {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_bytes(),
                Piece::Timestamp => timestamp.as_bytes(),
                Piece::Body => body,
            })
            .collect()
    }
}

/// A signed timestamp: its header, how it is combined with the body, and the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamped {
    pub header: String,
    pub template: Template,
    pub tolerance_secs: i64,
}

/// One HMAC signature scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacScheme {
    pub header: String,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    /// Text before the signature, e.g. `sha256=`.
    pub prefix: Option<String>,
    /// Whether the prefix may be left out (Flexport sends both forms).
    pub prefix_optional: bool,
    pub timestamp: Option<Timestamped>,
    /// Reported in [`Verified::scheme`].
    pub name: &'static str,
}

/// The built-in schemes, each an instance of [`HmacScheme`].
#[derive(Debug, Clone, Copy)]
pub enum Preset {
    GithubSha256,
    GithubSha1,
    Flexport,
    Shopify,
    Slack { tolerance_secs: i64 },
}

impl Preset {
    pub fn scheme(self) -> HmacScheme {
        let simple = |header: &str, algorithm, encoding, prefix: Option<&str>, name| HmacScheme {
            header: header.to_owned(),
            algorithm,
            encoding,
            prefix: prefix.map(str::to_owned),
            prefix_optional: false,
            timestamp: None,
            name,
        };
        match self {
            Self::GithubSha256 => simple(
                "X-Hub-Signature-256",
                Algorithm::Sha256,
                Encoding::Hex,
                Some("sha256="),
                "sha256",
            ),
            Self::GithubSha1 => simple(
                "X-Hub-Signature",
                Algorithm::Sha1,
                Encoding::Hex,
                Some("sha1="),
                "sha1",
            ),
            Self::Flexport => HmacScheme {
                prefix_optional: true,
                ..simple(
                    "X-Hub-Signature",
                    Algorithm::Sha1,
                    Encoding::Hex,
                    Some("sha1="),
                    "sha1",
                )
            },
            Self::Shopify => simple(
                "X-Shopify-Hmac-Sha256",
                Algorithm::Sha256,
                Encoding::Base64,
                None,
                "sha256",
            ),
            Self::Slack { tolerance_secs } => HmacScheme {
                timestamp: Some(Timestamped {
                    header: "X-Slack-Request-Timestamp".into(),
                    template: Template::parse("v0:{timestamp}:{body}").expect("valid template"),
                    tolerance_secs,
                }),
                ..simple(
                    "X-Slack-Signature",
                    Algorithm::Sha256,
                    Encoding::Hex,
                    Some("v0="),
                    "v0",
                )
            },
        }
    }
}

impl HmacScheme {
    /// Whether the request carries this scheme's signature header at all.
    pub fn present(&self, headers: &(impl HeaderLookup + ?Sized)) -> bool {
        !headers.values(&self.header).is_empty()
    }

    /// # Errors
    /// As [`SignatureError`]: missing, duplicated or malformed headers, a timestamp outside
    /// the window, or no secret producing the signature.
    pub fn verify(
        &self,
        secrets: &[SecretString],
        headers: &(impl HeaderLookup + ?Sized),
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Verified, SignatureError> {
        let value = single(headers, &self.header)?
            .ok_or_else(|| SignatureError::MissingHeader(self.header.clone()))?;
        let malformed = || SignatureError::MalformedHeader(self.header.clone());
        let encoded = match &self.prefix {
            None => value,
            Some(prefix) => match value.strip_prefix(prefix.as_str()) {
                Some(rest) => rest,
                None if self.prefix_optional => value,
                None => return Err(malformed()),
            },
        };
        let expected = self.encoding.decode(encoded).ok_or_else(malformed)?;
        let timestamp = match &self.timestamp {
            Some(t) => {
                let value = single(headers, &t.header)?
                    .ok_or_else(|| SignatureError::MissingHeader(t.header.clone()))?;
                window::check(&t.header, value, now, t.tolerance_secs)?;
                value
            }
            None => "",
        };
        let parts = match &self.timestamp {
            Some(t) => t.template.parts(timestamp, body),
            None => vec![body],
        };
        self.algorithm
            .matching_secret(secrets, &parts, &[expected])
            .map(|key_index| Verified {
                key_index,
                scheme: self.name,
            })
            .ok_or(SignatureError::Mismatch)
    }

    /// The headers a sender using this scheme would send for `body`.
    pub fn sign(&self, secret: &str, body: &[u8], now: DateTime<Utc>) -> Vec<(String, String)> {
        let ts = now.timestamp().to_string();
        let parts = match &self.timestamp {
            Some(t) => t.template.parts(&ts, body),
            None => vec![body],
        };
        let signature = self
            .encoding
            .encode(&self.algorithm.sign(secret.as_bytes(), &parts));
        let mut headers = vec![(
            self.header.clone(),
            format!("{}{signature}", self.prefix.as_deref().unwrap_or("")),
        )];
        if let Some(t) = &self.timestamp {
            headers.push((t.header.clone(), ts));
        }
        headers
    }

    /// Checks that a configured scheme is usable.
    ///
    /// # Errors
    /// A template that reads a timestamp without a timestamp header, or the reverse.
    pub fn validate(&self) -> Result<(), String> {
        match &self.timestamp {
            Some(t) if !t.template.uses_timestamp() => Err(format!(
                "timestamp_header {} is set but the signed content does not include {{timestamp}}",
                t.header
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_refuse_nonsense() {
        assert!(
            Template::parse("{timestamp}.{body}")
                .unwrap()
                .uses_timestamp()
        );
        assert!(!Template::parse("{body}").unwrap().uses_timestamp());
        for bad in ["{timestamp}", "{body}{body}", "{nonce}.{body}", "{body", ""] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
        let t = Template::parse("v0:{timestamp}:{body}!").unwrap();
        assert_eq!(
            t.parts("17", b"x"),
            vec![&b"v0:"[..], b"17", b":", b"x", b"!"]
        );
    }
}
