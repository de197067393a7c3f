//! The [`HealthProbe`] seam: one round of probes to other hosts' health endpoints. The real
//! one, [`IcmpHealthProbe`], pings from inside this host's health namespace, so each echo
//! leaves through the health endpoint's interface into the overlay.
//!
//! With each echo goes an ICMP timestamp request (RFC 792, type 13), which the peer's kernel
//! answers with its clock in milliseconds since midnight UTC: with the round trip that gives
//! the peer's clock offset ([`clock_offset`], NTP's formula), at no cost beyond one more
//! small packet each way per round. Clocks cannot be set per network namespace, so this is
//! the clock of the peer host.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use pnet_packet::{Packet, icmp::IcmpPacket, ipv4::Ipv4Packet};
use socket2::{Domain, Protocol, Socket, Type};

use crate::probe::{echo_reply, echo_request};

/// How long a round waits for its answers.
pub const WAIT: Duration = Duration::from_millis(800);

/// Milliseconds in a day: ICMP timestamps count from midnight UTC and wrap there.
const DAY_MS: i64 = 86_400_000;

/// What one target answered in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Round trip of the echo.
    pub rtt: Duration,
    /// The target's clock minus ours, in ms, when its timestamp reply came too.
    pub skew_ms: Option<i64>,
}

/// One round of health probes.
#[async_trait::async_trait]
pub trait HealthProbe: Send + Sync {
    /// Makes the health namespace, or finds the one a previous run left; its path, as the
    /// datapath takes it (the host's).
    async fn prepare(&self) -> Result<PathBuf, String>;

    /// Sends one probe to each of `targets`; what each that answered its echo within
    /// [`WAIT`] said. `Err`: the round could not run at all (no health namespace yet).
    async fn round(&self, targets: Vec<Ipv4Addr>) -> Result<BTreeMap<Ipv4Addr, Reply>, String>;
}

/// ICMP echoes from the health namespace at `netns` (made in the host's mount namespace, so
/// it outlives an agent started under `ip netns exec`), on a raw socket opened there once.
pub struct IcmpHealthProbe {
    netns: PathBuf,
    mounts: ovl_netlink::HostMounts,
    sock: Mutex<Option<Arc<Socket>>>,
    ident: u16,
    seq: Mutex<u16>,
}

impl IcmpHealthProbe {
    /// Probes from the namespace at the host's `netns` (made in `mounts`, opened at the
    /// first round).
    pub fn new(netns: PathBuf, mounts: ovl_netlink::HostMounts) -> Self {
        IcmpHealthProbe {
            netns,
            mounts,
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
        let s =
            ovl_netlink::netns::run_in_netns(Some(&self.mounts.resolve(&self.netns)), move || {
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
    async fn prepare(&self) -> Result<PathBuf, String> {
        let (mounts, path) = (self.mounts.clone(), self.netns.clone());
        tokio::task::spawn_blocking(move || {
            // Looked for where it is made: an agent in a mount namespace that mounts made in
            // the host's do not reach (dockerd's private one) sees only the bare file.
            if ovl_netlink::netns::is_netns(&mounts.resolve(&path)) {
                return Ok(path);
            }
            // A file left without its mount (the host rebooted) is replaced.
            let _ = std::fs::remove_file(mounts.resolve(&path));
            ovl_netlink::netns::create_netns(&mounts, &path)
                .map_err(|e| format!("health namespace {}: {e}", path.display()))?;
            Ok(path)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn round(&self, targets: Vec<Ipv4Addr>) -> Result<BTreeMap<Ipv4Addr, Reply>, String> {
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
) -> std::io::Result<BTreeMap<Ipv4Addr, Reply>> {
    let send = |t: &Ipv4Addr, packet: &[u8]| match sock
        .send_to(packet, &SocketAddrV4::new(*t, 0).into())
    {
        Ok(_) => Some(Instant::now()),
        // No neighbour entry yet, or no route: this target is unanswered this round.
        Err(e) => {
            tracing::debug!(target = %t, error = %e, "health probe not sent");
            None
        }
    };
    let mut echoes: BTreeMap<Ipv4Addr, Instant> = BTreeMap::new();
    let mut stamps: BTreeMap<Ipv4Addr, (Instant, u32)> = BTreeMap::new();
    for t in targets {
        if let Some(at) = send(t, &echo_request(ident, seq, b"ovl-hlth")) {
            echoes.insert(*t, at);
            let now = time_of_day();
            if let Some(at) = send(t, &timestamp_request(ident, seq, now)) {
                stamps.insert(*t, (at, now));
            }
        }
    }
    let mut rtts: BTreeMap<Ipv4Addr, Duration> = BTreeMap::new();
    let mut skews: BTreeMap<Ipv4Addr, Option<i64>> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    let mut rx = [MaybeUninit::<u8>::uninit(); 1500];
    while rtts.len() < echoes.len() || skews.len() < stamps.len() {
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
            && let Some(at) = echoes.get(&src)
        {
            rtts.entry(src).or_insert_with(|| at.elapsed());
        } else if let Some((src, id, s, st)) = timestamp_reply(packet)
            && id == ident
            && s == seq
            && let Some((at, sent)) = stamps.get(&src)
            && st.originate == *sent
        {
            let rtt = at.elapsed();
            skews
                .entry(src)
                .or_insert_with(|| clock_offset(*sent, st.receive, st.transmit, rtt));
        }
    }
    Ok(rtts
        .into_iter()
        .map(|(t, rtt)| {
            let skew_ms = skews.get(&t).copied().flatten();
            (t, Reply { rtt, skew_ms })
        })
        .collect())
}

/// Now, in milliseconds since midnight UTC (an ICMP timestamp).
fn time_of_day() -> u32 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    u32::try_from(ms % DAY_MS as u128).expect("less than a day fits")
}

/// An ICMP timestamp request (type 13) sent at `originate` (ms since midnight UTC).
fn timestamp_request(ident: u16, seq: u16, originate: u32) -> [u8; 20] {
    let mut buf = [0u8; 20];
    buf[0] = 13;
    buf[4..6].copy_from_slice(&ident.to_be_bytes());
    buf[6..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..12].copy_from_slice(&originate.to_be_bytes());
    let sum = pnet_packet::icmp::checksum(&IcmpPacket::new(&buf).expect("20 bytes hold ICMP"));
    buf[2..4].copy_from_slice(&sum.to_be_bytes());
    buf
}

/// The three stamps of a timestamp reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamps {
    originate: u32,
    receive: u32,
    transmit: u32,
}

/// The source, identifier, sequence number and stamps of an IPv4 packet holding an ICMP
/// timestamp reply (type 14).
fn timestamp_reply(packet: &[u8]) -> Option<(Ipv4Addr, u16, u16, Stamps)> {
    let ip = Ipv4Packet::new(packet)?;
    let icmp = ip.payload();
    if icmp.len() < 20 || icmp[0] != 14 || icmp[1] != 0 {
        return None;
    }
    let u16_at = |i: usize| u16::from_be_bytes([icmp[i], icmp[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([icmp[i], icmp[i + 1], icmp[i + 2], icmp[i + 3]]);
    Some((
        ip.get_source(),
        u16_at(4),
        u16_at(6),
        Stamps {
            originate: u32_at(8),
            receive: u32_at(12),
            transmit: u32_at(16),
        },
    ))
}

/// `a - b` for two times of day in ms, the short way round midnight.
fn day_diff(a: u32, b: u32) -> i64 {
    let d = (i64::from(a) - i64::from(b)).rem_euclid(DAY_MS);
    if d > DAY_MS / 2 { d - DAY_MS } else { d }
}

/// The peer's clock minus ours, in ms, from a timestamp exchange: sent at `originate` by our
/// clock, received and answered at `receive` and `transmit` by the peer's, back after
/// `rtt`. NTP's offset, ((T2 - T1) + (T3 - T4)) / 2 with T4 = T1 + rtt: exact when the two
/// ways take equally long. `None` for a stamp that is not milliseconds since midnight UTC
/// (RFC 792 sets the high bit then).
pub fn clock_offset(originate: u32, receive: u32, transmit: u32, rtt: Duration) -> Option<i64> {
    let day = u32::try_from(DAY_MS).expect("a day of ms fits");
    if receive >= day || transmit >= day {
        return None;
    }
    let rtt = i64::try_from(rtt.as_millis()).unwrap_or(DAY_MS) % DAY_MS;
    let back = u32::try_from((i64::from(originate) + rtt) % DAY_MS).expect("less than a day");
    Some((day_diff(receive, originate) + day_diff(transmit, back)) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_the_peers_clock_minus_ours_across_midnight() {
        let ms = Duration::from_millis;
        // In step, 10 ms each way.
        assert_eq!(clock_offset(1_000, 1_010, 1_010, ms(20)), Some(0));
        // The peer 1.5 s ahead; 1.5 s behind.
        assert_eq!(clock_offset(1_000, 2_510, 2_511, ms(20)), Some(1_500));
        assert_eq!(clock_offset(5_000, 3_510, 3_510, ms(20)), Some(-1_500));
        // Sent just before midnight, stamped just after by a peer in step.
        assert_eq!(clock_offset(86_399_990, 5, 5, ms(30)), Some(0));
        // Our clock just after midnight, the peer's 2 s behind (before midnight).
        assert_eq!(
            clock_offset(500, 86_398_510, 86_398_510, ms(20)),
            Some(-2_000)
        );
        // A non-standard stamp (high bit set) says nothing.
        assert_eq!(clock_offset(1_000, 0x8000_0000 | 7, 7, ms(1)), None);
    }

    #[test]
    fn timestamp_requests_and_replies_round_trip() {
        let req = timestamp_request(0xbeef, 7, 43_200_123);
        assert_eq!(req[0], 13);
        let icmp = IcmpPacket::new(&req).unwrap();
        assert_eq!(pnet_packet::icmp::checksum(&icmp), icmp.get_checksum());
        // The kernel's answer: type 14, the stamps filled in, behind an IPv4 header.
        let mut reply = req;
        reply[0] = 14;
        reply[12..16].copy_from_slice(&43_200_200u32.to_be_bytes());
        reply[16..20].copy_from_slice(&43_200_201u32.to_be_bytes());
        let mut packet = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 1, 0, 0, 100, 64, 0, 12, 100, 64, 0, 11,
        ];
        packet.extend_from_slice(&reply);
        let (src, id, seq, st) = timestamp_reply(&packet).unwrap();
        assert_eq!((src, id, seq), (Ipv4Addr::new(100, 64, 0, 12), 0xbeef, 7));
        assert_eq!(
            st,
            Stamps {
                originate: 43_200_123,
                receive: 43_200_200,
                transmit: 43_200_201
            }
        );
        // A request or an echo reply is not a timestamp reply.
        packet[20] = 13;
        assert!(timestamp_reply(&packet).is_none());
        assert!(time_of_day() < 86_400_000);
    }
}
