//! Issue 16 (2, 3): VXLAN is admitted only from the VTEPs of registered hosts, and nothing
//! from a container reaches a VXLAN port, on both datapaths. The attacker's frames are real
//! VXLAN made by a kernel vxlan device: one in a namespace on the underlay that is not a
//! registered host, one inside a container. What they would do (an ARP request that plants a
//! neighbour entry in a container of the target network) is shown first with the rule taken
//! out by hand (the positive control), then refused with the rule back in place. Needs root;
//! never skips.

use std::{process::Command, time::Duration};

use ovl_tests::*;

fn ip_ns(ns: &str, args: &str) {
    let o = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(o.status.success(), "ip -n {ns} {args}: {}", stderr(&o));
}

fn nft_in(lab: &Lab, i: usize, args: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &lab.host(i).ns])
        .arg("nft")
        .args(args.split_whitespace())
        .output()
        .unwrap()
        .status
        .success()
}

/// Whether `ns` has a neighbour entry for `ip` (planted by an ARP request it received).
fn has_neigh(ns: &str, ip: &str) -> bool {
    !stdout(&nsexec(ns, &["ip", "neigh", "show", ip]))
        .trim()
        .is_empty()
}

/// VXLAN packets host `i` refused (`overlayctl datapath`).
fn refused(lab: &Lab, i: usize) -> u64 {
    ctl(lab, i, &["datapath"])["vxlan_admission"]["refused"]
        .as_u64()
        .expect("a vxlan_admission.refused count")
}

/// The attacker's try: `from` pings `target` (ARP over its vxlan device); true when `victim`
/// saw it (a neighbour entry for `attacker_ip`).
fn planted(from: &str, target: &str, victim: &str, attacker_ip: &str) -> bool {
    nsexec(victim, &["ip", "neigh", "flush", "to", attacker_ip]);
    nsexec(from, &["ping", "-c2", "-i0.3", "-W1", target]);
    has_neigh(victim, attacker_ip)
}

fn admission(name: &str, datapath: DatapathSel) {
    let mut cfg = LabConfig::new(name, 2);
    cfg.datapath = datapath;
    cfg.agent_args = vec!["--metrics-addr".into(), "0.0.0.0:9464".into()];
    let lab = lab_with(cfg);
    ctl(
        &lab,
        0,
        &[
            "network",
            "create",
            "net1",
            "--subnet",
            "10.40.0.0/24",
            "--vni",
            "5001",
        ],
    );
    ctl(
        &lab,
        0,
        &[
            "network",
            "create",
            "net2",
            "--subnet",
            "10.41.0.0/24",
            "--vni",
            "5002",
        ],
    );
    let (c1, ip1) = attach(&lab, 0, "net1", "c1", &[]);
    let (c2, _) = attach(&lab, 1, "net1", "c2", &[]);
    let (d2, ipd2) = attach(&lab, 1, "net2", "d2", &[]);
    within(
        "c2 reaches c1 (registered hosts admitted)",
        Duration::from_secs(10),
        || ping(&c2, &ip1),
    );

    // From the underlay: a namespace on the underlay bridge that is no registered host.
    let ul = format!("{}-ul", lab.state.name);
    let rogue = lab.add_container("rogue").unwrap();
    ip_ns(
        &ul,
        &format!("link add rogue0 type veth peer name eth0 netns {rogue}"),
    );
    ip_ns(&ul, "link set rogue0 master br0 up");
    ip_ns(&rogue, "addr add 198.18.0.99/24 dev eth0");
    ip_ns(&rogue, "link set eth0 up");
    ip_ns(
        &rogue,
        "link add vx type vxlan id 5001 remote 198.18.0.11 local 198.18.0.99 dstport 4789 nolearning noudpcsum",
    );
    ip_ns(&rogue, "addr add 10.40.0.99/24 dev vx");
    ip_ns(&rogue, "link set vx up");
    // Positive control: with the admission chain deleted by hand, the frames get in.
    within(
        "the rogue's ARP reaches c1 without the rule",
        Duration::from_secs(10),
        || {
            nft_in(&lab, 0, "delete chain inet overlay_agent vxlan_admission");
            planted(&rogue, &ip1, &c1, "10.40.0.99")
        },
    );
    within(
        "the agent restores its rule",
        Duration::from_secs(10),
        || nft_in(&lab, 0, "list chain inet overlay_agent vxlan_admission"),
    );
    let before = refused(&lab, 0);
    assert!(
        !planted(&rogue, &ip1, &c1, "10.40.0.99"),
        "{name}: VXLAN from an unregistered sender reached a container"
    );
    within(
        "h1 counts the refused frames",
        Duration::from_secs(10),
        || refused(&lab, 0) > before,
    );
    // Unicast to the container's MAC (guessable: it derives from the address), with no ARP:
    // on the eBPF path this is the frame its fast decapsulation would take.
    let mac1 = stdout(&nsexec(&c1, &["cat", "/sys/class/net/eth0/address"]))
        .trim()
        .to_string();
    ip_ns(
        &rogue,
        &format!("neigh replace {ip1} lladdr {mac1} dev vx nud permanent"),
    );
    let before = refused(&lab, 0);
    assert!(
        !planted(&rogue, &ip1, &c1, "10.40.0.99"),
        "{name}: unicast VXLAN from an unregistered sender reached a container"
    );
    within(
        "h1 counts the refused unicast",
        Duration::from_secs(10),
        || refused(&lab, 0) > before,
    );
    // Registered hosts still get through.
    assert!(ping(&c2, &ip1));

    // From inside a container: VXLAN with another network's VNI, out of its gateway
    // interface (masqueraded as its host, a registered VTEP) to the other host.
    ip_ns(
        &c1,
        "link add vxe type vxlan id 5002 remote 198.18.0.12 dstport 4789 nolearning",
    );
    ip_ns(&c1, "addr add 10.41.0.99/24 dev vxe");
    ip_ns(&c1, "link set vxe up");
    within(
        "c1's ARP reaches d2 without the rule",
        Duration::from_secs(10),
        || {
            nft_in(&lab, 0, "delete chain inet overlay_agent vxlan_containment");
            planted(&c1, &ipd2, &d2, "10.41.0.99")
        },
    );
    within(
        "the agent restores its rule",
        Duration::from_secs(10),
        || nft_in(&lab, 0, "list chain inet overlay_agent vxlan_containment"),
    );
    nsexec(&c1, &["ip", "neigh", "flush", "dev", "vxe"]);
    let before = refused(&lab, 0);
    assert!(
        !planted(&c1, &ipd2, &d2, "10.41.0.99"),
        "{name}: a container's VXLAN entered another network"
    );
    within(
        "h1 counts the contained frames",
        Duration::from_secs(10),
        || refused(&lab, 0) > before,
    );
    // The agent's metrics port on its host: closed to containers (positive control first,
    // with the chain deleted by hand).
    let route = stdout(&nsexec(&c1, &["ip", "-4", "route", "show", "default"]));
    let gw = route
        .split_whitespace()
        .nth(2)
        .expect("a default route")
        .to_string();
    let url = format!("http://{gw}:9464/metrics");
    let fetch = || {
        nsexec(&c1, &["curl", "-sf", "-m", "2", &url])
            .status
            .success()
    };
    within(
        "c1 reaches the metrics without the rule",
        Duration::from_secs(10),
        || {
            nft_in(&lab, 0, "delete chain inet overlay_agent agent_ports");
            fetch()
        },
    );
    within(
        "the agent restores its rule",
        Duration::from_secs(10),
        || nft_in(&lab, 0, "list chain inet overlay_agent agent_ports"),
    );
    assert!(
        !fetch(),
        "{name}: a container reached the agent's metrics port"
    );

    // To its own host: refused by admission (its source is no VTEP).
    ip_ns(
        &c1,
        "link add vxo type vxlan id 5001 remote 198.18.0.11 dstport 4789 nolearning",
    );
    ip_ns(&c1, "addr add 10.40.0.98/24 dev vxo");
    ip_ns(&c1, "link set vxo up");
    let (c3, ip3) = attach(&lab, 0, "net1", "c3", &[]);
    assert!(!planted(&c1, &ip3, &c3, "10.40.0.98"));
}

#[test]
fn vxlan_admission_kernel() {
    admission("t16ak", DatapathSel::Kernel);
}

#[test]
fn vxlan_admission_ebpf() {
    admission("t16ae", DatapathSel::Ebpf);
}
