//! Least privilege for the agent's files: the state directory holds the cluster's topology
//! (attachments, network records, the Docker cache, the gateway state, the embedded KV), so
//! it and everything in it is readable by root only; the control and plugin sockets are
//! created with their final owner and mode before any client can reach them.

use std::{
    fs::{self, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Mode bits of group and other.
const GROUP_OTHER: u32 = 0o077;

/// Creates `dir` (mode 0700) if needed and takes group and other bits away from it and from
/// every directory and regular file below it (symlinks are not followed). Returns the paths
/// it changed, for the log.
pub fn private_dir(dir: &Path) -> io::Result<Vec<String>> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut changed = Vec::new();
    restrict(dir, &mut changed)?;
    Ok(changed)
}

fn restrict(path: &Path, changed: &mut Vec<String>) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let kind = meta.file_type();
    if !(kind.is_dir() || kind.is_file()) {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & GROUP_OTHER != 0 {
        fs::set_permissions(path, Permissions::from_mode(mode & !GROUP_OTHER))?;
        changed.push(path.display().to_string());
    }
    if kind.is_dir() {
        for entry in fs::read_dir(path)? {
            restrict(&entry?.path(), changed)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path`, readable by its owner only (mode 0600, also when the file
/// existed with another mode). Callers rename it into place.
pub fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(0o600))?;
    f.write_all(bytes.as_ref())?;
    f.sync_all()
}

/// Writes `value` as JSON to `path`, readable by root only, through a temporary renamed over
/// it, so a crash never leaves half a file. A failed write (a full disk) removes the
/// temporary and is returned with the path.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let res = serde_json::to_vec_pretty(value)
        .map_err(io::Error::other)
        .and_then(|b| write_private(&tmp, b))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        if let Err(rm) = std::fs::remove_file(&tmp)
            && rm.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %tmp.display(), error = %rm, "removing a half-written state file");
        }
        return Err(io::Error::new(
            e.kind(),
            format!("saving {}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// Binds a unix socket at `path` with `mode` and, if given, group owner `gid`: bound under a
/// temporary name, given its owner and mode, then renamed into place, so no client ever
/// finds it with other permissions. A stale file at `path` is replaced by the rename.
pub fn bind_socket(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> io::Result<tokio::net::UnixListener> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path has no name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.new",
        name.to_string_lossy(),
        std::process::id()
    ));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    let placed = (|| {
        if gid.is_some() {
            std::os::unix::fs::chown(&tmp, None, gid)?;
        }
        fs::set_permissions(&tmp, Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        if let Err(rm) = fs::remove_file(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %rm, "removing a half-made socket");
        }
        return Err(e);
    }
    Ok(listener)
}

/// Resolves `--socket-group`: a group name from the group database, or a numeric GID.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no such group {name:?}")),
        Err(e) => Err(format!("looking up group {name:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn state_dir_and_its_files_become_private() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        fs::create_dir_all(dir.join("gateway")).unwrap();
        for (p, m) in [(dir.as_path(), 0o755), (&dir.join("gateway"), 0o775)] {
            fs::set_permissions(p, Permissions::from_mode(m)).unwrap();
        }
        let files = [
            dir.join("local.json"),
            dir.join("docker-networks.json"),
            dir.join("gateway/gateway.json"),
        ];
        for f in &files {
            fs::write(f, "{}").unwrap();
            fs::set_permissions(f, Permissions::from_mode(0o644)).unwrap();
        }
        // Owner bits stay as they were; a symlink out of the dir is not followed.
        let exec = dir.join("hook");
        fs::write(&exec, "").unwrap();
        fs::set_permissions(&exec, Permissions::from_mode(0o755)).unwrap();
        let outside = base.path().join("outside");
        fs::write(&outside, "").unwrap();
        fs::set_permissions(&outside, Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        let changed = private_dir(&dir).unwrap();
        assert_eq!(changed.len(), 6, "{changed:?}");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("gateway")), 0o700);
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        assert_eq!(mode(&exec), 0o700);
        assert_eq!(mode(&outside), 0o644, "symlink target untouched");
        // Idempotent.
        assert!(private_dir(&dir).unwrap().is_empty());
        // A new directory is made private.
        let fresh = base.path().join("new/state");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn private_writes_are_0600_even_over_an_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json.tmp");
        write_private(&p, b"one").unwrap();
        assert_eq!(mode(&p), 0o600);
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"two");
    }

    #[tokio::test]
    async fn sockets_appear_with_their_mode_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("overlay.sock");
        fs::write(&p, "stale").unwrap();
        let gid = nix::unistd::getegid().as_raw();
        let l = bind_socket(&p, 0o660, Some(gid)).unwrap();
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        assert_eq!(m.permissions().mode() & 0o777, 0o660);
        assert_eq!(m.gid(), gid);
        // The listener serves at the final path.
        let c = tokio::net::UnixStream::connect(&p).await;
        assert!(c.is_ok(), "{c:?}");
        drop(l);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary left: {names:?}");
    }

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(group_id("0"), Ok(0));
        assert_eq!(group_id("root"), Ok(0));
        let e = group_id("ovl-no-such-group").unwrap_err();
        assert!(e.contains("no such group"), "{e}");
    }
}
