//! Keeps the agent's view of the cluster current: list, then watch from the listing's
//! revision; relist after a compaction or an error, and relist periodically anyway (level
//! triggered: the datapath never depends on having seen every event). Also probes KV health.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use ovl_core::StoreError;
use ovl_kv::KvError;

use crate::{agent::Agent, counters::Counters};

/// Runs the view sync loop until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let store = agent.store().clone();
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = std::time::Instant::now();
        let mut view = match store.view().await {
            Ok(v) => {
                agent.note_list(started.elapsed());
                v
            }
            Err(e) => {
                agent.note_kv(Err(e.to_string()));
                agent.note_sync(Err(format!("listing: {e}")));
                tracing::warn!(error = %e, retry_in = ?backoff, "listing cluster state failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        agent.note_kv(Ok(()));
        agent.note_sync(Ok(()));
        backoff = Duration::from_millis(200);
        if *agent.view() != view {
            agent.publish(view.clone());
        }
        agent.set_ready();
        let mut stream = match store.watch(view.revision + 1).await {
            Ok(s) => s,
            Err(e) => {
                agent.note_kv(Err(e.to_string()));
                agent.note_sync(Err(format!("watching: {e}")));
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let relist = tokio::time::sleep(agent.settings().resync_interval * 6);
        tokio::pin!(relist);
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        agent.note_sync(Ok(()));
                        let change = view.apply(&ev);
                        if !change.is_none() {
                            agent.publish_change(view.clone(), &change);
                        }
                    }
                    Some(Err(KvError::Compacted { .. })) | None => break,
                    Some(Err(e)) => {
                        // Backends resume by themselves; an error here is reported and we
                        // start over from a fresh listing.
                        agent.note_kv(Err(e.to_string()));
                        agent.note_sync(Err(format!("watching: {e}")));
                        tracing::warn!(error = %e, "watch failed; relisting");
                        tokio::time::sleep(backoff).await;
                        break;
                    }
                },
                _ = &mut relist => break,
            }
        }
    }
}

/// Probes the KV every second and records the outcome for `status`.
pub async fn probe_health(agent: Arc<Agent>) {
    let store = agent.store().clone();
    loop {
        let outcome = tokio::time::timeout(Duration::from_secs(3), store.health()).await;
        let outcome = match outcome {
            Ok(Ok(head)) => {
                agent.note_head(head);
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "KV store {} did not answer within 3s",
                store.describe()
            )),
        };
        if outcome.is_err() {
            Counters::add(&agent.counters().kv_probe_failures, 1);
        }
        agent.note_kv(outcome);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether a store error means the lease is gone.
pub(crate) fn lease_lost(e: &StoreError) -> bool {
    matches!(e, StoreError::Kv(KvError::LeaseNotFound(_)))
}
