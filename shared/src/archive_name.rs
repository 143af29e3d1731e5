//! Archive object names: `{source}/{YYYY-MM-DD}/{YYYY-MM-DD--HH-MM-SS}_{delivery_id}`.
//!
//! The seed design's `YYYY-MM-DD--HH-MM-SS_{id}` file name, under a prefix per source and
//! day so that listing one source's day (replay from the archive) is one prefix query. The
//! name is a pure function of the envelope, so a redelivery writes the same name and the
//! create-only write sees it as done. The delivery id is percent-encoded outside
//! `[A-Za-z0-9._-]`: an id can never add a path segment, and two ids never share a name.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::envelope::Metadata;

/// The object name for a delivery.
pub fn object_name(meta: &Metadata) -> String {
    let t = meta.received_at;
    format!(
        "{}/{}_{}",
        day_prefix(&meta.source, t),
        t.format("%Y-%m-%d--%H-%M-%S"),
        encode_id(&meta.delivery_id)
    )
}

/// The prefix holding one source's objects of one day (UTC).
pub fn day_prefix(source: &str, day: DateTime<Utc>) -> String {
    format!("{source}/{}", day.format("%Y-%m-%d"))
}

/// The delivery id as a single path segment (percent-encoded outside `[A-Za-z0-9._-]`).
pub fn encode_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::envelope;

    #[test]
    fn names_are_deterministic_prefixed_and_cannot_escape() {
        let mut meta = envelope("72d3162e-cc78-11e3", b"{}").meta;
        meta.received_at = DateTime::parse_from_rfc3339("2026-11-22T10:04:05.123Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            object_name(&meta),
            "gh/2026-11-22/2026-11-22--10-04-05_72d3162e-cc78-11e3"
        );
        meta.delivery_id = "../../etc/passwd".into();
        assert_eq!(
            object_name(&meta),
            "gh/2026-11-22/2026-11-22--10-04-05_..%2F..%2Fetc%2Fpasswd"
        );
        meta.delivery_id = "a%2Fb".into();
        assert!(
            object_name(&meta).ends_with("_a%252Fb"),
            "no two ids share a name"
        );
    }
}
