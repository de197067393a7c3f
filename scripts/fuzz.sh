#!/usr/bin/env bash
# Runs the libFuzzer targets of fuzz/ (DNS requests, Docker plugin bodies, control API bodies,
# KV records) for SECONDS each (default 300), growing fuzz/corpus/<target>. Needs cargo-fuzz,
# installed here at a pinned version, and nightly compiler features, which the stable
# toolchain allows with RUSTC_BOOTSTRAP=1. CI does not run this: it replays the checked-in
# corpus with `cargo test -p ovl-fuzz` on stable.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_FUZZ_VERSION=0.13.2
secs=${1:-300}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(dns_request plugin_body api_body kv_record)
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  # One job on this 2-core machine; the corpus directory is the checked-in one.
  cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -print_final_stats=1
done
