//! Which cluster network a Docker network is, and its pools and addresses (see the module
//! docs of `docker` for the identity rules).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnetwork::{IpNetwork, Ipv4Network};
use ovl_core::{DockerPool, NetworkRecord, StoreError, ipam, store::NetworkRequest};
use ovl_docker::{
    PluginError, PluginResult,
    backend::{
        AddressAllocated, AddressKind, AddressRelease, AddressRequest, EndpointRef, PoolAllocated,
        PoolRequest,
    },
    identity::{IdentityHint, PoolId, identity_hint},
};

use super::{Deferred, DockerNet, DockerPlugin, agent_err, store_err, v4_net, with_prefix};

/// A reservation of this host that Docker never bound to a network after this long is released
/// (`RequestPool` answered, then the create failed or the agent restarted before `ReleasePool`).
pub const STALE_POOL: Duration = Duration::from_secs(120);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DockerPlugin {
    /// The cluster record of network `name`; the cached copy while the KV is unreachable.
    pub(super) async fn network(&self, name: &str) -> PluginResult<NetworkRecord> {
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

    async fn pool(&self, token: &str) -> PluginResult<Option<DockerPool>> {
        Ok(self
            .agent
            .store()
            .docker_pool(token)
            .await
            .map_err(store_err)?
            .map(|(p, _)| p))
    }

    async fn put_pool(&self, p: &DockerPool) -> PluginResult<()> {
        self.agent
            .store()
            .put_docker_pool(p)
            .await
            .map_err(store_err)
    }

    /// Reserves a subnet for a network whose name is not known yet.
    async fn reserve_pending(
        &self,
        subnet: Option<Ipv4Network>,
        name: Option<String>,
    ) -> PluginResult<PoolAllocated> {
        let token = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let mut pool = DockerPool {
            token: token.clone(),
            host: self.host().to_string(),
            subnet: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid"),
            gateway: None,
            name,
            network_id: None,
            internal: false,
            mtu: None,
            options: BTreeMap::new(),
            bound: None,
            since: now_secs(),
        };
        self.check_overlay_subnet(subnet)?;
        pool.subnet = self
            .agent
            .store()
            .reserve_subnet(&pool.reservation(), subnet)
            .await
            .map_err(store_err)?;
        if let Err(e) = self.put_pool(&pool).await {
            if let Err(undo) = self.agent.store().release_subnet(&pool.reservation()).await {
                tracing::error!(token, error = %undo, "releasing a reservation after a failed pool record");
            }
            return Err(e);
        }
        tracing::info!(token = %token, subnet = %pool.subnet, "reserved a Docker pool");
        Ok(PoolAllocated {
            pool_id: PoolId::Pending { token, v6: false }.to_string(),
            pool: IpNetwork::V4(pool.subnet),
            gateway: Some(with_prefix(ipam::first_host(pool.subnet), pool.subnet)),
            data: BTreeMap::new(),
        })
    }

    /// Refuses a subnet that overlaps a host's gateway bridge (as `overlayctl network create`
    /// does).
    fn check_overlay_subnet(&self, subnet: Option<Ipv4Network>) -> PluginResult<()> {
        let Some(s) = subnet else { return Ok(()) };
        let v = self.agent.view();
        if let Some(h) = v
            .hosts
            .values()
            .find(|h| h.gw_subnet.is_some_and(|g| ipam::overlaps(g, s)))
        {
            return Err(PluginError::Conflict(format!(
                "subnet {s} overlaps the gateway bridge subnet of host {}",
                h.id
            )));
        }
        Ok(())
    }

    /// Binds pool `token` to cluster network `name` (see the module docs), recording
    /// `labels` (the Docker network's, when known) for every host.
    pub(super) async fn bind(
        &self,
        token: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> PluginResult<NetworkRecord> {
        ovl_docker::identity::validate_network_name(name).map_err(PluginError::Invalid)?;
        let _g = self.bind_lock.lock().await;
        let mut pool = self
            .pool(token)
            .await?
            .ok_or_else(|| PluginError::NotFound(format!("pool {token} is unknown (released?)")))?;
        if let Some(b) = &pool.bound {
            return self.network(b).await;
        }
        let store = self.agent.store();
        let net = match store.network(name).await.map_err(store_err)? {
            Some(n) => {
                // A plain create typed on this host after another host created NAME: the
                // cluster's subnet wins; the follower recreates the Docker network with it.
                store
                    .release_subnet(&pool.reservation())
                    .await
                    .map_err(store_err)?;
                if n.subnet != pool.subnet {
                    tracing::warn!(network = name, cluster = %n.subnet, here = %pool.subnet,
                        "Docker network created here before the cluster's arrived: it will be recreated with the cluster's subnet");
                }
                n
            }
            None => {
                let req = NetworkRequest {
                    name: name.to_string(),
                    subnet: Some(pool.subnet),
                    gateway: pool.gateway,
                    internal: pool.internal,
                    encrypted: ovl_docker::options::encrypted(&pool.options)
                        .map_err(|e| PluginError::Invalid(e.to_string()))?,
                    mtu: pool.mtu,
                    options: pool.options.clone(),
                    labels,
                    reservation: Some(pool.reservation()),
                    ..Default::default()
                };
                match self.agent.create_network(req).await {
                    Ok(i) => i.record,
                    Err(e) => match store.network(name).await.map_err(store_err)? {
                        // Another host created it first.
                        Some(n) => {
                            store
                                .release_subnet(&pool.reservation())
                                .await
                                .map_err(store_err)?;
                            n
                        }
                        None => return Err(agent_err(e)),
                    },
                }
            }
        };
        pool.bound = Some(net.name.clone());
        self.put_pool(&pool).await?;
        if let Some(nid) = &pool.network_id
            && pool.host == self.host()
            && let Some(mut d) = self.cache.get(nid)
        {
            d.name = Some(net.name.clone());
            d.record = Some(net.clone());
            self.cache.put(d);
        }
        tracing::info!(network = %net.name, subnet = %net.subnet, token, "Docker network bound");
        self.sync_kick.notify_one();
        Ok(net)
    }

    /// Reads Docker network `nid` (Engine API: its name and labels) and binds its pool.
    async fn resolve_and_bind(&self, token: &str, nid: &str) -> PluginResult<NetworkRecord> {
        let engine = self.engine().ok_or_else(|| {
            PluginError::Unavailable("not connected to the Docker Engine API yet".into())
        })?;
        let d = engine
            .networks
            .inspect(nid)
            .await
            .map_err(|e| PluginError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                PluginError::Unavailable(format!("Docker does not know network {nid} yet"))
            })?;
        self.bind(token, &d.name, d.labels).await
    }

    /// The cluster network of a pool.
    pub(super) async fn network_for_pool(&self, pid: &PoolId) -> PluginResult<NetworkRecord> {
        match pid {
            PoolId::Network { name, .. } => self.network(name).await,
            PoolId::Pending { token, .. } => {
                let pool = self
                    .pool(token)
                    .await?
                    .ok_or_else(|| PluginError::NotFound(format!("pool {pid} is unknown")))?;
                if let Some(b) = &pool.bound {
                    return self.network(b).await;
                }
                if let Some(nid) = &pool.network_id
                    && let Ok(net) = self.resolve_and_bind(token, nid).await
                {
                    return Ok(net);
                }
                if let Some(n) = &pool.name {
                    return self.bind(token, n, BTreeMap::new()).await;
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
    pub(super) async fn docker_net(&self, nid: &str) -> PluginResult<DockerNet> {
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
    pub(super) async fn net_of(&self, d: &DockerNet) -> PluginResult<NetworkRecord> {
        let net = match &d.name {
            Some(n) => self.network(n).await?,
            None => {
                let pid: PoolId = d.pool_id.parse()?;
                match &pid {
                    PoolId::Pending { token, .. } => match self.pool(token).await? {
                        Some(p) if p.bound.is_none() => {
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
    pub(super) fn endpoint_network(&self, r: &EndpointRef) -> Option<String> {
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

    /// `RequestPool`.
    pub(super) async fn request_pool(&self, req: PoolRequest) -> PluginResult<PoolAllocated> {
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
        let store = self.agent.store();
        match identity_hint(&req)? {
            IdentityHint::Named {
                name,
                subnet,
                follow,
            } => {
                let subnet = subnet.map(|s| v4_net(s, "subnet")).transpose()?;
                match store.network(&name).await.map_err(store_err)? {
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
                    // The follower looked at the KV a moment ago; the network has been removed
                    // since. Reserving a pool would bring it back in the cluster.
                    None if follow => Err(PluginError::NotFound(format!(
                        "network {name} was removed from the cluster: not made present here"
                    ))),
                    None => self.reserve_pending(subnet, Some(name)).await,
                }
            }
            IdentityHint::Subnet(s) => {
                let s = v4_net(s, "subnet")?;
                // Another host may have reserved this subnet a moment ago and be binding it
                // to its name: wait for that (bounded) instead of failing on the overlap.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let nets = store.networks().await.map_err(store_err)?;
                    if let Some(net) = nets.iter().find(|n| n.subnet == s) {
                        return Ok(found(net.clone()));
                    }
                    let held = store
                        .reservations()
                        .await
                        .map_err(store_err)?
                        .values()
                        .any(|r| *r == s);
                    if !held || tokio::time::Instant::now() >= deadline {
                        match self.reserve_pending(Some(s), None).await {
                            // The other host bound the subnet between our read and the
                            // reservation: look again.
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

    /// `ReleasePool`: a reservation Docker no longer needs goes (a bound pool's subnet is the
    /// network's and stays).
    pub(super) async fn release_pool(&self, pool_id: &str) -> PluginResult<()> {
        match pool_id.parse::<PoolId>()? {
            PoolId::Network { .. } => Ok(()),
            PoolId::Pending { token, .. } => match self.pool(&token).await? {
                Some(p) => self
                    .agent
                    .store()
                    .delete_docker_pool(&p)
                    .await
                    .map_err(store_err),
                None => Ok(()),
            },
        }
    }

    /// `RequestAddress`.
    pub(super) async fn request_address(
        &self,
        req: AddressRequest,
    ) -> PluginResult<AddressAllocated> {
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
                let mut pool = self
                    .pool(token)
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

    /// `ReleaseAddress` against the KV.
    pub(super) async fn release_address_now(&self, req: &AddressRelease) -> PluginResult<()> {
        let pid: PoolId = req.pool_id.parse()?;
        let IpAddr::V4(ip) = req.address else {
            return Ok(());
        };
        if let PoolId::Pending { token, .. } = &pid {
            match self.pool(token).await? {
                Some(p) if p.bound.is_some() => {}
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
        let store = self.agent.store();
        if let Some(owner) = store.addr_owner(&net.name, ip).await.map_err(store_err)?
            && owner.starts_with(&mine)
        {
            store
                .release_addr(&net.name, ip, &owner)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    /// Every 300 ms: binds pools of this host whose network dockerd stored (right after
    /// `CreateNetwork` returns), applies deferred KV changes once the KV answers, and
    /// releases reservations Docker never used.
    pub(super) async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        let mut last_gc = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            for d in self.cache.all().into_iter().filter(|d| d.name.is_none()) {
                if let Err(e) = self.net_of(&d).await {
                    tracing::debug!(network_id = %d.network_id, error = %e, "Docker network not bound yet");
                }
            }
            self.apply_deferred().await;
            if last_gc.elapsed() >= Duration::from_secs(10) {
                last_gc = tokio::time::Instant::now();
                if let Err(e) = self.release_stale_pools().await {
                    tracing::debug!(error = %e, "releasing unused Docker pools");
                }
            }
        }
    }

    async fn apply_deferred(&self) {
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

    /// Releases this host's reservations that no Docker network took within [`STALE_POOL`],
    /// and the reservation index entries whose pool record is gone.
    pub(super) async fn release_stale_pools(&self) -> PluginResult<()> {
        let store = self.agent.store();
        let now = now_secs();
        let pools = store.docker_pools().await.map_err(store_err)?;
        for p in &pools {
            let mine = p.host == self.host();
            let unused = p.bound.is_none()
                && p.network_id.is_none()
                && now.saturating_sub(p.since) >= STALE_POOL.as_secs();
            if mine && unused {
                tracing::info!(token = %p.token, subnet = %p.subnet, "releasing a Docker pool no network took");
                store.delete_docker_pool(p).await.map_err(store_err)?;
            }
        }
        Ok(())
    }
}
