//! `overlayctl monitor [--drops] [NET]`: a live stream of dropped frames and notable events.
//! Pure: what a dropped frame's head says ([`Frame`]), why it was dropped in words
//! ([`reason_text`]), drops the kernel path only counts ([`CountedDrops`]), host state
//! changes ([`HostWatch`]) and the filter. The agent feeds them (agent/src/agent/monitor.rs).

use std::{collections::BTreeMap, net::Ipv4Addr};

use pnet_packet::{
    Packet,
    arp::ArpPacket,
    ethernet::{EtherTypes, EthernetPacket},
    ip::IpNextHeaderProtocols,
    ipv4::Ipv4Packet,
    tcp::TcpPacket,
    udp::UdpPacket,
};
use serde::{Deserialize, Serialize};

/// What a dropped frame's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Frame {
    /// Source MAC.
    pub src_mac: String,
    /// Destination MAC.
    pub dst_mac: String,
    /// `ipv4`, `arp` or the EtherType in hex.
    pub kind: String,
    /// Source address (IPv4, or an ARP sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<Ipv4Addr>,
    /// Destination address (IPv4, or an ARP target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<Ipv4Addr>,
    /// `tcp`, `udp`, `icmp` or the protocol number (IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Source and destination ports (TCP, UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<(u16, u16)>,
}

impl Frame {
    /// Decodes an Ethernet frame's head (as much as it holds); `None` if not even the
    /// Ethernet header is there.
    pub fn decode(head: &[u8]) -> Option<Frame> {
        let eth = EthernetPacket::new(head)?;
        let mut f = Frame {
            src_mac: eth.get_source().to_string(),
            dst_mac: eth.get_destination().to_string(),
            ..Frame::default()
        };
        match eth.get_ethertype() {
            EtherTypes::Ipv4 => {
                f.kind = "ipv4".into();
                if let Some(ip) = Ipv4Packet::new(eth.payload()) {
                    f.src_ip = Some(ip.get_source());
                    f.dst_ip = Some(ip.get_destination());
                    let p = ip.get_next_level_protocol();
                    f.proto = Some(match p {
                        IpNextHeaderProtocols::Tcp => {
                            f.ports = TcpPacket::new(ip.payload())
                                .map(|t| (t.get_source(), t.get_destination()));
                            "tcp".into()
                        }
                        IpNextHeaderProtocols::Udp => {
                            f.ports = UdpPacket::new(ip.payload())
                                .map(|u| (u.get_source(), u.get_destination()));
                            "udp".into()
                        }
                        IpNextHeaderProtocols::Icmp => "icmp".into(),
                        other => other.0.to_string(),
                    });
                }
            }
            EtherTypes::Arp => {
                f.kind = "arp".into();
                if let Some(a) = ArpPacket::new(eth.payload()) {
                    f.src_ip = Some(a.get_sender_proto_addr());
                    f.dst_ip = Some(a.get_target_proto_addr());
                }
            }
            other => f.kind = format!("0x{:04x}", other.0),
        }
        Some(f)
    }

    /// One line: `02:.. > 02:.. ipv4 10.0.0.2 > 10.0.0.3 tcp 40000 > 80`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} > {} {}", self.src_mac, self.dst_mac, self.kind);
        if let (Some(a), Some(b)) = (self.src_ip, self.dst_ip) {
            s.push_str(&format!(" {a} > {b}"));
        }
        if let Some(p) = &self.proto {
            s.push_str(&format!(" {p}"));
        }
        if let Some((a, b)) = self.ports {
            s.push_str(&format!(" {a} > {b}"));
        }
        s
    }
}

/// Why a frame was dropped, in words, for a drop reason (the eBPF counter names, and the
/// kernel path's counted reasons).
pub fn reason_text(code: &str) -> &'static str {
    match code {
        "egress_drop_spoofed_mac" => "spoofed source MAC (not the endpoint's)",
        "egress_drop_spoofed_ip" => "spoofed source address (not the endpoint's)",
        "egress_drop_unknown_source" => "sent from an interface that is no endpoint",
        "egress_drop_malformed" | "ingress_drop_malformed" => "malformed or truncated frame",
        "egress_drop_hairpin" => "addressed to its own sender",
        "egress_drop_tunnel_key" => "no tunnel key could be set (no peer)",
        "egress_drop_no_config" => "datapath not configured",
        "ingress_drop_no_tunnel_key" => "arrived without tunnel metadata",
        "ingress_drop_unknown_vni" => "VNI not served on this host",
        "ingress_drop_no_local_endpoint" => "unknown MAC: no local endpoint has it",
        "kernel_spoofed" => "spoofed source (kernel datapath's anti-spoofing rules)",
        "vxlan_not_admitted" => "VXLAN from a host that is not in the cluster (admission)",
        _ => "dropped",
    }
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// The host reporting it.
    pub host: String,
    /// `drop`, or `host` (a host state change), or `vxlan` (a health matrix change).
    pub kind: String,
    /// Machine-readable reason (a drop's counter name) or new state.
    pub code: String,
    /// In words.
    pub reason: String,
    /// The network, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The endpoint (container name), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How many frames (1 for a frame seen; more for counted drops).
    pub count: u64,
    /// What the frame said, for a frame seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<Frame>,
}

impl Event {
    /// The line `overlayctl monitor` prints.
    pub fn line(&self) -> String {
        let mut s = format!("{} {} {}", self.host, self.kind.to_uppercase(), self.reason);
        match (&self.network, &self.endpoint) {
            (Some(n), Some(e)) => s.push_str(&format!(" [{n}/{e}]")),
            (Some(n), None) => s.push_str(&format!(" [{n}]")),
            _ => {}
        }
        if self.count > 1 {
            s.push_str(&format!(" x{}", self.count));
        }
        if let Some(f) = &self.frame {
            s.push_str(": ");
            s.push_str(&f.summary());
        }
        s
    }
}

/// What a stream shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only drops (no host or matrix events).
    #[serde(default)]
    pub drops: bool,
    /// Only this network's events.
    #[serde(default)]
    pub network: Option<String>,
    /// Only this endpoint's (container name).
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        if self.drops && e.kind != "drop" {
            return false;
        }
        if let Some(n) = &self.network
            && e.network.as_ref() != Some(n)
        {
            return false;
        }
        if let Some(ep) = &self.endpoint
            && e.endpoint.as_ref() != Some(ep)
        {
            return false;
        }
        true
    }
}

/// Drops a datapath only counts: each poll turns the growth of each counter into one event.
#[derive(Debug, Default)]
pub struct CountedDrops {
    last: BTreeMap<String, u64>,
}

impl CountedDrops {
    /// Reasons and how many more frames each dropped since the last poll (the first poll
    /// only takes the baseline).
    pub fn poll(&mut self, now: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
        let first = self.last.is_empty();
        let mut out = Vec::new();
        for (code, n) in now {
            let before = self.last.insert(code.clone(), *n);
            if first {
                continue;
            }
            // A counter that went back (its rules were made again) starts over from zero.
            let grew = match before {
                Some(b) if *n >= b => n - b,
                _ => *n,
            };
            if grew > 0 {
                out.push((code.clone(), grew));
            }
        }
        out
    }
}

/// Host states seen by the last poll; a change is an event.
#[derive(Debug, Default)]
pub struct HostWatch {
    last: Option<BTreeMap<String, String>>,
}

impl HostWatch {
    /// Hosts whose state changed since the last poll, with the new state (`gone` for one no
    /// longer registered); the first poll only takes the baseline.
    pub fn poll(&mut self, now: BTreeMap<String, String>) -> Vec<(String, String)> {
        let Some(last) = self.last.replace(now.clone()) else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = now
            .iter()
            .filter(|(h, s)| last.get(*h) != Some(*s))
            .map(|(h, s)| (h.clone(), s.clone()))
            .collect();
        out.extend(
            last.keys()
                .filter(|h| !now.contains_key(*h))
                .map(|h| (h.clone(), "gone".to_string())),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(src: [u8; 6], dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(l4);
        h
    }

    const A: [u8; 6] = [0x02, 0x42, 10, 10, 0, 2];
    const B: [u8; 6] = [0x02, 0x42, 10, 10, 0, 3];

    #[test]
    fn frames_decode_to_addresses_protocol_and_ports() {
        let tcp = [
            0x9c, 0x40, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0,
        ];
        let f = Frame::decode(&eth(
            A,
            B,
            0x0800,
            &ipv4([10, 10, 0, 2], [10, 10, 0, 3], 6, &tcp),
        ))
        .unwrap();
        assert_eq!(
            f.summary(),
            "02:42:0a:0a:00:02 > 02:42:0a:0a:00:03 ipv4 10.10.0.2 > 10.10.0.3 tcp 40000 > 80"
        );
        let icmp = Frame::decode(&eth(
            A,
            B,
            0x0800,
            &ipv4([10, 10, 0, 2], [10, 10, 0, 3], 1, &[8, 0, 0, 0]),
        ))
        .unwrap();
        assert_eq!(icmp.proto.as_deref(), Some("icmp"));
        assert_eq!(icmp.ports, None);
        // ARP: sender and target addresses.
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&A);
        arp.extend_from_slice(&[10, 10, 0, 2]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[10, 10, 0, 3]);
        let f = Frame::decode(&eth(A, [0xff; 6], 0x0806, &arp)).unwrap();
        assert_eq!(f.kind, "arp");
        assert_eq!(f.dst_ip, Some(Ipv4Addr::new(10, 10, 0, 3)));
        // A head cut inside the IP header still names the MACs; less than Ethernet is nothing.
        let f = Frame::decode(&eth(A, B, 0x0800, &[0x45, 0])).unwrap();
        assert_eq!((f.kind.as_str(), f.src_ip), ("ipv4", None));
        assert_eq!(Frame::decode(&[1, 2, 3]), None);
        assert_eq!(
            Frame::decode(&eth(A, B, 0x86dd, &[])).unwrap().kind,
            "0x86dd"
        );
    }

    fn drop_event(network: Option<&str>, endpoint: Option<&str>) -> Event {
        Event {
            at_ms: 1,
            host: "h1".into(),
            kind: "drop".into(),
            code: "egress_drop_spoofed_mac".into(),
            reason: reason_text("egress_drop_spoofed_mac").into(),
            network: network.map(Into::into),
            endpoint: endpoint.map(Into::into),
            count: 1,
            frame: Frame::decode(&eth([2, 0xde, 0xad, 0, 0, 1], B, 0x0800, &[])),
        }
    }

    #[test]
    fn events_print_on_one_line_and_filter_by_network_endpoint_and_kind() {
        let e = drop_event(Some("net1"), Some("c1"));
        assert_eq!(
            e.line(),
            "h1 DROP spoofed source MAC (not the endpoint's) [net1/c1]: 02:de:ad:00:00:01 > 02:42:0a:0a:00:03 ipv4"
        );
        let all = Filter::default();
        assert!(all.matches(&e));
        let net2 = Filter {
            network: Some("net2".into()),
            ..Filter::default()
        };
        assert!(!net2.matches(&e));
        let c1 = Filter {
            endpoint: Some("c1".into()),
            ..Filter::default()
        };
        assert!(c1.matches(&e));
        assert!(!c1.matches(&drop_event(Some("net1"), None)));
        let drops = Filter {
            drops: true,
            ..Filter::default()
        };
        let host = Event {
            kind: "host".into(),
            ..drop_event(None, None)
        };
        assert!(!drops.matches(&host));
        assert!(all.matches(&host));
        assert_eq!(reason_text("no such"), "dropped");
    }

    #[test]
    fn counted_drops_are_the_growth_since_the_last_poll() {
        let mut c = CountedDrops::default();
        let now = |a: u64, b: u64| -> BTreeMap<String, u64> {
            [
                ("kernel_spoofed".to_string(), a),
                ("vxlan_not_admitted".to_string(), b),
            ]
            .into()
        };
        assert_eq!(c.poll(&now(5, 9)), [], "the baseline");
        assert_eq!(c.poll(&now(5, 9)), []);
        assert_eq!(c.poll(&now(7, 9)), [("kernel_spoofed".to_string(), 2)]);
        // Rules made again: the counter starts over and counts from there.
        assert_eq!(
            c.poll(&now(1, 10)),
            [
                ("kernel_spoofed".to_string(), 1),
                ("vxlan_not_admitted".to_string(), 1)
            ]
        );
    }

    #[test]
    fn host_changes_are_reported_once() {
        let mut w = HostWatch::default();
        let m = |s: &[(&str, &str)]| -> BTreeMap<String, String> {
            s.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(w.poll(m(&[("h1", "alive"), ("h2", "alive")])), []);
        assert_eq!(
            w.poll(m(&[
                ("h1", "alive"),
                ("h2", "agent down, datapath answering")
            ])),
            [(
                "h2".to_string(),
                "agent down, datapath answering".to_string()
            )]
        );
        assert_eq!(
            w.poll(m(&[
                ("h1", "alive"),
                ("h2", "agent down, datapath answering")
            ])),
            []
        );
        assert_eq!(
            w.poll(m(&[("h1", "alive")])),
            [("h2".to_string(), "gone".to_string())]
        );
    }
}
