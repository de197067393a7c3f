//! The command line of `overlayctl` (its clap definitions), in the library so the man pages
//! and shell completions the package ships are generated from the very same definitions.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use ipnetwork::Ipv4Network;
use ovl_core::{MacAddr, PortMap};

/// Command line of `overlayctl`.
#[derive(Debug, Parser)]
#[command(
    name = "overlayctl",
    version = crate::VERSION,
    about = "Control and inspect an overlay-agent"
)]
pub struct Cli {
    /// Control socket of the agent.
    #[arg(
        long,
        global = true,
        env = "OVERLAY_SOCKET",
        default_value = "/run/overlay-agent/overlay.sock"
    )]
    pub socket: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The commands of `overlayctl`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Host id, KV health, datapath mode, counts.
    Status,
    /// Every host: id, VTEP address, state; `hosts rm ID` forgets a host gone for good.
    Hosts {
        /// What to do (default: list).
        #[command(subcommand)]
        cmd: Option<HostsCmd>,
    },
    /// Create, list, inspect and remove networks.
    #[command(subcommand)]
    Network(NetCmd),
    /// Attach a container (network namespace) to a network.
    Attach(AttachArgs),
    /// Detach a container from a network.
    Detach {
        /// Network name.
        network: String,
        /// Container name.
        #[arg(long)]
        name: String,
    },
    /// Every endpoint cluster-wide (or of one network).
    Endpoints {
        /// Only this network.
        network: Option<String>,
    },
    /// What this host has programmed vs. what it should.
    Peers {
        /// Only this network.
        network: Option<String>,
    },
    /// Ask the embedded DNS.
    #[command(subcommand)]
    Dns(DnsCmd),
    /// Datapath details and counters.
    Datapath,
    /// This host's WireGuard key (encrypted networks).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Check the cluster from this host: hosts and leases, MTUs, WireGuard keys, this host's
    /// entries against the desired state, KV latency, the Docker plugin. Each finding comes
    /// with a hint; exits 1 if any is a problem.
    Doctor,
    /// A live stream of dropped frames (with their reason, network, endpoint and headers)
    /// and of host state changes, until interrupted.
    Monitor {
        /// Only drops.
        #[arg(long)]
        drops: bool,
        /// Only this network.
        network: Option<String>,
        /// Only this endpoint (container name).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Send a real frame through the overlay to an endpoint and follow it hop by hop: the
    /// sending datapath's entry, the VXLAN packet leaving and arriving, delivery, the reply,
    /// and a full-size frame. Names the first hop that failed and why; exits 1 then. Leaves
    /// nothing behind (its endpoint, namespace and TAP are removed, also when interrupted).
    Probe {
        /// Network name.
        network: String,
        /// Destination: container name, alias or address.
        #[arg(long)]
        to: String,
        /// Send from this host (its agent runs the probe; default: this host).
        #[arg(long)]
        from: Option<String>,
    },
    /// Hosts, networks and endpoints as a picture (host states as this host sees them):
    /// Graphviz DOT, or an SVG laid out without Graphviz.
    Graph {
        /// Output format.
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
}

/// `overlayctl graph --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT (`| dot -Tpng`).
    Dot,
    /// SVG, self-contained.
    Svg,
}

/// `overlayctl keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Make a new key pair for this host's WireGuard, use it at once and publish its public
    /// key; the other hosts take it within one watch event. Also ends a revocation (a key
    /// an operator removed from the KV).
    Rotate,
}

/// `overlayctl hosts ...`.
#[derive(Debug, Subcommand)]
pub enum HostsCmd {
    /// Forget a host that is gone for good: its endpoints, their addresses and its record.
    /// Every host drops its entries and stops admitting its VXLAN. Refused while its agent
    /// runs; an agent that comes back registers again.
    Rm {
        /// Host id.
        id: String,
    },
}

/// `overlayctl network ...`.
#[derive(Debug, Subcommand)]
pub enum NetCmd {
    /// Create a network.
    Create {
        /// Network name.
        name: String,
        /// Subnet (default: the next free /24 of the pool).
        #[arg(long)]
        subnet: Option<Ipv4Network>,
        /// Gateway address (default: the subnet's first address).
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
        /// VXLAN network identifier (default: the next free from 4096).
        #[arg(long)]
        vni: Option<u32>,
        /// No gateway bridge, no route off the overlay.
        #[arg(long)]
        internal: bool,
        /// Encrypt and authenticate traffic between hosts with WireGuard (the container MTU
        /// leaves room for its 60 bytes).
        #[arg(long)]
        encrypted: bool,
        /// Container MTU (default: underlay MTU - 50 on each host).
        #[arg(long)]
        mtu: Option<u32>,
        /// A label `KEY=VALUE`, shown by `docker network inspect` on every host (repeatable).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
    /// List networks.
    Ls,
    /// Show one network.
    Inspect {
        /// Network name.
        name: String,
    },
    /// Remove a network (refused while it has endpoints).
    Rm {
        /// Network name.
        name: String,
    },
}

/// `overlayctl attach ...`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Network name.
    pub network: String,
    /// Container name (unique on the network).
    #[arg(long)]
    pub name: String,
    /// Network namespace path (e.g. /run/netns/c1).
    #[arg(long, conflicts_with = "pid", required_unless_present = "pid")]
    pub netns: Option<PathBuf>,
    /// Or the PID of a process in the container.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Extra name on this network (repeatable).
    #[arg(long = "alias")]
    pub aliases: Vec<String>,
    /// Address to use (default: the next free one).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// MAC address to use (default: derived from the address).
    #[arg(long, value_parser = MacAddr::parse_host)]
    pub mac: Option<MacAddr>,
    /// Publish a port: HOSTPORT:PORT[/tcp|udp] (repeatable).
    #[arg(long)]
    pub publish: Vec<PortMap>,
}

/// `overlayctl dns ...`.
#[derive(Debug, Subcommand)]
pub enum DnsCmd {
    /// Resolve NAME as container CNAME's resolver would.
    Lookup {
        /// Name to resolve.
        name: String,
        /// Container to ask as.
        #[arg(long)]
        from: String,
    },
}

/// Parses `KEY=VALUE` (a key is never empty).
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}
