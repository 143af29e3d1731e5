//! Property tests for every parser hookline exposes to the outside world: the signature
//! headers (Stripe, Standard Webhooks, the generic template), the provider verifiers as a
//! whole, the envelope decoder, and archive names built from provider-chosen ids.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use hookline_shared::archive_name;
use hookline_shared::envelope::{Metadata, format_time};
use hookline_shared::verify::{
    Algorithm, Encoding, HmacScheme, Provider, SignatureError, Template, Timestamped,
    standard_webhooks, stripe,
};
use proptest::prelude::*;
use secrecy::SecretString;

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0).unwrap()
}

fn kinds() -> Vec<Provider> {
    vec![
        Provider::Github,
        Provider::Flexport,
        Provider::Shopify,
        Provider::Slack {
            tolerance_secs: 300,
        },
        Provider::Stripe {
            tolerance_secs: 300,
        },
        Provider::StandardWebhooks {
            tolerance_secs: 300,
        },
        Provider::Hmac {
            scheme: HmacScheme {
                header: "X-Sig".into(),
                algorithm: Algorithm::Sha512,
                encoding: Encoding::Base64,
                prefix: Some("v=".into()),
                prefix_optional: false,
                timestamp: Some(Timestamped {
                    header: "X-Ts".into(),
                    template: Template::parse("{timestamp}:{body}").unwrap(),
                    tolerance_secs: 300,
                }),
                name: "hmac",
            },
            delivery_id_header: Some("X-Id".into()),
            event_type_header: None,
        },
    ]
}

/// A secret every kind accepts: Standard Webhooks needs `whsec_` + base64 of at least
/// 24 bytes, so `raw` follows a fixed 24-byte start there (distinct `raw`, distinct keys).
fn secret_for(p: &Provider, raw: &[u8]) -> String {
    use base64::Engine as _;
    match p {
        Provider::StandardWebhooks { .. } => {
            let key = [b"hookline-property-tests:".as_slice(), raw].concat();
            format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            )
        }
        _ => format!("k-{}", hex::encode(raw)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn stripe_header_parser_never_panics(value in ".{0,300}") {
        let _ = stripe::parse_header(&value);
    }

    #[test]
    fn stripe_header_round_trips(t in 0i64..4_000_000_000, sigs in prop::collection::vec(prop::array::uniform32(any::<u8>()), 1..4)) {
        let mut text = format!("t={t}");
        for s in &sigs {
            text.push_str(&format!(",v1={}", hex::encode(s)));
        }
        let parsed = stripe::parse_header(&text).unwrap();
        let want_t = t.to_string();
        prop_assert_eq!(parsed.timestamp, want_t.as_str());
        prop_assert_eq!(parsed.v1, sigs.iter().map(|s| s.to_vec()).collect::<Vec<_>>());
    }

    #[test]
    fn standard_webhooks_signature_list_parser(value in ".{0,300}", sigs in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..4)) {
        use base64::Engine as _;
        let _ = standard_webhooks::parse_signatures(&value);
        let text = sigs
            .iter()
            .map(|s| format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(s)))
            .chain(["v1a,ignored".to_string()])
            .collect::<Vec<_>>()
            .join(" ");
        prop_assert_eq!(standard_webhooks::parse_signatures(&text), sigs);
    }

    #[test]
    fn templates_parse_or_refuse_without_panicking(text in "[a-z{}:.]{0,40}") {
        if let Ok(t) = Template::parse(&text) {
            // Whatever parses has exactly one body placeholder.
            prop_assert_eq!(text.matches("{body}").count(), 1, "{:?}", t);
        }
    }

    #[test]
    fn every_kind_verifies_what_it_signs_and_nothing_tampered(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        raw_secret in prop::collection::vec(any::<u8>(), 1..48),
        flip in any::<prop::sample::Index>(),
        position in 0usize..3,
    ) {
        for p in kinds() {
            let secret = secret_for(&p, &raw_secret);
            let headers = p.sign(&secret, &body, now(), "d-1", "evt");
            let lookup: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            // The right secret at any position of a rotation list.
            // HMAC pads short keys with zero bytes, so keys that differ only in trailing zeros
            // are the same key: the other secrets of the list must differ from it otherwise.
            let filler = |i: usize| [i as u8 + 1; 9];
            let trimmed = raw_secret.iter().rposition(|b| *b != 0).map_or(&raw_secret[..0], |end| &raw_secret[..=end]);
            prop_assume!((0..3).all(|i| trimmed != filler(i)));
            let mut secrets: Vec<SecretString> = (0..3).map(|i| SecretString::from(secret_for(&p, &filler(i)))).collect();
            secrets[position] = SecretString::from(secret.clone());
            let verified = p.verify(&secrets, lookup.as_slice(), &body, now());
            prop_assert_eq!(verified.map(|v| v.key_index()), Ok(position), "{}", p.kind());
            if !body.is_empty() {
                let mut tampered = body.clone();
                let i = flip.index(tampered.len());
                tampered[i] ^= 0x01;
                prop_assert_eq!(p.verify(&secrets, lookup.as_slice(), &tampered, now()), Err(SignatureError::Mismatch), "{}", p.kind());
            }
        }
    }

    #[test]
    fn verifiers_never_panic_on_arbitrary_headers(
        values in prop::collection::vec(".{0,120}", 6),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let names = ["X-Hub-Signature-256", "X-Slack-Signature", "X-Slack-Request-Timestamp", "Stripe-Signature", "webhook-signature", "X-Sig"];
        let headers: Vec<(&str, &str)> = names.iter().copied().zip(values.iter().map(String::as_str)).collect();
        let secrets = vec![SecretString::from("whsec_YS1zZWNyZXQtb2YtMjQtYnl0ZXMtYWJj".to_string())];
        for p in kinds() {
            let _ = p.verify(&secrets, headers.as_slice(), &body, now());
        }
    }

    #[test]
    fn envelope_decoder_never_panics(attrs in prop::collection::btree_map("[a-z_]{1,16}", ".{0,40}", 0..12)) {
        let _ = Metadata::from_attributes(&attrs);
    }

    #[test]
    fn envelope_attributes_round_trip(
        source in "[a-z0-9_-]{1,20}",
        delivery_id in "[!-~]{1,60}",
        event_type in proptest::option::of("[!-~]{1,40}"),
        millis in 0i64..4_000_000_000_000,
        replay_count in 0u32..1000,
        extra in prop::collection::btree_map("x_[a-z]{1,10}", ".{0,20}", 0..4),
    ) {
        let meta = Metadata {
            source,
            provider: "github".into(),
            event_type,
            delivery_id,
            received_at: DateTime::from_timestamp_millis(millis).unwrap(),
            content_type: Some("application/json".into()),
            request_id: "r".into(),
            replay_count,
            extra,
        };
        let attrs = meta.to_attributes();
        prop_assert_eq!(&attrs["received_at"], &format_time(meta.received_at));
        prop_assert_eq!(Metadata::from_attributes(&attrs).unwrap(), meta);
    }

    #[test]
    fn archive_names_stay_in_their_prefix_and_never_collide(a in "[!-~]{1,80}", b in "[!-~]{1,80}") {
        let meta = |id: &str| Metadata {
            source: "gh".into(),
            provider: "github".into(),
            event_type: None,
            delivery_id: id.into(),
            received_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            content_type: None,
            request_id: String::new(),
            replay_count: 0,
            extra: BTreeMap::new(),
        };
        let name = archive_name::object_name(&meta(&a));
        prop_assert!(name.starts_with("gh/2023-11-14/2023-11-14--22-13-20_"));
        prop_assert_eq!(name.matches('/').count(), 2, "{}", name);
        if a != b {
            prop_assert_ne!(name, archive_name::object_name(&meta(&b)));
        }
    }
}
