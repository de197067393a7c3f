//! The kernel datapath behind the [`Datapath`] seam: `ovl-dp-kernel`'s observe, plan and
//! apply.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use ovl_dp_kernel::{KernelDatapath, Observed, Op};
use ovl_model::{Attached, Desired, EndpointSpec, EndpointStatus, MacAddr, NetworkSpec};
use ovl_netlink::HostMounts;
use serde::Serialize;

use super::{
    Converged, Datapath, Details, DpResult, OpFailure, Report, Switched, endpoint_lines,
    record_statuses,
};

/// Bridge + vxlan sandboxes, one per network.
pub struct KernelBackend {
    dp: KernelDatapath,
    switched: Option<Switched>,
    last: Mutex<BTreeMap<(String, String), EndpointStatus>>,
}

/// `overlayctl datapath` on the kernel datapath.
#[derive(Debug, Clone, Serialize)]
pub struct KernelDetails {
    /// `kernel`.
    pub mode: &'static str,
    /// The mount namespace holding the sandboxes.
    pub mounts: String,
    /// What is programmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
    /// Why it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it removed of the eBPF datapath when it started, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switched: Option<Switched>,
    /// Frames from containers with another MAC, IPv4 source or ARP sender than their
    /// endpoint's, dropped since the agent started.
    pub spoofed_dropped: u64,
}

impl KernelBackend {
    /// Opens (and adopts) the datapath under `run_dir`, its sandboxes mounted in `mounts`.
    pub fn new(run_dir: PathBuf, mounts: HostMounts, switched: Option<Switched>) -> DpResult<Self> {
        Ok(KernelBackend {
            dp: KernelDatapath::new(run_dir, None, mounts)?,
            switched,
            last: Mutex::default(),
        })
    }
}

/// Lines describing what is programmed for one network.
fn actual_lines(o: &ovl_dp_kernel::ObservedNetwork) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(vx) = &o.vxlan {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        out.push(format!(
            "vxlan vni {} local {} mtu {}",
            opt(vx.vni.map(|v| v.to_string())),
            opt(vx.local.map(|v| v.to_string())),
            vx.mtu
        ));
    }
    for (id, ep) in &o.endpoints {
        out.push(format!("local {id} ({})", ep.host_ifname));
    }
    for (mac, dst) in &o.fdb {
        out.push(format!("fdb {mac} dst {dst}"));
    }
    for n in &o.neigh {
        let mac = n.mac.map(|m| m.to_string()).unwrap_or_else(|| "?".into());
        out.push(format!(
            "neigh {} lladdr {mac}{}",
            n.ip,
            if n.permanent { "" } else { " (not permanent)" }
        ));
    }
    for f in &o.flood {
        out.push(format!("flood {f}"));
    }
    out
}

fn touches_endpoint(op: &Op) -> Option<(String, String)> {
    match op {
        Op::PlugEndpoint { net, ep, .. }
        | Op::ReplugEndpoint { net, ep, .. }
        | Op::ConfigureEndpoint { net, ep, .. } => Some((net.name.clone(), ep.endpoint_id.clone())),
        _ => None,
    }
}

#[async_trait::async_trait]
impl Datapath for KernelBackend {
    fn mode(&self) -> &'static str {
        "kernel"
    }

    async fn converge(&self, desired: &Desired) -> DpResult<Converged> {
        let mut have = self.dp.observe_with(desired).await?;
        let ops = ovl_dp_kernel::plan(desired, &have);
        let mut out = Converged::default();
        if !ops.is_empty() {
            for op in &ops {
                tracing::debug!(%op, "applying");
            }
            let report = self.dp.apply(&ops).await;
            out.applied = report.applied.len();
            let repaired = ops.iter().any(|o| touches_endpoint(o).is_some());
            let mut failed_eps = BTreeMap::new();
            for (op, e) in report.failed {
                if let Some(key) = touches_endpoint(&op) {
                    failed_eps.insert(key, e.to_string());
                }
                out.failed.push(OpFailure {
                    op: op.to_string(),
                    error: e.into(),
                });
            }
            if repaired {
                have = self.dp.observe_with(desired).await?;
            }
            out.endpoints = ovl_dp_kernel::statuses(desired, &have);
            for (key, error) in failed_eps {
                out.endpoints.insert(key, EndpointStatus::Failed { error });
            }
        } else {
            out.endpoints = ovl_dp_kernel::statuses(desired, &have);
        }
        // Level-triggered like the rest: a table removed by hand comes back.
        for net in desired.networks.keys() {
            if let Err(e) = self.dp.guard(net).await {
                out.failed.push(OpFailure {
                    op: format!("guard the ports of {net}"),
                    error: e.into(),
                });
            }
        }
        {
            let mut last = self.last.lock().expect("status lock");
            out.endpoints = record_statuses(&mut last, std::mem::take(&mut out.endpoints));
        }
        Ok(out)
    }

    async fn report(&self, desired: &Desired) -> DpResult<Report> {
        let have = self.dp.observe_with(desired).await?;
        let ops = ovl_dp_kernel::plan(desired, &have);
        let mut out = Report::default();
        for (name, o) in &have.networks {
            out.networks.entry(name.clone()).or_default().actual = actual_lines(o);
        }
        for op in &ops {
            out.networks
                .entry(op.network().to_string())
                .or_default()
                .diff
                .push(op.to_string());
        }
        out.endpoints = ovl_dp_kernel::statuses(desired, &have);
        endpoint_lines(&out.endpoints, &mut out.networks);
        Ok(out)
    }

    async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> DpResult<Attached> {
        Ok(self.dp.attach(spec, ep).await?)
    }

    async fn detach(&self, network: &str, endpoint_id: &str) -> DpResult<()> {
        Ok(self.dp.detach(network, endpoint_id).await?)
    }

    async fn announce(
        &self,
        network: &str,
        peers: &[(std::net::Ipv4Addr, MacAddr)],
    ) -> DpResult<()> {
        let sandbox = self.dp.sandbox_path(network);
        let peers = peers.to_vec();
        tokio::task::spawn_blocking(move || {
            ovl_netlink::garp::announce(&sandbox, ovl_dp_kernel::BRIDGE_NAME, &peers)
        })
        .await??;
        Ok(())
    }

    fn endpoint_status(&self) -> BTreeMap<(String, String), EndpointStatus> {
        self.last.lock().expect("status lock").clone()
    }

    async fn details(&self) -> Details {
        let (observed, error) = match self.dp.observe().await {
            Ok(o) => (Some(o), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Details::Kernel(KernelDetails {
            mode: "kernel",
            mounts: self.dp.mounts().describe(),
            observed,
            error,
            switched: self.switched.clone(),
            spoofed_dropped: self.dp.spoofed().await,
        })
    }
}
