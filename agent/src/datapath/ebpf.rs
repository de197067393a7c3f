//! The eBPF datapath behind the [`Datapath`] seam: `ovl-dp-ebpf`'s backend.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ovl_dp_ebpf::{BackendConfig, EbpfBackend};
use ovl_model::{Attached, Desired, EndpointSpec, EndpointStatus, NetworkSpec};

use super::{
    Converged, Datapath, Details, DpResult, OpFailure, Report, Switched, endpoint_lines,
    record_statuses,
};

/// tc programs + one collect-metadata vxlan device.
pub struct EbpfAdapter {
    backend: EbpfBackend,
    switched: Option<Switched>,
    last: Mutex<BTreeMap<(String, String), EndpointStatus>>,
}

impl EbpfAdapter {
    /// Loads or adopts the eBPF datapath (the caller has probed the host); the error says
    /// exactly why it cannot run here.
    pub async fn open(
        cfg: BackendConfig,
        switched: Option<Switched>,
    ) -> Result<Self, ovl_dp_ebpf::Error> {
        // Loading is blocking work (BPF system calls, the verifier).
        let backend = tokio::task::spawn_blocking(move || EbpfBackend::load(cfg))
            .await
            .map_err(|e| ovl_dp_ebpf::Error::InvalidInput(format!("loading task: {e}")))??;
        Ok(EbpfAdapter {
            backend,
            switched,
            last: Mutex::default(),
        })
    }
}

#[async_trait::async_trait]
impl Datapath for EbpfAdapter {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    async fn converge(&self, desired: &Desired) -> DpResult<Converged> {
        let mut pass = self.backend.converge(desired).await?;
        {
            let mut last = self.last.lock().expect("status lock");
            pass.endpoints = record_statuses(&mut last, std::mem::take(&mut pass.endpoints));
        }
        Ok(Converged {
            applied: pass.applied,
            failed: pass
                .failed
                .into_iter()
                .map(|(op, e)| OpFailure {
                    op,
                    error: e.into(),
                })
                .collect(),
            endpoints: pass.endpoints,
        })
    }

    async fn report(&self, desired: &Desired) -> DpResult<Report> {
        let r = self.backend.report(desired).await?;
        let mut out = Report {
            endpoints: r.endpoints,
            ..Report::default()
        };
        for (name, (actual, diff)) in r.networks {
            let n = out.networks.entry(name).or_default();
            n.actual = actual;
            n.diff = diff;
        }
        endpoint_lines(&out.endpoints, &mut out.networks);
        Ok(out)
    }

    async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> DpResult<Attached> {
        Ok(self.backend.attach(spec, ep).await?)
    }

    async fn detach(&self, network: &str, endpoint_id: &str) -> DpResult<()> {
        Ok(self.backend.detach(network, endpoint_id).await?)
    }

    fn endpoint_status(&self) -> BTreeMap<(String, String), EndpointStatus> {
        self.last.lock().expect("status lock").clone()
    }

    async fn details(&self) -> Details {
        Details::Ebpf {
            details: Box::new(self.backend.details().await),
            switched: self.switched.clone(),
            encrypted: None,
        }
    }
}
