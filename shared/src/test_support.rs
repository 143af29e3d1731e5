//! Builders shared by this crate's unit tests.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::envelope::{Envelope, Metadata};

/// A GitHub `issues` envelope from source `gh` with the given delivery id and body.
pub fn envelope(delivery_id: &str, body: &[u8]) -> Envelope {
    Envelope {
        body: Bytes::copy_from_slice(body),
        meta: Metadata {
            source: "gh".into(),
            provider: "github".into(),
            event_type: Some("issues".into()),
            delivery_id: delivery_id.into(),
            received_at: crate::envelope::now_millis(),
            content_type: Some("application/json".into()),
            request_id: "req-1".into(),
            replay_count: 0,
            extra: BTreeMap::new(),
        },
    }
}
