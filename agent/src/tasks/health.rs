//! The health loop: makes this host's health namespace (kept across restarts), then probes
//! every other host's health endpoint every [`INTERVAL`] (see [`crate::health`]).

use std::{path::Path, sync::Arc, time::Duration};

use crate::{agent::Agent, health};

/// Time between probe rounds.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Makes (or finds) the health namespace once, at start; [`run`] retries if this failed.
pub async fn prepare(agent: &Agent) {
    let path = health::netns_path(&agent.settings().run_dir);
    match ensure_netns(&path).await {
        Ok(()) => agent.health_ready(path),
        Err(e) => {
            tracing::warn!(netns = %path.display(), error = %e, "cannot make the health namespace; retrying")
        }
    }
}

/// Runs the health loop until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let path = health::netns_path(&agent.settings().run_dir);
    let mut backoff = Duration::from_secs(1);
    while !agent.health_enabled() {
        match ensure_netns(&path).await {
            Ok(()) => agent.health_ready(path.clone()),
            Err(e) => {
                tracing::warn!(netns = %path.display(), error = %e, retry_in = ?backoff, "cannot make the health namespace; the health matrix waits");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
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

/// The health namespace at `path`: the one a previous run left, or a new one (in the host's
/// mount namespace, so it outlives an agent started under `ip netns exec`).
async fn ensure_netns(path: &Path) -> Result<(), String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mounts = ovl_netlink::HostMounts::detect();
        // Looked for where it is made: an agent in a mount namespace that mounts made in the
        // host's do not reach (dockerd's private one) sees only the bare file.
        if ovl_netlink::netns::is_netns(&mounts.resolve(&path)) {
            return Ok(());
        }
        // A file left without its mount (the host rebooted) is replaced.
        let _ = std::fs::remove_file(mounts.resolve(&path));
        ovl_netlink::netns::create_netns(&mounts, &path).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
