//! The toolkit's one error type.

use std::path::PathBuf;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to the kernel about links and namespaces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value breaks a rule of the vocabulary (a name, a MAC); nothing was changed.
    #[error(transparent)]
    Invalid(#[from] ovl_model::Error),
    /// A netlink request failed.
    #[error("netlink: {context}: {source}")]
    Netlink {
        /// What was being done.
        context: String,
        /// What rtnetlink / the kernel said.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Sys {
        /// What was being done.
        context: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// File or socket I/O failed.
    #[error("{context} ({}): {source}", path.display())]
    Io {
        /// What was being done.
        context: String,
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A namespace file does not exist.
    #[error("network namespace {} does not exist", path.display())]
    NoNetns {
        /// The path.
        path: PathBuf,
    },
    /// A file exists but is not a network namespace.
    #[error("{} is not a network namespace file", path.display())]
    NotNetns {
        /// The path.
        path: PathBuf,
    },
    /// A link that should be there is not (it vanished under us, or was never made).
    #[error("interface {name} not found{}", place.as_ref().map(|p| format!(" in {p}")).unwrap_or_default())]
    NoLink {
        /// Its name (or index).
        name: String,
        /// Where we looked, if not the caller's namespace.
        place: Option<String>,
    },
    /// A name is taken by an interface that is not the one we would have made.
    #[error("interface {name} already exists{} and is not {owner}'s", place.as_ref().map(|p| format!(" in {p}")).unwrap_or_default())]
    Taken {
        /// The name.
        name: String,
        /// Where.
        place: Option<String>,
        /// Whose it should have been.
        owner: String,
    },
    /// `nft` failed (or could not be run).
    #[error("{context}: nft: {stderr}")]
    Nft {
        /// What was being done.
        context: String,
        /// What nft said.
        stderr: String,
    },
    /// No interface holds an address.
    #[error("no interface holds the address {addr}")]
    NoAddress {
        /// The address.
        addr: std::net::Ipv4Addr,
    },
    /// A helper thread (namespace switching) could not be started or died.
    #[error("namespace helper thread: {0}")]
    Thread(String),
    /// A step failed and undoing what it had done failed too: both are reported.
    #[error("{failed}; undoing it failed too: {undo}")]
    Rollback {
        /// The original failure.
        #[source]
        failed: Box<Error>,
        /// The failure of the undo.
        undo: Box<Error>,
    },
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
            Error::Rollback { failed, .. } => failed.errno(),
            _ => None,
        }
    }

    /// `self`, or a [`Error::Rollback`] when undoing it failed too.
    pub fn with_undo(self, undo: Result<()>) -> Self {
        match undo {
            Ok(()) => self,
            Err(u) => Error::Rollback {
                failed: Box::new(self),
                undo: Box::new(u),
            },
        }
    }
}
