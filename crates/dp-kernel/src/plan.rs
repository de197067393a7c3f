//! The pure reconcile step: compare what should be programmed ([`Desired`], from the KV and
//! the host's attachments) with what is programmed ([`Observed`], from netlink dumps of the
//! sandboxes and of the containers' namespaces) and list the [`Op`]s that converge the
//! kernel, container ends included. No I/O here; [`crate::KernelDatapath::apply`] carries
//! the ops out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ovl_model::{
    ContainerFix, ContainerSeen, Desired, EndpointSpec, EndpointStatus, MacAddr, Marker,
    NetworkSpec, container_fix, container_marker, effective_peers,
};
use serde::{Deserialize, Serialize};

/// The bridge `br0` inside a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedBridge {
    /// Interface index inside the sandbox.
    pub index: u32,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Multicast snooping (must be off so IP multicast floods to the vxlan port).
    pub mcast_snooping: Option<bool>,
}

/// The vxlan device `vxlan0` inside a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedVxlan {
    /// Interface index inside the sandbox.
    pub index: u32,
    /// VNI.
    pub vni: Option<u32>,
    /// Local VTEP.
    pub local: Option<Ipv4Addr>,
    /// UDP port.
    pub port: Option<u16>,
    /// MAC learning (must be off).
    pub learning: Option<bool>,
    /// ARP proxy (must be on).
    pub proxy: Option<bool>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Enslaved to br0.
    pub enslaved: bool,
}

/// One IPv4 neighbour entry on vxlan0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObservedNeigh {
    /// Address.
    pub ip: Ipv4Addr,
    /// Link-layer address, if any.
    pub mac: Option<MacAddr>,
    /// NUD_PERMANENT.
    pub permanent: bool,
}

/// A local endpoint's bridge port, mapped back to its endpoint id through the ifalias.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedEndpoint {
    /// Port name inside the sandbox.
    pub host_ifname: String,
    /// Port interface index inside the sandbox.
    pub index: u32,
    /// Container-side address recorded at attach time.
    pub ip: Option<Ipv4Addr>,
    /// Container-side MAC recorded at attach time.
    pub mac: Option<MacAddr>,
    /// Enslaved to br0 and up.
    pub healthy: bool,
}

/// What is programmed for one network (one sandbox file under `<run_dir>/netns/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNetwork {
    /// Network name (the sandbox file name).
    pub name: String,
    /// Sandbox namespace file.
    pub sandbox: PathBuf,
    /// The file is a mounted network namespace (false: a stale leftover file).
    pub sandbox_ok: bool,
    /// br0, if present.
    pub bridge: Option<ObservedBridge>,
    /// vxlan0, if present.
    pub vxlan: Option<ObservedVxlan>,
    /// Unicast FDB entries on vxlan0: MAC -> VTEP (a MAC may have several destinations).
    pub fdb: BTreeSet<(MacAddr, Ipv4Addr)>,
    /// All-zeros-MAC FDB destinations on vxlan0 (flood list).
    pub flood: BTreeSet<Ipv4Addr>,
    /// IPv4 neighbour entries on vxlan0.
    pub neigh: BTreeSet<ObservedNeigh>,
    /// Local endpoint ports, keyed by endpoint id.
    pub endpoints: BTreeMap<String, ObservedEndpoint>,
    /// The container ends of the desired local endpoints, keyed by endpoint id (looked for
    /// only for endpoints with a spec).
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerSeen>,
}

impl ObservedNetwork {
    /// An observation of a network with nothing programmed in it.
    pub fn empty(name: &str, sandbox: PathBuf) -> Self {
        ObservedNetwork {
            name: name.to_string(),
            sandbox,
            sandbox_ok: false,
            bridge: None,
            vxlan: None,
            fdb: BTreeSet::new(),
            flood: BTreeSet::new(),
            neigh: BTreeSet::new(),
            endpoints: BTreeMap::new(),
            containers: BTreeMap::new(),
        }
    }
}

/// Everything this host has programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Keyed by network name.
    pub networks: BTreeMap<String, ObservedNetwork>,
}

/// One step towards the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Create the sandbox, bridge and vxlan device.
    CreateNetwork {
        /// The network.
        spec: NetworkSpec,
    },
    /// The sandbox exists but is incomplete or misconfigured: converge it (the vxlan device
    /// is recreated when its VNI/local/port/flags are wrong).
    RepairNetwork {
        /// The network.
        spec: NetworkSpec,
        /// What is wrong, for display.
        reason: String,
    },
    /// Remove the sandbox and everything in it.
    DeleteNetwork {
        /// Network name.
        network: String,
    },
    /// Static FDB entry `mac -> vtep` on vxlan0.
    AddFdb {
        /// Network name.
        network: String,
        /// Remote container MAC.
        mac: MacAddr,
        /// Remote VTEP.
        vtep: Ipv4Addr,
    },
    /// Remove one FDB destination.
    DelFdb {
        /// Network name.
        network: String,
        /// MAC.
        mac: MacAddr,
        /// VTEP.
        vtep: Ipv4Addr,
    },
    /// Permanent neighbour entry `ip -> mac` on vxlan0 (answered by the ARP proxy).
    AddNeigh {
        /// Network name.
        network: String,
        /// Remote container address.
        ip: Ipv4Addr,
        /// Remote container MAC.
        mac: MacAddr,
    },
    /// Remove a neighbour entry.
    DelNeigh {
        /// Network name.
        network: String,
        /// Address.
        ip: Ipv4Addr,
    },
    /// All-zeros FDB destination: replicate BUM traffic to `vtep`.
    AddFlood {
        /// Network name.
        network: String,
        /// Remote VTEP.
        vtep: Ipv4Addr,
    },
    /// Stop replicating BUM traffic to `vtep`.
    DelFlood {
        /// Network name.
        network: String,
        /// Remote VTEP.
        vtep: Ipv4Addr,
    },
    /// Remove the port (veth pair) of an endpoint that should no longer exist here.
    RemoveEndpointPort {
        /// Network name.
        network: String,
        /// Endpoint id.
        endpoint_id: String,
    },
    /// Create an endpoint's veth pair, container end into its namespace: both ends are gone.
    PlugEndpoint {
        /// The network.
        net: NetworkSpec,
        /// The endpoint.
        ep: EndpointSpec,
        /// Why, for display.
        reason: String,
    },
    /// Delete an endpoint's port (and whatever its peer became) and plug it again.
    ReplugEndpoint {
        /// The network.
        net: NetworkSpec,
        /// The endpoint.
        ep: EndpointSpec,
        /// Why, for display.
        reason: String,
    },
    /// Converge an endpoint's existing ends (container end `ifname`: address, MAC, MTU, up,
    /// markers).
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
}

impl Op {
    /// The network the op applies to.
    pub fn network(&self) -> &str {
        match self {
            Op::CreateNetwork { spec } | Op::RepairNetwork { spec, .. } => &spec.name,
            Op::PlugEndpoint { net, .. }
            | Op::ReplugEndpoint { net, .. }
            | Op::ConfigureEndpoint { net, .. } => &net.name,
            Op::DeleteNetwork { network }
            | Op::AddFdb { network, .. }
            | Op::DelFdb { network, .. }
            | Op::AddNeigh { network, .. }
            | Op::DelNeigh { network, .. }
            | Op::AddFlood { network, .. }
            | Op::DelFlood { network, .. }
            | Op::RemoveEndpointPort { network, .. } => network,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateNetwork { spec } => write!(
                f,
                "{}: create network (vni {}, subnet {}, mtu {}, local {})",
                spec.name, spec.vni, spec.subnet, spec.mtu, spec.local_vtep
            ),
            Op::RepairNetwork { spec, reason } => {
                write!(f, "{}: repair network ({reason})", spec.name)
            }
            Op::DeleteNetwork { network } => write!(f, "{network}: delete network"),
            Op::AddFdb { network, mac, vtep } => write!(f, "{network}: add fdb {mac} dst {vtep}"),
            Op::DelFdb { network, mac, vtep } => write!(f, "{network}: del fdb {mac} dst {vtep}"),
            Op::AddNeigh { network, ip, mac } => {
                write!(f, "{network}: add neigh {ip} lladdr {mac}")
            }
            Op::DelNeigh { network, ip } => write!(f, "{network}: del neigh {ip}"),
            Op::AddFlood { network, vtep } => write!(f, "{network}: add flood dst {vtep}"),
            Op::DelFlood { network, vtep } => write!(f, "{network}: del flood dst {vtep}"),
            Op::RemoveEndpointPort {
                network,
                endpoint_id,
            } => write!(f, "{network}: remove endpoint port {endpoint_id}"),
            Op::PlugEndpoint { net, ep, reason } => write!(
                f,
                "{}: plug endpoint {} into {} ({reason})",
                net.name,
                ep.endpoint_id,
                ep.netns.display()
            ),
            Op::ReplugEndpoint { net, ep, reason } => {
                write!(
                    f,
                    "{}: replug endpoint {} ({reason})",
                    net.name, ep.endpoint_id
                )
            }
            Op::ConfigureEndpoint {
                net, ep, problems, ..
            } => write!(
                f,
                "{}: configure endpoint {} ({})",
                net.name,
                ep.endpoint_id,
                problems.join(", ")
            ),
        }
    }
}

/// Why the sandbox of `obs` does not match `spec`, and whether the vxlan device must be
/// recreated (which loses its FDB and neighbour entries). `None`: nothing to repair.
pub fn network_drift(spec: &NetworkSpec, obs: &ObservedNetwork) -> Option<(String, bool)> {
    if !obs.sandbox_ok {
        return Some(("sandbox namespace missing".into(), true));
    }
    let mut reasons = Vec::new();
    let mut recreate = false;
    match &obs.vxlan {
        None => {
            reasons.push("vxlan0 missing".to_string());
            recreate = true;
        }
        Some(v) => {
            if v.vni != Some(spec.vni) {
                reasons.push(format!("vxlan0 vni {:?} != {}", v.vni, spec.vni));
                recreate = true;
            }
            if v.local != Some(spec.local_vtep) {
                reasons.push(format!("vxlan0 local {:?} != {}", v.local, spec.local_vtep));
                recreate = true;
            }
            if v.port != Some(spec.vxlan_port) {
                reasons.push(format!("vxlan0 port {:?} != {}", v.port, spec.vxlan_port));
                recreate = true;
            }
            if v.learning != Some(false) || v.proxy != Some(true) {
                reasons.push("vxlan0 learning/proxy flags wrong".into());
                recreate = true;
            }
            if !recreate {
                if v.mtu != spec.mtu {
                    reasons.push(format!("vxlan0 mtu {} != {}", v.mtu, spec.mtu));
                }
                if !v.up {
                    reasons.push("vxlan0 down".into());
                }
                if !v.enslaved {
                    reasons.push("vxlan0 not on br0".into());
                }
            }
        }
    }
    match &obs.bridge {
        None => reasons.push("br0 missing".into()),
        Some(b) => {
            if b.mtu != spec.mtu {
                reasons.push(format!("br0 mtu {} != {}", b.mtu, spec.mtu));
            }
            if !b.up {
                reasons.push("br0 down".into());
            }
            if b.mcast_snooping == Some(true) {
                reasons.push("br0 multicast snooping on".into());
            }
        }
    }
    let unhealthy: Vec<&str> = obs
        .endpoints
        .iter()
        .filter(|(_, e)| !e.healthy)
        .map(|(id, _)| id.as_str())
        .collect();
    if !unhealthy.is_empty() {
        reasons.push(format!("ports not on br0 or down: {}", unhealthy.join(",")));
    }
    if reasons.is_empty() {
        None
    } else {
        Some((reasons.join(", "), recreate))
    }
}

/// The marker of an endpoint's bridge port.
pub fn port_marker(ep: &EndpointSpec) -> String {
    Marker::Port {
        id: ep.endpoint_id.clone(),
        addr: Some((ep.ip, ep.prefix_len)),
        mac: Some(ep.mac),
    }
    .render()
}

/// What to do about one desired local endpoint, and its status.
fn endpoint_fix(
    net: &NetworkSpec,
    id: &str,
    spec: Option<&EndpointSpec>,
    have: &ObservedNetwork,
) -> (ContainerFix, EndpointStatus) {
    let port = have.endpoints.get(id);
    let seen = have
        .containers
        .get(id)
        .cloned()
        .unwrap_or(ContainerSeen::Unchecked);
    let marker = spec.map(|s| container_marker(net, s)).unwrap_or_default();
    let (fix, status) = container_fix(spec, port.is_some(), &seen, &marker);
    // A port that records another address or MAC (a re-attach that changed them) is
    // re-marked with the container end.
    if let (ContainerFix::None, Some(spec), Some(port), ContainerSeen::Present(link)) =
        (&fix, spec, port, &seen)
        && status.is_ok()
        && (port.ip != Some(spec.ip) || port.mac != Some(spec.mac))
    {
        let problems = vec![format!("port {} marker outdated", port.host_ifname)];
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
pub fn statuses(
    desired: &Desired,
    observed: &Observed,
) -> BTreeMap<(String, String), EndpointStatus> {
    let mut out = BTreeMap::new();
    for (name, want) in &desired.networks {
        let empty = ObservedNetwork::empty(name, PathBuf::new());
        let have = observed.networks.get(name).unwrap_or(&empty);
        for (id, spec) in &want.local_endpoints {
            let (_, st) = endpoint_fix(&want.spec, id, spec.as_ref(), have);
            out.insert((name.clone(), id.clone()), st);
        }
    }
    out
}

/// Computes the ops that take `observed` to `desired`. Pure and deterministic. Order: per
/// network (by name) create/repair, endpoint removals, deletions of stale entries, then
/// additions (flood, FDB, and neighbours last, so ARP is only answered once the MAC is
/// reachable); networks to delete come last.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    for (name, want) in &desired.networks {
        let spec = &want.spec;
        let network = name.clone();
        let empty;
        let have: &ObservedNetwork = match observed.networks.get(name) {
            Some(obs) if obs.sandbox_ok => {
                if let Some((reason, recreate)) = network_drift(spec, obs) {
                    ops.push(Op::RepairNetwork {
                        spec: spec.clone(),
                        reason,
                    });
                    if recreate {
                        // A new vxlan device starts with empty tables.
                        empty = ObservedNetwork {
                            endpoints: obs.endpoints.clone(),
                            containers: obs.containers.clone(),
                            ..ObservedNetwork::empty(name, obs.sandbox.clone())
                        };
                        &empty
                    } else {
                        obs
                    }
                } else {
                    obs
                }
            }
            Some(obs) => {
                // No sandbox: no ports either; what was found of the container ends decides
                // what is plugged again.
                ops.push(Op::CreateNetwork { spec: spec.clone() });
                empty = ObservedNetwork {
                    containers: obs.containers.clone(),
                    ..ObservedNetwork::empty(name, obs.sandbox.clone())
                };
                &empty
            }
            None => {
                ops.push(Op::CreateNetwork { spec: spec.clone() });
                empty = ObservedNetwork::empty(name, PathBuf::new());
                &empty
            }
        };

        for id in have.endpoints.keys() {
            if !want.local_endpoints.contains_key(id) {
                ops.push(Op::RemoveEndpointPort {
                    network: network.clone(),
                    endpoint_id: id.clone(),
                });
            }
        }
        for (id, ep) in &want.local_endpoints {
            let Some(ep) = ep else { continue };
            match endpoint_fix(spec, id, Some(ep), have).0 {
                ContainerFix::None => {}
                ContainerFix::Plug { reason } => ops.push(Op::PlugEndpoint {
                    net: spec.clone(),
                    ep: ep.restored(),
                    reason,
                }),
                ContainerFix::Replug { reason } => ops.push(Op::ReplugEndpoint {
                    net: spec.clone(),
                    ep: ep.restored(),
                    reason,
                }),
                ContainerFix::Configure { ifname, problems } => ops.push(Op::ConfigureEndpoint {
                    net: spec.clone(),
                    ep: ep.clone(),
                    ifname,
                    problems,
                }),
            }
        }

        let peers = effective_peers(spec, &want.peers);
        let want_fdb: BTreeMap<MacAddr, Ipv4Addr> = peers.iter().map(|p| (p.mac, p.vtep)).collect();
        let want_neigh: BTreeMap<Ipv4Addr, MacAddr> = peers.iter().map(|p| (p.ip, p.mac)).collect();
        let want_flood: BTreeSet<Ipv4Addr> = want
            .flood
            .iter()
            .filter(|v| **v != spec.local_vtep && !v.is_unspecified())
            .copied()
            .collect();

        // Deletions first.
        for n in &have.neigh {
            if !want_neigh.contains_key(&n.ip) {
                ops.push(Op::DelNeigh {
                    network: network.clone(),
                    ip: n.ip,
                });
            }
        }
        for (mac, vtep) in &have.fdb {
            if want_fdb.get(mac) != Some(vtep) {
                ops.push(Op::DelFdb {
                    network: network.clone(),
                    mac: *mac,
                    vtep: *vtep,
                });
            }
        }
        for vtep in &have.flood {
            if !want_flood.contains(vtep) {
                ops.push(Op::DelFlood {
                    network: network.clone(),
                    vtep: *vtep,
                });
            }
        }

        // Then additions.
        for vtep in &want_flood {
            if !have.flood.contains(vtep) {
                ops.push(Op::AddFlood {
                    network: network.clone(),
                    vtep: *vtep,
                });
            }
        }
        for (mac, vtep) in &want_fdb {
            if !have.fdb.contains(&(*mac, *vtep)) {
                ops.push(Op::AddFdb {
                    network: network.clone(),
                    mac: *mac,
                    vtep: *vtep,
                });
            }
        }
        for (ip, mac) in &want_neigh {
            let ok = have
                .neigh
                .iter()
                .any(|n| n.ip == *ip && n.mac == Some(*mac) && n.permanent);
            if !ok {
                ops.push(Op::AddNeigh {
                    network: network.clone(),
                    ip: *ip,
                    mac: *mac,
                });
            }
        }
    }
    for name in observed.networks.keys() {
        if !desired.networks.contains_key(name) {
            ops.push(Op::DeleteNetwork {
                network: name.clone(),
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_model::{DesiredNetwork, Plug, RemotePeer, VXLAN_PORT};

    const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const V2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
    const V3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);

    fn spec(name: &str) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            vni: 256,
            subnet: "10.1.0.0/24".parse().unwrap(),
            mtu: 1450,
            local_vtep: LOCAL,
            vxlan_port: VXLAN_PORT,
        }
    }

    fn peer(last: u8, vtep: Ipv4Addr) -> RemotePeer {
        let ip = Ipv4Addr::new(10, 1, 0, last);
        RemotePeer {
            mac: MacAddr::from_ipv4(ip),
            ip,
            vtep,
        }
    }

    fn want(name: &str, peers: &[RemotePeer], eps: &[&str]) -> DesiredNetwork {
        DesiredNetwork {
            spec: spec(name),
            peers: peers.to_vec(),
            flood: peers.iter().map(|p| p.vtep).collect(),
            local_endpoints: eps.iter().map(|s| (s.to_string(), None)).collect(),
        }
    }

    fn desired(nets: Vec<DesiredNetwork>) -> Desired {
        Desired {
            networks: nets.into_iter().map(|n| (n.spec.name.clone(), n)).collect(),
        }
    }

    /// A healthy observed network programmed exactly for `peers` with endpoints `eps`.
    fn have(name: &str, peers: &[RemotePeer], eps: &[&str]) -> ObservedNetwork {
        let s = spec(name);
        ObservedNetwork {
            name: name.into(),
            sandbox: PathBuf::from(format!("/run/x/netns/{name}")),
            sandbox_ok: true,
            bridge: Some(ObservedBridge {
                index: 2,
                mtu: s.mtu,
                up: true,
                mcast_snooping: Some(false),
            }),
            vxlan: Some(ObservedVxlan {
                index: 3,
                vni: Some(s.vni),
                local: Some(LOCAL),
                port: Some(VXLAN_PORT),
                learning: Some(false),
                proxy: Some(true),
                mtu: s.mtu,
                up: true,
                enslaved: true,
            }),
            fdb: peers.iter().map(|p| (p.mac, p.vtep)).collect(),
            flood: peers.iter().map(|p| p.vtep).collect(),
            neigh: peers
                .iter()
                .map(|p| ObservedNeigh {
                    ip: p.ip,
                    mac: Some(p.mac),
                    permanent: true,
                })
                .collect(),
            endpoints: eps
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    (
                        id.to_string(),
                        ObservedEndpoint {
                            host_ifname: format!("ve-{id}"),
                            index: 10 + i as u32,
                            ip: None,
                            mac: None,
                            healthy: true,
                        },
                    )
                })
                .collect(),
            containers: BTreeMap::new(),
        }
    }

    fn observed(nets: Vec<ObservedNetwork>) -> Observed {
        Observed {
            networks: nets.into_iter().map(|n| (n.name.clone(), n)).collect(),
        }
    }

    #[test]
    fn nothing_wanted_nothing_there() {
        assert!(plan(&Desired::default(), &Observed::default()).is_empty());
    }

    #[test]
    fn new_network_is_created_and_fully_programmed_in_order() {
        let p = peer(3, V2);
        let ops = plan(
            &desired(vec![want("blue", &[p], &["e1"])]),
            &Observed::default(),
        );
        assert_eq!(
            ops,
            vec![
                Op::CreateNetwork { spec: spec("blue") },
                Op::AddFlood {
                    network: "blue".into(),
                    vtep: V2
                },
                Op::AddFdb {
                    network: "blue".into(),
                    mac: p.mac,
                    vtep: V2
                },
                Op::AddNeigh {
                    network: "blue".into(),
                    ip: p.ip,
                    mac: p.mac
                },
            ]
        );
    }

    #[test]
    fn converged_state_needs_no_ops() {
        let peers = [peer(3, V2), peer(4, V3), peer(5, V3)];
        let d = desired(vec![want("blue", &peers, &["e1", "e2"])]);
        let o = observed(vec![have("blue", &peers, &["e1", "e2"])]);
        assert_eq!(plan(&d, &o), vec![]);
    }

    #[test]
    fn networks_without_local_endpoints_are_deleted() {
        let d = desired(vec![want("blue", &[], &["e1"])]);
        let o = observed(vec![
            have("blue", &[], &["e1"]),
            have("old", &[peer(3, V2)], &[]),
        ]);
        assert_eq!(
            plan(&d, &o),
            vec![Op::DeleteNetwork {
                network: "old".into()
            }]
        );
    }

    #[test]
    fn removed_peer_loses_fdb_neigh_and_flood() {
        let (a, b) = (peer(3, V2), peer(4, V3));
        let d = desired(vec![want("blue", &[a], &["e1"])]);
        let o = observed(vec![have("blue", &[a, b], &["e1"])]);
        assert_eq!(
            plan(&d, &o),
            vec![
                Op::DelNeigh {
                    network: "blue".into(),
                    ip: b.ip
                },
                Op::DelFdb {
                    network: "blue".into(),
                    mac: b.mac,
                    vtep: V3
                },
                Op::DelFlood {
                    network: "blue".into(),
                    vtep: V3
                },
            ]
        );
    }

    #[test]
    fn flood_kept_while_another_peer_uses_the_vtep() {
        let (a, b) = (peer(3, V2), peer(4, V2));
        let d = desired(vec![want("blue", &[a], &["e1"])]);
        let o = observed(vec![have("blue", &[a, b], &["e1"])]);
        let ops = plan(&d, &o);
        assert!(
            !ops.iter().any(|op| matches!(op, Op::DelFlood { .. })),
            "{ops:?}"
        );
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn peer_moved_to_another_host_is_repointed() {
        let old = peer(3, V2);
        let moved = RemotePeer { vtep: V3, ..old };
        let d = desired(vec![want("blue", &[moved], &["e1"])]);
        let o = observed(vec![have("blue", &[old], &["e1"])]);
        assert_eq!(
            plan(&d, &o),
            vec![
                Op::DelFdb {
                    network: "blue".into(),
                    mac: old.mac,
                    vtep: V2
                },
                Op::DelFlood {
                    network: "blue".into(),
                    vtep: V2
                },
                Op::AddFlood {
                    network: "blue".into(),
                    vtep: V3
                },
                Op::AddFdb {
                    network: "blue".into(),
                    mac: old.mac,
                    vtep: V3
                },
            ]
        );
    }

    #[test]
    fn new_mac_for_same_ip_replaces_neighbour() {
        let old = peer(3, V2);
        let new = RemotePeer {
            mac: "02:00:00:00:00:33".parse().unwrap(),
            ..old
        };
        let d = desired(vec![want("blue", &[new], &["e1"])]);
        let o = observed(vec![have("blue", &[old], &["e1"])]);
        assert_eq!(
            plan(&d, &o),
            vec![
                Op::DelFdb {
                    network: "blue".into(),
                    mac: old.mac,
                    vtep: V2
                },
                Op::AddFdb {
                    network: "blue".into(),
                    mac: new.mac,
                    vtep: V2
                },
                Op::AddNeigh {
                    network: "blue".into(),
                    ip: old.ip,
                    mac: new.mac
                },
            ]
        );
    }

    #[test]
    fn stale_and_foreign_entries_are_removed_missing_ones_added() {
        let a = peer(3, V2);
        let d = desired(vec![want("blue", &[a], &["e1"])]);
        let mut o = have("blue", &[a], &["e1"]);
        // Deleted by hand.
        o.fdb.clear();
        // Added by hand.
        let stray_mac: MacAddr = "02:00:00:00:00:99".parse().unwrap();
        o.fdb.insert((stray_mac, V3));
        o.flood.insert(Ipv4Addr::new(198, 18, 0, 99));
        o.neigh.insert(ObservedNeigh {
            ip: Ipv4Addr::new(10, 1, 0, 99),
            mac: None,
            permanent: false,
        });
        assert_eq!(
            plan(&d, &observed(vec![o])),
            vec![
                Op::DelNeigh {
                    network: "blue".into(),
                    ip: Ipv4Addr::new(10, 1, 0, 99)
                },
                Op::DelFdb {
                    network: "blue".into(),
                    mac: stray_mac,
                    vtep: V3
                },
                Op::DelFlood {
                    network: "blue".into(),
                    vtep: Ipv4Addr::new(198, 18, 0, 99)
                },
                Op::AddFdb {
                    network: "blue".into(),
                    mac: a.mac,
                    vtep: V2
                },
            ]
        );
    }

    #[test]
    fn second_destination_for_a_mac_is_removed() {
        let a = peer(3, V2);
        let d = desired(vec![want("blue", &[a], &["e1"])]);
        let mut o = have("blue", &[a], &["e1"]);
        o.fdb.insert((a.mac, V3));
        assert_eq!(
            plan(&d, &observed(vec![o])),
            vec![Op::DelFdb {
                network: "blue".into(),
                mac: a.mac,
                vtep: V3
            }]
        );
    }

    #[test]
    fn non_permanent_neighbour_is_made_permanent() {
        let a = peer(3, V2);
        let d = desired(vec![want("blue", &[a], &["e1"])]);
        let mut o = have("blue", &[a], &["e1"]);
        o.neigh = [ObservedNeigh {
            ip: a.ip,
            mac: Some(a.mac),
            permanent: false,
        }]
        .into();
        assert_eq!(
            plan(&d, &observed(vec![o])),
            vec![Op::AddNeigh {
                network: "blue".into(),
                ip: a.ip,
                mac: a.mac
            }]
        );
    }

    #[test]
    fn endpoints_gone_from_desired_lose_their_port() {
        let d = desired(vec![want("blue", &[], &["e1"])]);
        let o = observed(vec![have("blue", &[], &["e1", "e9"])]);
        assert_eq!(
            plan(&d, &o),
            vec![Op::RemoveEndpointPort {
                network: "blue".into(),
                endpoint_id: "e9".into()
            }]
        );
    }

    #[test]
    fn desired_endpoints_not_yet_attached_are_not_ops() {
        // Attaching needs the container's namespace, which only the caller knows.
        let d = desired(vec![want("blue", &[], &["e1", "e2"])]);
        let o = observed(vec![have("blue", &[], &["e1"])]);
        assert!(plan(&d, &o).is_empty());
    }

    #[test]
    fn peers_on_this_host_are_ignored() {
        let local = peer(7, LOCAL);
        let mut w = want("blue", &[local], &["e1"]);
        w.flood.insert(LOCAL);
        let ops = plan(
            &desired(vec![w]),
            &observed(vec![have("blue", &[], &["e1"])]),
        );
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn duplicate_peers_resolve_the_same_whatever_the_order() {
        let a = peer(3, V2);
        let a_elsewhere = RemotePeer { vtep: V3, ..a };
        let same_mac_other_ip = RemotePeer {
            ip: Ipv4Addr::new(10, 1, 0, 200),
            ..a
        };
        let o = observed(vec![have("blue", &[], &["e1"])]);
        let p1 = plan(
            &desired(vec![want(
                "blue",
                &[a, a_elsewhere, same_mac_other_ip],
                &["e1"],
            )]),
            &o,
        );
        let p2 = plan(
            &desired(vec![want(
                "blue",
                &[same_mac_other_ip, a_elsewhere, a],
                &["e1"],
            )]),
            &o,
        );
        assert_eq!(p1, p2);
        let fdb: Vec<_> = p1
            .iter()
            .filter(|op| matches!(op, Op::AddFdb { .. }))
            .collect();
        assert_eq!(
            fdb,
            vec![&Op::AddFdb {
                network: "blue".into(),
                mac: a.mac,
                vtep: V2
            }]
        );
        let neigh: Vec<_> = p1
            .iter()
            .filter(|op| matches!(op, Op::AddNeigh { .. }))
            .collect();
        assert_eq!(neigh.len(), 1);
    }

    #[test]
    fn stale_sandbox_file_means_create() {
        let a = peer(3, V2);
        let mut o = ObservedNetwork::empty("blue", "/run/x/netns/blue".into());
        o.sandbox_ok = false;
        let ops = plan(
            &desired(vec![want("blue", &[a], &["e1"])]),
            &observed(vec![o]),
        );
        assert_eq!(ops[0], Op::CreateNetwork { spec: spec("blue") });
        assert_eq!(ops.len(), 4);
    }

    #[test]
    fn wrong_vni_recreates_vxlan_and_reprograms_everything() {
        let a = peer(3, V2);
        let mut o = have("blue", &[a], &["e1"]);
        if let Some(v) = o.vxlan.as_mut() {
            v.vni = Some(999);
        }
        let ops = plan(
            &desired(vec![want("blue", &[a], &["e1"])]),
            &observed(vec![o]),
        );
        assert!(
            matches!(&ops[0], Op::RepairNetwork { reason, .. } if reason.contains("vni")),
            "{ops:?}"
        );
        assert_eq!(ops.len(), 4, "{ops:?}");
    }

    #[test]
    fn missing_vxlan_recreates_and_reprograms() {
        let a = peer(3, V2);
        let mut o = have("blue", &[a], &["e1"]);
        o.vxlan = None;
        let ops = plan(
            &desired(vec![want("blue", &[a], &["e1"])]),
            &observed(vec![o]),
        );
        assert!(matches!(&ops[0], Op::RepairNetwork { .. }));
        assert_eq!(ops.len(), 4, "{ops:?}");
    }

    #[test]
    fn soft_drift_repairs_without_reprogramming() {
        let a = peer(3, V2);
        let mut o = have("blue", &[a], &["e1"]);
        o.bridge.as_mut().unwrap().mtu = 1500;
        o.vxlan.as_mut().unwrap().up = false;
        o.endpoints.get_mut("e1").unwrap().healthy = false;
        let ops = plan(
            &desired(vec![want("blue", &[a], &["e1"])]),
            &observed(vec![o]),
        );
        assert_eq!(ops.len(), 1, "{ops:?}");
        let Op::RepairNetwork { reason, .. } = &ops[0] else {
            panic!("{ops:?}")
        };
        assert!(
            reason.contains("br0 mtu") && reason.contains("vxlan0 down") && reason.contains("e1"),
            "{reason}"
        );
    }

    #[test]
    fn missing_bridge_is_repaired_and_entries_kept() {
        let a = peer(3, V2);
        let mut o = have("blue", &[a], &["e1"]);
        o.bridge = None;
        let ops = plan(
            &desired(vec![want("blue", &[a], &["e1"])]),
            &observed(vec![o]),
        );
        assert_eq!(ops.len(), 1, "{ops:?}");
    }

    #[test]
    fn several_networks_are_planned_independently_in_name_order() {
        let a = peer(3, V2);
        let d = desired(vec![
            want("b-net", &[a], &["e2"]),
            want("a-net", &[], &["e1"]),
        ]);
        let o = observed(vec![have("a-net", &[], &["e1"]), have("z-old", &[], &[])]);
        let ops = plan(&d, &o);
        let nets: Vec<&str> = ops.iter().map(Op::network).collect();
        assert_eq!(nets, vec!["b-net", "b-net", "b-net", "b-net", "z-old"]);
    }

    #[test]
    fn ops_display_for_overlayctl() {
        let mac: MacAddr = "02:42:0a:01:00:03".parse().unwrap();
        let shown = [
            Op::AddFdb {
                network: "blue".into(),
                mac,
                vtep: V2,
            }
            .to_string(),
            Op::DelNeigh {
                network: "blue".into(),
                ip: Ipv4Addr::new(10, 1, 0, 3),
            }
            .to_string(),
            Op::AddFlood {
                network: "blue".into(),
                vtep: V2,
            }
            .to_string(),
            Op::CreateNetwork { spec: spec("blue") }.to_string(),
            Op::RemoveEndpointPort {
                network: "blue".into(),
                endpoint_id: "e1".into(),
            }
            .to_string(),
        ];
        assert_eq!(shown[0], "blue: add fdb 02:42:0a:01:00:03 dst 198.18.0.12");
        assert_eq!(shown[1], "blue: del neigh 10.1.0.3");
        assert_eq!(shown[2], "blue: add flood dst 198.18.0.12");
        assert_eq!(
            shown[3],
            "blue: create network (vni 256, subnet 10.1.0.0/24, mtu 1450, local 198.18.0.11)"
        );
        assert_eq!(shown[4], "blue: remove endpoint port e1");
    }

    #[test]
    fn ops_serialize_with_a_tag() {
        let op = Op::AddNeigh {
            network: "blue".into(),
            ip: Ipv4Addr::new(10, 1, 0, 3),
            mac: "02:42:0a:01:00:03".parse().unwrap(),
        };
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(v["op"], "add_neigh");
        assert_eq!(v["mac"], "02:42:0a:01:00:03");
        let back: Op = serde_json::from_value(v).unwrap();
        assert_eq!(back, op);
    }

    #[test]
    fn healthy_network_has_no_drift() {
        assert_eq!(
            network_drift(&spec("blue"), &have("blue", &[peer(3, V2)], &["e1"])),
            None
        );
    }

    fn ep_spec(id: &str, last: u8) -> EndpointSpec {
        let ip = Ipv4Addr::new(10, 1, 0, last);
        EndpointSpec {
            endpoint_id: id.into(),
            netns: format!("/run/netns/{id}").into(),
            mac: MacAddr::from_ipv4(ip),
            ip,
            prefix_len: 24,
            mtu: 1450,
            ifname: Some("eth0".into()),
            plug: Plug::Netns,
        }
    }

    fn with_spec(mut d: Desired, net: &str, id: &str, last: u8) -> Desired {
        d.networks
            .get_mut(net)
            .unwrap()
            .local_endpoints
            .insert(id.into(), Some(ep_spec(id, last)));
        d
    }

    fn present(net: &str, ep: &EndpointSpec) -> ContainerSeen {
        ContainerSeen::Present(ovl_model::ContainerLink {
            index: 2,
            name: "eth0".into(),
            mac: Some(ep.mac),
            mtu: ep.mtu,
            up: true,
            addrs: vec![(ep.ip, ep.prefix_len)],
            alias: Some(container_marker(&spec(net), ep)),
        })
    }

    fn port_of(ep: &EndpointSpec) -> ObservedEndpoint {
        ObservedEndpoint {
            host_ifname: format!("ve-{}", ep.endpoint_id),
            index: 10,
            ip: Some(ep.ip),
            mac: Some(ep.mac),
            healthy: true,
        }
    }

    #[test]
    fn a_lost_sandbox_is_recreated_and_its_endpoints_plugged_again() {
        // The sandbox died (its mount went with an agent's private mount namespace): the
        // container ends went with it.
        let d = with_spec(desired(vec![want("blue", &[], &[])]), "blue", "c1", 5);
        let mut o = ObservedNetwork::empty("blue", PathBuf::new());
        o.containers.insert("c1".into(), ContainerSeen::Missing);
        let ops = plan(&d, &observed(vec![o]));
        assert_eq!(
            ops.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![
                "blue: create network (vni 256, subnet 10.1.0.0/24, mtu 1450, local 198.18.0.11)"
                    .to_string(),
                "blue: plug endpoint c1 into /run/netns/c1 (veth pair missing)".into(),
            ]
        );
    }

    #[test]
    fn container_ends_are_replugged_configured_or_left_alone() {
        let d = with_spec(desired(vec![want("blue", &[], &[])]), "blue", "c1", 5);
        let ep = ep_spec("c1", 5);
        let mut o = have("blue", &[], &[]);
        o.endpoints.insert("c1".into(), port_of(&ep));
        // Host end there, container end gone or not its peer: replug.
        o.containers.insert("c1".into(), ContainerSeen::Missing);
        let ops = plan(&d, &observed(vec![o.clone()]));
        assert!(matches!(&ops[..], [Op::ReplugEndpoint { .. }]), "{ops:?}");
        // Wrong address: configured.
        let ContainerSeen::Present(mut l) = present("blue", &ep) else {
            unreachable!()
        };
        l.addrs = vec![(Ipv4Addr::new(10, 1, 0, 99), 24)];
        o.containers.insert("c1".into(), ContainerSeen::Present(l));
        let ops = plan(&d, &observed(vec![o.clone()]));
        assert_eq!(
            ops.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["blue: configure endpoint c1 (eth0 address 10.1.0.5/24 missing)"]
        );
        // As specified: nothing, and the status says ok.
        o.containers.insert("c1".into(), present("blue", &ep));
        let obs = observed(vec![o.clone()]);
        assert_eq!(plan(&d, &obs), vec![]);
        assert_eq!(
            statuses(&d, &obs)[&("blue".to_string(), "c1".to_string())],
            EndpointStatus::Ok {
                ifname: "eth0".into()
            }
        );
        // The namespace is gone: nothing to do, and the status says why.
        o.endpoints.clear();
        o.containers.insert("c1".into(), ContainerSeen::NetnsGone);
        let obs = observed(vec![o]);
        assert_eq!(plan(&d, &obs), vec![]);
        assert!(matches!(
            statuses(&d, &obs)[&("blue".to_string(), "c1".to_string())],
            EndpointStatus::NetnsGone { .. }
        ));
    }

    #[test]
    fn docker_interfaces_in_transit_are_not_touched() {
        let mut d = with_spec(desired(vec![want("blue", &[], &[])]), "blue", "d1", 5);
        let ep = d
            .networks
            .get_mut("blue")
            .unwrap()
            .local_endpoints
            .get_mut("d1")
            .unwrap();
        let ep = ep.as_mut().unwrap();
        ep.plug = Plug::Docker {
            tmp: "ovdd1".into(),
        };
        ep.ifname = None;
        let mut o = have("blue", &[], &[]);
        o.endpoints.insert("d1".into(), port_of(&ep_spec("d1", 5)));
        o.containers.insert(
            "d1".into(),
            ContainerSeen::AwaitingDocker {
                name: "ovdd1".into(),
            },
        );
        let obs = observed(vec![o]);
        assert_eq!(plan(&d, &obs), vec![]);
        assert_eq!(
            statuses(&d, &obs)[&("blue".to_string(), "d1".to_string())],
            EndpointStatus::AwaitingDocker
        );
    }
}
