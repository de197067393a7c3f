//! `plugin_body`: see `ovl_fuzz::plugin` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ovl_fuzz::plugin::check(data));
