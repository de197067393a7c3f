//! The underlay MTU, which the overlay MTU is derived from.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};

/// MTU of the interface holding `addr` in the caller's network namespace.
pub fn underlay_mtu(addr: Ipv4Addr) -> Result<u32> {
    interface_mtu(&underlay_interface(addr)?)
}

/// The network of `addr` on the interface holding it (`198.18.0.2/24` -> `198.18.0.0/24`).
pub fn underlay_network(addr: Ipv4Addr) -> Result<ipnetwork::Ipv4Network> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| Error::sys("getifaddrs", e))?;
    let mask = addrs
        .into_iter()
        .find(|ifa| {
            ifa.address
                .as_ref()
                .and_then(|a| a.as_sockaddr_in())
                .is_some_and(|sin| sin.ip() == addr)
        })
        .and_then(|ifa| ifa.netmask)
        .and_then(|m| m.as_sockaddr_in().map(|s| s.ip()))
        .ok_or(Error::NoAddress { addr })?;
    let prefix = u32::from(mask).count_ones() as u8;
    let net = ipnetwork::Ipv4Network::new(addr, prefix).expect("a netmask's prefix is valid");
    Ok(ipnetwork::Ipv4Network::new(net.network(), prefix).expect("same prefix"))
}

/// Name of the interface holding `addr` in the caller's network namespace.
pub fn underlay_interface(addr: Ipv4Addr) -> Result<String> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| Error::sys("getifaddrs", e))?;
    addrs
        .into_iter()
        .find(|ifa| {
            ifa.address
                .as_ref()
                .and_then(|a| a.as_sockaddr_in())
                .is_some_and(|sin| sin.ip() == addr)
        })
        .map(|ifa| ifa.interface_name)
        .ok_or(Error::NoAddress { addr })
}

/// MTU of a named interface in the caller's namespace (SIOCGIFMTU).
fn interface_mtu(ifname: &str) -> Result<u32> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    ovl_model::validate_ifname(ifname)?;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket for SIOCGIFMTU", e))?;
    // SAFETY: ifreq is a plain C struct (name array + union of integers); all-zeros is a
    // valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // validate_ifname bounds the name to 15 bytes: it fits with its NUL.
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `sock` is a valid open socket and `req` a properly initialised ifreq with a
    // NUL-terminated name that lives across the call; SIOCGIFMTU only writes `ifru_mtu`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc < 0 {
        return Err(Error::sys(
            format!("SIOCGIFMTU {ifname}"),
            nix::Error::last(),
        ));
    }
    // SAFETY: the kernel filled the `ifru_mtu` member of the union for SIOCGIFMTU.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu)
        .map_err(|_| Error::sys(format!("negative MTU on {ifname}"), nix::Error::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underlay_mtu_of_loopback() {
        // Loopback exists in every namespace the tests run in.
        let mtu = underlay_mtu(Ipv4Addr::LOCALHOST).unwrap();
        assert!(mtu >= 1500, "{mtu}");
        assert!(matches!(
            underlay_mtu(Ipv4Addr::new(192, 0, 2, 77)),
            Err(Error::NoAddress { .. })
        ));
    }
}
