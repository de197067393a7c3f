//! Issue 14, on real hosts: the agent tells systemd it is ready only once its sockets answer
//! (the `Type=notify` unit orders Docker after that), and `overlayctl hosts` shows every
//! agent's version. Needs root; never skips.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use ovl_tests::*;
use serde_json::Value;

/// The agent under test, its files, and the socket it notifies: removed on drop.
struct Notified {
    dir: PathBuf,
    agent: Option<Child>,
    notify: UnixDatagram,
}

impl Drop for Notified {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = c.try_wait() {
                eprintln!("agent {} ignored SIGTERM; killing it", c.id());
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

impl Notified {
    fn pid(&self) -> u32 {
        self.agent.as_ref().expect("running").id()
    }

    /// The next notification within `timeout`, if any.
    fn message(&self, timeout: Duration) -> Option<String> {
        self.notify.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.notify.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Whether `overlayctl status` answers on the agent's control socket.
    fn control_answers(&self, bin: &Path) -> bool {
        Command::new(bin.join("overlayctl"))
            .arg("--socket")
            .arg(self.dir.join("run/overlay.sock"))
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `POST /Plugin.Activate` on the plugin socket in the agent's mount namespace.
    fn plugin_answers(&self) -> Option<String> {
        let sock = format!("/proc/{}/root/run/docker/plugins/ovl.sock", self.pid());
        let o = Command::new("curl")
            .args([
                "-sf",
                "-m",
                "3",
                "--unix-socket",
                &sock,
                "-X",
                "POST",
                "-d",
                "{}",
            ])
            .arg("http://ovl/Plugin.Activate")
            .output()
            .ok()?;
        o.status.success().then(|| stdout(&o))
    }
}

/// Starts the agent of host 1 of `lab` with `--docker-plugin` and `NOTIFY_SOCKET`, in a
/// private mount namespace whose `/run` is a fresh tmpfs, where a regular file squats on the
/// plugin socket's path (so the plugin server cannot bind until the file goes).
fn start_notified(lab: &Lab, name: &str) -> Notified {
    let dir = std::env::temp_dir().join(format!("ovl-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notify = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    let mut n = Notified {
        dir: dir.clone(),
        agent: None,
        notify,
    };
    let h = lab.host(0);
    let bin = lab.state.bin_dir.join("overlay-agent");
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let script = "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/docker/plugins && \
                  : > /run/docker/plugins/ovl.sock && exec \"$@\"";
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", h.ns))
        .args([
            "--",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&bin)
        .args(["--host-id", &h.id, "--advertise-addr", &h.addr])
        .arg("--kv")
        .arg(format!("embedded://{}", dir.join("kv.sqlite").display()))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args([
            "--docker-plugin",
            "--dns-upstream",
            xtask::lab::OUTSIDE_ADDR,
        ])
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        // No dockerd here: the Engine API watcher retries against a socket that is not there.
        .env(
            "DOCKER_HOST",
            format!("unix://{}", dir.join("no-docker.sock").display()),
        )
        .env("OVERLAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    n.agent = Some(child);
    n
}

#[test]
fn ready_only_once_control_and_plugin_sockets_answer() {
    let mut cfg = LabConfig::new("ready", 1);
    cfg.start_agents = false;
    let lab = lab_with(cfg);
    let bin = lab.state.bin_dir.clone();
    let n = start_notified(&lab, "ready");

    within(
        "the control socket to answer",
        Duration::from_secs(20),
        || n.control_answers(&bin),
    );
    // The control socket answers, the plugin socket cannot: no READY.
    if let Some(m) = n.message(Duration::from_secs(3)) {
        panic!(
            "notified {m:?} while the plugin socket cannot answer; log:\n{}",
            n.log()
        );
    }
    assert!(n.plugin_answers().is_none());
    assert!(
        n.log().contains("Docker plugin server failed"),
        "the plugin server did not hit the squatting file:\n{}",
        n.log()
    );

    // Free the path: the plugin server's retry binds it, and READY follows.
    let rm = Command::new("nsenter")
        .args([
            "-t",
            &n.pid().to_string(),
            "-m",
            "rm",
            "/run/docker/plugins/ovl.sock",
        ])
        .status()
        .unwrap();
    assert!(rm.success());
    let m = n.message(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "no READY after the plugin path was freed; log:\n{}",
            n.log()
        )
    });
    assert!(m.lines().any(|l| l == "READY=1"), "{m:?}");
    assert!(
        m.contains("STATUS=serving the control and Docker plugin sockets"),
        "{m:?}"
    );
    // At the moment of READY both sockets answer.
    let activate = n
        .plugin_answers()
        .expect("the plugin socket answers at READY");
    assert!(activate.contains("NetworkDriver"), "{activate}");
    assert!(n.control_answers(&bin));
    // Exactly one READY.
    assert_eq!(n.message(Duration::from_millis(500)), None);
}

#[test]
fn ready_without_the_plugin_needs_only_the_control_socket() {
    let mut cfg = LabConfig::new("readyctl", 1);
    cfg.start_agents = false;
    let lab = lab_with(cfg);
    let h = lab.host(0).clone();
    let dir = std::env::temp_dir().join(format!("ovl-readyctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut n = Notified {
        dir: dir.clone(),
        agent: None,
        notify: UnixDatagram::bind(dir.join("notify.sock")).unwrap(),
    };
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = xtask::sh::in_ns(
        &h.ns,
        lab.state.bin_dir.join("overlay-agent").to_str().unwrap(),
    )
    .args(["--host-id", &h.id, "--advertise-addr", &h.addr])
    .arg("--kv")
    .arg(format!("embedded://{}", dir.join("kv.sqlite").display()))
    .arg("--run-dir")
    .arg(dir.join("run"))
    .arg("--state-dir")
    .arg(dir.join("state"))
    .args(["--dns-upstream", xtask::lab::OUTSIDE_ADDR])
    .env("NOTIFY_SOCKET", dir.join("notify.sock"))
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .unwrap();
    n.agent = Some(child);
    let m = n
        .message(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no READY; log:\n{}", n.log()));
    assert!(m.lines().any(|l| l == "READY=1"), "{m:?}");
    assert!(m.contains("STATUS=serving the control socket"), "{m:?}");
    assert!(n.control_answers(&lab.state.bin_dir));
}

/// `overlay-agent --version` and `overlayctl --version`: the release and the git revision.
fn version_of(bin: &Path, name: &str) -> String {
    let o = Command::new(bin.join(name))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = stdout(&o);
    text.trim()
        .strip_prefix(&format!("{name} "))
        .unwrap_or_else(|| panic!("{name} --version printed {text:?}"))
        .to_string()
}

#[test]
fn versions_carry_the_revision_and_every_host_shows_its_own() {
    let lab = lab("vers", 2, KvKind::Etcd);
    let bin = lab.state.bin_dir.clone();
    let v = version_of(&bin, "overlay-agent");
    assert_eq!(v, version_of(&bin, "overlayctl"));
    // Built from this checkout: the release, then the revision git reports for it.
    let release = env!("CARGO_PKG_VERSION");
    let head = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(head.status.success(), "git rev-parse: {}", stderr(&head));
    assert_eq!(v, format!("{release}+g{}", stdout(&head).trim()));

    // An agent of another release joins the cluster: its host record, as it writes it.
    let old = serde_json::json!({
        "id": "h9",
        "vtep": "198.18.0.19",
        "underlay_mtu": 1500,
        "datapath": "kernel",
        "version": "0.0.9+g0123456789",
    });
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}-ul", lab.state.name))
        .args([
            "--",
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            "198.18.0.1:2379",
        ])
        .args(["put", "/ovl/v1/hosts/h9", &old.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "etcdctl put: {}", stderr(&o));

    within("h1 to list h9", Duration::from_secs(10), || {
        ctl(&lab, 0, &["hosts"])
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h["id"] == "h9"))
    });
    let hosts = ctl(&lab, 0, &["hosts"]);
    let version = |id: &str| -> Value {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {hosts}"))["version"]
            .clone()
    };
    assert_eq!(version("h1"), v.as_str());
    assert_eq!(version("h2"), v.as_str());
    assert_eq!(version("h9"), "0.0.9+g0123456789");
    // The table shows both versions side by side.
    let table = lab.ctl(0, &["hosts"]).unwrap();
    let text = stdout(&table);
    assert!(text.lines().next().unwrap().contains("VERSION"), "{text}");
    let row = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap()
            .to_string()
    };
    assert!(row("h2").contains(&v), "{text}");
    assert!(row("h9").contains("0.0.9+g0123456789"), "{text}");
    assert!(row("h9").contains("dead"), "{text}");
}
