//! An in-memory snapshot of the cluster, built from a listing and kept current by applying
//! watch events. Pure: the reconciler computes desired state from it.

use std::collections::BTreeMap;

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
    pub hosts: BTreeMap<String, HostRecord>,
    /// Liveness records by host id.
    pub alive: BTreeMap<String, AliveRecord>,
    /// Networks by name.
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Endpoints by (network, id).
    pub endpoints: BTreeMap<(String, String), EndpointRecord>,
    /// The KV revision this view reflects.
    pub revision: Revision,
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

impl ClusterView {
    /// Builds a view from a listing of [`keys::ROOT`].
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

    fn put(&mut self, key: &str, value: &[u8]) {
        match keys::classify(key) {
            KeyRef::Host(id) => {
                if let Some(h) = parse(key, value) {
                    self.hosts.insert(id.to_string(), h);
                }
            }
            KeyRef::Alive(id) => {
                if let Some(a) = parse(key, value) {
                    self.alive.insert(id.to_string(), a);
                }
            }
            KeyRef::Network(name) => {
                if let Some(n) = parse(key, value) {
                    self.networks.insert(name.to_string(), n);
                }
            }
            KeyRef::Endpoint(net, id) => {
                if let Some(ep) = parse(key, value) {
                    self.endpoints.insert((net.to_string(), id.to_string()), ep);
                }
            }
            KeyRef::Other => {}
        }
    }

    fn delete(&mut self, key: &str) {
        match keys::classify(key) {
            KeyRef::Host(id) => {
                self.hosts.remove(id);
            }
            KeyRef::Alive(id) => {
                self.alive.remove(id);
            }
            KeyRef::Network(name) => {
                self.networks.remove(name);
            }
            KeyRef::Endpoint(net, id) => {
                self.endpoints.remove(&(net.to_string(), id.to_string()));
            }
            KeyRef::Other => {}
        }
    }

    /// Applies one watch event. Returns whether anything the datapath or names depend on
    /// changed (claims and indexes do not).
    pub fn apply(&mut self, ev: &WatchEvent) -> bool {
        self.revision = self.revision.max(ev.revision());
        let relevant = !matches!(keys::classify(ev.key()), KeyRef::Other);
        match ev {
            WatchEvent::Put(e) => self.put(&e.key, &e.value),
            WatchEvent::Delete { key, .. } => self.delete(key),
        }
        relevant
    }

    /// Whether a host is alive (its lease is held).
    pub fn is_alive(&self, host: &str) -> bool {
        self.alive.contains_key(host)
    }

    /// Endpoints of one network.
    pub fn endpoints_on<'a>(
        &'a self,
        net: &'a str,
    ) -> impl Iterator<Item = &'a EndpointRecord> + 'a {
        self.endpoints
            .iter()
            .filter(move |((n, _), _)| n == net)
            .map(|(_, e)| e)
    }

    /// Endpoints living on `host`.
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
        assert!(v.apply(&put));
        assert_eq!(v.endpoints_on("net1").count(), 2);
        assert_eq!(
            v.endpoints_of_host("h2").next().unwrap().mac,
            MacAddr([2, 0x42, 10, 10, 0, 3])
        );

        let del = WatchEvent::Delete {
            key: keys::endpoint("net1", "c1"),
            mod_revision: 9,
        };
        assert!(v.apply(&del));
        assert_eq!(v.endpoints_on("net1").count(), 1);
        assert_eq!(v.revision, 9);

        let claim = WatchEvent::Put(entry(&keys::vni(4096), b"net1".to_vec(), 10));
        assert!(!v.apply(&claim), "claims do not matter to the datapath");
    }
}
