"""Evaluation on the validation and test splits: loss/perplexity (causal LM), accuracy/macro F1 (classifier).

Why our own loop instead of `Trainer.evaluate`/`predict`: those gather full logits (batch x length x
vocabulary) across the whole split before computing metrics, which runs out of memory on large
vocabularies. Here each batch is reduced at once to a few counters (summed loss and target-token count,
or a confusion matrix), and the counters are summed across ranks, so memory stays one batch deep and
several processes share the work. The metric formulas are pure functions, unit-tested.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from finetune_trainer.core import distributed
from finetune_trainer.data.tokenization import IGNORE_INDEX
from finetune_trainer.evaluation.autocast import autocast


def causal_lm_metrics(loss_sum: float, tokens: float) -> dict[str, float]:
    """Mean token loss and its perplexity (capped so a diverged model still yields a finite number)."""
    if tokens <= 0:
        return {}
    loss = loss_sum / tokens
    return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 6)}


def classification_metrics(confusion: Sequence[Sequence[float]], loss_sum: float, count: float) -> dict[str, float]:
    """Accuracy and macro F1 from a confusion matrix (rows: true label, columns: predicted label).

    Macro F1 averages over labels that occur as truth or prediction; a label's F1 is 0 when it has no
    true positives.
    """
    if count <= 0:
        return {}
    size = len(confusion)
    correct = sum(confusion[i][i] for i in range(size))
    scores = []
    for label in range(size):
        true_positive = confusion[label][label]
        actual = sum(confusion[label])
        predicted = sum(confusion[row][label] for row in range(size))
        if actual == 0 and predicted == 0:
            continue
        scores.append(0.0 if true_positive == 0 else 2 * true_positive / (actual + predicted))
    return {
        "loss": round(loss_sum / count, 6),
        "accuracy": round(correct / count, 6),
        "f1": round(sum(scores) / len(scores), 6) if scores else 0.0,
    }


def evaluate(
    model: Any,
    dataset: Any,
    collator: Any,
    batch_size: int,
    num_labels: int | None,
    precision: str,
    lockstep: bool = False,
) -> dict[str, float]:
    """Metrics of `model` on a tokenized split; each rank takes every world_size-th example.

    `lockstep` (a sharded model: every forward is a collective): every rank runs as many batches as rank 0,
    the ranks with fewer examples running a filler batch (the split's first examples) whose counts are dropped."""
    import torch
    from torch.utils.data import DataLoader

    rank, world = distributed.rank(), distributed.world_size()
    shard = dataset.select(range(rank, len(dataset), world)) if world > 1 else dataset
    loader = DataLoader(shard, batch_size=batch_size, collate_fn=collator, shuffle=False)
    if lockstep and world > 1:
        most = math.ceil(math.ceil(len(dataset) / world) / batch_size)  # rank 0's shard is the longest
        filler = dataset.select(range(min(batch_size, len(dataset))))
        batches: Any = itertools.chain(loader, itertools.repeat(collator(list(filler)), most - len(loader)))
        counted = len(loader)
    else:
        batches, counted = loader, None
    device = next(model.parameters()).device
    classes = num_labels or 0
    confusion = [[0.0] * classes for _ in range(classes)]
    loss_sum, count = 0.0, 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for index, batch in enumerate(batches):
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            with autocast(device, precision):
                output = model(**batch)
            if counted is not None and index >= counted:
                continue  # a filler batch: the forward is for the other ranks' collectives only
            if num_labels is None:
                targets = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum().item())
                loss_sum += float(output.loss.float().item()) * targets
                count += targets
            else:
                predicted = output.logits.argmax(dim=-1).tolist()
                truth = batch["labels"].tolist()
                for true_label, guess in zip(truth, predicted, strict=True):
                    confusion[true_label][guess] += 1
                loss_sum += float(output.loss.float().item()) * len(truth)
                count += len(truth)
    if was_training:
        model.train()
    flat = distributed.sum_across([loss_sum, count] + [c for row in confusion for c in row])
    loss_sum, count = flat[0], flat[1]
    if num_labels is None:
        return causal_lm_metrics(loss_sum, count)
    cells = flat[2:]
    matrix = [cells[i * classes : (i + 1) * classes] for i in range(classes)]
    return classification_metrics(matrix, loss_sum, count)


def gate_names(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """`{"test": {"loss": 1.4}}` -> `{"test_loss": 1.4}`: the names the operator's gate rules use."""
    return {f"{split}_{name}": value for split, values in metrics.items() for name, value in values.items()}
