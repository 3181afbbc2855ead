# shellcheck shell=bash disable=SC2154
# The local cluster's real node: containerd + runc + CNI bridge + kubelet, sourced by hack/cluster.sh.
#
# What it expects from the script that sources it (hack/cluster.sh; checked below, so a missing one fails
# at once with its name instead of as an empty path later):
#   variables  cache state here python pki kube_bin api_port s3_port
#   functions  say start wait_for pid_alive die_component kctl
#
# Pods get addresses on the bridge fto0 (10.88.0.0/16, no masquerade, no forwarding off the bridge: pods
# reach nothing outside this machine). The host services they need are bound to 127.0.0.1, so socat
# forwarders on the bridge's gateway address 10.88.0.1 carry pod traffic to them: S3 (:$s3_port) and the API
# server (:$api_port). There is no kube-proxy; one DNAT rule sends the `kubernetes` Service address
# (10.0.0.1:443), which in-cluster clients use, to the API server forwarder. The kubelet cannot use a loopback
# node IP, so it serves on the gateway address too (the API server calls it there for logs and exec).
: "${cache:?}" "${state:?}" "${here:?}" "${python:?}" "${pki:?}" "${kube_bin:?}" "${api_port:?}" "${s3_port:?}"
for needed in say start wait_for pid_alive die_component kctl; do
  declare -F "$needed" >/dev/null || { echo "hack/node.sh: source it after defining $needed" >&2; exit 1; }
done
node_name=${FTO_NODE_NAME:-fto-node-0}
bridge=fto0
bridge_cidr=10.88.0.0/16
gateway=10.88.0.1
kubelet_port=${FTO_KUBELET_PORT:-26250}
kubelet_healthz_port=$((kubelet_port + 1))
containerd_root="$cache/containerd"   # images survive cluster-down: imports are the slow part
pause_ref=finetune.local/pause:3.10
busybox_ref=finetune.local/busybox:1.35

ctr_k8s() { ctr --address "$state/containerd/containerd.sock" --namespace k8s.io "$@"; }

# ref -> 0 when the node's containerd has that image. The list is captured first: `ctr ... | grep -q` would
# let grep exit on the first match while ctr still writes, and pipefail would turn its SIGPIPE into a failure.
node_has_image() { local refs; refs=$(ctr_k8s images ls -q); grep -qxF -- "$1" <<<"$refs"; }

node_enabled() { [ "${FTO_REAL_NODE:-1}" = 1 ]; }

node_network() {
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
  fi
  local addresses; addresses=$(ip addr show dev "$bridge")
  [[ $addresses == *"inet $gateway/"* ]] || ip addr add "$gateway/16" dev "$bridge"
  ip link set "$bridge" up
  sysctl -qw net.ipv4.ip_forward=1
  # pods may talk to each other and to the host's forwarders, never off the machine
  iptables -C FORWARD -i "$bridge" ! -o "$bridge" -j DROP 2>/dev/null || \
    iptables -I FORWARD -i "$bridge" ! -o "$bridge" -j DROP
  iptables -t nat -C PREROUTING -i "$bridge" -d 10.0.0.1 -p tcp --dport 443 -j DNAT \
    --to-destination "$gateway:$api_port" 2>/dev/null || \
    iptables -t nat -A PREROUTING -i "$bridge" -d 10.0.0.1 -p tcp --dport 443 -j DNAT \
      --to-destination "$gateway:$api_port"
  mkdir -p "$state/cni/net.d" "$state/cni/ipam"
  cat > "$state/cni/net.d/10-fto.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "fto", "plugins": [
  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$state/cni/ipam",
            "ranges": [[{"subnet": "$bridge_cidr", "gateway": "$gateway"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
JSON
}

node_containerd() {
  mkdir -p "$state/containerd" "$containerd_root"
  cat > "$state/containerd/config.toml" <<TOML
version = 2
root = "$containerd_root"
state = "$state/containerd/state"
[grpc]
  address = "$state/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$state/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  # root in this VM lacks CAP_SYS_RESOURCE, so the kubelet's oom_score_adj -998 for sandboxes would make runc
  # fail ("can't get final child's PID from pipe"); clamp scores to containerd's own instead
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"
TOML
  start containerd "$(command -v containerd)" --config "$state/containerd/config.toml"
  wait_for containerd 60 ctr --address "$state/containerd/containerd.sock" version
}

node_pause_image() {
  node_has_image "$pause_ref" && return 0
  local build="$cache/build/pause"
  mkdir -p "$build"
  gcc -static -O2 -o "$build/pause" "$here/node/pause.c"
  "$python" "$here/node/oci_archive.py" --output "$build/pause.tar" --ref "$pause_ref" \
    --file "$build/pause:/pause" --entrypoint /pause
  ctr_k8s images import "$build/pause.tar" >/dev/null
}

node_busybox_image() {  # a tiny image with a shell, wget and nc for the node's own tests
  node_has_image "$busybox_ref" && return 0
  local build="$cache/build/busybox"
  mkdir -p "$build"
  "$python" "$here/node/oci_archive.py" --output "$build/busybox.tar" --ref "$busybox_ref" \
    --file /bin/busybox:/bin/busybox --entrypoint /bin/busybox
  ctr_k8s images import "$build/busybox.tar" >/dev/null
}

node_forwarders() {
  start fwd-s3 "$(command -v socat)" "TCP-LISTEN:$s3_port,bind=$gateway,reuseaddr,fork" "TCP:127.0.0.1:$s3_port"
  start fwd-api "$(command -v socat)" "TCP-LISTEN:$api_port,bind=$gateway,reuseaddr,fork" \
    "TCP:127.0.0.1:$api_port"
}

node_kubelet() {
  mkdir -p "$state/kubelet"
  cat > "$state/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $gateway
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$pki/kubelet-serving-$node_name.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving-$node_name.key"
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$state/containerd/containerd.sock
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "200Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
resolvConf: /etc/resolv.conf
registerNode: true
maxPods: 30
YAML
  start kubelet "$kube_bin/kubelet" --config "$state/kubelet/config.yaml" \
    --kubeconfig "$state/kubelet-$node_name.kubeconfig" --hostname-override "$node_name" \
    --node-ip "$gateway" --root-dir "$state/kubelet/root" --cert-dir "$state/kubelet/pki" \
    --node-labels "finetune.dev/real-node=true" --v 1
  wait_for kubelet 120 kctl wait --for=condition=Ready "node/$node_name" --timeout=5s
}

node_up() {
  node_enabled || return 0
  node_network
  node_containerd
  node_pause_image
  node_busybox_image
  node_forwarders
  node_kubelet
  echo "FTO_NODE_NAME=$node_name" >> "$state/env.node"
  echo "FTO_POD_S3_ENDPOINT=http://$gateway:$s3_port" >> "$state/env.node"
}

node_down() {
  # Only the cluster that set the node up tears it down: a second cluster (FTO_REAL_NODE=0) shares the bridge
  # name and iptables rules with the first one and must leave them alone. node_network writes the CNI config.
  [ -f "$state/cni/net.d/10-fto.conflist" ] || return 0
  if pid_alive kubelet; then stop_component kubelet; fi
  if pid_alive containerd; then
    # stop every pod container the kubelet left, so nothing keeps running after the cluster is gone
    local task
    for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s KILL "$task" >/dev/null 2>&1 || true; done
    sleep 1
    for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$task" >/dev/null 2>&1 || true; done
    for task in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$task" >/dev/null 2>&1 || true; done
    stop_component containerd
  fi
  for name in fwd-s3 fwd-api; do pid_alive "$name" && stop_component "$name"; done
  # kubelet mounts (emptyDir tmpfs, projected tokens) live under the state folder
  grep " $state/" /proc/mounts | awk '{print $2}' | sort -r | while read -r mount_point; do
    umount -l "$mount_point" 2>/dev/null || true
  done
  iptables -D FORWARD -i "$bridge" ! -o "$bridge" -j DROP 2>/dev/null || true
  iptables -t nat -D PREROUTING -i "$bridge" -d 10.0.0.1 -p tcp --dport 443 -j DNAT \
    --to-destination "$gateway:$api_port" 2>/dev/null || true
  ip link del "$bridge" 2>/dev/null || true
}
