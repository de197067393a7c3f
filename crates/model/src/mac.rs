//! One MAC address type for the whole agent: KV records, desired state, netlink and BPF maps.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A 48-bit Ethernet MAC address, shown and serialized as `aa:bb:cc:dd:ee:ff`.
///
/// Any value parses (FDB flood entries use the all-zeros address); [`MacAddr::parse_host`]
/// and [`MacAddr::is_host`] are for addresses an interface may carry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The all-zeros address, the key of VXLAN flood (BUM) entries.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// True for 00:00:00:00:00:00.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// True if the group bit is clear.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }

    /// True for an address an interface may carry: unicast and not all zeros.
    pub fn is_host(&self) -> bool {
        self.is_unicast() && !self.is_zero()
    }

    /// From raw netlink bytes (exactly 6).
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    /// Docker's convention: 02:42 followed by the IPv4 address.
    pub fn from_ipv4(ip: Ipv4Addr) -> MacAddr {
        let o = ip.octets();
        MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    /// Parses an address for an interface (user input): refuses multicast and all-zeros.
    pub fn parse_host(s: &str) -> Result<MacAddr> {
        let m: MacAddr = s.parse()?;
        let bad = |detail| Error::Mac {
            value: s.to_string(),
            detail: Some(detail),
        };
        if !m.is_unicast() {
            return Err(bad("multicast bit set"));
        }
        if m.is_zero() {
            return Err(bad("all zeros"));
        }
        Ok(m)
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

    /// Six two-digit hex bytes separated by `:` (or `-`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Mac {
            value: s.to_string(),
            detail: None,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_and_json() {
        let m: MacAddr = "02:42:0A:00:00:FF".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:00:00:ff");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"02:42:0a:00:00:ff\"");
        assert_eq!(
            serde_json::from_str::<MacAddr>("\"02-42-0a-00-00-ff\"").unwrap(),
            m
        );
        assert!(m.is_host());
        for bad in [
            "02:42:0a:00:00",
            "02:42:0a:00:00:ff:01",
            "zz:42:0a:00:00:ff",
            "2:42:0a:00:00:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 0, 2)).to_string(),
            "02:42:0a:00:00:02"
        );
        assert!(MacAddr::ZERO.is_zero() && !MacAddr::ZERO.is_host());
    }

    #[test]
    fn host_addresses_are_unicast_and_not_zero() {
        assert!(MacAddr::parse_host("02:42:0a:0a:00:02").is_ok());
        let e = MacAddr::parse_host("01:00:5e:00:00:01")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid MAC address \"01:00:5e:00:00:01\": multicast bit set"
        );
        let e = MacAddr::parse_host("00:00:00:00:00:00")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("all zeros"), "{e}");
        assert!(MacAddr::parse_host("nope").is_err());
    }
}
