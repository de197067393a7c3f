//! The eBPF datapath's executor: observes (maps, host ends, container ends), plans
//! ([`crate::plan`]) and applies; plugs and unplugs endpoints.
//!
//! # Layout
//! * Pin directory: `<run_dir>/bpf`, a bpffs instance mounted there in the host's mount
//!   namespace ([`HostMounts`]). It is unique per agent instance (several lab agents share a
//!   machine and reuse host ids), stable across restarts (so `kill -9` + restart adopts the
//!   pinned maps and TCX links and traffic keeps flowing), and outlives an agent that runs in
//!   a mount namespace of its own. Unmounting it releases every pin, which detaches the
//!   programs and frees the maps.
//! * Per local endpoint a veth pair: the host end `ve-<vni>.<id>` (or a hash) stays in the
//!   host namespace, marked `ovl-ebpf:<network> <id> <vni> <ip>/<len> <mac>` (so a restarted
//!   agent maps ifindex -> endpoint), the other end becomes the container's `eth0` (or
//!   `ep.ifname`, or the next free `ethN`), marked `ovl-ct:...`, with the endpoint's MAC,
//!   address and MTU.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ovl_model::ifname::{ebpf_port_name, temp_peer_name};
use ovl_model::{
    Attached, Desired, EndpointMark, EndpointSpec, EndpointStatus, Marker, NetworkSpec, Plug,
    VXLAN_OVERHEAD, container_marker, free_ifname, marker_of, validate_endpoint_id,
    validate_network_name,
};
use ovl_netlink::netns::{current_netns_path, is_netns, netns_id, open_netns};
use ovl_netlink::veth::{
    self, ContainerEnd, Finder, Pair, Peer, Snapshot, configure_container_end, configure_host_end,
    host_view,
};
use ovl_netlink::{HostMounts, Link, Netlink};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::counters::Counters;
use crate::devices::{HEADROOM_BRIDGE, HEADROOM_DEV, ensure_bpffs_at};
use crate::error::{Error, Result};
use crate::load::{EbpfDatapath, LoadOptions};
use crate::maps::{EbpfState, EndpointInfo};
use crate::plan::{
    EbpfOp, HostPort, ObservedEbpf, actual_lines, info_of, plan, statuses, vxlan_drift,
};

/// Name of the collect-metadata vxlan device in the host namespace.
pub const VXLAN_DEVICE: &str = "ovl_vx0";

/// What the datapath needs to know about the host.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// The agent's run dir; the pins go to `<run_dir>/bpf`.
    pub run_dir: PathBuf,
    /// This host's VTEP (advertise) address.
    pub vtep: Ipv4Addr,
    /// Overlay MTU (underlay MTU - 50).
    pub mtu: u32,
    /// VXLAN's UDP port.
    pub vxlan_port: u16,
    /// Where the pins' bpffs is mounted.
    pub mounts: HostMounts,
}

/// One convergence pass.
#[derive(Debug, Default)]
pub struct Pass {
    /// Operations applied.
    pub applied: usize,
    /// Operations that failed (retried on the next pass).
    pub failed: Vec<(String, Error)>,
    /// The status of every desired local endpoint after the pass.
    pub endpoints: BTreeMap<(String, String), EndpointStatus>,
}

/// What is programmed per network and what a pass would change, for `overlayctl peers`.
#[derive(Debug, Default)]
pub struct Report {
    /// Per network: programmed lines and the differences.
    pub networks: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// The status of every desired local endpoint.
    pub endpoints: BTreeMap<(String, String), EndpointStatus>,
}

/// tc programs + one collect-metadata vxlan device.
pub struct EbpfBackend {
    dp: Mutex<EbpfDatapath>,
    cfg: BackendConfig,
    pin_dir: PathBuf,
    load_opts: LoadOptions,
}

impl EbpfBackend {
    /// The pin directory of a run dir.
    pub fn pin_dir(run_dir: &Path) -> PathBuf {
        run_dir.join("bpf")
    }

    /// Loads or adopts the eBPF datapath; the error says exactly why it cannot run here.
    pub fn open(cfg: BackendConfig) -> Result<Self> {
        EbpfDatapath::probe()?;
        Self::load(cfg)
    }

    /// [`EbpfBackend::open`] for a caller that has run [`EbpfDatapath::probe`] already (the
    /// probe loads every program through the verifier: seconds on a busy host).
    pub fn load(cfg: BackendConfig) -> Result<Self> {
        let pin_dir = Self::pin_dir(&cfg.run_dir);
        ensure_bpffs_at(&cfg.mounts, &pin_dir)?;
        // Loading resolves interface indexes in the calling thread's namespace: the caller's
        // thread, like every thread of the agent, is in the host namespace.
        let load_opts = LoadOptions {
            vxlan_port: cfg.vxlan_port,
            ..LoadOptions::default()
        };
        let dp = EbpfDatapath::load_with(
            &cfg.mounts.resolve(&pin_dir),
            VXLAN_DEVICE,
            cfg.vtep,
            cfg.mtu,
            &load_opts,
        )?;
        for w in dp.load_warnings() {
            tracing::warn!(warning = %w, "adopting the pinned eBPF datapath");
        }
        tracing::info!(pin_dir = %pin_dir.display(), mtu = cfg.mtu, vxlan = VXLAN_DEVICE, "eBPF datapath loaded");
        Ok(EbpfBackend {
            dp: Mutex::new(dp),
            cfg,
            pin_dir,
            load_opts,
        })
    }

    async fn observe(&self, dp: &EbpfDatapath, want: &Desired) -> Result<ObservedEbpf> {
        let state = dp.dump()?;
        let host = Netlink::open(None).await?;
        let links = host.links().await?;
        let vxlan = links
            .iter()
            .find(|l| l.name == VXLAN_DEVICE)
            .map(|l| (l.index, l.up, l.mtu));
        let ports = host_ports(&links);
        let mut containers = BTreeMap::new();
        let mut finder = Finder::new(None, self.cfg.mounts.clone());
        for (name, n) in &want.networks {
            for (id, ep) in &n.local_endpoints {
                let Some(ep) = ep else { continue };
                let port = ports
                    .iter()
                    .find(|p| &p.alias.network == name && &p.alias.id == id)
                    .map(|p| p.index);
                let seen = finder.find(name, ep, port).await?;
                containers.insert((name.clone(), id.clone()), seen);
            }
        }
        Ok(ObservedEbpf {
            state,
            ports,
            vxlan,
            containers,
        })
    }

    /// Loads the fast path again over the same pin dir (adopting maps and links), which
    /// recreates or repairs the vxlan device.
    fn reload(&self, dp: &mut EbpfDatapath) -> Result<()> {
        let fresh = EbpfDatapath::load_with(
            &self.cfg.mounts.resolve(&self.pin_dir),
            VXLAN_DEVICE,
            self.cfg.vtep,
            self.cfg.mtu,
            &self.load_opts,
        )?;
        for w in fresh.load_warnings() {
            tracing::warn!(warning = %w, "reloading the eBPF datapath");
        }
        *dp = fresh;
        Ok(())
    }

    /// Brings what is programmed to `want`: observe, plan, apply; then the endpoints'
    /// statuses (observed again when container ends were repaired).
    pub async fn converge(&self, want: &Desired) -> Result<Pass> {
        let mut dp = self.dp.lock().await;
        let mut out = Pass::default();
        let mut have = self.observe(&dp, want).await?;
        if let Some(reason) = vxlan_drift(&have, self.cfg.mtu) {
            tracing::warn!(%reason, "repairing the eBPF datapath");
            match self.reload(&mut dp) {
                Ok(()) => out.applied += 1,
                Err(e) => out.failed.push((format!("reload datapath ({reason})"), e)),
            }
            have = self.observe(&dp, want).await?;
        }
        let ops = plan(want, &have, self.cfg.vtep);
        let mut failed_eps: BTreeMap<(String, String), String> = BTreeMap::new();
        if !ops.is_empty() {
            let host = Netlink::open(None).await?;
            for op in &ops {
                tracing::debug!(%op, "applying");
                match self.apply_one(&mut dp, &have, &host, op).await {
                    Ok(()) => out.applied += 1,
                    Err(e) => {
                        if let Some(key) = endpoint_of(op) {
                            failed_eps.insert(key, e.to_string());
                        }
                        out.failed.push((op.to_string(), e));
                    }
                }
            }
            if ops.iter().any(|o| endpoint_of(o).is_some()) {
                have = self.observe(&dp, want).await?;
            }
        }
        out.endpoints = statuses(want, &have);
        for (key, error) in failed_eps {
            out.endpoints.insert(key, EndpointStatus::Failed { error });
        }
        Ok(out)
    }

    /// What is programmed per network, what a pass would change, and every local
    /// endpoint's status.
    pub async fn report(&self, want: &Desired) -> Result<Report> {
        let dp = self.dp.lock().await;
        let have = self.observe(&dp, want).await?;
        drop(dp);
        let mut out = Report::default();
        for (name, lines) in actual_lines(want, &have) {
            out.networks.entry(name).or_default().0 = lines;
        }
        if let Some(reason) = vxlan_drift(&have, self.cfg.mtu) {
            for n in want.networks.keys() {
                out.networks
                    .entry(n.clone())
                    .or_default()
                    .1
                    .push(format!("{n}: reload datapath ({reason})"));
            }
        }
        for op in plan(want, &have, self.cfg.vtep) {
            out.networks
                .entry(op.network().to_string())
                .or_default()
                .1
                .push(op.to_string());
        }
        out.endpoints = statuses(want, &have);
        Ok(out)
    }

    async fn apply_one(
        &self,
        dp: &mut EbpfDatapath,
        have: &ObservedEbpf,
        host: &Netlink,
        op: &EbpfOp,
    ) -> Result<()> {
        match op {
            EbpfOp::RemoveEndpoint { ifindex, .. } => remove_host_end(dp, host, *ifindex).await,
            EbpfOp::ForgetEndpoint { ifindex, .. } => dp.detach_endpoint(*ifindex),
            EbpfOp::ProgramEndpoint { ifindex, info, .. } => dp.attach_endpoint(*ifindex, *info),
            EbpfOp::DelRemote { vni, mac, .. } => dp.del_remote(*vni, *mac),
            EbpfOp::SetRemote {
                vni, mac, ip, vtep, ..
            } => dp.set_remote(*vni, *mac, *ip, *vtep),
            EbpfOp::SetFlood { vni, vteps, .. } => dp.set_flood(*vni, vteps),
            EbpfOp::PlugEndpoint { net, ep, .. } => {
                let ep = &host_view(&self.cfg.mounts, ep);
                check_container_netns(ep)?;
                self.plug_locked(dp, have, host, net, ep).await.map(drop)
            }
            EbpfOp::ReplugEndpoint {
                net, ep, ifindex, ..
            } => {
                let ep = &host_view(&self.cfg.mounts, ep);
                check_container_netns(ep)?;
                remove_host_end(dp, host, *ifindex).await?;
                self.plug_locked(dp, have, host, net, ep).await.map(drop)
            }
            EbpfOp::ConfigureEndpoint {
                net, ep, ifname, ..
            } => {
                let mark = EndpointMark::of(net, ep);
                let host_ifname = ebpf_port_name(net.vni, &ep.endpoint_id);
                let port = host.link_by_name(&host_ifname).await?.ok_or_else(|| {
                    ovl_netlink::Error::NoLink {
                        name: host_ifname.clone(),
                        place: None,
                    }
                })?;
                configure_host_end(
                    host,
                    &port,
                    ep.mtu,
                    &Marker::HostEnd(mark.clone()).render(),
                    None,
                )
                .await?;
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
                configure_container_end(&ct, &link, &container_end(ep, &marker)).await?;
                dp.attach_endpoint(port.index, info_of(&mark))
            }
        }
    }

    fn check_spec(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<()> {
        spec.validate()?;
        ep.validate(spec)?;
        if spec.local_vtep != self.cfg.vtep {
            return Err(Error::InvalidInput(format!(
                "network {}: local VTEP {} is not this host's ({})",
                spec.name, spec.local_vtep, self.cfg.vtep
            )));
        }
        if ep.mtu > self.cfg.mtu {
            return Err(Error::InvalidInput(format!(
                "endpoint {}: MTU {} is above the overlay MTU {} (underlay MTU - {}): the eBPF \
                 path cannot fragment",
                ep.endpoint_id, ep.mtu, self.cfg.mtu, VXLAN_OVERHEAD
            )));
        }
        Ok(())
    }

    /// Connects a container to a network (where `ep.plug` says; see
    /// [`ovl_model::Plug`]): a veth pair whose host end stays in the host namespace with
    /// `lxc_egress` on it and the endpoint in the maps. Idempotent: attaching an existing
    /// endpoint again converges it. Bad input fails before any change.
    pub async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        self.check_spec(spec, ep)?;
        let ep = &host_view(&self.cfg.mounts, ep);
        if ep.plug == Plug::Netns {
            check_container_netns(ep)?;
            if netns_id(&ep.netns)? == netns_id(&current_netns_path())? {
                return Err(Error::InvalidInput(format!(
                    "endpoint {}: {} is the host network namespace",
                    ep.endpoint_id,
                    ep.netns.display()
                )));
            }
        }
        let mut dp = self.dp.lock().await;
        let have = self.observe(&dp, &Desired::default()).await?;
        let host = Netlink::open(None).await?;
        // Checks before changing anything.
        for p in &have.ports {
            if p.alias.vni != spec.vni
                || (p.alias.network == spec.name && p.alias.id == ep.endpoint_id)
            {
                continue;
            }
            if p.alias.ip == ep.ip {
                return Err(Error::Conflict(format!(
                    "address {} is already used by endpoint {} on network {}",
                    ep.ip, p.alias.id, spec.name
                )));
            }
            if p.alias.mac == ep.mac {
                return Err(Error::Conflict(format!(
                    "MAC {} is already used by endpoint {} on network {}",
                    ep.mac, p.alias.id, spec.name
                )));
            }
        }
        let host_ifname = ebpf_port_name(spec.vni, &ep.endpoint_id);
        if let Some(l) = host.link_by_name(&host_ifname).await?
            && !have
                .ports
                .iter()
                .any(|p| p.index == l.index && p.alias.id == ep.endpoint_id)
        {
            return Err(Error::Conflict(format!(
                "interface {host_ifname} exists in the host namespace and is not endpoint {}'s",
                ep.endpoint_id
            )));
        }
        if let Plug::Docker { tmp } = &ep.plug
            && let Some(l) = host.link_by_name(tmp).await?
            && !marker_of(l.alias.as_deref())
                .is_some_and(|m| m.is_container_of(&spec.name, &ep.endpoint_id))
        {
            return Err(Error::Conflict(format!(
                "endpoint {}: interface {tmp} already exists in the host namespace",
                ep.endpoint_id
            )));
        }
        self.plug_locked(&mut dp, &have, &host, spec, ep).await
    }

    /// Plugs an endpoint (the lock is held): adopts and converges what exists of it,
    /// replaces what is stale, creates what is missing, programs it.
    async fn plug_locked(
        &self,
        dp: &mut EbpfDatapath,
        have: &ObservedEbpf,
        host: &Netlink,
        spec: &NetworkSpec,
        ep: &EndpointSpec,
    ) -> Result<Attached> {
        let mark = EndpointMark::of(spec, ep);
        let hmarker = Marker::HostEnd(mark.clone()).render();
        let cmarker = container_marker(spec, ep);
        let cfg = container_end(ep, &cmarker);
        let info = info_of(&mark);
        let host_ifname = ebpf_port_name(spec.vni, &ep.endpoint_id);
        let mine: Vec<&HostPort> = have
            .ports
            .iter()
            .filter(|p| p.alias.network == spec.name && p.alias.id == ep.endpoint_id)
            .collect();
        let current = match mine.first() {
            Some(p) => host
                .link_by_name(&p.name)
                .await?
                .filter(|l| l.index == p.index),
            None => None,
        };
        let (ct_file, ct, peer_ifname) = match &ep.plug {
            Plug::Netns => {
                let file = open_netns(&ep.netns)?;
                let ct = Netlink::open(Some(&ep.netns)).await?;
                let snap = Snapshot::take(&ct).await?;
                let found = current
                    .as_ref()
                    .and_then(|p| snap.container_end(&spec.name, &ep.endpoint_id, Some(p.index)));
                if let (Some(p), Some(c)) = (&current, found) {
                    // Already attached to this container: converge and report.
                    if let Some(want) = &ep.ifname
                        && want != &c.name
                    {
                        return Err(Error::Conflict(format!(
                            "endpoint {} is already attached as {} (requested {want})",
                            ep.endpoint_id, c.name
                        )));
                    }
                    configure_host_end(host, p, ep.mtu, &hmarker, None).await?;
                    configure_container_end(&ct, c, &cfg).await?;
                    if have.remotes_has(spec.vni, ep.mac) {
                        dp.del_remote(spec.vni, ep.mac)?;
                    }
                    dp.attach_endpoint(p.index, info)?;
                    return Ok(Attached {
                        ifname: c.name.clone(),
                        host_ifname: p.name.clone(),
                        mac: ep.mac,
                    });
                }
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
                (file, Some(ct), Some(ifname))
            }
            Plug::Docker { tmp } => {
                if let Some(p) = &current {
                    let waiting = host
                        .link_by_name(tmp)
                        .await?
                        .is_some_and(|l| l.peer == Some(p.index));
                    let moved = is_netns(&ep.netns) && {
                        let ct = Netlink::open(Some(&ep.netns)).await?;
                        Snapshot::take(&ct)
                            .await?
                            .container_end(&spec.name, &ep.endpoint_id, Some(p.index))
                            .is_some()
                    };
                    if waiting || moved {
                        // Prepared before (its container end may have moved already).
                        configure_host_end(host, p, ep.mtu, &hmarker, None).await?;
                        if have.remotes_has(spec.vni, ep.mac) {
                            dp.del_remote(spec.vni, ep.mac)?;
                        }
                        dp.attach_endpoint(p.index, info)?;
                        return Ok(Attached {
                            ifname: tmp.clone(),
                            host_ifname: p.name.clone(),
                            mac: ep.mac,
                        });
                    }
                }
                (open_netns(&current_netns_path())?, None, None)
            }
        };
        // Leftovers of an earlier attach (another container, or interrupted).
        for p in &mine {
            remove_host_end(dp, host, p.index).await?;
        }
        // IPAM in the KV is authoritative: a remote entry claiming this MAC is stale.
        if have.remotes_has(spec.vni, ep.mac) {
            dp.del_remote(spec.vni, ep.mac)?;
        }
        let tmp = match &ep.plug {
            Plug::Docker { tmp } => tmp.clone(),
            Plug::Netns => temp_peer_name(Some(spec.vni), &ep.endpoint_id),
        };
        let peer = match (&ct, &peer_ifname) {
            (Some(ct), Some(ifname)) => Peer::Netns {
                nl: ct,
                file: ct_file.as_fd(),
                path: &ep.netns,
                ifname,
            },
            _ => Peer::Unplugged {
                nl: host,
                file: ct_file.as_fd(),
            },
        };
        let made = veth::plumb(&Pair {
            host,
            host_ifname: &host_ifname,
            host_marker: &hmarker,
            master: None,
            tmp: &tmp,
            peer,
            ct: cfg,
        })
        .await?;
        if let Err(e) = dp.attach_endpoint(made.host.index, info) {
            // Undo: the program and map entries, then the pair (deleting one end removes
            // both); every failure of the undo is reported with the cause.
            let undo = remove_host_end(dp, host, made.host.index).await;
            return Err(match undo {
                Ok(()) => e,
                Err(u) => Error::Multiple(vec![e, u]),
            });
        }
        tracing::info!(
            "plugged endpoint {} into {} as {} (host end {host_ifname}, ifindex {})",
            ep.endpoint_id,
            spec.name,
            made.ct_name,
            made.host.index
        );
        Ok(Attached {
            ifname: made.ct_name,
            host_ifname,
            mac: ep.mac,
        })
    }

    /// Removes an endpoint's host end (and so its container end), its program and its map
    /// entries. Idempotent; every failure is reported.
    pub async fn detach(&self, network: &str, endpoint_id: &str) -> Result<()> {
        validate_network_name(network)?;
        validate_endpoint_id(endpoint_id)?;
        let mut dp = self.dp.lock().await;
        let host = Netlink::open(None).await?;
        let ports = host_ports(&host.links().await?);
        let mut errors = Vec::new();
        for p in ports
            .iter()
            .filter(|p| p.alias.network == network && p.alias.id == endpoint_id)
        {
            if let Err(e) = remove_host_end(&mut dp, &host, p.index).await {
                errors.push(e);
            }
        }
        crate::error::collect(errors)
    }

    /// Details and counters for `overlayctl datapath`.
    pub async fn details(&self) -> EbpfDetails {
        let dp = self.dp.lock().await;
        EbpfDetails {
            mode: "ebpf",
            pin_dir: self.pin_dir.display().to_string(),
            mounts: self.cfg.mounts.describe(),
            vxlan: VxlanDetails {
                name: VXLAN_DEVICE,
                ifindex: dp.vxlan_ifindex(),
                mtu: self.cfg.mtu,
                local: self.cfg.vtep,
            },
            counters: dp.counters().map(|c| counters_view(&c)).into(),
            maps: dp.dump().map(|s| maps_view(&s)).into(),
            load_warnings: dp.load_warnings().to_vec(),
        }
    }
}

/// Unprograms and deletes a host end (its container end goes with it).
async fn remove_host_end(dp: &mut EbpfDatapath, host: &Netlink, ifindex: u32) -> Result<()> {
    let r = dp.detach_endpoint(ifindex);
    let d = host.del_link(ifindex).await;
    match (r, d) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(e)) => Err(e.into()),
        (Err(a), Err(b)) => Err(Error::Multiple(vec![a, b.into()])),
    }
}

/// Removes the eBPF datapath's state from a host without loading it (a host switching to
/// the kernel datapath, whose vxlan devices would collide with `ovl_vx0`): the link pins (the
/// programs detach), the map pins and the bpffs under `<run_dir>/bpf`, the host ends of
/// endpoints (their container ends go with them; the other datapath plugs them again), the
/// vxlan device and the headroom bridge. Returns what it removed; every failure is reported.
pub async fn purge(run_dir: &Path, mounts: &HostMounts) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    let pin_dir = EbpfBackend::pin_dir(run_dir);
    let seen = mounts.resolve(&pin_dir);
    // Only a directory can hold pins (anything else there is not the datapath's).
    if seen.is_dir() {
        let had_pins = std::fs::read_dir(&seen).is_ok_and(|mut d| d.next().is_some());
        if let Err(e) = crate::load::remove_pin_dir_contents(&seen) {
            errors.push(e);
        }
        let target = std::path::absolute(&pin_dir).unwrap_or(pin_dir.clone());
        let unmounted = mounts.run(move || {
            match nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) => {}
                Err(e) => {
                    return Err(ovl_netlink::Error::Sys {
                        context: format!("unmounting {}", target.display()),
                        source: e,
                    });
                }
            }
            match std::fs::remove_dir(&target) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ovl_netlink::Error::Io {
                    context: "removing the pin directory".into(),
                    path: target.clone(),
                    source: e,
                }),
            }
        });
        match unmounted {
            Ok(()) if had_pins => removed.push(format!("pins in {}", pin_dir.display())),
            Ok(()) => {}
            Err(e) => errors.push(e.into()),
        }
    }
    let host = Netlink::open(None).await?;
    let links = host.links().await?;
    for p in host_ports(&links) {
        match host.del_link(p.index).await {
            Ok(()) => removed.push(format!("host end {} of endpoint {}", p.name, p.alias.id)),
            Err(e) => errors.push(e.into()),
        }
    }
    for name in [VXLAN_DEVICE, HEADROOM_DEV, HEADROOM_BRIDGE] {
        if let Some(l) = links.iter().find(|l| l.name == name) {
            match host.del_link(l.index).await {
                Ok(()) => removed.push(name.to_string()),
                Err(e) => errors.push(e.into()),
            }
        }
    }
    crate::error::collect(errors).map(|()| removed)
}

fn check_container_netns(ep: &EndpointSpec) -> Result<()> {
    open_netns(&ep.netns).map(drop).map_err(|e| match e {
        ovl_netlink::Error::NoNetns { path } => Error::InvalidInput(format!(
            "endpoint {}: container network namespace {} does not exist",
            ep.endpoint_id,
            path.display()
        )),
        other => other.into(),
    })
}

/// The endpoint an op repairs, if it is one of the container-end ops.
fn endpoint_of(op: &EbpfOp) -> Option<(String, String)> {
    match op {
        EbpfOp::PlugEndpoint { net, ep, .. }
        | EbpfOp::ReplugEndpoint { net, ep, .. }
        | EbpfOp::ConfigureEndpoint { net, ep, .. } => {
            Some((net.name.clone(), ep.endpoint_id.clone()))
        }
        _ => None,
    }
}

fn container_end<'a>(ep: &EndpointSpec, marker: &'a str) -> ContainerEnd<'a> {
    ContainerEnd {
        mac: ep.mac,
        mtu: ep.mtu,
        ip: ep.ip,
        prefix_len: ep.prefix_len,
        marker,
    }
}

/// The host ends of endpoints among `links`.
pub fn host_ports(links: &[Link]) -> Vec<HostPort> {
    links
        .iter()
        .filter_map(|l| match marker_of(l.alias.as_deref())? {
            Marker::HostEnd(alias) => Some(HostPort {
                index: l.index,
                name: l.name.clone(),
                alias,
            }),
            _ => None,
        })
        .collect()
}

/// A value, or why it could not be read.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum OrError<T> {
    /// The value.
    Ok(T),
    /// Why not.
    Err {
        /// The error.
        error: String,
    },
}

impl<T> From<Result<T>> for OrError<T> {
    fn from(r: Result<T>) -> Self {
        match r {
            Ok(v) => OrError::Ok(v),
            Err(e) => OrError::Err {
                error: e.to_string(),
            },
        }
    }
}

/// `overlayctl datapath` on the eBPF datapath.
#[derive(Debug, Clone, Serialize)]
pub struct EbpfDetails {
    /// `ebpf`.
    pub mode: &'static str,
    /// The pin directory (the host's path).
    pub pin_dir: String,
    /// The mount namespace holding its bpffs.
    pub mounts: String,
    /// The vxlan device.
    pub vxlan: VxlanDetails,
    /// Counters per program.
    pub counters: OrError<CountersView>,
    /// What the maps hold.
    pub maps: OrError<MapsView>,
    /// Problems met adopting the pinned datapath.
    pub load_warnings: Vec<String>,
}

/// The vxlan device.
#[derive(Debug, Clone, Serialize)]
pub struct VxlanDetails {
    /// Its name.
    pub name: &'static str,
    /// Its index.
    pub ifindex: u32,
    /// The overlay MTU.
    pub mtu: u32,
    /// The VTEP.
    pub local: Ipv4Addr,
}

/// Counters per program (`lxc_egress`: container egress, `vxlan_ingress`: frames the vxlan
/// device decapsulated, `vtep_ingress`: frames decapsulated on the underlay interface) and the
/// drops by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CountersView {
    /// `lxc_egress`.
    pub lxc_egress: BTreeMap<String, u64>,
    /// `vxlan_ingress`.
    pub vxlan_ingress: BTreeMap<String, u64>,
    /// `vtep_ingress`.
    pub vtep_ingress: BTreeMap<String, u64>,
    /// Other counters.
    pub other: BTreeMap<String, u64>,
    /// Every drop counter.
    pub drops: BTreeMap<String, u64>,
    /// Their sum.
    pub drops_total: u64,
}

/// Groups the counters per program.
pub fn counters_view(c: &Counters) -> CountersView {
    let mut v = CountersView::default();
    for (name, n) in c.entries() {
        if name.contains("_drop_") {
            v.drops.insert(name.to_string(), n);
            v.drops_total += n;
        }
        if let Some(k) = name.strip_prefix("egress_") {
            v.lxc_egress.insert(k.to_string(), n);
        } else if let Some(k) = name.strip_prefix("ingress_") {
            v.vxlan_ingress.insert(k.to_string(), n);
        } else if let Some(k) = name.strip_prefix("underlay_") {
            v.vtep_ingress.insert(k.to_string(), n);
        } else {
            v.other.insert(name.to_string(), n);
        }
    }
    v
}

/// A local endpoint in the maps.
#[derive(Debug, Clone, Serialize)]
pub struct LocalView {
    /// Host end.
    pub ifindex: u32,
    /// VNI.
    pub vni: u32,
    /// MAC.
    pub mac: String,
    /// Address.
    pub ip: String,
}

/// A remote endpoint in the maps.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteView {
    /// VNI.
    pub vni: u32,
    /// MAC.
    pub mac: String,
    /// Address.
    pub ip: String,
    /// Its VTEP.
    pub vtep: String,
}

/// What the maps hold.
#[derive(Debug, Clone, Serialize)]
pub struct MapsView {
    /// The vxlan device the programs use.
    pub vxlan_ifindex: u32,
    /// Local endpoints.
    pub local_endpoints: Vec<LocalView>,
    /// Remote endpoints.
    pub remotes: Vec<RemoteView>,
    /// ARP entries answered in BPF.
    pub arp_entries: usize,
    /// Flood lists by VNI.
    pub flood: BTreeMap<String, Vec<String>>,
    /// Local flood lists by VNI.
    pub local_flood: BTreeMap<String, Vec<u32>>,
    /// Host ends with a pinned program link.
    pub attached_links: Vec<u32>,
}

fn maps_view(s: &EbpfState) -> MapsView {
    MapsView {
        vxlan_ifindex: s.vxlan_ifindex,
        local_endpoints: s
            .endpoints
            .iter()
            .map(|(i, e): (&u32, &EndpointInfo)| LocalView {
                ifindex: *i,
                vni: e.vni,
                mac: e.mac.to_string(),
                ip: e.ip.to_string(),
            })
            .collect(),
        remotes: s
            .remotes
            .iter()
            .map(|((vni, mac), r)| RemoteView {
                vni: *vni,
                mac: mac.to_string(),
                ip: r.ip.to_string(),
                vtep: r.vtep.to_string(),
            })
            .collect(),
        arp_entries: s.arp.len(),
        flood: s
            .flood
            .iter()
            .map(|(vni, l)| (vni.to_string(), l.iter().map(ToString::to_string).collect()))
            .collect(),
        local_flood: s
            .local_flood
            .iter()
            .map(|(vni, l)| (vni.to_string(), l.clone()))
            .collect(),
        attached_links: s.attached_links.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_grouped_per_program_with_drops() {
        let c = Counters {
            egress_packets: 10,
            egress_drop_spoofed_ip: 3,
            egress_drop_spoofed_mac: 2,
            ingress_packets: 5,
            underlay_decap: 4,
            ..Default::default()
        };
        let j = serde_json::to_value(counters_view(&c)).unwrap();
        assert_eq!(j["lxc_egress"]["packets"], 10);
        assert_eq!(j["lxc_egress"]["drop_spoofed_ip"], 3);
        assert_eq!(j["vxlan_ingress"]["packets"], 5);
        assert_eq!(j["vtep_ingress"]["decap"], 4);
        assert_eq!(j["drops"]["egress_drop_spoofed_mac"], 2);
        assert_eq!(j["drops_total"], 5);
    }

    #[test]
    fn errors_show_in_place_of_values() {
        let e: OrError<u32> = Err(Error::InvalidInput("x".into())).into();
        assert_eq!(
            serde_json::to_value(e).unwrap(),
            serde_json::json!({"error": "invalid input: x"})
        );
    }
}
