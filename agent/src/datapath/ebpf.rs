//! The eBPF datapath behind the [`Datapath`](super::Datapath) seam: `ovl-ebpf`'s tc programs
//! around one collect-metadata vxlan device (`ovl_vx0`) in the host namespace.
//!
//! # Layout
//! * Pin directory: `<run_dir>/bpf`, a bpffs instance the agent mounts there (unless it
//!   already is one). It is unique per agent instance (several lab agents share a machine and
//!   reuse host ids), stable across restarts of that agent (so `kill -9` + restart adopts the
//!   pinned maps and TCX links and traffic keeps flowing), and removed with the run dir's
//!   mounts: unmounting it releases every pin, which detaches the programs and frees the maps.
//! * Per local endpoint a veth pair: the host end `port_name("<vni>.<id>")` stays in the
//!   agent's namespace (ifalias `ovl-ebpf:<network> <id> <vni> <ip>/<prefix> <mac>`, so a
//!   restarted agent maps ifindex -> endpoint), the other end becomes the container's `eth0`
//!   (or `ep.ifname`, or the next free `ethN`), with the endpoint's MAC, address and MTU.
//!
//! # Reconciling
//! [`plan`] compares what the maps hold (plus the host ends found by alias) with
//! [`Desired`] in pure code; [`EbpfBackend::converge`] applies the [`EbpfOp`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use ovl_datapath::netlink::{Link, Netlink, VethPeer};
use ovl_datapath::netns::{current_netns_path, netns_id, open_netns};
use ovl_datapath::{Attached, Desired, EndpointSpec, MacAddr, NetworkSpec, free_ifname, port_name};
use ovl_ebpf::{EbpfDatapath, EbpfState, EndpointInfo};
use tokio::sync::Mutex;

use super::{Converged, Datapath, NetReport};
use crate::{
    config::Settings,
    error::{AgentError, Result},
};

/// Name of the collect-metadata vxlan device in the host namespace.
pub const VXLAN_DEVICE: &str = "ovl_vx0";

/// Prefix of the ifalias marking the host ends of our endpoints.
const ALIAS_PREFIX: &str = "ovl-ebpf:";
/// Prefix of the ifalias of the container ends (distinct: a Docker endpoint's container end
/// waits in the host namespace next to its host end until Docker moves it).
const CT_ALIAS_PREFIX: &str = "ovl-ebpf-ct:";

fn dp_err(e: ovl_datapath::Error) -> AgentError {
    match e {
        ovl_datapath::Error::InvalidInput(m) => AgentError::Invalid(m),
        ovl_datapath::Error::Conflict(m) => AgentError::Conflict(m),
        ovl_datapath::Error::NotFound(m) => AgentError::Invalid(m),
        other => AgentError::Datapath(other.to_string()),
    }
}

fn bpf_err(e: ovl_ebpf::Error) -> AgentError {
    match e {
        ovl_ebpf::Error::InvalidInput(m) => AgentError::Invalid(m),
        ovl_ebpf::Error::Conflict(m) => AgentError::Conflict(m),
        e @ (ovl_ebpf::Error::MtuTooLarge { .. } | ovl_ebpf::Error::TooMany { .. }) => {
            AgentError::Invalid(e.to_string())
        }
        other => AgentError::Datapath(other.to_string()),
    }
}

/// What a host end's ifalias records about its endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortAlias {
    /// Network name.
    pub network: String,
    /// Endpoint id.
    pub id: String,
    /// VNI of the network.
    pub vni: u32,
    /// Container address and prefix length.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Container MAC.
    pub mac: MacAddr,
}

impl PortAlias {
    /// `ovl-ebpf:<network> <id> <vni> <ip>/<prefix> <mac>`.
    pub fn render(&self) -> String {
        format!(
            "{ALIAS_PREFIX}{} {} {} {}/{} {}",
            self.network, self.id, self.vni, self.ip, self.prefix_len, self.mac
        )
    }

    /// Parses [`PortAlias::render`]'s output; anything else is `None`.
    pub fn parse(s: &str) -> Option<PortAlias> {
        let mut it = s.strip_prefix(ALIAS_PREFIX)?.split(' ');
        let network = it.next()?.to_string();
        let id = it.next()?.to_string();
        let vni = it.next()?.parse().ok()?;
        let (ip, len) = it.next()?.split_once('/')?;
        let mac = it.next()?.parse().ok()?;
        if it.next().is_some() || network.is_empty() || id.is_empty() {
            return None;
        }
        Some(PortAlias {
            network,
            id,
            vni,
            ip: ip.parse().ok()?,
            prefix_len: len.parse().ok()?,
            mac,
        })
    }

    /// The container end's alias: same fields, [`CT_ALIAS_PREFIX`].
    pub fn render_container(&self) -> String {
        format!("{CT_ALIAS_PREFIX}{}", &self.render()[ALIAS_PREFIX.len()..])
    }

    /// Parses [`PortAlias::render_container`]'s output.
    pub fn parse_container(s: &str) -> Option<PortAlias> {
        PortAlias::parse(&format!(
            "{ALIAS_PREFIX}{}",
            s.strip_prefix(CT_ALIAS_PREFIX)?
        ))
    }

    fn info(&self) -> EndpointInfo {
        EndpointInfo {
            vni: self.vni,
            mac: self.mac.0,
            ip: self.ip,
        }
    }
}

/// A host end of an endpoint veth found in the agent's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// What its alias records.
    pub alias: PortAlias,
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

/// The host-side interface name of an endpoint: VNI-qualified, since every network's host
/// ends share one namespace and endpoint ids are only unique per network.
pub fn host_port_name(vni: u32, endpoint_id: &str) -> String {
    port_name(&format!("{vni}.{endpoint_id}"))
}

/// Temporary name of the container end while it is being set up (found again after an
/// interrupted attach because it derives from the same key).
fn temp_name(vni: u32, endpoint_id: &str) -> String {
    let p = port_name(&format!("{vni}/{endpoint_id}"));
    format!("vt{}", &p[2..])
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
                MacAddr(info.mac),
                info.ip
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

/// Computes the ops that take `have` to `want` for a host whose VTEP is `local_vtep`. Pure
/// and deterministic. Order: endpoint removals, stale entry removals, flood lists, then
/// remotes (so ARP is only answered for reachable MACs).
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
    let desired_by_vni: BTreeMap<u32, &ovl_datapath::DesiredNetwork> =
        want.networks.values().map(|n| (n.spec.vni, n)).collect();

    // Local endpoints.
    let port_indexes: BTreeSet<u32> = have.ports.iter().map(|p| p.index).collect();
    for p in &have.ports {
        let keep = want
            .networks
            .get(&p.alias.network)
            .is_some_and(|n| n.spec.vni == p.alias.vni && n.local_endpoints.contains(&p.alias.id));
        if !keep {
            removals.push(EbpfOp::RemoveEndpoint {
                network: p.alias.network.clone(),
                id: p.alias.id.clone(),
                ifindex: p.index,
                ifname: p.name.clone(),
            });
        } else if have.state.endpoints.get(&p.index) != Some(&p.alias.info())
            || !have.state.attached_links.contains(&p.index)
        {
            removals.push(EbpfOp::ProgramEndpoint {
                network: p.alias.network.clone(),
                id: p.alias.id.clone(),
                ifindex: p.index,
                info: p.alias.info(),
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

    // Remotes.
    let mut want_remote: BTreeMap<(u32, MacAddr), (Ipv4Addr, Ipv4Addr)> = BTreeMap::new();
    for n in want.networks.values() {
        for p in ovl_datapath::effective_peers(&n.spec, &n.peers) {
            want_remote.insert((n.spec.vni, p.mac), (p.ip, p.vtep));
        }
    }
    // A changed VTEP or IP is a SetRemote (it replaces the entry), not a delete.
    for (vni, mac) in have.state.remotes.keys() {
        let mac = MacAddr(*mac);
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
            .get(&(*vni, mac.0))
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
fn actual_lines(want: &Desired, have: &ObservedEbpf) -> BTreeMap<String, Vec<String>> {
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
            let programmed = have.state.endpoints.get(&p.index) == Some(&p.alias.info());
            lines.push(format!(
                "local {} ({}){}",
                p.alias.id,
                p.name,
                if programmed { "" } else { " (not programmed)" }
            ));
        }
        for ((v, mac), r) in &have.state.remotes {
            if *v == vni {
                lines.push(format!("remote {} {} via {}", MacAddr(*mac), r.ip, r.vtep));
            }
        }
        for f in have.state.flood.get(&vni).into_iter().flatten() {
            lines.push(format!("flood {f}"));
        }
    }
    out
}

/// tc programs + one collect-metadata vxlan device.
pub struct EbpfBackend {
    dp: Mutex<EbpfDatapath>,
    vtep: Ipv4Addr,
    mtu: u32,
    pin_dir: PathBuf,
    load_opts: ovl_ebpf::LoadOptions,
}

impl EbpfBackend {
    /// Loads or adopts the eBPF datapath; `Err` says exactly why it cannot run here.
    pub async fn open(settings: &Settings) -> std::result::Result<Self, String> {
        EbpfDatapath::probe().map_err(|e| e.reason.to_string())?;
        let underlay = ovl_datapath::underlay_mtu(settings.advertise_addr)
            .map_err(|e| format!("underlay MTU: {e}"))?;
        let mtu = underlay.saturating_sub(ovl_ebpf::VXLAN_OVERHEAD);
        let pin_dir = settings.run_dir.join("bpf");
        ovl_ebpf::ensure_bpffs_at(&pin_dir).map_err(|e| e.to_string())?;
        // Loading resolves interface indexes in the calling thread's namespace: this runtime
        // thread, like every thread of the agent, is in the host namespace.
        let load_opts = ovl_ebpf::LoadOptions {
            vxlan_port: settings.vxlan_port,
            ..ovl_ebpf::LoadOptions::default()
        };
        let dp = EbpfDatapath::load_with(
            &pin_dir,
            VXLAN_DEVICE,
            settings.advertise_addr,
            mtu,
            &load_opts,
        )
        .map_err(|e| e.to_string())?;
        for w in dp.load_warnings() {
            tracing::warn!(warning = %w, "adopting the pinned eBPF datapath");
        }
        tracing::info!(pin_dir = %pin_dir.display(), mtu, vxlan = VXLAN_DEVICE, "eBPF datapath loaded");
        Ok(EbpfBackend {
            dp: Mutex::new(dp),
            vtep: settings.advertise_addr,
            mtu,
            pin_dir,
            load_opts,
        })
    }

    async fn observe(&self, dp: &EbpfDatapath) -> Result<ObservedEbpf> {
        let state = dp.dump().map_err(bpf_err)?;
        let host = Netlink::open(None).await.map_err(dp_err)?;
        let links = host.links().await.map_err(dp_err)?;
        let vxlan = links
            .iter()
            .find(|l| l.name == VXLAN_DEVICE)
            .map(|l| (l.index, l.up, l.mtu));
        Ok(ObservedEbpf {
            state,
            ports: host_ports(&links),
            vxlan,
        })
    }

    /// Loads the fast path again over the same pin dir (adopting maps and links), which
    /// recreates or repairs the vxlan device.
    fn reload(&self, dp: &mut EbpfDatapath) -> Result<()> {
        let fresh = EbpfDatapath::load_with(
            &self.pin_dir,
            VXLAN_DEVICE,
            self.vtep,
            self.mtu,
            &self.load_opts,
        )
        .map_err(bpf_err)?;
        for w in fresh.load_warnings() {
            tracing::warn!(warning = %w, "reloading the eBPF datapath");
        }
        *dp = fresh;
        Ok(())
    }

    async fn apply_one(&self, dp: &mut EbpfDatapath, host: &Netlink, op: &EbpfOp) -> Result<()> {
        match op {
            EbpfOp::RemoveEndpoint { ifindex, .. } => {
                let r = dp.detach_endpoint(*ifindex).map_err(bpf_err);
                host.del_link(*ifindex).await.map_err(dp_err)?;
                r
            }
            EbpfOp::ForgetEndpoint { ifindex, .. } => dp.detach_endpoint(*ifindex).map_err(bpf_err),
            EbpfOp::ProgramEndpoint { ifindex, info, .. } => {
                dp.attach_endpoint(*ifindex, *info).map_err(bpf_err)
            }
            EbpfOp::DelRemote { vni, mac, .. } => dp.del_remote(*vni, mac.0).map_err(bpf_err),
            EbpfOp::SetRemote {
                vni, mac, ip, vtep, ..
            } => dp.set_remote(*vni, mac.0, *ip, *vtep).map_err(bpf_err),
            EbpfOp::SetFlood { vni, vteps, .. } => dp.set_flood(*vni, vteps).map_err(bpf_err),
        }
    }

    fn check_spec(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<()> {
        spec.validate().map_err(dp_err)?;
        ep.validate(spec).map_err(dp_err)?;
        if spec.local_vtep != self.vtep {
            return Err(AgentError::Invalid(format!(
                "network {}: local VTEP {} is not this host's ({})",
                spec.name, spec.local_vtep, self.vtep
            )));
        }
        if ep.mtu > self.mtu {
            return Err(AgentError::Invalid(format!(
                "endpoint {}: MTU {} is above the overlay MTU {} (underlay MTU - {}): the eBPF \
                 path cannot fragment",
                ep.endpoint_id,
                ep.mtu,
                self.mtu,
                ovl_ebpf::VXLAN_OVERHEAD
            )));
        }
        Ok(())
    }
}

/// The host ends of endpoints among `links`.
fn host_ports(links: &[Link]) -> Vec<HostPort> {
    links
        .iter()
        .filter_map(|l| {
            let alias = PortAlias::parse(l.alias.as_deref()?)?;
            Some(HostPort {
                index: l.index,
                name: l.name.clone(),
                alias,
            })
        })
        .collect()
}

/// Configures the container end: alias, MAC, MTU, exactly the endpoint's address, up, `lo` up.
async fn configure_container_end(
    ct: &Netlink,
    c: &Link,
    ep: &EndpointSpec,
    alias: &str,
) -> Result<()> {
    if c.alias.as_deref() != Some(alias) {
        ct.set_alias(c.index, alias).await.map_err(dp_err)?;
    }
    if c.mac != Some(ep.mac) {
        ct.set_mac(c.index, ep.mac).await.map_err(dp_err)?;
    }
    if c.mtu != ep.mtu {
        ct.set_mtu(c.index, ep.mtu).await.map_err(dp_err)?;
    }
    let addrs = ct.addrs_v4(c.index).await.map_err(dp_err)?;
    for (ip, len) in &addrs {
        if (*ip, *len) != (ep.ip, ep.prefix_len) {
            ct.del_addr_v4(c.index, *ip, *len).await.map_err(dp_err)?;
        }
    }
    if !addrs.contains(&(ep.ip, ep.prefix_len)) {
        ct.add_addr_v4(c.index, ep.ip, ep.prefix_len)
            .await
            .map_err(dp_err)?;
    }
    if !c.up {
        ct.set_up(c.index).await.map_err(dp_err)?;
    }
    if let Some(lo) = ct.link_by_name("lo").await.map_err(dp_err)?
        && !lo.up
    {
        ct.set_up(lo.index).await.map_err(dp_err)?;
    }
    Ok(())
}

/// Configures the host end: alias, MTU, up.
async fn configure_host_end(host: &Netlink, p: &Link, mtu: u32, alias: &str) -> Result<()> {
    if p.alias.as_deref() != Some(alias) {
        host.set_alias(p.index, alias).await.map_err(dp_err)?;
    }
    if p.mtu != mtu {
        host.set_mtu(p.index, mtu).await.map_err(dp_err)?;
    }
    if !p.up {
        host.set_up(p.index).await.map_err(dp_err)?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Datapath for EbpfBackend {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    async fn converge(&self, desired: &Desired) -> Result<Converged> {
        let mut dp = self.dp.lock().await;
        let mut out = Converged::default();
        let mut have = self.observe(&dp).await?;
        if let Some(reason) = vxlan_drift(&have, self.mtu) {
            tracing::warn!(%reason, "repairing the eBPF datapath");
            match self.reload(&mut dp) {
                Ok(()) => out.applied += 1,
                Err(e) => out.failed.push(format!("reload datapath ({reason}): {e}")),
            }
            have = self.observe(&dp).await?;
        }
        let ops = plan(desired, &have, self.vtep);
        if ops.is_empty() {
            return Ok(out);
        }
        let host = Netlink::open(None).await.map_err(dp_err)?;
        for op in &ops {
            tracing::debug!(%op, "applying");
            match self.apply_one(&mut dp, &host, op).await {
                Ok(()) => out.applied += 1,
                Err(e) => out.failed.push(format!("{op}: {e}")),
            }
        }
        Ok(out)
    }

    async fn report(&self, desired: &Desired) -> Result<BTreeMap<String, NetReport>> {
        let dp = self.dp.lock().await;
        let have = self.observe(&dp).await?;
        drop(dp);
        let mut out: BTreeMap<String, NetReport> = BTreeMap::new();
        for (name, lines) in actual_lines(desired, &have) {
            out.entry(name).or_default().actual = lines;
        }
        if let Some(reason) = vxlan_drift(&have, self.mtu) {
            for n in desired.networks.keys() {
                out.entry(n.clone())
                    .or_default()
                    .diff
                    .push(format!("{n}: reload datapath ({reason})"));
            }
        }
        for op in plan(desired, &have, self.vtep) {
            out.entry(op.network().to_string())
                .or_default()
                .diff
                .push(op.to_string());
        }
        Ok(out)
    }

    async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        self.check_spec(spec, ep)?;
        let ct_file = open_netns(&ep.netns).map_err(|e| match e {
            ovl_datapath::Error::NotFound(_) => AgentError::Invalid(format!(
                "endpoint {}: container network namespace {} does not exist",
                ep.endpoint_id,
                ep.netns.display()
            )),
            other => dp_err(other),
        })?;
        if netns_id(&ep.netns).map_err(dp_err)?
            == netns_id(&current_netns_path()).map_err(dp_err)?
        {
            return Err(AgentError::Invalid(format!(
                "endpoint {}: {} is the host network namespace",
                ep.endpoint_id,
                ep.netns.display()
            )));
        }
        let alias = PortAlias {
            network: spec.name.clone(),
            id: ep.endpoint_id.clone(),
            vni: spec.vni,
            ip: ep.ip,
            prefix_len: ep.prefix_len,
            mac: ep.mac,
        };
        let alias_s = alias.render();
        let ct_alias = alias.render_container();
        let info = alias.info();
        let host_ifname = host_port_name(spec.vni, &ep.endpoint_id);

        let mut dp = self.dp.lock().await;
        let have = self.observe(&dp).await?;
        let host = Netlink::open(None).await.map_err(dp_err)?;
        let ct = Netlink::open(Some(&ep.netns)).await.map_err(dp_err)?;

        // Checks before changing anything.
        let mine: Vec<&HostPort> = have
            .ports
            .iter()
            .filter(|p| p.alias.network == spec.name && p.alias.id == ep.endpoint_id)
            .collect();
        for p in &have.ports {
            if p.alias.vni != spec.vni || mine.iter().any(|m| m.index == p.index) {
                continue;
            }
            if p.alias.ip == ep.ip {
                return Err(AgentError::Conflict(format!(
                    "address {} is already used by endpoint {} on network {}",
                    ep.ip, p.alias.id, spec.name
                )));
            }
            if p.alias.mac == ep.mac {
                return Err(AgentError::Conflict(format!(
                    "MAC {} is already used by endpoint {} on network {}",
                    ep.mac, p.alias.id, spec.name
                )));
            }
        }
        if let Some(l) = host.link_by_name(&host_ifname).await.map_err(dp_err)?
            && !mine.iter().any(|m| m.index == l.index)
        {
            return Err(AgentError::Conflict(format!(
                "interface {host_ifname} exists in the host namespace and is not endpoint {}'s",
                ep.endpoint_id
            )));
        }
        let ct_links = ct.links().await.map_err(dp_err)?;
        let ct_mine = ct_links.iter().find(|l| {
            l.alias
                .as_deref()
                .and_then(PortAlias::parse_container)
                .is_some_and(|a| a.network == spec.name && a.id == ep.endpoint_id)
        });

        if let (Some(port), Some(c)) = (mine.first(), ct_mine) {
            // Already attached to this container: converge and report the same result.
            if let Some(want) = &ep.ifname
                && want != &c.name
            {
                return Err(AgentError::Conflict(format!(
                    "endpoint {} is already attached as {} (requested {want})",
                    ep.endpoint_id, c.name
                )));
            }
            let p = host
                .link_by_name(&port.name)
                .await
                .map_err(dp_err)?
                .ok_or_else(|| AgentError::Datapath(format!("{} vanished", port.name)))?;
            configure_host_end(&host, &p, ep.mtu, &alias_s).await?;
            configure_container_end(&ct, c, ep, &ct_alias).await?;
            if have.remotes_has(spec.vni, ep.mac) {
                dp.del_remote(spec.vni, ep.mac.0).map_err(bpf_err)?;
            }
            dp.attach_endpoint(p.index, info).map_err(bpf_err)?;
            return Ok(Attached {
                ifname: c.name.clone(),
                host_ifname: port.name.clone(),
                mac: ep.mac,
            });
        }

        let ifname = match &ep.ifname {
            Some(n) => {
                if ct_links.iter().any(|l| &l.name == n) {
                    return Err(AgentError::Conflict(format!(
                        "endpoint {}: interface {n} already exists in {}",
                        ep.endpoint_id,
                        ep.netns.display()
                    )));
                }
                n.clone()
            }
            None => {
                let names: Vec<String> = ct_links.iter().map(|l| l.name.clone()).collect();
                free_ifname(&names, "eth")
            }
        };

        // Leftovers of an earlier attach (another container, or interrupted).
        for p in &mine {
            let _ = dp.detach_endpoint(p.index);
            host.del_link(p.index).await.map_err(dp_err)?;
        }
        let tmp = temp_name(spec.vni, &ep.endpoint_id);
        for nl in [&host, &ct] {
            if let Some(left) = nl.link_by_name(&tmp).await.map_err(dp_err)? {
                nl.del_link(left.index).await.map_err(dp_err)?;
            }
        }
        // IPAM in the KV is authoritative: a remote entry claiming this MAC is stale.
        if have.remotes_has(spec.vni, ep.mac) {
            dp.del_remote(spec.vni, ep.mac.0).map_err(bpf_err)?;
        }

        host.create_veth(
            &host_ifname,
            ep.mtu,
            &VethPeer {
                name: &tmp,
                netns: Some(ct_file.as_fd()),
                mac: Some(ep.mac),
                mtu: Some(ep.mtu),
            },
        )
        .await
        .map_err(dp_err)?;
        let result: Result<u32> = async {
            let p = host
                .link_by_name(&host_ifname)
                .await
                .map_err(dp_err)?
                .ok_or_else(|| AgentError::Datapath(format!("{host_ifname} vanished")))?;
            configure_host_end(&host, &p, ep.mtu, &alias_s).await?;
            let c = ct
                .link_by_name(&tmp)
                .await
                .map_err(dp_err)?
                .ok_or_else(|| {
                    AgentError::Datapath(format!("{tmp} not found in {}", ep.netns.display()))
                })?;
            ct.rename(c.index, &ifname).await.map_err(dp_err)?;
            let c = ct
                .link_by_name(&ifname)
                .await
                .map_err(dp_err)?
                .ok_or_else(|| AgentError::Datapath(format!("{ifname} vanished after rename")))?;
            configure_container_end(&ct, &c, ep, &ct_alias).await?;
            dp.attach_endpoint(p.index, info).map_err(bpf_err)?;
            Ok(p.index)
        }
        .await;
        match result {
            Ok(index) => {
                tracing::info!(
                    "attached endpoint {} to {} as {ifname} (host end {host_ifname}, ifindex {index})",
                    ep.endpoint_id,
                    spec.name
                );
                Ok(Attached {
                    ifname,
                    host_ifname,
                    mac: ep.mac,
                })
            }
            Err(e) => {
                // Roll back: the program and map entries, then the pair (deleting one end
                // removes both).
                if let Ok(Some(p)) = host.link_by_name(&host_ifname).await {
                    let _ = dp.detach_endpoint(p.index);
                    let _ = host.del_link(p.index).await;
                }
                Err(e)
            }
        }
    }

    /// For Docker: the veth pair with both ends in the agent's namespace, the container end
    /// named `ep.ifname` (temporary; Docker moves and renames it) with the endpoint's MAC and
    /// MTU, down and without address; the host end programmed like any endpoint. Idempotent:
    /// a host end whose container end already left (moved by Docker) is kept.
    async fn attach_unplugged(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        self.check_spec(spec, ep)?;
        let tmp = ep.ifname.clone().ok_or_else(|| {
            AgentError::Invalid(format!(
                "endpoint {}: a temporary interface name is required",
                ep.endpoint_id
            ))
        })?;
        let host_file = open_netns(&current_netns_path()).map_err(dp_err)?;
        let alias = PortAlias {
            network: spec.name.clone(),
            id: ep.endpoint_id.clone(),
            vni: spec.vni,
            ip: ep.ip,
            prefix_len: ep.prefix_len,
            mac: ep.mac,
        };
        let alias_s = alias.render();
        let ct_alias = alias.render_container();
        let info = alias.info();
        let host_ifname = host_port_name(spec.vni, &ep.endpoint_id);
        let mut dp = self.dp.lock().await;
        let have = self.observe(&dp).await?;
        let host = Netlink::open(None).await.map_err(dp_err)?;
        let mine: Vec<&HostPort> = have
            .ports
            .iter()
            .filter(|p| p.alias.network == spec.name && p.alias.id == ep.endpoint_id)
            .collect();
        for p in &have.ports {
            if p.alias.vni == spec.vni
                && !mine.iter().any(|m| m.index == p.index)
                && (p.alias.ip == ep.ip || p.alias.mac == ep.mac)
            {
                return Err(AgentError::Conflict(format!(
                    "address {} or MAC {} is already used by endpoint {} on network {}",
                    ep.ip, ep.mac, p.alias.id, spec.name
                )));
            }
        }
        let peer = host.link_by_name(&tmp).await.map_err(dp_err)?;
        if let Some(l) = &peer
            && l.alias.as_deref() != Some(ct_alias.as_str())
        {
            return Err(AgentError::Conflict(format!(
                "endpoint {}: interface {tmp} already exists in the host namespace",
                ep.endpoint_id
            )));
        }
        if let Some(l) = host.link_by_name(&host_ifname).await.map_err(dp_err)?
            && !mine.iter().any(|m| m.index == l.index)
        {
            return Err(AgentError::Conflict(format!(
                "interface {host_ifname} exists in the host namespace and is not endpoint {}'s",
                ep.endpoint_id
            )));
        }
        if let Some(port) = mine.first() {
            // Prepared before: converge it (its container end may have moved already).
            let p = host
                .link_by_name(&port.name)
                .await
                .map_err(dp_err)?
                .ok_or_else(|| AgentError::Datapath(format!("{} vanished", port.name)))?;
            configure_host_end(&host, &p, ep.mtu, &alias_s).await?;
            dp.attach_endpoint(p.index, info).map_err(bpf_err)?;
            return Ok(Attached {
                ifname: tmp,
                host_ifname: port.name.clone(),
                mac: ep.mac,
            });
        }
        if let Some(l) = peer {
            host.del_link(l.index).await.map_err(dp_err)?;
        }
        if have.remotes_has(spec.vni, ep.mac) {
            dp.del_remote(spec.vni, ep.mac.0).map_err(bpf_err)?;
        }
        host.create_veth(
            &host_ifname,
            ep.mtu,
            &VethPeer {
                name: &tmp,
                netns: Some(host_file.as_fd()),
                mac: Some(ep.mac),
                mtu: Some(ep.mtu),
            },
        )
        .await
        .map_err(dp_err)?;
        let result: Result<()> = async {
            let p = host
                .link_by_name(&host_ifname)
                .await
                .map_err(dp_err)?
                .ok_or_else(|| AgentError::Datapath(format!("{host_ifname} vanished")))?;
            configure_host_end(&host, &p, ep.mtu, &alias_s).await?;
            let c = host
                .link_by_name(&tmp)
                .await
                .map_err(dp_err)?
                .ok_or_else(|| AgentError::Datapath(format!("{tmp} vanished")))?;
            host.set_alias(c.index, &ct_alias).await.map_err(dp_err)?;
            dp.attach_endpoint(p.index, info).map_err(bpf_err)
        }
        .await;
        if let Err(e) = result {
            if let Ok(Some(p)) = host.link_by_name(&host_ifname).await {
                let _ = dp.detach_endpoint(p.index);
                let _ = host.del_link(p.index).await;
            }
            return Err(e);
        }
        tracing::info!(
            "prepared endpoint {} on {} as {tmp} (host end {host_ifname}) for Docker",
            ep.endpoint_id,
            spec.name
        );
        Ok(Attached {
            ifname: tmp,
            host_ifname,
            mac: ep.mac,
        })
    }

    async fn detach(&self, network: &str, endpoint_id: &str) -> Result<()> {
        ovl_datapath::validate_network_name(network).map_err(dp_err)?;
        ovl_datapath::validate_endpoint_id(endpoint_id).map_err(dp_err)?;
        let mut dp = self.dp.lock().await;
        let host = Netlink::open(None).await.map_err(dp_err)?;
        let ports = host_ports(&host.links().await.map_err(dp_err)?);
        let mut errors = Vec::new();
        for p in ports
            .iter()
            .filter(|p| p.alias.network == network && p.alias.id == endpoint_id)
        {
            if let Err(e) = dp.detach_endpoint(p.index) {
                errors.push(e.to_string());
            }
            if let Err(e) = host.del_link(p.index).await {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AgentError::Datapath(errors.join("; ")))
        }
    }

    async fn details(&self) -> serde_json::Value {
        let dp = self.dp.lock().await;
        let counters = match dp.counters() {
            Ok(c) => counters_json(&c),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        let maps = match dp.dump() {
            Ok(s) => maps_json(&s),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        serde_json::json!({
            "mode": "ebpf",
            "pin_dir": self.pin_dir.display().to_string(),
            "vxlan": { "name": VXLAN_DEVICE, "ifindex": dp.vxlan_ifindex(), "mtu": self.mtu, "local": self.vtep.to_string() },
            "counters": counters,
            "maps": maps,
            "load_warnings": dp.load_warnings(),
        })
    }
}

impl ObservedEbpf {
    fn remotes_has(&self, vni: u32, mac: MacAddr) -> bool {
        self.state.remotes.contains_key(&(vni, mac.0))
    }
}

/// Counters per program (`lxc_egress`: container egress, `vxlan_ingress`: frames the vxlan
/// device decapsulated, `vtep_ingress`: frames decapsulated on the underlay interface) and the
/// drops by reason.
pub fn counters_json(c: &ovl_ebpf::Counters) -> serde_json::Value {
    let mut egress = serde_json::Map::new();
    let mut ingress = serde_json::Map::new();
    let mut underlay = serde_json::Map::new();
    let mut other = serde_json::Map::new();
    let mut drops = serde_json::Map::new();
    let mut total_drops = 0u64;
    for (name, v) in c.entries() {
        if name.contains("_drop_") {
            drops.insert(name.to_string(), v.into());
            total_drops += v;
        }
        if let Some(n) = name.strip_prefix("egress_") {
            egress.insert(n.to_string(), v.into());
        } else if let Some(n) = name.strip_prefix("ingress_") {
            ingress.insert(n.to_string(), v.into());
        } else if let Some(n) = name.strip_prefix("underlay_") {
            underlay.insert(n.to_string(), v.into());
        } else {
            other.insert(name.to_string(), v.into());
        }
    }
    serde_json::json!({
        "lxc_egress": egress,
        "vxlan_ingress": ingress,
        "vtep_ingress": underlay,
        "other": other,
        "drops": drops,
        "drops_total": total_drops,
    })
}

fn maps_json(s: &EbpfState) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = s
        .endpoints
        .iter()
        .map(|(i, e)| serde_json::json!({ "ifindex": i, "vni": e.vni, "mac": MacAddr(e.mac).to_string(), "ip": e.ip.to_string() }))
        .collect();
    let rem: Vec<serde_json::Value> = s
        .remotes
        .iter()
        .map(|((vni, mac), r)| serde_json::json!({ "vni": vni, "mac": MacAddr(*mac).to_string(), "ip": r.ip.to_string(), "vtep": r.vtep.to_string() }))
        .collect();
    let flood: serde_json::Map<String, serde_json::Value> = s
        .flood
        .iter()
        .map(|(vni, l)| {
            (
                vni.to_string(),
                l.iter().map(ToString::to_string).collect::<Vec<_>>().into(),
            )
        })
        .collect();
    let local_flood: serde_json::Map<String, serde_json::Value> = s
        .local_flood
        .iter()
        .map(|(vni, l)| (vni.to_string(), l.clone().into()))
        .collect();
    serde_json::json!({
        "vxlan_ifindex": s.vxlan_ifindex,
        "local_endpoints": eps,
        "remotes": rem,
        "arp_entries": s.arp.len(),
        "flood": flood,
        "local_flood": local_flood,
        "attached_links": s.attached_links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_datapath::{DesiredNetwork, RemotePeer};
    use ovl_ebpf::RemoteInfo;

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
            vxlan_port: ovl_datapath::VXLAN_PORT,
        }
    }

    fn port(index: u32, net: &str, vni: u32, id: &str, last: u8) -> HostPort {
        HostPort {
            index,
            name: host_port_name(vni, id),
            alias: PortAlias {
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
                local_endpoints: local.iter().map(|s| s.to_string()).collect(),
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
                        .insert((vni, mac.0), RemoteInfo { vtep, ip });
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
    fn alias_roundtrip_and_garbage() {
        let a = port(5, "net-1.x", 4097, "c1", 7).alias;
        assert_eq!(
            a.render(),
            "ovl-ebpf:net-1.x c1 4097 10.1.0.7/24 02:42:0a:01:00:07"
        );
        assert_eq!(PortAlias::parse(&a.render()), Some(a.clone()));
        assert_eq!(
            PortAlias::parse_container(&a.render_container()),
            Some(a.clone())
        );
        // The container end's alias is never taken for a host end, and vice versa.
        assert_eq!(PortAlias::parse(&a.render_container()), None);
        assert_eq!(PortAlias::parse_container(&a.render()), None);
        for bad in [
            "",
            "ovl-ep:c1 10.1.0.7/24",
            "ovl-ebpf:n c1 x 10.1.0.7/24 02:42:0a:01:00:07",
            "ovl-ebpf:n c1 1 10.1.0.7/24 02:42:0a:01:00:07 extra",
        ] {
            assert_eq!(PortAlias::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_port_names_are_per_network_and_short() {
        assert_eq!(host_port_name(256, "c1"), "ve-256.c1");
        assert_ne!(host_port_name(256, "c1"), host_port_name(257, "c1"));
        let long = host_port_name(16_000_000, "a-rather-long-container-id");
        assert!(long.len() <= 15, "{long}");
        assert!(temp_name(256, "c1").starts_with("vt") && temp_name(256, "c1").len() <= 15);
        assert_ne!(temp_name(256, "c1"), host_port_name(256, "c1"));
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
                mac: mac(8).0,
                ip: ip(8),
            },
        );
        have.state.flood.insert(777, vec![H2]);
        have.state.remotes.insert(
            (777, mac(7).0),
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
                    host_port_name(256, "gone")
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
                mac: mac(1).0,
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
                format!("other: remove endpoint c1 ({})", host_port_name(300, "c1")),
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

    #[test]
    fn counters_are_grouped_per_program_with_drops() {
        let c = ovl_ebpf::Counters {
            egress_packets: 10,
            egress_drop_spoofed_ip: 3,
            egress_drop_spoofed_mac: 2,
            ingress_packets: 5,
            underlay_decap: 4,
            ..Default::default()
        };
        let j = counters_json(&c);
        assert_eq!(j["lxc_egress"]["packets"], 10);
        assert_eq!(j["lxc_egress"]["drop_spoofed_ip"], 3);
        assert_eq!(j["vxlan_ingress"]["packets"], 5);
        assert_eq!(j["vtep_ingress"]["decap"], 4);
        assert_eq!(j["drops"]["egress_drop_spoofed_mac"], 2);
        assert_eq!(j["drops_total"], 5);
    }
}
