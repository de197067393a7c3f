//! Plain data types shared by the plan and the kernel datapath, with their validation.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The all-zeros address, used as the key of VXLAN flood (BUM) entries.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// True for 00:00:00:00:00:00.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// True if the group bit is clear (a valid address for an interface).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }

    /// Parses from raw netlink bytes (must be exactly 6 long).
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    /// Docker's convention: 02:42 followed by the IPv4 address.
    pub fn from_ipv4(ip: Ipv4Addr) -> MacAddr {
        let o = ip.octets();
        MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidInput(format!("invalid MAC address {s:?}"));
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One overlay network as this host programs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Network name: the identity across hosts and the sandbox file name.
    pub name: String,
    /// VXLAN network identifier (1..=16777215).
    pub vni: u32,
    /// The network's IPv4 subnet.
    pub subnet: Ipv4Network,
    /// Container-side MTU (underlay MTU - 50); also used for the bridge and the vxlan device.
    pub mtu: u32,
    /// This host's VTEP (advertise) address: the vxlan device's `local`.
    pub local_vtep: Ipv4Addr,
    /// UDP port of VXLAN on the wire ([`crate::VXLAN_PORT`], 4789, unless every host of the
    /// cluster is configured otherwise, e.g. to share a host with Docker's classic overlay).
    pub vxlan_port: u16,
}

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

impl NetworkSpec {
    /// Checks every field; the datapath calls this before touching the kernel.
    pub fn validate(&self) -> Result<()> {
        validate_network_name(&self.name)?;
        if self.vni == 0 || self.vni > MAX_VNI {
            return Err(Error::InvalidInput(format!(
                "network {}: VNI {} out of range 1..={MAX_VNI}",
                self.name, self.vni
            )));
        }
        validate_mtu(self.mtu).map_err(|e| prefix_err(&self.name, e))?;
        if self.local_vtep.is_unspecified()
            || self.local_vtep.is_multicast()
            || self.local_vtep.is_broadcast()
        {
            return Err(Error::InvalidInput(format!(
                "network {}: local VTEP {} is not a unicast address",
                self.name, self.local_vtep
            )));
        }
        if self.vxlan_port == 0 {
            return Err(Error::InvalidInput(format!(
                "network {}: VXLAN UDP port 0",
                self.name
            )));
        }
        if self.subnet.prefix() > 30 {
            return Err(Error::InvalidInput(format!(
                "network {}: subnet {} is too small (prefix must be <= 30)",
                self.name, self.subnet
            )));
        }
        Ok(())
    }
}

fn prefix_err(name: &str, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("network {name}: {m}")),
        other => other,
    }
}

/// Network names become file names under `<run_dir>/netns/`, so they are restricted to the
/// characters Docker allows: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 long.
pub fn validate_network_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid network name {name:?}: use 1-64 characters [A-Za-z0-9_.-], starting with a letter or digit"
        )))
    }
}

/// Endpoint ids are stored in interface aliases, so they are printable ASCII without spaces,
/// at most 128 long.
pub fn validate_endpoint_id(id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid endpoint id {id:?}: use 1-128 printable ASCII characters without spaces"
        )))
    }
}

fn validate_mtu(mtu: u32) -> Result<()> {
    if (576..=65000).contains(&mtu) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "MTU {mtu} out of range 576..=65000"
        )))
    }
}

/// Linux interface names: 1..=15 bytes, no '/', ':' or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid interface name {name:?}: 1-15 characters, no '/', ':' or spaces"
        )))
    }
}

/// A container on another host: programmed as FDB `mac -> vtep` and neighbour `ip -> mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RemotePeer {
    /// The remote container's MAC.
    pub mac: MacAddr,
    /// The remote container's overlay address.
    pub ip: Ipv4Addr,
    /// The VTEP (advertise address) of the host it lives on.
    pub vtep: Ipv4Addr,
}

/// A container interface to create on a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// Stable endpoint id (from the KV); names the host-side port.
    pub endpoint_id: String,
    /// The container's network namespace file (`/run/netns/X`, `/proc/PID/ns/net`, ...).
    pub netns: PathBuf,
    /// The container interface's MAC.
    pub mac: MacAddr,
    /// The container's address on the network.
    pub ip: Ipv4Addr,
    /// Prefix length for `ip` (normally the subnet's).
    pub prefix_len: u8,
    /// MTU of both veth ends.
    pub mtu: u32,
    /// Wanted interface name in the container; `None` picks `eth0` or the next free `ethN`.
    pub ifname: Option<String>,
}

impl EndpointSpec {
    /// Checks the endpoint against its network; nothing is changed on error.
    pub fn validate(&self, net: &NetworkSpec) -> Result<()> {
        validate_endpoint_id(&self.endpoint_id)?;
        let ctx = |m: String| Error::InvalidInput(format!("endpoint {}: {m}", self.endpoint_id));
        if !self.mac.is_unicast() || self.mac.is_zero() {
            return Err(ctx(format!("MAC {} is not a unicast address", self.mac)));
        }
        if !net.subnet.contains(self.ip) {
            return Err(ctx(format!(
                "address {} is outside the subnet {} of network {}",
                self.ip, net.subnet, net.name
            )));
        }
        if self.ip == net.subnet.network() || self.ip == net.subnet.broadcast() {
            return Err(ctx(format!(
                "address {} is the network or broadcast address of {}",
                self.ip, net.subnet
            )));
        }
        if self.prefix_len == 0 || self.prefix_len > 32 {
            return Err(ctx(format!(
                "prefix length {} out of range",
                self.prefix_len
            )));
        }
        validate_mtu(self.mtu).map_err(|e| match e {
            Error::InvalidInput(m) => ctx(m),
            o => o,
        })?;
        if let Some(name) = &self.ifname {
            validate_ifname(name)?;
        }
        if self.netns.as_os_str().is_empty() {
            return Err(ctx("empty netns path".into()));
        }
        Ok(())
    }
}

/// The result of attaching an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// Interface name inside the container.
    pub ifname: String,
    /// Name of the bridge port inside the network sandbox.
    pub host_ifname: String,
    /// MAC of the container interface.
    pub mac: MacAddr,
}

/// Picks the requested name prefix with the lowest free index: `eth0`, else `eth1`, ...
pub fn free_ifname(existing: &[String], prefix: &str) -> String {
    (0u32..)
        .map(|n| format!("{prefix}{n}"))
        .find(|candidate| !existing.iter().any(|e| e == candidate))
        .unwrap_or_else(|| unreachable!("u32 range exhausted"))
}

/// Prefix of the interface alias that marks our endpoint ports; the rest is the endpoint id.
pub(crate) const ALIAS_PREFIX: &str = "ovl-ep:";

/// The bridge-port name of an endpoint: short ids are kept readable (`ve-<id>`), others are
/// hashed (`ve<13 hex>`); the two forms cannot collide because hex digits contain no `-`.
pub fn port_name(endpoint_id: &str) -> String {
    let readable = endpoint_id.len() <= 12
        && endpoint_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if readable {
        format!("ve-{endpoint_id}")
    } else {
        format!("ve{:013x}", fnv1a(endpoint_id.as_bytes()) >> 12)
    }
}

/// Temporary name of the container end while it is being set up (hash of the id, so a
/// leftover from an interrupted attach is found again).
pub(crate) fn temp_peer_name(endpoint_id: &str) -> String {
    format!("vt{:013x}", fnv1a(endpoint_id.as_bytes()) >> 12)
}

/// Temporary name of a vxlan device in the host namespace before it moves into its sandbox.
pub(crate) fn temp_vxlan_name(vni: u32) -> String {
    format!("ovx-{vni:06x}")
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkSpec {
        NetworkSpec {
            name: "blue".into(),
            vni: 4097,
            subnet: "10.10.0.0/24".parse().unwrap(),
            mtu: 1450,
            local_vtep: Ipv4Addr::new(198, 18, 0, 11),
            vxlan_port: crate::VXLAN_PORT,
        }
    }

    fn ep() -> EndpointSpec {
        EndpointSpec {
            endpoint_id: "c1".into(),
            netns: "/run/netns/c1".into(),
            mac: "02:42:0a:0a:00:02".parse().unwrap(),
            ip: Ipv4Addr::new(10, 10, 0, 2),
            prefix_len: 24,
            mtu: 1450,
            ifname: None,
        }
    }

    #[test]
    fn free_ifname_picks_lowest_free() {
        assert_eq!(free_ifname(&[], "eth"), "eth0");
        let ex: Vec<String> = ["lo", "eth0", "eth2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(free_ifname(&ex, "eth"), "eth1");
        let ex: Vec<String> = ["eth0", "eth1", "eth10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(free_ifname(&ex, "eth"), "eth2");
        let ex: Vec<String> = vec!["eth0".into()];
        assert_eq!(free_ifname(&ex, "net"), "net0");
    }

    #[test]
    fn mac_parse_and_display_roundtrip() {
        let m: MacAddr = "02:42:0A:00:00:FF".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:00:00:ff");
        assert!(m.is_unicast());
        assert!(!"01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_unicast());
        assert!("02:42:0a:00:00".parse::<MacAddr>().is_err());
        assert!("02:42:0a:00:00:ff:01".parse::<MacAddr>().is_err());
        assert!("zz:42:0a:00:00:ff".parse::<MacAddr>().is_err());
        assert_eq!(
            MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 0, 2)).to_string(),
            "02:42:0a:00:00:02"
        );
        assert!(MacAddr::ZERO.is_zero());
    }

    #[test]
    fn port_names_fit_and_are_deterministic() {
        assert_eq!(port_name("c1"), "ve-c1");
        let long = "3f4e8d2c1b0a99887766554433221100ffeeddccbbaa";
        let a = port_name(long);
        assert_eq!(a, port_name(long));
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, port_name("3f4e8d2c1b0a99887766554433221100ffeeddccbbab"));
        assert!(validate_ifname(&a).is_ok());
        assert!(validate_ifname(&port_name("abcdefghijkl")).is_ok());
        assert!(validate_ifname(&temp_peer_name(long)).is_ok());
        assert!(validate_ifname(&temp_vxlan_name(MAX_VNI)).is_ok());
        // Ids with characters not allowed in names are hashed.
        assert!(port_name("a/b").starts_with("ve") && !port_name("a/b").contains('/'));
    }

    #[test]
    fn network_validation() {
        assert!(net().validate().is_ok());
        let mut n = net();
        n.vni = 0;
        assert!(n.validate().is_err());
        n = net();
        n.vni = MAX_VNI + 1;
        assert!(n.validate().is_err());
        n = net();
        n.name = "../etc".into();
        assert!(n.validate().is_err());
        n = net();
        n.name = "".into();
        assert!(n.validate().is_err());
        n = net();
        n.mtu = 100;
        assert!(n.validate().is_err());
        n = net();
        n.local_vtep = Ipv4Addr::UNSPECIFIED;
        assert!(n.validate().is_err());
    }

    #[test]
    fn endpoint_validation() {
        let n = net();
        assert!(ep().validate(&n).is_ok());
        let mut e = ep();
        e.ip = Ipv4Addr::new(10, 11, 0, 2);
        let err = e.validate(&n).unwrap_err().to_string();
        assert!(err.contains("outside the subnet"), "{err}");
        e = ep();
        e.ip = Ipv4Addr::new(10, 10, 0, 255);
        assert!(e.validate(&n).is_err());
        e = ep();
        e.mac = "01:00:5e:00:00:01".parse().unwrap();
        assert!(e.validate(&n).is_err());
        e = ep();
        e.endpoint_id = "has space".into();
        assert!(e.validate(&n).is_err());
        e = ep();
        e.ifname = Some("way-too-long-interface".into());
        assert!(e.validate(&n).is_err());
        e = ep();
        e.prefix_len = 33;
        assert!(e.validate(&n).is_err());
    }
}
