#!/usr/bin/env bash
# Every node: the overlay-agent binaries (uploaded by the file provisioner to
# /tmp/ovl-upload), the agent as a systemd service ordered before docker.service, Docker
# Engine (Debian's docker.io) with the `ovl` plugin, overlayctl, and a busybox image.
# Idempotent: a second run changes nothing and says "0 changes".
#
# Environment: OVL_NODE (host id), OVL_ADDR (underlay address = VTEP), OVL_KV (etcd URL),
# OVL_ETCD_NODE (1 on the node that runs etcd).
set -euo pipefail

node=${OVL_NODE:?OVL_NODE is required}
addr=${OVL_ADDR:?OVL_ADDR is required}
kv=${OVL_KV:?OVL_KV is required}
etcd_node=${OVL_ETCD_NODE:-0}
upload=/tmp/ovl-upload
# The locally built box marks itself: everything is preinstalled and the guests are cut off
# from package mirrors and outside DNS.
box=0
[ -e /etc/ovl-lab-box ] && box=1

changes=0
changed() {
  echo "node.sh: $node: $*"
  changes=$((changes + 1))
}

# put FILE [MODE]: writes stdin to FILE when the content differs; true when it wrote.
put() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
    return 1
  fi
  install -D -m "${2:-0644}" "$tmp" "$1"
  rm -f "$tmp"
  changed "wrote $1"
}

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# --- packages -------------------------------------------------------------------------
missing=()
for p in docker.io nftables iptables iproute2 busybox-static etcd-client; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$box" -eq 1 ]; then
    echo "node.sh: ${missing[*]} missing from the box; rebuild it (cargo xtask vagrant box --force)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  changed "installed ${missing[*]}"
fi
# Only node1 serves etcd (a package install elsewhere may have started one).
if [ "$etcd_node" != 1 ] && systemctl cat etcd.service >/dev/null 2>&1; then
  if systemctl -q is-enabled etcd.service 2>/dev/null || systemctl -q is-active etcd.service; then
    systemctl -q disable --now etcd.service
    changed "stopped and disabled etcd.service (it runs on node1 only)"
  fi
fi

# --- the agent ------------------------------------------------------------------------
restart_agent=0
for b in overlay-agent overlayctl; do
  if [ -f "$upload/$b" ]; then
    if ! cmp -s "$upload/$b" "/usr/local/bin/$b"; then
      install -m 0755 "$upload/$b" "/usr/local/bin/$b"
      changed "installed /usr/local/bin/$b"
      [ "$b" = overlay-agent ] && restart_agent=1
    fi
    rm -f "$upload/$b"
  fi
  if [ ! -x "/usr/local/bin/$b" ]; then
    echo "node.sh: /usr/local/bin/$b missing and nothing uploaded to $upload" >&2
    exit 1
  fi
done
rmdir "$upload" 2>/dev/null || true

if put /etc/default/overlay-agent <<EOF; then
# Written by the overlay-agent Vagrant lab (vagrant/provision/node.sh). Every flag of
# overlay-agent also reads OVERLAY_<FLAG>.
OVERLAY_HOST_ID=$node
OVERLAY_ADVERTISE_ADDR=$addr
OVERLAY_KV=$kv
EOF
  restart_agent=1
fi

# Before docker.service (and wanted by it): Docker asks the plugin about its networks as
# it starts, so the socket must be there. ExecStartPost holds dependants back until the
# plugin socket exists ("$$" is systemd's escape for "$"). The datapath outlives the agent,
# so a restart drops no traffic.
if put /etc/systemd/system/overlay-agent.service <<'EOF'; then
[Unit]
Description=overlay-agent: VXLAN overlays, names, and the Docker ovl plugin
After=network-online.target etcd.service
Wants=network-online.target
Before=docker.service

[Service]
Type=simple
EnvironmentFile=/etc/default/overlay-agent
ExecStart=/usr/local/bin/overlay-agent --docker-plugin
ExecStartPost=/bin/sh -c 'n=0; until [ -S /run/docker/plugins/ovl.sock ]; do n=$$((n+1)); [ $$n -lt 300 ] || exit 1; sleep 0.2; done'
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target docker.service
EOF
  systemctl daemon-reload
  restart_agent=1
fi
# One `systemctl enable` for every unit: each call reloads systemd, which takes many seconds
# in an emulated guest.
to_enable=()
for u in overlay-agent.service containerd.service docker.socket docker.service; do
  systemctl -q is-enabled "$u" 2>/dev/null || to_enable+=("$u")
done
if [ ${#to_enable[@]} -gt 0 ]; then
  systemctl -q enable "${to_enable[@]}"
  changed "enabled ${to_enable[*]}"
fi
if ! systemctl -q is-active overlay-agent.service; then
  systemctl start overlay-agent.service
  changed "started overlay-agent.service"
elif [ "$restart_agent" -eq 1 ]; then
  systemctl restart overlay-agent.service
  changed "restarted overlay-agent.service"
fi

# --- Docker ---------------------------------------------------------------------------
restart_docker=0
if [ "$box" -eq 1 ]; then
  # Names Docker cannot answer go to docker0's address, where nothing listens: they fail
  # at once instead of waiting on (or leaking to) an outside resolver. Overlay names come
  # from /etc/hosts, which the agent writes.
  if put /etc/docker/daemon.json <<'EOF'; then
{
  "dns": ["172.17.0.1"]
}
EOF
    restart_docker=1
  fi
fi
if ! systemctl -q is-active docker.service; then
  systemctl start docker.service
  changed "started docker.service"
elif [ "$restart_docker" -eq 1 ]; then
  systemctl restart docker.service
  changed "restarted docker.service"
fi
for _ in $(seq 1 180); do
  docker info >/dev/null 2>&1 && break
  sleep 1
done
if ! docker info >/dev/null 2>&1; then
  echo "node.sh: dockerd does not answer after 180 s" >&2
  journalctl -u docker.service --no-pager -n 30 >&2 || true
  exit 1
fi

# A busybox image from Debian's busybox-static: no registry needed. /bin/busybox plus one
# symlink per applet.
if ! docker image inspect busybox >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,root}
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
  done
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/sh"]' - busybox >/dev/null
  rm -rf "$rootfs"
  changed "imported the busybox image"
fi

# Ready: the agent answers and serves the plugin.
for _ in $(seq 1 60); do
  if overlayctl status >/dev/null 2>&1 && [ -S /run/docker/plugins/ovl.sock ]; then
    echo "node.sh: $node ready (agent $addr, kv $kv); $changes changes"
    exit 0
  fi
  sleep 1
done
echo "node.sh: the agent does not answer on its control socket" >&2
journalctl -u overlay-agent.service --no-pager -n 30 >&2 || true
exit 1
