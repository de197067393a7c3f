//! Operations against the agents as a user runs them (`overlayctl`, with a time limit), and
//! what their answers mean for the ledger: done, refused, not sent, or unknown.

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// How long a user waits for an answer before giving up on it.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// What an `overlayctl` call came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The agent answered success (the parsed `--json` reply).
    Done(Value),
    /// The agent answered with an error: by its contract nothing changed.
    Refused(String),
    /// The request never reached an agent (no socket, connection refused): nothing changed.
    NotSent(String),
    /// The request may or may not have been carried out (the connection broke, no answer in
    /// time): the user must find out.
    Unknown(String),
}

impl Outcome {
    /// Classifies an exit: success, an agent's error, or a transport failure.
    pub fn classify(success: bool, stdout: &[u8], stderr: &[u8]) -> Outcome {
        let err = String::from_utf8_lossy(stderr).trim().to_string();
        if success {
            return match serde_json::from_slice(stdout) {
                Ok(v) => Outcome::Done(v),
                // A success whose reply cannot be read: the write happened, its details are
                // unknown to the user.
                Err(e) => Outcome::Unknown(format!("unreadable reply: {e}")),
            };
        }
        if err.contains("cannot reach overlay-agent") {
            Outcome::NotSent(err)
        } else if err.contains("talking to overlay-agent") || err.is_empty() {
            Outcome::Unknown(err)
        } else {
            Outcome::Refused(err)
        }
    }

    /// One word for logs.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::Refused(_) => "refused",
            Outcome::NotSent(_) => "not sent",
            Outcome::Unknown(_) => "unknown",
        }
    }
}

/// A started `overlayctl` call.
pub struct Running {
    pid: u32,
    started: Instant,
    rx: mpsc::Receiver<std::io::Result<std::process::Output>>,
}

/// Starts `cmd` (an `overlayctl --json ...` command).
pub fn start(mut cmd: Command) -> std::io::Result<Running> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The receiver may be gone after a timeout; nothing to report then.
        let _ = tx.send(child.wait_with_output());
    });
    Ok(Running {
        pid,
        started: Instant::now(),
        rx,
    })
}

impl Running {
    /// When it started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the answer for at most `timeout` (from the start); kills the client after.
    pub fn finish(self, timeout: Duration) -> Outcome {
        let left = timeout.saturating_sub(self.started.elapsed());
        match self.rx.recv_timeout(left) {
            Ok(Ok(out)) => Outcome::classify(out.status.success(), &out.stdout, &out.stderr),
            Ok(Err(e)) => Outcome::NotSent(format!("running overlayctl: {e}")),
            Err(_) => {
                // Our own child, by PID; it may have exited in the meantime (then ESRCH).
                let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
                let _ = self.rx.recv_timeout(Duration::from_secs(5));
                Outcome::Unknown(format!("no answer within {timeout:?}"))
            }
        }
    }
}

/// Runs `cmd` to its outcome.
pub fn run(cmd: Command, timeout: Duration) -> Outcome {
    match start(cmd) {
        Ok(r) => r.finish(timeout),
        Err(e) => Outcome::NotSent(format!("starting overlayctl: {e}")),
    }
}

/// The address of an attach reply.
pub fn reply_ip(v: &Value) -> Option<Ipv4Addr> {
    v["endpoint"]["ip"].as_str()?.parse().ok()
}

/// Whether an error says the object is already there (a retried create).
pub fn already_exists(msg: &str) -> bool {
    msg.contains("already exists")
}

/// Whether an error says the object is not there (a retried remove).
pub fn not_found(msg: &str) -> bool {
    msg.contains("not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_exits() {
        assert_eq!(
            Outcome::classify(true, br#"{"a":1}"#, b""),
            Outcome::Done(serde_json::json!({"a":1}))
        );
        assert!(matches!(
            Outcome::classify(true, b"garbage", b""),
            Outcome::Unknown(_)
        ));
        assert!(matches!(
            Outcome::classify(
                false,
                b"",
                b"overlayctl: cannot reach overlay-agent at /x/overlay.sock: No such file"
            ),
            Outcome::NotSent(_)
        ));
        assert!(matches!(
            Outcome::classify(
                false,
                b"",
                b"overlayctl: talking to overlay-agent at /x: connection closed"
            ),
            Outcome::Unknown(_)
        ));
        assert!(matches!(
            Outcome::classify(false, b"", b"overlayctl: network n1 not found"),
            Outcome::Refused(_)
        ));
        // Killed by a signal, nothing said: unknown.
        assert!(matches!(
            Outcome::classify(false, b"", b""),
            Outcome::Unknown(_)
        ));
    }

    #[test]
    fn a_slow_client_is_killed_and_unknown() {
        let mut c = Command::new("sleep");
        c.arg("5");
        let t = Instant::now();
        let o = run(c, Duration::from_millis(200));
        assert!(matches!(o, Outcome::Unknown(_)), "{o:?}");
        assert!(t.elapsed() < Duration::from_secs(3));
        let mut c = Command::new("sh");
        c.args(["-c", "echo '{\"ok\":true}'"]);
        assert_eq!(
            run(c, Duration::from_secs(5)),
            Outcome::Done(serde_json::json!({"ok": true}))
        );
    }
}
