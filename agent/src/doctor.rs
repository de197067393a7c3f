//! `overlayctl doctor`: what is wrong in the cluster, as seen from one host, with a hint for
//! each finding. Pure: the agent gathers [`Facts`] (KV, view, its own datapath, the plugin
//! socket) and [`diagnose`] turns them into a [`Report`]; every finding is unit-tested here.
//!
//! A check that finds nothing is listed as passed, so the report also says what was looked
//! at. Problems make `overlayctl doctor` exit non-zero; warnings do not.
//!
//! Two checks judge time: a liveness lease running out (its agent stopped renewing it, before
//! the KV drops it: see [`EXPIRING_SHARE`]) and the clocks of the hosts, as the health matrix
//! measures them through the overlay ([`SKEW_WARN_MS`], and half the lease TTL).

use std::collections::{BTreeMap, BTreeSet};

use ovl_core::HealthRow;
use ovl_model::{VXLAN_OVERHEAD, WG_OVERHEAD, encrypted_mtu, overlay_mtu};
use serde::{Deserialize, Serialize};

/// A KV read slower than this is worth a warning: every watch and lease renewal waits as long.
pub const SLOW_KV_MS: f64 = 500.0;

/// A view behind the KV and not known current for this long is a stalled watch.
pub const STALE_VIEW: std::time::Duration = std::time::Duration::from_secs(10);

/// A liveness lease with less than 1/`EXPIRING_SHARE` of its granted TTL left is expiring:
/// its agent renews it every third of the TTL (`tasks::registry`), so a renewed lease never
/// falls below two thirds of it (less the KV's latency); below one third, two renewal
/// periods passed without one: the agent stopped, hangs, or cannot reach the KV.
pub const EXPIRING_SHARE: u32 = 3;

/// Clocks of two hosts further apart than this (ms) are a warning; further apart than half
/// the lease TTL, a problem.
pub const SKEW_WARN_MS: i64 = 1000;

/// One host as the cluster records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// Host id.
    pub id: String,
    /// Underlay MTU it registered.
    pub underlay_mtu: u32,
    /// Datapath mode (`kernel`, `ebpf`).
    pub datapath: String,
    /// WireGuard kind, `None` without a published key.
    pub wireguard: Option<String>,
    /// Agent version.
    pub version: String,
    /// `alive`, `agent down, datapath answering` or `dead` (the liveness states).
    pub state: String,
    /// Its liveness lease, while the KV holds one (`None`: gone, or not looked up).
    pub lease: Option<LeaseFacts>,
}

/// A liveness lease as the KV reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseFacts {
    /// The TTL it was granted (each renewal restores it).
    pub granted: std::time::Duration,
    /// Time left before it expires unless renewed.
    pub remaining: std::time::Duration,
}

/// One cluster network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetFacts {
    /// Network name.
    pub name: String,
    /// Its `--mtu`, if set.
    pub mtu: Option<u32>,
    /// Encrypted (WireGuard under VXLAN).
    pub encrypted: bool,
    /// Hosts with an endpoint on it.
    pub hosts: Vec<String>,
}

/// What `diagnose` looks at.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The host asking.
    pub me: String,
    /// Every registered host.
    pub hosts: Vec<HostFacts>,
    /// Every cluster network.
    pub networks: Vec<NetFacts>,
    /// This host's datapath: per network, the operations that would make it match the
    /// desired state (empty: converged).
    pub drift: BTreeMap<String, Vec<String>>,
    /// The KV: one read's time, or why it failed.
    pub kv: Result<f64, String>,
    /// Revisions this host's view is behind the KV head, and how long ago it was last known
    /// current (a watch event, a listing, or a probe at its revision), when known.
    pub view_behind: Option<(i64, std::time::Duration)>,
    /// The Docker plugin socket, when this agent serves one: `Ok` if it answered
    /// `Plugin.Activate`, else why not.
    pub plugin: Option<Result<(), String>>,
    /// The health matrix: every host's row (`Err`: the KV could not be read).
    pub matrix: Result<Vec<HealthRow>, String>,
    /// Hosts whose health address collides with another's (left out of the matrix).
    pub collisions: BTreeSet<String>,
    /// Unix time now, to say for how long a pair has been down.
    pub now: u64,
    /// This host's `--lease-ttl`: clocks further apart than half of it are a problem.
    pub lease_ttl: std::time::Duration,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Traffic or management is broken: `doctor` exits non-zero.
    Problem,
    /// Worth knowing; nothing is broken yet.
    Warning,
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What it is about (a host, a network, `kv`...).
    pub subject: String,
    /// What is wrong.
    pub what: String,
    /// What to do about it.
    pub hint: String,
}

/// One check and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Check name (`hosts`, `mtu`, ...).
    pub name: String,
    /// What it looked at, for the line of a passed check.
    pub scope: String,
    /// Findings; empty when it passed.
    pub findings: Vec<Finding>,
}

/// `GET /v1/doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The host that looked.
    pub from: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Number of problems (the exit status of `doctor` is non-zero if any).
    pub fn problems(&self) -> usize {
        self.findings()
            .filter(|f| f.severity == Severity::Problem)
            .count()
    }

    /// Every finding of every check.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.checks.iter().flat_map(|c| c.findings.iter())
    }
}

fn finding(severity: Severity, subject: &str, what: String, hint: String) -> Finding {
    Finding {
        severity,
        subject: subject.to_string(),
        what,
        hint,
    }
}

/// Every check over `f`.
pub fn diagnose(f: &Facts) -> Report {
    Report {
        from: f.me.clone(),
        checks: vec![
            hosts(f),
            vxlan(f),
            clocks(f),
            mtu(f),
            wireguard(f),
            drift(f),
            kv(f),
            plugin(f),
        ],
    }
}

/// Every registered host keeps its lease, and renews it in time.
fn hosts(f: &Facts) -> Check {
    let mut findings: Vec<Finding> = f
        .hosts
        .iter()
        .filter(|h| h.state != "alive")
        .map(|h| {
            let hint = if h.state.contains("datapath answering") {
                format!(
                    "start overlay-agent on {} (systemctl start overlay-agent); its containers stay reachable while its datapath answers, but nothing there changes until it is back",
                    h.id
                )
            } else {
                format!(
                    "if {} is back soon, start its agent; if it is gone for good, `overlayctl hosts rm {}` forgets it",
                    h.id, h.id
                )
            };
            finding(
                Severity::Problem,
                &h.id,
                format!("agent not alive (lease expired): {}", h.state),
                hint,
            )
        })
        .collect();
    for h in f.hosts.iter().filter(|h| h.state == "alive") {
        let Some(l) = h.lease else { continue };
        if l.remaining >= l.granted / EXPIRING_SHARE {
            continue;
        }
        findings.push(finding(
            Severity::Warning,
            &h.id,
            format!(
                "lease expires in {:.1} s of {} s granted: not renewed for {:.1} s (every {:.1} s expected)",
                l.remaining.as_secs_f64(),
                l.granted.as_secs(),
                l.granted.saturating_sub(l.remaining).as_secs_f64(),
                l.granted.as_secs_f64() / 3.0,
            ),
            format!(
                "the agent on {} stopped renewing: is it running (systemctl status overlay-agent), and does the KV answer from there? Once the lease runs out, {} counts as not alive",
                h.id, h.id
            ),
        ));
    }
    let kinds: Vec<String> = f
        .hosts
        .iter()
        .map(|h| {
            format!(
                "{} {}{}",
                h.id,
                h.datapath,
                h.wireguard
                    .as_deref()
                    .map(|w| format!("+wg-{w}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    Check {
        name: "hosts".into(),
        scope: format!("{} registered: {}", f.hosts.len(), kinds.join(", ")),
        findings,
    }
}

/// VXLAN flows between every two hosts: each host's row of the health matrix says whether
/// its probes through the overlay to the others are answered.
fn vxlan(f: &Facts) -> Check {
    let rows = match &f.matrix {
        Ok(r) => r,
        Err(e) => {
            return Check {
                name: "vxlan".into(),
                scope: "health matrix not readable".into(),
                findings: vec![finding(
                    Severity::Warning,
                    "health matrix",
                    format!("cannot read the rows: {e}"),
                    "see the kv check".into(),
                )],
            };
        }
    };
    let state: BTreeMap<&str, &str> = f
        .hosts
        .iter()
        .map(|h| (h.id.as_str(), h.state.as_str()))
        .collect();
    // A host whose agent is gone has no row, and a dead host answers nothing: pairs with
    // a dead host are the hosts check's business.
    let live = |h: &str| state.get(h).is_some_and(|s| *s != "dead");
    let down: BTreeMap<(&str, &str), u64> = rows
        .iter()
        .flat_map(|r| {
            r.peers
                .iter()
                .filter(|(p, c)| !c.ok && live(p))
                .map(move |(p, c)| ((r.host.as_str(), p.as_str()), c.since))
        })
        .filter(|((a, _), _)| live(a))
        .collect();
    let cells: usize = rows.iter().map(|r| r.peers.len()).sum();
    let mut findings = Vec::new();
    for ((a, b), since) in &down {
        let back = down.contains_key(&(*b, *a));
        if back && a > b {
            continue;
        }
        let (pair, both) = if back {
            (format!("{a} <-> {b}"), "either way")
        } else {
            (format!("{a} -> {b}"), "one way")
        };
        findings.push(finding(
            Severity::Problem,
            &pair,
            format!(
                "probes through the overlay unanswered {both} for {} s",
                f.now.saturating_sub(*since)
            ),
            format!(
                "VXLAN does not flow between {a} and {b}: check firewalls and routes between their VTEP addresses (UDP, the VXLAN port), and `overlayctl peers ovl-health` on both"
            ),
        ));
    }
    let with_row: BTreeSet<&str> = rows.iter().map(|r| r.host.as_str()).collect();
    for h in f.hosts.iter().filter(|h| h.state == "alive") {
        if f.collisions.contains(&h.id) {
            findings.push(finding(
                Severity::Warning,
                &h.id,
                "its health address collides with another host's: left out of the matrix".into(),
                "VTEP addresses that differ only above their low 22 bits share a health address; nothing else is affected".into(),
            ));
        } else if !with_row.contains(h.id.as_str()) {
            findings.push(finding(
                Severity::Warning,
                &h.id,
                "publishes no health row".into(),
                format!("an older agent, or its health namespace could not be made yet: see the log of {}", h.id),
            ));
        }
    }
    Check {
        name: "vxlan".into(),
        scope: format!(
            "{} of {cells} host pairs (one way) answer probes through the overlay",
            cells - down.len()
        ),
        findings,
    }
}

/// The hosts' clocks agree: each cell of the health matrix carries the peer's clock offset,
/// measured by an ICMP timestamp exchange through the overlay. One measurement per pair (the
/// lower id's, else the other's); cells that are down or carry none (an older agent) are not
/// judged.
fn clocks(f: &Facts) -> Check {
    let Ok(rows) = &f.matrix else {
        return Check {
            name: "clocks".into(),
            scope: "health matrix not readable (see vxlan)".into(),
            findings: Vec::new(),
        };
    };
    // (a, b) with a < b: b's clock minus a's, and who measured it.
    let mut pairs: BTreeMap<(&str, &str), (i64, &str)> = BTreeMap::new();
    let mut unmeasured: BTreeSet<(&str, &str)> = BTreeSet::new();
    for r in rows {
        for (p, c) in r.peers.iter().filter(|(_, c)| c.ok) {
            let (me, peer) = (r.host.as_str(), p.as_str());
            let key = if me < peer { (me, peer) } else { (peer, me) };
            match c.skew_ms {
                Some(s) if me < peer => {
                    pairs.insert(key, (s, me));
                }
                Some(s) => {
                    pairs.entry(key).or_insert((-s, me));
                }
                None => {
                    unmeasured.insert(key);
                }
            }
        }
    }
    unmeasured.retain(|k| !pairs.contains_key(k));
    let half_lease = i64::try_from(f.lease_ttl.as_millis() / 2).unwrap_or(i64::MAX);
    let mut findings = Vec::new();
    for ((a, b), (skew, by)) in &pairs {
        if skew.abs() <= SKEW_WARN_MS {
            continue;
        }
        let ahead = if *skew > 0 { b } else { a };
        let (severity, beyond) = if skew.abs() > half_lease {
            (
                Severity::Problem,
                format!(
                    ", more than half the lease TTL ({} s)",
                    f.lease_ttl.as_secs()
                ),
            )
        } else {
            (Severity::Warning, String::new())
        };
        findings.push(finding(
            severity,
            &format!("{a} <-> {b}"),
            format!(
                "clocks differ by {:.1} s ({ahead} ahead, measured by {by}){beyond}",
                skew.unsigned_abs() as f64 / 1000.0
            ),
            format!(
                "synchronise both with NTP (`chronyc tracking` or `timedatectl timesync-status` on {a} and {b}): times one host writes to the KV and another ages (when a pair went down, Docker pool reservations) go wrong, and so do TLS validity checks"
            ),
        ));
    }
    let largest = pairs.values().map(|(s, _)| s.abs()).max();
    Check {
        name: "clocks".into(),
        scope: format!(
            "{} host pairs measured{}{}",
            pairs.len(),
            largest
                .map(|m| format!(", largest offset {m} ms"))
                .unwrap_or_default(),
            if unmeasured.is_empty() {
                String::new()
            } else {
                format!(", {} not measured (older agents)", unmeasured.len())
            }
        ),
        findings,
    }
}

/// A network's container MTU must fit the path between every two of its hosts: with
/// different underlay MTUs and no `--mtu`, each host derives its own, and a full-size packet
/// from the larger side is dropped on the way (ping works, bulk transfers stall).
fn mtu(f: &Facts) -> Check {
    let by_id: BTreeMap<&str, &HostFacts> = f.hosts.iter().map(|h| (h.id.as_str(), h)).collect();
    let mut findings = Vec::new();
    for n in &f.networks {
        let overhead = VXLAN_OVERHEAD + if n.encrypted { WG_OVERHEAD } else { 0 };
        let hosts: Vec<&HostFacts> = n
            .hosts
            .iter()
            .filter_map(|h| by_id.get(h.as_str()).copied())
            .collect();
        let Some(narrow) = hosts.iter().min_by_key(|h| h.underlay_mtu) else {
            continue;
        };
        let limit = narrow.underlay_mtu.saturating_sub(overhead);
        for h in &hosts {
            let mtu = if n.encrypted {
                encrypted_mtu(h.underlay_mtu, n.mtu)
            } else {
                overlay_mtu(h.underlay_mtu, n.mtu)
            };
            if mtu > limit {
                findings.push(finding(
                    Severity::Problem,
                    &n.name,
                    format!(
                        "containers on {} use MTU {mtu}, but the path to {} carries {limit} (underlay MTU {} - {overhead})",
                        h.id, narrow.id, narrow.underlay_mtu
                    ),
                    format!(
                        "give the network one MTU that fits every host (`--mtu {limit}` when creating it), or raise the underlay MTU of {}",
                        narrow.id
                    ),
                ));
            }
        }
    }
    Check {
        name: "mtu".into(),
        scope: format!("{} networks", f.networks.len()),
        findings,
    }
}

/// Every host of an encrypted network has a WireGuard key.
fn wireguard(f: &Facts) -> Check {
    let encrypted: Vec<&NetFacts> = f.networks.iter().filter(|n| n.encrypted).collect();
    let mut findings = Vec::new();
    if !encrypted.is_empty() {
        for h in f.hosts.iter().filter(|h| h.wireguard.is_none()) {
            let names: Vec<&str> = encrypted.iter().map(|n| n.name.as_str()).collect();
            findings.push(finding(
                Severity::Problem,
                &h.id,
                format!(
                    "no WireGuard key published: cut off from the encrypted networks {}",
                    names.join(", ")
                ),
                format!(
                    "check `journalctl -u overlay-agent` on {} for the WireGuard device (kernel module or userspace)",
                    h.id
                ),
            ));
        }
    }
    Check {
        name: "wireguard".into(),
        scope: format!("{} encrypted networks", encrypted.len()),
        findings,
    }
}

/// This host's datapath holds what the cluster says it should.
fn drift(f: &Facts) -> Check {
    let findings = f
        .drift
        .iter()
        .filter(|(_, ops)| !ops.is_empty())
        .map(|(net, ops)| {
            let shown: Vec<&str> = ops.iter().take(3).map(String::as_str).collect();
            finding(
                Severity::Problem,
                net,
                format!(
                    "{} entries on {} differ from the desired state: {}{}",
                    ops.len(),
                    f.me,
                    shown.join("; "),
                    if ops.len() > 3 { "; ..." } else { "" }
                ),
                format!(
                    "the reconciler repairs drift on its next pass; if this stays, `overlayctl peers {net}` shows both sides and the agent's log why it cannot"
                ),
            )
        })
        .collect();
    Check {
        name: "entries".into(),
        scope: format!("{} networks programmed on {}", f.drift.len(), f.me),
        findings,
    }
}

/// The KV answers, quickly, and this host's view keeps up with it.
fn kv(f: &Facts) -> Check {
    let mut findings = Vec::new();
    let scope = match &f.kv {
        Ok(ms) => {
            if *ms > SLOW_KV_MS {
                findings.push(finding(
                    Severity::Warning,
                    "kv",
                    format!("one read took {ms:.0} ms"),
                    "check the etcd members' disks and the network to them (etcdctl endpoint status)".into(),
                ));
            }
            format!("read in {ms:.1} ms")
        }
        Err(e) => {
            findings.push(finding(
                Severity::Problem,
                "kv",
                format!("unreachable: {e}"),
                "traffic keeps flowing on what is programmed; nothing new is learned until the KV answers (check etcd and --kv-endpoints)".into(),
            ));
            "unreachable".into()
        }
    };
    // Behind for a moment is normal (a write the watch is delivering); behind and unconfirmed
    // for a while is a watch that stalls.
    if let Some((b, age)) = f
        .view_behind
        .filter(|(b, age)| *b > 0 && *age >= STALE_VIEW)
    {
        findings.push(finding(
            Severity::Warning,
            "kv",
            format!(
                "the view of {} is {b} revisions behind the KV, last current {} s ago",
                f.me,
                age.as_secs()
            ),
            "a watch lagging for long means the agent cannot keep up; see its log".into(),
        ));
    }
    Check {
        name: "kv".into(),
        scope,
        findings,
    }
}

/// The Docker plugin socket answers dockerd's first call.
fn plugin(f: &Facts) -> Check {
    let (scope, findings) = match &f.plugin {
        None => ("not served by this agent".to_string(), Vec::new()),
        Some(Ok(())) => ("answers Plugin.Activate".to_string(), Vec::new()),
        Some(Err(e)) => (
            "does not answer".to_string(),
            vec![finding(
                Severity::Problem,
                "docker plugin",
                format!("the plugin socket does not answer: {e}"),
                "dockerd cannot create or join ovl networks here; check the agent's log and /run/docker/plugins/ovl.sock".into(),
            )],
        ),
    };
    Check {
        name: "docker plugin".into(),
        scope,
        findings,
    }
}

/// The report as `overlayctl doctor` prints it.
pub fn render(r: &Report) -> String {
    let mut out = format!("checked from {}\n", r.from);
    for c in &r.checks {
        if c.findings.is_empty() {
            out.push_str(&format!("ok       {:<14} {}\n", c.name, c.scope));
        }
        for f in &c.findings {
            let tag = match f.severity {
                Severity::Problem => "PROBLEM",
                Severity::Warning => "warning",
            };
            out.push_str(&format!(
                "{tag:<8} {:<14} {}: {}\n         hint: {}\n",
                c.name, f.subject, f.what, f.hint
            ));
        }
    }
    let p = r.problems();
    out.push_str(&if p == 0 {
        "no problems found\n".to_string()
    } else {
        format!("{p} problem(s) found\n")
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_core::PeerHealth;

    fn host(id: &str, mtu: u32) -> HostFacts {
        HostFacts {
            id: id.into(),
            underlay_mtu: mtu,
            datapath: "kernel".into(),
            wireguard: Some("kernel".into()),
            version: "0.1.0".into(),
            state: "alive".into(),
            lease: Some(LeaseFacts {
                granted: std::time::Duration::from_secs(10),
                remaining: std::time::Duration::from_secs(9),
            }),
        }
    }

    fn healthy() -> Facts {
        Facts {
            me: "h1".into(),
            hosts: vec![host("h1", 1500), host("h2", 1500), host("h3", 1500)],
            networks: vec![NetFacts {
                name: "net1".into(),
                mtu: None,
                encrypted: false,
                hosts: vec!["h1".into(), "h2".into(), "h3".into()],
            }],
            drift: [("net1".to_string(), Vec::new())].into(),
            kv: Ok(2.5),
            view_behind: Some((0, std::time::Duration::ZERO)),
            plugin: Some(Ok(())),
            matrix: Ok(["h1", "h2", "h3"]
                .iter()
                .map(|h| HealthRow {
                    host: h.to_string(),
                    peers: ["h1", "h2", "h3"]
                        .iter()
                        .filter(|p| *p != h)
                        .map(|p| {
                            let cell = PeerHealth {
                                ok: true,
                                since: 1,
                                skew_ms: Some(0),
                            };
                            (p.to_string(), cell)
                        })
                        .collect(),
                })
                .collect()),
            collisions: BTreeSet::new(),
            now: 100,
            lease_ttl: std::time::Duration::from_secs(10),
        }
    }

    fn only(r: &Report) -> &Finding {
        let all: Vec<&Finding> = r.findings().collect();
        assert_eq!(all.len(), 1, "{all:?}");
        all[0]
    }

    #[test]
    fn a_healthy_cluster_passes_every_check() {
        let r = diagnose(&healthy());
        assert_eq!(r.problems(), 0);
        assert_eq!(r.findings().count(), 0);
        let text = render(&r);
        for name in [
            "hosts",
            "clocks",
            "mtu",
            "wireguard",
            "entries",
            "kv",
            "docker plugin",
        ] {
            assert!(text.contains(&format!("ok       {name}")), "{text}");
        }
        assert!(text.ends_with("no problems found\n"), "{text}");
    }

    fn cell(f: &mut Facts, from: usize, to: &str, ok: bool, since: u64) {
        let rows = f.matrix.as_mut().unwrap();
        rows[from].peers.insert(
            to.into(),
            PeerHealth {
                ok,
                since,
                skew_ms: Some(0),
            },
        );
    }

    #[test]
    fn a_pair_without_vxlan_is_named_once_with_its_direction() {
        let mut f = healthy();
        // h3 takes no VXLAN: nobody's probes reach it, and its own get no answer.
        for (from, to) in [(0, "h3"), (1, "h3"), (2, "h1"), (2, "h2")] {
            cell(&mut f, from, to, false, 40);
        }
        let r = diagnose(&f);
        assert_eq!(r.problems(), 2, "{}", render(&r));
        let subjects: Vec<&str> = r.findings().map(|x| x.subject.as_str()).collect();
        assert_eq!(subjects, ["h1 <-> h3", "h2 <-> h3"]);
        let x = r.findings().next().unwrap();
        assert!(x.what.contains("either way for 60 s"), "{x:?}");
        assert!(x.hint.contains("overlayctl peers ovl-health"), "{x:?}");
        let vx = r.checks.iter().find(|c| c.name == "vxlan").unwrap();
        assert!(vx.scope.starts_with("2 of 6 host pairs"), "{}", vx.scope);

        // One direction only.
        let mut f = healthy();
        cell(&mut f, 0, "h2", false, 90);
        let r = diagnose(&f);
        assert_eq!(only(&r).subject, "h1 -> h2");
        assert!(only(&r).what.contains("one way for 10 s"));

        // A dead peer is the hosts check's finding, not a VXLAN one.
        let mut f = healthy();
        f.hosts[2].state = "dead".into();
        cell(&mut f, 0, "h3", false, 90);
        let r = diagnose(&f);
        assert_eq!(only(&r).subject, "h3");
        assert!(only(&r).what.contains("agent not alive"));
    }

    #[test]
    fn hosts_missing_from_the_matrix_are_warnings() {
        let mut f = healthy();
        f.matrix.as_mut().unwrap().remove(1);
        f.collisions.insert("h3".into());
        let r = diagnose(&f);
        assert_eq!(r.problems(), 0);
        let w: Vec<(&str, &str)> = r
            .findings()
            .map(|x| (x.subject.as_str(), x.what.as_str()))
            .collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0], ("h2", "publishes no health row"));
        assert!(w[1].1.contains("collides"), "{w:?}");
        f.matrix = Err("kv down".into());
        assert_eq!(only(&diagnose(&f)).subject, "health matrix");
    }

    #[test]
    fn a_stopped_agent_is_a_problem_with_a_hint() {
        let mut f = healthy();
        f.hosts[1].state = "agent down, datapath answering".into();
        f.hosts[2].state = "dead".into();
        let r = diagnose(&f);
        assert_eq!(r.problems(), 2);
        let text = render(&r);
        assert!(text.contains("h2: agent not alive"), "{text}");
        assert!(text.contains("start overlay-agent on h2"), "{text}");
        assert!(text.contains("overlayctl hosts rm h3"), "{text}");
        assert!(text.ends_with("2 problem(s) found\n"), "{text}");
    }

    #[test]
    fn an_mtu_larger_than_the_path_is_found_on_the_wider_host() {
        let mut f = healthy();
        f.hosts[2].underlay_mtu = 1400;
        let r = diagnose(&f);
        // h1 and h2 derive 1450, the path to h3 carries 1350.
        assert_eq!(r.problems(), 2);
        let first = r.findings().next().unwrap();
        assert_eq!(first.subject, "net1");
        assert!(first.what.contains("on h1 use MTU 1450"), "{first:?}");
        assert!(first.what.contains("path to h3 carries 1350"), "{first:?}");
        assert!(first.hint.contains("--mtu 1350"), "{first:?}");

        // One --mtu that fits every host puts it right; a host without an endpoint there
        // does not count.
        f.networks[0].mtu = Some(1350);
        assert_eq!(diagnose(&f).problems(), 0);
        f.networks[0].mtu = None;
        f.networks[0].hosts.retain(|h| h != "h3");
        assert_eq!(diagnose(&f).problems(), 0);
    }

    #[test]
    fn encrypted_networks_count_the_wireguard_overhead() {
        let mut f = healthy();
        f.networks[0].encrypted = true;
        f.networks[0].mtu = Some(1400);
        let r = diagnose(&f);
        assert_eq!(r.problems(), 3, "1400 > 1500 - 60 - 50 on every host");
        assert!(only_subject(&r, "net1"));
        f.networks[0].mtu = Some(1390);
        assert_eq!(diagnose(&f).problems(), 0);
    }

    fn only_subject(r: &Report, s: &str) -> bool {
        r.findings().all(|f| f.subject == s)
    }

    #[test]
    fn a_host_without_a_key_is_cut_off_from_encrypted_networks_only() {
        let mut f = healthy();
        f.hosts[1].wireguard = None;
        assert_eq!(
            diagnose(&f).problems(),
            0,
            "no encrypted network: no finding"
        );
        f.networks[0].encrypted = true;
        let r = diagnose(&f);
        let x = only(&r);
        assert_eq!(x.subject, "h2");
        assert!(x.what.contains("encrypted networks net1"), "{x:?}");
    }

    #[test]
    fn drift_names_the_network_and_the_first_operations() {
        let mut f = healthy();
        f.drift.insert(
            "net1".into(),
            (0..5).map(|i| format!("add fdb {i}")).collect(),
        );
        let r = diagnose(&f);
        let x = only(&r);
        assert_eq!(x.severity, Severity::Problem);
        assert!(x.what.starts_with("5 entries on h1"), "{x:?}");
        assert!(x.what.contains("add fdb 2; ..."), "{x:?}");
        assert!(x.hint.contains("overlayctl peers net1"), "{x:?}");
    }

    #[test]
    fn kv_unreachable_is_a_problem_slow_or_lagging_a_warning() {
        let mut f = healthy();
        f.kv = Err("connection refused".into());
        assert_eq!(only(&diagnose(&f)).severity, Severity::Problem);
        f.kv = Ok(SLOW_KV_MS + 1.0);
        let r = diagnose(&f);
        assert_eq!(only(&r).severity, Severity::Warning);
        assert_eq!(r.problems(), 0);
        f.kv = Ok(1.0);
        f.view_behind = Some((7, std::time::Duration::from_secs(1)));
        assert_eq!(diagnose(&f).findings().count(), 0, "behind for a moment");
        f.view_behind = Some((7, STALE_VIEW));
        assert!(only(&diagnose(&f)).what.contains("7 revisions behind"));
    }

    #[test]
    fn a_plugin_socket_that_does_not_answer_is_a_problem() {
        let mut f = healthy();
        f.plugin = None;
        assert_eq!(diagnose(&f).problems(), 0);
        f.plugin = Some(Err("connection refused".into()));
        let r = diagnose(&f);
        assert_eq!(only(&r).subject, "docker plugin");
        assert_eq!(r.problems(), 1);
    }

    #[test]
    fn the_report_round_trips_as_json() {
        let mut f = healthy();
        f.hosts[1].state = "dead".into();
        let r = diagnose(&f);
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.problems(), 1);
    }

    #[test]
    fn a_lease_not_renewed_for_two_periods_is_a_warning_before_it_runs_out() {
        let secs = std::time::Duration::from_secs_f64;
        let mut f = healthy();
        // Just renewed, or due for renewal: fine.
        for left in [10.0, 6.7] {
            f.hosts[1].lease.as_mut().unwrap().remaining = secs(left);
            assert_eq!(diagnose(&f).findings().count(), 0, "{left} s left");
        }
        // A third of the TTL left: two renewal periods without one.
        f.hosts[1].lease.as_mut().unwrap().remaining = secs(3.2);
        let r = diagnose(&f);
        assert_eq!(r.problems(), 0);
        let x = only(&r);
        assert_eq!((x.severity, x.subject.as_str()), (Severity::Warning, "h2"));
        assert!(
            x.what.starts_with("lease expires in 3.2 s of 10 s granted"),
            "{x:?}"
        );
        assert!(x.what.contains("not renewed for 6.8 s"), "{x:?}");
        assert!(x.hint.contains("systemctl status overlay-agent"), "{x:?}");
        let text = render(&r);
        assert!(text.contains("warning  hosts"), "{text}");
        assert!(text.ends_with("no problems found\n"), "{text}");
        // Once it ran out, the host is not alive: the problem it always was, and no lease.
        f.hosts[1].state = "agent down, datapath answering".into();
        f.hosts[1].lease = None;
        let r = diagnose(&f);
        assert!(only(&r).what.contains("agent not alive"));
        // A lease not looked up (the KV did not answer) says nothing.
        let mut f = healthy();
        f.hosts[0].lease = None;
        assert_eq!(diagnose(&f).findings().count(), 0);
    }

    fn skew(f: &mut Facts, from: usize, to: &str, ms: Option<i64>) {
        let rows = f.matrix.as_mut().unwrap();
        rows[from].peers.get_mut(to).unwrap().skew_ms = ms;
    }

    #[test]
    fn clocks_apart_are_named_once_per_pair_warning_then_problem() {
        // In step: the scope says what was measured.
        let r = diagnose(&healthy());
        let c = r.checks.iter().find(|c| c.name == "clocks").unwrap();
        assert_eq!(c.scope, "3 host pairs measured, largest offset 0 ms");

        // h3 runs 2.5 s ahead: h1 and h2 measure it, h3 measures them behind.
        let mut f = healthy();
        skew(&mut f, 0, "h3", Some(2_500));
        skew(&mut f, 1, "h3", Some(2_480));
        skew(&mut f, 2, "h1", Some(-2_500));
        skew(&mut f, 2, "h2", Some(-2_480));
        let r = diagnose(&f);
        assert_eq!(r.problems(), 0, "{}", render(&r));
        let found: Vec<(&str, &str)> = r
            .findings()
            .map(|x| (x.subject.as_str(), x.what.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "h1 <-> h3",
                    "clocks differ by 2.5 s (h3 ahead, measured by h1)"
                ),
                (
                    "h2 <-> h3",
                    "clocks differ by 2.5 s (h3 ahead, measured by h2)"
                ),
            ]
        );
        assert!(r.findings().all(|x| x.severity == Severity::Warning));
        assert!(
            r.findings()
                .next()
                .unwrap()
                .hint
                .contains("chronyc tracking"),
            "{}",
            render(&r)
        );

        // Beyond half the lease TTL (5 s of 10): a problem. Only h3's own row measured it
        // (an older agent on h1): its offset, turned round.
        let mut f = healthy();
        skew(&mut f, 0, "h3", None);
        skew(&mut f, 2, "h1", Some(6_000));
        let r = diagnose(&f);
        let x = only(&r);
        assert_eq!(x.severity, Severity::Problem);
        assert_eq!(x.subject, "h1 <-> h3");
        assert_eq!(
            x.what,
            "clocks differ by 6.0 s (h1 ahead, measured by h3), more than half the lease TTL (10 s)"
        );
        // At the threshold: nothing.
        skew(&mut f, 2, "h1", Some(-SKEW_WARN_MS));
        assert_eq!(diagnose(&f).findings().count(), 0);
    }

    #[test]
    fn pairs_without_a_measurement_or_down_are_not_judged() {
        let mut f = healthy();
        // Neither side measured h1-h2 (older agents), or the pair is down: no finding, the
        // scope counts what is unmeasured.
        skew(&mut f, 0, "h2", None);
        skew(&mut f, 1, "h1", None);
        cell(&mut f, 1, "h3", false, 90);
        skew(&mut f, 1, "h3", Some(60_000));
        cell(&mut f, 2, "h2", false, 90);
        let r = diagnose(&f);
        let c = r.checks.iter().find(|c| c.name == "clocks").unwrap();
        assert!(c.findings.is_empty(), "{c:?}");
        assert_eq!(
            c.scope,
            "1 host pairs measured, largest offset 0 ms, 1 not measured (older agents)"
        );
        f.matrix = Err("kv down".into());
        let r = diagnose(&f);
        let c = r.checks.iter().find(|c| c.name == "clocks").unwrap();
        assert!(
            c.findings.is_empty() && c.scope.contains("not readable"),
            "{c:?}"
        );
    }
}
