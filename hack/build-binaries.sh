#!/usr/bin/env bash
# Builds the local cluster's binaries from Go modules, cached outside the repo keyed by version.
#
# Why a wrapper module: `go install k8s.io/kubernetes/cmd/...@v` refuses modules with `replace`
# directives, and k8s.io/kubernetes replaces every staging module with ./staging. A wrapper that
# requires k8s.io/kubernetes and pins each staging module to the matching v0.X.Y builds cleanly.
# etcd gets its own wrapper so its dependency versions never mix with Kubernetes'.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
bin="$cache/bin"
mkdir -p "$bin" "$cache/src"
export GOFLAGS=${GOFLAGS:-} GOTOOLCHAIN=local
# A build cache of this run's own, removed at exit: the binaries are what is kept (by version), and Go's cache of
# these builds is ~7 GB that no later run reads (a new version compiles new sources). Its own per run, since CI
# runs two of these scripts at once.
GOCACHE=$(mktemp -d "${TMPDIR:-/tmp}/fto-go-build.XXXXXX")
export GOCACHE
trap 'rm -rf "$GOCACHE"' EXIT
jobs=${GO_BUILD_JOBS:-2}

log() { printf '[build-binaries] %s\n' "$*" >&2; }

build_kubernetes() {
  local want=("kube-apiserver" "kube-controller-manager" "kube-scheduler" "kubelet")
  local dir="$bin/kubernetes-$KUBE_VERSION" missing=()
  for c in "${want[@]}"; do [ -x "$dir/$c" ] || missing+=("$c"); done
  ((${#missing[@]})) || { log "kubernetes $KUBE_VERSION cached in $dir"; return 0; }
  local mod="$cache/src/kubernetes-$KUBE_VERSION"
  mkdir -p "$mod" "$dir"
  local staging_ver="v0.${KUBE_VERSION#v1.}"
  {
    echo "module local/kubebuild"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    for m in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider \
      cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api \
      cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms \
      kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics \
      mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller; do
      echo "replace k8s.io/$m => k8s.io/$m $staging_ver"
    done
  } > "$mod/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for c in "${want[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
    echo ")"
  } > "$mod/tools.go"
  local pkgv="k8s.io/component-base/version" cgv="k8s.io/client-go/pkg/version"
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in "$pkgv" "$cgv"; do
    ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$mod" && go mod tidy >&2)
  for c in "${missing[@]}"; do
    log "building $c $KUBE_VERSION (cold builds take minutes on 2 cores)"
    (cd "$mod" && go build -p "$jobs" -ldflags "$ld" -o "$dir/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$dir/$c.tmp" "$dir/$c"
  done
}

build_etcd() {
  local dir="$bin/etcd-$ETCD_VERSION"
  [ -x "$dir/etcd" ] && { log "etcd $ETCD_VERSION cached"; return 0; }
  local mod="$cache/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod" "$dir"
  printf 'module local/etcdbuild\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$mod/tools.go"
  (cd "$mod" && go mod tidy >&2)
  log "building etcd $ETCD_VERSION"
  (cd "$mod" && go build -p "$jobs" -ldflags "-s -w" -o "$dir/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$dir/etcd.tmp" "$dir/etcd"
}

build_kwok() {
  local dir="$bin/kwok-$KWOK_VERSION"
  [ -x "$dir/kwok" ] && { log "kwok $KWOK_VERSION cached"; return 0; }
  mkdir -p "$dir"
  log "building kwok $KWOK_VERSION"
  GOBIN="$dir" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_kueue() {  # the Kueue manager, run by the Kueue integration test as a local process
  local dir="$cache/kueue/$KUEUE_VERSION"
  [ -x "$dir/kueue" ] && { log "kueue $KUEUE_VERSION cached"; return 0; }
  mkdir -p "$dir"
  log "building kueue $KUEUE_VERSION (about 4 minutes cold on 2 cores, plus its modules' download)"
  GOBIN="$dir" go install -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
}

build_promtool() {  # Prometheus' rule checker and rule unit-test runner, for the chart's alerts (tests/helm)
  local dir="$bin/prometheus-$PROMETHEUS_VERSION"
  if [ ! -x "$dir/promtool" ]; then
    mkdir -p "$dir"
    log "building promtool $PROMETHEUS_VERSION (several minutes cold on 2 cores)"
    GOBIN="$dir" go install -ldflags "-s -w" "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  else
    log "promtool $PROMETHEUS_VERSION cached"
  fi
  mkdir -p "$bin/tools"
  ln -sfn "$dir/promtool" "$bin/tools/promtool"  # beside kubectl and helm, on the tests' PATH
}

# locked: one build of a target at a time. CI builds Kueue and promtool in the background while the tests run,
# and a test that needs one calls this script too: it waits for that build and then finds the binary cached.
locked() {
  mkdir -p "$cache/locks"
  exec {lock}>"$cache/locks/build-$1.lock"
  flock -n "$lock" || { log "$1: waiting for another build of it"; flock "$lock"; }
  "build_$1"
  exec {lock}>&-
}

targets=("$@")
((${#targets[@]})) || targets=(etcd kwok kubernetes kueue promtool)
for t in "${targets[@]}"; do locked "$t"; done
