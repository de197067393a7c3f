//! `kv_record`: see `ovl_fuzz::records` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ovl_fuzz::records::check(data));
