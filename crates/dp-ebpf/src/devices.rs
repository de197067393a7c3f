//! Devices of the datapath in the host namespace: the collect-metadata vxlan device, the
//! headroom bridge, and the bpffs that holds the pins.

use std::net::Ipv4Addr;
use std::path::Path;

use ovl_netlink::HostMounts;
use ovl_netlink::sync as netlink;

use crate::error::{Error, Result};
use crate::load::EbpfDatapath;
use crate::sys;

/// The headroom bridge: a bridge left down, holding an idle vxlan device and the host end of
/// every container veth. A bridge gives its ports the largest headroom any port declares, and
/// a veth passes it on to its other end, so the containers' stacks reserve room for the 50
/// bytes of encapsulation in front of every frame they build: `bpf_skb_adjust_room` then
/// grows small frames (a ping, a DNS query) in place instead of reallocating their heads,
/// which cost 1.5-2.5 us per frame on a CPU back from idle. It forwards nothing: a down
/// bridge's ports drop what reaches them, and `lxc_egress` redirects or drops every frame
/// before the bridge would see it.
pub const HEADROOM_BRIDGE: &str = "ovl_hr";
/// The idle vxlan device in the headroom bridge (never up, so no socket; a VNI and port of
/// its own, so it conflicts with no other vxlan device).
pub const HEADROOM_DEV: &str = "ovl_hrvx";
const HEADROOM_VNI: u32 = 1;
const HEADROOM_PORT: u16 = 1;

/// Makes sure the host's `dir` is on a bpf filesystem, mounting a new bpffs instance there
/// (in the host's mount namespace, [`HostMounts`]) if it is not: its pins, and with them the
/// whole fast path, last as long as that mount. Idempotent.
pub fn ensure_bpffs_at(mounts: &HostMounts, dir: &Path) -> Result<()> {
    let seen = mounts.resolve(dir);
    let bpffs = |source| Error::Bpffs {
        context: format!("mounting a bpffs at {}", dir.display()),
        source,
    };
    if seen.exists() && sys::is_bpffs(&seen).map_err(bpffs)? {
        return Ok(());
    }
    std::fs::create_dir_all(&seen).map_err(bpffs)?;
    let target = std::path::absolute(dir).map_err(bpffs)?;
    mounts
        .run(move || {
            sys::mount_bpffs(&target).map_err(|e| ovl_netlink::Error::Io {
                context: "mounting a bpffs".into(),
                path: target.clone(),
                source: e,
            })
        })
        .map_err(Error::from)
}

impl EbpfDatapath {
    /// Makes the host end `ifindex` a port of the headroom bridge (see [`HEADROOM_BRIDGE`]).
    /// Only a speed-up: a failure (a bridge holds at most 1024 ports) is logged and the
    /// endpoint works without it.
    pub(crate) fn give_headroom(&self, ifindex: u32) {
        let Some(br) = self.headroom_bridge else {
            return;
        };
        if let Err(e) = netlink::set_master(ifindex, br) {
            log::warn!("interface {ifindex}: no encapsulation headroom ({HEADROOM_BRIDGE}): {e}");
        }
    }

    /// The headroom the stack reserves in front of frames sent through `ifindex` (the
    /// container end of an endpoint's veth gets the encapsulation's), as the kernel reports
    /// it; `None` on kernels before 6.3.
    pub fn link_headroom(ifindex: u32) -> Result<Option<u16>> {
        Ok(existing_link(ifindex)?.headroom)
    }
}

/// Finds or creates the collect-metadata vxlan device; returns its ifindex.
pub(crate) fn ensure_vxlan(name: &str, local: Ipv4Addr, port: u16, mtu: u32) -> Result<u32> {
    let nl = |context: String| move |source| Error::Netlink { context, source };
    let link = match netlink::link_by_name(name).map_err(nl(format!("looking up {name}")))? {
        Some(l) => l,
        None => {
            netlink::create_vxlan_external(name, local, port, mtu)
                .map_err(nl(format!("creating vxlan device {name}")))?;
            netlink::link_by_name(name)
                .map_err(nl(format!("looking up {name}")))?
                .ok_or_else(|| Error::VxlanConflict {
                    name: name.into(),
                    detail: "vanished right after creation".into(),
                })?
        }
    };
    check_vxlan(&link, local, port)?;
    if link.mtu != Some(mtu) {
        netlink::set_mtu(link.index, mtu).map_err(nl(format!("setting MTU {mtu} on {name}")))?;
    }
    if !link.up {
        netlink::set_up(link.index).map_err(nl(format!("setting {name} up")))?;
    }
    Ok(link.index)
}

/// The link `ifindex` of the calling thread's namespace; its absence is an error.
pub(crate) fn existing_link(ifindex: u32) -> Result<netlink::LinkSummary> {
    netlink::link_by_index(ifindex)
        .map_err(|source| Error::Netlink {
            context: format!("looking up interface {ifindex}"),
            source,
        })?
        .ok_or(Error::NoSuchLink(ifindex))
}

/// The headroom bridge with its idle vxlan device, created if missing; its ifindex.
pub(crate) fn ensure_headroom_bridge() -> Result<u32> {
    let nl = |context: String| move |source| Error::Netlink { context, source };
    let find = |name: &str| netlink::link_by_name(name).map_err(nl(format!("looking up {name}")));
    let br = match find(HEADROOM_BRIDGE)? {
        Some(l) => l,
        None => {
            netlink::create_bridge(HEADROOM_BRIDGE)
                .map_err(nl(format!("creating bridge {HEADROOM_BRIDGE}")))?;
            find(HEADROOM_BRIDGE)?.ok_or(Error::NoSuchLink(0))?
        }
    };
    if br.kind != Some(netlink_packet_route::link::InfoKind::Bridge) {
        return Err(Error::Conflict(format!(
            "{HEADROOM_BRIDGE} exists and is not a bridge ({:?})",
            br.kind
        )));
    }
    let dev = match find(HEADROOM_DEV)? {
        Some(l) => l,
        None => {
            netlink::create_vxlan_idle(HEADROOM_DEV, HEADROOM_VNI, HEADROOM_PORT)
                .map_err(nl(format!("creating {HEADROOM_DEV}")))?;
            find(HEADROOM_DEV)?.ok_or(Error::NoSuchLink(0))?
        }
    };
    if dev.master != Some(br.index) {
        netlink::set_master(dev.index, br.index)
            .map_err(nl(format!("adding {HEADROOM_DEV} to {HEADROOM_BRIDGE}")))?;
    }
    Ok(br.index)
}

/// An existing device is adopted only if it is what we would have created.
fn check_vxlan(link: &netlink::LinkSummary, local: Ipv4Addr, port: u16) -> Result<()> {
    let conflict = |detail: String| {
        Err(Error::VxlanConflict {
            name: link.name.clone(),
            detail,
        })
    };
    if link.kind != Some(netlink_packet_route::link::InfoKind::Vxlan) {
        return conflict(format!("kind is {:?}, not vxlan", link.kind));
    }
    if !link.vxlan_external {
        return conflict("not a collect-metadata (external) device".into());
    }
    if link.vxlan_port.is_some_and(|p| p != port) {
        return conflict(format!("UDP port {:?}, not {port}", link.vxlan_port));
    }
    if link.vxlan_local.is_some_and(|l| l != local) {
        return conflict(format!(
            "source address {:?}, not {local} (a changed VTEP address needs teardown first)",
            link.vxlan_local
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::InfoKind;
    use ovl_model::VXLAN_PORT;

    #[test]
    fn vxlan_adoption_rules() {
        let mut l = netlink::LinkSummary {
            index: 5,
            name: "ovl_vx0".into(),
            mtu: Some(1450),
            kind: Some(InfoKind::Vxlan),
            vxlan_external: true,
            vxlan_port: Some(4789),
            vxlan_local: Some(Ipv4Addr::new(198, 18, 0, 11)),
            up: true,
            master: None,
            headroom: None,
        };
        let me = Ipv4Addr::new(198, 18, 0, 11);
        assert!(check_vxlan(&l, me, VXLAN_PORT).is_ok());
        assert!(check_vxlan(&l, Ipv4Addr::new(198, 18, 0, 12), VXLAN_PORT).is_err());
        l.vxlan_port = Some(8472);
        assert!(matches!(
            check_vxlan(&l, me, VXLAN_PORT),
            Err(Error::VxlanConflict { .. })
        ));
        // A cluster configured for 8472 adopts it.
        assert!(check_vxlan(&l, me, 8472).is_ok());
        l.vxlan_port = Some(4789);
        l.vxlan_external = false;
        assert!(check_vxlan(&l, me, VXLAN_PORT).is_err());
        l.kind = Some(InfoKind::Dummy);
        assert!(check_vxlan(&l, me, VXLAN_PORT).is_err());
    }
}
