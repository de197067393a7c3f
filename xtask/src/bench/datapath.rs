//! `cargo xtask bench datapath --runs N`: container-to-container throughput and latency across
//! two lab hosts on the kernel path and the eBPF path, side by side with the underlay (host
//! namespace to host namespace, no encapsulation: the limit on this machine).
//!
//! Two 2-host labs run at the same time (`bdpk` on the kernel path, `bdpe` on the eBPF path),
//! each with one container per host on an internal network. Each run measures throughput
//! (iperf3, one TCP stream, 4 s) bracketed by the underlay: underlay, one overlay path,
//! underlay, the other overlay path, underlay (which overlay path goes first alternates from
//! run to run). Each overlay figure is paired with the mean of the two underlay figures around
//! it, which cancels the machine's drift over the seconds between them (on this VM, it moves
//! single runs by up to 2x); the table reports medians over the runs, ratios to the underlay
//! and eBPF / kernel, and those bracketed ratios. Each run also measures latency on every path
//! two ways, reported as medians over the runs:
//! * paced ping: 50 pings per path, every path pinged in turn, 10 ms apart (one `ping` per
//!   path, started 10 ms after the previous one); the median and the average of each path's
//!   RTTs, and the ratio of every eBPF ping to the underlay ping 10-20 ms before it, whose
//!   median over all rounds is the steadiest figure here. The CPUs idle between packets, so
//!   on this VM the RTT is mostly cold caches and wake-up; pings of one path taken in a block
//!   drift 2x from block to block, which interleaving cancels;
//! * a `sockperf` UDP ping-pong for 2 s (median RTT of back-to-back round trips, with
//!   sub-microsecond resolution: mostly the path itself).
//!
//! With `--encrypted`, the same rounds compare a plain network with an encrypted one instead
//! of the kernel path with the eBPF path: one 2-host lab (`bdpk`) on the kernel datapath (the
//! eBPF path has no encrypted networks yet), with one container per host on a plain network
//! and one per host on an encrypted network (VXLAN through the agents' userspace WireGuard,
//! `ovlwg0`), beside the underlay. During every overlay throughput run it also samples CPU
//! time: each agent's (`/proc/<pid>/stat` utime + stime, and its busiest thread's), the
//! iperf3 client's and server's (iperf3's own figures), all as % of one core, and the whole
//! machine's busy time; what the encrypted path spends shows what limits it.

use std::{
    collections::BTreeMap,
    io::Read,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::median;
use crate::lab::{DatapathSel, Lab, LabConfig, LabGuard, tail};
use crate::sh::wait_for;

/// Seconds per iperf3 measurement.
const SECONDS: u32 = 4;

/// The agents' WireGuard device (`ovl_model::WG_IFNAME`).
const WG_IFNAME: &str = "ovlwg0";

/// One measured path: where the server runs, where the client runs, the server's address.
struct Path {
    label: &'static str,
    client_ns: String,
    server_ns: String,
    server_ip: String,
}

/// An iperf3 server we started; killed by PID when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_netns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Starts a server (`cmd`, run in the path's server namespace) and waits until `ss` shows
/// its socket (`ss_flags`: `-Hltn` for TCP, `-Hlun` for UDP) on `port`.
fn start_listener(p: &Path, cmd: &[&str], ss_flags: &str, port: &str) -> Result<Server> {
    let child = in_netns(&p.server_ns, cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (is {} installed?)", cmd.join(" "), cmd[0]))?;
    let server = Server(child);
    let filter = format!("sport = :{port}");
    wait_for(
        &format!("{} server of {}", cmd[0], p.label),
        Duration::from_secs(10),
        || {
            let out = in_netns(&p.server_ns, &["ss", ss_flags, &filter])
                .output()
                .ok()?;
            (out.status.success() && !out.stdout.is_empty()).then_some(())
        },
    )?;
    Ok(server)
}

/// Starts `iperf3 -s` on the path's server address (TCP 5201).
fn start_server(p: &Path) -> Result<Server> {
    start_listener(p, &["iperf3", "-s", "-B", &p.server_ip], "-Hltn", "5201")
}

/// One iperf3 run: Gbit/s received, and the CPU of iperf3's client and server (% of one
/// core, as iperf3 reports it).
struct IperfRun {
    gbps: f64,
    cpu: Option<[f64; 2]>,
}

/// One iperf3 TCP single-stream run.
fn iperf(p: &Path) -> Result<IperfRun> {
    let out = in_netns(
        &p.client_ns,
        &[
            "iperf3",
            "-c",
            &p.server_ip,
            "-t",
            &SECONDS.to_string(),
            "-J",
        ],
    )
    .output()?;
    if !out.status.success() {
        bail!(
            "iperf3 on {} failed: {}{}",
            p.label,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received in iperf3 output of {}", p.label))?;
    let cpu = &v["end"]["cpu_utilization_percent"];
    Ok(IperfRun {
        gbps: bps / 1e9,
        cpu: cpu["host_total"]
            .as_f64()
            .zip(cpu["remote_total"].as_f64())
            .map(<[f64; 2]>::from),
    })
}

/// UDP port of the sockperf servers.
const SOCKPERF_PORT: &str = "11111";

/// Starts `sockperf sr` on the path's server address; it answers until killed.
fn start_sockperf(p: &Path) -> Result<Server> {
    start_listener(
        p,
        &["sockperf", "sr", "-i", &p.server_ip, "-p", SOCKPERF_PORT],
        "-Hlun",
        SOCKPERF_PORT,
    )
}

/// Median round trip in microseconds of a 2 s `sockperf` UDP ping-pong (sockperf reports
/// half round trips).
fn pingpong(p: &Path) -> Result<f64> {
    let out = in_netns(
        &p.client_ns,
        &[
            "sockperf",
            "pp",
            "-i",
            &p.server_ip,
            "-p",
            SOCKPERF_PORT,
            "-t",
            "2",
        ],
    )
    .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_sockperf_p50(&text)
        .map(|half| 2.0 * half)
        .with_context(|| format!("no median in sockperf output of {}: {text}", p.label))
}

/// The value of `---> percentile 50.000 =   10.476`.
fn parse_sockperf_p50(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains("percentile 50.000"))?;
    line.split('=').nth(1)?.trim().parse().ok()
}

/// Pings between two consecutive paths' pings in [`rtt_interleaved`].
const PING_GAP: Duration = Duration::from_millis(10);

/// Pings every path in turn, [`PING_GAP`] apart, 50 times each: one `ping` per path, every
/// `PING_GAP x paths`, each started `PING_GAP` after the previous one. Returns each path's RTTs
/// in ms by sequence number, so that the paths' samples can be paired in time.
fn rtt_interleaved(paths: &[Path]) -> Result<Vec<BTreeMap<u32, f64>>> {
    let every = format!("{:.3}", PING_GAP.as_secs_f64() * paths.len() as f64);
    let mut pings = Vec::new();
    for p in paths {
        let child = in_netns(
            &p.client_ns,
            &["ping", "-c", "50", "-i", &every, "-W", "1", &p.server_ip],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting ping on {}", p.label))?;
        // Killed by PID if anything below fails.
        pings.push(Server(child));
        std::thread::sleep(PING_GAP);
    }
    let mut rtts = Vec::new();
    for (p, ping) in paths.iter().zip(&mut pings) {
        let mut text = String::new();
        if let Some(mut out) = ping.0.stdout.take() {
            out.read_to_string(&mut text)?;
        }
        ping.0.wait()?;
        let each = parse_rtt_by_seq(&text);
        if each.is_empty() {
            bail!("no replies from ping on {}: {text}", p.label);
        }
        rtts.push(each);
    }
    Ok(rtts)
}

/// Median and average of RTTs.
fn rtt_stats(rtts: &BTreeMap<u32, f64>) -> (f64, f64) {
    let mut v: Vec<f64> = rtts.values().copied().collect();
    let avg = v.iter().sum::<f64>() / v.len() as f64;
    (median(&mut v), avg)
}

/// `a[seq] / b[seq]` for every sequence number answered on both.
fn paired_by_seq(a: &BTreeMap<u32, f64>, b: &BTreeMap<u32, f64>) -> Vec<f64> {
    a.iter()
        .filter_map(|(seq, x)| Some(x / b.get(seq)?))
        .collect()
}

/// The `icmp_seq=N ... time=0.045 ms` of every reply line.
fn parse_rtt_by_seq(text: &str) -> BTreeMap<u32, f64> {
    text.lines()
        .filter_map(|l| {
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            let ms = l.split("time=").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((seq, ms))
        })
        .collect()
}

/// A 2-host lab on `datapath` with one container per host on an internal network; returns
/// the lab and the two containers' (namespace, address).
fn lab(name: &str, datapath: DatapathSel) -> Result<(LabGuard, [(String, String); 2])> {
    let mut cfg = LabConfig::new(name, 2);
    cfg.datapath = datapath;
    let lab = LabGuard(Some(Lab::up(cfg)?));
    let mode: serde_json::Value = lab.ctl_json(0, &["datapath"])?;
    let want = match datapath {
        DatapathSel::Ebpf => "ebpf",
        _ => "kernel",
    };
    if mode["mode"] != want {
        bail!(
            "lab {name}: host 1 runs the {} datapath, not {want}",
            mode["mode"]
        );
    }
    let (_, eps) = network(&lab, "bench", &[], ["c1", "c2"], Duration::from_secs(10))
        .with_context(|| format!("lab {name}"))?;
    Ok((lab, eps))
}

/// Creates the internal network `net` (with the `extra` arguments of `network create`) and
/// attaches container `names[i]` on host `i`; waits for at most `reach` until the first
/// container reaches the second. Returns the create reply and the containers' (namespace,
/// address).
fn network(
    lab: &Lab,
    net: &str,
    extra: &[&str],
    names: [&str; 2],
    reach: Duration,
) -> Result<(serde_json::Value, [(String, String); 2])> {
    let mut args = vec!["network", "create", net, "--internal"];
    args.extend_from_slice(extra);
    let created: serde_json::Value = lab.ctl_json(0, &args)?;
    let mut eps = Vec::new();
    for (i, c) in names.iter().enumerate() {
        let ns = lab.add_container(c)?;
        let reply: serde_json::Value = lab.ctl_json(
            i,
            &[
                "attach",
                net,
                "--name",
                c,
                "--netns",
                &format!("/run/netns/{ns}"),
            ],
        )?;
        let ip = reply["endpoint"]["ip"]
            .as_str()
            .context("attach reply without an address")?
            .to_string();
        eps.push((ns, ip));
    }
    let eps: [(String, String); 2] = eps.try_into().expect("two endpoints");
    let (c1, ip2) = (eps[0].0.clone(), eps[1].1.clone());
    wait_for(
        &format!("{}: {} to reach {}", lab.state.name, names[0], names[1]),
        reach,
        || {
            in_netns(&c1, &["ping", "-c1", "-W1", "-q", &ip2])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        },
    )?;
    Ok((created, eps))
}

/// The encrypted network `sec` on the kernel lab, one container per host; fails unless the
/// network is encrypted and both hosts have the WireGuard device.
fn encrypted_network(lab: &Lab) -> Result<[(String, String); 2]> {
    let logs = || {
        (0..2)
            .map(|i| {
                let h = lab.host(i);
                format!("agent log {}:\n{}", h.log.display(), tail(&h.log, 15))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (created, eps) = network(
        lab,
        "sec",
        &["--encrypted"],
        ["e1", "e2"],
        Duration::from_secs(30),
    )
    .with_context(logs)?;
    if created["encrypted"] != true {
        bail!("network sec was not created encrypted: {created}");
    }
    for i in 0..2 {
        wg_bytes(&lab.host(i).ns).with_context(logs)?;
    }
    Ok(eps)
}

/// Bytes sent and received so far by the WireGuard device of a host namespace.
fn wg_bytes(ns: &str) -> Result<(u64, u64)> {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", WG_IFNAME])
        .output()?;
    if !out.status.success() {
        bail!(
            "no {WG_IFNAME} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    let stats = &v[0]["stats64"];
    stats["tx"]["bytes"]
        .as_u64()
        .zip(stats["rx"]["bytes"].as_u64())
        .with_context(|| format!("no byte counters of {WG_IFNAME} in {ns}: {v}"))
}

/// CPU time so far (clock ticks): of each agent (user, system), with each of its threads'
/// (user + system), and of the machine (busy, all), at one moment.
struct CpuSnap {
    at: Instant,
    agents: Vec<((u64, u64), BTreeMap<u32, u64>)>,
    machine: (u64, u64),
}

impl CpuSnap {
    fn take(pids: &[u32]) -> Result<CpuSnap> {
        let ticks = |path: &str| -> Result<(u64, u64)> {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            parse_stat_ticks(&text).with_context(|| format!("no utime/stime in {path}"))
        };
        let mut agents = Vec::new();
        for pid in pids {
            let mut threads = BTreeMap::new();
            for e in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
                let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                // A thread may end between the listing and the read.
                if let Ok((user, sys)) = ticks(&format!("/proc/{pid}/task/{tid}/stat")) {
                    threads.insert(tid, user + sys);
                }
            }
            agents.push((ticks(&format!("/proc/{pid}/stat"))?, threads));
        }
        let stat = std::fs::read_to_string("/proc/stat")?;
        Ok(CpuSnap {
            at: Instant::now(),
            agents,
            machine: parse_machine_ticks(&stat).context("no cpu line in /proc/stat")?,
        })
    }
}

/// CPU use during one throughput run, in % of one core (the machine's: summed over its
/// cores).
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuUse {
    /// Each agent (host 1, host 2).
    agents: [f64; 2],
    /// Each agent's system time (in the kernel: its syscalls, and what they do there).
    agents_sys: [f64; 2],
    /// Each agent's busiest thread.
    threads: [f64; 2],
    /// iperf3's client and server, as iperf3 reports them.
    iperf: [f64; 2],
    /// The whole machine's busy time.
    machine: f64,
}

impl CpuUse {
    /// Between two snapshots of the same agents; `hz`: clock ticks per second.
    fn between(a: &CpuSnap, b: &CpuSnap, hz: f64, iperf: [f64; 2]) -> CpuUse {
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let pct = |ticks: u64| ticks as f64 / hz / secs * 100.0;
        let mut agents = [0.0; 2];
        let mut agents_sys = [0.0; 2];
        let mut threads = [0.0; 2];
        for (i, (((u0, s0), th0), ((u1, s1), th1))) in
            a.agents.iter().zip(&b.agents).take(2).enumerate()
        {
            agents[i] = pct((u1 + s1).saturating_sub(u0 + s0));
            agents_sys[i] = pct(s1.saturating_sub(*s0));
            let busiest = th1
                .iter()
                .map(|(tid, t)| t.saturating_sub(th0.get(tid).copied().unwrap_or(0)))
                .max()
                .unwrap_or(0);
            threads[i] = pct(busiest);
        }
        CpuUse {
            agents,
            agents_sys,
            threads,
            iperf,
            machine: pct(b.machine.0.saturating_sub(a.machine.0)),
        }
    }

    /// Median of each figure over the runs.
    fn median_of(runs: &[CpuUse]) -> CpuUse {
        let m = |f: &dyn Fn(&CpuUse) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        CpuUse {
            agents: [m(&|c| c.agents[0]), m(&|c| c.agents[1])],
            agents_sys: [m(&|c| c.agents_sys[0]), m(&|c| c.agents_sys[1])],
            threads: [m(&|c| c.threads[0]), m(&|c| c.threads[1])],
            iperf: [m(&|c| c.iperf[0]), m(&|c| c.iperf[1])],
            machine: m(&|c| c.machine),
        }
    }

    fn describe(&self, cores: usize) -> String {
        format!(
            "CPU % of a core: agents {:.0} + {:.0} (system {:.0} + {:.0}; busiest threads \
             {:.0}, {:.0}), iperf3 client {:.0}, server {:.0}; machine {:.0} of {}",
            self.agents[0],
            self.agents[1],
            self.agents_sys[0],
            self.agents_sys[1],
            self.threads[0],
            self.threads[1],
            self.iperf[0],
            self.iperf[1],
            self.machine,
            cores * 100
        )
    }
}

/// utime and stime (fields 14 and 15) of a `/proc/<pid>/stat` line; the command name in
/// parentheses may hold spaces and parentheses.
fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some((rest.get(11)?.parse().ok()?, rest.get(12)?.parse().ok()?))
}

/// Busy and all clock ticks of the machine from `/proc/stat`'s `cpu` line (user, nice,
/// system, idle, iowait, irq, softirq, steal; guest time is already in user and nice).
fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let all: u64 = v.iter().sum();
    Some((all - v[3] - v[4], all))
}

/// Clock ticks per second of `/proc` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The lab's agent PIDs (host 1, host 2), checked to be overlay-agent processes.
fn agent_pids(lab: &Lab) -> Result<[u32; 2]> {
    let pid = |i: usize| -> Result<u32> {
        let pid = lab
            .host(i)
            .pid
            .with_context(|| format!("no agent PID for host {}", i + 1))?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd).contains("overlay-agent") {
            bail!("process {pid} of host {} is not overlay-agent", i + 1);
        }
        Ok(pid)
    };
    Ok([pid(0)?, pid(1)?])
}

/// Runs the benchmark: `runs` interleaved rounds of underlay, kernel and eBPF; with
/// `encrypted`, of underlay, a plain network and an encrypted network, all on the kernel
/// path.
pub fn run(runs: usize, encrypted: bool) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    println!(
        "bench datapath: {runs} runs; in every run iperf3 TCP single stream {SECONDS} s as \
         underlay, overlay, underlay, the other overlay, underlay; a 2 s sockperf UDP ping-pong \
         per path; 50 pings per path, the paths pinged in turn 10 ms apart"
    );
    if encrypted {
        println!(
            "--encrypted: the overlays are a plain and an encrypted network (VXLAN in userspace \
             WireGuard) between the same two hosts, on the kernel path; CPU sampled during \
             every overlay throughput run"
        );
    }
    let (klab, keps) = lab("bdpk", DatapathSel::Kernel)?;
    // The second overlay path: the eBPF lab's, or the encrypted network's on the kernel lab.
    let (elab, second, names) = if encrypted {
        let eps = encrypted_network(&klab)?;
        let path = Path {
            label: "encrypted network (kernel path, vxlan in WireGuard)",
            client_ns: eps[0].0.clone(),
            server_ns: eps[1].0.clone(),
            server_ip: eps[1].1.clone(),
        };
        (None, path, ["plain", "encrypted"])
    } else {
        let (elab, eeps) = lab("bdpe", DatapathSel::Ebpf)?;
        let path = Path {
            label: "eBPF path (tc programs + collect-metadata vxlan)",
            client_ns: eeps[0].0.clone(),
            server_ns: eeps[1].0.clone(),
            server_ip: eeps[1].1.clone(),
        };
        (Some(elab), path, ["kernel", "eBPF"])
    };
    let [a, b] = names;
    let paths = [
        Path {
            label: "underlay (host ns to host ns, no encapsulation)",
            client_ns: klab.host(0).ns.clone(),
            server_ns: klab.host(1).ns.clone(),
            server_ip: klab.host(1).addr.clone(),
        },
        Path {
            label: if encrypted {
                "plain network (kernel path, bridge + vxlan)"
            } else {
                "kernel path (bridge + vxlan, static FDB)"
            },
            client_ns: keps[0].0.clone(),
            server_ns: keps[1].0.clone(),
            server_ip: keps[1].1.clone(),
        },
        second,
    ];
    // With `encrypted`: the agents whose CPU is sampled, clock ticks per second, cores.
    let agents = if encrypted {
        Some(agent_pids(&klab)?)
    } else {
        None
    };
    let hz = clock_ticks();
    let cores = std::fs::read_to_string("/proc/stat")?
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    let wg_before = if encrypted {
        Some(wg_bytes(&klab.host(0).ns)?)
    } else {
        None
    };
    let mut _servers: Vec<Server> = paths.iter().map(start_server).collect::<Result<_>>()?;
    for p in &paths {
        _servers.push(start_sockperf(p)?);
    }

    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    // bracketed[path]: each overlay run over the mean of the underlay runs just before and
    // after it (index 0 unused).
    let mut bracketed: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    // rtt_runs[0][path]: ping median (ms) per run; [1]: ping average (ms); [2]: sockperf
    // median (us).
    let mut rtt_runs: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); paths.len()]; 3];
    // Every ping's RTT over the underlay ping just before it: eBPF, kernel; eBPF over kernel.
    let mut ping_pairs: [Vec<f64>; 3] = Default::default();
    // cpu[path]: CPU use during each overlay throughput run (with `encrypted`).
    let mut cpu: Vec<Vec<CpuUse>> = vec![Vec::new(); paths.len()];
    for r in 0..runs {
        let mut measure = |i: usize| -> Result<f64> {
            let before = match &agents {
                Some(pids) if i > 0 => Some((pids, CpuSnap::take(pids)?)),
                _ => None,
            };
            let run = iperf(&paths[i])?;
            let g = run.gbps;
            match before {
                None => println!("  run {:>2} {:<50} {g:6.2} Gbit/s", r + 1, paths[i].label),
                Some((pids, before)) => {
                    let after = CpuSnap::take(pids)?;
                    let iperf_cpu = run
                        .cpu
                        .context("no end.cpu_utilization_percent in iperf3 output")?;
                    let used = CpuUse::between(&before, &after, hz, iperf_cpu);
                    println!(
                        "  run {:>2} {:<50} {g:6.2} Gbit/s; {}",
                        r + 1,
                        paths[i].label,
                        used.describe(cores)
                    );
                    cpu[i].push(used);
                }
            }
            Ok(g)
        };
        let overlays = if r % 2 == 0 { [2, 1] } else { [1, 2] };
        let mut before = measure(0)?;
        gbps[0].push(before);
        for i in overlays {
            let g = measure(i)?;
            let after = measure(0)?;
            gbps[i].push(g);
            gbps[0].push(after);
            bracketed[i].push(g / ((before + after) / 2.0));
            before = after;
        }
        for (i, p) in paths.iter().enumerate() {
            let us = pingpong(p)?;
            println!("  run {:>2} {:<50} ping-pong {us:.2} us", r + 1, p.label);
            rtt_runs[2][i].push(us);
        }
        let pings = rtt_interleaved(&paths)?;
        let mut line = format!("  run {:>2} paced ping p50/avg ms:", r + 1);
        for (i, each) in pings.iter().enumerate() {
            let (p50, avg) = rtt_stats(each);
            rtt_runs[0][i].push(p50);
            rtt_runs[1][i].push(avg);
            line.push_str(&format!(" {:.3}/{:.3}", p50, avg));
        }
        println!("{line} (underlay, {a}, {b})");
        ping_pairs[0].extend(paired_by_seq(&pings[2], &pings[0]));
        ping_pairs[1].extend(paired_by_seq(&pings[1], &pings[0]));
        ping_pairs[2].extend(paired_by_seq(&pings[2], &pings[1]));
    }
    let rtts: Vec<Vec<f64>> = rtt_runs
        .iter_mut()
        .map(|per_path| per_path.iter_mut().map(|v| median(v)).collect())
        .collect();
    // `median` sorts in place: take the medians of copies, so `gbps` keeps the rounds' order
    // for the paired ratios below.
    let meds: Vec<f64> = gbps.iter().map(|v| median(&mut v.clone())).collect();
    let ranges: Vec<(f64, f64)> = gbps
        .iter()
        .map(|v| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (min, max)
        })
        .collect();

    println!();
    println!(
        "| path | median Gbit/s | min-max | ratio to underlay | ping p50 ms (ratio) | ping avg ms (ratio) | ping-pong RTT us (ratio) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, p) in paths.iter().enumerate() {
        println!(
            "| {} | {:.2} | {:.2}-{:.2} | {:.2} | {:.3} ({:.2}) | {:.3} ({:.2}) | {:.2} ({:.2}) |",
            p.label,
            meds[i],
            ranges[i].0,
            ranges[i].1,
            meds[i] / meds[0],
            rtts[0][i],
            rtts[0][i] / rtts[0][0],
            rtts[1][i],
            rtts[1][i] / rtts[1][0],
            rtts[2][i],
            rtts[2][i] / rtts[2][0],
        );
    }
    println!(
        "\n{b} / {a}: {:.2} (throughput, medians), {:.2} (ping p50), {:.2} (ping avg), {:.2} \
         (ping-pong RTT)",
        meds[2] / meds[1],
        rtts[0][2] / rtts[0][1],
        rtts[1][2] / rtts[1][1],
        rtts[2][2] / rtts[2][1]
    );
    // The machine drifts over seconds to minutes: each overlay run over the underlay runs
    // around it is steadier than ratios of medians taken over the whole run.
    let [_, mut kernel_vs_underlay, mut vs_underlay] =
        <[Vec<f64>; 3]>::try_from(bracketed).map_err(|_| anyhow::anyhow!("three paths"))?;
    let mut vs_kernel = paired_ratios(&gbps[2], &gbps[1]);
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let vs_kernel_median = median(&mut vs_kernel.clone());
    println!(
        "throughput, each overlay run over the underlay runs around it: {b} / underlay {} \
         (median {:.2}); {a} / underlay {} (median {:.2}); paired per round: {b} / {a} {} \
         (median {:.2})",
        fmt(&vs_underlay),
        median(&mut vs_underlay),
        fmt(&kernel_vs_underlay),
        median(&mut kernel_vs_underlay),
        fmt(&vs_kernel),
        median(&mut vs_kernel),
    );
    let n = ping_pairs[0].len();
    let [mut eu, mut ku, mut ek] = ping_pairs;
    println!(
        "paired per ping (paced ping RTT over the one taken 10-20 ms before): {b} / underlay \
         {:.2}, {a} / underlay {:.2}, {b} / {a} {:.2} (medians over {n} pairs)",
        median(&mut eu),
        median(&mut ku),
        median(&mut ek),
    );
    if let Some((tx0, rx0)) = wg_before {
        println!(
            "CPU during the throughput runs, medians over the runs: {a}: {}; {b}: {}",
            CpuUse::median_of(&cpu[1]).describe(cores),
            CpuUse::median_of(&cpu[2]).describe(cores),
        );
        let (tx1, rx1) = wg_bytes(&klab.host(0).ns)?;
        println!(
            "{WG_IFNAME} on host 1 during the bench: {:.2} GB out, {:.2} GB in",
            tx1.saturating_sub(tx0) as f64 / 1e9,
            rx1.saturating_sub(rx0) as f64 / 1e9,
        );
        let met = if vs_kernel_median >= 0.3 {
            "met"
        } else {
            "not met"
        };
        println!(
            "goal (issue 19): {b} at least 0.3 of the {a} network's throughput: {met} \
             ({vs_kernel_median:.2} paired per round, {:.2} ratio of medians)",
            meds[2] / meds[1]
        );
    }
    drop(_servers);
    drop(elab);
    drop(klab);
    Ok(())
}

/// `a[r] / b[r]` for every round `r` measured by both.
fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_rounds() {
        assert_eq!(
            paired_ratios(&[9.0, 4.0], &[10.0, 8.0, 1.0]),
            vec![0.9, 0.5]
        );
    }

    #[test]
    fn sockperf_median() {
        let t = "sockperf: ---> percentile 90.000 =   12.100\nsockperf: ---> percentile \
                 50.000 =   10.476\nsockperf: ---> <MIN> observation =    6.012\n";
        assert_eq!(parse_sockperf_p50(t), Some(10.476));
        assert_eq!(parse_sockperf_p50("nothing"), None);
    }

    #[test]
    fn proc_stat_ticks() {
        // A command name with a space and a parenthesis; utime 1200, stime 345.
        let line = "4242 (overlay (x) a) S 1 4242 4242 0 -1 4194560 900 0 0 0 1200 345 0 0 20 \
                    0 9 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some((1200, 345)));
        assert_eq!(parse_stat_ticks("4242 (short) S 1 2"), None);
        let stat = "cpu  100 5 50 1000 20 1 4 0 0 0\ncpu0 50 2 25 500 10 1 2 0 0 0\n";
        assert_eq!(parse_machine_ticks(stat), Some((160, 1180)));
        assert_eq!(parse_machine_ticks("intr 1 2"), None);
    }

    #[test]
    fn cpu_use_between_snapshots() {
        let at = Instant::now();
        let snap = |secs: u64, ticks: [(u64, u64); 2], t: [(u32, u64); 2], busy: u64| CpuSnap {
            at: at + Duration::from_secs(secs),
            agents: vec![(ticks[0], BTreeMap::from(t)), (ticks[1], BTreeMap::new())],
            machine: (busy, 0),
        };
        let a = snap(0, [(70, 30), (50, 0)], [(1, 60), (2, 40)], 1000);
        // Thread 3 started during the run; thread 2 ended.
        let b = snap(2, [(150, 150), (50, 2)], [(1, 110), (3, 150)], 1400);
        let c = CpuUse::between(&a, &b, 100.0, [40.0, 60.0]);
        assert_eq!(c.agents, [100.0, 1.0]);
        assert_eq!(c.agents_sys, [60.0, 1.0]);
        assert_eq!(c.threads, [75.0, 0.0]);
        assert_eq!(c.machine, 200.0);
        let m = CpuUse::median_of(&[c, c, CpuUse { machine: 0.0, ..c }]);
        assert_eq!(m, c);
    }

    #[test]
    fn rtts_by_sequence_pair_in_time() {
        let t = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n64 bytes from 10.0.0.2: \
                 icmp_seq=1 ttl=64 time=0.120 ms\n64 bytes from 10.0.0.2: icmp_seq=3 ttl=64 \
                 time=0.040 ms\n\n--- 10.0.0.2 ping statistics ---\n";
        let a = parse_rtt_by_seq(t);
        assert_eq!(a, BTreeMap::from([(1, 0.120), (3, 0.040)]));
        assert!(parse_rtt_by_seq("100% packet loss").is_empty());
        let b = BTreeMap::from([(1, 0.100), (2, 0.050), (3, 0.080)]);
        assert_eq!(paired_by_seq(&a, &b), vec![1.2, 0.5]);
        assert_eq!(rtt_stats(&b), (0.080, (0.100 + 0.050 + 0.080) / 3.0));
    }
}
