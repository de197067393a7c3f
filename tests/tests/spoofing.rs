//! Issue 16 (4): anti-spoofing on the kernel datapath. A container sends only with its own
//! MAC, IPv4 source and ARP sender; the rest is dropped and counted (`overlayctl datapath`:
//! `spoofed_dropped`). The eBPF datapath's own check is tested in tests/tests/ebpf.rs.
//! Needs root; never skips.

use std::time::Duration;

use ovl_tests::*;

fn spoofed(lab: &Lab, i: usize) -> u64 {
    ctl(lab, i, &["datapath"])["spoofed_dropped"]
        .as_u64()
        .expect("spoofed_dropped")
}

#[test]
fn kernel_datapath_drops_forged_sources() {
    let lab = lab("t16sp", 2, KvKind::Embedded);
    ctl(
        &lab,
        0,
        &["network", "create", "net1", "--subnet", "10.42.0.0/24"],
    );
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let (c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    // Positive control: its own address gets through.
    within("c1 reaches c2", Duration::from_secs(10), || ping(&c1, &ip2));

    // A forged source address (a second address on its interface).
    let before = spoofed(&lab, 0);
    let o = nsexec(&c1, &["ip", "addr", "add", "10.42.0.200/24", "dev", "eth0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = nsexec(
        &c1,
        &["ping", "-c2", "-i0.3", "-W1", "-I", "10.42.0.200", &ip2],
    );
    assert!(
        !o.status.success(),
        "a forged source got an answer: {}",
        stdout(&o)
    );
    assert!(
        stdout(&nsexec(&c2, &["ip", "neigh", "show", "10.42.0.200"]))
            .trim()
            .is_empty(),
        "c2 learned the forged address"
    );
    within(
        "h1 counts the forged frames",
        Duration::from_secs(5),
        || spoofed(&lab, 0) > before,
    );
    // Its own address still works next to it.
    assert!(ping(&c1, &ip2));

    // A forged MAC: every frame dropped until the agent gives the interface its MAC back.
    let before = spoofed(&lab, 0);
    let o = nsexec(
        &c1,
        &["ip", "link", "set", "eth0", "address", "02:42:0a:2a:00:99"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    nsexec(&c1, &["ip", "neigh", "flush", "dev", "eth0"]);
    nsexec(&c1, &["ping", "-c1", "-W1", &ip2]);
    assert!(spoofed(&lab, 0) > before, "the forged MAC was not dropped");
    within(
        "MAC restored, c1 reaches c2 again",
        Duration::from_secs(10),
        || ping(&c1, &ip2),
    );

    // The table is owned: removed by hand, it comes back within a resync.
    let sb = sandbox(&lab, 0, "net1");
    let o = std::process::Command::new("nsenter")
        .arg(format!("--net={sb}"))
        .args(["nft", "delete", "table", "bridge", "ovl_guard"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    within("guard restored", Duration::from_secs(10), || {
        std::process::Command::new("nsenter")
            .arg(format!("--net={sb}"))
            .args(["nft", "list", "table", "bridge", "ovl_guard"])
            .output()
            .unwrap()
            .status
            .success()
    });
}
