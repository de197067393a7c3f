#!/usr/bin/env bash
# Every node: the overlay-agent Debian package (uploaded by the file provisioner to
# /tmp/ovl-upload), configured in /etc/overlay-agent/config.toml and enabled (its unit is
# ordered before docker.service and reports ready once its sockets answer), Docker Engine
# (Debian's docker.io) with the `ovl` plugin, and a busybox image.
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
deb=$upload/overlay-agent.deb
stamp=/var/lib/ovl-lab/overlay-agent.deb.sha256
if [ -f "$deb" ]; then
  sum=$(sha256sum "$deb" | cut -d' ' -f1)
  if ! installed overlay-agent || [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    # dpkg -i installs and upgrades alike (and reinstalls a rebuilt package of the same
    # version); the lab's settings in the conffile are kept (confold).
    if ! dpkg --force-confdef --force-confold -i "$deb" >/tmp/ovl-dpkg.log 2>&1; then
      if [ "$box" -eq 1 ]; then
        cat /tmp/ovl-dpkg.log >&2
        echo "node.sh: installing $deb failed (dependencies missing from the box?)" >&2
        exit 1
      fi
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq -f >/dev/null
    fi
    install -D -m 0644 /dev/null "$stamp"
    echo "$sum" >"$stamp"
    changed "installed $(dpkg-query -W -f='${Package} ${Version}' overlay-agent)"
    restart_agent=1
  fi
  rm -f "$deb"
fi
rmdir "$upload" 2>/dev/null || true
if ! installed overlay-agent; then
  echo "node.sh: the overlay-agent package is not installed and nothing was uploaded to $upload" >&2
  exit 1
fi
# What the lab wrote before it installed the package: binaries, unit and environment file
# that would shadow the package's.
for f in /usr/local/bin/overlay-agent /usr/local/bin/overlayctl \
  /etc/systemd/system/overlay-agent.service /etc/default/overlay-agent; do
  if [ -e "$f" ]; then
    rm -f "$f"
    changed "removed $f (the package provides the agent now)"
    systemctl daemon-reload
    restart_agent=1
  fi
done

# The host's settings, as an administrator would set them: at the end of the package's
# commented config file (every key there is commented out).
conf=/etc/overlay-agent/config.toml
marker="# --- set by the overlay-agent Vagrant lab (node.sh) ---"
block="$marker
host-id = \"$node\"
advertise-addr = \"$addr\"
kv = \"$kv\"
docker-plugin = true"
if [ "$(sed -n "/^$marker\$/,\$p" "$conf")" != "$block" ]; then
  sed -i "/^$marker\$/,\$d" "$conf"
  printf '%s\n' "$block" >>"$conf"
  changed "set host-id, advertise-addr, kv and docker-plugin in $conf"
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
# The package's unit is Type=notify: start returns once the control and plugin sockets
# answer.
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
