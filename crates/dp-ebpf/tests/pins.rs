//! Privileged: the pins live on a bpffs in the host's mount namespace, reached through
//! `/proc/self/fd/<root>/...` (BPF_OBJ_PIN and BPF_OBJ_GET), so a datapath loaded from a
//! private mount namespace (`ip netns exec overlay-agent`) survives it, and is adopted from
//! another one. The positive control: the same load with a bpffs mounted in the private
//! namespace loses everything with it. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use common::*;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use ovl_dp_ebpf::{EbpfDatapath, ensure_bpffs_at};
use ovl_model::MacAddr;
use ovl_netlink::HostMounts;

const VNI: u32 = 100;
const REMOTE: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x0c]);

/// A directory under /tmp, removed on drop (after the mounts in it, declared later).
struct Base(PathBuf);

impl Drop for Base {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cleanup: {}: {e}", self.0.display());
        }
    }
}

/// A bpffs mount point under /tmp, unmounted and removed on drop.
struct Bpffs(PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        match umount2(&self.0, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(e) => eprintln!("cleanup: umount {}: {e}", self.0.display()),
        }
        if let Err(e) = std::fs::remove_dir(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cleanup: {}: {e}", self.0.display());
        }
    }
}

/// On a thread in its own, private mount namespace and in `ns`: mounts the pins' bpffs with
/// `mounts` (built there), loads the datapath and programs a remote endpoint.
fn load_in_private_mount_namespace(ns: &Netns, pins: PathBuf, anchored: bool) {
    ns.run(move || {
        unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        let mounts = if anchored {
            HostMounts::of_pid(std::process::id()).unwrap()
        } else {
            HostMounts::local()
        };
        ensure_bpffs_at(&mounts, &pins).unwrap();
        let mut dp = EbpfDatapath::load(
            &mounts.resolve(&pins),
            "ovl_vx0",
            Ipv4Addr::new(198, 18, 0, 11),
            1450,
        )
        .unwrap();
        dp.set_remote(
            VNI,
            REMOTE,
            Ipv4Addr::new(10, 0, 0, 3),
            Ipv4Addr::new(198, 18, 0, 12),
        )
        .unwrap();
    });
}

fn has_pins(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn pins_made_from_a_private_mount_namespace_outlive_it_and_are_adopted() {
    require_root();
    let ns = Netns::new(&format!("ebt-pin-{}", std::process::id() % 100_000));
    ns.sh("ip link add ebtul type veth peer name ebtulp");
    ns.sh("ip addr add 198.18.0.11/24 dev ebtul");
    ns.sh("ip link set ebtul up");
    let base = Base(PathBuf::from(format!(
        "/tmp/ebt-pins-{}",
        std::process::id()
    )));
    let durable = Bpffs(base.0.join("durable"));
    let fragile = Bpffs(base.0.join("fragile"));

    // Positive control first: pins on a bpffs of the private namespace die with it.
    load_in_private_mount_namespace(&ns, fragile.0.clone(), false);
    assert!(
        !has_pins(&fragile.0),
        "a bpffs mounted in the private namespace should be gone with it"
    );

    load_in_private_mount_namespace(&ns, durable.0.clone(), true);
    assert!(
        has_pins(&durable.0),
        "the pins did not survive the private namespace"
    );
    assert!(
        has_pins(&durable.0.join("links")),
        "no pinned program links"
    );
    // Adopted from this (the host's) mount namespace: the remote endpoint is still there.
    let pins = durable.0.clone();
    let st = ns.run(move || {
        let dp = EbpfDatapath::load(&pins, "ovl_vx0", Ipv4Addr::new(198, 18, 0, 11), 1450)
            .expect("adopt");
        let st = dp.dump().unwrap();
        dp.teardown().unwrap();
        st
    });
    assert_eq!(
        st.remotes.get(&(VNI, REMOTE)).map(|r| r.vtep),
        Some(Ipv4Addr::new(198, 18, 0, 12)),
        "{st:?}"
    );
    drop((durable, fragile, base));
}
