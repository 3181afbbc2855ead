#!/usr/bin/env bash
# Makes one local base image for hack/build-images.sh: the Debian rootfs (rootfs.sh) plus the distributions
# of the project's virtualenv that the given extras need (venv_closure.py), in one layer (buildah's vfs
# driver copies whole layers, so fewer is cheaper), committed to the buildah store as IMAGE.
# Usage: base.sh ROOTFS IMAGE EXTRAS [WARM_MODULES]
#   env: FTO_VENV (the source venv), FTO_BUILDAH_STORE (storage root), FTO_CACHE
#   WARM_MODULES: space-separated modules imported once in the image, as root, to write their bytecode
#   (see below)
# Why copy the venv: the image build must not download (no registry but PyPI, and torch is GBs), and the
# venv already holds exactly the versions the project is tested with. Its Python is 3.11, like bookworm's,
# so compiled wheels (torch, pyarrow...) work unchanged in the image.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
rootfs=$1 image=$2 extras=$3 warm=${4:-}
venv=${FTO_VENV:?} store=${FTO_BUILDAH_STORE:?}
site=$venv/lib/python3.11/site-packages
bah() { buildah --root "$store/storage" --runroot "$store/run" --storage-driver vfs "$@"; }

list=$(mktemp) scripts=$(mktemp)
# resolve first (fails loudly when the venv lacks a requirement) before touching the store
"$venv/bin/python" "$here/venv_closure.py" files --site "$site" --pyproject "$repo/pyproject.toml" \
  --extras "$extras" >"$list"
"$venv/bin/python" "$here/venv_closure.py" scripts --site "$site" --pyproject "$repo/pyproject.toml" \
  --extras "$extras" >"$scripts"

ctr=$(bah from --name "fto-base-$$" scratch)
cleanup() {
  bah umount "$ctr" >/dev/null 2>&1 || true
  bah rm "$ctr" >/dev/null 2>&1 || true
  rm -f "$list" "$scripts"
}
trap cleanup EXIT
mnt=$(bah mount "$ctr")
cp -a "$rootfs/." "$mnt/"
dest=$mnt/opt/venv/lib/python3.11/site-packages
tar -C "$site" --null -T "$list" -cf - | tar -C "$dest" -xf -
# Build requirements of the project that the venv's versions do not meet (its setuptools may predate
# pyproject's `setuptools>=77`): installed from wheels, downloaded once with the venv's pip (PyPI, the
# ordinary client) into $FTO_CACHE/images/wheels, so the Dockerfile's `pip install .` needs no network.
wheels=$FTO_CACHE/images/wheels
while IFS= read -r req; do
  [ -n "$req" ] || continue
  "$venv/bin/python" -m pip download -q --only-binary :all: --no-deps --no-index --find-links "$wheels" -d "$wheels" "$req" 2>/dev/null ||
    "$venv/bin/python" -m pip download -q --only-binary :all: --no-deps -d "$wheels" "$req"
  "$venv/bin/python" -m pip install -q --no-deps --no-index --find-links "$wheels" --no-compile --target "$dest" "$req"
done < <("$venv/bin/python" "$here/venv_closure.py" unmet-build-requires --site "$site" --pyproject "$repo/pyproject.toml")
# console scripts (torchrun, accelerate, uvicorn...): their shebang named the source venv's python
while IFS= read -r -d '' name; do
  src=$venv/bin/$name
  [ -f "$src" ] || continue
  sed '1s|^#!.*/python[0-9.]*$|#!/opt/venv/bin/python|' "$src" >"$mnt/opt/venv/bin/$name"
  chmod 755 "$mnt/opt/venv/bin/$name"
done <"$scripts"

# Bytecode: the venv's __pycache__ is not copied (it is a cache of the venv's paths, and holds every module
# pip ever compiled: ~0.6 GB). But pods run as a non-root user on a root-owned (often read-only) site-packages,
# so without any .pyc every pod start would compile torch+transformers in memory again: ~40 s instead of ~8 s
# on 2 cores. So the modules a pod really imports are imported once here, as root, which writes their .pyc.
if [ -n "$warm" ]; then
  # shellcheck disable=SC2086
  bah run --network none "$ctr" -- /opt/venv/bin/python -c '
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:  # a warm-up, not a check: a missing optional module only costs start time
        print(f"base.sh: warm-up import of {name} failed: {exc!r}", file=sys.stderr)
' $warm  # word splitting wanted: one argument per module
  # what the imports left besides bytecode (matplotlib's font cache in root's HOME, temp files)
  rm -rf "$mnt"/root/.cache "$mnt"/root/.config "$mnt"/tmp/* "$mnt"/tmp/.[!.]* 2>/dev/null || true
fi

# PIP_NO_INDEX: pip in a build on this base never reaches a registry; a missing dependency fails the build
# instead of being fetched. PIP_NO_BUILD_ISOLATION=0 (pip's inverted spelling of --no-build-isolation):
# `pip install .` uses the setuptools already here instead of downloading one into an isolated env.
bah config \
  --env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env VIRTUAL_ENV=/opt/venv --env LANG=C.UTF-8 \
  --env PIP_NO_INDEX=1 --env PIP_NO_BUILD_ISOLATION=0 \
  --cmd python \
  --label org.opencontainers.image.description="finetune-operator local base ($extras): Debian $(cat "$rootfs/etc/debian_version") + project venv" \
  "$ctr"
bah umount "$ctr" >/dev/null
bah commit --quiet --rm "$ctr" "$image" >/dev/null
trap 'rm -f "$list" "$scripts"' EXIT
