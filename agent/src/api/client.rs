//! The control API client used by `overlayctl`: HTTP/1.1 over the unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use super::types::ErrorBody;

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach overlay-agent at {}: {source} (is the agent running? use --socket or OVERLAY_SOCKET)", socket.display())]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The agent's message.
        message: String,
    },
    /// The conversation broke down.
    #[error("talking to overlay-agent at {}: {reason}", socket.display())]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A control API client.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the agent listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Client {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    /// `GET path` whose reply is a stream of JSON lines (`overlayctl monitor`): each line
    /// goes to `line` as it arrives, until the agent ends the stream or `line` returns
    /// `false`.
    pub async fn get_lines(
        &self,
        path: &str,
        mut line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let proto = |reason: String| ClientError::Protocol {
            socket: self.socket.clone(),
            reason,
        };
        let resp = self.send(Method::GET, path, Vec::new()).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status >= 400 {
            let bytes = body
                .collect()
                .await
                .map_err(|e| proto(e.to_string()))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| proto(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = pending.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&l[..l.len() - 1]);
                if !text.is_empty() && !line(&text) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let proto = |reason: String| ClientError::Protocol {
            socket: self.socket.clone(),
            reason,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| proto(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "overlay-agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| proto(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| proto(e.to_string()))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let proto = |reason: String| ClientError::Protocol {
            socket: self.socket.clone(),
            reason,
        };
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| proto(e.to_string()))?,
            None => Vec::new(),
        };
        let resp = self.send(method, path, bytes).await?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| proto(e.to_string()))?
            .to_bytes();
        if status >= 400 {
            return Err(api_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| proto(format!("bad reply: {e}")))
    }
}

/// The agent's error reply as a client error.
fn api_error(status: u16, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    ClientError::Api { status, message }
}
