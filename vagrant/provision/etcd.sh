#!/usr/bin/env bash
# node1: etcd (Debian's etcd-server, v3 API) for the agents' KV, listening on the underlay.
# Idempotent: a second run changes nothing and says "0 changes".
#
# Environment: OVL_ETCD_ADDR (the underlay address to serve clients on).
set -euo pipefail

addr=${OVL_ETCD_ADDR:?OVL_ETCD_ADDR is required}
changes=0
changed() {
  echo "etcd.sh: $*"
  changes=$((changes + 1))
}

# put FILE: writes stdin to FILE when the content differs; true when it wrote.
put() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
    return 1
  fi
  install -D -m 0644 "$tmp" "$1"
  rm -f "$tmp"
  changed "wrote $1"
}

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for p in etcd-server etcd-client; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ -e /etc/ovl-lab-box ]; then
    # The local box has no package mirror to fall back on.
    echo "etcd.sh: ${missing[*]} missing from the box; rebuild it (cargo xtask vagrant box --force)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  changed "installed ${missing[*]}"
fi

restart=0
# Debian's etcd.service reads /etc/default/etcd. Clients on the underlay and on loopback;
# the single member's peer port stays on loopback.
if put /etc/default/etcd <<EOF
# Written by the overlay-agent Vagrant lab (vagrant/provision/etcd.sh).
ETCD_LISTEN_CLIENT_URLS=http://$addr:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$addr:2379
ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380
EOF
then
  restart=1
fi

if ! systemctl -q is-enabled etcd.service 2>/dev/null; then
  systemctl -q enable etcd.service
  changed "enabled etcd.service"
fi
if ! systemctl -q is-active etcd.service; then
  systemctl start etcd.service
  changed "started etcd.service"
elif [ "$restart" -eq 1 ]; then
  systemctl restart etcd.service
  changed "restarted etcd.service"
fi

# Ready means serving on the underlay, where the agents look for it.
for _ in $(seq 1 120); do
  if ETCDCTL_API=3 etcdctl --endpoints "http://$addr:2379" --dial-timeout 2s \
    endpoint health >/dev/null 2>&1; then
    echo "etcd.sh: etcd healthy at http://$addr:2379; $changes changes"
    exit 0
  fi
  sleep 1
done
echo "etcd.sh: etcd not healthy at http://$addr:2379 after 120 s" >&2
journalctl -u etcd.service --no-pager -n 30 >&2 || true
exit 1
