//! `cargo xtask bench converge`: from `overlayctl attach` on host 2 to the first successful
//! ping from a container on host 1, over many attaches; p50 and p99.
//!
//! The clock starts before the attach command is spawned and stops when a ping answers, so
//! it includes the CLI, the KV write, the watch on host 1, host 1's reconcile pass and the
//! first ARP. Docker's classic overlay took 1.13-1.16 s here (shared/reference/measured-here.md):
//! its first ARP is lost because the peer's entries arrive later, and the retry waits 1 s.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

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
        let start = Instant::now();
        let reply = ctl(
            1,
            &[
                "attach",
                "net1",
                "--name",
                &name,
                "--netns",
                &format!("/run/netns/{ns}"),
            ],
        )?;
        let ip = reply["endpoint"]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        loop {
            let ok = Command::new("ip")
                .args(["netns", "exec", &probe, "ping", "-c1", "-W1", "-q", &ip])
                .output()?
                .status
                .success();
            if ok {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("{name} ({ip}) never answered");
            }
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        println!("  {kv:?} attach {k:>2}: {ms:7.1} ms");
        samples.push(ms);
    }
    Ok(samples)
}
