//! The pure record store: which names exist on which network, and what a given requester may see.
//!
//! The agent builds a [`Zone`] from the full list of [`NameRecord`]s whenever endpoints change
//! and swaps it in atomically (`ArcSwap<Zone>`); a zone is never mutated after it is built, so a
//! DNS answer or a hosts file is always computed from one consistent snapshot.
//!
//! Matching is ASCII case-insensitive and ignores one trailing dot. Names are scoped: a requester
//! only sees endpoints on the networks it is attached to.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::NamesError;

/// One endpoint on one network, as the names layer sees it.
///
/// A container attached to two networks has two records (one per network, usually with two
/// different addresses).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NameRecord {
    /// The network name (the cluster-wide identity of the network, e.g. `net1`).
    pub network: String,
    /// The endpoint id; lets the hosts renderer tell "self" from peers.
    pub endpoint_id: String,
    /// The primary name (the container name). It is the only name that gets a PTR record.
    pub name: String,
    /// Extra names (`--network-alias`); several endpoints may share one alias.
    pub aliases: Vec<String>,
    /// The endpoint's address on `network`.
    pub ip: Ipv4Addr,
}

/// What the zone says about a query name, for one requester.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A cluster name: every address registered under it on the requester's networks, sorted
    /// and without duplicates (the DNS server rotates the order per answer).
    Addresses(Vec<Ipv4Addr>),
    /// A reverse name (`d.c.b.a.in-addr.arpa`) of an endpoint on the requester's networks:
    /// `name.network.` for each match (primary names only, never aliases).
    Ptr(Vec<String>),
    /// The name is a network domain apex (`net1`) with no endpoint of that name: it exists but
    /// has no address.
    NoData,
    /// The name is inside the domain of a cluster network (`x.net1`) but nothing of that name is
    /// visible to this requester. Answered locally so cluster names never leak upstream.
    NxDomain,
    /// Not a cluster name: resolve it upstream.
    Forward,
}

/// Names and reverse entries of one network.
#[derive(Debug, Default)]
struct NetworkNames {
    /// Lower-cased name or alias -> addresses (sorted, deduplicated).
    names: HashMap<String, Vec<Ipv4Addr>>,
    /// Address -> `name.network.` of the primary names registered at it.
    ptr: HashMap<Ipv4Addr, Vec<String>>,
}

/// An immutable snapshot of every name in the cluster.
#[derive(Debug, Default)]
pub struct Zone {
    /// The valid records, sorted, without exact duplicates.
    records: Vec<NameRecord>,
    /// Lower-cased network name -> its names.
    networks: HashMap<String, NetworkNames>,
}

const MAX_LABEL: usize = 63;
const MAX_NAME: usize = 253;

/// Checks one DNS-ish name (a container name, alias or network name).
///
/// Allowed: ASCII letters, digits, `-`, `_`, and `.` between non-empty labels of at most 63
/// characters; at most 253 characters. This is stricter than Docker (which also allows, for
/// example, names starting with `_`), and exactly what is safe in a hosts file and on the wire.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "{what} {name:?} is longer than {MAX_NAME} characters"
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("{what} {name:?} has an empty label"));
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "{what} {name:?} has a label longer than {MAX_LABEL} characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("{what} {name:?} contains {c:?}"));
        }
    }
    Ok(())
}

/// Validates a record: name, aliases and network must be usable DNS names, and
/// `name.network` / `alias.network` must fit in a DNS name.
///
/// The agent should call this when an endpoint is attached, so bad input is refused up front;
/// [`Zone::build`] skips (and logs) records that fail it.
pub fn validate_record(record: &NameRecord) -> Result<(), NamesError> {
    let fail = |reason: String| NamesError::InvalidRecord {
        endpoint_id: record.endpoint_id.clone(),
        network: record.network.clone(),
        reason,
    };
    check_name("network", &record.network).map_err(fail)?;
    check_name("name", &record.name).map_err(fail)?;
    for alias in &record.aliases {
        check_name("alias", alias).map_err(fail)?;
    }
    for n in std::iter::once(&record.name).chain(&record.aliases) {
        if n.len() + 1 + record.network.len() > MAX_NAME {
            return Err(fail(format!(
                "{n}.{} is longer than {MAX_NAME} characters",
                record.network
            )));
        }
    }
    if record.ip.is_unspecified() {
        return Err(fail("address is 0.0.0.0".into()));
    }
    Ok(())
}

/// Lower-cases `s` only when needed.
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Normalises a query name: strips one trailing dot and lower-cases.
fn normalize(qname: &str) -> Cow<'_, str> {
    lower(qname.strip_suffix('.').unwrap_or(qname))
}

/// Parses `d.c.b.a.in-addr.arpa` (already normalised) into `a.b.c.d`.
fn parse_reverse(q: &str) -> Option<Ipv4Addr> {
    let rest = q.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut n = 0;
    for label in rest.split('.') {
        if n == 4
            || label.is_empty()
            || label.len() > 3
            || !label.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        octets[3 - n] = label.parse().ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(octets))
}

/// Returns `name` without the `.domain` suffix, if it has it.
fn strip_domain<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    name.strip_suffix(domain)?
        .strip_suffix('.')
        .filter(|p| !p.is_empty())
}

impl Zone {
    /// Builds a zone from every record of the cluster. Invalid records (see
    /// [`validate_record`]) are skipped with a warning: one bad record must not take names away
    /// from everybody else.
    pub fn build(records: Vec<NameRecord>) -> Zone {
        let valid = records
            .into_iter()
            .filter(|r| match validate_record(r) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping invalid name record");
                    false
                }
            })
            .collect();
        Self::from_valid(valid)
    }

    /// Builds a zone, refusing the whole input if any record is invalid.
    pub fn try_build(records: Vec<NameRecord>) -> Result<Zone, NamesError> {
        records.iter().try_for_each(validate_record)?;
        Ok(Self::from_valid(records))
    }

    /// Declares networks that have no endpoint yet, so `x.NET` is answered NXDOMAIN instead of
    /// being forwarded. Invalid network names are ignored.
    pub fn with_networks<I, S>(mut self, networks: I) -> Zone
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for net in networks {
            let net = net.as_ref();
            if check_name("network", net).is_ok() {
                self.networks.entry(net.to_ascii_lowercase()).or_default();
            }
        }
        self
    }

    fn from_valid(mut records: Vec<NameRecord>) -> Zone {
        records.sort();
        records.dedup();
        let mut networks: HashMap<String, NetworkNames> = HashMap::new();
        for r in &records {
            let net = networks.entry(r.network.to_ascii_lowercase()).or_default();
            for n in std::iter::once(&r.name).chain(&r.aliases) {
                net.names
                    .entry(n.to_ascii_lowercase())
                    .or_default()
                    .push(r.ip);
            }
            net.ptr
                .entry(r.ip)
                .or_default()
                .push(format!("{}.{}.", r.name, r.network));
        }
        for net in networks.values_mut() {
            for ips in net.names.values_mut() {
                ips.sort();
                ips.dedup();
            }
            for names in net.ptr.values_mut() {
                names.sort();
                names.dedup();
            }
        }
        Zone { records, networks }
    }

    /// Every valid record, sorted by (network, endpoint id, name, ...).
    pub fn records(&self) -> &[NameRecord] {
        &self.records
    }

    /// The records on any of `networks` (case-insensitive), in [`Zone::records`] order.
    pub fn records_on<'a>(
        &'a self,
        networks: &'a [String],
    ) -> impl Iterator<Item = &'a NameRecord> {
        self.records
            .iter()
            .filter(move |r| networks.iter().any(|n| n.eq_ignore_ascii_case(&r.network)))
    }

    /// Every network of the zone (lower-cased), sorted: what a requester allowed to see all
    /// of them is answered on.
    pub fn network_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.networks.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether the zone knows a network of this name (case-insensitive).
    pub fn has_network(&self, network: &str) -> bool {
        self.networks.contains_key(lower(network).as_ref())
    }

    /// Resolves `qname` for a requester attached to `networks_of_requester`.
    ///
    /// * `name`, `name.network`, `alias`, `alias.network` on the requester's networks give
    ///   [`Answer::Addresses`] (every endpoint under that name, on every requester network).
    /// * `d.c.b.a.in-addr.arpa` of an endpoint on the requester's networks gives
    ///   [`Answer::Ptr`] with `name.network.`; unknown addresses are forwarded.
    /// * Anything else inside a cluster network's domain (any network of the zone or of the
    ///   requester) is [`Answer::NxDomain`] (the apex itself is [`Answer::NoData`]).
    /// * Everything else is [`Answer::Forward`].
    pub fn resolve(&self, networks_of_requester: &[String], qname: &str) -> Answer {
        let q = normalize(qname);
        let q = q.as_ref();
        if q.is_empty() {
            return Answer::Forward;
        }
        let mine = || {
            networks_of_requester
                .iter()
                .filter_map(|n| self.networks.get(lower(n).as_ref()).map(|z| (lower(n), z)))
        };

        if let Some(ip) = parse_reverse(q) {
            let mut names: Vec<String> = mine()
                .filter_map(|(_, z)| z.ptr.get(&ip))
                .flatten()
                .cloned()
                .collect();
            names.sort();
            names.dedup();
            return if names.is_empty() {
                Answer::Forward
            } else {
                Answer::Ptr(names)
            };
        }

        let mut ips = BTreeSet::new();
        for (net, z) in mine() {
            if let Some(found) = z.names.get(q) {
                ips.extend(found);
            }
            if let Some(found) = strip_domain(q, &net).and_then(|prefix| z.names.get(prefix)) {
                ips.extend(found);
            }
        }
        if !ips.is_empty() {
            return Answer::Addresses(ips.into_iter().collect());
        }

        let is_apex = |net: &str| q == net;
        let is_inside = |net: &str| strip_domain(q, net).is_some();
        let domains = self
            .networks
            .keys()
            .map(|k| Cow::Borrowed(k.as_str()))
            .chain(networks_of_requester.iter().map(|n| lower(n)));
        let mut answer = Answer::Forward;
        for net in domains {
            if is_inside(&net) {
                return Answer::NxDomain;
            }
            if is_apex(&net) {
                answer = Answer::NoData;
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(network: &str, id: &str, name: &str, aliases: &[&str], ip: [u8; 4]) -> NameRecord {
        NameRecord {
            network: network.into(),
            endpoint_id: id.into(),
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ip: Ipv4Addr::from(ip),
        }
    }

    fn nets(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn ips(list: &[[u8; 4]]) -> Answer {
        Answer::Addresses(list.iter().map(|o| Ipv4Addr::from(*o)).collect())
    }

    fn zone() -> Zone {
        Zone::build(vec![
            rec("net1", "e1", "c1", &[], [10, 1, 0, 2]),
            rec("net1", "e2", "c2", &["web", "Api"], [10, 1, 0, 3]),
            rec("net1", "e3", "c3", &["web"], [10, 1, 0, 4]),
            rec("net2", "e4", "c4", &[], [10, 2, 0, 2]),
            rec("net2", "e5", "c1", &[], [10, 2, 0, 9]),
            rec("Net.Three", "e6", "db", &[], [10, 3, 0, 2]),
        ])
    }

    #[test]
    fn name_and_name_dot_network() {
        let z = zone();
        let n1 = nets(&["net1"]);
        assert_eq!(z.resolve(&n1, "c2"), ips(&[[10, 1, 0, 3]]));
        assert_eq!(z.resolve(&n1, "c2.net1"), ips(&[[10, 1, 0, 3]]));
        assert_eq!(z.resolve(&n1, "c2.net1."), ips(&[[10, 1, 0, 3]]));
        assert_eq!(z.resolve(&n1, "C2.NeT1."), ips(&[[10, 1, 0, 3]]));
    }

    #[test]
    fn aliases_resolve_to_every_endpoint() {
        let z = zone();
        let n1 = nets(&["net1"]);
        assert_eq!(z.resolve(&n1, "web"), ips(&[[10, 1, 0, 3], [10, 1, 0, 4]]));
        assert_eq!(
            z.resolve(&n1, "WEB.net1"),
            ips(&[[10, 1, 0, 3], [10, 1, 0, 4]])
        );
        assert_eq!(z.resolve(&n1, "api"), ips(&[[10, 1, 0, 3]]));
        assert_eq!(z.resolve(&n1, "api.net1."), ips(&[[10, 1, 0, 3]]));
    }

    #[test]
    fn scoped_to_requester_networks() {
        let z = zone();
        // c4 lives on net2 only: invisible from net1, and net2's domain is answered locally.
        assert_eq!(z.resolve(&nets(&["net1"]), "c4"), Answer::Forward);
        assert_eq!(z.resolve(&nets(&["net1"]), "c4.net2"), Answer::NxDomain);
        assert_eq!(z.resolve(&nets(&["net2"]), "c4"), ips(&[[10, 2, 0, 2]]));
        // c1 exists on both networks with different addresses.
        assert_eq!(z.resolve(&nets(&["net1"]), "c1"), ips(&[[10, 1, 0, 2]]));
        assert_eq!(z.resolve(&nets(&["net2"]), "c1"), ips(&[[10, 2, 0, 9]]));
        assert_eq!(
            z.resolve(&nets(&["net1", "net2"]), "c1"),
            ips(&[[10, 1, 0, 2], [10, 2, 0, 9]])
        );
        assert_eq!(
            z.resolve(&nets(&["net1", "net2"]), "c1.net2"),
            ips(&[[10, 2, 0, 9]])
        );
        // No networks at all: nothing local, cluster domains still not forwarded.
        assert_eq!(z.resolve(&[], "c1"), Answer::Forward);
        assert_eq!(z.resolve(&[], "c1.net1"), Answer::NxDomain);
    }

    #[test]
    fn dotted_network_names() {
        let z = zone();
        let n3 = nets(&["net.three"]);
        assert_eq!(z.resolve(&n3, "db"), ips(&[[10, 3, 0, 2]]));
        assert_eq!(z.resolve(&n3, "db.net.three"), ips(&[[10, 3, 0, 2]]));
        assert_eq!(z.resolve(&n3, "x.net.three"), Answer::NxDomain);
        assert_eq!(z.resolve(&n3, "three"), Answer::Forward);
    }

    #[test]
    fn unknown_names_in_network_domains_are_nxdomain() {
        let z = zone();
        let n1 = nets(&["net1"]);
        assert_eq!(z.resolve(&n1, "x.net1"), Answer::NxDomain);
        assert_eq!(z.resolve(&n1, "a.b.net1."), Answer::NxDomain);
        assert_eq!(z.resolve(&n1, "net1"), Answer::NoData);
        // A requester network with no records yet is still a cluster domain.
        assert_eq!(z.resolve(&nets(&["fresh"]), "x.fresh"), Answer::NxDomain);
        let z = zone().with_networks(["declared"]);
        assert_eq!(z.resolve(&n1, "x.declared"), Answer::NxDomain);
        // Names that merely end like a network are not inside it.
        assert_eq!(z.resolve(&n1, "xnet1"), Answer::Forward);
    }

    #[test]
    fn everything_else_is_forwarded() {
        let z = zone();
        let n1 = nets(&["net1"]);
        assert_eq!(z.resolve(&n1, "example.com"), Answer::Forward);
        assert_eq!(z.resolve(&n1, "example.com."), Answer::Forward);
        assert_eq!(z.resolve(&n1, "c2.example.com"), Answer::Forward);
        assert_eq!(z.resolve(&n1, ""), Answer::Forward);
        assert_eq!(z.resolve(&n1, "."), Answer::Forward);
    }

    #[test]
    fn ptr_primary_name_only_and_scoped() {
        let z = zone();
        let n1 = nets(&["net1"]);
        assert_eq!(
            z.resolve(&n1, "3.0.1.10.in-addr.arpa"),
            Answer::Ptr(vec!["c2.net1.".into()])
        );
        assert_eq!(
            z.resolve(&n1, "3.0.1.10.IN-ADDR.ARPA."),
            Answer::Ptr(vec!["c2.net1.".into()])
        );
        // Known on net2 only: not visible from net1.
        assert_eq!(z.resolve(&n1, "2.0.2.10.in-addr.arpa"), Answer::Forward);
        assert_eq!(
            z.resolve(&nets(&["net2"]), "2.0.2.10.in-addr.arpa"),
            Answer::Ptr(vec!["c4.net2.".into()])
        );
        // Unknown and malformed reverse names go upstream.
        assert_eq!(z.resolve(&n1, "99.0.1.10.in-addr.arpa"), Answer::Forward);
        assert_eq!(z.resolve(&n1, "0.1.10.in-addr.arpa"), Answer::Forward);
        assert_eq!(z.resolve(&n1, "1.3.0.1.10.in-addr.arpa"), Answer::Forward);
        assert_eq!(z.resolve(&n1, "300.0.1.10.in-addr.arpa"), Answer::Forward);
        assert_eq!(z.resolve(&n1, "+3.0.1.10.in-addr.arpa"), Answer::Forward);
    }

    #[test]
    fn ptr_keeps_original_case() {
        let z = Zone::build(vec![rec("Prod", "e1", "Web1", &[], [10, 9, 0, 2])]);
        assert_eq!(
            z.resolve(&nets(&["prod"]), "2.0.9.10.in-addr.arpa"),
            Answer::Ptr(vec!["Web1.Prod.".into()])
        );
    }

    #[test]
    fn duplicates_collapse() {
        let z = Zone::build(vec![
            rec("net1", "e1", "c1", &["c1"], [10, 1, 0, 2]),
            rec("net1", "e1", "c1", &["c1"], [10, 1, 0, 2]),
        ]);
        assert_eq!(z.records().len(), 1);
        assert_eq!(z.resolve(&nets(&["net1"]), "c1"), ips(&[[10, 1, 0, 2]]));
        assert_eq!(
            z.resolve(&nets(&["net1"]), "2.0.1.10.in-addr.arpa"),
            Answer::Ptr(vec!["c1.net1.".into()])
        );
    }

    #[test]
    fn network_names_and_lookup() {
        let z = zone();
        assert_eq!(z.network_names(), ["net.three", "net1", "net2"]);
        // Every network at once (the host itself): names anywhere, by their network too.
        let all = z.network_names();
        assert_eq!(z.resolve(&all, "db.Net.Three"), ips(&[[10, 3, 0, 2]]));
        assert_eq!(z.resolve(&all, "c1"), ips(&[[10, 1, 0, 2], [10, 2, 0, 9]]));
        assert!(z.has_network("NET2"));
        assert!(!z.has_network("net9"));
    }

    #[test]
    fn records_on_filters_by_network() {
        let z = zone();
        let n = nets(&["NET2"]);
        let on: Vec<_> = z.records_on(&n).map(|r| r.endpoint_id.as_str()).collect();
        assert_eq!(on, ["e4", "e5"]);
    }

    #[test]
    fn invalid_records_are_refused_or_skipped() {
        let bad = [
            rec("net1", "e", "", &[], [10, 0, 0, 1]),
            rec("net1", "e", "has space", &[], [10, 0, 0, 1]),
            rec("net1", "e", "a..b", &[], [10, 0, 0, 1]),
            rec("net1", "e", ".a", &[], [10, 0, 0, 1]),
            rec("net1", "e", "c1", &["bad#alias"], [10, 0, 0, 1]),
            rec("", "e", "c1", &[], [10, 0, 0, 1]),
            rec("net1", "e", &"x".repeat(64), &[], [10, 0, 0, 1]),
            rec("net1", "e", "c1", &[], [0, 0, 0, 0]),
            rec("net1", "e", "/c1", &[], [10, 0, 0, 1]),
        ];
        for r in &bad {
            let err = validate_record(r).expect_err(&format!("{r:?} must be refused"));
            assert!(matches!(err, NamesError::InvalidRecord { .. }));
            assert!(Zone::try_build(vec![r.clone()]).is_err());
        }
        let mut all = bad.to_vec();
        all.push(rec("net1", "ok", "good", &[], [10, 0, 0, 5]));
        let z = Zone::build(all);
        assert_eq!(z.records().len(), 1);
        assert_eq!(z.resolve(&nets(&["net1"]), "good"), ips(&[[10, 0, 0, 5]]));
        // 63-character labels and underscores are fine.
        validate_record(&rec("net_1", "e", &"x".repeat(63), &["a_b"], [10, 0, 0, 1])).unwrap();
    }

    #[test]
    fn reverse_parsing() {
        assert_eq!(
            parse_reverse("4.3.2.1.in-addr.arpa"),
            Some(Ipv4Addr::new(1, 2, 3, 4))
        );
        assert_eq!(parse_reverse("4.3.2.1.in-addr.arpa.x"), None);
        assert_eq!(parse_reverse("4..2.1.in-addr.arpa"), None);
        assert_eq!(parse_reverse("in-addr.arpa"), None);
        assert_eq!(parse_reverse("256.3.2.1.in-addr.arpa"), None);
    }
}
