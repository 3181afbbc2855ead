"""Tiny models built at test time: a byte-level BPE tokenizer trained here, a Llama causal LM, a LoRA
adapter for it, and a Llama sequence classifier. Nothing comes from a model hub.

The weights use a large initializer range so that logits are far apart: greedy decoding then does not
hinge on float rounding, and batched and one-by-one generation must agree exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a fine tuned model answers questions about kubernetes operators",
    "hello world, this is a tiny language model for tests",
    "café déjà vu naïve résumé 日本語 テスト emoji 🙂 done",
    "serving models over an openai compatible api with streaming",
] * 20

LABELS = ["negative", "neutral", "positive"]


def train_tokenizer(folder: Path) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style) trained on CORPUS, saved as a HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


def _llama_config(tokenizer: Any, **extra: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False, **extra)


def build_causal_lm(folder: Path, seed: int = 0) -> Path:
    """A two-layer Llama with the test tokenizer, saved with full weights."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = train_tokenizer(folder)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer))
    model.save_pretrained(folder)
    return folder


def build_lora_adapter(base: Path, folder: Path, seed: int = 1) -> Path:
    """A LoRA adapter with non-zero weights (so it changes outputs) over `base`, with the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def build_classifier(folder: Path, seed: int = 2) -> Path:
    """A two-layer Llama sequence classifier with labels in its config (full weights)."""
    import torch
    from transformers import LlamaForSequenceClassification

    tokenizer = train_tokenizer(folder)
    torch.manual_seed(seed)
    config = _llama_config(tokenizer, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                           label2id={label: i for i, label in enumerate(LABELS)})
    LlamaForSequenceClassification(config).save_pretrained(folder)
    return folder


def write_serve_json(path: Path, **fields: Any) -> Path:
    path.write_text(json.dumps(fields), encoding="utf-8")
    return path
