//! Names through Docker's DNS, at once (issue 17, point 3), and DNS only for containers
//! (issue 16, point 5), against real dockerd on two lab hosts, on each of the three engines
//! (Debian 12's 20.10, Debian 13's 26.1, Debian unstable's 28.x; see `docker.rs`). Needs root;
//! never skips.
//!
//! Docker's resolver (127.0.0.11 in every container) answers local containers itself and
//! forwards every other name to the containers' DNS servers; the agent serves those on
//! 169.254.53.53 (`--dns-addr`), set as daemon.json `"dns"` here as the README says, or listed
//! in the host's resolv.conf (the other set-up, which Docker 28 forwards from the host
//! namespace).
//!
//! Tests: `docker_names_through_dns_{20,26,28}` (what users type: `nslookup`, glibc's
//! `getent`, busybox `ping`, the README example on its first try, scoping to the asking
//! container's networks, recursion for containers of the host; the time from `docker run -d`
//! on h1 to the first answer on h2 is printed), `docker_dns_host_resolv_conf_{20,28}`, and
//! `docker_dns_closed_to_the_underlay_20` (a namespace on the underlay gets no answer from the
//! DNS address or from the old gateway-bridge listener, with positive controls).
//! Run: `cargo build -p overlay-agent && cargo test -p ovl-tests --test docker_dns -- --test-threads 1`.

mod docker_lab;

use std::{
    process::Output,
    time::{Duration, Instant},
};

use docker_lab::*;
use ovl_docker::testing::Engine;
use ovl_tests::*;

/// The Docker tests run one at a time: each brings up two dockerd.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn docker_names_through_dns_20() {
    names_through_dns("t9n20", Engine::Host);
}

#[test]
fn docker_names_through_dns_26() {
    names_through_dns("t9n26", Engine::Trixie);
}

#[test]
fn docker_names_through_dns_28() {
    names_through_dns("t9n28", Engine::Sid);
}

#[test]
fn docker_dns_host_resolv_conf_20() {
    host_resolv_conf("t9r20", Engine::Host);
}

#[test]
fn docker_dns_host_resolv_conf_28() {
    host_resolv_conf("t9r28", Engine::Sid);
}

/// Collects checks, prints every outcome, then fails listing the ones that failed: one run
/// shows everything that is wrong.
struct Checks {
    label: String,
    results: Vec<(String, bool, String)>,
}

impl Checks {
    fn new(label: String) -> Self {
        Checks {
            label,
            results: Vec::new(),
        }
    }

    /// `o` succeeded and printed `want`.
    fn output(&mut self, what: &str, o: &Output, want: &str) {
        let ok = o.status.success() && stdout(o).contains(want);
        self.add(
            what,
            ok,
            format!("rc={} {}{}", o.status, stdout(o), stderr(o)),
        );
    }

    /// `o` printed no address of `ip` (a name that must not resolve).
    fn output_lacks(&mut self, what: &str, o: &Output, ip: &str) {
        let ok = !stdout(o).contains(ip);
        self.add(
            what,
            ok,
            format!("rc={} {}{}", o.status, stdout(o), stderr(o)),
        );
    }

    fn add(&mut self, what: &str, ok: bool, text: String) {
        self.results.push((what.to_string(), ok, text));
    }

    fn assert_all(self) {
        for (what, ok, text) in &self.results {
            eprintln!(
                "{} {}: {what}\n    {}",
                self.label,
                if *ok { "ok" } else { "FAILS" },
                text.trim().replace('\n', "\n    ")
            );
        }
        let failed: Vec<&String> = self.results.iter().filter(|r| !r.1).map(|r| &r.0).collect();
        assert!(failed.is_empty(), "{}: failed: {failed:?}", self.label);
    }
}

/// Users' expectations of names on an `ovl` network, through the resolver Docker gives each
/// container.
fn names_through_dns(name: &str, engine: Engine) {
    let _one = one_at_a_time();
    let lab = DockerLab::up(name, engine, DnsSetup::Daemon);
    lab.create_network(0, "appnet");
    lab.create_network(0, "othernet");
    lab.run_sleeper(1, "client", "appnet");
    // A name that exists on othernet only (h1).
    lab.run_sleeper(0, "secret", "othernet");
    let secret_ip = lab.ip_of(0, "secret", "othernet");

    // `docker run -d --name web` on h1 -> web.appnet in h2's DNS zone (asked by h2 itself,
    // every 10 ms, while `docker run` is still running) and in the client's hosts file; then
    // the first answer through the client's own resolver (Docker's 127.0.0.11 forwarding to
    // the agent).
    let hosts_path = lab.docker(1, &["inspect", "-f", "{{.HostsPath}}", "client"]);
    let h2_ns = lab.lab().host(1).ns.clone();
    let t0 = Instant::now();
    let (run_took, dns_at, hosts_at) = std::thread::scope(|s| {
        let run = s.spawn(|| {
            lab.docker(
                0,
                &[
                    "run",
                    "-d",
                    "--name",
                    "web",
                    "--network",
                    "appnet",
                    "--network-alias",
                    "webalias",
                    IMAGE,
                    "sleep",
                    "100000",
                ],
            );
            t0.elapsed()
        });
        // Each observer polls on its own, so one's cost does not blur the other's time.
        const DEADLINE: Duration = Duration::from_secs(20);
        let dns = s.spawn(|| {
            while t0.elapsed() < DEADLINE {
                if dig_from(&h2_ns, DNS_ADDR, &["web.appnet"], 1)
                    .is_some_and(|d| !d.answers.is_empty())
                {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        });
        let hosts = s.spawn(|| {
            while t0.elapsed() < DEADLINE {
                if std::fs::read_to_string(&hosts_path).is_ok_and(|h| h.contains("web.appnet")) {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        });
        let (dns_at, hosts_at) = (dns.join().unwrap(), hosts.join().unwrap());
        (run.join().unwrap(), dns_at, hosts_at)
    });
    let mut tries = 0;
    let first = within(
        "nslookup web.appnet answers on h2",
        Duration::from_secs(20),
        || {
            tries += 1;
            lab.docker_try(1, &["exec", "client", "nslookup", "web.appnet"])
                .status
                .success()
        },
    );
    let web_ip = lab.ip_of(0, "web", "appnet");
    eprintln!(
        "{name} [{engine}]: from the start of `docker run -d --name web` on h1: run returned \
         {run_took:?}, web.appnet in h2's DNS zone {dns_at:?}, in the h2 client's hosts file \
         {hosts_at:?}, first nslookup through the client's resolver answered {:?} \
         ({tries} tries, the first started when run returned)",
        run_took + first
    );
    assert!(
        dns_at.is_some() && hosts_at.is_some(),
        "web.appnet never reached h2"
    );

    let mut c = Checks::new(format!("{name} [{engine}]"));
    // From a running container on h2, through 127.0.0.11 (Docker) and the agent.
    for n in ["web", "web.appnet", "webalias", "webalias.appnet"] {
        let t = Instant::now();
        let o = lab.docker_try(1, &["exec", "client", "nslookup", n]);
        c.output(&format!("nslookup {n} (in {:?})", t.elapsed()), &o, &web_ip);
    }
    // glibc's resolver (getaddrinfo), as most programs use it.
    let o = lab.docker_try(1, &["exec", "client", "getent", "hosts", "web.appnet"]);
    c.output("getent hosts web.appnet", &o, &web_ip);
    let o = lab.docker_try(1, &["exec", "client", "getent", "ahostsv4", "webalias"]);
    c.output("getent ahostsv4 webalias", &o, &web_ip);
    // The README's example on h2, first try, and new containers' first instruction.
    let o = lab.docker_try(
        1,
        &[
            "run",
            "--rm",
            "--network",
            "appnet",
            IMAGE,
            "ping",
            "-c1",
            "-W2",
            "web.appnet",
        ],
    );
    c.output("docker run --rm ... ping -c1 web.appnet", &o, &web_ip);
    let o = lab.docker_try(
        1,
        &[
            "run",
            "--rm",
            "--network",
            "appnet",
            IMAGE,
            "nslookup",
            "web.appnet",
        ],
    );
    c.output("docker run --rm ... nslookup web.appnet", &o, &web_ip);
    let o = lab.docker_try(
        1,
        &[
            "run",
            "--rm",
            "--network",
            "appnet",
            IMAGE,
            "getent",
            "hosts",
            "web",
        ],
    );
    c.output("docker run --rm ... getent hosts web", &o, &web_ip);
    // Recursion for containers of the host: a name only the upstream resolver knows.
    let o = lab.docker_try(1, &["exec", "client", "nslookup", OUTSIDE_NAME]);
    c.output(
        "nslookup of an outside name (recursion)",
        &o,
        OUTSIDE_NAME_IP,
    );

    // Scoping: a container on appnet does not learn a name that exists on othernet only...
    for n in ["secret", "secret.othernet"] {
        let o = lab.docker_try(1, &["exec", "client", "nslookup", n]);
        c.output_lacks(
            &format!("appnet container: nslookup {n} (othernet only)"),
            &o,
            &secret_ip,
        );
        let o = lab.docker_try(1, &["exec", "client", "getent", "hosts", n]);
        c.output_lacks(
            &format!("appnet container: getent hosts {n}"),
            &o,
            &secret_ip,
        );
    }
    // ...which a container on othernet, on the same host, does get (the positive control).
    let o = lab.docker_try(
        1,
        &[
            "run",
            "--rm",
            "--network",
            "othernet",
            IMAGE,
            "nslookup",
            "secret.othernet",
        ],
    );
    c.output(
        "othernet container: nslookup secret.othernet",
        &o,
        &secret_ip,
    );

    // A container on Docker's default bridge (none of our networks) gets recursion, no
    // cluster names.
    let o = lab.docker_try(1, &["run", "--rm", IMAGE, "nslookup", OUTSIDE_NAME]);
    c.output(
        "default-bridge container: outside name",
        &o,
        OUTSIDE_NAME_IP,
    );
    let o = lab.docker_try(1, &["run", "--rm", IMAGE, "nslookup", "web.appnet"]);
    c.output_lacks("default-bridge container: web.appnet", &o, &web_ip);

    // The host itself: cluster names, no recursion.
    let host_ns = lab.lab().host(1).ns.clone();
    let d = dig_from(&host_ns, DNS_ADDR, &["web.appnet"], 3);
    c.add(
        "h2 itself: dig web.appnet",
        d.as_ref().is_some_and(|d| d.answers.contains(&web_ip)),
        format!("{d:?}"),
    );
    let d = dig_from(&host_ns, DNS_ADDR, &[OUTSIDE_NAME], 3);
    c.add(
        "h2 itself: no recursion (REFUSED)",
        d.as_ref().is_some_and(|d| d.status == "REFUSED"),
        format!("{d:?}"),
    );
    c.assert_all();

    // The lag DNS covers: a new container's own hosts file gets its remote peers only once
    // the agent learns the file's path from the Engine API (the inspect after the start).
    let t = Instant::now();
    lab.run_sleeper(1, "late", "appnet");
    let started = t.elapsed();
    let path = lab.docker(1, &["inspect", "-f", "{{.HostsPath}}", "late"]);
    within(
        "late's hosts file lists web",
        Duration::from_secs(20),
        || std::fs::read_to_string(&path).is_ok_and(|h| h.contains("web.appnet")),
    );
    eprintln!(
        "{name} [{engine}]: a new container on h2: docker run -d returned after {started:?}, \
         its hosts file listed web.appnet {:?} after the run started",
        t.elapsed()
    );

    // Gone: web's name stops resolving on h2 (NXDOMAIN from the agent, not a stale answer).
    lab.docker(0, &["rm", "-f", "web"]);
    let t = within("web.appnet gone on h2", Duration::from_secs(10), || {
        !stdout(&lab.docker_try(1, &["exec", "client", "nslookup", "web.appnet"])).contains(&web_ip)
    });
    eprintln!("{name} [{engine}]: web.appnet gone from h2's DNS {t:?} after docker rm");
}

/// The other set-up: daemon.json without `"dns"`, the host's resolv.conf listing the agent
/// first. Docker 28 forwards to those servers from the host namespace (the agent cannot tell
/// the container, so it answers cluster names of every network, without recursion; Docker then
/// asks the next server for outside names); 20.10 forwards from the container as with
/// daemon.json.
fn host_resolv_conf(name: &str, engine: Engine) {
    let _one = one_at_a_time();
    let lab = DockerLab::up(name, engine, DnsSetup::HostResolvConf);
    lab.create_network(0, "appnet");
    lab.create_network(0, "othernet");
    lab.run_sleeper(0, "web", "appnet");
    lab.run_sleeper(0, "secret", "othernet");
    lab.run_sleeper(1, "client", "appnet");
    let web_ip = lab.ip_of(0, "web", "appnet");
    let secret_ip = lab.ip_of(0, "secret", "othernet");
    let mut c = Checks::new(format!("{name} [{engine}] host resolv.conf"));
    let resolv = lab.docker(1, &["exec", "client", "cat", "/etc/resolv.conf"]);
    c.add(
        "container's resolv.conf is Docker's resolver",
        resolv.contains("127.0.0.11"),
        resolv.clone(),
    );
    for n in ["web", "web.appnet"] {
        let o = lab.docker_try(1, &["exec", "client", "nslookup", n]);
        c.output(&format!("nslookup {n}"), &o, &web_ip);
    }
    let o = lab.docker_try(
        1,
        &[
            "run",
            "--rm",
            "--network",
            "appnet",
            IMAGE,
            "ping",
            "-c1",
            "-W2",
            "web.appnet",
        ],
    );
    c.output("docker run --rm ... ping -c1 web.appnet", &o, &web_ip);
    let o = lab.docker_try(1, &["exec", "client", "nslookup", OUTSIDE_NAME]);
    c.output(
        "outside name (the next server answers)",
        &o,
        OUTSIDE_NAME_IP,
    );
    // Scoping needs the container's address: 20.10 (and 26) forward from the container, so
    // othernet's names stay hidden from an appnet container; 28 forwards these servers from
    // the host namespace, where the agent cannot tell the container and answers the names of
    // every network with an endpoint on this host (the README recommends daemon.json "dns"
    // for that reason). othernet has none on h2, so neither answers its names.
    let o = lab.docker_try(1, &["exec", "client", "nslookup", "secret.othernet"]);
    let what = if engine.major() >= 28 {
        "28: othernet has no endpoint on h2 (secret.othernet not found)"
    } else {
        "scoped (secret.othernet not found)"
    };
    c.output_lacks(what, &o, &secret_ip);
    c.assert_all();
}

/// Issue 16, point 5: no DNS for anyone but this host and its containers. From a namespace on
/// the underlay that routes the DNS address (and the gateway-bridge address, where the agent
/// used to listen) to h1: no answer, and the guard counts the drops. Positive controls in the
/// same run: a container on h1 gets answers from the same address, a namespace attached with
/// `overlayctl attach` from its own 127.0.0.11.
#[test]
fn docker_dns_closed_to_the_underlay_20() {
    let _one = one_at_a_time();
    let name = "t9u20";
    let lab = DockerLab::up(name, Engine::Host, DnsSetup::Daemon);
    lab.create_network(0, "appnet");
    lab.run_sleeper(0, "web", "appnet");
    let web_ip = lab.ip_of(0, "web", "appnet");
    let h1 = lab.lab().host(0).clone();

    // A plain namespace attached on h1: the agent's own gateway bridge comes up.
    let plain = lab.lab().add_container("plain").unwrap();
    let sleeper = Killed(vec![nsspawn(&plain, &["sleep", "600"])]);
    let pid = sleeper.0[0].id().to_string();
    lab.ctl_json(0, &["attach", "appnet", "--name", "plain", "--pid", &pid]);
    let gw = lab.ctl_json(0, &["status"])["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv[0] == "gateway")
        .map(|kv| kv[1].as_str().unwrap().to_string())
        .unwrap();
    // "ovl_gwbridge 172.18.0.0/20 (172.18.0.1)"
    let gw_addr = gw
        .rsplit('(')
        .next()
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("gateway: {gw}"))
        .to_string();

    // Nothing of the agent listens on a routable address of h1 for DNS.
    let ss = stdout(&lab.in_host(0, &["ss", "-Hlnup"]));
    let ss_tcp = stdout(&lab.in_host(0, &["ss", "-Hlntp"]));
    for l in ss.lines().chain(ss_tcp.lines()) {
        if l.contains(":53 ") {
            assert!(
                l.contains(&format!("{DNS_ADDR}:53")),
                "a DNS listener on h1 other than {DNS_ADDR}: {l}"
            );
        }
    }

    // The stranger: 198.18.0.99 on the underlay bridge, routing both addresses to h1.
    let stranger = format!("{name}-stranger");
    let ul = format!("{name}-ul");
    for cmd in [
        vec!["ip", "netns", "add", &stranger],
        vec![
            "ip", "-n", &ul, "link", "add", "ul-str", "type", "veth", "peer", "name", "eth0",
            "netns", &stranger,
        ],
        vec![
            "ip", "-n", &ul, "link", "set", "ul-str", "master", "br0", "up",
        ],
        vec![
            "ip",
            "-n",
            &stranger,
            "addr",
            "add",
            "198.18.0.99/24",
            "dev",
            "eth0",
        ],
        vec!["ip", "-n", &stranger, "link", "set", "eth0", "up"],
        vec!["ip", "-n", &stranger, "link", "set", "lo", "up"],
        vec![
            "ip",
            "-n",
            &stranger,
            "route",
            "add",
            &format!("{DNS_ADDR}/32"),
            "via",
            &h1.addr,
        ],
        vec![
            "ip",
            "-n",
            &stranger,
            "route",
            "add",
            &format!("{gw_addr}/32"),
            "via",
            &h1.addr,
        ],
    ] {
        let o = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
    }
    // The stranger reaches h1 (so silence below is the guard, not a broken path).
    assert!(ping(&stranger, &h1.addr), "the stranger reaches h1");

    let mut c = Checks::new(format!("{name} closed to the underlay"));
    // Positive controls first.
    let o = lab.docker_try(0, &["exec", "web", "nslookup", "web.appnet"]);
    c.output("h1 container: nslookup web.appnet", &o, &web_ip);
    let o = lab.docker_try(0, &["exec", "web", "nslookup", OUTSIDE_NAME]);
    c.output("h1 container: recursion", &o, OUTSIDE_NAME_IP);
    let d = dig_from(&plain, "127.0.0.11", &["web.appnet"], 3);
    c.add(
        "attached namespace: its own 127.0.0.11",
        d.as_ref().is_some_and(|d| d.answers.contains(&web_ip)),
        format!("{d:?}"),
    );
    let before = lab.dns_dropped(0);
    for server in [DNS_ADDR, gw_addr.as_str()] {
        for args in [
            &["web.appnet"][..],
            &[OUTSIDE_NAME],
            &["+tcp", "web.appnet"],
        ] {
            let d = dig_from(&stranger, server, args, 2);
            c.add(
                &format!("stranger -> {server} {args:?}: no answer"),
                d.is_none(),
                format!("{d:?}"),
            );
        }
    }
    // The guard counted the datagrams and SYNs sent to the DNS address.
    let mut dropped = 0;
    within("drops counted", Duration::from_secs(10), || {
        dropped = lab.dns_dropped(0) - before;
        dropped >= 3
    });
    c.add(
        "drops counted in status",
        dropped >= 3,
        format!("{dropped} more dropped"),
    );
    let listing = stdout(&lab.in_host(0, &["nft", "list", "table", "inet", "overlay_agent"]));
    c.add(
        "the guard is in the agent's own table",
        listing.contains("chain dns_guard") && listing.contains(&format!("ip daddr {DNS_ADDR}")),
        listing.clone(),
    );
    // Still answered for the host's containers after all that.
    let o = lab.docker_try(0, &["exec", "web", "nslookup", "web.appnet"]);
    c.output("h1 container afterwards", &o, &web_ip);
    c.assert_all();
    lab.ctl_json(0, &["detach", "appnet", "--name", "plain"]);
    drop(sleeper);
}
