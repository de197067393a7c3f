//! The properties the fuzz targets in `fuzz/` check, one module per target, each with a
//! `check(&[u8])` that panics when a property fails. The targets call these functions under
//! libFuzzer (`scripts/fuzz.sh`); `tests/corpus.rs` replays the checked-in corpus
//! (`fuzz/corpus/<target>/`) through the same functions with plain `cargo test`, on stable.
//!
//! - [`dns`]: the embedded DNS server's request handling: never panics, the wire fast path
//!   answers exactly like the hickory path, replies fit the transport and keep the id;
//! - [`plugin`]: the Docker plugin's JSON bodies through the real dispatcher: a malformed
//!   body never reaches the backend, replies are JSON with known status codes, wire types
//!   survive a serialize/parse round trip;
//! - [`api`]: the control API's JSON bodies: parse, round trip, validation never panics;
//! - [`records`]: KV records as the cluster view decodes them: listing and watch paths agree,
//!   decoded records round trip, a delete undoes a put.

pub mod api;
pub mod dns;
pub mod plugin;
pub mod records;

/// A target's check: panics when a property fails.
pub type Check = fn(&[u8]);

/// The targets by name (the corpus directories), with their checks.
pub const TARGETS: [(&str, Check); 4] = [
    ("dns_request", dns::check),
    ("plugin_body", plugin::check),
    ("api_body", api::check),
    ("kv_record", records::check),
];

/// Splits off the first byte as a selector among `n` choices (`0` for empty input).
pub(crate) fn select(data: &[u8], n: usize) -> (usize, &[u8]) {
    match data.split_first() {
        Some((b, rest)) => (usize::from(*b) % n, rest),
        None => (0, data),
    }
}
