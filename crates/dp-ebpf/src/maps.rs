//! The map API: local endpoints, remote endpoints, flood lists, counters, and reading it all
//! back for the planner.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, MapError};
use ovl_model::MacAddr;

use crate::counters::{self, Counters};
use crate::devices::existing_link;
use crate::error::{Error, Result, collect, map_err};
use crate::load::{EbpfDatapath, LXC, LinkKind, unpin_link};
use crate::raw::*;
use crate::slots;

/// A local endpoint: the container interface behind a host-side veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointInfo {
    /// VNI of its network.
    pub vni: u32,
    /// Its MAC (the container side of the veth).
    pub mac: MacAddr,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
}

/// A remote endpoint as programmed by [`EbpfDatapath::set_remote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteInfo {
    /// The VTEP (underlay address of its host).
    pub vtep: Ipv4Addr,
    /// Its IPv4 address (answered by the ARP proxy).
    pub ip: Ipv4Addr,
}

/// Everything programmed in the maps, for reconciliation by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EbpfState {
    /// ifindex of the vxlan device the programs encapsulate to.
    pub vxlan_ifindex: u32,
    /// Local endpoints by host-side ifindex (`LOCAL_EPS`).
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// `(vni, mac) -> ifindex` (`LOCAL_BY_MAC`).
    pub local_by_mac: BTreeMap<(u32, MacAddr), u32>,
    /// `(vni, mac) -> VTEP and IP` (`REMOTE`).
    pub remotes: BTreeMap<(u32, MacAddr), RemoteInfo>,
    /// `(vni, ip) -> mac`, answered by the ARP proxy (`IP_TO_MAC`), local and remote.
    pub arp: BTreeMap<(u32, Ipv4Addr), MacAddr>,
    /// VNI -> VTEPs BUM frames are replicated to (`FLOOD`).
    pub flood: BTreeMap<u32, Vec<Ipv4Addr>>,
    /// VNI -> local host-side ifindexes (`LOCAL_FLOOD`); its keys are the served VNIs.
    pub local_flood: BTreeMap<u32, Vec<u32>>,
    /// Host-side ifindexes with a pinned `lxc_egress` link.
    pub attached_links: Vec<u32>,
}

/// A missing key is not an error when deleting (idempotent removal).
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl EbpfDatapath {
    /// Programs a local endpoint: map entries first (so the first packet finds them), then
    /// `lxc_egress` on tc ingress of the host-side veth `host_ifindex`. Idempotent; changing
    /// an attached endpoint's VNI/MAC/IP replaces its old entries.
    ///
    /// Refuses ([`Error::MtuTooLarge`]) an interface whose MTU exceeds the overlay MTU.
    pub fn attach_endpoint(&mut self, host_ifindex: u32, info: EndpointInfo) -> Result<()> {
        validate_vni(info.vni)?;
        validate_mac(info.mac)?;
        validate_unicast_ip(info.ip, "endpoint")?;
        let link = existing_link(host_ifindex)?;
        if let Some(m) = link.mtu
            && m > self.mtu
        {
            return Err(Error::MtuTooLarge {
                ifindex: host_ifindex,
                link_mtu: m,
                overlay_mtu: self.mtu,
            });
        }
        if let Some(other) = self.lookup_local_by_mac(info.vni, info.mac)?
            && other != host_ifindex
        {
            return Err(Error::Conflict(format!(
                "MAC {} on VNI {} already belongs to interface {other}",
                info.mac, info.vni
            )));
        }
        if self.lookup_remote(info.vni, info.mac)?.is_some() {
            return Err(Error::Conflict(format!(
                "MAC {} on VNI {} is programmed as a remote endpoint; del_remote it first",
                info.mac, info.vni
            )));
        }
        let mut new_local = self.lookup_local_flood(info.vni)?;
        if !new_local.contains(&host_ifindex) {
            new_local.push(host_ifindex);
        }
        let local_value = local_flood_value(info.vni, &new_local)?;
        if let Some(old) = self.lookup_endpoint(host_ifindex)?
            && old != info
        {
            self.remove_endpoint_entries(host_ifindex, old)?;
        }

        self.hash::<u32, RawEndpoint>("LOCAL_EPS")?
            .insert(host_ifindex, RawEndpoint::from(info), 0)
            .map_err(map_err("LOCAL_EPS"))?;
        self.hash::<RawMacKey, u32>("LOCAL_BY_MAC")?
            .insert(mac_key(info.vni, info.mac), host_ifindex, 0)
            .map_err(map_err("LOCAL_BY_MAC"))?;
        // Copies after the hash maps: a slot never holds what they do not.
        slots::put_ep(&mut self.slots.ep, host_ifindex, RawEndpoint::from(info))
            .map_err(map_err("EP_SLOTS"))?;
        slots::put_mac(
            &mut self.slots.local,
            mac_key(info.vni, info.mac),
            host_ifindex,
        )
        .map_err(map_err("LOCAL_SLOTS"))?;
        self.hash::<RawIpKey, RawMac>("IP_TO_MAC")?
            .insert(
                ip_key(info.vni, info.ip),
                RawMac {
                    mac: info.mac.0,
                    pad: 0,
                },
                0,
            )
            .map_err(map_err("IP_TO_MAC"))?;
        if let Some(v) = local_value {
            self.hash::<u32, RawLocalFlood>("LOCAL_FLOOD")?
                .insert(info.vni, v, 0)
                .map_err(map_err("LOCAL_FLOOD"))?;
        }
        if link.master != self.headroom_bridge {
            self.give_headroom(host_ifindex);
        }
        self.attach(LXC, host_ifindex)
    }

    /// Removes the map entries of a local endpoint, each only if it still points at it.
    fn remove_endpoint_entries(&mut self, ifindex: u32, old: EndpointInfo) -> Result<()> {
        // Copies first: a slot never holds what the hash maps no longer do.
        slots::clear_ep(&mut self.slots.ep, ifindex).map_err(map_err("EP_SLOTS"))?;
        slots::clear_mac(
            &mut self.slots.local,
            mac_key(old.vni, old.mac),
            Some(ifindex),
        )
        .map_err(map_err("LOCAL_SLOTS"))?;
        let mut errors = Vec::new();
        match self.lookup_local_by_mac(old.vni, old.mac) {
            Ok(Some(i)) if i == ifindex => {
                if let Err(e) =
                    self.remove::<RawMacKey, u32>("LOCAL_BY_MAC", mac_key(old.vni, old.mac))
                {
                    errors.push(e);
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        match self.lookup_arp(old.vni, old.ip) {
            Ok(Some(m)) if m == old.mac => {
                if let Err(e) =
                    self.remove::<RawIpKey, RawMac>("IP_TO_MAC", ip_key(old.vni, old.ip))
                {
                    errors.push(e);
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        let r = self.lookup_local_flood(old.vni).and_then(|list| {
            let remaining: Vec<u32> = list.into_iter().filter(|i| *i != ifindex).collect();
            match local_flood_value(old.vni, &remaining)? {
                Some(v) => self
                    .hash::<u32, RawLocalFlood>("LOCAL_FLOOD")?
                    .insert(old.vni, v, 0)
                    .map_err(map_err("LOCAL_FLOOD")),
                None => self.remove::<u32, RawLocalFlood>("LOCAL_FLOOD", old.vni),
            }
        });
        if let Err(e) = r {
            errors.push(e);
        }
        if let Err(e) = self.remove::<u32, RawEndpoint>("LOCAL_EPS", ifindex) {
            errors.push(e);
        }
        collect(errors)
    }

    /// Removes a local endpoint: its link (unpinned, so the program detaches) and its map
    /// entries. Idempotent; reports every failed step.
    pub fn detach_endpoint(&mut self, host_ifindex: u32) -> Result<()> {
        let mut errors = Vec::new();
        let path = self.link_path(LXC, host_ifindex);
        if let Err(e) = unpin_link(&path) {
            errors.push(e);
        }
        match self.lookup_endpoint(host_ifindex) {
            Ok(Some(old)) => {
                if let Err(e) = self.remove_endpoint_entries(host_ifindex, old) {
                    errors.push(e);
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        collect(errors)
    }

    /// Programs a remote endpoint: frames to `(vni, mac)` are encapsulated to `vtep`, and ARP
    /// requests for `ip` are answered with `mac`. Replaces any previous entry of that MAC
    /// (including the ARP entry of its previous IP). Constant time: no map scans.
    pub fn set_remote(
        &mut self,
        vni: u32,
        mac: MacAddr,
        ip: Ipv4Addr,
        vtep: Ipv4Addr,
    ) -> Result<()> {
        validate_vni(vni)?;
        validate_mac(mac)?;
        validate_unicast_ip(ip, "remote endpoint")?;
        validate_unicast_ip(vtep, "VTEP")?;
        if let Some(ifindex) = self.lookup_local_by_mac(vni, mac)? {
            return Err(Error::Conflict(format!(
                "MAC {} on VNI {vni} is a local endpoint (interface {ifindex})",
                mac
            )));
        }
        if let Some(owner) = self.lookup_arp(vni, ip)?
            && owner != mac
            && self.lookup_local_by_mac(vni, owner)?.is_some()
        {
            return Err(Error::Conflict(format!(
                "IP {ip} on VNI {vni} belongs to local endpoint {}",
                owner
            )));
        }
        let previous = self.lookup_remote(vni, mac)?;
        self.hash::<RawMacKey, RawRemote>("REMOTE")?
            .insert(
                mac_key(vni, mac),
                RawRemote {
                    vtep: ip_host(vtep),
                    ip: ip_wire(ip),
                },
                0,
            )
            .map_err(map_err("REMOTE"))?;
        slots::put_mac(&mut self.slots.remote, mac_key(vni, mac), ip_host(vtep))
            .map_err(map_err("REMOTE_SLOTS"))?;
        if let Some(prev) = previous {
            let old_ip = ip_from_wire(prev.ip);
            if old_ip != ip && self.lookup_arp(vni, old_ip)? == Some(mac) {
                self.remove::<RawIpKey, RawMac>("IP_TO_MAC", ip_key(vni, old_ip))?;
            }
        }
        self.hash::<RawIpKey, RawMac>("IP_TO_MAC")?
            .insert(ip_key(vni, ip), RawMac { mac: mac.0, pad: 0 }, 0)
            .map_err(map_err("IP_TO_MAC"))
    }

    /// Removes a remote endpoint and its ARP entry. Idempotent; constant time.
    pub fn del_remote(&mut self, vni: u32, mac: MacAddr) -> Result<()> {
        validate_vni(vni)?;
        if self.lookup_local_by_mac(vni, mac)?.is_some() {
            return Err(Error::Conflict(format!(
                "MAC {} on VNI {vni} is a local endpoint; use detach_endpoint",
                mac
            )));
        }
        let Some(prev) = self.lookup_remote(vni, mac)? else {
            return Ok(());
        };
        slots::clear_mac(&mut self.slots.remote, mac_key(vni, mac), None)
            .map_err(map_err("REMOTE_SLOTS"))?;
        let mut errors = Vec::new();
        if let Err(e) = self.remove::<RawMacKey, RawRemote>("REMOTE", mac_key(vni, mac)) {
            errors.push(e);
        }
        let ip = ip_from_wire(prev.ip);
        match self.lookup_arp(vni, ip) {
            Ok(Some(m)) if m == mac => {
                if let Err(e) = self.remove::<RawIpKey, RawMac>("IP_TO_MAC", ip_key(vni, ip)) {
                    errors.push(e);
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        collect(errors)
    }

    /// Makes the slot arrays copies of the hash maps again: a previous agent may have died
    /// between a hash-map write and its slot. Slots that disagree are emptied, then every
    /// entry takes its slot if free.
    pub(crate) fn sync_slots(&mut self) -> Result<()> {
        let s = self.dump()?;
        let (ep, remote, local) = (
            &mut self.slots.ep,
            &mut self.slots.remote,
            &mut self.slots.local,
        );
        for (i, slot) in ep.occupied().map_err(map_err("EP_SLOTS"))? {
            if s.endpoints
                .get(&slot.ifindex)
                .map(|e| RawEndpoint::from(*e))
                != Some(slot.ep)
            {
                ep.put(i, slot, Default::default())
                    .map_err(map_err("EP_SLOTS"))?;
            }
        }
        for (i, slot) in remote.occupied().map_err(map_err("REMOTE_SLOTS"))? {
            let want = s
                .remotes
                .get(&(slot.key.vni, MacAddr(slot.key.mac)))
                .map(|r| ip_host(r.vtep));
            if want != Some(slot.value) {
                remote
                    .put(i, slot, Default::default())
                    .map_err(map_err("REMOTE_SLOTS"))?;
            }
        }
        for (i, slot) in local.occupied().map_err(map_err("LOCAL_SLOTS"))? {
            if s.local_by_mac.get(&(slot.key.vni, MacAddr(slot.key.mac))) != Some(&slot.value) {
                local
                    .put(i, slot, Default::default())
                    .map_err(map_err("LOCAL_SLOTS"))?;
            }
        }
        for (ifindex, info) in &s.endpoints {
            slots::put_ep(ep, *ifindex, RawEndpoint::from(*info)).map_err(map_err("EP_SLOTS"))?;
        }
        for ((vni, mac), r) in &s.remotes {
            slots::put_mac(remote, mac_key(*vni, *mac), ip_host(r.vtep))
                .map_err(map_err("REMOTE_SLOTS"))?;
        }
        for ((vni, mac), ifindex) in &s.local_by_mac {
            slots::put_mac(local, mac_key(*vni, *mac), *ifindex).map_err(map_err("LOCAL_SLOTS"))?;
        }
        Ok(())
    }

    fn get<K: aya::Pod, V: aya::Pod>(&self, name: &'static str, key: &K) -> Result<Option<V>> {
        let m: HashMap<&MapData, K, V> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match m.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(Error::Map {
                map: name,
                source: e,
            }),
        }
    }

    fn remove<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str, key: K) -> Result<()> {
        let mut m = self.hash::<K, V>(name)?;
        ignore_missing(m.remove(&key)).map_err(map_err(name))
    }

    fn lookup_local_by_mac(&self, vni: u32, mac: MacAddr) -> Result<Option<u32>> {
        self.get::<RawMacKey, u32>("LOCAL_BY_MAC", &mac_key(vni, mac))
    }

    fn lookup_remote(&self, vni: u32, mac: MacAddr) -> Result<Option<RawRemote>> {
        self.get::<RawMacKey, RawRemote>("REMOTE", &mac_key(vni, mac))
    }

    fn lookup_arp(&self, vni: u32, ip: Ipv4Addr) -> Result<Option<MacAddr>> {
        Ok(self
            .get::<RawIpKey, RawMac>("IP_TO_MAC", &ip_key(vni, ip))?
            .map(|m| MacAddr(m.mac)))
    }

    fn lookup_endpoint(&self, ifindex: u32) -> Result<Option<EndpointInfo>> {
        Ok(self
            .get::<u32, RawEndpoint>("LOCAL_EPS", &ifindex)?
            .map(EndpointInfo::from))
    }

    fn lookup_local_flood(&self, vni: u32) -> Result<Vec<u32>> {
        Ok(self
            .get::<u32, RawLocalFlood>("LOCAL_FLOOD", &vni)?
            .map(|v| local_list(&v))
            .unwrap_or_default())
    }

    /// Sets the VTEPs BUM frames of `vni` are replicated to (head-end replication);
    /// an empty list removes the entry. At most [`MAX_FLOOD_VTEPS`].
    pub fn set_flood(&mut self, vni: u32, vteps: &[Ipv4Addr]) -> Result<()> {
        validate_vni(vni)?;
        let value = flood_value(vni, vteps)?;
        let mut m = self.hash::<u32, RawFlood>("FLOOD")?;
        if value.count == 0 {
            ignore_missing(m.remove(&vni)).map_err(map_err("FLOOD"))
        } else {
            m.insert(vni, value, 0).map_err(map_err("FLOOD"))
        }
    }

    /// Reads every map (and the pinned links), for reconciliation.
    pub fn dump(&self) -> Result<EbpfState> {
        let mut s = EbpfState::default();
        let cfg: Array<&MapData, RawConfig> =
            Array::try_from(self.map("CONFIG")?).map_err(map_err("CONFIG"))?;
        s.vxlan_ifindex = cfg.get(&0, 0).map_err(map_err("CONFIG"))?.vxlan_ifindex;

        let eps: HashMap<&MapData, u32, RawEndpoint> =
            HashMap::try_from(self.map("LOCAL_EPS")?).map_err(map_err("LOCAL_EPS"))?;
        for kv in eps.iter() {
            let (k, v) = kv.map_err(map_err("LOCAL_EPS"))?;
            s.endpoints.insert(k, v.into());
        }
        let lbm: HashMap<&MapData, RawMacKey, u32> =
            HashMap::try_from(self.map("LOCAL_BY_MAC")?).map_err(map_err("LOCAL_BY_MAC"))?;
        for kv in lbm.iter() {
            let (k, v) = kv.map_err(map_err("LOCAL_BY_MAC"))?;
            s.local_by_mac.insert((k.vni, MacAddr(k.mac)), v);
        }
        let rem: HashMap<&MapData, RawMacKey, RawRemote> =
            HashMap::try_from(self.map("REMOTE")?).map_err(map_err("REMOTE"))?;
        for kv in rem.iter() {
            let (k, v) = kv.map_err(map_err("REMOTE"))?;
            s.remotes.insert(
                (k.vni, MacAddr(k.mac)),
                RemoteInfo {
                    vtep: Ipv4Addr::from(v.vtep),
                    ip: ip_from_wire(v.ip),
                },
            );
        }
        let arp: HashMap<&MapData, RawIpKey, RawMac> =
            HashMap::try_from(self.map("IP_TO_MAC")?).map_err(map_err("IP_TO_MAC"))?;
        for kv in arp.iter() {
            let (k, v) = kv.map_err(map_err("IP_TO_MAC"))?;
            s.arp.insert((k.vni, ip_from_wire(k.ip)), MacAddr(v.mac));
        }
        let fl: HashMap<&MapData, u32, RawFlood> =
            HashMap::try_from(self.map("FLOOD")?).map_err(map_err("FLOOD"))?;
        for kv in fl.iter() {
            let (k, v) = kv.map_err(map_err("FLOOD"))?;
            s.flood.insert(k, flood_list(&v));
        }
        let lf: HashMap<&MapData, u32, RawLocalFlood> =
            HashMap::try_from(self.map("LOCAL_FLOOD")?).map_err(map_err("LOCAL_FLOOD"))?;
        for kv in lf.iter() {
            let (k, v) = kv.map_err(map_err("LOCAL_FLOOD"))?;
            s.local_flood.insert(k, local_list(&v));
        }
        s.attached_links = self
            .pinned_links()?
            .into_iter()
            .filter(|(k, _, _)| *k == LinkKind::Lxc)
            .map(|(_, i, _)| i)
            .collect();
        Ok(s)
    }

    /// Counter totals over all CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let arr: Array<&MapData, u64> =
            Array::try_from(self.map("COUNTERS")?).map_err(map_err("COUNTERS"))?;
        let mut totals = vec![0u64; counters::NAMES.len()];
        for (i, v) in arr.iter().enumerate() {
            let v = v.map_err(map_err("COUNTERS"))?;
            if let Some(t) = totals.get_mut(i % COUNTER_ROW as usize) {
                *t += v;
            }
        }
        Ok(Counters::from_slots(&totals))
    }

    pub(crate) fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.bpf.map(name).ok_or(Error::Map {
            map: name,
            source: MapError::InvalidName {
                name: name.to_string(),
            },
        })
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        let map = self.bpf.map_mut(name).ok_or(Error::Map {
            map: name,
            source: MapError::InvalidName {
                name: name.to_string(),
            },
        })?;
        HashMap::try_from(map).map_err(map_err(name))
    }
}
