//! The embedded store: one SQLite file in WAL mode.
//!
//! **For one machine only.** Several processes on the same host may open the same file at
//! once (the lab runs one agent per simulated host against a shared file): every write runs
//! in a `BEGIN IMMEDIATE` transaction, so writers are serialised by SQLite's file lock, and
//! readers see consistent snapshots. It relies on POSIX file locks and shared memory (the
//! WAL index), which do not work across machines or on network filesystems: use etcd for a
//! real cluster.
//!
//! Layout:
//! - `meta(k, v)`: the store revision (`rev`) and the compaction revision (`compact_rev`).
//! - `kv(key, value, create_rev, mod_rev, lease)`: the current keys (keys are stored as
//!   BLOBs so ordering and prefix ranges are plain byte order, as in etcd).
//! - `events(rev, seq, key, kind, value, create_rev, lease)`: the change log read by
//!   watches, trimmed to the last [`EmbeddedOptions::keep_revisions`] revisions.
//! - `leases(id, ttl_ms, expires_at)`: expiry in unix milliseconds.
//!
//! Every process runs two helper threads per open store: a watch hub that polls the store
//! revision (one cheap indexed read every [`EmbeddedOptions::poll_interval`], only while
//! someone watches) and fans new events out to every watch of this process, and a sweeper
//! that deletes expired leases with their keys and trims the event log. Any process may
//! sweep; write transactions also sweep expired leases first, so an expired lease is never
//! renewed or attached to a new key. Reads do not sweep: a key may outlive its lease by up
//! to one sweep interval.
//!
//! Watch streams are unbounded channels fed by the hub: a consumer that stops reading makes
//! its events pile up in memory, so consumers should keep draining (or drop the stream).
//! Dropping the last handle of the store ends its watch streams.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::mpsc as tokio_mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{
    Compare, Kv, KvEntry, KvError, LeaseId, LeaseTtl, Listing, Result, Revision, TxnOp, WatchEvent,
    WatchStream,
};

/// The largest value accepted, the same order as etcd's default request limit (1.5 MiB), so
/// code that works on the embedded store also works on etcd.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// Tuning knobs of the embedded store. [`Default`] is what [`crate::open`] uses.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How many revisions of history the event log keeps for watches from an older revision.
    pub keep_revisions: i64,
    /// How often the watch hub checks for writes of other processes while someone watches.
    pub poll_interval: Duration,
    /// How often expired leases are swept and the event log trimmed.
    pub sweep_interval: Duration,
    /// How long a call waits for another process's write lock before failing.
    pub busy_timeout: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            keep_revisions: 10_000,
            poll_interval: Duration::from_millis(5),
            sweep_interval: Duration::from_millis(250),
            busy_timeout: Duration::from_secs(10),
        }
    }
}

/// The embedded SQLite backend. Cheap to share behind an `Arc`; dropping the last handle
/// stops its helper threads and ends its watch streams.
pub struct EmbeddedKv {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    hub: mpsc::Sender<HubMsg>,
    sweeper: mpsc::Sender<()>,
}

impl std::fmt::Debug for EmbeddedKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKv")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

const KIND_PUT: i64 = 0;
const KIND_DELETE: i64 = 1;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn db_err(path: &Path, what: &str, e: rusqlite::Error) -> KvError {
    KvError::Backend(format!("embedded store {}: {what}: {e}", path.display()))
}

/// Opens one connection with the pragmas every connection needs.
fn connect(path: &Path, opts: &EmbeddedOptions) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| db_err(path, "open", e))?;
    conn.busy_timeout(opts.busy_timeout)
        .map_err(|e| db_err(path, "set busy_timeout", e))?;
    // Switching to WAL needs a moment of exclusive access; another process doing the same at
    // the same time makes it report SQLITE_BUSY, which the busy handler does not cover.
    let deadline = Instant::now() + opts.busy_timeout;
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => break,
            Ok(mode) => {
                return Err(KvError::Backend(format!(
                    "embedded store {}: cannot enable WAL (journal mode is {mode})",
                    path.display()
                )));
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(path = %path.display(), error = %e, "retrying WAL switch");
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(db_err(path, "enable WAL", e)),
        }
    }
    // NORMAL is crash-safe in WAL mode; only the last commits before a power loss can be lost.
    conn.execute_batch("PRAGMA synchronous=NORMAL;")
        .map_err(|e| db_err(path, "set synchronous", e))?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (k, v) VALUES ('rev', 0), ('compact_rev', 0);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    lease INTEGER
);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    rev INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key BLOB NOT NULL,
    kind INTEGER NOT NULL,
    value BLOB,
    create_rev INTEGER,
    lease INTEGER,
    PRIMARY KEY (rev, seq)
);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ttl_ms INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases (expires_at);
";

fn meta(tx: &Connection, k: &str) -> rusqlite::Result<i64> {
    tx.query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
}

/// The first key after every key that starts with `prefix`, or `None` if there is none
/// (empty prefix or all `0xff`): the same rule as etcd's range end.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn key_string(raw: Vec<u8>) -> String {
    // Keys only ever enter through `&str`, so this is lossless.
    String::from_utf8(raw).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<KvEntry> {
    Ok(KvEntry {
        key: key_string(r.get(0)?),
        value: r.get(1)?,
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
        lease: r.get(4)?,
    })
}

/// One write transaction: allocates at most one new revision, on the first change.
struct Write<'c> {
    tx: Transaction<'c>,
    rev: Option<Revision>,
    seq: i64,
}

impl<'c> Write<'c> {
    fn begin(conn: &'c mut Connection) -> rusqlite::Result<Self> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        Ok(Self {
            tx,
            rev: None,
            seq: 0,
        })
    }

    /// The revision of this transaction's changes, allocated on first use.
    fn rev(&mut self) -> rusqlite::Result<Revision> {
        if let Some(r) = self.rev {
            return Ok(r);
        }
        let r = meta(&self.tx, "rev")? + 1;
        self.tx
            .execute("UPDATE meta SET v = ?1 WHERE k = 'rev'", [r])?;
        self.rev = Some(r);
        Ok(r)
    }

    fn current_rev(&self) -> rusqlite::Result<Revision> {
        match self.rev {
            Some(r) => Ok(r),
            None => meta(&self.tx, "rev"),
        }
    }

    fn log(
        &mut self,
        key: &[u8],
        kind: i64,
        value: Option<&[u8]>,
        create_rev: Option<Revision>,
        lease: Option<LeaseId>,
    ) -> rusqlite::Result<()> {
        let rev = self.rev()?;
        self.seq += 1;
        self.tx.execute(
            "INSERT INTO events (rev, seq, key, kind, value, create_rev, lease)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![rev, self.seq, key, kind, value, create_rev, lease],
        )?;
        Ok(())
    }

    fn mod_rev(&self, key: &str) -> rusqlite::Result<Revision> {
        Ok(self
            .tx
            .query_row(
                "SELECT mod_rev FROM kv WHERE key = ?1",
                [key.as_bytes()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    fn put(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<(), WriteErr> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(WriteErr::Kv(KvError::TooLarge {
                key: key.to_string(),
                size: value.len(),
                limit: MAX_VALUE_BYTES,
            }));
        }
        if let Some(id) = lease {
            let live: Option<i64> = self
                .tx
                .query_row("SELECT 1 FROM leases WHERE id = ?1", [id], |r| r.get(0))
                .optional()?;
            if live.is_none() {
                return Err(WriteErr::Kv(KvError::LeaseNotFound(id)));
            }
        }
        let k = key.as_bytes();
        let created: Option<Revision> = self
            .tx
            .query_row("SELECT create_rev FROM kv WHERE key = ?1", [k], |r| {
                r.get(0)
            })
            .optional()?;
        let rev = self.rev()?;
        let create_rev = created.unwrap_or(rev);
        self.tx.execute(
            "INSERT INTO kv (key, value, create_rev, mod_rev, lease) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                 mod_rev = excluded.mod_rev, lease = excluded.lease",
            params![k, value, create_rev, rev, lease],
        )?;
        self.log(k, KIND_PUT, Some(value), Some(create_rev), lease)?;
        Ok(())
    }

    fn delete(&mut self, key: &str) -> rusqlite::Result<bool> {
        let k = key.as_bytes();
        let n = self.tx.execute("DELETE FROM kv WHERE key = ?1", [k])?;
        if n > 0 {
            self.log(k, KIND_DELETE, None, None, None)?;
        }
        Ok(n > 0)
    }

    /// Deletes one lease and every key attached to it.
    fn drop_lease(&mut self, id: LeaseId) -> rusqlite::Result<bool> {
        let keys: Vec<Vec<u8>> = {
            let mut st = self
                .tx
                .prepare("SELECT key FROM kv WHERE lease = ?1 ORDER BY key")?;
            st.query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        for k in &keys {
            self.tx.execute("DELETE FROM kv WHERE key = ?1", [k])?;
            self.log(k, KIND_DELETE, None, None, None)?;
        }
        let n = self.tx.execute("DELETE FROM leases WHERE id = ?1", [id])?;
        Ok(n > 0)
    }

    /// Removes every lease that expired by `now`, with its keys. Returns how many.
    fn expire_leases(&mut self, now: i64) -> rusqlite::Result<usize> {
        let ids: Vec<i64> = {
            let mut st = self
                .tx
                .prepare("SELECT id FROM leases WHERE expires_at <= ?1 ORDER BY id")?;
            st.query_map([now], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        for id in &ids {
            self.drop_lease(*id)?;
        }
        Ok(ids.len())
    }

    fn commit(self) -> rusqlite::Result<Option<Revision>> {
        let rev = self.rev;
        self.tx.commit()?;
        Ok(rev)
    }
}

/// A failure inside a write transaction: a definite answer, or a database error.
enum WriteErr {
    Kv(KvError),
    Db(rusqlite::Error),
}

impl From<rusqlite::Error> for WriteErr {
    fn from(e: rusqlite::Error) -> Self {
        WriteErr::Db(e)
    }
}

/// Makes the database readable by its owner only: creates it empty with mode 0600 (SQLite
/// gives its `-wal` and `-shm` files the database's mode) and takes group and other bits
/// away from an existing database and its `-wal` and `-shm` files. The store holds the whole
/// cluster's topology.
fn private_files(db: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |what: &str, e: std::io::Error| {
        KvError::Backend(format!("embedded store {}: {what}: {e}", db.display()))
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)
        .map_err(|e| fail("create", e))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = PathBuf::from(name);
        let mode = match std::fs::metadata(&path) {
            Ok(m) => m.permissions().mode(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail("inspect", e)),
        };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7700))
                .map_err(|e| fail(&format!("restrict {}", path.display()), e))?;
            tracing::info!(path = %path.display(), "made the KV file readable by its owner only");
        }
    }
    Ok(())
}

impl EmbeddedKv {
    /// Opens (creating if needed) the store at `path` with default options.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, EmbeddedOptions::default()).await
    }

    /// Opens (creating if needed) the store at `path`.
    pub async fn open_with(path: &Path, opts: EmbeddedOptions) -> Result<Self> {
        let path = path.to_path_buf();
        let p = path.clone();
        let o = opts.clone();
        let (conn, hub_conn, sweep_conn) = tokio::task::spawn_blocking(move || {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    KvError::Backend(format!(
                        "embedded store {}: create directory {}: {e}",
                        p.display(),
                        dir.display()
                    ))
                })?;
            }
            private_files(&p)?;
            let mut conn = connect(&p, &o)?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| db_err(&p, "begin schema", e))?;
            tx.execute_batch(SCHEMA)
                .map_err(|e| db_err(&p, "create schema", e))?;
            tx.commit().map_err(|e| db_err(&p, "commit schema", e))?;
            Ok::<_, KvError>((conn, connect(&p, &o)?, connect(&p, &o)?))
        })
        .await
        .map_err(|e| KvError::Backend(format!("embedded open task failed: {e}")))??;

        let (hub_tx, hub_rx) = mpsc::channel();
        let hub = Hub {
            conn: hub_conn,
            path: path.clone(),
            watchers: Vec::new(),
            delivered: 0,
        };
        let poll = opts.poll_interval;
        thread::Builder::new()
            .name("kv-embedded-hub".into())
            .spawn(move || hub.run(hub_rx, poll))
            .map_err(|e| KvError::Backend(format!("spawn watch hub: {e}")))?;

        let (sweep_tx, sweep_rx) = mpsc::channel();
        let sweeper = Sweeper {
            conn: sweep_conn,
            path: path.clone(),
            opts,
            hub: hub_tx.clone(),
        };
        thread::Builder::new()
            .name("kv-embedded-sweep".into())
            .spawn(move || sweeper.run(sweep_rx))
            .map_err(|e| KvError::Backend(format!("spawn lease sweeper: {e}")))?;

        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
            hub: hub_tx,
            sweeper: sweep_tx,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on this handle's connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Path) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| KvError::Backend("embedded store connection poisoned".into()))?;
            f(&mut guard, &path)
        })
        .await
        .map_err(|e| KvError::Backend(format!("embedded store task failed: {e}")))?
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, after sweeping expired leases. The
    /// transaction commits only if `f` succeeds; returns `f`'s result and the revision of the
    /// changes (if any).
    async fn write<T, F>(&self, what: &'static str, f: F) -> Result<(T, Option<Revision>)>
    where
        T: Send + 'static,
        F: FnOnce(&mut Write<'_>) -> Result<T, WriteErr> + Send + 'static,
    {
        let out = self
            .with_conn(move |conn, path| {
                let run = |conn: &mut Connection| -> Result<(T, Option<Revision>), WriteErr> {
                    let mut w = Write::begin(conn)?;
                    w.expire_leases(now_ms())?;
                    let v = f(&mut w)?;
                    let rev = w.commit()?;
                    Ok((v, rev))
                };
                run(conn).map_err(|e| match e {
                    WriteErr::Kv(k) => k,
                    WriteErr::Db(d) => db_err(path, what, d),
                })
            })
            .await?;
        if out.1.is_some() {
            // Wake the hub so watches of this process see the change at once.
            let _ = self.hub.send(HubMsg::Wake);
        }
        Ok(out)
    }

    /// Grants a lease that expires after `ttl` (millisecond precision).
    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl_ms = i64::try_from(ttl.as_millis())
            .unwrap_or(i64::MAX / 4)
            .max(1);
        let (id, _) = self
            .write("grant lease", move |w| {
                w.tx.execute(
                    "INSERT INTO leases (ttl_ms, expires_at) VALUES (?1, ?2)",
                    params![ttl_ms, now_ms().saturating_add(ttl_ms)],
                )?;
                Ok(w.tx.last_insert_rowid())
            })
            .await?;
        Ok(id)
    }
}

impl Drop for EmbeddedKv {
    fn drop(&mut self) {
        let _ = self.hub.send(HubMsg::Shutdown);
        let _ = self.sweeper.send(());
    }
}

#[async_trait::async_trait]
impl Kv for EmbeddedKv {
    fn describe(&self) -> String {
        format!("embedded:{}", self.path.display())
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>> {
        let key = key.to_string();
        self.with_conn(move |conn, path| {
            conn.query_row(
                "SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key = ?1",
                [key.as_bytes()],
                row_entry,
            )
            .optional()
            .map_err(|e| db_err(path, "get", e))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.list_many(&[prefix]).await
    }

    async fn list_many(&self, prefixes: &[&str]) -> Result<Listing> {
        let prefixes: Vec<Vec<u8>> = prefixes.iter().map(|p| p.as_bytes().to_vec()).collect();
        self.with_conn(move |conn, path| {
            let read = |conn: &mut Connection| -> rusqlite::Result<Listing> {
                // One read transaction: the entries and the revision come from one snapshot.
                let tx = conn.transaction()?;
                let revision = meta(&tx, "rev")?;
                let mut entries = Vec::new();
                {
                    let mut st = tx.prepare(
                        "SELECT key, value, create_rev, mod_rev, lease FROM kv
                         WHERE key >= ?1 AND (?2 IS NULL OR key < ?2) ORDER BY key",
                    )?;
                    for prefix in &prefixes {
                        for e in st.query_map(params![prefix, prefix_end(prefix)], row_entry)? {
                            entries.push(e?);
                        }
                    }
                }
                tx.commit()?;
                Ok(Listing { entries, revision })
            };
            read(conn).map_err(|e| db_err(path, "list", e))
        })
        .await
    }

    async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        let (key, value) = (key.to_string(), value.to_vec());
        let (_, rev) = self
            .write("put", move |w| w.put(&key, &value, lease))
            .await?;
        rev.ok_or_else(|| KvError::Backend("put produced no revision".into()))
    }

    async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        self.cas(key, value, 0, lease).await
    }

    async fn cas(
        &self,
        key: &str,
        value: &[u8],
        expected: Revision,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        let (key, value) = (key.to_string(), value.to_vec());
        let (applied, rev) = self
            .write("cas", move |w| {
                if w.mod_rev(&key)? != expected {
                    return Ok(false);
                }
                w.put(&key, &value, lease)?;
                Ok(true)
            })
            .await?;
        Ok(if applied { rev } else { None })
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        let (deleted, _) = self.write("delete", move |w| Ok(w.delete(&key)?)).await?;
        Ok(deleted)
    }

    async fn delete_cas(&self, key: &str, expected: Revision) -> Result<bool> {
        let key = key.to_string();
        let (deleted, _) = self
            .write("delete_cas", move |w| {
                if w.mod_rev(&key)? != expected {
                    return Ok(false);
                }
                Ok(w.delete(&key)?)
            })
            .await?;
        Ok(deleted)
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<Option<Revision>> {
        let (applied, _) = self
            .write("txn", move |w| {
                for Compare::ModRevision(key, expected) in &compares {
                    if w.mod_rev(key)? != *expected {
                        return Ok(None);
                    }
                }
                for op in &ops {
                    match op {
                        TxnOp::Put { key, value, lease } => w.put(key, value, *lease)?,
                        TxnOp::Delete { key } => {
                            w.delete(key)?;
                        }
                    }
                }
                Ok(Some(w.current_rev()?))
            })
            .await?;
        Ok(applied)
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        // "From now" means from the revision current at this call, not at the moment the hub
        // thread gets to the registration: writes in between must be seen.
        let from = if from_revision > 0 {
            from_revision
        } else {
            self.with_conn(|conn, path| meta(conn, "rev").map_err(|e| db_err(path, "watch", e)))
                .await?
                + 1
        };
        let (tx, rx) = tokio_mpsc::unbounded_channel();
        self.hub
            .send(HubMsg::Register(Watcher {
                prefix: prefix.as_bytes().to_vec(),
                from,
                tx,
            }))
            .map_err(|_| KvError::Backend("embedded watch hub has stopped".into()))?;
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.grant(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        // The write transaction sweeps expired leases first, so an expired lease is gone
        // (with its keys) before the renewal looks for it.
        let (found, _) = self
            .write("keep_alive", move |w| {
                let n = w.tx.execute(
                    "UPDATE leases SET expires_at = ?2 + ttl_ms WHERE id = ?1",
                    params![lease, now_ms()],
                )?;
                Ok(n > 0)
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(KvError::LeaseNotFound(lease))
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let (found, _) = self
            .write("revoke", move |w| Ok(w.drop_lease(lease)?))
            .await?;
        if found {
            Ok(())
        } else {
            Err(KvError::LeaseNotFound(lease))
        }
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>> {
        let row: Option<(i64, i64)> = self
            .with_conn(move |conn, path| {
                conn.query_row(
                    "SELECT ttl_ms, expires_at FROM leases WHERE id = ?1",
                    [lease],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| db_err(path, "lease_ttl", e))
            })
            .await?;
        // A lease past its expiry that no sweep removed yet is gone all the same.
        let ms = |v: i64| Duration::from_millis(v.max(0).unsigned_abs());
        Ok(row
            .map(|(ttl, expires)| (ttl, expires - now_ms()))
            .filter(|(_, left)| *left > 0)
            .map(|(ttl, left)| LeaseTtl {
                granted: ms(ttl),
                remaining: ms(left),
            }))
    }

    async fn health(&self) -> Result<Revision> {
        self.with_conn(|conn, path| meta(conn, "rev").map_err(|e| db_err(path, "health check", e)))
            .await
    }
}

/// One watch of this process.
struct Watcher {
    prefix: Vec<u8>,
    /// First revision wanted.
    from: Revision,
    tx: tokio_mpsc::UnboundedSender<Result<WatchEvent>>,
}

enum HubMsg {
    Register(Watcher),
    Wake,
    Shutdown,
}

/// A logged change, as read from the event log.
struct LoggedEvent {
    rev: Revision,
    key: Vec<u8>,
    event: WatchEvent,
}

/// Fans the event log out to the watches of this process, in revision order.
struct Hub {
    conn: Connection,
    path: PathBuf,
    watchers: Vec<Watcher>,
    /// Every event up to this revision has been handed to every registered watcher.
    delivered: Revision,
}

fn read_events(
    conn: &Connection,
    after: Revision,
    upto: Revision,
    prefix: Option<&[u8]>,
) -> rusqlite::Result<Vec<LoggedEvent>> {
    let mut st = conn.prepare_cached(
        "SELECT rev, key, kind, value, create_rev, lease FROM events
         WHERE rev > ?1 AND rev <= ?2 ORDER BY rev, seq",
    )?;
    let rows = st.query_map(params![after, upto], |r| {
        let rev: Revision = r.get(0)?;
        let key: Vec<u8> = r.get(1)?;
        let kind: i64 = r.get(2)?;
        let value: Option<Vec<u8>> = r.get(3)?;
        let create_rev: Option<Revision> = r.get(4)?;
        let lease: Option<LeaseId> = r.get(5)?;
        Ok((rev, key, kind, value, create_rev, lease))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (rev, key, kind, value, create_rev, lease) = row?;
        if prefix.is_some_and(|p| !key.starts_with(p)) {
            continue;
        }
        let skey = key_string(key.clone());
        let event = if kind == KIND_PUT {
            WatchEvent::Put(KvEntry {
                key: skey,
                value: value.unwrap_or_default(),
                create_revision: create_rev.unwrap_or(rev),
                mod_revision: rev,
                lease,
            })
        } else {
            WatchEvent::Delete {
                key: skey,
                mod_revision: rev,
            }
        };
        out.push(LoggedEvent { rev, key, event });
    }
    Ok(out)
}

impl Hub {
    fn run(mut self, rx: mpsc::Receiver<HubMsg>, poll: Duration) {
        loop {
            let timeout = if self.watchers.is_empty() {
                Duration::from_secs(3600)
            } else {
                poll
            };
            match rx.recv_timeout(timeout) {
                Ok(HubMsg::Register(w)) => {
                    if let Err(e) = self.register(w) {
                        tracing::warn!(path = %self.path.display(), error = %e, "watch registration failed");
                    }
                }
                Ok(HubMsg::Wake) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(HubMsg::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.watchers.retain(|w| !w.tx.is_closed());
            if !self.watchers.is_empty()
                && let Err(e) = self.poll()
            {
                tracing::warn!(path = %self.path.display(), error = %e, "watch poll failed; retrying");
            }
        }
    }

    /// Adds a watcher: replays its history up to `delivered`, then it gets live events.
    fn register(&mut self, w: Watcher) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        let current = meta(&tx, "rev")?;
        let compacted = meta(&tx, "compact_rev")?;
        if self.watchers.is_empty() {
            self.delivered = current;
        }
        let from = w.from.max(1);
        if from <= compacted {
            let _ = w.tx.send(Err(KvError::Compacted {
                requested: from,
                compacted,
            }));
            return Ok(());
        }
        let history = read_events(&tx, from - 1, self.delivered, Some(&w.prefix))?;
        tx.commit()?;
        for ev in history {
            if w.tx.send(Ok(ev.event)).is_err() {
                return Ok(());
            }
        }
        self.watchers.push(Watcher { from, ..w });
        Ok(())
    }

    /// Delivers every event after `delivered` to every watcher.
    fn poll(&mut self) -> rusqlite::Result<()> {
        let current = meta(&self.conn, "rev")?;
        if current <= self.delivered {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let current = meta(&tx, "rev")?;
        let compacted = meta(&tx, "compact_rev")?;
        if compacted > self.delivered {
            // This process fell so far behind that the log was trimmed under it.
            for w in self.watchers.drain(..) {
                let _ = w.tx.send(Err(KvError::Compacted {
                    requested: self.delivered + 1,
                    compacted,
                }));
            }
            self.delivered = current;
            return Ok(());
        }
        let events = read_events(&tx, self.delivered, current, None)?;
        tx.commit()?;
        for ev in &events {
            for w in &self.watchers {
                if ev.rev >= w.from && ev.key.starts_with(&w.prefix) {
                    let _ = w.tx.send(Ok(ev.event.clone()));
                }
            }
        }
        self.delivered = current;
        Ok(())
    }
}

/// Deletes expired leases and trims the event log, from any process.
struct Sweeper {
    conn: Connection,
    path: PathBuf,
    opts: EmbeddedOptions,
    hub: mpsc::Sender<HubMsg>,
}

impl Sweeper {
    fn run(mut self, stop: mpsc::Receiver<()>) {
        loop {
            match stop.recv_timeout(self.opts.sweep_interval) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            match self.sweep() {
                Ok(true) => {
                    let _ = self.hub.send(HubMsg::Wake);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "lease sweep failed; retrying");
                }
            }
        }
    }

    /// One sweep; `true` if it changed anything.
    fn sweep(&mut self) -> rusqlite::Result<bool> {
        let now = now_ms();
        // Cheap read first, so idle stores never take the write lock.
        let expired: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM leases WHERE expires_at <= ?1 LIMIT 1",
                [now],
                |r| r.get(0),
            )
            .optional()?;
        let rev = meta(&self.conn, "rev")?;
        let compacted = meta(&self.conn, "compact_rev")?;
        let keep = self.opts.keep_revisions.max(1);
        // Trim in batches (10% slack) rather than on every write.
        let trim = rev - compacted > keep + keep / 10;
        if expired.is_none() && !trim {
            return Ok(false);
        }
        let mut w = Write::begin(&mut self.conn)?;
        let n = w.expire_leases(now_ms())?;
        if trim {
            let rev = w.current_rev()?;
            let upto = rev - keep;
            w.tx.execute("DELETE FROM events WHERE rev <= ?1", [upto])?;
            w.tx.execute(
                "UPDATE meta SET v = ?1 WHERE k = 'compact_rev' AND v < ?1",
                [upto],
            )?;
        }
        let changed = w.commit()?.is_some();
        if n > 0 {
            tracing::debug!(path = %self.path.display(), leases = n, "expired leases swept");
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
