//! The kernel datapath: per network a sandbox namespace (`<run_dir>/netns/<name>`) holding a
//! bridge `br0` and a vxlan device `vxlan0`; per local endpoint a veth pair whose host end is
//! a port of `br0` and whose other end is the container's interface. Remote peers are static
//! FDB + neighbour entries on `vxlan0`, BUM traffic is replicated to every remote VTEP through
//! all-zeros FDB entries.
//!
//! Nothing is torn down on drop: the kernel state outlives the agent, and a new
//! [`KernelDatapath`] over the same run dir adopts it ([`KernelDatapath::observe`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::netlink::{Link, Netlink, VethPeer, VxlanConfig, is_errno};
use crate::netns::{
    create_netns, current_netns_path, is_netns, netns_id, open_netns, remove_netns,
};
use crate::plan::{
    Observed, ObservedBridge, ObservedEndpoint, ObservedNeigh, ObservedNetwork, ObservedVxlan, Op,
};
use crate::types::{
    ALIAS_PREFIX, Attached, EndpointSpec, MacAddr, NetworkSpec, free_ifname, port_name,
    temp_peer_name, temp_vxlan_name, validate_endpoint_id, validate_ifname, validate_network_name,
};

/// Name of the bridge inside each sandbox.
pub const BRIDGE_NAME: &str = "br0";
/// Name of the vxlan device inside each sandbox.
pub const VXLAN_NAME: &str = "vxlan0";

/// Outcome of [`KernelDatapath::apply`]: every op is attempted; failures are collected.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Ops that succeeded.
    pub applied: Vec<Op>,
    /// Ops that failed, with their error.
    pub failed: Vec<(Op, Error)>,
}

impl ApplyReport {
    /// True if every op succeeded.
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// `Ok(())` or all the failures as one error, each labelled with its op.
    pub fn into_result(self) -> Result<()> {
        Error::from_list(
            self.failed
                .into_iter()
                .map(|(op, e)| Error::Op {
                    op: op.to_string(),
                    source: Box::new(e),
                })
                .collect(),
        )
    }
}

/// Metadata stored in a port's ifalias so the port can be mapped back to its endpoint after
/// an agent restart: `ovl-ep:<id> <ip>/<prefix> <mac>`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortAlias {
    id: String,
    ip: Option<(Ipv4Addr, u8)>,
    mac: Option<MacAddr>,
}

impl PortAlias {
    fn render(&self) -> String {
        let mut s = format!("{ALIAS_PREFIX}{}", self.id);
        if let Some((ip, p)) = self.ip {
            s.push_str(&format!(" {ip}/{p}"));
        }
        if let Some(mac) = self.mac {
            s.push_str(&format!(" {mac}"));
        }
        s
    }

    fn parse(alias: &str) -> Option<PortAlias> {
        let rest = alias.strip_prefix(ALIAS_PREFIX)?;
        let mut parts = rest.split_whitespace();
        let id = parts.next()?.to_string();
        let mut out = PortAlias {
            id,
            ip: None,
            mac: None,
        };
        for p in parts {
            if let Some((ip, len)) = p.split_once('/') {
                if let (Ok(ip), Ok(len)) = (ip.parse(), len.parse()) {
                    out.ip = Some((ip, len));
                }
            } else if let Ok(mac) = p.parse() {
                out.mac = Some(mac);
            }
        }
        Some(out)
    }
}

/// The kernel (bridge + vxlan) datapath. Cheap to create; holds no kernel resources itself.
#[derive(Debug)]
pub struct KernelDatapath {
    run_dir: PathBuf,
    host_netns: Option<PathBuf>,
    /// Serializes mutations so two reconcile passes never race on one sandbox.
    lock: Mutex<()>,
}

/// Cached per-network handles during one `apply`.
struct SandboxConn {
    nl: Netlink,
    vxlan: Option<u32>,
}

impl KernelDatapath {
    /// A datapath keeping its sandboxes under `<run_dir>/netns/`. `host_netns` is the
    /// namespace holding the underlay (where vxlan sockets live); `None` is the caller's.
    pub fn new(run_dir: PathBuf, host_netns: Option<PathBuf>) -> Result<Self> {
        if let Some(ns) = &host_netns {
            open_netns(ns)?;
        }
        let dir = run_dir.join("netns");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create sandbox directory", &dir, e))?;
        Ok(KernelDatapath {
            run_dir,
            host_netns,
            lock: Mutex::new(()),
        })
    }

    /// The run dir given to [`KernelDatapath::new`].
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Path of a network's sandbox namespace file.
    pub fn sandbox_path(&self, network: &str) -> PathBuf {
        self.run_dir.join("netns").join(network)
    }

    async fn host(&self) -> Result<Netlink> {
        Netlink::open(self.host_netns.as_deref()).await
    }

    fn host_netns_path(&self) -> PathBuf {
        self.host_netns.clone().unwrap_or_else(current_netns_path)
    }

    // ------------------------------------------------------------------ observe

    /// Reads back everything programmed under this run dir, through netlink dumps.
    pub async fn observe(&self) -> Result<Observed> {
        let dir = self.run_dir.join("netns");
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Observed::default()),
            Err(e) => return Err(Error::io("cannot list sandboxes", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("cannot list sandboxes", &dir, e))?;
            if let Some(name) = entry.file_name().to_str()
                && validate_network_name(name).is_ok()
            {
                names.push(name.to_string());
            }
        }
        let mut observed = Observed::default();
        for name in names {
            let obs = self.observe_network_at(&name).await?;
            observed.networks.insert(name, obs);
        }
        Ok(observed)
    }

    /// Reads back one network; `None` if it has no sandbox file.
    pub async fn observe_network(&self, name: &str) -> Result<Option<ObservedNetwork>> {
        validate_network_name(name)?;
        if !self.sandbox_path(name).exists() {
            return Ok(None);
        }
        self.observe_network_at(name).await.map(Some)
    }

    async fn observe_network_at(&self, name: &str) -> Result<ObservedNetwork> {
        let path = self.sandbox_path(name);
        let mut obs = ObservedNetwork::empty(name, path.clone());
        if !is_netns(&path) {
            return Ok(obs);
        }
        obs.sandbox_ok = true;
        let nl = Netlink::open(Some(&path)).await?;
        let links = nl.links().await?;
        let br = links
            .iter()
            .find(|l| l.name == BRIDGE_NAME && l.kind.as_deref() == Some("bridge"));
        obs.bridge = br.map(|b| ObservedBridge {
            index: b.index,
            mtu: b.mtu,
            up: b.up,
            mcast_snooping: b.bridge_mcast_snooping,
        });
        let br_index = br.map(|b| b.index);
        if let Some(vx) = links
            .iter()
            .find(|l| l.name == VXLAN_NAME && l.kind.as_deref() == Some("vxlan"))
        {
            let info = vx.vxlan.clone().unwrap_or_default();
            obs.vxlan = Some(ObservedVxlan {
                index: vx.index,
                vni: info.vni,
                local: info.local,
                port: info.port,
                learning: info.learning,
                proxy: info.proxy,
                mtu: vx.mtu,
                up: vx.up,
                enslaved: br_index.is_some() && vx.master == br_index,
            });
            for e in nl.fdb_dump(vx.index).await? {
                let Some(dst) = e.dst else { continue };
                if e.mac.is_zero() {
                    obs.flood.insert(dst);
                } else {
                    obs.fdb.insert((e.mac, dst));
                }
            }
            for n in nl.neigh_dump_v4(vx.index).await? {
                obs.neigh.insert(ObservedNeigh {
                    ip: n.ip,
                    mac: n.mac,
                    permanent: n.permanent,
                });
            }
        }
        for l in &links {
            if let Some(alias) = l.alias.as_deref().and_then(PortAlias::parse) {
                obs.endpoints.insert(
                    alias.id.clone(),
                    ObservedEndpoint {
                        host_ifname: l.name.clone(),
                        index: l.index,
                        ip: alias.ip.map(|(ip, _)| ip),
                        mac: alias.mac,
                        healthy: l.up && br_index.is_some() && l.master == br_index,
                    },
                );
            }
        }
        Ok(obs)
    }

    // ------------------------------------------------------------------ apply

    /// Applies `ops` in order. Every op is attempted (idempotently); failures are collected
    /// in the report rather than stopping the run.
    pub async fn apply(&self, ops: &[Op]) -> ApplyReport {
        let _guard = self.lock.lock().await;
        let mut report = ApplyReport::default();
        let mut conns: HashMap<String, SandboxConn> = HashMap::new();
        for op in ops {
            match self.apply_one(op, &mut conns).await {
                Ok(()) => report.applied.push(op.clone()),
                Err(e) => {
                    tracing::warn!("datapath op failed: {op}: {e}");
                    report.failed.push((op.clone(), e));
                }
            }
        }
        report
    }

    async fn sandbox_conn<'a>(
        &self,
        network: &str,
        conns: &'a mut HashMap<String, SandboxConn>,
    ) -> Result<&'a SandboxConn> {
        if !conns.contains_key(network) {
            let path = self.sandbox_path(network);
            if !is_netns(&path) {
                return Err(Error::NotFound(format!("network {network} has no sandbox")));
            }
            let nl = Netlink::open(Some(&path)).await?;
            let vxlan = nl.link_by_name(VXLAN_NAME).await?.map(|l| l.index);
            conns.insert(network.to_string(), SandboxConn { nl, vxlan });
        }
        Ok(&conns[network])
    }

    async fn vxlan_conn<'a>(
        &self,
        network: &str,
        conns: &'a mut HashMap<String, SandboxConn>,
    ) -> Result<(&'a Netlink, u32)> {
        let c = self.sandbox_conn(network, conns).await?;
        let idx = c
            .vxlan
            .ok_or_else(|| Error::NotFound(format!("network {network} has no {VXLAN_NAME}")))?;
        Ok((&c.nl, idx))
    }

    async fn apply_one(&self, op: &Op, conns: &mut HashMap<String, SandboxConn>) -> Result<()> {
        match op {
            Op::CreateNetwork { spec } | Op::RepairNetwork { spec, .. } => {
                conns.remove(&spec.name);
                self.ensure_network_locked(spec).await
            }
            Op::DeleteNetwork { network } => {
                conns.remove(network);
                self.remove_network_locked(network).await
            }
            Op::AddFdb { network, mac, vtep } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                nl.fdb_replace(idx, *mac, *vtep).await
            }
            Op::DelFdb { network, mac, vtep } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                nl.fdb_del(idx, *mac, *vtep).await
            }
            Op::AddFlood { network, vtep } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                nl.fdb_append(idx, MacAddr::ZERO, *vtep).await
            }
            Op::DelFlood { network, vtep } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                nl.fdb_del(idx, MacAddr::ZERO, *vtep).await
            }
            Op::AddNeigh { network, ip, mac } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                nl.neigh_replace_v4(idx, *ip, *mac).await
            }
            Op::DelNeigh { network, ip } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                nl.neigh_del_v4(idx, *ip).await
            }
            Op::RemoveEndpointPort {
                network,
                endpoint_id,
            } => {
                let c = self.sandbox_conn(network, conns).await?;
                remove_port(&c.nl, endpoint_id).await
            }
        }
    }

    // ------------------------------------------------------------------ networks

    /// Creates or repairs a network's sandbox, bridge and vxlan device. Idempotent; a vxlan
    /// device with the wrong VNI/local/port/flags is recreated (losing its FDB, which the
    /// next reconcile pass restores).
    pub async fn ensure_network(&self, spec: &NetworkSpec) -> Result<()> {
        spec.validate()?;
        let _guard = self.lock.lock().await;
        self.ensure_network_locked(spec).await
    }

    async fn ensure_network_locked(&self, spec: &NetworkSpec) -> Result<()> {
        spec.validate()?;
        let path = self.sandbox_path(&spec.name);
        if path.exists() && !is_netns(&path) {
            // A leftover file whose namespace is gone (reboot, interrupted create).
            remove_netns(&path)?;
        }
        if !path.exists() {
            create_netns(&path)?;
            tracing::info!("created sandbox {}", path.display());
        }
        let sb = Netlink::open(Some(&path)).await?;
        if let Some(lo) = sb.link_by_name("lo").await?
            && !lo.up
        {
            sb.set_up(lo.index).await?;
        }

        // Bridge.
        let br = match sb.link_by_name(BRIDGE_NAME).await? {
            Some(l) if l.kind.as_deref() == Some("bridge") => l,
            Some(l) => {
                return Err(Error::Conflict(format!(
                    "{} in sandbox {} is a {:?}, not a bridge",
                    BRIDGE_NAME, spec.name, l.kind
                )));
            }
            None => {
                sb.create_bridge(BRIDGE_NAME, spec.mtu, false).await?;
                sb.link_by_name(BRIDGE_NAME).await?.ok_or_else(|| {
                    Error::NotFound(format!("{BRIDGE_NAME} vanished after create"))
                })?
            }
        };
        if br.mtu != spec.mtu {
            sb.set_mtu(br.index, spec.mtu).await?;
        }
        if br.bridge_mcast_snooping != Some(false) {
            sb.set_bridge_mcast_snooping(br.index, BRIDGE_NAME, false)
                .await?;
        }
        if !br.up {
            sb.set_up(br.index).await?;
        }

        // Vxlan device.
        let mut vx = sb.link_by_name(VXLAN_NAME).await?;
        if let Some(l) = &vx
            && !vxlan_matches(l, spec)
        {
            tracing::info!("recreating {VXLAN_NAME} of {}: config changed", spec.name);
            sb.del_link(l.index).await?;
            vx = None;
        }
        let vx = match vx {
            Some(l) => l,
            None => self.create_vxlan_into(&sb, &path, spec).await?,
        };
        if vx.mtu != spec.mtu {
            sb.set_mtu(vx.index, spec.mtu).await?;
        }
        if vx.master != Some(br.index) {
            sb.set_master(vx.index, br.index).await?;
        }
        if !vx.up {
            sb.set_up(vx.index).await?;
        }

        // Endpoint ports that lost their bridge (br0 recreated) or were set down.
        for l in sb.links().await? {
            if l.alias.as_deref().and_then(PortAlias::parse).is_some() {
                if l.master != Some(br.index) {
                    sb.set_master(l.index, br.index).await?;
                }
                if !l.up {
                    sb.set_up(l.index).await?;
                }
            }
        }
        Ok(())
    }

    /// Creates the vxlan device in the host namespace (so its UDP socket is bound where the
    /// underlay is), moves it into the sandbox and renames it to `vxlan0`.
    async fn create_vxlan_into(
        &self,
        sb: &Netlink,
        sandbox: &Path,
        spec: &NetworkSpec,
    ) -> Result<Link> {
        let tmp = temp_vxlan_name(spec.vni);
        // Adopt a device moved in by an interrupted earlier attempt.
        let moved = match sb.link_by_name(&tmp).await? {
            Some(l) if vxlan_matches(&l, spec) => Some(l),
            Some(l) => {
                sb.del_link(l.index).await?;
                None
            }
            None => None,
        };
        let link = match moved {
            Some(l) => l,
            None => {
                let host = self.host().await?;
                if let Some(old) = host.link_by_name(&tmp).await? {
                    // Leftover of an interrupted create: it would hold the VNI.
                    host.del_link(old.index).await?;
                }
                let cfg = VxlanConfig {
                    vni: spec.vni,
                    local: spec.local_vtep,
                    port: spec.vxlan_port,
                    mtu: spec.mtu,
                };
                if let Err(e) = host.create_vxlan(&tmp, &cfg).await {
                    if is_errno(&e, libc::EEXIST) {
                        return Err(Error::Conflict(format!(
                            "network {}: a vxlan device with VNI {} and local {} already exists \
                             on this host ({e})",
                            spec.name, spec.vni, spec.local_vtep
                        )));
                    }
                    return Err(e);
                }
                let created = host
                    .link_by_name(&tmp)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("{tmp} vanished after create")))?;
                let ns = File::open(sandbox)
                    .map_err(|e| Error::io("cannot open sandbox", sandbox, e))?;
                if let Err(e) = host.move_to_netns(created.index, ns.as_fd()).await {
                    let _ = host.del_link(created.index).await;
                    return Err(e);
                }
                sb.link_by_name(&tmp).await?.ok_or_else(|| {
                    Error::NotFound(format!("{tmp} not found in sandbox after move"))
                })?
            }
        };
        sb.rename(link.index, VXLAN_NAME).await?;
        sb.link_by_name(VXLAN_NAME)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{VXLAN_NAME} not found after rename")))
    }

    /// Removes a network's sandbox and everything in it (vxlan device, bridge, endpoint
    /// ports; the container ends of the ports disappear with them). Missing is fine. Every
    /// step is attempted; all failures are reported.
    pub async fn remove_network(&self, name: &str) -> Result<()> {
        validate_network_name(name)?;
        let _guard = self.lock.lock().await;
        self.remove_network_locked(name).await
    }

    async fn remove_network_locked(&self, name: &str) -> Result<()> {
        let path = self.sandbox_path(name);
        if !path.exists() {
            return Ok(());
        }
        let mut errors = Vec::new();
        if is_netns(&path) {
            // Delete links explicitly: namespace teardown is asynchronous, and the vxlan
            // device holds its VNI on the host's UDP socket until it is gone.
            match Netlink::open(Some(&path)).await {
                Ok(sb) => match sb.links().await {
                    Ok(links) => {
                        let mut order: Vec<&Link> =
                            links.iter().filter(|l| l.name != "lo").collect();
                        order.sort_by_key(|l| match l.kind.as_deref() {
                            Some("vxlan") => 0,
                            Some("veth") => 1,
                            _ => 2,
                        });
                        for l in order {
                            if let Err(e) = sb.del_link(l.index).await {
                                errors.push(e);
                            }
                        }
                    }
                    Err(e) => errors.push(e),
                },
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = remove_netns(&path) {
            errors.push(e);
        }
        Error::from_list(errors)
    }

    // ------------------------------------------------------------------ endpoints

    /// Connects a container to a network: a veth pair whose host end is a port of `br0`
    /// and whose other end becomes `ep.ifname` (or `eth0`/next free `ethN`) in the container,
    /// with the MAC, address and MTU given, up, and `lo` up. Creates the network if needed.
    ///
    /// Idempotent: attaching an existing endpoint again converges it and returns the same
    /// [`Attached`]. Bad input (invalid fields, missing container namespace, an address or
    /// MAC already used on the network, a taken interface name) fails before any change.
    pub async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        spec.validate()?;
        ep.validate(spec)?;
        let ct_file = open_netns(&ep.netns).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "endpoint {}: container network namespace {} does not exist",
                ep.endpoint_id,
                ep.netns.display()
            )),
            other => other,
        })?;
        let ct_id = netns_id(&ep.netns)?;
        if ct_id == netns_id(&self.host_netns_path())? {
            return Err(Error::InvalidInput(format!(
                "endpoint {}: {} is the host network namespace",
                ep.endpoint_id,
                ep.netns.display()
            )));
        }
        let _guard = self.lock.lock().await;
        let sandbox = self.sandbox_path(&spec.name);
        if is_netns(&sandbox) && netns_id(&sandbox)? == ct_id {
            return Err(Error::InvalidInput(format!(
                "endpoint {}: {} is the network sandbox",
                ep.endpoint_id,
                ep.netns.display()
            )));
        }

        let ct = Netlink::open(Some(&ep.netns)).await?;
        let marker = PortAlias {
            id: ep.endpoint_id.clone(),
            ip: Some((ep.ip, ep.prefix_len)),
            mac: Some(ep.mac),
        };
        let host_ifname = port_name(&ep.endpoint_id);

        // Checks against what exists, before changing anything.
        let mut existing_port: Option<Link> = None;
        let mut stale: Vec<Op> = Vec::new();
        if is_netns(&sandbox) {
            let obs = self.observe_network_at(&spec.name).await?;
            check_conflicts(&obs, spec, ep)?;
            stale = stale_remote_entries(&obs, ep);
            let sb = Netlink::open(Some(&sandbox)).await?;
            existing_port = sb.link_by_name(&host_ifname).await?;
            if let Some(p) = &existing_port {
                let owner = p.alias.as_deref().and_then(PortAlias::parse);
                if owner.as_ref().map(|o| o.id.as_str()) != Some(ep.endpoint_id.as_str()) {
                    return Err(Error::Conflict(format!(
                        "port {host_ifname} in network {} belongs to {:?}, not endpoint {}",
                        spec.name,
                        owner.map(|o| o.id),
                        ep.endpoint_id
                    )));
                }
            }
        }
        let ct_links = ct.links().await?;
        let mine = ct_links.iter().find(|l| {
            l.alias
                .as_deref()
                .and_then(PortAlias::parse)
                .is_some_and(|a| a.id == ep.endpoint_id)
        });
        if let (Some(_), Some(c)) = (&existing_port, mine) {
            // Already attached to this container: converge and report.
            if let Some(want) = &ep.ifname
                && want != &c.name
            {
                return Err(Error::Conflict(format!(
                    "endpoint {} is already attached as {} (requested {want})",
                    ep.endpoint_id, c.name
                )));
            }
            self.ensure_network_locked(spec).await?;
            let sb = Netlink::open(Some(&sandbox)).await?;
            let port = sb
                .link_by_name(&host_ifname)
                .await?
                .ok_or_else(|| Error::NotFound(format!("port {host_ifname} vanished")))?;
            configure_port(&sb, &port, ep.mtu, &marker).await?;
            configure_container_end(&ct, c, ep, &marker).await?;
            return Ok(Attached {
                ifname: c.name.clone(),
                host_ifname,
                mac: ep.mac,
            });
        }
        let ifname = match &ep.ifname {
            Some(n) => {
                if ct_links.iter().any(|l| &l.name == n) {
                    return Err(Error::Conflict(format!(
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

        self.ensure_network_locked(spec).await?;
        if !stale.is_empty() {
            tracing::warn!(
                "endpoint {}: removing remote entries that claim its address/MAC: {}",
                ep.endpoint_id,
                stale
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let mut conns = HashMap::new();
            for op in &stale {
                self.apply_one(op, &mut conns).await?;
            }
        }
        let sb = Netlink::open(Some(&sandbox)).await?;
        if let Some(old) = sb.link_by_name(&host_ifname).await? {
            // The port of an earlier attach whose container end is not in this container.
            sb.del_link(old.index).await?;
        }
        let tmp = temp_peer_name(&ep.endpoint_id);
        for nl in [&sb, &ct] {
            if let Some(left) = nl.link_by_name(&tmp).await? {
                nl.del_link(left.index).await?;
            }
        }
        sb.create_veth(
            &host_ifname,
            ep.mtu,
            &VethPeer {
                name: &tmp,
                netns: Some(ct_file.as_fd()),
                mac: Some(ep.mac),
                mtu: Some(ep.mtu),
            },
        )
        .await?;
        let result = async {
            let port = sb
                .link_by_name(&host_ifname)
                .await?
                .ok_or_else(|| Error::NotFound(format!("port {host_ifname} vanished")))?;
            configure_port(&sb, &port, ep.mtu, &marker).await?;
            let c = ct.link_by_name(&tmp).await?.ok_or_else(|| {
                Error::NotFound(format!("{tmp} not found in {}", ep.netns.display()))
            })?;
            ct.rename(c.index, &ifname).await?;
            let c = ct
                .link_by_name(&ifname)
                .await?
                .ok_or_else(|| Error::NotFound(format!("{ifname} vanished after rename")))?;
            configure_container_end(&ct, &c, ep, &marker).await
        }
        .await;
        if let Err(e) = result {
            // Roll back: deleting the host end removes the pair.
            if let Ok(Some(p)) = sb.link_by_name(&host_ifname).await {
                let _ = sb.del_link(p.index).await;
            }
            return Err(e);
        }
        tracing::info!(
            "attached endpoint {} to {} as {ifname} (port {host_ifname})",
            ep.endpoint_id,
            spec.name
        );
        Ok(Attached {
            ifname,
            host_ifname,
            mac: ep.mac,
        })
    }

    /// For Docker's remote driver: creates the endpoint's veth pair with the host end as a
    /// port of the network's bridge in its sandbox, and the container end left in the host
    /// namespace (the one holding the underlay) under the temporary name `ep.ifname`, with the
    /// endpoint's MAC and MTU but no address and down: libnetwork moves it into the container,
    /// renames it and configures the address itself. `ep.netns` is not touched (the sandbox
    /// path dockerd gives may not exist yet in our view); it is only recorded by the caller.
    ///
    /// Idempotent: if the port and the temporary interface both exist for this endpoint, they
    /// are converged and reused; otherwise a leftover half (a port whose other end is gone, or a
    /// temporary interface of this endpoint) is replaced by a new pair. Bad input (invalid
    /// fields, no temporary name, an address or MAC used by another local endpoint, a foreign
    /// interface holding the temporary name) fails before any change.
    pub async fn attach_unplugged(
        &self,
        spec: &NetworkSpec,
        ep: &EndpointSpec,
    ) -> Result<Attached> {
        spec.validate()?;
        ep.validate(spec)?;
        let tmp = ep.ifname.clone().ok_or_else(|| {
            Error::InvalidInput(format!(
                "endpoint {}: a temporary interface name is required",
                ep.endpoint_id
            ))
        })?;
        let host_path = self.host_netns_path();
        let host_file = open_netns(&host_path)?;
        let _guard = self.lock.lock().await;
        let marker = PortAlias {
            id: ep.endpoint_id.clone(),
            ip: Some((ep.ip, ep.prefix_len)),
            mac: Some(ep.mac),
        };
        let host_ifname = port_name(&ep.endpoint_id);
        let sandbox = self.sandbox_path(&spec.name);
        if is_netns(&sandbox) {
            let obs = self.observe_network_at(&spec.name).await?;
            check_conflicts(&obs, spec, ep)?;
        }
        let host = self.host().await?;
        if let Some(l) = host.link_by_name(&tmp).await? {
            let owner = l.alias.as_deref().and_then(PortAlias::parse);
            if owner.as_ref().map(|o| o.id.as_str()) != Some(ep.endpoint_id.as_str()) {
                return Err(Error::Conflict(format!(
                    "endpoint {}: interface {tmp} already exists in the host namespace",
                    ep.endpoint_id
                )));
            }
        }
        self.ensure_network_locked(spec).await?;
        let sb = Netlink::open(Some(&sandbox)).await?;
        let port = sb.link_by_name(&host_ifname).await?;
        let peer = host.link_by_name(&tmp).await?;
        if let (Some(p), Some(_)) = (&port, &peer) {
            configure_port(&sb, p, ep.mtu, &marker).await?;
            return Ok(Attached {
                ifname: tmp,
                host_ifname,
                mac: ep.mac,
            });
        }
        if let Some(p) = port {
            // A port from an earlier attempt whose other end is gone or elsewhere: start over.
            sb.del_link(p.index).await?;
        }
        if let Some(l) = peer {
            host.del_link(l.index).await?;
        }
        sb.create_veth(
            &host_ifname,
            ep.mtu,
            &VethPeer {
                name: &tmp,
                netns: Some(host_file.as_fd()),
                mac: Some(ep.mac),
                mtu: Some(ep.mtu),
            },
        )
        .await?;
        let result = async {
            let port = sb
                .link_by_name(&host_ifname)
                .await?
                .ok_or_else(|| Error::NotFound(format!("port {host_ifname} vanished")))?;
            configure_port(&sb, &port, ep.mtu, &marker).await?;
            let c = host
                .link_by_name(&tmp)
                .await?
                .ok_or_else(|| Error::NotFound(format!("{tmp} not found in the host namespace")))?;
            host.set_alias(c.index, &marker.render()).await
        }
        .await;
        if let Err(e) = result {
            if let Ok(Some(p)) = sb.link_by_name(&host_ifname).await {
                let _ = sb.del_link(p.index).await;
            }
            return Err(e);
        }
        tracing::info!(
            "prepared endpoint {} on {} as {tmp} (port {host_ifname}) for Docker",
            ep.endpoint_id,
            spec.name
        );
        Ok(Attached {
            ifname: tmp,
            host_ifname,
            mac: ep.mac,
        })
    }

    /// Removes the temporary container end of an unplugged endpoint if it is still in the
    /// host namespace (Docker never moved it). Idempotent.
    pub async fn remove_unplugged(&self, endpoint_id: &str, tmp: &str) -> Result<()> {
        validate_endpoint_id(endpoint_id)?;
        validate_ifname(tmp)?;
        let _guard = self.lock.lock().await;
        let host = self.host().await?;
        if let Some(l) = host.link_by_name(tmp).await? {
            let owner = l.alias.as_deref().and_then(PortAlias::parse);
            if owner.is_some_and(|o| o.id == endpoint_id) {
                host.del_link(l.index).await?;
            }
        }
        Ok(())
    }

    /// Removes an endpoint's port (and with it the container interface). Idempotent.
    pub async fn detach(&self, network: &str, endpoint_id: &str) -> Result<()> {
        validate_network_name(network)?;
        validate_endpoint_id(endpoint_id)?;
        let _guard = self.lock.lock().await;
        let path = self.sandbox_path(network);
        if !is_netns(&path) {
            return Ok(());
        }
        let sb = Netlink::open(Some(&path)).await?;
        remove_port(&sb, endpoint_id).await
    }

    /// The local endpoints of a network as recorded on their ports: id -> (ip, mac).
    pub async fn endpoints(&self, network: &str) -> Result<BTreeMap<String, ObservedEndpoint>> {
        Ok(self
            .observe_network(network)
            .await?
            .map(|o| o.endpoints)
            .unwrap_or_default())
    }
}

fn vxlan_matches(l: &Link, spec: &NetworkSpec) -> bool {
    let Some(v) = &l.vxlan else { return false };
    l.kind.as_deref() == Some("vxlan")
        && v.vni == Some(spec.vni)
        && v.local == Some(spec.local_vtep)
        && v.port == Some(spec.vxlan_port)
        && v.learning == Some(false)
        && v.proxy == Some(true)
}

/// Another local endpoint with the same address or MAC is an error. Remote peer entries with
/// them are not checked here: IPAM in the KV is authoritative, so such entries are stale
/// (the address was just reused) and [`stale_remote_entries`] removes them.
fn check_conflicts(obs: &ObservedNetwork, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<()> {
    for (id, other) in &obs.endpoints {
        if id == &ep.endpoint_id {
            continue;
        }
        if other.ip == Some(ep.ip) {
            return Err(Error::Conflict(format!(
                "address {} is already used by endpoint {id} on network {}",
                ep.ip, spec.name
            )));
        }
        if other.mac == Some(ep.mac) {
            return Err(Error::Conflict(format!(
                "MAC {} is already used by endpoint {id} on network {}",
                ep.mac, spec.name
            )));
        }
    }
    Ok(())
}

/// Neighbour and FDB entries on vxlan0 that claim the new endpoint's address or MAC for a
/// remote host.
fn stale_remote_entries(obs: &ObservedNetwork, ep: &EndpointSpec) -> Vec<Op> {
    let network = obs.name.clone();
    let mut ops: Vec<Op> = obs
        .neigh
        .iter()
        .filter(|n| n.ip == ep.ip)
        .map(|n| Op::DelNeigh {
            network: network.clone(),
            ip: n.ip,
        })
        .collect();
    ops.extend(
        obs.fdb
            .iter()
            .filter(|(m, _)| *m == ep.mac)
            .map(|(mac, vtep)| Op::DelFdb {
                network: network.clone(),
                mac: *mac,
                vtep: *vtep,
            }),
    );
    ops
}

async fn configure_port(sb: &Netlink, port: &Link, mtu: u32, marker: &PortAlias) -> Result<()> {
    let alias = marker.render();
    if port.alias.as_deref() != Some(alias.as_str()) {
        sb.set_alias(port.index, &alias).await?;
    }
    if port.mtu != mtu {
        sb.set_mtu(port.index, mtu).await?;
    }
    let br = sb
        .link_by_name(BRIDGE_NAME)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{BRIDGE_NAME} missing")))?;
    if port.master != Some(br.index) {
        sb.set_master(port.index, br.index).await?;
    }
    if !port.up {
        sb.set_up(port.index).await?;
    }
    Ok(())
}

async fn configure_container_end(
    ct: &Netlink,
    c: &Link,
    ep: &EndpointSpec,
    marker: &PortAlias,
) -> Result<()> {
    let alias = marker.render();
    if c.alias.as_deref() != Some(alias.as_str()) {
        ct.set_alias(c.index, &alias).await?;
    }
    if c.mac != Some(ep.mac) {
        ct.set_mac(c.index, ep.mac).await?;
    }
    if c.mtu != ep.mtu {
        ct.set_mtu(c.index, ep.mtu).await?;
    }
    // The interface carries exactly the endpoint's address (a re-attach may change it).
    let addrs = ct.addrs_v4(c.index).await?;
    for (ip, len) in &addrs {
        if (*ip, *len) != (ep.ip, ep.prefix_len) {
            ct.del_addr_v4(c.index, *ip, *len).await?;
        }
    }
    if !addrs.contains(&(ep.ip, ep.prefix_len)) {
        ct.add_addr_v4(c.index, ep.ip, ep.prefix_len).await?;
    }
    if !c.up {
        ct.set_up(c.index).await?;
    }
    if let Some(lo) = ct.link_by_name("lo").await?
        && !lo.up
    {
        ct.set_up(lo.index).await?;
    }
    Ok(())
}

async fn remove_port(sb: &Netlink, endpoint_id: &str) -> Result<()> {
    for l in sb.links().await? {
        let owner = l.alias.as_deref().and_then(PortAlias::parse);
        if owner.is_some_and(|o| o.id == endpoint_id) {
            sb.del_link(l.index).await?;
        }
    }
    Ok(())
}

/// MTU of the interface holding `addr` in the caller's network namespace (the underlay MTU
/// the container MTU is derived from: underlay - 50).
pub fn underlay_mtu(addr: Ipv4Addr) -> Result<u32> {
    interface_mtu(&underlay_interface(addr)?)
}

/// Name of the interface holding `addr` in the caller's network namespace.
pub fn underlay_interface(addr: Ipv4Addr) -> Result<String> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| Error::sys("getifaddrs", e))?;
    addrs
        .into_iter()
        .find(|ifa| {
            ifa.address
                .as_ref()
                .and_then(|a| a.as_sockaddr_in())
                .is_some_and(|sin| sin.ip() == addr)
        })
        .map(|ifa| ifa.interface_name)
        .ok_or_else(|| Error::NotFound(format!("no interface holds the advertise address {addr}")))
}

/// MTU of a named interface in the caller's namespace (SIOCGIFMTU).
fn interface_mtu(ifname: &str) -> Result<u32> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket for SIOCGIFMTU", e))?;
    // SAFETY: ifreq is a plain C struct (name array + union of integers); all-zeros is a
    // valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(Error::InvalidInput(format!(
            "interface name {ifname} too long"
        )));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `sock` is a valid open socket and `req` a properly initialised ifreq with a
    // NUL-terminated name that lives across the call; SIOCGIFMTU only writes `ifru_mtu`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc < 0 {
        return Err(Error::sys(
            format!("SIOCGIFMTU {ifname}"),
            nix::Error::last(),
        ));
    }
    // SAFETY: the kernel filled the `ifru_mtu` member of the union for SIOCGIFMTU.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| Error::InvalidInput(format!("negative MTU on {ifname}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent spawns these futures on a multi-threaded runtime: they must be `Send`, and
    /// the datapath shareable.
    #[allow(dead_code)]
    fn futures_are_send(dp: &KernelDatapath, spec: &NetworkSpec, ep: &EndpointSpec) {
        fn is_send<T: Send>(_: &T) {}
        fn is_sync<T: Send + Sync>() {}
        is_sync::<KernelDatapath>();
        is_send(&dp.observe());
        is_send(&dp.apply(&[]));
        is_send(&dp.ensure_network(spec));
        is_send(&dp.attach(spec, ep));
        is_send(&dp.detach("n", "e"));
        is_send(&dp.remove_network("n"));
    }

    #[test]
    fn alias_roundtrip() {
        let a = PortAlias {
            id: "3f4e8d2c1b0a".into(),
            ip: Some((Ipv4Addr::new(10, 0, 0, 2), 24)),
            mac: Some("02:42:0a:00:00:02".parse().unwrap()),
        };
        assert_eq!(PortAlias::parse(&a.render()), Some(a.clone()));
        assert_eq!(
            PortAlias::parse("ovl-ep:x"),
            Some(PortAlias {
                id: "x".into(),
                ip: None,
                mac: None
            })
        );
        assert_eq!(PortAlias::parse("something else"), None);
        assert_eq!(PortAlias::parse("ovl-ep:"), None);
    }

    #[test]
    fn underlay_mtu_of_loopback() {
        // Loopback exists in every namespace the tests run in.
        let mtu = underlay_mtu(Ipv4Addr::LOCALHOST).unwrap();
        assert!(mtu >= 1500, "{mtu}");
        assert!(underlay_mtu(Ipv4Addr::new(192, 0, 2, 77)).is_err());
    }
}
