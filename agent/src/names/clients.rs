//! Who asks the DNS address for Docker containers (`--dns-addr`): the [`Clients`] the shared
//! listener consults for each query's source address.
//!
//! Docker's resolver forwards a container's questions from inside the container's namespace,
//! so they come from the container's address on the interface that routes to the link-local
//! DNS address: its default route, `docker_gwbridge` for a container on an `ovl` network (or
//! another bridge's address when that one carries the default route). That address is not in
//! any endpoint record, so the agent looks it up where it is: in the namespaces of this host's
//! Docker endpoints (their sandbox keys, known from `Join` before the container starts),
//! listing each one's IPv4 addresses. An address found there is that container, answered on the
//! networks of its endpoints. The host's own addresses are the host (Docker 28 forwards from the
//! host namespace to the servers of the host's resolv.conf). Anything else is a container of a
//! local bridge with none of our networks (`docker0`, a user-defined bridge: recursion only)
//! when it sits in the subnet of an allowed interface, or a stranger (no answer).
//!
//! A source not known yet is identified when its first query arrives, so the first instruction
//! of a new container is answered; the table keeps the answer until the containers of this
//! host change. Looking into namespaces happens at most once per change of the containers or
//! per [`RESCAN_AFTER`], whatever the number of unknown sources asking.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use ovl_names::{
    ArcSwap,
    dns::{Client, Clients, clients::Identify},
};

use crate::local::Attachment;

/// A full look into the namespaces is not repeated sooner than this for the same containers.
pub const RESCAN_AFTER: Duration = Duration::from_millis(200);

/// Where addresses are read: the seam the tests replace.
pub trait AddrSource: Send + Sync + 'static {
    /// IPv4 addresses inside the network namespace at `netns`.
    fn namespace_addrs(&self, netns: &Path) -> std::io::Result<Vec<Ipv4Addr>>;
    /// The host's own IPv4 addresses with their interface and prefix.
    fn host_addrs(&self) -> std::io::Result<Vec<(String, Ipv4Network)>>;
}

/// The kernel, through `getifaddrs` (in the namespace, on a helper thread).
pub struct KernelAddrs;

fn ifaddrs_v4() -> nix::Result<Vec<(String, Ipv4Network)>> {
    let list = nix::ifaddrs::getifaddrs()?;
    Ok(list
        .filter_map(|ifa| {
            let ip = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
            let prefix = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| u32::from(m.ip()).count_ones() as u8)
                .unwrap_or(32);
            Some((ifa.interface_name, Ipv4Network::new(ip, prefix).ok()?))
        })
        .collect())
}

impl AddrSource for KernelAddrs {
    fn namespace_addrs(&self, netns: &Path) -> std::io::Result<Vec<Ipv4Addr>> {
        ovl_netlink::netns::run_in_netns(Some(netns), || {
            ifaddrs_v4().map_err(|source| ovl_netlink::Error::Sys {
                context: "getifaddrs".into(),
                source,
            })
        })
        .map(|l| l.into_iter().map(|(_, n)| n.ip()).collect())
        .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn host_addrs(&self) -> std::io::Result<Vec<(String, Ipv4Network)>> {
        ifaddrs_v4().map_err(std::io::Error::from)
    }
}

/// A Docker container's namespace: its path and the networks of its endpoints here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Docker's sandbox key.
    pub netns: PathBuf,
    /// Cluster networks of its endpoints, sorted.
    pub networks: Vec<String>,
}

/// The Docker sandboxes among the local attachments, by namespace identity. Pure.
pub fn sandboxes(local: &[Attachment]) -> BTreeMap<String, Sandbox> {
    let mut out: BTreeMap<String, Sandbox> = BTreeMap::new();
    for a in local.iter().filter(|a| !a.dns_listener) {
        let s = out.entry(a.netns_key.clone()).or_insert_with(|| Sandbox {
            netns: a.netns.clone(),
            networks: Vec::new(),
        });
        if !s.networks.contains(&a.network.name) {
            s.networks.push(a.network.name.clone());
            s.networks.sort();
        }
    }
    out
}

/// What the last look found.
#[derive(Debug, Default, Clone)]
struct Scan {
    /// Version of the sandboxes it was made for.
    version: u64,
    /// When it was made.
    at: Option<Instant>,
    /// Addresses per sandbox key, with the sandbox path they were read from (namespace
    /// identities are inode numbers, which the kernel reuses: the path tells two containers
    /// apart).
    by_sandbox: HashMap<String, (PathBuf, Vec<Ipv4Addr>)>,
    /// The host's addresses.
    host: Vec<(String, Ipv4Network)>,
}

/// The table of known sources from a scan and the current sandboxes. Pure.
fn table(scan: &Scan, sandboxes: &BTreeMap<String, Sandbox>) -> HashMap<IpAddr, Client> {
    let mut t = HashMap::new();
    for (_, net) in &scan.host {
        t.insert(IpAddr::V4(net.ip()), Client::Host);
    }
    for (key, (path, ips)) in &scan.by_sandbox {
        let Some(s) = sandboxes.get(key).filter(|s| s.netns == *path) else {
            continue;
        };
        let client = Client::Container(Arc::new(s.networks.clone()));
        for ip in ips.iter().filter(|ip| !ip.is_loopback()) {
            t.entry(IpAddr::V4(*ip)).or_insert_with(|| client.clone());
        }
    }
    t
}

/// Whether interface `name` matches nft-style `pattern` (a trailing `*`: any suffix). Pure.
pub fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(stem) => name.starts_with(stem),
        None => name == pattern,
    }
}

/// A source that is neither one of our containers nor the host: a container of an allowed
/// local bridge (in its subnet) gets recursion, anyone else nothing. Pure.
fn classify_other(
    ip: Ipv4Addr,
    host: &[(String, Ipv4Network)],
    allow: &[String],
    deny: &[String],
) -> Client {
    let on_allowed = host.iter().any(|(ifname, net)| {
        net.prefix() < 32
            && net.contains(ip)
            && allow.iter().any(|p| iface_matches(p, ifname))
            && !deny.iter().any(|d| iface_matches(d, ifname))
    });
    if on_allowed {
        Client::Container(Arc::new(Vec::new()))
    } else {
        Client::Stranger
    }
}

struct Inner {
    source: Arc<dyn AddrSource>,
    rescan_after: Duration,
    allow: Vec<String>,
    deny: Vec<String>,
    /// The current Docker sandboxes and their version (bumped on every change).
    sandboxes: Mutex<(u64, Arc<BTreeMap<String, Sandbox>>)>,
    scan: Mutex<Scan>,
    /// Known sources: read on every query.
    known: ArcSwap<HashMap<IpAddr, Client>>,
    /// One identification at a time (they share one look into the namespaces).
    identifying: tokio::sync::Mutex<()>,
}

/// The clients of the DNS address for Docker containers. Cheap to clone.
#[derive(Clone)]
pub struct LocalClients {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClients")
            .field("allow", &self.inner.allow)
            .field("known", &self.inner.known.load().len())
            .finish_non_exhaustive()
    }
}

impl LocalClients {
    /// Clients read through `source`; containers of interfaces matching `allow` (and not
    /// `deny`) that are none of ours get recursion only.
    pub fn new(source: Arc<dyn AddrSource>, allow: Vec<String>, deny: Vec<String>) -> Self {
        Self::with_rescan_after(source, allow, deny, RESCAN_AFTER)
    }

    /// [`LocalClients::new`], looking into namespaces again no sooner than `after` for the
    /// same containers.
    pub fn with_rescan_after(
        source: Arc<dyn AddrSource>,
        allow: Vec<String>,
        deny: Vec<String>,
        after: Duration,
    ) -> Self {
        LocalClients {
            inner: Arc::new(Inner {
                source,
                rescan_after: after,
                allow,
                deny,
                sandboxes: Mutex::new((0, Arc::new(BTreeMap::new()))),
                scan: Mutex::new(Scan::default()),
                known: ArcSwap::from_pointee(HashMap::new()),
                identifying: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The local attachments changed: known sources are re-derived (a container's networks
    /// follow at once; sources that were nobody's are forgotten, to be identified again).
    pub fn update(&self, local: &[Attachment]) {
        let now = sandboxes(local);
        let mut cur = self.inner.sandboxes.lock().expect("sandboxes lock");
        if *cur.1 == now {
            return;
        }
        let now = Arc::new(now);
        *cur = (cur.0 + 1, now.clone());
        drop(cur);
        let mut scan = self.inner.scan.lock().expect("scan lock");
        // What was read in a sandbox that is gone is nobody's any more.
        scan.by_sandbox
            .retain(|key, (path, _)| now.get(key).is_some_and(|s| s.netns == *path));
        self.inner.known.store(Arc::new(table(&scan, &now)));
    }

    /// How many sources are known now.
    pub fn known_len(&self) -> usize {
        self.inner.known.load().len()
    }

    async fn identify_now(inner: Arc<Inner>, ip: IpAddr) -> Client {
        let _one = inner.identifying.lock().await;
        if let Some(c) = inner.known.load().get(&ip) {
            return c.clone();
        }
        let IpAddr::V4(v4) = ip else {
            return Client::Stranger;
        };
        let (version, boxes) = inner.sandboxes.lock().expect("sandboxes lock").clone();
        let stale = {
            let s = inner.scan.lock().expect("scan lock");
            s.version != version || s.at.is_none_or(|t| t.elapsed() >= inner.rescan_after)
        };
        if stale {
            let src = inner.source.clone();
            let list: Vec<(String, PathBuf)> = boxes
                .iter()
                .map(|(k, s)| (k.clone(), s.netns.clone()))
                .collect();
            let looked = tokio::task::spawn_blocking(move || {
                let mut by_sandbox = HashMap::new();
                for (key, path) in list {
                    match src.namespace_addrs(&path) {
                        Ok(ips) => {
                            by_sandbox.insert(key, (path, ips));
                        }
                        // Gone meanwhile (the container stopped): nobody to find there.
                        Err(e) => {
                            tracing::debug!(netns = %path.display(), error = %e, "reading a container's addresses")
                        }
                    }
                }
                let host = src.host_addrs().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "reading the host's addresses");
                    Vec::new()
                });
                (by_sandbox, host)
            })
            .await;
            let Ok((by_sandbox, host)) = looked else {
                return Client::Stranger;
            };
            let scan = Scan {
                version,
                at: Some(Instant::now()),
                by_sandbox,
                host,
            };
            let t = table(&scan, &boxes);
            *inner.scan.lock().expect("scan lock") = scan;
            inner.known.store(Arc::new(t));
        }
        let found = inner.known.load().get(&ip).cloned();
        let client = match found {
            Some(c) => c,
            None => {
                let host = inner.scan.lock().expect("scan lock").host.clone();
                classify_other(v4, &host, &inner.allow, &inner.deny)
            }
        };
        // Remembered until the containers change (then everything but ours is asked again).
        inner.known.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(ip).or_insert_with(|| client.clone());
            m
        });
        tracing::debug!(%ip, ?client, "DNS client identified");
        client
    }
}

impl Clients for LocalClients {
    fn known(&self, ip: IpAddr) -> Option<Client> {
        self.inner.known.load().get(&ip).cloned()
    }

    fn identify(&self, ip: IpAddr) -> Identify {
        Box::pin(Self::identify_now(self.inner.clone(), ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_core::{EndpointRecord, NetworkRecord};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct FakeAddrs {
        ns: Mutex<HashMap<PathBuf, Vec<Ipv4Addr>>>,
        host: Vec<(String, Ipv4Network)>,
        looks: AtomicUsize,
    }

    impl AddrSource for FakeAddrs {
        fn namespace_addrs(&self, netns: &Path) -> std::io::Result<Vec<Ipv4Addr>> {
            self.looks.fetch_add(1, Ordering::Relaxed);
            self.ns
                .lock()
                .unwrap()
                .get(netns)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn host_addrs(&self) -> std::io::Result<Vec<(String, Ipv4Network)>> {
            Ok(self.host.clone())
        }
    }

    fn att(net: &str, id: &str, key: &str, docker: bool) -> Attachment {
        let network: NetworkRecord = serde_json::from_value(serde_json::json!({
            "name": net, "vni": 100, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
            "internal": false, "mtu": null
        }))
        .unwrap();
        let endpoint: EndpointRecord = serde_json::from_value(serde_json::json!({
            "id": id, "network": net, "host": "h1", "name": id,
            "ip": "10.10.0.2", "mac": "02:42:0a:0a:00:02"
        }))
        .unwrap();
        Attachment {
            endpoint,
            network,
            netns: PathBuf::from(format!("/run/docker/netns/{key}")),
            netns_key: key.into(),
            ifname: "eth0".into(),
            hosts_file: None,
            dns_listener: !docker,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn setup() -> (Arc<FakeAddrs>, LocalClients) {
        let fake = Arc::new(FakeAddrs {
            host: vec![
                ("eth0".into(), "198.18.0.11/24".parse().unwrap()),
                ("docker_gwbridge".into(), "172.18.0.1/16".parse().unwrap()),
                ("docker0".into(), "172.17.0.1/16".parse().unwrap()),
                ("virbr0".into(), "192.168.122.1/24".parse().unwrap()),
                ("ovl_dns".into(), "169.254.53.53/32".parse().unwrap()),
            ],
            ..Default::default()
        });
        // However slow the machine, no second look within one test's steps.
        let clients = LocalClients::with_rescan_after(
            fake.clone(),
            vec!["docker0".into(), "docker_gwbridge".into(), "br-*".into()],
            vec!["eth0".into()],
            Duration::from_secs(600),
        );
        (fake, clients)
    }

    #[test]
    fn sandboxes_group_docker_endpoints_by_namespace() {
        let local = vec![
            att("appnet", "e1", "sb1", true),
            att("other", "e2", "sb1", true),
            att("appnet", "e3", "sb2", true),
            att("appnet", "c9", "plain", false),
        ];
        let s = sandboxes(&local);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s["sb1"].networks, ["appnet", "other"]);
        assert_eq!(s["sb2"].networks, ["appnet"]);
    }

    #[test]
    fn patterns() {
        assert!(iface_matches("br-*", "br-0123456789ab"));
        assert!(iface_matches("docker0", "docker0"));
        assert!(!iface_matches("docker0", "docker01"));
        assert!(!iface_matches("br-*", "bridge0"));
    }

    #[tokio::test]
    async fn first_query_of_a_new_container_is_identified() {
        let (fake, clients) = setup();
        // The container joined (Join: its sandbox is known) and got its docker_gwbridge
        // address afterwards; nothing was looked at yet.
        clients.update(&[att("appnet", "e1", "sb1", true)]);
        fake.ns.lock().unwrap().insert(
            "/run/docker/netns/sb1".into(),
            vec![
                "127.0.0.1".parse().unwrap(),
                "10.10.0.2".parse().unwrap(),
                "172.18.0.2".parse().unwrap(),
            ],
        );
        assert_eq!(clients.known(ip("172.18.0.2")), None);
        let c = clients.identify(ip("172.18.0.2")).await;
        assert_eq!(c, Client::container(["appnet"]));
        // Now from memory, for its every address (but not loopback).
        assert_eq!(
            clients.known(ip("10.10.0.2")),
            Some(Client::container(["appnet"]))
        );
        assert_eq!(clients.known(ip("127.0.0.1")), None);
        // The host's own addresses: the host (Docker 28 forwarding from the host namespace).
        assert_eq!(clients.known(ip("169.254.53.53")), Some(Client::Host));
        // It joins another network: its networks follow without a new look.
        let looks = fake.looks.load(Ordering::Relaxed);
        clients.update(&[
            att("appnet", "e1", "sb1", true),
            att("db", "e2", "sb1", true),
        ]);
        assert_eq!(
            clients.known(ip("172.18.0.2")),
            Some(Client::container(["appnet", "db"]))
        );
        assert_eq!(fake.looks.load(Ordering::Relaxed), looks);
        // It stops: its addresses are nobody's.
        clients.update(&[]);
        assert_eq!(clients.known(ip("172.18.0.2")), None);
    }

    #[tokio::test]
    async fn a_reused_namespace_identity_is_not_the_old_container() {
        let (fake, clients) = setup();
        let mut a = att("appnet", "e1", "k1", true);
        a.netns = "/run/docker/netns/aaaa".into();
        clients.update(std::slice::from_ref(&a));
        fake.ns.lock().unwrap().insert(
            "/run/docker/netns/aaaa".into(),
            vec!["172.18.0.2".parse().unwrap()],
        );
        assert_eq!(
            clients.identify(ip("172.18.0.2")).await,
            Client::container(["appnet"])
        );
        // Container A goes and B (on another network) comes in one step, with the same
        // namespace inode; A's address now belongs to a container of docker0's... nobody's.
        let mut b = att("db", "e2", "k1", true);
        b.netns = "/run/docker/netns/bbbb".into();
        fake.ns.lock().unwrap().insert(
            "/run/docker/netns/bbbb".into(),
            vec!["172.18.0.3".parse().unwrap()],
        );
        clients.update(std::slice::from_ref(&b));
        assert_eq!(
            clients.known(ip("172.18.0.2")),
            None,
            "A's address is not B's"
        );
        assert_eq!(
            clients.identify(ip("172.18.0.3")).await,
            Client::container(["db"])
        );
    }

    #[tokio::test]
    async fn others_get_recursion_or_nothing() {
        let (fake, clients) = setup();
        clients.update(&[att("appnet", "e1", "sb1", true)]);
        fake.ns.lock().unwrap().insert(
            "/run/docker/netns/sb1".into(),
            vec!["172.18.0.2".parse().unwrap()],
        );
        // A container on docker0 with none of our networks: recursion, no cluster names.
        assert_eq!(
            clients.identify(ip("172.17.0.5")).await,
            Client::container(Vec::<String>::new())
        );
        // The underlay, another host's bridge, a bridge not allowed: strangers.
        for s in ["198.18.0.99", "192.168.122.7", "10.99.0.1"] {
            assert_eq!(clients.identify(ip(s)).await, Client::Stranger, "{s}");
        }
        // Remembered: a flood from one stranger looks into namespaces once at most.
        let looks = fake.looks.load(Ordering::Relaxed);
        for _ in 0..50 {
            assert_eq!(clients.known(ip("198.18.0.99")), Some(Client::Stranger));
        }
        assert_eq!(fake.looks.load(Ordering::Relaxed), looks);
        // Many different unknown sources within RESCAN_AFTER: no new look either.
        for i in 0..20 {
            let _ = clients.identify(ip(&format!("10.98.0.{i}"))).await;
        }
        assert_eq!(fake.looks.load(Ordering::Relaxed), looks);
        // A deny pattern wins over an allow one.
        let c = LocalClients::new(fake.clone(), vec!["*".into()], vec!["eth0".into()]);
        assert_eq!(c.identify(ip("198.18.0.50")).await, Client::Stranger);
        assert_eq!(
            c.identify(ip("192.168.122.9")).await,
            Client::container(Vec::<String>::new())
        );
    }
}
