//! Pure choice and validation of the gateway bridge subnet.
//!
//! Docker's `docker_gwbridge` takes the first free local pool (usually `172.18.0.0/16`) and
//! notoriously collides with LAN/VPN routes (moby/moby#24046, docker/for-linux#1422). We instead
//! pick a `/20` (4094 container addresses per host, plenty for one host's gateway endpoints
//! while leaving room for other users of the private ranges) that overlaps neither a host route,
//! nor a host address, nor an overlay subnet. The default pool is, in order:
//!
//! 1. `172.18.0.0/16` .. `172.31.0.0/16` (Docker's own local pools, skipping `172.16/17` which
//!    are commonly used by hand), each split in `/20`s;
//! 2. `192.168.0.0/16` split in `/20`s.
//!
//! `100.64.0.0/10` is deliberately not in the pool: it is carrier-grade NAT space that
//! Tailscale and many ISPs route, so it collides as often as the private ranges do while being
//! less recognisable as "container addresses". `10.0.0.0/8` is left to overlay networks.
//!
//! Default routes (`/0`) are ignored when checking for overlap: they overlap everything and
//! mean "elsewhere", not "this subnet is in use".

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::error::{Error, Result};

/// Prefix length of the automatically chosen gateway subnets.
pub const DEFAULT_PREFIX: u8 = 20;

/// Longest prefix accepted for an explicit gateway subnet: a /29 leaves 6 host addresses, one
/// for the bridge and five for containers.
pub const MAX_PREFIX: u8 = 29;

/// Shortest prefix accepted for an explicit gateway subnet (anything wider is surely a typo).
pub const MIN_PREFIX: u8 = 8;

/// The default candidate pool, in preference order (see the module documentation).
pub fn default_pool() -> Vec<Ipv4Network> {
    let mut pool = Vec::new();
    for second in 18u8..=31 {
        split_into(
            &mut pool,
            Ipv4Network::new(Ipv4Addr::new(172, second, 0, 0), 16).expect("valid /16"),
        );
    }
    split_into(
        &mut pool,
        Ipv4Network::new(Ipv4Addr::new(192, 168, 0, 0), 16).expect("valid /16"),
    );
    pool
}

fn split_into(out: &mut Vec<Ipv4Network>, block: Ipv4Network) {
    let step = 1u32 << (32 - DEFAULT_PREFIX);
    let start = u32::from(block.network());
    let count = block.size() / step;
    for i in 0..count {
        let net = Ipv4Network::new(Ipv4Addr::from(start + i * step), DEFAULT_PREFIX)
            .expect("prefix is valid");
        out.push(net);
    }
}

/// True when two networks share at least one address.
pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Picks the first network of `pool` that overlaps nothing in `in_use` (host addresses and
/// routes; `/0` entries are ignored) and nothing in `avoid` (overlay subnets).
pub fn choose_subnet(
    pool: &[Ipv4Network],
    in_use: &[Ipv4Network],
    avoid: &[Ipv4Network],
) -> Option<Ipv4Network> {
    pool.iter().copied().find(|cand| {
        !in_use
            .iter()
            .filter(|n| n.prefix() != 0)
            .any(|n| overlaps(*cand, *n))
            && !avoid.iter().any(|n| overlaps(*cand, *n))
    })
}

/// Parses and checks a user-given gateway subnet (e.g. `--gw-subnet`).
///
/// Refuses: text that is not `A.B.C.D/N`, host bits set, prefixes outside
/// [`MIN_PREFIX`]..=[`MAX_PREFIX`], special-purpose ranges (0/8, loopback, link-local,
/// multicast/reserved), and overlap with an overlay subnet or a host route/address.
pub fn validate_gw_subnet(
    cidr: &str,
    in_use: &[Ipv4Network],
    overlay_subnets: &[Ipv4Network],
) -> Result<Ipv4Network> {
    let invalid = |reason: String| Error::InvalidSubnet {
        input: cidr.to_string(),
        reason,
    };
    let text = cidr.trim();
    if !text.contains('/') {
        return Err(invalid("expected CIDR notation A.B.C.D/N".into()));
    }
    let net: Ipv4Network = text
        .parse()
        .map_err(|e| invalid(format!("not an IPv4 CIDR ({e})")))?;
    check_subnet(net, in_use, overlay_subnets).map_err(|e| match e {
        Error::InvalidSubnet { reason, .. } => invalid(reason),
        other => other,
    })
}

/// Same checks as [`validate_gw_subnet`] on an already parsed network.
pub fn check_subnet(
    net: Ipv4Network,
    in_use: &[Ipv4Network],
    overlay_subnets: &[Ipv4Network],
) -> Result<Ipv4Network> {
    let invalid = |reason: String| Error::InvalidSubnet {
        input: net.to_string(),
        reason,
    };
    if net.prefix() < MIN_PREFIX || net.prefix() > MAX_PREFIX {
        return Err(invalid(format!(
            "prefix /{} out of range: use /{MIN_PREFIX} to /{MAX_PREFIX} (a /{MAX_PREFIX} \
             leaves 5 container addresses)",
            net.prefix()
        )));
    }
    if net.ip() != net.network() {
        return Err(invalid(format!(
            "host bits set (did you mean {}/{}?)",
            net.network(),
            net.prefix()
        )));
    }
    let special: [(Ipv4Network, &str); 5] = [
        (net4(0, 0, 0, 0, 8), "0.0.0.0/8 is reserved"),
        (net4(127, 0, 0, 0, 8), "127.0.0.0/8 is loopback"),
        (net4(169, 254, 0, 0, 16), "169.254.0.0/16 is link-local"),
        (net4(224, 0, 0, 0, 4), "224.0.0.0/4 is multicast"),
        (net4(240, 0, 0, 0, 4), "240.0.0.0/4 is reserved"),
    ];
    for (range, why) in special {
        if overlaps(net, range) {
            return Err(invalid(why.to_string()));
        }
    }
    if let Some(overlay) = overlay_subnets.iter().find(|o| overlaps(net, **o)) {
        return Err(Error::OverlapsOverlay {
            subnet: net,
            overlay: *overlay,
        });
    }
    if let Some(host) = in_use
        .iter()
        .filter(|n| n.prefix() != 0)
        .find(|h| overlaps(net, **h))
    {
        return Err(Error::OverlapsHost {
            subnet: net,
            host: *host,
        });
    }
    Ok(net)
}

fn net4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(a, b, c, d), prefix).expect("valid constant network")
}

/// The bridge's address: the first host address of the subnet.
pub fn bridge_address(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The first free container address of `subnet` (after the bridge address, before broadcast)
/// that is not in `taken`.
pub fn next_free_address(subnet: Ipv4Network, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.broadcast());
    (first..last)
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn pool_starts_at_172_18_and_is_slash_20() {
        let pool = default_pool();
        assert_eq!(pool[0], n("172.18.0.0/20"));
        assert_eq!(pool[1], n("172.18.16.0/20"));
        assert!(pool.iter().all(|p| p.prefix() == DEFAULT_PREFIX));
        assert_eq!(*pool.last().unwrap(), n("192.168.240.0/20"));
        assert_eq!(pool.len(), 14 * 16 + 16);
    }

    #[test]
    fn choose_takes_first_when_nothing_in_use() {
        assert_eq!(
            choose_subnet(&default_pool(), &[], &[]),
            Some(n("172.18.0.0/20"))
        );
    }

    #[test]
    fn choose_avoids_a_host_route_covering_172_18() {
        let in_use = [n("172.18.0.0/16"), n("198.18.0.0/24")];
        assert_eq!(
            choose_subnet(&default_pool(), &in_use, &[]),
            Some(n("172.19.0.0/20"))
        );
    }

    #[test]
    fn choose_avoids_host_address_inside_a_candidate() {
        let in_use = [n("172.18.5.7/32")];
        assert_eq!(
            choose_subnet(&default_pool(), &in_use, &[]),
            Some(n("172.18.16.0/20"))
        );
    }

    #[test]
    fn choose_avoids_overlays_and_ignores_default_route() {
        let in_use = [n("0.0.0.0/0")];
        let avoid = [n("172.18.0.0/15")];
        assert_eq!(
            choose_subnet(&default_pool(), &in_use, &avoid),
            Some(n("172.20.0.0/20"))
        );
    }

    #[test]
    fn choose_none_when_everything_collides() {
        let in_use = [n("172.16.0.0/12"), n("192.168.0.0/16")];
        assert_eq!(choose_subnet(&default_pool(), &in_use, &[]), None);
    }

    #[test]
    fn choose_wide_supernet_inside_candidate_counts() {
        // A /8 route covering 10/8 does not touch the 172 pool.
        let in_use = [n("10.0.0.0/8")];
        assert_eq!(
            choose_subnet(&default_pool(), &in_use, &[]),
            Some(n("172.18.0.0/20"))
        );
    }

    #[test]
    fn validate_accepts_good_subnet() {
        assert_eq!(
            validate_gw_subnet("10.99.0.0/24", &[n("198.18.0.0/24")], &[n("10.0.0.0/24")]).unwrap(),
            n("10.99.0.0/24")
        );
    }

    #[test]
    fn validate_rejects_garbage() {
        for bad in [
            "",
            "banana",
            "10.0.0.0",
            "10.0.0.0/33",
            "300.1.1.1/24",
            "::1/64",
        ] {
            let err = validate_gw_subnet(bad, &[], &[]).unwrap_err();
            assert!(matches!(err, Error::InvalidSubnet { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn validate_rejects_bad_prefixes_and_host_bits() {
        let e = validate_gw_subnet("10.0.0.0/30", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("prefix /30 out of range"), "{e}");
        let e = validate_gw_subnet("10.0.0.0/7", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = validate_gw_subnet("10.0.0.5/24", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("did you mean 10.0.0.0/24"), "{e}");
        let e = validate_gw_subnet("127.1.0.0/16", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
    }

    #[test]
    fn validate_rejects_overlay_overlap() {
        let e = validate_gw_subnet("10.0.0.0/16", &[], &[n("10.0.3.0/24")]).unwrap_err();
        assert!(matches!(e, Error::OverlapsOverlay { .. }), "{e}");
        assert!(e.to_string().contains("10.0.3.0/24"), "{e}");
    }

    #[test]
    fn validate_rejects_host_overlap_but_not_default_route() {
        let e = validate_gw_subnet("172.18.3.0/24", &[n("172.18.0.0/16")], &[]).unwrap_err();
        assert!(matches!(e, Error::OverlapsHost { .. }), "{e}");
        assert!(validate_gw_subnet("172.18.3.0/24", &[n("0.0.0.0/0")], &[]).is_ok());
    }

    #[test]
    fn addresses() {
        let s = n("172.18.0.0/29");
        assert_eq!(bridge_address(s), Ipv4Addr::new(172, 18, 0, 1));
        assert_eq!(
            next_free_address(s, &[]),
            Some(Ipv4Addr::new(172, 18, 0, 2))
        );
        let taken: Vec<Ipv4Addr> = (2..=5).map(|d| Ipv4Addr::new(172, 18, 0, d)).collect();
        assert_eq!(
            next_free_address(s, &taken),
            Some(Ipv4Addr::new(172, 18, 0, 6))
        );
        let taken: Vec<Ipv4Addr> = (2..=6).map(|d| Ipv4Addr::new(172, 18, 0, d)).collect();
        assert_eq!(next_free_address(s, &taken), None, ".7 is broadcast");
    }
}
