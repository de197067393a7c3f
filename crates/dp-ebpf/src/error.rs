//! The crate's errors: one enum for every operation, and the precise reasons the datapath
//! cannot run on a host.

use std::fmt;
use std::io;
use std::path::PathBuf;

use aya::maps::MapError;
use aya::programs::ProgramError;
use ovl_model::{ErrorKind, VXLAN_OVERHEAD};

/// Errors of the eBPF datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A spec or name breaks a rule; nothing was changed.
    #[error(transparent)]
    Model(#[from] ovl_model::Error),
    /// A link, namespace or mount operation of the toolkit failed.
    #[error(transparent)]
    Toolkit(#[from] ovl_netlink::Error),
    /// The host cannot run the datapath (see [`crate::EbpfDatapath::probe`]).
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// Bad argument; nothing was changed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A fixed-size replication list would overflow; nothing was changed.
    #[error("too many {what} for VNI {vni} (at most {max})")]
    TooMany {
        /// What overflowed.
        what: &'static str,
        /// The VNI.
        vni: u32,
        /// The limit.
        max: usize,
    },
    /// bpffs missing, not mountable, or a pin directory not on it.
    #[error("bpffs: {context}: {source}")]
    Bpffs {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {context}: {source}")]
    Netlink {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The vxlan device name is taken by something we cannot use.
    #[error("interface {name} exists but is not usable as the fast path's device: {detail}")]
    VxlanConflict {
        /// Interface name.
        name: String,
        /// Why.
        detail: String,
    },
    /// No interface with this index in the calling thread's network namespace.
    #[error("no interface with index {0}")]
    NoSuchLink(u32),
    /// The MTU guard: a collect-metadata vxlan device fed by `bpf_redirect` does not
    /// fragment or bounce oversized frames, so endpoints must fit the overlay MTU.
    #[error(
        "MTU guard: interface {ifindex} has MTU {link_mtu}, above the overlay MTU {overlay_mtu} \
         (underlay MTU - {VXLAN_OVERHEAD}); lower the container MTU"
    )]
    MtuTooLarge {
        /// Interface index.
        ifindex: u32,
        /// Its MTU.
        link_mtu: u32,
        /// The overlay MTU given to `load`.
        overlay_mtu: u32,
    },
    /// The request conflicts with what is programmed; nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Loading the BPF object failed.
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program operation failed (load, attach, test run).
    #[error("BPF program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// The aya error.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("BPF map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The aya error.
        #[source]
        source: MapError,
    },
    /// A pinned link could not be created, opened, replaced or removed.
    #[error("BPF link {path}: {detail}")]
    Link {
        /// Pin path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The number of possible CPUs (which sizes `COUNTERS`) could not be read.
    #[error("reading the possible CPUs: {source}")]
    Cpus {
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Several independent steps failed (teardown reports all of them).
    #[error("{} errors: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<Error>),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the fast path cannot be used on this host (see [`EbpfDatapath::probe`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("eBPF fast path unsupported: {reason}")]
pub struct Unsupported {
    /// The exact reason.
    pub reason: UnsupportedReason,
}

/// The reasons [`EbpfDatapath::probe`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsupportedReason {
    /// The process lacks capabilities (listed).
    MissingCapabilities(Vec<String>),
    /// No bpffs at /sys/fs/bpf and mounting one failed.
    NoBpffs(String),
    /// The kernel is older than what the programs need (TCX links, `bpf_redirect_peer`).
    KernelTooOld {
        /// Running kernel.
        found: String,
        /// Minimum.
        need: &'static str,
    },
    /// The verifier rejected a program; the tail of its log.
    VerifierRejected {
        /// Program name.
        program: String,
        /// Last lines of the verifier log.
        log_excerpt: String,
    },
    /// Creating maps or loading the object failed for another reason.
    LoadFailed(String),
}

impl fmt::Display for UnsupportedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingCapabilities(c) => write!(f, "missing capabilities: {}", c.join(", ")),
            Self::NoBpffs(e) => write!(f, "no bpffs at /sys/fs/bpf and mounting one failed: {e}"),
            Self::KernelTooOld { found, need } => {
                write!(f, "kernel {found} is too old (need {need} for TCX links)")
            }
            Self::VerifierRejected {
                program,
                log_excerpt,
            } => write!(
                f,
                "the verifier rejected {program}; log excerpt:\n{log_excerpt}"
            ),
            Self::LoadFailed(e) => write!(f, "loading the BPF object failed: {e}"),
        }
    }
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { map, source }
}

pub(crate) fn prog_err(program: &'static str) -> impl FnOnce(ProgramError) -> Error {
    move |source| Error::Program { program, source }
}

/// `Ok(())`, the one error, or [`Error::Multiple`].
pub(crate) fn collect(mut errors: Vec<Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Multiple(errors)),
    }
}

impl Error {
    /// How a caller of the API sees it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Model(_) | Error::InvalidInput(_) => ErrorKind::Invalid,
            Error::MtuTooLarge { .. } | Error::TooMany { .. } => ErrorKind::Invalid,
            Error::Toolkit(
                ovl_netlink::Error::NoNetns { .. } | ovl_netlink::Error::NotNetns { .. },
            ) => ErrorKind::Invalid,
            Error::Toolkit(ovl_netlink::Error::Invalid(_)) => ErrorKind::Invalid,
            Error::Conflict(_) | Error::VxlanConflict { .. } => ErrorKind::Conflict,
            Error::Multiple(v) if v.len() == 1 => v[0].kind(),
            _ => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_messages_are_specific() {
        let u = Unsupported {
            reason: UnsupportedReason::VerifierRejected {
                program: "lxc_egress".into(),
                log_excerpt: "R1 invalid mem access".into(),
            },
        };
        let s = u.to_string();
        assert!(s.contains("lxc_egress") && s.contains("R1 invalid mem access"));
        let u = UnsupportedReason::MissingCapabilities(vec!["CAP_BPF".into()]);
        assert_eq!(u.to_string(), "missing capabilities: CAP_BPF");
    }
}
