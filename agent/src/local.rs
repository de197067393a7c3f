//! What this host attached, kept in `<state-dir>/local.json`.
//!
//! The KV holds the cluster's desired state; this file holds what only this host knows: which
//! namespace each local endpoint lives in, its gateway-bridge interface, and a copy of its
//! network and endpoint records. It lets the agent detach, serve names and answer Docker for
//! known networks while the KV is unreachable, and it survives restarts.

use std::{
    collections::BTreeMap,
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
        let map = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(LocalState {
            path,
            inner: Mutex::new(map),
        })
    }

    fn save(&self, map: &BTreeMap<String, Attachment>) {
        // Our own file: write a temporary and rename it, so a crash never leaves half a file.
        let tmp = self.path.with_extension("json.tmp");
        let res = serde_json::to_vec_pretty(map)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::perms::write_private(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = res {
            tracing::error!(path = %self.path.display(), error = %e, "saving local state");
        }
    }

    /// Adds or replaces an attachment.
    pub fn insert(&self, a: Attachment) {
        let mut m = self.inner.lock().expect("local state lock");
        m.insert(key(&a.endpoint.network, &a.endpoint.id), a);
        self.save(&m);
    }

    /// Removes an attachment.
    pub fn remove(&self, net: &str, id: &str) -> Option<Attachment> {
        let mut m = self.inner.lock().expect("local state lock");
        let a = m.remove(&key(net, id));
        if a.is_some() {
            self.save(&m);
        }
        a
    }

    /// One attachment.
    pub fn get(&self, net: &str, id: &str) -> Option<Attachment> {
        self.inner
            .lock()
            .expect("local state lock")
            .get(&key(net, id))
            .cloned()
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
