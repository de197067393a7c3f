//! Pure nftables ruleset for the gateway, computed from state only.
//!
//! Everything lives in ONE table of our own, `table inet overlay_agent` (an `inet` table can
//! hold both filter and NAT chains on kernels >= 5.2), so Docker's or anybody else's tables are
//! never touched, and the whole table is replaced atomically by one `nft -f -` transaction:
//!
//! ```text
//! table inet overlay_agent {}          # create if missing, so the delete cannot fail
//! delete table inet overlay_agent      # drop whatever is there (including foreign edits)
//! table inet overlay_agent { ... }     # the desired content
//! ```
//!
//! Chains:
//! - `forward` (filter, priority filter): no container-to-container traffic across the
//!   bridge (in addition to `isolated on` bridge ports), only replies and DNATed (published)
//!   connections into the bridge, and no spoofed sources out of it. Policy accept: we never
//!   decide for traffic that is not ours.
//! - `prerouting` / `output` (nat, priority dstnat = -100; nft 1.0.6 only accepts the name
//!   `dstnat` on prerouting, so output uses the number): published ports, for packets addressed to
//!   any local address of the host (`fib daddr type local`), arriving from other hosts (prerouting)
//!   or sent by the host itself (output; loopback destinations are excluded because the kernel
//!   drops 127/8 sources routed out of a non-loopback device).
//! - `postrouting` (nat, priority srcnat): masquerade the gateway subnet leaving through any
//!   interface other than the bridge.
//!
//! Docker coexistence: an `accept` in our base chain does not stop the packet from being
//! evaluated by Docker's `ip filter FORWARD` chain (policy DROP) at the same hook. When dockerd
//! runs in the same network namespace, the operator has to add an exception to Docker's
//! `DOCKER-USER` chain; [`docker_user_exception`] renders the exact commands.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

pub use ovl_model::{PortMap, Proto};

use crate::error::{Error, Result};

/// Name of our nftables table (family `inet`).
pub const TABLE: &str = "overlay_agent";

/// A published port with the endpoint that owns it and that endpoint's gateway address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Owner endpoint id.
    pub endpoint: String,
    /// The container's address on the gateway bridge.
    pub ip: Ipv4Addr,
    /// The mapping.
    pub map: PortMap,
}

/// The input of [`render`]: everything the ruleset depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RulesetSpec {
    /// Bridge name.
    pub bridge: String,
    /// Gateway subnet.
    pub subnet: Ipv4Network,
    /// Published ports (any order; rendering sorts them).
    pub published: Vec<Published>,
}

/// Checks `new` (mappings requested for `endpoint`) against themselves and against
/// `existing`. Re-publishing exactly the same mapping for the same endpoint is allowed (an
/// idempotent retry); returns the mappings that are actually new.
pub fn check_publish(
    endpoint: &str,
    new: &[PortMap],
    existing: &[Published],
) -> Result<Vec<PortMap>> {
    let mut fresh: Vec<PortMap> = Vec::new();
    for m in new {
        if m.host_port == 0 || m.port == 0 {
            return Err(Error::InvalidPort {
                mapping: m.to_string(),
                reason: "port 0 is not allowed".into(),
            });
        }
        if let Some(other) = fresh
            .iter()
            .find(|f| f.host_port == m.host_port && f.proto == m.proto)
        {
            if other != m {
                return Err(Error::InvalidPort {
                    mapping: m.to_string(),
                    reason: format!("host port given twice in one request (also as {other})"),
                });
            }
            continue;
        }
        if let Some(p) = existing
            .iter()
            .find(|p| p.map.host_port == m.host_port && p.map.proto == m.proto)
        {
            if p.endpoint == endpoint && p.map == *m {
                continue;
            }
            return Err(Error::PortInUse {
                host_port: m.host_port,
                proto: m.proto,
                endpoint: p.endpoint.clone(),
            });
        }
        fresh.push(*m);
    }
    Ok(fresh)
}

fn q(name: &str) -> String {
    // Interface names cannot contain quotes (the kernel refuses '/', ':' and whitespace; we
    // validate names ourselves too), so plain quoting is enough.
    format!("\"{name}\"")
}

/// Renders the table definition (the desired content of `table inet overlay_agent`).
pub fn render_table(spec: &RulesetSpec) -> String {
    let br = q(&spec.bridge);
    let net = spec.subnet;
    let mut published = spec.published.clone();
    published.sort_by_key(|p| (p.map.proto, p.map.host_port));

    let mut s = String::new();
    let _ = writeln!(s, "table inet {TABLE} {{");

    s.push_str("\tchain forward {\n");
    s.push_str("\t\ttype filter hook forward priority filter; policy accept;\n");
    let _ = writeln!(s, "\t\tiifname {br} oifname {br} drop");
    let _ = writeln!(s, "\t\toifname {br} ct state established,related accept");
    let _ = writeln!(s, "\t\toifname {br} ct status dnat accept");
    let _ = writeln!(s, "\t\toifname {br} drop");
    let _ = writeln!(s, "\t\tiifname {br} ip saddr != {net} drop");
    let _ = writeln!(s, "\t\tiifname {br} accept");
    s.push_str("\t}\n");

    s.push_str("\tchain prerouting {\n");
    s.push_str("\t\ttype nat hook prerouting priority dstnat; policy accept;\n");
    for p in &published {
        let _ = writeln!(
            s,
            "\t\tiifname != {br} fib daddr type local {proto} dport {hp} dnat ip to {ip}:{cp}",
            proto = p.map.proto,
            hp = p.map.host_port,
            ip = p.ip,
            cp = p.map.port
        );
    }
    s.push_str("\t}\n");

    s.push_str("\tchain output {\n");
    s.push_str("\t\ttype nat hook output priority -100; policy accept;\n");
    for p in &published {
        let _ = writeln!(
            s,
            "\t\tip daddr != 127.0.0.0/8 fib daddr type local {proto} dport {hp} dnat ip to {ip}:{cp}",
            proto = p.map.proto,
            hp = p.map.host_port,
            ip = p.ip,
            cp = p.map.port
        );
    }
    s.push_str("\t}\n");

    s.push_str("\tchain postrouting {\n");
    s.push_str("\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
    let _ = writeln!(s, "\t\tip saddr {net} oifname != {br} masquerade");
    s.push_str("\t}\n");

    s.push_str("}\n");
    s
}

/// Renders the full atomic batch for `nft -f -`: create-if-missing, delete, redefine.
pub fn render_batch(spec: &RulesetSpec) -> String {
    format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{}",
        render_table(spec)
    )
}

/// Renders the batch that removes our table (used by teardown).
pub fn render_delete() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

/// The iptables commands that let our forwarded traffic through Docker's `FORWARD` policy
/// DROP (the agent keeps them in place itself, see [`crate::docker`]).
pub fn docker_user_exception(bridge: &str) -> Vec<String> {
    crate::docker::exception_rules(bridge)
        .into_iter()
        .map(|args| format!("iptables -I DOCKER-USER {}", args.join(" ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(h: u16, c: u16, proto: Proto) -> PortMap {
        PortMap {
            host_port: h,
            port: c,
            proto,
        }
    }

    fn published(ep: &str, ip: [u8; 4], map: PortMap) -> Published {
        Published {
            endpoint: ep.into(),
            ip: Ipv4Addr::from(ip),
            map,
        }
    }

    #[test]
    fn render_without_ports() {
        let spec = RulesetSpec {
            bridge: "ovl_gwbridge".into(),
            subnet: "172.18.0.0/20".parse().unwrap(),
            published: vec![],
        };
        let t = render_table(&spec);
        let expected = "table inet overlay_agent {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"ovl_gwbridge\" oifname \"ovl_gwbridge\" drop
\t\toifname \"ovl_gwbridge\" ct state established,related accept
\t\toifname \"ovl_gwbridge\" ct status dnat accept
\t\toifname \"ovl_gwbridge\" drop
\t\tiifname \"ovl_gwbridge\" ip saddr != 172.18.0.0/20 drop
\t\tiifname \"ovl_gwbridge\" accept
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 172.18.0.0/20 oifname != \"ovl_gwbridge\" masquerade
\t}
}
";
        assert_eq!(t, expected);
        let b = render_batch(&spec);
        assert!(b.starts_with("table inet overlay_agent {}\ndelete table inet overlay_agent\n"));
        assert!(b.ends_with(expected));
    }

    #[test]
    fn render_ports_sorted_and_deterministic() {
        let mut spec = RulesetSpec {
            bridge: "gw0".into(),
            subnet: "10.9.0.0/24".parse().unwrap(),
            published: vec![
                published("b", [10, 9, 0, 3], pm(9000, 53, Proto::Udp)),
                published("a", [10, 9, 0, 2], pm(8080, 80, Proto::Tcp)),
                published("b", [10, 9, 0, 3], pm(443, 8443, Proto::Tcp)),
            ],
        };
        let t = render_table(&spec);
        let pre: Vec<&str> = t
            .lines()
            .filter(|l| l.contains("iifname != \"gw0\" fib daddr"))
            .collect();
        assert_eq!(
            pre,
            vec![
                "\t\tiifname != \"gw0\" fib daddr type local tcp dport 443 dnat ip to 10.9.0.3:8443",
                "\t\tiifname != \"gw0\" fib daddr type local tcp dport 8080 dnat ip to 10.9.0.2:80",
                "\t\tiifname != \"gw0\" fib daddr type local udp dport 9000 dnat ip to 10.9.0.3:53",
            ]
        );
        assert!(t.contains(
            "\t\tip daddr != 127.0.0.0/8 fib daddr type local udp dport 9000 dnat ip to 10.9.0.3:53\n"
        ));
        spec.published.reverse();
        assert_eq!(render_table(&spec), t, "order of input must not matter");
    }

    #[test]
    fn publish_conflicts() {
        let existing = vec![published("a", [10, 0, 0, 2], pm(8080, 80, Proto::Tcp))];
        // Same host port, other endpoint: refused, naming the holder.
        let e = check_publish("b", &[pm(8080, 81, Proto::Tcp)], &existing).unwrap_err();
        assert!(
            matches!(&e, Error::PortInUse { host_port: 8080, proto: Proto::Tcp, endpoint } if endpoint == "a"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "host port 8080/tcp is already published by endpoint a"
        );
        // Same endpoint but different target: refused too.
        assert!(check_publish("a", &[pm(8080, 81, Proto::Tcp)], &existing).is_err());
        // Same host port, other protocol: fine.
        assert_eq!(
            check_publish("b", &[pm(8080, 80, Proto::Udp)], &existing).unwrap(),
            vec![pm(8080, 80, Proto::Udp)]
        );
        // Exact retry by the owner: nothing new.
        assert!(
            check_publish("a", &[pm(8080, 80, Proto::Tcp)], &existing)
                .unwrap()
                .is_empty()
        );
        // Duplicate inside one request with different targets.
        let e = check_publish(
            "c",
            &[pm(7000, 1, Proto::Tcp), pm(7000, 2, Proto::Tcp)],
            &existing,
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidPort { .. }), "{e}");
        // Port zero.
        assert!(check_publish("c", &[pm(0, 1, Proto::Tcp)], &existing).is_err());
        assert!(check_publish("c", &[pm(1, 0, Proto::Udp)], &existing).is_err());
        // One bad mapping refuses the whole request.
        assert!(
            check_publish(
                "c",
                &[pm(7001, 1, Proto::Tcp), pm(8080, 2, Proto::Tcp)],
                &existing
            )
            .is_err()
        );
    }

    #[test]
    fn docker_exception_mentions_bridge() {
        let cmds = docker_user_exception("ovl_gwbridge");
        assert_eq!(cmds.len(), 2);
        assert!(
            cmds.iter()
                .all(|c| c.contains("DOCKER-USER") && c.contains("ovl_gwbridge"))
        );
    }
}
