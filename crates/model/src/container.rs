//! The container end of an endpoint: what a datapath found of it, the typed status it shows,
//! and what to do about it. Both datapaths plan with these pure functions, so they restore
//! container interfaces the same way.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;
use crate::spec::{EndpointSpec, Plug};

/// A container end as found in its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerLink {
    /// Interface index in the container's namespace.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its MAC.
    pub mac: Option<MacAddr>,
    /// Its MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Its IPv4 addresses with prefix lengths.
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// Its ifalias.
    pub alias: Option<String>,
}

/// What a datapath found of an endpoint's container end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "seen", rename_all = "snake_case")]
pub enum ContainerSeen {
    /// Not looked for: the endpoint has no spec here.
    Unchecked,
    /// The namespace file is gone, or is no longer a network namespace.
    NetnsGone,
    /// A Docker endpoint's interface still waits in the host namespace under its temporary
    /// name for dockerd to move it.
    AwaitingDocker {
        /// The temporary name.
        name: String,
    },
    /// Not in its namespace as the peer of the endpoint's host end (or there is no host end).
    Missing,
    /// Found: the peer of the endpoint's host end, marked as its container end.
    Present(ContainerLink),
}

/// The state of one local endpoint, as `overlayctl endpoints` and `peers` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EndpointStatus {
    /// Both ends are as specified.
    Ok {
        /// The interface name in the container.
        ifname: String,
    },
    /// Only the host end is kept: an attach in progress, or a container whose namespace this
    /// host does not know.
    Unchecked,
    /// dockerd has not finished moving and configuring the interface yet.
    AwaitingDocker,
    /// Something differs; the next reconcile pass repairs it.
    Drifted {
        /// What differs.
        problems: Vec<String>,
    },
    /// The container's namespace is gone: nothing can be restored; the endpoint stays in
    /// the cluster until it is detached.
    NetnsGone {
        /// The namespace file that is gone.
        netns: PathBuf,
    },
    /// A repair was tried and failed (retried on every pass).
    Failed {
        /// Why.
        error: String,
    },
}

impl EndpointStatus {
    /// True when nothing differs.
    pub fn is_ok(&self) -> bool {
        matches!(self, EndpointStatus::Ok { .. })
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            EndpointStatus::Ok { ifname } => format!("ok ({ifname})"),
            EndpointStatus::Unchecked => "host end only (container namespace unknown here)".into(),
            EndpointStatus::AwaitingDocker => "waiting for dockerd to plug the interface".into(),
            EndpointStatus::Drifted { problems } => format!("repairing: {}", problems.join(", ")),
            EndpointStatus::NetnsGone { netns } => {
                format!("container namespace {} is gone", netns.display())
            }
            EndpointStatus::Failed { error } => format!("repair failed: {error}"),
        }
    }
}

/// What to do about a container end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerFix {
    /// Nothing (it is fine, or it cannot be fixed, or it is not ours to fix yet).
    None,
    /// Configure the existing container end `ifname` (address, MAC, MTU, up, marker).
    Configure {
        /// Its name in the container.
        ifname: String,
        /// What differs.
        problems: Vec<String>,
    },
    /// Create the veth pair: neither end exists.
    Plug {
        /// Why.
        reason: String,
    },
    /// Delete the host end (and with it whatever its peer became) and create the pair again.
    Replug {
        /// Why.
        reason: String,
    },
}

/// How a container end differs from its spec (empty: it does not): down, MTU, MAC, its
/// address missing, marker. `marker` is the alias it should carry.
pub fn container_drift(ep: &EndpointSpec, link: &ContainerLink, marker: &str) -> Vec<String> {
    let mut p = Vec::new();
    if !link.up {
        p.push(format!("{} down", link.name));
    }
    if link.mtu != ep.mtu {
        p.push(format!("{} mtu {} (want {})", link.name, link.mtu, ep.mtu));
    }
    if link.mac != Some(ep.mac) {
        let have = link
            .mac
            .map(|m| m.to_string())
            .unwrap_or_else(|| "none".into());
        p.push(format!("{} mac {have} (want {})", link.name, ep.mac));
    }
    // Only the endpoint's own address is ours to restore: an address added next to it (a
    // service address, say) is the container's business (the eBPF datapath drops traffic from
    // it; repairing anything else removes it, as attaching does).
    if !link.addrs.contains(&(ep.ip, ep.prefix_len)) {
        p.push(format!(
            "{} address {}/{} missing",
            link.name, ep.ip, ep.prefix_len
        ));
    }
    if link.alias.as_deref() != Some(marker) {
        p.push(format!("{} marker outdated", link.name));
    }
    p
}

/// Decides what to do about an endpoint's container end, and the status to show.
///
/// * `spec`: the desired endpoint (`None`: keep what exists, check nothing);
/// * `host_end`: whether the endpoint's host end exists;
/// * `seen`: what was found in the container's namespace;
/// * `marker`: the alias the container end should carry.
///
/// A Docker endpoint whose final name is not known yet is dockerd's to configure: an
/// interface that differs is shown as awaiting dockerd and left alone (dockerd adds the
/// address itself and fails the container's start if it is already there).
pub fn container_fix(
    spec: Option<&EndpointSpec>,
    host_end: bool,
    seen: &ContainerSeen,
    marker: &str,
) -> (ContainerFix, EndpointStatus) {
    let Some(spec) = spec else {
        return (ContainerFix::None, EndpointStatus::Unchecked);
    };
    let docker_unsettled = matches!(spec.plug, Plug::Docker { .. }) && spec.ifname.is_none();
    match seen {
        ContainerSeen::Unchecked => (ContainerFix::None, EndpointStatus::Unchecked),
        ContainerSeen::NetnsGone => (
            ContainerFix::None,
            EndpointStatus::NetnsGone {
                netns: spec.netns.clone(),
            },
        ),
        ContainerSeen::AwaitingDocker { .. } => {
            (ContainerFix::None, EndpointStatus::AwaitingDocker)
        }
        ContainerSeen::Missing => {
            let (fix, problem) = if host_end {
                let reason = "container end missing or not the host end's peer".to_string();
                (
                    ContainerFix::Replug {
                        reason: reason.clone(),
                    },
                    reason,
                )
            } else {
                let reason = "veth pair missing".to_string();
                (
                    ContainerFix::Plug {
                        reason: reason.clone(),
                    },
                    reason,
                )
            };
            (
                fix,
                EndpointStatus::Drifted {
                    problems: vec![problem],
                },
            )
        }
        ContainerSeen::Present(link) => {
            let problems = container_drift(spec, link, marker);
            if problems.is_empty() {
                (
                    ContainerFix::None,
                    EndpointStatus::Ok {
                        ifname: link.name.clone(),
                    },
                )
            } else if docker_unsettled {
                (ContainerFix::None, EndpointStatus::AwaitingDocker)
            } else {
                (
                    ContainerFix::Configure {
                        ifname: link.name.clone(),
                        problems: problems.clone(),
                    },
                    EndpointStatus::Drifted { problems },
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> EndpointSpec {
        EndpointSpec {
            endpoint_id: "c1".into(),
            netns: "/run/netns/c1".into(),
            mac: MacAddr([2, 0x42, 10, 10, 0, 2]),
            ip: Ipv4Addr::new(10, 10, 0, 2),
            prefix_len: 24,
            mtu: 1450,
            ifname: Some("eth0".into()),
            plug: Plug::Netns,
        }
    }

    fn link() -> ContainerLink {
        ContainerLink {
            index: 7,
            name: "eth0".into(),
            mac: Some(MacAddr([2, 0x42, 10, 10, 0, 2])),
            mtu: 1450,
            up: true,
            addrs: vec![(Ipv4Addr::new(10, 10, 0, 2), 24)],
            alias: Some("M".into()),
        }
    }

    #[test]
    fn a_matching_container_end_is_ok() {
        let (fix, st) = container_fix(Some(&ep()), true, &ContainerSeen::Present(link()), "M");
        assert_eq!(fix, ContainerFix::None);
        assert_eq!(
            st,
            EndpointStatus::Ok {
                ifname: "eth0".into()
            }
        );
        assert!(st.is_ok());
    }

    #[test]
    fn every_difference_is_named_and_configured() {
        let mut l = link();
        l.up = false;
        l.mtu = 1400;
        l.mac = Some(MacAddr([2, 0, 0, 0, 0, 9]));
        l.addrs = vec![(Ipv4Addr::new(10, 10, 0, 9), 24)];
        l.alias = None;
        let (fix, st) = container_fix(Some(&ep()), true, &ContainerSeen::Present(l), "M");
        let want = vec![
            "eth0 down".to_string(),
            "eth0 mtu 1400 (want 1450)".into(),
            "eth0 mac 02:00:00:00:00:09 (want 02:42:0a:0a:00:02)".into(),
            "eth0 address 10.10.0.2/24 missing".into(),
            "eth0 marker outdated".into(),
        ];
        assert_eq!(
            fix,
            ContainerFix::Configure {
                ifname: "eth0".into(),
                problems: want.clone()
            }
        );
        assert_eq!(st, EndpointStatus::Drifted { problems: want });
    }

    #[test]
    fn an_extra_address_is_left_alone() {
        let mut l = link();
        l.addrs.push((Ipv4Addr::new(10, 10, 0, 200), 24));
        let (fix, st) = container_fix(Some(&ep()), true, &ContainerSeen::Present(l), "M");
        assert_eq!(fix, ContainerFix::None);
        assert!(st.is_ok());
    }

    #[test]
    fn missing_ends_are_plugged_or_replugged() {
        let (fix, st) = container_fix(Some(&ep()), false, &ContainerSeen::Missing, "M");
        assert!(matches!(fix, ContainerFix::Plug { .. }), "{fix:?}");
        assert!(matches!(st, EndpointStatus::Drifted { .. }));
        let (fix, _) = container_fix(Some(&ep()), true, &ContainerSeen::Missing, "M");
        assert!(matches!(fix, ContainerFix::Replug { .. }), "{fix:?}");
    }

    #[test]
    fn what_cannot_or_must_not_be_fixed_is_left_alone() {
        let (fix, st) = container_fix(Some(&ep()), false, &ContainerSeen::NetnsGone, "M");
        assert_eq!(fix, ContainerFix::None);
        assert_eq!(
            st,
            EndpointStatus::NetnsGone {
                netns: "/run/netns/c1".into()
            }
        );
        let (fix, st) = container_fix(None, true, &ContainerSeen::Unchecked, "M");
        assert_eq!((fix, st), (ContainerFix::None, EndpointStatus::Unchecked));
        let seen = ContainerSeen::AwaitingDocker {
            name: "ovdx".into(),
        };
        let (fix, st) = container_fix(Some(&ep()), true, &seen, "M");
        assert_eq!(
            (fix, st),
            (ContainerFix::None, EndpointStatus::AwaitingDocker)
        );
        // dockerd is still configuring an interface it moved: not ours to touch yet.
        let mut docker = ep();
        docker.plug = Plug::Docker { tmp: "ovdx".into() };
        docker.ifname = None;
        let mut l = link();
        l.up = false;
        let (fix, st) = container_fix(Some(&docker), true, &ContainerSeen::Present(l.clone()), "M");
        assert_eq!(
            (fix, st),
            (ContainerFix::None, EndpointStatus::AwaitingDocker)
        );
        // Once its name is known (dockerd finished), it is maintained like any other.
        docker.ifname = Some("eth0".into());
        let (fix, _) = container_fix(Some(&docker), true, &ContainerSeen::Present(l), "M");
        assert!(matches!(fix, ContainerFix::Configure { .. }));
    }

    #[test]
    fn statuses_describe_themselves_and_serialize_with_a_tag() {
        let st = EndpointStatus::NetnsGone {
            netns: "/run/netns/x".into(),
        };
        assert_eq!(st.describe(), "container namespace /run/netns/x is gone");
        assert_eq!(
            serde_json::to_value(&st).unwrap(),
            serde_json::json!({"state": "netns_gone", "netns": "/run/netns/x"})
        );
    }
}
