//! Encrypted networks on an eBPF host: handed to the kernel datapath.
//!
//! The eBPF path encapsulates in its tc programs through one collect-metadata vxlan device
//! on the plain VXLAN port; the tunnel key it sets has no destination port, so it cannot
//! put an encrypted network's VXLAN on its own port, which is what routes it into
//! WireGuard. Encrypted networks therefore take the kernel datapath on every host (a
//! bridge and a vxlan device on the encrypted port, in the network's sandbox): WireGuard,
//! not the encapsulation, bounds their speed (see docs/benchmarks.md), and both datapaths
//! put the same VXLAN on the wire, so eBPF and kernel hosts share encrypted networks as
//! they share plain ones. Plain networks stay on the eBPF path.
//!
//! [`Split`] routes by the network spec's VXLAN port: each half sees only its own networks
//! in `converge` and `report`, so neither removes the other's endpoints. The kernel half
//! keeps its sandboxes under a directory of its own (`<run-dir>/dp-encrypted`), which the
//! eBPF path's start-up purge of the kernel datapath does not touch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ovl_model::{Attached, Desired, EndpointSpec, EndpointStatus, MacAddr, NetworkSpec};

use super::{Converged, Datapath, Details, DpResult, DroppedFrame, Report};

/// The eBPF path for plain networks, the kernel path for encrypted ones.
pub struct Split {
    fast: Arc<dyn Datapath>,
    encrypted: Arc<dyn Datapath>,
    port: u16,
    /// Networks known to be encrypted (from the last pass and attaches).
    nets: Mutex<BTreeSet<String>>,
}

impl Split {
    /// `fast` for every network but those on VXLAN port `encrypted_port`, which go to
    /// `encrypted`.
    pub fn new(fast: Arc<dyn Datapath>, encrypted: Arc<dyn Datapath>, encrypted_port: u16) -> Self {
        Split {
            fast,
            encrypted,
            port: encrypted_port,
            nets: Mutex::default(),
        }
    }

    /// `desired` cut in two: (plain, encrypted). Remembers the encrypted networks.
    fn halves(&self, desired: &Desired) -> (Desired, Desired) {
        let (enc, plain): (BTreeMap<_, _>, BTreeMap<_, _>) = desired
            .networks
            .clone()
            .into_iter()
            .partition(|(_, n)| n.spec.vxlan_port == self.port);
        self.nets
            .lock()
            .expect("nets lock")
            .extend(enc.keys().cloned());
        (Desired { networks: plain }, Desired { networks: enc })
    }

    fn is_encrypted(&self, network: &str) -> bool {
        self.nets.lock().expect("nets lock").contains(network)
    }
}

#[async_trait::async_trait]
impl Datapath for Split {
    fn mode(&self) -> &'static str {
        self.fast.mode()
    }

    async fn converge(&self, desired: &Desired) -> DpResult<Converged> {
        let (plain, enc) = self.halves(desired);
        let mut done = self.fast.converge(&plain).await?;
        let more = self.encrypted.converge(&enc).await?;
        done.applied += more.applied;
        done.failed.extend(more.failed);
        done.endpoints.extend(more.endpoints);
        Ok(done)
    }

    async fn report(&self, desired: &Desired) -> DpResult<Report> {
        let (plain, enc) = self.halves(desired);
        let mut out = self.fast.report(&plain).await?;
        let more = self.encrypted.report(&enc).await?;
        out.networks.extend(more.networks);
        out.endpoints.extend(more.endpoints);
        Ok(out)
    }

    async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> DpResult<Attached> {
        if spec.vxlan_port == self.port {
            self.nets
                .lock()
                .expect("nets lock")
                .insert(spec.name.clone());
            self.encrypted.attach(spec, ep).await
        } else {
            self.fast.attach(spec, ep).await
        }
    }

    async fn detach(&self, network: &str, endpoint_id: &str) -> DpResult<()> {
        if self.is_encrypted(network) {
            self.encrypted.detach(network, endpoint_id).await
        } else {
            self.fast.detach(network, endpoint_id).await
        }
    }

    async fn announce(
        &self,
        network: &str,
        peers: &[(std::net::Ipv4Addr, MacAddr)],
    ) -> DpResult<()> {
        if self.is_encrypted(network) {
            self.encrypted.announce(network, peers).await
        } else {
            self.fast.announce(network, peers).await
        }
    }

    fn endpoint_status(&self) -> BTreeMap<(String, String), EndpointStatus> {
        let mut all = self.fast.endpoint_status();
        all.extend(self.encrypted.endpoint_status());
        all
    }

    fn drops(&self) -> Option<tokio::sync::broadcast::Receiver<DroppedFrame>> {
        // Encrypted networks run on the kernel path, which only counts its drops.
        self.fast.drops()
    }

    async fn details(&self) -> Details {
        let mut d = self.fast.details().await;
        if let Details::Ebpf { encrypted, .. } = &mut d
            && let Details::Kernel(k) = self.encrypted.details().await
        {
            *encrypted = Some(Box::new(k));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeDatapath;
    use ovl_model::DesiredNetwork;

    fn net(name: &str, port: u16) -> (String, DesiredNetwork) {
        let spec = NetworkSpec {
            name: name.into(),
            vni: 4096,
            subnet: "10.60.0.0/24".parse().unwrap(),
            mtu: 1390,
            local_vtep: "198.18.0.11".parse().unwrap(),
            vxlan_port: port,
        };
        (
            name.into(),
            DesiredNetwork {
                spec,
                peers: vec![],
                flood: BTreeSet::new(),
                local_endpoints: BTreeMap::new(),
            },
        )
    }

    #[tokio::test]
    async fn each_half_sees_only_its_networks() {
        let fast = Arc::new(FakeDatapath::default());
        let enc = Arc::new(FakeDatapath::default());
        let split = Split::new(fast.clone(), enc.clone(), 4790);
        let want = Desired {
            networks: [net("plain", 4789), net("sec", 4790)].into_iter().collect(),
        };
        split.converge(&want).await.unwrap();
        let seen = |d: &FakeDatapath| -> Vec<String> {
            let last = d.last.lock().unwrap().clone().expect("a pass");
            last.networks.keys().cloned().collect()
        };
        assert_eq!(seen(&fast), ["plain"]);
        assert_eq!(seen(&enc), ["sec"]);
        assert!(split.is_encrypted("sec") && !split.is_encrypted("plain"));
    }
}
