//! Issue 18: the scaled-down `bench scale`. Two real agents in the netns lab, on etcd, inside
//! a simulated cluster of 198 more hosts with 50 endpoints each (records written through the
//! typed store, every host alive on a lease of its own): each agent's kernel holds exactly
//! the entries its networks need, after the initial sync and after a burst of churn.
//! Needs root; never skips.

use std::time::{Duration, Instant};

use ovl_tests::*;
use xtask::scale::{self, Shape, SimCluster};

/// Polls until every watched pair is exact; panics with the last difference.
fn exact_within(
    what: &str,
    timeout: Duration,
    lab: &Lab,
    sim: &SimCluster,
    rt: &tokio::runtime::Runtime,
    watched: &[(usize, &str)],
) -> Duration {
    let start = Instant::now();
    loop {
        let diff = match scale::mismatch(lab, sim, rt, watched) {
            Ok(None) => return start.elapsed(),
            Ok(Some(d)) => d,
            Err(e) => format!("listing the KV: {e:#}"),
        };
        if start.elapsed() > timeout {
            panic!("{what}: not exact after {timeout:?}:\n{diff}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_hundred_hosts_ten_thousand_endpoints() {
    let mut cfg = LabConfig::new("tscale", 2);
    cfg.kv = KvKind::Etcd;
    cfg.start_agents = false;
    let mut lab = lab_with(cfg);
    let rt = scale::runtime(&lab).expect("runtime");
    let shape = Shape {
        hosts: 198,
        per_host: 50,
        net_size: 200,
    };
    let t = Instant::now();
    let mut sim =
        scale::populate_in(&rt, &lab, shape).unwrap_or_else(|e| panic!("populating: {e:#}"));
    assert_eq!(sim.endpoints.len(), 9900);
    assert_eq!(sim.nets.len(), 50);
    eprintln!(
        "tscale: 198 hosts, 9900 endpoints, 50 networks written in {:?}",
        t.elapsed()
    );

    // The agents start into the full cluster.
    for i in 0..2 {
        lab.start_agent(i).unwrap_or_else(|e| panic!("{e:#}"));
    }
    for i in 0..2 {
        lab.wait_agent(i).unwrap_or_else(|e| panic!("{e:#}"));
    }
    attach(&lab, 0, "sc0", "c1", &[]);
    attach(&lab, 1, "sc0", "c2", &[]);
    attach(&lab, 1, "sc1", "c3", &[]);
    let watched = [(0, "sc0"), (1, "sc0"), (1, "sc1")];

    // Not vacuous: every simulated host has one endpoint on each network.
    let view = rt.block_on(sim.store().view()).expect("view");
    let want = scale::expected(&view, "h1", "sc0");
    assert_eq!(want.fdb.len(), 198 + 1, "198 simulated endpoints and c2");
    assert_eq!(want.flood.len(), 198 + 1, "a VTEP per host on the network");

    let took = exact_within(
        "the initial sync",
        Duration::from_secs(120),
        &lab,
        &sim,
        &rt,
        &watched,
    );
    eprintln!("tscale: exact on both agents {took:?} after the attaches");
    // Only its own networks: h1 has nothing for sc1.
    assert!(
        !std::path::Path::new(&sandbox(&lab, 0, "sc1")).exists(),
        "h1 programs a network it has no endpoint on"
    );

    // Churn: 500 endpoints go and 500 come, a tenth of each on the lab's networks.
    let t = Instant::now();
    let writes = rt
        .block_on(sim.churn(500, &["sc0", "sc1"], 18))
        .unwrap_or_else(|e| panic!("churn: {e:#}"));
    eprintln!(
        "tscale: churn of {writes} endpoint writes in {:?}",
        t.elapsed()
    );
    let took = exact_within(
        "after the churn",
        Duration::from_secs(60),
        &lab,
        &sim,
        &rt,
        &watched,
    );
    eprintln!("tscale: exact again {took:?} after the churn's last write");
    drop(sim);
}
