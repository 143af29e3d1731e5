//! Flexport: `X-Hub-Signature`, hex HMAC-SHA1 of the raw body with or without `sha1=` (a
//! preset of the generic scheme). The event's `id` and `type` are in the JSON body
//! (read by `body_type_and_id`, shared with Stripe).

use std::sync::LazyLock;

use super::scheme::{HmacScheme, Preset};

pub(super) static SCHEME: LazyLock<HmacScheme> = LazyLock::new(|| Preset::Flexport.scheme());
