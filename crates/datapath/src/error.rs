//! The crate's single error type.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the datapath, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller passed something invalid; nothing was changed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The request conflicts with what is already programmed (duplicate address, MAC, VNI...);
    /// nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A named object (network, namespace, link) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A netlink request failed.
    #[error("netlink: {context}: {source}")]
    Netlink {
        /// What we were doing.
        context: String,
        /// The error reported by rtnetlink / the kernel.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Sys {
        /// What we were doing.
        context: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// File or socket I/O failed.
    #[error("{context} ({path}): {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A helper thread (netns switching) died unexpectedly.
    #[error("netns helper thread failed: {0}")]
    Thread(String),
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
    #[error("{} errors: {}", .0.len(), join_errors(.0))]
    Multiple(Vec<Error>),
}

fn join_errors(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub(crate) fn netlink(context: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

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
            Error::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.to_io().raw_os_error(),
            Error::Sys { source, .. } => Some(*source as i32),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Op { source, .. } => source.errno(),
            _ => None,
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
