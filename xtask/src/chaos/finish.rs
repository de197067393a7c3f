//! The end of a run: every invariant judged once more, strictly (no grace: every operation
//! is settled), reachability measured from the last fault, and the report.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{
    Config, Event, Invariant, OpCounts, PingStats, REACH_WITHIN, Violation, World, check,
    ledger::Ep, schedule::Schedule,
};
use crate::lab;

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Which.
    pub invariant: Invariant,
    /// Held throughout and at the end.
    pub pass: bool,
    /// Its violations.
    pub violations: Vec<Violation>,
}

/// How reachability came out at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reach {
    /// Live endpoints pinged.
    pub endpoints: usize,
    /// Ordered pairs pinged.
    pub pairs: usize,
    /// When every pair answered, after the last fault (`None`: not within the bound).
    pub after_last_fault: Option<Duration>,
    /// Pairs still failing at the deadline.
    pub failing: Vec<String>,
}

/// The report of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Planned length.
    pub length: Duration,
    /// Faults left out of the schedule.
    pub without: Vec<String>,
    /// The schedule.
    pub schedule: Schedule,
    /// What happened.
    pub timeline: Vec<Event>,
    /// Per invariant.
    pub verdicts: Vec<Verdict>,
    /// Faults that could not be injected or undone as planned.
    pub harness_errors: Vec<String>,
    /// Behaviour no invariant covers, worth a look.
    pub findings: Vec<Event>,
    /// When the last fault ended and when the workload had settled (run time).
    pub last_fault_end: Duration,
    /// When the workload had settled every operation.
    pub settled_at: Duration,
    /// Reachability at the end.
    pub reach: Reach,
    /// Operation outcomes.
    pub ops: OpCounts,
    /// Pings of the workload.
    pub pings: PingStats,
    /// Endpoints per state at the end.
    pub endpoints: BTreeMap<String, usize>,
    /// `overlayctl peers` differences left on each host at the end.
    pub peers_diff: Vec<String>,
}

impl Report {
    /// Whether every invariant held and every fault ran as planned.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.pass) && self.harness_errors.is_empty()
    }
}

/// Judges a world whose faults are over and whose workload has stopped.
pub fn judge(w: &World, sched: &Schedule, cfg: &Config) -> Result<Report> {
    let mut report = judge_world(w, sched)?;
    report.without = cfg.without.clone();
    write_out(w, &report, &cfg.out)?;
    Ok(report)
}

/// The final checks and the report (nothing written).
pub fn judge_world(w: &World, sched: &Schedule) -> Result<Report> {
    let settled_at = w.now();
    let last = *w.last_fault_end.lock().expect("last fault end");
    w.event(None, "final checks");
    for h in 0..w.hosts() {
        if let Err(e) = w.wait_agent(h, Duration::from_secs(10)) {
            w.violation(
                Invariant::NoStrayExit,
                format!("h{}'s agent does not answer at the end: {e:#}", h + 1),
            );
        }
    }
    let reach = reachability(w, last.max(settled_at));
    if let Some(t) = reach.after_last_fault {
        w.event(
            None,
            format!(
                "every live endpoint reaches every other: {} endpoints, {} pairs, {:.1}s after the last fault",
                reach.endpoints,
                reach.pairs,
                t.as_secs_f64()
            ),
        );
    }
    final_kv(w)?;
    w.check_exits();
    for (i, h) in w.state.hosts.iter().enumerate() {
        let log = std::fs::read_to_string(&h.log).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("panicked at")) {
            w.violation(
                Invariant::NoStrayExit,
                format!("h{}'s agent log: {l}", i + 1),
            );
        }
    }
    let peers_diff = peers_diff(w);
    let violations = w.violations.lock().expect("violations").clone();
    let verdicts = Invariant::ALL
        .iter()
        .map(|inv| {
            let v: Vec<Violation> = violations
                .iter()
                .filter(|x| x.invariant == *inv)
                .cloned()
                .collect();
            Verdict {
                invariant: *inv,
                pass: v.is_empty(),
                violations: v,
            }
        })
        .collect();
    let ledger = w.ledger.lock().expect("ledger").clone();
    Ok(Report {
        seed: sched.seed,
        length: sched.length,
        without: Vec::new(),
        schedule: sched.clone(),
        timeline: w.timeline.lock().expect("timeline").clone(),
        verdicts,
        harness_errors: w.harness_errors.lock().expect("harness errors").clone(),
        findings: w.findings.lock().expect("findings").clone(),
        last_fault_end: last,
        settled_at,
        reach,
        ops: w.ops.lock().expect("ops").clone(),
        pings: w.pings.lock().expect("pings").clone(),
        endpoints: ledger.ep_counts(),
        peers_diff,
    })
}

/// The strict KV checks of the end: every leak counts, there is nothing open any more.
fn final_kv(w: &World) -> Result<()> {
    let l = w.ledger.lock().expect("ledger").clone();
    // A detach answered with its record's removal deferred is finished by the agent's next
    // pass once the KV answers: give that a bounded while before judging.
    let deferred_left = |s: &check::Snapshot| {
        check::leaks(s, &l).iter().any(|k| {
            l.eps
                .get(&(k.net.clone(), k.id.clone()))
                .is_some_and(|e| e.deferred)
        })
    };
    let mut snap = None;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        match w.snapshot() {
            Ok(s) => {
                let wait = deferred_left(&s.0) && t.elapsed() < Duration::from_secs(15);
                snap = Some(s);
                if !wait {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    let (s, t0, t1) = snap.context("the KV did not answer at the end")?;
    for u in check::unique(&s)
        .into_iter()
        .chain(check::unique_in_ledger(&l))
    {
        w.report_once(Invariant::Unique, u);
    }
    for x in check::lost(&s, &l, t0, t1) {
        w.report_once(Invariant::AckedKept, x);
    }
    for k in check::leaks(&s, &l) {
        let open = if check::owner_busy(&l, &k) {
            " (its operation was never settled)"
        } else {
            ""
        };
        w.report_once(Invariant::NoLeak, format!("at the end: {}{open}", k.what));
    }
    Ok(())
}

/// Pings every ordered pair of live endpoints of each network until all answer, for at most
/// [`REACH_WITHIN`] after `since`.
pub fn reachability(w: &World, since: Duration) -> Reach {
    let live = w.ledger.lock().expect("ledger").live_by_net();
    let mut pairs: Vec<(Ep, Ep)> = Vec::new();
    let mut n = 0;
    for eps in live.values() {
        n += eps.len();
        for a in eps {
            for b in eps {
                if a.name != b.name {
                    pairs.push((a.clone(), b.clone()));
                }
            }
        }
    }
    let total = pairs.len();
    let deadline = since + REACH_WITHIN;
    loop {
        let results = ping_all(&pairs);
        pairs = pairs
            .into_iter()
            .zip(results)
            .filter(|(_, ok)| !ok)
            .map(|(p, _)| p)
            .collect();
        let now = w.now();
        if pairs.is_empty() {
            return Reach {
                endpoints: n,
                pairs: total,
                after_last_fault: Some(now.saturating_sub(since)),
                failing: Vec::new(),
            };
        }
        if now > deadline {
            let failing: Vec<String> = pairs
                .iter()
                .map(|(a, b)| {
                    format!(
                        "{}/{} (h{}, {}) -> {} (h{}, {})",
                        a.net,
                        a.name,
                        a.host + 1,
                        a.ip.map(|i| i.to_string()).unwrap_or_default(),
                        b.name,
                        b.host + 1,
                        b.ip.map(|i| i.to_string()).unwrap_or_default()
                    )
                })
                .collect();
            let mut text = format!(
                "{} of {total} pairs of live endpoints still fail {:.1}s after the last fault:",
                failing.len(),
                (now - since).as_secs_f64()
            );
            for f in failing.iter().take(20) {
                let _ = write!(text, "\n    {f}");
            }
            if failing.len() > 20 {
                let _ = write!(text, "\n    ...");
            }
            for ep in diagnose(&pairs) {
                let _ = write!(text, "\n    {ep}");
            }
            w.violation(Invariant::Reachable, text);
            return Reach {
                endpoints: n,
                pairs: total,
                after_last_fault: None,
                failing,
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the failing pairs' endpoints look like (their interfaces), for the report.
fn diagnose(pairs: &[(Ep, Ep)]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (a, b) in pairs {
        for e in [a, b] {
            if !seen.insert(e.name.clone()) {
                continue;
            }
            let ip = e.ip.map(|i| i.to_string()).unwrap_or_default();
            if !super::faults::has_addr(&e.ns, &ip) {
                out.push(format!(
                    "{}/{} on h{}: {} has no interface up with {ip}",
                    e.net,
                    e.name,
                    e.host + 1,
                    e.ns
                ));
            }
        }
    }
    out
}

/// One ping per pair, all at once (in batches).
fn ping_all(pairs: &[(Ep, Ep)]) -> Vec<bool> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(48) {
        let kids: Vec<_> = chunk
            .iter()
            .map(|(a, b)| {
                let ip: Ipv4Addr = b.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{}", a.ns))
                    .args(["ping", "-c1", "-q", "-W1", &ip.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
            })
            .collect();
        for k in kids {
            out.push(match k {
                Ok(mut c) => c.wait().map(|s| s.success()).unwrap_or(false),
                Err(_) => false,
            });
        }
    }
    out
}

/// `overlayctl peers` differences per host (informational).
fn peers_diff(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    for h in 0..w.hosts() {
        let o = lab::ctl_cmd(&w.state, h, &["--json", "peers"]).output();
        let Ok(o) = o else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
            out.push(format!("h{}: peers unreadable", h + 1));
            continue;
        };
        for n in v["networks"].as_array().into_iter().flatten() {
            for d in n["diff"].as_array().into_iter().flatten() {
                out.push(format!(
                    "h{} {}: {}",
                    h + 1,
                    n["network"].as_str().unwrap_or("?"),
                    d.as_str().unwrap_or("?")
                ));
            }
        }
    }
    out
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "== chaos run: seed {}, {:?}", self.seed, self.length)?;
        if !self.without.is_empty() {
            writeln!(f, "   without: {}", self.without.join(", "))?;
        }
        writeln!(f, "\n{}", self.schedule)?;
        writeln!(f, "faults injected:")?;
        for (k, n) in self.schedule.counts() {
            writeln!(f, "  {k:?}: {n}")?;
        }
        writeln!(f, "\ntimeline:")?;
        for e in &self.timeline {
            let id = e.fault.map(|i| format!("#{i} ")).unwrap_or_default();
            writeln!(f, "  t+{:>7.1}s {id}{}", e.at.as_secs_f64(), e.text)?;
        }
        writeln!(f, "\nworkload:")?;
        for (op, m) in &self.ops {
            let parts: Vec<String> = m.iter().map(|(o, n)| format!("{n} {o}")).collect();
            writeln!(f, "  {op}: {}", parts.join(", "))?;
        }
        writeln!(
            f,
            "  pings: {}/{} answered while faults were active, {}/{} while none was",
            self.pings.during_faults.1,
            self.pings.during_faults.0,
            self.pings.quiet.1,
            self.pings.quiet.0
        )?;
        let eps: Vec<String> = self
            .endpoints
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        writeln!(f, "  endpoints at the end: {}", eps.join(", "))?;
        writeln!(
            f,
            "  last fault ended at t+{:.1}s, workload settled at t+{:.1}s",
            self.last_fault_end.as_secs_f64(),
            self.settled_at.as_secs_f64()
        )?;
        match self.reach.after_last_fault {
            Some(t) => writeln!(
                f,
                "  reachability: {} endpoints, {} pairs, all answering {:.1}s after that",
                self.reach.endpoints,
                self.reach.pairs,
                t.as_secs_f64()
            )?,
            None => writeln!(
                f,
                "  reachability: {} of {} pairs failing",
                self.reach.failing.len(),
                self.reach.pairs
            )?,
        }
        if !self.peers_diff.is_empty() {
            writeln!(f, "  overlayctl peers not converged at the end:")?;
            for d in &self.peers_diff {
                writeln!(f, "    {d}")?;
            }
        }
        writeln!(f, "\ninvariants:")?;
        for v in &self.verdicts {
            writeln!(
                f,
                "  [{}] {}",
                if v.pass { "PASS" } else { "FAIL" },
                v.invariant.title()
            )?;
            for x in &v.violations {
                writeln!(f, "      t+{:.1}s {}", x.at.as_secs_f64(), x.what)?;
            }
        }
        if !self.findings.is_empty() {
            writeln!(f, "\nfindings (no invariant covers them):")?;
            for e in &self.findings {
                writeln!(f, "  t+{:.1}s {}", e.at.as_secs_f64(), e.text)?;
            }
        }
        if !self.harness_errors.is_empty() {
            writeln!(f, "\nfaults not run as planned (the run is not valid):")?;
            for e in &self.harness_errors {
                writeln!(f, "  {e}")?;
            }
        }
        writeln!(
            f,
            "\nverdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Writes `report.txt`, `report.json` and copies of the agents' and members' logs to `out`.
fn write_out(w: &World, report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("report.txt"), report.to_string())?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(
        out.join("ops.log"),
        w.oplog.lock().expect("oplog").join("\n") + "\n",
    )?;
    let lab = w.lab.lock().expect("lab");
    for h in &lab.state.hosts {
        copy_log(&h.log, &out.join(format!("agent-{}.log", h.id)))?;
    }
    for f in std::fs::read_dir(&lab.state.dir)?.flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with("etcd-") && name.ends_with(".log") {
            copy_log(&f.path(), &out.join(&name))?;
        }
    }
    Ok(())
}

fn copy_log(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}
