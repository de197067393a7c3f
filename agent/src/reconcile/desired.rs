//! Desired datapath state of this host, computed from the cluster view. Pure.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use ovl_core::{ClusterView, NetworkRecord};
use ovl_model::{
    Desired, DesiredNetwork, EndpointSpec, MacAddr, NetworkSpec, Plug, RemotePeer, WG_OVERHEAD,
    encrypted_mtu, overlay_mtu,
};

use crate::{
    health,
    tunnel::{TunnelPeer, TunnelPlan},
};

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
    /// UDP port of the VXLAN of encrypted networks (routed into WireGuard).
    pub encrypted_vxlan_port: u16,
    /// Whether this host's WireGuard key is published: without it, no other host takes its
    /// encrypted traffic, so it programs no peer on encrypted networks either.
    pub keyed: bool,
    /// This host's health namespace, once it exists: the health network is then desired
    /// (see [`crate::health`]).
    pub health: Option<&'a std::path::Path>,
}

/// The datapath spec of a network on this host: an encrypted network has its own VXLAN port
/// and room for WireGuard's header in its MTU.
pub fn spec(net: &NetworkRecord, me: &Me<'_>) -> NetworkSpec {
    let (mtu, vxlan_port) = if net.encrypted {
        (
            encrypted_mtu(me.underlay_mtu, net.mtu),
            me.encrypted_vxlan_port,
        )
    } else {
        (overlay_mtu(me.underlay_mtu, net.mtu), me.vxlan_port)
    };
    NetworkSpec {
        name: net.name.clone(),
        vni: net.vni,
        subnet: net.subnet,
        mtu,
        local_vtep: me.vtep,
        vxlan_port,
    }
}

/// The tunnel this host needs for `want`: `None` without an encrypted network here; else
/// one peer per host that floods one of them (its VTEP on the host's record, with its
/// published key and port).
pub fn tunnel(view: &ClusterView, me: &Me<'_>, want: &Desired) -> Option<TunnelPlan> {
    let encrypted: Vec<_> = want
        .networks
        .values()
        .filter(|n| n.spec.vxlan_port == me.encrypted_vxlan_port)
        .collect();
    if encrypted.is_empty() {
        return None;
    }
    let vteps: BTreeSet<Ipv4Addr> = encrypted
        .iter()
        .flat_map(|n| n.flood.iter().copied())
        .collect();
    let mut peers: Vec<TunnelPeer> = view
        .hosts
        .values()
        .filter(|h| h.id != me.host && vteps.contains(&h.vtep))
        .filter_map(|h| {
            let wg = h.wg.as_ref()?;
            Some(TunnelPeer {
                host: h.id.clone(),
                public_key: wg.public_key.clone(),
                endpoint: std::net::SocketAddrV4::new(h.vtep, wg.port),
                vtep: h.vtep,
            })
        })
        .collect();
    peers.sort_by(|a, b| a.host.cmp(&b.host));
    Some(TunnelPlan {
        mtu: me.underlay_mtu.saturating_sub(WG_OVERHEAD),
        peers,
    })
}

/// Where this host plugged a local endpoint, from its own records (`local.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugged {
    /// The container's namespace (Docker: the sandbox key).
    pub netns: PathBuf,
    /// The interface's name in the container, when known.
    pub ifname: Option<String>,
    /// For a Docker endpoint, the temporary name dockerd moved it from.
    pub docker_tmp: Option<String>,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: MacAddr,
}

/// The spec of a local endpoint this host plugged, on network `spec`.
pub fn endpoint_spec(
    id: &str,
    net: &NetworkRecord,
    spec: &NetworkSpec,
    p: &Plugged,
) -> EndpointSpec {
    EndpointSpec {
        endpoint_id: id.to_string(),
        netns: p.netns.clone(),
        mac: p.mac,
        ip: p.ip,
        prefix_len: net.subnet.prefix(),
        mtu: spec.mtu,
        ifname: p.ifname.clone(),
        plug: match &p.docker_tmp {
            Some(tmp) => Plug::Docker { tmp: tmp.clone() },
            None => Plug::Netns,
        },
    }
}

/// A network endpoint: `(network, endpoint id)`.
pub type EndpointKey = (String, String);

/// A local endpoint as this host knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Its network's record, as kept locally.
    pub network: NetworkRecord,
    /// Where it was plugged (`None` while it is being attached).
    pub plugged: Option<Plugged>,
}

/// What this host knows on its own, which the view never overrules: a KV record that
/// contradicts it is reported and repaired, never obeyed by tearing down a live interface.
#[derive(Debug, Clone, Default)]
pub struct Here {
    /// Endpoints attached here (or being attached).
    pub endpoints: BTreeMap<EndpointKey, Local>,
    /// Hosts without a lease whose datapath still answers: their entries are kept.
    pub grace: BTreeSet<String>,
}

/// Desired state: every network with an endpoint on this host, with one peer per endpoint on
/// another host that is alive (or in [`Here::grace`]) and one flood entry per such host.
/// Endpoints of dead or unknown hosts are left out, so their entries are removed. A network
/// record missing from the view is taken from the local copy. Local endpoints carry their
/// spec where this host plugged them, so the datapath maintains their container ends too.
pub fn desired(view: &ClusterView, me: &Me<'_>, here: &Here) -> Desired {
    let mut out = Desired::default();
    // Only the networks with an endpoint here: the work follows this host's networks, not
    // the size of the cluster.
    let mut by_net: BTreeMap<&str, BTreeMap<&str, &Local>> = BTreeMap::new();
    for ((n, id), l) in &here.endpoints {
        by_net.entry(n).or_default().insert(id, l);
    }
    for (name, local) in by_net {
        let Some(first) = local.values().next() else {
            continue;
        };
        let net = view.networks.get(name).unwrap_or(&first.network);
        let mut peers = Vec::new();
        let mut flood = BTreeSet::new();
        for ep in view.endpoints_on(&net.name) {
            let reachable = view.is_alive(&ep.host) || here.grace.contains(&ep.host);
            if ep.host == me.host || !reachable || local.contains_key(ep.id.as_str()) {
                continue;
            }
            let Some(host) = view.hosts.get(&ep.host) else {
                continue;
            };
            if net.encrypted && (host.wg.is_none() || !me.keyed) {
                // No key on either side: no tunnel between the two, and never in the clear.
                continue;
            }
            if host.vtep == me.vtep {
                // A misconfigured host claiming our VTEP: never loop traffic to ourselves.
                continue;
            }
            peers.push(RemotePeer {
                mac: ep.mac,
                ip: ep.ip,
                vtep: host.vtep,
            });
            flood.insert(host.vtep);
        }
        peers.sort_by_key(|p| (p.ip, p.mac));
        let spec = spec(net, me);
        let local_endpoints = local
            .into_iter()
            .map(|(id, l)| {
                let ep = l.plugged.as_ref().map(|p| endpoint_spec(id, net, &spec, p));
                (id.to_string(), ep)
            })
            .collect();
        out.networks.insert(
            net.name.clone(),
            DesiredNetwork {
                spec,
                peers,
                flood,
                local_endpoints,
            },
        );
    }
    if let Some(netns) = me.health
        && let Some(n) = health_network(view, me, here, netns)
    {
        out.networks.insert(health::NETWORK.to_string(), n);
    }
    out
}

/// The health network on this host: its health endpoint in `netns`, and one peer per other
/// host that is reachable (as for any network) and has a health address of its own.
fn health_network(
    view: &ClusterView,
    me: &Me<'_>,
    here: &Here,
    netns: &std::path::Path,
) -> Option<DesiredNetwork> {
    let (addrs, _) = health::addresses(view);
    let mine = *addrs.get(me.host)?;
    let net = health::record();
    let spec = spec(&net, me);
    let mut peers: Vec<RemotePeer> = addrs
        .iter()
        .filter(|(id, _)| {
            id.as_str() != me.host && (view.is_alive(id) || here.grace.contains(id.as_str()))
        })
        .filter_map(|(id, ip)| {
            let h = view.hosts.get(id)?;
            (h.vtep != me.vtep).then(|| RemotePeer {
                mac: MacAddr::from_ipv4(*ip),
                ip: *ip,
                vtep: h.vtep,
            })
        })
        .collect();
    peers.sort_by_key(|p| (p.ip, p.mac));
    let flood = peers.iter().map(|p| p.vtep).collect();
    let ep = EndpointSpec {
        endpoint_id: health::ENDPOINT.to_string(),
        netns: netns.to_path_buf(),
        mac: MacAddr::from_ipv4(mine),
        ip: mine,
        prefix_len: net.subnet.prefix(),
        mtu: spec.mtu,
        ifname: Some("eth0".into()),
        plug: Plug::Netns,
    };
    Some(DesiredNetwork {
        spec,
        peers,
        flood,
        local_endpoints: [(health::ENDPOINT.to_string(), Some(ep))].into(),
    })
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
            wg: None,
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
                    encrypted: false,
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
        vxlan_port: ovl_model::VXLAN_PORT,
        encrypted_vxlan_port: ovl_model::ENCRYPTED_VXLAN_PORT,
        keyed: true,
        health: None,
    };

    /// What h1 has: endpoint `a` of net1, not plugged by this agent (as the view records it).
    fn here() -> Here {
        let net1 = view().networks["net1"].clone();
        Here {
            endpoints: [(
                ("net1".to_string(), "a".to_string()),
                Local {
                    network: net1,
                    plugged: None,
                },
            )]
            .into(),
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
        assert_eq!(
            n.local_endpoints,
            [("a".to_string(), None)].into_iter().collect()
        );
    }

    /// The view with net1 encrypted and every host keyed except `unkeyed`.
    fn encrypted_view(unkeyed: &[&str]) -> ClusterView {
        let mut v = view();
        v.networks.get_mut("net1").unwrap().encrypted = true;
        let ids: Vec<String> = v.hosts.keys().cloned().collect();
        for id in ids {
            if !unkeyed.contains(&id.as_str()) {
                v.hosts.get_mut(&id).unwrap().wg = Some(ovl_core::WgRecord {
                    public_key: format!("{id}-key"),
                    port: 51820,
                    kind: "userspace".into(),
                });
            }
        }
        v
    }

    #[test]
    fn encrypted_networks_go_through_wireguard() {
        let v = encrypted_view(&[]);
        let d = desired(&v, &ME, &here());
        let n = &d.networks["net1"];
        assert_eq!(n.spec.vxlan_port, ovl_model::ENCRYPTED_VXLAN_PORT);
        assert_eq!(n.spec.mtu, 1400 - 60 - 50, "room for WireGuard and VXLAN");
        assert_eq!(n.peers.len(), 3);
        let t = tunnel(&v, &ME, &d).expect("a tunnel for an encrypted network");
        assert_eq!(t.mtu, 1340);
        let got: Vec<_> = t
            .peers
            .iter()
            .map(|p| (p.host.as_str(), p.endpoint))
            .collect();
        assert_eq!(
            got,
            [
                ("h2", "198.18.0.12:51820".parse().unwrap()),
                ("h3", "198.18.0.13:51820".parse().unwrap())
            ]
        );
        assert_eq!(t.peers[0].public_key, "h2-key");
        assert_eq!(t.peers[0].vtep, Ipv4Addr::new(198, 18, 0, 12));
        // Positive control of the other direction: a plain network needs no tunnel.
        let plain = desired(&view(), &ME, &here());
        assert_eq!(
            plain.networks["net1"].spec.vxlan_port,
            ovl_model::VXLAN_PORT
        );
        assert_eq!(tunnel(&view(), &ME, &plain), None);
    }

    #[test]
    fn the_health_network_reaches_every_reachable_host_once_the_namespace_exists() {
        let ns = std::path::Path::new("/run/ovl/health/netns");
        let mut v = view();
        v.alive.remove("h3");
        let mut h = here();
        assert!(!desired(&v, &ME, &h).networks.contains_key(health::NETWORK));

        let me = Me {
            health: Some(ns),
            ..ME
        };
        let d = desired(&v, &me, &h);
        let n = &d.networks[health::NETWORK];
        assert_eq!(n.spec.vni, health::VNI);
        // h3 is dead: only h2.
        let h2 = Ipv4Addr::new(100, 82, 0, 12);
        assert_eq!(
            n.peers,
            [RemotePeer {
                mac: MacAddr::from_ipv4(h2),
                ip: h2,
                vtep: Ipv4Addr::new(198, 18, 0, 12),
            }]
        );
        let ep = n.local_endpoints[health::ENDPOINT].as_ref().unwrap();
        assert_eq!((ep.ip, ep.prefix_len), (Ipv4Addr::new(100, 82, 0, 11), 10));
        assert_eq!(ep.netns, ns);
        assert_eq!(ep.ifname.as_deref(), Some("eth0"));
        // net1 is still there as before.
        assert!(d.networks.contains_key("net1"));

        // A host in its grace period (agent down, datapath answering) is probed too.
        h.grace.insert("h3".into());
        assert_eq!(
            desired(&v, &me, &h).networks[health::NETWORK].peers.len(),
            2
        );
    }

    #[test]
    fn hosts_without_a_key_are_cut_off_from_encrypted_networks() {
        let v = encrypted_view(&["h3"]);
        let d = desired(&v, &ME, &here());
        let n = &d.networks["net1"];
        assert_eq!(n.peers.len(), 1, "only h2's endpoint: h3 has no key");
        assert_eq!(
            n.flood,
            [Ipv4Addr::new(198, 18, 0, 12)].into_iter().collect()
        );
        let t = tunnel(&v, &ME, &d).unwrap();
        assert_eq!(t.peers.len(), 1);
        assert_eq!(t.peers[0].host, "h2");
        // This host's own key revoked: it programs no peer at all, and keeps the device
        // (an empty peer set) so nothing leaves in the clear.
        let me = Me { keyed: false, ..ME };
        let d = desired(&v, &me, &here());
        assert!(d.networks["net1"].peers.is_empty());
        assert!(d.networks["net1"].flood.is_empty());
        assert_eq!(tunnel(&v, &me, &d).unwrap().peers, vec![]);
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
        assert!(n.local_endpoints.contains_key("a"));
        assert!(n.peers.iter().all(|p| p.ip != Ipv4Addr::new(10, 10, 0, 2)));
        // A record of h1 it does not know locally is not plumbed here.
        let mut v = view();
        let mut ghost = v.endpoints[&("net1".to_string(), "a".to_string())].clone();
        ghost.id = "ghost".into();
        v.endpoints.insert(("net1".into(), "ghost".into()), ghost);
        let n = &desired(&v, &ME, &here()).networks["net1"];
        assert!(!n.local_endpoints.contains_key("ghost"));
        // The network record gone from the view: the local copy keeps it.
        let mut v = view();
        v.networks.remove("net1");
        let d = desired(&v, &ME, &here());
        assert_eq!(d.networks["net1"].spec.vni, 4096);
        assert_eq!(d.networks["net1"].peers.len(), 3);
    }

    #[test]
    fn an_endpoint_being_attached_counts_as_local() {
        let mut h = here();
        h.endpoints.insert(
            ("net2".to_string(), "new".to_string()),
            Local {
                network: view().networks["net2"].clone(),
                plugged: None,
            },
        );
        let d = desired(&view(), &ME, &h);
        assert!(d.networks["net2"].local_endpoints.contains_key("new"));
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

    #[test]
    fn plugged_endpoints_carry_their_container_end() {
        let mut h = here();
        h.endpoints
            .get_mut(&("net1".to_string(), "a".to_string()))
            .unwrap()
            .plugged = Some(Plugged {
            netns: "/run/netns/a".into(),
            ifname: Some("eth0".into()),
            docker_tmp: None,
            ip: Ipv4Addr::new(10, 10, 0, 2),
            mac: mac_for(Ipv4Addr::new(10, 10, 0, 2)),
        });
        h.endpoints.insert(
            ("net2".to_string(), "d1".to_string()),
            Local {
                network: view().networks["net2"].clone(),
                plugged: Some(Plugged {
                    netns: "/var/run/docker/netns/1a2b".into(),
                    ifname: None,
                    docker_tmp: Some("ovdd1".into()),
                    ip: Ipv4Addr::new(10, 10, 1, 9),
                    mac: mac_for(Ipv4Addr::new(10, 10, 1, 9)),
                }),
            },
        );
        let d = desired(&view(), &ME, &h);
        let a = d.networks["net1"].local_endpoints["a"].as_ref().unwrap();
        assert_eq!(a.netns, std::path::Path::new("/run/netns/a"));
        assert_eq!(
            (a.ip, a.prefix_len, a.mtu),
            (Ipv4Addr::new(10, 10, 0, 2), 24, 1350)
        );
        assert_eq!(a.ifname.as_deref(), Some("eth0"));
        assert_eq!(a.plug, Plug::Netns);
        let d1 = d.networks["net2"].local_endpoints["d1"].as_ref().unwrap();
        assert_eq!(
            d1.plug,
            Plug::Docker {
                tmp: "ovdd1".into()
            }
        );
        assert_eq!(d1.ifname, None, "dockerd's name is not known yet");
    }
}
