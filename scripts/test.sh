#!/usr/bin/env bash
# Runs everything CI runs: style, lints, build, unit tests, KV conformance on both backends,
# privileged namespace tests, the multi-host lab tests, the demo in a pristine Debian 12 root,
# the Debian package and the Vagrant lab. Needs root (namespaces, bridges, nftables, BPF,
# mounts); privileged tests fail rather than skip without it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: run as root (the lab and the datapath tests need it)" >&2
  exit 1
fi
# A clean run fills about 25 GB (target dir, Docker roots, VM images). With less free, etcd and
# dockerd are the first to fail, with errors far from the cause: say so up front.
need_gb=${OVL_CI_NEED_GB:-25}
free_gb=$(df --output=avail -BG . | tail -1 | tr -dc 0-9)
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "test.sh: only ${free_gb} GB free on $(df --output=target . | tail -1); a full run needs about ${need_gb} GB" >&2
  exit 1
fi
scripts/install-deps.sh
# Root filesystems of Debian 13 and unstable for the Docker 26 and 28 tests (cached; rebuilt
# only when their recipe changes).
scripts/docker-rootfs.sh ensure trixie sid
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --bins --quiet
# Test binaries run one after another; inside each, a few tests (each with its own lab or
# namespaces) run side by side.
cargo test --workspace --no-fail-fast -- --test-threads=3
# The README's first command (scripts/demo.sh) on a fresh Debian 12 machine: a pristine root
# where everything beyond the base image must come from the project's scripts.
scripts/clean-root.sh
# The Debian package: built and checked, lintian, then installed, run, upgraded and purged
# in a pristine Debian 12 root.
scripts/package-test.sh
# The Vagrant lab on real (emulated) VMs, end to end, on the package; a 2-node cycle.
scripts/vagrant-ci.sh
