//! overlay-agent: the per-host daemon and the library `overlayctl` shares with it.
//!
//! Layout (what each part may touch):
//! - [`config`]: settings from flags, `OVERLAY_*` variables and a TOML file (pure);
//! - [`agent`]: the service object every entry point calls (KV through `ovl-core`);
//! - [`api`]: the control API on the unix socket: wire types, server routes, client;
//! - [`local`]: what this host attached, persisted (works while the KV is down);
//! - [`registry`]: this host's record and lease in the KV;
//! - [`sync`]: the cluster view kept current from the KV (list + watch + relist);
//! - [`datapath`]: the seam to the kernel and eBPF datapaths;
//! - [`metrics`]: Prometheus text on `--metrics-addr`;
//! - [`names`]: the zone, the embedded DNS listeners and the hosts files;
//! - [`reconcile`]: desired datapath state (pure) and the level-triggered loop;
//! - [`docker`]: the Docker remote network + IPAM plugin and the Engine API watcher;
//! - [`ready`]: tells systemd (`Type=notify`) once the sockets answer;
//! - [`ctl`]: the command line of `overlayctl`;
//! - [`conffile`]: the commented config file the package ships, rendered from the flags;
//! - [`daemon`]: start-up and shutdown wiring.

pub mod agent;
pub mod api;
pub mod conffile;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod datapath;
pub mod docker;
pub mod error;
pub mod local;
pub mod metrics;
pub mod names;
pub mod ready;
pub mod reconcile;
pub mod registry;
pub mod sync;

/// Release and git revision of this build, e.g. `0.1.0+g6381a6a1b2` (the release alone when
/// built without git): `--version` of both binaries and the version each host records.
pub const VERSION: &str = env!("OVL_VERSION");
