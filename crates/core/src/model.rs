//! Records stored in the KV, and the naming rules they obey.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// A host running the agent. Kept after the host dies, so it can be shown as dead and keep
/// its identity when it comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Unique host id (`--host-id`).
    pub id: String,
    /// The VTEP (advertise) address other hosts send VXLAN to.
    pub vtep: Ipv4Addr,
    /// MTU of the underlay interface holding `vtep`.
    pub underlay_mtu: u32,
    /// Datapath mode (`kernel` or `ebpf`).
    pub datapath: String,
    /// Agent version.
    pub version: String,
    /// Subnet of the host's gateway bridge, once chosen (overlay subnets must avoid it).
    #[serde(default)]
    pub gw_subnet: Option<Ipv4Network>,
}

/// Liveness of a host: present while the host's lease is kept alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliveRecord {
    /// Host id.
    pub id: String,
    /// Random id of this agent process, to tell restarts apart.
    pub boot_id: String,
    /// Unix time (seconds) the agent started.
    pub since: u64,
}

/// An overlay network, the same on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Network name: its identity across hosts.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// The network's subnet.
    pub subnet: Ipv4Network,
    /// The gateway address (reserved, never handed to an endpoint).
    pub gateway: Ipv4Addr,
    /// Internal networks get no gateway bridge and no route off the overlay.
    pub internal: bool,
    /// Container MTU override; `None` = each host's underlay MTU - 50.
    pub mtu: Option<u32>,
    /// Labels, as `docker network inspect` shows them on every host (Compose keeps its
    /// project, network and config-hash labels here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Driver options given at creation (`docker network create -o K=V`), replayed on every
    /// host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// A subnet a Docker `RequestPool` reserved before the network's name was known (the plugin
/// protocol carries no name there). It holds its subnet in the subnet index, under its own
/// owner key, not as a network: nothing else sees it, and it becomes the network's subnet or
/// goes away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerPool {
    /// The token in the PoolID.
    pub token: String,
    /// Host that reserved it.
    pub host: String,
    /// The reserved subnet.
    pub subnet: Ipv4Network,
    /// `--gateway`, when given.
    pub gateway: Option<Ipv4Addr>,
    /// `--ipam-opt ovl.network=NAME` (a name not yet in the KV at `RequestPool`).
    pub name: Option<String>,
    /// Docker's NetworkID on `host`, once `CreateNetwork` came.
    pub network_id: Option<String>,
    /// `--internal`.
    pub internal: bool,
    /// `-o com.docker.network.driver.mtu`.
    pub mtu: Option<u32>,
    /// `-o` options as given.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The cluster network it was bound to.
    pub bound: Option<String>,
    /// Unix time (seconds) of the reservation, to release ones Docker never used.
    #[serde(default)]
    pub since: u64,
}

impl DockerPool {
    /// The owner of its subnet in the subnet index (`pending:<token>`: no network name has
    /// a colon).
    pub fn reservation(&self) -> String {
        reservation_owner(&self.token)
    }
}

/// The subnet-index owner of a reservation with `token`.
pub fn reservation_owner(token: &str) -> String {
    format!("pending:{token}")
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A published port: `host_port` on the host's addresses forwards to `port` in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMap {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the container.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
}

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{}:{}/{}", self.host_port, self.port, p)
    }
}

impl FromStr for PortMap {
    type Err = String;

    /// Parses `HOSTPORT:PORT[/tcp|udp]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => {
                return Err(format!("invalid protocol {other:?} in {s:?} (tcp or udp)"));
            }
            None => (s, Proto::Tcp),
        };
        let (h, c) = ports.split_once(':').ok_or_else(|| {
            format!("invalid port mapping {s:?}: expected HOSTPORT:PORT[/tcp|udp]")
        })?;
        let parse = |x: &str| -> Result<u16, String> {
            match x.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("invalid port {x:?} in {s:?} (1-65535)")),
                Ok(p) => Ok(p),
            }
        };
        Ok(PortMap {
            host_port: parse(h)?,
            port: parse(c)?,
            proto,
        })
    }
}

/// A container's attachment to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Endpoint id, unique within the network (the container name for `overlayctl attach`,
    /// Docker's endpoint id for the plugin).
    pub id: String,
    /// Network name.
    pub network: String,
    /// Host the endpoint lives on.
    pub host: String,
    /// Container name (empty until known, e.g. for Docker endpoints before the Engine API
    /// told us).
    pub name: String,
    /// Extra names on this network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Address on the overlay.
    pub ip: Ipv4Addr,
    /// MAC address on the overlay.
    pub mac: MacAddr,
    /// Published ports.
    #[serde(default)]
    pub publish: Vec<PortMap>,
}

/// A 48-bit MAC address, shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

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

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("invalid MAC address {s:?}"));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!("invalid MAC address {s:?}"));
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        if b[0] & 1 == 1 {
            return Err(format!("invalid MAC address {s:?}: multicast bit set"));
        }
        if b == [0; 6] {
            return Err(format!("invalid MAC address {s:?}: all zeros"));
        }
        Ok(MacAddr(b))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a network name: 1-48 characters of `[A-Za-z0-9_-]`, starting with a letter or
/// digit. Dots are refused because `name.network` must split unambiguously in DNS.
pub fn validate_network_name(name: &str) -> Result<(), String> {
    validate_label(name, "network name", 48, false)
}

/// Checks a container name or alias: 1-63 characters of `[A-Za-z0-9_.-]`, starting with a
/// letter or digit (Docker's rule).
pub fn validate_endpoint_name(name: &str) -> Result<(), String> {
    validate_label(name, "container name", 63, true)
}

fn validate_label(s: &str, what: &str, max: usize, dots: bool) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("invalid {what} {s:?}: must be 1-{max} characters"));
    }
    let first = s.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "invalid {what} {s:?}: must start with a letter or digit"
        ));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (dots && c == '.');
    if let Some(bad) = s.chars().find(|c| !ok(*c)) {
        return Err(format!(
            "invalid {what} {s:?}: character {bad:?} not allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portmap_parse() {
        assert_eq!(
            "8080:80".parse::<PortMap>().unwrap(),
            PortMap {
                host_port: 8080,
                port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!("53:5353/udp".parse::<PortMap>().unwrap().proto, Proto::Udp);
        assert!("8080".parse::<PortMap>().is_err());
        assert!("0:80".parse::<PortMap>().is_err());
        assert!("70000:80".parse::<PortMap>().is_err());
        assert!("80:80/sctp".parse::<PortMap>().is_err());
        assert_eq!(
            "80:81/udp".parse::<PortMap>().unwrap().to_string(),
            "80:81/udp"
        );
    }

    #[test]
    fn mac_parse_and_json() {
        let m: MacAddr = "02:42:0a:0a:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:0a:00:02");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"02:42:0a:0a:00:02\"");
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err());
        assert!("00:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("zz:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:42:0a".parse::<MacAddr>().is_err());
    }

    #[test]
    fn names() {
        assert!(validate_network_name("net1").is_ok());
        assert!(validate_network_name("my_net-2").is_ok());
        assert!(validate_network_name("a.b").is_err());
        assert!(validate_network_name("").is_err());
        assert!(validate_network_name("-x").is_err());
        assert!(validate_network_name("a/b").is_err());
        assert!(validate_endpoint_name("web.1").is_ok());
        assert!(validate_endpoint_name(&"x".repeat(64)).is_err());
    }
}
