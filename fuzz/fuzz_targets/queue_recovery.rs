//! See `bimip::fuzz::queue_recovery` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bimip::fuzz::queue_recovery(data));
