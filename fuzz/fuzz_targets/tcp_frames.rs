//! See `bimip::fuzz::tcp_frames` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bimip::fuzz::tcp_frames(data));
