//! A recording backend for tests: the agent's side of the plugin protocol, reduced to a
//! deterministic in-memory IPAM plus a call log. Optionally creates the veth pair `Join` must
//! hand to libnetwork, inside a given network namespace.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use async_trait::async_trait;
use ipnetwork::{IpNetwork, Ipv4Network};
use ovl_docker::backend::*;
use ovl_docker::identity::{IdentityHint, PoolId, identity_hint};
use ovl_docker::wire::OptionMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    RequestPool(PoolRequest),
    ReleasePool(String),
    RequestAddress(AddressRequest),
    ReleaseAddress(AddressRelease),
    CreateNetwork(CreateNetwork),
    DeleteNetwork(String),
    CreateEndpoint(CreateEndpoint),
    EndpointInfo(EndpointRef),
    DeleteEndpoint(EndpointRef),
    Join(Join),
    Leave(EndpointRef),
    DiscoverNew(Discovery),
    DiscoverDelete(Discovery),
    Program(ExternalConnectivity),
    Revoke(EndpointRef),
    AllocateNetwork(AllocateNetwork),
    FreeNetwork(String),
    GwAllocCheck(GatewayCheck),
}

impl Call {
    pub fn name(&self) -> &'static str {
        match self {
            Call::RequestPool(_) => "RequestPool",
            Call::ReleasePool(_) => "ReleasePool",
            Call::RequestAddress(_) => "RequestAddress",
            Call::ReleaseAddress(_) => "ReleaseAddress",
            Call::CreateNetwork(_) => "CreateNetwork",
            Call::DeleteNetwork(_) => "DeleteNetwork",
            Call::CreateEndpoint(_) => "CreateEndpoint",
            Call::EndpointInfo(_) => "EndpointOperInfo",
            Call::DeleteEndpoint(_) => "DeleteEndpoint",
            Call::Join(_) => "Join",
            Call::Leave(_) => "Leave",
            Call::DiscoverNew(_) => "DiscoverNew",
            Call::DiscoverDelete(_) => "DiscoverDelete",
            Call::Program(_) => "ProgramExternalConnectivity",
            Call::Revoke(_) => "RevokeExternalConnectivity",
            Call::AllocateNetwork(_) => "AllocateNetwork",
            Call::FreeNetwork(_) => "FreeNetwork",
            Call::GwAllocCheck(_) => "GwAllocCheck",
        }
    }
}

/// Records every call. IPAM: one pool per request, `--subnet` or `198.18.150.0/24`; addresses
/// handed out from .2 upwards (.1 for the gateway). Known networks/endpoints are tracked so
/// unknown IDs get `NotFound`.
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<Call>>,
    pub state: Mutex<State>,
    /// When set, `Join` creates a veth pair in this netns and returns its host end.
    pub veth_netns: Option<String>,
    /// Network name resolver, used during CreateNetwork to record what the Engine API says then.
    pub names: Mutex<Option<ovl_docker::NetworkNames>>,
    pub name_during_create: Mutex<Vec<Option<String>>>,
    /// When set, endpoint `RequestAddress` answers this address whatever the pool (models the
    /// identity design's "second host" case: the network's real subnet differs from the pool
    /// Docker recorded).
    pub endpoint_override: Mutex<Option<IpNetwork>>,
    /// Gateway returned by `Join` (makes the endpoint the gateway endpoint).
    pub join_gateway: Mutex<Option<IpAddr>>,
}

#[derive(Default)]
pub struct State {
    pools: BTreeMap<String, Ipv4Network>,
    next_host: BTreeMap<String, u32>,
    networks: BTreeMap<String, ()>,
    endpoints: BTreeMap<String, String>,
    pending_seq: u32,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().iter().map(Call::name).collect()
    }

    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// Takes the calls of the last `docker run` attempt. The harness starts a run once more
    /// when runc fails to create the container's init (a runtime flake, see
    /// `Dockerd::docker_ok`); the failed attempt's calls must then end with libnetwork's full
    /// rollback, which is checked here, and are dropped.
    pub fn take_last_run(&self) -> Vec<Call> {
        let mut calls = self.take();
        let Some(start) = calls
            .iter()
            .rposition(|c| c.name() == "RequestAddress")
            .filter(|&i| i > 0)
        else {
            return calls;
        };
        let failed: Vec<_> = calls[..start]
            .iter()
            .map(Call::name)
            .filter(|n| *n != "EndpointOperInfo")
            .collect();
        assert!(
            failed.starts_with(&["RequestAddress", "CreateEndpoint"])
                && failed.ends_with(&["Leave", "DeleteEndpoint", "ReleaseAddress"]),
            "a retried run must have been rolled back in full: {failed:?}"
        );
        eprintln!("docker run was retried; the first attempt's calls: {failed:?}");
        calls.split_off(start)
    }

    fn log(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

#[async_trait]
impl PluginBackend for Recorder {
    async fn request_pool(&self, req: PoolRequest) -> PluginResult<PoolAllocated> {
        self.log(Call::RequestPool(req.clone()));
        let hint = identity_hint(&req)?;
        if req.v6 {
            return Err(PluginError::Invalid("IPv6 is not supported".into()));
        }
        let pool = match req.pool {
            Some(IpNetwork::V4(p)) => p,
            Some(IpNetwork::V6(_)) => unreachable!("transport checks V6"),
            None => "198.18.150.0/24".parse().unwrap(),
        };
        let mut st = self.state.lock().unwrap();
        let id = match hint {
            IdentityHint::Named { name, .. } => PoolId::Network { name, v6: false },
            _ => {
                st.pending_seq += 1;
                PoolId::Pending {
                    token: format!("p{}", st.pending_seq),
                    v6: false,
                }
            }
        }
        .to_string();
        st.pools.insert(id.clone(), pool);
        st.next_host.insert(id.clone(), 2);
        Ok(PoolAllocated {
            pool_id: id,
            pool: IpNetwork::V4(pool),
            gateway: None,
            data: BTreeMap::new(),
        })
    }

    async fn release_pool(&self, pool_id: String) -> PluginResult<()> {
        self.log(Call::ReleasePool(pool_id.clone()));
        let _: PoolId = pool_id.parse()?;
        self.state.lock().unwrap().pools.remove(&pool_id);
        Ok(())
    }

    async fn request_address(&self, req: AddressRequest) -> PluginResult<AddressAllocated> {
        self.log(Call::RequestAddress(req.clone()));
        if req.kind == AddressKind::Endpoint
            && let Some(a) = *self.endpoint_override.lock().unwrap()
        {
            return Ok(AddressAllocated {
                address: a,
                data: BTreeMap::new(),
            });
        }
        let mut st = self.state.lock().unwrap();
        let pool = *st
            .pools
            .get(&req.pool_id)
            .ok_or_else(|| PluginError::NotFound(format!("pool {}", req.pool_id)))?;
        let ip: Ipv4Addr = match (&req.kind, req.address) {
            (_, Some(IpAddr::V4(a))) => {
                if !pool.contains(a) {
                    return Err(PluginError::Invalid(format!("{a} is outside {pool}")));
                }
                a
            }
            (_, Some(IpAddr::V6(a))) => return Err(PluginError::Invalid(format!("{a} is IPv6"))),
            (AddressKind::Gateway, None) => pool.nth(1).unwrap(),
            (AddressKind::Endpoint, None) => {
                let n = st.next_host.get_mut(&req.pool_id).unwrap();
                let ip = pool.nth(*n).unwrap();
                *n += 1;
                ip
            }
        };
        Ok(AddressAllocated {
            address: IpNetwork::V4(Ipv4Network::new(ip, pool.prefix()).unwrap()),
            data: BTreeMap::new(),
        })
    }

    async fn release_address(&self, req: AddressRelease) -> PluginResult<()> {
        self.log(Call::ReleaseAddress(req));
        Ok(())
    }

    async fn create_network(&self, req: CreateNetwork) -> PluginResult<()> {
        self.log(Call::CreateNetwork(req.clone()));
        let names = self.names.lock().unwrap().clone();
        if let Some(names) = names {
            let during = names
                .resolve(&req.network_id)
                .await
                .map_err(|e| PluginError::Internal(e.to_string()))?;
            self.name_during_create.lock().unwrap().push(during);
        }
        self.state
            .lock()
            .unwrap()
            .networks
            .insert(req.network_id, ());
        Ok(())
    }

    async fn delete_network(&self, network_id: String) -> PluginResult<()> {
        self.log(Call::DeleteNetwork(network_id.clone()));
        self.state.lock().unwrap().networks.remove(&network_id);
        Ok(())
    }

    async fn gateway_alloc_check(&self, req: GatewayCheck) -> PluginResult<GatewaySkip> {
        self.log(Call::GwAllocCheck(req));
        // Like the agent: Join returns no gateway unless a test asks for one.
        Ok(GatewaySkip { v4: true, v6: true })
    }

    async fn allocate_network(
        &self,
        req: AllocateNetwork,
    ) -> PluginResult<BTreeMap<String, String>> {
        self.log(Call::AllocateNetwork(req));
        Ok(BTreeMap::from([("vni".to_string(), "42".to_string())]))
    }

    async fn free_network(&self, network_id: String) -> PluginResult<()> {
        self.log(Call::FreeNetwork(network_id));
        Ok(())
    }

    async fn create_endpoint(&self, req: CreateEndpoint) -> PluginResult<EndpointCreated> {
        self.log(Call::CreateEndpoint(req.clone()));
        let mut st = self.state.lock().unwrap();
        if !st.networks.contains_key(&req.network_id) {
            return Err(PluginError::NotFound(format!("network {}", req.network_id)));
        }
        st.endpoints
            .insert(req.endpoint_id.clone(), req.network_id.clone());
        Ok(EndpointCreated {
            mac_address: Some("02:42:c6:12:96:02".into()),
        })
    }

    async fn endpoint_info(&self, req: EndpointRef) -> PluginResult<OptionMap> {
        self.log(Call::EndpointInfo(req));
        let mut m = OptionMap::new();
        m.insert("ovl.vni".into(), serde_json::json!(42));
        Ok(m)
    }

    async fn delete_endpoint(&self, req: EndpointRef) -> PluginResult<()> {
        self.log(Call::DeleteEndpoint(req.clone()));
        self.state
            .lock()
            .unwrap()
            .endpoints
            .remove(&req.endpoint_id);
        Ok(())
    }

    async fn join(&self, req: Join) -> PluginResult<Joined> {
        self.log(Call::Join(req.clone()));
        if !self
            .state
            .lock()
            .unwrap()
            .endpoints
            .contains_key(&req.endpoint_id)
        {
            return Err(PluginError::NotFound(format!(
                "endpoint {}",
                req.endpoint_id
            )));
        }
        let short: String = req.endpoint_id.chars().take(9).collect();
        let (host_end, cont_end) = (format!("dkth{short}"), format!("dktc{short}"));
        if let Some(ns) = &self.veth_netns {
            let out = std::process::Command::new("ip")
                .args([
                    "-n", ns, "link", "add", &host_end, "type", "veth", "peer", "name", &cont_end,
                ])
                .output()
                .map_err(|e| PluginError::Internal(e.to_string()))?;
            if !out.status.success() {
                return Err(PluginError::Internal(
                    String::from_utf8_lossy(&out.stderr).into(),
                ));
            }
            let _ = std::process::Command::new("ip")
                .args(["-n", ns, "link", "set", &host_end, "up"])
                .output();
        }
        Ok(Joined {
            src_name: cont_end,
            dst_prefix: "eth".into(),
            gateway: *self.join_gateway.lock().unwrap(),
            gateway_v6: None,
            static_routes: vec![Route {
                destination: "198.18.151.0/24".parse().unwrap(),
                next_hop: None,
            }],
            disable_gateway_service: false,
        })
    }

    async fn leave(&self, req: EndpointRef) -> PluginResult<()> {
        self.log(Call::Leave(req.clone()));
        if let Some(ns) = &self.veth_netns {
            let short: String = req.endpoint_id.chars().take(9).collect();
            let _ = std::process::Command::new("ip")
                .args(["-n", ns, "link", "del", &format!("dkth{short}")])
                .output();
        }
        Ok(())
    }

    async fn discover_new(&self, req: Discovery) -> PluginResult<()> {
        self.log(Call::DiscoverNew(req));
        Ok(())
    }

    async fn discover_delete(&self, req: Discovery) -> PluginResult<()> {
        self.log(Call::DiscoverDelete(req));
        Ok(())
    }

    async fn program_external_connectivity(&self, req: ExternalConnectivity) -> PluginResult<()> {
        self.log(Call::Program(req));
        Ok(())
    }

    async fn revoke_external_connectivity(&self, req: EndpointRef) -> PluginResult<()> {
        self.log(Call::Revoke(req));
        Ok(())
    }
}
