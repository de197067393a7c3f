//! Two lab hosts with a real dockerd and an agent (`--docker-plugin`) each, for the Docker
//! tests of the agent's DNS (`docker_dns.rs`). The same harness as `docker.rs`'s, plus what
//! those tests need: where Docker's containers get their DNS server from (daemon.json `"dns"`
//! or the host's resolv.conf), an upstream resolver in the lab's outside namespace, and an
//! image with glibc's `getent` next to busybox.

#![allow(dead_code)]

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use ovl_docker::testing::{Dockerd, DockerdOpts, Engine, require_root};
use ovl_tests::*;
use serde_json::Value;

/// busybox plus glibc's `getent`.
pub const IMAGE: &str = "t9/busybox:latest";
/// The agent's default `--dns-addr`.
pub const DNS_ADDR: &str = "169.254.53.53";
/// A name only the lab's upstream resolver knows, and its address.
pub const OUTSIDE_NAME: &str = "www.outside.test";
/// The address [`OUTSIDE_NAME`] resolves to.
pub const OUTSIDE_NAME_IP: &str = "198.19.0.50";

/// Where Docker's containers get their DNS server from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsSetup {
    /// daemon.json `"dns": ["169.254.53.53"]` (the README's set-up).
    Daemon,
    /// The host's resolv.conf lists 169.254.53.53 (then the outside resolver), daemon.json
    /// has no `"dns"`.
    HostResolvConf,
}

/// One lab host.
pub struct Host {
    pub d: Option<Dockerd>,
    pub agent: Option<Child>,
    pub run: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
}

/// Two lab hosts with a dockerd and an agent each, and dnsmasq as the outside resolver;
/// everything goes away on drop.
pub struct DockerLab {
    pub lab: Option<LabGuard>,
    pub hosts: Vec<Host>,
    pub work: PathBuf,
    dnsmasq: Option<Child>,
}

impl Drop for DockerLab {
    fn drop(&mut self) {
        // Containers first, while the agents still answer Docker's Leave/DeleteEndpoint.
        for h in &self.hosts {
            if let Some(d) = &h.d
                && let Ok(o) = d.docker(["ps", "-aq"])
            {
                let ids: Vec<String> = stdout(&o).split_whitespace().map(str::to_string).collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm".to_string(), "-f".to_string()];
                    args.extend(ids);
                    match d.docker(&args) {
                        Ok(o) if !o.status.success() => eprintln!("docker rm -f: {}", stderr(&o)),
                        Err(e) => eprintln!("docker rm -f: {e}"),
                        Ok(_) => {}
                    }
                }
            }
        }
        for h in &mut self.hosts {
            stop_agent(h);
            if let Ok(keep) = std::env::var("OVL_KEEP_LOGS") {
                if let Err(e) = fs::create_dir_all(&keep) {
                    eprintln!("keeping logs in {keep}: {e}");
                }
                let name = h
                    .log
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_os_string())
                    .unwrap_or_default();
                if let Err(e) = fs::copy(&h.log, Path::new(&keep).join(name).with_extension("log"))
                {
                    eprintln!("keeping {}: {e}", h.log.display());
                }
            }
        }
        for h in &mut self.hosts {
            if let Some(mut d) = h.d.take()
                && let Err(e) = d.stop()
            {
                eprintln!("stopping dockerd: {e}");
            }
        }
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for e in xtask::lab::unmount_under(&self.work) {
            eprintln!("{e}");
        }
        self.lab.take();
        if let Err(e) = fs::remove_dir_all(&self.work) {
            eprintln!("removing {}: {e}", self.work.display());
        }
    }
}

/// Stops an agent by PID (SIGTERM, then SIGKILL after 10 s).
pub fn stop_agent(h: &mut Host) {
    if let Some(mut c) = h.agent.take() {
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// glibc's `getent` and what it needs, for [`IMAGE`].
fn getent_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("/usr/bin/getent")];
    let ldd = Command::new("ldd").arg("/usr/bin/getent").output().unwrap();
    for line in stdout(&ldd).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push(PathBuf::from(p));
        }
    }
    assert!(files.len() >= 3, "getent's libraries: {}", stdout(&ldd));
    files
}

impl DockerLab {
    /// Brings up lab `name` (two hosts, etcd) with `engine`, DNS for containers as `dns` says,
    /// dnsmasq on the outside address answering [`OUTSIDE_NAME`].
    pub fn up(name: &str, engine: Engine, dns: DnsSetup) -> DockerLab {
        require_root();
        let t0 = Instant::now();
        let mut cfg = LabConfig::new(name, 2);
        cfg.kv = KvKind::Etcd;
        cfg.start_agents = false;
        let lab = lab_with(cfg);
        let work = PathBuf::from(format!("/tmp/{name}-docker"));
        if work.exists() {
            fs::remove_dir_all(&work).unwrap();
        }
        fs::create_dir_all(&work).unwrap();
        let mut me = DockerLab {
            lab: Some(lab),
            hosts: Vec::new(),
            work: work.clone(),
            dnsmasq: None,
        };
        me.start_dnsmasq();
        let getent = getent_files();
        let getent: Vec<&Path> = getent.iter().map(PathBuf::as_path).collect();
        let agent_dns: Ipv4Addr = DNS_ADDR.parse().unwrap();
        for i in 0..2 {
            let ns = me.lab().host(i).ns.clone();
            let bin = me.lab().state.bin_dir.clone();
            let mut opts = DockerdOpts::for_engine(i as u8 + 1, engine, &[&work, &bin]);
            match dns {
                DnsSetup::Daemon => opts.dns = Some(agent_dns),
                DnsSetup::HostResolvConf => {
                    opts.host_resolv_conf =
                        Some(vec![agent_dns, xtask::lab::OUTSIDE_ADDR.parse().unwrap()])
                }
            }
            let d = Dockerd::start(&ns, &work, opts)
                .unwrap_or_else(|e| panic!("dockerd {ns} ({engine}): {e}"));
            if i == 0 {
                let (v, api) = d.server_version().unwrap();
                eprintln!("{name}: Docker Engine {v} (API {api}) from {engine}");
                assert!(engine.runs(&v), "engine {engine} runs Docker {v}");
            }
            d.import_busybox_with(IMAGE, &getent).unwrap();
            let dir = work.join(format!("agent-h{}", i + 1));
            me.hosts.push(Host {
                d: Some(d),
                agent: None,
                run: dir.join("run"),
                state: dir.join("state"),
                log: dir.join("agent.log"),
            });
            fs::create_dir_all(&dir).unwrap();
            me.start_agent(i);
        }
        eprintln!("{name}: lab up in {:?}", t0.elapsed());
        me
    }

    /// dnsmasq in the outside namespace: the upstream resolver of the lab (agents forward
    /// there, never to the machine's resolvers).
    fn start_dnsmasq(&mut self) {
        let out = format!("{}-out", self.lab().state.name);
        let hosts = self.work.join("upstream-hosts");
        fs::write(&hosts, format!("{OUTSIDE_NAME_IP} {OUTSIDE_NAME}\n")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &out,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
            ])
            // Authoritative for everything: NXDOMAIN/NODATA for what it does not hold (not
            // REFUSED, which resolvers turn into SERVFAIL).
            .args([
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
                "--local=/#/",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--listen-address={}", xtask::lab::OUTSIDE_ADDR))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        self.dnsmasq = Some(child);
        within("dnsmasq answers", Duration::from_secs(10), || {
            let o = nsexec(
                &out,
                &[
                    "dig",
                    "+short",
                    "+time=1",
                    "+tries=1",
                    &format!("@{}", xtask::lab::OUTSIDE_ADDR),
                    OUTSIDE_NAME,
                ],
            );
            stdout(&o).contains(OUTSIDE_NAME_IP)
        });
    }

    pub fn lab(&self) -> &Lab {
        self.lab
            .as_ref()
            .and_then(|g| g.0.as_ref())
            .expect("lab up")
    }

    pub fn d(&self, i: usize) -> &Dockerd {
        self.hosts[i].d.as_ref().expect("dockerd running")
    }

    fn plugin_socket(&self, i: usize) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/run/docker/plugins/ovl.sock",
            self.d(i).pid().unwrap()
        ))
    }

    /// Starts host `i`'s agent inside its dockerd's namespaces with `--docker-plugin`
    /// (and so `--dns-addr 169.254.53.53`), forwarding to the lab's outside resolver.
    pub fn start_agent(&mut self, i: usize) {
        let hs = self.lab().host(i).clone();
        let kv = self.lab().state.kv_url.clone();
        let bin = self.lab().state.bin_dir.join("overlay-agent");
        let h = &self.hosts[i];
        fs::create_dir_all(&h.run).unwrap();
        fs::create_dir_all(&h.state).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .unwrap();
        let d = h.d.as_ref().unwrap();
        let mut cmd = d.host_command(&bin).unwrap();
        cmd.args([
            "--host-id",
            &hs.id,
            "--advertise-addr",
            &hs.addr,
            "--kv",
            &kv,
        ])
        .arg("--run-dir")
        .arg(&h.run)
        .arg("--state-dir")
        .arg(&h.state)
        .args([
            "--lease-ttl",
            "4",
            "--resync-interval",
            "2",
            "--docker-plugin",
            "--dns-upstream",
            xtask::lab::OUTSIDE_ADDR,
        ])
        .env(
            "DOCKER_HOST",
            format!("unix://{}", d.socket_path().display()),
        )
        .env(
            "OVERLAY_LOG",
            std::env::var("OVERLAY_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        let child = cmd.spawn().unwrap();
        self.hosts[i].agent = Some(child);
        let sock = self.plugin_socket(i);
        let this = &*self;
        within(
            &format!("agent h{} up", i + 1),
            Duration::from_secs(30),
            || sock.exists() && this.ctl(i, &["status"]).status.success(),
        );
        within(
            &format!("h{} serves DNS on {DNS_ADDR}", i + 1),
            Duration::from_secs(20),
            || {
                this.status_detail(i, "docker dns")
                    .is_some_and(|d| d.contains("(serving)"))
            },
        );
    }

    pub fn ctl(&self, i: usize, args: &[&str]) -> Output {
        let bin = self.lab().state.bin_dir.join("overlayctl");
        Command::new(bin)
            .args(args)
            .env("OVERLAY_SOCKET", self.hosts[i].run.join("overlay.sock"))
            .output()
            .unwrap()
    }

    pub fn ctl_json(&self, i: usize, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.ctl(i, &a);
        assert!(o.status.success(), "overlayctl {args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// One line of `overlayctl status` details (`docker dns`, `gateway`, ...).
    pub fn status_detail(&self, i: usize, key: &str) -> Option<String> {
        let o = self.ctl(i, &["--json", "status"]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v["details"]
            .as_array()?
            .iter()
            .find_map(|kv| (kv[0] == key).then(|| kv[1].as_str().unwrap_or_default().to_string()))
    }

    /// Packets host `i`'s DNS guard dropped, from its status.
    pub fn dns_dropped(&self, i: usize) -> u64 {
        let d = self.status_detail(i, "docker dns").unwrap_or_default();
        d.rsplit(", ")
            .next()
            .and_then(|s| s.strip_suffix(" dropped"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no drop count in {d:?}"))
    }

    pub fn docker(&self, i: usize, args: &[&str]) -> String {
        self.d(i).docker_ok(args).unwrap_or_else(|e| {
            panic!(
                "h{}: docker {args:?}: {e}\nagent log:\n{}",
                i + 1,
                self.log_tail(i)
            )
        })
    }

    pub fn docker_try(&self, i: usize, args: &[&str]) -> Output {
        self.d(i).docker(args).unwrap()
    }

    pub fn log_tail(&self, i: usize) -> String {
        xtask::lab::tail(&self.hosts[i].log, 30)
    }

    /// `docker network create -d ovl --ipam-driver ovl NAME` on host `i`, and wait until the
    /// other host has it too (created once, present everywhere).
    pub fn create_network(&self, i: usize, name: &str) {
        self.docker(
            i,
            &[
                "network",
                "create",
                "-d",
                "ovl",
                "--ipam-driver",
                "ovl",
                name,
            ],
        );
        let other = 1 - i;
        within(
            &format!("{name} present on h{}", other + 1),
            Duration::from_secs(20),
            || {
                self.docker_try(other, &["network", "inspect", name])
                    .status
                    .success()
            },
        );
    }

    /// A container that only sleeps, on `net`, on host `i`.
    pub fn run_sleeper(&self, i: usize, name: &str, net: &str) {
        self.docker(
            i,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                net,
                IMAGE,
                "sleep",
                "100000",
            ],
        );
    }

    /// `docker inspect` of `c`'s address on `net`.
    pub fn ip_of(&self, i: usize, c: &str, net: &str) -> String {
        self.docker(
            i,
            &[
                "inspect",
                "-f",
                &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
                c,
            ],
        )
    }

    /// Runs `args` in host `i`'s network namespace (where the agent and dockerd live).
    pub fn in_host(&self, i: usize, args: &[&str]) -> Output {
        nsexec(&self.lab().host(i).ns, args)
    }
}

/// The outcome of `dig` (its status and answers), or `None` when no answer came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dug {
    pub status: String,
    pub answers: Vec<String>,
    pub flags: Vec<String>,
}

/// Parses `dig +noall +comments +answer` output; `None` when dig got no reply.
pub fn parse_dig(o: &Output) -> Option<Dug> {
    let text = stdout(o);
    if !o.status.success() || !text.contains("status: ") {
        return None;
    }
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let flags = text
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect();
    Some(Dug {
        status,
        answers,
        flags,
    })
}

/// `dig @server name` from network namespace `ns` (one try, `timeout` seconds).
pub fn dig_from(ns: &str, server: &str, args: &[&str], timeout: u32) -> Option<Dug> {
    let mut a = vec![
        "dig".to_string(),
        format!("@{server}"),
        "+noall".into(),
        "+comments".into(),
        "+answer".into(),
        format!("+time={timeout}"),
        "+tries=1".into(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    parse_dig(&nsexec(ns, &a))
}
