//! The `nft` command in a network namespace: the one way both the gateway and the kernel
//! datapath's guard change nftables (one atomic `nft -f -` transaction per change).

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::Stdio;

use nix::sched::{CloneFlags, setns};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// Runs `nft` with `args` in the network namespace at `ns` (the caller's when `None`),
/// feeding `stdin`, and returns its stdout.
pub async fn run(ns: Option<&Path>, args: &[&str], stdin: &str, context: &str) -> Result<String> {
    let fail = |stderr: String| Error::Nft {
        context: context.to_string(),
        stderr,
    };
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ns) = ns {
        let file = File::open(ns).map_err(|e| Error::io("opening netns", ns, e))?;
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
        // which is async-signal-safe; it touches no locks or allocator state.
        unsafe {
            cmd.pre_exec(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run nft: {e}")))?;
    let mut input = child.stdin.take().expect("stdin is piped");
    let data = stdin.as_bytes().to_vec();
    let writer = tokio::spawn(async move {
        let _ = input.write_all(&data).await;
        drop(input);
    });
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("waiting for nft: {e}")))?;
    let _ = writer.await;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(fail(if stderr.is_empty() {
            out.status.to_string()
        } else {
            stderr
        }));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The packet count in `nft -j list counter ...` output, `None` when there is none.
pub fn counter_packets(json: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["nftables"]
        .as_array()?
        .iter()
        .find_map(|o| o["counter"]["packets"].as_u64())
}
