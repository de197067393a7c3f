//! The gateway seam: what the agent needs of the gateway bridge (`ovl-gateway`: bridge,
//! container interfaces on it, NAT, published ports), as a trait so the agent's own logic runs
//! in unit tests over a fake.

use std::path::Path;

use ipnetwork::Ipv4Network;
pub use ovl_gateway::{Error, GatewayEndpoint, GatewayInfo, PortMap, Proto};

/// Result of gateway calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The gateway bridge of this host. `key` names one container (its network namespace): a
/// container has one gateway interface whatever the number of its overlay networks.
#[async_trait::async_trait]
pub trait Gateway: Send + Sync {
    /// The bridge as set up, `None` before its first use.
    fn info(&self) -> Option<GatewayInfo>;

    /// Every published port with the key it belongs to.
    fn published(&self) -> Vec<(String, PortMap)>;

    /// Creates or adopts the bridge, avoiding `overlay_subnets` when choosing its subnet.
    async fn ensure_with(&self, overlay_subnets: &[Ipv4Network]) -> Result<GatewayInfo>;

    /// Gives the container at `netns` its interface on the bridge (idempotent).
    async fn attach(&self, key: &str, netns: &Path) -> Result<GatewayEndpoint>;

    /// Removes the container's interface and its published ports (idempotent).
    async fn detach(&self, key: &str) -> Result<()>;

    /// Publishes ports of an attached container (all or nothing).
    async fn publish(&self, key: &str, ports: &[PortMap]) -> Result<()>;

    /// Withdraws every published port of a container.
    async fn unpublish(&self, key: &str) -> Result<()>;

    /// Repairs the bridge and its rules if something changed them; `true` when it did.
    async fn repair(&self) -> Result<bool>;

    /// Sets up the DNS address for Docker containers (its interface and guard), when
    /// configured. Idempotent.
    async fn ensure_dns(&self) -> Result<()>;

    /// Packets the DNS guard dropped since the agent started (`None`: no guard).
    async fn dns_dropped(&self) -> Result<Option<u64>>;

    /// Admits VXLAN from these VTEPs only, and none from containers; `true` when the list
    /// changed.
    async fn admit(&self, vteps: std::collections::BTreeSet<std::net::Ipv4Addr>) -> Result<bool>;

    /// VXLAN packets refused since the agent started (`None`: no admission yet).
    async fn vxlan_refused(&self) -> Result<Option<u64>>;
}

#[async_trait::async_trait]
impl Gateway for ovl_gateway::Gateway {
    fn info(&self) -> Option<GatewayInfo> {
        ovl_gateway::Gateway::info(self)
    }

    fn published(&self) -> Vec<(String, PortMap)> {
        ovl_gateway::Gateway::published(self)
    }

    async fn ensure_with(&self, overlay_subnets: &[Ipv4Network]) -> Result<GatewayInfo> {
        ovl_gateway::Gateway::ensure_with(self, overlay_subnets).await
    }

    async fn attach(&self, key: &str, netns: &Path) -> Result<GatewayEndpoint> {
        ovl_gateway::Gateway::attach(self, key, netns).await
    }

    async fn detach(&self, key: &str) -> Result<()> {
        ovl_gateway::Gateway::detach(self, key).await
    }

    async fn publish(&self, key: &str, ports: &[PortMap]) -> Result<()> {
        ovl_gateway::Gateway::publish(self, key, ports).await
    }

    async fn unpublish(&self, key: &str) -> Result<()> {
        ovl_gateway::Gateway::unpublish(self, key).await
    }

    async fn admit(&self, vteps: std::collections::BTreeSet<std::net::Ipv4Addr>) -> Result<bool> {
        ovl_gateway::Gateway::admit(self, vteps).await
    }

    async fn vxlan_refused(&self) -> Result<Option<u64>> {
        ovl_gateway::Gateway::vxlan_refused(self).await
    }

    async fn ensure_dns(&self) -> Result<()> {
        ovl_gateway::Gateway::ensure_dns(self).await
    }

    async fn dns_dropped(&self) -> Result<Option<u64>> {
        ovl_gateway::Gateway::dns_dropped(self).await
    }

    async fn repair(&self) -> Result<bool> {
        // The bridge once set up, and the DNS guard whenever configured.
        let mut repaired = self.reconcile().await?;
        if let Some(info) = ovl_gateway::Gateway::info(self) {
            // Docker's FORWARD policy: keep our exception in its DOCKER-USER chain. iptables
            // shares one lock machine-wide, so the check is bounded.
            let check = ovl_gateway::docker::ensure_docker_user_exception(&info.bridge);
            match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
                Ok(Ok(added)) => {
                    if added {
                        tracing::info!(
                            "added the gateway bridge exception to Docker's DOCKER-USER chain"
                        );
                    }
                    repaired |= added;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "Docker coexistence"),
                Err(_) => tracing::warn!("Docker coexistence: iptables did not answer within 3 s"),
            }
        }
        Ok(repaired)
    }
}
