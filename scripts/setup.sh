#!/usr/bin/env bash
# Prepare this machine (Debian 12, as root) for Raven overlay: system tools, then .venv with the
# project installed editable with its test extras. Idempotent: a second run installs nothing and
# takes seconds, because every step first checks whether it is already done.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

log() { printf '[setup] %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root (it installs Debian packages and the lab needs network namespaces)"
  exit 1
fi

apt_packages=(iproute2 nftables wireguard-go wireguard-tools iperf3 iputils-ping tcpdump procps graphviz)
# ethtool: the kernel tests' oracle for offload features (the tunnel veth's rx-gro).
apt_packages+=(ethtool)
# VM tests (tests/vm): qemu boots Debian's kernel (it has the wireguard module, this host's kernel
# may not) with this machine's filesystem through virtme-ng; busybox-static and qemu-utils are
# what virtme-ng uses at run time (its initramfs, its disk tooling).
apt_packages+=(qemu-system-x86 qemu-utils linux-image-amd64 busybox-static)
# `raven lab vagrantfile` output is checked with `vagrant validate` (tests/vm/test_vagrantfile.py).
apt_packages+=(vagrant)
# Debian's kubernetes-client is old; only fall back to it when no kubectl is on the machine.
command -v kubectl >/dev/null 2>&1 || apt_packages+=(kubernetes-client)

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # INITRD=No: the VM tests boot the kernel image directly (no initramfs), and nothing here
  # reboots into it, so skip the minute-long initramfs build of the kernel package's hook.
  INITRD=No apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages already installed"
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

# Reinstall only when the project's metadata changed since the last successful install.
stamp=.venv/.raven-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  log "installing raven-overlay (editable) with test and vm extras into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test,vm]'
  echo "$want" > "$stamp"
else
  log ".venv is up to date"
fi
log "ready"
