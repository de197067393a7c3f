//! Kernel datapath of overlay-agent.
//!
//! - [`netns`]: persistent network namespaces (bind-mounted files) and helper threads.
//! - [`netlink`]: thin typed verbs over rtnetlink inside one namespace.
//! - [`mod@plan`]: the pure desired-vs-observed diff that yields a list of [`Op`]s.
//! - [`kernel`]: [`KernelDatapath`], which observes and applies them with a bridge + vxlan
//!   sandbox namespace per network, as Docker's overlay driver does.
//!
//! # Layout in the kernel
//! Per network a sandbox namespace file `<run_dir>/netns/<network>` holding `br0` (no
//! address, multicast snooping off) and `vxlan0` (VNI, `local` = this host's VTEP, dstport
//! 4789, nolearning, proxy; created in the host namespace so its UDP socket lives with the
//! underlay, then moved in). Remote peers are a permanent FDB entry `mac dst vtep` and a
//! permanent neighbour `ip lladdr mac` on `vxlan0`; BUM traffic goes to every VTEP in an
//! all-zeros FDB entry (head-end replication). Each local endpoint is a veth pair: the port
//! `ve-<id>` (or a hash of a long id) on `br0` with the endpoint id, address and MAC in its
//! ifalias, and the container's `eth0`/next free `ethN`.
//!
//! # Reconciling
//! ```no_run
//! # async fn pass(dp: &ovl_datapath::KernelDatapath, desired: ovl_datapath::Desired)
//! # -> ovl_datapath::Result<()> {
//! let observed = dp.observe().await?;
//! let ops = ovl_datapath::plan(&desired, &observed);
//! let report = dp.apply(&ops).await;
//! for (op, err) in &report.failed {
//!     tracing::warn!("{op}: {err}");
//! }
//! # Ok(()) }
//! ```
//! Endpoints are created with [`KernelDatapath::attach`] (it needs the container's
//! namespace, which the plan does not know); the plan only removes ports of endpoints that
//! are no longer desired.

#![warn(missing_docs)]

pub mod error;
pub mod garp;
pub mod kernel;
pub mod netlink;
pub mod netns;
pub mod plan;
pub mod types;

pub use error::{Error, Result};
pub use kernel::{
    ApplyReport, BRIDGE_NAME, KernelDatapath, VXLAN_NAME, underlay_interface, underlay_mtu,
};
pub use plan::{
    Desired, DesiredNetwork, Observed, ObservedBridge, ObservedEndpoint, ObservedNeigh,
    ObservedNetwork, ObservedVxlan, Op, VXLAN_PORT, effective_peers, network_drift, plan,
};
pub use types::{
    Attached, EndpointSpec, MAX_VNI, MacAddr, NetworkSpec, RemotePeer, free_ifname, port_name,
    validate_endpoint_id, validate_network_name,
};
