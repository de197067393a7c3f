//! Pure allocators. The store turns their choices into compare-and-swap writes.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

use crate::model::MacAddr;

/// Lowest VNI handed out automatically (below it: room for hand-picked ones and Docker's
/// historical range).
pub const VNI_MIN: u32 = 4096;
/// Highest VNI (24 bits).
pub const VNI_MAX: u32 = 16_777_215;

/// The default pool subnets are carved from, and the prefix length of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetPool {
    /// The pool.
    pub pool: Ipv4Network,
    /// Prefix length of each carved subnet.
    pub prefix: u8,
}

impl Default for SubnetPool {
    fn default() -> Self {
        SubnetPool {
            pool: Ipv4Network::new(Ipv4Addr::new(10, 10, 0, 0), 16).expect("valid"),
            prefix: 24,
        }
    }
}

/// Checks a requested VNI is in range.
pub fn check_vni(vni: u32) -> Result<(), String> {
    if !(1..=VNI_MAX).contains(&vni) {
        return Err(format!("VNI {vni} out of range (1-{VNI_MAX})"));
    }
    Ok(())
}

/// The lowest VNI from [`VNI_MIN`] not in `used`.
pub fn next_vni(used: &BTreeSet<u32>) -> Option<u32> {
    (VNI_MIN..=VNI_MAX).find(|v| !used.contains(v))
}

/// Whether two subnets share any address.
pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The first `/prefix` of `pool` that overlaps none of `used`.
pub fn next_subnet(pool: SubnetPool, used: &[Ipv4Network]) -> Option<Ipv4Network> {
    if pool.prefix < pool.pool.prefix() || pool.prefix > 30 {
        return None;
    }
    let step = 1u64 << (32 - pool.prefix);
    let start = u64::from(u32::from(pool.pool.network()));
    let end = start + pool.pool.size() as u64;
    let mut at = start;
    while at < end {
        let cand = Ipv4Network::new(Ipv4Addr::from(at as u32), pool.prefix).ok()?;
        if !used.iter().any(|u| overlaps(*u, cand)) {
            return Some(cand);
        }
        at += step;
    }
    None
}

/// Normalises and checks a user-given subnet: must be a network address, /8 to /30.
pub fn check_subnet(subnet: Ipv4Network) -> Result<Ipv4Network, String> {
    if subnet.prefix() < 8 || subnet.prefix() > 30 {
        return Err(format!(
            "subnet {subnet}: prefix must be between /8 and /30"
        ));
    }
    if subnet.network() != subnet.ip() {
        return Err(format!(
            "subnet {subnet} has host bits set; did you mean {}/{}?",
            subnet.network(),
            subnet.prefix()
        ));
    }
    Ok(subnet)
}

/// Whether `ip` can be given to a host in `subnet` (not the network or broadcast address).
pub fn is_host_addr(subnet: Ipv4Network, ip: Ipv4Addr) -> bool {
    subnet.contains(ip) && ip != subnet.network() && ip != subnet.broadcast()
}

/// The first usable host address of a subnet (the default gateway).
pub fn first_host(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Free host addresses of `subnet` not in `used`, in ascending order.
pub fn free_addrs<'a>(
    subnet: Ipv4Network,
    used: &'a BTreeSet<Ipv4Addr>,
) -> impl Iterator<Item = Ipv4Addr> + 'a {
    let lo = u32::from(subnet.network()) + 1;
    let hi = u32::from(subnet.broadcast());
    (lo..hi)
        .map(Ipv4Addr::from)
        .filter(move |ip| !used.contains(ip))
}

/// The MAC of an endpoint, derived from its address (`02:42:a:b:c:d`, as Docker does): a new
/// endpoint that reuses an address keeps the MAC, so stale ARP caches elsewhere stay right.
pub fn mac_for(ip: Ipv4Addr) -> MacAddr {
    MacAddr::from_ipv4(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn vni_allocation() {
        let mut used = BTreeSet::new();
        assert_eq!(next_vni(&used), Some(VNI_MIN));
        used.insert(VNI_MIN);
        used.insert(VNI_MIN + 2);
        assert_eq!(next_vni(&used), Some(VNI_MIN + 1));
        assert!(check_vni(0).is_err());
        assert!(check_vni(VNI_MAX + 1).is_err());
        assert!(check_vni(42).is_ok());
    }

    #[test]
    fn subnet_carving_skips_overlaps() {
        let pool = SubnetPool::default();
        assert_eq!(next_subnet(pool, &[]), Some(net("10.10.0.0/24")));
        assert_eq!(
            next_subnet(pool, &[net("10.10.0.0/24")]),
            Some(net("10.10.1.0/24"))
        );
        // A bigger user subnet covering the first two /24s.
        assert_eq!(
            next_subnet(pool, &[net("10.10.0.0/23")]),
            Some(net("10.10.2.0/24"))
        );
        // A smaller one inside the first /24 still blocks it.
        assert_eq!(
            next_subnet(pool, &[net("10.10.0.128/25")]),
            Some(net("10.10.1.0/24"))
        );
        // Exhaustion.
        let small = SubnetPool {
            pool: net("10.20.0.0/23"),
            prefix: 24,
        };
        assert_eq!(
            next_subnet(small, &[net("10.20.0.0/24"), net("10.20.1.0/24")]),
            None
        );
    }

    #[test]
    fn overlap_is_symmetric() {
        assert!(overlaps(net("10.0.0.0/8"), net("10.1.2.0/24")));
        assert!(overlaps(net("10.1.2.0/24"), net("10.0.0.0/8")));
        assert!(!overlaps(net("10.1.2.0/24"), net("10.1.3.0/24")));
    }

    #[test]
    fn subnet_checks() {
        assert!(check_subnet(net("10.1.2.0/24")).is_ok());
        assert!(
            check_subnet(net("10.1.2.5/24"))
                .unwrap_err()
                .contains("10.1.2.0/24")
        );
        assert!(check_subnet(net("10.0.0.0/31")).is_err());
        assert!(check_subnet(net("10.0.0.0/4")).is_err());
    }

    #[test]
    fn addresses() {
        let s = net("10.1.2.0/29");
        let used: BTreeSet<_> = [Ipv4Addr::new(10, 1, 2, 1), Ipv4Addr::new(10, 1, 2, 3)].into();
        let free: Vec<_> = free_addrs(s, &used).collect();
        assert_eq!(
            free,
            vec![
                Ipv4Addr::new(10, 1, 2, 2),
                Ipv4Addr::new(10, 1, 2, 4),
                Ipv4Addr::new(10, 1, 2, 5),
                Ipv4Addr::new(10, 1, 2, 6)
            ]
        );
        assert!(!is_host_addr(s, Ipv4Addr::new(10, 1, 2, 0)));
        assert!(!is_host_addr(s, Ipv4Addr::new(10, 1, 2, 7)));
        assert!(!is_host_addr(s, Ipv4Addr::new(10, 1, 3, 1)));
        assert_eq!(first_host(s), Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(
            mac_for(Ipv4Addr::new(10, 1, 2, 3)).to_string(),
            "02:42:0a:01:02:03"
        );
    }
}
