//! What agents tell each other while `overlayctl probe` runs: a task for one host (watch for
//! a probe arriving, or send one on someone's behalf) and that host's answer. Both live on
//! the asking agent's or the answering agent's lease and are deleted by the asker when the
//! probe ends, so an interrupted probe leaves nothing in the KV beyond a lease's TTL.

use std::net::Ipv4Addr;

use ovl_model::MacAddr;
use serde::{Deserialize, Serialize};

/// A probe's identity on the wire: the ICMP identifier of its echo requests.
pub type ProbeId = u16;

/// Names (and ids) of probe endpoints start with this. `overlayctl attach` refuses such
/// names, and Docker's endpoint ids are hex, so an endpoint id with this prefix is a probe's.
pub const PROBE_PREFIX: &str = "ovl-probe-";

/// What the asker wants one host to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProbeTask {
    /// Look for the probe's frames arriving here, until `until_ms` (unix ms).
    Watch(WatchTask),
    /// Run the whole probe from this host (`--from`), answering with its report.
    Send(SendTask),
}

/// Look for a probe arriving at a local endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchTask {
    /// The asking host.
    pub from: String,
    /// Its VTEP (the outer source the probe should carry).
    pub from_vtep: Ipv4Addr,
    /// Network name.
    pub network: String,
    /// Its VNI.
    pub vni: u32,
    /// The destination endpoint's id.
    pub endpoint: String,
    /// The probe's source address and MAC.
    pub src_ip: Ipv4Addr,
    /// The probe's source MAC.
    pub src_mac: MacAddr,
    /// The ICMP identifier of its echo requests.
    pub icmp_id: ProbeId,
    /// When to stop looking and answer (unix ms).
    pub until_ms: u64,
}

/// Run a probe from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendTask {
    /// The asking host.
    pub from: String,
    /// Network name.
    pub network: String,
    /// Destination: a container name or an address.
    pub to: String,
}

/// One host's answer to a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProbeAnswer {
    /// The watch is armed: the asker may send.
    Watching,
    /// What the watch saw.
    Seen(Sightings),
    /// The report of a probe run here on the asker's behalf (JSON of the agent's report).
    Report {
        /// The report, as the agent's API returns it.
        report: serde_json::Value,
    },
    /// The task could not be done, and why.
    Failed {
        /// Why.
        error: String,
    },
}

/// What a destination host saw of a probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sightings {
    /// Outer source VTEPs of the probe's VXLAN packets that reached this host's underlay,
    /// with the interface they came in on.
    pub underlay: Vec<(Ipv4Addr, String)>,
    /// Whether the asker's VTEP is admitted here (a registered host).
    pub admitted: bool,
    /// Echo requests seen on the destination's interface (sequence numbers).
    pub delivered: Vec<u16>,
    /// Echo replies the destination sent (sequence numbers).
    pub answered: Vec<u16>,
    /// Drops of the probe's frames with their reason (eBPF drop ring).
    pub drops: Vec<String>,
    /// Drop counters that grew during the watch (only counted: admission, kernel
    /// anti-spoofing), with how much.
    pub counted: Vec<(String, u64)>,
    /// This host's datapath had not programmed the probe endpoint when the watch started
    /// (after waiting for it): replies to the probe may not find their way back.
    #[serde(default)]
    pub unprogrammed: bool,
    /// The destination endpoint is not attached here (or its namespace is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}
