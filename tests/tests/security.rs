//! Issue 16 (etcd TLS and auth, least privilege on the host): agents on an etcd that wants
//! TLS client certificates and RBAC (`--kv etcds`, the README's least-privilege set-up);
//! wrong material stops the agent at start with exit code 2 and a one-line reason; the
//! state dir, its files and the control socket are private. Needs root; never skips.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use ovl_tests::*;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every directory and regular file under `dir` (and `dir` itself) with group or other bits.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut open = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if !meta.is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o077 != 0 {
            open.push(format!(
                "{} {:o}",
                p.display(),
                meta.permissions().mode() & 0o777
            ));
        }
    }
    open
}

/// Runs the agent binary in host `i`'s namespace with the lab's settings but `kv` instead
/// of the lab's KV arguments, and fresh run and state dirs; returns its exit code, stderr
/// and how long it ran. It is killed if it does not stop within 30 s.
fn agent_once(lab: &Lab, i: usize, kv: &[String], dir: &Path) -> (Option<i32>, String, Duration) {
    let h = lab.host(i);
    let agent = lab.state.bin_dir.join("overlay-agent");
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", h.ns))
        .arg("--")
        .arg(&agent)
        .args(["--host-id", "sec-probe", "--advertise-addr", &h.addr])
        .args(kv)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    (
        status.and_then(|s| s.code()),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    )
}

/// The lab's `--kv*` arguments with `flag`'s value replaced.
fn with(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut a = args.to_vec();
    let i = a.iter().position(|x| x == flag).expect(flag);
    a[i + 1] = value.to_string();
    a
}

#[test]
fn agents_on_etcd_with_tls_client_certificates_and_rbac() {
    let mut cfg = LabConfig::new("s16tls", 2);
    cfg.kv = KvKind::Etcds;
    let mut lab = lab_with(cfg);

    // Positive: both agents register over TLS + auth, see each other, and a network made
    // on one host reaches the other through etcd.
    within(
        "both hosts to see each other",
        Duration::from_secs(10),
        || {
            (0..2).all(|i| {
                let seen = alive_seen_by(&lab, i);
                seen.len() == 2 && seen.iter().all(|(_, a)| *a)
            })
        },
    );
    let st = ctl(&lab, 0, &["status"]);
    assert_eq!(st["kv"]["reachable"], true, "{st}");
    assert!(
        st["kv"]["backend"]
            .as_str()
            .unwrap()
            .starts_with("etcds://"),
        "{st}"
    );
    ctl(&lab, 0, &["network", "create", "secnet"]);
    within("h2 to see secnet", Duration::from_secs(10), || {
        lab.ctl_json::<serde_json::Value>(1, &["network", "inspect", "secnet"])
            .is_ok()
    });
    let (_ns, ip) = attach(&lab, 1, "secnet", "secc1", &[]);
    assert!(ip.starts_with("10."), "{ip}");

    // The records are in etcd, under /ovl/ (read as root).
    let keys = lab
        .etcdctl()
        .args(["get", "--prefix", "--keys-only", "/ovl/v1/hosts/"])
        .output()
        .unwrap();
    let keys = stdout(&keys);
    assert!(
        keys.contains("/ovl/v1/hosts/h1") && keys.contains("/ovl/v1/hosts/h2"),
        "{keys}"
    );

    // A client without credentials reads nothing: the agents' certificate (not an etcd
    // user) without the password is denied; no certificate at all fails the handshake.
    let pki = lab.pki_dir();
    let ul = format!("{}-ul", lab.state.name);
    let etcdctl_as = |cert: Option<&str>| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ul}"))
            .args(["--", "etcdctl", "--endpoints=https://198.18.0.1:2379"])
            .arg(format!("--cacert={}", pki.join("ca.pem").display()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=3s")
            .env("ETCDCTL_API", "3");
        if let Some(name) = cert {
            c.arg(format!(
                "--cert={}",
                pki.join(format!("{name}.pem")).display()
            ))
            .arg(format!(
                "--key={}",
                pki.join(format!("{name}-key.pem")).display()
            ));
        }
        c.args(["get", "--prefix", "/ovl/"]).output().unwrap()
    };
    let denied = etcdctl_as(Some("agent"));
    assert!(
        !denied.status.success(),
        "read without user: {}",
        stdout(&denied)
    );
    assert!(
        stderr(&denied).contains("permission denied"),
        "{}",
        stderr(&denied)
    );
    let anonymous = etcdctl_as(None);
    assert!(!anonymous.status.success(), "read without certificate");
    assert!(
        !stdout(&anonymous).contains("/ovl/"),
        "{}",
        stdout(&anonymous)
    );
    let root = etcdctl_as(Some("root"));
    assert!(
        root.status.success() && stdout(&root).contains("/ovl/v1/"),
        "positive control"
    );

    // Wrong material: exit code 2, one line naming the reason, nothing served.
    let scratch = tempfile_dir("s16tls-probe");
    let rogue = xtask::pki::Pki::create(&scratch.join("rogue"), "rogue-ca").unwrap();
    rogue.issue("agent", "ovl-lab-host", &[]).unwrap();
    std::fs::write(scratch.join("wrong-password"), "nope\n").unwrap();
    let kv = lab.kv_args();
    let r = |f: &str| scratch.join("rogue").join(f).display().to_string();
    // (The lab's agents, started with the right material, are the positive control.)
    let cases = [
        (
            "wrong CA",
            with(&kv, "--kv-ca", &r("ca.pem")),
            "not signed by the CA",
        ),
        (
            "client certificate from another CA",
            with(
                &with(&kv, "--kv-cert", &r("agent.pem")),
                "--kv-key",
                &r("agent-key.pem"),
            ),
            "client certificate",
        ),
        (
            "wrong password",
            with(
                &kv,
                "--kv-password-file",
                &scratch.join("wrong-password").display().to_string(),
            ),
            "authentication failed",
        ),
        (
            "unknown user",
            with(&kv, "--kv-user", "mallory"),
            "authentication failed",
        ),
    ];
    for (n, (case, args, want)) in cases.into_iter().enumerate() {
        let dir = scratch.join(format!("case{n}"));
        let (code, err, took) = agent_once(&lab, 0, &args, &dir);
        eprintln!("{case}: exit {code:?} after {took:?}: {}", err.trim());
        assert_eq!(code, Some(2), "{case}: {err}");
        let line = err.trim();
        assert!(!line.contains('\n'), "{case}: one line: {err}");
        assert!(
            line.starts_with("overlay-agent: KV store etcds://198.18.0.1:2379 refused us"),
            "{case}: {line}"
        );
        assert!(line.contains(want), "{case}: {line}");
        assert!(
            !dir.join("run/overlay.sock").exists(),
            "{case}: no control socket"
        );
    }

    // Least privilege: the state dir and everything in it is root's only, the control
    // socket is 0600. An agent that finds files left open tightens them; with
    // --socket-group the socket is that group's, mode 0660.
    assert!(lab.host(1).state_dir.join("local.json").exists());
    for i in 0..2 {
        let h = lab.host(i);
        let open = open_to_others(&h.state_dir);
        assert!(open.is_empty(), "h{}: {open:?}", i + 1);
        assert_eq!(mode(&h.run_dir.join("overlay.sock")), 0o600);
    }
    lab.signal_agent(1, Signal::SIGTERM).unwrap();
    let state = lab.host(1).state_dir.clone();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        state.join("local.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    lab.state
        .agent_args
        .extend(["--socket-group".into(), "daemon".into()]);
    lab.start_agent(1).unwrap();
    lab.wait_agent(1).unwrap();
    assert!(
        open_to_others(&state).is_empty(),
        "{:?}",
        open_to_others(&state)
    );
    let sock = lab.host(1).run_dir.join("overlay.sock");
    assert_eq!(mode(&sock), 0o660);
    assert_eq!(std::fs::metadata(&sock).unwrap().gid(), 1, "group daemon");
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// A directory of this test's own under the system temp dir.
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    if d.exists() {
        std::fs::remove_dir_all(&d).unwrap();
    }
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn unknown_socket_group_is_a_start_error() {
    let out = Command::new(xtask::sh::bin_dir().join("overlay-agent"))
        .args([
            "--host-id",
            "s16grp",
            "--advertise-addr",
            "198.18.0.11",
            "--socket-group",
            "ovl-no-such-group",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.trim(),
        "overlay-agent: invalid --socket-group: no such group \"ovl-no-such-group\""
    );
}
