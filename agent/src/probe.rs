//! The VTEP probe seam: does another host's datapath still answer? Used for hosts whose agent
//! lost its lease (see `reconcile::liveness`). The real probe asks the host two things on
//! the underlay: an ICMP echo (is the host there), then an empty UDP datagram to its VXLAN
//! port (is a VXLAN socket bound there: a closed port answers ICMP port unreachable, an open
//! one swallows the datagram, since it holds no VXLAN header).

use std::{
    io::ErrorKind,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use pnet_packet::{
    Packet,
    icmp::{
        IcmpCode, IcmpPacket, IcmpTypes, echo_reply::EchoReplyPacket,
        echo_request::MutableEchoRequestPacket,
    },
    ipv4::Ipv4Packet,
};
use socket2::{Domain, Protocol, Socket, Type};

pub use crate::reconcile::liveness::Probe;

/// Probes a VTEP.
#[async_trait::async_trait]
pub trait VtepProbe: Send + Sync {
    /// What `vtep` (VXLAN on UDP `port`) answers.
    async fn probe(&self, vtep: Ipv4Addr, port: u16) -> Probe;
}

/// Probes over the host's own network namespace (the agent's).
#[derive(Debug, Default, Clone, Copy)]
pub struct UnderlayProbe;

/// How long each question waits for its answer.
const WAIT: Duration = Duration::from_millis(400);

#[async_trait::async_trait]
impl VtepProbe for UnderlayProbe {
    async fn probe(&self, vtep: Ipv4Addr, port: u16) -> Probe {
        match tokio::task::spawn_blocking(move || probe_blocking(vtep, port)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(%vtep, error = %e, "VTEP probe");
                Probe::Silent
            }
            Err(e) => {
                tracing::warn!(%vtep, error = %e, "VTEP probe task");
                Probe::Silent
            }
        }
    }
}

fn probe_blocking(vtep: Ipv4Addr, port: u16) -> std::io::Result<Probe> {
    if !echo(vtep)? {
        return Ok(Probe::Silent);
    }
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    udp.connect(SocketAddrV4::new(vtep, port))?;
    udp.set_read_timeout(Some(WAIT))?;
    udp.send(&[])?;
    let mut buf = [0u8; 16];
    match udp.recv(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Probe::NoDatapath),
        _ => Ok(Probe::Answered),
    }
}

/// One ICMP echo to `dst`; whether it was answered within [`WAIT`].
fn echo(dst: Ipv4Addr) -> std::io::Result<bool> {
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    sock.connect(&SocketAddrV4::new(dst, 0).into())?;
    let ident: u16 = rand::random();
    sock.send(&echo_request(ident, 1, b"ovl-live"))?;
    let deadline = Instant::now() + WAIT;
    let mut rx = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv(&mut rx) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        // SAFETY: `recv` initialised the first `n` bytes.
        let got: &[u8] = unsafe { std::slice::from_raw_parts(rx.as_ptr().cast(), n) };
        if echo_reply(got).is_some_and(|(src, id, _)| src == dst && id == ident) {
            return Ok(true);
        }
    }
}

/// An ICMP echo request (8 bytes of header, then `payload`, at most 8 bytes).
pub(crate) fn echo_request(ident: u16, seq: u16, payload: &[u8]) -> [u8; 16] {
    let mut buf = [0u8; 16];
    let mut req = MutableEchoRequestPacket::new(&mut buf).expect("16 bytes hold an echo");
    req.set_icmp_type(IcmpTypes::EchoRequest);
    req.set_icmp_code(IcmpCode(0));
    req.set_identifier(ident);
    req.set_sequence_number(seq);
    req.set_payload(&payload[..payload.len().min(8)]);
    let sum = pnet_packet::icmp::checksum(&IcmpPacket::new(req.packet()).expect("valid"));
    req.set_checksum(sum);
    buf
}

/// The source, identifier and sequence number of an IPv4 packet holding an ICMP echo reply
/// (what a raw ICMP socket reads).
pub(crate) fn echo_reply(packet: &[u8]) -> Option<(Ipv4Addr, u16, u16)> {
    let ip = Ipv4Packet::new(packet)?;
    let r = EchoReplyPacket::new(ip.payload())?;
    (r.get_icmp_type() == IcmpTypes::EchoReply)
        .then(|| (ip.get_source(), r.get_identifier(), r.get_sequence_number()))
}
