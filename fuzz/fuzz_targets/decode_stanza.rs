//! MessageScheme decoding: never panics; whatever decodes re-encodes to
//! canonical bytes that decode to the same stanza.
#![no_main]

use bimip::codec::{self, DEFAULT_MAX_STANZA_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = codec::decode(data, DEFAULT_MAX_STANZA_BYTES) {
        let canonical = codec::encode(&payload);
        assert_eq!(codec::decode(&canonical, DEFAULT_MAX_STANZA_BYTES).as_ref(), Ok(&payload));
    }
    let _ = codec::describe(data);
});
