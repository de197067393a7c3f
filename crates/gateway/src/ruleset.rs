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
//! - `dns_guard` (filter, input, only with a [`DnsGuard`]): the agent's DNS address for Docker
//!   containers (a link-local address on a dummy interface) is reachable from the host itself
//!   (`lo`) and, for DNS only, from the container bridges named in the guard (with a source
//!   address routed back through the bridge it came from); everything else
//!   sent to it (the underlay, other hosts) is dropped and counted in the named counter
//!   [`DNS_DROPPED`]. The link-local address is not routed anyway; the rule is what stops a
//!   neighbour on the underlay that routes it to us by hand (the kernel answers ARP for any
//!   local address on any interface).
//!
//! - `vxlan_admission` (filter, input, once the agent has given the VTEPs of the cluster's
//!   hosts): VXLAN (the agent's UDP port) is accepted only from those addresses; the rest
//!   is dropped and counted in [`VXLAN_REFUSED`]. Both datapaths receive VXLAN through a
//!   UDP socket of the host, so this one rule admits for both. The VXLAN port of encrypted
//!   networks is accepted only from the WireGuard interface (decrypted, authenticated by
//!   the peer's key), never from the underlay: a forged plain datagram is dropped and
//!   counted the same way.
//! - `vxlan_containment` (filter, forward): nothing from a container bridge (ours, Docker's)
//!   goes to a VXLAN port anywhere: masqueraded as its host, it would pass another host's
//!   admission and enter any network. Counted in [`VXLAN_REFUSED`] too.
//!
//! The gateway chains exist once the bridge is set up, the DNS guard whenever it is
//! configured: a Docker host that never attaches a container with `overlayctl` has a table
//! with the guard alone.
//!
//! Docker coexistence: an `accept` in our base chain does not stop the packet from being
//! evaluated by Docker's `ip filter FORWARD` chain (policy DROP) at the same hook. When dockerd
//! runs in the same network namespace, the operator has to add an exception to Docker's
//! `DOCKER-USER` chain; [`docker_user_exception`] renders the exact commands.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use ovl_model::WG_IFNAME;
pub use ovl_model::{PortMap, Proto};

use crate::error::{Error, Result};

/// Name of our nftables table (family `inet`).
pub const TABLE: &str = "overlay_agent";
/// The named counter of packets the DNS guard dropped.
pub const DNS_DROPPED: &str = "dns_dropped";
/// The named counter of VXLAN packets refused (unregistered sender, or from a container).
pub const VXLAN_REFUSED: &str = "vxlan_refused";

/// Who may send VXLAN to this host (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The VXLAN UDP port.
    pub port: u16,
    /// The VXLAN UDP port of encrypted networks, admitted from [`ovl_model::WG_IFNAME`] only.
    pub encrypted_port: Option<u16>,
    /// VTEP addresses of the cluster's registered hosts.
    pub vteps: Vec<Ipv4Addr>,
    /// Container bridges (names or `prefix*` patterns) whose traffic never goes to a VXLAN
    /// port.
    pub containers: Vec<String>,
    /// TCP ports of the agent's own listeners on the host (metrics), closed to containers.
    pub agent_tcp: Vec<u16>,
}

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

/// Who may reach the agent's DNS address (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsGuard {
    /// The address (link-local, held by an interface of the host that has no other use).
    pub addr: Ipv4Addr,
    /// Interfaces (container bridges) whose traffic may ask it, as nft interface names: a
    /// trailing `*` matches any suffix (`br-*`: Docker's user-defined bridges).
    pub allow: Vec<String>,
    /// Interfaces never allowed, whatever `allow` says (the underlay interface, in case a
    /// pattern matches it).
    pub deny: Vec<String>,
}

/// Checks an interface name or pattern for [`DnsGuard::allow`]: 1-15 characters of letters,
/// digits, `-`, `_`, `.`, `@`, optionally ending in `*`.
pub fn check_ifname_pattern(p: &str) -> Result<()> {
    let bad = |reason: &str| Error::InvalidInterface {
        name: p.to_string(),
        reason: reason.to_string(),
    };
    let stem = p.strip_suffix('*').unwrap_or(p);
    if stem.is_empty() && !p.ends_with('*') {
        return Err(bad("empty"));
    }
    if p.len() > 15 {
        return Err(bad("longer than 15 characters"));
    }
    if !stem
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(bad(
            "use letters, digits, '-', '_', '.', '@' and a trailing '*'",
        ));
    }
    Ok(())
}

/// Everything the table holds: the gateway's chains once the bridge exists, the DNS guard
/// when configured.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// The gateway bridge's rules.
    pub gateway: Option<RulesetSpec>,
    /// The DNS guard.
    pub dns: Option<DnsGuard>,
    /// VXLAN admission and containment.
    pub admission: Option<Admission>,
}

impl Ruleset {
    /// Whether there is nothing to put in the table.
    pub fn is_empty(&self) -> bool {
        self.gateway.is_none() && self.dns.is_none() && self.admission.is_none()
    }
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
pub fn render_table(rules: &Ruleset) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {TABLE} {{");
    if let Some(spec) = &rules.gateway {
        render_gateway(&mut s, spec);
    }
    if let Some(guard) = &rules.dns {
        render_dns_guard(&mut s, guard);
    }
    if let Some(a) = &rules.admission {
        render_admission(&mut s, a);
    }
    s.push_str("}\n");
    s
}

fn render_gateway(s: &mut String, spec: &RulesetSpec) {
    let br = q(&spec.bridge);
    let net = spec.subnet;
    let mut published = spec.published.clone();
    published.sort_by_key(|p| (p.map.proto, p.map.host_port));

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
}

fn render_dns_guard(s: &mut String, g: &DnsGuard) {
    let a = g.addr;
    let _ = writeln!(s, "\tcounter {DNS_DROPPED} {{\n\t}}");
    s.push_str("\tchain dns_guard {\n");
    s.push_str("\t\ttype filter hook input priority filter; policy accept;\n");
    let _ = writeln!(s, "\t\tip daddr {a} iif \"lo\" accept");
    let mut deny = g.deny.clone();
    deny.sort();
    deny.dedup();
    for d in &deny {
        let _ = writeln!(
            s,
            "\t\tip daddr {a} iifname {} counter name \"{DNS_DROPPED}\" drop",
            q(d)
        );
    }
    let mut allow = g.allow.clone();
    allow.sort();
    allow.dedup();
    if !allow.is_empty() {
        let set: Vec<String> = allow.iter().map(|n| q(n)).collect();
        // The reverse-path check: a container of one bridge cannot pass for one of another
        // (whose networks it would then be answered on).
        let _ = writeln!(
            s,
            "\t\tip daddr {a} iifname {{ {} }} fib saddr . iif oif != 0 meta l4proto {{ tcp, udp }} th dport 53 accept",
            set.join(", ")
        );
    }
    let _ = writeln!(s, "\t\tip daddr {a} counter name \"{DNS_DROPPED}\" drop");
    s.push_str("\t}\n");
}

fn render_admission(s: &mut String, a: &Admission) {
    let port = a.port;
    let _ = writeln!(s, "\tcounter {VXLAN_REFUSED} {{\n\t}}");
    s.push_str("\tchain vxlan_admission {\n");
    s.push_str("\t\ttype filter hook input priority filter; policy accept;\n");
    let mut vteps = a.vteps.clone();
    vteps.sort();
    vteps.dedup();
    if !vteps.is_empty() {
        let set: Vec<String> = vteps.iter().map(|v| v.to_string()).collect();
        let _ = writeln!(
            s,
            "\t\tudp dport {port} ip saddr {{ {} }} accept",
            set.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\t\tudp dport {port} counter name \"{VXLAN_REFUSED}\" drop"
    );
    if let Some(e) = a.encrypted_port {
        let _ = writeln!(s, "\t\tudp dport {e} iifname {} accept", q(WG_IFNAME));
        let _ = writeln!(s, "\t\tudp dport {e} counter name \"{VXLAN_REFUSED}\" drop");
    }
    s.push_str("\t}\n");
    let ports = match a.encrypted_port {
        Some(e) => format!("{{ {port}, {e} }}"),
        None => port.to_string(),
    };
    let mut containers = a.containers.clone();
    containers.sort();
    containers.dedup();
    if !containers.is_empty() {
        let set: Vec<String> = containers.iter().map(|n| q(n)).collect();
        s.push_str("\tchain vxlan_containment {\n");
        s.push_str("\t\ttype filter hook forward priority filter; policy accept;\n");
        let _ = writeln!(
            s,
            "\t\tiifname {{ {} }} udp dport {ports} counter name \"{VXLAN_REFUSED}\" drop",
            set.join(", ")
        );
        s.push_str("\t}\n");
        let mut tcp = a.agent_tcp.clone();
        tcp.sort();
        tcp.dedup();
        if !tcp.is_empty() {
            let ports: Vec<String> = tcp.iter().map(|p| p.to_string()).collect();
            s.push_str("\tchain agent_ports {\n");
            s.push_str("\t\ttype filter hook input priority filter; policy accept;\n");
            let _ = writeln!(
                s,
                "\t\tiifname {{ {} }} tcp dport {{ {} }} drop",
                set.join(", "),
                ports.join(", ")
            );
            s.push_str("\t}\n");
        }
    }
}

/// Renders the full atomic batch for `nft -f -`: create-if-missing, delete, redefine.
pub fn render_batch(rules: &Ruleset) -> String {
    format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{}",
        render_table(rules)
    )
}

/// The packet count in `nft -j list counter ...` output.
pub fn parse_counter(json: &str) -> Result<u64> {
    let bad = |reason: String| Error::Nft {
        context: "reading a counter".into(),
        stderr: reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .ok_or_else(|| bad(format!("no counter in {json}")))
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

    fn gw(spec: &RulesetSpec) -> Ruleset {
        Ruleset {
            gateway: Some(spec.clone()),
            dns: None,
            admission: None,
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
        let t = render_table(&gw(&spec));
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
        let b = render_batch(&gw(&spec));
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
        let t = render_table(&gw(&spec));
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
        assert_eq!(
            render_table(&gw(&spec)),
            t,
            "order of input must not matter"
        );
    }

    #[test]
    fn dns_guard_alone_and_with_the_gateway() {
        let guard = DnsGuard {
            addr: Ipv4Addr::new(169, 254, 53, 53),
            allow: vec!["docker_gwbridge".into(), "br-*".into(), "docker0".into()],
            deny: vec!["eth0".into()],
        };
        let only = Ruleset {
            gateway: None,
            dns: Some(guard.clone()),
            admission: None,
        };
        let expected = "table inet overlay_agent {
\tcounter dns_dropped {
\t}
\tchain dns_guard {
\t\ttype filter hook input priority filter; policy accept;
\t\tip daddr 169.254.53.53 iif \"lo\" accept
\t\tip daddr 169.254.53.53 iifname \"eth0\" counter name \"dns_dropped\" drop
\t\tip daddr 169.254.53.53 iifname { \"br-*\", \"docker0\", \"docker_gwbridge\" } fib saddr . iif oif != 0 meta l4proto { tcp, udp } th dport 53 accept
\t\tip daddr 169.254.53.53 counter name \"dns_dropped\" drop
\t}
}
";
        assert_eq!(render_table(&only), expected);
        assert!(!only.is_empty() && Ruleset::default().is_empty());
        // Next to the gateway's chains, in the same table.
        let both = Ruleset {
            gateway: Some(RulesetSpec {
                bridge: "ovl_gwbridge".into(),
                subnet: "172.18.0.0/20".parse().unwrap(),
                published: vec![],
            }),
            dns: Some(DnsGuard {
                allow: vec![],
                deny: vec![],
                ..guard
            }),
            admission: None,
        };
        let t = render_table(&both);
        assert_eq!(t.matches("table inet overlay_agent").count(), 1);
        assert!(t.contains("\tchain forward {") && t.contains("\tchain dns_guard {"));
        // No allowed interface: only the host itself.
        assert!(!t.contains("th dport 53 accept"), "{t}");
    }

    #[test]
    fn admission_lists_the_vteps_and_drops_the_rest() {
        let a = Admission {
            port: 4789,
            encrypted_port: None,
            vteps: vec![Ipv4Addr::new(198, 18, 0, 12), Ipv4Addr::new(198, 18, 0, 11)],
            containers: vec!["ovl_gw0".into(), "br-*".into()],
            agent_tcp: vec![9464],
        };
        let t = render_table(&Ruleset {
            admission: Some(a.clone()),
            ..Default::default()
        });
        assert!(
            t.contains("udp dport 4789 ip saddr { 198.18.0.11, 198.18.0.12 } accept"),
            "{t}"
        );
        assert!(
            t.contains("udp dport 4789 counter name \"vxlan_refused\" drop"),
            "{t}"
        );
        assert!(
            t.contains("iifname { \"br-*\", \"ovl_gw0\" } udp dport 4789 counter"),
            "{t}"
        );
        // No host known yet: nothing is admitted (an empty set would not parse).
        let t = render_table(&Ruleset {
            admission: Some(Admission { vteps: vec![], ..a }),
            ..Default::default()
        });
        assert!(!t.contains("ip saddr {"), "{t}");
        assert!(t.contains("tcp dport { 9464 } drop"), "{t}");
        assert!(t.contains("udp dport 4789 counter name"), "{t}");
    }

    #[test]
    fn encrypted_vxlan_only_from_wireguard() {
        let a = Admission {
            port: 4789,
            encrypted_port: Some(4790),
            vteps: vec![Ipv4Addr::new(198, 18, 0, 12)],
            containers: vec!["ovl_gw0".into()],
            agent_tcp: vec![],
        };
        let t = render_table(&Ruleset {
            admission: Some(a),
            ..Default::default()
        });
        let accept = t
            .find("udp dport 4790 iifname \"ovlwg0\" accept")
            .expect(&t);
        let drop = t
            .find("udp dport 4790 counter name \"vxlan_refused\" drop")
            .expect(&t);
        assert!(accept < drop, "{t}");
        // Not even a registered VTEP may send it in the clear.
        assert!(!t.contains("udp dport 4790 ip saddr"), "{t}");
        assert!(
            t.contains("iifname { \"ovl_gw0\" } udp dport { 4789, 4790 } counter"),
            "{t}"
        );
    }

    #[test]
    fn counter_from_nft_json() {
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"counter": {"family": "inet", "name": "dns_dropped", "table": "overlay_agent", "handle": 2, "packets": 7, "bytes": 420}}]}"#;
        assert_eq!(parse_counter(out).unwrap(), 7);
        assert!(parse_counter("{\"nftables\": []}").is_err());
        assert!(parse_counter("garbage").is_err());
    }

    #[test]
    fn interface_patterns() {
        for ok in ["docker0", "br-*", "docker_gwbridge", "*", "veth.1@x"] {
            check_ifname_pattern(ok).unwrap();
        }
        for bad in ["", "a b", "br-*x", "x\"y", "abcdefghijklmnop", "a{b}"] {
            assert!(
                matches!(
                    check_ifname_pattern(bad),
                    Err(Error::InvalidInterface { .. })
                ),
                "{bad:?}"
            );
        }
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
