//! Shopify: `X-Shopify-Hmac-Sha256`, the base64 HMAC-SHA256 of the raw body (a preset of the
//! generic scheme). Topic in `X-Shopify-Topic`, delivery id in `X-Shopify-Webhook-Id`.

use std::sync::LazyLock;

use super::scheme::{HmacScheme, Preset};
use super::{DeliveryIdOrigin, Described, HeaderLookup, described, header_text};

pub(super) static SCHEME: LazyLock<HmacScheme> = LazyLock::new(|| Preset::Shopify.scheme());
pub(super) const TOPIC: &str = "X-Shopify-Topic";
pub(super) const WEBHOOK_ID: &str = "X-Shopify-Webhook-Id";

pub(super) fn describe(headers: &(impl HeaderLookup + ?Sized), body: &[u8]) -> Described {
    described(
        header_text(headers, TOPIC),
        header_text(headers, WEBHOOK_ID),
        DeliveryIdOrigin::Header,
        body,
    )
}
