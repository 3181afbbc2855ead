#!/usr/bin/env bash
# Creates (once) the project's virtual environment outside the repo and installs the project into it.
# Keyed by pyproject.toml's hash: a warm run with unchanged dependencies costs one `pip` no-op check.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
venv="$cache/venv"
stamp="$venv/.fto-deps-$(sha256sum "$repo/pyproject.toml" | cut -c1-16)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if [ ! -f "$stamp" ]; then
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e "${repo}[dev]"
  rm -f "$venv"/.fto-deps-*
  touch "$stamp"
else
  # the editable install points at whichever clone ran last; re-point it without touching dependencies
  "$venv/bin/pip" install -q --no-deps -e "$repo"
fi
echo "$venv"
