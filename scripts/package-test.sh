#!/usr/bin/env bash
# CI: the Debian package, end to end. Builds it with `cargo xtask package` (which lists and
# checks its contents), builds it again with a higher Debian revision (for the upgrade), runs
# lintian (an error fails), then, in a pristine Debian 12 root (scripts/clean-root.sh):
# installs it, runs both binaries and the agent from its config file, upgrades it, purges it,
# and checks that nothing of it is left. Needs root.
#
#   scripts/package-test.sh
#   scripts/package-test.sh --in-root OLD.deb NEW.deb    # the part inside the root
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '[package-test %4ss] %s\n' "$SECONDS" "$*"; }
fail() {
  echo "package-test: $*" >&2
  exit 1
}

# --- inside the pristine root ---------------------------------------------------------------
in_root() {
  local old=$1 new=$2
  export DEBIAN_FRONTEND=noninteractive
  # Files of the root, without the ones any package operation touches (dpkg's and apt's
  # databases, logs, caches) and the mounts of the run.
  snapshot() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
      -o -path /root -o -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/cache \
      -o -path /var/log -o -path /debs -o -path /debs-upgrade \) -prune -o -print |
      # The shadow tools' backups of the account files (addgroup and groupdel write them).
      grep -Ev '^/etc/(passwd|group|shadow|gshadow)-$' | sort
  }
  step "dependencies of the package, so what it leaves behind is its own"
  apt-get update -qq
  mapfile -t deps < <(dpkg-deb -f "$old" Depends | tr ',' '\n' | sed 's/(.*)//; s/|.*//' | awk 'NF {print $1}')
  apt-get install -y -qq --no-install-recommends "${deps[@]}" >/dev/null
  snapshot >/tmp/before

  step "install $(basename "$old")"
  apt-get install -y -qq --no-install-recommends "$old" >/dev/null
  dpkg-query -W -f='${Package} ${Version} ${Status}\n' overlay-agent
  overlay-agent --version
  overlayctl --version
  # Captured first: with pipefail, `grep -q` closing the pipe early makes overlayctl's next
  # write fail with EPIPE, and the step fails at random.
  help=$(overlayctl network create --help) || fail "overlayctl does not run"
  grep -q -- '--subnet' <<<"$help" || fail "overlayctl network create --help lacks --subnet"
  getent group overlay-agent || fail "no overlay-agent group"
  [ -f /etc/overlay-agent/config.toml ] || fail "no config file"
  # Not enabled nor started by the install: the host must be configured first.
  [ ! -e /etc/systemd/system/multi-user.target.wants/overlay-agent.service ] ||
    fail "the unit was enabled by the install"
  # The shipped config file parses; the agent asks for what it lacks.
  set +e
  err=$(overlay-agent --config /etc/overlay-agent/config.toml 2>&1)
  rc=$?
  set -e
  [ "$rc" -eq 2 ] && grep -q -- "--host-id is required" <<<"$err" ||
    fail "the shipped config file: exit $rc, $err"

  step "the installed agent runs from its config file (in a network namespace)"
  cat >>/etc/overlay-agent/config.toml <<'EOF'
# --- package test ---
host-id = "pkg1"
advertise-addr = "198.18.60.1"
EOF
  ip netns add pkgtest
  ip -n pkgtest link set lo up
  # A veth pair inside the namespace holds the advertise address (no dummy driver here).
  ip -n pkgtest link add d0 type veth peer name d1
  ip -n pkgtest addr add 198.18.60.1/24 dev d0
  ip -n pkgtest link set d0 up
  ip -n pkgtest link set d1 up
  ip netns exec pkgtest overlay-agent --config /etc/overlay-agent/config.toml \
    --dns-upstream 198.18.60.53 >/tmp/agent.log 2>&1 &
  agent=$!
  for _ in $(seq 1 100); do
    overlayctl status >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! overlayctl status; then
    cat /tmp/agent.log
    fail "the installed agent does not answer"
  fi
  overlayctl hosts
  kill -TERM "$agent"
  wait "$agent" || true
  ip netns del pkgtest

  step "upgrade to $(basename "$new")"
  conf_sum=$(md5sum /etc/overlay-agent/config.toml)
  apt-get install -y -qq --no-install-recommends "$new" >/dev/null
  v_new=$(dpkg-deb -f "$new" Version)
  [ "$(dpkg-query -W -f='${Version}' overlay-agent)" = "$v_new" ] || fail "not upgraded to $v_new"
  [ "$(md5sum /etc/overlay-agent/config.toml)" = "$conf_sum" ] ||
    fail "the upgrade changed the administrator's config file"
  [ ! -e /etc/overlay-agent/config.toml.dpkg-dist ] || fail "unexpected config.toml.dpkg-dist"
  overlay-agent --version

  step "purge"
  apt-get purge -y -qq overlay-agent >/dev/null
  if dpkg-query -W -f='${Status}' overlay-agent 2>/dev/null | grep -q installed; then
    fail "still installed after purge"
  fi
  ! getent group overlay-agent || fail "the overlay-agent group is left"
  snapshot >/tmp/after
  if ! diff /tmp/before /tmp/after; then
    fail "purge left files behind (> lines above)"
  fi
  step "in-root checks passed: install, run, upgrade, purge, nothing left"
}

if [ "${1:-}" = --in-root ]; then
  [ $# -eq 3 ] || fail "usage: package-test.sh --in-root OLD.deb NEW.deb"
  in_root "$2" "$3"
  exit 0
fi

# --- on the machine ----------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || fail "run as root (clean root, namespaces)"
export CARGO_TERM_COLOR=never
start=$SECONDS
scripts/package-deps.sh
out=target/debian
up=target/debian-upgrade
rm -rf "$out" "$up"
# The upgrade first: cargo-deb clears other versions of the package out of target/debian.
step "cargo xtask package --revision 2 (the upgrade)"
cargo xtask package --revision 2 --output "$up"
step "cargo xtask package"
cargo xtask package
old=$(ls "$out"/overlay-agent_*-1_amd64.deb)
new=$(ls "$up"/overlay-agent_*-2_amd64.deb)

step "lintian $old"
# Errors fail; warnings and notes are shown.
lintian --fail-on error --display-level '>=warning' "$old"

step "install, upgrade and purge in a pristine Debian 12 root"
scripts/clean-root.sh --ro "$(pwd)/$out:/debs" --ro "$(pwd)/$up:/debs-upgrade" -- \
  scripts/package-test.sh --in-root "/debs/$(basename "$old")" "/debs-upgrade/$(basename "$new")"
step "package test passed in $((SECONDS - start)) s"
