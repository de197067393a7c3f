//! Test fixtures: real etcd processes on loopback and child worker processes.
//!
//! Every process started here is killed by PID in `Drop`, and every directory is a
//! `tempfile::TempDir` (prefix `kvt-`), so a failing test leaves nothing behind.

#![allow(dead_code)]

use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result, bail};
use ovl_kv::Kv;

pub mod pki;
use tempfile::TempDir;

/// The etcd binary from Debian's etcd-server package.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// `n` distinct free loopback ports (all bound at once, then released for etcd to take).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// A temp directory for one test.
pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("kvt-")
        .tempdir()
        .expect("create temp dir")
}

/// TLS files of a member started with [`EtcdCluster::start_tls`]: the member's certificate
/// serves both clients and peers, and clients must present a certificate signed by the CA.
#[derive(Clone, Debug)]
pub struct MemberTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One etcd member process.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    token: String,
    tls: Option<MemberTls>,
    child: Option<Child>,
}

impl EtcdMember {
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// `host:port` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Starts (or restarts, on the same data dir and ports) the process.
    pub fn start(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("open etcd log")?;
        let client = format!("{}://127.0.0.1:{}", self.scheme(), self.client_port);
        let peer = format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port);
        let mut cmd = Command::new(ETCD_BIN);
        if let Some(t) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--peer-client-cert-auth")
                .arg("--peer-trusted-ca-file")
                .arg(&t.ca)
                .arg("--peer-cert-file")
                .arg(&t.cert)
                .arg("--peer-key-file")
                .arg(&t.key);
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it makes
        // the kernel kill etcd if the test process dies without running its Drop guards.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {ETCD_BIN}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process (SIGKILL, by PID) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The tail of the member's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An etcd cluster of one or more members on loopback, in its own temp dir.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    /// What the readiness probe connects with (TLS clusters: a client the CA signed).
    probe: ovl_kv::EtcdSecurity,
    // Dropped after the members (fields drop in order), so processes die before their files.
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers through every member.
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_on(free_ports(2 * n)).await
    }

    /// Starts one member per pair of `ports` (client, peer).
    pub async fn start_on(ports: Vec<u16>) -> Result<Self> {
        Self::start_with(ports, None, ovl_kv::EtcdSecurity::default()).await
    }

    /// Starts `n` members serving clients and peers over TLS with client certificate
    /// authentication; `probe` is how the readiness check connects.
    pub async fn start_tls(n: usize, tls: MemberTls, probe: ovl_kv::EtcdSecurity) -> Result<Self> {
        Self::start_with(free_ports(2 * n), Some(tls), probe).await
    }

    async fn start_with(
        ports: Vec<u16>,
        tls: Option<MemberTls>,
        probe: ovl_kv::EtcdSecurity,
    ) -> Result<Self> {
        let n = ports.len() / 2;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let dir = tempdir();
        let token = format!(
            "kvt-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let initial_cluster = (0..n)
            .map(|i| format!("kvt{i}={scheme}://127.0.0.1:{}", ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for i in 0..n {
            members.push(EtcdMember {
                name: format!("kvt{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("kvt{i}.etcd")),
                log: dir.path().join(format!("kvt{i}.log")),
                initial_cluster: initial_cluster.clone(),
                token: token.clone(),
                tls: tls.clone(),
                child: None,
            });
        }
        let mut cluster = Self {
            members,
            probe,
            _dir: dir,
        };
        for m in &mut cluster.members {
            m.start()?;
        }
        for i in 0..n {
            cluster.wait_member_ready(i).await?;
        }
        Ok(cluster)
    }

    /// `etcd://` (`etcds://` over TLS) URL listing every member.
    pub fn url(&self) -> String {
        let eps: Vec<String> = self.members.iter().map(|m| m.endpoint()).collect();
        format!("{}://{}", self.url_scheme(), eps.join(","))
    }

    fn url_scheme(&self) -> &'static str {
        if self.members.iter().any(|m| m.tls.is_some()) {
            "etcds"
        } else {
            "etcd"
        }
    }

    /// Waits (bounded) until member `i` serves linearizable requests.
    pub async fn wait_member_ready(&self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let url = format!("{}://{}", self.url_scheme(), m.endpoint());
        let kv = ovl_kv::open_with(Some(&url), Path::new("/"), &self.probe).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match kv.health().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("etcd {} not ready: {e}\nlog:\n{}", m.name, m.log_tail()),
            }
        }
    }

    /// The index of the current leader, asked through member `via`.
    pub async fn leader(&self, via: usize) -> Result<usize> {
        let ep = format!("http://{}", self.members[via].endpoint());
        let mut c = etcd_client::Client::connect([ep], None).await?;
        let st = c.status().await?;
        let leader = st.leader();
        let list = c.member_list().await?;
        let name = list
            .members()
            .iter()
            .find(|m| m.id() == leader)
            .map(|m| m.name().to_string())
            .context("leader not in member list")?;
        self.members
            .iter()
            .position(|m| m.name == name)
            .context("leader is not one of ours")
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Child worker processes (this test binary re-executed in worker mode), killed on drop.
pub struct Workers {
    children: Vec<Option<Child>>,
}

impl Workers {
    /// Starts `n` workers running `mode` against `url`; they all begin at the same instant.
    pub fn spawn(n: usize, mode: &str, url: &str, extra: &[(&str, String)]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let start_at = now_ms() + 1500;
        let mut children = Vec::new();
        for id in 0..n {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "--exact",
                "kvt_worker",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KVT_WORKER", mode)
            .env("KVT_URL", url)
            .env("KVT_ID", id.to_string())
            .env("KVT_START_AT", start_at.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            for (k, v) in extra {
                cmd.env(k, v);
            }
            children.push(Some(cmd.spawn().context("spawn worker")?));
        }
        Ok(Self { children })
    }

    /// Waits for every worker; returns the `KVT-RESULT` lines of each, in worker order.
    /// Fails if a worker fails.
    pub fn wait(mut self) -> Result<Vec<Vec<String>>> {
        let mut out = Vec::new();
        for (id, slot) in self.children.iter_mut().enumerate() {
            let child = slot.take().expect("worker waited twice");
            let o = child.wait_with_output()?;
            let stdout = String::from_utf8_lossy(&o.stdout);
            if !o.status.success() {
                bail!(
                    "worker {id} failed ({}):\n{stdout}\n{}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            out.push(
                stdout
                    .lines()
                    .filter_map(|l| l.split_once("KVT-RESULT "))
                    // libtest prints "test kvt_worker ... " on the same line first.
                    .map(|(_, r)| r.trim().to_string())
                    .collect(),
            );
        }
        Ok(out)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a test needs to know about the store under test.
pub struct Fixture {
    pub kv: Arc<dyn Kv>,
    /// A URL other processes can open.
    pub url: String,
    pub cluster: Option<EtcdCluster>,
    _dir: Option<TempDir>,
}

impl Fixture {
    /// A fresh embedded store in a temp dir.
    pub async fn embedded() -> Result<Self> {
        let dir = tempdir();
        let path = dir.path().join("kv.db");
        let url = format!("embedded://{}", path.display());
        let kv = ovl_kv::open(Some(&url), Path::new("/nonexistent")).await?;
        Ok(Self {
            kv,
            url,
            cluster: None,
            _dir: Some(dir),
        })
    }

    /// A fresh single-member etcd.
    pub async fn etcd() -> Result<Self> {
        let cluster = EtcdCluster::start(1).await?;
        let url = cluster.url();
        let kv = ovl_kv::open(Some(&url), Path::new("/nonexistent")).await?;
        Ok(Self {
            kv,
            url,
            cluster: Some(cluster),
            _dir: None,
        })
    }
}

/// A TCP relay in front of one etcd member that can lose one answer on purpose: once armed,
/// the first bytes the member sends back after the client spoke again are dropped and both
/// connections closed, the way a member dying under a request looks to the client.
pub struct AnswerCutter {
    pub port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerCutter {
    /// Listens on a free loopback port and relays every connection to `upstream`.
    pub async fn start(upstream: String) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, c) = (armed.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, a.clone(), c.clone()));
            }
        });
        Ok(Self {
            port,
            armed,
            cuts,
            task,
        })
    }

    /// Loses the next answer.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many answers were lost so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for AnswerCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
    let mut asked = false;
    loop {
        tokio::select! {
            n = cr.read(&mut up) => {
                let Ok(n @ 1..) = n else { return };
                asked |= armed.load(SeqCst);
                if sw.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            n = sr.read(&mut down) => {
                let Ok(n @ 1..) = n else { return };
                if asked && armed.swap(false, SeqCst) {
                    cuts.fetch_add(1, SeqCst);
                    // Dropping both streams closes them with the answer unsent.
                    return;
                }
                if cw.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
