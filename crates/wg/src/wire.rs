//! What the device's frames share: virtio-net header and TCP flag values, big-endian
//! fields, and the internet checksum (RFC 1071), for [`crate::split`] and [`crate::merge`].

pub(crate) const NEEDS_CSUM: u8 = 1;
pub(crate) const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
pub(crate) const GSO_ECN: u8 = 0x80;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;
pub(crate) const TCP_CWR: u8 = 0x80;

/// One's complement sum of `b` as big-endian 16-bit words, folded to 16 bits.
pub(crate) fn sum(b: &[u8]) -> u16 {
    // Native-order 32-bit words into a 64-bit accumulator: the one's complement sum does
    // not care how the words are grouped, and a byte swap at the end turns the sum of
    // native words into the sum of big-endian ones.
    let mut acc: u64 = 0;
    let mut words = b.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::from_be(acc as u16)
}

pub(crate) fn add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

pub(crate) fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

pub(crate) fn put16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn ip_checksum(p: &mut [u8], at: usize) {
    let hlen = usize::from(p[at] & 0x0f) * 4;
    put16(p, at + 10, 0);
    let c = !sum(&p[at..at + hlen]);
    put16(p, at + 10, c);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: a straightforward 16-bit big-endian one's complement sum.
    fn slow_sum(b: &[u8]) -> u16 {
        let mut s: u32 = b
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn fast_sum_matches_the_definition() {
        let data: Vec<u8> = (0..3001u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 19, 20, 1400, 1401, 3001] {
            assert_eq!(sum(&data[..len]), slow_sum(&data[..len]), "length {len}");
        }
        assert_eq!(sum(&[0xff; 64]), 0xffff);
    }
}
