//! Small OS helpers: bpffs detection and mounting, capability parsing, interface names.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` lies on a bpf filesystem.
pub(crate) fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is a plain out-parameter struct; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid, writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's integer type differs between libcs
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `/sys/fs/bpf` is a bpffs, mounting one if needed.
pub(crate) fn ensure_bpffs_mounted() -> io::Result<()> {
    ensure_bpffs_at(Path::new("/sys/fs/bpf"))
}

/// Makes sure `dir` is (on) a bpffs in the caller's mount namespace: creates it and mounts a
/// new bpffs instance there if it is not.
pub(crate) fn ensure_bpffs_at(dir: &Path) -> io::Result<()> {
    if dir.exists() && is_bpffs(dir)? {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    mount_bpffs(dir)
}

/// Mounts a new bpffs instance on `dir` (each mount is an independent instance: its pins go
/// away with its last mount).
pub(crate) fn mount_bpffs(dir: &Path) -> io::Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let src = c"bpf";
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null (no options).
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Capability numbers we care about.
pub(crate) const CAP_NET_ADMIN: u32 = 12;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_BPF: u32 = 39;

/// Parses the `CapEff:` line of `/proc/self/status`.
pub(crate) fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Which of the capabilities the fast path needs are missing from `eff`.
pub(crate) fn missing_caps(eff: u64) -> Vec<&'static str> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (or CAP_SYS_ADMIN)");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Resolves an interface index to its name in the calling thread's network namespace.
pub(crate) fn ifname(index: u32) -> io::Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into buf.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(s.to_string_lossy().into_owned())
}

/// The interface holding IPv4 address `ip` in the calling thread's network namespace, if any.
pub(crate) fn addr_owner(ip: std::net::Ipv4Addr) -> io::Result<Option<u32>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    for ifa in addrs {
        let holds = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .is_some_and(|sin| sin.ip() == ip);
        if holds {
            return nix::net::if_::if_nametoindex(ifa.interface_name.as_str())
                .map(Some)
                .map_err(io::Error::from);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let eff = parse_cap_eff(status).unwrap();
        assert!(missing_caps(eff).is_empty());
        assert_eq!(
            missing_caps(0),
            vec!["CAP_BPF (or CAP_SYS_ADMIN)", "CAP_NET_ADMIN"]
        );
        assert_eq!(
            missing_caps(1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN),
            Vec::<&str>::new()
        );
        assert_eq!(parse_cap_eff("nothing"), None);
    }

    #[test]
    fn loopback_owns_127_0_0_1() {
        let lo = addr_owner(std::net::Ipv4Addr::LOCALHOST).unwrap();
        assert_eq!(lo.map(|i| ifname(i).unwrap()).as_deref(), Some("lo"));
        assert_eq!(
            addr_owner(std::net::Ipv4Addr::new(198, 18, 255, 254)).unwrap(),
            None
        );
    }
}
