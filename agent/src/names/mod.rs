//! The names seam and its service: the zone (every named endpoint of the cluster), the
//! embedded DNS listeners (127.0.0.11:53 inside each namespace attached with `overlayctl
//! attach`, and the link-local `--dns-addr` in the host namespace that Docker's resolver
//! forwards to, see [`clients`]), and the managed block of each container's hosts file.
//!
//! Everything here is level-triggered from the cluster view and the local attachments: a
//! pass rebuilds the zone, opens or closes listeners and rewrites hosts files whose block
//! differs, so it follows endpoints appearing and going anywhere, and repairs hosts files
//! someone else edited. The zone is swapped first (DNS answers never wait for hosts files),
//! and the names loop also swaps it on its own as soon as the view changes.

pub mod clients;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use hickory_proto::rr::RecordType;
use ovl_core::ClusterView;
use ovl_names::{
    ArcSwap, NameRecord, Zone,
    dns::{DnsConfig, DnsServer, ForwardConfig, Upstreams, resolv_conf_servers},
    hosts,
};

pub use clients::{KernelAddrs, LocalClients};

use crate::{
    api::types::DnsLookup,
    error::{AgentError, Result},
    local::Attachment,
};

/// What the agent needs of names, as a trait so its logic runs in unit tests over a fake.
#[async_trait::async_trait]
pub trait Names: Send + Sync {
    /// One pass: zone, DNS listeners and hosts files from the view and the local
    /// attachments; returns how many hosts files were rewritten.
    async fn sync(&self, view: &ClusterView, local: &[Attachment]) -> usize;

    /// Swaps in the zone of `view` for the networks of `local` at once (no hosts files, no
    /// listeners): what DNS answers follows the view without waiting for a pass.
    fn refresh_zone(&self, view: &ClusterView, local: &[Attachment]);

    /// The local attachments changed (a Docker Join or Leave): the DNS address for Docker
    /// containers learns at once which namespaces are its clients, so the first query of a
    /// container that joined a moment ago is placed.
    fn containers_changed(&self, local: &[Attachment]);

    /// Where the DNS address for Docker containers is served now (empty: not, or not yet).
    fn shared_listeners(&self) -> Vec<SocketAddr>;

    /// Answers `name` as a container on `networks` would be answered.
    async fn lookup(&self, networks: &[String], name: &str, from: &str) -> Result<DnsLookup>;

    /// Prepares a named namespace's `/etc/netns/NAME/{hosts,resolv.conf}`; returns the hosts
    /// file, `None` for a namespace that is not a named one.
    fn prepare_netns_etc(&self, netns: &Path) -> std::io::Result<Option<PathBuf>>;

    /// Closes every listener (shutdown).
    async fn shutdown(&self);
}

/// The names service of one agent: hickory-based DNS and hosts files on disk.
pub struct DnsNames {
    zone: Arc<ArcSwap<Zone>>,
    dns: DnsServer,
    /// Listener keys (namespace keys) open now, with the networks they answer for.
    listeners: tokio::sync::Mutex<BTreeMap<String, Vec<String>>>,
    /// The DNS address for Docker containers and who asks it.
    shared: Option<(SocketAddr, LocalClients)>,
    /// Why the shared listener is not open yet (logged once per reason).
    shared_error: Mutex<Option<String>>,
}

/// Builds the zone from the view: every endpoint with a name on the networks of `local`,
/// except `overlayctl probe`'s.
/// Only containers on this host ask this DNS, and they see only their networks' names, so
/// the zone's size (and the cost of rebuilding it) follows this host's networks, not the
/// cluster. Every network's name is known, so `name.othernet` is answered, not forwarded.
pub fn zone_of(view: &ClusterView, local: &[Attachment]) -> Zone {
    let nets: BTreeSet<&str> = local.iter().map(|a| a.endpoint.network.as_str()).collect();
    let records = nets
        .iter()
        .flat_map(|n| view.endpoints_on(n))
        // A probe's endpoint lives for a second; containers must not see it as a peer.
        .filter(|e| !e.name.is_empty() && !e.is_probe())
        .map(|e| NameRecord {
            network: e.network.clone(),
            endpoint_id: e.id.clone(),
            name: e.name.clone(),
            aliases: e.aliases.clone(),
            ip: e.ip,
        })
        .collect();
    Zone::build(records).with_networks(view.networks.keys())
}

/// The hosts file of a named network namespace (`ip netns exec` bind-mounts it).
pub fn netns_etc(netns: &Path) -> Option<PathBuf> {
    let name = netns.strip_prefix("/run/netns").ok()?.to_str()?;
    (!name.is_empty() && !name.contains('/')).then(|| PathBuf::from("/etc/netns").join(name))
}

impl DnsNames {
    /// A names service forwarding unknown names to `upstreams` (or the host's resolv.conf),
    /// serving `shared` (the DNS address for Docker containers and its clients) when given.
    /// That address is never an upstream: with it in the host's resolv.conf (one way to set
    /// up Docker 28) forwarding to it would loop.
    pub fn new(
        upstreams: Vec<SocketAddr>,
        shared: Option<(Ipv4Addr, LocalClients)>,
    ) -> Result<Self> {
        let zone = Arc::new(ArcSwap::from_pointee(Zone::build(Vec::new())));
        let upstreams = match (&shared, upstreams.is_empty()) {
            (_, false) => Upstreams::Servers(upstreams),
            (None, true) => Upstreams::System,
            (Some((own, _)), true) => {
                let mut servers = resolv_conf_servers(Path::new("/etc/resolv.conf"))
                    .map_err(|e| AgentError::Internal(format!("upstream DNS servers: {e}")))?;
                let before = servers.len();
                servers.retain(|s| s.ip() != std::net::IpAddr::V4(*own));
                if servers.len() != before {
                    tracing::info!(%own, "the host's resolv.conf lists the agent's DNS address: not forwarding to it");
                }
                Upstreams::Servers(servers)
            }
        };
        let cfg = DnsConfig {
            forward: ForwardConfig {
                upstreams,
                ..ForwardConfig::default()
            },
            ..DnsConfig::default()
        };
        let dns = DnsServer::new(zone.clone(), cfg)
            .map_err(|e| AgentError::Internal(format!("DNS server: {e}")))?;
        Ok(DnsNames {
            zone,
            dns,
            listeners: Default::default(),
            shared: shared.map(|(ip, c)| (SocketAddr::from((ip, 53)), c)),
            shared_error: Mutex::new(None),
        })
    }

    /// Opens the shared listener if it is configured and not open yet. Binding fails until
    /// the address exists on the host (the gateway's DNS set-up creates it); retried by the
    /// next pass.
    async fn ensure_shared(&self) {
        let Some((addr, clients)) = &self.shared else {
            return;
        };
        if self.dns.shared_listeners().contains(addr) {
            return;
        }
        let clients: Arc<dyn ovl_names::dns::Clients> = Arc::new(clients.clone());
        let result = self.dns.add_shared_listener(*addr, clients).await;
        let mut last = self.shared_error.lock().expect("shared error lock");
        match result {
            Ok(_) => {
                tracing::info!(%addr, "serving DNS to this host's Docker containers");
                *last = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if last.as_deref() != Some(&msg) {
                    tracing::warn!(%addr, error = %msg, "DNS for Docker containers not served yet; retrying");
                }
                *last = Some(msg);
            }
        }
    }
}

#[async_trait::async_trait]
impl Names for DnsNames {
    fn prepare_netns_etc(&self, netns: &Path) -> std::io::Result<Option<PathBuf>> {
        let Some(dir) = netns_etc(netns) else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir)?;
        let hosts = dir.join("hosts");
        if !hosts.exists() {
            std::fs::write(&hosts, hosts::DEFAULT_LINES)?;
        }
        let resolv = dir.join("resolv.conf");
        std::fs::write(
            &resolv,
            "# written by overlay-agent: the embedded DNS\nnameserver 127.0.0.11\noptions ndots:0\n",
        )?;
        Ok(Some(hosts))
    }

    fn refresh_zone(&self, view: &ClusterView, local: &[Attachment]) {
        self.zone.store(Arc::new(zone_of(view, local)));
    }

    fn containers_changed(&self, local: &[Attachment]) {
        if let Some((_, clients)) = &self.shared {
            clients.update(local);
        }
    }

    fn shared_listeners(&self) -> Vec<SocketAddr> {
        self.dns.shared_listeners()
    }

    async fn sync(&self, view: &ClusterView, local: &[Attachment]) -> usize {
        // DNS first: answers must not wait for hosts files (a lease wait, a slow disk).
        let zone = Arc::new(zone_of(view, local));
        self.zone.store(zone.clone());
        self.containers_changed(local);
        self.ensure_shared().await;
        // Per container namespace: its endpoints and its networks.
        let mut by_ns: BTreeMap<&str, Vec<&Attachment>> = BTreeMap::new();
        for a in local {
            by_ns.entry(a.netns_key.as_str()).or_default().push(a);
        }
        // Hosts files per file: a Docker container whose namespace file is not visible here
        // has one key per endpoint, but one hosts file for all its networks.
        let mut by_file: BTreeMap<String, Vec<&Attachment>> = BTreeMap::new();
        for a in local {
            let key = match &a.hosts_file {
                Some(f) => format!("file:{}", f.display()),
                None => format!("ns:{}", a.netns_key),
            };
            by_file.entry(key).or_default().push(a);
        }
        let mut rewritten = 0;
        for atts in by_file.values() {
            let nets: BTreeSet<&str> = atts.iter().map(|a| a.endpoint.network.as_str()).collect();
            let ids: BTreeSet<&str> = atts.iter().map(|a| a.endpoint.id.as_str()).collect();
            let files: BTreeSet<&PathBuf> =
                atts.iter().filter_map(|a| a.hosts_file.as_ref()).collect();
            if files.is_empty() {
                continue;
            }
            let on_nets: Vec<&NameRecord> = zone
                .records()
                .iter()
                .filter(|r| nets.contains(r.network.as_str()))
                .collect();
            let own: Vec<NameRecord> = on_nets
                .iter()
                .filter(|r| ids.contains(r.endpoint_id.as_str()))
                .map(|r| (*r).clone())
                .collect();
            let peers: Vec<NameRecord> = on_nets
                .iter()
                .filter(|r| !ids.contains(r.endpoint_id.as_str()))
                .map(|r| (*r).clone())
                .collect();
            let block = hosts::render_block(&own, &peers);
            for f in files {
                match hosts::update_file(f, &block) {
                    Ok(true) => rewritten += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(file = %f.display(), error = %e, "updating hosts file")
                    }
                }
            }
        }
        // DNS listeners inside container namespaces.
        let mut want: BTreeMap<String, (PathBuf, Vec<String>)> = BTreeMap::new();
        for (key, atts) in &by_ns {
            if atts.iter().any(|a| a.dns_listener) {
                let nets: BTreeSet<String> =
                    atts.iter().map(|a| a.endpoint.network.clone()).collect();
                want.insert(
                    key.to_string(),
                    (atts[0].netns.clone(), nets.into_iter().collect()),
                );
            }
        }
        let mut open = self.listeners.lock().await;
        for key in open.keys().cloned().collect::<Vec<_>>() {
            if !want.contains_key(&key) {
                self.dns.remove_listener(&key).await;
                open.remove(&key);
            }
        }
        for (key, (netns, nets)) in want {
            match open.get(&key) {
                Some(n) if *n == nets => {}
                Some(_) => {
                    if let Err(e) = self.dns.set_networks(&key, nets.clone()) {
                        tracing::warn!(error = %e, "updating DNS scope");
                    }
                    open.insert(key, nets);
                }
                None => match self.dns.add_listener(&key, &netns, nets.clone()).await {
                    Ok(_) => {
                        open.insert(key, nets);
                    }
                    Err(e) => {
                        tracing::warn!(netns = %netns.display(), error = %e, "opening DNS listener")
                    }
                },
            }
        }
        drop(open);

        rewritten
    }

    async fn lookup(&self, networks: &[String], name: &str, from: &str) -> Result<DnsLookup> {
        let rtype = if name.trim_end_matches('.').ends_with(".in-addr.arpa")
            || name.parse::<Ipv4Addr>().is_ok()
        {
            RecordType::PTR
        } else {
            RecordType::A
        };
        let qname = match name.parse::<Ipv4Addr>() {
            Ok(ip) => {
                let o = ip.octets();
                format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
            }
            Err(_) => name.to_string(),
        };
        let ans = self
            .dns
            .lookup(networks, &qname, rtype)
            .await
            .map_err(|e| AgentError::Invalid(format!("lookup {name}: {e}")))?;
        Ok(DnsLookup {
            name: name.to_string(),
            from: from.to_string(),
            rcode: ans.rcode.clone(),
            answers: ans
                .answers
                .iter()
                .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.rtype, r.data))
                .collect(),
            source: if ans.authoritative {
                "local".into()
            } else {
                "upstream".into()
            },
        })
    }

    async fn shutdown(&self) {
        self.dns.shutdown().await;
    }
}
