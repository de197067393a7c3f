//! The Docker remote network + IPAM plugin, served when the agent runs with
//! `--docker-plugin`: `/run/docker/plugins/ovl.sock` (transport and validation in `ovl-docker`),
//! plus an Engine API watcher for container names (the plugin protocol carries none).
//!
//! # Network identity
//! The driver is `Scope: local`, so each host has its own Docker NetworkID for a network and
//! no plugin call carries its name (see `ovl_docker::identity`). The cluster network is the
//! one whose NAME is the Docker network's name:
//! * `--ipam-opt ovl.network=NAME`, or a `--subnet` equal to an existing cluster network's
//!   subnet: the pool is that network's (`PoolId::Network`) from `RequestPool` on.
//! * Otherwise `RequestPool` reserves a cluster-unique subnet as *pending*: a placeholder
//!   network record `docker-pending-<token>` claims the subnet through the normal CAS subnet
//!   index, and `/ovl/v1/docker/pools/<token>` (a [`PendingPool`]) keeps what is known about
//!   it (so it survives agent restarts). `CreateNetwork` records the NetworkID (and `-o`
//!   options: `--internal`, `com.docker.network.driver.mtu`); right after it returns, the
//!   network's name is resolved through the Engine API and the pool is *bound*: if NAME is new
//!   cluster-wide, the pending subnet becomes NAME's subnet (with `--gateway`); if NAME exists
//!   (the second host of a plain create), NAME's subnet is used and the placeholder dropped.
//!   A `RequestAddress` that comes before the bind resolves it itself.
//! * Which hosts use a network is kept in `/ovl/v1/docker/users/<NAME>/<host>`; the last
//!   host's `docker network rm` removes the cluster network from the KV.
//!
//! # External connectivity: Docker's `docker_gwbridge` (option a)
//! `Join` returns no `Gateway`, so libnetwork attaches every non-internal container to its own
//! `docker_gwbridge` (second interface, default route, masquerade) and implements `-p` with its
//! own iptables rules and docker-proxy. Why: on a host running dockerd, Docker owns the
//! iptables `FORWARD` chain (policy DROP with br_netfilter) and its `DOCKER` NAT chains; a
//! second bridge with our nftables NAT would have to be kept consistent with Docker's rules on
//! every Docker restart, and `-p` semantics (host IP, port ranges, userland proxy, `docker
//! port`) would diverge from what Docker users expect. Letting Docker own it keeps `docker run
//! -p` and `docker port` exact. The overlay itself stays in its own sandbox namespace,
//! untouched by Docker's rules. `--internal` networks set `DisableGatewayService`.
//!
//! # Restarts and KV outages
//! Docker never replays `CreateNetwork`: the NetworkID -> network binding is kept in
//! `<state-dir>/docker-networks.json` (with a copy of the network record), and a NetworkID
//! missing from it is looked up through the Engine API. Plumbing state lives in the kernel
//! and in `local.json`, so a restarted agent serves `Leave`/`DeleteEndpoint` for running
//! containers and their traffic never stops. With the KV down, calls that must allocate
//! (pools, addresses, endpoint records) fail with a clear "unavailable" error; the rest are
//! served from the cache. Removals (`DeleteEndpoint`, `ReleaseAddress`) succeed at once for
//! Docker and their KV half is queued in `<state-dir>/docker-deferred.json`, applied as soon
//! as the KV answers again.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnetwork::{IpNetwork, Ipv4Network};
use ovl_core::{EndpointRecord, NetworkRecord, StoreError, ipam, store::NetworkRequest};
use ovl_docker::{
    PluginBackend, PluginError, PluginResult, WatchEvent,
    backend::{
        AddressAllocated, AddressKind, AddressRelease, AddressRequest, CreateEndpoint,
        CreateNetwork, EndpointCreated, EndpointRef, Join, Joined, PoolAllocated, PoolRequest,
    },
    identity::{IdentityHint, PoolId, identity_hint},
    watcher::{ContainerNames, DockerWatcher, EarlyNames, NetworkNames},
};
use serde::{Deserialize, Serialize};

use crate::{agent::Agent, error::AgentError, reconcile::Plug};

/// Where the plugin socket goes (the plugin name is the file name: `ovl`).
pub const PLUGIN_SOCKET: &str = "/run/docker/plugins/ovl.sock";
/// Prefix of this module's KV keys.
pub const KV_PREFIX: &str = "/ovl/v1/docker/";
/// Name prefix of placeholder networks that hold pending subnets.
pub const PLACEHOLDER_PREFIX: &str = "docker-pending-";

fn pools_prefix() -> String {
    format!("{KV_PREFIX}pools/")
}
fn pool_key(token: &str) -> String {
    format!("{KV_PREFIX}pools/{token}")
}
fn users_prefix(net: &str) -> String {
    format!("{KV_PREFIX}users/{net}/")
}
fn user_key(net: &str, host: &str) -> String {
    format!("{KV_PREFIX}users/{net}/{host}")
}

/// A subnet reserved by `RequestPool` before the network's name was known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPool {
    /// The token in the PoolID.
    pub token: String,
    /// Host that reserved it.
    pub host: String,
    /// The reserved subnet (claimed by the placeholder network).
    pub subnet: Ipv4Network,
    /// `--gateway`, when given.
    pub gateway: Option<Ipv4Addr>,
    /// `--ipam-opt ovl.network=NAME` (a name not yet in the KV at `RequestPool`).
    pub name: Option<String>,
    /// Docker's NetworkID on `host`, once `CreateNetwork` came.
    pub network_id: Option<String>,
    /// `--internal`.
    pub internal: bool,
    /// `-o com.docker.network.driver.mtu`.
    pub mtu: Option<u32>,
    /// The cluster network it was bound to.
    pub bound: Option<String>,
}

impl PendingPool {
    fn placeholder(&self) -> String {
        format!("{PLACEHOLDER_PREFIX}{}", self.token)
    }
}

/// What this host knows about one Docker network of our driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerNet {
    /// Docker's NetworkID.
    pub network_id: String,
    /// PoolID returned by `RequestPool`.
    pub pool_id: String,
    /// Cluster network name, once bound.
    pub name: Option<String>,
    /// Last known cluster record (served while the KV is down).
    pub record: Option<NetworkRecord>,
}

/// The NetworkID table, persisted in `<state-dir>/docker-networks.json`.
#[derive(Debug)]
struct NetCache {
    path: PathBuf,
    nets: Mutex<BTreeMap<String, DockerNet>>,
}

impl NetCache {
    fn load(path: PathBuf) -> Self {
        let nets = std::fs::read(&path)
            .ok()
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "ignoring corrupt Docker network cache");
                    None
                }
            })
            .unwrap_or_default();
        NetCache {
            path,
            nets: Mutex::new(nets),
        }
    }

    fn save(&self, m: &BTreeMap<String, DockerNet>) {
        let tmp = self.path.with_extension("json.tmp");
        let res = serde_json::to_vec_pretty(m)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = res {
            tracing::error!(path = %self.path.display(), error = %e, "saving the Docker network cache");
        }
    }

    fn get(&self, id: &str) -> Option<DockerNet> {
        self.nets.lock().expect("cache lock").get(id).cloned()
    }

    fn put(&self, n: DockerNet) {
        let mut m = self.nets.lock().expect("cache lock");
        if m.get(&n.network_id) != Some(&n) {
            m.insert(n.network_id.clone(), n);
            self.save(&m);
        }
    }

    fn remove(&self, id: &str) -> Option<DockerNet> {
        let mut m = self.nets.lock().expect("cache lock");
        let r = m.remove(id);
        if r.is_some() {
            self.save(&m);
        }
        r
    }

    fn by_name(&self, name: &str) -> Option<DockerNet> {
        self.nets
            .lock()
            .expect("cache lock")
            .values()
            .find(|n| n.name.as_deref() == Some(name))
            .cloned()
    }
}

/// A KV change Docker asked for while the KV was unreachable, applied once it answers
/// (Docker removes containers even then, and must not be failed for it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Deferred {
    /// Delete an endpoint record (and the address it owns).
    DeleteEndpoint {
        /// Cluster network name.
        network: String,
        /// Endpoint id.
        endpoint_id: String,
    },
    /// Release an address claimed through a pool.
    ReleaseAddress {
        /// PoolID as Docker holds it.
        pool_id: String,
        /// The address.
        address: Ipv4Addr,
    },
}

/// Deferred KV changes, persisted in `<state-dir>/docker-deferred.json`.
#[derive(Debug)]
struct DeferredOps {
    path: PathBuf,
    ops: Mutex<std::collections::BTreeSet<Deferred>>,
}

impl DeferredOps {
    fn load(path: PathBuf) -> Self {
        let ops = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        DeferredOps {
            path,
            ops: Mutex::new(ops),
        }
    }

    fn save(&self, ops: &std::collections::BTreeSet<Deferred>) {
        let tmp = self.path.with_extension("json.tmp");
        let res = serde_json::to_vec_pretty(ops)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = res {
            tracing::error!(path = %self.path.display(), error = %e, "saving deferred Docker operations");
        }
    }

    fn add(&self, op: Deferred) {
        let mut m = self.ops.lock().expect("deferred lock");
        if m.insert(op) {
            self.save(&m);
        }
    }

    fn remove(&self, op: &Deferred) {
        let mut m = self.ops.lock().expect("deferred lock");
        if m.remove(op) {
            self.save(&m);
        }
    }

    fn all(&self) -> Vec<Deferred> {
        self.ops
            .lock()
            .expect("deferred lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// Host-side name of the interface Docker moves into the container (≤ 15 bytes).
pub fn temp_ifname(endpoint_id: &str) -> String {
    let short: String = endpoint_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("ovd{short}")
}

/// The Docker socket: `DOCKER_HOST=unix://PATH` if set, else `/var/run/docker.sock`.
pub fn docker_socket(docker_host: Option<&str>) -> PathBuf {
    docker_host
        .and_then(|h| h.strip_prefix("unix://"))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

fn v4_net(n: IpNetwork, what: &str) -> PluginResult<Ipv4Network> {
    match n {
        IpNetwork::V4(v) => Ok(v),
        IpNetwork::V6(_) => Err(PluginError::Invalid(format!(
            "{what} {n}: IPv6 is not supported by ovl"
        ))),
    }
}

fn with_prefix(ip: Ipv4Addr, subnet: Ipv4Network) -> IpNetwork {
    IpNetwork::V4(Ipv4Network::new(ip, subnet.prefix()).expect("prefix of a valid subnet"))
}

fn store_err(e: StoreError) -> PluginError {
    match e {
        StoreError::Invalid(m) => PluginError::Invalid(m),
        StoreError::Conflict(m) | StoreError::Exhausted(m) => PluginError::Conflict(m),
        StoreError::NotFound(m) => PluginError::NotFound(m),
        StoreError::Kv(k) if k.is_unreachable() => PluginError::Unavailable(format!(
            "{k} (new networks and addresses wait for the KV store)"
        )),
        other => PluginError::Internal(other.to_string()),
    }
}

fn agent_err(e: AgentError) -> PluginError {
    match e {
        AgentError::Invalid(m) => PluginError::Invalid(m),
        AgentError::Conflict(m) => PluginError::Conflict(m),
        AgentError::NotFound(m) => PluginError::NotFound(m),
        AgentError::Unavailable(m) => PluginError::Unavailable(m),
        other => PluginError::Internal(other.to_string()),
    }
}

/// The plugin backend over the agent.
pub struct DockerPlugin {
    agent: Arc<Agent>,
    cache: NetCache,
    names: Mutex<Option<NetworkNames>>,
    bind_lock: tokio::sync::Mutex<()>,
    /// Names the watcher reported, by endpoint id, until they are in the KV.
    wanted: Mutex<BTreeMap<String, ContainerNames>>,
    /// KV changes waiting for the KV.
    deferred: DeferredOps,
}

impl DockerPlugin {
    /// A backend for `agent`, with its NetworkID cache in the agent's state dir.
    pub fn new(agent: Arc<Agent>) -> Arc<Self> {
        let cache = NetCache::load(agent.settings().state_dir.join("docker-networks.json"));
        let deferred = DeferredOps::load(agent.settings().state_dir.join("docker-deferred.json"));
        Arc::new(DockerPlugin {
            agent,
            cache,
            names: Mutex::new(None),
            bind_lock: tokio::sync::Mutex::new(()),
            wanted: Mutex::new(BTreeMap::new()),
            deferred,
        })
    }

    fn host(&self) -> &str {
        &self.agent.settings().host_id
    }

    fn names(&self) -> Option<NetworkNames> {
        self.names.lock().expect("names lock").clone()
    }

    async fn get_pool(&self, token: &str) -> PluginResult<Option<(PendingPool, i64)>> {
        let e = self
            .agent
            .store()
            .kv()
            .get(&pool_key(token))
            .await
            .map_err(|e| store_err(e.into()))?;
        Ok(match e {
            Some(e) => Some((
                serde_json::from_slice(&e.value).map_err(|err| {
                    PluginError::Internal(format!("corrupt pool record {}: {err}", e.key))
                })?,
                e.mod_revision,
            )),
            None => None,
        })
    }

    async fn put_pool(&self, p: &PendingPool) -> PluginResult<()> {
        let v = serde_json::to_vec(p).expect("pool records serialize");
        self.agent
            .store()
            .kv()
            .put(&pool_key(&p.token), &v, None)
            .await
            .map_err(|e| store_err(e.into()))?;
        Ok(())
    }

    async fn pools(&self) -> PluginResult<Vec<PendingPool>> {
        let l = self
            .agent
            .store()
            .kv()
            .list(&pools_prefix())
            .await
            .map_err(|e| store_err(e.into()))?;
        Ok(l.entries
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect())
    }

    /// The cluster record of network `name`; the cached copy while the KV is unreachable.
    async fn network(&self, name: &str) -> PluginResult<NetworkRecord> {
        match self.agent.store().network(name).await {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(PluginError::NotFound(format!(
                "network {name} does not exist in the cluster"
            ))),
            Err(StoreError::Kv(k)) if k.is_unreachable() => self
                .cache
                .by_name(name)
                .and_then(|d| d.record)
                .or_else(|| self.agent.view().networks.get(name).cloned())
                .ok_or_else(|| PluginError::Unavailable(format!("{k}"))),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn reserve_pending(
        &self,
        subnet: Option<Ipv4Network>,
        name: Option<String>,
    ) -> PluginResult<PoolAllocated> {
        let token = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let mut pool = PendingPool {
            token: token.clone(),
            host: self.host().to_string(),
            subnet: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid"),
            gateway: None,
            name,
            network_id: None,
            internal: false,
            mtu: None,
            bound: None,
        };
        let placeholder = pool.placeholder();
        let rec = self
            .agent
            .create_network(NetworkRequest {
                name: placeholder.clone(),
                subnet,
                ..Default::default()
            })
            .await
            .map_err(agent_err)?
            .record;
        pool.subnet = rec.subnet;
        if let Err(e) = self.put_pool(&pool).await {
            let _ = self.agent.store().delete_network(&placeholder).await;
            return Err(e);
        }
        tracing::info!(token = %token, subnet = %rec.subnet, "reserved a pending Docker pool");
        Ok(PoolAllocated {
            pool_id: PoolId::Pending { token, v6: false }.to_string(),
            pool: IpNetwork::V4(rec.subnet),
            gateway: Some(with_prefix(rec.gateway, rec.subnet)),
            data: BTreeMap::new(),
        })
    }

    /// Binds pending pool `token` to cluster network `name` (see the module docs).
    async fn bind(&self, token: &str, name: &str) -> PluginResult<NetworkRecord> {
        ovl_docker::identity::validate_network_name(name).map_err(PluginError::Invalid)?;
        let _g = self.bind_lock.lock().await;
        let (mut pool, _) = self
            .get_pool(token)
            .await?
            .ok_or_else(|| PluginError::NotFound(format!("pool {token} is unknown (released?)")))?;
        if let Some(b) = &pool.bound {
            return self.network(b).await;
        }
        let drop_placeholder = async {
            match self.agent.store().delete_network(&pool.placeholder()).await {
                Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
                Err(e) => Err(store_err(e)),
            }
        };
        let net = match self.agent.store().network(name).await.map_err(store_err)? {
            Some(n) => {
                drop_placeholder.await?;
                n
            }
            None => {
                drop_placeholder.await?;
                let mut req = NetworkRequest {
                    name: name.to_string(),
                    subnet: Some(pool.subnet),
                    gateway: pool.gateway,
                    vni: None,
                    internal: pool.internal,
                    mtu: pool.mtu,
                };
                match self.agent.create_network(req.clone()).await {
                    Ok(i) => i.record,
                    Err(AgentError::Conflict(m)) => {
                        match self.agent.store().network(name).await.map_err(store_err)? {
                            Some(n) => n, // another host created it first
                            None => {
                                // Our subnet was taken in the short window: take any free one.
                                tracing::warn!(%name, reason = %m, "pending subnet lost; allocating another");
                                req.subnet = None;
                                req.gateway = None;
                                self.agent
                                    .create_network(req)
                                    .await
                                    .map_err(agent_err)?
                                    .record
                            }
                        }
                    }
                    Err(e) => return Err(agent_err(e)),
                }
            }
        };
        pool.bound = Some(net.name.clone());
        self.put_pool(&pool).await?;
        if let Some(nid) = &pool.network_id
            && pool.host == self.host()
        {
            self.register_user(&net.name, nid).await?;
            if let Some(mut d) = self.cache.get(nid) {
                d.name = Some(net.name.clone());
                d.record = Some(net.clone());
                self.cache.put(d);
            }
        }
        tracing::info!(network = %net.name, subnet = %net.subnet, token, "Docker network bound");
        Ok(net)
    }

    async fn register_user(&self, name: &str, nid: &str) -> PluginResult<()> {
        self.agent
            .store()
            .kv()
            .put(&user_key(name, self.host()), nid.as_bytes(), None)
            .await
            .map_err(|e| store_err(e.into()))?;
        Ok(())
    }

    /// Resolves the name of Docker network `nid` (Engine API) and binds its pending pool.
    async fn resolve_and_bind(&self, token: &str, nid: &str) -> PluginResult<NetworkRecord> {
        let names = self.names().ok_or_else(|| {
            PluginError::Unavailable("not connected to the Docker Engine API yet".into())
        })?;
        let name = names
            .resolve(nid)
            .await
            .map_err(|e| PluginError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                PluginError::Unavailable(format!("Docker does not know network {nid} yet"))
            })?;
        self.bind(token, &name).await
    }

    /// The cluster network of a pool.
    async fn network_for_pool(&self, pid: &PoolId) -> PluginResult<NetworkRecord> {
        match pid {
            PoolId::Network { name, .. } => self.network(name).await,
            PoolId::Pending { token, .. } => {
                let (pool, _) = self
                    .get_pool(token)
                    .await?
                    .ok_or_else(|| PluginError::NotFound(format!("pool {pid} is unknown")))?;
                if let Some(b) = &pool.bound {
                    return self.network(b).await;
                }
                if let Some(n) = &pool.name {
                    return self.bind(token, n).await;
                }
                let nid = pool.network_id.clone().ok_or_else(|| {
                    PluginError::Invalid(format!(
                        "pool {pid} is not bound to a network yet (addresses are given once the network exists; use --ipam-opt ovl.network=NAME)"
                    ))
                })?;
                self.resolve_and_bind(token, &nid).await
            }
        }
    }

    /// The Docker network `nid`, from the cache or (after a lost cache) the Engine API.
    async fn docker_net(&self, nid: &str) -> PluginResult<DockerNet> {
        if let Some(d) = self.cache.get(nid) {
            return Ok(d);
        }
        if let Some(names) = self.names()
            && let Ok(Some(name)) = names.resolve(nid).await
            && let Ok(net) = self.network(&name).await
        {
            let d = DockerNet {
                network_id: nid.to_string(),
                pool_id: PoolId::Network {
                    name: name.clone(),
                    v6: false,
                }
                .to_string(),
                name: Some(name),
                record: Some(net),
            };
            self.cache.put(d.clone());
            return Ok(d);
        }
        Err(PluginError::NotFound(format!(
            "network {nid} is not an ovl network on this host"
        )))
    }

    /// The cluster network of Docker network `d`, binding it if needed.
    async fn net_of(&self, d: &DockerNet) -> PluginResult<NetworkRecord> {
        let net = match &d.name {
            Some(n) => self.network(n).await?,
            None => {
                let pid: PoolId = d.pool_id.parse()?;
                match &pid {
                    PoolId::Pending { token, .. } => match self.get_pool(token).await? {
                        Some((p, _)) if p.bound.is_none() && p.name.is_none() => {
                            self.resolve_and_bind(token, &d.network_id).await?
                        }
                        _ => self.network_for_pool(&pid).await?,
                    },
                    PoolId::Network { .. } => self.network_for_pool(&pid).await?,
                }
            }
        };
        if d.name.as_deref() != Some(net.name.as_str()) || d.record.as_ref() != Some(&net) {
            let mut d = d.clone();
            d.name = Some(net.name.clone());
            d.record = Some(net.clone());
            self.cache.put(d);
        }
        Ok(net)
    }

    /// The cluster network name of a local endpoint, from the cache or the attachments.
    fn endpoint_network(&self, r: &EndpointRef) -> Option<String> {
        self.cache
            .get(&r.network_id)
            .and_then(|d| d.name)
            .or_else(|| {
                self.agent
                    .local()
                    .all()
                    .into_iter()
                    .find(|a| a.endpoint.id == r.endpoint_id)
                    .map(|a| a.network.name)
            })
    }

    /// Applies container names from the watcher to the endpoint record and the attachment.
    /// Returns whether the KV now holds them.
    async fn apply_names(&self, c: &ContainerNames) -> bool {
        let Some(net) = self.cache.get(&c.network_id).and_then(|d| d.name) else {
            return true; // not ours (or already gone)
        };
        if let Some(mut a) = self.agent.local().get(&net, &c.endpoint_id)
            && (a.hosts_file != c.hosts_path
                || a.endpoint.name != c.container_name
                || a.endpoint.aliases != c.aliases)
        {
            a.hosts_file = c.hosts_path.clone();
            a.endpoint.name = c.container_name.clone();
            a.endpoint.aliases = c.aliases.clone();
            if let Err(e) = self.agent.local().insert(a) {
                tracing::warn!(network = %net, endpoint = %c.endpoint_id, error = %e, "keeping container names locally; retrying");
                return false;
            }
            self.agent.kick();
        }
        match self.agent.store().endpoint(&net, &c.endpoint_id).await {
            Ok(Some(mut rec)) => {
                if rec.name == c.container_name && rec.aliases == c.aliases {
                    return true;
                }
                rec.name = c.container_name.clone();
                rec.aliases = c.aliases.clone();
                match self.agent.store().put_endpoint(&rec).await {
                    Ok(()) => {
                        tracing::info!(network = %net, endpoint = %c.endpoint_id, name = %c.container_name, aliases = ?c.aliases, "container names recorded");
                        self.agent.kick();
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "recording container names; retrying");
                        false
                    }
                }
            }
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "reading endpoint for container names; retrying");
                false
            }
        }
    }

    /// Names of a container that is still starting (see [`WatchEvent::Connecting`]): recorded
    /// at once, so peers can resolve it by the time `docker run` returns. The inspect that
    /// follows confirms or corrects them.
    async fn apply_early(&self, e: &EarlyNames) {
        let Some(net) = self.cache.get(&e.network_id).and_then(|d| d.name) else {
            return;
        };
        let endpoint_id = match &e.endpoint_id {
            Some(id) => id.clone(),
            None => {
                // dockerd logs `connect` after our Join returned, so this container's
                // endpoint is among the joined ones still without a name; when it is the only
                // one on the network, it is this container's. Otherwise wait for the inspect.
                let unnamed: Vec<String> = self
                    .agent
                    .local()
                    .all()
                    .into_iter()
                    .filter(|a| {
                        a.network.name == net
                            && a.endpoint.name.is_empty()
                            && a.ifname == temp_ifname(&a.endpoint.id)
                    })
                    .map(|a| a.endpoint.id)
                    .collect();
                match unnamed.as_slice() {
                    [one] => one.clone(),
                    _ => return,
                }
            }
        };
        // Known only from the inspect; keep what an earlier one found.
        let hosts_path = self
            .agent
            .local()
            .get(&net, &endpoint_id)
            .and_then(|a| a.hosts_file);
        let c = ContainerNames {
            endpoint_id,
            network_id: e.network_id.clone(),
            network_name: e.network_name.clone(),
            container_id: e.container_id.clone(),
            container_name: e.container_name.clone(),
            aliases: e.aliases.clone(),
            container_pid: None,
            sandbox_key: None,
            ip_address: None,
            hosts_path,
        };
        self.apply_names(&c).await;
    }

    /// Follows the Engine API: names into the KV, retried until they are there.
    async fn watch(self: Arc<Self>, socket: PathBuf) {
        let watcher = loop {
            match DockerWatcher::connect_driver(&socket, ovl_docker::watcher::DRIVER_NAME).await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(socket = %socket.display(), error = %e, "Docker Engine API not reachable; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        *self.names.lock().expect("names lock") = Some(watcher.network_names());
        let (mut rx, _task) = watcher.spawn();
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    None => return,
                    Some(WatchEvent::Connecting(e)) => self.apply_early(&e).await,
                    Some(WatchEvent::Added(c)) => {
                        let done = self.apply_names(&c).await;
                        let mut w = self.wanted.lock().expect("wanted lock");
                        if done { w.remove(&c.endpoint_id); } else { w.insert(c.endpoint_id.clone(), c); }
                    }
                    Some(WatchEvent::Removed(c)) => {
                        self.wanted.lock().expect("wanted lock").remove(&c.endpoint_id);
                    }
                    Some(WatchEvent::Synced) | Some(WatchEvent::Disconnected(_)) => {}
                },
                _ = tick.tick() => {
                    let todo: Vec<ContainerNames> = self.wanted.lock().expect("wanted lock").values().cloned().collect();
                    for c in todo {
                        if self.apply_names(&c).await {
                            self.wanted.lock().expect("wanted lock").remove(&c.endpoint_id);
                        }
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl PluginBackend for DockerPlugin {
    /// Docker 28+ asks before each network: `Join` never returns a gateway (the way out is
    /// Docker's `docker_gwbridge`), so Docker need not reserve one. It never does for our
    /// networks anyway: `RequestPool` hands it the cluster network's gateway in `Data`, which
    /// libnetwork takes without a `RequestAddress`; that address stays reserved in the KV
    /// (`NetworkRecord::gateway`) whatever Docker is told here.
    async fn gateway_alloc_check(
        &self,
        _req: ovl_docker::backend::GatewayCheck,
    ) -> PluginResult<ovl_docker::backend::GatewaySkip> {
        Ok(ovl_docker::backend::GatewaySkip { v4: true, v6: true })
    }

    async fn request_pool(&self, req: PoolRequest) -> PluginResult<PoolAllocated> {
        if req.v6 {
            return Err(PluginError::Invalid(
                "IPv6 pools are not supported by ovl".into(),
            ));
        }
        if req.sub_pool.is_some() {
            return Err(PluginError::Invalid(
                "--ip-range is not supported by ovl".into(),
            ));
        }
        let found = |net: NetworkRecord| PoolAllocated {
            pool_id: PoolId::Network {
                name: net.name.clone(),
                v6: false,
            }
            .to_string(),
            pool: IpNetwork::V4(net.subnet),
            gateway: Some(with_prefix(net.gateway, net.subnet)),
            data: BTreeMap::new(),
        };
        match identity_hint(&req)? {
            IdentityHint::Named { name, subnet } => {
                let subnet = subnet.map(|s| v4_net(s, "subnet")).transpose()?;
                match self.agent.store().network(&name).await.map_err(store_err)? {
                    Some(net) => {
                        if let Some(s) = subnet
                            && s != net.subnet
                        {
                            return Err(PluginError::Conflict(format!(
                                "network {name} exists with subnet {}, not {s}",
                                net.subnet
                            )));
                        }
                        Ok(found(net))
                    }
                    None => self.reserve_pending(subnet, Some(name)).await,
                }
            }
            IdentityHint::Subnet(s) => {
                let s = v4_net(s, "subnet")?;
                // Another host may have reserved this subnet a moment ago and be binding it
                // to its name: wait for that (bounded) instead of failing on the overlap.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let nets = self.agent.store().networks().await.map_err(store_err)?;
                    if let Some(net) = nets
                        .iter()
                        .find(|n| n.subnet == s && !n.name.starts_with(PLACEHOLDER_PREFIX))
                    {
                        return Ok(found(net.clone()));
                    }
                    let held = nets
                        .iter()
                        .any(|n| n.subnet == s && n.name.starts_with(PLACEHOLDER_PREFIX));
                    if !held || tokio::time::Instant::now() >= deadline {
                        match self.reserve_pending(Some(s), None).await {
                            // The other host bound the subnet between our read and the
                            // reservation (its placeholder is swapped for the real network):
                            // look again.
                            Err(PluginError::Conflict(_))
                                if tokio::time::Instant::now() < deadline =>
                            {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                            other => return other,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            IdentityHint::Unknown => self.reserve_pending(None, None).await,
        }
    }

    async fn release_pool(&self, pool_id: String) -> PluginResult<()> {
        match pool_id.parse::<PoolId>()? {
            PoolId::Network { .. } => Ok(()),
            PoolId::Pending { token, .. } => {
                let Some((pool, _)) = self.get_pool(&token).await? else {
                    return Ok(());
                };
                if pool.bound.is_none() {
                    match self.agent.store().delete_network(&pool.placeholder()).await {
                        Ok(_) | Err(StoreError::NotFound(_)) => {}
                        Err(e) => return Err(store_err(e)),
                    }
                }
                self.agent
                    .store()
                    .kv()
                    .delete(&pool_key(&token))
                    .await
                    .map_err(|e| store_err(e.into()))?;
                Ok(())
            }
        }
    }

    async fn request_address(&self, req: AddressRequest) -> PluginResult<AddressAllocated> {
        let pid: PoolId = req.pool_id.parse()?;
        let want = match req.address {
            Some(IpAddr::V4(a)) => Some(a),
            Some(IpAddr::V6(a)) => {
                return Err(PluginError::Invalid(format!(
                    "address {a}: IPv6 is not supported by ovl"
                )));
            }
            None => None,
        };
        if req.kind == AddressKind::Gateway {
            if let PoolId::Pending { token, .. } = &pid {
                let (mut pool, _) = self
                    .get_pool(token)
                    .await?
                    .ok_or_else(|| PluginError::NotFound(format!("pool {pid} is unknown")))?;
                if pool.bound.is_none() {
                    let gw = want.unwrap_or_else(|| ipam::first_host(pool.subnet));
                    if !ipam::is_host_addr(pool.subnet, gw) {
                        return Err(PluginError::Invalid(format!(
                            "gateway {gw} is not a host address of {}",
                            pool.subnet
                        )));
                    }
                    if want.is_some() {
                        pool.gateway = Some(gw);
                        self.put_pool(&pool).await?;
                    }
                    return Ok(AddressAllocated {
                        address: with_prefix(gw, pool.subnet),
                        data: BTreeMap::new(),
                    });
                }
            }
            let net = self.network_for_pool(&pid).await?;
            if let Some(w) = want
                && w != net.gateway
            {
                return Err(PluginError::Conflict(format!(
                    "network {} has gateway {}, not {w}",
                    net.name, net.gateway
                )));
            }
            return Ok(AddressAllocated {
                address: with_prefix(net.gateway, net.subnet),
                data: BTreeMap::new(),
            });
        }
        let net = self.network_for_pool(&pid).await?;
        let owner = format!("docker/{}/{:016x}", self.host(), rand::random::<u64>());
        let ip = self
            .agent
            .store()
            .allocate_addr(&net, want, &owner)
            .await
            .map_err(store_err)?;
        Ok(AddressAllocated {
            address: with_prefix(ip, net.subnet),
            data: BTreeMap::new(),
        })
    }

    async fn release_address(&self, req: AddressRelease) -> PluginResult<()> {
        let _: PoolId = req.pool_id.parse()?;
        match self.release_address_now(&req).await {
            Err(PluginError::Unavailable(m)) => {
                // Docker is removing the container now: do not fail it; the address is
                // released in the KV as soon as the KV answers again.
                tracing::warn!(pool = %req.pool_id, address = %req.address, reason = %m, "KV unreachable: address release deferred");
                if let IpAddr::V4(address) = req.address {
                    self.deferred.add(Deferred::ReleaseAddress {
                        pool_id: req.pool_id.clone(),
                        address,
                    });
                }
                Ok(())
            }
            other => other,
        }
    }

    async fn create_network(&self, req: CreateNetwork) -> PluginResult<()> {
        let data = req.ipv4.first().ok_or_else(|| {
            PluginError::Invalid("no IPv4 pool: create the network with --ipam-driver ovl".into())
        })?;
        let subnet = v4_net(data.pool, "pool")?;
        if let Some(d) = self.cache.get(&req.network_id) {
            tracing::debug!(network_id = %d.network_id, "CreateNetwork repeated");
            return Ok(());
        }
        let pools = self.pools().await?;
        let pending = pools.into_iter().find(|p| {
            p.subnet == subnet
                && p.host == self.host()
                && p.bound.is_none()
                && p.network_id.is_none()
        });
        let d = match pending {
            Some(mut p) => {
                p.network_id = Some(req.network_id.clone());
                p.internal = req.internal;
                p.mtu = req.mtu;
                self.put_pool(&p).await?;
                DockerNet {
                    network_id: req.network_id.clone(),
                    pool_id: PoolId::Pending {
                        token: p.token.clone(),
                        v6: false,
                    }
                    .to_string(),
                    name: None,
                    record: None,
                }
            }
            None => {
                let nets = self.agent.store().networks().await.map_err(store_err)?;
                let net = nets
                    .into_iter()
                    .find(|n| n.subnet == subnet && !n.name.starts_with(PLACEHOLDER_PREFIX))
                    .ok_or_else(|| {
                        PluginError::Invalid(format!(
                            "pool {subnet} was not allocated by the ovl IPAM driver: create the network with --ipam-driver ovl"
                        ))
                    })?;
                if req.internal != net.internal || (req.mtu.is_some() && req.mtu != net.mtu) {
                    tracing::warn!(network = %net.name, "options differ from the existing cluster network; the cluster's apply");
                }
                self.register_user(&net.name, &req.network_id).await?;
                DockerNet {
                    network_id: req.network_id.clone(),
                    pool_id: PoolId::Network {
                        name: net.name.clone(),
                        v6: false,
                    }
                    .to_string(),
                    name: Some(net.name.clone()),
                    record: Some(net),
                }
            }
        };
        self.cache.put(d.clone());
        if d.name.is_none() {
            // Named pending pools bind now; unnamed ones once dockerd stored the network
            // (right after this call returns).
            let PoolId::Pending { token, .. } = d.pool_id.parse::<PoolId>()? else {
                unreachable!()
            };
            if let Some((p, _)) = self.get_pool(&token).await?
                && let Some(n) = p.name
            {
                self.bind(&token, &n).await?;
                return Ok(());
            }
            // Unnamed: `bind_loop` binds it as soon as dockerd stored the network.
        }
        Ok(())
    }

    async fn delete_network(&self, network_id: String) -> PluginResult<()> {
        let Some(d) = self.cache.get(&network_id) else {
            tracing::info!(%network_id, "DeleteNetwork for an unknown network: nothing to do");
            return Ok(());
        };
        if let Ok(PoolId::Pending { token, .. }) = d.pool_id.parse::<PoolId>()
            && let Some((p, _)) = self.get_pool(&token).await?
        {
            if p.bound.is_none() {
                match self.agent.store().delete_network(&p.placeholder()).await {
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
            self.agent
                .store()
                .kv()
                .delete(&pool_key(&token))
                .await
                .map_err(|e| store_err(e.into()))?;
        }
        if let Some(name) = &d.name {
            let kv = self.agent.store().kv();
            kv.delete(&user_key(name, self.host()))
                .await
                .map_err(|e| store_err(e.into()))?;
            let users = kv
                .list(&users_prefix(name))
                .await
                .map_err(|e| store_err(e.into()))?;
            if users.entries.is_empty() {
                match self.agent.store().delete_network(name).await {
                    Ok(_) => {
                        tracing::info!(network = %name, "last Docker user gone: cluster network removed")
                    }
                    Err(StoreError::NotFound(_)) => {}
                    Err(StoreError::Conflict(m)) => {
                        tracing::warn!(network = %name, reason = %m, "cluster network kept")
                    }
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        self.cache.remove(&network_id);
        if let Some(n) = self.names() {
            n.forget(&network_id);
        }
        Ok(())
    }

    async fn create_endpoint(&self, req: CreateEndpoint) -> PluginResult<EndpointCreated> {
        let d = self.docker_net(&req.network_id).await?;
        let net = self.net_of(&d).await?;
        let addr = req.address.ok_or_else(|| {
            PluginError::Invalid("the endpoint has no IPv4 address (use --ipam-driver ovl)".into())
        })?;
        let IpAddr::V4(ip) = addr.ip() else {
            return Err(PluginError::Invalid(format!(
                "address {addr}: IPv6 is not supported by ovl"
            )));
        };
        if !ipam::is_host_addr(net.subnet, ip) {
            return Err(PluginError::Invalid(format!(
                "address {ip} is not in network {} ({})",
                net.name, net.subnet
            )));
        }
        let mac = match &req.mac_address {
            Some(m) => m
                .parse::<ovl_core::MacAddr>()
                .map_err(|e| PluginError::Invalid(format!("MAC address {m:?}: {e}")))?,
            None => ipam::mac_for(ip),
        };
        let me = self.host().to_string();
        match self
            .agent
            .store()
            .endpoint(&net.name, &req.endpoint_id)
            .await
            .map_err(store_err)?
        {
            Some(e) if e.host == me => {}
            Some(e) => {
                return Err(PluginError::Conflict(format!(
                    "endpoint {} exists on host {}",
                    req.endpoint_id, e.host
                )));
            }
            None => {
                let rec = EndpointRecord {
                    id: req.endpoint_id.clone(),
                    network: net.name.clone(),
                    host: me,
                    name: String::new(),
                    aliases: Vec::new(),
                    ip,
                    mac,
                    publish: Vec::new(),
                };
                self.agent
                    .store()
                    .create_endpoint(&rec)
                    .await
                    .map_err(store_err)?;
            }
        }
        Ok(EndpointCreated {
            mac_address: req.mac_address.is_none().then(|| mac.to_string()),
        })
    }

    async fn delete_endpoint(&self, req: EndpointRef) -> PluginResult<()> {
        let Some(net) = self.endpoint_network(&req) else {
            return Ok(());
        };
        self.agent
            .unplumb(&net, &req.endpoint_id, false)
            .await
            .map_err(agent_err)?;
        self.wanted
            .lock()
            .expect("wanted lock")
            .remove(&req.endpoint_id);
        match self
            .agent
            .store()
            .delete_endpoint(&net, &req.endpoint_id)
            .await
            .map_err(store_err)
        {
            Ok(_) => {}
            Err(PluginError::Unavailable(m)) => {
                tracing::warn!(network = %net, endpoint = %req.endpoint_id, reason = %m, "KV unreachable: endpoint record removal deferred");
                self.deferred.add(Deferred::DeleteEndpoint {
                    network: net.clone(),
                    endpoint_id: req.endpoint_id.clone(),
                });
            }
            Err(e) => return Err(e),
        }
        self.agent.kick();
        Ok(())
    }

    async fn join(&self, req: Join) -> PluginResult<Joined> {
        let d = self.docker_net(&req.network_id).await?;
        let net = self.net_of(&d).await?;
        let rec = self
            .agent
            .store()
            .endpoint(&net.name, &req.endpoint_id)
            .await
            .map_err(store_err)?
            .filter(|e| e.host == self.agent.settings().host_id)
            .ok_or_else(|| {
                PluginError::NotFound(format!(
                    "endpoint {} was not created on this host",
                    req.endpoint_id
                ))
            })?;
        let tmp = temp_ifname(&req.endpoint_id);
        self.agent
            .plumb(&net, &rec, &req.sandbox_key, Plug::Unplugged(tmp.clone()))
            .await
            .map_err(agent_err)?;
        tracing::info!(network = %net.name, endpoint = %rec.id, ip = %rec.ip, "Docker endpoint joined");
        Ok(Joined {
            src_name: tmp,
            dst_prefix: "eth".into(),
            gateway: None,
            gateway_v6: None,
            static_routes: Vec::new(),
            disable_gateway_service: net.internal,
        })
    }

    async fn leave(&self, req: EndpointRef) -> PluginResult<()> {
        let Some(net) = self.endpoint_network(&req) else {
            return Ok(());
        };
        self.agent
            .unplumb(&net, &req.endpoint_id, false)
            .await
            .map_err(agent_err)?;
        self.agent.kick();
        Ok(())
    }
}

/// Serves the plugin socket and follows the Docker Engine API for names.
pub async fn run(agent: Arc<Agent>) {
    let plugin = DockerPlugin::new(agent);
    let socket = docker_socket(std::env::var("DOCKER_HOST").ok().as_deref());
    tokio::spawn(plugin.clone().watch(socket));
    tokio::spawn(plugin.clone().bind_loop());
    let path = Path::new(PLUGIN_SOCKET);
    loop {
        match ovl_docker::serve(path, plugin.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(socket = PLUGIN_SOCKET, error = %e, "Docker plugin server failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

impl DockerPlugin {
    /// `ReleaseAddress` against the KV.
    async fn release_address_now(&self, req: &AddressRelease) -> PluginResult<()> {
        let pid: PoolId = req.pool_id.parse()?;

        let IpAddr::V4(ip) = req.address else {
            return Ok(());
        };
        if let PoolId::Pending { token, .. } = &pid {
            match self.get_pool(token).await? {
                Some((p, _)) if p.bound.is_some() => {}
                _ => return Ok(()), // gateway or aux address of an unbound pool: nothing claimed
            }
        }
        let net = match self.network_for_pool(&pid).await {
            Ok(n) => n,
            Err(PluginError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if ip == net.gateway {
            return Ok(());
        }
        let mine = format!("docker/{}/", self.host());
        if let Some(owner) = self
            .agent
            .store()
            .addr_owner(&net.name, ip)
            .await
            .map_err(store_err)?
            && owner.starts_with(&mine)
        {
            self.agent
                .store()
                .release_addr(&net.name, ip, &owner)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    /// Binds pending pools of this host whose network dockerd already stored (right after
    /// `CreateNetwork` returns), so names and subnets agree before the first container.
    async fn bind_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tick.tick().await;
            let unbound: Vec<DockerNet> = self
                .cache
                .nets
                .lock()
                .expect("cache lock")
                .values()
                .filter(|d| d.name.is_none())
                .cloned()
                .collect();
            for d in unbound {
                if let Err(e) = self.net_of(&d).await {
                    tracing::debug!(network_id = %d.network_id, error = %e, "pending Docker network not bound yet");
                }
            }
            for op in self.deferred.all() {
                let r = match &op {
                    Deferred::DeleteEndpoint {
                        network,
                        endpoint_id,
                    } => self
                        .agent
                        .store()
                        .delete_endpoint(network, endpoint_id)
                        .await
                        .map(|_| ())
                        .map_err(store_err),
                    Deferred::ReleaseAddress { pool_id, address } => {
                        self.release_address_now(&AddressRelease {
                            pool_id: pool_id.clone(),
                            address: IpAddr::V4(*address),
                        })
                        .await
                    }
                };
                match r {
                    Ok(()) => {
                        tracing::info!(?op, "deferred Docker operation applied");
                        self.deferred.remove(&op);
                        self.agent.kick();
                    }
                    Err(PluginError::Unavailable(_)) => break, // still down: next tick
                    Err(e) => {
                        tracing::warn!(?op, error = %e, "dropping a deferred Docker operation");
                        self.deferred.remove(&op);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_fit_and_differ() {
        let a = temp_ifname(&"a1".repeat(32));
        let b = temp_ifname(&"b2".repeat(32));
        assert!(a.len() <= 15 && b.len() <= 15);
        assert_ne!(a, b);
        assert!(ovl_datapath::types::validate_ifname(&a).is_ok());
    }

    #[test]
    fn docker_socket_from_env() {
        assert_eq!(docker_socket(None), PathBuf::from("/var/run/docker.sock"));
        assert_eq!(
            docker_socket(Some("unix:///x/d.sock")),
            PathBuf::from("/x/d.sock")
        );
        assert_eq!(
            docker_socket(Some("tcp://1.2.3.4:2375")),
            PathBuf::from("/var/run/docker.sock")
        );
    }

    #[test]
    fn deferred_ops_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        let a = Deferred::DeleteEndpoint {
            network: "n".into(),
            endpoint_id: "e".into(),
        };
        let b = Deferred::ReleaseAddress {
            pool_id: "ovl/net/n/v4".into(),
            address: "10.0.0.5".parse().unwrap(),
        };
        let ops = DeferredOps::load(path.clone());
        ops.add(a.clone());
        ops.add(b.clone());
        ops.add(a.clone());
        assert_eq!(
            DeferredOps::load(path.clone()).all(),
            vec![a.clone(), b.clone()]
        );
        ops.remove(&a);
        assert_eq!(DeferredOps::load(path).all(), vec![b]);
    }

    #[test]
    fn pool_records_round_trip() {
        let p = PendingPool {
            token: "abc".into(),
            host: "h1".into(),
            subnet: "10.9.0.0/24".parse().unwrap(),
            gateway: Some("10.9.0.1".parse().unwrap()),
            name: None,
            network_id: Some("n".into()),
            internal: true,
            mtu: Some(1400),
            bound: None,
        };
        let b = serde_json::to_vec(&p).unwrap();
        assert_eq!(serde_json::from_slice::<PendingPool>(&b).unwrap(), p);
        assert_eq!(p.placeholder(), "docker-pending-abc");
        assert!(pool_key("abc").starts_with(&pools_prefix()));
        assert!(user_key("net", "h1").starts_with(&users_prefix("net")));
    }
}
