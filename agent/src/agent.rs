//! The agent: one object holding the settings, the cluster store, the current view of the
//! cluster and the health of the KV. The control API, the Docker plugin and the background
//! loops all call into it.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use ovl_core::{ClusterStore, ClusterView, EndpointRecord, ipam, model, store::NetworkRequest};
use ovl_datapath::{EndpointSpec, MacAddr};
use ovl_gateway::Gateway;
use ovl_kv::Kv;
use tokio::sync::{Notify, watch};

use crate::{
    api::types::{
        AttachReply, AttachRequest, Counts, DetachReply, DetachRequest, HostInfo, KvStatus,
        NetworkInfo, Peers, PeersNetwork, Status,
    },
    config::Settings,
    datapath::Datapath,
    error::{AgentError, Result},
    local::{self, Attachment, LocalState},
    reconcile::desired::{self, Me},
};

/// Health of the KV as last probed.
#[derive(Debug, Default)]
pub struct KvHealth {
    /// When the KV last answered.
    pub last_ok: Option<Instant>,
    /// The last error, cleared by the next success.
    pub last_error: Option<String>,
}

/// The agent.
pub struct Agent {
    /// Resolved settings.
    pub settings: Settings,
    /// Cluster state in the KV.
    pub store: ClusterStore,
    /// MTU of the underlay interface.
    pub underlay_mtu: u32,
    view: watch::Sender<Arc<ClusterView>>,
    health: Mutex<KvHealth>,
    registered: AtomicBool,
    ready: AtomicBool,
    /// Wakes the reconciler (something changed, or a caller wants convergence now).
    pub kick: Notify,
    /// The datapath (kernel or eBPF).
    pub dp: Arc<dyn Datapath>,
    /// Serialises datapath changes: attach/detach and reconcile passes never interleave.
    pub(crate) dp_lock: tokio::sync::Mutex<()>,
    /// Local endpoints being attached, counted as desired until the view shows them.
    pub(crate) pending: Mutex<BTreeSet<(String, String)>>,
    /// The gateway bridge (NAT, published ports).
    pub gw: Arc<Gateway>,
    /// What this host attached.
    pub local: LocalState,
    /// Names: zone, DNS listeners, hosts files.
    pub names: crate::names::Names,
    /// Wakes the names loop.
    pub names_kick: Notify,
    /// Counters for `/metrics`.
    pub counters: crate::metrics::Counters,
    /// Peers already announced by gratuitous ARP: (network, address, MAC).
    announced: Mutex<BTreeSet<(String, std::net::Ipv4Addr, [u8; 6])>>,
    names_pass: tokio::sync::Mutex<()>,
}

impl Agent {
    /// A new agent over `kv`.
    pub fn new(
        settings: Settings,
        kv: Arc<dyn Kv>,
        underlay_mtu: u32,
        dp: Arc<dyn Datapath>,
        gw: Arc<Gateway>,
        local: LocalState,
        names: crate::names::Names,
    ) -> Arc<Self> {
        let store = ClusterStore::new(kv, settings.subnet_pool);
        Arc::new(Agent {
            settings,
            store,
            underlay_mtu,
            view: watch::channel(Arc::new(ClusterView::default())).0,
            health: Mutex::new(KvHealth::default()),
            registered: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            kick: Notify::new(),
            dp,
            dp_lock: tokio::sync::Mutex::new(()),
            pending: Mutex::new(BTreeSet::new()),
            gw,
            local,
            names,
            names_kick: Notify::new(),
            counters: Default::default(),
            announced: Mutex::new(BTreeSet::new()),
            names_pass: tokio::sync::Mutex::new(()),
        })
    }

    /// The latest view of the cluster.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// Subscribes to view changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }

    /// Publishes a new view (from the sync loop).
    pub fn publish(&self, v: ClusterView) {
        {
            // Pending attaches the view now shows are no longer pending.
            let mut p = self.pending.lock().expect("pending lock");
            p.retain(|k| !v.endpoints.contains_key(k));
        }
        self.view.send_replace(Arc::new(v));
        self.kick.notify_one();
    }

    /// Marks that a full listing of the KV has been seen: reconciliation may start.
    pub fn set_ready(&self) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            self.kick.notify_one();
        }
    }

    /// Whether the view comes from at least one full listing.
    pub fn view_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn me(&self) -> Me<'_> {
        Me {
            host: &self.settings.host_id,
            vtep: self.settings.advertise_addr,
            underlay_mtu: self.underlay_mtu,
            vxlan_port: self.settings.vxlan_port,
        }
    }

    fn desired(&self, view: &ClusterView) -> ovl_datapath::Desired {
        let pending = self.pending.lock().expect("pending lock").clone();
        desired::desired(view, &self.me(), &pending)
    }

    /// One reconciliation pass; returns the number of operations applied.
    pub async fn reconcile_once(&self) -> Result<usize> {
        let _g = self.dp_lock.lock().await;
        let view = self.view();
        let want = self.desired(&view);
        let done = self.dp.converge(&want).await?;
        let c = &self.counters;
        crate::metrics::Counters::add(&c.reconcile_passes, 1);
        crate::metrics::Counters::add(&c.ops_applied, done.applied as u64);
        crate::metrics::Counters::add(&c.ops_failed, done.failed.len() as u64);
        self.announce_new_peers(&want).await;
        for f in &done.failed {
            tracing::warn!(failure = %f, "datapath operation failed; retrying on the next pass");
        }
        Ok(done.applied)
    }

    /// Sends one gratuitous ARP per peer that is newly in the desired state (once per peer).
    async fn announce_new_peers(&self, want: &ovl_datapath::Desired) {
        let now: BTreeSet<(String, std::net::Ipv4Addr, [u8; 6])> = want
            .networks
            .iter()
            .flat_map(|(n, d)| d.peers.iter().map(move |p| (n.clone(), p.ip, p.mac.0)))
            .collect();
        let fresh: Vec<_> = {
            let mut seen = self.announced.lock().expect("announced lock");
            let fresh = now.difference(&seen).cloned().collect();
            *seen = now;
            fresh
        };
        let mut by_net: std::collections::BTreeMap<&str, Vec<(std::net::Ipv4Addr, MacAddr)>> =
            Default::default();
        for (n, ip, mac) in &fresh {
            by_net.entry(n).or_default().push((*ip, MacAddr(*mac)));
        }
        for (net, peers) in by_net {
            if let Err(e) = self.dp.announce(net, &peers).await {
                tracing::debug!(network = net, error = %e, "gratuitous ARP");
            }
        }
    }

    /// Repairs the gateway bridge and its firewall rules if something changed them.
    pub async fn reconcile_gateway(&self) {
        if self.gw.info().is_none() {
            return;
        }
        let _g = self.dp_lock.lock().await;
        match self.gw.reconcile().await {
            Ok(true) => tracing::info!("gateway bridge or firewall rules repaired"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "gateway reconcile failed"),
        }
        if let Some(info) = self.gw.info() {
            let check = ovl_gateway::docker::ensure_docker_user_exception(&info.bridge);
            match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
                Ok(Ok(true)) => tracing::info!(
                    "added the gateway bridge exception to Docker's DOCKER-USER chain"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "Docker coexistence"),
                Err(_) => tracing::warn!("Docker coexistence: iptables did not answer within 3 s"),
            }
        }
    }

    fn overlay_subnets(&self) -> Vec<ipnetwork::Ipv4Network> {
        self.view().networks.values().map(|n| n.subnet).collect()
    }

    /// Gives the container its gateway-bridge interface (one per namespace, shared by all its
    /// non-internal attachments) and publishes its ports.
    async fn attach_gateway(
        &self,
        netns: &std::path::Path,
        nskey: &str,
        ports: &[ovl_core::PortMap],
    ) -> Result<String> {
        let gw_err = |e: ovl_gateway::Error| match e {
            ovl_gateway::Error::PortInUse { .. } | ovl_gateway::Error::InvalidSubnet { .. } => {
                AgentError::Conflict(e.to_string())
            }
            other => AgentError::Datapath(format!("gateway: {other}")),
        };
        let first = self.gw.info().is_none();
        self.gw
            .ensure_with(&self.overlay_subnets())
            .await
            .map_err(gw_err)?;
        if first {
            // Publish the chosen subnet at once: other hosts refuse overlay subnets that
            // overlap it (the registry would only write it on its next renewal).
            if let Err(e) = self.store.put_host(&self.host_record()).await {
                tracing::warn!(error = %e, "publishing the gateway subnet");
            }
        }
        let ep = self.gw.attach(nskey, netns).await.map_err(gw_err)?;
        if !ports.is_empty() {
            let maps: Vec<ovl_gateway::PortMap> = ports.iter().map(to_gw_port).collect();
            self.gw.publish(nskey, &maps).await.map_err(gw_err)?;
        }
        Ok(ep.ifname)
    }

    /// Removes the gateway interface when no non-internal attachment of the namespace is
    /// left, else republishes the remaining attachments' ports.
    async fn detach_gateway(&self, nskey: &str) -> Result<()> {
        let rest: Vec<Attachment> = self
            .local
            .in_netns(nskey)
            .into_iter()
            .filter(|a| !a.network.internal)
            .collect();
        let r = if rest.is_empty() {
            self.gw.detach(nskey).await
        } else {
            let ports: Vec<ovl_gateway::PortMap> = rest
                .iter()
                .flat_map(|a| a.endpoint.publish.iter().map(to_gw_port))
                .collect();
            match self.gw.unpublish(nskey).await {
                Ok(()) if !ports.is_empty() => self.gw.publish(nskey, &ports).await,
                other => other,
            }
        };
        r.map_err(|e| AgentError::Datapath(format!("gateway: {e}")))
    }

    /// `overlayctl attach`: claims an address, records the endpoint, plumbs the container.
    pub async fn attach(&self, req: AttachRequest) -> Result<AttachReply> {
        let t0 = Instant::now();
        model::validate_endpoint_name(&req.name).map_err(AgentError::Invalid)?;
        for a in &req.aliases {
            model::validate_endpoint_name(a)
                .map_err(|e| AgentError::Invalid(e.replace("container name", "alias")))?;
        }
        let netns: PathBuf = match (&req.netns, req.pid) {
            (Some(p), None) => p.clone(),
            (None, Some(pid)) => format!("/proc/{pid}/ns/net").into(),
            _ => {
                return Err(AgentError::Invalid(
                    "give exactly one of --netns or --pid".into(),
                ));
            }
        };
        if !ovl_datapath::netns::is_netns(&netns) {
            return Err(AgentError::Invalid(format!(
                "{} is not a network namespace",
                netns.display()
            )));
        }
        let me = self.settings.host_id.clone();
        let net =
            self.store.network(&req.network).await?.ok_or_else(|| {
                AgentError::NotFound(format!("network {} not found", req.network))
            })?;
        let id = req.name.clone();
        let spec = desired::spec(&net, &self.me());
        let rec = match self.store.endpoint(&net.name, &id).await? {
            Some(e) if e.host == me => e, // idempotent: attach again what is recorded
            Some(e) => {
                return Err(AgentError::Conflict(format!(
                    "name {} is already used on network {} (on host {})",
                    id, net.name, e.host
                )));
            }
            None => {
                if let Some(m) = req.mac
                    && self.view().endpoints_on(&net.name).any(|e| e.mac == m)
                {
                    return Err(AgentError::Conflict(format!(
                        "MAC {m} is already used on network {}",
                        net.name
                    )));
                }
                tracing::debug!(took = ?t0.elapsed(), "attach: network and endpoint read");
                let ip = self.store.allocate_addr(&net, req.ip, &id).await?;
                tracing::debug!(took = ?t0.elapsed(), "attach: address allocated");
                let rec = EndpointRecord {
                    id: id.clone(),
                    network: net.name.clone(),
                    host: me.clone(),
                    name: req.name.clone(),
                    aliases: req.aliases.clone(),
                    ip,
                    mac: req.mac.unwrap_or_else(|| ipam::mac_for(ip)),
                    publish: req.publish.clone(),
                };
                if let Err(e) = self.store.create_endpoint(&rec).await {
                    let _ = self.store.release_addr(&net.name, ip, &id).await;
                    return Err(e.into());
                }
                rec
            }
        };
        let key = (net.name.clone(), id.clone());
        self.pending
            .lock()
            .expect("pending lock")
            .insert(key.clone());
        let ep = EndpointSpec {
            endpoint_id: id.clone(),
            netns: netns.clone(),
            mac: MacAddr(rec.mac.0),
            ip: rec.ip,
            prefix_len: net.subnet.prefix(),
            mtu: spec.mtu,
            ifname: None,
        };
        let attached = {
            let _g = self.dp_lock.lock().await;
            tracing::debug!(took = ?t0.elapsed(), "attach: endpoint recorded");
            let r = self.dp.attach(&spec, &ep).await;
            tracing::debug!(took = ?t0.elapsed(), "attach: datapath plumbed");
            match r {
                Ok(a) => a,
                Err(e) => {
                    self.pending.lock().expect("pending lock").remove(&key);
                    let _ = self.dp.detach(&net.name, &id).await;
                    let _ = self.store.delete_endpoint(&net.name, &id).await;
                    return Err(AgentError::Datapath(format!(
                        "attaching {id} to {}: {e}",
                        net.name
                    )));
                }
            }
        };
        tune_arp(&netns, &attached.ifname);
        let nskey = local::netns_key(&netns)
            .map_err(|e| AgentError::Internal(format!("{}: {e}", netns.display())))?;
        let gateway_ifname = if net.internal {
            None
        } else {
            let _g = self.dp_lock.lock().await;
            match self.attach_gateway(&netns, &nskey, &rec.publish).await {
                Ok(ifname) => Some(ifname),
                Err(e) => {
                    // Nothing half-made: undo the overlay side too.
                    self.pending.lock().expect("pending lock").remove(&key);
                    let _ = self.dp.detach(&net.name, &id).await;
                    if self
                        .local
                        .in_netns(&nskey)
                        .iter()
                        .all(|a| a.network.internal)
                    {
                        let _ = self.gw.detach(&nskey).await;
                    }
                    let _ = self.store.delete_endpoint(&net.name, &id).await;
                    return Err(e);
                }
            }
        };
        let hosts_file = match crate::names::Names::prepare_netns_etc(&netns) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(netns = %netns.display(), error = %e, "preparing /etc/netns files");
                None
            }
        };
        self.local.insert(Attachment {
            endpoint: rec.clone(),
            network: net.clone(),
            netns: netns.clone(),
            netns_key: nskey,
            ifname: attached.ifname.clone(),
            hosts_file,
            dns_listener: true,
        });
        self.kick.notify_one();
        // Names before returning: `ip netns exec X ping peer.net` works right after attach.
        tracing::debug!(took = ?t0.elapsed(), "attach: gateway and local state");
        self.sync_names().await;
        tracing::info!(network = %net.name, endpoint = %id, ip = %rec.ip, ifname = %attached.ifname, took = ?t0.elapsed(), "attached");
        crate::metrics::Counters::add(&self.counters.attaches, 1);
        Ok(AttachReply {
            endpoint: rec,
            ifname: attached.ifname,
            mtu: spec.mtu,
            prefix_len: net.subnet.prefix(),
            gateway_ifname,
        })
    }

    /// `overlayctl detach`: removes the interfaces, the record and the address. Idempotent.
    pub async fn detach(&self, req: DetachRequest) -> Result<DetachReply> {
        let id = req.name.clone();
        let rec = self.store.endpoint(&req.network, &id).await?;
        if let Some(r) = &rec
            && r.host != self.settings.host_id
        {
            return Err(AgentError::Conflict(format!(
                "{} on network {} lives on host {}: detach it there",
                id, req.network, r.host
            )));
        }
        self.unplumb(&req.network, &id, true).await?;
        let removed = self
            .store
            .delete_endpoint(&req.network, &id)
            .await?
            .is_some();
        self.sync_names().await;
        self.kick.notify_one();
        if removed {
            tracing::info!(network = %req.network, endpoint = %id, "detached");
            crate::metrics::Counters::add(&self.counters.detaches, 1);
        }
        Ok(DetachReply { removed })
    }

    /// Takes endpoint `id` of `network` out of this host's datapath and local state (not the
    /// KV): it stops being pending, its port goes, and with `gateway` (standalone attach; under
    /// Docker the gateway is Docker's) its gateway-bridge interface goes too when it was the
    /// namespace's last one. Idempotent. Returns the local attachment it removed.
    pub async fn unplumb(
        &self,
        network: &str,
        id: &str,
        gateway: bool,
    ) -> Result<Option<Attachment>> {
        let _g = self.dp_lock.lock().await;
        self.pending
            .lock()
            .expect("pending lock")
            .remove(&(network.to_string(), id.to_string()));
        self.dp
            .detach(network, id)
            .await
            .map_err(|e| AgentError::Datapath(format!("detaching {id} from {network}: {e}")))?;
        let removed = self.local.remove(network, id);
        if gateway
            && let Some(a) = &removed
            && !a.network.internal
        {
            self.detach_gateway(&a.netns_key).await?;
        }
        Ok(removed)
    }

    /// One names pass over the current view and local attachments.
    pub async fn sync_names(&self) {
        let _g = self.names_pass.lock().await;
        let view = self.view();
        let local = self.local.all();
        let gw = self.gw.info().map(|i| i.address);
        self.names.sync(&view, &local, gw).await;
    }

    /// `overlayctl dns lookup NAME --from CNAME`: answers as CNAME's resolver would.
    pub async fn dns_lookup(&self, name: &str, from: &str) -> Result<crate::api::types::DnsLookup> {
        let mut nets: BTreeSet<String> = self
            .local
            .all()
            .iter()
            .filter(|a| a.endpoint.name == from || a.endpoint.id == from)
            .map(|a| a.endpoint.network.clone())
            .collect();
        if nets.is_empty() {
            let v = self.view();
            nets = v
                .endpoints
                .values()
                .filter(|e| e.name == from)
                .map(|e| e.network.clone())
                .collect();
        }
        if nets.is_empty() {
            return Err(AgentError::NotFound(format!("no container named {from}")));
        }
        let nets: Vec<String> = nets.into_iter().collect();
        self.names.lookup(&nets, name, from).await
    }

    /// `overlayctl peers`: desired vs. programmed, per network, with the plan between them.
    pub async fn peers(&self, only: Option<&str>) -> Result<Peers> {
        let view = self.view();
        let want = self.desired(&view);
        let mut reports = self.dp.report(&want).await?;
        let mut names: BTreeSet<String> = want.networks.keys().cloned().collect();
        names.extend(reports.keys().cloned());
        let mut out = Peers::default();
        for name in names {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let mut n = PeersNetwork {
                network: name.clone(),
                ..Default::default()
            };
            if let Some(d) = want.networks.get(&name) {
                n.desired.push(format!(
                    "vxlan vni {} local {} mtu {}",
                    d.spec.vni, d.spec.local_vtep, d.spec.mtu
                ));
                n.desired
                    .extend(d.local_endpoints.iter().map(|id| format!("local {id}")));
                n.desired.extend(
                    d.peers
                        .iter()
                        .map(|p| format!("peer {} {} via {}", p.ip, p.mac, p.vtep)),
                );
                n.desired
                    .extend(d.flood.iter().map(|f| format!("flood {f}")));
            }
            if let Some(r) = reports.remove(&name) {
                n.actual = r.actual;
                n.diff = r.diff;
            }
            out.networks.push(n);
        }
        Ok(out)
    }

    /// Records the outcome of a KV call, for `status`.
    pub fn note_kv(&self, outcome: std::result::Result<(), String>) {
        let mut h = self.health.lock().expect("health lock");
        match outcome {
            Ok(()) => {
                h.last_ok = Some(Instant::now());
                h.last_error = None;
            }
            Err(e) => h.last_error = Some(e),
        }
    }

    /// This host's record as it should be in the KV.
    pub fn host_record(&self) -> ovl_core::HostRecord {
        ovl_core::HostRecord {
            id: self.settings.host_id.clone(),
            vtep: self.settings.advertise_addr,
            underlay_mtu: self.underlay_mtu,
            datapath: self.dp.mode().to_string(),
            version: crate::VERSION.to_string(),
            gw_subnet: self.gw.info().map(|i| i.subnet),
        }
    }

    /// Marks whether this host's liveness record is held.
    pub fn set_registered(&self, yes: bool) {
        self.registered.store(yes, Ordering::Relaxed);
    }

    /// The container MTU of a network on this host.
    pub fn mtu_for(&self, mtu: Option<u32>) -> u32 {
        mtu.unwrap_or(self.underlay_mtu.saturating_sub(50))
    }

    /// `overlayctl status`.
    pub fn status(&self) -> Status {
        let v = self.view();
        let h = self.health.lock().expect("health lock");
        let kv = KvStatus {
            backend: self.store.kv().describe(),
            reachable: h.last_error.is_none() && h.last_ok.is_some(),
            error: h.last_error.clone(),
            last_ok_secs: h.last_ok.map(|t| t.elapsed().as_secs()),
        };
        Status {
            host_id: self.settings.host_id.clone(),
            version: crate::VERSION.to_string(),
            advertise_addr: self.settings.advertise_addr,
            underlay_mtu: self.underlay_mtu,
            datapath: self.dp.mode().to_string(),
            registered: self.registered.load(Ordering::Relaxed),
            kv,
            counts: Counts {
                hosts: v.hosts.len(),
                hosts_alive: v.hosts.keys().filter(|h| v.is_alive(h)).count(),
                networks: v.networks.len(),
                endpoints: v.endpoints.len(),
                local_endpoints: v.endpoints_of_host(&self.settings.host_id).count(),
            },
            view_revision: v.revision,
            details: self.gateway_details(),
        }
    }

    fn gateway_details(&self) -> Vec<(String, String)> {
        let mut d = Vec::new();
        match self.gw.info() {
            Some(i) => d.push((
                "gateway".into(),
                format!("{} {} ({})", i.bridge, i.subnet, i.address),
            )),
            None => d.push(("gateway".into(), "not created yet".into())),
        }
        let ports: Vec<String> = self
            .gw
            .published()
            .into_iter()
            .map(|(ep, p)| {
                format!("{}:{}/{:?}->{}", p.host_port, p.container_port, p.proto, ep).to_lowercase()
            })
            .collect();
        if !ports.is_empty() {
            d.push(("published".into(), ports.join(" ")));
        }
        d
    }

    /// `overlayctl hosts`: from the KV when reachable, else from the last view.
    pub async fn hosts(&self) -> Vec<HostInfo> {
        let rows = match self.store.hosts().await {
            Ok(rows) => rows,
            Err(_) => {
                let v = self.view();
                v.hosts
                    .values()
                    .map(|h| (h.clone(), v.is_alive(&h.id)))
                    .collect()
            }
        };
        rows.into_iter()
            .map(|(h, alive)| HostInfo {
                id: h.id,
                vtep: h.vtep,
                underlay_mtu: h.underlay_mtu,
                gw_subnet: h.gw_subnet,
                datapath: h.datapath,
                version: h.version,
                alive,
            })
            .collect()
    }

    fn network_info(&self, v: &ClusterView, rec: ovl_core::NetworkRecord) -> NetworkInfo {
        let endpoints = v.endpoints_on(&rec.name).count();
        let mut details = Vec::new();
        if !rec.internal
            && let Some(i) = self.gw.info()
        {
            details.push(("gateway here".into(), format!("{} {}", i.bridge, i.subnet)));
        }
        for e in v.endpoints_on(&rec.name).filter(|e| !e.publish.is_empty()) {
            let ports: Vec<String> = e.publish.iter().map(|p| p.to_string()).collect();
            details.push((
                format!("published {}", e.display_name()),
                format!("{} on {}", ports.join(","), e.host),
            ));
        }
        NetworkInfo {
            mtu_here: self.mtu_for(rec.mtu),
            record: rec,
            endpoints,
            details,
        }
    }

    /// `overlayctl network create`.
    pub async fn create_network(&self, req: NetworkRequest) -> Result<NetworkInfo> {
        if let Some(s) = req.subnet {
            let v = self.view();
            let mut gws: Vec<(String, ipnetwork::Ipv4Network)> = v
                .hosts
                .values()
                .filter_map(|h| h.gw_subnet.map(|g| (h.id.clone(), g)))
                .collect();
            if let Some(i) = self.gw.info() {
                gws.push((self.settings.host_id.clone(), i.subnet));
            }
            if let Some((h, g)) = gws.iter().find(|(_, g)| ipam::overlaps(*g, s)) {
                return Err(AgentError::Conflict(format!(
                    "subnet {s} overlaps the gateway bridge subnet {g} of host {h}"
                )));
            }
        }
        let rec = self.store.create_network(&req).await?;
        tracing::info!(network = %rec.name, vni = rec.vni, subnet = %rec.subnet, "network created");
        Ok(self.network_info(&self.view(), rec))
    }

    /// `overlayctl network ls`.
    pub async fn networks(&self) -> Result<Vec<NetworkInfo>> {
        let v = self.view();
        let nets = match self.store.networks().await {
            Ok(n) => n,
            Err(e) if matches!(&e, ovl_core::StoreError::Kv(k) if k.is_unreachable()) => {
                v.networks.values().cloned().collect()
            }
            Err(e) => return Err(e.into()),
        };
        Ok(nets.into_iter().map(|n| self.network_info(&v, n)).collect())
    }

    /// `overlayctl network inspect`.
    pub async fn network(&self, name: &str) -> Result<NetworkInfo> {
        let v = self.view();
        let rec = match self.store.network(name).await {
            Ok(r) => r,
            Err(e) if matches!(&e, ovl_core::StoreError::Kv(k) if k.is_unreachable()) => {
                v.networks.get(name).cloned()
            }
            Err(e) => return Err(e.into()),
        };
        let rec = rec.ok_or_else(|| AgentError::NotFound(format!("network {name} not found")))?;
        Ok(self.network_info(&v, rec))
    }

    /// `overlayctl network rm`.
    pub async fn delete_network(&self, name: &str) -> Result<NetworkInfo> {
        let rec = self.store.delete_network(name).await?;
        tracing::info!(network = %rec.name, "network removed");
        Ok(self.network_info(&self.view(), rec))
    }

    /// `overlayctl endpoints`.
    pub async fn endpoints(&self, net: Option<&str>) -> Result<Vec<ovl_core::EndpointRecord>> {
        match self.store.endpoints(net).await {
            Ok(e) => Ok(e),
            Err(ovl_core::StoreError::Kv(k)) if k.is_unreachable() => {
                let v = self.view();
                Ok(v.endpoints
                    .values()
                    .filter(|e| net.is_none_or(|n| e.network == n))
                    .cloned()
                    .collect())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn to_gw_port(p: &ovl_core::PortMap) -> ovl_gateway::PortMap {
    ovl_gateway::PortMap {
        host_port: p.host_port,
        container_port: p.port,
        proto: match p.proto {
            ovl_core::Proto::Tcp => ovl_gateway::Proto::Tcp,
            ovl_core::Proto::Udp => ovl_gateway::Proto::Udp,
        },
    }
}

/// ARP retransmit time on overlay interfaces. Neighbours on the overlay are answered locally
/// (proxy ARP from programmed entries, or in BPF), so a request sent a moment before the
/// peer's entry arrived is dropped; the kernel's default retry after 1 s is what made
/// Docker's overlay take over a second to converge. Retrying after 100 ms costs nothing.
const ARP_RETRANS_MS: &str = "100";

/// Sets [`ARP_RETRANS_MS`] on `ifname` inside `netns` (best effort: a failure only slows
/// the first contact).
fn tune_arp(netns: &std::path::Path, ifname: &str) {
    let knob = format!("/proc/sys/net/ipv4/neigh/{ifname}/retrans_time_ms");
    let r = ovl_datapath::netns::run_in_netns(Some(netns), move || {
        std::fs::write(&knob, ARP_RETRANS_MS)
            .map_err(|e| ovl_datapath::Error::InvalidInput(format!("{knob}: {e}")))
    });
    if let Err(e) = r {
        tracing::debug!(netns = %netns.display(), error = %e, "tuning ARP retransmits");
    }
}
