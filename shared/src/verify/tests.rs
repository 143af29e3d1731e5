//! Each scheme is tested first with the provider's published example, then with tampered
//! bodies, wrong secrets, missing or duplicated headers, and timestamps outside the window.

use chrono::{DateTime, TimeZone, Utc};
use secrecy::SecretString;

use super::*;

fn secrets(list: &[&str]) -> Vec<SecretString> {
    list.iter()
        .map(|s| SecretString::from(s.to_string()))
        .collect()
}

fn at(unix: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(unix, 0).unwrap()
}

const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
// From GitHub's "Validating webhook deliveries" documentation.
const GH_SHA256: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
// The same example under the legacy SHA-1 scheme (computed with Python's hmac module).
const GH_SHA1: &str = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_TS: i64 = 1_531_420_618;
// From Slack's "Verifying requests from Slack" documentation.
const SLACK_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

const FLEX_SECRET: &str = "flexport-secret";
const FLEX_BODY: &[u8] = br#"{"id":42,"type":"/shipment_event#created"}"#;
const FLEX_SHA1: &str = "db21d0d131ead9dfe59e92b85c9b796071a7df91";

fn slack() -> Provider {
    Provider::Slack {
        tolerance_secs: 300,
    }
}

fn shared() -> Provider {
    Provider::SharedSecret {
        header: "X-Webhook-Token".into(),
        delivery_id_header: Some("X-Request-Id".into()),
        event_type_header: None,
    }
}

struct Case {
    name: &'static str,
    provider: Provider,
    secrets: &'static [&'static str],
    headers: Vec<(&'static str, String)>,
    body: &'static [u8],
    now: i64,
    want: Result<(usize, &'static str), SignatureError>,
}

fn cases() -> Vec<Case> {
    use SignatureError::*;
    let gh = |headers: Vec<(&'static str, String)>| headers;
    let slack_headers = |sig: &str, ts: i64| {
        vec![
            ("X-Slack-Signature", sig.to_string()),
            ("X-Slack-Request-Timestamp", ts.to_string()),
        ]
    };
    vec![
        Case {
            name: "github published sha256 example",
            provider: Provider::Github,
            secrets: &[GH_SECRET],
            headers: gh(vec![("X-Hub-Signature-256", GH_SHA256.into())]),
            body: GH_BODY,
            now: 0,
            want: Ok((0, "sha256")),
        },
        Case {
            name: "github legacy sha1 when sha256 absent",
            provider: Provider::Github,
            secrets: &[GH_SECRET],
            headers: gh(vec![("x-hub-signature", GH_SHA1.into())]),
            body: GH_BODY,
            now: 0,
            want: Ok((0, "sha1")),
        },
        Case {
            name: "github rotated secret matches second key",
            provider: Provider::Github,
            secrets: &["new-secret", GH_SECRET],
            headers: gh(vec![("X-Hub-Signature-256", GH_SHA256.into())]),
            body: GH_BODY,
            now: 0,
            want: Ok((1, "sha256")),
        },
        Case {
            name: "github wrong sha256 is not rescued by a valid sha1",
            provider: Provider::Github,
            secrets: &[GH_SECRET],
            headers: gh(vec![
                ("X-Hub-Signature-256", GH_SHA256.replace("757", "000")),
                ("X-Hub-Signature", GH_SHA1.into()),
            ]),
            body: GH_BODY,
            now: 0,
            want: Err(Mismatch),
        },
        Case {
            name: "github tampered body",
            provider: Provider::Github,
            secrets: &[GH_SECRET],
            headers: gh(vec![("X-Hub-Signature-256", GH_SHA256.into())]),
            body: b"Hello, World?",
            now: 0,
            want: Err(Mismatch),
        },
        Case {
            name: "github wrong secret",
            provider: Provider::Github,
            secrets: &["It's a secret to everybody"],
            headers: gh(vec![("X-Hub-Signature-256", GH_SHA256.into())]),
            body: GH_BODY,
            now: 0,
            want: Err(Mismatch),
        },
        Case {
            name: "github missing signature",
            provider: Provider::Github,
            secrets: &[GH_SECRET],
            headers: vec![],
            body: GH_BODY,
            now: 0,
            want: Err(MissingHeader("X-Hub-Signature-256".into())),
        },
        Case {
            name: "github sha1 prefix in the sha256 header",
            provider: Provider::Github,
            secrets: &[GH_SECRET],
            headers: gh(vec![("X-Hub-Signature-256", GH_SHA1.into())]),
            body: GH_BODY,
            now: 0,
            want: Err(MalformedHeader("X-Hub-Signature-256".into())),
        },
        Case {
            name: "github non-hex signature",
            provider: Provider::Github,
            secrets: &[GH_SECRET],
            headers: gh(vec![("X-Hub-Signature-256", "sha256=zz".into())]),
            body: GH_BODY,
            now: 0,
            want: Err(MalformedHeader("X-Hub-Signature-256".into())),
        },
        Case {
            name: "github truncated signature",
            provider: Provider::Github,
            secrets: &[GH_SECRET],
            headers: gh(vec![("X-Hub-Signature-256", GH_SHA256[..39].into())]),
            body: GH_BODY,
            now: 0,
            want: Err(Mismatch),
        },
        Case {
            name: "github duplicated signature header",
            provider: Provider::Github,
            secrets: &[GH_SECRET],
            headers: gh(vec![
                ("X-Hub-Signature-256", GH_SHA256.into()),
                ("X-Hub-Signature-256", GH_SHA256.into()),
            ]),
            body: GH_BODY,
            now: 0,
            want: Err(DuplicateHeader("X-Hub-Signature-256".into())),
        },
        Case {
            name: "flexport with sha1= prefix",
            provider: Provider::Flexport,
            secrets: &[FLEX_SECRET],
            headers: vec![("X-Hub-Signature", format!("sha1={FLEX_SHA1}"))],
            body: FLEX_BODY,
            now: 0,
            want: Ok((0, "sha1")),
        },
        Case {
            name: "flexport bare hex",
            provider: Provider::Flexport,
            secrets: &[FLEX_SECRET],
            headers: vec![("X-Hub-Signature", FLEX_SHA1.into())],
            body: FLEX_BODY,
            now: 0,
            want: Ok((0, "sha1")),
        },
        Case {
            name: "flexport tampered body",
            provider: Provider::Flexport,
            secrets: &[FLEX_SECRET],
            headers: vec![("X-Hub-Signature", FLEX_SHA1.into())],
            body: br#"{"id":43,"type":"/shipment_event#created"}"#,
            now: 0,
            want: Err(Mismatch),
        },
        Case {
            name: "flexport missing header",
            provider: Provider::Flexport,
            secrets: &[FLEX_SECRET],
            headers: vec![],
            body: FLEX_BODY,
            now: 0,
            want: Err(MissingHeader("X-Hub-Signature".into())),
        },
        Case {
            name: "slack published example",
            provider: slack(),
            secrets: &[SLACK_SECRET],
            headers: slack_headers(SLACK_SIG, SLACK_TS),
            body: SLACK_BODY,
            now: SLACK_TS + 10,
            want: Ok((0, "v0")),
        },
        Case {
            name: "slack at the edge of the window",
            provider: slack(),
            secrets: &[SLACK_SECRET],
            headers: slack_headers(SLACK_SIG, SLACK_TS),
            body: SLACK_BODY,
            now: SLACK_TS + 300,
            want: Ok((0, "v0")),
        },
        Case {
            name: "slack stale timestamp",
            provider: slack(),
            secrets: &[SLACK_SECRET],
            headers: slack_headers(SLACK_SIG, SLACK_TS),
            body: SLACK_BODY,
            now: SLACK_TS + 301,
            want: Err(StaleTimestamp {
                age_secs: 301,
                tolerance_secs: 300,
            }),
        },
        Case {
            name: "slack future timestamp",
            provider: slack(),
            secrets: &[SLACK_SECRET],
            headers: slack_headers(SLACK_SIG, SLACK_TS),
            body: SLACK_BODY,
            now: SLACK_TS - 301,
            want: Err(FutureTimestamp {
                ahead_secs: 301,
                tolerance_secs: 300,
            }),
        },
        Case {
            name: "slack timestamp changed (signature covers it)",
            provider: slack(),
            secrets: &[SLACK_SECRET],
            headers: slack_headers(SLACK_SIG, SLACK_TS + 1),
            body: SLACK_BODY,
            now: SLACK_TS,
            want: Err(Mismatch),
        },
        Case {
            name: "slack tampered body",
            provider: slack(),
            secrets: &[SLACK_SECRET],
            headers: slack_headers(SLACK_SIG, SLACK_TS),
            body: b"token=forged",
            now: SLACK_TS,
            want: Err(Mismatch),
        },
        Case {
            name: "slack wrong secret",
            provider: slack(),
            secrets: &["8f742231b10e8888abcd99yyyzzz85a6"],
            headers: slack_headers(SLACK_SIG, SLACK_TS),
            body: SLACK_BODY,
            now: SLACK_TS,
            want: Err(Mismatch),
        },
        Case {
            name: "slack missing timestamp",
            provider: slack(),
            secrets: &[SLACK_SECRET],
            headers: vec![("X-Slack-Signature", SLACK_SIG.into())],
            body: SLACK_BODY,
            now: SLACK_TS,
            want: Err(MissingHeader("X-Slack-Request-Timestamp".into())),
        },
        Case {
            name: "slack non-numeric timestamp",
            provider: slack(),
            secrets: &[SLACK_SECRET],
            headers: vec![
                ("X-Slack-Signature", SLACK_SIG.into()),
                ("X-Slack-Request-Timestamp", "yesterday".into()),
            ],
            body: SLACK_BODY,
            now: SLACK_TS,
            want: Err(MalformedHeader("X-Slack-Request-Timestamp".into())),
        },
        Case {
            name: "slack v1 prefix",
            provider: slack(),
            secrets: &[SLACK_SECRET],
            headers: slack_headers(&SLACK_SIG.replace("v0=", "v1="), SLACK_TS),
            body: SLACK_BODY,
            now: SLACK_TS,
            want: Err(MalformedHeader("X-Slack-Signature".into())),
        },
        Case {
            name: "shared secret matches",
            provider: shared(),
            secrets: &["old", "s3cr3t-token"],
            headers: vec![("x-webhook-token", "s3cr3t-token".into())],
            body: b"{}",
            now: 0,
            want: Ok((1, "shared_secret")),
        },
        Case {
            name: "shared secret prefix of the real one",
            provider: shared(),
            secrets: &["s3cr3t-token"],
            headers: vec![("X-Webhook-Token", "s3cr3t".into())],
            body: b"{}",
            now: 0,
            want: Err(Mismatch),
        },
        Case {
            name: "shared secret missing",
            provider: shared(),
            secrets: &["s3cr3t-token"],
            headers: vec![],
            body: b"{}",
            now: 0,
            want: Err(MissingHeader("X-Webhook-Token".into())),
        },
    ]
}

#[test]
fn signature_schemes() {
    for case in cases() {
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = case
            .provider
            .verify(
                &secrets(case.secrets),
                headers.as_slice(),
                case.body,
                at(case.now),
            )
            .map(|v| (v.key_index(), v.scheme()));
        assert_eq!(got, case.want, "case: {}", case.name);
    }
}

const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn generic() -> Provider {
    Provider::Hmac {
        scheme: HmacScheme {
            header: "X-Vendor-Signature".into(),
            algorithm: Algorithm::Sha512,
            encoding: Encoding::Base64,
            prefix: Some("sha512=".into()),
            prefix_optional: false,
            timestamp: Some(Timestamped {
                header: "X-Vendor-Timestamp".into(),
                template: Template::parse("{timestamp}:{body}").unwrap(),
                tolerance_secs: 60,
            }),
            name: "hmac",
        },
        delivery_id_header: Some("X-Vendor-Id".into()),
        event_type_header: Some("X-Vendor-Event".into()),
    }
}

fn every_kind() -> Vec<(Provider, &'static str)> {
    vec![
        (Provider::Github, "k3y"),
        (Provider::Flexport, "k3y"),
        (Provider::Shopify, "k3y"),
        (slack(), "k3y"),
        (
            Provider::Stripe {
                tolerance_secs: 300,
            },
            "whsec_k3y",
        ),
        (
            Provider::StandardWebhooks {
                tolerance_secs: 300,
            },
            STD_SECRET,
        ),
        (shared(), "k3y"),
        (generic(), "k3y"),
    ]
}

#[test]
fn sign_produces_what_verify_accepts_for_every_kind_with_rotation() {
    let now = at(1_700_000_000);
    let body =
        br#"{"id":"evt_1","event_id":"Ev1","type":"event_callback","event":{"type":"message"}}"#;
    for (provider, secret) in every_kind() {
        let signed = provider.sign(secret, body, now, "d-1", "issues");
        let headers: Vec<(&str, &str)> = signed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let rotated = secrets(&["whsec_b2xkLXNlY3JldC1vZi0yNC1ieXRlcyEh", secret]);
        let verified = provider.verify(&rotated, headers.as_slice(), body, now);
        assert_eq!(
            verified.map(|v| v.key_index()),
            Ok(1),
            "{}",
            provider.kind()
        );
        // A shared secret proves who sent the request, not what it says: only HMAC kinds
        // cover the body.
        if provider.kind() != "shared_secret" {
            let tampered = provider.verify(&rotated, headers.as_slice(), b"{}", now);
            assert_eq!(
                tampered,
                Err(SignatureError::Mismatch),
                "{}: tampered body",
                provider.kind()
            );
        }
        let proof = provider
            .verify(&rotated, headers.as_slice(), body, now)
            .unwrap();
        let d = provider
            .describe(&proof, headers.as_slice(), body, Some("application/json"))
            .unwrap();
        assert!(!d.delivery_id.is_empty(), "{}", provider.kind());
    }
}

// Stripe: computed with Python's hmac over "{t}.{body}" with the whole whsec_ string as key.
const STRIPE_SECRET: &str = "whsec_test_secret";
const STRIPE_T: i64 = 1_492_774_577;
const STRIPE_BODY: &[u8] =
    br#"{"id":"evt_1Ndw2BLkdIwHu7ix","object":"event","type":"payment_intent.succeeded"}"#;
const STRIPE_V1: &str = "20dfbff65dd1278d51257b5f16c13c52ced2023801d8752fd70b18a8a6a8df19";

// Shopify: base64 HMAC-SHA256 of the body, computed with Python's hmac.
const SHOPIFY_SECRET: &str = "shpss_test";
const SHOPIFY_BODY: &[u8] = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
const SHOPIFY_SIG: &str = "ZPINS/5npCYM+nR4R+feUuIZGvjL1Ncj6BUOKdHVNKQ=";

// Standard Webhooks: the specification's own test vector.
const STD_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const STD_TS: i64 = 1_614_265_330;
const STD_BODY: &[u8] = br#"{"test": 2432232314}"#;
const STD_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

#[test]
fn newer_provider_kinds_against_their_vectors() {
    use SignatureError::*;
    let stripe = Provider::Stripe {
        tolerance_secs: 300,
    };
    let std = Provider::StandardWebhooks {
        tolerance_secs: 300,
    };
    let check = |p: &Provider, secret: &str, headers: &[(&str, String)], body: &[u8], now: i64| {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        p.verify(&secrets(&[secret]), h.as_slice(), body, at(now))
            .map(|v| v.scheme())
    };
    let stripe_h = |v: String| vec![("Stripe-Signature", v)];
    let good = format!("t={STRIPE_T},v1={STRIPE_V1}");
    let cases: Vec<(&str, Result<&str, SignatureError>)> = vec![
        (
            "stripe vector",
            check(
                &stripe,
                STRIPE_SECRET,
                &stripe_h(good.clone()),
                STRIPE_BODY,
                STRIPE_T + 5,
            ),
        ),
        (
            "stripe second v1 matches while rolling",
            check(
                &stripe,
                STRIPE_SECRET,
                &stripe_h(format!(
                    "t={STRIPE_T},v1={},v1={STRIPE_V1},v0=abc",
                    "00".repeat(32)
                )),
                STRIPE_BODY,
                STRIPE_T,
            ),
        ),
        (
            "stripe key is not base64-decoded",
            check(
                &stripe,
                "test_secret",
                &stripe_h(good.clone()),
                STRIPE_BODY,
                STRIPE_T,
            ),
        ),
        (
            "stripe stale",
            check(
                &stripe,
                STRIPE_SECRET,
                &stripe_h(good.clone()),
                STRIPE_BODY,
                STRIPE_T + 301,
            ),
        ),
        (
            "stripe future",
            check(
                &stripe,
                STRIPE_SECRET,
                &stripe_h(good.clone()),
                STRIPE_BODY,
                STRIPE_T - 301,
            ),
        ),
        (
            "stripe no t",
            check(
                &stripe,
                STRIPE_SECRET,
                &stripe_h(format!("v1={STRIPE_V1}")),
                STRIPE_BODY,
                STRIPE_T,
            ),
        ),
        (
            "stripe two t",
            check(
                &stripe,
                STRIPE_SECRET,
                &stripe_h(format!("t=1,t={STRIPE_T},v1={STRIPE_V1}")),
                STRIPE_BODY,
                STRIPE_T,
            ),
        ),
        (
            "stripe only v0",
            check(
                &stripe,
                STRIPE_SECRET,
                &stripe_h(format!("t={STRIPE_T},v0={STRIPE_V1}")),
                STRIPE_BODY,
                STRIPE_T,
            ),
        ),
        (
            "shopify vector",
            check(
                &Provider::Shopify,
                SHOPIFY_SECRET,
                &[("X-Shopify-Hmac-Sha256", SHOPIFY_SIG.into())],
                SHOPIFY_BODY,
                0,
            ),
        ),
        (
            "shopify hex instead of base64",
            check(
                &Provider::Shopify,
                SHOPIFY_SECRET,
                &[("X-Shopify-Hmac-Sha256", "zz".into())],
                SHOPIFY_BODY,
                0,
            ),
        ),
        (
            "standard webhooks spec vector",
            check(
                &std,
                STD_SECRET,
                &[
                    ("webhook-id", STD_ID.into()),
                    ("webhook-timestamp", STD_TS.to_string()),
                    ("webhook-signature", STD_SIG.into()),
                ],
                STD_BODY,
                STD_TS,
            ),
        ),
        (
            "svix header names",
            check(
                &std,
                STD_SECRET,
                &[
                    ("svix-id", STD_ID.into()),
                    ("svix-timestamp", STD_TS.to_string()),
                    ("svix-signature", format!("v1a,xyz {STD_SIG}")),
                ],
                STD_BODY,
                STD_TS + 10,
            ),
        ),
        (
            "standard webhooks id is signed",
            check(
                &std,
                STD_SECRET,
                &[
                    ("webhook-id", "msg_other".into()),
                    ("webhook-timestamp", STD_TS.to_string()),
                    ("webhook-signature", STD_SIG.into()),
                ],
                STD_BODY,
                STD_TS,
            ),
        ),
        (
            "standard webhooks future",
            check(
                &std,
                STD_SECRET,
                &[
                    ("webhook-id", STD_ID.into()),
                    ("webhook-timestamp", STD_TS.to_string()),
                    ("webhook-signature", STD_SIG.into()),
                ],
                STD_BODY,
                STD_TS - 400,
            ),
        ),
        (
            "standard webhooks no v1",
            check(
                &std,
                STD_SECRET,
                &[
                    ("webhook-id", STD_ID.into()),
                    ("webhook-timestamp", STD_TS.to_string()),
                    ("webhook-signature", "v2,abc".into()),
                ],
                STD_BODY,
                STD_TS,
            ),
        ),
    ];
    let want: Vec<Result<&str, SignatureError>> = vec![
        Ok("v1"),
        Ok("v1"),
        Err(Mismatch),
        Err(StaleTimestamp {
            age_secs: 301,
            tolerance_secs: 300,
        }),
        Err(FutureTimestamp {
            ahead_secs: 301,
            tolerance_secs: 300,
        }),
        Err(MalformedHeader("Stripe-Signature".into())),
        Err(MalformedHeader("Stripe-Signature".into())),
        Err(MalformedHeader("Stripe-Signature".into())),
        Ok("sha256"),
        Err(MalformedHeader("X-Shopify-Hmac-Sha256".into())),
        Ok("v1"),
        Ok("v1"),
        Err(Mismatch),
        Err(FutureTimestamp {
            ahead_secs: 400,
            tolerance_secs: 300,
        }),
        Err(MalformedHeader("webhook-signature".into())),
    ];
    for ((name, got), want) in cases.into_iter().zip(want) {
        assert_eq!(got, want, "case: {name}");
    }
}

#[test]
fn generic_hmac_checks_prefix_timestamp_and_template() {
    let p = generic();
    let now = at(1_700_000_000);
    let body = b"hello";
    // HMAC-SHA512("k", "1700000000:hello"), computed with Python's hmac, in base64.
    let sig = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        hex::decode("de774d28c1d9f6af7daa2f410974b6550ecdee0e49a8a92ef8a10ab2e08dbbf063f2e06a47cb4b2f9c93095bc2f35578b888ce70e622491f264a8fbf127dc3a4").unwrap(),
    );
    let with = |sig: String, ts: &str| {
        vec![
            ("X-Vendor-Signature", sig),
            ("X-Vendor-Timestamp", ts.to_string()),
        ]
    };
    let run = |h: Vec<(&'static str, String)>, now| {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        p.verify(&secrets(&["k"]), h.as_slice(), body, now)
            .map(|v| v.scheme())
    };
    assert_eq!(
        run(with(format!("sha512={sig}"), "1700000000"), now),
        Ok("hmac")
    );
    assert_eq!(
        run(with(sig.clone(), "1700000000"), now),
        Err(SignatureError::MalformedHeader("X-Vendor-Signature".into())),
        "prefix required"
    );
    assert_eq!(
        run(with(format!("sha512={sig}"), "1700000001"), now),
        Err(SignatureError::Mismatch),
        "timestamp is signed"
    );
    assert!(matches!(
        run(
            with(format!("sha512={sig}"), "1700000000"),
            at(1_700_000_061)
        ),
        Err(SignatureError::StaleTimestamp { .. })
    ));
}

#[test]
fn delivery_ids_of_the_newer_kinds() {
    let proof = Verified {
        key_index: 0,
        scheme: "test",
    };
    let json = Some("application/json");
    let stripe = Provider::Stripe {
        tolerance_secs: 300,
    }
    .describe(&proof, &[] as &[(&str, &str)], STRIPE_BODY, json)
    .unwrap();
    assert_eq!(
        (stripe.delivery_id.as_str(), stripe.event_type.as_deref()),
        ("evt_1Ndw2BLkdIwHu7ix", Some("payment_intent.succeeded"))
    );
    let shop = Provider::Shopify
        .describe(
            &proof,
            [
                (
                    "X-Shopify-Webhook-Id",
                    "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
                ),
                ("X-Shopify-Topic", "orders/create"),
            ]
            .as_slice(),
            SHOPIFY_BODY,
            json,
        )
        .unwrap();
    assert_eq!(
        (shop.delivery_id.as_str(), shop.event_type.as_deref()),
        (
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            Some("orders/create")
        )
    );
    let std = Provider::StandardWebhooks {
        tolerance_secs: 300,
    }
    .describe(
        &proof,
        [("svix-id", STD_ID)].as_slice(),
        br#"{"type":"invoice.paid","data":{}}"#,
        json,
    )
    .unwrap();
    assert_eq!(
        (std.delivery_id.as_str(), std.event_type.as_deref()),
        (STD_ID, Some("invoice.paid"))
    );
    let g = generic()
        .describe(
            &proof,
            [("X-Vendor-Id", "v-9"), ("X-Vendor-Event", "thing.made")].as_slice(),
            b"x",
            None,
        )
        .unwrap();
    assert_eq!(
        (g.delivery_id.as_str(), g.event_type.as_deref()),
        ("v-9", Some("thing.made"))
    );
}

fn describe(provider: &Provider, headers: &[(&str, &str)], body: &[u8]) -> Described {
    let proof = Verified {
        key_index: 0,
        scheme: "test",
    };
    provider
        .describe(&proof, headers, body, Some("application/json"))
        .unwrap()
}

#[test]
fn delivery_ids_per_provider() {
    let gh = describe(
        &Provider::Github,
        &[
            ("X-GitHub-Event", "issues"),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ],
        b"{}",
    );
    assert_eq!(gh.event_type.as_deref(), Some("issues"));
    assert_eq!(gh.delivery_id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(gh.delivery_id_origin, DeliveryIdOrigin::Header);

    let flex = describe(&Provider::Flexport, &[], FLEX_BODY);
    assert_eq!(flex.delivery_id, "42");
    assert_eq!(flex.event_type.as_deref(), Some("/shipment_event#created"));

    let body =
        br#"{"type":"event_callback","event_id":"Ev08MFMKH6","event":{"type":"app_mention"}}"#;
    let sl = describe(&slack(), &[("X-Slack-Retry-Num", "1")], body);
    assert_eq!(sl.delivery_id, "Ev08MFMKH6");
    assert_eq!(sl.event_type.as_deref(), Some("app_mention"));
    assert_eq!(sl.challenge, None);

    let sh = describe(&shared(), &[("X-Request-Id", "abc-1")], b"payload");
    assert_eq!(sh.delivery_id, "abc-1");
}

#[test]
fn missing_ids_fall_back_to_a_body_hash() {
    let a = describe(&Provider::Github, &[], b"same body");
    let b = describe(&Provider::Flexport, &[], b"same body");
    assert_eq!(a.delivery_id_origin, DeliveryIdOrigin::BodyHash);
    assert_eq!(a.delivery_id, b.delivery_id);
    assert_eq!(a.delivery_id, body_hash_id(b"same body"));
    assert_ne!(
        a.delivery_id,
        describe(&Provider::Github, &[], b"other body").delivery_id
    );
    // SHA-256 of "same body", computed independently (`printf 'same body' | sha256sum`):
    // archive names and warehouse keys of past deliveries depend on it never changing.
    assert_eq!(
        a.delivery_id,
        "sha256-8f6372a8b1509601faa57ff3a292cfcccb95aa2325c18b8e50b0c035ea1648fe"
    );
}

#[test]
fn slack_url_verification_yields_the_challenge() {
    let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let d = describe(&slack(), &[], body);
    assert_eq!(
        d.challenge.as_deref(),
        Some("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
    );
}

#[test]
fn identifiers_that_no_provider_sends_are_refused() {
    let proof = Verified {
        key_index: 0,
        scheme: "test",
    };
    let long = "x".repeat(201);
    for bad in ["has space", "ünicode", long.as_str(), "tab\there"] {
        let headers = [("X-GitHub-Delivery", bad)];
        assert_eq!(
            Provider::Github.describe(&proof, headers.as_slice(), b"{}", None),
            Err(InvalidIdentifier("delivery_id")),
            "{bad:?}"
        );
    }
}
