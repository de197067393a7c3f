//! The agent's view of a datapath: converge to a desired state, report the difference, plug
//! and unplug endpoints. Two implementations, thin adapters over their crates:
//! [`kernel`] (`ovl-dp-kernel`: bridge + vxlan per network, the default) and [`ebpf`]
//! (`ovl-dp-ebpf`: tc programs + one collect-metadata vxlan device). Both put standard VXLAN
//! on the wire, so hosts in different modes share networks.
//!
//! [`open`] also finds the host's mount namespace (where both keep the mounts that must
//! outlive the agent, `ovl_netlink::host`) and, when a host switches datapath, removes what
//! the other one left (its vxlan devices would collide), so the reconciler plugs the
//! endpoints again on the new one.

pub mod ebpf;
pub mod kernel;
pub mod split;

use std::{collections::BTreeMap, fmt, sync::Arc};

use ovl_model::{Attached, Desired, EndpointSpec, EndpointStatus, ErrorKind, MacAddr, NetworkSpec};
use ovl_netlink::HostMounts;
use serde::Serialize;

use crate::config::{DatapathMode, Settings};

/// A datapath failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The kernel datapath.
    #[error(transparent)]
    Kernel(#[from] ovl_dp_kernel::Error),
    /// The eBPF datapath.
    #[error(transparent)]
    Ebpf(#[from] ovl_dp_ebpf::Error),
    /// The toolkit (namespaces, links), outside either datapath.
    #[error(transparent)]
    Toolkit(#[from] ovl_netlink::Error),
    /// The eBPF datapath cannot run on this host.
    #[error("eBPF datapath unavailable: {0} (use --datapath kernel, or --datapath-fallback)")]
    Unavailable(#[source] ovl_dp_ebpf::Error),
    /// Removing the other datapath's leftovers failed: the new one could not start cleanly.
    #[error("removing the {from} datapath's leftovers: {source}")]
    Switch {
        /// The datapath that left them.
        from: &'static str,
        /// Why.
        #[source]
        source: Box<DatapathError>,
    },
    /// A blocking helper task died.
    #[error("datapath task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl DatapathError {
    /// How a caller of the control API sees it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DatapathError::Kernel(e) => e.kind(),
            DatapathError::Ebpf(e) => e.kind(),
            DatapathError::Toolkit(ovl_netlink::Error::Invalid(_)) => ErrorKind::Invalid,
            _ => ErrorKind::Internal,
        }
    }
}

/// Result of datapath calls.
pub type DpResult<T> = std::result::Result<T, DatapathError>;

/// What one network looks like on this host, for `overlayctl peers`.
#[derive(Debug, Clone, Default)]
pub struct NetReport {
    /// Programmed entries, one per line.
    pub actual: Vec<String>,
    /// Operations that would converge it, and differences no operation can fix (empty:
    /// converged).
    pub diff: Vec<String>,
}

/// What is programmed, per network, and the state of every local endpoint.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per network.
    pub networks: BTreeMap<String, NetReport>,
    /// Per local endpoint `(network, id)`.
    pub endpoints: BTreeMap<(String, String), EndpointStatus>,
}

/// An operation of a pass that failed (retried on the next pass).
#[derive(Debug)]
pub struct OpFailure {
    /// The operation, as displayed.
    pub op: String,
    /// Why.
    pub error: DatapathError,
}

impl fmt::Display for OpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.error)
    }
}

/// Outcome of one convergence pass.
#[derive(Debug, Default)]
pub struct Converged {
    /// Operations applied.
    pub applied: usize,
    /// Operations that failed.
    pub failed: Vec<OpFailure>,
    /// The state of every local endpoint after the pass.
    pub endpoints: BTreeMap<(String, String), EndpointStatus>,
}

/// What a starting datapath removed of the other one.
#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    /// The datapath that left them.
    pub from: &'static str,
    /// What was removed.
    pub removed: Vec<String>,
    /// What could not be removed (the new datapath starts anyway; what collides with the
    /// leftovers fails with its own error and is retried on every pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `overlayctl datapath`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Details {
    /// The kernel datapath.
    Kernel(kernel::KernelDetails),
    /// The eBPF datapath.
    Ebpf {
        /// Its details.
        #[serde(flatten)]
        details: Box<ovl_dp_ebpf::EbpfDetails>,
        /// What it removed of the kernel datapath when it started, if anything.
        #[serde(skip_serializing_if = "Option::is_none")]
        switched: Option<Switched>,
        /// The kernel datapath of the encrypted networks here (see [`split`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        encrypted: Option<Box<kernel::KernelDetails>>,
    },
}

/// A datapath the reconciler drives.
#[async_trait::async_trait]
pub trait Datapath: Send + Sync {
    /// `kernel` or `ebpf`.
    fn mode(&self) -> &'static str;

    /// Brings what is programmed to `desired` (observe, plan, apply), container ends
    /// included.
    async fn converge(&self, desired: &Desired) -> DpResult<Converged>;

    /// What is programmed per network, what a pass would change, every local endpoint's
    /// state.
    async fn report(&self, desired: &Desired) -> DpResult<Report>;

    /// Plugs an endpoint where `ep.plug` says: into its container's namespace
    /// (`overlayctl attach`), or left for dockerd to move (Docker's Join). Idempotent.
    async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> DpResult<Attached>;

    /// Removes an endpoint's interfaces (idempotent).
    async fn detach(&self, network: &str, endpoint_id: &str) -> DpResult<()>;

    /// Announces newly programmed remote peers to the local containers of `network`
    /// (gratuitous ARP), so an ARP request that raced their entries resolves at once. The
    /// eBPF datapath answers ARP in BPF from the moment an entry exists: nothing to do.
    async fn announce(
        &self,
        network: &str,
        peers: &[(std::net::Ipv4Addr, MacAddr)],
    ) -> DpResult<()> {
        let _ = (network, peers);
        Ok(())
    }

    /// The state of every local endpoint after the last pass.
    fn endpoint_status(&self) -> BTreeMap<(String, String), EndpointStatus>;

    /// Details and counters for `overlayctl datapath`.
    async fn details(&self) -> Details;

    /// Every frame this datapath drops from now on, with its reason and head (`overlayctl
    /// monitor --drops`); `None` where drops are only counted (the kernel datapath: its
    /// counters are in [`Datapath::details`]).
    fn drops(&self) -> Option<tokio::sync::broadcast::Receiver<DroppedFrame>> {
        None
    }
}

/// A frame the eBPF programs dropped.
pub use ovl_dp_ebpf::DropEvent as DroppedFrame;

/// Report lines for endpoint states that no operation repairs (a gone namespace, a failed
/// repair) go into the diff, so `peers` never says converged while they last.
fn endpoint_lines(
    endpoints: &BTreeMap<(String, String), EndpointStatus>,
    out: &mut BTreeMap<String, NetReport>,
) {
    for ((net, id), st) in endpoints {
        let r = out.entry(net.clone()).or_default();
        let line = format!("endpoint {id}: {}", st.describe());
        match st {
            EndpointStatus::NetnsGone { .. } | EndpointStatus::Failed { .. } => {
                r.diff.push(format!("{net}: {line}"))
            }
            _ => r.actual.push(line),
        }
    }
}

/// Records a pass's endpoint states over the last ones. A pass that did not look at an
/// endpoint's container end (a pass after a change skips those found fine before) reports it
/// unchecked: the state found by the last pass that looked stays.
fn record_statuses(
    last: &mut BTreeMap<(String, String), EndpointStatus>,
    mut new: BTreeMap<(String, String), EndpointStatus>,
) -> BTreeMap<(String, String), EndpointStatus> {
    for (key, st) in new.iter_mut() {
        if *st == EndpointStatus::Unchecked
            && let Some(before) = last.get(key)
            && before.is_ok()
        {
            *st = before.clone();
        }
    }
    log_changes(last, &new);
    *last = new.clone();
    new
}

/// Logs the endpoints whose state changed in a pass: a container namespace found gone or a
/// repair that failed (warnings), a container end repaired (info).
fn log_changes(
    old: &BTreeMap<(String, String), EndpointStatus>,
    new: &BTreeMap<(String, String), EndpointStatus>,
) {
    for ((net, id), st) in new {
        let before = old.get(&(net.clone(), id.clone()));
        if before == Some(st) {
            continue;
        }
        match st {
            EndpointStatus::NetnsGone { .. } | EndpointStatus::Failed { .. } => {
                tracing::warn!(network = %net, endpoint = %id, state = %st.describe(), "endpoint cannot be restored")
            }
            EndpointStatus::Drifted { problems } => {
                tracing::info!(network = %net, endpoint = %id, problems = %problems.join(", "), "repairing endpoint")
            }
            EndpointStatus::Ok { .. } if before.is_some_and(|b| !b.is_ok()) => {
                tracing::info!(network = %net, endpoint = %id, "endpoint restored")
            }
            _ => {}
        }
    }
}

/// Opens the configured datapath. With `--datapath ebpf`, a host that cannot run BPF gets a
/// precise reason; with `--datapath-fallback` it then runs the kernel path instead. Before
/// it starts, the other datapath's leftovers are removed (and logged). Its durable mounts
/// (sandboxes, pins) go to `mounts`.
pub async fn open(settings: &Settings, mounts: HostMounts) -> DpResult<Arc<dyn Datapath>> {
    tracing::info!(mounts = %mounts.describe(), "durable datapath mounts (sandboxes, pins) live in this mount namespace");
    let underlay = ovl_netlink::underlay_mtu(settings.advertise_addr)?;
    let mtu = ovl_model::overlay_mtu(underlay, None);
    let ebpf_cfg = ovl_dp_ebpf::BackendConfig {
        run_dir: settings.run_dir.clone(),
        vtep: settings.advertise_addr,
        mtu,
        vxlan_port: settings.vxlan_port,
        mounts: mounts.clone(),
    };
    // Where an eBPF host keeps the kernel datapath of its encrypted networks.
    let encrypted_dir = settings.run_dir.join("dp-encrypted");
    let kernel = || async {
        let switched = switch_from("ebpf", ovl_dp_ebpf::purge(&settings.run_dir, &mounts).await)?;
        // The encrypted networks the eBPF host ran in their own sandboxes: this datapath
        // makes them again in its own, and their vxlan devices would collide.
        let leftover =
            ovl_dp_kernel::KernelDatapath::new(encrypted_dir.clone(), None, mounts.clone())?
                .purge()
                .await;
        if let Some(s) = switch_from("ebpf", leftover.map_err(DatapathError::from))? {
            tracing::info!(removed = ?s.removed, "removed the eBPF host's encrypted-network sandboxes");
        }
        let dp: Arc<dyn Datapath> = Arc::new(kernel::KernelBackend::new(
            settings.run_dir.join("dp"),
            mounts.clone(),
            switched,
        )?);
        Ok(dp)
    };
    match settings.datapath {
        DatapathMode::Kernel => kernel().await,
        DatapathMode::Ebpf => {
            let probe = tokio::task::spawn_blocking(ovl_dp_ebpf::EbpfDatapath::probe).await?;
            if let Err(reason) = probe {
                let reason = ovl_dp_ebpf::Error::from(reason);
                if settings.datapath_fallback {
                    tracing::error!(%reason, "eBPF datapath unavailable; falling back to the kernel datapath");
                    return kernel().await;
                }
                return Err(DatapathError::Unavailable(reason));
            }
            let purged = ovl_dp_kernel::KernelDatapath::new(
                settings.run_dir.join("dp"),
                None,
                mounts.clone(),
            )?
            .purge()
            .await;
            let switched = switch_from("kernel", purged.map_err(DatapathError::from))?;
            match ebpf::EbpfAdapter::open(ebpf_cfg, switched).await {
                Ok(b) => {
                    let enc =
                        kernel::KernelBackend::new(encrypted_dir.clone(), mounts.clone(), None)?;
                    Ok(Arc::new(split::Split::new(
                        Arc::new(b),
                        Arc::new(enc),
                        settings.encrypted_vxlan_port,
                    )))
                }
                Err(reason) if settings.datapath_fallback => {
                    tracing::error!(%reason, "eBPF datapath unavailable; falling back to the kernel datapath");
                    kernel().await
                }
                Err(reason) => Err(DatapathError::Unavailable(reason)),
            }
        }
    }
}

/// Logs what a purge of the other datapath removed, or why it could not.
fn switch_from<E: Into<DatapathError>>(
    from: &'static str,
    purged: std::result::Result<Vec<String>, E>,
) -> DpResult<Option<Switched>> {
    match purged {
        Ok(removed) if removed.is_empty() => Ok(None),
        Ok(removed) => {
            tracing::warn!(from, removed = %removed.join(", "), "switching datapath: removed the other datapath's devices; the reconciler plugs the endpoints again");
            Ok(Some(Switched {
                from,
                removed,
                error: None,
            }))
        }
        Err(e) => {
            let e = DatapathError::Switch {
                from,
                source: Box::new(e.into()),
            };
            tracing::error!(error = %e, "switching datapath: leftovers of the other datapath remain");
            Ok(Some(Switched {
                from,
                removed: Vec::new(),
                error: Some(e.to_string()),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> (String, String) {
        ("net1".into(), id.into())
    }

    #[test]
    fn an_unchecked_end_keeps_the_state_the_last_look_found() {
        let ok = EndpointStatus::Ok {
            ifname: "eth0".into(),
        };
        let gone = EndpointStatus::NetnsGone {
            netns: "/run/netns/x".into(),
        };
        let mut last = BTreeMap::from([(key("a"), ok.clone()), (key("b"), gone.clone())]);
        let pass = BTreeMap::from([
            (key("a"), EndpointStatus::Unchecked),
            (key("b"), EndpointStatus::Unchecked),
            (key("c"), EndpointStatus::Unchecked),
        ]);
        let shown = record_statuses(&mut last, pass);
        assert_eq!(
            shown[&key("a")],
            ok,
            "skipped because it was fine: still fine"
        );
        assert_eq!(
            shown[&key("b")],
            EndpointStatus::Unchecked,
            "only a fine state carries over"
        );
        assert_eq!(shown[&key("c")], EndpointStatus::Unchecked);
        assert_eq!(last, shown);
        // A look that finds a problem replaces the fine state.
        let drifted = EndpointStatus::Drifted {
            problems: vec!["mtu".into()],
        };
        let shown = record_statuses(&mut last, BTreeMap::from([(key("a"), drifted.clone())]));
        assert_eq!(shown[&key("a")], drifted);
    }
}
