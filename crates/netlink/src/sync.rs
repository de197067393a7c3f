//! Synchronous link verbs, for code that must not need an async runtime: the eBPF loader
//! (find a link, create the collect-metadata vxlan device, set it up, read an MTU and the
//! headroom, delete a link, and the headroom bridge: create a bridge and an idle vxlan device,
//! set a link's master).
//!
//! Why a blocking twin of [`crate::link`]: the eBPF loader and its map API are synchronous
//! (BPF system calls are), run under the datapath's lock from async and plain code alike, and
//! need four link verbs on their way (for example, making a new host end a port of the
//! headroom bridge while programming it). Making those async would make the whole map API
//! async, or spin up a runtime inside a library call. Every verb here is one request on a
//! fresh socket, in the network namespace of the calling thread.

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// What the fast path needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: Option<u32>,
    /// `IFLA_INFO_KIND`.
    pub kind: Option<InfoKind>,
    /// For vxlan links: whether it is a collect-metadata (`external`) device.
    pub vxlan_external: bool,
    /// For vxlan links: the configured UDP destination port.
    pub vxlan_port: Option<u16>,
    /// For vxlan links: the configured IPv4 source address.
    pub vxlan_local: Option<Ipv4Addr>,
    /// Administratively up.
    pub up: bool,
    /// The link's controller (bridge) ifindex.
    pub master: Option<u32>,
    /// `IFLA_HEADROOM`: bytes the stack reserves in front of frames sent through the link
    /// (Linux 6.3 and later).
    pub headroom: Option<u16>,
}

/// `IFLA_HEADROOM` (not named by netlink-packet-route 0.34).
const IFLA_HEADROOM: u16 = 68;

impl LinkSummary {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut s = LinkSummary {
            index: msg.header.index,
            name: String::new(),
            mtu: None,
            kind: None,
            vxlan_external: false,
            vxlan_port: None,
            vxlan_local: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            headroom: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => s.name = n.clone(),
                LinkAttribute::Mtu(m) => s.mtu = Some(*m),
                LinkAttribute::Controller(m) => s.master = Some(*m),
                LinkAttribute::Other(nla) if nla.kind() == IFLA_HEADROOM => {
                    let mut v = [0u8; 4];
                    let n = nla.value_len().min(4);
                    nla.emit_value(&mut v[..n]);
                    s.headroom = u16::try_from(u32::from_ne_bytes(v)).ok();
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => s.kind = Some(k.clone()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => {
                                for a in v {
                                    match a {
                                        InfoVxlan::CollectMetadata(b) => s.vxlan_external = *b,
                                        InfoVxlan::Port(p) => s.vxlan_port = Some(*p),
                                        InfoVxlan::Local(a) => s.vxlan_local = Some(*a),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }
}

struct Conn {
    socket: Socket,
    seq: u32,
}

impl Conn {
    fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Conn { socket, seq: 0 })
    }

    /// Sends one request and collects the replies until the ACK (or DONE for dumps).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<LinkMessage>> {
        self.seq += 1;
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut out = Vec::new();
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "empty netlink message",
                    ));
                }
                off += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        if e.code.is_none() {
                            return Ok(out);
                        }
                        return Err(e.to_io());
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                        out.push(l);
                        if flags & NLM_F_ACK == 0 && reply.header.flags & 0x2 == 0 {
                            // Not multipart and no ACK requested: this was the answer.
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Looks a link up by name; `Ok(None)` when it does not exist.
pub fn link_by_name(name: &str) -> io::Result<Option<LinkSummary>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    absent_is_none(Conn::new()?.request(RouteNetlinkMessage::GetLink(msg), 0))
}

/// Looks a link up by index; `Ok(None)` when it does not exist.
pub fn link_by_index(index: u32) -> io::Result<Option<LinkSummary>> {
    let msg = link_msg(index);
    absent_is_none(Conn::new()?.request(RouteNetlinkMessage::GetLink(msg), 0))
}

fn absent_is_none(r: io::Result<Vec<LinkMessage>>) -> io::Result<Option<LinkSummary>> {
    match r {
        Ok(v) => Ok(v.first().map(LinkSummary::from_message)),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates a collect-metadata (`external`) vxlan device: UDP `port`, learning off, source
/// address `local`, the given MTU. Equivalent to
/// `ip link add NAME mtu MTU type vxlan external dstport PORT local LOCAL nolearning`.
pub fn create_vxlan_external(name: &str, local: Ipv4Addr, port: u16, mtu: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(vec![
            InfoVxlan::CollectMetadata(true),
            InfoVxlan::Port(port),
            InfoVxlan::Learning(false),
            InfoVxlan::Local(local),
            InfoVxlan::Ttl(64),
        ])),
    ]));
    new_link(msg)
}

/// Creates the link `msg` describes; one that exists already is an error.
fn new_link(msg: LinkMessage) -> io::Result<()> {
    Conn::new()?
        .request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        )
        .map(drop)
}

/// Applies the changes `msg` carries to the link of its header's index.
fn set_link(msg: LinkMessage) -> io::Result<()> {
    Conn::new()?
        .request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
        .map(drop)
}

/// Creates a bridge, left down. Equivalent to `ip link add NAME type bridge`.
pub fn create_bridge(name: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    new_link(msg)
}

/// Creates a plain vxlan device that is never set up (so it opens no socket), for the
/// headroom it declares. Equivalent to
/// `ip link add NAME type vxlan id VNI dstport PORT nolearning`.
pub fn create_vxlan_idle(name: &str, vni: u32, port: u16) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(vec![
            InfoVxlan::Id(vni),
            InfoVxlan::Port(port),
            InfoVxlan::Learning(false),
        ])),
    ]));
    new_link(msg)
}

/// A message about link `index`.
fn link_msg(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

/// Makes link `index` a port of `master`.
pub fn set_master(index: u32, master: u32) -> io::Result<()> {
    let mut msg = link_msg(index);
    msg.attributes.push(LinkAttribute::Controller(master));
    set_link(msg)
}

/// Sets a link administratively up.
pub fn set_up(index: u32) -> io::Result<()> {
    let mut msg = link_msg(index);
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    set_link(msg)
}

/// Sets a link's MTU.
pub fn set_mtu(index: u32, mtu: u32) -> io::Result<()> {
    let mut msg = link_msg(index);
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    set_link(msg)
}

/// Deletes a link; an absent link is not an error (idempotent teardown).
pub fn delete_link(index: u32) -> io::Result<()> {
    let msg = link_msg(index);
    match Conn::new()?.request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(e),
    }
}
