//! Adapts actix's header map to the verifier's framework-free [`HeaderLookup`].

use actix_web::http::header::HeaderMap;
use hookline_shared::verify::HeaderLookup;

/// Request headers as the verifier reads them.
#[derive(Debug)]
pub struct RequestHeaders<'a>(pub &'a HeaderMap);

impl HeaderLookup for RequestHeaders<'_> {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.0.get_all(name).map(|v| v.as_bytes()).collect()
    }
}
