//! The real tunnel: WireGuard in the agent's network namespace (the host's): the kernel's
//! where the host has it, else `ovl-wg`'s userspace device on a TUN; the policy rules that
//! route the encrypted networks' VXLAN port into it, and one host route per peer in their
//! table.
//!
//! The key pair lives in `<state-dir>/wg.key` (0600), made on first start. Keys an operator
//! revoked (removed from the KV) are listed in `<state-dir>/wg-revoked.json`, so a restart
//! does not publish them again; `keys rotate` makes a new one.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use ipnetwork::Ipv4Network;
use ovl_core::WgRecord;
use ovl_model::WG_IFNAME;
use ovl_netlink::{Netlink, PortRule};
use ovl_wg::{KeyPair, PublicKey, Userspace};

use super::{PeerState, Tunnel, TunnelError, TunnelPlan, TunnelStatus};

/// Routing table of the encrypted networks' VXLAN.
pub const TABLE: u32 = 4790;
/// Priority of the rule that selects it (before the main table, 32766).
pub const RULE_PRIORITY: u32 = 4790;

/// Which WireGuard runs the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The kernel module, configured over netlink.
    Kernel,
    /// `ovl-wg`'s userspace device in the agent.
    Userspace,
}

impl Kind {
    /// `kernel` or `userspace`, as host records and status say.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::Userspace => "userspace",
        }
    }
}

/// The device of either kind.
enum Wg {
    Kernel(ovl_wg::Kernel),
    User(Userspace),
}

impl Wg {
    /// `vxlan_port`: what the tunnel carries; the userspace device may merge its TCP.
    async fn start(
        kind: Kind,
        port: u16,
        vxlan_port: u16,
        mtu: u32,
        key: KeyPair,
    ) -> Result<Wg, TunnelError> {
        Ok(match kind {
            Kind::Kernel => Wg::Kernel(ovl_wg::Kernel::start(WG_IFNAME, port, mtu, key).await?),
            Kind::Userspace => {
                let dev = Userspace::start(WG_IFNAME, port, mtu, key).await?;
                dev.merge_vxlan_port(Some(vxlan_port));
                Wg::User(dev)
            }
        })
    }

    async fn set_peers(&self, peers: Vec<ovl_wg::Peer>) -> Result<(), TunnelError> {
        match self {
            Wg::Kernel(k) => k.set_peers(&peers).await?,
            Wg::User(u) => u.set_peers(peers),
        }
        Ok(())
    }

    async fn set_key(&self, key: KeyPair) -> Result<(), TunnelError> {
        match self {
            Wg::Kernel(k) => k.set_key(key).await?,
            Wg::User(u) => u.set_key(key),
        }
        Ok(())
    }

    async fn stats(&self) -> Vec<ovl_wg::PeerStats> {
        match self {
            Wg::Kernel(k) => k.stats().await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "reading the kernel WireGuard's peers");
                Vec::new()
            }),
            Wg::User(u) => u.stats(),
        }
    }

    async fn shutdown(self) -> Result<(), TunnelError> {
        match self {
            Wg::Kernel(k) => k.shutdown().await?,
            Wg::User(u) => u.shutdown().await?,
        }
        Ok(())
    }
}

/// Userspace WireGuard for encrypted networks.
pub struct WireGuard {
    key_path: PathBuf,
    revoked_path: PathBuf,
    port: u16,
    kind: Kind,
    /// Into the tunnel: the VXLAN of encrypted networks (destination port), and for the
    /// reverse-path check of what comes out of it (the kernel looks up the reply's flow,
    /// source port = that port), the same table: so decrypted VXLAN passes even strict
    /// `rp_filter`, and the device needs no address.
    rules: [PortRule; 2],
    key: Mutex<KeyPair>,
    revoked: Mutex<BTreeSet<String>>,
    dev: tokio::sync::Mutex<Option<Device>>,
    /// What the last apply left: the device up, its peers, its error. The rest of the
    /// status (kind, key, port, revoked) is read from the fields it comes from.
    applied: Mutex<Applied>,
}

#[derive(Default)]
struct Applied {
    up: bool,
    peers: Vec<PeerState>,
    error: Option<String>,
    offload: Option<String>,
}

/// The device while it exists, the plan it was given and its peers as last read.
struct Device {
    wg: Wg,
    plan: Option<TunnelPlan>,
    stats: Vec<ovl_wg::PeerStats>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TunnelError {
    let context = context.into();
    move |source| TunnelError::Io { context, source }
}

impl WireGuard {
    /// Loads (or makes) the key pair in `state_dir`; WireGuard of `kind` on UDP `port`,
    /// carrying the VXLAN of UDP port `vxlan_port`. The device is made by the first
    /// [`Tunnel::apply`] with a plan.
    pub fn open(
        state_dir: &Path,
        port: u16,
        vxlan_port: u16,
        kind: Kind,
    ) -> Result<Self, TunnelError> {
        let key_path = state_dir.join("wg.key");
        let revoked_path = state_dir.join("wg-revoked.json");
        let key = ovl_wg::load_or_create(&key_path)?;
        let revoked: BTreeSet<String> = match std::fs::read(&revoked_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| TunnelError::Io {
                context: format!("reading {}", revoked_path.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io(format!("reading {}", revoked_path.display()))(e)),
        };
        Ok(WireGuard {
            key_path,
            revoked_path,
            port,
            kind,
            rules: [false, true].map(|source| PortRule {
                priority: RULE_PRIORITY,
                port: vxlan_port,
                source,
                table: TABLE,
            }),
            key: Mutex::new(key),
            revoked: Mutex::new(revoked),
            dev: tokio::sync::Mutex::new(None),
            applied: Mutex::default(),
        })
    }

    fn public(&self) -> String {
        self.key.lock().expect("key lock").public().to_string()
    }

    fn is_revoked(&self) -> bool {
        self.revoked
            .lock()
            .expect("revoked lock")
            .contains(&self.public())
    }

    /// The routing for `plan`: the rule, and exactly one host route per peer in its table.
    async fn route(&self, nl: &Netlink, plan: &TunnelPlan) -> Result<(), TunnelError> {
        let have = nl.port_rules_v4().await?;
        for rule in self.rules {
            if !have.contains(&rule) {
                nl.add_port_rule(rule).await?;
            }
        }
        let dev = nl
            .link_by_name(WG_IFNAME)
            .await?
            .ok_or_else(|| TunnelError::Io {
                context: format!("{WG_IFNAME} vanished"),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
        let want: BTreeSet<Ipv4Network> = plan
            .peers
            .iter()
            .map(|p| Ipv4Network::from(p.vtep))
            .collect();
        let have = nl.table_routes_v4(TABLE).await?;
        for (dst, oif) in &have {
            if !want.contains(dst) || *oif != Some(dev.index) {
                nl.del_table_route_v4(TABLE, *dst).await?;
            }
        }
        for dst in &want {
            if !have.contains(&(*dst, Some(dev.index))) {
                nl.add_table_route_v4(TABLE, *dst, dev.index).await?;
            }
        }
        Ok(())
    }

    async fn bring_up(
        &self,
        slot: &mut Option<Device>,
        plan: &TunnelPlan,
    ) -> Result<(), TunnelError> {
        let nl = Netlink::open(None).await?;
        if slot.is_some() && nl.link_by_name(WG_IFNAME).await?.is_none() {
            // Deleted by hand: a TAP device does not come back; make a new one.
            tracing::warn!("{WG_IFNAME} vanished; starting WireGuard again");
            if let Some(old) = slot.take()
                && let Err(e) = old.wg.shutdown().await
            {
                tracing::warn!(error = %e, "stopping the WireGuard device whose interface vanished");
            }
        }
        if slot.is_none() {
            let key = self.key.lock().expect("key lock").clone();
            let wg = Wg::start(self.kind, self.port, self.rules[0].port, plan.mtu, key).await?;
            tracing::info!(kind = self.kind.as_str(), port = self.port, public_key = %self.public(), "WireGuard up");
            *slot = Some(Device {
                wg,
                plan: None,
                stats: Vec::new(),
            });
        }
        let dev = slot.as_mut().expect("just made");
        // One host's bad key must not cut off the others: it is left out and reported
        // on every pass while it lasts.
        let mut bad = None;
        let mut peers = Vec::new();
        for p in &plan.peers {
            match p.public_key.parse::<PublicKey>() {
                Ok(public_key) => peers.push(ovl_wg::Peer {
                    public_key,
                    endpoint: p.endpoint,
                    allowed: p.vtep,
                }),
                Err(e) => {
                    bad = Some(TunnelError::BadKey {
                        host: p.host.clone(),
                        key: p.public_key.clone(),
                        why: e.to_string(),
                    })
                }
            }
        }
        if dev.plan.as_ref() != Some(plan) {
            dev.wg.set_peers(peers).await?;
            dev.plan = Some(plan.clone());
        }
        // Level-triggered: a rule or route removed by hand comes back on the next pass.
        self.route(&nl, plan).await?;
        bad.map_or(Ok(()), Err)
    }

    async fn tear_down(&self, slot: &mut Option<Device>) -> Result<(), TunnelError> {
        let nl = Netlink::open(None).await?;
        // The routes went with the device; the rules are the host's until removed.
        for rule in self.rules {
            nl.del_port_rule(rule).await?;
        }
        if let Some(dev) = slot.take() {
            dev.wg.shutdown().await?;
            tracing::info!("WireGuard down (no encrypted network here)");
        }
        Ok(())
    }

    /// The peers of `dev` by host: the userspace device's live counters, the kernel's as
    /// read by the last pass (reading them takes a netlink request).
    fn peer_states(&self, dev: &Device) -> Vec<PeerState> {
        let hosts = dev.plan.as_ref().map(|p| p.peers.as_slice()).unwrap_or(&[]);
        let live;
        let stats = match &dev.wg {
            Wg::User(u) => {
                live = u.stats();
                &live
            }
            Wg::Kernel(_) => &dev.stats,
        };
        stats
            .iter()
            .map(|s| {
                let key = s.public_key.to_string();
                PeerState {
                    host: hosts
                        .iter()
                        .find(|p| p.public_key == key)
                        .map(|p| p.host.clone())
                        .unwrap_or_default(),
                    public_key: key,
                    endpoint: s.endpoint,
                    handshake_secs_ago: s.last_handshake.and_then(|t| {
                        SystemTime::now()
                            .duration_since(t)
                            .ok()
                            .map(|d| d.as_secs())
                    }),
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                }
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Tunnel for WireGuard {
    fn record(&self) -> Option<WgRecord> {
        (!self.is_revoked()).then(|| WgRecord {
            public_key: self.public(),
            port: self.port,
            kind: self.kind.as_str().into(),
        })
    }

    async fn apply(&self, plan: Option<&TunnelPlan>) -> Result<(), TunnelError> {
        let mut slot = self.dev.lock().await;
        let res = match plan {
            Some(p) => self.bring_up(&mut slot, p).await,
            None if slot.is_some() => self.tear_down(&mut slot).await,
            None => Ok(()),
        };
        if let Some(d) = slot.as_mut()
            && let Wg::Kernel(_) = d.wg
        {
            d.stats = d.wg.stats().await;
        }
        let peers = slot
            .as_ref()
            .map(|d| self.peer_states(d))
            .unwrap_or_default();
        let offload = slot.as_ref().and_then(|d| match &d.wg {
            Wg::User(u) => Some(u.offload().as_str().to_string()),
            Wg::Kernel(_) => None,
        });
        *self.applied.lock().expect("applied lock") = Applied {
            up: slot.is_some(),
            peers,
            error: res.as_ref().err().map(ToString::to_string),
            offload,
        };
        res
    }

    async fn rotate(&self) -> Result<WgRecord, TunnelError> {
        let key = ovl_wg::replace(&self.key_path)?;
        let public = key.public().to_string();
        *self.key.lock().expect("key lock") = key.clone();
        if let Some(dev) = self.dev.lock().await.as_ref() {
            dev.wg.set_key(key).await?;
        }
        tracing::info!(public_key = %public, "WireGuard key rotated");
        Ok(WgRecord {
            public_key: public,
            port: self.port,
            kind: self.kind.as_str().into(),
        })
    }

    fn revoke(&self, public_key: &str) -> Result<bool, TunnelError> {
        if public_key != self.public() {
            return Ok(false);
        }
        let mut revoked = self.revoked.lock().expect("revoked lock");
        if !revoked.insert(public_key.to_string()) {
            return Ok(false);
        }
        crate::perms::write_json(&self.revoked_path, &*revoked)
            .map_err(io("saving the revoked WireGuard keys"))?;
        tracing::warn!(
            public_key,
            "this host's WireGuard key was removed from the KV: revoked, not published again until `overlayctl keys rotate`"
        );
        Ok(true)
    }

    fn status(&self) -> TunnelStatus {
        let a = self.applied.lock().expect("applied lock");
        // Live counters unless a pass holds the device; then those it left.
        let peers = match self.dev.try_lock() {
            Ok(slot) => slot
                .as_ref()
                .map(|d| self.peer_states(d))
                .unwrap_or_default(),
            Err(_) => a.peers.clone(),
        };
        TunnelStatus {
            kind: self.kind.as_str().into(),
            public_key: self.public(),
            port: self.port,
            up: a.up,
            revoked: self.is_revoked(),
            peers,
            last_error: a.error.clone(),
            offload: a.offload.clone(),
        }
    }
}
