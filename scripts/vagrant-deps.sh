#!/usr/bin/env bash
# Installs what the Vagrant lab needs on a Debian 12 host: QEMU, libvirt, Vagrant with the
# libvirt provider, and debootstrap for the local box (`cargo xtask vagrant box`).
# Idempotent and non-interactive: does nothing when everything is already installed.
set -euo pipefail

PACKAGES=(
  # the hypervisor (software emulation works everywhere; KVM is used where it works)
  qemu-system-x86 qemu-utils
  # libvirt and the networks vagrant-libvirt defines (dnsmasq serves their DHCP)
  libvirt-daemon-system libvirt-clients dnsmasq-base iptables
  # Vagrant and its libvirt provider
  vagrant vagrant-libvirt
  # the box builder
  debootstrap e2fsprogs tar
)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# qemu-system-x86 requires qemu-utils of its own version. Some hosts carry a newer
# qemu-utils (from backports) that apt will not downgrade by itself, which makes
# qemu-system-x86 uninstallable; pin both to the release's version in one command.
qemu_version() {
  apt-cache madison qemu-system-x86 2>/dev/null | awk -F'|' 'NR==1 {gsub(/ /, "", $2); print $2}'
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
utils_mismatch=0
if installed qemu-system-x86 && installed qemu-utils; then
  sys_v=$(dpkg-query -W -f='${Version}' qemu-system-x86)
  utils_v=$(dpkg-query -W -f='${Version}' qemu-utils)
  [ "$sys_v" = "$utils_v" ] || utils_mismatch=1
fi
if [ ${#missing[@]} -eq 0 ] && [ "$utils_mismatch" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "vagrant-deps: missing packages (${missing[*]}); run as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
v=$(qemu_version)
if [ -z "$v" ]; then
  echo "vagrant-deps: no qemu-system-x86 in the apt sources" >&2
  exit 1
fi
args=()
for p in "${missing[@]}"; do
  case "$p" in
    qemu-system-x86 | qemu-utils) ;;
    *) args+=("$p") ;;
  esac
done
args+=("qemu-system-x86=$v" "qemu-utils=$v")
echo "vagrant-deps: installing ${args[*]}"
# policy-rc.d keeps package scripts from starting daemons: hosts without systemd have no
# init to start them, and `cargo xtask vagrant up` starts (and `down` stops) libvirtd itself.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { [ "$created_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d; true; }
trap cleanup EXIT
apt-get install -y -qq --no-install-recommends --allow-downgrades \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${args[@]}" >/dev/null
echo "vagrant-deps: done"
