//! The Docker remote network + IPAM plugin, served when the agent runs with
//! `--docker-plugin`: `/run/docker/plugins/ovl.sock` (transport and validation in `ovl-docker`),
//! plus the Engine API follower. By concern:
//! - [`pools`]: which cluster network a Docker network is (identity, below), pools and
//!   addresses;
//! - [`plugin`]: the `PluginBackend` calls, each a thin step over `pools` and the agent's
//!   plumbing verb;
//! - [`follower`]: the Engine API side: container names into the KV, and every cluster network
//!   present in this host's dockerd;
//! - [`cache`]: what is kept on this host's disk for restarts and KV outages.
//!
//! # Network identity
//! The driver is `Scope: local`, so each host has its own Docker NetworkID for a network and
//! no plugin call carries its name (see `ovl_docker::identity`). The cluster network is the
//! one whose NAME is the Docker network's name:
//! * `--ipam-opt ovl.network=NAME` (which the follower uses when it creates a network on other
//!   hosts), or a `--subnet` equal to an existing cluster network's subnet: the pool is that
//!   network's (`PoolId::Network`) from `RequestPool` on. The follower adds `ovl.follow`: its
//!   pool is refused when the network was removed meanwhile, so a removal racing the follower
//!   never brings the network back.
//! * Otherwise `RequestPool` reserves a cluster-unique subnet: a reservation in the subnet
//!   index (`pending:<token>`, not a network: no VNI, nothing in listings, the DNS zone or
//!   metrics) and a [`ovl_core::DockerPool`] record. `CreateNetwork` records the NetworkID (and
//!   `-o` options); right after it returns, the network's name is resolved through the Engine
//!   API and the pool is *bound*: if NAME is new cluster-wide, the network takes over the
//!   reservation in the same transaction; if NAME exists (a plain create typed on a second host
//!   before the network arrived there), the reservation goes and the follower recreates the
//!   Docker network with the cluster's subnet as long as no container joined it. Reservations
//!   Docker never used are released (`ReleasePool`, or after [`pools::STALE_POOL`]).
//!
//! # Created once, present everywhere
//! Every agent with the plugin (unless `--no-docker-network-sync`) keeps each cluster network
//! present in its dockerd, created through the Engine API with the cluster's subnet, gateway,
//! `--internal`, options and labels. `docker network rm` on any host removes the cluster
//! network when no container anywhere uses it, and every host follows. While a container on any
//! host uses it, the cluster network stays: Docker has already dropped its local copy (it lets
//! no remote driver refuse a removal, see the README), so the follower creates it again and the
//! agent logs which containers hold it.
//!
//! # External connectivity: Docker's `docker_gwbridge` (option a)
//! `Join` returns no `Gateway`, so libnetwork attaches every non-internal container to its own
//! `docker_gwbridge` (second interface, default route, masquerade) and implements `-p` with its
//! own iptables rules and docker-proxy. Why: on a host running dockerd, Docker owns the
//! iptables `FORWARD` chain (policy DROP with br_netfilter) and its `DOCKER` NAT chains; a
//! second bridge with our nftables NAT would have to be kept consistent with Docker's rules on
//! every Docker restart, and `-p` semantics (host IP, port ranges, userland proxy, `docker
//! port`) would diverge from what Docker users expect. Letting Docker own it keeps `docker run
//! -p` and `docker port` exact. The overlay itself stays in its own sandbox namespace,
//! untouched by Docker's rules. `--internal` networks set `DisableGatewayService`.
//!
//! # Restarts and KV outages
//! Docker never replays `CreateNetwork`: the NetworkID -> network binding is kept in
//! `<state-dir>/docker-networks.json` (with a copy of the network record), and a NetworkID
//! missing from it is looked up through the Engine API. Plumbing state lives in the kernel
//! and in `local.json`, so a restarted agent serves `Leave`/`DeleteEndpoint` for running
//! containers and their traffic never stops. With the KV down, calls that must allocate
//! (pools, addresses, endpoint records) fail with a clear "unavailable" error; the rest are
//! served from the cache. Removals (`DeleteEndpoint`, `ReleaseAddress`) succeed at once for
//! Docker and their KV half is queued in `<state-dir>/docker-deferred.json`, applied as soon
//! as the KV answers again.

mod cache;
mod follower;
mod plugin;
mod pools;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnetwork::{IpNetwork, Ipv4Network};
use ovl_core::StoreError;
use ovl_docker::{ContainerNames, NetworkNames, PluginError, PluginResult, engine::EngineNetworks};

use crate::{agent::Agent, error::AgentError};
use cache::{DeferredOps, NetCache};

pub use cache::{Deferred, DockerNet};

pub use crate::config::PLUGIN_SOCKET;

/// Host-side name of the interface Docker moves into the container (≤ 15 bytes).
pub fn temp_ifname(endpoint_id: &str) -> String {
    let short: String = endpoint_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("ovd{short}")
}

/// The Docker socket: `DOCKER_HOST=unix://PATH` if set, else `/var/run/docker.sock`.
pub fn docker_socket(docker_host: Option<&str>) -> PathBuf {
    docker_host
        .and_then(|h| h.strip_prefix("unix://"))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

fn v4_net(n: IpNetwork, what: &str) -> PluginResult<Ipv4Network> {
    match n {
        IpNetwork::V4(v) => Ok(v),
        IpNetwork::V6(_) => Err(PluginError::Invalid(format!(
            "{what} {n}: IPv6 is not supported by ovl"
        ))),
    }
}

fn with_prefix(ip: Ipv4Addr, subnet: Ipv4Network) -> IpNetwork {
    IpNetwork::V4(Ipv4Network::new(ip, subnet.prefix()).expect("prefix of a valid subnet"))
}

fn store_err(e: StoreError) -> PluginError {
    match e {
        StoreError::Invalid(m) => PluginError::Invalid(m),
        StoreError::Conflict(m) | StoreError::Exhausted(m) => PluginError::Conflict(m),
        StoreError::NotFound(m) => PluginError::NotFound(m),
        StoreError::Kv(k) if k.is_unreachable() => PluginError::Unavailable(format!(
            "{k} (new networks and addresses wait for the KV store)"
        )),
        other => PluginError::Internal(other.to_string()),
    }
}

fn agent_err(e: AgentError) -> PluginError {
    match e.status() {
        400 => PluginError::Invalid(e.to_string()),
        404 => PluginError::NotFound(e.to_string()),
        409 => PluginError::Conflict(e.to_string()),
        503 => PluginError::Unavailable(e.to_string()),
        _ => PluginError::Internal(e.to_string()),
    }
}

/// The Engine API of this host's dockerd, once connected.
#[derive(Clone)]
struct Engine {
    names: NetworkNames,
    networks: EngineNetworks,
}

/// The plugin backend over the agent.
pub struct DockerPlugin {
    agent: Arc<Agent>,
    cache: NetCache,
    engine: Mutex<Option<Engine>>,
    bind_lock: tokio::sync::Mutex<()>,
    /// Names the watcher reported, by endpoint id, until they are in the KV.
    wanted: Mutex<BTreeMap<String, ContainerNames>>,
    /// KV changes waiting for the KV.
    deferred: DeferredOps,
    /// Wakes the network follower (a network was created, bound or removed here).
    sync_kick: tokio::sync::Notify,
    /// NetworkIDs the follower is removing itself (to recreate them, or because the cluster
    /// network is gone): their `DeleteNetwork` must not remove the cluster network.
    removing: Mutex<std::collections::BTreeSet<String>>,
}

impl DockerPlugin {
    /// A backend for `agent`, with its NetworkID cache in the agent's state dir.
    pub fn new(agent: Arc<Agent>) -> Arc<Self> {
        let dir = &agent.settings().state_dir;
        let cache = NetCache::load(dir.join("docker-networks.json"));
        let deferred = DeferredOps::load(dir.join("docker-deferred.json"));
        Arc::new(DockerPlugin {
            agent,
            cache,
            engine: Mutex::new(None),
            bind_lock: tokio::sync::Mutex::new(()),
            wanted: Mutex::new(BTreeMap::new()),
            deferred,
            sync_kick: tokio::sync::Notify::new(),
            removing: Mutex::new(Default::default()),
        })
    }

    fn host(&self) -> &str {
        &self.agent.settings().host_id
    }

    fn engine(&self) -> Option<Engine> {
        self.engine.lock().expect("engine lock").clone()
    }

    fn names(&self) -> Option<NetworkNames> {
        self.engine().map(|e| e.names)
    }
}

/// Serves the plugin socket and follows the Docker Engine API.
pub async fn run(agent: Arc<Agent>) {
    let plugin = DockerPlugin::new(agent);
    let socket = docker_socket(std::env::var("DOCKER_HOST").ok().as_deref());
    tokio::spawn(plugin.clone().follow(socket));
    tokio::spawn(plugin.clone().housekeeping());
    let path = Path::new(PLUGIN_SOCKET);
    loop {
        let group = plugin.agent.settings().socket_group;
        match ovl_docker::server::serve_with(path, plugin.clone(), group).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(socket = PLUGIN_SOCKET, error = %e, "Docker plugin server failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
