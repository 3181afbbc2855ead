# Developer entry points. Everything heavy is cached under $(FTO_CACHE), outside the repo.
SHELL := /bin/bash
export FTO_CACHE ?= $(HOME)/.cache/finetune-operator
VENV := $(FTO_CACHE)/venv
PY := $(VENV)/bin/python
STATE := $(FTO_CACHE)/state
# tools (kubectl, helm) and the venv come first on PATH for tests and scripts
export PATH := $(FTO_CACHE)/bin/tools:$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PYTEST := $(PY) -m pytest

# Each long step runs through hack/step.sh: its log is kept in $(FTO_CACHE)/logs/, and a failure names the step,
# its exit status and the log's last lines.
.PHONY: deps promtool venv venv-vllm venv-olah cluster-up cluster-down cluster-status cluster-kubeconfig lint test test-unit images demo bench \
	helm-sync-crd tools

# Debian packages and the Go toolchain a fresh machine lacks (idempotent: seconds when present).
deps:
	@hack/step.sh deps hack/install-deps.sh

venv:
	@hack/step.sh venv hack/venv.sh >/dev/null

# vLLM's CPU build in a venv of its own (pinned by vllm-image/constraints.txt): the vLLM image and the serving
# benchmark come from it.
venv-vllm:
	@hack/step.sh venv-vllm hack/venv-vllm.sh >/dev/null

# olah, a Hub-compatible server run offline over local git repos, in a venv of its own (hack/olah/constraints.txt):
# the hf:// source tests start it (docs/hub.md).
venv-olah:
	@hack/step.sh venv-olah hack/venv-olah.sh >/dev/null

cluster-up: venv
	@hack/step.sh cluster-up hack/cluster.sh up

cluster-down:
	hack/cluster.sh down

cluster-status:
	@hack/cluster.sh status

cluster-kubeconfig:
	@hack/cluster.sh kubeconfig

lint: deps venv
	shellcheck -x hack/*.sh hack/*/*.sh .ci/run
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# kubectl and helm into $(FTO_CACHE)/bin/tools (cluster-up installs them too)
tools:
	@hack/step.sh tools hack/install-tools.sh

# The tier that needs no cluster and no S3 server: pure logic, seconds. helm: the settings test renders the
# chart (`helm template`) to check it against the operator's declared settings.
test-unit: venv tools
	$(PYTEST) tests/unit -m "not cluster and not s3 and not e2e"

# Everything: lint, unit, the cluster tier (real API server + kwok), trainer and server on a real S3 server,
# and e2e on the real node, last. What only some tests need is made by those tests' fixtures, cached, and waits
# for a build already running (CI starts them in the background): the images (e2e), the vLLM venv (the vLLM
# image and tests), promtool (the chart's alerts) and Kueue (its integration test).
test: deps venv lint cluster-up
	$(PYTEST) tests --durations=25

# promtool (the chart's alert tests), built from Go modules once and cached
promtool:
	@hack/step.sh promtool hack/build-binaries.sh promtool

# Trainer, operator and vLLM CPU images, built offline on a local Debian base; cached by content hash.
images: venv venv-vllm
	@hack/step.sh images hack/build-images.sh

# The chart ships byte-identical copies of crds/*.yaml (a test checks them); crds/finetunesweep.yaml is
# regenerated first (hack/gen_sweep_crd.py: its template is the FineTuneJob spec schema).
helm-sync-crd:
	helm/sync-crd.sh

# README command 1: the quickstart end to end on the local cluster (train, evaluate, gate, publish, query).
demo:
	hack/demo.sh

bench: venv venv-vllm cluster-up
	$(PY) bench/trainer_throughput.py
	$(PY) bench/serving.py
	$(PY) bench/operator_scale.py
