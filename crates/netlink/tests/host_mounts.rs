//! Privileged: mounts made through [`HostMounts`] from a private mount namespace live in the
//! host's and outlive the private one; the same mounts made locally die with it (the positive
//! control: it is what `ip netns exec overlay-agent` did to the datapath before). Needs root.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use ovl_netlink::HostMounts;
use ovl_netlink::netns::{create_netns, is_netns, remove_netns};

/// A directory under /tmp, its namespace files unmounted and removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.0) {
            for e in rd.flatten() {
                if let Err(err) = remove_netns(&HostMounts::local(), &e.path()) {
                    eprintln!("cleanup {}: {err}", e.path().display());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cleanup {}: {e}", self.0.display());
        }
    }
}

#[test]
fn a_netns_made_from_a_private_mount_namespace_outlives_it() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (mount namespaces, bind mounts)"
    );
    let dir = Dir(PathBuf::from(format!(
        "/tmp/ovlnl-hm-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let durable = dir.0.join("durable");
    let fragile = dir.0.join("fragile");
    let (d, f) = (durable.clone(), fragile.clone());
    // A thread in a mount namespace of its own, private like `ip netns exec` makes it: the
    // agent's situation, with this process's main thread standing for the host.
    let described = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        let host = HostMounts::of_pid(std::process::id()).unwrap();
        assert!(!host.is_local());
        create_netns(&host, &d).unwrap();
        create_netns(&HostMounts::local(), &f).unwrap();
        // Here, the host's mount is reached through the held root, not the plain path.
        assert!(
            is_netns(&host.resolve(&d)),
            "{}",
            host.resolve(&d).display()
        );
        assert!(
            !is_netns(&d),
            "the host's mount does not propagate into a private namespace"
        );
        assert!(is_netns(&f));
        // A namespace file: the host's where the host has it, this namespace's where only
        // this one has it mounted (dockerd's sandbox keys, for an agent in its namespace).
        assert_eq!(host.resolve_netns(&d), host.resolve(&d));
        assert_eq!(host.resolve_netns(&f), f);
        let nowhere = d.with_file_name("nowhere");
        assert_eq!(host.resolve_netns(&nowhere), host.resolve(&nowhere));
        host.describe()
    })
    .join()
    .unwrap();
    assert!(
        described.contains(&format!("PID {}", std::process::id())),
        "{described}"
    );
    // The private namespace is gone with its thread.
    assert!(
        is_netns(&durable),
        "the namespace made in the host's mount namespace is lost"
    );
    assert!(
        !is_netns(&fragile),
        "positive control: a mount made in the private namespace should die with it"
    );
    // And it is an ordinary, usable namespace file.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", durable.display()))
        .args(["ip", "-o", "link"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("lo"));
    remove_netns(&HostMounts::local(), &durable).unwrap();
    assert!(!Path::new(&durable).exists());
}

#[test]
fn detect_keeps_the_agents_own_namespace_when_nothing_else_can_be_seen() {
    // The test runs in the machine's mount namespace: whether PID 1 can be looked at or not,
    // nothing is entered that differs from ours, unless PID 1's does (a host with systemd).
    let h = HostMounts::detect();
    let here = std::fs::metadata("/proc/self/ns/mnt").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    let pid1 = std::fs::metadata("/proc/1/ns/mnt").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    match (here, pid1) {
        (Ok(a), Ok(b)) if a != b => assert!(!h.is_local(), "{}", h.describe()),
        _ => assert!(h.is_local(), "{}", h.describe()),
    }
}
