#!/usr/bin/env bash
# Installs what `cargo xtask package` and its checks need: cargo-deb at the pinned version
# (built with this machine's Rust, 1.95: newer cargo-deb releases may need newer Rust), and
# Debian's dpkg-dev (dpkg-shlibdeps for the dependencies), binutils (readelf, strip) and
# lintian. Idempotent: does nothing when everything is there.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
PACKAGES=(dpkg-dev binutils lintian gzip)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "package-deps: missing packages (${missing[*]}); run as root" >&2
    exit 1
  fi
  echo "package-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

have=$(cargo deb --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$CARGO_DEB_VERSION" ]; then
  echo "package-deps: installing cargo-deb $CARGO_DEB_VERSION (found: ${have:-none})"
  cargo install --quiet --locked --force cargo-deb --version "$CARGO_DEB_VERSION"
fi
