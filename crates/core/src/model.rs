//! Records stored in the KV, and the naming rules they obey.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
pub use ovl_model::{MacAddr, PortMap, Proto};
use serde::{Deserialize, Serialize};

/// A host running the agent. Kept after the host dies, so it can be shown as dead and keep
/// its identity when it comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Unique host id (`--host-id`).
    pub id: String,
    /// The VTEP (advertise) address other hosts send VXLAN to.
    pub vtep: Ipv4Addr,
    /// MTU of the underlay interface holding `vtep`.
    pub underlay_mtu: u32,
    /// Datapath mode (`kernel` or `ebpf`).
    pub datapath: String,
    /// Agent version.
    pub version: String,
    /// Subnet of the host's gateway bridge, once chosen (overlay subnets must avoid it).
    #[serde(default)]
    pub gw_subnet: Option<Ipv4Network>,
    /// The host's WireGuard, for encrypted networks; `None`: the host takes part in none
    /// (an older agent, or its key was removed: it is cut off from encrypted networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg: Option<WgRecord>,
}

/// A host's WireGuard as other hosts need it: the public half of its key pair (the private
/// half never leaves the host's state dir), its port and which implementation runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgRecord {
    /// Public key, base64 (44 characters), as `wg` prints it.
    pub public_key: String,
    /// UDP port WireGuard listens on, on the host's VTEP address.
    pub port: u16,
    /// `kernel` or `userspace`.
    pub kind: String,
}

/// Liveness of a host: present while the host's lease is kept alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliveRecord {
    /// Host id.
    pub id: String,
    /// Random id of this agent process, to tell restarts apart.
    pub boot_id: String,
    /// Unix time (seconds) the agent started.
    pub since: u64,
}

/// What one host measured towards the others with encapsulated probes (the health matrix row
/// of `overlayctl doctor`), attached to the host's lease: it goes with its agent. Written only
/// when a peer's state flips or its clock offset moves by more than a step, so the watch
/// every agent holds stays quiet.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthRow {
    /// The measuring host.
    pub host: String,
    /// Per peer host id.
    pub peers: BTreeMap<String, PeerHealth>,
}

/// One cell of the health matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHealth {
    /// Probes through the overlay to the peer's health endpoint are answered.
    pub ok: bool,
    /// Unix time (seconds) of the last flip.
    pub since: u64,
    /// The peer's clock minus the measuring host's, in milliseconds, from an ICMP timestamp
    /// exchange through the overlay (positive: the peer is ahead). The last value written:
    /// the row is rewritten only when it moves by more than a step, so it may lag the clock
    /// by that much. `None`: not measured (an older agent, or timestamps unanswered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_ms: Option<i64>,
}

/// An overlay network, the same on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Network name: its identity across hosts.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// The network's subnet.
    pub subnet: Ipv4Network,
    /// The gateway address (reserved, never handed to an endpoint).
    pub gateway: Ipv4Addr,
    /// Internal networks get no gateway bridge and no route off the overlay.
    pub internal: bool,
    /// Container MTU override; `None` = each host's underlay MTU - 50.
    pub mtu: Option<u32>,
    /// Traffic between hosts goes through WireGuard (`--encrypted`, `-o encrypted`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// Labels, as `docker network inspect` shows them on every host (Compose keeps its
    /// project, network and config-hash labels here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Driver options given at creation (`docker network create -o K=V`), replayed on every
    /// host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// A subnet a Docker `RequestPool` reserved before the network's name was known (the plugin
/// protocol carries no name there). It holds its subnet in the subnet index, under its own
/// owner key, not as a network: nothing else sees it, and it becomes the network's subnet or
/// goes away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerPool {
    /// The token in the PoolID.
    pub token: String,
    /// Host that reserved it.
    pub host: String,
    /// The reserved subnet.
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
    /// `-o` options as given.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The cluster network it was bound to.
    pub bound: Option<String>,
    /// Unix time (seconds) of the reservation, to release ones Docker never used.
    #[serde(default)]
    pub since: u64,
}

impl DockerPool {
    /// The owner of its subnet in the subnet index (`pending:<token>`: no network name has
    /// a colon).
    pub fn reservation(&self) -> String {
        reservation_owner(&self.token)
    }
}

/// The subnet-index owner of a reservation with `token`.
pub fn reservation_owner(token: &str) -> String {
    format!("pending:{token}")
}

/// A container's attachment to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Endpoint id, unique within the network (the container name for `overlayctl attach`,
    /// Docker's endpoint id for the plugin).
    pub id: String,
    /// Network name.
    pub network: String,
    /// Host the endpoint lives on.
    pub host: String,
    /// Container name (empty until known, e.g. for Docker endpoints before the Engine API
    /// told us).
    pub name: String,
    /// Extra names on this network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Address on the overlay.
    pub ip: Ipv4Addr,
    /// MAC address on the overlay.
    pub mac: MacAddr,
    /// Published ports.
    #[serde(default)]
    pub publish: Vec<PortMap>,
}

impl EndpointRecord {
    /// Whether `overlayctl probe` made this endpoint for a moment. Judged by the id, not the
    /// name: a Docker container may be called `ovl-probe-x`, but its endpoint id is Docker's.
    pub fn is_probe(&self) -> bool {
        self.id.starts_with(crate::probe::PROBE_PREFIX)
    }
}

/// Checks a network name (the one rule every layer uses, [`ovl_model::validate_network_name`]).
pub fn validate_network_name(name: &str) -> Result<(), String> {
    ovl_model::validate_network_name(name).map_err(|e| e.to_string())
}

/// Checks a container name or alias ([`ovl_model::validate_endpoint_name`]).
pub fn validate_endpoint_name(name: &str) -> Result<(), String> {
    ovl_model::validate_endpoint_name(name).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_network_name("net1").is_ok());
        assert!(validate_network_name("my_net-2").is_ok());
        assert!(validate_network_name("a.b").is_err());
        assert!(validate_network_name("").is_err());
        assert!(validate_network_name("-x").is_err());
        assert!(validate_network_name("a/b").is_err());
        assert!(validate_endpoint_name("web.1").is_ok());
        assert!(validate_endpoint_name(&"x".repeat(64)).is_err());
    }

    #[test]
    fn health_cells_without_a_clock_offset_read_and_write_as_before() {
        let old: PeerHealth = serde_json::from_str(r#"{"ok":true,"since":5}"#).unwrap();
        assert_eq!(
            old,
            PeerHealth {
                ok: true,
                since: 5,
                skew_ms: None
            }
        );
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"ok":true,"since":5}"#
        );
        let new = PeerHealth {
            skew_ms: Some(-12),
            ..old
        };
        let text = serde_json::to_string(&new).unwrap();
        assert_eq!(text, r#"{"ok":true,"since":5,"skew_ms":-12}"#);
        assert_eq!(serde_json::from_str::<PeerHealth>(&text).unwrap(), new);
    }
}
