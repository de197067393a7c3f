//! `cargo xtask chaos`: faults with invariants.
//!
//! A 3-host lab on a 3-member etcd cluster (each host's state dir on a small tmpfs of its
//! own) runs a workload that attaches, detaches and pings throughout, while a seeded,
//! reproducible [`schedule`] of faults runs in random order and overlap: the etcd leader
//! killed, a member stopped for good and replaced, a host cut off the underlay, agents
//! killed with `kill -9` in the middle of an attach, a detach or a network create, etcd
//! paused, interfaces and FDB/neighbour entries deleted by hand, a state dir filled up.
//!
//! Checked continuously (every [`CHECK_EVERY`]) and at the end (see [`check`] and
//! [`finish`]):
//! 1. no address or VNI handed out twice;
//! 2. no allocation leaked (every address claim belongs to a live endpoint record, every
//!    endpoint record's address is claimed by it; VNIs and subnets likewise);
//! 3. every live endpoint reachable from every other on its network within 10 s after the
//!    last fault (ping from the container namespaces);
//! 4. no acknowledged write lost (what an attach, detach, network create or remove answered
//!    success for is in the KV);
//! 5. no agent exit other than the injected ones (the processes, and panics in their logs).
//!
//! The pieces are public so that the end-to-end tests run each fault on its own
//! ([`World`], [`faults::inject`], [`finish::judge`]).

pub mod check;
pub mod faults;
pub mod finish;
pub mod ledger;
pub mod ops;
pub mod schedule;
pub mod workload;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::lab::{self, DatapathSel, KvKind, Lab, LabConfig, LabGuard, LabState};
use check::{LeakTracker, Snapshot};
use ledger::{Ep, EpState, Ledger, Net, NetState};
use ops::Outcome;
use schedule::Schedule;

/// How often the invariants are checked while faults run.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a leak may last while nothing is open on its owner before it counts (the agent
/// may repair records on its next passes).
pub const LEAK_GRACE: Duration = Duration::from_secs(30);
/// Every live endpoint must reach every other this soon after the last fault.
pub const REACH_WITHIN: Duration = Duration::from_secs(10);
/// The size of each host's state dir tmpfs.
pub const STATE_TMPFS: &str = "4m";

/// The invariants, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// No address or VNI handed out twice.
    Unique,
    /// No allocation leaked.
    NoLeak,
    /// Every live endpoint reachable from every other within 10 s after the last fault.
    Reachable,
    /// No acknowledged write lost.
    AckedKept,
    /// No agent exit other than the injected ones.
    NoStrayExit,
}

impl Invariant {
    /// Every invariant.
    pub const ALL: [Invariant; 5] = [
        Invariant::Unique,
        Invariant::NoLeak,
        Invariant::Reachable,
        Invariant::AckedKept,
        Invariant::NoStrayExit,
    ];

    /// The sentence the report prints.
    pub fn title(self) -> &'static str {
        match self {
            Invariant::Unique => "no address or VNI handed out twice",
            Invariant::NoLeak => "no allocation leaked",
            Invariant::Reachable => {
                "every live endpoint reachable from every other within 10 s after the last fault"
            }
            Invariant::AckedKept => "no acknowledged write lost",
            Invariant::NoStrayExit => "no agent exit other than the injected ones",
        }
    }
}

/// One violation, when it was found.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// Run time it was found at.
    pub at: Duration,
    /// What.
    pub what: String,
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Run time.
    pub at: Duration,
    /// The fault it belongs to (its schedule number), if any.
    pub fault: Option<usize>,
    /// What happened.
    pub text: String,
}

/// Ping results of the workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PingStats {
    /// Pings sent while a fault was active / answered.
    pub during_faults: (usize, usize),
    /// Pings sent while none was / answered.
    pub quiet: (usize, usize),
}

/// Operation counts of the workload and the injector: kind -> outcome word -> count.
pub type OpCounts = BTreeMap<String, BTreeMap<String, usize>>;

/// Everything a run (or a test) shares between its threads.
pub struct World {
    /// The lab; lock it only briefly (start/stop processes, read PIDs).
    pub lab: Mutex<LabGuard>,
    /// The lab's state as built (namespaces, dirs, binaries: what does not change).
    pub state: LabState,
    /// Start of the run.
    pub start: Instant,
    /// What users were told.
    pub ledger: Mutex<Ledger>,
    /// What happened, in order.
    pub timeline: Mutex<Vec<Event>>,
    /// Violations found so far.
    pub violations: Mutex<Vec<Violation>>,
    /// Faults that could not be injected or undone as planned (the run is then not valid).
    pub harness_errors: Mutex<Vec<String>>,
    /// Behaviour worth reporting that no invariant covers (a refused operation that still
    /// changed something).
    pub findings: Mutex<Vec<Event>>,
    /// One lock per host for its agent's lifecycle (kill and restart).
    pub host_locks: Vec<Mutex<()>>,
    /// Durations of successful operations per (host, kind), to aim kills mid-operation.
    pub durations: Mutex<BTreeMap<(usize, String), Vec<Duration>>>,
    /// Workload pings.
    pub pings: Mutex<PingStats>,
    /// Operation outcomes.
    pub ops: Mutex<OpCounts>,
    /// Every operation with its outcome, one line each (written to `ops.log`).
    pub oplog: Mutex<Vec<String>>,
    /// Endpoints whose interfaces a fault deleted by hand (not the agent's doing).
    pub disturbed: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Tells the workload to stop.
    pub stop: AtomicBool,
    /// Faults active now.
    pub active: AtomicUsize,
    /// When the last fault ended (run time).
    pub last_fault_end: Mutex<Duration>,
    /// For unique names.
    counter: AtomicUsize,
    /// Whether events are printed as they happen.
    pub verbose: bool,
}

/// How a lab for chaos is built.
pub fn lab_config(name: &str, datapath: DatapathSel) -> LabConfig {
    let mut cfg = LabConfig::new(name, 3);
    cfg.kv = KvKind::Etcd;
    cfg.etcd_members = 3;
    cfg.datapath = datapath;
    cfg.state_tmpfs = Some(STATE_TMPFS.into());
    cfg
}

impl World {
    /// Builds the lab and the shared state.
    pub fn new(cfg: LabConfig, verbose: bool) -> Result<World> {
        let lab = Lab::up(cfg)?;
        let state = lab.state.clone();
        let hosts = state.hosts.len();
        Ok(World {
            lab: Mutex::new(LabGuard(Some(lab))),
            state,
            start: Instant::now(),
            ledger: Mutex::new(Ledger::default()),
            timeline: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            harness_errors: Mutex::new(Vec::new()),
            findings: Mutex::new(Vec::new()),
            host_locks: (0..hosts).map(|_| Mutex::new(())).collect(),
            durations: Mutex::new(BTreeMap::new()),
            pings: Mutex::new(PingStats::default()),
            ops: Mutex::new(BTreeMap::new()),
            oplog: Mutex::new(Vec::new()),
            disturbed: Mutex::new(std::collections::BTreeSet::new()),
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            last_fault_end: Mutex::new(Duration::ZERO),
            counter: AtomicUsize::new(0),
            verbose,
        })
    }

    /// Run time now.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// A number for unique names.
    pub fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.state.hosts.len()
    }

    /// Records an event.
    pub fn event(&self, fault: Option<usize>, text: impl Into<String>) {
        let e = Event {
            at: self.now(),
            fault,
            text: brief(&text.into()),
        };
        if self.verbose {
            let f = e.fault.map(|f| format!("#{f} ")).unwrap_or_default();
            eprintln!("  t+{:>7.1}s {f}{}", e.at.as_secs_f64(), e.text);
        }
        self.timeline.lock().expect("timeline").push(e);
    }

    /// Records a violation.
    pub fn violation(&self, invariant: Invariant, what: impl Into<String>) {
        let v = Violation {
            invariant,
            at: self.now(),
            what: what.into(),
        };
        if self.verbose {
            eprintln!(
                "  t+{:>7.1}s VIOLATION ({}): {}",
                v.at.as_secs_f64(),
                invariant.title(),
                v.what
            );
        }
        self.violations.lock().expect("violations").push(v);
    }

    /// Records a fault that could not be injected or undone as planned.
    pub fn harness_error(&self, fault: Option<usize>, what: impl Into<String>) {
        let what = what.into();
        self.event(fault, format!("HARNESS ERROR: {what}"));
        self.harness_errors
            .lock()
            .expect("harness errors")
            .push(format!(
                "{}{what}",
                fault.map(|f| format!("#{f}: ")).unwrap_or_default()
            ));
    }

    /// Records a finding.
    pub fn finding(&self, text: impl Into<String>) {
        let e = Event {
            at: self.now(),
            fault: None,
            text: brief(&text.into()),
        };
        if self.verbose {
            eprintln!("  t+{:>7.1}s FINDING: {}", e.at.as_secs_f64(), e.text);
        }
        self.findings.lock().expect("findings").push(e);
    }

    /// Marks a fault's disturbance over (it counts for "after the last fault").
    pub fn fault_ended(&self) {
        let now = self.now();
        let mut l = self.last_fault_end.lock().expect("last fault end");
        if now > *l {
            *l = now;
        }
    }

    /// Counts an outcome and logs the operation.
    fn count_op(&self, host: usize, kind: &str, target: &str, o: &Outcome) {
        let detail = match o {
            Outcome::Done(_) => String::new(),
            Outcome::Refused(m) | Outcome::NotSent(m) | Outcome::Unknown(m) => {
                format!(": {}", brief(m))
            }
        };
        self.oplog.lock().expect("oplog").push(format!(
            "t+{:.3}s h{} {kind} {target}: {}{detail}",
            self.now().as_secs_f64(),
            host + 1,
            o.word()
        ));
        self.count(kind, o);
    }

    fn count(&self, kind: &str, o: &Outcome) {
        *self
            .ops
            .lock()
            .expect("ops")
            .entry(kind.to_string())
            .or_default()
            .entry(o.word().to_string())
            .or_insert(0) += 1;
    }

    fn note_duration(&self, host: usize, kind: &str, d: Duration) {
        let mut m = self.durations.lock().expect("durations");
        let v = m.entry((host, kind.to_string())).or_default();
        v.push(d);
        if v.len() > 50 {
            v.remove(0);
        }
    }

    /// The median duration of a successful `kind` on `host` (or `default`).
    pub fn usual(&self, host: usize, kind: &str, default: Duration) -> Duration {
        let m = self.durations.lock().expect("durations");
        match m.get(&(host, kind.to_string())) {
            Some(v) if !v.is_empty() => {
                let mut v = v.clone();
                v.sort();
                v[v.len() / 2]
            }
            _ => default,
        }
    }

    /// `overlayctl --json ARGS` on host `i`, as a command.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Command {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        lab::ctl_cmd(&self.state, i, &a)
    }

    /// The container namespace of endpoint `name`.
    pub fn ns_of(&self, name: &str) -> String {
        format!("{}-c-{name}", self.state.name)
    }

    /// A KV snapshot through the running members, with when its read began and ended.
    pub fn snapshot(&self) -> Result<(Snapshot, Duration, Duration)> {
        let eps = self.lab.lock().expect("lab").member_endpoints();
        let t0 = self.now();
        let out = lab::etcdctl(
            &self.state,
            &eps,
            &["get", "--prefix", "/ovl/v1/", "-w", "json"],
        )?;
        let t1 = self.now();
        Ok((Snapshot::parse(&out.stdout)?, t0, t1))
    }

    // ---- endpoint and network operations, with their ledger entries ----

    /// Starts an attach of `name` to `net` on `host` (its namespace made if missing).
    pub fn attach_start(
        &self,
        host: usize,
        net: &str,
        name: &str,
        by: &str,
    ) -> Result<ops::Running> {
        let ns = self.ns_of(name);
        if !std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
            lab::add_netns(&ns)?;
        }
        {
            let mut l = self.ledger.lock().expect("ledger");
            let e = l
                .eps
                .entry((net.to_string(), name.to_string()))
                .or_insert_with(|| Ep {
                    net: net.to_string(),
                    name: name.to_string(),
                    host,
                    ns: ns.clone(),
                    ip: None,
                    ifname: None,
                    state: EpState::Attaching,
                    acked_at: None,
                    detach_from: None,
                    detached_at: None,
                    detach_tries: 0,
                    deferred: false,
                    by: by.to_string(),
                });
            // A retry of an attach whose first try had no answer stays unknown until one
            // comes: that first try may have landed.
            if !matches!(e.state, EpState::Live | EpState::Unknown) {
                e.state = EpState::Attaching;
            }
        }
        let path = format!("/run/netns/{ns}");
        Ok(ops::start(self.ctl(
            host,
            &["attach", net, "--name", name, "--netns", &path],
        ))?)
    }

    /// Books an attach's outcome.
    pub fn attach_done(&self, host: usize, net: &str, name: &str, o: &Outcome, took: Duration) {
        self.count_op(host, "attach", &format!("{net}/{name}"), o);
        let mut l = self.ledger.lock().expect("ledger");
        let Some(e) = l.eps.get_mut(&(net.to_string(), name.to_string())) else {
            return;
        };
        match o {
            Outcome::Done(v) => {
                e.state = EpState::Live;
                e.ip = ops::reply_ip(v);
                e.ifname = v["ifname"].as_str().map(str::to_string);
                e.acked_at = Some(self.now());
                drop(l);
                self.note_duration(host, "attach", took);
            }
            // A retry that never reached the agent (it is still down) tells nothing about
            // the first try: the user asks again later.
            Outcome::NotSent(_) if e.state == EpState::Unknown => {}
            Outcome::Refused(m) | Outcome::NotSent(m) => {
                if e.acked_at.is_none() {
                    e.state = EpState::Refused;
                    let ns = e.ns.clone();
                    drop(l);
                    // Refused: by the agent's contract nothing changed.
                    let links = Command::new("ip").args(["-n", &ns, "-o", "link"]).output();
                    if let Ok(out) = links {
                        let text = String::from_utf8_lossy(&out.stdout);
                        let extra: Vec<&str> = text
                            .lines()
                            .filter_map(|l| l.split(':').nth(1).map(str::trim))
                            .filter(|n| *n != "lo")
                            .collect();
                        if !extra.is_empty() {
                            self.finding(format!(
                                "attach of {net}/{name} on h{} refused ({m}), yet {ns} has {}",
                                host + 1,
                                extra.join(", ")
                            ));
                        }
                    }
                    // The container is given up (a record left behind is a leak the KV
                    // checks find; its namespace is no evidence of it).
                    if let Err(e) = lab::del_netns(&ns) {
                        self.event(None, format!("removing namespace {ns}: {e:#}"));
                    }
                }
            }
            Outcome::Unknown(_) => {
                if e.acked_at.is_none() {
                    e.state = EpState::Unknown;
                }
            }
        }
    }

    /// Attaches, start to outcome.
    pub fn attach(&self, host: usize, net: &str, name: &str, by: &str) -> Outcome {
        let r = match self.attach_start(host, net, name, by) {
            Ok(r) => r,
            Err(e) => {
                let o = Outcome::NotSent(format!("{e:#}"));
                self.attach_done(host, net, name, &o, Duration::ZERO);
                return o;
            }
        };
        let t = r.started();
        let o = r.finish(ops::OP_TIMEOUT);
        self.attach_done(host, net, name, &o, t.elapsed());
        o
    }

    /// Starts a detach.
    pub fn detach_start(&self, host: usize, net: &str, name: &str) -> Result<ops::Running> {
        {
            let mut l = self.ledger.lock().expect("ledger");
            if let Some(e) = l.eps.get_mut(&(net.to_string(), name.to_string())) {
                e.state = EpState::Detaching;
                e.detach_tries += 1;
                if e.detach_from.is_none() {
                    e.detach_from = Some(self.now());
                }
            }
        }
        Ok(ops::start(
            self.ctl(host, &["detach", net, "--name", name]),
        )?)
    }

    /// Books a detach's outcome; on success checks that the container's interface is gone
    /// and removes its namespace.
    pub fn detach_done(&self, host: usize, net: &str, name: &str, o: &Outcome, took: Duration) {
        self.count_op(host, "detach", &format!("{net}/{name}"), o);
        let Outcome::Done(reply) = o else {
            // Refused, not sent or unknown: still to be detached (retried). A first detach
            // refused: by the agent's contract nothing changed (after an earlier attempt
            // without an answer, the interface may be gone already).
            if let Outcome::Refused(m) = o {
                let ep = self
                    .ledger
                    .lock()
                    .expect("ledger")
                    .eps
                    .get(&(net.to_string(), name.to_string()))
                    .cloned();
                let disturbed = self
                    .disturbed
                    .lock()
                    .expect("disturbed")
                    .contains(&(net.to_string(), name.to_string()));
                if let Some(ep) = ep
                    && let Some(ip) = ep.ip
                    && ep.detach_tries == 1
                    && !disturbed
                    && !faults::has_addr(&ep.ns, &ip.to_string())
                {
                    self.finding(format!(
                        "detach of {net}/{name} on h{} refused ({m}), yet its interface with {ip} is gone",
                        host + 1
                    ));
                }
            }
            return;
        };
        let ep = {
            let mut l = self.ledger.lock().expect("ledger");
            let Some(e) = l.eps.get_mut(&(net.to_string(), name.to_string())) else {
                return;
            };
            e.state = EpState::Detached;
            // A deferred removal is the agent's to finish: the record may stay until the KV
            // answers and a pass runs; the final leak check still holds it to that.
            e.deferred = reply["deferred"] == true;
            if !e.deferred {
                e.detached_at = Some(self.now());
            }
            e.clone()
        };
        if ep.deferred {
            self.event(
                None,
                format!(
                    "detach of {net}/{name} on h{}: done there, the record's removal deferred by the agent",
                    host + 1
                ),
            );
        }
        self.note_duration(host, "detach", took);
        if let (Some(ifname), Some(ip)) = (&ep.ifname, ep.ip) {
            let out = Command::new("ip")
                .args(["-n", &ep.ns, "-o", "-4", "addr", "show"])
                .output();
            if let Ok(out) = out {
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains(&format!(" {ip}/")) {
                    self.violation(
                        Invariant::AckedKept,
                        format!(
                            "detach of {net}/{name} on h{} answered success, but {ifname} with {ip} is still in {}",
                            host + 1,
                            ep.ns
                        ),
                    );
                }
            }
        }
        if std::path::Path::new(&format!("/run/netns/{}", ep.ns)).exists()
            && let Err(e) = lab::del_netns(&ep.ns)
        {
            self.event(None, format!("removing namespace {}: {e:#}", ep.ns));
        }
    }

    /// Detaches, start to outcome.
    pub fn detach(&self, host: usize, net: &str, name: &str) -> Outcome {
        let r = match self.detach_start(host, net, name) {
            Ok(r) => r,
            Err(e) => return Outcome::NotSent(format!("{e:#}")),
        };
        let t = r.started();
        let o = r.finish(ops::OP_TIMEOUT);
        self.detach_done(host, net, name, &o, t.elapsed());
        o
    }

    /// Starts a network create.
    pub fn create_start(
        &self,
        host: usize,
        name: &str,
        attachable: bool,
        internal: bool,
    ) -> Result<ops::Running> {
        self.ledger.lock().expect("ledger").nets.insert(
            name.to_string(),
            Net {
                name: name.to_string(),
                vni: None,
                subnet: None,
                state: NetState::Creating,
                acked_at: None,
                remove_from: None,
                removed_at: None,
                attachable,
                internal,
            },
        );
        let mut args = vec!["network", "create", name];
        if internal {
            args.push("--internal");
        }
        Ok(ops::start(self.ctl(host, &args))?)
    }

    /// Books a network create's outcome (a retried create that finds the network there
    /// books it as created, with the record it finds).
    pub fn create_done(&self, host: usize, name: &str, o: &Outcome, took: Duration) {
        self.count_op(host, "network create", name, o);
        let found = match o {
            Outcome::Refused(m) if ops::already_exists(m) => {
                match ops::run(
                    self.ctl(host, &["network", "inspect", name]),
                    ops::OP_TIMEOUT,
                ) {
                    Outcome::Done(v) => Some(v),
                    _ => None,
                }
            }
            _ => None,
        };
        let mut l = self.ledger.lock().expect("ledger");
        let Some(n) = l.nets.get_mut(name) else {
            return;
        };
        let rec = match (o, &found) {
            (Outcome::Done(v), _) => Some(v.clone()),
            (_, Some(v)) => Some(v.clone()),
            _ => None,
        };
        match (rec, o) {
            (Some(v), _) => {
                n.state = NetState::Live;
                n.vni = v["vni"].as_u64().map(|x| x as u32);
                n.subnet = v["subnet"].as_str().map(str::to_string);
                n.acked_at = Some(self.now());
                if matches!(o, Outcome::Done(_)) {
                    drop(l);
                    self.note_duration(host, "network create", took);
                }
            }
            (None, Outcome::Refused(m)) if ops::already_exists(m) => {} // unknown still
            (None, Outcome::Refused(_) | Outcome::NotSent(_)) => n.state = NetState::Refused,
            (None, _) => n.state = NetState::Creating,
        }
    }

    /// Creates a network, start to outcome.
    pub fn create(&self, host: usize, name: &str, attachable: bool, internal: bool) -> Outcome {
        let r = match self.create_start(host, name, attachable, internal) {
            Ok(r) => r,
            Err(e) => return Outcome::NotSent(format!("{e:#}")),
        };
        let t = r.started();
        let o = r.finish(ops::OP_TIMEOUT);
        self.create_done(host, name, &o, t.elapsed());
        o
    }

    /// Removes a network, start to outcome (a retried removal that finds it gone books it
    /// as removed).
    pub fn remove_net(&self, host: usize, name: &str) -> Outcome {
        {
            let mut l = self.ledger.lock().expect("ledger");
            if let Some(n) = l.nets.get_mut(name) {
                n.state = NetState::Removing;
                if n.remove_from.is_none() {
                    n.remove_from = Some(self.now());
                }
            }
        }
        let o = ops::run(self.ctl(host, &["network", "rm", name]), ops::OP_TIMEOUT);
        self.count_op(host, "network rm", name, &o);
        let gone = match &o {
            Outcome::Done(_) => true,
            Outcome::Refused(m) => ops::not_found(m),
            _ => false,
        };
        if gone {
            let mut l = self.ledger.lock().expect("ledger");
            if let Some(n) = l.nets.get_mut(name) {
                n.state = NetState::Removed;
                n.removed_at = Some(self.now());
            }
        }
        o
    }

    /// Brings an endpoint whose attach had no clear answer, or whose detach did not answer
    /// success, to a settled state the way a user would: the attach is asked again until it
    /// answers (`prefer_attach`; a refusal then leads to a detach), or the endpoint is
    /// detached until that answers success. Gives up at `deadline` (run time).
    pub fn resolve_ep(
        &self,
        net: &str,
        name: &str,
        prefer_attach: bool,
        deadline: Duration,
    ) -> bool {
        loop {
            let Some(e) = self
                .ledger
                .lock()
                .expect("ledger")
                .eps
                .get(&(net.to_string(), name.to_string()))
                .cloned()
            else {
                return true;
            };
            match e.state {
                EpState::Live | EpState::Detached | EpState::Refused => return true,
                EpState::Unknown | EpState::Attaching if prefer_attach => {
                    if let Outcome::Refused(m) = self.attach(e.host, net, name, &e.by) {
                        self.event(
                            None,
                            format!("attach of {net}/{name} refused on retry ({m}): detaching it"),
                        );
                        self.detach(e.host, net, name);
                    }
                }
                EpState::Unknown | EpState::Attaching | EpState::Detaching => {
                    self.detach(e.host, net, name);
                }
            }
            if self.now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Like [`World::resolve_ep`] for a network whose create or removal had no clear answer:
    /// the same operation again until it answers.
    pub fn resolve_net(&self, host: usize, name: &str, deadline: Duration) -> bool {
        loop {
            let Some(n) = self.ledger.lock().expect("ledger").nets.get(name).cloned() else {
                return true;
            };
            match n.state {
                NetState::Live | NetState::Removed | NetState::Refused => return true,
                NetState::Creating => {
                    self.create(host, name, n.attachable, n.internal);
                }
                NetState::Removing => {
                    self.remove_net(host, name);
                }
            }
            if self.now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// One check of the invariants that hold at every moment: agent exits, and the KV
    /// against itself and the ledger. Returns whether the KV answered.
    pub fn check_now(&self, leaks: &mut LeakTracker) -> bool {
        self.check_exits();
        let Ok((snap, t0, t1)) = self.snapshot() else {
            return false;
        };
        let ledger = self.ledger.lock().expect("ledger").clone();
        for u in check::unique(&snap)
            .into_iter()
            .chain(check::unique_in_ledger(&ledger))
        {
            self.report_once(Invariant::Unique, u);
        }
        for l in check::lost(&snap, &ledger, t0, t1) {
            self.report_once(Invariant::AckedKept, l);
        }
        let found = check::leaks(&snap, &ledger);
        for k in leaks.feed(&found, &ledger, t1, LEAK_GRACE) {
            self.violation(
                Invariant::NoLeak,
                format!(
                    "{} (for {}s with nothing open on it)",
                    k.what,
                    LEAK_GRACE.as_secs()
                ),
            );
        }
        true
    }

    /// Records a violation unless the same sentence was recorded before.
    pub fn report_once(&self, inv: Invariant, what: String) {
        let seen = self
            .violations
            .lock()
            .expect("violations")
            .iter()
            .any(|v| v.invariant == inv && v.what == what);
        if !seen {
            self.violation(inv, what);
        }
    }

    /// Agents that exited without being killed by a fault.
    pub fn check_exits(&self) {
        let exited = self.lab.lock().expect("lab").exited_agents();
        for (i, status) in exited {
            let h = &self.state.hosts[i];
            self.violation(
                Invariant::NoStrayExit,
                format!(
                    "agent h{} exited by itself ({status}); log {}:\n{}",
                    i + 1,
                    h.log.display(),
                    lab::tail(&h.log, 15)
                ),
            );
            // The run goes on with the agent started again.
            let started = self.lab.lock().expect("lab").start_agent(i);
            if let Err(e) = started {
                self.harness_error(None, format!("starting h{}'s agent again: {e:#}", i + 1));
            }
        }
    }

    /// Waits until host `i`'s agent answers (without holding the lab lock).
    pub fn wait_agent(&self, i: usize, timeout: Duration) -> Result<()> {
        crate::sh::wait_for(&format!("agent h{} to answer", i + 1), timeout, || {
            lab::ctl_cmd(&self.state, i, &["status"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        })
    }
}

/// A chaos run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lab name.
    pub name: String,
    /// Seed of the schedule and the workload.
    pub seed: u64,
    /// Length of the run (faults end by then; the final checks follow).
    pub length: Duration,
    /// Datapath of the hosts.
    pub datapath: DatapathSel,
    /// Where the report and the logs go.
    pub out: PathBuf,
    /// Print events as they happen.
    pub verbose: bool,
    /// Faults left out of the schedule, by tag ([`schedule::Fault::TAGS`]).
    pub without: Vec<String>,
}

/// Runs a chaos run end to end: lab up, workload, faults, checks, report, lab down.
pub fn run(cfg: &Config) -> Result<finish::Report> {
    let sched = schedule::generate(cfg.seed, cfg.length, 3, schedule::Lengths::default())
        .without(&cfg.without)
        .map_err(anyhow::Error::msg)?;
    if !cfg.without.is_empty() {
        println!("without: {}", cfg.without.join(", "));
    }
    println!("{sched}");
    let world = World::new(lab_config(&cfg.name, cfg.datapath), cfg.verbose)
        .context("bringing the chaos lab up")?;
    workload::baseline(&world).context("the workload's baseline")?;
    let report = std::thread::scope(|s| {
        let workers: Vec<_> = (0..world.hosts())
            .map(|h| {
                let w = &world;
                s.spawn(move || workload::worker(w, h, cfg.seed))
            })
            .collect();
        let checker = s.spawn(|| workload::checker(&world));
        let faults = s.spawn(|| faults::run_schedule(&world, &sched));
        if faults.join().is_err() {
            world.harness_error(None, "the fault thread panicked");
        }
        world.event(None, "every fault is over: the workload stops");
        world.stop.store(true, Ordering::SeqCst);
        for w in workers {
            if w.join().is_err() {
                world.harness_error(None, "a workload thread panicked");
            }
        }
        if checker.join().is_err() {
            world.harness_error(None, "the checker thread panicked");
        }
        finish::judge(&world, &sched, cfg)
    })?;
    Ok(report)
}

/// Schedule only: what a seed and length give.
pub fn schedule_of(seed: u64, length: Duration) -> Schedule {
    schedule::generate(seed, length, 3, schedule::Lengths::default())
}

/// One line of at most 300 characters from a message: a failed command's arguments and
/// etcdctl's JSON log lines are left out, lines are joined.
pub fn brief(text: &str) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(|l| match (l.find(" failed (exit status"), l.find('"')) {
            (Some(i), Some(q)) if q < i => {
                // `{cmd:?} failed (status): stderr`: keep what precedes the command, the
                // program's name and its stderr.
                let start = l[..q].rfind(' ').map(|s| s + 1).unwrap_or(0);
                let rest = &l[i..];
                let keep = rest.find("): ").map(|j| &rest[j + 3..]).unwrap_or(rest);
                let prog = l[start..i]
                    .split('"')
                    .find(|w| ["etcdctl", "ip", "bridge", "dd"].contains(w))
                    .unwrap_or("command");
                format!("{}{prog}: {keep}", &l[..start])
            }
            _ => l.to_string(),
        })
        .filter(|l| !l.trim_start().starts_with("{\"level\""))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let one = lines.join(" | ");
    if one.chars().count() > 300 {
        let cut: String = one.chars().take(297).collect();
        format!("{cut}...")
    } else {
        one
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn brief_messages() {
        let e = "no leader (198.18.0.2:2379: ETCDCTL_API=\"3\" \"nsenter\" \"--net=/run/netns/c-ul\" \"--\" \"etcdctl\" \"--endpoints=198.18.0.2:2379\" \"endpoint\" failed (exit status: 1): {\"level\":\"warn\",\"ts\":\"x\"}\nFailed to get the status of endpoint 198.18.0.2:2379 (context deadline exceeded))";
        assert_eq!(
            super::brief(e),
            "no leader (198.18.0.2:2379: etcdctl: {\"level\":\"warn\",\"ts\":\"x\"} | Failed to get the status of endpoint 198.18.0.2:2379 (context deadline exceeded))"
        );
        assert_eq!(super::brief(&"x".repeat(400)).chars().count(), 300);
    }
}
