//! ovl-docker: the Docker side of overlay-agent.
//!
//! * [`server`]: the legacy remote plugin transport (`NetworkDriver` + `IpamDriver`) over a unix
//!   socket, `/run/docker/plugins/ovl.sock` by default ([`serve`]). It parses and validates every
//!   request into the domain types of [`backend`] and calls the agent's [`PluginBackend`].
//! * [`wire`]: the exact JSON shapes dockerd sends and expects; [`options`]: typed access to
//!   libnetwork's option maps (`-o`, port map, MTU, `--internal`).
//! * [`identity`]: how a per-host Docker network (Scope `local`, no name in any plugin call) is
//!   mapped to the cluster-wide network name. Read its module docs before implementing the
//!   backend.
//! * [`engine`]: the networks of a dockerd through its Engine API (list, inspect, create,
//!   remove), for making a network created on one host present on every host.
//! * [`watcher`]: follows the Engine API (`/containers`, `/events`) and reports container names,
//!   aliases and sandboxes of endpoints on `ovl` networks, which the plugin protocol never
//!   carries.
//! * `testing` (feature `testing`, off by default): a harness that runs real dockerd (20.10, 26,
//!   28) as lab hosts inside network namespaces, for privileged end-to-end tests.
//!
//! Protocol facts this crate relies on (captured from dockerd 20.10.24):
//! * Handshake once per daemon and plugin name: `Plugin.Activate`, then
//!   `NetworkDriver.GetCapabilities` (we answer `{"Scope":"local","ConnectivityScope":"global"}`);
//!   discovery is lazy and per mount namespace.
//! * Bodies of body-less calls are `null`; Go nil maps/slices arrive as `null`.
//! * `docker network create`: `RequestPool` -> gateway `RequestAddress` -> `CreateNetwork`.
//!   `docker run`: `RequestAddress` -> `CreateEndpoint` -> `Join`
//!   (then `ProgramExternalConnectivity` if `Join` returned a gateway). Stop:
//!   (`RevokeExternalConnectivity` ->) `Leave` -> `DeleteEndpoint` -> `ReleaseAddress`.
//!   `docker network rm`: `ReleaseAddress` (gateway) -> `ReleasePool` -> `DeleteNetwork`
//!   (measured; the pool is gone before the driver hears about the network's removal).
//! * During `CreateNetwork` the Engine API does not know the network yet; right after
//!   `docker network create` returns it does (see [`identity`]).

pub mod backend;
pub mod engine;
pub mod error;
pub mod identity;
pub mod options;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watcher;
pub mod wire;

pub use backend::{PluginBackend, PluginError, PluginResult};
pub use error::DockerError;
pub use server::{PluginServer, serve};
pub use watcher::{ContainerNames, DockerWatcher, EarlyNames, NetworkNames, WatchEvent};
