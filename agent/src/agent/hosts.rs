//! Host operations: `overlayctl hosts rm` (a host gone for good).

use super::Agent;
use crate::{
    api::types::ForgottenHost,
    error::{AgentError, Result},
};

impl Agent {
    /// `overlayctl hosts rm ID`: forgets a host that is gone for good (its endpoints, their
    /// addresses and its record), so every host drops its entries and no longer admits its
    /// VXLAN. Refused for this host and while the host's agent holds its lease.
    pub async fn forget_host(&self, id: &str) -> Result<ForgottenHost> {
        if id == self.settings.host_id {
            return Err(AgentError::Conflict(format!(
                "host {id} is this host: run `overlayctl hosts rm` on another one"
            )));
        }
        let removed = self.store.forget_host(id).await?;
        tracing::info!(host = %id, endpoints = removed.len(), "host forgotten");
        self.kick();
        Ok(ForgottenHost {
            id: id.to_string(),
            endpoints: removed
                .into_iter()
                .map(|e| format!("{}/{}", e.network, e.display_name()))
                .collect(),
        })
    }
}
