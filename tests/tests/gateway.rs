//! Issue 4: the gateway bridge (NAT out, published ports in, no container-to-container
//! traffic across it), in the lab with its outside namespace. Needs root; never skips.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use ovl_tests::*;

/// A TCP server in namespace `ns` on `port` that answers each connection with the peer's
/// address and stays up.
fn echo_peer_server(ns: &str, port: u16) -> Child {
    nsspawn(
        ns,
        &[
            "socat",
            &format!("TCP-LISTEN:{port},reuseaddr,fork"),
            "SYSTEM:echo $SOCAT_PEERADDR",
        ],
    )
}

/// Connects from namespace `ns` to `addr:port`; returns what the server said, if anything.
fn fetch(ns: &str, addr: &str, port: u16) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "timeout",
            "3",
            "socat",
            "-T2",
            "-",
            &format!("TCP:{addr}:{port},connect-timeout=2"),
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = stdout(&out).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn gw_addr(ns: &str, ifname: &str) -> String {
    let out = nsexec(ns, &["ip", "-j", "-4", "addr", "show", ifname]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["addr_info"][0]["local"].as_str().unwrap().to_string()
}

#[test]
fn gateway_nat_isolation_publish_and_recovery() {
    let lab = lab("t4gw", 3, KvKind::Embedded);
    let outside = format!("{}-out", lab.state.name);
    let mut servers = Killed(vec![echo_peer_server(&outside, 9000)]);
    // A route to 172.18.0.0/16 on host 2 before its gateway bridge exists.
    xtask::sh::ip(&[
        "-n",
        &lab.host(1).ns,
        "route",
        "add",
        "172.18.0.0/16",
        "via",
        "198.18.0.1",
    ])
    .unwrap();

    ctl(&lab, 0, &["network", "create", "net1"]);
    ctl(&lab, 0, &["network", "create", "intnet", "--internal"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (c2, _) = attach(&lab, 0, "net1", "c2", &[]);
    let (c3, _) = attach(&lab, 0, "intnet", "c3", &[]);

    // Out through NAT: the server sees host 1's underlay address.
    let seen = fetch(&c1, xtask::lab::OUTSIDE_ADDR, 9000);
    assert_eq!(seen.as_deref(), Some("198.18.0.11"), "NAT to the outside");
    // The container got eth1 on the gateway bridge with the default route through it.
    let route = stdout(&nsexec(&c1, &["ip", "route", "show", "default"]));
    assert!(route.contains("dev eth1"), "{route}");

    // No container-to-container traffic across the gateway bridge.
    let gw2 = gw_addr(&c2, "eth1");
    servers.0.push(echo_peer_server(&c2, 7000));
    // Positive control: the server answers at that address (from its own namespace).
    within(
        "c2's server listens on its gateway address",
        Duration::from_secs(5),
        || fetch(&c2, &gw2, 7000).is_some(),
    );
    assert!(!ping(&c1, &gw2), "ping across the gateway bridge must fail");
    assert_eq!(
        fetch(&c1, &gw2, 7000),
        None,
        "TCP across the gateway bridge must fail"
    );

    // Internal network: no gateway interface, no way out.
    let links = stdout(&nsexec(&c3, &["ip", "-o", "link"]));
    assert!(!links.contains("eth1"), "{links}");
    assert_eq!(fetch(&c3, xtask::lab::OUTSIDE_ADDR, 9000), None);

    // Published port: reachable from host 2 and from outside, gone after detach.
    let (c4, _) = attach(&lab, 0, "net1", "c4", &["--publish", "8080:80"]);
    servers.0.push(echo_peer_server(&c4, 80));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        fetch(&lab.host(1).ns, "198.18.0.11", 8080).is_some(),
        "published port from host 2"
    );
    assert!(
        fetch(&outside, "198.18.0.11", 8080).is_some(),
        "published port from outside"
    );
    let st = ctl(&lab, 0, &["status"]);
    assert!(
        st["details"].to_string().contains("8080"),
        "status shows published ports: {st}"
    );
    let insp = ctl(&lab, 0, &["network", "inspect", "net1"]);
    assert!(
        insp["details"].to_string().contains("8080:80/tcp"),
        "{insp}"
    );

    // Publishing the same host port twice: refused, nothing half-created.
    let before = ctl(&lab, 0, &["endpoints"]);
    let ns5 = lab.add_container("c5").unwrap();
    let out = lab
        .ctl(
            0,
            &[
                "attach",
                "net1",
                "--name",
                "c5",
                "--netns",
                &format!("/run/netns/{ns5}"),
                "--publish",
                "8080:81",
            ],
        )
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("8080"), "{}", stderr(&out));
    assert_eq!(
        ctl(&lab, 0, &["endpoints"]),
        before,
        "refused attach left an endpoint"
    );
    let links = stdout(&nsexec(&ns5, &["ip", "-o", "link"]));
    assert_eq!(
        links.lines().count(),
        1,
        "refused attach left interfaces: {links}"
    );

    ctl(&lab, 0, &["detach", "net1", "--name", "c4"]);
    assert_eq!(
        fetch(&lab.host(1).ns, "198.18.0.11", 8080),
        None,
        "port still answers after detach"
    );

    // nft flush ruleset on host 1: the agent's rules are back, identical, within the resync
    // period (2 s here), and it says it repaired them; traffic through NAT works again.
    let ruleset = || {
        stdout(
            &xtask::sh::in_ns(&lab.host(0).ns, "nft")
                .args(["list", "ruleset"])
                .output()
                .unwrap(),
        )
    };
    let repairs = || {
        xtask::lab::tail(&lab.host(0).log, 10_000)
            .matches("firewall rules repaired")
            .count()
    };
    let (rules_before, repaired_before) = (ruleset(), repairs());
    assert!(rules_before.contains("masquerade"), "{rules_before}");
    assert!(
        xtask::sh::in_ns(&lab.host(0).ns, "nft")
            .args(["flush", "ruleset"])
            .status()
            .unwrap()
            .success()
    );
    let took = within("rules back after nft flush", Duration::from_secs(5), || {
        ruleset() == rules_before
    });
    within(
        "the agent to report the repair",
        Duration::from_secs(2),
        || repairs() > repaired_before,
    );
    eprintln!("t4gw: rules restored {took:?} after nft flush ruleset");
    // New connections recover a few seconds after the rules (kernel state settles later; the
    // rules themselves are back above).
    within(
        "NAT traffic after the repair",
        Duration::from_secs(25),
        || fetch(&c1, xtask::lab::OUTSIDE_ADDR, 9000).as_deref() == Some("198.18.0.11"),
    );

    // Host 2 picked a gateway subnet that avoids its 172.18.0.0/16 route.
    attach(&lab, 1, "net1", "d1", &[]);
    let st = ctl(&lab, 1, &["status"]);
    let gw = st["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d[0] == "gateway")
        .unwrap()[1]
        .to_string();
    assert!(
        !gw.contains(" 172.18."),
        "gateway subnet overlaps the 172.18.0.0/16 route: {gw}"
    );
    // And an overlay subnet that overlaps a host's gateway subnet is refused.
    let sub: String = gw.split(' ').nth(1).unwrap().to_string();
    within(
        "h1 to know h2's gateway subnet",
        Duration::from_secs(3),
        || {
            ctl(&lab, 0, &["hosts"])
                .to_string()
                .contains(&format!("\"gw_subnet\":\"{sub}\""))
        },
    );
    let out = lab
        .ctl(0, &["network", "create", "clash", "--subnet", &sub])
        .unwrap();
    assert!(
        !out.status.success() && stderr(&out).contains("gateway bridge"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn gw_subnet_overlapping_an_overlay_is_refused() {
    let lab = lab("t4bad", 1, KvKind::Embedded);
    ctl(
        &lab,
        0,
        &["network", "create", "net1", "--subnet", "10.40.0.0/24"],
    );
    let dir = format!("{}/other", lab.state.dir.display());
    let out = xtask::sh::in_ns(
        &lab.host(0).ns,
        lab.state.bin_dir.join("overlay-agent").to_str().unwrap(),
    )
    .args([
        "--host-id",
        "hz",
        "--advertise-addr",
        "198.18.0.11",
        "--kv",
        &lab.state.kv_url,
    ])
    .args([
        "--run-dir",
        &dir,
        "--state-dir",
        &dir,
        "--gw-subnet",
        "10.40.0.0/16",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("overlaps overlay network net1"), "{err}");
    // Nothing half-created: no gateway bridge on the host.
    let links = stdout(
        &xtask::sh::in_ns(&lab.host(0).ns, "ip")
            .args(["-o", "link"])
            .output()
            .unwrap(),
    );
    assert!(!links.contains("ovl_gwbridge"), "{links}");
}

#[test]
fn coexists_with_dockers_forward_policy() {
    let lab = lab("t4dock", 1, KvKind::Embedded);
    let h1 = lab.host(0).ns.clone();
    let ipt = |args: &[&str]| {
        let out = xtask::sh::in_ns(&h1, "iptables")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "iptables {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    // What dockerd does to a host: FORWARD policy DROP, jumping to DOCKER-USER first.
    ipt(&["-P", "FORWARD", "DROP"]);
    ipt(&["-N", "DOCKER-USER"]);
    ipt(&["-A", "DOCKER-USER", "-j", "RETURN"]);
    ipt(&["-I", "FORWARD", "-j", "DOCKER-USER"]);
    let outside = format!("{}-out", lab.state.name);
    let _server = Killed(vec![echo_peer_server(&outside, 9000)]);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    // The agent adds its exception (within the resync period) and traffic flows.
    let took = within(
        "NAT out through Docker's FORWARD policy",
        Duration::from_secs(8),
        || fetch(&c1, xtask::lab::OUTSIDE_ADDR, 9000).as_deref() == Some("198.18.0.11"),
    );
    eprintln!("t4dock: traffic allowed through Docker's FORWARD policy after {took:?}");
    let rules = ipt(&["-S", "DOCKER-USER"]);
    assert!(
        rules.contains("-i ovl_gwbridge ! -o ovl_gwbridge -j ACCEPT"),
        "{rules}"
    );
    assert_eq!(
        rules.matches("ovl_gwbridge").count(),
        3,
        "rules added once: {rules}"
    );
    // Docker's own rules are untouched.
    assert!(rules.contains("-A DOCKER-USER -j RETURN"), "{rules}");
    assert!(ipt(&["-S", "FORWARD"]).contains("-P FORWARD DROP"));
}
