#!/usr/bin/env bash
# The GPU check for a lent GPU (an H200 within 10 minutes): QLoRA, LoRA and full fine-tune steps of a
# ~1.2B Llama (random weights, no hub) through the trainer's own code, printing one JSON line with tokens/s,
# MFU against the GPU's bf16 peak (finetune_trainer.memory.gpus) and peak memory against the memory plan's
# estimate. The formula and the rest: bench/gpu_check.py. `--tiny` runs a tiny shape on CPU in seconds and
# prints the same JSON (MFU null): tests/trainer/test_gpu_check.py runs it in CI.
# Issue #30's paths run as variants of the same methods: attention record by record, compiled decoder layers,
# Liger kernels where the optional liger-kernel package is installed (bf16, fused AdamW and flash-attention
# varlen are the eager run's).
# Runs stop being started after --budget-s (540). --dry-run prints the plan without torch.
#   bench/gpu_check.sh [--tiny] [--steps N] [--seq S] [--batch B] [--methods qlora,lora,full]
#                      [--variants eager,records,compile,liger] [--variant-methods lora,full] [--budget-s S] [--dry-run]
# PYTHON picks the interpreter (default: the project venv if present, else python3); it needs the trainer's
# packages (torch, transformers, peft, pydantic; bitsandbytes for QLoRA on CUDA).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="${FTO_CACHE:-$HOME/.cache/finetune-operator}/venv/bin/python"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$venv" ]]; then PYTHON=$venv; else PYTHON=python3; fi
fi
export PYTHONPATH="$here/../trainer-image${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" "$here/gpu_check.py" "$@"
