"""Tiny models made here: a byte-level BPE tokenizer trained on a corpus, a random Llama, a LoRA adapter.

Why: no model may come from a hub, and a Llama a few layers deep and a few dozen units wide runs in
milliseconds per step on a busy CPU while exercising the real code paths (peft, flattening, saving,
serving). Everything is deterministic: the tokenizer depends only on the corpus and its size, the weights
only on the seed. Callers pass the sizes they need; the defaults are those of the trainer tests.

Heavy libraries (torch, tokenizers, transformers, peft) are imported inside the functions, so importing
this module costs nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

WORDS: tuple[str, ...] = (
    "apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum",
    "red", "green", "blue", "yellow", "small", "big", "fast", "slow", "happy", "sad",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "the", "a", "is", "are", "was", "of", "and", "what", "which", "how", "why",
    "answer", "question", "user", "assistant", "system", "hello", "thanks", "please",
)  # fmt: skip
"""The vocabulary of `word_corpus`: fruit, colours, numbers up to ten, a few function and chat words."""


def word_corpus(size: int = 400, seed: int = 0, words: Sequence[str] = WORDS) -> list[str]:
    """`size` lines of 3 to 12 words drawn from `words`, reproducible from `seed`."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(size)]


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 300, unk_token: str | None = UNK, add_bos: bool = True
) -> PreTrainedTokenizerFast:
    """A fast byte-level BPE tokenizer (GPT-2 style) trained on `texts`, as a transformers tokenizer.

    Special tokens come first, in this order: `unk_token` (unless None), `<s>`, `</s>`, `<pad>`; they are
    the tokenizer's unk/bos/eos/pad tokens. With `add_bos`, encoding prepends `<s>` (as Llama's does).
    `vocab_size` includes the 256 byte-level symbols and the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [token for token in (unk_token, BOS, EOS, PAD) if token is not None]
    tokenizer = Tokenizer(models.BPE(unk_token=unk_token))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    if add_bos:
        bos_id = specials.index(BOS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
        )
    named = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    if unk_token is not None:
        named["unk_token"] = unk_token
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **named)  # type: ignore[no-untyped-call]


def llama_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.02,
    **extra: Any,
) -> LlamaConfig:
    """A Llama config sized by the arguments, its vocabulary and special token ids from `tokenizer`.

    The MLP is twice as wide as the hidden size; input and output embeddings are not tied. A large
    `initializer_range` (e.g. 0.5) makes logits far apart, so greedy decoding does not hinge on float
    rounding. `extra` goes to the config as is (e.g. `num_labels`, `id2label` for a classifier).
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def build_causal_lm(folder: Path, tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, **config: Any) -> Path:
    """Save a random-weight Llama causal LM (weights from `seed`) and `tokenizer` as a Hugging Face folder.

    `config` is passed to `llama_config` (sizes, `initializer_range`); returns `folder`.
    """
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tokenizer, **config))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def build_lora_adapter(
    base: Path,
    folder: Path,
    *,
    seed: int = 1,
    rank: int = 4,
    alpha: int = 8,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> Path:
    """Save a LoRA adapter over the causal LM in `base`, with `base`'s tokenizer, as a PEFT folder.

    Its weights are random (from `seed`) rather than peft's zero-initialised B matrix, so applying the
    adapter changes the model's outputs. Returns `folder`.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=False, task_type="CAUSAL_LM"
    )
    get_peft_model(model, config).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(folder))
    return folder
