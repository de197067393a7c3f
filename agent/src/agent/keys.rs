//! This host's WireGuard key: `overlayctl keys rotate`, and a revocation noticed in the KV.

use super::Agent;
use crate::{
    api::types::KeyInfo,
    error::{AgentError, Result},
    tunnel::TunnelError,
};

impl From<TunnelError> for AgentError {
    fn from(e: TunnelError) -> Self {
        AgentError::Internal(e.to_string())
    }
}

impl Agent {
    /// `overlayctl keys rotate`: a new key pair, in use by this host's WireGuard at once and
    /// published in its record, so the other hosts take it within one watch event; ends a
    /// revocation. The KV must answer: a key the others cannot learn would cut this host off.
    pub async fn rotate_key(&self) -> Result<KeyInfo> {
        let _g = self.rec.lock().await;
        let wg = self.tunnel.rotate().await?;
        self.store.put_host(&self.host_record()).await?;
        tracing::info!(public_key = %wg.public_key, "new WireGuard key published");
        self.kick();
        Ok(KeyInfo {
            host: self.settings.host_id.clone(),
            public_key: wg.public_key,
            kind: wg.kind,
            port: wg.port,
        })
    }

    /// The host record in the KV has no key although this agent published `public_key`: an
    /// operator removed it. The key is revoked (not published again); the host takes part
    /// in no encrypted network until `overlayctl keys rotate`. Returns whether it was news.
    pub fn key_removed(&self, public_key: &str) -> bool {
        match self.tunnel.revoke(public_key) {
            Ok(news) => {
                if news {
                    self.kick();
                }
                news
            }
            Err(e) => {
                tracing::warn!(error = %e, "revoking this host's WireGuard key");
                false
            }
        }
    }

    /// This host's WireGuard as it stands.
    pub fn tunnel_status(&self) -> crate::tunnel::TunnelStatus {
        self.tunnel.status()
    }
}
