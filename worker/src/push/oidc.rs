//! Verifies the OIDC token Pub/Sub attaches to push requests (`Authorization: Bearer ...`):
//! an RS256 JWT signed by one of Google's published keys, issued by Google, for our
//! audience, unexpired, for the push service account's verified email.
//!
//! Keys are fetched from `jwks_url` and cached for an hour; a token naming an unknown key
//! refreshes them, at most once a minute, so key rotation is picked up without letting
//! forged `kid`s turn every request into a fetch.

use std::time::{Duration, Instant};

use hookline_shared::config::PushSettings;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

const KEYS_TTL: Duration = Duration::from_secs(3600);
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// Why a push request's token was refused (always 401).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("no bearer token")]
    Missing,
    #[error("the token's header is unreadable or names no key")]
    Malformed(#[source] Option<jsonwebtoken::errors::Error>),
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    #[error("the token is invalid")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("the token is for another identity")]
    WrongIdentity,
    #[error("signing keys are unavailable")]
    Keys(#[source] reqwest::Error),
}

#[derive(Debug, Deserialize)]
struct Claims {
    email: Option<String>,
    email_verified: Option<bool>,
}

#[derive(Debug)]
pub struct OidcVerifier {
    settings: PushSettings,
    client: reqwest::Client,
    keys: RwLock<Option<(JwkSet, Instant)>>,
}

impl OidcVerifier {
    pub fn new(settings: PushSettings) -> Self {
        Self {
            settings,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(None),
        }
    }

    async fn refresh(&self) -> Result<(), OidcError> {
        let mut keys = self.keys.write().await;
        if keys
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < REFRESH_AT_MOST_EVERY)
        {
            return Ok(());
        }
        let set: JwkSet = self
            .client
            .get(&self.settings.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(OidcError::Keys)?
            .json()
            .await
            .map_err(OidcError::Keys)?;
        *keys = Some((set, Instant::now()));
        Ok(())
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, OidcError> {
        for attempt in 0..2 {
            {
                let keys = self.keys.read().await;
                if let Some((set, at)) = keys.as_ref()
                    && (at.elapsed() < KEYS_TTL || attempt > 0)
                    && let Some(jwk) = set.find(kid)
                {
                    return DecodingKey::from_jwk(jwk).map_err(|e| OidcError::Malformed(Some(e)));
                }
            }
            if attempt == 0
                && let Err(e) = self.refresh().await
            {
                // Keys that were good an hour ago still verify Google's tokens; refusing
                // every push because the key endpoint hiccuped would be worse.
                tracing::warn!(error = %e, "could not refresh signing keys; using the cached ones");
                if self.keys.read().await.is_none() {
                    return Err(e);
                }
            }
        }
        Err(OidcError::UnknownKey)
    }

    /// Checks the `Authorization` header's token.
    ///
    /// # Errors
    /// An [`OidcError`]; the request must be answered 401 and not processed.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<(), OidcError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(OidcError::Missing)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| OidcError::Malformed(Some(e)))?;
        let kid = header.kid.ok_or(OidcError::Malformed(None))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.settings.audience]);
        // Google issues both spellings.
        let bare = self
            .settings
            .issuer
            .trim_start_matches("https://")
            .to_owned();
        validation.set_issuer(&[self.settings.issuer.clone(), bare]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = 60;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(OidcError::Invalid)?;
        let identity_ok = data.claims.email.as_deref()
            == Some(self.settings.service_account_email.as_str())
            && data.claims.email_verified == Some(true);
        if identity_ok {
            Ok(())
        } else {
            Err(OidcError::WrongIdentity)
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    const SIGNING_KEY: &[u8] = include_bytes!("../../../tests/fixtures/oidc/signing-key.pem");
    const OTHER_KEY: &[u8] = include_bytes!("../../../tests/fixtures/oidc/other-key.pem");
    const JWKS: &str = include_str!("../../../tests/fixtures/oidc/jwks.json");
    const AUDIENCE: &str = "https://hookline-worker-123.us-central1.run.app";
    const PUSHER: &str = "pusher@proj.iam.gserviceaccount.com";

    async fn verifier() -> (OidcVerifier, MockServer) {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/certs"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(JWKS, "application/json"))
            .mount(&server)
            .await;
        let settings = PushSettings {
            audience: AUDIENCE.into(),
            service_account_email: PUSHER.into(),
            jwks_url: format!("{}/certs", server.uri()),
            ..PushSettings::default()
        };
        (OidcVerifier::new(settings), server)
    }

    fn token(key: &[u8], kid: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        let bearer =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(key).unwrap())
                .unwrap();
        format!("Bearer {bearer}")
    }

    fn claims() -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        serde_json::json!({
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "email": PUSHER,
            "email_verified": true,
            "iat": now,
            "exp": now + 3600,
            "sub": "1234567890",
        })
    }

    fn with(mut c: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        c[key] = value;
        c
    }

    #[tokio::test]
    async fn a_token_from_google_for_us_is_accepted() {
        let (v, _server) = verifier().await;
        v.verify(Some(&token(SIGNING_KEY, "test-key-1", claims())))
            .await
            .unwrap();
        let bare_issuer = with(claims(), "iss", "accounts.google.com".into());
        v.verify(Some(&token(SIGNING_KEY, "test-key-1", bare_issuer)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn everything_else_is_refused() {
        let (v, _server) = verifier().await;
        let expired = with(
            with(
                claims(),
                "exp",
                (chrono::Utc::now().timestamp() - 3600).into(),
            ),
            "iat",
            (chrono::Utc::now().timestamp() - 7200).into(),
        );
        let cases: Vec<(&str, Option<String>)> = vec![
            ("missing token", None),
            ("not a bearer token", Some("Basic dXNlcjpwYXNz".into())),
            ("garbage", Some("Bearer not.a.jwt".into())),
            (
                "wrong audience",
                Some(token(
                    SIGNING_KEY,
                    "test-key-1",
                    with(claims(), "aud", "https://elsewhere.example".into()),
                )),
            ),
            ("expired", Some(token(SIGNING_KEY, "test-key-1", expired))),
            (
                "signed by another key under our kid",
                Some(token(OTHER_KEY, "test-key-1", claims())),
            ),
            (
                "unknown kid",
                Some(token(OTHER_KEY, "someone-else", claims())),
            ),
            (
                "wrong issuer",
                Some(token(
                    SIGNING_KEY,
                    "test-key-1",
                    with(claims(), "iss", "https://evil.example".into()),
                )),
            ),
            (
                "another service account",
                Some(token(
                    SIGNING_KEY,
                    "test-key-1",
                    with(
                        claims(),
                        "email",
                        "other@proj.iam.gserviceaccount.com".into(),
                    ),
                )),
            ),
            (
                "email not verified",
                Some(token(
                    SIGNING_KEY,
                    "test-key-1",
                    with(claims(), "email_verified", false.into()),
                )),
            ),
        ];
        for (name, header) in cases {
            assert!(
                v.verify(header.as_deref()).await.is_err(),
                "{name} must be refused"
            );
        }
    }
}
