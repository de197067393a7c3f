//! Anti-spoofing on the kernel datapath: in each network's sandbox, a bridge-family table
//! lets a container's port send only with the endpoint's own MAC, IPv4 source and ARP
//! sender; the rest is dropped and counted. (The eBPF datapath checks the same in its tc
//! program.) The table is rendered here from the ports (pure) and replaced atomically, the
//! way the gateway replaces its own.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ovl_model::MacAddr;

/// The table in every sandbox (family `bridge`).
pub const TABLE: &str = "ovl_guard";
/// Its named counter of dropped frames.
pub const COUNTER: &str = "spoofed";

/// One container port and what it may send as.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    /// The port's name in the sandbox.
    pub ifname: String,
    /// The endpoint's MAC.
    pub mac: MacAddr,
    /// The endpoint's address.
    pub ip: Ipv4Addr,
}

/// The batch for `nft -f -`: create if missing, delete, define (one transaction).
pub fn render(ports: &[Port]) -> String {
    let mut ports = ports.to_vec();
    ports.sort();
    let mut s = format!("table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n");
    let _ = writeln!(s, "table bridge {TABLE} {{");
    let _ = writeln!(s, "\tcounter {COUNTER} {{\n\t}}");
    s.push_str("\tchain ports {\n");
    s.push_str("\t\ttype filter hook prerouting priority filter; policy accept;\n");
    for p in &ports {
        // Port names are ours (validated interface names): no quoting issues.
        let i = format!("iifname \"{}\"", p.ifname);
        let drop = format!("counter name \"{COUNTER}\" drop");
        let _ = writeln!(s, "\t\t{i} ether saddr != {} {drop}", p.mac);
        let _ = writeln!(s, "\t\t{i} ip saddr != {} {drop}", p.ip);
        let _ = writeln!(s, "\t\t{i} arp saddr ether != {} {drop}", p.mac);
        let _ = writeln!(s, "\t\t{i} arp saddr ip != {} {drop}", p.ip);
    }
    s.push_str("\t}\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_sends_as_itself_only() {
        let p = |n: &str, last: u8| Port {
            ifname: n.into(),
            mac: MacAddr([2, 0x42, 10, 10, 0, last]),
            ip: Ipv4Addr::new(10, 10, 0, last),
        };
        let t = render(&[p("ve-b", 3), p("ve-a", 2)]);
        assert!(t.starts_with("table bridge ovl_guard {}\ndelete table bridge ovl_guard\n"));
        let a = t
            .find("iifname \"ve-a\" ether saddr != 02:42:0a:0a:00:02")
            .unwrap();
        let b = t.find("iifname \"ve-b\" ether saddr").unwrap();
        assert!(a < b, "sorted: {t}");
        assert!(t.contains("iifname \"ve-a\" ip saddr != 10.10.0.2 counter name \"spoofed\" drop"));
        assert!(t.contains("iifname \"ve-b\" arp saddr ip != 10.10.0.3"));
        assert!(t.contains("arp saddr ether != 02:42:0a:0a:00:03"));
        // No ports: the table and its counter stay, with an empty chain.
        let e = render(&[]);
        assert!(e.contains("counter spoofed") && !e.contains("iifname"));
    }
}
