//! The host's mount namespace, where the datapath keeps the mounts that must outlive the
//! agent: the kernel datapath's per-network namespace files and the eBPF datapath's bpffs.
//!
//! A mount lives as long as the mount namespace holding it. An agent started with
//! `ip netns exec HOST overlay-agent` runs in a private mount namespace of its own (so does a
//! systemd unit with `PrivateTmp=`, `ProtectSystem=` and similar), which dies with the agent:
//! mounts made there vanish on `kill -9`, and with them the per-network namespaces (and every
//! container interface in them) and the BPF pins (and the programs). So the agent makes
//! those mounts in the mount namespace of the host:
//!
//! 1. PID 1's, when it can be entered (a normal host, systemd units included);
//! 2. otherwise the nearest ancestor process whose mount namespace differs from the agent's
//!    (under `ip netns exec`: the shell or test that started it), found by walking the
//!    parent chain while `/proc/PID/ns/mnt` can be read;
//! 3. otherwise the agent's own (it then is the host's, as far as it can tell).
//!
//! It holds a descriptor of that namespace and an `O_PATH` descriptor of its root for its
//! whole life. Mounts are made from a short-lived thread that leaves the process's shared
//! filesystem context (`unshare(CLONE_FS)`, since threads share it and `setns` refuses a
//! shared one) and enters the namespace (`setns(CLONE_NEWNS)`). Everything else reaches the
//! mounted files through `/proc/self/fd/<root>/<path>`: a walk from another namespace's root
//! sees that namespace's mounts. A restart adopts the mounts whichever way it is started:
//! the host namespace is the same.
//!
//! Assumption: the agent shares the host's PID namespace (namespace files are bind-mounted
//! from `/proc/thread-self/ns/net` as the host's `/proc` shows it).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{Error, Result};

/// What looking at a process's mount namespace showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The same namespace as the agent's.
    Same,
    /// Another one (its inode number).
    Other(u64),
    /// It cannot be looked at (permission, or the process is gone).
    Hidden,
}

/// Which process's mount namespace holds the durable mounts (`None`: the agent's own).
/// Pure: `pid1` is what PID 1 showed, `ancestors` the parent chain from the agent's parent
/// up (PID 1 excluded).
pub fn choose(pid1: Probe, ancestors: &[(u32, Probe)]) -> Option<u32> {
    match pid1 {
        Probe::Other(_) => return Some(1),
        Probe::Same => return None,
        Probe::Hidden => {}
    }
    for (pid, p) in ancestors {
        match p {
            Probe::Other(_) => return Some(*pid),
            Probe::Same => continue,
            Probe::Hidden => return None,
        }
    }
    None
}

#[derive(Debug)]
struct Anchor {
    pid: u32,
    comm: String,
    ns_inode: u64,
    mnt: File,
    root: File,
}

/// The mount namespace that holds the datapath's durable mounts. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HostMounts {
    anchor: Option<Arc<Anchor>>,
    own_inode: u64,
}

fn mnt_inode(path: &str) -> std::io::Result<u64> {
    std::fs::metadata(path).map(|m| m.ino())
}

fn probe(pid: u32, own: u64) -> Probe {
    match mnt_inode(&format!("/proc/{pid}/ns/mnt")) {
        Ok(i) if i == own => Probe::Same,
        Ok(i) => Probe::Other(i),
        Err(_) => Probe::Hidden,
    }
}

/// The parent of `pid` (`/proc/PID/stat`, the field after the command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl HostMounts {
    /// Mounts in the caller's own mount namespace (plain paths).
    pub fn local() -> HostMounts {
        HostMounts {
            anchor: None,
            own_inode: mnt_inode("/proc/thread-self/ns/mnt").unwrap_or(0),
        }
    }

    /// Finds the host's mount namespace as the module documentation says, and checks that it
    /// can be entered. Never fails: when nothing better can be used, the caller's own
    /// namespace is, and [`HostMounts::describe`] says so.
    pub fn detect() -> HostMounts {
        let local = HostMounts::local();
        let own = local.own_inode;
        let pid1 = probe(1, own);
        let mut ancestors = Vec::new();
        if pid1 == Probe::Hidden {
            let mut pid = parent_of(std::process::id());
            while let Some(p) = pid.filter(|p| *p > 1) {
                let pr = probe(p, own);
                ancestors.push((p, pr));
                if pr != Probe::Same {
                    break;
                }
                pid = parent_of(p);
            }
        }
        let Some(pid) = choose(pid1, &ancestors) else {
            return local;
        };
        match HostMounts::of_pid(pid) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot use the host's mount namespace; durable mounts go to the agent's own");
                local
            }
        }
    }

    /// Uses the mount namespace of process `pid` (checked by entering it once).
    pub fn of_pid(pid: u32) -> Result<HostMounts> {
        let own_inode = HostMounts::local().own_inode;
        let ns_path = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
        let mnt = File::open(&ns_path)
            .map_err(|e| Error::io("opening a mount namespace", &ns_path, e))?;
        let root_path = PathBuf::from(format!("/proc/{pid}/root"));
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&root_path)
            .map_err(|e| Error::io("opening a root directory", &root_path, e))?;
        let ns_inode = mnt
            .metadata()
            .map_err(|e| Error::io("reading a mount namespace", &ns_path, e))?
            .ino();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let h = HostMounts {
            anchor: Some(Arc::new(Anchor {
                pid,
                comm,
                ns_inode,
                mnt,
                root,
            })),
            own_inode,
        };
        h.run(|| Ok(()))?;
        Ok(h)
    }

    /// Whether mounts go to the caller's own namespace.
    pub fn is_local(&self) -> bool {
        self.anchor.is_none()
    }

    /// Which namespace is used, for the log and `overlayctl datapath`.
    pub fn describe(&self) -> String {
        match &self.anchor {
            None => format!("the agent's own mount namespace (mnt:[{}])", self.own_inode),
            Some(a) => format!(
                "the mount namespace mnt:[{}] of PID {} ({}); the agent's own is mnt:[{}]",
                a.ns_inode, a.pid, a.comm, self.own_inode
            ),
        }
    }

    /// The path under which this process reaches the host's `path` (absolute, or relative
    /// to the current directory).
    pub fn resolve(&self, path: &Path) -> PathBuf {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        match &self.anchor {
            None => abs,
            Some(a) => {
                let rel = abs.strip_prefix("/").unwrap_or(&abs);
                PathBuf::from(format!("/proc/self/fd/{}", a.root.as_raw_fd())).join(rel)
            }
        }
    }

    /// The path under which this process opens the namespace file at the host's `path`:
    /// [`HostMounts::resolve`]'s, unless only this process's own mount namespace has a
    /// namespace mounted there. That is the case of an agent sharing the private mount
    /// namespace of a dockerd whose sandbox keys are mounted there only.
    pub fn resolve_netns(&self, path: &Path) -> PathBuf {
        let host = self.resolve(path);
        if self.anchor.is_none() || crate::netns::is_netns(&host) || !crate::netns::is_netns(path) {
            host
        } else {
            path.to_path_buf()
        }
    }

    /// Runs `f` on a fresh thread inside the host's mount namespace, where host paths are
    /// plain paths (use them, not [`HostMounts::resolve`]'s), and returns its result. Mounts
    /// and unmounts go through here.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let anchor = self.anchor.clone();
        std::thread::Builder::new()
            .name("ovl-hostns".into())
            .spawn(move || {
                if let Some(a) = &anchor {
                    // Threads share one filesystem context (root, cwd), and setns into a mount
                    // namespace refuses a shared one: this thread takes a copy first.
                    unshare(CloneFlags::CLONE_FS)
                        .map_err(|e| Error::sys("unshare(CLONE_FS)", e))?;
                    setns(&a.mnt, CloneFlags::CLONE_NEWNS).map_err(|e| {
                        Error::sys(format!("entering the mount namespace of PID {}", a.pid), e)
                    })?;
                }
                f()
            })
            .map_err(|e| Error::Thread(e.to_string()))?
            .join()
            .map_err(|_| Error::Thread("panicked".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid1_wins_when_it_can_be_seen() {
        assert_eq!(choose(Probe::Other(7), &[(50, Probe::Other(8))]), Some(1));
        assert_eq!(choose(Probe::Same, &[(50, Probe::Other(8))]), None);
    }

    #[test]
    fn otherwise_the_nearest_ancestor_in_another_namespace() {
        // `ip netns exec` from a shell: the parent is in the host's namespace.
        assert_eq!(choose(Probe::Hidden, &[(50, Probe::Other(8))]), Some(50));
        // A wrapper in our namespace in between is skipped.
        assert_eq!(
            choose(Probe::Hidden, &[(60, Probe::Same), (50, Probe::Other(8))]),
            Some(50)
        );
        // Nobody differs, or the chain cannot be followed: our own.
        assert_eq!(choose(Probe::Hidden, &[(60, Probe::Same)]), None);
        assert_eq!(
            choose(Probe::Hidden, &[(60, Probe::Hidden), (50, Probe::Other(8))]),
            None
        );
        assert_eq!(choose(Probe::Hidden, &[]), None);
    }

    #[test]
    fn local_paths_are_plain_and_absolute() {
        let h = HostMounts::local();
        assert!(h.is_local());
        assert_eq!(h.resolve(Path::new("/run/x")), PathBuf::from("/run/x"));
        assert!(h.resolve(Path::new("rel")).is_absolute());
        assert!(h.describe().contains("agent's own"));
    }
}
