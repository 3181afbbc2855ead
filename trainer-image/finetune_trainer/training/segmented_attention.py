"""Causal attention computed record by record inside a flattened micro-batch, where no variable-length kernel exists.

Why: a causal-LM micro-batch is one flattened row of several records (`DataCollatorWithFlattening`: no
padding, position ids restarting at 0 for each record). Without flash-attn's variable-length kernel (every
CPU, and GPUs without the package), transformers turns the restarts into a T x T block-diagonal causal mask
and SDPA computes all T^2 scores of the row and masks most of them away: with 8 records of ~100 tokens it
scores ~8x the pairs that matter, and a masked SDPA also repeats k and v to every head. Measured on
SmolLM2-135M LoRA (CPU, 2 cores, ~780 tokens in 8 records): SDPA's forward and backward were 25% of the
step's CPU time (docs/benchmarks.md). Here each record attends to itself only, one causal SDPA call per
record (sum of L_i^2 scores, grouped KV heads without copies), which is the same arithmetic as the
block-diagonal mask: the fixed-seed loss curve test compares the two.

Exactness before speed: the record path is taken only when the mask transformers built is *exactly* the
block-diagonal causal mask of the position ids' records (checked once per forward pass, since all layers
share the mask object), the batch is one row, and queries and keys have the same length (no KV cache).
Anything else (a padding mask at evaluation, generation with a cache, one record, a sliding window) runs
transformers' own SDPA function unchanged.

Where it applies (`applies`): decoder-only families whose every layer is full causal attention with no
soft-capping or position bias (`memory.estimate.RECORD_ATTENTION_FAMILIES`, one home for adding another, which
the memory plan reads too), on CPU. On a GPU the trainer uses
flash-attn's variable-length kernel where installed; this path was not measured on a GPU, so it is not
used there. The memory plan follows: no per-layer T^2 mask copy, no repeated k/v.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from finetune_trainer.memory.estimate import record_attention

NAME = "fto_record_sdpa"
"""The attention implementation's registered name (`attn_implementation=` of `from_pretrained`)."""

_verified: tuple[Any, list[int] | None] | None = None
"""(weak reference to the last mask seen, its record bounds or None when it is not block-diagonal causal)."""


def applies(model_type: str | None, cuda: bool) -> bool:
    """Whether a model of `model_type` trains with record-by-record attention (the memory plan's rule, one home:
    `memory.estimate.record_attention`, whose `RECORD_ATTENTION_FAMILIES` is where a family is added)."""
    return record_attention(model_type, on_cpu=not cuda)


def record_bounds(position_ids: list[int]) -> list[int]:
    """[0, start of record 2, ..., T]: a record starts wherever the position does not follow its neighbour
    by one (transformers' `find_packed_sequence_indices` rule), so it is the mask's own notion of a record."""
    bounds = [0]
    for index in range(1, len(position_ids)):
        if position_ids[index] != position_ids[index - 1] + 1:
            bounds.append(index)
    bounds.append(len(position_ids))
    return bounds


def _bounds_if_block_diagonal(mask: Any, position_ids: Any) -> list[int] | None:
    """The records' bounds when `mask` ([1, 1, T, T], True = attend) is exactly their block-diagonal causal
    mask, else None. Cached for the mask object: all layers of one forward pass share it."""
    global _verified
    if _verified is not None and _verified[0]() is mask:
        return _verified[1]
    import torch

    bounds: list[int] | None = None
    if mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[0] == 1 and mask.shape[1] == 1:
        positions = position_ids.reshape(-1).tolist()
        candidate = record_bounds(positions)
        if mask.shape[-1] == mask.shape[-2] == len(positions) and len(candidate) > 2:
            lengths = torch.tensor([b - a for a, b in itertools.pairwise(candidate)], device=mask.device)
            record = torch.repeat_interleave(torch.arange(len(lengths), device=mask.device), lengths)
            size = len(positions)
            expected = torch.ones(size, size, dtype=torch.bool, device=mask.device).tril_()
            expected &= record[:, None] == record[None, :]
            bounds = candidate if torch.equal(mask[0, 0], expected) else None
    _verified = (weakref.ref(mask), bounds)
    return bounds


def attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention-function signature: ([B, T, heads, head_dim], None). Per record where the mask
    is the records' block-diagonal causal mask, else transformers' SDPA function unchanged."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    bounds = None
    if (
        attention_mask is not None
        and position_ids is not None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2]
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
        and is_causal is not False
    ):
        bounds = _bounds_if_block_diagonal(attention_mask, position_ids)
    if bounds is None:
        return sdpa_attention_forward(  # type: ignore[no-any-return]
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            scale=scaling,
            is_causal=True,
            enable_gqa=grouped,
        )
        for start, end in itertools.pairwise(bounds)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the implementation (and SDPA's mask builder under its name) with transformers; its name.

    Registered behind `torch.compiler.disable`: inside compiled decoder layers (`FTO_TORCH_COMPILE=on`) the
    mask check and the loop over records run eagerly (one graph break per layer) instead of being traced."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, torch.compiler.disable(attention))  # type: ignore[no-untyped-call]
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
