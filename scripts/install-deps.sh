#!/usr/bin/env bash
# Installs every Debian package the build, the lab, the tests and the benchmarks need.
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

PACKAGES=(
  # build: etcd-client's gRPC codegen (protoc + the well-known .proto files), the eBPF programs
  protobuf-compiler libprotobuf-dev clang-19 llvm-19 libbpf-dev bpftool pkg-config
  # lab and datapath
  iproute2 nftables iptables util-linux procps kmod ethtool tcpdump
  # KV
  etcd-server etcd-client
  # peers that judge the datapath and the names
  iputils-ping iputils-arping iperf3 sockperf dnsutils dnsmasq-base dnsperf busybox-static socat curl
  # Docker end-to-end tests and benchmarks: Debian 12's engine, and debootstrap for the trees
  # the newer engines run from (scripts/docker-rootfs.sh)
  docker.io debootstrap
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]}); run as root" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps package scripts from starting daemons (there is no init system here; the
# tests start etcd and dockerd themselves).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
