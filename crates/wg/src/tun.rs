//! The interface under the userspace device: a TAP with a virtio-net header on each frame.
//!
//! tokio-tun's builder sets only the name, MTU, addresses and `IFF_NO_PI`, and the flags
//! of a queue are fixed when its file is attached (`TUNSETIFF`), so they cannot be added to
//! a device it opened. We need two it does not offer:
//!
//! - `IFF_VNET_HDR` with the 24-byte header of Linux 6.17's UDP-tunnel offload: a write may
//!   then be a whole merged VXLAN flow (see [`crate::merge`]). It has to be a TAP: the
//!   kernel checks the tunnel's offsets as a frame's, Ethernet header first. `IFF_NOARP`
//!   makes the kernel address every frame to the device's own MAC, which we strip; what
//!   WireGuard carries is the IP packet.
//! - `IFF_NAPI` where the kernel has no such offload (older kernels): the packets we write
//!   then go through the device's NAPI instance and GRO, and with a GRO flush timeout
//!   consecutive VXLAN datagrams of one TCP flow still reach the bridge as one packet.
//!
//! Where the kernel has the tunnel offload, the device also takes checksum and TCP
//! segmentation offloads: a read may then be a whole TCP send, cut in userspace.

use std::ffi::CString;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use std::ops::Range;

use crate::merge::{ETH_LEN, FRAME_HEAD, VNET_HDR_LEN};
use crate::split::VnetHdr;

/// How long the kernel may hold a merged packet waiting for more of its flow, in
/// nanoseconds, once the writes pause (NAPI mode only). A merged packet leaves when it
/// reaches 64 KiB, carries TCP's PUSH, or is a jiffy old; only a TCP segment without PUSH
/// at the end of a burst waits this long. It must exceed the gap between two packets of a
/// flow, or nothing merges: 20 us merged nothing here, 200 us took a bulk transfer from
/// 0.33 to 0.63 Gbit/s and its ACKs from one per 2 segments to one per 40.
const GRO_FLUSH_TIMEOUT_NS: u64 = 200_000;

/// `TUNSETOFFLOAD` bits: checksum, TSO for IPv4, GSO over UDP tunnels (Linux 6.17).
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x80;
const TUN_F_UDP_TUNNEL_GSO_CSUM: libc::c_uint = 0x100;
/// What we take from the kernel where it knows tunnel GSO: TCP sends of up to 64 KiB,
/// plain or in VXLAN (with or without its UDP checksum), checksums left to us.
const OFFLOADS: libc::c_uint =
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM;

nix::ioctl_write_ptr_bad!(tunsetiff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tunsetoffload, libc::TUNSETOFFLOAD);
nix::ioctl_write_ptr_bad!(tunsetvnethdrsz, libc::TUNSETVNETHDRSZ, libc::c_int);
nix::ioctl_write_ptr_bad!(siocsifmtu, libc::SIOCSIFMTU, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifflags, libc::SIOCSIFFLAGS, libc::ifreq);
nix::ioctl_read_bad!(siocgifflags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifhwaddr, libc::SIOCSIFHWADDR, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsiftxqlen, libc::SIOCSIFTXQLEN, libc::ifreq);

/// The device's own address, set by us: every frame we write is addressed to it. A MAC
/// the kernel drew at random would not stay: udev's `MACAddressPolicy=persistent` (the
/// default on systemd hosts) replaces a new interface's random address a moment after it
/// appears, and frames to the old one would be dropped as not ours. An address we set is
/// not random, so udev leaves it alone. Locally administered, unicast; one TAP per host
/// namespace, so one address does.
const DEVICE_MAC: [u8; 6] = [0x02, 0x77, 0x67, 0, 0, 2];

/// Frames the kernel queues for our reader before it drops (the TAP default is 1000).
/// A TAP has no flow control towards the stack: a full queue is loss. At 2.8 Gbit/s of
/// merged receive the default lost 3,407 frames in 5 s (TCP retransmitted 1,300-2,100
/// segments); 2,000 lost none.
const TX_QUEUE_LEN: i32 = 2048;

/// One non-persistent TAP interface; it goes away with the file.
pub(crate) struct TunDev {
    fd: OwnedFd,
    /// The Ethernet header of frames we write: to the device's address, IPv4.
    eth: [u8; ETH_LEN],
    /// Whether the kernel takes merged TCP-over-UDP-tunnel frames (and hands us its
    /// sends whole).
    tunnel_gso: bool,
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

/// Opens /dev/net/tun and attaches it as TAP `name` with `flags` besides.
fn attach(name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
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
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | flags) as i16;
    // SAFETY: TUNSETIFF reads an ifreq at the address passed; `req` outlives the call.
    unsafe { tunsetiff(file.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int at the address passed.
    unsafe { tunsetvnethdrsz(file.as_raw_fd(), &size) }.map_err(io::Error::from)?;
    Ok(file)
}

/// Turns the offloads on where the kernel knows GSO over UDP tunnels on a TAP (Linux
/// 6.17); older kernels refuse the unknown bits, and the device then gets none.
fn enable_offloads(file: &OwnedFd) -> io::Result<bool> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { tunsetoffload(file.as_raw_fd(), OFFLOADS as _) }.is_ok() {
        return Ok(true);
    }
    // SAFETY: as above.
    unsafe { tunsetoffload(file.as_raw_fd(), 0) }.map_err(io::Error::from)?;
    Ok(false)
}

impl TunDev {
    /// Creates TAP `name` in the calling thread's network namespace with `mtu`, up, no
    /// ARP; its file is non-blocking.
    pub(crate) fn open(name: &str, mtu: i32) -> io::Result<TunDev> {
        let mut file = attach(name, 0)?;
        let tunnel_gso = enable_offloads(&file)?;
        if !tunnel_gso {
            // The flags are the queue's for good: close (the device goes) and start over.
            drop(file);
            file = attach(name, libc::IFF_NAPI)?;
        }
        configure(name, mtu, !tunnel_gso)?;
        let mut eth = [0u8; ETH_LEN];
        eth[..6].copy_from_slice(&DEVICE_MAC);
        // The source: a locally administered address of our own, never the device's.
        eth[6..12].copy_from_slice(&[0x02, 0x77, 0x67, 0, 0, 1]);
        eth[12..].copy_from_slice(&0x0800u16.to_be_bytes());
        Ok(TunDev {
            fd: file,
            eth,
            tunnel_gso,
        })
    }

    /// The Ethernet header for frames we write.
    pub(crate) fn eth(&self) -> [u8; ETH_LEN] {
        self.eth
    }

    /// Whether merged frames may be written.
    pub(crate) fn tunnel_gso(&self) -> bool {
        self.tunnel_gso
    }

    /// Reads one frame without waiting: its virtio-net header and the IP packet's range
    /// in `buf` (`None`: not IPv4, left out); `WouldBlock` when none is queued. With the
    /// offloads on, the packet may be a whole TCP send to cut (see [`crate::split`]).
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<(VnetHdr, Range<usize>)>> {
        let n = nix::unistd::read(&self.fd, buf).map_err(io::Error::from)?;
        if n <= FRAME_HEAD || buf[FRAME_HEAD - 2..FRAME_HEAD] != [0x08, 0x00] {
            return Ok(None);
        }
        Ok(Some((VnetHdr::parse(buf), FRAME_HEAD..n)))
    }

    /// Writes one frame: `head` then `rest` (see [`crate::merge::Merger::push`]). A TAP
    /// write never waits: the kernel takes the frame or drops it and says so.
    pub(crate) fn send(&self, head: &[u8], rest: &[u8]) -> io::Result<usize> {
        nix::sys::uio::writev(&self.fd, &[IoSlice::new(head), IoSlice::new(rest)])
            .map_err(io::Error::from)
    }
}

impl AsFd for TunDev {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sets the MTU, the queue length and our MAC, brings the interface up without ARP and,
/// with `napi`, gives its NAPI instance a GRO flush timeout.
fn configure(name: &str, mtu: i32, napi: bool) -> io::Result<()> {
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
    // The queue length travels in the metric member (`ifr_qlen` is an alias of it).
    req.ifr_ifru.ifru_metric = TX_QUEUE_LEN;
    // SAFETY: as above.
    unsafe { siocsiftxqlen(sock.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    let mut req = ifreq(name)?;
    // SAFETY: sockaddr is plain old data; the hwaddr member is the one SIOCSIFHWADDR reads.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(DEVICE_MAC) {
            *dst = src as libc::c_char;
        }
    }
    // SAFETY: as above.
    unsafe { siocsifhwaddr(sock.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    disable_ipv6(name);
    let mut req = ifreq(name)?;
    // SAFETY: as above.
    unsafe { siocgifflags(sock.as_raw_fd(), &mut req) }.map_err(io::Error::from)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING | libc::IFF_NOARP) as i16
    };
    // SAFETY: as above.
    unsafe { siocsifflags(sock.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    if napi {
        set_gro_flush_timeout(name);
    }
    Ok(())
}

/// An Ethernet device gets an IPv6 link-local address and sends neighbour discovery and
/// MLD frames, none of which WireGuard carries here (they would only be counted as
/// dropped). /proc/sys/net shows the calling thread's namespace. Best effort: a kernel
/// without IPv6 has no such file, nor such frames.
fn disable_ipv6(name: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1")
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::debug!(ifname = name, error = %e, "could not disable IPv6 on the device");
    }
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
