//! `cargo xtask bench dns`: queries per second and latency for local names, the agent's
//! embedded DNS against dnsmasq answering the same records, side by side in one run.
//!
//! Both servers are asked from the same container namespace: the agent on 127.0.0.11:53,
//! dnsmasq (with a hosts file holding the same names) on 127.0.0.12:53. Throughput comes
//! from dnsperf (4 clients, 5 s); latency percentiles from a closed-loop client here (one
//! query in flight, every answer checked).

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsFd,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{median, quantile};
use crate::lab::{Lab, LabConfig, LabGuard};

const NAMES: usize = 30;
const LATENCY_QUERIES: usize = 3000;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the DNS benchmark `runs` times per server.
pub fn run(runs: usize) -> Result<()> {
    let lab = LabGuard(Some(Lab::up(LabConfig::new("bdns", 1))?));
    lab.ctl_json::<serde_json::Value>(0, &["network", "create", "net1"])?;
    let mut hosts = String::new();
    for k in 0..NAMES {
        let name = format!("n{k}");
        let ns = lab.add_container(&name)?;
        let r: serde_json::Value = lab.ctl_json(
            0,
            &[
                "attach",
                "net1",
                "--name",
                &name,
                "--netns",
                &format!("/run/netns/{ns}"),
            ],
        )?;
        let ip = r["endpoint"]["ip"].as_str().context("ip")?.to_string();
        writeln!(hosts, "{ip} {name} {name}.net1")?;
    }
    let client = lab.add_container("client")?;
    lab.ctl_json::<serde_json::Value>(
        0,
        &[
            "attach",
            "net1",
            "--name",
            "client",
            "--netns",
            &format!("/run/netns/{client}"),
        ],
    )?;
    let dir = lab.state.dir.clone();
    std::fs::write(dir.join("dnsmasq.hosts"), &hosts)?;
    let queries: String = (0..NAMES)
        .map(|k| format!("n{k}.net1 A\nn{k} A\n"))
        .collect();
    std::fs::write(dir.join("queries.txt"), queries)?;
    let _dnsmasq = Killed(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &client,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
            ])
            .arg(format!(
                "--addn-hosts={}",
                dir.join("dnsmasq.hosts").display()
            ))
            .args([
                "--listen-address=127.0.0.12",
                "--bind-interfaces",
                "--port=53",
                "--cache-size=1000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq")?,
    );
    std::thread::sleep(Duration::from_millis(500));

    let servers = [
        ("overlay-agent", Ipv4Addr::new(127, 0, 0, 11)),
        ("dnsmasq", Ipv4Addr::new(127, 0, 0, 12)),
    ];
    let mut qps: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut p50: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for r in 0..runs {
        for (i, (label, addr)) in servers.iter().enumerate() {
            let q = dnsperf(&client, *addr, &dir.join("queries.txt"))?;
            let mut lat = latencies(&client, *addr)?;
            let (a, b) = (median(&mut lat), quantile(&mut lat, 0.99));
            println!("  run {r}: {label:<14} {q:>10.0} qps   p50 {a:>6.1} us   p99 {b:>6.1} us");
            qps[i].push(q);
            p50[i].push(a);
            p99[i].push(b);
        }
    }
    let row = |i: usize| {
        (
            median(&mut qps[i].clone()),
            median(&mut p50[i].clone()),
            median(&mut p99[i].clone()),
        )
    };
    let (ours, theirs) = (row(0), row(1));
    println!("\n| server | qps (median of {runs}) | p50 latency | p99 latency |");
    println!("|---|---|---|---|");
    println!(
        "| overlay-agent embedded DNS | {:.0} | {:.1} us | {:.1} us |",
        ours.0, ours.1, ours.2
    );
    println!(
        "| dnsmasq (same records, hosts file) | {:.0} | {:.1} us | {:.1} us |",
        theirs.0, theirs.1, theirs.2
    );
    println!(
        "\nqps ratio overlay-agent / dnsmasq: {:.2}",
        ours.0 / theirs.0
    );
    Ok(())
}

fn dnsperf(ns: &str, server: Ipv4Addr, queries: &std::path::Path) -> Result<f64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "dnsperf",
            "-s",
            &server.to_string(),
            "-l",
            "5",
            "-c",
            "4",
            "-q",
            "64",
            "-d",
        ])
        .arg(queries)
        .output()
        .context("running dnsperf (is the dnsperf package installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lost = text
        .lines()
        .find(|l| l.contains("Queries lost:"))
        .unwrap_or_default()
        .to_string();
    let qps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("dnsperf output without a rate: {text}"))?;
    if !lost.contains(" 0 (") {
        eprintln!("  dnsperf {server}: {}", lost.trim());
    }
    Ok(qps)
}

/// A DNS query for `name` type A, with `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Closed-loop latencies (microseconds) of [`LATENCY_QUERIES`] queries, from inside `ns`.
fn latencies(ns: &str, server: Ipv4Addr) -> Result<Vec<f64>> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<f64>> {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            sock.set_read_timeout(Some(Duration::from_secs(1)))?;
            sock.connect(SocketAddr::from((server, 53)))?;
            let mut buf = [0u8; 1500];
            let mut out = Vec::with_capacity(LATENCY_QUERIES);
            for k in 0..LATENCY_QUERIES {
                let id = k as u16;
                let name = if k % 2 == 0 {
                    format!("n{}.net1", k % NAMES)
                } else {
                    format!("n{}", k % NAMES)
                };
                let q = query(id, &name);
                let start = Instant::now();
                sock.send(&q)?;
                let n = sock
                    .recv(&mut buf)
                    .with_context(|| format!("no answer from {server} for {name}"))?;
                let took = start.elapsed();
                let ok =
                    n >= 12 && buf[..2] == id.to_be_bytes() && buf[3] & 0x0f == 0 && buf[7] >= 1;
                if !ok {
                    bail!("bad answer from {server} for {name}");
                }
                out.push(took.as_secs_f64() * 1e6);
            }
            Ok(out)
        })
        .join()
        .expect("latency thread")
    })
}
