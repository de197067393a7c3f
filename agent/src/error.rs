//! Errors of the agent's operations, with their sources, and one mapping to control API
//! status codes ([`AgentError::status`]).

use ovl_core::StoreError;

/// An operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// Does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A dependency is unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The cluster store refused or failed.
    #[error("{}", store_message(.0))]
    Store(#[from] StoreError),
    /// The gateway bridge refused or failed.
    #[error("gateway: {0}")]
    Gateway(#[from] ovl_gateway::Error),
    /// The datapath refused or failed.
    #[error("datapath: {0}")]
    Datapath(#[from] crate::datapath::DatapathError),
    /// An operation failed and so did part of undoing it: what is left is named.
    #[error("{op}: {error}; cleaning up also failed: {}", cleanup.join("; "))]
    Rollback {
        /// What was being done.
        op: String,
        /// Why it failed.
        error: Box<AgentError>,
        /// The cleanup steps that failed, with their errors.
        cleanup: Vec<String>,
    },
    /// A local file or system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

fn store_message(e: &StoreError) -> String {
    match e {
        StoreError::Kv(k) if k.is_unreachable() => {
            format!("{k}; the operation needs the KV store, try again when it is back")
        }
        other => other.to_string(),
    }
}

impl AgentError {
    /// HTTP status of the error on the control API.
    pub fn status(&self) -> u16 {
        match self {
            AgentError::Invalid(_) => 400,
            AgentError::NotFound(_) => 404,
            AgentError::Conflict(_) => 409,
            AgentError::Unavailable(_) => 503,
            AgentError::Store(e) => match e {
                StoreError::Invalid(_) => 400,
                StoreError::NotFound(_) => 404,
                StoreError::Conflict(_) | StoreError::Exhausted(_) => 409,
                StoreError::Contention(_) => 503,
                StoreError::Kv(k) if k.is_unreachable() => 503,
                _ => 500,
            },
            AgentError::Gateway(e) => match e {
                ovl_gateway::Error::PortInUse { .. }
                | ovl_gateway::Error::InvalidSubnet { .. }
                | ovl_gateway::Error::InvalidPort { .. } => 409,
                _ => 500,
            },
            AgentError::Datapath(e) => match e.kind() {
                ovl_model::ErrorKind::Invalid => 400,
                ovl_model::ErrorKind::NotFound => 404,
                ovl_model::ErrorKind::Conflict => 409,
                ovl_model::ErrorKind::Internal => 500,
            },
            AgentError::Rollback { error, .. } => error.status(),
            AgentError::Io { .. } | AgentError::Internal(_) => 500,
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result type of agent operations.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
