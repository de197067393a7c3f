//! The kernel datapath behind the [`Datapath`] seam: `ovl-datapath`'s observe, plan and apply.

use std::{collections::BTreeMap, path::PathBuf};

use ovl_datapath::{Attached, Desired, EndpointSpec, KernelDatapath, NetworkSpec, Observed, Op};

use super::{Converged, Datapath, NetReport};
use crate::error::{AgentError, Result};

fn dp_err(e: ovl_datapath::Error) -> AgentError {
    match e {
        ovl_datapath::Error::InvalidInput(m) => AgentError::Invalid(m),
        ovl_datapath::Error::Conflict(m) => AgentError::Conflict(m),
        ovl_datapath::Error::NotFound(m) => AgentError::Invalid(m),
        other => AgentError::Datapath(other.to_string()),
    }
}

/// Bridge + vxlan sandboxes, one per network.
pub struct KernelBackend {
    /// The underlying datapath.
    pub dp: KernelDatapath,
}

impl KernelBackend {
    /// Opens (and adopts) the datapath under `run_dir`.
    pub fn new(run_dir: PathBuf) -> Result<Self> {
        Ok(KernelBackend {
            dp: KernelDatapath::new(run_dir, None).map_err(dp_err)?,
        })
    }

    async fn observe_and_plan(&self, desired: &Desired) -> Result<(Observed, Vec<Op>)> {
        let have = self.dp.observe().await.map_err(dp_err)?;
        let ops = ovl_datapath::plan(desired, &have);
        Ok((have, ops))
    }
}

/// Lines describing what is programmed for one network.
fn actual_lines(o: &ovl_datapath::ObservedNetwork) -> Vec<String> {
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

#[async_trait::async_trait]
impl Datapath for KernelBackend {
    fn mode(&self) -> &'static str {
        "kernel"
    }

    async fn converge(&self, desired: &Desired) -> Result<Converged> {
        let (_, ops) = self.observe_and_plan(desired).await?;
        if ops.is_empty() {
            return Ok(Converged::default());
        }
        for op in &ops {
            tracing::debug!(%op, "applying");
        }
        let report = self.dp.apply(&ops).await;
        Ok(Converged {
            applied: report.applied.len(),
            failed: report
                .failed
                .iter()
                .map(|(op, e)| format!("{op}: {e}"))
                .collect(),
        })
    }

    async fn report(&self, desired: &Desired) -> Result<BTreeMap<String, NetReport>> {
        let (have, ops) = self.observe_and_plan(desired).await?;
        let mut out: BTreeMap<String, NetReport> = BTreeMap::new();
        for (name, o) in &have.networks {
            out.entry(name.clone()).or_default().actual = actual_lines(o);
        }
        for op in &ops {
            out.entry(op.network().to_string())
                .or_default()
                .diff
                .push(op.to_string());
        }
        Ok(out)
    }

    async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        self.dp.ensure_network(spec).await.map_err(dp_err)?;
        self.dp.attach(spec, ep).await.map_err(dp_err)
    }

    async fn attach_unplugged(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        self.dp.attach_unplugged(spec, ep).await.map_err(dp_err)
    }

    async fn detach(&self, network: &str, endpoint_id: &str) -> Result<()> {
        self.dp.detach(network, endpoint_id).await.map_err(dp_err)
    }

    async fn announce(
        &self,
        network: &str,
        peers: &[(std::net::Ipv4Addr, ovl_datapath::MacAddr)],
    ) -> Result<()> {
        let sandbox = self.dp.sandbox_path(network);
        let peers = peers.to_vec();
        tokio::task::spawn_blocking(move || ovl_datapath::garp::announce(&sandbox, "br0", &peers))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
            .map_err(dp_err)
    }

    async fn details(&self) -> serde_json::Value {
        match self.dp.observe().await {
            Ok(o) => serde_json::json!({ "mode": "kernel", "observed": o }),
            Err(e) => serde_json::json!({ "mode": "kernel", "error": e.to_string() }),
        }
    }
}
