//! The kernel datapath of overlay-agent: bridge + vxlan, as Docker's overlay driver does it.
//!
//! - [`mod@plan`]: the pure desired-vs-observed diff that yields a list of [`Op`]s, container
//!   ends included, and the status of every local endpoint;
//! - [`kernel`]: [`KernelDatapath`], which observes and applies them;
//! - [`error`]: the crate's error.
//!
//! Netlink verbs, namespaces and veth plumbing come from `ovl-netlink`, the vocabulary from
//! `ovl-model`; this crate knows nothing of the KV, the agent or the other datapath.
//!
//! # Layout in the kernel
//! Per network a sandbox namespace file `<run_dir>/netns/<network>` (a bind mount in the
//! host's mount namespace, so it outlives the agent however it was started) holding `br0`
//! (no address, multicast snooping off) and `vxlan0` (VNI, `local` = this host's VTEP,
//! dstport 4789, nolearning, proxy; created in the host namespace so its UDP socket lives
//! with the underlay, then moved in). Remote peers are a permanent FDB entry `mac dst vtep`
//! and a permanent neighbour `ip lladdr mac` on `vxlan0`; BUM traffic goes to every VTEP in
//! an all-zeros FDB entry (head-end replication). Each local endpoint is a veth pair: the
//! port `ve-<id>` (or a hash of a long id) on `br0`, marked `ovl-ep:<id> <ip>/<len> <mac>`,
//! and the container's `eth0`/next free `ethN`, marked `ovl-ct:...` (`ovl_model::alias`).
//!
//! # Reconciling
//! ```no_run
//! # async fn pass(dp: &ovl_dp_kernel::KernelDatapath, desired: ovl_model::Desired)
//! # -> ovl_dp_kernel::Result<()> {
//! let observed = dp.observe_with(&desired).await?;
//! let ops = ovl_dp_kernel::plan(&desired, &observed);
//! let report = dp.apply(&ops).await;
//! for (op, err) in &report.failed {
//!     tracing::warn!("{op}: {err}");
//! }
//! # Ok(()) }
//! ```
//! Endpoints are created by [`KernelDatapath::attach`], and restored by the plan when one
//! of their ends is missing or differs, as long as their container's namespace exists.

#![warn(missing_docs)]

pub mod error;
pub mod guard;
pub mod kernel;
pub mod plan;

pub use error::{Error, Result};
pub use kernel::{ApplyReport, BRIDGE_NAME, KernelDatapath, VXLAN_NAME};
pub use plan::{
    Observed, ObservedBridge, ObservedEndpoint, ObservedNeigh, ObservedNetwork, ObservedVxlan, Op,
    network_drift, plan, port_marker, statuses,
};
