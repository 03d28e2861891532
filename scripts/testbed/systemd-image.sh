#!/usr/bin/env bash
# Makes the Docker image that tests run a real systemd in (PID 1 of a
# container): a Debian bookworm minbase root with systemd, systemd-sysv and
# dbus. The debootstrap (about a minute) is done once per machine and cached
# as a tarball; the image is imported from it when missing. Prints the image
# name. Run by scripts/setup.sh and, when the image is missing, by the tests.
set -euo pipefail
cache=${DHVISOR_TEST_CACHE:-/var/cache/dhvisor-test}
rev=1   # bump when the package list below changes
image=dhv-sysd-base:bookworm-$rev
tarball=$cache/bookworm-systemd-$rev.tar
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

mkdir -p "$cache"
exec 9>"$cache/build.lock"
flock 9   # tests of several packages may ask at once
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
if [[ ! -s $tarball ]]; then
  command -v debootstrap >/dev/null || { echo "systemd-image: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "systemd-image: debootstrap bookworm into $root (once per machine, about a minute)" >&2
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
docker import "$tarball" "$image" >/dev/null
echo "$image"
