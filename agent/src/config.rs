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

/// Where the Docker plugin socket goes (the plugin name is the file name: `ovl`).
pub const PLUGIN_SOCKET: &str = "/run/docker/plugins/ovl.sock";

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
    /// KV store: `etcd://HOST:PORT[,HOST:PORT...]`, `etcds://...` (TLS) or
    /// `embedded:///path/kv.sqlite` (default: embedded, under the state dir).
    #[arg(long, env = "OVERLAY_KV")]
    pub kv: Option<String>,
    /// With `etcds://`: PEM file of the CA(s) that sign the etcd members' certificates
    /// (default: the system's trusted roots).
    #[arg(long, env = "OVERLAY_KV_CA")]
    pub kv_ca: Option<PathBuf>,
    /// With `etcds://`: PEM client certificate for etcd's client-certificate authentication.
    #[arg(long, env = "OVERLAY_KV_CERT")]
    pub kv_cert: Option<PathBuf>,
    /// With `etcds://`: PEM private key of `--kv-cert`.
    #[arg(long, env = "OVERLAY_KV_KEY")]
    pub kv_key: Option<PathBuf>,
    /// With `etcds://`: etcd user name (the password comes from `--kv-password-file` or the
    /// environment variable `OVERLAY_KV_PASSWORD`, never from the command line).
    #[arg(long, env = "OVERLAY_KV_USER")]
    pub kv_user: Option<String>,
    /// File whose first line is the etcd user's password.
    #[arg(long, env = "OVERLAY_KV_PASSWORD_FILE")]
    pub kv_password_file: Option<PathBuf>,
    /// Group owner of the control socket and the Docker plugin socket (a name or a GID); the
    /// control socket is then mode 0660 instead of 0600.
    #[arg(long, env = "OVERLAY_SOCKET_GROUP")]
    pub socket_group: Option<String>,
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
    /// With `--docker-plugin`: do not create the cluster's networks in this host's dockerd
    /// (each host then creates the networks it uses itself, as before).
    #[arg(long, env = "OVERLAY_NO_DOCKER_NETWORK_SYNC")]
    pub no_docker_network_sync: bool,
    /// With `--datapath ebpf`: run the kernel datapath if BPF cannot be used on this host
    /// (the reason is logged and shown in status).
    #[arg(long, env = "OVERLAY_DATAPATH_FALLBACK")]
    pub datapath_fallback: bool,
    /// UDP port of VXLAN on the wire (default 4789). Every host of the cluster must use the
    /// same; change it to share a host with another VXLAN user of 4789, such as Docker's
    /// classic overlay (whose vxlan devices would otherwise refuse to come up).
    #[arg(long, env = "OVERLAY_VXLAN_PORT")]
    pub vxlan_port: Option<u16>,
    /// UDP port of WireGuard between hosts, for encrypted networks (default 51820). Every
    /// host of the cluster publishes its own in its host record.
    #[arg(long, env = "OVERLAY_WG_PORT")]
    pub wg_port: Option<u16>,
    /// Which WireGuard carries encrypted networks: `auto` (the kernel's where this host has
    /// it, else userspace), `kernel` or `userspace`. Hosts of either kind share networks.
    #[arg(long, env = "OVERLAY_WIREGUARD")]
    pub wireguard: Option<WgMode>,
    /// UDP port of the VXLAN of encrypted networks inside WireGuard (default 4790). Every
    /// host of the cluster must use the same; it must differ from --vxlan-port.
    #[arg(long, env = "OVERLAY_ENCRYPTED_VXLAN_PORT")]
    pub encrypted_vxlan_port: Option<u16>,
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
    /// The link-local address (169.254.0.0/16) where the agent serves DNS to this host's
    /// Docker containers, on the interface `ovl_dns`; Docker's resolver forwards to it
    /// (daemon.json `"dns"`). Default 169.254.53.53 with `--docker-plugin`; `none`: off.
    #[arg(long, env = "OVERLAY_DNS_ADDR")]
    pub dns_addr: Option<String>,
    /// Host interfaces (container bridges) whose traffic may query `--dns-addr`, comma
    /// separated, `*` as a suffix wildcard (default `docker0,docker_gwbridge,br-*`). The host
    /// itself always may; anything else sent to the address is dropped and counted.
    #[arg(long, env = "OVERLAY_DNS_INTERFACES")]
    pub dns_interfaces: Option<String>,
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
    #[serde(alias = "kv_ca")]
    kv_ca: Option<PathBuf>,
    #[serde(alias = "kv_cert")]
    kv_cert: Option<PathBuf>,
    #[serde(alias = "kv_key")]
    kv_key: Option<PathBuf>,
    #[serde(alias = "kv_user")]
    kv_user: Option<String>,
    #[serde(alias = "kv_password_file")]
    kv_password_file: Option<PathBuf>,
    #[serde(alias = "socket_group")]
    socket_group: Option<String>,
    datapath: Option<DatapathMode>,
    #[serde(alias = "run_dir")]
    run_dir: Option<PathBuf>,
    #[serde(alias = "state_dir")]
    state_dir: Option<PathBuf>,
    #[serde(alias = "gw_subnet")]
    gw_subnet: Option<String>,
    #[serde(alias = "docker_plugin")]
    docker_plugin: Option<bool>,
    #[serde(alias = "no_docker_network_sync")]
    no_docker_network_sync: Option<bool>,
    #[serde(alias = "datapath_fallback")]
    datapath_fallback: Option<bool>,
    #[serde(alias = "vxlan_port")]
    vxlan_port: Option<u16>,
    #[serde(alias = "wg_port")]
    wg_port: Option<u16>,
    #[serde(alias = "encrypted_vxlan_port")]
    encrypted_vxlan_port: Option<u16>,
    wireguard: Option<WgMode>,
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
    #[serde(alias = "dns_addr")]
    dns_addr: Option<String>,
    #[serde(alias = "dns_interfaces")]
    dns_interfaces: Option<String>,
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
    /// TLS material and credentials for `etcds://` (read and checked at start).
    pub kv_security: ovl_kv::EtcdSecurity,
    /// Group owner (GID) of the control and plugin sockets.
    pub socket_group: Option<u32>,
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
    /// Keep every cluster network present in this host's dockerd.
    pub docker_network_sync: bool,
    /// Fall back to the kernel datapath when eBPF cannot run.
    pub datapath_fallback: bool,
    /// UDP port of VXLAN.
    pub vxlan_port: u16,
    /// UDP port of WireGuard.
    pub wg_port: u16,
    /// UDP port of the VXLAN of encrypted networks (routed into WireGuard).
    pub encrypted_vxlan_port: u16,
    /// Which WireGuard.
    pub wireguard: WgMode,
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
    /// The DNS address for Docker containers (`None`: not served).
    pub dns_addr: Option<Ipv4Addr>,
    /// Interfaces (patterns) whose traffic may query `dns_addr`.
    pub dns_interfaces: Vec<String>,
}

/// `--wireguard`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WgMode {
    /// The kernel's WireGuard where this host has it, else userspace.
    #[default]
    Auto,
    /// The kernel's (refused at the first encrypted network if the kernel has none).
    Kernel,
    /// The userspace device in the agent.
    Userspace,
}

impl std::fmt::Display for WgMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WgMode::Auto => "auto",
            WgMode::Kernel => "kernel",
            WgMode::Userspace => "userspace",
        })
    }
}

/// The default `--dns-addr` (with `--docker-plugin`).
pub const DEFAULT_DNS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);
/// The default `--dns-interfaces`: Docker's default bridge, its gateway bridge and its
/// user-defined bridges.
pub const DEFAULT_DNS_INTERFACES: &str = "docker0,docker_gwbridge,br-*";

/// Parses `--dns-addr`: `none`/`off`, or a link-local unicast address.
fn parse_dns_addr(s: &str) -> Result<Option<Ipv4Addr>, ConfigError> {
    let s = s.trim();
    if matches!(s, "none" | "off") {
        return Ok(None);
    }
    let bad = |why: &str| ConfigError(format!("invalid --dns-addr {s:?}: {why}"));
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| bad("expected an IPv4 address or none"))?;
    let o = ip.octets();
    if !ip.is_link_local() || o[3] == 0 || o[3] == 255 || (o[2] == 169 && o[3] == 254) {
        // Link-local: never routed off the host, so only what the guard lets in reaches it.
        // 169.254.169.254 is the cloud metadata service.
        return Err(bad(
            "use a link-local unicast address in 169.254.0.0/16 (not .0, .255 or 169.254.169.254)",
        ));
    }
    Ok(Some(ip))
}

/// Parses `--dns-interfaces`.
fn parse_dns_interfaces(s: &str) -> Result<Vec<String>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            ovl_gateway::ruleset::check_ifname_pattern(p)
                .map(|()| p.to_string())
                .map_err(|e| ConfigError(format!("invalid --dns-interfaces: {e}")))
        })
        .collect()
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
        Self::resolve_with_env(cli, |name| std::env::var(name).ok())
    }

    /// [`Settings::resolve`] reading the variables that are not flags (`OVERLAY_KV_PASSWORD`)
    /// through `env`.
    pub fn resolve_with_env(
        cli: Cli,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
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
        let kv_url = match &kv {
            Some(url) => Some(ovl_kv::parse_url(url).map_err(|e| ConfigError(e.to_string()))?),
            None => None,
        };
        let kv_security = kv_security(
            kv_url.as_ref(),
            KvFlags {
                ca: cli.kv_ca.or(file.kv_ca),
                cert: cli.kv_cert.or(file.kv_cert),
                key: cli.kv_key.or(file.kv_key),
                user: cli.kv_user.or(file.kv_user),
                password_file: cli.kv_password_file,
                password_env: env(KV_PASSWORD_ENV),
                password_file_in_config: file.kv_password_file,
            },
        )?;
        let socket_group = match cli.socket_group.or(file.socket_group) {
            Some(g) => Some(
                crate::perms::group_id(&g)
                    .map_err(|e| ConfigError(format!("invalid --socket-group: {e}")))?,
            ),
            None => None,
        };
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
            .unwrap_or(ovl_model::VXLAN_PORT);
        if vxlan_port == 0 {
            return Err(ConfigError(
                "invalid --vxlan-port 0: must be a UDP port 1-65535".into(),
            ));
        }
        let wg_port = cli.wg_port.or(file.wg_port).unwrap_or(ovl_model::WG_PORT);
        let encrypted_vxlan_port = cli
            .encrypted_vxlan_port
            .or(file.encrypted_vxlan_port)
            .unwrap_or(ovl_model::ENCRYPTED_VXLAN_PORT);
        let ports = [
            ("--vxlan-port", vxlan_port),
            ("--wg-port", wg_port),
            ("--encrypted-vxlan-port", encrypted_vxlan_port),
        ];
        for (i, (flag, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(ConfigError(format!(
                    "invalid {flag} 0: must be a UDP port 1-65535"
                )));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(ConfigError(format!(
                    "invalid {flag} {port}: {other} uses it; the ports must differ"
                )));
            }
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
        let docker_plugin = cli.docker_plugin || file.docker_plugin.unwrap_or(false);
        let dns_addr = match cli.dns_addr.or(file.dns_addr) {
            Some(s) => parse_dns_addr(&s)?,
            None => docker_plugin.then_some(DEFAULT_DNS_ADDR),
        };
        let dns_interfaces = parse_dns_interfaces(
            &cli.dns_interfaces
                .or(file.dns_interfaces)
                .unwrap_or_else(|| DEFAULT_DNS_INTERFACES.to_string()),
        )?;
        if let Some(a) = dns_addr
            && dns_upstream
                .iter()
                .any(|u| u.ip() == std::net::IpAddr::V4(a))
        {
            return Err(ConfigError(format!(
                "--dns-upstream lists {a}, the agent's own --dns-addr: that would loop"
            )));
        }
        Ok(Settings {
            dns_upstream,
            dns_addr,
            dns_interfaces,
            host_id,
            advertise_addr,
            kv,
            kv_security,
            socket_group,
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
            docker_plugin,
            docker_network_sync: !(cli.no_docker_network_sync
                || file.no_docker_network_sync.unwrap_or(false)),
            datapath_fallback: cli.datapath_fallback || file.datapath_fallback.unwrap_or(false),
            vxlan_port,
            wg_port,
            encrypted_vxlan_port,
            wireguard: cli.wireguard.or(file.wireguard).unwrap_or_default(),
            metrics_addr,
            lease_ttl: Duration::from_secs(lease_ttl),
            resync_interval: Duration::from_secs(resync),
            subnet_pool,
        })
    }
}

/// The environment variable that may hold the etcd password (a flag would show in `ps`).
pub const KV_PASSWORD_ENV: &str = "OVERLAY_KV_PASSWORD";

/// The KV security settings as given, before they are read and checked.
struct KvFlags {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    user: Option<String>,
    /// `--kv-password-file` or `OVERLAY_KV_PASSWORD_FILE`.
    password_file: Option<PathBuf>,
    /// `OVERLAY_KV_PASSWORD`.
    password_env: Option<String>,
    /// `kv-password-file` in the config file.
    password_file_in_config: Option<PathBuf>,
}

/// Reads and checks the TLS files and the password, and that they fit the KV URL: files
/// and credentials only with `etcds://`, a user only with a password and the other way round.
fn kv_security(
    url: Option<&ovl_kv::KvUrl>,
    f: KvFlags,
) -> Result<ovl_kv::EtcdSecurity, ConfigError> {
    use ovl_kv::secure::{Password, load_ca, load_identity, load_password};
    let err = |flag: &str, e: ovl_kv::KvError| ConfigError(format!("invalid {flag}: {e}"));
    // Flags, then the environment, then the file (the flag's own variable counts as the flag).
    let password = match (f.password_file, f.password_env, f.password_file_in_config) {
        (Some(p), _, _) => Some(load_password(&p).map_err(|e| err("--kv-password-file", e))?),
        (None, Some(pw), _) if pw.is_empty() => {
            return Err(ConfigError(format!("{KV_PASSWORD_ENV} is set but empty")));
        }
        (None, Some(pw), _) => Some(Password::new(pw)),
        (None, None, Some(p)) => {
            Some(load_password(&p).map_err(|e| err("kv-password-file (config file)", e))?)
        }
        (None, None, None) => None,
    };
    let tls_given = f.ca.is_some() || f.cert.is_some() || f.key.is_some();
    let creds_given = f.user.is_some() || password.is_some();
    match url {
        Some(ovl_kv::KvUrl::Etcd { tls: true, .. }) => {}
        Some(ovl_kv::KvUrl::Etcd { tls: false, .. }) if creds_given => {
            return Err(ConfigError(
                "--kv-user and its password need --kv etcds://... (TLS): over etcd:// the \
                 password would cross the network in clear text"
                    .into(),
            ));
        }
        _ if tls_given || creds_given => {
            return Err(ConfigError(
                "--kv-ca, --kv-cert, --kv-key, --kv-user and a KV password need \
                 --kv etcds://HOST:PORT[,...]"
                    .into(),
            ));
        }
        _ => return Ok(ovl_kv::EtcdSecurity::default()),
    }
    let user = match (f.user, password) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
        (Some(_), Some(_)) => return Err(ConfigError("invalid --kv-user: empty".into())),
        (Some(u), None) => {
            return Err(ConfigError(format!(
                "--kv-user {u:?} needs a password: --kv-password-file FILE or {KV_PASSWORD_ENV}"
            )));
        }
        (None, Some(_)) => {
            return Err(ConfigError(
                "a KV password was given but no --kv-user".into(),
            ));
        }
        (None, None) => None,
    };
    let identity = match (f.cert, f.key) {
        (Some(c), Some(k)) => {
            Some(load_identity(&c, &k).map_err(|e| err("--kv-cert/--kv-key", e))?)
        }
        (None, None) => None,
        _ => return Err(ConfigError("--kv-cert and --kv-key go together".into())),
    };
    let ca_pem = match f.ca {
        Some(p) => Some(load_ca(&p).map_err(|e| err("--kv-ca", e))?),
        None => None,
    };
    Ok(ovl_kv::EtcdSecurity {
        ca_pem,
        identity,
        user,
    })
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
        // The Docker DNS address comes with the plugin (or when asked for).
        assert_eq!(s.dns_addr, None);
        assert_eq!(s.dns_interfaces, ["docker0", "docker_gwbridge", "br-*"]);
        let base = ["--host-id", "h1", "--advertise-addr", "198.18.0.11"];
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            Settings::resolve(cli(&a)).unwrap()
        };
        assert_eq!(with(&["--docker-plugin"]).dns_addr, Some(DEFAULT_DNS_ADDR));
        assert_eq!(
            with(&["--docker-plugin", "--dns-addr", "none"]).dns_addr,
            None
        );
        let s = with(&[
            "--dns-addr",
            "169.254.7.7",
            "--dns-interfaces",
            "cbr0, br-*",
        ]);
        assert_eq!(s.dns_addr, Some(Ipv4Addr::new(169, 254, 7, 7)));
        assert_eq!(s.dns_interfaces, ["cbr0", "br-*"]);
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
        for a in ["10.0.0.53", "169.254.169.254", "169.254.0.0", "x"] {
            assert!(bad(&["--dns-addr", a]).contains("--dns-addr"), "{a}");
        }
        assert!(bad(&["--dns-interfaces", "docker0,a b"]).contains("--dns-interfaces"));
        assert!(
            bad(&["--dns-addr", "169.254.9.9", "--dns-upstream", "169.254.9.9"]).contains("loop")
        );
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

    /// A CA and a client certificate with its key (and a key of another pair), as files.
    fn pki(dir: &Path) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["ovl-agent".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join("agent.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("agent-key.pem"), key.serialize_pem()).unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(dir.join("other-key.pem"), other.serialize_pem()).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
    }

    #[test]
    fn etcd_tls_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path());
        let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        let base = ["--host-id", "h1", "--advertise-addr", "198.18.0.11"];
        let tls = [
            "--kv".to_string(),
            "etcds://198.18.0.1:2379,198.18.0.2:2379".into(),
            "--kv-ca".into(),
            f("ca.pem"),
            "--kv-cert".into(),
            f("agent.pem"),
            "--kv-key".into(),
            f("agent-key.pem"),
        ];
        let no_env = |_: &str| None;
        let with = |extra: &[String], env: &dyn Fn(&str) -> Option<String>| {
            let mut a: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            a.extend_from_slice(extra);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            Settings::resolve_with_env(cli(&a), env)
        };
        let user = ["--kv-user".to_string(), "ovl-agent".into()];
        let pwfile = ["--kv-password-file".to_string(), f("pw")];

        // Flags.
        let s = with(&[&tls[..], &user, &pwfile].concat(), &no_env).unwrap();
        let sec = &s.kv_security;
        assert!(sec.ca_pem.is_some() && sec.identity.is_some());
        let (u, p) = sec.user.as_ref().unwrap();
        assert_eq!((u.as_str(), p.expose()), ("ovl-agent", "s3cret"));
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("s3cret") && !dbg.contains("PRIVATE KEY"),
            "{dbg}"
        );

        // The password from the environment; a password file given as a flag wins.
        let env = |k: &str| (k == "OVERLAY_KV_PASSWORD").then(|| "from-env".to_string());
        let s = with(&[&tls[..], &user].concat(), &env).unwrap();
        assert_eq!(s.kv_security.user.unwrap().1.expose(), "from-env");
        let s = with(&[&tls[..], &user, &pwfile].concat(), &env).unwrap();
        assert_eq!(s.kv_security.user.unwrap().1.expose(), "s3cret");

        // Everything from the config file.
        let toml = dir.path().join("agent.toml");
        std::fs::write(
            &toml,
            format!(
                "kv = \"etcds://198.18.0.1:2379\"\nkv-ca = \"{}\"\nkv_cert = \"{}\"\n\
                 kv-key = \"{}\"\nkv-user = \"ovl-agent\"\nkv-password-file = \"{}\"\n\
                 socket-group = \"0\"\n",
                f("ca.pem"),
                f("agent.pem"),
                f("agent-key.pem"),
                f("pw")
            ),
        )
        .unwrap();
        let s = with(&["--config".into(), toml.to_str().unwrap().into()], &no_env).unwrap();
        assert!(s.kv_security.identity.is_some());
        assert_eq!(s.kv_security.user.unwrap().1.expose(), "s3cret");
        assert_eq!(s.socket_group, Some(0));
        // The environment's password beats the config file's password file.
        let s = with(&["--config".into(), toml.to_str().unwrap().into()], &env).unwrap();
        assert_eq!(s.kv_security.user.unwrap().1.expose(), "from-env");

        // Refused, with reasons.
        let bad = |extra: Vec<String>, env: &dyn Fn(&str) -> Option<String>| {
            let e = with(&extra, env).unwrap_err().0;
            assert!(!e.contains('\n'), "one line: {e}");
            e
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(bad([&tls[..], &user].concat(), &no_env).contains("needs a password"));
        assert!(bad([&tls[..], &pwfile].concat(), &no_env).contains("no --kv-user"));
        assert!(
            bad(
                [&s(&["--kv", "etcd://h:1"]), &user[..], &pwfile].concat(),
                &no_env
            )
            .contains("clear text")
        );
        assert!(bad([&s(&["--kv-ca"]), &[f("ca.pem")][..]].concat(), &no_env).contains("etcds://"));
        let mut half = tls.to_vec();
        half.truncate(6);
        assert!(bad(half, &no_env).contains("go together"));
        let mut wrong_key = tls.to_vec();
        wrong_key[7] = f("other-key.pem");
        let e = bad(wrong_key, &no_env);
        assert!(
            e.contains("--kv-cert/--kv-key") && e.contains("does not belong"),
            "{e}"
        );
        let mut not_ca = tls.to_vec();
        not_ca[3] = f("pw");
        assert!(bad(not_ca, &no_env).contains("invalid --kv-ca"));
        let mut missing = tls.to_vec();
        missing[3] = f("nope.pem");
        assert!(bad(missing, &no_env).contains("nope.pem"));
        let empty = |k: &str| (k == "OVERLAY_KV_PASSWORD").then(String::new);
        assert!(bad([&tls[..], &user].concat(), &empty).contains("empty"));
        let e = bad(s(&["--socket-group", "ovl-no-such-group"]), &no_env);
        assert!(
            e.contains("--socket-group") && e.contains("no such group"),
            "{e}"
        );
    }
}
