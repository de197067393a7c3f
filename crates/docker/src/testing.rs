//! A lab harness that runs a real `dockerd` as one simulated host inside a network namespace,
//! for privileged end-to-end tests. Behind the `testing` feature: not part of the agent.
//!
//! Three engines ([`Engine`]): this machine's own Debian 12 `docker.io` (20.10), and the
//! `docker.io` of Debian 13 (26.1) and of Debian unstable (28.x), each run from a debootstrapped
//! root filesystem of its release (`scripts/docker-rootfs.sh`, cached under
//! `/var/cache/ovl-docker-rootfs`, built on first use and whenever its recipe changes).
//!
//! What it does (measured-here.md, "Several Docker engines on one machine"):
//!
//! 1. `nsenter --net=/run/netns/HOST -- unshare -m -u --propagation private sh -c SCRIPT`: the
//!    daemon lives in the host's netns and in new mount and UTS namespaces (hostname = HOST).
//! 2. SCRIPT mounts a private tmpfs on `/run` (own `/run/docker/plugins`, containerd socket,
//!    xtables lock), bind-mounts `WORKDIR/etc-docker` on `/etc/docker` (own key.json, own
//!    `plugins/*.spec`), mounts a fresh sysfs (so `/sys/class/net` matches the netns) with the
//!    machine's cgroup hierarchies under it, then `exec`s dockerd with per-host `--data-root`
//!    (on disk under WORKDIR), `--exec-root` (in the private `/run`), `--pidfile`,
//!    `-H unix://WORKDIR/docker.sock` (reachable from the test process),
//!    `--config-file` (a `daemon.json` holding the containers' `"dns"`, as users configure
//!    it), `--cgroup-parent`, `--bip` and `--default-address-pool`.
//! 3. For a release tree, SCRIPT first mounts an overlay of the cached tree (read-only lower
//!    layer, a per-host upper layer under WORKDIR: the cache is never written) and builds the
//!    host's root there: private `/run`, `proc`, a fresh `sysfs` with `/sys/fs/cgroup` bound in,
//!    `/dev`, the per-host `/etc/docker`, and WORKDIR plus [`DockerdOpts::shared`] bound at
//!    their own paths (so sockets, logs, the agent's binary and its run dir have the same
//!    path inside and outside). Then it `pivot_root`s into it: a plain `chroot` is not enough
//!    (`docker import` fails remounting `/`, and `docker exec` processes land on the machine's
//!    real root). The docker CLI of that release runs inside the same mount namespace.
//! 4. Everything dockerd mounts lives in its private mount namespace, so it disappears with the
//!    namespace's last process. [`Dockerd::stop`] removes containers, sends SIGTERM to dockerd,
//!    then kills (by PID) every process still in that mount namespace (containerd, shims,
//!    container processes: all started by us), and removes WORKDIR.
//!
//! The `"dns"` default is the host's own bridge gateway, where nothing listens on port 53: a
//! lookup Docker cannot answer fails at once with "port unreachable" inside our namespace
//! instead of stalling on, or leaking to, the machine's real resolver. Tests of the agent's
//! DNS for Docker set it to the agent's `--dns-addr`, or leave daemon.json without `"dns"`
//! and give the host a resolv.conf of their own ([`DockerdOpts::host_resolv_conf`]: bound
//! over `/etc/resolv.conf` in the host's mount namespace), the two set-ups Docker 28 treats
//! differently.
//!
//! The plugin socket must be visible in dockerd's mount namespace. Two ways:
//! [`Dockerd::spawn_in_host`] runs the agent inside that namespace (it then binds
//! `/run/docker/plugins/ovl.sock`; with a release tree, its binary must sit under a shared
//! path), or [`Dockerd::install_plugin_spec`] writes `/etc/docker/plugins/NAME.spec` pointing
//! at a socket under WORKDIR that a process in the root mount namespace serves.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::error::DockerError;

/// Debian's docker CLI, which matches the daemon's version; falls back to `docker` on `PATH`.
pub const DOCKER_CLI: &str = "/usr/bin/docker";

/// The script that builds and caches the release trees.
const ROOTFS_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/docker-rootfs.sh"
);

/// Which Docker engine a lab host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    /// This machine's own `docker.io` (Debian 12: Engine 20.10, API 1.41), from its own root.
    Host,
    /// Debian 13's `docker.io` (Engine 26.1, Compose 2.26), from a `trixie` tree.
    Trixie,
    /// Debian unstable's `docker.io` (Engine 28.x, Compose 2.40 in 2026), from a `sid` tree.
    Sid,
}

impl Engine {
    /// Every engine, oldest first.
    pub const ALL: [Engine; 3] = [Engine::Host, Engine::Trixie, Engine::Sid];

    /// Short label: `20.10`, `26`, `28`.
    pub fn label(self) -> &'static str {
        match self {
            Engine::Host => "20.10",
            Engine::Trixie => "26",
            Engine::Sid => "28",
        }
    }

    /// The engine's major version as the Engine API reports it (`Server.Version`); for
    /// [`Engine::Sid`] the lowest one expected (unstable moves on: a tree built later may
    /// carry a newer engine).
    pub fn major(self) -> u32 {
        match self {
            Engine::Host => 20,
            Engine::Trixie => 26,
            Engine::Sid => 28,
        }
    }

    /// Whether a daemon reporting `version` (`28.5.2+dfsg4`) is this engine.
    pub fn runs(self, version: &str) -> bool {
        let major = version_of(version).0;
        match self {
            Engine::Sid => major >= self.major(),
            _ => major == self.major(),
        }
    }

    /// The Debian release whose tree it runs from (`None`: the machine's own root).
    pub fn release(self) -> Option<&'static str> {
        match self {
            Engine::Host => None,
            Engine::Trixie => Some("trixie"),
            Engine::Sid => Some("sid"),
        }
    }

    /// Parses `20.10`/`20`/`bookworm`/`host`, `26`/`trixie`, `28`/`sid`/`unstable`.
    pub fn parse(s: &str) -> Result<Self, DockerError> {
        match s.trim() {
            "20.10" | "20" | "bookworm" | "host" => Ok(Engine::Host),
            "26" | "26.1" | "trixie" => Ok(Engine::Trixie),
            "28" | "sid" | "unstable" => Ok(Engine::Sid),
            other => Err(DockerError::Harness(format!(
                "unknown Docker engine {other:?}: use 20.10, 26 or 28"
            ))),
        }
    }

    /// The release tree of this engine, built (by `scripts/docker-rootfs.sh ensure`) if it is
    /// missing or its recipe changed; `None` for [`Engine::Host`].
    pub fn rootfs(self) -> Result<Option<PathBuf>, DockerError> {
        let Some(release) = self.release() else {
            return Ok(None);
        };
        let out = check(
            run(
                std::process::Command::new("bash").args([ROOTFS_SCRIPT, "ensure", release]),
                "docker-rootfs.sh",
            )?,
            &format!("scripts/docker-rootfs.sh ensure {release}"),
        )?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let path = PathBuf::from(path);
        if !path.join(".ovl-rootfs").exists() {
            return Err(DockerError::Harness(format!(
                "docker-rootfs.sh printed {}, which is not a built tree",
                path.display()
            )));
        }
        Ok(Some(path))
    }
}

/// `(major, minor)` of a Docker version string (`28.5.2+dfsg4` gives `(28, 5)`); zeros for
/// what does not parse.
pub fn version_of(v: &str) -> (u32, u32) {
    let mut it = v
        .split(['.', '+', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Options of one lab dockerd.
#[derive(Debug, Clone)]
pub struct DockerdOpts {
    /// `--bip` (the default bridge's gateway and prefix).
    pub bip: String,
    /// `--default-address-pool` (`base=CIDR,size=N`), used for `docker_gwbridge` and bridge
    /// networks created without `--subnet`.
    pub default_address_pool: String,
    /// daemon.json `"dns"` (what `--dns` sets); `None` uses the bridge gateway from `bip`
    /// (nothing listens there: fast failure).
    pub dns: Option<Ipv4Addr>,
    /// The host's `/etc/resolv.conf` nameservers, as dockerd sees them; with it, daemon.json
    /// carries no `"dns"` (and [`DockerdOpts::dns`] must be `None`): Docker takes the
    /// containers' servers from the host's resolv.conf.
    pub host_resolv_conf: Option<Vec<Ipv4Addr>>,
    /// Extra dockerd arguments (e.g. `--debug`).
    pub extra_args: Vec<String>,
    /// How long to wait for the API to answer.
    pub start_timeout: Duration,
    /// The engine to run.
    pub engine: Engine,
    /// Directories of the machine bound at the same path in a release tree (WORKDIR always
    /// is), e.g. the agent's binary directory and its run and state dirs. Ignored for
    /// [`Engine::Host`], which sees the machine's root anyway.
    pub shared: Vec<PathBuf>,
}

impl DockerdOpts {
    /// Lab addresses for host number `index` (0..8): bridge `198.18.(200+index).1/24`, pools
    /// from `198.18.(128+8*index).0/21` in /24s. They never touch the underlay
    /// `198.18.0.0/24` or the "outside" `198.19.0.0/24`.
    pub fn for_host(index: u8) -> Self {
        let index = index % 8;
        Self {
            bip: format!("198.18.{}.1/24", 200 + u16::from(index)),
            default_address_pool: format!(
                "base=198.18.{}.0/21,size=24",
                128 + 8 * u16::from(index)
            ),
            dns: None,
            host_resolv_conf: None,
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(90),
            engine: Engine::Host,
            shared: Vec::new(),
        }
    }

    /// Like [`DockerdOpts::for_host`], for `engine`, with `shared` bound into its tree.
    pub fn for_engine(index: u8, engine: Engine, shared: &[&Path]) -> Self {
        Self {
            engine,
            shared: shared.iter().map(|p| p.to_path_buf()).collect(),
            ..Self::for_host(index)
        }
    }

    /// daemon.json for these options.
    fn daemon_json(&self) -> Result<String, DockerError> {
        match (&self.host_resolv_conf, self.dns) {
            (Some(_), Some(_)) => Err(DockerError::Harness(
                "give either dns (daemon.json) or host_resolv_conf, not both".into(),
            )),
            (Some(_), None) => Ok("{}\n".into()),
            (None, _) => Ok(format!("{{\"dns\": [\"{}\"]}}\n", self.dns_addr()?)),
        }
    }

    fn dns_addr(&self) -> Result<Ipv4Addr, DockerError> {
        if let Some(d) = self.dns {
            return Ok(d);
        }
        self.bip
            .split('/')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| DockerError::Harness(format!("bad --bip {:?}", self.bip)))
    }
}

/// One running lab dockerd. Dropping it stops it and removes its files.
#[derive(Debug)]
pub struct Dockerd {
    host: String,
    workdir: PathBuf,
    pid: Option<u32>,
    mnt_ns: Option<String>,
    child: Option<std::process::Child>,
    script: String,
    start_timeout: Duration,
    engine: Engine,
    /// The release tree, for engines that run from one.
    rootfs: Option<PathBuf>,
}

fn run(cmd: &mut std::process::Command, what: &str) -> Result<Output, DockerError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| DockerError::io(format!("running {what}"), e))
}

fn check(out: Output, what: &str) -> Result<Output, DockerError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(DockerError::Harness(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn docker_cli() -> &'static str {
    if Path::new(DOCKER_CLI).exists() {
        DOCKER_CLI
    } else {
        "docker"
    }
}

/// The mount namespace identity of a process (`mnt:[4026532...]`).
fn mnt_ns_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Dockerd {
    /// Starts dockerd for lab host `host_netns_name` (the namespace `/run/netns/NAME` must
    /// exist) with its files under `workdir/NAME`, and waits until its API answers.
    pub fn start(
        host_netns_name: &str,
        workdir: &Path,
        opts: DockerdOpts,
    ) -> Result<Self, DockerError> {
        if !Path::new("/run/netns").join(host_netns_name).exists() {
            return Err(DockerError::Harness(format!(
                "network namespace {host_netns_name} does not exist"
            )));
        }
        if host_netns_name.is_empty()
            || host_netns_name.len() > 32
            || !host_netns_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DockerError::Harness(format!(
                "host name {host_netns_name:?}: use 1..=32 of [a-zA-Z0-9_-]"
            )));
        }
        let daemon_json = opts.daemon_json()?;
        for p in &opts.shared {
            if !p.is_absolute() || !p.is_dir() {
                return Err(DockerError::Harness(format!(
                    "shared path {} must be an existing absolute directory",
                    p.display()
                )));
            }
        }
        // Before anything is created: building a tree can take minutes, and can fail.
        let rootfs = opts.engine.rootfs()?;
        let dir = workdir.join(host_netns_name);
        if dir.exists() {
            return Err(DockerError::Harness(format!(
                "{} already exists (another dockerd for this host?)",
                dir.display()
            )));
        }
        let mut subs = vec!["data", "etc-docker/plugins", "cgroup-stage", "cli"];
        if rootfs.is_some() {
            subs.extend(["root/upper", "root/work", "root/merged"]);
        }
        for sub in subs {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| DockerError::io(format!("creating {}", dir.join(sub).display()), e))?;
        }
        std::fs::write(dir.join("daemon.json"), daemon_json)
            .map_err(|e| DockerError::io("writing daemon.json", e))?;
        if let Some(servers) = &opts.host_resolv_conf {
            let text: String = servers
                .iter()
                .map(|s| format!("nameserver {s}\n"))
                .collect();
            std::fs::write(dir.join("resolv.conf"), text)
                .map_err(|e| DockerError::io("writing resolv.conf", e))?;
        }
        let q = |p: &Path| shell_quote(&p.to_string_lossy());
        let mut args = vec![
            format!("--data-root={}", q(&dir.join("data"))),
            format!("--exec-root=/run/docker-{host_netns_name}"),
            format!("--pidfile={}", q(&dir.join("dockerd.pid"))),
            format!("-H=unix://{}", q(&dir.join("docker.sock"))),
            format!("--config-file={}", q(&dir.join("daemon.json"))),
            format!("--cgroup-parent=/dkt-{host_netns_name}"),
            format!("--bip={}", shell_quote(&opts.bip)),
            format!(
                "--default-address-pool={}",
                shell_quote(&opts.default_address_pool)
            ),
            "--userland-proxy=false".to_string(),
        ];
        args.extend(opts.extra_args.iter().map(|a| shell_quote(a)));
        let daemon = format!("exec dockerd {}\n", args.join(" "));
        let resolv = opts
            .host_resolv_conf
            .as_ref()
            .map(|_| dir.join("resolv.conf"));
        // Mounts happen in the new, private mount namespace only.
        let script = match &rootfs {
            None => format!(
                "set -e\n\
                 hostname {host}\n\
                 mount -t tmpfs -o mode=755 tmpfs /run\n\
                 mkdir -p /run/docker/plugins /run/lock\n\
                 mount --bind {etc} /etc/docker\n\
                 mount --rbind /sys/fs/cgroup {stage}\n\
                 mount -t sysfs sysfs /sys\n\
                 mount --move {stage} /sys/fs/cgroup\n\
                 {resolv}{daemon}",
                host = shell_quote(host_netns_name),
                etc = q(&dir.join("etc-docker")),
                stage = q(&dir.join("cgroup-stage")),
                resolv = resolv
                    .as_ref()
                    .map(|r| format!("mount --bind {} /etc/resolv.conf\n", q(r)))
                    .unwrap_or_default(),
            ),
            Some(tree) => {
                let mut shared = vec![dir.clone()];
                shared.extend(opts.shared.iter().cloned());
                tree_script(
                    host_netns_name,
                    tree,
                    &dir,
                    &shared_roots(&shared),
                    resolv.as_deref(),
                    &daemon,
                )
            }
        };
        let mut d = Self {
            host: host_netns_name.to_string(),
            workdir: dir,
            pid: None,
            mnt_ns: None,
            child: None,
            script,
            start_timeout: opts.start_timeout,
            engine: opts.engine,
            rootfs,
        };
        // From here on, Drop cleans up whatever happens.
        d.launch()?;
        Ok(d)
    }

    fn launch(&mut self) -> Result<(), DockerError> {
        // A pidfile left by a killed daemon could name a reused PID.
        let _ = std::fs::remove_file(self.workdir.join("dockerd.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.workdir.join("dockerd.log"))
            .map_err(|e| DockerError::io("opening dockerd.log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| DockerError::io("cloning log handle", e))?;
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host))
            .args([
                "--",
                "unshare",
                "-m",
                "-u",
                "--propagation",
                "private",
                "sh",
                "-c",
            ])
            .arg(&self.script)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| DockerError::io("spawning nsenter/unshare/dockerd", e))?;
        self.pid = Some(child.id());
        self.child = Some(child);
        self.mnt_ns = None;
        self.wait_ready(self.start_timeout)
    }

    /// Stops dockerd and everything in its mount namespace (containers die, as on a host
    /// reboot), keeps its data root, and starts it again. For reconnect tests.
    pub fn restart(&mut self) -> Result<(), DockerError> {
        let errors = self.stop_processes(false);
        if !errors.is_empty() {
            return Err(DockerError::Harness(errors.join("; ")));
        }
        self.launch()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), DockerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                self.pid = None;
                return Err(DockerError::Harness(format!(
                    "dockerd for {} exited early ({status}); log:\n{}",
                    self.host,
                    self.log_tail()
                )));
            }
            if self.mnt_ns.is_none()
                && let Some(pid) = self.pid
                && let Some(ns) = mnt_ns_of(pid)
                && Some(&ns) != mnt_ns_of(std::process::id()).as_ref()
            {
                self.mnt_ns = Some(ns);
            }
            if self.workdir.join("docker.sock").exists() {
                let out = self.docker(["version", "--format", "{{.Server.Version}}"])?;
                if out.status.success() && self.mnt_ns.is_some() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(DockerError::Harness(format!(
                    "dockerd for {} did not answer within {timeout:?}; log:\n{}",
                    self.host,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of dockerd's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.workdir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The lab host (network namespace) name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// This dockerd's directory (`workdir/HOST`).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// dockerd's PID (`None` once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Path of the Engine API socket (reachable from the root mount namespace).
    pub fn socket_path(&self) -> PathBuf {
        self.workdir.join("docker.sock")
    }

    /// Runs the docker CLI against this daemon.
    pub fn docker<I, S>(&self, args: I) -> Result<Output, DockerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.cli_command()?;
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket_path().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.workdir.join("cli"));
        run(&mut cmd, "docker")
    }

    /// The docker CLI matching this engine: the machine's for [`Engine::Host`], the release
    /// tree's (run inside dockerd's mount namespace: its root is the tree) otherwise.
    fn cli_command(&self) -> Result<std::process::Command, DockerError> {
        if self.rootfs.is_none() {
            return Ok(std::process::Command::new(docker_cli()));
        }
        let pid = self
            .pid
            .ok_or_else(|| DockerError::Harness("dockerd is not running".into()))?;
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg("-t")
            .arg(pid.to_string())
            .args(["-m", "--", "docker"]);
        Ok(cmd)
    }

    /// The engine this daemon runs.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The release tree this daemon runs from (`None` for [`Engine::Host`]).
    pub fn rootfs(&self) -> Option<&Path> {
        self.rootfs.as_deref()
    }

    /// The daemon's version and API version, as it reports them (`26.1.5`, `1.45`).
    pub fn server_version(&self) -> Result<(String, String), DockerError> {
        let v = self.docker_ok([
            "version",
            "--format",
            "{{.Server.Version}} {{.Server.APIVersion}}",
        ])?;
        let mut it = v.split_whitespace();
        match (it.next(), it.next()) {
            (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
            _ => Err(DockerError::Harness(format!(
                "docker version printed {v:?}"
            ))),
        }
    }

    /// Like [`Dockerd::docker`], but a non-zero exit is an error carrying the output.
    pub fn docker_ok<I, S>(&self, args: I) -> Result<String, DockerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let what = format!("docker {:?}", args);
        let out = self.docker(&args)?;
        // runc occasionally fails to start a container's init on a loaded machine ("OCI runtime
        // create failed ... broken pipe"): that is the runtime, not the network. Remove the
        // half-created container and start it once more.
        let transient = !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("OCI runtime create failed")
            && args.first().is_some_and(|a| a == "run");
        let out = match (transient, run_name(&args)) {
            (true, Some(name)) => {
                let _ = self.docker(["rm", "-f", name.as_str()]);
                self.docker(&args)?
            }
            _ => out,
        };
        let out = check(out, &what)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Builds the image `tag` from Debian's `busybox-static`: a tarball holding `/bin/busybox`
    /// plus one symlink per applet, fed to `docker import`.
    pub fn import_busybox(&self, tag: &str) -> Result<(), DockerError> {
        self.import_busybox_with(tag, &[])
    }

    /// [`Dockerd::import_busybox`] plus `extra` files of this machine, each at its own path
    /// (symlinks followed), e.g. glibc's `getent` with `libc.so.6` and the dynamic loader, so a
    /// container can resolve names as a glibc program does (`/etc/nsswitch.conf` is then
    /// `hosts: files dns`).
    pub fn import_busybox_with(&self, tag: &str, extra: &[&Path]) -> Result<(), DockerError> {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            return Err(DockerError::Harness(
                "/bin/busybox missing: apt-get install busybox-static".into(),
            ));
        }
        let root = self.workdir.join("busybox-rootfs");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).map_err(|e| DockerError::io("creating rootfs", e))?;
        for d in ["etc", "tmp", "proc", "sys", "dev", "root"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(|e| DockerError::io("creating rootfs", e))?;
        }
        std::fs::copy(busybox, bin.join("busybox"))
            .map_err(|e| DockerError::io("copying busybox", e))?;
        let list = check(
            run(
                std::process::Command::new(busybox).arg("--list"),
                "busybox --list",
            )?,
            "busybox --list",
        )?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "busybox" || applet.contains('/') {
                continue;
            }
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", &link)
                    .map_err(|e| DockerError::io(format!("linking {applet}"), e))?;
            }
        }
        for f in extra {
            let rel = f.strip_prefix("/").map_err(|_| {
                DockerError::Harness(format!("{} is not an absolute path", f.display()))
            })?;
            let dst = root.join(rel);
            if let Some(dir) = dst.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| DockerError::io(format!("creating {}", dir.display()), e))?;
            }
            std::fs::copy(f, &dst)
                .map_err(|e| DockerError::io(format!("copying {}", f.display()), e))?;
        }
        if !extra.is_empty() {
            std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n")
                .map_err(|e| DockerError::io("writing nsswitch.conf", e))?;
        }
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| DockerError::io("chmod /tmp", e))?;
        let tarball = self.workdir.join("busybox.tar");
        check(
            run(
                std::process::Command::new("tar")
                    .arg("-C")
                    .arg(&root)
                    .arg("-cf")
                    .arg(&tarball)
                    .arg("."),
                "tar",
            )?,
            "tar",
        )?;
        self.docker_ok([
            "import".as_ref(),
            "--change".as_ref(),
            "CMD [\"/bin/sh\"]".as_ref(),
            tarball.as_os_str(),
            tag.as_ref(),
        ])?;
        let _ = std::fs::remove_file(&tarball);
        let _ = std::fs::remove_dir_all(&root);
        Ok(())
    }

    /// A command that runs inside this host's network, mount and UTS namespaces (it sees
    /// dockerd's private `/run`, e.g. container netns bind mounts and
    /// `/run/docker/plugins`). Add arguments and spawn it; the caller owns the process.
    pub fn host_command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<std::process::Command, DockerError> {
        let pid = self
            .pid
            .ok_or_else(|| DockerError::Harness("dockerd is not running".into()))?;
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg("-t")
            .arg(pid.to_string())
            .args(["-m", "-n", "-u", "--"])
            .arg(program);
        Ok(cmd)
    }

    /// Runs `args` (program first) inside this host's namespaces and waits for it.
    pub fn exec_in_mount_ns<I, S>(&self, args: I) -> Result<Output, DockerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut it = args.into_iter();
        let program = it
            .next()
            .ok_or_else(|| DockerError::Harness("exec_in_mount_ns: empty command".into()))?;
        let mut cmd = self.host_command(program)?;
        cmd.args(it);
        run(&mut cmd, "nsenter")
    }

    /// Starts a long-running program (e.g. the agent) inside this host's namespaces. The
    /// caller owns the child and must end it; [`Dockerd::stop`] also ends every process left in
    /// the mount namespace.
    pub fn spawn_in_host<I, S>(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: I,
    ) -> Result<std::process::Child, DockerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.host_command(program)?;
        cmd.args(args).stdin(Stdio::null());
        cmd.spawn()
            .map_err(|e| DockerError::io("spawning a program in the host namespaces", e))
    }

    /// Writes `/etc/docker/plugins/NAME.spec` (as this dockerd sees it) pointing at
    /// `socket`, a unix socket path that must be reachable from dockerd's mount namespace
    /// (anything on disk, e.g. under [`Dockerd::workdir`]). Discovery is lazy, so this works
    /// any time before the driver is first used.
    pub fn install_plugin_spec(&self, name: &str, socket: &Path) -> Result<(), DockerError> {
        let spec = self
            .workdir
            .join("etc-docker/plugins")
            .join(format!("{name}.spec"));
        std::fs::write(&spec, format!("unix://{}\n", socket.display()))
            .map_err(|e| DockerError::io(format!("writing {}", spec.display()), e))
    }

    /// PIDs of every process in this dockerd's mount namespace.
    fn processes_in_ns(&self) -> Vec<u32> {
        let Some(ns) = &self.mnt_ns else {
            return Vec::new();
        };
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| mnt_ns_of(*pid).as_ref() == Some(ns))
            .collect()
    }

    /// Removes all containers, stops dockerd, ends every process left in its mount namespace
    /// and removes its directory. Idempotent; reports every failure, not only the first.
    pub fn stop(&mut self) -> Result<(), DockerError> {
        let mut errors = self.stop_processes(true);
        if self.workdir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.workdir)
        {
            errors.push(format!("removing {}: {e}", self.workdir.display()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DockerError::Harness(errors.join("; ")))
        }
    }

    /// Ends dockerd (after removing containers when `remove_containers`) and every process
    /// left in its mount namespace. Returns every failure.
    fn stop_processes(&mut self, remove_containers: bool) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(pid) = self.pid {
            if remove_containers
                && self.socket_path().exists()
                && let Ok(out) = self.docker(["ps", "-aq"])
            {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm".to_string(), "-f".to_string()];
                    args.extend(ids);
                    if let Err(e) = self.docker(&args).and_then(|o| check(o, "docker rm -f")) {
                        errors.push(e.to_string());
                    }
                }
            }
            // SAFETY: kill(2) on a PID we spawned and have not reaped yet (the Child handle
            // keeps it from being reused); no memory is involved.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(_)) = child.try_wait() {
                        exited = true;
                        break;
                    }
                } else {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !exited && let Some(child) = self.child.as_mut() {
                errors.push(format!("dockerd {pid} ignored SIGTERM for 30s; killing it"));
                let _ = child.kill();
                let _ = child.wait();
            }
            self.child = None;
            self.pid = None;
        }
        // containerd, shims and container processes stay in the mount namespace; they are all
        // descendants of the dockerd we started.
        for round in 0..50 {
            let pids = self.processes_in_ns();
            if pids.is_empty() {
                break;
            }
            let sig = if round < 20 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            for pid in &pids {
                // SAFETY: kill(2) with a plain PID and signal; these processes live in the
                // private mount namespace only our dockerd created.
                unsafe {
                    libc::kill(*pid as libc::pid_t, sig);
                }
            }
            if round == 49 {
                errors.push(format!(
                    "processes left in {}'s mount namespace: {pids:?}",
                    self.host
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.mnt_ns = None;
        errors
    }
}

/// The outermost of `paths`: a path under another one is already bound with it.
fn shared_roots(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut sorted: Vec<PathBuf> = paths.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in sorted {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    out
}

/// The start script for a release tree: an overlay of `tree` under `dir/root` (the cache stays
/// read-only), the host's root built there (with `resolv` as its `/etc/resolv.conf` when
/// given), `pivot_root` into it, then `daemon`.
fn tree_script(
    host: &str,
    tree: &Path,
    dir: &Path,
    shared: &[PathBuf],
    resolv: Option<&Path>,
    daemon: &str,
) -> String {
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let root = dir.join("root");
    let m = root.join("merged");
    let under = |p: &Path| {
        let rel = p.strip_prefix("/").unwrap_or(p);
        q(&m.join(rel))
    };
    let mut s = format!(
        "set -e\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         hostname {host}\n\
         mount -t overlay overlay -o lowerdir={tree},upperdir={upper},workdir={work} {m}\n\
         mount -t tmpfs -o mode=755 tmpfs {m}/run\n\
         mkdir -p {m}/run/docker/plugins {m}/run/lock\n\
         mount -t proc proc {m}/proc\n\
         mount -t sysfs sysfs {m}/sys\n\
         mount --rbind /sys/fs/cgroup {m}/sys/fs/cgroup\n\
         mount --rbind /dev {m}/dev\n\
         mkdir -p {m}/etc/docker\n\
         mount --bind {etc} {m}/etc/docker\n",
        host = shell_quote(host),
        tree = q(tree),
        upper = q(&root.join("upper")),
        work = q(&root.join("work")),
        m = q(&m),
        etc = q(&dir.join("etc-docker")),
    );
    for p in shared {
        s.push_str(&format!(
            "mkdir -p {t}\nmount --bind {p} {t}\n",
            p = q(p),
            t = under(p)
        ));
    }
    if let Some(r) = resolv {
        // A dangling symlink or nothing at all in the tree: a plain file to bind over.
        s.push_str(&format!(
            "rm -f {m}/etc/resolv.conf\ntouch {m}/etc/resolv.conf\nmount --bind {r} {m}/etc/resolv.conf\n",
            m = q(&m),
            r = q(r),
        ));
    }
    // After pivot_root, the machine's root is unmounted from this namespace: only what was
    // bound above stays reachable.
    s.push_str(&format!(
        "mkdir -p {m}/.oldroot\n\
         cd {m}\n\
         pivot_root . .oldroot\n\
         cd /\n\
         umount -l /.oldroot\n\
         rmdir /.oldroot\n\
         {daemon}",
        m = q(&m),
    ));
    s
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("dockerd harness cleanup for {}: {e}", self.host);
        }
    }
}

/// A named network namespace (`ip netns add NAME`) removed on drop. For lab tests.
#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    /// Creates `/run/netns/NAME` with `lo` up. A namespace of that name with no process in it is
    /// the leftover of an interrupted run (a killed test never drops its guard) and is replaced;
    /// one that still holds processes is another run's, and creating fails.
    pub fn create(name: &str) -> Result<Self, DockerError> {
        if std::path::Path::new("/run/netns").join(name).exists() {
            let pids = check(
                run(
                    std::process::Command::new("ip").args(["netns", "pids", name]),
                    "ip netns pids",
                )?,
                "ip netns pids",
            )?;
            let pids = String::from_utf8_lossy(&pids.stdout).into_owned();
            if !pids.trim().is_empty() {
                return Err(DockerError::Harness(format!(
                    "netns {name} exists and holds processes {}: another run is using it",
                    pids.split_whitespace().collect::<Vec<_>>().join(" ")
                )));
            }
            eprintln!("netns {name}: removing the empty leftover of an interrupted run");
            check(
                run(
                    std::process::Command::new("ip").args(["netns", "del", name]),
                    "ip netns del",
                )?,
                "ip netns del",
            )?;
        }
        check(
            run(
                std::process::Command::new("ip").args(["netns", "add", name]),
                "ip netns add",
            )?,
            "ip netns add",
        )?;
        let g = Self {
            name: name.to_string(),
        };
        check(
            run(
                std::process::Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]),
                "ip link set lo up",
            )?,
            "ip link set lo up",
        )?;
        Ok(g)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let out = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if let Ok(o) = out
            && !o.status.success()
        {
            eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// Panics unless running as root: privileged tests must not skip silently.
pub fn require_root() {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "privileged test: run as root");
}

/// The `--name` of a `docker run` command line, if any.
fn run_name(args: &[std::ffi::OsString]) -> Option<String> {
    let pos = args.iter().position(|a| a == "--name")?;
    args.get(pos + 1).map(|n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_hosts_are_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        for host in ["dkt-no-such-netns-x9", "a b", "", "../etc"] {
            let e = Dockerd::start(host, dir.path(), DockerdOpts::for_host(0)).unwrap_err();
            assert!(matches!(e, DockerError::Harness(_)), "{host:?}: {e}");
        }
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        let mut bad = DockerdOpts::for_host(0);
        bad.bip = "nonsense".into();
        assert!(bad.dns_addr().is_err());
        // The containers' DNS server goes into daemon.json, as users set it.
        let mut o = DockerdOpts::for_host(1);
        assert_eq!(o.daemon_json().unwrap(), "{\"dns\": [\"198.18.201.1\"]}\n");
        o.dns = Some(Ipv4Addr::new(169, 254, 53, 53));
        assert_eq!(o.daemon_json().unwrap(), "{\"dns\": [\"169.254.53.53\"]}\n");
        // Or the host's resolv.conf, then nothing in daemon.json; not both.
        o.host_resolv_conf = Some(vec![Ipv4Addr::new(169, 254, 53, 53)]);
        assert!(o.daemon_json().is_err());
        o.dns = None;
        assert_eq!(o.daemon_json().unwrap(), "{}\n");
    }

    #[test]
    fn engines_parse_and_name_their_trees() {
        for (s, e) in [
            ("20.10", Engine::Host),
            ("bookworm", Engine::Host),
            ("26", Engine::Trixie),
            ("trixie", Engine::Trixie),
            ("28", Engine::Sid),
            ("unstable", Engine::Sid),
        ] {
            assert_eq!(Engine::parse(s).unwrap(), e, "{s}");
        }
        assert!(Engine::parse("27").is_err());
        assert_eq!(version_of("28.5.2+dfsg4"), (28, 5));
        assert_eq!(version_of("20.10.24+dfsg1"), (20, 10));
        assert_eq!(version_of("junk"), (0, 0));
        assert!(Engine::Sid.runs("28.5.2+dfsg4") && Engine::Sid.runs("29.1.0"));
        assert!(!Engine::Sid.runs("26.1.5") && !Engine::Trixie.runs("28.5.2"));
        assert!(Engine::Host.runs("20.10.24+dfsg1") && !Engine::Host.runs("26.1.5"));
        assert_eq!(Engine::Host.rootfs().unwrap(), None);
        assert_eq!(
            Engine::ALL.map(|e| (e.label(), e.release())),
            [("20.10", None), ("26", Some("trixie")), ("28", Some("sid"))]
        );
    }

    #[test]
    fn shared_paths_are_bound_once_at_their_own_path() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            shared_roots(&[
                p("/tmp/lab/h1"),
                p("/work/t/debug"),
                p("/tmp/lab"),
                p("/tmp/lab")
            ]),
            vec![p("/tmp/lab"), p("/work/t/debug")]
        );
        // A sibling with a common string prefix is not under it.
        assert_eq!(
            shared_roots(&[p("/tmp/lab"), p("/tmp/lab2")]),
            vec![p("/tmp/lab"), p("/tmp/lab2")]
        );
        let script = tree_script(
            "h1",
            Path::new("/var/cache/t/sid-x"),
            Path::new("/tmp/lab/h1"),
            &[p("/tmp/lab"), p("/work/it's")],
            Some(Path::new("/tmp/lab/h1/resolv.conf")),
            "exec dockerd\n",
        );
        let m = "/tmp/lab/h1/root/merged";
        for line in [
            format!(
                "lowerdir='/var/cache/t/sid-x',upperdir='/tmp/lab/h1/root/upper',workdir='/tmp/lab/h1/root/work' '{m}'"
            ),
            format!("mount --bind '/tmp/lab' '{m}/tmp/lab'"),
            format!(r"mount --bind '/work/it'\''s' '{m}/work/it'\''s'"),
            format!("mount --bind '/tmp/lab/h1/etc-docker' '{m}'/etc/docker"),
            format!("mount --bind '/tmp/lab/h1/resolv.conf' '{m}'/etc/resolv.conf"),
            "pivot_root . .oldroot".to_string(),
            "umount -l /.oldroot".to_string(),
        ] {
            assert!(script.contains(&line), "{line}\n{script}");
        }
        // The daemon starts last, after the machine's root is gone from the namespace.
        assert!(script.ends_with("exec dockerd\n"));
        assert!(
            script.find("pivot_root").unwrap() > script.find("mount --bind '/tmp/lab'").unwrap()
        );
    }

    #[test]
    fn lab_addresses_stay_in_lab_ranges() {
        for i in 0..8 {
            let o = DockerdOpts::for_host(i);
            let gw: Ipv4Addr = o.dns_addr().unwrap();
            assert_eq!(gw.octets()[..2], [198, 18]);
            assert!(gw.octets()[2] >= 200);
            assert!(o.default_address_pool.starts_with("base=198.18.1"));
        }
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
