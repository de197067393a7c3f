//! `cargo xtask bench scale`: two real agents (release build) in the netns lab on etcd,
//! inside a simulated cluster ([`crate::scale`]) of `--hosts` hosts with `--per-host`
//! endpoints each, one size after another in one run. Per size:
//!
//! - the time from the agents' start to both kernels holding exactly the entries of their
//!   network (they start into the full cluster, then attach one container each);
//! - a full listing of the cluster state, as the agent timed its last one (`status`);
//! - RSS, and CPU over an idle window, and the requests etcd served per agent and second in
//!   it (etcd's own counters; the simulated hosts' lease renewals are held for the window);
//! - event to programmed: an endpoint added on (removed from) host 1's network, from the
//!   write's acknowledgement to `ip monitor neigh` in host 1's network namespace showing the
//!   entry, while the other networks churn (writes host 1 must ignore);
//!
//! and every figure's ratio to the first size's.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;

use super::{median, quantile};
use crate::{
    lab::{KvKind, Lab, LabConfig, LabGuard, OUTSIDE_ADDR},
    scale::{self, QUIET_MAX, Shape, SimCluster},
};

/// What to run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Cluster sizes in hosts (two real, the rest simulated).
    pub hosts: Vec<usize>,
    /// Endpoints per host.
    pub per_host: usize,
    /// Endpoints per network.
    pub net_size: usize,
    /// Seconds of the idle window.
    pub idle_secs: u64,
    /// Endpoints added and removed on host 1's network.
    pub events: usize,
    /// Rounds over every size (sizes side by side in each round); figures are medians.
    pub runs: usize,
}

#[derive(Debug, Clone)]
struct Row {
    hosts: usize,
    endpoints: usize,
    written_s: f64,
    converged_s: f64,
    list_ms: f64,
    rss_mb: f64,
    idle_cpu: f64,
    etcd_rps: f64,
    add: (f64, f64),
    del: (f64, f64),
}

impl Row {
    /// Each figure's median over `rows` (one size, several rounds).
    fn median(rows: &[Row]) -> Row {
        let m = |f: fn(&Row) -> f64| median(&mut rows.iter().map(f).collect::<Vec<_>>());
        Row {
            hosts: rows[0].hosts,
            endpoints: rows[0].endpoints,
            written_s: m(|r| r.written_s),
            converged_s: m(|r| r.converged_s),
            list_ms: m(|r| r.list_ms),
            rss_mb: m(|r| r.rss_mb),
            idle_cpu: m(|r| r.idle_cpu),
            etcd_rps: m(|r| r.etcd_rps),
            add: (m(|r| r.add.0), m(|r| r.add.1)),
            del: (m(|r| r.del.0), m(|r| r.del.1)),
        }
    }
}

/// Runs every size and prints the table.
pub fn run(o: &Opts) -> Result<()> {
    println!(
        "bench scale: sizes {:?} hosts x {} endpoints/host, {} per network; idle window {} s; {} adds and removes on host 1's network",
        o.hosts, o.per_host, o.net_size, o.idle_secs, o.events
    );
    if o.idle_secs > QUIET_MAX.as_secs() {
        bail!("--idle-secs at most {}", QUIET_MAX.as_secs());
    }
    let mut runs: Vec<Vec<Row>> = vec![Vec::new(); o.hosts.len()];
    for round in 1..=o.runs.max(1) {
        for (i, &n) in o.hosts.iter().enumerate() {
            let r = measure(n, o).with_context(|| format!("{n} hosts, round {round}"))?;
            println!("  round {round}: {r:?}");
            runs[i].push(r);
        }
    }
    let rows: Vec<Row> = runs.iter().map(|r| Row::median(r)).collect();
    if o.runs > 1 {
        println!("\nmedians of {} rounds:", o.runs);
    }
    println!(
        "\n| hosts | endpoints | written in s | start -> converged s | full listing ms | RSS MB | idle CPU % of a core | etcd req/s per agent | add p50/p99 ms | remove p50/p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.0} | {:.1} | {:.2} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} |",
            r.hosts,
            r.endpoints,
            r.written_s,
            r.converged_s,
            r.list_ms,
            r.rss_mb,
            r.idle_cpu,
            r.etcd_rps,
            r.add.0,
            r.add.1,
            r.del.0,
            r.del.1
        );
    }
    if let Some(base) = rows.first() {
        println!(
            "\nratio to {} hosts (converged, listing, RSS, idle CPU, etcd req/s, add p99, remove p99):",
            base.hosts
        );
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        for r in &rows {
            println!(
                "  {:>5} hosts: {:.2} {:.2} {:.2} {:.2} {:.2} {:.2} {:.2}",
                r.hosts,
                ratio(r.converged_s, base.converged_s),
                ratio(r.list_ms, base.list_ms),
                ratio(r.rss_mb, base.rss_mb),
                ratio(r.idle_cpu, base.idle_cpu),
                ratio(r.etcd_rps, base.etcd_rps),
                ratio(r.add.1, base.add.1),
                ratio(r.del.1, base.del.1),
            );
        }
    }
    Ok(())
}

fn measure(hosts: usize, o: &Opts) -> Result<Row> {
    if hosts < 3 {
        bail!("a size is at least 3 hosts (two real)");
    }
    let mut cfg = LabConfig::new("bscale", 2);
    cfg.kv = KvKind::Etcd;
    cfg.start_agents = false;
    // The agents' defaults (lease, resync), not the quick ones of the test labs.
    cfg.agent_args = vec!["--dns-upstream".into(), OUTSIDE_ADDR.into()];
    let mut lab = LabGuard(Some(Lab::up(cfg)?));
    let rt = scale::runtime(&lab)?;
    let shape = Shape {
        hosts: hosts - 2,
        per_host: o.per_host,
        net_size: o.net_size,
    };
    let t = Instant::now();
    let mut sim = scale::populate_in(&rt, &lab, shape)?;
    let written_s = t.elapsed().as_secs_f64();
    println!(
        "  {hosts} hosts: {} endpoints on {} networks written in {written_s:.1} s",
        sim.endpoints.len(),
        sim.nets.len()
    );

    let t = Instant::now();
    for i in 0..2 {
        lab.start_agent(i)?;
    }
    for i in 0..2 {
        lab.wait_agent(i)?;
    }
    let net = "sc0";
    for (i, name) in [(0, "c1"), (1, "c2")] {
        let ns = lab.add_container(name)?;
        lab.ctl_json::<serde_json::Value>(
            i,
            &[
                "attach",
                net,
                "--name",
                name,
                "--netns",
                &format!("/run/netns/{ns}"),
            ],
        )?;
    }
    let watched = [(0, net), (1, net)];
    wait_exact(&lab, &sim, &rt, &watched, Duration::from_secs(300))?;
    let converged_s = t.elapsed().as_secs_f64();

    let list_ms = (0..2)
        .map(|i| {
            lab.ctl_json::<serde_json::Value>(i, &["status"])
                .map(|s| s["kv"]["last_list_ms"].as_f64().unwrap_or(f64::NAN))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .fold(0.0, f64::max);

    // Idle: nothing written; only the agents talk to etcd.
    let pids: Vec<u32> = (0..2)
        .map(|i| lab.host(i).pid.context("agent pid"))
        .collect::<Result<_>>()?;
    rt.block_on(sim.quiet())?;
    let ticks0: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum::<Result<u64>>()?;
    let req0 = etcd_requests(&lab)?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    let secs = t.elapsed().as_secs_f64();
    let ticks1: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum::<Result<u64>>()?;
    let req1 = etcd_requests(&lab)?;
    rt.block_on(sim.resume())?;
    let hz = clock_ticks()?;
    let idle_cpu = (ticks1 - ticks0) as f64 / hz / secs * 100.0 / 2.0;
    let etcd_rps = (req1 - req0) / secs / 2.0;
    let rss_mb = pids
        .iter()
        .map(|&p| rss_kb(p))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .fold(0.0, f64::max)
        / 1024.0;

    let (add, del) = events(&lab, &mut sim, &rt, net, o.events)?;
    wait_exact(&lab, &sim, &rt, &watched, Duration::from_secs(60))?;
    drop(sim);
    Ok(Row {
        hosts,
        endpoints: hosts * o.per_host,
        written_s,
        converged_s,
        list_ms,
        rss_mb,
        idle_cpu,
        etcd_rps,
        add,
        del,
    })
}

/// Waits until every watched (host, network) holds exactly its entries.
fn wait_exact(
    lab: &Lab,
    sim: &SimCluster,
    rt: &tokio::runtime::Runtime,
    watched: &[(usize, &str)],
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let Some(diff) = scale::mismatch(lab, sim, rt, watched)? else {
            return Ok(());
        };
        if start.elapsed() > timeout {
            bail!("not exact after {timeout:?}: {diff}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Adds `n` endpoints on `net` one by one, then removes them, each time with five endpoints
/// replaced on other networks in between; returns (p50, p99) in ms of add and remove, from the write's
/// acknowledgement to `ip monitor neigh` showing it on host 1.
fn events(
    lab: &Lab,
    sim: &mut SimCluster,
    rt: &tokio::runtime::Runtime,
    net: &str,
    n: usize,
) -> Result<((f64, f64), (f64, f64))> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
    let sb = lab.sandbox(0, net);
    let mut mon = Command::new("nsenter")
        .arg(format!("--net={}", sb.display()))
        .args(["ip", "monitor", "neigh", "dev", "vxlan0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("ip monitor")?;
    let out = mon.stdout.take().context("monitor stdout")?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // Give the monitor a moment to subscribe.
    std::thread::sleep(Duration::from_millis(300));
    let others: Vec<String> = sim
        .nets
        .iter()
        .map(|x| x.name.clone())
        .filter(|x| x != net)
        .collect();
    // Five endpoints replaced on other networks (their sizes stay as they are).
    let noise = |sim: &mut SimCluster, rng: &mut rand_chacha::ChaCha8Rng| -> Result<()> {
        use rand::{Rng, seq::IteratorRandom};
        if others.is_empty() {
            return Ok(());
        }
        for _ in 0..5 {
            let other = &others[rng.random_range(0..others.len())];
            let victim = sim
                .endpoints
                .keys()
                .filter(|(n, _)| n == other)
                .choose(rng)
                .cloned();
            if let Some((n, id)) = victim {
                rt.block_on(sim.remove(&n, &id))?;
            }
            rt.block_on(sim.add(other, rng))?;
        }
        Ok(())
    };
    // Room on the network: a /24 holds 253 endpoints.
    let used = sim.endpoints.keys().filter(|(n, _)| n == net).count() + 2;
    if used + n > 253 {
        bail!("{net} holds {used} endpoints: no room for {n} more (lower --events or --net-size)");
    }
    let mut added = Vec::new();
    let mut acked: BTreeMap<String, Instant> = BTreeMap::new();
    for _ in 0..n {
        let rec = rt.block_on(sim.add(net, &mut rng))?;
        acked.insert(format!("{} ", rec.ip), Instant::now());
        added.push(rec);
        noise(sim, &mut rng)?;
    }
    let add = latencies(&rx, &acked, false, n)?;
    let mut acked = BTreeMap::new();
    for rec in &added {
        rt.block_on(sim.remove(net, &rec.id))?;
        acked.insert(format!("{} ", rec.ip), Instant::now());
        noise(sim, &mut rng)?;
    }
    let del = latencies(&rx, &acked, true, n)?;
    mon.kill().ok();
    mon.wait().ok();
    reader.join().ok();
    Ok((add, del))
}

/// Matches monitor lines to acknowledged writes (by address); (p50, p99) in ms.
fn latencies(
    rx: &mpsc::Receiver<(Instant, String)>,
    acked: &BTreeMap<String, Instant>,
    deleted: bool,
    n: usize,
) -> Result<(f64, f64)> {
    let mut ms = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n && Instant::now() < deadline {
        let Ok((at, line)) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        if line.starts_with("Deleted ") != deleted {
            continue;
        }
        let addr = line.trim_start_matches("Deleted ");
        let Some((key, t)) = acked.iter().find(|(k, _)| addr.starts_with(k.as_str())) else {
            continue;
        };
        if seen.insert(key.clone()) {
            // An entry programmed before the acknowledgement arrived counts as 0.
            ms.push(at.saturating_duration_since(*t).as_secs_f64() * 1000.0);
        }
    }
    if seen.len() < n {
        bail!(
            "{} of {n} {} never shown by ip monitor",
            n - seen.len(),
            if deleted { "removals" } else { "adds" }
        );
    }
    Ok((median(&mut ms), quantile(&mut ms, 0.99)))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

fn clock_ticks() -> Result<f64> {
    let out = crate::sh::run(Command::new("getconf").arg("CLK_TCK"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Resident set size of a process, in KiB.
fn rss_kb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// Request messages etcd has received so far (its gRPC server counters, unary calls and
/// messages on streams such as lease renewals alike), read from its metrics in the lab's
/// underlay namespace.
fn etcd_requests(lab: &Lab) -> Result<f64> {
    let out = crate::sh::run(Command::new("ip").args([
        "netns",
        "exec",
        &format!("{}-ul", lab.state.name),
        "curl",
        "-sf",
        "http://198.18.0.1:2379/metrics",
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let total = text
        .lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Ok(total)
}
