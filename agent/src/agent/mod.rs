//! The agent: the state every entry point shares (settings, the cluster store and view, KV
//! health, the reconciler that owns the datapath, the gateway and names services, local
//! attachments) behind private fields, and its operations, one file per concern:
//! [`endpoints`] (attach, detach, the plumbing verb), [`networks`] (create, list, remove),
//! [`hosts`] (forget a host gone for good), [`keys`] (this host's WireGuard key), [`inspect`] (status, hosts, peers, lookups) and [`passes`] (one reconcile, gateway or names
//! pass). The control API, the Docker plugin and the long-running loops (`tasks`) call these
//! verbs; nothing reaches into the fields.

pub mod checks;
mod doctor;
mod endpoints;
mod health;
mod hosts;
mod inspect;
mod keys;
mod monitor;
mod networks;
mod passes;
pub mod pathprobe;
mod records;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use ipnetwork::Ipv4Network;
use ovl_core::{Change, ClusterStore, ClusterView};
use ovl_kv::{Kv, LeaseId};
use tokio::sync::{Notify, watch};

pub use endpoints::Plumbed;
pub use health::HealthLoop;
pub use inspect::{AdmissionReport, DatapathReport};

use crate::{
    config::Settings,
    counters::Counters,
    datapath::Datapath,
    gateway::Gateway,
    health::HealthProbe,
    local::LocalState,
    names::Names,
    probe::VtepProbe,
    reconcile::{
        Reconciler,
        desired::{Here, Local, Me, Plugged},
        liveness::{HostState, Liveness},
    },
    tunnel::Tunnel,
};

/// Health of the KV as last probed.
#[derive(Debug, Default)]
struct KvHealth {
    /// When the KV last answered.
    last_ok: Option<Instant>,
    /// The last error, cleared by the next success.
    last_error: Option<String>,
    /// The store's revision at the last probe.
    head: Option<i64>,
    /// When the view was last known current: a listing, a watch event, or a probe that
    /// found the store at the view's revision.
    confirmed: Option<Instant>,
    /// A listing or watch of the cluster state failing since then, and why (the probe alone
    /// succeeding says nothing about a view that cannot be read).
    sync_failing: Option<(Instant, String)>,
    /// How long the last full listing took, read and decoded.
    last_list: Option<std::time::Duration>,
}

/// The side-effecting services an agent drives: real ones in the daemon, fakes in tests.
pub struct Services {
    /// The datapath (kernel or eBPF).
    pub datapath: Arc<dyn Datapath>,
    /// The gateway bridge.
    pub gateway: Arc<dyn Gateway>,
    /// Names: DNS listeners and hosts files.
    pub names: Arc<dyn Names>,
    /// Probes of other hosts' VTEPs.
    pub probe: Arc<dyn VtepProbe>,
    /// WireGuard between hosts, for encrypted networks.
    pub tunnel: Arc<dyn Tunnel>,
    /// Probes of other hosts' health endpoints through the overlay.
    pub health: Arc<dyn HealthProbe>,
    /// `overlayctl probe`'s namespace, TAP and captures.
    pub wire: Arc<dyn crate::pathprobe::wire::ProbeWire>,
}

/// What the agent knows of this host's underlay, read once at start.
#[derive(Debug, Clone, Copy)]
pub struct Underlay {
    /// MTU of the interface holding the advertise address.
    pub mtu: u32,
    /// The network of the advertise address (overlay subnets must stay out of it).
    pub network: Option<Ipv4Network>,
}

/// The agent.
pub struct Agent {
    settings: Settings,
    store: ClusterStore,
    underlay_mtu: u32,
    underlay: Option<Ipv4Network>,
    view: watch::Sender<Arc<ClusterView>>,
    health: Mutex<KvHealth>,
    registered: AtomicBool,
    ready: AtomicBool,
    /// Wakes the reconcile loop (something changed, or a caller wants convergence now).
    kick: Notify,
    /// Wakes the names loop.
    names_kick: Notify,
    rec: Reconciler,
    gw: Arc<dyn Gateway>,
    local: LocalState,
    names: Arc<dyn Names>,
    counters: Counters,
    names_pass: tokio::sync::Mutex<()>,
    probe: Arc<dyn VtepProbe>,
    liveness: Mutex<Liveness>,
    tunnel: Arc<dyn Tunnel>,
    /// The liveness lease the registry holds (health rows live on it).
    lease: Mutex<Option<LeaseId>>,
    /// This host's health namespace, once it exists: from then on the reconciler programs
    /// the health endpoint.
    health_ns: OnceLock<PathBuf>,
    health_probe: Arc<dyn HealthProbe>,
    wire: Arc<dyn crate::pathprobe::wire::ProbeWire>,
}

impl Agent {
    /// A new agent over `kv`.
    pub fn new(
        settings: Settings,
        kv: Arc<dyn Kv>,
        underlay: Underlay,
        services: Services,
        local: LocalState,
    ) -> Arc<Self> {
        let store = ClusterStore::new(kv, settings.subnet_pool);
        Arc::new(Agent {
            settings,
            store,
            underlay_mtu: underlay.mtu,
            underlay: underlay.network,
            view: watch::channel(Arc::new(ClusterView::default())).0,
            health: Mutex::new(KvHealth::default()),
            registered: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            kick: Notify::new(),
            names_kick: Notify::new(),
            rec: Reconciler::new(services.datapath, services.tunnel.clone()),
            gw: services.gateway,
            local,
            names: services.names,
            counters: Counters::default(),
            names_pass: tokio::sync::Mutex::new(()),
            probe: services.probe,
            liveness: Mutex::new(Liveness::default()),
            tunnel: services.tunnel,
            lease: Mutex::new(None),
            health_ns: OnceLock::new(),
            health_probe: services.health,
            wire: services.wire,
        })
    }

    /// The resolved settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The cluster store.
    pub fn store(&self) -> &ClusterStore {
        &self.store
    }

    /// MTU of the underlay interface.
    pub fn underlay_mtu(&self) -> u32 {
        self.underlay_mtu
    }

    /// The counters behind `/metrics`.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// What this host attached.
    pub fn local(&self) -> &LocalState {
        &self.local
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
        self.view.send_replace(Arc::new(v));
        self.kick.notify_one();
    }

    /// Publishes the view after one watch event. The loops that act on views (reconcile,
    /// names, the Docker follower) wake only when the change [`concerns`](Self::concerns)
    /// this host, so an endpoint coming and going elsewhere in a large cluster costs this
    /// agent the event's decoding and nothing more; the view is swapped in all the same, for
    /// the next pass and for inspection.
    pub fn publish_change(&self, v: ClusterView, change: &Change) {
        let wake = self.concerns(change);
        self.view.send_if_modified(|cur| {
            *cur = Arc::new(v);
            wake
        });
        if wake {
            self.kick.notify_one();
        }
    }

    /// Whether a change concerns this host: any host or network record (few, and they
    /// change VTEP lists, admission and Docker's networks), an endpoint on a network with an
    /// endpoint here, or an endpoint record naming this host (before or after the change).
    pub fn concerns(&self, change: &Change) -> bool {
        match change {
            Change::None => false,
            Change::Host(_) | Change::Network(_) => true,
            Change::Endpoint { network, hosts } => {
                hosts.contains(&self.settings.host_id) || self.local.on_network(network)
            }
        }
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

    /// Asks for a reconcile pass soon.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Resolves when a reconcile pass was asked for.
    pub async fn kicked(&self) {
        self.kick.notified().await
    }

    /// Asks for a names pass soon.
    pub fn kick_names(&self) {
        self.names_kick.notify_one();
    }

    /// Resolves when a names pass was asked for.
    pub async fn names_kicked(&self) {
        self.names_kick.notified().await
    }

    /// What this host's desired state is computed for.
    pub fn me(&self) -> Me<'_> {
        Me {
            host: &self.settings.host_id,
            vtep: self.settings.advertise_addr,
            underlay_mtu: self.underlay_mtu,
            vxlan_port: self.settings.vxlan_port,
            encrypted_vxlan_port: self.settings.encrypted_vxlan_port,
            keyed: self.tunnel.record().is_some(),
            health: self.health_ns.get().map(PathBuf::as_path),
        }
    }

    /// What this host knows on its own: its attachments (with their network records) and
    /// the hosts whose agent is down but whose datapath answers.
    pub fn here(&self, view: &ClusterView) -> Here {
        let now = Instant::now();
        let grace = {
            let mut l = self.liveness.lock().expect("liveness lock");
            l.observe(view, now);
            l.grace(view, now)
        };
        Here {
            endpoints: self
                .local
                .all()
                .into_iter()
                .map(|a| {
                    // A Docker endpoint's name in its container is dockerd's: until a pass saw
                    // it, only the temporary name is recorded.
                    let docker_tmp = (!a.dns_listener)
                        .then(|| ovl_model::ifname::docker_temp_name(&a.endpoint.id));
                    let plugged = Plugged {
                        netns: a.netns.clone(),
                        ifname: Some(a.ifname.clone()).filter(|n| Some(n) != docker_tmp.as_ref()),
                        docker_tmp,
                        ip: a.endpoint.ip,
                        mac: a.endpoint.mac,
                    };
                    (
                        (a.endpoint.network.clone(), a.endpoint.id.clone()),
                        Local {
                            network: a.network,
                            plugged: Some(plugged),
                        },
                    )
                })
                .collect(),
            grace,
        }
    }

    /// How `host` stands (alive, agent down with its datapath answering, dead).
    pub fn host_state(&self, view: &ClusterView, host: &str) -> HostState {
        if host == self.settings.host_id {
            return HostState::Alive;
        }
        let mut l = self.liveness.lock().expect("liveness lock");
        l.observe(view, Instant::now());
        l.state(view, host, Instant::now())
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

    /// Records the store's revision from a probe; a store at the view's revision confirms
    /// the view is current.
    pub fn note_head(&self, head: i64) {
        let current = head <= self.view().revision;
        let mut h = self.health.lock().expect("health lock");
        h.head = Some(head);
        if current {
            h.confirmed = Some(Instant::now());
        }
    }

    /// Records the outcome of a listing or a watch of the cluster state, for `status`.
    pub fn note_sync(&self, outcome: std::result::Result<(), String>) {
        let mut h = self.health.lock().expect("health lock");
        match outcome {
            Ok(()) => {
                h.confirmed = Some(Instant::now());
                h.sync_failing = None;
            }
            Err(e) => {
                let since = h
                    .sync_failing
                    .as_ref()
                    .map_or_else(Instant::now, |(t, _)| *t);
                h.sync_failing = Some((since, e));
            }
        }
    }

    /// Records that a watch event arrived: the view is current, but an earlier listing
    /// error stays shown until a listing succeeds (the periodic listing is the safety net
    /// for missed events, and it is failing).
    pub fn note_event(&self) {
        self.health.lock().expect("health lock").confirmed = Some(Instant::now());
    }

    /// Records how long a full listing of the cluster state took (the time a resync costs).
    pub fn note_list(&self, took: std::time::Duration) {
        self.health.lock().expect("health lock").last_list = Some(took);
    }

    /// This host's record as it should be in the KV.
    pub fn host_record(&self) -> ovl_core::HostRecord {
        ovl_core::HostRecord {
            id: self.settings.host_id.clone(),
            vtep: self.settings.advertise_addr,
            underlay_mtu: self.underlay_mtu,
            datapath: self.rec.datapath().mode().to_string(),
            version: crate::VERSION.to_string(),
            gw_subnet: self.gw.info().map(|i| i.subnet),
            wg: self.tunnel.record(),
        }
    }

    /// Marks whether this host's liveness record is held.
    pub fn set_registered(&self, yes: bool) {
        self.registered.store(yes, Ordering::Relaxed);
    }

    /// The container MTU of a network on this host.
    pub fn mtu_for(&self, net: &ovl_core::NetworkRecord) -> u32 {
        crate::reconcile::desired::spec(net, &self.me()).mtu
    }

    /// Closes the names service's listeners (shutdown).
    pub async fn shutdown(&self) {
        self.names.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
