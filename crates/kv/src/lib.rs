//! The KV layer: one trait, [`Kv`], with two backends.
//!
//! - `etcd://h1:2379,h2:2379`: etcd v3, the distributed engine for real clusters.
//! - the embedded store (the default when no URL is given): a SQLite file in WAL mode, safe
//!   for several agents on **one machine** (the lab) and not meant for real multi-host use.
//!
//! Both keep a single monotonically increasing revision per store: every write gets the next
//! revision and each key remembers the revision of its creation and of its last change.
//! Compare-and-swap and watches are defined in terms of those revisions, so code above this
//! layer never knows which backend it talks to.
//!
//! This crate may touch the network (etcd) and the filesystem (SQLite) and nothing else.

use std::{pin::Pin, time::Duration};

use futures::Stream;

/// A store-wide revision. Every successful write increases it by at least one.
pub type Revision = i64;

/// A lease handle. Keys attached to a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

/// One key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// Full key.
    pub key: String,
    /// Raw value.
    pub value: Vec<u8>,
    /// Revision at which the key was created (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The result of a prefix listing: the entries and the store revision they were read at.
///
/// Watching from `revision + 1` afterwards sees every later change exactly once.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Entries under the prefix, sorted by key.
    pub entries: Vec<KvEntry>,
    /// The store revision of the snapshot.
    pub revision: Revision,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed.
    Put(KvEntry),
    /// A key was deleted (explicitly or by lease expiry).
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deletion.
        mod_revision: Revision,
    },
}

impl WatchEvent {
    /// The key this event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(e) => &e.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(e) => e.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// A stream of watch events in revision order.
///
/// Backends resume by themselves after a disconnect (from the last revision they delivered
/// plus one), so no event is lost or repeated. If the history needed to resume was compacted
/// away, the stream yields [`KvError::Compacted`] and ends: the caller must list again and
/// watch from the new revision.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, KvError>> + Send>>;

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals the given revision; `0` means "the key is absent".
    ModRevision(String, Revision),
}

/// An operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Create or replace a key, optionally attached to a lease.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Lease to attach the key to.
        lease: Option<LeaseId>,
    },
    /// Delete a key (no error if absent).
    Delete {
        /// Key.
        key: String,
    },
}

/// Errors of the KV layer.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The URL given with `--kv` could not be understood.
    #[error("invalid KV URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The store could not be reached (connection refused, timeout, all endpoints down).
    #[error("KV store {store} unreachable: {reason}")]
    Unreachable {
        /// Which store (URL or path).
        store: String,
        /// The underlying reason.
        reason: String,
    },
    /// The lease does not exist (expired or revoked).
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// A watch cannot resume because the history was compacted.
    #[error("watch history compacted: requested revision {requested}, oldest kept {compacted}")]
    Compacted {
        /// The revision the watch asked for.
        requested: Revision,
        /// The compaction revision of the store.
        compacted: Revision,
    },
    /// A value was larger than the backend accepts.
    #[error("value for {key:?} too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// Key.
        key: String,
        /// Value size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Any other backend failure, with context.
    #[error("KV backend error: {0}")]
    Backend(String),
}

impl KvError {
    /// Whether the error means the store is (currently) unreachable, as opposed to a
    /// definite answer.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, KvError::Unreachable { .. })
    }
}

/// Result type of this layer.
pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// The KV store interface. All methods are safe to call concurrently.
#[async_trait::async_trait]
pub trait Kv: Send + Sync + 'static {
    /// A short description for status output: `etcd://h1:2379,h2:2379` or `embedded:/path`.
    fn describe(&self) -> String;

    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KvEntry>>;

    /// Lists every key starting with `prefix`, sorted by key, with the snapshot revision.
    async fn list(&self, prefix: &str) -> Result<Listing>;

    /// Creates or replaces a key; returns the revision of the write.
    async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision>;

    /// Creates a key only if it is absent. `Some(revision)` if this call created it,
    /// `None` if the key already existed (nothing was changed).
    async fn create(&self, key: &str, value: &[u8], lease: Option<LeaseId>)
    -> Result<Option<Revision>>;

    /// Replaces a key only if its `mod_revision` is still `expected` (`0`: only if absent).
    /// `Some(revision)` on success, `None` if the key had changed (nothing was changed).
    async fn cas(
        &self,
        key: &str,
        value: &[u8],
        expected: Revision,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>>;

    /// Deletes a key; `true` if it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Deletes a key only if its `mod_revision` is still `expected`; `true` if deleted.
    async fn delete_cas(&self, key: &str, expected: Revision) -> Result<bool>;

    /// Applies every op atomically if every compare holds. `Some(revision)` if applied,
    /// `None` if a compare failed (nothing was changed).
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<Option<Revision>>;

    /// Watches every key under `prefix` for changes with revision `>= from_revision`.
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream>;

    /// Grants a lease with the given time to live.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease once. [`KvError::LeaseNotFound`] if it already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Revokes a lease, deleting every key attached to it.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;

    /// Checks that the store answers (a cheap round trip).
    async fn health(&self) -> Result<()>;
}
