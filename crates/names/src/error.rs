use std::path::PathBuf;

/// The one error type of this crate. Every variant says what was being done and to what.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// A record (name, alias or network) is not usable as a DNS name or a hosts-file entry.
    #[error("invalid name record for endpoint {endpoint_id:?} on network {network:?}: {reason}")]
    InvalidRecord {
        /// The endpoint the record belongs to.
        endpoint_id: String,
        /// The network the record belongs to.
        network: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A name given to a lookup is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Reading, writing or locking a file failed.
    #[error("{action} {path}: {source}")]
    File {
        /// What was being done ("open", "write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Entering a network namespace or preparing it (bringing `lo` up) failed.
    #[error("network namespace {path}: {action}: {source}")]
    Netns {
        /// The namespace file (`/run/netns/X`, `/proc/PID/ns/net`, ...).
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Creating, binding or serving a DNS socket failed.
    #[error("DNS socket {addr} ({proto}): {action}: {source}")]
    Socket {
        /// The local address.
        addr: std::net::SocketAddr,
        /// "udp" or "tcp".
        proto: &'static str,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream resolver configuration could not be read or is unusable.
    #[error("upstream DNS configuration: {0}")]
    Upstream(String),
    /// A DNS message could not be encoded or decoded.
    #[error("DNS message: {0}")]
    Message(String),
    /// No listener is registered under this key.
    #[error("no DNS listener registered for {0:?}")]
    UnknownListener(String),
    /// A helper thread died before reporting back (it panicked).
    #[error("internal: {0}")]
    Internal(String),
}
