//! The device's UDP socket, with segmentation offload both ways.
//!
//! Sending, a run of equal-sized datagrams for one peer leaves in one `sendmsg` with
//! `UDP_SEGMENT`: the kernel carries the run down its stack as one packet and cuts it only
//! where it must (at the underlay device, or never across a veth). Receiving with `UDP_GRO`,
//! consecutive datagrams of one sender come up in one `recvmsg` with their size in a
//! control message. Both fall back to one datagram per call where the kernel refuses.
//!
//! The socket is non-blocking and used from plain threads: the data path waits in
//! `poll(2)` (see [`crate::device`]), and a send that finds the buffer full waits here.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrStorage, recvmsg, sendmsg,
    setsockopt, sockopt,
};

/// Most datagrams the kernel takes in one `UDP_SEGMENT` send (`UDP_MAX_SEGMENTS`, 64 on
/// older kernels).
pub(crate) const MAX_SEGMENTS: usize = 64;
/// Most bytes of one segmented send: its payload must fit one UDP length field.
pub(crate) const MAX_GSO_BYTES: usize = 65_000;
/// How long a send waits for room in a full socket buffer before the datagrams are
/// dropped (as a congested link would).
const SEND_WAIT_MS: u16 = 100;

/// Socket buffer size asked for: a burst of ~2,800 full-size datagrams, so the receive
/// loop falling a little behind does not turn into TCP-visible loss at once.
const SOCKET_BUFFER: usize = 4 << 20;

/// The socket with what its kernel turned out to allow.
pub(crate) struct Udp {
    socket: UdpSocket,
    gso: AtomicBool,
}

impl Udp {
    /// Binds 0.0.0.0:`port` in the calling thread's namespace, non-blocking, with large
    /// buffers and `UDP_GRO` where the kernel gives them (best effort: the device works
    /// without, only slower or losing more under bursts).
    pub(crate) fn bind(port: u16) -> io::Result<Udp> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
        socket.set_nonblocking(true)?;
        // Past `net.core.[rw]mem_max` where we have CAP_NET_ADMIN.
        let rcv = setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER)
            .or_else(|_| setsockopt(&socket, sockopt::RcvBuf, &SOCKET_BUFFER));
        let snd = setsockopt(&socket, sockopt::SndBufForce, &SOCKET_BUFFER)
            .or_else(|_| setsockopt(&socket, sockopt::SndBuf, &SOCKET_BUFFER));
        if let Err(e) = rcv.and(snd) {
            tracing::debug!(error = %e, "could not enlarge the WireGuard socket buffers");
        }
        if let Err(e) = setsockopt(&socket, sockopt::UdpGroSegment, &true) {
            tracing::debug!(error = %e, "UDP_GRO refused; receiving one datagram per call");
        }
        Ok(Udp {
            socket,
            gso: AtomicBool::new(true),
        })
    }

    /// Sends `buf`, datagrams of `size` bytes each (the last may be shorter), to `to`.
    pub(crate) fn send_run(&self, to: SocketAddrV4, buf: &[u8], size: usize) -> io::Result<()> {
        if buf.len() > size && self.gso.load(Ordering::Relaxed) {
            match self.retry(|| self.send_segmented(to, buf, size)) {
                Ok(()) => return Ok(()),
                // EIO: the route's device cannot checksum; EINVAL/ENOPROTOOPT: no
                // UDP_SEGMENT on this kernel. Neither changes while we run.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                    ) =>
                {
                    tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        for d in buf.chunks(size.max(1)) {
            self.send_to(d, to)?;
        }
        Ok(())
    }

    /// Sends one datagram.
    pub(crate) fn send_to(&self, datagram: &[u8], to: SocketAddrV4) -> io::Result<()> {
        self.retry(|| self.socket.send_to(datagram, SocketAddr::V4(to)).map(drop))
    }

    /// Runs `send`, waiting for room while the socket buffer is full.
    fn retry(&self, mut send: impl FnMut() -> io::Result<()>) -> io::Result<()> {
        loop {
            match send() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLOUT)];
                    if poll(&mut fds, PollTimeout::from(SEND_WAIT_MS))? == 0 {
                        return Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    fn send_segmented(&self, to: SocketAddrV4, buf: &[u8], size: usize) -> io::Result<()> {
        let seg = u16::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let addr = SockaddrIn::from(to);
        let iov = [IoSlice::new(buf)];
        let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
        sendmsg(
            self.socket.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(drop)
        .map_err(io::Error::from)
    }

    /// Receives into `buf` without waiting: the bytes, the sender, and the size of each
    /// datagram in them (all but the last have it; `None` when it is one datagram).
    /// `WouldBlock` when nothing is queued.
    pub(crate) fn try_recv_run(
        &self,
        buf: &mut [u8],
    ) -> io::Result<(usize, Option<SocketAddr>, Option<usize>)> {
        let mut space = nix::cmsg_space!(i32);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let mut seg = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::UdpGroSegments(s) = c {
                seg = usize::try_from(s).ok().filter(|s| *s > 0);
            }
        }
        let from = msg
            .address
            .and_then(|a| a.as_sockaddr_in().map(|a| SocketAddr::V4((*a).into())));
        Ok((msg.bytes, from, seg))
    }
}

impl AsFd for Udp {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
