//! Wire types of the libnetwork remote `NetworkDriver` and `IpamDriver` protocols.
//!
//! Field names are exactly the ones dockerd sends and expects (Go's `encoding/json` names from
//! `libnetwork/drivers/remote/api` and `libnetwork/ipams/remote/api`). Every request type is
//! tolerant in the ways dockerd is observed to be sloppy:
//!
//! * unknown extra fields are ignored (newer engines add fields),
//! * Go `nil` maps and slices arrive as JSON `null`; they decode as empty,
//! * missing fields decode as their empty value.
//!
//! Wrong types (`"NetworkID": 5`, `"IPv4Data": {}`) are errors: the transport answers them with
//! a 400 and never calls the backend.
//!
//! The fixtures these types are tested against come from a capture of dockerd 20.10.24
//! (`shared/reference/docker-remote-transcript.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Media type every plugin response carries.
pub const PLUGIN_CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// Interface name for the network driver in `Plugin.Activate`.
pub const NETWORK_DRIVER: &str = "NetworkDriver";
/// Interface name for the IPAM driver in `Plugin.Activate`.
pub const IPAM_DRIVER: &str = "IpamDriver";

/// Decodes `null` (Go's nil map/slice/string) as the type's default value.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Free-form option map as libnetwork sends it (`map[string]interface{}` in Go).
pub type OptionMap = serde_json::Map<String, Value>;

/// String-to-string option map (`map[string]string` in Go).
pub type StringMap = BTreeMap<String, String>;

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// Response to `POST /Plugin.Activate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateResponse {
    /// Plugin interfaces implemented by this socket.
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

/// Response to `POST /NetworkDriver.GetCapabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// Data scope: `local` (per-host store) or `global` (cluster store).
    #[serde(rename = "Scope")]
    pub scope: String,
    /// Connectivity scope: `global` marks the driver multi-host.
    #[serde(
        rename = "ConnectivityScope",
        default,
        skip_serializing_if = "is_empty"
    )]
    pub connectivity_scope: String,
    /// Docker 28+: the driver answers `NetworkDriver.GwAllocCheck` before each network is
    /// created. Older engines ignore the field.
    #[serde(rename = "GwAllocChecker", default, skip_serializing_if = "is_false")]
    pub gw_alloc_checker: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `POST /NetworkDriver.GwAllocCheck` (Docker 28+, only to drivers that report
/// `GwAllocChecker`): sent before `IpamDriver.RequestPool` of a new network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GwAllocCheckRequest {
    /// The network's options, in the same form as in `CreateNetwork`.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: OptionMap,
}

/// Response to `GwAllocCheck`: whether Docker may skip reserving a gateway address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GwAllocCheckResponse {
    /// Do not reserve an IPv4 gateway (unless the user gave `--gateway`).
    #[serde(rename = "SkipIPv4", default)]
    pub skip_ipv4: bool,
    /// Do not reserve an IPv6 gateway (unless the user gave `--gateway`).
    #[serde(rename = "SkipIPv6", default)]
    pub skip_ipv6: bool,
}

// ---------------------------------------------------------------------------------------------
// NetworkDriver
// ---------------------------------------------------------------------------------------------

/// One IPAM pool as libnetwork passes it to the network driver (`IPv4Data` / `IPv6Data`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamData {
    /// Address space the pool came from (`LocalDefault`, or what our IPAM returned).
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    /// The pool in CIDR form, e.g. `10.0.0.0/24`.
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    /// Gateway in CIDR form (`10.0.0.1/24`), empty when none.
    #[serde(rename = "Gateway", default, deserialize_with = "null_default")]
    pub gateway: String,
    /// Auxiliary addresses (`--aux-address name=ip`), values in CIDR form.
    #[serde(
        rename = "AuxAddresses",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub aux_addresses: StringMap,
}

/// `POST /NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    /// Docker's per-host network ID (64 hex characters).
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    /// Network options; `com.docker.network.generic` holds the `-o k=v` map.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: OptionMap,
    /// IPv4 pools returned by IPAM.
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_default")]
    pub ipv4_data: Vec<IpamData>,
    /// IPv6 pools returned by IPAM.
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// `POST /NetworkDriver.AllocateNetwork` (swarm managers only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocateNetworkRequest {
    /// Network ID.
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    /// Network options as strings.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: StringMap,
    /// IPv4 pools.
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_default")]
    pub ipv4_data: Vec<IpamData>,
    /// IPv6 pools.
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// Response to `AllocateNetwork`: options handed to `CreateNetwork` on the workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateNetworkResponse {
    /// Driver options.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: StringMap,
}

/// Requests that carry only a network ID (`DeleteNetwork`, `FreeNetwork`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkIdRequest {
    /// Network ID.
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
}

/// The endpoint interface in `CreateEndpoint` requests and responses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInterface {
    /// IPv4 address in CIDR form, assigned by IPAM before the call.
    #[serde(
        rename = "Address",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_empty"
    )]
    pub address: String,
    /// IPv6 address in CIDR form.
    #[serde(
        rename = "AddressIPv6",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_empty"
    )]
    pub address_ipv6: String,
    /// MAC address; empty in the request means "driver, choose one".
    #[serde(
        rename = "MacAddress",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_empty"
    )]
    pub mac_address: String,
}

/// `POST /NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateEndpointRequest {
    /// Network ID.
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    /// Endpoint ID (64 hex characters).
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    /// Interface as far as libnetwork filled it in.
    #[serde(rename = "Interface", default, deserialize_with = "null_default")]
    pub interface: EndpointInterface,
    /// Endpoint options (port map, exposed ports, DNS servers, MAC...).
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: OptionMap,
}

/// Response to `CreateEndpoint`: only the interface fields that were empty in the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateEndpointResponse {
    /// `None` serializes as an absent field: libnetwork keeps its interface as it is.
    #[serde(rename = "Interface", default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// Requests that name one endpoint (`DeleteEndpoint`, `EndpointOperInfo`, `Leave`,
/// `RevokeExternalConnectivity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRequest {
    /// Network ID.
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    /// Endpoint ID.
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
}

/// Response to `EndpointOperInfo`: shown under the endpoint by `docker network inspect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfoResponse {
    /// Arbitrary key/value information.
    #[serde(rename = "Value", default, deserialize_with = "null_default")]
    pub value: OptionMap,
}

/// `POST /NetworkDriver.Join`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Network ID.
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    /// Endpoint ID.
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    /// Path of the container's network namespace (`<exec-root>/netns/<id>`), which exists only
    /// inside dockerd's mount namespace.
    #[serde(rename = "SandboxKey", default, deserialize_with = "null_default")]
    pub sandbox_key: String,
    /// Join options (port map, exposed ports).
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: OptionMap,
}

/// Interface name pair in a `Join` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceName {
    /// Host-side name of the interface libnetwork moves into the sandbox.
    #[serde(rename = "SrcName")]
    pub src_name: String,
    /// Prefix of the name inside the sandbox (`eth` gives `eth0`, `eth1`...).
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

/// A static route in a `Join` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRoute {
    /// Destination in CIDR form.
    #[serde(rename = "Destination")]
    pub destination: String,
    /// 0 = via `NextHop`, 1 = directly connected.
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    /// Next hop address; empty for connected routes.
    #[serde(rename = "NextHop", default, skip_serializing_if = "is_empty")]
    pub next_hop: String,
}

/// Route type: via a next hop.
pub const ROUTE_NEXTHOP: u8 = 0;
/// Route type: directly connected.
pub const ROUTE_CONNECTED: u8 = 1;

/// Response to `Join`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The interface to move into the sandbox.
    #[serde(
        rename = "InterfaceName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub interface_name: Option<InterfaceName>,
    /// IPv4 default gateway; empty leaves the default route to `docker_gwbridge`.
    #[serde(rename = "Gateway", default, skip_serializing_if = "is_empty")]
    pub gateway: String,
    /// IPv6 default gateway.
    #[serde(rename = "GatewayIPv6", default, skip_serializing_if = "is_empty")]
    pub gateway_ipv6: String,
    /// Extra routes.
    #[serde(
        rename = "StaticRoutes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub static_routes: Vec<StaticRoute>,
    /// When true, libnetwork never attaches this sandbox to `docker_gwbridge` for this endpoint.
    #[serde(rename = "DisableGatewayService", default)]
    pub disable_gateway_service: bool,
}

/// `POST /NetworkDriver.DiscoverNew` and `DiscoverDelete`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryRequest {
    /// 1 = node discovery, 2 = datastore config, 3 = datastore update.
    #[serde(rename = "DiscoveryType", default, deserialize_with = "null_default")]
    pub discovery_type: i64,
    /// Type-specific payload.
    #[serde(rename = "DiscoveryData", default)]
    pub discovery_data: Value,
}

/// `POST /NetworkDriver.ProgramExternalConnectivity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramExternalConnectivityRequest {
    /// Network ID.
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    /// Endpoint ID.
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    /// Port map and exposed ports.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: OptionMap,
}

/// A published port (`com.docker.network.portmap` element, Go `types.PortBinding`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBindingWire {
    /// IP protocol number: 6 = TCP, 17 = UDP, 132 = SCTP.
    #[serde(rename = "Proto", default, deserialize_with = "null_default")]
    pub proto: u8,
    /// Container IP (usually empty).
    #[serde(rename = "IP", default, deserialize_with = "null_default")]
    pub ip: String,
    /// Container port.
    #[serde(rename = "Port", default, deserialize_with = "null_default")]
    pub port: u16,
    /// Host IP to bind (empty = all).
    #[serde(rename = "HostIP", default, deserialize_with = "null_default")]
    pub host_ip: String,
    /// First host port (0 = any).
    #[serde(rename = "HostPort", default, deserialize_with = "null_default")]
    pub host_port: u16,
    /// Last host port of a range (equal to `HostPort` for one port).
    #[serde(rename = "HostPortEnd", default, deserialize_with = "null_default")]
    pub host_port_end: u16,
}

/// An exposed port (`com.docker.network.endpoint.exposedports` element, Go `types.TransportPort`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportPortWire {
    /// IP protocol number.
    #[serde(rename = "Proto", default, deserialize_with = "null_default")]
    pub proto: u8,
    /// Port.
    #[serde(rename = "Port", default, deserialize_with = "null_default")]
    pub port: u16,
}

/// NetworkDriver error body. Success bodies never carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// Message read by the network driver client (`Response.Err`) and the generic plugin client.
    #[serde(rename = "Err")]
    pub err: String,
    /// Message read by the IPAM client (`Response.Error`).
    #[serde(rename = "Error")]
    pub error: String,
}

impl ErrorResponse {
    /// An error body carrying `msg` in both fields, so every dockerd client code path shows it.
    pub fn new(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        Self {
            err: msg.clone(),
            error: msg,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IpamDriver
// ---------------------------------------------------------------------------------------------

/// Response to `IpamDriver.GetCapabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamCapabilitiesResponse {
    /// libnetwork generates a MAC and passes it to `RequestAddress`.
    #[serde(rename = "RequiresMACAddress", default)]
    pub requires_mac_address: bool,
    /// libnetwork replays `RequestPool` and the gateway `RequestAddress` at daemon start.
    #[serde(rename = "RequiresRequestReplay", default)]
    pub requires_request_replay: bool,
}

/// Response to `IpamDriver.GetDefaultAddressSpaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpacesResponse {
    /// Address space for local-scope networks.
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local_default_address_space: String,
    /// Address space for global-scope networks.
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global_default_address_space: String,
}

/// `POST /IpamDriver.RequestPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPoolRequest {
    /// Address space (one of ours from `GetDefaultAddressSpaces`).
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    /// `--subnet`, or empty.
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    /// `--ip-range`, or empty.
    #[serde(rename = "SubPool", default, deserialize_with = "null_default")]
    pub sub_pool: String,
    /// `--ipam-opt k=v`.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: StringMap,
    /// True for the IPv6 pool request.
    #[serde(rename = "V6", default, deserialize_with = "null_default")]
    pub v6: bool,
}

/// Response to `RequestPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPoolResponse {
    /// Opaque pool ID, passed back in every address call.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The pool in CIDR form.
    #[serde(rename = "Pool")]
    pub pool: String,
    /// Extra data; `com.docker.network.gateway` (CIDR) makes libnetwork skip the gateway
    /// `RequestAddress`.
    #[serde(rename = "Data", default, deserialize_with = "null_default")]
    pub data: StringMap,
}

/// `POST /IpamDriver.ReleasePool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePoolRequest {
    /// Pool ID from `RequestPool`.
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
}

/// `POST /IpamDriver.RequestAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAddressRequest {
    /// Pool ID from `RequestPool`.
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    /// Preferred address (`--ip`, `--gateway`, `--aux-address`), or empty for any.
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    /// Options: `RequestAddressType` = `com.docker.network.gateway` for the gateway; the MAC when
    /// `RequiresMACAddress` is set.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: StringMap,
}

/// Response to `RequestAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAddressResponse {
    /// The address in CIDR form with the pool's prefix length (`10.0.0.2/24`).
    #[serde(rename = "Address")]
    pub address: String,
    /// Extra data.
    #[serde(rename = "Data", default, deserialize_with = "null_default")]
    pub data: StringMap,
}

/// `POST /IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseAddressRequest {
    /// Pool ID.
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    /// The address (plain IP, no prefix).
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
}

/// Empty success body `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyResponse {}
