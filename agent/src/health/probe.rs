//! The [`HealthProbe`] seam: one round of probes to other hosts' health endpoints. The real
//! one, [`IcmpHealthProbe`], pings from inside this host's health namespace, so each echo
//! leaves through the health endpoint's interface into the overlay.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::probe::{echo_reply, echo_request};

/// How long a round waits for its answers.
pub const WAIT: Duration = Duration::from_millis(800);

/// One round of health probes.
#[async_trait::async_trait]
pub trait HealthProbe: Send + Sync {
    /// Sends one probe to each of `targets`; the round trip of each that answered within
    /// [`WAIT`]. `Err`: the round could not run at all (no health namespace yet).
    async fn round(&self, targets: Vec<Ipv4Addr>) -> Result<BTreeMap<Ipv4Addr, Duration>, String>;
}

/// ICMP echoes from the health namespace at `netns`, on a raw socket opened there once.
pub struct IcmpHealthProbe {
    netns: PathBuf,
    sock: Mutex<Option<Arc<Socket>>>,
    ident: u16,
    seq: Mutex<u16>,
}

impl IcmpHealthProbe {
    /// Probes from the namespace at `netns` (opened at the first round).
    pub fn new(netns: PathBuf) -> Self {
        IcmpHealthProbe {
            netns,
            sock: Mutex::new(None),
            ident: rand::random(),
            seq: Mutex::new(0),
        }
    }

    fn socket(&self) -> Result<Arc<Socket>, String> {
        if let Some(s) = self.sock.lock().expect("sock lock").as_ref() {
            return Ok(s.clone());
        }
        // A socket belongs to the namespace it was created in, whichever thread uses it.
        let path = self.netns.clone();
        let s = ovl_netlink::netns::run_in_netns(Some(&self.netns), move || {
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(|source| {
                ovl_netlink::Error::Io {
                    context: "raw ICMP socket".into(),
                    path,
                    source,
                }
            })
        })
        .map_err(|e| format!("health namespace {}: {e}", self.netns.display()))?;
        let s = Arc::new(s);
        *self.sock.lock().expect("sock lock") = Some(s.clone());
        Ok(s)
    }
}

#[async_trait::async_trait]
impl HealthProbe for IcmpHealthProbe {
    async fn round(&self, targets: Vec<Ipv4Addr>) -> Result<BTreeMap<Ipv4Addr, Duration>, String> {
        let sock = self.socket()?;
        let seq = {
            let mut s = self.seq.lock().expect("seq lock");
            *s = s.wrapping_add(1);
            *s
        };
        let ident = self.ident;
        tokio::task::spawn_blocking(move || round_blocking(&sock, ident, seq, &targets))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("health probes: {e}"))
    }
}

fn round_blocking(
    sock: &Socket,
    ident: u16,
    seq: u16,
    targets: &[Ipv4Addr],
) -> std::io::Result<BTreeMap<Ipv4Addr, Duration>> {
    let mut sent: BTreeMap<Ipv4Addr, Instant> = BTreeMap::new();
    for t in targets {
        let req = echo_request(ident, seq, b"ovl-hlth");
        match sock.send_to(&req, &SocketAddrV4::new(*t, 0).into()) {
            Ok(_) => {
                sent.insert(*t, Instant::now());
            }
            // No neighbour entry yet, or no route: this target is unanswered this round.
            Err(e) => tracing::debug!(target = %t, error = %e, "health probe not sent"),
        }
    }
    let mut got = BTreeMap::new();
    let waiting: BTreeSet<Ipv4Addr> = sent.keys().copied().collect();
    let deadline = Instant::now() + WAIT;
    let mut rx = [MaybeUninit::<u8>::uninit(); 1500];
    while got.len() < waiting.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv(&mut rx) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => return Err(e),
        };
        // SAFETY: `recv` initialised the first `n` bytes.
        let packet: &[u8] = unsafe { std::slice::from_raw_parts(rx.as_ptr().cast(), n) };
        if let Some((src, id, s)) = echo_reply(packet)
            && id == ident
            && s == seq
            && let Some(at) = sent.get(&src)
        {
            got.entry(src).or_insert_with(|| at.elapsed());
        }
    }
    Ok(got)
}
