//! The liveness loop: probes the VTEPs of hosts whose lease is gone, so their entries stay
//! programmed while their datapath answers (an agent restart) and go when it does not (a dead
//! host). See `reconcile::liveness`.

use std::sync::Arc;

use crate::{agent::Agent, reconcile::liveness::Liveness};

/// Runs liveness passes until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(Liveness::PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if agent.view_ready() {
            agent.probe_hosts().await;
        }
    }
}
