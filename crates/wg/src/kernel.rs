//! The kernel's WireGuard, where the host has it: a `wireguard` link made over rtnetlink and
//! configured over generic netlink (`WG_CMD_SET_DEVICE`, `WG_CMD_GET_DEVICE`), the same
//! verbs `wg(8)` uses. It speaks the protocol the userspace device speaks, so hosts of
//! either kind share a network.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};

use crate::{Error, KeyPair, Peer, PeerStats, PublicKey, Result};

/// A kernel WireGuard device.
pub struct Kernel {
    ifname: String,
    port: u16,
    genl: Mutex<genetlink::GenetlinkHandle>,
    rt: rtnetlink::Handle,
    public: Mutex<PublicKey>,
}

fn io(ifname: &str, context: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Io {
        ifname: ifname.to_string(),
        context: context.into(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Kernel {
    /// Makes link `ifname` of kind `wireguard` (up, `mtu`), listening on `listen_port` with
    /// `key`. Fails when the kernel has no WireGuard (the caller then runs userspace). A
    /// link of that name left by an earlier agent is taken over.
    pub async fn start(ifname: &str, listen_port: u16, mtu: u32, key: KeyPair) -> Result<Kernel> {
        let (conn, rt, _) =
            rtnetlink::new_connection().map_err(|e| io(ifname, "opening rtnetlink", e))?;
        tokio::spawn(conn);
        let (gconn, genl, _) =
            genetlink::new_connection().map_err(|e| io(ifname, "opening generic netlink", e))?;
        tokio::spawn(gconn);
        let existing = rt
            .link()
            .get()
            .match_name(ifname.to_string())
            .execute()
            .try_next()
            .await
            .ok()
            .flatten();
        if existing.is_none() {
            rt.link()
                .add(rtnetlink::LinkWireguard::new(ifname).mtu(mtu).up().build())
                .execute()
                .await
                .map_err(|e| {
                    io(
                        ifname,
                        "creating a wireguard link (no WireGuard in this kernel?)",
                        e,
                    )
                })?;
        }
        let dev = Kernel {
            ifname: ifname.to_string(),
            port: listen_port,
            genl: Mutex::new(genl),
            rt,
            public: Mutex::new(key.public()),
        };
        dev.set_device(vec![
            WireguardAttribute::PrivateKey(key.private_bytes()),
            WireguardAttribute::ListenPort(listen_port),
        ])
        .await?;
        Ok(dev)
    }

    /// Whether this kernel has WireGuard: a `wireguard` link can be made (and is removed at
    /// once). Loads the module on demand, as `ip link add ... type wireguard` does.
    pub async fn available(probe_name: &str) -> bool {
        let Ok((conn, rt, _)) = rtnetlink::new_connection() else {
            return false;
        };
        tokio::spawn(conn);
        if rt
            .link()
            .add(rtnetlink::LinkWireguard::new(probe_name).build())
            .execute()
            .await
            .is_err()
        {
            return false;
        }
        if let Ok(Some(l)) = rt
            .link()
            .get()
            .match_name(probe_name.to_string())
            .execute()
            .try_next()
            .await
            && let Err(e) = rt.link().del(l.header.index).execute().await
        {
            tracing::warn!(link = probe_name, error = %e, "removing the WireGuard probe link");
        }
        true
    }

    /// This device's public key.
    pub fn public_key(&self) -> PublicKey {
        *self.public.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The UDP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn set_device(&self, mut attrs: Vec<WireguardAttribute>) -> Result<()> {
        attrs.insert(0, WireguardAttribute::IfName(self.ifname.clone()));
        let msg = WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes: attrs,
        };
        let mut req = NetlinkMessage::from(GenlMessage::from_payload(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut handle = self.genl.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut answers = handle
            .request(req)
            .await
            .map_err(|e| io(&self.ifname, "WG_CMD_SET_DEVICE", e))?;
        while let Some(m) = answers.next().await {
            let m = m.map_err(|e| io(&self.ifname, "WG_CMD_SET_DEVICE", e))?;
            if let NetlinkPayload::Error(e) = m.payload
                && e.code.is_some()
            {
                return Err(io(&self.ifname, "WG_CMD_SET_DEVICE", e));
            }
        }
        Ok(())
    }

    /// Replaces the peer set: each peer's one allowed address (/32) and endpoint.
    pub async fn set_peers(&self, peers: &[Peer]) -> Result<()> {
        let peers = peers
            .iter()
            .map(|p| {
                WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(*p.public_key.as_bytes()),
                    WireguardPeerAttribute::Endpoint(SocketAddr::V4(p.endpoint)),
                    WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                    WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
                        WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                        WireguardAllowedIpAttr::IpAddr(IpAddr::V4(p.allowed)),
                        WireguardAllowedIpAttr::Cidr(32),
                    ])]),
                ])
            })
            .collect();
        self.set_device(vec![
            WireguardAttribute::Flags(WireguardDeviceFlags::ReplacePeers),
            WireguardAttribute::Peers(peers),
        ])
        .await
    }

    /// A new private key; the kernel starts new handshakes with it.
    pub async fn set_key(&self, key: KeyPair) -> Result<()> {
        self.set_device(vec![WireguardAttribute::PrivateKey(key.private_bytes())])
            .await?;
        *self.public.lock().unwrap_or_else(|e| e.into_inner()) = key.public();
        Ok(())
    }

    /// The peers as the kernel sees them.
    pub async fn stats(&self) -> Result<Vec<PeerStats>> {
        let msg = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(self.ifname.clone())],
        };
        let mut req = NetlinkMessage::from(GenlMessage::from_payload(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut handle = self.genl.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut answers = handle
            .request(req)
            .await
            .map_err(|e| io(&self.ifname, "WG_CMD_GET_DEVICE", e))?;
        let mut out = Vec::new();
        while let Some(m) = answers.next().await {
            let m = m.map_err(|e| io(&self.ifname, "WG_CMD_GET_DEVICE", e))?;
            let NetlinkPayload::InnerMessage(genl) = m.payload else {
                continue;
            };
            for a in genl.payload.attributes {
                let WireguardAttribute::Peers(peers) = a else {
                    continue;
                };
                for WireguardPeer(attrs) in peers {
                    let mut s = PeerStats {
                        public_key: PublicKey([0; 32]),
                        endpoint: SocketAddrV4::new([0, 0, 0, 0].into(), 0),
                        allowed: [0, 0, 0, 0].into(),
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    };
                    for pa in attrs {
                        match pa {
                            WireguardPeerAttribute::PublicKey(k) => s.public_key = PublicKey(k),
                            WireguardPeerAttribute::Endpoint(SocketAddr::V4(e)) => s.endpoint = e,
                            WireguardPeerAttribute::RxBytes(n) => s.rx_bytes = n,
                            WireguardPeerAttribute::TxBytes(n) => s.tx_bytes = n,
                            WireguardPeerAttribute::LastHandshake(t) => {
                                let since = Duration::new(
                                    t.seconds.max(0) as u64,
                                    t.nano_seconds.clamp(0, 999_999_999) as u32,
                                );
                                if !since.is_zero() {
                                    s.last_handshake = SystemTime::UNIX_EPOCH.checked_add(since);
                                }
                            }
                            WireguardPeerAttribute::AllowedIps(ips) => {
                                for WireguardAllowedIp(ip) in ips {
                                    for x in ip {
                                        if let WireguardAllowedIpAttr::IpAddr(IpAddr::V4(v)) = x {
                                            s.allowed = v;
                                        }
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Deletes the link.
    pub async fn shutdown(self) -> Result<()> {
        let link = self
            .rt
            .link()
            .get()
            .match_name(self.ifname.clone())
            .execute()
            .try_next()
            .await
            .ok()
            .flatten();
        if let Some(l) = link {
            self.rt
                .link()
                .del(l.header.index)
                .execute()
                .await
                .map_err(|e| io(&self.ifname, "deleting the wireguard link", e))?;
        }
        Ok(())
    }
}
