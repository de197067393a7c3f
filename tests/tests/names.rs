//! Issue 5: names across hosts, in /etc/hosts and through the embedded DNS. Needs root.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use ovl_tests::*;

fn getent(ns: &str, name: &str) -> Option<String> {
    let out = nsexec(ns, &["getent", "hosts", name]);
    out.status.success().then(|| stdout(&out))
}

fn dig(ns: &str, args: &[&str]) -> String {
    let mut a = vec!["dig", "@127.0.0.11", "+time=5", "+tries=1"];
    a.extend_from_slice(args);
    stdout(&nsexec(ns, &a))
}

fn dig_short(ns: &str, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    dig(ns, &a).lines().map(str::to_string).collect()
}

struct Dnsmasq(Child);
impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hosts_file(lab: &Lab, c: &str) -> String {
    std::fs::read_to_string(format!("/etc/netns/{}-c-{c}/hosts", lab.state.name))
        .unwrap_or_default()
}

#[test]
fn names_across_hosts() {
    let lab = lab("t5names", 3, KvKind::Embedded);
    ctl(&lab, 0, &["network", "create", "net1"]);
    ctl(&lab, 0, &["network", "create", "net2"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &["--alias", "web"]);
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &["--alias", "web"]);
    let (c3, ip3) = attach(&lab, 2, "net1", "c3", &["--alias", "web"]);
    let (x, _) = attach(&lab, 0, "net2", "x", &[]);

    // /etc/hosts (getent) and DNS give c2's address on host 2.
    within("c2 in c1's hosts file", Duration::from_secs(2), || {
        getent(&c1, "c2").is_some_and(|l| l.contains(&ip2))
            && getent(&c1, "c2.net1").is_some_and(|l| l.contains(&ip2))
    });
    assert_eq!(dig_short(&c1, &["c2.net1"]), vec![ip2.clone()]);
    assert_eq!(dig_short(&c1, &["c2"]), vec![ip2.clone()]);
    assert_eq!(dig_short(&c1, &["-x", &ip2]), vec!["c2.net1.".to_string()]);
    assert!(
        dig(&c1, &["+tcp", "c3.net1"]).contains(&ip3),
        "DNS over TCP"
    );
    let hosts = hosts_file(&lab, "c1");
    assert!(
        hosts.contains("127.0.0.1\tlocalhost"),
        "user/default lines kept: {hosts}"
    );
    let resolv = std::fs::read_to_string(format!("/etc/netns/{c1}/resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    // As a user would: ping by name.
    assert!(
        nsexec(&c1, &["ping", "-c1", "-W1", "c3.net1"])
            .status
            .success()
    );

    // Scoped: a container not on net1 cannot resolve c2 or c2.net1.
    assert!(getent(&x, "c2").is_none() && getent(&x, "c2.net1").is_none());
    assert!(dig(&x, &["c2.net1"]).contains("status: NXDOMAIN"));
    assert!(dig_short(&x, &["c2"]).is_empty());

    // Three endpoints under alias `web`: all three, rotating order.
    let answers: Vec<Vec<String>> = (0..3).map(|_| dig_short(&c1, &["web"])).collect();
    for a in &answers {
        assert_eq!(a.len(), 3, "{a:?}");
    }
    assert!(
        answers.windows(2).all(|w| w[0] != w[1]),
        "order must rotate: {answers:?}"
    );
    let mut sorted = answers[0].clone();
    sorted.sort();
    let mut s1 = answers[1].clone();
    s1.sort();
    assert_eq!(sorted, s1);

    // Detach on host 2: gone from hosts files and DNS on every host within 1 s.
    ctl(&lab, 1, &["detach", "net1", "--name", "c2"]);
    let took = within("c2 gone everywhere", Duration::from_secs(1), || {
        !hosts_file(&lab, "c1").contains(&ip2)
            && !hosts_file(&lab, "c3").contains(&ip2)
            && dig_short(&c1, &["c2.net1"]).is_empty()
            && dig_short(&c3, &["c2.net1"]).is_empty()
    });
    eprintln!("t5names: c2 gone from hosts files and DNS on hosts 1 and 3 after {took:?}");
    assert!(dig(&c1, &["c2.net1"]).contains("status: NXDOMAIN"));
    assert_eq!(dig_short(&c1, &["web"]).len(), 2);
}

#[test]
fn names_outside_the_cluster_go_upstream() {
    let lab = lab("t5up", 1, KvKind::Embedded);
    let outside = format!("{}-out", lab.state.name);
    let hosts = lab.state.dir.join("upstream-hosts");
    std::fs::write(&hosts, "198.19.0.50 www.outside.test\n").unwrap();
    let dnsmasq = Dnsmasq(nsspawn(
        &outside,
        &[
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            &format!("--addn-hosts={}", hosts.display()),
            "--listen-address=198.19.0.2",
            "--bind-interfaces",
            "--port=53",
        ],
    ));
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    within(
        "dnsmasq answers through the agent",
        Duration::from_secs(5),
        || dig_short(&c1, &["www.outside.test"]) == vec!["198.19.0.50".to_string()],
    );
    let lk = ctl(
        &lab,
        0,
        &["dns", "lookup", "www.outside.test", "--from", "c1"],
    );
    assert_eq!(lk["source"], "upstream");
    assert!(lk["answers"].to_string().contains("198.19.0.50"), "{lk}");
    let lk = ctl(&lab, 0, &["dns", "lookup", "c1.net1", "--from", "c1"]);
    assert_eq!(lk["source"], "local");
    assert_eq!(lk["rcode"], "NOERROR");
    // Unknown name inside a network's domain: NXDOMAIN, answered locally.
    assert!(dig(&c1, &["nobody.net1"]).contains("status: NXDOMAIN"));
    // Upstream down: SERVFAIL within the forwarding timeout, not a hang.
    drop(dnsmasq);
    let start = Instant::now();
    let out = dig(&c1, &["other.outside.test"]);
    let took = start.elapsed();
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(took < Duration::from_secs(5), "answer took {took:?}");
    eprintln!("t5up: SERVFAIL after {took:?} with the upstream down");
}

#[test]
fn hosts_file_keeps_foreign_lines_and_is_repaired() {
    let lab = lab("t5file", 2, KvKind::Embedded);
    ctl(&lab, 0, &["network", "create", "net1"]);
    let (c1, _) = attach(&lab, 0, "net1", "c1", &[]);
    let path = format!("/etc/netns/{c1}/hosts");
    // A line the user adds survives every rewrite, and the file keeps its inode.
    let ino = |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = ino(&path);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("192.0.2.7\tmine.example\n");
    std::fs::write(&path, text).unwrap();
    let (_c2, ip2) = attach(&lab, 1, "net1", "c2", &[]);
    within("c2 in c1's hosts", Duration::from_secs(2), || {
        std::fs::read_to_string(&path).unwrap().contains(&ip2)
    });
    let now = std::fs::read_to_string(&path).unwrap();
    assert!(now.contains("192.0.2.7\tmine.example"), "{now}");
    assert_eq!(
        ino(&path),
        before,
        "hosts file replaced instead of rewritten in place"
    );
    // The managed block damaged by hand is repaired within the resync period.
    std::fs::write(&path, now.replace(&ip2, "10.99.99.99")).unwrap();
    within("block repaired", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&path).unwrap();
        t.contains(&ip2) && !t.contains("10.99.99.99") && t.contains("mine.example")
    });
}
