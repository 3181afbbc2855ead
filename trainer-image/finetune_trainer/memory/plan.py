"""Will this training plan fit the accelerator it asks for? Peak memory per process, before a GPU is requested.

Why: a full fine-tune of an 8B model under plain DDP needs far more than any GPU has, and without a plan a
user learns it after queueing for the GPUs. The plan is pure (no torch; the base model's config.json as
a dict in, dataclasses out), so the operator's admission or a CPU validation pod can run it, and unit
tests pin it down. It models what *this* trainer does (`training/modeling.py`,
`training/train.py`), not training in general.

Here: the decisions built on the estimate (`memory.estimate`, the formulas) and the model's shapes
(`memory.shapes`): `batchSize: auto` and gradient checkpointing when unset (`decide`), what would make a plan
fit (`suggestions`), and `MemoryPlan`, what the status shows and `validate` decides on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from finetune_trainer.memory.estimate import (
    Breakdown,
    Method,
    Setup,
    Sharding,
    estimate,
    largest_micro_batch,
    resolve_precision,
    trainable_parameters,
)
from finetune_trainer.memory.gpus import GPUS, Accelerator, GiB
from finetune_trainer.memory.shapes import ModelShape, model_shape

if TYPE_CHECKING:
    from finetune_trainer.config import TrainerConfig


@dataclass(frozen=True)
class Suggestion:
    """One change to the spec, and the estimated per-process peak with it."""

    change: str
    total: int
    fits: bool

    def __str__(self) -> str:
        return f"{self.change} -> {gib(self.total)}"


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate against a budget: what the status shows and admission decides on."""

    accelerator: str
    budget: int
    breakdown: Breakdown
    precision: str
    parameters: int
    trainable_parameters: int
    tokens_per_micro_batch: int
    max_micro_batch: int
    """The largest micro-batch that fits (0: not even one sequence)."""
    suggestions: tuple[Suggestion, ...] = ()
    setup: Setup = field(default_factory=Setup)
    """What the estimate is of: with `batchSize: auto` the chosen micro-batch and accumulation, with an unset
    `gradientCheckpointing` whether it is on (`decide`)."""
    batch_auto: bool = False
    checkpointing_auto: bool = False

    @property
    def total(self) -> int:
        return self.breakdown.total

    @property
    def headroom(self) -> int:
        return self.budget - self.total

    @property
    def fits(self) -> bool:
        return self.headroom >= 0

    def message(self) -> str:
        """One paragraph for a user: the numbers, and for a plan that does not fit, what would."""
        b = self.breakdown
        text = (
            f"estimated peak {gib(b.total)} per {'GPU' if self.accelerator != 'cpu' else 'pod'} "
            f"of {gib(self.budget)} ({self.accelerator}): weights {gib(b.weights)}, gradients {gib(b.gradients)}, "
            f"optimizer {gib(b.optimizer)}, activations {gib(b.activations)}, overhead {gib(b.overhead)}"
        )
        text += self._decisions()
        if self.fits:
            return f"{text}; fits, headroom {gib(self.headroom)}, largest micro-batch {self.max_micro_batch}"
        fitting = [str(s) for s in self.suggestions if s.fits]
        if fitting:
            return f"{text}; does not fit by {gib(-self.headroom)}. Would fit: {'; '.join(fitting)}"
        closest = "; ".join(str(s) for s in self.suggestions[:3]) or "none tried"
        return f"{text}; does not fit by {gib(-self.headroom)}, nor with one or two changes; closest: {closest}"

    def _decisions(self) -> str:
        """What the plan chose for the spec (batchSize auto, gradient checkpointing when unset), if anything."""
        s, chosen = self.setup, []
        if self.batch_auto:
            chosen.append(f"batchSize auto -> {s.micro_batch} x {s.gradient_accumulation} accumulated")
        if self.checkpointing_auto:
            chosen.append(f"gradient checkpointing {'on (needed to fit)' if s.gradient_checkpointing else 'off'}")
        return f" ({'; '.join(chosen)})" if chosen else ""

    def to_status(self) -> dict[str, Any]:
        """The plan as the FineTuneJob status shows it (camelCase, bytes as integers)."""
        b = self.breakdown
        return {
            "accelerator": self.accelerator,
            "budgetBytes": self.budget,
            "estimateBytes": b.total,
            "headroomBytes": self.headroom,
            "fits": self.fits,
            "peakAt": b.peak_at,
            "breakdown": {
                "weights": b.weights,
                "gradients": b.gradients,
                "optimizer": b.optimizer,
                "activations": b.activations,
                "overhead": b.overhead,
            },
            "precision": self.precision,
            "parameters": self.parameters,
            "trainableParameters": self.trainable_parameters,
            "tokensPerMicroBatch": self.tokens_per_micro_batch,
            "maxMicroBatch": self.max_micro_batch,
            "microBatch": self.setup.micro_batch,
            "gradientAccumulationSteps": self.setup.gradient_accumulation,
            "gradientCheckpointing": self.setup.gradient_checkpointing,
            "sharding": self.setup.sharding,
            "worldSize": self.setup.world_size,
            "suggestions": [{"change": s.change, "estimateBytes": s.total, "fits": s.fits} for s in self.suggestions],
            "summary": self.message(),
        }


def gib(value: float) -> str:
    return f"{value / GiB:.1f} GiB"


@dataclass(frozen=True)
class _Change:
    kind: str
    """One kind of change (checkpointing, batch, method, fsdp): suggestions combine different kinds."""
    text: str
    setup: Setup


def auto_batch(shape: ModelShape, setup: Setup, device: Accelerator, sequences: int) -> tuple[int, int] | None:
    """`batchSize: auto`: the largest micro-batch that fits and divides `sequences` (per process and optimizer
    step), and the gradient accumulation that makes up the rest; None when one sequence does not fit.

    Each candidate is estimated with its own accumulation: accumulating keeps the gradients alive through the
    next micro-batch's backward, so a micro-batch that fits alone may not fit with accumulation."""
    largest = largest_micro_batch(shape, setup, device, limit=max(1, sequences))
    if largest == 0:
        return None
    for batch in (b for b in range(min(largest, sequences), 0, -1) if sequences % b == 0):
        candidate = replace(setup, micro_batch=batch, gradient_accumulation=sequences // batch)
        if estimate(shape, candidate, device).total <= device.memory_bytes:
            return batch, sequences // batch
    return None


def decide(
    shape: ModelShape,
    setup: Setup,
    device: Accelerator,
    *,
    batch_auto: bool,
    sequences: int,
    checkpointing: bool | None,
) -> Setup:
    """`setup` with what the spec leaves to the plan decided for `device`.

    `batch_auto`: the micro-batch and accumulation (`auto_batch`) that make up `sequences` per process and
    optimizer step. `checkpointing` None: gradient checkpointing only where the plan needs it to fit (it costs
    about a third more compute), so first without it, then with it. When nothing fits, the smallest plan
    (checkpointing on unless turned off, one sequence per micro-batch) is returned: the caller reports it."""
    options = [checkpointing] if checkpointing is not None else [False, True]
    for on in options:
        tried = replace(setup, gradient_checkpointing=on)
        if batch_auto:
            picked = auto_batch(shape, tried, device, sequences)
            if picked is not None:
                return replace(tried, micro_batch=picked[0], gradient_accumulation=picked[1])
        elif estimate(shape, tried, device).total <= device.memory_bytes:
            return tried
    smallest = replace(setup, gradient_checkpointing=options[-1])
    return replace(smallest, micro_batch=1, gradient_accumulation=sequences) if batch_auto else smallest


def _changes(setup: Setup, device: Accelerator) -> list[_Change]:
    """Single changes to try, most faithful to the user's intent first."""
    gpu = device.kind == "gpu"
    changes: list[_Change] = []
    if not setup.gradient_checkpointing:
        on = replace(setup, gradient_checkpointing=True)
        changes.append(_Change("checkpointing", "hyperparameters.gradientCheckpointing: true", on))
    effective = setup.micro_batch * setup.gradient_accumulation
    for batch in range(setup.micro_batch - 1, 0, -1):  # the same sequences per optimizer step
        if effective % batch == 0:
            text = f"hyperparameters.batchSize: {batch}, gradientAccumulationSteps: {effective // batch}"
            smaller = replace(setup, micro_batch=batch, gradient_accumulation=effective // batch)
            changes.append(_Change("batch", text, smaller))
    if setup.method.type == "full":
        lora = Method("lora", 16, ("all-linear",), 0.05)
        changes.append(_Change("method", "method.type: lora (rank 16, all-linear)", replace(setup, method=lora)))
    if setup.method.type != "qlora" and gpu and setup.task == "causal-lm":
        qlora = replace(setup.method, type="qlora") if setup.method.type == "lora" else Method("qlora")
        changes.append(_Change("method", "method.type: qlora", replace(setup, method=qlora)))
    if gpu and setup.sharding == "none" and setup.world_size > 1:
        fsdp = replace(setup, sharding="fsdp")
        changes.append(_Change("fsdp", f"distributed.sharding: fsdp (over the run's {setup.world_size} GPUs)", fsdp))
    if gpu:
        for world in (2, 4, 8, 16, 32, 64):
            if world > setup.world_size:
                more = replace(setup, sharding="fsdp", world_size=world)
                changes.append(_Change("fsdp", f"distributed.sharding: fsdp over {world} GPUs", more))
    return changes


def _combined(setup: Setup, first: _Change, second: _Change) -> _Change:
    a, b = first.setup, second.setup
    merged = replace(
        setup,
        gradient_checkpointing=a.gradient_checkpointing or b.gradient_checkpointing,
        method=b.method if b.method != setup.method else a.method,
        sharding=b.sharding if b.sharding != "none" else a.sharding,
        world_size=max(a.world_size, b.world_size),
        micro_batch=min(a.micro_batch, b.micro_batch),
        gradient_accumulation=max(a.gradient_accumulation, b.gradient_accumulation),
    )
    return _Change(f"{first.kind}+{second.kind}", f"{first.text} and {second.text}", merged)


def suggestions(shape: ModelShape, setup: Setup, device: Accelerator, limit: int = 5) -> tuple[Suggestion, ...]:
    """For a plan that does not fit: changes that make it fit, one change before two, and of each kind
    the least disruptive (the largest micro-batch, the fewest GPUs); when none fits, the closest ones."""
    singles = _changes(setup, device)
    pairs = [_combined(setup, a, b) for i, a in enumerate(singles) for b in singles[i + 1 :] if a.kind != b.kind]
    tried: list[tuple[_Change, int]] = [(c, estimate(shape, c.setup, device).total) for c in singles + pairs]
    fitting = [(c, total) for c, total in tried if total <= device.memory_bytes]
    if not fitting:
        closest = sorted(tried, key=lambda item: item[1])[:limit]
        return tuple(Suggestion(c.text, total, False) for c, total in closest)
    fitting.sort(key=lambda item: (item[0].kind.count("+"), item[0].setup.world_size))  # stable: intent order
    chosen: dict[str, Suggestion] = {}
    for change, total in fitting:
        chosen.setdefault(change.kind, Suggestion(change.text, total, True))
    return tuple(chosen.values())[:limit]


def plan(config: Mapping[str, Any], setup: Setup, device: Accelerator, *, num_labels: int | None = None) -> MemoryPlan:
    """The memory plan of `setup` for the model whose config.json is `config`, on `device`."""
    shape = model_shape(config, num_labels=num_labels)
    breakdown = estimate(shape, setup, device)
    fits = breakdown.total <= device.memory_bytes
    return MemoryPlan(
        accelerator=device.name,
        budget=device.memory_bytes,
        breakdown=breakdown,
        precision=resolve_precision(setup.precision, device),
        parameters=shape.parameters,
        trainable_parameters=trainable_parameters(shape, setup.method),
        tokens_per_micro_batch=setup.micro_batch * setup.seq_length * setup.sequences_per_entry,
        max_micro_batch=largest_micro_batch(shape, setup, device),
        suggestions=() if fits else suggestions(shape, setup, device),
        setup=setup,
    )


def plan_config(
    config: Mapping[str, Any],
    cfg: TrainerConfig,
    device: Accelerator,
    *,
    longest_record: int | None = None,
    num_labels: int | None = None,
) -> MemoryPlan:
    """The plan of a trainer config on `device`, with `batchSize: auto` and an unset `gradientCheckpointing`
    decided (`decide`): what `validate` records and what `train` trains with."""
    hp = cfg.hyperparameters
    setup = setup_of(cfg, longest_record=longest_record)
    shape = model_shape(config, num_labels=num_labels)
    batch_auto = hp.batch_size == "auto"
    decided = decide(
        shape,
        setup,
        device,
        batch_auto=batch_auto,
        sequences=cfg.sequences_per_process(),
        checkpointing=hp.gradient_checkpointing,
    )
    result = plan(config, decided, device, num_labels=num_labels)
    return replace(result, batch_auto=batch_auto, checkpointing_auto=hp.gradient_checkpointing is None)


def setup_of(
    cfg: TrainerConfig,
    *,
    gradient_checkpointing: bool | None = None,
    sharding: Sharding | None = None,
    longest_record: int | None = None,
) -> Setup:
    """The Setup of a trainer config (the spec's fields as the operator renders them); `gradient_checkpointing`
    and `sharding` override the config's (an unset gradientCheckpointing is off here: `decide` chooses), and
    `batchSize: auto` is a micro-batch of 1 until `decide` chooses.

    `longest_record`: the longest tokenized training record when known (the validate step measures the
    tokens): a flattened micro-batch then holds at most batchSize x min(maxSeqLength, longest) tokens, a
    tighter bound than the worst case of every record being maxSeqLength long. With `objective: dpo` or simpo a
    record is a pair (both sequences, each at most maxSeqLength): half the longest pair, rounded up, bounds its
    tokens per sequence."""
    lora = cfg.method.lora
    hp = cfg.hyperparameters
    longest = math.ceil(longest_record / 2) if cfg.method.pairs and longest_record else longest_record
    return Setup(
        method=Method(cfg.method.type, lora.rank, tuple(lora.target_modules), lora.dropout),
        precision=hp.precision,
        sharding=sharding if sharding is not None else cfg.distributed.sharding,
        world_size=cfg.distributed.workers * cfg.distributed.processes_per_worker,
        gradient_checkpointing=bool(
            gradient_checkpointing if gradient_checkpointing is not None else hp.gradient_checkpointing
        ),
        micro_batch=1 if hp.batch_size == "auto" else hp.batch_size,
        gradient_accumulation=hp.gradient_accumulation_steps,
        seq_length=min(cfg.dataset.max_seq_length, longest or cfg.dataset.max_seq_length),
        task=cfg.base_model.task,
        objective=cfg.method.objective,
    )


def default_gpu() -> Accelerator:
    """The budget when a spec names no GPU type: the smallest common GPU, so the check errs on the safe side."""
    return min(GPUS.values(), key=lambda a: a.memory_bytes)
