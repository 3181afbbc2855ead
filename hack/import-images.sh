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
