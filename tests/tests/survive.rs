//! Issue 15, datapath side: the datapath outlives the agent however it was started, the
//! reconciler owns the container end too, and a host switches datapath with endpoints in
//! place. On both datapaths, in the netns lab. Needs root; never skips.
//!
//! The lease TTL is raised to 30 s in these labs: restarts here stay far below it, so what is
//! measured is the datapath, not the other hosts' view of this one's liveness.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use ovl_tests::*;
use serde_json::Value;
use xtask::lab::Launch;

/// The lab's resync period (seconds), as [`lab_of`] sets it.
const RESYNC: u64 = 2;

fn lab_of(name: &str, datapath: DatapathSel, launch: Launch) -> LabGuard {
    let mut cfg = LabConfig::new(name, 2);
    cfg.datapath = datapath;
    cfg.launch = launch;
    cfg.agent_args = [
        "--lease-ttl",
        "30",
        "--resync-interval",
        &RESYNC.to_string(),
        "--dns-upstream",
        xtask::lab::OUTSIDE_ADDR,
    ]
    .map(String::from)
    .to_vec();
    lab_with(cfg)
}

/// Index of `dev` in namespace `ns` (`None` if it does not exist).
fn ifindex(ns: &str, dev: &str) -> Option<u64> {
    let out = nsexec(ns, &["ip", "-j", "link", "show", dev]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["ifindex"].as_u64()
}

/// `ip -j addr show dev` of a container's interface: (up, mtu, MAC, IPv4 addresses).
fn link_state(ns: &str, dev: &str) -> Option<(bool, u64, String, Vec<String>)> {
    let out = nsexec(ns, &["ip", "-j", "addr", "show", "dev", dev]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let l = &v[0];
    let up = l["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    let addrs = l["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["family"] == "inet")
                .map(|x| format!("{}/{}", x["local"].as_str().unwrap(), x["prefixlen"]))
                .collect()
        })
        .unwrap_or_default();
    Some((
        up,
        l["mtu"].as_u64()?,
        l["address"].as_str()?.to_string(),
        addrs,
    ))
}

/// A ping running in the background, `count` pings 100 ms apart.
struct Pinger(Option<Child>);

impl Pinger {
    fn start(from: &str, to: &str, count: u32) -> Pinger {
        let child = Command::new("ip")
            .args(["netns", "exec", from, "ping", "-n", "-i", "0.1", "-W", "1"])
            .args(["-c", &count.to_string(), to])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Pinger(Some(child))
    }

    /// (transmitted, received).
    fn finish(mut self) -> (u32, u32, String) {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        let text = stdout(&out);
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary: {text}"))
            .to_string();
        let n = |i: usize| -> u32 {
            line.split(", ")
                .nth(i)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        (n(0), n(1), text)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The log of host `i` since its agent's last start.
fn log_since_start(lab: &Lab, i: usize) -> String {
    let log = std::fs::read_to_string(&lab.host(i).log).unwrap();
    let last = log.rfind("starting").unwrap_or(0);
    log[last..].to_string()
}

fn peers_diff(lab: &Lab, i: usize, net: &str) -> Vec<String> {
    let p = ctl(lab, i, &["peers", net]);
    p["networks"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["network"] == net))
        .map(|n| {
            n["diff"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The datapath state of endpoint `name` as `overlayctl endpoints` on host `i` shows it.
fn endpoint_state(lab: &Lab, i: usize, net: &str, name: &str) -> Value {
    let eps = ctl(lab, i, &["endpoints", net]);
    eps.as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == name)
        .map(|e| e["status"].clone())
        .unwrap_or(Value::Null)
}

/// kill -9, then SIGTERM, then kill -9 again with the restart started the other way, of host
/// 2's agent while a container on host 1 pings one on host 2: no ping lost beyond the first
/// second after each stop, the container's interface is the same object after the restart,
/// and the restarted agent changes nothing.
fn survives_stops(name: &str, datapath: DatapathSel, launch: Launch) {
    let mut lab = lab_of(name, datapath, launch);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    within("c1 -> c2", Duration::from_secs(5), || ping(&c1, &ip2));
    let eth0 = ifindex(&c2, "eth0").expect("c2 has eth0");
    let log = log_since_start(&lab, 1);
    assert!(
        log.contains("durable datapath mounts"),
        "the agent does not say where its mounts live:\n{log}"
    );
    if launch == Launch::IpNetnsExec {
        // PID 1's namespace where it can be entered, else this test's (the starter's).
        assert!(
            log.contains(&format!("of PID {} (", std::process::id())) || log.contains("of PID 1 ("),
            "under ip netns exec the mounts belong in the host's namespace:\n{log}"
        );
    }
    let other = match launch {
        Launch::IpNetnsExec => Launch::Nsenter,
        Launch::Nsenter => Launch::IpNetnsExec,
    };
    // The last restart is started the other way: it adopts all the same.
    for (sig, relaunch) in [
        (Signal::SIGKILL, launch),
        (Signal::SIGTERM, launch),
        (Signal::SIGKILL, other),
    ] {
        let pinger = Pinger::start(&c1, &ip2, 40);
        std::thread::sleep(Duration::from_millis(500));
        lab.signal_agent(1, sig).unwrap();
        lab.state.launch = relaunch;
        // Down for 2 s: long enough for a datapath that died with the agent to show it.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            ifindex(&c2, "eth0"),
            Some(eth0),
            "{sig} {relaunch:?}: c2's eth0 did not survive"
        );
        lab.start_agent(1).unwrap();
        lab.wait_agent(1).unwrap();
        let (sent, got, text) = pinger.finish();
        assert!(
            got + 10 >= sent,
            "{sig} {relaunch:?}: lost more than the first second of pings ({got}/{sent}):\n{text}"
        );
        assert_eq!(
            ifindex(&c2, "eth0"),
            Some(eth0),
            "{sig} {relaunch:?}: c2's eth0 was replaced"
        );
        // Adopted: a few resyncs later nothing has changed, and nothing differs.
        std::thread::sleep(Duration::from_secs(2 * RESYNC + 1));
        let log = log_since_start(&lab, 1);
        assert!(
            !log.contains("datapath converged"),
            "{sig} {relaunch:?}: the restart changed the datapath:\n{log}"
        );
        assert_eq!(
            peers_diff(&lab, 1, "net1"),
            Vec::<String>::new(),
            "{sig} {relaunch:?}"
        );
        assert_eq!(
            endpoint_state(&lab, 1, "net1", "c2")["state"],
            "ok",
            "{sig} {relaunch:?}"
        );
        assert!(ping(&c1, &ip2), "{sig} {relaunch:?}");
    }
}

#[test]
fn kernel_datapath_survives_an_agent_started_with_ip_netns_exec() {
    survives_stops("tdpkx", DatapathSel::Kernel, Launch::IpNetnsExec);
}

#[test]
fn ebpf_datapath_survives_an_agent_started_with_ip_netns_exec() {
    survives_stops("tdpex", DatapathSel::Ebpf, Launch::IpNetnsExec);
}

#[test]
fn kernel_datapath_survives_an_agent_in_the_root_mount_namespace() {
    survives_stops("tdpkr", DatapathSel::Kernel, Launch::Nsenter);
}

#[test]
fn ebpf_datapath_survives_an_agent_in_the_root_mount_namespace() {
    survives_stops("tdper", DatapathSel::Ebpf, Launch::Nsenter);
}

/// Breaks c2's interface with `break_cmd` (in c2) until `peers` on host 2 shows a
/// difference before the reconciler repairs it (a pass can race the first look), then waits
/// for the repair: the interface as specified again, and traffic.
fn broken_then_restored(lab: &Lab, c1: &str, c2: &str, ip2: &str, what: &str, break_cmd: &str) {
    let want = link_state(c2, "eth0").expect("c2 has eth0");
    let mut seen_diff = None;
    for _ in 0..5 {
        let out = Command::new("ip")
            .args(["netns", "exec", c2, "sh", "-c", break_cmd])
            .output()
            .unwrap();
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        assert_ne!(
            link_state(c2, "eth0"),
            Some(want.clone()),
            "{what}: nothing broke"
        );
        let diff = peers_diff(lab, 1, "net1");
        if !diff.is_empty() {
            seen_diff = Some(diff);
            break;
        }
        // The reconciler was faster than the look: it must have repaired it already.
        within(&format!("{what}: repaired"), Duration::from_secs(1), || {
            link_state(c2, "eth0").as_ref() == Some(&want)
        });
    }
    let diff = seen_diff.unwrap_or_else(|| panic!("{what}: peers never showed the difference"));
    assert!(
        diff.iter().any(|l| l.contains("endpoint c2")),
        "{what}: the difference does not name the endpoint: {diff:?}"
    );
    let took = within(
        &format!("{what}: eth0 restored"),
        Duration::from_secs(2 * RESYNC + 1),
        || link_state(c2, "eth0").as_ref() == Some(&want),
    );
    eprintln!("{what}: restored after {took:?}");
    within(&format!("{what}: traffic"), Duration::from_secs(3), || {
        ping(c1, ip2)
    });
    within(
        &format!("{what}: converged"),
        Duration::from_secs(RESYNC + 1),
        || peers_diff(lab, 1, "net1").is_empty(),
    );
}

fn container_end_is_restored(name: &str, datapath: DatapathSel) {
    let lab = lab_of(name, datapath, Launch::IpNetnsExec);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    within("c1 -> c2", Duration::from_secs(5), || ping(&c1, &ip2));
    within("c2 ok", Duration::from_secs(RESYNC + 1), || {
        endpoint_state(&lab, 1, "net1", "c2")["state"] == "ok"
    });

    broken_then_restored(&lab, &c1, &c2, &ip2, "deleted", "ip link del eth0");
    broken_then_restored(&lab, &c1, &c2, &ip2, "down", "ip link set eth0 down");
    broken_then_restored(
        &lab,
        &c1,
        &c2,
        &ip2,
        "wrong MTU",
        "ip link set eth0 mtu 1300",
    );
    broken_then_restored(
        &lab,
        &c1,
        &c2,
        &ip2,
        "wrong address",
        "ip addr flush dev eth0 && ip addr add 10.10.0.200/24 dev eth0",
    );
    broken_then_restored(
        &lab,
        &c1,
        &c2,
        &ip2,
        "wrong MAC",
        "ip link set eth0 address 02:00:00:00:00:99",
    );

    // The container's namespace is gone: nothing can be restored; it is reported and marked,
    // and peers does not say converged.
    let out = Command::new("ip")
        .args(["netns", "del", &c2])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    within("c2 marked", Duration::from_secs(2 * RESYNC + 1), || {
        endpoint_state(&lab, 1, "net1", "c2")["state"] == "netns_gone"
    });
    let diff = peers_diff(&lab, 1, "net1");
    assert!(
        diff.iter()
            .any(|l| l.contains("c2") && l.contains("is gone")),
        "peers should show the gone namespace: {diff:?}"
    );
    // c1, on the other host, is untouched.
    within("c1 ok", Duration::from_secs(RESYNC + 1), || {
        endpoint_state(&lab, 0, "net1", "c1")["state"] == "ok"
    });
}

#[test]
fn kernel_container_end_is_restored_or_reported() {
    container_end_is_restored("tdpkc", DatapathSel::Kernel);
}

#[test]
fn ebpf_container_end_is_restored_or_reported() {
    container_end_is_restored("tdpec", DatapathSel::Ebpf);
}

/// Restarts host `i`'s agent on datapath `to`; returns the time from its answering to the
/// first ping from `from` to `ip`.
fn switch(lab: &mut Lab, i: usize, to: &str, from: &str, ip: &str) -> Duration {
    lab.signal_agent(i, Signal::SIGTERM).unwrap();
    lab.state.hosts[i].datapath = to.into();
    lab.start_agent(i).unwrap();
    lab.wait_agent(i).unwrap();
    let t0 = Instant::now();
    within(
        &format!("traffic on the {to} datapath"),
        Duration::from_secs(2 * RESYNC + 2),
        || ping(from, ip),
    );
    t0.elapsed()
}

#[test]
fn datapath_switch_with_endpoints_present() {
    let mut lab = lab_of("tdpsw", DatapathSel::Ebpf, Launch::IpNetnsExec);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, ip1) = attach(&lab, 0, "net1", "c1", &[]);
    let (c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    within("c1 -> c2", Duration::from_secs(5), || ping(&c1, &ip2));
    let h2 = lab.host(1).ns.clone();

    // eBPF -> kernel: ovl_vx0 used to hold the VXLAN port ("Address already in use").
    let took = switch(&mut lab, 1, "kernel", &c1, &ip2);
    eprintln!("ebpf -> kernel: traffic back {took:?} after the agent answered");
    let d = ctl(&lab, 1, &["datapath"]);
    assert_eq!(d["mode"], "kernel", "{d}");
    assert_eq!(d["switched"]["from"], "ebpf", "{d}");
    let removed = d["switched"]["removed"].to_string();
    assert!(removed.contains("ovl_vx0") && removed.contains("c2"), "{d}");
    assert!(ifindex(&h2, "ovl_vx0").is_none(), "ovl_vx0 left behind");
    assert!(log_since_start(&lab, 1).contains("switching datapath"));
    assert!(ping(&c2, &ip1), "back from c2");
    within(
        "converged on kernel",
        Duration::from_secs(RESYNC + 1),
        || peers_diff(&lab, 1, "net1").is_empty(),
    );

    // kernel -> eBPF: the sandboxes go, the endpoints come back on the fast path.
    let took = switch(&mut lab, 1, "ebpf", &c1, &ip2);
    eprintln!("kernel -> ebpf: traffic back {took:?} after the agent answered");
    let d = ctl(&lab, 1, &["datapath"]);
    assert_eq!(d["mode"], "ebpf", "{d}");
    assert_eq!(d["switched"]["from"], "kernel", "{d}");
    assert!(d["switched"]["removed"].to_string().contains("net1"), "{d}");
    assert!(
        !std::path::Path::new(&sandbox(&lab, 1, "net1")).exists(),
        "the kernel datapath's sandbox was left behind"
    );
    assert!(ping(&c2, &ip1), "back from c2");
    within("converged on ebpf", Duration::from_secs(RESYNC + 1), || {
        peers_diff(&lab, 1, "net1").is_empty()
    });
    within("c2 ok on ebpf", Duration::from_secs(RESYNC + 1), || {
        endpoint_state(&lab, 1, "net1", "c2")["state"] == "ok"
    });
}
