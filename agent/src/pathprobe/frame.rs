//! The probe's frames, built and recognised with pnet: the echo requests it writes to its TAP,
//! the ARP replies it gives the destination, and the packets it looks for on the way (plain,
//! inside VXLAN, or quoted by an ICMP "fragmentation needed"). Pure.

use std::net::Ipv4Addr;

use ovl_model::MacAddr;
use pnet_base::MacAddr as PnetMac;
use pnet_packet::{
    MutablePacket, Packet,
    arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket},
    ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket},
    icmp::{
        IcmpCode, IcmpPacket, IcmpTypes, MutableIcmpPacket, destination_unreachable,
        echo_request::MutableEchoRequestPacket,
    },
    ip::IpNextHeaderProtocols,
    ipv4::{self, Ipv4Flags, Ipv4Packet, MutableIpv4Packet},
    udp::UdpPacket,
};

/// Bytes of Ethernet, IPv4 and ICMP headers in front of an echo's payload.
pub const HEADERS: usize = 14 + 20 + 8;
/// What every probe payload starts with, so a reader tells it from other echoes.
pub const MARK: &[u8; 9] = b"ovl-probe";

fn pmac(m: MacAddr) -> PnetMac {
    let b = m.0;
    PnetMac::new(b[0], b[1], b[2], b[3], b[4], b[5])
}

/// The two ends of an echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// Source MAC (the probe's).
    pub src_mac: MacAddr,
    /// Destination MAC.
    pub dst_mac: MacAddr,
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
}

/// An Ethernet frame holding an ICMP echo request of `ip_len` bytes of IPv4 packet (at
/// least 28 + the mark), with DF set: a frame too big for the path is refused, never cut.
pub fn echo_frame(ends: &Ends, ident: u16, seq: u16, ip_len: usize) -> Vec<u8> {
    let ip_len = ip_len.max(20 + 8 + MARK.len());
    let mut buf = vec![0u8; 14 + ip_len];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("room for Ethernet");
        eth.set_destination(pmac(ends.dst_mac));
        eth.set_source(pmac(ends.src_mac));
        eth.set_ethertype(EtherTypes::Ipv4);
    }
    {
        let mut ip = MutableIpv4Packet::new(&mut buf[14..]).expect("room for IPv4");
        ip.set_version(4);
        ip.set_header_length(5);
        ip.set_total_length(ip_len as u16);
        ip.set_identification(seq);
        ip.set_flags(Ipv4Flags::DontFragment);
        ip.set_ttl(64);
        ip.set_next_level_protocol(IpNextHeaderProtocols::Icmp);
        ip.set_source(ends.src_ip);
        ip.set_destination(ends.dst_ip);
        {
            let mut req =
                MutableEchoRequestPacket::new(ip.payload_mut()).expect("room for an echo");
            req.set_icmp_type(IcmpTypes::EchoRequest);
            req.set_icmp_code(IcmpCode(0));
            req.set_identifier(ident);
            req.set_sequence_number(seq);
            req.payload_mut()[..MARK.len()].copy_from_slice(MARK);
        }
        let sum = {
            let icmp = IcmpPacket::new(ip.payload()).expect("an echo");
            pnet_packet::icmp::checksum(&icmp)
        };
        MutableIcmpPacket::new(ip.payload_mut())
            .expect("an echo")
            .set_checksum(sum);
        let c = ipv4::checksum(&ip.to_immutable());
        ip.set_checksum(c);
    }
    buf
}

/// The ARP reply to `frame` if it asks who has `ip` (the probe answers for its address:
/// it has no stack of its own).
pub fn arp_reply(frame: &[u8], mac: MacAddr, ip: Ipv4Addr) -> Option<Vec<u8>> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let req = ArpPacket::new(eth.payload())?;
    if req.get_operation() != ArpOperations::Request || req.get_target_proto_addr() != ip {
        return None;
    }
    let mut buf = vec![0u8; 42];
    {
        let mut out = MutableEthernetPacket::new(&mut buf).expect("room for Ethernet");
        out.set_destination(req.get_sender_hw_addr());
        out.set_source(pmac(mac));
        out.set_ethertype(EtherTypes::Arp);
    }
    let mut rep = MutableArpPacket::new(&mut buf[14..]).expect("room for ARP");
    rep.set_hardware_type(ArpHardwareTypes::Ethernet);
    rep.set_protocol_type(EtherTypes::Ipv4);
    rep.set_hw_addr_len(6);
    rep.set_proto_addr_len(4);
    rep.set_operation(ArpOperations::Reply);
    rep.set_sender_hw_addr(pmac(mac));
    rep.set_sender_proto_addr(ip);
    rep.set_target_hw_addr(req.get_sender_hw_addr());
    rep.set_target_proto_addr(req.get_sender_proto_addr());
    Some(buf)
}

/// The echo reply a stack would send to the echo request in `frame` (ends swapped), if it
/// holds one.
pub fn reply_to(frame: &[u8]) -> Option<Vec<u8>> {
    let mut out = frame.to_vec();
    let (src_mac, dst_mac) = {
        let eth = EthernetPacket::new(frame)?;
        if eth.get_ethertype() != EtherTypes::Ipv4 {
            return None;
        }
        (eth.get_source(), eth.get_destination())
    };
    {
        let mut eth = MutableEthernetPacket::new(&mut out)?;
        eth.set_source(dst_mac);
        eth.set_destination(src_mac);
    }
    let mut ip = MutableIpv4Packet::new(&mut out[14..])?;
    if ip.get_next_level_protocol() != IpNextHeaderProtocols::Icmp {
        return None;
    }
    let (s, d) = (ip.get_source(), ip.get_destination());
    ip.set_source(d);
    ip.set_destination(s);
    {
        let mut icmp = MutableIcmpPacket::new(ip.payload_mut())?;
        if icmp.get_icmp_type() != IcmpTypes::EchoRequest {
            return None;
        }
        icmp.set_icmp_type(IcmpTypes::EchoReply);
        let sum = pnet_packet::icmp::checksum(&icmp.to_immutable());
        icmp.set_checksum(sum);
    }
    let c = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(c);
    Some(out)
}

/// An echo of a probe, as found in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// A request (else a reply).
    pub request: bool,
    /// Its sequence number.
    pub seq: u16,
    /// Length of the IPv4 packet holding it.
    pub ip_len: usize,
}

/// The probe echo (identifier `ident`) an IPv4 packet holds, if any.
pub fn echo_in_ip(packet: &[u8], ident: u16) -> Option<Echo> {
    let ip = Ipv4Packet::new(packet)?;
    if ip.get_next_level_protocol() != IpNextHeaderProtocols::Icmp {
        return None;
    }
    let icmp = ip.payload();
    let request = match IcmpPacket::new(icmp)?.get_icmp_type() {
        IcmpTypes::EchoRequest => true,
        IcmpTypes::EchoReply => false,
        _ => return None,
    };
    if icmp.len() < 8 || u16::from_be_bytes([icmp[4], icmp[5]]) != ident {
        return None;
    }
    Some(Echo {
        request,
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        ip_len: ip.get_total_length() as usize,
    })
}

/// The probe echo an Ethernet frame holds, if any.
pub fn echo_in_frame(frame: &[u8], ident: u16) -> Option<Echo> {
    let eth = EthernetPacket::new(frame)?;
    (eth.get_ethertype() == EtherTypes::Ipv4)
        .then(|| echo_in_ip(eth.payload(), ident))
        .flatten()
}

/// A VXLAN packet carrying a probe echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// Outer source (the sending VTEP).
    pub src: Ipv4Addr,
    /// Outer destination (the receiving VTEP).
    pub dst: Ipv4Addr,
    /// The VNI.
    pub vni: u32,
    /// The echo inside.
    pub echo: Echo,
}

/// The probe echo an IPv4 packet carries in VXLAN on UDP `port`, if any.
pub fn echo_in_vxlan(packet: &[u8], port: u16, ident: u16) -> Option<Carried> {
    let ip = Ipv4Packet::new(packet)?;
    if ip.get_next_level_protocol() != IpNextHeaderProtocols::Udp {
        return None;
    }
    let udp = UdpPacket::new(ip.payload())?;
    if udp.get_destination() != port {
        return None;
    }
    let vx = udp.payload();
    if vx.len() < 8 || vx[0] & 0x08 == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    Some(Carried {
        src: ip.get_source(),
        dst: ip.get_destination(),
        vni,
        echo: echo_in_frame(&vx[8..], ident)?,
    })
}

/// The next-hop MTU of an ICMP "fragmentation needed" that quotes a probe echo (a hop that
/// refused a frame too big for it).
pub fn frag_needed(frame: &[u8], ident: u16) -> Option<u32> {
    let eth = EthernetPacket::new(frame)?;
    let ip = Ipv4Packet::new(eth.payload())?;
    if ip.get_next_level_protocol() != IpNextHeaderProtocols::Icmp {
        return None;
    }
    let du = destination_unreachable::DestinationUnreachablePacket::new(ip.payload())?;
    if du.get_icmp_type() != IcmpTypes::DestinationUnreachable
        || du.get_icmp_code()
            != destination_unreachable::IcmpCodes::FragmentationRequiredAndDFFlagSet
    {
        return None;
    }
    let quoted = du.payload();
    let inner = Ipv4Packet::new(quoted)?;
    let icmp = inner.payload();
    if icmp.len() < 6 || icmp[0] != 8 || u16::from_be_bytes([icmp[4], icmp[5]]) != ident {
        return None;
    }
    // The next-hop MTU is the low half of the header's second word.
    let raw = ip.payload();
    Some(u16::from_be_bytes([raw[6], raw[7]]) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDS: Ends = Ends {
        src_mac: MacAddr([2, 0x42, 10, 9, 0, 9]),
        dst_mac: MacAddr([2, 0x42, 10, 9, 0, 2]),
        src_ip: Ipv4Addr::new(10, 9, 0, 9),
        dst_ip: Ipv4Addr::new(10, 9, 0, 2),
    };

    #[test]
    fn an_echo_frame_is_recognised_by_its_identifier_only() {
        let f = echo_frame(&ENDS, 7, 3, 100);
        assert_eq!(f.len(), 114);
        let e = echo_in_frame(&f, 7).unwrap();
        assert_eq!(
            e,
            Echo {
                request: true,
                seq: 3,
                ip_len: 100
            }
        );
        assert!(echo_in_frame(&f, 8).is_none());
        let ip = Ipv4Packet::new(&f[14..]).unwrap();
        assert_eq!(ipv4::checksum(&ip), ip.get_checksum());
        assert_eq!(ip.get_flags(), Ipv4Flags::DontFragment);
        assert_eq!(&f[HEADERS..HEADERS + MARK.len()], MARK);
    }

    #[test]
    fn a_reply_swaps_the_ends() {
        let f = echo_frame(&ENDS, 7, 2, 80);
        let r = reply_to(&f).unwrap();
        let e = echo_in_frame(&r, 7).unwrap();
        assert!(!e.request);
        assert_eq!(e.seq, 2);
        let ip = Ipv4Packet::new(&r[14..]).unwrap();
        assert_eq!(ip.get_source(), ENDS.dst_ip);
        assert_eq!(ipv4::checksum(&ip), ip.get_checksum());
        assert!(reply_to(&r).is_none(), "a reply is not answered");
    }

    #[test]
    fn a_tiny_size_still_carries_the_mark() {
        let f = echo_frame(&ENDS, 1, 1, 0);
        assert_eq!(f.len(), HEADERS + MARK.len());
    }

    #[test]
    fn vxlan_packets_are_opened_to_find_the_echo() {
        let inner = echo_frame(&ENDS, 7, 1, 60);
        let mut pkt = vec![0u8; 20 + 8 + 8];
        pkt.extend_from_slice(&inner);
        let total = pkt.len() as u16;
        {
            let mut ip = MutableIpv4Packet::new(&mut pkt).unwrap();
            ip.set_version(4);
            ip.set_header_length(5);
            ip.set_total_length(total);
            ip.set_next_level_protocol(IpNextHeaderProtocols::Udp);
            ip.set_source(Ipv4Addr::new(198, 18, 0, 11));
            ip.set_destination(Ipv4Addr::new(198, 18, 0, 12));
        }
        pkt[22..24].copy_from_slice(&4789u16.to_be_bytes());
        pkt[28] = 0x08;
        pkt[32..35].copy_from_slice(&[0, 1, 44]);
        let c = echo_in_vxlan(&pkt, 4789, 7).unwrap();
        assert_eq!(c.vni, 300);
        assert_eq!(c.dst, Ipv4Addr::new(198, 18, 0, 12));
        assert!(c.echo.request);
        assert!(echo_in_vxlan(&pkt, 4790, 7).is_none());
        assert!(echo_in_vxlan(&pkt, 4789, 6).is_none());
    }

    #[test]
    fn arp_is_answered_only_for_the_probes_address() {
        let asker = MacAddr([2, 0x42, 10, 9, 0, 2]);
        let mut req = vec![0u8; 42];
        {
            let mut eth = MutableEthernetPacket::new(&mut req).unwrap();
            eth.set_destination(PnetMac::broadcast());
            eth.set_source(pmac(asker));
            eth.set_ethertype(EtherTypes::Arp);
        }
        {
            let mut a = MutableArpPacket::new(&mut req[14..]).unwrap();
            a.set_hardware_type(ArpHardwareTypes::Ethernet);
            a.set_protocol_type(EtherTypes::Ipv4);
            a.set_hw_addr_len(6);
            a.set_proto_addr_len(4);
            a.set_operation(ArpOperations::Request);
            a.set_sender_hw_addr(pmac(asker));
            a.set_sender_proto_addr(ENDS.dst_ip);
            a.set_target_proto_addr(ENDS.src_ip);
        }
        let rep = arp_reply(&req, ENDS.src_mac, ENDS.src_ip).unwrap();
        let eth = EthernetPacket::new(&rep).unwrap();
        assert_eq!(eth.get_destination(), pmac(asker));
        let a = ArpPacket::new(eth.payload()).unwrap();
        assert_eq!(a.get_operation(), ArpOperations::Reply);
        assert_eq!(a.get_sender_hw_addr(), pmac(ENDS.src_mac));
        assert_eq!(a.get_target_proto_addr(), ENDS.dst_ip);
        assert!(arp_reply(&req, ENDS.src_mac, Ipv4Addr::new(10, 9, 0, 8)).is_none());
    }

    #[test]
    fn fragmentation_needed_quoting_the_probe_gives_the_mtu() {
        let quoted = echo_frame(&ENDS, 7, 101, 1400);
        let mut f = vec![0u8; 14 + 20 + 8 + 28];
        {
            let mut eth = MutableEthernetPacket::new(&mut f).unwrap();
            eth.set_ethertype(EtherTypes::Ipv4);
        }
        {
            let mut ip = MutableIpv4Packet::new(&mut f[14..]).unwrap();
            ip.set_version(4);
            ip.set_header_length(5);
            ip.set_total_length(56);
            ip.set_next_level_protocol(IpNextHeaderProtocols::Icmp);
        }
        f[34] = 3;
        f[35] = 4;
        f[40..42].copy_from_slice(&1350u16.to_be_bytes());
        f[42..70].copy_from_slice(&quoted[14..42]);
        assert_eq!(frag_needed(&f, 7), Some(1350));
        assert_eq!(frag_needed(&f, 8), None);
    }
}
