//! Helpers for the privileged tests: namespaces, commands, frames. Everything created here is
//! named with the `ebt-` prefix and removed by Drop guards, also on failure.
#![allow(dead_code)] // each test binary uses a subset

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Panics unless root: privileged tests must not silently skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests need root (netns, BPF)");
}

/// Runs a command, panics with its output on failure, returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returns (success, stdout+stderr).
pub fn try_sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// A named network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: &str) -> Self {
        assert!(name.starts_with("ebt-"));
        let _ = try_sh(&format!("ip netns del {name} 2>/dev/null"));
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns(name.to_string())
    }

    /// `ip netns exec NAME CMD`.
    pub fn sh(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.0))
    }

    pub fn try_sh(&self, cmd: &str) -> (bool, String) {
        try_sh(&format!("ip netns exec {} {cmd}", self.0))
    }

    /// Index of an interface in this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        self.sh(&format!("cat /sys/class/net/{dev}/ifindex"))
            .trim()
            .parse()
            .expect("ifindex")
    }

    /// Runs `f` on a thread that lives in this namespace (netns is per thread).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let f_ns = File::open(&path).expect("open netns");
                // SAFETY: valid fd of a netns file; affects only this thread.
                let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = try_sh(&format!("ip netns del {}", self.0));
    }
}

/// A pin directory under /sys/fs/bpf, removed (with all pins) on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(name: &str) -> Self {
        assert!(name.starts_with("ebt-"));
        let p = Path::new("/sys/fs/bpf").join(name);
        remove_tree(&p);
        PinDir(p)
    }
}

fn remove_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                remove_tree(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

impl Drop for PinDir {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// A child process killed (by PID) on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn mac_str(m: &[u8; 6]) -> String {
    ovl_model::MacAddr(*m).to_string()
}

/// Ethernet + IPv4 + ICMP echo frame (checksums are irrelevant to the programs).
pub fn ipv4_frame(dst: [u8; 6], src: [u8; 6], saddr: [u8; 4], daddr: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let total: u16 = 20 + 8 + 32;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        1,
        0,
        0,
    ]);
    f.extend_from_slice(&saddr);
    f.extend_from_slice(&daddr);
    f.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
    f.extend_from_slice(&[0xab; 32]);
    f
}

/// Ethernet + ARP frame.
pub fn arp_frame(
    eth_dst: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, (op >> 8) as u8, op as u8]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}
