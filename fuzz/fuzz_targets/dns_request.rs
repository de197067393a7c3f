//! `dns_request`: see `ovl_fuzz::dns` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ovl_fuzz::dns::check(data));
