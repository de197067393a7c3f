#!/usr/bin/env bash
# Root filesystems of newer Debian releases, for running their Docker engines in the lab (the
# dockerd harness pivot_roots each lab host's engine into one; see crates/docker/src/testing.rs).
#
#   scripts/docker-rootfs.sh ensure RELEASE...   build what is missing or outdated; print the paths
#   scripts/docker-rootfs.sh path RELEASE        print the path of the current tree (no build)
#   scripts/docker-rootfs.sh clean               remove trees of older recipes that nothing uses
#
# RELEASE is `trixie` (Debian 13: docker.io 26.1, docker-compose 2.26) or `sid` (Debian
# unstable: the newest docker.io, 28.x in 2026, docker-compose 2.40). Each tree is cached under
# $OVL_ROOTFS_CACHE (default /var/cache/ovl-docker-rootfs) as RELEASE-HASH, HASH being a hash of
# the recipe below: changing the recipe builds a new tree. The engines' versions are whatever
# the release carries on the day the tree is built; the tree's `.ovl-rootfs` file records them.
# Needs root and debootstrap (scripts/install-deps.sh installs it).
set -euo pipefail

# Bump when the build steps change in a way the variables below do not show.
RECIPE_VERSION=1
MIRROR=${OVL_ROOTFS_MIRROR:-http://deb.debian.org/debian}
CACHE=${OVL_ROOTFS_CACHE:-/var/cache/ovl-docker-rootfs}
# The engine, its CLI and Compose v2, what dockerd runs and calls (containerd, runc, iptables),
# and what the agent calls when it runs in the tree (nft, ip).
PACKAGES=(docker.io docker-cli docker-compose containerd runc tini iptables nftables iproute2
  busybox-static mount kmod procps)

die() { echo "docker-rootfs: $*" >&2; exit 1; }

suite_of() {
  case "$1" in
    trixie) echo trixie ;;
    sid) echo sid ;;
    *) die "unknown release '$1' (trixie or sid)" ;;
  esac
}

# apt options: the unstable suite's index on the mirror may be older than its Valid-Until date
# (signatures are still checked).
apt_opts() {
  if [ "$1" = sid ]; then echo "-o Acquire::Check-Valid-Until=false"; fi
}

recipe() {
  printf '%s\n' "version=$RECIPE_VERSION" "release=$1" "mirror=$MIRROR" \
    "packages=${PACKAGES[*]}" "apt=$(apt_opts "$1")"
}

tree_of() {
  local hash
  hash=$(recipe "$1" | sha256sum | cut -c1-12)
  echo "$CACHE/$1-$hash"
}

# True when a process has the tree mounted (a lab engine runs on it: it is the lower layer of
# that host's overlay root, `lowerdir=TREE` in the mount's options).
in_use() {
  grep -qsF "$1" /proc/[0-9]*/mountinfo 2>/dev/null
}

build() {
  local release=$1 tree=$2 suite opts
  suite=$(suite_of "$release")
  opts=$(apt_opts "$release")
  # Global: the EXIT trap reads it.
  tmp="$CACHE/.build-$(basename "$tree")-$$"
  command -v debootstrap >/dev/null || die "debootstrap missing: run scripts/install-deps.sh"
  echo "docker-rootfs: building $tree (debootstrap $suite; a few minutes)" >&2
  rm -rf "$tmp"
  # Unmount and remove the half-built tree on any failure.
  trap 'umount -l "$tmp/proc" 2>/dev/null || true; rm -rf "$tmp"' EXIT
  debootstrap --variant=minbase "$suite" "$tmp" "$MIRROR" >"$tmp.log" 2>&1 ||
    { tail -30 "$tmp.log" >&2; rm -f "$tmp.log"; die "debootstrap $suite failed"; }
  rm -f "$tmp.log"
  # No docs, man pages or translations; no daemons started by package scripts.
  cat >"$tmp/etc/dpkg/dpkg.cfg.d/01-ovl-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/info/*
EOF
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod +x "$tmp/usr/sbin/policy-rc.d"
  mount -t proc proc "$tmp/proc"
  # shellcheck disable=SC2086 # $opts is a list of apt options
  chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get $opts update -qq
  # shellcheck disable=SC2086
  chroot "$tmp" env DEBIAN_FRONTEND=noninteractive \
    apt-get $opts install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  umount "$tmp/proc"
  chroot "$tmp" apt-get clean
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp/usr/sbin/policy-rc.d"
  # Debian's iptables alternative is the nft backend on both releases: the same kernel tables
  # as the machine's own iptables.
  {
    recipe "$release"
    chroot "$tmp" dpkg-query -W -f='${Package}=${Version}\n' docker.io docker-cli \
      docker-compose containerd runc iptables
  } >"$tmp/.ovl-rootfs"
  mv "$tmp" "$tree"
  trap - EXIT
  echo "docker-rootfs: built $tree:" >&2
  grep -E '^(docker|containerd|runc)' "$tree/.ovl-rootfs" >&2
}

ensure() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  mkdir -p "$CACHE"
  local release tree
  for release in "$@"; do
    suite_of "$release" >/dev/null
    tree=$(tree_of "$release")
    # One builder at a time (tests of several engines may ask at once).
    exec 9>"$CACHE/.lock"
    flock 9
    [ -f "$tree/.ovl-rootfs" ] || build "$release" "$tree"
    flock -u 9
    echo "$tree"
  done
}

cmd=${1:-}
shift || true
case "$cmd" in
  ensure)
    [ $# -gt 0 ] || die "usage: $0 ensure RELEASE..."
    ensure "$@"
    ;;
  path)
    [ $# -eq 1 ] || die "usage: $0 path RELEASE"
    suite_of "$1" >/dev/null
    tree=$(tree_of "$1")
    [ -f "$tree/.ovl-rootfs" ] || die "$tree is not built: run $0 ensure $1"
    echo "$tree"
    ;;
  clean)
    [ -d "$CACHE" ] || exit 0
    keep=" $(tree_of trixie) $(tree_of sid) "
    for t in "$CACHE"/*; do
      [ -d "$t" ] || continue
      case "$keep" in *" $t "*) continue ;; esac
      if in_use "$t"; then
        echo "docker-rootfs: keeping $t (in use)" >&2
      else
        echo "docker-rootfs: removing $t" >&2
        rm -rf --one-file-system "$t"
      fi
    done
    ;;
  *)
    die "usage: $0 ensure RELEASE... | path RELEASE | clean"
    ;;
esac
