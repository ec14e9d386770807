#!/usr/bin/env bash
# Wheels for the appliance image: the runtime dependencies for the image's Python (Debian
# trixie: CPython 3.13, glibc 2.41) plus the project's own wheel, so the image installs with
# `pip --no-index` and needs no network, compiler or build tool.
#
# Usage: compose/wheelhouse.sh OUT_DIR  (writes OUT_DIR/deps/ and OUT_DIR/app/)
# The dependency wheels are cached machine-wide, outside any clone, in
# ${RAIOX_CACHE_DIR:-~/.cache/raiox}/wheelhouse-<hash of the runtime requirements and the target
# platform>: only a change of those downloads again, and an entry unused for 30 days is removed.
# A cache only: with none, the wheels are downloaded. pgserver (the embedded Postgres of
# `make run`) and the build-time extras (torch, open_clip) never go into the image.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$1"
py="${PYTHON:-python3}"

requirements="$("$py" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
print("\n".join(d for d in deps if not d.startswith("pgserver")))
' "$root/pyproject.toml")"
platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 41); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
target=(--python-version 3.13 --implementation cp --abi cp313 --abi abi3 --abi none "${platforms[@]}")
cache="${RAIOX_CACHE_DIR:-$HOME/.cache/raiox}"
key="$(printf '%s\n' "$requirements" "${target[@]}" | sha1sum | cut -c1-12)"
deps="$cache/wheelhouse-$key"

if [ ! -f "$deps/.complete" ]; then
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/.wheelhouse.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  printf '%s\n' "$requirements" >"$tmp/requirements.txt"
  "$py" -m pip download -q --disable-pip-version-check --only-binary=:all: "${target[@]}" \
    -d "$tmp" -r "$tmp/requirements.txt"
  touch "$tmp/.complete"
  mv -T "$tmp" "$deps" 2>/dev/null || rm -rf "$tmp" # another run may have made it meanwhile
  trap - EXIT
fi
touch "$deps" # its last use: entries unused for 30 days go
find "$cache" -maxdepth 1 -name 'wheelhouse-*' -mtime +30 -exec rm -rf {} +

# deps/ changes only with the requirements, app/ with the code: separate image layers.
mkdir -p "$out/deps" "$out/app"
cp -l "$deps"/*.whl "$deps/requirements.txt" "$out/deps/" 2>/dev/null \
  || cp "$deps"/*.whl "$deps/requirements.txt" "$out/deps/"
rm -rf "$root/build/lib" "$root"/build/bdist.* # setuptools' staging: stale modules would ship
isolation=() # building in the caller's environment skips downloading setuptools each time
"$py" -c 'import setuptools.command.bdist_wheel' 2>/dev/null && isolation=(--no-build-isolation)
"$py" -m pip wheel -q --disable-pip-version-check --no-deps "${isolation[@]}" -w "$out/app" "$root" >/dev/null
rm -rf "$root/build/lib" "$root"/build/bdist.*
ls "$out"/app/raiox_appliance-*.whl >/dev/null
touch "$out/.complete"
