//! Desired state: what one host should program, computed by the agent from the cluster view
//! and its own attachments, handed to either datapath's planner.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::spec::{EndpointSpec, NetworkSpec, RemotePeer};

/// What one network should look like on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredNetwork {
    /// Network parameters.
    pub spec: NetworkSpec,
    /// Containers of this network on other hosts.
    pub peers: Vec<RemotePeer>,
    /// Remote VTEPs with endpoints on this network (BUM head-end replication list).
    pub flood: BTreeSet<Ipv4Addr>,
    /// Endpoints that should exist on this host, by id. With a spec, the datapath maintains
    /// both ends of the endpoint (and restores them); without one (an attach in progress, or
    /// a container whose namespace this host does not know) it only keeps what exists.
    pub local_endpoints: BTreeMap<String, Option<EndpointSpec>>,
}

/// Everything that should be programmed: only networks with local endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Keyed by network name.
    pub networks: BTreeMap<String, DesiredNetwork>,
}

impl Desired {
    /// The same state without the spec of the local endpoints `skip(network, id)` picks: a
    /// pass over it keeps both ends of those as they are and enters none of their namespaces.
    /// Passes that follow a change (a watch event, an attach) skip the container ends found
    /// fine before, so their cost does not grow with the number of containers here; the
    /// periodic pass checks and restores every container end.
    pub fn without_container_checks(mut self, skip: impl Fn(&str, &str) -> bool) -> Desired {
        for (name, net) in self.networks.iter_mut() {
            for (id, spec) in net.local_endpoints.iter_mut() {
                if skip(name, id) {
                    *spec = None;
                }
            }
        }
        self
    }
}

/// The remote peers to program, after dropping the ones on this host and resolving
/// duplicates deterministically: for each IP and for each MAC the smallest peer (by
/// `(ip, mac, vtep)`) wins, whatever order the caller listed them in.
pub fn effective_peers(spec: &NetworkSpec, peers: &[RemotePeer]) -> Vec<RemotePeer> {
    let mut sorted: Vec<RemotePeer> = peers
        .iter()
        .filter(|p| p.vtep != spec.local_vtep && !p.vtep.is_unspecified())
        .filter(|p| p.mac.is_host())
        .copied()
        .collect();
    sorted.sort_by_key(|p| (p.ip, p.mac, p.vtep));
    sorted.dedup();
    let mut seen_ip = BTreeSet::new();
    let mut seen_mac = BTreeSet::new();
    sorted
        .into_iter()
        .filter(|p| {
            let fresh = !seen_ip.contains(&p.ip) && !seen_mac.contains(&p.mac);
            if fresh {
                seen_ip.insert(p.ip);
                seen_mac.insert(p.mac);
            }
            fresh
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn container_checks_are_skipped_only_where_asked() {
        use crate::spec::EndpointSpec;
        let spec = |id: &str| EndpointSpec {
            endpoint_id: id.into(),
            netns: "/run/netns/x".into(),
            mac: MacAddr([2, 0x42, 10, 10, 0, 2]),
            ip: Ipv4Addr::new(10, 10, 0, 2),
            prefix_len: 24,
            mtu: 1450,
            ifname: None,
            plug: Default::default(),
        };
        let mut d = Desired::default();
        let mut net = DesiredNetwork {
            spec: NetworkSpec {
                name: "net1".into(),
                vni: 1,
                subnet: "10.10.0.0/24".parse().unwrap(),
                mtu: 1450,
                local_vtep: Ipv4Addr::new(198, 18, 0, 11),
                vxlan_port: VXLAN_PORT,
            },
            peers: vec![],
            flood: BTreeSet::new(),
            local_endpoints: BTreeMap::new(),
        };
        net.local_endpoints.insert("a".into(), Some(spec("a")));
        net.local_endpoints.insert("b".into(), Some(spec("b")));
        d.networks.insert("net1".into(), net);
        let d = d.without_container_checks(|n, id| n == "net1" && id == "a");
        let eps = &d.networks["net1"].local_endpoints;
        assert!(eps["a"].is_none(), "skipped");
        assert!(eps["b"].is_some(), "still checked");
    }

    use super::*;
    use crate::{MacAddr, VXLAN_PORT};

    #[test]
    fn duplicates_resolve_the_same_whatever_the_order() {
        let spec = NetworkSpec {
            name: "n".into(),
            vni: 1,
            subnet: "10.1.0.0/24".parse().unwrap(),
            mtu: 1450,
            local_vtep: Ipv4Addr::new(198, 18, 0, 11),
            vxlan_port: VXLAN_PORT,
        };
        let p = |ip: u8, mac: u8, vtep: u8| RemotePeer {
            mac: MacAddr([2, 0x42, 0, 0, 0, mac]),
            ip: Ipv4Addr::new(10, 1, 0, ip),
            vtep: Ipv4Addr::new(198, 18, 0, vtep),
        };
        let mut peers = vec![
            p(2, 2, 12),
            p(2, 3, 13),
            p(4, 2, 14),
            p(5, 5, 11),
            p(6, 6, 12),
        ];
        let a = effective_peers(&spec, &peers);
        peers.reverse();
        assert_eq!(effective_peers(&spec, &peers), a);
        assert_eq!(
            a,
            vec![p(2, 2, 12), p(6, 6, 12)],
            "ours (vtep .11) and duplicates gone"
        );
    }
}
