//! Input checks of `network create` and `attach` that need what the agent knows (its
//! settings, the underlay, the cluster view); pure, so every refusal is unit-tested. A
//! refused input changes nothing: the checks run before anything is claimed.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use ovl_core::{ClusterView, ipam};
use ovl_model::{PortMap, Proto};

use crate::{config::Settings, error::AgentError};

/// Most aliases one endpoint may have: every alias is a line in every peer's hosts file and a
/// name in every zone.
pub const MAX_ALIASES: usize = 16;

/// Ranges no overlay subnet may touch: packets to them never leave a host as overlay traffic.
const RESERVED: &[(&str, [u8; 4], u8)] = &[
    ("\"this network\" range", [0, 0, 0, 0], 8),
    ("loopback range", [127, 0, 0, 0], 8),
    ("link-local range", [169, 254, 0, 0], 16),
    ("multicast range", [224, 0, 0, 0], 4),
    ("reserved range", [240, 0, 0, 0], 4),
];

/// Refuses a subnet that overlaps a reserved range, this host's underlay network, or holds
/// a registered host's VTEP address.
pub fn subnet(
    s: Ipv4Network,
    underlay: Option<Ipv4Network>,
    view: &ClusterView,
) -> Result<(), AgentError> {
    for (what, ip, prefix) in RESERVED {
        let r = Ipv4Network::new(Ipv4Addr::from(*ip), *prefix).expect("a valid range");
        if ipam::overlaps(r, s) {
            return Err(AgentError::Invalid(format!(
                "subnet {s} overlaps the {what} {r}"
            )));
        }
    }
    if let Some(u) = underlay
        && ipam::overlaps(u, s)
    {
        return Err(AgentError::Conflict(format!(
            "subnet {s} overlaps the underlay network {u} of this host"
        )));
    }
    if let Some(h) = view.hosts.values().find(|h| s.contains(h.vtep)) {
        return Err(AgentError::Conflict(format!(
            "subnet {s} holds the VTEP address {} of host {}",
            h.vtep, h.id
        )));
    }
    Ok(())
}

/// Refuses the health network's name and VNI (see [`crate::health`]): every host derives
/// that network itself, and a user network with either would collide with it.
pub fn reserved(name: &str, vni: Option<u32>) -> Result<(), AgentError> {
    if name == crate::health::NETWORK {
        return Err(AgentError::Invalid(format!(
            "network name {name} is reserved for the health matrix"
        )));
    }
    if vni == Some(crate::health::VNI) {
        return Err(AgentError::Invalid(format!(
            "VNI {} is reserved for the health matrix",
            crate::health::VNI
        )));
    }
    Ok(())
}

/// Refuses a container name `overlayctl probe` keeps for its endpoints (an agent removes
/// its own such endpoints at start, as left by an interrupted probe).
pub fn not_a_probe_name(name: &str) -> Result<(), AgentError> {
    if name.starts_with(ovl_core::probe::PROBE_PREFIX) {
        return Err(AgentError::Invalid(format!(
            "container name {name}: names starting with {} are reserved for overlayctl probe",
            ovl_core::probe::PROBE_PREFIX
        )));
    }
    Ok(())
}

/// Refuses more than [`MAX_ALIASES`] aliases.
pub fn aliases(aliases: &[String]) -> Result<(), AgentError> {
    if aliases.len() > MAX_ALIASES {
        return Err(AgentError::Invalid(format!(
            "{} aliases given; an endpoint has at most {MAX_ALIASES}",
            aliases.len()
        )));
    }
    Ok(())
}

/// Refuses published ports that would capture the agent's own traffic: the VXLAN port
/// (every new overlay flow to this host would be DNATed into the container), DNS when the
/// agent serves it on the host, the metrics port, and port 0.
pub fn published(ports: &[PortMap], settings: &Settings) -> Result<(), AgentError> {
    for p in ports {
        let why = if p.host_port == 0 || p.port == 0 {
            Some("port 0 cannot be published".to_string())
        } else if p.proto == Proto::Udp && p.host_port == settings.vxlan_port {
            Some(format!("host port {} is the VXLAN port", p.host_port))
        } else if p.host_port == 53 && settings.dns_addr.is_some() {
            Some("host port 53 is the agent's DNS for containers".to_string())
        } else if p.proto == Proto::Tcp
            && settings
                .metrics_addr
                .is_some_and(|m| m.port() == p.host_port)
        {
            Some(format!(
                "host port {} is the agent's metrics port",
                p.host_port
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(AgentError::Invalid(format!("cannot publish {p}: {why}")));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in ports {
        if !seen.insert((p.host_port, p.proto)) {
            return Err(AgentError::Invalid(format!(
                "host port {}/{} is published twice",
                p.host_port, p.proto
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_core::HostRecord;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn view_with_vtep(vtep: [u8; 4]) -> ClusterView {
        let mut v = ClusterView::default();
        let h: HostRecord = serde_json::from_value(serde_json::json!({
            "id": "h2", "vtep": Ipv4Addr::from(vtep).to_string(), "underlay_mtu": 1500,
            "datapath": "kernel", "version": "x"
        }))
        .unwrap();
        v.hosts.insert("h2".into(), h);
        v
    }

    #[test]
    fn subnets_outside_reserved_ranges_and_the_underlay_pass() {
        let v = view_with_vtep([198, 18, 0, 3]);
        let u = Some(net("198.18.0.0/24"));
        assert!(subnet(net("10.10.0.0/24"), u, &v).is_ok());
        assert!(subnet(net("198.19.5.0/24"), u, &v).is_ok());
    }

    #[test]
    fn reserved_ranges_are_refused() {
        let v = ClusterView::default();
        for (s, what) in [
            ("127.1.0.0/24", "loopback"),
            ("169.254.0.0/24", "link-local"),
            ("224.1.0.0/24", "multicast"),
            ("0.0.0.0/24", "this network"),
            ("240.0.0.0/24", "reserved"),
            ("0.0.0.0/0", "this network"),
        ] {
            let e = subnet(net(s), None, &v).unwrap_err();
            assert!(matches!(e, AgentError::Invalid(_)), "{s}: {e}");
            assert!(e.to_string().contains(what), "{s}: {e}");
        }
    }

    #[test]
    fn the_underlay_and_vteps_are_refused() {
        let v = view_with_vtep([192, 0, 2, 7]);
        let e = subnet(net("198.18.0.0/16"), Some(net("198.18.0.0/24")), &v).unwrap_err();
        assert!(
            e.to_string().contains("underlay network 198.18.0.0/24"),
            "{e}"
        );
        let e = subnet(net("192.0.2.0/24"), None, &v).unwrap_err();
        assert!(
            e.to_string().contains("VTEP address 192.0.2.7 of host h2"),
            "{e}"
        );
    }

    #[test]
    fn probe_names_are_reserved() {
        assert!(not_a_probe_name("web").is_ok());
        assert!(not_a_probe_name("ovl-probe").is_ok());
        let e = not_a_probe_name("ovl-probe-12").unwrap_err().to_string();
        assert!(e.contains("reserved for overlayctl probe"), "{e}");
    }

    #[test]
    fn the_health_networks_name_and_vni_are_reserved() {
        assert!(reserved("net1", Some(4096)).is_ok());
        assert!(reserved("ovl-healthy", None).is_ok());
        let e = reserved("ovl-health", None).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        let e = reserved("net1", Some(16_777_215)).unwrap_err();
        assert!(e.to_string().contains("VNI 16777215 is reserved"), "{e}");
    }

    #[test]
    fn aliases_are_bounded() {
        let ok: Vec<String> = (0..MAX_ALIASES).map(|i| format!("a{i}")).collect();
        assert!(aliases(&ok).is_ok());
        let many: Vec<String> = (0..2000).map(|i| format!("a{i}")).collect();
        let e = aliases(&many).unwrap_err();
        assert!(e.to_string().contains("2000 aliases"), "{e}");
    }

    #[test]
    fn ports_of_the_agent_are_refused() {
        let mut s = Settings::resolve(crate::config::Cli {
            host_id: Some("h1".into()),
            advertise_addr: Some("198.18.0.2".into()),
            ..Default::default()
        })
        .unwrap();
        s.dns_addr = Some(Ipv4Addr::new(169, 254, 53, 53));
        s.metrics_addr = Some("127.0.0.1:9464".parse().unwrap());
        let p = |t: &str| vec![t.parse::<PortMap>().unwrap()];
        assert!(published(&p("8080:80/tcp"), &s).is_ok());
        assert!(published(&p("4789:4789/tcp"), &s).is_ok());
        for (bad, why) in [
            ("4789:4789/udp", "VXLAN port"),
            ("53:53/udp", "DNS"),
            ("53:5353/tcp", "DNS"),
            ("9464:80/tcp", "metrics"),
        ] {
            let e = published(&p(bad), &s).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let twice = vec![
            "8080:80/tcp".parse().unwrap(),
            "8080:81/tcp".parse().unwrap(),
        ];
        assert!(
            published(&twice, &s)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
