//! The fault injector: each [`Fault`] injected and undone, every step on the timeline.

use std::{
    path::Path,
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use super::{
    Invariant, World,
    ledger::EpState,
    ops::{self, Outcome},
    schedule::{Deletion, Fault, Op, PauseScope, Planned, Schedule},
    workload::NETWORKS,
};
use crate::{lab, sh};

/// How long a restarted agent or etcd member may take to answer.
const COME_BACK: Duration = Duration::from_secs(30);
/// How long a fault waits for the cluster to allow it (a leader to kill, a quorum to
/// replace a member with).
const WAIT_FOR_CLUSTER: Duration = Duration::from_secs(180);

/// Runs every fault of `sched` at its time, each on its own thread; returns when all ended.
pub fn run_schedule(w: &World, sched: &Schedule) {
    std::thread::scope(|s| {
        for p in &sched.faults {
            let wait = p.at.saturating_sub(w.now());
            std::thread::sleep(wait);
            s.spawn(move || inject(w, p));
        }
    });
}

/// Injects one fault and undoes it; the fault counts as active meanwhile.
pub fn inject(w: &World, p: &Planned) {
    w.active.fetch_add(1, Ordering::SeqCst);
    w.event(Some(p.id), format!("start: {}", p.fault));
    let r = match &p.fault {
        Fault::KillLeader { down } => kill_leader(w, p.id, *down),
        Fault::ReplaceMember { pick, down } => replace_member(w, p.id, *pick, *down),
        Fault::CutHost { host, dur } => cut_host(w, p.id, *host, *dur),
        Fault::KillAgent {
            host,
            during,
            at,
            down,
            retry,
        } => kill_agent(w, p.id, *host, *during, *at, *down, *retry),
        Fault::PauseEtcd { scope, dur } => pause_etcd(w, p.id, *scope, *dur),
        Fault::DeleteByHand { host, what, pick } => delete_by_hand(w, p.id, *host, *what, *pick),
        Fault::FillStateDir { host, dur } => fill_state_dir(w, p.id, *host, *dur),
    };
    if let Err(e) = r {
        w.harness_error(Some(p.id), format!("{e:#}"));
    }
    w.fault_ended();
    w.active.fetch_sub(1, Ordering::SeqCst);
    w.event(Some(p.id), "end");
}

fn member_name(w: &World, slot: usize) -> String {
    w.lab.lock().expect("lab").state.members[slot].name.clone()
}

/// The leader's slot, waiting (bounded) until the cluster can name one.
fn find_leader(w: &World, id: usize) -> Result<usize> {
    let t = Instant::now();
    let mut said = false;
    loop {
        let st = w.lab.lock().expect("lab").state.clone();
        match lab::etcd_leader(&st) {
            Ok(s) => return Ok(s),
            Err(e) if t.elapsed() < WAIT_FOR_CLUSTER => {
                if !said {
                    w.event(
                        Some(id),
                        format!("no leader to be found yet ({e:#}); waiting"),
                    );
                    said = true;
                }
            }
            Err(e) => return Err(e.context("finding the etcd leader")),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn kill_leader(w: &World, id: usize, down: Duration) -> Result<()> {
    // Another fault may stop the member that leads between the lookup and the kill (the
    // survivors name a dead leader until their election timeout): look again then.
    let t = Instant::now();
    let (slot, name, pid) = loop {
        let slot = find_leader(w, id)?;
        let mut lab = w.lab.lock().expect("lab");
        let m = lab.state.members[slot].clone();
        if m.pid.is_some() {
            lab.signal_member(slot, Signal::SIGKILL)?;
            break (slot, m.name, m.pid);
        }
        drop(lab);
        if t.elapsed() > WAIT_FOR_CLUSTER {
            bail!("the etcd leader {} is stopped and no other leads", m.name);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let killed = Instant::now();
    w.event(
        Some(id),
        format!("kill -9 etcd leader {name} (pid {})", pid.unwrap_or(0)),
    );
    // Who leads next, and how soon (the survivors may also be paused or stopped).
    while killed.elapsed() < down {
        let st = w.lab.lock().expect("lab").state.clone();
        // The survivors name the dead leader until their election timeout.
        if let Ok(s) = lab::etcd_leader(&st)
            && s != slot
        {
            w.event(
                Some(id),
                format!(
                    "new leader {} after {:.1}s",
                    member_name(w, s),
                    killed.elapsed().as_secs_f64()
                ),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(down.saturating_sub(killed.elapsed()));
    {
        let mut lab = w.lab.lock().expect("lab");
        if lab.state.members[slot].pid.is_none() && lab.state.members[slot].name == name {
            lab.start_member(slot)?;
        }
    }
    w.event(Some(id), format!("{name} started again on its data dir"));
    wait_member(w, id, slot)
}

/// Waits until the member in `slot` answers health checks.
fn wait_member(w: &World, id: usize, slot: usize) -> Result<()> {
    let (ep, name) = {
        let lab = w.lab.lock().expect("lab");
        let m = &lab.state.members[slot];
        (m.endpoint(), m.name.clone())
    };
    let t = Instant::now();
    sh::poll_every(
        &format!("etcd member {name} to be healthy"),
        WAIT_FOR_CLUSTER,
        Duration::from_millis(250),
        || {
            lab::etcdctl(&w.state, std::slice::from_ref(&ep), &["endpoint", "health"])
                .ok()
                .map(|_| ())
        },
    )?;
    w.event(
        Some(id),
        format!("{name} healthy after {:.1}s", t.elapsed().as_secs_f64()),
    );
    Ok(())
}

fn replace_member(w: &World, id: usize, pick: usize, down: Duration) -> Result<()> {
    let (slot, name) = {
        let mut lab = w.lab.lock().expect("lab");
        let running: Vec<usize> = (0..lab.state.members.len())
            .filter(|s| lab.state.members[*s].pid.is_some())
            .collect();
        if running.is_empty() {
            bail!("no etcd member is running");
        }
        let slot = running[pick % running.len()];
        let name = lab.state.members[slot].name.clone();
        lab.signal_member(slot, Signal::SIGKILL)?;
        (slot, name)
    };
    w.event(
        Some(id),
        format!("etcd member {name} stopped for good (kill -9)"),
    );
    std::thread::sleep(down);
    let t = Instant::now();
    let mut said = false;
    let new = loop {
        // The cluster is asked without holding the lab (etcd may take seconds to answer).
        let st = w.lab.lock().expect("lab").state.clone();
        let r = lab::prepare_replacement(&st, slot)
            .and_then(|r| w.lab.lock().expect("lab").start_replacement(slot, r));
        match r {
            Ok(n) => break n,
            Err(e) if t.elapsed() < WAIT_FOR_CLUSTER => {
                if !said {
                    w.event(
                        Some(id),
                        format!("replacement waits for the cluster: {e:#}"),
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e.context(format!("replacing {name}"))),
        }
    };
    w.event(
        Some(id),
        format!("member {name} removed; {new} added with a fresh data dir and started"),
    );
    wait_member(w, id, slot)
}

fn cut_host(w: &World, id: usize, host: usize, dur: Duration) -> Result<()> {
    let ul = format!("{}-ul", w.state.name);
    let port = format!("ul-h{}", host + 1);
    sh::ip(&["-n", &ul, "link", "set", &port, "down"])?;
    w.event(
        Some(id),
        format!("h{} cut off the underlay ({port} down)", host + 1),
    );
    std::thread::sleep(dur);
    sh::ip(&["-n", &ul, "link", "set", &port, "up"])?;
    w.event(Some(id), format!("h{} back on the underlay", host + 1));
    Ok(())
}

fn pause_etcd(w: &World, id: usize, scope: PauseScope, dur: Duration) -> Result<()> {
    let slots: Vec<usize> = match scope {
        PauseScope::All => {
            let lab = w.lab.lock().expect("lab");
            (0..lab.state.members.len())
                .filter(|s| lab.state.members[*s].pid.is_some())
                .collect()
        }
        PauseScope::Leader => vec![find_leader(w, id)?],
    };
    let mut paused = Vec::new();
    {
        let lab = w.lab.lock().expect("lab");
        for s in slots {
            let m = &lab.state.members[s];
            if let Some(pid) = m.pid {
                kill(Pid::from_raw(pid as i32), Signal::SIGSTOP)
                    .with_context(|| format!("SIGSTOP {}", m.name))?;
                paused.push((s, pid, m.name.clone()));
            }
        }
    }
    let names: Vec<&str> = paused.iter().map(|(_, _, n)| n.as_str()).collect();
    w.event(Some(id), format!("SIGSTOP etcd {}", names.join(", ")));
    std::thread::sleep(dur);
    let lab = w.lab.lock().expect("lab");
    let mut resumed = Vec::new();
    for (s, pid, name) in &paused {
        // Only a process still ours: another fault may have killed or replaced it.
        if lab.state.members[*s].pid == Some(*pid) {
            kill(Pid::from_raw(*pid as i32), Signal::SIGCONT)
                .with_context(|| format!("SIGCONT {name}"))?;
            resumed.push(name.as_str());
        }
    }
    drop(lab);
    w.event(Some(id), format!("SIGCONT etcd {}", resumed.join(", ")));
    Ok(())
}

/// What the KV and the host's local state hold of an operation's object right after a
/// kill, for the timeline (where the kill landed).
fn landed(w: &World, host: usize, during: Op, net: &str, name: &str) -> String {
    let kv = match w.snapshot() {
        Ok((s, _, _)) => match during {
            Op::NetworkCreate => format!(
                "network record {}, VNI claim {}",
                yes(s.networks.contains_key(name)),
                yes(s.vnis.values().any(|n| n == name))
            ),
            _ => format!(
                "address claim {}, endpoint record {}",
                yes(s.addrs.values().any(|o| o == name)),
                yes(s
                    .endpoints
                    .contains_key(&(net.to_string(), name.to_string())))
            ),
        },
        Err(e) => format!("KV unreadable ({e:#})"),
    };
    let local = std::fs::read_to_string(w.state.hosts[host].state_dir.join("local.json"))
        .map(|t| yes(t.contains(&format!("\"{net}/{name}\""))))
        .unwrap_or("unreadable");
    match during {
        Op::NetworkCreate => kv,
        _ => format!("{kv}, in local.json {local}"),
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn kill_agent(
    w: &World,
    id: usize,
    host: usize,
    during: Op,
    at: f64,
    down: Duration,
    retry: bool,
) -> Result<()> {
    let by = format!("fault #{id}");
    let name = format!("k{id}");
    let net = NETWORKS[id % NETWORKS.len()].to_string();
    let _g = w.host_locks[host].lock().expect("host lock");
    if during == Op::Detach {
        // Something to detach first.
        let t = Instant::now();
        loop {
            match w.attach(host, &net, &name, &by) {
                Outcome::Done(_) => break,
                o if t.elapsed() > WAIT_FOR_CLUSTER => {
                    bail!("could not attach {net}/{name} to detach it: {o:?}")
                }
                Outcome::Unknown(_) => {
                    w.resolve_ep(&net, &name, true, w.now() + WAIT_FOR_CLUSTER);
                    if w.ledger.lock().expect("ledger").eps[&(net.clone(), name.clone())].state
                        == EpState::Live
                    {
                        break;
                    }
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let kind = during.to_string();
    let usual = w.usual(host, &kind, Duration::from_millis(150));
    let delay = usual.mul_f64(at);
    // The kill goes by PID, without waiting for the lab (another fault may hold it while
    // etcd takes its time): the agent's PID is read now.
    let pid = w.lab.lock().expect("lab").state.hosts[host]
        .pid
        .with_context(|| format!("h{}'s agent is not running", host + 1))?;
    let running = match during {
        Op::Attach => w.attach_start(host, &net, &name, &by)?,
        Op::Detach => w.detach_start(host, &net, &name)?,
        Op::NetworkCreate => w.create_start(host, &name, false, false)?,
    };
    std::thread::sleep(delay.saturating_sub(running.started().elapsed()));
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)
        .with_context(|| format!("kill -9 h{}'s agent", host + 1))?;
    let at_ms = running.started().elapsed().as_millis();
    w.lab.lock().expect("lab").reap_agent(host)?;
    let took = running.started().elapsed();
    let outcome = running.finish(ops::OP_TIMEOUT);
    match during {
        Op::Attach => w.attach_done(host, &net, &name, &outcome, took),
        Op::Detach => w.detach_done(host, &net, &name, &outcome, took),
        Op::NetworkCreate => w.create_done(host, &name, &outcome, took),
    }
    let what = match during {
        Op::NetworkCreate => format!("network create {name}"),
        _ => format!("{during} {net}/{name}"),
    };
    w.event(
        Some(id),
        format!(
            "kill -9 h{}'s agent (pid {pid}) {at_ms} ms into {what} (usual {} ms): {}; {}",
            host + 1,
            usual.as_millis(),
            outcome.word(),
            landed(w, host, during, &net, &name)
        ),
    );
    std::thread::sleep(down);
    restart_agent(w, id, host)?;
    drop(_g);
    w.fault_ended();
    // The user of the interrupted operation settles it.
    let deadline = w.now() + WAIT_FOR_CLUSTER;
    let settled = match during {
        Op::NetworkCreate if !retry => {
            let open = w
                .ledger
                .lock()
                .expect("ledger")
                .nets
                .get(&name)
                .is_some_and(|n| n.state.open());
            if open {
                w.remove_net(host, &name);
            }
            w.resolve_net(host, &name, deadline)
        }
        Op::NetworkCreate => w.resolve_net(host, &name, deadline),
        _ => w.resolve_ep(&net, &name, retry, deadline),
    };
    if !settled {
        w.harness_error(Some(id), format!("{what} could not be settled"));
    }
    let state = match during {
        Op::NetworkCreate => w
            .ledger
            .lock()
            .expect("ledger")
            .nets
            .get(&name)
            .map(|n| format!("{:?}", n.state)),
        _ => w
            .ledger
            .lock()
            .expect("ledger")
            .eps
            .get(&(net.clone(), name.clone()))
            .map(|e| format!("{:?}", e.state)),
    };
    w.event(
        Some(id),
        format!(
            "{what} settled: {}",
            state.unwrap_or_default().to_lowercase()
        ),
    );
    if during == Op::NetworkCreate
        && matches!(
            w.ledger
                .lock()
                .expect("ledger")
                .nets
                .get(&name)
                .map(|n| n.state),
            Some(super::ledger::NetState::Live)
        )
    {
        w.remove_net(host, &name);
        w.resolve_net(host, &name, w.now() + WAIT_FOR_CLUSTER);
    }
    Ok(())
}

/// Starts host `host`'s agent again and waits until it answers; an agent that does not come
/// back is a stray exit.
pub fn restart_agent(w: &World, id: usize, host: usize) -> Result<()> {
    w.lab.lock().expect("lab").start_agent(host)?;
    match w.wait_agent(host, COME_BACK) {
        Ok(()) => {
            w.event(
                Some(id),
                format!("h{}'s agent started again and answers", host + 1),
            );
            Ok(())
        }
        Err(e) => {
            let h = &w.state.hosts[host];
            w.violation(
                Invariant::NoStrayExit,
                format!(
                    "h{}'s agent did not come back after a restart: {e:#}; log {}:\n{}",
                    host + 1,
                    h.log.display(),
                    lab::tail(&h.log, 15)
                ),
            );
            Ok(())
        }
    }
}

/// `ip ...` in a namespace given by path (a sandbox), as a command.
fn in_path_ns(path: &Path, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", path.display()))
        .arg("--")
        .arg(program);
    c
}

fn json_of(mut c: Command) -> Result<Value> {
    let out = sh::run(&mut c)?;
    if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Value::Array(Vec::new()));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// What a deletion removed and how to see it back.
struct Deleted {
    what: String,
    back: Box<dyn Fn() -> bool>,
}

fn delete_by_hand(w: &World, id: usize, host: usize, what: Deletion, pick: usize) -> Result<()> {
    let h = w.state.hosts[host].clone();
    let ebpf = h.datapath == "ebpf";
    let mine: Vec<super::ledger::Ep> = w
        .ledger
        .lock()
        .expect("ledger")
        .eps
        .values()
        .filter(|e| e.host == host && e.state == EpState::Live)
        .cloned()
        .collect();
    if mine.is_empty() {
        w.event(
            Some(id),
            format!("nothing to delete: no live endpoint on h{}", host + 1),
        );
        return Ok(());
    }
    let ep = mine[pick % mine.len()].clone();
    let sandbox = lab::sandbox_path(&h, &ep.net);
    let what = match what {
        Deletion::Fdb | Deletion::Neigh | Deletion::Flood if ebpf => {
            w.event(
                Some(id),
                format!("h{} runs the eBPF datapath (entries live in BPF maps): deleting the host end of a veth instead", host + 1),
            );
            Deletion::HostIface
        }
        x => x,
    };
    if !ebpf && !sandbox.exists() {
        bail!("no sandbox namespace at {}", sandbox.display());
    }
    if matches!(what, Deletion::ContainerIface | Deletion::HostIface) {
        w.disturbed
            .lock()
            .expect("disturbed")
            .insert((ep.net.clone(), ep.name.clone()));
    }
    let d = match what {
        Deletion::ContainerIface => {
            let ifname = ep.ifname.clone().unwrap_or_else(|| "eth0".into());
            sh::ip(&["-n", &ep.ns, "link", "del", &ifname])?;
            let (ns, ip) = (
                ep.ns.clone(),
                ep.ip.map(|i| i.to_string()).unwrap_or_default(),
            );
            Deleted {
                what: format!("{ifname} of {} in {}", ep.name, ep.ns),
                back: Box::new(move || has_addr(&ns, &ip)),
            }
        }
        Deletion::HostIface => {
            let ifname = ep.ifname.clone().unwrap_or_else(|| "eth0".into());
            let link = json_of({
                let mut c = Command::new("ip");
                c.args(["-n", &ep.ns, "-j", "link", "show", &ifname]);
                c
            })?;
            let peer = link[0]["link_index"]
                .as_u64()
                .context("container interface without a peer index")?;
            let mut del = if ebpf {
                lab_ns_cmd(&h.ns, "ip")
            } else {
                in_path_ns(&sandbox, "ip")
            };
            let links = json_of({
                let mut c = if ebpf {
                    lab_ns_cmd(&h.ns, "ip")
                } else {
                    in_path_ns(&sandbox, "ip")
                };
                c.args(["-j", "link", "show"]);
                c
            })?;
            let name = links
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["ifindex"].as_u64() == Some(peer))
                .and_then(|l| l["ifname"].as_str())
                .context("host end of the container's veth not found")?
                .to_string();
            sh::run(del.args(["link", "del", &name]))?;
            let (ns, ip) = (
                ep.ns.clone(),
                ep.ip.map(|i| i.to_string()).unwrap_or_default(),
            );
            Deleted {
                what: format!("{name}, the host end of {}'s veth", ep.name),
                back: Box::new(move || has_addr(&ns, &ip)),
            }
        }
        Deletion::Vxlan => {
            if ebpf {
                sh::ip(&["-n", &h.ns, "link", "del", "ovl_vx0"])?;
                let ns = h.ns.clone();
                Deleted {
                    what: "ovl_vx0".into(),
                    back: Box::new(move || sh::ip(&["-n", &ns, "link", "show", "ovl_vx0"]).is_ok()),
                }
            } else {
                sh::run(in_path_ns(&sandbox, "ip").args(["link", "del", "vxlan0"]))?;
                let sb = sandbox.clone();
                Deleted {
                    what: format!("vxlan0 of {}", ep.net),
                    back: Box::new(move || {
                        sh::run(in_path_ns(&sb, "ip").args(["link", "show", "vxlan0", "up"]))
                            .map(|o| !o.stdout.is_empty())
                            .unwrap_or(false)
                    }),
                }
            }
        }
        Deletion::Fdb | Deletion::Flood => {
            let fdb = json_of({
                let mut c = in_path_ns(&sandbox, "bridge");
                c.args(["-j", "fdb", "show", "dev", "vxlan0"]);
                c
            })?;
            let zero = "00:00:00:00:00:00";
            let entries: Vec<(String, String)> = fdb
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    Some((
                        e["mac"].as_str()?.to_string(),
                        e["dst"].as_str()?.to_string(),
                    ))
                })
                .filter(|(m, _)| (m == zero) == (what == Deletion::Flood))
                .collect();
            if entries.is_empty() {
                w.event(
                    Some(id),
                    format!("no {what} on {} of h{}: nothing deleted", ep.net, host + 1),
                );
                return Ok(());
            }
            let (mac, dst) = entries[pick % entries.len()].clone();
            sh::run(
                in_path_ns(&sandbox, "bridge")
                    .args(["fdb", "del", &mac, "dev", "vxlan0", "dst", &dst]),
            )?;
            let sb = sandbox.clone();
            let (m2, d2) = (mac.clone(), dst.clone());
            Deleted {
                what: format!("{what} {mac} dst {dst} on {}", ep.net),
                back: Box::new(move || {
                    sh::run(in_path_ns(&sb, "bridge").args(["fdb", "show", "dev", "vxlan0"]))
                        .map(|o| {
                            String::from_utf8_lossy(&o.stdout).lines().any(|l| {
                                l.starts_with(&format!("{m2} "))
                                    && l.contains(&format!("dst {d2} "))
                            })
                        })
                        .unwrap_or(false)
                }),
            }
        }
        Deletion::Neigh => {
            let neigh = json_of({
                let mut c = in_path_ns(&sandbox, "ip");
                c.args(["-j", "neigh", "show", "dev", "vxlan0"]);
                c
            })?;
            let ips: Vec<String> = neigh
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["dst"].as_str().map(str::to_string))
                .collect();
            if ips.is_empty() {
                w.event(
                    Some(id),
                    format!(
                        "no neighbour entry on {} of h{}: nothing deleted",
                        ep.net,
                        host + 1
                    ),
                );
                return Ok(());
            }
            let ip = ips[pick % ips.len()].clone();
            sh::run(in_path_ns(&sandbox, "ip").args(["neigh", "del", &ip, "dev", "vxlan0"]))?;
            let sb = sandbox.clone();
            let i2 = ip.clone();
            Deleted {
                what: format!("neighbour entry {ip} on {}", ep.net),
                back: Box::new(move || {
                    sh::run(in_path_ns(&sb, "ip").args(["neigh", "show", &i2, "dev", "vxlan0"]))
                        .map(|o| String::from_utf8_lossy(&o.stdout).contains("PERMANENT"))
                        .unwrap_or(false)
                }),
            }
        }
    };
    let t = Instant::now();
    w.event(Some(id), format!("deleted {} on h{}", d.what, host + 1));
    let back = sh::poll_every(
        "restoration",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || (d.back)().then_some(()),
    );
    match back {
        Ok(()) => w.event(
            Some(id),
            format!(
                "{} restored after {:.1}s",
                d.what,
                t.elapsed().as_secs_f64()
            ),
        ),
        Err(_) => w.event(Some(id), format!("{} not restored within 10 s", d.what)),
    }
    Ok(())
}

fn lab_ns_cmd(ns: &str, program: &str) -> Command {
    sh::in_ns(ns, program)
}

/// Whether namespace `ns` has address `ip` on an interface that is up.
pub fn has_addr(ns: &str, ip: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "-o", "-4", "addr", "show", "up"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {ip}/")))
        .unwrap_or(false)
}

fn fill_state_dir(w: &World, id: usize, host: usize, dur: Duration) -> Result<()> {
    let dir = w.state.hosts[host].state_dir.clone();
    let file = dir.join("chaos-fill");
    // dd stops at ENOSPC with a non-zero exit: that is the point.
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=64k", "status=none"])
        .output()
        .context("dd")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.contains("No space left") {
        bail!("filling {} did not end at ENOSPC: {err}", dir.display());
    }
    let st = nix::sys::statvfs::statvfs(&dir)?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let used = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    w.event(
        Some(id),
        format!(
            "h{}'s state dir full: {} KiB written, {free} bytes free",
            host + 1,
            used / 1024
        ),
    );
    std::thread::sleep(dur);
    std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    w.event(Some(id), format!("h{}'s state dir emptied again", host + 1));
    Ok(())
}
