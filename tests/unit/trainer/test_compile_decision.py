"""When the trainer compiles its decoder layers (`compiling.decide`) and how FTO_TORCH_COMPILE overrides it.

The automatic rule compiles only what was measured to pay: SFT on CPU, no gradient checkpointing, no
sharding, at least `MIN_STEPS` steps; `on` where compiling cannot apply is refused naming why, and a value
that is not auto, on or off is refused naming the variable.
"""

from __future__ import annotations

from typing import Any

import pytest
from finetune_trainer.core.errors import ConfigInvalid
from finetune_trainer.training import compiling

CPU_SFT: dict[str, Any] = {
    "cuda": False, "causal_lm": True, "method": "lora", "objective": "sft", "sharded": False,
    "checkpointing": False, "layers": 30, "steps": compiling.MIN_STEPS,
}  # fmt: skip


def test_auto_compiles_a_long_cpu_sft_run() -> None:
    assert compiling.decide("auto", **CPU_SFT) == (True, f"auto: CPU, {compiling.MIN_STEPS} steps")
    assert compiling.decide("auto", **{**CPU_SFT, "method": "full"})[0]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"cuda": True}, "not measured on a GPU yet"),
        ({"objective": "dpo"}, "objective dpo: not measured"),
        ({"checkpointing": True}, "gradient checkpointing: not measured"),
        ({"steps": compiling.MIN_STEPS - 1}, "fewer than"),
        ({"sharded": True}, "FSDP sharding"),
        ({"method": "qlora"}, "QLoRA"),
        ({"causal_lm": False}, "not a causal language model"),
        ({"layers": 0}, "no decoder layers"),
    ],
)
def test_auto_stays_eager_and_says_why(change: dict[str, Any], reason: str) -> None:
    on, why = compiling.decide("auto", **{**CPU_SFT, **change})
    assert not on and why.startswith("auto: ") and reason in why


def test_on_forces_what_auto_would_not_and_off_always_wins() -> None:
    assert compiling.decide("on", **{**CPU_SFT, "cuda": True, "steps": 1, "objective": "dpo"}) == (
        True,
        "FTO_TORCH_COMPILE=on",
    )
    assert compiling.decide("off", **CPU_SFT) == (False, "FTO_TORCH_COMPILE=off")


def test_on_is_refused_where_compiling_cannot_apply() -> None:
    with pytest.raises(ConfigInvalid, match=r"FTO_TORCH_COMPILE=on: .*QLoRA"):
        compiling.decide("on", **{**CPU_SFT, "method": "qlora"})


def test_the_setting_is_read_and_bad_values_are_refused_by_name() -> None:
    assert compiling.setting({}) == "auto"
    assert compiling.setting({"FTO_TORCH_COMPILE": " On "}) == "on"
    with pytest.raises(ConfigInvalid, match=r"FTO_TORCH_COMPILE='yes': must be one of auto, on, off"):
        compiling.setting({"FTO_TORCH_COMPILE": "yes"})
