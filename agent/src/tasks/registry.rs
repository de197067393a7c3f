//! The host registry: this host's record (kept) and its liveness record (on a lease).
//!
//! The loop is level-triggered: whatever happened (KV outage, lease expired while the KV was
//! away, record deleted by hand) it brings back the host record and a live lease holding the
//! liveness record. The lease is not revoked on shutdown: a restarting agent should not make
//! its peers tear down entries towards this host.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ovl_core::{AliveRecord, HostRecord, StoreError};
use ovl_kv::LeaseId;

use super::sync::lease_lost;
use crate::agent::Agent;

/// Runs the registry loop until the task is dropped.
pub async fn run(agent: Arc<Agent>) {
    let s = agent.settings();
    let alive = AliveRecord {
        id: s.host_id.clone(),
        boot_id: format!("{:016x}", rand::random::<u64>()),
        since: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let ttl = s.lease_ttl;
    let renew = ttl / 3;
    let mut lease: Option<LeaseId> = None;
    let mut published: Option<String> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        let host = agent.host_record();
        match step(&agent, host, &alive, ttl, &mut lease, &mut published).await {
            Ok(()) => {
                agent.set_registered(true);
                backoff = Duration::from_millis(250);
                tokio::time::sleep(renew).await;
            }
            Err(e) => {
                agent.set_registered(false);
                if lease_lost(&e) {
                    tracing::warn!("lease expired; registering again");
                    lease = None;
                    agent.set_lease(None);
                    continue;
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "host registration failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3).min(renew));
            }
        }
    }
}

/// One registration step. `published` is the WireGuard key this process last wrote: a
/// record found without it was changed by an operator, who revoked the key (see
/// `Agent::key_removed`); a record found missing altogether is restored as it was.
async fn step(
    agent: &Agent,
    mut host: HostRecord,
    alive: &AliveRecord,
    ttl: Duration,
    lease: &mut Option<LeaseId>,
    published: &mut Option<String>,
) -> Result<(), StoreError> {
    let store = agent.store();
    match *lease {
        Some(id) => {
            store.keep_alive(id).await?;
            let current = store.host(&host.id).await?;
            if let (Some(cur), Some(key)) = (&current, published.as_deref())
                && cur.wg.is_none()
                && host.wg.as_ref().is_some_and(|w| w.public_key == key)
                && agent.key_removed(key)
            {
                host = agent.host_record();
            }
            // Level-triggered: restore either record if it went missing or changed.
            if current.as_ref() != Some(&host) {
                store.put_host(&host).await?;
            }
            if store.alive(&host.id).await?.is_none() {
                store.put_alive(alive, id).await?;
            }
        }
        None => {
            let id = store.grant_lease(ttl).await?;
            store.put_host(&host).await?;
            store.put_alive(alive, id).await?;
            *lease = Some(id);
            agent.set_lease(*lease);
            tracing::info!(host = %host.id, vtep = %host.vtep, lease = format!("{id:x}"), "registered");
        }
    }
    *published = host.wg.map(|w| w.public_key);
    Ok(())
}
