//! Thin side-effect layer: network namespaces, netlink connections, `nft`, sysctls.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Runs `f` on a fresh OS thread that first entered the network namespace at `ns` (or stays in
/// the current one when `ns` is `None`). Only that thread changes namespace; it exits afterwards,
/// so no runtime thread is ever left in a foreign namespace.
pub async fn in_netns<T, F>(ns: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns: Option<PathBuf> = ns.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ovl-gw-netns".into())
        .spawn(move || {
            let res = (|| {
                if let Some(ns) = &ns {
                    let file = File::open(ns)
                        .map_err(|e| Error::io(format!("opening netns {}", ns.display()), e))?;
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::io(format!("entering netns {}", ns.display()), e.into())
                    })?;
                }
                f()
            })();
            let _ = tx.send(res);
        })
        .map_err(|e| Error::io("spawning netns thread", e))?;
    rx.await.unwrap_or_else(|_| {
        Err(Error::io(
            "netns thread",
            io::Error::other("thread panicked"),
        ))
    })
}

/// An rtnetlink handle bound to one network namespace; the connection task is aborted on drop.
pub struct Netlink {
    /// The request handle.
    pub handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Opens a netlink route socket in `ns` (current namespace when `None`). The socket keeps
    /// the namespace it was created in, so it can be driven from any runtime thread afterwards.
    pub async fn open(ns: Option<&Path>) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle) = in_netns(ns, move || {
            // The socket registers with the reactor, which needs the runtime context.
            let _guard = rt.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| Error::io("opening netlink socket", e))?;
            Ok((conn, handle))
        })
        .await?;
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }
}

/// Runs `nft` with `args` in `ns`, feeding `stdin`, and returns stdout.
pub async fn nft(ns: Option<&Path>, args: &[&str], stdin: &str, context: &str) -> Result<String> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ns) = ns {
        let file =
            File::open(ns).map_err(|e| Error::io(format!("opening netns {}", ns.display()), e))?;
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
        // which is async-signal-safe; it touches no locks or allocator state.
        unsafe {
            cmd.pre_exec(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| Error::Nft {
        context: context.to_string(),
        stderr: format!("cannot run nft: {e}"),
    })?;
    let mut input = child.stdin.take().expect("stdin is piped");
    let data = stdin.as_bytes().to_vec();
    let writer = tokio::spawn(async move {
        let _ = input.write_all(&data).await;
        drop(input);
    });
    let out = child.wait_with_output().await.map_err(|e| Error::Nft {
        context: context.to_string(),
        stderr: format!("waiting for nft: {e}"),
    })?;
    let _ = writer.await;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::Nft {
            context: context.to_string(),
            stderr: if stderr.is_empty() {
                out.status.to_string()
            } else {
                stderr
            },
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes a sysctl under `/proc/sys` from inside `ns` (net sysctls are per namespace and resolved
/// against the namespace of the opening thread).
pub async fn write_sysctl(ns: Option<&Path>, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    in_netns(ns, move || {
        std::fs::write(&path, value.as_bytes()).map_err(|e| Error::io(format!("writing {path}"), e))
    })
    .await
}
