//! How a Docker network on one host is mapped to the cluster-wide overlay network.
//!
//! # The problem
//! The driver reports `Scope: local`, so every host has its **own NetworkID** for the same
//! network name, and no plugin call carries the **name**:
//!
//! 1. `docker network create -d ovl --ipam-driver ovl NAME` calls, in this order,
//!    `IpamDriver.RequestPool` (AddressSpace, `--subnet`, `--ip-range`, `--ipam-opt`),
//!    `IpamDriver.RequestAddress` for the gateway (PoolID only), then
//!    `NetworkDriver.CreateNetwork` (NetworkID, `-o` options, the pool CIDR and gateway, but
//!    **not** the PoolID).
//! 2. dockerd stores the network only after `CreateNetwork` returns, so
//!    `GET /networks/{NetworkID}` fails *during* `CreateNetwork` (verified against dockerd
//!    20.10.24 by `tests/dockerd_plugin.rs`) and succeeds from then on (at `RequestAddress` for a
//!    container, `CreateEndpoint`, `Join`).
//!
//! So the pool must be chosen before the name can be known, unless the user passes it.
//!
//! # The mapping (what the backend should do)
//! At `RequestPool` time, [`identity_hint`] classifies the request:
//!
//! * [`IdentityHint::Named`]: `--ipam-opt ovl.network=NAME` was given. The backend returns the
//!   cluster subnet of NAME (creating NAME in the KV if new; a `--subnet` must then match it),
//!   with `PoolId::Network { name }`. Fully deterministic on every host; the recommended form
//!   for scripts and multi-host use.
//! * [`IdentityHint::Subnet`]: `--subnet` without a name. The backend looks the subnet up in
//!   the KV: if a cluster network owns exactly that subnet, that is the identity
//!   (`PoolId::Network`); otherwise it reserves the subnet as *pending*
//!   (`PoolId::Pending { token }`) and binds it to the name later.
//! * [`IdentityHint::Unknown`]: plain `docker network create -d ovl --ipam-driver ovl NAME`.
//!   The backend reserves a fresh, cluster-unique subnet as *pending* and returns
//!   `PoolId::Pending { token }`.
//!
//! Binding a pending pool to its name: `CreateNetwork` carries the pool CIDR, which is
//! cluster-unique, so the backend records `NetworkID -> PoolID` there. The name is then resolved
//! lazily with [`crate::watcher::NetworkNames::resolve`] (Engine API inspect, cached; it works
//! from the moment `docker network create` returns, i.e. before any container can use the
//! network) — at the first `RequestAddress` for a container (PoolID -> NetworkID -> name), at
//! `CreateEndpoint`/`Join`, or eagerly when the watcher reports the network's `create` event.
//! * If NAME is new cluster-wide, the pending subnet becomes NAME's subnet: every host agrees.
//! * If NAME already exists with another subnet (the usual case on the second host of a plain
//!   create), the backend releases the pending subnet and allocates container addresses from
//!   NAME's real subnet. libnetwork does not check that `RequestAddress` answers fall inside
//!   the pool it recorded: the container gets the address, and `docker inspect` shows it
//!   (verified against dockerd 20.10.24 in `tests/dockerd_plugin.rs`). Traffic is correct; only
//!   `docker network inspect` on that host shows the provisional subnet, and `--ip` must then be
//!   inside the provisional pool (libnetwork checks a preferred address against its record).
//!   Users who want an exact record pass `--ipam-opt ovl.network=NAME` or `--subnet` equal to
//!   NAME's subnet; the backend's messages should say so.
//!
//! PoolIDs encode the identity ([`PoolId`]) so that `RequestAddress`/`ReleaseAddress` after an
//! agent restart can be served from the KV without any in-memory table. dockerd keeps the PoolID
//! of a network for its whole life (no replay unless `RequiresRequestReplay`), so a pending
//! token must stay resolvable (token -> network, in the KV) until `ReleasePool`.
//!
//! `-o` options reach only the driver (`CreateNetwork`) and `--ipam-opt` only IPAM
//! (`RequestPool`): the name option must be given as `--ipam-opt` (verified).

use std::fmt;
use std::str::FromStr;

use ipnetwork::IpNetwork;

use crate::backend::{PluginError, PoolRequest};

/// `--ipam-opt` (and `-o`) key naming the cluster network explicitly.
pub const NETWORK_NAME_OPTION: &str = "ovl.network";

/// `--ipam-opt` key the agent's follower adds when it makes an existing cluster network present
/// in a dockerd: such a pool only ever joins that network, and never brings back one removed
/// from the cluster between the follower's look at the KV and dockerd's `RequestPool`.
pub const FOLLOW_OPTION: &str = "ovl.follow";

/// What a `RequestPool` tells about the network's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityHint {
    /// The name was given with `--ipam-opt ovl.network=NAME` (plus an optional `--subnet`).
    Named {
        /// Cluster network name.
        name: String,
        /// `--subnet`, if given (must match the network's subnet).
        subnet: Option<IpNetwork>,
        /// Asked by the follower ([`FOLLOW_OPTION`]): the network must exist already.
        follow: bool,
    },
    /// Only `--subnet` was given.
    Subnet(IpNetwork),
    /// Nothing: the identity is bound later through the NetworkID.
    Unknown,
}

/// Classifies a `RequestPool`. An invalid `ovl.network` value is a clear error.
pub fn identity_hint(req: &PoolRequest) -> Result<IdentityHint, PluginError> {
    if let Some(name) = req.options.get(NETWORK_NAME_OPTION) {
        validate_network_name(name).map_err(PluginError::Invalid)?;
        return Ok(IdentityHint::Named {
            name: name.clone(),
            subnet: req.pool,
            follow: req.options.contains_key(FOLLOW_OPTION),
        });
    }
    Ok(match req.pool {
        Some(p) => IdentityHint::Subnet(p),
        None => IdentityHint::Unknown,
    })
}

/// The one rule for network names (`ovl_model::validate_network_name`: 1-48 characters of
/// `[A-Za-z0-9_-]`, starting with a letter or digit), so a name the plugin accepts is never
/// refused later by the store or a datapath.
pub fn validate_network_name(name: &str) -> Result<(), String> {
    ovl_model::validate_network_name(name).map_err(|e| format!("{NETWORK_NAME_OPTION}: {e}"))
}

/// The recommended PoolID encoding: `ovl/net/<name>/v4|v6` or `ovl/pending/<token>/v4|v6`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PoolId {
    /// Bound to a cluster network.
    Network {
        /// Network name.
        name: String,
        /// IPv6 pool.
        v6: bool,
    },
    /// Reserved before the name was known; bound later through the NetworkID.
    Pending {
        /// Backend-chosen unique token (e.g. the reserved subnet's KV key or a random ID).
        token: String,
        /// IPv6 pool.
        v6: bool,
    },
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, id, v6) = match self {
            Self::Network { name, v6 } => ("net", name, v6),
            Self::Pending { token, v6 } => ("pending", token, v6),
        };
        write!(f, "ovl/{kind}/{id}/{}", if *v6 { "v6" } else { "v4" })
    }
}

impl FromStr for PoolId {
    type Err = PluginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PluginError::NotFound(format!("unknown pool ID {s:?}"));
        let parts: Vec<&str> = s.split('/').collect();
        let ["ovl", kind, id, fam] = parts[..] else {
            return Err(bad());
        };
        let v6 = match fam {
            "v4" => false,
            "v6" => true,
            _ => return Err(bad()),
        };
        match kind {
            "net" => {
                validate_network_name(id).map_err(|_| bad())?;
                Ok(Self::Network {
                    name: id.to_string(),
                    v6,
                })
            }
            "pending"
                if !id.is_empty()
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) =>
            {
                Ok(Self::Pending {
                    token: id.to_string(),
                    v6,
                })
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn req(pool: Option<&str>, opts: &[(&str, &str)]) -> PoolRequest {
        PoolRequest {
            address_space: "OvlLocal".into(),
            pool: pool.map(|p| p.parse().unwrap()),
            sub_pool: None,
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            v6: false,
        }
    }

    #[test]
    fn hints() {
        assert_eq!(
            identity_hint(&req(None, &[])).unwrap(),
            IdentityHint::Unknown
        );
        assert_eq!(
            identity_hint(&req(Some("10.1.0.0/24"), &[])).unwrap(),
            IdentityHint::Subnet("10.1.0.0/24".parse().unwrap())
        );
        assert_eq!(
            identity_hint(&req(Some("10.1.0.0/24"), &[(NETWORK_NAME_OPTION, "web")])).unwrap(),
            IdentityHint::Named {
                name: "web".into(),
                subnet: Some("10.1.0.0/24".parse().unwrap()),
                follow: false,
            }
        );
        assert_eq!(
            identity_hint(&req(
                None,
                &[(NETWORK_NAME_OPTION, "web"), (FOLLOW_OPTION, "1")]
            ))
            .unwrap(),
            IdentityHint::Named {
                name: "web".into(),
                subnet: None,
                follow: true,
            }
        );
        for bad in ["", "-x", "a b", "a/b", "a.b", &"x".repeat(49)] {
            let e = identity_hint(&req(None, &[(NETWORK_NAME_OPTION, bad)])).unwrap_err();
            assert!(matches!(e, PluginError::Invalid(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn pool_id_round_trip() {
        for id in [
            PoolId::Network {
                name: "web_net-1".into(),
                v6: false,
            },
            PoolId::Pending {
                token: "198.18.5.0-24".into(),
                v6: true,
            },
        ] {
            let s = id.to_string();
            assert_eq!(s.parse::<PoolId>().unwrap(), id, "{s}");
        }
        assert_eq!(
            PoolId::Network {
                name: "web".into(),
                v6: false
            }
            .to_string(),
            "ovl/net/web/v4"
        );
        for bad in [
            "",
            "ovl/net/web",
            "ovl/net/web/v5",
            "ovl/x/web/v4",
            "ovl/net//v4",
            "ovl/pending//v4",
            "other/net/web/v4",
            "ovl/net/web/v4/extra",
        ] {
            assert!(bad.parse::<PoolId>().is_err(), "{bad:?}");
        }
    }
}
