//! Agent down is not host down: which hosts' entries this host keeps. Pure.
//!
//! A host's liveness record lives on a lease its agent renews; it vanishes when the agent
//! stops (a restart, an upgrade, a crash) as surely as when the host dies. So a host whose
//! lease is gone but whose record remains is probed at the datapath level (does its VTEP
//! still answer: the host replies to ICMP echo and its VXLAN port is open), and its entries
//! stay programmed for as long as it answers. Only a host that stops answering is dropped:
//! [`Liveness::DOWN_AFTER`] after the lease expired or after its last answer, whichever is
//! later. A dead host is therefore cleaned up within lease TTL + `DOWN_AFTER` (+ one probe
//! interval), and an agent restart of any length keeps traffic flowing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ovl_core::ClusterView;

/// What a probe of a host's VTEP found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The host answered and its VXLAN port is open: its datapath is in place.
    Answered,
    /// The host answered but its VXLAN port is closed (ICMP port unreachable): no datapath.
    NoDatapath,
    /// No answer at all.
    Silent,
}

/// How a host stands, as shown by `overlayctl hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Its agent holds its lease.
    Alive,
    /// Its agent is down but its datapath answers: its entries are kept.
    AgentDown,
    /// Gone: its entries are dropped until its agent comes back.
    Dead,
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostState::Alive => "alive",
            HostState::AgentDown => "agent down, datapath answering",
            HostState::Dead => "dead",
        })
    }
}

#[derive(Debug, Clone)]
struct Seen {
    /// When this host was first seen without its lease (this time round).
    missing_since: Instant,
    /// The last probe that found its datapath in place.
    last_answer: Option<Instant>,
    /// The last probe's result.
    last: Option<Probe>,
}

/// The probe history of hosts without a lease.
#[derive(Debug, Default, Clone)]
pub struct Liveness {
    seen: BTreeMap<String, Seen>,
}

impl Liveness {
    /// How long a host without a lease is kept without an answer from its datapath.
    pub const DOWN_AFTER: Duration = Duration::from_secs(3);
    /// How often such hosts are probed.
    pub const PROBE_EVERY: Duration = Duration::from_secs(1);

    /// Follows the view: starts the clock for hosts that lost their lease, forgets hosts that
    /// got it back or whose record is gone.
    pub fn observe(&mut self, view: &ClusterView, now: Instant) {
        self.seen
            .retain(|h, _| view.hosts.contains_key(h) && !view.is_alive(h));
        for h in view.hosts.keys().filter(|h| !view.is_alive(h)) {
            self.seen.entry(h.clone()).or_insert(Seen {
                missing_since: now,
                last_answer: None,
                last: None,
            });
        }
    }

    /// The hosts to probe now, with their VTEPs (never `me`).
    pub fn to_probe(&self, view: &ClusterView, me: &str) -> Vec<(String, Ipv4Addr)> {
        self.seen
            .keys()
            .filter(|h| h.as_str() != me)
            .filter_map(|h| view.hosts.get(h).map(|r| (h.clone(), r.vtep)))
            .collect()
    }

    /// Records a probe result.
    pub fn record(&mut self, host: &str, probe: Probe, now: Instant) {
        if let Some(s) = self.seen.get_mut(host) {
            s.last = Some(probe);
            if probe == Probe::Answered {
                s.last_answer = Some(now);
            }
        }
    }

    /// How `host` stands at `now`.
    pub fn state(&self, view: &ClusterView, host: &str, now: Instant) -> HostState {
        if view.is_alive(host) {
            return HostState::Alive;
        }
        let Some(s) = self.seen.get(host) else {
            return HostState::Dead;
        };
        // A datapath found gone ends the grace at once.
        if s.last == Some(Probe::NoDatapath) {
            return HostState::Dead;
        }
        let since = s
            .last_answer
            .map_or(s.missing_since, |a| a.max(s.missing_since));
        if now.saturating_duration_since(since) < Self::DOWN_AFTER {
            HostState::AgentDown
        } else {
            HostState::Dead
        }
    }

    /// Hosts without a lease whose entries are kept (agent down, datapath answering).
    pub fn grace(&self, view: &ClusterView, now: Instant) -> BTreeSet<String> {
        self.seen
            .keys()
            .filter(|h| self.state(view, h, now) == HostState::AgentDown)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_core::{AliveRecord, HostRecord};

    fn view(alive: &[&str]) -> ClusterView {
        let mut v = ClusterView::default();
        for (i, id) in ["h1", "h2", "h3"].iter().enumerate() {
            v.hosts.insert(
                id.to_string(),
                HostRecord {
                    id: id.to_string(),
                    vtep: Ipv4Addr::new(198, 18, 0, 11 + i as u8),
                    underlay_mtu: 1500,
                    datapath: "kernel".into(),
                    version: "t".into(),
                    gw_subnet: None,
                    wg: None,
                },
            );
        }
        for id in alive {
            v.alive.insert(
                id.to_string(),
                AliveRecord {
                    id: id.to_string(),
                    boot_id: "b".into(),
                    since: 0,
                },
            );
        }
        v
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_host_whose_datapath_answers_is_kept_for_as_long_as_it_answers() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        let v = view(&["h1", "h3"]);
        l.observe(&v, t0);
        assert_eq!(
            l.to_probe(&v, "h1"),
            vec![("h2".to_string(), Ipv4Addr::new(198, 18, 0, 12))]
        );
        // In grace before the first answer.
        assert_eq!(l.state(&v, "h2", t0 + S), HostState::AgentDown);
        // Answers every second for ten minutes: kept all along.
        for s in 1..600 {
            l.record("h2", Probe::Answered, t0 + S * s);
            assert_eq!(l.state(&v, "h2", t0 + S * s + S / 2), HostState::AgentDown);
        }
        assert_eq!(l.grace(&v, t0 + S * 600), ["h2".to_string()].into());
        // Then silence: dropped DOWN_AFTER after the last answer, not before.
        let last = t0 + S * 599;
        l.record("h2", Probe::Silent, last + S);
        assert_eq!(l.state(&v, "h2", last + S * 2), HostState::AgentDown);
        assert_eq!(
            l.state(&v, "h2", last + Liveness::DOWN_AFTER),
            HostState::Dead
        );
        assert!(l.grace(&v, last + Liveness::DOWN_AFTER).is_empty());
    }

    #[test]
    fn a_silent_host_is_dropped_after_the_grace_and_a_closed_port_at_once() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        let v = view(&["h1"]);
        l.observe(&v, t0);
        l.record("h2", Probe::Silent, t0 + S);
        l.record("h3", Probe::NoDatapath, t0 + S);
        assert_eq!(l.state(&v, "h2", t0 + S * 2), HostState::AgentDown);
        assert_eq!(l.state(&v, "h3", t0 + S * 2), HostState::Dead);
        assert_eq!(
            l.state(&v, "h2", t0 + Liveness::DOWN_AFTER),
            HostState::Dead
        );
    }

    #[test]
    fn a_lease_back_ends_the_probing_and_a_new_loss_starts_a_new_grace() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        let down = view(&["h1"]);
        l.observe(&down, t0);
        l.record("h2", Probe::Silent, t0 + S);
        assert_eq!(l.state(&down, "h2", t0 + S * 10), HostState::Dead);
        let up = view(&["h1", "h2", "h3"]);
        l.observe(&up, t0 + S * 11);
        assert!(l.to_probe(&up, "h1").is_empty());
        assert_eq!(l.state(&up, "h2", t0 + S * 11), HostState::Alive);
        l.observe(&down, t0 + S * 20);
        assert_eq!(l.state(&down, "h2", t0 + S * 21), HostState::AgentDown);
        // A host whose record is gone is not probed.
        let mut gone = down.clone();
        gone.hosts.remove("h3");
        l.observe(&gone, t0 + S * 22);
        assert_eq!(
            l.to_probe(&gone, "h1"),
            vec![("h2".to_string(), Ipv4Addr::new(198, 18, 0, 12))]
        );
        assert_eq!(l.state(&gone, "h3", t0 + S * 22), HostState::Dead);
    }
}
