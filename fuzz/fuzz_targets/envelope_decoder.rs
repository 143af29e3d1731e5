//! Arbitrary bytes as the attribute JSON a queue hands the worker, decoded into an envelope.
#![no_main]

use std::collections::BTreeMap;

use hookline_shared::envelope::Metadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(attributes) = serde_json::from_slice::<BTreeMap<String, String>>(data) {
        if let Ok(meta) = Metadata::from_attributes(&attributes) {
            // Whatever decodes must encode back to attributes that decode the same.
            let again = Metadata::from_attributes(&meta.to_attributes()).expect("re-decodes");
            assert_eq!(again, meta);
        }
    }
});
