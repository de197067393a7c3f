//! Cluster state of overlay-agent.
//!
//! - [`model`]: the records kept in the KV (hosts, networks, endpoints) and their rules;
//! - [`keys`]: the KV key schema, in one place;
//! - [`ipam`]: pure allocators for VNIs, subnets, addresses and MACs;
//! - [`store`]: typed operations over [`ovl_kv::Kv`], every allocation a compare-and-swap;
//! - [`view`]: an in-memory snapshot of the cluster, kept current from a KV watch.
//!
//! This crate talks to the KV only; it never touches the kernel.

pub mod ipam;
pub mod keys;
pub mod model;
pub mod probe;
pub mod store;
pub mod view;

pub use model::{
    AliveRecord, DockerPool, EndpointRecord, HealthRow, HostRecord, MacAddr, NetworkRecord,
    PeerHealth, PortMap, Proto, WgRecord,
};
pub use store::{ClusterStore, Repair, StoreError};
pub use view::{Change, ClusterView};
