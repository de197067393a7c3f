//! One pass of each level-triggered loop (the loops themselves are in `tasks`): the
//! datapath, the gateway bridge, and names.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::Agent;
use crate::{counters::Counters, error::Result};

impl Agent {
    /// One full reconciliation pass: endpoint records checked against what this host knows
    /// (and repaired), then the datapath, container ends included; returns the number of
    /// datapath operations applied.
    pub async fn reconcile_once(&self) -> Result<usize> {
        self.reconcile_pass(true).await
    }

    /// One reconciliation pass; without `containers`, the local endpoints' container ends
    /// are left as they are and not looked at (the pass after a change: its cost follows
    /// the change, not the number of containers here).
    pub async fn reconcile_pass(&self, containers: bool) -> Result<usize> {
        let view = self.view();
        self.finish_detaches().await;
        self.check_records(&view).await;
        let done = self
            .rec
            .pass(&view, &self.me(), || self.here(&view), containers)
            .await?;
        self.record_ifnames(&done.endpoints);
        let c = &self.counters;
        Counters::add(&c.reconcile_passes, 1);
        Counters::add(&c.ops_applied, done.applied as u64);
        Counters::add(&c.ops_failed, done.failed.len() as u64);
        for f in &done.failed {
            tracing::warn!(failure = %f, "datapath operation failed; retrying on the next pass");
        }
        Ok(done.applied)
    }

    /// Records the container-side names a pass found (dockerd names a Docker endpoint's
    /// interface itself), so a container end deleted later is restored under its name.
    fn record_ifnames(&self, statuses: &BTreeMap<(String, String), ovl_model::EndpointStatus>) {
        for ((net, id), st) in statuses {
            if let ovl_model::EndpointStatus::Ok { ifname } = st
                && let Some(mut a) = self.local.get(net, id)
                && &a.ifname != ifname
            {
                tracing::info!(network = %net, endpoint = %id, ifname = %ifname, "recording the container's interface name");
                a.ifname = ifname.clone();
                if let Err(e) = self.local.insert(a) {
                    tracing::warn!(network = %net, endpoint = %id, error = %e, "recording the container's interface name; next pass retries");
                }
            }
        }
    }

    /// Repairs the gateway bridge, the DNS address and their firewall rules if something
    /// changed them, and reads the DNS guard's drop counter.
    pub async fn reconcile_gateway(&self) {
        let _g = self.rec.lock().await;
        self.read_dns_drops().await;
        // Only from a view read from the KV: an empty one at start would shut every host out.
        if self.view_ready() {
            let vteps = self.view().hosts.values().map(|h| h.vtep).collect();
            match self.gw.admit(vteps).await {
                Ok(true) => {
                    tracing::info!("VXLAN admitted from the cluster's hosts only (list updated)")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "updating VXLAN admission"),
            }
        }
        match self.gw.vxlan_refused().await {
            Ok(Some(n)) => self
                .counters
                .vxlan_refused
                .store(n, std::sync::atomic::Ordering::Relaxed),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading the VXLAN admission counter"),
        }
        match self.gw.repair().await {
            Ok(true) => tracing::info!("gateway bridge or firewall rules repaired"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "gateway reconcile failed"),
        }
    }

    /// Reads what the DNS guard dropped into the agent's counter.
    pub async fn read_dns_drops(&self) {
        match self.gw.dns_dropped().await {
            Ok(Some(n)) => {
                self.counters
                    .dns_dropped
                    .store(n, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading the DNS guard counter"),
        }
    }

    /// One liveness pass: probes the VTEPs of hosts without a lease and asks for a
    /// reconcile pass when the set of hosts whose entries are kept changes.
    pub async fn probe_hosts(&self) {
        let view = self.view();
        let (before, targets) = {
            let mut l = self.liveness.lock().expect("liveness lock");
            l.observe(&view, Instant::now());
            (
                l.grace(&view, Instant::now()),
                l.to_probe(&view, &self.settings.host_id),
            )
        };
        let port = self.settings.vxlan_port;
        let results = futures::future::join_all(
            targets
                .iter()
                .map(|(h, vtep)| async move { (h.clone(), self.probe.probe(*vtep, port).await) }),
        )
        .await;
        let after: BTreeSet<String> = {
            let mut l = self.liveness.lock().expect("liveness lock");
            let now = Instant::now();
            for (h, p) in &results {
                l.record(h, *p, now);
            }
            l.grace(&view, now)
        };
        if before != after {
            for h in after.difference(&before) {
                tracing::info!(host = %h, "agent down, datapath answering: keeping its entries");
            }
            for h in before.difference(&after) {
                if view.is_alive(h) {
                    continue;
                }
                tracing::warn!(host = %h, "host gone (its VTEP stopped answering): dropping its entries");
            }
            self.kick();
        }
    }

    /// One names pass over the current view and local attachments.
    pub async fn sync_names(&self) {
        let _g = self.names_pass.lock().await;
        let view = self.view();
        let local = self.local.all();
        self.names.sync(&view, &local).await;
    }

    /// Swaps the DNS zone for the current view's at once (the names loop does it on every
    /// view change, before its debounced pass).
    pub fn refresh_zone(&self) {
        self.names.refresh_zone(&self.view(), &self.local.all());
    }
}
