//! Privileged tests in network namespaces created here (prefix `gwt-`).
//!
//! Topology per test (T = a short tag):
//! ```text
//!   gwt-T-out: bridge br0 198.18.0.1/24 (the underlay switch), 198.19.0.1 on lo ("outside")
//!   gwt-T-h1 : ul0 198.18.0.11/24, route 198.19.0.0/24 via 198.18.0.1  <- the gateway lives here
//!   gwt-T-h2 : ul0 198.18.0.12/24, route 198.19.0.0/24 via 198.18.0.1  (another host)
//!   gwt-T-cN : containers; a veth eth0 stands for the overlay interface
//! ```
//! The outside has no route to the gateway subnet, so it only answers when NAT works.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use nix::sched::{CloneFlags, setns};
use ovl_gateway::{Error, Gateway, GatewayConfig, PortMap, Proto};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged gateway tests need root (they create network namespaces)"
    );
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("{cmd} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Namespaces and files of one test; removed on drop, also when the test panics.
struct Lab {
    tag: String,
    namespaces: Vec<String>,
    state_dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require_root();
        let mut lab = Lab {
            tag: tag.to_string(),
            namespaces: Vec::new(),
            state_dir: PathBuf::from(format!("/tmp/gwt-{tag}-state")),
        };
        // Leftovers of an earlier crashed run.
        for n in ["out", "h1", "h2", "c1", "c2", "c3"] {
            let _ = sh_ok(&format!("ip netns del gwt-{tag}-{n}"));
        }
        let _ = std::fs::remove_dir_all(&lab.state_dir);

        let out = lab.ns("out");
        sh(&format!(
            "ip -n {out} link set lo up && ip -n {out} link add br0 type bridge && \
             ip -n {out} addr add 198.18.0.1/24 dev br0 && ip -n {out} link set br0 up && \
             ip -n {out} addr add 198.19.0.1/32 dev lo"
        ));
        for (h, last) in [("h1", 11), ("h2", 12)] {
            let ns = lab.ns(h);
            sh(&format!(
                "ip -n {out} link add p{h} type veth peer name ul0 netns {ns} && \
                 ip -n {out} link set p{h} master br0 up && ip -n {ns} link set lo up && \
                 ip -n {ns} addr add 198.18.0.{last}/24 dev ul0 && ip -n {ns} link set ul0 up && \
                 ip -n {ns} route add 198.19.0.0/24 via 198.18.0.1"
            ));
        }
        lab
    }

    /// Creates (once) and returns the name of namespace `gwt-TAG-short`.
    fn ns(&mut self, short: &str) -> String {
        let name = format!("gwt-{}-{short}", self.tag);
        if !self.namespaces.contains(&name) {
            sh(&format!("ip netns add {name}"));
            self.namespaces.push(name.clone());
        }
        name
    }

    /// A container namespace with an `eth0` (a veth; no dummy driver here) standing for the overlay
    /// interface.
    fn container(&mut self, short: &str) -> String {
        let ns = self.ns(short);
        sh(&format!(
            "ip -n {ns} link set lo up && ip -n {ns} link add eth0 type veth peer name ovlpeer && \
             ip -n {ns} addr add 10.77.0.{}/24 dev eth0 && ip -n {ns} link set eth0 up",
            10 + self.namespaces.len()
        ));
        ns
    }

    fn path(&self, short: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/gwt-{}-{short}", self.tag))
    }

    fn config(&self) -> GatewayConfig {
        GatewayConfig {
            host_netns: Some(self.path("h1")),
            ..GatewayConfig::new(&self.state_dir)
        }
    }

    fn listing(&self) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("gwt-{}-h1", self.tag)])
            .args(["nft", "list", "table", "inet", "overlay_agent"])
            .output()
            .expect("run nft");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if !sh_ok(&format!("ip netns del {ns}")) {
                eprintln!("warning: could not delete netns {ns}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn run_in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).expect("open netns");
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A TCP and UDP server in a namespace answering every request with the peer address it saw.
struct EchoPeer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoPeer {
    /// `ip` matters for UDP: a wildcard-bound socket answers from the address of the route back,
    /// which need not be the address the request went to.
    fn start(ns: &Path, ip: &'static str, port: u16) -> EchoPeer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let tx2 = tx.clone();
        let tcp = run_in_netns(ns, move || {
            let l = TcpListener::bind((ip, port)).expect("bind tcp");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let s = stop.clone();
        let udp = run_in_netns(ns, move || {
            let u = UdpSocket::bind((ip, port)).expect("bind udp");
            u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            tx2.send(()).unwrap();
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            }
        });
        rx.recv().unwrap();
        rx.recv().unwrap();
        EchoPeer {
            stop,
            threads: vec![tcp, udp],
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// TCP request from inside `ns`; returns what the server saw as our address.
fn tcp_ask(ns: &Path, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    run_in_netns(ns, move || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| format!("read: {e}"))?;
        Ok(s)
    })
    .join()
    .unwrap()
}

/// UDP request from inside `ns`; returns what the server saw as our address.
fn udp_ask(ns: &Path, to: &str) -> Result<String, String> {
    udp_ask_from(ns, "0.0.0.0", to)
}

/// [`udp_ask`] from source address `from` (one of the namespace's own).
fn udp_ask_from(ns: &Path, from: &'static str, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    run_in_netns(ns, move || {
        let u = UdpSocket::bind((from, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        // A few tries: the very first datagram may wait for ARP resolution.
        for _ in 0..3 {
            u.send_to(b"hi", to).map_err(|e| format!("send: {e}"))?;
            if let Ok((n, _)) = u.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        Err(format!("no UDP answer from {to}"))
    })
    .join()
    .unwrap()
}

fn tcp(h: u16, c: u16) -> PortMap {
    PortMap {
        host_port: h,
        port: c,
        proto: Proto::Tcp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_isolation_publish_reconcile_teardown() {
    let mut lab = Lab::new("a");
    let c1n = lab.container("c1");
    let c2n = lab.container("c2");
    let (h1, h2, out, c1, c2) = (
        lab.path("h1"),
        lab.path("h2"),
        lab.path("out"),
        lab.path("c1"),
        lab.path("c2"),
    );
    let gw = Gateway::new(lab.config()).unwrap();
    let info = gw.ensure().await.unwrap();
    assert_eq!(info.bridge, "ovl_gwbridge");
    assert_eq!(info.subnet, "172.18.0.0/20".parse::<Ipv4Network>().unwrap());
    assert_eq!(info.address.to_string(), "172.18.0.1");
    assert!(sh("ip -n gwt-a-h1 -4 addr show ovl_gwbridge").contains("172.18.0.1/20"));
    assert_eq!(
        sh("ip netns exec gwt-a-h1 cat /proc/sys/net/ipv4/ip_forward").trim(),
        "1"
    );

    let e1 = gw.attach("ep1", &c1).await.unwrap();
    let e2 = gw.attach("ep2", &c2).await.unwrap();
    assert_eq!(e1.ifname, "eth1", "eth0 is taken by the overlay");
    assert_eq!(e1.ip.to_string(), "172.18.0.2/20");
    assert_eq!(e2.ip.to_string(), "172.18.0.3/20");
    assert_eq!(e1.mac, "02:42:ac:12:00:02");
    assert_eq!(
        gw.attach("ep1", &c1).await.unwrap(),
        e1,
        "attach is idempotent"
    );
    let route = sh(&format!("ip -n {c1n} route show default"));
    assert!(route.contains("via 172.18.0.1 dev eth1"), "{route}");
    assert!(sh(&format!("ip -n {c1n} link show eth1")).contains("02:42:ac:12:00:02"));
    let port = sh("ip -n gwt-a-h1 -d link show master ovl_gwbridge");
    assert_eq!(port.matches("isolated on").count(), 2, "{port}");

    // NAT: the outside sees the host's underlay address.
    let outside = EchoPeer::start(&out, "198.19.0.1", 7000);
    assert_eq!(tcp_ask(&c1, "198.19.0.1:7000").unwrap(), "198.18.0.11");
    assert_eq!(udp_ask(&c2, "198.19.0.1:7000").unwrap(), "198.18.0.11");

    // Isolation: c1 cannot reach c2 across the bridge, while the host can (server is up).
    let in_c2 = EchoPeer::start(&c2, "0.0.0.0", 7100);
    assert_eq!(tcp_ask(&h1, "172.18.0.3:7100").unwrap(), "172.18.0.1");
    assert!(tcp_ask(&c1, "172.18.0.3:7100").is_err());
    assert!(udp_ask(&c1, "172.18.0.3:7100").is_err());

    // Published ports: from another host, from outside, from the host itself.
    gw.publish(
        "ep2",
        &[
            tcp(8080, 7100),
            PortMap {
                host_port: 8081,
                port: 7100,
                proto: Proto::Udp,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(tcp_ask(&h2, "198.18.0.11:8080").unwrap(), "198.18.0.12");
    assert_eq!(udp_ask(&h2, "198.18.0.11:8081").unwrap(), "198.18.0.12");
    assert_eq!(tcp_ask(&out, "198.18.0.11:8080").unwrap(), "198.18.0.1");
    assert_eq!(tcp_ask(&h1, "198.18.0.11:8080").unwrap(), "198.18.0.11");
    assert_eq!(
        gw.published(),
        vec![
            ("ep2".to_string(), tcp(8080, 7100)),
            (
                "ep2".to_string(),
                PortMap {
                    host_port: 8081,
                    port: 7100,
                    proto: Proto::Udp
                }
            )
        ]
    );

    // A taken host port is refused and changes nothing.
    let before = lab.listing().unwrap();
    let err = gw
        .publish("ep1", &[tcp(9000, 1), tcp(8080, 7100)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::PortInUse { host_port: 8080, endpoint, .. } if endpoint == "ep2"),
        "{err}"
    );
    assert!(matches!(
        gw.publish("nope", &[tcp(9001, 1)]).await.unwrap_err(),
        Error::NotAttached(_)
    ));
    assert_eq!(lab.listing().unwrap(), before);
    assert_eq!(gw.published().len(), 2);

    // Drift: somebody flushes everything; reconcile restores exactly our table.
    assert!(!gw.reconcile().await.unwrap(), "nothing to repair yet");
    sh("ip netns exec gwt-a-h1 nft flush ruleset");
    assert!(lab.listing().is_none());
    assert!(tcp_ask(&h2, "198.18.0.11:8080").is_err());
    assert!(gw.reconcile().await.unwrap());
    assert_eq!(lab.listing().unwrap(), before);
    assert_eq!(tcp_ask(&h2, "198.18.0.11:8080").unwrap(), "198.18.0.12");
    assert_eq!(tcp_ask(&c1, "198.19.0.1:7000").unwrap(), "198.18.0.11");
    assert!(!gw.reconcile().await.unwrap());
    // A foreign edit inside our table is also detected.
    sh("ip netns exec gwt-a-h1 nft add rule inet overlay_agent forward accept");
    assert!(gw.reconcile().await.unwrap());
    assert_eq!(lab.listing().unwrap(), before);

    // Somebody deletes the bridge: reconcile recreates it and re-attaches the ports, isolated.
    sh("ip -n gwt-a-h1 link del ovl_gwbridge");
    assert!(tcp_ask(&c1, "198.19.0.1:7000").is_err());
    assert!(gw.reconcile().await.unwrap());
    assert_eq!(tcp_ask(&c1, "198.19.0.1:7000").unwrap(), "198.18.0.11");
    let port = sh("ip -n gwt-a-h1 -d link show master ovl_gwbridge");
    assert_eq!(port.matches("isolated on").count(), 2, "{port}");
    assert!(tcp_ask(&c1, "172.18.0.3:7100").is_err());
    assert!(!gw.reconcile().await.unwrap());

    // Unpublish stops the port.
    gw.unpublish("ep2").await.unwrap();
    assert!(tcp_ask(&h2, "198.18.0.11:8080").is_err());
    assert!(gw.published().is_empty());

    // Detach removes the published ports, the interface, and frees the address.
    gw.publish("ep2", &[tcp(8080, 7100)]).await.unwrap();
    assert!(tcp_ask(&h2, "198.18.0.11:8080").is_ok());
    gw.detach("ep2").await.unwrap();
    gw.detach("ep2").await.unwrap();
    assert!(tcp_ask(&h2, "198.18.0.11:8080").is_err());
    assert!(!sh_ok(&format!("ip -n {c2n} link show eth1")));
    assert!(gw.published().is_empty());
    let e3 = gw.attach("ep3", &c2).await.unwrap();
    assert_eq!(
        e3.ip.to_string(),
        "172.18.0.3/20",
        "released address is reused"
    );
    assert_eq!(gw.endpoints().len(), 2);
    drop(in_c2);
    drop(outside);

    // Teardown removes everything and reports no error.
    let errors = gw.teardown().await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(lab.listing().is_none());
    assert!(!sh_ok("ip -n gwt-a-h1 link show ovl_gwbridge"));
    assert!(!sh_ok(&format!("ip -n {c1n} link show eth1")));
    assert!(!lab.state_dir.join("gateway.json").exists());
    assert!(gw.info().is_none());
    // Teardown again is clean too.
    assert!(gw.teardown().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_subnet_avoids_routes_and_is_stable() {
    let lab = Lab::new("b");
    sh("ip -n gwt-b-h1 route add 172.18.0.0/16 via 198.18.0.1");
    let gw = Gateway::new(lab.config()).unwrap();
    let in_use = gw.host_networks().await.unwrap();
    assert!(
        in_use.contains(&"172.18.0.0/16".parse().unwrap()),
        "{in_use:?}"
    );
    assert!(
        in_use.contains(&"198.18.0.0/24".parse().unwrap()),
        "{in_use:?}"
    );
    let err = ovl_gateway::validate_gw_subnet("172.18.128.0/24", &in_use, &[]).unwrap_err();
    assert!(matches!(err, Error::OverlapsHost { .. }), "{err}");
    let info = gw.ensure().await.unwrap();
    assert_eq!(info.subnet.to_string(), "172.19.0.0/20");
    // Our own bridge route does not count as "in use".
    assert!(!gw.host_networks().await.unwrap().contains(&info.subnet));
    drop(gw);

    // A restarted agent keeps the subnet even though the blocking route is gone now.
    sh("ip -n gwt-b-h1 route del 172.18.0.0/16 via 198.18.0.1");
    let gw = Gateway::new(lab.config()).unwrap();
    assert_eq!(gw.info().unwrap().subnet.to_string(), "172.19.0.0/20");
    assert_eq!(gw.ensure().await.unwrap(), info);
    // The restarted process has not applied anything itself yet: reconcile finds the kernel
    // in order (same table content) but re-applies once to learn it; afterwards it is quiet.
    gw.reconcile().await.unwrap();
    assert!(!gw.reconcile().await.unwrap());

    // Overlays are avoided too.
    let errors = gw.teardown().await;
    assert!(errors.is_empty(), "{errors:?}");
    let gw = Gateway::new(lab.config()).unwrap();
    let overlay: Ipv4Network = "172.16.0.0/13".parse().unwrap();
    let info = gw.ensure_with(&[overlay]).await.unwrap();
    assert_eq!(info.subnet.to_string(), "172.24.0.0/20");
    assert!(gw.teardown().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subnets_change_nothing() {
    let mut lab = Lab::new("c");
    let c1 = {
        lab.container("c1");
        lab.path("c1")
    };

    // Overlaps the underlay route of the host.
    let cfg = GatewayConfig {
        subnet: Some("198.18.0.0/25".parse().unwrap()),
        ..lab.config()
    };
    let gw = Gateway::new(cfg).unwrap();
    let err = gw.ensure().await.unwrap_err();
    assert!(matches!(err, Error::OverlapsHost { .. }), "{err}");
    assert!(err.to_string().contains("198.18.0.0/24"), "{err}");
    // Overlaps an overlay.
    let cfg = GatewayConfig {
        subnet: Some("10.50.0.0/24".parse().unwrap()),
        ..lab.config()
    };
    let gw = Gateway::new(cfg.clone()).unwrap();
    let err = gw
        .ensure_with(&["10.50.0.0/16".parse().unwrap()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::OverlapsOverlay { .. }), "{err}");
    assert!(lab.listing().is_none(), "no table was created");
    assert!(!sh_ok("ip -n gwt-c-h1 link show ovl_gwbridge"));
    assert!(!lab.state_dir.join("gateway.json").exists());
    assert!(gw.info().is_none());
    // Invalid bridge names are refused up front.
    assert!(matches!(
        Gateway::new(GatewayConfig {
            bridge: "a-name-far-too-long".into(),
            ..lab.config()
        }),
        Err(Error::InvalidBridge(_))
    ));

    // A valid explicit subnet works; a different one later is refused while in use.
    let info = gw.ensure().await.unwrap();
    assert_eq!(info.address.to_string(), "10.50.0.1");
    let ep = gw.attach("ep1", &c1).await.unwrap();
    assert_eq!(ep.ip.to_string(), "10.50.0.2/24");
    let before = lab.listing().unwrap();
    drop(gw);
    let gw2 = Gateway::new(GatewayConfig {
        subnet: Some("10.60.0.0/24".parse().unwrap()),
        ..lab.config()
    })
    .unwrap();
    let err = gw2.ensure().await.unwrap_err();
    assert!(matches!(err, Error::SubnetInUse { .. }), "{err}");
    assert_eq!(lab.listing().unwrap(), before);
    assert!(sh("ip -n gwt-c-h1 -4 addr show ovl_gwbridge").contains("10.50.0.1/24"));
    // Invalid endpoint ids are refused before anything happens.
    assert!(matches!(
        gw2.attach("bad id", &c1).await.unwrap_err(),
        Error::InvalidEndpointId(_)
    ));
    // Attaching into a namespace that does not exist fails and leaves no veth behind.
    let gw = Gateway::new(cfg).unwrap();
    assert!(
        gw.attach("ep9", Path::new("/run/netns/gwt-c-nope"))
            .await
            .is_err()
    );
    let links = sh("ip -n gwt-c-h1 -o link show");
    assert_eq!(links.matches("ovg").count(), 1, "{links}");
    assert_eq!(gw.endpoints().len(), 1);
    assert!(gw.teardown().await.is_empty());
}

/// Docker's iptables (nft backend) in the same namespace: FORWARD policy DROP beats an accept in
/// any other base chain, so forwarded gateway traffic needs the DOCKER-USER exception we
/// document (and render); our own table is left alone by Docker and vice versa.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coexists_with_docker_forward_drop_given_the_exception() {
    let mut lab = Lab::new("d");
    lab.container("c1");
    let (c1, out) = (lab.path("c1"), lab.path("out"));
    let gw = Gateway::new(lab.config()).unwrap();
    gw.ensure().await.unwrap();
    gw.attach("ep1", &c1).await.unwrap();
    let outside = EchoPeer::start(&out, "198.19.0.1", 7000);
    assert_eq!(tcp_ask(&c1, "198.19.0.1:7000").unwrap(), "198.18.0.11");

    // What dockerd sets up (filter FORWARD policy DROP, jump to DOCKER-USER).
    sh("ip netns exec gwt-d-h1 iptables -N DOCKER-USER && \
        ip netns exec gwt-d-h1 iptables -A DOCKER-USER -j RETURN && \
        ip netns exec gwt-d-h1 iptables -A FORWARD -j DOCKER-USER && \
        ip netns exec gwt-d-h1 iptables -P FORWARD DROP");
    assert!(
        tcp_ask(&c1, "198.19.0.1:7000").is_err(),
        "Docker's policy drops it"
    );
    for cmd in ovl_gateway::ruleset::docker_user_exception("ovl_gwbridge") {
        sh(&format!("ip netns exec gwt-d-h1 {cmd}"));
    }
    assert_eq!(tcp_ask(&c1, "198.19.0.1:7000").unwrap(), "198.18.0.11");
    // Re-applying our table does not disturb Docker's rules and vice versa.
    sh("ip netns exec gwt-d-h1 nft flush table inet overlay_agent");
    assert!(gw.reconcile().await.unwrap());
    assert!(sh("ip netns exec gwt-d-h1 iptables -S DOCKER-USER").contains("ovl_gwbridge"));
    assert_eq!(tcp_ask(&c1, "198.19.0.1:7000").unwrap(), "198.18.0.11");
    drop(outside);
    assert!(gw.teardown().await.is_empty());
    assert!(sh("ip netns exec gwt-d-h1 iptables -S FORWARD").contains("-P FORWARD DROP"));
}

/// A container behind a bridge of h1 named `bridge` (`172.S.0.1/24` on h1, the container at
/// `.2` with its default route there): what a Docker container on `docker0` or
/// `docker_gwbridge` looks like to the host.
fn bridged_container(lab: &mut Lab, short: &str, bridge: &str, s: u8) -> PathBuf {
    let ns = lab.ns(short);
    let tag = &lab.tag;
    sh(&format!(
        "ip -n gwt-{tag}-h1 link add {bridge} type bridge && \
         ip -n gwt-{tag}-h1 addr add 172.{s}.0.1/24 dev {bridge} && \
         ip -n gwt-{tag}-h1 link set {bridge} up && \
         ip -n gwt-{tag}-h1 link add v{short} type veth peer name eth0 netns {ns} && \
         ip -n gwt-{tag}-h1 link set v{short} master {bridge} up && \
         ip -n {ns} link set lo up && ip -n {ns} addr add 172.{s}.0.2/24 dev eth0 && \
         ip -n {ns} link set eth0 up && ip -n {ns} route add default via 172.{s}.0.1"
    ));
    lab.path(short)
}

/// The DNS address for Docker containers: held by `ovl_dns`, reachable from the host itself
/// and from containers of the allowed bridges, dropped (and counted) from anywhere else, in our
/// own table; repaired when deleted or flushed, next to the gateway's chains once the bridge
/// exists; gone after teardown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_address_is_guarded_and_repaired() {
    let mut lab = Lab::new("e");
    let allowed = bridged_container(&mut lab, "c1", "docker_gwbridge", 30);
    let other = bridged_container(&mut lab, "c2", "virbr9", 31);
    let h1 = lab.path("h1");
    let h2 = lab.path("h2");
    sh("ip -n gwt-e-h2 route add 169.254.53.53/32 via 198.18.0.11");
    let cfg = GatewayConfig {
        dns: Some(ovl_gateway::DnsGuard {
            addr: "169.254.53.53".parse().unwrap(),
            allow: vec!["docker0".into(), "docker_gwbridge".into(), "br-*".into()],
            deny: vec!["ul0".into()],
        }),
        ..lab.config()
    };
    // Bad input first: a pattern nft would misread is refused before anything changes.
    let mut bad = cfg.clone();
    bad.dns.as_mut().unwrap().allow.push("br-*\"; drop".into());
    assert!(matches!(
        Gateway::new(bad),
        Err(Error::InvalidInterface { .. })
    ));
    assert!(!sh_ok("ip -n gwt-e-h1 link show ovl_dns"));
    let gw = Gateway::new(cfg.clone()).unwrap();

    gw.ensure_dns().await.unwrap();
    let addrs = sh("ip -n gwt-e-h1 -o addr show dev ovl_dns");
    assert!(addrs.contains("169.254.53.53/32"), "{addrs}");
    let t = lab.listing().expect("our table");
    assert!(
        t.contains("chain dns_guard") && !t.contains("chain forward"),
        "{t}"
    );
    assert!(gw.info().is_none(), "the bridge is not created for DNS");
    gw.ensure_dns().await.unwrap(); // idempotent
    assert!(!gw.reconcile().await.unwrap(), "nothing to repair");
    assert_eq!(gw.dns_dropped().await.unwrap(), Some(0));

    let server = EchoPeer::start(&h1, "169.254.53.53", 53);
    // Positive controls: the host itself, and a container of an allowed bridge (UDP and TCP).
    assert_eq!(udp_ask(&h1, "169.254.53.53:53").unwrap(), "169.254.53.53");
    assert_eq!(udp_ask(&allowed, "169.254.53.53:53").unwrap(), "172.30.0.2");
    assert_eq!(tcp_ask(&allowed, "169.254.53.53:53").unwrap(), "172.30.0.2");
    // Everyone else: nothing, and counted. udp_ask sends 3 datagrams per call, a TCP connect
    // retries its SYN.
    assert!(
        udp_ask(&other, "169.254.53.53:53").is_err(),
        "a bridge not allowed"
    );
    // A container of an allowed bridge passing for one of another bridge (a source address
    // that is not routed back through the bridge it came from): dropped by the guard, not
    // merely unanswerable (the reply would go to the other bridge), so the count tells.
    sh("ip -n gwt-e-c1 addr add 172.31.0.77/32 dev eth0");
    let before = gw.dns_dropped().await.unwrap().unwrap();
    assert!(
        udp_ask_from(&allowed, "172.31.0.77", "169.254.53.53:53").is_err(),
        "a forged source"
    );
    let forged = gw.dns_dropped().await.unwrap().unwrap() - before;
    assert_eq!(forged, 3, "the three forged datagrams are the guard's");
    assert!(udp_ask(&h2, "169.254.53.53:53").is_err(), "another host");
    assert!(
        tcp_ask(&h2, "169.254.53.53:53").is_err(),
        "another host, TCP"
    );
    let dropped = gw.dns_dropped().await.unwrap().unwrap();
    assert!(dropped >= 10, "dropped {dropped}");

    // Deleted by hand: recreated; the listening socket keeps working on the new interface.
    sh("ip -n gwt-e-h1 link del ovl_dns");
    assert!(udp_ask(&allowed, "169.254.53.53:53").is_err());
    assert!(gw.reconcile().await.unwrap());
    assert_eq!(udp_ask(&allowed, "169.254.53.53:53").unwrap(), "172.30.0.2");
    // Our table flushed: re-applied, the drop count kept.
    sh("ip netns exec gwt-e-h1 nft flush table inet overlay_agent");
    assert!(gw.reconcile().await.unwrap());
    assert!(udp_ask(&h2, "169.254.53.53:53").is_err());
    let again = gw.dns_dropped().await.unwrap().unwrap();
    assert!(again >= dropped + 3, "{dropped} then {again}");
    // A re-apply for another reason (the bridge comes up) keeps the count too.
    gw.ensure().await.unwrap();
    let t = lab.listing().unwrap();
    assert!(
        t.contains("chain forward") && t.contains("chain dns_guard"),
        "{t}"
    );
    assert!(gw.dns_dropped().await.unwrap().unwrap() >= again);
    assert_eq!(udp_ask(&allowed, "169.254.53.53:53").unwrap(), "172.30.0.2");
    assert!(udp_ask(&h2, "169.254.53.53:53").is_err());
    drop(server);

    assert!(gw.teardown().await.is_empty());
    assert!(lab.listing().is_none());
    assert!(!sh_ok("ip -n gwt-e-h1 link show ovl_dns"));
    // Without a guard nothing of it is made.
    let plain = Gateway::new(lab.config()).unwrap();
    plain.ensure_dns().await.unwrap();
    assert!(!sh_ok("ip -n gwt-e-h1 link show ovl_dns"));
    assert_eq!(plain.dns_dropped().await.unwrap(), None);
}
