//! Endpoint operations: `overlayctl attach`/`detach`, and the plumbing verb Docker's Join and
//! Leave use too.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use ovl_core::{EndpointRecord, NetworkRecord, ipam, model};
use ovl_model::{EndpointSpec, Plug};

use super::Agent;
use crate::{
    api::types::{AttachReply, AttachRequest, DetachReply, DetachRequest},
    counters::Counters,
    error::{AgentError, Result},
    local::{self, Attachment},
    reconcile::desired,
};

/// What plumbing an endpoint made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plumbed {
    /// The container end's name: in the container (`eth0`...), or the temporary name in the
    /// host namespace for Docker to move.
    pub ifname: String,
    /// Its MTU.
    pub mtu: u32,
}

impl Agent {
    /// Creates the interfaces of endpoint `rec` of `net` (the one plumbing verb of
    /// `overlayctl attach` and Docker's Join, whatever `plug` says about the container end)
    /// and records the local attachment. On failure nothing is left in the datapath; the KV
    /// records are the caller's.
    pub async fn plumb(
        &self,
        net: &NetworkRecord,
        rec: &EndpointRecord,
        netns: &Path,
        plug: Plug,
    ) -> Result<Plumbed> {
        let spec = desired::spec(net, &self.me());
        let standalone = matches!(plug, Plug::Netns);
        let ep = EndpointSpec {
            endpoint_id: rec.id.clone(),
            netns: netns.to_path_buf(),
            mac: rec.mac,
            ip: rec.ip,
            prefix_len: net.subnet.prefix(),
            mtu: spec.mtu,
            ifname: None,
            plug,
        };
        let key = (net.name.clone(), rec.id.clone());
        let attached = match self.rec.plumb(&key, net, &spec, &ep).await {
            Ok(a) => a,
            Err(e) => {
                if let AgentError::Rollback { cleanup, .. } = &e {
                    Counters::add(&self.counters.rollback_failures, cleanup.len() as u64);
                }
                return Err(e);
            }
        };
        let netns_key = match local::netns_key(netns) {
            Ok(k) => k,
            // dockerd's sandbox file may not be visible from here; the endpoint is then a
            // namespace of its own for the gateway and names.
            Err(_) if !standalone => format!("docker-{}", rec.id),
            Err(e) => {
                let err = AgentError::io(format!("{}", netns.display()), e);
                let step = self
                    .unplumb(&net.name, &rec.id, false)
                    .await
                    .err()
                    .map(|u| format!("removing the interfaces of {}: {u}", rec.id));
                return Err(self
                    .undo(
                        format!("attaching {} to {}", rec.id, net.name),
                        err,
                        vec![step],
                    )
                    .await);
            }
        };
        let kept = self.local.insert(Attachment {
            endpoint: rec.clone(),
            network: net.clone(),
            netns: netns.to_path_buf(),
            netns_key,
            ifname: attached.ifname.clone(),
            hosts_file: None,
            // Docker's own resolver owns 127.0.0.11 in its containers.
            dns_listener: standalone,
        });
        if let Err(e) = kept {
            // An attachment the next agent would not know of: its interface would be torn
            // down after a restart. Refuse it now instead.
            let err = AgentError::io("recording the attachment in the state dir", e);
            let step = self
                .rec
                .unplumb(&key)
                .await
                .err()
                .map(|u| format!("removing the interfaces of {}: {u}", rec.id));
            return Err(self
                .undo(
                    format!("attaching {} to {}", rec.id, net.name),
                    err,
                    vec![step],
                )
                .await);
        }
        // Before the container runs: its first DNS query must find it, and find the names of
        // a network this host had no endpoint on until now (the zone covers the networks of
        // the local endpoints; the names loop would take it in only at its next pass).
        let local = self.local.all();
        self.names.containers_changed(&local);
        self.names.refresh_zone(&self.view(), &local);
        self.rec.settled(&key);
        self.kick();
        Ok(Plumbed {
            ifname: attached.ifname,
            mtu: spec.mtu,
        })
    }

    /// Takes endpoint `id` of `network` out of this host's datapath and local state (not the
    /// KV): its interfaces go, and with `gateway` (standalone attach; under Docker the gateway
    /// is Docker's) its gateway-bridge interface goes too when it was the namespace's last
    /// one. Idempotent. Returns the local attachment it removed.
    ///
    /// The local state is changed first: a removal that cannot be saved (a full state dir)
    /// changes nothing, where a kept interface's attachment left on disk would be brought
    /// back, record and all, by the next agent.
    pub async fn unplumb(
        &self,
        network: &str,
        id: &str,
        gateway: bool,
    ) -> Result<Option<Attachment>> {
        let _g = self.rec.lock().await;
        let removed = self
            .local
            .remove(network, id)
            .map_err(|e| AgentError::io(format!("forgetting {id} on {network}"), e))?;
        if let Err(e) = self
            .rec
            .unplumb_locked(&(network.to_string(), id.to_string()))
            .await
        {
            let Some(a) = removed else { return Err(e) };
            // Nothing changed after all: the attachment stays.
            return Err(match self.local.insert(a) {
                Ok(()) => e,
                Err(back) => AgentError::Rollback {
                    op: format!("detaching {id} from {network}"),
                    error: Box::new(e),
                    cleanup: vec![format!("keeping its attachment: {back}")],
                },
            });
        }
        let local = self.local.all();
        self.names.containers_changed(&local);
        self.names.refresh_zone(&self.view(), &local);
        if gateway
            && let Some(a) = &removed
            && !a.network.internal
        {
            self.detach_gateway(&a.netns_key).await?;
        }
        self.kick();
        Ok(removed)
    }

    /// `overlayctl attach`: claims an address, records the endpoint, plumbs the container.
    pub async fn attach(&self, req: AttachRequest) -> Result<AttachReply> {
        let t0 = Instant::now();
        model::validate_endpoint_name(&req.name).map_err(AgentError::Invalid)?;
        super::checks::aliases(&req.aliases)?;
        for a in &req.aliases {
            model::validate_endpoint_name(a)
                .map_err(|e| AgentError::Invalid(e.replace("container name", "alias")))?;
        }
        super::checks::published(&req.publish, &self.settings)?;
        let netns: PathBuf = match (&req.netns, req.pid) {
            (Some(p), None) => p.clone(),
            (None, Some(pid)) => format!("/proc/{pid}/ns/net").into(),
            _ => {
                return Err(AgentError::Invalid(
                    "give exactly one of --netns or --pid".into(),
                ));
            }
        };
        if let Some(m) = req.mac
            && !m.is_host()
        {
            return Err(AgentError::Invalid(format!(
                "invalid MAC address {m}: not a unicast address"
            )));
        }
        if !ovl_netlink::netns::is_netns(&netns) {
            return Err(AgentError::Invalid(format!(
                "{} is not a network namespace",
                netns.display()
            )));
        }
        let me = self.settings.host_id.clone();
        let net =
            self.store.network(&req.network).await?.ok_or_else(|| {
                AgentError::NotFound(format!("network {} not found", req.network))
            })?;
        let id = req.name.clone();
        let (rec, created) = match self.store.endpoint(&net.name, &id).await? {
            Some(e) if e.host == me => {
                // The same name in another namespace would move the live interface out of
                // its container: refused. The same namespace again is a no-op.
                if let Some(a) = self.local.get(&net.name, &id)
                    && local::netns_key(&netns).ok().as_deref() != Some(a.netns_key.as_str())
                {
                    return Err(AgentError::Conflict(format!(
                        "name {id} is already attached on network {} to {}; detach it first",
                        net.name,
                        a.netns.display()
                    )));
                }
                (e, false)
            }
            Some(e) => {
                return Err(AgentError::Conflict(format!(
                    "name {} is already used on network {} (on host {})",
                    id, net.name, e.host
                )));
            }
            None => {
                if let Some(m) = req.mac
                    && self.view().endpoints_on(&net.name).any(|e| e.mac == m)
                {
                    return Err(AgentError::Conflict(format!(
                        "MAC {m} is already used on network {}",
                        net.name
                    )));
                }
                let rec = self
                    .store
                    .create_endpoint_with_addr(&net, &id, req.ip, |ip| EndpointRecord {
                        id: id.clone(),
                        network: net.name.clone(),
                        host: me.clone(),
                        name: req.name.clone(),
                        aliases: req.aliases.clone(),
                        ip,
                        mac: req.mac.unwrap_or_else(|| ipam::mac_for(ip)),
                        publish: req.publish.clone(),
                    })
                    .await?;
                tracing::debug!(took = ?t0.elapsed(), "attach: address claimed and endpoint recorded");
                (rec, true)
            }
        };
        let plumbed = match self.plumb(&net, &rec, &netns, Plug::Netns).await {
            Ok(p) => p,
            Err(e) => {
                let cleanup = if created {
                    vec![self.forget_step(&rec).await]
                } else {
                    Vec::new()
                };
                return Err(self
                    .undo(format!("attaching {id} to {}", net.name), e, cleanup)
                    .await);
            }
        };
        let mut att = self
            .local
            .get(&net.name, &id)
            .ok_or_else(|| AgentError::Internal(format!("attachment {id} vanished")))?;
        let gateway_ifname = if net.internal {
            None
        } else {
            let r = {
                let _g = self.rec.lock().await;
                self.attach_gateway(&netns, &att.netns_key, &rec.publish)
                    .await
            };
            match r {
                Ok(ifname) => Some(ifname),
                Err(e) => {
                    // Nothing half-made: undo the overlay side too.
                    let mut cleanup = vec![
                        self.unplumb(&net.name, &id, true)
                            .await
                            .err()
                            .map(|u| format!("removing the interfaces of {id}: {u}")),
                    ];
                    if created {
                        cleanup.push(self.forget_step(&rec).await);
                    }
                    return Err(self
                        .undo(format!("attaching {id} to {}", net.name), e, cleanup)
                        .await);
                }
            }
        };
        att.hosts_file = match self.names.prepare_netns_etc(&netns) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(netns = %netns.display(), error = %e, "preparing /etc/netns files");
                None
            }
        };
        if let Err(e) = self.local.insert(att) {
            let mut cleanup = vec![
                self.unplumb(&net.name, &id, true)
                    .await
                    .err()
                    .map(|u| format!("removing the interfaces of {id}: {u}")),
            ];
            if created {
                cleanup.push(self.forget_step(&rec).await);
            }
            return Err(self
                .undo(
                    format!("attaching {id} to {}", net.name),
                    AgentError::io("recording the attachment in the state dir", e),
                    cleanup,
                )
                .await);
        }
        // Names before returning: `ip netns exec X ping peer.net` works right after attach.
        self.sync_names().await;
        tracing::info!(network = %net.name, endpoint = %id, ip = %rec.ip, ifname = %plumbed.ifname, took = ?t0.elapsed(), "attached");
        Counters::add(&self.counters.attaches, 1);
        Ok(AttachReply {
            endpoint: rec,
            ifname: plumbed.ifname,
            mtu: plumbed.mtu,
            prefix_len: net.subnet.prefix(),
            gateway_ifname,
        })
    }

    /// `overlayctl detach`: removes the interfaces, the record and the address. Idempotent.
    pub async fn detach(&self, req: DetachRequest) -> Result<DetachReply> {
        let id = req.name.clone();
        let rec = self.store.endpoint(&req.network, &id).await?;
        if let Some(r) = &rec
            && r.host != self.settings.host_id
        {
            return Err(AgentError::Conflict(format!(
                "{} on network {} lives on host {}: detach it there",
                id, req.network, r.host
            )));
        }
        // Noted before the interface goes, so the record goes too even if the KV fails
        // after that or the agent dies (a reconcile pass finishes it, see records.rs).
        let here = self.local.get(&req.network, &id).is_some();
        if here {
            self.local
                .begin_detach(&req.network, &id)
                .map_err(|e| AgentError::io(format!("noting the detach of {id}"), e))?;
        }
        if let Err(e) = self.unplumb(&req.network, &id, true).await {
            if here && self.local.get(&req.network, &id).is_some() {
                // Still attached: nothing to finish later.
                self.end_detach(&req.network, &id);
            }
            return Err(e);
        }
        let removed = match self.store.delete_endpoint(&req.network, &id).await {
            Ok(r) => r.is_some(),
            Err(e) if here => {
                // Done as far as the user is concerned: the rest is the agent's, kept on disk.
                tracing::warn!(network = %req.network, endpoint = %id, error = %e, "detached; the record is removed when the KV answers again");
                self.sync_names().await;
                return Ok(DetachReply {
                    removed: true,
                    deferred: true,
                });
            }
            Err(e) => return Err(e.into()),
        };
        if here {
            self.end_detach(&req.network, &id);
        }
        self.sync_names().await;
        if removed {
            tracing::info!(network = %req.network, endpoint = %id, "detached");
            Counters::add(&self.counters.detaches, 1);
        }
        Ok(DetachReply {
            removed,
            deferred: false,
        })
    }

    /// Removes an endpoint record this operation created, and its address claim.
    async fn forget_step(&self, rec: &EndpointRecord) -> Option<String> {
        // delete_endpoint releases the address with the record.
        self.store
            .delete_endpoint(&rec.network, &rec.id)
            .await
            .err()
            .map(|e| format!("removing the record of {} on {}: {e}", rec.id, rec.network))
    }

    /// The error of a failed operation, with the cleanup steps that failed in turn (logged and
    /// counted: what they name is left behind).
    async fn undo(&self, op: String, error: AgentError, steps: Vec<Option<String>>) -> AgentError {
        let cleanup: Vec<String> = steps.into_iter().flatten().collect();
        if cleanup.is_empty() {
            return error;
        }
        for c in &cleanup {
            tracing::error!(%op, cleanup = %c, "cleaning up after a failed operation");
        }
        Counters::add(&self.counters.rollback_failures, cleanup.len() as u64);
        AgentError::Rollback {
            op,
            error: Box::new(error),
            cleanup,
        }
    }

    fn overlay_subnets(&self) -> Vec<ipnetwork::Ipv4Network> {
        self.view().networks.values().map(|n| n.subnet).collect()
    }

    /// Gives the container its gateway-bridge interface (one per namespace, shared by all its
    /// non-internal attachments) and publishes its ports. The caller holds the datapath lock.
    async fn attach_gateway(
        &self,
        netns: &Path,
        nskey: &str,
        ports: &[ovl_core::PortMap],
    ) -> Result<String> {
        let first = self.gw.info().is_none();
        self.gw.ensure_with(&self.overlay_subnets()).await?;
        if first {
            // Publish the chosen subnet at once: other hosts refuse overlay subnets that
            // overlap it (the registry would only write it on its next renewal).
            if let Err(e) = self.store.put_host(&self.host_record()).await {
                tracing::warn!(error = %e, "publishing the gateway subnet");
            }
        }
        let ep = self.gw.attach(nskey, netns).await?;
        if !ports.is_empty() {
            self.gw.publish(nskey, ports).await?;
        }
        Ok(ep.ifname)
    }

    /// Removes the gateway interface when no non-internal attachment of the namespace is
    /// left, else republishes the remaining attachments' ports.
    async fn detach_gateway(&self, nskey: &str) -> Result<()> {
        let rest: Vec<Attachment> = self
            .local
            .in_netns(nskey)
            .into_iter()
            .filter(|a| !a.network.internal)
            .collect();
        if rest.is_empty() {
            return Ok(self.gw.detach(nskey).await?);
        }
        let ports: Vec<ovl_gateway::PortMap> = rest
            .iter()
            .flat_map(|a| a.endpoint.publish.iter().copied())
            .collect();
        self.gw.unpublish(nskey).await?;
        if !ports.is_empty() {
            self.gw.publish(nskey, &ports).await?;
        }
        Ok(())
    }
}
