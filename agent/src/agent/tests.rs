//! The agent's operations as a user calls them, over the embedded KV and the fakes of
//! `crate::fakes`: no root, no kernel.

use std::path::PathBuf;

use ovl_model::Plug;

use ovl_core::store::NetworkRequest;

use crate::local::LocalState;
use crate::{
    api::types::{AttachRequest, DetachRequest},
    counters::Counters,
    error::AgentError,
    fakes::{FakeDatapath, TestAgent as Lab},
};

/// A namespace file that exists for any user: the fakes never enter it.
fn netns() -> PathBuf {
    PathBuf::from("/proc/self/ns/net")
}

async fn lab() -> Lab {
    let l = Lab::new("h1", "198.18.0.11", None).await;
    l.agent
        .create_network(NetworkRequest {
            name: "net1".into(),
            ..Default::default()
        })
        .await
        .expect("network");
    l
}

fn attach_req(name: &str) -> AttachRequest {
    AttachRequest {
        network: "net1".into(),
        name: name.into(),
        netns: Some(netns()),
        ..Default::default()
    }
}

#[tokio::test]
async fn attach_records_plumbs_and_names_the_endpoint() {
    let l = lab().await;
    let r = l.agent.attach(attach_req("c1")).await.expect("attach");
    assert_eq!(r.ifname, "eth0");
    assert_eq!(r.mtu, 1450);
    assert_eq!(r.gateway_ifname.as_deref(), Some("eth1"));
    let rec = l
        .agent
        .store()
        .endpoint("net1", "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.host, "h1");
    assert_eq!(rec.ip, r.endpoint.ip);
    assert_eq!(
        l.agent.store().addr_owner("net1", rec.ip).await.unwrap(),
        Some("c1".into())
    );
    assert!(l.dp.keys().contains(&("net1".into(), "c1".into())));
    assert_eq!(l.gw.attached.lock().unwrap().len(), 1);
    let att = l.agent.local().get("net1", "c1").expect("local attachment");
    assert!(att.dns_listener);
    assert!(*l.names.passes.lock().unwrap() >= 1);
    assert_eq!(l.names.last_local.lock().unwrap().len(), 1);
    assert_eq!(Counters::get(&l.agent.counters().attaches), 1);

    // Again: the same endpoint, nothing new claimed.
    let again = l.agent.attach(attach_req("c1")).await.expect("re-attach");
    assert_eq!(again.endpoint, r.endpoint);
    assert_eq!(
        l.agent.store().endpoints(Some("net1")).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn a_name_used_on_another_host_is_refused_and_nothing_changes() {
    let l = lab().await;
    let mut other = l.agent.store().endpoint("net1", "x").await.unwrap();
    assert!(other.is_none());
    let net = l.agent.store().network("net1").await.unwrap().unwrap();
    let ip = l
        .agent
        .store()
        .allocate_addr(&net, None, "c1")
        .await
        .unwrap();
    other = Some(ovl_core::EndpointRecord {
        id: "c1".into(),
        network: "net1".into(),
        host: "h2".into(),
        name: "c1".into(),
        aliases: vec![],
        ip,
        mac: ovl_core::ipam::mac_for(ip),
        publish: vec![],
    });
    l.agent
        .store()
        .create_endpoint(other.as_ref().unwrap())
        .await
        .unwrap();
    let e = l.agent.attach(attach_req("c1")).await.unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    assert!(e.to_string().contains("h2"), "{e}");
    assert!(l.dp.keys().is_empty());
    assert!(l.agent.local().all().is_empty());
    assert_eq!(l.agent.store().endpoint("net1", "c1").await.unwrap(), other);
}

#[tokio::test]
async fn a_failed_plumb_releases_the_record_and_the_address() {
    let l = lab().await;
    *l.dp.fail_attach.lock().unwrap() = Some("no room".into());
    let e = l.agent.attach(attach_req("c1")).await.unwrap_err();
    assert!(e.to_string().contains("no room"), "{e}");
    assert!(
        l.agent
            .store()
            .endpoint("net1", "c1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(l.agent.store().endpoints(None).await.unwrap().is_empty());
    assert!(l.agent.local().all().is_empty());
    assert!(l.gw.attached.lock().unwrap().is_empty());
    // Not left pending: a pass does not keep a port for it.
    l.publish_view().await;
    l.agent.reconcile_once().await.unwrap();
    let want = l.dp.last.lock().unwrap().clone().unwrap();
    assert!(want.networks.is_empty(), "{want:?}");
    // The address is free again: the next attach gets it.
    let r = l.agent.attach(attach_req("c2")).await.expect("attach");
    assert_eq!(r.endpoint.ip.octets()[3], 2);
}

#[tokio::test]
async fn a_refused_published_port_undoes_the_overlay_side_too() {
    let l = lab().await;
    *l.gw.fail_attach.lock().unwrap() = Some(8080);
    let e = l.agent.attach(attach_req("c1")).await.unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    assert!(l.dp.keys().is_empty());
    assert!(l.agent.local().all().is_empty());
    assert!(l.agent.store().endpoints(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cleanup_that_fails_is_reported_with_what_is_left() {
    let l = lab().await;
    *l.dp.fail_attach.lock().unwrap() = Some("veth refused".into());
    *l.dp.fail_detach.lock().unwrap() = Some("device busy".into());
    let e = l.agent.attach(attach_req("c1")).await.unwrap_err();
    match &e {
        AgentError::Rollback { cleanup, error, .. } => {
            assert!(error.to_string().contains("veth refused"), "{e}");
            assert!(cleanup.iter().any(|c| c.contains("device busy")), "{e}");
        }
        other => panic!("expected a rollback error, got {other:?}"),
    }
    assert!(Counters::get(&l.agent.counters().rollback_failures) >= 1);
    // The KV side was still undone.
    assert!(l.agent.store().endpoints(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn detach_removes_interfaces_record_address_and_gateway() {
    let l = lab().await;
    let r = l.agent.attach(attach_req("c1")).await.unwrap();
    let d = l
        .agent
        .detach(DetachRequest {
            network: "net1".into(),
            name: "c1".into(),
        })
        .await
        .unwrap();
    assert!(d.removed);
    assert!(l.dp.keys().is_empty());
    assert!(l.gw.attached.lock().unwrap().is_empty());
    assert!(l.agent.local().all().is_empty());
    assert_eq!(
        l.agent
            .store()
            .addr_owner("net1", r.endpoint.ip)
            .await
            .unwrap(),
        None
    );
    // Idempotent.
    let d = l
        .agent
        .detach(DetachRequest {
            network: "net1".into(),
            name: "c1".into(),
        })
        .await
        .unwrap();
    assert!(!d.removed);
}

/// Docker's Join of endpoint `ep1` named `name` on net1, as the plugin does it: address
/// and record first, then the interface left as `vtmp0` for dockerd.
async fn docker_join(l: &Lab, name: &str) -> crate::agent::Plumbed {
    let net = l.agent.store().network("net1").await.unwrap().unwrap();
    let ip = l
        .agent
        .store()
        .allocate_addr(&net, None, "ep1")
        .await
        .unwrap();
    let rec = ovl_core::EndpointRecord {
        id: "ep1".into(),
        network: "net1".into(),
        host: "h1".into(),
        name: name.into(),
        aliases: vec![],
        ip,
        mac: ovl_core::ipam::mac_for(ip),
        publish: vec![],
    };
    l.agent.store().create_endpoint(&rec).await.unwrap();
    l.agent
        .plumb(
            &net,
            &rec,
            &netns(),
            Plug::Docker {
                tmp: "vtmp0".into(),
            },
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn docker_joins_use_the_same_verb_and_leave_the_end_for_dockerd() {
    let l = lab().await;
    let p = docker_join(&l, "").await;
    assert_eq!(p.ifname, "vtmp0");
    // The first endpoint of net1 here: its names are served from the Join on, before the
    // container runs (not from the names loop's next pass).
    assert!(
        l.names.zone_networks.lock().unwrap().contains("net1"),
        "the zone covers net1 at Join"
    );
    let port = l.dp.ports.lock().unwrap()[&("net1".into(), "ep1".into())].clone();
    assert!(port.unplugged);
    let att = l.agent.local().get("net1", "ep1").unwrap();
    assert!(!att.dns_listener, "Docker's resolver owns 127.0.0.11");
    assert!(l.gw.attached.lock().unwrap().is_empty(), "Docker's gateway");
    // Leave.
    let removed = l.agent.unplumb("net1", "ep1", false).await.unwrap();
    assert!(removed.is_some());
    assert!(l.names.zone_networks.lock().unwrap().is_empty());
    assert!(l.dp.keys().is_empty());
}

#[tokio::test]
async fn a_pass_removes_ports_of_endpoints_no_longer_desired() {
    let l = lab().await;
    l.agent.attach(attach_req("c1")).await.unwrap();
    l.publish_view().await;
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(l.dp.keys().len(), 1, "kept while recorded");
    let want = l.dp.last.lock().unwrap().clone().unwrap();
    assert!(want.networks["net1"].local_endpoints.contains_key("c1"));
    // A port the agent does not know of goes.
    let copy = l.dp.ports.lock().unwrap()[&("net1".into(), "c1".into())].clone();
    l.dp.ports
        .lock()
        .unwrap()
        .insert(("net1".into(), "ghost".into()), copy);
    l.agent.reconcile_once().await.unwrap();
    assert!(!l.dp.keys().contains(&("net1".into(), "ghost".into())));
}

/// Writes the record of a remote endpoint of host `host` (at `vtep`) on net1, with `host`
/// registered and alive when `alive`.
async fn remote(l: &Lab, host: &str, vtep: [u8; 4], id: &str, alive: bool) {
    remote_on(l, "net1", host, vtep, id, alive).await
}

/// The same on network `net`.
async fn remote_on(l: &Lab, net: &str, host: &str, vtep: [u8; 4], id: &str, alive: bool) {
    let store = l.agent.store();
    store
        .put_host(&ovl_core::HostRecord {
            id: host.into(),
            vtep: vtep.into(),
            underlay_mtu: 1500,
            datapath: "kernel".into(),
            version: "t".into(),
            gw_subnet: None,
            wg: None,
        })
        .await
        .unwrap();
    if alive {
        let lease = store
            .grant_lease(std::time::Duration::from_secs(60))
            .await
            .unwrap();
        store
            .put_alive(
                &ovl_core::AliveRecord {
                    id: host.into(),
                    boot_id: "b".into(),
                    since: 0,
                },
                lease,
            )
            .await
            .unwrap();
    }
    let net = store.network(net).await.unwrap().unwrap();
    let ip = store.allocate_addr(&net, None, id).await.unwrap();
    store
        .create_endpoint(&ovl_core::EndpointRecord {
            id: id.into(),
            network: net.name.clone(),
            host: host.into(),
            name: id.into(),
            aliases: vec![],
            ip,
            mac: ovl_core::ipam::mac_for(ip),
            publish: vec![],
        })
        .await
        .unwrap();
}

fn peers_in(dp: &FakeDatapath) -> usize {
    dp.last
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|d| d.networks.get("net1").map(|n| n.peers.len()))
        .unwrap_or(0)
}

#[tokio::test]
async fn a_host_whose_agent_is_down_keeps_its_entries_while_its_vtep_answers() {
    use crate::probe::Probe;
    let l = lab().await;
    l.agent.attach(attach_req("c1")).await.unwrap();
    // h2 without a lease (its agent stopped), h3 alive.
    remote(&l, "h2", [198, 18, 0, 12], "r2", false).await;
    remote(&l, "h3", [198, 18, 0, 13], "r3", true).await;
    l.probe
        .answers
        .lock()
        .unwrap()
        .insert([198, 18, 0, 12].into(), Probe::Answered);
    l.publish_view().await;
    l.agent.probe_hosts().await;
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(peers_in(&l.dp), 2, "h2 kept while it answers");
    let hosts = l.agent.hosts().await;
    let h2 = hosts.iter().find(|h| h.id == "h2").unwrap();
    assert!(!h2.alive);
    assert_eq!(h2.state, "agent down, datapath answering");
    // Kept across many probe rounds, well past the grace.
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        l.agent.probe_hosts().await;
    }
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(peers_in(&l.dp), 2);
    // Gone for good: its VTEP stops answering; dropped after the grace.
    l.probe
        .answers
        .lock()
        .unwrap()
        .insert([198, 18, 0, 12].into(), Probe::Silent);
    l.agent.probe_hosts().await;
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(peers_in(&l.dp), 2, "not before the grace ends");
    tokio::time::sleep(crate::reconcile::liveness::Liveness::DOWN_AFTER).await;
    l.agent.probe_hosts().await;
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(peers_in(&l.dp), 1, "h2 dropped, h3 kept");
    let hosts = l.agent.hosts().await;
    assert_eq!(hosts.iter().find(|h| h.id == "h2").unwrap().state, "dead");
}

#[tokio::test]
async fn a_host_with_its_datapath_gone_is_dropped_at_once() {
    use crate::probe::Probe;
    let l = lab().await;
    l.agent.attach(attach_req("c1")).await.unwrap();
    remote(&l, "h2", [198, 18, 0, 12], "r2", false).await;
    l.probe
        .answers
        .lock()
        .unwrap()
        .insert([198, 18, 0, 12].into(), Probe::NoDatapath);
    l.publish_view().await;
    l.agent.probe_hosts().await;
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(peers_in(&l.dp), 0);
}

#[tokio::test]
async fn a_record_naming_another_host_is_reported_and_rewritten_not_obeyed() {
    let l = lab().await;
    let r = l.agent.attach(attach_req("c1")).await.unwrap();
    let mut forged = r.endpoint.clone();
    forged.host = "h9".into();
    l.agent.store().put_endpoint(&forged).await.unwrap();
    l.publish_view().await;
    // Reported until repaired.
    let peers = l.agent.peers(Some("net1")).await.unwrap();
    assert!(
        peers.networks[0].diff.iter().any(|d| d.contains("h9")),
        "{peers:?}"
    );
    l.agent.reconcile_once().await.unwrap();
    assert!(
        l.dp.keys().contains(&("net1".into(), "c1".into())),
        "live interface kept"
    );
    let rec = l
        .agent
        .store()
        .endpoint("net1", "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.host, "h1");
    assert_eq!(rec.ip, r.endpoint.ip);
    let c = l.agent.counters();
    assert_eq!(Counters::get(&c.record_conflicts), 1);
    assert_eq!(Counters::get(&c.records_repaired), 1);
    // Converged once the view shows the repair.
    l.publish_view().await;
    let peers = l.agent.peers(Some("net1")).await.unwrap();
    assert!(peers.networks[0].diff.is_empty(), "{peers:?}");
    // Nothing written while the record agrees.
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(Counters::get(&c.records_repaired), 1);
}

#[tokio::test]
async fn a_deleted_record_is_written_again_with_its_address_claim() {
    let l = lab().await;
    let r = l.agent.attach(attach_req("c1")).await.unwrap();
    l.agent.store().delete_endpoint("net1", "c1").await.unwrap();
    assert_eq!(
        l.agent
            .store()
            .addr_owner("net1", r.endpoint.ip)
            .await
            .unwrap(),
        None
    );
    l.publish_view().await;
    l.agent.reconcile_once().await.unwrap();
    assert!(l.dp.keys().contains(&("net1".into(), "c1".into())));
    assert_eq!(
        l.agent.store().endpoint("net1", "c1").await.unwrap(),
        Some(r.endpoint.clone())
    );
    assert_eq!(
        l.agent
            .store()
            .addr_owner("net1", r.endpoint.ip)
            .await
            .unwrap(),
        Some("c1".into())
    );
    // Its address taken meanwhile by another endpoint: reported, nothing overwritten.
    l.agent.store().delete_endpoint("net1", "c1").await.unwrap();
    let net = l.agent.store().network("net1").await.unwrap().unwrap();
    l.agent
        .store()
        .allocate_addr(&net, Some(r.endpoint.ip), "thief")
        .await
        .unwrap();
    l.publish_view().await;
    l.agent.reconcile_once().await.unwrap();
    assert!(
        l.agent
            .store()
            .endpoint("net1", "c1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        l.agent
            .store()
            .addr_owner("net1", r.endpoint.ip)
            .await
            .unwrap(),
        Some("thief".into())
    );
    assert!(
        l.dp.keys().contains(&("net1".into(), "c1".into())),
        "still not torn down"
    );
}

#[tokio::test]
async fn a_state_dir_that_cannot_be_written_refuses_attach_and_detach_and_changes_nothing() {
    // A full disk (chaos: the state dir filled): an attach answered success that the next
    // agent does not know of loses its interface at the restart, a detach answered success
    // that stays in local.json gets its record written back. Both must be refused instead.
    let l = lab().await;
    l.agent.attach(attach_req("c1")).await.expect("attach");
    let state = l.dir.path().join("state");
    let away = l.dir.path().join("state-away");
    std::fs::rename(&state, &away).unwrap();

    let e = l.agent.attach(attach_req("c2")).await.unwrap_err();
    assert!(e.to_string().contains("recording the attachment"), "{e}");
    assert!(
        l.agent
            .store()
            .endpoint("net1", "c2")
            .await
            .unwrap()
            .is_none()
    );
    let claims = l
        .agent
        .store()
        .kv()
        .list(&ovl_core::keys::addrs_of("net1"))
        .await
        .unwrap();
    assert!(
        claims.entries.iter().all(|c| c.value != b"c2"),
        "no address left claimed"
    );
    assert!(!l.dp.keys().contains(&("net1".into(), "c2".into())));
    assert!(l.agent.local().get("net1", "c2").is_none());

    let e = l
        .agent
        .detach(DetachRequest {
            network: "net1".into(),
            name: "c1".into(),
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("noting the detach of c1") && e.to_string().contains("saving"),
        "{e}"
    );
    assert!(l.dp.keys().contains(&("net1".into(), "c1".into())));
    assert!(l.agent.local().get("net1", "c1").is_some());
    assert!(
        l.agent
            .store()
            .endpoint("net1", "c1")
            .await
            .unwrap()
            .is_some()
    );

    // Room again: both work.
    std::fs::rename(&away, &state).unwrap();
    l.agent.attach(attach_req("c2")).await.expect("attach");
    l.agent
        .detach(DetachRequest {
            network: "net1".into(),
            name: "c1".into(),
        })
        .await
        .expect("detach");
    let on_disk = LocalState::load(state.join("local.json")).unwrap();
    let ids: Vec<String> = on_disk.all().into_iter().map(|a| a.endpoint.id).collect();
    assert_eq!(ids, vec!["c2".to_string()]);
}

#[tokio::test]
async fn an_address_claimed_by_an_attach_that_died_is_used_again_or_released() {
    // An agent killed between claiming an address and recording the endpoint (as older
    // agents wrote them: two writes) leaves the claim alone. A user who asks again gets that
    // address; a user who undoes the attach frees it.
    let l = lab().await;
    let net = l.agent.store().network("net1").await.unwrap().unwrap();
    let orphan = l
        .agent
        .store()
        .allocate_addr(&net, None, "c1")
        .await
        .unwrap();
    let r = l.agent.attach(attach_req("c1")).await.expect("attach");
    assert_eq!(r.endpoint.ip, orphan, "the claim is used again");

    let other = l
        .agent
        .store()
        .allocate_addr(&net, None, "c2")
        .await
        .unwrap();
    let reply = l
        .agent
        .detach(DetachRequest {
            network: "net1".into(),
            name: "c2".into(),
        })
        .await
        .expect("detach");
    assert!(!reply.removed, "there was no endpoint");
    assert_eq!(
        l.agent.store().addr_owner("net1", other).await.unwrap(),
        None,
        "the orphan claim is released"
    );
    // c1's claim is untouched.
    assert_eq!(
        l.agent.store().addr_owner("net1", orphan).await.unwrap(),
        Some("c1".into())
    );

    // An attach asking for another address than its orphan claim frees the old one.
    let stale = l
        .agent
        .store()
        .allocate_addr(&net, None, "c3")
        .await
        .unwrap();
    let want: std::net::Ipv4Addr = "10.10.0.77".parse().unwrap();
    let mut req = attach_req("c3");
    req.ip = Some(want);
    let r = l.agent.attach(req).await.expect("attach with --ip");
    assert_eq!(r.endpoint.ip, want);
    assert_eq!(
        l.agent.store().addr_owner("net1", stale).await.unwrap(),
        None
    );
    assert_eq!(
        l.agent.store().addr_owner("net1", want).await.unwrap(),
        Some("c3".into())
    );
}

#[tokio::test]
async fn refused_inputs_claim_nothing() {
    let l = lab().await;
    let nets_before = l.agent.store().networks().await.unwrap();
    for s in ["127.0.0.0/24", "224.0.0.0/24", "198.18.0.0/25"] {
        let e = l
            .agent
            .create_network(NetworkRequest {
                name: "net2".into(),
                subnet: Some(s.parse().unwrap()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("subnet"), "{s}: {e}");
    }
    assert_eq!(l.agent.store().networks().await.unwrap(), nets_before);
    let mut r = attach_req("c1");
    r.aliases = (0..17).map(|i| format!("a{i}")).collect();
    assert!(l.agent.attach(r).await.is_err());
    let mut r = attach_req("c1");
    r.publish = vec!["4789:4789/udp".parse().unwrap()];
    let e = l.agent.attach(r).await.unwrap_err();
    assert!(e.to_string().contains("VXLAN port"), "{e}");
    assert!(l.agent.store().endpoints(None).await.unwrap().is_empty());
    assert!(l.dp.keys().is_empty());
    // Positive control: the same request within bounds is accepted.
    let mut r = attach_req("c1");
    r.aliases = (0..16).map(|i| format!("a{i}")).collect();
    r.publish = vec!["8080:80/tcp".parse().unwrap()];
    l.agent.attach(r).await.expect("attach within bounds");
}

#[tokio::test]
async fn a_name_attached_here_is_not_moved_to_another_namespace() {
    let l = lab().await;
    l.agent.attach(attach_req("c1")).await.expect("attach");
    let before = l.dp.ports.lock().unwrap().clone();
    let mut r = attach_req("c1");
    // Another namespace file (the fakes never enter it).
    r.netns = Some(PathBuf::from("/proc/self/ns/uts"));
    let e = l.agent.attach(r).await.unwrap_err();
    assert!(matches!(e, AgentError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("already attached"), "{e}");
    assert_eq!(*l.dp.ports.lock().unwrap(), before);
    // The same namespace again is a no-op.
    l.agent.attach(attach_req("c1")).await.expect("again");
    assert_eq!(l.dp.keys(), before.keys().cloned().collect());
}

#[tokio::test]
async fn a_host_gone_for_good_is_forgotten_and_no_longer_admitted() {
    let l = lab().await;
    l.agent.attach(attach_req("c1")).await.unwrap();
    remote(&l, "h2", [198, 18, 0, 12], "r2", true).await;
    remote(&l, "h3", [198, 18, 0, 13], "r3", false).await;
    l.publish_view().await;
    l.agent.reconcile_gateway().await;
    let admitted = |l: &Lab| l.gw.admitted.lock().unwrap().clone().unwrap_or_default();
    assert!(admitted(&l).contains(&[198, 18, 0, 13].into()));
    // Refused: this host, an alive host, an unknown one; nothing changes.
    for (id, status) in [("h1", 409), ("h2", 409), ("h9", 404)] {
        let e = l.agent.forget_host(id).await.unwrap_err();
        assert_eq!(e.status(), status, "{id}: {e}");
    }
    assert!(e_is(l.agent.forget_host("h2").await, "stop its agent"));
    assert_eq!(l.agent.store().endpoints(None).await.unwrap().len(), 3);
    // h3's agent is gone: forgotten with its endpoint and address.
    let f = l.agent.forget_host("h3").await.unwrap();
    assert_eq!(f.endpoints, vec!["net1/r3".to_string()]);
    let store = l.agent.store();
    assert!(store.host("h3").await.unwrap().is_none());
    assert!(store.endpoint("net1", "r3").await.unwrap().is_none());
    let net1: Vec<_> = store.endpoints(Some("net1")).await.unwrap();
    assert_eq!(net1.len(), 2);
    l.publish_view().await;
    l.agent.reconcile_gateway().await;
    assert!(!admitted(&l).contains(&[198, 18, 0, 13].into()));
    assert!(admitted(&l).contains(&[198, 18, 0, 12].into()));
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(peers_in(&l.dp), 1, "only h2's entry is left");
    // Again: not found, nothing else touched.
    assert_eq!(l.agent.forget_host("h3").await.unwrap_err().status(), 404);
}

fn e_is<T: std::fmt::Debug>(r: Result<T, AgentError>, text: &str) -> bool {
    matches!(r, Err(e) if e.to_string().contains(text))
}

/// Polls `status` until `f` holds (10 s at most).
async fn until(agent: &super::Agent, what: &str, f: impl Fn(&crate::api::types::Status) -> bool) {
    for _ in 0..200 {
        if f(&agent.status()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what}: {:?}", agent.status().kv);
}

/// Agent h1 over a fresh embedded KV behind a [`crate::fakes::FlakyKv`].
async fn flaky_lab() -> (Lab, std::sync::Arc<crate::fakes::FlakyKv>) {
    let dir = tempfile::tempdir().unwrap();
    let inner = ovl_kv::open(None, &dir.path().join("kv.sqlite"))
        .await
        .unwrap();
    let kv = crate::fakes::FlakyKv::new(inner);
    (Lab::with_kv("h1", "198.18.0.11", kv.clone(), dir), kv)
}

/// Issue 18 (3): `status` says how far behind the view is, and that listing keeps failing
/// while the store still answers its probe (a listing over the message cap once froze a
/// view while status said the KV was fine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_when_the_view_cannot_be_read() {
    use std::sync::atomic::Ordering;
    let (l, kv) = flaky_lab().await;
    let sync = tokio::spawn(crate::tasks::sync::run(l.agent.clone()));
    let probe = tokio::spawn(crate::tasks::sync::probe_health(l.agent.clone()));
    until(&l.agent, "a current view", |s| {
        s.kv.view_behind == Some(0) && s.kv.view_age_ms.is_some_and(|ms| ms < 2000)
    })
    .await;
    assert!(
        l.agent.status().kv.last_list_ms.is_some_and(|ms| ms >= 0.0),
        "how long the first listing took"
    );
    l.agent
        .create_network(NetworkRequest {
            name: "net1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    until(&l.agent, "the watch brings the network", |s| {
        s.counts.networks == 1 && s.kv.view_behind == Some(0) && s.kv.sync_error.is_none()
    })
    .await;

    // Listings fail from now on; the next periodic relist (every 6 s here) cannot read the
    // view. The watch still runs: the view stays current, the failing listing is shown.
    kv.fail_list.store(true, Ordering::Relaxed);
    let failing = |s: &crate::api::types::Status| {
        s.kv.reachable
            && s.kv
                .sync_error
                .as_deref()
                .is_some_and(|e| e.contains("listing") && e.contains("too large"))
    };
    until(&l.agent, "the failing listing shown", failing).await;
    l.agent
        .create_network(NetworkRequest {
            name: "net2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    until(&l.agent, "the watch still brings changes", |s| {
        s.counts.networks == 2 && s.kv.view_behind == Some(0)
    })
    .await;
    assert!(
        failing(&l.agent.status()),
        "an event hid the failing listing"
    );

    // The watch ends (compacted) and every listing fails: the view freezes. Writes the view
    // misses show as revisions behind, and its age grows.
    kv.compact.notify_waiters();
    l.agent
        .create_network(NetworkRequest {
            name: "net3".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    until(&l.agent, "the view behind the store", |s| {
        s.kv.view_behind.is_some_and(|b| b > 0) && s.kv.view_age_ms.is_some_and(|ms| ms > 1000)
    })
    .await;
    let s = l.agent.status();
    assert_eq!(s.counts.networks, 2, "the frozen view: {s:?}");
    assert!(failing(&s), "{s:?}");

    // Back to normal: the error clears and the view catches up.
    kv.fail_list.store(false, Ordering::Relaxed);
    until(&l.agent, "caught up", |s| {
        s.kv.sync_error.is_none() && s.kv.view_behind == Some(0) && s.counts.networks == 3
    })
    .await;
    sync.abort();
    probe.abort();
}

/// Issue 18 (1): a watch ended by a compaction lists again; the same state makes no new
/// view, so the datapath is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_relists_and_leaves_the_datapath_alone() {
    use std::sync::atomic::Ordering;
    let (l, kv) = flaky_lab().await;
    l.agent
        .create_network(NetworkRequest {
            name: "net1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sync = tokio::spawn(crate::tasks::sync::run(l.agent.clone()));
    l.agent.attach(attach_req("c1")).await.unwrap();
    remote(&l, "h2", [198, 18, 0, 12], "r2", true).await;
    until(&l.agent, "the view has both endpoints", |s| {
        s.counts.endpoints == 2 && s.kv.sync_error.is_none()
    })
    .await;
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(peers_in(&l.dp), 1);
    let view = l.agent.view();
    let lists = kv.lists.load(Ordering::Relaxed);

    kv.compact.notify_waiters();
    for _ in 0..100 {
        if kv.lists.load(Ordering::Relaxed) > lists {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        kv.lists.load(Ordering::Relaxed) > lists,
        "no relist after the compaction"
    );
    until(&l.agent, "synced again", |s| s.kv.sync_error.is_none()).await;
    assert!(
        std::sync::Arc::ptr_eq(&view, &l.agent.view()),
        "the same state published as a new view"
    );
    assert_eq!(
        l.agent.reconcile_once().await.unwrap(),
        0,
        "datapath touched"
    );
    assert_eq!(peers_in(&l.dp), 1);
    // And the watch after the relist still delivers.
    remote(&l, "h3", [198, 18, 0, 13], "r3", true).await;
    until(&l.agent, "a new endpoint after the relist", |s| {
        s.counts.endpoints == 3
    })
    .await;
    sync.abort();
}

/// A detach whose KV write fails after the interface went (the KV stopped answering half
/// way) answers "detached, deferred", and the record is removed by a reconcile pass once
/// the KV answers, also after a restart of the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_cut_by_the_kv_is_finished_later() {
    use std::sync::atomic::Ordering;
    let (l, kv) = flaky_lab().await;
    l.agent
        .create_network(NetworkRequest {
            name: "net1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for c in ["c1", "c2"] {
        l.agent.attach(attach_req(c)).await.unwrap();
    }
    let records = || async {
        let mut v: Vec<String> = l
            .agent
            .store()
            .view()
            .await
            .unwrap()
            .endpoints
            .values()
            .map(|e| e.name.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(records().await, ["c1", "c2"]);

    kv.fail_txn.store(true, Ordering::Relaxed);
    let r = l
        .agent
        .detach(DetachRequest {
            network: "net1".into(),
            name: "c1".into(),
        })
        .await
        .unwrap();
    assert!(r.removed && r.deferred, "{r:?}");
    assert!(
        l.agent.local().get("net1", "c1").is_none(),
        "c1 still attached"
    );
    assert_eq!(
        l.agent.local().detaching(),
        [("net1".to_string(), "c1".to_string())]
    );
    // While the KV fails, a pass keeps the intent.
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(records().await, ["c1", "c2"]);
    assert_eq!(l.agent.local().detaching().len(), 1);

    // The intent survives a restart (a new state loaded from the same file).
    let again = crate::local::LocalState::load(l.dir.path().join("state/local.json")).unwrap();
    assert_eq!(again.detaching(), [("net1".to_string(), "c1".to_string())]);

    // The KV answers again: the next pass removes the record, and only that one.
    kv.fail_txn.store(false, Ordering::Relaxed);
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(records().await, ["c2"]);
    assert!(l.agent.local().detaching().is_empty());
    assert!(
        crate::local::LocalState::load(l.dir.path().join("state/local.json"))
            .unwrap()
            .detaching()
            .is_empty()
    );

    // Positive control: a detach with the KV answering finishes at once, no intent left.
    l.agent
        .detach(DetachRequest {
            network: "net1".into(),
            name: "c2".into(),
        })
        .await
        .map(|r| assert!(r.removed && !r.deferred, "{r:?}"))
        .unwrap();
    assert!(records().await.is_empty());
    assert!(l.agent.local().detaching().is_empty());
}

/// Issue 18 (1): the periodic relist runs next to the watch: an endpoint written while a
/// (slow) listing is in flight is in the view before the listing answers, and it stays
/// there after the listing, whose snapshot predates it, is merged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_keep_flowing_during_a_relist() {
    use std::sync::atomic::Ordering;
    let (l, kv) = flaky_lab().await;
    l.agent
        .create_network(NetworkRequest {
            name: "net1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sync = tokio::spawn(crate::tasks::sync::run(l.agent.clone()));
    l.agent.attach(attach_req("c1")).await.unwrap();
    // Positive control: with no listing in flight the watch brings an endpoint.
    remote(&l, "h2", [198, 18, 0, 12], "r1", true).await;
    until(&l.agent, "r1 through the watch", |s| {
        s.counts.endpoints == 2
    })
    .await;

    // The next periodic listing (every 6 s here) takes its snapshot and then hangs.
    kv.hold_list.store(true, Ordering::Relaxed);
    for _ in 0..400 {
        if kv.held.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        kv.held.load(Ordering::Relaxed),
        1,
        "no periodic listing held"
    );
    remote(&l, "h3", [198, 18, 0, 13], "r2", true).await;
    until(&l.agent, "r2 while the listing hangs", |s| {
        s.counts.endpoints == 3
    })
    .await;
    assert_eq!(kv.held.load(Ordering::Relaxed), 1, "the listing answered");

    // The listing answers without r2 (its snapshot is older): the merged view keeps it.
    let lists = kv.lists.load(Ordering::Relaxed);
    kv.hold_list.store(false, Ordering::Relaxed);
    kv.release.notify_waiters();
    remote(&l, "h3", [198, 18, 0, 13], "r3", true).await;
    until(&l.agent, "r3 after the listing", |s| {
        s.counts.endpoints == 4
    })
    .await;
    let v = l.agent.view();
    for id in ["c1", "r1", "r2", "r3"] {
        assert!(
            v.endpoints.values().any(|e| e.name == id),
            "{id} missing from the view after the merge"
        );
    }
    assert_eq!(
        kv.lists.load(Ordering::Relaxed),
        lists,
        "the relist restarted the sync instead of merging"
    );
    sync.abort();
}

/// Issue 18 (2): endpoints coming and going on a network without an endpoint here swap the
/// view in but wake no loop (no reconcile pass, no names pass, no Docker follower pass); one
/// on this host's network wakes them (the positive control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_elsewhere_wake_nothing_here() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let (l, kv) = flaky_lab().await;
    for name in ["net1", "net2"] {
        l.agent
            .create_network(NetworkRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let sync = tokio::spawn(crate::tasks::sync::run(l.agent.clone()));
    l.agent.attach(attach_req("c1")).await.unwrap();
    // h2 registered and alive (a host change wakes everyone: VTEP lists, admission).
    remote_on(&l, "net2", "h2", [198, 18, 0, 12], "x0", true).await;
    until(&l.agent, "the view has c1 and x0", |s| {
        s.counts.endpoints == 2
    })
    .await;

    let mut views = l.agent.subscribe();
    // A relist during the burst may publish (and wake) on its own: try again in a window
    // without one (relists come every 6 s here).
    let mut clean = false;
    for round in 1..=3 {
        views.borrow_and_update();
        while tokio::time::timeout(Duration::from_millis(20), l.agent.kicked())
            .await
            .is_ok()
        {}
        let lists = kv.lists.load(Ordering::Relaxed);
        let before = l.agent.view().endpoints.len();
        for i in 0..20 {
            let id = format!("x{round}-{i}");
            remote_on(&l, "net2", "h2", [198, 18, 0, 12], &id, true).await;
        }
        until(&l.agent, "the burst in the view", |s| {
            s.counts.endpoints == before + 20
        })
        .await;
        if kv.lists.load(Ordering::Relaxed) != lists {
            continue;
        }
        assert!(
            !views.has_changed().unwrap(),
            "endpoints on a network without one here woke the view's subscribers"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), l.agent.kicked())
                .await
                .is_err(),
            "endpoints on a network without one here asked for a reconcile pass"
        );
        clean = true;
        break;
    }
    assert!(clean, "no round without a relist");

    // Positive control: one endpoint on net1, where c1 lives, wakes both.
    remote_on(&l, "net1", "h2", [198, 18, 0, 12], "r1", true).await;
    let woke = tokio::time::timeout(Duration::from_secs(5), views.changed()).await;
    assert!(
        woke.is_ok(),
        "an endpoint on this host's network woke nothing"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), l.agent.kicked())
            .await
            .is_ok(),
        "an endpoint on this host's network asked for no pass"
    );
    l.agent.reconcile_once().await.unwrap();
    assert_eq!(peers_in(&l.dp), 1, "the peer on net1 programmed");
    sync.abort();
}

/// Which changes concern a host: its networks' endpoints, records naming it, hosts and
/// networks; not other networks' endpoints.
#[tokio::test]
async fn what_concerns_this_host() {
    use ovl_core::Change;
    let l = lab().await;
    l.agent.attach(attach_req("c1")).await.unwrap();
    let ep = |network: &str, hosts: &[&str]| Change::Endpoint {
        network: network.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    };
    let a = &l.agent;
    assert!(
        a.concerns(&ep("net1", &["h2"])),
        "an endpoint on its network"
    );
    assert!(
        !a.concerns(&ep("net2", &["h2"])),
        "another network's endpoint"
    );
    assert!(
        a.concerns(&ep("net2", &["h2", "h1"])),
        "a record that named this host before"
    );
    assert!(a.concerns(&Change::Host("h9".into())));
    assert!(a.concerns(&Change::Network("net9".into())));
    assert!(!a.concerns(&Change::None));
}

// ---- overlayctl probe ----

fn probe_req(to: &str) -> crate::pathprobe::Request {
    crate::pathprobe::Request {
        network: "net1".into(),
        to: to.into(),
        from: None,
    }
}

/// Nothing of a probe is left: no namespace, no open port, no probe endpoint.
async fn no_probe_left(l: &Lab) {
    assert!(l.wire.netns.lock().unwrap().is_empty());
    assert_eq!(
        l.wire.open_ports.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let v = l.agent.store().view().await.unwrap();
    assert!(
        !v.endpoints
            .values()
            .any(|e| e.name.starts_with("ovl-probe-")),
        "{:?}",
        v.endpoints.keys().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_probe_to_an_endpoint_here_goes_through_and_leaves_nothing() {
    let l = lab().await;
    let c1 = l.agent.attach(attach_req("c1")).await.expect("attach");
    l.publish_view().await;
    l.wire
        .answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = l.agent.probe(probe_req("c1")).await.expect("probe");
    assert_eq!(r.failed, None, "{}", r.render());
    let hops: Vec<_> = r.hops.iter().map(|h| h.hop.as_str()).collect();
    assert_eq!(hops, ["entry", "deliver", "reply", "mtu"], "{}", r.render());
    // Three small echoes and three of the endpoint's MTU, all to c1.
    let sent = l.wire.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 6);
    assert!(sent.iter().all(|f| f[..6] == c1.endpoint.mac.0));
    assert_eq!(sent.iter().map(Vec::len).max(), Some(14 + 1450));
    // By address too.
    let r = l
        .agent
        .probe(probe_req(&c1.endpoint.ip.to_string()))
        .await
        .expect("probe by address");
    assert_eq!(r.failed, None, "{}", r.render());
    no_probe_left(&l).await;
}

#[tokio::test]
async fn a_destination_that_does_not_answer_fails_at_the_reply() {
    let l = lab().await;
    l.agent.attach(attach_req("c1")).await.expect("attach");
    l.publish_view().await;
    let r = l.agent.probe(probe_req("c1")).await.expect("probe");
    let why = r.failed.clone().expect("a failure");
    assert!(
        why.starts_with("reply on h1: c1 got the echo but sent no reply"),
        "{}",
        r.render()
    );
    no_probe_left(&l).await;
}

#[tokio::test]
async fn a_refused_tap_fails_the_probe_and_leaves_nothing() {
    let l = lab().await;
    l.agent.attach(attach_req("c1")).await.expect("attach");
    l.publish_view().await;
    l.wire
        .fail_port
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = l.agent.probe(probe_req("c1")).await.unwrap_err();
    assert!(e.to_string().contains("refused the TAP"), "{e}");
    no_probe_left(&l).await;
}

#[tokio::test]
async fn probing_nothing_is_refused_and_changes_nothing() {
    let l = lab().await;
    l.publish_view().await;
    let e = l.agent.probe(probe_req("nobody")).await.unwrap_err();
    assert!(matches!(e, AgentError::NotFound(_)), "{e}");
    assert_eq!(e.to_string(), "no endpoint nobody on network net1");
    let mut req = probe_req("c1");
    req.network = "nonet".into();
    let e = l.agent.probe(req).await.unwrap_err();
    assert_eq!(e.to_string(), "network nonet not found");
    assert!(l.wire.sent.lock().unwrap().is_empty());
    no_probe_left(&l).await;
}

/// At start an agent removes the probe endpoints an interrupted probe left, and only those:
/// a Docker container may be called `ovl-probe-x`, but its endpoint id is Docker's. Neither
/// kind of probe endpoint is a name in the zone containers resolve.
#[tokio::test]
async fn left_probe_endpoints_go_and_others_named_alike_stay() {
    let l = lab().await;
    let c1 = l.agent.attach(attach_req("c1")).await.expect("attach c1");
    l.agent
        .attach(attach_req("ovl-probe-99"))
        .await
        .expect("a probe endpoint, as an interrupted probe leaves it");
    let mut docker = c1.endpoint.clone();
    docker.id = "4f2a".repeat(16);
    docker.name = "ovl-probe-x".into();
    docker.ip = [10, 30, 0, 77].into();
    l.agent.store().put_endpoint(&docker).await.unwrap();
    l.publish_view().await;

    let view = l.agent.view();
    let zone = crate::names::zone_of(&view, &l.agent.local().all());
    let names: Vec<&str> = zone.records().iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains(&"c1"), "{names:?}");
    assert!(
        names.contains(&"ovl-probe-x"),
        "a container's name: {names:?}"
    );
    assert!(
        !names.contains(&"ovl-probe-99"),
        "a probe's name: {names:?}"
    );

    l.agent.forget_probes().await;
    let v = l.agent.store().view().await.unwrap();
    let ids: Vec<&str> = v.endpoints.values().map(|e| e.id.as_str()).collect();
    assert!(!ids.contains(&"ovl-probe-99"), "{ids:?}");
    assert!(ids.contains(&"c1"), "{ids:?}");
    assert!(ids.contains(&docker.id.as_str()), "{ids:?}");
}

/// A Docker endpoint's interface is renamed by dockerd when it moves it into the container:
/// the probe watches it under the name the datapath last saw, and under any name before.
#[tokio::test]
async fn a_probe_watches_a_docker_endpoint_under_the_name_dockerd_gave_it() {
    let l = lab().await;
    // Registers this host, as any first endpoint does.
    l.agent.attach(attach_req("c1")).await.expect("attach c1");
    docker_join(&l, "web").await;
    l.publish_view().await;
    l.wire
        .answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The fake capture sees the frames on eth0, as in a container.
    let r = l.agent.probe(probe_req("web")).await.expect("probe");
    assert_eq!(
        r.failed,
        None,
        "before the datapath saw it moved: {}",
        r.render()
    );
    l.dp.dockerd_moved("net1", "ep1", "eth0");
    let r = l.agent.probe(probe_req("web")).await.expect("probe");
    assert_eq!(r.failed, None, "as eth0: {}", r.render());
    // Frames on another interface of the container are not this endpoint's.
    l.dp.dockerd_moved("net1", "ep1", "eth1");
    let r = l.agent.probe(probe_req("web")).await.expect("probe");
    let why = r.failed.clone().expect("not delivered to eth1");
    assert!(why.starts_with("deliver on h1"), "{}", r.render());
    no_probe_left(&l).await;
}
