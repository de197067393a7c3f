//! Privileged: two real dockerd 20.10 "hosts" in network namespaces `dkt-h1` and `dkt-h2`,
//! each running a busybox container on its default bridge; everything is removed afterwards.
//! Needs root, `docker.io` and `busybox-static`. Run: `cargo test -p ovl-docker --test dockerd_lab`.

use ovl_docker::testing::{Dockerd, DockerdOpts, Engine, NetnsGuard, require_root};
use ovl_docker::{ContainerNames, DockerWatcher, EarlyNames, WatchEvent};

fn mounts_mentioning(s: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(s))
        .map(str::to_string)
        .collect()
}

#[test]
fn two_dockerds_in_two_netns() {
    require_root();
    let work = tempfile::Builder::new()
        .prefix("dkt-lab-")
        .tempdir()
        .unwrap();
    let work_path = work.path().to_path_buf();
    let chains_before = std::process::Command::new("iptables-save")
        .output()
        .unwrap()
        .stdout;
    let pids;
    {
        let ns1 = NetnsGuard::create("dkt-h1").unwrap();
        let ns2 = NetnsGuard::create("dkt-h2").unwrap();
        let mut d1 = Dockerd::start(ns1.name(), work.path(), DockerdOpts::for_host(1)).unwrap();
        let d2 = Dockerd::start(ns2.name(), work.path(), DockerdOpts::for_host(2)).unwrap();
        pids = [d1.pid().unwrap(), d2.pid().unwrap()];

        for (d, bip) in [(&d1, "198.18.201."), (&d2, "198.18.202.")] {
            d.import_busybox("dkt/busybox:latest").unwrap();
            d.docker_ok([
                "run",
                "-d",
                "--name",
                "c1",
                "dkt/busybox:latest",
                "sleep",
                "3600",
            ])
            .unwrap();
            let addrs = d
                .docker_ok(["exec", "c1", "ip", "-o", "-4", "addr"])
                .unwrap();
            assert!(addrs.contains(bip), "{}: {addrs}", d.host());
            // Hostname of the daemon is the host name (own UTS namespace).
            let info = d.docker_ok(["info", "--format", "{{.Name}}"]).unwrap();
            assert_eq!(info, d.host());
            // The daemon's /run is private: the plugin dir exists there, not in the root ns.
            let out = d
                .exec_in_mount_ns(["ls", "-d", "/run/docker/plugins"])
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            // The daemon sees its own netns in /sys/class/net (fresh sysfs).
            let out = d.exec_in_mount_ns(["ls", "/sys/class/net"]).unwrap();
            let nets = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(nets.contains("docker0"), "{nets}");
        }
        // The two engines are independent: different IDs for their bridge networks.
        let id1 = d1
            .docker_ok(["network", "inspect", "-f", "{{.Id}}", "bridge"])
            .unwrap();
        let id2 = d2
            .docker_ok(["network", "inspect", "-f", "{{.Id}}", "bridge"])
            .unwrap();
        assert_ne!(id1, id2);
        d1.stop().unwrap();
        assert!(d1.pid().is_none());
        // d2 is stopped by Drop.
    }
    // Nothing left: processes, mounts, namespaces, files, root-ns iptables.
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "dockerd {pid} still alive"
        );
    }
    assert!(mounts_mentioning(&work_path.to_string_lossy()).is_empty());
    assert!(mounts_mentioning("dkt-h").is_empty());
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("dkt-h"));
    assert!(std::fs::read_dir(&work_path).unwrap().next().is_none());
    let chains_after = std::process::Command::new("iptables-save")
        .output()
        .unwrap()
        .stdout;
    let docker_chains = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .filter(|l| l.contains("DOCKER"))
            .count()
    };
    assert_eq!(docker_chains(&chains_before), docker_chains(&chains_after));
}

fn event(rx: &mut tokio::sync::mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(90), rx.recv())
                .await
                .expect("watcher event within 90s")
                .expect("watcher alive")
        })
    })
}

/// The next `Added`, with the `Connecting` events that came before it.
fn next_added(
    rx: &mut tokio::sync::mpsc::Receiver<WatchEvent>,
) -> (Vec<EarlyNames>, ContainerNames) {
    let mut early = Vec::new();
    loop {
        match event(rx) {
            WatchEvent::Connecting(e) => early.push(e),
            WatchEvent::Added(c) => return (early, c),
            other => panic!("expected Added, got {other:?}"),
        }
    }
}

/// The watcher lists, follows events, and after dockerd restarts reconnects and reports
/// what changed (containers without a restart policy are gone). Uses the `bridge` driver so
/// no plugin is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_survives_dockerd_restart() {
    require_root();
    let work = tempfile::Builder::new()
        .prefix("dkt-watch-")
        .tempdir()
        .unwrap();
    let ns = NetnsGuard::create("dkt-w1").unwrap();
    let mut d = tokio::task::block_in_place(|| {
        let d = Dockerd::start(ns.name(), work.path(), DockerdOpts::for_host(4)).unwrap();
        d.import_busybox("dkt/busybox:latest").unwrap();
        d.docker_ok(["network", "create", "dktbr"]).unwrap();
        d.docker_ok([
            "run",
            "-d",
            "--name",
            "c1",
            "--network",
            "dktbr",
            "--network-alias",
            "a1",
            "--network-alias",
            "a2",
            "dkt/busybox:latest",
            "sleep",
            "3600",
        ])
        .unwrap();
        d
    });
    let w = DockerWatcher::connect_driver(&d.socket_path(), "bridge")
        .await
        .unwrap();
    let (mut rx, task) = w.clone().spawn();
    let c1 = match event(&mut rx) {
        WatchEvent::Added(c) => c,
        other => panic!("expected Added(c1), got {other:?}"),
    };
    assert_eq!(c1.container_name, "c1");
    assert_eq!(c1.network_name, "dktbr");
    assert_eq!(c1.aliases, vec!["a1".to_string(), "a2".to_string()]);
    assert!(c1.ip_address.is_some() && c1.container_pid.is_some());
    assert_eq!(event(&mut rx), WatchEvent::Synced);

    tokio::task::block_in_place(|| d.restart()).unwrap();
    // dockerd stops its listener before its containers, but the event stream and a pooled
    // keep-alive connection stay open: c1's removal may come from the shutdown's own events
    // (before the stream ends) or from the resync after the reconnect. Either way exactly once,
    // at least one Disconnected, and the resync ends with Synced. An inspect in the middle of
    // the shutdown may also catch c1 half torn down (still running, its endpoint changing):
    // that is reported as new data for c1, and the removal then carries it.
    let mut last = c1.clone();
    let mut removed = 0;
    let mut disconnects = 0;
    loop {
        match event(&mut rx) {
            WatchEvent::Disconnected(_) => disconnects += 1,
            WatchEvent::Added(c) if c.container_id == c1.container_id && removed == 0 => last = c,
            WatchEvent::Removed(c) => {
                assert_eq!(c, last, "the removal carries c1's last data");
                removed += 1;
            }
            // dockerd may announce c1's endpoint again while it shuts down: early names only.
            WatchEvent::Connecting(n) if n.container_id == c1.container_id => {}
            WatchEvent::Synced if disconnects > 0 => break,
            other => panic!("expected Removed(c1), Disconnected or Synced, got {other:?}"),
        }
    }
    assert_eq!(removed, 1, "c1 removed exactly once");

    tokio::task::block_in_place(|| {
        d.docker_ok([
            "run",
            "-d",
            "--name",
            "c2",
            "--network",
            "dktbr",
            "dkt/busybox:latest",
            "sleep",
            "3600",
        ])
    })
    .unwrap();
    let (early, c2) = next_added(&mut rx);
    assert_eq!(c2.container_name, "c2");
    // The name was known from the connect event, before the container ran.
    assert_eq!(early.len(), 1, "{early:?}");
    assert_eq!(
        (
            early[0].container_name.as_str(),
            early[0].network_name.as_str(),
            early[0].network_id.as_str(),
            early[0].container_id.as_str()
        ),
        (
            "c2",
            "dktbr",
            c2.network_id.as_str(),
            c2.container_id.as_str()
        )
    );
    assert!(early[0].aliases.is_empty(), "{early:?}");
    if let Some(ep) = &early[0].endpoint_id {
        assert_eq!(ep, &c2.endpoint_id);
    }
    assert!(c2.aliases.is_empty(), "{:?}", c2.aliases);
    assert_eq!(
        w.network_name(&c2.network_id).await.unwrap().as_deref(),
        Some("dktbr")
    );
    // network connect / disconnect of a running container.
    tokio::task::block_in_place(|| {
        d.docker_ok(["network", "create", "dktbr2"]).unwrap();
        d.docker_ok(["network", "connect", "--alias", "z", "dktbr2", "c2"])
    })
    .unwrap();
    let (early, c2b) = next_added(&mut rx);
    for e in &early {
        assert_eq!(
            (e.container_name.as_str(), e.network_name.as_str()),
            ("c2", "dktbr2")
        );
        // dockerd updates a running container's snapshot in steps: the list may show the new
        // network before its aliases. The Added below, from inspect, carries them.
        assert!(
            e.aliases.is_empty() || e.aliases == vec!["z".to_string()],
            "{e:?}"
        );
    }
    assert_eq!(
        (c2b.container_name.as_str(), c2b.network_name.as_str()),
        ("c2", "dktbr2")
    );
    assert_eq!(c2b.aliases, vec!["z".to_string()]);
    tokio::task::block_in_place(|| d.docker_ok(["network", "disconnect", "dktbr2", "c2"])).unwrap();
    match event(&mut rx) {
        WatchEvent::Removed(c) => assert_eq!(c, c2b),
        other => panic!("expected Removed(c2 on dktbr2), got {other:?}"),
    }
    assert_eq!(w.snapshot().await.unwrap(), vec![c2.clone()]);
    assert_eq!(
        w.network_name("0000000000000000000000000000000000000000000000000000000000000000")
            .await
            .unwrap(),
        None
    );
    task.abort();
    tokio::task::block_in_place(|| d.stop()).unwrap();
}

/// Each engine: 20.10 from the machine's root, 26 and 28 from their release trees (their own
/// root, CLI and Compose v2); containers work; the watcher negotiates the engine's API version
/// and takes names from `DNSNames` where the engine has it; afterwards no process, mount or
/// file is left and the cached tree is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_engine_runs_from_its_root() {
    require_root();
    for (engine, ns_name, os) in [
        (Engine::Host, "dkt-r20", "bookworm"),
        (Engine::Trixie, "dkt-r26", "trixie"),
        (Engine::Sid, "dkt-r28", "sid"),
    ] {
        let work = tempfile::Builder::new()
            .prefix("dkt-tree-")
            .tempdir()
            .unwrap();
        let work_path = work.path().to_path_buf();
        // The machine's root for 20.10: only its listing is compared.
        let tree = tokio::task::block_in_place(|| engine.rootfs())
            .unwrap()
            .unwrap_or_else(|| "/".into());
        let tree_listing = |t: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(t)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let before = tree_listing(&tree);
        let pid;
        {
            let ns = NetnsGuard::create(ns_name).unwrap();
            let opts = DockerdOpts::for_engine(6, engine, &[]);
            let d = tokio::task::block_in_place(|| {
                let d = Dockerd::start(ns.name(), work.path(), opts).unwrap();
                d.import_busybox("dkt/busybox:latest").unwrap();
                d
            });
            pid = d.pid().unwrap();
            let (version, api) = d.server_version().unwrap();
            assert!(engine.runs(&version), "{engine}: {version}");
            eprintln!("{engine}: Docker {version}, API {api}");
            // dockerd runs from the release's root, not the machine's (Debian 12).
            let osr = d.exec_in_mount_ns(["cat", "/etc/os-release"]).unwrap();
            let osr = String::from_utf8_lossy(&osr.stdout).to_string();
            assert!(osr.contains(os), "{engine}: {osr}");
            let seen = std::fs::read_to_string(format!("/proc/{pid}/root/etc/os-release")).unwrap();
            assert_eq!(seen, osr);
            let ours = std::fs::read_to_string("/etc/os-release").unwrap();
            if engine == Engine::Host {
                assert_eq!(ours, osr);
            } else {
                assert_ne!(ours, osr, "{engine} must not run from the machine's root");
                // Compose v2 of that release (Debian 12 has only the Python v1).
                let compose = d.docker_ok(["compose", "version", "--short"]).unwrap();
                assert!(compose.starts_with('2'), "{engine}: compose {compose}");
            }
            // Containers run; a custom hostname and an alias on a user network.
            tokio::task::block_in_place(|| {
                d.docker_ok(["network", "create", "dktbr"]).unwrap();
                d.docker_ok([
                    "run",
                    "-d",
                    "--name",
                    "c1",
                    "--hostname",
                    "box1",
                    "--network",
                    "dktbr",
                    "--network-alias",
                    "a1",
                    "dkt/busybox:latest",
                    "sleep",
                    "3600",
                ])
                .unwrap();
            });
            let hosts = d.docker_ok(["exec", "c1", "cat", "/etc/hosts"]).unwrap();
            assert!(hosts.contains("box1"), "{hosts}");
            let w = DockerWatcher::connect_driver(&d.socket_path(), "bridge")
                .await
                .unwrap();
            let snap = w.snapshot().await.unwrap();
            assert_eq!(snap.len(), 1, "{snap:?}");
            // The alias and the custom hostname, as Docker's DNS has them: from DNSNames on
            // API 1.44+, from Aliases on 20.10 (which lists the hostname there; by default the
            // hostname is the short ID, which is left out).
            assert_eq!(snap[0].aliases, vec!["a1".to_string(), "box1".to_string()]);
            // The raw inspect, for the record (the watcher's fixtures come from such output).
            let raw = d
                .docker_ok([
                    "inspect",
                    "-f",
                    "{{json .NetworkSettings.Networks.dktbr}}",
                    "c1",
                ])
                .unwrap();
            eprintln!("{engine}: endpoint settings {raw}");
            drop(d);
            drop(ns);
        }
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        // No process anywhere still has this host's mounts (the overlay root names WORKDIR).
        let work_str = work_path.to_string_lossy().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(mi) = std::fs::read_to_string(e.path().join("mountinfo")) {
                assert!(
                    !mi.contains(&work_str),
                    "{:?} still mounts {work_str}",
                    e.path()
                );
            }
        }
        assert!(std::fs::read_dir(&work_path).unwrap().next().is_none());
        assert_eq!(
            before,
            tree_listing(&tree),
            "{engine}: the cached tree changed"
        );
    }
}

/// A killed test never drops its guard: the next run must replace the empty namespace it left,
/// and must not take over one that another run's processes still live in.
#[test]
fn netns_guard_replaces_only_empty_leftovers() {
    require_root();
    let name = "dkt-left";
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    // The leftover: created by hand, nothing in it, never deleted.
    ip(&["netns", "add", name]);
    let g = NetnsGuard::create(name).expect("an empty leftover is replaced");
    assert_eq!(g.name(), name);

    // Busy: a process lives in it, so a second guard of the same name is refused and the
    // namespace stays (its process is still in it).
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", name, "sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let pids = || {
        let o = std::process::Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    while pids().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "sleeper never entered {name}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = NetnsGuard::create(name).expect_err("a namespace in use is not taken over");
    assert!(err.to_string().contains("another run"), "{err}");
    assert!(!pids().is_empty(), "the busy namespace is left as it was");

    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    drop(g);
    assert!(!std::path::Path::new("/run/netns").join(name).exists());
}
