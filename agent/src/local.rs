//! What this host attached, kept in `<state-dir>/local.json`.
//!
//! The KV holds the cluster's desired state; this file holds what only this host knows: which
//! namespace each local endpoint lives in, its gateway-bridge interface, and a copy of its
//! network and endpoint records. It lets the agent detach, serve names and answer Docker for
//! known networks while the KV is unreachable, and it survives restarts.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use ovl_core::{EndpointRecord, NetworkRecord};
use serde::{Deserialize, Serialize};

/// One local attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The endpoint record as written to the KV.
    pub endpoint: EndpointRecord,
    /// The network record at attach time.
    pub network: NetworkRecord,
    /// The container's network namespace path.
    pub netns: PathBuf,
    /// Identity of that namespace (device and inode), shared by all its attachments.
    pub netns_key: String,
    /// Interface name in the container.
    pub ifname: String,
    /// Where its hosts file is, if the agent manages one.
    #[serde(default)]
    pub hosts_file: Option<PathBuf>,
    /// Whether the agent serves DNS on 127.0.0.11:53 inside the namespace (not for Docker
    /// containers: Docker's own resolver owns that address there).
    #[serde(default = "yes")]
    pub dns_listener: bool,
}

fn yes() -> bool {
    true
}

/// The local attachments, persisted on every change.
#[derive(Debug)]
pub struct LocalState {
    path: PathBuf,
    inner: Mutex<BTreeMap<String, Attachment>>,
    /// Detaches begun and not yet finished in the KV (`detaching.json` beside the file).
    detaching: Mutex<BTreeSet<(String, String)>>,
}

/// Where the detaches not finished in the KV are kept, beside `local.json`.
fn detaching_path(path: &Path) -> PathBuf {
    path.with_file_name("detaching.json")
}

/// Reads a JSON file; an absent file is the default value, a corrupt one an error.
fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> std::io::Result<T> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e),
    }
}

/// Key of an attachment: `network/endpoint`.
pub fn key(net: &str, id: &str) -> String {
    format!("{net}/{id}")
}

/// Identity of a network namespace, usable as an id (`n<dev>x<inode>`).
pub fn netns_key(path: &Path) -> std::io::Result<String> {
    let m = std::fs::metadata(path)?;
    Ok(format!("n{:x}x{:x}", m.dev(), m.ino()))
}

impl LocalState {
    /// Loads the file (an absent file is an empty state; a corrupt one is an error).
    pub fn load(path: PathBuf) -> std::io::Result<Self> {
        let map = read_json(&path)?;
        let detaching = read_json(&detaching_path(&path))?;
        Ok(LocalState {
            path,
            inner: Mutex::new(map),
            detaching: Mutex::new(detaching),
        })
    }

    /// Writes `map` to the file. A failed write is returned: the caller must not act as if
    /// the change were kept, or a restart would forget it (an attach answered success whose
    /// interface the next agent tears down) or bring it back (a detached endpoint whose
    /// record the next agent writes again).
    fn save(&self, map: &BTreeMap<String, Attachment>) -> std::io::Result<()> {
        crate::perms::write_json(&self.path, map)
    }

    /// Notes that a detach of `id` on `net` begins, before the interface goes: if the KV
    /// fails before the record is deleted, or the agent dies, the record is deleted later
    /// ([`LocalState::detaching`]). Kept only if it could be saved.
    pub fn begin_detach(&self, net: &str, id: &str) -> std::io::Result<()> {
        self.update_detaching(|d| d.insert((net.to_string(), id.to_string())))
    }

    /// Notes that a detach is finished (its record is gone) or did not happen.
    pub fn end_detach(&self, net: &str, id: &str) -> std::io::Result<()> {
        self.update_detaching(|d| d.remove(&(net.to_string(), id.to_string())))
    }

    /// Detaches begun and not finished in the KV: `(network, endpoint)`.
    pub fn detaching(&self) -> Vec<(String, String)> {
        self.detaching
            .lock()
            .expect("detaching lock")
            .iter()
            .cloned()
            .collect()
    }

    fn update_detaching(
        &self,
        f: impl FnOnce(&mut BTreeSet<(String, String)>) -> bool,
    ) -> std::io::Result<()> {
        let mut d = self.detaching.lock().expect("detaching lock");
        let mut next = d.clone();
        if f(&mut next) {
            crate::perms::write_json(&detaching_path(&self.path), &next)?;
            *d = next;
        }
        Ok(())
    }

    /// Adds or replaces an attachment, kept only if it could be saved.
    pub fn insert(&self, a: Attachment) -> std::io::Result<()> {
        let mut m = self.inner.lock().expect("local state lock");
        let mut next = m.clone();
        next.insert(key(&a.endpoint.network, &a.endpoint.id), a);
        self.save(&next)?;
        *m = next;
        Ok(())
    }

    /// Removes an attachment, only if the removal could be saved.
    pub fn remove(&self, net: &str, id: &str) -> std::io::Result<Option<Attachment>> {
        let mut m = self.inner.lock().expect("local state lock");
        let k = key(net, id);
        if !m.contains_key(&k) {
            return Ok(None);
        }
        let mut next = m.clone();
        let a = next.remove(&k);
        self.save(&next)?;
        *m = next;
        Ok(a)
    }

    /// One attachment.
    pub fn get(&self, net: &str, id: &str) -> Option<Attachment> {
        self.inner
            .lock()
            .expect("local state lock")
            .get(&key(net, id))
            .cloned()
    }

    /// Whether any attachment is on `net`.
    pub fn on_network(&self, net: &str) -> bool {
        self.inner
            .lock()
            .expect("local state lock")
            .values()
            .any(|a| a.endpoint.network == net)
    }

    /// Every attachment.
    pub fn all(&self) -> Vec<Attachment> {
        self.inner
            .lock()
            .expect("local state lock")
            .values()
            .cloned()
            .collect()
    }

    /// Attachments sharing a namespace.
    pub fn in_netns(&self, netns_key: &str) -> Vec<Attachment> {
        self.all()
            .into_iter()
            .filter(|a| a.netns_key == netns_key)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_core::{EndpointRecord, NetworkRecord, ipam::mac_for};

    fn att(id: &str) -> Attachment {
        let ip = "10.10.0.2".parse().unwrap();
        Attachment {
            endpoint: EndpointRecord {
                id: id.into(),
                network: "n1".into(),
                host: "h1".into(),
                name: id.into(),
                aliases: vec![],
                ip,
                mac: mac_for(ip),
                publish: vec![],
            },
            network: NetworkRecord {
                name: "n1".into(),
                vni: 4096,
                subnet: "10.10.0.0/24".parse().unwrap(),
                gateway: "10.10.0.1".parse().unwrap(),
                internal: false,
                encrypted: false,
                mtu: None,
                labels: Default::default(),
                options: Default::default(),
            },
            netns: "/run/netns/x".into(),
            netns_key: "n1x2".into(),
            ifname: "eth0".into(),
            hosts_file: None,
            dns_listener: true,
        }
    }

    #[test]
    fn kept_only_what_was_saved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.json");
        let l = LocalState::load(path.clone()).unwrap();
        l.insert(att("a")).unwrap();
        assert_eq!(LocalState::load(path.clone()).unwrap().all().len(), 1);
        // A file that cannot be written (its directory is gone): the change is refused and
        // memory still agrees with the disk.
        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let l2 = LocalState::load(gone.join("local.json")).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        assert!(l2.insert(att("b")).is_err());
        assert!(
            l2.all().is_empty(),
            "an insert that was not saved is not kept"
        );
        // The same for a removal.
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        let l3 = LocalState::load(ro.join("local.json")).unwrap();
        l3.insert(att("c")).unwrap();
        std::fs::remove_file(ro.join("local.json")).unwrap();
        std::fs::remove_dir(&ro).unwrap();
        let err = l3.remove("n1", "c").unwrap_err();
        assert!(err.to_string().contains("saving"), "{err}");
        assert_eq!(
            l3.all().len(),
            1,
            "a removal that was not saved is not kept"
        );
        assert!(l3.remove("n1", "nothing").unwrap().is_none());
        assert_eq!(
            l.remove("n1", "a").unwrap().map(|a| a.endpoint.id),
            Some("a".into())
        );
        assert!(LocalState::load(path).unwrap().all().is_empty());
    }
}
