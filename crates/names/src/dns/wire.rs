//! Wire constants and rules shared by the full handler and the fast path (kept apart so
//! neither imports the other's internals).

/// The EDNS UDP payload size we advertise and honour at most (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The classic UDP limit for requests without EDNS.
pub const PLAIN_UDP_PAYLOAD: usize = 512;

/// One byte of a wire label as it appears in a zone lookup key (see `handler::name_key`).
pub(crate) fn key_char(b: u8) -> char {
    if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
        char::from(b)
    } else {
        '?'
    }
}
