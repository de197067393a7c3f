//! Endpoint records against this host's own knowledge. The KV is the cluster's desired
//! state, but for the endpoints living here the host knows better: a record that is missing
//! or names another host, address or MAC is reported and written back, never obeyed by
//! tearing down a live interface (the datapath's desired state takes local endpoints from
//! the attachments, see `reconcile::desired::Here`).

use ovl_core::{ClusterView, EndpointRecord, Repair};

use super::Agent;
use crate::{counters::Counters, local::Attachment};

/// A local endpoint whose record in the view disagrees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suspect {
    /// The endpoint as this host knows it.
    pub mine: EndpointRecord,
    /// The record as the view has it (`None`: missing).
    pub found: Option<EndpointRecord>,
}

impl Suspect {
    /// One line for logs and `overlayctl peers`.
    pub fn describe(&self) -> String {
        let m = &self.mine;
        match &self.found {
            None => format!(
                "record of local endpoint {} ({} {}) is missing from the KV",
                m.id, m.ip, m.mac
            ),
            Some(f) => format!(
                "record of local endpoint {} says host {} {} {}, this host has {} {} {}",
                m.id, f.host, f.ip, f.mac, m.host, m.ip, m.mac
            ),
        }
    }
}

/// Local endpoints whose record in `view` is missing or disagrees on the plumbing. Pure.
pub(crate) fn suspects(local: &[Attachment], view: &ClusterView) -> Vec<Suspect> {
    local
        .iter()
        .filter_map(|a| {
            let key = (a.endpoint.network.clone(), a.endpoint.id.clone());
            let found = view.endpoints.get(&key);
            match found {
                Some(f) if f.same_plumbing(&a.endpoint) => None,
                _ => Some(Suspect {
                    mine: a.endpoint.clone(),
                    found: found.cloned(),
                }),
            }
        })
        .collect()
}

impl Agent {
    /// Forgets a finished (or abandoned) detach; a failure to save is logged: the next pass
    /// finds the record gone and tries again.
    pub(super) fn end_detach(&self, net: &str, id: &str) {
        if let Err(e) = self.local.end_detach(net, id) {
            tracing::warn!(network = %net, endpoint = %id, error = %e, "forgetting a finished detach");
        }
    }

    /// Finishes detaches whose interface went but whose record stayed (the KV failed half
    /// way, or the agent died): the record is deleted if it still names this host. A detach
    /// that never got to the interface (the endpoint is still attached) is forgotten.
    pub(super) async fn finish_detaches(&self) {
        for (net, id) in self.local.detaching() {
            let _g = self.rec.lock().await;
            if self.local.get(&net, &id).is_some() {
                self.end_detach(&net, &id);
                continue;
            }
            let done = match self.store.endpoint(&net, &id).await {
                // While the record exists no other host can take its key: deleting it
                // after this read deletes this host's record.
                Ok(Some(r)) if r.host == self.settings.host_id => {
                    self.store.delete_endpoint(&net, &id).await.map(|_| {
                        tracing::info!(network = %net, endpoint = %id, "detach finished: record removed");
                        Counters::add(&self.counters.detaches, 1);
                    })
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => self.end_detach(&net, &id),
                Err(e) => {
                    tracing::debug!(network = %net, endpoint = %id, error = %e, "finishing a detach; next pass retries")
                }
            }
        }
    }

    /// Checks the records of local endpoints against the view and repairs those the KV
    /// confirms are wrong (the view may only lag behind a write: the KV is read first).
    pub(super) async fn check_records(&self, view: &ClusterView) {
        if !self.view_ready() {
            return;
        }
        for s in suspects(&self.local.all(), view) {
            let what = s.describe();
            // Under the datapath lock, and only if the endpoint is still attached: a detach
            // removes the attachment under that lock before it deletes the record, so a
            // record it just deleted is never written back.
            let _g = self.rec.lock().await;
            if self
                .local
                .get(&s.mine.network, &s.mine.id)
                .as_ref()
                .map(|a| &a.endpoint)
                != Some(&s.mine)
            {
                continue;
            }
            match self.store.repair_endpoint(&s.mine).await {
                Ok(Repair::Agrees) => {}
                Ok(Repair::Recreated) => {
                    Counters::add(&self.counters.record_conflicts, 1);
                    Counters::add(&self.counters.records_repaired, 1);
                    tracing::warn!(network = %s.mine.network, endpoint = %s.mine.id, conflict = %what, "endpoint record written again");
                }
                Ok(Repair::Rewrote { was }) => {
                    Counters::add(&self.counters.record_conflicts, 1);
                    Counters::add(&self.counters.records_repaired, 1);
                    tracing::warn!(network = %s.mine.network, endpoint = %s.mine.id,
                        found_host = %was.host, found_ip = %was.ip, conflict = %what,
                        "endpoint record contradicted this host; kept the interface and rewrote the record");
                }
                Ok(Repair::AddressTaken { owner }) => {
                    Counters::add(&self.counters.record_conflicts, 1);
                    tracing::error!(network = %s.mine.network, endpoint = %s.mine.id, %owner,
                        "endpoint record missing and its address is now claimed by another endpoint: cannot repair; detach and attach it again");
                }
                Err(e) => {
                    tracing::debug!(network = %s.mine.network, endpoint = %s.mine.id, error = %e, "checking endpoint record");
                }
            }
        }
    }

    /// Conflicts between local endpoints and the view, per network, for `overlayctl peers`.
    pub(super) fn record_conflicts(&self, view: &ClusterView) -> Vec<(String, String)> {
        suspects(&self.local.all(), view)
            .into_iter()
            .map(|s| (s.mine.network.clone(), s.describe()))
            .collect()
    }
}
