"""A LoRA layer's frozen base product and its adapter in one pass: no separate adapter output to scale and add.

Why: peft's `lora.Linear.forward` computes `base(x) + lora_B(lora_A(x)) * scaling`, which on top of the two
matrix products makes three full-size [T, out] temporaries (the adapter's output, it scaled, the sum) and, in
the backward pass, scales the incoming gradient (another [T, out]) and adds the adapter path's input gradient
to the base path's ([T, in]). With `all-linear` targets that is 7 layers per decoder block, every one of them
memory-bound elementwise work beside matrix products that are not. Here one autograd function does the same
arithmetic with the adapter accumulated into the products' outputs (`addmm_`): forward `x W^T + s (x A^T) B^T`
is one product into a fresh output plus one rank-r accumulation into it; backward `dx = dy W + s (dy B) A` the
same, and the adapter's weight gradients `s (dy^T (x A^T))`, `s ((dy B)^T x)` are scaled on their [T, r]
factors, not on a [T, out] one. Measured on SmolLM2-135M (docs/benchmarks.md, "Against TRL's SFTTrainer").

Exactness: the same products in the same precision; only where the scaling is applied and the order of two
additions differ, so results agree with peft's to float rounding (the loss-curve test states the tolerance).

Where it applies, checked on every call (`_fusable`), else peft's own forward runs unchanged: a plain
`torch.nn.Linear` base whose weight (and bias) is frozen, one active adapter of vanilla LoRA (no DoRA or other
variant, no adapter bias), the adapter's dropout peft's own (`nn.Dropout` or `nn.Identity`), adapters enabled
and not merged, no extra arguments (peft's mixed-batch `adapter_names`), every tensor of one dtype, and autocast
off (mixed precision keeps peft's casting rules). So the DPO reference pass (`disable_adapter()`), QLoRA's
quantized bases and a merged model take peft's path.

Dropout (`lora.dropout`, 0.05 by default): the layer's own dropout module is applied to the adapter's input
outside the function, in the same order as peft's forward (which draws no other random number in between), so
a fixed seed gives the same masks; the function then takes the dropped input for the adapter and x for the
base, and autograd adds the two input gradients (dropout's backward applies the mask), as it does for peft.

Hooks registered on `lora_A`/`lora_B` themselves do not run on the fused path (the trainer registers none). The
only entry point is `fuse`, called by `modeling.apply_method`.
"""

from __future__ import annotations

import logging
import types
from typing import Any

log = logging.getLogger(__name__)

_FUNCTION: Any = None


def _function() -> Any:
    import torch

    class FusedLoraLinear(torch.autograd.Function):
        """`x W^T + b + s (d A^T) B^T` for a frozen W (and b), trainable A [r, in] and B [out, r], where d is the
        adapter's input: x itself, or x after the adapter's dropout (computed outside, so autograd takes the
        gradient through the dropout's mask and adds it to x's)."""

        @staticmethod
        def forward(
            ctx: Any, x: Any, dropped: Any, weight: Any, bias: Any, lora_a: Any, lora_b: Any, scaling: float
        ) -> Any:
            flat = x.reshape(-1, x.shape[-1])
            shared = dropped is x
            adapter_in = flat if shared else dropped.reshape(-1, x.shape[-1])
            down = adapter_in @ lora_a.t()  # [T, r]
            out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
            out.addmm_(down, lora_b.t(), alpha=scaling)
            # the base's backward needs W only; the adapter's needs its own input and the [T, r] product
            ctx.save_for_backward(adapter_in, weight, lora_a, lora_b, down)
            ctx.scaling, ctx.shared, ctx.in_shape = scaling, shared, x.shape
            return out.view(*x.shape[:-1], weight.shape[0])

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            adapter_in, weight, lora_a, lora_b, down = ctx.saved_tensors
            scaling, shape = ctx.scaling, ctx.in_shape
            grad = grad_out.reshape(-1, grad_out.shape[-1])
            grad_down = grad @ lora_b  # [T, r]
            grad_x = grad_dropped = None
            if ctx.shared and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
                grad_x = (grad @ weight).addmm_(grad_down, lora_a, alpha=scaling).view(shape)
            else:
                if ctx.needs_input_grad[0]:
                    grad_x = (grad @ weight).view(shape)
                if ctx.needs_input_grad[1]:
                    grad_dropped = ((grad_down * scaling) @ lora_a).view(shape)
            grad_a = (grad_down * scaling).t() @ adapter_in if ctx.needs_input_grad[4] else None
            grad_b = grad.t() @ (down * scaling) if ctx.needs_input_grad[5] else None
            return grad_x, grad_dropped, None, None, grad_a, grad_b, None

    return FusedLoraLinear


def _fusable(layer: Any, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The adapter's name when this call of peft's `lora.Linear` can take the fused path, else None."""
    import torch

    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    name: str = active[0]
    base, lora_a, lora_b = layer.base_layer, layer.lora_A[name], layer.lora_B[name]
    if type(base) is not torch.nn.Linear or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    if name in getattr(layer, "lora_variant", {}) or lora_a.bias is not None or lora_b.bias is not None:
        return None
    if type(layer.lora_dropout[name]) not in (torch.nn.Identity, torch.nn.Dropout):
        return None
    if not (x.dtype == base.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype):
        return None
    if torch.is_autocast_enabled(x.device.type):
        return None
    return name


def _fused_forward(layer: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """The forward `fuse` binds to a `lora.Linear` (a bound method, so a deep copy rebinds it to the copy): the
    fused product where this call qualifies, peft's own `forward` otherwise."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    name = _fusable(layer, x, args, kwargs)
    if name is None:
        return LoraLinear.forward(layer, x, *args, **kwargs)
    base = layer.base_layer
    # the adapter's dropout as peft applies it (the same module, the same random stream: the same mask); in eval
    # mode, or with dropout 0 (an Identity), it returns x itself and the function takes its one-input path
    dropped = layer.lora_dropout[name](x)
    return _FUNCTION.apply(
        x, dropped, base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name]
    )


def fuse(model: Any) -> int:
    """Give every peft `lora.Linear` of `model` the fused forward (where a call does not qualify, peft's own
    runs); the number of layers. Idempotent."""
    global _FUNCTION
    from peft.tuners.lora.layer import Linear as LoraLinear

    if _FUNCTION is None:
        _FUNCTION = _function()
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and not is_fused(module):
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
            count += 1
    if count:
        log.info("LoRA: %d adapter layers take the fused base + adapter product where a call allows it", count)
    return count


def is_fused(layer: Any) -> bool:
    """Whether `fuse` gave this layer its forward."""
    return getattr(layer.forward, "__func__", None) is _fused_forward
