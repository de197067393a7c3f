//! Cutting what the kernel hands the device into packets WireGuard can carry.
//!
//! With checksum and segmentation offloads on the TAP (see [`crate::tun`]), a read may be a
//! whole TCP send of up to 64 KiB, plain or inside VXLAN (`VIRTIO_NET_HDR_GSO_TCPV4`, with
//! `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4` for the tunnel), or one packet whose last checksum
//! is left to us (`VIRTIO_NET_HDR_F_NEEDS_CSUM`). One read instead of one per 1.4 KiB
//! packet, and the kernel's own segmentation on the way to the device is gone. We cut it
//! as the kernel's GSO would: every segment gets the headers with its lengths, IP IDs
//! (+1 each), sequence number, flags (FIN and PSH on the last only, CWR on the first only)
//! and checksums; the outer UDP checksum is left at zero (allowed over IPv4; WireGuard
//! authenticates every byte anyway).

use crate::merge::ETH_LEN;
use crate::wire::{
    GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_UDP_TUNNEL_IPV4, NEEDS_CSUM, TCP_CWR, TCP_FIN, TCP_PSH, add,
    be16, ip_checksum, put16, sum,
};

/// The fields of the virtio-net header (`virtio_net_hdr_v1_hash_tunnel`) we use; offsets
/// count from the frame's start (its Ethernet header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VnetHdr {
    pub(crate) flags: u8,
    pub(crate) gso_type: u8,
    pub(crate) gso_size: u16,
    pub(crate) csum_start: u16,
    pub(crate) csum_offset: u16,
    pub(crate) outer_th: u16,
    pub(crate) inner_nh: u16,
}

impl VnetHdr {
    /// Reads the 24-byte header at the start of `b`.
    pub(crate) fn parse(b: &[u8]) -> VnetHdr {
        let le = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            outer_th: le(20),
            inner_nh: le(22),
        }
    }
}

/// Fills in the TCP checksum of the segment whose IPv4 header is at `ip` and TCP header
/// at `th`, over everything to the end of `p`.
fn tcp_checksum(p: &mut [u8], ip: usize, th: usize) {
    let len = (p.len() - th) as u16;
    put16(p, th + 16, 0);
    let pseudo = add(add(sum(&p[ip + 12..ip + 20]), 6), len);
    let c = !add(pseudo, sum(&p[th..]));
    put16(p, th + 16, c);
}

/// Why a read could not be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A segmentation type or layout we did not ask the kernel for.
    Unsupported,
    /// Offsets outside the packet.
    Malformed,
}

/// Hands `emit` the packets of IP packet `p` (the frame without its Ethernet header) as
/// `hdr` describes it; `seg` is scratch space.
pub(crate) fn split(
    hdr: &VnetHdr,
    p: &mut [u8],
    seg: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), Refused> {
    let off = |frame_off: u16| {
        usize::from(frame_off)
            .checked_sub(ETH_LEN)
            .ok_or(Refused::Malformed)
    };
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & NEEDS_CSUM != 0 {
            let start = off(hdr.csum_start)?;
            let at = start + usize::from(hdr.csum_offset);
            if at + 2 > p.len() {
                return Err(Refused::Malformed);
            }
            // The field holds the pseudo-header's sum; the sum over it all completes it.
            let c = !sum(&p[start..]);
            put16(p, at, if c == 0 { 0xffff } else { c });
        }
        emit(p);
        return Ok(());
    }
    let tunnel = match hdr.gso_type & !GSO_ECN {
        GSO_TCPV4 => false,
        t if t == GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4 => true,
        _ => return Err(Refused::Unsupported),
    };
    let th = off(hdr.csum_start)?;
    let ip = if tunnel { off(hdr.inner_nh)? } else { 0 };
    let udp = if tunnel { off(hdr.outer_th)? } else { 0 };
    if th + 20 > p.len() || ip + 20 > th || (tunnel && udp + 8 > ip) {
        return Err(Refused::Malformed);
    }
    let head = th + usize::from(p[th + 12] >> 4) * 4;
    let mss = usize::from(hdr.gso_size);
    if head > p.len() || mss == 0 {
        return Err(Refused::Malformed);
    }
    let (payload, flags) = (p.len() - head, p[th + 13]);
    let seq = u32::from_be_bytes([p[th + 4], p[th + 5], p[th + 6], p[th + 7]]);
    let (id, outer_id) = (be16(p, ip + 4), be16(p, 4));
    let count = payload.div_ceil(mss);
    for i in 0..count {
        let chunk = &p[head + i * mss..head + ((i + 1) * mss).min(payload)];
        seg.clear();
        seg.extend_from_slice(&p[..head]);
        seg.extend_from_slice(chunk);
        let n = seg.len();
        put16(seg, ip + 2, (n - ip) as u16);
        put16(seg, ip + 4, id.wrapping_add(i as u16));
        ip_checksum(seg, ip);
        seg[th + 4..th + 8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        seg[th + 13] = f;
        tcp_checksum(seg, ip, th);
        if tunnel {
            put16(seg, 2, n as u16);
            put16(seg, 4, outer_id.wrapping_add(i as u16));
            ip_checksum(seg, 0);
            put16(seg, udp + 4, (n - udp) as u16);
            put16(seg, udp + 6, 0);
        }
        emit(seg);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP packet (IPv4 at `ip`, TCP at `ip + 20`, timestamps option) of `payload`
    /// bytes, behind `outer` bytes of zeroed outer headers to be filled by the caller.
    fn tcp_packet(outer: usize, payload: usize, flags: u8) -> Vec<u8> {
        let ip = outer;
        let th = ip + 20;
        let mut p = vec![0u8; th + 32 + payload];
        let n = p.len();
        p[ip] = 0x45;
        put16(&mut p, ip + 2, (n - ip) as u16);
        put16(&mut p, ip + 4, 0xfffe);
        p[ip + 6] = 0x40;
        p[ip + 8] = 64;
        p[ip + 9] = 6;
        p[ip + 12..ip + 20].copy_from_slice(&[10, 10, 0, 2, 10, 10, 0, 3]);
        put16(&mut p, th, 40001);
        put16(&mut p, th + 2, 5201);
        p[th + 4..th + 8].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
        p[th + 12] = 8 << 4;
        p[th + 13] = flags;
        p[th + 20..th + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        for (i, b) in p[th + 32..].iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
        ip_checksum(&mut p, ip);
        p
    }

    fn valid_tcp(seg: &[u8], ip: usize) -> bool {
        let th = ip + 20;
        let len = (seg.len() - th) as u16;
        let pseudo = add(add(sum(&seg[ip + 12..ip + 20]), 6), len);
        add(pseudo, sum(&seg[th..])) == 0xffff && sum(&seg[ip..ip + 20]) == 0xffff
    }

    #[test]
    fn a_tunnelled_tcp_send_is_cut_like_gso() {
        // Outer IPv4 + UDP + VXLAN + Ethernet = 50 bytes before the inner IPv4.
        let (udp, ip) = (20, 50);
        let mut p = tcp_packet(ip, 3000, 0x18 | TCP_CWR | TCP_FIN);
        let n = p.len();
        p[0] = 0x45;
        put16(&mut p, 2, n as u16);
        put16(&mut p, 4, 7);
        p[9] = 17;
        p[12..20].copy_from_slice(&[198, 18, 0, 11, 198, 18, 0, 12]);
        put16(&mut p, udp + 2, 4790);
        put16(&mut p, udp + 6, 0x1234);
        p[28] = 0x08;
        let hdr = VnetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4,
            gso_size: 1348,
            csum_start: (ETH_LEN + ip + 20) as u16,
            csum_offset: 16,
            outer_th: (ETH_LEN + udp) as u16,
            inner_nh: (ETH_LEN + ip) as u16,
        };
        let orig = p.clone();
        let mut out = Vec::new();
        split(&hdr, &mut p, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        assert_eq!(
            out.iter().map(|s| s.len() - ip - 52).collect::<Vec<_>>(),
            vec![1348, 1348, 304]
        );
        let mut payload = Vec::new();
        for (i, s) in out.iter().enumerate() {
            let th = ip + 20;
            assert_eq!(be16(s, 2) as usize, s.len(), "outer length");
            assert_eq!(be16(s, 4), 7 + i as u16, "outer ID");
            assert_eq!(sum(&s[..20]), 0xffff, "outer IPv4 checksum");
            assert_eq!(be16(s, udp + 4) as usize, s.len() - udp, "UDP length");
            assert_eq!(be16(s, udp + 6), 0, "outer UDP checksum left out");
            assert_eq!(be16(s, ip + 2) as usize, s.len() - ip, "inner length");
            assert_eq!(
                be16(s, ip + 4),
                0xfffeu16.wrapping_add(i as u16),
                "inner ID wraps"
            );
            let seq = u32::from_be_bytes(s[th + 4..th + 8].try_into().unwrap());
            assert_eq!(
                seq,
                0xffff_ff00u32.wrapping_add(i as u32 * 1348),
                "sequence wraps"
            );
            let f = s[th + 13];
            assert_eq!(f & TCP_CWR != 0, i == 0, "CWR on the first only");
            assert_eq!(
                f & (TCP_FIN | TCP_PSH) != 0,
                i == 2,
                "FIN, PSH on the last only"
            );
            assert!(valid_tcp(s, ip), "segment {i} checksums");
            assert_eq!(
                &s[th + 20..th + 32],
                &orig[th + 20..th + 32],
                "options kept"
            );
            assert_eq!(
                &s[20..ip],
                &{
                    let mut h = orig[20..ip].to_vec();
                    put16(&mut h, 4, (s.len() - udp) as u16);
                    put16(&mut h, 6, 0);
                    h
                }[..]
            );
            payload.extend_from_slice(&s[th + 32..]);
        }
        assert_eq!(payload, orig[ip + 52..]);
    }

    #[test]
    fn a_plain_tcp_send_is_cut_too() {
        let mut p = tcp_packet(0, 2000, 0x10);
        let hdr = VnetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1000,
            csum_start: (ETH_LEN + 20) as u16,
            csum_offset: 16,
            outer_th: 0,
            inner_nh: 0,
        };
        let mut out = Vec::new();
        split(&hdr, &mut p, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|s| s.len() == 20 + 32 + 1000 && valid_tcp(s, 0))
        );
    }

    #[test]
    fn one_packet_gets_its_checksum_completed() {
        let mut p = tcp_packet(0, 100, 0x18);
        let want = p.clone();
        // The kernel leaves the pseudo-header's sum in the field.
        let len = (p.len() - 20) as u16;
        let pseudo = add(add(sum(&p[12..20]), 6), len);
        put16(&mut p, 36, pseudo);
        let hdr = VnetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_NONE,
            gso_size: 0,
            csum_start: (ETH_LEN + 20) as u16,
            csum_offset: 16,
            outer_th: 0,
            inner_nh: 0,
        };
        let mut out = Vec::new();
        split(&hdr, &mut p, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        assert!(valid_tcp(&out[0], 0));
        assert_eq!(out[0][..36], want[..36]);
        // Without NEEDS_CSUM a packet passes untouched.
        let mut q = want.clone();
        let plain = VnetHdr { flags: 0, ..hdr };
        let mut out = Vec::new();
        split(&plain, &mut q, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        assert_eq!(out, vec![want]);
    }

    #[test]
    fn what_we_did_not_ask_for_is_refused() {
        let mut p = tcp_packet(0, 100, 0x10);
        let udp_l4 = VnetHdr {
            flags: NEEDS_CSUM,
            gso_type: 5,
            gso_size: 50,
            csum_start: 34,
            csum_offset: 6,
            outer_th: 0,
            inner_nh: 0,
        };
        assert_eq!(
            split(&udp_l4, &mut p, &mut Vec::new(), |_| {}),
            Err(Refused::Unsupported)
        );
        let outside = VnetHdr {
            gso_type: GSO_TCPV4,
            csum_start: 9000,
            ..udp_l4
        };
        assert_eq!(
            split(&outside, &mut p, &mut Vec::new(), |_| {}),
            Err(Refused::Malformed)
        );
        let short = VnetHdr {
            gso_type: GSO_NONE,
            csum_start: 4,
            ..udp_l4
        };
        assert_eq!(
            split(&short, &mut p, &mut Vec::new(), |_| {}),
            Err(Refused::Malformed)
        );
    }
}
