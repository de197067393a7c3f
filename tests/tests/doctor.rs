//! Issue 20: `overlayctl doctor` on a 3-host lab, both datapaths. Healthy: exit 0, with
//! every pair's clock offset measured near 0 (the lab's hosts share one clock: a positive
//! control of the measurement). Then one fault at a time, each put back afterwards with
//! `doctor` at 0 again: a stopped agent (a warning while its lease runs down, a problem once
//! it ran out), an underlay MTU smaller on one host than the others (full-size packets to
//! it are dropped: shown with DF pings), and VXLAN to one host dropped on the wire (the
//! health matrix names the pairs). Needs root; never skips.

use std::{process::Command, time::Duration};

use nix::sys::signal::Signal;
use ovl_tests::*;
use serde_json::Value;

/// `overlayctl [--json] doctor` on host `i`: exit code, output.
fn doctor(lab: &Lab, i: usize, json: bool) -> (i32, String) {
    let args: &[&str] = if json {
        &["--json", "doctor"]
    } else {
        &["doctor"]
    };
    let o = lab.ctl(i, args).unwrap();
    (o.status.code().unwrap_or(-1), stdout(&o))
}

fn problems(report: &str) -> Vec<Value> {
    findings(report, "problem")
}

fn findings(report: &str, severity: &str) -> Vec<Value> {
    let r: Value = serde_json::from_str(report).unwrap_or_else(|e| panic!("{e}: {report}"));
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["findings"].as_array().unwrap().clone())
        .filter(|f| f["severity"] == severity)
        .collect()
}

/// Every host's row of the health matrix, as the agent of host `i` serves them
/// (`GET /v1/health` on its control socket).
fn health_rows(lab: &Lab, i: usize) -> Vec<Value> {
    let sock = lab.state.hosts[i].run_dir.join("overlay.sock");
    let o = Command::new("curl")
        .args(["-sf", "-m", "3", "--unix-socket"])
        .arg(&sock)
        .arg("http://ovl/v1/health")
        .output()
        .unwrap();
    assert!(o.status.success(), "GET /v1/health: {}", stderr(&o));
    let rows: Value = serde_json::from_str(&stdout(&o)).unwrap();
    rows.as_array().unwrap().clone()
}

/// The clock offset of every cell of the matrix: (host, peer, ms or null).
fn skews(lab: &Lab) -> Vec<(String, String, Value)> {
    health_rows(lab, 0)
        .iter()
        .flat_map(|r| {
            let host = r["host"].as_str().unwrap().to_string();
            r["peers"]
                .as_object()
                .unwrap()
                .iter()
                .map(move |(p, c)| (host.clone(), p.clone(), c["skew_ms"].clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The positive control of the clock check: clocks cannot be set per network namespace, so
/// the lab's hosts share one, and every pair must be measured, within 100 ms of 0 (a round
/// trip inside one machine). `doctor` passes its clocks check with all three pairs.
fn clocks_measured_in_step(lab: &Lab, name: &str) {
    within(
        "a clock offset in every cell of the matrix",
        Duration::from_secs(20),
        || {
            let s = skews(lab);
            s.len() == 6 && s.iter().all(|(_, _, ms)| ms.is_i64())
        },
    );
    let s = skews(lab);
    for (host, peer, ms) in &s {
        assert!(
            ms.as_i64().unwrap().abs() < 100,
            "{host} measured {peer}'s clock {ms} ms off: {s:?}"
        );
    }
    eprintln!("{name}: clock offsets measured through the overlay: {s:?}");
    let (_, text) = doctor(lab, 0, false);
    assert!(
        text.contains("ok       clocks         3 host pairs measured, largest offset"),
        "{text}"
    );
}

/// Waits until `doctor` on host 0 exits 0 with every check passed (a restarted agent's
/// health row takes a round to appear).
fn wait_healthy(lab: &Lab, what: &str) {
    let all_ok = |text: &str| {
        [
            "hosts",
            "vxlan",
            "clocks",
            "mtu",
            "wireguard",
            "entries",
            "kv",
        ]
        .iter()
        .all(|c| text.contains(&format!("ok       {c}")))
    };
    within(what, Duration::from_secs(20), || {
        let (code, text) = doctor(lab, 0, false);
        code == 0 && all_ok(&text)
    });
    let (code, text) = doctor(lab, 0, false);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no problems found"), "{text}");
}

/// A ping of `size` bytes of payload with DF set.
fn ping_df(ns: &str, ip: &str, size: u32) -> bool {
    nsexec(
        ns,
        &[
            "ping",
            "-c1",
            "-W1",
            "-q",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            ip,
        ],
    )
    .status
    .success()
}

fn doctor_finds_one_fault_at_a_time(name: &str, datapath: DatapathSel) {
    let mut cfg = LabConfig::new(name, 3);
    cfg.datapath = datapath;
    let mut lab = lab_with(cfg);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    let (_c3, ip3) = attach(&lab, 2, "net1", "c3", &[]);
    within("c1 -> c2 and c3", Duration::from_secs(10), || {
        ping(&c1, &ip2) && ping(&c1, &ip3)
    });
    wait_healthy(&lab, "doctor 0 on a healthy lab");
    clocks_measured_in_step(&lab, name);
    output_to_a_closed_pipe_ends_quietly(&lab);
    graph_names_everything(&lab, name);
    // A full-size packet (1450 - 28 bytes of headers) crosses to h3.
    assert!(ping_df(&c1, &ip3, 1422), "full-size ping on a healthy lab");

    // Fault 1: h2's agent stops. While its lease runs down (4 s in the lab, renewed every
    // 1.3 s), doctor warns once less than a third is left; once it ran out, it is a problem.
    lab.signal_agent(1, Signal::SIGTERM).unwrap();
    let mut expiring = None;
    let t = within(
        "doctor to warn of h2's expiring lease",
        Duration::from_secs(10),
        || {
            let (_, json) = doctor(&lab, 0, true);
            expiring = findings(&json, "warning").into_iter().find(|w| {
                w["subject"] == "h2" && w["what"].as_str().unwrap().starts_with("lease expires in")
            });
            expiring.is_some()
        },
    );
    let w = expiring.unwrap();
    eprintln!("{name}: {t:?} after h2's agent stopped: {w}");
    assert!(
        w["hint"]
            .as_str()
            .unwrap()
            .contains("systemctl status overlay-agent"),
        "{w}"
    );
    within(
        "doctor to find h2's agent down",
        Duration::from_secs(15),
        || doctor(&lab, 0, false).0 == 1,
    );
    let (_, json) = doctor(&lab, 0, true);
    let p = problems(&json);
    assert_eq!(p.len(), 1, "{json}");
    assert_eq!(p[0]["subject"], "h2", "{json}");
    assert!(
        p[0]["what"].as_str().unwrap().contains("agent not alive"),
        "{json}"
    );
    assert!(
        p[0]["hint"]
            .as_str()
            .unwrap()
            .contains("start overlay-agent on h2"),
        "{json}"
    );
    let (_, text) = doctor(&lab, 0, false);
    eprintln!("{name}: doctor with h2's agent stopped:\n{text}");
    assert!(text.contains("PROBLEM  hosts"), "{text}");
    assert!(text.ends_with("1 problem(s) found\n"), "{text}");
    lab.start_agent(1).unwrap();
    lab.wait_agent(1).unwrap();
    wait_healthy(&lab, "doctor 0 with h2's agent back");

    // Fault 2: h3's underlay carries 1400 bytes while h1 and h2 carry 1500. Containers on h1
    // keep MTU 1450, and their full-size packets to h3 are dropped on the way.
    set_underlay_mtu(&mut lab, 2, 1400);
    within("doctor to find the MTU", Duration::from_secs(15), || {
        doctor(&lab, 0, false).0 == 1
    });
    let (_, json) = doctor(&lab, 0, true);
    eprintln!(
        "{name}: doctor with h3's underlay at 1400:\n{}",
        doctor(&lab, 0, false).1
    );
    let p = problems(&json);
    assert!(!p.is_empty(), "{json}");
    assert!(p.iter().all(|f| f["subject"] == "net1"), "{json}");
    let on_h1 = p
        .iter()
        .find(|f| f["what"].as_str().unwrap().contains("on h1 use MTU 1450"))
        .unwrap_or_else(|| panic!("h1's MTU named: {json}"));
    assert!(
        on_h1["what"]
            .as_str()
            .unwrap()
            .contains("path to h3 carries 1350"),
        "{json}"
    );
    assert!(
        on_h1["hint"].as_str().unwrap().contains("--mtu 1350"),
        "{json}"
    );
    // What doctor says is what the datapath does: full-size packets to h3 are lost, packets
    // that fit the path are not.
    assert!(
        !ping_df(&c1, &ip3, 1422),
        "a 1450-byte packet crossed to h3"
    );
    assert!(ping_df(&c1, &ip3, 1322), "a 1350-byte packet to h3");

    set_underlay_mtu(&mut lab, 2, 1500);
    wait_healthy(&lab, "doctor 0 with h3's MTU back");
    within("full-size ping to h3 again", Duration::from_secs(5), || {
        ping_df(&c1, &ip3, 1422)
    });
}

#[test]
fn doctor_kernel() {
    doctor_finds_one_fault_at_a_time("t20dk", DatapathSel::Kernel);
}

#[test]
fn doctor_ebpf() {
    doctor_finds_one_fault_at_a_time("t20de", DatapathSel::Ebpf);
}

/// `overlayctl doctor | head -0`: the reader is gone before the first line; overlayctl ends
/// by SIGPIPE as other tools do, without a panic message.
fn output_to_a_closed_pipe_ends_quietly(lab: &Lab) {
    use std::os::unix::process::ExitStatusExt;
    let mut c = xtask::lab::ctl_cmd(&lab.state, 0, &["doctor"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(c.stdout.take());
    let o = c.wait_with_output().unwrap();
    assert_eq!(
        o.status.signal(),
        Some(nix::libc::SIGPIPE),
        "{:?}: {}",
        o.status,
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

/// `graph --format svg` is well-formed XML (parsed by Python's) naming every host, network
/// and endpoint; `graph` (DOT) has a cluster per host.
fn graph_names_everything(lab: &Lab, name: &str) {
    let o = lab.ctl(0, &["graph", "--format", "svg"]).unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = stdout(&o);
    let path = std::env::temp_dir().join(format!("{name}-graph.svg"));
    std::fs::write(&path, &svg).unwrap();
    let parsed = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); \
             print(r.tag); print('\\n'.join(t.text or '' for t in r.iter('{http://www.w3.org/2000/svg}text')))",
        ])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        parsed.status.success(),
        "not well-formed: {}",
        stderr(&parsed)
    );
    let texts = stdout(&parsed);
    assert!(
        texts.starts_with("{http://www.w3.org/2000/svg}svg\n"),
        "{texts}"
    );
    let lines: Vec<&str> = texts.lines().collect();
    for want in ["h1", "h2", "h3", "net1"] {
        assert!(lines.contains(&want), "{want} in {lines:?}");
    }
    for c in ["c1 ", "c2 ", "c3 "] {
        assert!(lines.iter().any(|l| l.starts_with(c)), "{c} in {lines:?}");
    }
    let dot = stdout(&lab.ctl(0, &["graph"]).unwrap());
    for h in ["h1", "h2", "h3"] {
        assert!(
            dot.contains(&format!("subgraph \"cluster_host_{h}\"")),
            "{dot}"
        );
    }
}

/// Subjects of the problems `doctor` on host 0 reports.
fn problem_subjects(lab: &Lab) -> Vec<String> {
    problems(&doctor(lab, 0, true).1)
        .iter()
        .map(|p| p["subject"].as_str().unwrap().to_string())
        .collect()
}

/// The health matrix: with a firewall on the wire dropping VXLAN to h3, `doctor` names the
/// pairs h1-h3 and h2-h3 (not h1-h2), as the containers' own traffic shows; with the rule
/// gone, exit 0 again.
fn matrix_finds_blocked_vxlan(name: &str, datapath: DatapathSel) {
    let mut cfg = LabConfig::new(name, 3);
    cfg.datapath = datapath;
    let lab = lab_with(cfg);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    let (_c3, ip3) = attach(&lab, 2, "net1", "c3", &[]);
    within("c1 -> c2 and c3", Duration::from_secs(10), || {
        ping(&c1, &ip2) && ping(&c1, &ip3)
    });
    let t = within(
        "every host's row with every pair answering",
        Duration::from_secs(20),
        || {
            let (code, json) = doctor(&lab, 0, true);
            code == 0 && json.contains("6 of 6 host pairs")
        },
    );
    eprintln!("{name}: matrix complete {t:?} after the containers met");

    let h3 = lab.state.hosts[2].addr.clone();
    nft_on_wire(&lab, &["add", "table", "bridge", "t20wire"]);
    nft_on_wire(
        &lab,
        &[
            "add",
            "chain",
            "bridge",
            "t20wire",
            "wire",
            "{ type filter hook forward priority 0; policy accept; }",
        ],
    );
    nft_on_wire(
        &lab,
        &[
            "add", "rule", "bridge", "t20wire", "wire", "ip", "daddr", &h3, "udp", "dport", "4789",
            "drop",
        ],
    );
    let t = within(
        "doctor to name the pairs with h3",
        Duration::from_secs(20),
        || problem_subjects(&lab) == ["h1 <-> h3", "h2 <-> h3"],
    );
    eprintln!(
        "{name}: VXLAN to h3 dropped on the wire; doctor named it after {t:?}:\n{}",
        doctor(&lab, 0, false).1
    );
    // The picture says the same: h1-h3 down, h1-h2 fine.
    let dot = stdout(&lab.ctl(0, &["graph"]).unwrap());
    let line = |a: &str, b: &str| {
        dot.lines()
            .find(|l| l.contains(&format!("\"host:{a}\" -- \"host:{b}\"")))
            .unwrap_or_else(|| panic!("{a} -- {b} in {dot}"))
            .to_string()
    };
    assert!(line("h1", "h3").contains("vxlan down"), "{dot}");
    assert!(line("h1", "h2").contains("vxlan ok"), "{dot}");
    // What the matrix says is what containers see.
    assert!(!ping(&c1, &ip3), "c1 reached c3 with VXLAN to h3 dropped");
    assert!(ping(&c1, &ip2), "c1 -> c2 (h1 <-> h2 is fine)");

    nft_on_wire(&lab, &["delete", "table", "bridge", "t20wire"]);
    wait_healthy(&lab, "doctor 0 with the wire open again");
    within("c1 -> c3 again", Duration::from_secs(5), || ping(&c1, &ip3));
}

#[test]
fn matrix_kernel() {
    matrix_finds_blocked_vxlan("t20mk", DatapathSel::Kernel);
}

#[test]
fn matrix_ebpf() {
    matrix_finds_blocked_vxlan("t20me", DatapathSel::Ebpf);
}
