//! Packet counters of the programs (`COUNTERS`, one row per CPU indexed by `enum
//! ovl_counter` in the C header), summed over CPUs.

use std::fmt;

/// Names of the counter slots, in `enum ovl_counter` order.
pub(crate) const NAMES: [&str; 25] = [
    "egress_packets",
    "egress_redirect_local",
    "egress_encap",
    "egress_encap_direct",
    "egress_flooded",
    "egress_flood_copies",
    "egress_arp_replied",
    "egress_drop_spoofed_mac",
    "egress_drop_spoofed_ip",
    "egress_drop_unknown_source",
    "egress_drop_malformed",
    "egress_drop_hairpin",
    "egress_drop_tunnel_key",
    "egress_drop_no_config",
    "ingress_packets",
    "ingress_redirect",
    "ingress_flooded",
    "ingress_flood_copies",
    "ingress_drop_no_tunnel_key",
    "ingress_drop_unknown_vni",
    "ingress_drop_no_local_endpoint",
    "ingress_drop_malformed",
    "flood_copy_failed",
    "underlay_decap",
    "underlay_decap_failed",
];

/// Counter totals (summed over CPUs). Field names follow the C `enum ovl_counter`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]

pub struct Counters {
    /// Frames seen by `lxc_egress` (sent by containers).
    pub egress_packets: u64,
    /// Frames switched to a local endpoint.
    pub egress_redirect_local: u64,
    /// Frames encapsulated to a known remote MAC.
    pub egress_encap: u64,
    /// BUM frames replicated.
    pub egress_flooded: u64,
    /// Copies sent by those replications (local + remote).
    pub egress_flood_copies: u64,
    /// ARP requests answered in BPF.
    pub egress_arp_replied: u64,
    /// Dropped: source MAC (or ARP sender MAC) not the endpoint's own.
    pub egress_drop_spoofed_mac: u64,
    /// Dropped: source IPv4 (or ARP sender IP) not the endpoint's own.
    pub egress_drop_spoofed_ip: u64,
    /// Dropped: the program runs on an interface that is not a known endpoint.
    pub egress_drop_unknown_source: u64,
    /// Dropped: truncated or malformed headers.
    pub egress_drop_malformed: u64,
    /// Dropped: destination is the sender itself.
    pub egress_drop_hairpin: u64,
    /// Dropped: setting the tunnel key failed.
    pub egress_drop_tunnel_key: u64,
    /// Dropped: CONFIG missing (should not happen).
    pub egress_drop_no_config: u64,
    /// Frames seen by `vxlan_ingress` (decapsulated).
    pub ingress_packets: u64,
    /// Delivered to a local endpoint.
    pub ingress_redirect: u64,
    /// BUM frames delivered to all local endpoints of the VNI.
    pub ingress_flooded: u64,
    /// Copies sent by those deliveries.
    pub ingress_flood_copies: u64,
    /// Dropped: no tunnel metadata.
    pub ingress_drop_no_tunnel_key: u64,
    /// Dropped: VNI not served on this host.
    pub ingress_drop_unknown_vni: u64,
    /// Dropped: unicast to a MAC with no local endpoint.
    pub ingress_drop_no_local_endpoint: u64,
    /// Dropped: truncated frame.
    pub ingress_drop_malformed: u64,
    /// Flood copies that could not be sent.
    pub flood_copy_failed: u64,
    /// VXLAN frames decapsulated by `vtep_ingress` on the underlay interface and handed
    /// straight to a local endpoint (they bypass the vxlan device and `vxlan_ingress`).
    pub underlay_decap: u64,
    /// Frames `vtep_ingress` could not decapsulate (left to the vxlan device, or dropped if
    /// already changed).
    pub underlay_decap_failed: u64,
    /// Of `egress_encap`: frames encapsulated in BPF and handed to the underlay interface
    /// (the rest went through the vxlan device).
    pub egress_encap_direct: u64,
}

impl Counters {
    /// Builds counters from slot totals in `enum ovl_counter` order (missing slots are 0).
    pub fn from_slots(s: &[u64]) -> Self {
        let g = |i: usize| s.get(i).copied().unwrap_or(0);
        Counters {
            egress_packets: g(0),
            egress_redirect_local: g(1),
            egress_encap: g(2),
            egress_encap_direct: g(3),
            egress_flooded: g(4),
            egress_flood_copies: g(5),
            egress_arp_replied: g(6),
            egress_drop_spoofed_mac: g(7),
            egress_drop_spoofed_ip: g(8),
            egress_drop_unknown_source: g(9),
            egress_drop_malformed: g(10),
            egress_drop_hairpin: g(11),
            egress_drop_tunnel_key: g(12),
            egress_drop_no_config: g(13),
            ingress_packets: g(14),
            ingress_redirect: g(15),
            ingress_flooded: g(16),
            ingress_flood_copies: g(17),
            ingress_drop_no_tunnel_key: g(18),
            ingress_drop_unknown_vni: g(19),
            ingress_drop_no_local_endpoint: g(20),
            ingress_drop_malformed: g(21),
            flood_copy_failed: g(22),
            underlay_decap: g(23),
            underlay_decap_failed: g(24),
        }
    }

    /// `(name, value)` pairs in slot order, e.g. for metrics export.
    pub fn entries(&self) -> [(&'static str, u64); 25] {
        let v = [
            self.egress_packets,
            self.egress_redirect_local,
            self.egress_encap,
            self.egress_encap_direct,
            self.egress_flooded,
            self.egress_flood_copies,
            self.egress_arp_replied,
            self.egress_drop_spoofed_mac,
            self.egress_drop_spoofed_ip,
            self.egress_drop_unknown_source,
            self.egress_drop_malformed,
            self.egress_drop_hairpin,
            self.egress_drop_tunnel_key,
            self.egress_drop_no_config,
            self.ingress_packets,
            self.ingress_redirect,
            self.ingress_flooded,
            self.ingress_flood_copies,
            self.ingress_drop_no_tunnel_key,
            self.ingress_drop_unknown_vni,
            self.ingress_drop_no_local_endpoint,
            self.ingress_drop_malformed,
            self.flood_copy_failed,
            self.underlay_decap,
            self.underlay_decap_failed,
        ];
        std::array::from_fn(|i| (NAMES[i], v[i]))
    }

    /// Counter-wise difference `self - earlier` (saturating), for "what happened since".
    pub fn since(&self, earlier: &Counters) -> Counters {
        let a = self.entries();
        let b = earlier.entries();
        let d: Vec<u64> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| x.1.saturating_sub(y.1))
            .collect();
        Counters::from_slots(&d)
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in self.entries() {
            writeln!(f, "{name:<32} {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_names_in_order() {
        let slots: Vec<u64> = (1..=25).collect();
        let c = Counters::from_slots(&slots);
        assert_eq!(c.egress_packets, 1);
        assert_eq!(c.egress_encap_direct, 4);
        assert_eq!(c.egress_drop_spoofed_ip, 9);
        assert_eq!(c.ingress_drop_unknown_vni, 20);
        assert_eq!(c.flood_copy_failed, 23);
        assert_eq!(c.underlay_decap_failed, 25);
        for (i, (name, v)) in c.entries().iter().enumerate() {
            assert_eq!(*name, NAMES[i]);
            assert_eq!(*v, i as u64 + 1);
        }
    }

    #[test]
    fn display_and_since() {
        let a = Counters::from_slots(&[5, 0, 0, 0, 0, 0, 0, 0, 3]);
        let b = Counters::from_slots(&[2, 0, 0, 0, 0, 0, 0, 0, 1]);
        let d = a.since(&b);
        assert_eq!(d.egress_packets, 3);
        assert_eq!(d.egress_drop_spoofed_ip, 2);
        let text = a.to_string();
        assert!(text.contains("egress_drop_spoofed_ip"));
        assert!(
            text.lines()
                .any(|l| l.starts_with("egress_packets") && l.ends_with(" 5"))
        );
        assert_eq!(text.lines().count(), 25);
    }
}
