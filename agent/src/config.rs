//! Daemon settings: command-line flags, `OVERLAY_*` environment variables and a TOML file,
//! in that order of precedence, then defaults. Everything is validated here, so a bad value
//! stops the daemon at start with a one-line reason.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Parser, ValueEnum};
use ipnetwork::Ipv4Network;
use serde::Deserialize;

/// Which datapath programs the overlay on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathMode {
    /// Bridge + vxlan device with static FDB/neighbour entries.
    Kernel,
    /// tc eBPF programs + one collect-metadata vxlan device.
    Ebpf,
}

impl std::fmt::Display for DatapathMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatapathMode::Kernel => "kernel",
            DatapathMode::Ebpf => "ebpf",
        })
    }
}

/// Command line of `overlay-agent` (every flag also reads `OVERLAY_<FLAG>`).
#[derive(Debug, Default, Parser)]
#[command(
    name = "overlay-agent",
    version = crate::VERSION,
    about = "Per-host overlay networking agent"
)]
pub struct Cli {
    /// TOML file with the same settings (keys as the long flags, with `_` or `-`).
    #[arg(long, env = "OVERLAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Unique id of this host in the cluster.
    #[arg(long, env = "OVERLAY_HOST_ID")]
    pub host_id: Option<String>,
    /// Underlay address other hosts reach this one at (the VTEP).
    #[arg(long, env = "OVERLAY_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// KV store: `etcd://HOST:PORT[,HOST:PORT...]` or `embedded:///path/kv.sqlite`
    /// (default: embedded, under the state dir).
    #[arg(long, env = "OVERLAY_KV")]
    pub kv: Option<String>,
    /// Datapath: kernel (default) or ebpf.
    #[arg(long, env = "OVERLAY_DATAPATH", value_enum)]
    pub datapath: Option<DatapathMode>,
    /// Directory for the control socket `overlay.sock` and runtime files.
    #[arg(long, env = "OVERLAY_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Directory for persistent local state.
    #[arg(long, env = "OVERLAY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Subnet of the gateway bridge (default: chosen to avoid every address and route on the
    /// host, then kept).
    #[arg(long, env = "OVERLAY_GW_SUBNET")]
    pub gw_subnet: Option<String>,
    /// Serve the Docker remote network + IPAM plugin at /run/docker/plugins/ovl.sock.
    #[arg(long, env = "OVERLAY_DOCKER_PLUGIN")]
    pub docker_plugin: bool,
    /// With `--datapath ebpf`: run the kernel datapath if BPF cannot be used on this host
    /// (the reason is logged and shown in status).
    #[arg(long, env = "OVERLAY_DATAPATH_FALLBACK")]
    pub datapath_fallback: bool,
    /// UDP port of VXLAN on the wire (default 4789). Every host of the cluster must use the
    /// same; change it to share a host with another VXLAN user of 4789, such as Docker's
    /// classic overlay (whose vxlan devices would otherwise refuse to come up).
    #[arg(long, env = "OVERLAY_VXLAN_PORT")]
    pub vxlan_port: Option<u16>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "OVERLAY_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Lease time to live of this host's liveness record, in seconds (default 10).
    #[arg(long, env = "OVERLAY_LEASE_TTL")]
    pub lease_ttl: Option<u64>,
    /// Period of the full resync of datapath and names, in seconds (default 5).
    #[arg(long, env = "OVERLAY_RESYNC_INTERVAL")]
    pub resync_interval: Option<u64>,
    /// Pool automatic overlay subnets are carved from (default 10.10.0.0/16, /24 each).
    #[arg(long, env = "OVERLAY_SUBNET_POOL")]
    pub subnet_pool: Option<String>,
    /// Upstream DNS servers for names outside the cluster, `IP[:PORT],...` (default: the
    /// host's /etc/resolv.conf).
    #[arg(long, env = "OVERLAY_DNS_UPSTREAM")]
    pub dns_upstream: Option<String>,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(alias = "host_id")]
    host_id: Option<String>,
    #[serde(alias = "advertise_addr")]
    advertise_addr: Option<String>,
    kv: Option<String>,
    datapath: Option<DatapathMode>,
    #[serde(alias = "run_dir")]
    run_dir: Option<PathBuf>,
    #[serde(alias = "state_dir")]
    state_dir: Option<PathBuf>,
    #[serde(alias = "gw_subnet")]
    gw_subnet: Option<String>,
    #[serde(alias = "docker_plugin")]
    docker_plugin: Option<bool>,
    #[serde(alias = "datapath_fallback")]
    datapath_fallback: Option<bool>,
    #[serde(alias = "vxlan_port")]
    vxlan_port: Option<u16>,
    #[serde(alias = "metrics_addr")]
    metrics_addr: Option<String>,
    #[serde(alias = "lease_ttl")]
    lease_ttl: Option<u64>,
    #[serde(alias = "resync_interval")]
    resync_interval: Option<u64>,
    #[serde(alias = "subnet_pool")]
    subnet_pool: Option<String>,
    #[serde(alias = "dns_upstream")]
    dns_upstream: Option<String>,
}

/// Resolved, validated settings of the daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Host id.
    pub host_id: String,
    /// VTEP address.
    pub advertise_addr: Ipv4Addr,
    /// KV URL (`None`: embedded under the state dir).
    pub kv: Option<String>,
    /// Datapath mode.
    pub datapath: DatapathMode,
    /// Runtime directory.
    pub run_dir: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// Gateway bridge subnet, if fixed.
    pub gw_subnet: Option<Ipv4Network>,
    /// Serve the Docker plugin.
    pub docker_plugin: bool,
    /// Fall back to the kernel datapath when eBPF cannot run.
    pub datapath_fallback: bool,
    /// UDP port of VXLAN.
    pub vxlan_port: u16,
    /// Metrics listen address.
    pub metrics_addr: Option<SocketAddr>,
    /// Liveness lease TTL.
    pub lease_ttl: Duration,
    /// Full resync period.
    pub resync_interval: Duration,
    /// Pool for automatic subnets.
    pub subnet_pool: ovl_core::ipam::SubnetPool,
    /// Upstream DNS servers (empty: the host's resolv.conf).
    pub dns_upstream: Vec<SocketAddr>,
}

/// A settings error: one line, printed before exiting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Path of the control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join("overlay.sock")
    }

    /// Default embedded KV file.
    pub fn embedded_kv_path(&self) -> PathBuf {
        self.state_dir.join("kv.sqlite")
    }

    /// Merges flags/env with the config file (if any) and defaults, and validates.
    pub fn resolve(cli: Cli) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let host_id = cli
            .host_id
            .or(file.host_id)
            .ok_or_else(|| ConfigError("--host-id is required".into()))?;
        ovl_core::model::validate_network_name(&host_id).map_err(|_| {
            ConfigError(format!(
                "invalid --host-id {host_id:?}: use letters, digits, '-' and '_'"
            ))
        })?;
        let addr = cli
            .advertise_addr
            .or(file.advertise_addr)
            .ok_or_else(|| ConfigError("--advertise-addr is required".into()))?;
        let advertise_addr: Ipv4Addr = addr.parse().map_err(|_| {
            ConfigError(format!(
                "invalid --advertise-addr {addr:?}: expected an IPv4 address"
            ))
        })?;
        if advertise_addr.is_unspecified()
            || advertise_addr.is_multicast()
            || advertise_addr.is_broadcast()
        {
            return Err(ConfigError(format!(
                "invalid --advertise-addr {advertise_addr}: must be a unicast address"
            )));
        }
        let kv = cli.kv.or(file.kv);
        if let Some(url) = &kv {
            ovl_kv::parse_url(url).map_err(|e| ConfigError(e.to_string()))?;
        }
        let gw_subnet = match cli.gw_subnet.or(file.gw_subnet) {
            Some(s) => Some(parse_subnet("--gw-subnet", &s)?),
            None => None,
        };
        let metrics_addr = match cli.metrics_addr.or(file.metrics_addr) {
            Some(s) => Some(s.parse().map_err(|_| {
                ConfigError(format!("invalid --metrics-addr {s:?}: expected IP:PORT"))
            })?),
            None => None,
        };
        let lease_ttl = cli.lease_ttl.or(file.lease_ttl).unwrap_or(10);
        if !(2..=300).contains(&lease_ttl) {
            return Err(ConfigError(format!(
                "invalid --lease-ttl {lease_ttl}: must be 2-300 seconds"
            )));
        }
        let vxlan_port = cli
            .vxlan_port
            .or(file.vxlan_port)
            .unwrap_or(ovl_datapath::VXLAN_PORT);
        if vxlan_port == 0 {
            return Err(ConfigError(
                "invalid --vxlan-port 0: must be a UDP port 1-65535".into(),
            ));
        }
        let resync = cli.resync_interval.or(file.resync_interval).unwrap_or(5);
        if !(1..=3600).contains(&resync) {
            return Err(ConfigError(format!(
                "invalid --resync-interval {resync}: must be 1-3600 seconds"
            )));
        }
        let subnet_pool = match cli.subnet_pool.or(file.subnet_pool) {
            Some(s) => {
                let pool = parse_subnet("--subnet-pool", &s)?;
                if pool.prefix() > 24 {
                    return Err(ConfigError(format!(
                        "invalid --subnet-pool {s}: must be /24 or larger"
                    )));
                }
                ovl_core::ipam::SubnetPool { pool, prefix: 24 }
            }
            None => ovl_core::ipam::SubnetPool::default(),
        };
        let dns_upstream = match cli.dns_upstream.or(file.dns_upstream) {
            Some(list) => list
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<SocketAddr>()
                        .or_else(|_| s.parse::<Ipv4Addr>().map(|ip| SocketAddr::from((ip, 53))))
                        .map_err(|_| {
                            ConfigError(format!(
                                "invalid --dns-upstream {s:?}: expected IP or IP:PORT"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok(Settings {
            dns_upstream,
            host_id,
            advertise_addr,
            kv,
            datapath: cli
                .datapath
                .or(file.datapath)
                .unwrap_or(DatapathMode::Kernel),
            run_dir: cli
                .run_dir
                .or(file.run_dir)
                .unwrap_or_else(|| "/run/overlay-agent".into()),
            state_dir: cli
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| "/var/lib/overlay-agent".into()),
            gw_subnet,
            docker_plugin: cli.docker_plugin || file.docker_plugin.unwrap_or(false),
            datapath_fallback: cli.datapath_fallback || file.datapath_fallback.unwrap_or(false),
            vxlan_port,
            metrics_addr,
            lease_ttl: Duration::from_secs(lease_ttl),
            resync_interval: Duration::from_secs(resync),
            subnet_pool,
        })
    }
}

fn parse_subnet(flag: &str, s: &str) -> Result<Ipv4Network, ConfigError> {
    let net: Ipv4Network = s.parse().map_err(|_| {
        ConfigError(format!(
            "invalid {flag} {s:?}: expected an IPv4 CIDR like 10.1.0.0/24"
        ))
    })?;
    ovl_core::ipam::check_subnet(net).map_err(|e| ConfigError(format!("invalid {flag}: {e}")))
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        ConfigError(format!("invalid config file {}: {msg}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["overlay-agent"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_and_required() {
        let s = Settings::resolve(cli(&["--host-id", "h1", "--advertise-addr", "198.18.0.11"]))
            .unwrap();
        assert_eq!(s.datapath, DatapathMode::Kernel);
        assert_eq!(
            s.socket_path(),
            PathBuf::from("/run/overlay-agent/overlay.sock")
        );
        assert_eq!(s.lease_ttl, Duration::from_secs(10));
        assert_eq!(s.vxlan_port, 4789);
        assert!(
            Settings::resolve(cli(&["--advertise-addr", "198.18.0.11"]))
                .unwrap_err()
                .0
                .contains("--host-id")
        );
        assert!(
            Settings::resolve(cli(&["--host-id", "h1"]))
                .unwrap_err()
                .0
                .contains("--advertise-addr")
        );
    }

    #[test]
    fn bad_values_give_one_line_reasons() {
        let base = ["--host-id", "h1", "--advertise-addr", "198.18.0.11"];
        let bad = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            Settings::resolve(cli(&a)).unwrap_err().0
        };
        assert!(bad(&["--kv", "consul://x:1"]).contains("invalid KV URL"));
        assert!(bad(&["--gw-subnet", "300.1.0.0/24"]).contains("--gw-subnet"));
        assert!(bad(&["--gw-subnet", "172.30.0.1/24"]).contains("host bits"));
        assert!(bad(&["--metrics-addr", "nope"]).contains("--metrics-addr"));
        assert!(bad(&["--lease-ttl", "1"]).contains("--lease-ttl"));
        assert!(bad(&["--vxlan-port", "0"]).contains("--vxlan-port"));
        let e = Settings::resolve(cli(&[
            "--host-id",
            "h 1",
            "--advertise-addr",
            "198.18.0.11",
        ]))
        .unwrap_err();
        assert!(e.0.contains("--host-id"));
        let e = Settings::resolve(cli(&["--host-id", "h1", "--advertise-addr", "0.0.0.0"]))
            .unwrap_err();
        assert!(e.0.contains("unicast"));
        for e in [bad(&["--kv", "etcd://"]), bad(&["--gw-subnet", "x"])] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "host-id = \"fromfile\"\nadvertise_addr = \"198.18.0.12\"\ndatapath = \"ebpf\"\nlease-ttl = 7\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = Settings::resolve(cli(&["--config", p])).unwrap();
        assert_eq!(s.host_id, "fromfile");
        assert_eq!(s.datapath, DatapathMode::Ebpf);
        assert_eq!(s.lease_ttl, Duration::from_secs(7));
        let s = Settings::resolve(cli(&[
            "--config",
            p,
            "--host-id",
            "flag",
            "--datapath",
            "kernel",
        ]))
        .unwrap();
        assert_eq!(s.host_id, "flag");
        assert_eq!(s.datapath, DatapathMode::Kernel);

        std::fs::write(&path, "host-id = \"x\"\nbogus = 1\n").unwrap();
        let e = Settings::resolve(cli(&["--config", p])).unwrap_err();
        assert!(e.0.contains("bogus"), "{e}");
        let e = Settings::resolve(cli(&["--config", "/nonexistent/agent.toml"])).unwrap_err();
        assert!(e.0.contains("/nonexistent/agent.toml"));
    }
}
