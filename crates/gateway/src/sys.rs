//! Thin side-effect layer: network namespaces, netlink connections, `nft`, sysctls.

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::Stdio;

use nix::sched::{CloneFlags, setns};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// Runs `f` on a fresh OS thread that first entered the network namespace at `ns` (or stays in
/// the current one when `None`), without blocking the runtime (`ovl-netlink`'s helper).
pub async fn in_netns<T, F>(ns: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    ovl_netlink::netns::run_in_netns_async(ns, move || Ok(f())).await?
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
