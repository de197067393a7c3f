//! Privileged lab tests: namespace "hosts" on a bridged underlay (198.18.0.0/24), containers
//! as namespaces behind veth pairs, real traffic. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use ovl_dp_ebpf::{EbpfDatapath, EndpointInfo};
use ovl_model::MacAddr;

const VNI: u32 = 100;
const MTU: u32 = 1450;

struct Container {
    ns: Netns,
    host_if: String,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

struct Host {
    ns: Netns,
    pins: Option<PinDir>,
    dp: Option<EbpfDatapath>,
    vtep: Ipv4Addr,
}

impl Host {
    fn dp(&mut self) -> &mut EbpfDatapath {
        self.dp.as_mut().expect("ebpf host")
    }

    fn load(&mut self) {
        let pin = self.pins.as_ref().unwrap().0.clone();
        let vtep = self.vtep;
        let dp = self
            .ns
            .run(move || EbpfDatapath::load(&pin, "ovl_vx0", vtep, MTU))
            .expect("load");
        self.dp = Some(dp);
    }

    fn attach(&mut self, c: &Container) {
        let ifindex = self.ns.ifindex(&c.host_if);
        let info = EndpointInfo {
            vni: VNI,
            mac: MacAddr(c.mac),
            ip: c.ip,
        };
        let dp = self.dp.as_mut().unwrap();
        self.ns
            .run(|| dp.attach_endpoint(ifindex, info))
            .expect("attach");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take()
            && let Err(e) = self.ns.run(|| dp.teardown())
        {
            eprintln!("teardown {}: {e}", self.ns.0);
        }
    }
}

/// The underlay: a bridge in its own namespace, one veth per host.
struct Lab {
    prefix: String,
    _underlay: Netns,
}

impl Lab {
    fn new(prefix: &str) -> Self {
        require_root();
        let ul = Netns::new(&format!("ebt-{prefix}-ul"));
        ul.sh("ip link add br0 type bridge");
        ul.sh("ip link set br0 up");
        Lab {
            prefix: prefix.to_string(),
            _underlay: ul,
        }
    }

    fn host(&self, n: u8, ebpf: bool) -> Host {
        let ns = Netns::new(&format!("ebt-{}-h{n}", self.prefix));
        let ul = format!("ebt-{}-ul", self.prefix);
        sh(&format!(
            "ip -n {ul} link add ul{n} type veth peer name ul0 netns {}",
            ns.0
        ));
        sh(&format!("ip -n {ul} link set ul{n} master br0 up"));
        ns.sh(&format!("ip addr add 198.18.0.{}/24 dev ul0", 10 + n));
        ns.sh("ip link set ul0 up");
        let vtep = Ipv4Addr::new(198, 18, 0, 10 + n);
        let mut h = Host {
            pins: ebpf.then(|| PinDir::new(&format!("ebt-{}-h{n}", self.prefix))),
            ns,
            dp: None,
            vtep,
        };
        if ebpf {
            h.load();
        }
        h
    }

    fn container(&self, host: &Host, name: &str, last: u8) -> Container {
        let ns = Netns::new(&format!("ebt-{}-{name}", self.prefix));
        let host_if = format!("lxc{name}");
        let mac = [0x02, 0x42, 0, 0, 0, last];
        let macs = mac_str(&mac);
        host.ns.sh(&format!(
            "ip link add {host_if} mtu {MTU} type veth peer name eth0 mtu {MTU} address {macs} netns {}",
            ns.0
        ));
        host.ns.sh(&format!("ip link set {host_if} up"));
        ns.sh(&format!("ip addr add 10.77.0.{last}/24 dev eth0"));
        ns.sh("ip link set eth0 up");
        Container {
            ns,
            host_if,
            mac,
            ip: Ipv4Addr::new(10, 77, 0, last),
        }
    }
}

fn ping(from: &Container, to: Ipv4Addr) -> (bool, String) {
    from.ns.try_sh(&format!("ping -c 3 -i 0.2 -W 2 {to}"))
}

fn assert_ping(from: &Container, to: Ipv4Addr) {
    let (ok, out) = ping(from, to);
    assert!(ok, "ping {} -> {to} failed:\n{out}", from.ns.0);
}

/// Programs every remote container on `host` and the flood list of the VNI.
fn program_remotes(host: &mut Host, remotes: &[(&Container, Ipv4Addr)]) {
    let mut vteps = Vec::new();
    for (c, vtep) in remotes {
        host.dp()
            .set_remote(VNI, MacAddr(c.mac), c.ip, *vtep)
            .expect("set_remote");
        vteps.push(*vtep);
    }
    host.dp().set_flood(VNI, &vteps).expect("set_flood");
}

#[test]
fn two_ebpf_hosts_and_a_kernel_host_interoperate() {
    let lab = Lab::new("lab");
    let mut h1 = lab.host(1, true);
    let mut h2 = lab.host(2, true);
    let h3 = lab.host(3, false);
    let c1 = lab.container(&h1, "c1", 1);
    let c2 = lab.container(&h2, "c2", 2);
    let c3 = lab.container(&h3, "c3", 3);
    h1.attach(&c1);
    h2.attach(&c2);

    // Kernel path on h3: bridge + vxlan, learning off, static FDB (Docker-like).
    let v = |n| Ipv4Addr::new(198, 18, 0, n);
    kernel_host(&h3, &c3, &[(&c1, v(11)), (&c2, v(12))]);
    let k = &h3.ns;
    let v = |n| Ipv4Addr::new(198, 18, 0, n);
    program_remotes(&mut h1, &[(&c2, v(12)), (&c3, v(13))]);
    program_remotes(&mut h2, &[(&c1, v(11)), (&c3, v(13))]);

    // eBPF <-> eBPF, both ways.
    let before1 = h1.dp().counters().unwrap();
    assert_ping(&c1, c2.ip);
    assert_ping(&c2, c1.ip);
    let d1 = h1.dp().counters().unwrap().since(&before1);
    assert!(d1.egress_encap >= 3, "h1 encapsulated:\n{d1}");
    assert!(
        d1.egress_encap_direct >= 3,
        "h1 encapsulated in BPF, not through the vxlan device:\n{d1}"
    );
    assert!(
        d1.underlay_decap >= 3,
        "h1 decapsulated on the underlay interface:\n{d1}"
    );
    assert!(d1.egress_arp_replied >= 1, "ARP answered in BPF:\n{d1}");

    // Two containers on one eBPF host: switched locally (redirect_peer), never encapsulated.
    let c1b = lab.container(&h1, "c1b", 5);
    h1.attach(&c1b);
    let before = h1.dp().counters().unwrap();
    assert_ping(&c1, c1b.ip);
    let d = h1.dp().counters().unwrap().since(&before);
    assert!(d.egress_redirect_local >= 6, "local switching:\n{d}");
    assert_eq!(d.egress_encap, 0, "local traffic was encapsulated:\n{d}");

    // eBPF <-> kernel path, both ways.
    assert_ping(&c1, c3.ip);
    assert_ping(&c3, c1.ip);
    assert_ping(&c3, c2.ip);

    // Broadcast ping reaches the remote containers (head-end replication).
    c2.ns
        .sh("sysctl -qw net.ipv4.icmp_echo_ignore_broadcasts=0");
    c3.ns
        .sh("sysctl -qw net.ipv4.icmp_echo_ignore_broadcasts=0");
    let before2 = h2.dp().counters().unwrap();
    let out = c1.ns.sh("ping -b -c 3 -i 0.3 -W 2 10.77.0.255 2>&1");
    assert!(out.contains("from 10.77.0.2"), "no reply from c2:\n{out}");
    assert!(
        out.contains("from 10.77.0.3"),
        "no reply from c3 (kernel host):\n{out}"
    );
    c1.ns
        .sh("sysctl -qw net.ipv4.icmp_echo_ignore_broadcasts=0");
    c1b.ns
        .sh("sysctl -qw net.ipv4.icmp_echo_ignore_broadcasts=0");
    let out = c2.ns.sh("ping -b -c 3 -i 0.3 -W 2 10.77.0.255 2>&1");
    assert!(out.contains("from 10.77.0.1"), "no reply from c1:\n{out}");
    assert!(
        out.contains("from 10.77.0.5"),
        "no reply from c1b (same VNI, same host):\n{out}"
    );
    let d2 = h2.dp().counters().unwrap().since(&before2);
    assert!(d2.ingress_flooded >= 3, "h2 delivered broadcasts:\n{d2}");

    // Spoofed source IP: dropped at h1 and counted.
    let before = h1.dp().counters().unwrap();
    c1.ns.sh("ip addr add 10.77.0.99/24 dev eth0");
    let (ok, out) = c1
        .ns
        .try_sh("ping -c 2 -i 0.2 -W 1 -I 10.77.0.99 10.77.0.2");
    assert!(!ok, "spoofed ping went through:\n{out}");
    let d = h1.dp().counters().unwrap().since(&before);
    assert!(
        d.egress_drop_spoofed_ip >= 2,
        "spoofed_ip not counted:\n{d}"
    );
    c1.ns.sh("ip addr del 10.77.0.99/24 dev eth0");

    // Spoofed source MAC: dropped and counted; the real one works again afterwards.
    let before = h1.dp().counters().unwrap();
    c1.ns.sh("ip link set eth0 address 02:42:00:00:00:66");
    let (ok, _) = c1.ns.try_sh("ping -c 2 -i 0.2 -W 1 10.77.0.2");
    assert!(!ok, "ping with a spoofed MAC went through");
    let d = h1.dp().counters().unwrap().since(&before);
    assert!(
        d.egress_drop_spoofed_mac >= 2,
        "spoofed_mac not counted:\n{d}"
    );
    c1.ns
        .sh(&format!("ip link set eth0 address {}", mac_str(&c1.mac)));
    assert_ping(&c1, c2.ip);

    // A VNI h1 does not serve (sent by a plain vxlan device on h3): dropped and counted.
    let before = h1.dp().counters().unwrap();
    k.sh("ip link add vx999 type vxlan id 999 local 198.18.0.13 remote 198.18.0.11 dstport 4789 nolearning dev ul0");
    k.sh("ip addr add 10.99.0.3/24 dev vx999");
    k.sh("ip link set vx999 up");
    let _ = k.try_sh("ping -c 2 -i 0.2 -W 1 10.99.0.1");
    let d = h1.dp().counters().unwrap().since(&before);
    assert!(
        d.ingress_drop_unknown_vni >= 1,
        "unknown VNI not counted:\n{d}"
    );

    // Detaching c2 on h2: traffic stops, the maps are clean.
    let c2_if = h2.ns.ifindex(&c2.host_if);
    h2.dp().detach_endpoint(c2_if).unwrap();
    let st = h2.dp().dump().unwrap();
    assert!(st.endpoints.is_empty() && st.local_by_mac.is_empty() && st.local_flood.is_empty());
    assert!(!st.attached_links.contains(&c2_if));
    let (ok, _) = ping(&c1, c2.ip);
    assert!(!ok, "c2 still reachable after detach");
    h2.dp()
        .detach_endpoint(c2_if)
        .expect("detach is idempotent");
}

/// Parses "N packets transmitted, M received".
fn ping_counts(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary in:\n{out}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn restarted_agent_adopts_the_pinned_datapath_without_interruption() {
    let lab = Lab::new("adopt");
    let mut h1 = lab.host(1, true);
    let mut h2 = lab.host(2, true);
    let c1 = lab.container(&h1, "c1", 1);
    let c2 = lab.container(&h2, "c2", 2);
    h1.attach(&c1);
    h2.attach(&c2);
    let v = |n| Ipv4Addr::new(198, 18, 0, n);
    program_remotes(&mut h1, &[(&c2, v(12))]);
    program_remotes(&mut h2, &[(&c1, v(11))]);
    assert_ping(&c1, c2.ip);
    let state_before = h1.dp().dump().unwrap();

    let child = std::process::Command::new("ip")
        .args([
            "netns", "exec", &c1.ns.0, "ping", "-i", "0.02", "-c", "250", "-W", "1",
        ])
        .arg(c2.ip.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ping");
    let mut child = Child(child);
    std::thread::sleep(Duration::from_millis(1000));

    // Agent exit on both hosts: the EbpfDatapath objects go away, the pins stay.
    drop(h1.dp.take());
    drop(h2.dp.take());
    std::thread::sleep(Duration::from_millis(1000));
    // Agent start: adopt maps, swap programs on the pinned links.
    h1.load();
    h2.load();
    std::thread::sleep(Duration::from_millis(500));
    let state_after = h1.dp().dump().unwrap();
    assert_eq!(
        state_before, state_after,
        "adoption changed the programmed state"
    );

    let out = std::mem::replace(
        &mut child.0,
        std::process::Command::new("true").spawn().unwrap(),
    )
    .wait_with_output()
    .expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    let (tx, rx) = ping_counts(&text);
    eprintln!("during restart: {tx} sent, {rx} received");
    assert!(tx >= 200, "ping ended early:\n{text}");
    assert!(
        tx - rx <= 1,
        "lost {} packets across the restart:\n{text}",
        tx - rx
    );

    // The adopted datapath is fully usable: detach and re-attach work.
    let c1_if = h1.ns.ifindex(&c1.host_if);
    h1.dp().detach_endpoint(c1_if).unwrap();
    let (ok, _) = ping(&c1, c2.ip);
    assert!(!ok);
    h1.attach(&c1);
    assert_ping(&c1, c2.ip);
}

/// Sets `host` up as a kernel-path host (bridge + vxlan, learning off, static FDB) with
/// container `c` on it; `peers` are `(container, vtep)` on other hosts.
fn kernel_host(host: &Host, c: &Container, peers: &[(&Container, Ipv4Addr)]) {
    let k = &host.ns;
    k.sh("ip link add br0 type bridge");
    k.sh(&format!(
        "ip link add vxlan0 type vxlan id {VNI} local {} dstport 4789 nolearning dev ul0",
        host.vtep
    ));
    k.sh("ip link set vxlan0 master br0");
    k.sh(&format!("ip link set {} master br0", c.host_if));
    k.sh("ip link set vxlan0 up");
    k.sh("ip link set br0 up");
    for (pc, vtep) in peers {
        k.sh(&format!(
            "bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst {vtep}"
        ));
        k.sh(&format!(
            "bridge fdb add {} dev vxlan0 dst {vtep} static",
            mac_str(&pc.mac)
        ));
    }
}
