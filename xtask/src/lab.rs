//! The netns lab: several "hosts" on one machine.
//!
//! ```text
//!   <lab>-ul   underlay namespace: bridge br0 198.18.0.1/24, router to the outside, etcd
//!              (one member on 198.18.0.1, or a cluster: member N on 198.18.0.(1+N))
//!   <lab>-h1   host 1: eth0 198.18.0.11/24, default via 198.18.0.1, overlay-agent
//!   <lab>-h2   host 2: eth0 198.18.0.12/24 ...
//!   <lab>-out  the "outside": eth0 198.19.0.2/24, route to 198.18.0.0/24 via 198.19.0.1
//! ```
//!
//! Everything lives in namespaces named `<lab>-*` and files under `/run/overlay-lab/<lab>`;
//! [`Lab::down`] removes all of it (processes by PID, mounts, namespaces, files) and reports
//! every failure. Containers made by tests are namespaces `<lab>-c-<name>`. With
//! [`LabConfig::state_tmpfs`] each host's state dir is a small tmpfs of its own, so a test
//! may fill it to the last byte without touching the machine's filesystems.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use crate::sh::{self, in_ns, ip, wait_for};

/// Where lab state lives.
pub const BASE_DIR: &str = "/run/overlay-lab";
/// Underlay subnet prefix (host N is `198.18.0.(10+N)`).
pub const UNDERLAY_GW: &str = "198.18.0.1";
/// Address of the outside namespace.
pub const OUTSIDE_ADDR: &str = "198.19.0.2";

/// Which KV the lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KvKind {
    /// The embedded SQLite store, one file shared by the agents.
    Embedded,
    /// A real etcd in the underlay namespace.
    Etcd,
    /// The same etcd over TLS with client certificates and RBAC, set up as the README's
    /// least-privilege section says: auth enabled, a role `ovl` with readwrite on `/ovl/`
    /// only, a user `ovl-agent` holding it. Agents connect with a CA, a client certificate
    /// and the user's password (files under `<lab dir>/pki`).
    Etcds,
}

/// The etcd user the lab's agents log in as ([`KvKind::Etcds`]).
pub const KV_USER: &str = "ovl-agent";

/// Datapath of the lab's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatapathSel {
    /// Every host on the kernel path.
    Kernel,
    /// Every host on the eBPF path.
    Ebpf,
    /// The last host on the kernel path, the others on eBPF.
    Mixed,
}

/// How the lab starts its agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Launch {
    /// `nsenter --net=/run/netns/HOST overlay-agent ...`: the network namespace only; the
    /// agent shares the caller's mount namespace.
    #[default]
    Nsenter,
    /// `ip netns exec HOST overlay-agent ...`, as the README starts it: the agent also gets a
    /// private mount namespace of its own, which dies with it.
    IpNetnsExec,
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Lab name: prefix of its namespaces.
    pub name: String,
    /// Number of hosts.
    pub hosts: usize,
    /// KV backend.
    pub kv: KvKind,
    /// Datapath.
    pub datapath: DatapathSel,
    /// Directory with `overlay-agent` and `overlayctl`.
    pub bin_dir: PathBuf,
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    /// Start agents with `--docker-plugin`... left to callers via `agent_args`.
    pub start_agents: bool,
    /// How agents are started.
    pub launch: Launch,
    /// Members of the etcd cluster (with [`KvKind::Etcd`]): 1 runs one etcd on
    /// `198.18.0.1`, more run a cluster with member N on `198.18.0.(1+N)`.
    pub etcd_members: usize,
    /// Size of a tmpfs of its own for each host's state dir (`mount -o size=`, e.g. `4m`);
    /// `None`: a directory on the lab's filesystem.
    pub state_tmpfs: Option<String>,
}

impl LabConfig {
    /// A lab named `name` with `hosts` hosts, embedded KV, kernel datapath.
    pub fn new(name: &str, hosts: usize) -> Self {
        LabConfig {
            name: name.into(),
            hosts,
            kv: KvKind::Embedded,
            datapath: DatapathSel::Kernel,
            bin_dir: sh::bin_dir(),
            // Short lease and resync for quick tests; DNS forwarding only to the lab's outside
            // namespace, never to the machine's resolvers.
            agent_args: [
                "--lease-ttl",
                "4",
                "--resync-interval",
                "2",
                "--dns-upstream",
                OUTSIDE_ADDR,
            ]
            .map(String::from)
            .to_vec(),
            start_agents: true,
            launch: Launch::Nsenter,
            etcd_members: 1,
            state_tmpfs: None,
        }
    }
}

/// One member of the lab's etcd cluster. Its slot (index in [`LabState::members`]) fixes its
/// address; a replacement takes the slot with a new name and a fresh data dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdMember {
    /// Member name (`m1`, a replacement `m1r1`...).
    pub name: String,
    /// Address in the underlay namespace (client port 2379, peer port 2380).
    pub addr: String,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// `--initial-cluster` it starts with.
    pub initial_cluster: String,
    /// `--initial-cluster-state`: `new` for the founders, `existing` for a replacement.
    pub initial_state: String,
    /// PID while running.
    pub pid: Option<u32>,
}

impl EtcdMember {
    /// `host:port` of its client listener.
    pub fn endpoint(&self) -> String {
        format!("{}:2379", self.addr)
    }

    /// Its peer URL.
    pub fn peer_url(&self) -> String {
        format!("http://{}:2380", self.addr)
    }
}

/// One lab host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostState {
    /// Host id (`h1`...).
    pub id: String,
    /// Its namespace.
    pub ns: String,
    /// Underlay address.
    pub addr: String,
    /// Datapath mode.
    pub datapath: String,
    /// Agent run dir.
    pub run_dir: PathBuf,
    /// Agent state dir.
    pub state_dir: PathBuf,
    /// Agent log.
    pub log: PathBuf,
    /// Agent PID while running.
    pub pid: Option<u32>,
}

/// Everything needed to find and remove a lab later (saved as `lab.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// Lab directory.
    pub dir: PathBuf,
    /// KV URL the agents use.
    pub kv_url: String,
    /// KV kind.
    pub kv: KvKind,
    /// etcd PID while running (the single-member etcd).
    pub etcd_pid: Option<u32>,
    /// The members of an etcd cluster (empty with a single etcd).
    #[serde(default)]
    pub members: Vec<EtcdMember>,
    /// Hosts.
    pub hosts: Vec<HostState>,
    /// Binaries.
    pub bin_dir: PathBuf,
    /// Extra agent arguments.
    pub agent_args: Vec<String>,
    /// How agents are started.
    #[serde(default)]
    pub launch: Launch,
}

/// A running lab. Dropping it does NOT tear it down (the CLI keeps labs across commands);
/// tests wrap it in [`LabGuard`].
pub struct Lab {
    /// Saved state.
    pub state: LabState,
    children: Vec<(u32, Child)>,
}

/// Tears the lab down when dropped (for tests, also on panic).
pub struct LabGuard(pub Option<Lab>);

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.0.as_ref().expect("lab")
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.0.as_mut().expect("lab")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            let name = lab.state.name.clone();
            for e in lab.down() {
                eprintln!("lab {name} teardown: {e:#}");
            }
        }
    }
}

fn ns_name(lab: &str, what: &str) -> String {
    format!("{lab}-{what}")
}

impl Lab {
    /// The lab directory for a name.
    pub fn dir_of(name: &str) -> PathBuf {
        Path::new(BASE_DIR).join(name)
    }

    /// Builds a lab. On failure, removes whatever it had made.
    pub fn up(cfg: LabConfig) -> Result<Lab> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the lab needs root (network namespaces, bridges, mounts)");
        }
        let dir = Self::dir_of(&cfg.name);
        if dir.join("lab.json").exists() {
            bail!(
                "lab {} is already up (run `cargo xtask lab down --name {}` first)",
                cfg.name,
                cfg.name
            );
        }
        for b in ["overlay-agent", "overlayctl"] {
            if !cfg.bin_dir.join(b).exists() {
                bail!(
                    "{} not found in {} (build first: cargo build -p overlay-agent)",
                    b,
                    cfg.bin_dir.display()
                );
            }
        }
        // Remove leftovers of a crashed run of the same name before starting.
        for e in teardown_by_name(&cfg.name) {
            eprintln!("cleaning leftovers of lab {}: {e:#}", cfg.name);
        }
        fs::create_dir_all(&dir)?;
        let members: Vec<EtcdMember> = if cfg.kv == KvKind::Etcd && cfg.etcd_members > 1 {
            let peers: Vec<(String, String)> = (1..=cfg.etcd_members)
                .map(|n| (format!("m{n}"), format!("198.18.0.{}", 1 + n)))
                .collect();
            let initial = peers
                .iter()
                .map(|(n, a)| format!("{n}=http://{a}:2380"))
                .collect::<Vec<_>>()
                .join(",");
            peers
                .into_iter()
                .map(|(name, addr)| EtcdMember {
                    data_dir: dir.join(format!("etcd-{name}")),
                    log: dir.join(format!("etcd-{name}.log")),
                    name,
                    addr,
                    initial_cluster: initial.clone(),
                    initial_state: "new".into(),
                    pid: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let kv_url = match cfg.kv {
            KvKind::Embedded => format!("embedded://{}", dir.join("kv.sqlite").display()),
            KvKind::Etcd if members.is_empty() => format!("etcd://{UNDERLAY_GW}:2379"),
            KvKind::Etcd => format!(
                "etcd://{}",
                members
                    .iter()
                    .map(EtcdMember::endpoint)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            KvKind::Etcds => format!("etcds://{UNDERLAY_GW}:2379"),
        };
        let hosts = (1..=cfg.hosts)
            .map(|i| {
                let id = format!("h{i}");
                let datapath = match cfg.datapath {
                    DatapathSel::Kernel => "kernel",
                    DatapathSel::Ebpf => "ebpf",
                    DatapathSel::Mixed if i == cfg.hosts => "kernel",
                    DatapathSel::Mixed => "ebpf",
                };
                HostState {
                    ns: ns_name(&cfg.name, &id),
                    addr: format!("198.18.0.{}", 10 + i),
                    datapath: datapath.into(),
                    run_dir: dir.join(&id).join("run"),
                    state_dir: dir.join(&id).join("state"),
                    log: dir.join(&id).join("agent.log"),
                    pid: None,
                    id,
                }
            })
            .collect();
        let mut lab = Lab {
            state: LabState {
                name: cfg.name.clone(),
                dir,
                kv_url,
                kv: cfg.kv,
                etcd_pid: None,
                members,
                hosts,
                bin_dir: cfg.bin_dir.clone(),
                agent_args: cfg.agent_args.clone(),
                launch: cfg.launch,
            },
            children: Vec::new(),
        };
        match lab.build(cfg.start_agents, cfg.state_tmpfs.as_deref()) {
            Ok(()) => Ok(lab),
            Err(e) => {
                for te in lab.down() {
                    eprintln!("cleanup after failed lab up: {te:#}");
                }
                Err(e)
            }
        }
    }

    fn build(&mut self, start_agents: bool, state_tmpfs: Option<&str>) -> Result<()> {
        let name = self.state.name.clone();
        let ul = ns_name(&name, "ul");
        let out = ns_name(&name, "out");
        self.save()?;
        ip(&["netns", "add", &ul])?;
        ip(&["-n", &ul, "link", "set", "lo", "up"])?;
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{UNDERLAY_GW}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        sysctl(&ul, "net.ipv4.ip_forward", "1")?;
        for m in &self.state.members {
            ip(&[
                "-n",
                &ul,
                "addr",
                "add",
                &format!("{}/32", m.addr),
                "dev",
                "br0",
            ])?;
        }
        // The outside world.
        ip(&["netns", "add", &out])?;
        ip(&["-n", &out, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &ul, "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", &out,
        ])?;
        ip(&["-n", &ul, "addr", "add", "198.19.0.1/24", "dev", "out0"])?;
        ip(&["-n", &ul, "link", "set", "out0", "up"])?;
        ip(&[
            "-n",
            &out,
            "addr",
            "add",
            &format!("{OUTSIDE_ADDR}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &out, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &out,
            "route",
            "add",
            "198.18.0.0/16",
            "via",
            "198.19.0.1",
        ])?;
        for h in self.state.hosts.clone() {
            ip(&["netns", "add", &h.ns])?;
            ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
            let peer = format!("ul-{}", h.id);
            ip(&[
                "-n", &ul, "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns",
                &h.ns,
            ])?;
            ip(&["-n", &ul, "link", "set", &peer, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &h.ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &h.ns, "route", "add", "default", "via", UNDERLAY_GW])?;
            fs::create_dir_all(&h.run_dir)?;
            fs::create_dir_all(&h.state_dir)?;
            if let Some(size) = state_tmpfs {
                nix::mount::mount(
                    Some("ovl-lab-state"),
                    &h.state_dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    Some(format!("size={size},mode=0700").as_str()),
                )
                .with_context(|| format!("mounting a tmpfs on {}", h.state_dir.display()))?;
            }
        }
        match self.state.kv {
            KvKind::Embedded => {}
            KvKind::Etcd => self.start_etcd()?,
            KvKind::Etcds => {
                self.make_pki()?;
                self.start_etcd()?;
                self.secure_etcd()?;
            }
        }
        if start_agents {
            for i in 0..self.state.hosts.len() {
                self.start_agent(i)?;
            }
            for i in 0..self.state.hosts.len() {
                self.wait_agent(i)?;
            }
        }
        self.save()
    }

    /// Saves `lab.json`.
    pub fn save(&self) -> Result<()> {
        fs::create_dir_all(&self.state.dir)?;
        fs::write(
            self.state.dir.join("lab.json"),
            serde_json::to_vec_pretty(&self.state)?,
        )?;
        Ok(())
    }

    /// Loads a lab that is up.
    pub fn load(name: &str) -> Result<Lab> {
        let path = Self::dir_of(name).join("lab.json");
        let text = fs::read(&path)
            .with_context(|| format!("lab {name} is not up ({} missing)", path.display()))?;
        Ok(Lab {
            state: serde_json::from_slice(&text)?,
            children: Vec::new(),
        })
    }

    /// Index of a host by id (`h1`) or number (`1`).
    pub fn host_index(&self, host: &str) -> Result<usize> {
        let id = if host.starts_with('h') {
            host.to_string()
        } else {
            format!("h{host}")
        };
        self.state
            .hosts
            .iter()
            .position(|h| h.id == id)
            .with_context(|| format!("no host {host} in lab {}", self.state.name))
    }

    /// Host state by index.
    pub fn host(&self, i: usize) -> &HostState {
        &self.state.hosts[i]
    }

    /// Starts (or restarts) etcd in the underlay namespace, on persistent data dirs: the
    /// single etcd, or every member of the cluster that is not running.
    pub fn start_etcd(&mut self) -> Result<()> {
        if !self.state.members.is_empty() {
            for slot in 0..self.state.members.len() {
                if self.state.members[slot].pid.is_none() {
                    self.start_member(slot)?;
                }
            }
            return self.wait_etcd_healthy(Duration::from_secs(30));
        }
        let ul = ns_name(&self.state.name, "ul");
        let data = self.state.dir.join("etcd");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.dir.join("etcd.log"))?;
        let tls = self.state.kv == KvKind::Etcds;
        let client = format!(
            "{}://{UNDERLAY_GW}:2379",
            if tls { "https" } else { "http" }
        );
        let mut etcd = in_ns(&ul, "etcd");
        if tls {
            let pki = self.pki_dir();
            etcd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(pki.join("ca.pem"))
                .arg("--cert-file")
                .arg(pki.join("etcd.pem"))
                .arg("--key-file")
                .arg(pki.join("etcd-key.pem"));
        }
        let child = etcd
            .args(["--name", "lab", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "lab=http://127.0.0.1:2380"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (is etcd-server installed?)")?;
        let pid = child.id();
        self.children.push((pid, child));
        self.state.etcd_pid = Some(pid);
        self.save()?;
        wait_for("etcd to answer", Duration::from_secs(20), || {
            let out = self
                .etcdctl()
                .args(["--dial-timeout=1s", "endpoint", "health"])
                .output()
                .ok()?;
            out.status.success().then_some(())
        })
    }

    /// `etcdctl` in the underlay namespace, talking to the lab's etcd (over TLS as root, by
    /// the `root` client certificate, for [`KvKind::Etcds`]).
    pub fn etcdctl(&self) -> Command {
        let ul = ns_name(&self.state.name, "ul");
        let mut c = in_ns(&ul, "etcdctl");
        c.env("ETCDCTL_API", "3");
        if self.state.kv == KvKind::Etcds {
            let pki = self.pki_dir();
            c.arg(format!("--endpoints=https://{UNDERLAY_GW}:2379"))
                .arg(format!("--cacert={}", pki.join("ca.pem").display()))
                .arg(format!("--cert={}", pki.join("root.pem").display()))
                .arg(format!("--key={}", pki.join("root-key.pem").display()));
        } else {
            c.arg(format!("--endpoints=http://{UNDERLAY_GW}:2379"));
        }
        c
    }

    /// Where the TLS files of [`KvKind::Etcds`] are.
    pub fn pki_dir(&self) -> PathBuf {
        self.state.dir.join("pki")
    }

    /// The CA, etcd's certificate, the `root` client certificate (etcd maps its common name to
    /// the root user), the agents' client certificate and the agents' password file.
    fn make_pki(&self) -> Result<()> {
        let dir = self.pki_dir();
        let pki = crate::pki::Pki::create(&dir, &format!("{}-ca", self.state.name))?;
        pki.issue("etcd", "etcd", &[UNDERLAY_GW, "127.0.0.1", "localhost"])?;
        pki.issue("root", "root", &[])?;
        // Not an etcd user name: the agents prove who they are by password.
        pki.issue("agent", "ovl-lab-host", &[])?;
        let password: String = format!("pw-{}-{}", self.state.name, std::process::id());
        write_private(&dir.join("agent-password"), &format!("{password}\n"))
    }

    /// The least-privilege RBAC of the README, by etcdctl: root user, role `ovl` with
    /// readwrite on the prefix `/ovl/`, user `ovl-agent` with that role; then auth on.
    fn secure_etcd(&self) -> Result<()> {
        let password = fs::read_to_string(self.pki_dir().join("agent-password"))?;
        let password = password.trim_end();
        let root_pw = format!("root-{password}");
        let steps: [&[&str]; 7] = [
            &["user", "add", "root", "--new-user-password", &root_pw],
            &["user", "grant-role", "root", "root"],
            &["role", "add", "ovl"],
            &[
                "role",
                "grant-permission",
                "ovl",
                "--prefix=true",
                "readwrite",
                "/ovl/",
            ],
            &["user", "add", KV_USER, "--new-user-password", password],
            &["user", "grant-role", KV_USER, "ovl"],
            &["auth", "enable"],
        ];
        for step in steps {
            let out = self.etcdctl().args(step).output()?;
            if !out.status.success() {
                bail!(
                    "etcdctl {}: {}",
                    step.first().unwrap_or(&""),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// The `--kv*` arguments of the lab's agents.
    pub fn kv_args(&self) -> Vec<String> {
        let mut args = vec!["--kv".to_string(), self.state.kv_url.clone()];
        if self.state.kv == KvKind::Etcds {
            let pki = self.pki_dir();
            let f = |n: &str| pki.join(n).display().to_string();
            args.extend([
                "--kv-ca".into(),
                f("ca.pem"),
                "--kv-cert".into(),
                f("agent.pem"),
                "--kv-key".into(),
                f("agent-key.pem"),
                "--kv-user".into(),
                KV_USER.into(),
                "--kv-password-file".into(),
                f("agent-password"),
            ]);
        }
        args
    }

    /// Stops etcd, every member of a cluster (SIGTERM, then SIGKILL).
    pub fn stop_etcd(&mut self) -> Result<()> {
        for slot in 0..self.state.members.len() {
            if let Some(pid) = self.state.members[slot].pid.take() {
                self.stop_pid(pid)?;
                self.save()?;
            }
        }
        if let Some(pid) = self.state.etcd_pid.take() {
            self.stop_pid(pid)?;
            self.save()?;
        }
        Ok(())
    }

    /// Starts the etcd member in `slot` (on its data dir; a fresh one makes it join with its
    /// `initial_state`). Does not wait for it.
    pub fn start_member(&mut self, slot: usize) -> Result<()> {
        let ul = ns_name(&self.state.name, "ul");
        let m = self.state.members[slot].clone();
        if m.pid.is_some() {
            bail!("etcd member {} is already running", m.name);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let client = format!("http://{}", m.endpoint());
        let child = in_ns(&ul, "etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &m.initial_cluster])
            .args(["--initial-cluster-state", &m.initial_state])
            .args([
                "--initial-cluster-token",
                &format!("ovl-{}", self.state.name),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (is etcd-server installed?)")?;
        let pid = child.id();
        self.children.push((pid, child));
        self.state.members[slot].pid = Some(pid);
        self.save()
    }

    /// Sends `sig` to the etcd member in `slot`; a `SIGKILL` also reaps it.
    pub fn signal_member(&mut self, slot: usize, sig: Signal) -> Result<()> {
        let m = &self.state.members[slot];
        let Some(pid) = m.pid else {
            bail!("etcd member {} is not running", m.name)
        };
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("kill {pid}"))?;
        if sig == Signal::SIGKILL {
            self.state.members[slot].pid = None;
            self.reap(pid, Duration::from_secs(10))?;
            self.save()?;
        }
        Ok(())
    }

    /// The client endpoints of the running members.
    pub fn member_endpoints(&self) -> Vec<String> {
        member_endpoints(&self.state)
    }

    /// Waits until every running member reports healthy.
    pub fn wait_etcd_healthy(&self, timeout: Duration) -> Result<()> {
        let eps = self.member_endpoints();
        wait_for("the etcd cluster to be healthy", timeout, || {
            etcdctl(&self.state, &eps, &["endpoint", "health"])
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        })
        .with_context(|| {
            let tails: Vec<String> = self
                .state
                .members
                .iter()
                .map(|m| format!("{}:\n{}", m.log.display(), tail(&m.log, 8)))
                .collect();
            tails.join("\n")
        })
    }

    /// The slot of the current leader (see [`etcd_leader`]).
    pub fn etcd_leader(&self) -> Result<usize> {
        etcd_leader(&self.state)
    }

    /// The cluster's member list (see [`etcd_members`]).
    pub fn etcd_members(&self) -> Result<Vec<MemberInfo>> {
        etcd_members(&self.state)
    }

    /// Removes the (stopped) member in `slot` from the cluster and adds a new member with a
    /// fresh data dir at its address, then starts it (see [`prepare_replacement`]).
    pub fn replace_member(&mut self, slot: usize) -> Result<String> {
        let r = prepare_replacement(&self.state, slot)?;
        self.start_replacement(slot, r)
    }

    /// Starts the member a [`prepare_replacement`] made room for in `slot`, on a fresh data
    /// dir.
    pub fn start_replacement(&mut self, slot: usize, r: Replacement) -> Result<String> {
        let old = self.state.members[slot].clone();
        if old.pid.is_some() {
            bail!("etcd member {} is running", old.name);
        }
        if old.data_dir.exists() {
            fs::remove_dir_all(&old.data_dir)
                .with_context(|| format!("removing {}", old.data_dir.display()))?;
        }
        let dir = self.state.dir.clone();
        let m = &mut self.state.members[slot];
        m.name = r.name.clone();
        m.data_dir = dir.join(format!("etcd-{}", r.name));
        m.log = dir.join(format!("etcd-{}.log", r.name));
        m.initial_cluster = r.initial_cluster;
        m.initial_state = "existing".into();
        self.save()?;
        self.start_member(slot)?;
        Ok(r.name)
    }

    /// Starts the agent of host `i`.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let h = self.state.hosts[i].clone();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)?;
        let agent = self.state.bin_dir.join("overlay-agent");
        let agent = agent.to_str().expect("utf-8 path");
        let mut cmd = match self.state.launch {
            Launch::Nsenter => in_ns(&h.ns, agent),
            Launch::IpNetnsExec => {
                // `ip netns exec` execs the agent in place: the child's PID is the agent's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &h.ns, agent]);
                c
            }
        };
        let child = cmd
            .args(["--host-id", &h.id, "--advertise-addr", &h.addr])
            .args(self.kv_args())
            .args(["--datapath", &h.datapath])
            .arg("--run-dir")
            .arg(&h.run_dir)
            .arg("--state-dir")
            .arg(&h.state_dir)
            .args(&self.state.agent_args)
            .env(
                "OVERLAY_LOG",
                std::env::var("OVERLAY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting overlay-agent")?;
        let pid = child.id();
        self.children.push((pid, child));
        self.state.hosts[i].pid = Some(pid);
        self.save()
    }

    /// Waits until host `i`'s agent answers on its socket.
    pub fn wait_agent(&self, i: usize) -> Result<()> {
        let h = &self.state.hosts[i];
        wait_for(
            &format!("agent {} to answer", h.id),
            Duration::from_secs(20),
            || {
                self.ctl(i, &["status"])
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|_| ())
            },
        )
        .with_context(|| format!("agent log {}:\n{}", h.log.display(), tail(&h.log, 20)))
    }

    /// Reaps host `i`'s agent after someone killed it (by its PID, without holding the lab).
    pub fn reap_agent(&mut self, i: usize) -> Result<()> {
        let Some(pid) = self.state.hosts[i].pid.take() else {
            bail!("agent of host {} is not running", i + 1)
        };
        self.reap(pid, Duration::from_secs(10))?;
        self.save()
    }

    /// Sends `sig` to host `i`'s agent and reaps it.
    pub fn signal_agent(&mut self, i: usize, sig: Signal) -> Result<()> {
        let Some(pid) = self.state.hosts[i].pid.take() else {
            bail!("agent of host {} is not running", i + 1)
        };
        kill(Pid::from_raw(pid as i32), sig).context("kill")?;
        self.reap(pid, Duration::from_secs(10))?;
        self.save()
    }

    fn reap(&mut self, pid: u32, timeout: Duration) -> Result<()> {
        if let Some(pos) = self.children.iter().position(|(p, _)| *p == pid) {
            let (_, mut child) = self.children.remove(pos);
            wait_for(&format!("process {pid} to exit"), timeout, || {
                child.try_wait().ok().flatten()
            })?;
        } else {
            wait_for(&format!("process {pid} to exit"), timeout, || {
                (!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid)).then_some(())
            })?;
        }
        Ok(())
    }

    fn stop_pid(&mut self, pid: u32) -> Result<()> {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        // A process a test paused (SIGSTOP) handles the SIGTERM only once continued.
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
        if self.reap(pid, Duration::from_secs(5)).is_err() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            self.reap(pid, Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// `overlayctl ARGS` against host `i`'s agent, from inside host `i`.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<Output> {
        Ok(ctl_cmd(&self.state, i, args).output()?)
    }

    /// Agents that exited since they were started (not by [`Lab::signal_agent`]): host index
    /// and exit status. Reaps them.
    pub fn exited_agents(&mut self) -> Vec<(usize, std::process::ExitStatus)> {
        let mut out = Vec::new();
        for i in 0..self.state.hosts.len() {
            let Some(pid) = self.state.hosts[i].pid else {
                continue;
            };
            let Some(pos) = self.children.iter().position(|(p, _)| *p == pid) else {
                continue;
            };
            if let Ok(Some(status)) = self.children[pos].1.try_wait() {
                self.children.remove(pos);
                self.state.hosts[i].pid = None;
                out.push((i, status));
            }
        }
        if !out.is_empty()
            && let Err(e) = self.save()
        {
            eprintln!("saving lab state: {e:#}");
        }
        out
    }

    /// Path of network `net`'s sandbox namespace on host `i` (kernel datapath).
    pub fn sandbox(&self, i: usize, net: &str) -> PathBuf {
        sandbox_path(&self.state.hosts[i], net)
    }

    /// `overlayctl --json ARGS`, parsed; fails with the command's stderr.
    pub fn ctl_json<T: serde::de::DeserializeOwned>(&self, i: usize, args: &[&str]) -> Result<T> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl(i, &a)?;
        if !out.status.success() {
            bail!(
                "overlayctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing overlayctl {} output", args.join(" ")))
    }

    /// A command run inside host `i` (network namespace only), with `overlayctl` on PATH
    /// and pointed at that host's agent.
    pub fn exec(&self, i: usize, program: &str) -> Command {
        let h = &self.state.hosts[i];
        let mut c = in_ns(&h.ns, program);
        let path = format!(
            "{}:{}",
            self.state.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("OVERLAY_SOCKET", h.run_dir.join("overlay.sock"))
            .env("PATH", path);
        c
    }

    /// Creates a container namespace `<lab>-c-<name>` with `lo` up; returns its name.
    pub fn add_container(&self, name: &str) -> Result<String> {
        let ns = ns_name(&self.state.name, &format!("c-{name}"));
        add_netns(&ns)?;
        Ok(ns)
    }

    /// Tears everything down and reports every failure (an empty list: all clean).
    pub fn down(mut self) -> Vec<anyhow::Error> {
        let mut errs = Vec::new();
        let mut pids: Vec<u32> = self.state.hosts.iter().filter_map(|h| h.pid).collect();
        pids.extend(self.state.etcd_pid);
        pids.extend(self.state.members.iter().filter_map(|m| m.pid));
        for pid in pids {
            if let Err(e) = self.stop_pid(pid) {
                errs.push(e.context(format!("stopping process {pid}")));
            }
        }
        for h in &mut self.state.hosts {
            h.pid = None;
        }
        self.state.etcd_pid = None;
        for m in &mut self.state.members {
            m.pid = None;
        }
        errs.extend(teardown_by_name(&self.state.name));
        errs
    }
}

/// Creates a named network namespace with `lo` up (a container of a test).
pub fn add_netns(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

/// Deletes a named network namespace and its `/etc/netns` files.
pub fn del_netns(ns: &str) -> Result<()> {
    ip(&["netns", "del", ns])?;
    let etc = PathBuf::from(format!("/etc/netns/{ns}"));
    if etc.exists() {
        fs::remove_dir_all(&etc).with_context(|| format!("removing {}", etc.display()))?;
    }
    Ok(())
}

/// The client endpoints of a lab's running etcd members.
pub fn member_endpoints(state: &LabState) -> Vec<String> {
    state
        .members
        .iter()
        .filter(|m| m.pid.is_some())
        .map(EtcdMember::endpoint)
        .collect()
}

/// The slot of the current etcd leader, as the running members report it (each asked on its
/// own: a hung or dead member must not hide the answers of the others). Needs only the lab's
/// state, so callers need not hold the lab while etcd takes its time.
pub fn etcd_leader(state: &LabState) -> Result<usize> {
    let mut best: Option<(u64, u64)> = None; // (raft term, leader id)
    let mut errs = Vec::new();
    for ep in member_endpoints(state) {
        let out = match etcdctl(
            state,
            std::slice::from_ref(&ep),
            &["endpoint", "status", "-w", "json"],
        ) {
            Ok(o) => o,
            Err(e) => {
                errs.push(format!("{ep}: {e:#}"));
                continue;
            }
        };
        let list: Vec<EndpointStatus> =
            serde_json::from_slice(&out.stdout).context("parsing etcdctl endpoint status")?;
        for s in list {
            if s.status.leader != 0 && best.is_none_or(|(t, _)| s.status.header.raft_term > t) {
                best = Some((s.status.header.raft_term, s.status.leader));
            }
        }
    }
    let (_, leader) =
        best.with_context(|| format!("no member names a leader ({})", errs.join("; ")))?;
    let member = etcd_members(state)?
        .into_iter()
        .find(|m| m.id == leader)
        .with_context(|| format!("leader {leader:x} is not in the member list"))?;
    state
        .members
        .iter()
        .position(|m| member.peer_urls.contains(&m.peer_url()))
        .with_context(|| format!("leader {} is not a lab member", member.name))
}

/// The cluster's member list (id, name, peer URLs) as the first running member that answers
/// reports it.
pub fn etcd_members(state: &LabState) -> Result<Vec<MemberInfo>> {
    let mut errs = Vec::new();
    for ep in member_endpoints(state) {
        match etcdctl(
            state,
            std::slice::from_ref(&ep),
            &["member", "list", "-w", "json"],
        ) {
            Ok(out) => {
                let list: MemberList =
                    serde_json::from_slice(&out.stdout).context("parsing etcdctl member list")?;
                return Ok(list.members);
            }
            Err(e) => errs.push(format!("{ep}: {e:#}")),
        }
    }
    bail!("no member answers a member list ({})", errs.join("; "))
}

/// A member the cluster was told to expect in a slot.
#[derive(Debug, Clone)]
pub struct Replacement {
    /// Its name.
    pub name: String,
    /// The `--initial-cluster` it must start with.
    pub initial_cluster: String,
}

/// Makes room in the cluster for a new member in `slot`, whose member is stopped: removes the
/// old one (`etcdctl member remove`) and adds the new one at the same address (`member add`).
/// Each step is skipped when already done, so a caller may retry after a failure (a cluster
/// without quorum refuses both). Needs only the lab's state.
pub fn prepare_replacement(state: &LabState, slot: usize) -> Result<Replacement> {
    let old = state.members[slot].clone();
    if old.pid.is_some() {
        bail!("etcd member {} is still running", old.name);
    }
    let peer = old.peer_url();
    let generation = old
        .name
        .split_once('r')
        .and_then(|(_, g)| g.parse::<u32>().ok())
        .unwrap_or(0);
    let base = old.name.split('r').next().unwrap_or("m").to_string();
    let name = format!("{base}r{}", generation + 1);
    let eps = member_endpoints(state);
    let members = etcd_members(state)?;
    if let Some(m) = members
        .iter()
        .find(|m| m.name == old.name && m.peer_urls.contains(&peer))
    {
        sh::run(&mut etcdctl_cmd(
            state,
            &eps,
            &["member", "remove", &format!("{:x}", m.id)],
        ))?;
    }
    let members = etcd_members(state)?;
    if !members.iter().any(|m| m.peer_urls.contains(&peer)) {
        sh::run(&mut etcdctl_cmd(
            state,
            &eps,
            &["member", "add", &name, &format!("--peer-urls={peer}")],
        ))?;
    }
    let initial_cluster = etcd_members(state)?
        .iter()
        .map(|m| {
            let n = if m.peer_urls.contains(&peer) {
                name.clone()
            } else {
                m.name.clone()
            };
            format!("{n}={}", m.peer_urls.first().cloned().unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join(",");
    Ok(Replacement {
        name,
        initial_cluster,
    })
}

/// `overlayctl ARGS` against host `i`'s agent of a lab, from inside host `i` (for callers
/// that share a lab between threads: it needs only the lab's state).
pub fn ctl_cmd(state: &LabState, i: usize, args: &[&str]) -> Command {
    let h = &state.hosts[i];
    let ctl = state.bin_dir.join("overlayctl");
    let mut c = in_ns(&h.ns, ctl.to_str().expect("utf-8"));
    c.args(args)
        .env("OVERLAY_SOCKET", h.run_dir.join("overlay.sock"));
    c
}

/// Path of network `net`'s sandbox namespace on a host (kernel datapath).
pub fn sandbox_path(h: &HostState, net: &str) -> PathBuf {
    h.run_dir.join("dp").join("netns").join(net)
}

/// `etcdctl` (v3 API) against `endpoints` of a lab, run in its underlay namespace.
pub fn etcdctl_cmd(state: &LabState, endpoints: &[String], args: &[&str]) -> Command {
    let ul = ns_name(&state.name, "ul");
    let mut c = in_ns(&ul, "etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--dial-timeout=1s", "--command-timeout=3s"])
        .args(args);
    c
}

/// [`etcdctl_cmd`], run to completion (fails on a non-zero exit).
pub fn etcdctl(state: &LabState, endpoints: &[String], args: &[&str]) -> Result<Output> {
    sh::run(&mut etcdctl_cmd(state, endpoints, args))
}

/// One line of `etcdctl endpoint status -w json`.
#[derive(Debug, Deserialize)]
struct EndpointStatus {
    #[serde(rename = "Status")]
    status: StatusBody,
}

#[derive(Debug, Deserialize)]
struct StatusBody {
    header: StatusHeader,
    #[serde(default)]
    leader: u64,
}

#[derive(Debug, Deserialize)]
struct StatusHeader {
    #[serde(default)]
    raft_term: u64,
}

#[derive(Debug, Deserialize)]
struct MemberList {
    members: Vec<MemberInfo>,
}

/// A member as `etcdctl member list -w json` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct MemberInfo {
    /// Member id.
    #[serde(rename = "ID")]
    pub id: u64,
    /// Name (empty while an added member has not started).
    #[serde(default)]
    pub name: String,
    /// Peer URLs.
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
}

/// Removes a lab's processes (from lab.json), mounts, namespaces and files, by name alone.
pub fn teardown_by_name(name: &str) -> Vec<anyhow::Error> {
    let mut errs = Vec::new();
    let dir = Lab::dir_of(name);
    if let Ok(text) = fs::read(dir.join("lab.json"))
        && let Ok(state) = serde_json::from_slice::<LabState>(&text)
    {
        let pids = state
            .hosts
            .iter()
            .filter_map(|h| h.pid)
            .chain(state.etcd_pid)
            .chain(state.members.iter().filter_map(|m| m.pid));
        for pid in pids {
            if Path::new(&format!("/proc/{pid}")).exists() && cmdline_is_ours(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
    // Mounts under the lab dir (per-network sandbox namespaces of the agents).
    errs.extend(unmount_under(&dir));
    // Namespaces of the lab (hosts, underlay, outside, containers made by tests).
    let ns_prefix = format!("{name}-");
    if let Ok(rd) = fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&ns_prefix) {
                if let Err(err) = ip(&["netns", "del", &n]) {
                    errs.push(err);
                }
                let _ = fs::remove_dir_all(format!("/etc/netns/{n}"));
            }
        }
    }
    if dir.exists()
        && let Err(e) = fs::remove_dir_all(&dir)
    {
        errs.push(anyhow::anyhow!("removing {}: {e}", dir.display()));
    }
    errs
}

/// Unmounts everything mounted under `dir` in this mount namespace, deepest first (agents'
/// sandbox namespaces, a BPF filesystem an agent mounted in its run dir); one error per
/// mount that stays.
pub fn unmount_under(dir: &Path) -> Vec<anyhow::Error> {
    let prefix = format!("{}/", dir.display());
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts.dedup();
    mounts
        .into_iter()
        .filter_map(|m| {
            nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH)
                .err()
                .map(|e| anyhow::anyhow!("umount {m}: {e}"))
        })
        .collect()
}

fn cmdline_is_ours(pid: u32) -> bool {
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let s = String::from_utf8_lossy(&cmd);
    s.contains("overlay-agent") || s.contains("etcd")
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn sysctl(ns: &str, key: &str, val: &str) -> Result<()> {
    sh::run(in_ns(ns, "sysctl").args(["-q", "-w", &format!("{key}={val}")])).map(|_| ())
}

/// The last `n` lines of a file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
