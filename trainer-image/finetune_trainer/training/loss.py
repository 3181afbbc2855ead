"""The causal language-model loss computed only where a label is, without materialising the logits.

Why: the stock path (`LlamaForCausalLM.forward` with `labels`) projects every position of the flattened
micro-batch onto the whole vocabulary (49,152 for SmolLM2), upcasts those logits to fp32, takes a
log-softmax, and keeps logits, softmax and their gradients alive across the backward pass: 12 bytes per
token per vocabulary entry, the largest activation of a small model. It also projects prompt positions and
each example's last position, whose loss is masked out (`-100`) and thrown away.

Here the model runs with `logits_to_keep=1` (one position projected, then discarded), the final hidden
states are taken from the decoder's output, the positions whose *next* token carries a label are selected,
and `FusedLinearCrossEntropy` projects them chunk by chunk: each chunk's logits, softmax, loss and the
gradients of the hidden states (and of the head's weight when it is trained) are computed in the forward
pass and the chunk is dropped, so the peak is one chunk of logits whatever the batch, and the backward pass
is two stored tensors scaled by the incoming gradient. A head that is not trained (LoRA) takes a block of many
rows against a slice of the vocabulary at a time instead, with the softmax taken online across the slices
(`frozen_head_cross_entropy`): the same logit budget in wider products. The arithmetic is the same cross-entropy (fp32
softmax), reduced as transformers reduces it: summed over labelled tokens and divided by the Trainer's
`num_items_in_batch` when it passes one (gradient accumulation), else by the count of labelled tokens.

Where it applies (`applies`): causal LMs whose output head is a plain `nn.Linear` without bias (Llama,
Qwen, Mistral, SmolLM2, GPT-2-style tied heads), that take `logits_to_keep`, with no logit soft-capping or
scaling, outside FSDP (its head weight is a shard outside the forward). Anything else, evaluation
(`return_outputs`), label smoothing and a custom loss keep the Trainer's own path. The only entry point for
training is `with_label_position_loss`, used by `train.trainer_class`.

Preference tuning (`preference.label_position_logps`) uses the same pieces: `final_hidden` and
`label_positions`, and `token_logps`, the per-token log-probabilities chunk by chunk (its backward projects
each chunk again, since a preference loss weighs each token by its sequence's gradient).
"""

from __future__ import annotations

import inspect
from typing import Any

from finetune_trainer.memory.estimate import HEAD_CHUNK_ELEMENTS

CHUNK_LOGIT_ELEMENTS = HEAD_CHUNK_ELEMENTS
"""Logit elements per chunk (16 MiB in fp32; the memory plan counts them): 85 rows of a 49k vocabulary."""
IGNORE = -100


def chunk_rows(vocab: int, elements: int = CHUNK_LOGIT_ELEMENTS) -> int:
    """Rows per chunk so one chunk's fp32 logits hold about `elements` values (at least 1 row)."""
    return max(1, elements // max(1, vocab))


def rows_cross_entropy(hidden: Any, weight: Any, targets: Any, rows: int) -> tuple[Any, Any, Any]:
    """(summed cross-entropy, its gradient in `hidden`, in `weight` (fp32; None when `weight` is frozen)), `rows`
    rows of logits at a time: each chunk's softmax gives both gradients at once, so a trained head costs three
    products per chunk."""
    import torch

    compute = hidden.dtype
    w = weight.to(compute)
    grad_hidden = torch.empty_like(hidden)
    trained = weight.requires_grad
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if trained else None
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        h = hidden[start : start + rows]
        t = targets[start : start + rows]
        logits = (h @ w.t()).float()
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, t.unsqueeze(1)).squeeze(1)
        total += (lse - picked).sum()
        probs = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
        probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0  # d CE / d logits
        probs = probs.to(compute)
        grad_hidden[start : start + rows] = probs @ w
        if grad_weight is not None:
            grad_weight += (probs.t() @ h).float()
    return total, grad_hidden, grad_weight


MIN_COLUMNS = 1024
"""Fewest vocabulary entries per slice of `frozen_head_cross_entropy` (where the vocabulary has that many): below
that the products get thin again."""


def frozen_head_cross_entropy(
    hidden: Any, weight: Any, targets: Any, elements: int, columns: int | None = None
) -> tuple[Any, Any]:
    """(summed cross-entropy of `hidden [N, H] @ weight.T` against `targets`, its gradient in `hidden`) for a head
    that is not trained, holding at most `elements` logits at a time.

    Why not row chunks: a chunk of 85 rows against the whole vocabulary (what 16 MiB of a 49k vocabulary holds)
    makes thin products; here a block of up to all N rows meets a slice of the vocabulary (`columns` entries,
    by default as many as `elements` allows), and the softmax is taken online across slices, as flash
    attention does across keys: a running maximum m and sum s per row, and G, the running `exp(logits - m) @
    W_slice` sum, rescaled whenever m grows. At the end `G / s` is `softmax @ W`, so the hidden state's gradient
    is `G / s - W[target]` and each slice's logits are used once: two products per slice, one exponential per
    logit, nothing kept for the backward pass but the gradient. Measured on SmolLM2's head (docs/benchmarks.md)."""
    import torch

    rows_total, vocab = hidden.shape[0], weight.shape[0]
    narrowest = min(vocab, MIN_COLUMNS)
    block = max(1, min(rows_total, elements // narrowest))
    width = columns or min(vocab, max(narrowest, elements // block))
    compute = hidden.dtype
    w = weight.to(compute)
    target_rows = w[targets]  # [N, H]: each row's target embedding, for the picked logit and the gradient
    picked = (hidden.float() * target_rows.float()).sum(dim=1)
    grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, rows_total, block):
        h = hidden[start : start + block]
        peak = torch.full((h.shape[0],), -torch.inf, dtype=torch.float32, device=h.device)
        mass = torch.zeros_like(peak)
        acc = grad_hidden[start : start + block].zero_()
        for first in range(0, vocab, width):
            slice_w = w[first : first + width]
            logits = (h @ slice_w.t()).float()
            new_peak = torch.maximum(peak, logits.amax(dim=1))
            rescale = torch.exp(peak - new_peak)
            probs = logits.sub_(new_peak.unsqueeze(1)).exp_()  # exp(logits - m), in place of the logits
            mass = mass * rescale + probs.sum(dim=1)
            acc.mul_(rescale.unsqueeze(1))
            if compute == torch.float32:
                acc.addmm_(probs, slice_w)
            else:
                acc += (probs.to(compute) @ slice_w).float()
            peak = new_peak
        total += (peak + mass.log()).sum()  # the rows' log-sum-exp
        acc.div_(mass.unsqueeze(1))
    total -= picked.sum()
    grad_hidden -= target_rows.float()
    return total, grad_hidden.to(compute)


def _fused_function() -> Any:
    import torch

    class FusedLinearCrossEntropy(torch.autograd.Function):
        """sum_i CE(hidden_i @ weight.T, target_i), with its gradients computed chunk by chunk in forward."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, rows: int) -> Any:
            want_weight = weight.requires_grad
            if not want_weight:  # a frozen head (LoRA): many rows against slices of the vocabulary, one pass
                total, grad_hidden = frozen_head_cross_entropy(hidden, weight, targets, rows * weight.shape[0])
                grad_weight = None
            else:
                total, grad_hidden, grad_weight = rows_cross_entropy(hidden, weight, targets, rows)
            ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else torch.empty(0))
            ctx.want_weight = want_weight
            ctx.weight_dtype = weight.dtype
            return total

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            grad_hidden, grad_weight = ctx.saved_tensors
            scale = grad_output.to(grad_hidden.dtype)
            weight_grad = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.want_weight else None
            return grad_hidden * scale, weight_grad, None, None

    return FusedLinearCrossEntropy


_FUNCTION: Any = None


def fused_linear_cross_entropy(hidden: Any, weight: Any, targets: Any, rows: int | None = None) -> Any:
    """Summed cross-entropy of `hidden [N, H] @ weight.T [H, V]` against `targets [N]`, never holding more
    logits than `rows` rows of the whole vocabulary (default: `chunk_rows(V)`): a trained head in chunks of
    `rows` rows, a frozen one in blocks of rows against vocabulary slices (`frozen_head_cross_entropy`)."""
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _fused_function()
    return _FUNCTION.apply(hidden, weight, targets, rows or chunk_rows(weight.shape[0]))


def _token_logps_function() -> Any:
    import torch

    class ChunkedTokenLogps(torch.autograd.Function):
        """log softmax(hidden_i @ weight.T)[target_i] per row, chunk by chunk; the backward recomputes each chunk.

        Unlike `FusedLinearCrossEntropy` the gradient cannot be computed in the forward pass: a preference loss
        weighs each token by its sequence's (unknown until the loss is formed), so the forward keeps only
        each row's log-sum-exp and the backward projects each chunk again (one extra head matmul over the
        selected rows, in exchange for never holding more than one chunk of logits)."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, rows: int) -> Any:
            w = weight.to(hidden.dtype)
            out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            lse = torch.empty_like(out)
            for start in range(0, hidden.shape[0], rows):
                logits = (hidden[start : start + rows] @ w.t()).float()
                lse[start : start + rows] = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, targets[start : start + rows].unsqueeze(1)).squeeze(1)
                out[start : start + rows] = picked - lse[start : start + rows]
            ctx.save_for_backward(hidden, weight, targets, lse)
            ctx.rows = rows
            return out

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            hidden, weight, targets, lse = ctx.saved_tensors
            rows = ctx.rows
            w = weight.to(hidden.dtype)
            want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            grad_hidden = torch.empty_like(hidden) if want_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
            for start in range(0, hidden.shape[0], rows):
                h = hidden[start : start + rows]
                t = targets[start : start + rows]
                g = grad_out[start : start + rows].float()
                # d logp_t / d logits = onehot(t) - softmax; times the incoming gradient of each row
                probs = (h @ w.t()).float().sub_(lse[start : start + rows].unsqueeze(1)).exp_()
                probs.mul_(-g.unsqueeze(1))
                probs[torch.arange(t.shape[0], device=t.device), t] += g
                probs = probs.to(hidden.dtype)
                if grad_hidden is not None:
                    grad_hidden[start : start + rows] = probs @ w
                if grad_weight is not None:
                    grad_weight += (probs.t() @ h).float()
            weight_grad = grad_weight.to(weight.dtype) if grad_weight is not None else None
            return grad_hidden, weight_grad, None, None

    return ChunkedTokenLogps


_LOGPS: Any = None


def token_logps(hidden: Any, weight: Any, targets: Any, rows: int | None = None) -> Any:
    """Per row, the fp32 log-probability of `targets [N]` under `hidden [N, H] @ weight.T [H, V]`, never holding
    more than `rows` rows of logits (default: `chunk_rows(V)`); differentiable in `hidden` and `weight`."""
    global _LOGPS
    if _LOGPS is None:
        _LOGPS = _token_logps_function()
    return _LOGPS.apply(hidden, weight, targets, rows or chunk_rows(weight.shape[0]))


def label_positions(labels: Any) -> tuple[Any, Any]:
    """(mask [B, T] of the positions whose next token carries a label, those next tokens [N]): position i
    predicts labels[i + 1], as transformers' `ForCausalLMLoss` shifts them; the last position predicts nothing."""
    import torch

    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
    mask = shifted != IGNORE
    return mask, shifted[mask]


def _unwrap(model: Any) -> Any:
    """The transformers model under DDP (`.module`) and PEFT (`.get_base_model()`) wrappers."""
    inner = getattr(model, "module", model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return base


def applies(model: Any) -> bool:
    """Whether this loss computes exactly what the model's own forward would (see the module docstring)."""
    import torch

    base = _unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return False
    if not hasattr(base, "get_decoder") or "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return False
    config = getattr(base, "config", None)
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            return False
    return not any(type(m).__name__.startswith("FSDP") for m in (model, getattr(model, "module", model)))


def final_hidden(model: Any, inputs: dict[str, Any]) -> Any:
    """The decoder's last hidden state [B, T, H] of one forward pass through the model and its wrappers (DDP
    hooks, LoRA layers, autocast all apply), with the head projecting one position only (`logits_to_keep=1`).
    `inputs` are the model's own (no labels)."""
    base = _unwrap(model)
    captured: list[Any] = []

    def keep(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = base.get_decoder().register_forward_hook(keep)
    try:
        model(**inputs, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    return captured[-1]


def causal_lm_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """The loss of one micro-batch: the decoder's last hidden state (`final_hidden`), and only labelled
    positions reach the head."""
    base = _unwrap(model)
    hidden = final_hidden(model, {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")})
    mask, targets = label_positions(inputs["labels"].to(hidden.device))
    selected = hidden[mask]  # [N, H]: the positions that carry a label, nothing else goes to the head
    total = fused_linear_cross_entropy(selected, base.get_output_embeddings().weight, targets)
    count = num_items_in_batch if num_items_in_batch is not None else max(1, int(targets.numel()))
    if hasattr(count, "to"):
        count = count.to(total.device)
    return total / count


def with_label_position_loss(trainer_class: type[Any]) -> type[Any]:
    """`trainer_class` whose training loss is `causal_lm_loss` where it `applies`, the Trainer's own elsewhere."""

    class LabelPositionLossTrainer(trainer_class):  # type: ignore[misc,valid-type]
        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            stock = (
                return_outputs
                or "labels" not in inputs
                or self.label_smoother is not None
                or self.compute_loss_func is not None
                or not applies(model)
            )
            if stock:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # as the Trainer's own path: the model divides by num_items_in_batch only where it accepts loss kwargs
            items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            loss = causal_lm_loss(model, inputs, items)
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and items is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return loss

    LabelPositionLossTrainer.__name__ = f"LabelPositionLoss{trainer_class.__name__}"
    return LabelPositionLossTrainer
