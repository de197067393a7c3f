//! `cargo xtask`: lab, demo, benchmarks, the Vagrant lab and the Debian package. Run `cargo xtask --help`.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use xtask::{
    chaos,
    lab::{self, DatapathSel, KvKind, Lab, LabConfig, LabGuard},
    sh, vagrant,
};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "overlay-agent developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The netns lab: hosts as network namespaces on one machine.
    #[command(subcommand)]
    Lab(LabCmd),
    /// Benchmarks (competing paths side by side in one run; medians and ratios).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// The Vagrant lab: real VMs (libvirt) running the agent, Docker and etcd.
    #[command(subcommand)]
    Vagrant(vagrant::VagrantCmd),
    /// The Debian package: target/debian/overlay-agent_<version>_amd64.deb (cargo-deb; run
    /// scripts/package-deps.sh first), checked after it is built.
    Package(xtask::package::PackageArgs),
    /// Faults with invariants: a 3-host lab on a 3-member etcd, a workload, a seeded schedule
    /// of faults; a verdict per invariant (non-zero exit on a violation).
    Chaos {
        /// Length of the run in minutes (faults end by then; the final checks follow).
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Seed of the schedule and the workload (the same seed gives the same schedule).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Datapath of the hosts.
        #[arg(long, value_enum, default_value_t = DatapathSel::Kernel)]
        datapath: DatapathSel,
        /// Lab name (prefix of its namespaces).
        #[arg(long, default_value = "chaos")]
        name: String,
        /// Where the report and the logs go (default: target/chaos/seed-S).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Print the schedule and exit.
        #[arg(long)]
        schedule_only: bool,
        /// Print only the report, not every event as it happens.
        #[arg(long)]
        quiet: bool,
        /// Leave these faults out of the schedule (repeatable): kill-leader, replace-member,
        /// cut-host, kill-agent-attach, kill-agent-detach, kill-agent-create, pause-all,
        /// pause-leader, delete-container-iface, delete-host-iface, delete-vxlan, delete-fdb,
        /// delete-neigh, delete-flood, fill-state-dir.
        #[arg(long, value_name = "FAULT")]
        without: Vec<String>,
    },
    /// The multi-host demo: a lab, a network, containers on every host talking by name; then
    /// everything is removed.
    Demo {
        /// Number of hosts.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// KV backend.
        #[arg(long, value_enum, default_value_t = KvKind::Embedded)]
        kv: KvKind,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Attach on host 2 until host 1 pings it: p50/p99 over many attaches.
    Converge {
        /// Attaches per KV backend.
        #[arg(long, default_value_t = 25)]
        attaches: usize,
    },
    /// iperf3 throughput and ping RTT: underlay vs kernel path vs eBPF path.
    Datapath {
        /// Runs per path (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Compare an encrypted network with a plain one instead of the eBPF path with the
        /// kernel path: underlay, a plain network and an encrypted network (VXLAN through the
        /// agents' userspace WireGuard) between the same two hosts, all on the kernel
        /// datapath (forced: encrypted networks have no eBPF path yet); also samples the CPU
        /// of the agents, of iperf3 and of the machine during each overlay throughput run.
        #[arg(long)]
        encrypted: bool,
    },
    /// DNS queries per second and latency: the embedded DNS vs dnsmasq.
    Dns {
        /// Runs per server.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Two real agents inside simulated clusters of growing size (records and leases in
    /// etcd): convergence, listing, RSS, idle CPU, etcd requests, event latency.
    Scale {
        /// Cluster sizes in hosts, two of them real (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
        hosts: Vec<usize>,
        /// Endpoints per host.
        #[arg(long, default_value_t = 50)]
        per_host: usize,
        /// Endpoints per network.
        #[arg(long, default_value_t = 200)]
        net_size: usize,
        /// Seconds of the idle window (CPU and etcd requests), at most 90.
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
        /// Endpoints added, then removed, on host 1's network (it must have room for them).
        #[arg(long, default_value_t = 40)]
        events: usize,
        /// Rounds over every size; the table shows each figure's median.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Docker + ovl vs Docker's classic overlay vs the underlay.
    Docker {
        /// Runs per path.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Datapath of the ovl agents: kernel or ebpf.
        #[arg(long, default_value = "kernel", value_parser = ["kernel", "ebpf"])]
        datapath: String,
        /// Docker Engines, one lab each: 20.10 (against the classic overlay), 26, 28
        /// (against Swarm's), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "20.10", value_parser = engine)]
        engine: Vec<ovl_docker::testing::Engine>,
    },
}

fn engine(s: &str) -> Result<ovl_docker::testing::Engine, String> {
    ovl_docker::testing::Engine::ALL
        .into_iter()
        .find(|e| e.label() == s)
        .ok_or_else(|| format!("{s}: one of 20.10, 26, 28"))
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the lab and start one agent per host.
    Up {
        /// Number of hosts.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// KV backend.
        #[arg(long, value_enum, default_value_t = KvKind::Embedded)]
        kv: KvKind,
        /// Datapath of the hosts.
        #[arg(long, value_enum, default_value_t = DatapathSel::Kernel)]
        datapath: DatapathSel,
        /// Members of the etcd cluster (with `--kv etcd`): 1 runs one etcd on 198.18.0.1,
        /// more run a cluster with member N on 198.18.0.(1+N).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=7))]
        etcd_members: u8,
        /// Give each host's state dir a tmpfs of its own of this size (e.g. `4m`).
        #[arg(long)]
        state_tmpfs: Option<String>,
        /// Lab name (prefix of its namespaces).
        #[arg(long, default_value = "lab")]
        name: String,
        /// How to start the agents: `nsenter` (network namespace only) or `ip-netns-exec`
        /// (also a private mount namespace, as the README starts them).
        #[arg(long, value_enum, default_value_t = lab::Launch::Nsenter)]
        launch: lab::Launch,
        /// Extra arguments for every agent (after `--`).
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Remove the lab: processes, namespaces, mounts, files.
    Down {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Run a command inside a host (`overlayctl` is on PATH and talks to that host's agent).
    Exec {
        /// Host: h1, h2... (or 1, 2...).
        host: String,
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show the lab's hosts, agents and logs.
    Status {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
}

/// Builds the agent binaries with the same cargo that runs xtask.
fn build_agent() -> Result<()> {
    build_agent_profile(false)
}

/// Builds the agent binaries in release mode (benchmarks measure what users run) and points
/// the labs at them.
fn build_agent_release() -> Result<()> {
    build_agent_profile(true)?;
    let dir = sh::bin_dir()
        .parent()
        .map(|p| p.join("release"))
        .context("target dir")?;
    // SAFETY: called before any other thread exists.
    unsafe { std::env::set_var("OVERLAY_BIN_DIR", dir) };
    Ok(())
}

fn build_agent_profile(release: bool) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "overlay-agent", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status()?;
    if !status.success() {
        bail!("building overlay-agent failed");
    }
    Ok(())
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Lab(LabCmd::Up {
            hosts,
            kv,
            datapath,
            etcd_members,
            state_tmpfs,
            name,
            launch,
            agent_args,
        }) => {
            if etcd_members > 1 && kv != KvKind::Etcd {
                bail!("--etcd-members needs --kv etcd");
            }
            build_agent()?;
            let mut cfg = LabConfig::new(&name, hosts);
            cfg.kv = kv;
            cfg.datapath = datapath;
            cfg.launch = launch;
            cfg.etcd_members = etcd_members.into();
            cfg.state_tmpfs = state_tmpfs;
            cfg.agent_args = agent_args;
            let lab = Lab::up(cfg)?;
            println!("lab {name} is up: {hosts} hosts, kv {}", lab.state.kv_url);
            for m in &lab.state.members {
                println!(
                    "  etcd member {} at {} log {}",
                    m.name,
                    m.endpoint(),
                    m.log.display()
                );
            }
            for h in &lab.state.hosts {
                println!(
                    "  {}  ns {}  {}  {}  log {}",
                    h.id,
                    h.ns,
                    h.addr,
                    h.datapath,
                    h.log.display()
                );
            }
            println!("try: cargo xtask lab exec h1 -- overlayctl hosts");
            Ok(0)
        }
        Cmd::Lab(LabCmd::Down { name }) => {
            let errs = match Lab::load(&name) {
                Ok(lab) => lab.down(),
                Err(_) => lab::teardown_by_name(&name),
            };
            for e in &errs {
                eprintln!("lab down: {e:#}");
            }
            if errs.is_empty() {
                println!("lab {name} removed");
                Ok(0)
            } else {
                Ok(1)
            }
        }
        Cmd::Lab(LabCmd::Exec { host, name, cmd }) => {
            let lab = Lab::load(&name)?;
            let i = lab.host_index(&host)?;
            let status = lab
                .exec(i, &cmd[0])
                .args(&cmd[1..])
                .status()
                .context("exec")?;
            Ok(status.code().unwrap_or(1))
        }
        Cmd::Lab(LabCmd::Status { name }) => {
            let lab = Lab::load(&name)?;
            println!("lab {name}: kv {}", lab.state.kv_url);
            for (i, h) in lab.state.hosts.iter().enumerate() {
                let running = h
                    .pid
                    .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
                println!(
                    "  {} {} {} agent {}",
                    h.id,
                    h.addr,
                    h.datapath,
                    if running { "running" } else { "stopped" }
                );
                if let Ok(o) = lab.ctl(i, &["hosts"]) {
                    print!("{}", String::from_utf8_lossy(&o.stdout));
                }
            }
            Ok(0)
        }
        Cmd::Bench(b) => {
            build_agent_release()?;
            match b {
                BenchCmd::Converge { attaches } => xtask::bench::converge::run(attaches)?,
                BenchCmd::Datapath { runs, encrypted } => {
                    xtask::bench::datapath::run(runs, encrypted)?
                }
                BenchCmd::Dns { runs } => xtask::bench::dns::run(runs)?,
                BenchCmd::Docker {
                    runs,
                    datapath,
                    engine,
                } => xtask::bench::docker::run(runs, &datapath, &engine)?,
                BenchCmd::Scale {
                    hosts,
                    per_host,
                    net_size,
                    idle_secs,
                    events,
                    runs,
                } => xtask::bench::scale::run(&xtask::bench::scale::Opts {
                    hosts,
                    per_host,
                    net_size,
                    idle_secs,
                    events,
                    runs,
                })?,
            }
            Ok(0)
        }
        Cmd::Vagrant(c) => vagrant::run(c),
        Cmd::Package(args) => {
            xtask::package::run(&args)?;
            Ok(0)
        }
        Cmd::Chaos {
            minutes,
            seed,
            datapath,
            name,
            out,
            schedule_only,
            quiet,
            without,
        } => {
            if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
                bail!("--minutes must be more than 0 and at most a day");
            }
            let length = std::time::Duration::from_secs_f64(minutes * 60.0);
            if schedule_only {
                let s = chaos::schedule_of(seed, length)
                    .without(&without)
                    .map_err(anyhow::Error::msg)?;
                print!("{s}");
                return Ok(0);
            }
            build_agent()?;
            let out = match out {
                Some(o) => o,
                None => sh::bin_dir()
                    .parent()
                    .context("target dir")?
                    .join("chaos")
                    .join(format!("seed-{seed}")),
            };
            let cfg = chaos::Config {
                name,
                seed,
                length,
                datapath,
                out: out.clone(),
                verbose: !quiet,
                without,
            };
            let report = chaos::run(&cfg)?;
            println!("{report}");
            println!("report and logs: {}", out.display());
            Ok(if report.passed() { 0 } else { 1 })
        }
        Cmd::Demo { hosts, kv } => {
            build_agent()?;
            demo(hosts, kv)?;
            Ok(0)
        }
    }
}

fn show(lab: &Lab, i: usize, args: &[&str]) -> Result<()> {
    println!("\n$ [{}] overlayctl {}", lab.host(i).id, args.join(" "));
    let out = lab.ctl(i, args)?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "overlayctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs a command in a container namespace as a user would (`ip netns exec`), showing it.
fn in_container(ns: &str, args: &[&str]) -> Result<String> {
    println!("\n$ ip netns exec {ns} {}", args.join(" "));
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    if !out.status.success() {
        bail!(
            "{} failed in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn demo(hosts: usize, kv: KvKind) -> Result<()> {
    if hosts < 2 {
        bail!("the demo needs at least 2 hosts");
    }
    let mut cfg = LabConfig::new("demo", hosts);
    cfg.kv = kv;
    println!(
        "== a {hosts}-host lab: namespaces on an underlay bridge, one agent per host (kv: {kv:?})"
    );
    let lab = LabGuard(Some(Lab::up(cfg)?));
    sh::wait_for(
        "every host to see every other",
        std::time::Duration::from_secs(10),
        || {
            let hs: Vec<serde_json::Value> = lab.ctl_json(0, &["hosts"]).ok()?;
            (hs.iter().filter(|h| h["alive"] == true).count() == hosts).then_some(())
        },
    )?;
    show(&lab, 0, &["hosts"])?;

    println!("\n== one network, one container per host (containers are network namespaces here)");
    show(&lab, 0, &["network", "create", "net1"])?;
    let mut containers = Vec::new();
    for i in 0..hosts {
        let name = format!("c{}", i + 1);
        let ns = lab.add_container(&name)?;
        show(
            &lab,
            i,
            &[
                "attach",
                "net1",
                "--name",
                &name,
                "--netns",
                &format!("/run/netns/{ns}"),
                "--alias",
                "web",
            ],
        )?;
        containers.push(ns);
    }
    show(&lab, 0, &["endpoints"])?;
    let (c1, c2) = (&containers[0], &containers[1]);

    println!("\n== names: /etc/hosts and the embedded DNS, across hosts");
    in_container(c1, &["cat", "/etc/hosts"])?;
    in_container(c1, &["ping", "-c", "2", "-W", "1", "c2.net1"])?;
    in_container(c1, &["dig", "+short", "@127.0.0.11", "web"])?;
    show(&lab, 0, &["dns", "lookup", "c2", "--from", "c1"])?;

    println!("\n== broadcast reaches every host (Docker's overlay never forwarded it)");
    for ns in &containers[1..] {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.icmp_echo_ignore_broadcasts=0",
            ])
            .status()?;
    }
    in_container(c1, &["ping", "-b", "-c", "2", "-W", "1", "10.10.0.255"])?;

    println!("\n== the way out: the gateway bridge NATs to the lab's outside namespace");
    in_container(c1, &["ping", "-c", "1", "-W", "1", lab::OUTSIDE_ADDR])?;

    println!("\n== what host 1 programmed vs. what it should");
    show(&lab, 0, &["peers", "net1"])?;

    println!("\n== detach c2: its entries and names are gone everywhere");
    show(&lab, 1, &["detach", "net1", "--name", "c2"])?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = Command::new("ip")
        .args(["netns", "exec", c1, "getent", "hosts", "c2"])
        .output()?;
    println!(
        "getent hosts c2 in c1: {}",
        if out.status.success() {
            "still there (unexpected)"
        } else {
            "not found"
        }
    );
    let _ = c2;
    show(&lab, 0, &["status"])?;
    println!("\n== tearing the lab down");
    drop(lab);
    println!("demo done: every namespace, process and file of the lab is removed");
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
