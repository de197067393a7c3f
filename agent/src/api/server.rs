//! Routes of the control API, each a thin translation to an [`Agent`] call.

use std::{path::Path, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use ovl_core::store::NetworkRequest;
use serde::{Deserialize, de::DeserializeOwned};
use tokio::net::UnixListener;

use super::types::ErrorBody;
use crate::{agent::Agent, error::AgentError};

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// Parses a JSON body with a clear error instead of axum's default rejection.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, AgentError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AgentError::Invalid(format!("malformed request: {e}")))
}

#[derive(Deserialize)]
struct NetFilter {
    network: Option<String>,
}

#[derive(Deserialize)]
struct LookupQuery {
    name: String,
    from: String,
}

type Shared = State<Arc<Agent>>;

/// The router: every route calls one [`Agent`] verb.
pub fn router() -> Router<Arc<Agent>> {
    Router::new()
        .route(
            "/v1/status",
            get(|State(a): Shared| async move { Json(a.status()) }),
        )
        .route(
            "/v1/hosts",
            get(|State(a): Shared| async move { Json(a.hosts().await) }),
        )
        .route(
            "/v1/hosts/{id}",
            delete(
                |State(a): Shared, UrlPath(id): UrlPath<String>| async move {
                    a.forget_host(&id).await.map(Json)
                },
            ),
        )
        .route(
            "/v1/networks",
            get(|State(a): Shared| async move { a.networks().await.map(Json) }).post(
                |State(a): Shared, b: Bytes| async move {
                    let req: NetworkRequest = body(&b)?;
                    if req.reservation.is_some() {
                        return Err(AgentError::Invalid(
                            "reservation: only the Docker plugin binds reserved subnets".into(),
                        ));
                    }
                    a.create_network(req).await.map(Json)
                },
            ),
        )
        .route(
            "/v1/networks/{name}",
            get(|State(a): Shared, UrlPath(n): UrlPath<String>| async move {
                a.network(&n).await.map(Json)
            })
            .delete(|State(a): Shared, UrlPath(n): UrlPath<String>| async move {
                a.delete_network(&n).await.map(Json)
            }),
        )
        .route(
            "/v1/endpoints",
            get(|State(a): Shared, Query(f): Query<NetFilter>| async move {
                a.endpoints(f.network.as_deref()).await.map(Json)
            }),
        )
        .route(
            "/v1/attach",
            post(|State(a): Shared, b: Bytes| async move {
                let req: crate::api::types::AttachRequest = body(&b)?;
                crate::agent::checks::not_a_probe_name(&req.name)?;
                a.attach(req).await.map(Json)
            }),
        )
        .route(
            "/v1/probe",
            post(|State(a): Shared, b: Bytes| async move {
                let req = body(&b)?;
                // Its own task: a client that goes away (interrupted) must not cut the
                // probe short of removing what it made.
                tokio::spawn(async move { a.probe(req).await })
                    .await
                    .map_err(|e| crate::error::AgentError::Internal(format!("probe task: {e}")))?
                    .map(Json)
            }),
        )
        .route(
            "/v1/detach",
            post(|State(a): Shared, b: Bytes| async move { a.detach(body(&b)?).await.map(Json) }),
        )
        .route(
            "/v1/dns/lookup",
            get(
                |State(a): Shared, Query(q): Query<LookupQuery>| async move {
                    a.dns_lookup(&q.name, &q.from).await.map(Json)
                },
            ),
        )
        .route(
            "/v1/datapath",
            get(|State(a): Shared| async move { Json(a.datapath_details().await) }),
        )
        .route(
            "/v1/keys/rotate",
            post(|State(a): Shared| async move { a.rotate_key().await.map(Json) }),
        )
        .route(
            "/v1/monitor",
            get(
                |State(a): Shared, Query(f): Query<crate::monitor::Filter>| async move {
                    monitor_stream(&a, f)
                },
            ),
        )
        .route(
            "/v1/health",
            get(|State(a): Shared| async move { a.health_matrix().await.map(Json) }),
        )
        .route(
            "/v1/doctor",
            get(|State(a): Shared| async move { Json(a.doctor().await) }),
        )
        .route(
            "/v1/peers",
            get(|State(a): Shared, Query(f): Query<NetFilter>| async move {
                a.peers(f.network.as_deref()).await.map(Json)
            }),
        )
}

/// `GET /v1/monitor`: one JSON event per line, for as long as the client reads.
fn monitor_stream(agent: &Arc<Agent>, filter: crate::monitor::Filter) -> Response {
    let rx = agent.monitor(filter);
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        let mut line = serde_json::to_vec(&e).expect("events serialize");
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), rx))
    });
    (
        [("content-type", "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// Binds the control socket: refuses if another agent answers on it, replaces a stale file,
/// and restricts it to its owner (mode 0600).
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    bind_with(path, None).await
}

/// [`bind`], and with a group (`--socket-group`) the socket is also that group's, mode 0660.
/// It appears at `path` with its final owner and mode ([`crate::perms::bind_socket`]).
pub async fn bind_with(path: &Path, gid: Option<u32>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() && tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another agent is serving {}", path.display()),
        ));
    }
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    crate::perms::bind_socket(path, mode, gid)
}
