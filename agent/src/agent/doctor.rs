//! `overlayctl doctor`: gathers the [`Facts`] the pure checks in [`crate::doctor`] judge.

use std::{collections::BTreeMap, path::Path, time::Duration};

use super::Agent;
use crate::{
    api::client::Client,
    config::PLUGIN_SOCKET,
    doctor::{Facts, HostFacts, LeaseFacts, NetFacts, Report, diagnose},
};

impl Agent {
    /// Looks at the cluster from this host: the KV's hosts and networks with their leases,
    /// this host's datapath against its desired state, the KV's latency and the plugin
    /// socket.
    pub async fn doctor(&self) -> Report {
        let t = std::time::Instant::now();
        let kv = match self.store.networks().await {
            Ok(_) => Ok(t.elapsed().as_secs_f64() * 1000.0),
            Err(e) => Err(e.to_string()),
        };
        let mut leases = self.leases().await;
        let hosts = self
            .hosts()
            .await
            .into_iter()
            .map(|h| HostFacts {
                lease: leases.remove(&h.id),
                id: h.id,
                underlay_mtu: h.underlay_mtu,
                datapath: h.datapath,
                wireguard: h.wireguard,
                version: h.version,
                state: h.state,
            })
            .collect();
        let view = self.view();
        let networks = view
            .networks
            .values()
            .map(|n| {
                let mut hosts: Vec<String> = view
                    .endpoints
                    .values()
                    .filter(|e| e.network == n.name)
                    .map(|e| e.host.clone())
                    .collect();
                hosts.sort();
                hosts.dedup();
                NetFacts {
                    name: n.name.clone(),
                    mtu: n.mtu,
                    encrypted: n.encrypted,
                    hosts,
                }
            })
            .collect();
        let drift: BTreeMap<String, Vec<String>> = match self.peers(None).await {
            Ok(p) => p
                .networks
                .into_iter()
                .map(|n| (n.network, n.diff))
                .collect(),
            Err(e) => [("datapath".to_string(), vec![format!("cannot compare: {e}")])].into(),
        };
        let plugin = if self.settings.docker_plugin {
            Some(activate(Path::new(PLUGIN_SOCKET)).await)
        } else {
            None
        };
        diagnose(&Facts {
            me: self.settings.host_id.clone(),
            hosts,
            networks,
            drift,
            kv,
            view_behind: {
                let kv = self.status().kv;
                kv.view_behind.zip(
                    kv.view_age_ms
                        .map(std::time::Duration::from_millis)
                        .or(Some(std::time::Duration::MAX)),
                )
            },
            plugin,
            matrix: self.store.health_rows().await.map_err(|e| e.to_string()),
            collisions: crate::health::addresses(&view).1,
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            lease_ttl: self.settings.lease_ttl,
        })
    }

    /// The time to live left on each live host's lease (the one its liveness record is
    /// attached to), by host id; hosts whose lease could not be read are left out.
    async fn leases(&self) -> BTreeMap<String, LeaseFacts> {
        let kv = self.store.kv();
        let alive = match kv.list(ovl_core::keys::ALIVE).await {
            Ok(l) => l.entries,
            Err(e) => {
                tracing::debug!(error = %e, "doctor: listing the liveness records");
                return BTreeMap::new();
            }
        };
        let lookups = alive.iter().filter_map(|e| {
            let ovl_core::keys::KeyRef::Alive(id) = ovl_core::keys::classify(&e.key) else {
                return None;
            };
            let lease = e.lease?;
            Some(async move {
                match kv.lease_ttl(lease).await {
                    Ok(t) => t.map(|t| {
                        let facts = LeaseFacts {
                            granted: t.granted,
                            remaining: t.remaining,
                        };
                        (id.to_string(), facts)
                    }),
                    Err(e) => {
                        tracing::debug!(host = id, error = %e, "doctor: lease time to live");
                        None
                    }
                }
            })
        });
        futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Docker's own first request to a plugin.
async fn activate(socket: &Path) -> Result<(), String> {
    let client = Client::new(socket);
    let body = serde_json::json!({});
    let call = client.post::<_, serde_json::Value>("/Plugin.Activate", &body);
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(r) => r.map(drop).map_err(|e| e.to_string()),
        Err(_) => Err(format!("{} does not answer within 2 s", socket.display())),
    }
}
