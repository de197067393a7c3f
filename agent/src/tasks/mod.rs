//! The long-running loops the daemon starts, one layer above the [`Agent`]: they only call
//! its verbs. Each is level-triggered and runs until its task is dropped.
//!
//! - [`sync`]: the cluster view from the KV (list + watch + periodic relist) and KV health;
//! - [`registry`]: this host's record and its liveness lease;
//! - [`reconcile`]: datapath and gateway passes;
//! - [`liveness`]: probes of hosts whose lease is gone (agent down is not host down);
//! - [`names`]: names passes (zone, DNS listeners, hosts files);
//! - [`health`]: the health namespace and probe rounds of the health matrix;
//! - [`probes`]: probe tasks other hosts give this one (`overlayctl probe`);
//! - [`metrics`]: Prometheus text on `--metrics-addr`.

pub mod health;
pub mod liveness;
pub mod metrics;
pub mod names;
pub mod probes;
pub mod reconcile;
pub mod registry;
pub mod sync;

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::agent::Agent;

/// Starts every loop of `agent` in `set`.
pub fn spawn_all(agent: &Arc<Agent>, set: &mut JoinSet<()>) {
    set.spawn(registry::run(agent.clone()));
    set.spawn(sync::run(agent.clone()));
    set.spawn(sync::probe_health(agent.clone()));
    set.spawn(reconcile::run(agent.clone()));
    set.spawn(liveness::run(agent.clone()));
    set.spawn(names::run(agent.clone()));
    set.spawn(health::run(agent.clone()));
    set.spawn(probes::run(agent.clone()));
    if let Some(addr) = agent.settings().metrics_addr {
        set.spawn(metrics::serve(agent.clone(), addr));
    }
}
