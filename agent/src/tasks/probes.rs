//! Probe tasks for this host (`overlayctl probe` run elsewhere): watches the KV prefix of
//! this host's tasks and carries out each one beside the other loops. A task in the KV is
//! still wanted (its asker deletes it when done, its lease when gone), so the ones a listing
//! finds (written while this agent started) are carried out too, each once.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use ovl_core::keys;
use ovl_kv::{KvEntry, WatchEvent};

use crate::agent::Agent;

/// Runs until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    while !agent.view_ready() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.forget_probes().await;
    let prefix = keys::probe_tasks(&agent.settings().host_id);
    let kv = agent.store().kv().clone();
    let mut backoff = Duration::from_millis(500);
    let mut done = std::collections::BTreeSet::new();
    loop {
        let from = match kv.list(&prefix).await {
            Ok(l) => {
                for e in &l.entries {
                    start(&agent, &mut done, e);
                }
                l.revision + 1
            }
            Err(e) => {
                tracing::debug!(error = %e, "listing probe tasks");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let mut stream = match kv.watch(&prefix, from).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "watching probe tasks");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Put(e)) => start(&agent, &mut done, &e),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

/// Starts the task in `e` unless it ran already (`done`: key and revision).
fn start(agent: &Arc<Agent>, done: &mut std::collections::BTreeSet<(String, i64)>, e: &KvEntry) {
    if !done.insert((e.key.clone(), e.mod_revision)) {
        return;
    }
    let Some(id) = e.key.rsplit('/').next().and_then(|s| s.parse().ok()) else {
        return;
    };
    match serde_json::from_slice(&e.value) {
        Ok(task) => {
            let agent = agent.clone();
            tokio::spawn(async move { agent.run_probe_task(id, task).await });
        }
        Err(err) => tracing::warn!(key = %e.key, error = %err, "a probe task that does not parse"),
    }
}
