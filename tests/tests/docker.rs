//! The Docker remote network + IPAM plugin against real dockerd on two lab hosts, on each of
//! three engines: Debian 12's docker.io 20.10 (the machine's own), Debian 13's 26.1 and Debian
//! unstable's 28.x (each from a debootstrapped tree of its release, `scripts/docker-rootfs.sh`),
//! busybox imported from `busybox-static`, etcd as the KV. Needs root; never skips. Each host's
//! agent runs with `--docker-plugin` inside that host's dockerd mount namespace (on 26 and 28:
//! inside the release's root, like an agent installed on such a host), so
//! `/run/docker/plugins/ovl.sock` is the one that dockerd discovers.
//!
//! One test per scenario and engine: `docker_two_hosts_{20,26,28}` (kernel datapath) and
//! `docker_two_hosts_ebpf_{20,26,28}`; pick with a filter, e.g. `-- _28`. Names through
//! Docker's DNS are tested in `docker_dns.rs`.
//! Run: `cargo build -p overlay-agent && cargo test -p ovl-tests --test docker -- --test-threads 1`.

use std::{
    fs,
    io::{Read, Write},
    os::unix::net::UnixStream,
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

const IMAGE: &str = "t6/busybox:latest";

struct Host {
    d: Option<Dockerd>,
    agent: Option<Child>,
    run: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

/// Two lab hosts with a dockerd and an agent each; everything goes away on drop.
struct DockerLab {
    /// `--datapath` of the agents.
    datapath: &'static str,
    lab: Option<LabGuard>,
    hosts: Vec<Host>,
    work: PathBuf,
}

impl Drop for DockerLab {
    fn drop(&mut self) {
        // Containers first, while the agents still answer Docker's Leave/DeleteEndpoint: with
        // the plugin gone, dockerd retries each call for 30 s (a failed test would take minutes
        // to clean up).
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
                let _ = fs::create_dir_all(&keep);
                let name = h
                    .log
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_os_string())
                    .unwrap_or_default();
                let _ = fs::copy(&h.log, Path::new(&keep).join(name).with_extension("log"));
            }
        }
        for h in &mut self.hosts {
            if let Some(mut d) = h.d.take()
                && let Err(e) = d.stop()
            {
                eprintln!("stopping dockerd: {e}");
            }
        }
        // An eBPF agent's BPF filesystem (mounted in its run dir, kept across restarts on
        // purpose) reached this namespace through the dockerd's shared mounts.
        for e in xtask::lab::unmount_under(&self.work) {
            eprintln!("{e}");
        }
        self.lab.take();
        if let Err(e) = fs::remove_dir_all(&self.work) {
            eprintln!("removing {}: {e}", self.work.display());
        }
    }
}

fn stop_agent(h: &mut Host) {
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

impl DockerLab {
    fn up(name: &str, datapath: &'static str, engine: Engine) -> DockerLab {
        require_root();
        let t0 = Instant::now();
        let mut cfg = LabConfig::new(name, 2);
        cfg.kv = KvKind::Etcd;
        cfg.start_agents = false;
        let lab = lab_with(cfg);
        let work = PathBuf::from(format!("/tmp/{name}-docker"));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        let mut me = DockerLab {
            datapath,
            lab: Some(lab),
            hosts: Vec::new(),
            work: work.clone(),
        };
        for i in 0..2 {
            let ns = me.lab().host(i).ns.clone();
            // The agent's binary and its dirs (under `work`) keep their paths in a release tree.
            let bin = me.lab().state.bin_dir.clone();
            let opts = DockerdOpts::for_engine(i as u8 + 1, engine, &[&work, &bin]);
            let d = Dockerd::start(&ns, &work, opts)
                .unwrap_or_else(|e| panic!("dockerd {ns} ({engine}): {e}"));
            if i == 0 {
                let (v, api) = d.server_version().unwrap();
                eprintln!("{name}: Docker Engine {v} (API {api}) from {engine}");
                assert!(engine.runs(&v), "engine {engine} runs Docker {v}");
            }
            d.import_busybox(IMAGE).unwrap();
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

    fn lab(&self) -> &Lab {
        self.lab
            .as_ref()
            .and_then(|g| g.0.as_ref())
            .expect("lab up")
    }

    fn lab_mut(&mut self) -> &mut Lab {
        self.lab
            .as_mut()
            .and_then(|g| g.0.as_mut())
            .expect("lab up")
    }

    fn d(&self, i: usize) -> &Dockerd {
        self.hosts[i].d.as_ref().expect("dockerd running")
    }

    fn plugin_socket(&self, i: usize) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/run/docker/plugins/ovl.sock",
            self.d(i).pid().unwrap()
        ))
    }

    /// Starts host `i`'s agent inside its dockerd's namespaces, as `Lab::start_agent` does
    /// plus `--docker-plugin`.
    fn start_agent(&mut self, i: usize) {
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
            "--datapath",
            self.datapath,
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
    }

    fn ctl(&self, i: usize, args: &[&str]) -> Output {
        let bin = self.lab().state.bin_dir.join("overlayctl");
        Command::new(bin)
            .args(args)
            .env("OVERLAY_SOCKET", self.hosts[i].run.join("overlay.sock"))
            .output()
            .unwrap()
    }

    fn ctl_json(&self, i: usize, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.ctl(i, &a);
        assert!(o.status.success(), "overlayctl {args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn docker(&self, i: usize, args: &[&str]) -> String {
        self.d(i).docker_ok(args).unwrap_or_else(|e| {
            panic!(
                "h{}: docker {args:?}: {e}\nagent log:\n{}",
                i + 1,
                self.log_tail(i)
            )
        })
    }

    fn docker_try(&self, i: usize, args: &[&str]) -> Output {
        self.d(i).docker(args).unwrap()
    }

    fn log_tail(&self, i: usize) -> String {
        xtask::lab::tail(&self.hosts[i].log, 30)
    }

    /// Every key under `prefix` in etcd.
    fn etcd_keys(&self, prefix: &str) -> Vec<String> {
        let ul = format!("{}-ul", self.lab().state.name);
        let o = nsexec(
            &ul,
            &[
                "env",
                "ETCDCTL_API=3",
                "etcdctl",
                "--endpoints",
                "198.18.0.1:2379",
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ],
        );
        assert!(o.status.success(), "etcdctl: {}", stderr(&o));
        stdout(&o)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Waits until both hosts' dockerd show network `name` alike: typed on both hosts at the
    /// same moment, the host whose create lost the race has its Docker network recreated with
    /// the cluster's subnet (within a second, before any container joins).
    fn converged(&self, name: &str) {
        let start = Instant::now();
        loop {
            let (a, b) = (self.ovl_networks(0), self.ovl_networks(1));
            if a.contains_key(name) && a.get(name) == b.get(name) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} differs between the hosts after 10 s:\nh1: {:?}\nh2: {:?}\nh1 log:\n{}\nh2 log:\n{}",
                a.get(name),
                b.get(name),
                self.log_tail(0),
                self.log_tail(1)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of one etcd key (empty when absent).
    fn etcd_value(&self, key: &str) -> String {
        let ul = format!("{}-ul", self.lab().state.name);
        let o = nsexec(
            &ul,
            &[
                "env",
                "ETCDCTL_API=3",
                "etcdctl",
                "--endpoints",
                "198.18.0.1:2379",
                "get",
                "--print-value-only",
                key,
            ],
        );
        assert!(o.status.success(), "etcdctl: {}", stderr(&o));
        stdout(&o)
    }

    /// `docker network create -d ovl --ipam-driver ovl NAME` on host `i`.
    fn create_network(&self, i: usize, name: &str) {
        self.create_here(i, &["--ipam-driver", "ovl", name]);
    }

    /// `docker network create -d ovl ARGS` on host `i`, typed as users do on every host: it
    /// either creates the network or finds it already there (the agent created it from
    /// another host's), never anything else.
    fn create_here(&self, i: usize, args: &[&str]) {
        let mut a = vec!["network", "create", "-d", "ovl"];
        a.extend_from_slice(args);
        let o = self.docker_try(i, &a);
        let err = stderr(&o);
        assert!(
            o.status.success() || err.contains("already exists"),
            "h{}: docker {a:?}: {err}\nagent log:\n{}",
            i + 1,
            self.log_tail(i)
        );
    }

    /// The ovl networks of host `i`'s dockerd: name -> what `docker network inspect` shows
    /// of them that must agree across hosts (IPAM config, internal, options, labels).
    fn ovl_networks(&self, i: usize) -> std::collections::BTreeMap<String, Value> {
        let names = self.docker(
            i,
            &[
                "network",
                "ls",
                "--filter",
                "driver=ovl",
                "--format",
                "{{.Name}}",
            ],
        );
        names
            .split_whitespace()
            .filter_map(|n| {
                // A network may go between the listing and its inspect.
                let o = self.docker_try(i, &["network", "inspect", n]);
                let all: Value = serde_json::from_slice(&o.stdout).ok()?;
                let v = &all[0];
                let shown = serde_json::json!({
                    "ipam": v["IPAM"]["Config"],
                    "internal": v["Internal"],
                    "options": v["Options"],
                    "labels": v["Labels"],
                });
                Some((n.to_string(), shown))
            })
            .collect()
    }

    /// A container that only sleeps, on `net`, on host `i`.
    fn run_sleeper(&self, i: usize, name: &str, net: &str) {
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

    /// "web" on host 1: alias "webalias", an HTTP server on port 80 published as 8080.
    fn run_web(&self, net: &str) {
        self.docker(
            0,
            &[
                "run",
                "-d",
                "--name",
                "web",
                "--network",
                net,
                "--network-alias",
                "webalias",
                "-p",
                "8080:80",
                IMAGE,
                "sh",
                "-c",
                "echo hello-from-web > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
            ],
        );
    }

    /// Host 1's published port 8080 answers with web's page from host 2's namespace.
    fn published_port_answers(&self) {
        let url = format!("http://{}:8080/", self.lab().host(0).addr);
        let h2_ns = self.lab().host(1).ns.clone();
        within(
            "published port answers from host 2",
            Duration::from_secs(20),
            || {
                let o = nsexec(
                    &h2_ns,
                    &["timeout", "5", "busybox", "wget", "-q", "-O", "-", &url],
                );
                stdout(&o).contains("hello-from-web")
            },
        );
    }

    fn endpoints(&self, i: usize, net: &str) -> Vec<Value> {
        self.ctl_json(i, &["endpoints", net])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// `overlayctl attach` of a plain namespace on host 1, next to dockerd: it goes out through the
/// agent's own gateway bridge, which this engine's firewall must let through (Docker sets the
/// `filter FORWARD` policy to DROP; 28 moved its rules into `DOCKER-FORWARD` and adds raw-table
/// drops for its own endpoints). The agent's exception sits in `DOCKER-USER`, the chain Docker
/// keeps for users on every engine; everything else of the agent is in its own nft table.
fn plain_namespace_goes_out(lab: &DockerLab, net: &str) {
    let ns = lab.lab().add_container("plain").unwrap();
    let sleeper = Killed(vec![nsspawn(&ns, &["sleep", "600"])]);
    let pid = sleeper.0[0].id().to_string();
    let reply = lab.ctl_json(0, &["attach", net, "--name", "plain", "--pid", &pid]);
    assert!(reply["endpoint"]["ip"].is_string(), "{reply}");
    let h1 = lab.lab().host(0).ns.clone();
    let forward = stdout(&nsexec(&h1, &["iptables", "-S", "FORWARD"]));
    within(
        "a plain namespace reaches the outside through the agent's gateway",
        Duration::from_secs(20),
        || ping(&ns, xtask::lab::OUTSIDE_ADDR),
    );
    let user = stdout(&nsexec(&h1, &["iptables", "-S", "DOCKER-USER"]));
    assert!(
        user.contains("ovl_gwbridge"),
        "the exception is in DOCKER-USER:\n{user}\nFORWARD:\n{forward}"
    );
    assert!(
        forward.contains("-P FORWARD DROP"),
        "Docker's FORWARD policy is DROP on every engine:\n{forward}"
    );
    eprintln!("h1 FORWARD:\n{forward}h1 DOCKER-USER:\n{user}");
    lab.ctl_json(0, &["detach", net, "--name", "plain"]);
    drop(sleeper);
}

/// One raw HTTP POST to the plugin socket: (status, body).
fn plugin_post(sock: &Path, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn ip_of(lab: &DockerLab, i: usize, c: &str, net: &str) -> String {
    lab.docker(
        i,
        &[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            c,
        ],
    )
}

/// `overlayctl probe` from host `i` reaches Docker container `to` (on host 1, index 0) on
/// `net`, every hop passing (the destination's agent watches the interface dockerd renamed),
/// and the probe's endpoint never shows in container `peer`'s hosts file on host `j`.
fn probe_reaches(lab: &DockerLab, i: usize, net: &str, to: &str, (j, peer): (usize, &str)) {
    let o = lab.ctl(i, &["--json", "probe", net, "--to", to]);
    let r: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("probe {net} --to {to}: {e}: {}", stderr(&o)));
    assert!(o.status.success(), "probe {net} --to {to}: {r:#}");
    let hops: Vec<(&str, bool)> = r["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .map(|h| (h["hop"].as_str().unwrap_or(""), h["ok"] == true))
        .collect();
    let want = if i == 0 {
        PROBE_LOCAL.as_slice()
    } else {
        PROBE_REMOTE.as_slice()
    };
    assert_eq!(hops.iter().map(|h| h.0).collect::<Vec<_>>(), want, "{r:#}");
    assert!(hops.iter().all(|h| h.1), "{r:#}");
    let hosts = lab.docker(j, &["exec", peer, "cat", "/etc/hosts"]);
    assert!(!hosts.contains("ovl-probe-"), "{hosts}");
}

/// `overlayctl doctor` on host `i` finds nothing wrong (within `wait`: the health matrix
/// needs a few rounds after a change).
fn doctor_ok(lab: &DockerLab, i: usize, wait: Duration) {
    let start = Instant::now();
    loop {
        let o = lab.ctl(i, &["doctor"]);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        if o.status.success() {
            eprintln!("doctor on h{}:\n{text}", i + 1);
            return;
        }
        assert!(start.elapsed() < wait, "doctor on h{}:\n{text}", i + 1);
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn can_ping(lab: &DockerLab, i: usize, c: &str, target: &str) -> bool {
    lab.docker_try(i, &["exec", c, "ping", "-c1", "-W2", target])
        .status
        .success()
}

/// The Docker tests run one at a time: each brings up two dockerd.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn docker_two_hosts_20() {
    two_hosts("t6d20", Engine::Host);
}

#[test]
fn docker_two_hosts_26() {
    two_hosts("t6d26", Engine::Trixie);
}

#[test]
fn docker_two_hosts_28() {
    two_hosts("t6d28", Engine::Sid);
}

#[test]
fn docker_two_hosts_ebpf_20() {
    two_hosts_ebpf("t6e20", Engine::Host);
}

#[test]
fn docker_two_hosts_ebpf_26() {
    two_hosts_ebpf("t6e26", Engine::Trixie);
}

#[test]
fn docker_two_hosts_ebpf_28() {
    two_hosts_ebpf("t6e28", Engine::Sid);
}

fn two_hosts(name: &str, engine: Engine) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let mut lab = DockerLab::up(name, "kernel", engine);

    // Plain form on both hosts: one overlay.
    for i in 0..2 {
        lab.create_network(i, "appnet");
    }
    lab.converged("appnet");
    within("pending pools bound", Duration::from_secs(20), || {
        let nets = lab.ctl_json(0, &["network", "ls"]);
        let names: Vec<String> = nets
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap_or("").to_string())
            .collect();
        names == ["appnet"]
    });
    // Explicit form on both hosts: also one overlay.
    for i in 0..2 {
        lab.create_here(
            i,
            &[
                "--ipam-driver",
                "ovl",
                "--ipam-opt",
                "ovl.network=named",
                "-o",
                "com.docker.network.driver.mtu=1400",
                "named",
            ],
        );
    }
    lab.converged("named");
    let s1 = lab.docker(
        0,
        &[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            "named",
        ],
    );
    let s2 = lab.docker(
        1,
        &[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            "named",
        ],
    );
    assert_eq!(s1, s2, "the named form gives the same subnet on both hosts");
    // -o com.docker.network.driver.mtu reaches the cluster record and the container.
    let named = lab.ctl_json(0, &["network", "inspect", "named"]);
    assert_eq!(named["mtu"], 1400, "{named}");
    let mtu = lab.docker(
        1,
        &[
            "run",
            "--rm",
            "--network",
            "named",
            IMAGE,
            "cat",
            "/sys/class/net/eth0/mtu",
        ],
    );
    assert_eq!(mtu, "1400");
    // --subnet, --gateway, --internal; the second host's --subnet binds to it at once.
    lab.docker(
        0,
        &[
            "network",
            "create",
            "-d",
            "ovl",
            "--ipam-driver",
            "ovl",
            "--subnet",
            "10.77.0.0/24",
            "--gateway",
            "10.77.0.254",
            "--internal",
            "intnet",
        ],
    );
    lab.create_here(
        1,
        &[
            "--ipam-driver",
            "ovl",
            "--subnet",
            "10.77.0.0/24",
            "--internal",
            "intnet",
        ],
    );
    lab.converged("intnet");
    within(
        "intnet bound with its options",
        Duration::from_secs(20),
        || {
            let o = lab.ctl(1, &["--json", "network", "inspect", "intnet"]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            v["subnet"] == "10.77.0.0/24" && v["gateway"] == "10.77.0.254" && v["internal"] == true
        },
    );
    assert_eq!(
        lab.docker(
            1,
            &[
                "network",
                "inspect",
                "-f",
                "{{(index .IPAM.Config 0).Subnet}}",
                "intnet"
            ]
        ),
        "10.77.0.0/24"
    );
    lab.run_sleeper(0, "isolated", "intnet");
    lab.run_sleeper(1, "isolated2", "intnet");
    let iso2 = ip_of(&lab, 1, "isolated2", "intnet");
    assert!(iso2.starts_with("10.77.0."), "{iso2}");
    within(
        "internal network carries traffic across hosts",
        Duration::from_secs(20),
        || can_ping(&lab, 0, "isolated", &iso2),
    );
    let routes = lab.docker(0, &["exec", "isolated", "ip", "route"]);
    assert!(
        !routes.contains("default"),
        "an internal network has no way out:\n{routes}"
    );
    assert!(!can_ping(&lab, 0, "isolated", xtask::lab::OUTSIDE_ADDR));
    lab.docker(0, &["rm", "-f", "isolated"]);
    lab.docker(1, &["rm", "-f", "isolated2"]);

    // -o encrypted, as Docker's own overlay spells it: WireGuard between the hosts.
    lab.create_here(0, &["--ipam-driver", "ovl", "-o", "encrypted", "secnet"]);
    lab.create_here(1, &["--ipam-driver", "ovl", "-o", "encrypted", "secnet"]);
    lab.converged("secnet");
    let sec = lab.ctl_json(0, &["network", "inspect", "secnet"]);
    assert_eq!(sec["encrypted"], true, "{sec}");
    lab.run_sleeper(0, "sec1", "secnet");
    lab.run_sleeper(1, "sec2", "secnet");
    let sec2 = ip_of(&lab, 1, "sec2", "secnet");
    within(
        "the encrypted network carries traffic across hosts",
        Duration::from_secs(20),
        || can_ping(&lab, 0, "sec1", &sec2),
    );
    assert_eq!(
        lab.docker(0, &["exec", "sec1", "cat", "/sys/class/net/eth0/mtu"]),
        "1390",
        "room for WireGuard and VXLAN"
    );
    let st = lab.ctl_json(0, &["status"]);
    assert_eq!(st["wireguard"]["up"], true, "{st}");
    lab.docker(0, &["rm", "-f", "sec1"]);
    lab.docker(1, &["rm", "-f", "sec2"]);
    lab.docker(0, &["network", "rm", "secnet"]);
    within("secnet gone from host 2", Duration::from_secs(20), || {
        !lab.ovl_networks(1).contains_key("secnet")
    });

    lab.run_web("appnet");
    lab.run_sleeper(1, "client", "appnet");
    let web_ip = ip_of(&lab, 0, "web", "appnet");
    let client_ip = ip_of(&lab, 1, "client", "appnet");
    assert_ne!(web_ip, client_ip);

    // Names reach the KV (from the Engine API watcher), visible from both hosts.
    within("names in the KV", Duration::from_secs(20), || {
        let eps = lab.endpoints(1, "appnet");
        eps.iter().any(|e| {
            e["name"] == "web"
                && e["aliases"] == serde_json::json!(["webalias"])
                && e["ip"] == web_ip.as_str()
        }) && eps
            .iter()
            .any(|e| e["name"] == "client" && e["ip"] == client_ip.as_str())
    });
    // Cross-host traffic by address, both directions.
    within("client pings web by IP", Duration::from_secs(20), || {
        can_ping(&lab, 1, "client", &web_ip)
    });
    assert!(can_ping(&lab, 0, "web", &client_ip));
    // By name: /etc/hosts of the client lists web, web.appnet and the alias.
    within(
        "client's /etc/hosts names web",
        Duration::from_secs(20),
        || {
            let hosts = lab.docker(1, &["exec", "client", "cat", "/etc/hosts"]);
            hosts
                .lines()
                .any(|l| l.starts_with(&web_ip) && l.split_whitespace().any(|w| w == "web"))
                && hosts.contains("web.appnet")
                && hosts.contains("webalias")
        },
    );
    for name in ["web", "web.appnet", "webalias"] {
        assert!(
            can_ping(&lab, 1, "client", name),
            "client -> {name}\n{}",
            lab.docker(1, &["exec", "client", "cat", "/etc/hosts"])
        );
    }
    // overlayctl probe finds Docker containers: across hosts and on the same host.
    probe_reaches(&lab, 1, "appnet", "web", (1, "client"));
    probe_reaches(&lab, 0, "appnet", "web", (1, "client"));
    doctor_ok(&lab, 1, Duration::from_secs(20));
    // The outside world through docker_gwbridge (NAT by Docker).
    assert!(can_ping(&lab, 0, "web", xtask::lab::OUTSIDE_ADDR));
    // -p 8080:80 on host 1 answers from host 2's namespace.
    lab.published_port_answers();

    // Restart host 1's agent mid-test: running containers keep connectivity.
    stop_agent(&mut lab.hosts[0]);
    assert!(
        can_ping(&lab, 1, "client", &web_ip),
        "traffic with host 1's agent down"
    );
    lab.start_agent(0);
    assert!(
        can_ping(&lab, 1, "client", &web_ip),
        "traffic after the restart"
    );
    lab.run_sleeper(0, "web2", "appnet");
    let web2_ip = ip_of(&lab, 0, "web2", "appnet");
    within(
        "client pings web2 (started after the restart)",
        Duration::from_secs(20),
        || can_ping(&lab, 1, "client", &web2_ip),
    );
    within("web2 by name", Duration::from_secs(20), || {
        can_ping(&lab, 1, "client", "web2")
    });

    // Issue 17 (4): an address freed on host 1 and taken by a new container on host 2 is
    // reachable from host 1 within 1 s (host 2 had learned its MAC, derived from the
    // address, towards host 1). On intnet: Docker 23+ takes `--ip` only on a network created
    // with `--subnet`.
    lab.run_sleeper(0, "r1", "intnet");
    lab.run_sleeper(1, "r2", "intnet");
    lab.run_sleeper(0, "old", "intnet");
    let reused = ip_of(&lab, 0, "old", "intnet");
    within("r2 (h2) reaches old (h1)", Duration::from_secs(20), || {
        can_ping(&lab, 1, "r2", &reused)
    });
    lab.docker(0, &["rm", "-f", "old"]);
    lab.docker(
        1,
        &[
            "run",
            "-d",
            "--name",
            "new",
            "--network",
            "intnet",
            "--ip",
            &reused,
            IMAGE,
            "sleep",
            "100000",
        ],
    );
    let started = Instant::now();
    assert_eq!(ip_of(&lab, 1, "new", "intnet"), reused);
    within("r1 (h1) reaches new (h2)", Duration::from_secs(10), || {
        can_ping(&lab, 0, "r1", &reused)
    });
    let took = started.elapsed();
    eprintln!("{name}: reused address {reused} reached from h1 {took:?} after docker run");
    assert!(
        took <= Duration::from_secs(1),
        "the reused address took {took:?} to be reachable from h1"
    );
    assert!(can_ping(&lab, 1, "r2", &reused), "and from h2");
    lab.docker(0, &["rm", "-f", "r1"]);
    lab.docker(1, &["rm", "-f", "r2", "new"]);

    // KV outage: running containers keep talking, a new container fails with a clear message,
    // removing one works and reaches the KV once it is back.
    let web2_ep = lab.docker(
        0,
        &[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.appnet.EndpointID}}",
            "web2",
        ],
    );
    lab.lab_mut().stop_etcd().unwrap();
    assert!(
        can_ping(&lab, 1, "client", &web_ip),
        "traffic during the KV outage"
    );
    let o = lab.docker_try(
        0,
        &[
            "run",
            "-d",
            "--name",
            "nokv",
            "--network",
            "appnet",
            IMAGE,
            "sleep",
            "100000",
        ],
    );
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("unreachable"),
        "docker run without the KV: {err}"
    );
    lab.docker_try(0, &["rm", "-f", "nokv"]);
    lab.docker(0, &["rm", "-f", "web2"]);
    assert!(
        can_ping(&lab, 1, "client", &web_ip),
        "traffic during the KV outage, after a removal"
    );
    lab.lab_mut().start_etcd().unwrap();
    within(
        "deferred removal of web2 applied",
        Duration::from_secs(30),
        || {
            !lab.etcd_keys("/ovl/v1/endpoints/")
                .iter()
                .any(|k| k.ends_with(&web2_ep))
        },
    );
    within(
        "web2 gone from the client's hosts file",
        Duration::from_secs(20),
        || {
            !lab.docker(1, &["exec", "client", "cat", "/etc/hosts"])
                .contains("web2")
        },
    );

    // Malformed requests: a clear error and no change.
    let before = (
        lab.etcd_keys("/ovl/v1/endpoints/"),
        lab.etcd_keys("/ovl/v1/networks/"),
        lab.etcd_keys("/ovl/v1/docker/"),
        lab.etcd_keys("/ovl/v1/addrs/"),
    );
    let sock = lab.plugin_socket(0);
    let appnet_id = lab.docker(0, &["network", "inspect", "-f", "{{.Id}}", "appnet"]);
    let unknown = "ab".repeat(32);
    let cases = [
        ("/NetworkDriver.CreateEndpoint", "{not json".to_string()),
        (
            "/NetworkDriver.CreateEndpoint",
            format!(
                r#"{{"NetworkID":"{unknown}","EndpointID":"{unknown}","Interface":{{"Address":"10.1.1.1/24"}}}}"#
            ),
        ),
        (
            "/NetworkDriver.CreateEndpoint",
            format!(
                r#"{{"NetworkID":"{appnet_id}","EndpointID":"{unknown}","Interface":{{"Address":42}}}}"#
            ),
        ),
        (
            "/NetworkDriver.CreateEndpoint",
            format!(
                r#"{{"NetworkID":"{appnet_id}","EndpointID":"{unknown}","Interface":{{"Address":"203.0.113.9/24"}}}}"#
            ),
        ),
        (
            "/NetworkDriver.Join",
            format!(
                r#"{{"NetworkID":"{appnet_id}","EndpointID":"{unknown}","SandboxKey":"/nonexistent"}}"#
            ),
        ),
        (
            "/NetworkDriver.Join",
            format!(
                r#"{{"NetworkID":"{unknown}","EndpointID":"{unknown}","SandboxKey":"/nonexistent"}}"#
            ),
        ),
        (
            "/IpamDriver.RequestAddress",
            r#"{"PoolID":42,"Address":""}"#.to_string(),
        ),
        (
            "/IpamDriver.RequestAddress",
            r#"{"PoolID":"ovl/net/nosuchnet/v4","Address":""}"#.to_string(),
        ),
        (
            "/IpamDriver.RequestPool",
            r#"{"AddressSpace":"OvlLocal","Pool":"not-a-cidr"}"#.to_string(),
        ),
        (
            "/IpamDriver.RequestPool",
            r#"{"AddressSpace":"OvlLocal","Options":{"ovl.network":"bad name!"}}"#.to_string(),
        ),
    ];
    for (path, body) in &cases {
        let (status, resp) = plugin_post(&sock, path, body);
        let v: Value = serde_json::from_str(&resp).unwrap_or(Value::Null);
        let msg = v["Err"].as_str().or(v["Error"].as_str()).unwrap_or("");
        assert!(
            !msg.is_empty(),
            "{path} {body}: expected an error, got {status} {resp}"
        );
    }
    let after = (
        lab.etcd_keys("/ovl/v1/endpoints/"),
        lab.etcd_keys("/ovl/v1/networks/"),
        lab.etcd_keys("/ovl/v1/docker/"),
        lab.etcd_keys("/ovl/v1/addrs/"),
    );
    assert_eq!(before, after, "malformed requests changed the KV");

    // docker rm -f web: gone from host 2 within a second.
    lab.docker(0, &["rm", "-f", "web"]);
    let t = within("web gone from host 2", Duration::from_secs(10), || {
        let eps = lab.endpoints(1, "appnet");
        let hosts = lab.docker(1, &["exec", "client", "cat", "/etc/hosts"]);
        !eps.iter().any(|e| e["name"] == "web")
            && !hosts.lines().any(|l| {
                l.split_whitespace()
                    .any(|w| w == "web" || w == "web.appnet")
            })
    });
    eprintln!("web gone from host 2 after {t:?}");
    assert!(
        t <= Duration::from_secs(1),
        "web took {t:?} to disappear from host 2"
    );

    // Teardown through Docker: nothing left behind.
    lab.docker(1, &["rm", "-f", "client"]);
    // Removed on one host, gone from every host.
    lab.docker(0, &["network", "rm", "appnet", "named", "intnet"]);
    within("networks gone from host 2", Duration::from_secs(5), || {
        lab.ovl_networks(1).is_empty()
    });
    kv_clean(&lab);
    for i in 0..2 {
        let dp = lab.hosts[i].run.join("dp/netns");
        within(
            &format!("h{} sandboxes gone (but the health network's)", i + 1),
            Duration::from_secs(15),
            || {
                let o = lab
                    .d(i)
                    .exec_in_mount_ns(["ls", "-A", dp.to_str().unwrap()])
                    .unwrap();
                stdout(&o).split_whitespace().all(|n| n == "ovl-health")
            },
        );
        // No endpoint interfaces left in the host namespace.
        let links = stdout(&nsexec(&lab.lab().host(i).ns, &["ip", "-o", "link"]));
        assert!(
            !links.contains("ovd"),
            "h{}: leftover links:\n{links}",
            i + 1
        );
        // No rules of ours: external connectivity is Docker's.
        let rules = stdout(&nsexec(&lab.lab().host(i).ns, &["nft", "list", "tables"]));
        assert!(
            !rules.contains("ovl"),
            "h{}: leftover nftables tables:\n{rules}",
            i + 1
        );
    }
    eprintln!("{name}: scenario passed in {:?}", t0.elapsed());
}

/// The same user scenario on the eBPF fast path: cross-host traffic by address and by name,
/// the outside world, a published port, an agent restart, a removal seen on the other host
/// within a second, and nothing left in the BPF maps after `docker network rm`.
fn two_hosts_ebpf(name: &str, engine: Engine) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let mut lab = DockerLab::up(name, "ebpf", engine);
    for i in 0..2 {
        assert_eq!(
            lab.ctl_json(i, &["datapath"])["mode"],
            "ebpf",
            "h{} on the fast path",
            i + 1
        );
        lab.create_network(i, "fastnet");
    }
    lab.converged("fastnet");
    lab.run_web("fastnet");
    lab.run_sleeper(1, "client", "fastnet");
    let web_ip = ip_of(&lab, 0, "web", "fastnet");
    let client_ip = ip_of(&lab, 1, "client", "fastnet");
    within("client pings web by IP", Duration::from_secs(20), || {
        can_ping(&lab, 1, "client", &web_ip)
    });
    assert!(can_ping(&lab, 0, "web", &client_ip));
    within(
        "names resolve across hosts",
        Duration::from_secs(20),
        || {
            ["web", "web.fastnet", "webalias"]
                .iter()
                .all(|n| can_ping(&lab, 1, "client", n))
        },
    );
    probe_reaches(&lab, 1, "fastnet", "web", (1, "client"));
    probe_reaches(&lab, 0, "fastnet", "web", (1, "client"));
    doctor_ok(&lab, 1, Duration::from_secs(20));
    assert!(can_ping(&lab, 0, "web", xtask::lab::OUTSIDE_ADDR));
    lab.published_port_answers();
    plain_namespace_goes_out(&lab, "fastnet");
    // The packets went through the programs.
    let dp = lab.ctl_json(1, &["datapath"]);
    let eps = dp["maps"]["local_endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        eps.iter().any(|e| e["ip"] == client_ip.as_str()),
        "client in h2's endpoint map: {dp}"
    );

    // An agent restart keeps the traffic; containers started after it work.
    stop_agent(&mut lab.hosts[0]);
    assert!(
        can_ping(&lab, 1, "client", &web_ip),
        "traffic with host 1's agent down"
    );
    lab.start_agent(0);
    lab.run_sleeper(0, "web2", "fastnet");
    within("client pings web2 by name", Duration::from_secs(20), || {
        can_ping(&lab, 1, "client", "web2")
    });

    lab.docker(0, &["rm", "-f", "web", "web2"]);
    let t = within("web gone from host 2", Duration::from_secs(10), || {
        let hosts = lab.docker(1, &["exec", "client", "cat", "/etc/hosts"]);
        !hosts.lines().any(|l| {
            l.split_whitespace()
                .any(|w| w == "web" || w == "web.fastnet")
        })
    });
    assert!(
        t <= Duration::from_secs(1),
        "web took {t:?} to disappear from host 2"
    );
    lab.docker(1, &["rm", "-f", "client"]);
    lab.docker(1, &["network", "rm", "fastnet"]);
    within("fastnet gone from host 1", Duration::from_secs(5), || {
        lab.ovl_networks(0).is_empty()
    });
    kv_clean(&lab);
    for i in 0..2 {
        within(
            &format!("h{} BPF maps empty", i + 1),
            Duration::from_secs(15),
            || {
                let maps = &lab.ctl_json(i, &["datapath"])["maps"];
                ["local_endpoints", "remotes"]
                    .iter()
                    .all(|m| maps[m].is_array() && outside_health(&maps[m]).is_empty())
            },
        );
        let links = stdout(&nsexec(&lab.lab().host(i).ns, &["ip", "-o", "link"]));
        assert!(
            !links.contains("ve-"),
            "h{}: leftover endpoint links:\n{links}",
            i + 1
        );
    }
    // Nothing of the lab stays mounted (the agents' BPF filesystems leaked once).
    let work = lab.work.clone();
    drop(lab);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&format!("{}/", work.display())))
        .collect();
    assert!(left.is_empty(), "left mounted: {left:#?}");
    assert!(!work.exists(), "{} left behind", work.display());
    eprintln!("{name}: scenario passed in {:?}", t0.elapsed());
}

#[test]
fn docker_network_everywhere_20() {
    network_everywhere("t17e20", Engine::Host);
}

#[test]
fn docker_network_everywhere_26() {
    network_everywhere("t17e26", Engine::Trixie);
}

#[test]
fn docker_network_everywhere_28() {
    network_everywhere("t17e28", Engine::Sid);
}

/// Issue 17 (1, 2): a network created once is present on every host, with the same
/// `docker network inspect`; typed again, it is the same network; bad input is refused with
/// nothing reserved; `docker network rm` removes it everywhere once no container uses it.
fn network_everywhere(name: &str, engine: Engine) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = DockerLab::up(name, "kernel", engine);

    // Created on host 1 only.
    lab.docker(
        0,
        &[
            "network",
            "create",
            "-d",
            "ovl",
            "--ipam-driver",
            "ovl",
            "--label",
            "tier=front",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "appnet",
        ],
    );
    let took = within("appnet present on host 2", Duration::from_secs(2), || {
        lab.ovl_networks(1).contains_key("appnet")
    });
    eprintln!("{name}: appnet present on host 2 {took:?} after the create on host 1 returned");
    within(
        "the same inspect on both hosts",
        Duration::from_secs(5),
        || lab.ovl_networks(0) == lab.ovl_networks(1),
    );
    let shown = lab.ovl_networks(1)["appnet"].clone();
    assert_eq!(shown["labels"]["tier"], "front", "{shown}");
    assert_eq!(
        shown["options"]["com.docker.network.driver.mtu"], "1400",
        "{shown}"
    );
    // Containers on host 2 join it at once.
    assert_eq!(
        lab.docker(
            1,
            &[
                "run",
                "--rm",
                "--network",
                "appnet",
                IMAGE,
                "cat",
                "/sys/class/net/eth0/mtu"
            ]
        ),
        "1400"
    );
    // Typed on host 2 as well, as users do: the same network, nothing else in the cluster.
    lab.create_network(1, "appnet");
    assert_eq!(lab.ovl_networks(0), lab.ovl_networks(1));
    let ls: Vec<String> = lab
        .ctl_json(1, &["network", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ls, ["appnet"]);

    // The plain form typed on both hosts at the same moment: one subnet everywhere.
    std::thread::scope(|s| {
        for i in 0..2 {
            let lab = &lab;
            s.spawn(move || lab.create_network(i, "race"));
        }
    });
    within(
        "race the same on both hosts",
        Duration::from_secs(10),
        || {
            let (a, b) = (lab.ovl_networks(0), lab.ovl_networks(1));
            a.contains_key("race") && a.get("race") == b.get("race")
        },
    );
    within(
        "no subnet reservation left in the KV",
        Duration::from_secs(10),
        || !lab.etcd_value("/ovl/v1/subnets").contains("pending:"),
    );
    let ls = lab.ctl_json(0, &["network", "ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 2, "{ls}");

    // Bad input: a clear error, nothing reserved.
    let before = (
        lab.etcd_keys("/ovl/v1/networks/"),
        lab.etcd_keys("/ovl/v1/docker/"),
        lab.etcd_keys("/ovl/v1/vnis/"),
    );
    let subnet = shown["ipam"][0]["Subnet"].as_str().unwrap().to_string();
    let wider = format!("{}/16", subnet.split('/').next().unwrap());
    for (args, why) in [
        (
            vec![
                "--ipam-driver",
                "ovl",
                "--ipam-opt",
                "ovl.network=bad/name",
                "bad1",
            ],
            "network name",
        ),
        (
            vec!["--ipam-driver", "ovl", "--subnet", wider.as_str(), "bad2"],
            "overlaps",
        ),
        (
            vec!["--ipam-driver", "ovl", "-o", "bogus=1", "bad3"],
            "unknown driver option",
        ),
    ] {
        let mut a = vec!["network", "create", "-d", "ovl"];
        a.extend(args.iter().copied());
        let o = lab.docker_try(0, &a);
        assert!(
            !o.status.success() && stderr(&o).contains(why),
            "docker {a:?}: expected an error about {why}: {}",
            stderr(&o)
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..2 {
        let nets = lab.ovl_networks(i);
        assert!(
            !nets.keys().any(|n| n.starts_with("bad")),
            "h{}: {nets:?}",
            i + 1
        );
    }
    let after = (
        lab.etcd_keys("/ovl/v1/networks/"),
        lab.etcd_keys("/ovl/v1/docker/"),
        lab.etcd_keys("/ovl/v1/vnis/"),
    );
    assert_eq!(before, after, "refused creates changed the KV");

    // Removal while a container on host 2 uses it: Docker drops host 1's copy regardless
    // (no driver can refuse), the cluster network stays and comes back on host 1; the
    // container keeps working and host 1's log names it and its host.
    lab.run_sleeper(1, "holder", "appnet");
    let holder_ip = ip_of(&lab, 1, "holder", "appnet");
    lab.docker(0, &["network", "rm", "appnet"]);
    within("appnet back on host 1", Duration::from_secs(5), || {
        lab.ovl_networks(0).get("appnet") == lab.ovl_networks(1).get("appnet")
            && lab.ovl_networks(0).contains_key("appnet")
    });
    let log = fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(
        log.contains("holder on h2"),
        "host 1's log names the container and its host:\n{}",
        lab.log_tail(0)
    );
    lab.run_sleeper(0, "newcomer", "appnet");
    within(
        "newcomer on host 1 reaches holder",
        Duration::from_secs(20),
        || can_ping(&lab, 0, "newcomer", &holder_ip),
    );
    // Then unused: removed on one host, gone from both and from the KV.
    lab.docker(0, &["rm", "-f", "newcomer"]);
    lab.docker(1, &["rm", "-f", "holder"]);
    lab.docker(0, &["network", "rm", "appnet", "race"]);
    let t = within("gone from host 2", Duration::from_secs(5), || {
        lab.ovl_networks(1).is_empty()
    });
    eprintln!("{name}: removal on host 1 reached host 2 in {t:?}");
    kv_clean(&lab);
}

#[test]
fn docker_compose_26() {
    compose_two_hosts("t17c26", Engine::Trixie);
}

#[test]
fn docker_compose_28() {
    compose_two_hosts("t17c28", Engine::Sid);
}

/// A Compose file for one host of the stack: `service` on a compose-created `ovl` network
/// (`front`) and on an external one (`appnet`).
fn compose_file(service: &str, command: &str) -> String {
    format!(
        r#"services:
  {service}:
    image: {IMAGE}
    pull_policy: never
    command: ["sh", "-c", "{command}"]
    networks: [front, shared]
networks:
  front:
    driver: ovl
    ipam:
      driver: ovl
  shared:
    external: true
    name: appnet
"#
    )
}

/// Issue 17 (6): Compose v2 on two hosts, one project per host as users do without Swarm,
/// with a compose-created `ovl` network and an external one: services reach each other by
/// service name, container name and `name.network`; `docker compose down` on one host
/// leaves the other host's services running.
fn compose_two_hosts(name: &str, engine: Engine) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = DockerLab::up(name, "kernel", engine);
    lab.create_network(0, "appnet");
    lab.converged("appnet");
    let files: Vec<PathBuf> = [
        (
            "web",
            "echo hello-from-web > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
        ),
        ("client", "exec sleep 100000"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (svc, cmd))| {
        let dir = lab.work.join(format!("compose-h{}", i + 1));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("compose.yaml");
        fs::write(&f, compose_file(svc, cmd)).unwrap();
        f
    })
    .collect();
    let compose = |i: usize, args: &[&str]| {
        let f = files[i].to_str().unwrap().to_string();
        let mut a = vec!["compose", "-p", "myapp", "-f", f.as_str()];
        a.extend_from_slice(args);
        lab.docker(i, &a)
    };
    compose(0, &["up", "-d"]);
    lab.converged("myapp_front");
    let front = lab.ovl_networks(1)["myapp_front"].clone();
    assert_eq!(
        front["labels"]["com.docker.compose.project"], "myapp",
        "Compose's labels on the other host: {front}"
    );
    compose(1, &["up", "-d"]);
    let web = "myapp-web-1";
    let client = "myapp-client-1";
    for target in ["web", web, &format!("{web}.myapp_front"), "web.appnet"] {
        within(
            &format!("client on host 2 reaches {target}"),
            Duration::from_secs(20),
            || can_ping(&lab, 1, client, target),
        );
    }
    for target in ["client", client, &format!("{client}.myapp_front")] {
        within(
            &format!("web on host 1 reaches {target}"),
            Duration::from_secs(20),
            || can_ping(&lab, 0, web, target),
        );
    }
    let page = lab.docker(
        1,
        &[
            "exec",
            client,
            "wget",
            "-q",
            "-O",
            "-",
            "http://web/index.html",
        ],
    );
    assert_eq!(page, "hello-from-web");

    // Down on host 1: host 2's service keeps running, its network too.
    compose(0, &["down"]);
    let ps = compose(1, &["ps", "--format", "{{.Name}} {{.State}}"]);
    assert!(ps.contains(&format!("{client} running")), "{ps}");
    lab.converged("myapp_front");
    assert!(can_ping(&lab, 1, client, "client"));
    // Up again on host 1: the same network, reachable at once.
    compose(0, &["up", "-d"]);
    within(
        "web back, reached from host 2",
        Duration::from_secs(20),
        || can_ping(&lab, 1, client, web),
    );
    compose(0, &["down"]);
    compose(1, &["down"]);
    within(
        "myapp_front gone everywhere",
        Duration::from_secs(5),
        || {
            !lab.ovl_networks(0).contains_key("myapp_front")
                && !lab.ovl_networks(1).contains_key("myapp_front")
        },
    );
}

/// Waits (10 s) for the cluster's keys to be gone; names what is left when they are not.
fn kv_clean(lab: &DockerLab) {
    let left = || -> Vec<String> {
        ["endpoints", "networks", "addrs", "docker", "vnis"]
            .iter()
            .flat_map(|p| lab.etcd_keys(&format!("/ovl/v1/{p}/")))
            .collect()
    };
    let t = std::time::Instant::now();
    while !left().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "KV not clean after 10 s: {:?}",
            left()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
