//! The KV layer: one trait, [`Kv`], with two backends.
//!
//! - `etcd://h1:2379,h2:2379`: etcd v3, the distributed engine for real clusters;
//!   `etcds://...` is the same over TLS, with the material and credentials of
//!   [`secure::EtcdSecurity`] given to [`open_with`].
//! - the embedded store (the default when no URL is given): a SQLite file in WAL mode, safe
//!   for several agents on **one machine** (the lab) and not meant for real multi-host use.
//!
//! Both keep a single monotonically increasing revision per store: every write gets the next
//! revision and each key remembers the revision of its creation and of its last change.
//! Compare-and-swap and watches are defined in terms of those revisions, so code above this
//! layer never knows which backend it talks to.
//!
//! This crate may touch the network (etcd) and the filesystem (SQLite, and the TLS and
//! password files [`secure`] reads) and nothing else.

#![warn(missing_docs)]

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures::Stream;

pub mod embedded;
pub mod etcd;
pub mod secure;

pub use secure::EtcdSecurity;

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

/// What the store says of a lease's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTtl {
    /// The time to live it was granted, which every renewal restores.
    pub granted: Duration,
    /// Time left before it expires unless renewed. etcd counts whole seconds, rounded
    /// down (the lease expires within one second more); the embedded store milliseconds.
    pub remaining: Duration,
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
    ///
    /// For a write this means the outcome is unknown: the request may have been applied
    /// before the connection broke. Callers re-read before retrying a non-idempotent write.
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
    /// The store answered but refused this client: a TLS handshake that failed (a CA that
    /// did not sign the server's certificate, a client certificate the server does not
    /// trust), an authentication that failed, or a permission the client's role lacks.
    /// Retrying does not help; the operator must fix the settings or the cluster's roles.
    #[error("KV store {store} refused us: {reason}")]
    Refused {
        /// Which store (URL).
        store: String,
        /// Why, in words an operator can act on.
        reason: String,
    },
    /// A TLS file or password given for the store is unusable (missing, not PEM, a key that
    /// does not belong to its certificate); found before any connection.
    #[error("{0}")]
    InvalidMaterial(String),
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

    /// Whether the store refused this client (TLS, authentication or permission): a
    /// settings problem, not an outage.
    pub fn is_refused(&self) -> bool {
        matches!(self, KvError::Refused { .. })
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

    /// Lists every key under each of `prefixes` (disjoint), in the order given, all from one
    /// snapshot: the listing's revision covers every entry. A view that reads a few prefixes
    /// lists only those, not what else lies under a common root.
    async fn list_many(&self, prefixes: &[&str]) -> Result<Listing>;

    /// Creates or replaces a key; returns the revision of the write.
    async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision>;

    /// Creates a key only if it is absent. `Some(revision)` if this call created it,
    /// `None` if the key already existed (nothing was changed).
    async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>>;

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
    ///
    /// `from_revision <= 0` means "changes after this call". A start revision whose history
    /// was compacted makes the stream yield [`KvError::Compacted`] and end. Returns
    /// [`KvError::Unreachable`] if the watch cannot be set up at all; after that the stream
    /// resumes by itself across disconnects.
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream>;

    /// Grants a lease with the given time to live.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease once. [`KvError::LeaseNotFound`] if it already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Revokes a lease, deleting every key attached to it.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;

    /// A lease's granted and remaining time to live, without renewing it; `None` if it
    /// expired or was revoked (or never existed).
    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>>;

    /// Checks that the store answers (a cheap round trip) and returns its current revision
    /// (how far a view is behind it is the difference).
    async fn health(&self) -> Result<Revision>;
}

/// A parsed `--kv` URL: which backend to open and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvUrl {
    /// `etcd://h1:2379,h2:2379`: an etcd v3 cluster reached through any of its endpoints;
    /// `etcds://...`: the same over TLS.
    Etcd {
        /// `host:port` of each endpoint, in the order given.
        endpoints: Vec<String>,
        /// `etcds://`: TLS to every endpoint.
        tls: bool,
    },
    /// `embedded:///abs/path.db`: the SQLite store at an absolute path (one machine only).
    Embedded {
        /// The database file.
        path: PathBuf,
    },
}

fn invalid(url: &str, reason: impl Into<String>) -> KvError {
    KvError::InvalidUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// Checks one `host:port` endpoint of an etcd URL; returns the reason it is refused.
fn check_endpoint(ep: &str) -> std::result::Result<(), String> {
    if ep.is_empty() {
        return Err("empty endpoint (stray comma?)".into());
    }
    if ep.contains('/') || ep.contains('@') || ep.contains('?') || ep.contains('#') {
        return Err(format!(
            "endpoint {ep:?} must be host:port (no path, user or query)"
        ));
    }
    if ep.chars().any(char::is_whitespace) {
        return Err(format!("endpoint {ep:?} contains whitespace"));
    }
    // `[v6]:port` or `host:port`; the port is after the last colon.
    let (host, port) = if let Some(rest) = ep.strip_prefix('[') {
        let Some((h, p)) = rest.split_once("]:") else {
            return Err(format!("endpoint {ep:?} must be [ipv6]:port"));
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("endpoint {ep:?}: {h:?} is not an IPv6 address"));
        }
        (h, p)
    } else {
        let Some((h, p)) = ep.rsplit_once(':') else {
            return Err(format!("endpoint {ep:?} has no port (host:port required)"));
        };
        if h.contains(':') {
            return Err(format!(
                "endpoint {ep:?}: write IPv6 addresses in brackets, [addr]:port"
            ));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(format!("endpoint {ep:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "endpoint {ep:?}: port {port:?} is not a number in 1-65535"
        )),
        Ok(_) => Ok(()),
    }
}

/// Parses a `--kv` URL without touching the network or the filesystem.
///
/// Accepted forms: `etcd://HOST:PORT[,HOST:PORT...]`, `etcds://HOST:PORT[,...]` (TLS) and
/// `embedded:///ABSOLUTE/PATH`.
/// Anything else is [`KvError::InvalidUrl`] with a one-line reason.
pub fn parse_url(url: &str) -> Result<KvUrl> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid(
            url,
            "expected etcd://HOST:PORT[,...], etcds://HOST:PORT[,...] or embedded:///PATH",
        )
    })?;
    match scheme {
        "etcd" | "etcds" => {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            if rest.is_empty() {
                return Err(invalid(
                    url,
                    format!("no endpoint given ({scheme}://HOST:PORT[,...])"),
                ));
            }
            let mut endpoints = Vec::new();
            for ep in rest.split(',') {
                check_endpoint(ep).map_err(|r| invalid(url, r))?;
                if !endpoints.iter().any(|e| e == ep) {
                    endpoints.push(ep.to_string());
                }
            }
            Ok(KvUrl::Etcd {
                endpoints,
                tls: scheme == "etcds",
            })
        }
        "embedded" => {
            if rest.is_empty() {
                return Err(invalid(url, "no path given (embedded:///ABSOLUTE/PATH)"));
            }
            if !rest.starts_with('/') {
                return Err(invalid(
                    url,
                    "path must be absolute: embedded:///ABSOLUTE/PATH (three slashes)",
                ));
            }
            if rest.ends_with('/') {
                return Err(invalid(url, "path names a directory, not a database file"));
            }
            if rest.contains('?') || rest.contains('#') {
                return Err(invalid(
                    url,
                    "query strings and fragments are not supported",
                ));
            }
            Ok(KvUrl::Embedded {
                path: PathBuf::from(rest),
            })
        }
        "" => Err(invalid(
            url,
            "missing scheme (etcd://, etcds:// or embedded://)",
        )),
        other => Err(invalid(
            url,
            format!("unknown scheme {other:?} (expected etcd, etcds or embedded)"),
        )),
    }
}

/// Opens the store named by `url`, or the embedded store at `default_path` when `url` is
/// `None`.
///
/// Opening etcd never contacts the cluster: it succeeds while etcd is down and each call then
/// fails fast with [`KvError::Unreachable`] until the cluster answers. Opening the embedded
/// store creates the file (and its parent directory) if needed.
pub async fn open(url: Option<&str>, default_path: &Path) -> Result<Arc<dyn Kv>> {
    open_with(url, default_path, &EtcdSecurity::default()).await
}

/// [`open`] with TLS material and credentials for etcd.
///
/// `security` must be empty unless the URL is `etcds://` (TLS), except that a plain
/// `etcd://` URL refuses a password too: it would travel in clear text. With `etcds://` the
/// cluster is asked once, within [`etcd::REQUEST_TIMEOUT`], whether it accepts us: a TLS
/// handshake or authentication it refuses is [`KvError::Refused`] (the caller should stop);
/// a cluster that does not answer is not an error, as with plain etcd (the first request that
/// reaches it checks again).
pub async fn open_with(
    url: Option<&str>,
    default_path: &Path,
    security: &EtcdSecurity,
) -> Result<Arc<dyn Kv>> {
    let parsed = match url {
        Some(u) => parse_url(u)?,
        None => KvUrl::Embedded {
            path: default_path.to_path_buf(),
        },
    };
    check_security(&parsed, security)?;
    match parsed {
        KvUrl::Etcd {
            endpoints,
            tls: false,
        } => Ok(Arc::new(etcd::EtcdKv::connect(endpoints).await?)),
        KvUrl::Etcd {
            endpoints,
            tls: true,
        } => {
            let kv = etcd::EtcdKv::connect_tls(endpoints, security).await?;
            kv.verify().await?;
            Ok(Arc::new(kv))
        }
        KvUrl::Embedded { path } => Ok(Arc::new(embedded::EmbeddedKv::open(&path).await?)),
    }
}

/// Refuses TLS material or credentials that the URL would not use (or would send in clear).
pub fn check_security(url: &KvUrl, security: &EtcdSecurity) -> Result<()> {
    let refuse = |why: &str| Err(KvError::InvalidMaterial(why.to_string()));
    match url {
        KvUrl::Etcd { tls: true, .. } => Ok(()),
        _ if security.is_empty() => Ok(()),
        KvUrl::Etcd { tls: false, .. } if security.user.is_some() => refuse(
            "a KV user and password need TLS: use etcds://, or the password would cross the \
             network in clear text",
        ),
        KvUrl::Etcd { tls: false, .. } => {
            refuse("a CA, client certificate or key needs an etcds:// KV URL")
        }
        KvUrl::Embedded { .. } => {
            refuse("TLS files and KV credentials apply to etcd (etcds://), not the embedded store")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match parse_url(url) {
            Err(KvError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{url:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn parses_etcd_urls() {
        assert_eq!(
            parse_url("etcd://h1:2379,h2:2379").unwrap(),
            KvUrl::Etcd {
                endpoints: vec!["h1:2379".into(), "h2:2379".into()],
                tls: false,
            }
        );
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379/").unwrap(),
            KvUrl::Etcd {
                endpoints: vec!["127.0.0.1:2379".into()],
                tls: false,
            }
        );
        assert_eq!(
            parse_url("etcd://[::1]:2379,[fd00::2]:2380").unwrap(),
            KvUrl::Etcd {
                endpoints: vec!["[::1]:2379".into(), "[fd00::2]:2380".into()],
                tls: false,
            }
        );
        // Duplicates collapse, order is kept.
        assert_eq!(
            parse_url("etcd://b:1,a:2,b:1").unwrap(),
            KvUrl::Etcd {
                endpoints: vec!["b:1".into(), "a:2".into()],
                tls: false,
            }
        );
    }

    #[test]
    fn parses_etcds_urls() {
        assert_eq!(
            parse_url("etcds://h1:2379,[::1]:2379").unwrap(),
            KvUrl::Etcd {
                endpoints: vec!["h1:2379".into(), "[::1]:2379".into()],
                tls: true,
            }
        );
        assert!(reason("etcds://").contains("etcds://HOST:PORT"));
        assert!(reason("etcds://h1").contains("no port"));
    }

    #[test]
    fn security_settings_must_fit_the_url() {
        let plain = parse_url("etcd://h:1").unwrap();
        let tls = parse_url("etcds://h:1").unwrap();
        let embedded = parse_url("embedded:///x/kv.db").unwrap();
        let none = EtcdSecurity::default();
        let user = EtcdSecurity {
            user: Some(("u".into(), secure::Password::new("p"))),
            ..Default::default()
        };
        let ca = EtcdSecurity {
            ca_pem: Some(b"pem".to_vec()),
            ..Default::default()
        };
        for url in [&plain, &tls, &embedded] {
            check_security(url, &none).unwrap();
        }
        check_security(&tls, &user).unwrap();
        check_security(&tls, &ca).unwrap();
        let msg = |u, s| check_security(u, s).unwrap_err().to_string();
        assert!(msg(&plain, &user).contains("clear text"));
        assert!(msg(&plain, &ca).contains("etcds://"));
        assert!(msg(&embedded, &user).contains("embedded"));
    }

    #[test]
    fn parses_embedded_urls() {
        assert_eq!(
            parse_url("embedded:///var/lib/ovl/kv.db").unwrap(),
            KvUrl::Embedded {
                path: PathBuf::from("/var/lib/ovl/kv.db")
            }
        );
    }

    #[test]
    fn refuses_bad_urls() {
        assert!(reason("").contains("expected"));
        assert!(reason("localhost:2379").contains("expected"));
        assert!(reason("http://h:2379").contains("unknown scheme"));
        assert!(reason("://h:2379").contains("missing scheme"));
        assert!(reason("etcd://").contains("no endpoint"));
        assert!(reason("etcd://h1").contains("no port"));
        assert!(reason("etcd://h1:").contains("not a number"));
        assert!(reason("etcd://h1:0").contains("not a number"));
        assert!(reason("etcd://h1:99999").contains("not a number"));
        assert!(reason("etcd://h1:ab").contains("not a number"));
        assert!(reason("etcd://:2379").contains("no host"));
        assert!(reason("etcd://h1:2379,").contains("empty endpoint"));
        assert!(reason("etcd://h1:2379,,h2:2379").contains("empty endpoint"));
        assert!(reason("etcd://h1:2379/path").contains("host:port"));
        assert!(reason("etcd://u@h1:2379").contains("host:port"));
        assert!(reason("etcd://::1:2379").contains("brackets"));
        assert!(reason("etcd://[zz]:2379").contains("not an IPv6"));
        assert!(reason("etcd://h 1:2379").contains("whitespace"));
        assert!(reason("embedded://").contains("no path"));
        assert!(reason("embedded://rel/kv.db").contains("absolute"));
        assert!(reason("embedded:///var/lib/").contains("directory"));
        assert!(reason("embedded:///kv.db?mode=ro").contains("query"));
    }

    #[test]
    fn invalid_url_error_is_one_line() {
        let e = parse_url("etcd://h1").unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("etcd://h1"), "{msg}");
    }
}
