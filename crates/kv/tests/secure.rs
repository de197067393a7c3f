//! etcd with TLS client-certificate authentication and RBAC, as the README's least-privilege
//! set-up describes it: auth enabled, a role `ovl` with readwrite on the prefix `/ovl/` only,
//! a user `ovl-agent` holding that role. Real etcd from Debian's etcd-server on loopback,
//! certificates made in the test (rcgen). Also: the embedded store's file is private.

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions, WatchOptions,
};
use futures::StreamExt;
use ovl_kv::{EtcdSecurity, Kv, KvError, TxnOp, WatchEvent, WatchStream};
use support::{EtcdCluster, pki::Pki};

const AGENT: &str = "ovl-agent";
const AGENT_PASSWORD: &str = "agent-pass-4711";
const ROOT_PASSWORD: &str = "root-pass-0815";
/// Generous bound for anything that should happen "soon" (no timing assertions).
const WAIT: Duration = Duration::from_secs(30);

/// A secured cluster and the PKI it trusts.
struct Secured {
    pki: Pki,
    cluster: EtcdCluster,
}

impl Secured {
    /// `n` TLS members with client-certificate auth; RBAC set up through the `root` client
    /// certificate, then auth enabled.
    async fn start(n: usize) -> Result<Self> {
        let pki = Pki::new(&[AGENT, "root", "stranger"])?;
        let probe = pki.security("ca.pem", Some("root"), None)?;
        let cluster = EtcdCluster::start_tls(n, pki.member(), probe).await?;
        let s = Self { pki, cluster };
        let mut admin = s.admin().await?;
        admin.user_add("root", ROOT_PASSWORD, None).await?;
        admin.user_grant_role("root", "root").await?;
        admin.role_add("ovl").await?;
        admin
            .role_grant_permission("ovl", Permission::read_write("/ovl/").with_prefix())
            .await?;
        admin.user_add(AGENT, AGENT_PASSWORD, None).await?;
        admin.user_grant_role(AGENT, "ovl").await?;
        admin.auth_enable().await?;
        Ok(s)
    }

    /// An etcd client with the `root` certificate: with auth enabled, etcd takes its common
    /// name as the user, root.
    async fn admin(&self) -> Result<Client> {
        self.admin_without(None).await
    }

    /// The same over every member but `skip` (one the test stopped: the client's balancer
    /// may send a request to it and fail).
    async fn admin_without(&self, skip: Option<usize>) -> Result<Client> {
        let read = |f: &str| std::fs::read(self.pki.path(f));
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")?))
            .identity(Identity::from_pem(read("root.pem")?, read("root-key.pem")?));
        let eps: Vec<String> = self
            .cluster
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, m)| format!("https://{}", m.endpoint()))
            .collect();
        Ok(Client::connect(eps, Some(ConnectOptions::new().with_tls(tls))).await?)
    }

    /// Opens the KV as the agent would, with `security`.
    async fn open(&self, security: &EtcdSecurity) -> ovl_kv::Result<Arc<dyn Kv>> {
        ovl_kv::open_with(Some(&self.cluster.url()), Path::new("/x"), security).await
    }

    /// The agent's material: CA, a client certificate etcd trusts, user and password.
    fn agent(&self) -> Result<EtcdSecurity> {
        self.pki
            .security("ca.pem", Some("stranger"), Some((AGENT, AGENT_PASSWORD)))
    }
}

fn refused_reason(r: ovl_kv::Result<Arc<dyn Kv>>) -> Result<String> {
    match r {
        Err(KvError::Refused { reason, .. }) => Ok(reason),
        Err(e) => bail!("expected a refusal, got {e}"),
        Ok(_) => bail!("expected a refusal, the store opened"),
    }
}

async fn next_event(w: &mut WatchStream) -> Result<WatchEvent> {
    match tokio::time::timeout(WAIT, w.next()).await {
        Err(_) => bail!("no watch event within {WAIT:?}"),
        Ok(None) => bail!("watch stream ended"),
        Ok(Some(r)) => Ok(r?),
    }
}

/// The conformance basics, under the prefix the role allows.
async fn basics(kv: &dyn Kv) -> Result<()> {
    kv.health().await?;
    let mut w = kv.watch("/ovl/t/", 0).await?;
    ensure!(kv.get("/ovl/t/missing").await?.is_none());
    let r1 = kv.put("/ovl/t/k1", b"v1", None).await?;
    let e = kv.get("/ovl/t/k1").await?.context("k1 after put")?;
    ensure!(e.value == b"v1" && e.create_revision == r1 && e.mod_revision == r1);
    let r2 = kv.cas("/ovl/t/k1", b"v2", r1, None).await?.context("cas")?;
    ensure!(
        kv.cas("/ovl/t/k1", b"v3", r1, None).await?.is_none(),
        "stale cas"
    );
    ensure!(
        kv.create("/ovl/t/k1", b"x", None).await?.is_none(),
        "create of present key"
    );
    let r3 = kv
        .create("/ovl/t/k2", b"two", None)
        .await?
        .context("create")?;
    let listing = kv.list("/ovl/t/").await?;
    let keys: Vec<&str> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    ensure!(keys == ["/ovl/t/k1", "/ovl/t/k2"], "listing: {keys:?}");
    let lease = kv.grant_lease(Duration::from_secs(30)).await?;
    let r4 = kv
        .txn(
            vec![],
            vec![TxnOp::Put {
                key: "/ovl/t/leased".into(),
                value: b"l".to_vec(),
                lease: Some(lease),
            }],
        )
        .await?
        .context("txn")?;
    kv.keep_alive(lease).await?;
    ensure!(kv.get("/ovl/t/leased").await?.context("leased")?.lease == Some(lease));
    kv.revoke(lease).await?;
    ensure!(
        kv.get("/ovl/t/leased").await?.is_none(),
        "revoked lease took its key"
    );
    ensure!(kv.delete_cas("/ovl/t/k2", r3).await?, "delete_cas");
    let revs: Vec<i64> = [r1, r2, r3, r4].into();
    for want in revs {
        let ev = next_event(&mut w).await?;
        ensure!(ev.revision() == want, "watch: {ev:?}, want revision {want}");
    }
    Ok(())
}

/// The agent's material (CA, client certificate, user and password) connects, and the KV
/// basics work over TLS + auth. The same keys are in etcd for its root to read; the agent's
/// role reaches nothing outside `/ovl/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_auth_basics() -> Result<()> {
    let s = Secured::start(1).await?;
    let kv = s.open(&s.agent()?).await?;
    ensure!(kv.describe().starts_with("etcds://"), "{}", kv.describe());
    basics(kv.as_ref()).await?;

    let mut admin = s.admin().await?;
    let got = admin.get("/ovl/t/k1", None).await?;
    ensure!(
        got.kvs().first().map(|k| k.value()) == Some(&b"v2"[..]),
        "root sees the write"
    );

    // Outside the prefix: refused, and nothing is written.
    admin.put("/other/k", "root's", None).await?;
    for (what, r) in [
        ("put", kv.put("/other/x", b"v", None).await.map(|_| ())),
        ("get", kv.get("/other/k").await.map(|_| ())),
        ("list /", kv.list("/").await.map(|_| ())),
        ("delete", kv.delete("/other/k").await.map(|_| ())),
    ] {
        match r {
            Err(KvError::Refused { reason, .. }) => {
                ensure!(reason.contains("permission denied"), "{what}: {reason}")
            }
            other => bail!("{what} outside /ovl/ must be refused, got {other:?}"),
        }
    }
    match kv.watch("/other/", 0).await {
        Err(e) => ensure!(e.is_refused(), "watch outside /ovl/: {e}"),
        Ok(_) => bail!("watch outside /ovl/ was accepted"),
    }
    ensure!(
        admin.get("/other/x", None).await?.kvs().is_empty(),
        "nothing written"
    );
    ensure!(
        admin.get("/other/k", None).await?.kvs().len() == 1,
        "nothing deleted"
    );
    Ok(())
}

/// With client-certificate auth, a certificate whose common name is the user is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_common_name_is_the_user() -> Result<()> {
    let s = Secured::start(1).await?;
    let kv = s
        .open(&s.pki.security("ca.pem", Some(AGENT), None)?)
        .await?;
    let r = kv.put("/ovl/cn/k", b"v", None).await?;
    ensure!(kv.get("/ovl/cn/k").await?.context("k")?.mod_revision == r);
    let e = kv.put("/elsewhere", b"v", None).await.unwrap_err();
    ensure!(e.is_refused(), "{e}");
    Ok(())
}

/// Wrong CA, wrong client certificate, no client certificate, wrong password, unknown user:
/// each refused when opening, with a one-line reason that says which. The right material
/// opens (positive control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_material_is_refused_at_open() -> Result<()> {
    let s = Secured::start(1).await?;
    s.open(&s.agent()?).await.context("the right material")?;
    let user = Some((AGENT, AGENT_PASSWORD));
    let cases = [
        (
            "wrong CA",
            s.pki.security("rogue-ca.pem", Some("stranger"), user)?,
            "not signed by the CA",
        ),
        (
            "client certificate from another CA",
            s.pki.security("ca.pem", Some("rogue-ovl-agent"), user)?,
            "client certificate",
        ),
        (
            "no client certificate",
            s.pki.security("ca.pem", None, user)?,
            "client certificate",
        ),
        (
            "wrong password",
            s.pki
                .security("ca.pem", Some("stranger"), Some((AGENT, "nope")))?,
            "authentication failed",
        ),
        (
            "unknown user",
            s.pki
                .security("ca.pem", Some("stranger"), Some(("mallory", "x")))?,
            "authentication failed",
        ),
    ];
    for (case, security, want) in cases {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(WAIT, s.open(&security))
            .await
            .with_context(|| format!("{case}: open hung"))?;
        let reason = refused_reason(r).with_context(|| case.to_string())?;
        eprintln!("{case}: refused in {:?}: {reason}", started.elapsed());
        ensure!(reason.contains(want), "{case}: {reason}");
        ensure!(!reason.contains('\n'), "{case}: one line: {reason}");
    }
    Ok(())
}

/// A client without credentials reads and writes nothing of the project's keys: with a
/// certificate the CA signed but no etcd user behind it, every request is refused; without a
/// certificate, the TLS handshake is; plain HTTP gets no answer. The agent's user reads the
/// same key (positive control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_no_access() -> Result<()> {
    let s = Secured::start(1).await?;
    let mut admin = s.admin().await?;
    admin.put("/ovl/v1/hosts/h1", "{}", None).await?;

    let stranger = s.pki.security("ca.pem", Some("stranger"), None)?;
    let reason = refused_reason(s.open(&stranger).await)?;
    ensure!(reason.contains("permission denied"), "{reason}");
    // The same client, opened without the start check, refused request by request.
    let kv = ovl_kv::etcd::EtcdKv::connect_tls(
        s.cluster.members.iter().map(|m| m.endpoint()).collect(),
        &s.pki.security("ca.pem", Some("stranger"), None)?,
    )
    .await?;
    for (what, r) in [
        ("get", kv.get("/ovl/v1/hosts/h1").await.map(|_| ())),
        ("list", kv.list("/ovl/").await.map(|_| ())),
        (
            "put",
            kv.put("/ovl/v1/hosts/evil", b"{}", None).await.map(|_| ()),
        ),
        ("delete", kv.delete("/ovl/v1/hosts/h1").await.map(|_| ())),
    ] {
        match r {
            Err(e) if e.is_refused() => {}
            other => bail!("{what} without credentials: {other:?}"),
        }
    }
    ensure!(
        kv.watch("/ovl/", 0).await.is_err(),
        "watch without credentials"
    );

    let anonymous = s.open(&s.pki.security("ca.pem", None, None)?).await;
    let reason = refused_reason(anonymous)?;
    ensure!(reason.contains("client certificate"), "{reason}");

    let plain = format!("etcd://{}", s.cluster.members[0].endpoint());
    let kv_plain = ovl_kv::open(Some(&plain), Path::new("/x")).await?;
    ensure!(
        kv_plain.get("/ovl/v1/hosts/h1").await.is_err(),
        "plain HTTP read"
    );

    let got = admin
        .get(
            "/ovl/v1/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let keys: Vec<String> = got
        .kvs()
        .iter()
        .map(|k| k.key_str().unwrap_or("?").to_string())
        .collect();
    ensure!(
        keys == ["/ovl/v1/hosts/h1"],
        "nothing was written or deleted: {keys:?}"
    );
    ensure!(admin.get("/ovl/v1/hosts/h1", None).await?.kvs().len() == 1);
    let agent = s.open(&s.agent()?).await?;
    ensure!(
        agent.get("/ovl/v1/hosts/h1").await?.is_some(),
        "the agent's user reads it"
    );
    Ok(())
}

/// Tokens die with the member that issued them: after a restart the client authenticates
/// again by itself, and a watch carries on without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lost_on_restart_is_renewed() -> Result<()> {
    let mut s = Secured::start(1).await?;
    let kv = s.open(&s.agent()?).await?;
    let mut w = kv.watch("/ovl/r/", 0).await?;
    let mut revs = vec![kv.put("/ovl/r/a", b"1", None).await?];
    s.cluster.members[0].kill();
    s.cluster.members[0].start()?;
    s.cluster.wait_member_ready(0).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let r = loop {
        match kv.put("/ovl/r/b", b"2", None).await {
            Ok(r) => break r,
            Err(e) if e.is_unreachable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => bail!("put after restart: {e}"),
        }
    };
    revs.push(r);
    revs.push(kv.put("/ovl/r/c", b"3", None).await?);
    for want in revs {
        let ev = next_event(&mut w).await?;
        ensure!(
            ev.revision() == want,
            "watch after restart: {ev:?}, want {want}"
        );
    }
    Ok(())
}

/// A 3-member cluster over TLS (clients and peers) with RBAC: the agent's client is balanced
/// over the members and keeps working when one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_over_tls() -> Result<()> {
    let mut s = Secured::start(3).await?;
    let kv = s.open(&s.agent()?).await?;
    let mut w = kv.watch("/ovl/f/", 0).await?;
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(kv.put(&format!("/ovl/f/pre{i}"), b"x", None).await?);
    }
    let mut admin = s.admin().await?;
    let leader = admin.status().await?.leader();
    let members = admin.member_list().await?;
    let leader_name = members
        .members()
        .iter()
        .find(|m| m.id() == leader)
        .map(|m| m.name().to_string())
        .context("leader")?;
    let victim = s
        .cluster
        .members
        .iter()
        .position(|m| m.name != leader_name)
        .context("a follower")?;
    s.cluster.members[victim].kill();
    for i in 0..10 {
        revs.push(kv.put(&format!("/ovl/f/k{i}"), b"v", None).await?);
    }
    for want in revs {
        let ev = next_event(&mut w).await?;
        ensure!(ev.revision() == want, "{ev:?}, want {want}");
    }
    let listing = kv.list("/ovl/f/").await?;
    ensure!(listing.entries.len() == 15);
    // The admin client watches too, as a check that the writes are the cluster's (over the
    // live members: the first client's balancer may still pick the stopped one).
    let mut admin = s.admin_without(Some(victim)).await?;
    let mut aw = admin
        .watch(
            "/ovl/f/",
            Some(WatchOptions::new().with_prefix().with_start_revision(1)),
        )
        .await?;
    let first = aw.message().await?.context("watch response")?;
    ensure!(first.created());
    Ok(())
}

/// A user for a cluster without authentication is refused, not silently ignored: the
/// operator meant the cluster to check who writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_for_a_cluster_without_auth_is_refused() -> Result<()> {
    let pki = Pki::new(&[AGENT, "root"])?;
    let probe = pki.security("ca.pem", Some("root"), None)?;
    let cluster = EtcdCluster::start_tls(1, pki.member(), probe).await?;
    let url = cluster.url();
    let with_user = pki.security("ca.pem", Some(AGENT), Some((AGENT, AGENT_PASSWORD)))?;
    let r = ovl_kv::open_with(Some(&url), Path::new("/x"), &with_user).await;
    let reason = refused_reason(r)?;
    ensure!(reason.contains("authentication disabled"), "{reason}");
    // Positive control: the certificate alone is fine there.
    let cert_only = pki.security("ca.pem", Some(AGENT), None)?;
    ovl_kv::open_with(Some(&url), Path::new("/x"), &cert_only).await?;
    Ok(())
}

/// An `etcds://` cluster that does not answer at start is not an error (as with plain etcd):
/// the first request that reaches it checks the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_open_is_not_fatal() -> Result<()> {
    let pki = Pki::new(&[AGENT])?;
    let port = support::free_ports(1)[0];
    let url = format!("etcds://127.0.0.1:{port}");
    let security = pki.security("ca.pem", Some(AGENT), Some((AGENT, AGENT_PASSWORD)))?;
    let kv = tokio::time::timeout(
        WAIT,
        ovl_kv::open_with(Some(&url), Path::new("/x"), &security),
    )
    .await
    .context("open hung")??;
    let e = kv.get("/ovl/k").await.unwrap_err();
    ensure!(e.is_unreachable(), "{e}");
    Ok(())
}

/// TLS files are checked before any connection: a key that does not belong to the
/// certificate, a CA file without a certificate.
#[test]
fn material_is_checked_before_connecting() -> Result<()> {
    let pki = Pki::new(&[AGENT, "root"])?;
    let e = ovl_kv::secure::load_identity(&pki.path("root.pem"), &pki.path("ovl-agent-key.pem"))
        .unwrap_err()
        .to_string();
    ensure!(e.contains("does not belong"), "{e}");
    let e = ovl_kv::secure::load_ca(&pki.path("root-key.pem"))
        .unwrap_err()
        .to_string();
    ensure!(e.contains("no PEM certificate"), "{e}");
    ovl_kv::secure::load_identity(&pki.path("root.pem"), &pki.path("root-key.pem"))?;
    ovl_kv::secure::load_ca(&pki.path("ca.pem"))?;
    let plain_with_password = pki.security("ca.pem", None, Some((AGENT, "pw")))?;
    let e = ovl_kv::open_with(
        Some("etcd://127.0.0.1:1"),
        Path::new("/x"),
        &plain_with_password,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(e) {
        Err(KvError::InvalidMaterial(m)) => ensure!(m.contains("clear text"), "{m}"),
        other => bail!(
            "a password over plain etcd:// must be refused: {:?}",
            other.err()
        ),
    }
    Ok(())
}

/// The embedded store's files are readable by their owner only, new or existing.
#[tokio::test]
async fn embedded_store_is_private() -> Result<()> {
    let dir = support::tempdir();
    let path = dir.path().join("kv.sqlite");
    let kv = ovl_kv::open(None, &path).await?;
    kv.put("/ovl/k", b"v", None).await?;
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&p)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{p}: mode {mode:o}");
    }
    drop(kv);
    // An existing store with open modes is tightened when opened.
    let old = dir.path().join("old.sqlite");
    std::fs::write(&old, b"")?;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644))?;
    let kv = ovl_kv::open(None, &old).await?;
    kv.put("/ovl/k", b"v", None).await?;
    let mode = std::fs::metadata(&old)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "existing store: mode {mode:o}");
    Ok(())
}
