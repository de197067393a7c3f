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
