#!/usr/bin/env bash
# Kubeflow Trainer v2's controller manager and the JobSet controller, built from their Go modules into the cache,
# for bench/kubeflow_compare.py (our operator against the controller users would pick instead). Not part of CI:
# only that benchmark, run by hand, needs them.
#
#   hack/kubeflow-trainer.sh build   # build both (minutes cold on 2 cores; instant when the stamp is there)
#   hack/kubeflow-trainer.sh dir     # print the folder (binaries, crds/, stamp); exit 1 when not built
#
# The folder, $FTO_CACHE/kubeflow/trainer-<v>-jobset-<v>/, holds trainer-controller-manager, jobset, the CRDs
# of both (copied from the module sources: TrainJob, TrainingRuntime, ClusterTrainingRuntime, JobSet) and a
# stamp written last: a folder without the stamp is an interrupted build and is built again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
dir="$cache/kubeflow/trainer-$KUBEFLOW_TRAINER_VERSION-jobset-$JOBSET_VERSION"
trainer_module=github.com/kubeflow/trainer/v2
jobset_module=sigs.k8s.io/jobset
jobs=${GO_BUILD_JOBS:-2}

log() { printf '[kubeflow-trainer] %s\n' "$*" >&2; }

built() { [ -f "$dir/stamp" ] && [ -x "$dir/trainer-controller-manager" ] && [ -x "$dir/jobset" ]; }

module_dir() {  # module@version -> its source folder in the module cache (downloaded if missing)
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

build_main() {  # binary module version package extra-ldflags: one main package, against its module's go.mod
  # Through a wrapper module that requires only that module, not `go install module@version`: go install also
  # reads the module's version list (for deprecation notices), and the module proxy refuses JobSet's list
  # (403) while serving its exact versions. The wrapper's graph is the module's own, so the build is the same.
  local binary=$1 module=$2 version=$3 package=$4 ldflags=$5
  local wrapper="$cache/src/kubeflow-$binary-$version"
  mkdir -p "$wrapper"
  printf 'module local/%sbuild\n\ngo 1.25.0\n\nrequire %s %s\n' "$binary" "$module" "$version" > "$wrapper/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" > "$wrapper/tools.go"
  (cd "$wrapper" && go mod tidy >&2)
  (cd "$wrapper" && go build -p "$jobs" -ldflags "-s -w $ldflags" -o "$dir/$binary.tmp" "$package")
  mv "$dir/$binary.tmp" "$dir/$binary"
}

build() {
  export GOFLAGS=${GOFLAGS:-} GOTOOLCHAIN=local
  mkdir -p "$cache/locks"
  exec {lock}>"$cache/locks/build-kubeflow.lock"
  flock -n "$lock" || { log "waiting for another build"; flock "$lock"; }
  if built; then log "cached in $dir"; return 0; fi
  # Go's build cache for this run only (as hack/build-binaries.sh): the binaries are what is kept
  GOCACHE=$(mktemp -d "${TMPDIR:-/tmp}/fto-go-build.XXXXXX")
  export GOCACHE
  trap 'rm -rf "$GOCACHE"' EXIT
  rm -rf "$dir"
  mkdir -p "$dir/crds"
  log "building the JobSet controller $JOBSET_VERSION"
  # The version goes into its User-Agent (jobset/<version> ...), which the benchmark reads in the audit log.
  build_main jobset "$jobset_module" "$JOBSET_VERSION" "$jobset_module" \
    "-X $jobset_module/pkg/version.GitVersion=$JOBSET_VERSION"
  log "building Kubeflow Trainer's controller manager $KUBEFLOW_TRAINER_VERSION"
  build_main trainer-controller-manager "$trainer_module" "$KUBEFLOW_TRAINER_VERSION" \
    "$trainer_module/cmd/trainer-controller-manager" ""
  local trainer_src jobset_src
  trainer_src=$(module_dir "$trainer_module@$KUBEFLOW_TRAINER_VERSION")
  jobset_src=$(module_dir "$jobset_module@$JOBSET_VERSION")
  if [ ! -d "$trainer_src" ] || [ ! -d "$jobset_src" ]; then log "ERROR: no module source folder"; exit 1; fi
  # the bare CRDs: JobSet's kustomize patches only add a conversion webhook that one served version never needs
  install -m 0644 "$trainer_src"/manifests/base/crds/trainer.kubeflow.org_*.yaml "$dir/crds/"
  install -m 0644 "$jobset_src/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml" "$dir/crds/"
  {
    echo "KUBEFLOW_TRAINER_VERSION=$KUBEFLOW_TRAINER_VERSION"
    echo "JOBSET_VERSION=$JOBSET_VERSION"
    echo "GO_VERSION=$(go env GOVERSION)"
    echo "BUILT_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } > "$dir/stamp.tmp"
  mv "$dir/stamp.tmp" "$dir/stamp"
  log "built in $dir"
}

case "${1:-}" in
  build) build ;;
  dir)
    if built; then echo "$dir"
    else log "not built: run hack/kubeflow-trainer.sh build (minutes, cold)"; exit 1; fi ;;
  *) echo "usage: $0 build|dir" >&2; exit 2 ;;
esac
