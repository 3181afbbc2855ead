"""Peak memory per training process, by kind: the formulas of the memory plan (pure).

Why apart from the plan: these are the per-byte models of what this trainer holds (`training/modeling.py`,
`training/train.py`); the decisions built on them (batchSize auto, checkpointing, suggestions, the status's
`MemoryPlan`) are `memory.plan`. The model's shapes come from `memory.shapes`.

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
  T^2 term; a micro-batch of 1 is one sequence, needs no mask and gets the causal kernel). On CPU, the
  families `record_attention` names attend record by record instead (`training.segmented_attention`): SDPA
  gets no mask, so neither the per-layer T^2 copy nor the repeated k and v are saved. Then the
  head: causal LMs trained without FSDP compute the loss at label positions only, chunk by chunk
  (`training.loss`), so no logits live to backward: per token the hidden state's gradient (computed in the
  forward pass), and once, a chunk of fp32 logits (`HEAD_CHUNK_ELEMENTS`, or fewer rows in a short
  micro-batch) three times over (logits, log-sum-exp's temporary, the softmax's cast) plus, when the
  head's weight is trained, its fp32 gradient (V x H x 4). Classifiers and FSDP runs keep the stock loss:
  the head's output, its fp32 copy and log-softmax, and the gradient buffers at the start of backward,
  about (12 + 2) V bytes per token. Mixed precision also saves the bf16 copies autocast makes of the fp32
  weights (2 bytes per trainable linear weight). Gradient checkpointing keeps one hidden state
  per layer and recomputes one layer at a time (Chen et al. 2016). Other architectures (GPT-2, BERT) use
  Korthikanti's per-layer count with I for the MLP width.
- DPO (`objective: dpo`): a micro-batch of B pairs is one flattened row of 2B sequences (chosen and
  rejected), so the activation terms above count 2 x B x the per-sequence length of tokens (at least
  double SFT's for the same batchSize), with the block-diagonal mask even for one pair. The reference pass
  (LoRA: the same model with the adapter disabled) runs under no_grad before the policy's forward and keeps
  2 numbers per pair: its transient (one layer's working set and one chunk of logits: the log-probabilities
  are taken at answer positions, chunk by chunk, as the SFT loss, `preference.label_position_logps`) is
  freed before the policy's activations are built and is below them, so it adds nothing at the peak. The
  policy's head term is the SFT loss's (the selected hidden states and one chunk of logits; the backward
  projects each chunk again instead of keeping a gradient from the forward pass). Full fine-tuning
  precomputes the reference log-probabilities before training (no frozen copy of the weights), which adds
  nothing either.
- SimPO (`objective: simpo`): the same two sequences per pair and no reference at all (no pass, no
  precomputed log-probabilities): the same activation terms as DPO, and nothing else.
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
from dataclasses import dataclass, field
from typing import Literal

from finetune_trainer.memory.gpus import Accelerator, GiB
from finetune_trainer.memory.shapes import Linear, ModelShape

MethodType = Literal["full", "lora", "qlora"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw-8bit"]
Sharding = Literal["none", "fsdp"]

QLORA_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
"""NF4 with double quantization: 4 bits, an 8-bit absmax per 64 weights, an fp32 constant per 256 blocks."""

CUDA_CONTEXT = 3 * GiB // 4
NCCL_BUFFERS = GiB // 2
CPU_PROCESS = GiB
FRAGMENTATION = 0.05


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
    objective: Literal["sft", "dpo", "simpo"] = "sft"
    """dpo, simpo: each micro-batch entry is a pair of sequences of up to `seq_length` tokens each."""

    @property
    def sequences_per_entry(self) -> int:
        """Sequences one micro-batch entry puts in the row: 2 for a preference pair (dpo, simpo), else 1."""
        return 1 if self.objective == "sft" else 2


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


RECORD_ATTENTION_FAMILIES = frozenset({"llama"})
"""model_type values whose layers are all full causal attention (no sliding window, no soft-capping, no position
bias): per-record causal SDPA is then the block-diagonal mask's arithmetic exactly (`training.segmented_attention`)."""


def record_attention(model_type: str | None, on_cpu: bool) -> bool:
    """Whether a flattened micro-batch attends record by record (`training.segmented_attention`) rather than
    through SDPA with a T x T mask: on CPU, for `RECORD_ATTENTION_FAMILIES`. Not on GPUs, where it was not
    measured (flash-attn's variable-length kernel serves them where installed)."""
    return on_cpu and model_type in RECORD_ATTENTION_FAMILIES


HEAD_CHUNK_ELEMENTS = 1 << 22
"""Logit elements per chunk of the label-position loss (`training.loss`): 16 MiB in fp32."""


def label_position_loss(setup: Setup) -> bool:
    """Whether the run computes its loss chunk by chunk at label positions (`training.train.trainer_class`)."""
    return setup.task == "causal-lm" and setup.sharding == "none"


def _head_constant(shape: ModelShape, setup: Setup, tokens: int) -> int:
    """Bytes the label-position loss holds beyond its per-token tensors: three chunks of fp32 logits (a chunk
    is `HEAD_CHUNK_ELEMENTS // V` rows, or the micro-batch's tokens if fewer), and the head's fp32 weight
    gradient (full fine-tuning) kept from the forward pass to the backward pass."""
    if not label_position_loss(setup) or shape.num_labels is not None:
        return 0
    rows = min(tokens, max(1, HEAD_CHUNK_ELEMENTS // max(1, shape.vocab)))
    trained_head = 4 * shape.vocab * shape.hidden if setup.method.type == "full" else 0
    return 3 * 4 * rows * shape.vocab + trained_head


def _head_activations(shape: ModelShape, setup: Setup, mixed: bool) -> float:
    """Bytes per token after the last block: final norm, the head's input, logits and the loss."""
    c = 2 if mixed else 4
    full = setup.method.type == "full"
    norm = 4 * shape.hidden + (4 * shape.hidden if full else 0) if shape.final_norm else 0
    if shape.num_labels is None and label_position_loss(setup):
        # the hidden state's gradient, the label mask; a frozen head (not full) also gathers each target's row
        # and builds the gradient in fp32 (`training.loss.frozen_head_cross_entropy`): 4 bytes per hidden entry
        return norm + c * shape.hidden + 1 + (0 if full else 4 * shape.hidden)
    head_input = c * shape.hidden if full or shape.num_labels is not None else 0
    if shape.num_labels is not None:
        return norm + head_input + 16 * shape.num_labels
    return norm + head_input + (12 + (2 if mixed else 0)) * shape.vocab


def _activations(shape: ModelShape, setup: Setup, mixed: bool, micro_batch: int, on_cpu: bool) -> int:
    """Bytes saved for backward by one micro-batch, at the start of backward."""
    sequences = micro_batch * setup.sequences_per_entry  # dpo, simpo: chosen and rejected, one row
    tokens = sequences * setup.seq_length
    c = 2 if mixed else 4
    masked = setup.task == "causal-lm" and sequences > 1 and not record_attention(shape.model_type, on_cpu)
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
    after_blocks = tokens * _head_activations(shape, setup, mixed) + _head_constant(shape, setup, tokens)
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
