//! `cargo xtask bench converge`: from `overlayctl attach` on host 2 to the first successful
//! ping from a container on host 1, over many attaches; p50 and p99.
//!
//! The clock starts when the attach command is spawned; a container on host 1 pings the new
//! address every 5 ms from that moment, and the clock stops at the first reply. It includes
//! the CLI, the KV writes, the plumbing on host 2, the watch and reconcile pass on host 1 and
//! the first ARP (answered locally from the programmed neighbour entry). Docker's classic overlay took 1.13-1.16 s here (shared/reference/measured-here.md):
//! its first ARP is lost because the peer's entries arrive later, and the retry waits 1 s.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

use super::{median, quantile};
use crate::lab::{KvKind, Lab, LabConfig, LabGuard};

/// Runs `attaches` attach-to-ping measurements on each KV backend.
pub fn run(attaches: usize) -> Result<()> {
    println!("bench converge: {attaches} attaches per backend, attach on h2 -> first ping from h1");
    let mut rows = Vec::new();
    for kv in [KvKind::Embedded, KvKind::Etcd] {
        let mut ms = measure(kv, attaches)?;
        let (p50, p99, max) = (
            median(&mut ms),
            quantile(&mut ms, 0.99),
            quantile(&mut ms, 1.0),
        );
        rows.push((kv, p50, p99, max));
    }
    println!("\n| KV | attaches | p50 ms | p99 ms | max ms | Docker classic overlay |");
    println!("|---|---|---|---|---|---|");
    for (kv, p50, p99, max) in rows {
        println!(
            "| {kv:?} | {attaches} | {p50:.1} | {p99:.1} | {max:.1} | 1130-1160 ms (measured-here.md) |"
        );
    }
    Ok(())
}

fn measure(kv: KvKind, attaches: usize) -> Result<Vec<f64>> {
    let mut cfg = LabConfig::new("bconv", 2);
    cfg.kv = kv;
    let lab = LabGuard(Some(Lab::up(cfg)?));
    let ctl = |i: usize, args: &[&str]| -> Result<serde_json::Value> { lab.ctl_json(i, args) };
    ctl(0, &["network", "create", "net1"])?;
    let probe = lab.add_container("probe")?;
    ctl(
        0,
        &[
            "attach",
            "net1",
            "--name",
            "probe",
            "--netns",
            &format!("/run/netns/{probe}"),
        ],
    )?;
    // One endpoint on h2 first, so the flood entries exist (the steady state of a network).
    let first = lab.add_container("first")?;
    ctl(
        1,
        &[
            "attach",
            "net1",
            "--name",
            "first",
            "--netns",
            &format!("/run/netns/{first}"),
        ],
    )?;
    let mut samples = Vec::new();
    for k in 0..attaches {
        let name = format!("e{k}");
        let ns = lab.add_container(&name)?;
        let ip = format!("10.10.0.{}", 20 + k);
        let path = format!("/run/netns/{ns}");
        let start = SystemTime::now();
        let attach = lab
            .exec(1, "overlayctl")
            .args([
                "attach", "net1", "--name", &name, "--netns", &path, "--ip", &ip,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        // Probe from host 1 at once, every 5 ms: the first reply is convergence.
        let mut ping = Command::new("ip")
            .args([
                "netns", "exec", &probe, "ping", "-D", "-n", "-i", "0.005", "-w", "10", &ip,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let first = BufReader::new(ping.stdout.take().expect("piped"))
            .lines()
            .map_while(|l| l.ok())
            .find(|l| l.contains("bytes from"));
        let _ = ping.kill();
        let _ = ping.wait();
        let out = attach.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "attach {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let Some(line) = first else {
            bail!("{name} ({ip}) never answered")
        };
        let stamp: f64 = line
            .trim_start_matches('[')
            .split(']')
            .next()
            .and_then(|t| t.parse().ok())
            .with_context(|| format!("no timestamp in {line:?}"))?;
        let t0 = start.duration_since(UNIX_EPOCH)?.as_secs_f64();
        let ms = (stamp - t0) * 1000.0;
        println!("  {kv:?} attach {k:>2}: {ms:7.1} ms");
        samples.push(ms);
    }
    Ok(samples)
}
