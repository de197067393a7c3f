//! overlay-agent: the per-host daemon and the library `overlayctl` shares with it.
//!
//! Layers, top to bottom (a module uses only those below it):
//! - [`daemon`]: start-up and shutdown wiring; starts the [`tasks`] and the [`docker`] plugin;
//! - [`tasks`]: the long-running loops (KV sync, registry, reconcile, names, metrics);
//! - [`docker`]: the Docker remote network + IPAM plugin and the Engine API follower;
//! - [`api`]: the control API on the unix socket: wire types, server routes, client;
//! - [`agent`]: the shared state and every operation (endpoints, networks, inspection,
//!   one pass of each loop), calling the cluster store (`ovl-core`) and the seams below;
//! - [`reconcile`]: the reconciler that owns the datapath, and the desired state (pure);
//! - the seams over side effects, each a trait with its real implementation (fakes in the
//!   unit tests): [`datapath`] (kernel and eBPF), [`gateway`], [`names`], [`probe`],
//!   [`tunnel`] (WireGuard for encrypted networks);
//! - [`ready`]: tells systemd (`Type=notify`) once the sockets answer; [`ctl`]: the
//!   command line of `overlayctl`; [`conffile`]: the commented config file the package
//!   ships, rendered from the flags;
//! - leaves: [`doctor`] (findings from gathered facts, pure), [`graph`] (the topology as DOT
//!   or SVG, pure), [`monitor`] (drop and event records, pure), [`pathprobe`] (`overlayctl probe`'s frames and hop analysis, pure, over its TAP and captures), [`config`] (settings, pure), [`local`] (what this host attached, persisted),
//!   [`counters`], [`error`], [`perms`] (private state files and sockets).

pub mod agent;
pub mod api;
pub mod conffile;
pub mod config;
pub mod counters;
pub mod ctl;
pub mod daemon;
pub mod datapath;
pub mod docker;
pub mod doctor;
pub mod error;
#[cfg(test)]
pub mod fakes;
pub mod gateway;
pub mod graph;
pub mod health;
pub mod local;
pub mod monitor;
pub mod names;
pub mod pathprobe;
pub mod perms;
pub mod probe;
pub mod ready;
pub mod reconcile;
pub mod tasks;
pub mod tunnel;

/// Release and git revision of this build, e.g. `0.1.0+g6381a6a1b2` (the release alone when
/// built without git): `--version` of both binaries and the version each host records.
pub const VERSION: &str = env!("OVL_VERSION");
