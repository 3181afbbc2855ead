"""Preference tuning (`method.objective: dpo | simpo`): the DPO and SimPO losses inside the HF Trainer, and their
evaluation.

Why a Trainer subclass and not TRL's DPOTrainer: checkpoints, resume after preemption, progress, tracking,
early stopping and the best checkpoint are this trainer's hooks on the HF Trainer (`callbacks`,
`best_model`); overriding `compute_loss` keeps every one of them for DPO unchanged. What differs is here:

- Batches (`PairCollator`): a batch of B pairs is one padding-free row of 2B sequences (chosen, rejected,
  chosen, ...), position ids restarting per sequence, as `DataCollatorWithFlattening` does for SFT; the
  model's packed-sequence mask keeps the sequences apart, so both answers of every pair go through ONE
  forward pass and no compute is spent on padding. `sequence_index` says which sequence a token is in.
- Log-probabilities (`batch_logps`): per sequence, the sum of its target tokens' log-probabilities (the
  reply's tokens; the prompt is masked as for SFT) and their count. Only the answer positions reach the
  output head, a chunk at a time (`label_position_logps`, the same idea as the SFT loss in `loss`: no
  [T, V] logits); models it does not apply to (`loss.applies`) take them from the full logits
  (`sequence_logps`). Evaluation and the precomputed reference use the same path.
- The reference model: with lora/qlora it is the same model with the adapter disabled (peft's
  `disable_adapter()`), run first under `no_grad`, so no second copy of the weights is held and its
  activations are freed before the policy's forward. With full fine-tuning the reference log-probabilities
  are precomputed once, before the first step, by the still untrained model (`with_reference`) and carried
  in the dataset: one extra forward pass per pair for the whole run and no frozen copy (a copy would double
  the weights' memory; recomputing per step would double the forward compute). A resumed attempt
  recomputes them from the base model it loads first, so they are the same.
- The loss (`dpo_loss`): sigmoid (Rafailov et al. 2023, with Mitchell's label smoothing) or IPO (Azar et al.
  2023, on length-normalised log-probabilities, as the paper defines it). The implicit rewards are
  beta x (policy - reference) log-probabilities of each answer.
- SimPO (`simpo_loss`, Meng et al. 2024) has no reference model at all: no reference pass, no precomputed
  column, no adapter toggling. An answer's reward is beta x its per-token average log-likelihood under the
  policy, and the loss is -log sigmoid(chosen reward - rejected reward - gamma) (TRL's CPOTrainer with
  loss_type simpo and cpo_alpha 0), with the same label smoothing as DPO's sigmoid loss.

Evaluation (`evaluate_pairs`) reports per split: `loss` (the DPO loss: what validation-driven selection and
early stopping minimise), `reward_accuracy` (pairs whose chosen reward is above the rejected one),
`reward_margin`, `chosen_reward`, `rejected_reward`, and `preference_accuracy` (pairs where the model
gives the chosen answer the higher length-normalised log-likelihood: what compareBaseModel reports for the
untrained model, whose rewards are all zero).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune_trainer.config import DpoSpec, SimpoSpec
from finetune_trainer.core import distributed
from finetune_trainer.data.tokenization import IGNORE_INDEX
from finetune_trainer.evaluation.autocast import autocast
from finetune_trainer.training import loss as lm_loss

log = logging.getLogger(__name__)

REFERENCE_COLUMNS = ("reference_chosen", "reference_rejected")
"""Precomputed reference log-probabilities (full fine-tuning), summed over each answer's target tokens."""

METRICS = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "preference_accuracy")
"""What `evaluate_pairs` reports per split (the gate's `<split>_<metric>` names)."""


class PairCollator:
    """Rows of `data.pairs` (input_ids/labels of chosen then rejected, chosen_length) -> one flattened row."""

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        index: list[int] = []
        for pair, row in enumerate(rows):
            split = int(row["chosen_length"])
            sequences = ((row["input_ids"][:split], row["labels"][:split]),
                         (row["input_ids"][split:], row["labels"][split:]))  # fmt: skip
            for side, (seq_ids, seq_labels) in enumerate(sequences):
                ids += list(seq_ids)
                labels += [IGNORE_INDEX, *list(seq_labels)[1:]]  # a sequence's first token predicts nothing
                positions += list(range(len(seq_ids)))
                index += [2 * pair + side] * len(seq_ids)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "sequence_index": torch.tensor([index], dtype=torch.long),
        }
        if rows and REFERENCE_COLUMNS[0] in rows[0]:
            batch["reference_logps"] = torch.tensor(
                [[float(row[REFERENCE_COLUMNS[0]]), float(row[REFERENCE_COLUMNS[1]])] for row in rows],
                dtype=torch.float32,
            )
        return batch


def sequence_logps(logits: Any, labels: Any, sequence_index: Any, sequences: int) -> tuple[Any, Any]:
    """Per sequence: the summed log-probability of its target tokens, and their count (both float32, [n]).

    Token t's logits predict token t + 1; the collator masks each sequence's first label, so no sequence is
    scored from the one before it."""
    import torch
    import torch.nn.functional as F

    targets = labels[:, 1:].reshape(-1)
    owner = sequence_index[:, 1:].reshape(-1)
    scored = targets != IGNORE_INDEX
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    token_logps = -F.cross_entropy(flat, targets.clamp(min=0), reduction="none") * scored
    sums = torch.zeros(sequences, device=logits.device, dtype=torch.float32).index_add(0, owner, token_logps)
    counts = torch.zeros(sequences, device=logits.device, dtype=torch.float32).index_add(0, owner, scored.float())
    return sums, counts


def label_position_logps(model: Any, batch: dict[str, Any], sequences: int) -> tuple[Any, Any]:
    """`sequence_logps` without the logits: the decoder's last hidden state (`loss.final_hidden`, the head
    projecting one position), the positions whose next token carries a label (each answer's tokens), and
    their log-probabilities chunk by chunk (`loss.token_logps`), summed per sequence.

    Why: the logits path projects every position of the row (both prompts too) onto the whole vocabulary and
    keeps [T, V] fp32 logits and their log-softmax alive for the backward pass; here only answer tokens reach
    the head and one chunk of logits is held at a time."""
    import torch

    hidden = lm_loss.final_hidden(model, {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]})
    mask, targets = lm_loss.label_positions(batch["labels"].to(hidden.device))
    owner = torch.nn.functional.pad(batch["sequence_index"][:, 1:], (0, 1), value=0).to(hidden.device)[mask]
    weight = lm_loss._unwrap(model).get_output_embeddings().weight
    token_logps = lm_loss.token_logps(hidden[mask], weight, targets)
    sums = torch.zeros(sequences, device=hidden.device, dtype=torch.float32).index_add(0, owner, token_logps)
    ones = torch.ones_like(token_logps)
    counts = torch.zeros(sequences, device=hidden.device, dtype=torch.float32).index_add(0, owner, ones)
    return sums, counts


def batch_logps(model: Any, batch: dict[str, Any], label_positions: bool = True) -> tuple[Any, Any]:
    """Per sequence of the batch, the summed log-probability of its answer tokens and their count: at label
    positions only (`label_position_logps`) where the model allows it (`loss.applies`) and `label_positions`
    is on, else from the model's full logits (`sequence_logps`). Both compute the same fp32 values."""
    sequences = int(batch["sequence_index"].max().item()) + 1
    if label_positions and lm_loss.applies(model):
        return label_position_logps(model, batch, sequences)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    return sequence_logps(logits, batch["labels"], batch["sequence_index"], sequences)


@dataclass(frozen=True)
class PairScores:
    """Per pair (tensors of length B): the loss, the implicit rewards, and the policy's mean log-probabilities."""

    losses: Any
    chosen_rewards: Any
    rejected_rewards: Any
    chosen_mean_logps: Any
    rejected_mean_logps: Any


def dpo_loss(policy: Any, reference: Any, counts: Any, spec: DpoSpec) -> PairScores:
    """The DPO loss of B pairs from [2B] summed log-probabilities (chosen at even, rejected at odd indices)."""
    import torch.nn.functional as F

    means = policy / counts.clamp(min=1)
    if spec.loss_type == "ipo":  # IPO is defined on the answers' average log-likelihood (Azar et al. 2023, eq. 17)
        policy, reference = means, reference / counts.clamp(min=1)
    chosen, rejected = policy[0::2] - reference[0::2], policy[1::2] - reference[1::2]
    logits = chosen - rejected
    if spec.loss_type == "ipo":
        losses = (logits - 1 / (2 * spec.beta)) ** 2
    else:
        smoothing = spec.label_smoothing
        losses = -F.logsigmoid(spec.beta * logits) * (1 - smoothing) - F.logsigmoid(-spec.beta * logits) * smoothing
    return PairScores(
        losses=losses,
        chosen_rewards=(spec.beta * chosen).detach(),
        rejected_rewards=(spec.beta * rejected).detach(),
        chosen_mean_logps=means[0::2].detach(),
        rejected_mean_logps=means[1::2].detach(),
    )


def simpo_loss(policy: Any, counts: Any, spec: SimpoSpec) -> PairScores:
    """The SimPO loss of B pairs from [2B] summed log-probabilities (chosen at even, rejected at odd indices):
    the rewards are beta x the per-token means, and the chosen one must beat the rejected one by gamma."""
    import torch.nn.functional as F

    means = policy / counts.clamp(min=1)
    chosen, rejected = spec.beta * means[0::2], spec.beta * means[1::2]
    logits = chosen - rejected - spec.gamma
    smoothing = spec.label_smoothing
    losses = -F.logsigmoid(logits) * (1 - smoothing) - F.logsigmoid(-logits) * smoothing
    return PairScores(
        losses=losses,
        chosen_rewards=chosen.detach(),
        rejected_rewards=rejected.detach(),
        chosen_mean_logps=means[0::2].detach(),
        rejected_mean_logps=means[1::2].detach(),
    )


def reference_logps(model: Any, batch: dict[str, Any], label_positions: bool = True) -> Any:
    """The reference model's summed log-probabilities of the batch's sequences: precomputed (full fine-tuning),
    or the same model with its LoRA adapter disabled, under no_grad."""
    import torch

    if "reference_logps" in batch:
        return batch["reference_logps"].reshape(-1)
    bare = getattr(model, "module", model)  # DDP wraps the peft model
    if not hasattr(bare, "disable_adapter"):
        raise RuntimeError("dpo without precomputed reference log-probabilities needs a LoRA (peft) model")
    with torch.no_grad(), bare.disable_adapter():
        sums, _ = batch_logps(bare, batch, label_positions)
    return sums


def score_batch(
    model: Any, batch: dict[str, Any], spec: DpoSpec | SimpoSpec, label_positions: bool = True
) -> PairScores:
    """DPO: the reference pass first (its activations freed), then the policy's forward, then the loss.
    SimPO: the policy's forward and the loss only. `label_positions`: see `batch_logps`."""
    reference = None if isinstance(spec, SimpoSpec) else reference_logps(model, batch, label_positions)
    policy, counts = batch_logps(model, batch, label_positions)
    if isinstance(spec, SimpoSpec):
        return simpo_loss(policy, counts, spec)
    return dpo_loss(policy, reference, counts, spec)


def trainer_class(base: type[Any], spec: DpoSpec | SimpoSpec, label_positions: bool = True) -> type[Any]:
    """`base` (the HF Trainer) with the DPO or SimPO loss; logs the training rewards beside the loss.
    `label_positions` off: the log-probabilities from the full logits (the path before issue #30, kept for
    models the label-position path does not apply to and for the test that both train alike)."""

    class PreferenceTrainer(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # The DPO (SimPO) loss is a mean over the micro-batch's pairs: the Trainer must divide it by the
            # accumulation steps (it skips that for models whose forward takes loss kwargs).
            self.model_accepts_loss_kwargs = False
            self._sums = [0.0, 0.0, 0.0, 0.0]  # pairs, reward accuracy, margin, chosen reward (since the last log)

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            scores = score_batch(model, inputs, spec, label_positions)
            margin = scores.chosen_rewards - scores.rejected_rewards
            self._sums[0] += float(margin.numel())
            self._sums[1] += float((margin > 0).float().sum().item())
            self._sums[2] += float(margin.sum().item())
            self._sums[3] += float(scores.chosen_rewards.sum().item())
            loss = scores.losses.mean()
            return (loss, {"rewards": margin}) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            pairs = self._sums[0]
            if pairs and "loss" in logs:
                logs = {
                    **logs,
                    "reward_accuracy": round(self._sums[1] / pairs, 4),
                    "reward_margin": round(self._sums[2] / pairs, 4),
                    "chosen_reward": round(self._sums[3] / pairs, 4),
                }
                self._sums = [0.0, 0.0, 0.0, 0.0]
            super().log(logs, *args, **kwargs)

    return PreferenceTrainer


def pair_metrics(sums: Sequence[float]) -> dict[str, float]:
    """The split's metrics from summed counters: pairs, loss, correct rewards, margin, chosen and rejected
    rewards, and pairs preferred by length-normalised likelihood (ties count half)."""
    pairs = sums[0]
    if pairs <= 0:
        return {}
    values = dict(zip(METRICS, (s / pairs for s in sums[1:]), strict=True))
    return {name: round(value, 6) for name, value in values.items()}


def evaluate_pairs(
    model: Any, dataset: Any, collator: Any, batch_size: int, precision: str, spec: DpoSpec | SimpoSpec
) -> dict[str, float]:
    """`METRICS` of `model` on a tokenized split of pairs; each rank takes every world_size-th pair."""
    import torch
    from torch.utils.data import DataLoader

    rank, world = distributed.rank(), distributed.world_size()
    shard = dataset.select(range(rank, len(dataset), world)) if world > 1 else dataset
    loader = DataLoader(shard, batch_size=batch_size, collate_fn=collator, shuffle=False)
    device = next(model.parameters()).device
    sums = [0.0] * (len(METRICS) + 1)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, precision):
                scores = score_batch(model, batch, spec)
            margin = scores.chosen_rewards - scores.rejected_rewards
            likelihood = scores.chosen_mean_logps - scores.rejected_mean_logps
            sums[0] += float(margin.numel())
            sums[1] += float(scores.losses.sum().item())
            sums[2] += float((margin > 0).float().sum().item())
            sums[3] += float(margin.sum().item())
            sums[4] += float(scores.chosen_rewards.sum().item())
            sums[5] += float(scores.rejected_rewards.sum().item())
            sums[6] += float(((likelihood > 0).float() + 0.5 * (likelihood == 0).float()).sum().item())
    if was_training:
        model.train()
    return pair_metrics(distributed.sum_across(sums))


def base_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """What compareBaseModel keeps of the untrained model's metrics: its preference accuracy (its DPO rewards
    are all zero against itself, so reward metrics say nothing about it; its SimPO reward accuracy is the same
    comparison of per-token means, so preference_accuracy says it too)."""
    return {split: {"preference_accuracy": values["preference_accuracy"]} for split, values in metrics.items()
            if "preference_accuracy" in values}  # fmt: skip


def with_reference(
    model: Any, tokenized: dict[str, Any], collator: Any, batch_size: int, precision: str
) -> dict[str, Any]:
    """Every split with the untrained model's summed log-probabilities of each answer (full fine-tuning).

    Every rank computes them for every pair (a forward pass without gradients per pair, once per attempt),
    so each rank's dataset is whole and no collective is needed."""
    import torch
    from torch.utils.data import DataLoader

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {}
    for name, dataset in tokenized.items():
        chosen: list[float] = []
        rejected: list[float] = []
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator, shuffle=False)
        with torch.no_grad():
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(device, precision):
                    sums, _ = batch_logps(model, batch)
                chosen += sums[0::2].tolist()
                rejected += sums[1::2].tolist()
        if not all(math.isfinite(v) for v in chosen + rejected):
            raise RuntimeError(f"{name}: the reference model's log-probabilities are not finite")
        out[name] = dataset.add_column(REFERENCE_COLUMNS[0], chosen).add_column(REFERENCE_COLUMNS[1], rejected)
        log.info("%s: reference log-probabilities of %d pair(s) computed", name, len(chosen))
    if was_training:
        model.train()
    return out
