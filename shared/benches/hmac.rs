//! RustCrypto (`hmac` + `sha1`/`sha2`, what `verify` uses) against `ring` for verifying a
//! webhook signature: the dependency choice the project asked to settle by measurement.
//!
//! `cargo bench -p hookline-shared --bench hmac` prints one line per (algorithm, body size):
//! the median over 7 rounds of the time to key the MAC, hash the body and compare the tag
//! in constant time (a request's whole verification), and RustCrypto's time over ring's.
//! Both sides first verify the same tag, so a wrong comparison cannot pass as a fast one.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hookline_shared::verify::Algorithm;

/// The harness's signed GitHub `issues` event, as the load generators send it.
const ISSUES_EVENT: &[u8] = include_bytes!("../../bench/payloads/issues-opened.json");
const KEY: &[u8] = b"bench-secret-of-a-usual-length";
const ROUNDS: usize = 7;

fn main() {
    let kib = |n: usize| vec![b'x'; n * 1024];
    let bodies: [(&str, Vec<u8>); 3] = [
        ("1 KiB", kib(1)),
        ("issues event", ISSUES_EVENT.to_vec()),
        ("64 KiB", kib(64)),
    ];
    println!(
        "{:<6} {:<22} {:>14} {:>14} {:>16}",
        "algo", "body", "RustCrypto", "ring", "RustCrypto/ring"
    );
    for (algorithm, ring_algorithm, name) in [
        (Algorithm::Sha256, ring::hmac::HMAC_SHA256, "sha256"),
        (
            Algorithm::Sha1,
            ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            "sha1",
        ),
    ] {
        for (label, body) in &bodies {
            let tag = algorithm.sign(KEY, &[body]);
            let ring_key = ring::hmac::Key::new(ring_algorithm, KEY);
            assert!(algorithm.verifies(KEY, &[body], &tag));
            assert!(ring::hmac::verify(&ring_key, body, &tag).is_ok());
            let rust_crypto = per_call(|| algorithm.verifies(KEY, &[black_box(body)], &tag));
            let ring = per_call(|| {
                // Keyed per request, as `verify` is (secrets rotate; no cached state).
                let key = ring::hmac::Key::new(ring_algorithm, KEY);
                ring::hmac::verify(&key, black_box(body), &tag).is_ok()
            });
            println!(
                "{name:<6} {:<22} {:>11.2} µs {:>11.2} µs {:>15.2}×",
                format!("{label} ({} B)", body.len()),
                micros(rust_crypto),
                micros(ring),
                rust_crypto.as_secs_f64() / ring.as_secs_f64()
            );
        }
    }
}

/// The median time per call over [`ROUNDS`] rounds of about 200 ms each.
fn per_call(mut call: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    let mut calibration = 0u32;
    while started.elapsed() < Duration::from_millis(50) {
        assert!(call());
        calibration += 1;
    }
    let per_round = calibration * 4;
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                assert!(black_box(call()));
            }
            t.elapsed() / per_round
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
