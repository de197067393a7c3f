//! The Vagrant lab: real VMs running the agent, Docker Engine and etcd (`vagrant/`).
//!
//! - [`build_box`]: a Debian bookworm libvirt box made with debootstrap
//!   (`vagrant/box/build.sh`), cached under [`Paths::cache`] and named after a hash of its
//!   recipe, so it is built once and rebuilt only when the recipe changes (or on `--force`).
//! - [`up`]: builds the Debian package (`cargo xtask package`), starts libvirt if nothing
//!   runs it (this machine has no systemd), creates the lab's storage pool and runs
//!   `vagrant up`; provisioning installs the package on every node.
//! - [`scenario`]: the package and its unit on every node (version, ordering before
//!   `docker.service`, readiness: Docker starts only after the plugin socket answers), then
//!   the end-to-end scenario of the original multi-host users, through `docker` on the
//!   nodes: one network created on every node, a leader and followers that reach it by name,
//!   broadcast and multicast across hosts, the way out through Docker's gateway bridge, a
//!   ping through `systemctl restart overlay-agent` on both ends without loss, and the
//!   datapath left in place by `systemctl stop`; then a second `vagrant provision` that must
//!   change nothing.
//! - [`down`]: removes everything `up` made: VMs, libvirt networks, volumes and pool, the
//!   daemons it started (by PID), leftover `LIBVIRT_*` firewall chains, state files; then
//!   checks that nothing is left.
//!
//! Addresses stay in the lab ranges: management network `198.18.51.0/24` (isolated: the
//! guests reach only the host), underlay `198.18.52.0/24` with node N at `198.18.52.(10+N)`.
//! State lives in `target/vagrant/` (removed by `down`); the box cache and `VAGRANT_HOME`
//! live in `/var/cache/overlay-vagrant` (or `OVL_VAGRANT_CACHE`) and survive `down`.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Name of the locally built box, as the Vagrantfile expects it for libvirt.
pub const BOX_NAME: &str = "ovl-bookworm";
/// The libvirt storage pool holding the lab's volumes (made by `up`, removed by `down`).
pub const POOL: &str = "ovl-vagrant";
/// The libvirt networks the Vagrantfile defines: management (isolated) and underlay.
pub const NETWORKS: [&str; 2] = ["ovl-mgmt", "ovl-underlay"];
/// Prefix of the lab's libvirt domains (`default_prefix` "ovl-" + machine name).
pub const DOMAIN_PREFIX: &str = "ovl-node";
/// First three octets of the underlay; node N is at `.(10+N)`.
pub const UNDERLAY: &str = "198.18.52";
/// The overlay network the scenario creates on every node.
pub const NET: &str = "appnet";
/// libvirt connection used throughout.
const LIBVIRT_URI: &str = "qemu:///system";
/// Highest node count the Vagrantfile accepts; `down` without state looks for all of them.
const MAX_NODES: usize = 9;

/// `cargo xtask vagrant ...`.
#[derive(Debug, clap::Subcommand)]
pub enum VagrantCmd {
    /// Build the Debian bookworm libvirt box with debootstrap (cached; built once).
    Box {
        /// Rebuild even if the box is cached.
        #[arg(long)]
        force: bool,
    },
    /// Build the package and the box, start libvirt if needed, `vagrant up` the nodes.
    Up(Size),
    /// Up, the end-to-end scenario, a second provisioning, down; every phase timed.
    Test {
        #[command(flatten)]
        size: Size,
        /// Leave the lab running afterwards.
        #[arg(long)]
        keep: bool,
        /// Run the scenario on the lab already up (and leave it up).
        #[arg(long)]
        reuse: bool,
    },
    /// Remove the VMs, libvirt networks, volumes and pool, the daemons `up` started and
    /// leftover firewall chains; then check that nothing is left.
    Down,
}

/// Lab size flags; unset ones come from the variables the Vagrantfile reads.
#[derive(Debug, clap::Args)]
pub struct Size {
    /// Number of nodes, node1 also runs etcd [default: OVL_NODES or 3].
    #[arg(long)]
    nodes: Option<usize>,
    /// Memory per node in MiB [default: OVL_MEMORY or 1024].
    #[arg(long)]
    memory: Option<u32>,
    /// vCPUs per node [default: OVL_CPUS or 1].
    #[arg(long)]
    cpus: Option<u32>,
}

impl Size {
    /// Flags first, then the environment, then the defaults (3 nodes, 1024 MiB, 1 vCPU).
    pub fn settings(&self) -> Result<Settings> {
        fn env_or<T: std::str::FromStr>(flag: Option<T>, var: &str, default: T) -> Result<T> {
            match (flag, std::env::var(var)) {
                (Some(v), _) => Ok(v),
                (None, Ok(s)) => s.parse().map_err(|_| anyhow!("bad {var}={s:?}")),
                (None, Err(_)) => Ok(default),
            }
        }
        Ok(Settings {
            nodes: env_or(self.nodes, "OVL_NODES", 3)?,
            memory_mib: env_or(self.memory, "OVL_MEMORY", 1024)?,
            cpus: env_or(self.cpus, "OVL_CPUS", 1)?,
        })
    }
}

/// Runs one `cargo xtask vagrant` command; the process exit code.
pub fn run(cmd: VagrantCmd) -> Result<i32> {
    let paths = Paths::new();
    match cmd {
        VagrantCmd::Box { force } => {
            let t = Instant::now();
            build_box(&paths, force)?;
            println!("box: {:.1} s", t.elapsed().as_secs_f64());
        }
        VagrantCmd::Up(size) => {
            let mut timer = Timer::new();
            up(&paths, &size.settings()?, &mut timer)?;
            timer.report();
            println!(
                "lab up; for example: cd vagrant && vagrant ssh node1 -c 'sudo overlayctl hosts' \
                 (with VAGRANT_HOME={})",
                paths.vagrant_home().display()
            );
        }
        VagrantCmd::Test { size, keep, reuse } => test(&paths, &size.settings()?, keep, reuse)?,
        VagrantCmd::Down => {
            let errs = down(&paths);
            for e in &errs {
                eprintln!("vagrant down: {e:#}");
            }
            if !errs.is_empty() {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// Lab size and VM resources.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Number of nodes (node1 also runs etcd).
    pub nodes: usize,
    /// Memory per node, MiB.
    pub memory_mib: u32,
    /// vCPUs per node.
    pub cpus: u32,
}

/// Where the lab keeps its files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The workspace root.
    pub workspace: PathBuf,
    /// `vagrant/` (the Vagrantfile and provisioning).
    pub vagrant_dir: PathBuf,
    /// Run state (`target/vagrant`): PIDs, the staged package, pool, consoles, SSH config.
    pub state: PathBuf,
    /// What survives `down`: built boxes and `VAGRANT_HOME`.
    pub cache: PathBuf,
}

impl Paths {
    /// The paths of this workspace; the cache is `OVL_VAGRANT_CACHE` or
    /// `/var/cache/overlay-vagrant`.
    pub fn new() -> Self {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf();
        let cache = std::env::var_os("OVL_VAGRANT_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/overlay-vagrant"));
        Self {
            vagrant_dir: workspace.join("vagrant"),
            state: workspace.join("target/vagrant"),
            workspace,
            cache,
        }
    }

    fn state_file(&self) -> PathBuf {
        self.state.join("state.json")
    }

    fn ssh_config(&self) -> PathBuf {
        self.state.join("ssh_config")
    }

    fn ssh_control_dir(&self) -> PathBuf {
        self.state.join("ssh")
    }

    fn vagrant_home(&self) -> PathBuf {
        self.cache.join("vagrant-home")
    }
}

impl Default for Paths {
    fn default() -> Self {
        Self::new()
    }
}

/// What `up` started and must be undone by `down`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Node count the lab was brought up with.
    nodes: Option<usize>,
    /// libvirtd we started (None: it was already running, not ours to stop).
    libvirtd_pid: Option<i32>,
    /// virtlogd we started.
    virtlogd_pid: Option<i32>,
    /// `/run/libvirt` was made by the daemons we started (removed after they stop).
    #[serde(default)]
    made_run_dir: bool,
    /// nftables tables (`ip filter`, ...) that existed before we started libvirtd: the
    /// others it made through iptables, and `down` removes them once they are empty.
    #[serde(default)]
    tables_before: Option<Vec<String>>,
    /// Version of the package the nodes were provisioned with.
    #[serde(default)]
    package: Option<String>,
}

impl State {
    fn load(paths: &Paths) -> State {
        fs::read(paths.state_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, paths: &Paths) -> Result<()> {
        fs::create_dir_all(&paths.state)?;
        fs::write(paths.state_file(), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// Wall-clock time of each phase, reported at the end.
#[derive(Debug)]
pub struct Timer {
    start: Instant,
    phases: Vec<(String, Duration, bool)>,
}

impl Default for Timer {
    fn default() -> Self {
        Self::new()
    }
}

impl Timer {
    /// Starts the clock.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Runs one named phase and records how long it took and whether it passed.
    pub fn phase<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("\n== {name}");
        let t = Instant::now();
        let r = f();
        let d = t.elapsed();
        println!(
            "-- {name}: {} ({:.1} s)",
            if r.is_ok() { "ok" } else { "FAILED" },
            d.as_secs_f64()
        );
        self.phases.push((name.to_string(), d, r.is_ok()));
        r
    }

    /// Prints every phase and the total.
    pub fn report(&self) {
        println!("\n== timings");
        for (name, d, ok) in &self.phases {
            println!(
                "  {:>7.1} s  {}{}",
                d.as_secs_f64(),
                name,
                if *ok { "" } else { "  (failed)" }
            );
        }
        println!("  {:>7.1} s  total", self.start.elapsed().as_secs_f64());
    }
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the Vagrant lab needs root (libvirt, debootstrap, firewall chains)");
    }
    Ok(())
}

/// Runs a command, failing with its stderr when it exits non-zero.
fn checked(cmd: &mut Command) -> Result<Output> {
    crate::sh::run(cmd)
}

/// Runs a command with inherited stdout/stderr (long-running steps show their progress).
fn run_shown(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn virsh(args: &[&str]) -> Command {
    // `timeout`: a wedged libvirtd must not hang the lab forever.
    let mut c = Command::new("timeout");
    c.args(["60", "virsh", "-q", "-c", LIBVIRT_URI]).args(args);
    c
}

fn virsh_ok(args: &[&str]) -> bool {
    virsh(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn virsh_lines(args: &[&str]) -> Vec<String> {
    virsh(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn comm_of(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Every process whose command line contains `needle`, as (pid, command line).
fn processes_matching(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id() as i32;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push((pid, cmdline.trim().to_string()));
            }
        }
    }
    found
}

/// FNV-1a: a hash that stays the same across Rust releases (it names cached boxes).
fn fnv1a(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The cached box for the current recipe: `ovl-bookworm-<hash of the recipe>.box`.
pub fn box_file(paths: &Paths) -> Result<PathBuf> {
    let mut h = 0xcbf2_9ce4_8422_2325;
    for f in ["box/build.sh", "box/Vagrantfile.box"] {
        let p = paths.vagrant_dir.join(f);
        h = fnv1a(
            &fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
            h,
        );
    }
    Ok(paths.cache.join(format!("{BOX_NAME}-{h:016x}.box")))
}

/// Builds the libvirt box unless the current recipe's box is cached (or `force`).
pub fn build_box(paths: &Paths, force: bool) -> Result<PathBuf> {
    let file = box_file(paths)?;
    if file.exists() && !force {
        println!(
            "box cached: {} ({} MiB)",
            file.display(),
            fs::metadata(&file)?.len() >> 20
        );
        return Ok(file);
    }
    require_root()?;
    for tool in ["debootstrap", "mkfs.ext4", "qemu-img"] {
        if !command_exists(tool) {
            bail!("{tool} is missing: run scripts/vagrant-deps.sh");
        }
    }
    fs::create_dir_all(&paths.cache)?;
    println!(
        "building the box {} (debootstrap; a few minutes)",
        file.display()
    );
    run_shown(Command::new(paths.vagrant_dir.join("box/build.sh")).arg(&file))?;
    // Boxes of older recipes are of no further use.
    for e in fs::read_dir(&paths.cache)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{BOX_NAME}-")) && name.ends_with(".box") && e.path() != file {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(file)
}

fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join(name).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(name).is_file())
    })
}

fn check_deps(paths: &Paths) -> Result<()> {
    let missing: Vec<&str> = [
        "vagrant",
        "virsh",
        "libvirtd",
        "virtlogd",
        "qemu-system-x86_64",
        "qemu-img",
        "debootstrap",
        "ssh",
        "iptables",
    ]
    .into_iter()
    .filter(|c| !command_exists(c))
    .collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: run scripts/vagrant-deps.sh",
            missing.join(", ")
        );
    }
    let out = checked(vagrant(paths, 1, None).args(["plugin", "list"]))?;
    if !String::from_utf8_lossy(&out.stdout).contains("vagrant-libvirt") {
        bail!("the vagrant-libvirt plugin is missing: run scripts/vagrant-deps.sh");
    }
    Ok(())
}

/// `vagrant` in `vagrant/`, with the lab's environment.
fn vagrant(paths: &Paths, nodes: usize, settings: Option<&Settings>) -> Command {
    let mut c = Command::new("vagrant");
    c.current_dir(&paths.vagrant_dir)
        .env("VAGRANT_HOME", paths.vagrant_home())
        .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
        // No calls home: the machine (and CI) reaches only the lab.
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_BOX_UPDATE_CHECK_DISABLE", "1")
        .env("LIBVIRT_DEFAULT_URI", LIBVIRT_URI)
        .env("OVL_NODES", nodes.to_string())
        .env("OVL_LIBVIRT_POOL", POOL)
        .env("OVL_DEB", paths.state.join("overlay-agent.deb"))
        .env("OVL_CONSOLE_DIR", paths.state.join("console"))
        .env("OVL_UNDERLAY", UNDERLAY)
        .env("OVL_BOX", BOX_NAME);
    // KVM does not run stock guests everywhere (not on this machine); emulation does.
    // OVL_LIBVIRT_DRIVER=kvm where it works.
    if std::env::var_os("OVL_LIBVIRT_DRIVER").is_none() {
        c.env("OVL_LIBVIRT_DRIVER", "qemu");
    }
    if let Some(s) = settings {
        c.env("OVL_MEMORY", s.memory_mib.to_string())
            .env("OVL_CPUS", s.cpus.to_string());
    }
    c
}

/// Builds the Debian package (`cargo xtask package`, which checks it) and stages it for
/// upload as `<state>/overlay-agent.deb`; returns its version.
fn build_and_stage(paths: &Paths) -> Result<String> {
    let deb = crate::package::run(&crate::package::PackageArgs {
        revision: "1".into(),
        output: None,
    })?;
    fs::create_dir_all(&paths.state)?;
    let dst = paths.state.join("overlay-agent.deb");
    fs::copy(&deb, &dst).with_context(|| format!("copying {}", deb.display()))?;
    let out = checked(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&dst)
            .arg("Version"),
    )?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!(
        "staged {} ({version}, {} KiB)",
        dst.display(),
        fs::metadata(&dst)?.len() >> 10
    );
    Ok(version)
}

/// Adds the box to the lab's `VAGRANT_HOME` unless this very box file is already there.
fn register_box(paths: &Paths, file: &Path) -> Result<()> {
    let stamp = paths.vagrant_home().join("ovl-box.stamp");
    let want = file.display().to_string();
    if fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        println!("box {BOX_NAME} registered ({want})");
        return Ok(());
    }
    fs::create_dir_all(paths.vagrant_home())?;
    run_shown(
        vagrant(paths, 1, None)
            .args(["box", "add", "--force", "--name", BOX_NAME])
            .arg(file),
    )?;
    fs::write(&stamp, want)?;
    Ok(())
}

/// Settings libvirt needs on a host without systemd (measured-here.md): QEMU as root, no
/// security driver. Appended once, marked; existing settings are left alone.
fn configure_qemu_conf() -> Result<()> {
    let path = Path::new("/etc/libvirt/qemu.conf");
    let text = fs::read_to_string(path).unwrap_or_default();
    let set = |key: &str| {
        text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
        })
    };
    let mut add = String::new();
    for (k, v) in [
        ("user", "\"root\""),
        ("group", "\"root\""),
        ("security_driver", "\"none\""),
    ] {
        if !set(k) {
            add.push_str(&format!("{k} = {v}\n"));
        }
    }
    if !add.is_empty() {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)?;
        write!(
            f,
            "\n# overlay-agent Vagrant lab (cargo xtask vagrant): QEMU runs as root without a\n\
             # security driver on hosts without systemd.\n{add}"
        )?;
        println!(
            "set in {}: {}",
            path.display(),
            add.trim().replace('\n', ", ")
        );
    }
    Ok(())
}

/// Whether something answers on a Unix socket (a stale socket file left by a killed daemon
/// does not count).
fn socket_answers(path: &str) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

fn libvirt_up() -> bool {
    socket_answers("/run/libvirt/libvirt-sock") && virsh_ok(&["uri"])
}

/// Makes sure libvirtd answers; starts virtlogd and libvirtd (recording their PIDs) when
/// nothing runs them, as on hosts without an init system.
fn ensure_libvirt(paths: &Paths, state: &mut State) -> Result<()> {
    if libvirt_up() {
        match state.libvirtd_pid {
            Some(pid) if pid_alive(pid) => println!("libvirtd running (pid {pid}, started by up)"),
            _ => println!("libvirtd already running: using it (down leaves it running)"),
        }
        return Ok(());
    }
    configure_qemu_conf()?;
    // The packaged "default" network would come up on 192.168.122.0/24, outside the lab
    // ranges; the lab defines its own networks.
    let autostart = Path::new("/etc/libvirt/qemu/networks/autostart/default.xml");
    if autostart.exists() {
        fs::remove_file(autostart)?;
        println!("disabled autostart of libvirt's default network (192.168.122.0/24)");
    }
    fs::create_dir_all(&paths.state)?;
    state.made_run_dir = state.made_run_dir || !Path::new("/run/libvirt").exists();
    if state.tables_before.is_none() {
        state.tables_before = Some(nft_tables());
    }
    if !socket_answers("/run/libvirt/virtlogd-sock") {
        let pidfile = paths.state.join("virtlogd.pid");
        checked(Command::new("virtlogd").arg("-d").arg("-p").arg(&pidfile))?;
        state.virtlogd_pid = Some(read_pidfile(&pidfile)?);
        state.save(paths)?;
    }
    let pidfile = paths.state.join("libvirtd.pid");
    checked(Command::new("libvirtd").arg("-d").arg("-p").arg(&pidfile))?;
    state.libvirtd_pid = Some(read_pidfile(&pidfile)?);
    state.save(paths)?;
    crate::sh::wait_for("libvirtd to answer", Duration::from_secs(60), || {
        let up = libvirt_up();
        if !up {
            std::thread::sleep(Duration::from_millis(300));
        }
        up.then_some(())
    })?;
    println!(
        "started virtlogd ({:?}) and libvirtd ({:?})",
        state.virtlogd_pid, state.libvirtd_pid
    );
    Ok(())
}

fn read_pidfile(p: &Path) -> Result<i32> {
    let pid = crate::sh::wait_for(
        &format!("pid file {}", p.display()),
        Duration::from_secs(20),
        || {
            fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        },
    )?;
    Ok(pid)
}

fn ensure_pool(paths: &Paths) -> Result<()> {
    let dir = paths.state.join("pool");
    fs::create_dir_all(&dir)?;
    let target = dir.display().to_string();
    // A pool left by a lab of another checkout points elsewhere (perhaps at a directory that
    // is gone, and then it cannot start): define it again for this one.
    if virsh_ok(&["pool-info", POOL])
        && !virsh_lines(&["pool-dumpxml", POOL])
            .iter()
            .any(|l| l.trim() == format!("<path>{target}</path>"))
    {
        let _ = virsh_ok(&["pool-destroy", POOL]);
        checked(&mut virsh(&["pool-undefine", POOL]))?;
    }
    if !virsh_ok(&["pool-info", POOL]) {
        checked(&mut virsh(&[
            "pool-define-as",
            POOL,
            "dir",
            "--target",
            &target,
        ]))?;
    }
    let info = virsh_lines(&["pool-info", POOL]).join("\n");
    if !info.contains("running") {
        checked(&mut virsh(&["pool-start", POOL]))?;
    }
    Ok(())
}

/// Brings the lab up: builds the package and the box, starts libvirt when needed, `vagrant up`.
pub fn up(paths: &Paths, settings: &Settings, timer: &mut Timer) -> Result<()> {
    require_root()?;
    if !(1..=MAX_NODES).contains(&settings.nodes) {
        bail!("--nodes must be 1..={MAX_NODES}");
    }
    timer.phase("host packages present", || check_deps(paths))?;
    let version = timer.phase("cargo xtask package (release build, .deb, checks)", || {
        build_and_stage(paths)
    })?;
    let file = timer.phase("box (cached after the first build)", || {
        build_box(paths, false)
    })?;
    timer.phase("register the box", || register_box(paths, &file))?;
    let mut state = State::load(paths);
    state.nodes = Some(settings.nodes);
    state.package = Some(version);
    state.save(paths)?;
    fs::create_dir_all(paths.state.join("console"))?;
    timer.phase("libvirt (daemons, storage pool)", || {
        ensure_libvirt(paths, &mut state)?;
        ensure_pool(paths)
    })?;
    timer.phase(
        &format!("vagrant up ({} nodes, boot + provisioning)", settings.nodes),
        || {
            run_shown(vagrant(paths, settings.nodes, Some(settings)).args([
                "up",
                "--provider",
                "libvirt",
            ]))
        },
    )?;
    timer.phase("ssh config", || write_ssh_config(paths, settings.nodes))?;
    Ok(())
}

fn write_ssh_config(paths: &Paths, nodes: usize) -> Result<()> {
    let out = checked(vagrant(paths, nodes, None).arg("ssh-config"))?;
    fs::write(paths.ssh_config(), &out.stdout)?;
    fs::create_dir_all(paths.ssh_control_dir())?;
    Ok(())
}

/// Commands on the nodes over SSH (one multiplexed connection per node: a handshake with
/// an emulated guest costs about a second).
pub struct Nodes {
    config: PathBuf,
    control_dir: PathBuf,
    /// Node count.
    pub count: usize,
}

impl Nodes {
    /// The nodes of the running lab (needs `up` to have written the SSH config).
    pub fn open(paths: &Paths) -> Result<Nodes> {
        let count = State::load(paths)
            .nodes
            .context("no lab state: run cargo xtask vagrant up first")?;
        if !paths.ssh_config().exists() {
            write_ssh_config(paths, count)?;
        }
        Ok(Nodes {
            config: paths.ssh_config(),
            control_dir: paths.ssh_control_dir(),
            count,
        })
    }

    fn ssh(&self, node: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(&self.config)
            .arg("-o")
            .arg("ControlMaster=auto")
            .arg("-o")
            .arg(format!("ControlPath={}/%n", self.control_dir.display()))
            .arg("-o")
            .arg("ControlPersist=600")
            .arg("-o")
            .arg("ConnectTimeout=30")
            .arg(node);
        c
    }

    /// Runs `script` as root on `node`; its output, or an error with its stderr.
    pub fn try_sh(&self, node: &str, script: &str) -> Result<Output> {
        let mut child = self
            .ssh(node)
            .args(["sudo", "sh", "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("ssh")?;
        child
            .stdin
            .take()
            .context("ssh stdin")?
            .write_all(script.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Runs `script` on `node`, shows it and its output; fails when it fails.
    pub fn sh(&self, node: &str, script: &str) -> Result<String> {
        println!("[{node}] $ {script}");
        let out = self.try_sh(node, script)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        for l in stdout.lines() {
            println!("[{node}]   {l}");
        }
        if !out.status.success() {
            bail!(
                "on {node}: `{script}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }

    /// Runs `script` quietly; its stdout when it succeeds.
    pub fn quiet(&self, node: &str, script: &str) -> Option<String> {
        self.try_sh(node, script)
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Closes the multiplexed connections (their master processes are ours).
    pub fn close(&self) {
        close_ssh_masters(&self.config, &self.control_dir, self.count);
    }
}

fn close_ssh_masters(config: &Path, control_dir: &Path, count: usize) {
    if !config.exists() {
        return;
    }
    for i in 1..=count {
        let _ = Command::new("ssh")
            .arg("-F")
            .arg(config)
            .arg("-o")
            .arg(format!("ControlPath={}/%n", control_dir.display()))
            .args(["-O", "exit", &format!("node{i}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `f` every 2 s (each poll is an SSH round trip to an emulated guest) until it
/// returns `Some`, for at most `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> Result<T> {
    crate::sh::poll_every(what, timeout, Duration::from_secs(2), f)
}

/// The broadcast address of `cidr` ("10.10.0.0/24" -> 10.10.0.255).
fn broadcast_of(cidr: &str) -> Result<Ipv4Addr> {
    let (addr, len) = cidr.split_once('/').context("subnet without prefix")?;
    let addr: Ipv4Addr = addr.parse()?;
    let len: u32 = len.parse()?;
    if len > 32 {
        bail!("bad prefix in {cidr}");
    }
    let host_mask = if len == 0 {
        u32::MAX
    } else {
        (1u32 << (32 - len)) - 1
    };
    Ok(Ipv4Addr::from(u32::from(addr) | host_mask))
}

/// Source addresses of the echo replies in (busybox) ping output.
fn ping_sources(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.split_once("bytes from ").map(|(_, r)| r))
        .filter_map(|r| r.split(':').next())
        .map(|s| s.trim().to_string())
        .collect()
}

/// `Icmp: InEchos` from a `/proc/net/snmp` text.
fn in_echos(snmp: &str) -> Option<u64> {
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let names = icmp.next()?;
    let values = icmp.next()?;
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InEchos")
        .and_then(|(_, v)| v.parse().ok())
}

fn node(i: usize) -> String {
    format!("node{i}")
}

/// `docker run` options of every scenario container: the overlay, and echo replies to
/// broadcast and multicast (off by default in a new network namespace).
const RUN: &str = "docker run -d --network appnet --sysctl net.ipv4.icmp_echo_ignore_broadcasts=0";

/// The end-to-end scenario on a running lab (at least 2 nodes).
///
/// - `docker network create -d ovl --ipam-driver ovl appnet` on every node;
/// - `leader` on node2 serves HTTP; `follower1`/`follower2` on node3 (node1 with 2 nodes)
///   join it by name, as `rethinkdb --join rethinkleader` did, and reach it as `leader` and
///   `leader.appnet`;
/// - broadcast and multicast echo requests from a container on node1 are seen by the
///   containers on the other nodes (their ICMP counters) and answered;
/// - the leader reaches node1's underlay address, outside the overlay, through Docker's
///   gateway bridge;
/// - `overlayctl doctor` finds nothing wrong and `overlayctl probe` reaches the containers
///   hop by hop ([`check_debugging`]); then the encrypted network, restart and stop checks.
pub fn scenario(nodes: &Nodes, timer: &mut Timer) -> Result<()> {
    let count = nodes.count;
    if count < 2 {
        bail!("the scenario needs at least 2 nodes");
    }
    let n1 = node(1);
    let leader_node = node(2);
    let follower_node = if count >= 3 { node(3) } else { node(1) };
    let node1_underlay = format!("{UNDERLAY}.11");

    timer.phase("scenario: every agent sees every node alive", || {
        wait_until("every host alive", Duration::from_secs(180), || {
            let out = nodes.quiet(&n1, "overlayctl --json hosts")?;
            let hosts: Vec<Value> = serde_json::from_str(&out).ok()?;
            let alive = hosts.iter().filter(|h| h["alive"] == true).count();
            (alive == count).then_some(())
        })?;
        nodes.sh(&n1, "overlayctl hosts")?;
        Ok(())
    })?;

    timer.phase(
        "scenario: the package on every node (version, unit before docker.service)",
        || check_package(nodes),
    )?;
    timer.phase(
        "scenario: docker.service starts only after the plugin socket answers",
        || check_readiness(nodes, &node(count)),
    )?;

    timer.phase("scenario: docker network create on every node", || {
        for i in 1..=count {
            nodes.sh(
                &node(i),
                &format!(
                    "docker network inspect {NET} >/dev/null 2>&1 || \
                     docker network create -d ovl --ipam-driver ovl {NET}"
                ),
            )?;
        }
        nodes.sh(&n1, &format!("overlayctl network inspect {NET}"))?;
        Ok(())
    })?;
    let net: Value =
        serde_json::from_str(&nodes.sh(&n1, &format!("overlayctl --json network inspect {NET}"))?)?;
    let subnet = net["subnet"]
        .as_str()
        .context("network inspect: no subnet")?
        .to_string();

    let ip_of = |n: &str, c: &str| -> Result<String> {
        let out = nodes.sh(
            n,
            &format!("docker inspect -f '{{{{(index .NetworkSettings.Networks \"{NET}\").IPAddress}}}}' {c}"),
        )?;
        Ok(out.trim().to_string())
    };

    let (leader_ip, follower_ip) = timer.phase(
        "scenario: leader on node2, followers join it by name",
        || {
            nodes.sh(
                &leader_node,
                &format!(
                    "{RUN} --name leader busybox sh -c \
                     'echo leader-on-{leader_node} > /tmp/index.html; exec httpd -f -p 8080 -h /tmp'"
                ),
            )?;
            for f in ["follower1", "follower2"] {
                // Like `rethinkdb --join rethinkleader`: retry until the leader answers.
                nodes.sh(
                    &follower_node,
                    &format!(
                        "{RUN} --name {f} busybox sh -c \
                         'until timeout 5 wget -q -O /tmp/joined http://leader:8080/; do sleep 1; done; exec sleep 1000000'"
                    ),
                )?;
            }
            for f in ["follower1", "follower2"] {
                wait_until(
                    &format!("{f} to join the leader"),
                    Duration::from_secs(120),
                    || {
                        nodes
                            .quiet(&follower_node, &format!("docker exec {f} cat /tmp/joined"))
                            .filter(|s| s.contains("leader-on-"))
                    },
                )?;
            }
            nodes.sh(&follower_node, "docker exec follower1 cat /etc/hosts")?;
            let by_net = nodes.sh(
                &follower_node,
                &format!("docker exec follower1 timeout 10 wget -q -O- http://leader.{NET}:8080/"),
            )?;
            if !by_net.contains(&format!("leader-on-{leader_node}")) {
                bail!("leader.{NET} answered {by_net:?}");
            }
            nodes.sh(
                &follower_node,
                &format!("docker exec follower2 ping -c 2 -W 3 leader && docker exec follower2 ping -c 2 -W 3 leader.{NET}"),
            )?;
            Ok((ip_of(&leader_node, "leader")?, ip_of(&follower_node, "follower1")?))
        },
    )?;

    timer.phase("scenario: broadcast and multicast from node1", || {
        let bcast = broadcast_of(&subnet)?;
        // The announcer itself does not answer: every reply it counts comes from elsewhere.
        nodes.sh(
            &n1,
            &format!("docker run -d --network {NET} --name announcer busybox sleep 1000000"),
        )?;
        let receivers = [
            (leader_node.as_str(), "leader", leader_ip.as_str()),
            (follower_node.as_str(), "follower1", follower_ip.as_str()),
        ];
        let echos = |n: &str, c: &str| -> Result<u64> {
            let snmp = nodes
                .quiet(n, &format!("docker exec {c} cat /proc/net/snmp"))
                .context("reading /proc/net/snmp")?;
            in_echos(&snmp).context("no Icmp InEchos in /proc/net/snmp")
        };
        let before: Vec<u64> = receivers
            .iter()
            .map(|(n, c, _)| echos(n, c))
            .collect::<Result<_>>()?;
        for (what, cmd) in [
            (
                "broadcast",
                format!("docker exec announcer ping -c 3 -W 3 {bcast}"),
            ),
            (
                "multicast",
                "docker exec announcer ping -c 3 -W 3 -I eth0 224.0.0.1".to_string(),
            ),
        ] {
            // The first packets may race the peers' view of the new announcer: retry.
            wait_until(
                &format!("{what} echo replies from every other node"),
                Duration::from_secs(60),
                || {
                    println!("[{n1}] $ {cmd}");
                    let out = nodes.try_sh(&n1, &cmd).ok()?;
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    for l in text.lines() {
                        println!("[{n1}]   {l}");
                    }
                    let from = ping_sources(&text);
                    receivers
                        .iter()
                        .all(|(_, _, ip)| from.contains(*ip))
                        .then_some(())
                },
            )?;
        }
        for ((n, c, _), b) in receivers.iter().zip(&before) {
            let after = echos(n, c)?;
            println!("{c} on {n}: ICMP echo requests received {b} -> {after}");
            if after <= *b {
                bail!("{c} on {n} saw no echo request from node1");
            }
        }
        Ok(())
    })?;

    timer.phase("scenario: out through the gateway bridge", || {
        let routes = nodes.sh(&leader_node, "docker exec leader ip -4 route")?;
        let default = routes
            .lines()
            .find(|l| l.starts_with("default"))
            .context("the leader has no default route")?;
        if default.contains("dev eth0") {
            bail!("the default route uses the overlay interface: {default}");
        }
        nodes.sh(
            &leader_node,
            &format!("docker exec leader ping -c 2 -W 3 {node1_underlay}"),
        )?;
        nodes.sh(&n1, &format!("overlayctl peers {NET}"))?;
        nodes.sh(&n1, "overlayctl endpoints")?;
        Ok(())
    })?;

    timer.phase(
        "scenario: overlayctl doctor and probe under the packaged unit",
        || check_debugging(nodes, &leader_node, &follower_node),
    )?;
    timer.phase(
        "scenario: encrypted network, kernel WireGuard and a userspace host",
        || check_encrypted(nodes),
    )?;
    timer.phase(
        "scenario: systemctl restart overlay-agent keeps traffic flowing",
        || check_restart(nodes, &follower_node, &leader_node, &leader_ip),
    )?;
    timer.phase(
        "scenario: systemctl stop overlay-agent leaves the datapath in place",
        || check_stop(nodes, &follower_node, &leader_node, &leader_ip),
    )?;
    Ok(())
}

/// The debugging tools where the agent runs as the package's systemd unit: `overlayctl doctor` finds nothing wrong once the health matrix has a round,
/// and `overlayctl probe` reaches the leader's container from node1 and, run on the
/// leader's node (`--from`), a follower, with every hop passing and nothing of it left.
fn check_debugging(nodes: &Nodes, leader_node: &str, follower_node: &str) -> Result<()> {
    let n1 = node(1);
    wait_until(
        "doctor on node1 to find nothing wrong",
        Duration::from_secs(60),
        || nodes.quiet(&n1, "overlayctl doctor"),
    )?;
    nodes.sh(&n1, "overlayctl doctor")?;
    for (to, on, from) in [
        ("leader", leader_node, None),
        ("follower1", follower_node, Some(leader_node)),
    ] {
        let from_arg = from.map(|f| format!(" --from {f}")).unwrap_or_default();
        let out = nodes.sh(
            &n1,
            &format!("overlayctl --json probe {NET} --to {to}{from_arg}"),
        )?;
        let r: Value = serde_json::from_str(&out).context("probe --json")?;
        let hops: Vec<&str> = r["hops"]
            .as_array()
            .context("probe: no hops")?
            .iter()
            .map(|h| h["hop"].as_str().unwrap_or(""))
            .collect();
        let want: &[&str] = if from.unwrap_or(n1.as_str()) == on {
            &["entry", "deliver", "reply", "mtu"]
        } else {
            &["entry", "leave", "arrive", "deliver", "reply", "mtu"]
        };
        let all_ok = r["hops"]
            .as_array()
            .is_some_and(|h| h.iter().all(|h| h["ok"] == true));
        if hops != want || !all_ok || !r["failed"].is_null() {
            bail!("probe {NET} --to {to}{from_arg}: want hops {want:?}, all passing: {r:#}");
        }
        println!("probe {NET} --to {to}{from_arg}: {}", hops.join(" -> "));
    }
    let eps = nodes.sh(&n1, &format!("overlayctl --json endpoints {NET}"))?;
    if eps.contains("ovl-probe-") {
        bail!("a probe endpoint is left: {eps}");
    }
    Ok(())
}

/// An encrypted network across hosts of both WireGuard kinds: the nodes' Debian kernel has
/// WireGuard, so their agents use it (`--wireguard auto`); the last node is switched to the
/// userspace device by a drop-in (`OVERLAY_WIREGUARD=userspace`). A container on each reaches
/// the other through it.
fn check_encrypted(nodes: &Nodes) -> Result<()> {
    let n1 = node(1);
    let last = node(nodes.count);
    nodes.sh(
        &last,
        "mkdir -p /etc/systemd/system/overlay-agent.service.d && \
         printf '[Service]\nEnvironment=OVERLAY_WIREGUARD=userspace\n' \
           > /etc/systemd/system/overlay-agent.service.d/wireguard.conf && \
         systemctl daemon-reload && systemctl restart overlay-agent",
    )?;
    let kinds = wait_until(
        "every host publishes its WireGuard kind",
        Duration::from_secs(60),
        || {
            let out = nodes.quiet(&n1, "overlayctl --json hosts")?;
            let hosts: Vec<Value> = serde_json::from_str(&out).ok()?;
            let kinds: Vec<(String, String)> = hosts
                .iter()
                .map(|h| {
                    (
                        h["id"].as_str().unwrap_or("").to_string(),
                        h["wireguard"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            let want = |id: &str, k: &str| kinds.iter().any(|(i, kk)| i == id && kk == k);
            (want(&n1, "kernel") && want(&last, "userspace")).then_some(kinds)
        },
    )?;
    println!("WireGuard kinds: {kinds:?}");
    for n in [&n1, &last] {
        nodes.sh(
            n,
            "docker network create -d ovl --ipam-driver ovl -o encrypted secnet 2>&1 | grep -v 'already exists' || true",
        )?;
    }
    nodes.sh(
        &n1,
        "docker run -d --network secnet --name sec1 busybox sleep 1000000",
    )?;
    nodes.sh(
        &last,
        "docker run -d --network secnet --name sec2 busybox sleep 1000000",
    )?;
    let ip_of = |n: &str, c: &str| -> Result<String> {
        Ok(nodes
            .sh(
                n,
                &format!("docker inspect -f '{{{{(index .NetworkSettings.Networks \"secnet\").IPAddress}}}}' {c}"),
            )?
            .trim()
            .to_string())
    };
    let (ip1, ip2) = (ip_of(&n1, "sec1")?, ip_of(&last, "sec2")?);
    for (n, c, ip) in [(&n1, "sec1", &ip2), (&last, "sec2", &ip1)] {
        wait_until(
            &format!("{c} on {n} reaches {ip} through WireGuard"),
            Duration::from_secs(60),
            || nodes.quiet(n, &format!("docker exec {c} ping -c 2 -W 2 {ip}")),
        )?;
    }
    let link = nodes.sh(&n1, "ip -d link show ovlwg0")?;
    if !link.contains("wireguard") {
        bail!("node1's ovlwg0 is not a kernel WireGuard link: {link}");
    }
    nodes.sh(&n1, "overlayctl status | grep wireguard")?;
    nodes.sh(&last, "overlayctl status | grep wireguard")?;
    // A functional figure only (the VMs are emulated): round trips through the encrypted
    // network, kernel WireGuard on node1 and userspace on the last node.
    nodes.sh(
        &n1,
        &format!("docker exec sec1 ping -c 10 -i 0.2 -q {ip2} | tail -1"),
    )?;
    // Bulk TCP both ways (each side serves 4 MiB of random bytes over HTTP, the other fetches
    // them): full-size segments through kernel WireGuard one way and the userspace device the
    // other, checked byte for byte.
    for (srv_node, srv, cli_node, cli, srv_ip) in [
        (&last, "sec2", &n1, "sec1", &ip2),
        (&n1, "sec1", &last, "sec2", &ip1),
    ] {
        let sent = nodes.sh(
            srv_node,
            &format!(
                "docker exec {srv} sh -c 'mkdir -p /www && dd if=/dev/urandom of=/www/blob bs=1M count=4 2>/dev/null && httpd -p 8080 -h /www && sha256sum /www/blob'"
            ),
        )?;
        let got = nodes.sh(
            cli_node,
            &format!(
                "docker exec {cli} sh -c 'wget -q -O - http://{srv_ip}:8080/blob | sha256sum'"
            ),
        )?;
        let sum = |s: &str| s.split_whitespace().next().unwrap_or("").to_string();
        if sum(&sent).len() != 64 || sum(&sent) != sum(&got) {
            bail!(
                "4 MiB from {srv} to {cli} through WireGuard arrived changed: sent {sent}, got {got}"
            );
        }
        println!(
            "4 MiB {srv} -> {cli} through WireGuard intact (SHA-256 {})",
            sum(&got)
        );
    }
    nodes.sh(&n1, "docker rm -f sec1")?;
    nodes.sh(&last, "docker rm -f sec2")?;
    nodes.sh(&n1, "docker network rm secnet")?;
    nodes.sh(
        &last,
        "docker network rm secnet 2>/dev/null; rm /etc/systemd/system/overlay-agent.service.d/wireguard.conf && \
         systemctl daemon-reload && systemctl restart overlay-agent",
    )?;
    wait_until(
        "the last node's agent answers again",
        Duration::from_secs(60),
        || nodes.quiet(&last, "overlayctl status >/dev/null && echo yes"),
    )?;
    Ok(())
}

/// `systemctl show -p PROP --value UNIT` on `node`.
fn unit_prop(nodes: &Nodes, node: &str, unit: &str, prop: &str) -> Result<String> {
    let out = nodes.try_sh(node, &format!("systemctl show -p {prop} --value {unit}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Every node runs the package this run built: its version, both binaries' `--version`
/// (release and git revision), the packaged unit (enabled, `Type=notify`, before
/// `docker.service`), and every host's version in `overlayctl hosts`.
fn check_package(nodes: &Nodes) -> Result<()> {
    let want = format!("overlay-agent {}", overlay_agent::VERSION);
    for i in 1..=nodes.count {
        let n = node(i);
        let out = nodes.sh(
            &n,
            "dpkg-query -W -f='${Package} ${Version}\\n' overlay-agent; overlay-agent --version; \
             overlayctl --version; systemctl show -p FragmentPath -p Type -p Before -p UnitFileState \
             -p ActiveState overlay-agent",
        )?;
        let has = |l: &str| out.lines().any(|x| x.trim() == l);
        if !has(&want) || !has(&format!("overlayctl {}", overlay_agent::VERSION)) {
            bail!("{n} runs another build than this one ({want}):\n{out}");
        }
        // The packaged unit (/lib or /usr/lib, as systemd finds it), not one in /etc.
        let fragment = out
            .lines()
            .find_map(|l| l.strip_prefix("FragmentPath="))
            .unwrap_or("");
        if !fragment.ends_with("lib/systemd/system/overlay-agent.service") {
            bail!("{n}: overlay-agent.service comes from {fragment:?}, not the package");
        }
        for l in ["Type=notify", "UnitFileState=enabled", "ActiveState=active"] {
            if !has(l) {
                bail!("{n}: expected {l} in:\n{out}");
            }
        }
        let before = out
            .lines()
            .find_map(|l| l.strip_prefix("Before="))
            .unwrap_or("");
        if !before.split_whitespace().any(|u| u == "docker.service") {
            bail!("{n}: overlay-agent.service is not ordered before docker.service ({before})");
        }
    }
    let hosts: Vec<Value> = serde_json::from_str(&nodes.sh(&node(1), "overlayctl --json hosts")?)?;
    nodes.sh(&node(1), "overlayctl hosts")?;
    for h in &hosts {
        if h["version"] != overlay_agent::VERSION {
            bail!("host {} reports version {}", h["id"], h["version"]);
        }
    }
    Ok(())
}

/// On `n`: with a file squatting on the plugin socket's path (so the plugin cannot bind),
/// `systemctl start overlay-agent docker` leaves the agent activating, its control socket
/// answering, and Docker waiting; once the path is free the agent reports ready, and Docker
/// starts after that moment.
fn check_readiness(nodes: &Nodes, n: &str) -> Result<()> {
    nodes.sh(
        n,
        "systemctl stop docker.socket docker.service overlay-agent.service && \
         mkdir -p /run/docker/plugins && rm -f /run/docker/plugins/ovl.sock && \
         : > /run/docker/plugins/ovl.sock && \
         systemctl start --no-block overlay-agent.service docker.service",
    )?;
    let result = (|| -> Result<()> {
        wait_until(
            "the control socket to answer",
            Duration::from_secs(120),
            || nodes.quiet(n, "overlayctl status >/dev/null && echo yes"),
        )?;
        // The agent answers on its control socket, yet must not be ready: the plugin socket
        // cannot answer. Docker must still wait.
        std::thread::sleep(Duration::from_secs(5));
        let agent = unit_prop(nodes, n, "overlay-agent", "ActiveState")?;
        let docker = unit_prop(nodes, n, "docker", "ActiveState")?;
        let docker_pid = unit_prop(nodes, n, "docker", "MainPID")?;
        let jobs = nodes.sh(n, "systemctl list-jobs --no-legend --no-pager")?;
        println!(
            "[{n}]   plugin path blocked: overlay-agent {agent}, docker {docker} (pid {docker_pid})"
        );
        if agent != "activating" {
            bail!("overlay-agent is {agent} while its plugin socket cannot answer");
        }
        if docker != "inactive" || docker_pid != "0" {
            bail!("docker.service is {docker} (pid {docker_pid}) before the agent is ready");
        }
        // Docker's start is queued behind the agent's, not forgotten.
        if !jobs
            .lines()
            .any(|l| l.contains("docker.service") && l.contains("start") && l.contains("waiting"))
        {
            bail!("no waiting start job for docker.service:\n{jobs}");
        }
        Ok(())
    })();
    // Free the path whatever happened, so the node is usable again.
    nodes.sh(n, "rm -f /run/docker/plugins/ovl.sock")?;
    result?;
    wait_until(
        "overlay-agent and docker active",
        Duration::from_secs(300),
        || {
            let a = unit_prop(nodes, n, "overlay-agent", "ActiveState").ok()?;
            let d = unit_prop(nodes, n, "docker", "ActiveState").ok()?;
            (a == "active" && d == "active").then_some(())
        },
    )?;
    let ready: u64 = unit_prop(nodes, n, "overlay-agent", "ActiveEnterTimestampMonotonic")?
        .parse()
        .context("agent's ActiveEnterTimestampMonotonic")?;
    let docker: u64 = unit_prop(nodes, n, "docker", "ExecMainStartTimestampMonotonic")?
        .parse()
        .context("docker's ExecMainStartTimestampMonotonic")?;
    println!(
        "[{n}]   overlay-agent ready at {:.3} s, dockerd started at {:.3} s (monotonic)",
        ready as f64 / 1e6,
        docker as f64 / 1e6
    );
    if docker < ready {
        bail!("dockerd started before the agent was ready");
    }
    nodes.sh(
        n,
        "journalctl -u overlay-agent -b --no-pager -o cat | grep 'ready: told systemd' | tail -n1 && \
         test -S /run/docker/plugins/ovl.sock && docker info --format '{{.ServerVersion}}'",
    )?;
    wait_until("docker to answer", Duration::from_secs(180), || {
        nodes.quiet(n, "docker info >/dev/null 2>&1 && echo ok")
    })?;
    Ok(())
}

/// `a packets transmitted, b packets received` from ping's summary.
fn ping_counts(out: &str) -> Option<(u32, u32)> {
    let l = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = l
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse::<u32>().ok());
    Some((nums.next()??, nums.next()??))
}

/// A ping from `follower2` to the leader every 0.25 s runs through
/// `systemctl restart overlay-agent` on both ends; not one echo may be lost.
fn check_restart(nodes: &Nodes, from: &str, to: &str, leader_ip: &str) -> Result<()> {
    nodes.sh(
        from,
        &format!(
            "docker exec -d follower2 sh -c 'ping -c 80 -i 0.25 {leader_ip} > /tmp/restart-ping.txt 2>&1'"
        ),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let mut ends = vec![to.to_string()];
    if from != to {
        ends.push(from.to_string());
    }
    for n in &ends {
        let before = unit_prop(nodes, n, "overlay-agent", "MainPID")?;
        nodes.sh(
            n,
            "systemctl restart overlay-agent && systemctl is-active overlay-agent",
        )?;
        let after = unit_prop(nodes, n, "overlay-agent", "MainPID")?;
        println!("[{n}]   overlay-agent restarted: pid {before} -> {after}");
        if before == after {
            bail!("{n}: the agent's pid did not change across the restart");
        }
    }
    let summary = wait_until("the ping to finish", Duration::from_secs(120), || {
        nodes
            .quiet(from, "docker exec follower2 cat /tmp/restart-ping.txt")
            .filter(|o| o.contains("packets transmitted"))
    })?;
    let (sent, got) = ping_counts(&summary).context("no ping summary")?;
    println!("[{from}]   through the restarts: {sent} echo requests, {got} replies");
    if sent < 80 || got != sent {
        bail!("traffic did not keep flowing through the restarts:\n{summary}");
    }
    Ok(())
}

/// `systemctl stop overlay-agent` on the leader's node: the overlay's devices and FDB
/// entries stay, Docker keeps running, and the followers still reach the leader.
fn check_stop(nodes: &Nodes, from: &str, to: &str, leader_ip: &str) -> Result<()> {
    nodes.sh(to, "systemctl stop overlay-agent")?;
    let result = (|| -> Result<()> {
        let state = unit_prop(nodes, to, "overlay-agent", "ActiveState")?;
        if state != "inactive" {
            bail!("overlay-agent is {state} after systemctl stop");
        }
        let ns = format!("/run/overlay-agent/dp/netns/{NET}");
        let fdb = nodes.sh(
            to,
            &format!(
                "nsenter --net={ns} ip -d link show vxlan0 && nsenter --net={ns} bridge fdb show dev vxlan0 | grep dst; \
                 systemctl is-active docker"
            ),
        )?;
        if !fdb.contains("vxlan id") || !fdb.contains("dst ") {
            bail!("the datapath is gone after systemctl stop:\n{fdb}");
        }
        nodes.sh(
            from,
            &format!("docker exec follower2 ping -c 3 -W 3 {leader_ip}"),
        )?;
        Ok(())
    })();
    nodes.sh(
        to,
        "systemctl start overlay-agent && systemctl is-active overlay-agent",
    )?;
    result
}

/// `vagrant provision node1` a second time must change nothing (both scripts say
/// "0 changes").
fn check_idempotent(paths: &Paths, count: usize) -> Result<()> {
    let out = vagrant(paths, count, None)
        .args(["provision", "node1"])
        .output()
        .context("vagrant provision")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let summaries: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" changes"))
        .map(str::trim)
        .collect();
    for l in &summaries {
        println!("  {l}");
    }
    if !out.status.success() {
        bail!(
            "vagrant provision failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if summaries.len() < 2 || summaries.iter().any(|l| !l.ends_with("; 0 changes")) {
        bail!("a second provisioning changed something:\n{text}");
    }
    Ok(())
}

/// Prints what helps to understand a failed scenario: the agents' logs and state.
fn diagnostics(nodes: &Nodes) {
    for i in 1..=nodes.count {
        let n = node(i);
        println!("\n== diagnostics of {n}");
        if let Some(out) = nodes.quiet(
            &n,
            "systemctl --no-pager status overlay-agent docker | head -20; \
             journalctl -u overlay-agent --no-pager -n 40; docker ps -a; \
             overlayctl status; overlayctl peers",
        ) {
            print!("{out}");
        }
    }
}

/// `cargo xtask vagrant test`: up (unless `reuse`), the scenario, a second provisioning,
/// and down (unless `keep` or `reuse`), with every phase timed.
pub fn test(paths: &Paths, settings: &Settings, keep: bool, reuse: bool) -> Result<()> {
    require_root()?;
    let mut timer = Timer::new();
    let result = (|| -> Result<()> {
        if !reuse {
            up(paths, settings, &mut timer)?;
        }
        let nodes = Nodes::open(paths)?;
        let r = scenario(&nodes, &mut timer);
        if r.is_err() {
            diagnostics(&nodes);
        }
        nodes.close();
        r?;
        timer.phase("second vagrant provision of node1 changes nothing", || {
            check_idempotent(paths, nodes.count)
        })?;
        Ok(())
    })();
    if let Err(e) = &result {
        eprintln!("\nvagrant test: {e:#}");
        print_console_tails(paths);
    }
    let mut down_result = Ok(());
    if !keep && !reuse {
        down_result = timer.phase("down (destroy, remove, check leftovers)", || {
            let errs = down(paths);
            if errs.is_empty() {
                Ok(())
            } else {
                for e in &errs {
                    eprintln!("down: {e:#}");
                }
                Err(anyhow!("{} teardown problems", errs.len()))
            }
        });
    }
    timer.report();
    result?;
    down_result?;
    println!("\nvagrant test passed");
    Ok(())
}

fn print_console_tails(paths: &Paths) {
    let Ok(dir) = fs::read_dir(paths.state.join("console")) else {
        return;
    };
    for e in dir.flatten() {
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        println!("\n== last console lines of {}", e.path().display());
        for l in &lines[lines.len().saturating_sub(15)..] {
            println!("  {l}");
        }
    }
}

/// Whether Vagrant has created any machine here (`.vagrant/machines/*/libvirt/id`; Vagrant
/// makes `.vagrant/` itself on any command, even `validate`).
fn created_machines(paths: &Paths) -> bool {
    fs::read_dir(paths.vagrant_dir.join(".vagrant/machines"))
        .is_ok_and(|d| d.flatten().any(|m| m.path().join("libvirt/id").exists()))
}

/// Whether anything of a lab exists that needs libvirt to remove.
fn libvirt_traces(paths: &Paths) -> bool {
    let defined = |dir: &str, prefix: &str| {
        fs::read_dir(dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    created_machines(paths)
        || defined("/etc/libvirt/qemu", DOMAIN_PREFIX)
        || defined("/etc/libvirt/qemu/networks", "ovl-")
        || defined("/etc/libvirt/storage", POOL)
        || defined("/run/libvirt/qemu", DOMAIN_PREFIX)
        || defined("/run/libvirt/network", "ovl-")
}

/// Removes the lab: VMs, libvirt networks, volumes and pool, daemons `up` started, leftover
/// `LIBVIRT_*` chains, state files. Keeps going on errors and returns all of them; the last
/// step checks that nothing is left.
pub fn down(paths: &Paths) -> Vec<anyhow::Error> {
    let mut errs = Vec::new();
    let mut state = State::load(paths);
    let count = state.nodes.unwrap_or(MAX_NODES);
    close_ssh_masters(&paths.ssh_config(), &paths.ssh_control_dir(), count);

    if libvirt_traces(paths) || libvirt_up() {
        if let Err(e) = ensure_libvirt(paths, &mut state) {
            errs.push(e.context("starting libvirtd to remove the lab"));
        }
        if created_machines(paths) {
            println!("vagrant destroy -f");
            if let Err(e) = run_shown(vagrant(paths, count, None).args(["destroy", "-f"])) {
                errs.push(e);
            }
        }
        // Whatever vagrant left (a failed up, a lost .vagrant directory).
        for dom in virsh_lines(&["list", "--all", "--name"]) {
            if dom.starts_with(DOMAIN_PREFIX) {
                println!("removing leftover domain {dom}");
                let _ = virsh_ok(&["destroy", &dom]);
                if let Err(e) = checked(&mut virsh(&["undefine", &dom, "--nvram"]))
                    .or_else(|_| checked(&mut virsh(&["undefine", &dom])))
                {
                    errs.push(e);
                }
            }
        }
        for net in NETWORKS {
            if virsh_ok(&["net-info", net]) {
                println!("removing libvirt network {net}");
                let _ = virsh_ok(&["net-destroy", net]);
                if let Err(e) = checked(&mut virsh(&["net-undefine", net])) {
                    errs.push(e);
                }
            }
        }
        if virsh_ok(&["pool-info", POOL]) {
            for vol in virsh_lines(&["vol-list", POOL, "--name"]) {
                println!("removing volume {vol}");
                if let Err(e) = checked(&mut virsh(&["vol-delete", &vol, "--pool", POOL])) {
                    errs.push(e);
                }
            }
            let _ = virsh_ok(&["pool-destroy", POOL]);
            if let Err(e) = checked(&mut virsh(&["pool-undefine", POOL])) {
                errs.push(e);
            }
        }
    }

    // The daemons up started, by PID (and only if the PID is still that daemon).
    for (name, pid) in [
        ("libvirtd", state.libvirtd_pid),
        ("virtlogd", state.virtlogd_pid),
    ] {
        if let Some(pid) = pid
            && let Err(e) = stop_daemon(name, pid)
        {
            errs.push(e);
        }
    }
    // Runtime files of the libvirtd we started (markers, tokens, empty directories).
    if state.made_run_dir
        && processes_named("libvirtd").is_empty()
        && processes_named("virtlogd").is_empty()
        && let Err(e) = fs::remove_dir_all("/run/libvirt")
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errs.push(anyhow!("removing /run/libvirt: {e}"));
    }
    // With no libvirtd left, the runtime state of the lab's networks and domains is stale:
    // libvirtd keeps it when stopped, and a /run/libvirt older than this lab (a libvirtd
    // started at boot) is not ours to remove whole. A dnsmasq still running is reported
    // below, not removed.
    if processes_named("libvirtd").is_empty() {
        for (dir, prefix) in [
            ("/run/libvirt/network", "ovl-"),
            ("/run/libvirt/qemu", DOMAIN_PREFIX),
        ] {
            let Ok(d) = fs::read_dir(dir) else { continue };
            for e in d.flatten() {
                if !e.file_name().to_string_lossy().starts_with(prefix) {
                    continue;
                }
                let p = e.path();
                let gone = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if let Err(err) = gone
                    && err.kind() != std::io::ErrorKind::NotFound
                {
                    errs.push(anyhow!("removing {}: {err}", p.display()));
                }
            }
        }
    }
    // With no libvirtd left, its firewall chains are leftovers (libvirtd never removes them).
    if processes_named("libvirtd").is_empty() {
        errs.extend(remove_libvirt_chains());
        if let Some(before) = &state.tables_before {
            errs.extend(remove_empty_tables(before));
        }
        // Directories libvirtd makes for pools and networks, when empty.
        for d in ["/etc/libvirt/storage", "/var/lib/libvirt/dnsmasq"] {
            let _ = fs::remove_dir(d);
        }
    }
    for p in [paths.vagrant_dir.join(".vagrant"), paths.state.clone()] {
        if p.exists()
            && let Err(e) = fs::remove_dir_all(&p)
        {
            errs.push(anyhow!("removing {}: {e}", p.display()));
        }
    }
    // libvirt's per-lab logs and lease files.
    for (dir, prefix) in [
        ("/var/log/libvirt/qemu", DOMAIN_PREFIX),
        ("/var/lib/libvirt/dnsmasq", "ovl-"),
    ] {
        if let Ok(d) = fs::read_dir(dir) {
            for e in d.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    let left = leftovers(paths);
    if left.is_empty() {
        println!(
            "nothing left behind (VMs, qemu, libvirtd/virtlogd/dnsmasq, bridges, LIBVIRT_* chains, libvirt definitions, state)"
        );
    }
    errs.extend(left.into_iter().map(|l| anyhow!("left behind: {l}")));
    errs
}

fn processes_named(comm: &str) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| comm_of(*pid).as_deref() == Some(comm))
        .collect()
}

fn stop_daemon(name: &str, pid: i32) -> Result<()> {
    if !pid_alive(pid) || comm_of(pid).as_deref() != Some(name) {
        return Ok(());
    }
    println!("stopping {name} (pid {pid})");
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let stopped = crate::sh::wait_for(&format!("{name} to exit"), Duration::from_secs(20), || {
        let gone = !pid_alive(pid);
        if !gone {
            std::thread::sleep(Duration::from_millis(100));
        }
        gone.then_some(())
    });
    if stopped.is_err() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(500));
        if pid_alive(pid) {
            bail!("{name} (pid {pid}) does not exit");
        }
    }
    Ok(())
}

/// The nftables tables, as "FAMILY NAME" (empty when nft is missing).
fn nft_tables() -> Vec<String> {
    Command::new("nft")
        .args(["list", "tables"])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("table "))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes the iptables-compatible tables libvirtd made (absent before it started) once
/// they hold no rule: only built-in chains with the ACCEPT policy.
fn remove_empty_tables(before: &[String]) -> Vec<anyhow::Error> {
    let mut errs = Vec::new();
    for t in nft_tables() {
        if before.contains(&t) {
            continue;
        }
        let Some((family, name)) = t.split_once(' ') else {
            continue;
        };
        let tool = match family {
            "ip" => "iptables",
            "ip6" => "ip6tables",
            _ => continue,
        };
        if !["filter", "nat", "mangle"].contains(&name) {
            continue;
        }
        let Ok(out) = Command::new(tool).args(["-w", "-t", name, "-S"]).output() else {
            continue;
        };
        let rules = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && rules
                .lines()
                .all(|l| l.starts_with("-P ") && l.ends_with(" ACCEPT"))
        {
            match checked(Command::new("nft").args(["delete", "table", family, name])) {
                Ok(_) => println!("removed the empty nftables table {t} (made by libvirtd)"),
                Err(e) => errs.push(e),
            }
        }
    }
    errs
}

/// Removes `LIBVIRT_*` chains and the jumps to them from iptables and ip6tables.
fn remove_libvirt_chains() -> Vec<anyhow::Error> {
    let mut errs = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        if !command_exists(tool) {
            continue;
        }
        for table in ["filter", "nat", "mangle"] {
            let Ok(out) = Command::new(tool).args(["-w", "-t", table, "-S"]).output() else {
                continue;
            };
            let rules = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut chains = Vec::new();
            for l in rules.lines() {
                let words: Vec<&str> = l.split_whitespace().collect();
                match words.as_slice() {
                    ["-N", chain] if chain.starts_with("LIBVIRT_") => {
                        chains.push(chain.to_string())
                    }
                    ["-A", chain, rest @ ..]
                        if !chain.starts_with("LIBVIRT_")
                            && rest
                                .windows(2)
                                .any(|w| w[0] == "-j" && w[1].starts_with("LIBVIRT_")) =>
                    {
                        let mut c = Command::new(tool);
                        c.args(["-w", "-t", table, "-D", chain]).args(rest);
                        if let Err(e) = checked(&mut c) {
                            errs.push(e);
                        }
                    }
                    _ => {}
                }
            }
            for chain in &chains {
                let _ = checked(Command::new(tool).args(["-w", "-t", table, "-F", chain]));
            }
            for chain in &chains {
                if let Err(e) = checked(Command::new(tool).args(["-w", "-t", table, "-X", chain])) {
                    errs.push(e);
                }
            }
            if !chains.is_empty() {
                println!("removed {tool} {table} chains {}", chains.join(" "));
            }
        }
    }
    errs
}

/// What of a lab still exists: processes, links, chains, libvirt definitions, files.
pub fn leftovers(paths: &Paths) -> Vec<String> {
    let mut left = Vec::new();
    for (pid, cmd) in processes_matching(&format!("guest={DOMAIN_PREFIX}")) {
        left.push(format!("qemu process {pid}: {cmd}"));
    }
    for net in NETWORKS {
        for (pid, cmd) in processes_matching(&format!("/{net}.conf")) {
            left.push(format!("dnsmasq {pid} of {net}: {cmd}"));
        }
    }
    for (pid, cmd) in processes_matching(&paths.ssh_control_dir().display().to_string()) {
        left.push(format!("ssh master {pid}: {cmd}"));
    }
    let state = State::load(paths);
    for (name, pid) in [
        ("libvirtd", state.libvirtd_pid),
        ("virtlogd", state.virtlogd_pid),
    ] {
        if let Some(pid) = pid
            && pid_alive(pid)
            && comm_of(pid).as_deref() == Some(name)
        {
            left.push(format!("{name} {pid}"));
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let name = l.split(':').nth(1).unwrap_or("").trim();
            if name.starts_with("virbr") || name.starts_with("vnet") {
                left.push(format!("link {name}"));
            }
        }
    }
    if processes_named("libvirtd").is_empty() {
        for tool in ["iptables", "ip6tables"] {
            for table in ["filter", "nat", "mangle"] {
                if let Ok(out) = Command::new(tool).args(["-w", "-t", table, "-S"]).output() {
                    for l in String::from_utf8_lossy(&out.stdout).lines() {
                        if l.contains("LIBVIRT_") {
                            left.push(format!("{tool} -t {table}: {l}"));
                        }
                    }
                }
            }
        }
    }
    for (dir, prefix) in [
        ("/etc/libvirt/qemu", DOMAIN_PREFIX),
        ("/etc/libvirt/qemu/networks", "ovl-"),
        ("/etc/libvirt/storage", POOL),
        ("/run/libvirt/qemu", DOMAIN_PREFIX),
        ("/run/libvirt/network", "ovl-"),
    ] {
        if let Ok(d) = fs::read_dir(dir) {
            for e in d.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    left.push(format!("file {}", e.path().display()));
                }
            }
        }
    }
    for p in [paths.vagrant_dir.join(".vagrant"), paths.state.clone()] {
        if p.exists() {
            left.push(format!("file {}", p.display()));
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_addresses() {
        assert_eq!(
            broadcast_of("10.10.0.0/24").unwrap(),
            Ipv4Addr::new(10, 10, 0, 255)
        );
        assert_eq!(
            broadcast_of("10.77.0.0/16").unwrap(),
            Ipv4Addr::new(10, 77, 255, 255)
        );
        assert!(broadcast_of("10.0.0.0").is_err());
    }

    #[test]
    fn ping_output_sources() {
        let out = "PING 10.10.0.255 (10.10.0.255): 56 data bytes\n\
                   64 bytes from 10.10.0.3: seq=0 ttl=64 time=3.1 ms\n\
                   64 bytes from 10.10.0.4: seq=0 ttl=64 time=4.0 ms (DUP!)\n";
        let s = ping_sources(out);
        assert!(s.contains("10.10.0.3") && s.contains("10.10.0.4"));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn snmp_echo_counter() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos InEchoReps\n\
                    Icmp: 9 0 0 2 0 0 0 0 7 0\n";
        assert_eq!(in_echos(snmp), Some(7));
    }

    #[test]
    fn ping_summary() {
        let out = "PING 10.10.0.2 (10.10.0.2): 56 data bytes\n\
                   --- 10.10.0.2 ping statistics ---\n\
                   80 packets transmitted, 79 packets received, 1% packet loss\n";
        assert_eq!(ping_counts(out), Some((80, 79)));
        assert_eq!(ping_counts("nothing"), None);
    }

    #[test]
    fn box_name_follows_the_recipe() {
        let f = box_file(&Paths::new()).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("ovl-bookworm-") && name.ends_with(".box"),
            "{name}"
        );
    }
}
