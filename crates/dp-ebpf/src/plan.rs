//! The eBPF datapath's planner: compares what the maps hold, the host ends found by their
//! markers and the container ends found in the containers' namespaces with the [`Desired`]
//! state, in pure code, and lists the [`EbpfOp`]s that converge them. No I/O here;
//! [`crate::EbpfBackend`] observes and applies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ovl_model::{
    ContainerFix, ContainerSeen, Desired, DesiredNetwork, EndpointMark, EndpointSpec,
    EndpointStatus, MacAddr, NetworkSpec, container_fix, container_marker, effective_peers,
};

use crate::backend::VXLAN_DEVICE;
use crate::maps::{EbpfState, EndpointInfo};

/// A host end of an endpoint veth found in the host namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// What its marker records.
    pub alias: EndpointMark,
}

/// The endpoint a host end's marker records, as the maps hold it.
pub fn info_of(m: &EndpointMark) -> EndpointInfo {
    EndpointInfo {
        vni: m.vni,
        mac: m.mac,
        ip: m.ip,
    }
}

/// Everything observed: the maps, the host ends and the vxlan device.
#[derive(Clone, Debug, Default)]
pub struct ObservedEbpf {
    /// Map contents.
    pub state: EbpfState,
    /// Host ends of endpoints (by alias).
    pub ports: Vec<HostPort>,
    /// The vxlan device, if present: (ifindex, up, mtu).
    pub vxlan: Option<(u32, bool, u32)>,
    /// The container ends of the desired local endpoints with a spec, by (network, id).
    pub containers: BTreeMap<(String, String), ContainerSeen>,
}

impl ObservedEbpf {
    /// Whether a remote entry claims `(vni, mac)`.
    pub fn remotes_has(&self, vni: u32, mac: MacAddr) -> bool {
        self.state.remotes.contains_key(&(vni, mac))
    }
}

/// Why the fast path must be reloaded (which recreates or repairs the vxlan device and
/// re-points every pinned link), or `None`. The programs encapsulate to the ifindex in
/// `CONFIG`: a deleted or replaced device silently blackholes everything.
pub fn vxlan_drift(have: &ObservedEbpf, mtu: u32) -> Option<String> {
    match have.vxlan {
        None => Some(format!("{VXLAN_DEVICE} missing")),
        Some((index, _, _)) if index != have.state.vxlan_ifindex => Some(format!(
            "{VXLAN_DEVICE} is ifindex {index}, the programs use {}",
            have.state.vxlan_ifindex
        )),
        Some((_, false, _)) => Some(format!("{VXLAN_DEVICE} down")),
        Some((_, _, m)) if m != mtu => Some(format!("{VXLAN_DEVICE} mtu {m} != {mtu}")),
        Some(_) => None,
    }
}

/// One step towards the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EbpfOp {
    /// Remove an endpoint no longer desired here: its program, map entries and veth pair.
    RemoveEndpoint {
        /// Network (from the alias).
        network: String,
        /// Endpoint id.
        id: String,
        /// Host end.
        ifindex: u32,
        /// Host end name.
        ifname: String,
    },
    /// Map entries of an interface that no longer exists (its container went away).
    ForgetEndpoint {
        /// Network, if known from the VNI.
        network: String,
        /// The vanished ifindex.
        ifindex: u32,
    },
    /// A desired endpoint whose host end exists but whose map entries are missing or stale.
    ProgramEndpoint {
        /// Network.
        network: String,
        /// Endpoint id.
        id: String,
        /// Host end.
        ifindex: u32,
        /// What to program.
        info: EndpointInfo,
    },
    /// Remove a remote endpoint.
    DelRemote {
        /// Network (or `vni:<N>` for a VNI no network claims).
        network: String,
        /// VNI.
        vni: u32,
        /// MAC.
        mac: MacAddr,
    },
    /// Program (or re-point) a remote endpoint.
    SetRemote {
        /// Network.
        network: String,
        /// VNI.
        vni: u32,
        /// MAC.
        mac: MacAddr,
        /// Its address.
        ip: Ipv4Addr,
        /// Its host's VTEP.
        vtep: Ipv4Addr,
    },
    /// Create an endpoint's veth pair (container end into its namespace) and program it:
    /// both ends are gone.
    PlugEndpoint {
        /// The network.
        net: NetworkSpec,
        /// The endpoint.
        ep: EndpointSpec,
        /// Why, for display.
        reason: String,
    },
    /// Remove an endpoint's host end (and whatever its peer became) and plug it again.
    ReplugEndpoint {
        /// The network.
        net: NetworkSpec,
        /// The endpoint.
        ep: EndpointSpec,
        /// The host end's index.
        ifindex: u32,
        /// Why, for display.
        reason: String,
    },
    /// Converge an endpoint's container end `ifname` (address, MAC, MTU, up, marker).
    ConfigureEndpoint {
        /// The network.
        net: NetworkSpec,
        /// The endpoint.
        ep: EndpointSpec,
        /// The container end's name.
        ifname: String,
        /// What differs, for display.
        problems: Vec<String>,
    },
    /// Set the BUM replication list of a VNI (empty: remove it).
    SetFlood {
        /// Network.
        network: String,
        /// VNI.
        vni: u32,
        /// VTEPs.
        vteps: Vec<Ipv4Addr>,
    },
}

impl EbpfOp {
    /// The network the op belongs to.
    pub fn network(&self) -> &str {
        match self {
            EbpfOp::RemoveEndpoint { network, .. }
            | EbpfOp::ForgetEndpoint { network, .. }
            | EbpfOp::ProgramEndpoint { network, .. }
            | EbpfOp::DelRemote { network, .. }
            | EbpfOp::SetRemote { network, .. }
            | EbpfOp::SetFlood { network, .. } => network,
            EbpfOp::PlugEndpoint { net, .. }
            | EbpfOp::ReplugEndpoint { net, .. }
            | EbpfOp::ConfigureEndpoint { net, .. } => &net.name,
        }
    }
}

impl fmt::Display for EbpfOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EbpfOp::RemoveEndpoint {
                network,
                id,
                ifname,
                ..
            } => {
                write!(f, "{network}: remove endpoint {id} ({ifname})")
            }
            EbpfOp::ForgetEndpoint { network, ifindex } => {
                write!(
                    f,
                    "{network}: forget endpoint on vanished interface {ifindex}"
                )
            }
            EbpfOp::ProgramEndpoint {
                network,
                id,
                ifindex,
                info,
            } => write!(
                f,
                "{network}: program endpoint {id} (ifindex {ifindex}, {} {})",
                info.mac, info.ip
            ),
            EbpfOp::PlugEndpoint { net, ep, reason } => write!(
                f,
                "{}: plug endpoint {} into {} ({reason})",
                net.name,
                ep.endpoint_id,
                ep.netns.display()
            ),
            EbpfOp::ReplugEndpoint {
                net, ep, reason, ..
            } => {
                write!(
                    f,
                    "{}: replug endpoint {} ({reason})",
                    net.name, ep.endpoint_id
                )
            }
            EbpfOp::ConfigureEndpoint {
                net, ep, problems, ..
            } => write!(
                f,
                "{}: configure endpoint {} ({})",
                net.name,
                ep.endpoint_id,
                problems.join(", ")
            ),
            EbpfOp::DelRemote { network, mac, .. } => write!(f, "{network}: del remote {mac}"),
            EbpfOp::SetRemote {
                network,
                mac,
                ip,
                vtep,
                ..
            } => {
                write!(f, "{network}: set remote {mac} {ip} via {vtep}")
            }
            EbpfOp::SetFlood { network, vteps, .. } if vteps.is_empty() => {
                write!(f, "{network}: clear flood")
            }
            EbpfOp::SetFlood { network, vteps, .. } => write!(
                f,
                "{network}: set flood {}",
                vteps
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// What to do about one desired local endpoint, and its status.
fn endpoint_fix(
    net: &NetworkSpec,
    id: &str,
    spec: Option<&EndpointSpec>,
    port: Option<&HostPort>,
    have: &ObservedEbpf,
) -> (ContainerFix, EndpointStatus) {
    let seen = have
        .containers
        .get(&(net.name.clone(), id.to_string()))
        .cloned()
        .unwrap_or(ContainerSeen::Unchecked);
    let marker = spec.map(|s| container_marker(net, s)).unwrap_or_default();
    let (fix, status) = container_fix(spec, port.is_some(), &seen, &marker);
    // A host end that records another address or MAC (a re-attach that changed them) is
    // re-marked with the container end.
    if let (ContainerFix::None, Some(spec), Some(port), ContainerSeen::Present(link)) =
        (&fix, spec, port, &seen)
        && status.is_ok()
        && (port.alias.ip != spec.ip || port.alias.mac != spec.mac)
    {
        let problems = vec![format!("host end {} marker outdated", port.name)];
        return (
            ContainerFix::Configure {
                ifname: link.name.clone(),
                problems: problems.clone(),
            },
            EndpointStatus::Drifted { problems },
        );
    }
    (fix, status)
}

/// The status of every desired local endpoint: `(network, id) -> status`. Pure.
pub fn statuses(want: &Desired, have: &ObservedEbpf) -> BTreeMap<(String, String), EndpointStatus> {
    let mut out = BTreeMap::new();
    for (name, n) in &want.networks {
        for (id, ep) in &n.local_endpoints {
            let port = have.ports.iter().find(|p| {
                &p.alias.network == name && &p.alias.id == id && p.alias.vni == n.spec.vni
            });
            let (_, st) = endpoint_fix(&n.spec, id, ep.as_ref(), port, have);
            out.insert((name.clone(), id.clone()), st);
        }
    }
    out
}

/// Computes the ops that take `have` to `want` for a host whose VTEP is `local_vtep`. Pure
/// and deterministic. Order: endpoint removals, reprogramming and container ends, stale
/// entry removals, flood lists, then remotes (so ARP is only answered for reachable MACs).
pub fn plan(want: &Desired, have: &ObservedEbpf, local_vtep: Ipv4Addr) -> Vec<EbpfOp> {
    let mut removals = Vec::new();
    let mut dels = Vec::new();
    let mut adds = Vec::new();
    // VNI -> network name: desired networks first, then what host ends record.
    let mut vni_name: BTreeMap<u32, String> = BTreeMap::new();
    for p in &have.ports {
        vni_name
            .entry(p.alias.vni)
            .or_insert_with(|| p.alias.network.clone());
    }
    for (name, n) in &want.networks {
        vni_name.insert(n.spec.vni, name.clone());
    }
    let name_of = |vni: u32| {
        vni_name
            .get(&vni)
            .cloned()
            .unwrap_or_else(|| format!("vni:{vni}"))
    };
    let desired_by_vni: BTreeMap<u32, &DesiredNetwork> =
        want.networks.values().map(|n| (n.spec.vni, n)).collect();

    // Local endpoints.
    let port_indexes: BTreeSet<u32> = have.ports.iter().map(|p| p.index).collect();
    for p in &have.ports {
        let keep = want.networks.get(&p.alias.network).is_some_and(|n| {
            n.spec.vni == p.alias.vni && n.local_endpoints.contains_key(&p.alias.id)
        });
        if !keep {
            removals.push(EbpfOp::RemoveEndpoint {
                network: p.alias.network.clone(),
                id: p.alias.id.clone(),
                ifindex: p.index,
                ifname: p.name.clone(),
            });
        } else if have.state.endpoints.get(&p.index) != Some(&info_of(&p.alias))
            || !have.state.attached_links.contains(&p.index)
        {
            removals.push(EbpfOp::ProgramEndpoint {
                network: p.alias.network.clone(),
                id: p.alias.id.clone(),
                ifindex: p.index,
                info: info_of(&p.alias),
            });
        }
    }
    let mut orphans: BTreeSet<u32> = have.state.endpoints.keys().copied().collect();
    orphans.extend(&have.state.attached_links);
    for ifindex in orphans {
        if !port_indexes.contains(&ifindex) {
            let network = have
                .state
                .endpoints
                .get(&ifindex)
                .map(|e| name_of(e.vni))
                .unwrap_or_else(|| "?".into());
            removals.push(EbpfOp::ForgetEndpoint { network, ifindex });
        }
    }
    // Container ends (and the pairs they belong to), after the map entries of vanished
    // interfaces are forgotten: a plugged endpoint takes its MAC again.
    for (name, n) in &want.networks {
        for (id, ep) in &n.local_endpoints {
            let Some(ep) = ep else { continue };
            let port = have.ports.iter().find(|p| {
                &p.alias.network == name && &p.alias.id == id && p.alias.vni == n.spec.vni
            });
            match endpoint_fix(&n.spec, id, Some(ep), port, have).0 {
                ContainerFix::None => {}
                ContainerFix::Plug { reason } => removals.push(EbpfOp::PlugEndpoint {
                    net: n.spec.clone(),
                    ep: ep.restored(),
                    reason,
                }),
                ContainerFix::Replug { reason } => removals.push(EbpfOp::ReplugEndpoint {
                    net: n.spec.clone(),
                    ep: ep.restored(),
                    ifindex: port.map(|p| p.index).unwrap_or_default(),
                    reason,
                }),
                ContainerFix::Configure { ifname, problems } => {
                    removals.push(EbpfOp::ConfigureEndpoint {
                        net: n.spec.clone(),
                        ep: ep.clone(),
                        ifname,
                        problems,
                    })
                }
            }
        }
    }

    // Remotes.
    let mut want_remote: BTreeMap<(u32, MacAddr), (Ipv4Addr, Ipv4Addr)> = BTreeMap::new();
    for n in want.networks.values() {
        for p in effective_peers(&n.spec, &n.peers) {
            want_remote.insert((n.spec.vni, p.mac), (p.ip, p.vtep));
        }
    }
    // A changed VTEP or IP is a SetRemote (it replaces the entry), not a delete.
    for (vni, mac) in have.state.remotes.keys() {
        let mac = *mac;
        if !want_remote.contains_key(&(*vni, mac)) {
            dels.push(EbpfOp::DelRemote {
                network: name_of(*vni),
                vni: *vni,
                mac,
            });
        }
    }
    for ((vni, mac), (ip, vtep)) in &want_remote {
        let ok = have
            .state
            .remotes
            .get(&(*vni, *mac))
            .is_some_and(|r| r.ip == *ip && r.vtep == *vtep);
        if !ok {
            adds.push(EbpfOp::SetRemote {
                network: name_of(*vni),
                vni: *vni,
                mac: *mac,
                ip: *ip,
                vtep: *vtep,
            });
        }
    }

    // Flood lists.
    let mut flood_ops = Vec::new();
    for (vni, n) in &desired_by_vni {
        let w: BTreeSet<Ipv4Addr> = n
            .flood
            .iter()
            .filter(|v| **v != local_vtep && !v.is_unspecified())
            .copied()
            .collect();
        let h: BTreeSet<Ipv4Addr> = have
            .state
            .flood
            .get(vni)
            .map(|l| l.iter().copied().collect())
            .unwrap_or_default();
        if w != h {
            flood_ops.push(EbpfOp::SetFlood {
                network: name_of(*vni),
                vni: *vni,
                vteps: w.into_iter().collect(),
            });
        }
    }
    for vni in have.state.flood.keys() {
        if !desired_by_vni.contains_key(vni) {
            flood_ops.push(EbpfOp::SetFlood {
                network: name_of(*vni),
                vni: *vni,
                vteps: Vec::new(),
            });
        }
    }

    let mut ops = removals;
    ops.extend(dels);
    ops.extend(flood_ops);
    ops.extend(adds);
    ops
}

/// Lines describing what is programmed, per network (by VNI: host end aliases and the
/// desired specs name them).
pub fn actual_lines(want: &Desired, have: &ObservedEbpf) -> BTreeMap<String, Vec<String>> {
    let mut vni_name: BTreeMap<u32, String> = BTreeMap::new();
    for p in &have.ports {
        vni_name
            .entry(p.alias.vni)
            .or_insert_with(|| p.alias.network.clone());
    }
    for (name, n) in &want.networks {
        vni_name.insert(n.spec.vni, name.clone());
    }
    let name_of = |vni: u32| {
        vni_name
            .get(&vni)
            .cloned()
            .unwrap_or_else(|| format!("vni:{vni}"))
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut vnis: BTreeSet<u32> = have.state.local_flood.keys().copied().collect();
    vnis.extend(have.state.flood.keys());
    vnis.extend(have.state.remotes.keys().map(|(v, _)| *v));
    vnis.extend(have.ports.iter().map(|p| p.alias.vni));
    for vni in vnis {
        let lines = out.entry(name_of(vni)).or_default();
        lines.push(format!(
            "ebpf vni {vni} vxlan ifindex {}",
            have.state.vxlan_ifindex
        ));
        for p in have.ports.iter().filter(|p| p.alias.vni == vni) {
            let programmed = have.state.endpoints.get(&p.index) == Some(&info_of(&p.alias));
            lines.push(format!(
                "local {} ({}){}",
                p.alias.id,
                p.name,
                if programmed { "" } else { " (not programmed)" }
            ));
        }
        for ((v, mac), r) in &have.state.remotes {
            if *v == vni {
                lines.push(format!("remote {} {} via {}", mac, r.ip, r.vtep));
            }
        }
        for f in have.state.flood.get(&vni).into_iter().flatten() {
            lines.push(format!("flood {f}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::RemoteInfo;
    use ovl_model::ifname::ebpf_port_name;
    use ovl_model::{Plug, RemotePeer, VXLAN_PORT};

    const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
    const H3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);

    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0x42, 10, 1, 0, last])
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, 0, last)
    }

    fn spec(name: &str, vni: u32) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            vni,
            subnet: "10.1.0.0/24".parse().unwrap(),
            mtu: 1450,
            local_vtep: ME,
            vxlan_port: VXLAN_PORT,
        }
    }

    fn port(index: u32, net: &str, vni: u32, id: &str, last: u8) -> HostPort {
        HostPort {
            index,
            name: ebpf_port_name(vni, id),
            alias: EndpointMark {
                network: net.into(),
                id: id.into(),
                vni,
                ip: ip(last),
                prefix_len: 24,
                mac: mac(last),
            },
        }
    }

    fn desired_one(peers: Vec<RemotePeer>, flood: &[Ipv4Addr], local: &[&str]) -> Desired {
        let mut d = Desired::default();
        d.networks.insert(
            "net1".into(),
            DesiredNetwork {
                spec: spec("net1", 256),
                peers,
                flood: flood.iter().copied().collect(),
                local_endpoints: local.iter().map(|s| (s.to_string(), None)).collect(),
            },
        );
        d
    }

    /// The observation after applying `ops` to an empty state (what a correct apply gives).
    fn converged(want: &Desired, ports: Vec<HostPort>) -> ObservedEbpf {
        let mut have = ObservedEbpf {
            state: EbpfState::default(),
            ports,
            vxlan: None,
            containers: BTreeMap::new(),
        };
        for op in plan(want, &have, ME) {
            match op {
                EbpfOp::ProgramEndpoint { ifindex, info, .. } => {
                    have.state.endpoints.insert(ifindex, info);
                    have.state.attached_links.push(ifindex);
                }
                EbpfOp::SetRemote {
                    vni, mac, ip, vtep, ..
                } => {
                    have.state
                        .remotes
                        .insert((vni, mac), RemoteInfo { vtep, ip });
                }
                EbpfOp::SetFlood { vni, vteps, .. } => {
                    have.state.flood.insert(vni, vteps);
                }
                other => panic!("unexpected {other}"),
            }
        }
        have
    }

    #[test]
    fn empty_to_desired_then_nothing() {
        let peers = vec![
            RemotePeer {
                mac: mac(2),
                ip: ip(2),
                vtep: H2,
            },
            RemotePeer {
                mac: mac(3),
                ip: ip(3),
                vtep: H3,
            },
            // Our own endpoint as listed by the KV: never a remote.
            RemotePeer {
                mac: mac(1),
                ip: ip(1),
                vtep: ME,
            },
        ];
        let want = desired_one(peers, &[H2, H3, ME], &["c1"]);
        let ports = vec![port(10, "net1", 256, "c1", 1)];
        let have = ObservedEbpf {
            state: EbpfState::default(),
            ports: ports.clone(),
            vxlan: None,
            containers: BTreeMap::new(),
        };
        let ops = plan(&want, &have, ME);
        let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "net1: program endpoint c1 (ifindex 10, 02:42:0a:01:00:01 10.1.0.1)",
                "net1: set flood 198.18.0.12,198.18.0.13",
                "net1: set remote 02:42:0a:01:00:02 10.1.0.2 via 198.18.0.12",
                "net1: set remote 02:42:0a:01:00:03 10.1.0.3 via 198.18.0.13",
            ]
        );
        let have = converged(&want, ports);
        assert_eq!(plan(&want, &have, ME), vec![], "converged: no ops");
    }

    #[test]
    fn stale_entries_are_removed() {
        let want = desired_one(
            vec![RemotePeer {
                mac: mac(2),
                ip: ip(9),
                vtep: H3,
            }],
            &[H3],
            &["c1"],
        );
        let mut have = converged(
            &desired_one(
                vec![
                    RemotePeer {
                        mac: mac(2),
                        ip: ip(2),
                        vtep: H2,
                    },
                    RemotePeer {
                        mac: mac(4),
                        ip: ip(4),
                        vtep: H2,
                    },
                ],
                &[H2],
                &["c1", "gone"],
            ),
            vec![
                port(10, "net1", 256, "c1", 1),
                port(11, "net1", 256, "gone", 5),
            ],
        );
        // Map entries of an interface that vanished, and a VNI nobody wants anymore.
        have.state.endpoints.insert(
            99,
            EndpointInfo {
                vni: 256,
                mac: mac(8),
                ip: ip(8),
            },
        );
        have.state.flood.insert(777, vec![H2]);
        have.state.remotes.insert(
            (777, mac(7)),
            RemoteInfo {
                vtep: H2,
                ip: ip(7),
            },
        );
        let text: Vec<String> = plan(&want, &have, ME)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            vec![
                format!(
                    "net1: remove endpoint gone ({})",
                    ebpf_port_name(256, "gone")
                ),
                "net1: forget endpoint on vanished interface 99".to_string(),
                "net1: del remote 02:42:0a:01:00:04".into(),
                "vni:777: del remote 02:42:0a:01:00:07".into(),
                "net1: set flood 198.18.0.13".into(),
                "vni:777: clear flood".into(),
                "net1: set remote 02:42:0a:01:00:02 10.1.0.9 via 198.18.0.13".into(),
            ]
        );
    }

    #[test]
    fn endpoints_of_undesired_networks_go_and_drift_is_reprogrammed() {
        let want = desired_one(vec![], &[], &["c1"]);
        let mut have = converged(&want, vec![port(10, "net1", 256, "c1", 1)]);
        have.ports.push(port(12, "other", 300, "c1", 3));
        // The map says a different IP for ifindex 10 (e.g. crash mid re-attach).
        have.state.endpoints.insert(
            10,
            EndpointInfo {
                vni: 256,
                mac: mac(1),
                ip: ip(77),
            },
        );
        let text: Vec<String> = plan(&want, &have, ME)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            vec![
                "net1: program endpoint c1 (ifindex 10, 02:42:0a:01:00:01 10.1.0.1)".to_string(),
                format!("other: remove endpoint c1 ({})", ebpf_port_name(300, "c1")),
            ]
        );
    }

    #[test]
    fn vxlan_drift_is_detected() {
        let mut have = ObservedEbpf::default();
        have.state.vxlan_ifindex = 7;
        assert_eq!(vxlan_drift(&have, 1450).unwrap(), "ovl_vx0 missing");
        have.vxlan = Some((8, true, 1450));
        assert!(vxlan_drift(&have, 1450).unwrap().contains("ifindex 8"));
        have.vxlan = Some((7, false, 1450));
        assert_eq!(vxlan_drift(&have, 1450).unwrap(), "ovl_vx0 down");
        have.vxlan = Some((7, true, 1400));
        assert!(vxlan_drift(&have, 1450).unwrap().contains("mtu 1400"));
        have.vxlan = Some((7, true, 1450));
        assert_eq!(vxlan_drift(&have, 1450), None);
    }

    fn ep_spec(id: &str, last: u8) -> EndpointSpec {
        EndpointSpec {
            endpoint_id: id.into(),
            netns: format!("/run/netns/{id}").into(),
            mac: mac(last),
            ip: ip(last),
            prefix_len: 24,
            mtu: 1450,
            ifname: Some("eth0".into()),
            plug: Plug::Netns,
        }
    }

    fn with_spec(mut d: Desired, id: &str, last: u8) -> Desired {
        d.networks
            .get_mut("net1")
            .unwrap()
            .local_endpoints
            .insert(id.into(), Some(ep_spec(id, last)));
        d
    }

    fn link_of(ep: &EndpointSpec, marker: &str) -> ovl_model::ContainerLink {
        ovl_model::ContainerLink {
            index: 2,
            name: "eth0".into(),
            mac: Some(ep.mac),
            mtu: ep.mtu,
            up: true,
            addrs: vec![(ep.ip, ep.prefix_len)],
            alias: Some(marker.into()),
        }
    }

    #[test]
    fn container_ends_are_restored_replugged_or_configured() {
        let want = with_spec(desired_one(vec![], &[], &[]), "c1", 1);
        let spec = &want.networks["net1"].spec;
        let ep = ep_spec("c1", 1);
        let marker = container_marker(spec, &ep);
        let key = ("net1".to_string(), "c1".to_string());
        // Both ends gone (eth0 deleted by hand): plug the pair again, into the namespace.
        let mut have = ObservedEbpf::default();
        have.containers.insert(key.clone(), ContainerSeen::Missing);
        let ops = plan(&want, &have, ME);
        assert_eq!(
            ops.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["net1: plug endpoint c1 into /run/netns/c1 (veth pair missing)"]
        );
        assert!(matches!(&ops[0], EbpfOp::PlugEndpoint { ep, .. } if ep.plug == Plug::Netns));
        // Both ends deleted while programmed: the vanished interface is forgotten first (its
        // entries hold the MAC), then the pair plugged again.
        let mut gone = converged(&want, vec![port(10, "net1", 256, "c1", 1)]);
        gone.ports.clear();
        gone.containers.insert(key.clone(), ContainerSeen::Missing);
        let ops = plan(&want, &gone, ME);
        assert!(
            matches!(
                &ops[..],
                [
                    EbpfOp::ForgetEndpoint { ifindex: 10, .. },
                    EbpfOp::PlugEndpoint { .. }
                ]
            ),
            "{ops:?}"
        );
        // The host end is there but its peer is not our container end: replug.
        let mut have = converged(&want, vec![port(10, "net1", 256, "c1", 1)]);
        have.containers.insert(key.clone(), ContainerSeen::Missing);
        let ops = plan(&want, &have, ME);
        assert!(
            matches!(&ops[..], [EbpfOp::ReplugEndpoint { ifindex: 10, .. }]),
            "{ops:?}"
        );
        // Present but down with a wrong MTU: configured; nothing else changes.
        let mut l = link_of(&ep, &marker);
        l.up = false;
        l.mtu = 1400;
        have.containers
            .insert(key.clone(), ContainerSeen::Present(l));
        let ops = plan(&want, &have, ME);
        assert_eq!(
            ops.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["net1: configure endpoint c1 (eth0 down, eth0 mtu 1400 (want 1450))"]
        );
        // As specified: nothing to do, and the status says so.
        have.containers
            .insert(key.clone(), ContainerSeen::Present(link_of(&ep, &marker)));
        assert_eq!(plan(&want, &have, ME), vec![]);
        assert_eq!(
            statuses(&want, &have)[&key],
            EndpointStatus::Ok {
                ifname: "eth0".into()
            }
        );
    }

    #[test]
    fn a_gone_namespace_is_reported_not_repaired() {
        let want = with_spec(desired_one(vec![], &[], &[]), "c1", 1);
        let key = ("net1".to_string(), "c1".to_string());
        let mut have = ObservedEbpf::default();
        have.containers
            .insert(key.clone(), ContainerSeen::NetnsGone);
        assert_eq!(plan(&want, &have, ME), vec![]);
        assert_eq!(
            statuses(&want, &have)[&key],
            EndpointStatus::NetnsGone {
                netns: "/run/netns/c1".into()
            }
        );
    }

    #[test]
    fn a_host_end_with_an_old_address_is_remarked() {
        let want = with_spec(desired_one(vec![], &[], &[]), "c1", 1);
        let spec = &want.networks["net1"].spec;
        let ep = ep_spec("c1", 1);
        // The host end records .9 (an earlier attach); the container end is right.
        let mut have = converged(&want, vec![port(10, "net1", 256, "c1", 9)]);
        have.containers.insert(
            ("net1".into(), "c1".into()),
            ContainerSeen::Present(link_of(&ep, &container_marker(spec, &ep))),
        );
        let ops = plan(&want, &have, ME);
        assert!(
            ops.iter().any(|o| matches!(o, EbpfOp::ConfigureEndpoint { problems, .. } if problems[0].contains("marker outdated"))),
            "{ops:?}"
        );
    }
}
