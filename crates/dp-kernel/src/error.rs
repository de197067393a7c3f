//! The crate's single error type.

use std::path::PathBuf;

use ovl_model::ErrorKind;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the kernel datapath, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A spec or name breaks a rule; nothing was changed.
    #[error(transparent)]
    Invalid(#[from] ovl_model::Error),
    /// The kernel refused a request, or a namespace could not be used.
    #[error(transparent)]
    Netlink(#[from] ovl_netlink::Error),
    /// The request conflicts with what is programmed (an address, a MAC, a name, a VNI);
    /// nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A network has no sandbox (yet).
    #[error("network {network} has no sandbox")]
    NoSandbox {
        /// The network.
        network: String,
    },
    /// A network's sandbox has no vxlan device.
    #[error("network {network} has no vxlan0")]
    NoVxlan {
        /// The network.
        network: String,
    },
    /// An endpoint's namespace cannot take its container end.
    #[error("endpoint {endpoint}: {} {problem}", path.display())]
    ContainerNetns {
        /// The endpoint.
        endpoint: String,
        /// The namespace file.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The sandbox directory could not be read or made.
    #[error("{context} ({}): {source}", path.display())]
    Io {
        /// What was being done.
        context: String,
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A reconcile op failed.
    #[error("{op}: {source}")]
    Op {
        /// The op, as displayed.
        op: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
    /// Several independent steps failed (teardown keeps going and reports all of them).
    #[error("{} errors: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<Error>),
}

impl Error {
    pub(crate) fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }

    /// The kernel errno behind this error, if it came from netlink or a system call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink(e) => e.errno(),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Op { source, .. } => source.errno(),
            _ => None,
        }
    }

    /// How a caller of the API sees it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::ContainerNetns { .. } => ErrorKind::Invalid,
            Error::Netlink(
                ovl_netlink::Error::NoNetns { .. } | ovl_netlink::Error::NotNetns { .. },
            ) => ErrorKind::Invalid,
            Error::Netlink(ovl_netlink::Error::Invalid(_)) => ErrorKind::Invalid,
            Error::NoSandbox { .. } | Error::NoVxlan { .. } => ErrorKind::NotFound,
            Error::Op { source, .. } => source.kind(),
            Error::Multiple(v) if v.len() == 1 => v[0].kind(),
            _ => ErrorKind::Internal,
        }
    }

    /// Turns a list of errors into `Ok(())`, the single error, or [`Error::Multiple`].
    pub fn from_list(mut errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Multiple(errors)),
        }
    }
}
