//! The kernel datapath's executor: per network a sandbox namespace (`<run_dir>/netns/<name>`)
//! holding a bridge `br0` and a vxlan device `vxlan0`; per local endpoint a veth pair whose
//! host end is a port of `br0` and whose other end is the container's interface. Remote peers
//! are static FDB + neighbour entries on `vxlan0`, BUM traffic is replicated to every remote
//! VTEP through all-zeros FDB entries.
//!
//! Nothing is torn down on drop: the kernel state outlives the agent, and a new
//! [`KernelDatapath`] over the same run dir adopts it ([`KernelDatapath::observe`]). The
//! sandbox files are bind mounts in the host's mount namespace ([`HostMounts`]), so they
//! outlive an agent running in a mount namespace of its own.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ovl_model::ifname::{port_name, temp_peer_name, temp_vxlan_name};
use ovl_model::{
    Attached, Desired, DesiredNetwork, EndpointSpec, MacAddr, Marker, NetworkSpec, Plug,
    container_marker, free_ifname, marker_of, validate_endpoint_id, validate_network_name,
};
use ovl_netlink::netns::{
    create_netns, current_netns_path, is_netns, netns_id, open_netns, remove_netns,
};
use ovl_netlink::veth::{
    self, ContainerEnd, Finder, Pair, Peer, Snapshot, configure_container_end, configure_host_end,
    host_view,
};
use ovl_netlink::{HostMounts, Link, Netlink, VxlanConfig, is_errno};
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::guard;
use crate::plan::{
    Observed, ObservedBridge, ObservedEndpoint, ObservedNeigh, ObservedNetwork, ObservedVxlan, Op,
    port_marker,
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

/// The kernel (bridge + vxlan) datapath. Cheap to create; holds no kernel resources itself.
#[derive(Debug)]
pub struct KernelDatapath {
    run_dir: PathBuf,
    host_netns: Option<PathBuf>,
    mounts: HostMounts,
    /// Serializes mutations so two reconcile passes never race on one sandbox.
    lock: Mutex<()>,
    /// Per network: the anti-spoofing batch last applied, and what its counter held
    /// before it was last replaced (a replace starts the kernel's counter again).
    guards: std::sync::Mutex<HashMap<String, (String, u64)>>,
}

/// Cached per-network handles during one `apply`.
struct SandboxConn {
    nl: Netlink,
    vxlan: Option<u32>,
}

impl KernelDatapath {
    /// A datapath keeping its sandboxes under the host's `<run_dir>/netns/`, mounted in the
    /// mount namespace `mounts` names. `host_netns` is the network namespace holding the
    /// underlay (where vxlan sockets live); `None` is the caller's.
    pub fn new(run_dir: PathBuf, host_netns: Option<PathBuf>, mounts: HostMounts) -> Result<Self> {
        if let Some(ns) = &host_netns {
            open_netns(ns)?;
        }
        let dir = mounts.resolve(&run_dir.join("netns"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create sandbox directory", &dir, e))?;
        Ok(KernelDatapath {
            run_dir,
            host_netns,
            mounts,
            lock: Mutex::new(()),
            guards: std::sync::Mutex::default(),
        })
    }

    /// Makes the anti-spoofing table of `network`'s sandbox match its ports (see
    /// [`crate::guard`]): re-applied when the ports changed or someone removed the table.
    /// A network without a sandbox has nothing to guard.
    pub async fn guard(&self, network: &str) -> Result<()> {
        validate_network_name(network)?;
        let sandbox = self.sandbox_path(network);
        if !is_netns(&sandbox) {
            self.guards.lock().expect("guards lock").remove(network);
            return Ok(());
        }
        let ports: Vec<guard::Port> = self
            .endpoints(network)
            .await?
            .into_values()
            .filter_map(|e| {
                Some(guard::Port {
                    ifname: e.host_ifname,
                    mac: e.mac?,
                    ip: e.ip?,
                })
            })
            .collect();
        let batch = guard::render(&ports);
        let last = self
            .guards
            .lock()
            .expect("guards lock")
            .get(network)
            .cloned();
        let held = self.guard_counter(&sandbox).await;
        if let (Some((text, _)), Some(_)) = (&last, held)
            && *text == batch
        {
            return Ok(());
        }
        ovl_netlink::nft::run(
            Some(&sandbox),
            &["-f", "-"],
            &batch,
            &format!("guarding the ports of {network}"),
        )
        .await?;
        let before = last.map_or(0, |(_, b)| b) + held.unwrap_or(0);
        self.guards
            .lock()
            .expect("guards lock")
            .insert(network.to_string(), (batch, before));
        Ok(())
    }

    /// Frames the anti-spoofing tables dropped since this process started, all networks.
    pub async fn spoofed(&self) -> u64 {
        let nets: Vec<(String, u64)> = self
            .guards
            .lock()
            .expect("guards lock")
            .iter()
            .map(|(n, (_, b))| (n.clone(), *b))
            .collect();
        let mut total = 0;
        for (n, before) in nets {
            total += before
                + self
                    .guard_counter(&self.sandbox_path(&n))
                    .await
                    .unwrap_or(0);
        }
        total
    }

    /// The guard's counter in a sandbox, `None` when its table is not there.
    async fn guard_counter(&self, sandbox: &Path) -> Option<u64> {
        let out = ovl_netlink::nft::run(
            Some(sandbox),
            &[
                "-j",
                "list",
                "counter",
                "bridge",
                guard::TABLE,
                guard::COUNTER,
            ],
            "",
            "reading the guard counter",
        )
        .await
        .ok()?;
        ovl_netlink::nft::counter_packets(&out)
    }

    /// The run dir given to [`KernelDatapath::new`].
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Where the sandbox mounts live.
    pub fn mounts(&self) -> &HostMounts {
        &self.mounts
    }

    /// The host's path of a network's sandbox namespace file (for display).
    pub fn sandbox_file(&self, network: &str) -> PathBuf {
        self.run_dir.join("netns").join(network)
    }

    /// The path this process opens a network's sandbox namespace by.
    pub fn sandbox_path(&self, network: &str) -> PathBuf {
        self.mounts.resolve(&self.sandbox_file(network))
    }

    async fn host(&self) -> Result<Netlink> {
        Ok(Netlink::open(self.host_netns.as_deref()).await?)
    }

    fn host_netns_path(&self) -> PathBuf {
        self.host_netns.clone().unwrap_or_else(current_netns_path)
    }

    // ------------------------------------------------------------------ observe

    /// Names of the networks with a sandbox file.
    fn sandbox_names(&self) -> Result<Vec<String>> {
        let dir = self.mounts.resolve(&self.run_dir.join("netns"));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot list sandboxes", &dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("cannot list sandboxes", &dir, e))?;
            if let Some(name) = entry.file_name().to_str()
                && validate_network_name(name).is_ok()
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Reads back everything programmed under this run dir, through netlink dumps; container
    /// ends are not looked at (see [`KernelDatapath::observe_with`]).
    pub async fn observe(&self) -> Result<Observed> {
        self.observe_with(&Desired::default()).await
    }

    /// Reads back everything programmed, and the container ends of the local endpoints
    /// `want` gives specs for.
    pub async fn observe_with(&self, want: &Desired) -> Result<Observed> {
        let mut observed = Observed::default();
        let mut containers = Finder::new(self.host_netns.clone(), self.mounts.clone());
        for name in self.sandbox_names()? {
            let obs = self
                .observe_network_at(&name, want.networks.get(&name), &mut containers)
                .await?;
            observed.networks.insert(name, obs);
        }
        // Desired networks without a sandbox: their endpoints' container ends are missing
        // too (or their namespaces gone), which decides what the plan does about them.
        for (name, w) in &want.networks {
            if observed.networks.contains_key(name) {
                continue;
            }
            let mut obs = ObservedNetwork::empty(name, self.sandbox_file(name));
            self.observe_containers(&mut obs, w, &mut containers)
                .await?;
            if !obs.containers.is_empty() {
                observed.networks.insert(name.clone(), obs);
            }
        }
        Ok(observed)
    }

    /// Reads back one network; `None` if it has no sandbox file.
    pub async fn observe_network(&self, name: &str) -> Result<Option<ObservedNetwork>> {
        validate_network_name(name)?;
        if !self.sandbox_path(name).exists() {
            return Ok(None);
        }
        let mut c = Finder::new(self.host_netns.clone(), self.mounts.clone());
        self.observe_network_at(name, None, &mut c).await.map(Some)
    }

    async fn observe_network_at(
        &self,
        name: &str,
        want: Option<&DesiredNetwork>,
        containers: &mut Finder,
    ) -> Result<ObservedNetwork> {
        let path = self.sandbox_path(name);
        let mut obs = ObservedNetwork::empty(name, self.sandbox_file(name));
        if !is_netns(&path) {
            if let Some(w) = want {
                self.observe_containers(&mut obs, w, containers).await?;
            }
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
            if let Some(Marker::Port { id, addr, mac }) = marker_of(l.alias.as_deref()) {
                obs.endpoints.insert(
                    id,
                    ObservedEndpoint {
                        host_ifname: l.name.clone(),
                        index: l.index,
                        ip: addr.map(|(ip, _)| ip),
                        mac,
                        healthy: l.up && br_index.is_some() && l.master == br_index,
                    },
                );
            }
        }
        if let Some(w) = want {
            self.observe_containers(&mut obs, w, containers).await?;
        }
        Ok(obs)
    }

    /// Finds the container end of every endpoint of `want` that has a spec.
    async fn observe_containers(
        &self,
        obs: &mut ObservedNetwork,
        want: &DesiredNetwork,
        containers: &mut Finder,
    ) -> Result<()> {
        for (id, ep) in &want.local_endpoints {
            let Some(ep) = ep else { continue };
            let port = obs.endpoints.get(id).map(|p| p.index);
            let seen = containers.find(&obs.name, ep, port).await?;
            obs.containers.insert(id.clone(), seen);
        }
        Ok(())
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
                return Err(Error::NoSandbox {
                    network: network.to_string(),
                });
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
        let idx = c.vxlan.ok_or_else(|| Error::NoVxlan {
            network: network.to_string(),
        })?;
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
                Ok(nl.fdb_replace(idx, *mac, *vtep).await?)
            }
            Op::DelFdb { network, mac, vtep } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                Ok(nl.fdb_del(idx, *mac, *vtep).await?)
            }
            Op::AddFlood { network, vtep } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                Ok(nl.fdb_append(idx, MacAddr::ZERO, *vtep).await?)
            }
            Op::DelFlood { network, vtep } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                Ok(nl.fdb_del(idx, MacAddr::ZERO, *vtep).await?)
            }
            Op::AddNeigh { network, ip, mac } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                Ok(nl.neigh_replace_v4(idx, *ip, *mac).await?)
            }
            Op::DelNeigh { network, ip } => {
                let (nl, idx) = self.vxlan_conn(network, conns).await?;
                Ok(nl.neigh_del_v4(idx, *ip).await?)
            }
            Op::RemoveEndpointPort {
                network,
                endpoint_id,
            } => {
                let c = self.sandbox_conn(network, conns).await?;
                remove_port(&c.nl, endpoint_id).await
            }
            Op::PlugEndpoint { net, ep, .. } => {
                let ep = &host_view(&self.mounts, ep);
                self.check_container_netns(ep)?;
                self.plug_locked(net, ep).await.map(drop)
            }
            Op::ReplugEndpoint { net, ep, .. } => {
                let ep = &host_view(&self.mounts, ep);
                self.check_container_netns(ep)?;
                let c = self.sandbox_conn(&net.name, conns).await?;
                remove_port(&c.nl, &ep.endpoint_id).await?;
                self.plug_locked(net, ep).await.map(drop)
            }
            Op::ConfigureEndpoint {
                net, ep, ifname, ..
            } => {
                let c = self.sandbox_conn(&net.name, conns).await?;
                let port =
                    c.nl.link_by_name(&port_name(&ep.endpoint_id))
                        .await?
                        .ok_or_else(|| ovl_netlink::Error::NoLink {
                            name: port_name(&ep.endpoint_id),
                            place: Some(format!("the sandbox of {}", net.name)),
                        })?;
                let br = c.nl.link_by_name(BRIDGE_NAME).await?.map(|b| b.index);
                configure_host_end(&c.nl, &port, ep.mtu, &port_marker(ep), br).await?;
                let ct = Netlink::open(Some(&ep.netns)).await?;
                let link = ct
                    .link_by_name(ifname)
                    .await?
                    .filter(|l| {
                        marker_of(l.alias.as_deref())
                            .is_some_and(|m| m.is_container_of(&net.name, &ep.endpoint_id))
                    })
                    .ok_or_else(|| ovl_netlink::Error::NoLink {
                        name: ifname.clone(),
                        place: Some(ep.netns.display().to_string()),
                    })?;
                let marker = container_marker(net, ep);
                Ok(configure_container_end(&ct, &link, &container_end(ep, &marker)).await?)
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
        let file = self.sandbox_file(&spec.name);
        let path = self.sandbox_path(&spec.name);
        if path.exists() && !is_netns(&path) {
            // A leftover file whose namespace is gone (reboot, interrupted create, or the
            // mount namespace of an earlier agent that held it).
            remove_netns(&self.mounts, &file)?;
        }
        if !path.exists() {
            create_netns(&self.mounts, &file)?;
            tracing::info!("created sandbox {}", file.display());
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
                sb.link_by_name(BRIDGE_NAME)
                    .await?
                    .ok_or_else(|| ovl_netlink::Error::NoLink {
                        name: BRIDGE_NAME.into(),
                        place: Some(format!("the sandbox of {}", spec.name)),
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
            if matches!(marker_of(l.alias.as_deref()), Some(Marker::Port { .. })) {
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
                    if is_errno(&e, libc::EEXIST) || is_errno(&e, libc::EADDRINUSE) {
                        return Err(Error::Conflict(format!(
                            "network {}: a vxlan device with VNI {} on {}:{} already exists on \
                             this host ({e})",
                            spec.name, spec.vni, spec.local_vtep, spec.vxlan_port
                        )));
                    }
                    return Err(e.into());
                }
                let created =
                    host.link_by_name(&tmp)
                        .await?
                        .ok_or_else(|| ovl_netlink::Error::NoLink {
                            name: tmp.clone(),
                            place: None,
                        })?;
                let ns = File::open(sandbox)
                    .map_err(|e| Error::io("cannot open sandbox", sandbox, e))?;
                if let Err(e) = host.move_to_netns(created.index, ns.as_fd()).await {
                    return Err(e.with_undo(host.del_link(created.index).await).into());
                }
                sb.link_by_name(&tmp)
                    .await?
                    .ok_or_else(|| ovl_netlink::Error::NoLink {
                        name: tmp.clone(),
                        place: Some(format!("the sandbox of {}", spec.name)),
                    })?
            }
        };
        sb.rename(link.index, VXLAN_NAME).await?;
        Ok(sb
            .link_by_name(VXLAN_NAME)
            .await?
            .ok_or_else(|| ovl_netlink::Error::NoLink {
                name: VXLAN_NAME.into(),
                place: Some(format!("the sandbox of {}", spec.name)),
            })?)
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
        let mut errors: Vec<Error> = Vec::new();
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
                                errors.push(e.into());
                            }
                        }
                    }
                    Err(e) => errors.push(e.into()),
                },
                Err(e) => errors.push(e.into()),
            }
        }
        if let Err(e) = remove_netns(&self.mounts, &self.sandbox_file(name)) {
            errors.push(e.into());
        }
        Error::from_list(errors)
    }

    /// Removes every sandbox under the run dir (a host switching to the eBPF datapath, whose
    /// vxlan device would collide with theirs): the container ends go with them, and the
    /// other datapath plugs them again. Returns the networks removed; every failure is
    /// reported.
    pub async fn purge(&self) -> Result<Vec<String>> {
        let _guard = self.lock.lock().await;
        let names = self.sandbox_names()?;
        let mut errors = Vec::new();
        for n in &names {
            if let Err(e) = self.remove_network_locked(n).await {
                errors.push(e);
            }
        }
        Error::from_list(errors).map(|()| names)
    }

    // ------------------------------------------------------------------ endpoints

    fn check_container_netns(&self, ep: &EndpointSpec) -> Result<()> {
        let problem = |problem| Error::ContainerNetns {
            endpoint: ep.endpoint_id.clone(),
            path: ep.netns.clone(),
            problem,
        };
        if !ep.netns.exists() {
            return Err(problem("does not exist"));
        }
        if !is_netns(&ep.netns) {
            return Err(problem("is not a network namespace"));
        }
        Ok(())
    }

    /// Connects a container to a network: a veth pair whose host end is a port of `br0` and
    /// whose other end goes where `ep.plug` says:
    /// * [`Plug::Netns`]: into `ep.netns` as `ep.ifname` (or `eth0`/next free `ethN`), with
    ///   the MAC, address and MTU given, up, and `lo` up;
    /// * [`Plug::Docker`]: left in the host namespace under the temporary name, with the MAC
    ///   and MTU but down and without address: libnetwork moves it into the sandbox `ep.netns`
    ///   (which is not touched here), renames it and configures it.
    ///
    /// Creates the network if needed. Idempotent: attaching an existing endpoint again
    /// converges it and returns the same [`Attached`]. Bad input (invalid fields, a missing
    /// container namespace, an address or MAC already used on the network, a taken interface
    /// name) fails before any change.
    pub async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        spec.validate()?;
        ep.validate(spec)?;
        let ep = &host_view(&self.mounts, ep);
        let ct_id = match &ep.plug {
            Plug::Netns => {
                self.check_container_netns(ep)?;
                let ct_id = netns_id(&ep.netns)?;
                if ct_id == netns_id(&self.host_netns_path())? {
                    return Err(Error::ContainerNetns {
                        endpoint: ep.endpoint_id.clone(),
                        path: ep.netns.clone(),
                        problem: "is the host network namespace",
                    });
                }
                Some(ct_id)
            }
            Plug::Docker { .. } => None,
        };
        let _guard = self.lock.lock().await;
        let sandbox = self.sandbox_path(&spec.name);
        if let Some(ct_id) = ct_id
            && is_netns(&sandbox)
            && netns_id(&sandbox)? == ct_id
        {
            return Err(Error::ContainerNetns {
                endpoint: ep.endpoint_id.clone(),
                path: ep.netns.clone(),
                problem: "is the network sandbox",
            });
        }
        let mut stale = Vec::new();
        if is_netns(&sandbox) {
            let mut c = Finder::new(self.host_netns.clone(), self.mounts.clone());
            let obs = self.observe_network_at(&spec.name, None, &mut c).await?;
            check_conflicts(&obs, spec, ep)?;
            stale = stale_remote_entries(&obs, ep);
        }
        if let Plug::Docker { tmp } = &ep.plug {
            let host = self.host().await?;
            if let Some(l) = host.link_by_name(tmp).await?
                && !marker_of(l.alias.as_deref())
                    .is_some_and(|m| m.is_container_of(&spec.name, &ep.endpoint_id))
            {
                return Err(Error::Conflict(format!(
                    "endpoint {}: interface {tmp} already exists in the host namespace",
                    ep.endpoint_id
                )));
            }
        }
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
        let made = self.plug_locked(spec, ep).await?;
        // Guarded before the caller hands the container over.
        self.guard(&spec.name).await?;
        Ok(made)
    }

    /// Plugs an endpoint into an existing sandbox (the lock is held): adopts and converges
    /// what exists of it, replaces what is stale, creates what is missing.
    async fn plug_locked(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        let made = self.plug_port(spec, ep).await?;
        // The bridge may have learned this MAC on the vxlan port while the address lived on
        // another host; pinned to the port, what the agent programmed wins over what the
        // bridge learned, now and later.
        let sb = Netlink::open(Some(&self.sandbox_path(&spec.name))).await?;
        let port = sb
            .link_by_name(&made.host_ifname)
            .await?
            .ok_or_else(|| Error::NoSandbox {
                network: spec.name.clone(),
            })?;
        sb.bridge_fdb_pin(port.index, ep.mac).await?;
        Ok(made)
    }

    /// The port and container end of [`Self::plug_locked`].
    async fn plug_port(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        let sandbox = self.sandbox_path(&spec.name);
        let sb = Netlink::open(Some(&sandbox)).await?;
        let host_ifname = port_name(&ep.endpoint_id);
        let pmarker = port_marker(ep);
        let cmarker = container_marker(spec, ep);
        let cfg = container_end(ep, &cmarker);
        let br = sb
            .link_by_name(BRIDGE_NAME)
            .await?
            .ok_or_else(|| Error::NoSandbox {
                network: spec.name.clone(),
            })?;
        let port = sb.link_by_name(&host_ifname).await?;
        if let Some(p) = &port
            && marker_of(p.alias.as_deref()).map(|m| m.id().to_string())
                != Some(ep.endpoint_id.clone())
        {
            return Err(Error::Conflict(format!(
                "port {host_ifname} in network {} belongs to {:?}, not endpoint {}",
                spec.name,
                marker_of(p.alias.as_deref()).map(|m| m.id().to_string()),
                ep.endpoint_id
            )));
        }
        match &ep.plug {
            Plug::Netns => {
                let ct_file = open_netns(&ep.netns)?;
                let ct = Netlink::open(Some(&ep.netns)).await?;
                let snap = Snapshot::take(&ct).await?;
                let mine = port
                    .as_ref()
                    .and_then(|p| snap.container_end(&spec.name, &ep.endpoint_id, Some(p.index)));
                if let (Some(p), Some(c)) = (&port, mine) {
                    // Already attached to this container: converge and report.
                    if let Some(want) = &ep.ifname
                        && want != &c.name
                    {
                        return Err(Error::Conflict(format!(
                            "endpoint {} is already attached as {} (requested {want})",
                            ep.endpoint_id, c.name
                        )));
                    }
                    configure_host_end(&sb, p, ep.mtu, &pmarker, Some(br.index)).await?;
                    configure_container_end(&ct, c, &cfg).await?;
                    return Ok(Attached {
                        ifname: c.name.clone(),
                        host_ifname,
                        mac: ep.mac,
                    });
                }
                // Container ends of ours whose port is gone (an earlier pair's leftover
                // cannot be: pairs die together; but a half-made one can) free their name.
                let stale: Vec<&Link> = snap
                    .links
                    .iter()
                    .filter(|l| {
                        marker_of(l.alias.as_deref())
                            .is_some_and(|m| m.is_container_of(&spec.name, &ep.endpoint_id))
                    })
                    .collect();
                let taken: Vec<String> = snap
                    .links
                    .iter()
                    .filter(|l| !stale.iter().any(|s| s.index == l.index))
                    .map(|l| l.name.clone())
                    .collect();
                let ifname = match &ep.ifname {
                    Some(n) if taken.contains(n) => {
                        return Err(Error::Conflict(format!(
                            "endpoint {}: interface {n} already exists in {}",
                            ep.endpoint_id,
                            ep.netns.display()
                        )));
                    }
                    Some(n) => n.clone(),
                    None => free_ifname(&taken, "eth"),
                };
                for l in stale {
                    ct.del_link(l.index).await?;
                }
                if let Some(p) = port {
                    // The port of an earlier attach whose container end is not here.
                    sb.del_link(p.index).await?;
                }
                let made = veth::plumb(&Pair {
                    host: &sb,
                    host_ifname: &host_ifname,
                    host_marker: &pmarker,
                    master: Some(br.index),
                    tmp: &temp_peer_name(None, &ep.endpoint_id),
                    peer: Peer::Netns {
                        nl: &ct,
                        file: ct_file.as_fd(),
                        path: &ep.netns,
                        ifname: &ifname,
                    },
                    ct: cfg,
                })
                .await?;
                tracing::info!(
                    "plugged endpoint {} into {} as {ifname} (port {host_ifname})",
                    ep.endpoint_id,
                    spec.name
                );
                Ok(Attached {
                    ifname: made.ct_name,
                    host_ifname,
                    mac: ep.mac,
                })
            }
            Plug::Docker { tmp } => {
                let host_path = self.host_netns_path();
                let host_file = open_netns(&host_path)?;
                let host = self.host().await?;
                if let Some(p) = &port {
                    let waiting = host
                        .link_by_name(tmp)
                        .await?
                        .is_some_and(|l| l.peer == Some(p.index));
                    let moved = match open_netns(&ep.netns) {
                        Ok(_) => {
                            let ct = Netlink::open(Some(&ep.netns)).await?;
                            Snapshot::take(&ct)
                                .await?
                                .container_end(&spec.name, &ep.endpoint_id, Some(p.index))
                                .is_some()
                        }
                        Err(_) => false,
                    };
                    if waiting || moved {
                        // Prepared before (its container end may have moved already).
                        configure_host_end(&sb, p, ep.mtu, &pmarker, Some(br.index)).await?;
                        return Ok(Attached {
                            ifname: tmp.clone(),
                            host_ifname,
                            mac: ep.mac,
                        });
                    }
                    // A port from an earlier attempt whose other end is gone: start over.
                    sb.del_link(p.index).await?;
                }
                veth::plumb(&Pair {
                    host: &sb,
                    host_ifname: &host_ifname,
                    host_marker: &pmarker,
                    master: Some(br.index),
                    tmp,
                    peer: Peer::Unplugged {
                        nl: &host,
                        file: host_file.as_fd(),
                    },
                    ct: cfg,
                })
                .await?;
                tracing::info!(
                    "prepared endpoint {} on {} as {tmp} (port {host_ifname}) for Docker",
                    ep.endpoint_id,
                    spec.name
                );
                Ok(Attached {
                    ifname: tmp.clone(),
                    host_ifname,
                    mac: ep.mac,
                })
            }
        }
    }

    /// Removes an endpoint's port (and with it the container interface, wherever it is).
    /// Idempotent.
    pub async fn detach(&self, network: &str, endpoint_id: &str) -> Result<()> {
        validate_network_name(network)?;
        validate_endpoint_id(endpoint_id)?;
        let _guard = self.lock.lock().await;
        let path = self.sandbox_path(network);
        if !is_netns(&path) {
            return Ok(());
        }
        let sb = Netlink::open(Some(&path)).await?;
        remove_port(&sb, endpoint_id).await?;
        self.guard(network).await
    }

    /// The local endpoints of a network as recorded on their ports.
    pub async fn endpoints(&self, network: &str) -> Result<BTreeMap<String, ObservedEndpoint>> {
        Ok(self
            .observe_network(network)
            .await?
            .map(|o| o.endpoints)
            .unwrap_or_default())
    }
}

/// The container end's configuration of an endpoint.
fn container_end<'a>(ep: &EndpointSpec, marker: &'a str) -> ContainerEnd<'a> {
    ContainerEnd {
        mac: ep.mac,
        mtu: ep.mtu,
        ip: ep.ip,
        prefix_len: ep.prefix_len,
        marker,
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

async fn remove_port(sb: &Netlink, endpoint_id: &str) -> Result<()> {
    for l in sb.links().await? {
        if let Some(m @ Marker::Port { .. }) = marker_of(l.alias.as_deref())
            && m.id() == endpoint_id
        {
            sb.del_link(l.index).await?;
        }
    }
    Ok(())
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
        is_send(&dp.observe_with(&Desired::default()));
        is_send(&dp.apply(&[]));
        is_send(&dp.ensure_network(spec));
        is_send(&dp.attach(spec, ep));
        is_send(&dp.detach("n", "e"));
        is_send(&dp.remove_network("n"));
        is_send(&dp.purge());
    }
}
