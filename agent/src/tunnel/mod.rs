//! The tunnel seam: WireGuard between hosts, which carries the VXLAN of encrypted networks.
//!
//! An encrypted network is VXLAN like any other, on its own UDP port
//! (`--encrypted-vxlan-port`, 4790). One policy rule sends exactly that port into the
//! WireGuard interface [`ovl_model::WG_IFNAME`], whose table holds one host route per peer
//! (its VTEP); each peer's allowed IP is its VTEP. Nothing else goes through the tunnel: the
//! KV, the liveness probes and the WireGuard datagrams themselves take the underlay, so the
//! tunnel never carries what configures it. The firewall admits that port only from the
//! WireGuard interface (`ovl-gateway`).
//!
//! The plan (which peers, what MTU) is computed purely from the view
//! (`reconcile::desired::tunnel`); [`Tunnel::apply`] brings the device to it. The real
//! implementation is [`wireguard::WireGuard`]; the unit tests use a fake.

pub mod wireguard;

use std::net::{Ipv4Addr, SocketAddrV4};

use ovl_core::WgRecord;
use serde::{Deserialize, Serialize};

/// One other host this host exchanges encrypted VXLAN with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelPeer {
    /// Its host id.
    pub host: String,
    /// Its public key (base64).
    pub public_key: String,
    /// Where its WireGuard listens (VTEP and port).
    pub endpoint: SocketAddrV4,
    /// Its VTEP: the one address it may send from inside the tunnel, and the route to it.
    pub vtep: Ipv4Addr,
}

/// What the tunnel should look like: the device's MTU and its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelPlan {
    /// MTU of the WireGuard interface (underlay MTU - 60).
    pub mtu: u32,
    /// Peers, sorted by host.
    pub peers: Vec<TunnelPeer>,
}

/// One peer as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerState {
    /// Host id.
    pub host: String,
    /// Its public key.
    pub public_key: String,
    /// Its WireGuard endpoint.
    pub endpoint: SocketAddrV4,
    /// Seconds since the last completed handshake, if any.
    pub handshake_secs_ago: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// The tunnel as it stands, for `overlayctl status` and `datapath`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// `kernel` or `userspace`.
    pub kind: String,
    /// This host's public key.
    pub public_key: String,
    /// WireGuard's UDP port.
    pub port: u16,
    /// Whether the device exists (only while an encrypted network has an endpoint here).
    pub up: bool,
    /// The key was removed from the KV: it stays unpublished until `overlayctl keys rotate`.
    pub revoked: bool,
    /// Peers programmed.
    pub peers: Vec<PeerState>,
    /// The last failure to apply the plan, cleared by the next success.
    pub last_error: Option<String>,
    /// How a userspace device moves bulk TCP through the kernel while it is up
    /// (`tunnel-gso`, `tunnel-gso-send-only`, `kernel-gro`); none for the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<String>,
}

/// The tunnel failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The WireGuard device or the key file.
    #[error("wireguard: {0}")]
    Wg(#[from] ovl_wg::Error),
    /// The policy rule or the routes of its table.
    #[error("wireguard routing: {0}")]
    Netlink(#[from] ovl_netlink::Error),
    /// A local file (the revoked-key list) or a sysctl.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A peer's public key in the KV is not a WireGuard key.
    #[error("host {host}: invalid WireGuard public key {key:?}: {why}")]
    BadKey {
        /// The host whose record holds it.
        host: String,
        /// The key as found.
        key: String,
        /// Why it was refused.
        why: String,
    },
}

/// WireGuard between this host and the others.
#[async_trait::async_trait]
pub trait Tunnel: Send + Sync {
    /// What this host's record publishes: `None` once its key was revoked (removed from the
    /// KV by an operator), until [`Tunnel::rotate`].
    fn record(&self) -> Option<WgRecord>;

    /// Brings the device, the policy rule and its routes to `plan`; `None` (no encrypted
    /// network here) removes them.
    async fn apply(&self, plan: Option<&TunnelPlan>) -> Result<(), TunnelError>;

    /// A new key pair for this host (`overlayctl keys rotate`), in use at once; returns what
    /// the host record must now publish. Ends a revocation.
    async fn rotate(&self) -> Result<WgRecord, TunnelError>;

    /// The KV lost this host's public key `public_key` although the host had published it:
    /// an operator revoked it. The key is not published again (also after a restart).
    /// Returns whether this changed anything.
    fn revoke(&self, public_key: &str) -> Result<bool, TunnelError>;

    /// The tunnel as it stands.
    fn status(&self) -> TunnelStatus;
}
