//! Privileged end-to-end test of the embedded DNS server (needs root; panics otherwise).
//!
//! Topology, all in namespaces created here and removed on exit (also on failure):
//!
//! ```text
//!  nmt-<pid>-c1 (net1)   nmt-<pid>-c9 (net2)      container namespaces: the server binds
//!        |                     |                  127.0.0.11:53 inside each one
//!        +------ sockets served by the test's runtime, which runs in ------+
//!  nmt-<pid>-agent   198.19.0.1/24 ==veth== 198.19.0.2/24   nmt-<pid>-out
//!   (shared listener on 198.19.0.1:53)                       dnsmasq (upstream)
//! ```
//!
//! Queries are made with `dig` through `ip netns exec`, exactly as a container would.
//! Run: `cargo test -p ovl-names --test dns_netns -- --nocapture`.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ovl_names::dns::{
    Client, ClientMap, Clients, DnsConfig, DnsServer, ForwardConfig, Upstreams, clients::Identify,
};
use ovl_names::records::{NameRecord, Zone};
use ovl_names::{ArcSwap, NamesError};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace, deleted on drop.
struct Netns(String);
impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        Netns(name)
    }
    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = Command::new("ip").args(["netns", "del", &self.0]).output() {
            eprintln!("cleanup: ip netns del {}: {e}", self.0);
        }
    }
}

/// A child process, killed by PID and reaped on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Clients that know nobody in advance: every query goes through `identify`, which takes
/// a moment and answers the current value.
struct Unknown(ArcSwap<Client>);
impl Clients for Unknown {
    fn known(&self, _ip: std::net::IpAddr) -> Option<Client> {
        None
    }
    fn identify(&self, _ip: std::net::IpAddr) -> Identify {
        let c = Client::clone(&self.0.load());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c
        })
    }
}

/// The parsed output of one `dig`.
#[derive(Debug)]
struct Dig {
    /// dig's exit code (9: no reply).
    code: i32,
    status: String,
    flags: Vec<String>,
    /// The data column of every answer record, in order.
    answers: Vec<String>,
    elapsed: Duration,
}

fn dig(ns: &str, server: &str, args: &[&str]) -> Dig {
    let start = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "dig", &format!("@{server}")])
        .args(["+noall", "+comments", "+answer", "+time=8", "+tries=1"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let flags = text
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect();
    Dig {
        code: out.status.code().unwrap_or(-1),
        status,
        flags,
        answers,
        elapsed,
    }
}

/// `dig` from a blocking thread, so the runtime serving DNS is never blocked by the client.
async fn adig(ns: &str, server: &str, args: &[&str]) -> Dig {
    let (ns, server) = (ns.to_string(), server.to_string());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dig(&ns, &server, &args)
    })
    .await
    .unwrap()
}

fn rec(network: &str, id: &str, name: &str, aliases: &[&str], ip: Ipv4Addr) -> NameRecord {
    NameRecord {
        network: network.into(),
        endpoint_id: id.into(),
        name: name.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        ip,
    }
}

fn zone() -> Zone {
    let mut records = vec![
        rec("net1", "e1", "c1", &[], Ipv4Addr::new(10, 1, 0, 2)),
        rec("net1", "e2", "c2", &["web"], Ipv4Addr::new(10, 1, 0, 3)),
        rec("net1", "e3", "c3", &["web"], Ipv4Addr::new(10, 1, 0, 4)),
        rec("net1", "e4", "c4", &["web"], Ipv4Addr::new(10, 1, 0, 5)),
        rec("net2", "e9", "c9", &[], Ipv4Addr::new(10, 2, 0, 9)),
        // The outside namespace's address, registered as an endpoint on net1 so the plain
        // listener can identify it by source address.
        rec("net1", "probe", "probe", &[], Ipv4Addr::new(198, 19, 0, 2)),
    ];
    for i in 0..60u8 {
        records.push(rec(
            "net1",
            &format!("b{i}"),
            &format!("bulk{i}"),
            &["big"],
            Ipv4Addr::new(10, 1, 1, i + 1),
        ));
    }
    Zone::build(records)
}

/// Runs `body` on a tokio runtime whose threads live in the namespace at `netns` (the agent's
/// namespace in this test: forwarded queries leave from there).
fn in_netns_runtime<F, Fut>(netns: PathBuf, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let worker = std::thread::spawn(move || {
        let ns = File::open(&netns).unwrap();
        // SAFETY: setns on an open namespace descriptor; affects only this thread (and the
        // runtime threads it spawns below), which end with this test.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body());
    });
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn embedded_dns_in_container_namespaces() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, setns)"
    );
    let pid = std::process::id();
    let agent = Netns::new(format!("nmt-{pid}-agent"));
    let out = Netns::new(format!("nmt-{pid}-out"));
    let c1 = Netns::new(format!("nmt-{pid}-c1"));
    let c9 = Netns::new(format!("nmt-{pid}-c9"));
    let (va, vo) = (format!("nmt{pid}a"), format!("nmt{pid}o"));
    run(&[
        "ip", "link", "add", &va, "netns", &agent.0, "type", "veth", "peer", "name", &vo, "netns",
        &out.0,
    ]);
    for (ns, dev, addr) in [(&agent, &va, "198.19.0.1/24"), (&out, &vo, "198.19.0.2/24")] {
        run(&["ip", "-n", &ns.0, "addr", "add", addr, "dev", dev]);
        run(&["ip", "-n", &ns.0, "link", "set", dev, "up"]);
        run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
    }

    // The upstream: dnsmasq in the outside namespace, authoritative for outside.test.
    let dir = TempDir(std::env::temp_dir().join(format!("nmt-dns-{pid}")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let hosts = dir.0.join("hosts");
    std::fs::write(
        &hosts,
        "198.19.0.77 www.outside.test\n198.19.0.78 other.outside.test\n",
    )
    .unwrap();
    let dnsmasq = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &out.0,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .args([
                "--listen-address=198.19.0.2",
                "--port=53",
                "--bind-interfaces",
                "--local=/outside.test/",
                "--user=root",
                "--group=root",
                "--pid-file=",
                "--log-facility=-",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (dnsmasq-base) must be installed"),
    );
    // Wait until dnsmasq answers (bounded).
    let t = Instant::now();
    while dig(&out.0, "198.19.0.2", &["www.outside.test"])
        .answers
        .is_empty()
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "dnsmasq did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (c1n, c9n, outn) = (c1.0.clone(), c9.0.clone(), out.0.clone());
    let (c1p, c9p) = (c1.path(), c9.path());
    let dnsmasq = std::sync::Mutex::new(dnsmasq);
    let dnsmasq = Arc::new(dnsmasq);
    let dnsmasq2 = dnsmasq.clone();
    in_netns_runtime(agent.path(), move || async move {
        let zone = Arc::new(ArcSwap::from_pointee(zone()));
        let server = DnsServer::new(
            zone.clone(),
            DnsConfig {
                forward: ForwardConfig {
                    upstreams: Upstreams::Servers(vec!["198.19.0.2:53".parse().unwrap()]),
                    timeout: Duration::from_secs(1),
                    attempts: 2,
                    ..ForwardConfig::default()
                },
                ..DnsConfig::default()
            },
        )
        .unwrap();
        let bound = server
            .add_listener("c1", &c1p, vec!["net1".into()])
            .await
            .unwrap();
        assert_eq!(bound, "127.0.0.11:53".parse::<SocketAddr>().unwrap());
        // Idempotent.
        server
            .add_listener("c1", &c1p, vec!["net1".into()])
            .await
            .unwrap();
        server
            .add_listener("c9", &c9p, vec!["net2".into()])
            .await
            .unwrap();
        assert_eq!(server.listener_keys(), ["c1", "c9"]);
        let dns = "127.0.0.11";

        // Bad input: a namespace that does not exist, a namespace whose 127.0.0.11:53 is taken
        // (by the listener above, from a second server). Errors, nothing registered.
        let other = DnsServer::new(
            zone.clone(),
            DnsConfig {
                forward: ForwardConfig {
                    upstreams: Upstreams::Servers(vec![]),
                    ..ForwardConfig::default()
                },
                ..DnsConfig::default()
            },
        )
        .unwrap();
        let err = other
            .add_listener("x", Path::new("/run/netns/nmt-does-not-exist"), vec![])
            .await
            .unwrap_err();
        assert!(
            matches!(err, NamesError::Netns { action: "open", .. }),
            "{err}"
        );
        let err = other
            .add_listener("x", &c1p, vec!["net1".into()])
            .await
            .unwrap_err();
        assert!(
            matches!(err, NamesError::Socket { action: "bind", .. }),
            "{err}"
        );
        assert!(other.listener_keys().is_empty());
        drop(other);

        // Cluster names, with and without the network domain, case-insensitive.
        for name in ["c2.net1", "c2", "C2.NET1."] {
            let d = adig(&c1n, dns, &[name]).await;
            assert_eq!(
                (d.status.as_str(), d.answers.clone()),
                ("NOERROR", vec!["10.1.0.3".into()]),
                "{name}: {d:?}"
            );
            assert!(d.flags.contains(&"aa".to_string()), "{d:?}");
        }
        // PTR.
        let d = adig(&c1n, dns, &["-x", "10.1.0.3"]).await;
        assert_eq!(d.answers, ["c2.net1."], "{d:?}");
        // AAAA of a known name: empty NOERROR.
        let d = adig(&c1n, dns, &["c2.net1", "AAAA"]).await;
        assert_eq!(
            (d.status.as_str(), d.answers.len()),
            ("NOERROR", 0),
            "{d:?}"
        );
        // A name on another network: NXDOMAIN with its domain, forwarded without.
        let d = adig(&c1n, dns, &["c9.net2"]).await;
        assert_eq!(d.status, "NXDOMAIN", "{d:?}");
        let d = adig(&c1n, dns, &["c9"]).await;
        assert!(
            d.answers.is_empty() && !d.flags.contains(&"aa".to_string()),
            "{d:?}"
        );
        let d = adig(&c1n, dns, &["nothere.net1"]).await;
        assert_eq!(d.status, "NXDOMAIN", "{d:?}");

        // Round robin: the order rotates from one answer to the next.
        let first = adig(&c1n, dns, &["web.net1"]).await.answers;
        let second = adig(&c1n, dns, &["web.net1"]).await.answers;
        assert_eq!(sorted(first.clone()), ["10.1.0.3", "10.1.0.4", "10.1.0.5"]);
        assert_eq!(sorted(second.clone()), sorted(first.clone()));
        assert_ne!(first, second, "round robin must change the order");

        // TCP.
        let d = adig(&c1n, dns, &["+tcp", "c2.net1"]).await;
        assert_eq!(d.answers, ["10.1.0.3"], "{d:?}");

        // Large answer: TC over UDP (no EDNS: 512 bytes), complete over TCP.
        let d = adig(&c1n, dns, &["+ignore", "+noedns", "big.net1"]).await;
        assert!(d.flags.contains(&"tc".to_string()), "{d:?}");
        let d = adig(&c1n, dns, &["+tcp", "big.net1"]).await;
        assert_eq!(d.answers.len(), 60, "{d:?}");
        // And without +ignore, dig itself falls back to TCP after the TC bit.
        let d = adig(&c1n, dns, &["+noedns", "big.net1"]).await;
        assert_eq!(d.answers.len(), 60, "{d:?}");

        // Upstream names are forwarded (answered by dnsmasq), also over TCP.
        let d = adig(&c1n, dns, &["www.outside.test"]).await;
        assert_eq!(
            (d.status.as_str(), d.answers.clone()),
            ("NOERROR", vec!["198.19.0.77".into()]),
            "{d:?}"
        );
        assert!(!d.flags.contains(&"aa".to_string()));
        let d = adig(&c1n, dns, &["+tcp", "www.outside.test"]).await;
        assert_eq!(d.answers, ["198.19.0.77"], "{d:?}");
        let d = adig(&c1n, dns, &["missing.outside.test"]).await;
        assert_eq!(d.status, "NXDOMAIN", "{d:?}");
        // overlayctl dns lookup path: same answers.
        let l = server
            .lookup(
                &["net1".into()],
                "www.outside.test",
                hickory_proto::rr::RecordType::A,
            )
            .await
            .unwrap();
        assert_eq!(
            l.answers
                .iter()
                .map(|r| r.data.as_str())
                .collect::<Vec<_>>(),
            ["198.19.0.77"]
        );
        let l = server
            .lookup(&["net1".into()], "web", hickory_proto::rr::RecordType::A)
            .await
            .unwrap();
        assert_eq!(l.answers.len(), 3);
        assert!(l.authoritative);

        // Fallback: a dead first upstream (nobody at 198.19.0.3) does not prevent the answer.
        let fallback = ovl_names::dns::Forwarder::new(&ForwardConfig {
            upstreams: Upstreams::Servers(vec![
                "198.19.0.3:53".parse().unwrap(),
                "198.19.0.2:53".parse().unwrap(),
            ]),
            timeout: Duration::from_secs(1),
            attempts: 2,
            ..ForwardConfig::default()
        })
        .unwrap();
        let t = Instant::now();
        let l = ovl_names::dns::lookup(
            &zone.load(),
            &fallback,
            &["net1".into()],
            "other.outside.test",
            hickory_proto::rr::RecordType::A,
        )
        .await
        .unwrap();
        println!(
            "fallback past a dead upstream answered in {:?}",
            t.elapsed()
        );
        assert_eq!(
            l.answers
                .iter()
                .map(|r| r.data.as_str())
                .collect::<Vec<_>>(),
            ["198.19.0.78"],
            "{l:?}"
        );
        assert!(!l.authoritative);

        // Scoping from the other container, and live network updates.
        let d = adig(&c9n, dns, &["c9"]).await;
        assert_eq!(d.answers, ["10.2.0.9"], "{d:?}");
        let d = adig(&c9n, dns, &["c2.net1"]).await;
        assert_eq!(d.status, "NXDOMAIN", "{d:?}");
        server
            .set_networks("c9", vec!["net1".into(), "net2".into()])
            .unwrap();
        let d = adig(&c9n, dns, &["c2.net1"]).await;
        assert_eq!(d.answers, ["10.1.0.3"], "{d:?}");
        assert!(matches!(
            server.set_networks("nope", vec![]),
            Err(NamesError::UnknownListener(_))
        ));

        // Zone swap: a new endpoint is visible at once.
        let mut records = zone.load().records().to_vec();
        records.push(rec("net1", "e5", "late", &[], Ipv4Addr::new(10, 1, 0, 50)));
        zone.store(Arc::new(Zone::build(records)));
        let d = adig(&c1n, dns, &["late.net1"]).await;
        assert_eq!(d.answers, ["10.1.0.50"], "{d:?}");

        // Shared listener in the agent namespace: the requester is who its source address is.
        // 198.19.0.2 (the "out" namespace) as a container on net1: scoped, with recursion.
        let shared: SocketAddr = "198.19.0.1:53".parse().unwrap();
        let out_ip = "198.19.0.2".parse().unwrap();
        let table = Arc::new(ClientMap::new(
            [(out_ip, Client::container(["net1"]))].into(),
            Client::Stranger,
        ));
        assert_eq!(
            server
                .add_shared_listener(shared, table.clone())
                .await
                .unwrap(),
            shared
        );
        let sh = "198.19.0.1";
        let d = adig(&outn, sh, &["c2.net1"]).await;
        assert_eq!(d.answers, ["10.1.0.3"], "{d:?}");
        let d = adig(&outn, sh, &["c9.net2"]).await;
        assert_eq!(d.status, "NXDOMAIN", "{d:?}");
        let d = adig(&outn, sh, &["www.outside.test"]).await;
        assert_eq!(d.answers, ["198.19.0.77"], "{d:?}");
        // As the host itself: every network's names, but no recursion (REFUSED, no "ra").
        table.insert(out_ip, Client::Host);
        let d = adig(&outn, sh, &["c9.net2"]).await;
        assert_eq!(d.answers, ["10.2.0.9"], "{d:?}");
        let d = adig(&outn, sh, &["+tcp", "c2.net1"]).await;
        assert_eq!(d.answers, ["10.1.0.3"], "{d:?}");
        for args in [&["www.outside.test"][..], &["+tcp", "www.outside.test"]] {
            let d = adig(&outn, sh, args).await;
            assert_eq!(d.status, "REFUSED", "{args:?}: {d:?}");
            assert!(!d.flags.contains(&"ra".to_string()), "{d:?}");
        }
        // A stranger: no answer at all, over UDP or TCP (positive control just above).
        table.set([(out_ip, Client::Stranger)].into());
        for args in [
            &["c2.net1"][..],
            &["+tcp", "c2.net1"],
            &["www.outside.test"],
        ] {
            let d = adig(&outn, sh, &[&["+time=1"][..], args].concat()).await;
            assert_ne!(d.code, 0, "{args:?}: a stranger got an answer: {d:?}");
            assert!(d.answers.is_empty(), "{d:?}");
        }
        assert!(server.remove_shared_listener(shared).await);
        // Sources the listener does not know yet are identified first (the first query of a
        // new container): answered as what identification says.
        let slow = Arc::new(Unknown(ArcSwap::from_pointee(Client::container(["net2"]))));
        server
            .add_shared_listener(shared, slow.clone())
            .await
            .unwrap();
        assert_eq!(server.shared_listeners(), [shared]);
        let d = adig(&outn, sh, &["c9.net2"]).await;
        assert_eq!(d.answers, ["10.2.0.9"], "{d:?}");
        let d = adig(&outn, sh, &["+tcp", "c9"]).await;
        assert_eq!(d.answers, ["10.2.0.9"], "{d:?}");
        slow.0.store(Arc::new(Client::Stranger));
        let d = adig(&outn, sh, &["+time=1", "c9.net2"]).await;
        assert_ne!(d.code, 0, "{d:?}");
        assert!(server.remove_shared_listener(shared).await);
        assert!(!server.remove_shared_listener(shared).await);

        // Upstream down: SERVFAIL, promptly (bounded by timeout x attempts), never a hang.
        {
            let mut p = dnsmasq2.lock().unwrap();
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
        let d = adig(&c1n, dns, &["other.outside.test"]).await;
        println!("upstream down: {} after {:?}", d.status, d.elapsed);
        assert_eq!(d.status, "SERVFAIL", "{d:?}");
        // Cluster names still work.
        let d = adig(&c1n, dns, &["c2.net1"]).await;
        assert_eq!(d.answers, ["10.1.0.3"], "{d:?}");

        // Removing the listener closes its sockets: no reply any more.
        assert!(server.remove_listener("c1").await);
        assert!(!server.remove_listener("c1").await);
        let d = adig(&c1n, dns, &["c2.net1"]).await;
        assert_ne!(d.code, 0, "a removed listener must not answer: {d:?}");
        // ...and it can be added again at once.
        server
            .add_listener("c1", &c1p, vec!["net1".into()])
            .await
            .unwrap();
        let d = adig(&c1n, dns, &["c2.net1"]).await;
        assert_eq!(d.answers, ["10.1.0.3"], "{d:?}");
        server.shutdown().await;
        assert!(server.listener_keys().is_empty());
    });
    drop(dnsmasq);
}

#[test]
fn one_server_many_containers() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, setns)"
    );
    let pid = std::process::id();
    const N: usize = 100;
    let namespaces: Vec<Netns> = (0..N)
        .map(|i| Netns::new(format!("nmt-{pid}-m{i}")))
        .collect();
    let names: Vec<(String, PathBuf)> =
        namespaces.iter().map(|n| (n.0.clone(), n.path())).collect();
    let here = PathBuf::from("/proc/self/ns/net");
    in_netns_runtime(here, move || async move {
        let records = (0..N)
            .map(|i| {
                rec(
                    "net1",
                    &format!("m{i}"),
                    &format!("m{i}"),
                    &[],
                    Ipv4Addr::new(10, 1, 2, i as u8 + 1),
                )
            })
            .collect();
        let zone = Arc::new(ArcSwap::from_pointee(Zone::build(records)));
        let server = DnsServer::new(
            zone,
            DnsConfig {
                forward: ForwardConfig {
                    upstreams: Upstreams::Servers(vec![]),
                    ..ForwardConfig::default()
                },
                ..DnsConfig::default()
            },
        )
        .unwrap();
        let start = Instant::now();
        for (i, (_, path)) in names.iter().enumerate() {
            server
                .add_listener(&format!("m{i}"), path, vec!["net1".into()])
                .await
                .unwrap();
        }
        println!("{N} listeners added in {:?}", start.elapsed());
        for i in [0, N / 2, N - 1] {
            let d = adig(
                &names[i].0,
                "127.0.0.11",
                &[&format!("m{}.net1", (i + 1) % N)],
            )
            .await;
            assert_eq!(d.answers, [format!("10.1.2.{}", (i + 1) % N + 1)], "{d:?}");
        }
        server.shutdown().await;
    });
    drop(namespaces);
}
