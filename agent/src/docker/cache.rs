//! What the plugin keeps on this host's disk, so Docker is answered while the KV is down and
//! across restarts: the NetworkID table (`<state-dir>/docker-networks.json`; Docker never
//! replays `CreateNetwork`) and the KV changes Docker asked for while the KV was unreachable
//! (`<state-dir>/docker-deferred.json`).

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, sync::Mutex};

use ovl_core::NetworkRecord;
use serde::{Deserialize, Serialize};

/// Writes `value` to `path` ([`crate::perms::write_json`]); a failure is logged (the next
/// change writes the whole table again).
fn save_json<T: Serialize>(path: &std::path::Path, value: &T, what: &str) {
    if let Err(e) = crate::perms::write_json(path, value) {
        tracing::error!(path = %path.display(), error = %e, "saving {what}");
    }
}

/// What this host knows about one Docker network of our driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerNet {
    /// Docker's NetworkID.
    pub network_id: String,
    /// PoolID returned by `RequestPool`.
    pub pool_id: String,
    /// Cluster network name, once bound.
    pub name: Option<String>,
    /// Last known cluster record (served while the KV is down).
    pub record: Option<NetworkRecord>,
}

/// The NetworkID table, persisted in `<state-dir>/docker-networks.json`.
#[derive(Debug)]
pub struct NetCache {
    path: PathBuf,
    nets: Mutex<BTreeMap<String, DockerNet>>,
}

impl NetCache {
    /// Loads the table (a corrupt file is logged and ignored).
    pub fn load(path: PathBuf) -> Self {
        let nets = std::fs::read(&path)
            .ok()
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "ignoring corrupt Docker network cache");
                    None
                }
            })
            .unwrap_or_default();
        NetCache {
            path,
            nets: Mutex::new(nets),
        }
    }

    fn save(&self, m: &BTreeMap<String, DockerNet>) {
        save_json(&self.path, m, "the Docker network cache");
    }

    /// One network by NetworkID.
    pub fn get(&self, id: &str) -> Option<DockerNet> {
        self.nets.lock().expect("cache lock").get(id).cloned()
    }

    /// Adds or replaces a network.
    pub fn put(&self, n: DockerNet) {
        let mut m = self.nets.lock().expect("cache lock");
        if m.get(&n.network_id) != Some(&n) {
            m.insert(n.network_id.clone(), n);
            self.save(&m);
        }
    }

    /// Removes a network.
    pub fn remove(&self, id: &str) -> Option<DockerNet> {
        let mut m = self.nets.lock().expect("cache lock");
        let r = m.remove(id);
        if r.is_some() {
            self.save(&m);
        }
        r
    }

    /// A network by its cluster name.
    pub fn by_name(&self, name: &str) -> Option<DockerNet> {
        self.nets
            .lock()
            .expect("cache lock")
            .values()
            .find(|n| n.name.as_deref() == Some(name))
            .cloned()
    }

    /// Every network.
    pub fn all(&self) -> Vec<DockerNet> {
        self.nets
            .lock()
            .expect("cache lock")
            .values()
            .cloned()
            .collect()
    }
}

/// A KV change Docker asked for while the KV was unreachable, applied once it answers
/// (Docker removes containers even then, and must not be failed for it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Deferred {
    /// Delete an endpoint record (and the address it owns).
    DeleteEndpoint {
        /// Cluster network name.
        network: String,
        /// Endpoint id.
        endpoint_id: String,
    },
    /// Release an address claimed through a pool.
    ReleaseAddress {
        /// PoolID as Docker holds it.
        pool_id: String,
        /// The address.
        address: Ipv4Addr,
    },
}

/// Deferred KV changes, persisted in `<state-dir>/docker-deferred.json`.
#[derive(Debug)]
pub struct DeferredOps {
    path: PathBuf,
    ops: Mutex<std::collections::BTreeSet<Deferred>>,
}

impl DeferredOps {
    /// Loads the queue (an unreadable file is an empty queue).
    pub fn load(path: PathBuf) -> Self {
        let ops = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        DeferredOps {
            path,
            ops: Mutex::new(ops),
        }
    }

    fn save(&self, ops: &std::collections::BTreeSet<Deferred>) {
        save_json(&self.path, ops, "deferred Docker operations");
    }

    /// Queues an operation.
    pub fn add(&self, op: Deferred) {
        let mut m = self.ops.lock().expect("deferred lock");
        if m.insert(op) {
            self.save(&m);
        }
    }

    /// Drops an operation (done).
    pub fn remove(&self, op: &Deferred) {
        let mut m = self.ops.lock().expect("deferred lock");
        if m.remove(op) {
            self.save(&m);
        }
    }

    /// Every queued operation.
    pub fn all(&self) -> Vec<Deferred> {
        self.ops
            .lock()
            .expect("deferred lock")
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_ops_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        let a = Deferred::DeleteEndpoint {
            network: "n".into(),
            endpoint_id: "e".into(),
        };
        let b = Deferred::ReleaseAddress {
            pool_id: "ovl/net/n/v4".into(),
            address: "10.0.0.5".parse().unwrap(),
        };
        let ops = DeferredOps::load(path.clone());
        ops.add(a.clone());
        ops.add(b.clone());
        ops.add(a.clone());
        assert_eq!(
            DeferredOps::load(path.clone()).all(),
            vec![a.clone(), b.clone()]
        );
        ops.remove(&a);
        assert_eq!(DeferredOps::load(path).all(), vec![b]);
    }

    #[test]
    fn the_network_table_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.json");
        let c = NetCache::load(path.clone());
        let d = DockerNet {
            network_id: "abc".into(),
            pool_id: "ovl/net/appnet/v4".into(),
            name: Some("appnet".into()),
            record: None,
        };
        c.put(d.clone());
        let again = NetCache::load(path);
        assert_eq!(again.get("abc"), Some(d.clone()));
        assert_eq!(again.by_name("appnet"), Some(d));
        std::fs::write(dir.path().join("bad.json"), b"{oops").unwrap();
        assert!(NetCache::load(dir.path().join("bad.json")).all().is_empty());
    }
}
