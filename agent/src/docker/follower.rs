//! The Engine API side of the plugin: container names into the KV (the plugin protocol
//! carries none), and every cluster network present in this host's dockerd (created once,
//! present everywhere; see the module docs of `docker`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use ovl_core::NetworkRecord;
use ovl_docker::{
    ContainerNames, DockerWatcher, EarlyNames, WatchEvent,
    engine::{DockerNetwork, NetworkCreate},
    identity::PoolId,
};

use super::{DockerPlugin, Engine, temp_ifname};

/// What to do with one network of this host's dockerd. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SyncOp {
    /// Create the cluster network here.
    Create(NetworkCreate),
    /// Remove the Docker network and create it again as the cluster has it (it was created
    /// here with another subnet or without the cluster's labels, and no container uses it
    /// yet: checked before acting).
    Recreate {
        /// Docker's NetworkID here.
        id: String,
        /// How the cluster has it.
        spec: NetworkCreate,
    },
    /// Remove a Docker network whose cluster network is gone (unless containers use it:
    /// checked before acting).
    Remove {
        /// Docker's NetworkID here.
        id: String,
        /// Its name.
        name: String,
    },
}

/// The Docker network a cluster network should be.
pub(super) fn spec_of(net: &NetworkRecord) -> NetworkCreate {
    NetworkCreate {
        name: net.name.clone(),
        subnet: net.subnet,
        gateway: net.gateway,
        internal: net.internal,
        labels: net.labels.clone(),
        options: net.options.clone(),
    }
}

/// The steps that make `here` (this dockerd's networks of our driver) match `cluster`.
/// `binding` are the NetworkIDs created here whose name is not bound yet (left alone).
pub(super) fn plan_sync<'a>(
    cluster: impl IntoIterator<Item = &'a NetworkRecord>,
    here: &[DockerNetwork],
    binding: &[String],
) -> Vec<SyncOp> {
    let mut ops = Vec::new();
    let by_name: BTreeMap<&str, &DockerNetwork> =
        here.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut known = BTreeSet::new();
    for net in cluster {
        known.insert(net.name.as_str());
        let spec = spec_of(net);
        match by_name.get(net.name.as_str()) {
            None => ops.push(SyncOp::Create(spec)),
            Some(d) if binding.contains(&d.id) => {}
            Some(d) => {
                // Typed here before the cluster's arrived, or with other options: Docker shows
                // what it was created with, so it is made again as the cluster has it.
                let differs = d.subnet != Some(net.subnet)
                    || d.gateway != Some(net.gateway)
                    || d.internal != net.internal
                    || d.options != net.options
                    || (!net.labels.is_empty() && d.labels != net.labels);
                if differs {
                    ops.push(SyncOp::Recreate {
                        id: d.id.clone(),
                        spec,
                    });
                }
            }
        }
    }
    for d in here {
        if !known.contains(d.name.as_str()) && !binding.contains(&d.id) {
            ops.push(SyncOp::Remove {
                id: d.id.clone(),
                name: d.name.clone(),
            });
        }
    }
    ops
}

impl DockerPlugin {
    /// Applies container names from the watcher to the endpoint record and the attachment.
    /// Returns whether the KV now holds them.
    async fn apply_names(&self, c: &ContainerNames) -> bool {
        let Some(net) = self.cache.get(&c.network_id).and_then(|d| d.name) else {
            return true; // not ours (or already gone)
        };
        if let Some(mut a) = self.agent.local().get(&net, &c.endpoint_id)
            && (a.hosts_file != c.hosts_path
                || a.endpoint.name != c.container_name
                || a.endpoint.aliases != c.aliases)
        {
            a.hosts_file = c.hosts_path.clone();
            a.endpoint.name = c.container_name.clone();
            a.endpoint.aliases = c.aliases.clone();
            if let Err(e) = self.agent.local().insert(a) {
                tracing::warn!(network = %net, endpoint = %c.endpoint_id, error = %e, "keeping container names locally; retrying");
                return false;
            }
            self.agent.kick();
        }
        match self.agent.store().endpoint(&net, &c.endpoint_id).await {
            Ok(Some(mut rec)) => {
                if rec.name == c.container_name && rec.aliases == c.aliases {
                    return true;
                }
                rec.name = c.container_name.clone();
                rec.aliases = c.aliases.clone();
                match self.agent.store().put_endpoint(&rec).await {
                    Ok(()) => {
                        tracing::info!(network = %net, endpoint = %c.endpoint_id, name = %c.container_name, aliases = ?c.aliases, "container names recorded");
                        self.agent.kick();
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "recording container names; retrying");
                        false
                    }
                }
            }
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "reading endpoint for container names; retrying");
                false
            }
        }
    }

    /// Names of a container that is still starting (see [`WatchEvent::Connecting`]): recorded
    /// at once, so peers can resolve it by the time `docker run` returns. The inspect that
    /// follows confirms or corrects them.
    async fn apply_early(&self, e: &EarlyNames) {
        let Some(net) = self.cache.get(&e.network_id).and_then(|d| d.name) else {
            return;
        };
        let endpoint_id = match &e.endpoint_id {
            Some(id) => id.clone(),
            None => {
                // dockerd logs `connect` after our Join returned, so this container's
                // endpoint is among the joined ones still without a name; when it is the only
                // one on the network, it is this container's. Otherwise wait for the inspect.
                let unnamed: Vec<String> = self
                    .agent
                    .local()
                    .all()
                    .into_iter()
                    .filter(|a| {
                        a.network.name == net
                            && a.endpoint.name.is_empty()
                            && a.ifname == temp_ifname(&a.endpoint.id)
                    })
                    .map(|a| a.endpoint.id)
                    .collect();
                match unnamed.as_slice() {
                    [one] => one.clone(),
                    _ => return,
                }
            }
        };
        // An inspect already named it: that is authoritative, and an early event that comes
        // after it (Compose connects a container to several networks) must not take its
        // aliases away.
        if self
            .agent
            .local()
            .get(&net, &endpoint_id)
            .is_some_and(|a| !a.endpoint.name.is_empty())
        {
            return;
        }
        // Known only from the inspect; keep what an earlier one found.
        let hosts_path = self
            .agent
            .local()
            .get(&net, &endpoint_id)
            .and_then(|a| a.hosts_file);
        let c = ContainerNames {
            endpoint_id,
            network_id: e.network_id.clone(),
            network_name: e.network_name.clone(),
            container_id: e.container_id.clone(),
            container_name: e.container_name.clone(),
            aliases: e.aliases.clone(),
            container_pid: None,
            sandbox_key: None,
            ip_address: None,
            hosts_path,
        };
        self.apply_names(&c).await;
    }

    /// Follows the Engine API: names into the KV (retried until they are there) and the
    /// cluster's networks into this dockerd.
    pub(super) async fn follow(self: Arc<Self>, socket: PathBuf) {
        let watcher = loop {
            match DockerWatcher::connect_driver(&socket, ovl_docker::watcher::DRIVER_NAME).await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(socket = %socket.display(), error = %e, "Docker Engine API not reachable; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        let engine = Engine {
            names: watcher.network_names(),
            networks: watcher.networks(),
        };
        *self.engine.lock().expect("engine lock") = Some(engine.clone());
        if self.agent.settings().docker_network_sync {
            tokio::spawn(self.clone().sync_loop(engine));
        }
        let (mut rx, _task) = watcher.spawn();
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    None => return,
                    Some(WatchEvent::Connecting(e)) => self.apply_early(&e).await,
                    Some(WatchEvent::Added(c)) => {
                        let done = self.apply_names(&c).await;
                        let mut w = self.wanted.lock().expect("wanted lock");
                        if done { w.remove(&c.endpoint_id); } else { w.insert(c.endpoint_id.clone(), c); }
                    }
                    Some(WatchEvent::Removed(c)) => {
                        self.wanted.lock().expect("wanted lock").remove(&c.endpoint_id);
                    }
                    Some(WatchEvent::Synced) | Some(WatchEvent::Disconnected(_)) => {}
                },
                _ = tick.tick() => {
                    let todo: Vec<ContainerNames> = self.wanted.lock().expect("wanted lock").values().cloned().collect();
                    for c in todo {
                        if self.apply_names(&c).await {
                            self.wanted.lock().expect("wanted lock").remove(&c.endpoint_id);
                        }
                    }
                }
            }
        }
    }

    /// Keeps every cluster network present in this dockerd: a pass on every change of the
    /// cluster's networks, on a local create or removal, and every 5 s.
    async fn sync_loop(self: Arc<Self>, engine: Engine) {
        let mut views = self.agent.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut seen: Option<imbl::OrdMap<String, NetworkRecord>> = None;
        loop {
            tokio::select! {
                r = views.changed() => {
                    if r.is_err() { return; }
                    let now = views.borrow_and_update().networks.clone();
                    if seen.as_ref() == Some(&now) { continue; }
                    seen = Some(now);
                }
                _ = self.sync_kick.notified() => {},
                _ = tick.tick() => {},
            }
            if !self.agent.view_ready() {
                continue;
            }
            if let Err(e) = self.sync_networks(&engine).await {
                tracing::warn!(error = %e, "keeping cluster networks in Docker");
            }
        }
    }

    /// One pass of [`DockerPlugin::sync_loop`].
    async fn sync_networks(&self, engine: &Engine) -> Result<(), ovl_docker::DockerError> {
        let cluster = self.agent.view().networks.clone();
        let here = engine.networks.list().await?;
        self.record_labels(&cluster, &here).await;
        let binding: Vec<String> = self
            .cache
            .all()
            .into_iter()
            .filter(|d| d.name.is_none())
            .map(|d| d.network_id)
            .collect();
        for op in plan_sync(cluster.values(), &here, &binding) {
            match op {
                SyncOp::Create(spec) => {
                    // The view may lag behind a removal: creating the network here from it
                    // would make dockerd ask the plugin for it and bring it back in the
                    // cluster. Ask the KV.
                    match self.agent.store().network(&spec.name).await {
                        Ok(Some(_)) => {}
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::debug!(network = %spec.name, error = %e, "checking before creating a Docker network");
                            continue;
                        }
                    }
                    match engine.networks.create(&spec).await {
                        Ok(id) => {
                            tracing::info!(network = %spec.name, subnet = %spec.subnet, %id, "cluster network created in Docker");
                            self.dedupe(engine, &spec.name, &id).await?;
                        }
                        Err(e) => {
                            tracing::warn!(network = %spec.name, error = %e, "creating a cluster network in Docker")
                        }
                    }
                }
                SyncOp::Recreate { id, spec } => {
                    let Some(d) = engine.networks.inspect(&id).await? else {
                        continue;
                    };
                    if !d.containers.is_empty() {
                        tracing::warn!(network = %spec.name, containers = ?d.containers,
                            "the Docker network here differs from the cluster's (subnet or labels) but containers use it: kept as is");
                        continue;
                    }
                    self.remove_here(engine, &id).await?;
                    let new = engine.networks.create(&spec).await?;
                    tracing::info!(network = %spec.name, subnet = %spec.subnet, old = %id, %new, "Docker network recreated as the cluster has it");
                    self.dedupe(engine, &spec.name, &new).await?;
                }
                SyncOp::Remove { id, name } => {
                    // The view may lag behind a network just created: ask the KV.
                    match self.agent.store().network(&name).await {
                        Ok(None) => {}
                        Ok(Some(_)) => continue,
                        Err(e) => {
                            tracing::debug!(network = %name, error = %e, "checking before removing a Docker network");
                            continue;
                        }
                    }
                    let Some(d) = engine.networks.inspect(&id).await? else {
                        continue;
                    };
                    if !d.containers.is_empty() {
                        tracing::warn!(network = %name, containers = ?d.containers,
                            "the cluster network is gone but containers here use it: kept");
                        continue;
                    }
                    self.remove_here(engine, &id).await?;
                    tracing::info!(network = %name, %id, "cluster network gone: removed from Docker");
                }
            }
        }
        Ok(())
    }

    /// Engines before 25 accept a second network of the same name unless the client asks
    /// them to check (the Engine API models here are newer and have no such field), so a
    /// user's `docker network create` racing ours can leave two: ours goes.
    async fn dedupe(
        &self,
        engine: &Engine,
        name: &str,
        ours: &str,
    ) -> Result<(), ovl_docker::DockerError> {
        let same = engine
            .networks
            .list()
            .await?
            .into_iter()
            .filter(|d| d.name == name)
            .count();
        if same > 1 {
            tracing::info!(
                network = name,
                id = ours,
                "a network of that name was created here meanwhile: ours removed"
            );
            self.remove_here(engine, ours).await?;
        }
        Ok(())
    }

    /// Removes Docker network `id` on the follower's own behalf: its `DeleteNetwork` leaves
    /// the cluster network alone.
    async fn remove_here(&self, engine: &Engine, id: &str) -> Result<(), ovl_docker::DockerError> {
        self.removing
            .lock()
            .expect("removing lock")
            .insert(id.to_string());
        let r = engine.networks.remove(id).await;
        if r.is_err() {
            self.removing.lock().expect("removing lock").remove(id);
        }
        r
    }

    /// Writes the labels and options of networks created on this host (by a user or
    /// Compose, through a pool of this host) into their cluster record, so the other hosts
    /// show them too.
    async fn record_labels(
        &self,
        cluster: &imbl::OrdMap<String, NetworkRecord>,
        here: &[DockerNetwork],
    ) {
        for d in here {
            let Some(net) = cluster.get(&d.name) else {
                continue;
            };
            if !net.labels.is_empty() || d.labels.is_empty() {
                continue;
            }
            let created_here = self
                .cache
                .get(&d.id)
                .is_some_and(|c| matches!(c.pool_id.parse::<PoolId>(), Ok(PoolId::Pending { .. })));
            if !created_here {
                continue;
            }
            match self
                .agent
                .store()
                .set_network_labels(&d.name, &d.labels, &net.options)
                .await
            {
                Ok(true) => {
                    tracing::info!(network = %d.name, labels = ?d.labels, "network labels recorded for every host")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(network = %d.name, error = %e, "recording network labels")
                }
            }
        }
    }
}
