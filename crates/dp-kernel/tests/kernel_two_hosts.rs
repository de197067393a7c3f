//! Privileged end-to-end tests of the kernel datapath: two namespace "hosts" joined by a veth
//! underlay, a KernelDatapath on each, containers as namespaces. Must run as root.

mod common;

use std::net::Ipv4Addr;

use common::*;
use ovl_dp_kernel::{Op, plan};
use ovl_model::RemotePeer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_ping_broadcast_reconcile_adopt_detach() {
    require_root();
    let t = tag();
    let mut ns = Namespaces::default();
    let hosts = two_hosts(&mut ns, &t, 201);
    let c1 = ns.add(&format!("c1-{t}"));
    let c2 = ns.add(&format!("c2-{t}"));
    let run1 = RunDir::new(&format!("{t}-1"));
    let run2 = RunDir::new(&format!("{t}-2"));

    let dp1 = kernel_dp(&run1.0.clone(), Some(netns_path(&hosts.h1)));
    let dp2 = kernel_dp(&run2.0.clone(), Some(netns_path(&hosts.h2)));
    let s1 = spec("blue", 4100, "10.77.0.0/24", hosts.vtep1);
    let s2 = spec("blue", 4100, "10.77.0.0/24", hosts.vtep2);

    dp1.ensure_network(&s1).await.unwrap();
    dp1.ensure_network(&s1).await.unwrap(); // idempotent
    dp2.ensure_network(&s2).await.unwrap();

    let ip1 = Ipv4Addr::new(10, 77, 0, 2);
    let ip2 = Ipv4Addr::new(10, 77, 0, 3);
    let e1 = endpoint("ep-one", &c1, ip1);
    let e2 = endpoint("ep-two", &c2, ip2);
    let a1 = dp1.attach(&s1, &e1).await.unwrap();
    let a2 = dp2.attach(&s2, &e2).await.unwrap();
    assert_eq!(a1.ifname, "eth0");
    assert_eq!(a2.ifname, "eth0");
    assert_eq!(a1.mac, e1.mac);
    // Re-attaching is idempotent and returns the same result.
    assert_eq!(dp1.attach(&s1, &e1).await.unwrap(), a1);

    // The container interface is configured as asked.
    let link = sh(&format!("ip -n {c1} -o link show eth0"));
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains(&e1.mac.to_string()), "{link}");
    let addr = sh(&format!("ip -n {c1} -o -4 addr show eth0"));
    assert!(addr.contains("10.77.0.2/24"), "{addr}");

    // The sandbox holds br0 + vxlan0 with the expected settings; nothing leaked into the host.
    let sb1 = dp1.sandbox_path("blue");
    let vx = in_sandbox(&sb1, "ip -d -o link show vxlan0");
    assert!(vx.contains("vxlan id 4100"), "{vx}");
    assert!(vx.contains(&format!("local {}", hosts.vtep1)), "{vx}");
    assert!(vx.contains("dstport 4789"), "{vx}");
    assert!(vx.contains("nolearning"), "{vx}");
    assert!(vx.contains("proxy"), "{vx}");
    assert!(vx.contains("master br0"), "{vx}");
    let br = in_sandbox(&sb1, "ip -d -o link show br0");
    assert!(br.contains("mcast_snooping 0"), "{br}");
    assert!(!in_sandbox(&sb1, "ip -o -4 addr show br0").contains("inet"));
    let host_links = sh(&format!("ip -n {} -o link show", hosts.h1));
    assert!(!host_links.contains("vxlan"), "{host_links}");

    // Program peers through plan/apply.
    let p1 = RemotePeer {
        mac: e1.mac,
        ip: ip1,
        vtep: hosts.vtep1,
    };
    let p2 = RemotePeer {
        mac: e2.mac,
        ip: ip2,
        vtep: hosts.vtep2,
    };
    let d1 = desired(&s1, &[p2], &["ep-one"]);
    let d2 = desired(&s2, &[p1], &["ep-two"]);
    for (dp, d) in [(&dp1, &d1), (&dp2, &d2)] {
        let ops = plan(d, &dp.observe().await.unwrap());
        assert!(ops.contains(&Op::AddFlood {
            network: "blue".into(),
            vtep: d.networks["blue"].peers[0].vtep
        }));
        let report = dp.apply(&ops).await;
        assert!(report.is_ok(), "{:?}", report.failed);
        // Converged: observing again yields nothing to do.
        let again = plan(d, &dp.observe().await.unwrap());
        assert!(again.is_empty(), "{again:?}");
    }
    let fdb = in_sandbox(&sb1, "bridge fdb show dev vxlan0");
    assert!(
        fdb.contains(&format!("{} dst {}", e2.mac, hosts.vtep2)),
        "{fdb}"
    );
    assert!(
        fdb.contains(&format!("00:00:00:00:00:00 dst {}", hosts.vtep2)),
        "{fdb}"
    );
    let neigh = in_sandbox(&sb1, "ip neigh show dev vxlan0");
    assert!(
        neigh.contains(&format!("{ip2} lladdr {} PERMANENT", e2.mac)),
        "{neigh}"
    );

    // Unicast across hosts, both ways.
    assert!(ping_ok(&c1, ip2), "c1 -> c2 ping failed");
    assert!(ping_ok(&c2, ip1), "c2 -> c1 ping failed");

    // Broadcast reaches the remote container through the flood entry.
    sh(&format!(
        "ip netns exec {c2} sysctl -qw net.ipv4.icmp_echo_ignore_broadcasts=0"
    ));
    let (_, out) = sh_try(&format!(
        "ip netns exec {c1} ping -n -b -c 3 -w 8 10.77.0.255"
    ));
    assert!(
        out.contains(&format!("from {ip2}")),
        "broadcast ping got no reply from c2: {out}"
    );

    // IP multicast is flooded too (bridge snooping is off): all-hosts 224.0.0.1 reaches c2.
    let (_, out) = sh_try(&format!(
        "ip netns exec {c1} ping -n -I eth0 -c 3 -w 8 224.0.0.1"
    ));
    assert!(
        out.contains(&format!("from {ip2}")),
        "multicast ping got no reply from c2: {out}"
    );

    // Entries changed by hand are found and fixed: a deleted FDB entry comes back, stray
    // flood/neighbour entries are removed.
    in_sandbox(
        &sb1,
        &format!(
            "bridge fdb del {} dev vxlan0 dst {} self",
            e2.mac, hosts.vtep2
        ),
    );
    in_sandbox(
        &sb1,
        "bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 198.18.201.99 self permanent",
    );
    in_sandbox(
        &sb1,
        "ip neigh add 10.77.0.99 lladdr 02:42:0a:4d:00:63 dev vxlan0 nud permanent",
    );
    let ops = plan(&d1, &dp1.observe().await.unwrap());
    assert_eq!(
        ops,
        vec![
            Op::DelNeigh {
                network: "blue".into(),
                ip: Ipv4Addr::new(10, 77, 0, 99)
            },
            Op::DelFlood {
                network: "blue".into(),
                vtep: Ipv4Addr::new(198, 18, 201, 99)
            },
            Op::AddFdb {
                network: "blue".into(),
                mac: e2.mac,
                vtep: hosts.vtep2
            },
        ]
    );
    assert!(dp1.apply(&ops).await.is_ok());
    assert!(plan(&d1, &dp1.observe().await.unwrap()).is_empty());
    assert!(ping_ok(&c1, ip2), "ping after repair failed");

    // A new datapath over the same run dir adopts what exists.
    let observed = dp1.observe().await.unwrap();
    let dp1b = kernel_dp(&run1.0.clone(), Some(netns_path(&hosts.h1)));
    assert_eq!(dp1b.observe().await.unwrap(), observed);
    let blue = &observed.networks["blue"];
    assert_eq!(blue.endpoints["ep-one"].ip, Some(ip1));
    assert_eq!(blue.endpoints["ep-one"].mac, Some(e1.mac));
    assert_eq!(blue.endpoints["ep-one"].host_ifname, a1.host_ifname);
    assert!(blue.endpoints["ep-one"].healthy);
    assert!(plan(&d1, &observed).is_empty());

    // Observing repeatedly leaks no sockets or tasks (each pass opens its own netlink
    // connections, which must close when dropped).
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    for _ in 0..20 {
        dp1b.observe().await.unwrap();
    }
    let mut settled = false;
    for _ in 0..100 {
        if fds() <= before + 2 {
            settled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(settled, "fd count grew from {before} to {}", fds());

    // Removing the peer removes its FDB and neighbour entries (and the flood entry).
    let d1_empty = desired(&s1, &[], &["ep-one"]);
    let ops = plan(&d1_empty, &dp1b.observe().await.unwrap());
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(dp1b.apply(&ops).await.is_ok());
    // Only the vxlan device's own entries (`self`, with a `dst`) are ours; the bridge may
    // still hold a learned `master br0` entry for the MAC until it ages out.
    let fdb = in_sandbox(&sb1, "bridge fdb show dev vxlan0");
    let own: Vec<&str> = fdb.lines().filter(|l| l.contains(" dst ")).collect();
    assert!(own.is_empty(), "{fdb}");
    let neigh = in_sandbox(&sb1, "ip neigh show dev vxlan0");
    assert!(!neigh.contains(&ip2.to_string()), "{neigh}");
    assert!(!ping_ok(&c1, ip2), "ping should fail without the peer");

    // Detach removes the veth (both ends); detaching again is fine.
    dp1b.detach("blue", "ep-one").await.unwrap();
    assert!(!sh_try(&format!("ip -n {c1} link show eth0")).0);
    assert!(!in_sandbox(&sb1, "ip -o link show").contains(&a1.host_ifname));
    dp1b.detach("blue", "ep-one").await.unwrap();
    assert!(
        dp1b.observe().await.unwrap().networks["blue"]
            .endpoints
            .is_empty()
    );

    // The network is no longer desired here: plan deletes it.
    let ops = plan(&Default::default(), &dp1b.observe().await.unwrap());
    assert_eq!(
        ops,
        vec![Op::DeleteNetwork {
            network: "blue".into()
        }]
    );
    assert!(dp1b.apply(&ops).await.is_ok());
    assert!(!sb1.exists());
    assert!(dp1b.observe().await.unwrap().networks.is_empty());
    dp2.remove_network("blue").await.unwrap();
    dp2.remove_network("blue").await.unwrap();
    assert!(!sh_try(&format!("ip -n {c2} link show eth0")).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_recreates_deleted_devices_and_restores_entries() {
    require_root();
    let t = tag();
    let mut ns = Namespaces::default();
    let hosts = two_hosts(&mut ns, &t, 202);
    let c1 = ns.add(&format!("c1-{t}"));
    let c2 = ns.add(&format!("c2-{t}"));
    let run1 = RunDir::new(&format!("{t}-1"));
    let run2 = RunDir::new(&format!("{t}-2"));
    let dp1 = kernel_dp(&run1.0.clone(), Some(netns_path(&hosts.h1)));
    let dp2 = kernel_dp(&run2.0.clone(), Some(netns_path(&hosts.h2)));
    let s1 = spec("red", 4200, "10.78.0.0/24", hosts.vtep1);
    let s2 = spec("red", 4200, "10.78.0.0/24", hosts.vtep2);
    let ip1 = Ipv4Addr::new(10, 78, 0, 2);
    let ip2 = Ipv4Addr::new(10, 78, 0, 3);
    let e1 = endpoint("a", &c1, ip1);
    let e2 = endpoint("b", &c2, ip2);
    // attach creates the network on its own.
    dp1.attach(&s1, &e1).await.unwrap();
    dp2.attach(&s2, &e2).await.unwrap();
    let d1 = desired(
        &s1,
        &[RemotePeer {
            mac: e2.mac,
            ip: ip2,
            vtep: hosts.vtep2,
        }],
        &["a"],
    );
    let d2 = desired(
        &s2,
        &[RemotePeer {
            mac: e1.mac,
            ip: ip1,
            vtep: hosts.vtep1,
        }],
        &["b"],
    );
    assert!(
        dp1.apply(&plan(&d1, &dp1.observe().await.unwrap()))
            .await
            .is_ok()
    );
    assert!(
        dp2.apply(&plan(&d2, &dp2.observe().await.unwrap()))
            .await
            .is_ok()
    );
    assert!(ping_ok(&c1, ip2));

    // Someone deletes vxlan0 and br0 by hand: the plan repairs and re-adds all entries.
    let sb1 = dp1.sandbox_path("red");
    in_sandbox(&sb1, "ip link del vxlan0");
    in_sandbox(&sb1, "ip link del br0");
    let ops = plan(&d1, &dp1.observe().await.unwrap());
    assert!(matches!(ops[0], Op::RepairNetwork { .. }), "{ops:?}");
    assert!(
        ops.iter().any(|o| matches!(o, Op::AddFdb { .. })),
        "{ops:?}"
    );
    let report = dp1.apply(&ops).await;
    assert!(report.is_ok(), "{:?}", report.failed);
    assert!(plan(&d1, &dp1.observe().await.unwrap()).is_empty());
    assert!(ping_ok(&c1, ip2), "ping after repair failed");

    // An endpoint that is no longer desired loses its port.
    let d1_gone = desired(
        &s1,
        &[RemotePeer {
            mac: e2.mac,
            ip: ip2,
            vtep: hosts.vtep2,
        }],
        &[],
    );
    let ops = plan(&d1_gone, &dp1.observe().await.unwrap());
    assert_eq!(
        ops,
        vec![Op::RemoveEndpointPort {
            network: "red".into(),
            endpoint_id: "a".into()
        }]
    );
    assert!(dp1.apply(&ops).await.is_ok());
    assert!(!sh_try(&format!("ip -n {c1} link show eth0")).0);

    dp1.remove_network("red").await.unwrap();
    dp2.remove_network("red").await.unwrap();
    assert!(!sh(&format!("ip -n {} -o link show", hosts.h1)).contains("vxlan"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_changes_nothing() {
    require_root();
    let t = tag();
    let mut ns = Namespaces::default();
    let hosts = two_hosts(&mut ns, &t, 203);
    let c1 = ns.add(&format!("c1-{t}"));
    let c2 = ns.add(&format!("c2-{t}"));
    let run1 = RunDir::new(&format!("{t}-1"));
    let dp = kernel_dp(&run1.0.clone(), Some(netns_path(&hosts.h1)));
    let s = spec("green", 4300, "10.79.0.0/24", hosts.vtep1);

    // Missing container namespace: clear error, no sandbox created.
    let mut e = endpoint("x", &c1, Ipv4Addr::new(10, 79, 0, 2));
    e.netns = "/run/netns/dpt-does-not-exist".into();
    let err = dp.attach(&s, &e).await.unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(dp.observe().await.unwrap().networks.is_empty());

    // Not a namespace file.
    e.netns = "/etc/hostname".into();
    let err = dp.attach(&s, &e).await.unwrap_err().to_string();
    assert!(err.contains("not a network namespace"), "{err}");

    // Address outside the subnet.
    let e = endpoint("x", &c1, Ipv4Addr::new(10, 80, 0, 2));
    let err = dp.attach(&s, &e).await.unwrap_err().to_string();
    assert!(err.contains("outside the subnet"), "{err}");

    // Bad network spec.
    let mut bad = s.clone();
    bad.vni = 0;
    assert!(dp.ensure_network(&bad).await.is_err());
    bad = s.clone();
    bad.name = "../x".into();
    assert!(dp.ensure_network(&bad).await.is_err());
    assert!(dp.observe().await.unwrap().networks.is_empty());

    // The host namespace is not a container.
    let mut e = endpoint("x", &c1, Ipv4Addr::new(10, 79, 0, 2));
    e.netns = netns_path(&hosts.h1);
    assert!(dp.attach(&s, &e).await.is_err());

    // Duplicate address and MAC on the network.
    let e1 = endpoint("first", &c1, Ipv4Addr::new(10, 79, 0, 2));
    dp.attach(&s, &e1).await.unwrap();
    let mut dup = endpoint("second", &c2, Ipv4Addr::new(10, 79, 0, 2));
    dup.mac = "02:00:00:00:00:99".parse().unwrap();
    let err = dp.attach(&s, &dup).await.unwrap_err().to_string();
    assert!(err.contains("already used by endpoint first"), "{err}");
    let mut dup = endpoint("second", &c2, Ipv4Addr::new(10, 79, 0, 3));
    dup.mac = e1.mac;
    let err = dp.attach(&s, &dup).await.unwrap_err().to_string();
    assert!(err.contains("MAC"), "{err}");
    assert!(
        !sh_try(&format!("ip -n {c2} link show eth0")).0,
        "nothing created in c2"
    );
    assert_eq!(dp.endpoints("green").await.unwrap().len(), 1);

    // A remote neighbour entry for an address IPAM just handed to a local endpoint is stale:
    // attach removes it instead of failing.
    let sb = dp.sandbox_path("green");
    in_sandbox(
        &sb,
        "ip neigh add 10.79.0.6 lladdr 02:00:00:00:00:66 dev vxlan0 nud permanent",
    );
    let reused = endpoint("reused", &c1, Ipv4Addr::new(10, 79, 0, 6));
    let mut reused = reused;
    reused.ifname = Some("eth5".into());
    dp.attach(&s, &reused).await.unwrap();
    assert!(!in_sandbox(&sb, "ip neigh show dev vxlan0").contains("10.79.0.6"));
    dp.detach("green", "reused").await.unwrap();

    // A requested name that is taken is refused; otherwise the next free ethN is used.
    sh(&format!(
        "ip -n {c2} link add eth0 type veth peer name dptx0"
    ));
    let mut named = endpoint("third", &c2, Ipv4Addr::new(10, 79, 0, 4));
    named.ifname = Some("eth0".into());
    let err = dp.attach(&s, &named).await.unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    named.ifname = None;
    let a = dp.attach(&s, &named).await.unwrap();
    assert_eq!(a.ifname, "eth1");
    assert_eq!(dp.attach(&s, &named).await.unwrap(), a);
    let mut custom = endpoint("fourth", &c2, Ipv4Addr::new(10, 79, 0, 5));
    custom.ifname = Some("ovl7".into());
    assert_eq!(dp.attach(&s, &custom).await.unwrap().ifname, "ovl7");

    // Invalid names for detach/remove are errors, unknown ones are no-ops.
    assert!(dp.detach("green", "bad id").await.is_err());
    dp.detach("green", "never-attached").await.unwrap();
    dp.detach("nonexistent", "x").await.unwrap();
    assert!(dp.remove_network("a/b").await.is_err());

    dp.remove_network("green").await.unwrap();
    assert!(!sh_try(&format!("ip -n {c1} link show eth0")).0);
    assert!(!sh_try(&format!("ip -n {c2} link show eth1")).0);
}

/// With `host_netns: None` the datapath works in the caller's namespace: the vxlan socket is
/// bound there and `underlay_mtu` reads it. The whole runtime runs on a thread that joined
/// the lab host namespace, as an agent started with `ip netns exec` would.
#[test]
fn host_netns_none_uses_the_callers_namespace() {
    require_root();
    let t = tag();
    let mut ns = Namespaces::default();
    let hosts = two_hosts(&mut ns, &t, 204);
    sh(&format!("ip -n {} link set u0 mtu 9000", hosts.h1));
    let c1 = ns.add(&format!("c1-{t}"));
    let run = RunDir::new(&format!("{t}-1"));
    let h1 = netns_path(&hosts.h1);
    let run_dir = run.0.clone();
    let vtep1 = hosts.vtep1;
    let result = std::thread::spawn(move || {
        let f = std::fs::File::open(&h1).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        assert_eq!(ovl_netlink::underlay_mtu(vtep1).unwrap(), 9000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dp = kernel_dp(&run_dir, None);
            let mut s = spec("plain", 4400, "10.81.0.0/24", vtep1);
            s.mtu = 8950;
            dp.ensure_network(&s).await.unwrap();
            let mut e = endpoint("p1", &c1, std::net::Ipv4Addr::new(10, 81, 0, 2));
            e.mtu = 8950;
            let a = dp.attach(&s, &e).await.unwrap();
            // Re-attach with a new address converges the interface to it.
            e.ip = std::net::Ipv4Addr::new(10, 81, 0, 9);
            assert_eq!(dp.attach(&s, &e).await.unwrap(), a);
            let addrs = sh(&format!("ip -n {c1} -o -4 addr show eth0"));
            assert!(
                addrs.contains("10.81.0.9/24") && !addrs.contains("10.81.0.2/"),
                "{addrs}"
            );
            assert!(sh(&format!("ip -n {c1} -o link show eth0")).contains("mtu 8950"));
            dp
        })
    })
    .join();
    let dp = result.expect("datapath thread panicked");
    let udp = sh(&format!("ip netns exec {} ss -uan", hosts.h1));
    // The kernel's vxlan socket (wildcard-bound on 4789) lives in the host namespace.
    assert!(udp.contains(":4789"), "{udp}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(dp.remove_network("plain")).unwrap();
    let udp = sh(&format!("ip netns exec {} ss -uan", hosts.h1));
    assert!(!udp.contains(":4789"), "{udp}");
}

/// The test guards remove namespaces and sandboxes even when a test panics midway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_clean_up_after_a_panic() {
    require_root();
    let t = tag();
    let ns_name = format!("dpt-g-{t}");
    let run_path = std::env::temp_dir().join(format!("dpt-run-{t}-g"));
    let inner_t = t.clone();
    let handle = tokio::spawn(async move {
        let mut ns = Namespaces::default();
        let host = ns.add(&format!("g-{inner_t}"));
        sh(&format!("ip -n {host} link add u0 type veth peer name u1"));
        sh(&format!("ip -n {host} addr add 198.18.205.1/24 dev u0"));
        let run = RunDir::new(&format!("{inner_t}-g"));
        let dp = kernel_dp(&run.0.clone(), Some(netns_path(&host)));
        dp.ensure_network(&spec(
            "gone",
            4500,
            "10.82.0.0/24",
            "198.18.205.1".parse().unwrap(),
        ))
        .await
        .unwrap();
        assert!(dp.sandbox_path("gone").exists());
        panic!("deliberate panic to exercise the guards");
    });
    assert!(handle.await.unwrap_err().is_panic());
    assert!(
        !sh("ip netns list").contains(&ns_name),
        "namespace left behind"
    );
    assert!(!run_path.exists(), "run dir left behind");
}
