"""What memory depends on in a model, read from its config.json: sizes and the linear layers of one block.

Why apart from the estimate: the shapes are facts about a model (Llama-like, GPT-2 and BERT families), the
estimate (`memory.estimate`) is what this trainer does with them. Pure: config.json as a dict in, a `ModelShape`
out; an architecture whose shapes are not known here is `UnsupportedModel`.

Parameters are counted from the layer shapes in config.json (embeddings, attention with grouped KV heads,
gated or plain MLP, norms, biases, tied or separate LM head, classifier head): Llama-3-8B gives 8.03e9 and
SmolLM2-135M 1.345e8, as the real models do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

LLAMA_LIKE = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2"})
GPT2_LIKE = frozenset({"gpt2"})
BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta", "distilbert"})
TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "gpt2"})


class UnsupportedModel(ValueError):
    """config.json describes an architecture whose shapes this module does not know."""


@dataclass(frozen=True)
class Linear:
    """A linear layer of one block: its name (as LoRA targetModules match it), shapes, and bias."""

    name: str
    fan_in: int
    fan_out: int
    bias: bool = False
    count: int = 1
    """How many of it per block (experts of a mixture-of-experts MLP)."""
    site: Literal["attention-in", "attention-out", "mlp-in", "mlp-out"] = "attention-in"
    """Which tensor it reads: linears at one site share their input."""

    @property
    def parameters(self) -> int:
        return self.count * (self.fan_in * self.fan_out + (self.fan_out if self.bias else 0))


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a model: sizes from config.json, the linear layers of one block."""

    family: Literal["llama", "gpt2", "bert"]
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    block_linears: tuple[Linear, ...]
    block_other: int
    """Parameters of one block outside its linear layers (norms, router)."""
    embedding: int
    """Input embeddings (token, position, token type) and their norm."""
    final_norm: int
    head: int
    """The LM head (0 when tied to the embeddings) or the classifier head."""
    head_name: str
    tied: bool
    norms_per_block: int = 2
    experts_per_token: int = 1
    num_labels: int | None = None

    @property
    def block_parameters(self) -> int:
        return sum(linear.parameters for linear in self.block_linears) + self.block_other

    @property
    def linear_parameters(self) -> int:
        """Parameters of the blocks' linear layers: what QLoRA quantizes, what autocast copies."""
        return self.layers * sum(linear.parameters for linear in self.block_linears)

    @property
    def parameters(self) -> int:
        return self.embedding + self.layers * self.block_parameters + self.final_norm + self.head

    def targets(self, target_modules: Sequence[str]) -> tuple[Linear, ...]:
        """The block linears LoRA adapts: `all-linear` is every one (peft leaves the head out), names match
        a module's last name as peft matches them."""
        if "all-linear" in target_modules:
            return self.block_linears
        wanted = set(target_modules)
        return tuple(linear for linear in self.block_linears if linear.name in wanted)


def _get(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = config.get(key)
        if value is not None:
            return value
    if default is None:
        raise UnsupportedModel(f"config.json has none of {', '.join(keys)}")
    return default


def model_shape(config: Mapping[str, Any], *, num_labels: int | None = None) -> ModelShape:
    """The shape of a Hugging Face model from its config.json; `num_labels` for a sequence classifier."""
    model_type = str(config.get("model_type", ""))
    if model_type in GPT2_LIKE:
        return _gpt2_shape(config, num_labels)
    if model_type in BERT_LIKE:
        return _bert_shape(config, model_type, num_labels)
    if model_type in LLAMA_LIKE or all(
        key in config for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    ):
        return _llama_shape(config, model_type, num_labels)
    raise UnsupportedModel(f"model_type {model_type!r}: no memory model for this architecture")


def _llama_shape(config: Mapping[str, Any], model_type: str, num_labels: int | None) -> ModelShape:
    vocab = int(_get(config, "vocab_size"))
    hidden = int(_get(config, "hidden_size"))
    heads = int(_get(config, "num_attention_heads"))
    kv_heads = int(_get(config, "num_key_value_heads", default=heads))
    head_dim = int(_get(config, "head_dim", default=hidden // heads))
    inter = int(_get(config, "intermediate_size"))
    experts = int(config.get("num_local_experts") or 1)
    q, kv = heads * head_dim, kv_heads * head_dim
    norms = 4 if model_type == "gemma2" else 2
    other = norms * hidden + (2 * head_dim if model_type == "qwen3" else 0) + (hidden * experts if experts > 1 else 0)
    tied = bool(config.get("tie_word_embeddings", model_type in TIED_BY_DEFAULT))
    if num_labels is not None:
        head, head_name = hidden * num_labels, "score"
    else:
        head, head_name = (0 if tied else vocab * hidden), "lm_head"
    return ModelShape(
        family="llama",
        model_type=model_type or "llama",
        vocab=vocab,
        hidden=hidden,
        layers=int(_get(config, "num_hidden_layers")),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=inter,
        block_linears=_llama_linears(config, model_type, hidden, q, kv, inter, experts),
        block_other=other,
        embedding=vocab * hidden,
        final_norm=hidden,
        head=head,
        head_name=head_name,
        tied=tied and num_labels is None,
        norms_per_block=norms,
        experts_per_token=int(config.get("num_experts_per_tok") or 1) if experts > 1 else 1,
        num_labels=num_labels,
    )


def _llama_linears(
    config: Mapping[str, Any], model_type: str, hidden: int, q: int, kv: int, inter: int, experts: int
) -> tuple[Linear, ...]:
    """One block's linear layers: attention, then the MLP (fused for phi3, per expert for Mixtral)."""
    qkv_bias = bool(config.get("attention_bias", False)) or model_type == "qwen2"
    o_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    attention: tuple[Linear, ...]
    if model_type == "phi3":
        attention = (Linear("qkv_proj", hidden, q + 2 * kv), Linear("o_proj", q, hidden, site="attention-out"))
        mlp: tuple[Linear, ...] = (
            Linear("gate_up_proj", hidden, 2 * inter, site="mlp-in"),
            Linear("down_proj", inter, hidden, site="mlp-out"),
        )
    else:
        attention = (
            Linear("q_proj", hidden, q, qkv_bias),
            Linear("k_proj", hidden, kv, qkv_bias),
            Linear("v_proj", hidden, kv, qkv_bias),
            Linear("o_proj", q, hidden, o_bias, site="attention-out"),
        )
        if experts > 1:  # Mixtral: w1 (gate), w3 (up), w2 (down) per expert
            mlp = (
                Linear("w1", hidden, inter, count=experts, site="mlp-in"),
                Linear("w3", hidden, inter, count=experts, site="mlp-in"),
                Linear("w2", inter, hidden, count=experts, site="mlp-out"),
            )
        else:
            mlp = (
                Linear("gate_proj", hidden, inter, mlp_bias, site="mlp-in"),
                Linear("up_proj", hidden, inter, mlp_bias, site="mlp-in"),
                Linear("down_proj", inter, hidden, mlp_bias, site="mlp-out"),
            )
    return attention + mlp


def _gpt2_shape(config: Mapping[str, Any], num_labels: int | None) -> ModelShape:
    hidden = int(_get(config, "n_embd", "hidden_size"))
    heads = int(_get(config, "n_head", "num_attention_heads"))
    inter = int(config.get("n_inner") or 4 * hidden)
    vocab = int(_get(config, "vocab_size"))
    positions = int(_get(config, "n_positions", "max_position_embeddings"))
    linears = (
        Linear("c_attn", hidden, 3 * hidden, True),
        Linear("c_proj", hidden, hidden, True, site="attention-out"),
        Linear("c_fc", hidden, inter, True, site="mlp-in"),
        Linear("c_proj", inter, hidden, True, site="mlp-out"),
    )
    return ModelShape(
        family="gpt2",
        model_type="gpt2",
        vocab=vocab,
        hidden=hidden,
        layers=int(_get(config, "n_layer", "num_hidden_layers")),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=inter,
        block_linears=linears,
        block_other=4 * hidden,
        embedding=(vocab + positions) * hidden,
        final_norm=2 * hidden,
        head=hidden * num_labels if num_labels is not None else 0,
        head_name="score" if num_labels is not None else "lm_head",
        tied=num_labels is None,
        num_labels=num_labels,
    )


def _bert_shape(config: Mapping[str, Any], model_type: str, num_labels: int | None) -> ModelShape:
    distil = model_type == "distilbert"
    hidden = int(_get(config, "dim" if distil else "hidden_size", "hidden_size"))
    inter = int(_get(config, "hidden_dim" if distil else "intermediate_size", "intermediate_size"))
    heads = int(_get(config, "n_heads" if distil else "num_attention_heads", "num_attention_heads"))
    vocab = int(_get(config, "vocab_size"))
    positions = int(_get(config, "max_position_embeddings"))
    types = 0 if distil else int(config.get("type_vocab_size", 2))
    names = ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2") if distil else (
        "query", "key", "value", "dense", "dense", "dense"
    )  # fmt: skip
    linears = (
        Linear(names[0], hidden, hidden, True),
        Linear(names[1], hidden, hidden, True),
        Linear(names[2], hidden, hidden, True),
        Linear(names[3], hidden, hidden, True, site="attention-out"),
        Linear(names[4], hidden, inter, True, site="mlp-in"),
        Linear(names[5], inter, hidden, True, site="mlp-out"),
    )
    labels = num_labels or 2
    if model_type == "bert":  # pooler + classifier
        head = hidden * hidden + hidden + (hidden * labels + labels if num_labels else 0)
    else:  # roberta's classification head / distilbert's pre_classifier: a dense layer, then the classifier
        head = (hidden * hidden + hidden + hidden * labels + labels) if num_labels else 0
    return ModelShape(
        family="bert",
        model_type=model_type,
        vocab=vocab,
        hidden=hidden,
        layers=int(_get(config, "n_layers" if distil else "num_hidden_layers", "num_hidden_layers")),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=inter,
        block_linears=linears,
        block_other=4 * hidden,
        embedding=(vocab + positions + types) * hidden + 2 * hidden,
        final_norm=0,
        head=head,
        head_name="classifier",
        tied=False,
        num_labels=num_labels,
    )
