//! ovl-gateway: the gateway bridge of overlay-agent, the equivalent of Docker's
//! `docker_gwbridge`.
//!
//! Every container on a non-internal overlay also gets an interface on a per-host bridge
//! (default `ovl_gwbridge`), an address from the gateway subnet and its default route through the
//! bridge. Traffic leaving the host from that subnet is masqueraded, containers cannot talk to
//! each other across the bridge (isolated bridge ports plus an nftables drop), and published
//! ports are DNATed from every host address to the container's gateway address.
//!
//! Layout: pure logic ([`subnet`], [`ruleset`], [`state`]) computes what should exist; thin
//! layers (`sys`, `link`) apply it through netlink and one `nft -f -` transaction per change.
//!
//! Why `nft -f -` with rendered text (and not the `nftables` JSON crate or raw nf_tables
//! netlink): the text is what operators read in `nft list table inet overlay_agent`, so the
//! rendering is reviewable and unit-tested as plain strings; one `nft -f` run is a single
//! kernel transaction, so the whole table is replaced atomically; and drift detection compares
//! `nft list table` output with what the kernel printed right after our last apply, which is
//! exact regardless of how nft normalises the syntax. The cost is one short `nft` process per
//! change or reconcile check, which is negligible next to container start-up.
//!
//! Docker coexistence: see [`docker`] (the agent keeps Docker's `DOCKER-USER` exception).
//!
//! Known limits (same as Docker without its userland proxy): published ports are reachable on
//! the host's addresses from other hosts, from outside and from the host itself, but not via
//! `127.0.0.1` and not from containers on the same gateway bridge (hairpin); IPv4 only.

pub mod docker;
pub mod error;
mod link;
pub mod ruleset;
pub mod state;
pub mod subnet;
mod sys;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use tokio::sync::Mutex as AsyncMutex;

pub use crate::error::{Error, Result};
pub use crate::ruleset::{DnsGuard, PortMap, Proto};
use crate::state::{EndpointRecord, State};
pub use crate::subnet::{choose_subnet, default_pool, validate_gw_subnet};
use ovl_netlink::Netlink;

/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "ovl_gwbridge";
/// The interface that holds the DNS address of a [`DnsGuard`] (a bridge without ports).
pub const DNS_IFACE: &str = "ovl_dns";

/// Configuration of the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Bridge name (default [`DEFAULT_BRIDGE`]).
    pub bridge: String,
    /// Explicit gateway subnet (`--gw-subnet`); `None` chooses one automatically and keeps it.
    pub subnet: Option<Ipv4Network>,
    /// Where `gateway.json` (subnet, allocations, published ports) lives.
    pub state_dir: PathBuf,
    /// The host network namespace (a path like `/run/netns/h1`); `None` = the agent's own.
    pub host_netns: Option<PathBuf>,
    /// The agent's DNS address for Docker containers and who may reach it: held by the
    /// interface [`DNS_IFACE`], guarded by the `dns_guard` chain of our table.
    pub dns: Option<DnsGuard>,
    /// The VXLAN UDP port to guard (see [`Gateway::admit`]); `None`: no admission.
    pub vxlan_port: Option<u16>,
    /// The VXLAN port of encrypted networks: admitted only from the WireGuard interface
    /// [`ovl_model::WG_IFNAME`] (what arrives there was decrypted and authenticated), never
    /// from the underlay. Guarded together with [`GatewayConfig::vxlan_port`].
    pub encrypted_port: Option<u16>,
    /// TCP ports the agent listens on in the host (metrics): closed to containers.
    pub agent_tcp: Vec<u16>,
}

/// Bridges of containers on a host besides ours: Docker's default bridge, its gateway bridge
/// and its user-defined bridges. Their traffic never goes to a VXLAN port.
pub const CONTAINER_BRIDGES: &[&str] = &["docker0", "docker_gwbridge", "br-*"];

impl GatewayConfig {
    /// Defaults: bridge `ovl_gwbridge`, automatic subnet, the agent's own namespace.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        GatewayConfig {
            bridge: DEFAULT_BRIDGE.to_string(),
            subnet: None,
            state_dir: state_dir.into(),
            host_netns: None,
            dns: None,
            vxlan_port: None,
            encrypted_port: None,
            agent_tcp: Vec::new(),
        }
    }
}

/// The gateway bridge as programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayInfo {
    /// Bridge name.
    pub bridge: String,
    /// Gateway subnet.
    pub subnet: Ipv4Network,
    /// The bridge's address (first host address of the subnet), the containers' default gateway.
    pub address: Ipv4Addr,
}

/// A container's interface on the gateway bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayEndpoint {
    /// Interface name inside the container (`ethN`).
    pub ifname: String,
    /// Address with the gateway subnet's prefix length.
    pub ip: Ipv4Network,
    /// MAC address (`02:42:` + the IPv4 octets).
    pub mac: String,
}

#[derive(Default)]
struct Applied {
    /// `nft list table` output right after our last successful apply.
    listing: Option<String>,
    /// What the DNS guard's counter held when this process replaced the table (each apply
    /// starts the kernel's counter again).
    dns_dropped_before: u64,
    /// The same for the VXLAN admission counter.
    vxlan_refused_before: u64,
    /// Bridge, forwarding and ruleset have been set up by this process.
    ensured: bool,
}

/// The gateway of one host. All mutating operations are serialised internally.
pub struct Gateway {
    cfg: GatewayConfig,
    op: AsyncMutex<Applied>,
    snapshot: std::sync::Mutex<State>,
}

impl Gateway {
    /// Loads persisted state from `cfg.state_dir` (nothing is touched in the kernel yet).
    /// Fails on an invalid bridge name or an unreadable state file.
    pub fn new(cfg: GatewayConfig) -> Result<Gateway> {
        if cfg.bridge.is_empty()
            || cfg.bridge.len() > 15
            || !cfg
                .bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(Error::InvalidBridge(cfg.bridge.clone()));
        }
        if let Some(g) = &cfg.dns {
            for p in g.allow.iter().chain(&g.deny) {
                ruleset::check_ifname_pattern(p)?;
            }
        }
        let state = State::load(&cfg.state_dir)?;
        Ok(Gateway {
            cfg,
            op: AsyncMutex::new(Applied::default()),
            snapshot: std::sync::Mutex::new(state),
        })
    }

    fn ns(&self) -> Option<&Path> {
        self.cfg.host_netns.as_deref()
    }

    fn current(&self) -> State {
        self.snapshot.lock().expect("state lock").clone()
    }

    fn commit(&self, st: State) -> Result<()> {
        st.save(&self.cfg.state_dir)?;
        *self.snapshot.lock().expect("state lock") = st;
        Ok(())
    }

    /// The gateway as last set up, `None` before the first [`Gateway::ensure`] ever (the subnet
    /// survives restarts through the state file).
    pub fn info(&self) -> Option<GatewayInfo> {
        let st = self.current();
        st.subnet.map(|s| self.info_for(s))
    }

    fn info_for(&self, subnet: Ipv4Network) -> GatewayInfo {
        GatewayInfo {
            bridge: self.cfg.bridge.clone(),
            subnet,
            address: subnet::bridge_address(subnet),
        }
    }

    /// Every published port with its endpoint id, sorted by endpoint then host port.
    pub fn published(&self) -> Vec<(String, PortMap)> {
        let mut v: Vec<(String, PortMap)> = self
            .current()
            .published()
            .into_iter()
            .map(|p| (p.endpoint, p.map))
            .collect();
        v.sort_by_key(|(e, m)| (e.clone(), m.proto, m.host_port));
        v
    }

    /// Every attached endpoint.
    pub fn endpoints(&self) -> Vec<(String, GatewayEndpoint)> {
        let st = self.current();
        let Some(subnet) = st.subnet else {
            return Vec::new();
        };
        st.endpoints
            .iter()
            .map(|(id, r)| (id.clone(), endpoint_of(r, subnet)))
            .collect()
    }

    /// The desired content of our nftables table (for `overlayctl inspect`), if set up.
    pub fn desired_ruleset(&self) -> Option<String> {
        let rules = self.rules(&self.current());
        (!rules.is_empty()).then(|| ruleset::render_table(&rules))
    }

    /// What our table holds for `st`: the gateway's chains once it has a subnet, the DNS
    /// guard when configured.
    fn rules(&self, st: &State) -> ruleset::Ruleset {
        let admission = self
            .cfg
            .vxlan_port
            .zip(st.vteps.as_ref())
            .map(|(port, vteps)| {
                let mut containers: Vec<String> =
                    CONTAINER_BRIDGES.iter().map(|b| b.to_string()).collect();
                containers.push(self.cfg.bridge.clone());
                if let Some(d) = &self.cfg.dns {
                    containers.extend(d.allow.iter().cloned());
                }
                ruleset::Admission {
                    port,
                    encrypted_port: self.cfg.encrypted_port,
                    vteps: vteps.iter().copied().collect(),
                    containers,
                    agent_tcp: self.cfg.agent_tcp.clone(),
                }
            });
        ruleset::Ruleset {
            gateway: st.spec(&self.cfg.bridge),
            dns: self.cfg.dns.clone(),
            admission,
        }
    }

    /// Admits VXLAN from `vteps` only (the cluster's registered hosts) and keeps containers'
    /// traffic away from every VXLAN port; a no-op without [`GatewayConfig::vxlan_port`].
    /// The list is kept in the state file, so an agent restarted while the KV is down keeps
    /// admitting the hosts it last knew. Returns whether the list changed.
    pub async fn admit(&self, vteps: std::collections::BTreeSet<Ipv4Addr>) -> Result<bool> {
        if self.cfg.vxlan_port.is_none() {
            return Ok(false);
        }
        let mut applied = self.op.lock().await;
        let old = self.current();
        if old.vteps.as_ref() == Some(&vteps) && applied.listing.is_some() {
            return Ok(false);
        }
        let mut st = old.clone();
        st.vteps = Some(vteps);
        self.apply_and_commit(&mut applied, st, &old).await?;
        Ok(true)
    }

    /// VXLAN packets refused since this process started (unregistered senders, containers);
    /// `None` before [`Gateway::admit`] was ever called.
    pub async fn vxlan_refused(&self) -> Result<Option<u64>> {
        if self.cfg.vxlan_port.is_none() || self.current().vteps.is_none() {
            return Ok(None);
        }
        let applied = self.op.lock().await;
        Ok(Some(
            applied.vxlan_refused_before + self.counter(ruleset::VXLAN_REFUSED).await?,
        ))
    }

    /// Sets up the DNS address of [`GatewayConfig::dns`]: the interface [`DNS_IFACE`]
    /// holding it (a /32, up) and the guard in our table. Idempotent; a no-op without a DNS
    /// guard. The bridge is not created by this.
    pub async fn ensure_dns(&self) -> Result<()> {
        let Some(guard) = &self.cfg.dns else {
            return Ok(());
        };
        let mut applied = self.op.lock().await;
        let nl = Netlink::open(self.ns()).await?;
        link::ensure_address_holder(&nl, DNS_IFACE, guard.addr).await?;
        let st = self.current();
        self.apply(&mut applied, &st).await
    }

    /// Packets the DNS guard dropped since this process started (kept across re-applies of
    /// the table; lost only when someone else deletes the table). `None` without a guard.
    pub async fn dns_dropped(&self) -> Result<Option<u64>> {
        if self.cfg.dns.is_none() {
            return Ok(None);
        }
        let applied = self.op.lock().await;
        Ok(Some(
            applied.dns_dropped_before + self.counter(ruleset::DNS_DROPPED).await?,
        ))
    }

    async fn counter(&self, name: &str) -> Result<u64> {
        let out = sys::nft(
            self.ns(),
            &["-j", "list", "counter", "inet", ruleset::TABLE, name],
            "",
            &format!("reading the counter {name}"),
        )
        .await?;
        ruleset::parse_counter(&out)
    }

    /// The host's IPv4 routes and address networks (default routes and our own bridge left
    /// out): the `in_use` argument of [`validate_gw_subnet`] / [`choose_subnet`].
    pub async fn host_networks(&self) -> Result<Vec<Ipv4Network>> {
        let nl = Netlink::open(self.ns()).await?;
        let bridge = link::link_index(&nl, &self.cfg.bridge).await?;
        link::host_in_use(&nl, bridge).await
    }

    /// [`Gateway::ensure_with`] without overlay subnets to avoid.
    pub async fn ensure(&self) -> Result<GatewayInfo> {
        self.ensure_with(&[]).await
    }

    /// Creates (or adopts) the bridge in the host namespace with the first host address of the
    /// subnet, enables IPv4 forwarding and applies the ruleset. The subnet is the configured
    /// one, else the persisted one, else the first free one of [`default_pool`] avoiding host
    /// routes/addresses and `overlay_subnets`; it is persisted so later calls (and restarts)
    /// return the same. Bad input (overlapping subnet, ...) fails before anything changes.
    pub async fn ensure_with(&self, overlay_subnets: &[Ipv4Network]) -> Result<GatewayInfo> {
        let mut applied = self.op.lock().await;
        self.ensure_locked(&mut applied, overlay_subnets).await
    }

    async fn ensure_locked(
        &self,
        applied: &mut Applied,
        overlays: &[Ipv4Network],
    ) -> Result<GatewayInfo> {
        let nl = Netlink::open(self.ns()).await?;
        let h = &nl;
        let mut st = self.current();
        let bridge_idx = link::link_index(h, &self.cfg.bridge).await?;
        let in_use = link::host_in_use(h, bridge_idx).await?;
        let subnet = match (self.cfg.subnet, st.subnet) {
            (Some(want), persisted) => {
                subnet::check_subnet(want, &in_use, overlays)?;
                if let Some(p) = persisted
                    && p != want
                    && !st.endpoints.is_empty()
                {
                    return Err(Error::SubnetInUse {
                        persisted: p,
                        requested: want,
                        endpoints: st.endpoints.len(),
                    });
                }
                want
            }
            (None, Some(p)) => {
                if let Some(o) = overlays.iter().find(|o| subnet::overlaps(p, **o)) {
                    return Err(Error::OverlapsOverlay {
                        subnet: p,
                        overlay: *o,
                    });
                }
                // Stability wins over re-choosing: renumbering would break live containers.
                if let Err(e) = subnet::check_subnet(p, &in_use, &[]) {
                    tracing::warn!(error = %e, "keeping persisted gateway subnet {p}");
                }
                p
            }
            (None, None) => {
                choose_subnet(&default_pool(), &in_use, overlays).ok_or(Error::NoFreeSubnet)?
            }
        };
        if st.subnet != Some(subnet) {
            st.endpoints.clear();
        }
        st.subnet = Some(subnet);
        st.version = 1;
        let addr = Ipv4Network::new(subnet::bridge_address(subnet), subnet.prefix())
            .expect("prefix of a valid subnet");
        link::ensure_bridge(h, &self.cfg.bridge, addr).await?;
        sys::write_sysctl(self.ns(), "net.ipv4.ip_forward", "1").await?;
        self.apply(applied, &st).await?;
        self.commit(st)?;
        applied.ensured = true;
        Ok(self.info_for(subnet))
    }

    /// Replaces our table with the ruleset for `st` in one transaction and remembers the
    /// kernel's listing of it for drift detection.
    async fn apply(&self, applied: &mut Applied, st: &State) -> Result<()> {
        let rules = self.rules(st);
        if rules.is_empty() {
            return Ok(());
        }
        // Each apply starts the kernel's counters again: keep what they held.
        if rules.dns.is_some()
            && applied.listing.is_some()
            && let Ok(n) = self.counter(ruleset::DNS_DROPPED).await
        {
            applied.dns_dropped_before += n;
        }
        if rules.admission.is_some()
            && applied.listing.is_some()
            && let Ok(n) = self.counter(ruleset::VXLAN_REFUSED).await
        {
            applied.vxlan_refused_before += n;
        }
        sys::nft(
            self.ns(),
            &["-f", "-"],
            &ruleset::render_batch(&rules),
            "applying ruleset",
        )
        .await?;
        applied.listing = Some(self.listing().await?);
        Ok(())
    }

    /// Applies `st`, then saves it; when the save fails, the kernel gets `old` back so kernel
    /// and state file stay in agreement.
    async fn apply_and_commit(&self, applied: &mut Applied, st: State, old: &State) -> Result<()> {
        self.apply(applied, &st).await?;
        if let Err(e) = self.commit(st) {
            if let Err(re) = self.apply(applied, old).await {
                tracing::error!(error = %re, "restoring ruleset after failed state write");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn listing(&self) -> Result<String> {
        // Stateless: the DNS guard's counter changes all the time and is not drift.
        sys::nft(
            self.ns(),
            &["-s", "list", "table", "inet", ruleset::TABLE],
            "",
            "listing table",
        )
        .await
    }

    /// Connects the container in `container_netns` to the bridge: a veth pair whose container
    /// end becomes the next free `ethN` with an address from the gateway subnet and the default
    /// route via the bridge; the host end joins the bridge as an isolated port. Idempotent:
    /// attaching an attached endpoint returns the same interface; if its veth vanished it is
    /// recreated with the same address.
    pub async fn attach(
        &self,
        endpoint_id: &str,
        container_netns: &Path,
    ) -> Result<GatewayEndpoint> {
        state::validate_endpoint_id(endpoint_id)?;
        let mut applied = self.op.lock().await;
        if !applied.ensured {
            self.ensure_locked(&mut applied, &[]).await?;
        }
        let mut st = self.current();
        let subnet = st.subnet.expect("ensured above");
        let gw = subnet::bridge_address(subnet);
        let nl = Netlink::open(self.ns()).await?;
        let h = &nl;
        let bridge_idx = link::link_index(h, &self.cfg.bridge)
            .await?
            .ok_or_else(|| Error::BridgeMissing {
                bridge: self.cfg.bridge.clone(),
                address: gw,
            })?;
        let host_if = state::host_ifname(endpoint_id);
        let peer_tmp = state::peer_tmp_ifname(endpoint_id);

        if let Some(rec) = st.endpoints.get(endpoint_id)
            && let Some(idx) = link::link_index(h, &rec.host_ifname).await?
            && link::controller_of(h, idx).await? == Some(bridge_idx)
        {
            return Ok(endpoint_of(rec, subnet));
        }

        // Leftovers of an interrupted attempt would make the veth creation fail.
        link::delete_link(h, &host_if).await?;
        link::delete_link(h, &peer_tmp).await?;

        let ip = match st.endpoints.get(endpoint_id) {
            Some(rec) => rec.ip,
            None => st.allocate(subnet)?,
        };
        let mac = state::mac_for(ip);
        let addr = Ipv4Network::new(ip, subnet.prefix()).expect("prefix of a valid subnet");

        let res = self
            .plumb(
                h,
                bridge_idx,
                &host_if,
                &peer_tmp,
                container_netns,
                mac,
                addr,
                gw,
            )
            .await;
        let ifname = match res {
            Ok(n) => n,
            Err(e) => {
                // Deleting the host end removes the peer wherever it is.
                if let Err(ce) = link::delete_link(h, &host_if).await {
                    tracing::warn!(error = %ce, "cleaning up {host_if} after failed attach");
                }
                return Err(e);
            }
        };
        let ports = st
            .endpoints
            .get(endpoint_id)
            .map(|r| r.ports.clone())
            .unwrap_or_default();
        let rec = EndpointRecord {
            ip,
            mac: state::mac_string(mac),
            ifname,
            host_ifname: host_if.clone(),
            ports,
        };
        let out = endpoint_of(&rec, subnet);
        st.endpoints.insert(endpoint_id.to_string(), rec);
        if let Err(e) = self.commit(st) {
            // Nothing half-made: the pair goes too; a failure of that is logged with the cause.
            if let Err(ce) = link::delete_link(h, &host_if).await {
                tracing::warn!(error = %ce, cause = %e, "cleaning up {host_if} after a failed state write");
            }
            return Err(e);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn plumb(
        &self,
        h: &Netlink,
        bridge_idx: u32,
        host_if: &str,
        peer_tmp: &str,
        container_netns: &Path,
        mac: [u8; 6],
        addr: Ipv4Network,
        gw: Ipv4Addr,
    ) -> Result<String> {
        link::create_veth_into(h, host_if, peer_tmp, container_netns).await?;
        let host_idx = link::link_index(h, host_if)
            .await?
            .ok_or_else(|| Error::LinkVanished(host_if.to_string()))?;
        link::enslave_isolated(h, host_idx, bridge_idx).await?;
        let cnl = Netlink::open(Some(container_netns)).await?;
        let names = link::link_names(&cnl).await?;
        let ifname = state::next_ethn(&names)
            .ok_or_else(|| Error::NoFreeIfname(container_netns.display().to_string()))?;
        link::configure_container_if(&cnl, peer_tmp, &ifname, mac, addr, gw).await?;
        Ok(ifname)
    }

    /// Disconnects an endpoint: removes its published ports, its veth pair and releases its
    /// address. Detaching an unknown endpoint is a no-op.
    pub async fn detach(&self, endpoint_id: &str) -> Result<()> {
        let mut applied = self.op.lock().await;
        let mut st = self.current();
        let Some(rec) = st.endpoints.remove(endpoint_id) else {
            return Ok(());
        };
        // Link first: if it fails nothing else changed, and a retry finds the rest to do.
        let nl = Netlink::open(self.ns()).await?;
        link::delete_link(&nl, &rec.host_ifname).await?;
        if !rec.ports.is_empty() {
            self.apply(&mut applied, &st).await?;
        }
        self.commit(st)
    }

    /// Publishes `ports` of an attached endpoint: each `host_port` on every host address is
    /// DNATed to `container_port` on the endpoint's gateway address. All-or-nothing: a host
    /// port already published (by any endpoint, unless it is this exact mapping of this
    /// endpoint) or a malformed mapping refuses the whole request and changes nothing.
    pub async fn publish(&self, endpoint_id: &str, ports: &[PortMap]) -> Result<()> {
        let mut applied = self.op.lock().await;
        let mut st = self.current();
        if !st.endpoints.contains_key(endpoint_id) {
            return Err(Error::NotAttached(endpoint_id.to_string()));
        }
        let fresh = ruleset::check_publish(endpoint_id, ports, &st.published())?;
        if fresh.is_empty() {
            return Ok(());
        }
        let old = st.clone();
        st.endpoints
            .get_mut(endpoint_id)
            .expect("checked above")
            .ports
            .extend(fresh);
        self.apply_and_commit(&mut applied, st, &old).await
    }

    /// Removes every published port of an endpoint (no-op when it has none or is unknown).
    pub async fn unpublish(&self, endpoint_id: &str) -> Result<()> {
        let mut applied = self.op.lock().await;
        let mut st = self.current();
        let Some(rec) = st.endpoints.get_mut(endpoint_id) else {
            return Ok(());
        };
        if rec.ports.is_empty() {
            return Ok(());
        }
        rec.ports.clear();
        let old = self.current();
        self.apply_and_commit(&mut applied, st, &old).await
    }

    /// Makes the kernel match the state again: recreates the bridge (and re-attaches known
    /// endpoint ports) if it vanished, re-enables forwarding, and re-applies the ruleset when
    /// our table is missing or differs from what we applied (e.g. after `nft flush ruleset`).
    /// Cheap when nothing changed: a link lookup, an address dump, one sysctl read and one
    /// `nft list table`. Returns true when something had to be repaired. Does nothing before
    /// the first [`Gateway::ensure`].
    pub async fn reconcile(&self) -> Result<bool> {
        let mut applied = self.op.lock().await;
        let st = self.current();
        if st.subnet.is_none() && self.cfg.dns.is_none() && st.vteps.is_none() {
            return Ok(false);
        }
        let mut repaired = false;
        let nl = Netlink::open(self.ns()).await?;
        let h = &nl;
        if let Some(subnet) = st.subnet {
            repaired |= self.repair_bridge(h, &st, subnet).await?;
        }
        if let Some(guard) = &self.cfg.dns {
            repaired |= link::ensure_address_holder(h, DNS_IFACE, guard.addr).await?;
        }
        let current = self.listing().await.ok();
        if current.is_none() || current != applied.listing {
            tracing::info!("gateway ruleset drifted; re-applying");
            self.apply(&mut applied, &st).await?;
            repaired = true;
        }
        if st.subnet.is_some() {
            applied.ensured = true;
        }
        Ok(repaired)
    }

    /// The bridge, its ports and forwarding as `st` has them; true when something was redone.
    async fn repair_bridge(&self, h: &Netlink, st: &State, subnet: Ipv4Network) -> Result<bool> {
        let mut repaired = false;
        let addr = Ipv4Network::new(subnet::bridge_address(subnet), subnet.prefix())
            .expect("prefix of a valid subnet");
        let bridge_ok = match link::link_index(h, &self.cfg.bridge).await? {
            Some(i) => link::link_ipv4(h, i).await?.contains(&addr),
            None => false,
        };
        if !bridge_ok {
            repaired = true;
        }
        // Also sets it up if someone set it down; idempotent.
        let bridge_idx = link::ensure_bridge(h, &self.cfg.bridge, addr).await?;
        for rec in st.endpoints.values() {
            if let Some(idx) = link::link_index(h, &rec.host_ifname).await?
                && (link::controller_of(h, idx).await? != Some(bridge_idx)
                    || !link::is_isolated(h, idx).await?)
            {
                link::enslave_isolated(h, idx, bridge_idx).await?;
                repaired = true;
            }
        }
        let fwd = sys::in_netns(self.ns(), || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .map_err(|e| Error::io("reading ip_forward", e))
        })
        .await?;
        if fwd.trim() != "1" {
            sys::write_sysctl(self.ns(), "net.ipv4.ip_forward", "1").await?;
            repaired = true;
        }
        Ok(repaired)
    }

    /// Removes everything this gateway created: our nftables table, every endpoint veth, the
    /// bridge, the DNS address's interface and the state file. Keeps going after failures and returns every error (empty =
    /// clean). IPv4 forwarding is left on, since other users of the host may rely on it.
    pub async fn teardown(&self) -> Vec<Error> {
        let mut applied = self.op.lock().await;
        let mut errors = Vec::new();
        let st = self.current();
        if let Err(e) = sys::nft(
            self.ns(),
            &["-f", "-"],
            &ruleset::render_delete(),
            "deleting table",
        )
        .await
        {
            errors.push(e);
        }
        match Netlink::open(self.ns()).await {
            Ok(nl) => {
                for rec in st.endpoints.values() {
                    if let Err(e) = link::delete_link(&nl, &rec.host_ifname).await {
                        errors.push(e);
                    }
                }
                if let Err(e) = link::delete_link(&nl, &self.cfg.bridge).await {
                    errors.push(e);
                }
                if self.cfg.dns.is_some()
                    && let Err(e) = link::delete_link(&nl, DNS_IFACE).await
                {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e.into()),
        }
        let path = self.cfg.state_dir.join(state::STATE_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(Error::io(format!("removing {}", path.display()), e)),
        }
        *self.snapshot.lock().expect("state lock") = State {
            version: 1,
            ..State::default()
        };
        *applied = Applied::default();
        errors
    }
}

fn endpoint_of(rec: &EndpointRecord, subnet: Ipv4Network) -> GatewayEndpoint {
    GatewayEndpoint {
        ifname: rec.ifname.clone(),
        ip: Ipv4Network::new(rec.ip, subnet.prefix()).expect("prefix of a valid subnet"),
        mac: rec.mac.clone(),
    }
}
