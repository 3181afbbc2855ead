"""bench/trainer_throughput.py's summary: medians, ranges, per-round ratios and the spread warning.

Why: the benchmark's verdict (issue #30) rests on this arithmetic; a ratio taken across rounds, or a
warning that never fires, would quote noise as a speed-up again.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def bench() -> Any:
    spec = importlib.util.spec_from_file_location("trainer_throughput", ROOT / "bench" / "trainer_throughput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(number: int, mode: str, speed: float, memory: float = 1000.0) -> dict[str, Any]:
    return {"round": number, "mode": mode, "tokens_per_second": speed, "peak_memory_mib": memory}


def test_ratios_are_per_round_and_warn_when_spread_exceeds_the_claim() -> None:
    module = bench()
    runs = [run(1, "ours", 100), run(1, "trl", 50), run(2, "ours", 40), run(2, "trl", 40), run(3, "ours", 90),
            run(3, "trl", 100, 2000)]  # fmt: skip
    summary = module.summarize(runs, ("ours", "trl"))
    ratio = summary["ratios"]["ours_vs_trl"]["tokens_per_second"]
    assert ratio["values"] == [2.0, 1.0, 0.9] and ratio["median"] == 1.0
    assert (ratio["min"], ratio["max"]) == (0.9, 2.0)
    assert summary["arms"]["ours"]["tokens_per_second"]["median"] == 90
    assert summary["ratios"]["ours_vs_trl"]["peak_memory"]["values"] == [1.0, 1.0, 0.5]
    assert len(summary["warnings"]) == 1 and "0.90..2.00" in summary["warnings"][0]
    assert "**1.00x** (0.90..2.00)" in module.markdown(summary)


def test_a_clear_difference_gives_no_warning_and_one_round_always_warns() -> None:
    module = bench()
    runs = [run(n, mode, speed) for n in (1, 2, 3) for mode, speed in (("ours", 200 + n), ("trl", 100))]
    assert module.summarize(runs, ("ours", "trl"))["warnings"] == []
    single = module.summarize(runs[:2], ("ours", "trl"))
    assert single["warnings"] and "one round" in single["warnings"][0]


def test_a_failed_run_is_reported_and_left_out_of_the_ratios() -> None:
    module = bench()
    runs = [run(1, "ours", 100), {"round": 1, "mode": "trl", "error": "boom"}, run(2, "ours", 100), run(2, "trl", 50)]
    summary = module.summarize(runs, ("ours", "trl"))
    assert summary["arms"]["trl"]["errors"] == ["boom"]
    assert summary["ratios"]["ours_vs_trl"]["tokens_per_second"]["values"] == [2.0]


def test_arm_order_rotates_so_every_arm_runs_first_equally_often() -> None:
    module = bench()
    orders = [module.arm_order(("ours", "hf", "trl"), number) for number in range(1, 7)]
    assert orders[:3] == [["ours", "hf", "trl"], ["hf", "trl", "ours"], ["trl", "ours", "hf"]]
    assert orders[3:] == orders[:3]
    assert sorted(order[0] for order in orders) == ["hf", "hf", "ours", "ours", "trl", "trl"]


def test_run_rounds_runs_each_arm_in_its_own_process_in_rotated_order_and_keeps_failures() -> None:
    module = bench()
    script = "import json, os, sys; mode = sys.argv[1]; sys.exit(3) if mode == 'bad' else print(json.dumps({'pid': os.getpid(), 'tokens_per_second': 1.0}))"  # noqa: E501

    runs = module.run_rounds(("ours", "bad", "trl"), 2, lambda mode: [sys.executable, "-c", script, mode])

    assert [(r["round"], r["mode"], r["position"]) for r in runs] == [
        (1, "ours", 0), (1, "bad", 1), (1, "trl", 2), (2, "bad", 0), (2, "trl", 1), (2, "ours", 2),
    ]  # fmt: skip
    measured = [r for r in runs if "error" not in r]
    assert len({r["pid"] for r in measured}) == 4, "each run is its own process"
    assert all(r["error"] == "exit 3" for r in runs if r["mode"] == "bad")
