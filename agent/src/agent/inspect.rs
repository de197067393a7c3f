//! Read-only operations: `overlayctl status`, `hosts`, `endpoints`, `peers`, `dns lookup`,
//! `datapath`.

use std::{collections::BTreeSet, sync::atomic::Ordering};

use ovl_core::{EndpointRecord, StoreError};

use super::Agent;
use crate::{
    api::types::{
        Counts, DnsLookup, EndpointView, HostInfo, KvStatus, Peers, PeersNetwork, Status,
    },
    error::{AgentError, Result},
    reconcile::liveness::HostState,
};

impl Agent {
    /// `overlayctl status`.
    pub fn status(&self) -> Status {
        let v = self.view();
        let h = self.health.lock().expect("health lock");
        let kv = KvStatus {
            backend: self.store.describe(),
            reachable: h.last_error.is_none() && h.last_ok.is_some(),
            error: h.last_error.clone(),
            last_ok_secs: h.last_ok.map(|t| t.elapsed().as_secs()),
            head_revision: h.head,
            view_behind: h.head.map(|head| (head - v.revision).max(0)),
            view_age_ms: h.confirmed.map(|t| t.elapsed().as_millis() as u64),
            sync_error: h.sync_failing.as_ref().map(|(_, e)| e.clone()),
            sync_failing_secs: h.sync_failing.as_ref().map(|(t, _)| t.elapsed().as_secs()),
            last_list_ms: h.last_list.map(|d| d.as_secs_f64() * 1000.0),
        };
        Status {
            host_id: self.settings.host_id.clone(),
            version: crate::VERSION.to_string(),
            advertise_addr: self.settings.advertise_addr,
            underlay_mtu: self.underlay_mtu,
            datapath: self.rec.datapath().mode().to_string(),
            registered: self.registered.load(Ordering::Relaxed),
            kv,
            counts: Counts {
                hosts: v.hosts.len(),
                hosts_alive: v.hosts.keys().filter(|h| v.is_alive(h)).count(),
                networks: v.networks.len(),
                endpoints: v.endpoints.len(),
                local_endpoints: v.endpoints_of_host(&self.settings.host_id).count(),
            },
            view_revision: v.revision,
            details: self.gateway_details(),
            wireguard: self.tunnel.status(),
        }
    }

    fn gateway_details(&self) -> Vec<(String, String)> {
        let mut d = Vec::new();
        match self.gw.info() {
            Some(i) => d.push((
                "gateway".into(),
                format!("{} {} ({})", i.bridge, i.subnet, i.address),
            )),
            None => d.push(("gateway".into(), "not created yet".into())),
        }
        let ports: Vec<String> = self
            .gw
            .published()
            .into_iter()
            .map(|(ep, p)| {
                format!("{}:{}/{:?}->{}", p.host_port, p.port, p.proto, ep).to_lowercase()
            })
            .collect();
        if !ports.is_empty() {
            d.push(("published".into(), ports.join(" ")));
        }
        d.push((
            "vxlan admission".into(),
            format!(
                "udp {} from registered hosts only, none from containers; {} refused",
                self.settings.vxlan_port,
                crate::counters::Counters::get(&self.counters.vxlan_refused)
            ),
        ));
        if let Some(addr) = self.settings.dns_addr {
            let serving = self
                .names
                .shared_listeners()
                .iter()
                .any(|l| l.ip() == std::net::IpAddr::V4(addr));
            d.push((
                "docker dns".into(),
                format!(
                    "{addr} on {} for {} ({}), {} dropped",
                    ovl_gateway::DNS_IFACE,
                    self.settings.dns_interfaces.join(" "),
                    if serving {
                        "serving"
                    } else {
                        "not serving yet"
                    },
                    crate::counters::Counters::get(&self.counters.dns_dropped)
                ),
            ));
        }
        d
    }

    /// `overlayctl hosts`: from the KV when reachable, else from the last view.
    pub async fn hosts(&self) -> Vec<HostInfo> {
        let rows = match self.store.hosts().await {
            Ok(rows) => rows,
            Err(_) => {
                let v = self.view();
                v.hosts
                    .values()
                    .map(|h| (h.clone(), v.is_alive(&h.id)))
                    .collect()
            }
        };
        let view = self.view();
        rows.into_iter()
            .map(|(h, alive)| {
                let state = if alive {
                    HostState::Alive
                } else {
                    self.host_state(&view, &h.id)
                };
                HostInfo {
                    id: h.id,
                    vtep: h.vtep,
                    underlay_mtu: h.underlay_mtu,
                    gw_subnet: h.gw_subnet,
                    datapath: h.datapath,
                    wireguard: h.wg.as_ref().map(|w| w.kind.clone()),
                    public_key: h.wg.map(|w| w.public_key),
                    version: h.version,
                    alive,
                    state: state.to_string(),
                }
            })
            .collect()
    }

    /// `overlayctl endpoints`: the cluster's endpoints (from the KV, or the last view while
    /// it is unreachable), this host's with their datapath state.
    pub async fn endpoints(&self, net: Option<&str>) -> Result<Vec<EndpointView>> {
        let records: Vec<EndpointRecord> = match self.store.endpoints(net).await {
            Ok(e) => e,
            Err(StoreError::Kv(k)) if k.is_unreachable() => {
                let v = self.view();
                v.endpoints
                    .values()
                    .filter(|e| net.is_none_or(|n| e.network == n))
                    .cloned()
                    .collect()
            }
            Err(e) => return Err(e.into()),
        };
        let mut status = self.rec.datapath().endpoint_status();
        Ok(records
            .into_iter()
            .map(|record| EndpointView {
                status: status.remove(&(record.network.clone(), record.id.clone())),
                record,
            })
            .collect())
    }

    /// `overlayctl dns lookup NAME --from CNAME`: answers as CNAME's resolver would.
    pub async fn dns_lookup(&self, name: &str, from: &str) -> Result<DnsLookup> {
        let mut nets: BTreeSet<String> = self
            .local
            .all()
            .iter()
            .filter(|a| a.endpoint.name == from || a.endpoint.id == from)
            .map(|a| a.endpoint.network.clone())
            .collect();
        if nets.is_empty() {
            let v = self.view();
            nets = v
                .endpoints
                .values()
                .filter(|e| e.name == from)
                .map(|e| e.network.clone())
                .collect();
        }
        if nets.is_empty() {
            return Err(AgentError::NotFound(format!("no container named {from}")));
        }
        let nets: Vec<String> = nets.into_iter().collect();
        self.names.lookup(&nets, name, from).await
    }

    /// `overlayctl peers`: desired vs. programmed, per network, with the plan between them.
    pub async fn peers(&self, only: Option<&str>) -> Result<Peers> {
        let view = self.view();
        let here = self.here(&view);
        let (want, report) = self.rec.report(&view, &self.me(), &here).await?;
        let mut reports = report.networks;
        for (net, line) in self.record_conflicts(&view) {
            reports.entry(net).or_default().diff.push(line);
        }
        let mut names: BTreeSet<String> = want.networks.keys().cloned().collect();
        names.extend(reports.keys().cloned());
        let mut out = Peers::default();
        for name in names {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let mut n = PeersNetwork {
                network: name.clone(),
                ..Default::default()
            };
            if let Some(d) = want.networks.get(&name) {
                n.desired.push(format!(
                    "vxlan vni {} local {} mtu {}",
                    d.spec.vni, d.spec.local_vtep, d.spec.mtu
                ));
                n.desired
                    .extend(d.local_endpoints.iter().map(|(id, ep)| match ep {
                        Some(ep) => format!(
                            "local {id} {}/{} in {}",
                            ep.ip,
                            ep.prefix_len,
                            ep.netns.display()
                        ),
                        None => format!("local {id}"),
                    }));
                n.desired.extend(
                    d.peers
                        .iter()
                        .map(|p| format!("peer {} {} via {}", p.ip, p.mac, p.vtep)),
                );
                n.desired
                    .extend(d.flood.iter().map(|f| format!("flood {f}")));
            }
            if let Some(r) = reports.remove(&name) {
                n.actual = r.actual;
                n.diff = r.diff;
            }
            out.networks.push(n);
        }
        Ok(out)
    }

    /// `overlayctl datapath`: details and counters of the datapath.
    pub async fn datapath_details(&self) -> DatapathReport {
        DatapathReport {
            details: self.rec.datapath().details().await,
            vxlan_admission: AdmissionReport {
                port: self.settings.vxlan_port,
                refused: crate::counters::Counters::get(&self.counters.vxlan_refused),
            },
        }
    }
}

/// `overlayctl datapath`: the datapath's own details and the VXLAN admission in front of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatapathReport {
    /// What the datapath reports.
    #[serde(flatten)]
    pub details: crate::datapath::Details,
    /// Who may send VXLAN to this host.
    pub vxlan_admission: AdmissionReport,
}

/// VXLAN admission (both datapaths): only registered hosts' VTEPs, nothing from containers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdmissionReport {
    /// The guarded UDP port.
    pub port: u16,
    /// Packets refused since the agent started.
    pub refused: u64,
}
