//! Desired datapath state of this host, computed from the cluster view. Pure.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ovl_core::{ClusterView, NetworkRecord};
use ovl_datapath::{Desired, DesiredNetwork, MacAddr, NetworkSpec, RemotePeer};

/// Bytes VXLAN adds to a frame on the underlay (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8):
/// a container's MTU is the underlay's minus this.
pub const VXLAN_OVERHEAD: u32 = 50;

/// What this host needs to know to compute its desired state.
#[derive(Debug, Clone)]
pub struct Me<'a> {
    /// This host's id.
    pub host: &'a str,
    /// Its VTEP.
    pub vtep: Ipv4Addr,
    /// Its underlay MTU.
    pub underlay_mtu: u32,
    /// UDP port of VXLAN.
    pub vxlan_port: u16,
}

/// The datapath spec of a network on this host.
pub fn spec(net: &NetworkRecord, me: &Me<'_>) -> NetworkSpec {
    NetworkSpec {
        name: net.name.clone(),
        vni: net.vni,
        subnet: net.subnet,
        mtu: net
            .mtu
            .unwrap_or(me.underlay_mtu.saturating_sub(VXLAN_OVERHEAD)),
        local_vtep: me.vtep,
        vxlan_port: me.vxlan_port,
    }
}

/// A network endpoint: `(network, endpoint id)`.
pub type EndpointKey = (String, String);

/// What this host knows on its own, which the view never overrules: a KV record that
/// contradicts it is reported and repaired, never obeyed by tearing down a live interface.
#[derive(Debug, Clone, Default)]
pub struct Here {
    /// Endpoints attached here (or being attached), with the network record kept locally.
    pub endpoints: BTreeMap<EndpointKey, NetworkRecord>,
    /// Hosts without a lease whose datapath still answers: their entries are kept.
    pub grace: BTreeSet<String>,
}

/// Desired state: every network with an endpoint on this host, with one peer per endpoint on
/// another host that is alive (or in [`Here::grace`]) and one flood entry per such host.
/// Endpoints of dead or unknown hosts are left out, so their entries are removed. A network
/// record missing from the view is taken from the local copy.
pub fn desired(view: &ClusterView, me: &Me<'_>, here: &Here) -> Desired {
    let mut out = Desired::default();
    let mut nets: BTreeMap<&str, &NetworkRecord> =
        view.networks.iter().map(|(n, r)| (n.as_str(), r)).collect();
    for ((n, _), copy) in &here.endpoints {
        nets.entry(n.as_str()).or_insert(copy);
    }
    for net in nets.values() {
        let local: BTreeSet<String> = here
            .endpoints
            .keys()
            .filter(|(n, _)| *n == net.name)
            .map(|(_, id)| id.clone())
            .collect();
        if local.is_empty() {
            continue;
        }
        let mut peers = Vec::new();
        let mut flood = BTreeSet::new();
        for ep in view.endpoints_on(&net.name) {
            let reachable = view.is_alive(&ep.host) || here.grace.contains(&ep.host);
            if ep.host == me.host || !reachable || local.contains(&ep.id) {
                continue;
            }
            let Some(host) = view.hosts.get(&ep.host) else {
                continue;
            };
            if host.vtep == me.vtep {
                // A misconfigured host claiming our VTEP: never loop traffic to ourselves.
                continue;
            }
            peers.push(RemotePeer {
                mac: MacAddr(ep.mac.0),
                ip: ep.ip,
                vtep: host.vtep,
            });
            flood.insert(host.vtep);
        }
        peers.sort_by_key(|p| (p.ip, p.mac.0));
        out.networks.insert(
            net.name.clone(),
            DesiredNetwork {
                spec: spec(net, me),
                peers,
                flood,
                local_endpoints: local,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_core::{AliveRecord, EndpointRecord, HostRecord, ipam::mac_for};

    fn host(id: &str, vtep: [u8; 4]) -> HostRecord {
        HostRecord {
            id: id.into(),
            vtep: vtep.into(),
            underlay_mtu: 1500,
            datapath: "kernel".into(),
            version: "t".into(),
            gw_subnet: None,
        }
    }

    fn ep(net: &str, id: &str, host: &str, ip: [u8; 4]) -> EndpointRecord {
        let ip = Ipv4Addr::from(ip);
        EndpointRecord {
            id: id.into(),
            network: net.into(),
            host: host.into(),
            name: id.into(),
            aliases: vec![],
            ip,
            mac: mac_for(ip),
            publish: vec![],
        }
    }

    fn view() -> ClusterView {
        let mut v = ClusterView::default();
        for (id, vtep) in [
            ("h1", [198, 18, 0, 11]),
            ("h2", [198, 18, 0, 12]),
            ("h3", [198, 18, 0, 13]),
        ] {
            v.hosts.insert(id.into(), host(id, vtep));
            v.alive.insert(
                id.into(),
                AliveRecord {
                    id: id.into(),
                    boot_id: "b".into(),
                    since: 0,
                },
            );
        }
        for (name, vni, subnet) in [
            ("net1", 4096, "10.10.0.0/24"),
            ("net2", 4097, "10.10.1.0/24"),
        ] {
            v.networks.insert(
                name.into(),
                NetworkRecord {
                    name: name.into(),
                    vni,
                    subnet: subnet.parse().unwrap(),
                    gateway: "10.10.0.1".parse().unwrap(),
                    internal: false,
                    mtu: None,
                    labels: Default::default(),
                    options: Default::default(),
                },
            );
        }
        for e in [
            ep("net1", "a", "h1", [10, 10, 0, 2]),
            ep("net1", "b", "h2", [10, 10, 0, 3]),
            ep("net1", "c", "h3", [10, 10, 0, 4]),
            ep("net1", "d", "h3", [10, 10, 0, 5]),
            ep("net2", "x", "h2", [10, 10, 1, 2]),
        ] {
            v.endpoints.insert((e.network.clone(), e.id.clone()), e);
        }
        v
    }

    const ME: Me<'static> = Me {
        host: "h1",
        vtep: Ipv4Addr::new(198, 18, 0, 11),
        underlay_mtu: 1400,
        vxlan_port: ovl_datapath::VXLAN_PORT,
    };

    /// What h1 has: endpoint `a` of net1, as the view records it.
    fn here() -> Here {
        let net1 = view().networks["net1"].clone();
        Here {
            endpoints: [(("net1".to_string(), "a".to_string()), net1)].into(),
            grace: BTreeSet::new(),
        }
    }

    #[test]
    fn peers_and_flood_from_other_hosts() {
        let d = desired(&view(), &ME, &here());
        assert_eq!(
            d.networks.len(),
            1,
            "net2 has no local endpoint: nothing for it"
        );
        let n = &d.networks["net1"];
        assert_eq!(n.spec.mtu, 1350, "underlay MTU - 50");
        assert_eq!(n.spec.vni, 4096);
        assert_eq!(n.peers.len(), 3);
        assert_eq!(
            n.flood,
            [Ipv4Addr::new(198, 18, 0, 12), Ipv4Addr::new(198, 18, 0, 13)]
                .into_iter()
                .collect()
        );
        assert_eq!(n.local_endpoints, ["a".to_string()].into_iter().collect());
    }

    #[test]
    fn dead_hosts_are_dropped() {
        let mut v = view();
        v.alive.remove("h3");
        let d = desired(&v, &ME, &here());
        let n = &d.networks["net1"];
        assert_eq!(n.peers.len(), 1);
        assert_eq!(n.flood.len(), 1);
    }

    #[test]
    fn hosts_in_grace_keep_their_entries() {
        let mut v = view();
        v.alive.remove("h3");
        let mut h = here();
        h.grace.insert("h3".into());
        let n = &desired(&v, &ME, &h).networks["net1"];
        assert_eq!(n.peers.len(), 3);
        assert_eq!(n.flood.len(), 2);
    }

    #[test]
    fn local_knowledge_wins_over_the_view() {
        // The record of `a` rewritten to name h2: h1 keeps its port and programs no peer
        // entry for its own endpoint.
        let mut v = view();
        v.endpoints
            .get_mut(&("net1".to_string(), "a".to_string()))
            .unwrap()
            .host = "h2".into();
        let n = &desired(&v, &ME, &here()).networks["net1"];
        assert!(n.local_endpoints.contains("a"));
        assert!(n.peers.iter().all(|p| p.ip != Ipv4Addr::new(10, 10, 0, 2)));
        // A record of h1 it does not know locally is not plumbed here.
        let mut v = view();
        let mut ghost = v.endpoints[&("net1".to_string(), "a".to_string())].clone();
        ghost.id = "ghost".into();
        v.endpoints.insert(("net1".into(), "ghost".into()), ghost);
        let n = &desired(&v, &ME, &here()).networks["net1"];
        assert!(!n.local_endpoints.contains("ghost"));
        // The network record gone from the view: the local copy keeps it.
        let mut v = view();
        let copy = v.networks.remove("net1").unwrap();
        let h = Here {
            endpoints: [(("net1".to_string(), "a".to_string()), copy)].into(),
            grace: BTreeSet::new(),
        };
        let d = desired(&v, &ME, &h);
        assert_eq!(d.networks["net1"].spec.vni, 4096);
        assert_eq!(d.networks["net1"].peers.len(), 3);
    }

    #[test]
    fn pending_attach_counts_as_local() {
        let mut h = here();
        let net2 = view().networks["net2"].clone();
        h.endpoints
            .insert(("net2".to_string(), "new".to_string()), net2);
        let d = desired(&view(), &ME, &h);
        assert!(d.networks["net2"].local_endpoints.contains("new"));
        assert_eq!(d.networks["net2"].peers.len(), 1);
    }

    #[test]
    fn mtu_override_and_own_vtep_guard() {
        let mut v = view();
        v.networks.get_mut("net1").unwrap().mtu = Some(1300);
        v.hosts.get_mut("h2").unwrap().vtep = ME.vtep;
        let d = desired(&v, &ME, &here());
        let n = &d.networks["net1"];
        assert_eq!(n.spec.mtu, 1300);
        assert!(n.peers.iter().all(|p| p.vtep != ME.vtep));
    }
}
