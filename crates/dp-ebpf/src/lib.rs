//! The eBPF datapath of overlay-agent: the fast path.
//!
//! Three tc programs (C, `ebpf/overlay.c`, compiled by `build.rs` with clang-19) around ONE
//! collect-metadata vxlan device per host put standard VXLAN (UDP 4789, one VNI per network)
//! on the wire, so hosts on this path interoperate with hosts on the kernel path (bridge +
//! vxlan with static FDB entries):
//!
//! * `lxc_egress` on tc ingress of every container's host-side veth: anti-spoofing (source
//!   MAC/IPv4 and ARP sender must be the endpoint's own), ARP answered in BPF for known IPs,
//!   local switching with `bpf_redirect_peer`, encapsulation (in place, handed to the
//!   underlay with `bpf_redirect_neigh`, or through the vxlan device), head-end replication of
//!   BUM frames with `bpf_clone_redirect`;
//! * `vxlan_ingress` on tc ingress of the vxlan device: drops VNIs this host does not serve,
//!   delivers unicast to the local endpoint, broadcast/multicast to every local endpoint;
//! * `vtep_ingress` on tc ingress of the underlay interface holding the VTEP address:
//!   decapsulates known unicast in place, straight into the container (`bpf_redirect_peer`),
//!   and passes everything else on.
//!
//! Modules:
//! - [`error`]: the crate's error and the precise reasons a host cannot run the datapath;
//! - [`load`]: [`EbpfDatapath`]: probing, loading and adopting the programs, pinned links,
//!   teardown;
//! - [`maps`]: the map API (local and remote endpoints, flood lists, counters, the dump);
//! - [`devices`]: the vxlan device, the headroom bridge, the pins' bpffs;
//! - [`mod@plan`]: the pure planner ([`EbpfOp`]s from the desired state and what is programmed);
//! - [`backend`]: [`EbpfBackend`], the executor the agent drives: observe, plan, apply,
//!   plug and unplug endpoints.
//!
//! Maps and TCX links are pinned under a pin directory on a bpffs mounted in the host's mount
//! namespace, so the datapath outlives the agent however it was started;
//! [`EbpfDatapath::load`] adopts them and atomically swaps in the freshly loaded programs
//! (`bpf_link_update`), so traffic keeps flowing across agent restarts.
//!
//! All map and link operations act on kernel objects independent of network namespaces,
//! except those taking interface indexes (`load`, `attach_endpoint`), which resolve them in
//! the calling thread's network namespace.

#![warn(missing_docs)]

pub mod backend;
mod counters;
pub mod devices;
pub mod drops;
pub mod error;
pub mod load;
pub mod maps;
pub mod plan;
mod raw;
mod slots;
mod sys;

pub use backend::{BackendConfig, EbpfBackend, EbpfDetails, Pass, Report, VXLAN_DEVICE, purge};
pub use counters::Counters;
pub use devices::{HEADROOM_BRIDGE, HEADROOM_DEV, ensure_bpffs_at};
pub use drops::{DropEvent, DropReader};
pub use error::{Error, Result, Unsupported, UnsupportedReason};
pub use load::{
    EbpfDatapath, LoadOptions, ProgramKind, TC_ACT_REDIRECT, TC_ACT_SHOT, TestRunOutput, action,
};
pub use maps::{EbpfState, EndpointInfo, RemoteInfo};
pub use plan::{EbpfOp, HostPort, ObservedEbpf, plan, vxlan_drift};
pub use raw::{
    EP_SLOTS, LOCAL_SLOTS, MAX_FLOOD_VTEPS, MAX_LOCAL_PER_VNI, REMOTE_SLOTS, RawTrace, cached,
    mac_slot,
};
