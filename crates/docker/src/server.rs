//! The plugin transport: HTTP/1.1 over a unix socket, one `POST /<Interface>.<Method>` per call.
//!
//! [`dispatch`] is the whole protocol as a function from (path, body) to (status, body); the
//! socket server around it only moves bytes. Status codes:
//!
//! | situation | status | body |
//! |---|---|---|
//! | success | 200 | the method's response |
//! | malformed JSON, wrong field types, invalid values (bad CIDR, missing ID) | 400 | `{"Err":m,"Error":m}` |
//! | backend [`PluginError`] | 400/409/500/503 | `{"Err":m,"Error":m}` |
//! | unknown method | 404 | `{"Err":m,"Error":m}` |
//! | not `POST` | 405 | `{"Err":m,"Error":m}` |
//!
//! Errors use a non-200 status carrying the message in both `Err` (read by dockerd's generic
//! plugin client for every non-200 reply, and by the NetworkDriver decoder) and `Error` (read by
//! the IPAM decoder), so the message reaches the user whichever path dockerd takes
//! (`Error response from daemon: IpamDriver.RequestPool: <message>`). A backend "not found" is
//! deliberately **not** 404: dockerd reads 404 as "method not implemented" and silently skips
//! optional methods such as `ProgramExternalConnectivity`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ipnetwork::IpNetwork;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::task::JoinSet;

use crate::backend::*;
use crate::error::DockerError;
use crate::options::{self, GATEWAY_LABEL, MAC_ADDRESS, OptionError, REQUEST_ADDRESS_TYPE};
use crate::wire::*;

/// Largest request body accepted. Real requests are a few hundred bytes.
pub const MAX_BODY: usize = 1 << 20;

/// Scope we report: per-host data store (a `global` scope would need a cluster store).
pub const SCOPE: &str = "local";
/// Connectivity scope we report: networks span hosts.
pub const CONNECTIVITY_SCOPE: &str = "global";

/// A reply ready to be written: status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
}

impl Reply {
    fn ok<T: Serialize>(v: &T) -> Self {
        match serde_json::to_vec(v) {
            Ok(body) => Self { status: 200, body },
            Err(e) => Self::error(500, format!("encoding response: {e}")),
        }
    }

    fn error(status: u16, msg: impl Into<String>) -> Self {
        let body = serde_json::to_vec(&ErrorResponse::new(msg))
            .unwrap_or_else(|_| b"{\"Err\":\"internal error\"}".to_vec());
        Self { status, body }
    }

    fn from_plugin_error(method: &str, e: &PluginError) -> Self {
        let status = match e {
            PluginError::Invalid(_) => 400,
            PluginError::Conflict(_) => 409,
            PluginError::Unavailable(_) => 503,
            // Not 404: that means "unimplemented method" to dockerd.
            PluginError::NotFound(_) | PluginError::Internal(_) => 500,
        };
        tracing::warn!(method, error = %e, "plugin call failed");
        Self::error(status, e.to_string())
    }

    /// The error message of an error reply (`Err`), if this is one.
    pub fn error_message(&self) -> Option<String> {
        if self.status == 200 {
            return None;
        }
        serde_json::from_slice::<ErrorResponse>(&self.body)
            .ok()
            .map(|e| e.err)
    }
}

/// A request that is malformed or invalid; answered with 400 before the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BadRequest(String);

impl From<OptionError> for BadRequest {
    fn from(e: OptionError) -> Self {
        Self(e.to_string())
    }
}

fn parse<T: DeserializeOwned + Default>(method: &str, body: &[u8]) -> Result<T, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // serde would accept a JSON array as a positional struct; dockerd only sends objects.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') && first != Some(&b'n') {
        return Err(BadRequest(format!(
            "malformed {method} request: expected a JSON object"
        )));
    }
    serde_json::from_slice::<Option<T>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| BadRequest(format!("malformed {method} request: {e}")))
}

fn require_id(field: &str, v: &str) -> Result<String, BadRequest> {
    if v.is_empty() {
        return Err(BadRequest(format!("missing {field}")));
    }
    if v.len() > 128
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(BadRequest(format!("invalid {field} {v:?}")));
    }
    Ok(v.to_string())
}

fn cidr(field: &str, v: &str) -> Result<IpNetwork, BadRequest> {
    v.parse::<IpNetwork>()
        .map_err(|_| BadRequest(format!("{field}: {v:?} is not an address in CIDR form")))
        .and_then(|n| {
            if v.contains('/') {
                Ok(n)
            } else {
                Err(BadRequest(format!(
                    "{field}: {v:?} is not an address in CIDR form"
                )))
            }
        })
}

fn opt_cidr(field: &str, v: &str) -> Result<Option<IpNetwork>, BadRequest> {
    if v.is_empty() {
        Ok(None)
    } else {
        cidr(field, v).map(Some)
    }
}

/// A plain address; a CIDR form is accepted and its prefix dropped.
fn address(field: &str, v: &str) -> Result<IpAddr, BadRequest> {
    let plain = v.split('/').next().unwrap_or_default();
    if v.contains('/') {
        cidr(field, v)?;
    }
    plain
        .parse::<IpAddr>()
        .map_err(|_| BadRequest(format!("{field}: {v:?} is not an IP address")))
}

fn pools(field: &str, data: &[IpamData]) -> Result<Vec<PoolData>, BadRequest> {
    data.iter()
        .map(|d| {
            let pool = cidr(&format!("{field}.Pool"), &d.pool)?;
            let gateway = opt_cidr(&format!("{field}.Gateway"), &d.gateway)?;
            let aux_addresses = d
                .aux_addresses
                .iter()
                .map(|(k, v)| Ok((k.clone(), cidr(&format!("{field}.AuxAddresses.{k}"), v)?)))
                .collect::<Result<BTreeMap<_, _>, BadRequest>>()?;
            Ok(PoolData {
                address_space: d.address_space.clone(),
                pool,
                gateway,
                aux_addresses,
            })
        })
        .collect()
}

fn network_id(id: &str) -> Result<String, BadRequest> {
    require_id("NetworkID", id)
}

fn endpoint_ref(r: &EndpointRequest) -> Result<EndpointRef, BadRequest> {
    Ok(EndpointRef {
        network_id: network_id(&r.network_id)?,
        endpoint_id: require_id("EndpointID", &r.endpoint_id)?,
    })
}

/// Turns one plugin call into a reply. `path` is the request path (`/NetworkDriver.Join`).
pub async fn dispatch(backend: &dyn PluginBackend, path: &str, body: &[u8]) -> Reply {
    let method = path.trim_start_matches('/');
    let start = std::time::Instant::now();
    let reply = dispatch_method(backend, method, body).await;
    // Docker waits inside `docker run` for these: their time is the user's time.
    tracing::debug!(
        method,
        status = reply.status,
        us = start.elapsed().as_micros() as u64,
        "plugin call served"
    );
    // The exact bodies, for comparing engines (`OVERLAY_LOG=ovl_docker=trace`).
    tracing::trace!(
        method,
        request = %String::from_utf8_lossy(body),
        response = %String::from_utf8_lossy(&reply.body),
        "plugin call bodies"
    );
    reply
}

async fn dispatch_method(backend: &dyn PluginBackend, method: &str, body: &[u8]) -> Reply {
    match dispatch_inner(backend, method, body).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => Reply::from_plugin_error(method, &e),
        Err(Dispatch::Bad(BadRequest(msg))) => {
            tracing::warn!(method, error = %msg, "rejected malformed plugin request");
            Reply::error(400, msg)
        }
        Err(Dispatch::Unknown) => Reply::error(404, format!("unknown plugin method {method:?}")),
    }
}

enum Dispatch {
    Bad(BadRequest),
    Unknown,
}

impl From<BadRequest> for Dispatch {
    fn from(b: BadRequest) -> Self {
        Self::Bad(b)
    }
}

impl From<OptionError> for Dispatch {
    fn from(e: OptionError) -> Self {
        Self::Bad(e.into())
    }
}

type Outcome = Result<PluginResult<Reply>, Dispatch>;

fn done<T: Serialize>(r: PluginResult<T>) -> PluginResult<Reply> {
    r.map(|v| Reply::ok(&v))
}

async fn dispatch_inner(backend: &dyn PluginBackend, method: &str, body: &[u8]) -> Outcome {
    Ok(match method {
        "Plugin.Activate" => Ok(Reply::ok(&ActivateResponse {
            implements: vec![NETWORK_DRIVER.to_string(), IPAM_DRIVER.to_string()],
        })),

        // ---------------- NetworkDriver ----------------
        "NetworkDriver.GetCapabilities" => Ok(Reply::ok(&CapabilitiesResponse {
            scope: SCOPE.to_string(),
            connectivity_scope: CONNECTIVITY_SCOPE.to_string(),
            gw_alloc_checker: true,
        })),
        "NetworkDriver.GwAllocCheck" => {
            let r: GwAllocCheckRequest = parse(method, body)?;
            let req = GatewayCheck {
                generic: options::generic_options(&r.options)?,
                internal: options::internal(&r.options)?,
                enable_ipv6: options::enable_ipv6(&r.options)?,
                raw_options: r.options,
            };
            done(
                backend
                    .gateway_alloc_check(req)
                    .await
                    .map(|skip| GwAllocCheckResponse {
                        skip_ipv4: skip.v4,
                        skip_ipv6: skip.v6,
                    }),
            )
        }
        "NetworkDriver.CreateNetwork" => {
            let r: CreateNetworkRequest = parse(method, body)?;
            let req = CreateNetwork {
                network_id: network_id(&r.network_id)?,
                generic: options::generic_options(&r.options)?,
                ipv4: pools("IPv4Data", &r.ipv4_data)?,
                ipv6: pools("IPv6Data", &r.ipv6_data)?,
                mtu: options::mtu(&r.options)?,
                internal: options::internal(&r.options)?,
                enable_ipv6: options::enable_ipv6(&r.options)?,
                raw_options: r.options,
            };
            done(backend.create_network(req).await.map(|()| EmptyResponse {}))
        }
        "NetworkDriver.DeleteNetwork" => {
            let r: NetworkIdRequest = parse(method, body)?;
            let id = network_id(&r.network_id)?;
            done(backend.delete_network(id).await.map(|()| EmptyResponse {}))
        }
        "NetworkDriver.AllocateNetwork" => {
            let r: AllocateNetworkRequest = parse(method, body)?;
            let req = AllocateNetwork {
                network_id: network_id(&r.network_id)?,
                options: r.options,
                ipv4: pools("IPv4Data", &r.ipv4_data)?,
                ipv6: pools("IPv6Data", &r.ipv6_data)?,
            };
            done(
                backend
                    .allocate_network(req)
                    .await
                    .map(|options| AllocateNetworkResponse { options }),
            )
        }
        "NetworkDriver.FreeNetwork" => {
            let r: NetworkIdRequest = parse(method, body)?;
            let id = network_id(&r.network_id)?;
            done(backend.free_network(id).await.map(|()| EmptyResponse {}))
        }
        "NetworkDriver.CreateEndpoint" => {
            let r: CreateEndpointRequest = parse(method, body)?;
            let mac_given = !r.interface.mac_address.is_empty();
            let req = CreateEndpoint {
                network_id: network_id(&r.network_id)?,
                endpoint_id: require_id("EndpointID", &r.endpoint_id)?,
                address: opt_cidr("Interface.Address", &r.interface.address)?,
                address_v6: opt_cidr("Interface.AddressIPv6", &r.interface.address_ipv6)?,
                mac_address: mac_given.then(|| r.interface.mac_address.clone()),
                port_map: options::port_map(&r.options)?,
                exposed_ports: options::exposed_ports(&r.options)?,
                dns_servers: options::dns_servers(&r.options)?,
                raw_options: r.options,
            };
            done(backend.create_endpoint(req).await.map(|created| {
                // Only fill in what libnetwork left empty: changing a value it set makes it
                // roll the endpoint back ("driver modified interface").
                let mac = created.mac_address.filter(|m| !mac_given && !m.is_empty());
                CreateEndpointResponse {
                    interface: mac.map(|mac_address| EndpointInterface {
                        mac_address,
                        ..Default::default()
                    }),
                }
            }))
        }
        "NetworkDriver.EndpointOperInfo" => {
            let r: EndpointRequest = parse(method, body)?;
            let req = endpoint_ref(&r)?;
            done(
                backend
                    .endpoint_info(req)
                    .await
                    .map(|value| EndpointInfoResponse { value }),
            )
        }
        "NetworkDriver.DeleteEndpoint" => {
            let r: EndpointRequest = parse(method, body)?;
            let req = endpoint_ref(&r)?;
            done(
                backend
                    .delete_endpoint(req)
                    .await
                    .map(|()| EmptyResponse {}),
            )
        }
        "NetworkDriver.Join" => {
            let r: JoinRequest = parse(method, body)?;
            if r.sandbox_key.is_empty() {
                return Err(BadRequest("missing SandboxKey".into()).into());
            }
            let req = Join {
                network_id: network_id(&r.network_id)?,
                endpoint_id: require_id("EndpointID", &r.endpoint_id)?,
                sandbox_key: PathBuf::from(&r.sandbox_key),
                port_map: options::port_map(&r.options)?,
                exposed_ports: options::exposed_ports(&r.options)?,
                raw_options: r.options,
            };
            match backend.join(req).await {
                Ok(j) => join_response(j),
                Err(e) => Err(e),
            }
        }
        "NetworkDriver.Leave" => {
            let r: EndpointRequest = parse(method, body)?;
            let req = endpoint_ref(&r)?;
            done(backend.leave(req).await.map(|()| EmptyResponse {}))
        }
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
            let r: DiscoveryRequest = parse(method, body)?;
            let node = (r.discovery_type == 1)
                .then(|| {
                    let addr = r.discovery_data.get("Address")?.as_str()?.to_string();
                    let is_self = r
                        .discovery_data
                        .get("Self")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false);
                    Some(NodeDiscovery {
                        address: addr,
                        is_self,
                    })
                })
                .flatten();
            let req = Discovery {
                discovery_type: r.discovery_type,
                node,
                raw: r.discovery_data,
            };
            let res = if method == "NetworkDriver.DiscoverNew" {
                backend.discover_new(req).await
            } else {
                backend.discover_delete(req).await
            };
            done(res.map(|()| EmptyResponse {}))
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            let r: ProgramExternalConnectivityRequest = parse(method, body)?;
            let req = ExternalConnectivity {
                network_id: network_id(&r.network_id)?,
                endpoint_id: require_id("EndpointID", &r.endpoint_id)?,
                port_map: options::port_map(&r.options)?,
                exposed_ports: options::exposed_ports(&r.options)?,
            };
            done(
                backend
                    .program_external_connectivity(req)
                    .await
                    .map(|()| EmptyResponse {}),
            )
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            let r: EndpointRequest = parse(method, body)?;
            let req = endpoint_ref(&r)?;
            done(
                backend
                    .revoke_external_connectivity(req)
                    .await
                    .map(|()| EmptyResponse {}),
            )
        }

        // ---------------- IpamDriver ----------------
        "IpamDriver.GetCapabilities" => {
            let c = backend.ipam_capabilities();
            Ok(Reply::ok(&IpamCapabilitiesResponse {
                requires_mac_address: c.requires_mac_address,
                requires_request_replay: c.requires_request_replay,
            }))
        }
        "IpamDriver.GetDefaultAddressSpaces" => {
            let (local, global) = backend.default_address_spaces();
            Ok(Reply::ok(&AddressSpacesResponse {
                local_default_address_space: local,
                global_default_address_space: global,
            }))
        }
        "IpamDriver.RequestPool" => {
            let r: RequestPoolRequest = parse(method, body)?;
            let pool = opt_cidr("Pool", &r.pool)?;
            let sub_pool = opt_cidr("SubPool", &r.sub_pool)?;
            match (pool, sub_pool) {
                (None, Some(_)) => {
                    return Err(BadRequest("SubPool given without Pool".into()).into());
                }
                (Some(p), Some(s)) if !(p.contains(s.network()) && s.prefix() >= p.prefix()) => {
                    return Err(BadRequest(format!("SubPool {s} is not inside Pool {p}")).into());
                }
                _ => {}
            }
            for (field, n) in [("Pool", pool), ("SubPool", sub_pool)] {
                if let Some(n) = n
                    && n.is_ipv6() != r.v6
                {
                    return Err(
                        BadRequest(format!("{field} {n} does not match V6={}", r.v6)).into(),
                    );
                }
            }
            let req = PoolRequest {
                address_space: r.address_space,
                pool,
                sub_pool,
                options: r.options,
                v6: r.v6,
            };
            match backend.request_pool(req).await {
                Ok(a) => {
                    let mut data = a.data;
                    if let Some(gw) = a.gateway {
                        data.insert(GATEWAY_LABEL.to_string(), gw.to_string());
                    }
                    Ok(Reply::ok(&RequestPoolResponse {
                        pool_id: a.pool_id,
                        pool: a.pool.to_string(),
                        data,
                    }))
                }
                Err(e) => Err(e),
            }
        }
        "IpamDriver.ReleasePool" => {
            let r: ReleasePoolRequest = parse(method, body)?;
            if r.pool_id.is_empty() {
                return Err(BadRequest("missing PoolID".into()).into());
            }
            done(
                backend
                    .release_pool(r.pool_id)
                    .await
                    .map(|()| EmptyResponse {}),
            )
        }
        "IpamDriver.RequestAddress" => {
            let r: RequestAddressRequest = parse(method, body)?;
            if r.pool_id.is_empty() {
                return Err(BadRequest("missing PoolID".into()).into());
            }
            let addr = if r.address.is_empty() {
                None
            } else {
                Some(address("Address", &r.address)?)
            };
            let kind = match r.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) {
                Some(GATEWAY_LABEL) => AddressKind::Gateway,
                _ => AddressKind::Endpoint,
            };
            let req = AddressRequest {
                pool_id: r.pool_id,
                address: addr,
                kind,
                mac_address: r.options.get(MAC_ADDRESS).cloned(),
                options: r.options,
            };
            done(
                backend
                    .request_address(req)
                    .await
                    .map(|a| RequestAddressResponse {
                        address: a.address.to_string(),
                        data: a.data,
                    }),
            )
        }
        "IpamDriver.ReleaseAddress" => {
            let r: ReleaseAddressRequest = parse(method, body)?;
            if r.pool_id.is_empty() {
                return Err(BadRequest("missing PoolID".into()).into());
            }
            if r.address.is_empty() {
                return Err(BadRequest("missing Address".into()).into());
            }
            let req = AddressRelease {
                pool_id: r.pool_id,
                address: address("Address", &r.address)?,
            };
            done(
                backend
                    .release_address(req)
                    .await
                    .map(|()| EmptyResponse {}),
            )
        }
        _ => return Err(Dispatch::Unknown),
    })
}

fn join_response(j: Joined) -> PluginResult<Reply> {
    if j.src_name.is_empty() || j.src_name.len() > 15 {
        return Err(PluginError::Internal(format!(
            "backend returned an invalid interface name {:?} (1..=15 bytes)",
            j.src_name
        )));
    }
    Ok(Reply::ok(&JoinResponse {
        interface_name: Some(InterfaceName {
            src_name: j.src_name,
            dst_prefix: if j.dst_prefix.is_empty() {
                "eth".to_string()
            } else {
                j.dst_prefix
            },
        }),
        gateway: j.gateway.map(|g| g.to_string()).unwrap_or_default(),
        gateway_ipv6: j.gateway_v6.map(|g| g.to_string()).unwrap_or_default(),
        static_routes: j
            .static_routes
            .into_iter()
            .map(|r| StaticRoute {
                destination: r.destination.to_string(),
                route_type: if r.next_hop.is_some() {
                    ROUTE_NEXTHOP
                } else {
                    ROUTE_CONNECTED
                },
                next_hop: r.next_hop.map(|h| h.to_string()).unwrap_or_default(),
            })
            .collect(),
        disable_gateway_service: j.disable_gateway_service,
    }))
}

// ---------------------------------------------------------------------------------------------
// Socket server
// ---------------------------------------------------------------------------------------------

/// A bound plugin socket, ready to serve.
#[derive(Debug)]
pub struct PluginServer {
    listener: UnixListener,
    path: PathBuf,
}

impl PluginServer {
    /// Binds `socket_path` (normally `/run/docker/plugins/ovl.sock`, which makes the plugin name
    /// `ovl`): creates the parent directory, replaces a stale socket left by a dead process,
    /// refuses to replace a live socket or a non-socket file, and sets mode 0660.
    pub async fn bind(socket_path: &Path) -> Result<Self, DockerError> {
        Self::bind_with(socket_path, None).await
    }

    /// [`PluginServer::bind`] with group owner `gid` (dockerd runs as root; the group lets
    /// other tools talk to the plugin). The socket is bound under a temporary name, given its
    /// group and mode 0660, then renamed into place: nobody finds it with other permissions.
    pub async fn bind_with(socket_path: &Path, gid: Option<u32>) -> Result<Self, DockerError> {
        if let Some(parent) = socket_path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| DockerError::io(format!("creating {}", parent.display()), e))?;
        }
        match tokio::fs::symlink_metadata(socket_path).await {
            Ok(meta) if meta.file_type().is_socket() => {
                if tokio::net::UnixStream::connect(socket_path).await.is_ok() {
                    return Err(DockerError::SocketInUse(socket_path.to_path_buf()));
                }
                tokio::fs::remove_file(socket_path).await.map_err(|e| {
                    DockerError::io(
                        format!("removing stale socket {}", socket_path.display()),
                        e,
                    )
                })?;
            }
            Ok(_) => return Err(DockerError::NotASocket(socket_path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DockerError::io(
                    format!("inspecting {}", socket_path.display()),
                    e,
                ));
            }
        }
        let name = socket_path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let tmp = socket_path.with_file_name(format!(".{name}.{}.new", std::process::id()));
        match tokio::fs::remove_file(&tmp).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DockerError::io(format!("removing {}", tmp.display()), e));
            }
            _ => {}
        }
        let listener = UnixListener::bind(&tmp)
            .map_err(|e| DockerError::io(format!("binding {}", tmp.display()), e))?;
        let placed = (|| {
            if gid.is_some() {
                std::os::unix::fs::chown(&tmp, None, gid)?;
            }
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
            std::fs::rename(&tmp, socket_path)
        })();
        if let Err(e) = placed {
            if let Err(rm) = std::fs::remove_file(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %rm, "removing a half-made socket");
            }
            return Err(DockerError::io(
                format!("placing {} (group, mode 0660)", socket_path.display()),
                e,
            ));
        }
        Ok(Self {
            listener,
            path: socket_path.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes, then closes the listener, aborts open connections and
    /// removes the socket file.
    pub async fn run_until(
        self,
        backend: Arc<dyn PluginBackend>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DockerError> {
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let backend = backend.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let backend = backend.clone();
                                async move { Ok::<_, Infallible>(handle(backend, req).await) }
                            });
                            if let Err(e) = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await
                            {
                                tracing::debug!(error = %e, "plugin connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept on plugin socket failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        };
        conns.abort_all();
        drop(self.listener);
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(DockerError::io(
                format!("removing {}", self.path.display()),
                e,
            ));
        }
        result
    }

    /// Serves forever.
    pub async fn run(self, backend: Arc<dyn PluginBackend>) -> Result<(), DockerError> {
        self.run_until(backend, std::future::pending()).await
    }
}

/// Binds `socket_path` (see [`PluginServer::bind`]) and serves `backend` forever.
pub async fn serve(socket_path: &Path, backend: Arc<dyn PluginBackend>) -> Result<(), DockerError> {
    serve_with(socket_path, backend, None).await
}

/// [`serve`] with the socket's group owner (see [`PluginServer::bind_with`]).
pub async fn serve_with(
    socket_path: &Path,
    backend: Arc<dyn PluginBackend>,
    gid: Option<u32>,
) -> Result<(), DockerError> {
    PluginServer::bind_with(socket_path, gid)
        .await?
        .run(backend)
        .await
}

async fn handle(backend: Arc<dyn PluginBackend>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = if req.method() != Method::POST {
        Reply::error(
            405,
            format!("method {} not allowed; use POST", req.method()),
        )
    } else {
        let path = req.uri().path().to_string();
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => dispatch(backend.as_ref(), &path, &body.to_bytes()).await,
            Err(e) => Reply::error(400, format!("reading request body: {e}")),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(PLUGIN_CONTENT_TYPE),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn joined() -> Joined {
        Joined {
            src_name: "ovlc0123456789".into(),
            dst_prefix: String::new(),
            gateway: Some("198.18.130.1".parse().unwrap()),
            gateway_v6: None,
            static_routes: vec![
                Route {
                    destination: "10.1.0.0/16".parse().unwrap(),
                    next_hop: Some("198.18.130.1".parse().unwrap()),
                },
                Route {
                    destination: "169.254.1.1/32".parse().unwrap(),
                    next_hop: None,
                },
            ],
            disable_gateway_service: true,
        }
    }

    #[test]
    fn join_response_shapes() {
        let r = join_response(joined()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            json!({
                "InterfaceName": {"SrcName": "ovlc0123456789", "DstPrefix": "eth"},
                "Gateway": "198.18.130.1",
                "StaticRoutes": [
                    {"Destination": "10.1.0.0/16", "RouteType": 0, "NextHop": "198.18.130.1"},
                    {"Destination": "169.254.1.1/32", "RouteType": 1}
                ],
                "DisableGatewayService": true
            })
        );
        for bad in ["", "this-name-is-too-long"] {
            let e = join_response(Joined {
                src_name: bad.into(),
                ..joined()
            })
            .unwrap_err();
            assert!(matches!(e, PluginError::Internal(_)), "{bad:?}");
        }
    }

    #[test]
    fn error_statuses() {
        for (e, status) in [
            (PluginError::Invalid("x".into()), 400),
            (PluginError::Conflict("x".into()), 409),
            (PluginError::Unavailable("x".into()), 503),
            (PluginError::NotFound("x".into()), 500),
            (PluginError::Internal("x".into()), 500),
        ] {
            let r = Reply::from_plugin_error("M", &e);
            assert_eq!(r.status, status, "{e:?}");
            assert_eq!(r.error_message().unwrap(), e.to_string());
        }
        assert_eq!(Reply::ok(&EmptyResponse {}).error_message(), None);
    }
}
