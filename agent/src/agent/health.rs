//! The health matrix verbs (see [`crate::health`]): the health namespace becoming ready, one
//! probe round with its row written when it changed, and what `doctor` reads.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use ovl_core::HealthRow;
use ovl_kv::LeaseId;

use super::Agent;
use crate::health::{self, Answer, Tracker};

/// What the health loop keeps between rounds.
#[derive(Debug, Default)]
pub struct HealthLoop {
    tracker: Tracker,
    /// The row last written, and on which lease.
    published: Option<(LeaseId, HealthRow)>,
}

impl Agent {
    /// Records the liveness lease the registry holds.
    pub fn set_lease(&self, lease: Option<LeaseId>) {
        *self.lease.lock().expect("lease lock") = lease;
    }

    /// Makes (or finds) the health namespace; once it exists, the reconciler programs the
    /// health endpoint in it.
    pub async fn prepare_health(&self) -> std::result::Result<(), String> {
        let netns = self.health_probe.prepare().await?;
        self.health_ready(netns);
        Ok(())
    }

    /// The health namespace exists: from now on the reconciler programs the health
    /// endpoint in it (a pass is asked for at once).
    pub fn health_ready(&self, netns: PathBuf) {
        if self.health_ns.set(netns).is_ok() {
            self.kick();
        }
    }

    /// One probe round to every other reachable host's health endpoint; the row is written
    /// when a peer's state flipped, its clock offset moved by more than
    /// [`health::SKEW_STEP_MS`], or the lease changed.
    pub async fn health_round(&self, state: &mut HealthLoop) {
        if self.health_ns.get().is_none() {
            return;
        }
        let view = self.view();
        let here = self.here(&view);
        let me = &self.settings.host_id;
        let (addrs, _) = health::addresses(&view);
        let targets: BTreeMap<&String, std::net::Ipv4Addr> = addrs
            .iter()
            .filter(|(id, _)| *id != me && (view.is_alive(id) || here.grace.contains(id.as_str())))
            .map(|(id, ip)| (id, *ip))
            .collect();
        let answers = match self
            .health_probe
            .round(targets.values().copied().collect())
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "health round");
                return;
            }
        };
        let round: BTreeMap<String, Answer> = targets
            .iter()
            .map(|(id, ip)| ((*id).clone(), answers.get(ip).copied()))
            .collect();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        state.tracker.observe(&round, now);
        let Some(lease) = *self.lease.lock().expect("lease lock") else {
            return;
        };
        let row = state.tracker.row(me);
        if state
            .published
            .as_ref()
            .is_some_and(|(l, r)| *l == lease && *r == row)
        {
            return;
        }
        for (peer, cell) in &row.peers {
            let was = state
                .published
                .as_ref()
                .and_then(|(_, r)| r.peers.get(peer))
                .map(|c| c.ok);
            if was != Some(cell.ok) {
                if cell.ok {
                    tracing::info!(peer = %peer, "health probes to peer answered");
                } else {
                    tracing::warn!(peer = %peer, "health probes to peer unanswered: VXLAN between the two hosts does not flow");
                }
            }
        }
        match self.store.put_health(&row, lease).await {
            Ok(()) => state.published = Some((lease, row)),
            Err(e) => tracing::debug!(error = %e, "writing the health row; next round retries"),
        }
    }

    /// `GET /v1/health`: every host's row of the health matrix.
    pub async fn health_matrix(&self) -> crate::error::Result<Vec<HealthRow>> {
        Ok(self.store.health_rows().await?)
    }

    /// Whether the health endpoint is programmed here (the namespace exists).
    pub fn health_enabled(&self) -> bool {
        self.health_ns.get().is_some()
    }
}
