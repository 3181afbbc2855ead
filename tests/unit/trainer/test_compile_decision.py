"""When the trainer compiles its decoder layers (`compiling.decide`) and how FTO_TORCH_COMPILE overrides it.

Nothing has been measured to pay yet (docs/benchmarks.md), so `auto` stays eager and says why (with what a
measured rule would weigh); `on` opts in and is refused, naming why, where compiling cannot apply; a value
that is not auto, on or off is refused naming the variable.
"""

from __future__ import annotations

from typing import Any

import pytest
from finetune_trainer.core.errors import ConfigInvalid
from finetune_trainer.training import compiling

CPU_SFT: dict[str, Any] = {
    "cuda": False, "causal_lm": True, "method": "lora", "objective": "sft", "sharded": False,
    "checkpointing": False, "layers": 30, "steps": 500,
}  # fmt: skip


def test_auto_stays_eager_and_says_it_was_not_measured_to_pay() -> None:
    on, why = compiling.decide("auto", **CPU_SFT)
    assert not on and why.startswith("auto: not measured to pay") and "(CPU, objective sft" in why
    on, why = compiling.decide("auto", **{**CPU_SFT, "cuda": True})
    assert not on and "GPU: not measured" in why and "(GPU," in why


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sharded": True}, "FSDP sharding"),
        ({"method": "qlora"}, "QLoRA"),
        ({"causal_lm": False}, "not a causal language model"),
        ({"layers": 0}, "no decoder layers"),
    ],
)
def test_what_compiling_cannot_apply_to_is_named(change: dict[str, Any], reason: str) -> None:
    on, why = compiling.decide("auto", **{**CPU_SFT, **change})
    assert not on and reason in why
    with pytest.raises(ConfigInvalid, match=rf"FTO_TORCH_COMPILE=on: torch.compile does not apply .*{reason}"):
        compiling.decide("on", **{**CPU_SFT, **change})


def test_on_opts_in_and_off_always_wins() -> None:
    forced = compiling.decide("on", **{**CPU_SFT, "cuda": True, "steps": 1, "objective": "dpo"})
    assert forced == (True, "FTO_TORCH_COMPILE=on")
    assert compiling.decide("off", **CPU_SFT) == (False, "FTO_TORCH_COMPILE=off")


def test_the_setting_is_read_and_bad_values_are_refused_by_name() -> None:
    assert compiling.setting({}) == "auto"
    assert compiling.setting({"FTO_TORCH_COMPILE": " On "}) == "on"
    with pytest.raises(ConfigInvalid, match=r"FTO_TORCH_COMPILE='yes': must be one of auto, on, off"):
        compiling.setting({"FTO_TORCH_COMPILE": "yes"})
