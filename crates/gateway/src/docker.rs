//! Coexistence with Docker's iptables rules on the same host.
//!
//! dockerd sets the `filter FORWARD` policy to DROP. A packet dropped by any base chain is
//! dropped for good, so accepting our forwarded traffic in our own table is not enough. Docker's
//! documented place for such exceptions is its `DOCKER-USER` chain, which `FORWARD` jumps to
//! first. When that chain exists, the agent keeps two rules there: traffic leaving the
//! gateway bridge for elsewhere, and replies or published (DNAT) connections entering it.
//! Nothing else of Docker's is touched, and nothing is added while Docker is absent.

use std::process::Output;

use crate::{Error, Result};

/// The rule arguments (after the chain name) that let gateway-bridge traffic through
/// Docker's `FORWARD` policy.
pub fn exception_rules(bridge: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&["-i", bridge, "!", "-o", bridge, "-j", "ACCEPT"]),
        s(&[
            "-o",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED,DNAT",
            "-j",
            "ACCEPT",
        ]),
    ]
}

async fn iptables(args: &[&str]) -> Result<Output> {
    // Bounded wait for the xtables lock (shared by every namespace on the machine): a busy
    // lock must never stall the reconcile loop.
    tokio::process::Command::new("iptables")
        .args(["-w", "1"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::Iptables {
            context: args.join(" "),
            stderr: e.to_string(),
        })
}

/// Makes sure the exception rules are in `DOCKER-USER` when the chain exists (in the calling
/// thread's network namespace). Returns whether a rule had to be added.
pub async fn ensure_docker_user_exception(bridge: &str) -> Result<bool> {
    if !iptables(&["-S", "DOCKER-USER"]).await?.status.success() {
        return Ok(false);
    }
    let mut added = false;
    for rule in exception_rules(bridge) {
        let args: Vec<&str> = rule.iter().map(String::as_str).collect();
        let mut check = vec!["-C", "DOCKER-USER"];
        check.extend(&args);
        if iptables(&check).await?.status.success() {
            continue;
        }
        let mut insert = vec!["-I", "DOCKER-USER"];
        insert.extend(&args);
        let out = iptables(&insert).await?;
        if !out.status.success() {
            return Err(Error::Iptables {
                context: insert.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        added = true;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_the_bridge() {
        let r = exception_rules("ovl_gwbridge");
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|a| a.iter().any(|x| x == "ovl_gwbridge")));
        assert_eq!(r[0].last().map(String::as_str), Some("ACCEPT"));
    }
}
