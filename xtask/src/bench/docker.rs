//! `cargo xtask bench docker --runs N --engine 20.10,26,28`: Docker + ovl against Docker's own
//! overlay and the underlay, side by side in one run on one 2-host lab per engine (one dockerd
//! per host serving both overlays). Docker's own overlay is the classic one on 20.10
//! (`--cluster-store` on an etcd with the v2 API) and Swarm's (`--attachable`, host 1 the
//! manager, host 2 a worker) on 26 and 28, where the classic one is gone:
//!
//! * container-to-container iperf3 throughput (TCP, one stream; the iperf3 binary of the
//!   machine run inside each container's network namespace);
//! * ping RTT between the two containers;
//! * convergence: `docker run` on host 2 until a container on host 1 pings it by name;
//! * a network created on host 1 only, until `docker run --network` on host 2 succeeds on it.
//!
//! Measurements are interleaved with a rotating order so drift does not favour one path;
//! medians over `runs`. If the classic overlay cannot be brought up, its column says why.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ovl_docker::testing::{Dockerd, DockerdOpts, Engine};

use super::median;
use crate::{
    lab::{KvKind, Lab, LabConfig, LabGuard, UNDERLAY_GW},
    sh::{in_ns, poll_every, wait_for},
};

const LAB: &str = "t6bench";
const IMAGE: &str = "t6/busybox:latest";
const SECONDS: u32 = 5;
/// Client port of the etcd with the v2 API that Docker's cluster store needs.
const ETCD2_PORT: u16 = 2389;
/// Swarm's address pool (its ingress network), inside the lab's range.
const SWARM_POOL: &str = "198.18.176.0/21";

/// A process we started; killed by PID when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything the bench brings up; dropped in reverse order of need.
struct Env {
    /// `--datapath` of the agents.
    datapath: String,
    /// The Docker Engine on both hosts.
    engine: Engine,
    agents: Vec<Proc>,
    dockerds: Vec<Dockerd>,
    etcd2: Option<Proc>,
    dns: Option<Proc>,
    lab: Option<LabGuard>,
    work: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.agents.clear();
        for mut d in self.dockerds.drain(..) {
            if let Err(e) = d.stop() {
                eprintln!("stopping dockerd: {e}");
            }
        }
        self.etcd2.take();
        self.dns.take();
        // The agents (killed) leave their per-network namespaces mounted in their run dirs.
        for e in crate::lab::unmount_under(&self.work) {
            eprintln!("{e:#}");
        }
        self.lab.take();
        if let Err(e) = fs::remove_dir_all(&self.work) {
            eprintln!("removing {}: {e}", self.work.display());
        }
    }
}

impl Env {
    fn lab(&self) -> &Lab {
        self.lab
            .as_ref()
            .and_then(|g| g.0.as_ref())
            .expect("lab up")
    }

    fn up(datapath: &str, engine: Engine) -> Result<Env> {
        let mut cfg = LabConfig::new(LAB, 2);
        cfg.kv = KvKind::Etcd;
        cfg.start_agents = false;
        let lab = LabGuard(Some(Lab::up(cfg)?));
        let work = PathBuf::from(format!("/tmp/{LAB}-work"));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)?;
        let mut env = Env {
            datapath: datapath.to_string(),
            engine,
            agents: Vec::new(),
            dockerds: Vec::new(),
            etcd2: None,
            dns: None,
            lab: Some(lab),
            work,
        };
        if engine == Engine::Host {
            env.start_etcd2()?;
        }
        env.start_dns()?;
        for i in 0..2 {
            let h = env.lab().host(i).clone();
            let bin = env.lab().state.bin_dir.clone();
            let mut opts = DockerdOpts::for_engine(i as u8 + 1, engine, &[&env.work, &bin]);
            opts.dns = Some(UNDERLAY_GW.parse()?);
            if engine == Engine::Host {
                opts.extra_args = vec![
                    format!("--cluster-store=etcd://{UNDERLAY_GW}:{ETCD2_PORT}"),
                    format!("--cluster-advertise={}:2376", h.addr),
                ];
            }
            let d = Dockerd::start(&h.ns, &env.work, opts)
                .with_context(|| format!("dockerd {engine} on {}", h.ns))?;
            if i == 0 {
                let (v, api) = d.server_version()?;
                println!("Docker Engine {v} (API {api}) from {engine}");
            }
            d.import_busybox(IMAGE)?;
            env.dockerds.push(d);
            env.start_agent(i)?;
        }
        Ok(env)
    }

    /// Docker's own overlay on this engine: "classic" (cluster store) or "Swarm".
    fn theirs(&self) -> &'static str {
        if self.engine == Engine::Host {
            "classic"
        } else {
            "Swarm"
        }
    }

    /// Host 1 initialises a swarm (the manager), host 2 joins it as a worker.
    fn swarm_up(&self) -> Result<()> {
        let (a1, a2) = (
            self.lab().host(0).addr.clone(),
            self.lab().host(1).addr.clone(),
        );
        self.docker(
            0,
            &[
                "swarm",
                "init",
                "--advertise-addr",
                &a1,
                "--listen-addr",
                &format!("{a1}:2377"),
                "--default-addr-pool",
                SWARM_POOL,
                "--default-addr-pool-mask-length",
                "24",
            ],
        )
        .context("docker swarm init on h1")?;
        let token = self.docker(0, &["swarm", "join-token", "-q", "worker"])?;
        self.docker(
            1,
            &[
                "swarm",
                "join",
                "--token",
                &token,
                "--advertise-addr",
                &a2,
                "--listen-addr",
                &format!("{a2}:2377"),
                &format!("{a1}:2377"),
            ],
        )
        .context("docker swarm join on h2")?;
        Ok(())
    }

    fn start_etcd2(&mut self) -> Result<()> {
        let ul = format!("{LAB}-ul");
        let client = format!("http://{UNDERLAY_GW}:{ETCD2_PORT}");
        let log = fs::File::create(self.work.join("etcd2.log"))?;
        let child = in_ns(&ul, "etcd")
            .args(["--name", "docker", "--enable-v2=true", "--data-dir"])
            .arg(self.work.join("etcd2"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args(["--listen-peer-urls", "http://127.0.0.1:2390"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2390"])
            .args(["--initial-cluster", "docker=http://127.0.0.1:2390"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd with the v2 API")?;
        self.etcd2 = Some(Proc(child));
        wait_for("etcd v2 to answer", Duration::from_secs(20), || {
            let o = in_ns(&ul, "curl")
                .args(["-sf", &format!("{client}/v2/keys/")])
                .output()
                .ok()?;
            o.status.success().then_some(())
        })
    }

    /// A DNS server that refuses every query at once, as the containers' upstream: Docker's
    /// resolver forwards names it does not know, and a silent upstream would stall each miss
    /// for seconds (measured-here.md), which would swamp the convergence figure.
    fn start_dns(&mut self) -> Result<()> {
        let ul = format!("{LAB}-ul");
        let child = in_ns(&ul, "dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
            ])
            .arg(format!("--listen-address={UNDERLAY_GW}"))
            .arg(format!(
                "--pid-file={}",
                self.work.join("dnsmasq.pid").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (dnsmasq-base)")?;
        self.dns = Some(Proc(child));
        wait_for("dnsmasq to listen", Duration::from_secs(10), || {
            let o = in_ns(&ul, "ss")
                .args(["-Hlun", "sport = :53"])
                .output()
                .ok()?;
            (o.status.success() && !o.stdout.is_empty()).then_some(())
        })
    }

    fn start_agent(&mut self, i: usize) -> Result<()> {
        let h = self.lab().host(i).clone();
        let kv = self.lab().state.kv_url.clone();
        let bin = self.lab().state.bin_dir.join("overlay-agent");
        let dir = self.work.join(format!("agent-{}", h.id));
        fs::create_dir_all(&dir)?;
        let log = fs::File::create(dir.join("agent.log"))?;
        let d = &self.dockerds[i];
        let mut cmd = d.host_command(&bin)?;
        cmd.args([
            "--host-id",
            &h.id,
            "--advertise-addr",
            &h.addr,
            "--kv",
            &kv,
            "--datapath",
            &self.datapath,
        ])
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args([
            "--lease-ttl",
            "4",
            "--resync-interval",
            "2",
            "--docker-plugin",
            // Docker's classic overlay runs on the same hosts and binds VXLAN's port 4789
            // for its own devices; the eBPF path's collect-metadata device would take it
            // for every VNI.
            "--vxlan-port",
            "8472",
        ])
        .env(
            "DOCKER_HOST",
            format!("unix://{}", d.socket_path().display()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        self.agents
            .push(Proc(cmd.spawn().context("starting overlay-agent")?));
        let sock = PathBuf::from(format!(
            "/proc/{}/root/run/docker/plugins/ovl.sock",
            d.pid().unwrap_or(0)
        ));
        wait_for(
            &format!("agent {} plugin socket", h.id),
            Duration::from_secs(30),
            || sock.exists().then_some(()),
        )
    }

    fn docker(&self, i: usize, args: &[&str]) -> Result<String> {
        Ok(self.dockerds[i].docker_ok(args)?)
    }

    fn pid_of(&self, i: usize, c: &str) -> Result<String> {
        self.docker(i, &["inspect", "-f", "{{.State.Pid}}", c])
    }

    fn ip_of(&self, i: usize, c: &str, net: &str) -> Result<String> {
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
}

/// Where a command runs: a named namespace, or a container's network namespace by PID.
#[derive(Clone)]
enum Place {
    Ns(String),
    Pid(String),
}

impl Place {
    fn cmd(&self, program: &str) -> Command {
        match self {
            Place::Ns(ns) => in_ns(ns, program),
            Place::Pid(pid) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", pid, "-n", "--", program]);
                c
            }
        }
    }
}

/// One measured path between two endpoints.
struct PathSpec {
    label: &'static str,
    client: Place,
    server: Place,
    server_ip: String,
}

fn iperf(p: &PathSpec) -> Result<f64> {
    let server = Proc(
        p.server
            .cmd("iperf3")
            .args(["-s", "-1", "-B", &p.server_ip])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 -s (is iperf3 installed?)")?,
    );
    wait_for(
        &format!("iperf3 server of {}", p.label),
        Duration::from_secs(10),
        || {
            let o = p
                .server
                .cmd("ss")
                .args(["-Hltn", "sport = :5201"])
                .output()
                .ok()?;
            (o.status.success() && !o.stdout.is_empty()).then_some(())
        },
    )?;
    let out = p
        .client
        .cmd("iperf3")
        .args(["-c", &p.server_ip, "-t", &SECONDS.to_string(), "-J"])
        .output()?;
    drop(server);
    if !out.status.success() {
        bail!(
            "iperf3 on {}: {}{}",
            p.label,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 -J: no sum_received")?;
    Ok(bps / 1e9)
}

fn rtt(p: &PathSpec) -> Result<f64> {
    let out = p
        .client
        .cmd("ping")
        .args(["-q", "-c", "50", "-i", "0.01", "-W", "1", &p.server_ip])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_rtt_avg(&text).with_context(|| format!("no RTT from ping on {}: {text}", p.label))
}

/// The avg field of `rtt min/avg/max/mdev = 0.030/0.045/0.090/0.010 ms`.
fn parse_rtt_avg(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    line.split('=')
        .nth(1)?
        .trim()
        .split('/')
        .nth(1)?
        .parse()
        .ok()
}

/// `docker run -d` of a sleeping container `name` on host 2, on network `net`.
fn run_sleeper(env: &Env, name: &str, net: &str) -> Result<()> {
    env.docker(
        1,
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
    )?;
    Ok(())
}

/// `docker run` on host 2 until the container on host 1 (`from_pid`) pings it by name; ms.
/// Returns (total ms from `docker run`, ms after `docker run` returned).
fn convergence(env: &Env, net: &str, from_pid: &str, name: &str) -> Result<(f64, f64)> {
    let start = Instant::now();
    run_sleeper(env, name, net)?;
    let started = start.elapsed();
    // A tight poll: the figure after `docker run` returned is a few milliseconds.
    let res = poll_every(
        &format!("{name} reachable by name on {net}"),
        Duration::from_secs(60),
        Duration::from_millis(2),
        || {
            // The container's own mount namespace: its /etc/hosts and resolv.conf, busybox ping.
            let o = Command::new("nsenter")
                .args(["-t", from_pid, "-m", "-n", "--", "ping", "-c1", "-W1", name])
                .output()
                .ok()?;
            o.status.success().then(|| start.elapsed())
        },
    );
    let _ = env.docker(1, &["rm", "-f", name]);
    let total = res?;
    eprintln!(
        "{net} {name}: docker run returned after {started:?}, reachable by name after {total:?}"
    );
    Ok((
        total.as_secs_f64() * 1000.0,
        total.saturating_sub(started).as_secs_f64() * 1000.0,
    ))
}

/// How long `docker run -d` takes on host 2 with no network at all: the part of every
/// convergence figure that is Docker's own container start.
fn run_alone(env: &Env, name: &str) -> Result<f64> {
    let start = Instant::now();
    run_sleeper(env, name, "none")?;
    let took = start.elapsed();
    let _ = env.docker(1, &["rm", "-f", name]);
    eprintln!("none {name}: docker run returned after {took:?}");
    Ok(took.as_secs_f64() * 1000.0)
}

#[derive(Default)]
struct Samples {
    gbps: Vec<f64>,
    rtt_ms: Vec<f64>,
    conv_ms: Vec<f64>,
    after_run_ms: Vec<f64>,
    create_ms: Vec<f64>,
    error: Option<String>,
}

fn fmt(v: &mut [f64], digits: usize) -> String {
    if v.is_empty() {
        "n/a".into()
    } else {
        format!("{:.*}", digits, median(v))
    }
}

fn ratio(a: &mut [f64], b: &mut [f64]) -> String {
    if a.is_empty() || b.is_empty() {
        "n/a".into()
    } else {
        format!("{:.2}", median(a) / median(b))
    }
}

/// `docker network create -d ovl --ipam-driver ovl NAME` on host `i`.
fn create_ours(env: &Env, i: usize, name: &str) -> Result<()> {
    env.docker(
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
    )?;
    Ok(())
}

/// `docker network create` of Docker's own overlay `name` on host 1 (`--attachable` for
/// Swarm's, so plain containers may join it).
fn create_theirs(env: &Env, name: &str, subnet: Option<&str>) -> Result<()> {
    let mut args = vec!["network", "create", "-d", "overlay"];
    if env.engine != Engine::Host {
        args.push("--attachable");
    }
    if let Some(s) = subnet {
        args.extend(["--subnet", s]);
    }
    args.push(name);
    env.docker(0, &args)
        .with_context(|| format!("docker network create -d overlay ({})", env.theirs()))?;
    Ok(())
}

/// Brings up Docker's own overlay; `Err` says exactly why not.
fn classic_up(env: &Env) -> Result<(String, String, String)> {
    if env.engine != Engine::Host {
        env.swarm_up()?;
    }
    create_theirs(env, "classic", Some("10.201.0.0/24"))?;
    if env.engine == Engine::Host {
        wait_for(
            "classic network visible on host 2",
            Duration::from_secs(30),
            || {
                env.docker(1, &["network", "inspect", "classic"])
                    .ok()
                    .map(|_| ())
            },
        )?;
    }
    env.docker(
        0,
        &[
            "run",
            "-d",
            "--name",
            "k1",
            "--network",
            "classic",
            IMAGE,
            "sleep",
            "100000",
        ],
    )?;
    env.docker(
        1,
        &[
            "run",
            "-d",
            "--name",
            "k2",
            "--network",
            "classic",
            IMAGE,
            "sleep",
            "100000",
        ],
    )?;
    let (p1, p2, ip2) = (
        env.pid_of(0, "k1")?,
        env.pid_of(1, "k2")?,
        env.ip_of(1, "k2", "classic")?,
    );
    wait_for(
        "k1 pings k2 over the classic overlay",
        Duration::from_secs(30),
        || {
            let o = Place::Pid(p1.clone())
                .cmd("ping")
                .args(["-c1", "-W1", &ip2])
                .output()
                .ok()?;
            o.status.success().then_some(())
        },
    )?;
    Ok((p1, p2, ip2))
}

/// A network created on host 1 only (ours, or Docker's own overlay), until `docker run
/// --network` on host 2 succeeds on it; ms from the create.
fn create_to_usable(env: &Env, ours: bool, run: usize) -> Result<f64> {
    let net = format!("{}{run}", if ours { "cro" } else { "crd" });
    let c = format!("{net}c");
    let start = Instant::now();
    if ours {
        create_ours(env, 0, &net)?;
    } else {
        create_theirs(env, &net, None)?;
    }
    let res = poll_every(
        &format!("{net} usable on h2"),
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let args = [
                "run",
                "-d",
                "--name",
                &c,
                "--network",
                &net,
                IMAGE,
                "sleep",
                "100000",
            ];
            match env.docker(1, &args) {
                Ok(_) => Some(start.elapsed()),
                Err(_) => {
                    // A container created but not started would block the name.
                    let _ = env.docker(1, &["rm", "-f", &c]);
                    None
                }
            }
        },
    );
    if let Err(e) = env.docker(1, &["rm", "-f", &c]) {
        eprintln!("removing {c}: {e:#}");
    }
    if let Err(e) = poll_every(
        &format!("{net} removed"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || env.docker(0, &["network", "rm", &net]).ok(),
    ) {
        eprintln!("{e:#}");
    }
    let took = res?;
    eprintln!("{net}: usable on h2 {took:?} after the create on h1");
    Ok(took.as_secs_f64() * 1000.0)
}

/// Runs the benchmark once per engine.
pub fn run(runs: usize, datapath: &str, engines: &[Engine]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench docker needs root (network namespaces, dockerd)");
    }
    for &engine in engines {
        run_on(runs, datapath, engine).with_context(|| format!("Docker {engine}"))?;
    }
    Ok(())
}

fn run_on(runs: usize, datapath: &str, engine: Engine) -> Result<()> {
    let runs = runs.max(1);
    let env = Env::up(datapath, engine)?;
    let theirs = format!("Docker overlay ({})", env.theirs());
    for i in 0..2 {
        create_ours(&env, i, "ovlnet")?;
    }
    env.docker(
        0,
        &[
            "run",
            "-d",
            "--name",
            "o1",
            "--network",
            "ovlnet",
            IMAGE,
            "sleep",
            "100000",
        ],
    )?;
    env.docker(
        1,
        &[
            "run",
            "-d",
            "--name",
            "o2",
            "--network",
            "ovlnet",
            IMAGE,
            "sleep",
            "100000",
        ],
    )?;
    let (o1, o2, o2_ip) = (
        env.pid_of(0, "o1")?,
        env.pid_of(1, "o2")?,
        env.ip_of(1, "o2", "ovlnet")?,
    );
    wait_for("o1 pings o2 over ovl", Duration::from_secs(30), || {
        let o = Place::Pid(o1.clone())
            .cmd("ping")
            .args(["-c1", "-W1", &o2_ip])
            .output()
            .ok()?;
        o.status.success().then_some(())
    })?;
    let classic = classic_up(&env);
    let h = |i: usize| Place::Ns(env.lab().host(i).ns.clone());
    let mut paths = vec![
        PathSpec {
            label: "underlay",
            client: h(0),
            server: h(1),
            server_ip: env.lab().host(1).addr.clone(),
        },
        PathSpec {
            label: "Docker + ovl",
            client: Place::Pid(o1.clone()),
            server: Place::Pid(o2.clone()),
            server_ip: o2_ip.clone(),
        },
    ];
    let mut samples: Vec<Samples> =
        vec![Samples::default(), Samples::default(), Samples::default()];
    match &classic {
        Ok((k1, k2, ip)) => paths.push(PathSpec {
            label: "Docker's own overlay",
            client: Place::Pid(k1.clone()),
            server: Place::Pid(k2.clone()),
            server_ip: ip.clone(),
        }),
        Err(e) => samples[2].error = Some(format!("{e:#}")),
    }
    println!(
        "bench docker on Docker {engine}: ovl on the {datapath} datapath against {theirs}, {runs} runs, iperf3 TCP 1 stream {SECONDS} s, ping -c 50 -i 0.01, convergence = docker run on h2 until a container on h1 pings it by name, create -> usable = network create on h1 until docker run on h2 joins it"
    );
    for run in 0..runs {
        for k in 0..paths.len() {
            let idx = (k + run) % paths.len();
            let p = &paths[idx];
            match iperf(p).and_then(|g| Ok((g, rtt(p)?))) {
                Ok((g, r)) => {
                    eprintln!("run {run} {}: {g:.2} Gbit/s, RTT {r:.3} ms", p.label);
                    samples[idx].gbps.push(g);
                    samples[idx].rtt_ms.push(r);
                }
                Err(e) => eprintln!("run {run} {}: {e:#}", p.label),
            }
        }
        match run_alone(&env, &format!("cvn{run}")) {
            Ok(ms) => samples[0].conv_ms.push(ms),
            Err(e) => eprintln!("run {run} docker run --network none: {e:#}"),
        }
        match convergence(&env, "ovlnet", &o1, &format!("cvo{run}")) {
            Ok((ms, after)) => {
                samples[1].conv_ms.push(ms);
                samples[1].after_run_ms.push(after);
            }
            Err(e) => eprintln!("run {run} ovl convergence: {e:#}"),
        }
        if let Ok((k1, _, _)) = &classic {
            match convergence(&env, "classic", k1, &format!("cvk{run}")) {
                Ok((ms, after)) => {
                    samples[2].conv_ms.push(ms);
                    samples[2].after_run_ms.push(after);
                }
                Err(e) => eprintln!("run {run} {theirs} convergence: {e:#}"),
            }
        }
        // Alternate which overlay's network is created first.
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for ours in order {
            if !ours && classic.is_err() {
                continue;
            }
            match create_to_usable(&env, ours, run) {
                Ok(ms) => samples[if ours { 1 } else { 2 }].create_ms.push(ms),
                Err(e) => eprintln!("run {run} create -> usable (ours: {ours}): {e:#}"),
            }
        }
    }
    let [u, o, c] = &mut samples[..] else {
        unreachable!()
    };
    println!();
    println!(
        "| metric (median of {runs}), Docker {engine} | underlay | Docker + ovl | {theirs} | ovl / underlay | ovl / {} |",
        env.theirs()
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| throughput, Gbit/s | {} | {} | {} | {} | {} |",
        fmt(&mut u.gbps, 2),
        fmt(&mut o.gbps, 2),
        fmt(&mut c.gbps, 2),
        ratio(&mut o.gbps, &mut u.gbps),
        ratio(&mut o.gbps, &mut c.gbps)
    );
    println!(
        "| ping RTT, ms | {} | {} | {} | {} | {} |",
        fmt(&mut u.rtt_ms, 3),
        fmt(&mut o.rtt_ms, 3),
        fmt(&mut c.rtt_ms, 3),
        ratio(&mut o.rtt_ms, &mut u.rtt_ms),
        ratio(&mut o.rtt_ms, &mut c.rtt_ms)
    );
    println!(
        "| convergence (run -> ping by name), ms | - | {} | {} | - | {} |",
        fmt(&mut o.conv_ms, 0),
        fmt(&mut c.conv_ms, 0),
        ratio(&mut o.conv_ms, &mut c.conv_ms)
    );
    println!(
        "| `docker run --network none` alone (no driver can beat it), ms | {} | - | - | - | - |",
        fmt(&mut u.conv_ms, 0)
    );
    println!(
        "| of which after `docker run` returned, ms | - | {} | {} | - | {} |",
        fmt(&mut o.after_run_ms, 0),
        fmt(&mut c.after_run_ms, 0),
        ratio(&mut o.after_run_ms, &mut c.after_run_ms)
    );
    println!(
        "| network created on h1 -> `docker run` on h2 joins it, ms | - | {} | {} | - | {} |",
        fmt(&mut o.create_ms, 0),
        fmt(&mut c.create_ms, 0),
        ratio(&mut o.create_ms, &mut c.create_ms)
    );
    if let Some(e) = &c.error {
        println!("\n{theirs} could not be brought up: {e}");
    }
    if let Ok(keep) = std::env::var("OVL_KEEP_LOGS") {
        let _ = fs::create_dir_all(&keep);
        for h in ["h1", "h2"] {
            let _ = fs::copy(
                env.work.join(format!("agent-{h}/agent.log")),
                Path::new(&keep).join(format!("bench-{h}.log")),
            );
        }
    }
    drop(env);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_parsing() {
        assert_eq!(
            parse_rtt_avg("rtt min/avg/max/mdev = 0.030/0.045/0.090/0.010 ms"),
            Some(0.045)
        );
        assert_eq!(
            parse_rtt_avg("round-trip min/avg/max = 0.1/0.2/0.3 ms"),
            Some(0.2)
        );
        assert_eq!(parse_rtt_avg("nothing"), None);
    }

    #[test]
    fn ratios_and_formatting() {
        assert_eq!(ratio(&mut [2.0, 4.0, 3.0], &mut [1.0]), "3.00");
        assert_eq!(ratio(&mut [], &mut [1.0]), "n/a");
        assert_eq!(fmt(&mut [1.0, 2.0, 9.0], 1), "2.0");
    }
}
