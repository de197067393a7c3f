//! Sets `OVL_VERSION`: the release and the git revision the binaries are built from, e.g.
//! `0.1.0+g6381a6a1b2`. Without git (a source tarball, no `git` command) it is the release
//! alone, unless `OVERLAY_GIT_REV` names the revision (for builds outside a checkout).

use std::{path::PathBuf, process::Command};

fn git(dir: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let release = std::env::var("CARGO_PKG_VERSION").expect("CARGO_PKG_VERSION");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-env-changed=OVERLAY_GIT_REV");
    let rev = match std::env::var("OVERLAY_GIT_REV") {
        Ok(r) if !r.trim().is_empty() => Some(r.trim().to_string()),
        _ => {
            let rev = git(&dir, &["rev-parse", "--short=10", "HEAD"]);
            // Rebuild when HEAD moves: HEAD itself (checkout) and the branch it points to
            // (commit), wherever this worktree keeps them.
            if rev.is_some() {
                let mut watch = Vec::new();
                if let Some(d) = git(&dir, &["rev-parse", "--git-dir"]) {
                    watch.push(abs(&dir, &d).join("HEAD"));
                }
                if let Some(d) = git(&dir, &["rev-parse", "--git-common-dir"]) {
                    let common = abs(&dir, &d);
                    watch.push(common.join("packed-refs"));
                    if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
                        watch.push(common.join(r));
                    }
                }
                // Only files that exist: a missing one would rerun this script every build.
                for p in watch.iter().filter(|p| p.exists()) {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
            rev
        }
    };
    let version = match rev {
        Some(r) => format!("{release}+g{r}"),
        None => release,
    };
    println!("cargo:rustc-env=OVL_VERSION={version}");
}

/// `path` as git printed it (relative to `dir` or absolute).
fn abs(dir: &str, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        PathBuf::from(dir).join(p)
    }
}
