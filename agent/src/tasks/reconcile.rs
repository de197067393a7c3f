//! The reconcile loop: a datapath pass (and a gateway repair) when the view changes, when an
//! operation asks for it, and every resync period regardless (that one also checks every
//! container end).

use std::{sync::Arc, time::Instant};

use crate::agent::Agent;

/// Runs reconciliation passes until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(agent.settings().resync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A change (watch event, attach, detach, liveness) gets a pass over the peers and
        // the interfaces on the host's side; the periodic one also checks every container end.
        let containers = tokio::select! {
            _ = agent.kicked() => false,
            _ = tick.tick() => true,
        };
        if !agent.view_ready() {
            continue;
        }
        let started = Instant::now();
        match agent.reconcile_pass(containers).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(ops = n, took = ?started.elapsed(), "datapath converged"),
            Err(e) => tracing::warn!(error = %e, "reconcile pass failed"),
        }
        agent.reconcile_gateway().await;
    }
}
