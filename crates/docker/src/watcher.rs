//! Docker Engine API watcher: which containers sit on our networks, under which names.
//!
//! The plugin protocol carries no names, so the agent learns container names, `--network-alias`
//! aliases, PIDs and sandboxes here. The watcher is level-triggered: after every (re)connect it
//! lists all running containers and reports the difference to what it reported before, then
//! follows `/events` (container `start`/`die`/`destroy`, network `connect`/`disconnect`) and
//! re-inspects the affected container. A [`WatchEvent::Synced`] marks each completed full
//! listing, so a consumer may drop entries it did not hear about since then.
//!
//! Names: Engine API 1.44 (Docker 25) and later list every name Docker's own DNS answers for an
//! endpoint in `DNSNames` (container name, `--network-alias` values, short ID, `--hostname`);
//! since 26.0 `Aliases` holds the user's aliases only. Older engines (20.10: API 1.41) have no
//! `DNSNames` and list the container's hostname (by default its 12-character short ID) among
//! the `Aliases` of user-defined networks.
//! [`ContainerNames::aliases`] is taken from `DNSNames` where the engine sends it, from
//! `Aliases` otherwise, without the short ID and the container name (see [`endpoint_aliases`]).
//!
//! API version: the clients negotiate (`/version`) and then speak the daemon's version when it
//! is older than ours (20.10 serves 1.41 and refuses newer clients).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::models::EventMessageTypeEnum;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::error::DockerError;

/// Our network driver's name (`docker network create -d ovl`).
pub const DRIVER_NAME: &str = "ovl";

/// One container endpoint on a network of our driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNames {
    /// libnetwork endpoint ID (as in the plugin calls).
    pub endpoint_id: String,
    /// Docker's per-host network ID.
    pub network_id: String,
    /// The network name (the cluster identity).
    pub network_name: String,
    /// Full container ID.
    pub container_id: String,
    /// Container name, without Docker's leading `/`.
    pub container_name: String,
    /// The endpoint's names besides the container name, as Docker's own DNS has them:
    /// `--network-alias` values and a `--hostname` other than the short ID; never the short
    /// ID. See [`endpoint_aliases`].
    pub aliases: Vec<String>,
    /// PID of the container's init process, while running.
    pub container_pid: Option<u32>,
    /// Container netns path (valid in dockerd's mount namespace).
    pub sandbox_key: Option<String>,
    /// The endpoint's IPv4 address.
    pub ip_address: Option<IpAddr>,
    /// The container's `/etc/hosts` on the host (`HostsPath`), where names are written.
    pub hosts_path: Option<PathBuf>,
}

/// A container that has just been connected to one of our networks and is still starting:
/// what the container list (dockerd's snapshot, which does not wait for the start to finish
/// as inspect does) says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyNames {
    /// Full container ID.
    pub container_id: String,
    /// Container name, without Docker's leading `/`.
    pub container_name: String,
    /// Docker's per-host network ID.
    pub network_id: String,
    /// The network name.
    pub network_name: String,
    /// `--network-alias` values (as in [`ContainerNames::aliases`]).
    pub aliases: Vec<String>,
    /// The endpoint, when the snapshot already carries it (dockerd 20.10's does not yet).
    pub endpoint_id: Option<String>,
}

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A container is being connected to one of our networks (a `connect` event, which
    /// dockerd sends after the driver's Join and before the container runs); an [`Added`]
    /// with the full data follows once it runs.
    ///
    /// [`Added`]: WatchEvent::Added
    Connecting(EarlyNames),
    /// A new endpoint, or new data for a known `endpoint_id` (replaces it).
    Added(ContainerNames),
    /// The endpoint is gone (container stopped, removed or disconnected).
    Removed(ContainerNames),
    /// A full listing completed: every live endpoint has been reported.
    Synced,
    /// The connection to dockerd broke; the watcher retries with backoff.
    Disconnected(String),
}

#[derive(Debug, Clone)]
struct NetInfo {
    name: String,
    driver: String,
}

/// Network ID -> name resolution through the Engine API, cached. IDs are never reused, so the
/// cache only needs invalidation when a network is removed.
#[derive(Debug, Clone)]
pub struct NetworkNames {
    docker: Docker,
    cache: Arc<Mutex<HashMap<String, NetInfo>>>,
}

impl NetworkNames {
    fn new(docker: Docker) -> Self {
        Self {
            docker,
            cache: Arc::default(),
        }
    }

    async fn info(&self, network_id: &str) -> Result<Option<NetInfo>, DockerError> {
        if let Some(i) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(network_id)
        {
            return Ok(Some(i.clone()));
        }
        match self.docker.inspect_network(network_id, None).await {
            Ok(n) => {
                let info = NetInfo {
                    name: n.name.unwrap_or_default(),
                    driver: n.driver.unwrap_or_default(),
                };
                // Cache by the full ID only, so a short-ID lookup cannot shadow another network.
                if n.id.as_deref() == Some(network_id) {
                    self.cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(network_id.to_string(), info.clone());
                }
                Ok(Some(info))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(DockerError::engine(
                format!("inspecting network {network_id}"),
                e,
            )),
        }
    }

    /// The name of network `network_id`, `None` if dockerd does not know it (yet: during
    /// `CreateNetwork` the network is not stored, see [`crate::identity`]).
    pub async fn resolve(&self, network_id: &str) -> Result<Option<String>, DockerError> {
        Ok(self.info(network_id).await?.map(|i| i.name))
    }

    /// Forgets a network (after it was removed).
    pub fn forget(&self, network_id: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(network_id);
    }
}

/// Follows one dockerd. See the module docs.
#[derive(Debug, Clone)]
pub struct DockerWatcher {
    socket: PathBuf,
    driver: String,
    api: Docker,
    events: Docker,
    names: NetworkNames,
}

fn connect(socket: &Path, timeout_s: u64) -> Result<Docker, DockerError> {
    Docker::connect_with_unix(
        &socket.to_string_lossy(),
        timeout_s,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| DockerError::engine(format!("connecting to {}", socket.display()), e))
}

/// A client for the dockerd at `socket` speaking the negotiated API version: the lower of the
/// daemon's and the one our models are for (bollard's default).
///
/// bollard 0.21.1 negotiates (`/version`) but then sends every request without the `/vX.Y`
/// prefix (its URL join drops it; fixed upstream after 0.21.1, bollard#737), so the daemon
/// would answer in its own newest version. The request modifier puts the prefix back.
async fn negotiated(socket: &Path, timeout_s: u64) -> Result<Docker, DockerError> {
    let d = connect(socket, timeout_s)?
        .negotiate_version()
        .await
        .map_err(|e| DockerError::engine("negotiating the API version", e))?;
    let v = d.client_version();
    let prefix = format!("/v{}.{}", v.major_version, v.minor_version);
    Ok(d.with_request_modifier(move |mut req| {
        let uri = versioned(req.uri(), &prefix);
        *req.uri_mut() = uri;
        req
    }))
}

/// `uri` with the API version `prefix` (`/v1.41`) in front of its path, unless it has one.
pub(crate) fn versioned(uri: &hyper::Uri, prefix: &str) -> hyper::Uri {
    let path = uri.path();
    let has_version = path
        .strip_prefix("/v")
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
    if has_version {
        return uri.clone();
    }
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut parts = uri.clone().into_parts();
    match format!("{prefix}{pq}").parse() {
        Ok(p) => {
            parts.path_and_query = Some(p);
            hyper::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
        }
        Err(_) => uri.clone(),
    }
}

impl DockerWatcher {
    /// A watcher of the dockerd at `socket` for networks of driver [`DRIVER_NAME`]. The API
    /// version is negotiated (dockerd 20.10 serves 1.41 and refuses newer clients) and sent
    /// with every request.
    pub async fn connect(socket: &Path) -> Result<Self, DockerError> {
        Self::connect_driver(socket, DRIVER_NAME).await
    }

    /// Like [`DockerWatcher::connect`] for another driver name.
    pub async fn connect_driver(socket: &Path, driver: &str) -> Result<Self, DockerError> {
        let api = negotiated(socket, 30).await?;
        // The event stream is one long request: no per-request timeout (reconnects handle a
        // dead daemon).
        let events = negotiated(socket, 10 * 365 * 86400).await?;
        Ok(Self {
            socket: socket.to_path_buf(),
            driver: driver.to_string(),
            names: NetworkNames::new(api.clone()),
            api,
            events,
        })
    }

    /// The network-name resolver sharing this watcher's connection and cache.
    pub fn network_names(&self) -> NetworkNames {
        self.names.clone()
    }

    /// The network API of the same dockerd.
    pub fn networks(&self) -> crate::engine::EngineNetworks {
        crate::engine::EngineNetworks::new(self.api.clone())
    }

    /// Shortcut for [`NetworkNames::resolve`].
    pub async fn network_name(&self, network_id: &str) -> Result<Option<String>, DockerError> {
        self.names.resolve(network_id).await
    }

    /// Endpoints on our networks of one container (empty if it is not running or gone).
    pub async fn inspect_container(&self, id: &str) -> Result<Vec<ContainerNames>, DockerError> {
        let c = match self.api.inspect_container(id, None).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(Vec::new()),
            Err(e) => return Err(DockerError::engine(format!("inspecting container {id}"), e)),
        };
        let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            return Ok(Vec::new());
        }
        let container_id = c.id.clone().unwrap_or_default();
        let container_name = c
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let pid = c
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        let hosts_path = c
            .hosts_path
            .clone()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let settings = c.network_settings.unwrap_or_default();
        let sandbox_key = settings.sandbox_key.filter(|s| !s.is_empty());
        let mut out = Vec::new();
        for (net_name, ep) in settings.networks.unwrap_or_default() {
            let Some(network_id) = ep.network_id.clone().filter(|s| !s.is_empty()) else {
                continue;
            };
            let Some(info) = self.names.info(&network_id).await? else {
                continue;
            };
            if info.driver != self.driver {
                continue;
            }
            let Some(endpoint_id) = ep.endpoint_id.clone().filter(|s| !s.is_empty()) else {
                continue;
            };
            out.push(ContainerNames {
                endpoint_id,
                network_id,
                network_name: if info.name.is_empty() {
                    net_name
                } else {
                    info.name
                },
                container_id: container_id.clone(),
                aliases: endpoint_aliases(&ep, &container_id, &container_name),
                container_name: container_name.clone(),
                container_pid: pid,
                sandbox_key: sandbox_key.clone(),
                ip_address: ep.ip_address.as_deref().and_then(|a| a.parse().ok()),
                hosts_path: hosts_path.clone(),
            });
        }
        Ok(out)
    }

    /// Names of a container being connected to network `network_id`, from the container
    /// list; `None` when the list does not show it on that network.
    pub async fn early_names(
        &self,
        container: &str,
        network_id: &str,
    ) -> Result<Option<EarlyNames>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("id".to_string(), vec![container.to_string()]);
        let list = self
            .api
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| DockerError::engine(format!("listing container {container}"), e))?;
        let Some(c) = list
            .into_iter()
            .find(|c| c.id.as_deref() == Some(container))
        else {
            return Ok(None);
        };
        let Some(name) = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .filter(|n| !n.is_empty())
        else {
            return Ok(None);
        };
        let Some(network_name) = self.names.resolve(network_id).await? else {
            return Ok(None);
        };
        let nets = c
            .network_settings
            .and_then(|s| s.networks)
            .unwrap_or_default();
        // Created containers list their networks by name; the IDs fill in once connected.
        let Some(ep) = nets
            .iter()
            .find(|(k, ep)| ep.network_id.as_deref() == Some(network_id) || **k == network_name)
            .map(|(_, ep)| ep)
        else {
            return Ok(None);
        };
        Ok(Some(EarlyNames {
            container_id: container.to_string(),
            aliases: endpoint_aliases(ep, container, &name),
            container_name: name,
            network_id: network_id.to_string(),
            network_name,
            endpoint_id: ep.endpoint_id.clone().filter(|s| !s.is_empty()),
        }))
    }

    /// All endpoints on our networks of all running containers.
    pub async fn snapshot(&self) -> Result<Vec<ContainerNames>, DockerError> {
        let list = self
            .api
            .list_containers(Some(ListContainersOptions::default()))
            .await
            .map_err(|e| DockerError::engine("listing containers", e))?;
        let mut out = Vec::new();
        for c in list {
            if let Some(id) = c.id {
                out.extend(self.inspect_container(&id).await?);
            }
        }
        Ok(out)
    }

    /// Runs forever (until the receiver is dropped), reporting on `tx` and reconnecting with
    /// exponential backoff (0.5 s .. 30 s) when dockerd goes away.
    pub async fn run(self, tx: mpsc::Sender<WatchEvent>) {
        let mut known: BTreeMap<String, ContainerNames> = BTreeMap::new();
        let mut backoff = Duration::from_millis(500);
        loop {
            let err = match self.session(&tx, &mut known, &mut backoff).await {
                Ok(()) => return, // receiver gone
                Err(e) => e,
            };
            tracing::warn!(socket = %self.socket.display(), error = %err, "docker watcher disconnected");
            if tx
                .send(WatchEvent::Disconnected(err.to_string()))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Spawns [`DockerWatcher::run`] and returns the event receiver.
    pub fn spawn(self) -> (mpsc::Receiver<WatchEvent>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(256);
        (rx, tokio::spawn(self.run(tx)))
    }

    /// One connection: subscribe, resync, follow. `Ok(())` means the receiver is gone.
    async fn session(
        &self,
        tx: &mpsc::Sender<WatchEvent>,
        known: &mut BTreeMap<String, ContainerNames>,
        backoff: &mut Duration,
    ) -> Result<(), DockerError> {
        // Events since just before the listing are replayed, so nothing between listing and
        // following is lost (duplicates only cause a harmless re-inspect).
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(1))
            .unwrap_or(0);
        let mut filters = HashMap::new();
        filters.insert(
            "type".to_string(),
            vec!["container".to_string(), "network".to_string()],
        );
        filters.insert(
            "event".to_string(),
            ["start", "die", "destroy", "connect", "disconnect"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        );
        let mut stream = self.events.events(Some(EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        }));

        let snapshot = self.snapshot().await?;
        let mut current: BTreeMap<String, ContainerNames> = snapshot
            .into_iter()
            .map(|c| (c.endpoint_id.clone(), c))
            .collect();
        for (id, old) in known.iter() {
            if !current.contains_key(id) && tx.send(WatchEvent::Removed(old.clone())).await.is_err()
            {
                return Ok(());
            }
        }
        for (id, new) in &current {
            if known.get(id) != Some(new) && tx.send(WatchEvent::Added(new.clone())).await.is_err()
            {
                return Ok(());
            }
        }
        std::mem::swap(known, &mut current);
        if tx.send(WatchEvent::Synced).await.is_err() {
            return Ok(());
        }
        *backoff = Duration::from_millis(500);

        while let Some(ev) = stream.next().await {
            let ev = ev.map_err(|e| DockerError::engine("reading /events", e))?;
            let action = ev.action.unwrap_or_default();
            let attrs = ev
                .actor
                .as_ref()
                .and_then(|a| a.attributes.clone())
                .unwrap_or_default();
            let actor_id = ev.actor.and_then(|a| a.id).unwrap_or_default();
            let is_network = ev.typ == Some(EventMessageTypeEnum::NETWORK);
            let container = if is_network {
                if action == "destroy" {
                    self.names.forget(&actor_id);
                    continue;
                }
                match attrs.get("container") {
                    Some(c) => c.clone(),
                    None => continue,
                }
            } else {
                actor_id.clone()
            };
            if container.is_empty() {
                continue;
            }
            // The inspect below waits until the container runs (hundreds of ms); the list
            // answers now, so peers can learn the name while the container starts.
            if is_network
                && action == "connect"
                && attrs.get("type").map(String::as_str) == Some(self.driver.as_str())
            {
                match self.early_names(&container, &actor_id).await {
                    Ok(Some(early)) => {
                        if tx.send(WatchEvent::Connecting(early)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "early names; the inspect follows"),
                }
            }
            let fresh: BTreeMap<String, ContainerNames> = self
                .inspect_container(&container)
                .await?
                .into_iter()
                .map(|c| (c.endpoint_id.clone(), c))
                .collect();
            let stale: Vec<String> = known
                .iter()
                .filter(|(id, c)| c.container_id == container && !fresh.contains_key(*id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                if let Some(old) = known.remove(&id)
                    && tx.send(WatchEvent::Removed(old)).await.is_err()
                {
                    return Ok(());
                }
            }
            for (id, new) in fresh {
                if known.get(&id) != Some(&new) {
                    known.insert(id, new.clone());
                    if tx.send(WatchEvent::Added(new)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        Err(DockerError::Harness("event stream ended".into()))
    }
}

/// The names of endpoint `ep` besides the container name: from `DNSNames` (API 1.44+, what
/// Docker's own DNS answers for it) when the engine sends it, else from `Aliases`; without the
/// short ID and the container name, sorted.
pub fn endpoint_aliases(
    ep: &bollard::models::EndpointSettings,
    container_id: &str,
    container_name: &str,
) -> Vec<String> {
    let names = match ep.dns_names.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => ep.aliases.as_deref().unwrap_or_default(),
    };
    user_aliases(names, container_id, container_name)
}

/// The user's aliases: without the container's short-ID alias (any prefix of the ID of at
/// least 12 characters) and without the container name.
pub fn user_aliases(aliases: &[String], container_id: &str, container_name: &str) -> Vec<String> {
    let mut out: Vec<String> = aliases
        .iter()
        .filter(|a| {
            !(a.len() >= 12 && container_id.starts_with(a.as_str())) && a.as_str() != container_name
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fake Engine API on a unix socket that serves API `version` and, like dockerd, refuses
    /// requests for a newer one. Records each request line.
    async fn fake_engine(
        sock: &Path,
        version: &'static str,
    ) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::UnixListener::bind(sock).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let line = head.lines().next().unwrap_or_default().to_string();
                    let path = line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    log.lock().unwrap().push(line);
                    let asked = path
                        .strip_prefix("/v")
                        .and_then(|p| p.split('/').next())
                        .map(str::to_string);
                    let newer = |a: &str| {
                        let v = |x: &str| {
                            let (m, n) = x.split_once('.').unwrap_or((x, "0"));
                            (m.parse::<u32>().unwrap_or(0), n.parse::<u32>().unwrap_or(0))
                        };
                        v(a) > v(version)
                    };
                    let (status, body) = match asked {
                        Some(a) if newer(&a) => (
                            "400 Bad Request",
                            format!(
                                r#"{{"message":"client version {a} is too new. Maximum supported API version is {version}"}}"#
                            ),
                        ),
                        _ if path.ends_with("/version") => (
                            "200 OK",
                            format!(
                                r#"{{"Version":"20.10.24","ApiVersion":"{version}","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}}"#
                            ),
                        ),
                        _ if path.contains("/containers/json") => ("200 OK", "[]".to_string()),
                        _ => (
                            "404 Not Found",
                            r#"{"message":"page not found"}"#.to_string(),
                        ),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nApi-Version: {version}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        (seen, task)
    }

    /// Against an engine that serves API 1.41 (Docker 20.10) and refuses newer clients, the
    /// watcher negotiates and then speaks 1.41; against 1.51 (Docker 28) it speaks 1.51.
    #[tokio::test]
    async fn negotiates_the_api_version() {
        for version in ["1.41", "1.45", "1.51"] {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("docker.sock");
            let (seen, task) = fake_engine(&sock, version).await;
            let w = DockerWatcher::connect(&sock).await.unwrap();
            assert!(w.snapshot().await.unwrap().is_empty());
            let lines = seen.lock().unwrap().clone();
            let list = lines
                .iter()
                .find(|l| l.contains("/containers/json"))
                .unwrap_or_else(|| panic!("{lines:?}"));
            assert!(
                list.contains(&format!("/v{version}/containers/json")),
                "{version}: {lines:?}"
            );
            task.abort();
        }
    }

    #[test]
    fn version_prefix() {
        let u = |s: &str| s.parse::<hyper::Uri>().unwrap();
        assert_eq!(
            versioned(&u("unix://2f72756e/containers/json?all=false"), "/v1.41").to_string(),
            "unix://2f72756e/v1.41/containers/json?all=false"
        );
        assert_eq!(
            versioned(&u("/events?since=1"), "/v1.51").to_string(),
            "/v1.51/events?since=1"
        );
        // Already versioned (a fixed bollard): unchanged; a path merely starting with v: not.
        assert_eq!(
            versioned(&u("unix://x/v1.45/version"), "/v1.41").to_string(),
            "unix://x/v1.45/version"
        );
        assert_eq!(
            versioned(&u("unix://x/volumes"), "/v1.41").to_string(),
            "unix://x/v1.41/volumes"
        );
    }

    /// `docker inspect -f '{{json .NetworkSettings.Networks.dktbr}}' c1` for
    /// `docker run --name c1 --hostname box1 --network dktbr --network-alias a1`, recorded from
    /// each engine in the lab (crates/docker/tests/dockerd_lab.rs prints them).
    const EP_20: &str = r#"{"IPAMConfig":null,"Links":null,"Aliases":["a1","d13554913fd4","box1"],"NetworkID":"c54474e1b4e4a53665da36e31b11b7a07c3a736f702ec85ba0d438e63caa3199","EndpointID":"022277fd475269d6221d1fdc856d043ef95304de6d003cd596c816de2786cd37","Gateway":"198.18.176.1","IPAddress":"198.18.176.2","IPPrefixLen":24,"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"MacAddress":"02:42:c6:12:b0:02","DriverOpts":null}"#;
    const EP_26: &str = r#"{"IPAMConfig":null,"Links":null,"Aliases":["a1"],"MacAddress":"02:42:c6:12:b0:02","NetworkID":"8e143aa9bdc2271a8e15f3bfc94ce87a3e61bd11795cbbb9ee10f70c474f34c8","EndpointID":"3e809476aaefadc5a3171b0cc60738df5af965d7a32527bd266b79bfbe2eb32c","Gateway":"198.18.176.1","IPAddress":"198.18.176.2","IPPrefixLen":24,"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DriverOpts":null,"DNSNames":["c1","a1","9ae0c3234b5e","box1"]}"#;
    const EP_28: &str = r#"{"IPAMConfig":null,"Links":null,"Aliases":["a1"],"MacAddress":"da:ff:e1:33:22:a9","DriverOpts":null,"GwPriority":0,"NetworkID":"cebf49eb984b8cb148aea40d5ac13c1a325661563fefc17b2d19aa910322392b","EndpointID":"93f57bacf1e91baa92a054d5531dd03099580dc71cf6fd06388ede7126727119","Gateway":"198.18.176.1","IPAddress":"198.18.176.2","IPPrefixLen":24,"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DNSNames":["c1","a1","80743270233b","box1"]}"#;

    #[test]
    fn names_from_dns_names_where_the_api_has_them() {
        let ep = |j: &str| serde_json::from_str::<bollard::models::EndpointSettings>(j).unwrap();
        // 20.10 (API 1.41): no DNSNames; Aliases carry the short ID and the hostname.
        let id20 = format!("d13554913fd4{}", "0".repeat(52));
        assert_eq!(
            endpoint_aliases(&ep(EP_20), &id20, "c1"),
            vec!["a1", "box1"]
        );
        // 26 and 28: DNSNames = name, aliases, short ID, hostname.
        let id26 = format!("9ae0c3234b5e{}", "1".repeat(52));
        assert_eq!(
            endpoint_aliases(&ep(EP_26), &id26, "c1"),
            vec!["a1", "box1"]
        );
        let id28 = format!("80743270233b{}", "2".repeat(52));
        assert_eq!(
            endpoint_aliases(&ep(EP_28), &id28, "c1"),
            vec!["a1", "box1"]
        );
        // An empty DNSNames falls back to Aliases.
        let mut e = ep(EP_26);
        e.dns_names = Some(Vec::new());
        assert_eq!(endpoint_aliases(&e, &id26, "c1"), vec!["a1"]);
    }

    #[test]
    fn aliases_drop_short_id_and_name() {
        let id = "c6475ebcb933ffca67ede02f758cb4f45ad1fda40a2c92d5c9b230fdd3d0f846";
        let a = vec![
            "c6475ebcb933".to_string(),
            "web".to_string(),
            "db".to_string(),
            "p1".to_string(),
            "web".to_string(),
            "c6475e".to_string(),
        ];
        assert_eq!(user_aliases(&a, id, "p1"), vec!["c6475e", "db", "web"]);
        assert!(user_aliases(&[], id, "p1").is_empty());
    }
}
