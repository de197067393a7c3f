#!/usr/bin/env bash
# `vagrant validate` of the Vagrantfile for both providers, libvirt and VirtualBox.
#
# Vagrant only validates a provider's settings when it finds the provider usable; for
# VirtualBox that means `VBoxManage --version` answers. Where VirtualBox is not installed
# (it is not in Debian 12, and cannot run next to KVM on many hosts), a stub on PATH answers
# that one question, so the VirtualBox settings are still checked; the output says so.
set -euo pipefail
cd "$(dirname "$0")"
export VAGRANT_CHECKPOINT_DISABLE=1
stub=
cleanup() { [ -n "$stub" ] && rm -rf "$stub"; true; }
trap cleanup EXIT

echo "== vagrant validate (libvirt)"
VAGRANT_DEFAULT_PROVIDER=libvirt vagrant validate

echo "== vagrant validate (virtualbox)"
if command -v VBoxManage >/dev/null 2>&1; then
  VAGRANT_DEFAULT_PROVIDER=virtualbox vagrant validate
else
  stub=$(mktemp -d)
  printf '#!/bin/sh\n[ "$1" = --version ] && echo 7.0.14r161095\nexit 0\n' >"$stub/VBoxManage"
  chmod +x "$stub/VBoxManage"
  echo "(VirtualBox is not installed here: a VBoxManage stub answers vagrant's version probe)"
  PATH="$stub:$PATH" VAGRANT_DEFAULT_PROVIDER=virtualbox vagrant validate
fi
