//! Byte-exact mirrors of the structs in `ebpf/ovl_common.h`, and the pure conversions between
//! them and the public types. Keep in step with the C header.

use std::net::Ipv4Addr;

use ovl_model::MacAddr;

use crate::error::Error;
use crate::maps::EndpointInfo;

/// A MAC address as the maps lay it out.
pub type Mac = [u8; 6];

/// `OVL_ABI_VERSION` in the C header.
pub(crate) const ABI_VERSION: u32 = 4;
/// `OVL_MAX_VTEPS`.
pub const MAX_FLOOD_VTEPS: usize = 64;
/// `OVL_MAX_LOCAL`.
pub const MAX_LOCAL_PER_VNI: usize = 64;

/// `struct ovl_endpoint`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawEndpoint {
    pub vni: u32,
    pub ip: u32,
    pub mac: Mac,
    pub pad: u16,
}

/// `struct ovl_mac_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RawMacKey {
    pub vni: u32,
    pub mac: Mac,
    pub pad: u16,
}

/// `struct ovl_ip_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawIpKey {
    pub vni: u32,
    pub ip: u32,
}

/// `struct ovl_mac`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawMac {
    pub mac: Mac,
    pub pad: u16,
}

/// `struct ovl_remote`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawRemote {
    pub vtep: u32,
    /// Not read by the programs: kept so the remote's ARP entry can be found in O(1).
    pub ip: u32,
}

/// `struct ovl_flood`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawFlood {
    pub count: u32,
    pub vteps: [u32; MAX_FLOOD_VTEPS],
}

/// `struct ovl_local_flood`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawLocalFlood {
    pub count: u32,
    pub ifindexes: [u32; MAX_LOCAL_PER_VNI],
}

/// `struct ovl_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawConfig {
    pub vxlan_ifindex: u32,
    pub abi_version: u32,
    /// Network byte order, as in the outer IPv4 header.
    pub local_vtep: u32,
    /// Network byte order.
    pub vxlan_port: u16,
    pub pad: u16,
    /// Interface holding `local_vtep`; 0 turns in-place encapsulation and decapsulation off
    /// (every frame goes through the vxlan device).
    pub underlay_ifindex: u32,
    /// The overlay MTU.
    pub endpoint_mtu: u32,
}

/// `struct ovl_trace`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawTrace {
    /// `enum ovl_action`.
    pub action: u32,
    /// Target ifindex (redirect/encap) or the counter index of a drop.
    pub ifindex: u32,
    /// VNI.
    pub tunnel_id: u32,
    /// Remote VTEP, host byte order.
    pub remote_ipv4: u32,
    /// Copies sent by a flood.
    pub copies: u32,
    /// `OVL_CACHED_*` bits: which lookups the slot arrays served.
    pub cached: u32,
}

/// `OVL_CACHED_*`: bits of [`RawTrace::cached`].
pub mod cached {
    /// The sender's endpoint came from `EP_SLOTS`.
    pub const EP: u32 = 1;
    /// The remote's VTEP came from `REMOTE_SLOTS`.
    pub const REMOTE: u32 = 2;
    /// The local endpoint came from `LOCAL_SLOTS`.
    pub const LOCAL: u32 = 4;
}

/// `OVL_COUNTER_ROW`: counters per CPU row of `COUNTERS`.
pub(crate) const COUNTER_ROW: u32 = 32;

/// `OVL_EP_SLOTS`: slots of the endpoint array (indexed by ifindex modulo this).
pub const EP_SLOTS: u32 = 1024;
/// `OVL_REMOTE_SLOTS`: slots of the remote array (indexed by [`mac_slot`]).
pub const REMOTE_SLOTS: u32 = 1024;
/// `OVL_LOCAL_SLOTS`: slots of the local array (indexed by [`mac_slot`]).
pub const LOCAL_SLOTS: u32 = 1024;

/// `struct ovl_ep_slot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawEpSlot {
    /// Sequence counter: odd while the agent writes the slot.
    pub seq: u32,
    /// 0: empty.
    pub ifindex: u32,
    pub ep: RawEndpoint,
}

/// `struct ovl_mac_slot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawMacSlot {
    /// Sequence counter: odd while the agent writes the slot.
    pub seq: u32,
    pub value: u32,
    /// VNI 0: empty.
    pub key: RawMacKey,
    pub pad: u32,
}

/// `mix32` in overlay.c.
fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// `ovl_mac_slot` in overlay.c: where a (VNI, MAC) key sits in a MAC slot array of
/// `entries` (a power of two).
pub fn mac_slot(vni: u32, mac: Mac, entries: u32) -> u32 {
    // The program loads the first four bytes as a little-endian u32 (x86-64 BPF).
    let lo = u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let hi = u32::from(mac[4]) | (u32::from(mac[5]) << 8);
    mix32(vni ^ mix32(lo ^ (hi << 16) ^ hi)) & (entries - 1)
}

// SAFETY: all of these are repr(C), contain only integers and byte arrays, have explicit
// padding fields and therefore no uninitialised bytes; any bit pattern is valid.
unsafe impl aya::Pod for RawEndpoint {}
// SAFETY: see above.
unsafe impl aya::Pod for RawMacKey {}
// SAFETY: see above.
unsafe impl aya::Pod for RawIpKey {}
// SAFETY: see above.
unsafe impl aya::Pod for RawMac {}
// SAFETY: see above.
unsafe impl aya::Pod for RawRemote {}
// SAFETY: see above.
unsafe impl aya::Pod for RawFlood {}
// SAFETY: see above.
unsafe impl aya::Pod for RawLocalFlood {}
// SAFETY: see above.
unsafe impl aya::Pod for RawConfig {}
// SAFETY: see above.
unsafe impl aya::Pod for RawTrace {}
// SAFETY: see above.
unsafe impl aya::Pod for RawEpSlot {}
// SAFETY: see above.
unsafe impl aya::Pod for RawMacSlot {}

/// An IPv4 address as the program compares it: the wire bytes read as a native u32.
pub(crate) fn ip_wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Inverse of [`ip_wire`].
pub(crate) fn ip_from_wire(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// An IPv4 address as `bpf_tunnel_key.remote_ipv4` wants it: host byte order.
pub(crate) fn ip_host(ip: Ipv4Addr) -> u32 {
    u32::from(ip)
}

pub(crate) fn mac_key(vni: u32, mac: MacAddr) -> RawMacKey {
    let mac = mac.0;
    RawMacKey { vni, mac, pad: 0 }
}

pub(crate) fn ip_key(vni: u32, ip: Ipv4Addr) -> RawIpKey {
    RawIpKey {
        vni,
        ip: ip_wire(ip),
    }
}

impl From<EndpointInfo> for RawEndpoint {
    fn from(e: EndpointInfo) -> Self {
        RawEndpoint {
            vni: e.vni,
            ip: ip_wire(e.ip),
            mac: e.mac.0,
            pad: 0,
        }
    }
}

impl From<RawEndpoint> for EndpointInfo {
    fn from(r: RawEndpoint) -> Self {
        EndpointInfo {
            vni: r.vni,
            mac: MacAddr(r.mac),
            ip: ip_from_wire(r.ip),
        }
    }
}

/// Builds the FLOOD value for a VNI: deduplicated, sorted (stable across calls, so an
/// unchanged list rewrites identical bytes), at most [`MAX_FLOOD_VTEPS`].
pub(crate) fn flood_value(vni: u32, vteps: &[Ipv4Addr]) -> Result<RawFlood, Error> {
    let mut list: Vec<Ipv4Addr> = vteps.to_vec();
    list.sort();
    list.dedup();
    if list.len() > MAX_FLOOD_VTEPS {
        return Err(Error::TooMany {
            what: "flood VTEPs",
            vni,
            max: MAX_FLOOD_VTEPS,
        });
    }
    for v in &list {
        validate_unicast_ip(*v, "VTEP")?;
    }
    let mut raw = RawFlood {
        count: list.len() as u32,
        vteps: [0; MAX_FLOOD_VTEPS],
    };
    for (slot, v) in raw.vteps.iter_mut().zip(&list) {
        *slot = ip_host(*v);
    }
    Ok(raw)
}

/// The VTEPs of a FLOOD value.
pub(crate) fn flood_list(raw: &RawFlood) -> Vec<Ipv4Addr> {
    raw.vteps
        .iter()
        .take((raw.count as usize).min(MAX_FLOOD_VTEPS))
        .map(|v| Ipv4Addr::from(*v))
        .collect()
}

/// The ifindexes of a LOCAL_FLOOD value.
pub(crate) fn local_list(raw: &RawLocalFlood) -> Vec<u32> {
    raw.ifindexes
        .iter()
        .take((raw.count as usize).min(MAX_LOCAL_PER_VNI))
        .copied()
        .collect()
}

/// LOCAL_FLOOD value for `list` (sorted, deduplicated); `None` when empty (delete the entry).
pub(crate) fn local_flood_value(vni: u32, list: &[u32]) -> Result<Option<RawLocalFlood>, Error> {
    let mut list = list.to_vec();
    list.sort_unstable();
    list.dedup();
    if list.is_empty() {
        return Ok(None);
    }
    if list.len() > MAX_LOCAL_PER_VNI {
        return Err(Error::TooMany {
            what: "local endpoints",
            vni,
            max: MAX_LOCAL_PER_VNI,
        });
    }
    let mut raw = RawLocalFlood {
        count: list.len() as u32,
        ifindexes: [0; MAX_LOCAL_PER_VNI],
    };
    for (slot, v) in raw.ifindexes.iter_mut().zip(&list) {
        *slot = *v;
    }
    Ok(Some(raw))
}

/// A VNI must fit the 24-bit VXLAN field and not be 0.
pub(crate) fn validate_vni(vni: u32) -> Result<(), Error> {
    if vni == 0 || vni > 0x00ff_ffff {
        return Err(Error::InvalidInput(format!(
            "VNI {vni} is outside 1..=16777215"
        )));
    }
    Ok(())
}

/// An endpoint or remote MAC must be a unicast, non-zero address.
pub(crate) fn validate_mac(mac: MacAddr) -> Result<(), Error> {
    let mac = mac.0;
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err(Error::InvalidInput(format!(
            "MAC {} is not a unicast address",
            MacAddr(mac)
        )));
    }
    Ok(())
}

/// Endpoint addresses and VTEPs must be usable unicast addresses.
pub(crate) fn validate_unicast_ip(ip: Ipv4Addr, what: &str) -> Result<(), Error> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(Error::InvalidInput(format!(
            "{what} address {ip} is not a unicast address"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_header() {
        assert_eq!(size_of::<RawEndpoint>(), 16);
        assert_eq!(size_of::<RawMacKey>(), 12);
        assert_eq!(size_of::<RawIpKey>(), 8);
        assert_eq!(size_of::<RawMac>(), 8);
        assert_eq!(size_of::<RawRemote>(), 8);
        assert_eq!(size_of::<RawFlood>(), 4 + 4 * MAX_FLOOD_VTEPS);
        assert_eq!(size_of::<RawLocalFlood>(), 4 + 4 * MAX_LOCAL_PER_VNI);
        assert_eq!(size_of::<RawTrace>(), 24);
        assert_eq!(size_of::<RawEpSlot>(), 24);
        assert_eq!(size_of::<RawMacSlot>(), 24);
    }

    #[test]
    fn mac_slots_spread_and_stay_in_range() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..128u32 {
            let mac = [0x02, 0x42, 10, 0, (i >> 8) as u8, i as u8];
            let s = mac_slot(4096, mac, LOCAL_SLOTS);
            assert!(s < LOCAL_SLOTS);
            seen.insert(s);
        }
        // 128 keys into 1024 slots: a random spread takes about 121 distinct slots.
        assert!(seen.len() >= 112, "{}", seen.len());
        // The VNI is part of the key.
        let mac = [0x02, 0x42, 10, 0, 0, 2];
        assert_ne!(
            mac_slot(1, mac, REMOTE_SLOTS),
            mac_slot(2, mac, REMOTE_SLOTS)
        );
    }

    #[test]
    fn byte_orders() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        // Wire order: the first octet is the lowest-addressed byte.
        assert_eq!(ip_wire(ip).to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(ip_from_wire(ip_wire(ip)), ip);
        // Host order for the tunnel key.
        assert_eq!(ip_host(ip), 0x0a00_0001);
    }

    #[test]
    fn endpoint_roundtrip() {
        let e = EndpointInfo {
            vni: 42,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ip: Ipv4Addr::new(10, 1, 2, 3),
        };
        assert_eq!(EndpointInfo::from(RawEndpoint::from(e)), e);
    }

    #[test]
    fn flood_is_sorted_deduplicated_and_bounded() {
        let a = Ipv4Addr::new(198, 18, 0, 12);
        let b = Ipv4Addr::new(198, 18, 0, 11);
        let raw = flood_value(7, &[a, b, a]).unwrap();
        assert_eq!(raw.count, 2);
        assert_eq!(flood_list(&raw), vec![b, a]);

        let many: Vec<Ipv4Addr> = (0..=MAX_FLOOD_VTEPS as u32)
            .map(|i| Ipv4Addr::from(0xc612_0000 + i + 1))
            .collect();
        assert!(matches!(
            flood_value(7, &many),
            Err(Error::TooMany { max: 64, .. })
        ));
        assert!(flood_value(7, &[Ipv4Addr::UNSPECIFIED]).is_err());
        assert!(flood_value(7, &[Ipv4Addr::new(224, 0, 0, 1)]).is_err());
    }

    #[test]
    fn local_flood_empty_means_delete() {
        assert_eq!(local_flood_value(1, &[]).unwrap(), None);
        let raw = local_flood_value(1, &[9, 3, 9]).unwrap().unwrap();
        assert_eq!(local_list(&raw), vec![3, 9]);
        let many: Vec<u32> = (1..=MAX_LOCAL_PER_VNI as u32 + 1).collect();
        assert!(local_flood_value(1, &many).is_err());
    }

    #[test]
    fn validation() {
        assert!(validate_vni(0).is_err());
        assert!(validate_vni(1 << 24).is_err());
        assert!(validate_vni(0xff_ffff).is_ok());
        assert!(validate_mac(MacAddr([0; 6])).is_err());
        assert!(validate_mac(MacAddr([1, 0, 0x5e, 0, 0, 1])).is_err());
        assert!(validate_mac(MacAddr([2, 0, 0, 0, 0, 1])).is_ok());
        assert!(validate_unicast_ip(Ipv4Addr::BROADCAST, "x").is_err());
        assert!(validate_unicast_ip(Ipv4Addr::new(10, 0, 0, 1), "x").is_ok());
    }
}
