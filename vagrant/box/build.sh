#!/usr/bin/env bash
# Builds a Debian bookworm Vagrant box for the libvirt provider without a box registry:
# debootstrap a root filesystem with every package the lab needs (the guests may not reach a
# package mirror), make it a qcow2 image and pack it with the kernel and initrd, which libvirt
# boots directly (no bootloader in the image).
#
#   vagrant/box/build.sh OUT.box
#
# Environment: OVL_BOX_MIRROR (default http://deb.debian.org/debian), OVL_BOX_SECURITY_MIRROR
# (default http://deb.debian.org/debian-security), OVL_BOX_SIZE_GB (disk size, default 8).
# Needs root, debootstrap, e2fsprogs, qemu-utils. `cargo xtask vagrant box` calls this and
# caches the result.
set -euo pipefail

out=${1:?usage: build.sh OUT.box}
mirror=${OVL_BOX_MIRROR:-http://deb.debian.org/debian}
security=${OVL_BOX_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
size_gb=${OVL_BOX_SIZE_GB:-8}
here=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "build.sh: run as root (debootstrap, chroot)" >&2
  exit 1
fi

# Vagrant's insecure public key: Vagrant logs in with it once and replaces it with a key of
# its own. Debian ships it inside the vagrant gem.
pubkey=${OVL_BOX_PUBKEY:-}
if [ -z "$pubkey" ]; then
  pubkey=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
    /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -n1 || true)
fi
if [ -z "$pubkey" ] || [ ! -f "$pubkey" ]; then
  echo "build.sh: Vagrant's insecure public key not found; set OVL_BOX_PUBKEY" >&2
  exit 1
fi

# What the lab runs on every node. Docker Engine and etcd come from Debian; the agent itself
# is not in the box (provisioning copies the binary built on the host).
packages=(
  # boot, login, the network Vagrant configures
  systemd-sysv dbus udev kmod linux-image-amd64 openssh-server sudo iproute2 netbase
  ca-certificates procps iputils-ping less
  # the lab
  docker.io etcd-server etcd-client nftables iptables busybox-static tcpdump
)

work=$(mktemp -d "$(dirname "$out")/box-build.XXXXXX")
root=$work/rootfs
mounted=()
cleanup() {
  # Unmount in reverse order, lazily if something still holds a mount, so nothing of the
  # chroot stays attached to the host.
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '[box %5ss] %s\n' "$SECONDS" "$*"; }

step "debootstrap bookworm (minbase) from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

for m in proc sys dev dev/pts; do
  mkdir -p "$root/$m"
done
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
mount --bind /dev "$root/dev" && mounted+=("$root/dev")
mount -t devpts devpts "$root/dev/pts" -o newinstance,ptmxmode=0666 && mounted+=("$root/dev/pts")

cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
# Package scripts must not start daemons inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"

in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

step "apt-get install ${packages[*]}"
{
  in_root apt-get update -qq
  in_root apt-get -y -qq upgrade
  in_root apt-get install -y -qq --no-install-recommends "${packages[@]}"
} >"$work/apt.log" 2>&1 || {
  tail -n 30 "$work/apt.log" >&2
  exit 1
}

step "configure the guest"
# An empty machine-id is filled in at first boot: every clone gets its own, and with it its
# own DHCP client id and lease.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
echo ovl-box >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1 localhost
127.0.1.1 ovl-box
EOF
echo '/dev/vda / ext4 defaults,noatime 0 1' >"$root/etc/fstab"

# The management NIC: DHCP keyed by MAC (not by the DUID derived from machine-id).
# Vagrant writes its own networkd files for the private network.
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/10-eth0.network" <<'EOF'
[Match]
Name=eth0

[Network]
DHCP=ipv4

[DHCPv4]
ClientIdentifier=mac
EOF
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
# No resolver: the lab resolves nothing outside itself, and a name lookup must fail at once
# rather than wander off to whatever resolver the build host had (debootstrap copies its
# resolv.conf).
echo 'nameserver 127.0.0.1' >"$root/etc/resolv.conf"
# Tells the provisioning it runs on this box: every package is here, and the guests are
# isolated (no mirror, no outside DNS).
echo "overlay-agent lab box, bookworm" >"$root/etc/ovl-lab-box"

# The vagrant user, Vagrant's insecure key, passwordless sudo.
in_root useradd -m -s /bin/bash -U vagrant
echo 'vagrant:vagrant' | in_root chpasswd
install -d -m 700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$pubkey" "$root/home/vagrant/.ssh/authorized_keys"
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
chmod 440 "$root/etc/sudoers.d/vagrant"

# sshd: no reverse lookups (the guests have no resolver that answers); host keys are made at
# first boot so clones of the box do not share them.
echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/vagrant.conf"
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/hostkeys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF

# Daemons the provisioning starts in its own order (the agent before Docker; etcd on node1
# only) stay off until then. Timers that only cost CPU under emulation are masked.
in_root systemctl disable docker.service docker.socket containerd.service etcd.service \
  >/dev/null 2>&1 || true
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  fstrim.timer >/dev/null 2>&1 || true

step "copy out the kernel and initrd"
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -n1)
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
kver=${kernel##*/vmlinuz-}

rm -f "$root/usr/sbin/policy-rc.d"
in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/log/*.log
for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
  umount "${mounted[i]}"
done
mounted=()

step "make the image (${size_gb} GiB ext4, qcow2)"
truncate -s "${size_gb}G" "$work/rootfs.raw"
mkfs.ext4 -q -F -L root -d "$root" "$work/rootfs.raw"
qemu-img convert -c -O qcow2 "$work/rootfs.raw" "$work/box.img"
rm -f "$work/rootfs.raw"

cat >"$work/metadata.json" <<EOF
{"provider":"libvirt","format":"qcow2","virtual_size":$size_gb}
EOF
cp "$here/Vagrantfile.box" "$work/Vagrantfile"
cat >"$work/info.json" <<EOF
{"description":"Debian bookworm for the overlay-agent Vagrant lab","kernel":"$kver","built":"$(date -u +%FT%TZ)"}
EOF

step "pack $out"
tar -C "$work" -cf "$out.partial" metadata.json info.json Vagrantfile box.img vmlinuz initrd.img
mv "$out.partial" "$out"
step "done: $(du -h "$out" | cut -f1) ($kver)"
