//! The probe's side effects, thin, behind the [`ProbeWire`] seam (fake in
//! `crate::fakes`): the probe's namespace, its TAP (tokio-tun) wired to the probe endpoint's
//! interface inside it, and packet captures (AF_PACKET) that watch for its frames. What the
//! frames mean is [`super::frame`]'s job.
//!
//! The TAP stands where a container's stack would: a `tc` redirect sends every frame the
//! endpoint's interface receives to the TAP, and every frame written to the TAP out of the
//! interface, so the probe's frames enter the datapath exactly as a container's do, on either
//! datapath. Both go when the namespace is removed; the TAP (not persistent) also goes with
//! its descriptor.

use std::{
    io::ErrorKind,
    mem::MaybeUninit,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

/// Keeps a captured packet (the probe's frames among everything else).
pub type Keep = Box<dyn Fn(&Packet<'_>) -> bool + Send>;

/// A packet a capture kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The IPv4 packet.
    pub ip: Vec<u8>,
    /// Sent by the namespace (else received).
    pub outgoing: bool,
    /// The interface.
    pub ifname: String,
}

/// Where the probe's frames enter the overlay: a TAP, or a fake.
#[async_trait::async_trait]
pub trait Port: Send + Sync {
    /// Writes one frame into the overlay.
    async fn send(&self, frame: &[u8]) -> std::io::Result<()>;
    /// The next frame the overlay delivered.
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize>;
}

/// A capture running until stopped.
#[async_trait::async_trait]
pub trait Running: Send {
    /// Stops and returns the packets kept.
    async fn stop(self: Box<Self>) -> Result<Vec<Seen>, WireError>;
}

/// The probe's side effects.
#[async_trait::async_trait]
pub trait ProbeWire: Send + Sync {
    /// Makes the probe's namespace at `path`; the namespace file to attach to.
    async fn make_netns(&self, path: &Path) -> Result<PathBuf, WireError>;
    /// Removes it (a missing one is fine).
    async fn remove_netns(&self, path: &Path) -> Result<(), WireError>;
    /// The probe's port, wired to the endpoint interface `ifname` in `netns`.
    async fn port(&self, netns: &Path, ifname: &str, mtu: u32) -> Result<Box<dyn Port>, WireError>;
    /// Starts capturing in `netns` (the agent's own when `None`); returns once armed.
    async fn capture(
        &self,
        netns: Option<PathBuf>,
        keep: Keep,
    ) -> Result<Box<dyn Running>, WireError>;
}

/// The real one: namespaces in the host's mount namespace, a TAP, AF_PACKET captures.
#[derive(Debug, Clone)]
pub struct HostWire {
    mounts: ovl_netlink::HostMounts,
}

impl HostWire {
    /// Makes the probe's namespaces in `mounts`, the datapath's durable mount namespace.
    pub fn new(mounts: ovl_netlink::HostMounts) -> Self {
        HostWire { mounts }
    }
}

#[async_trait::async_trait]
impl ProbeWire for HostWire {
    async fn make_netns(&self, path: &Path) -> Result<PathBuf, WireError> {
        let (mounts, p) = (self.mounts.clone(), path.to_path_buf());
        ovl_netlink::netns::run_in_netns_async(None, move || {
            ovl_netlink::netns::create_netns(&mounts, &p)
        })
        .await?;
        // The mount is in the host's mount namespace: an agent in another one (started
        // inside dockerd's, or under `unshare -m`) reaches it through the host's root.
        Ok(self.mounts.resolve(path))
    }

    async fn remove_netns(&self, path: &Path) -> Result<(), WireError> {
        let (mounts, p) = (self.mounts.clone(), path.to_path_buf());
        ovl_netlink::netns::run_in_netns_async(None, move || {
            ovl_netlink::netns::remove_netns(&mounts, &p)
        })
        .await?;
        Ok(())
    }

    async fn port(&self, netns: &Path, ifname: &str, mtu: u32) -> Result<Box<dyn Port>, WireError> {
        Ok(Box::new(Tap::open(netns, ifname, mtu).await?))
    }

    async fn capture(
        &self,
        netns: Option<PathBuf>,
        keep: Keep,
    ) -> Result<Box<dyn Running>, WireError> {
        // A container's namespace, named as the datapath names it (the host's path).
        let netns = netns.map(|n| self.mounts.resolve_netns(&n));
        let c = Capture::start(netns, move |p| {
            keep(p).then(|| Seen {
                ip: p.ip.to_vec(),
                outgoing: p.outgoing,
                ifname: p.ifname.to_string(),
            })
        })
        .await?;
        Ok(Box::new(c))
    }
}

#[async_trait::async_trait]
impl Port for Tap {
    async fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        self.tun.send_all(frame).await
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tun.recv(buf).await
    }
}

#[async_trait::async_trait]
impl Running for Capture<Seen> {
    async fn stop(self: Box<Self>) -> Result<Vec<Seen>, WireError> {
        Capture::stop(*self).await
    }
}

/// The TAP's name inside the probe namespace.
pub const TAP: &str = "ovlprobe";

/// Why the probe's plumbing failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Creating or wiring the TAP.
    #[error("probe TAP: {0}")]
    Tap(String),
    /// Opening a capture.
    #[error("capture in {netns}: {source}")]
    Capture {
        /// The namespace.
        netns: String,
        /// The error.
        source: std::io::Error,
    },
    /// Netlink or namespace plumbing.
    #[error(transparent)]
    Netlink(#[from] ovl_netlink::Error),
}

/// The probe's TAP, wired to the endpoint interface `ifname` in `netns`.
pub struct Tap {
    tun: tokio_tun::Tun,
}

impl Tap {
    /// Creates the TAP in `netns` (MTU `mtu`) and wires it both ways to `ifname`.
    pub async fn open(netns: &Path, ifname: &str, mtu: u32) -> Result<Tap, WireError> {
        let rt = tokio::runtime::Handle::current();
        let tun = ovl_netlink::netns::run_in_netns_async(Some(netns), move || {
            // Registering the descriptor with the reactor needs the runtime context.
            let _guard = rt.enter();
            tokio_tun::Tun::builder()
                .name(TAP)
                .tap()
                .mtu(mtu.max(1500) as i32)
                .up()
                .build()
                .map_err(|e| ovl_netlink::Error::Thread(format!("creating TAP {TAP}: {e}")))
        })
        .await?
        .pop()
        .ok_or_else(|| WireError::Tap("tokio-tun made no queue".into()))?;
        let nl = ovl_netlink::Netlink::open(Some(netns)).await?;
        let port = nl
            .link_by_name(ifname)
            .await?
            .ok_or_else(|| WireError::Tap(format!("no {ifname} in {}", netns.display())))?;
        let tap = nl
            .link_by_name(TAP)
            .await?
            .ok_or_else(|| WireError::Tap(format!("{TAP} vanished")))?;
        nl.redirect_ingress(port.index, tap.index).await?;
        nl.redirect_ingress(tap.index, port.index).await?;
        Ok(Tap { tun })
    }
}

/// A packet a capture saw: its IPv4 packet (link header removed), whether this host sent
/// it, and the interface.
pub struct Packet<'a> {
    /// The IPv4 packet.
    pub ip: &'a [u8],
    /// Sent by this namespace (else received).
    pub outgoing: bool,
    /// The interface's name.
    pub ifname: &'a str,
}

/// A running capture: what `pick` kept from every IPv4 packet of a namespace, on every
/// interface, until stopped.
pub struct Capture<T> {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Vec<T>, WireError>>,
}

impl<T: Send + 'static> Capture<T> {
    /// Starts capturing in `netns` (the agent's own when `None`); returns once armed.
    pub async fn start<F>(netns: Option<PathBuf>, pick: F) -> Result<Capture<T>, WireError>
    where
        F: Fn(&Packet<'_>) -> Option<T> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let (armed_tx, armed_rx) = tokio::sync::oneshot::channel();
        let flag = stop.clone();
        let task = tokio::task::spawn_blocking(move || {
            let label = netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the agent's namespace".into());
            let run = ovl_netlink::netns::run_in_netns(netns.as_deref(), move || {
                Ok(capture_loop(&flag, armed_tx, pick))
            });
            match run {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(source)) => Err(WireError::Capture {
                    netns: label,
                    source,
                }),
                Err(e) => Err(e.into()),
            }
        });
        match armed_rx.await {
            Ok(()) => Ok(Capture { stop, task }),
            // The loop ended before arming: its error says why.
            Err(_) => match task.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(WireError::Tap("capture ended at once".into())),
                Err(e) => Err(WireError::Tap(format!("capture task: {e}"))),
            },
        }
    }

    /// Stops and returns what was kept.
    pub async fn stop(self) -> Result<Vec<T>, WireError> {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .map_err(|e| WireError::Tap(format!("capture task: {e}")))?
    }
}

/// How often a capture looks at its stop flag.
const TICK: Duration = Duration::from_millis(50);

fn capture_loop<T, F>(
    stop: &AtomicBool,
    armed: tokio::sync::oneshot::Sender<()>,
    pick: F,
) -> std::io::Result<Vec<T>>
where
    F: Fn(&Packet<'_>) -> Option<T>,
{
    let all = (libc::ETH_P_ALL as u16).to_be() as i32;
    let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(all)))?;
    sock.set_read_timeout(Some(TICK))?;
    let _ = armed.send(());
    let mut kept = Vec::new();
    let mut names = std::collections::BTreeMap::<u32, String>::new();
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 65536];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: an AF_PACKET socket fills a `sockaddr_ll`, which fits the storage
        // `SockAddr` holds; we only read it.
        let ll: libc::sockaddr_ll = unsafe { std::ptr::read(from.as_ptr().cast()) };
        if u16::from_be(ll.sll_protocol) != libc::ETH_P_IP as u16 {
            continue;
        }
        // SAFETY: `recv_from` initialised the first `n` bytes.
        let ip: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
        let index = ll.sll_ifindex as u32;
        let ifname = names.entry(index).or_insert_with(|| {
            nix::net::if_::if_indextoname(index)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_else(|_| format!("if{index}"))
        });
        let p = Packet {
            ip,
            outgoing: ll.sll_pkttype == libc::PACKET_OUTGOING,
            ifname,
        };
        if let Some(t) = pick(&p) {
            kept.push(t);
        }
    }
    Ok(kept)
}
