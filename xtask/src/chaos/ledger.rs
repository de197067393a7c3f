//! What the users of the cluster (the workload and the fault injector) were told: every
//! endpoint and network they asked for, and which answers acknowledged them. The invariants
//! hold the KV and the datapath to it.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use serde::Serialize;

/// Where an endpoint stands, as its user knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpState {
    /// The attach is in flight.
    Attaching,
    /// The attach's outcome is unknown (the agent died under it, no answer): being resolved.
    Unknown,
    /// Attached: an attach answered success.
    Live,
    /// A detach was asked for and has not answered success yet.
    Detaching,
    /// Detached: a detach answered success.
    Detached,
    /// The attach was refused (or never reached an agent): nothing should exist.
    Refused,
}

impl EpState {
    /// Whether an operation on it is open (its KV records may legitimately be half-made).
    pub fn open(self) -> bool {
        matches!(
            self,
            EpState::Attaching | EpState::Unknown | EpState::Detaching
        )
    }
}

/// One endpoint a user asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Ep {
    /// Network.
    pub net: String,
    /// Container name (the endpoint id).
    pub name: String,
    /// Host index it was attached on.
    pub host: usize,
    /// Its container namespace.
    pub ns: String,
    /// Address from the acknowledging reply.
    pub ip: Option<Ipv4Addr>,
    /// Overlay interface inside the container, from the reply.
    pub ifname: Option<String>,
    /// Where it stands.
    pub state: EpState,
    /// When an attach answered success (run time).
    pub acked_at: Option<Duration>,
    /// When the first detach of it started.
    pub detach_from: Option<Duration>,
    /// When a detach answered success.
    pub detached_at: Option<Duration>,
    /// The detach answered success with its record's removal deferred (the KV failed half
    /// way): the agent removes it later, so it is not expected gone at once, only at the end.
    #[serde(default)]
    pub deferred: bool,
    /// Detaches asked for so far.
    #[serde(skip)]
    pub detach_tries: u32,
    /// Who asked for it (`workload h1`, `fault #12`).
    pub by: String,
}

/// Where a network stands, as its user knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetState {
    /// Create in flight or its outcome unknown.
    Creating,
    /// Created (acknowledged, or found to exist when a retried create said so).
    Live,
    /// Removal asked for, not answered success yet.
    Removing,
    /// Removed.
    Removed,
    /// Create refused.
    Refused,
}

impl NetState {
    /// Whether an operation on it is open.
    pub fn open(self) -> bool {
        matches!(self, NetState::Creating | NetState::Removing)
    }
}

/// One network a user asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Net {
    /// Name.
    pub name: String,
    /// VNI from the acknowledging reply.
    pub vni: Option<u32>,
    /// Subnet from the acknowledging reply.
    pub subnet: Option<String>,
    /// Where it stands.
    pub state: NetState,
    /// When a create answered success (or a retry found it).
    pub acked_at: Option<Duration>,
    /// When its removal started.
    pub remove_from: Option<Duration>,
    /// When a removal answered success.
    pub removed_at: Option<Duration>,
    /// Whether the workload attaches to it (scratch networks only come and go).
    pub attachable: bool,
    /// Created with `--internal` (no gateway bridge).
    pub internal: bool,
}

/// Every endpoint and network asked for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ledger {
    /// Endpoints by `(network, name)`.
    pub eps: BTreeMap<(String, String), Ep>,
    /// Networks by name.
    pub nets: BTreeMap<String, Net>,
}

impl Ledger {
    /// Endpoints that must be in the KV for a snapshot read over `[t0, t1]`: acknowledged
    /// before it began, and no detach started before it ended.
    pub fn must_exist(&self, t0: Duration, t1: Duration) -> impl Iterator<Item = &Ep> {
        self.eps.values().filter(move |e| {
            e.acked_at.is_some_and(|a| a < t0)
                && e.detach_from.is_none_or(|d| d > t1)
                && matches!(
                    e.state,
                    EpState::Live | EpState::Detaching | EpState::Detached
                )
        })
    }

    /// Endpoints that must be gone for a snapshot read over `[t0, _]`: detached before.
    pub fn must_be_gone(&self, t0: Duration) -> impl Iterator<Item = &Ep> {
        self.eps
            .values()
            .filter(move |e| e.detached_at.is_some_and(|d| d < t0))
    }

    /// Live endpoints now, by network.
    pub fn live_by_net(&self) -> BTreeMap<String, Vec<Ep>> {
        let mut out: BTreeMap<String, Vec<Ep>> = BTreeMap::new();
        for e in self.eps.values().filter(|e| e.state == EpState::Live) {
            out.entry(e.net.clone()).or_default().push(e.clone());
        }
        out
    }

    /// Live networks the workload attaches to.
    pub fn attachable(&self) -> Vec<String> {
        self.nets
            .values()
            .filter(|n| n.state == NetState::Live && n.attachable)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Counts of endpoints per state (for the report).
    pub fn ep_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in self.eps.values() {
            *m.entry(format!("{:?}", e.state).to_lowercase())
                .or_insert(0) += 1;
        }
        m
    }
}
