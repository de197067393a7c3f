//! Merging decrypted VXLAN datagrams that carry consecutive TCP segments of one flow into
//! one large packet for the device, as the kernel's GRO would.
//!
//! The device is a TAP with a virtio-net header in front of each frame (see
//! [`crate::tun`]). A merged frame says "TCP over a UDP tunnel, segments of `gso_size`"
//! (`VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`, Linux 6.17): the
//! kernel takes it in one write and carries it through the VXLAN device, the bridge and
//! the veth to the container's TCP in one piece, where per-datagram writes cost a pass up
//! the stack each. Anything else passes through as it came, in order.
//!
//! Only what GRO itself would merge is merged: the same outer and inner headers but for
//! lengths, IDs and checksums; the next sequence number; ACK (and PSH on the last) as the
//! only TCP flags; equal payload sizes but for a shorter last one; no IP options or
//! fragments. A merged frame's outer UDP checksum is zero (allowed over IPv4, and what
//! the kernel's VXLAN sends by default): WireGuard has already authenticated every byte.

use crate::wire::{
    GSO_TCPV4, GSO_UDP_TUNNEL_IPV4, NEEDS_CSUM, TCP_ACK, TCP_PSH, add, ip_checksum, put16, sum,
};

/// Bytes of the virtio-net header in front of every frame (`virtio_net_hdr_v1_hash_tunnel`).
pub(crate) const VNET_HDR_LEN: usize = 24;
/// Bytes of the Ethernet header of a TAP frame.
pub(crate) const ETH_LEN: usize = 14;
/// What the device adds in front of an IP packet.
pub(crate) const FRAME_HEAD: usize = VNET_HDR_LEN + ETH_LEN;

// Offsets in the IP packet: outer IPv4, UDP, VXLAN, inner Ethernet, inner IPv4, TCP.
const UDP: usize = 20;
const VXLAN: usize = UDP + 8;
const INNER_ETH: usize = VXLAN + 8;
const INNER_IP: usize = INNER_ETH + 14;
const TCP: usize = INNER_IP + 20;
/// Largest IPv4 packet.
const MAX_IP: usize = 65_535;

/// The header of a frame that is one plain packet.
pub(crate) fn plain_head(eth: &[u8; ETH_LEN]) -> [u8; FRAME_HEAD] {
    let mut head = [0u8; FRAME_HEAD];
    head[VNET_HDR_LEN..].copy_from_slice(eth);
    head
}

/// Where a segment's headers and payload are, once it has passed the checks.
struct Segment {
    tcp_hlen: usize,
    seq: u32,
    psh: bool,
}

/// Whether `p` is an IPv4 packet of UDP to `port` carrying VXLAN, Ethernet, IPv4 and a TCP
/// segment with payload and only ACK/PSH set, all of it mergeable.
fn segment(p: &[u8], port: u16) -> Option<Segment> {
    let be16 = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let plain_ipv4 = |at: usize, proto: u8, len: usize| {
        p[at] == 0x45
            && be16(at + 2) as usize == len
            && be16(at + 6) & 0x3fff == 0
            && p[at + 9] == proto
    };
    if p.len() <= TCP + 20 || !plain_ipv4(0, 17, p.len()) {
        return None;
    }
    if be16(UDP + 2) != port || be16(UDP + 4) as usize != p.len() - UDP {
        return None;
    }
    // VXLAN: only the I flag, reserved bits zero.
    if p[VXLAN] != 0x08 || p[VXLAN + 1..VXLAN + 4] != [0, 0, 0] || p[VXLAN + 7] != 0 {
        return None;
    }
    if be16(INNER_ETH + 12) != 0x0800 || !plain_ipv4(INNER_IP, 6, p.len() - INNER_IP) {
        return None;
    }
    let tcp_hlen = usize::from(p[TCP + 12] >> 4) * 4;
    let flags = p[TCP + 13];
    if tcp_hlen < 20 || p.len() <= TCP + tcp_hlen || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    Some(Segment {
        tcp_hlen,
        seq: u32::from_be_bytes(p[TCP + 4..TCP + 8].try_into().expect("4 bytes")),
        psh: flags & TCP_PSH != 0,
    })
}

/// Whether two segments' headers agree in everything GRO compares.
fn same_flow(a: &[u8], b: &[u8], tcp_hlen: usize) -> bool {
    // Outer and inner IPv4 without length, ID and checksum; UDP ports; VXLAN; inner
    // Ethernet; TCP ports, ACK number, data offset and flags but PSH, window, options.
    let ip_same = |at: usize| {
        a[at..at + 2] == b[at..at + 2]
            && a[at + 6..at + 10] == b[at + 6..at + 10]
            && a[at + 12..at + 20] == b[at + 12..at + 20]
    };
    ip_same(0)
        && a[UDP..UDP + 4] == b[UDP..UDP + 4]
        && a[VXLAN..INNER_IP] == b[VXLAN..INNER_IP]
        && ip_same(INNER_IP)
        && a[TCP..TCP + 4] == b[TCP..TCP + 4]
        && a[TCP + 8..TCP + 13] == b[TCP + 8..TCP + 13]
        && a[TCP + 14..TCP + 16] == b[TCP + 14..TCP + 16]
        && a[TCP + 18..TCP + tcp_hlen] == b[TCP + 18..TCP + tcp_hlen]
}

/// Builds frames for the device from decrypted packets, merging what it may.
pub(crate) struct Merger {
    /// The UDP port of the VXLAN whose TCP may be merged; `None`: merge nothing.
    port: Option<u16>,
    eth: [u8; ETH_LEN],
    /// The frame being built: virtio-net header, Ethernet, the first packet's headers and
    /// every payload so far.
    frame: Vec<u8>,
    count: usize,
    seg: usize,
    tcp_hlen: usize,
    next_seq: u32,
    /// No more may join: the last one was shorter or had PSH.
    closed: bool,
}

impl Merger {
    /// Frames carry `eth` (to the device's own address); `port` as for [`Merger::port`].
    pub(crate) fn new(eth: [u8; ETH_LEN], port: Option<u16>) -> Merger {
        Merger {
            port,
            eth,
            frame: Vec::with_capacity(FRAME_HEAD + MAX_IP),
            count: 0,
            seg: 0,
            tcp_hlen: 0,
            next_seq: 0,
            closed: false,
        }
    }

    /// Changes the port whose VXLAN may be merged (`None`: none). Call between
    /// flushes.
    pub(crate) fn set_port(&mut self, port: Option<u16>) {
        self.port = port;
    }

    /// Takes the next decrypted packet; `write(head, packet)` is called for each frame
    /// that is complete, in order (head: what goes in front of the packet, may be empty).
    pub(crate) fn push(&mut self, p: &[u8], write: &mut impl FnMut(&[u8], &[u8])) {
        let Some(port) = self.port else {
            return write(&plain_head(&self.eth), p);
        };
        let Some(s) = segment(p, port) else {
            self.flush(write);
            return write(&plain_head(&self.eth), p);
        };
        let payload = p.len() - TCP - s.tcp_hlen;
        if self.count > 0 {
            let first = &self.frame[FRAME_HEAD..];
            let fits = self.frame.len() - FRAME_HEAD + payload <= MAX_IP;
            if !self.closed
                && fits
                && s.tcp_hlen == self.tcp_hlen
                && s.seq == self.next_seq
                && payload <= self.seg
                && same_flow(first, p, s.tcp_hlen)
            {
                self.frame.extend_from_slice(&p[TCP + s.tcp_hlen..]);
                self.count += 1;
                self.next_seq = s.seq.wrapping_add(payload as u32);
                if s.psh {
                    let flags = FRAME_HEAD + TCP + 13;
                    self.frame[flags] |= TCP_PSH;
                }
                self.closed = s.psh || payload < self.seg;
                return;
            }
            self.flush(write);
        }
        self.frame.clear();
        self.frame.extend_from_slice(&plain_head(&self.eth));
        self.frame.extend_from_slice(p);
        self.count = 1;
        self.seg = payload;
        self.tcp_hlen = s.tcp_hlen;
        self.next_seq = s.seq.wrapping_add(payload as u32);
        self.closed = s.psh;
    }

    /// Writes the frame being built, if any.
    pub(crate) fn flush(&mut self, write: &mut impl FnMut(&[u8], &[u8])) {
        match self.count {
            0 => {}
            1 => write(&[], &self.frame),
            _ => {
                self.finish();
                write(&[], &self.frame);
            }
        }
        self.count = 0;
    }

    /// Fixes the merged frame's lengths and checksums and writes its virtio-net header.
    fn finish(&mut self) {
        let len = self.frame.len() - FRAME_HEAD;
        let p = &mut self.frame[FRAME_HEAD..];
        put16(p, 2, len as u16);
        ip_checksum(p, 0);
        put16(p, UDP + 4, (len - UDP) as u16);
        put16(p, UDP + 6, 0);
        put16(p, INNER_IP + 2, (len - INNER_IP) as u16);
        ip_checksum(p, INNER_IP);
        // The TCP checksum is left to the kernel (NEEDS_CSUM); the field holds the
        // pseudo-header's sum, as a sender offloading it would leave it.
        let tcp_len = (len - TCP) as u16;
        let pseudo = add(add(sum(&p[INNER_IP + 12..INNER_IP + 20]), 6), tcp_len);
        put16(p, TCP + 16, pseudo);
        let h = &mut self.frame[..VNET_HDR_LEN];
        h.fill(0);
        h[0] = NEEDS_CSUM;
        h[1] = GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4;
        let le = |h: &mut [u8], at: usize, v: u16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
        le(h, 2, ETH_LEN as u16 + (TCP + self.tcp_hlen) as u16); // hdr_len
        le(h, 4, self.seg as u16); // gso_size
        le(h, 6, ETH_LEN as u16 + TCP as u16); // csum_start
        le(h, 8, 16); // csum_offset
        le(h, 20, ETH_LEN as u16 + UDP as u16); // outer_th_offset
        le(h, 22, ETH_LEN as u16 + INNER_IP as u16); // inner_nh_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 4790;
    const ETH: [u8; ETH_LEN] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];

    /// A VXLAN datagram carrying one TCP segment with `payload` bytes of `fill`.
    fn segment_packet(seq: u32, payload: usize, flags: u8, fill: u8) -> Vec<u8> {
        let len = TCP + 20 + payload;
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        put16(&mut p, 2, len as u16);
        put16(&mut p, 4, seq as u16); // some ID
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[198, 18, 0, 11]);
        p[16..20].copy_from_slice(&[198, 18, 0, 12]);
        ip_checksum(&mut p, 0);
        put16(&mut p, UDP, 40000);
        put16(&mut p, UDP + 2, PORT);
        put16(&mut p, UDP + 4, (len - UDP) as u16);
        put16(&mut p, UDP + 6, 0xc58d); // stands for a real one: merging drops it
        p[VXLAN] = 0x08;
        p[VXLAN + 4..VXLAN + 7].copy_from_slice(&[0, 0, 42]);
        p[INNER_ETH..INNER_ETH + 12].copy_from_slice(&[2, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
        put16(&mut p, INNER_ETH + 12, 0x0800);
        p[INNER_IP] = 0x45;
        put16(&mut p, INNER_IP + 2, (len - INNER_IP) as u16);
        p[INNER_IP + 6] = 0x40;
        p[INNER_IP + 8] = 64;
        p[INNER_IP + 9] = 6;
        p[INNER_IP + 12..INNER_IP + 16].copy_from_slice(&[10, 10, 0, 2]);
        p[INNER_IP + 16..INNER_IP + 20].copy_from_slice(&[10, 10, 0, 3]);
        ip_checksum(&mut p, INNER_IP);
        put16(&mut p, TCP, 5201);
        put16(&mut p, TCP + 2, 40001);
        p[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
        p[TCP + 8..TCP + 12].copy_from_slice(&7u32.to_be_bytes());
        p[TCP + 12] = 5 << 4;
        p[TCP + 13] = flags;
        put16(&mut p, TCP + 14, 512);
        p[TCP + 20..].fill(fill);
        p
    }

    fn run(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut m = Merger::new(ETH, Some(PORT));
        let mut out = Vec::new();
        let mut write = |head: &[u8], p: &[u8]| out.push([head, p].concat());
        for p in packets {
            m.push(p, &mut write);
        }
        m.flush(&mut write);
        out
    }

    fn ip_ok(frame: &[u8], at: usize) -> bool {
        sum(&frame[FRAME_HEAD + at..FRAME_HEAD + at + 20]) == 0xffff
    }

    #[test]
    fn consecutive_segments_become_one_frame() {
        let a = segment_packet(1000, 1300, TCP_ACK, 1);
        let b = segment_packet(2300, 1300, TCP_ACK, 2);
        let c = segment_packet(3600, 500, TCP_ACK | TCP_PSH, 3);
        let out = run(&[a.clone(), b, c]);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        let len = TCP + 20 + 3100;
        assert_eq!(f.len(), FRAME_HEAD + len);
        // The virtio-net header: TCP over an IPv4 UDP tunnel, segments of 1300.
        assert_eq!(f[0], NEEDS_CSUM);
        assert_eq!(f[1], 0x21);
        assert_eq!(
            u16::from_le_bytes([f[2], f[3]]) as usize,
            ETH_LEN + TCP + 20
        );
        assert_eq!(u16::from_le_bytes([f[4], f[5]]), 1300);
        assert_eq!(u16::from_le_bytes([f[6], f[7]]) as usize, ETH_LEN + TCP);
        assert_eq!(u16::from_le_bytes([f[8], f[9]]), 16);
        assert_eq!(u16::from_le_bytes([f[20], f[21]]) as usize, ETH_LEN + UDP);
        assert_eq!(
            u16::from_le_bytes([f[22], f[23]]) as usize,
            ETH_LEN + INNER_IP
        );
        assert_eq!(&f[VNET_HDR_LEN..FRAME_HEAD], &ETH);
        let p = &f[FRAME_HEAD..];
        let be16 = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]) as usize;
        assert_eq!(be16(2), len);
        assert_eq!(be16(UDP + 4), len - UDP);
        assert_eq!(be16(UDP + 6), 0, "outer UDP checksum");
        assert_eq!(be16(INNER_IP + 2), len - INNER_IP);
        assert!(ip_ok(f, 0) && ip_ok(f, INNER_IP), "IPv4 header checksums");
        // First segment's sequence number, PSH from the last, payloads in order.
        assert_eq!(&p[TCP + 4..TCP + 8], &1000u32.to_be_bytes());
        assert_eq!(p[TCP + 13], TCP_ACK | TCP_PSH);
        let body = &p[TCP + 20..];
        assert!(body[..1300].iter().all(|&b| b == 1));
        assert!(body[1300..2600].iter().all(|&b| b == 2));
        assert!(body[2600..].iter().all(|&b| b == 3));
        // The checksum field: the pseudo-header's sum (addresses, protocol, TCP length).
        let pseudo = add(
            add(sum(&p[INNER_IP + 12..INNER_IP + 20]), 6),
            (len - TCP) as u16,
        );
        assert_eq!(be16(TCP + 16) as u16, pseudo);
        // Headers not touched stay the first packet's.
        assert_eq!(&p[VXLAN..INNER_IP], &a[VXLAN..INNER_IP]);
    }

    #[test]
    fn one_segment_passes_unchanged_with_a_plain_header() {
        let a = segment_packet(1000, 1300, TCP_ACK, 1);
        let out = run(std::slice::from_ref(&a));
        assert_eq!(out, vec![[plain_head(&ETH).as_slice(), &a].concat()]);
    }

    #[test]
    fn gaps_flow_changes_and_other_packets_break_runs_in_order() {
        let a = segment_packet(1000, 1300, TCP_ACK, 1);
        let gap = segment_packet(5000, 1300, TCP_ACK, 2);
        let mut other_port = segment_packet(6300, 1300, TCP_ACK, 3);
        put16(&mut other_port, TCP, 5202);
        let syn = segment_packet(7600, 1300, TCP_ACK | 0x02, 4);
        let not_vxlan = vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
        ];
        let packets = [a, gap, other_port, syn, not_vxlan];
        let out = run(&packets);
        assert_eq!(out.len(), 5, "nothing merges");
        for (frame, p) in out.iter().zip(&packets) {
            assert_eq!(frame, &[plain_head(&ETH).as_slice(), p].concat());
        }
    }

    #[test]
    fn a_longer_segment_or_one_after_psh_starts_a_new_frame() {
        let a = segment_packet(0, 600, TCP_ACK, 1);
        let longer = segment_packet(600, 1300, TCP_ACK, 2);
        let out = run(&[a, longer]);
        assert_eq!(out.len(), 2);
        let p1 = segment_packet(0, 1300, TCP_ACK | TCP_PSH, 1);
        let p2 = segment_packet(1300, 1300, TCP_ACK, 2);
        let p3 = segment_packet(2600, 1300, TCP_ACK, 3);
        let out = run(&[p1, p2, p3]);
        assert_eq!(out.len(), 2, "PSH closes a run; the next two merge");
        assert_eq!(out[1][1], 0x21);
    }

    #[test]
    fn merged_frames_stay_within_one_ipv4_packet() {
        let packets: Vec<_> = (0..60u32)
            .map(|i| segment_packet(i * 1300, 1300, TCP_ACK, i as u8))
            .collect();
        let out = run(&packets);
        assert!(out.iter().all(|f| f.len() - FRAME_HEAD <= MAX_IP));
        let payload: usize = out.iter().map(|f| f.len() - FRAME_HEAD - TCP - 20).sum();
        assert_eq!(payload, 60 * 1300);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn without_a_port_nothing_merges() {
        let a = segment_packet(0, 1300, TCP_ACK, 1);
        let b = segment_packet(1300, 1300, TCP_ACK, 2);
        let mut m = Merger::new(ETH, None);
        let mut n = 0;
        m.push(&a, &mut |_, _| n += 1);
        m.push(&b, &mut |_, _| n += 1);
        m.flush(&mut |_, _| n += 1);
        assert_eq!(n, 2);
    }
}
