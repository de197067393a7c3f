//! The userspace WireGuard device: boringtun's protocol state machines
//! (`Tunn`, one per peer) between a TAP interface and a UDP socket.
//!
//! Three loops share the state: the TAP reader (encapsulates) and the UDP
//! reader (decapsulates), each on a thread of its own, and the timer task on
//! the tokio runtime (keepalives, rekeys, handshake retries).
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
use std::os::fd::AsFd;
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::merge::Merger;
use crate::split::split;
use crate::tun::TunDev;
use crate::udp::{MAX_GSO_BYTES, MAX_SEGMENTS, Udp};
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
/// How long [`Userspace::shutdown`] waits for the kernel to drop the TAP.
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

/// How the device moves bulk TCP through the kernel ([`Userspace::offload`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Offload {
    /// Linux 6.17's GSO over UDP tunnels: whole TCP sends read and cut here, received
    /// segments of a flow merged into one write.
    TunnelGso,
    /// The same for sending; received segments are not merged (no VXLAN port given, or
    /// the kernel refused a merged frame).
    TunnelGsoSendOnly,
    /// One packet per read and write; the kernel's GRO merges what we write (`IFF_NAPI`
    /// and a GRO flush timeout).
    KernelGro,
}

impl Offload {
    /// `tunnel-gso`, `tunnel-gso-send-only` or `kernel-gro`.
    pub fn as_str(self) -> &'static str {
        match self {
            Offload::TunnelGso => "tunnel-gso",
            Offload::TunnelGsoSendOnly => "tunnel-gso-send-only",
            Offload::KernelGro => "kernel-gro",
        }
    }
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
    /// Packets from the TAP whose IPv4 destination is no peer's allowed
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
    /// Frames from the device the data path could not cut into packets (a layout of
    /// segmentation offload it did not ask the kernel for).
    pub unsplittable: u64,
}

#[derive(Default)]
struct DropCounters {
    no_peer: AtomicU64,
    unknown_source: AtomicU64,
    unknown_key: AtomicU64,
    bad_inner_source: AtomicU64,
    decrypt_error: AtomicU64,
    malformed: AtomicU64,
    unsplittable: AtomicU64,
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
            unsplittable: get(&self.unsplittable),
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
    udp: Udp,
    key: RwLock<Arc<KeyState>>,
    peers: RwLock<Arc<PeerTable>>,
    /// Serialises `set_peers` and `set_key`, which read-modify-write both.
    config: Mutex<()>,
    next_index: AtomicU32,
    drops: DropCounters,
    /// The UDP port of the VXLAN whose TCP segments the receive side may merge; 0: none.
    merge_port: AtomicU32,
}

impl Shared {
    fn merge_port(&self) -> Option<u16> {
        u16::try_from(self.merge_port.load(Ordering::Relaxed))
            .ok()
            .filter(|p| *p != 0)
    }

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
        // A send waits only while the socket buffer is full, briefly.
        for (p, msg) in sends {
            send_to_peer(&self.udp, &p, &msg);
        }
    }
}

/// A running userspace WireGuard device.
///
/// The packets move on two threads of their own, each waiting in `poll(2)` on
/// its file (TAP → peers and peers → TAP): one wake-up per burst, where a
/// runtime's task costs a reactor wake-up and a worker wake-up besides. The
/// timers run as a task on the tokio runtime.
///
/// Dropping it stops its threads and task (the TAP goes away once they have
/// ended); [`Userspace::shutdown`] does the same and waits for it.
pub struct Userspace {
    shared: Arc<Shared>,
    offload: Offload,
    /// Wakes the data-path threads to end.
    stop: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
    timer: tokio::task::JoinHandle<()>,
}

impl Userspace {
    /// Creates TAP `ifname` (up, given MTU, no address needed), binds UDP
    /// 0.0.0.0:listen_port, starts its threads and its timer task on the
    /// current tokio runtime.
    ///
    /// The TAP and the socket are created in the network namespace of the
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

        let io_err = |context: String| {
            move |source| Error::Io {
                ifname: ifname.to_owned(),
                context,
                source,
            }
        };
        // The socket first: a port in use should not leave a TAP behind.
        let udp =
            Udp::bind(listen_port).map_err(io_err(format!("binding UDP 0.0.0.0:{listen_port}")))?;
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| io_err("creating an eventfd".into())(e.into()))?;
        let stop = Arc::new(stop);
        let tun = TunDev::open(ifname, mtu_i32).map_err(|source| Error::Tun {
            ifname: ifname.to_owned(),
            source,
        })?;
        let offload = if tun.tunnel_gso() {
            Offload::TunnelGso
        } else {
            Offload::KernelGro
        };
        let tun = Arc::new(tun);

        let mut seed = [0u8; 4];
        getrandom::fill(&mut seed).expect("operating system random number generator failed");
        let public = key.public();
        let shared = Arc::new(Shared {
            ifname: ifname.to_owned(),
            udp,
            key: RwLock::new(Arc::new(KeyState::new(key))),
            peers: RwLock::new(Arc::new(PeerTable::default())),
            config: Mutex::new(()),
            next_index: AtomicU32::new(u32::from_le_bytes(seed)),
            drops: DropCounters::default(),
            merge_port: AtomicU32::new(0),
        });
        let mut threads = Vec::new();
        let loops: [(&str, DataLoop); 2] = [("wg-tx", tun_loop), ("wg-rx", udp_loop)];
        for (name, body) in loops {
            let (shared, tun, signal) = (shared.clone(), tun.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{ifname}"))
                .spawn(move || body(&shared, &tun, &signal));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The ones started end at the signal; the TAP goes with them.
                    let _ = stop.write(1);
                    return Err(io_err("starting a data-path thread".into())(e));
                }
            }
        }
        let timer = tokio::spawn(timer_loop(shared.clone()));
        tracing::info!(ifname, listen_port, mtu, public_key = %public, "WireGuard device started");
        Ok(Userspace {
            shared,
            offload,
            stop,
            threads,
            timer,
        })
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

    /// Lets the receive side merge consecutive TCP segments carried by VXLAN on UDP
    /// `port` into one write, where the kernel takes such writes (Linux 6.17's GSO over
    /// UDP tunnels on a TAP); `None` stops it. Only that port: a merged datagram for any
    /// other socket would reach it as one oversized datagram.
    pub fn merge_vxlan_port(&self, port: Option<u16>) {
        self.shared
            .merge_port
            .store(port.map_or(0, u32::from), Ordering::Relaxed);
    }

    /// How the device moves bulk TCP through the kernel.
    pub fn offload(&self) -> Offload {
        if self.offload == Offload::TunnelGso && self.shared.merge_port().is_none() {
            return Offload::TunnelGsoSendOnly;
        }
        self.offload
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

    /// Stops the tasks and removes the TAP device (closing the fd removes a
    /// non-persistent TAP); returns when it is gone.
    ///
    /// Call it in the network namespace the device was started in: that is
    /// where it looks for the interface.
    pub async fn shutdown(mut self) -> Result<()> {
        self.signal_stop();
        // The threads hold the only references to the TAP; once they have
        // ended, its file is closed.
        let threads = std::mem::take(&mut self.threads);
        let joined =
            tokio::task::spawn_blocking(move || threads.into_iter().all(|t| t.join().is_ok()))
                .await;
        if !matches!(joined, Ok(true)) {
            tracing::warn!(ifname = %self.shared.ifname, "a WireGuard data-path thread panicked");
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

impl Userspace {
    fn signal_stop(&self) {
        self.timer.abort();
        if let Err(e) = self.stop.write(1) {
            tracing::error!(ifname = %self.shared.ifname, error = %e, "could not signal the WireGuard threads to stop");
        }
    }
}

impl Drop for Userspace {
    fn drop(&mut self) {
        self.signal_stop();
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

fn send_to_peer(udp: &Udp, peer: &PeerState, msg: &[u8]) {
    send_run(udp, peer, msg, msg.len())
}

/// Sends datagrams of `size` bytes each (the last may be shorter) to `peer`.
fn send_run(udp: &Udp, peer: &PeerState, run: &[u8], size: usize) {
    match udp.send_run(peer.peer.endpoint, run, size) {
        Ok(()) => {
            peer.traffic
                .tx_bytes
                .fetch_add(run.len() as u64, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!(
            endpoint = %peer.peer.endpoint,
            error = %e,
            "sending WireGuard datagram failed"
        ),
    }
}

/// Backs off after an I/O error so a persistent one (the device vanishing
/// under us) does not spin a core.
fn io_error_pause(shared: &Shared, what: &str, e: &io::Error) {
    tracing::warn!(ifname = %shared.ifname, error = %e, "{what} failed");
    std::thread::sleep(Duration::from_millis(100));
}

/// Waits until `file` has something to read: true, or false once the device
/// is stopping.
fn wait_readable(shared: &Shared, file: &impl AsFd, stop: &EventFd) -> bool {
    loop {
        let mut fds = [
            PollFd::new(file.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                if ready(&fds[1]) {
                    return false;
                }
                if ready(&fds[0]) {
                    return true;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => io_error_pause(shared, "waiting in poll", &e.into()),
        }
    }
}

/// The body of a data-path thread.
type DataLoop = fn(&Shared, &TunDev, &EventFd);

/// Packets read per wake-up at most before what is queued is sent.
const READS_PER_WAKE: usize = 256;

/// Encrypted datagrams waiting to leave, in order, in one buffer.
struct TxBatch {
    out: Vec<u8>,
    /// Each datagram's peer and its end in `out` (it starts where the previous ends).
    segs: Vec<(Arc<PeerState>, usize)>,
}

impl TxBatch {
    fn new() -> TxBatch {
        TxBatch {
            out: vec![0u8; MAX_GSO_BYTES + MAX_PACKET + 2 * WG_OVERHEAD],
            segs: Vec::with_capacity(MAX_SEGMENTS),
        }
    }

    fn used(&self) -> usize {
        self.segs.last().map_or(0, |(_, end)| *end)
    }

    /// Whether the datagram of a packet of `len` bytes might not fit one segmented send
    /// with what is queued.
    fn full(&self, len: usize) -> bool {
        self.segs.len() >= MAX_SEGMENTS || self.used() + len + 2 * WG_OVERHEAD > MAX_GSO_BYTES
    }

    /// Sends what is queued: each run of datagrams for one peer, all of one size but
    /// perhaps the last, in one call.
    fn flush(&mut self, udp: &Udp) {
        let mut start = 0;
        for (peer, run) in runs(&self.segs) {
            let end = self.segs[run.end - 1].1;
            let size = self.segs[run.start].1 - start;
            send_run(udp, peer, &self.out[start..end], size);
            start = end;
        }
        self.segs.clear();
    }
}

/// Splits queued datagrams (peer, end offset) into runs that can leave in one
/// segmented send: one peer, every datagram the size of the first but the last,
/// which may be shorter.
fn runs<P>(segs: &[(Arc<P>, usize)]) -> Vec<(&Arc<P>, Range<usize>)> {
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < segs.len() {
        let peer = &segs[i].0;
        let size = segs[i].1 - start;
        let (mut j, mut end) = (i + 1, segs[i].1);
        while j < segs.len() && Arc::ptr_eq(&segs[j].0, peer) {
            let len = segs[j].1 - end;
            if len > size {
                break;
            }
            end = segs[j].1;
            j += 1;
            if len < size {
                break;
            }
        }
        out.push((peer, i..j));
        start = end;
        i = j;
    }
    out
}

/// TAP → peer: cryptokey routing by the packet's IPv4 destination. Everything queued on
/// the TAP is read and encrypted before anything is sent, so a burst leaves in a few
/// segmented sends.
fn tun_loop(shared: &Shared, tun: &TunDev, stop: &EventFd) {
    // A read may be a whole TCP send: 64 KiB and its headers.
    let mut buf = vec![0u8; 2 * MAX_PACKET];
    let mut seg = Vec::with_capacity(MAX_PACKET);
    let mut batch = TxBatch::new();
    while wait_readable(shared, tun, stop) {
        for _ in 0..READS_PER_WAKE {
            match tun.try_recv(&mut buf) {
                Ok(Some((hdr, r))) => {
                    let cut = split(&hdr, &mut buf[r], &mut seg, |packet| {
                        if batch.full(packet.len()) {
                            batch.flush(&shared.udp);
                        }
                        encapsulate(shared, packet, &mut batch);
                    });
                    if let Err(why) = cut {
                        bump(&shared.drops.unsplittable);
                        tracing::debug!(
                            ?why,
                            ?hdr,
                            "dropped a frame the TAP handed us that we cannot cut"
                        );
                    }
                }
                Ok(None) => {
                    bump(&shared.drops.no_peer);
                    tracing::debug!("dropped a non-IPv4 frame from the TAP");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    batch.flush(&shared.udp);
                    io_error_pause(shared, "reading the TAP device", &e);
                    break;
                }
            }
        }
        batch.flush(&shared.udp);
    }
}

/// Encrypts one packet from the TAP for its peer onto `batch`.
fn encapsulate(shared: &Shared, packet: &[u8], batch: &mut TxBatch) {
    let Some(IpAddr::V4(dst)) = Tunn::dst_address(packet) else {
        bump(&shared.drops.no_peer);
        tracing::debug!(len = packet.len(), "dropped non-IPv4 packet from TAP");
        return;
    };
    let Some(peer) = shared.table().by_allowed.get(&dst).cloned() else {
        bump(&shared.drops.no_peer);
        tracing::debug!(%dst, "dropped packet from TAP: no peer has this allowed IP");
        return;
    };
    let start = batch.used();
    let out = &mut batch.out[start..];
    let base = out.as_ptr() as usize;
    let action = Action::of(base, peer.tunn().encapsulate(packet, out));
    match action {
        // boringtun writes at the start of `dst`; a datagram anywhere else could not be
        // sent as part of a run.
        Action::Network(r) if r.start == 0 => batch.segs.push((peer, start + r.end)),
        Action::Network(r) => tracing::warn!(?r, "boringtun wrote away from the buffer's start"),
        // The packet was queued behind a handshake already in flight.
        Action::Done => {}
        Action::Error(e) => {
            tracing::debug!(%dst, error = ?e, "encapsulation failed")
        }
        Action::Tunnel(..) => {}
    }
}

/// Network → TAP: each receive may carry a run of datagrams from one sender.
fn udp_loop(shared: &Shared, tun: &TunDev, stop: &EventFd) {
    // A receive may be a run merged by UDP GRO: up to 64 datagrams, more than 64 KiB
    // from a peer that sends full-size ones; a shorter buffer would cut the last.
    let mut buf = vec![0u8; 2 * MAX_PACKET];
    let mut out = vec![0u8; MAX_PACKET + WG_OVERHEAD];
    let mut merger = Merger::new(tun.eth(), None);
    // A kernel that announced the tunnel offload but refuses merged frames would lose
    // every one of them: merging goes off for good at the first refusal.
    let refused = std::cell::Cell::new(false);
    let mut write = |head: &[u8], rest: &[u8]| {
        if let Err(e) = tun.send(head, rest) {
            let merged = head.is_empty() && rest.get(1).is_some_and(|gso| *gso != 0);
            if merged && e.raw_os_error() == Some(libc::EINVAL) {
                refused.set(true);
            }
            tracing::debug!(error = %e, merged, "writing to the TAP device failed");
        }
    };
    while wait_readable(shared, &shared.udp, stop) {
        merger.set_port(shared.merge_port().filter(|_| tun.tunnel_gso()));
        for _ in 0..READS_PER_WAKE {
            let (n, from, size) = match shared.udp.try_recv_run(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    merger.flush(&mut write);
                    io_error_pause(shared, "reading the WireGuard socket", &e);
                    break;
                }
            };
            let Some(SocketAddr::V4(from)) = from else {
                bump(&shared.drops.unknown_source);
                continue;
            };
            for datagram in buf[..n].chunks(size.unwrap_or(n).max(1)) {
                if let Some(r) = handle_datagram(shared, from, datagram, &mut out) {
                    merger.push(&out[r], &mut write);
                }
            }
        }
        merger.flush(&mut write);
        if refused.take() && shared.merge_port().is_some() {
            shared.merge_port.store(0, Ordering::Relaxed);
            tracing::error!(
                ifname = %shared.ifname,
                "the kernel refused a merged frame; received TCP is no longer merged on this device"
            );
        }
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

/// Takes one datagram in; returns the range in `out` of a decrypted packet for the
/// device, if it brought one.
fn handle_datagram(
    shared: &Shared,
    from: SocketAddrV4,
    datagram: &[u8],
    out: &mut [u8],
) -> Option<Range<usize>> {
    let mut cookie = [0u8; 64];
    let peer = match match_peer(shared, from, datagram, &mut cookie) {
        Ok(p) => p,
        Err(Some(reply)) => {
            // A cookie proves ownership of the source address, so it goes
            // back to exactly that address.
            if let Err(e) = shared.udp.send_to(&cookie[reply], from) {
                tracing::debug!(%from, error = %e, "sending cookie reply failed");
            }
            return None;
        }
        Err(None) => return None,
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
            send_to_peer(&shared.udp, &peer, &out[r]);
            // boringtun's contract: after WriteToNetwork, call again with an
            // empty datagram until Done, which flushes packets that were
            // queued waiting for this handshake.
            loop {
                let next = Action::of(base, peer.tunn().decapsulate(None, &[], out));
                match next {
                    Action::Network(r) => send_to_peer(&shared.udp, &peer, &out[r]),
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
                return None;
            }
            return Some(r);
        }
        // A keepalive, or a cookie reply taken in.
        Action::Done => {}
        Action::Error(e) => {
            bump(&shared.drops.decrypt_error);
            tracing::debug!(%from, peer = %peer.peer.public_key, error = ?e, "dropped datagram");
        }
    }
    None
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
                Action::Network(r) => send_to_peer(&shared.udp, peer, &out[r]),
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

    /// Queued datagrams as (peer, length): the runs [`runs`] makes of them, as
    /// (peer, count).
    fn run_shape(queued: &[(&Arc<u8>, usize)]) -> Vec<(u8, usize)> {
        let mut end = 0;
        let segs: Vec<(Arc<u8>, usize)> = queued
            .iter()
            .map(|(p, len)| {
                end += len;
                ((*p).clone(), end)
            })
            .collect();
        runs(&segs)
            .into_iter()
            .map(|(p, r)| (**p, r.len()))
            .collect()
    }

    #[test]
    fn runs_are_one_peer_one_size_with_a_shorter_last() {
        let (a, b) = (Arc::new(1u8), Arc::new(2u8));
        assert_eq!(run_shape(&[]), vec![]);
        assert_eq!(run_shape(&[(&a, 1472)]), vec![(1, 1)]);
        // Equal sizes for one peer: one run; a shorter one closes it.
        assert_eq!(
            run_shape(&[(&a, 1472), (&a, 1472), (&a, 1472), (&a, 600), (&a, 1472)]),
            vec![(1, 4), (1, 1)]
        );
        // A longer one cannot join: the kernel cuts at the first one's size.
        assert_eq!(run_shape(&[(&a, 600), (&a, 1472)]), vec![(1, 1), (1, 1)]);
        // Another peer starts a run of its own, even with the same size; the same
        // peer's value in another Arc is another peer.
        let a2 = Arc::new(1u8);
        assert_eq!(
            run_shape(&[(&a, 1472), (&b, 1472), (&b, 1472), (&a, 1472), (&a2, 1472)]),
            vec![(1, 1), (2, 2), (1, 1), (1, 1)]
        );
    }

    #[test]
    fn a_batch_is_full_before_a_send_would_exceed_the_kernels_limits() {
        let mut batch = TxBatch::new();
        assert!(!batch.full(1440));
        let peer = Arc::new(PeerState::new(
            &KeyState::new(KeyPair::generate()),
            Peer {
                public_key: KeyPair::generate().public(),
                endpoint: "198.18.0.2:51820".parse().unwrap(),
                allowed: "198.18.0.2".parse().unwrap(),
            },
            1,
            Arc::default(),
        ));
        let mut end = 0;
        while !batch.full(1440) {
            end += 1472;
            batch.segs.push((peer.clone(), end));
        }
        // 1472-byte datagrams: 44 of them fit 65,000 bytes, the 45th would not.
        assert_eq!(batch.segs.len(), 44);
        assert!(batch.used() + 1472 > MAX_GSO_BYTES);
        batch.segs.truncate(1);
        batch
            .segs
            .extend((1..MAX_SEGMENTS).map(|i| (peer.clone(), 1472 + i * 40)));
        assert!(
            batch.full(20),
            "{} datagrams are the most one send takes",
            MAX_SEGMENTS
        );
    }

    #[test]
    fn drop_stats_serialize() {
        let json = serde_json::to_value(DropStats::default()).unwrap();
        assert_eq!(json["no_peer"], 0);
        assert_eq!(json.as_object().unwrap().len(), 7);
    }
}
