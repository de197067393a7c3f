//! Persisted gateway state (`<state_dir>/gateway.json`): the chosen subnet (so it is stable
//! across restarts), the endpoint address allocations and the published ports. Written
//! atomically (temp file + rename).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ruleset::{PortMap, Published, RulesetSpec};
use crate::subnet;

/// File name inside the state dir.
pub const STATE_FILE: &str = "gateway.json";

/// One endpoint's attachment to the gateway bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Address on the gateway subnet.
    pub ip: Ipv4Addr,
    /// MAC of the container-side interface.
    pub mac: String,
    /// Interface name inside the container (`ethN`).
    pub ifname: String,
    /// Host-side veth name.
    pub host_ifname: String,
    /// Published ports of this endpoint.
    #[serde(default)]
    pub ports: Vec<PortMap>,
}

/// The whole persisted state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// The gateway subnet once chosen.
    pub subnet: Option<Ipv4Network>,
    /// Endpoints by id.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// VTEPs admitted to send VXLAN (`None`: never given; kept so a restart during a KV
    /// outage keeps admitting the hosts last known).
    #[serde(default)]
    pub vteps: Option<std::collections::BTreeSet<std::net::Ipv4Addr>>,
}

impl State {
    /// Loads the state file, or an empty state when there is none.
    pub fn load(dir: &Path) -> Result<State> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::State {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
                version: 1,
                ..State::default()
            }),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes the state file atomically, readable by its owner only (it maps containers to
    /// addresses and published ports): mode 0600 in a directory of mode 0700.
    pub fn save(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating state dir {}", dir.display()), e))?;
        let path = dir.join(STATE_FILE);
        let tmp: PathBuf = dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                f.write_all(&bytes)
            })
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("renaming {} into place", tmp.display()), e))
    }

    /// Allocates the next free address of the subnet (excluding those in use).
    pub fn allocate(&self, subnet: Ipv4Network) -> Result<Ipv4Addr> {
        let taken: Vec<Ipv4Addr> = self.endpoints.values().map(|e| e.ip).collect();
        subnet::next_free_address(subnet, &taken).ok_or(Error::SubnetExhausted(subnet))
    }

    /// All published ports with their owner and address.
    pub fn published(&self) -> Vec<Published> {
        let mut out = Vec::new();
        for (id, ep) in &self.endpoints {
            for m in &ep.ports {
                out.push(Published {
                    endpoint: id.clone(),
                    ip: ep.ip,
                    map: *m,
                });
            }
        }
        out
    }

    /// The ruleset input for this state, when a subnet is set.
    pub fn spec(&self, bridge: &str) -> Option<RulesetSpec> {
        Some(RulesetSpec {
            bridge: bridge.to_string(),
            subnet: self.subnet?,
            published: self.published(),
        })
    }
}

/// A deterministic MAC from an IPv4 address (02:42 + the four octets, like Docker), so a
/// re-attached endpoint keeps its MAC and neighbours' caches stay right.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Host-side interface name for an endpoint (`ovl_model::ifname::gateway_port_name`).
pub fn host_ifname(endpoint_id: &str) -> String {
    ovl_model::ifname::gateway_port_name(endpoint_id)
}

/// Temporary name of the container-side veth end before it is moved and renamed.
pub fn peer_tmp_ifname(endpoint_id: &str) -> String {
    ovl_model::ifname::gateway_temp_name(endpoint_id)
}

/// Checks an endpoint id: non-empty, printable ASCII, no whitespace, at most 256 bytes.
pub fn validate_endpoint_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidEndpointId(id.to_string()));
    }
    Ok(())
}

/// The first `ethN` not in `existing`.
pub fn next_ethn(existing: &[String]) -> Option<String> {
    (0..1000)
        .map(|n| format!("eth{n}"))
        .find(|name| !existing.iter().any(|e| e == name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Proto;

    #[test]
    fn names_fit_ifnamsiz_and_are_stable() {
        let id = "0123456789abcdef".repeat(4);
        let h = host_ifname(&id);
        assert_eq!(h.len(), 14);
        assert_eq!(h, host_ifname(&id));
        assert_ne!(h, host_ifname("other"));
        assert_eq!(peer_tmp_ifname(&id).len(), 14);
        assert_ne!(peer_tmp_ifname(&id), h);
    }

    #[test]
    fn ethn() {
        assert_eq!(next_ethn(&[]).unwrap(), "eth0");
        assert_eq!(
            next_ethn(&["lo".into(), "eth0".into(), "eth2".into()]).unwrap(),
            "eth1"
        );
    }

    #[test]
    fn mac() {
        assert_eq!(
            mac_string(mac_for(Ipv4Addr::new(172, 18, 0, 2))),
            "02:42:ac:12:00:02"
        );
    }

    #[test]
    fn endpoint_ids() {
        assert!(validate_endpoint_id("abc-123").is_ok());
        assert!(validate_endpoint_id("").is_err());
        assert!(validate_endpoint_id("a b").is_err());
        assert!(validate_endpoint_id("é").is_err());
    }

    #[test]
    fn allocation_and_roundtrip() {
        let dir = std::env::temp_dir().join(format!("gwt-state-unit-{}", std::process::id()));
        let subnet: Ipv4Network = "10.1.0.0/29".parse().unwrap();
        let mut st = State::load(&dir).unwrap();
        assert_eq!(st.subnet, None);
        st.subnet = Some(subnet);
        for i in 0..5 {
            let ip = st.allocate(subnet).unwrap();
            st.endpoints.insert(
                format!("e{i}"),
                EndpointRecord {
                    ip,
                    mac: mac_string(mac_for(ip)),
                    ifname: "eth1".into(),
                    host_ifname: host_ifname(&format!("e{i}")),
                    ports: vec![],
                },
            );
        }
        assert!(matches!(
            st.allocate(subnet),
            Err(Error::SubnetExhausted(_))
        ));
        // Release one: its address is handed out again.
        let freed = st.endpoints.remove("e2").unwrap().ip;
        assert_eq!(st.allocate(subnet).unwrap(), freed);
        st.endpoints.get_mut("e1").unwrap().ports.push(PortMap {
            host_port: 80,
            port: 8080,
            proto: Proto::Tcp,
        });
        st.save(&dir).unwrap();
        let back = State::load(&dir).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.published().len(), 1);
        // Topology: owner only.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        std::fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(State::load(&dir), Err(Error::State { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
