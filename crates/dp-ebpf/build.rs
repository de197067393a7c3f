//! Compiles the eBPF C programs in `<workspace>/ebpf/` into one BPF object in `OUT_DIR`,
//! embedded by `src/lib.rs`. Needs Debian's `clang-19` (override with `OVL_BPF_CLANG`) and
//! the headers of `libbpf-dev` and `linux-libc-dev`; fails with a message naming them.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str =
    "install the Debian packages: apt-get install clang-19 llvm-19 libbpf-dev linux-libc-dev";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src_dir = manifest.join("../../ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("OVL_BPF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=OVL_BPF_CLANG");
    println!("cargo:rerun-if-changed={}", src_dir.display());

    let (multiarch, target_arch) = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => ("aarch64-linux-gnu", "arm64"),
        Ok("riscv64") => ("riscv64-linux-gnu", "riscv"),
        _ => ("x86_64-linux-gnu", "x86"),
    };

    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!("ovl-ebpf: /usr/include/bpf/bpf_helpers.h is missing; {INSTALL_HINT}");
    }

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src_dir)
        .unwrap_or_else(|e| panic!("ovl-ebpf: cannot read {}: {e}", src_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c" || x == "h"))
        .collect();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }

    let src = src_dir.join("overlay.c");
    let obj = out.join("overlay.bpf.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{target_arch}"))
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg(format!("-I{}", src_dir.display()))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("ovl-ebpf: {clang} failed on {} ({s})", src.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("ovl-ebpf: `{clang}` not found; {INSTALL_HINT}")
        }
        Err(e) => panic!("ovl-ebpf: cannot run {clang}: {e}"),
    }
}
