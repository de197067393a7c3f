//! Forwarding of non-cluster names to upstream servers, with hickory-resolver.
//!
//! The resolver is configured as a plain stub: upstream servers only (no search domains, no
//! hosts file), short per-round timeouts, few attempts, and its response cache. Every forward
//! is additionally bounded by an overall deadline so a client never waits longer than
//! `timeout * attempts` plus a small margin: the answer is then SERVFAIL, never a hang.
//!
//! Upstream sockets are opened lazily by the resolver from the agent's own network namespace
//! (not the container's): the agent's resolv.conf is what counts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
    ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};

use crate::NamesError;

/// Where upstream servers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstreams {
    /// The `nameserver` lines of the host's `/etc/resolv.conf`.
    System,
    /// The `nameserver` lines of this resolv.conf file.
    ResolvConf(PathBuf),
    /// These servers (UDP, falling back to TCP for truncated answers), in order of preference.
    Servers(Vec<SocketAddr>),
}

/// How forwarding behaves.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Where the upstream servers come from.
    pub upstreams: Upstreams,
    /// Time allowed for one round of attempts (the resolver queries up to two servers in
    /// parallel per round and moves on to the next ones when they fail).
    pub timeout: Duration,
    /// Rounds before giving up (then SERVFAIL).
    pub attempts: usize,
    /// Responses kept in the resolver's cache.
    pub cache_size: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            upstreams: Upstreams::System,
            timeout: Duration::from_secs(1),
            attempts: 2,
            cache_size: 4096,
        }
    }
}

/// The outcome of one forwarded question.
#[derive(Debug)]
pub enum Forwarded {
    /// Upstream answered with data.
    Answer {
        /// Answer section (CNAME chains included).
        answers: Vec<Record>,
        /// Authority section.
        authorities: Vec<Record>,
    },
    /// Upstream said NXDOMAIN, or NOERROR without data.
    Negative {
        /// NXDomain or NoError.
        code: ResponseCode,
        /// The SOA, if upstream sent one (lets clients cache the negative answer).
        authorities: Vec<Record>,
    },
    /// No usable answer from any server in time (timeouts, SERVFAIL, REFUSED, no servers).
    Failed,
}

/// Resolves non-cluster names upstream. Cheap to clone (shares the resolver and its cache).
#[derive(Clone)]
pub struct Forwarder {
    resolver: Option<TokioResolver>,
    servers: Vec<SocketAddr>,
    deadline: Duration,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("servers", &self.servers)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// Reads the `nameserver` addresses (port 53) of a resolv.conf.
pub fn resolv_conf_servers(path: &Path) -> Result<Vec<SocketAddr>, NamesError> {
    let data = std::fs::read(path).map_err(|source| NamesError::File {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let (config, _) = hickory_resolver::system_conf::parse_resolv_conf(&data)
        .map_err(|e| NamesError::Upstream(format!("parse {}: {e}", path.display())))?;
    let mut servers: Vec<SocketAddr> = Vec::new();
    for ns in config.name_servers() {
        let addr = SocketAddr::new(ns.ip, 53);
        if !servers.contains(&addr) {
            servers.push(addr);
        }
    }
    Ok(servers)
}

impl Forwarder {
    /// Builds the forwarder. An empty server list is allowed: every forward is then SERVFAIL
    /// immediately (an agent on a host without upstream DNS still answers cluster names).
    pub fn new(config: &ForwardConfig) -> Result<Forwarder, NamesError> {
        if config.attempts == 0 || config.timeout.is_zero() {
            return Err(NamesError::Upstream(
                "timeout and attempts must be positive".into(),
            ));
        }
        let servers = match &config.upstreams {
            Upstreams::System => resolv_conf_servers(Path::new("/etc/resolv.conf"))?,
            Upstreams::ResolvConf(path) => resolv_conf_servers(path)?,
            Upstreams::Servers(list) => list.clone(),
        };
        if let Some(bad) = servers
            .iter()
            .find(|s| s.ip().is_unspecified() || s.port() == 0)
        {
            return Err(NamesError::Upstream(format!(
                "unusable upstream server {bad}"
            )));
        }
        let deadline = config.timeout * u32::try_from(config.attempts).unwrap_or(u32::MAX)
            + Duration::from_millis(250);
        if servers.is_empty() {
            tracing::warn!("no upstream DNS servers: non-cluster names will get SERVFAIL");
            return Ok(Forwarder {
                resolver: None,
                servers,
                deadline,
            });
        }
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut opts = ResolverOpts::default();
        opts.timeout = config.timeout;
        opts.attempts = config.attempts;
        opts.cache_size = config.cache_size;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.num_concurrent_reqs = 2;
        opts.max_active_requests = 512;
        opts.preserve_intermediates = true;
        opts.server_ordering_strategy = ServerOrderingStrategy::QueryStatistics;
        opts.ndots = 0;
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| NamesError::Upstream(format!("build resolver: {e}")))?;
        Ok(Forwarder {
            resolver: Some(resolver),
            servers,
            deadline,
        })
    }

    /// The upstream servers in use.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The longest a forward can take before it is answered SERVFAIL.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Asks upstream for `name`/`rtype`.
    pub async fn forward(&self, mut name: Name, rtype: RecordType) -> Forwarded {
        let Some(resolver) = &self.resolver else {
            return Forwarded::Failed;
        };
        // Names from the wire are absolute; make sure no search domain is ever appended.
        name.set_fqdn(true);
        match tokio::time::timeout(self.deadline, resolver.lookup(name, rtype)).await {
            Ok(Ok(lookup)) => Forwarded::Answer {
                answers: lookup.answers().to_vec(),
                authorities: lookup.authorities().to_vec(),
            },
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(nr))))
                if matches!(
                    nr.response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) =>
            {
                Forwarded::Negative {
                    code: nr.response_code,
                    authorities: nr
                        .soa
                        .map(|soa| vec![soa.into_record_of_rdata()])
                        .unwrap_or_default(),
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upstream DNS failed");
                Forwarded::Failed
            }
            Err(_) => {
                tracing::debug!("upstream DNS timed out");
                Forwarded::Failed
            }
        }
    }
}
