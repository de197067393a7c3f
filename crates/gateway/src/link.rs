//! The gateway's link policy over `ovl-netlink`'s verbs: the bridge with its one address,
//! isolated ports, the container's gateway interface with its default route, and what the
//! host already uses (so the gateway subnet avoids it).

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use ipnetwork::Ipv4Network;
use ovl_model::MacAddr;
use ovl_netlink::{Netlink, VethPeer};

use crate::error::{Error, Result};

/// Index of the link called `name`, or `None` when it does not exist.
pub async fn link_index(nl: &Netlink, name: &str) -> Result<Option<u32>> {
    Ok(nl.link_by_name(name).await?.map(|l| l.index))
}

/// Names of all links.
pub async fn link_names(nl: &Netlink) -> Result<Vec<String>> {
    Ok(nl.links().await?.into_iter().map(|l| l.name).collect())
}

/// IPv4 addresses (with prefix) configured on link `index`.
pub async fn link_ipv4(nl: &Netlink, index: u32) -> Result<Vec<Ipv4Network>> {
    Ok(nl
        .addrs_v4(index)
        .await?
        .into_iter()
        .filter_map(|(ip, len)| Ipv4Network::new(ip, len).ok())
        .collect())
}

/// Every IPv4 network the host uses: addresses (as their networks and /32s) and routes of all
/// tables, except default routes and anything on the link `exclude` (our own bridge).
pub async fn host_in_use(nl: &Netlink, exclude: Option<u32>) -> Result<Vec<Ipv4Network>> {
    let mut out = Vec::new();
    for (index, ip, len) in nl.all_addrs_v4().await? {
        if Some(index) == exclude {
            continue;
        }
        if let Ok(n) = Ipv4Network::new(ip, len) {
            out.push(Ipv4Network::new(n.network(), n.prefix()).expect("valid"));
        }
        out.push(Ipv4Network::new(ip, 32).expect("valid /32"));
    }
    for (dst, oif) in nl.routes_v4().await? {
        if exclude.is_some() && oif == exclude {
            continue;
        }
        out.push(dst);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Creates the bridge if missing, makes `addr` its only IPv4 address and brings it up.
/// Returns its index.
pub async fn ensure_bridge(nl: &Netlink, name: &str, addr: Ipv4Network) -> Result<u32> {
    let index = match link_index(nl, name).await? {
        Some(i) => i,
        None => {
            nl.ensure_plain_bridge(name).await?;
            link_index(nl, name)
                .await?
                .ok_or_else(|| Error::BridgeMissing {
                    bridge: name.to_string(),
                    address: addr.ip(),
                })?
        }
    };
    let current = nl.addrs_v4(index).await?;
    if !current.contains(&(addr.ip(), addr.prefix())) {
        // A stale address from an earlier subnet would leave a second on-link route.
        for (ip, len) in current {
            nl.del_addr_v4(index, ip, len).await?;
        }
        nl.add_addr_v4(index, addr.ip(), addr.prefix()).await?;
    }
    nl.set_up(index).await?;
    Ok(index)
}

/// Creates the interface `name` that holds a local address only, if missing: a bridge
/// without ports (a dummy device would do, but not every kernel has the dummy driver: this
/// project's CI machine has none). Gives it `addr/32` (next to anything else it holds) and
/// brings it up. Returns whether anything had to be done.
pub async fn ensure_address_holder(nl: &Netlink, name: &str, addr: Ipv4Addr) -> Result<bool> {
    let mut changed = false;
    let link = match nl.link_by_name(name).await? {
        Some(l) => l,
        None => {
            nl.ensure_plain_bridge(name).await?;
            changed = true;
            nl.link_by_name(name)
                .await?
                .ok_or_else(|| Error::LinkVanished(name.to_string()))?
        }
    };
    if !nl.addrs_v4(link.index).await?.contains(&(addr, 32)) {
        nl.add_addr_v4(link.index, addr, 32).await?;
        changed = true;
    }
    if !link.up {
        nl.set_up(link.index).await?;
        changed = true;
    }
    Ok(changed)
}

/// Deletes the link `name` if it exists.
pub async fn delete_link(nl: &Netlink, name: &str) -> Result<()> {
    Ok(ovl_netlink::veth::delete_by_name(nl, name).await?)
}

/// Puts `port` on `bridge`, isolated (no frames to other isolated ports), and up.
pub async fn enslave_isolated(nl: &Netlink, port: u32, bridge: u32) -> Result<()> {
    nl.set_master(port, bridge).await?;
    nl.set_port_isolated(port, true).await?;
    Ok(nl.set_up(port).await?)
}

/// True when link `index` is a bridge port with `isolated on`.
pub async fn is_isolated(nl: &Netlink, index: u32) -> Result<bool> {
    Ok(nl
        .links()
        .await?
        .iter()
        .any(|l| l.index == index && l.isolated == Some(true)))
}

/// The bridge (controller) index of link `index`, if any.
pub async fn controller_of(nl: &Netlink, index: u32) -> Result<Option<u32>> {
    Ok(nl
        .links()
        .await?
        .into_iter()
        .find(|l| l.index == index)
        .and_then(|l| l.master))
}

/// Creates a veth pair `host` <-> `peer` in the namespace of `nl`, the peer created directly
/// in the container's namespace `ns`.
pub async fn create_veth_into(nl: &Netlink, host: &str, peer: &str, ns: &Path) -> Result<()> {
    let file = ovl_netlink::netns::open_netns(ns)?;
    nl.create_veth(
        host,
        1500,
        &VethPeer {
            name: peer,
            netns: Some(file.as_fd()),
            mac: None,
            mtu: None,
        },
    )
    .await?;
    Ok(())
}

/// Inside the container: renames `tmp` to `ifname`, sets the MAC, address, brings it up and
/// installs the default route via `gateway`.
pub async fn configure_container_if(
    nl: &Netlink,
    tmp: &str,
    ifname: &str,
    mac: [u8; 6],
    addr: Ipv4Network,
    gateway: Ipv4Addr,
) -> Result<()> {
    let index = link_index(nl, tmp)
        .await?
        .ok_or_else(|| Error::LinkVanished(tmp.to_string()))?;
    nl.rename(index, ifname).await?;
    nl.set_mac(index, MacAddr(mac)).await?;
    nl.add_addr_v4(index, addr.ip(), addr.prefix()).await?;
    nl.set_up(index).await?;
    let default = Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0");
    Ok(nl.add_route_v4(default, Some(gateway), Some(index)).await?)
}
