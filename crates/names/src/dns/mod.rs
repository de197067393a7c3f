//! The embedded DNS server: one server for every container on the host.
//!
//! For each container the agent calls [`DnsServer::add_listener`] with the container's network
//! namespace: a UDP and a TCP socket are bound to `127.0.0.11:53` *inside* that namespace (by a
//! short-lived thread that enters it with `setns`) and served by tasks on the agent's runtime, so
//! hundreds of containers cost a few sockets and tasks each, not a process.
//! [`DnsServer::add_shared_listener`] serves one address in the agent's own namespace (the
//! link-local address Docker's resolver forwards to), identifying the requester by its source
//! address through a [`Clients`] implementation: containers of this host are answered on their
//! networks, the host itself gets cluster names without recursion, anyone else nothing.
//!
//! Answers come from the current [`Zone`] (an `ArcSwap` the agent swaps whenever endpoints
//! change), scoped to the requester's networks. Local A records carry a short TTL
//! ([`DEFAULT_LOCAL_TTL`], 5 s) because cluster names change as containers come and go and
//! addresses are reused: a stub or application cache must not keep a dead container's address
//! for minutes (Docker's 600 s is a known source of stale answers), and round robin only
//! spreads load if clients come back to ask. Everything that is not a cluster name is forwarded
//! upstream ([`forward`]).

pub mod clients;
mod fast;
pub mod forward;
mod handler;
mod netns;
mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

pub use clients::{Client, ClientMap, Clients};
pub use forward::{ForwardConfig, Forwarded, Forwarder, Upstreams, resolv_conf_servers};
pub use handler::{ForwardJob, Handler, Prepared, Transport};
pub use wire::{EDNS_PAYLOAD, PLAIN_UDP_PAYLOAD};

use crate::NamesError;
use crate::records::Zone;

/// TTL of locally answered records, in seconds (see the module docs for why it is short).
pub const DEFAULT_LOCAL_TTL: u32 = 5;
/// The address containers send their queries to (as with Docker's embedded DNS).
pub const CONTAINER_DNS_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);
/// Forwarded questions in flight at once, across all listeners (Docker uses the same bound).
pub const DEFAULT_MAX_FORWARDED: usize = 1024;
/// TCP connections served at once per listener; more are closed right after accept.
pub const MAX_TCP_CONNECTIONS: usize = 64;
/// An idle TCP connection is closed after this long.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the DNS server.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Forwarding settings (upstream servers, timeouts, cache).
    pub forward: ForwardConfig,
    /// TTL of local answers, seconds.
    pub local_ttl: u32,
    /// Where [`DnsServer::add_listener`] binds inside each container namespace.
    pub container_addr: SocketAddr,
    /// Bound on forwarded questions in flight.
    pub max_forwarded: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            forward: ForwardConfig::default(),
            local_ttl: DEFAULT_LOCAL_TTL,
            container_addr: CONTAINER_DNS_ADDR,
            max_forwarded: DEFAULT_MAX_FORWARDED,
        }
    }
}

/// Whose networks a listener answers for.
#[derive(Clone)]
enum Requester {
    /// A container's own listener: its networks, updatable in place.
    Fixed(Arc<ArcSwap<Vec<String>>>),
    /// A listener shared by many: who asks is told by the source address.
    Shared(Arc<dyn Clients>),
}

impl Requester {
    /// Who `src` is, from memory; `None` when it must be identified first.
    fn known(&self, src: SocketAddr) -> Option<Client> {
        match self {
            Requester::Fixed(nets) => Some(Client::Container(nets.load_full())),
            Requester::Shared(c) => c.known(src.ip()),
        }
    }

    /// Who `src` is, identifying it if needed.
    async fn client(&self, src: SocketAddr) -> Client {
        match self.known(src) {
            Some(c) => c,
            None => match self {
                Requester::Shared(c) => c.identify(src.ip()).await,
                Requester::Fixed(_) => Client::Stranger,
            },
        }
    }
}

/// The networks a client is answered on: its own, or every network for the host.
fn networks_for(zone: &Zone, client: &Client) -> Arc<Vec<String>> {
    match client {
        Client::Container(nets) => nets.clone(),
        Client::Host => Arc::new(zone.network_names()),
        Client::Stranger => Arc::new(Vec::new()),
    }
}

/// What to do with `request` from `client`: strangers get nothing, clients without recursion
/// REFUSED instead of a forward.
fn prepare_for(
    handler: &Handler,
    request: &[u8],
    client: &Client,
    transport: Transport,
) -> Prepared {
    if matches!(client, Client::Stranger) {
        return Prepared::Drop;
    }
    let zone = handler.zone().load();
    let nets = networks_for(&zone, client);
    match handler.prepare_with(&zone, request, &nets, transport) {
        Prepared::Forward(job) if !client.recursion() => Prepared::Reply(handler.refuse(job)),
        p => p,
    }
}

/// Answers `request` from `client` completely: `None` sends nothing (strangers, non-queries).
async fn respond(
    handler: &Handler,
    request: &[u8],
    client: &Client,
    transport: Transport,
) -> Option<Vec<u8>> {
    match prepare_for(handler, request, client, transport) {
        Prepared::Reply(bytes) => Some(bytes),
        Prepared::Drop => None,
        Prepared::Forward(job) => Some(handler.finish(job).await),
    }
}

/// A running listener: its serving tasks (aborted on drop) and what it was created with.
struct Listener {
    netns: Option<PathBuf>,
    local: SocketAddr,
    networks: Option<Arc<ArcSwap<Vec<String>>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Listener {
    async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            // Cancelled tasks return Err(JoinError::Cancelled): expected.
            let _ = t.await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The embedded DNS server. Create one per agent; it must be used from a tokio runtime.
pub struct DnsServer {
    handler: Arc<Handler>,
    config: DnsConfig,
    listeners: Mutex<HashMap<String, Listener>>,
    shared: Mutex<HashMap<SocketAddr, Listener>>,
    /// The listeners' own single-threaded runtime (see [`ServeThread`]).
    rt: tokio::runtime::Handle,
    _thread: ServeThread,
}

/// The thread running the listeners' runtime.
///
/// Every listener is served by one thread with a current-thread runtime rather than by the
/// agent's multi-threaded runtime: under load, a multi-threaded runtime wakes idle workers for
/// every datagram, and those wakeups cost more than answering (measured: 69% of the
/// server's time was in the kernel switching threads). The thread ends when the server is
/// dropped.
struct ServeThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for ServeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn serve_thread() -> Result<(tokio::runtime::Handle, ServeThread), NamesError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NamesError::Internal(format!("DNS runtime: {e}")))?;
    let handle = rt.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ovl-dns".into())
        .spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            })
        })
        .map_err(|e| NamesError::Internal(format!("DNS thread: {e}")))?;
    Ok((handle, ServeThread { stop: Some(stop) }))
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("config", &self.config)
            .field("listeners", &self.listener_keys())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts and
    // removes), so recover from poisoning instead of propagating it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DnsServer {
    /// A server answering from `zone` with `config`. No listener yet.
    pub fn new(zone: Arc<ArcSwap<Zone>>, config: DnsConfig) -> Result<DnsServer, NamesError> {
        let forwarder = Forwarder::new(&config.forward)?;
        let handler = Arc::new(Handler::new(
            zone,
            forwarder,
            config.local_ttl,
            config.max_forwarded,
        ));
        let (rt, thread) = serve_thread()?;
        Ok(DnsServer {
            handler,
            config,
            listeners: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
            rt,
            _thread: thread,
        })
    }

    /// The request handler (for benchmarks and tests that drive it without sockets).
    pub fn handler(&self) -> &Arc<Handler> {
        &self.handler
    }

    /// The zone the server answers from.
    pub fn zone(&self) -> &Arc<ArcSwap<Zone>> {
        self.handler.zone()
    }

    /// Starts serving DNS inside the network namespace at `netns` (e.g. `/run/netns/X`,
    /// `/proc/PID/ns/net`, Docker's sandbox key) for the container known as `key`, attached to
    /// `networks`. Brings `lo` up in that namespace.
    ///
    /// Idempotent: calling it again for the same key and namespace only updates the networks;
    /// for the same key and another namespace it moves the listener.
    ///
    /// The listener's sockets keep the namespace alive in the kernel: call
    /// [`DnsServer::remove_listener`] when the container goes away, or its namespace leaks.
    ///
    /// Under Docker, the engine's own embedded DNS DNATs `127.0.0.11:53` inside containers on
    /// user-defined networks to its private port, which would shadow this listener; set
    /// [`DnsConfig::container_addr`] to another loopback address (and point the container's
    /// resolv.conf at it) where that matters.
    pub async fn add_listener(
        &self,
        key: &str,
        netns: &Path,
        networks: Vec<String>,
    ) -> Result<SocketAddr, NamesError> {
        let existing = {
            let mut map = lock(&self.listeners);
            match map.get(key) {
                Some(l) if l.netns.as_deref() == Some(netns) => {
                    if let Some(n) = &l.networks {
                        n.store(Arc::new(networks));
                    }
                    return Ok(l.local);
                }
                Some(_) => map.remove(key),
                None => None,
            }
        };
        if let Some(old) = existing {
            old.stop().await;
        }
        let path = netns.to_path_buf();
        let addr = self.config.container_addr;
        let sockets = tokio::task::spawn_blocking(move || netns::bind_in_netns(&path, addr))
            .await
            .map_err(|e| NamesError::Internal(format!("bind task: {e}")))??;
        let nets = Arc::new(ArcSwap::from_pointee(networks));
        let listener = self.spawn(sockets, Requester::Fixed(nets.clone()), Some(netns))?;
        let mut listener = listener;
        listener.networks = Some(nets);
        let local = listener.local;
        let replaced = lock(&self.listeners).insert(key.to_string(), listener);
        if let Some(old) = replaced {
            // A concurrent add for the same key won the race; keep ours, stop theirs.
            old.stop().await;
        }
        tracing::debug!(key, netns = %netns.display(), "DNS listener added");
        Ok(local)
    }

    /// Replaces the networks of an existing listener (the container joined or left a network).
    pub fn set_networks(&self, key: &str, networks: Vec<String>) -> Result<(), NamesError> {
        let map = lock(&self.listeners);
        let listener = map
            .get(key)
            .ok_or_else(|| NamesError::UnknownListener(key.to_string()))?;
        if let Some(n) = &listener.networks {
            n.store(Arc::new(networks));
        }
        Ok(())
    }

    /// Stops the listener of `key` and closes its sockets. Returns whether there was one.
    pub async fn remove_listener(&self, key: &str) -> bool {
        let removed = lock(&self.listeners).remove(key);
        match removed {
            Some(l) => {
                l.stop().await;
                true
            }
            None => false,
        }
    }

    /// Keys of the current container listeners, sorted.
    pub fn listener_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.listeners).keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Serves DNS at `addr` in the agent's own namespace (the link-local address containers
    /// reach through their default route), for the requesters `clients` identifies by source
    /// address (see [`clients`]). Returns the bound address (useful with port 0). Idempotent
    /// for an address already served.
    pub async fn add_shared_listener(
        &self,
        addr: SocketAddr,
        clients: Arc<dyn Clients>,
    ) -> Result<SocketAddr, NamesError> {
        if let Some(l) = lock(&self.shared).get(&addr) {
            return Ok(l.local);
        }
        let sockets = tokio::task::spawn_blocking(move || netns::bind_plain(addr))
            .await
            .map_err(|e| NamesError::Internal(format!("bind task: {e}")))??;
        let listener = self.spawn(sockets, Requester::Shared(clients), None)?;
        let local = listener.local;
        let replaced = lock(&self.shared).insert(addr, listener);
        if let Some(old) = replaced {
            old.stop().await;
        }
        Ok(local)
    }

    /// Stops a shared listener, named by the address given to `add_shared_listener` or the one
    /// it returned. Returns whether there was one.
    pub async fn remove_shared_listener(&self, addr: SocketAddr) -> bool {
        let removed = {
            let mut map = lock(&self.shared);
            let key = map
                .iter()
                .find(|(k, l)| **k == addr || l.local == addr)
                .map(|(k, _)| *k);
            key.and_then(|k| map.remove(&k))
        };
        match removed {
            Some(l) => {
                l.stop().await;
                true
            }
            None => false,
        }
    }

    /// The addresses shared listeners are bound to, sorted.
    pub fn shared_listeners(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = lock(&self.shared).values().map(|l| l.local).collect();
        v.sort();
        v
    }

    /// Stops every listener.
    pub async fn shutdown(&self) {
        let all: Vec<Listener> = lock(&self.listeners)
            .drain()
            .map(|(_, l)| l)
            .chain(lock(&self.shared).drain().map(|(_, l)| l))
            .collect();
        for l in all {
            l.stop().await;
        }
    }

    /// Answers `name`/`rtype` exactly as the resolver of a container attached to `networks`
    /// would (local names, scoping, NXDOMAIN, forwarding). For `overlayctl dns lookup`.
    pub async fn lookup(
        &self,
        networks: &[String],
        name: &str,
        rtype: RecordType,
    ) -> Result<LookupAnswer, NamesError> {
        let zone = self.zone().load_full();
        lookup_with(&self.handler, &zone, networks, name, rtype).await
    }

    fn spawn(
        &self,
        sockets: netns::BoundSockets,
        who: Requester,
        netns: Option<&Path>,
    ) -> Result<Listener, NamesError> {
        let local = sockets
            .udp
            .local_addr()
            .map_err(|source| NamesError::Socket {
                addr: self.config.container_addr,
                proto: "udp",
                action: "local address",
                source,
            })?;
        let sock_err = |proto: &'static str| {
            move |source| NamesError::Socket {
                addr: local,
                proto,
                action: "register with tokio",
                source,
            }
        };
        // Register the sockets with the listeners' runtime, which drives them.
        let _rt = self.rt.enter();
        let udp = UdpSocket::from_std(sockets.udp).map_err(sock_err("udp"))?;
        let tcp = TcpListener::from_std(sockets.tcp).map_err(sock_err("tcp"))?;
        let tasks = vec![
            self.rt
                .spawn(serve_udp(self.handler.clone(), udp, who.clone())),
            self.rt.spawn(serve_tcp(self.handler.clone(), tcp, who)),
        ];
        Ok(Listener {
            netns: netns.map(Path::to_path_buf),
            local,
            networks: None,
            tasks,
        })
    }
}

/// Largest UDP request we read; anything longer is cut and then answered FORMERR.
const UDP_RECV_BUF: usize = 4096;

/// Unidentified queries waiting at once per shared listener; more are dropped (a flood of
/// forged sources must not pile up work).
const MAX_IDENTIFYING: usize = 256;

async fn serve_udp(handler: Arc<Handler>, sock: UdpSocket, who: Requester) {
    let mut buf = vec![0u8; UDP_RECV_BUF];
    // Forwarded questions (and queries from sources still being identified) run here and hand
    // their reply back to this loop, so the socket has a single owner and closes as soon as
    // the listener is stopped.
    let mut pending: JoinSet<(Option<Vec<u8>>, SocketAddr)> = JoinSet::new();
    loop {
        tokio::select! {
            received = sock.recv_from(&mut buf) => match received {
                Ok((n, src)) => {
                    // Answer this datagram, then everything already queued, before going back
                    // to the runtime: under load one wakeup serves a batch.
                    let mut next = Some((n, src));
                    while let Some((n, src)) = next {
                        match who.known(src) {
                            Some(client) => {
                                answer_udp(&handler, &sock, &mut pending, &buf[..n], src, client)
                                    .await
                            }
                            None if pending.len() < MAX_IDENTIFYING => {
                                let (h, who, req) = (handler.clone(), who.clone(), buf[..n].to_vec());
                                pending.spawn(async move {
                                    let client = who.client(src).await;
                                    (respond(&h, &req, &client, Transport::Udp).await, src)
                                });
                            }
                            None => tracing::debug!(%src, "too many DNS sources being identified; dropped"),
                        }
                        next = sock.try_recv_from(&mut buf).ok();
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(done) = pending.join_next(), if !pending.is_empty() => {
                if let Ok((Some(bytes), src)) = done {
                    send(&sock, &bytes, src).await;
                }
            }
        }
    }
}

/// One datagram from a client known already: answered at once when local, handed to
/// `pending` when it must be forwarded.
async fn answer_udp(
    handler: &Arc<Handler>,
    sock: &UdpSocket,
    pending: &mut JoinSet<(Option<Vec<u8>>, SocketAddr)>,
    request: &[u8],
    src: SocketAddr,
    client: Client,
) {
    match prepare_for(handler, request, &client, Transport::Udp) {
        Prepared::Reply(bytes) => send(sock, &bytes, src).await,
        Prepared::Drop => {}
        Prepared::Forward(job) => {
            let h = handler.clone();
            pending.spawn(async move { (Some(h.finish(job).await), src) });
        }
    }
}

async fn send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    // A UDP send almost never has to wait: try it directly before involving the runtime.
    match sock.try_send_to(bytes, to) {
        Ok(_) => return,
        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
            tracing::debug!(error = %e, %to, "DNS UDP send failed");
            return;
        }
        Err(_) => {}
    }
    if let Err(e) = sock.send_to(bytes, to).await {
        tracing::debug!(error = %e, %to, "DNS UDP send failed");
    }
}

async fn serve_tcp(handler: Arc<Handler>, listener: TcpListener, who: Requester) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, src)) => {
                    if conns.len() >= MAX_TCP_CONNECTIONS {
                        tracing::debug!(%src, "too many DNS TCP connections; closing");
                        continue;
                    }
                    conns.spawn(serve_tcp_conn(handler.clone(), stream, src, who.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves length-prefixed queries on one connection, one at a time, until the client closes,
/// goes idle, or sends something that is not a DNS query.
async fn serve_tcp_conn(
    handler: Arc<Handler>,
    mut stream: TcpStream,
    src: SocketAddr,
    who: Requester,
) {
    let mut msg = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        msg.resize(usize::from(u16::from_be_bytes(len)), 0);
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let client = who.client(src).await;
        let Some(reply) = respond(&handler, &msg, &client, Transport::Tcp).await else {
            return;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// One record of a [`LookupAnswer`], in presentation form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LookupRecord {
    /// Owner name.
    pub name: String,
    /// TTL in seconds.
    pub ttl: u32,
    /// Record type (`A`, `PTR`, `CNAME`, ...).
    pub rtype: String,
    /// Record data (`10.1.0.3`, `c2.net1.`, ...).
    pub data: String,
}

/// What a container's resolver answers for one question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LookupAnswer {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, ... (as dig prints them).
    pub rcode: String,
    /// True when answered from the cluster zone, false when forwarded upstream.
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<LookupRecord>,
    /// Authority section (the SOA of a negative upstream answer).
    pub authorities: Vec<LookupRecord>,
}

/// The usual mnemonic (`NOERROR`, `NXDOMAIN`, ...) of a response code, as dig prints it.
fn rcode_mnemonic(code: hickory_proto::op::ResponseCode) -> String {
    match u16::from(code) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

fn presentation(records: &[hickory_proto::rr::Record]) -> Vec<LookupRecord> {
    records
        .iter()
        .map(|r| LookupRecord {
            name: r.name.to_string(),
            ttl: r.ttl,
            rtype: r.record_type().to_string(),
            data: r.data.to_string(),
        })
        .collect()
}

async fn lookup_with(
    handler: &Handler,
    zone: &Zone,
    networks: &[String],
    name: &str,
    rtype: RecordType,
) -> Result<LookupAnswer, NamesError> {
    let invalid = |reason: String| NamesError::InvalidName {
        name: name.to_string(),
        reason,
    };
    let mut qname = Name::from_ascii(name).map_err(|e| invalid(e.to_string()))?;
    if qname.is_root() {
        return Err(invalid("empty name".into()));
    }
    qname.set_fqdn(true);
    let mut req = Message::query();
    req.metadata.recursion_desired = true;
    req.add_query(Query::query(qname, rtype));
    req.set_edns(Edns::new());
    let bytes = req
        .to_vec()
        .map_err(|e| NamesError::Message(format!("encode query: {e}")))?;
    let reply = match handler.prepare_with(zone, &bytes, networks, Transport::Tcp) {
        Prepared::Reply(b) => b,
        Prepared::Forward(job) => handler.finish(job).await,
        Prepared::Drop => return Err(NamesError::Message("query was dropped".into())),
    };
    let resp =
        Message::from_vec(&reply).map_err(|e| NamesError::Message(format!("decode reply: {e}")))?;
    Ok(LookupAnswer {
        rcode: rcode_mnemonic(resp.response_code),
        authoritative: resp.authoritative,
        answers: presentation(&resp.answers),
        authorities: presentation(&resp.authorities),
    })
}

/// Answers `name`/`rtype` as the resolver of a container attached to `networks` would, from
/// `zone`, forwarding with `forwarder` (for `overlayctl dns lookup NAME --from CNAME` when no
/// [`DnsServer`] is at hand). Round-robin rotation starts fresh on every call.
pub async fn lookup(
    zone: &Zone,
    forwarder: &Forwarder,
    networks: &[String],
    name: &str,
    rtype: RecordType,
) -> Result<LookupAnswer, NamesError> {
    let handler = Handler::new(
        Arc::new(ArcSwap::from_pointee(Zone::default())),
        forwarder.clone(),
        DEFAULT_LOCAL_TTL,
        DEFAULT_MAX_FORWARDED,
    );
    lookup_with(&handler, zone, networks, name, rtype).await
}

#[cfg(test)]
mod tests;
