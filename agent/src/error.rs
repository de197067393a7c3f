//! Errors of the agent's operations, mapped to control API status codes.

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
    /// A dependency (the KV) is unreachable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Programming the kernel failed.
    #[error("datapath: {0}")]
    Datapath(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// HTTP status of the error on the control API.
    pub fn status(&self) -> u16 {
        match self {
            AgentError::Invalid(_) => 400,
            AgentError::NotFound(_) => 404,
            AgentError::Conflict(_) => 409,
            AgentError::Unavailable(_) => 503,
            AgentError::Datapath(_) | AgentError::Internal(_) => 500,
        }
    }
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => AgentError::Invalid(m),
            StoreError::Conflict(m) | StoreError::Exhausted(m) => AgentError::Conflict(m),
            StoreError::NotFound(m) => AgentError::NotFound(m),
            StoreError::Contention(_) => AgentError::Unavailable(e.to_string()),
            StoreError::Kv(k) if k.is_unreachable() => AgentError::Unavailable(format!(
                "{k}; the operation needs the KV store, try again when it is back"
            )),
            other => AgentError::Internal(other.to_string()),
        }
    }
}

impl From<crate::datapath::DatapathError> for AgentError {
    fn from(e: crate::datapath::DatapathError) -> Self {
        match e.kind() {
            ovl_model::ErrorKind::Invalid => AgentError::Invalid(e.to_string()),
            ovl_model::ErrorKind::Conflict => AgentError::Conflict(e.to_string()),
            ovl_model::ErrorKind::NotFound => AgentError::NotFound(e.to_string()),
            ovl_model::ErrorKind::Internal => AgentError::Datapath(e.to_string()),
        }
    }
}

/// Result type of agent operations.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
