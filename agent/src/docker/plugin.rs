//! The plugin calls dockerd makes (`NetworkDriver` + `IpamDriver`), each a thin step over the
//! pool identity (`pools`) and the agent's verbs.

use std::net::IpAddr;

use ovl_core::{EndpointRecord, StoreError, ipam};
use ovl_docker::{
    PluginBackend, PluginError, PluginResult,
    backend::{
        AddressAllocated, AddressRelease, AddressRequest, CreateEndpoint, CreateNetwork,
        EndpointCreated, EndpointRef, Join, Joined, PoolAllocated, PoolRequest,
    },
    identity::PoolId,
};

use super::{Deferred, DockerNet, DockerPlugin, agent_err, store_err, temp_ifname, v4_net};
use ovl_model::Plug;

/// The driver options (`-o`) ovl understands; anything else is refused with a clear error
/// before anything is created.
pub(super) const DRIVER_OPTIONS: [&str; 3] = [
    ovl_docker::options::MTU,
    ovl_docker::identity::NETWORK_NAME_OPTION,
    ovl_docker::options::ENCRYPTED,
];

/// Refuses driver options ovl does not know (a typo would otherwise be silently ignored).
pub(super) fn check_driver_options(
    generic: &std::collections::BTreeMap<String, String>,
) -> PluginResult<()> {
    match generic
        .keys()
        .find(|k| !DRIVER_OPTIONS.contains(&k.as_str()))
    {
        Some(k) => Err(PluginError::Invalid(format!(
            "unknown driver option {k:?} (ovl knows {})",
            DRIVER_OPTIONS.join(", ")
        ))),
        None => ovl_docker::options::encrypted(generic)
            .map(|_| ())
            .map_err(|e| PluginError::Invalid(e.to_string())),
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
        req: ovl_docker::backend::GatewayCheck,
    ) -> PluginResult<ovl_docker::backend::GatewaySkip> {
        // Asked before any pool is allocated: the earliest place to refuse bad options.
        check_driver_options(&req.generic)?;
        Ok(ovl_docker::backend::GatewaySkip { v4: true, v6: true })
    }

    async fn request_pool(&self, req: PoolRequest) -> PluginResult<PoolAllocated> {
        DockerPlugin::request_pool(self, req).await
    }

    async fn release_pool(&self, pool_id: String) -> PluginResult<()> {
        DockerPlugin::release_pool(self, &pool_id).await
    }

    async fn request_address(&self, req: AddressRequest) -> PluginResult<AddressAllocated> {
        DockerPlugin::request_address(self, req).await
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
        // Engines before 28 have no GwAllocCheck: refused here, Docker then releases the pool.
        check_driver_options(&req.generic)?;
        let data = req.ipv4.first().ok_or_else(|| {
            PluginError::Invalid("no IPv4 pool: create the network with --ipam-driver ovl".into())
        })?;
        let subnet = v4_net(data.pool, "pool")?;
        if let Some(d) = self.cache.get(&req.network_id) {
            tracing::debug!(network_id = %d.network_id, "CreateNetwork repeated");
            return Ok(());
        }
        let store = self.agent.store();
        let pools = store.docker_pools().await.map_err(store_err)?;
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
                p.options = req.generic.clone();
                store.put_docker_pool(&p).await.map_err(store_err)?;
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
                let nets = store.networks().await.map_err(store_err)?;
                let net = nets.into_iter().find(|n| n.subnet == subnet).ok_or_else(|| {
                    PluginError::Invalid(format!(
                        "pool {subnet} was not allocated by the ovl IPAM driver: create the network with --ipam-driver ovl"
                    ))
                })?;
                if req.internal != net.internal || (req.mtu.is_some() && req.mtu != net.mtu) {
                    tracing::warn!(network = %net.name, "options differ from the existing cluster network; the cluster's apply");
                }
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
        // A pool binds as soon as dockerd stored the network (right after this call returns:
        // `housekeeping`), where its name and labels can be read; a container asking for an
        // address before that binds it on the spot.
        self.cache.put(d);
        Ok(())
    }

    async fn delete_network(&self, network_id: String) -> PluginResult<()> {
        let Some(d) = self.cache.get(&network_id) else {
            tracing::info!(%network_id, "DeleteNetwork for an unknown network: nothing to do");
            return Ok(());
        };
        let store = self.agent.store();
        if let Ok(PoolId::Pending { token, .. }) = d.pool_id.parse::<PoolId>()
            && let Some((p, _)) = store.docker_pool(&token).await.map_err(store_err)?
        {
            store.delete_docker_pool(&p).await.map_err(store_err)?;
        }
        let ours = self
            .removing
            .lock()
            .expect("removing lock")
            .remove(&network_id);
        if let Some(name) = d.name.as_ref().filter(|_| !ours) {
            match store.delete_network(name).await {
                Ok(_) => {
                    tracing::info!(network = %name, "Docker network removed: cluster network removed on every host")
                }
                Err(StoreError::NotFound(_)) => {}
                Err(StoreError::Conflict(m)) => {
                    // Docker has dropped its copy already (it lets no driver refuse); the
                    // follower brings it back, since the cluster network lives on.
                    tracing::warn!(network = %name, reason = %m,
                        "docker network rm while containers use the network: the cluster network stays and is recreated here");
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        self.cache.remove(&network_id);
        if let Some(n) = self.names() {
            n.forget(&network_id);
        }
        self.sync_kick.notify_one();
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
        let store = self.agent.store();
        match store
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
                store.create_endpoint(&rec).await.map_err(store_err)?;
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
            .filter(|e| e.host == self.host())
            .ok_or_else(|| {
                PluginError::NotFound(format!(
                    "endpoint {} was not created on this host",
                    req.endpoint_id
                ))
            })?;
        let tmp = temp_ifname(&req.endpoint_id);
        self.agent
            .plumb(
                &net,
                &rec,
                &req.sandbox_key,
                Plug::Docker { tmp: tmp.clone() },
            )
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
        Ok(())
    }
}
