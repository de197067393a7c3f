//! The interface between the plugin transport and the agent: domain-level requests, responses
//! and errors. The transport ([`crate::server`]) parses and validates the wire JSON into these
//! types; a malformed request never reaches the backend.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use ipnetwork::IpNetwork;

use crate::options::{ExposedPort, PortBinding};
use crate::wire::OptionMap;

/// Address space name we report for local-scope networks.
pub const LOCAL_ADDRESS_SPACE: &str = "OvlLocal";
/// Address space name we report for global-scope networks (unused with `Scope: local`).
pub const GLOBAL_ADDRESS_SPACE: &str = "OvlGlobal";

/// A semantic failure reported by the backend. Every variant's message reaches the Docker user
/// (`Error response from daemon: ...`) and dockerd's log, so it must be actionable and must not
/// contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The request refers to a network, endpoint, pool or address we do not know.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is well-formed but not acceptable (bad subnet, address outside pool...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request conflicts with existing state (subnet overlap, address in use...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A dependency (the KV store, the kernel) is temporarily unavailable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

/// Result type of backend calls.
pub type PluginResult<T> = Result<T, PluginError>;

/// One pool libnetwork passes to the network driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolData {
    /// Address space.
    pub address_space: String,
    /// The pool (network address and prefix).
    pub pool: IpNetwork,
    /// Gateway with the pool's prefix length, if any.
    pub gateway: Option<IpNetwork>,
    /// Auxiliary addresses by name.
    pub aux_addresses: BTreeMap<String, IpNetwork>,
}

/// `NetworkDriver.CreateNetwork`: a Docker network using our driver was created on this host.
///
/// The request carries **no network name**: see [`crate::identity`] for how the backend maps
/// Docker's per-host `network_id` to the cluster-wide network.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateNetwork {
    /// Docker's per-host network ID.
    pub network_id: String,
    /// `-o k=v` options.
    pub generic: BTreeMap<String, String>,
    /// IPv4 pools (normally one).
    pub ipv4: Vec<PoolData>,
    /// IPv6 pools.
    pub ipv6: Vec<PoolData>,
    /// `-o com.docker.network.driver.mtu=N`.
    pub mtu: Option<u32>,
    /// `--internal`.
    pub internal: bool,
    /// `--ipv6`.
    pub enable_ipv6: bool,
    /// All options as received, for keys this crate does not interpret.
    pub raw_options: OptionMap,
}

/// `NetworkDriver.GwAllocCheck` (Docker 28+): asked before a network's pools are allocated.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayCheck {
    /// `-o k=v` options.
    pub generic: BTreeMap<String, String>,
    /// `--internal`.
    pub internal: bool,
    /// `--ipv6`.
    pub enable_ipv6: bool,
    /// All options as received.
    pub raw_options: OptionMap,
}

/// The answer to [`GatewayCheck`]: which gateway addresses Docker need not reserve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewaySkip {
    /// Skip the IPv4 gateway.
    pub v4: bool,
    /// Skip the IPv6 gateway.
    pub v6: bool,
}

/// `NetworkDriver.AllocateNetwork` (swarm managers only; never seen with `Scope: local`).
#[derive(Debug, Clone, PartialEq)]
pub struct AllocateNetwork {
    /// Network ID.
    pub network_id: String,
    /// Options.
    pub options: BTreeMap<String, String>,
    /// IPv4 pools.
    pub ipv4: Vec<PoolData>,
    /// IPv6 pools.
    pub ipv6: Vec<PoolData>,
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateEndpoint {
    /// Network ID.
    pub network_id: String,
    /// Endpoint ID.
    pub endpoint_id: String,
    /// IPv4 address with prefix, as IPAM assigned it.
    pub address: Option<IpNetwork>,
    /// IPv6 address with prefix.
    pub address_v6: Option<IpNetwork>,
    /// MAC address chosen by the user or libnetwork; `None` asks the driver to choose one.
    pub mac_address: Option<String>,
    /// Published ports.
    pub port_map: Vec<PortBinding>,
    /// Exposed ports.
    pub exposed_ports: Vec<ExposedPort>,
    /// DNS servers libnetwork gives the container.
    pub dns_servers: Vec<String>,
    /// All options as received.
    pub raw_options: OptionMap,
}

/// What the driver fills in on `CreateEndpoint`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointCreated {
    /// The MAC the driver chose. Only sent to dockerd when the request had none (libnetwork rolls
    /// the endpoint back when a driver changes a value it set).
    pub mac_address: Option<String>,
}

/// An endpoint reference (`DeleteEndpoint`, `EndpointOperInfo`, `Leave`,
/// `RevokeExternalConnectivity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRef {
    /// Network ID.
    pub network_id: String,
    /// Endpoint ID.
    pub endpoint_id: String,
}

/// `NetworkDriver.Join`: a container sandbox joins the endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// Network ID.
    pub network_id: String,
    /// Endpoint ID.
    pub endpoint_id: String,
    /// The container's netns path, valid only inside dockerd's mount namespace.
    pub sandbox_key: PathBuf,
    /// Published ports.
    pub port_map: Vec<PortBinding>,
    /// Exposed ports.
    pub exposed_ports: Vec<ExposedPort>,
    /// All options as received.
    pub raw_options: OptionMap,
}

/// A route for the container (Join response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub destination: IpNetwork,
    /// Next hop; `None` = directly connected.
    pub next_hop: Option<IpAddr>,
}

/// The backend's answer to `Join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Host-side name of the interface libnetwork moves into the sandbox (at most 15 bytes).
    pub src_name: String,
    /// Name prefix inside the sandbox, normally `eth`.
    pub dst_prefix: String,
    /// IPv4 default gateway. `None` lets libnetwork attach `docker_gwbridge`; `Some` makes this
    /// endpoint the gateway endpoint (then `ProgramExternalConnectivity` follows).
    pub gateway: Option<IpAddr>,
    /// IPv6 default gateway.
    pub gateway_v6: Option<IpAddr>,
    /// Extra routes.
    pub static_routes: Vec<Route>,
    /// Never attach `docker_gwbridge` for this endpoint.
    pub disable_gateway_service: bool,
}

/// `ProgramExternalConnectivity`: publish the endpoint's ports.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalConnectivity {
    /// Network ID.
    pub network_id: String,
    /// Endpoint ID.
    pub endpoint_id: String,
    /// Published ports.
    pub port_map: Vec<PortBinding>,
    /// Exposed ports.
    pub exposed_ports: Vec<ExposedPort>,
}

/// `DiscoverNew` / `DiscoverDelete` (only sent to global-scope drivers with a cluster store).
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// 1 = node discovery.
    pub discovery_type: i64,
    /// For node discovery: `(Address, Self)`.
    pub node: Option<NodeDiscovery>,
    /// The payload as received.
    pub raw: serde_json::Value,
}

/// Node discovery payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDiscovery {
    /// The node's advertise address.
    pub address: String,
    /// True for the local node.
    pub is_self: bool,
}

/// IPAM capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpamCapabilities {
    /// Ask libnetwork to generate MAC addresses and pass them to `RequestAddress`.
    pub requires_mac_address: bool,
    /// Ask libnetwork to replay pool and gateway requests at daemon start.
    pub requires_request_replay: bool,
}

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRequest {
    /// Address space.
    pub address_space: String,
    /// `--subnet`, if given.
    pub pool: Option<IpNetwork>,
    /// `--ip-range`, if given (always inside `pool`; the transport checks).
    pub sub_pool: Option<IpNetwork>,
    /// `--ipam-opt k=v`.
    pub options: BTreeMap<String, String>,
    /// IPv6 request.
    pub v6: bool,
}

/// The backend's answer to `RequestPool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolAllocated {
    /// Opaque ID (see [`crate::identity::PoolId`] for the recommended encoding).
    pub pool_id: String,
    /// The pool.
    pub pool: IpNetwork,
    /// A gateway the IPAM chose (with the pool prefix). When set, libnetwork skips the gateway
    /// `RequestAddress` unless the user passed `--gateway`.
    pub gateway: Option<IpNetwork>,
    /// Extra data returned to libnetwork.
    pub data: BTreeMap<String, String>,
}

/// What an address is requested for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressKind {
    /// The network's gateway (`RequestAddressType: com.docker.network.gateway`).
    Gateway,
    /// A container endpoint or an aux address.
    Endpoint,
}

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRequest {
    /// Pool ID from `RequestPool`.
    pub pool_id: String,
    /// Preferred address (`--ip`, `--gateway`, `--aux-address`).
    pub address: Option<IpAddr>,
    /// What the address is for.
    pub kind: AddressKind,
    /// MAC address, when `RequiresMACAddress` is set.
    pub mac_address: Option<String>,
    /// All options as received.
    pub options: BTreeMap<String, String>,
}

/// The backend's answer to `RequestAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressAllocated {
    /// Address with the pool's prefix length.
    pub address: IpNetwork,
    /// Extra data.
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRelease {
    /// Pool ID.
    pub pool_id: String,
    /// The address.
    pub address: IpAddr,
}

/// What the agent implements to serve Docker. Methods with a default are optional in the
/// protocol (swarm-only, global-scope-only, or tolerated when unimplemented).
///
/// Handlers run synchronously inside `docker network create` / `docker run` with dockerd's 30 s
/// budget: keep them fast and idempotent (dockerd repeats `Leave`/`DeleteEndpoint` while
/// cleaning up stale sandboxes; a repeated delete of something unknown should succeed).
#[async_trait]
pub trait PluginBackend: Send + Sync {
    // ---- IpamDriver ----

    /// `IpamDriver.GetCapabilities`.
    fn ipam_capabilities(&self) -> IpamCapabilities {
        IpamCapabilities::default()
    }

    /// `IpamDriver.GetDefaultAddressSpaces`: `(local, global)`.
    fn default_address_spaces(&self) -> (String, String) {
        (
            LOCAL_ADDRESS_SPACE.to_string(),
            GLOBAL_ADDRESS_SPACE.to_string(),
        )
    }

    /// `IpamDriver.RequestPool`.
    async fn request_pool(&self, req: PoolRequest) -> PluginResult<PoolAllocated>;

    /// `IpamDriver.ReleasePool`.
    async fn release_pool(&self, pool_id: String) -> PluginResult<()>;

    /// `IpamDriver.RequestAddress`.
    async fn request_address(&self, req: AddressRequest) -> PluginResult<AddressAllocated>;

    /// `IpamDriver.ReleaseAddress`.
    async fn release_address(&self, req: AddressRelease) -> PluginResult<()>;

    // ---- NetworkDriver ----

    /// `NetworkDriver.CreateNetwork`.
    async fn create_network(&self, req: CreateNetwork) -> PluginResult<()>;

    /// `NetworkDriver.DeleteNetwork`.
    async fn delete_network(&self, network_id: String) -> PluginResult<()>;

    /// `NetworkDriver.GwAllocCheck` (Docker 28+): may Docker skip reserving a gateway address
    /// for a network with these options? A driver whose `Join` never returns a gateway answers
    /// yes. Default: no (what Docker assumes of drivers without the capability).
    ///
    /// Docker skips only its own gateway `RequestAddress`: a gateway that `RequestPool`
    /// returns (in `Data`) or that the user gives with `--gateway` is used all the same.
    async fn gateway_alloc_check(&self, _req: GatewayCheck) -> PluginResult<GatewaySkip> {
        Ok(GatewaySkip::default())
    }

    /// `NetworkDriver.AllocateNetwork` (swarm only). Default: no options.
    async fn allocate_network(
        &self,
        _req: AllocateNetwork,
    ) -> PluginResult<BTreeMap<String, String>> {
        Ok(BTreeMap::new())
    }

    /// `NetworkDriver.FreeNetwork` (swarm only). Default: nothing to do.
    async fn free_network(&self, _network_id: String) -> PluginResult<()> {
        Ok(())
    }

    /// `NetworkDriver.CreateEndpoint`.
    async fn create_endpoint(&self, req: CreateEndpoint) -> PluginResult<EndpointCreated>;

    /// `NetworkDriver.EndpointOperInfo`. Default: nothing to show.
    async fn endpoint_info(&self, _req: EndpointRef) -> PluginResult<OptionMap> {
        Ok(OptionMap::new())
    }

    /// `NetworkDriver.DeleteEndpoint`.
    async fn delete_endpoint(&self, req: EndpointRef) -> PluginResult<()>;

    /// `NetworkDriver.Join`.
    async fn join(&self, req: Join) -> PluginResult<Joined>;

    /// `NetworkDriver.Leave`.
    async fn leave(&self, req: EndpointRef) -> PluginResult<()>;

    /// `NetworkDriver.DiscoverNew`. Default: ignored (never sent with `Scope: local`).
    async fn discover_new(&self, _req: Discovery) -> PluginResult<()> {
        Ok(())
    }

    /// `NetworkDriver.DiscoverDelete`. Default: ignored.
    async fn discover_delete(&self, _req: Discovery) -> PluginResult<()> {
        Ok(())
    }

    /// `NetworkDriver.ProgramExternalConnectivity`: only called for endpoints whose `Join`
    /// returned a gateway. Default: nothing to do.
    ///
    /// Must be idempotent: Docker 29 repeats it whenever its gateway selection runs, and
    /// `RevokeExternalConnectivity` may come late (after `Leave`, or for an endpoint already
    /// deleted): both must succeed whatever was programmed before.
    async fn program_external_connectivity(&self, _req: ExternalConnectivity) -> PluginResult<()> {
        Ok(())
    }

    /// `NetworkDriver.RevokeExternalConnectivity`. Default: nothing to do.
    async fn revoke_external_connectivity(&self, _req: EndpointRef) -> PluginResult<()> {
        Ok(())
    }
}
