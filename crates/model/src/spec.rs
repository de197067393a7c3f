//! What the agent asks a datapath to program: networks, endpoints, remote peers.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mac::MacAddr;
use crate::names::{validate_endpoint_id, validate_ifname, validate_network_name};

/// UDP destination port of VXLAN (IANA, RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

/// Bytes VXLAN over IPv4 adds to a frame (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8): the
/// container MTU is the underlay MTU minus this.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Bytes WireGuard over IPv4 adds to a packet (IPv4 20, UDP 8, WireGuard data header 16,
/// authentication tag 16): an encrypted network's VXLAN travels inside it, so its container
/// MTU is the underlay MTU minus this and [`VXLAN_OVERHEAD`].
pub const WG_OVERHEAD: u32 = 60;

/// The WireGuard interface that carries encrypted networks between hosts.
pub const WG_IFNAME: &str = "ovlwg0";

/// UDP port of WireGuard between hosts (the protocol's customary port).
pub const WG_PORT: u16 = 51820;

/// UDP port of the VXLAN of encrypted networks. It differs from [`VXLAN_PORT`] so that a
/// policy rule can route exactly this VXLAN into the WireGuard interface, and so that the
/// firewall can refuse it from anywhere but that interface.
pub const ENCRYPTED_VXLAN_PORT: u16 = 4790;

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The container MTU of a network on a host: its override, else the underlay's minus
/// [`VXLAN_OVERHEAD`].
pub fn overlay_mtu(underlay_mtu: u32, network_override: Option<u32>) -> u32 {
    network_override.unwrap_or(underlay_mtu.saturating_sub(VXLAN_OVERHEAD))
}

/// The container MTU of an encrypted network: its override, else the underlay's minus
/// [`WG_OVERHEAD`] and [`VXLAN_OVERHEAD`].
pub fn encrypted_mtu(underlay_mtu: u32, network_override: Option<u32>) -> u32 {
    overlay_mtu(underlay_mtu.saturating_sub(WG_OVERHEAD), network_override)
}

/// One overlay network as this host programs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Network name: the identity across hosts (and the kernel datapath's sandbox name).
    pub name: String,
    /// VXLAN network identifier (1..=16777215).
    pub vni: u32,
    /// The network's IPv4 subnet.
    pub subnet: Ipv4Network,
    /// Container-side MTU (underlay MTU - 50); also the bridge's and the vxlan device's.
    pub mtu: u32,
    /// This host's VTEP (advertise) address.
    pub local_vtep: Ipv4Addr,
    /// UDP port of VXLAN on the wire ([`VXLAN_PORT`] unless the whole cluster uses another).
    pub vxlan_port: u16,
}

impl NetworkSpec {
    /// Checks every field; datapaths call this before touching the kernel.
    pub fn validate(&self) -> Result<()> {
        validate_network_name(&self.name)?;
        let err = |p: String| Err(Error::spec(format!("network {}", self.name), p));
        if self.vni == 0 || self.vni > MAX_VNI {
            return err(format!("VNI {} out of range 1..={MAX_VNI}", self.vni));
        }
        if let Err(p) = check_mtu(self.mtu) {
            return err(p);
        }
        let v = self.local_vtep;
        if v.is_unspecified() || v.is_multicast() || v.is_broadcast() {
            return err(format!("local VTEP {v} is not a unicast address"));
        }
        if self.vxlan_port == 0 {
            return err("VXLAN UDP port 0".into());
        }
        if self.subnet.prefix() > 30 {
            return err(format!(
                "subnet {} is too small (prefix must be <= 30)",
                self.subnet
            ));
        }
        Ok(())
    }
}

fn check_mtu(mtu: u32) -> std::result::Result<(), String> {
    if (576..=65000).contains(&mtu) {
        Ok(())
    } else {
        Err(format!("MTU {mtu} out of range 576..=65000"))
    }
}

/// A container on another host: programmed as "frames to `mac` go to `vtep`" and "`ip` is at
/// `mac`".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RemotePeer {
    /// The remote container's MAC.
    pub mac: MacAddr,
    /// The remote container's overlay address.
    pub ip: Ipv4Addr,
    /// The VTEP of the host it lives on.
    pub vtep: Ipv4Addr,
}

/// Where the container end of an endpoint goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Plug {
    /// Into [`EndpointSpec::netns`], named [`EndpointSpec::ifname`] or the next free `ethN`
    /// (`overlayctl attach`, and every restore by the reconciler).
    #[default]
    Netns,
    /// Left in the host namespace as `tmp`, down and without address, for dockerd to move into
    /// the sandbox [`EndpointSpec::netns`] and rename (libnetwork's Join).
    Docker {
        /// The temporary name.
        tmp: String,
    },
}

/// A container interface on a network: what attach creates and the reconciler maintains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// Stable endpoint id (from the KV); names the host end.
    pub endpoint_id: String,
    /// The container's network namespace file (`/run/netns/X`, `/proc/PID/ns/net`, Docker's
    /// sandbox key).
    pub netns: PathBuf,
    /// The container interface's MAC.
    pub mac: MacAddr,
    /// The container's address on the network.
    pub ip: Ipv4Addr,
    /// Prefix length of `ip` (the subnet's).
    pub prefix_len: u8,
    /// MTU of both veth ends.
    pub mtu: u32,
    /// Name in the container; `None` picks `eth0` or the next free `ethN` (for a Docker
    /// endpoint: the name dockerd gave it, once known).
    pub ifname: Option<String>,
    /// Where the container end goes.
    #[serde(default)]
    pub plug: Plug,
}

impl EndpointSpec {
    /// Checks the endpoint against its network; nothing is changed on error.
    pub fn validate(&self, net: &NetworkSpec) -> Result<()> {
        validate_endpoint_id(&self.endpoint_id)?;
        let err = |p: String| Err(Error::spec(format!("endpoint {}", self.endpoint_id), p));
        if !self.mac.is_host() {
            return err(format!("MAC {} is not a unicast address", self.mac));
        }
        if !net.subnet.contains(self.ip) {
            return err(format!(
                "address {} is outside the subnet {} of network {}",
                self.ip, net.subnet, net.name
            ));
        }
        if self.ip == net.subnet.network() || self.ip == net.subnet.broadcast() {
            return err(format!(
                "address {} is the network or broadcast address of {}",
                self.ip, net.subnet
            ));
        }
        if self.prefix_len == 0 || self.prefix_len > 32 {
            return err(format!("prefix length {} out of range", self.prefix_len));
        }
        if let Err(p) = check_mtu(self.mtu) {
            return err(p);
        }
        if let Some(name) = &self.ifname {
            validate_ifname(name)?;
        }
        if let Plug::Docker { tmp } = &self.plug {
            validate_ifname(tmp)?;
        }
        if self.netns.as_os_str().is_empty() {
            return err("empty netns path".into());
        }
        Ok(())
    }

    /// The same endpoint restored straight into its namespace (a Docker endpoint whose
    /// interface is gone is not moved by dockerd again): named as before when that is known.
    pub fn restored(&self) -> EndpointSpec {
        EndpointSpec {
            plug: Plug::Netns,
            ..self.clone()
        }
    }
}

/// The result of plugging an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// Interface name on the container side (for [`Plug::Docker`]: the temporary name).
    pub ifname: String,
    /// Name of the host end.
    pub host_ifname: String,
    /// MAC of the container interface.
    pub mac: MacAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn net() -> NetworkSpec {
        NetworkSpec {
            name: "blue".into(),
            vni: 4097,
            subnet: "10.10.0.0/24".parse().unwrap(),
            mtu: 1450,
            local_vtep: Ipv4Addr::new(198, 18, 0, 11),
            vxlan_port: VXLAN_PORT,
        }
    }

    pub(crate) fn ep() -> EndpointSpec {
        EndpointSpec {
            endpoint_id: "c1".into(),
            netns: "/run/netns/c1".into(),
            mac: "02:42:0a:0a:00:02".parse().unwrap(),
            ip: Ipv4Addr::new(10, 10, 0, 2),
            prefix_len: 24,
            mtu: 1450,
            ifname: None,
            plug: Plug::Netns,
        }
    }

    #[test]
    fn network_validation() {
        assert!(net().validate().is_ok());
        let cases: Vec<fn(&mut NetworkSpec)> = vec![
            |n| n.vni = 0,
            |n| n.vni = MAX_VNI + 1,
            |n| n.name = "../etc".into(),
            |n| n.name = "".into(),
            |n| n.name = "a.b".into(),
            |n| n.mtu = 100,
            |n| n.local_vtep = Ipv4Addr::UNSPECIFIED,
            |n| n.vxlan_port = 0,
            |n| n.subnet = "10.0.0.0/31".parse().unwrap(),
        ];
        for (i, f) in cases.into_iter().enumerate() {
            let mut n = net();
            f(&mut n);
            assert!(n.validate().is_err(), "case {i}");
        }
    }

    #[test]
    fn endpoint_validation() {
        let n = net();
        assert!(ep().validate(&n).is_ok());
        let mut e = ep();
        e.ip = Ipv4Addr::new(10, 11, 0, 2);
        let err = e.validate(&n).unwrap_err().to_string();
        assert!(err.contains("outside the subnet"), "{err}");
        let cases: Vec<fn(&mut EndpointSpec)> = vec![
            |e| e.ip = Ipv4Addr::new(10, 10, 0, 255),
            |e| e.mac = "01:00:5e:00:00:01".parse().unwrap(),
            |e| e.mac = MacAddr::ZERO,
            |e| e.endpoint_id = "has space".into(),
            |e| e.ifname = Some("way-too-long-interface".into()),
            |e| e.prefix_len = 33,
            |e| e.netns = PathBuf::new(),
            |e| e.plug = Plug::Docker { tmp: "a/b".into() },
        ];
        for (i, f) in cases.into_iter().enumerate() {
            let mut e = ep();
            f(&mut e);
            assert!(e.validate(&n).is_err(), "case {i}");
        }
    }

    #[test]
    fn mtu_and_restore() {
        assert_eq!(overlay_mtu(1500, None), 1450);
        assert_eq!(overlay_mtu(1500, Some(1300)), 1300);
        let mut e = ep();
        e.plug = Plug::Docker { tmp: "ovdx".into() };
        e.ifname = Some("eth1".into());
        let r = e.restored();
        assert_eq!(r.plug, Plug::Netns);
        assert_eq!(r.ifname.as_deref(), Some("eth1"));
    }
}
