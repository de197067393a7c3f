//! The health loop: makes this host's health namespace (kept across restarts), then probes
//! every other host's health endpoint every [`INTERVAL`] (see [`crate::health`]).

use std::{sync::Arc, time::Duration};

use crate::agent::Agent;

/// Time between probe rounds.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Makes (or finds) the health namespace once, at start; [`run`] retries if this failed.
pub async fn prepare(agent: &Agent) {
    if let Err(e) = agent.prepare_health().await {
        tracing::warn!(error = %e, "cannot make the health namespace; retrying")
    }
}

/// Runs the health loop until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let mut backoff = Duration::from_secs(1);
    while !agent.health_enabled() {
        if let Err(e) = agent.prepare_health().await {
            tracing::warn!(error = %e, retry_in = ?backoff, "cannot make the health namespace; the health matrix waits");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
    let mut state = crate::agent::HealthLoop::default();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        agent.health_round(&mut state).await;
    }
}
