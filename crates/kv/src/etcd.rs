//! The etcd v3 backend.
//!
//! One gRPC channel balanced over every endpoint of the URL: a member that is down is
//! skipped while the others answer. Nothing is contacted at open time; every call has its own
//! deadline ([`REQUEST_TIMEOUT`]) and reports [`KvError::Unreachable`] when it passes or the
//! connection fails, so the caller can report the outage and retry with backoff.
//!
//! Watches run in a background task that re-creates the etcd watch after any stream error,
//! from the revision after the last one delivered, so the consumer sees every event exactly
//! once and in order across member restarts and failovers.
//!
//! Over TLS (`etcds://`) with a user, the client authenticates lazily, before the first request
//! that needs a token, and again whenever etcd says the token is no longer valid (tokens are
//! lost when a member restarts). Refusals (a failed TLS handshake, a wrong password, a missing
//! permission) are [`KvError::Refused`] and are never retried.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, Error as EtcdError,
    EventType, GetOptions, Identity as TlsIdentity, KeyValue, PutOptions, TlsOptions, Txn,
    TxnOp as EtcdTxnOp, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    Compare, Kv, KvEntry, KvError, LeaseId, LeaseTtl, Listing, Result, Revision, TxnOp, WatchEvent,
    WatchStream,
    secure::{EtcdSecurity, Password, Probe, probe, tls_failure},
};

/// Deadline of one request (including waiting for a usable connection).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of establishing one TCP connection to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// The value size etcd refuses by default (`--max-request-bytes`, 1.5 MiB, includes the key).
const DEFAULT_SERVER_LIMIT: usize = 1536 * 1024;

/// Keys per page of a list, so an answer stays small however large the cluster. Not much
/// smaller: etcd counts the rest of the range for every page (its answer's `count`), so a
/// listing costs pages x keys; with 500 a listing of 100k keys took 5.3 s (bench scale).
const LIST_PAGE: i64 = 2000;

/// The message cap for list answers: a page of [`LIST_PAGE`] records of the sizes the store
/// writes stays far below it (gRPC's default is 4 MiB).
const MAX_ANSWER: usize = 64 << 20;

/// The end of etcd's range for every key starting with `prefix` (all keys for an empty one).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
/// How long a broken watch waits before it reconnects, at most.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(2);
/// Pause between attempts when an endpoint refuses connections.
const RETRY_PAUSE: Duration = Duration::from_millis(25);
/// A key that is never written; reading it is the health probe. It lies under the project's
/// prefix `/ovl/`, so a role limited to that prefix may read it.
const HEALTH_KEY: &str = "/ovl/kv-health-probe";
/// How often a write whose answer was lost is checked and sent again.
const SETTLE_ATTEMPTS: usize = 3;

/// Whether a request may be sent again after its answer was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    /// Reads and writes that change nothing more when applied twice.
    Always,
    /// Writes: only when the request provably never reached a member (connection refused).
    IfNotSent,
}

/// A user and password, and whether the client holds a token for them.
struct Auth {
    user: String,
    password: Password,
    /// Set once authenticated; cleared when etcd says the token is invalid.
    authed: AtomicBool,
    /// One authentication at a time.
    lock: tokio::sync::Mutex<()>,
}

/// The etcd backend. Cloning the inner client is cheap; all methods are safe concurrently.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
    endpoints: Vec<String>,
    describe: String,
    auth: Option<Arc<Auth>>,
    /// The TLS material (`etcds://`), for [`EtcdKv::verify`]'s direct probe.
    tls: Option<Arc<EtcdSecurity>>,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdKv")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Whether an etcd client error means "no answer" rather than a definite refusal.
fn is_unreachable(e: &EtcdError) -> bool {
    match e {
        EtcdError::TransportError(_) | EtcdError::IoError(_) => true,
        EtcdError::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
            ) && !s.message().starts_with("etcdserver: request is too large")
        }
        _ => false,
    }
}

/// How etcd refused a request, if it did.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The token is unknown or expired: authenticate again and retry.
    Token,
    /// A definite refusal: TLS, credentials or permissions.
    Final(String),
}

fn refusal(e: &EtcdError) -> Option<Refusal> {
    let source: Option<&(dyn std::error::Error + 'static)> = match e {
        EtcdError::GRpcStatus(s) => Some(s),
        EtcdError::TransportError(t) => Some(t),
        EtcdError::IoError(io) => Some(io),
        _ => None,
    };
    if let Some(why) = source.and_then(tls_failure) {
        return Some(Refusal::Final(why));
    }
    let EtcdError::GRpcStatus(s) = e else {
        return None;
    };
    let msg = s.message();
    Some(match s.code() {
        tonic::Code::Unauthenticated => Refusal::Token,
        tonic::Code::PermissionDenied => Refusal::Final(format!(
            "permission denied ({msg}): the user's role must grant readwrite on the keys this \
             agent uses (the prefix /ovl/)"
        )),
        _ if msg.contains("authentication failed") => Refusal::Final(format!(
            "authentication failed: wrong user name or password ({msg})"
        )),
        _ if msg.contains("user name is empty") => Refusal::Final(format!(
            "the cluster has authentication enabled and we gave no user ({msg}): give a user \
             and password, or a client certificate whose common name is an etcd user"
        )),
        _ if msg.contains("authentication is not enabled") => Refusal::Final(format!(
            "a user was given but the cluster has authentication disabled ({msg}): enable it \
             (etcdctl auth enable) or drop the user"
        )),
        _ => return None,
    })
}

/// Whether the request failed before reaching any etcd member (connection not established),
/// which makes it safe to retry even if it is not idempotent.
fn not_sent(e: &EtcdError) -> bool {
    match e {
        EtcdError::TransportError(_) => true,
        EtcdError::GRpcStatus(s) if s.code() == tonic::Code::Unavailable => {
            if s.message().contains("connect") {
                return true;
            }
            let mut src = std::error::Error::source(s);
            while let Some(err) = src {
                if let Some(io) = err.downcast_ref::<std::io::Error>() {
                    return io.kind() == std::io::ErrorKind::ConnectionRefused;
                }
                if err.to_string().contains("connect error") {
                    return true;
                }
                src = err.source();
            }
            false
        }
        _ => false,
    }
}

/// What became of a write whose answer was lost.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// The key holds the written value and lease, at this revision.
    Applied(Revision),
    /// The key is as the write expected it: the write did not happen.
    NotApplied,
    /// Someone else changed the key: a compare-and-swap lost.
    Moved,
}

/// Decides [`Settled`] from the key's entry `now`. An identical value written by someone
/// else counts as applied: the key holds what the caller wanted either way.
fn settled(
    now: Option<&KvEntry>,
    value: &[u8],
    lease: Option<LeaseId>,
    expected: Revision,
) -> Settled {
    match now {
        Some(e) if e.value == value && e.lease == lease && e.mod_revision != expected => {
            Settled::Applied(e.mod_revision)
        }
        Some(e) if e.mod_revision == expected => Settled::NotApplied,
        None if expected == 0 => Settled::NotApplied,
        _ => Settled::Moved,
    }
}

fn grpc_message(e: &EtcdError) -> Option<&str> {
    match e {
        EtcdError::GRpcStatus(s) => Some(s.message()),
        _ => None,
    }
}

/// etcd leases have whole-second TTLs: round up so a key never dies early, at least 1 s.
fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis().div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

/// Key and value of an entry as etcd returns it; keys written through `&str` are UTF-8.
fn entry(kv: &KeyValue) -> KvEntry {
    KvEntry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    }
}

fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|l| PutOptions::new().with_lease(l))
}

/// The compare for "`key`'s mod revision is `expected`" (`0`: absent).
fn compare(key: &str, expected: Revision) -> EtcdCompare {
    if expected == 0 {
        // An absent key has create_revision 0 in etcd's compare semantics.
        EtcdCompare::create_revision(key, CompareOp::Equal, 0)
    } else {
        EtcdCompare::mod_revision(key, CompareOp::Equal, expected)
    }
}

impl EtcdKv {
    /// Builds a client for `endpoints` (`host:port`). Does not contact the cluster.
    pub async fn connect(endpoints: Vec<String>) -> Result<Self> {
        Self::build(endpoints, None, None).await
    }

    /// Builds a TLS client for `endpoints` with `security`'s material and credentials. Does
    /// not contact the cluster ([`EtcdKv::verify`] does).
    pub async fn connect_tls(endpoints: Vec<String>, security: &EtcdSecurity) -> Result<Self> {
        let mut tls = TlsOptions::new()
            // etcd negotiates h2 by ALPN; older members may not, and gRPC is HTTP/2 anyway.
            .assume_http2(true)
            .timeout(CONNECT_TIMEOUT);
        tls = match &security.ca_pem {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if let Some(id) = &security.identity {
            tls = tls.identity(TlsIdentity::from_pem(&id.cert_pem, &id.key_pem));
        }
        let auth = security.user.as_ref().map(|(user, password)| {
            Arc::new(Auth {
                user: user.clone(),
                password: password.clone(),
                authed: AtomicBool::new(false),
                lock: tokio::sync::Mutex::new(()),
            })
        });
        let mut kv = Self::build(endpoints, Some(tls), auth).await?;
        kv.tls = Some(Arc::new(security.clone()));
        Ok(kv)
    }

    async fn build(
        endpoints: Vec<String>,
        tls: Option<TlsOptions>,
        auth: Option<Arc<Auth>>,
    ) -> Result<Self> {
        let (scheme, prefix) = match tls {
            Some(_) => ("etcds", "https"),
            None => ("etcd", "http"),
        };
        let describe = format!("{scheme}://{}", endpoints.join(","));
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{prefix}://{e}"))
            .collect();
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            // Detect a dead member on idle connections (watches) within a few seconds.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum refuses requests and ends watches instead of
            // serving stale data, so the balancer and the watch resume move elsewhere.
            .with_require_leader(true)
            .with_tcp_keepalive(Duration::from_secs(10));
        if let Some(tls) = tls {
            opts = opts.with_tls(tls);
        }
        // No user in the options: etcd-client would authenticate inside `connect`, which must
        // not need the cluster. `ensure_auth` does it before the first request instead.
        let client = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&urls, Some(opts)))
            .await
            .map_err(|_| KvError::Unreachable {
                store: describe.clone(),
                reason: "timed out setting up the client".into(),
            })?
            .map_err(|e| KvError::Backend(format!("{describe}: client setup: {e}")))?;
        Ok(Self {
            client,
            endpoints,
            describe,
            auth,
            tls: None,
        })
    }

    /// Asks the cluster once whether it accepts this client (TLS, credentials, permission to
    /// read under `/ovl/`). A refusal is an error; a cluster that does not answer is not (it
    /// is logged, and the first request that reaches it checks again).
    pub async fn verify(&self) -> Result<()> {
        let check = self
            .call(
                "checking the TLS material and credentials",
                None,
                Resend::Always,
                |mut c| async move {
                    c.get(HEALTH_KEY, Some(GetOptions::new().with_count_only()))
                        .await
                        .map(|_| ())
                },
            )
            .await;
        let e = match check {
            Ok(()) => return Ok(()),
            Err(e @ KvError::Refused { .. }) => return Err(e),
            Err(e) => e,
        };
        // gRPC reports a client certificate that a TLS 1.3 server rejects as a closed
        // connection, like an outage: ask the members directly.
        if let Some(security) = &self.tls {
            for ep in &self.endpoints {
                if let Probe::Refused(why) = probe(ep, security, REQUEST_TIMEOUT).await {
                    return Err(self.refused(&format!("TLS with {ep}"), why));
                }
            }
        }
        tracing::warn!(error = %e, "could not check the KV credentials at start; \
            the first request that reaches the cluster checks them");
        Ok(())
    }

    /// Authenticates if a user is configured and the client holds no valid token.
    async fn ensure_auth(&self) -> Result<(), EtcdError> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        if auth.authed.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = auth.lock.lock().await;
        if auth.authed.load(Ordering::Acquire) {
            return Ok(());
        }
        let creds = (auth.user.clone(), auth.password.expose().to_string());
        // The client's clones share the token and credentials: this updates them all.
        self.client.clone().update_user(Some(creds)).await?;
        auth.authed.store(true, Ordering::Release);
        tracing::debug!(user = %auth.user, store = %self.describe, "authenticated to etcd");
        Ok(())
    }

    /// Forgets the token, so the next request authenticates again. `false` if there is no
    /// user to authenticate as.
    fn drop_token(&self) -> bool {
        match &self.auth {
            Some(a) => {
                a.authed.store(false, Ordering::Release);
                true
            }
            None => false,
        }
    }

    fn refused(&self, what: &str, reason: impl std::fmt::Display) -> KvError {
        KvError::Refused {
            store: self.describe.clone(),
            reason: format!("{what}: {reason}"),
        }
    }

    fn unreachable(&self, what: &str, reason: impl std::fmt::Display) -> KvError {
        KvError::Unreachable {
            store: self.describe.clone(),
            reason: format!("{what}: {reason}"),
        }
    }

    fn map_err(&self, what: &str, key: Option<&str>, e: EtcdError) -> KvError {
        if grpc_message(&e).is_some_and(|m| m.starts_with("etcdserver: request is too large")) {
            return KvError::TooLarge {
                key: key.unwrap_or_default().to_string(),
                size: 0,
                limit: DEFAULT_SERVER_LIMIT,
            };
        }
        if is_unreachable(&e) {
            self.unreachable(what, e)
        } else {
            KvError::Backend(format!("{}: {what}: {e}", self.describe))
        }
    }

    /// Runs one request with the per-request deadline and maps its errors.
    ///
    /// A request that failed because no connection could be made to the endpoint the
    /// balancer picked (a stopped member) never reached etcd, so it is retried, on whichever
    /// endpoint the balancer picks next, until the deadline. Other failures without an
    /// answer (a connection that broke under the request) are retried only for
    /// [`Resend::Always`] requests: a write that may have been applied must not be applied
    /// twice; [`EtcdKv::settle`] decides for those.
    async fn call<T, F, Fut>(
        &self,
        what: &str,
        key: Option<&str>,
        resend: Resend,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let mut reauthed = false;
        loop {
            let attempt = async {
                self.ensure_auth().await?;
                f(self.client.clone()).await
            };
            let outcome = tokio::time::timeout_at(deadline, attempt).await;
            if let Ok(Err(e)) = &outcome {
                match refusal(e) {
                    // A token lost to a member restart or expiry: once more with a new one.
                    Some(Refusal::Token) if !reauthed && self.drop_token() => {
                        reauthed = true;
                        continue;
                    }
                    Some(Refusal::Token) => return Err(self.refused(what, e)),
                    Some(Refusal::Final(why)) => return Err(self.refused(what, why)),
                    None => {}
                }
            }
            match outcome {
                Err(_) => {
                    return Err(self.unreachable(
                        what,
                        format!("no answer within {} ms", REQUEST_TIMEOUT.as_millis()),
                    ));
                }
                Ok(Err(e))
                    if (not_sent(&e) || (resend == Resend::Always && is_unreachable(&e)))
                        && tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tracing::trace!(what, error = %e, "etcd endpoint refused; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(e)) => return Err(self.map_err(what, key, e)),
                Ok(Ok(v)) => return Ok(v),
            }
        }
    }

    /// Runs a transaction; `Some(revision)` if its compares held.
    async fn run_txn(&self, what: &str, key: Option<&str>, txn: Txn) -> Result<Option<Revision>> {
        let resp = self
            .call(what, key, Resend::IfNotSent, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| self.lease_error(e, None))?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(resp.succeeded().then_some(rev))
    }

    /// Turns etcd's "lease not found" into [`KvError::LeaseNotFound`].
    fn lease_error(&self, e: KvError, lease: Option<LeaseId>) -> KvError {
        match &e {
            KvError::Backend(msg) if msg.contains("requested lease not found") => {
                KvError::LeaseNotFound(lease.unwrap_or_default())
            }
            _ => e,
        }
    }

    async fn put_once(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        let (k, v) = (key.to_string(), value.to_vec());
        let resp = self
            .call("put", Some(key), Resend::IfNotSent, |mut c| {
                let (k, v) = (k.clone(), v.clone());
                async move { c.put(k, v, put_options(lease)).await }
            })
            .await
            .map_err(|e| self.lease_error(e, lease))?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn cas_once(
        &self,
        key: &str,
        value: &[u8],
        expected: Revision,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        let txn = Txn::new()
            .when([compare(key, expected)])
            .and_then([EtcdTxnOp::put(key, value.to_vec(), put_options(lease))]);
        self.run_txn("cas", Some(key), txn)
            .await
            .map_err(|e| self.lease_error(e, lease))
    }

    /// Whether `e` is a write's answer lost to a broken connection (not a store that stays
    /// silent until the deadline, where checking would only double the wait), and one more
    /// attempt is allowed.
    fn lost_answer(&self, e: &KvError, started: tokio::time::Instant, attempt: &mut usize) -> bool {
        let lost = matches!(e, KvError::Unreachable { .. })
            && started.elapsed() < REQUEST_TIMEOUT
            && *attempt < SETTLE_ATTEMPTS;
        if lost {
            *attempt += 1;
            tracing::debug!(error = %e, "etcd write lost its answer; checking whether it applied");
        }
        lost
    }

    /// After a write of `value` to `key` (expecting mod revision `expected`, 0 for "absent"
    /// or "anything" for a plain put) lost its answer: reads the key from a member that
    /// answers and tells whether the write took effect.
    async fn settle(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
        expected: Revision,
    ) -> Result<Settled> {
        let now = self.get(key).await?;
        Ok(settled(now.as_ref(), value, lease, expected))
    }

    /// Sends a write (`once`) until it is answered. When an answer is lost, what the key holds
    /// tells whether the write landed ([`EtcdKv::settle`]); `outcome` turns that into the
    /// result, or `None` to send the write again.
    async fn write_settled<T, Fut>(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
        expected: Revision,
        once: impl Fn() -> Fut,
        outcome: impl Fn(Settled) -> Option<T>,
    ) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            let started = tokio::time::Instant::now();
            match once().await {
                Err(e) if self.lost_answer(&e, started, &mut attempt) => {
                    if let Some(done) = outcome(self.settle(key, value, lease, expected).await?) {
                        return Ok(done);
                    }
                }
                other => return other,
            }
        }
    }

    /// One snapshot of `prefix` read in pages of [`LIST_PAGE`] keys, every page at revision
    /// `at` (`0`: at the revision of the first page): one answer for the whole keyspace
    /// outgrew the client's message cap near 17k endpoints (12 MB at 50k).
    async fn list_pages(&self, prefix: &str, at: Revision) -> Result<Listing> {
        let end = range_end(prefix.as_bytes());
        let mut entries = Vec::new();
        // etcd takes no empty key: every key is the range from "\0" to "\0".
        let mut from = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.as_bytes().to_vec()
        };
        let mut revision = at;
        loop {
            let resp = self
                .call("list", Some(prefix), Resend::Always, |c| {
                    let (from, end) = (from.clone(), end.clone());
                    async move {
                        let mut opts = GetOptions::new().with_range(end).with_limit(LIST_PAGE);
                        if revision > 0 {
                            opts = opts.with_revision(revision);
                        }
                        c.kv_client()
                            .max_decoding_message_size(MAX_ANSWER)
                            .get(from, Some(opts))
                            .await
                    }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            let kvs = resp.kvs();
            entries.extend(kvs.iter().map(entry));
            match kvs.last() {
                Some(last) if resp.more() => {
                    // The next page starts right after the last key read.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(Listing { entries, revision })
    }

    fn check_size(key: &str, value: &[u8]) -> Result<()> {
        // Checked here too so the error carries the real size; the server enforces its own.
        if key.len() + value.len() > DEFAULT_SERVER_LIMIT {
            return Err(KvError::TooLarge {
                key: key.to_string(),
                size: value.len(),
                limit: DEFAULT_SERVER_LIMIT,
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Kv for EtcdKv {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>> {
        let k = key.to_string();
        let resp = self
            .call("get", Some(key), Resend::Always, |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(entry))
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.list_many(&[prefix]).await
    }

    async fn list_many(&self, prefixes: &[&str]) -> Result<Listing> {
        // A page's revision may be compacted before the next page is read: start over.
        let mut tries = 0;
        loop {
            let mut all = Listing {
                entries: Vec::new(),
                revision: 0,
            };
            let mut failed = None;
            for p in prefixes {
                match self.list_pages(p, all.revision).await {
                    Ok(l) => {
                        all.revision = l.revision;
                        all.entries.extend(l.entries);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(all),
                Some(e) if tries < 2 && e.to_string().contains("compacted") => tries += 1,
                Some(e) => return Err(e),
            }
        }
    }

    async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        Self::check_size(key, value)?;
        self.write_settled(
            key,
            value,
            lease,
            0,
            || self.put_once(key, value, lease),
            |settled| match settled {
                Settled::Applied(rev) => Some(rev),
                // A plain put does not care who wrote in between: send it again.
                Settled::NotApplied | Settled::Moved => None,
            },
        )
        .await
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
        Self::check_size(key, value)?;
        self.write_settled(
            key,
            value,
            lease,
            expected,
            || self.cas_once(key, value, expected, lease),
            |settled| match settled {
                Settled::Applied(rev) => Some(Some(rev)),
                Settled::NotApplied => None,
                Settled::Moved => Some(None),
            },
        )
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let k = key.to_string();
        let resp = self
            .call("delete", Some(key), Resend::Always, |mut c| {
                let k = k.clone();
                async move { c.delete(k, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn delete_cas(&self, key: &str, expected: Revision) -> Result<bool> {
        if expected == 0 {
            // "Delete if absent" never deletes anything.
            return Ok(false);
        }
        let txn = Txn::new()
            .when([compare(key, expected)])
            .and_then([EtcdTxnOp::delete(key, None)]);
        Ok(self.run_txn("delete_cas", Some(key), txn).await?.is_some())
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<Option<Revision>> {
        let mut leases = Vec::new();
        let mut etcd_ops = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxnOp::Put { key, value, lease } => {
                    Self::check_size(&key, &value)?;
                    leases.extend(lease);
                    etcd_ops.push(EtcdTxnOp::put(key, value, put_options(lease)));
                }
                TxnOp::Delete { key } => etcd_ops.push(EtcdTxnOp::delete(key, None)),
            }
        }
        let compares: Vec<EtcdCompare> = compares
            .iter()
            .map(|Compare::ModRevision(k, r)| compare(k, *r))
            .collect();
        let txn = Txn::new().when(compares).and_then(etcd_ops);
        self.run_txn("txn", None, txn)
            .await
            .map_err(|e| self.lease_error(e, leases.first().copied()))
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        let mut w = Watch {
            kv: self.clone(),
            prefix: prefix.to_string(),
            next: (from_revision > 0).then_some(from_revision),
        };
        // The first watch is created here so an unreachable store is reported to the caller.
        let (stream, pending) = w.establish().await?;
        let (tx, rx) = mpsc::channel(1024);
        let mut compacted = false;
        for item in pending {
            compacted |= matches!(item, Err(KvError::Compacted { .. }));
            // The channel is fresh and larger than one response; this cannot block.
            let _ = tx.try_send(item);
        }
        if !compacted {
            tokio::spawn(w.run(stream, tx));
        }
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl_secs(ttl);
        let resp = self
            // A lease granted twice costs nothing: the spare one expires unused.
            .call("grant lease", None, Resend::Always, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        // `lease_keep_alive` sends one renewal and reads its answer; TTL 0 there means the
        // lease is gone, which etcd-client reports as a keep-alive error.
        let r = self
            .call("keep alive", None, Resend::Always, |mut c| async move {
                c.lease_keep_alive(lease).await.map(|_| ())
            })
            .await;
        match r {
            Err(KvError::Backend(msg)) if msg.contains("lease not found") => {
                Err(KvError::LeaseNotFound(lease))
            }
            other => other,
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.call(
            "revoke lease",
            None,
            Resend::IfNotSent,
            |mut c| async move { c.lease_revoke(lease).await.map(|_| ()) },
        )
        .await
        .map_err(|e| self.lease_error(e, Some(lease)))
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>> {
        let r = self
            .call(
                "lease time to live",
                None,
                Resend::Always,
                |mut c| async move { c.lease_time_to_live(lease, None).await },
            )
            .await
            .map_err(|e| self.lease_error(e, Some(lease)));
        match r {
            // etcd answers TTL -1 for a lease it does not know (expired or revoked).
            Ok(resp) if resp.ttl() < 0 => Ok(None),
            Ok(resp) => Ok(Some(LeaseTtl {
                granted: Duration::from_secs(resp.granted_ttl().max(0).unsigned_abs()),
                remaining: Duration::from_secs(resp.ttl().unsigned_abs()),
            })),
            Err(KvError::LeaseNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn health(&self) -> Result<Revision> {
        self.call("health check", None, Resend::Always, |mut c| async move {
            c.get(HEALTH_KEY, Some(GetOptions::new().with_count_only()))
                .await
                .map(|r| r.header().map(|h| h.revision()).unwrap_or_default())
        })
        .await
    }
}

/// A watch that survives disconnects.
struct Watch {
    kv: EtcdKv,
    prefix: String,
    /// The first revision not yet delivered; `None` until the first watch is created
    /// "from now" and etcd tells us which revision that is.
    next: Option<Revision>,
}

type Item = Result<WatchEvent, KvError>;

impl Watch {
    /// Creates the etcd watch from `next` and waits for its confirmation. Returns the stream
    /// and anything to deliver before reading it (a compaction error, if any).
    async fn establish(&mut self) -> Result<(etcd_client::WatchStream, Vec<Item>)> {
        match self.establish_once().await {
            // Possibly a token etcd no longer knows: once more, authenticating first.
            Err(KvError::Refused { .. }) if self.kv.drop_token() => self.establish_once().await,
            other => other,
        }
    }

    async fn establish_once(&mut self) -> Result<(etcd_client::WatchStream, Vec<Item>)> {
        let mut opts = if self.prefix.is_empty() {
            WatchOptions::new().with_all_keys()
        } else {
            WatchOptions::new().with_prefix()
        };
        if let Some(next) = self.next {
            opts = opts.with_start_revision(next);
        }
        let prefix = self.prefix.clone();
        let (stream, first) = self
            .kv
            .call("watch", Some(&prefix), Resend::Always, |mut c| {
                let (prefix, opts) = (prefix.clone(), opts.clone());
                async move {
                    let mut stream = c.watch(prefix, Some(opts)).await?;
                    // etcd confirms creation first (and cancels at once when compacted).
                    match stream.message().await? {
                        Some(first) => Ok((stream, first)),
                        None => Err(EtcdError::WatchError(
                            "watch stream closed before creation".into(),
                        )),
                    }
                }
            })
            .await?;
        if let Some(item) = self.compaction(&first) {
            return Ok((stream, vec![item]));
        }
        if first.canceled() && first.cancel_reason().contains("permission denied") {
            // etcd answers a watch it does not permit (an invalid token too) with a canceled
            // creation.
            return Err(self.kv.refused(
                &format!("watch {prefix}"),
                format!(
                    "{} (the user's role must grant read on the prefix)",
                    first.cancel_reason()
                ),
            ));
        }
        if !first.created() || first.canceled() {
            return Err(KvError::Backend(format!(
                "{}: unexpected first watch response (canceled: {}, reason: {:?})",
                self.kv.describe,
                first.canceled(),
                first.cancel_reason()
            )));
        }
        if self.next.is_none() {
            let rev = first.header().map(|h| h.revision()).unwrap_or_default();
            self.next = Some(rev + 1);
        }
        let pending = self.events(&first);
        Ok((stream, pending))
    }

    /// A compaction error if the response cancels the watch because of compaction.
    fn compaction(&self, resp: &etcd_client::WatchResponse) -> Option<Item> {
        (resp.compact_revision() > 0).then(|| {
            Err(KvError::Compacted {
                requested: self.next.unwrap_or_default(),
                compacted: resp.compact_revision(),
            })
        })
    }

    /// The events of a response that were not delivered yet; advances `next`.
    fn events(&mut self, resp: &etcd_client::WatchResponse) -> Vec<Item> {
        let next = self.next.unwrap_or_default();
        let mut out = Vec::new();
        let mut last = None;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            // Events of a revision arrive together, so skipping by revision never drops
            // half a transaction; it only drops what a previous connection delivered.
            if rev < next {
                continue;
            }
            last = Some(rev);
            out.push(Ok(match ev.event_type() {
                EventType::Put => WatchEvent::Put(entry(kv)),
                EventType::Delete => WatchEvent::Delete {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    mod_revision: rev,
                },
            }));
        }
        if let Some(last) = last {
            self.next = Some(last + 1);
        }
        out
    }

    async fn run(mut self, mut stream: etcd_client::WatchStream, tx: mpsc::Sender<Item>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            // Read until the stream breaks.
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => return,
                    m = stream.message() => m,
                };
                match msg {
                    Ok(Some(resp)) => {
                        if let Some(item) = self.compaction(&resp) {
                            let _ = tx.send(item).await;
                            return;
                        }
                        for item in self.events(&resp) {
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                        if resp.canceled() {
                            tracing::debug!(
                                reason = resp.cancel_reason(),
                                "etcd canceled watch; re-creating"
                            );
                            break;
                        }
                        backoff = Duration::from_millis(50);
                    }
                    Ok(None) => {
                        tracing::debug!(prefix = %self.prefix, "etcd watch stream ended; re-creating");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(prefix = %self.prefix, error = %e, "etcd watch stream failed; re-creating");
                        break;
                    }
                }
            }
            // Re-create from the first undelivered revision, with backoff.
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
                match self.establish().await {
                    Ok((s, pending)) => {
                        let mut compacted = false;
                        for item in pending {
                            compacted |= matches!(item, Err(KvError::Compacted { .. }));
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                        if compacted {
                            return;
                        }
                        stream = s;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(prefix = %self.prefix, error = %e, "etcd watch re-create failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: tonic::Status) -> EtcdError {
        EtcdError::GRpcStatus(s)
    }

    #[test]
    fn a_range_ends_right_after_its_prefix() {
        assert_eq!(range_end(b"/ovl/v1/"), b"/ovl/v10".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
        assert_eq!(range_end(b""), vec![0]);
    }

    #[test]
    fn classifies_errors() {
        let refused = status(tonic::Status::unavailable("tcp connect error"));
        assert!(not_sent(&refused) && is_unreachable(&refused));
        let no_leader = status(tonic::Status::unavailable("etcdserver: no leader"));
        assert!(!not_sent(&no_leader) && is_unreachable(&no_leader));
        let bad = status(tonic::Status::invalid_argument("etcdserver: bad"));
        assert!(!not_sent(&bad) && !is_unreachable(&bad));
        let lease = status(tonic::Status::not_found(
            "etcdserver: requested lease not found",
        ));
        assert!(!is_unreachable(&lease));
        let big = status(tonic::Status::unknown("etcdserver: request is too large"));
        assert!(!is_unreachable(&big));
    }

    #[test]
    fn refusals_are_told_from_outages() {
        let code = |c, m: &str| refusal(&status(tonic::Status::new(c, m)));
        assert_eq!(
            code(
                tonic::Code::Unauthenticated,
                "etcdserver: invalid auth token"
            ),
            Some(Refusal::Token)
        );
        let final_with = |r: Option<Refusal>, want: &str| match r {
            Some(Refusal::Final(why)) => assert!(why.contains(want), "{why}"),
            other => panic!("expected a refusal with {want:?}, got {other:?}"),
        };
        final_with(
            code(
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            "/ovl/",
        );
        final_with(
            code(
                tonic::Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            "wrong user name or password",
        );
        final_with(
            code(
                tonic::Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            "gave no user",
        );
        final_with(
            code(
                tonic::Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            "authentication disabled",
        );
        // Outages and ordinary errors are not refusals.
        assert_eq!(code(tonic::Code::Unavailable, "tcp connect error"), None);
        assert_eq!(code(tonic::Code::InvalidArgument, "etcdserver: bad"), None);
        // A TLS error under the status, as tonic reports a failed handshake.
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let st = tonic::Status::from_error(Box::new(io));
        final_with(refusal(&status(st)), "not signed by the CA");
    }

    #[test]
    fn lost_writes_settle_from_what_the_key_holds() {
        let at = |value: &[u8], rev: Revision| KvEntry {
            key: "/k".into(),
            value: value.to_vec(),
            create_revision: 2,
            mod_revision: rev,
            lease: None,
        };
        // create-if-absent
        assert_eq!(settled(None, b"v", None, 0), Settled::NotApplied);
        assert_eq!(
            settled(Some(&at(b"v", 9)), b"v", None, 0),
            Settled::Applied(9)
        );
        assert_eq!(settled(Some(&at(b"x", 9)), b"v", None, 0), Settled::Moved);
        // same value but another lease: not ours
        assert_eq!(
            settled(Some(&at(b"v", 9)), b"v", Some(5), 0),
            Settled::Moved
        );
        // compare-and-swap on revision 4
        assert_eq!(
            settled(Some(&at(b"old", 4)), b"v", None, 4),
            Settled::NotApplied
        );
        assert_eq!(
            settled(Some(&at(b"v", 7)), b"v", None, 4),
            Settled::Applied(7)
        );
        assert_eq!(settled(Some(&at(b"x", 7)), b"v", None, 4), Settled::Moved);
        assert_eq!(settled(None, b"v", None, 4), Settled::Moved);
    }

    #[test]
    fn ttl_rounds_up_to_seconds() {
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(2)), 2);
    }

    #[test]
    fn absent_compare_uses_create_revision() {
        let absent = compare("/k", 0);
        let present = compare("/k", 7);
        assert_ne!(format!("{absent:?}"), format!("{present:?}"));
        assert!(
            format!("{absent:?}").to_lowercase().contains("create"),
            "{absent:?}"
        );
    }
}
