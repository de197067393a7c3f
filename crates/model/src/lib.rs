//! The shared vocabulary of overlay-agent, with no I/O: what the control plane, the Docker
//! plugin, the gateway and both datapaths say to each other.
//!
//! - [`mac`]: the one MAC address type;
//! - [`port`]: published ports;
//! - [`names`]: the naming rules (one rule for network names, used by every layer);
//! - [`ifname`]: the names the agent gives its interfaces;
//! - [`alias`]: the ifalias markers that map interfaces back to endpoints;
//! - [`spec`]: network and endpoint specs, remote peers, the encapsulation overhead;
//! - [`desired`]: the desired state of a host;
//! - [`container`]: container ends: what was found, their status, what to do.
//!
//! Everything here is plain data and pure functions; it depends on no other crate of the
//! workspace, and every other crate may depend on it.

#![warn(missing_docs)]

pub mod alias;
pub mod container;
pub mod desired;
pub mod error;
pub mod ifname;
pub mod mac;
pub mod names;
pub mod port;
pub mod spec;

pub use alias::{EndpointMark, Marker, container_marker, marker_of};
pub use container::{ContainerFix, ContainerLink, ContainerSeen, EndpointStatus, container_fix};
pub use desired::{Desired, DesiredNetwork, effective_peers};
pub use error::{Error, ErrorKind, Result};
pub use ifname::free_ifname;
pub use mac::MacAddr;
pub use names::{
    validate_endpoint_id, validate_endpoint_name, validate_ifname, validate_network_name,
};
pub use port::{PortMap, Proto};
pub use spec::{
    Attached, ENCRYPTED_VXLAN_PORT, EndpointSpec, MAX_VNI, NetworkSpec, Plug, RemotePeer,
    VXLAN_OVERHEAD, VXLAN_PORT, WG_IFNAME, WG_OVERHEAD, WG_PORT, encrypted_mtu, overlay_mtu,
};
