//! Issue 15: agent down is not host down. A host whose agent stopped (SIGTERM or kill -9)
//! keeps its containers reachable for as long as its datapath answers, however long the agent
//! stays away; a host that is really gone is cleaned up from the others within lease TTL +
//! the probe grace. Both datapaths. Needs root; never skips.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use ovl_tests::*;

/// The lab's `--lease-ttl`.
const TTL: Duration = Duration::from_secs(4);

fn host_state(lab: &Lab, from: usize, host: &str) -> String {
    ctl(lab, from, &["hosts"])
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == host)
        .map(|h| h["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn agent_down_is_not_host_down(name: &str, datapath: DatapathSel, sig: Signal) {
    let mut cfg = LabConfig::new(name, 3);
    cfg.datapath = datapath;
    let mut lab = lab_with(cfg);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    let (_c3, ip3) = attach(&lab, 2, "net1", "c3", &[]);
    within("c1 -> c2 and c3", Duration::from_secs(5), || {
        ping(&c1, &ip2) && ping(&c1, &ip3)
    });

    // h2's agent stops and stays away for 3x the lease TTL.
    let away = TTL * 3 + Duration::from_secs(2);
    let count = (away.as_millis() / 200) as usize;
    let pinger = Command::new("ip")
        .args(["netns", "exec", &c1, "ping", "-c"])
        .arg(count.to_string())
        .args(["-i", "0.2", "-W", "1", &ip2])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.signal_agent(1, sig).unwrap();
    let took = within(
        "h1 to see h2's agent down with its datapath answering",
        TTL + Duration::from_secs(4),
        || host_state(&lab, 0, "h2") == "agent down, datapath answering",
    );
    eprintln!("{name}: h2 shown agent-down {took:?} after {sig:?}");
    let out = pinger.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{count} packets transmitted, {count} received")),
        "pings lost while h2's agent was away: {text}"
    );
    // Its entries are still programmed on h1 and h3.
    for i in [0, 2] {
        let lines = programmed(&lab, i, "net1");
        assert!(
            lines.iter().any(|l| l.contains(&ip2)),
            "host {} dropped h2's entries: {lines:?}",
            i + 1
        );
    }
    lab.start_agent(1).unwrap();
    lab.wait_agent(1).unwrap();
    within("h2 alive again", Duration::from_secs(5), || {
        host_state(&lab, 0, "h2") == "alive"
    });
    assert!(ping(&c1, &ip2));

    // h3 really gone: its agent killed and its namespace deleted.
    lab.signal_agent(2, Signal::SIGKILL).unwrap();
    let gone = Instant::now();
    let ns = lab.host(2).ns.clone();
    assert!(
        Command::new("ip")
            .args(["netns", "del", &ns])
            .status()
            .unwrap()
            .success()
    );
    let bound = TTL + Duration::from_secs(3) + Duration::from_secs(1) + Duration::from_secs(3);
    within("h1 to drop h3's entries", bound, || {
        !programmed(&lab, 0, "net1").iter().any(|l| l.contains(&ip3))
    });
    eprintln!(
        "{name}: h3's entries dropped {:?} after it was deleted (bound {bound:?})",
        gone.elapsed()
    );
    assert_eq!(host_state(&lab, 0, "h3"), "dead");
    // h2 is unaffected.
    assert!(ping(&c1, &ip2));
}

#[test]
fn agent_down_is_not_host_down_kernel_sigterm() {
    agent_down_is_not_host_down("t15lk", DatapathSel::Kernel, Signal::SIGTERM);
}

#[test]
fn agent_down_is_not_host_down_ebpf_kill9() {
    agent_down_is_not_host_down("t15le", DatapathSel::Ebpf, Signal::SIGKILL);
}
