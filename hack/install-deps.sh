#!/usr/bin/env bash
# Installs what a fresh machine lacks for the build and the tests: Debian packages and a Go toolchain check.
# Idempotent and quick when everything is present.
set -euo pipefail
need=()
for pair in curl:curl openssl:openssl envsubst:gettext-base flock:util-linux git:git setsid:util-linux \
    shellcheck:shellcheck zstd:zstd; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# vLLM's CPU build outside its image (bench/serving.py, from hack/venv-vllm.sh's venv): libnuma to start,
# tcmalloc as its image preloads it
for pair in libnuma.so.1:libnuma1 libtcmalloc_minimal.so.4:libtcmalloc-minimal4; do
  [ -e "/usr/lib/x86_64-linux-gnu/${pair%%:*}" ] || need+=("${pair#*:}")
done
# the real node (containerd + kubelet); FTO_REAL_NODE=0 skips it
if [ "${FTO_REAL_NODE:-1}" = 1 ]; then
  for pair in containerd:containerd runc:runc socat:socat iptables:iptables gcc:gcc busybox:busybox-static \
      /usr/lib/cni/bridge:containernetworking-plugins /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev; do
    tool=${pair%%:*}
    if [[ $tool == /* ]]; then [ -e "$tool" ] && continue; else command -v "$tool" >/dev/null 2>&1 && continue; fi
    need+=("${pair#*:}")
  done
fi
if ((${#need[@]})); then
  echo "[install-deps] apt-get install ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v go >/dev/null 2>&1; then
  echo "[install-deps] installing Go from Debian" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
fi
go_minor=$(go env GOVERSION | sed -E 's/go1\.([0-9]+).*/\1/')
if ((go_minor < 24)); then
  echo "[install-deps] Go $(go env GOVERSION) is older than 1.24, which Kubernetes 1.34 needs" >&2
  exit 1
fi
