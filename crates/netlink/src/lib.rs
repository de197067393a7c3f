//! The netlink and namespace toolkit of overlay-agent: thin typed verbs, no policy.
//!
//! - [`link`]: [`Netlink`], typed rtnetlink verbs in one network namespace (links, bridges,
//!   vxlan, veth, addresses, routes, FDB and neighbour entries), async;
//! - [`sync`]: the few link verbs the eBPF loader needs, blocking (why: see the module);
//! - [`netns`]: network namespace files, running code inside a namespace;
//! - [`host`]: the host's mount namespace, where the mounts that must outlive the agent go;
//! - [`veth`]: endpoint plumbing both datapaths share;
//! - [`garp`]: gratuitous ARP announcements;
//! - [`mtu`]: the underlay MTU;
//! - [`nft`]: the `nft` command in a namespace;
//! - [`rule`]: a policy rule for one UDP port and the routes of its table.
//!
//! Depends only on `ovl-model` among the workspace's crates.

#![warn(missing_docs)]

pub mod error;
pub mod garp;
pub mod host;
pub mod link;
pub mod mtu;
pub mod netns;
pub mod nft;
pub mod rule;
pub mod sync;
pub mod veth;

pub use error::{Error, Result};
pub use host::HostMounts;
pub use link::{FdbEntry, Link, NeighEntry, Netlink, VethPeer, VxlanConfig, VxlanInfo, is_errno};
pub use mtu::{underlay_interface, underlay_mtu, underlay_network};
pub use rule::PortRule;
