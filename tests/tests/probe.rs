//! Issue 20: `overlayctl probe` on a 3-host lab, both datapaths. Healthy: every endpoint is
//! reached (remote and local, by name and by address, also sent from another host) with
//! every hop shown. Then one fault at a time, with `probe` naming the failing hop and
//! `doctor` the cause, each put back with `doctor` at 0 again: VXLAN to one host dropped on
//! the wire, a remote FDB/map entry held wrong, an underlay MTU smaller than the endpoints',
//! a stopped agent. After every probe, and after an interrupted one, nothing of it is left:
//! no endpoint, namespace, TAP or KV key. Needs root; never skips.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use nix::sys::signal::Signal;
use ovl_tests::*;
use serde_json::Value;

/// `overlayctl --json probe NET --to TO [--from FROM]` on host `i`: exit code and report.
fn probe(lab: &Lab, i: usize, net: &str, to: &str, from: Option<&str>) -> (i32, Value) {
    let mut args = vec!["--json", "probe", net, "--to", to];
    if let Some(f) = from {
        args.extend(["--from", f]);
    }
    let o = lab.ctl(i, &args).unwrap();
    let r: Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&o), stderr(&o)));
    (o.status.code().unwrap_or(-1), r)
}

fn hops(r: &Value) -> Vec<(String, Option<bool>)> {
    r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hop"].as_str().unwrap().to_string(), h["ok"].as_bool()))
        .collect()
}

fn failed(r: &Value) -> String {
    r["failed"].as_str().unwrap_or_default().to_string()
}

/// A probe that went through: exit 0, every hop passed.
fn assert_reached(lab: &Lab, i: usize, to: &str, from: Option<&str>, want: &[&str]) -> Value {
    assert_reached_on(lab, "net1", i, to, from, want)
}

fn assert_reached_on(
    lab: &Lab,
    net: &str,
    i: usize,
    to: &str,
    from: Option<&str>,
    want: &[&str],
) -> Value {
    let (code, r) = probe(lab, i, net, to, from);
    assert_eq!(code, 0, "{r:#}");
    let h = hops(&r);
    let names: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want, "{r:#}");
    assert!(h.iter().all(|(_, ok)| *ok == Some(true)), "{r:#}");
    r
}

/// `overlayctl doctor` exit code on host 0.
fn doctor(lab: &Lab) -> (i32, String) {
    let o = lab.ctl(0, &["doctor"]).unwrap();
    (o.status.code().unwrap_or(-1), stdout(&o))
}

fn wait_doctor_ok(lab: &Lab, what: &str) {
    within(what, Duration::from_secs(25), || doctor(lab).0 == 0);
}

/// Nothing of any probe is left on any host: no probe endpoint, namespace or TAP, no KV key.
fn nothing_left(lab: &Lab) -> Result<(), String> {
    for i in 0..3 {
        let eps = ctl(lab, i, &["endpoints"]).to_string();
        if eps.contains("ovl-probe-") {
            return Err(format!("a probe endpoint on h{}: {eps}", i + 1));
        }
        let dir = lab.host(i).run_dir.clone();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("probe-") {
                return Err(format!("{n} left in {}", dir.display()));
            }
        }
        let links = stdout(&lab.exec(i, "ip").args(["-o", "link"]).output().unwrap());
        if links.contains("ovlprobe") {
            return Err(format!("a probe TAP on h{}: {links}", i + 1));
        }
    }
    let keys = lab
        .etcdctl()
        .args(["get", "--prefix", "--keys-only", "/ovl/v1/probe"])
        .output()
        .unwrap();
    let keys = stdout(&keys);
    if !keys.trim().is_empty() {
        return Err(format!("probe keys left in the KV: {keys}"));
    }
    Ok(())
}

fn assert_nothing_left(lab: &Lab) {
    if let Err(e) = nothing_left(lab) {
        panic!("{e}");
    }
}

/// Rewrites, every 100 ms until dropped, h1's entry for `mac` (c2's, on h2) to send to h3:
/// a wrong entry the reconciler keeps correcting and the test keeps putting back.
struct WrongEntry {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WrongEntry {
    fn hold(lab: &Lab, datapath: DatapathSel, mac: &str, h2: &str, h3: &str) -> WrongEntry {
        let stop = Arc::new(AtomicBool::new(false));
        let write: Box<dyn Fn() + Send> = match datapath {
            DatapathSel::Kernel => {
                let sb = sandbox(lab, 0, "net1");
                let cmd = format!("bridge fdb replace {mac} dev vxlan0 dst {h3}");
                Box::new(move || {
                    let o = Command::new("nsenter")
                        .arg(format!("--net={sb}"))
                        .args(["sh", "-c", &cmd])
                        .output()
                        .unwrap();
                    assert!(o.status.success(), "{cmd}: {}", stderr(&o));
                })
            }
            _ => {
                let map = lab.host(0).run_dir.join("bpf/REMOTE");
                let (key, value) = remote_entry(&map, h2);
                let wrong = swap_addr(&value, h2, h3);
                Box::new(move || {
                    let mut args = vec![
                        "map".to_string(),
                        "update".into(),
                        "pinned".into(),
                        map.display().to_string(),
                        "key".into(),
                        "hex".into(),
                    ];
                    args.extend(key.iter().cloned());
                    args.extend(["value".into(), "hex".into()]);
                    args.extend(wrong.iter().cloned());
                    let o = Command::new("bpftool").args(&args).output().unwrap();
                    assert!(o.status.success(), "bpftool {args:?}: {}", stderr(&o));
                })
            }
        };
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                write();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        WrongEntry {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for WrongEntry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An address's bytes as hex, in the map's byte order (host order, little endian here).
fn octets(addr: &str) -> Vec<String> {
    let a: std::net::Ipv4Addr = addr.parse().unwrap();
    u32::from(a)
        .to_ne_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Key and value (hex bytes) of the REMOTE map entry that sends to `vtep`, outside the
/// health network.
fn remote_entry(map: &std::path::Path, vtep: &str) -> (Vec<String>, Vec<String>) {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(map)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hex = |e: &Value| -> Vec<String> {
        e.as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().trim_start_matches("0x").to_string())
            .collect()
    };
    let want = octets(vtep);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| (hex(&e["key"]), hex(&e["value"])))
        .find(|(k, val)| {
            let vni = u32::from_le_bytes(
                [0, 1, 2, 3].map(|i| u8::from_str_radix(&k[i], 16).expect("hex byte")),
            );
            u64::from(vni) != HEALTH_VNI && val.windows(4).any(|w| w == want.as_slice())
        })
        .unwrap_or_else(|| panic!("no entry via {vtep} in {}: {v}", map.display()))
}

fn swap_addr(value: &[String], from: &str, to: &str) -> Vec<String> {
    let (a, b) = (octets(from), octets(to));
    let mut out = value.to_vec();
    let at = out
        .windows(4)
        .position(|w| w == a.as_slice())
        .expect("the address in the value");
    out[at..at + 4].clone_from_slice(&b);
    out
}

fn probe_finds_one_fault_at_a_time(name: &str, datapath: DatapathSel) {
    let mut cfg = LabConfig::new(name, 3);
    cfg.datapath = datapath;
    cfg.kv = KvKind::Etcd;
    let mut lab = lab_with(cfg);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (_c1b, ip1b) = attach(&lab, 0, "net1", "c1b", &[]);
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    let (_c3, ip3) = attach(&lab, 2, "net1", "c3", &[]);
    within("c1 -> c2 and c3", Duration::from_secs(10), || {
        ping(&c1, &ip2) && ping(&c1, &ip3)
    });
    wait_doctor_ok(&lab, "doctor 0 on a healthy lab");

    // Healthy: every endpoint, by name and by address, from h1 and from h2.
    let r = assert_reached(&lab, 0, "c2", None, &PROBE_REMOTE);
    eprintln!("{name}: healthy probe h1 -> c2:\n{r:#}");
    let text = stdout(&lab.ctl(0, &["probe", "net1", "--to", "c3"]).unwrap());
    eprintln!("{name}: probe h1 -> c3:\n{text}");
    assert!(text.ends_with("reached\n"), "{text}");
    for hop in PROBE_REMOTE {
        assert!(text.contains(&format!("ok   {hop:<8}")), "{text}");
    }
    let h3 = lab.state.hosts[2].addr.clone();
    let h2 = lab.state.hosts[1].addr.clone();
    assert!(text.contains(&format!("to VTEP {h3}")), "{text}");
    assert_reached(&lab, 0, &ip3, None, &PROBE_REMOTE);
    assert_reached(&lab, 0, "c1b", None, &PROBE_LOCAL);
    assert_reached(&lab, 0, &ip1b, None, &PROBE_LOCAL);
    let r = assert_reached(&lab, 0, "c3", Some("h2"), &PROBE_REMOTE);
    assert_eq!(r["from"], "h2", "{r:#}");
    assert_nothing_left(&lab);
    let o = lab.ctl(0, &["probe", "net1", "--to", "nobody"]).unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no endpoint nobody on network net1"),
        "{}",
        stderr(&o)
    );
    let o = lab
        .ctl(
            0,
            &["attach", "net1", "--name", "ovl-probe-7", "--netns", &c1],
        )
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("reserved for overlayctl probe"),
        "{}",
        stderr(&o)
    );

    // Interrupted: the client goes away mid-probe; the agent still removes everything.
    let mut child = xtask::lab::ctl_cmd(&lab.state, 0, &["probe", "net1", "--to", "c2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGINT,
    )
    .unwrap();
    child.wait().unwrap();
    within(
        "an interrupted probe's leftovers gone",
        Duration::from_secs(20),
        || nothing_left(&lab).is_ok(),
    );

    // Fault 1: VXLAN to h3 dropped on the wire.
    nft_on_wire(&lab, &["add", "table", "bridge", "t20pwire"]);
    nft_on_wire(
        &lab,
        &[
            "add",
            "chain",
            "bridge",
            "t20pwire",
            "wire",
            "{ type filter hook forward priority 0; policy accept; }",
        ],
    );
    nft_on_wire(
        &lab,
        &[
            "add", "rule", "bridge", "t20pwire", "wire", "ip", "daddr", &h3, "udp", "dport",
            "4789", "drop",
        ],
    );
    let (code, r) = probe(&lab, 0, "net1", "c3", None);
    eprintln!("{name}: VXLAN to h3 dropped:\n{r:#}");
    assert_eq!(code, 1, "{r:#}");
    assert!(
        failed(&r).starts_with("arrive on h3: lost between the underlays"),
        "{r:#}"
    );
    within("doctor to name h1 <-> h3", Duration::from_secs(20), || {
        let (code, text) = doctor(&lab);
        code == 1 && text.contains("h1 <-> h3")
    });
    nft_on_wire(&lab, &["delete", "table", "bridge", "t20pwire"]);
    wait_doctor_ok(&lab, "doctor 0 with the wire open");
    assert_reached(&lab, 0, "c3", None, &PROBE_REMOTE);

    // Fault 2: h1's entry for c2 held wrong (sends to h3).
    let c2_mac = ctl(&lab, 1, &["endpoints", "net1"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "c2")
        .map(|e| e["mac"].as_str().unwrap().to_string())
        .expect("c2's MAC");
    {
        let _wrong = WrongEntry::hold(&lab, datapath, &c2_mac, &h2, &h3);
        let mut last = Value::Null;
        within(
            "probe to name the stale entry",
            Duration::from_secs(15),
            || {
                let (code, r) = probe(&lab, 0, "net1", "c2", None);
                let hit = code == 1 && failed(&r).starts_with("entry on h1: stale entry");
                last = r;
                hit
            },
        );
        eprintln!("{name}: entry for c2 held wrong:\n{last:#}");
        within(
            "doctor to name the entries",
            Duration::from_secs(15),
            || {
                let (code, text) = doctor(&lab);
                code == 1 && text.contains("entries")
            },
        );
    }
    wait_doctor_ok(&lab, "doctor 0 with the entry repaired");
    assert_reached(&lab, 0, "c2", None, &PROBE_REMOTE);

    // Fault 3: h3's underlay carries 1400 bytes; endpoints keep MTU 1450.
    set_underlay_mtu(&mut lab, 2, 1400);
    within("doctor to find the MTU", Duration::from_secs(15), || {
        doctor(&lab).0 == 1
    });
    let (code, r) = probe(&lab, 0, "net1", "c3", None);
    eprintln!("{name}: h3's underlay at 1400:\n{r:#}");
    assert_eq!(code, 1, "{r:#}");
    assert!(failed(&r).starts_with("mtu on h1: MTU exceeded"), "{r:#}");
    assert!(failed(&r).contains("--mtu to 1350"), "{r:#}");
    let h = hops(&r);
    assert_eq!(h[4], ("reply".to_string(), Some(true)), "{r:#}");
    set_underlay_mtu(&mut lab, 2, 1500);
    wait_doctor_ok(&lab, "doctor 0 with h3's MTU back");
    assert_reached(&lab, 0, "c3", None, &PROBE_REMOTE);

    // Fault 4: h2's agent stops: no one on h2 watches.
    lab.signal_agent(1, Signal::SIGTERM).unwrap();
    let (code, r) = probe(&lab, 0, "net1", "c2", None);
    eprintln!("{name}: h2's agent stopped:\n{r:#}");
    assert_eq!(code, 1, "{r:#}");
    assert!(
        failed(&r).starts_with("arrive on h2: not observed: the agent of h2 did not answer"),
        "{r:#}"
    );
    within("doctor to name h2", Duration::from_secs(20), || {
        let (code, text) = doctor(&lab);
        code == 1 && text.contains("h2")
    });
    lab.start_agent(1).unwrap();
    lab.wait_agent(1).unwrap();
    wait_doctor_ok(&lab, "doctor 0 with h2's agent back");
    assert_reached(&lab, 0, "c2", None, &PROBE_REMOTE);
    assert_nothing_left(&lab);
}

#[test]
fn probe_kernel() {
    probe_finds_one_fault_at_a_time("t20pk", DatapathSel::Kernel);
}

#[test]
fn probe_ebpf() {
    probe_finds_one_fault_at_a_time("t20pe", DatapathSel::Ebpf);
}

/// A mixed lab (h1, h2 eBPF; h3 kernel): probes cross between the datapaths both ways, on a
/// plain network and on an encrypted one (VXLAN inside WireGuard, seen leaving through it).
#[test]
fn probe_mixed_and_encrypted() {
    let mut cfg = LabConfig::new("t20pm", 3);
    cfg.datapath = DatapathSel::Mixed;
    cfg.kv = KvKind::Etcd;
    let lab = lab_with(cfg);
    ctl(&lab, 0, &["network", "create", "net1"]);
    ctl(
        &lab,
        0,
        &[
            "network",
            "create",
            "sec",
            "--encrypted",
            "--subnet",
            "10.64.0.0/24",
        ],
    );
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (_c3, ip3) = attach(&lab, 2, "net1", "c3", &[]);
    let (s1, _) = attach(&lab, 0, "sec", "s1", &[]);
    let (_s3, ips3) = attach(&lab, 2, "sec", "s3", &[]);
    within("c1 -> c3 and s1 -> s3", Duration::from_secs(15), || {
        ping(&c1, &ip3) && ping(&s1, &ips3)
    });
    let r = assert_reached(&lab, 0, "c3", None, &PROBE_REMOTE);
    eprintln!("t20pm: eBPF h1 -> kernel h3:\n{r:#}");
    let r = assert_reached(&lab, 2, "c1", None, &PROBE_REMOTE);
    eprintln!("t20pm: kernel h3 -> eBPF h1:\n{r:#}");
    for (i, to) in [(0, "s3"), (2, "s1")] {
        let r = assert_reached_on(&lab, "sec", i, to, None, &PROBE_REMOTE);
        eprintln!("t20pm: encrypted, from h{} to {to}:\n{r:#}", i + 1);
        let leave = r["hops"][1]["detail"].as_str().unwrap();
        assert!(leave.ends_with("(inside WireGuard)"), "{r:#}");
        assert!(!leave.contains("on eth0"), "VXLAN in the clear: {r:#}");
    }
    assert_nothing_left(&lab);
}
