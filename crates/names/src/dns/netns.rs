//! Creating listening sockets inside another network namespace.
//!
//! A socket belongs to the namespace it was created in, for life, whichever thread later uses
//! it. So a short-lived thread enters the container's namespace (`setns` affects only the
//! calling thread), brings `lo` up there, creates and binds the UDP and TCP sockets, and hands
//! them back; the agent's tokio runtime then serves them from its own threads. The thread exits
//! right after, so no runtime thread ever changes namespace.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::NamesError;

/// The UDP and TCP sockets of one listener, bound, not yet registered with tokio.
#[derive(Debug)]
pub(crate) struct BoundSockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

fn netns_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> NamesError {
    let path = path.to_path_buf();
    move |source| NamesError::Netns {
        path,
        action,
        source,
    }
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace (a fresh namespace has it
/// down, and 127.0.0.11 is not assignable until it is up).
fn bring_lo_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a valid descriptor we just created and own exclusively.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we pass, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the flags member of the union is the initialised one.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    let up = libc::IFF_UP as libc::c_short;
    if flags & up == 0 {
        ifr.ifr_ifru.ifru_flags = flags | up;
        // SAFETY: SIOCSIFFLAGS reads the ifreq we pass, which outlives the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn bind_here(addr: SocketAddr) -> Result<BoundSockets, NamesError> {
    let sock_err = |proto: &'static str, action: &'static str| {
        move |source| NamesError::Socket {
            addr,
            proto,
            action,
            source,
        }
    };
    let udp = UdpSocket::bind(addr).map_err(sock_err("udp", "bind"))?;
    udp.set_nonblocking(true)
        .map_err(sock_err("udp", "set non-blocking"))?;
    // The TCP listener must use the port the UDP socket got (relevant when addr has port 0).
    let tcp_addr = udp.local_addr().map_err(sock_err("udp", "local address"))?;
    let tcp = TcpListener::bind(tcp_addr).map_err(sock_err("tcp", "bind"))?;
    tcp.set_nonblocking(true)
        .map_err(sock_err("tcp", "set non-blocking"))?;
    Ok(BoundSockets { udp, tcp })
}

/// Binds UDP and TCP sockets at `addr` in the agent's own namespace.
pub(crate) fn bind_plain(addr: SocketAddr) -> Result<BoundSockets, NamesError> {
    bind_here(addr)
}

/// Binds UDP and TCP sockets at `addr` inside the network namespace at `netns` (bringing its
/// `lo` up first). Blocks for as long as a thread spawn and a few syscalls take.
pub(crate) fn bind_in_netns(netns: &Path, addr: SocketAddr) -> Result<BoundSockets, NamesError> {
    let ns = File::open(netns).map_err(netns_err(netns, "open"))?;
    let path: PathBuf = netns.to_path_buf();
    let worker = std::thread::Builder::new()
        .name("ovl-dns-netns".into())
        .spawn(move || -> Result<BoundSockets, NamesError> {
            // SAFETY: setns on a descriptor we own; it only changes this thread's namespace,
            // and this thread ends when the closure returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(netns_err(&path, "setns")(io::Error::last_os_error()));
            }
            bring_lo_up().map_err(netns_err(&path, "bring lo up"))?;
            bind_here(addr)
        })
        .map_err(|e| NamesError::Internal(format!("spawn netns thread: {e}")))?;
    worker
        .join()
        .map_err(|_| NamesError::Internal("netns thread panicked".into()))?
}
