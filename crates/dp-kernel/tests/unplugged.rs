//! Privileged: `attach` with `Plug::Docker`, the Docker form of attach (the container end
//! stays in the host namespace under a temporary name for Docker to move). Namespaces are
//! named `dki-*` and removed by guards. Run: `cargo test -p ovl-dp-kernel --test unplugged`.

mod common;

use std::net::Ipv4Addr;

use common::*;
use ovl_model::{ContainerSeen, EndpointSpec, EndpointStatus, MacAddr, Plug};

/// Namespaces `dki-*`, deleted on drop.
#[derive(Default)]
struct DkiNs(Vec<String>);

impl DkiNs {
    fn add(&mut self, name: &str) -> String {
        let full = format!("dki-{name}");
        let _ = sh_try(&format!("ip netns del {full}"));
        sh(&format!("ip netns add {full}"));
        self.0.push(full.clone());
        sh(&format!("ip -n {full} link set lo up"));
        full
    }
}

impl Drop for DkiNs {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let (ok, out) = sh_try(&format!("ip netns del {ns}"));
            if !ok {
                eprintln!("cleanup: ip netns del {ns}: {out}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugged_endpoint_is_moved_like_docker_does() {
    require_root();
    let t = tag();
    let mut ns = DkiNs::default();
    let host = ns.add(&format!("h-{t}"));
    let c1 = ns.add(&format!("c1-{t}"));
    let c2 = ns.add(&format!("c2-{t}"));
    sh(&format!("ip -n {host} link add u0 type veth peer name u1"));
    sh(&format!("ip -n {host} addr add 198.18.210.1/24 dev u0"));
    sh(&format!("ip -n {host} link set u0 up"));
    let run = RunDir::new(&format!("dki-{t}"));
    let dp = kernel_dp(&run.0, Some(netns_path(&host)));
    let s = spec("blue", 4400, "10.81.0.0/24", Ipv4Addr::new(198, 18, 210, 1));

    // Bad input changes nothing: an invalid temporary name; a foreign interface holding it.
    let mut e1 = endpoint(&"a1".repeat(32), &c1, Ipv4Addr::new(10, 81, 0, 2));
    e1.plug = Plug::Docker {
        tmp: "ovd/bad".into(),
    };
    let err = dp.attach(&s, &e1).await.unwrap_err().to_string();
    assert!(err.contains("invalid interface name"), "{err}");
    assert!(
        !dp.sandbox_path("blue").exists(),
        "nothing created on bad input"
    );
    sh(&format!(
        "ip -n {host} link add ovdtaken type veth peer name ovdtaken2"
    ));
    e1.plug = Plug::Docker {
        tmp: "ovdtaken".into(),
    };
    let err = dp.attach(&s, &e1).await.unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert!(
        !dp.sandbox_path("blue").exists(),
        "nothing created on conflict"
    );

    // The pair: port on the bridge in the sandbox, other end in the host namespace.
    e1.plug = Plug::Docker {
        tmp: "ovdtest1".into(),
    };
    let a = dp.attach(&s, &e1).await.unwrap();
    assert_eq!(a.ifname, "ovdtest1");
    let link = sh(&format!("ip -n {host} -o link show ovdtest1"));
    assert!(link.contains(&e1.mac.to_string()), "{link}");
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(in_sandbox(&dp.sandbox_path("blue"), "ip -o link show").contains(&a.host_ifname));
    // Idempotent.
    assert_eq!(dp.attach(&s, &e1).await.unwrap(), a);
    // A second endpoint with the same address is refused.
    let mut dup = endpoint("other", &c2, e1.ip);
    dup.plug = Plug::Docker {
        tmp: "ovdtest2".into(),
    };
    dup.mac = MacAddr::from_ipv4(Ipv4Addr::new(10, 81, 0, 9));
    assert!(dp.attach(&s, &dup).await.is_err());

    // The reconciler's view while it waits in the host namespace: dockerd's, not ours.
    let id = e1.endpoint_id.clone();
    let mut want = desired(&s, &[], &["c2"]);
    want.networks
        .get_mut("blue")
        .unwrap()
        .local_endpoints
        .insert(id.clone(), Some(e1.clone()));
    let seen = |o: &ovl_dp_kernel::Observed| o.networks["blue"].containers[&id].clone();
    let obs = dp.observe_with(&want).await.unwrap();
    assert_eq!(
        seen(&obs),
        ContainerSeen::AwaitingDocker {
            name: "ovdtest1".into()
        }
    );
    assert_eq!(ovl_dp_kernel::plan(&want, &obs), vec![]);

    // What libnetwork does: move it into the sandbox, rename, address, up.
    sh(&format!("ip -n {host} link set ovdtest1 netns {c1}"));
    sh(&format!("ip -n {c1} link set ovdtest1 name eth0"));
    sh(&format!("ip -n {c1} addr add 10.81.0.2/24 dev eth0"));
    sh(&format!("ip -n {c1} link set eth0 up"));
    let e2 = endpoint("c2", &c2, Ipv4Addr::new(10, 81, 0, 3));
    dp.attach(&s, &e2).await.unwrap();
    assert!(ping_ok(&c1, e2.ip));
    assert!(ping_ok(&c2, e1.ip));
    // Found in the sandbox, as specified: its name is what the agent records.
    let obs = dp.observe_with(&want).await.unwrap();
    assert!(matches!(seen(&obs), ContainerSeen::Present(ref l) if l.name == "eth0"));
    assert_eq!(
        ovl_dp_kernel::statuses(&want, &obs)[&("blue".to_string(), id.clone())],
        EndpointStatus::Ok {
            ifname: "eth0".into()
        }
    );

    // Deleted inside the container: restored there under the recorded name (dockerd does
    // not move an interface twice).
    want.networks
        .get_mut("blue")
        .unwrap()
        .local_endpoints
        .insert(
            id.clone(),
            Some(EndpointSpec {
                ifname: Some("eth0".into()),
                ..e1.clone()
            }),
        );
    sh(&format!("ip -n {c1} link del eth0"));
    let ops = ovl_dp_kernel::plan(&want, &dp.observe_with(&want).await.unwrap());
    assert!(
        matches!(&ops[..], [ovl_dp_kernel::Op::PlugEndpoint { .. }]),
        "{ops:?}"
    );
    assert!(dp.apply(&ops).await.is_ok());
    assert!(sh(&format!("ip -n {c1} -o addr show dev eth0")).contains("10.81.0.2/24"));
    assert!(ping_ok(&c2, e1.ip));
    assert_eq!(
        ovl_dp_kernel::plan(&want, &dp.observe_with(&want).await.unwrap()),
        vec![]
    );

    // Detach removes the pair, wherever its other end is.
    dp.detach("blue", &e1.endpoint_id).await.unwrap();
    assert!(!sh(&format!("ip -n {c1} -o link")).contains("eth0"));
    dp.detach("blue", &e1.endpoint_id).await.unwrap();
    dp.remove_network("blue").await.unwrap();
}
