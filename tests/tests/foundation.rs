//! Issue 2: hosts register and see each other, liveness follows leases, the agent survives
//! KV outages, and bad input gets one-line errors. Needs root; never skips.

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use nix::sys::signal::Signal;
use ovl_tests::*;

fn all_alive(lab: &Lab, n: usize) -> bool {
    (0..n).all(|i| {
        let seen = alive_seen_by(lab, i);
        seen.len() == n && seen.iter().all(|(_, a)| *a)
    })
}

fn hosts_see_each_other(name: &str, kv: KvKind) {
    let mut cfg = LabConfig::new(name, 3);
    cfg.kv = kv;
    cfg.agent_args
        .extend(["--metrics-addr".to_string(), "127.0.0.1:9464".to_string()]);
    let lab = lab_with(cfg);
    // Agents are up (the lab waited for their sockets); registration must follow quickly.
    let took = within(
        "every host to see the other two",
        Duration::from_secs(2),
        || all_alive(&lab, 3),
    );
    eprintln!("{name}: all hosts saw each other {took:?} after the agents answered");
    let hosts = ctl(&lab, 1, &["hosts"]);
    let h3 = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "h3")
        .unwrap();
    assert_eq!(h3["vtep"], "198.18.0.13");
    assert_eq!(h3["underlay_mtu"], 1500);
    // Status counts come from each agent's watched view, which follows the KV a moment later.
    within(
        "h3's view to count 3 alive hosts",
        Duration::from_secs(2),
        || ctl(&lab, 2, &["status"])["counts"]["hosts_alive"] == 3,
    );
    let st = ctl(&lab, 2, &["status"]);
    assert_eq!(st["host_id"], "h3");
    assert_eq!(st["kv"]["reachable"], true);
    // Prometheus metrics on --metrics-addr (h1's counts also follow its watched view).
    let metrics = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.host(0).ns, "bash", "-c"])
            .arg(concat!(
                "exec 3<>/dev/tcp/127.0.0.1/9464; ",
                "printf 'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3; ",
                "timeout 3 cat <&3"
            ))
            .output()
            .unwrap();
        stdout(&out)
    };
    within(
        "metrics to count 3 alive hosts",
        Duration::from_secs(3),
        || metrics().contains("overlay_hosts_alive 3"),
    );
    let text = metrics();
    assert!(text.contains("overlay_hosts_alive 3"), "{text}");
    assert!(text.contains("overlay_kv_reachable 1"), "{text}");
    assert!(
        text.contains("# TYPE overlay_reconcile_passes_total counter"),
        "{text}"
    );
}

#[test]
fn three_hosts_see_each_other_embedded() {
    hosts_see_each_other("t2emb", KvKind::Embedded);
}

#[test]
fn three_hosts_see_each_other_etcd() {
    hosts_see_each_other("t2etcd", KvKind::Etcd);
}

fn kill_and_return(name: &str, kv: KvKind) {
    let mut lab = lab(name, 3, kv);
    within("all alive", Duration::from_secs(5), || all_alive(&lab, 3));
    let ttl = Duration::from_secs(4); // LabConfig's --lease-ttl
    lab.signal_agent(1, Signal::SIGKILL).unwrap();
    let took = within(
        "h2 shown dead on h1 and h3",
        ttl + Duration::from_secs(3),
        || {
            [0, 2].iter().all(|&i| {
                alive_seen_by(&lab, i)
                    .iter()
                    .any(|(id, a)| id == "h2" && !a)
            })
        },
    );
    eprintln!("{name}: h2 shown dead {took:?} after kill -9 (lease TTL {ttl:?})");
    // Its record is kept while it is dead.
    let hosts = ctl(&lab, 0, &["hosts"]);
    assert!(
        hosts
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == "h2" && h["vtep"] == "198.18.0.12")
    );
    lab.start_agent(1).unwrap();
    lab.wait_agent(1).unwrap();
    within("h2 alive again everywhere", Duration::from_secs(5), || {
        all_alive(&lab, 3)
    });
    assert_eq!(
        ctl(&lab, 1, &["hosts"]).as_array().unwrap().len(),
        3,
        "no duplicate host record"
    );
}

#[test]
fn killed_agent_is_dead_then_alive_embedded() {
    kill_and_return("t2kemb", KvKind::Embedded);
}

#[test]
fn killed_agent_is_dead_then_alive_etcd() {
    kill_and_return("t2ketcd", KvKind::Etcd);
}

#[test]
fn etcd_outage_is_survived() {
    let mut lab = lab("t2out", 3, KvKind::Etcd);
    within("all alive", Duration::from_secs(5), || all_alive(&lab, 3));
    let pids: Vec<u32> = lab.state.hosts.iter().map(|h| h.pid.unwrap()).collect();
    lab.stop_etcd().unwrap();
    within(
        "every agent to report the KV unreachable",
        Duration::from_secs(10),
        || (0..3).all(|i| ctl(&lab, i, &["status"])["kv"]["reachable"] == false),
    );
    // An operation that needs the KV fails with a clear message instead of hanging.
    let out = lab.ctl(0, &["network", "create", "during"]).unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
    // Cached reads still answer.
    assert!(lab.ctl(0, &["hosts"]).unwrap().status.success());
    std::thread::sleep(Duration::from_secs(20));
    for (i, pid) in pids.iter().enumerate() {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "agent {} died during the outage",
            i + 1
        );
    }
    lab.start_etcd().unwrap();
    let took = within(
        "KV reachable and all hosts alive again",
        Duration::from_secs(20),
        || {
            (0..3).all(|i| ctl(&lab, i, &["status"])["kv"]["reachable"] == true)
                && all_alive(&lab, 3)
        },
    );
    eprintln!("t2out: recovered {took:?} after etcd came back");
    // Watches resumed: a write on h1 reaches the views of h2 and h3 (status counts come from
    // each agent's watched view, not from a fresh read).
    ctl(&lab, 0, &["network", "create", "after"]);
    within(
        "h2 and h3 see the new network through their watches",
        Duration::from_secs(5),
        || (1..3).all(|i| ctl(&lab, i, &["status"])["counts"]["networks"] == 1),
    );
    let after: Vec<u32> = lab.state.hosts.iter().map(|h| h.pid.unwrap()).collect();
    assert_eq!(pids, after, "no agent was restarted");
}

#[test]
fn bad_input_and_lifecycle() {
    let mut lab = lab("t2bad", 1, KvKind::Embedded);
    let agent = lab.state.bin_dir.join("overlay-agent");
    let ns = lab.host(0).ns.clone();
    let run = |args: &[&str]| {
        xtask::sh::in_ns(&ns, agent.to_str().unwrap())
            .args(args)
            .output()
            .unwrap()
    };
    let base = [
        "--host-id",
        "hx",
        "--advertise-addr",
        "198.18.0.11",
        "--run-dir",
        "/run/overlay-lab/t2bad/x",
    ];
    for (extra, needle) in [
        (vec!["--kv", "consul://1.2.3.4:8500"], "invalid KV URL"),
        (vec!["--kv", "etcd://"], "invalid KV URL"),
        (vec!["--bogus"], "--bogus"),
        (vec!["--gw-subnet", "10.0.0.0/33"], "--gw-subnet"),
        (vec!["--datapath", "warp"], "warp"),
    ] {
        let mut a = base.to_vec();
        a.extend(extra.iter());
        let out = run(&a);
        let err = stderr(&out);
        assert!(!out.status.success(), "{a:?} should fail");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one-line reason for {a:?}: {err}"
        );
        assert!(err.contains(needle), "{a:?}: {err}");
    }
    // The advertise address must exist on the host.
    let out = run(&[
        "--host-id",
        "hx",
        "--advertise-addr",
        "198.18.0.99",
        "--run-dir",
        "/run/overlay-lab/t2bad/x",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("198.18.0.99"), "{}", stderr(&out));

    // overlayctl names the socket it tried.
    let ctl_bin = lab.state.bin_dir.join("overlayctl");
    let out = Command::new(&ctl_bin)
        .args(["--socket", "/run/overlay-lab/t2bad/missing.sock", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/run/overlay-lab/t2bad/missing.sock"),
        "{}",
        stderr(&out)
    );

    // The control socket is private to its owner.
    let sock = lab.host(0).run_dir.join("overlay.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Unreachable etcd at start: the agent keeps running and says so in status.
    let dir = "/run/overlay-lab/t2bad/unreach";
    let mut child = xtask::sh::in_ns(&ns, agent.to_str().unwrap())
        .args([
            "--host-id",
            "hu",
            "--advertise-addr",
            "198.18.0.11",
            "--kv",
            "etcd://198.18.0.250:2379",
        ])
        .args(["--run-dir", dir, "--state-dir", dir])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock2 = format!("{dir}/overlay.sock");
    let status = || -> Option<serde_json::Value> {
        let out = Command::new(&ctl_bin)
            .args(["--json", "--socket", &sock2, "status"])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    within(
        "status to report etcd unreachable",
        Duration::from_secs(15),
        || status().is_some_and(|s| s["kv"]["reachable"] == false && s["kv"]["error"].is_string()),
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "agent must keep running without etcd"
    );
    // SIGTERM: clean exit, socket removed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let code = child.wait().unwrap();
    assert!(code.success(), "clean exit on SIGTERM: {code}");
    assert!(
        !std::path::Path::new(&sock2).exists(),
        "socket removed on exit"
    );

    // The same for the lab's own agent: SIGTERM exits 0 and removes its socket.
    lab.signal_agent(0, Signal::SIGTERM).unwrap();
    assert!(!sock.exists());
}
