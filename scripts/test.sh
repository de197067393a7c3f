#!/usr/bin/env bash
# Runs everything CI runs: style, lints, build, unit tests, KV conformance on both backends,
# privileged namespace tests and the multi-host lab tests. Needs root (namespaces, bridges,
# nftables, BPF); privileged tests fail rather than skip without it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: run as root (the lab and the datapath tests need it)" >&2
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
# The Vagrant lab on real (emulated) VMs, end to end; a 2-node cycle (see the script).
scripts/vagrant-ci.sh
