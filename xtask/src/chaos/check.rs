//! The invariants over the KV, pure: a snapshot of everything under `/ovl/v1/` (one
//! `etcdctl get --prefix`, one revision) against itself and against the ledger.
//!
//! - **unique**: no address or VNI handed out twice (in the KV: two endpoint records of a
//!   network with one address, an endpoint on the gateway, two networks with one VNI or
//!   overlapping subnets; in the ledger: two acknowledged, live endpoints of a network with
//!   one address, two live networks with one VNI);
//! - **no leak**: every address claim belongs to an endpoint record of that address (or is
//!   its network's gateway), every endpoint record's address is claimed by it, every VNI
//!   claim and subnet index entry belongs to a network and the other way round, and every
//!   endpoint record is one a user attached and did not detach;
//! - **acknowledged writes kept**: what an attach, detach, network create or remove
//!   answered success for is what the KV holds.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Context, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::ledger::{EpState, Ledger, NetState};

/// Keys of the schema (`crates/core/src/keys.rs`; read here as a judge, not linked).
const NETWORKS: &str = "/ovl/v1/networks/";
const VNIS: &str = "/ovl/v1/vnis/";
const SUBNETS: &str = "/ovl/v1/subnets";
const ADDRS: &str = "/ovl/v1/addrs/";
const ENDPOINTS: &str = "/ovl/v1/endpoints/";

/// A network record, the fields judged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct NetRec {
    /// VNI.
    pub vni: u32,
    /// Subnet.
    pub subnet: ipnetwork::Ipv4Network,
    /// Gateway.
    pub gateway: Ipv4Addr,
}

/// An endpoint record, the fields judged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct EpRec {
    /// Host id.
    pub host: String,
    /// Address.
    pub ip: Ipv4Addr,
}

/// Everything under `/ovl/v1/` at one revision.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// The revision read.
    pub revision: i64,
    /// Networks by name.
    pub networks: BTreeMap<String, NetRec>,
    /// VNI claims: VNI -> network name.
    pub vnis: BTreeMap<u32, String>,
    /// The subnet index: network -> subnet.
    pub subnets: BTreeMap<String, ipnetwork::Ipv4Network>,
    /// Address claims: (network, address) -> owner.
    pub addrs: BTreeMap<(String, Ipv4Addr), String>,
    /// Endpoint records by (network, id).
    pub endpoints: BTreeMap<(String, String), EpRec>,
    /// Records that could not be read (key, reason): corrupt state is a finding too.
    pub unreadable: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct GetReply {
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct Header {
    revision: i64,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

impl Snapshot {
    /// Parses `etcdctl get --prefix /ovl/v1/ -w json`.
    pub fn parse(json: &[u8]) -> Result<Snapshot> {
        let reply: GetReply = serde_json::from_slice(json).context("parsing etcdctl get")?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut s = Snapshot {
            revision: reply.header.revision,
            ..Default::default()
        };
        for kv in reply.kvs {
            let key =
                String::from_utf8_lossy(&b64.decode(&kv.key).context("key base64")?).into_owned();
            let value = b64.decode(&kv.value).context("value base64")?;
            s.add(&key, &value);
        }
        Ok(s)
    }

    /// Adds one key (unknown keys are ignored; unreadable records are kept as findings).
    pub fn add(&mut self, key: &str, value: &[u8]) {
        let text = String::from_utf8_lossy(value).into_owned();
        let bad = |why: String| self_unreadable(key, why);
        if let Some(name) = key.strip_prefix(NETWORKS) {
            match serde_json::from_slice::<NetRec>(value) {
                Ok(n) => {
                    self.networks.insert(name.to_string(), n);
                }
                Err(e) => self.unreadable.push(bad(e.to_string())),
            }
        } else if let Some(v) = key.strip_prefix(VNIS) {
            match v.parse::<u32>() {
                Ok(v) => {
                    self.vnis.insert(v, text);
                }
                Err(e) => self.unreadable.push(bad(e.to_string())),
            }
        } else if key == SUBNETS {
            match serde_json::from_slice(value) {
                Ok(m) => self.subnets = m,
                Err(e) => self.unreadable.push(bad(e.to_string())),
            }
        } else if let Some(rest) = key.strip_prefix(ADDRS) {
            match rest
                .rsplit_once('/')
                .map(|(n, ip)| (n, ip.parse::<Ipv4Addr>()))
            {
                Some((net, Ok(ip))) => {
                    self.addrs.insert((net.to_string(), ip), text);
                }
                _ => self.unreadable.push(bad("not network/address".into())),
            }
        } else if let Some(rest) = key.strip_prefix(ENDPOINTS) {
            match (rest.split_once('/'), serde_json::from_slice::<EpRec>(value)) {
                (Some((net, id)), Ok(e)) => {
                    self.endpoints.insert((net.to_string(), id.to_string()), e);
                }
                (_, Err(e)) => self.unreadable.push(bad(e.to_string())),
                (None, _) => self.unreadable.push(bad("not network/id".into())),
            }
        }
    }
}

fn self_unreadable(key: &str, why: String) -> (String, String) {
    (key.to_string(), why)
}

/// No address or VNI handed out twice, in the KV itself.
pub fn unique(s: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_addr: BTreeMap<(&str, Ipv4Addr), Vec<&str>> = BTreeMap::new();
    for ((net, id), e) in &s.endpoints {
        by_addr.entry((net, e.ip)).or_default().push(id);
        if let Some(n) = s.networks.get(net)
            && n.gateway == e.ip
        {
            out.push(format!(
                "endpoint {net}/{id} holds the gateway address {}",
                e.ip
            ));
        }
    }
    for ((net, ip), ids) in by_addr {
        if ids.len() > 1 {
            out.push(format!(
                "address {ip} on {net} is recorded for {}",
                ids.join(", ")
            ));
        }
    }
    let mut by_vni: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for (name, n) in &s.networks {
        by_vni.entry(n.vni).or_default().push(name);
    }
    for (vni, names) in by_vni {
        if names.len() > 1 {
            out.push(format!(
                "VNI {vni} is recorded for networks {}",
                names.join(", ")
            ));
        }
    }
    let nets: Vec<(&String, &NetRec)> = s.networks.iter().collect();
    for (i, (a, na)) in nets.iter().enumerate() {
        for (b, nb) in &nets[i + 1..] {
            if na.subnet.overlaps(nb.subnet) {
                out.push(format!(
                    "networks {a} ({}) and {b} ({}) overlap",
                    na.subnet, nb.subnet
                ));
            }
        }
    }
    for (k, why) in &s.unreadable {
        out.push(format!("unreadable record {k}: {why}"));
    }
    out
}

/// No address or VNI handed out twice to what users hold: two acknowledged endpoints that
/// both still live with one address, or two live networks with one VNI.
pub fn unique_in_ledger(l: &Ledger) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_addr: BTreeMap<(&str, Ipv4Addr), Vec<&str>> = BTreeMap::new();
    for e in l.eps.values().filter(|e| e.state == EpState::Live) {
        if let Some(ip) = e.ip {
            by_addr.entry((&e.net, ip)).or_default().push(&e.name);
        }
    }
    for ((net, ip), names) in by_addr {
        if names.len() > 1 {
            out.push(format!(
                "address {ip} on {net} was handed to {} (all attached)",
                names.join(", ")
            ));
        }
    }
    let mut by_vni: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for n in l.nets.values().filter(|n| n.state == NetState::Live) {
        if let Some(v) = n.vni {
            by_vni.entry(v).or_default().push(&n.name);
        }
    }
    for (vni, names) in by_vni {
        if names.len() > 1 {
            out.push(format!(
                "VNI {vni} was handed to networks {}",
                names.join(", ")
            ));
        }
    }
    out
}

/// One leaked allocation: a stable key (to follow it across snapshots), the owner it names
/// (network, endpoint id; the endpoint id is empty for network-level leaks) and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Leak {
    /// Stable key.
    pub key: String,
    /// Network.
    pub net: String,
    /// Endpoint id, or empty.
    pub id: String,
    /// What is wrong.
    pub what: String,
}

/// Every allocation without its owner, and every record without its allocation; also
/// endpoint records no user holds (never acknowledged, refused, or detached), unless an
/// operation on them is still open.
pub fn leaks(s: &Snapshot, l: &Ledger) -> Vec<Leak> {
    let mut out = Vec::new();
    let mut leak = |key: String, net: &str, id: &str, what: String| {
        out.push(Leak {
            key,
            net: net.to_string(),
            id: id.to_string(),
            what,
        })
    };
    for ((net, ip), owner) in &s.addrs {
        let Some(n) = s.networks.get(net) else {
            leak(
                format!("addr {net}/{ip}"),
                net,
                owner,
                format!("address {ip} claimed by {owner} on {net}, a network that does not exist"),
            );
            continue;
        };
        if owner == "gateway" {
            if n.gateway != *ip {
                leak(
                    format!("addr {net}/{ip}"),
                    net,
                    "",
                    format!(
                        "address {ip} claimed as gateway of {net}, whose gateway is {}",
                        n.gateway
                    ),
                );
            }
            continue;
        }
        match s.endpoints.get(&(net.clone(), owner.clone())) {
            Some(e) if e.ip == *ip => {}
            Some(e) => leak(
                format!("addr {net}/{ip}"),
                net,
                owner,
                format!(
                    "address {ip} on {net} claimed by {owner}, whose record has {}",
                    e.ip
                ),
            ),
            None => leak(
                format!("addr {net}/{ip}"),
                net,
                owner,
                format!("address {ip} on {net} claimed by {owner}, which has no endpoint record"),
            ),
        }
    }
    for ((net, id), e) in &s.endpoints {
        match s.addrs.get(&(net.clone(), e.ip)) {
            Some(o) if o == id => {}
            Some(o) => leak(
                format!("ep {net}/{id}"),
                net,
                id,
                format!(
                    "endpoint {net}/{id} (host {}) has {}, claimed by {o}",
                    e.host, e.ip
                ),
            ),
            None => leak(
                format!("ep {net}/{id}"),
                net,
                id,
                format!(
                    "endpoint {net}/{id} (host {}) has {}, which is not claimed",
                    e.host, e.ip
                ),
            ),
        }
        if !s.networks.contains_key(net) {
            leak(
                format!("ep-net {net}/{id}"),
                net,
                id,
                format!("endpoint {net}/{id} is on a network that does not exist"),
            );
        }
        match l.eps.get(&(net.clone(), id.clone())) {
            None => leak(
                format!("ghost {net}/{id}"),
                net,
                id,
                format!(
                    "endpoint record {net}/{id} (host {}, {}) that no user attached",
                    e.host, e.ip
                ),
            ),
            Some(x) if matches!(x.state, EpState::Refused | EpState::Detached) => leak(
                format!("ghost {net}/{id}"),
                net,
                id,
                format!(
                    "endpoint record {net}/{id} (host {}, {}) whose attach was {}",
                    e.host,
                    e.ip,
                    if x.state == EpState::Refused {
                        "refused"
                    } else {
                        "undone by a detach"
                    }
                ),
            ),
            Some(_) => {}
        }
    }
    for (vni, name) in &s.vnis {
        match s.networks.get(name) {
            Some(n) if n.vni == *vni => {}
            _ => leak(
                format!("vni {vni}"),
                name,
                "",
                format!("VNI {vni} claimed by {name}, which is not a network with that VNI"),
            ),
        }
    }
    for (name, n) in &s.networks {
        if s.vnis.get(&n.vni) != Some(name) {
            leak(
                format!("net-vni {name}"),
                name,
                "",
                format!("network {name}'s VNI {} is not claimed by it", n.vni),
            );
        }
        if s.subnets.get(name) != Some(&n.subnet) {
            leak(
                format!("net-subnet {name}"),
                name,
                "",
                format!(
                    "network {name}'s subnet {} is not in the subnet index",
                    n.subnet
                ),
            );
        }
    }
    for (name, sub) in &s.subnets {
        if !s.networks.contains_key(name) {
            leak(
                format!("subnet {name}"),
                name,
                "",
                format!("subnet {sub} indexed for {name}, which does not exist"),
            );
        }
    }
    out.sort();
    out
}

/// Whether a leak's owner has an operation open in the ledger (its records may be
/// half-made for now).
pub fn owner_busy(l: &Ledger, leak: &Leak) -> bool {
    if leak.id.is_empty() {
        return l.nets.get(&leak.net).is_some_and(|n| n.state.open());
    }
    l.eps
        .get(&(leak.net.clone(), leak.id.clone()))
        .is_some_and(|e| e.state.open())
}

/// Acknowledged writes missing from a snapshot read over `[t0, t1]` (run times).
pub fn lost(s: &Snapshot, l: &Ledger, t0: Duration, t1: Duration) -> Vec<String> {
    let mut out = Vec::new();
    for e in l.must_exist(t0, t1) {
        match s.endpoints.get(&(e.net.clone(), e.name.clone())) {
            None => out.push(format!(
                "attach of {}/{} on h{} ({}) answered success at t+{:.1}s; its record is gone",
                e.net,
                e.name,
                e.host + 1,
                e.ip.map(|i| i.to_string()).unwrap_or_default(),
                e.acked_at.unwrap_or_default().as_secs_f64()
            )),
            Some(r) => {
                let host = format!("h{}", e.host + 1);
                if r.host != host || Some(r.ip) != e.ip {
                    out.push(format!(
                        "attach of {}/{} answered {host} {}; the record says {} {}",
                        e.net,
                        e.name,
                        e.ip.map(|i| i.to_string()).unwrap_or_default(),
                        r.host,
                        r.ip
                    ));
                }
            }
        }
    }
    for e in l.must_be_gone(t0) {
        if let Some(r) = s.endpoints.get(&(e.net.clone(), e.name.clone())) {
            out.push(format!(
                "detach of {}/{} answered success at t+{:.1}s; its record is back ({} {})",
                e.net,
                e.name,
                e.detached_at.unwrap_or_default().as_secs_f64(),
                r.host,
                r.ip
            ));
        }
    }
    for n in l.nets.values() {
        let acked_before = n.acked_at.is_some_and(|a| a < t0);
        let not_removing = n.remove_from.is_none_or(|r| r > t1);
        if acked_before && not_removing && n.state != NetState::Refused {
            match s.networks.get(&n.name) {
                None => out.push(format!(
                    "network create of {} answered success at t+{:.1}s; the network is gone",
                    n.name,
                    n.acked_at.unwrap_or_default().as_secs_f64()
                )),
                Some(r) => {
                    if n.vni.is_some_and(|v| v != r.vni)
                        || n.subnet
                            .as_deref()
                            .is_some_and(|x| x != r.subnet.to_string())
                    {
                        out.push(format!(
                            "network {} was created with VNI {:?} {:?}; the record says {} {}",
                            n.name, n.vni, n.subnet, r.vni, r.subnet
                        ));
                    }
                }
            }
        }
        if n.removed_at.is_some_and(|r| r < t0) && s.networks.contains_key(&n.name) {
            out.push(format!(
                "removal of network {} answered success; it is back",
                n.name
            ));
        }
    }
    out
}

/// Follows leaks across snapshots: a leak is reported once it has been seen in every
/// snapshot for at least `grace` while its owner had no operation open.
#[derive(Debug, Default)]
pub struct LeakTracker {
    first: BTreeMap<String, Duration>,
    reported: BTreeSet<String>,
}

impl LeakTracker {
    /// Feeds a snapshot's leaks seen at `now`; returns those to report now.
    pub fn feed(
        &mut self,
        leaks: &[Leak],
        l: &Ledger,
        now: Duration,
        grace: Duration,
    ) -> Vec<Leak> {
        let current: BTreeSet<&str> = leaks.iter().map(|k| k.key.as_str()).collect();
        self.first.retain(|k, _| current.contains(k.as_str()));
        let mut out = Vec::new();
        for k in leaks {
            if owner_busy(l, k) {
                // The clock starts when the owner's operation is settled.
                self.first.remove(&k.key);
                continue;
            }
            let since = *self.first.entry(k.key.clone()).or_insert(now);
            if now.saturating_sub(since) >= grace && self.reported.insert(k.key.clone()) {
                out.push(k.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::ledger::{Ep, Net};

    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        s.add(
            "/ovl/v1/networks/n1",
            br#"{"name":"n1","vni":4096,"subnet":"10.10.0.0/24","gateway":"10.10.0.1","internal":false,"mtu":null}"#,
        );
        s.add("/ovl/v1/vnis/4096", b"n1");
        s.add("/ovl/v1/subnets", br#"{"n1":"10.10.0.0/24"}"#);
        s.add("/ovl/v1/addrs/n1/10.10.0.1", b"gateway");
        for (id, ip, host) in [("a", "10.10.0.2", "h1"), ("b", "10.10.0.3", "h2")] {
            s.add(&format!("/ovl/v1/addrs/n1/{ip}"), id.as_bytes());
            s.add(
                &format!("/ovl/v1/endpoints/n1/{id}"),
                format!(r#"{{"id":"{id}","network":"n1","host":"{host}","name":"{id}","aliases":[],"ip":"{ip}","mac":"02:42:0a:0a:00:02","publish":[]}}"#).as_bytes(),
            );
        }
        s
    }

    fn ledger() -> Ledger {
        let mut l = Ledger::default();
        l.nets.insert(
            "n1".into(),
            Net {
                name: "n1".into(),
                vni: Some(4096),
                subnet: Some("10.10.0.0/24".into()),
                state: NetState::Live,
                acked_at: Some(Duration::from_secs(1)),
                remove_from: None,
                removed_at: None,
                attachable: true,
                internal: false,
            },
        );
        for (id, ip, host) in [("a", [10, 10, 0, 2], 0), ("b", [10, 10, 0, 3], 1)] {
            l.eps.insert(
                ("n1".into(), id.into()),
                Ep {
                    net: "n1".into(),
                    name: id.into(),
                    host,
                    ns: format!("lab-c-{id}"),
                    ip: Some(ip.into()),
                    ifname: Some("eth0".into()),
                    state: EpState::Live,
                    acked_at: Some(Duration::from_secs(2)),
                    detach_from: None,
                    detached_at: None,
                    detach_tries: 0,
                    deferred: false,
                    by: "test".into(),
                },
            );
        }
        l
    }

    const T0: Duration = Duration::from_secs(10);
    const T1: Duration = Duration::from_secs(11);

    #[test]
    fn a_consistent_state_passes() {
        let (s, l) = (snap(), ledger());
        assert_eq!(unique(&s), Vec::<String>::new());
        assert_eq!(unique_in_ledger(&l), Vec::<String>::new());
        assert_eq!(leaks(&s, &l), vec![]);
        assert_eq!(lost(&s, &l, T0, T1), Vec::<String>::new());
    }

    #[test]
    fn parses_etcdctl_json() {
        let b = base64::engine::general_purpose::STANDARD;
        let json = format!(
            r#"{{"header":{{"cluster_id":1,"member_id":2,"revision":77,"raft_term":3}},"kvs":[{{"key":"{}","create_revision":5,"mod_revision":5,"version":1,"value":"{}"}}],"count":1}}"#,
            b.encode("/ovl/v1/vnis/4097"),
            b.encode("n2")
        );
        let s = Snapshot::parse(json.as_bytes()).unwrap();
        assert_eq!(s.revision, 77);
        assert_eq!(s.vnis[&4097], "n2");
        // An empty prefix: no kvs at all.
        let s = Snapshot::parse(br#"{"header":{"revision":3}}"#).unwrap();
        assert!(s.vnis.is_empty());
    }

    #[test]
    fn duplicates_are_found() {
        let mut s = snap();
        s.add(
            "/ovl/v1/endpoints/n1/c",
            br#"{"host":"h3","ip":"10.10.0.3"}"#,
        );
        s.add(
            "/ovl/v1/endpoints/n1/g",
            br#"{"host":"h3","ip":"10.10.0.1"}"#,
        );
        s.add(
            "/ovl/v1/networks/n2",
            br#"{"vni":4096,"subnet":"10.10.0.128/25","gateway":"10.10.0.129"}"#,
        );
        s.add("/ovl/v1/endpoints/n1/bad", b"{");
        let u = unique(&s);
        assert!(
            u.iter()
                .any(|x| x.contains("10.10.0.3 on n1 is recorded for b, c")),
            "{u:?}"
        );
        assert!(u.iter().any(|x| x.contains("gateway address")), "{u:?}");
        assert!(
            u.iter()
                .any(|x| x.contains("VNI 4096 is recorded for networks n1, n2")),
            "{u:?}"
        );
        assert!(u.iter().any(|x| x.contains("overlap")), "{u:?}");
        assert!(
            u.iter()
                .any(|x| x.contains("unreadable record /ovl/v1/endpoints/n1/bad")),
            "{u:?}"
        );

        let mut l = ledger();
        l.eps.get_mut(&("n1".into(), "b".into())).unwrap().ip = Some([10, 10, 0, 2].into());
        let u = unique_in_ledger(&l);
        assert_eq!(u.len(), 1, "{u:?}");
        assert!(u[0].contains("10.10.0.2 on n1 was handed to a, b"));
    }

    #[test]
    fn leaks_are_found_and_their_kinds_named() {
        let l = ledger();
        // A claim without a record (the attach died between the two writes).
        let mut s = snap();
        s.add("/ovl/v1/addrs/n1/10.10.0.9", b"k1");
        let k = leaks(&s, &l);
        assert_eq!(k.len(), 1, "{k:?}");
        assert!(
            k[0].what
                .contains("claimed by k1, which has no endpoint record")
        );
        // A record without its claim.
        let mut s = snap();
        s.addrs.remove(&("n1".to_string(), [10, 10, 0, 3].into()));
        let k = leaks(&s, &l);
        assert!(k[0].what.contains("which is not claimed"), "{k:?}");
        // A record no user holds (a ghost), and one whose detach answered success.
        let mut s = snap();
        s.add("/ovl/v1/addrs/n1/10.10.0.7", b"z");
        s.add(
            "/ovl/v1/endpoints/n1/z",
            br#"{"host":"h2","ip":"10.10.0.7"}"#,
        );
        let k = leaks(&s, &l);
        assert_eq!(k.len(), 1, "{k:?}");
        assert!(k[0].what.contains("that no user attached"));
        let mut l2 = ledger();
        l2.eps.get_mut(&("n1".into(), "b".into())).unwrap().state = EpState::Detached;
        let k = leaks(&snap(), &l2);
        assert!(k[0].what.contains("undone by a detach"), "{k:?}");
        // VNI claim of a removed network; a network missing from the index.
        let mut s = snap();
        s.add("/ovl/v1/vnis/4100", b"gone");
        s.subnets.clear();
        let k = leaks(&s, &l);
        assert_eq!(k.len(), 2, "{k:?}");
    }

    #[test]
    fn lost_acknowledged_writes() {
        let mut l = ledger();
        let mut s = snap();
        // The record of an acknowledged attach is gone.
        s.endpoints.remove(&("n1".to_string(), "a".to_string()));
        assert_eq!(lost(&s, &l, T0, T1).len(), 1);
        // ... unless its detach had started by the time of the read.
        l.eps
            .get_mut(&("n1".into(), "a".into()))
            .unwrap()
            .detach_from = Some(T0);
        assert_eq!(lost(&s, &l, T0, T1), Vec::<String>::new());
        // An acknowledged detach whose record came back.
        let s = snap();
        let e = l.eps.get_mut(&("n1".into(), "b".into())).unwrap();
        e.state = EpState::Detached;
        e.detach_from = Some(Duration::from_secs(3));
        e.detached_at = Some(Duration::from_secs(4));
        let x = lost(&s, &l, T0, T1);
        assert!(x.iter().any(|m| m.contains("its record is back")), "{x:?}");
        // An acknowledged network changed its VNI.
        let mut s = snap();
        s.networks.get_mut("n1").unwrap().vni = 5000;
        assert!(lost(&s, &ledger(), T0, T1)[0].contains("VNI"));
        // A read that began before the ack says nothing about it.
        let mut s = snap();
        s.endpoints.clear();
        assert_eq!(
            lost(&s, &ledger(), Duration::from_secs(1), T1),
            Vec::<String>::new()
        );
    }

    #[test]
    fn leaks_are_reported_after_the_grace_and_only_when_settled() {
        let mut l = ledger();
        let mut s = snap();
        s.add("/ovl/v1/addrs/n1/10.10.0.9", b"k1");
        let k = leaks(&s, &l);
        let mut t = LeakTracker::default();
        let g = Duration::from_secs(30);
        assert!(t.feed(&k, &l, Duration::from_secs(0), g).is_empty());
        assert!(t.feed(&k, &l, Duration::from_secs(29), g).is_empty());
        assert_eq!(t.feed(&k, &l, Duration::from_secs(30), g).len(), 1);
        // Reported once.
        assert!(t.feed(&k, &l, Duration::from_secs(60), g).is_empty());
        // An owner with an open operation restarts the clock.
        let mut t = LeakTracker::default();
        l.eps.insert(
            ("n1".into(), "k1".into()),
            Ep {
                net: "n1".into(),
                name: "k1".into(),
                host: 0,
                ns: "x".into(),
                ip: None,
                ifname: None,
                state: EpState::Unknown,
                acked_at: None,
                detach_from: None,
                detached_at: None,
                detach_tries: 0,
                deferred: false,
                by: "t".into(),
            },
        );
        assert!(t.feed(&k, &l, Duration::from_secs(0), g).is_empty());
        assert!(t.feed(&k, &l, Duration::from_secs(40), g).is_empty());
        l.eps.get_mut(&("n1".into(), "k1".into())).unwrap().state = EpState::Refused;
        assert!(t.feed(&k, &l, Duration::from_secs(41), g).is_empty());
        assert_eq!(t.feed(&k, &l, Duration::from_secs(71), g).len(), 1);
        // A leak that went away and came back starts over.
        let mut t = LeakTracker::default();
        assert!(t.feed(&k, &l, Duration::from_secs(0), g).is_empty());
        assert!(t.feed(&[], &l, Duration::from_secs(10), g).is_empty());
        assert!(t.feed(&k, &l, Duration::from_secs(35), g).is_empty());
    }
}
