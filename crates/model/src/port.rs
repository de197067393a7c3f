//! Published ports: `overlayctl attach --publish`, the endpoint records, the gateway's DNAT.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A published port: `host_port` on the host's addresses forwards to `port` in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMap {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the container (`container_port` in gateway state files written before the
    /// vocabulary was shared).
    #[serde(alias = "container_port")]
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
}

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.port, self.proto)
    }
}

impl FromStr for PortMap {
    type Err = Error;

    /// Parses `HOSTPORT:PORT[/tcp|udp]` (tcp by default).
    fn from_str(s: &str) -> Result<Self> {
        let bad = |rule| Error::Port {
            value: s.to_string(),
            rule,
        };
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(bad("protocol must be tcp or udp")),
            None => (s, Proto::Tcp),
        };
        let (h, c) = ports
            .split_once(':')
            .ok_or_else(|| bad("expected HOSTPORT:PORT[/tcp|udp]"))?;
        let port = |x: &str| match x.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("ports must be numbers from 1 to 65535")),
            Ok(p) => Ok(p),
        };
        Ok(PortMap {
            host_port: port(h)?,
            port: port(c)?,
            proto,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!(
            "8080:80".parse::<PortMap>().unwrap(),
            PortMap {
                host_port: 8080,
                port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!("53:5353/udp".parse::<PortMap>().unwrap().proto, Proto::Udp);
        for bad in ["8080", "0:80", "70000:80", "80:80/sctp", "80:0", "a:b"] {
            assert!(bad.parse::<PortMap>().is_err(), "{bad}");
        }
        assert_eq!(
            "80:81/udp".parse::<PortMap>().unwrap().to_string(),
            "80:81/udp"
        );
    }

    #[test]
    fn json_reads_both_field_names() {
        let p = PortMap {
            host_port: 8080,
            port: 80,
            proto: Proto::Tcp,
        };
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, r#"{"host_port":8080,"port":80,"proto":"tcp"}"#);
        let old: PortMap =
            serde_json::from_str(r#"{"host_port":8080,"container_port":80,"proto":"tcp"}"#)
                .unwrap();
        assert_eq!(old, p);
    }
}
