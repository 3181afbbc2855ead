#!/usr/bin/env bash
# Imports OCI archives into the real node's containerd (namespace k8s.io), skipping images it already has.
#   hack/import-images.sh REF=ARCHIVE [REF=ARCHIVE ...]
set -euo pipefail
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
sock="$cache/state/containerd/containerd.sock"
[ -S "$sock" ] || { echo "no containerd at $sock: run make cluster-up (with the real node)" >&2; exit 1; }
have=$(ctr --address "$sock" -n k8s.io images ls -q)
for pair in "$@"; do
  ref=${pair%%=*} archive=${pair#*=}
  if grep -qxF "$ref" <<<"$have"; then echo "[import] $ref already on the node"; continue; fi
  echo "[import] $ref from $archive ($(du -h "$archive" | cut -f1))"
  ctr --address "$sock" -n k8s.io images import "$archive" >/dev/null
  # an image is several GB: keep only the newest tag of each of our repositories on the node
  for old in $(grep -E "^${ref%%:*}:" <<<"$have" | grep -vxF "$ref" || true); do
    echo "[import] removing $old"
    ctr --address "$sock" -n k8s.io images rm "$old" >/dev/null || true
  done
done
# The CRI plugin also names each image by its config digest (sha256:...); an old image is only gone (and its
# GBs of snapshots garbage-collected) once that name goes too: drop every such name whose manifest no
# tagged image uses any more.
listing=$(ctr --address "$sock" -n k8s.io images ls)
tagged_digests=$(awk 'NR > 1 && $1 !~ /^sha256:/ {print $3}' <<<"$listing" | sort -u)
for orphan in $(awk 'NR > 1 && $1 ~ /^sha256:/ {print $1, $3}' <<<"$listing" | while read -r name digest; do
    grep -qxF "$digest" <<<"$tagged_digests" || echo "$name"; done); do
  ctr --address "$sock" -n k8s.io images rm "$orphan" >/dev/null || true
done
