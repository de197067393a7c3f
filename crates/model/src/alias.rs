//! The ifalias markers on the agent's veth ends: the one codec both datapaths use.
//!
//! The kernel keeps an interface's alias (`IFLA_IFALIAS`) across renames and moves between
//! namespaces, so a restarted agent (or one that replaced the other datapath) maps
//! interfaces back to endpoints without any state of its own:
//!
//! | marker | on | text |
//! |---|---|---|
//! | [`Marker::Port`] | kernel datapath: bridge port in the network's sandbox | `ovl-ep:<id> <ip>/<len> <mac>` |
//! | [`Marker::HostEnd`] | eBPF datapath: host end in the host namespace | `ovl-ebpf:<net> <id> <vni> <ip>/<len> <mac>` |
//! | [`Marker::Container`] | both: the container end | `ovl-ct:<net> <id> <vni> <ip>/<len> <mac>` |
//!
//! Older versions marked container ends `ovl-ebpf-ct:` (eBPF) or with the port's own
//! `ovl-ep:` text (kernel); both still parse, and the reconciler rewrites them.

use std::net::Ipv4Addr;

use crate::mac::MacAddr;
use crate::spec::{EndpointSpec, NetworkSpec};

const PORT: &str = "ovl-ep:";
const HOST_END: &str = "ovl-ebpf:";
const CONTAINER: &str = "ovl-ct:";
const CONTAINER_OLD: &str = "ovl-ebpf-ct:";

/// An endpoint as a network-qualified marker records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMark {
    /// Network name.
    pub network: String,
    /// Endpoint id.
    pub id: String,
    /// VNI of the network.
    pub vni: u32,
    /// Container address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Container MAC.
    pub mac: MacAddr,
}

/// What an interface's alias says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A kernel-datapath bridge port (the network is the sandbox it sits in). Address and MAC
    /// are absent in markers of the first versions.
    Port {
        /// Endpoint id.
        id: String,
        /// Container address and prefix length.
        addr: Option<(Ipv4Addr, u8)>,
        /// Container MAC.
        mac: Option<MacAddr>,
    },
    /// An eBPF-datapath host end.
    HostEnd(EndpointMark),
    /// A container end, on either datapath.
    Container(EndpointMark),
}

impl EndpointMark {
    /// The mark of endpoint `ep` on network `net`.
    pub fn of(net: &NetworkSpec, ep: &EndpointSpec) -> EndpointMark {
        EndpointMark {
            network: net.name.clone(),
            id: ep.endpoint_id.clone(),
            vni: net.vni,
            ip: ep.ip,
            prefix_len: ep.prefix_len,
            mac: ep.mac,
        }
    }

    fn fields(&self) -> String {
        format!(
            "{} {} {} {}/{} {}",
            self.network, self.id, self.vni, self.ip, self.prefix_len, self.mac
        )
    }

    fn parse(s: &str) -> Option<EndpointMark> {
        let mut it = s.split(' ');
        let network = it.next()?.to_string();
        let id = it.next()?.to_string();
        let vni = it.next()?.parse().ok()?;
        let (ip, len) = it.next()?.split_once('/')?;
        let mac = it.next()?.parse().ok()?;
        if it.next().is_some() || network.is_empty() || id.is_empty() {
            return None;
        }
        Some(EndpointMark {
            network,
            id,
            vni,
            ip: ip.parse().ok()?,
            prefix_len: len.parse().ok()?,
            mac,
        })
    }
}

impl Marker {
    /// The alias text.
    pub fn render(&self) -> String {
        match self {
            Marker::Port { id, addr, mac } => {
                let mut s = format!("{PORT}{id}");
                if let Some((ip, len)) = addr {
                    s.push_str(&format!(" {ip}/{len}"));
                }
                if let Some(mac) = mac {
                    s.push_str(&format!(" {mac}"));
                }
                s
            }
            Marker::HostEnd(m) => format!("{HOST_END}{}", m.fields()),
            Marker::Container(m) => format!("{CONTAINER}{}", m.fields()),
        }
    }

    /// Parses any marker this or an earlier version wrote; anything else is `None`.
    pub fn parse(alias: &str) -> Option<Marker> {
        if let Some(rest) = alias.strip_prefix(CONTAINER) {
            return EndpointMark::parse(rest).map(Marker::Container);
        }
        if let Some(rest) = alias.strip_prefix(CONTAINER_OLD) {
            return EndpointMark::parse(rest).map(Marker::Container);
        }
        if let Some(rest) = alias.strip_prefix(HOST_END) {
            return EndpointMark::parse(rest).map(Marker::HostEnd);
        }
        let rest = alias.strip_prefix(PORT)?;
        let mut parts = rest.split_whitespace();
        let id = parts.next()?.to_string();
        let (mut addr, mut mac) = (None, None);
        for p in parts {
            if let Some((ip, len)) = p.split_once('/') {
                if let (Ok(ip), Ok(len)) = (ip.parse(), len.parse()) {
                    addr = Some((ip, len));
                }
            } else if let Ok(m) = p.parse() {
                mac = Some(m);
            }
        }
        Some(Marker::Port { id, addr, mac })
    }

    /// The endpoint id.
    pub fn id(&self) -> &str {
        match self {
            Marker::Port { id, .. } => id,
            Marker::HostEnd(m) | Marker::Container(m) => &m.id,
        }
    }

    /// Whether this marks the container end of endpoint `id` of `network`. A kernel container
    /// end of an earlier version carries its port's marker, without the network: it matches on
    /// the id alone (callers also check that it is the peer of the endpoint's port).
    pub fn is_container_of(&self, network: &str, id: &str) -> bool {
        match self {
            Marker::Container(m) => m.network == network && m.id == id,
            Marker::Port { id: i, .. } => i == id,
            Marker::HostEnd(_) => false,
        }
    }
}

/// The marker of an endpoint's container end (both datapaths).
pub fn container_marker(net: &NetworkSpec, ep: &EndpointSpec) -> String {
    Marker::Container(EndpointMark::of(net, ep)).render()
}

/// Parses an interface alias, if it has one.
pub fn marker_of(alias: Option<&str>) -> Option<Marker> {
    alias.and_then(Marker::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark() -> EndpointMark {
        EndpointMark {
            network: "net-1_x".into(),
            id: "c1".into(),
            vni: 4097,
            ip: Ipv4Addr::new(10, 1, 0, 7),
            prefix_len: 24,
            mac: MacAddr([2, 0x42, 10, 1, 0, 7]),
        }
    }

    #[test]
    fn every_marker_round_trips() {
        let m = mark();
        let host = Marker::HostEnd(m.clone());
        assert_eq!(
            host.render(),
            "ovl-ebpf:net-1_x c1 4097 10.1.0.7/24 02:42:0a:01:00:07"
        );
        let ct = Marker::Container(m.clone());
        assert_eq!(
            ct.render(),
            "ovl-ct:net-1_x c1 4097 10.1.0.7/24 02:42:0a:01:00:07"
        );
        let port = Marker::Port {
            id: "3f4e8d2c1b0a".into(),
            addr: Some((m.ip, 24)),
            mac: Some(m.mac),
        };
        assert_eq!(
            port.render(),
            "ovl-ep:3f4e8d2c1b0a 10.1.0.7/24 02:42:0a:01:00:07"
        );
        for x in [host, ct, port] {
            assert_eq!(Marker::parse(&x.render()), Some(x.clone()));
        }
    }

    #[test]
    fn markers_of_earlier_versions_parse() {
        assert_eq!(
            Marker::parse("ovl-ebpf-ct:n c1 5 10.0.0.2/24 02:42:0a:00:00:02"),
            Some(Marker::Container(EndpointMark {
                network: "n".into(),
                id: "c1".into(),
                vni: 5,
                ip: Ipv4Addr::new(10, 0, 0, 2),
                prefix_len: 24,
                mac: MacAddr([2, 0x42, 10, 0, 0, 2]),
            }))
        );
        assert_eq!(
            Marker::parse("ovl-ep:x"),
            Some(Marker::Port {
                id: "x".into(),
                addr: None,
                mac: None
            })
        );
    }

    #[test]
    fn roles_are_never_confused_and_garbage_is_refused() {
        let m = mark();
        let host = Marker::HostEnd(m.clone()).render();
        let ct = Marker::Container(m).render();
        assert!(matches!(Marker::parse(&host), Some(Marker::HostEnd(_))));
        assert!(matches!(Marker::parse(&ct), Some(Marker::Container(_))));
        assert!(Marker::parse(&ct).unwrap().is_container_of("net-1_x", "c1"));
        assert!(!Marker::parse(&ct).unwrap().is_container_of("other", "c1"));
        assert!(
            !Marker::parse(&host)
                .unwrap()
                .is_container_of("net-1_x", "c1")
        );
        for bad in [
            "",
            "something else",
            "ovl-ep:",
            "ovl-ebpf:n c1 x 10.1.0.7/24 02:42:0a:01:00:07",
            "ovl-ebpf:n c1 1 10.1.0.7/24 02:42:0a:01:00:07 extra",
            "ovl-ct:n c1 1 10.1.0.7 02:42:0a:01:00:07",
        ] {
            assert_eq!(Marker::parse(bad), None, "{bad}");
        }
    }
}
