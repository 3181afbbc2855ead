"""bench/gpu_check.sh --tiny: the GPU check's own script on CPU, so the run on a lent GPU is not its first.

It trains LoRA and full fine-tune steps of a tiny Llama through the trainer's code and prints the JSON the
GPU run prints; QLoRA is skipped with the reason (no CUDA), MFU is null (no GPU peak to compare with). The
issue #30 variants run too where a CPU can: LoRA with its decoder layers compiled (it must report them
compiled), attention record by record (forced; on CPU the trainer's own choice too), Liger skipped for want of
CUDA. `--dry-run` prints the plan without torch (a quick test).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_prints_the_plan_and_refuses_unknown_names() -> None:
    script = str(ROOT / "bench" / "gpu_check.sh")
    done = subprocess.run([script, "--dry-run"], capture_output=True, text=True, timeout=120, check=True)
    plan = json.loads(done.stdout.strip().splitlines()[-1])
    assert plan["runs"] == ["qlora/eager", "lora/eager", "full/eager", "lora/records", "full/records",
                            "lora/compile", "full/compile", "lora/liger", "full/liger"]  # fmt: skip
    assert plan["budget_s"] == 540
    refused = subprocess.run([script, "--dry-run", "--variants", "eager,fast"], capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
    assert refused.returncode != 0 and "--variants: unknown variant 'fast'" in refused.stderr


@pytest.mark.slow
def test_the_gpu_check_runs_in_tiny_mode_and_prints_one_json_line() -> None:
    done = subprocess.run(
        [str(ROOT / "bench" / "gpu_check.sh"), "--tiny", "--steps", "3", "--warmup", "1", "--variant-methods", "lora"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["mode"] == "tiny" and report["device"] == "cpu" and report["peak_tflops"] is None
    assert {"model", "shape", "batch", "seq", "mfu_formula", "methods", "vllm", "load_average", "seconds"} <= set(
        report
    )
    assert "CUDA" in report["methods"]["qlora"]["skipped"]
    for method in ("lora", "full"):
        result = report["methods"][method]
        assert result["tokens_per_second"] > 0 and result["mfu"] is None, result
        assert result["timed_steps"] == 2 and result["precision"] == "fp32"
        assert result["flops_per_token"] > 6 * 64 * 128  # at least the MLP's matmuls of one layer
        assert result["peak_memory_bytes"] > 0 and result["plan_estimate_bytes"] > 0
        # the right units and order only: the tiny model's planned tensors are a few MiB (3 MiB for LoRA since
        # the CPU plan has no T x T mask term, record-by-record attention) beside torch's first-use buffers
        # (tens of MiB); the plan's accuracy is tests/trainer/test_memory_plan_measured.py's (within 25%)
        assert 0.1 < result["peak_vs_plan"] < 30, result
    assert report["methods"]["full"]["flops_per_token"] > report["methods"]["lora"]["flops_per_token"]
    eager, compiled = report["methods"]["lora"], report["methods"]["lora+compile"]
    assert eager["compiled"] is False and eager["optimizer"] == "adamw_torch_fused"
    assert compiled["compiled"] is True and compiled["tokens_per_second"] > 0, compiled  # the layers really compiled
    assert "CUDA" in report["methods"]["lora+liger"]["skipped"]
    # record-by-record attention: the trainer's own choice on CPU, and the variant that forces it on a GPU
    records = report["methods"]["lora+records"]
    assert eager["attention"] == records["attention"] == "fto_record_sdpa" and records["tokens_per_second"] > 0
    assert "full+compile" not in report["methods"]  # --variant-methods lora
    assert report["methods"]["full"]["trainable_parameters"] > report["methods"]["lora"]["trainable_parameters"]
