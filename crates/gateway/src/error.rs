//! The one error type of this crate.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use ovl_model::Proto;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the gateway. Variants carry enough context to be shown to a
/// user as-is (`overlayctl` prints them verbatim).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway subnet text is not a usable IPv4 CIDR.
    #[error("invalid gateway subnet {input:?}: {reason}")]
    InvalidSubnet {
        /// What the user gave.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// The gateway subnet overlaps an overlay network's subnet.
    #[error("gateway subnet {subnet} overlaps overlay network subnet {overlay}")]
    OverlapsOverlay {
        /// The refused gateway subnet.
        subnet: Ipv4Network,
        /// The overlay subnet it collides with.
        overlay: Ipv4Network,
    },
    /// The gateway subnet overlaps a route or address that already exists on the host.
    #[error("gateway subnet {subnet} overlaps host route or address {host}")]
    OverlapsHost {
        /// The refused gateway subnet.
        subnet: Ipv4Network,
        /// The host route or address network it collides with.
        host: Ipv4Network,
    },
    /// Every candidate of the automatic pool collides with something.
    #[error(
        "no free gateway subnet in the default pool (172.18.0.0/16-172.31.0.0/16, \
         192.168.0.0/16 in /20 blocks): every candidate overlaps a host route or an overlay; \
         set one explicitly with --gw-subnet"
    )]
    NoFreeSubnet,
    /// A persisted subnet differs from the configured one while endpoints still use it.
    #[error(
        "gateway subnet is {persisted} with {endpoints} endpoint(s) attached; refusing to \
         switch to {requested}: detach them (or tear the gateway down) first"
    )]
    SubnetInUse {
        /// The subnet in the state file.
        persisted: Ipv4Network,
        /// The subnet asked for now.
        requested: Ipv4Network,
        /// How many endpoints hold addresses in `persisted`.
        endpoints: usize,
    },
    /// No free address left in the gateway subnet.
    #[error("gateway subnet {0} has no free address left")]
    SubnetExhausted(Ipv4Network),
    /// The bridge name is unusable.
    #[error("invalid bridge name {0:?}: must be 1-15 characters of [A-Za-z0-9_.-]")]
    InvalidBridge(String),
    /// The endpoint id is unusable.
    #[error("invalid endpoint id {0:?}: must be non-empty printable ASCII without whitespace")]
    InvalidEndpointId(String),
    /// An interface name or pattern is unusable.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidInterface {
        /// What was given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// An operation needs an attached endpoint.
    #[error("endpoint {0} is not attached to the gateway")]
    NotAttached(String),
    /// A port mapping is malformed.
    #[error("invalid port mapping {mapping}: {reason}")]
    InvalidPort {
        /// The mapping as `host:container/proto`.
        mapping: String,
        /// Why it was refused.
        reason: String,
    },
    /// A host port is already published.
    #[error("host port {host_port}/{proto} is already published by endpoint {endpoint}")]
    PortInUse {
        /// The contested host port.
        host_port: u16,
        /// Its protocol.
        proto: Proto,
        /// The endpoint that holds it.
        endpoint: String,
    },
    /// No free `ethN` name in the container.
    #[error("no free ethN interface name in container namespace {0}")]
    NoFreeIfname(String),
    /// A netlink request or namespace operation failed.
    #[error(transparent)]
    Netlink(#[from] ovl_netlink::Error),
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused a batch or could not run.
    #[error("nft {context} failed: {stderr}")]
    Nft {
        /// What we were doing.
        context: String,
        /// nft's stderr (or the exit status when empty).
        stderr: String,
    },
    /// `iptables` (Docker's chains) refused a rule or could not run.
    #[error("iptables {context} failed: {stderr}")]
    Iptables {
        /// What we were doing.
        context: String,
        /// iptables' stderr.
        stderr: String,
    },
    /// The state file is unreadable.
    #[error("gateway state file {path}: {reason}")]
    State {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A link we just created or looked up is not there.
    #[error("link {0} vanished while being configured")]
    LinkVanished(String),
    /// The bridge is not there although it should be.
    #[error("bridge {bridge} (address {address}) does not exist")]
    BridgeMissing {
        /// Bridge name.
        bridge: String,
        /// Expected bridge address.
        address: Ipv4Addr,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
