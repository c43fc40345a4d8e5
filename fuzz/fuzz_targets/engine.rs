//! See `bimip::fuzz::engine` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bimip::fuzz::engine(data));
