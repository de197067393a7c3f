//! Typed operations on the cluster state in the KV.
//!
//! Every allocation is a compare-and-swap or a transaction guarded by revisions, so two hosts
//! racing never get the same VNI, subnet or address: the loser re-reads and tries again.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use ipnetwork::Ipv4Network;
use ovl_kv::{Compare, Kv, KvError, LeaseId, Revision, TxnOp, WatchStream};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    ipam::{self, SubnetPool},
    keys,
    model::{self, AliveRecord, DockerPool, EndpointRecord, HealthRow, HostRecord, NetworkRecord},
    probe::{ProbeAnswer, ProbeId, ProbeTask},
    view::ClusterView,
};

/// How often a racing allocation is retried before giving up.
const MAX_ATTEMPTS: usize = 64;

/// Errors of the cluster store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is malformed or impossible (bad CIDR, address outside the subnet, ...).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with existing state (duplicate name, VNI or address in use, ...).
    #[error("{0}")]
    Conflict(String),
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A pool has no free element left.
    #[error("{0}")]
    Exhausted(String),
    /// Too many concurrent writers kept winning the race.
    #[error("gave up on {0} after {MAX_ATTEMPTS} attempts: too much contention")]
    Contention(String),
    /// A stored record could not be decoded.
    #[error("corrupt record at {key}: {reason}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// Decoding error.
        reason: String,
    },
    /// The KV layer failed.
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// Result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What `network create` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkRequest {
    /// Network name.
    pub name: String,
    /// Subnet; carved from the default pool when absent.
    pub subnet: Option<Ipv4Network>,
    /// Gateway; the subnet's first address when absent.
    pub gateway: Option<Ipv4Addr>,
    /// VNI; the lowest free one from 4096 when absent.
    pub vni: Option<u32>,
    /// No gateway bridge, no way off the overlay.
    pub internal: bool,
    /// Container MTU override.
    pub mtu: Option<u32>,
    /// WireGuard between hosts (see [`NetworkRecord::encrypted`]).
    #[serde(default)]
    pub encrypted: bool,
    /// Labels (see [`NetworkRecord::labels`]).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Driver options (see [`NetworkRecord::options`]).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// A subnet reservation (`pending:<token>`, see [`crate::DockerPool`]) this network takes
    /// over: its subnet must be `subnet`, and the reservation is gone once the network exists.
    #[serde(default)]
    pub reservation: Option<String>,
}

/// The cluster state in the KV, typed.
#[derive(Clone)]
pub struct ClusterStore {
    kv: Arc<dyn Kv>,
    pool: SubnetPool,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialize")
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl ClusterStore {
    /// A store over `kv`, carving automatic subnets from `pool`.
    pub fn new(kv: Arc<dyn Kv>, pool: SubnetPool) -> Self {
        ClusterStore { kv, pool }
    }

    /// The underlying KV.
    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    /// Which store this is, for status output (`etcd://...` or `embedded:/path`).
    pub fn describe(&self) -> String {
        self.kv.describe()
    }

    /// Checks that the store answers; returns its current revision.
    pub async fn health(&self) -> Result<Revision> {
        Ok(self.kv.health().await?)
    }

    // ---- the cluster view ----

    /// The cluster state as a view (the records under [`keys::VIEW`]), with the revision it
    /// reflects.
    pub async fn view(&self) -> Result<ClusterView> {
        let listing = self.kv.list_many(&keys::VIEW).await?;
        Ok(ClusterView::from_listing(&listing))
    }

    /// Changes to the cluster state from revision `from` on, for [`ClusterView::apply`].
    pub async fn watch(&self, from: Revision) -> Result<WatchStream> {
        Ok(self.kv.watch(keys::ROOT, from).await?)
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, i64)>> {
        match self.kv.get(key).await? {
            Some(e) => Ok(Some((decode(key, &e.value)?, e.mod_revision))),
            None => Ok(None),
        }
    }

    async fn list_json<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let listing = self.kv.list(prefix).await?;
        listing
            .entries
            .iter()
            .map(|e| decode(&e.key, &e.value))
            .collect()
    }

    // ---- hosts ----

    /// Writes (or refreshes) a host record.
    pub async fn put_host(&self, rec: &HostRecord) -> Result<()> {
        self.kv
            .put(&keys::host(&rec.id), &encode(rec), None)
            .await?;
        Ok(())
    }

    /// Writes the liveness record attached to `lease`.
    pub async fn put_alive(&self, rec: &AliveRecord, lease: LeaseId) -> Result<()> {
        self.kv
            .put(&keys::alive(&rec.id), &encode(rec), Some(lease))
            .await?;
        Ok(())
    }

    /// Grants a lease for the liveness record.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        Ok(self.kv.grant_lease(ttl).await?)
    }

    /// Renews the liveness lease once.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        Ok(self.kv.keep_alive(lease).await?)
    }

    /// One host record.
    pub async fn host(&self, id: &str) -> Result<Option<HostRecord>> {
        Ok(self.get_json(&keys::host(id)).await?.map(|(h, _)| h))
    }

    /// One liveness record.
    pub async fn alive(&self, id: &str) -> Result<Option<AliveRecord>> {
        Ok(self.get_json(&keys::alive(id)).await?.map(|(a, _)| a))
    }

    /// Every host with whether it is alive.
    pub async fn hosts(&self) -> Result<Vec<(HostRecord, bool)>> {
        let hosts: Vec<HostRecord> = self.list_json(keys::HOSTS).await?;
        let alive: BTreeSet<String> = self
            .list_json::<AliveRecord>(keys::ALIVE)
            .await?
            .into_iter()
            .map(|a| a.id)
            .collect();
        Ok(hosts
            .into_iter()
            .map(|h| {
                let a = alive.contains(&h.id);
                (h, a)
            })
            .collect())
    }

    /// Forgets a host that is gone for good: its endpoints (with their address claims) and
    /// then its host record, so every other host drops its entries, names and VXLAN
    /// admission. Refused while the host holds its lease (its agent runs: stop it first).
    /// Returns the endpoints removed. A host that comes back registers again.
    pub async fn forget_host(&self, id: &str) -> Result<Vec<EndpointRecord>> {
        if self.host(id).await?.is_none() {
            return Err(StoreError::NotFound(format!("host {id} not found")));
        }
        if self.alive(id).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "host {id} is alive (its agent holds its lease): stop its agent first"
            )));
        }
        let mut removed = Vec::new();
        for ep in self.endpoints(None).await? {
            if ep.host == id
                && let Some(ep) = self.delete_endpoint(&ep.network, &ep.id).await?
            {
                removed.push(ep);
            }
        }
        self.kv.delete(&keys::health(id)).await?;
        self.kv.delete(&keys::host(id)).await?;
        Ok(removed)
    }

    // ---- health matrix ----

    /// Writes this host's health row on its liveness `lease` (it goes with the agent).
    pub async fn put_health(&self, row: &HealthRow, lease: LeaseId) -> Result<()> {
        self.kv
            .put(&keys::health(&row.host), &encode(row), Some(lease))
            .await?;
        Ok(())
    }

    /// Every host's health row (hosts whose agent is away have none).
    pub async fn health_rows(&self) -> Result<Vec<HealthRow>> {
        self.list_json(keys::HEALTH).await
    }

    // ---- probes ----

    /// Gives `host` a probe task, on the asker's `lease`.
    pub async fn put_probe_task(
        &self,
        host: &str,
        id: ProbeId,
        task: &ProbeTask,
        lease: Option<LeaseId>,
    ) -> Result<()> {
        self.kv
            .put(&keys::probe_task(host, id), &encode(task), lease)
            .await?;
        Ok(())
    }

    /// `host`'s answer to probe `id`, with its revision, if it answered.
    pub async fn probe_answer(
        &self,
        id: ProbeId,
        host: &str,
    ) -> Result<Option<(ProbeAnswer, i64)>> {
        self.get_json(&keys::probe_answer(id, host)).await
    }

    /// Answers probe `id` as `host`, on that host's `lease`.
    pub async fn put_probe_answer(
        &self,
        id: ProbeId,
        host: &str,
        answer: &ProbeAnswer,
        lease: Option<LeaseId>,
    ) -> Result<()> {
        self.kv
            .put(&keys::probe_answer(id, host), &encode(answer), lease)
            .await?;
        Ok(())
    }

    /// Removes probe `id`'s task for `host` and every answer to it.
    pub async fn forget_probe(&self, id: ProbeId, host: &str) -> Result<()> {
        self.kv.delete(&keys::probe_task(host, id)).await?;
        let answers = self
            .kv
            .list(&format!("{}{id}/", keys::PROBE_ANSWERS))
            .await?;
        for e in answers.entries {
            self.kv.delete(&e.key).await?;
        }
        Ok(())
    }

    // ---- networks ----

    /// One network.
    pub async fn network(&self, name: &str) -> Result<Option<NetworkRecord>> {
        Ok(self.get_json(&keys::network(name)).await?.map(|(n, _)| n))
    }

    /// Every network, by name.
    pub async fn networks(&self) -> Result<Vec<NetworkRecord>> {
        self.list_json(keys::NETWORKS).await
    }

    /// Checks a request without touching the KV.
    pub fn validate_request(req: &NetworkRequest) -> Result<()> {
        model::validate_network_name(&req.name).map_err(StoreError::Invalid)?;
        if let Some(v) = req.vni {
            ipam::check_vni(v).map_err(StoreError::Invalid)?;
        }
        if let Some(s) = req.subnet {
            ipam::check_subnet(s).map_err(StoreError::Invalid)?;
        }
        match (req.gateway, req.subnet) {
            (Some(_), None) => {
                return Err(StoreError::Invalid("--gateway needs --subnet".into()));
            }
            (Some(g), Some(s)) if !ipam::is_host_addr(s, g) => {
                return Err(StoreError::Invalid(format!(
                    "gateway {g} is not a host address of {s}"
                )));
            }
            _ => {}
        }
        if let Some(m) = req.mtu
            && !(576..=9216).contains(&m)
        {
            return Err(StoreError::Invalid(format!(
                "MTU {m} out of range (576-9216)"
            )));
        }
        Ok(())
    }

    /// Creates a network, allocating its VNI and subnet atomically.
    pub async fn create_network(&self, req: &NetworkRequest) -> Result<NetworkRecord> {
        Self::validate_request(req)?;
        let name = &req.name;
        for _ in 0..MAX_ATTEMPTS {
            if self.kv.get(&keys::network(name)).await?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "network {name} already exists"
                )));
            }
            let (mut index, index_rev) = self.subnet_index().await?;
            if let Some(r) = &req.reservation {
                match (index.get(r), req.subnet) {
                    (Some(held), Some(s)) if *held == s => {}
                    (held, _) => {
                        return Err(StoreError::Conflict(format!(
                            "reservation {r} does not hold subnet {:?} (it holds {held:?})",
                            req.subnet
                        )));
                    }
                }
                index.remove(r);
            }
            let subnet = match req.subnet {
                Some(s) => {
                    if let Some((other, os)) = index.iter().find(|(_, os)| ipam::overlaps(**os, s))
                    {
                        return Err(StoreError::Conflict(format!(
                            "subnet {s} overlaps {} ({os})",
                            describe_owner(other)
                        )));
                    }
                    s
                }
                None => {
                    let used: Vec<_> = index.values().copied().collect();
                    ipam::next_subnet(self.pool, &used).ok_or_else(|| {
                        StoreError::Exhausted(format!(
                            "no free /{} left in pool {}",
                            self.pool.prefix, self.pool.pool
                        ))
                    })?
                }
            };
            let vni = match req.vni {
                Some(v) => {
                    if let Some(e) = self.kv.get(&keys::vni(v)).await? {
                        let owner = String::from_utf8_lossy(&e.value).into_owned();
                        return Err(StoreError::Conflict(format!(
                            "VNI {v} is in use by network {owner}"
                        )));
                    }
                    v
                }
                None => {
                    let used: BTreeSet<u32> = self
                        .kv
                        .list(keys::VNIS)
                        .await?
                        .entries
                        .iter()
                        .filter_map(|e| e.key.strip_prefix(keys::VNIS)?.parse().ok())
                        .collect();
                    ipam::next_vni(&used)
                        .ok_or_else(|| StoreError::Exhausted("no free VNI left".into()))?
                }
            };
            let gateway = req.gateway.unwrap_or_else(|| ipam::first_host(subnet));
            let rec = NetworkRecord {
                name: name.clone(),
                vni,
                subnet,
                gateway,
                internal: req.internal,
                mtu: req.mtu,
                encrypted: req.encrypted,
                labels: req.labels.clone(),
                options: req.options.clone(),
            };
            index.insert(name.clone(), subnet);
            let applied = self
                .kv
                .txn(
                    vec![
                        Compare::ModRevision(keys::network(name), 0),
                        Compare::ModRevision(keys::vni(vni), 0),
                        Compare::ModRevision(keys::SUBNETS.into(), index_rev),
                    ],
                    vec![
                        TxnOp::Put {
                            key: keys::network(name),
                            value: encode(&rec),
                            lease: None,
                        },
                        TxnOp::Put {
                            key: keys::vni(vni),
                            value: name.as_bytes().to_vec(),
                            lease: None,
                        },
                        TxnOp::Put {
                            key: keys::SUBNETS.into(),
                            value: encode(&index),
                            lease: None,
                        },
                        TxnOp::Put {
                            key: keys::addr(name, gateway),
                            value: b"gateway".to_vec(),
                            lease: None,
                        },
                    ],
                )
                .await?;
            if applied.is_some() {
                return Ok(rec);
            }
        }
        Err(StoreError::Contention(format!("creating network {name}")))
    }

    async fn subnet_index(&self) -> Result<(BTreeMap<String, Ipv4Network>, i64)> {
        Ok(self.get_json(keys::SUBNETS).await?.unwrap_or_default())
    }

    // ---- subnet reservations (Docker pools not bound to a name yet) ----

    /// Reserves `want` (or the next free subnet of the pool) for `owner` (`pending:<token>`)
    /// in the subnet index, without a network: no VNI, nothing in listings. Idempotent for
    /// the same owner and subnet.
    pub async fn reserve_subnet(
        &self,
        owner: &str,
        want: Option<Ipv4Network>,
    ) -> Result<Ipv4Network> {
        if !owner.contains(':') {
            return Err(StoreError::Invalid(format!(
                "reservation owner {owner:?} could be taken for a network name"
            )));
        }
        if let Some(s) = want {
            ipam::check_subnet(s).map_err(StoreError::Invalid)?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let (mut index, index_rev) = self.subnet_index().await?;
            if let Some(held) = index.get(owner) {
                if want.is_none_or(|w| w == *held) {
                    return Ok(*held);
                }
                return Err(StoreError::Conflict(format!(
                    "{owner} already holds {held}"
                )));
            }
            let subnet = match want {
                Some(s) => {
                    if let Some((other, os)) = index.iter().find(|(_, os)| ipam::overlaps(**os, s))
                    {
                        return Err(StoreError::Conflict(format!(
                            "subnet {s} overlaps {} ({os})",
                            describe_owner(other)
                        )));
                    }
                    s
                }
                None => {
                    let used: Vec<_> = index.values().copied().collect();
                    ipam::next_subnet(self.pool, &used).ok_or_else(|| {
                        StoreError::Exhausted(format!(
                            "no free /{} left in pool {}",
                            self.pool.prefix, self.pool.pool
                        ))
                    })?
                }
            };
            index.insert(owner.to_string(), subnet);
            if self
                .kv
                .cas(keys::SUBNETS, &encode(&index), index_rev, None)
                .await?
                .is_some()
            {
                return Ok(subnet);
            }
        }
        Err(StoreError::Contention(format!(
            "reserving a subnet for {owner}"
        )))
    }

    /// Drops `owner`'s reservation (idempotent; a network's entry is never dropped here).
    pub async fn release_subnet(&self, owner: &str) -> Result<()> {
        if !owner.contains(':') {
            return Err(StoreError::Invalid(format!(
                "{owner:?} is a network, not a reservation"
            )));
        }
        for _ in 0..MAX_ATTEMPTS {
            let (mut index, index_rev) = self.subnet_index().await?;
            if index.remove(owner).is_none() {
                return Ok(());
            }
            if self
                .kv
                .cas(keys::SUBNETS, &encode(&index), index_rev, None)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(StoreError::Contention(format!("releasing {owner}")))
    }

    /// The reservations in the subnet index: owner -> subnet.
    pub async fn reservations(&self) -> Result<BTreeMap<String, Ipv4Network>> {
        Ok(self
            .subnet_index()
            .await?
            .0
            .into_iter()
            .filter(|(o, _)| o.contains(':'))
            .collect())
    }

    // ---- Docker pools ----

    /// One Docker pool record with its revision.
    pub async fn docker_pool(&self, token: &str) -> Result<Option<(DockerPool, i64)>> {
        self.get_json(&keys::docker_pool(token)).await
    }

    /// Writes a Docker pool record.
    pub async fn put_docker_pool(&self, pool: &DockerPool) -> Result<()> {
        self.kv
            .put(&keys::docker_pool(&pool.token), &encode(pool), None)
            .await?;
        Ok(())
    }

    /// Every Docker pool record.
    pub async fn docker_pools(&self) -> Result<Vec<DockerPool>> {
        self.list_json(keys::DOCKER_POOLS).await
    }

    /// Removes a Docker pool record and its subnet reservation (idempotent).
    pub async fn delete_docker_pool(&self, pool: &DockerPool) -> Result<()> {
        self.release_subnet(&pool.reservation()).await?;
        self.kv.delete(&keys::docker_pool(&pool.token)).await?;
        Ok(())
    }

    /// Sets a network's labels and options (how Docker shows it on every host), once its
    /// creator knows them. Returns whether the record changed.
    pub async fn set_network_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        options: &BTreeMap<String, String>,
    ) -> Result<bool> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((mut rec, rev)) = self.get_json::<NetworkRecord>(&keys::network(name)).await?
            else {
                return Err(StoreError::NotFound(format!("network {name} not found")));
            };
            if rec.labels == *labels && rec.options == *options {
                return Ok(false);
            }
            rec.labels = labels.clone();
            rec.options = options.clone();
            if self
                .kv
                .cas(&keys::network(name), &encode(&rec), rev, None)
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        Err(StoreError::Contention(format!("labelling network {name}")))
    }

    /// Deletes a network; refused while it has endpoints.
    pub async fn delete_network(&self, name: &str) -> Result<NetworkRecord> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((rec, rev)) = self.get_json::<NetworkRecord>(&keys::network(name)).await?
            else {
                return Err(StoreError::NotFound(format!("network {name} not found")));
            };
            let eps = self.endpoints(Some(name)).await?;
            if !eps.is_empty() {
                let names: Vec<_> = eps
                    .iter()
                    .take(5)
                    .map(|e| format!("{} on {}", e.display_name(), e.host))
                    .collect();
                return Err(StoreError::Conflict(format!(
                    "network {name} still has {} endpoint(s) ({}{}): detach them first",
                    eps.len(),
                    names.join(", "),
                    if eps.len() > 5 { ", ..." } else { "" }
                )));
            }
            let (mut index, index_rev) = self.subnet_index().await?;
            index.remove(name);
            let mut ops = vec![
                TxnOp::Delete {
                    key: keys::network(name),
                },
                TxnOp::Put {
                    key: keys::SUBNETS.into(),
                    value: encode(&index),
                    lease: None,
                },
            ];
            // Only drop the VNI claim if it is still ours.
            if let Some(e) = self.kv.get(&keys::vni(rec.vni)).await?
                && e.value == name.as_bytes()
            {
                ops.push(TxnOp::Delete {
                    key: keys::vni(rec.vni),
                });
            }
            for e in self.kv.list(&keys::addrs_of(name)).await?.entries {
                ops.push(TxnOp::Delete { key: e.key });
            }
            let applied = self
                .kv
                .txn(
                    vec![
                        Compare::ModRevision(keys::network(name), rev),
                        Compare::ModRevision(keys::SUBNETS.into(), index_rev),
                    ],
                    ops,
                )
                .await?;
            if applied.is_some() {
                return Ok(rec);
            }
        }
        Err(StoreError::Contention(format!("deleting network {name}")))
    }

    // ---- addresses ----

    /// Claims an address on `net` for `owner`: `want` if given (refused if taken or outside
    /// the subnet), else the lowest free one. Claiming an address `owner` already holds
    /// succeeds (idempotent).
    pub async fn allocate_addr(
        &self,
        net: &NetworkRecord,
        want: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr> {
        if let Some(ip) = want {
            if !ipam::is_host_addr(net.subnet, ip) {
                return Err(StoreError::Invalid(format!(
                    "address {ip} is not a host address of network {} ({})",
                    net.name, net.subnet
                )));
            }
            if ip == net.gateway {
                return Err(StoreError::Conflict(format!(
                    "address {ip} is the gateway of network {}",
                    net.name
                )));
            }
            return match self
                .kv
                .create(&keys::addr(&net.name, ip), owner.as_bytes(), None)
                .await?
            {
                Some(_) => Ok(ip),
                None => {
                    let holder = self.addr_owner(&net.name, ip).await?;
                    if holder.as_deref() == Some(owner) {
                        Ok(ip)
                    } else {
                        Err(StoreError::Conflict(format!(
                            "address {ip} is already in use on network {}",
                            net.name
                        )))
                    }
                }
            };
        }
        for _ in 0..MAX_ATTEMPTS {
            let listing = self.kv.list(&keys::addrs_of(&net.name)).await?;
            let mut used = BTreeSet::new();
            for e in &listing.entries {
                let Some(ip) = e
                    .key
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                if e.value == owner.as_bytes() {
                    return Ok(ip);
                }
                used.insert(ip);
            }
            used.insert(net.gateway);
            let mut any = false;
            for ip in ipam::free_addrs(net.subnet, &used).take(8) {
                any = true;
                if self
                    .kv
                    .create(&keys::addr(&net.name, ip), owner.as_bytes(), None)
                    .await?
                    .is_some()
                {
                    return Ok(ip);
                }
            }
            if !any {
                return Err(StoreError::Exhausted(format!(
                    "network {} ({}) has no free address left",
                    net.name, net.subnet
                )));
            }
        }
        Err(StoreError::Contention(format!(
            "allocating an address on {}",
            net.name
        )))
    }

    /// Who holds an address.
    pub async fn addr_owner(&self, net: &str, ip: Ipv4Addr) -> Result<Option<String>> {
        Ok(self
            .kv
            .get(&keys::addr(net, ip))
            .await?
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
    }

    /// Releases an address if `owner` still holds it.
    pub async fn release_addr(&self, net: &str, ip: Ipv4Addr, owner: &str) -> Result<()> {
        let key = keys::addr(net, ip);
        if let Some(e) = self.kv.get(&key).await?
            && e.value == owner.as_bytes()
        {
            self.kv.delete_cas(&key, e.mod_revision).await?;
        }
        Ok(())
    }

    // ---- endpoints ----

    /// One endpoint.
    pub async fn endpoint(&self, net: &str, id: &str) -> Result<Option<EndpointRecord>> {
        Ok(self
            .get_json(&keys::endpoint(net, id))
            .await?
            .map(|(e, _)| e))
    }

    /// Endpoints of one network, or of all.
    pub async fn endpoints(&self, net: Option<&str>) -> Result<Vec<EndpointRecord>> {
        match net {
            Some(n) => self.list_json(&keys::endpoints_of(n)).await,
            None => self.list_json(keys::ENDPOINTS).await,
        }
    }

    /// Records a new endpoint; [`StoreError::Conflict`] if the id is taken on that network.
    pub async fn create_endpoint(&self, ep: &EndpointRecord) -> Result<()> {
        let key = keys::endpoint(&ep.network, &ep.id);
        match self.kv.create(&key, &encode(ep), None).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::Conflict(format!(
                "name {} is already used on network {}",
                ep.display_name(),
                ep.network
            ))),
        }
    }

    /// Claims an address on `net` for endpoint `id` and records the endpoint, in one
    /// transaction, so that an agent dying half-way leaves neither: `want` if given (refused
    /// if taken or outside the subnet), else the lowest free address; `make` builds the record
    /// for the address. A claim `id` already holds (left by an older agent that died between
    /// the two writes) is used again, or released when `want` names another address.
    /// [`StoreError::Conflict`] if the name is taken on the network.
    pub async fn create_endpoint_with_addr(
        &self,
        net: &NetworkRecord,
        id: &str,
        want: Option<Ipv4Addr>,
        make: impl Fn(Ipv4Addr) -> EndpointRecord,
    ) -> Result<EndpointRecord> {
        if let Some(ip) = want {
            if !ipam::is_host_addr(net.subnet, ip) {
                return Err(StoreError::Invalid(format!(
                    "address {ip} is not a host address of network {} ({})",
                    net.name, net.subnet
                )));
            }
            if ip == net.gateway {
                return Err(StoreError::Conflict(format!(
                    "address {ip} is the gateway of network {}",
                    net.name
                )));
            }
        }
        let ekey = keys::endpoint(&net.name, id);
        let taken =
            || StoreError::Conflict(format!("name {id} is already used on network {}", net.name));
        for _ in 0..MAX_ATTEMPTS {
            if self.kv.get(&ekey).await?.is_some() {
                return Err(taken());
            }
            let listing = self.kv.list(&keys::addrs_of(&net.name)).await?;
            let mut used = BTreeSet::new();
            let mut held: Option<(Ipv4Addr, Revision)> = None;
            for e in &listing.entries {
                let Some(ip) = e
                    .key
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                if e.value == id.as_bytes() {
                    held = Some((ip, e.mod_revision));
                }
                used.insert(ip);
            }
            used.insert(net.gateway);
            let ip = match (want, held) {
                (Some(w), Some((h, _))) if w == h => w,
                (Some(w), _) if used.contains(&w) => {
                    return Err(StoreError::Conflict(format!(
                        "address {w} is already in use on network {}",
                        net.name
                    )));
                }
                (Some(w), _) => w,
                (None, Some((h, _))) => h,
                (None, None) => ipam::free_addrs(net.subnet, &used).next().ok_or_else(|| {
                    StoreError::Exhausted(format!(
                        "network {} ({}) has no free address left",
                        net.name, net.subnet
                    ))
                })?,
            };
            let rec = make(ip);
            let akey = keys::addr(&net.name, ip);
            let mut compares = vec![Compare::ModRevision(ekey.clone(), 0)];
            let mut ops = vec![TxnOp::Put {
                key: ekey.clone(),
                value: encode(&rec),
                lease: None,
            }];
            match held {
                Some((h, rev)) if h == ip => {
                    compares.push(Compare::ModRevision(akey, rev));
                }
                other => {
                    compares.push(Compare::ModRevision(akey.clone(), 0));
                    ops.push(TxnOp::Put {
                        key: akey,
                        value: id.as_bytes().to_vec(),
                        lease: None,
                    });
                    if let Some((h, rev)) = other {
                        let old = keys::addr(&net.name, h);
                        compares.push(Compare::ModRevision(old.clone(), rev));
                        ops.push(TxnOp::Delete { key: old });
                    }
                }
            }
            if self.kv.txn(compares, ops).await?.is_some() {
                return Ok(rec);
            }
        }
        Err(StoreError::Contention(format!(
            "recording endpoint {id} on {}",
            net.name
        )))
    }

    /// Writes an endpoint record (e.g. to add its name or aliases later).
    pub async fn put_endpoint(&self, ep: &EndpointRecord) -> Result<()> {
        self.kv
            .put(&keys::endpoint(&ep.network, &ep.id), &encode(ep), None)
            .await?;
        Ok(())
    }

    /// Brings the record of an endpoint that lives on this host back to `mine` (the host's
    /// own knowledge) when the KV says otherwise: recreated with its address claim when
    /// missing, replaced (compare-and-swap) when it names another host, address or MAC.
    /// Names and aliases in the KV are left as they are. Nothing is written while the
    /// record agrees.
    pub async fn repair_endpoint(&self, mine: &EndpointRecord) -> Result<Repair> {
        let key = keys::endpoint(&mine.network, &mine.id);
        let akey = keys::addr(&mine.network, mine.ip);
        for _ in 0..MAX_ATTEMPTS {
            let found = self.get_json::<EndpointRecord>(&key).await?;
            let claim = self.kv.get(&akey).await?;
            let claim_ok = claim.as_ref().is_none_or(|c| c.value == mine.id.as_bytes());
            if let Some(c) = &claim
                && !claim_ok
            {
                return Ok(Repair::AddressTaken {
                    owner: String::from_utf8_lossy(&c.value).into_owned(),
                });
            }
            let (mut compares, mut ops, was) = match &found {
                Some((rec, _)) if rec.same_plumbing(mine) && claim.is_some() => {
                    return Ok(Repair::Agrees);
                }
                Some((rec, rev)) => {
                    let mut fixed = mine.clone();
                    fixed.name = rec.name.clone();
                    fixed.aliases = rec.aliases.clone();
                    (
                        vec![Compare::ModRevision(key.clone(), *rev)],
                        vec![TxnOp::Put {
                            key: key.clone(),
                            value: encode(&fixed),
                            lease: None,
                        }],
                        Some(rec.clone()),
                    )
                }
                None => (
                    vec![Compare::ModRevision(key.clone(), 0)],
                    vec![TxnOp::Put {
                        key: key.clone(),
                        value: encode(mine),
                        lease: None,
                    }],
                    None,
                ),
            };
            match &claim {
                Some(c) => compares.push(Compare::ModRevision(akey.clone(), c.mod_revision)),
                None => {
                    compares.push(Compare::ModRevision(akey.clone(), 0));
                    ops.push(TxnOp::Put {
                        key: akey.clone(),
                        value: mine.id.as_bytes().to_vec(),
                        lease: None,
                    });
                }
            }
            if self.kv.txn(compares, ops).await?.is_some() {
                return Ok(match was {
                    Some(was) => Repair::Rewrote { was },
                    None => Repair::Recreated,
                });
            }
        }
        Err(StoreError::Contention(format!(
            "repairing endpoint {} on {}",
            mine.id, mine.network
        )))
    }

    /// Deletes an endpoint and releases its address in one transaction. Returns the removed
    /// record, or `None` if there was none (idempotent). Without a record, addresses still
    /// claimed by `id` (an agent that died between claiming and recording) are released, as
    /// long as no record appears meanwhile.
    pub async fn delete_endpoint(&self, net: &str, id: &str) -> Result<Option<EndpointRecord>> {
        for _ in 0..MAX_ATTEMPTS {
            let key = keys::endpoint(net, id);
            let Some((ep, rev)) = self.get_json::<EndpointRecord>(&key).await? else {
                let orphans: Vec<(String, Revision)> = self
                    .kv
                    .list(&keys::addrs_of(net))
                    .await?
                    .entries
                    .into_iter()
                    .filter(|e| e.value == id.as_bytes())
                    .map(|e| (e.key, e.mod_revision))
                    .collect();
                if orphans.is_empty() {
                    return Ok(None);
                }
                let mut compares = vec![Compare::ModRevision(key.clone(), 0)];
                let mut ops = Vec::new();
                for (k, r) in orphans {
                    compares.push(Compare::ModRevision(k.clone(), r));
                    ops.push(TxnOp::Delete { key: k });
                }
                if self.kv.txn(compares, ops).await?.is_some() {
                    return Ok(None);
                }
                continue;
            };
            let mut compares = vec![Compare::ModRevision(key.clone(), rev)];
            let mut ops = vec![TxnOp::Delete { key }];
            let akey = keys::addr(net, ep.ip);
            if let Some(a) = self.kv.get(&akey).await?
                && a.value == id.as_bytes()
            {
                compares.push(Compare::ModRevision(akey.clone(), a.mod_revision));
                ops.push(TxnOp::Delete { key: akey });
            }
            if self.kv.txn(compares, ops).await?.is_some() {
                return Ok(Some(ep));
            }
        }
        Err(StoreError::Contention(format!(
            "deleting endpoint {id} on {net}"
        )))
    }
}

/// What [`ClusterStore::repair_endpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The record agreed; nothing written.
    Agrees,
    /// The record (and its address claim) was missing and was written again.
    Recreated,
    /// The record said something else (`was`) and was replaced.
    Rewrote {
        /// The record as found.
        was: EndpointRecord,
    },
    /// The endpoint's address is claimed by another endpoint: nothing could be written.
    AddressTaken {
        /// The other endpoint.
        owner: String,
    },
}

/// How a subnet-index owner reads in messages.
fn describe_owner(owner: &str) -> String {
    match owner.strip_prefix("pending:") {
        Some(token) => format!("a Docker pool being created (reservation {token})"),
        None => format!("network {owner}"),
    }
}

impl EndpointRecord {
    /// Whether two records of one endpoint agree on what the datapath programs: host,
    /// address and MAC (names and aliases aside).
    pub fn same_plumbing(&self, other: &EndpointRecord) -> bool {
        self.host == other.host && self.ip == other.ip && self.mac == other.mac
    }

    /// The container name, or the id while the name is unknown.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() {
            &self.id
        } else {
            &self.name
        }
    }
}
