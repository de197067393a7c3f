//! The reconciler: level-triggered convergence of this host's datapath to the cluster view.
//!
//! [`Reconciler`] owns the datapath: every change to it (a pass, an attach, a detach) runs
//! under its lock, so passes and operations never interleave. A pass reads desired state
//! (from the view, pure: [`desired`]), lets the datapath observe what is programmed, plan
//! the difference and apply it. The loop that runs passes (on view changes, on request, and
//! every resync period, so entries changed by hand are corrected and nothing depends on
//! having seen every event) is `tasks::reconcile`. No pass runs before the first successful
//! listing of the KV: an agent restarting while the KV is down adopts the datapath as it is.

pub mod desired;
pub mod liveness;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use ovl_core::{ClusterView, NetworkRecord};
use ovl_model::{Attached, Desired, EndpointSpec, MacAddr, NetworkSpec};

use crate::{
    datapath::{Converged, Datapath, Report},
    error::{AgentError, Result},
    tunnel::Tunnel,
};
pub use desired::EndpointKey;
use desired::{Here, Me};

/// The datapath and what serialises and remembers changes to it.
pub struct Reconciler {
    dp: Arc<dyn Datapath>,
    /// WireGuard for encrypted networks: brought to the plan before the datapath, so the
    /// routes into the tunnel exist when entries towards it are programmed.
    tunnel: Arc<dyn Tunnel>,
    /// Serialises datapath changes: passes, attaches and detaches never interleave.
    lock: tokio::sync::Mutex<()>,
    /// Local endpoints being attached, counted as desired until they are recorded.
    pending: Mutex<BTreeMap<EndpointKey, NetworkRecord>>,
    /// Peers already announced by gratuitous ARP: (network, address, MAC).
    announced: Mutex<BTreeSet<(String, Ipv4Addr, MacAddr)>>,
}

impl Reconciler {
    /// A reconciler driving `dp`.
    pub fn new(dp: Arc<dyn Datapath>, tunnel: Arc<dyn Tunnel>) -> Self {
        Reconciler {
            dp,
            tunnel,
            lock: tokio::sync::Mutex::new(()),
            pending: Mutex::new(BTreeMap::new()),
            announced: Mutex::new(BTreeSet::new()),
        }
    }

    /// The datapath (read-only uses: mode, details).
    pub fn datapath(&self) -> &dyn Datapath {
        self.dp.as_ref()
    }

    /// Takes the datapath lock, for other changes that must not interleave with a pass (the
    /// gateway interfaces of a container).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Ends the pending state of an endpoint [`Reconciler::plumb`] made, once the caller
    /// recorded it among the host's attachments (which passes take local endpoints from).
    pub fn settled(&self, key: &EndpointKey) {
        self.pending.lock().expect("pending lock").remove(key);
    }

    fn desired(&self, view: &ClusterView, me: &Me<'_>, here: &Here) -> Desired {
        let mut here = here.clone();
        for (k, net) in self.pending.lock().expect("pending lock").iter() {
            here.endpoints
                .entry(k.clone())
                .or_insert_with(|| desired::Local {
                    network: net.clone(),
                    plugged: None,
                });
        }
        desired::desired(view, me, &here)
    }

    /// One pass towards the desired state of `view` given what this host knows, read by
    /// `here` under the lock (an attach that finishes while the pass waits is seen).
    pub async fn pass(
        &self,
        view: &ClusterView,
        me: &Me<'_>,
        here: impl FnOnce() -> Here,
        containers: bool,
    ) -> Result<Converged> {
        let _g = self.lock.lock().await;
        let mut want = self.desired(view, me, &here());
        if !containers {
            // Container ends found fine by an earlier pass are not looked at again; new or
            // broken ones are.
            let fine: BTreeSet<EndpointKey> = self
                .dp
                .endpoint_status()
                .into_iter()
                .filter(|(_, st)| st.is_ok())
                .map(|(k, _)| k)
                .collect();
            want = want.without_container_checks(|net, id| {
                fine.contains(&(net.to_string(), id.to_string()))
            });
        }
        let plan = desired::tunnel(view, me, &want);
        if let Err(e) = self.tunnel.apply(plan.as_ref()).await {
            // The datapath still converges: plain networks do not depend on the tunnel.
            tracing::warn!(error = %e, "WireGuard for encrypted networks; retrying on the next pass");
        }
        let done = self.dp.converge(&want).await?;
        self.announce_new_peers(&want).await;
        Ok(done)
    }

    /// Desired state and, per network, what is programmed and what a pass would change.
    pub async fn report(
        &self,
        view: &ClusterView,
        me: &Me<'_>,
        here: &Here,
    ) -> Result<(Desired, Report)> {
        let want = self.desired(view, me, here);
        let reports = self.dp.report(&want).await?;
        Ok((want, reports))
    }

    /// Plumbs endpoint `key` (the one verb of `overlayctl attach` and Docker's Join; `ep.plug`
    /// says where the container end goes): marks it pending so a concurrent pass keeps it
    /// (until [`Reconciler::settled`]), creates its interfaces, and on failure removes whatever
    /// was made (a cleanup that fails too is returned as [`AgentError::Rollback`]).
    pub async fn plumb(
        &self,
        key: &EndpointKey,
        net: &NetworkRecord,
        spec: &NetworkSpec,
        ep: &EndpointSpec,
    ) -> Result<Attached> {
        self.pending
            .lock()
            .expect("pending lock")
            .insert(key.clone(), net.clone());
        let _g = self.lock.lock().await;
        match self.dp.attach(spec, ep).await {
            Ok(a) => Ok(a),
            Err(e) => {
                self.pending.lock().expect("pending lock").remove(key);
                if let Err(undo) = self.dp.detach(&key.0, &key.1).await {
                    tracing::error!(network = %key.0, endpoint = %key.1, error = %undo,
                        "cleaning up after a failed attach");
                    return Err(AgentError::Rollback {
                        op: format!("attaching {} to {}", key.1, key.0),
                        error: Box::new(e.into()),
                        cleanup: vec![undo.to_string()],
                    });
                }
                Err(e.into())
            }
        }
    }

    /// Takes endpoint `key` out of the datapath: it stops being pending and its interfaces go.
    /// Idempotent. The caller may hold the lock from [`Reconciler::lock`] (`locked`) to do
    /// more under it.
    pub async fn unplumb(&self, key: &EndpointKey) -> Result<()> {
        let _g = self.lock.lock().await;
        self.unplumb_locked(key).await
    }

    /// [`Reconciler::unplumb`] for a caller that holds the lock.
    pub async fn unplumb_locked(&self, key: &EndpointKey) -> Result<()> {
        self.pending.lock().expect("pending lock").remove(key);
        Ok(self.dp.detach(&key.0, &key.1).await?)
    }

    /// Sends one gratuitous ARP per peer that is newly in the desired state (once per peer).
    async fn announce_new_peers(&self, want: &Desired) {
        let now: BTreeSet<(String, Ipv4Addr, MacAddr)> = want
            .networks
            .iter()
            .flat_map(|(n, d)| d.peers.iter().map(move |p| (n.clone(), p.ip, p.mac)))
            .collect();
        let fresh: Vec<_> = {
            let mut seen = self.announced.lock().expect("announced lock");
            let fresh = now.difference(&seen).cloned().collect();
            *seen = now;
            fresh
        };
        let mut by_net: BTreeMap<&str, Vec<(Ipv4Addr, MacAddr)>> = BTreeMap::new();
        for (n, ip, mac) in &fresh {
            by_net.entry(n).or_default().push((*ip, *mac));
        }
        for (net, peers) in by_net {
            if let Err(e) = self.dp.announce(net, &peers).await {
                tracing::debug!(network = net, error = %e, "gratuitous ARP");
            }
        }
    }
}
