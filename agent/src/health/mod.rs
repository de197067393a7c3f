//! The health matrix: does VXLAN flow between every two hosts? Each agent keeps a health
//! endpoint on a network of its own (`ovl-health`, never in the KV: every host derives it),
//! programmed by the reconciler like any endpoint, on either datapath. The agent pings every
//! other host's health endpoint through the overlay, so a probe crosses the real path:
//! the local bridge or BPF program, the encapsulation, the underlay, the remote VXLAN
//! admission, decapsulation and delivery, and the same way back. Beside each ping goes an
//! ICMP timestamp request, so each cell also carries the peer's clock offset (`doctor`'s
//! clocks check). What each host finds is its row of the matrix in the KV
//! (`/ovl/v1/health/<host>`, on its lease); `overlayctl doctor` and `overlayctl graph` read
//! the rows.
//!
//! Addresses need no allocation: a host's health address is its VTEP's low 22 bits in
//! [`SUBNET`] (100.64.0.0/10), unique wherever the VTEPs of a cluster share their upper bits
//! (one /10 or smaller: any usual underlay). Two hosts whose addresses collide anyway are
//! left out of the matrix and named by `doctor`. The network lives only in the health
//! namespaces, so it clashes with no overlay or host address.
//!
//! - this module: the network, the addresses and the per-peer state machine (pure);
//! - [`probe`]: the [`HealthProbe`] seam and its ICMP implementation in the health netns.

pub mod probe;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use ovl_core::{ClusterView, HealthRow, NetworkRecord, PeerHealth};

pub use probe::{HealthProbe, IcmpHealthProbe, Reply};

/// Name of the health network (refused for user networks).
pub const NETWORK: &str = "ovl-health";
/// Its VNI, the last one (refused for user networks).
pub const VNI: u32 = ovl_model::MAX_VNI;
/// Endpoint id of a host's health endpoint.
pub const ENDPOINT: &str = "health";
/// Consecutive unanswered rounds before a peer counts as down (one lost probe is not).
pub const DOWN_AFTER: u32 = 2;
/// How far a peer's measured clock offset moves (ms) before the row is written again: the
/// offset jitters by a round trip's asymmetry, and a row written every round would wake
/// every agent's watch. Well below the 1 s `doctor` warns at.
pub const SKEW_STEP_MS: i64 = 250;

/// Where this host's health namespace is mounted (kept across agent restarts, like the
/// datapath's sandboxes).
pub fn netns_path(run_dir: &std::path::Path) -> std::path::PathBuf {
    run_dir.join("health").join("netns")
}

/// The subnet health addresses live in.
pub fn subnet() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(100, 64, 0, 0), 10).expect("valid")
}

/// The health network's record, the same on every host.
pub fn record() -> NetworkRecord {
    NetworkRecord {
        name: NETWORK.into(),
        vni: VNI,
        subnet: subnet(),
        gateway: Ipv4Addr::new(100, 64, 0, 1),
        internal: true,
        encrypted: false,
        mtu: None,
        labels: Default::default(),
        options: Default::default(),
    }
}

/// The health address of the host with VTEP `vtep`; `None` when it would be the subnet's
/// network or broadcast address.
pub fn address(vtep: Ipv4Addr) -> Option<Ipv4Addr> {
    let s = subnet();
    let host_bits = u32::from(vtep) & !u32::from(s.mask());
    let ip = Ipv4Addr::from(u32::from(s.network()) | host_bits);
    (ip != s.network() && ip != s.broadcast()).then_some(ip)
}

/// Hosts of `view` with a health address no other host shares, by id; the others are the
/// collisions `doctor` names.
pub fn addresses(view: &ClusterView) -> (BTreeMap<String, Ipv4Addr>, BTreeSet<String>) {
    let mut by_ip: BTreeMap<Ipv4Addr, Vec<&str>> = BTreeMap::new();
    let mut unusable = BTreeSet::new();
    for h in view.hosts.values() {
        match address(h.vtep) {
            Some(ip) => by_ip.entry(ip).or_default().push(&h.id),
            None => {
                unusable.insert(h.id.clone());
            }
        }
    }
    let mut ok = BTreeMap::new();
    for (ip, hosts) in by_ip {
        if let [one] = hosts.as_slice() {
            ok.insert(one.to_string(), ip);
        } else {
            unusable.extend(hosts.iter().map(|h| h.to_string()));
        }
    }
    (ok, unusable)
}

/// What one probe round found for one peer: answered (with the round trip and, when
/// measured, the clock offset) or not.
pub type Answer = Option<Reply>;

/// The state of this host's row: per peer, answered or down after [`DOWN_AFTER`] silent
/// rounds, when that last flipped, and the peer's clock offset as last published (it
/// changes the row only when it moves by more than [`SKEW_STEP_MS`], or with a flip).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    peers: BTreeMap<String, Cell>,
}

#[derive(Debug, Clone)]
struct Cell {
    ok: bool,
    since: u64,
    misses: u32,
    rtt: Option<std::time::Duration>,
    skew_ms: Option<i64>,
}

impl Tracker {
    /// Takes one round's answers (peers not in `round` are forgotten: gone from the cluster
    /// or no longer reachable by design); returns whether the row changed, so it is written
    /// only then.
    pub fn observe(&mut self, round: &BTreeMap<String, Answer>, now: u64) -> bool {
        let before = self.row("").peers;
        self.peers.retain(|p, _| round.contains_key(p));
        for (peer, answer) in round {
            let c = self.peers.entry(peer.clone()).or_insert(Cell {
                // A first silent round says little (the peer's entries may be new): a peer
                // shows as down only once it missed DOWN_AFTER rounds.
                ok: answer.is_some(),
                since: now,
                misses: 0,
                rtt: None,
                skew_ms: None,
            });
            c.rtt = answer.map(|a| a.rtt);
            if let Some(a) = answer {
                c.misses = 0;
                let flipped = !c.ok;
                if flipped {
                    c.ok = true;
                    c.since = now;
                }
                // A missing measurement keeps the last one; a new one replaces it when it
                // is the first, moved by more than a step, or the row is written anyway.
                if let Some(m) = a.skew_ms
                    && (flipped || c.skew_ms.is_none_or(|last| (m - last).abs() > SKEW_STEP_MS))
                {
                    c.skew_ms = Some(m);
                }
            } else {
                c.misses += 1;
                if c.ok && c.misses >= DOWN_AFTER {
                    c.ok = false;
                    c.since = now;
                }
            }
        }
        self.row("").peers != before
    }

    /// The row to publish: cells of peers still in their first silent rounds are left out
    /// until they are known.
    pub fn row(&self, host: &str) -> HealthRow {
        HealthRow {
            host: host.to_string(),
            peers: self
                .peers
                .iter()
                .filter(|(_, c)| c.ok || c.misses >= DOWN_AFTER)
                .map(|(p, c)| {
                    (
                        p.clone(),
                        PeerHealth {
                            ok: c.ok,
                            since: c.since,
                            skew_ms: c.skew_ms,
                        },
                    )
                })
                .collect(),
        }
    }

    /// The last round trip to each peer that answered it.
    pub fn rtts(&self) -> BTreeMap<String, std::time::Duration> {
        self.peers
            .iter()
            .filter_map(|(p, c)| c.rtt.map(|r| (p.clone(), r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ovl_core::HostRecord;

    use super::*;

    #[test]
    fn the_address_keeps_the_vteps_low_bits() {
        assert_eq!(
            address(Ipv4Addr::new(198, 18, 0, 11)),
            Some(Ipv4Addr::new(100, 82, 0, 11))
        );
        assert_eq!(
            address(Ipv4Addr::new(10, 0, 3, 7)),
            Some(Ipv4Addr::new(100, 64, 3, 7))
        );
        assert!(subnet().contains(address(Ipv4Addr::new(192, 168, 1, 2)).unwrap()));
        // Low bits all zero or all one: the subnet's own addresses, unusable.
        assert_eq!(address(Ipv4Addr::new(10, 0, 0, 0)), None);
        assert_eq!(address(Ipv4Addr::new(10, 63, 255, 255)), None);
        let r = record();
        assert_eq!(
            (r.name.as_str(), r.vni, r.internal),
            (NETWORK, 16_777_215, true)
        );
    }

    fn host(id: &str, vtep: [u8; 4]) -> HostRecord {
        HostRecord {
            id: id.into(),
            vtep: vtep.into(),
            underlay_mtu: 1500,
            datapath: "kernel".into(),
            version: "t".into(),
            gw_subnet: None,
            wg: None,
        }
    }

    #[test]
    fn colliding_hosts_are_left_out_and_named() {
        let mut v = ClusterView::default();
        for (id, vtep) in [
            ("h1", [198, 18, 0, 11]),
            ("h2", [198, 18, 0, 12]),
            // Same low 22 bits as h1 in another /10.
            ("h3", [10, 18, 0, 11]),
            ("h4", [10, 0, 0, 0]),
        ] {
            v.hosts.insert(id.into(), host(id, vtep));
        }
        let (ok, bad) = addresses(&v);
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["h2"]);
        assert_eq!(bad.into_iter().collect::<Vec<_>>(), ["h1", "h3", "h4"]);
    }

    fn round(cells: &[(&str, bool)]) -> BTreeMap<String, Answer> {
        cells
            .iter()
            .map(|(p, ok)| {
                let reply = Reply {
                    rtt: Duration::from_millis(1),
                    skew_ms: None,
                };
                (p.to_string(), ok.then_some(reply))
            })
            .collect()
    }

    #[test]
    fn a_peer_goes_down_after_two_silent_rounds_and_up_after_one_answer() {
        let mut t = Tracker::default();
        assert!(t.observe(&round(&[("h2", true), ("h3", false)]), 100));
        // h3 is not known yet after one silent round: left out of the row.
        let r = t.row("h1");
        assert_eq!(r.peers.len(), 1);
        assert!(r.peers["h2"].ok);
        assert_eq!(t.rtts().len(), 1);

        // One lost probe to h2 flips nothing; h3's second silent round shows it down.
        assert!(t.observe(&round(&[("h2", false), ("h3", false)]), 102));
        let r = t.row("h1");
        assert!(r.peers["h2"].ok);
        assert_eq!(
            r.peers["h3"],
            PeerHealth {
                ok: false,
                since: 100,
                skew_ms: None
            }
        );
        assert!(t.observe(&round(&[("h2", false), ("h3", false)]), 104));
        assert_eq!(
            t.row("h1").peers["h2"],
            PeerHealth {
                ok: false,
                since: 104,
                skew_ms: None
            }
        );
        // Nothing changes: nothing to write.
        assert!(!t.observe(&round(&[("h2", false), ("h3", false)]), 106));
        assert!(t.observe(&round(&[("h2", true), ("h3", false)]), 108));
        assert_eq!(
            t.row("h1").peers["h2"],
            PeerHealth {
                ok: true,
                since: 108,
                skew_ms: None
            }
        );
        // A peer gone from the round is forgotten, and that is a change.
        assert!(t.observe(&round(&[("h2", true)]), 110));
        assert_eq!(t.row("h1").peers.len(), 1);
    }

    fn skewed(ms: Option<i64>) -> BTreeMap<String, Answer> {
        let reply = Reply {
            rtt: Duration::from_millis(1),
            skew_ms: ms,
        };
        [("h2".to_string(), Some(reply))].into()
    }

    #[test]
    fn the_clock_offset_is_written_only_when_it_moves_by_more_than_a_step() {
        let mut t = Tracker::default();
        assert!(t.observe(&skewed(Some(3)), 100));
        assert_eq!(t.row("h1").peers["h2"].skew_ms, Some(3));
        // Jitter within the step, or a round without a measurement: nothing to write, and
        // the row keeps the last value.
        assert!(!t.observe(&skewed(Some(3 + SKEW_STEP_MS)), 102));
        assert!(!t.observe(&skewed(Some(3 - SKEW_STEP_MS)), 104));
        assert!(!t.observe(&skewed(None), 106));
        assert_eq!(t.row("h1").peers["h2"].skew_ms, Some(3));
        // A clock that stepped: written.
        assert!(t.observe(&skewed(Some(1_400)), 108));
        assert_eq!(t.row("h1").peers["h2"].skew_ms, Some(1_400));
        // Down and back: the flip writes the row, with the offset measured then.
        assert!(!t.observe(&round(&[("h2", false)]), 110));
        assert!(t.observe(&round(&[("h2", false)]), 112));
        assert_eq!(
            t.row("h1").peers["h2"].skew_ms,
            Some(1_400),
            "kept while down"
        );
        assert!(t.observe(&skewed(Some(1_450)), 114));
        assert_eq!(
            t.row("h1").peers["h2"],
            PeerHealth {
                ok: true,
                since: 114,
                skew_ms: Some(1_450)
            }
        );
        // A peer whose first answers carry no measurement gets one when it comes.
        let mut t = Tracker::default();
        assert!(t.observe(&skewed(None), 100));
        assert_eq!(t.row("h1").peers["h2"].skew_ms, None);
        assert!(t.observe(&skewed(Some(-20)), 102));
        assert_eq!(t.row("h1").peers["h2"].skew_ms, Some(-20));
    }
}
