//! Arbitrary header values and bodies through every signature parser and verifier.
//! The input is split on 0xFF into header values, the last piece being the body.
#![no_main]

use chrono::{TimeZone, Utc};
use hookline_shared::verify::{Provider, Template, standard_webhooks, stripe};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const NAMES: [&str; 9] = [
    "X-Hub-Signature-256",
    "X-Hub-Signature",
    "X-Slack-Signature",
    "X-Slack-Request-Timestamp",
    "Stripe-Signature",
    "X-Shopify-Hmac-Sha256",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

fuzz_target!(|data: &[u8]| {
    let mut pieces: Vec<&[u8]> = data.split(|b| *b == 0xFF).collect();
    let body = pieces.pop().unwrap_or_default();
    let values: Vec<String> = pieces.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    let headers: Vec<(&str, &str)> = NAMES.iter().copied().zip(values.iter().map(String::as_str)).collect();

    for v in &values {
        let _ = stripe::parse_header(v);
        let _ = standard_webhooks::parse_signatures(v);
        let _ = standard_webhooks::key(v);
        let _ = Template::parse(v);
    }
    let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let secrets = vec![SecretString::from("whsec_YS1zZWNyZXQtb2YtMjQtYnl0ZXMtYWJj".to_string())];
    for p in [
        Provider::Github,
        Provider::Flexport,
        Provider::Shopify,
        Provider::Slack { tolerance_secs: 300 },
        Provider::Stripe { tolerance_secs: 300 },
        Provider::StandardWebhooks { tolerance_secs: 300 },
    ] {
        if let Ok(proof) = p.verify(&secrets, headers.as_slice(), body, now) {
            let _ = p.describe(&proof, headers.as_slice(), body, Some("application/json"));
        }
    }
});
