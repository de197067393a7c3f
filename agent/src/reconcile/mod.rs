//! The reconciler: level-triggered convergence of this host's datapath to the cluster view.
//!
//! Each pass reads desired state (from the current view, pure), actual state (netlink dumps),
//! computes a plan (pure, in `ovl-datapath`) and applies it. A pass runs when the view
//! changes, when an operation asks for it, and every resync period regardless, so entries
//! added or removed by hand are corrected and nothing depends on having seen every event.
//! No pass runs before the first successful listing of the KV: an agent restarting while
//! the KV is down adopts the datapath as it is and changes nothing.

pub mod desired;

use std::{sync::Arc, time::Instant};

use crate::agent::Agent;

/// Runs reconciliation passes until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(agent.settings.resync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = agent.kick.notified() => {},
            _ = tick.tick() => {},
        }
        if !agent.view_ready() {
            continue;
        }
        let started = Instant::now();
        match agent.reconcile_once().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(ops = n, took = ?started.elapsed(), "datapath converged"),
            Err(e) => tracing::warn!(error = %e, "reconcile pass failed"),
        }
        agent.reconcile_gateway().await;
    }
}
