//! `overlayctl probe`: one real frame through the overlay, followed hop by hop. Pure: the
//! agent sends the probe and gathers what each host saw into [`Facts`] (see
//! `agent::pathprobe`), and [`analyze`] turns them into the hops of a [`Report`] and the first
//! one that failed, with why.
//!
//! The hops, in the order a frame takes them:
//! 1. `entry`: the sending host's datapath entry for the destination MAC (FDB or BPF map),
//!    against where the destination lives;
//! 2. `leave`: the probe's VXLAN packet on the sending host's underlay (its VNI and VTEP);
//! 3. `arrive`: that packet on the destination host's underlay (seen by its agent);
//! 4. `deliver`: the echo request on the destination's interface, after decapsulation;
//! 5. `reply`: the destination's echo reply back at the probe;
//! 6. `mtu`: a full-size echo (the endpoint's MTU) the same way.

pub mod frame;
pub mod wire;

use std::net::Ipv4Addr;

use ovl_core::probe::Sightings;
use ovl_model::{MacAddr, VXLAN_OVERHEAD, WG_OVERHEAD};
use serde::{Deserialize, Serialize};

/// Sequence numbers of the small echoes; full-size ones add [`BIG`].
pub const SMALL: std::ops::Range<u16> = 1..4;
/// Offset of the full-size echoes' sequence numbers.
pub const BIG: u16 = 100;

/// `POST /v1/probe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Network name.
    pub network: String,
    /// Destination: a container name (or alias) or an address on the network.
    pub to: String,
    /// The host to send from (default: the one asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// One hop and what happened there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// `entry`, `leave`, `arrive`, `deliver`, `reply` or `mtu`.
    pub hop: String,
    /// The host it is on.
    pub host: String,
    /// Passed, failed, or not observed (`None`).
    pub ok: Option<bool>,
    /// What was seen, or why it failed.
    pub detail: String,
}

/// What `overlayctl probe` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Network name.
    pub network: String,
    /// The sending host.
    pub from: String,
    /// The destination: `name (ip, mac) on host`.
    pub to: String,
    /// Every hop, in order.
    pub hops: Vec<Hop>,
    /// The first hop that failed, and why (`None`: the probe went through).
    pub failed: Option<String>,
}

impl Report {
    /// Text for the terminal.
    pub fn render(&self) -> String {
        let mut out = format!("probe {} from {} to {}\n", self.network, self.from, self.to);
        for h in &self.hops {
            let mark = match h.ok {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "--  ",
            };
            out.push_str(&format!(
                "  {mark} {:<8} {:<12} {}\n",
                h.hop, h.host, h.detail
            ));
        }
        match &self.failed {
            None => out.push_str("reached\n"),
            Some(why) => out.push_str(&format!("failed at {why}\n")),
        }
        out
    }
}

/// The destination endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    /// Container name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its host.
    pub host: String,
    /// That host's VTEP.
    pub vtep: Ipv4Addr,
    /// That host's underlay MTU.
    pub underlay_mtu: u32,
    /// That host's state as seen from the sender (`alive`, `agent down, datapath
    /// answering`, `dead`).
    pub state: String,
}

/// The sending host's datapath entry for the destination MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The programmed line (`fdb MAC dst VTEP`, `remote MAC IP via VTEP`).
    pub line: String,
    /// The VTEP it sends to.
    pub vtep: Ipv4Addr,
}

/// What the probe found, gathered by the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Network name.
    pub network: String,
    /// Its VNI.
    pub vni: u32,
    /// Encrypted (WireGuard under VXLAN).
    pub encrypted: bool,
    /// The sending host.
    pub me: String,
    /// Its VTEP.
    pub my_vtep: Ipv4Addr,
    /// Its underlay MTU.
    pub my_underlay_mtu: u32,
    /// The destination.
    pub dest: Dest,
    /// The endpoint MTU (the full-size echo's IPv4 length).
    pub mtu: u32,
    /// The sending datapath's entry for the destination MAC (`None`: none programmed).
    pub entry: Option<Entry>,
    /// Probe packets seen leaving this host's underlay: (seq, outer dst, VNI, interface).
    pub left: Vec<(u16, Ipv4Addr, u32, String)>,
    /// Echo replies that came back to the probe (seq, microseconds after sending).
    pub replies: Vec<(u16, u64)>,
    /// The MTU an ICMP "fragmentation needed" for a full-size echo named.
    pub frag_needed: Option<u32>,
    /// This host's datapath dropped probe frames, with these reasons.
    pub local_drops: Vec<String>,
    /// What the destination host saw (`None` for a local destination; `Err`: it did not
    /// answer, and why).
    pub remote: Option<Result<Sightings, String>>,
}

fn hop(name: &str, host: &str, ok: Option<bool>, detail: impl Into<String>) -> Hop {
    Hop {
        hop: name.into(),
        host: host.into(),
        ok,
        detail: detail.into(),
    }
}

fn small(seq: u16) -> bool {
    SMALL.contains(&seq)
}

/// The hops of a probe and the first that failed.
pub fn analyze(f: &Facts) -> Report {
    let d = &f.dest;
    let local = d.host == f.me;
    let mut hops = Vec::new();
    let overhead = VXLAN_OVERHEAD + if f.encrypted { WG_OVERHEAD } else { 0 };

    // 1. The entry the sending datapath chose.
    if local {
        hops.push(hop(
            "entry",
            &f.me,
            Some(true),
            "the destination is on this host: delivered locally, no VXLAN",
        ));
    } else {
        hops.push(match &f.entry {
            None => hop(
                "entry",
                &f.me,
                Some(false),
                format!(
                    "no entry: nothing programmed for {} (no FDB or map entry); {} is not \
                     reachable until the datapath programs it (overlayctl peers {})",
                    d.mac, d.name, f.network
                ),
            ),
            Some(e) if e.vtep != d.vtep => hop(
                "entry",
                &f.me,
                Some(false),
                format!(
                    "stale entry: `{}` sends to {}, but {} is on {} at {}",
                    e.line, e.vtep, d.name, d.host, d.vtep
                ),
            ),
            Some(e) => hop("entry", &f.me, Some(true), e.line.clone()),
        });
    }

    let small_left: Vec<_> = f.left.iter().filter(|l| small(l.0)).collect();
    let remote = f.remote.as_ref();
    let sights = remote.and_then(|r| r.as_ref().ok());
    if !local {
        // 2. Leaving this host.
        hops.push(match small_left.first() {
            Some((_, dst, vni, dev)) if *dst == d.vtep && *vni == f.vni => hop(
                "leave",
                &f.me,
                Some(true),
                format!(
                    "VXLAN VNI {vni} from {} to VTEP {dst} on {dev}{}",
                    f.my_vtep,
                    if f.encrypted {
                        " (inside WireGuard)"
                    } else {
                        ""
                    }
                ),
            ),
            Some((_, dst, vni, dev)) => hop(
                "leave",
                &f.me,
                Some(false),
                format!(
                    "left as VNI {vni} to VTEP {dst} on {dev}, but {} is at {} with VNI {}",
                    d.host, d.vtep, f.vni
                ),
            ),
            None if !f.local_drops.is_empty() => hop(
                "leave",
                &f.me,
                Some(false),
                format!("dropped by the eBPF program: {}", f.local_drops.join(", ")),
            ),
            None => hop(
                "leave",
                &f.me,
                Some(false),
                "not seen on the underlay: dropped on this host before encapsulation",
            ),
        });

        // 3. Arriving at the destination host.
        hops.push(match remote {
            Some(Err(why)) => hop(
                "arrive",
                &d.host,
                Some(false),
                format!(
                    "not observed: the agent of {} did not answer ({why}; its state here: {}, \
                     which stays alive until a stopped agent's lease runs out); start it or \
                     see overlayctl doctor",
                    d.host, d.state
                ),
            ),
            Some(Ok(s)) if !s.underlay.is_empty() => {
                let (src, dev) = &s.underlay[0];
                hop(
                    "arrive",
                    &d.host,
                    Some(true),
                    format!("VXLAN from {src} on {dev}"),
                )
            }
            _ if small_left.is_empty() => hop("arrive", &d.host, None, "nothing left to arrive"),
            _ if small_left.iter().all(|l| l.1 != d.vtep) => hop(
                "arrive",
                &d.host,
                Some(false),
                format!(
                    "never sent here: it left for {} instead of {}",
                    small_left[0].1, d.vtep
                ),
            ),
            _ => hop(
                "arrive",
                &d.host,
                Some(false),
                format!(
                    "lost between the underlays: it left {} but never reached {} (a firewall \
                     or the network between them drops VXLAN, UDP)",
                    f.me, d.host
                ),
            ),
        });

        // 4. Decapsulated and delivered.
        hops.push(match sights {
            None => hop("deliver", &d.host, None, "not observed"),
            Some(s) => deliver_hop(f, s),
        });
    } else {
        hops.push(match sights {
            None => hop("deliver", &d.host, None, "not observed"),
            Some(s) => deliver_hop(f, s),
        });
    }

    // 5. The reply.
    let small_replies: Vec<_> = f.replies.iter().filter(|r| small(r.0)).collect();
    hops.push(match small_replies.first() {
        Some((_, us)) => hop(
            "reply",
            &f.me,
            Some(true),
            format!(
                "echo reply from {} after {:.2} ms",
                d.ip,
                *us as f64 / 1000.0
            ),
        ),
        None if sights.is_some_and(|s| s.answered.iter().any(|q| small(*q))) => hop(
            "reply",
            &f.me,
            Some(false),
            if sights.is_some_and(|s| s.unprogrammed) {
                format!(
                    "{} answered, but {} has not programmed the probe's endpoint (its \
                     datapath lags the KV: overlayctl peers on {})",
                    d.name, d.host, d.host
                )
            } else {
                format!(
                    "{} answered, but the reply never came back (the way back from {} fails)",
                    d.name, d.host
                )
            },
        ),
        None if sights.is_some_and(|s| s.delivered.iter().any(|q| small(*q))) => hop(
            "reply",
            &f.me,
            Some(false),
            format!("{} got the echo but sent no reply (no ICMP in it?)", d.name),
        ),
        None => hop("reply", &f.me, Some(false), "no echo reply"),
    });

    // 6. Full size.
    let path = if local {
        None
    } else {
        Some(f.my_underlay_mtu.min(d.underlay_mtu))
    };
    let big_back = f.replies.iter().any(|r| r.0 > BIG);
    let need = f.mtu + overhead;
    hops.push(match (path, f.frag_needed) {
        (Some(p), _) if need > p => hop(
            "mtu",
            &f.me,
            Some(false),
            format!(
                "MTU exceeded: a full-size frame ({} bytes) needs {need} on the underlay, \
                 the path takes {p} ({} {}, {} {}); lower the network's --mtu to {}",
                f.mtu,
                f.me,
                f.my_underlay_mtu,
                d.host,
                d.underlay_mtu,
                p.saturating_sub(overhead)
            ),
        ),
        (_, Some(m)) if !big_back => hop(
            "mtu",
            &f.me,
            Some(false),
            format!(
                "MTU exceeded: a full-size echo ({} bytes) was refused: the path takes {m}",
                f.mtu
            ),
        ),
        _ if big_back => hop(
            "mtu",
            &f.me,
            Some(true),
            format!("a full-size echo ({} bytes) went through", f.mtu),
        ),
        _ if small_replies.is_empty() => hop("mtu", &f.me, None, "not tried: small echoes fail"),
        _ => hop(
            "mtu",
            &f.me,
            Some(false),
            format!(
                "MTU exceeded: small echoes pass but full-size ones ({} bytes) are lost",
                f.mtu
            ),
        ),
    });

    let failed = hops
        .iter()
        .find(|h| h.ok == Some(false))
        .map(|h| format!("{} on {}: {}", h.hop, h.host, h.detail));
    Report {
        network: f.network.clone(),
        from: f.me.clone(),
        to: format!("{} ({}, {}) on {}", d.name, d.ip, d.mac, d.host),
        hops,
        failed,
    }
}

fn deliver_hop(f: &Facts, s: &Sightings) -> Hop {
    let d = &f.dest;
    if let Some(why) = &s.missing {
        return hop("deliver", &d.host, Some(false), why.clone());
    }
    if s.delivered.iter().any(|q| small(*q)) {
        return hop(
            "deliver",
            &d.host,
            Some(true),
            format!("echo request reached {}'s interface", d.name),
        );
    }
    let why = if !s.admitted || s.counted.iter().any(|(c, _)| c == "vxlan_not_admitted") {
        format!(
            "VTEP not admitted: {} drops VXLAN from {} (not a registered host there)",
            d.host, f.my_vtep
        )
    } else if !s.drops.is_empty() {
        format!("dropped by the eBPF program: {}", s.drops.join(", "))
    } else if let Some((c, n)) = s.counted.first() {
        format!("dropped by rule {c} ({n} frames)")
    } else if s.underlay.is_empty() && d.host != f.me {
        "never arrived".into()
    } else {
        "dropped after decapsulation, no reason recorded".into()
    };
    hop("deliver", &d.host, Some(false), why)
}

/// The entry programmed for `mac` among a network's `overlayctl peers` lines (kernel:
/// `fdb MAC dst VTEP`; eBPF: `remote MAC IP via VTEP`).
pub fn entry_for(lines: &[String], mac: MacAddr) -> Option<Entry> {
    let m = mac.to_string();
    lines.iter().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        let vtep = match w.as_slice() {
            ["fdb", x, "dst", v] if *x == m => v.parse().ok()?,
            ["remote", x, _, "via", v] if *x == m => v.parse().ok()?,
            _ => return None,
        };
        Some(Entry {
            line: l.clone(),
            vtep,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
    const MAC: MacAddr = MacAddr([2, 0x42, 10, 9, 0, 2]);

    fn seen() -> Sightings {
        Sightings {
            underlay: vec![(ME, "eth0".into())],
            admitted: true,
            delivered: vec![1, 2, 3, 101],
            answered: vec![1, 2, 3, 101],
            ..Sightings::default()
        }
    }

    fn healthy() -> Facts {
        Facts {
            network: "app".into(),
            vni: 300,
            encrypted: false,
            me: "h1".into(),
            my_vtep: ME,
            my_underlay_mtu: 1500,
            dest: Dest {
                name: "c2".into(),
                ip: Ipv4Addr::new(10, 9, 0, 2),
                mac: MAC,
                host: "h2".into(),
                vtep: H2,
                underlay_mtu: 1500,
                state: "alive".into(),
            },
            mtu: 1450,
            entry: Some(Entry {
                line: format!("fdb {MAC} dst {H2}"),
                vtep: H2,
            }),
            left: vec![(1, H2, 300, "eth0".into()), (101, H2, 300, "eth0".into())],
            replies: vec![(1, 2), (101, 3)],
            frag_needed: None,
            local_drops: vec![],
            remote: Some(Ok(seen())),
        }
    }

    fn failed(f: &Facts) -> String {
        analyze(f).failed.expect("a failure")
    }

    #[test]
    fn a_healthy_path_passes_every_hop() {
        let r = analyze(&healthy());
        assert_eq!(r.failed, None, "{}", r.render());
        let names: Vec<_> = r.hops.iter().map(|h| h.hop.as_str()).collect();
        assert_eq!(
            names,
            ["entry", "leave", "arrive", "deliver", "reply", "mtu"]
        );
        assert!(r.hops.iter().all(|h| h.ok == Some(true)));
        assert!(
            r.render()
                .contains("VXLAN VNI 300 from 198.18.0.11 to VTEP 198.18.0.12")
        );
    }

    #[test]
    fn a_missing_or_stale_entry_is_the_first_failure() {
        let mut f = healthy();
        f.entry = None;
        assert!(failed(&f).starts_with("entry on h1: no entry"));
        let wrong = Ipv4Addr::new(198, 18, 0, 13);
        f.entry = Some(Entry {
            line: format!("fdb {MAC} dst {wrong}"),
            vtep: wrong,
        });
        f.left = vec![(1, wrong, 300, "eth0".into())];
        f.replies.clear();
        f.remote = Some(Ok(Sightings {
            admitted: true,
            ..Sightings::default()
        }));
        let why = failed(&f);
        assert!(why.starts_with("entry on h1: stale entry"), "{why}");
        let r = analyze(&f);
        assert_eq!(r.hops[1].ok, Some(false), "{}", r.render());
        assert!(
            r.hops[2]
                .detail
                .contains("left for 198.18.0.13 instead of 198.18.0.12"),
            "{}",
            r.render()
        );
    }

    #[test]
    fn vxlan_lost_on_the_wire_fails_at_arrival() {
        let mut f = healthy();
        f.replies.clear();
        f.remote = Some(Ok(Sightings {
            admitted: true,
            ..Sightings::default()
        }));
        let why = failed(&f);
        assert!(
            why.starts_with("arrive on h2: lost between the underlays"),
            "{why}"
        );
    }

    #[test]
    fn drops_after_arrival_name_their_reason() {
        let mut f = healthy();
        f.replies.clear();
        let mut s = seen();
        s.delivered.clear();
        s.answered.clear();
        s.admitted = false;
        f.remote = Some(Ok(s.clone()));
        assert!(failed(&f).contains("VTEP not admitted"));
        s.admitted = true;
        s.drops = vec!["ingress_drop_unknown_mac".into()];
        f.remote = Some(Ok(s));
        assert!(failed(&f).contains("ingress_drop_unknown_mac"));
    }

    #[test]
    fn a_silent_agent_is_named() {
        let mut f = healthy();
        f.dest.state = "agent down, datapath answering".into();
        f.remote = Some(Err("no answer within 3 s".into()));
        let r = analyze(&f);
        let why = r.failed.clone().unwrap();
        assert!(
            why.starts_with("arrive on h2: not observed: the agent of h2"),
            "{why}"
        );
        // The reply still shows the datapath works.
        assert_eq!(r.hops[4].ok, Some(true));
    }

    #[test]
    fn mtu_too_big_for_the_path_is_named_with_both_ends() {
        let mut f = healthy();
        f.dest.underlay_mtu = 1400;
        f.replies.retain(|r| r.0 < BIG);
        let why = failed(&f);
        assert!(why.starts_with("mtu on h1: MTU exceeded"), "{why}");
        assert!(why.contains("--mtu to 1350"), "{why}");
        let mut f = healthy();
        f.replies.retain(|r| r.0 < BIG);
        f.frag_needed = Some(1400);
        assert!(failed(&f).contains("the path takes 1400"));
        f.frag_needed = None;
        assert!(failed(&f).contains("full-size ones (1450 bytes) are lost"));
    }

    #[test]
    fn a_local_destination_has_no_vxlan_hops() {
        let mut f = healthy();
        f.dest.host = "h1".into();
        f.left.clear();
        f.remote = None;
        let r = analyze(&f);
        let names: Vec<_> = r.hops.iter().map(|h| h.hop.as_str()).collect();
        assert_eq!(names, ["entry", "deliver", "reply", "mtu"]);
        assert_eq!(r.failed, None, "{}", r.render());
    }

    #[test]
    fn entries_are_read_from_both_datapaths_lines() {
        let lines = vec![
            "vxlan vni 300 local 198.18.0.11 mtu 1450".to_string(),
            format!("fdb {MAC} dst {H2}"),
        ];
        assert_eq!(entry_for(&lines, MAC).unwrap().vtep, H2);
        let lines = vec![format!("remote {MAC} 10.9.0.2 via {H2}")];
        assert_eq!(entry_for(&lines, MAC).unwrap().vtep, H2);
        assert!(entry_for(&lines, MacAddr([2, 0, 0, 0, 0, 1])).is_none());
    }
}
