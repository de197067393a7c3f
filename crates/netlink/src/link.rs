//! Thin typed verbs over rtnetlink for one network namespace: links (bridge, vxlan, veth),
//! addresses, routes, FDB entries (AF_BRIDGE neighbours with NDA_DST) and IPv4 neighbours.
//!
//! Every verb is a single netlink request; no policy lives here. Errors carry what was being
//! done so a failed reconcile step reads clearly in logs.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use ipnetwork::Ipv4Network;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder,
};

use ovl_model::MacAddr;

use crate::error::{Error, Result};
use crate::netns::run_in_netns;

/// A link as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND` ("bridge", "vxlan", "veth", ...), if any.
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Hardware address.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// Index of the master (bridge) device.
    pub master: Option<u32>,
    /// `IFLA_IFALIAS`.
    pub alias: Option<String>,
    /// `IFLA_LINK`: for a veth, the index of its peer (in the peer's namespace).
    pub peer: Option<u32>,
    /// Vxlan parameters, for vxlan devices.
    pub vxlan: Option<VxlanInfo>,
    /// Multicast snooping, for bridges.
    pub bridge_mcast_snooping: Option<bool>,
    /// For a bridge port: whether it is isolated (`bridge link set ... isolated on`).
    pub isolated: Option<bool>,
}

/// The vxlan parameters the datapath cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    /// VNI.
    pub vni: Option<u32>,
    /// Local (source) VTEP address.
    pub local: Option<Ipv4Addr>,
    /// Remote / multicast group, if set (we never set one).
    pub group: Option<Ipv4Addr>,
    /// UDP destination port.
    pub port: Option<u16>,
    /// MAC learning.
    pub learning: Option<bool>,
    /// ARP proxy from the neighbour table.
    pub proxy: Option<bool>,
    /// L2 miss notifications.
    pub l2miss: Option<bool>,
    /// L3 miss notifications.
    pub l3miss: Option<bool>,
    /// Collect-metadata (external) mode.
    pub collect_metadata: Option<bool>,
}

/// Parameters for a new vxlan device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    /// VNI.
    pub vni: u32,
    /// Local VTEP address.
    pub local: Ipv4Addr,
    /// UDP destination port (4789).
    pub port: u16,
    /// MTU.
    pub mtu: u32,
}

/// One forwarding-database entry of a vxlan device (`bridge fdb show dev vxlan0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    /// Destination MAC (all zeros for flood entries).
    pub mac: MacAddr,
    /// Remote VTEP (`NDA_DST`), if present.
    pub dst: Option<Ipv4Addr>,
    /// NUD_PERMANENT (static).
    pub permanent: bool,
}

/// One IPv4 neighbour entry (`ip neigh show dev vxlan0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighEntry {
    /// IP address.
    pub ip: Ipv4Addr,
    /// Link-layer address, if resolved.
    pub mac: Option<MacAddr>,
    /// NUD_PERMANENT.
    pub permanent: bool,
}

/// Optional settings for the peer end of a new veth pair.
#[derive(Debug)]
pub struct VethPeer<'a> {
    /// Name of the peer end.
    pub name: &'a str,
    /// Create the peer directly in this namespace.
    pub netns: Option<BorrowedFd<'a>>,
    /// Peer MAC.
    pub mac: Option<MacAddr>,
    /// Peer MTU.
    pub mtu: Option<u32>,
}

/// An rtnetlink connection bound to one network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let context = context.into();
    move |e| Error::netlink(context, e)
}

/// True if `e` is the kernel errno `errno`.
pub fn is_errno(e: &Error, errno: i32) -> bool {
    e.errno() == Some(errno)
}

impl Netlink {
    /// Opens a connection inside the namespace at `netns` (the caller's when `None`). The
    /// socket is created on a helper thread that joined the namespace; the connection is then
    /// driven on the current tokio runtime.
    pub async fn open(netns: Option<&Path>) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::current();
        let path = netns.map(Path::to_path_buf);
        let (conn, handle) = tokio::task::spawn_blocking(move || {
            run_in_netns(path.as_deref(), move || {
                // Registering the socket with the reactor needs the runtime context.
                let _guard = rt.enter();
                let (conn, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| Error::io("cannot open rtnetlink socket", "netlink", e))?;
                Ok((conn, handle))
            })
        })
        .await
        .map_err(|e| Error::Thread(e.to_string()))??;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The underlying rtnetlink handle, for requests this layer does not cover.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    async fn send_ack(&self, msg: RouteNetlinkMessage, flags: u16, ctx: &str) -> Result<()> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req).map_err(nl(ctx))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(err) = m.payload {
                return Err(Error::netlink(ctx, rtnetlink::Error::NetlinkError(err)));
            }
        }
        Ok(())
    }

    // ----- links -----

    /// All links in the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump links"))?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    /// The link called `name`, if it exists.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(parse_link(&m))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = Error::netlink(format!("get link {name}"), e);
                if is_errno(&e, libc::ENODEV) || is_errno(&e, libc::ENOENT) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates a bridge (down) with the given MTU and multicast snooping setting.
    pub async fn create_bridge(&self, name: &str, mtu: u32, mcast_snooping: bool) -> Result<()> {
        let msg = LinkBridge::new(name)
            .mcast_snooping(mcast_snooping)
            .mtu(mtu)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("create bridge {name}")))
    }

    /// Creates a bridge (down) with the kernel's defaults; one that exists already is not an
    /// error.
    pub async fn ensure_plain_bridge(&self, name: &str) -> Result<()> {
        match self
            .handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Error::netlink(format!("create bridge {name}"), e);
                if is_errno(&e, libc::EEXIST) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Turns multicast snooping of an existing bridge on or off.
    pub async fn set_bridge_mcast_snooping(&self, index: u32, name: &str, on: bool) -> Result<()> {
        let msg = LinkBridge::new(name)
            .index(index)
            .mcast_snooping(on)
            .build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl(format!("set bridge {name} mcast_snooping {on}")))
    }

    /// Creates a vxlan device (down): no learning, ARP proxy on, no miss notifications, no
    /// default remote.
    pub async fn create_vxlan(&self, name: &str, cfg: &VxlanConfig) -> Result<()> {
        let msg = LinkVxlan::new(name, cfg.vni)
            .local(cfg.local)
            .port(cfg.port)
            .learning(false)
            .proxy(true)
            .l2miss(false)
            .l3miss(false)
            .mtu(cfg.mtu)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("create vxlan {name} (vni {})", cfg.vni)))
    }

    /// Creates a veth pair `name` <-> `peer.name`, the peer optionally directly in another
    /// namespace.
    pub async fn create_veth(&self, name: &str, mtu: u32, peer: &VethPeer<'_>) -> Result<()> {
        let mut pb = LinkMessageBuilder::<LinkUnspec>::new().name(peer.name);
        if let Some(mtu) = peer.mtu {
            pb = pb.mtu(mtu);
        }
        if let Some(mac) = peer.mac {
            pb = pb.address(mac.0.to_vec());
        }
        if let Some(fd) = peer.netns {
            pb = pb.setns_by_fd(fd.as_raw_fd());
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(pb.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("create veth {name} <-> {}", peer.name)))
    }

    async fn set(&self, msg: LinkMessage, ctx: String) -> Result<()> {
        self.handle.link().set(msg).execute().await.map_err(nl(ctx))
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            format!("set link {index} up"),
        )
        .await
    }

    /// Sets a link administratively down.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).down().build(),
            format!("set link {index} down"),
        )
        .await
    }

    /// Sets the MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
            format!("set link {index} mtu {mtu}"),
        )
        .await
    }

    /// Enslaves a link to a master (bridge).
    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).controller(master).build(),
            format!("set link {index} master {master}"),
        )
        .await
    }

    /// Renames a link (it must be down).
    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).name(name).build(),
            format!("rename link {index} to {name}"),
        )
        .await
    }

    /// Sets the MAC address.
    pub async fn set_mac(&self, index: u32, mac: MacAddr) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .address(mac.0.to_vec())
                .build(),
            format!("set link {index} address {mac}"),
        )
        .await
    }

    /// Sets the interface alias (`IFLA_IFALIAS`).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).alias(alias).build(),
            format!("set link {index} alias"),
        )
        .await
    }

    /// Moves a link into the namespace referred to by `netns`.
    pub async fn move_to_netns(&self, index: u32, netns: BorrowedFd<'_>) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
            format!("move link {index} to another netns"),
        )
        .await
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Error::netlink(format!("delete link {index}"), e);
                if is_errno(&e, libc::ENODEV) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Wires `from` to `to` one way: every frame `from` receives is sent out of `to`
    /// (an ingress qdisc on `from` and a catch-all filter with a mirred redirect), as `tc
    /// filter add dev FROM ingress u32 match u8 0 0 action mirred egress redirect dev TO`.
    /// Nothing reaches `from`'s own stack any more.
    pub async fn redirect_ingress(&self, from: u32, to: u32) -> Result<()> {
        let ctx = format!("redirect ingress of link {from} to link {to}");
        let mut qd = self.handle.qdisc();
        match qd.add(from as i32).ingress().execute().await {
            Ok(()) => {}
            Err(e) => {
                let e = Error::netlink(ctx.clone(), e);
                if !is_errno(&e, libc::EEXIST) {
                    return Err(e);
                }
            }
        }
        self.handle
            .traffic_filter(from as i32)
            .add()
            .ingress()
            .protocol(0x0003u16.to_be())
            .redirect(to)
            .map_err(nl(ctx.clone()))?
            .execute()
            .await
            .map_err(nl(ctx))
    }

    // ----- addresses and routes -----

    /// IPv4 addresses of a link, as (address, prefix length).
    pub async fn addrs_v4(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("dump addresses of link {index}")))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// All IPv4 addresses in the namespace, as (link index, address, prefix length).
    pub async fn all_addrs_v4(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump addresses"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => {
                        Some((m.header.index, *ip, m.header.prefix_len))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds (or replaces) an IPv4 address on a link.
    pub async fn add_addr_v4(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add address {ip}/{prefix_len} to link {index}")))
    }

    /// Removes an IPv4 address from a link; already gone is not an error.
    pub async fn del_addr_v4(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(ip))
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("get address {ip} of link {index}")))?;
        for m in msgs
            .into_iter()
            .filter(|m| m.header.index == index && m.header.prefix_len == prefix_len)
        {
            match self.handle.address().del(m).execute().await {
                Ok(()) => {}
                Err(e) => {
                    let e = Error::netlink(format!("delete address {ip}/{prefix_len}"), e);
                    if !is_errno(&e, libc::EADDRNOTAVAIL) {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The IPv4 routes of every table with a destination prefix (default routes left out),
    /// as (destination, output interface).
    pub async fn routes_v4(&self) -> Result<Vec<(Ipv4Network, Option<u32>)>> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
        let routes: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump routes"))?;
        Ok(routes
            .iter()
            .filter(|r| r.header.destination_prefix_length > 0)
            .filter_map(|r| {
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })?;
                let net = Ipv4Network::new(dst, r.header.destination_prefix_length).ok()?;
                Some((net, oif))
            })
            .collect())
    }

    /// Isolates a bridge port, or not (`bridge link set dev PORT isolated on|off`).
    pub async fn set_port_isolated(&self, index: u32, on: bool) -> Result<()> {
        self.handle
            .link()
            .set_port(rtnetlink::LinkBridgePort::new(index).isolated(on).build())
            .execute()
            .await
            .map_err(nl(format!("set bridge port {index} isolated {on}")))
    }

    /// Adds an IPv4 route `dst [via gateway] [dev oif]`.
    pub async fn add_route_v4(
        &self,
        dst: Ipv4Network,
        gateway: Option<Ipv4Addr>,
        oif: Option<u32>,
    ) -> Result<()> {
        let mut b =
            RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst.ip(), dst.prefix());
        if let Some(gw) = gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = oif {
            b = b.output_interface(oif);
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add route {dst}")))
    }

    // ----- FDB (AF_BRIDGE neighbours) -----

    /// The device's own FDB entries (NTF_SELF, as `bridge fdb show dev DEV self`): entries the
    /// bridge holds for the device as a port (NTF_MASTER) are left out.
    pub async fn fdb_dump(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump fdb"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter(|m| !m.header.flags.contains(NeighbourFlags::Controller))
            .filter_map(|m| {
                let mut mac = None;
                let mut dst = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) => mac = MacAddr::from_bytes(l),
                        // AF_BRIDGE messages carry NDA_DST as raw bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            dst = Some(*ip)
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                            dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                        }
                        _ => {}
                    }
                }
                Some(FdbEntry {
                    mac: mac?,
                    dst,
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    /// `bridge fdb replace MAC dev PORT master static sticky`: pins `mac` to bridge port
    /// `index`. The bridge then never moves it to another port by learning (a frame from the
    /// vxlan port with that source MAC, an entry learned before the endpoint was plugged).
    pub async fn bridge_fdb_pin(&self, index: u32, mac: MacAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Noarp;
        m.header.flags = NeighbourFlags::Controller | NeighbourFlags::Sticky;
        m.header.kind = RouteType::Unspec;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.send_ack(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | rtnetlink::packet_core::NLM_F_REPLACE,
            &format!("bridge fdb pin {mac} to port {index}"),
        )
        .await
    }

    fn fdb_message(index: u32, mac: MacAddr, dst: Ipv4Addr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.header.kind = RouteType::Unspec;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        m
    }

    /// `bridge fdb replace MAC dev DEV dst VTEP self permanent`: creates the entry or points
    /// the existing one at `dst`.
    pub async fn fdb_replace(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<()> {
        self.send_ack(
            RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, mac, dst)),
            NLM_F_CREATE | rtnetlink::packet_core::NLM_F_REPLACE,
            &format!("fdb replace {mac} dst {dst} on link {index}"),
        )
        .await
    }

    /// `bridge fdb append MAC dev DEV dst VTEP self permanent`: adds one more destination
    /// (head-end replication list for the all-zeros MAC). Appending an existing destination
    /// is a no-op.
    pub async fn fdb_append(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<()> {
        self.send_ack(
            RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, mac, dst)),
            NLM_F_CREATE | NLM_F_APPEND,
            &format!("fdb append {mac} dst {dst} on link {index}"),
        )
        .await
    }

    /// `bridge fdb del MAC dev DEV dst VTEP self`: removes that one destination. Already
    /// gone is not an error.
    pub async fn fdb_del(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<()> {
        let r = self
            .send_ack(
                RouteNetlinkMessage::DelNeighbour(Self::fdb_message(index, mac, dst)),
                0,
                &format!("fdb del {mac} dst {dst} on link {index}"),
            )
            .await;
        match r {
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    // ----- IPv4 neighbours -----

    /// IPv4 neighbour entries on a link.
    pub async fn neigh_dump_v4(&self, index: u32) -> Result<Vec<NeighEntry>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump neighbours"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) => mac = MacAddr::from_bytes(l),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
                        _ => {}
                    }
                }
                Some(NeighEntry {
                    ip: ip?,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    pub async fn neigh_replace_v4(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(format!(
                "neigh replace {ip} lladdr {mac} on link {index}"
            )))
    }

    /// `ip neigh del IP dev DEV`; already gone is not an error.
    pub async fn neigh_del_v4(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Error::netlink(format!("neigh del {ip} on link {index}"), e);
                if is_errno(&e, libc::ENOENT) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }
}

fn parse_link(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        mac: None,
        up: m.header.flags.contains(LinkFlags::Up),
        master: None,
        alias: None,
        peer: None,
        vxlan: None,
        bridge_mcast_snooping: None,
        isolated: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(v) => link.mtu = *v,
            LinkAttribute::Address(b) => link.mac = MacAddr::from_bytes(b),
            LinkAttribute::Controller(c) => link.master = Some(*c),
            LinkAttribute::IfAlias(s) => link.alias = Some(s.clone()),
            LinkAttribute::Link(p) => link.peer = Some(*p),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(parse_vxlan(v)),
                        LinkInfo::PortData(InfoPortData::BridgePort(ps)) => {
                            link.isolated = ps.iter().find_map(|p| match p {
                                InfoBridgePort::Isolated(v) => Some(*v),
                                _ => None,
                            })
                        }
                        LinkInfo::Data(InfoData::Bridge(b)) => {
                            link.bridge_mcast_snooping = b.iter().find_map(|o| match o {
                                InfoBridge::MulticastSnooping(v) => Some(*v),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut v = VxlanInfo::default();
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = Some(*id),
            InfoVxlan::Local(ip) => v.local = Some(*ip),
            InfoVxlan::Group(ip) => v.group = Some(*ip),
            InfoVxlan::Port(p) => v.port = Some(*p),
            InfoVxlan::Learning(b) => v.learning = Some(*b),
            InfoVxlan::Proxy(b) => v.proxy = Some(*b),
            InfoVxlan::L2Miss(b) => v.l2miss = Some(*b),
            InfoVxlan::L3Miss(b) => v.l3miss = Some(*b),
            InfoVxlan::CollectMetadata(b) => v.collect_metadata = Some(*b),
            _ => {}
        }
    }
    v
}
