//! Typed netlink verbs used by the gateway (bridge, veth, addresses, routes).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{Error, Result};

const ENODEV: i32 = -19;
const EEXIST: i32 = -17;

fn is_code(e: &rtnetlink::Error, code: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == code)
}

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Index of the link called `name`, or `None` when it does not exist.
pub async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_code(&e, ENODEV) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up link {name}"), e)),
    }
}

/// Names of all links.
pub async fn link_names(h: &Handle) -> Result<Vec<String>> {
    let msgs: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink("listing links", e))?;
    Ok(msgs
        .iter()
        .filter_map(|m| link_name(m).map(str::to_string))
        .collect())
}

/// IPv4 addresses (with prefix) configured on link `index`.
pub async fn link_ipv4(h: &Handle, index: u32) -> Result<Vec<Ipv4Network>> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink("listing addresses", e))?;
    let mut out = Vec::new();
    for m in msgs {
        if m.header.index != index {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a
                && let Ok(n) = Ipv4Network::new(*ip, m.header.prefix_len)
            {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Every IPv4 network the host uses: addresses (as their networks and /32s) and routes of all
/// tables, except default routes and anything on the link `exclude` (our own bridge).
pub async fn host_in_use(h: &Handle, exclude: Option<u32>) -> Result<Vec<Ipv4Network>> {
    let mut out = Vec::new();
    let addrs: Vec<_> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink("listing host addresses", e))?;
    for m in addrs {
        if Some(m.header.index) == exclude {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                if let Ok(n) = Ipv4Network::new(*ip, m.header.prefix_len) {
                    out.push(Ipv4Network::new(n.network(), n.prefix()).expect("valid"));
                }
                out.push(Ipv4Network::new(*ip, 32).expect("valid /32"));
            }
        }
    }
    let routes: Vec<_> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink("listing host routes", e))?;
    for r in routes {
        let prefix = r.header.destination_prefix_length;
        if prefix == 0 {
            continue;
        }
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if exclude.is_some() && oif == exclude {
            continue;
        }
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(dst) = dst
            && let Ok(n) = Ipv4Network::new(dst, prefix)
        {
            out.push(n);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Creates the bridge if missing, makes `addr` its only IPv4 address and brings it up.
/// Returns its index.
pub async fn ensure_bridge(h: &Handle, name: &str, addr: Ipv4Network) -> Result<u32> {
    let index = match link_index(h, name).await? {
        Some(i) => i,
        None => {
            match h.link().add(LinkBridge::new(name).build()).execute().await {
                Ok(()) => {}
                Err(e) if is_code(&e, EEXIST) => {}
                Err(e) => return Err(Error::netlink(format!("creating bridge {name}"), e)),
            }
            link_index(h, name)
                .await?
                .ok_or_else(|| Error::BridgeMissing {
                    bridge: name.to_string(),
                    address: addr.ip(),
                })?
        }
    };
    let current = link_ipv4(h, index).await?;
    if !current.contains(&addr) {
        // A stale address from an earlier subnet would leave a second on-link route.
        let msgs: Vec<_> = h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("listing bridge addresses", e))?;
        for m in msgs {
            let v4 = m
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(_))));
            if v4 && m.header.index == index {
                h.address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| Error::netlink(format!("removing old address of {name}"), e))?;
            }
        }
        h.address()
            .add(index, IpAddr::V4(addr.ip()), addr.prefix())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("adding {addr} to {name}"), e))?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("setting {name} up"), e))?;
    Ok(index)
}

/// Creates the interface `name` that holds a local address only, if missing: a bridge
/// without ports (a dummy device would do, but not every kernel has the dummy driver: this
/// project's CI machine has none). Gives it `addr/32` (next to anything else it holds) and
/// brings it up. Returns whether anything had to be done.
pub async fn ensure_address_holder(h: &Handle, name: &str, addr: Ipv4Addr) -> Result<bool> {
    let mut changed = false;
    let index = match link_index(h, name).await? {
        Some(i) => i,
        None => {
            match h.link().add(LinkBridge::new(name).build()).execute().await {
                Ok(()) => {}
                Err(e) if is_code(&e, EEXIST) => {}
                Err(e) => return Err(Error::netlink(format!("creating {name}"), e)),
            }
            changed = true;
            link_index(h, name)
                .await?
                .ok_or_else(|| Error::LinkVanished(name.to_string()))?
        }
    };
    let want = Ipv4Network::new(addr, 32).expect("a /32 is valid");
    if !link_ipv4(h, index).await?.contains(&want) {
        match h.address().add(index, IpAddr::V4(addr), 32).execute().await {
            Ok(()) => {}
            Err(e) if is_code(&e, EEXIST) => {}
            Err(e) => return Err(Error::netlink(format!("adding {addr} to {name}"), e)),
        }
        changed = true;
    }
    let up = {
        let mut s = h.link().get().match_index(index).execute();
        let msg = s
            .try_next()
            .await
            .map_err(|e| Error::netlink(format!("reading {name}"), e))?;
        msg.is_some_and(|m| {
            m.header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Up)
        })
    };
    if !up {
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("setting {name} up"), e))?;
        changed = true;
    }
    Ok(changed)
}

/// Deletes the link `name` if it exists.
pub async fn delete_link(h: &Handle, name: &str) -> Result<()> {
    if let Some(index) = link_index(h, name).await? {
        match h.link().del(index).execute().await {
            Ok(()) => {}
            Err(e) if is_code(&e, ENODEV) => {}
            Err(e) => return Err(Error::netlink(format!("deleting link {name}"), e)),
        }
    }
    Ok(())
}

/// Puts `port` on `bridge`, isolated (no frames to other isolated ports), and up.
pub async fn enslave_isolated(h: &Handle, port: u32, bridge: u32, name: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(port).controller(bridge).build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("attaching {name} to the bridge"), e))?;
    h.link()
        .set_port(LinkBridgePort::new(port).isolated(true).build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("isolating bridge port {name}"), e))?;
    h.link()
        .set(LinkUnspec::new_with_index(port).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("setting {name} up"), e))
}

/// True when link `index` is a bridge port with `isolated on`.
pub async fn is_isolated(h: &Handle, index: u32) -> Result<bool> {
    use rtnetlink::packet_route::link::{InfoBridgePort, InfoPortData, LinkInfo};
    let mut s = h.link().get().match_index(index).execute();
    let msg = s
        .try_next()
        .await
        .map_err(|e| Error::netlink("reading bridge port", e))?;
    Ok(msg.is_some_and(|m| {
        m.attributes.iter().any(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| match i {
                LinkInfo::PortData(InfoPortData::BridgePort(ps)) => ps
                    .iter()
                    .any(|p| matches!(p, InfoBridgePort::Isolated(true))),
                _ => false,
            }),
            _ => false,
        })
    }))
}

/// The bridge (controller) index of link `index`, if any.
pub async fn controller_of(h: &Handle, index: u32) -> Result<Option<u32>> {
    let mut s = h.link().get().match_index(index).execute();
    let msg = s
        .try_next()
        .await
        .map_err(|e| Error::netlink("reading link", e))?;
    Ok(msg.and_then(|m| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(c) => Some(*c),
            _ => None,
        })
    }))
}

/// Creates a veth pair `host` <-> `peer` in the namespace of `h`.
pub async fn create_veth(h: &Handle, host: &str, peer: &str) -> Result<()> {
    h.link()
        .add(LinkVeth::new(host, peer).build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("creating veth {host}/{peer}"), e))
}

/// Moves link `index` into the network namespace at `ns`.
pub async fn move_to_netns(h: &Handle, index: u32, name: &str, ns: &Path) -> Result<()> {
    let file = std::fs::File::open(ns)
        .map_err(|e| Error::io(format!("opening container netns {}", ns.display()), e))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(file.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("moving {name} into netns {}", ns.display()), e))
}

/// Inside the container: renames `tmp` to `ifname`, sets the MAC, address, brings it up and
/// installs the default route via `gateway`.
pub async fn configure_container_if(
    h: &Handle,
    tmp: &str,
    ifname: &str,
    mac: [u8; 6],
    addr: Ipv4Network,
    gateway: Ipv4Addr,
) -> Result<()> {
    let index = link_index(h, tmp)
        .await?
        .ok_or_else(|| Error::LinkVanished(tmp.to_string()))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .name(ifname)
                .address(mac.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("renaming {tmp} to {ifname}"), e))?;
    match h
        .address()
        .add(index, IpAddr::V4(addr.ip()), addr.prefix())
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if is_code(&e, EEXIST) => {}
        Err(e) => return Err(Error::netlink(format!("adding {addr} to {ifname}"), e)),
    }
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("setting {ifname} up"), e))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("adding default route via {gateway}"), e))
}
