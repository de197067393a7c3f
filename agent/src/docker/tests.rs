//! The Docker plugin's pool identity and network sync as dockerd drives them, over the
//! embedded KV and the fakes (no root, no dockerd): two hosts share one KV.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use ipnetwork::IpNetwork;
use ovl_core::store::NetworkRequest;
use ovl_docker::{
    PluginBackend, PluginError,
    backend::{CreateNetwork, PoolData, PoolRequest},
    engine::DockerNetwork,
    identity::PoolId,
};

use super::{
    DockerPlugin, follower::SyncOp, follower::plan_sync, follower::spec_of, pools::STALE_POOL,
};
use crate::fakes::TestAgent;

struct Cluster {
    _kv: tempfile::TempDir,
    h1: TestAgent,
    h2: TestAgent,
    p1: Arc<DockerPlugin>,
    p2: Arc<DockerPlugin>,
}

async fn cluster() -> Cluster {
    let kv = tempfile::tempdir().unwrap();
    let path: PathBuf = kv.path().join("kv.sqlite");
    let h1 = TestAgent::new("h1", "198.18.0.11", Some(&path)).await;
    let h2 = TestAgent::new("h2", "198.18.0.12", Some(&path)).await;
    let p1 = DockerPlugin::new(h1.agent.clone());
    let p2 = DockerPlugin::new(h2.agent.clone());
    Cluster {
        _kv: kv,
        h1,
        h2,
        p1,
        p2,
    }
}

fn plain() -> PoolRequest {
    PoolRequest {
        address_space: "OvlLocal".into(),
        pool: None,
        sub_pool: None,
        options: BTreeMap::new(),
        v6: false,
    }
}

fn create(nid: &str, pool: IpNetwork) -> CreateNetwork {
    CreateNetwork {
        network_id: nid.into(),
        generic: BTreeMap::new(),
        ipv4: vec![PoolData {
            pool,
            gateway: None,
            aux_addresses: BTreeMap::new(),
            address_space: "OvlLocal".into(),
        }],
        ipv6: vec![],
        mtu: None,
        internal: false,
        enable_ipv6: false,
        raw_options: Default::default(),
    }
}

fn token(pool_id: &str) -> String {
    match pool_id.parse::<PoolId>().unwrap() {
        PoolId::Pending { token, .. } => token,
        other => panic!("expected a pending pool, got {other:?}"),
    }
}

#[tokio::test]
async fn a_plain_create_reserves_a_subnet_that_nothing_else_sees_then_becomes_the_network() {
    let c = cluster().await;
    let a = c.p1.request_pool(plain()).await.unwrap();
    let t = token(&a.pool_id);
    // Reserved, but no placeholder network: not in listings, not in the view.
    assert!(c.h1.agent.networks().await.unwrap().is_empty());
    assert!(c.h1.agent.store().view().await.unwrap().networks.is_empty());
    let res = c.h1.agent.store().reservations().await.unwrap();
    assert_eq!(res.len(), 1, "{res:?}");
    // Another pool never gets the same subnet.
    let b = c.p2.request_pool(plain()).await.unwrap();
    assert_ne!(a.pool, b.pool);
    c.p2.release_pool(&b.pool_id).await.unwrap();

    PluginBackend::create_network(&*c.p1, create("nid1", a.pool))
        .await
        .unwrap();
    let net = c.p1.bind(&t, "appnet", BTreeMap::new()).await.unwrap();
    assert_eq!(IpNetwork::V4(net.subnet), a.pool);
    assert!(c.h1.agent.store().reservations().await.unwrap().is_empty());
    let ls = c.h1.agent.networks().await.unwrap();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0].record.name, "appnet");
}

#[tokio::test]
async fn the_same_plain_create_on_a_second_host_takes_the_cluster_subnet_and_leaves_nothing() {
    let c = cluster().await;
    let a = c.p1.request_pool(plain()).await.unwrap();
    PluginBackend::create_network(&*c.p1, create("nid1", a.pool))
        .await
        .unwrap();
    let n1 =
        c.p1.bind(&token(&a.pool_id), "appnet", BTreeMap::new())
            .await
            .unwrap();
    // Host 2 typed the same before the network arrived there.
    let b = c.p2.request_pool(plain()).await.unwrap();
    PluginBackend::create_network(&*c.p2, create("nid2", b.pool))
        .await
        .unwrap();
    let n2 =
        c.p2.bind(&token(&b.pool_id), "appnet", BTreeMap::new())
            .await
            .unwrap();
    assert_eq!(n1, n2, "one network, one truth");
    assert!(c.h2.agent.store().reservations().await.unwrap().is_empty());
    let ls = c.h2.agent.networks().await.unwrap();
    assert_eq!(ls.len(), 1, "nothing but the network");
    // Its Docker network shows the other subnet: the follower's plan recreates it.
    c.h2.publish_view().await;
    let here = vec![DockerNetwork {
        id: "nid2".into(),
        name: "appnet".into(),
        subnet: match b.pool {
            IpNetwork::V4(s) => Some(s),
            IpNetwork::V6(_) => None,
        },
        gateway: Some(n1.gateway),
        internal: false,
        labels: BTreeMap::new(),
        options: BTreeMap::new(),
        containers: vec![],
    }];
    let ops = plan_sync(c.h2.agent.view().networks.values(), &here, &[]);
    assert_eq!(
        ops,
        vec![SyncOp::Recreate {
            id: "nid2".into(),
            spec: spec_of(&n1)
        }]
    );
}

#[tokio::test]
async fn unused_pools_are_released() {
    let c = cluster().await;
    let a = c.p1.request_pool(plain()).await.unwrap();
    c.p1.release_pool(&a.pool_id).await.unwrap();
    assert!(c.h1.agent.store().reservations().await.unwrap().is_empty());
    assert!(c.h1.agent.store().docker_pools().await.unwrap().is_empty());
    // One Docker never came back for: released after STALE_POOL (backdated here).
    let b = c.p1.request_pool(plain()).await.unwrap();
    let store = c.h1.agent.store();
    let (mut p, _) = store
        .docker_pool(&token(&b.pool_id))
        .await
        .unwrap()
        .unwrap();
    p.since -= STALE_POOL.as_secs() + 1;
    store.put_docker_pool(&p).await.unwrap();
    // Another host's pool is never released by this one.
    let other = c.p2.request_pool(plain()).await.unwrap();
    let (mut q, _) = store
        .docker_pool(&token(&other.pool_id))
        .await
        .unwrap()
        .unwrap();
    q.since -= STALE_POOL.as_secs() + 1;
    store.put_docker_pool(&q).await.unwrap();
    c.p1.release_stale_pools().await.unwrap();
    let left = store.docker_pools().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].host, "h2");
    assert_eq!(store.reservations().await.unwrap().len(), 1);
}

#[tokio::test]
async fn named_pools_agree_with_the_cluster_or_are_refused_reserving_nothing() {
    let c = cluster().await;
    c.h1.agent
        .create_network(NetworkRequest {
            name: "appnet".into(),
            subnet: Some("10.10.7.0/24".parse().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut req = plain();
    req.options.insert("ovl.network".into(), "appnet".into());
    let a = c.p2.request_pool(req.clone()).await.unwrap();
    assert_eq!(a.pool.to_string(), "10.10.7.0/24");
    assert_eq!(a.pool_id, "ovl/net/appnet/v4");
    req.pool = Some("10.10.8.0/24".parse().unwrap());
    let e = c.p2.request_pool(req).await.unwrap_err();
    assert!(matches!(e, PluginError::Conflict(_)), "{e:?}");
    assert!(c.h2.agent.store().reservations().await.unwrap().is_empty());
    assert!(c.h2.agent.store().docker_pools().await.unwrap().is_empty());
}

/// The follower makes cluster networks present with `ovl.follow`: when the network was removed
/// between its look at the KV and dockerd's `RequestPool`, the pool is refused and nothing is
/// reserved (the removed network does not come back); the same name without the marker is a
/// user's create and reserves a pool.
#[tokio::test]
async fn a_follower_pool_never_brings_back_a_removed_network() {
    let c = cluster().await;
    let mut req = plain();
    req.options.insert("ovl.network".into(), "gone".into());
    let mut follow = req.clone();
    follow.options.insert("ovl.follow".into(), "1".into());
    let e = c.p2.request_pool(follow).await.unwrap_err();
    assert!(
        matches!(&e, PluginError::NotFound(m) if m.contains("removed from the cluster")),
        "{e:?}"
    );
    assert!(c.h2.agent.store().reservations().await.unwrap().is_empty());
    assert!(c.h2.agent.store().docker_pools().await.unwrap().is_empty());
    assert!(c.h2.agent.store().network("gone").await.unwrap().is_none());

    let a = c.p2.request_pool(req).await.unwrap();
    assert!(a.pool_id.starts_with("ovl/pending/"), "{a:?}");
    assert_eq!(c.h2.agent.store().docker_pools().await.unwrap().len(), 1);
}

#[tokio::test]
async fn docker_network_rm_removes_the_cluster_network_only_when_no_container_uses_it() {
    let c = cluster().await;
    let a = c.p1.request_pool(plain()).await.unwrap();
    PluginBackend::create_network(&*c.p1, create("nid1", a.pool))
        .await
        .unwrap();
    let net =
        c.p1.bind(&token(&a.pool_id), "appnet", BTreeMap::new())
            .await
            .unwrap();
    // A container on host 2.
    let ip =
        c.h2.agent
            .store()
            .allocate_addr(&net, None, "ep2")
            .await
            .unwrap();
    c.h2.agent
        .store()
        .create_endpoint(&ovl_core::EndpointRecord {
            id: "ep2".into(),
            network: "appnet".into(),
            host: "h2".into(),
            name: "web".into(),
            aliases: vec![],
            ip,
            mac: ovl_core::ipam::mac_for(ip),
            publish: vec![],
        })
        .await
        .unwrap();
    PluginBackend::delete_network(&*c.p1, "nid1".into())
        .await
        .unwrap();
    assert!(
        c.h1.agent
            .store()
            .network("appnet")
            .await
            .unwrap()
            .is_some(),
        "kept while web on h2 uses it"
    );
    c.h1.publish_view().await;
    let ops = plan_sync(c.h1.agent.view().networks.values(), &[], &[]);
    assert!(
        matches!(&ops[..], [SyncOp::Create(s)] if s.name == "appnet"),
        "{ops:?}"
    );
    // web gone: the next rm removes it cluster-wide.
    c.h2.agent
        .store()
        .delete_endpoint("appnet", "ep2")
        .await
        .unwrap();
    let b =
        c.p1.request_pool({
            let mut r = plain();
            r.options.insert("ovl.network".into(), "appnet".into());
            r
        })
        .await
        .unwrap();
    PluginBackend::create_network(&*c.p1, create("nid1b", b.pool))
        .await
        .unwrap();
    PluginBackend::delete_network(&*c.p1, "nid1b".into())
        .await
        .unwrap();
    assert!(
        c.h1.agent
            .store()
            .network("appnet")
            .await
            .unwrap()
            .is_none()
    );
}

#[test]
fn sync_plan_creates_missing_recreates_differing_and_removes_orphans() {
    let net = |name: &str, subnet: &str| ovl_core::NetworkRecord {
        name: name.into(),
        vni: 4096,
        subnet: subnet.parse().unwrap(),
        gateway: subnet.replace(".0/24", ".1").parse().unwrap(),
        internal: false,
        encrypted: false,
        mtu: None,
        labels: BTreeMap::new(),
        options: BTreeMap::new(),
    };
    let here = |id: &str, name: &str, subnet: &str| DockerNetwork {
        id: id.into(),
        name: name.into(),
        subnet: Some(subnet.parse().unwrap()),
        gateway: Some(subnet.replace(".0/24", ".1").parse().unwrap()),
        internal: false,
        labels: BTreeMap::new(),
        options: BTreeMap::new(),
        containers: vec![],
    };
    let mut labelled = net("c", "10.10.3.0/24");
    labelled
        .labels
        .insert("com.docker.compose.project".into(), "p".into());
    let cluster: BTreeMap<String, ovl_core::NetworkRecord> = [
        net("a", "10.10.1.0/24"),
        net("b", "10.10.2.0/24"),
        labelled.clone(),
    ]
    .into_iter()
    .map(|n| (n.name.clone(), n))
    .collect();
    let docker = vec![
        here("i-b", "b", "10.10.2.0/24"),
        here("i-c", "c", "10.10.3.0/24"),
        here("i-x", "x", "10.10.9.0/24"),
        here("i-y", "y", "10.10.8.0/24"),
    ];
    let ops = plan_sync(cluster.values(), &docker, &["i-y".to_string()]);
    assert_eq!(
        ops,
        vec![
            SyncOp::Create(spec_of(&cluster["a"])),
            SyncOp::Recreate {
                id: "i-c".into(),
                spec: spec_of(&labelled)
            },
            SyncOp::Remove {
                id: "i-x".into(),
                name: "x".into()
            },
        ],
        "b agrees; y is being bound here"
    );
    // A gateway, --internal or an option other than the cluster's: made again.
    for change in 0..3 {
        let mut d = here("i-b", "b", "10.10.2.0/24");
        d.gateway = Some("10.10.2.1".parse().unwrap());
        match change {
            0 => d.gateway = Some("10.10.2.254".parse().unwrap()),
            1 => d.internal = true,
            _ => {
                d.options
                    .insert("com.docker.network.driver.mtu".into(), "1400".into());
            }
        }
        let only_b: BTreeMap<_, _> = [("b".to_string(), cluster["b"].clone())].into();
        assert_eq!(
            plan_sync(only_b.values(), &[d], &[]),
            vec![SyncOp::Recreate {
                id: "i-b".into(),
                spec: spec_of(&cluster["b"])
            }],
            "change {change}"
        );
    }
    // Converged: nothing to do.
    let mut docker_c = here("i-c", "c", "10.10.3.0/24");
    docker_c.labels = labelled.labels.clone();
    let docker = vec![
        here("i-a", "a", "10.10.1.0/24"),
        here("i-b", "b", "10.10.2.0/24"),
        docker_c,
    ];
    assert!(plan_sync(cluster.values(), &docker, &[]).is_empty());
}

#[test]
fn temp_names_fit_and_differ() {
    let a = super::temp_ifname(&"a1".repeat(32));
    let b = super::temp_ifname(&"b2".repeat(32));
    assert!(a.len() <= 15 && b.len() <= 15);
    assert_ne!(a, b);
    assert!(ovl_model::validate_ifname(&a).is_ok());
}

#[test]
fn docker_socket_from_env() {
    use super::docker_socket;
    assert_eq!(docker_socket(None), PathBuf::from("/var/run/docker.sock"));
    assert_eq!(
        docker_socket(Some("unix:///x/d.sock")),
        PathBuf::from("/x/d.sock")
    );
    assert_eq!(
        docker_socket(Some("tcp://1.2.3.4:2375")),
        PathBuf::from("/var/run/docker.sock")
    );
}
