//! The names loop: a names pass on every view change and local change (debounced), and every
//! resync period to repair hosts files.

use std::{sync::Arc, time::Duration};

use crate::agent::Agent;

/// Runs name passes until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let mut views = agent.subscribe();
    let mut tick = tokio::time::interval(agent.settings().resync_interval);
    loop {
        tokio::select! {
            r = views.changed() => {
                if r.is_err() { return }
                // Names recorded a moment ago resolve at once, before the pass below.
                agent.refresh_zone();
            }
            _ = agent.names_kicked() => {},
            _ = tick.tick() => {},
        }
        // Coalesce bursts (many endpoints at once) into one pass.
        tokio::time::sleep(Duration::from_millis(5)).await;
        agent.sync_names().await;
    }
}
