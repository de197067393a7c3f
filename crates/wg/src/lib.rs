//! WireGuard of overlay-agent: the host's key pair ([`load_or_create`],
//! [`replace`]), the kernel's WireGuard device ([`Kernel`]) and a userspace
//! WireGuard device ([`Userspace`]).
//!
//! The device speaks the WireGuard protocol as implemented by boringtun's
//! `noise` module, so it interoperates with kernel WireGuard. It owns a TAP
//! interface (`ovlwg0` in the agent) and one UDP socket. Encrypted overlay
//! networks route their VXLAN packets (UDP dport 4790) into the TAP by policy
//! routing; each peer is one other host, whose single allowed IP is that
//! host's underlay IPv4 address.

#![warn(missing_docs)]

mod device;
mod kernel;
mod key;
mod merge;
mod split;
mod tun;
mod udp;
mod wire;

use std::path::PathBuf;

pub use device::{DropStats, Offload, Peer, PeerStats, Userspace};
pub use kernel::Kernel;
pub use key::{KeyPair, PublicKey, load_or_create, replace};

/// Errors of the key file and the userspace device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, writing or syncing the key file (or its directory) failed.
    #[error("WireGuard key file {}: {context}: {source}", path.display())]
    KeyIo {
        /// The file or directory concerned.
        path: PathBuf,
        /// What we were doing.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key file grants group or other users some access.
    #[error(
        "WireGuard key file {} has mode {mode:04o}; refusing to use it: it must be 0600 or stricter (chmod 600 it, or rotate the key if others may have read it)",
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold one base64 private key.
    #[error("WireGuard key file {} does not hold a valid private key: {reason}", path.display())]
    KeyInvalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A string is not a base64 WireGuard public key.
    #[error("invalid WireGuard public key {input:?}: {reason}")]
    InvalidPublicKey {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An argument of [`Userspace::start`] is out of range.
    #[error("WireGuard device {ifname}: {reason}")]
    InvalidConfig {
        /// The interface concerned.
        ifname: String,
        /// What is wrong.
        reason: String,
    },
    /// Creating the TAP device failed.
    #[error("creating TAP device {ifname}: {source}")]
    Tun {
        /// The interface name asked for.
        ifname: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A socket operation of the device failed.
    #[error("WireGuard device {ifname}: {context}: {source}")]
    Io {
        /// The interface concerned.
        ifname: String,
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TAP device was still there after the device was shut down.
    #[error("WireGuard device {ifname}: TAP device still present {waited_ms} ms after shutdown")]
    NotRemoved {
        /// The interface concerned.
        ifname: String,
        /// How long we waited.
        waited_ms: u64,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;
