#!/usr/bin/env bash
# Creates (once) the olah virtualenv $FTO_OLAH_VENV (default $FTO_CACHE/venv-olah): olah is a Hub-compatible
# server that, run offline, serves local git repositories through the Hugging Face Hub's HTTP API; the Hub
# source tests (tests/trainer/test_hub_sources.py) start it. Its own venv, because it pulls newer packages than
# the project's venv pins. Keyed by hack/olah/constraints.txt (and this script): a warm run is one hash and a test.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
venv=${FTO_OLAH_VENV:-$cache/venv-olah}
constraints=$repo/hack/olah/constraints.txt
stamp="$venv/.fto-olah-$(cat "$constraints" "$0" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then echo "$venv"; exit 0; fi
mkdir -p "$cache/locks"
exec 9>"$cache/locks/venv-olah.lock"
flock -n 9 || { echo "venv-olah.sh: waiting for another install of $venv" >&2; flock 9; }
if [ -f "$stamp" ]; then echo "$venv"; exit 0; fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -c "$constraints" "$(grep -E '^olah==' "$constraints")"
rm -f "$venv"/.fto-olah-*
touch "$stamp"
echo "$venv"
