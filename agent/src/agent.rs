//! The agent: one object holding the settings, the cluster store, the current view of the
//! cluster and the health of the KV. The control API, the Docker plugin and the background
//! loops all call into it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use ovl_core::{ClusterStore, ClusterView, store::NetworkRequest};
use ovl_kv::Kv;
use tokio::sync::{Notify, watch};

use crate::{
    api::types::{Counts, HostInfo, KvStatus, NetworkInfo, Status},
    config::Settings,
    error::{AgentError, Result},
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
    /// Wakes the reconciler (something changed, or a caller wants convergence now).
    pub kick: Notify,
}

impl Agent {
    /// A new agent over `kv`.
    pub fn new(settings: Settings, kv: Arc<dyn Kv>, underlay_mtu: u32) -> Arc<Self> {
        let store = ClusterStore::new(kv, settings.subnet_pool);
        Arc::new(Agent {
            settings,
            store,
            underlay_mtu,
            view: watch::channel(Arc::new(ClusterView::default())).0,
            health: Mutex::new(KvHealth::default()),
            registered: AtomicBool::new(false),
            kick: Notify::new(),
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
        self.view.send_replace(Arc::new(v));
        self.kick.notify_one();
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
            version: env!("CARGO_PKG_VERSION").to_string(),
            advertise_addr: self.settings.advertise_addr,
            underlay_mtu: self.underlay_mtu,
            datapath: self.settings.datapath.to_string(),
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
            details: Vec::new(),
        }
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
                datapath: h.datapath,
                version: h.version,
                alive,
            })
            .collect()
    }

    fn network_info(&self, v: &ClusterView, rec: ovl_core::NetworkRecord) -> NetworkInfo {
        let endpoints = v.endpoints_on(&rec.name).count();
        NetworkInfo {
            mtu_here: self.mtu_for(rec.mtu),
            record: rec,
            endpoints,
            details: Vec::new(),
        }
    }

    /// `overlayctl network create`.
    pub async fn create_network(&self, req: NetworkRequest) -> Result<NetworkInfo> {
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
