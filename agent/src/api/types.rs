//! Wire types of the control API.

use std::{net::Ipv4Addr, path::PathBuf};

use ovl_core::{EndpointRecord, MacAddr, NetworkRecord, PortMap};
use serde::{Deserialize, Serialize};

/// Error body of every failed call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable, one line.
    pub error: String,
}

/// KV health as last probed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvStatus {
    /// Backend description (`etcd://...` or `embedded:/path`).
    pub backend: String,
    /// Whether the last probe succeeded.
    pub reachable: bool,
    /// The last error, if the last probe failed.
    pub error: Option<String>,
    /// Seconds since the last successful probe (`None`: never reached).
    pub last_ok_secs: Option<u64>,
    /// The store's revision at the last probe.
    #[serde(default)]
    pub head_revision: Option<i64>,
    /// Revisions the view is behind the store at the last probe (writes outside the
    /// agent's prefix count too, so this is an upper bound).
    #[serde(default)]
    pub view_behind: Option<i64>,
    /// Milliseconds since the view was last confirmed current (a listing, a watch event,
    /// or a probe that found the store at the view's revision).
    #[serde(default)]
    pub view_age_ms: Option<u64>,
    /// Why listing or watching the cluster state keeps failing, while it does.
    #[serde(default)]
    pub sync_error: Option<String>,
    /// Seconds it has been failing.
    #[serde(default)]
    pub sync_failing_secs: Option<u64>,
    /// Milliseconds the last full listing of the cluster state took, read and decoded: what
    /// a resync costs.
    #[serde(default)]
    pub last_list_ms: Option<f64>,
}

/// Counts shown by `overlayctl status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Known hosts.
    pub hosts: usize,
    /// Hosts alive.
    pub hosts_alive: usize,
    /// Networks.
    pub networks: usize,
    /// Endpoints cluster-wide.
    pub endpoints: usize,
    /// Endpoints on this host.
    pub local_endpoints: usize,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// This host's id.
    pub host_id: String,
    /// Agent version.
    pub version: String,
    /// VTEP address.
    pub advertise_addr: Ipv4Addr,
    /// Underlay MTU detected on the advertise interface.
    pub underlay_mtu: u32,
    /// Datapath mode in use.
    pub datapath: String,
    /// Whether this host's liveness record is currently held in the KV.
    pub registered: bool,
    /// KV health.
    pub kv: KvStatus,
    /// Counts from the last view of the cluster.
    pub counts: Counts,
    /// KV revision of that view.
    pub view_revision: i64,
    /// Extra lines other parts add (gateway, DNS, datapath), as key/value pairs.
    #[serde(default)]
    pub details: Vec<(String, String)>,
    /// This host's WireGuard, for encrypted networks.
    #[serde(default)]
    pub wireguard: crate::tunnel::TunnelStatus,
}

/// The answer of `POST /v1/keys/rotate`: this host's new WireGuard key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// This host.
    pub host: String,
    /// The new public key (base64).
    pub public_key: String,
    /// `kernel` or `userspace`.
    pub kind: String,
    /// WireGuard's UDP port.
    pub port: u16,
}

/// The answer of `DELETE /v1/hosts/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForgottenHost {
    /// The host forgotten.
    pub id: String,
    /// Its endpoints removed with it, as `network/name`.
    pub endpoints: Vec<String>,
}

/// One row of `GET /v1/hosts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostInfo {
    /// Host id.
    pub id: String,
    /// VTEP address.
    pub vtep: Ipv4Addr,
    /// Underlay MTU.
    pub underlay_mtu: u32,
    /// Its gateway bridge subnet, once chosen.
    #[serde(default)]
    pub gw_subnet: Option<ipnetwork::Ipv4Network>,
    /// Datapath mode.
    pub datapath: String,
    /// Its WireGuard (`kernel` or `userspace`), `None` without a published key.
    #[serde(default)]
    pub wireguard: Option<String>,
    /// Its WireGuard public key.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Agent version.
    pub version: String,
    /// Whether its lease is held.
    pub alive: bool,
    /// How it stands: `alive`, `agent down, datapath answering` (its entries are kept) or
    /// `dead`.
    #[serde(default)]
    pub state: String,
}

/// `GET /v1/networks/{name}` and rows of `GET /v1/networks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The record.
    #[serde(flatten)]
    pub record: NetworkRecord,
    /// Endpoints on it cluster-wide.
    pub endpoints: usize,
    /// Container MTU on this host.
    pub mtu_here: u32,
    /// Extra details (e.g. published ports, gateway subnet).
    #[serde(default)]
    pub details: Vec<(String, String)>,
}

/// `POST /v1/attach`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Network name.
    pub network: String,
    /// Container name (unique on the network).
    pub name: String,
    /// Container network namespace path.
    pub netns: Option<PathBuf>,
    /// Or a process whose network namespace to use.
    pub pid: Option<u32>,
    /// Extra names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Wanted address.
    pub ip: Option<Ipv4Addr>,
    /// Wanted MAC.
    pub mac: Option<MacAddr>,
    /// Published ports.
    #[serde(default)]
    pub publish: Vec<PortMap>,
}

/// Reply to `POST /v1/attach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachReply {
    /// The endpoint as recorded.
    pub endpoint: EndpointRecord,
    /// Interface name inside the container.
    pub ifname: String,
    /// MTU of that interface.
    pub mtu: u32,
    /// Prefix length of the address.
    pub prefix_len: u8,
    /// Gateway-bridge interface inside the container, if any.
    pub gateway_ifname: Option<String>,
}

/// One row of `GET /v1/endpoints`: the record, and for this host's endpoints their state in
/// the datapath after the last reconcile pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointView {
    /// The endpoint as recorded in the KV.
    #[serde(flatten)]
    pub record: EndpointRecord,
    /// Its datapath state, for endpoints on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ovl_model::EndpointStatus>,
}

/// `POST /v1/detach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetachRequest {
    /// Network name.
    pub network: String,
    /// Container name.
    pub name: String,
}

/// Reply to `POST /v1/detach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetachReply {
    /// Whether an endpoint existed.
    pub removed: bool,
    /// The container is detached on this host, but the KV failed before its record was
    /// removed: the agent removes the record when the KV answers again (the intent is kept
    /// in the state dir, across restarts).
    #[serde(default)]
    pub deferred: bool,
}

/// One network's section of `GET /v1/peers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeersNetwork {
    /// Network name.
    pub network: String,
    /// What should be programmed here (one line per entry).
    pub desired: Vec<String>,
    /// What is programmed here.
    pub actual: Vec<String>,
    /// The operations that would make them equal (empty: converged).
    pub diff: Vec<String>,
}

/// `GET /v1/peers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Peers {
    /// Per network.
    pub networks: Vec<PeersNetwork>,
}

/// `GET /v1/dns/lookup`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsLookup {
    /// The name asked.
    pub name: String,
    /// The container it was asked as.
    pub from: String,
    /// Response code (NOERROR, NXDOMAIN, SERVFAIL, ...).
    pub rcode: String,
    /// Answer records, one per line.
    pub answers: Vec<String>,
    /// Where the answer came from (`local` or `upstream`).
    pub source: String,
}
