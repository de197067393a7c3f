//! Helpers shared by the end-to-end tests: a lab per test, waiting, parsing `overlayctl`.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
pub use xtask::lab::{DatapathSel, KvKind, Lab, LabConfig, LabGuard};

/// Builds a lab for one test; it is torn down when the guard drops (also on panic).
pub fn lab(name: &str, hosts: usize, kv: KvKind) -> LabGuard {
    let mut cfg = LabConfig::new(name, hosts);
    cfg.kv = kv;
    LabGuard(Some(
        Lab::up(cfg).unwrap_or_else(|e| panic!("lab {name} up: {e:#}")),
    ))
}

/// Builds a lab from a config.
pub fn lab_with(cfg: LabConfig) -> LabGuard {
    let name = cfg.name.clone();
    LabGuard(Some(
        Lab::up(cfg).unwrap_or_else(|e| panic!("lab {name} up: {e:#}")),
    ))
}

/// Polls `f` every 20 ms until it holds; returns the time it took, or panics after `timeout`.
pub fn within(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `overlayctl --json ARGS` on host `i`, parsed as JSON (panics on failure).
pub fn ctl(lab: &Lab, i: usize, args: &[&str]) -> Value {
    lab.ctl_json(i, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Alive flags per host id, as host `i` sees them.
pub fn alive_seen_by(lab: &Lab, i: usize) -> Vec<(String, bool)> {
    let hosts: Value = match lab.ctl_json(i, &["hosts"]) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    hosts
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        h["id"].as_str().unwrap_or("").to_string(),
                        h["alive"] == true,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Stdout of an output, lossily.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr of an output, lossily.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Creates container namespace `<lab>-c-<name>` and attaches it on host `i`; returns the
/// namespace name and the endpoint's address.
pub fn attach(lab: &Lab, i: usize, net: &str, name: &str, extra: &[&str]) -> (String, String) {
    let ns = format!("{}-c-{name}", lab.state.name);
    if !std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
        lab.add_container(name).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let path = format!("/run/netns/{ns}");
    let mut args = vec!["attach", net, "--name", name, "--netns", &path];
    args.extend_from_slice(extra);
    let reply = ctl(lab, i, &args);
    let ip = reply["endpoint"]["ip"].as_str().expect("ip").to_string();
    (ns, ip)
}

/// One ping from namespace `ns` to `ip` (1 s timeout).
pub fn ping(ns: &str, ip: &str) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q", ip])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs a command in a named namespace with `ip netns exec` (as a user would).
pub fn nsexec(ns: &str, args: &[&str]) -> Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// The FDB/neighbour lines host `i` has programmed for `net` (from `overlayctl peers`).
pub fn programmed(lab: &Lab, i: usize, net: &str) -> Vec<String> {
    let p = ctl(lab, i, &["peers", net]);
    p["networks"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["network"] == net))
        .map(|n| {
            n["actual"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The sandbox namespace file of network `net` on host `i` (kernel datapath).
pub fn sandbox(lab: &Lab, i: usize, net: &str) -> String {
    format!("{}/dp/netns/{net}", lab.host(i).run_dir.display())
}
