//! Gratuitous ARP on a network's bridge.
//!
//! When a remote peer's entries are programmed, the agent announces the peer (an ARP reply
//! to the broadcast address, sender = the peer) on the sandbox bridge. A local container
//! whose ARP request for that address went out a moment before the entries existed (and
//! was dropped by the vxlan device's proxy ARP) has it resolved at once, instead of waiting
//! for its ARP retransmit timer. The frame is only a hint: nothing depends on it arriving.

use std::{net::Ipv4Addr, path::Path};

use ovl_model::MacAddr;

use crate::error::{Error, Result};
use crate::netns::run_in_netns;

/// The announcement frame: Ethernet broadcast, ARP reply, sender = target = the peer.
pub fn frame(ip: Ipv4Addr, mac: MacAddr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op reply.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&[0xff; 6]);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends one announcement per peer on interface `ifname` inside the namespace `netns`.
pub fn announce(netns: &Path, ifname: &str, peers: &[(Ipv4Addr, MacAddr)]) -> Result<()> {
    if peers.is_empty() {
        return Ok(());
    }
    let frames: Vec<[u8; 42]> = peers.iter().map(|(ip, mac)| frame(*ip, *mac)).collect();
    ovl_model::validate_ifname(ifname)?;
    let name = ifname.to_string();
    let ifname = std::ffi::CString::new(ifname).map_err(|_| {
        Error::Invalid(ovl_model::Error::Name {
            what: "interface name",
            value: name.clone(),
            rule: "no NUL bytes".into(),
        })
    })?;
    let place = netns.display().to_string();
    run_in_netns(Some(netns), move || {
        // SAFETY: if_nametoindex reads a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        if ifindex == 0 {
            return Err(Error::NoLink {
                name,
                place: Some(place),
            });
        }
        // SAFETY: plain socket(2) call; the fd is closed below on every path.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Error::io(
                "opening a packet socket",
                &place,
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = 0x0806u16.to_be();
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let mut result = Ok(());
        for f in &frames {
            // SAFETY: the buffer and the address outlive the call; lengths match them.
            let n = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n < 0 {
                result = Err(Error::io(
                    "sending gratuitous ARP",
                    &place,
                    std::io::Error::last_os_error(),
                ));
                break;
            }
        }
        // SAFETY: fd is ours and still open.
        unsafe { libc::close(fd) };
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let f = frame(Ipv4Addr::new(10, 1, 2, 3), MacAddr([2, 0x42, 10, 1, 2, 3]));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 2], "ARP reply");
        assert_eq!(&f[22..28], &[2, 0x42, 10, 1, 2, 3]);
        assert_eq!(&f[28..32], &[10, 1, 2, 3]);
        assert_eq!(&f[38..42], &[10, 1, 2, 3]);
    }
}
