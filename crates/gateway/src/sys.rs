//! Thin side-effect layer: network namespaces, netlink connections, `nft`, sysctls.

use std::path::Path;

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
    ovl_netlink::nft::run(ns, args, stdin, context)
        .await
        .map_err(|e| match e {
            ovl_netlink::Error::Nft { context, stderr } => Error::Nft { context, stderr },
            e => e.into(),
        })
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
