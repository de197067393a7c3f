//! Issue 20: `overlayctl monitor --drops`. On the eBPF datapath every dropped frame is an
//! event with its reason, network, endpoint and headers: a forged source MAC on the sending
//! host, a frame for an unknown MAC on the receiving one; ordinary traffic shows none. On the
//! kernel datapath, drops are counted: the forged MAC shows as a count. `monitor` without
//! `--drops` also reports a host whose agent stops. Needs root; never skips.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use ovl_tests::*;
use serde_json::Value;

/// A running `overlayctl --json monitor ARGS` on one host; killed (by PID) when dropped.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Monitor {
    fn start(lab: &Lab, i: usize, args: &[&str]) -> Monitor {
        let mut a = vec!["--json", "monitor"];
        a.extend_from_slice(args);
        let mut child = xtask::lab::ctl_cmd(&lab.state, i, &a)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        // The stream is subscribed once the agent answered; give it its first poll.
        std::thread::sleep(Duration::from_millis(1500));
        Monitor { child, lines }
    }

    /// Waits for an event `want` accepts; panics with what came instead.
    fn expect(&self, what: &str, timeout: Duration, want: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if want(&v) => return v,
                Ok(v) => seen.push(v),
                Err(_) => panic!("{what}: not seen in {timeout:?}; saw {seen:#?}"),
            }
        }
    }

    /// Every event that arrives within `d`.
    fn collect(&self, d: Duration) -> Vec<Value> {
        let end = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(v) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            out.push(v);
        }
        out
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh_in(ns: &str, args: &[&str]) {
    let o = nsexec(ns, args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

#[test]
fn monitor_drops_ebpf() {
    let mut cfg = LabConfig::new("t20mon", 2);
    cfg.datapath = DatapathSel::Ebpf;
    let lab = lab_with(cfg);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    within("c1 -> c2", Duration::from_secs(10), || ping(&c1, &ip2));
    let m1 = Monitor::start(&lab, 0, &["--drops", "net1"]);
    let m2 = Monitor::start(&lab, 1, &["--drops", "net1"]);

    // Positive control: ordinary traffic (and the health probes) drop nothing on net1.
    for _ in 0..3 {
        assert!(ping(&c1, &ip2));
    }
    let quiet = m1.collect(Duration::from_secs(1));
    assert!(quiet.is_empty(), "drops without a fault: {quiet:#?}");

    // A forged source MAC in c1: its frames die in h1's program.
    sh_in(
        &c1,
        &["ip", "link", "set", "eth0", "address", "02:de:ad:00:00:01"],
    );
    nsexec(&c1, &["ip", "neigh", "flush", "dev", "eth0"]);
    nsexec(&c1, &["ping", "-c1", "-W1", &ip2]);
    let e = m1.expect("the forged MAC on h1", Duration::from_secs(5), |v| {
        v["code"] == "egress_drop_spoofed_mac"
    });
    assert_eq!(e["host"], "h1", "{e}");
    assert_eq!(e["network"], "net1", "{e}");
    assert_eq!(e["endpoint"], "c1", "{e}");
    assert_eq!(e["frame"]["src_mac"], "02:de:ad:00:00:01", "{e}");
    assert!(
        e["reason"].as_str().unwrap().contains("spoofed source MAC"),
        "{e}"
    );
    eprintln!("t20mon: h1 reported {e}");
    within(
        "the agent gives c1 its MAC back",
        Duration::from_secs(10),
        || ping(&c1, &ip2),
    );

    // A frame for a MAC nobody has: h1 floods it, h2 has no endpoint for it.
    sh_in(
        &c1,
        &[
            "ip",
            "neigh",
            "replace",
            &ip2,
            "lladdr",
            "02:00:00:00:99:99",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    nsexec(&c1, &["ping", "-c1", "-W1", &ip2]);
    let e = m2.expect("the unknown MAC on h2", Duration::from_secs(5), |v| {
        v["code"] == "ingress_drop_no_local_endpoint"
    });
    assert_eq!(e["host"], "h2", "{e}");
    assert_eq!(e["network"], "net1", "{e}");
    assert_eq!(e["frame"]["dst_mac"], "02:00:00:00:99:99", "{e}");
    assert_eq!(e["frame"]["dst_ip"], ip2.as_str(), "{e}");
    assert!(e["reason"].as_str().unwrap().contains("unknown MAC"), "{e}");
    eprintln!("t20mon: h2 reported {e}");
    sh_in(&c1, &["ip", "neigh", "del", &ip2, "dev", "eth0"]);
    within("c1 -> c2 again", Duration::from_secs(5), || ping(&c1, &ip2));

    // Another network's filter sees none of it.
    let other = Monitor::start(&lab, 0, &["--drops", "net2"]);
    sh_in(
        &c1,
        &["ip", "link", "set", "eth0", "address", "02:de:ad:00:00:02"],
    );
    nsexec(&c1, &["ping", "-c1", "-W1", &ip2]);
    m1.expect(
        "the second forged MAC on net1",
        Duration::from_secs(5),
        |v| v["frame"]["src_mac"] == "02:de:ad:00:00:02",
    );
    assert!(other.collect(Duration::from_secs(1)).is_empty());
}

#[test]
fn monitor_kernel_counts_and_host_events() {
    let lab = lab("t20mok", 2, KvKind::Embedded);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    within("c1 -> c2", Duration::from_secs(10), || ping(&c1, &ip2));
    let m = Monitor::start(&lab, 0, &[]);

    sh_in(
        &c1,
        &["ip", "link", "set", "eth0", "address", "02:de:ad:00:00:01"],
    );
    nsexec(&c1, &["ip", "neigh", "flush", "dev", "eth0"]);
    nsexec(&c1, &["ping", "-c2", "-i0.3", "-W1", &ip2]);
    let e = m.expect(
        "the forged MAC counted on h1",
        Duration::from_secs(5),
        |v| v["code"] == "kernel_spoofed",
    );
    assert!(e["count"].as_u64().unwrap() >= 1, "{e}");
    eprintln!("t20mok: h1 reported {e}");

    // Without --drops: h2's agent stopping is an event.
    let mut lab = lab;
    lab.signal_agent(1, Signal::SIGKILL).unwrap();
    let e = m.expect("h2's agent down", Duration::from_secs(15), |v| {
        v["kind"] == "host"
            && v["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("h2 is now"))
    });
    eprintln!("t20mok: h1 reported {e}");
    assert_ne!(e["code"], "alive", "{e}");
}
