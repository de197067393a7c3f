//! Network operations: `overlayctl network create|ls|inspect|rm`.

use ovl_core::{ClusterView, NetworkRecord, StoreError, ipam, store::NetworkRequest};

use super::Agent;
use crate::{
    api::types::NetworkInfo,
    error::{AgentError, Result},
};

impl Agent {
    pub(super) fn network_info(&self, v: &ClusterView, rec: NetworkRecord) -> NetworkInfo {
        let endpoints = v.endpoints_on(&rec.name).count();
        let mut details = Vec::new();
        if !rec.internal
            && let Some(i) = self.gw.info()
        {
            details.push(("gateway here".into(), format!("{} {}", i.bridge, i.subnet)));
        }
        for e in v.endpoints_on(&rec.name).filter(|e| !e.publish.is_empty()) {
            let ports: Vec<String> = e.publish.iter().map(|p| p.to_string()).collect();
            details.push((
                format!("published {}", e.display_name()),
                format!("{} on {}", ports.join(","), e.host),
            ));
        }
        NetworkInfo {
            mtu_here: self.mtu_for(&rec),
            record: rec,
            endpoints,
            details,
        }
    }

    /// `overlayctl network create`.
    pub async fn create_network(&self, req: NetworkRequest) -> Result<NetworkInfo> {
        super::checks::reserved(&req.name, req.vni)?;
        if let Some(s) = req.subnet {
            let v = self.view();
            super::checks::subnet(s, self.underlay, &v)?;
            let mut gws: Vec<(String, ipnetwork::Ipv4Network)> = v
                .hosts
                .values()
                .filter_map(|h| h.gw_subnet.map(|g| (h.id.clone(), g)))
                .collect();
            if let Some(i) = self.gw.info() {
                gws.push((self.settings.host_id.clone(), i.subnet));
            }
            if let Some((h, g)) = gws.iter().find(|(_, g)| ipam::overlaps(*g, s)) {
                return Err(AgentError::Conflict(format!(
                    "subnet {s} overlaps the gateway bridge subnet {g} of host {h}"
                )));
            }
        }
        let rec = self.store.create_network(&req).await?;
        tracing::info!(network = %rec.name, vni = rec.vni, subnet = %rec.subnet, "network created");
        Ok(self.network_info(&self.view(), rec))
    }

    /// `overlayctl network ls`: from the KV, or the last view while it is unreachable.
    pub async fn networks(&self) -> Result<Vec<NetworkInfo>> {
        let v = self.view();
        let nets = match self.store.networks().await {
            Ok(n) => n,
            Err(StoreError::Kv(k)) if k.is_unreachable() => v.networks.values().cloned().collect(),
            Err(e) => return Err(e.into()),
        };
        Ok(nets.into_iter().map(|n| self.network_info(&v, n)).collect())
    }

    /// `overlayctl network inspect`.
    pub async fn network(&self, name: &str) -> Result<NetworkInfo> {
        let v = self.view();
        let rec = match self.store.network(name).await {
            Ok(r) => r,
            Err(StoreError::Kv(k)) if k.is_unreachable() => v.networks.get(name).cloned(),
            Err(e) => return Err(e.into()),
        };
        let rec = rec.ok_or_else(|| AgentError::NotFound(format!("network {name} not found")))?;
        Ok(self.network_info(&v, rec))
    }

    /// `overlayctl network rm`.
    pub async fn delete_network(&self, name: &str) -> Result<NetworkInfo> {
        let rec = self.store.delete_network(name).await?;
        tracing::info!(network = %rec.name, "network removed");
        Ok(self.network_info(&self.view(), rec))
    }
}
