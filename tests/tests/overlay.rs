//! Issue 3: the cross-host L2 overlay on the kernel datapath, in a 3-host lab.
//! Needs root; never skips.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::signal::Signal;
use ovl_tests::*;

fn unicast_broadcast_multicast(name: &str, kv: KvKind) {
    let lab = lab(name, 3, kv);
    let [(c1, ip1), (c2, ip2), (c3, ip3)] = three_containers_ping(&lab);

    // Broadcast: replies from both remote containers.
    allow_broadcast_ping(&c2);
    allow_broadcast_ping(&c3);
    let out = nsexec(
        &c1,
        &[
            "ping",
            "-b",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "10.10.0.255",
        ],
    );
    let text = stdout(&out);
    assert!(
        text.contains(&format!("from {ip2}")) && text.contains(&format!("from {ip3}")),
        "{text}"
    );

    // Multicast 239.1.1.1 from host 1 reaches subscribers on hosts 2 and 3.
    multicast_reaches(&c1, &ip1, &[&c2, &c3]);
}

#[test]
fn unicast_broadcast_multicast_embedded() {
    unicast_broadcast_multicast("t3emb", KvKind::Embedded);
}

#[test]
fn unicast_broadcast_multicast_etcd() {
    unicast_broadcast_multicast("t3etcd", KvKind::Etcd);
}

#[test]
fn networks_are_isolated() {
    let lab = lab("t3iso", 2, KvKind::Embedded);
    ctl(&lab, 0, &["network", "create", "neta"]);
    ctl(&lab, 0, &["network", "create", "netb"]);
    let (a1, _) = attach(&lab, 0, "neta", "a1", &[]);
    let (a2, ipa2) = attach(&lab, 1, "neta", "a2", &[]);
    let (b1, _) = attach(&lab, 0, "netb", "b1", &[]);
    let (b2, ipb2) = attach(&lab, 1, "netb", "b2", &[]);
    within("neta works", Duration::from_secs(5), || ping(&a1, &ipa2));
    within("netb works", Duration::from_secs(5), || ping(&b1, &ipb2));
    // Nothing from neta (broadcast, ARP, multicast) reaches netb's containers.
    assert_nothing_crosses(&a1, "10.10.0.0/24", &[&b1, &b2]);
    // And neta's peer did see the broadcasts (the test would pass vacuously otherwise).
    allow_broadcast_ping(&a2);
    let out = nsexec(
        &a1,
        &[
            "ping",
            "-b",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "10.10.0.255",
        ],
    );
    assert!(
        stdout(&out).contains(&format!("from {ipa2}")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn entries_follow_endpoints_and_hand_edits() {
    let lab = lab("t3det", 3, KvKind::Embedded);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    let (_c3, _) = attach(&lab, 2, "net1", "c3", &[]);
    within("c2 programmed on h1 and h3", Duration::from_secs(5), || {
        [0, 2]
            .iter()
            .all(|&i| programmed(&lab, i, "net1").iter().any(|l| l.contains(&ip2)))
    });
    ctl(&lab, 1, &["detach", "net1", "--name", "c2"]);
    let took = within(
        "c2's entries gone on h1 and h3",
        Duration::from_secs(1),
        || {
            [0, 2]
                .iter()
                .all(|&i| !programmed(&lab, i, "net1").iter().any(|l| l.contains(&ip2)))
        },
    );
    eprintln!("t3det: entries removed {took:?} after detach");
    // Host 2 has no endpoint left on net1: nothing for it there.
    within(
        "h2 to drop its sandbox for net1",
        Duration::from_secs(3),
        || !std::path::Path::new(&sandbox(&lab, 1, "net1")).exists(),
    );
    assert!(!ping(&c1, &ip2));

    // Hand edits on h1 are corrected within the resync period (2 s in the lab).
    let sb = sandbox(&lab, 0, "net1");
    let sh = |cmd: &str| {
        Command::new("nsenter")
            .arg(format!("--net={sb}"))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap()
    };
    let before = programmed(&lab, 0, "net1");
    let fdb = before
        .iter()
        .find(|l| l.starts_with("fdb 02:42"))
        .unwrap()
        .clone();
    let (mac, dst) = (
        fdb.split(' ').nth(1).unwrap().to_string(),
        fdb.split(' ').nth(3).unwrap().to_string(),
    );
    assert!(
        sh(&format!("bridge fdb del {mac} dev vxlan0 dst {dst}"))
            .status
            .success()
    );
    assert!(sh("ip neigh del 10.10.0.4 dev vxlan0").status.success());
    assert!(
        sh("bridge fdb append 02:42:0a:0a:00:63 dev vxlan0 dst 198.18.0.99")
            .status
            .success()
    );
    assert!(
        sh("ip neigh replace 10.10.0.99 lladdr 02:42:0a:0a:00:63 dev vxlan0 nud permanent")
            .status
            .success()
    );
    assert_ne!(programmed(&lab, 0, "net1"), before);
    let took = within("hand edits corrected", Duration::from_secs(5), || {
        programmed(&lab, 0, "net1") == before
    });
    eprintln!("t3det: hand edits corrected after {took:?}");
}

fn link_index(netns: &str, dev: &str) -> u64 {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-j", "link", "show", dev])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["ifindex"].as_u64().unwrap()
}

#[test]
fn kill9_keeps_traffic_and_restart_adopts() {
    let mut lab = lab("t3kill", 2, KvKind::Embedded);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    within("c1 -> c2", Duration::from_secs(5), || ping(&c1, &ip2));
    let sb = sandbox(&lab, 1, "net1");
    let before = (link_index(&sb, "vxlan0"), link_index(&sb, "br0"));
    let pinger = Command::new("ip")
        .args([
            "netns", "exec", &c1, "ping", "-c", "40", "-i", "0.1", "-W", "1", &ip2,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    lab.signal_agent(1, Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    lab.start_agent(1).unwrap();
    lab.wait_agent(1).unwrap();
    let out = pinger.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("40 packets transmitted, 40 received"),
        "ping lost replies: {text}"
    );
    // Adopted, not re-created.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (link_index(&sb, "vxlan0"), link_index(&sb, "br0")),
        before,
        "sandbox devices were re-created"
    );
    let log = std::fs::read_to_string(&lab.host(1).log).unwrap();
    let last_start = log.rfind("starting").unwrap();
    assert!(
        !log[last_start..].contains("datapath converged"),
        "restart changed the datapath:\n{}",
        &log[last_start..]
    );
    assert!(ping(&c1, &ip2));
}

#[test]
fn concurrent_attaches_get_unique_addresses() {
    let lab = lab("t3many", 3, KvKind::Embedded);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let per_host = 30;
    let mut names = Vec::new();
    for h in 0..3 {
        for k in 0..per_host {
            let name = format!("m{h}x{k}");
            lab.add_container(&name).unwrap();
            names.push((h, name));
        }
    }
    let results: Vec<(String, String)> = std::thread::scope(|s| {
        let lab = &lab;
        let handles: Vec<_> = names
            .iter()
            .map(|(h, name)| {
                s.spawn(move || {
                    let path = format!("/run/netns/{}-c-{name}", lab.state.name);
                    let v = ctl(
                        lab,
                        *h,
                        &["attach", "net1", "--name", name, "--netns", &path],
                    );
                    (
                        name.clone(),
                        v["endpoint"]["ip"].as_str().unwrap().to_string(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: BTreeSet<&String> = results.iter().map(|(_, ip)| ip).collect();
    assert_eq!(ips.len(), 90, "duplicate addresses handed out");
    let eps = ctl(&lab, 2, &["endpoints", "net1"]);
    assert_eq!(eps.as_array().unwrap().len(), 90);
    // Every endpoint answers: from a container on each host, ping all 90.
    let probe: Vec<(usize, String)> = (0..3).map(|h| (h, format!("probe{h}"))).collect();
    for (h, name) in &probe {
        let (ns, _) = attach(&lab, *h, "net1", name, &[]);
        for (target, ip) in &results {
            let ok = ping(&ns, ip) || ping(&ns, ip);
            assert!(ok, "{target} ({ip}) unreachable from host {}", h + 1);
        }
    }
}

#[test]
fn bad_input_changes_nothing() {
    let lab = lab("t3bad", 2, KvKind::Embedded);
    ctl(
        &lab,
        0,
        &[
            "network",
            "create",
            "net1",
            "--subnet",
            "10.30.0.0/24",
            "--vni",
            "7000",
        ],
    );
    attach(&lab, 0, "net1", "c1", &[]);
    let snapshot = |lab: &Lab| (ctl(lab, 0, &["network", "ls"]), ctl(lab, 0, &["endpoints"]));
    // The endpoint's datapath status comes with the pass after the attach: the state to
    // compare against is the one after it.
    within("c1's status recorded", Duration::from_secs(10), || {
        ctl(&lab, 0, &["endpoints"])[0]["status"]["state"] == "ok"
    });
    let before = snapshot(&lab);
    let ns2 = lab.add_container("c2").unwrap();
    let p2 = format!("/run/netns/{ns2}");
    let mut many_aliases: Vec<String> = ["attach", "net1", "--name", "c2", "--netns", &p2]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for i in 0..17 {
        many_aliases.extend(["--alias".to_string(), format!("a{i}")]);
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["network", "create", "net2", "--subnet", "10.30.0.128/25"],
            "overlaps",
        ),
        (
            vec!["network", "create", "net2", "--vni", "7000"],
            "VNI 7000 is in use",
        ),
        (vec!["network", "create", "net1"], "already exists"),
        (
            vec!["network", "create", "bad.name"],
            "invalid network name",
        ),
        (
            vec!["network", "create", "net2", "--subnet", "10.30.5.7/24"],
            "host bits",
        ),
        (
            vec![
                "attach",
                "net1",
                "--name",
                "c2",
                "--netns",
                &p2,
                "--ip",
                "10.31.0.5",
            ],
            "not a host address",
        ),
        (
            vec![
                "attach",
                "net1",
                "--name",
                "c2",
                "--netns",
                &p2,
                "--ip",
                "10.30.0.2",
            ],
            "already in use",
        ),
        (
            vec![
                "attach",
                "net1",
                "--name",
                "c2",
                "--netns",
                &p2,
                "--ip",
                "10.30.0.1",
            ],
            "gateway",
        ),
        (
            vec!["attach", "nope", "--name", "c2", "--netns", &p2],
            "network nope not found",
        ),
        (
            vec![
                "attach",
                "net1",
                "--name",
                "c2",
                "--netns",
                "/run/netns/does-not-exist",
            ],
            "not a network namespace",
        ),
        (
            vec!["attach", "net1", "--name", "c1", "--netns", &p2],
            "already used",
        ),
        (vec!["network", "rm", "net1"], "detach them first"),
        // Issue 16 (6): subnets out of reach of an overlay, ports of the agent, bounds.
        (
            vec!["network", "create", "net2", "--subnet", "127.0.0.0/24"],
            "loopback range",
        ),
        (
            vec!["network", "create", "net2", "--subnet", "169.254.0.0/24"],
            "link-local range",
        ),
        (
            vec!["network", "create", "net2", "--subnet", "224.1.0.0/24"],
            "multicast range",
        ),
        (
            vec!["network", "create", "net2", "--subnet", "198.18.0.0/25"],
            "underlay network 198.18.0.0/24",
        ),
        (
            vec![
                "attach",
                "net1",
                "--name",
                "c2",
                "--netns",
                &p2,
                "--publish",
                "4789:4789/udp",
            ],
            "VXLAN port",
        ),
        (
            many_aliases.iter().map(String::as_str).collect(),
            "17 aliases given",
        ),
    ];
    for (args, needle) in cases {
        let out = lab.ctl(1, &args).unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // The same name in another namespace on its own host: refused, the live interface stays
    // in its container.
    let out = lab
        .ctl(0, &["attach", "net1", "--name", "c1", "--netns", &p2])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already attached"),
        "{}",
        stderr(&out)
    );
    let c1_ns = format!("{}-c-c1", lab.state.name);
    assert!(
        nsexec(&c1_ns, &["ip", "link", "show", "eth0"])
            .status
            .success()
    );
    // The same namespace again: a no-op that answers success.
    let c1_path = format!("/run/netns/{c1_ns}");
    ctl(
        &lab,
        0,
        &["attach", "net1", "--name", "c1", "--netns", &c1_path],
    );
    assert_eq!(snapshot(&lab), before, "a refused request changed state");
    // Nothing leaked: the next automatic address is the one after c1's.
    let (_, ip) = attach(&lab, 1, "net1", "c2", &[]);
    assert_eq!(ip, "10.30.0.3");
    // No interface was left in the namespace by the refused attempts: exactly lo, the
    // overlay interface and the gateway-bridge interface of the successful attach.
    let out = nsexec(&ns2, &["ip", "-j", "link"]);
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["eth0", "eth1", "lo"]);
}

/// Issue 17 (4): an address reused on another host is reachable from every host at once,
/// even when its new container stays silent (IPv6 off, as Docker starts containers: no
/// DAD or router solicitation that would teach the bridge its port). Before, the new host's
/// bridge kept the MAC (derived from the address) where it had learned it, on the vxlan
/// port, and dropped every frame for it for up to 300 s.
#[test]
fn reused_address_is_reachable_from_every_host() {
    let lab = lab("t17mac", 3, KvKind::Embedded);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (_old, ip) = attach(&lab, 0, "net1", "old", &[]);
    let (c2, _) = attach(&lab, 1, "net1", "c2", &[]);
    let (c3, _) = attach(&lab, 2, "net1", "c3", &[]);
    // Host 2's bridge learns the address's MAC on its vxlan port.
    within("c2 and c3 reach old on h1", Duration::from_secs(10), || {
        ping(&c2, &ip) && ping(&c3, &ip)
    });
    ctl(&lab, 0, &["detach", "net1", "--name", "old"]);
    lab.add_container("new").unwrap_or_else(|e| panic!("{e:#}"));
    let new_ns = format!("{}-c-new", lab.state.name);
    for k in ["all", "default"] {
        let o = nsexec(
            &new_ns,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (_new, ip_new) = attach(&lab, 1, "net1", "new", &["--ip", &ip]);
    assert_eq!(ip_new, ip);
    // The agent pinned the MAC to the new container's port on host 2's bridge.
    let sb = sandbox(&lab, 1, "net1");
    let fdb = Command::new("nsenter")
        .arg(format!("--net={sb}"))
        .args(["bridge", "fdb", "show", "br", "br0"])
        .output()
        .unwrap();
    let mac = ctl(&lab, 1, &["endpoints", "net1"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["record"]["name"] == "new" || e["name"] == "new")
        .map(|e| {
            e["record"]["mac"]
                .as_str()
                .or(e["mac"].as_str())
                .unwrap()
                .to_string()
        })
        .unwrap();
    let line = stdout(&fdb)
        .lines()
        .find(|l| l.starts_with(&mac))
        .map(str::to_string);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("static") && l.contains("sticky") && !l.contains("vxlan")),
        "{mac} on h2's bridge: {line:?}\n{}",
        stdout(&fdb)
    );
    // Reached from a remote host and from its own host, within the convergence time.
    let took = within(
        "c3 (h3) and c2 (h2) reach new",
        Duration::from_secs(3),
        || ping(&c3, &ip) && ping(&c2, &ip),
    );
    eprintln!("t17mac: reused address reached from every host after {took:?}");
}
