//! The KV key schema. Every key the agent reads or writes is built here.
//!
//! ```text
//! /ovl/v1/hosts/<host>              HostRecord (kept after the host dies)
//! /ovl/v1/alive/<host>              AliveRecord, attached to the host's lease
//! /ovl/v1/networks/<net>            NetworkRecord
//! /ovl/v1/vnis/<vni>                claim: network name
//! /ovl/v1/subnets                   index: every network's subnet (one key, CAS-updated)
//! /ovl/v1/addrs/<net>/<ip>          claim: the endpoint (or "gateway") holding the address
//! /ovl/v1/endpoints/<net>/<id>      EndpointRecord
//! /ovl/v1/docker/pools/<token>      DockerPool: a Docker RequestPool not bound to a name yet
//! /ovl/v1/health/<host>             HealthRow: what the host's probes found, on its lease
//! /ovl/v1/probes/<host>/<id>        ProbeTask for a host during `overlayctl probe`, on the
//!                                   asker's lease
//! /ovl/v1/probe-answers/<id>/<host> ProbeAnswer of that host, on its lease
//! ```
//!
//! The subnet index holds every network's subnet by network name, and each reserved
//! [`crate::DockerPool`]'s subnet under `pending:<token>`.

use std::net::Ipv4Addr;

/// Prefix of everything this project stores.
pub const ROOT: &str = "/ovl/v1/";
/// Prefix of host records.
pub const HOSTS: &str = "/ovl/v1/hosts/";
/// Prefix of liveness records.
pub const ALIVE: &str = "/ovl/v1/alive/";
/// Prefix of network records.
pub const NETWORKS: &str = "/ovl/v1/networks/";
/// Prefix of VNI claims.
pub const VNIS: &str = "/ovl/v1/vnis/";
/// The subnet index key.
pub const SUBNETS: &str = "/ovl/v1/subnets";
/// Prefix of address claims.
pub const ADDRS: &str = "/ovl/v1/addrs/";
/// Prefix of endpoint records.
pub const ENDPOINTS: &str = "/ovl/v1/endpoints/";
/// Prefix of Docker pool reservations.
pub const DOCKER_POOLS: &str = "/ovl/v1/docker/pools/";

/// Prefix of health matrix rows.
pub const HEALTH: &str = "/ovl/v1/health/";

/// Prefix of probe tasks.
pub const PROBES: &str = "/ovl/v1/probes/";
/// Prefix of probe answers.
pub const PROBE_ANSWERS: &str = "/ovl/v1/probe-answers/";

/// Prefix of the probe tasks for `host`.
pub fn probe_tasks(host: &str) -> String {
    format!("{PROBES}{host}/")
}

/// Key of a probe task for `host`.
pub fn probe_task(host: &str, id: u16) -> String {
    format!("{PROBES}{host}/{id}")
}

/// Key of `host`'s answer to probe `id`.
pub fn probe_answer(id: u16, host: &str) -> String {
    format!("{PROBE_ANSWERS}{id}/{host}")
}

/// The prefixes a [`crate::ClusterView`] is built from: the address and VNI claims, the
/// subnet index and Docker's pools (more than half the keys of a large cluster) are not read.
pub const VIEW: [&str; 4] = [HOSTS, ALIVE, NETWORKS, ENDPOINTS];

/// Key of a Docker pool reservation.
pub fn docker_pool(token: &str) -> String {
    format!("{DOCKER_POOLS}{token}")
}

/// Key of a host's health matrix row.
pub fn health(host: &str) -> String {
    format!("{HEALTH}{host}")
}

/// Key of a host record.
pub fn host(id: &str) -> String {
    format!("{HOSTS}{id}")
}

/// Key of a host's liveness record.
pub fn alive(id: &str) -> String {
    format!("{ALIVE}{id}")
}

/// Key of a network record.
pub fn network(name: &str) -> String {
    format!("{NETWORKS}{name}")
}

/// Key of a VNI claim.
pub fn vni(vni: u32) -> String {
    format!("{VNIS}{vni}")
}

/// Prefix of a network's address claims.
pub fn addrs_of(net: &str) -> String {
    format!("{ADDRS}{net}/")
}

/// Key of one address claim.
pub fn addr(net: &str, ip: Ipv4Addr) -> String {
    format!("{ADDRS}{net}/{ip}")
}

/// Prefix of a network's endpoints.
pub fn endpoints_of(net: &str) -> String {
    format!("{ENDPOINTS}{net}/")
}

/// Key of one endpoint.
pub fn endpoint(net: &str, id: &str) -> String {
    format!("{ENDPOINTS}{net}/{id}")
}

/// What a key under [`ROOT`] refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// A host record.
    Host(&'a str),
    /// A liveness record.
    Alive(&'a str),
    /// A network record.
    Network(&'a str),
    /// An endpoint record: network, endpoint id.
    Endpoint(&'a str, &'a str),
    /// Anything else (claims, indexes).
    Other,
}

/// Classifies a key (pure; used to apply watch events to a [`crate::ClusterView`]).
pub fn classify(key: &str) -> KeyRef<'_> {
    if let Some(id) = key.strip_prefix(HOSTS) {
        KeyRef::Host(id)
    } else if let Some(id) = key.strip_prefix(ALIVE) {
        KeyRef::Alive(id)
    } else if let Some(name) = key.strip_prefix(NETWORKS) {
        KeyRef::Network(name)
    } else if let Some(rest) = key.strip_prefix(ENDPOINTS) {
        match rest.split_once('/') {
            Some((net, id)) if !net.is_empty() && !id.is_empty() => KeyRef::Endpoint(net, id),
            _ => KeyRef::Other,
        }
    } else {
        KeyRef::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_roundtrips_builders() {
        assert_eq!(classify(&host("h1")), KeyRef::Host("h1"));
        assert_eq!(classify(&alive("h1")), KeyRef::Alive("h1"));
        assert_eq!(classify(&network("net1")), KeyRef::Network("net1"));
        assert_eq!(
            classify(&endpoint("net1", "c1")),
            KeyRef::Endpoint("net1", "c1")
        );
        assert_eq!(classify(&vni(4096)), KeyRef::Other);
        assert_eq!(classify(SUBNETS), KeyRef::Other);
        assert_eq!(classify("/ovl/v1/endpoints/net1"), KeyRef::Other);
    }

    #[test]
    fn network_prefixes_do_not_collide() {
        // "net1/" must not match endpoints of "net10".
        assert!(!endpoint("net10", "a").starts_with(&endpoints_of("net1")));
        assert!(!addr("net10", Ipv4Addr::new(10, 0, 0, 2)).starts_with(&addrs_of("net1")));
    }
}
