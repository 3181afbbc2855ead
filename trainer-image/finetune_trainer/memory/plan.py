"""Will this training plan fit the accelerator it asks for? Peak memory per process, before a GPU is requested.

Why: a full fine-tune of an 8B model under plain DDP needs far more than any GPU has, and without a plan a
user learns it after queueing for the GPUs. This module is pure (no torch; the base model's config.json as
a dict in, dataclasses out), so the operator's admission or a CPU validation pod can run it, and unit
tests pin it down. It models what *this* trainer does (`modeling.py`, `train.py`), not training in general.

Parameters are counted from the layer shapes in config.json (embeddings, attention with grouped KV heads,
gated or plain MLP, norms, biases, tied or separate LM head, classifier head): Llama-3-8B gives 8.03e9 and
SmolLM2-135M 1.345e8, as the real models do.

Per process, in bytes (P parameters, P_t trainable, N shards; mixed = bf16/fp16 autocast, else fp32):

- weights: full: 4P (fp32 master weights: the trainer loads full fine-tunes in fp32 and autocasts);
  LoRA: 2P (mixed) or 4P (fp32) for the frozen base, 4 per adapter parameter; QLoRA: NF4 with double
  quantization, 0.516 bytes per quantized parameter (4 bits + 8-bit absmax per 64 + fp32 per 256 blocks;
  Dettmers et al. 2023, "QLoRA"), and 4 bytes for embeddings, norms and the head, which
  `prepare_model_for_kbit_training` casts to fp32. FSDP (full shard) divides by N and adds two gathered
  units (decoder layers) in the compute dtype.
- gradients: 4 P_t (fp32, as the trainable weights), / N with FSDP; plain DDP (N > 1, no sharding) adds
  its reducer buckets, another 4 P_t (torch's `gradient_as_bucket_view` is off).
- optimizer: AdamW (fused, the Trainer's default) keeps two fp32 moments: 8 P_t; 8-bit AdamW 2 P_t.
  Weights + gradients + optimizer = 16 bytes per parameter for mixed-precision Adam, as in the ZeRO paper
  (Rajbhandari et al. 2020, section 3.1: 2 + 2 + 12); here 4 + 4 + 8, since the working copy is fp32.
- activations: the tensors autograd saves for backward, per token of a micro-batch. Causal-LM batches are
  flattened (`DataCollatorWithFlattening`), so a micro-batch holds at most T = batchSize x maxSeqLength
  tokens and no padding; classifier batches are padded to their longest record (at most the same T).
  Per decoder layer the count follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
  Transformer Models", section 4.1: 34 h bytes per token for a GPT layer in fp16 plus 5 a s bytes of
  attention scores) but itemised for this trainer's Llama-style layer (RMSNorm in fp32, SwiGLU, RoPE,
  fused SDPA that stores no scores): the input of every linear layer that has a trainable weight (under
  autocast, one bf16 copy per consumer), each LoRA adapter's dropout mask and input copy, the norms' fp32
  inputs, q/k/v/output of attention (k and v repeated to all heads when a mask is used), the MLP's three
  I-wide tensors. Flattened micro-batches of several sequences need a block-diagonal mask: transformers
  passes it to SDPA as a T x T boolean, which torch converts to the compute dtype and saves per layer (a
  T^2 term; a micro-batch of 1 is one sequence, needs no mask and gets the causal kernel). Then the
  logits: the head's output, its fp32 copy and log-softmax, and the gradient buffers at the start of
  backward, about (12 + 2) V bytes per token. Mixed precision also saves the bf16 copies autocast makes of
  the fp32 weights (2 bytes per trainable linear weight). Gradient checkpointing keeps one hidden state
  per layer and recomputes one layer at a time (Chen et al. 2016). Other architectures (GPT-2, BERT) use
  Korthikanti's per-layer count with I for the MLP width.
- overhead: GPU: 0.75 GiB (CUDA context, cuBLAS workspace), 0.5 GiB more with several processes (NCCL),
  and 5% of the rest for the caching allocator's fragmentation; CPU: 1 GiB (Python, torch, the data).

The peak is not the sum: with one micro-batch per step the Trainer frees gradients after every optimizer
step, so memory peaks either at the start of backward (weights, optimizer, activations and the head's
gradient) or at the optimizer step (weights, optimizer, gradients); with gradient accumulation the
gradients live through the next micro-batches and the peak holds all of them. `total` is that peak plus
the overhead; `gradients` in the breakdown is the full gradient size whether or not it is held at the peak.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from finetune_trainer.memory.gpus import GPUS, Accelerator, GiB

if TYPE_CHECKING:
    from finetune_trainer.config import TrainerConfig

MethodType = Literal["full", "lora", "qlora"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw-8bit"]
Sharding = Literal["none", "fsdp"]

LLAMA_LIKE = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2"})
GPT2_LIKE = frozenset({"gpt2"})
BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta", "distilbert"})
TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "gpt2"})
QLORA_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
"""NF4 with double quantization: 4 bits, an 8-bit absmax per 64 weights, an fp32 constant per 256 blocks."""

CUDA_CONTEXT = 3 * GiB // 4
NCCL_BUFFERS = GiB // 2
CPU_PROCESS = GiB
FRAGMENTATION = 0.05


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
        block_linears=attention + mlp,
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


@dataclass(frozen=True)
class Method:
    """How the weights are trained: `type` as in the spec; the LoRA fields apply to lora and qlora."""

    type: MethodType = "lora"
    rank: int = 16
    target_modules: tuple[str, ...] = ("all-linear",)
    dropout: float = 0.05


@dataclass(frozen=True)
class Setup:
    """One training process's plan, in the spec's terms."""

    method: Method = field(default_factory=Method)
    precision: Precision = "auto"
    optimizer: Optimizer = "adamw"
    sharding: Sharding = "none"
    world_size: int = 1
    """Processes in the run (workers x processes per worker); FSDP shards over all of them."""
    gradient_checkpointing: bool = False
    micro_batch: int = 8
    gradient_accumulation: int = 1
    seq_length: int = 2048
    task: Literal["causal-lm", "sequence-classification"] = "causal-lm"


@dataclass(frozen=True)
class Breakdown:
    """Per-process bytes by kind, and the peak (`total`): see the module docstring for the formulas."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    total: int
    peak_at: Literal["backward", "optimizer step"]


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


def resolve_precision(requested: str, device: Accelerator) -> str:
    """`auto` as the trainer resolves it (`modeling.choose_precision`): bf16 or fp16 on GPUs, fp32 on CPU."""
    if requested != "auto":
        return requested
    if device.kind == "cpu":
        return "fp32"
    return "bf16" if device.bf16 else "fp16"


def trainable_parameters(shape: ModelShape, method: Method) -> int:
    if method.type == "full":
        return shape.parameters
    adapters = sum(method.rank * (t.fan_in + t.fan_out) * t.count for t in shape.targets(method.target_modules))
    head = shape.head if shape.num_labels is not None else 0  # peft trains a classifier head fully
    return shape.layers * adapters + head


def _weights(shape: ModelShape, setup: Setup, mixed: bool) -> int:
    """Bytes of the model's weights held by one process (before sharding)."""
    adapters = trainable_parameters(shape, setup.method)
    if setup.method.type == "full":
        return 4 * shape.parameters
    if setup.method.type == "qlora":
        quantized = shape.linear_parameters
        return math.ceil(QLORA_BYTES * quantized) + 4 * (shape.parameters - quantized) + 4 * adapters
    return (2 if mixed else 4) * shape.parameters + 4 * adapters


def _layer_activations(shape: ModelShape, setup: Setup, mixed: bool, masked: bool, on_cpu: bool) -> float:
    """Bytes saved for backward per token in one block (see the module docstring)."""
    c = 2 if mixed else 4
    method = setup.method
    h, inter = shape.hidden, shape.intermediate
    if shape.family != "llama":  # Korthikanti et al.: (8h + 2I) elements + 2h bytes of dropout masks
        return (8 * h + 2 * inter) * c + 2 * h
    full = method.type == "full"
    adapted = {t.name for t in shape.targets(method.target_modules)} if not full else set()
    # Dropout keeps a bool mask on GPUs; on CPU torch multiplies by a noise tensor of the input's dtype.
    mask_byte = 0 if method.dropout == 0 else (c if on_cpu else 1)
    # A norm saves its fp32 input; a trainable norm weight also the normalized fp32 tensor.
    total = shape.norms_per_block * (4 * h + (4 * h if full else 0))
    if shape.model_type == "qwen3":
        total += 4 * shape.head_dim * (shape.heads + shape.kv_heads)
    # Norm outputs are fp32 under full mixed precision (fp32 norm weights) and QLoRA (norms cast to fp32):
    # autocast then makes one bf16 copy per consumer, and every trainable consumer saves its own.
    fp32_inputs = mixed and (full or method.type == "qlora")
    groups: dict[str, list[Linear]] = {}
    for linear in shape.block_linears:
        groups.setdefault(linear.site, []).append(linear)
    for site, linears in groups.items():
        fan_in = linears[0].fan_in
        routed = shape.experts_per_token if linears[0].count > 1 else 1
        if full and site != "attention-out":  # o_proj reads SDPA's output, counted with attention below
            copies = len(linears) if (fp32_inputs and site.endswith("-in")) else 1
            total += routed * copies * fan_in * c
        for linear in linears:
            if linear.name in adapted:
                total += routed * (mask_byte + c) * fan_in + method.rank * c
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    kv_saved = 2 * q if masked else 2 * kv  # repeat_kv copies when SDPA gets a mask, else enable_gqa
    total += c * (2 * q + kv_saved) + 4 * shape.heads
    total += shape.experts_per_token * 3 * c * inter  # SwiGLU: gate output, its SiLU, up output
    return total


def _head_activations(shape: ModelShape, setup: Setup, mixed: bool) -> float:
    """Bytes per token after the last block: final norm, the head's input, logits and the loss."""
    c = 2 if mixed else 4
    full = setup.method.type == "full"
    norm = 4 * shape.hidden + (4 * shape.hidden if full else 0) if shape.final_norm else 0
    head_input = c * shape.hidden if full or shape.num_labels is not None else 0
    if shape.num_labels is not None:
        return norm + head_input + 16 * shape.num_labels
    return norm + head_input + (12 + (2 if mixed else 0)) * shape.vocab


def _activations(shape: ModelShape, setup: Setup, mixed: bool, micro_batch: int, on_cpu: bool) -> int:
    """Bytes saved for backward by one micro-batch, at the start of backward."""
    tokens = micro_batch * setup.seq_length
    c = 2 if mixed else 4
    masked = setup.task == "causal-lm" and micro_batch > 1
    per_layer = _layer_activations(shape, setup, mixed, masked, on_cpu)
    mask = c * tokens * tokens if masked else 0  # the block-diagonal mask, converted and saved per layer
    if setup.task == "sequence-classification":
        mask = c * micro_batch * setup.seq_length**2  # one padding mask, shared by the layers
    full = setup.method.type == "full"
    if setup.gradient_checkpointing:
        stream = 2 if (mixed and setup.method.type == "lora") else 4
        layers = tokens * (shape.layers * stream * shape.hidden + per_layer) + mask
    else:
        layers = tokens * shape.layers * per_layer + (shape.layers * mask if masked else mask)
    after_blocks = tokens * _head_activations(shape, setup, mixed)
    copies = 0
    if mixed and full and setup.sharding == "none":  # autocast's bf16 copies of the fp32 weights
        head = shape.head or (shape.embedding if shape.tied else 0)
        kept = shape.block_parameters if setup.gradient_checkpointing else shape.linear_parameters
        copies = 2 * (kept + head)
    return math.ceil(layers + after_blocks + copies)


def estimate(shape: ModelShape, setup: Setup, device: Accelerator, micro_batch: int | None = None) -> Breakdown:
    """The per-process breakdown and peak of `setup` on `device` (precision resolved for the device)."""
    batch = setup.micro_batch if micro_batch is None else micro_batch
    precision = resolve_precision(setup.precision, device)
    mixed = precision in ("bf16", "fp16") or setup.method.type == "qlora"
    shards = setup.world_size if setup.sharding == "fsdp" else 1
    full = setup.method.type == "full"
    trainable = trainable_parameters(shape, setup.method)
    weights = _weights(shape, setup, mixed)
    gradients = 4 * trainable
    optimizer = (2 if setup.optimizer == "adamw-8bit" else 8) * trainable
    first_gradient = 4 * (shape.head or shape.embedding) if full else 0  # the head's, made first in backward
    buckets = 0  # DDP's reducer buckets, allocated with the model and held all along
    if shards > 1:
        unit = max(shape.block_parameters, shape.embedding, shape.head)  # what FSDP gathers at once
        weights = math.ceil(weights / shards) + 2 * unit * (2 if mixed else 4)
        gradients = math.ceil(gradients / shards) + (4 * unit if full else 0)  # + one unit's reduce-scatter
        optimizer = math.ceil(optimizer / shards)
        first_gradient = 4 * unit if full else 0
    elif setup.world_size > 1:
        buckets = gradients
    activations = _activations(shape, setup, mixed, batch, device.kind == "cpu")
    # With accumulation, the gradients of the earlier micro-batches are held while this one's activations are.
    backward = activations + buckets + (gradients if setup.gradient_accumulation > 1 else first_gradient)
    step = gradients + buckets
    peak_at: Literal["backward", "optimizer step"] = "backward" if backward >= step else "optimizer step"
    peak = weights + optimizer + max(backward, step)
    gradients += buckets
    if device.kind == "cpu":
        overhead = CPU_PROCESS + math.ceil(FRAGMENTATION * peak)
    else:
        overhead = CUDA_CONTEXT + (NCCL_BUFFERS if setup.world_size > 1 else 0) + math.ceil(FRAGMENTATION * peak)
    return Breakdown(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        overhead=overhead,
        total=peak + overhead,
        peak_at=peak_at,
    )


def largest_micro_batch(shape: ModelShape, setup: Setup, device: Accelerator, limit: int = 4096) -> int:
    """The largest micro-batch whose peak fits `device` (0 when even one sequence does not)."""
    if estimate(shape, setup, device, 1).total > device.memory_bytes:
        return 0
    low, high = 1, limit
    while low < high:  # the peak grows with the micro-batch: bisect
        middle = (low + high + 1) // 2
        if estimate(shape, setup, device, middle).total <= device.memory_bytes:
            low = middle
        else:
            high = middle - 1
    return low


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
        tokens_per_micro_batch=setup.micro_batch * setup.seq_length,
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
    tighter bound than the worst case of every record being maxSeqLength long."""
    lora = cfg.method.lora
    hp = cfg.hyperparameters
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
        seq_length=min(cfg.dataset.max_seq_length, longest_record or cfg.dataset.max_seq_length),
        task=cfg.base_model.task,
    )


def default_gpu() -> Accelerator:
    """The budget when a spec names no GPU type: the smallest common GPU, so the check errs on the safe side."""
    return min(GPUS.values(), key=lambda a: a.memory_bytes)
