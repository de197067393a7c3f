//! Endpoint plumbing shared by both datapaths: a veth pair whose host end stays with the
//! datapath (a bridge port in a sandbox, or a host end in the host namespace) and whose
//! container end goes into the container, or waits in the host namespace for dockerd to
//! move it; the container end's configuration; and finding a container end again.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use ovl_model::{ContainerLink, ContainerSeen, EndpointSpec, MacAddr, Plug, marker_of};

use crate::error::{Error, Result};
use crate::host::HostMounts;
use crate::link::{Link, Netlink, VethPeer};

/// How the container end is configured.
#[derive(Clone, Copy, Debug)]
pub struct ContainerEnd<'a> {
    /// Its MAC.
    pub mac: MacAddr,
    /// Its MTU (the host end's too).
    pub mtu: u32,
    /// Its only IPv4 address.
    pub ip: Ipv4Addr,
    /// The address's prefix length.
    pub prefix_len: u8,
    /// Its ifalias marker.
    pub marker: &'a str,
}

/// Where the container end goes.
#[derive(Debug)]
pub enum Peer<'a> {
    /// Into the container's namespace (`nl` is a connection there, `file` its namespace
    /// file), renamed `ifname` and configured.
    Netns {
        /// A connection in the container's namespace.
        nl: &'a Netlink,
        /// The container's namespace file, open.
        file: BorrowedFd<'a>,
        /// The container's namespace file's path.
        path: &'a Path,
        /// Its final name.
        ifname: &'a str,
    },
    /// Into the namespace of `nl` under its temporary name, down and without address, with
    /// its MAC, MTU and marker, for dockerd to move and configure.
    Unplugged {
        /// A connection in that namespace (the host's).
        nl: &'a Netlink,
        /// That namespace's file.
        file: BorrowedFd<'a>,
    },
}

/// A veth pair to create.
#[derive(Debug)]
pub struct Pair<'a> {
    /// A connection in the host end's namespace.
    pub host: &'a Netlink,
    /// The host end's name (the caller has made sure no other interface holds it).
    pub host_ifname: &'a str,
    /// The host end's marker.
    pub host_marker: &'a str,
    /// A bridge to make the host end a port of.
    pub master: Option<u32>,
    /// The container end's name while it is set up (derived from the endpoint, so leftovers
    /// of an interrupted attempt are found and removed first).
    pub tmp: &'a str,
    /// Where the container end goes.
    pub peer: Peer<'a>,
    /// The container end's configuration.
    pub ct: ContainerEnd<'a>,
}

/// What [`plumb`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plumbed {
    /// The host end.
    pub host: Link,
    /// The container end's name (the temporary one for [`Peer::Unplugged`]).
    pub ct_name: String,
}

/// Creates the pair and configures both ends. Leftovers under the temporary name are removed
/// first. If a step fails after the pair exists, the pair is deleted again (deleting one end
/// removes both); a failure of that undo is reported with the original error.
pub async fn plumb(p: &Pair<'_>) -> Result<Plumbed> {
    let (ct_nl, ct_file) = match &p.peer {
        Peer::Netns { nl, file, .. } | Peer::Unplugged { nl, file } => (*nl, *file),
    };
    for nl in [p.host, ct_nl] {
        if let Some(left) = nl.link_by_name(p.tmp).await? {
            nl.del_link(left.index).await?;
        }
    }
    p.host
        .create_veth(
            p.host_ifname,
            p.ct.mtu,
            &VethPeer {
                name: p.tmp,
                netns: Some(ct_file),
                mac: Some(p.ct.mac),
                mtu: Some(p.ct.mtu),
            },
        )
        .await?;
    let made: Result<Plumbed> = async {
        let host = p
            .host
            .link_by_name(p.host_ifname)
            .await?
            .ok_or_else(|| Error::NoLink {
                name: p.host_ifname.to_string(),
                place: None,
            })?;
        configure_host_end(p.host, &host, p.ct.mtu, p.host_marker, p.master).await?;
        let c = ct_nl
            .link_by_name(p.tmp)
            .await?
            .ok_or_else(|| Error::NoLink {
                name: p.tmp.to_string(),
                place: Some("the container's namespace".into()),
            })?;
        let ct_name = match &p.peer {
            Peer::Netns {
                nl, ifname, path, ..
            } => {
                nl.rename(c.index, ifname).await?;
                let c = nl
                    .link_by_name(ifname)
                    .await?
                    .ok_or_else(|| Error::NoLink {
                        name: ifname.to_string(),
                        place: Some("the container's namespace".into()),
                    })?;
                configure_container_end(nl, &c, &p.ct).await?;
                tune_arp(path, ifname).await;
                ifname.to_string()
            }
            Peer::Unplugged { nl, .. } => {
                nl.set_alias(c.index, p.ct.marker).await?;
                p.tmp.to_string()
            }
        };
        let host = p.host.link_by_name(p.host_ifname).await?.unwrap_or(host);
        Ok(Plumbed { host, ct_name })
    }
    .await;
    match made {
        Ok(m) => Ok(m),
        Err(e) => Err(e.with_undo(delete_by_name(p.host, p.host_ifname).await)),
    }
}

/// ARP retransmit time on overlay interfaces. Neighbours on the overlay are answered locally
/// (proxy ARP from programmed entries, or in BPF), so a request sent a moment before the
/// peer's entry arrived is dropped; the kernel's default retry after 1 s is what made
/// Docker's overlay take over a second to converge. Retrying after 100 ms costs nothing.
const ARP_RETRANS_MS: &str = "100";

/// Sets [`ARP_RETRANS_MS`] on `ifname` inside `netns`. Best effort: a failure only slows the
/// first contact, so it is logged, not returned.
pub async fn tune_arp(netns: &Path, ifname: &str) {
    let knob = format!("/proc/sys/net/ipv4/neigh/{ifname}/retrans_time_ms");
    let r = crate::netns::run_in_netns_async(Some(netns), move || {
        std::fs::write(&knob, ARP_RETRANS_MS).map_err(|e| Error::io("tuning ARP", &knob, e))
    })
    .await;
    if let Err(e) = r {
        tracing::debug!(netns = %netns.display(), error = %e, "tuning ARP retransmits");
    }
}

/// Deletes the link called `name`, if there is one.
pub async fn delete_by_name(nl: &Netlink, name: &str) -> Result<()> {
    match nl.link_by_name(name).await? {
        Some(l) => nl.del_link(l.index).await,
        None => Ok(()),
    }
}

/// Converges a host end: marker, MTU, bridge, up.
pub async fn configure_host_end(
    nl: &Netlink,
    l: &Link,
    mtu: u32,
    marker: &str,
    master: Option<u32>,
) -> Result<()> {
    if l.alias.as_deref() != Some(marker) {
        nl.set_alias(l.index, marker).await?;
    }
    if l.mtu != mtu {
        nl.set_mtu(l.index, mtu).await?;
    }
    if let Some(m) = master
        && l.master != Some(m)
    {
        nl.set_master(l.index, m).await?;
    }
    if !l.up {
        nl.set_up(l.index).await?;
    }
    Ok(())
}

/// Converges a container end: marker, MAC, MTU, exactly the one address, up; and `lo` up.
pub async fn configure_container_end(
    ct: &Netlink,
    c: &Link,
    want: &ContainerEnd<'_>,
) -> Result<()> {
    if c.alias.as_deref() != Some(want.marker) {
        ct.set_alias(c.index, want.marker).await?;
    }
    if c.mac != Some(want.mac) {
        ct.set_mac(c.index, want.mac).await?;
    }
    if c.mtu != want.mtu {
        ct.set_mtu(c.index, want.mtu).await?;
    }
    let addrs = ct.addrs_v4(c.index).await?;
    for (ip, len) in &addrs {
        if (*ip, *len) != (want.ip, want.prefix_len) {
            ct.del_addr_v4(c.index, *ip, *len).await?;
        }
    }
    if !addrs.contains(&(want.ip, want.prefix_len)) {
        ct.add_addr_v4(c.index, want.ip, want.prefix_len).await?;
    }
    if !c.up {
        ct.set_up(c.index).await?;
    }
    if let Some(lo) = ct.link_by_name("lo").await?
        && !lo.up
    {
        ct.set_up(lo.index).await?;
    }
    Ok(())
}

/// The links of one namespace with their IPv4 addresses: one dump of each, for finding the
/// container ends of every endpoint in it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The links.
    pub links: Vec<Link>,
    /// IPv4 addresses: (link index, address, prefix length).
    pub addrs: Vec<(u32, Ipv4Addr, u8)>,
}

impl Snapshot {
    /// Dumps links and addresses.
    pub async fn take(nl: &Netlink) -> Result<Snapshot> {
        Ok(Snapshot {
            links: nl.links().await?,
            addrs: nl.all_addrs_v4().await?,
        })
    }

    /// The container end of endpoint `id` of `network`: marked as such and, when the host end
    /// is known (`host_index`), its peer.
    pub fn container_end(&self, network: &str, id: &str, host_index: Option<u32>) -> Option<&Link> {
        self.links.iter().find(|l| {
            marker_of(l.alias.as_deref()).is_some_and(|m| m.is_container_of(network, id))
                && host_index.is_none_or(|h| l.peer == Some(h))
        })
    }

    /// A link as the planners see a container end.
    pub fn container_link(&self, l: &Link) -> ContainerLink {
        ContainerLink {
            index: l.index,
            name: l.name.clone(),
            mac: l.mac,
            mtu: l.mtu,
            up: l.up,
            addrs: self
                .addrs
                .iter()
                .filter(|(i, _, _)| *i == l.index)
                .map(|(_, ip, len)| (*ip, *len))
                .collect(),
            alias: l.alias.clone(),
        }
    }

    /// Names of all links (for picking a free `ethN`).
    pub fn names(&self) -> Vec<String> {
        self.links.iter().map(|l| l.name.clone()).collect()
    }
}

/// The spec as this process reaches it: its namespace path resolved in the host's mount
/// namespace (paths users and dockerd give name the host's files; the agent may run in a
/// mount namespace of its own that does not see mounts made after it started), or in the
/// agent's own where only that one has it ([`HostMounts::resolve_netns`]).
pub fn host_view(mounts: &HostMounts, ep: &EndpointSpec) -> EndpointSpec {
    EndpointSpec {
        netns: mounts.resolve_netns(&ep.netns),
        ..ep.clone()
    }
}

/// Finds container ends during one observation: one snapshot per container namespace
/// (several endpoints share one) and one of the host namespace.
#[derive(Debug)]
pub struct Finder {
    host_netns: Option<PathBuf>,
    mounts: HostMounts,
    by_path: HashMap<PathBuf, Option<Snapshot>>,
    host: Option<Snapshot>,
}

impl Finder {
    /// A finder whose host namespace is `host_netns` (`None`: the caller's); container
    /// namespace paths are the host's, resolved through `mounts`.
    pub fn new(host_netns: Option<PathBuf>, mounts: HostMounts) -> Finder {
        Finder {
            host_netns,
            mounts,
            by_path: HashMap::new(),
            host: None,
        }
    }

    /// The snapshot of a namespace; `None` if it is gone.
    pub async fn snapshot(&mut self, path: &Path) -> Result<Option<&Snapshot>> {
        if !self.by_path.contains_key(path) {
            let snap = if crate::netns::is_netns(path) {
                match Netlink::open(Some(path)).await {
                    Ok(nl) => Some(Snapshot::take(&nl).await?),
                    // Gone between the check and the open.
                    Err(Error::NoNetns { .. } | Error::NotNetns { .. }) => None,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            self.by_path.insert(path.to_path_buf(), snap);
        }
        Ok(self.by_path[path].as_ref())
    }

    async fn host(&mut self) -> Result<&Snapshot> {
        if self.host.is_none() {
            let nl = Netlink::open(self.host_netns.as_deref()).await?;
            self.host = Some(Snapshot::take(&nl).await?);
        }
        Ok(self.host.as_ref().expect("just taken"))
    }

    /// What is there of the container end of endpoint `ep` of `network`, whose host end has
    /// index `host_end` (if it exists). A Docker endpoint's interface that is not in the
    /// sandbox yet may still wait in the host namespace (the host namespace is looked at
    /// after the sandbox, so an interface dockerd moves in between is seen in neither only if
    /// it moved back, which it does not).
    pub async fn find(
        &mut self,
        network: &str,
        ep: &EndpointSpec,
        host_end: Option<u32>,
    ) -> Result<ContainerSeen> {
        let id = &ep.endpoint_id;
        let path = self.mounts.resolve_netns(&ep.netns);
        let seen = match self.snapshot(&path).await? {
            None => return Ok(ContainerSeen::NetnsGone),
            Some(snap) => match host_end.and_then(|h| snap.container_end(network, id, Some(h))) {
                Some(l) => return Ok(ContainerSeen::Present(snap.container_link(l))),
                None => ContainerSeen::Missing,
            },
        };
        if let (Plug::Docker { .. }, Some(h)) = (&ep.plug, host_end)
            && let Some(l) = self.host().await?.container_end(network, id, Some(h))
        {
            return Ok(ContainerSeen::AwaitingDocker {
                name: l.name.clone(),
            });
        }
        Ok(seen)
    }
}
