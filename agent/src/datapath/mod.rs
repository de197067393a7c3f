//! The agent's view of a datapath: converge to a desired state, report the difference, plumb
//! and unplumb endpoints. Two implementations: [`kernel`] (bridge + vxlan per network, the
//! default) and [`ebpf`] (tc programs + one collect-metadata vxlan device). Both put standard
//! VXLAN on the wire, so hosts in different modes share networks.

pub mod ebpf;
pub mod kernel;

use std::{collections::BTreeMap, sync::Arc};

use ovl_datapath::{Attached, Desired, EndpointSpec, NetworkSpec};

use crate::{
    config::{DatapathMode, Settings},
    error::{AgentError, Result},
};

/// What one network looks like on this host, for `overlayctl peers`.
#[derive(Debug, Clone, Default)]
pub struct NetReport {
    /// Programmed entries, one per line.
    pub actual: Vec<String>,
    /// Operations that would converge it (empty: converged).
    pub diff: Vec<String>,
}

/// Outcome of one convergence pass.
#[derive(Debug, Clone, Default)]
pub struct Converged {
    /// Operations applied.
    pub applied: usize,
    /// Operations that failed, with their errors (retried on the next pass).
    pub failed: Vec<String>,
}

/// A datapath the reconciler drives.
#[async_trait::async_trait]
pub trait Datapath: Send + Sync {
    /// `kernel` or `ebpf`.
    fn mode(&self) -> &'static str;

    /// Brings what is programmed to `desired` (observe, plan, apply).
    async fn converge(&self, desired: &Desired) -> Result<Converged>;

    /// What is programmed per network and what a pass would change.
    async fn report(&self, desired: &Desired) -> Result<BTreeMap<String, NetReport>>;

    /// Plumbs an endpoint into its container namespace (idempotent).
    async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached>;

    /// Removes an endpoint's interfaces (idempotent).
    async fn detach(&self, network: &str, endpoint_id: &str) -> Result<()>;

    /// For the Docker plugin: creates the endpoint's veth pair but leaves the container end,
    /// named `ep.ifname`, in the agent's namespace for Docker to move into the sandbox.
    async fn attach_unplugged(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> Result<Attached> {
        let _ = (spec, ep);
        Err(AgentError::Invalid(format!(
            "the {} datapath does not support Docker endpoints yet",
            self.mode()
        )))
    }

    /// Announces newly programmed remote peers to the local containers of `network`
    /// (gratuitous ARP), so an ARP request that raced their entries resolves at once.
    async fn announce(
        &self,
        network: &str,
        peers: &[(std::net::Ipv4Addr, ovl_datapath::MacAddr)],
    ) -> Result<()> {
        let _ = (network, peers);
        Ok(())
    }

    /// Details and counters for `overlayctl datapath`.
    async fn details(&self) -> serde_json::Value;
}

/// Opens the configured datapath. With `--datapath ebpf`, a host that cannot run BPF gets a
/// precise reason; with `--datapath-fallback` it then runs the kernel path instead.
pub async fn open(settings: &Settings) -> Result<Arc<dyn Datapath>> {
    let kernel = || -> Result<Arc<dyn Datapath>> {
        Ok(Arc::new(kernel::KernelBackend::new(
            settings.run_dir.join("dp"),
        )?))
    };
    match settings.datapath {
        DatapathMode::Kernel => kernel(),
        DatapathMode::Ebpf => match ebpf::EbpfBackend::open(settings).await {
            Ok(b) => Ok(Arc::new(b)),
            Err(reason) if settings.datapath_fallback => {
                tracing::error!(%reason, "eBPF datapath unavailable; falling back to the kernel datapath");
                kernel()
            }
            Err(reason) => Err(AgentError::Datapath(format!(
                "eBPF datapath unavailable: {reason} (use --datapath kernel, or --datapath-fallback)"
            ))),
        },
    }
}
