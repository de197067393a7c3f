//! The networks of one dockerd through its Engine API: list, inspect, create and remove
//! networks of our driver, so a network created on one host can be made present on every
//! host (the agent decides what; this layer only speaks the API).

use std::collections::BTreeMap;

use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use ipnetwork::Ipv4Network;

use crate::error::DockerError;
use crate::identity::{FOLLOW_OPTION, NETWORK_NAME_OPTION};
use crate::watcher::DRIVER_NAME;

/// A network of our driver as one dockerd has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerNetwork {
    /// Docker's per-host network ID.
    pub id: String,
    /// Name (the cluster identity).
    pub name: String,
    /// IPv4 subnet of its IPAM config, if any.
    pub subnet: Option<Ipv4Network>,
    /// IPv4 gateway of its IPAM config, if any.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// `--internal`.
    pub internal: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options (`-o`).
    pub options: BTreeMap<String, String>,
    /// Containers attached on this host (only from [`EngineNetworks::inspect`]; a listing
    /// leaves it empty).
    pub containers: Vec<String>,
}

/// What to create: a network of our driver with the cluster's subnet and gateway, named
/// explicitly to the IPAM driver (`--ipam-opt ovl.network=NAME`) so every host binds it to the
/// same cluster network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkCreate {
    /// Name.
    pub name: String,
    /// Subnet.
    pub subnet: Ipv4Network,
    /// Gateway.
    pub gateway: std::net::Ipv4Addr,
    /// `--internal`.
    pub internal: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
}

impl NetworkCreate {
    /// The Engine API body.
    pub fn request(&self) -> NetworkCreateRequest {
        NetworkCreateRequest {
            name: self.name.clone(),
            driver: Some(DRIVER_NAME.to_string()),
            internal: Some(self.internal),
            // Containers are attached by `docker run`/Compose on each host; attachable only
            // matters under Swarm.
            attachable: Some(false),
            ipam: Some(Ipam {
                driver: Some(DRIVER_NAME.to_string()),
                config: Some(vec![IpamConfig {
                    subnet: Some(self.subnet.to_string()),
                    gateway: Some(self.gateway.to_string()),
                    ..Default::default()
                }]),
                options: Some(
                    [
                        (NETWORK_NAME_OPTION.to_string(), self.name.clone()),
                        (FOLLOW_OPTION.to_string(), "1".to_string()),
                    ]
                    .into_iter()
                    .collect(),
                ),
            }),
            options: Some(self.options.clone().into_iter().collect()),
            labels: Some(self.labels.clone().into_iter().collect()),
            ..Default::default()
        }
    }
}

/// The network API of one dockerd (a clone of a negotiated client).
#[derive(Debug, Clone)]
pub struct EngineNetworks {
    docker: Docker,
}

fn v4_config(ipam: Option<&Ipam>) -> (Option<Ipv4Network>, Option<std::net::Ipv4Addr>) {
    let cfg = ipam.and_then(|i| i.config.as_ref()).and_then(|c| {
        c.iter().find(|c| {
            c.subnet
                .as_deref()
                .is_some_and(|s| s.parse::<Ipv4Network>().is_ok())
        })
    });
    (
        cfg.and_then(|c| c.subnet.as_deref()?.parse().ok()),
        cfg.and_then(|c| c.gateway.as_deref()?.parse().ok()),
    )
}

fn sorted(m: Option<std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
    m.unwrap_or_default().into_iter().collect()
}

impl EngineNetworks {
    pub(crate) fn new(docker: Docker) -> Self {
        EngineNetworks { docker }
    }

    /// Every network of our driver.
    pub async fn list(&self) -> Result<Vec<DockerNetwork>, DockerError> {
        let all = self
            .docker
            .list_networks(None)
            .await
            .map_err(|e| DockerError::engine("listing networks", e))?;
        Ok(all
            .into_iter()
            .filter(|n| n.driver.as_deref() == Some(DRIVER_NAME))
            .map(|n| {
                let (subnet, gateway) = v4_config(n.ipam.as_ref());
                DockerNetwork {
                    id: n.id.unwrap_or_default(),
                    name: n.name.unwrap_or_default(),
                    subnet,
                    gateway,
                    internal: n.internal.unwrap_or(false),
                    labels: sorted(n.labels),
                    options: sorted(n.options),
                    containers: Vec::new(),
                }
            })
            .collect())
    }

    /// One network by ID or name, with its containers on this host; `None` if unknown.
    pub async fn inspect(&self, id: &str) -> Result<Option<DockerNetwork>, DockerError> {
        match self.docker.inspect_network(id, None).await {
            Ok(n) => {
                let (subnet, gateway) = v4_config(n.ipam.as_ref());
                let mut containers: Vec<String> = n
                    .containers
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(id, ep)| ep.name.unwrap_or(id))
                    .collect();
                containers.sort();
                Ok(Some(DockerNetwork {
                    id: n.id.unwrap_or_default(),
                    name: n.name.unwrap_or_default(),
                    subnet,
                    gateway,
                    internal: n.internal.unwrap_or(false),
                    labels: sorted(n.labels),
                    options: sorted(n.options),
                    containers,
                }))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(DockerError::engine(format!("inspecting network {id}"), e)),
        }
    }

    /// Creates a network; returns its ID.
    pub async fn create(&self, spec: &NetworkCreate) -> Result<String, DockerError> {
        let r = self
            .docker
            .create_network(spec.request())
            .await
            .map_err(|e| DockerError::engine(format!("creating network {}", spec.name), e))?;
        Ok(r.id)
    }

    /// Removes a network by ID or name (a network already gone is fine).
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        match self.docker.remove_network(id).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine(format!("removing network {id}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_names_the_cluster_network_to_the_ipam_driver() {
        let spec = NetworkCreate {
            name: "appnet".into(),
            subnet: "10.10.3.0/24".parse().unwrap(),
            gateway: "10.10.3.1".parse().unwrap(),
            internal: true,
            labels: [("com.docker.compose.project".to_string(), "p".to_string())].into(),
            options: [(
                "com.docker.network.driver.mtu".to_string(),
                "1400".to_string(),
            )]
            .into(),
        };
        let body = serde_json::to_value(spec.request()).unwrap();
        assert_eq!(body["Name"], "appnet");
        assert_eq!(body["Driver"], "ovl");
        assert_eq!(body["Internal"], true);
        assert_eq!(body["IPAM"]["Driver"], "ovl");
        assert_eq!(body["IPAM"]["Config"][0]["Subnet"], "10.10.3.0/24");
        assert_eq!(body["IPAM"]["Config"][0]["Gateway"], "10.10.3.1");
        assert_eq!(body["IPAM"]["Options"]["ovl.network"], "appnet");
        assert_eq!(body["IPAM"]["Options"]["ovl.follow"], "1");
        assert_eq!(body["Labels"]["com.docker.compose.project"], "p");
        assert_eq!(body["Options"]["com.docker.network.driver.mtu"], "1400");
    }
}
