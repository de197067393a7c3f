//! Interface names the agent gives its devices. They are derived from stable inputs (endpoint
//! id, VNI), so a restarted agent finds what an earlier one made, and they never change
//! between versions: existing devices are adopted by name.

/// Picks `prefix` with the lowest free index: `eth0`, else `eth1`, ...
pub fn free_ifname(existing: &[String], prefix: &str) -> String {
    (0u32..)
        .map(|n| format!("{prefix}{n}"))
        .find(|candidate| !existing.iter().any(|e| e == candidate))
        .unwrap_or_else(|| unreachable!("u32 range exhausted"))
}

/// The kernel datapath's bridge port of an endpoint (unique within its network's sandbox):
/// short ids stay readable (`ve-<id>`), others are hashed (`ve<13 hex>`); the two forms cannot
/// collide because hex digits contain no `-`.
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

/// The eBPF datapath's host end of an endpoint: VNI-qualified, since every network's host
/// ends share one namespace and endpoint ids are only unique per network.
pub fn ebpf_port_name(vni: u32, endpoint_id: &str) -> String {
    port_name(&format!("{vni}.{endpoint_id}"))
}

/// Temporary name of a container end while it is set up in the container (found again after
/// an interrupted attach, because it derives from the same key). `vni` is `None` on the
/// kernel datapath, whose sandboxes are per network.
pub fn temp_peer_name(vni: Option<u32>, endpoint_id: &str) -> String {
    match vni {
        None => format!("vt{:013x}", fnv1a(endpoint_id.as_bytes()) >> 12),
        Some(vni) => {
            let p = port_name(&format!("{vni}/{endpoint_id}"));
            format!("vt{}", &p[2..])
        }
    }
}

/// Temporary name of a kernel-datapath vxlan device in the host namespace before it moves
/// into its sandbox.
pub fn temp_vxlan_name(vni: u32) -> String {
    format!("ovx-{vni:06x}")
}

/// Name of a Docker endpoint's container end while it waits in the host namespace for
/// dockerd to move it into the container (which renames it `ethN`).
pub fn docker_temp_name(endpoint_id: &str) -> String {
    let short: String = endpoint_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("ovd{short}")
}

/// The gateway bridge's port of a container (`ovgw` + 10 hex digits of a stable hash).
pub fn gateway_port_name(key: &str) -> String {
    format!("ovgw{:010x}", fnv1a(key.as_bytes()) & 0xff_ffff_ffff)
}

/// Temporary name of a container's gateway interface before it moves into the container.
pub fn gateway_temp_name(key: &str) -> String {
    format!("ovgc{:010x}", fnv1a(key.as_bytes()) & 0xff_ffff_ffff)
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
    use crate::names::validate_ifname;

    #[test]
    fn free_ifname_picks_lowest_free() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(free_ifname(&[], "eth"), "eth0");
        assert_eq!(free_ifname(&v(&["lo", "eth0", "eth2"]), "eth"), "eth1");
        assert_eq!(free_ifname(&v(&["eth0", "eth1", "eth10"]), "eth"), "eth2");
        assert_eq!(free_ifname(&v(&["eth0"]), "net"), "net0");
    }

    /// The names of devices made by earlier versions: changing any of these would orphan them.
    #[test]
    fn names_are_stable_across_versions() {
        assert_eq!(port_name("c1"), "ve-c1");
        assert_eq!(ebpf_port_name(256, "c1"), "ve-256.c1");
        assert_eq!(temp_vxlan_name(4096), "ovx-001000");
        assert_eq!(docker_temp_name("3f4e-8d2c1b0a99887766"), "ovd3f4e8d2c1b0a");
        let long = "3f4e8d2c1b0a99887766554433221100ffeeddccbbaa";
        assert_eq!(
            port_name(long),
            format!("ve{:013x}", fnv1a(long.as_bytes()) >> 12)
        );
        assert_eq!(
            temp_peer_name(None, long),
            format!("vt{:013x}", fnv1a(long.as_bytes()) >> 12)
        );
        assert_eq!(
            &temp_peer_name(Some(256), "c1")[2..],
            &port_name("256/c1")[2..]
        );
        assert_eq!(
            gateway_port_name("e1"),
            format!("ovgw{:010x}", fnv1a(b"e1") & 0xff_ffff_ffff)
        );
    }

    #[test]
    fn names_fit_and_differ() {
        let long = "3f4e8d2c1b0a99887766554433221100ffeeddccbbaa";
        for n in [
            port_name(long),
            port_name("abcdefghijkl"),
            ebpf_port_name(16_000_000, "a-rather-long-container-id"),
            temp_peer_name(None, long),
            temp_peer_name(Some(256), "c1"),
            temp_vxlan_name(crate::MAX_VNI),
            docker_temp_name(long),
            gateway_port_name(long),
            gateway_temp_name(long),
        ] {
            assert!(validate_ifname(&n).is_ok(), "{n}");
        }
        assert_ne!(port_name(long), port_name(&long.replace('a', "b")));
        assert_ne!(ebpf_port_name(256, "c1"), ebpf_port_name(257, "c1"));
        assert_ne!(temp_peer_name(Some(256), "c1"), ebpf_port_name(256, "c1"));
        assert!(port_name("a/b").starts_with("ve") && !port_name("a/b").contains('/'));
    }
}
