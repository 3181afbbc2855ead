"""Preference tuning without a model: the two pair formats, the config's refusals, the DPO loss, the collator.

The formats: a string pair, TRL's conversational pair and OpenAI's DPO record normalise to the same prompt and
replies; each is detected from its fields; a pair whose answers are equal, a missing field, a prompt that ends
with the assistant, or OpenAI tools are refused naming the line. The loss is checked against values worked out
by hand, the collator against the layout `sequence_logps` relies on (one row, positions restarting, the first
label of every sequence masked), and the memory plan against the two sequences a pair puts in a micro-batch.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from finetune_trainer.config import DpoSpec, SimpoSpec, parse_config
from finetune_trainer.core.errors import ConfigInvalid, DatasetInvalid, ModelInvalid
from finetune_trainer.data.formats import FORMATS, detect, normalize
from finetune_trainer.data.formats.base import PreferencePair
from finetune_trainer.data.readers import Record
from finetune_trainer.memory.estimate import Setup, estimate
from finetune_trainer.memory.gpus import GPUS
from finetune_trainer.memory.shapes import model_shape
from finetune_trainer.training.base_adapter import check_metadata
from finetune_trainer.training.preference import (
    PairCollator,
    dpo_loss,
    pair_metrics,
    score_batch,
    sequence_logps,
    simpo_loss,
)

from tests.unit.trainer.test_config import CONTRACT_EXAMPLE
from tests.unit.trainer.test_memory_plan import LLAMA3_8B

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reset my password?"}]
CHOSEN = [{"role": "assistant", "content": "Settings, Security, Reset."}]
REJECTED = [{"role": "assistant", "content": "No."}]


def records(*data: dict[str, Any]) -> list[Record]:
    return [Record(d, f"s3://b/p.jsonl line {i + 1}") for i, d in enumerate(data)]


def pair_of(schema: str, record: dict[str, Any]) -> PreferencePair:
    return PreferencePair.from_example(normalize(records(record), FORMATS[schema], {})[0])


def test_string_trl_and_openai_pairs_normalise_to_the_same_messages() -> None:
    trl = {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}
    openai = {"input": {"messages": PROMPT}, "preferred_output": CHOSEN, "non_preferred_output": REJECTED}
    assert (
        pair_of("preference", trl) == pair_of("openai-preference", openai) == PreferencePair(PROMPT, CHOSEN, REJECTED)
    )
    plain = pair_of("preference", {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."})
    assert plain.prompt == [{"role": "user", "content": "Hi?"}]
    assert plain.chosen == [{"role": "assistant", "content": "Hello!"}]
    assert detect(records(trl, trl), "causal-lm", {}).format.name == "preference"
    assert detect(records(openai, openai), "causal-lm", {}).format.name == "openai-preference"


@pytest.mark.parametrize(
    ("schema", "record", "message"),
    [
        (
            "preference",
            {"prompt": "q", "chosen": "same", "rejected": "same"},
            "line 1: 'chosen' and 'rejected' are the",
        ),
        ("preference", {"prompt": "q", "chosen": "a"}, "line 1: missing field 'rejected'"),
        ("preference", {"prompt": "", "chosen": "a", "rejected": "b"}, "line 1: field 'prompt' is empty"),
        (
            "preference",
            {"prompt": [*PROMPT, *CHOSEN], "chosen": "a", "rejected": "b"},
            "the prompt ends with an assistant message",
        ),
        (
            "preference",
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            "field 'chosen'[0]: role must be assistant, got 'user'",
        ),
        (
            "preference",
            {"prompt": "q", "chosen": [{"role": "assistant", "content": "a", "weight": 1}], "rejected": "b"},
            "unknown key(s) 'weight'",
        ),
        (
            "openai-preference",
            {"input": {"messages": PROMPT, "tools": []}, "preferred_output": CHOSEN, "non_preferred_output": REJECTED},
            "input.tools: tools are not supported for preference tuning yet",
        ),
        (
            "openai-preference",
            {"input": {"messages": PROMPT}, "preferred_output": CHOSEN, "non_preferred_output": CHOSEN},
            "'preferred_output' and 'non_preferred_output' are the same answer",
        ),
    ],
)
def test_bad_pairs_are_refused_naming_the_line(schema: str, record: dict[str, Any], message: str) -> None:
    with pytest.raises(DatasetInvalid, match=r"line 1") as error:
        normalize(records(record), FORMATS[schema], {})
    assert message in str(error.value)


def config(**method: Any) -> dict[str, Any]:
    raw = copy.deepcopy(CONTRACT_EXAMPLE)
    raw["method"] = {"type": "lora", **method}
    return raw


def test_the_config_refuses_what_dpo_cannot_train() -> None:
    raw = config(objective="dpo")
    raw["dataset"]["schema"] = "preference"
    assert parse_config(raw).method.dpo_settings == DpoSpec()
    raw["method"]["objective"] = "simpo"
    assert parse_config(raw).method.preference_settings == SimpoSpec(beta=2.0, gamma=0.5, label_smoothing=0.0)
    cases = [
        (config(objective="dpo"), "chat", "method.objective dpo: needs preference data"),
        (config(), "preference", r"train with method.objective dpo \(or simpo\); set it"),
        (config(dpo={"beta": 0.2}), None, "dpo applies to objective dpo only"),
        (config(objective="dpo", dpo={"lossType": "ipo", "labelSmoothing": 0.1}), None, "sigmoid only"),
        (config(objective="simpo"), "chat", "method.objective simpo: needs preference data"),
        (config(simpo={"gamma": 1.0}), None, "simpo applies to objective simpo only"),
        (config(objective="dpo", simpo={"gamma": 1.0}), None, "simpo applies to objective simpo only"),
        (config(objective="simpo", simpo={"labelSmoothing": 0.5}), None, "method.simpo.labelSmoothing"),
        (config(objective="simpo", simpo={"beta": 0}), None, "method.simpo.beta"),
    ]
    for raw, schema, message in cases:
        raw["dataset"]["schema"] = schema
        with pytest.raises(ConfigInvalid, match=message):
            parse_config(raw)


def test_dpo_loss_matches_hand_computed_values() -> None:
    # policy and reference summed log-probs of [chosen, rejected]; each answer has 2 target tokens
    policy, reference, counts = torch.tensor([-2.0, -6.0]), torch.tensor([-4.0, -4.0]), torch.tensor([2.0, 2.0])
    scores = dpo_loss(policy, reference, counts, DpoSpec(beta=0.5))
    # logits = (-2 + 4) - (-6 + 4) = 4; loss = -log sigmoid(0.5 * 4)
    assert scores.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))))
    assert (scores.chosen_rewards.item(), scores.rejected_rewards.item()) == pytest.approx((1.0, -1.0))
    smoothed = dpo_loss(policy, reference, counts, DpoSpec(beta=0.5, label_smoothing=0.2)).losses.item()
    assert smoothed == pytest.approx(0.8 * -math.log(1 / (1 + math.exp(-2))) + 0.2 * -math.log(1 / (1 + math.exp(2))))
    ipo = dpo_loss(policy, reference, counts, DpoSpec(beta=0.5, loss_type="ipo")).losses.item()
    assert ipo == pytest.approx((4 / 2 - 1 / (2 * 0.5)) ** 2)  # on per-token means: (1 - (-1) - 1)^2
    equal = dpo_loss(reference, reference, counts, DpoSpec()).losses.item()
    assert equal == pytest.approx(math.log(2))  # the untrained policy is the reference


def test_simpo_loss_matches_hand_computed_values() -> None:
    # summed log-probs of [chosen, rejected] over 2 and 4 target tokens: per-token means -1 and -2
    policy, counts = torch.tensor([-2.0, -8.0]), torch.tensor([2.0, 4.0])
    scores = simpo_loss(policy, counts, SimpoSpec(beta=2.0, gamma=0.5))
    # rewards 2 x -1 = -2 and 2 x -2 = -4; loss = -log sigmoid(-2 - (-4) - 0.5)
    assert scores.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.5))))
    assert (scores.chosen_rewards.item(), scores.rejected_rewards.item()) == pytest.approx((-2.0, -4.0))
    smoothed = simpo_loss(policy, counts, SimpoSpec(beta=2.0, gamma=0.5, label_smoothing=0.2)).losses.item()
    assert smoothed == pytest.approx(
        0.8 * -math.log(1 / (1 + math.exp(-1.5))) + 0.2 * -math.log(1 / (1 + math.exp(1.5)))
    )
    # equal per-token means (different lengths): the margin gamma alone makes the loss above log 2
    tie = simpo_loss(torch.tensor([-3.0, -6.0]), torch.tensor([3.0, 6.0]), SimpoSpec(beta=2.0, gamma=0.5))
    assert tie.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(0.5))))


class CountingModel(torch.nn.Module):
    """A causal LM stand-in with uniform logits that counts its forward passes and adapter toggles."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.forwards = 0
        self.disabled = 0

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> Any:
        self.forwards += 1
        logits = torch.zeros(*input_ids.shape, 10) + self.weight
        return type("Out", (), {"logits": logits})()

    def disable_adapter(self) -> Any:
        import contextlib

        self.disabled += 1
        return contextlib.nullcontext()


def test_simpo_runs_one_forward_and_no_reference_where_dpo_runs_two() -> None:
    rows = [{"input_ids": [1, 2, 3, 1, 2, 4], "labels": [-100, -100, 3, -100, -100, 4], "chosen_length": 3}]
    batch = PairCollator()(rows)
    simpo, dpo = CountingModel(), CountingModel()
    score_batch(simpo, batch, SimpoSpec())
    score_batch(dpo, batch, DpoSpec())
    assert (simpo.forwards, simpo.disabled) == (1, 0)  # no reference pass at all
    assert (dpo.forwards, dpo.disabled) == (2, 1)  # the reference (adapter disabled), then the policy


def test_collator_packs_both_answers_into_one_row_and_logps_sum_per_sequence() -> None:
    rows = [
        {"input_ids": [1, 2, 3, 1, 2, 4, 5], "labels": [-100, -100, 3, -100, -100, 4, 5], "chosen_length": 3},
        {"input_ids": [6, 7, 6, 8], "labels": [-100, 7, -100, 8], "chosen_length": 2},
    ]
    batch = PairCollator()(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 1, 2, 4, 5, 6, 7, 6, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 1]]
    assert batch["sequence_index"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3]]
    assert batch["labels"].tolist() == [[-100, -100, 3, -100, -100, 4, 5, -100, 7, -100, 8]]
    vocabulary = 10
    logits = torch.zeros(1, 11, vocabulary)  # uniform: every target token has log-probability -log(10)
    sums, counts = sequence_logps(logits, batch["labels"], batch["sequence_index"], 4)
    assert counts.tolist() == [1, 2, 1, 1]
    assert sums.tolist() == pytest.approx([-math.log(vocabulary) * n for n in (1, 2, 1, 1)])


def test_pair_metrics_are_means_over_pairs() -> None:
    # pairs, loss, correct, margin, chosen, rejected, preferred
    assert pair_metrics([4, 2.0, 3, 2.0, 1.0, -1.0, 2]) == {
        "loss": 0.5,
        "reward_accuracy": 0.75,
        "reward_margin": 0.5,
        "chosen_reward": 0.25,
        "rejected_reward": -0.25,
        "preference_accuracy": 0.5,
    }
    assert pair_metrics([0, 0, 0, 0, 0, 0, 0]) == {}


def test_memory_plan_counts_two_sequences_per_pair() -> None:
    shape, device = model_shape(LLAMA3_8B), GPUS["H100-80G"]
    sft = Setup(precision="bf16", micro_batch=2, seq_length=1024)
    dpo = replace(sft, objective="dpo")
    assert estimate(shape, dpo, device).activations >= 2 * estimate(shape, sft, device).activations
    assert estimate(shape, dpo, device).activations == estimate(shape, replace(sft, micro_batch=4), device).activations
    # SimPO: the same two sequences per pair and no reference term (DPO's reference adds nothing at the peak)
    assert estimate(shape, replace(sft, objective="simpo"), device) == estimate(shape, dpo, device)


def test_a_base_adapter_needs_merged_or_full_weights_and_a_causal_lm() -> None:
    raw = config(mergeWeights=True)
    raw["baseModel"]["adapter"] = "s3://artifacts/team-a/sft/run-1/model/"
    assert parse_config(raw).base_model.adapter == "s3://artifacts/team-a/sft/run-1/model/"
    raw["method"] = {"type": "lora"}
    with pytest.raises(ConfigInvalid, match=r"baseModel\.adapter: .* set method\.mergeWeights: true"):
        parse_config(raw)
    raw["method"] = {"type": "full"}
    assert parse_config(raw).method.type == "full"
    raw["baseModel"]["adapter"] = "https://example.org/adapter/"
    with pytest.raises(ConfigInvalid, match=r"baseModel\.adapter"):
        parse_config(raw)


def test_a_base_adapter_must_be_a_lora_adapter_of_the_base_model() -> None:
    raw = config(mergeWeights=True)
    raw["baseModel"]["adapter"] = "s3://a/sft/run-1/model/"
    cfg = parse_config(raw)
    base = cfg.base_model.uri
    lora = {"peft_type": "LORA", "base_model_name_or_path": "/work/base-model"}
    ours = {"baseModelUri": base.rstrip("/"), "adapter": True, "task": "causal-lm"}  # a trailing slash aside
    check_metadata(lora, ours, cfg)
    check_metadata(lora, None, cfg)  # written elsewhere: the merge checks its shapes
    refusals = [
        (lora, {**ours, "baseModelUri": "s3://a/other-model/"}, "was trained on s3://a/other-model/ .* not on"),
        (lora, {**ours, "adapter": False}, "holds merged or full weights"),
        (None, ours, "is not a LoRA adapter folder"),
        ({"peft_type": "IA3"}, None, "is a IA3 adapter; LoRA only"),
    ]
    for adapter_config, finetune, message in refusals:
        with pytest.raises(ModelInvalid, match=f"baseModel.adapter: .*{message}"):
            check_metadata(adapter_config, finetune, cfg)
