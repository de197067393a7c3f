//! The crate's error type.

use std::path::PathBuf;

/// Errors of the plugin server, the Engine API watcher and the lab harness.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another live process already serves the plugin socket.
    #[error("plugin socket {0} is in use by another live process")]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket; we refuse to delete it.
    #[error("{0} exists and is not a unix socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A Docker Engine API call failed.
    #[error("docker engine API: {context}: {source}")]
    Engine {
        /// What we were doing.
        context: String,
        /// The client error.
        #[source]
        source: Box<bollard::errors::Error>,
    },
    /// The lab harness failed (a command failed, a timeout expired...).
    #[error("dockerd harness: {0}")]
    Harness(String),
}

impl DockerError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an Engine API error with context.
    pub fn engine(context: impl Into<String>, source: bollard::errors::Error) -> Self {
        Self::Engine {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
