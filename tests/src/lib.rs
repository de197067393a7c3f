//! Helpers shared by the end-to-end tests: a lab per test, waiting, parsing `overlayctl`.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
pub use xtask::lab::{DatapathSel, KvKind, Lab, LabConfig, LabGuard};

/// VNI of the health network every host programs (the health matrix of `overlayctl
/// doctor`): tests that look at what a datapath holds for their own networks leave it out.
pub const HEALTH_VNI: u64 = 16_777_215;

/// Entries of a BPF map listing (`overlayctl datapath`: `maps.local_endpoints`,
/// `maps.remotes`) outside the health network.
pub fn outside_health(entries: &Value) -> Vec<Value> {
    entries
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["vni"].as_u64() != Some(HEALTH_VNI))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// VNIs of a flood list listing (`maps.flood`, by VNI) outside the health network.
pub fn flood_outside_health(flood: &Value) -> Vec<String> {
    flood
        .as_object()
        .map(|o| {
            o.keys()
                .filter(|k| **k != HEALTH_VNI.to_string())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

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

/// The hops `overlayctl probe` reports to an endpoint on another host.
pub const PROBE_REMOTE: [&str; 6] = ["entry", "leave", "arrive", "deliver", "reply", "mtu"];
/// The hops `overlayctl probe` reports to an endpoint on its own host.
pub const PROBE_LOCAL: [&str; 4] = ["entry", "deliver", "reply", "mtu"];

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

/// `ip -n NS ARGS` (arguments split on whitespace); panics with its stderr on failure.
pub fn ip_ns(ns: &str, args: &str) {
    let o = std::process::Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .expect("ip");
    assert!(o.status.success(), "ip -n {ns} {args}: {}", stderr(&o));
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

/// Starts a command in a named namespace with `ip netns exec`, output discarded: a server
/// for the test to stop (see [`Killed`]).
pub fn nsspawn<S: AsRef<std::ffi::OsStr>>(ns: &str, args: &[S]) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
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

/// Lets a container answer broadcast pings.
pub fn allow_broadcast_ping(ns: &str) {
    assert!(
        nsexec(
            ns,
            &["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"]
        )
        .status
        .success()
    );
}

/// Three broadcast pings from `from` to `bcast`; the output (one line per reply).
pub fn broadcast_replies(from: &str, bcast: &str) -> String {
    stdout(&nsexec(
        from,
        &["ping", "-b", "-c", "3", "-i", "0.2", "-W", "1", bcast],
    ))
}

/// Sends UDP multicast to 239.1.1.1 from `sender` and asserts every receiver namespace (a
/// `socat` subscriber on eth0) got it.
pub fn multicast_reaches(sender: &str, sender_ip: &str, receivers: &[&str]) {
    use std::process::{Command, Stdio};
    let rx: Vec<_> = receivers
        .iter()
        .map(|ns| {
            Command::new("ip")
                .args(["netns", "exec", ns, "timeout", "5", "socat", "-u"])
                .arg("UDP4-RECV:5000,ip-add-membership=239.1.1.1:eth0,reuseaddr")
                .arg("STDOUT")
                .stdout(Stdio::piped())
                .spawn()
                .expect("socat receiver")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let mut s = Command::new("ip")
            .args(["netns", "exec", sender, "socat", "-u", "STDIN"])
            .arg(format!(
                "UDP4-DATAGRAM:239.1.1.1:5000,ip-multicast-if={sender_ip}"
            ))
            .stdin(Stdio::piped())
            .spawn()
            .expect("socat sender");
        use std::io::Write;
        s.stdin
            .take()
            .expect("stdin")
            .write_all(b"hello-multicast\n")
            .expect("write");
        s.wait().expect("socat");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (r, who) in rx.into_iter().zip(receivers) {
        let out = r.wait_with_output().expect("socat receiver");
        assert!(
            stdout(&out).contains("hello-multicast"),
            "{who} got no multicast: {:?}",
            stdout(&out)
        );
    }
}

/// Floods broadcast, ARP and multicast from `from` (on a network with subnet `subnet`) and
/// asserts that none of it is seen in the `watch` namespaces (containers of other networks).
pub fn assert_nothing_crosses(from: &str, subnet: &str, watch: &[&str]) {
    use std::process::{Command, Stdio};
    let watchers: Vec<_> = watch
        .iter()
        .map(|ns| {
            Command::new("ip")
                .args([
                    "netns", "exec", ns, "timeout", "4", "tcpdump", "-n", "-l", "-i", "eth0",
                ])
                .args(["src", "net", subnet, "or", "arp"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("tcpdump")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let bcast = subnet.replace(".0/24", ".255");
    nsexec(
        from,
        &["ping", "-b", "-c", "4", "-i", "0.2", "-W", "1", &bcast],
    );
    nsexec(
        from,
        &[
            "arping",
            "-c",
            "2",
            "-w",
            "1",
            "-I",
            "eth0",
            &subnet.replace(".0/24", ".99"),
        ],
    );
    nsexec(
        from,
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "eth0",
            "239.2.2.2",
        ],
    );
    for w in watchers {
        let out = w.wait_with_output().expect("tcpdump");
        assert!(
            stdout(&out).trim().is_empty(),
            "a packet crossed VNIs: {}",
            stdout(&out)
        );
        assert!(
            stderr(&out).contains("0 packets captured"),
            "{}",
            stderr(&out)
        );
    }
}

/// The common opening of the multi-host scenarios: network `net1`, a container on each of
/// hosts 1-3, MTU = underlay - 50 on eth0, and ping between every pair. Returns each
/// container's namespace and address.
pub fn three_containers_ping(lab: &Lab) -> [(String, String); 3] {
    ctl(lab, 0, &["network", "create", "net1"]);
    let c = [0, 1, 2].map(|i| attach(lab, i, "net1", &format!("c{}", i + 1), &[]));
    let link = nsexec(&c[1].0, &["ip", "-o", "link", "show", "eth0"]);
    assert!(stdout(&link).contains("mtu 1450"), "{}", stdout(&link));
    within("c1 -> c2 and c2 -> c1", Duration::from_secs(5), || {
        ping(&c[0].0, &c[1].1) && ping(&c[1].0, &c[0].1)
    });
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        assert!(ping(&c[a].0, &c[b].1), "c{} -> c{}", a + 1, b + 1);
    }
    c
}

/// Processes a test started, killed (by PID, through their handles) and reaped when dropped,
/// also when the test fails.
pub struct Killed(pub Vec<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `nft` in the lab's underlay namespace (the "wire" between the hosts).
pub fn nft_on_wire(lab: &Lab, args: &[&str]) {
    let ul = format!("{}-ul", lab.state.name);
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ul, "nft"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "nft {args:?}: {}", stderr(&o));
}

/// Sets host `i`'s underlay MTU and restarts its agent (it registers the MTU at start).
pub fn set_underlay_mtu(lab: &mut Lab, i: usize, mtu: u32) {
    let ns = lab.state.hosts[i].ns.clone();
    ip_ns(&ns, &format!("link set eth0 mtu {mtu}"));
    lab.signal_agent(i, nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    lab.start_agent(i).unwrap();
    lab.wait_agent(i).unwrap();
}
