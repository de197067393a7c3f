//! `api_body`: see `ovl_fuzz::api` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ovl_fuzz::api::check(data));
