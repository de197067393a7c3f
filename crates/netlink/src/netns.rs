//! Network namespaces: persistent ones as bind-mounted files, and running code (opening
//! sockets) inside one from a dedicated thread.
//!
//! A thread's network namespace is per-thread state, so switching happens only on
//! short-lived threads spawned for that purpose; the async runtime's threads never change
//! namespace. Sockets opened there stay bound to that namespace for their whole life.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{Error, Result};
use crate::host::HostMounts;

/// Filesystem magic of nsfs (namespace files under /proc/*/ns and their bind mounts).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// True if `path` is a (mounted) namespace file rather than a plain file or nothing.
pub fn is_netns(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        #[allow(clippy::unnecessary_cast)] // the field's integer type differs between libcs
        Ok(fs) => fs.filesystem_type().0 as i64 == NSFS_MAGIC,
        Err(_) => false,
    }
}

/// Device and inode of a namespace file: equal pairs mean the same namespace.
pub fn netns_id(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot stat netns", path, e))?;
    Ok((meta.dev(), meta.ino()))
}

/// The namespace file of the calling thread.
pub fn current_netns_path() -> PathBuf {
    PathBuf::from("/proc/thread-self/ns/net")
}

/// Opens a namespace file and checks that it really is a network namespace.
pub fn open_netns(path: &Path) -> Result<File> {
    if !path.exists() {
        return Err(Error::NoNetns {
            path: path.to_path_buf(),
        });
    }
    if !is_netns(path) {
        return Err(Error::NotNetns {
            path: path.to_path_buf(),
        });
    }
    File::open(path).map_err(|e| Error::io("cannot open netns", path, e))
}

/// Runs `f` on a fresh thread that has joined the network namespace at `path` (or stays in
/// the caller's namespace when `None`), and returns its result.
pub fn run_in_netns<T, F>(path: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = path.map(open_netns).transpose()?;
    let label = path.map(|p| p.display().to_string());
    std::thread::Builder::new()
        .name("ovl-netns".into())
        .spawn(move || {
            if let Some(file) = ns {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    Error::sys(format!("setns into {}", label.unwrap_or_default()), e)
                })?;
            }
            f()
        })
        .map_err(|e| Error::Thread(e.to_string()))?
        .join()
        .map_err(|_| Error::Thread("panicked".into()))?
}

/// [`run_in_netns`] from async code: the thread is waited for without blocking the runtime.
pub async fn run_in_netns_async<T, F>(path: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = path.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || run_in_netns(path.as_deref(), f))
        .await
        .map_err(|e| Error::Thread(e.to_string()))?
}

/// Creates a new, empty network namespace and bind-mounts it on the host's `path` (which
/// must not exist), in the host's mount namespace (see [`HostMounts`]), so it outlives the
/// agent. IPv6 is disabled inside, so bridges and ports there send no router or neighbour
/// solicitations of their own across the overlay.
pub fn create_netns(host: &HostMounts, path: &Path) -> Result<()> {
    let file = host.resolve(path);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create directory", dir, e))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&file)
        .map_err(|e| Error::io("cannot create netns file", &file, e))?;
    let target = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let result = host.run(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::sys("unshare(CLONE_NEWNET)", e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("bind-mount netns on {}", target.display()), e))?;
        for knob in ["all", "default"] {
            let p = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
            if let Err(e) = std::fs::write(&p, "1") {
                tracing::debug!("cannot write {p}: {e} (IPv6 not available?)");
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        let undo = match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(u) if u.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(u) => Err(Error::io("removing the netns file again", &file, u)),
        };
        return Err(e.with_undo(undo));
    }
    Ok(())
}

/// Unmounts (in the host's mount namespace) and removes the namespace file at the host's
/// `path`. Missing files are fine (idempotent); a file that is not mounted is just removed.
pub fn remove_netns(host: &HostMounts, path: &Path) -> Result<()> {
    if !host.resolve(path).exists() {
        return Ok(());
    }
    let target = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    host.run(move || {
        match umount2(&target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(e) => return Err(Error::sys(format!("umount {}", target.display()), e)),
        }
        match std::fs::remove_file(&target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("cannot remove netns file", &target, e)),
        }
    })
}
