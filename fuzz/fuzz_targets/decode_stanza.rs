//! See `bimip::fuzz::decode_stanza` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bimip::fuzz::decode_stanza(data));
