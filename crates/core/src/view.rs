//! An in-memory snapshot of the cluster, built from a listing and kept current by applying
//! watch events. Pure: the reconciler computes desired state from it.
//!
//! The maps are persistent (structural sharing): the sync loop publishes a copy after every
//! event, and that copy costs O(1), an event O(log n), however large the cluster is. What an
//! event [`Change`]d tells the agent whether it concerns this host at all.

use imbl::OrdMap;
use ovl_kv::{Listing, Revision, WatchEvent};
use serde::de::DeserializeOwned;

use crate::{
    keys::{self, KeyRef},
    model::{AliveRecord, EndpointRecord, HostRecord, NetworkRecord},
};

/// Hosts, liveness, networks and endpoints as last seen in the KV.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Host records by id.
    pub hosts: OrdMap<String, HostRecord>,
    /// Liveness records by host id.
    pub alive: OrdMap<String, AliveRecord>,
    /// Networks by name.
    pub networks: OrdMap<String, NetworkRecord>,
    /// Endpoints by (network, id): one network's endpoints are one range.
    pub endpoints: OrdMap<(String, String), EndpointRecord>,
    /// The KV revision this view reflects.
    pub revision: Revision,
}

/// What one watch event changed in the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing the datapath or names depend on: claims, indexes, an unreadable record, or a
    /// record written again unchanged.
    None,
    /// A host's record or its liveness.
    Host(String),
    /// A network's record.
    Network(String),
    /// An endpoint record on `network`; `hosts` are the hosts it lived on before and after.
    Endpoint {
        /// Its network.
        network: String,
        /// The host of the record before the event and after it (one entry when equal).
        hosts: Vec<String>,
    },
}

impl Change {
    /// Whether the event changed nothing that matters.
    pub fn is_none(&self) -> bool {
        matches!(self, Change::None)
    }
}

fn parse<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            // A record we cannot read must not stop the agent; it is skipped and reported.
            tracing::warn!(key, error = %e, "skipping unreadable record");
            None
        }
    }
}

/// Inserts `v` (if it could be read), and says whether that changed the map.
fn upsert<K: Ord + Clone, V: Clone + PartialEq>(
    map: &mut OrdMap<K, V>,
    k: K,
    v: Option<V>,
) -> bool {
    match v {
        Some(v) => map.insert(k, v.clone()).as_ref() != Some(&v),
        None => false,
    }
}

/// `change` if `changed`.
fn when(changed: bool, change: impl FnOnce() -> Change) -> Change {
    if changed { change() } else { Change::None }
}

impl ClusterView {
    /// Builds a view from a listing of [`keys::VIEW`] (or of all of [`keys::ROOT`]).
    pub fn from_listing(listing: &Listing) -> Self {
        let mut v = ClusterView {
            revision: listing.revision,
            ..Default::default()
        };
        for e in &listing.entries {
            v.put(&e.key, &e.value);
        }
        v
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Change {
        match keys::classify(key) {
            KeyRef::Host(id) => when(
                upsert(&mut self.hosts, id.to_string(), parse(key, value)),
                || Change::Host(id.into()),
            ),
            KeyRef::Alive(id) => when(
                upsert(&mut self.alive, id.to_string(), parse(key, value)),
                || Change::Host(id.into()),
            ),
            KeyRef::Network(name) => when(
                upsert(&mut self.networks, name.to_string(), parse(key, value)),
                || Change::Network(name.into()),
            ),
            KeyRef::Endpoint(net, id) => {
                let Some(ep) = parse::<EndpointRecord>(key, value) else {
                    return Change::None;
                };
                let host = ep.host.clone();
                match self
                    .endpoints
                    .insert((net.to_string(), id.to_string()), ep.clone())
                {
                    Some(old) if old == ep => Change::None,
                    old => {
                        let mut hosts = vec![host];
                        if let Some(o) = old
                            && o.host != hosts[0]
                        {
                            hosts.push(o.host);
                        }
                        Change::Endpoint {
                            network: net.into(),
                            hosts,
                        }
                    }
                }
            }
            KeyRef::Other => Change::None,
        }
    }

    fn delete(&mut self, key: &str) -> Change {
        match keys::classify(key) {
            KeyRef::Host(id) => when(self.hosts.remove(id).is_some(), || Change::Host(id.into())),
            KeyRef::Alive(id) => when(self.alive.remove(id).is_some(), || Change::Host(id.into())),
            KeyRef::Network(name) => when(self.networks.remove(name).is_some(), || {
                Change::Network(name.into())
            }),
            KeyRef::Endpoint(net, id) => {
                match self.endpoints.remove(&(net.to_string(), id.to_string())) {
                    Some(old) => Change::Endpoint {
                        network: net.into(),
                        hosts: vec![old.host],
                    },
                    None => Change::None,
                }
            }
            KeyRef::Other => Change::None,
        }
    }

    /// Applies one watch event and says what it changed.
    pub fn apply(&mut self, ev: &WatchEvent) -> Change {
        self.revision = self.revision.max(ev.revision());
        match ev {
            WatchEvent::Put(e) => self.put(&e.key, &e.value),
            WatchEvent::Delete { key, .. } => self.delete(key),
        }
    }

    /// Whether both views hold the same records (at whatever revisions).
    pub fn same_records(&self, other: &ClusterView) -> bool {
        self.hosts == other.hosts
            && self.alive == other.alive
            && self.networks == other.networks
            && self.endpoints == other.endpoints
    }

    /// Whether a host is alive (its lease is held).
    pub fn is_alive(&self, host: &str) -> bool {
        self.alive.contains_key(host)
    }

    /// Endpoints of one network: a range of the map, O(log n) plus what it yields.
    pub fn endpoints_on<'a>(
        &'a self,
        net: &'a str,
    ) -> impl Iterator<Item = &'a EndpointRecord> + 'a {
        self.endpoints
            .range((net.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == net)
            .map(|(_, e)| e)
    }

    /// Endpoints living on `host` (a scan of every endpoint: for inspection, not per event).
    pub fn endpoints_of_host<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = &'a EndpointRecord> + 'a {
        self.endpoints.values().filter(move |e| e.host == host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ipam::mac_for, model::MacAddr};
    use ovl_kv::KvEntry;
    use std::net::Ipv4Addr;

    fn entry(key: &str, value: Vec<u8>, rev: i64) -> KvEntry {
        KvEntry {
            key: key.into(),
            value,
            create_revision: rev,
            mod_revision: rev,
            lease: None,
        }
    }

    fn ep(net: &str, id: &str, host: &str, ip: [u8; 4]) -> EndpointRecord {
        let ip = Ipv4Addr::from(ip);
        EndpointRecord {
            id: id.into(),
            network: net.into(),
            host: host.into(),
            name: id.into(),
            aliases: vec![],
            ip,
            mac: mac_for(ip),
            publish: vec![],
        }
    }

    #[test]
    fn listing_then_events() {
        let e1 = ep("net1", "c1", "h1", [10, 10, 0, 2]);
        let listing = Listing {
            entries: vec![
                entry(
                    &keys::endpoint("net1", "c1"),
                    serde_json::to_vec(&e1).unwrap(),
                    5,
                ),
                entry(keys::SUBNETS, b"{}".to_vec(), 6),
                entry(&keys::host("h1"), b"not json".to_vec(), 7),
            ],
            revision: 7,
        };
        let mut v = ClusterView::from_listing(&listing);
        assert_eq!(v.endpoints.len(), 1);
        assert!(v.hosts.is_empty(), "corrupt host record skipped");
        assert_eq!(v.revision, 7);

        let e2 = ep("net1", "c2", "h2", [10, 10, 0, 3]);
        let put = WatchEvent::Put(entry(
            &keys::endpoint("net1", "c2"),
            serde_json::to_vec(&e2).unwrap(),
            8,
        ));
        assert_eq!(
            v.apply(&put),
            Change::Endpoint {
                network: "net1".into(),
                hosts: vec!["h2".into()]
            }
        );
        assert!(
            v.apply(&put).is_none(),
            "the same record again changes nothing"
        );
        assert_eq!(v.endpoints_on("net1").count(), 2);
        assert_eq!(
            v.endpoints_of_host("h2").next().unwrap().mac,
            MacAddr([2, 0x42, 10, 10, 0, 3])
        );

        let del = WatchEvent::Delete {
            key: keys::endpoint("net1", "c1"),
            mod_revision: 9,
        };
        assert!(!v.apply(&del).is_none());
        assert!(v.apply(&del).is_none(), "a second delete changes nothing");
        assert_eq!(v.endpoints_on("net1").count(), 1);
        assert_eq!(v.revision, 9);

        let claim = WatchEvent::Put(entry(&keys::vni(4096), b"net1".to_vec(), 10));
        assert!(
            v.apply(&claim).is_none(),
            "claims do not matter to the datapath"
        );
    }

    #[test]
    fn one_network_is_one_range_and_a_move_names_both_hosts() {
        let mut v = ClusterView::default();
        for (net, id, host, last) in [
            ("net", "a", "h1", 2),
            ("net1", "b", "h1", 3),
            ("net1", "c", "h2", 4),
            ("net10", "d", "h3", 5),
            ("net2", "e", "h3", 6),
        ] {
            let e = ep(net, id, host, [10, 10, 0, last]);
            v.endpoints.insert((net.into(), id.into()), e);
        }
        let ids = |n| -> Vec<String> { v.endpoints_on(n).map(|e| e.id.clone()).collect() };
        assert_eq!(ids("net1"), ["b", "c"]);
        assert_eq!(ids("net"), ["a"]);
        assert_eq!(ids("net10"), ["d"]);
        assert!(ids("net3").is_empty());

        let before = v.clone();
        let moved = ep("net1", "c", "h3", [10, 10, 0, 4]);
        let put = WatchEvent::Put(entry(
            &keys::endpoint("net1", "c"),
            serde_json::to_vec(&moved).unwrap(),
            11,
        ));
        assert_eq!(
            v.apply(&put),
            Change::Endpoint {
                network: "net1".into(),
                hosts: vec!["h3".into(), "h2".into()]
            }
        );
        assert_eq!(
            before.endpoints[&("net1".to_string(), "c".to_string())].host,
            "h2",
            "a copy taken before the event keeps its own state"
        );
    }
}
