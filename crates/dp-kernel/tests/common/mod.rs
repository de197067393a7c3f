//! Shared helpers for the privileged datapath tests: namespaces named `dpt-*`, removed by
//! guards even when a test panics.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ovl_model::{Desired, DesiredNetwork, EndpointSpec, MacAddr, NetworkSpec, Plug, RemotePeer};
use ovl_netlink::HostMounts;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless we are root: privileged tests must not silently skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these datapath tests need root (network namespaces, vxlan)"
    );
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command and reports success and combined output.
pub fn sh_try(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// A unique short tag for this test's names.
pub fn tag() -> String {
    format!(
        "{}{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Network namespaces created with `ip netns add`, deleted on drop.
#[derive(Default)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates `dpt-<name>` and brings its loopback up; returns the full name.
    pub fn add(&mut self, name: &str) -> String {
        let full = format!("dpt-{name}");
        let _ = sh_try(&format!("ip netns del {full}"));
        sh(&format!("ip netns add {full}"));
        self.0.push(full.clone());
        sh(&format!("ip -n {full} link set lo up"));
        full
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let (ok, out) = sh_try(&format!("ip netns del {ns}"));
            if !ok {
                eprintln!("cleanup: ip netns del {ns}: {out}");
            }
        }
    }
}

/// A run dir under /tmp whose sandbox namespaces are unmounted and removed on drop.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("dpt-run-{tag}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        RunDir(p)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.0.join("netns")) {
            for e in entries.flatten() {
                if let Err(err) = ovl_netlink::netns::remove_netns(&HostMounts::local(), &e.path())
                {
                    eprintln!("cleanup: {}: {err}", e.path().display());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two "hosts" (namespaces) joined by a veth pair: 198.18.<net>.1 and .2.
pub struct TwoHosts {
    pub h1: String,
    pub h2: String,
    pub vtep1: Ipv4Addr,
    pub vtep2: Ipv4Addr,
}

pub fn two_hosts(ns: &mut Namespaces, tag: &str, third_octet: u8) -> TwoHosts {
    let h1 = ns.add(&format!("h1-{tag}"));
    let h2 = ns.add(&format!("h2-{tag}"));
    sh(&format!(
        "ip -n {h1} link add u0 type veth peer name u0 netns {h2}"
    ));
    let vtep1 = Ipv4Addr::new(198, 18, third_octet, 1);
    let vtep2 = Ipv4Addr::new(198, 18, third_octet, 2);
    sh(&format!("ip -n {h1} addr add {vtep1}/24 dev u0"));
    sh(&format!("ip -n {h2} addr add {vtep2}/24 dev u0"));
    sh(&format!("ip -n {h1} link set u0 up"));
    sh(&format!("ip -n {h2} link set u0 up"));
    TwoHosts {
        h1,
        h2,
        vtep1,
        vtep2,
    }
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

pub fn spec(name: &str, vni: u32, subnet: &str, vtep: Ipv4Addr) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        vni,
        subnet: subnet.parse().unwrap(),
        mtu: 1450,
        local_vtep: vtep,
        vxlan_port: ovl_model::VXLAN_PORT,
    }
}

pub fn endpoint(id: &str, netns: &str, ip: Ipv4Addr) -> EndpointSpec {
    EndpointSpec {
        endpoint_id: id.into(),
        netns: netns_path(netns),
        mac: MacAddr::from_ipv4(ip),
        ip,
        prefix_len: 24,
        mtu: 1450,
        ifname: None,
        plug: Plug::Netns,
    }
}

pub fn desired(spec: &NetworkSpec, peers: &[RemotePeer], local: &[&str]) -> Desired {
    let flood: BTreeSet<Ipv4Addr> = peers.iter().map(|p| p.vtep).collect();
    let mut networks = BTreeMap::new();
    networks.insert(
        spec.name.clone(),
        DesiredNetwork {
            spec: spec.clone(),
            peers: peers.to_vec(),
            flood,
            local_endpoints: local.iter().map(|s| (s.to_string(), None)).collect(),
        },
    );
    Desired { networks }
}

/// A KernelDatapath whose sandboxes are mounted in this process's own mount namespace.
pub fn kernel_dp(run: &Path, host: Option<PathBuf>) -> ovl_dp_kernel::KernelDatapath {
    ovl_dp_kernel::KernelDatapath::new(run.to_path_buf(), host, HostMounts::local()).unwrap()
}

/// Pings `ip` from namespace `from`, with a few attempts (the first packet may race ARP).
pub fn ping_ok(from: &str, ip: Ipv4Addr) -> bool {
    (0..3).any(|_| sh_try(&format!("ip netns exec {from} ping -n -c 1 -W 3 {ip}")).0)
}

/// Runs a command inside a sandbox (bind-mounted namespace file).
pub fn in_sandbox(path: &Path, cmd: &str) -> String {
    sh(&format!("nsenter --net={} {cmd}", path.display()))
}
