//! Keeps the agent's view of the cluster current: list, then watch from the listing's
//! revision; relist after a compaction or an error, and relist periodically anyway (level
//! triggered: the datapath never depends on having seen every event). The periodic relist
//! runs next to the watch, so events keep being applied while a large cluster is listed.
//! Also probes KV health.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use ovl_core::{ClusterView, StoreError};
use ovl_kv::{KvError, WatchEvent};

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
        let period = agent.settings().resync_interval * 6;
        let relist = tokio::time::sleep(period);
        tokio::pin!(relist);
        let mut listing: Option<Relist> = None;
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        agent.note_event();
                        let change = view.apply(&ev);
                        if !change.is_none() {
                            agent.publish_change(view.clone(), &change);
                        }
                        if let Some(l) = &mut listing {
                            l.since.push(ev);
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
                _ = &mut relist, if listing.is_none() => {
                    let store = store.clone();
                    listing = Some(Relist {
                        started: std::time::Instant::now(),
                        read: async move { store.view().await }.boxed(),
                        since: Vec::new(),
                    });
                }
                fresh = async { (&mut listing.as_mut().expect("a listing").read).await },
                    if listing.is_some() =>
                {
                    let l = listing.take().expect("a listing");
                    match fresh {
                        Ok(fresh) => {
                            agent.note_list(l.started.elapsed());
                            agent.note_kv(Ok(()));
                            agent.note_sync(Ok(()));
                            view = merge(view, fresh, &l.since, &agent);
                        }
                        Err(e) => {
                            // The watch still runs: the view stays current through it; the
                            // next period tries again.
                            agent.note_kv(Err(e.to_string()));
                            agent.note_sync(Err(format!("listing: {e}")));
                            tracing::warn!(error = %e, "periodic listing failed");
                        }
                    }
                    relist.as_mut().reset(tokio::time::Instant::now() + period);
                }
            }
        }
    }
}

/// A periodic listing in flight, and the watch events that arrived since it started.
struct Relist {
    started: std::time::Instant,
    read: BoxFuture<'static, Result<ClusterView, StoreError>>,
    since: Vec<WatchEvent>,
}

/// The view after a periodic listing: the listing, plus the events the watch delivered
/// after the listing's snapshot. Published with a wake only if it differs from what the
/// watch had built (an event was missed); otherwise swapped in quietly.
fn merge(
    current: ClusterView,
    mut fresh: ClusterView,
    since: &[WatchEvent],
    agent: &Agent,
) -> ClusterView {
    let at = fresh.revision;
    for ev in since.iter().filter(|ev| ev.revision() > at) {
        fresh.apply(ev);
    }
    fresh.revision = fresh.revision.max(current.revision);
    if !fresh.same_records(&current) {
        tracing::info!(revision = at, "a periodic listing corrected the view");
        agent.publish(fresh.clone());
    } else if fresh.revision != current.revision {
        agent.publish_change(fresh.clone(), &ovl_core::Change::None);
    }
    fresh
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
