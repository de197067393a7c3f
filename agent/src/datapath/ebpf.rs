//! The eBPF datapath behind the [`Datapath`] seam: `ovl-dp-ebpf`'s backend.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use ovl_dp_ebpf::{BackendConfig, DropReader, EbpfBackend};
use ovl_model::{Attached, Desired, EndpointSpec, EndpointStatus, NetworkSpec};
use tokio::{io::unix::AsyncFd, sync::broadcast};

use super::{
    Converged, Datapath, Details, DpResult, DroppedFrame, OpFailure, Report, Switched,
    endpoint_lines, record_statuses,
};

/// tc programs + one collect-metadata vxlan device.
pub struct EbpfAdapter {
    backend: EbpfBackend,
    switched: Option<Switched>,
    last: Mutex<BTreeMap<(String, String), EndpointStatus>>,
    pin_dir: PathBuf,
    /// The drop ring's reader, started by the first subscriber.
    drops: Mutex<Option<broadcast::Sender<DroppedFrame>>>,
}

impl EbpfAdapter {
    /// Loads or adopts the eBPF datapath (the caller has probed the host); the error says
    /// exactly why it cannot run here.
    pub async fn open(
        cfg: BackendConfig,
        switched: Option<Switched>,
    ) -> Result<Self, ovl_dp_ebpf::Error> {
        let pin_dir = EbpfBackend::pin_dir(&cfg.run_dir);
        // Loading is blocking work (BPF system calls, the verifier).
        let backend = tokio::task::spawn_blocking(move || EbpfBackend::load(cfg))
            .await
            .map_err(|e| ovl_dp_ebpf::Error::InvalidInput(format!("loading task: {e}")))??;
        Ok(EbpfAdapter {
            backend,
            switched,
            last: Mutex::default(),
            pin_dir,
            drops: Mutex::new(None),
        })
    }

    /// Opens the drop ring and forwards its records to `tx` until the agent exits. Records
    /// written while nobody read are old news: they are discarded first.
    fn start_drops(&self, tx: broadcast::Sender<DroppedFrame>) -> std::io::Result<()> {
        let mut reader = DropReader::open(&self.pin_dir).map_err(std::io::Error::other)?;
        let stale = reader.drain().len();
        if stale > 0 {
            tracing::debug!(stale, "drop records from before the first reader discarded");
        }
        // SAFETY: the reader owns the ring's descriptor and returns that same one for as
        // long as it lives, which is as long as the AsyncFd owning it.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)?;
        tokio::spawn(async move {
            loop {
                let mut guard = match fd.readable_mut().await {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the drop ring; monitor --drops stops");
                        return;
                    }
                };
                let events = guard.get_inner_mut().drain();
                guard.clear_ready();
                for e in events {
                    // No subscriber left is fine: the next one gets what follows.
                    let _ = tx.send(e);
                }
            }
        });
        Ok(())
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

    fn drops(&self) -> Option<broadcast::Receiver<DroppedFrame>> {
        let mut started = self.drops.lock().expect("drops lock");
        if let Some(tx) = started.as_ref() {
            return Some(tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(4096);
        match self.start_drops(tx.clone()) {
            Ok(()) => {
                *started = Some(tx);
                Some(rx)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the drop ring");
                None
            }
        }
    }

    async fn details(&self) -> Details {
        Details::Ebpf {
            details: Box::new(self.backend.details().await),
            switched: self.switched.clone(),
            encrypted: None,
        }
    }
}
