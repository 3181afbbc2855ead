"""Padding-free batches: a flattened batch must give exactly the losses of the sequences run one by one.

This guards the reason the trainer sets `use_cache = False`: with a KV cache object present, transformers
skips the packed-sequence mask and tokens would attend across example boundaries.
"""

from __future__ import annotations

from typing import Any

import pytest


def tiny_model(use_cache: bool) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    model.eval()  # type: ignore[no-untyped-call]
    model.config.use_cache = use_cache
    return model


def token_loss_sum(model: Any, batch: dict[str, Any]) -> float:
    import torch

    with torch.no_grad():
        output = model(**batch)
    targets = int((batch["labels"][:, 1:] != -100).sum())
    return float(output.loss) * targets


def test_flattened_batch_matches_separate_sequences() -> None:
    import torch
    from transformers import DataCollatorWithFlattening

    sequences = [[3, 4, 5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15]]
    features = [{"input_ids": s, "labels": [-100, *s[1:]]} for s in sequences]
    model = tiny_model(use_cache=False)
    separate = sum(
        token_loss_sum(model, {"input_ids": torch.tensor([f["input_ids"]]), "labels": torch.tensor([f["labels"]])})
        for f in features
    )
    flat = DataCollatorWithFlattening(return_position_ids=True)(features)  # type: ignore[no-untyped-call]
    assert flat["input_ids"].shape == (1, sum(map(len, sequences)))
    packed = token_loss_sum(model, dict(flat))
    assert packed == pytest.approx(separate, rel=1e-5)
