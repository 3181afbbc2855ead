#!/usr/bin/env bash
# Makes the Debian root filesystem of the local base images: debootstrap (minbase) of bookworm with the
# packages of packages.txt, an empty virtualenv at /opt/venv, and without apt lists, caches and docs.
# Usage: rootfs.sh TARGET_DIR   (TARGET_DIR must not exist; it is created here, whole or not at all)
# Why debootstrap: no registry can be pulled from here, but Debian's packages can be downloaded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=$1
suite=${FTO_DEBIAN_SUITE:-bookworm}
mirror=${FTO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
debs=$cache/images/debs   # downloaded .debs are kept, so a rebuild after a list change downloads little
packages=$(grep -v '^[[:space:]]*#' "$here/packages.txt" | xargs | tr ' ' ',')
mkdir -p "$debs"
tmp="$target.tmp"
rm -rf "$tmp"
# minbase: only Priority: required (+ apt); --merged-usr is bookworm's default layout
debootstrap --variant=minbase --merged-usr --include="$packages" --cache-dir="$debs" \
  "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1 || { tail -20 "$tmp.log" >&2; exit 1; }
# The project's Python packages go into a virtualenv: its `python` is on PATH (Debian has only `python3`)
# and pip may install into it (Debian's own python is marked externally managed, PEP 668).
chroot "$tmp" /usr/bin/python3 -m venv --without-pip /opt/venv
# Nothing in the image runs apt; lists, caches and docs only add size. Copyright files stay (licences).
rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/* "$tmp"/var/cache/debconf/*-old \
  "$tmp"/usr/share/man "$tmp"/usr/share/info "$tmp"/var/log/* "$tmp"/root/.cache
find "$tmp/usr/share/doc" -type f ! -name copyright -delete
find "$tmp/usr/share/doc" -type d -empty -delete
rm -f "$tmp.log"
mv "$tmp" "$target"
