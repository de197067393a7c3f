//! The fault schedule of a chaos run: which faults, when, against what. Pure and seeded: the
//! same seed and length give the same schedule, byte for byte, on any machine.
//!
//! Every kind of fault appears at least once (a run too short for one keeps its faults and
//! runs long); longer runs get more of each, spread over the run (one instance per equal
//! slot of the run, at a random point of its slot), so instances of different kinds overlap
//! at random. Two member replacements never overlap: with a second member stopped for good
//! the cluster would lose its quorum with no way back short of disaster recovery.

use std::{fmt, time::Duration};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// An operation an agent is killed in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// `overlayctl attach`.
    Attach,
    /// `overlayctl detach`.
    Detach,
    /// `overlayctl network create`.
    NetworkCreate,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Attach => "attach",
            Op::Detach => "detach",
            Op::NetworkCreate => "network create",
        })
    }
}

/// What is deleted by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deletion {
    /// A container's overlay interface (`eth0`), inside the container.
    ContainerIface,
    /// The host end of a container's veth pair (takes the container end with it).
    HostIface,
    /// The network's vxlan device (kernel: `vxlan0` in the sandbox; eBPF: `ovl_vx0`).
    Vxlan,
    /// A remote peer's FDB entry (kernel datapath).
    Fdb,
    /// A remote peer's neighbour entry (kernel datapath).
    Neigh,
    /// A remote VTEP's flood entry, the all-zeros FDB entry (kernel datapath).
    Flood,
}

impl Deletion {
    /// Every kind, in schedule order.
    pub const ALL: [Deletion; 6] = [
        Deletion::ContainerIface,
        Deletion::HostIface,
        Deletion::Vxlan,
        Deletion::Fdb,
        Deletion::Neigh,
        Deletion::Flood,
    ];
}

impl fmt::Display for Deletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Deletion::ContainerIface => "container interface",
            Deletion::HostIface => "host end of a container veth",
            Deletion::Vxlan => "vxlan device",
            Deletion::Fdb => "FDB entry",
            Deletion::Neigh => "neighbour entry",
            Deletion::Flood => "flood entry",
        })
    }
}

/// Which etcd a pause stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PauseScope {
    /// Every member: the KV hangs (connections stay open, nothing answers).
    All,
    /// The leader only: the others elect a new one while it hangs.
    Leader,
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// `kill -9` of the etcd leader; restarted on its data dir after `down`.
    KillLeader {
        /// How long it stays down.
        down: Duration,
    },
    /// A member stopped for good (`kill -9`); after `down` it is removed from the cluster
    /// (`etcdctl member remove`) and a new member with a fresh data dir takes its address
    /// (`etcdctl member add`).
    ReplaceMember {
        /// Which running member (index among the running ones, modulo their number).
        pick: usize,
        /// How long the cluster runs without it before the replacement.
        down: Duration,
    },
    /// The host's underlay link goes down (its port on the underlay bridge) for `dur`.
    CutHost {
        /// Host index.
        host: usize,
        /// How long.
        dur: Duration,
    },
    /// `kill -9` of a host's agent while an operation of its is in flight; the agent is
    /// started again after `down` and the operation is retried until it has an answer.
    KillAgent {
        /// Host index.
        host: usize,
        /// The operation in flight.
        during: Op,
        /// When the kill lands, as a fraction of the operation's usual duration on that host.
        at: f64,
        /// How long the agent stays down.
        down: Duration,
        /// How the user settles an operation left without an answer: asks again (`true`) or
        /// undoes it (`false`: detach, remove the network).
        retry: bool,
    },
    /// `SIGSTOP` of etcd for `dur`, then `SIGCONT`.
    PauseEtcd {
        /// Which members.
        scope: PauseScope,
        /// How long.
        dur: Duration,
    },
    /// An interface or an entry deleted by hand.
    DeleteByHand {
        /// Host index.
        host: usize,
        /// What.
        what: Deletion,
        /// Which one (index among the candidates found then, modulo their number).
        pick: usize,
    },
    /// The host's state dir filesystem (its own small tmpfs) filled to the last byte for
    /// `dur`, then emptied again.
    FillStateDir {
        /// Host index.
        host: usize,
        /// How long it stays full.
        dur: Duration,
    },
}

/// The kinds of fault, for counting and for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// [`Fault::KillLeader`].
    KillLeader,
    /// [`Fault::ReplaceMember`].
    ReplaceMember,
    /// [`Fault::CutHost`].
    CutHost,
    /// [`Fault::KillAgent`] during an attach.
    KillAgentAttach,
    /// [`Fault::KillAgent`] during a detach.
    KillAgentDetach,
    /// [`Fault::KillAgent`] during a network create.
    KillAgentCreate,
    /// [`Fault::PauseEtcd`].
    PauseEtcd,
    /// [`Fault::DeleteByHand`].
    DeleteByHand,
    /// [`Fault::FillStateDir`].
    FillStateDir,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 9] = [
        Kind::KillLeader,
        Kind::ReplaceMember,
        Kind::CutHost,
        Kind::KillAgentAttach,
        Kind::KillAgentDetach,
        Kind::KillAgentCreate,
        Kind::PauseEtcd,
        Kind::DeleteByHand,
        Kind::FillStateDir,
    ];

    /// One instance per this much of the run (at least one per run).
    fn every(self) -> Duration {
        let s = match self {
            Kind::KillLeader => 180,
            Kind::ReplaceMember => 360,
            Kind::CutHost => 240,
            Kind::KillAgentAttach | Kind::KillAgentDetach | Kind::KillAgentCreate => 120,
            Kind::PauseEtcd => 360,
            Kind::DeleteByHand => 30,
            Kind::FillStateDir => 300,
        };
        Duration::from_secs(s)
    }
}

impl Fault {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Fault::KillLeader { .. } => Kind::KillLeader,
            Fault::ReplaceMember { .. } => Kind::ReplaceMember,
            Fault::CutHost { .. } => Kind::CutHost,
            Fault::KillAgent { during, .. } => match during {
                Op::Attach => Kind::KillAgentAttach,
                Op::Detach => Kind::KillAgentDetach,
                Op::NetworkCreate => Kind::KillAgentCreate,
            },
            Fault::PauseEtcd { .. } => Kind::PauseEtcd,
            Fault::DeleteByHand { .. } => Kind::DeleteByHand,
            Fault::FillStateDir { .. } => Kind::FillStateDir,
        }
    }

    /// How long it disturbs, as planned (the time it takes to inject and undo comes on top).
    pub fn planned(&self) -> Duration {
        match self {
            Fault::KillLeader { down } => *down,
            // Removal, addition and the new member's catch-up take a few seconds more.
            Fault::ReplaceMember { down, .. } => *down + Duration::from_secs(10),
            Fault::CutHost { dur, .. } | Fault::PauseEtcd { dur, .. } => *dur,
            Fault::FillStateDir { dur, .. } => *dur,
            Fault::KillAgent { down, .. } => *down + Duration::from_secs(3),
            Fault::DeleteByHand { .. } => Duration::ZERO,
        }
    }
}

impl Fault {
    /// Every tag [`Fault::tag`] gives, for `--without`.
    pub const TAGS: [&'static str; 15] = [
        "kill-leader",
        "replace-member",
        "cut-host",
        "kill-agent-attach",
        "kill-agent-detach",
        "kill-agent-create",
        "pause-all",
        "pause-leader",
        "delete-container-iface",
        "delete-host-iface",
        "delete-vxlan",
        "delete-fdb",
        "delete-neigh",
        "delete-flood",
        "fill-state-dir",
    ];

    /// A short name of what it does, finer than its [`Kind`].
    pub fn tag(&self) -> &'static str {
        match self {
            Fault::KillLeader { .. } => "kill-leader",
            Fault::ReplaceMember { .. } => "replace-member",
            Fault::CutHost { .. } => "cut-host",
            Fault::KillAgent { during, .. } => match during {
                Op::Attach => "kill-agent-attach",
                Op::Detach => "kill-agent-detach",
                Op::NetworkCreate => "kill-agent-create",
            },
            Fault::PauseEtcd { scope, .. } => match scope {
                PauseScope::All => "pause-all",
                PauseScope::Leader => "pause-leader",
            },
            Fault::DeleteByHand { what, .. } => match what {
                Deletion::ContainerIface => "delete-container-iface",
                Deletion::HostIface => "delete-host-iface",
                Deletion::Vxlan => "delete-vxlan",
                Deletion::Fdb => "delete-fdb",
                Deletion::Neigh => "delete-neigh",
                Deletion::Flood => "delete-flood",
            },
            Fault::FillStateDir { .. } => "fill-state-dir",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = |i: &usize| format!("h{}", i + 1);
        match self {
            Fault::KillLeader { down } => {
                write!(f, "kill -9 the etcd leader, restart it after {down:?}")
            }
            Fault::ReplaceMember { pick, down } => write!(
                f,
                "stop etcd member #{pick} for good, replace it (member remove/add, fresh data dir) after {down:?}"
            ),
            Fault::CutHost { host, dur } => {
                write!(f, "cut {} off the underlay for {dur:?}", h(host))
            }
            Fault::KillAgent {
                host,
                during,
                at,
                down,
                retry,
            } => write!(
                f,
                "kill -9 {}'s agent {:.0}% into `{during}`, restart it after {down:?}; the user then {}",
                h(host),
                at * 100.0,
                if *retry { "asks again" } else { "undoes it" }
            ),
            Fault::PauseEtcd { scope, dur } => write!(
                f,
                "SIGSTOP {} for {dur:?}",
                match scope {
                    PauseScope::All => "every etcd member",
                    PauseScope::Leader => "the etcd leader",
                }
            ),
            Fault::DeleteByHand { host, what, pick } => {
                write!(f, "delete a {what} on {} by hand (pick {pick})", h(host))
            }
            Fault::FillStateDir { host, dur } => {
                write!(f, "fill {}'s state dir filesystem for {dur:?}", h(host))
            }
        }
    }
}

/// One fault at its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    /// Number in the schedule (in time order, from 1).
    pub id: usize,
    /// When it starts, from the start of the run.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

/// The durations of the faults whose length the issue fixes.
#[derive(Debug, Clone, Copy)]
pub struct Lengths {
    /// A host cut off the underlay.
    pub cut: Duration,
    /// etcd paused.
    pub pause: Duration,
}

impl Default for Lengths {
    fn default() -> Self {
        Lengths {
            cut: Duration::from_secs(30),
            pause: Duration::from_secs(60),
        }
    }
}

/// A schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The seed it came from.
    pub seed: u64,
    /// The run's length.
    pub length: Duration,
    /// The faults, by start time.
    pub faults: Vec<Planned>,
}

/// Faults start this long into the run: the workload has endpoints to disturb by then.
pub const WARMUP: Duration = Duration::from_secs(10);

/// The schedule of a run of `length` over `hosts` hosts from `seed`.
pub fn generate(seed: u64, length: Duration, hosts: usize, lengths: Lengths) -> Schedule {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let span = length.saturating_sub(WARMUP);
    let mut faults: Vec<(Duration, Fault)> = Vec::new();
    for kind in Kind::ALL {
        let n = ((span.as_secs_f64() / kind.every().as_secs_f64()).round() as usize).max(1);
        let slot = span / n as u32;
        for j in 0..n {
            let fault = make(kind, j, hosts, lengths, &mut rng);
            // Start somewhere in the slot so that the fault ends by the end of its slot (or
            // at the slot's start when it is longer than the slot).
            let room = slot.saturating_sub(fault.planned());
            let offset = room.mul_f64(rng.random_range(0.0..1.0));
            let at = WARMUP + slot * j as u32 + offset;
            faults.push((round_ms(at), fault));
        }
    }
    faults.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.kind().cmp(&b.1.kind())));
    Schedule {
        seed,
        length,
        faults: faults
            .into_iter()
            .enumerate()
            .map(|(i, (at, fault))| Planned {
                id: i + 1,
                at,
                fault,
            })
            .collect(),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn secs(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo * 1000..=hi * 1000))
}

fn make(kind: Kind, j: usize, hosts: usize, lengths: Lengths, rng: &mut ChaCha8Rng) -> Fault {
    let host = rng.random_range(0..hosts);
    let at = (rng.random_range(0..1000) as f64) / 1000.0;
    let down = Duration::from_millis(rng.random_range(500..=6000));
    let retry = rng.random_bool(0.5);
    match kind {
        Kind::KillLeader => Fault::KillLeader {
            down: secs(rng, 2, 15),
        },
        Kind::ReplaceMember => Fault::ReplaceMember {
            pick: rng.random_range(0..3),
            down: secs(rng, 10, 40),
        },
        Kind::CutHost => Fault::CutHost {
            host,
            dur: lengths.cut,
        },
        Kind::KillAgentAttach => Fault::KillAgent {
            host,
            during: Op::Attach,
            at,
            down,
            retry,
        },
        Kind::KillAgentDetach => Fault::KillAgent {
            host,
            during: Op::Detach,
            at,
            down,
            retry,
        },
        Kind::KillAgentCreate => Fault::KillAgent {
            host,
            during: Op::NetworkCreate,
            at,
            down,
            retry,
        },
        Kind::PauseEtcd => Fault::PauseEtcd {
            // The first pause stops the whole cluster (a KV outage); later ones alternate.
            scope: if j.is_multiple_of(2) {
                PauseScope::All
            } else {
                PauseScope::Leader
            },
            dur: lengths.pause,
        },
        Kind::DeleteByHand => Fault::DeleteByHand {
            host,
            // Cycle through every kind of deletion, from a random start.
            what: Deletion::ALL
                [(j + rng.random_range(0..Deletion::ALL.len())) % Deletion::ALL.len()],
            pick: rng.random_range(0..64),
        },
        Kind::FillStateDir => Fault::FillStateDir {
            host,
            dur: secs(rng, 15, 40),
        },
    }
}

impl Schedule {
    /// The same schedule without the faults tagged `tags` (the others keep their numbers and
    /// times). An unknown tag is an error.
    pub fn without(mut self, tags: &[String]) -> Result<Schedule, String> {
        for t in tags {
            if !Fault::TAGS.contains(&t.as_str()) {
                return Err(format!(
                    "unknown fault {t:?} (known: {})",
                    Fault::TAGS.join(", ")
                ));
            }
        }
        self.faults
            .retain(|p| !tags.iter().any(|t| t == p.fault.tag()));
        Ok(self)
    }

    /// When the last fault ends, as planned.
    pub fn planned_end(&self) -> Duration {
        self.faults
            .iter()
            .map(|p| p.at + p.fault.planned())
            .max()
            .unwrap_or_default()
    }

    /// How many faults of each kind.
    pub fn counts(&self) -> Vec<(Kind, usize)> {
        Kind::ALL
            .iter()
            .map(|k| {
                (
                    *k,
                    self.faults.iter().filter(|p| p.fault.kind() == *k).count(),
                )
            })
            .collect()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "schedule of seed {} over {:?} ({} faults):",
            self.seed,
            self.length,
            self.faults.len()
        )?;
        for p in &self.faults {
            writeln!(
                f,
                "  #{:<3} t+{:>8.1}s  {}",
                p.id,
                p.at.as_secs_f64(),
                p.fault
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(m: u64) -> Duration {
        Duration::from_secs(60 * m)
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let a = generate(7, minutes(30), 3, Lengths::default());
        let b = generate(7, minutes(30), 3, Lengths::default());
        assert_eq!(a, b);
        assert_eq!(a.to_string(), b.to_string());
        let c = generate(8, minutes(30), 3, Lengths::default());
        assert_ne!(a.faults, c.faults);
    }

    #[test]
    fn pinned_schedule_of_a_seed() {
        // The schedule of CI's short run (tests/tests/chaos.rs) is part of its record: a
        // change to the generator must show up here.
        let s = generate(15, Duration::from_secs(90), 3, Lengths::default());
        let want = "\
schedule of seed 15 over 90s (11 faults):
  #1   t+    13.5s  SIGSTOP every etcd member for 60s
  #2   t+    20.5s  cut h1 off the underlay for 30s
  #3   t+    25.8s  fill h1's state dir filesystem for 37.292s
  #4   t+    28.2s  delete a container interface on h2 by hand (pick 22)
  #5   t+    34.8s  stop etcd member #2 for good, replace it (member remove/add, fresh data dir) after 20.32s
  #6   t+    38.7s  kill -9 the etcd leader, restart it after 2.028s
  #7   t+    38.8s  kill -9 h3's agent 51% into `attach`, restart it after 3.781s; the user then asks again
  #8   t+    44.9s  kill -9 h1's agent 77% into `detach`, restart it after 5.146s; the user then undoes it
  #9   t+    50.9s  delete a host end of a container veth on h1 by hand (pick 32)
  #10  t+    66.0s  delete a vxlan device on h3 by hand (pick 3)
  #11  t+    82.1s  kill -9 h1's agent 68% into `network create`, restart it after 4.104s; the user then asks again
";
        assert_eq!(s.to_string(), want);
    }

    #[test]
    fn every_kind_at_least_once_even_in_a_short_run() {
        for seed in 0..50 {
            let s = generate(seed, Duration::from_secs(60), 3, Lengths::default());
            for (k, n) in s.counts() {
                assert!(n >= 1, "seed {seed}: no {k:?}\n{s}");
            }
        }
    }

    #[test]
    fn long_runs_spread_faults_and_keep_their_lengths() {
        let s = generate(3, minutes(30), 3, Lengths::default());
        let counts: std::collections::BTreeMap<_, _> = s.counts().into_iter().collect();
        assert_eq!(counts[&Kind::DeleteByHand], 60);
        assert_eq!(counts[&Kind::PauseEtcd], 5);
        assert_eq!(counts[&Kind::ReplaceMember], 5);
        for p in &s.faults {
            assert!(p.at >= WARMUP && p.at < s.length, "{p:?}");
            match &p.fault {
                Fault::CutHost { dur, host } => {
                    assert_eq!(*dur, Duration::from_secs(30));
                    assert!(*host < 3);
                }
                Fault::PauseEtcd { dur, .. } => assert_eq!(*dur, Duration::from_secs(60)),
                Fault::KillAgent { at, host, .. } => {
                    assert!((0.0..1.0).contains(at));
                    assert!(*host < 3);
                }
                _ => {}
            }
        }
        assert!(s.planned_end() <= s.length, "{s}");
        // Both pause scopes and every deletion kind are exercised.
        for scope in [PauseScope::All, PauseScope::Leader] {
            assert!(
                s.faults
                    .iter()
                    .any(|p| matches!(p.fault, Fault::PauseEtcd { scope: x, .. } if x == scope))
            );
        }
        for d in Deletion::ALL {
            assert!(
                s.faults
                    .iter()
                    .any(|p| matches!(p.fault, Fault::DeleteByHand { what, .. } if what == d)),
                "no {d:?}"
            );
        }
    }

    #[test]
    fn without_leaves_the_rest_as_it_was() {
        let s = generate(15, Duration::from_secs(90), 3, Lengths::default());
        let w = s
            .clone()
            .without(&["delete-container-iface".into(), "delete-host-iface".into()])
            .unwrap();
        assert_eq!(w.faults.len(), s.faults.len() - 2);
        for p in &w.faults {
            assert!(s.faults.contains(p));
            assert!(
                !p.fault.tag().starts_with("delete-container")
                    && p.fault.tag() != "delete-host-iface"
            );
        }
        assert!(
            s.without(&["bogus".into()])
                .unwrap_err()
                .contains("unknown fault")
        );
        for f in Fault::TAGS {
            assert!(Fault::TAGS.iter().filter(|t| **t == f).count() == 1);
        }
    }

    #[test]
    fn member_replacements_never_overlap() {
        for seed in 0..200 {
            let s = generate(seed, minutes(30), 3, Lengths::default());
            let reps: Vec<&Planned> = s
                .faults
                .iter()
                .filter(|p| p.fault.kind() == Kind::ReplaceMember)
                .collect();
            for w in reps.windows(2) {
                assert!(
                    w[0].at + w[0].fault.planned() <= w[1].at,
                    "seed {seed}: {:?} overlaps {:?}",
                    w[0],
                    w[1]
                );
            }
        }
    }

    #[test]
    fn faults_overlap_in_a_long_run() {
        let s = generate(11, minutes(30), 3, Lengths::default());
        let overlapping = s
            .faults
            .windows(2)
            .filter(|w| w[0].at + w[0].fault.planned() > w[1].at)
            .count();
        assert!(overlapping > 5, "{s}");
    }
}
