//! The userspace WireGuard device: boringtun's protocol state machines
//! (`Tunn`, one per peer) between a TUN interface and a UDP socket.
//!
//! Three tasks share the state: the TUN reader (encapsulates), the UDP reader
//! (decapsulates) and the timer task (keepalives, rekeys, handshake retries).
//! The peer set is an immutable snapshot swapped whole by
//! [`Userspace::set_peers`]; each peer's `Tunn` has its own mutex, held only
//! for the CPU work of one boringtun call, never across socket I/O, so the
//! readers run concurrently and peers never wait on each other.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_tun::Tun;

use crate::{Error, KeyPair, PublicKey, Result};

/// Largest IP packet or UDP datagram we may be handed.
const MAX_PACKET: usize = 65535;
/// Room boringtun needs beyond the plaintext: it asks for `len + 32`.
const WG_OVERHEAD: usize = 32;
/// How often every peer's timers are driven; WireGuard's timers have one
/// second resolution, and the retry jitter is a third of a second.
const TIMER_TICK: Duration = Duration::from_millis(100);
/// Handshakes per second the device-wide check admits before it demands
/// cookies (boringtun's own device uses the same figure).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Session indices carry the peer's index in their upper 24 bits.
const INDEX_MASK: u32 = 0x00ff_ffff;
/// How long [`Userspace::shutdown`] waits for the kernel to drop the TUN.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One remote host as the device sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// The host's WireGuard public key.
    pub public_key: PublicKey,
    /// Where its WireGuard UDP socket listens (its underlay address).
    pub endpoint: SocketAddrV4,
    /// The one inner address it may send from and that is routed to it: its
    /// underlay IPv4 address in the agent (a /32).
    pub allowed: Ipv4Addr,
}

/// What [`Userspace::stats`] reports of one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Its configured endpoint.
    pub endpoint: SocketAddrV4,
    /// Its allowed inner address.
    pub allowed: Ipv4Addr,
    /// When the current session's handshake completed; `None` with no
    /// confirmed session (never, or since the peer's key or ours changed).
    pub last_handshake: Option<SystemTime>,
    /// Bytes of WireGuard datagrams received from the peer and accepted.
    pub rx_bytes: u64,
    /// Bytes of WireGuard datagrams sent to the peer.
    pub tx_bytes: u64,
}

/// Packets the device dropped, by reason, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropStats {
    /// Packets from the TUN whose IPv4 destination is no peer's allowed
    /// address (or that are not IPv4).
    pub no_peer: u64,
    /// Datagrams from an address that is no peer's endpoint IP.
    pub unknown_source: u64,
    /// Handshake initiations carrying a static key not in the peer set.
    pub unknown_key: u64,
    /// Decrypted packets whose inner source is not the sending peer's allowed
    /// address.
    pub bad_inner_source: u64,
    /// Datagrams that failed authentication or decryption, or that name a
    /// session this device does not have.
    pub decrypt_error: u64,
    /// Datagrams that are not WireGuard messages at all.
    pub malformed: u64,
}

#[derive(Default)]
struct DropCounters {
    no_peer: AtomicU64,
    unknown_source: AtomicU64,
    unknown_key: AtomicU64,
    bad_inner_source: AtomicU64,
    decrypt_error: AtomicU64,
    malformed: AtomicU64,
}

impl DropCounters {
    fn snapshot(&self) -> DropStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DropStats {
            no_peer: get(&self.no_peer),
            unknown_source: get(&self.unknown_source),
            unknown_key: get(&self.unknown_key),
            bad_inner_source: get(&self.bad_inner_source),
            decrypt_error: get(&self.decrypt_error),
            malformed: get(&self.malformed),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Byte counters kept across a peer's `Tunn` being replaced, so a key
/// rotation does not zero what `stats` reports.
#[derive(Default)]
struct Traffic {
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
}

struct PeerState {
    peer: Peer,
    /// The `index` given to its `Tunn`: the upper 24 bits of every session
    /// index it hands out, which is how replies find it.
    index: u32,
    tunn: Mutex<Tunn>,
    traffic: Arc<Traffic>,
}

impl PeerState {
    fn new(key: &KeyState, peer: Peer, index: u32, traffic: Arc<Traffic>) -> PeerState {
        let tunn = Tunn::new(
            key.pair.secret().clone(),
            peer.public_key.to_x25519(),
            None,
            None,
            index,
            None,
        );
        PeerState {
            peer,
            index,
            tunn: Mutex::new(tunn),
            traffic,
        }
    }

    fn tunn(&self) -> MutexGuard<'_, Tunn> {
        // A panic inside boringtun leaves no invariant of ours broken; the
        // Tunn is as usable as boringtun left it.
        self.tunn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An immutable peer set with the lookups the data path needs.
#[derive(Default)]
struct PeerTable {
    list: Vec<Arc<PeerState>>,
    by_allowed: HashMap<Ipv4Addr, Arc<PeerState>>,
    by_endpoint_ip: HashMap<Ipv4Addr, Vec<Arc<PeerState>>>,
    by_key: HashMap<PublicKey, Arc<PeerState>>,
}

impl PeerTable {
    fn new(list: Vec<Arc<PeerState>>) -> PeerTable {
        let mut table = PeerTable::default();
        for p in &list {
            table.by_allowed.insert(p.peer.allowed, p.clone());
            table
                .by_endpoint_ip
                .entry(*p.peer.endpoint.ip())
                .or_default()
                .push(p.clone());
            table.by_key.insert(p.peer.public_key, p.clone());
        }
        table.list = list;
        table
    }
}

struct KeyState {
    pair: KeyPair,
    public: x25519::PublicKey,
    /// Checks mac1 and load of initiations before we spend a Diffie-Hellman
    /// on finding out whose they are.
    limiter: RateLimiter,
}

impl KeyState {
    fn new(pair: KeyPair) -> KeyState {
        let public = pair.public().to_x25519();
        KeyState {
            limiter: RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT),
            public,
            pair,
        }
    }
}

struct Shared {
    ifname: String,
    udp: Arc<UdpSocket>,
    key: RwLock<Arc<KeyState>>,
    peers: RwLock<Arc<PeerTable>>,
    /// Serialises `set_peers` and `set_key`, which read-modify-write both.
    config: Mutex<()>,
    next_index: AtomicU32,
    drops: DropCounters,
    runtime: Handle,
}

impl Shared {
    fn table(&self) -> Arc<PeerTable> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn key(&self) -> Arc<KeyState> {
        self.key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A 24-bit peer index used by no peer in `used`; fresh ones make
    /// datagrams for a replaced `Tunn` miss instead of confusing its successor.
    fn alloc_index(&self, used: &HashSet<u32>) -> u32 {
        loop {
            let i = self.next_index.fetch_add(1, Ordering::Relaxed) & INDEX_MASK;
            if !used.contains(&i) {
                return i;
            }
        }
    }

    /// Publishes `list` as the peer set and starts a handshake with each of
    /// `fresh` right away, rather than on the first packet or retry timer.
    fn install(&self, list: Vec<Arc<PeerState>>, fresh: Vec<Arc<PeerState>>) {
        *self.peers.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(PeerTable::new(list));
        let mut buf = [0u8; 256];
        let mut sends = Vec::with_capacity(fresh.len());
        for p in &fresh {
            let mut tunn = p.tunn();
            match tunn.format_handshake_initiation(&mut buf, false) {
                TunnResult::WriteToNetwork(msg) => {
                    sends.push((p.clone(), msg.to_vec()));
                }
                TunnResult::Done => {}
                other => tracing::warn!(
                    peer = %p.peer.public_key,
                    result = ?other,
                    "could not start a WireGuard handshake"
                ),
            }
        }
        if sends.is_empty() {
            return;
        }
        // The callers are synchronous and may be off the runtime; a UDP send
        // practically never blocks, but we must not block them if it does.
        let udp = self.udp.clone();
        self.runtime.spawn(async move {
            for (p, msg) in sends {
                send_to_peer(&udp, &p, &msg).await;
            }
        });
    }
}

/// Socket buffer size asked for: a burst of ~2,800 full-size datagrams, so
/// the receive loop falling a little behind (it decrypts and writes the TUN
/// per datagram) does not turn into TCP-visible loss at once.
const SOCKET_BUFFER: usize = 4 << 20;

/// Enlarges the socket's buffers, past `net.core.[rw]mem_max` where we have
/// CAP_NET_ADMIN. Best effort: the device works with the defaults, only
/// losing more under bursts.
fn size_socket_buffers(udp: &UdpSocket, ifname: &str) {
    use nix::sys::socket::{setsockopt, sockopt};
    let rcv = setsockopt(udp, sockopt::RcvBufForce, &SOCKET_BUFFER)
        .or_else(|_| setsockopt(udp, sockopt::RcvBuf, &SOCKET_BUFFER));
    let snd = setsockopt(udp, sockopt::SndBufForce, &SOCKET_BUFFER)
        .or_else(|_| setsockopt(udp, sockopt::SndBuf, &SOCKET_BUFFER));
    if let Err(e) = rcv.and(snd) {
        tracing::debug!(ifname, error = %e, "could not enlarge the WireGuard socket buffers");
    }
}

/// A running userspace WireGuard device.
///
/// Dropping it stops its tasks (the TUN goes away once they have been
/// dropped); [`Userspace::shutdown`] does the same and waits for it.
pub struct Userspace {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Userspace {
    /// Creates TUN `ifname` (up, given MTU, no address needed), binds UDP
    /// 0.0.0.0:listen_port, spawns its tasks on the current tokio runtime.
    ///
    /// The TUN and the socket are created in the network namespace of the
    /// calling thread. The device starts with no peers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(
        ifname: &str,
        listen_port: u16,
        mtu: u32,
        key: KeyPair,
    ) -> Result<Userspace> {
        let invalid = |reason: String| Error::InvalidConfig {
            ifname: ifname.to_owned(),
            reason,
        };
        if ifname.is_empty() || ifname.len() > 15 {
            return Err(invalid("interface name must be 1 to 15 bytes".into()));
        }
        let mtu_i32 = i32::try_from(mtu)
            .ok()
            .filter(|m| (576..=MAX_PACKET as i32 - 80).contains(m))
            .ok_or_else(|| invalid(format!("MTU {mtu} out of range 576..={}", MAX_PACKET - 80)))?;

        // The socket first: a port in use should not leave a TUN behind.
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, listen_port))
            .await
            .map_err(|source| Error::Io {
                ifname: ifname.to_owned(),
                context: format!("binding UDP 0.0.0.0:{listen_port}"),
                source,
            })?;
        size_socket_buffers(&udp, ifname);
        let tun = Tun::builder()
            .name(ifname)
            .mtu(mtu_i32)
            .up()
            .build()
            .map_err(|source| Error::Tun {
                ifname: ifname.to_owned(),
                source,
            })?
            .pop()
            .ok_or_else(|| invalid("TUN builder returned no queue".into()))?;
        let tun = Arc::new(tun);

        let mut seed = [0u8; 4];
        getrandom::fill(&mut seed).expect("operating system random number generator failed");
        let public = key.public();
        let shared = Arc::new(Shared {
            ifname: ifname.to_owned(),
            udp: Arc::new(udp),
            key: RwLock::new(Arc::new(KeyState::new(key))),
            peers: RwLock::new(Arc::new(PeerTable::default())),
            config: Mutex::new(()),
            next_index: AtomicU32::new(u32::from_le_bytes(seed)),
            drops: DropCounters::default(),
            runtime: Handle::current(),
        });
        let tasks = vec![
            tokio::spawn(tun_loop(shared.clone(), tun.clone())),
            tokio::spawn(udp_loop(shared.clone(), tun)),
            tokio::spawn(timer_loop(shared.clone())),
        ];
        tracing::info!(ifname, listen_port, mtu, public_key = %public, "WireGuard device started");
        Ok(Userspace { shared, tasks })
    }

    /// Replaces the peer set. Peers whose (public_key, endpoint, allowed) are
    /// unchanged keep their session; a new or changed peer gets a fresh Tunn
    /// AND an immediate handshake initiation (so a peer whose key changed — a
    /// rotation elsewhere — is reachable again within one round trip, not
    /// after WireGuard's 5 s retry).
    ///
    /// A peer repeating an earlier one's public key or allowed address is
    /// ignored (with a warning): cryptokey routing needs both to be unique.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        let shared = &self.shared;
        let _config = shared.config.lock().unwrap_or_else(PoisonError::into_inner);
        let key = shared.key();
        let old = shared.table();
        let mut used: HashSet<u32> = old.list.iter().map(|p| p.index).collect();
        let mut keys = HashSet::new();
        let mut allowed = HashSet::new();
        let (mut list, mut fresh) = (Vec::new(), Vec::new());
        let mut changed = 0usize;
        for peer in peers {
            if !keys.insert(peer.public_key) || !allowed.insert(peer.allowed) {
                tracing::warn!(
                    ?peer,
                    "duplicate WireGuard public key or allowed IP; peer ignored"
                );
                continue;
            }
            let previous = old.by_key.get(&peer.public_key);
            if let Some(p) = previous.filter(|p| p.peer == peer) {
                list.push(p.clone());
                continue;
            }
            if previous.is_some() {
                changed += 1;
            }
            let index = shared.alloc_index(&used);
            used.insert(index);
            let traffic = previous.map(|p| p.traffic.clone()).unwrap_or_default();
            let state = Arc::new(PeerState::new(&key, peer, index, traffic));
            list.push(state.clone());
            fresh.push(state);
        }
        let removed = old
            .list
            .iter()
            .filter(|p| !keys.contains(&p.peer.public_key))
            .count();
        if !fresh.is_empty() || removed > 0 {
            tracing::info!(
                ifname = %shared.ifname,
                peers = list.len(),
                added = fresh.len() - changed,
                changed,
                removed,
                "WireGuard peer set changed"
            );
        }
        for p in &fresh {
            tracing::debug!(peer = ?p.peer, index = p.index, "WireGuard peer (re)created");
        }
        shared.install(list, fresh);
    }

    /// Key rotation: every peer gets a fresh Tunn with the new private key and
    /// an immediate handshake initiation.
    pub fn set_key(&self, key: KeyPair) {
        let shared = &self.shared;
        let _config = shared.config.lock().unwrap_or_else(PoisonError::into_inner);
        let public = key.public();
        let key = Arc::new(KeyState::new(key));
        *shared.key.write().unwrap_or_else(PoisonError::into_inner) = key.clone();
        let old = shared.table();
        let mut used: HashSet<u32> = old.list.iter().map(|p| p.index).collect();
        let list: Vec<_> = old
            .list
            .iter()
            .map(|p| {
                let index = shared.alloc_index(&used);
                used.insert(index);
                Arc::new(PeerState::new(
                    &key,
                    p.peer.clone(),
                    index,
                    p.traffic.clone(),
                ))
            })
            .collect();
        tracing::info!(
            ifname = %shared.ifname,
            public_key = %public,
            peers = list.len(),
            "WireGuard key replaced; re-handshaking with every peer"
        );
        shared.install(list.clone(), list);
    }

    /// The device's current public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.key().pair.public()
    }

    /// The state of every peer, in the order given to [`Userspace::set_peers`].
    pub fn stats(&self) -> Vec<PeerStats> {
        let now = SystemTime::now();
        self.shared
            .table()
            .list
            .iter()
            .map(|p| {
                let since = p.tunn().time_since_last_handshake();
                PeerStats {
                    public_key: p.peer.public_key,
                    endpoint: p.peer.endpoint,
                    allowed: p.peer.allowed,
                    last_handshake: since.and_then(|d| now.checked_sub(d)),
                    rx_bytes: p.traffic.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.traffic.tx_bytes.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Packets dropped so far, by reason.
    pub fn drops(&self) -> DropStats {
        self.shared.drops.snapshot()
    }

    /// Stops the tasks and removes the TUN device (closing the fd removes a
    /// non-persistent TUN); returns when it is gone.
    ///
    /// Call it in the network namespace the device was started in: that is
    /// where it looks for the interface.
    pub async fn shutdown(mut self) -> Result<()> {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        // Awaiting the aborted tasks guarantees their futures, which hold the
        // only references to the TUN, have been dropped.
        for t in tasks {
            let _ = t.await;
        }
        let ifname = self.shared.ifname.clone();
        let started = Instant::now();
        while nix::net::if_::if_nametoindex(ifname.as_str()).is_ok() {
            if started.elapsed() > REMOVE_TIMEOUT {
                return Err(Error::NotRemoved {
                    ifname,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(ifname, "WireGuard device shut down");
        Ok(())
    }
}

impl Drop for Userspace {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Userspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Userspace")
            .field("ifname", &self.shared.ifname)
            .field("public_key", &self.public_key())
            .field("peers", &self.shared.table().list.len())
            .finish()
    }
}

/// What one boringtun call asks of us, detached from the borrow of the
/// output buffer so the `Tunn` lock can be released before any I/O.
enum Action {
    Done,
    Network(Range<usize>),
    Tunnel(Range<usize>, IpAddr),
    Error(WireGuardError),
}

impl Action {
    fn of(out_base: usize, r: TunnResult<'_>) -> Action {
        // boringtun writes at the start of `dst` today; computing the range
        // keeps us right should it ever not.
        let range = |s: &[u8]| {
            let start = s.as_ptr() as usize - out_base;
            start..start + s.len()
        };
        match r {
            TunnResult::Done => Action::Done,
            TunnResult::Err(e) => Action::Error(e),
            TunnResult::WriteToNetwork(s) => Action::Network(range(s)),
            TunnResult::WriteToTunnelV4(s, a) => Action::Tunnel(range(s), a.into()),
            TunnResult::WriteToTunnelV6(s, a) => Action::Tunnel(range(s), a.into()),
        }
    }
}

async fn send_to_peer(udp: &UdpSocket, peer: &PeerState, msg: &[u8]) {
    match udp.send_to(msg, SocketAddr::V4(peer.peer.endpoint)).await {
        Ok(n) => {
            peer.traffic.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!(
            endpoint = %peer.peer.endpoint,
            error = %e,
            "sending WireGuard datagram failed"
        ),
    }
}

/// Backs off after a socket error so a persistent one (the device vanishing
/// under us) does not spin a core.
async fn io_error_pause(shared: &Shared, what: &str, e: &io::Error) {
    tracing::warn!(ifname = %shared.ifname, error = %e, "{what} failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// TUN → peer: cryptokey routing by the packet's IPv4 destination.
async fn tun_loop(shared: Arc<Shared>, tun: Arc<Tun>) {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; MAX_PACKET + WG_OVERHEAD];
    loop {
        let n = match tun.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                io_error_pause(&shared, "reading the TUN device", &e).await;
                continue;
            }
        };
        let packet = &buf[..n];
        let Some(IpAddr::V4(dst)) = Tunn::dst_address(packet) else {
            bump(&shared.drops.no_peer);
            tracing::debug!(len = n, "dropped non-IPv4 packet from TUN");
            continue;
        };
        let Some(peer) = shared.table().by_allowed.get(&dst).cloned() else {
            bump(&shared.drops.no_peer);
            tracing::debug!(%dst, "dropped packet from TUN: no peer has this allowed IP");
            continue;
        };
        let base = out.as_ptr() as usize;
        let action = Action::of(base, peer.tunn().encapsulate(packet, &mut out));
        match action {
            Action::Network(r) => send_to_peer(&shared.udp, &peer, &out[r]).await,
            // The packet was queued behind a handshake already in flight.
            Action::Done => {}
            Action::Error(e) => {
                tracing::debug!(%dst, error = ?e, "encapsulation failed")
            }
            Action::Tunnel(..) => {}
        }
    }
}

/// Network → TUN.
async fn udp_loop(shared: Arc<Shared>, tun: Arc<Tun>) {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; MAX_PACKET + WG_OVERHEAD];
    loop {
        let (n, from) = match shared.udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                io_error_pause(&shared, "reading the WireGuard socket", &e).await;
                continue;
            }
        };
        let SocketAddr::V4(from) = from else {
            bump(&shared.drops.unknown_source);
            continue;
        };
        handle_datagram(&shared, &tun, from, &buf[..n], &mut out).await;
    }
}

/// Finds the peer a datagram from `from` belongs to, or counts why none.
///
/// The source IP must be some peer's endpoint IP (its port may differ).
/// Among the peers at that IP, an initiation is matched by the static key it
/// carries, any other message by the session index it names.
fn match_peer(
    shared: &Shared,
    from: SocketAddrV4,
    datagram: &[u8],
    cookie: &mut [u8],
) -> std::result::Result<Arc<PeerState>, Option<Range<usize>>> {
    let table = shared.table();
    let Some(candidates) = table.by_endpoint_ip.get(from.ip()) else {
        bump(&shared.drops.unknown_source);
        tracing::debug!(%from, "dropped datagram from unknown source");
        return Err(None);
    };
    let receiver_idx = match Tunn::parse_incoming_packet(datagram) {
        Err(_) => {
            bump(&shared.drops.malformed);
            tracing::debug!(%from, len = datagram.len(), "dropped malformed datagram");
            return Err(None);
        }
        Ok(Packet::HandshakeInit(_)) => None,
        Ok(Packet::HandshakeResponse(p)) => Some(p.receiver_idx),
        Ok(Packet::PacketCookieReply(p)) => Some(p.receiver_idx),
        Ok(Packet::PacketData(p)) => Some(p.receiver_idx),
    };
    if let Some(idx) = receiver_idx {
        let index = idx >> 8;
        return match candidates.iter().find(|p| p.index == index) {
            Some(p) => Ok(p.clone()),
            None => {
                bump(&shared.drops.decrypt_error);
                tracing::debug!(%from, index, "dropped datagram for a session we do not have");
                Err(None)
            }
        };
    }
    let key = shared.key();
    let cookie_base = cookie.as_ptr() as usize;
    let init = match key
        .limiter
        .verify_packet(Some(IpAddr::V4(*from.ip())), datagram, cookie)
    {
        Ok(Packet::HandshakeInit(init)) => init,
        Err(TunnResult::WriteToNetwork(reply)) => {
            let start = reply.as_ptr() as usize - cookie_base;
            tracing::debug!(%from, "under handshake load: answering with a cookie");
            return Err(Some(start..start + reply.len()));
        }
        _ => {
            bump(&shared.drops.decrypt_error);
            tracing::debug!(%from, "dropped handshake initiation with a bad mac");
            return Err(None);
        }
    };
    let half = match parse_handshake_anon(key.pair.secret(), &key.public, &init) {
        Ok(h) => h,
        Err(e) => {
            bump(&shared.drops.decrypt_error);
            tracing::debug!(%from, error = ?e, "dropped undecryptable handshake initiation");
            return Err(None);
        }
    };
    let their_key = PublicKey(half.peer_static_public);
    match candidates.iter().find(|p| p.peer.public_key == their_key) {
        Some(p) => Ok(p.clone()),
        None => {
            bump(&shared.drops.unknown_key);
            tracing::debug!(%from, key = %their_key, "dropped handshake initiation from a key not in the peer set");
            Err(None)
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Initiation,
    Response,
    Other,
}

/// Sizes of a handshake response and of an empty data message (keepalive).
const HANDSHAKE_RESPONSE_LEN: usize = 92;
const KEEPALIVE_LEN: usize = 32;

async fn handle_datagram(
    shared: &Shared,
    tun: &Tun,
    from: SocketAddrV4,
    datagram: &[u8],
    out: &mut [u8],
) {
    let mut cookie = [0u8; 64];
    let peer = match match_peer(shared, from, datagram, &mut cookie) {
        Ok(p) => p,
        Err(Some(reply)) => {
            // A cookie proves ownership of the source address, so it goes
            // back to exactly that address.
            if let Err(e) = shared
                .udp
                .send_to(&cookie[reply], SocketAddr::V4(from))
                .await
            {
                tracing::debug!(%from, error = %e, "sending cookie reply failed");
            }
            return;
        }
        Err(None) => return,
    };
    let kind = match Tunn::parse_incoming_packet(datagram) {
        Ok(Packet::HandshakeInit(_)) => Kind::Initiation,
        Ok(Packet::HandshakeResponse(_)) => Kind::Response,
        _ => Kind::Other,
    };
    let base = out.as_ptr() as usize;
    let src = Some(IpAddr::V4(*from.ip()));
    let first = Action::of(base, peer.tunn().decapsulate(src, datagram, out));
    if !matches!(first, Action::Error(_)) {
        peer.traffic
            .rx_bytes
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
    }
    match first {
        Action::Network(r) => {
            // The reply's size tells a handshake answer or a confirming
            // keepalive from a cookie reply sent because we are under load.
            let done = match (kind, r.len()) {
                (Kind::Initiation, HANDSHAKE_RESPONSE_LEN) => Some("answered"),
                (Kind::Response, KEEPALIVE_LEN) => Some("completed"),
                _ => None,
            };
            if let Some(how) = done {
                tracing::info!(
                    ifname = %shared.ifname,
                    peer = %peer.peer.public_key,
                    endpoint = %peer.peer.endpoint,
                    "WireGuard handshake {how}"
                );
            }
            send_to_peer(&shared.udp, &peer, &out[r]).await;
            // boringtun's contract: after WriteToNetwork, call again with an
            // empty datagram until Done, which flushes packets that were
            // queued waiting for this handshake.
            loop {
                let next = Action::of(base, peer.tunn().decapsulate(None, &[], out));
                match next {
                    Action::Network(r) => send_to_peer(&shared.udp, &peer, &out[r]).await,
                    _ => break,
                }
            }
        }
        Action::Tunnel(r, inner_src) => {
            if inner_src != IpAddr::V4(peer.peer.allowed) {
                bump(&shared.drops.bad_inner_source);
                tracing::debug!(
                    peer = %peer.peer.public_key,
                    %inner_src,
                    allowed = %peer.peer.allowed,
                    "dropped decrypted packet with a source the peer may not use"
                );
                return;
            }
            if let Err(e) = tun.send(&out[r]).await {
                tracing::debug!(error = %e, "writing to the TUN device failed");
            }
        }
        // A keepalive, or a cookie reply taken in.
        Action::Done => {}
        Action::Error(e) => {
            bump(&shared.drops.decrypt_error);
            tracing::debug!(%from, peer = %peer.peer.public_key, error = ?e, "dropped datagram");
        }
    }
}

/// Drives every peer's timers: handshake retries, rekeys, keepalives.
async fn timer_loop(shared: Arc<Shared>) {
    let mut out = vec![0u8; MAX_PACKET + WG_OVERHEAD];
    let base = out.as_ptr() as usize;
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        // Resets at most once a second, whatever the tick.
        shared.key().limiter.reset_count();
        let table = shared.table();
        for peer in &table.list {
            let action = Action::of(base, peer.tunn().update_timers(&mut out));
            match action {
                Action::Network(r) => send_to_peer(&shared.udp, peer, &out[r]).await,
                // Repeats every tick once boringtun gave up on a peer until
                // traffic or a new handshake revives it: not worth a log line.
                Action::Error(WireGuardError::ConnectionExpired) => {}
                Action::Error(e) => {
                    tracing::debug!(peer = %peer.peer.public_key, error = ?e, "WireGuard timer error")
                }
                Action::Done | Action::Tunnel(..) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}
    fn is_send_sync<T: Send + Sync>() {}

    /// The agent keeps the device in shared state and drives it from a
    /// multi-threaded runtime.
    #[test]
    fn usable_from_a_multi_threaded_runtime() {
        is_send_sync::<Userspace>();
        is_send_sync::<Shared>();
        let start = Userspace::start("x", 0, 1420, KeyPair::generate());
        is_send(&start);
        fn shutdown_is_send(u: Userspace) {
            is_send(&u.shutdown());
        }
        let _ = shutdown_is_send;
    }

    #[test]
    fn drop_stats_serialize() {
        let json = serde_json::to_value(DropStats::default()).unwrap();
        assert_eq!(json["no_peer"], 0);
        assert_eq!(json.as_object().unwrap().len(), 6);
    }
}
