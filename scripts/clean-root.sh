#!/usr/bin/env bash
# Runs a command in a pristine Debian 12 root filesystem: only what a fresh machine of this
# kind has before the project's scripts run (debootstrap minbase plus the image's base tools),
# the machine's Rust toolchain (read-only) and CA certificates, and a fresh clone of this
# checkout (with its uncommitted changes) at /root/overlay-agent. Everything else has to come
# from the project's own scripts, so a package installed by hand on this machine cannot hide a
# missing install step.
#
#   scripts/clean-root.sh                      # the README's first command: scripts/demo.sh
#   scripts/clean-root.sh [--ro HOST:PATH]... -- CMD [ARG...]   # any command, as root
#   scripts/clean-root.sh --build-only         # build (or find) the cached root and stop
#
# The root is built once and cached under $OVL_CLEANROOT_CACHE (default
# /var/cache/overlay-cleanroot) in a directory named after a hash of its recipe (the
# `build_base` function and the package list below): a changed recipe builds a new one. Every
# run mounts it as the lower layer of an overlay with a new, empty upper layer that is deleted
# afterwards, so a run never sees what an earlier run installed. Downloaded .debs and cargo's
# registry are cached between runs (they are downloads, not installed state).
#
# A run has its own mount, PID and UTS namespaces: proc, sysfs, /dev and a tmpfs /run are
# mounted for it (network namespaces work inside, for the netns lab), then it pivots into the
# root. Ending the run (or this script) kills every process in it, and the mounts vanish with
# its mount namespace. It shares the machine's network (apt and cargo download).
#
# Needs root, debootstrap and overlayfs. Runs are serialized with a lock in the cache.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${OVL_CLEANROOT_CACHE:-/var/cache/overlay-cleanroot}
mirror=${OVL_CLEANROOT_MIRROR:-http://deb.debian.org/debian}
security=${OVL_CLEANROOT_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm

# What a fresh machine of this kind has besides minbase (the image's base tools; see
# /work/.library/env/machines/rust.md): compilers, git, Python, the usual command-line tools.
# Nothing the project's scripts install belongs here.
BASE_PACKAGES=(
  git build-essential python3 curl wget ca-certificates iproute2 procps
  xz-utils gnupg less
)

step() { printf '[clean-root %4ss] %s\n' "$SECONDS" "$*"; }
die() {
  echo "clean-root: $*" >&2
  exit 1
}

# --- the recipe: everything that decides what the cached root contains ------------------
build_base() {
  local dest=$1
  debootstrap --variant=minbase "$suite" "$dest" "$mirror" >"$dest.log" 2>&1 || {
    tail -n 30 "$dest.log" >&2
    return 1
  }
  cat >"$dest/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
  # As on the machine: mirrors may serve snapshots older than their Valid-Until.
  echo 'Acquire::Check-Valid-Until "false";' >"$dest/etc/apt/apt.conf.d/99check-valid-until"
  mount -t proc proc "$dest/proc"
  local rc=0
  {
    chroot "$dest" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get update -qq &&
      chroot "$dest" env DEBIAN_FRONTEND=noninteractive LC_ALL=C \
        apt-get install -y -qq --no-install-recommends "${BASE_PACKAGES[@]}" &&
      chroot "$dest" apt-get clean
  } >>"$dest.log" 2>&1 || rc=$?
  umount "$dest/proc"
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$dest.log" >&2
    return "$rc"
  fi
  # Mount points and directories a run binds over.
  mkdir -p "$dest/root/.rustup" "$dest/root/.cargo/bin" "$dest/root/.cargo/registry"
  rm -rf "$dest"/var/lib/apt/lists/* "$dest"/tmp/* "$dest.log"
}

recipe_hash() {
  { declare -f build_base; printf '%s\n' "$suite" "$mirror" "$security" "${BASE_PACKAGES[@]}"; } |
    sha256sum | cut -c1-16
}

# Builds the cached root for the current recipe unless it exists; prints its path.
ensure_base() {
  local base="$cache/$suite-$(recipe_hash)"
  if [ -d "$base" ]; then
    echo "$base"
    return
  fi
  command -v debootstrap >/dev/null || {
    step "installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  }
  local tmp="$base.partial"
  rm -rf "$tmp" "$tmp.log"
  mkdir -p "$tmp"
  step "building the pristine root $base (debootstrap $suite minbase + ${BASE_PACKAGES[*]})" >&2
  if ! build_base "$tmp"; then
    umount "$tmp/proc" 2>/dev/null || true
    rm -rf "$tmp" "$tmp.log"
    die "building the root failed"
  fi
  mv "$tmp" "$base"
  # Roots of older recipes are of no further use.
  local old
  for old in "$cache/$suite"-*; do
    [ "$old" = "$base" ] || [ ! -d "$old" ] || rm -rf "$old"
  done
  step "pristine root ready ($(du -sh "$base" | cut -f1))" >&2
  echo "$base"
}

# --- inside the namespaces ---------------------------------------------------------------
# __inner RUN_DIR BASE RO_SPECS -- CMD...: mount the overlay and the API filesystems, pivot
# into the root and run CMD. PID 1 of the run's PID namespace.
inner() {
  local run=$1 base=$2 ro_specs=$3
  shift 4
  local root=$run/root
  mount -t overlay overlay -o "lowerdir=$base,upperdir=$run/upper,workdir=$run/work" "$root"
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o mode=755 tmpfs "$root/run"
  mkdir -p "$root/run/lock"
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
  # The machine's Rust toolchain, read-only; cargo's registry cache, writable.
  local d
  for d in .rustup .cargo/bin; do
    mount --bind "/root/$d" "$root/root/$d"
    mount -o remount,bind,ro "$root/root/$d"
  done
  mount --bind "$cache/cargo-registry" "$root/root/.cargo/registry"
  mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
  local spec
  for spec in $ro_specs; do
    mkdir -p "$root/${spec#*:}"
    mount --bind "${spec%%:*}" "$root/${spec#*:}"
    mount -o remount,bind,ro "$root/${spec#*:}"
  done
  # The machine's resolver and CA certificates (a proxy's CA among them, if any).
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  hostname ovl-cleanroot
  printf '127.0.0.1 localhost\n127.0.1.1 ovl-cleanroot\n' >"$root/etc/hosts"
  cd "$root"
  mkdir -p .oldroot
  pivot_root . .oldroot
  umount -l /.oldroot
  rmdir /.oldroot
  cd /root/overlay-agent
  exec env -i HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_TERM_COLOR=never "$@"
}

if [ "${1:-}" = __inner ]; then
  shift
  inner "$@"
fi

# --- outside -------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, mounts, namespaces)"
ro_specs=""
build_only=0
cmd=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build-only) build_only=1 ;;
    --ro)
      [ $# -ge 2 ] || die "--ro needs HOST:PATH"
      host_path=${2%%:*}
      [ -e "$host_path" ] || die "--ro $2: $host_path does not exist"
      case "$2" in *" "*) die "--ro $2: no spaces, please" ;; esac
      ro_specs="$ro_specs $(realpath "$host_path"):${2#*:}"
      shift
      ;;
    --)
      shift
      cmd=("$@")
      break
      ;;
    *) die "unknown argument $1 (usage: clean-root.sh [--build-only] [--ro HOST:PATH]... [-- CMD...])" ;;
  esac
  shift
done
[ ${#cmd[@]} -gt 0 ] || cmd=(scripts/demo.sh)
for d in /root/.rustup /root/.cargo/bin; do
  [ -d "$d" ] || die "$d is missing: this runs the machine's rustup toolchain"
done

mkdir -p "$cache/cargo-registry" "$cache/apt-archives/partial" "$cache/runs"
exec 9>"$cache/lock"
if ! flock -n 9; then
  step "waiting for another clean-root run to finish"
  flock 9
fi

base=$(ensure_base)
[ "$build_only" -eq 0 ] || exit 0

run=$(mktemp -d "$cache/runs/run.XXXXXX")
child=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    # unshare --fork ignores SIGTERM while it waits; killed, it takes the whole run (its
    # PID namespace, through --kill-child) with it.
    kill -KILL "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  if grep -q " $run/" /proc/self/mountinfo; then
    echo "clean-root: mounts of $run leaked into this namespace" >&2
    rc=1
  fi
  rm -rf "$run"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$run/upper/root" "$run/work" "$run/root"
# The checkout as a user would have it: a clone (with .git, so builds know their revision),
# plus whatever is changed or new here and not yet committed.
step "cloning $repo into the root"
git clone --quiet --no-hardlinks "$repo" "$run/upper/root/overlay-agent"
(
  cd "$repo"
  changed=$(git ls-files --modified --others --exclude-standard | wc -l)
  # A clean checkout (as CI's) has nothing to copy: tar would get an empty stream.
  if [ "$changed" -gt 0 ]; then
    git ls-files -z --modified --others --exclude-standard | (cd "$run/upper/root/overlay-agent" && xargs -0r rm -f)
    git ls-files -z --modified --others --exclude-standard |
      tar -c --null -T - --ignore-failed-read -f - 2>/dev/null | tar -x -C "$run/upper/root/overlay-agent"
  fi
)

step "running ${cmd[*]} in a pristine $suite root (as root, fresh overlay)"
start=$SECONDS
set +e
unshare --mount --pid --uts --fork --kill-child --propagation private -- \
  "$repo/scripts/clean-root.sh" __inner "$run" "$base" "$ro_specs" -- "${cmd[@]}" &
child=$!
wait "$child"
rc=$?
set -e
child=""
step "${cmd[*]} exited with $rc after $((SECONDS - start)) s"
exit "$rc"
