#!/usr/bin/env bash
# Copies the one FineTuneJob CRD (crds/finetunejob.yaml, the source of truth) into the Helm chart's crds/.
# Why a copy and not a symlink: `helm package` and OCI pushes do not follow links out of the chart folder.
# tests/helm/test_chart.py fails when the two files differ; run this (or `make helm-sync-crd`) to fix it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# crds/finetunesweep.yaml embeds the FineTuneJob spec schema (as spec.template): regenerate it first.
PYTHONPATH="$repo/operator" "${PYTHON:-${FTO_CACHE:-$HOME/.cache/finetune-operator}/venv/bin/python}" \
  "$repo/hack/gen_sweep_crd.py"
cp "$repo/crds/finetunejob.yaml" "$repo/crds/finetunesweep.yaml" "$repo/crds/modelserver.yaml" \
  "$repo/helm/finetune-operator/crds/"
