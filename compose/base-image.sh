#!/usr/bin/env bash
# Build the offline base image `raiox/base:trixie` from Debian's own packages, for machines that
# reach apt but no container registry (CI, air-gapped clinics). Real deployments can use the
# upstream `debian:trixie-slim` instead: every Dockerfile here takes it as `ARG BASE`.
#
# Usage: compose/base-image.sh [TAG] [CACHE_DIR]
# The debootstrapped root filesystem is kept as a tarball in CACHE_DIR (default
# ${RAIOX_CACHE_DIR:-~/.cache/raiox}, machine-wide, outside any clone), named by a hash of this
# script and the mirror, so a Docker whose images were wiped re-imports it in seconds instead of
# bootstrapping again, and a changed recipe never reuses an old tarball.
set -euo pipefail

tag="${1:-raiox/base:trixie}"
cache="${2:-${RAIOX_CACHE_DIR:-$HOME/.cache/raiox}}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
key="$( (cat "$0"; echo "$mirror") | sha1sum | cut -c1-12)"
tarball="$cache/base-trixie-$key.tar"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag already present"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || {
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
  }
  mkdir -p "$cache"
  rootfs="$(mktemp -d "$cache/.rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase trixie "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log"; exit 1; }
  # Same trims as Debian's slim images: no apt lists or caches in the layer.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  printf 'deb %s trixie main\ndeb %s trixie-updates main\ndeb http://deb.debian.org/debian-security trixie-security main\n' \
    "$mirror" "$mirror" >"$rootfs/etc/apt/sources.list"
  tar -C "$rootfs" -c . >"$tarball.tmp.$$"
  mv "$tarball.tmp.$$" "$tarball"
  find "$cache" -maxdepth 1 -name 'base-trixie-*.tar' ! -name "${tarball##*/}" -delete
fi

docker import --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
echo "imported $tag from $tarball"
