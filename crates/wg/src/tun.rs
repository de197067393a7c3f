//! The TUN interface under the userspace device, opened with `IFF_NAPI`.
//!
//! tokio-tun's builder sets only the name, MTU, addresses and `IFF_NO_PI`, and the flags
//! of a TUN queue are fixed when the file is attached (`TUNSETIFF`), so they cannot be added
//! to a device it opened. `IFF_NAPI` is what lets the kernel merge what we write: the
//! packets go through the device's NAPI instance and GRO instead of straight up the stack
//! one by one, and with a GRO flush timeout on the device, consecutive VXLAN datagrams of
//! one TCP flow reach the bridge, the veth and the container's TCP as one large packet
//! (one pass up the stack and one ACK for up to 64 KiB instead of one per 1.4 KiB).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// How long the kernel may hold a merged packet waiting for more of its flow, in
/// nanoseconds, once the writes pause. A merged packet leaves when it reaches 64 KiB,
/// carries TCP's PUSH, or is a jiffy old; only a TCP segment without PUSH at the end of a
/// burst waits this long. It must exceed the gap between two packets of a flow, or
/// nothing merges: 20 us merged nothing here, 200 us took a bulk transfer from 0.33 to
/// 0.63 Gbit/s and its ACKs from one per 2 segments to one per 40.
const GRO_FLUSH_TIMEOUT_NS: u64 = 200_000;

nix::ioctl_write_ptr_bad!(tunsetiff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifmtu, libc::SIOCSIFMTU, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifflags, libc::SIOCSIFFLAGS, libc::ifreq);
nix::ioctl_read_bad!(siocgifflags, libc::SIOCGIFFLAGS, libc::ifreq);

/// One non-persistent TUN interface (IPv4/IPv6 packets, no packet-info header); it goes
/// away with the file.
pub(crate) struct TunDev {
    fd: OwnedFd,
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers and
    // sockaddrs); all zeroes is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

impl TunDev {
    /// Creates TUN `name` in the calling thread's network namespace with `mtu`, up; its
    /// file is non-blocking.
    pub(crate) fn open(name: &str, mtu: i32) -> io::Result<TunDev> {
        let path = CString::new("/dev/net/tun").expect("no NUL in a literal");
        // SAFETY: a valid NUL-terminated path and flags; the result is checked.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just returned by open and is owned by nothing else.
        let file = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_NAPI) as i16;
        // SAFETY: TUNSETIFF reads an ifreq at the address passed; `req` outlives the call.
        unsafe { tunsetiff(file.as_raw_fd(), &req) }.map_err(io::Error::from)?;
        configure(name, mtu)?;
        Ok(TunDev { fd: file })
    }

    /// Reads one packet without waiting: `WouldBlock` when none is queued.
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.fd, buf).map_err(io::Error::from)
    }

    /// Writes one packet. A TUN write never waits: the kernel takes the packet or drops
    /// it and says so.
    pub(crate) fn send(&self, packet: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.fd, packet).map_err(io::Error::from)
    }
}

impl AsFd for TunDev {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sets the MTU, brings the interface up and gives its NAPI instance a GRO flush timeout.
fn configure(name: &str, mtu: i32) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by socket and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = mtu;
    // SAFETY: the ioctls read (or fill) the ifreq at the address passed, which lives
    // across each call.
    unsafe { siocsifmtu(sock.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    let mut req = ifreq(name)?;
    // SAFETY: as above.
    unsafe { siocgifflags(sock.as_raw_fd(), &mut req) }.map_err(io::Error::from)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as i16 };
    // SAFETY: as above.
    unsafe { siocsifflags(sock.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    set_gro_flush_timeout(name);
    Ok(())
}

/// Best effort: without the timeout GRO flushes after every write and merges nothing, so
/// the device works, only slower.
///
/// sysfs shows the interfaces of the network namespace it was mounted in, which is not
/// ours when the agent entered its namespace without a /sys of its own (`nsenter`, a
/// container runtime). Then a short-lived thread, which shares our namespace, gets a mount
/// namespace of its own and mounts a sysfs of our namespace over /sys in it.
fn set_gro_flush_timeout(name: &str) {
    let write = |sys: &Path| -> io::Result<bool> {
        let dir = sys.join("class/net").join(name);
        let ours = nix::net::if_::if_nametoindex(name).map_err(io::Error::from)?;
        let shown = std::fs::read_to_string(dir.join("ifindex"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if shown != Some(ours) {
            return Ok(false);
        }
        std::fs::write(
            dir.join("gro_flush_timeout"),
            GRO_FLUSH_TIMEOUT_NS.to_string(),
        )?;
        Ok(true)
    };
    let done = match write(Path::new("/sys")) {
        Ok(true) => Ok(()),
        Ok(false) => std::thread::scope(|s| {
            s.spawn(|| {
                use nix::mount::{MsFlags, mount};
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                mount(
                    Some("sysfs"),
                    "/sys",
                    Some("sysfs"),
                    MsFlags::empty(),
                    None::<&str>,
                )?;
                match write(Path::new("/sys")) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(io::Error::other(
                        "a fresh sysfs does not show the interface",
                    )),
                    Err(e) => Err(e),
                }
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("sysfs thread panicked")))
        }),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => tracing::debug!(
            ifname = name,
            ns = GRO_FLUSH_TIMEOUT_NS,
            "GRO flush timeout set"
        ),
        Err(e) => tracing::info!(
            ifname = name,
            error = %e,
            "could not set the GRO flush timeout; packets from the tunnel will not be merged"
        ),
    }
}
